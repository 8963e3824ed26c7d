//! The agent's side of the hub's gRPC service: each call the agent makes, its request built
//! from domain values and its answer read back into them (with the conversions the hub shares,
//! `huren_proto::convert`). Apart from the repository service's own edge (`repository`), this
//! is the only agent module that sees `huren_proto` types: `client`, `log` and `outbox` work with
//! `huren_core` values and the small answer types here.
//!
//! Reading an answer is not trusting it. What the hub returns is handed on unverified
//! ([`Returned`], [`PublishAnswer`]); a part that does not even read (a malformed receipt, a
//! proof hash of the wrong length) is handed on as the reason it does not, so the caller
//! decides what it costs: one result, one receipt, or the whole answer.

use tonic::transport::Channel;
use tonic::{Code, Status};

use huren_core::logentry::{LogProof, Purpose};
use huren_core::merkle::Hash;
use huren_core::pseudonym::Pseudonym;
use huren_core::receipt::Receipt;
use huren_core::rules::{Decision, Verdict};
use huren_core::signing::SignedEnvelope;
use huren_core::stats::{GroupBy, Row};
use huren_core::summary::UnixMillis;
use huren_proto::convert::{self, decision_to_pb};
use huren_proto::hub as pb;
use huren_proto::hub::hub_client::HubClient;

use crate::client::{Asking, OrderItem};
use crate::verify::{Claimed, Returned, Unverified};

/// A log proof as the hub sent it: `Ok(None)` when it sent none, `Err` with the reason when it
/// does not read. It counts only where the agent checks the hub's log.
pub type SentProof = Result<Option<LogProof>, String>;

/// What the hub answered to one summary published.
#[derive(Clone, Debug)]
pub struct PublishAnswer {
    /// The receipt (not yet compared with what was sent), or why there is none to read.
    pub receipt: Result<Receipt, String>,
    pub already_stored: bool,
    pub log_proof: SentProof,
}

/// One summary's outcome in a PublishBatch answer.
#[derive(Clone, Debug)]
pub enum BatchOutcome {
    Published(PublishAnswer),
    /// The hub refused this summary with `code`.
    Refused {
        code: Code,
        message: String,
    },
    /// The hub gave no outcome for it.
    Missing,
}

/// The results of a FindPrior or History answer, unverified.
#[derive(Debug)]
pub struct ResultsAnswer {
    pub results: Vec<Returned>,
    pub truncated: bool,
    pub withheld_by_consent: bool,
}

/// The hub's answer for one ordered item, unverified.
#[derive(Debug)]
pub struct OrderAnswer {
    /// The catalogue item (system, code) the order maps to.
    pub item: Option<(String, String)>,
    pub item_name: String,
    pub best: Option<Returned>,
    pub explanation: String,
    pub candidates: u32,
}

/// The hub's acknowledgement of a decision.
#[derive(Clone, Debug)]
pub struct DecisionRecorded {
    pub already_recorded: bool,
    pub at: UnixMillis,
    pub result_was_recognised: bool,
    /// The decision's leaf bytes (empty when already recorded, or from an older hub).
    pub leaf: Vec<u8>,
    pub log_proof: SentProof,
}

/// What SetConsent answered.
#[derive(Clone, Debug)]
pub struct ConsentRecorded {
    pub changed: bool,
    pub at: UnixMillis,
    pub log_proof: SentProof,
}

/// One logged access as the access report states it, before the agent checks it against its
/// leaf.
#[derive(Clone, Debug)]
pub struct StatedAccess {
    pub at: UnixMillis,
    pub caller: String,
    /// `None` for a purpose this agent does not know.
    pub purpose: Option<Purpose>,
    pub emergency_override: bool,
    pub withheld_by_consent: bool,
    pub policy_version: String,
    pub requester: String,
    /// The leaf bytes: what counts.
    pub leaf: Vec<u8>,
    pub proof: SentProof,
}

/// The access report for one patient, unverified.
#[derive(Clone, Debug)]
pub struct AccessReport {
    pub entries: Vec<StatedAccess>,
    pub opted_out: bool,
}

