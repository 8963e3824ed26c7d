//! What the hub does, in domain terms: publish, find prior results with verdicts, list a
//! patient's history, check an order, record decisions, compute statistics. No gRPC types here;
//! `grpc` converts to and from them.
//!
//! By family: `publish` (Publish, PublishBatch), `query` (FindPrior, History, CheckOrder, with
//! the consent gate and the query journal), `audit` (decisions, consent, access reports,
//! statistics), `log` (checkpoints and proofs). The `Hub` itself and what they share are here.

mod audit;
mod log;
pub use log::{AuditEntry, LogEntries, MAX_LOG_ENTRIES};
mod publish;
mod query;

use std::sync::Arc;

use huren_core::identity::InstitutionId;
use huren_core::logentry::{Entry, LogProof, Method, Purpose, ResultRef};
use huren_core::merkle::Hash;
use huren_core::pseudonym::Pseudonym;
use huren_core::rules::{
    self, AfterRevocation, Decision, Policy, RetestReason, Verdict, check_decision,
};
use huren_core::signing::{SignedEnvelope, VerifiedSummary, VerifyError, verify_many};
use huren_core::stats::{self, ConsultationKey, Event, EventKind, GroupBy};
use huren_core::summary::{Summary, UnixMillis};
use huren_core::trust::AllianceCa;

use crate::error::HubError;
use crate::intake::Intake;
use crate::journal::Journal;
use crate::log::LogSigner;
use crate::policy::PolicyHandle;
use crate::signers::SignerCache;
use crate::store::{
    Access, DecisionOutcome, DecisionRecord, PriorQuery, PutOutcome, QueryRecord, SharedStore,
    StoredSummary, TreeHead,
};
use crate::verifier::SignatureChecks;
use crate::witness::client::Witnesses;

/// The hub's domain service.
pub struct Hub {
    store: SharedStore,
    /// Certified signing certificates of the alliance CA, validated once each.
    signers: SignerCache,
    /// Group-commit writer for what answered queries leave behind.
    journal: Journal,
    /// Group-commit writer for published summaries.
    intake: Intake,
    signatures: SignatureChecks,
    policy: Arc<PolicyHandle>,
    max_results: usize,
    log: LogSigner,
    /// How far past the hub's clock a summary's times may lie, in milliseconds.
    max_clock_skew_ms: i64,
    /// The witnesses asked to cosign every checkpoint handed out (none: checkpoints carry the
    /// log's signature only).
    witnesses: Option<Witnesses>,
    /// The last checkpoint sent to the witnesses: one round at a time, shared by every answer
    /// it covers.
    cosigned: tokio::sync::Mutex<Option<Cosigned>>,
}

/// A checkpoint with the witnesses' cosignatures it got.
struct Cosigned {
    head: TreeHead,
    note: String,
    /// Whether every witness cosigned it.
    complete: bool,
    at: std::time::Instant,
}

/// How long a checkpoint some witness did not cosign is reused before the witnesses are asked
/// again (when the log has not grown meanwhile).
const RETRY_COSIGNING: std::time::Duration = std::time::Duration::from_secs(2);

/// A result with the verdict for the caller.
#[derive(Clone, Debug)]
pub struct Judged {
    pub stored: StoredSummary,
    pub verdict: Verdict,
    /// Earlier versions, newest first (History with versions only).
    pub earlier: Vec<Judged>,
    /// The version's inclusion proof, when asked for.
    pub log_proof: Option<LogProof>,
}

/// An answer to FindPrior or History.
#[derive(Clone, Debug)]
pub struct JudgedAnswer {
    pub results: Vec<Judged>,
    pub truncated: bool,
    pub policy_version: String,
    /// The patient opted out and the purpose was not emergency: nothing is returned.
    pub withheld_by_consent: bool,
}

/// Why a query is made, who asked at the caller, and whether to prove its answers.
#[derive(Clone, Debug)]
pub struct Ask {
    pub purpose: Purpose,
    /// Who asked at the caller (a staff or account id checked by
    /// `huren_core::logentry::check_requester`), empty for no one named; logged in the access
    /// leaf.
    pub requester: String,
    pub with_proofs: bool,
}

/// What the patient's consent lets a query see.
#[derive(Clone, Copy, Debug, Default)]
struct Gate {
    withheld: bool,
    emergency_override: bool,
}

/// One logged access, with its inclusion proof.
#[derive(Clone, Debug)]
pub struct AccessRecord {
    pub index: u64,
    pub leaf: Vec<u8>,
    pub entry: Entry,
    pub proof: LogProof,
}

/// Who looked at a patient's results.
#[derive(Clone, Debug)]
pub struct AccessReport {
    pub entries: Vec<AccessRecord>,
    pub opted_out: bool,
}

/// Text shown in place of results withheld by a patient's opt-out.
pub const WITHHELD: &str =
    "the patient has opted out of sharing their results; only an emergency query sees them";

