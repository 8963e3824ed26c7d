//! The embedded backend of the storage seam ([`super::Store`]) on sled: the default, and all a
//! small alliance needs. The only module that imports sled.
//!
//! Trees and key layouts (all integers big-endian, so byte order is numeric order):
//!
//! ```text
//! summaries   publisher 0x00 summary_id 0x00 version:u32        -> 0x01 || RecordV1 of a superseded version (protobuf; older stores: every version)
//! latest      publisher 0x00 summary_id                         -> version:u32 log_index:u64 (older stores: version:u32 alone)
//! by_patient  pseudonym[32] system 0x00 code 0x00 inv_performed:u64 publisher 0x00 summary_id -> log_index of the latest version's leaf (1-8 bytes, big-endian, no leading zero byte), or empty
//! certs       sha256(certificate DER)[32]                        -> certificate DER
//! consulted   member 0x00 publisher 0x00 summary_id                -> 0x01 || ConsultationV1 (older stores; read, no longer written)
//! shown       member 0x00 pseudonym[32]                          -> 0x01 || ShownV1
//! decisions   member 0x00 decision_id                            -> 0x01 || DecisionV1
//! events      at_ms:u64 seq:u64                                  -> 0x01 || EventV1, or 0x02 || EventGroupV1 (events at the same ms)
//! consent     pseudonym[32]                                      -> 0x01 || ConsentV1
//! access      pseudonym[32] at_ms:u64 log_index:u64              -> ()
//! log_runs    index of its last leaf:u64                         -> 0x01 count:u8 (1-4) count × length:u32 leaves (huren_core::logentry), from runs_from on
//! log_leaves  index:u64                                          -> leaf bytes (stores written before runs: leaves below runs_from)
//! log_tiles   tile:u64                                           -> hash[32] of each of its leaves (16, fewer in the last tile)
//! log_nodes   level:u8 index:u64                                 -> hash[32] of a complete subtree (level >= 5; older stores: >= 1)
//! (default)   "huren-store-layout"                               -> layout version:u32 (STORE_LAYOUT)
//! log_meta    "size"                                             -> tree size:u64
//!             "tiles_from"                                       -> first tile:u64 in log_tiles
//!             "runs_from"                                        -> first leaf:u64 in log_runs
//!             "policy"                                           -> latest policy leaf:u64
//! ```
//!
//! The log (RFC 6962 tree, see `huren_core::merkle`): `log_runs` holds the leaves, `log_meta`
//! the size. A run is the leaves one write appended within one aligned group of four
//! (`RUN_LEAVES`), stored under the index of its last leaf: a leaf is read from the first run
//! whose key is at or after its index, one ordered lookup, and a batch of 250 appends writes
//! about 63 keys where it wrote 250 (disk per summary 5.8x → 5.0x). Runs are written once and
//! never rewritten. Stores written before runs kept each leaf under its own
//! index in `log_leaves`; those leaves stay there, below `runs_from`, the size of the log when
//! the store was first opened with runs.
//!
//! Tile t holds the hashes of leaves 16t to 16t + 15, so one read gives every node of levels
//! 0 to 4 inside it (at most 15 hashes to fold); `log_nodes` holds the complete
//! subtrees above. A full tile is written once; the last, incomplete one is rewritten by each
//! write that appends to it. So a batch of appends writes a tile per 16 leaves and a node per 32
//! where it wrote a node per leaf (PublishBatch about a tenth faster). Stores written before
//! tiles kept every node of level 1 and up in `log_nodes` (the very first ones level 0 too):
//! their tiles begin at `tiles_from`, the tile the log was filling when the store was first
//! opened with tiles, and the nodes of earlier tiles are read where they are (level 0 from the
//! leaf). Each logged
//! write (a summary version, a decision, an access, a consent change) appends its leaf **in the
//! same atomic write** as the write itself, so the data and the log cannot diverge. Appends
//! (and every other write) are serialised by one mutex that also holds the frontier (the right edge of the tree, one
//! hash per set bit of the size): an append is O(log n). `access` indexes access leaves by
//! patient for the access report. A `latest` entry names the latest version's leaf, and so
//! does the patient index entry of that version (layout 3): a query reads the index entries
//! and then one leaf per result, taking what it returns from the log alone. An index entry
//! names no leaf when a later version moved its result (to another item or time) or when it
//! was written before layout 3; the query then reads the `latest` entry first. Each write of
//! a version sets its key's leaf and empties the key of the version it moved from, in the
//! same atomic write;
//! a version gets a record (`RecordV1.log_index` pointing at its leaf) only once a newer one
//! supersedes it, so publishing a new result writes one key less. Versions arrive in order,
//! so a result whose latest version is v has exactly v versions stored.
//! A store written before the log existed gets its summaries appended once, in acceptance
//! order, when it is opened with an empty log.
//!
//! `shown` remembers which results a member was shown for a patient and whether they were
//! recognised for it, so a decision can only be recorded on a result the member actually
//! consulted and is checked against the verdict it was given. One key per member and patient
//! (not per result) and one event group per millisecond keep what a query writes small: a
//! sled insert costs tens of microseconds, and every query writes these. (`consulted` is the
//! older per-result layout, still read.) `events` feeds the statistics.
//!
//! `inv_performed` is `u64::MAX - performed_at_ms`, so a prefix scan over one patient and item
//! yields the newest result first. Index entries are never removed: a query resolves each hit to
//! the latest version of its result and re-checks that it still matches, so an amendment that
//! changes the item, the time or the patient simply stops matching the old entry. Signing
//! certificates are stored once each, not once per summary.
//!
//! Every write is one `writeset::WriteSet` across the trees: atomic through an undo list,
//! not through sled transactions, which would make every read in the process wait behind disk
//! flushes (the module explains both). A put is acknowledged only after
//! [`SledStore::commit`] returns, that is after a flush that covers the write: concurrent writers
//! share flushes (group commit), so a receipt is never sent for data that a `kill -9` right
//! after could lose. sled's flush is
//! `sync_file_range` on Linux: it survives a crashed or killed process, not necessarily a power
//! cut.

