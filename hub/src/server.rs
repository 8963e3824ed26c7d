//! Assembles and runs the hub: TLS, the Hub service, health and reflection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use huren_core::trust::AllianceCa;
use huren_proto::hub::hub_server::HubServer;

use crate::config::HubConfig;
use crate::conn::{self, ConnectionLimits};
use crate::grpc::{HubGrpc, MessageLimits};
use crate::log::LogSigner;
use crate::policy::{PolicyError, PolicyHandle};
use crate::service::Hub;
use crate::store::SharedStore;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("alliance CA: {0}")]
    Ca(#[from] huren_core::trust::TrustError),
    #[error("cannot open the store at {path}: {source}")]
    Store {
        path: std::path::PathBuf,
        source: crate::store::StoreError,
    },
    #[error("policy: {0}")]
    Policy(PolicyError),
    #[error("the policy could not be logged: {0}")]
    PolicyLog(String),
    #[error("log key: {0}")]
    LogKey(#[from] crate::log::LogKeyError),
    #[error("TLS set-up: {0}")]
    Tls(tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server: {0}")]
    Serve(tonic::transport::Error),
    #[error("could not start the hub's worker threads: {0}")]
    Threads(std::io::Error),
    #[error("witnesses: {0}")]
    Witnesses(#[from] crate::witness::client::WitnessConfigError),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|source| ServerError::Read {
        path: path.to_owned(),
        source,
    })
}

/// How long past the request timeout a stopping hub waits for its connections to close.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

/// Runs the hub on an already bound listener until `shutdown` completes. In-flight requests
/// finish before it returns, for at most `request_timeout_seconds` plus a second: a client that
/// stops reading would otherwise hold the stop forever (HTTP/2's graceful close waits for the
/// client's acknowledgement).
pub async fn run(
    config: HubConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let store = crate::store::open(&config)
        .await
        .map_err(|source| ServerError::Store {
            path: config.store_display().into(),
            source,
        })?;
    run_with_store(config, store, listener, shutdown).await
}

/// [`run`] on a store the caller has already opened (`config.store` names it in the log):
/// the benchmark seeds a store, then serves it without closing and reopening it.
pub async fn run_with_store(
    config: HubConfig,
    store: SharedStore,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let ca_pem = read(&config.tls.ca)?;
    let ca = AllianceCa::from_pem(&String::from_utf8_lossy(&ca_pem))?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&config.tls.cert)?,
            read(&config.tls.key)?,
        ))
        .client_ca_root(Certificate::from_pem(ca_pem))
        .timeout(Duration::from_secs(
            config.limits.handshake_timeout_seconds.max(1),
        ));
    let policy = Arc::new(PolicyHandle::open(&config.policy).map_err(ServerError::Policy)?);
    let p = policy.get();
    tracing::info!(version = %p.version, items = p.items.len(), members = p.members.len(), "policy loaded");
    let log = LogSigner::load_or_create(&config.log_key_path(), &config.log.origin)?;
    let witnesses = crate::witness::client::Witnesses::new(
        &config.witnesses,
        Duration::from_millis(config.log.witness_timeout_ms.max(1)),
    )?;
    let head = store
        .tree_head()
        .await
        .map_err(|source| ServerError::Store {
            path: config.store_display().into(),
            source,
        })?;
    tracing::info!(origin = %log.origin(), size = head.size, witnesses = witnesses.len(), "log opened");
    let health_policy = policy.clone();
    let metrics_policy = policy.clone();
    let metrics = Arc::new(crate::metrics::HubMetrics::new());
    let hub = Hub::new(
        store.clone(),
        ca,
        policy,
        config.limits.max_results,
        log,
        metrics.clone(),
    )
    .map_err(ServerError::Threads)?
    .with_max_clock_skew(config.limits.max_clock_skew_seconds)
    .with_witnesses(witnesses);
    let hub = Arc::new(hub);
    // Every policy put in force is in the log first: the one read at start too.
    hub.log_policy_in_force()
        .await
        .map_err(|e| ServerError::PolicyLog(e.to_string()))?;
    tokio::spawn(watch_policy(
        Arc::downgrade(&hub),
        Duration::from_secs(config.limits.policy_poll_seconds),
    ));
    let closing = Arc::downgrade(&hub);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<HubServer<HubGrpc>>().await;
    // A revoked member is told so by the health check too (a load balancer or an agent's
    // probe would otherwise see SERVING and keep sending it calls the hub refuses).
    let health = tonic::service::interceptor::InterceptedService::new(
        health,
        move |request: tonic::Request<()>| {
            let caller = crate::grpc::caller(&request).map_err(|e| e.into_status())?;
            let now = crate::service::now();
            match health_policy.get().revoked_at(&caller, now) {
                None => Ok(request),
                Some(r) => Err(tonic::Status::permission_denied(format!(
                    "institution {caller} was revoked by the alliance ({}); its calls are refused",
                    r.reason
                ))),
            }
        },
    );
    // Reflection v1 and v1alpha: older grpcurl (up to 1.8.x) asks only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(huren_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;
    let limits = MessageLimits {
        max_message_bytes: config.limits.max_message_bytes,
        max_batch_bytes: config.limits.max_batch_bytes,
    };
    let metrics_task = match config.metrics.listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Metrics { addr, source })?;
            tracing::info!(addr = ?listener.local_addr().ok(), "metrics at /metrics");
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                crate::metrics::MetricsSource {
                    metrics: metrics.clone(),
                    store: store.clone(),
                    policy: metrics_policy,
                },
            )))
        }
    };
    let hub_service = HubServer::new(HubGrpc::new(hub, limits, metrics))
        .max_decoding_message_size(limits.max_message_bytes.max(limits.max_batch_bytes))
        .max_encoding_message_size(16 * 1024 * 1024);

    tracing::info!(addr = ?listener.local_addr().ok(), store = %config.store_display(), "hub listening");
    let request_timeout = Duration::from_secs(config.limits.request_timeout_seconds);
    let connection_limits = ConnectionLimits {
        max_connections: config.limits.max_connections,
        max_per_address: config.limits.max_connections_per_address,
        idle_timeout: Duration::from_secs(config.limits.idle_timeout_seconds.max(1)),
        send_timeout: Duration::from_secs(config.limits.send_timeout_seconds.max(1)),
    };
    let (stopping, stop_requested) = tokio::sync::oneshot::channel::<()>();
    let serving = Server::builder()
        .tls_config(tls)
        .map_err(ServerError::Tls)?
        .timeout(request_timeout)
        .max_concurrent_streams(config.limits.max_streams_per_connection.max(1))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(hub_service)
        .serve_with_incoming_shutdown(conn::incoming(listener, connection_limits), async move {
            shutdown.await;
            let _ = stopping.send(());
        });
    let grace = request_timeout + SHUTDOWN_MARGIN;
    let grace_over = async move {
        match stop_requested.await {
            Ok(()) => tokio::time::sleep(grace).await,
            // The server ended without being asked to: its own result decides.
            Err(_) => std::future::pending().await,
        }
    };
    let wait_for_hub = tokio::select! {
        served = serving => {
            served.map_err(ServerError::Serve)?;
            CLOSE_WAIT
        }
        () = grace_over => {
            tracing::warn!(
                seconds = grace.as_secs(),
                "connections were still open when the shutdown grace period ended; stopping without them"
            );
            // Their tasks keep the hub: flush what is written rather than wait for them.
            Duration::ZERO
        }
    };
    if let Some(task) = metrics_task {
        task.abort();
    }
    close(closing, store, wait_for_hub).await;
    tracing::info!("hub stopped");
    Ok(())
}

