//! The gRPC edge: takes the caller's identity from its client certificate, converts requests to
//! domain values, calls [`Hub`], converts answers back. The only hub module that sees
//! `huren_proto` types.
//!
//! The service trait's methods only run [`handle`] (caller, size limit, span, status) around a
//! function of their family: `publish`, `query` (FindPrior, History, CheckOrder), `audit`
//! (RecordDecision, GetStatistics, AccessReport, SetConsent), `log` (checkpoints, proofs). The
//! conversions they share are here.

mod audit;
mod log;
mod publish;
mod query;
pub mod requests;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use tonic::{Request, Response, Status};
use tracing::Instrument;

use huren_core::identity::InstitutionId;
use huren_core::logentry::{Entry, LogProof};
use huren_core::trust::client_institution;
use huren_proto::convert;
use huren_proto::hub as pb;

use crate::error::HubError;
use crate::metrics::HubMetrics;
use crate::service::{Hub, Judged, JudgedAnswer, OrderCode};
use crate::store::{DecisionOutcome, PutOutcome, StoredSummary};

pub use requests::{MAX_BATCH_SUMMARIES, MAX_QUERY_ITEMS};

/// Implements the generated `Hub` service trait over the domain [`Hub`].
pub struct HubGrpc {
    hub: Arc<Hub>,
    limits: MessageLimits,
    metrics: Arc<HubMetrics>,
}

/// Largest requests accepted, in bytes: PublishBatch has its own limit; every other call the
/// ordinary one. (The transport's own limit is the larger of the two.)
#[derive(Clone, Copy, Debug)]
pub struct MessageLimits {
    pub max_message_bytes: usize,
    pub max_batch_bytes: usize,
}