mod audit;
pub(crate) use audit::access_leaf;
mod check;
mod log;
mod records;
mod summaries;
#[cfg(test)]
mod tests;
mod writeset;

use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use async_trait::async_trait;
use huren_core::identity::InstitutionId;
use huren_core::logentry::Entry;
use huren_core::merkle::{self, Hash};
use huren_core::pseudonym::Pseudonym;
use huren_core::rules::RetestReason;
use huren_core::signing::{SignedEnvelope, VerifiedSummary, sha256};
use huren_core::stats::{ConsultationKey, Event, EventKind};
use huren_core::summary::{Summary, UnixMillis};
use writeset::{TreeId, Trees, WriteSet};

use super::{
    Access, Consultation, DecisionOutcome, DecisionRecord, Found, Logged, PriorQuery, Put,
    PutBatch, PutOutcome, QueryRecord, Receipt, Store, StoreError, StoredSummary, Succession,
    TreeHead,
};
use crate::batch::{Worker, next_batch};
pub use audit::ShownRecord;
pub use check::CheckReport;
/// The layout of a run of leaves in `log_runs`, for tools that read a stopped hub's store.
pub use log::{run_leaves, run_value};
#[allow(unused_imports)]
use {audit::*, log::*, records::*, summaries::*};

/// The hub's store. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    summaries: sled::Tree,
    latest: sled::Tree,
    by_patient: sled::Tree,
    certs: sled::Tree,
    /// Signing certificates already read, by SHA-256 of their DER.
    cert_cache: RwLock<HashMap<Vec<u8>, Arc<[u8]>>>,
    consulted: sled::Tree,
    shown: sled::Tree,
    decisions: sled::Tree,
    events: sled::Tree,
    consent: sled::Tree,
    access: sled::Tree,
    /// Leaves of stores written before runs, each under its own index (below `runs_from`).
    log_leaves: sled::Tree,
    /// Leaves from `runs_from` on, in runs (see [`log::Leaves`]).
    log_runs: sled::Tree,
    /// The first leaf kept in `log_runs` (see [`start_runs`]).
    runs_from: u64,
    log_nodes: sled::Tree,
    log_tiles: sled::Tree,
    /// The first tile with a value in `log_tiles`: the nodes of the tiles before it are in
    /// `log_nodes` (see [`start_tiles`]).
    tiles_from: u64,
    /// Merkle node hashes once read (see [`Nodes`]).
    node_cache: NodeCache,
    log_meta: sled::Tree,
    /// The one log writer's state. Every write to the store holds this lock while it reads what
    /// it checks and applies its [`WriteSet`], so there is one writer at a time.
    log: Mutex<LogState>,
    /// The head of the log as of the last applied write (readers take it without waiting for
    /// a writer holding `log`).
    applied: Mutex<TreeHead>,
    /// The newest head a flush is known to have made durable, and when.
    durable: Mutex<Option<(TreeHead, Instant)>>,
    /// Whether a background flush to refresh `durable` is under way.
    refreshing: AtomicBool,
    /// The thread running [`group_commit`] (`None` only while the store opens). Joined when
    /// the store is dropped, so the database (and its file lock) is released by then.
    commits: Option<Worker<oneshot::Sender<Result<(), String>>>>,
}

