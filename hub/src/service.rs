//! What the hub does, in domain terms: publish, find prior results with verdicts, list a
//! patient's history, check an order, record decisions, compute statistics. No gRPC types here;
//! `grpc` converts to and from them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use huren_core::identity::InstitutionId;
use huren_core::logentry::{Entry, LogProof, Method, Purpose, ResultRef};
use huren_core::merkle::Hash;
use huren_core::pseudonym::Pseudonym;
use huren_core::rules::{
    self, AfterRevocation, Decision, Policy, Reason, RetestReason, Verdict, check_decision,
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
    Shown, StoredSummary, TreeHead,
};
use crate::verifier::SignatureChecks;

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
}

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

/// Why a query is made and whether to prove its answers.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    pub purpose: Purpose,
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

/// The current time in Unix milliseconds.
pub fn now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    UnixMillis(i64::try_from(ms).unwrap_or(i64::MAX))
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
    ) -> std::io::Result<Self> {
        Ok(Self {
            journal: Journal::start(store.clone())?,
            intake: Intake::start(store.clone())?,
            signatures: SignatureChecks::start()?,
            store,
            signers: SignerCache::new(ca),
            policy,
            max_results,
            log,
            max_clock_skew_ms: 600_000,
        })
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

    /// The inclusion proof of leaf `index` against the signed checkpoint of `head`.
    async fn log_proof(&self, index: u64, head: TreeHead) -> Result<LogProof, HubError> {
        Ok(LogProof {
            index,
            tree_size: head.size,
            proof: self.store.inclusion_proof(index, head.size).await?,
            checkpoint: self.sign(head)?,
        })
    }

    /// The latest checkpoint; it covers only durable entries.
    pub async fn checkpoint(&self, caller: &InstitutionId) -> Result<String, HubError> {
        self.member_policy(caller)?;
        let head = self.store.durable_head().await?;
        self.sign(head)
    }

    /// The consistency proof between two tree sizes (`new_size` 0: the latest durable size).
    pub async fn consistency_proof(
        &self,
        caller: &InstitutionId,
        old_size: u64,
        new_size: u64,
    ) -> Result<(Vec<Hash>, u64), HubError> {
        self.member_policy(caller)?;
        let new_size = match new_size {
            0 => self.store.durable_head().await?.size,
            n => n,
        };
        Ok((
            self.store.consistency_proof(old_size, new_size).await?,
            new_size,
        ))
    }

    /// The inclusion proof of leaf `index` in the tree of `tree_size` leaves (0: the latest),
    /// with the signed checkpoint when that size is the latest durable one, and the leaf's
    /// bytes when the caller may read them: its own entries (a summary it published, a
    /// decision it recorded, an access it made, a consent change it recorded), or any entry
    /// for an administrator, whose read is logged as an access (purpose ADMINISTRATION) to the
    /// entry's patient. Others get the proof alone (an empty leaf): a member checks entries it
    /// already holds; other members' contents reach it only through the queries that enforce
    /// purpose, consent and audit.
    pub async fn inclusion_proof(
        &self,
        caller: &InstitutionId,
        index: u64,
        tree_size: u64,
    ) -> Result<(Vec<u8>, LogProof), HubError> {
        let policy = self.member_policy(caller)?;
        let head = if tree_size == 0 {
            self.store.durable_head().await?
        } else {
            self.store.recent_durable_head(tree_size).await?
        };
        let proof = if tree_size == 0 || tree_size == head.size {
            self.log_proof(index, head).await?
        } else {
            LogProof {
                index,
                tree_size,
                proof: self.store.inclusion_proof(index, tree_size).await?,
                checkpoint: String::new(),
            }
        };
        let leaf = self.store.leaf(index).await?;
        let entry = Entry::decode(&leaf).map_err(|e| {
            HubError::Store(crate::store::StoreError::Corrupt(format!(
                "log leaf {index}: {e}"
            )))
        })?;
        let me = caller.as_str();
        let (own, patient) = match &entry {
            Entry::Summary { body, .. } => {
                let s = Summary::from_stored_body_bytes(body).map_err(|e| {
                    HubError::Store(crate::store::StoreError::Corrupt(format!(
                        "log leaf {index}: {e}"
                    )))
                })?;
                (s.publisher == *caller, Some(s.patient))
            }
            Entry::Decision {
                member,
                publisher,
                summary_id,
                ..
            } => (
                member == me,
                self.store
                    .latest(publisher, summary_id)
                    .await?
                    .map(|s| s.summary.patient),
            ),
            Entry::Access {
                caller: c,
                pseudonym,
                ..
            } => (c == me, Some(Pseudonym::from_bytes(*pseudonym))),
            Entry::Consent {
                member, pseudonym, ..
            } => (member == me, Some(Pseudonym::from_bytes(*pseudonym))),
        };
        if own {
            return Ok((leaf, proof));
        }
        if !policy.is_administrator(caller) {
            return Ok((Vec::new(), proof));
        }
        // The audit read is logged like any access to the patient's data. (A decision whose
        // result is gone has no patient to file it under; it is filed under no one.)
        let patient = patient.unwrap_or(Pseudonym::from_bytes([0; 32]));
        self.journal(
            &policy,
            caller,
            &[],
            &[],
            Purpose::Administration,
            Method::LogEntry,
            &patient,
            Gate::default(),
            now(),
        )
        .await?;
        tracing::info!(index, "log entry read for audit");
        Ok((leaf, proof))
    }

    /// What the patient's consent lets this purpose see.
    async fn gate(&self, patient: &Pseudonym, purpose: Purpose) -> Result<Gate, HubError> {
        if !self.store.opted_out(patient).await? {
            return Ok(Gate::default());
        }
        let emergency = purpose == Purpose::Emergency;
        if emergency {
            tracing::warn!("emergency access to the results of a patient who opted out");
        }
        Ok(Gate {
            withheld: !emergency,
            emergency_override: emergency,
        })
    }

    /// Writes what an answered query leaves behind (what the caller was shown, statistics
    /// events, the access leaf) through the journal, and waits until it is written: no answer
    /// goes out without its audit record. (Each argument is one part of the record.)
    #[allow(clippy::too_many_arguments)]
    async fn journal(
        &self,
        policy: &Policy,
        caller: &InstitutionId,
        shown: &[&Judged],
        asked: &[(String, String)],
        purpose: Purpose,
        method: Method,
        patient: &Pseudonym,
        gate: Gate,
        at: UnixMillis,
    ) -> Result<(), HubError> {
        let events: Vec<Event> = asked
            .iter()
            .map(|(system, code)| {
                let best = shown.iter().find(|j| {
                    j.verdict.recognised()
                        && j.stored.summary.item.system == *system
                        && j.stored.summary.item.code == *code
                });
                Event {
                    at,
                    member: caller.clone(),
                    item_system: system.clone(),
                    item_code: code.clone(),
                    price_fen: policy.item(system, code).map_or(0, |i| i.price_fen),
                    kind: EventKind::Query {
                        found: best.is_some(),
                        cross_member: best.is_some_and(|j| j.stored.summary.publisher != *caller),
                    },
                }
            })
            .collect();
        let record = QueryRecord {
            member: caller.clone(),
            shown: shown
                .iter()
                .map(|j| Shown {
                    publisher: j.stored.receipt.publisher.to_string(),
                    summary_id: j.stored.receipt.summary_id.to_string(),
                    version: j.stored.receipt.version,
                    item_system: j.stored.summary.item.system.clone(),
                    item_code: j.stored.summary.item.code.clone(),
                    recognised: j.verdict.recognised(),
                })
                .collect(),
            events,
            access: Access {
                at,
                caller: caller.clone(),
                purpose,
                method,
                emergency_override: gate.emergency_override,
                withheld_by_consent: gate.withheld,
                patient: *patient,
                results: shown
                    .iter()
                    .map(|j| ResultRef {
                        publisher: j.stored.receipt.publisher.to_string(),
                        summary_id: j.stored.receipt.summary_id.to_string(),
                        version: j.stored.receipt.version,
                    })
                    .collect(),
                policy_version: policy.version.clone(),
            },
        };
        self.journal.write(record).await
    }

    /// Attaches inclusion proofs (against one durable checkpoint) to results and their earlier
    /// versions.
    async fn attach_proofs<'a>(
        &self,
        results: impl Iterator<Item = &'a mut Judged>,
    ) -> Result<(), HubError> {
        let mut results: Vec<&mut Judged> = results.collect();
        fn last_index(j: &Judged) -> u64 {
            j.earlier
                .iter()
                .map(last_index)
                .fold(j.stored.log_index, u64::max)
        }
        // Every result was durable before it was acknowledged, so a recent durable head
        // covers them without a flush per query.
        let min_size = results.iter().map(|j| last_index(j) + 1).max().unwrap_or(0);
        let head = self.store.recent_durable_head(min_size).await?;
        let checkpoint = self.sign(head)?;
        // Each result and its earlier versions, depth first, without recursing in async.
        let mut todo: Vec<&mut Judged> = results.drain(..).collect();
        while let Some(j) = todo.pop() {
            j.log_proof = Some(LogProof {
                index: j.stored.log_index,
                tree_size: head.size,
                proof: self
                    .store
                    .inclusion_proof(j.stored.log_index, head.size)
                    .await?,
                checkpoint: checkpoint.clone(),
            });
            todo.extend(j.earlier.iter_mut());
        }
        Ok(())
    }

    /// Verifies and stores a summary published by `caller`.
    ///
    /// Checks, in order: the caller is a member; the signing certificate is the alliance's and
    /// valid now; the signature covers the exact body bytes; the body is well formed; the
    /// body's publisher is the certificate's institution; the caller is that publisher. Only
    /// then is anything written.
    pub async fn publish(
        &self,
        caller: &InstitutionId,
        envelope: SignedEnvelope,
    ) -> Result<(PutOutcome, LogProof), HubError> {
        let policy = self.member_policy(caller)?;
        let at = now();
        let signer = self
            .signers
            .certify(&envelope.signer_certificate, at)
            .map_err(VerifyError::from)?;
        let verified = self.signatures.verify(envelope, signer).await?;
        self.may_publish(&policy, caller, &verified, at)?;
        self.store_verified(vec![verified], at)
            .await?
            .pop()
            .ok_or_else(|| {
                HubError::Checkpoint("a publish of one summary gave no outcome".into())
            })?
    }

    /// [`Hub::publish`] for many summaries at once: each is checked on its own (signatures
    /// together, in one batch equation) and has its own outcome, in order. Only a caller that
    /// may not publish at all fails the whole call.
    pub async fn publish_batch(
        &self,
        caller: &InstitutionId,
        envelopes: Vec<SignedEnvelope>,
    ) -> Result<Vec<Result<(PutOutcome, LogProof), HubError>>, HubError> {
        let policy = self.member_policy(caller)?;
        let at = now();
        let mut outcomes: Vec<Option<Result<(PutOutcome, LogProof), HubError>>> =
            Vec::with_capacity(envelopes.len());
        let mut certified = Vec::with_capacity(envelopes.len());
        let mut positions = Vec::with_capacity(envelopes.len());
        for (i, envelope) in envelopes.into_iter().enumerate() {
            match self.signers.certify(&envelope.signer_certificate, at) {
                Ok(signer) => {
                    positions.push(i);
                    certified.push((envelope, signer));
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(Err(VerifyError::from(e).into()))),
            }
        }
        // Signature checks are CPU work: keep them off the async workers.
        // A panicked check is the hub's fault (INTERNAL), not the request's.
        let checked = tokio::task::spawn_blocking(move || verify_many(certified))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "a batch of signature checks panicked");
                HubError::Checking
            })?;
        let mut accepted = Vec::with_capacity(checked.len());
        let mut accepted_at = Vec::with_capacity(checked.len());
        for (i, v) in positions.into_iter().zip(checked) {
            match v
                .map_err(HubError::from)
                .and_then(|v| self.may_publish(&policy, caller, &v, at).map(|()| v))
            {
                Ok(v) => {
                    accepted_at.push(i);
                    accepted.push(v);
                }
                Err(e) => outcomes[i] = Some(Err(e)),
            }
        }
        if !accepted.is_empty() {
            for (i, r) in accepted_at
                .into_iter()
                .zip(self.store_verified(accepted, at).await?)
            {
                outcomes[i] = Some(r);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(HubError::BadRequest("not processed".into()))))
            .collect())
    }

    /// Whether `caller` may publish this verified summary: its own, not revoked, and not
    /// dated after the hub's clock plus the allowed skew.
    fn may_publish(
        &self,
        policy: &Policy,
        caller: &InstitutionId,
        verified: &VerifiedSummary,
        at: UnixMillis,
    ) -> Result<(), HubError> {
        let latest = UnixMillis(at.0.saturating_add(self.max_clock_skew_ms));
        let s = &verified.summary;
        for (field, t) in [
            ("performed_at_ms", s.performed_at),
            ("reported_at_ms", s.reported_at),
        ] {
            if t > latest {
                return Err(HubError::BadRequest(format!(
                    "{field} of {} is {}, after the hub's clock ({}) plus the {} s it allows for clock drift: a result cannot be performed or reported in the future; check the sending system's clock and time zone",
                    s.result_key(),
                    rfc3339(t),
                    rfc3339(at),
                    self.max_clock_skew_ms / 1000
                )));
            }
        }
        if verified.summary.publisher != *caller {
            return Err(HubError::NotPublisher {
                caller: caller.clone(),
                publisher: verified.summary.publisher.clone(),
            });
        }
        // The signing certificate names the publisher: a revoked signer's summaries are refused.
        Self::not_revoked(policy, &verified.summary.publisher, at)
    }

    /// Stores verified summaries through the publish writer; once durable, each stored one
    /// comes with its inclusion proof against one signed checkpoint.
    async fn store_verified(
        &self,
        verified: Vec<VerifiedSummary>,
        at: UnixMillis,
    ) -> Result<Vec<Result<(PutOutcome, LogProof), HubError>>, HubError> {
        let (puts, head) = self.intake.put(verified, at).await?;
        let checkpoint = self.sign(head)?;
        Ok(puts
            .into_iter()
            .map(|put| {
                let put = put?;
                Ok((
                    put.outcome,
                    LogProof {
                        index: put.index,
                        tree_size: head.size,
                        proof: put.proof,
                        checkpoint: checkpoint.clone(),
                    },
                ))
            })
            .collect())
    }

    /// Whether a stored version is returned at all: not if its publisher's revocation covers
    /// it and the policy withholds such summaries.
    fn shown_at_all(policy: &Policy, s: &StoredSummary) -> bool {
        !policy
            .revocation_covering(&s.summary.publisher, s.receipt.accepted_at)
            .is_some_and(|r| r.after == AfterRevocation::Withheld)
    }

    fn judge(
        policy: &Policy,
        caller: &InstitutionId,
        s: StoredSummary,
        latest: bool,
        as_of: UnixMillis,
    ) -> Judged {
        let mut verdict = rules::evaluate(policy, caller, &s.summary, latest, as_of);
        if let Some(r) = policy.revocation_covering(&s.summary.publisher, s.receipt.accepted_at) {
            verdict.reasons.push((
                Reason::PublisherRevoked,
                format!(
                    "publisher revoked ({}) at {}; the hub accepted this result at {}, after that",
                    r.reason,
                    rfc3339(r.at),
                    rfc3339(s.receipt.accepted_at)
                ),
            ));
            verdict.hr_mark = None;
        }
        Judged {
            stored: s,
            verdict,
            earlier: Vec::new(),
            log_proof: None,
        }
    }

    /// The latest versions of one patient's results for some items, newest first, each with
    /// its verdict for the caller.
    pub async fn find_prior(
        &self,
        caller: &InstitutionId,
        query: &PriorQuery,
        ask: Ask,
    ) -> Result<JudgedAnswer, HubError> {
        let policy = self.member_policy(caller)?;
        let gate = self.gate(&query.patient, ask.purpose).await?;
        let found = if gate.withheld {
            Default::default()
        } else {
            self.store.find_prior(query).await?
        };
        let mut results: Vec<Judged> = found
            .results
            .into_iter()
            .filter(|s| Self::shown_at_all(&policy, s))
            .map(|s| Self::judge(&policy, caller, s, true, query.until))
            .collect();
        let at = now();
        let shown = results.iter().collect::<Vec<_>>();
        self.journal(
            &policy,
            caller,
            &shown,
            &query.items,
            ask.purpose,
            Method::FindPrior,
            &query.patient,
            gate,
            at,
        )
        .await?;
        if ask.with_proofs {
            self.attach_proofs(results.iter_mut()).await?;
        }
        Ok(JudgedAnswer {
            results,
            truncated: found.truncated,
            policy_version: policy.version.clone(),
            withheld_by_consent: gate.withheld,
        })
    }

    /// All of one patient's results, newest first, with verdicts as of now; with
    /// `with_versions`, each result's earlier versions too.
    pub async fn history(
        &self,
        caller: &InstitutionId,
        query: &PriorQuery,
        with_versions: bool,
        ask: Ask,
    ) -> Result<JudgedAnswer, HubError> {
        let policy = self.member_policy(caller)?;
        let at = now();
        let gate = self.gate(&query.patient, ask.purpose).await?;
        let found = if gate.withheld {
            Default::default()
        } else {
            self.store.history(query).await?
        };
        let mut results = Vec::with_capacity(found.results.len());
        for s in found
            .results
            .into_iter()
            .filter(|s| Self::shown_at_all(&policy, s))
        {
            let earlier = if with_versions && s.summary.version > 1 {
                let r = &s.receipt;
                self.store
                    .versions(r.publisher.as_str(), r.summary_id.as_str())
                    .await?
                    .into_iter()
                    .filter(|v| v.summary.version < s.summary.version)
                    .map(|v| Self::judge(&policy, caller, v, false, at))
                    .collect()
            } else {
                Vec::new()
            };
            let mut judged = Self::judge(&policy, caller, s, true, at);
            judged.earlier = earlier;
            results.push(judged);
        }
        let shown = results.iter().collect::<Vec<_>>();
        self.journal(
            &policy,
            caller,
            &shown,
            &[],
            ask.purpose,
            Method::History,
            &query.patient,
            gate,
            at,
        )
        .await?;
        if ask.with_proofs {
            self.attach_proofs(results.iter_mut()).await?;
        }
        Ok(JudgedAnswer {
            results,
            truncated: found.truncated,
            policy_version: policy.version.clone(),
            withheld_by_consent: gate.withheld,
        })
    }

    /// The order-time check: per ordered item, the newest recognised result, or why none.
    pub async fn check_order(
        &self,
        caller: &InstitutionId,
        patient: Pseudonym,
        order: Vec<OrderCode>,
        as_of: UnixMillis,
        ask: Ask,
    ) -> Result<(Vec<OrderAnswer>, String, bool), HubError> {
        let policy = self.member_policy(caller)?;
        let gate = self.gate(&patient, ask.purpose).await?;
        let mut answers = Vec::with_capacity(order.len());
        let mut shown = Vec::new();
        let mut asked = Vec::new();
        for code in order {
            let item = match &code {
                OrderCode::Catalogue { system, code } => policy
                    .item(system, code)
                    .map(|i| (i.system.clone(), i.code.clone(), i.name.clone()))
                    .ok_or_else(|| format!("{code} ({system}) is not in the alliance catalogue")),
                OrderCode::Local(local) => policy
                    .map_local(caller, local)
                    .map(|i| (i.system.clone(), i.code.clone(), i.name.clone()))
                    .ok_or_else(|| {
                        format!("local code {local} is not mapped to a catalogue item for {caller}")
                    }),
            };
            let (system, code_in_catalogue, name) = match item {
                Ok(i) => i,
                Err(explanation) => {
                    answers.push(OrderAnswer {
                        asked: code,
                        item: None,
                        best: None,
                        explanation,
                        candidates: 0,
                    });
                    continue;
                }
            };
            let found = if gate.withheld {
                Default::default()
            } else {
                self.store
                    .find_prior(&PriorQuery {
                        patient,
                        items: vec![(system.clone(), code_in_catalogue.clone())],
                        from: UnixMillis(0),
                        until: as_of,
                        limit: self.max_results,
                    })
                    .await?
            };
            let judged: Vec<Judged> = found
                .results
                .into_iter()
                .filter(|s| Self::shown_at_all(&policy, s))
                .map(|s| Self::judge(&policy, caller, s, true, as_of))
                .collect();
            let candidates = judged.len();
            let best = judged.iter().find(|j| j.verdict.recognised()).cloned();
            let explanation = match (&best, judged.first()) {
                (None, None) if gate.withheld => WITHHELD.to_owned(),
                (Some(b), _) => format!(
                    "recognised ({}) from {}",
                    b.verdict.hr_mark.as_deref().unwrap_or("no mark"),
                    b.stored.summary.publisher
                ),
                (None, None) => "no result on file for this patient".to_owned(),
                (None, Some(newest)) => format!(
                    "no recognised result; the newest is not recognised: {}",
                    newest
                        .verdict
                        .reasons
                        .iter()
                        .map(|(_, text)| text.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            };
            if let Some(b) = &best {
                shown.push(b.clone());
            }
            asked.push((system.clone(), code_in_catalogue.clone()));
            answers.push(OrderAnswer {
                asked: code,
                item: Some((system, code_in_catalogue, name)),
                best,
                explanation,
                candidates,
            });
        }
        let at = now();
        let shown_refs = shown.iter().collect::<Vec<_>>();
        self.journal(
            &policy,
            caller,
            &shown_refs,
            &asked,
            ask.purpose,
            Method::CheckOrder,
            &patient,
            gate,
            at,
        )
        .await?;
        if ask.with_proofs {
            self.attach_proofs(answers.iter_mut().filter_map(|a| a.best.as_mut()))
                .await?;
        }
        Ok((answers, policy.version.clone(), gate.withheld))
    }

    /// Records the caller's decision on a result it consulted.
    pub async fn record_decision(
        &self,
        caller: &InstitutionId,
        d: DecisionRequest,
    ) -> Result<(DecisionOutcome, bool, Option<LogProof>), HubError> {
        let policy = self.member_policy(caller)?;
        if d.decision_id.is_empty() || d.decision_id.len() > MAX_DECISION_ID {
            return Err(HubError::BadRequest(format!(
                "decision_id must be 1 to {MAX_DECISION_ID} bytes; use an id unique within your institution"
            )));
        }
        let Some(latest) = self
            .store
            .latest(d.publisher.as_str(), &d.summary_id)
            .await?
        else {
            return Err(HubError::UnknownResult(format!(
                "{}/{}",
                d.publisher, d.summary_id
            )));
        };
        if d.version == 0 || d.version > latest.summary.version {
            return Err(HubError::UnknownResult(format!(
                "{}/{} version {}",
                d.publisher, d.summary_id, d.version
            )));
        }
        // Looked up under the patient the result belongs to now: a result moved to another
        // patient by an amendment counts as not consulted by whoever saw it under the old one.
        let Some(consulted) = self
            .store
            .consultation(
                caller,
                &latest.summary.patient,
                d.publisher.as_str(),
                &d.summary_id,
            )
            .await?
        else {
            return Err(HubError::NotConsulted(format!(
                "{}/{}",
                d.publisher, d.summary_id
            )));
        };
        check_decision(consulted.recognised, &d.decision)?;
        let (adopted, reason, note) = match &d.decision {
            Decision::Adopted => (true, None, String::new()),
            Decision::Retested { reason, note } => (false, *reason, note.clone()),
        };
        let at = now();
        let record = DecisionRecord {
            member: caller.clone(),
            decision_id: d.decision_id.clone(),
            publisher: d.publisher.clone(),
            summary_id: d.summary_id.clone(),
            version: d.version,
            adopted,
            reason,
            note,
            at,
            recognised: consulted.recognised,
            event: Event {
                at,
                member: caller.clone(),
                price_fen: policy
                    .item(&consulted.item_system, &consulted.item_code)
                    .map_or(0, |i| i.price_fen),
                item_system: consulted.item_system,
                item_code: consulted.item_code,
                kind: EventKind::Decision {
                    adopted,
                    reason,
                    consultation: Some(ConsultationKey {
                        publisher: d.publisher.to_string(),
                        summary_id: d.summary_id.clone(),
                        consulted_at: consulted.at,
                    }),
                },
            },
        };
        let (outcome, logged) = self.store.record_decision_logged(&record).await?;
        let recognised = match &outcome {
            DecisionOutcome::AlreadyRecorded { recognised, .. } => *recognised,
            DecisionOutcome::Recorded { .. } => consulted.recognised,
        };
        let proof = match logged {
            Some(l) => Some(self.log_proof(l.index, l.head).await?),
            None => None,
        };
        Ok((outcome, recognised, proof))
    }

    /// Records a patient's opt-out (or opt-back-in), as told to the calling member. Only a
    /// member that holds results of the patient (it published one) or an administrator may
    /// record it, either way; the log leaf names who did.
    pub async fn set_consent(
        &self,
        caller: &InstitutionId,
        patient: &Pseudonym,
        opted_out: bool,
    ) -> Result<(bool, UnixMillis, LogProof), HubError> {
        let policy = self.member_policy(caller)?;
        if !policy.is_administrator(caller)
            && !self.store.has_published_for(patient, caller).await?
        {
            return Err(HubError::ConsentNotYours {
                caller: caller.clone(),
            });
        }
        let at = now();
        let (changed, logged) = self
            .store
            .set_consent(patient, opted_out, caller, at)
            .await?;
        tracing::info!(opted_out, changed, "consent recorded");
        Ok((
            changed,
            at,
            self.log_proof(logged.index, logged.head).await?,
        ))
    }

    /// Who looked at a patient's results in `[from, to)`, each access with its inclusion
    /// proof. Any member may ask (on the patient's behalf); the report is itself logged as an
    /// access (purpose ADMINISTRATION for an administrator, PATIENT_REQUEST for a member).
    pub async fn access_report(
        &self,
        caller: &InstitutionId,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<AccessReport, HubError> {
        let policy = self.member_policy(caller)?;
        let indexes = self.store.accesses(patient, from, to).await?;
        let purpose = if policy.is_administrator(caller) {
            Purpose::Administration
        } else {
            Purpose::PatientRequest
        };
        self.journal(
            &policy,
            caller,
            &[],
            &[],
            purpose,
            Method::AccessReport,
            patient,
            Gate::default(),
            now(),
        )
        .await?;
        let head = self.store.durable_head().await?;
        let checkpoint = self.sign(head)?;
        let mut entries = Vec::with_capacity(indexes.len());
        for index in indexes {
            let leaf = self.store.leaf(index).await?;
            let entry = Entry::decode(&leaf).map_err(|e| {
                HubError::Store(crate::store::StoreError::Corrupt(format!(
                    "log leaf {index}: {e}"
                )))
            })?;
            entries.push(AccessRecord {
                index,
                proof: LogProof {
                    index,
                    tree_size: head.size,
                    proof: self.store.inclusion_proof(index, head.size).await?,
                    checkpoint: checkpoint.clone(),
                },
                leaf,
                entry,
            });
        }
        Ok(AccessReport {
            entries,
            opted_out: self.store.opted_out(patient).await?,
        })
    }

    /// Statistics for `[from, to)`. Administrators see everything; a member its own events.
    pub async fn statistics(
        &self,
        caller: &InstitutionId,
        from: UnixMillis,
        to: UnixMillis,
        by: GroupBy,
    ) -> Result<Statistics, HubError> {
        let policy = self.member_policy(caller)?;
        let mut events = self.store.events(from, to).await?;
        if !policy.is_administrator(caller) {
            events.retain(|e| e.member == *caller);
        }
        let (rows, total) = stats::aggregate(&events, by, policy.utc_offset_seconds);
        let rows = rows
            .into_iter()
            .map(|r| {
                let label = match by {
                    GroupBy::Item => policy
                        .items
                        .values()
                        .find(|i| i.code == r.key)
                        .map(|i| i.name.clone()),
                    GroupBy::Member => InstitutionId::parse(&r.key)
                        .ok()
                        .and_then(|id| policy.member(&id).map(|m| m.name.clone())),
                    GroupBy::Day | GroupBy::Month => None,
                };
                (r, label.unwrap_or_default())
            })
            .collect();
        Ok(Statistics {
            rows,
            total,
            policy_version: policy.version.clone(),
        })
    }
}

/// A time as RFC 3339 in UTC, for messages.
fn rfc3339(t: UnixMillis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.0) * 1_000_000)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{} ms", t.0))
}

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