/// How long a stopped server's last requests may keep the hub before the store is flushed
/// without them.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// After the server has stopped: waits (at most `wait`) for the last handle on the hub to go
/// (its threads then finish what they were given, see `batch::Worker`), then flushes the
/// store, so what the journal wrote for the last answers is on disk before the process exits.
async fn close(hub: std::sync::Weak<Hub>, store: SharedStore, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while hub.strong_count() > 0 {
        if tokio::time::Instant::now() >= deadline {
            if !wait.is_zero() {
                tracing::warn!(
                    seconds = wait.as_secs(),
                    "requests still held the hub after the server stopped; flushing the store anyway"
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Err(e) = store.commit().await {
        tracing::error!(error = %e, "the last flush before stopping failed");
    }
}

/// Reloads the policy when its file changes (checked every `every`) or on SIGHUP, logging
/// each new one before it is put in force. A policy that fails its checks is logged and the
/// one in force stays. Stops when the hub is gone.
async fn watch_policy(hub: std::sync::Weak<Hub>, every: Duration) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let forced = tokio::select! {
            _ = tick.tick() => false,
            () = hangup => true,
        };
        let Some(hub) = hub.upgrade() else { break };
        if forced {
            tracing::info!("SIGHUP: reloading the policy");
            hub.reload_policy().await;
        } else {
            hub.reload_policy_if_changed().await;
        }
    }
}
