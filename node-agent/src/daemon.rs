//! `huren-agent run`: the long-running agent. It watches the inbox, queues signed summaries in
//! its store, publishes them with retries, and serves full reports to alliance members.
//!
//! ```text
//!  inbox/ ──(ingest task: read, map, sign, queue, flush, move)──▶ store ──(publisher)──▶ hub
//!                                                                   │
//!                       alliance members ◀──(repository, mTLS)──────┘ reports
//!                       staff's browsers ◀──(web app, HTTPS; [web])──┘ accounts
//! ```
//!
//! [`Daemon::start`] starts the three parts and returns a handle (tests run the daemon in
//! process); [`run`] is the binary's entry point: start, wait for the shutdown signal, stop
//! gracefully (the file being read stops between two messages and what was queued is
//! flushed, the file staying in the inbox to be read again; in-flight publish calls and
//! report fetches complete, the store is flushed).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::AgentConfig;
use crate::credentials::Credentials;
use crate::error::AgentError;
use crate::ingest::inbox::{InboxDirs, process_file};
use crate::ingest::{IngestSettings, Ingestor};
use crate::mapping::{Mapping, MappingError};
use crate::outbox::Publisher;
use crate::repository::{RepositoryError, RepositoryService, serve};
use crate::store::{OutboxCounts, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Setup(#[from] AgentError),
    #[error("the configuration has no [{0}] section, which `huren-agent run` needs")]
    MissingSection(&'static str),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("inbox {path}: {source}")]
    Inbox {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("a daemon task failed: {0}")]
    Task(String),
}

/// Opens the store named in the configuration.
pub fn open_store(config: &AgentConfig) -> Result<Arc<Store>, DaemonError> {
    let store = config
        .store
        .as_ref()
        .ok_or(DaemonError::MissingSection("store"))?;
    Ok(Arc::new(Store::open(&store.path)?))
}

/// An ingestor over the configured mapping and store.
pub fn ingestor(
    config: &AgentConfig,
    credentials: &Credentials,
    store: Arc<Store>,
) -> Result<Ingestor, DaemonError> {
    let mapping = config
        .mapping
        .as_ref()
        .ok_or(DaemonError::MissingSection("mapping"))?;
    let mapping = Mapping::load(&mapping.file)?;
    let mut settings = IngestSettings::default();
    if let Some(inbox) = &config.inbox {
        settings.charset = inbox.hl7_charset;
        settings.default_offset = crate::table::parse_offset(&inbox.local_utc_offset)
            .map_err(|e| DaemonError::Config(format!("[inbox] local_utc_offset: {e}")))?;
    }
    Ok(Ingestor::new(
        credentials.institution.clone(),
        credentials.signer.clone(),
        credentials.pseudonym_key.clone(),
        mapping,
        settings,
        store,
    ))
}

/// A running daemon.
pub struct Daemon {
    store: Arc<Store>,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), DaemonError>>)>,
    repository_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    web_addr: Option<SocketAddr>,
}