impl Trees for Inner {
    fn tree(&self, id: TreeId) -> &sled::Tree {
        match id {
            TreeId::Summaries => &self.summaries,
            TreeId::Latest => &self.latest,
            TreeId::ByPatient => &self.by_patient,
            TreeId::Certs => &self.certs,
            TreeId::Consulted => &self.consulted,
            TreeId::Shown => &self.shown,
            TreeId::Decisions => &self.decisions,
            TreeId::Events => &self.events,
            TreeId::Consent => &self.consent,
            TreeId::Access => &self.access,
            TreeId::LogLeaves => &self.log_leaves,
            TreeId::LogRuns => &self.log_runs,
            TreeId::LogNodes => &self.log_nodes,
            TreeId::LogTiles => &self.log_tiles,
            TreeId::LogMeta => &self.log_meta,
        }
    }

    fn db(&self) -> &sled::Db {
        &self.db
    }
}

/// The tree's size and frontier, as of the last committed append.
#[derive(Default)]
struct LogState {
    size: u64,
    frontier: Vec<Hash>,
    /// The leaf hashes of the last tile while it is incomplete (`size % TILE_LEAVES` of them):
    /// what its stored value holds.
    tile: Vec<Hash>,
}

impl LogState {
    fn head(&self) -> TreeHead {
        TreeHead {
            size: self.size,
            root: merkle::root_from_frontier(&self.frontier, self.size),
        }
    }
}

const LOG_SIZE_KEY: &[u8] = b"size";
/// The first tile of the log whose value is in `log_tiles` (see [`start_tiles`]).
const TILES_FROM_KEY: &[u8] = b"tiles_from";
/// The first leaf of the log kept in `log_runs` (see [`start_runs`]).
const RUNS_FROM_KEY: &[u8] = b"runs_from";
/// `log_meta` key of the latest policy leaf's index.
const POLICY_KEY: &[u8] = b"policy";

/// How long opening waits for a store that is locked (see [`SledStore::open_with_cache`]).
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// How old the newest known durable head may get, while the log grows, before
/// [`SledStore::recent_durable_head`] starts a flush to refresh it.
const DURABLE_HEAD_MAX_AGE: Duration = Duration::from_millis(250);

