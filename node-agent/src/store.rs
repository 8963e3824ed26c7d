//! The agent's own store: the outbox of signed summaries, the full reports it serves, and
//! ingest progress. The only module that imports sled; everything else sees the domain-shaped
//! API below, so the engine can be swapped (sled 0.34 is unmaintained; redb is an option).
//!
//! Trees and key layouts (all integers big-endian; values are the prost messages below):
//!
//! ```text
//! outbox     seq u64                     -> QueuedRecord   waiting to be published, in order
//! published  seq u64                     -> QueuedRecord   published (envelope dropped)
//! dead       seq u64                     -> QueuedRecord   refused by the hub, with the reason
//! results    summary_id                  -> ResultRecord   latest version of each result
//! versions   summary_id 0x00 version u32 -> VersionRecord  report digest of each version
//! reports    sha256 [32]                 -> report bytes   content-addressed
//! files      file key (utf-8)            -> FileRecord     files already ingested (backfill)
//! web_accounts  login name (utf-8)       -> WebAccountRecord  the web app's accounts
//! break_glass   seq u64                  -> BreakGlassRecord  emergency look-ups and their reasons
//! ```
//!
//! Invariants: a result is signed once and its signed bytes are written (in one transaction
//! with its report and its `results`/`versions` records) before anything is published; an
//! outbox entry moves to `published` or `dead` only after the hub answered. [`Store::flush`]
//! makes writes survive a crash of the process (sled's flush is `sync_file_range` on Linux:
//! not necessarily a power cut). One process opens a store at a time (sled locks it).

use std::path::Path;

use prost::Message;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use huren_core::pseudonym::Pseudonym;
use huren_core::signing::SignedEnvelope;
use huren_core::summary::{SummaryId, UnixMillis};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the agent store at {path} is in use by another process (is `huren-agent run` running?)"
    )]
    Locked { path: std::path::PathBuf },
    #[error("agent store: {0}")]
    Engine(#[from] sled::Error),
    #[error("agent store: a record cannot be read: {0}")]
    Corrupt(String),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Engine(e),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct QueuedRecord {
    #[prost(string, tag = "1")]
    summary_id: String,
    #[prost(uint32, tag = "2")]
    version: u32,
    /// Encoded `huren.summary.v1.SignedSummary`; empty once published.
    #[prost(bytes = "vec", tag = "3")]
    envelope: Vec<u8>,
    #[prost(int64, tag = "4")]
    enqueued_at_ms: i64,
    #[prost(int64, tag = "5")]
    done_at_ms: i64,
    #[prost(bool, tag = "6")]
    already_stored: bool,
    #[prost(string, tag = "7")]
    reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResultRecord {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    report_sha256: Vec<u8>,
    #[prost(bool, tag = "4")]
    voided: bool,
    /// The patient pseudonym of the latest version (empty in records written before it was
    /// kept).
    #[prost(bytes = "vec", tag = "5")]
    patient: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VersionRecord {
    #[prost(bytes = "vec", tag = "1")]
    report_sha256: Vec<u8>,
    #[prost(string, tag = "2")]
    media_type: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FileRecord {
    #[prost(uint32, tag = "1")]
    results: u32,
    #[prost(int64, tag = "2")]
    at_ms: i64,
}

/// A web app account (node-agent/src/web/accounts.rs).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WebAccountRecord {
    #[prost(string, tag = "1")]
    pub username: String,
    /// Sent to the hub as the requester of every query (an id, never a name).
    #[prost(string, tag = "2")]
    pub staff_id: String,
    #[prost(string, tag = "3")]
    pub role: String,
    /// Argon2id PHC string.
    #[prost(string, tag = "4")]
    pub password_hash: String,
    #[prost(bool, tag = "5")]
    pub disabled: bool,
    /// Wrong passwords in a row.
    #[prost(uint32, tag = "6")]
    pub failures: u32,
    #[prost(int64, tag = "7")]
    pub locked_until_ms: i64,
    #[prost(int64, tag = "8")]
    pub created_at_ms: i64,
}

/// An emergency (break-glass) look-up made in the web app: who, when and the reason they
/// gave. Kept here, never sent to the hub (which records the emergency purpose and staff id).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BreakGlassRecord {
    #[prost(int64, tag = "1")]
    pub at_ms: i64,
    #[prost(string, tag = "2")]
    pub username: String,
    #[prost(string, tag = "3")]
    pub staff_id: String,
    #[prost(string, tag = "4")]
    pub reason: String,
    /// The patient's pseudonym (not the id), so the record can be matched with the hub's
    /// access report.
    #[prost(bytes = "vec", tag = "5")]
    pub pseudonym: Vec<u8>,
}

/// What the agent last queued for a result id: the base for deciding the next version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultState {
    pub version: u32,
    /// SHA-256 of the clinical content (see `ingest::content_digest`).
    pub content: [u8; 32],
    pub report_sha256: [u8; 32],
    pub voided: bool,
    /// The patient of the latest version; `None` for a result queued by an agent that did not
    /// keep it yet.
    pub patient: Option<Pseudonym>,
}

/// A full report to keep and serve.
#[derive(Clone, Debug)]
pub struct ReportBytes {
    pub sha256: [u8; 32],
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// One signed result to queue.
pub struct NewResult<'a> {
    pub envelope: &'a SignedEnvelope,
    pub summary_id: &'a SummaryId,
    pub version: u32,
    pub state: ResultState,
    pub report: &'a ReportBytes,
}

/// A queued result waiting for the hub.
#[derive(Clone, Debug)]
pub struct Pending {
    pub seq: u64,
    pub summary_id: String,
    pub version: u32,
    pub envelope: SignedEnvelope,
}

/// A result the hub refused.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub seq: u64,
    pub summary_id: String,
    pub version: u32,
    pub reason: String,
    pub at: UnixMillis,
}

