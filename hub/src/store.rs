//! The hub's storage, shaped like the domain. The only module that imports sled.
//!
//! Trees and key layouts (all integers big-endian, so byte order is numeric order):
//!
//! ```text
//! summaries   publisher 0x00 summary_id 0x00 version:u32        -> 0x01 || RecordV1 (protobuf)
//! latest      publisher 0x00 summary_id                         -> version:u32
//! by_patient  pseudonym[32] system 0x00 code 0x00 inv_performed:u64 publisher 0x00 summary_id -> ()
//! certs       sha256(certificate DER)[32]                        -> certificate DER
//! ```
//!
//! `inv_performed` is `u64::MAX - performed_at_ms`, so a prefix scan over one patient and item
//! yields the newest result first. Index entries are never removed: a query resolves each hit to
//! the latest version of its result and re-checks that it still matches, so an amendment that
//! changes the item, the time or the patient simply stops matching the old entry. Signing
//! certificates are stored once each, not once per summary.
//!
//! Every write is one sled transaction across the trees. [`Store::put_summary`] returns only
//! after a flush that covers the write: concurrent writers share flushes (group commit), so a
//! receipt is never sent for data that a `kill -9` right after could lose. sled's flush is
//! `sync_file_range` on Linux: it survives a crashed or killed process, not necessarily a power
//! cut.

use prost::Message;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use huren_core::pseudonym::Pseudonym;
pub use huren_core::receipt::Receipt;
use huren_core::signing::{SignedEnvelope, VerifiedSummary, sha256};
use huren_core::summary::{Summary, UnixMillis};

/// First byte of every stored record: the record layout version.
const RECORD_V1: u8 = 1;

/// A stored summary version as kept on disk (store-private layout, version [`RECORD_V1`]).
#[derive(Clone, PartialEq, prost::Message)]
struct RecordV1 {
    /// The body bytes exactly as signed.
    #[prost(bytes = "vec", tag = "1")]
    body: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    signature: Vec<u8>,
    /// SHA-256 of the signing certificate's DER; the DER is in the `certs` tree.
    #[prost(bytes = "vec", tag = "3")]
    signer_certificate_sha256: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    body_sha256: Vec<u8>,
    #[prost(int64, tag = "5")]
    accepted_at_ms: i64,
}

/// A stored summary version: the envelope as published and its receipt.
#[derive(Clone, Debug)]
pub struct StoredSummary {
    pub envelope: SignedEnvelope,
    pub receipt: Receipt,
    /// The body, decoded.
    pub summary: Summary,
}

/// What became of a put.
#[derive(Clone, Debug)]
pub enum PutOutcome {
    /// Newly stored.
    Stored(Receipt),
    /// The identical body was already stored; its original receipt.
    AlreadyStored(Receipt),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("version {version} of {key} is already stored with a different body")]
    Conflict { key: String, version: u32 },
    #[error("version {version} of {key} cannot be stored: {reason}")]
    OutOfOrder {
        key: String,
        version: u32,
        reason: String,
    },
    #[error("storage engine: {0}")]
    Engine(#[from] sled::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store's commit task has stopped")]
    CommitterGone,
}

/// What one patient query asks the store for.
#[derive(Clone, Debug)]
pub struct PriorQuery {
    pub patient: Pseudonym,
    /// (code system, code) pairs.
    pub items: Vec<(String, String)>,
    /// Only results performed in `[from, until]`.
    pub from: UnixMillis,
    pub until: UnixMillis,
    pub limit: usize,
}

/// Results of a query, newest performed first.
#[derive(Clone, Debug, Default)]
pub struct Found {
    pub results: Vec<StoredSummary>,
    pub truncated: bool,
}

/// The hub's store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    summaries: sled::Tree,
    latest: sled::Tree,
    by_patient: sled::Tree,
    certs: sled::Tree,
    commits: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
}