fn node_key(level: u8, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The layout this code reads and writes. Bump it when a change would make an older hub
/// misread the store; an older hub then refuses the store by name instead of misreading it.
/// Layout 1 covers every store written before 2026-12-05 (their older key forms are still
/// read); layout 2 keeps new leaves in runs (`log_runs`), which a layout-1 hub would not find;
/// layout 3 has patient index entries name their latest version's leaf, which a layout-2 hub
/// would leave naming an older version when it stored a new one under the same key.
/// A store in an older layout is marked with this one when it is opened, before anything is
/// written in the new form.
pub const STORE_LAYOUT: u32 = 3;

/// Where the layout version lives: sled's default tree.
const LAYOUT_KEY: &[u8] = b"huren-store-layout";

/// Refuses a store in a newer layout than [`STORE_LAYOUT`], and marks a store in an older
/// one, or with no layout yet (new, or written before the key existed), with this one.
fn check_layout(db: &sled::Db, dir: &Path) -> Result<(), StoreError> {
    let found = match db.get(LAYOUT_KEY)? {
        Some(raw) => {
            let raw: [u8; 4] = raw.as_ref().try_into().map_err(|_| {
                StoreError::Corrupt("the store's layout version is not 4 bytes".into())
            })?;
            Some(u32::from_be_bytes(raw))
        }
        None => None,
    };
    match found {
        Some(found) if found > STORE_LAYOUT => Err(StoreError::NewerLayout {
            path: dir.to_owned(),
            found,
            supported: STORE_LAYOUT,
        }),
        Some(STORE_LAYOUT) => Ok(()),
        older => {
            db.insert(LAYOUT_KEY, &STORE_LAYOUT.to_be_bytes())?;
            db.flush()?;
            if let Some(found) = older {
                tracing::info!(
                    from = found,
                    to = STORE_LAYOUT,
                    "the store is now marked with this hub's layout; older hubs refuse it"
                );
            }
            Ok(())
        }
    }
}

/// What a commit waits for before the hub acknowledges.
///
/// sled 0.34 writes its log with `pwrite` and `sync_file_range(WAIT_BEFORE | WRITE |
/// WAIT_AFTER)`: the data reaches the device, so a crash or `kill -9` of the hub loses nothing
/// acknowledged, but neither the file's metadata (its growing size) nor the drive's volatile
/// write cache is flushed. sled's own flusher thread calls `fsync` on the file after each
/// periodic flush (every 500 ms by default), so a power cut can lose or tear writes
/// acknowledged since the last of those. [`Durability::Fsync`] closes that window: every
/// commit also `fsync`s the file before anyone is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// sled's flush (`sync_file_range`): survives a crash of the process.
    #[default]
    Flush,
    /// sled's flush, then `fsync` of the store's file: survives a power cut too, on a drive
    /// that honours cache flushes.
    Fsync,
}

/// sled's own default page cache, 1 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

