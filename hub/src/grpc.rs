//! The gRPC edge: takes the caller's identity from its client certificate, converts requests to
//! domain values, calls [`Hub`], converts answers back. The only hub module that sees
//! `huren_proto` types.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use huren_core::identity::InstitutionId;
use huren_core::pseudonym::Pseudonym;
use huren_core::signing::SignedEnvelope;
use huren_core::summary::UnixMillis;
use huren_core::trust::institution_in_certificate;
use huren_proto::hub as pb;

use crate::error::HubError;
use crate::service::{Hub, now};
use crate::store::{Found, PriorQuery, PutOutcome, Receipt, StoredSummary};

/// Most item codes one FindPrior may ask for.
pub const MAX_QUERY_ITEMS: usize = 200;

/// Implements the generated `Hub` service trait over the domain [`Hub`].
pub struct HubGrpc {
    hub: Arc<Hub>,
}

impl HubGrpc {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

/// The caller's institution, from the client certificate that TLS verified against the
/// alliance CA. Never from a request field.
fn caller<T>(request: &Request<T>) -> Result<InstitutionId, HubError> {
    let certs = request.peer_certs().ok_or(HubError::NoClientCertificate)?;
    let leaf = certs.first().ok_or(HubError::NoClientCertificate)?;
    institution_in_certificate(leaf).map_err(HubError::CallerCertificate)
}

/// Runs a handler inside a span that names the method and the caller, and turns its error into
/// a status (logged once, inside the span).
async fn handle<T, R, F, Fut>(
    method: &'static str,
    request: Request<T>,
    f: F,
) -> Result<Response<R>, Status>
where
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

fn stored_to_pb(s: StoredSummary) -> pb::StoredSummary {
    pb::StoredSummary {
        receipt: Some(receipt_to_pb(&s.receipt)),
        summary: Some(s.envelope.into()),
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

fn found_parts(found: Found) -> (Vec<pb::StoredSummary>, bool) {
    (
        found.results.into_iter().map(stored_to_pb).collect(),
        found.truncated,
    )
}

#[tonic::async_trait]
impl pb::hub_server::Hub for HubGrpc {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        handle("Publish", request, |caller, r| async move {
            let signed = r
                .summary
                .ok_or_else(|| HubError::BadRequest("summary is missing".into()))?;
            let envelope = SignedEnvelope::try_from(signed)?;
            let outcome = self.hub.publish(&caller, envelope).await?;
            let (receipt, already_stored) = match &outcome {
                PutOutcome::Stored(r) => (r, false),
                PutOutcome::AlreadyStored(r) => (r, true),
            };
            tracing::info!(
                summary = %format_args!("{}/{}", receipt.publisher, receipt.summary_id),
                version = receipt.version,
                already_stored,
                "summary accepted"
            );
            Ok(pb::PublishResponse {
                receipt: Some(receipt_to_pb(receipt)),
                already_stored,
            })
        })
        .await
    }

    async fn find_prior(
        &self,
        request: Request<pb::FindPriorRequest>,
    ) -> Result<Response<pb::FindPriorResponse>, Status> {
        handle("FindPrior", request, |_caller, r| async move {
            let query = prior_query(&self.hub, r)?;
            let (results, truncated) = found_parts(self.hub.find_prior(&query)?);
            tracing::info!(
                items = query.items.len(),
                results = results.len(),
                "prior results found"
            );
            Ok(pb::FindPriorResponse { results, truncated })
        })
        .await
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        handle("History", request, |_caller, r| async move {
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
            let (results, truncated) = found_parts(self.hub.history(&query)?);
            tracing::info!(results = results.len(), "history listed");
            Ok(pb::HistoryResponse { results, truncated })
        })
        .await
    }
}