impl Daemon {
    /// Starts the daemon. `repository_listener`: an already bound listener for the repository
    /// (tests bind `127.0.0.1:0`); `None` binds `[repository] listen` if configured.
    pub async fn start(
        config: AgentConfig,
        repository_listener: Option<TcpListener>,
    ) -> Result<Daemon, DaemonError> {
        let credentials = Credentials::load(&config)?;
        let store = open_store(&config)?;
        let channel = credentials.hub_channel(&config)?;
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();

        // Inbox.
        if let Some(inbox) = &config.inbox {
            let dirs = InboxDirs {
                inbox: inbox.dir.clone(),
                done: inbox.done_dir(),
                rejected: inbox.rejected_dir(),
                settle: Duration::from_millis(inbox.settle_ms),
                incomplete_hold: Duration::from_millis(inbox.incomplete_hold_ms),
            };
            dirs.create().map_err(|source| DaemonError::Inbox {
                path: dirs.inbox.clone(),
                source,
            })?;
            let ingestor = Arc::new(ingestor(&config, &credentials, store.clone())?);
            let poll = Duration::from_millis(inbox.poll_ms.max(10));
            tasks.push((
                "inbox",
                tokio::spawn(watch_inbox(
                    ingestor,
                    dirs,
                    poll,
                    wake.clone(),
                    stopped.clone(),
                )),
            ));
        } else {
            tracing::info!("no [inbox] configured: publishing what is queued only");
        }

        // Publisher.
        let log = match &config.log {
            Some(l) => Some(Arc::new(l.open_witness(&config.institution)?)),
            None => None,
        };
        let publisher = Publisher::new(store.clone(), channel, config.outbox.clone(), wake.clone())
            .with_log(log);
        let stopped_pub = stopped.clone();
        tasks.push((
            "publisher",
            tokio::spawn(async move { Ok(publisher.run(stopped_pub).await?) }),
        ));

        // Repository.
        let mut repository_addr = None;
        let listener =
            match (repository_listener, &config.repository) {
                (Some(l), _) => Some(l),
                (None, Some(r)) => Some(TcpListener::bind(&r.listen).await.map_err(|source| {
                    DaemonError::Bind {
                        addr: r.listen.clone(),
                        source,
                    }
                })?),
                (None, None) => None,
            };
        if let Some(listener) = listener {
            repository_addr = listener.local_addr().ok();
            let (cert, key) = match config.repository.as_ref().map(|r| (&r.cert, &r.key)) {
                Some((Some(c), Some(k))) => (read(c)?, read(k)?),
                _ => (
                    credentials.tls_cert_pem.clone(),
                    credentials.tls_key_pem.clone(),
                ),
            };
            let service = RepositoryService::new(store.clone(), credentials.institution.clone());
            let ca = credentials.ca_pem.clone();
            let mut stopped_repo = stopped.clone();
            tasks.push((
                "repository",
                tokio::spawn(async move {
                    serve(service, &ca, &cert, &key, listener, async move {
                        let _ = stopped_repo.wait_for(|s| *s).await;
                    })
                    .await?;
                    Ok(())
                }),
            ));
        }
        // Metrics.
        let mut metrics_addr = None;
        if let Some(m) = &config.metrics {
            let listener =
                TcpListener::bind(m.listen)
                    .await
                    .map_err(|source| DaemonError::Bind {
                        addr: m.listen.to_string(),
                        source,
                    })?;
            metrics_addr = listener.local_addr().ok();
            let store = store.clone();
            let mut stopped_metrics = stopped.clone();
            tasks.push((
                "metrics",
                tokio::spawn(async move {
                    tokio::select! {
                        () = crate::metrics::serve(listener, store) => {}
                        _ = stopped_metrics.wait_for(|s| *s) => {}
                    }
                    Ok(())
                }),
            ));
        }
        // Web app.
        let mut web_addr = None;
        if let Some(web) = &config.web {
            let agent = Arc::new(crate::Agent::connect_lazily(config.clone())?);
            let extra = crate::ehr::extra_routes(agent.clone())
                .map_err(|e| DaemonError::Config(e.to_string()))?;
            let state = crate::web::WebState::new(agent, store.clone())
                .map_err(|e| DaemonError::Config(e.to_string()))?;
            let listener = crate::web::bind(web)
                .await
                .map_err(|e| DaemonError::Config(e.to_string()))?;
            web_addr = listener.local_addr().ok();
            let mut stopped_web = stopped.clone();
            tasks.push((
                "web",
                tokio::spawn(async move {
                    crate::web::serve(state, listener, extra, async move {
                        let _ = stopped_web.wait_for(|s| *s).await;
                    })
                    .await
                    .map_err(|e| DaemonError::Config(e.to_string()))
                }),
            ));
        }
        let counts = store.counts();
        tracing::info!(
            institution = %credentials.institution,
            hub = %config.hub,
            pending = counts.pending,
            dead_letters = counts.dead,
            "agent running"
        );
        Ok(Daemon {
            store,
            wake,
            stop,
            tasks,
            repository_addr,
            metrics_addr,
            web_addr,
        })
    }

    /// Outbox sizes now.
    pub fn counts(&self) -> OutboxCounts {
        self.store.counts()
    }

    /// The store (for status and tests).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Where the repository listens, if it runs.
    pub fn repository_addr(&self) -> Option<SocketAddr> {
        self.repository_addr
    }

