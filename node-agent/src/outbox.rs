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
//! - Up to `concurrency` summaries are in flight at once, but never two versions of one result:
//!   a later version waits until the earlier one is answered.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;

use huren_core::signing::sha256;
use huren_core::summary::{Summary, UnixMillis};
use huren_proto::hub as pb;
use huren_proto::hub::hub_client::HubClient;

use crate::config::OutboxConfig;
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
    hub: HubClient<Channel>,
    settings: OutboxConfig,
    wake: Arc<Notify>,
}

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
            hub: HubClient::new(channel),
            settings,
            wake,
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
    /// A sliding window: up to `concurrency` of the oldest queued summaries are in flight, and a
    /// new one starts as soon as one is answered; never two versions of one result at once (a
    /// later version waits until the earlier one is answered). After a failed attempt nothing
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
                let pending = self.store.pending(window * 4 + calls.len())?;
                drained = pending.len() < window * 4 + calls.len();
                let mut first_of_key = HashSet::new();
                for p in pending {
                    if calls.len() >= window {
                        break;
                    }
                    let first = first_of_key.insert(p.summary_id.clone());
                    if !first || in_flight.contains(&p.seq) || busy_keys.contains(&p.summary_id) {
                        continue;
                    }
                    in_flight.insert(p.seq);
                    busy_keys.insert(p.summary_id.clone());
                    let mut hub = self.hub.clone();
                    calls.spawn(async move {
                        let attempt = publish_one(&mut hub, &p).await;
                        (p, attempt)
                    });
                }
            }
            let Some(done) = calls.join_next().await else {
                if failed || drained || self.store.counts().pending == 0 {
                    return Ok(counts);
                }
                continue;
            };
            let Ok((p, attempt)) = done else {
                // A publish task panicked: treat as a failed attempt (retried later).
                counts.failed += 1;
                failed = true;
                continue;
            };
            in_flight.remove(&p.seq);
            busy_keys.remove(&p.summary_id);
            // A later version of this result may now go.
            drained = false;
            match attempt {
                Attempt::Published {
                    accepted_at,
                    already_stored,
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

async fn publish_one(hub: &mut HubClient<Channel>, p: &Pending) -> Attempt {
    let summary = match Summary::from_body_bytes(&p.envelope.body) {
        Ok(s) => s,
        Err(e) => return Attempt::Refused(format!("the queued summary does not decode: {e}")),
    };
    let digest = sha256(&p.envelope.body);
    let answer = hub
        .publish(pb::PublishRequest {
            summary: Some(p.envelope.clone().into()),
        })
        .await;
    match answer {
        Ok(response) => {
            let response = response.into_inner();
            let Some(receipt) = response.receipt else {
                return Attempt::Failed("the hub answered without a receipt".into());
            };
            match check_receipt(receipt, &summary, &digest) {
                Ok(r) => Attempt::Published {
                    accepted_at: r.accepted_at,
                    already_stored: response.already_stored,
                },
                Err(e) => Attempt::Failed(e),
            }
        }
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
