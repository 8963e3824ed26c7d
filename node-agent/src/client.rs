//! The agent: a member's connection to the hub, its signer and its pseudonymisation key.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use huren_core::identity::InstitutionId;
use huren_core::logentry::{Entry, LogProof, Purpose, summary_leaf};
use huren_core::pseudonym::{PatientId, Pseudonym, PseudonymKey};
use huren_core::receipt::Receipt;
use huren_core::rules::Decision;
use huren_core::signing::{SignedEnvelope, SummarySigner, sha256};
use huren_core::stats::GroupBy;
use huren_core::summary::{Summary, UnixMillis};
use huren_core::trust::AllianceCa;

use crate::config::AgentConfig;
use crate::credentials::Credentials;
use crate::error::AgentError;
pub use crate::hub::{DecisionRecorded, Statistics};
use crate::hub::{HubApi, SentProof};
use crate::log::{AuditReport, LogWitness, required_proof};
use crate::verify::{
    Expectation, FailedResult, Returned, VerifiedResult, check_receipt, verify_stored,
};

/// A member's agent, connected to the hub.
pub struct Agent {
    institution: InstitutionId,
    ca: AllianceCa,
    signer: Arc<SummarySigner>,
    pseudonym_key: PseudonymKey,
    hub: HubApi,
    config: AgentConfig,
    /// The hub's log as this agent witnesses it; `None` without `[log]` in the configuration.
    log: Option<LogWitness>,
}

/// Who asks the hub about a patient and why: stated with every query and logged in its
/// access leaf. One `Asking` per call, so one shared agent serves many people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asking {
    pub purpose: Purpose,
    /// Who asks at this member, as it names them to the alliance (a staff or account id,
    /// never a name; see `huren_core::logentry::check_requester`); `None` for no one named.
    pub requester: Option<String>,
}

impl Asking {
    /// Asking for `purpose`, naming no one.
    pub fn new(purpose: Purpose) -> Self {
        Self {
            purpose,
            requester: None,
        }
    }