/// Recognition statistics as the hub computed them.
#[derive(Clone, Debug)]
pub struct Statistics {
    /// One row per group, with the item's or member's name when the hub knows it.
    pub rows: Vec<(Row, String)>,
    /// All groups together (an empty row from a hub that sends none).
    pub total: Row,
    /// The policy whose catalogue priced the avoided tests.
    pub policy_version: String,
}

/// An inclusion proof as GetInclusionProof answers it.
#[derive(Clone, Debug)]
pub struct InclusionAnswer {
    /// The leaf bytes; empty for another member's entry.
    pub leaf: Vec<u8>,
    /// The proof's hashes (none when the hub sent no proof), or why they do not read.
    pub proof: Result<Vec<Hash>, String>,
}

/// A policy leaf as GetPolicy answers it, unverified.
#[derive(Clone, Debug)]
pub struct PolicyAnswer {
    pub leaf: Vec<u8>,
    pub proof: SentProof,
}

/// One entry of a GetLogEntries page, unverified: its bytes, or its leaf hash alone.
#[derive(Clone, Debug)]
pub enum PageEntry {
    Leaf(Vec<u8>),
    /// The leaf hash, or why it does not read.
    Hash(Result<Hash, String>),
}

/// A page of a statistics audit (GetLogEntries), unverified.
#[derive(Clone, Debug)]
pub struct LogPage {
    pub entries: Vec<(u64, PageEntry)>,
    pub tree_size: u64,
    /// The signed checkpoint of `tree_size` (asked with tree size 0), else empty.
    pub checkpoint: String,
}

/// The hub's gRPC service as the agent calls it. Cheap to clone (one channel).
#[derive(Clone, Debug)]
pub struct HubApi {
    client: HubClient<Channel>,
}

fn proof(p: Option<pb::LogProof>) -> SentProof {
    p.map(LogProof::try_from)
        .transpose()
        .map_err(|e| e.to_string())
}

/// Reads a proof of a query answer (asked with `compact_proofs`): one without a checkpoint of
/// its own leads to the answer's. A hub that ignores the flag sends full proofs, which read
/// the same.
fn answer_proof(p: Option<pb::LogProof>, checkpoint: &str) -> SentProof {
    let mut p = proof(p)?;
    if let Some(p) = &mut p
        && p.checkpoint.is_empty()
    {
        p.checkpoint = checkpoint.to_owned();
    }
    Ok(p)
}

fn publish_answer(r: pb::PublishResponse) -> PublishAnswer {
    PublishAnswer {
        receipt: match r.receipt {
            Some(receipt) => Receipt::try_from(receipt).map_err(|e| e.to_string()),
            None => Err("the hub answered without a receipt".into()),
        },
        already_stored: r.already_stored,
        log_proof: proof(r.log_proof),
    }
}

/// Puts back into a returned summary (and its earlier versions) the signing certificate a hub
/// sent once for the whole answer (requests with `certificates_once`). A summary that carries
/// its own certificate keeps it, so an answer from a hub that ignores the flag passes too.
fn restore_certificate(stored: &mut pb::StoredSummary, shared: &[Vec<u8>]) -> Result<(), String> {
    for e in &mut stored.earlier_versions {
        restore_certificate(e, shared)?;
    }
    let Some(signed) = stored.summary.as_mut() else {
        return Ok(());
    };
    if signed.signer_certificate.is_empty() {
        let i = stored.signer_certificate_index as usize;
        let cert = shared.get(i).ok_or_else(|| {
            format!(
                "it names signing certificate {i} of the answer, which has {}",
                shared.len()
            )
        })?;
        signed.signer_certificate = cert.clone();
    }
    Ok(())
}

/// Reads one stored summary (its certificate restored); its log proof and its earlier
/// versions' are taken out by the caller.
fn unverified(s: pb::StoredSummary) -> Result<Unverified, String> {
    let receipt = s.receipt.ok_or("it has no receipt")?;
    let signed = s.summary.ok_or("it has no signed summary")?;
    let verdict = s
        .verdict
        .map(Verdict::try_from)
        .transpose()
        .map_err(|e| e.reason)?;
    let earlier = s
        .earlier_versions
        .into_iter()
        .map(unverified)
        .collect::<Result<Vec<_>, _>>()?;
    let envelope = SignedEnvelope::try_from(signed).map_err(|e| e.to_string())?;
    let receipt = Receipt::try_from(receipt).map_err(|e| e.to_string())?;
    Ok(Unverified {
        receipt,
        envelope,
        verdict,
        earlier,
        log_proof: Ok(None),
    })
}

