//! Prometheus metrics of the agent daemon, on a listener of their own (`[metrics] listen`, off
//! by default; keep it on 127.0.0.1 or a management network).
//!
//! `GET /metrics` answers in the OpenMetrics text format, read from the store at each scrape:
//!
//! - `huren_agent_outbox_pending`, `huren_agent_outbox_published`, `huren_agent_outbox_dead`:
//!   summaries waiting to be published, published, and given up on (dead letters);
//! - `huren_agent_outbox_oldest_age_seconds`: how long the oldest waiting summary has waited
//!   (0 when none waits): the one to alert on when the hub cannot be reached;
//! - `huren_agent_log_check_failures_total`: receipts whose inclusion proof or checkpoint did
//!   not verify against the hub's log key (each leaves its summary queued).
//!
//! Nothing in them names a patient or a result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use huren_core::summary::UnixMillis;

use crate::store::Store;

/// Receipts refused because the hub's log failed verification, since this process started.
static LOG_CHECK_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Counts one receipt whose log proof failed verification.
pub fn log_check_failed() {
    LOG_CHECK_FAILURES.fetch_add(1, Ordering::Relaxed);
}

/// The page a scrape gets, read from `store` now.
pub fn render(store: &Store) -> Result<String, String> {
    let mut registry = Registry::with_prefix("huren_agent");
    let counts = store.counts();
    let gauge = |v: usize| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    registry.register(
        "outbox_pending",
        "Summaries waiting to be published",
        gauge(counts.pending),
    );
    registry.register(
        "outbox_published",
        "Summaries published (receipt held)",
        gauge(counts.published),
    );
    registry.register(
        "outbox_dead",
        "Summaries given up on (dead letters; see huren-agent outbox)",
        gauge(counts.dead),
    );
    let oldest = store
        .oldest_pending_ms()
        .map_err(|e| format!("the outbox could not be read: {e}"))?;
    let age: Gauge = Gauge::default();
    age.set(oldest.map_or(0, |at| (UnixMillis::now().0 - at).max(0) / 1000));
    registry.register(
        "outbox_oldest_age_seconds",
        "How long the oldest waiting summary has waited, in seconds (0: none waits)",
        age,
    );
    let failures: Counter = Counter::default();
    failures.inc_by(LOG_CHECK_FAILURES.load(Ordering::Relaxed));
    registry.register(
        "log_check_failures",
        "Receipts whose log proof did not verify (each leaves its summary queued)",
        failures,
    );
    let mut text = String::new();
    encode(&mut text, &registry).map_err(|e| e.to_string())?;
    Ok(text)
}

/// Serves `GET /metrics` on `listener` (see `huren_metrics_http`) until the task is aborted.
pub async fn serve(listener: TcpListener, store: Arc<Store>) {
    let render: huren_metrics_http::Render = Arc::new(move || {
        let store = store.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || render(&store))
                .await
                .map_err(|e| e.to_string())?
        })
    });
    huren_metrics_http::serve(listener, render).await;
}
