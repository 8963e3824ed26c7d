//! Publishing the outbox: queued, signed summaries go to the hub in order, with retries.
//!
//! - A queued summary is published as the exact bytes signed when it was queued; the hub
//!   stores identical bytes once and answers `already_stored` to a repeat. So publishing after a
//!   crash or a lost answer is harmless: at-least-once publishing of identical bytes gives
//!   exactly-once storage.
//! - While the hub is unreachable (or answers with a transient error), the publisher waits with
//!   exponential back-off and jitter ([`Backoff`]) and tries again; nothing is dropped.
//! - A summary the hub refuses (InvalidArgument, PermissionDenied, AlreadyExists,
//!   FailedPrecondition) is never retried by itself: it moves to the dead letters with the
//!   hub's reason, is logged, and is listed by `huren-agent outbox`.
//! - Summaries go in PublishBatch calls of up to `batch_size` (each summary gets its own
//!   outcome, so one refusal refuses only itself), up to `concurrency` calls at once. Versions
//!   of one result go in order: in the same call (the hub stores a call's summaries in order)
//!   or, when one is in flight, after it is answered. A hub that does not know PublishBatch, or
//!   refuses a whole batch, is sent one summary per Publish call from then on.
//! - With `[log] verifier_key`, a summary counts as published only once its receipt's
//!   inclusion proof verifies against a checkpoint signed by the hub's log key, and that
//!   checkpoint is consistent with the last one this agent saw; each entry is remembered for
//!   `huren-agent audit`. A receipt without a valid proof is not taken: the summary stays
//!   queued, and the failure is logged as the hub's log failing verification.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;

use huren_core::logentry::summary_leaf;
use huren_core::signing::sha256;
use huren_core::summary::{Summary, UnixMillis};

use crate::config::OutboxConfig;
use crate::hub::{BatchOutcome, HubApi, PublishAnswer};
use crate::log::{LogWitness, required_proof};
use crate::store::{Pending, Store, StoreError};
use crate::verify::check_receipt;

/// Exponential back-off with "equal jitter": each delay is half the current step plus a random
/// part of the other half; the step doubles up to the cap.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            step: initial,
            attempts: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let half = self.step / 2;
        let jitter = random_below(u64::try_from(half.as_millis()).unwrap_or(u64::MAX) + 1);
        let delay = half + Duration::from_millis(jitter);
        self.step = (self.step * 2).min(self.max);
        self.attempts += 1;
        delay
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn reset(&mut self) {
        self.step = self.initial;
        self.attempts = 0;
    }
}

fn random_below(n: u64) -> u64 {
    let r = getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the clock's nanoseconds still spread agents apart.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()))
    });
    if n == 0 { 0 } else { r % n }
}

/// How one publish attempt ended.
#[derive(Debug)]
enum Attempt {
    Published {
        accepted_at: UnixMillis,
        already_stored: bool,
        /// With a log witness: the entry's index, its leaf bytes and the checkpoint note that
        /// proves it (the proof itself already checked).
        logged: Option<(u64, Vec<u8>, String)>,
    },
    /// The hub refused the summary; retrying the same bytes cannot help.
    Refused(String),
    /// Unreachable or a transient error: retry later.
    Failed(String),
}

/// Whether a gRPC status means "the hub will never accept these bytes".
pub fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::AlreadyExists
            | Code::FailedPrecondition
    )
}

/// Publishes the store's outbox to the hub until shut down.
pub struct Publisher {
    store: Arc<Store>,
    hub: HubApi,
    settings: OutboxConfig,
    wake: Arc<Notify>,
    /// Set once the hub has shown it cannot take batches: one summary per call from then on.
    unary_only: Arc<AtomicBool>,
    /// With `[log] verifier_key`: receipts are checked against the hub's log.
    log: Option<Arc<LogWitness>>,
}

/// Most bytes of signed summaries the agent puts in one PublishBatch call (the hub's default
/// limit is 4 MiB).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Most summaries the agent puts in one PublishBatch call (the hub takes up to 1,000).
const MAX_BATCH_SUMMARIES: usize = 1000;

/// What a publishing pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassCounts {
    pub published: usize,
    pub already_stored: usize,
    pub dead: usize,
    pub failed: usize,
}

