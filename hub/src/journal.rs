//! Group commit for what answered queries leave behind (what each member was shown,
//! statistics events, access leaves in the log).
//!
//! A query sends its [`QueryRecord`] here and waits for it to be written and made durable
//! before it answers, so no answer goes out without its audit record, even if the hub is
//! killed right after. One thread of its own drains every record
//! waiting at that moment and writes them with [`Store::record_query_batch`]: one atomic write
//! for the whole batch instead of one per query, and no async worker ever blocks on the log's
//! lock.

use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use crate::batch::{Worker, next_batch};
use crate::error::HubError;
use crate::metrics::HubMetrics;
use crate::store::{QueryRecord, SharedStore, StoreError};

/// Most records written in one batch.
const MAX_BATCH: usize = 1024;

type Ack = oneshot::Sender<Result<(), String>>;

/// The sending side; cheap to share.
pub struct Journal {
    worker: Worker<(QueryRecord, Ack)>,
}

impl Journal {
    /// Starts the writer thread. Dropping the journal waits until it has written every record
    /// it was given.
    pub fn start(store: SharedStore, metrics: Arc<HubMetrics>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        Ok(Self {
            worker: Worker::start("huren-journal", move |rx| {
                write_batches(store, rx, runtime, metrics)
            })?,
        })
    }

    /// Writes one record, waiting until it is in the store.
    pub async fn write(&self, record: QueryRecord) -> Result<(), HubError> {
        let (ack, done) = oneshot::channel();
        self.worker
            .send((record, ack))
            .map_err(|_| StoreError::Journal("the journal thread has stopped".into()))?;
        done.await
            .map_err(|_| StoreError::Journal("the journal thread has stopped".into()))?
            .map_err(|e| StoreError::Journal(e).into())
    }
}

fn write_batches(
    store: SharedStore,
    mut rx: mpsc::UnboundedReceiver<(QueryRecord, Ack)>,
    runtime: tokio::runtime::Handle,
    metrics: Arc<HubMetrics>,
) {
    while let Some(batch) = next_batch(&mut rx, MAX_BATCH, |_| 1) {
        let (records, acks): (Vec<QueryRecord>, Vec<Ack>) = batch.into_iter().unzip();
        let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(store.record_query_batch(&records))
        })) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("journal write panicked".to_string()),
        };
        if let Err(e) = result {
            for ack in acks {
                let _ = ack.send(Err(e.clone()));
            }
            continue;
        }
        // The answers leave once their records are durable: the flush is shared with every
        // other commit waiting (group commit), and this thread writes the next batch meanwhile.
        let store = store.clone();
        let metrics = metrics.clone();
        runtime.spawn(async move {
            let durable = metrics.timed_commit(&store, "queries").await;
            for ack in acks {
                let _ = ack.send(durable.clone());
            }
        });
    }
}