fn result_key(publisher: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(publisher.len() + id.len() + 1);
    k.extend_from_slice(publisher.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn version_key(publisher: &str, id: &str, version: u32) -> Vec<u8> {
    let mut k = result_key(publisher, id);
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn item_prefix(patient: &Pseudonym, system: &str, code: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + system.len() + code.len() + 2 + 8 + 64);
    k.extend_from_slice(patient.as_bytes());
    k.extend_from_slice(system.as_bytes());
    k.push(0);
    k.extend_from_slice(code.as_bytes());
    k.push(0);
    k
}

fn inv_time(t: UnixMillis) -> [u8; 8] {
    (u64::MAX - t.0.max(0) as u64).to_be_bytes()
}

fn read_u32(bytes: &[u8]) -> Result<u32, StoreError> {
    bytes
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("version is not 4 bytes".into()))
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its commit task on the current tokio
    /// runtime.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(group_commit(db.clone(), rx));
        Ok(Self {
            inner: Arc::new(Inner {
                summaries: db.open_tree("summaries")?,
                latest: db.open_tree("latest")?,
                by_patient: db.open_tree("by_patient")?,
                certs: db.open_tree("certs")?,
                db,
                commits: tx,
            }),
        })
    }

    /// Waits for a flush that covers every write made before this call.
    async fn commit(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commits
            .send(tx)
            .map_err(|_| StoreError::CommitterGone)?;
        rx.await
            .map_err(|_| StoreError::CommitterGone)?
            .map_err(|e| StoreError::Engine(sled::Error::Io(std::io::Error::other(e))))
    }

    /// Stores a verified summary version durably. Versions of one result must arrive in order
    /// (1, 2, 3, …); the identical body again returns the first receipt.
    pub async fn put_summary(
        &self,
        v: &VerifiedSummary,
        accepted_at: UnixMillis,
    ) -> Result<PutOutcome, StoreError> {
        let s = &v.summary;
        let publisher = s.publisher.as_str();
        let id = s.id.as_str();
        let rkey = result_key(publisher, id);
        let vkey = version_key(publisher, id, s.version);
        let cert_hash = sha256(&v.envelope.signer_certificate);
        let record = RecordV1 {
            body: v.envelope.body.clone(),
            signature: v.envelope.signature.to_vec(),
            signer_certificate_sha256: cert_hash.to_vec(),
            body_sha256: v.body_sha256.to_vec(),
            accepted_at_ms: accepted_at.0,
        };
        let mut value = vec![RECORD_V1];
        record
            .encode(&mut value)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut index_key = item_prefix(&s.patient, &s.item.system, &s.item.code);
        index_key.extend_from_slice(&inv_time(s.performed_at));
        index_key.extend_from_slice(&rkey);

        let i = &self.inner;
        let outcome = (&i.summaries, &i.latest, &i.by_patient, &i.certs).transaction(
            |(summaries, latest, by_patient, certs)| {
                if let Some(existing) = summaries.get(&vkey)? {
                    let old =
                        decode_record(&existing).map_err(ConflictableTransactionError::Abort)?;
                    if old.body == record.body {
                        return Ok(Some(old.accepted_at_ms));
                    }
                    return Err(ConflictableTransactionError::Abort(StoreError::Conflict {
                        key: s.result_key(),
                        version: s.version,
                    }));
                }
                let stored = latest.get(&rkey)?.map(|v| read_u32(&v)).transpose();
                let stored = stored.map_err(ConflictableTransactionError::Abort)?;
                let expected = stored.map_or(1, |v| v + 1);
                if s.version != expected {
                    let reason = match stored {
                        None => "the first version of a result must be 1".to_owned(),
                        Some(v) => {
                            format!("the stored version is {v}, so the next must be {expected}")
                        }
                    };
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::OutOfOrder {
                            key: s.result_key(),
                            version: s.version,
                            reason,
                        },
                    ));
                }
                summaries.insert(vkey.as_slice(), value.as_slice())?;
                latest.insert(rkey.as_slice(), &s.version.to_be_bytes())?;
                by_patient.insert(index_key.as_slice(), &[])?;
                if certs.get(cert_hash)?.is_none() {
                    certs.insert(&cert_hash, v.envelope.signer_certificate.as_slice())?;
                }
                Ok(None)
            },
        );
        let earlier = match outcome {
            Ok(earlier) => earlier,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        // A duplicate may race with the first put's flush, so it waits for durability too.
        self.commit().await?;
        let receipt = |at| Receipt {
            publisher: s.publisher.clone(),
            summary_id: s.id.clone(),
            version: s.version,
            body_sha256: v.body_sha256,
            accepted_at: UnixMillis(at),
        };
        Ok(match earlier {
            Some(at) => PutOutcome::AlreadyStored(receipt(at)),
            None => PutOutcome::Stored(receipt(accepted_at.0)),
        })
    }

    /// Loads the latest version of a result.
    fn load_latest(&self, rkey: &[u8]) -> Result<Option<StoredSummary>, StoreError> {
        let Some(v) = self.inner.latest.get(rkey)? else {
            return Ok(None);
        };
        let version = read_u32(&v)?;
        let mut vkey = rkey.to_vec();
        vkey.push(0);
        vkey.extend_from_slice(&version.to_be_bytes());
        let Some(raw) = self.inner.summaries.get(&vkey)? else {
            return Err(StoreError::Corrupt(format!(
                "latest version {version} of a result is missing"
            )));
        };
        let rec = decode_record(&raw)?;
        self.to_stored(rec).map(Some)
    }

    fn to_stored(&self, rec: RecordV1) -> Result<StoredSummary, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
        let cert = self
            .inner
            .certs
            .get(&rec.signer_certificate_sha256)?
            .ok_or_else(|| corrupt("signing certificate missing"))?;
        // Stored bodies were validated when accepted; a body that no longer decodes is corruption.
        let summary = Summary::from_body_bytes(&rec.body)
            .map_err(|e| StoreError::Corrupt(format!("stored body no longer decodes: {e}")))?;
        Ok(StoredSummary {
            receipt: Receipt {
                publisher: summary.publisher.clone(),
                summary_id: summary.id.clone(),
                version: summary.version,
                body_sha256: rec
                    .body_sha256
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("body digest is not 32 bytes"))?,
                accepted_at: UnixMillis(rec.accepted_at_ms),
            },
            envelope: SignedEnvelope {
                signature: rec
                    .signature
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("signature is not 64 bytes"))?,
                body: rec.body,
                signer_certificate: cert.to_vec(),
            },
            summary,
        })
    }

    /// Latest versions of a patient's results for some items, performed within the window,
    /// newest first.
    pub fn find_prior(&self, q: &PriorQuery) -> Result<Found, StoreError> {
        let mut hits = Vec::new();
        for (system, code) in &q.items {
            let prefix = item_prefix(&q.patient, system, code);
            let mut start = prefix.clone();
            start.extend_from_slice(&inv_time(q.until));
            let mut end = prefix.clone();
            end.extend_from_slice(&inv_time(q.from));
            end.push(0xff);
            for entry in self.inner.by_patient.range(start..end) {
                let (key, _) = entry?;
                hits.push(key[prefix.len() + 8..].to_vec());
            }
        }
        self.resolve(hits, q, |s| {
            q.items
                .iter()
                .any(|(sys, code)| s.item.system == *sys && s.item.code == *code)
        })
    }

    /// Latest versions of all of a patient's results performed at or after `from`, newest first.
    pub fn history(&self, q: &PriorQuery) -> Result<Found, StoreError> {
        let mut hits = Vec::new();
        for entry in self.inner.by_patient.scan_prefix(q.patient.as_bytes()) {
            let (key, _) = entry?;
            // Skip pseudonym, system, code (two 0x00-terminated fields) and the time.
            let rest = &key[32..];
            let mut zeros = rest
                .iter()
                .enumerate()
                .filter(|&(_, b)| *b == 0)
                .map(|(i, _)| i);
            let (Some(_), Some(code_end)) = (zeros.next(), zeros.next()) else {
                return Err(StoreError::Corrupt("malformed patient index key".into()));
            };
            hits.push(rest[code_end + 1 + 8..].to_vec());
        }
        self.resolve(hits, q, |_| true)
    }

    /// Turns index hits into the latest versions that still match, deduplicated and sorted.
    fn resolve(
        &self,
        mut rkeys: Vec<Vec<u8>>,
        q: &PriorQuery,
        matches: impl Fn(&Summary) -> bool,
    ) -> Result<Found, StoreError> {
        rkeys.sort();
        rkeys.dedup();
        let mut results = Vec::new();
        for rkey in rkeys {
            let Some(stored) = self.load_latest(&rkey)? else {
                continue;
            };
            let summary = &stored.summary;
            if summary.patient == q.patient
                && summary.performed_at >= q.from
                && summary.performed_at <= q.until
                && matches(summary)
            {
                results.push(stored);
            }
        }
        results.sort_by(|a, b| {
            b.summary
                .performed_at
                .cmp(&a.summary.performed_at)
                .then_with(|| a.receipt.publisher.cmp(&b.receipt.publisher))
                .then_with(|| a.receipt.summary_id.cmp(&b.receipt.summary_id))
        });
        let truncated = results.len() > q.limit;
        results.truncate(q.limit);
        Ok(Found { results, truncated })
    }

    /// Number of stored summary versions.
    pub fn summary_count(&self) -> usize {
        self.inner.summaries.len()
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }
}

fn decode_record(raw: &[u8]) -> Result<RecordV1, StoreError> {
    match raw.split_first() {
        Some((&RECORD_V1, rest)) => {
            RecordV1::decode(rest).map_err(|e| StoreError::Corrupt(e.to_string()))
        }
        Some((v, _)) => Err(StoreError::Corrupt(format!("unknown record version {v}"))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}

/// Group commit: each flush covers every write made before it started, and answers every
/// writer that was waiting when it started.
async fn group_commit(
    db: sled::Db,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let db = db.clone();
        let result = match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("flush task failed: {e}")),
        };
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }
}
