//! What the hub does, in domain terms: publish, find prior results with verdicts, list a
//! patient's history, check an order, record decisions, compute statistics. No gRPC types here;
//! `grpc` converts to and from them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use huren_core::identity::InstitutionId;
use huren_core::pseudonym::Pseudonym;
use huren_core::rules::{self, Decision, Policy, RetestReason, Verdict, check_decision};
use huren_core::signing::SignedEnvelope;
use huren_core::stats::{self, Event, EventKind, GroupBy};
use huren_core::summary::UnixMillis;
use huren_core::trust::AllianceCa;

use crate::error::HubError;
use crate::policy::PolicyHandle;
use crate::store::{DecisionOutcome, DecisionRecord, PriorQuery, PutOutcome, Store, StoredSummary};

/// The hub's domain service.
pub struct Hub {
    store: Store,
    ca: AllianceCa,
    policy: Arc<PolicyHandle>,
    max_results: usize,
}

/// A result with the verdict for the caller.
#[derive(Clone, Debug)]
pub struct Judged {
    pub stored: StoredSummary,
    pub verdict: Verdict,
    /// Earlier versions, newest first (History with versions only).
    pub earlier: Vec<Judged>,
}

/// An answer to FindPrior or History.
#[derive(Clone, Debug)]
pub struct JudgedAnswer {
    pub results: Vec<Judged>,
    pub truncated: bool,
    pub policy_version: String,
}

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
    pub fn new(
        store: Store,
        ca: AllianceCa,
        policy: Arc<PolicyHandle>,
        max_results: usize,
    ) -> Self {
        Self {
            store,
            ca,
            policy,
            max_results,
        }
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
        Ok(policy)
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
    ) -> Result<PutOutcome, HubError> {
        self.member_policy(caller)?;
        let at = now();
        let verified = envelope.verify(&self.ca, at)?;
        if verified.summary.publisher != *caller {
            return Err(HubError::NotPublisher {
                caller: caller.clone(),
                publisher: verified.summary.publisher,
            });
        }
        Ok(self.store.put_summary(&verified, at).await?)
    }

    fn judge(
        policy: &Policy,
        caller: &InstitutionId,
        s: StoredSummary,
        latest: bool,
        as_of: UnixMillis,
    ) -> Judged {
        let verdict = rules::evaluate(policy, caller, &s.summary, latest, as_of);
        Judged {
            stored: s,
            verdict,
            earlier: Vec::new(),
        }
    }

    /// Records what the caller was shown, and one query event per item asked.
    fn record(
        &self,
        policy: &Policy,
        caller: &InstitutionId,
        shown: &[&Judged],
        asked: &[(String, String)],
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
        let shown: Vec<(&StoredSummary, bool)> = shown
            .iter()
            .map(|j| (&j.stored, j.verdict.recognised()))
            .collect();
        Ok(self.store.record_queries(caller, &shown, &events)?)
    }

    /// The latest versions of one patient's results for some items, newest first, each with
    /// its verdict for the caller.
    pub fn find_prior(
        &self,
        caller: &InstitutionId,
        query: &PriorQuery,
    ) -> Result<JudgedAnswer, HubError> {
        let policy = self.member_policy(caller)?;
        let found = self.store.find_prior(query)?;
        let results: Vec<Judged> = found
            .results
            .into_iter()
            .map(|s| Self::judge(&policy, caller, s, true, query.until))
            .collect();
        self.record(
            &policy,
            caller,
            &results.iter().collect::<Vec<_>>(),
            &query.items,
            now(),
        )?;
        Ok(JudgedAnswer {
            results,
            truncated: found.truncated,
            policy_version: policy.version.clone(),
        })
    }

    /// All of one patient's results, newest first, with verdicts as of now; with
    /// `with_versions`, each result's earlier versions too.
    pub fn history(
        &self,
        caller: &InstitutionId,
        query: &PriorQuery,
        with_versions: bool,
    ) -> Result<JudgedAnswer, HubError> {
        let policy = self.member_policy(caller)?;
        let at = now();
        let found = self.store.history(query)?;
        let mut results = Vec::with_capacity(found.results.len());
        for s in found.results {
            let earlier = if with_versions && s.summary.version > 1 {
                let r = &s.receipt;
                self.store
                    .versions(r.publisher.as_str(), r.summary_id.as_str())?
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
        self.record(
            &policy,
            caller,
            &results.iter().collect::<Vec<_>>(),
            &[],
            at,
        )?;
        Ok(JudgedAnswer {
            results,
            truncated: found.truncated,
            policy_version: policy.version.clone(),
        })
    }

    /// The order-time check: per ordered item, the newest recognised result, or why none.
    pub fn check_order(
        &self,
        caller: &InstitutionId,
        patient: Pseudonym,
        order: Vec<OrderCode>,
        as_of: UnixMillis,
    ) -> Result<(Vec<OrderAnswer>, String), HubError> {
        let policy = self.member_policy(caller)?;
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
            let found = self.store.find_prior(&PriorQuery {
                patient,
                items: vec![(system.clone(), code_in_catalogue.clone())],
                from: UnixMillis(0),
                until: as_of,
                limit: self.max_results,
            })?;
            let judged: Vec<Judged> = found
                .results
                .into_iter()
                .map(|s| Self::judge(&policy, caller, s, true, as_of))
                .collect();
            let candidates = judged.len();
            let best = judged.iter().find(|j| j.verdict.recognised()).cloned();
            let explanation = match (&best, judged.first()) {
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
        self.record(
            &policy,
            caller,
            &shown.iter().collect::<Vec<_>>(),
            &asked,
            now(),
        )?;
        Ok((answers, policy.version.clone()))
    }

    /// Records the caller's decision on a result it consulted.
    pub async fn record_decision(
        &self,
        caller: &InstitutionId,
        d: DecisionRequest,
    ) -> Result<(DecisionOutcome, bool), HubError> {
        let policy = self.member_policy(caller)?;
        if d.decision_id.is_empty() || d.decision_id.len() > MAX_DECISION_ID {
            return Err(HubError::BadRequest(format!(
                "decision_id must be 1 to {MAX_DECISION_ID} bytes; use an id unique within your institution"
            )));
        }
        let Some(latest) = self.store.latest(d.publisher.as_str(), &d.summary_id)? else {
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
        let Some(consulted) =
            self.store
                .consultation(caller, d.publisher.as_str(), &d.summary_id)?
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
                kind: EventKind::Decision { adopted, reason },
            },
        };
        let outcome = self.store.record_decision(&record).await?;
        let recognised = match &outcome {
            DecisionOutcome::AlreadyRecorded { recognised, .. } => *recognised,
            DecisionOutcome::Recorded { .. } => consulted.recognised,
        };
        Ok((outcome, recognised))
    }

    /// Statistics for `[from, to)`. Administrators see everything; a member its own events.
    pub fn statistics(
        &self,
        caller: &InstitutionId,
        from: UnixMillis,
        to: UnixMillis,
        by: GroupBy,
    ) -> Result<Statistics, HubError> {
        let policy = self.member_policy(caller)?;
        let mut events = self.store.events(from, to)?;
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
