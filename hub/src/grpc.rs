//! The gRPC edge: takes the caller's identity from its client certificate, converts requests to
//! domain values, calls [`Hub`], converts answers back. The only hub module that sees
//! `huren_proto` types.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use tonic::{Request, Response, Status};
use tracing::Instrument;

use huren_core::identity::InstitutionId;
use huren_core::logentry::{Entry, LogProof, Purpose};
use huren_core::pseudonym::Pseudonym;
use huren_core::signing::SignedEnvelope;
use huren_core::summary::UnixMillis;
use huren_core::trust::client_institution;
use huren_proto::hub as pb;

use huren_core::rules::{Decision, Reason, Verdict};
use huren_core::stats::GroupBy;

use crate::error::HubError;
use crate::service::{
    Ask, DecisionRequest, Hub, Judged, JudgedAnswer, OrderCode, now, retest_reason,
};
use crate::store::{DecisionOutcome, PriorQuery, PutOutcome, Receipt, StoredSummary};

/// Most item codes one FindPrior may ask for.
pub const MAX_QUERY_ITEMS: usize = 200;

/// Most summaries one PublishBatch may carry.
pub const MAX_BATCH_SUMMARIES: usize = 1000;

/// Implements the generated `Hub` service trait over the domain [`Hub`].
pub struct HubGrpc {
    hub: Arc<Hub>,
    limits: MessageLimits,
}

/// Largest requests accepted, in bytes: PublishBatch has its own limit; every other call the
/// ordinary one. (The transport's own limit is the larger of the two.)
#[derive(Clone, Copy, Debug)]
pub struct MessageLimits {
    pub max_message_bytes: usize,
    pub max_batch_bytes: usize,
}

impl HubGrpc {
    pub fn new(hub: Arc<Hub>, limits: MessageLimits) -> Self {
        Self { hub, limits }
    }
}

/// The caller's institution, from the client certificate that TLS verified against the
/// alliance CA. Never from a request field.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<InstitutionId, HubError> {
    let certs = request.peer_certs().ok_or(HubError::NoClientCertificate)?;
    let leaf = certs.first().ok_or(HubError::NoClientCertificate)?;
    let der: &[u8] = leaf.as_ref();
    if let Ok(known) = CALLERS.read()
        && let Some(id) = known.get(der)
    {
        return Ok(id.clone());
    }
    let id = client_institution(der).map_err(HubError::CallerCertificate)?;
    if let Ok(mut known) = CALLERS.write() {
        if known.len() >= MAX_KNOWN_CALLERS {
            known.clear();
        }
        known.insert(der.to_vec(), id.clone());
    }
    Ok(id)
}

/// Institutions named by client certificates already parsed, by the certificate's DER: parsing
/// X.509 on every call cost more than the rest of a small call. The institution is a function
/// of the bytes alone, so the map is shared by every hub in the process; TLS still verifies
/// each connection's certificate, and revocation is checked on every call.
static CALLERS: LazyLock<RwLock<HashMap<Vec<u8>, InstitutionId>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// An alliance has a few client certificates per member; past this many the map starts over.
const MAX_KNOWN_CALLERS: usize = 4096;

/// Runs a handler inside a span that names the method and the caller, and turns its error into
/// a status (logged once, inside the span). A request over `max_bytes` is refused before the
/// handler runs.
async fn handle<T, R, F, Fut>(
    method: &'static str,
    request: Request<T>,
    max_bytes: usize,
    f: F,
) -> Result<Response<R>, Status>
where
    T: prost::Message,
    F: FnOnce(InstitutionId, T) -> Fut,
    Fut: Future<Output = Result<R, HubError>>,
{
    let caller = match caller(&request) {
        Ok(c) => c,
        Err(e) => {
            let span = tracing::info_span!("rpc", method, caller = "?");
            return Err(span.in_scope(|| e.into_status()));
        }
    };
    let span = tracing::info_span!("rpc", method, caller = %caller);
    let bytes = request.get_ref().encoded_len();
    if bytes > max_bytes {
        let e = HubError::TooLarge {
            method,
            bytes,
            limit: max_bytes,
        };
        return Err(span.in_scope(|| e.into_status()));
    }
    async move {
        match f(caller, request.into_inner()).await {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => Err(e.into_status()),
        }
    }
    .instrument(span)
    .await
}