    /// Names who asks.
    pub fn by(self, requester: impl Into<String>) -> Self {
        Self {
            requester: Some(requester.into()),
            ..self
        }
    }
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
    /// Who asked at the caller, as it named them ("" when it named no one).
    pub requester: String,
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
            hub: HubApi::new(channel),
            config,
            log,
        })
    }

    /// Like [`Agent::connect`], but the connection to the hub is made at the first call (the
    /// web app and the daemon start while the hub is down, and each call says if it is).
    pub fn connect_lazily(config: AgentConfig) -> Result<Self, AgentError> {
        let credentials = Credentials::load(&config)?;
        let log = match &config.log {
            Some(l) => Some(l.open_witness(&config.institution)?),
            None => None,
        };
        let channel = credentials.hub_channel(&config)?;
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
            hub: HubApi::new(channel),
            config,
            log,
        })
    }

    /// The log witness, if `[log]` is configured.
    pub fn log(&self) -> Option<&LogWitness> {
        self.log.as_ref()
    }

    /// The hub's service as this agent calls it.
    pub(crate) fn hub_api(&self) -> &HubApi {
        &self.hub
    }

    pub(crate) fn witness(&self) -> Result<&LogWitness, AgentError> {
        self.log.as_ref().ok_or_else(|| {
            AgentError::Setup(
                "the hub's log is not checked: add [log] verifier_key to the configuration (huren-hub --print-log-key prints it)".into(),
            )
        })
    }

    /// Checks that each verified result is in the hub's log (when `[log]` is configured),
    /// remembers it for `audit`, and checks the checkpoints' consistency.
    /// Checks each result's inclusion proof (with `[log]`); the proofs, in order (none
    /// without `[log]`).
    async fn check_logged(
        &self,
        items: Vec<(&VerifiedResult, SentProof)>,
    ) -> Result<Vec<LogProof>, AgentError> {
        let Some(log) = &self.log else {
            return Ok(Vec::new());
        };
        let mut checked = Vec::with_capacity(items.len());
        let mut notes = std::collections::BTreeSet::new();
        let mut remember = Vec::with_capacity(items.len());
        for (i, (v, proof)) in items.into_iter().enumerate() {
            let proof = required_proof(
                proof,
                &format!(
                    "result #{} came without the inclusion proof asked for",
                    i + 1
                ),
            )?;
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
            checked.push(proof);
        }
        for note in notes {
            log.observe(&self.hub, &note).await?;
        }
        for (index, leaf) in remember {
            log.remember(index, &leaf)?;
        }
        Ok(checked)
    }

    /// The hub's latest checkpoint, checked for consistency with the last one seen (and kept).
    pub async fn checkpoint(&self) -> Result<String, AgentError> {
        let log = self.witness()?;
        let note = self.hub.checkpoint().await.map_err(AgentError::Hub)?;
        log.observe(&self.hub, &note).await?;
        Ok(note)
    }

    /// Compares a checkpoint another member saw with ours (gossip): a hub that shows two
    /// members different logs is caught here.
    pub async fn compare_checkpoint(&self, foreign_note: &str) -> Result<(), AgentError> {
        self.witness()?.compare(&self.hub, foreign_note).await
    }

    /// Re-checks everything this agent holds against the hub's latest checkpoint.
    pub async fn audit(&self) -> Result<AuditReport, AgentError> {
        self.witness()?.audit(&self.hub).await
    }

    /// Records a patient's opt-out of sharing (or opt-back-in) at the hub.
    pub async fn set_consent(
        &self,
        patient: &Pseudonym,
        opted_out: bool,
    ) -> Result<(bool, UnixMillis), AgentError> {
        let r = self
            .hub
            .set_consent(patient, opted_out)
            .await
            .map_err(AgentError::Hub)?;
        if let Some(log) = &self.log {
            let proof = required_proof(r.log_proof, "the consent came without a log proof")?;
            let at = r.at;
            let leaf = Entry::Consent {
                at,
                member: self.institution.to_string(),
                pseudonym: *patient.as_bytes(),
                opted_out,
            }
            .encode();
            log.verify_entry(&leaf, &proof)?;
            log.observe(&self.hub, &proof.checkpoint).await?;
            log.remember(proof.index, &leaf)?;
        }
        Ok((r.changed, r.at))
    }

    /// Who looked at a patient's results in `[from, to)` (to = 0: now), every entry's
    /// inclusion proof verified when `[log]` is configured.
    pub async fn access_report(
        &self,
        requester: Option<&str>,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<AccessReportAnswer, AgentError> {
        let r = self
            .hub
            .access_report(requester, patient, from, to)
            .await
            .map_err(AgentError::Hub)?;
        let mut entries = Vec::with_capacity(r.entries.len());
        let mut notes = std::collections::BTreeSet::new();
        for (i, e) in r.entries.into_iter().enumerate() {
            let bad =
                |what: &str| AgentError::Log(format!("access report entry #{}: {what}", i + 1));
            let proof = match e.proof {
                Ok(Some(p)) => p,
                Ok(None) => return Err(bad("no inclusion proof")),
                Err(why) => return Err(AgentError::Log(why)),
            };
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
                requester,
                ..
            }) = Entry::decode(&e.leaf)
            else {
                return Err(bad("its leaf is not an access entry"));
            };
            if pseudonym != *patient.as_bytes()
                || at != e.at
                || caller != e.caller
                || emergency_override != e.emergency_override
                || withheld_by_consent != e.withheld_by_consent
                || Some(purpose) != e.purpose
                || policy_version.as_deref().unwrap_or_default() != e.policy_version
                || requester.as_deref().unwrap_or_default() != e.requester
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
                requester: requester.unwrap_or_default(),
                leaf: e.leaf,
                proof,
            });
        }
        if let Some(log) = &self.log {
            for note in notes {
                log.observe(&self.hub, &note).await?;
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
        let response = self.hub.publish(envelope).await.map_err(AgentError::Hub)?;
        let receipt = response
            .receipt
            .and_then(|r| check_receipt(r, summary, &digest))
            .map_err(AgentError::Protocol)?;
        if let Some(log) = &self.log {
            let proof = required_proof(response.log_proof, "the receipt came without a log proof")?;
            let leaf = summary_leaf(&body, &signature, &cert, receipt.accepted_at);
            log.verify_entry(&leaf, &proof)?;
            log.observe(&self.hub, &proof.checkpoint).await?;
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
        asking: &Asking,
        patient: &Pseudonym,
        items: &[(String, String)],
        as_of: UnixMillis,
        lookback: Option<Duration>,
    ) -> Result<Answer, AgentError> {
        let lookback_seconds = lookback.map_or(0, |d| d.as_secs());
        let response = self
            .hub
            .find_prior(
                patient,
                items,
                as_of,
                lookback_seconds,
                asking,
                self.log.is_some(),
            )
            .await
            .map_err(AgentError::Hub)?;
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
            .verify_all(response.results, &expect, response.truncated)
            .await?;
        answer.withheld_by_consent = response.withheld_by_consent;
        Ok(answer)
    }

    /// All of a patient's results across members since a time, verified, newest first; with
    /// `with_versions`, each result's earlier versions too.
    pub async fn history(
        &self,
        asking: &Asking,
        patient: &Pseudonym,
        since: UnixMillis,
        with_versions: bool,
    ) -> Result<Answer, AgentError> {
        let response = self
            .hub
            .history(patient, since, with_versions, asking, self.log.is_some())
            .await
            .map_err(AgentError::Hub)?;
        let expect = Expectation {
            patient,
            items: None,
            from: since,
            until: UnixMillis(i64::MAX),
        };
        let mut answer = self
            .verify_all(response.results, &expect, response.truncated)
            .await?;
        answer.withheld_by_consent = response.withheld_by_consent;
        Ok(answer)
    }

    /// The order-time check: for each ordered item (catalogue code or our local code), the
    /// newest recognised result, verified, or why there is none.
    pub async fn check_order(
        &self,
        asking: &Asking,
        patient: &Pseudonym,
        order: &[OrderItem],
        as_of: UnixMillis,
    ) -> Result<Vec<OrderCheck>, AgentError> {
        let response = self
            .hub
            .check_order(patient, order, as_of, asking, self.log.is_some())
            .await
            .map_err(AgentError::Hub)?;
        if response.len() != order.len() {
            return Err(AgentError::Protocol(format!(
                "asked about {} items, the hub answered {}",
                order.len(),
                response.len()
            )));
        }
        let mut out = Vec::with_capacity(order.len());
        for (i, (check, asked)) in response.into_iter().zip(order).enumerate() {
            let mut failed = None;
            let best = match (check.best, &check.item) {
                (Some(returned), Some(item)) => {
                    let Returned { claimed, parts } = returned;
                    let items = [item.clone()];
                    let expect = Expectation {
                        patient,
                        items: Some(&items),
                        from: UnixMillis(0),
                        until: as_of,
                    };
                    let mut proof = Ok(None);
                    match parts.and_then(|mut u| {
                        proof = u.take_proofs().0;
                        verify_stored(u, &self.ca, &expect)
                    }) {
                        Ok(v) => {
                            if !v.verdict.as_ref().is_some_and(|v| v.recognised()) {
                                return Err(AgentError::Protocol(
                                    "the hub offered a best result that it does not recognise"
                                        .into(),
                                ));
                            }
                            let mut v = v;
                            v.log_proof = self.check_logged(vec![(&v, proof)]).await?.pop();
                            Some(v)
                        }
                        Err(reason) => {
                            failed = Some(FailedResult::logged(i + 1, claimed.as_ref(), reason));
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
                item: check.item,
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
        let recorded = self
            .hub
            .record_decision(decision_id, result, decision)
            .await
            .map_err(AgentError::Hub)?;
        if let Some(log) = &self.log
            && !recorded.already_recorded
        {
            self.check_decision_leaf(log, decision_id, result, decision, &recorded)
                .await?;
        }
        Ok(recorded)
    }

    /// With `[log]`: the decision's leaf says what this agent sent (and names the item and
    /// price the statistics count it under), and its inclusion proof verifies against a
    /// checkpoint consistent with the last one seen; the entry is remembered for `audit`.
    async fn check_decision_leaf(
        &self,
        log: &LogWitness,
        decision_id: &str,
        result: &Receipt,
        decision: &Decision,
        recorded: &DecisionRecorded,
    ) -> Result<(), AgentError> {
        let proof = required_proof(
            recorded.log_proof.clone(),
            "the decision was recorded without its inclusion proof",
        )?;
        let (want_adopted, want_reason, want_note) = match decision {
            Decision::Adopted => (true, String::new(), String::new()),
            Decision::Retested { reason, note } => (
                false,
                reason.map(|r| r.code().to_owned()).unwrap_or_default(),
                note.clone(),
            ),
        };
        let says_what_was_sent = matches!(
            Entry::decode(&recorded.leaf),
            Ok(Entry::Decision {
                at,
                member,
                decision_id: id,
                publisher,
                summary_id,
                version,
                adopted,
                reason,
                note,
                facts: Some(_),
                ..
            }) if at == recorded.at
                && member == self.institution.as_str()
                && id == decision_id
                && publisher == result.publisher.as_str()
                && summary_id == result.summary_id.as_str()
                && version == result.version
                && adopted == want_adopted
                && reason == want_reason
                && note == want_note
        );
        if !says_what_was_sent {
            return Err(AgentError::Log(format!(
                "the log entry of decision {decision_id} does not say what this agent sent"
            )));
        }
        log.verify_entry(&recorded.leaf, &proof)?;
        log.observe(&self.hub, &proof.checkpoint).await?;
        log.remember(proof.index, &recorded.leaf)
    }

    /// Recognition statistics for `[from, to)`.
    pub async fn statistics(
        &self,
        from: UnixMillis,
        to: UnixMillis,
        by: GroupBy,
    ) -> Result<Statistics, AgentError> {
        self.hub
            .statistics(from, to, by)
            .await
            .map_err(AgentError::Hub)
    }

    /// Verifies every returned result (after putting back the signing certificates an answer
    /// carried once). A result that fails is kept apart in [`Answer::failed`], named by its
    /// receipt; the others are shown. (One member's bad summary must not blank a patient's
    /// history for everyone.)
    async fn verify_all(
        &self,
        results: Vec<Returned>,
        expect: &Expectation<'_>,
        truncated: bool,
    ) -> Result<Answer, AgentError> {
        let mut verified = Vec::with_capacity(results.len());
        let mut failed = Vec::new();
        let mut proofs = Vec::with_capacity(results.len());
        // Earlier versions (History) carry proofs too; they are checked like the results.
        let mut earlier_proofs = Vec::with_capacity(results.len());
        for (i, Returned { claimed, parts }) in results.into_iter().enumerate() {
            let (mut proof, mut earlier) = (Ok(None), Vec::new());
            match parts.and_then(|mut u| {
                (proof, earlier) = u.take_proofs();
                verify_stored(u, &self.ca, expect)
            }) {
                Ok(v) => {
                    verified.push(v);
                    proofs.push(proof);
                    earlier_proofs.push(earlier);
                }
                Err(reason) => failed.push(FailedResult::logged(i + 1, claimed.as_ref(), reason)),
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
        let mut earlier_counts = Vec::with_capacity(verified.len());
        for ((v, proof), earlier) in verified.iter().zip(proofs).zip(earlier_proofs) {
            logged.push((v, proof));
            let before = logged.len();
            logged.extend(v.earlier.iter().zip(earlier));
            earlier_counts.push(logged.len() - before);
        }
        // Each result keeps the proof it was checked with (in the order of `logged`).
        let mut checked = self.check_logged(logged).await?.into_iter();
        for (v, n) in verified.iter_mut().zip(earlier_counts) {
            v.log_proof = checked.next();
            for e in v.earlier.iter_mut().take(n) {
                e.log_proof = checked.next();
            }
        }
        Ok(Answer {
            results: verified,
            failed,
            truncated,
            withheld_by_consent: false,
        })
    }
}