impl Publisher {
    pub fn new(
        store: Arc<Store>,
        channel: Channel,
        settings: OutboxConfig,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            hub: HubApi::new(channel),
            settings,
            wake,
            unary_only: Arc::new(AtomicBool::new(false)),
            log: None,
        }
    }

    /// Checks every receipt's inclusion proof with `log` (and keeps the entries for audit).
    pub fn with_log(mut self, log: Option<Arc<LogWitness>>) -> Self {
        self.log = log;
        self
    }

    /// Takes in the checkpoints that prove one call's receipts (consistent with the last one
    /// seen) and remembers the entries. On a failure none of them counts as published.
    async fn accept_logged(&self, answered: &mut [(Pending, Attempt)]) {
        let Some(log) = &self.log else {
            return;
        };
        let mut notes = std::collections::BTreeSet::new();
        let mut entries = Vec::new();
        for (_, a) in answered.iter() {
            if let Attempt::Published {
                logged: Some((index, leaf, note)),
                ..
            } = a
            {
                notes.insert(note.clone());
                entries.push((*index, leaf.clone()));
            }
        }
        let mut problem = None;
        for note in notes {
            if let Err(e) = log.observe(&self.hub, &note).await {
                problem = Some(e.to_string());
                break;
            }
        }
        if problem.is_none()
            && let Err(e) = log.remember_all(&entries)
        {
            problem = Some(e.to_string());
        }
        if let Some(problem) = problem {
            tracing::error!(problem = %problem, "receipts not taken: the hub's log failed verification");
            for (_, a) in answered.iter_mut() {
                if matches!(a, Attempt::Published { .. }) {
                    *a = Attempt::Failed(problem.clone());
                }
            }
        }
    }

    /// Publishes until `shutdown` turns true; sleeps when the outbox is empty until woken (new
    /// results queued) or a minute passed. In-flight calls finish before it returns.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.settings.initial_backoff_ms),
            Duration::from_millis(self.settings.max_backoff_ms),
        );
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let pass = self.publish_pass().await?;
            let idle = pass == PassCounts::default();
            if pass.failed > 0 {
                let delay = backoff.next_delay();
                tracing::warn!(
                    attempt = backoff.attempts(),
                    retry_in_ms = delay.as_millis() as u64,
                    pending = self.store.counts().pending,
                    "hub unreachable or busy; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            if pass.published + pass.already_stored + pass.dead > 0 {
                tracing::info!(
                    published = pass.published,
                    already_stored = pass.already_stored,
                    dead_letters = pass.dead,
                    pending = self.store.counts().pending,
                    "outbox published"
                );
                if backoff.attempts() > 0 {
                    tracing::info!(after_attempts = backoff.attempts(), "hub reachable again");
                }
                backoff.reset();
            }
            if idle {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// The store published from.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Publishes until the outbox is empty or an attempt fails (then returns with `failed > 0`).
    pub async fn publish_pass(&self) -> Result<PassCounts, StoreError> {
        self.publish_pass_with(|_| {}).await
    }

    /// [`Publisher::publish_pass`], calling `progress` after each answer.
    ///
    /// A sliding window over the oldest queued summaries: up to `concurrency` calls in flight,
    /// each carrying up to `batch_size` summaries, and a new call starts as soon as one is
    /// answered. A result's versions travel in order: together in one call, or a later one
    /// waits until the call carrying an earlier one is answered. After a failed attempt nothing
    /// new starts; the calls in flight finish, then it returns.
    pub async fn publish_pass_with(
        &self,
        mut progress: impl FnMut(&PassCounts),
    ) -> Result<PassCounts, StoreError> {
        let window = self.settings.concurrency.max(1);
        let mut counts = PassCounts::default();
        let mut in_flight: HashSet<u64> = HashSet::new();
        let mut busy_keys: HashSet<String> = HashSet::new();
        let mut calls = JoinSet::new();
        let mut failed = false;
        let mut drained = false;
        loop {
            // Refill when half the window is free (fewer store reads than one per answer).
            if !failed && !drained && calls.len() <= window / 2 {
                let batch_size = if self.unary_only.load(Ordering::Acquire) {
                    1
                } else {
                    self.settings.batch_size.clamp(1, MAX_BATCH_SUMMARIES)
                };
                let want = (window - calls.len()) * batch_size * 2 + in_flight.len();
                let pending = self.store.pending(want)?;
                drained = pending.len() < want;
                // Results with an earlier version in flight or left out of the call being
                // filled: a later version must not overtake it.
                let mut held: HashSet<String> = HashSet::new();
                let mut batch: Vec<Pending> = Vec::new();
                let mut batch_keys: HashSet<String> = HashSet::new();
                let mut batch_bytes = 0;
                for p in pending {
                    let key = p.summary_id.clone();
                    if in_flight.contains(&p.seq) || busy_keys.contains(&key) || held.contains(&key)
                    {
                        held.insert(key);
                        continue;
                    }
                    let size = envelope_size(&p);
                    if !batch.is_empty()
                        && (batch.len() >= batch_size || batch_bytes + size > MAX_BATCH_BYTES)
                    {
                        self.start_call(&mut calls, std::mem::take(&mut batch));
                        // The keys of the call just started now wait for its answer.
                        busy_keys.extend(batch_keys.drain());
                        batch_bytes = 0;
                        if calls.len() >= window {
                            break;
                        }
                    }
                    in_flight.insert(p.seq);
                    batch_keys.insert(key);
                    batch_bytes += size;
                    batch.push(p);
                }
                if !batch.is_empty() {
                    self.start_call(&mut calls, batch);
                    busy_keys.extend(batch_keys);
                }
            }
            let Some(done) = calls.join_next().await else {
                if failed || drained || self.store.counts().pending == 0 {
                    return Ok(counts);
                }
                continue;
            };
            let Ok(mut answered) = done else {
                // A publish task panicked: treat as a failed attempt (retried next pass).
                counts.failed += 1;
                failed = true;
                continue;
            };
            self.accept_logged(&mut answered).await;
            // Later versions of these results may now go.
            drained = false;
            for (p, attempt) in answered {
                in_flight.remove(&p.seq);
                busy_keys.remove(&p.summary_id);
                match attempt {
                    Attempt::Published {
                        accepted_at,
                        already_stored,
                        ..
                    } => {
                        self.store
                            .mark_published(p.seq, accepted_at, already_stored)?;
                        if already_stored {
                            counts.already_stored += 1;
                        } else {
                            counts.published += 1;
                        }
                        tracing::debug!(summary = %p.summary_id, version = p.version, already_stored, "published");
                    }
                    Attempt::Refused(reason) => {
                        tracing::error!(
                            summary = %p.summary_id,
                            version = p.version,
                            reason = %reason,
                            "the hub refused a summary; moved to the dead letters (see `huren-agent outbox`)"
                        );
                        self.store.dead_letter(p.seq, &reason)?;
                        counts.dead += 1;
                    }
                    Attempt::Failed(error) => {
                        tracing::debug!(summary = %p.summary_id, error = %error, "publish failed");
                        counts.failed += 1;
                        failed = true;
                    }
                }
                progress(&counts);
            }
        }
    }

    /// Starts one call for `batch`: Publish for a single summary, PublishBatch otherwise.
    fn start_call(&self, calls: &mut JoinSet<Vec<(Pending, Attempt)>>, mut batch: Vec<Pending>) {
        let hub = self.hub.clone();
        let unary_only = self.unary_only.clone();
        let log = self.log.clone();
        calls.spawn(async move {
            let log = log.as_deref();
            if batch.len() == 1
                && let Some(p) = batch.pop()
            {
                let attempt = publish_one(&hub, &p, log).await;
                return vec![(p, attempt)];
            }
            publish_batch(&hub, batch, &unary_only, log).await
        });
    }
}

/// Bytes a summary adds to a batch, near enough to keep a call under [`MAX_BATCH_BYTES`].
fn envelope_size(p: &Pending) -> usize {
    p.envelope.body.len() + p.envelope.signature.len() + p.envelope.signer_certificate.len() + 16
}

/// Publishes a batch in one PublishBatch call, each summary with its own outcome. A hub that
/// does not implement the call, or refuses the batch as a whole, turns on `unary_only`, and
/// every summary of the batch counts as failed (sent again, one per call, after the back-off).
async fn publish_batch(
    hub: &HubApi,
    batch: Vec<Pending>,
    unary_only: &AtomicBool,
    log: Option<&LogWitness>,
) -> Vec<(Pending, Attempt)> {
    let answer = hub
        .publish_batch(batch.iter().map(|p| p.envelope.clone()).collect())
        .await;
    let all_failed = |batch: Vec<Pending>, why: String| -> Vec<(Pending, Attempt)> {
        batch
            .into_iter()
            .map(|p| (p, Attempt::Failed(why.clone())))
            .collect()
    };
    let outcomes = match answer {
        Ok(outcomes) => outcomes,
        Err(status)
            if matches!(
                status.code(),
                Code::Unimplemented | Code::OutOfRange | Code::InvalidArgument
            ) =>
        {
            unary_only.store(true, Ordering::Release);
            tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                "the hub does not take this batch; publishing one summary per call from now on"
            );
            return all_failed(batch, format!("{:?}: {}", status.code(), status.message()));
        }
        Err(status) => {
            return all_failed(batch, format!("{:?}: {}", status.code(), status.message()));
        }
    };
    if outcomes.len() != batch.len() {
        let why = format!(
            "the hub answered {} outcomes for {} summaries",
            outcomes.len(),
            batch.len()
        );
        return all_failed(batch, why);
    }
    batch
        .into_iter()
        .zip(outcomes)
        .map(|(p, outcome)| {
            let attempt = match outcome {
                BatchOutcome::Published(response) => {
                    match Summary::from_body_bytes(&p.envelope.body) {
                        Ok(summary) => published(response, &summary, &p, log),
                        Err(e) => {
                            Attempt::Refused(format!("the queued summary does not decode: {e}"))
                        }
                    }
                }
                BatchOutcome::Refused { code, message } => {
                    if is_refusal(code) {
                        Attempt::Refused(format!("{code:?}: {message}"))
                    } else {
                        Attempt::Failed(format!("{code:?}: {message}"))
                    }
                }
                BatchOutcome::Missing => {
                    Attempt::Failed("the hub answered without an outcome".into())
                }
            };
            (p, attempt)
        })
        .collect()
}

