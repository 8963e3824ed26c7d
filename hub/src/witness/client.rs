//! The hub's side of witnessing: asks every configured witness to cosign a checkpoint
//! (c2sp.org/tlog-witness `add-checkpoint`) and adds the cosignatures it gets to the note.
//!
//! Each witness is asked with the size it last cosigned as the hub knows it (0 at start, then
//! learned from a 409 answer) and the consistency proof from there, served from the store. A
//! witness that is down, slow (past the timeout), refuses, or answers with lines that do not
//! verify under its configured key adds nothing: the note goes out with the cosignatures that
//! came, and agents count them against their quorum.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use huren_core::checkpoint::SIGNATURE_PREFIX;
use huren_core::cosignature::{AddCheckpoint, CosignerKey, add_signature_lines, cosigned_by};

use crate::store::{SharedStore, TreeHead};

/// A witness in the hub's configuration (`[[witness]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessEndpoint {
    /// Its submission prefix, `http://host:port` (a path after it is kept as a prefix).
    pub url: String,
    /// Its cosigner verifier key (`huren-witness --print-key`).
    pub verifier_key: String,
}

/// A witness the hub asks.
#[derive(Debug)]
struct Peer {
    key: CosignerKey,
    /// `host:port`.
    authority: String,
    /// Path prefix before `/add-checkpoint` ("" for none).
    prefix: String,
    /// The size this witness last cosigned, as far as the hub knows.
    known_size: Mutex<u64>,
}

/// The witnesses the hub asks, with how long it waits for each.
#[derive(Debug)]
pub struct Witnesses {
    peers: Vec<Arc<Peer>>,
    timeout: Duration,
}

/// Why the witness configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum WitnessConfigError {
    #[error(
        "[[witness]] url {0:?}: expected http://host:port (the witness protocol is plain HTTP; checkpoints are signed)"
    )]
    Url(String),
    #[error("[[witness]] verifier_key {vkey:?}: {message}")]
    Key { vkey: String, message: String },
}

impl Witnesses {
    pub fn new(
        endpoints: &[WitnessEndpoint],
        timeout: Duration,
    ) -> Result<Self, WitnessConfigError> {
        let mut peers = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let key = CosignerKey::parse(e.verifier_key.trim()).map_err(|err| {
                WitnessConfigError::Key {
                    vkey: e.verifier_key.clone(),
                    message: err.to_string(),
                }
            })?;
            let rest = e
                .url
                .strip_prefix("http://")
                .ok_or_else(|| WitnessConfigError::Url(e.url.clone()))?;
            let (authority, prefix) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
                None => (rest, ""),
            };
            if authority.is_empty() || !authority.contains(':') {
                return Err(WitnessConfigError::Url(e.url.clone()));
            }
            peers.push(Arc::new(Peer {
                key,
                authority: authority.to_owned(),
                prefix: prefix.to_owned(),
                known_size: Mutex::new(0),
            }));
        }
        Ok(Self { peers, timeout })
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// `note` (the log's checkpoint of `head`) with every cosignature the witnesses gave, and
    /// how many gave one.
    pub async fn cosign(&self, note: &str, head: TreeHead, store: &SharedStore) -> (String, usize) {
        let mut tasks = tokio::task::JoinSet::new();
        for peer in &self.peers {
            let (peer, note, store, timeout) =
                (peer.clone(), note.to_owned(), store.clone(), self.timeout);
            tasks.spawn(async move {
                match tokio::time::timeout(timeout, peer.ask(&note, head, &store)).await {
                    Ok(Ok(lines)) => Some(lines),
                    Ok(Err(why)) => {
                        tracing::warn!(
                            witness = peer.key.name(),
                            size = head.size,
                            "no cosignature: {why}"
                        );
                        None
                    }
                    Err(_) => {
                        tracing::warn!(
                            witness = peer.key.name(),
                            size = head.size,
                            "no cosignature: no answer within {} ms",
                            timeout.as_millis()
                        );
                        None
                    }
                }
            });
        }
        let mut out = note.to_owned();
        let mut count = 0;
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Some(lines)) = joined {
                out.push_str(&lines);
                count += 1;
            }
        }
        (out, count)
    }
}

impl Peer {
    /// Asks this witness to cosign; its verified cosignature lines.
    async fn ask(&self, note: &str, head: TreeHead, store: &SharedStore) -> Result<String, String> {
        let mut old = *self.known_size.lock().await;
        for _ in 0..2 {
            if old > head.size {
                return Err(format!(
                    "the witness has cosigned a tree of {old} entries, larger than this checkpoint's {}",
                    head.size
                ));
            }
            let proof = if old == 0 || old == head.size {
                Vec::new()
            } else {
                store
                    .consistency_proof(old, head.size)
                    .await
                    .map_err(|e| format!("consistency proof from {old}: {e}"))?
            };
            let body = AddCheckpoint {
                old_size: old,
                proof,
                checkpoint: note.to_owned(),
            }
            .to_body();
            let (status, text) = self.post(body).await?;
            match status {
                StatusCode::OK => {
                    let lines = self.own_lines(note, &text)?;
                    *self.known_size.lock().await = head.size;
                    return Ok(lines);
                }
                StatusCode::CONFLICT => {
                    old = text
                        .trim_end_matches('\n')
                        .parse()
                        .map_err(|_| format!("a 409 answer without a size: {text:?}"))?;
                    *self.known_size.lock().await = old;
                }
                other => return Err(format!("{other}: {}", text.trim_end())),
            }
        }
        Err("the witness's size changed while it was asked".into())
    }

    /// The lines of `response` that are this witness's, checked against its key.
    fn own_lines(&self, note: &str, response: &str) -> Result<String, String> {
        let prefix = format!("{SIGNATURE_PREFIX}{} ", self.key.name());
        let mine: String = response
            .split_inclusive('\n')
            .filter(|l| l.starts_with(&prefix))
            .collect();
        if mine.is_empty() {
            return Err("the answer holds no cosignature of this witness".into());
        }
        let cosigned = add_signature_lines(note, &mine).map_err(|e| e.to_string())?;
        match cosigned_by(&cosigned, std::slice::from_ref(&self.key)) {
            Ok(found) if !found.is_empty() => Ok(mine),
            Ok(_) => Err("the cosignature is not by the configured key".into()),
            Err(e) => Err(format!("the cosignature does not verify: {e}")),
        }
    }

    async fn post(&self, body: String) -> Result<(StatusCode, String), String> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let driver = tokio::spawn(connection);
        let request = Request::post(format!("{}/add-checkpoint", self.prefix))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("HTTP request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), super::MAX_REQUEST_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        driver.abort();
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| "an answer that is not UTF-8")?;
        Ok((status, text))
    }
}