impl HubGrpc {
    pub fn new(hub: Arc<Hub>, limits: MessageLimits, metrics: Arc<HubMetrics>) -> Self {
        Self {
            hub,
            limits,
            metrics,
        }
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
/// handler runs. Every call, answered or refused, is counted in `metrics` with its status and
/// how long it took.
async fn handle<T, R, F, Fut>(
    metrics: &HubMetrics,
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
    let started = std::time::Instant::now();
    let answer = async {
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
    .await;
    let code = match &answer {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics.rpc(method, code, started.elapsed());
    answer
}

fn publish_response(outcome: &PutOutcome, proof: LogProof) -> pb::PublishResponse {
    let (receipt, already_stored) = match outcome {
        PutOutcome::Stored(r) => (r, false),
        PutOutcome::AlreadyStored(r) => (r, true),
    };
    pb::PublishResponse {
        receipt: Some(pb::Receipt::from(receipt)),
        already_stored,
        log_proof: Some(pb::LogProof::from(proof)),
    }
}

fn stored_to_pb(s: StoredSummary) -> pb::StoredSummary {
    pb::StoredSummary {
        receipt: Some(pb::Receipt::from(&s.receipt)),
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

/// How an answer's proofs travel: in full (each with its checkpoint), or, for a request with
/// `compact_proofs`, packed and leading to the answer's one checkpoint (`Some`).
type ProofForm<'a> = Option<&'a str>;

/// The checkpoint an answer's proofs lead to, for a request with `compact_proofs`: the first
/// proof's (all of one answer are made against one checkpoint, see `attach_proofs`; a proof
/// that leads elsewhere would keep its own). Empty otherwise, or when nothing was proven.
fn answer_checkpoint<'a>(asked: bool, judged: impl IntoIterator<Item = &'a Judged>) -> String {
    fn first(j: &Judged) -> Option<&str> {
        j.log_proof
            .as_ref()
            .map(|p| p.checkpoint.as_str())
            .or_else(|| j.earlier.iter().find_map(first))
    }
    match asked {
        true => judged
            .into_iter()
            .find_map(first)
            .unwrap_or_default()
            .to_owned(),
        false => String::new(),
    }
}

fn judged_to_pb(j: Judged, policy_version: &str, form: ProofForm) -> pb::StoredSummary {
    let verdict = convert::verdict_to_pb(&j.verdict, policy_version);
    let earlier = j
        .earlier
        .into_iter()
        .map(|e| judged_to_pb(e, policy_version, form))
        .collect();
    let proof = j.log_proof.map(|p| match form {
        Some(checkpoint) => convert::compact_log_proof(p, checkpoint),
        None => pb::LogProof::from(p),
    });
    let mut out = stored_to_pb(j.stored);
    out.verdict = Some(verdict);
    out.earlier_versions = earlier;
    out.log_proof = proof;
    out
}

/// An answer's results, whether it was truncated or withheld, and (with `compact_proofs`)
/// the checkpoint its proofs lead to.
fn answer_parts(
    a: JudgedAnswer,
    compact_proofs: bool,
) -> (Vec<pb::StoredSummary>, bool, bool, String) {
    let version = a.policy_version;
    let checkpoint = answer_checkpoint(compact_proofs, &a.results);
    let form = compact_proofs.then_some(checkpoint.as_str());
    let results = a
        .results
        .into_iter()
        .map(|j| judged_to_pb(j, &version, form))
        .collect();
    (results, a.truncated, a.withheld_by_consent, checkpoint)
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

#[tonic::async_trait]
impl pb::hub_server::Hub for HubGrpc {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        handle(
            &self.metrics,
            "Publish",
            request,
            self.limits.max_message_bytes,
            |caller, r| publish::publish(self, caller, r),
        )
        .await
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        handle(
            &self.metrics,
            "PublishBatch",
            request,
            self.limits.max_batch_bytes,
            |caller, r| publish::publish_batch(self, caller, r),
        )
        .await
    }

    async fn find_prior(
        &self,
        request: Request<pb::FindPriorRequest>,
    ) -> Result<Response<pb::FindPriorResponse>, Status> {
        handle(
            &self.metrics,
            "FindPrior",
            request,
            self.limits.max_message_bytes,
            |caller, r| query::find_prior(self, caller, r),
        )
        .await
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        handle(
            &self.metrics,
            "History",
            request,
            self.limits.max_message_bytes,
            |caller, r| query::history(self, caller, r),
        )
        .await
    }

    async fn check_order(
        &self,
        request: Request<pb::CheckOrderRequest>,
    ) -> Result<Response<pb::CheckOrderResponse>, Status> {
        handle(
            &self.metrics,
            "CheckOrder",
            request,
            self.limits.max_message_bytes,
            |caller, r| query::check_order(self, caller, r),
        )
        .await
    }

    async fn record_decision(
        &self,
        request: Request<pb::RecordDecisionRequest>,
    ) -> Result<Response<pb::RecordDecisionResponse>, Status> {
        handle(
            &self.metrics,
            "RecordDecision",
            request,
            self.limits.max_message_bytes,
            |caller, r| audit::record_decision(self, caller, r),
        )
        .await
    }

    async fn get_statistics(
        &self,
        request: Request<pb::StatisticsRequest>,
    ) -> Result<Response<pb::StatisticsResponse>, Status> {
        handle(
            &self.metrics,
            "GetStatistics",
            request,
            self.limits.max_message_bytes,
            |caller, r| audit::get_statistics(self, caller, r),
        )
        .await
    }

    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        handle(
            &self.metrics,
            "GetCheckpoint",
            request,
            self.limits.max_message_bytes,
            |caller, r| log::get_checkpoint(self, caller, r),
        )
        .await
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        handle(
            &self.metrics,
            "GetConsistencyProof",
            request,
            self.limits.max_message_bytes,
            |caller, r| log::get_consistency_proof(self, caller, r),
        )
        .await
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        handle(
            &self.metrics,
            "GetInclusionProof",
            request,
            self.limits.max_message_bytes,
            |caller, r| log::get_inclusion_proof(self, caller, r),
        )
        .await
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        handle(
            &self.metrics,
            "GetPolicy",
            request,
            self.limits.max_message_bytes,
            |caller, r| log::get_policy(self, caller, r),
        )
        .await
    }

    async fn get_log_entries(
        &self,
        request: Request<pb::LogEntriesRequest>,
    ) -> Result<Response<pb::LogEntriesResponse>, Status> {
        handle(
            &self.metrics,
            "GetLogEntries",
            request,
            self.limits.max_message_bytes,
            |caller, r| log::get_log_entries(self, caller, r),
        )
        .await
    }

    async fn access_report(
        &self,
        request: Request<pb::AccessReportRequest>,
    ) -> Result<Response<pb::AccessReportResponse>, Status> {
        handle(
            &self.metrics,
            "AccessReport",
            request,
            self.limits.max_message_bytes,
            |caller, r| audit::access_report(self, caller, r),
        )
        .await
    }

    async fn set_consent(
        &self,
        request: Request<pb::SetConsentRequest>,
    ) -> Result<Response<pb::SetConsentResponse>, Status> {
        handle(
            &self.metrics,
            "SetConsent",
            request,
            self.limits.max_message_bytes,
            |caller, r| audit::set_consent(self, caller, r),
        )
        .await
    }
}