/// What a Publish answer means for the summary sent: its receipt, and with a log witness,
/// its inclusion proof checked against the proof's checkpoint.
fn published(
    response: PublishAnswer,
    sent: &Summary,
    p: &Pending,
    log: Option<&LogWitness>,
) -> Attempt {
    let r = match response
        .receipt
        .and_then(|r| check_receipt(r, sent, &sha256(&p.envelope.body)))
    {
        Ok(r) => r,
        Err(e) => return Attempt::Failed(e),
    };
    let logged = match log {
        None => None,
        Some(log) => {
            let e = &p.envelope;
            let leaf = summary_leaf(&e.body, &e.signature, &e.signer_certificate, r.accepted_at);
            let checked = required_proof(
                response.log_proof,
                &format!(
                    "the receipt for {} version {} came without a log proof",
                    sent.result_key(),
                    sent.version
                ),
            )
            .and_then(|proof| log.verify_entry(&leaf, &proof).map(|_| proof));
            match checked {
                Ok(proof) => Some((proof.index, leaf, proof.checkpoint)),
                Err(e) => {
                    tracing::error!(summary = %sent.result_key(), version = sent.version, problem = %e, "receipt not taken: the hub's log failed verification");
                    crate::metrics::log_check_failed();
                    return Attempt::Failed(e.to_string());
                }
            }
        }
    };
    Attempt::Published {
        accepted_at: r.accepted_at,
        already_stored: response.already_stored,
        logged,
    }
}