impl SledStore {
    /// Opens (or creates) the store in `dir` with the default page cache
    /// ([`DEFAULT_CACHE_BYTES`]) and starts its commit thread. Dropping the last handle
    /// waits for that thread to end, so the directory can be opened again right after.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`SledStore::open`] with a page cache of at most `cache_bytes`: the memory sled may use to
    /// keep the store's pages (most of the hub's resident memory once queries have read them).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with(
            dir,
            cache_bytes,
            Durability::Flush,
            crate::store::DEFAULT_NODE_CACHE_BYTES,
        )
    }

    /// [`SledStore::open_with_cache`] with the durability of each commit chosen, and at most
    /// `node_cache_bytes` of the log's Merkle nodes kept in memory.
    pub fn open_with(
        dir: &Path,
        cache_bytes: u64,
        durability: Durability,
        node_cache_bytes: u64,
    ) -> Result<Self, StoreError> {
        // A store this process has just dropped can stay locked for a moment: sled's own
        // background writes let go of its files a little after the last handle.
        let locked_until = Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .open()
            {
                // sled 0.34 reports a held lock as an `Other` I/O error with this message.
                Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                    if Instant::now() >= locked_until {
                        return Err(StoreError::InUse(dir.to_owned()));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                opened => break opened?,
            }
        };
        check_layout(&db, dir)?;
        let mut inner = Inner {
            consent: db.open_tree("consent")?,
            access: db.open_tree("access")?,
            log_leaves: db.open_tree("log_leaves")?,
            log_runs: db.open_tree("log_runs")?,
            runs_from: 0,
            log_nodes: db.open_tree("log_nodes")?,
            log_tiles: db.open_tree("log_tiles")?,
            tiles_from: 0,
            node_cache: NodeCache::with_bytes(node_cache_bytes),
            log_meta: db.open_tree("log_meta")?,
            log: Mutex::new(LogState::default()),
            applied: Mutex::new(LogState::default().head()),
            durable: Mutex::new(None),
            refreshing: AtomicBool::new(false),
            summaries: db.open_tree("summaries")?,
            latest: db.open_tree("latest")?,
            by_patient: db.open_tree("by_patient")?,
            certs: db.open_tree("certs")?,
            cert_cache: RwLock::new(HashMap::new()),
            consulted: db.open_tree("consulted")?,
            shown: db.open_tree("shown")?,
            decisions: db.open_tree("decisions")?,
            events: db.open_tree("events")?,
            db,
            commits: None,
        };
        // Undo the last write if a crash cut it short, before anything is read.
        let undone = writeset::recover(&inner)?;
        if undone > 0 {
            inner.db.flush()?;
            tracing::warn!(keys = undone, "undid a write that a crash cut short");
        }
        let size = match inner.log_meta.get(LOG_SIZE_KEY)? {
            None => 0,
            Some(raw) => u64::from_be_bytes(
                raw.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("log size is not 8 bytes".into()))?,
            ),
        };
        // Runs first: a store written before tiles builds its last tile from its leaves.
        inner.runs_from = start_runs(&inner, size)?;
        inner.tiles_from = start_tiles(&inner, size)?;
        let tile = match size % TILE_LEAVES {
            0 => Vec::new(),
            filled => {
                let block = size / TILE_LEAVES;
                let raw = inner.log_tiles.get(block.to_be_bytes())?;
                let raw = raw.as_deref().unwrap_or_default();
                if raw.len() as u64 != filled * 32 {
                    return Err(StoreError::Corrupt(format!(
                        "log tile {block} holds {} bytes for {filled} leaves",
                        raw.len()
                    )));
                }
                tile_hashes(raw)
            }
        };
        let frontier = merkle::frontier(size, &Nodes::of(&inner)).map_err(tree_error)?;
        let log = LogState {
            size,
            frontier,
            tile,
        };
        inner.applied = Mutex::new(log.head());
        inner.log = Mutex::new(log);
        let db = inner.db.clone();
        // sled keeps its log in the file `db`; with fsync durability each commit syncs it.
        let data_file = match durability {
            Durability::Flush => None,
            Durability::Fsync => Some(
                std::fs::File::open(dir.join("db"))
                    .map_err(|e| StoreError::Unavailable(Box::new(e)))?,
            ),
        };
        inner.commits = Some(
            Worker::start("huren-commit", move |rx| group_commit(db, data_file, rx))
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?,
        );
        let store = Self {
            inner: Arc::new(inner),
        };
        store.log_unlogged_summaries()?;
        Ok(store)
    }

    /// A store written before the log existed holds summaries with no leaf: they are appended
    /// once, in acceptance order, when the log is still empty. A no-op otherwise.
    fn log_unlogged_summaries(&self) -> Result<(), StoreError> {
        let i = &self.inner;
        if self.log_state()?.size != 0 || i.summaries.is_empty() {
            return Ok(());
        }
        let mut records = Vec::new();
        for entry in i.summaries.iter() {
            let (key, raw) = entry?;
            let rec = decode_record(&raw)?;
            records.push((rec.accepted_at_ms, key.to_vec(), rec, raw));
        }
        records.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let corrupt = |what: &str| StoreError::Corrupt(format!("stored summary: {what}"));
        for (_, key, mut rec, raw) in records {
            let leaf = Entry::Summary {
                accepted_at: UnixMillis(rec.accepted_at_ms),
                signer_certificate_sha256: rec
                    .signer_certificate_sha256
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("certificate hash is not 32 bytes"))?,
                signature: rec
                    .signature
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("signature is not 64 bytes"))?,
                body: rec.body.clone(),
            }
            .encode();
            let mut log = self.log_state()?;
            let mut growth = Growth::new(&log);
            let mut ws = WriteSet::new();
            rec.log_index = growth.next_index();
            ws.replace(TreeId::Summaries, key, encode_v1(&rec), Some(&raw));
            growth.push(&mut ws, leaf);
            let (next, completed) = growth.finish(&mut ws);
            ws.apply(&**i)?;
            *log = next;
            self.set_applied(log.head(), &completed);
        }
        i.db.flush()?;
        tracing::info!(
            entries = self.log_state()?.size,
            "logged the summaries stored before the log existed"
        );
        Ok(())
    }

    /// Waits for a flush that covers every write made before this call (group commit: one
    /// flush answers every caller waiting when it starts).
    pub async fn commit(&self) -> Result<(), StoreError> {
        let head = self.tree_head()?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .commits
            .as_ref()
            .ok_or(StoreError::CommitterGone)?
            .send(tx)
            .map_err(|_| StoreError::CommitterGone)?;
        rx.await
            .map_err(|_| StoreError::CommitterGone)?
            .map_err(|e| StoreError::Unavailable(e.into()))?;
        if let Ok(mut durable) = self.inner.durable.lock()
            && durable.is_none_or(|(d, _)| d.size <= head.size)
        {
            *durable = Some((head, Instant::now()));
        }
        Ok(())
    }

    fn log_state(&self) -> Result<MutexGuard<'_, LogState>, StoreError> {
        self.inner
            .log
            .lock()
            .map_err(|_| StoreError::Corrupt("a log append panicked earlier".into()))
    }

    /// The current tree head (it may include entries not yet flushed).
    pub fn tree_head(&self) -> Result<TreeHead, StoreError> {
        self.inner
            .applied
            .lock()
            .map(|h| *h)
            .map_err(|_| StoreError::Corrupt("a log append panicked earlier".into()))
    }

    /// Called by every writer, under the log's lock, once its write set is applied, with the
    /// nodes its leaves completed: committed now, they go to the node cache, so that proofs of
    /// recent entries (the ones a validity window keeps asked for) read nothing from sled.
    fn set_applied(&self, head: TreeHead, completed: &[(u8, u64, Hash)]) {
        if let Ok(mut applied) = self.inner.applied.lock() {
            *applied = head;
        }
        self.inner.node_cache.insert_kept(completed);
    }

    /// A durable tree head of at least `min_size` entries without waiting for a flush when
    /// one is known: the newest head an earlier flush made durable. Flushes only when no
    /// known durable head is large enough. When the known head is older than
    /// `DURABLE_HEAD_MAX_AGE` and the log has grown since, a flush runs in the background so
    /// later checkpoints cover the newer entries.
    pub async fn recent_durable_head(&self, min_size: u64) -> Result<TreeHead, StoreError> {
        let known = self.inner.durable.lock().ok().and_then(|d| *d);
        let Some((head, at)) = known.filter(|(h, _)| h.size >= min_size) else {
            return self.durable_head().await;
        };
        if at.elapsed() > DURABLE_HEAD_MAX_AGE
            && self.tree_head()?.size > head.size
            && !self.inner.refreshing.swap(true, Ordering::AcqRel)
        {
            let store = self.clone();
            tokio::spawn(async move {
                if let Err(e) = store.commit().await {
                    tracing::warn!(error = %e, "background flush failed");
                }
                store.inner.refreshing.store(false, Ordering::Release);
            });
        }
        Ok(head)
    }

    /// A tree head that is durable: taken, then covered by a flush.
    pub async fn durable_head(&self) -> Result<TreeHead, StoreError> {
        let head = self.tree_head()?;
        self.commit().await?;
        Ok(head)
    }

    /// Number of stored summary versions.
    pub fn summary_count(&self) -> Result<u64, StoreError> {
        // Versions arrive in order (1, 2, ...), so a result whose latest version is v has v.
        let mut count = 0;
        for entry in self.inner.latest.iter() {
            let (_, raw) = entry?;
            count += u64::from(read_latest(&raw)?.0);
        }
        Ok(count)
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    /// What each tree holds: its name, its number of keys and their keys' and values' bytes
    /// (the logical size that sled lays out on disk), largest first, empty trees left out.
    /// Reads every key: for diagnostics and the benchmark, not for a request path.
    pub fn tree_contents(&self) -> Result<Vec<TreeContents>, StoreError> {
        let db = &self.inner.db;
        let mut trees = Vec::new();
        for name in db.tree_names() {
            let tree = db.open_tree(&name)?;
            let (mut keys, mut bytes) = (0, 0);
            for kv in tree.iter() {
                let (k, v) = kv?;
                keys += 1;
                bytes += (k.len() + v.len()) as u64;
            }
            if keys > 0 {
                trees.push(TreeContents {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    keys,
                    bytes,
                });
            }
        }
        trees.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        Ok(trees)
    }
}

