//! Requests in domain terms: every check the gRPC edge makes on a request before the service
//! sees it, as plain functions (no caller, no store, no runtime), so the handlers, the fuzz
//! targets (fuzz/) and their corpus replay run exactly the same code. [`check_encoded`]
//! decodes a request's bytes as the transport does (`HurenCodec`: prost) and runs its check.

use huren_core::identity::InstitutionId;
use huren_core::pseudonym::Pseudonym;
use huren_core::rules::Decision;
use huren_core::signing::SignedEnvelope;
use huren_core::stats::GroupBy;
use huren_core::summary::UnixMillis;
use huren_proto::convert;
use huren_proto::hub as pb;
use prost::Message;

use crate::error::HubError;
use crate::service::{Ask, DecisionRequest, OrderCode, now, retest_reason};
use crate::store::PriorQuery;

/// Most item codes one FindPrior or CheckOrder may ask for.
pub const MAX_QUERY_ITEMS: usize = 200;

/// Most summaries one PublishBatch may carry.
pub const MAX_BATCH_SUMMARIES: usize = 1000;

/// The purpose of a query: required.
pub fn ask(purpose: i32, requester: String, with_proofs: bool) -> Result<Ask, HubError> {
    let purpose = convert::purpose(purpose).ok_or_else(|| {
        HubError::BadRequest(
            "purpose is required: say why you look at this patient's results (TREATMENT, REFERRAL, EMERGENCY, PATIENT_REQUEST, ADMINISTRATION or QUALITY_CONTROL); every access is logged with it".into(),
        )
    })?;
    check_requester(&requester)?;
    Ok(Ask {
        purpose,
        requester,
        with_proofs,
    })
}

/// A request's `requester`: empty (no one named) or an id `check_requester` accepts.
pub fn check_requester(requester: &str) -> Result<(), HubError> {
    if requester.is_empty() {
        return Ok(());
    }
    huren_core::logentry::check_requester(requester).map_err(HubError::BadRequest)
}

/// An `as_of_ms`: 0 is now.
pub fn as_of(ms: i64) -> Result<UnixMillis, HubError> {
    match ms {
        0 => Ok(now()),
        ms if ms < 0 => Err(HubError::BadRequest("as_of_ms must not be negative".into())),
        ms => Ok(UnixMillis(ms)),
    }
}

/// A patient pseudonym: exactly 32 bytes.
pub fn pseudonym(bytes: &[u8]) -> Result<Pseudonym, HubError> {
    Pseudonym::from_slice(bytes).ok_or_else(|| {
        HubError::BadRequest(format!(
            "patient_pseudonym must be 32 bytes (HMAC-SHA-256 computed by the agent), got {}",
            bytes.len()
        ))
    })
}

/// Publish: the envelope (its signature and body are checked by the service).
pub fn publish(r: pb::PublishRequest) -> Result<SignedEnvelope, HubError> {
    let signed = r
        .summary
        .ok_or_else(|| HubError::BadRequest("summary is missing".into()))?;
    Ok(SignedEnvelope::try_from(signed)?)
}

/// A PublishBatch's summaries: the envelopes that parse, and each one that does not with its
/// position and why (refused on its own, the others still go on).
pub type BatchEnvelopes = (Vec<SignedEnvelope>, Vec<(usize, HubError)>);

/// PublishBatch: 1 to [`MAX_BATCH_SUMMARIES`] summaries.
pub fn publish_batch(r: pb::PublishBatchRequest) -> Result<BatchEnvelopes, HubError> {
    if r.summaries.is_empty() {
        return Err(HubError::BadRequest("the batch has no summaries".into()));
    }
    if r.summaries.len() > MAX_BATCH_SUMMARIES {
        return Err(HubError::BadRequest(format!(
            "the batch has {} summaries; at most {MAX_BATCH_SUMMARIES} per call",
            r.summaries.len()
        )));
    }
    let mut envelopes = Vec::with_capacity(r.summaries.len());
    let mut malformed = Vec::new();
    for (i, s) in r.summaries.into_iter().enumerate() {
        match SignedEnvelope::try_from(s) {
            Ok(e) => envelopes.push(e),
            Err(e) => malformed.push((i, HubError::from(e))),
        }
    }
    Ok((envelopes, malformed))
}

/// FindPrior: what to ask, whether certificates go once, and the query (`limit` results).
pub fn find_prior(
    mut r: pb::FindPriorRequest,
    limit: usize,
) -> Result<(Ask, bool, PriorQuery), HubError> {
    let ask = ask(r.purpose, std::mem::take(&mut r.requester), r.with_proofs)?;
    let certificates_once = r.certificates_once;
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
    Ok((
        ask,
        certificates_once,
        PriorQuery {
            patient,
            items,
            from,
            until,
            limit,
        },
    ))
}

/// History: what to ask and the query (`limit` results).
pub fn history(mut r: pb::HistoryRequest, limit: usize) -> Result<(Ask, PriorQuery), HubError> {
    let ask = ask(r.purpose, std::mem::take(&mut r.requester), r.with_proofs)?;
    if r.since_ms < 0 {
        return Err(HubError::BadRequest("since_ms must not be negative".into()));
    }
    let query = PriorQuery {
        patient: pseudonym(&r.patient_pseudonym)?,
        items: vec![],
        from: UnixMillis(r.since_ms),
        until: UnixMillis(i64::MAX),
        limit,
    };
    Ok((ask, query))
}

