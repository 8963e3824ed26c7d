//! Witnessing the log (c2sp.org/tlog-witness, c2sp.org/tlog-cosignature).
//!
//! - This module: **the witness** (`huren-witness`), run by a member or the health commission,
//!   not by the hub's operator. For every log it is configured with it keeps the last
//!   checkpoint it cosigned, in a file of its own, and cosigns a new checkpoint only when the
//!   log's key signed it and an RFC 6962 consistency proof shows it extends that one. A fork
//!   (a proof that fails, or another root at the same size) is refused with 422, raised as an
//!   ERROR in its log, and the request kept as evidence. Its HTTP interface is the C2SP one, so
//!   a third-party witness or client can take part: `POST /add-checkpoint` and
//!   `GET /<hex SHA-256 of the origin>/checkpoint`.
//! - [`client`]: the hub's side: it asks every configured witness to cosign the checkpoints it
//!   hands out and adds the cosignatures it gets (see `service::Hub::checkpoint_note`).
//!
//! The check of a request and the update of the state happen under one lock and the state is
//! on disk (fsync'd, renamed into place) before the cosignature is sent, so a witness never
//! cosigns two inconsistent checkpoints of one log, even across a crash or restart.

pub mod client;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use huren_core::checkpoint::{Checkpoint, NoteError, NoteVerifier, open};
use huren_core::config_file::{self, ConfigError};
use huren_core::cosignature::{AddCheckpoint, Cosigner, CosignerKey, add_signature_lines};
use huren_core::merkle::{empty_root, verify_consistency};

/// Largest request body a witness reads (a checkpoint, its signatures and 63 proof lines
/// take a few KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Content type of a 409 answer's body (c2sp.org/tlog-witness).
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; one more waits for a free slot before it is read.
const MAX_CONNECTIONS: usize = 256;

/// A witness's configuration file (TOML; see `hub/witness.example.toml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Where to serve the witness's HTTP interface.
    pub listen: SocketAddr,
    /// The witness's name: the key name of its cosignatures (a schema-less URL, e.g.
    /// `witness.xian-health-commission.example/w1`).
    pub name: String,
    /// Its Ed25519 key (PKCS#8 PEM), created with mode 0600 on first start if missing.
    pub key: PathBuf,
    /// Folder of its state: the last checkpoint cosigned per log, and evidence of forks.
    /// Losing it lets the witness be rolled back: back it up, and retire a witness whose
    /// state is lost rather than start it empty.
    pub state: PathBuf,
    /// The logs it witnesses.
    #[serde(rename = "log", default)]
    pub logs: Vec<WitnessedLog>,
}

/// One log a witness follows.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessedLog {
    /// The log's C2SP verifier key (`huren-hub --print-log-key`); its name is the log's origin.
    pub verifier_key: String,
}

impl WitnessConfig {
    /// Reads a configuration file. Relative paths are taken relative to the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::read(path, e))?;
        let mut config: WitnessConfig = config_file::parse_toml(&text, path, "witness")?;
        config_file::relative_to_file(path, [&mut config.key, &mut config.state]);
        Ok(config)
    }
}

/// Why a witness could not start.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] crate::log::LogKeyError),
    #[error("witness name {name:?}: {source}")]
    Name { name: String, source: NoteError },
    #[error("[[log]] verifier_key {vkey:?}: {source}")]
    LogKey { vkey: String, source: NoteError },
    #[error("the log {0:?} is configured twice")]
    DuplicateLog(String),
    #[error("the witness state {}: {source}", path.display())]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the stored checkpoint {} does not verify under the configured log key: {message}", path.display())]
    StoredCheckpoint { path: PathBuf, message: String },
}

