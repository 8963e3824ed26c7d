//! The agent: a member's connection to the hub, its signer and its pseudonymisation key.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;

use huren_core::identity::InstitutionId;
use huren_core::logentry::{Entry, LogProof, Purpose, summary_leaf};
use huren_core::pseudonym::{PatientId, Pseudonym, PseudonymKey};
use huren_core::receipt::Receipt;
use huren_core::rules::{Decision, RetestReason};
use huren_core::signing::{SignedEnvelope, SummarySigner, sha256};
use huren_core::summary::{Summary, UnixMillis};
use huren_core::trust::AllianceCa;
use huren_proto::hub as pb;
use huren_proto::hub::hub_client::HubClient;

use crate::config::AgentConfig;
use crate::credentials::Credentials;
use crate::error::AgentError;
use crate::log::{AuditReport, LogWitness, proof_from_pb};
use crate::verify::{
    Expectation, FailedResult, VerifiedResult, check_receipt, restore_certificate, verify_stored,
};

/// A member's agent, connected to the hub.
pub struct Agent {
    institution: InstitutionId,
    ca: AllianceCa,
    signer: Arc<SummarySigner>,
    pseudonym_key: PseudonymKey,
    hub: HubClient<Channel>,
    config: AgentConfig,
    /// The hub's log as this agent witnesses it; `None` without `[log]` in the configuration.
    log: Option<LogWitness>,
    /// The purpose of use stated with every query (default treatment).
    purpose: Purpose,
}

/// One access to a patient's results, from the hub's log, its inclusion proof verified.
#[derive(Clone, Debug)]
pub struct AccessLine {
    pub index: u64,
    pub at: UnixMillis,
    pub caller: String,
    pub purpose: Purpose,
    pub method: String,
    pub emergency_override: bool,
    pub withheld_by_consent: bool,
    pub results: usize,
    /// The leaf bytes and the proof, for anyone who wants to check again.
    pub leaf: Vec<u8>,
    pub proof: LogProof,
}

/// The access report for one patient.
#[derive(Clone, Debug)]
pub struct AccessReportAnswer {
    pub entries: Vec<AccessLine>,
    pub opted_out: bool,
}

/// Recognition statistics as the hub computed them.
#[derive(Clone, Debug)]
pub struct Statistics {
    /// One row per group, with the item's or member's name when the hub knows it.
    pub rows: Vec<(huren_core::stats::Row, String)>,
    pub total: huren_core::stats::Row,
    /// The policy whose catalogue priced the avoided tests.
    pub policy_version: String,
}

/// What Publish answered.
#[derive(Clone, Debug)]
pub struct Published {
    pub receipt: Receipt,
    pub already_stored: bool,
}

/// An ordered item: a catalogue code or this member's local code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderItem {
    Catalogue { system: String, code: String },
    Local(String),
}

/// The order-time answer for one item; `best` is verified.
#[derive(Clone, Debug)]
pub struct OrderCheck {
    pub asked: OrderItem,
    /// The catalogue item (system, code) the order maps to.
    pub item: Option<(String, String)>,
    pub item_name: String,
    pub best: Option<VerifiedResult>,
    /// The hub's best result failed verification: it is not offered (`best` is `None`).
    pub failed: Option<FailedResult>,
    pub explanation: String,
    pub candidates: u32,
}

/// The hub's acknowledgement of a decision.
#[derive(Clone, Debug)]
pub struct DecisionRecorded {
    pub already_recorded: bool,
    pub at: UnixMillis,
    pub result_was_recognised: bool,
}

fn retest_reason_to_pb(r: RetestReason) -> i32 {
    use RetestReason::*;
    (match r {
        ConditionChanged => pb::RetestReason::ConditionChanged,
        FastChangingValue => pb::RetestReason::FastChangingValue,
        CriticalStep => pb::RetestReason::CriticalStep,
        Emergency => pb::RetestReason::Emergency,
        Appraisal => pb::RetestReason::Appraisal,
        Other => pb::RetestReason::Other,
        PatientRequest => pb::RetestReason::PatientRequest,
        SourceFailedEqa => pb::RetestReason::SourceFailedEqa,
        TooOld => pb::RetestReason::TooOld,
        PhysicianJudgement => pb::RetestReason::PhysicianJudgement,
    }) as i32
}