    /// Where the metrics endpoint listens, if it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the web app listens, if it runs.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// Makes the publisher look at the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops gracefully and waits for every part; returns the first error of any part.
    pub async fn shutdown(self) -> Result<(), DaemonError> {
        let _ = self.stop.send(true);
        self.wake.notify_one();
        let mut first = Ok(());
        for (name, task) in self.tasks {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(DaemonError::Task(format!("{name}: {e}"))),
            };
            if let Err(e) = result {
                tracing::error!(part = name, error = %e, "stopped with an error");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        self.store.flush()?;
        let counts = self.store.counts();
        tracing::info!(
            pending = counts.pending,
            published = counts.published,
            dead_letters = counts.dead,
            "agent stopped"
        );
        first
    }

    /// Whether a part has ended on its own (an error); `shutdown` reports it.
    pub fn has_failed(&self) -> bool {
        self.tasks.iter().any(|(_, t)| t.is_finished())
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, DaemonError> {
    std::fs::read(path).map_err(|source| {
        DaemonError::Setup(AgentError::Read {
            path: path.to_owned(),
            source,
        })
    })
}

/// Runs the daemon until `shutdown` completes (or a part fails), then stops gracefully.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let daemon = Daemon::start(config, None).await?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if daemon.has_failed() {
                    break;
                }
            }
        }
    }
    daemon.shutdown().await
}

/// The inbox loop: every `poll`, read the ready files one by one (on a blocking thread).
async fn watch_inbox(
    ingestor: Arc<Ingestor>,
    dirs: InboxDirs,
    poll: Duration,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    // Files held as not whole yet, to say so once per file rather than at every poll.
    let mut held = std::collections::HashSet::new();
    // Shutdown stops a big file between two messages (the blocking reader polls this flag).
    let stop_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut stop_watch = stopped.clone();
    let flag = stop_flag.clone();
    tokio::spawn(async move {
        while !*stop_watch.borrow() {
            if stop_watch.changed().await.is_err() {
                break;
            }
        }
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    loop {
        if *stopped.borrow() {
            return Ok(());
        }
        held.retain(|p: &std::path::PathBuf| p.exists());
        let files = match dirs.ready_files() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(inbox = %dirs.inbox.display(), error = %e, "cannot list the inbox");
                Vec::new()
            }
        };
        for path in files {
            if *stopped.borrow() {
                return Ok(());
            }
            let (ing, d, p, f) = (
                ingestor.clone(),
                dirs.clone(),
                path.clone(),
                stop_flag.clone(),
            );
            let result = tokio::task::spawn_blocking(move || {
                process_file(&ing, &d, &p, &|| {
                    f.load(std::sync::atomic::Ordering::Relaxed)
                })
            })
            .await
            .map_err(|e| DaemonError::Task(format!("inbox: {e}")))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match result {
                Ok(o) if o.interrupted => {
                    tracing::info!(file = %name, queued = o.queued, "stopped in the middle of the file; it stays in the inbox and is read again (nothing is queued twice)");
                    return Ok(());
                }
                Ok(o) if o.incomplete.is_some() => {
                    let why = o.incomplete.as_deref().unwrap_or_default();
                    if held.insert(path.clone()) {
                        tracing::warn!(file = %name, reason = %why, queued = o.queued, "file not whole yet; held in the inbox and tried again");
                    } else {
                        tracing::debug!(file = %name, reason = %why, "file still held");
                    }
                    if o.queued > 0 {
                        wake.notify_one();
                    }
                }
                Ok(o) => {
                    held.remove(&path);
                    if o.wholly_rejected() {
                        tracing::warn!(file = %name, reasons = o.rejected.iter().map(|r| r.reasons.len()).sum::<usize>(), "file refused; moved to the rejected folder with a reason file");
                    } else {
                        tracing::info!(
                            file = %name,
                            queued = o.queued,
                            amended = o.amended,
                            voided = o.voided,
                            unchanged = o.duplicates,
                            skipped = o.skipped.len(),
                            refused_messages = o.rejected.len(),
                            "file ingested"
                        );
                        for s in &o.skipped {
                            tracing::debug!(file = %name, "skipped: {s}");
                        }
                    }
                    if o.queued > 0 {
                        wake.notify_one();
                    }
                }
                Err(e) => {
                    // Store or disk trouble: the file stays and is tried again.
                    tracing::error!(file = %name, error = %e, "cannot ingest now; will retry");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stopped.changed() => {}
        }
    }
}