/// A witness: its key, the logs it follows and their last cosigned checkpoints.
pub struct Witness {
    cosigner: Cosigner,
    logs: BTreeMap<String, NoteVerifier>,
    dir: PathBuf,
    /// Per origin, the last cosigned checkpoint and its note (with the cosignature). One lock
    /// for check-and-update: requests for one log are answered one at a time.
    state: Mutex<BTreeMap<String, (Checkpoint, String)>>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("name", &self.cosigner.name())
            .field("logs", &self.logs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The file of a log's state: the hex SHA-256 of its origin (as in the monitoring path).
fn origin_hash(origin: &str) -> String {
    hex::encode(Sha256::digest(origin.as_bytes()))
}

/// An answer: status, body, content type.
type Answer = (StatusCode, String, &'static str);
const PLAIN: &str = "text/plain; charset=utf-8";
const NOTE: &str = "text/plain; charset=utf-8";

fn refuse(status: StatusCode, message: impl Into<String>) -> Answer {
    let mut m = message.into();
    m.push('\n');
    (status, m, PLAIN)
}

impl Witness {
    /// Loads (or creates) the key and the state of every configured log.
    pub fn open(config: &WitnessConfig) -> Result<Self, WitnessError> {
        let key = crate::log::load_or_create_key(&config.key)?;
        let cosigner =
            Cosigner::new(config.name.clone(), key).map_err(|source| WitnessError::Name {
                name: config.name.clone(),
                source,
            })?;
        let mut logs = BTreeMap::new();
        for l in &config.logs {
            let verifier = NoteVerifier::parse(l.verifier_key.trim()).map_err(|source| {
                WitnessError::LogKey {
                    vkey: l.verifier_key.clone(),
                    source,
                }
            })?;
            let origin = verifier.name().to_owned();
            if logs.insert(origin.clone(), verifier).is_some() {
                return Err(WitnessError::DuplicateLog(origin));
            }
        }
        let state_err = |path: &Path| {
            let path = path.to_owned();
            move |source| WitnessError::State { path, source }
        };
        std::fs::create_dir_all(&config.state).map_err(state_err(&config.state))?;
        let mut state = BTreeMap::new();
        for (origin, verifier) in &logs {
            let path = config
                .state
                .join(format!("{}.checkpoint", origin_hash(origin)));
            let note = match std::fs::read_to_string(&path) {
                Ok(note) => note,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(state_err(&path)(e)),
            };
            let checkpoint = open(&note, verifier)
                .map_err(|e| e.to_string())
                .and_then(|text| Checkpoint::parse(&text).map_err(|e| e.to_string()))
                .map_err(|message| WitnessError::StoredCheckpoint {
                    path: path.clone(),
                    message,
                })?;
            state.insert(origin.clone(), (checkpoint, note));
        }
        Ok(Self {
            cosigner,
            logs,
            dir: config.state.clone(),
            state: Mutex::new(state),
        })
    }

    /// The witness's verifier key, for the hub's `[[witness]]` and the agents' `[log]`
    /// configuration.
    pub fn verifier_key(&self) -> CosignerKey {
        self.cosigner.verifier()
    }

    /// The size of the last checkpoint cosigned for `origin` (0 if none).
    pub async fn cosigned_size(&self, origin: &str) -> u64 {
        self.state
            .lock()
            .await
            .get(origin)
            .map_or(0, |(c, _)| c.size)
    }

    /// Answers an `add-checkpoint` request body as c2sp.org/tlog-witness specifies.
    pub async fn add_checkpoint(&self, body: &str) -> Answer {
        let request = match AddCheckpoint::parse(body) {
            Ok(r) => r,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("bad request: {e}")),
        };
        // The origin, to pick the key: the first line of the note.
        let origin = request.checkpoint.split('\n').next().unwrap_or_default();
        let Some(verifier) = self.logs.get(origin) else {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("this witness does not follow a log with origin {origin:?}"),
            );
        };
        let text = match open(&request.checkpoint, verifier) {
            Ok(text) => text,
            Err(e @ (NoteError::NotSigned { .. } | NoteError::BadSignature { .. })) => {
                return refuse(StatusCode::FORBIDDEN, format!("{e}"));
            }
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("{e}")),
        };
        let checkpoint = match Checkpoint::parse(&text) {
            Ok(c) => c,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("{e}")),
        };
        if request.old_size > checkpoint.size {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "old size {} is larger than the checkpoint's size {}",
                    request.old_size, checkpoint.size
                ),
            );
        }
        let mut state = self.state.lock().await;
        let last = state.get(origin);
        let last_size = last.map_or(0, |(c, _)| c.size);
        if request.old_size != last_size {
            return (
                StatusCode::CONFLICT,
                format!("{last_size}\n"),
                SIZE_CONTENT_TYPE,
            );
        }
        if checkpoint.size == 0 && checkpoint.root != empty_root() {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "a checkpoint of size 0 must have the empty tree's root",
            );
        }
        let consistent = match last {
            None => {
                if request.proof.is_empty() {
                    Ok(())
                } else {
                    Err("a proof from size 0 must be empty".to_owned())
                }
            }
            Some((old, _)) if old.size == checkpoint.size => {
                if old.root == checkpoint.root && request.proof.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "another root for size {} than the one this witness cosigned",
                        old.size
                    ))
                }
            }
            Some((old, _)) => verify_consistency(
                old.size,
                checkpoint.size,
                &old.root,
                &checkpoint.root,
                &request.proof,
            )
            .map_err(|e| {
                format!(
                    "the checkpoint of size {} is not an extension of the one of size {} this witness cosigned: {e}",
                    checkpoint.size, old.size
                )
            }),
        };
        if let Err(why) = consistent {
            let evidence = self.keep_evidence(origin, body);
            tracing::error!(
                origin,
                old_size = last_size,
                size = checkpoint.size,
                evidence = %evidence.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|e| format!("not kept: {e}")),
                "FORK: the log signed a checkpoint that does not extend the one this witness cosigned: {why}"
            );
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, why);
        }
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs().max(1));
        let line = match self.cosigner.cosign(&text, timestamp) {
            Ok(l) => l,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("{e}")),
        };
        let note = match add_signature_lines(&request.checkpoint, &line) {
            Ok(n) => n,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("{e}")),
        };
        // On disk before the cosignature leaves.
        if let Err(e) = self.save(origin, &note) {
            tracing::error!(origin, error = %e, "cannot save the witness state; nothing cosigned");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the witness cannot save its state; try again later",
            );
        }
        tracing::info!(origin, size = checkpoint.size, "cosigned");
        state.insert(origin.to_owned(), (checkpoint, note));
        (StatusCode::OK, line, PLAIN)
    }

    /// The last cosigned checkpoint of the log whose origin hashes to `hash`.
    pub async fn latest(&self, hash: &str) -> Option<String> {
        let state = self.state.lock().await;
        state
            .iter()
            .find(|(origin, _)| origin_hash(origin) == hash)
            .map(|(_, (_, note))| note.clone())
    }

    fn save(&self, origin: &str, note: &str) -> std::io::Result<()> {
        use std::io::Write;
        let name = origin_hash(origin);
        let path = self.dir.join(format!("{name}.checkpoint"));
        let tmp = self.dir.join(format!("{name}.checkpoint.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(note.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn keep_evidence(&self, origin: &str, body: &str) -> std::io::Result<PathBuf> {
        let dir = self.dir.join("evidence");
        std::fs::create_dir_all(&dir)?;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        // Named by time, log and request, so two refusals in one millisecond are both kept.
        let request = hex::encode(&Sha256::digest(body.as_bytes())[..8]);
        let path = dir.join(format!("{ms}-{}-{request}.txt", &origin_hash(origin)[..16]));
        std::fs::write(&path, body)?;
        Ok(path)
    }

    async fn answer(&self, request: Request<Incoming>) -> Answer {
        let path = request.uri().path().to_owned();
        match (request.method().clone(), path.as_str()) {
            (Method::POST, "/add-checkpoint") => {
                let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return refuse(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "the request body is over {MAX_REQUEST_BYTES} bytes or was cut off"
                            ),
                        );
                    }
                };
                match std::str::from_utf8(&body) {
                    Ok(text) => self.add_checkpoint(text).await,
                    Err(_) => refuse(StatusCode::BAD_REQUEST, "the request body is not UTF-8"),
                }
            }
            (_, "/add-checkpoint") => refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "add-checkpoint takes a POST",
            ),
            (Method::GET, p) => match p
                .strip_prefix('/')
                .and_then(|p| p.strip_suffix("/checkpoint"))
            {
                Some(hash) => match self.latest(hash).await {
                    Some(note) => (StatusCode::OK, note, NOTE),
                    None => refuse(
                        StatusCode::NOT_FOUND,
                        "this witness has cosigned no checkpoint of that log",
                    ),
                },
                None => refuse(StatusCode::NOT_FOUND, "not found"),
            },
            _ => refuse(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

/// Serves the witness's HTTP interface on `listener` until `shutdown` completes.
pub async fn serve(
    witness: Arc<Witness>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(10);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(10);
                    stream
                }
                Err(e) => {
                    tracing::warn!(error = %e, "witness listener: accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let witness = witness.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let witness = witness.clone();
                async move {
                    let (status, body, kind) = witness.answer(request).await;
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(kind),
                    );
                    Ok::<_, Infallible>(r)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("witness.example.toml");
        let config = WitnessConfig::load(&path).unwrap();
        assert_eq!(config.listen.port(), 7380);
        assert!(config.key.is_absolute() && config.state.is_absolute());
        assert_eq!(config.logs.len(), 1);
    }

    #[test]
    fn a_misconfigured_log_key_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = WitnessConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            name: "w.example/1".into(),
            key: dir.path().join("k"),
            state: dir.path().join("s"),
            logs: vec![WitnessedLog {
                verifier_key: "huren.example/alliance-log+00000000+AQAA".into(),
            }],
        };
        assert!(matches!(
            Witness::open(&config),
            Err(WitnessError::LogKey { .. })
        ));
    }
}