/// CheckOrder, in domain terms.
#[derive(Clone, Debug)]
pub struct OrderRequest {
    pub ask: Ask,
    pub certificates_once: bool,
    pub compact_proofs: bool,
    pub patient: Pseudonym,
    pub order: Vec<OrderCode>,
    pub at: UnixMillis,
}

/// CheckOrder: 1 to [`MAX_QUERY_ITEMS`] items, each a catalogue or a local code.
pub fn check_order(mut r: pb::CheckOrderRequest) -> Result<OrderRequest, HubError> {
    let ask = ask(r.purpose, std::mem::take(&mut r.requester), r.with_proofs)?;
    let (certificates_once, compact_proofs) = (r.certificates_once, r.compact_proofs);
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
            Some(pb::order_item::Code::LocalCode(l)) if !l.trim().is_empty() => OrderCode::Local(l),
            _ => {
                return Err(HubError::BadRequest(format!(
                    "items[{i}] needs a catalogue code (system and code) or a local code"
                )));
            }
        });
    }
    let at = as_of(r.as_of_ms)?;
    Ok(OrderRequest {
        ask,
        certificates_once,
        compact_proofs,
        patient,
        order,
        at,
    })
}

/// RecordDecision: an adopted result takes no reason; a re-test may.
pub fn record_decision(r: pb::RecordDecisionRequest) -> Result<DecisionRequest, HubError> {
    let publisher = InstitutionId::parse(&r.publisher)
        .map_err(|e| HubError::BadRequest(format!("publisher: {e}")))?;
    let reason = retest_reason(r.reason).ok_or_else(|| {
        HubError::BadRequest(format!("reason {} is not a known re-test reason", r.reason))
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
    Ok(DecisionRequest {
        decision_id: r.decision_id,
        publisher,
        summary_id: r.summary_id,
        version: r.version,
        decision,
    })
}

/// GetStatistics: the period (`to_ms` 0 is now) and the grouping.
pub fn statistics(r: pb::StatisticsRequest) -> Result<(UnixMillis, UnixMillis, GroupBy), HubError> {
    let by = convert::group_by(r.group_by).ok_or_else(|| {
        HubError::BadRequest("group_by must be ITEM, MEMBER, DAY or MONTH".into())
    })?;
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
    Ok((UnixMillis(r.from_ms), to, by))
}

/// AccessReport: the patient, who asks at the caller, and the period (`to_ms` 0 is no end).
pub fn access_report(
    r: pb::AccessReportRequest,
) -> Result<(Pseudonym, String, UnixMillis, UnixMillis), HubError> {
    let patient = pseudonym(&r.patient_pseudonym)?;
    check_requester(&r.requester)?;
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
    Ok((patient, r.requester, UnixMillis(r.from_ms), to))
}

/// SetConsent: the patient and the new state.
pub fn set_consent(r: pb::SetConsentRequest) -> Result<(Pseudonym, bool), HubError> {
    Ok((pseudonym(&r.patient_pseudonym)?, r.opted_out))
}

/// The RPCs [`check_encoded`] knows, by their method name in hub.proto.
pub const METHODS: [&str; 12] = [
    "Publish",
    "PublishBatch",
    "FindPrior",
    "History",
    "CheckOrder",
    "RecordDecision",
    "GetStatistics",
    "AccessReport",
    "SetConsent",
    "GetCheckpoint",
    "GetConsistencyProof",
    "GetInclusionProof",
];

/// What a request carried that the service checks next, for a caller of [`check_encoded`].
#[derive(Debug)]
pub enum Checked {
    /// Publish and PublishBatch: the envelopes that parse (their signature and body are the
    /// service's to check).
    Envelopes(Vec<SignedEnvelope>),
    /// Every other call: nothing more at the edge.
    Done,
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, HubError> {
    // As `huren_proto::codec::HurenCodec`: bytes that do not decode are the caller's error.
    M::decode(bytes).map_err(|e| HubError::BadRequest(format!("the request does not decode: {e}")))
}

/// Decodes `bytes` as the request of `method` (one of [`METHODS`]) and runs the edge's checks
/// on it, as a call would before reaching the service; `limit` is the hub's `max_results`.
pub fn check_encoded(method: &str, bytes: &[u8], limit: usize) -> Result<Checked, HubError> {
    Ok(match method {
        "Publish" => Checked::Envelopes(vec![publish(decode(bytes)?)?]),
        "PublishBatch" => Checked::Envelopes(publish_batch(decode(bytes)?)?.0),
        "FindPrior" => {
            find_prior(decode(bytes)?, limit)?;
            Checked::Done
        }
        "History" => {
            history(decode(bytes)?, limit)?;
            Checked::Done
        }
        "CheckOrder" => {
            check_order(decode(bytes)?)?;
            Checked::Done
        }
        "RecordDecision" => {
            record_decision(decode(bytes)?)?;
            Checked::Done
        }
        "GetStatistics" => {
            statistics(decode(bytes)?)?;
            Checked::Done
        }
        "AccessReport" => {
            access_report(decode(bytes)?)?;
            Checked::Done
        }
        "SetConsent" => {
            set_consent(decode(bytes)?)?;
            Checked::Done
        }
        "GetCheckpoint" => {
            decode::<pb::GetCheckpointRequest>(bytes)?;
            Checked::Done
        }
        "GetConsistencyProof" => {
            decode::<pb::ConsistencyProofRequest>(bytes)?;
            Checked::Done
        }
        "GetInclusionProof" => {
            decode::<pb::InclusionProofRequest>(bytes)?;
            Checked::Done
        }
        other => {
            return Err(HubError::BadRequest(format!("no method {other}")));
        }
    })
}