/// Reads one result of an answer that may carry each signing certificate once, and the
/// checkpoint its proofs lead to once.
fn returned(mut s: pb::StoredSummary, shared: &[Vec<u8>], checkpoint: &str) -> Returned {
    let claimed = s.receipt.as_ref().map(|r| Claimed {
        publisher: r.publisher.clone(),
        summary_id: r.summary_id.clone(),
        version: r.version,
    });
    let log_proof = answer_proof(s.log_proof.take(), checkpoint);
    let earlier_proofs: Vec<SentProof> = s
        .earlier_versions
        .iter_mut()
        .map(|e| answer_proof(e.log_proof.take(), checkpoint))
        .collect();
    let parts = restore_certificate(&mut s, shared)
        .and_then(|()| unverified(s))
        .map(|mut u| {
            u.log_proof = log_proof;
            for (e, p) in u.earlier.iter_mut().zip(earlier_proofs) {
                e.log_proof = p;
            }
            u
        });
    Returned { claimed, parts }
}

/// The results of a FindPrior or History answer.
fn results_answer(
    results: Vec<pb::StoredSummary>,
    shared: &[Vec<u8>],
    checkpoint: &str,
    truncated: bool,
    withheld_by_consent: bool,
) -> ResultsAnswer {
    ResultsAnswer {
        results: results
            .into_iter()
            .map(|s| returned(s, shared, checkpoint))
            .collect(),
        truncated,
        withheld_by_consent,
    }
}

fn item_code((system, code): &(String, String)) -> pb::ItemCode {
    pb::ItemCode {
        system: system.clone(),
        code: code.clone(),
    }
}

fn order_item(o: &OrderItem) -> pb::OrderItem {
    pb::OrderItem {
        code: Some(match o {
            OrderItem::Catalogue { system, code } => {
                pb::order_item::Code::Catalogue(item_code(&(system.clone(), code.clone())))
            }
            OrderItem::Local(l) => pb::order_item::Code::LocalCode(l.clone()),
        }),
    }
}

impl HubApi {
    pub fn new(channel: Channel) -> Self {
        Self {
            client: HubClient::new(channel),
        }
    }

    fn client(&self) -> HubClient<Channel> {
        self.client.clone()
    }

    pub async fn publish(&self, envelope: SignedEnvelope) -> Result<PublishAnswer, Status> {
        let r = self
            .client()
            .publish(pb::PublishRequest {
                summary: Some(envelope.into()),
            })
            .await?
            .into_inner();
        Ok(publish_answer(r))
    }

    /// One PublishBatch call: an outcome per summary, in order (the hub may answer with fewer
    /// or more; the caller checks).
    pub async fn publish_batch(
        &self,
        envelopes: Vec<SignedEnvelope>,
    ) -> Result<Vec<BatchOutcome>, Status> {
        let r = self
            .client()
            .publish_batch(pb::PublishBatchRequest {
                summaries: envelopes.into_iter().map(Into::into).collect(),
            })
            .await?
            .into_inner();
        Ok(r.outcomes
            .into_iter()
            .map(|o| match o.outcome {
                Some(pb::publish_outcome::Outcome::Published(p)) => {
                    BatchOutcome::Published(publish_answer(p))
                }
                Some(pb::publish_outcome::Outcome::Refused(r)) => BatchOutcome::Refused {
                    code: Code::from_i32(r.code),
                    message: r.message,
                },
                None => BatchOutcome::Missing,
            })
            .collect())
    }