/// One ordered item, as the caller codes it.
#[derive(Clone, Debug)]
pub enum OrderCode {
    Catalogue { system: String, code: String },
    Local(String),
}

/// The order-time answer for one item.
#[derive(Clone, Debug)]
pub struct OrderAnswer {
    pub asked: OrderCode,
    /// The catalogue item (system, code, name) the order maps to.
    pub item: Option<(String, String, String)>,
    pub best: Option<Judged>,
    pub explanation: String,
    pub candidates: usize,
}

/// A decision as the caller states it.
#[derive(Clone, Debug)]
pub struct DecisionRequest {
    pub decision_id: String,
    pub publisher: InstitutionId,
    pub summary_id: String,
    pub version: u32,
    pub decision: Decision,
}

/// Statistics for a period.
#[derive(Clone, Debug)]
pub struct Statistics {
    /// Rows with a label (item or member name) where the policy knows one.
    pub rows: Vec<(stats::Row, String)>,
    pub total: stats::Row,
    pub policy_version: String,
}

/// The hub's clock.
pub fn now() -> UnixMillis {
    UnixMillis::now()
}

/// Longest decision id accepted.
const MAX_DECISION_ID: usize = 128;

impl Hub {
    /// The hub's request handling over `store`, with its journal, intake and signature-checking
    /// threads started (an error only if the system refuses a thread). Call it within a tokio
    /// runtime: the intake acknowledges from tasks on it.
    pub fn new(
        store: SharedStore,
        ca: AllianceCa,
        policy: Arc<PolicyHandle>,
        max_results: usize,
        log: LogSigner,
        metrics: Arc<crate::metrics::HubMetrics>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            journal: Journal::start(store.clone(), metrics.clone())?,
            intake: Intake::start(store.clone(), metrics)?,
            signatures: SignatureChecks::start()?,
            store,
            signers: SignerCache::new(ca),
            policy,
            max_results,
            log,
            max_clock_skew_ms: 600_000,
            witnesses: None,
            cosigned: tokio::sync::Mutex::new(None),
        })
    }

    /// Asks `witnesses` to cosign every checkpoint the hub hands out.
    pub fn with_witnesses(mut self, witnesses: Witnesses) -> Self {
        self.witnesses = (!witnesses.is_empty()).then_some(witnesses);
        self
    }

    /// Sets how far past the hub's clock a summary's performed or reported time may lie.
    pub fn with_max_clock_skew(mut self, seconds: u64) -> Self {
        self.max_clock_skew_ms = i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        self
    }

    /// The C2SP verifier key of the hub's log.
    pub fn log_verifier_key(&self) -> String {
        self.log.verifier_key()
    }

    pub fn max_results(&self) -> usize {
        self.max_results
    }

    /// Makes sure the policy in force is the log's latest policy leaf and records that leaf's
    /// index, which every verdict from now on names. The server calls it once before it
    /// serves: a policy put in force at a start is appended like one put in force by a reload,
    /// unless the latest policy leaf already holds the same text (a restart).
    pub async fn log_policy_in_force(&self) -> Result<u64, HubError> {
        let (policy, text) = self.policy.get_with_text();
        if let Some((index, leaf)) = self.store.latest_policy().await?
            && let Ok(Entry::Policy {
                version,
                text: logged,
                ..
            }) = Entry::decode(&leaf)
            && version == policy.version
            && logged == text.as_bytes()
        {
            self.policy.set_logged(&policy, index);
            tracing::info!(version = %policy.version, index, "policy in force, as logged before");
            return Ok(index);
        }
        let logged = self
            .store
            .append_policy(
                Entry::Policy {
                    at: now(),
                    version: policy.version.clone(),
                    text: text.into_bytes(),
                }
                .encode(),
            )
            .await?;
        self.policy.set_logged(&policy, logged.index);
        tracing::info!(version = %policy.version, index = logged.index, "policy in force, logged");
        Ok(logged.index)
    }

    /// Reads the policy file again and, when it changed, logs the new policy and puts it in
    /// force; a policy that fails its checks, or cannot be logged, is refused and the one in
    /// force stays (the error is logged).
    pub async fn reload_policy(&self) {
        let candidate = match self.policy.read_candidate() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "policy refused; keeping the policy in force");
                self.policy.refused();
                return;
            }
        };
        if self.policy.is_in_force(&candidate) {
            self.policy.refused();
            return;
        }
        let leaf = Entry::Policy {
            at: now(),
            version: candidate.policy.version.clone(),
            text: candidate.text.clone().into_bytes(),
        }
        .encode();
        match self.store.append_policy(leaf).await {
            Ok(logged) => {
                let p = self.policy.install(candidate, Some(logged.index));
                tracing::info!(version = %p.version, index = logged.index, items = p.items.len(), members = p.members.len(), "policy loaded and logged");
            }
            Err(e) => {
                tracing::error!(error = %e, "the new policy could not be logged; keeping the policy in force");
            }
        }
    }

    /// Reloads the policy when its file's time changed.
    pub async fn reload_policy_if_changed(&self) {
        if self.policy.changed_on_disk() {
            self.reload_policy().await;
        }
    }

    /// A policy leaf of the log with its inclusion proof against the latest checkpoint: any
    /// member may read the policies verdicts were made under (they hold no patient data).
    pub async fn policy_entry(
        &self,
        caller: &InstitutionId,
        index: u64,
    ) -> Result<(Vec<u8>, LogProof), HubError> {
        self.member_policy(caller)?;
        let head = self.store.durable_head().await?;
        if index >= head.size {
            return Err(HubError::NotAPolicy(format!(
                "log entry {index} does not exist (the log has {} entries)",
                head.size
            )));
        }
        let leaf = self.store.leaf(index).await?;
        if !matches!(Entry::decode(&leaf), Ok(Entry::Policy { .. })) {
            return Err(HubError::NotAPolicy(format!(
                "log entry {index} is not a policy"
            )));
        }
        Ok((leaf, self.log_proof(index, head).await?))
    }

    /// The policy in force, after checking that `caller` is a member (or an administrator).
    fn member_policy(&self, caller: &InstitutionId) -> Result<Arc<Policy>, HubError> {
        let policy = self.policy.get();
        if policy.member(caller).is_none() && !policy.is_administrator(caller) {
            return Err(HubError::NotMember {
                caller: caller.clone(),
                policy_version: policy.version.clone(),
            });
        }
        Self::not_revoked(&policy, caller, now())?;
        Ok(policy)
    }

    fn not_revoked(policy: &Policy, id: &InstitutionId, at: UnixMillis) -> Result<(), HubError> {
        match policy.revoked_at(id, at) {
            None => Ok(()),
            Some(r) => Err(HubError::Revoked {
                member: id.clone(),
                at: rfc3339(r.at),
                reason: r.reason.clone(),
            }),
        }
    }

    /// Signs the checkpoint of a tree head.
    fn sign(&self, head: TreeHead) -> Result<String, HubError> {
        self.log.sign(head).map_err(HubError::Checkpoint)
    }

    /// The checkpoint to hand out for a durable tree head: without witnesses, the log's
    /// signed checkpoint of `head`; with them, a checkpoint of at least `head`'s size with the
    /// cosignatures of the witnesses that gave one (one round at a time: concurrent callers
    /// share it, and a later head covers earlier ones). Proofs go against the head returned.
    async fn checkpoint_note(&self, head: TreeHead) -> Result<(TreeHead, String), HubError> {
        let Some(witnesses) = &self.witnesses else {
            return Ok((head, self.sign(head)?));
        };
        let mut last = self.cosigned.lock().await;
        if let Some(c) = last.as_ref()
            && c.head.size >= head.size
            && (c.complete || c.at.elapsed() < RETRY_COSIGNING)
        {
            return Ok((c.head, c.note.clone()));
        }
        // The newest durable head, so this round covers what arrived while waiting.
        let current = self.store.durable_head().await?;
        let current = if current.size >= head.size {
            current
        } else {
            head
        };
        let note = self.sign(current)?;
        let (note, count) = witnesses.cosign(&note, current, &self.store).await;
        if count < witnesses.len() {
            tracing::warn!(
                size = current.size,
                cosignatures = count,
                witnesses = witnesses.len(),
                "a checkpoint went out without every witness's cosignature"
            );
        }
        *last = Some(Cosigned {
            head: current,
            note: note.clone(),
            complete: count == witnesses.len(),
            at: std::time::Instant::now(),
        });
        Ok((current, note))
    }

    /// The inclusion proof of leaf `index` against a checkpoint covering `head`.
    async fn log_proof(&self, index: u64, head: TreeHead) -> Result<LogProof, HubError> {
        let (head, checkpoint) = self.checkpoint_note(head).await?;
        Ok(LogProof {
            index,
            tree_size: head.size,
            proof: self.store.inclusion_proof(index, head.size).await?,
            checkpoint,
        })
    }
}

use huren_core::rules::rfc3339;

/// Reads a re-test reason code from the wire enum's number.
pub fn retest_reason(n: i32) -> Option<Option<RetestReason>> {
    use RetestReason::*;
    Some(match n {
        0 => None,
        1 => Some(ConditionChanged),
        2 => Some(FastChangingValue),
        3 => Some(CriticalStep),
        4 => Some(Emergency),
        5 => Some(Appraisal),
        6 => Some(Other),
        7 => Some(PatientRequest),
        8 => Some(SourceFailedEqa),
        9 => Some(TooOld),
        10 => Some(PhysicianJudgement),
        _ => return None,
    })
}