/// Sizes of the outbox lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: usize,
    pub published: usize,
    pub dead: usize,
}

/// A stored report of one result version.
#[derive(Clone, Debug)]
pub struct StoredReport {
    pub version: u32,
    pub sha256: [u8; 32],
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// The agent's store. Cheap to share behind an `Arc`; sled is internally synchronised.
pub struct Store {
    db: sled::Db,
    outbox: sled::Tree,
    published: sled::Tree,
    dead: sled::Tree,
    results: sled::Tree,
    versions: sled::Tree,
    reports: sled::Tree,
    files: sled::Tree,
    web_accounts: sled::Tree,
    break_glass: sled::Tree,
}

fn digest(bytes: &[u8], what: &str) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} is not 32 bytes")))
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(key.try_into().map_err(|_| {
        StoreError::Corrupt("outbox key is not 8 bytes".into())
    })?))
}

/// One outbox entry read back: its key (the sequence number) and its record (a `QueuedRecord`
/// holding the signed envelope). A record that does not read is `Corrupt`, never a panic: the
/// fuzz target `outbox_record` runs this on any bytes.
pub fn read_outbox_record(key: &[u8], value: &[u8]) -> Result<Pending, StoreError> {
    let r: QueuedRecord = decode(value, "outbox record")?;
    let envelope = SignedEnvelope::from_bytes(&r.envelope)
        .map_err(|e| StoreError::Corrupt(format!("queued envelope: {e}")))?;
    Ok(Pending {
        seq: seq_of(key)?,
        summary_id: r.summary_id,
        version: r.version,
        envelope,
    })
}

/// An outbox record's bytes as the store writes them, for the fuzz corpus and tests.
pub fn encode_outbox_record(summary_id: &str, version: u32, envelope: &SignedEnvelope) -> Vec<u8> {
    QueuedRecord {
        summary_id: summary_id.to_owned(),
        version,
        envelope: envelope.to_bytes(),
        enqueued_at_ms: 0,
        done_at_ms: 0,
        already_stored: false,
        reason: String::new(),
    }
    .encode_to_vec()
}

fn version_key(id: &str, version: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 5);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