/// One tree's contents, from [`SledStore::tree_contents`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeContents {
    pub name: String,
    pub keys: u64,
    /// Keys' and values' bytes together.
    pub bytes: u64,
}

/// The committer thread's loop (group commit): each flush covers every write made before it
/// started, and answers every caller that was waiting when it started.
fn group_commit(
    db: sled::Db,
    data_file: Option<std::fs::File>,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(waiting) = next_batch(&mut rx, usize::MAX, |_| 1) {
        let flush = || -> Result<(), String> {
            db.flush().map_err(|e| e.to_string())?;
            if let Some(f) = &data_file {
                f.sync_all()
                    .map_err(|e| format!("fsync of the store: {e}"))?;
            }
            Ok(())
        };
        let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(flush)) {
            Ok(r) => r,
            Err(_) => Err("the flush panicked".to_string()),
        };
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }
}

#[async_trait]
impl Store for SledStore {
    async fn put_summaries(
        &self,
        items: &[(&VerifiedSummary, UnixMillis)],
        follows: Succession,
    ) -> Result<PutBatch, StoreError> {
        SledStore::put_summaries(self, items, follows)
    }

    async fn commit(&self) -> Result<(), StoreError> {
        SledStore::commit(self).await
    }

    async fn find_prior(&self, q: &PriorQuery) -> Result<Found, StoreError> {
        SledStore::find_prior(self, q)
    }

