//! Prometheus metrics of the hub, on a listener of their own (`[metrics] listen`, off by
//! default; keep it on 127.0.0.1 or a management network: it needs no certificate).
//!
//! `GET /metrics` answers in the OpenMetrics text format:
//!
//! - `huren_hub_requests_total{method, code}`: calls answered, by RPC and gRPC status;
//! - `huren_hub_request_seconds{method}`: how long they took (histogram);
//! - `huren_hub_publish_batch_summaries`: summaries per PublishBatch call (histogram);
//! - `huren_hub_commit_seconds{writer}`: how long the group commits of publishes and of
//!   queries' audit records waited for the disk (histogram);
//! - `huren_hub_log_entries`: the log's size (read at each scrape);
//! - `huren_hub_policy_info{version}`: 1 for the alliance policy in force.
//!
//! Nothing in them names a patient, a pseudonym or a result.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::policy::PolicyHandle;
use crate::store::SharedStore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

/// A status code's name as gRPC writes it in Rust (`Ok`, `InvalidArgument`, …), without an
/// allocation per call.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "Ok",
        C::Cancelled => "Cancelled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriterLabel {
    writer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// From 0.5 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// The hub's metrics. Cheap to share (`Arc`); recording takes no lock beyond the metric's own.
pub struct HubMetrics {
    registry: Registry,
    requests: Family<RpcLabels, Counter>,
    latency: HistogramFamily<MethodLabel>,
    batch: Histogram,
    commits: HistogramFamily<WriterLabel>,
    log_entries: Gauge,
    policy: Family<PolicyLabel, Gauge>,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HubMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("huren_hub");
        let requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "requests",
            "Calls answered, by RPC and gRPC status",
            requests.clone(),
        );
        let latency: HistogramFamily<MethodLabel> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "request_seconds",
            "How long calls took to answer, by RPC",
            latency.clone(),
        );
        let batch = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "publish_batch_summaries",
            "Summaries per PublishBatch call",
            batch.clone(),
        );
        let commits: HistogramFamily<WriterLabel> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "commit_seconds",
            "How long group commits waited for the disk, by writer (publishes, queries)",
            commits.clone(),
        );
        let log_entries = Gauge::default();
        registry.register(
            "log_entries",
            "Entries in the hub's log",
            log_entries.clone(),
        );
        let policy = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "policy_info",
            "The alliance policy in force (1 for its version)",
            policy.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            batch,
            commits,
            log_entries,
            policy,
        }
    }

    /// One answered call: its RPC, its status and how long it took.
    pub fn rpc(&self, method: &'static str, code: tonic::Code, took: Duration) {
        self.requests
            .get_or_create(&RpcLabels {
                method,
                code: code_name(code),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabel { method })
            .observe(took.as_secs_f64());
    }

    /// A PublishBatch call of `summaries` summaries.
    pub fn publish_batch(&self, summaries: usize) {
        self.batch.observe(summaries as f64);
    }

    /// A group commit of `writer` ("publishes" or "queries") that took `took`.
    pub fn commit(&self, writer: &'static str, took: Duration) {
        self.commits
            .get_or_create(&WriterLabel {
                writer: writer.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Waits for `store`'s group commit and records how long it took for `writer`; the
    /// error, if any, as text for the callers waiting on it.
    pub async fn timed_commit(
        &self,
        store: &SharedStore,
        writer: &'static str,
    ) -> Result<(), String> {
        let started = std::time::Instant::now();
        let durable = store.commit().await.map_err(|e| e.to_string());
        self.commit(writer, started.elapsed());
        durable
    }

    /// The text a scrape gets, with the log's size and the policy version read now.
    fn render(&self, log_entries: u64, policy_version: &str) -> String {
        self.log_entries
            .set(i64::try_from(log_entries).unwrap_or(i64::MAX));
        self.policy.clear();
        self.policy
            .get_or_create(&PolicyLabel {
                version: policy_version.to_owned(),
            })
            .set(1);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// What a scrape needs: the metrics and where the gauges are read.
#[derive(Clone)]
pub struct MetricsSource {
    pub metrics: Arc<HubMetrics>,
    pub store: SharedStore,
    pub policy: Arc<PolicyHandle>,
}

/// Serves `GET /metrics` on `listener` (see `huren_metrics_http`) until the task is aborted.
pub async fn serve(listener: TcpListener, source: MetricsSource) {
    let render: huren_metrics_http::Render = Arc::new(move || {
        let source = source.clone();
        Box::pin(async move {
            let head = source
                .store
                .tree_head()
                .await
                .map_err(|e| format!("the log's size could not be read: {e}"))?;
            Ok(source
                .metrics
                .render(head.size, &source.policy.get().version))
        })
    });
    huren_metrics_http::serve(listener, render).await;
}