/// The answer to a FindPrior or History call: the results that verified, and those that did
/// not (never shown as results; reported with their publisher).
#[derive(Clone, Debug)]
pub struct Answer {
    pub results: Vec<VerifiedResult>,
    /// Results the hub returned that failed verification (signature, receipt, or not what was
    /// asked for), in the hub's order.
    pub failed: Vec<FailedResult>,
    /// The hub had more results than it returns in one answer.
    pub truncated: bool,
    /// The patient opted out of sharing and the purpose was not emergency: nothing returned.
    pub withheld_by_consent: bool,
}

impl Agent {
    /// Loads keys and certificates, checks they belong to the configured institution, and
    /// connects to the hub over mutual TLS.
    pub async fn connect(config: AgentConfig) -> Result<Self, AgentError> {
        let credentials = Credentials::load(&config)?;
        let log = match &config.log {
            Some(l) => Some(l.open_witness(&config.institution)?),
            None => None,
        };
        // Connect now, so a wrong address or certificate shows at start, not at the first call.
        let channel = credentials
            .hub_endpoint(&config)?
            .connect()
            .await
            .map_err(|e| AgentError::Connect {
                hub: config.hub.clone(),
                detail: crate::error::chain(&e),
            })?;
        let Credentials {
            institution,
            ca,
            signer,
            pseudonym_key,
            ..
        } = credentials;
        Ok(Self {
            institution,
            ca,
            signer,
            pseudonym_key,
            hub: HubClient::new(channel),
            config,
            log,
            purpose: Purpose::Treatment,
        })
    }

    /// States `purpose` with every query from now on.
    pub fn set_purpose(&mut self, purpose: Purpose) {
        self.purpose = purpose;
    }

    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// The log witness, if `[log]` is configured.
    pub fn log(&self) -> Option<&LogWitness> {
        self.log.as_ref()
    }

    fn witness(&self) -> Result<&LogWitness, AgentError> {
        self.log.as_ref().ok_or_else(|| {
            AgentError::Setup(
                "the hub's log is not checked: add [log] verifier_key to the configuration (huren-hub --print-log-key prints it)".into(),
            )
        })
    }