fn receipt_to_pb(r: &Receipt) -> pb::Receipt {
    pb::Receipt {
        publisher: r.publisher.to_string(),
        summary_id: r.summary_id.to_string(),
        version: r.version,
        body_sha256: r.body_sha256.to_vec(),
        accepted_at_ms: r.accepted_at.0,
    }
}

fn publish_response(outcome: &PutOutcome, proof: LogProof) -> pb::PublishResponse {
    let (receipt, already_stored) = match outcome {
        PutOutcome::Stored(r) => (r, false),
        PutOutcome::AlreadyStored(r) => (r, true),
    };
    pb::PublishResponse {
        receipt: Some(receipt_to_pb(receipt)),
        already_stored,
        log_proof: Some(log_proof_to_pb(proof)),
    }
}

fn stored_to_pb(s: StoredSummary) -> pb::StoredSummary {
    pb::StoredSummary {
        receipt: Some(receipt_to_pb(&s.receipt)),
        summary: Some(s.envelope.into()),
        verdict: None,
        earlier_versions: Vec::new(),
        log_proof: None,
        signer_certificate_index: 0,
    }
}

/// Moves the signing certificates out of answered summaries (and their earlier versions) into
/// one list, each once, and points each summary at its entry. A FindPrior answer is mostly
/// certificates otherwise: a few members sign everything, with a certificate about twice the
/// size of a summary.
#[derive(Default)]
struct SharedCertificates {
    /// An answer's results come from a few members, so a list searched in order is enough.
    list: Vec<Vec<u8>>,
}

impl SharedCertificates {
    fn take_from(&mut self, s: &mut pb::StoredSummary) {
        for e in &mut s.earlier_versions {
            self.take_from(e);
        }
        let Some(signed) = s.summary.as_mut() else {
            return;
        };
        let cert = std::mem::take(&mut signed.signer_certificate);
        let i = match self.list.iter().position(|c| *c == cert) {
            Some(i) => i,
            None => {
                self.list.push(cert);
                self.list.len() - 1
            }
        };
        // An answer holds at most a few hundred summaries.
        s.signer_certificate_index = i as u32;
    }

    /// The certificates, when the caller asked for them once; otherwise the summaries keep
    /// their own copies and the list is empty.
    fn share<'a>(
        asked: bool,
        summaries: impl IntoIterator<Item = &'a mut pb::StoredSummary>,
    ) -> Vec<Vec<u8>> {
        if !asked {
            return Vec::new();
        }
        let mut shared = Self::default();
        for s in summaries {
            shared.take_from(s);
        }
        shared.list
    }
}

fn log_proof_to_pb(p: LogProof) -> pb::LogProof {
    pb::LogProof {
        index: p.index,
        tree_size: p.tree_size,
        proof: p.proof.iter().map(|h| h.to_vec()).collect(),
        checkpoint: p.checkpoint,
    }
}

fn purpose_to_pb(p: Purpose) -> pb::Purpose {
    match p {
        Purpose::Treatment => pb::Purpose::Treatment,
        Purpose::Referral => pb::Purpose::Referral,
        Purpose::Emergency => pb::Purpose::Emergency,
        Purpose::PatientRequest => pb::Purpose::PatientRequest,
        Purpose::Administration => pb::Purpose::Administration,
        Purpose::QualityControl => pb::Purpose::QualityControl,
    }
}

/// The purpose of a query: required.
fn ask(purpose: i32, with_proofs: bool) -> Result<Ask, HubError> {
    let purpose = match pb::Purpose::try_from(purpose) {
        Ok(pb::Purpose::Treatment) => Purpose::Treatment,
        Ok(pb::Purpose::Referral) => Purpose::Referral,
        Ok(pb::Purpose::Emergency) => Purpose::Emergency,
        Ok(pb::Purpose::PatientRequest) => Purpose::PatientRequest,
        Ok(pb::Purpose::Administration) => Purpose::Administration,
        Ok(pb::Purpose::QualityControl) => Purpose::QualityControl,
        Ok(pb::Purpose::Unspecified) | Err(_) => {
            return Err(HubError::BadRequest(
                "purpose is required: say why you look at this patient's results (TREATMENT, REFERRAL, EMERGENCY, PATIENT_REQUEST, ADMINISTRATION or QUALITY_CONTROL); every access is logged with it".into(),
            ));
        }
    };
    Ok(Ask {
        purpose,
        with_proofs,
    })
}

