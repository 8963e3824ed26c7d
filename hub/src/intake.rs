//! Group writing for published summaries.
//!
//! Every publish, unary or batched, sends its verified summaries here and waits for their
//! outcomes. One thread of its own drains everything waiting at that moment and stores it with
//! [`Store::put_summaries`]: one atomic write and one log append run for many publishes, and no
//! async worker ever blocks on the log's lock. The flush that makes a batch durable runs while
//! the next batch is written (group commit), and nobody hears of a stored summary before that
//! flush returns.

use std::panic::AssertUnwindSafe;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use huren_core::signing::VerifiedSummary;
use huren_core::summary::{Summary, UnixMillis};

use std::sync::Arc;

use crate::batch::{Worker, next_batch};
use crate::metrics::HubMetrics;
use crate::store::{Put, SharedStore, StoreError, TreeHead};

/// Most summaries written in one atomic write.
const MAX_BATCH: usize = 4096;

/// Outcomes of one job's summaries, in order, and the head they are proven against; or why
/// the whole write failed.
type Outcome = Result<(Vec<Result<Put, StoreError>>, TreeHead), String>;

struct Job {
    items: Vec<VerifiedSummary>,
    at: UnixMillis,
    ack: oneshot::Sender<Outcome>,
}

/// The sending side; cheap to share.
pub struct Intake {
    worker: Worker<Job>,
}

impl Intake {
    /// Starts the writer thread. Acknowledgements are sent from tasks on the current runtime.
    /// Dropping the intake waits until it has written everything it was given.
    pub fn start(store: SharedStore, metrics: Arc<HubMetrics>) -> std::io::Result<Self> {
        let runtime = Handle::current();
        Ok(Self {
            worker: Worker::start("huren-intake", move |rx| {
                write_batches(store, rx, runtime, metrics)
            })?,
        })
    }

    /// Stores summaries accepted at `at`, waiting until they are durable. One outcome per
    /// summary, in order, each proven against the returned head.
    pub async fn put(
        &self,
        items: Vec<VerifiedSummary>,
        at: UnixMillis,
    ) -> Result<(Vec<Result<Put, StoreError>>, TreeHead), StoreError> {
        let gone = || StoreError::Intake("it has stopped".into());
        let (ack, done) = oneshot::channel();
        self.worker
            .send(Job { items, at, ack })
            .map_err(|_| gone())?;
        done.await.map_err(|_| gone())?.map_err(StoreError::Intake)
    }
}

fn write_batches(
    store: SharedStore,
    mut rx: mpsc::UnboundedReceiver<Job>,
    runtime: Handle,
    metrics: Arc<HubMetrics>,
) {
    while let Some(jobs) = next_batch(&mut rx, MAX_BATCH, |job: &Job| job.items.len()) {
        let written = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let items: Vec<(&VerifiedSummary, UnixMillis)> = jobs
                .iter()
                .flat_map(|j| j.items.iter().map(move |v| (v, j.at)))
                .collect();
            runtime.block_on(store.put_summaries(&items, Summary::may_follow))
        }));
        // A panicked write drops its jobs: their callers hear that the writer stopped.
        let Ok(result) = written else {
            tracing::error!("a publish batch write panicked");
            continue;
        };
        let batch = match result {
            Ok(batch) => batch,
            Err(e) => {
                let e = e.to_string();
                for j in jobs {
                    let _ = j.ack.send(Err(e.clone()));
                }
                continue;
            }
        };
        // Acknowledge after the flush, while the next batch is already being written.
        let store = store.clone();
        let metrics = metrics.clone();
        runtime.spawn(async move {
            let durable = metrics.timed_commit(&store, "publishes").await;
            let mut results = batch.results.into_iter();
            for j in jobs {
                let mine: Vec<_> = results.by_ref().take(j.items.len()).collect();
                let _ = j.ack.send(match &durable {
                    Ok(()) => Ok((mine, batch.head)),
                    Err(e) => Err(e.clone()),
                });
            }
        });
    }
}