    /// FindPrior, asking for each signing certificate and the proofs' checkpoint once.
    pub async fn find_prior(
        &self,
        patient: &Pseudonym,
        items: &[(String, String)],
        as_of: UnixMillis,
        lookback_seconds: u64,
        asking: &Asking,
        with_proofs: bool,
    ) -> Result<ResultsAnswer, Status> {
        let r = self
            .client()
            .find_prior(pb::FindPriorRequest {
                patient_pseudonym: patient.as_bytes().to_vec(),
                items: items.iter().map(item_code).collect(),
                as_of_ms: as_of.0,
                lookback_seconds,
                purpose: pb::Purpose::from(asking.purpose) as i32,
                with_proofs,
                certificates_once: true,
                requester: asking.requester.clone().unwrap_or_default(),
                compact_proofs: true,
            })
            .await?
            .into_inner();
        Ok(results_answer(
            r.results,
            &r.signer_certificates,
            &r.checkpoint,
            r.truncated,
            r.withheld_by_consent,
        ))
    }

    /// History, asking for each signing certificate and the proofs' checkpoint once.
    pub async fn history(
        &self,
        patient: &Pseudonym,
        since: UnixMillis,
        with_versions: bool,
        asking: &Asking,
        with_proofs: bool,
    ) -> Result<ResultsAnswer, Status> {
        let r = self
            .client()
            .history(pb::HistoryRequest {
                patient_pseudonym: patient.as_bytes().to_vec(),
                since_ms: since.0,
                include_earlier_versions: with_versions,
                purpose: pb::Purpose::from(asking.purpose) as i32,
                with_proofs,
                certificates_once: true,
                requester: asking.requester.clone().unwrap_or_default(),
                compact_proofs: true,
            })
            .await?
            .into_inner();
        Ok(results_answer(
            r.results,
            &r.signer_certificates,
            &r.checkpoint,
            r.truncated,
            r.withheld_by_consent,
        ))
    }

    /// CheckOrder, asking for each signing certificate and the proofs' checkpoint once: one
    /// answer per item the hub answered (the caller checks there is one per item asked).
    pub async fn check_order(
        &self,
        patient: &Pseudonym,
        order: &[OrderItem],
        as_of: UnixMillis,
        asking: &Asking,
        with_proofs: bool,
    ) -> Result<Vec<OrderAnswer>, Status> {
        let r = self
            .client()
            .check_order(pb::CheckOrderRequest {
                patient_pseudonym: patient.as_bytes().to_vec(),
                items: order.iter().map(order_item).collect(),
                as_of_ms: as_of.0,
                purpose: pb::Purpose::from(asking.purpose) as i32,
                with_proofs,
                certificates_once: true,
                requester: asking.requester.clone().unwrap_or_default(),
                compact_proofs: true,
            })
            .await?
            .into_inner();
        let (certs, checkpoint) = (r.signer_certificates, r.checkpoint);
        Ok(r.items
            .into_iter()
            .map(|c| OrderAnswer {
                item: c.item.map(|i| (i.system, i.code)),
                item_name: c.item_name,
                best: c.best.map(|s| returned(s, &certs, &checkpoint)),
                explanation: c.explanation,
                candidates: c.candidates,
            })
            .collect())
    }

    pub async fn record_decision(
        &self,
        decision_id: &str,
        result: &Receipt,
        decision: &Decision,
    ) -> Result<DecisionRecorded, Status> {
        let (kind, reason, note) = decision_to_pb(decision);
        let r = self
            .client()
            .record_decision(pb::RecordDecisionRequest {
                decision_id: decision_id.to_owned(),
                publisher: result.publisher.to_string(),
                summary_id: result.summary_id.to_string(),
                version: result.version,
                decision: kind as i32,
                reason: reason as i32,
                note,
            })
            .await?
            .into_inner();
        Ok(DecisionRecorded {
            already_recorded: r.already_recorded,
            at: UnixMillis(r.recorded_at_ms),
            result_was_recognised: r.result_was_recognised,
            leaf: r.leaf,
            log_proof: proof(r.log_proof),
        })
    }