impl Store {
    /// Opens (or creates) the store in the folder `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // A store this process has just dropped can stay locked for a moment (sled's
        // background writes let go of its files a little after the last handle): wait up to a
        // second before calling it locked by another process.
        let locked_until = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(io))
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") => {}
                Err(other) => return Err(StoreError::Engine(other)),
            }
            if std::time::Instant::now() >= locked_until {
                return Err(StoreError::Locked {
                    path: path.to_owned(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        Ok(Store {
            outbox: db.open_tree("outbox")?,
            published: db.open_tree("published")?,
            dead: db.open_tree("dead")?,
            results: db.open_tree("results")?,
            versions: db.open_tree("versions")?,
            reports: db.open_tree("reports")?,
            files: db.open_tree("files")?,
            web_accounts: db.open_tree("web_accounts")?,
            break_glass: db.open_tree("break_glass")?,
            db,
        })
    }

    /// The latest version the agent queued for `id`, if any.
    pub fn result_state(&self, id: &SummaryId) -> Result<Option<ResultState>, StoreError> {
        let Some(v) = self.results.get(id.as_str().as_bytes())? else {
            return Ok(None);
        };
        let r: ResultRecord = decode(&v, "result record")?;
        Ok(Some(ResultState {
            version: r.version,
            content: digest(&r.content, "content digest")?,
            report_sha256: digest(&r.report_sha256, "report digest")?,
            voided: r.voided,
            patient: match r.patient.len() {
                0 => None,
                _ => Some(Pseudonym::from_slice(&r.patient).ok_or_else(|| {
                    StoreError::Corrupt("patient pseudonym is not 32 bytes".into())
                })?),
            },
        }))
    }

    /// Queues signed results, with their reports, in one transaction; and, if given, marks the
    /// file they came from as ingested (`file_key`). Call [`Store::flush`] before relying on it.
    pub fn enqueue(
        &self,
        results: &[NewResult<'_>],
        file_key: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut seqs = Vec::with_capacity(results.len());
        for _ in results {
            seqs.push(self.db.generate_id()?);
        }
        let at = UnixMillis::now().0;
        let queued: Vec<(u64, Vec<u8>)> = results
            .iter()
            .zip(&seqs)
            .map(|(r, seq)| {
                let record = QueuedRecord {
                    summary_id: r.summary_id.to_string(),
                    version: r.version,
                    envelope: r.envelope.to_bytes(),
                    enqueued_at_ms: at,
                    ..Default::default()
                };
                (*seq, record.encode_to_vec())
            })
            .collect();
        let file_record = FileRecord {
            results: u32::try_from(results.len()).unwrap_or(u32::MAX),
            at_ms: at,
        }
        .encode_to_vec();
        (
            &self.outbox,
            &self.results,
            &self.versions,
            &self.reports,
            &self.files,
        )
            .transaction(|(outbox, res, versions, reports, files)| {
                for ((seq, record), r) in queued.iter().zip(results) {
                    outbox.insert(&seq.to_be_bytes(), record.as_slice())?;
                    let state = ResultRecord {
                        version: r.state.version,
                        content: r.state.content.to_vec(),
                        report_sha256: r.state.report_sha256.to_vec(),
                        voided: r.state.voided,
                        patient: r
                            .state
                            .patient
                            .map(|p| p.as_bytes().to_vec())
                            .unwrap_or_default(),
                    };
                    res.insert(r.summary_id.as_str().as_bytes(), state.encode_to_vec())?;
                    versions.insert(
                        version_key(r.summary_id.as_str(), r.version),
                        VersionRecord {
                            report_sha256: r.report.sha256.to_vec(),
                            media_type: r.report.media_type.clone(),
                        }
                        .encode_to_vec(),
                    )?;
                    if reports.get(r.report.sha256)?.is_none() {
                        reports.insert(&r.report.sha256, r.report.bytes.as_slice())?;
                    }
                }
                if let Some(key) = file_key {
                    files.insert(key.as_bytes(), file_record.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
        Ok(())
    }

    /// Waits until every write so far is on disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Marks a file as ingested without results (everything in it was skipped or rejected).
    pub fn mark_file(&self, key: &str) -> Result<(), StoreError> {
        self.enqueue(&[], Some(key))
    }

    /// Whether a file with this key was ingested before.
    pub fn file_ingested(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.files.contains_key(key.as_bytes())?)
    }

    /// Up to `limit` queued results, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let mut out = Vec::new();
        for entry in self.outbox.iter().take(limit) {
            let (k, v) = entry?;
            out.push(read_outbox_record(&k, &v)?);
        }
        Ok(out)
    }

    fn take(&self, seq: u64) -> Result<Option<QueuedRecord>, StoreError> {
        self.outbox
            .get(seq.to_be_bytes())?
            .map(|v| decode(&v, "outbox record"))
            .transpose()
    }

    /// Moves a queued result to `published` (the hub holds it).
    pub fn mark_published(
        &self,
        seq: u64,
        accepted_at: UnixMillis,
        already_stored: bool,
    ) -> Result<(), StoreError> {
        let Some(mut r) = self.take(seq)? else {
            return Ok(());
        };
        r.envelope.clear();
        r.done_at_ms = accepted_at.0;
        r.already_stored = already_stored;
        let value = r.encode_to_vec();
        (&self.outbox, &self.published).transaction(|(outbox, published)| {
            outbox.remove(&seq.to_be_bytes())?;
            published.insert(&seq.to_be_bytes(), value.as_slice())?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// Moves a queued result to the dead letters with the hub's reason.
    pub fn dead_letter(&self, seq: u64, reason: &str) -> Result<(), StoreError> {
        let Some(mut r) = self.take(seq)? else {
            return Ok(());
        };
        r.reason = reason.to_owned();
        r.done_at_ms = UnixMillis::now().0;
        let value = r.encode_to_vec();
        (&self.outbox, &self.dead).transaction(|(outbox, dead)| {
            outbox.remove(&seq.to_be_bytes())?;
            dead.insert(&seq.to_be_bytes(), value.as_slice())?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        self.flush()
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead
            .iter()
            .map(|e| {
                let (k, v) = e?;
                let r: QueuedRecord = decode(&v, "dead letter")?;
                Ok(DeadLetter {
                    seq: seq_of(&k)?,
                    summary_id: r.summary_id,
                    version: r.version,
                    reason: r.reason,
                    at: UnixMillis(r.done_at_ms),
                })
            })
            .collect()
    }

    /// Puts every dead letter back in the outbox (in its original order), e.g. after the
    /// alliance fixed a certificate or catalogue problem. Returns how many.
    pub fn retry_dead_letters(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for e in self.dead.iter() {
            let (k, v) = e?;
            let mut r: QueuedRecord = decode(&v, "dead letter")?;
            r.reason.clear();
            r.done_at_ms = 0;
            let value = r.encode_to_vec();
            (&self.dead, &self.outbox).transaction(|(dead, outbox)| {
                dead.remove(&k)?;
                outbox.insert(&k, value.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
            n += 1;
        }
        self.flush()?;
        Ok(n)
    }

    /// The web account `username`, if any.
    pub fn web_account(&self, username: &str) -> Result<Option<WebAccountRecord>, StoreError> {
        self.web_accounts
            .get(username.as_bytes())?
            .map(|v| decode(&v, "web account"))
            .transpose()
    }

    /// Writes a web account (new or changed).
    pub fn put_web_account(&self, account: &WebAccountRecord) -> Result<(), StoreError> {
        self.web_accounts
            .insert(account.username.as_bytes(), account.encode_to_vec())?;
        Ok(())
    }

    /// Every web account, by login name.
    pub fn web_accounts(&self) -> Result<Vec<WebAccountRecord>, StoreError> {
        self.web_accounts
            .iter()
            .map(|kv| decode(&kv?.1, "web account"))
            .collect()
    }

    /// Records an emergency look-up, flushed before it returns (the look-up happens after).
    pub fn record_break_glass(&self, record: &BreakGlassRecord) -> Result<u64, StoreError> {
        let seq = self.db.generate_id()?;
        self.break_glass
            .insert(seq.to_be_bytes(), record.encode_to_vec())?;
        self.flush()?;
        Ok(seq)
    }

    /// Every emergency look-up recorded, oldest first.
    pub fn break_glass_records(&self) -> Result<Vec<(u64, BreakGlassRecord)>, StoreError> {
        self.break_glass
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((seq_of(&k)?, decode(&v, "break-glass record")?))
            })
            .collect()
    }

    pub fn counts(&self) -> OutboxCounts {
        OutboxCounts {
            pending: self.outbox.len(),
            published: self.published.len(),
            dead: self.dead.len(),
        }
    }

    /// When the oldest summary still waiting in the outbox was queued (`None`: none waits).
    pub fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        let Some((_, raw)) = self.outbox.first()? else {
            return Ok(None);
        };
        let record: QueuedRecord = decode(&raw, "queued summary")?;
        Ok(Some(record.enqueued_at_ms))
    }

    /// The report of version `version` of result `id` (`None`: the latest version queued).
    pub fn report(
        &self,
        id: &SummaryId,
        version: Option<u32>,
    ) -> Result<Option<StoredReport>, StoreError> {
        let version = match version {
            Some(v) => v,
            None => match self.result_state(id)? {
                Some(s) => s.version,
                None => return Ok(None),
            },
        };
        let Some(v) = self.versions.get(version_key(id.as_str(), version))? else {
            return Ok(None);
        };
        let record: VersionRecord = decode(&v, "version record")?;
        let sha256 = digest(&record.report_sha256, "report digest")?;
        let Some(bytes) = self.reports.get(sha256)? else {
            return Err(StoreError::Corrupt(format!(
                "the report of {id} version {version} is missing"
            )));
        };
        Ok(Some(StoredReport {
            version,
            sha256,
            media_type: record.media_type,
            bytes: bytes.to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(n: u8) -> SignedEnvelope {
        SignedEnvelope {
            body: vec![n; 10],
            signature: [n; 64],
            signer_certificate: vec![1, 2, 3],
        }
    }

    fn state(v: u32) -> ResultState {
        ResultState {
            version: v,
            content: [v as u8; 32],
            report_sha256: [9; 32],
            voided: false,
            patient: Some(Pseudonym::from_bytes([v as u8; 32])),
        }
    }

    #[test]
    fn queue_publish_dead_letter_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let report = ReportBytes {
            sha256: [9; 32],
            media_type: "text/plain".into(),
            bytes: b"full report".to_vec(),
        };
        let (a, b) = (
            SummaryId::parse("A").unwrap(),
            SummaryId::parse("B").unwrap(),
        );
        let (ea, eb, ea2) = (envelope(1), envelope(2), envelope(3));
        store
            .enqueue(
                &[
                    NewResult {
                        envelope: &ea,
                        summary_id: &a,
                        version: 1,
                        state: state(1),
                        report: &report,
                    },
                    NewResult {
                        envelope: &eb,
                        summary_id: &b,
                        version: 1,
                        state: state(1),
                        report: &report,
                    },
                ],
                Some("file-1"),
            )
            .unwrap();
        store
            .enqueue(
                &[NewResult {
                    envelope: &ea2,
                    summary_id: &a,
                    version: 2,
                    state: state(2),
                    report: &report,
                }],
                None,
            )
            .unwrap();
        store.flush().unwrap();
        assert!(store.file_ingested("file-1").unwrap());
        assert!(!store.file_ingested("file-2").unwrap());
        assert_eq!(store.result_state(&a).unwrap(), Some(state(2)));
        let pending = store.pending(10).unwrap();
        let order: Vec<(String, u32)> = pending
            .iter()
            .map(|p| (p.summary_id.clone(), p.version))
            .collect();
        assert_eq!(order, [("A".into(), 1), ("B".into(), 1), ("A".into(), 2)]);
        assert_eq!(pending[2].envelope, ea2);

        store
            .mark_published(pending[0].seq, UnixMillis(5), false)
            .unwrap();
        store.dead_letter(pending[1].seq, "refused").unwrap();
        assert_eq!(
            store.counts(),
            OutboxCounts {
                pending: 1,
                published: 1,
                dead: 1
            }
        );
        let dead = store.dead_letters().unwrap();
        assert_eq!(dead[0].summary_id, "B");
        assert_eq!(dead[0].reason, "refused");

        let r = store.report(&a, None).unwrap().unwrap();
        assert_eq!((r.version, r.bytes.as_slice()), (2, &b"full report"[..]));
        assert!(store.report(&a, Some(7)).unwrap().is_none());

        // Reopened: everything is still there.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.retry_dead_letters().unwrap(), 1);
        let pending: Vec<String> = store
            .pending(10)
            .unwrap()
            .into_iter()
            .map(|p| p.summary_id)
            .collect();
        assert_eq!(pending, ["B", "A"]);
    }

    #[test]
    fn a_second_open_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }
}