    async fn history(&self, q: &PriorQuery) -> Result<Found, StoreError> {
        SledStore::history(self, q)
    }

    async fn has_published_for(
        &self,
        patient: &Pseudonym,
        publisher: &InstitutionId,
    ) -> Result<bool, StoreError> {
        SledStore::has_published_for(self, patient, publisher)
    }

    async fn versions(&self, publisher: &str, id: &str) -> Result<Vec<StoredSummary>, StoreError> {
        SledStore::versions(self, publisher, id)
    }

    async fn latest(&self, publisher: &str, id: &str) -> Result<Option<StoredSummary>, StoreError> {
        SledStore::latest(self, publisher, id)
    }

    async fn record_query_batch(&self, batch: &[QueryRecord]) -> Result<(), StoreError> {
        SledStore::record_query_batch(self, batch)
    }

    async fn consultation(
        &self,
        member: &InstitutionId,
        patient: &Pseudonym,
        publisher: &str,
        id: &str,
    ) -> Result<Option<Consultation>, StoreError> {
        SledStore::consultation(self, member, patient, publisher, id)
    }

    async fn record_decision_logged(
        &self,
        d: &DecisionRecord,
    ) -> Result<(DecisionOutcome, Option<Logged>), StoreError> {
        SledStore::record_decision_logged(self, d).await
    }

    async fn set_consent(
        &self,
        patient: &Pseudonym,
        opted_out: bool,
        member: &InstitutionId,
        at: UnixMillis,
    ) -> Result<(bool, Logged), StoreError> {
        SledStore::set_consent(self, patient, opted_out, member, at).await
    }

    async fn opted_out(&self, patient: &Pseudonym) -> Result<bool, StoreError> {
        SledStore::opted_out(self, patient)
    }

    async fn accesses(
        &self,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<Vec<u64>, StoreError> {
        SledStore::accesses(self, patient, from, to)
    }

    async fn events(&self, from: UnixMillis, to: UnixMillis) -> Result<Vec<Event>, StoreError> {
        SledStore::events(self, from, to)
    }

    async fn tree_head(&self) -> Result<TreeHead, StoreError> {
        SledStore::tree_head(self)
    }

    async fn recent_durable_head(&self, min_size: u64) -> Result<TreeHead, StoreError> {
        SledStore::recent_durable_head(self, min_size).await
    }

    async fn durable_head(&self) -> Result<TreeHead, StoreError> {
        SledStore::durable_head(self).await
    }

    async fn leaf(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        SledStore::leaf(self, index)
    }

    async fn append_policy(&self, leaf: Vec<u8>) -> Result<Logged, StoreError> {
        SledStore::append_policy(self, leaf).await
    }

    async fn latest_policy(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        SledStore::latest_policy(self)
    }

    async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        SledStore::inclusion_proof(self, index, size)
    }

    async fn inclusion_proofs(
        &self,
        indexes: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Hash>>, StoreError> {
        SledStore::inclusion_proofs(self, indexes, size)
    }

    async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        SledStore::consistency_proof(self, old_size, new_size)
    }
}

/// sled's errors in the hub's terms: its corruption report is corruption; anything else (I/O,
/// a collection that cannot open) leaves the store unavailable, with sled's error as source.
impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::Unavailable(Box::new(other)),
        }
    }
}