fn reason_to_pb(r: Reason) -> pb::NotRecognisedReason {
    match r {
        Reason::NotInCatalogue => pb::NotRecognisedReason::NotInCatalogue,
        Reason::OutsideValidityWindow => pb::NotRecognisedReason::OutsideValidityWindow,
        Reason::PublisherNotQualified => pb::NotRecognisedReason::PublisherNotQualified,
        Reason::Direction => pb::NotRecognisedReason::Direction,
        Reason::Voided => pb::NotRecognisedReason::Voided,
        Reason::Superseded => pb::NotRecognisedReason::Superseded,
        Reason::OutsideScope => pb::NotRecognisedReason::OutsideScope,
        Reason::PublisherRevoked => pb::NotRecognisedReason::PublisherRevoked,
    }
}

fn verdict_to_pb(v: &Verdict, policy_version: &str) -> pb::Verdict {
    pb::Verdict {
        recognition: if v.recognised() {
            pb::Recognition::Recognised
        } else {
            pb::Recognition::NotRecognised
        } as i32,
        reasons: v
            .reasons
            .iter()
            .map(|(r, text)| pb::ReasonDetail {
                reason: reason_to_pb(*r) as i32,
                explanation: text.clone(),
            })
            .collect(),
        hr_mark: v.hr_mark.clone().unwrap_or_default(),
        valid_until_ms: v.valid_until.map_or(0, |t| t.0),
        policy_version: policy_version.to_owned(),
    }
}

fn judged_to_pb(j: Judged, policy_version: &str) -> pb::StoredSummary {
    let verdict = verdict_to_pb(&j.verdict, policy_version);
    let earlier = j
        .earlier
        .into_iter()
        .map(|e| judged_to_pb(e, policy_version))
        .collect();
    let proof = j.log_proof.map(log_proof_to_pb);
    let mut out = stored_to_pb(j.stored);
    out.verdict = Some(verdict);
    out.earlier_versions = earlier;
    out.log_proof = proof;
    out
}

fn answer_parts(a: JudgedAnswer) -> (Vec<pb::StoredSummary>, bool, bool) {
    let version = a.policy_version;
    (
        a.results
            .into_iter()
            .map(|j| judged_to_pb(j, &version))
            .collect(),
        a.truncated,
        a.withheld_by_consent,
    )
}

fn order_code_to_pb(c: &OrderCode) -> pb::OrderItem {
    pb::OrderItem {
        code: Some(match c {
            OrderCode::Catalogue { system, code } => {
                pb::order_item::Code::Catalogue(pb::ItemCode {
                    system: system.clone(),
                    code: code.clone(),
                })
            }
            OrderCode::Local(l) => pb::order_item::Code::LocalCode(l.clone()),
        }),
    }
}

fn as_of(ms: i64) -> Result<UnixMillis, HubError> {
    match ms {
        0 => Ok(now()),
        ms if ms < 0 => Err(HubError::BadRequest("as_of_ms must not be negative".into())),
        ms => Ok(UnixMillis(ms)),
    }
}

fn pseudonym(bytes: &[u8]) -> Result<Pseudonym, HubError> {
    Pseudonym::from_slice(bytes).ok_or_else(|| {
        HubError::BadRequest(format!(
            "patient_pseudonym must be 32 bytes (HMAC-SHA-256 computed by the agent), got {}",
            bytes.len()
        ))
    })
}

fn prior_query(hub: &Hub, r: pb::FindPriorRequest) -> Result<PriorQuery, HubError> {
    let patient = pseudonym(&r.patient_pseudonym)?;
    if r.items.is_empty() {
        return Err(HubError::BadRequest(
            "name at least one item code to look for".into(),
        ));
    }
    if r.items.len() > MAX_QUERY_ITEMS {
        return Err(HubError::BadRequest(format!(
            "{} item codes asked for; at most {MAX_QUERY_ITEMS} per call",
            r.items.len()
        )));
    }
    let mut items = Vec::with_capacity(r.items.len());
    for (i, item) in r.items.into_iter().enumerate() {
        if item.system.is_empty() || item.code.is_empty() {
            return Err(HubError::BadRequest(format!(
                "items[{i}] needs both a code system and a code"
            )));
        }
        items.push((item.system, item.code));
    }
    if r.as_of_ms < 0 {
        return Err(HubError::BadRequest("as_of_ms must not be negative".into()));
    }
    let until = if r.as_of_ms == 0 {
        now()
    } else {
        UnixMillis(r.as_of_ms)
    };
    let from = match r.lookback_seconds {
        0 => UnixMillis(0),
        s => {
            let ms = i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
            UnixMillis(until.0.saturating_sub(ms).max(0))
        }
    };
    Ok(PriorQuery {
        patient,
        items,
        from,
        until,
        limit: hub.max_results(),
    })
}

