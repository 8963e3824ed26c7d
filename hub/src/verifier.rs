//! Signature checks for unary publishes, gathered into batch equations.
//!
//! A unary publish carries one signature, but under load many publishes wait to be checked at
//! once. One thread of its own takes everything waiting, checks it with [`verify_many`] (one
//! Ed25519 batch equation, about half the CPU per signature of checking one by one), and gives
//! each caller its own outcome, the same one checking alone would give. A lone publish is a
//! batch of one. One batch is checked at a time: whatever arrives meanwhile forms the next.
//!
//! A bad signature fails its batch's equation, and the batch is then checked one by one to
//! find it: a member sending bad signatures costs the others in its batch about one extra
//! check each, no more.

use tokio::sync::{mpsc, oneshot};

use huren_core::signing::{SignedEnvelope, VerifiedSummary, VerifyError, verify_many};
use huren_core::trust::CertifiedSigner;

use crate::batch::{Worker, next_batch};
use crate::error::HubError;

/// Most signatures in one batch equation.
const MAX_BATCH: usize = 256;

struct Job {
    envelope: SignedEnvelope,
    signer: CertifiedSigner,
    ack: oneshot::Sender<Result<VerifiedSummary, VerifyError>>,
}

/// The sending side; cheap to share.
pub struct SignatureChecks {
    worker: Worker<Job>,
}

impl SignatureChecks {
    /// Starts the checking thread.
    pub fn start() -> std::io::Result<Self> {
        Ok(Self {
            worker: Worker::start("huren-verify", check_batches)?,
        })
    }

    /// Checks `envelope`'s size, signature and body, as [`SignedEnvelope::verify_into`] does.
    pub async fn verify(
        &self,
        envelope: SignedEnvelope,
        signer: CertifiedSigner,
    ) -> Result<VerifiedSummary, HubError> {
        let (ack, outcome) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.worker.send(Job {
            envelope,
            signer,
            ack,
        }) {
            // The thread is gone (the hub is shutting down): check here.
            return Ok(job.envelope.verify_into(&job.signer)?);
        }
        Ok(outcome.await.map_err(|_| HubError::Checking)??)
    }
}

fn check_batches(mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(jobs) = next_batch(&mut rx, MAX_BATCH, |_| 1) {
        let (items, acks): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|j| ((j.envelope, j.signer), j.ack))
            .unzip();
        // A panicked check drops the acknowledgements: those callers get HubError::Checking.
        match std::panic::catch_unwind(move || verify_many(items)) {
            Ok(outcomes) => {
                for (ack, outcome) in acks.into_iter().zip(outcomes) {
                    let _ = ack.send(outcome);
                }
            }
            Err(_) => tracing::error!("a batch of signature checks panicked"),
        }
    }
}