async fn publish_one(hub: &HubApi, p: &Pending, log: Option<&LogWitness>) -> Attempt {
    let summary = match Summary::from_body_bytes(&p.envelope.body) {
        Ok(s) => s,
        Err(e) => return Attempt::Refused(format!("the queued summary does not decode: {e}")),
    };
    match hub.publish(p.envelope.clone()).await {
        Ok(response) => published(response, &summary, p, log),
        Err(status) if is_refusal(status.code()) => {
            Attempt::Refused(format!("{:?}: {}", status.code(), status.message()))
        }
        Err(status) => Attempt::Failed(format!("{:?}: {}", status.code(), status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let mut steps = Vec::new();
        for _ in 0..12 {
            steps.push(b.next_delay());
        }
        // Each delay is within [step/2, step].
        let mut step = 250u64;
        for d in &steps {
            let ms = d.as_millis() as u64;
            assert!(
                ms >= step / 2 && ms <= step,
                "{ms} not in [{}, {step}]",
                step / 2
            );
            step = (step * 2).min(30_000);
        }
        assert!(steps[11] >= Duration::from_secs(15));
        assert_eq!(b.attempts(), 12);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(250));
    }

    #[test]
    fn refusals_are_not_retried_but_outages_are() {
        for c in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::AlreadyExists,
            Code::FailedPrecondition,
        ] {
            assert!(is_refusal(c));
        }
        for c in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
            Code::Unauthenticated,
            Code::ResourceExhausted,
        ] {
            assert!(!is_refusal(c));
        }
    }
}