#[tonic::async_trait]
impl pb::hub_server::Hub for HubGrpc {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        handle(
            "Publish",
            request,
            self.limits.max_message_bytes,
            |caller, r| async move {
                let signed = r
                    .summary
                    .ok_or_else(|| HubError::BadRequest("summary is missing".into()))?;
                let envelope = SignedEnvelope::try_from(signed)?;
                let (outcome, proof) = self.hub.publish(&caller, envelope).await?;
                let response = publish_response(&outcome, proof);
                if let Some(receipt) = &response.receipt {
                    tracing::info!(
                        summary = %format_args!("{}/{}", receipt.publisher, receipt.summary_id),
                        version = receipt.version,
                        already_stored = response.already_stored,
                        "summary accepted"
                    );
                }
                Ok(response)
            },
        )
        .await
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        handle(
            "PublishBatch",
            request,
            self.limits.max_batch_bytes,
            |caller, r| async move {
                if r.summaries.is_empty() {
                    return Err(HubError::BadRequest("the batch has no summaries".into()));
                }
                if r.summaries.len() > MAX_BATCH_SUMMARIES {
                    return Err(HubError::BadRequest(format!(
                        "the batch has {} summaries; at most {MAX_BATCH_SUMMARIES} per call",
                        r.summaries.len()
                    )));
                }
                // A summary that does not even parse as an envelope is refused on its own.
                let mut envelopes = Vec::with_capacity(r.summaries.len());
                let mut malformed = Vec::new();
                for (i, s) in r.summaries.into_iter().enumerate() {
                    match SignedEnvelope::try_from(s) {
                        Ok(e) => envelopes.push(e),
                        Err(e) => malformed.push((i, HubError::from(e))),
                    }
                }
                let mut published = self
                    .hub
                    .publish_batch(&caller, envelopes)
                    .await?
                    .into_iter();
                let total = published.len() + malformed.len();
                let mut malformed = malformed.into_iter().peekable();
                let (mut stored, mut refused) = (0usize, 0usize);
                // Refusals are logged together: a batch of a thousand bad summaries is one
                // line with the count per code and the first reasons, not a thousand.
                let mut by_code: std::collections::BTreeMap<&'static str, usize> =
                    std::collections::BTreeMap::new();
                let mut first_reasons: Vec<String> = Vec::new();
                let mut outcomes = Vec::with_capacity(total);
                for i in 0..total {
                    let outcome = match malformed.next_if(|(at, _)| *at == i) {
                        Some((_, e)) => Err(e),
                        None => published.next().ok_or_else(|| {
                            HubError::BadRequest("a summary of the batch has no outcome".into())
                        })?,
                    };
                    outcomes.push(pb::PublishOutcome {
                        outcome: Some(match outcome {
                            Ok((outcome, proof)) => {
                                stored += 1;
                                pb::publish_outcome::Outcome::Published(publish_response(
                                    &outcome, proof,
                                ))
                            }
                            Err(e) => {
                                refused += 1;
                                let status = e.into_status_unlogged();
                                *by_code.entry(status.code().description()).or_default() += 1;
                                if first_reasons.len() < 3 {
                                    first_reasons.push(format!("#{i}: {}", status.message()));
                                }
                                pb::publish_outcome::Outcome::Refused(pb::PublishRefusal {
                                    code: status.code() as i32,
                                    message: status.message().to_owned(),
                                })
                            }
                        }),
                    });
                }
                if refused > 0 {
                    tracing::warn!(
                        stored,
                        refused,
                        codes = ?by_code,
                        first = ?first_reasons,
                        "summaries of a batch refused"
                    );
                } else {
                    tracing::info!(stored, "summary batch handled");
                }
                Ok(pb::PublishBatchResponse { outcomes })
            },
        )
        .await
    }

    async fn find_prior(
        &self,
        request: Request<pb::FindPriorRequest>,
    ) -> Result<Response<pb::FindPriorResponse>, Status> {
        handle(
            "FindPrior",
            request,
            self.limits.max_message_bytes,
            |caller, r| async move {
                let ask = ask(r.purpose, r.with_proofs)?;
                let certificates_once = r.certificates_once;
                let query = prior_query(&self.hub, r)?;
                let answer = self.hub.find_prior(&caller, &query, ask).await?;
                let (mut results, truncated, withheld_by_consent) = answer_parts(answer);
                let signer_certificates =
                    SharedCertificates::share(certificates_once, &mut results);
                tracing::info!(
                    items = query.items.len(),
                    results = results.len(),
                    purpose = ask.purpose.name(),
                    withheld_by_consent,
                    "prior results found"
                );
                Ok(pb::FindPriorResponse {
                    results,
                    truncated,
                    withheld_by_consent,
                    signer_certificates,
                })
            },
        )
        .await
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        handle(
            "History",
            request,
            self.limits.max_message_bytes,
            |caller, r| async move {
                let ask = ask(r.purpose, r.with_proofs)?;
                if r.since_ms < 0 {
                    return Err(HubError::BadRequest("since_ms must not be negative".into()));
                }
                let query = PriorQuery {
                    patient: pseudonym(&r.patient_pseudonym)?,
                    items: vec![],
                    from: UnixMillis(r.since_ms),
                    until: UnixMillis(i64::MAX),
                    limit: self.hub.max_results(),
                };
                let answer = self
                    .hub
                    .history(&caller, &query, r.include_earlier_versions, ask)
                    .await?;
                let (mut results, truncated, withheld_by_consent) = answer_parts(answer);
                let signer_certificates =
                    SharedCertificates::share(r.certificates_once, &mut results);
                tracing::info!(
                    results = results.len(),
                    purpose = ask.purpose.name(),
                    withheld_by_consent,
                    "history listed"
                );
                Ok(pb::HistoryResponse {
                    results,
                    truncated,
                    withheld_by_consent,
                    signer_certificates,
                })
            },
        )
        .await
    }

    async fn check_order(
        &self,
        request: Request<pb::CheckOrderRequest>,
    ) -> Result<Response<pb::CheckOrderResponse>, Status> {
        handle(
            "CheckOrder",
            request,
            self.limits.max_message_bytes,
            |caller, r| async move {
                let ask = ask(r.purpose, r.with_proofs)?;
                let certificates_once = r.certificates_once;
                let patient = pseudonym(&r.patient_pseudonym)?;
                if r.items.is_empty() || r.items.len() > MAX_QUERY_ITEMS {
                    return Err(HubError::BadRequest(format!(
                        "name 1 to {MAX_QUERY_ITEMS} ordered items; got {}",
                        r.items.len()
                    )));
                }
                let mut order = Vec::with_capacity(r.items.len());
                for (i, item) in r.items.into_iter().enumerate() {
                    order.push(match item.code {
                    Some(pb::order_item::Code::Catalogue(c))
                        if !c.system.is_empty() && !c.code.is_empty() =>
                    {
                        OrderCode::Catalogue {
                            system: c.system,
                            code: c.code,
                        }
                    }
                    Some(pb::order_item::Code::LocalCode(l)) if !l.trim().is_empty() => {
                        OrderCode::Local(l)
                    }
                    _ => {
                        return Err(HubError::BadRequest(format!(
                            "items[{i}] needs a catalogue code (system and code) or a local code"
                        )));
                    }
                });
                }
                let at = as_of(r.as_of_ms)?;
                let (answers, version, withheld_by_consent) = self
                    .hub
                    .check_order(&caller, patient, order, at, ask)
                    .await?;
                let recognised = answers.iter().filter(|a| a.best.is_some()).count();
                tracing::info!(items = answers.len(), recognised, "order checked");
                let mut items: Vec<pb::OrderCheck> = answers
                    .into_iter()
                    .map(|a| pb::OrderCheck {
                        asked: Some(order_code_to_pb(&a.asked)),
                        item: a.item.as_ref().map(|(system, code, _)| pb::ItemCode {
                            system: system.clone(),
                            code: code.clone(),
                        }),
                        item_name: a.item.map(|(_, _, name)| name).unwrap_or_default(),
                        best: a.best.map(|j| judged_to_pb(j, &version)),
                        explanation: a.explanation,
                        candidates: u32::try_from(a.candidates).unwrap_or(u32::MAX),
                    })
                    .collect();
                let signer_certificates = SharedCertificates::share(
                    certificates_once,
                    items.iter_mut().filter_map(|i| i.best.as_mut()),
                );
                Ok(pb::CheckOrderResponse {
                    items,
                    policy_version: version,
                    withheld_by_consent,
                    signer_certificates,
                })
            },
        )
        .await
    }

    async fn record_decision(
        &self,
        request: Request<pb::RecordDecisionRequest>,
    ) -> Result<Response<pb::RecordDecisionResponse>, Status> {
        handle(
            "RecordDecision",
            request,
            self.limits.max_message_bytes,
            |caller, r| async move {
                let publisher = InstitutionId::parse(&r.publisher)
                    .map_err(|e| HubError::BadRequest(format!("publisher: {e}")))?;
                let reason = retest_reason(r.reason).ok_or_else(|| {
                    HubError::BadRequest(format!(
                        "reason {} is not a known re-test reason",
                        r.reason
                    ))
                })?;
                let decision = match pb::DecisionKind::try_from(r.decision) {
                    Ok(pb::DecisionKind::Adopted) => {
                        if reason.is_some() {
                            return Err(HubError::BadRequest(
                                "an adopted result takes no re-test reason".into(),
                            ));
                        }
                        Decision::Adopted
                    }
                    Ok(pb::DecisionKind::Retested) => Decision::Retested {
                        reason,
                        note: r.note,
                    },
                    _ => {
                        return Err(HubError::BadRequest(
                            "decision must be ADOPTED or RETESTED".into(),
                        ));
                    }
                };
                let (outcome, recognised, proof) = self
                    .hub
                    .record_decision(
                        &caller,
                        DecisionRequest {
                            decision_id: r.decision_id,
                            publisher,
                            summary_id: r.summary_id,
                            version: r.version,
                            decision,
                        },
                    )
                    .await?;
                let (already_recorded, at) = match outcome {
                    DecisionOutcome::Recorded { at } => (false, at),
                    DecisionOutcome::AlreadyRecorded { at, .. } => (true, at),
                };
                tracing::info!(already_recorded, recognised, "decision recorded");
                Ok(pb::RecordDecisionResponse {
                    already_recorded,
                    recorded_at_ms: at.0,
                    result_was_recognised: recognised,
                    log_proof: proof.map(log_proof_to_pb),
                })
            },
        )
        .await
    }

    async fn get_statistics(
        &self,
        request: Request<pb::StatisticsRequest>,
    ) -> Result<Response<pb::StatisticsResponse>, Status> {
        handle(
            "GetStatistics",
            request,
            self.limits.max_message_bytes,
            |caller, r| async move {
                let by = match pb::GroupBy::try_from(r.group_by) {
                    Ok(pb::GroupBy::Item) => GroupBy::Item,
                    Ok(pb::GroupBy::Member) => GroupBy::Member,
                    Ok(pb::GroupBy::Day) => GroupBy::Day,
                    Ok(pb::GroupBy::Month) => GroupBy::Month,
                    _ => {
                        return Err(HubError::BadRequest(
                            "group_by must be ITEM, MEMBER, DAY or MONTH".into(),
                        ));
                    }
                };
                let to = if r.to_ms == 0 {
                    now()
                } else {
                    UnixMillis(r.to_ms)
                };
                if r.from_ms < 0 || to.0 < r.from_ms {
                    return Err(HubError::BadRequest(
                        "the period must have 0 <= from_ms <= to_ms".into(),
                    ));
                }
                let s = self
                    .hub
                    .statistics(&caller, UnixMillis(r.from_ms), to, by)
                    .await?;
                let row = |r: huren_core::stats::Row, label: String| pb::StatisticsRow {
                    key: r.key,
                    label,
                    queries: r.queries,
                    recognisable_found: r.found,
                    cross_member: r.cross_member,
                    adopted: r.adopted,
                    retested: r.retested,
                    retested_by_reason: r.retested_by_reason.into_iter().collect(),
                    tests_avoided: r.tests_avoided,
                    money_saved_fen: r.money_saved_fen,
                };
                Ok(pb::StatisticsResponse {
                    rows: s.rows.into_iter().map(|(r, l)| row(r, l)).collect(),
                    total: Some(row(s.total, String::new())),
                    policy_version: s.policy_version,
                })
            },
        )
        .await
    }
    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        handle(
            "GetCheckpoint",
            request,
            self.limits.max_message_bytes,
            |caller, _| async move {
                Ok(pb::GetCheckpointResponse {
                    checkpoint: self.hub.checkpoint(&caller).await?,
                })
            },
        )
        .await
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        handle(
            "GetConsistencyProof",
            request,
            self.limits.max_message_bytes,
            |caller, r| async move {
                let (proof, new_size) = self
                    .hub
                    .consistency_proof(&caller, r.old_size, r.new_size)
                    .await?;
                Ok(pb::ConsistencyProofResponse {
                    proof: proof.iter().map(|h| h.to_vec()).collect(),
                    new_size,
                })
            },
        )
        .await
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        handle(
            "GetInclusionProof",
            request,
            self.limits.max_message_bytes,
            |caller, r| async move {
                let (leaf, proof) = self
                    .hub
                    .inclusion_proof(&caller, r.index, r.tree_size)
                    .await?;
                Ok(pb::InclusionProofResponse {
                    leaf,
                    proof: Some(log_proof_to_pb(proof)),
                })
            },
        )
        .await
    }

    async fn access_report(
        &self,
        request: Request<pb::AccessReportRequest>,
    ) -> Result<Response<pb::AccessReportResponse>, Status> {
        handle(
            "AccessReport",
            request,
            self.limits.max_message_bytes,
            |caller, r| async move {
                let patient = pseudonym(&r.patient_pseudonym)?;
                let to = if r.to_ms == 0 {
                    UnixMillis(i64::MAX)
                } else {
                    UnixMillis(r.to_ms)
                };
                if r.from_ms < 0 || to.0 < r.from_ms {
                    return Err(HubError::BadRequest(
                        "the period must have 0 <= from_ms <= to_ms".into(),
                    ));
                }
                let report = self
                    .hub
                    .access_report(&caller, &patient, UnixMillis(r.from_ms), to)
                    .await?;
                tracing::info!(entries = report.entries.len(), "access report");
                let mut entries = Vec::with_capacity(report.entries.len());
                for a in report.entries {
                    let Entry::Access {
                        at,
                        caller,
                        purpose,
                        method,
                        emergency_override,
                        withheld_by_consent,
                        results,
                        policy_version,
                        ..
                    } = a.entry
                    else {
                        return Err(HubError::Store(crate::store::StoreError::Corrupt(format!(
                            "log leaf {} is not an access",
                            a.index
                        ))));
                    };
                    entries.push(pb::AccessEntry {
                        at_ms: at.0,
                        caller,
                        purpose: purpose_to_pb(purpose) as i32,
                        method: method.name().to_owned(),
                        emergency_override,
                        withheld_by_consent,
                        results: u32::try_from(results.len()).unwrap_or(u32::MAX),
                        leaf: a.leaf,
                        proof: Some(log_proof_to_pb(a.proof)),
                        policy_version: policy_version.unwrap_or_default(),
                    });
                }
                Ok(pb::AccessReportResponse {
                    entries,
                    opted_out: report.opted_out,
                })
            },
        )
        .await
    }

    async fn set_consent(
        &self,
        request: Request<pb::SetConsentRequest>,
    ) -> Result<Response<pb::SetConsentResponse>, Status> {
        handle(
            "SetConsent",
            request,
            self.limits.max_message_bytes,
            |caller, r| async move {
                let patient = pseudonym(&r.patient_pseudonym)?;
                let (changed, at, proof) =
                    self.hub.set_consent(&caller, &patient, r.opted_out).await?;
                Ok(pb::SetConsentResponse {
                    recorded_at_ms: at.0,
                    log_proof: Some(log_proof_to_pb(proof)),
                    changed,
                })
            },
        )
        .await
    }
}