    /// Checks that each verified result is in the hub's log (when `[log]` is configured),
    /// remembers it for `audit`, and checks the checkpoints' consistency.
    async fn check_logged(
        &self,
        items: Vec<(&VerifiedResult, Option<pb::LogProof>)>,
    ) -> Result<(), AgentError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let mut notes = std::collections::BTreeSet::new();
        let mut remember = Vec::with_capacity(items.len());
        for (i, (v, proof)) in items.into_iter().enumerate() {
            let proof = proof_from_pb(proof.ok_or_else(|| {
                AgentError::Log(format!(
                    "result #{} came without the inclusion proof asked for",
                    i + 1
                ))
            })?)?;
            let e = &v.envelope;
            let leaf = summary_leaf(
                &e.body,
                &e.signature,
                &e.signer_certificate,
                v.receipt.accepted_at,
            );
            log.verify_entry(&leaf, &proof)?;
            notes.insert(proof.checkpoint.clone());
            remember.push((proof.index, leaf));
        }
        for note in notes {
            log.observe(&mut self.hub.clone(), &note).await?;
        }
        for (index, leaf) in remember {
            log.remember(index, &leaf)?;
        }
        Ok(())
    }

    /// The hub's latest checkpoint, checked for consistency with the last one seen (and kept).
    pub async fn checkpoint(&self) -> Result<String, AgentError> {
        let log = self.witness()?;
        let note = self
            .hub
            .clone()
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await
            .map_err(AgentError::Hub)?
            .into_inner()
            .checkpoint;
        log.observe(&mut self.hub.clone(), &note).await?;
        Ok(note)
    }

    /// Compares a checkpoint another member saw with ours (gossip): a hub that shows two
    /// members different logs is caught here.
    pub async fn compare_checkpoint(&self, foreign_note: &str) -> Result<(), AgentError> {
        self.witness()?
            .compare(&mut self.hub.clone(), foreign_note)
            .await
    }

    /// Re-checks everything this agent holds against the hub's latest checkpoint.
    pub async fn audit(&self) -> Result<AuditReport, AgentError> {
        self.witness()?.audit(&mut self.hub.clone()).await
    }

    /// Records a patient's opt-out of sharing (or opt-back-in) at the hub.
    pub async fn set_consent(
        &self,
        patient: &Pseudonym,
        opted_out: bool,
    ) -> Result<(bool, UnixMillis), AgentError> {
        let r = self
            .hub
            .clone()
            .set_consent(pb::SetConsentRequest {
                patient_pseudonym: patient.as_bytes().to_vec(),
                opted_out,
            })
            .await
            .map_err(AgentError::Hub)?
            .into_inner();
        if let Some(log) = &self.log {
            let proof =
                proof_from_pb(r.log_proof.ok_or_else(|| {
                    AgentError::Log("the consent came without a log proof".into())
                })?)?;
            let at = UnixMillis(r.recorded_at_ms);
            let leaf = Entry::Consent {
                at,
                member: self.institution.to_string(),
                pseudonym: *patient.as_bytes(),
                opted_out,
            }
            .encode();
            log.verify_entry(&leaf, &proof)?;
            log.observe(&mut self.hub.clone(), &proof.checkpoint)
                .await?;
            log.remember(proof.index, &leaf)?;
        }
        Ok((r.changed, UnixMillis(r.recorded_at_ms)))
    }

    /// Who looked at a patient's results in `[from, to)` (to = 0: now), every entry's
    /// inclusion proof verified when `[log]` is configured.
    pub async fn access_report(
        &self,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<AccessReportAnswer, AgentError> {
        let r = self
            .hub
            .clone()
            .access_report(pb::AccessReportRequest {
                patient_pseudonym: patient.as_bytes().to_vec(),
                from_ms: from.0,
                to_ms: to.0,
            })
            .await
            .map_err(AgentError::Hub)?
            .into_inner();
        let mut entries = Vec::with_capacity(r.entries.len());
        let mut notes = std::collections::BTreeSet::new();
        for (i, e) in r.entries.into_iter().enumerate() {
            let bad =
                |what: &str| AgentError::Log(format!("access report entry #{}: {what}", i + 1));
            let proof = proof_from_pb(e.proof.ok_or_else(|| bad("no inclusion proof"))?)?;
            // The leaf is what counts: the readable fields must say the same.
            let Ok(Entry::Access {
                at,
                caller,
                purpose,
                method,
                emergency_override,
                withheld_by_consent,
                pseudonym,
                results,
                policy_version,
            }) = Entry::decode(&e.leaf)
            else {
                return Err(bad("its leaf is not an access entry"));
            };
            if pseudonym != *patient.as_bytes()
                || at.0 != e.at_ms
                || caller != e.caller
                || emergency_override != e.emergency_override
                || withheld_by_consent != e.withheld_by_consent
                || pb_purpose(purpose) != e.purpose
                || policy_version.as_deref().unwrap_or_default() != e.policy_version
            {
                return Err(bad("its fields do not match its logged leaf"));
            }
            if let Some(log) = &self.log {
                log.verify_entry(&e.leaf, &proof)?;
                notes.insert(proof.checkpoint.clone());
            }
            entries.push(AccessLine {
                index: proof.index,
                at,
                caller,
                purpose,
                method: method.name().to_owned(),
                emergency_override,
                withheld_by_consent,
                results: results.len(),
                leaf: e.leaf,
                proof,
            });
        }
        if let Some(log) = &self.log {
            for note in notes {
                log.observe(&mut self.hub.clone(), &note).await?;
            }
        }
        Ok(AccessReportAnswer {
            entries,
            opted_out: r.opted_out,
        })
    }

    pub fn institution(&self) -> &InstitutionId {
        &self.institution
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn pseudonym_key(&self) -> &PseudonymKey {
        &self.pseudonym_key
    }

    /// The pseudonym of a patient id, computed here; the id itself never leaves the agent.
    pub fn pseudonymise(&self, id_type: &str, id: &str) -> Result<Pseudonym, AgentError> {
        Ok(self
            .pseudonym_key
            .pseudonymise_checked(&PatientId::new(id_type, id)?)?)
    }

    /// Reads and signs every result of a results file (all or nothing).
    pub fn sign_results_file(
        &self,
        path: &Path,
    ) -> Result<Vec<(Summary, SignedEnvelope)>, AgentError> {
        let summaries = crate::results::load_results(path, &self.institution, &self.pseudonym_key)?;
        summaries
            .into_iter()
            .map(|s| {
                let env = self.signer.sign(&s)?;
                Ok((s, env))
            })
            .collect()
    }

    /// Signs one summary of this member.
    pub fn sign(&self, summary: &Summary) -> Result<SignedEnvelope, AgentError> {
        Ok(self.signer.sign(summary)?)
    }

    /// Publishes one signed summary and checks the receipt names it.
    pub async fn publish(
        &self,
        summary: &Summary,
        envelope: SignedEnvelope,
    ) -> Result<Published, AgentError> {
        let digest = sha256(&envelope.body);
        let (body, signature, cert) = (
            envelope.body.clone(),
            envelope.signature,
            envelope.signer_certificate.clone(),
        );
        let response = self
            .hub
            .clone()
            .publish(pb::PublishRequest {
                summary: Some(envelope.into()),
            })
            .await
            .map_err(AgentError::Hub)?
            .into_inner();
        let receipt = response
            .receipt
            .ok_or_else(|| AgentError::Protocol("the hub answered without a receipt".into()))?;
        let receipt = check_receipt(receipt, summary, &digest).map_err(AgentError::Protocol)?;
        if let Some(log) = &self.log {
            let proof =
                proof_from_pb(response.log_proof.ok_or_else(|| {
                    AgentError::Log("the receipt came without a log proof".into())
                })?)?;
            let leaf = summary_leaf(&body, &signature, &cert, receipt.accepted_at);
            log.verify_entry(&leaf, &proof)?;
            log.observe(&mut self.hub.clone(), &proof.checkpoint)
                .await?;
            log.remember(proof.index, &leaf)?;
        }
        Ok(Published {
            receipt,
            already_stored: response.already_stored,
        })
    }

    /// Prior results of a patient for some items, verified, newest first.
    pub async fn find_prior(
        &self,
        patient: &Pseudonym,
        items: &[(String, String)],
        as_of: UnixMillis,
        lookback: Option<Duration>,
    ) -> Result<Answer, AgentError> {
        let lookback_seconds = lookback.map_or(0, |d| d.as_secs());
        let response = self
            .hub
            .clone()
            .find_prior(pb::FindPriorRequest {
                patient_pseudonym: patient.as_bytes().to_vec(),
                items: items
                    .iter()
                    .map(|(system, code)| pb::ItemCode {
                        system: system.clone(),
                        code: code.clone(),
                    })
                    .collect(),
                as_of_ms: as_of.0,
                lookback_seconds,
                purpose: pb_purpose(self.purpose),
                with_proofs: self.log.is_some(),
                certificates_once: true,
            })
            .await
            .map_err(AgentError::Hub)?
            .into_inner();
        let from = match lookback_seconds {
            0 => UnixMillis(0),
            s => UnixMillis(
                as_of
                    .0
                    .saturating_sub(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)),
            ),
        };
        let expect = Expectation {
            patient,
            items: Some(items),
            from,
            until: as_of,
        };
        let mut answer = self
            .verify_all(
                response.results,
                &response.signer_certificates,
                &expect,
                response.truncated,
            )
            .await?;
        answer.withheld_by_consent = response.withheld_by_consent;
        Ok(answer)
    }

    /// All of a patient's results across members since a time, verified, newest first; with
    /// `with_versions`, each result's earlier versions too.
    pub async fn history(
        &self,
        patient: &Pseudonym,
        since: UnixMillis,
        with_versions: bool,
    ) -> Result<Answer, AgentError> {
        let response = self
            .hub
            .clone()
            .history(pb::HistoryRequest {
                patient_pseudonym: patient.as_bytes().to_vec(),
                since_ms: since.0,
                include_earlier_versions: with_versions,
                purpose: pb_purpose(self.purpose),
                with_proofs: self.log.is_some(),
                certificates_once: true,
            })
            .await
            .map_err(AgentError::Hub)?
            .into_inner();
        let expect = Expectation {
            patient,
            items: None,
            from: since,
            until: UnixMillis(i64::MAX),
        };
        let mut answer = self
            .verify_all(
                response.results,
                &response.signer_certificates,
                &expect,
                response.truncated,
            )
            .await?;
        answer.withheld_by_consent = response.withheld_by_consent;
        Ok(answer)
    }

    /// The order-time check: for each ordered item (catalogue code or our local code), the
    /// newest recognised result, verified, or why there is none.
    pub async fn check_order(
        &self,
        patient: &Pseudonym,
        order: &[OrderItem],
        as_of: UnixMillis,
    ) -> Result<Vec<OrderCheck>, AgentError> {
        let response = self
            .hub
            .clone()
            .check_order(pb::CheckOrderRequest {
                patient_pseudonym: patient.as_bytes().to_vec(),
                items: order
                    .iter()
                    .map(|o| pb::OrderItem {
                        code: Some(match o {
                            OrderItem::Catalogue { system, code } => {
                                pb::order_item::Code::Catalogue(pb::ItemCode {
                                    system: system.clone(),
                                    code: code.clone(),
                                })
                            }
                            OrderItem::Local(l) => pb::order_item::Code::LocalCode(l.clone()),
                        }),
                    })
                    .collect(),
                as_of_ms: as_of.0,
                purpose: pb_purpose(self.purpose),
                with_proofs: self.log.is_some(),
                certificates_once: true,
            })
            .await
            .map_err(AgentError::Hub)?
            .into_inner();
        if response.items.len() != order.len() {
            return Err(AgentError::Protocol(format!(
                "asked about {} items, the hub answered {}",
                order.len(),
                response.items.len()
            )));
        }
        let mut out = Vec::with_capacity(order.len());
        for (i, (check, asked)) in response.items.into_iter().zip(order).enumerate() {
            let mut failed = None;
            let best = match (check.best, &check.item) {
                (Some(mut stored), Some(item)) => {
                    let proof = stored.log_proof.take();
                    let receipt = stored.receipt.clone();
                    let items = [(item.system.clone(), item.code.clone())];
                    let expect = Expectation {
                        patient,
                        items: Some(&items),
                        from: UnixMillis(0),
                        until: as_of,
                    };
                    match restore_certificate(&mut stored, &response.signer_certificates)
                        .and_then(|()| verify_stored(stored, &self.ca, &expect))
                    {
                        Ok(v) => {
                            if !v.verdict.as_ref().is_some_and(|v| v.recognised()) {
                                return Err(AgentError::Protocol(
                                    "the hub offered a best result that it does not recognise"
                                        .into(),
                                ));
                            }
                            self.check_logged(vec![(&v, proof)]).await?;
                            Some(v)
                        }
                        Err(reason) => {
                            failed = Some(FailedResult::logged(i + 1, receipt.as_ref(), reason));
                            None
                        }
                    }
                }
                (Some(_), None) => {
                    return Err(AgentError::Protocol(
                        "the hub offered a result for an item it did not name".into(),
                    ));
                }
                (None, _) => None,
            };
            out.push(OrderCheck {
                asked: asked.clone(),
                item: check.item.map(|i| (i.system, i.code)),
                item_name: check.item_name,
                best,
                failed,
                explanation: check.explanation,
                candidates: check.candidates,
            });
        }
        Ok(out)
    }

    /// Records what we did with a result we consulted. `decision_id` makes retries safe.
    pub async fn record_decision(
        &self,
        decision_id: &str,
        result: &Receipt,
        decision: &Decision,
    ) -> Result<DecisionRecorded, AgentError> {
        let (kind, reason, note) = match decision {
            Decision::Adopted => (pb::DecisionKind::Adopted, None, String::new()),
            Decision::Retested { reason, note } => {
                (pb::DecisionKind::Retested, *reason, note.clone())
            }
        };
        let r = self
            .hub
            .clone()
            .record_decision(pb::RecordDecisionRequest {
                decision_id: decision_id.to_owned(),
                publisher: result.publisher.to_string(),
                summary_id: result.summary_id.to_string(),
                version: result.version,
                decision: kind as i32,
                reason: reason.map_or(0, retest_reason_to_pb),
                note,
            })
            .await
            .map_err(AgentError::Hub)?
            .into_inner();
        Ok(DecisionRecorded {
            already_recorded: r.already_recorded,
            at: UnixMillis(r.recorded_at_ms),
            result_was_recognised: r.result_was_recognised,
        })
    }

    /// Recognition statistics for `[from, to)`.
    pub async fn statistics(
        &self,
        from: UnixMillis,
        to: UnixMillis,
        by: huren_core::stats::GroupBy,
    ) -> Result<Statistics, AgentError> {
        let r = self
            .hub
            .clone()
            .get_statistics(pb::StatisticsRequest {
                from_ms: from.0,
                to_ms: to.0,
                group_by: pb::GroupBy::from(by) as i32,
            })
            .await
            .map_err(AgentError::Hub)?
            .into_inner();
        Ok(Statistics {
            rows: r
                .rows
                .into_iter()
                .map(huren_proto::convert::row_from_pb)
                .collect(),
            total: r
                .total
                .map(|t| huren_proto::convert::row_from_pb(t).0)
                .unwrap_or_default(),
            policy_version: r.policy_version,
        })
    }

    /// Verifies every returned result (after putting back the signing certificates an answer
    /// carried once). A result that fails is kept apart in [`Answer::failed`], named by its
    /// receipt; the others are shown. (One member's bad summary must not blank a patient's
    /// history for everyone.)
    async fn verify_all(
        &self,
        results: Vec<pb::StoredSummary>,
        certificates: &[Vec<u8>],
        expect: &Expectation<'_>,
        truncated: bool,
    ) -> Result<Answer, AgentError> {
        let mut verified = Vec::with_capacity(results.len());
        let mut failed = Vec::new();
        let mut proofs = Vec::with_capacity(results.len());
        // Earlier versions (History) carry proofs too; they are checked like the results.
        let mut earlier_proofs = Vec::with_capacity(results.len());
        for (i, mut stored) in results.into_iter().enumerate() {
            let proof = stored.log_proof.take();
            let earlier = stored
                .earlier_versions
                .iter_mut()
                .map(|e| e.log_proof.take())
                .collect::<Vec<_>>();
            let receipt = stored.receipt.clone();
            match restore_certificate(&mut stored, certificates)
                .and_then(|()| verify_stored(stored, &self.ca, expect))
            {
                Ok(v) => {
                    verified.push(v);
                    proofs.push(proof);
                    earlier_proofs.push(earlier);
                }
                Err(reason) => failed.push(FailedResult::logged(i + 1, receipt.as_ref(), reason)),
            }
        }
        if verified
            .windows(2)
            .any(|w| w[0].summary.performed_at < w[1].summary.performed_at)
        {
            return Err(AgentError::Protocol(
                "the hub's results are not in newest-first order".into(),
            ));
        }
        let mut logged = Vec::with_capacity(verified.len());
        for ((v, proof), earlier) in verified.iter().zip(proofs).zip(earlier_proofs) {
            logged.push((v, proof));
            logged.extend(v.earlier.iter().zip(earlier));
        }
        self.check_logged(logged).await?;
        Ok(Answer {
            results: verified,
            failed,
            truncated,
            withheld_by_consent: false,
        })
    }
}

/// A purpose as the wire carries it.
fn pb_purpose(p: Purpose) -> i32 {
    pb::Purpose::from(p) as i32
}