    pub async fn statistics(
        &self,
        from: UnixMillis,
        to: UnixMillis,
        by: GroupBy,
    ) -> Result<Statistics, Status> {
        let r = self
            .client()
            .get_statistics(pb::StatisticsRequest {
                from_ms: from.0,
                to_ms: to.0,
                group_by: pb::GroupBy::from(by) as i32,
            })
            .await?
            .into_inner();
        Ok(Statistics {
            rows: r.rows.into_iter().map(convert::row_from_pb).collect(),
            total: r
                .total
                .map(|t| convert::row_from_pb(t).0)
                .unwrap_or_default(),
            policy_version: r.policy_version,
        })
    }

    pub async fn set_consent(
        &self,
        patient: &Pseudonym,
        opted_out: bool,
    ) -> Result<ConsentRecorded, Status> {
        let r = self
            .client()
            .set_consent(pb::SetConsentRequest {
                patient_pseudonym: patient.as_bytes().to_vec(),
                opted_out,
            })
            .await?
            .into_inner();
        Ok(ConsentRecorded {
            changed: r.changed,
            at: UnixMillis(r.recorded_at_ms),
            log_proof: proof(r.log_proof),
        })
    }

    pub async fn access_report(
        &self,
        requester: Option<&str>,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<AccessReport, Status> {
        let r = self
            .client()
            .access_report(pb::AccessReportRequest {
                patient_pseudonym: patient.as_bytes().to_vec(),
                from_ms: from.0,
                to_ms: to.0,
                requester: requester.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner();
        Ok(AccessReport {
            entries: r
                .entries
                .into_iter()
                .map(|e| StatedAccess {
                    at: UnixMillis(e.at_ms),
                    caller: e.caller,
                    purpose: convert::purpose(e.purpose),
                    emergency_override: e.emergency_override,
                    withheld_by_consent: e.withheld_by_consent,
                    policy_version: e.policy_version,
                    requester: e.requester,
                    leaf: e.leaf,
                    proof: proof(e.proof),
                })
                .collect(),
            opted_out: r.opted_out,
        })
    }

    /// The hub's latest checkpoint (a signed note), unopened.
    pub async fn checkpoint(&self) -> Result<String, Status> {
        Ok(self
            .client()
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await?
            .into_inner()
            .checkpoint)
    }

    /// The consistency proof between two tree sizes: its hashes, or why they do not read.
    pub async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Result<Vec<Hash>, String>, Status> {
        let r = self
            .client()
            .get_consistency_proof(pb::ConsistencyProofRequest { old_size, new_size })
            .await?
            .into_inner();
        Ok(convert::hashes("proof", &r.proof).map_err(|e| e.to_string()))
    }

    /// A policy leaf with its inclusion proof (GetPolicy).
    pub async fn get_policy(&self, index: u64) -> Result<PolicyAnswer, Status> {
        let r = self
            .client()
            .get_policy(pb::GetPolicyRequest { index })
            .await?
            .into_inner();
        Ok(PolicyAnswer {
            leaf: r.leaf,
            proof: proof(r.proof),
        })
    }

    /// Log entries `[start, end)` of the tree of `tree_size` leaves (0: the latest), for a
    /// statistics audit (GetLogEntries, administrators only).
    pub async fn log_entries(
        &self,
        start: u64,
        end: u64,
        tree_size: u64,
    ) -> Result<LogPage, Status> {
        let r = self
            .client()
            .get_log_entries(pb::LogEntriesRequest {
                start,
                end,
                tree_size,
            })
            .await?
            .into_inner();
        Ok(LogPage {
            entries: r
                .entries
                .into_iter()
                .map(|e| {
                    let entry = if e.leaf.is_empty() {
                        PageEntry::Hash(Hash::try_from(e.leaf_hash.as_slice()).map_err(|_| {
                            format!(
                                "entry {}: a leaf hash of {} bytes",
                                e.index,
                                e.leaf_hash.len()
                            )
                        }))
                    } else {
                        PageEntry::Leaf(e.leaf)
                    };
                    (e.index, entry)
                })
                .collect(),
            tree_size: r.tree_size,
            checkpoint: r.checkpoint,
        })
    }

    pub async fn inclusion_proof(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<InclusionAnswer, Status> {
        let r = self
            .client()
            .get_inclusion_proof(pb::InclusionProofRequest { index, tree_size })
            .await?
            .into_inner();
        Ok(InclusionAnswer {
            leaf: r.leaf,
            proof: match r.proof {
                Some(p) => convert::hashes("proof", &p.proof).map_err(|e| e.to_string()),
                None => Ok(Vec::new()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(cert: &[u8], index: u32, earlier: Vec<pb::StoredSummary>) -> pb::StoredSummary {
        pb::StoredSummary {
            summary: Some(huren_core::pb::SignedSummary {
                body: vec![1],
                signature: vec![2],
                signer_certificate: cert.to_vec(),
            }),
            signer_certificate_index: index,
            earlier_versions: earlier,
            ..Default::default()
        }
    }

    fn cert_of(s: &pb::StoredSummary) -> &[u8] {
        &s.summary.as_ref().unwrap().signer_certificate
    }

    #[test]
    fn shared_certificates_are_put_back_and_a_bad_index_is_refused() {
        let shared = vec![b"cert-a".to_vec(), b"cert-b".to_vec()];
        let mut s = stored(b"", 1, vec![stored(b"", 0, vec![])]);
        restore_certificate(&mut s, &shared).unwrap();
        assert_eq!(cert_of(&s), b"cert-b");
        assert_eq!(cert_of(&s.earlier_versions[0]), b"cert-a");
        // A summary with its own certificate keeps it (a hub that ignored the request).
        let mut own = stored(b"own", 1, vec![]);
        restore_certificate(&mut own, &[]).unwrap();
        assert_eq!(cert_of(&own), b"own");
        let mut bad = stored(b"", 2, vec![]);
        let err = restore_certificate(&mut bad, &shared).unwrap_err();
        assert!(err.contains("signing certificate 2"), "{err}");
        let mut bad_earlier = stored(b"own", 0, vec![stored(b"", 5, vec![])]);
        assert!(restore_certificate(&mut bad_earlier, &shared).is_err());
    }

    /// A compact proof leads to the answer's checkpoint; one with its own (a full proof, from
    /// a hub that ignored the flag) keeps it; a torn path is an error naming the field.
    #[test]
    fn compact_proofs_take_the_answer_checkpoint() {
        let compact = pb::LogProof {
            index: 4,
            tree_size: 7,
            path: [[1u8; 32], [2; 32]].concat(),
            ..Default::default()
        };
        let p = answer_proof(Some(compact.clone()), "the answer's note")
            .unwrap()
            .unwrap();
        assert_eq!(p.checkpoint, "the answer's note");
        assert_eq!(p.proof, vec![[1; 32], [2; 32]]);
        let full = pb::LogProof {
            index: 4,
            tree_size: 7,
            proof: vec![vec![1; 32], vec![2; 32]],
            checkpoint: "its own note".into(),
            ..Default::default()
        };
        let q = answer_proof(Some(full), "the answer's note")
            .unwrap()
            .unwrap();
        assert_eq!(q.checkpoint, "its own note");
        assert_eq!(q.proof, p.proof);
        assert_eq!(answer_proof(None, "the answer's note"), Ok(None));
        let torn = pb::LogProof {
            path: vec![0; 40],
            ..compact
        };
        let err = answer_proof(Some(torn), "the answer's note").unwrap_err();
        assert!(err.contains("LogProof.path"), "{err}");
    }

    #[test]
    fn a_result_that_does_not_read_is_named_by_its_receipt_and_says_why() {
        let mut s = stored(b"cert", 0, vec![]);
        s.receipt = Some(pb::Receipt {
            publisher: "shx-prov-people".into(),
            summary_id: "LAB-1".into(),
            version: 2,
            ..Default::default()
        });
        let r = returned(s, &[], "");
        let claimed = r.claimed.unwrap();
        assert_eq!(
            (claimed.publisher.as_str(), claimed.summary_id.as_str()),
            ("shx-prov-people", "LAB-1")
        );
        // A one-byte signature does not read.
        assert!(r.parts.is_err());
        let r = returned(pb::StoredSummary::default(), &[], "");
        assert!(r.claimed.is_none());
        assert_eq!(r.parts.unwrap_err(), "it has no receipt");
    }
}
