//! The hub's storage, shaped like the domain. The only module that imports sled.
//!
//! Trees and key layouts (all integers big-endian, so byte order is numeric order):
//!
//! ```text
//! summaries   publisher 0x00 summary_id 0x00 version:u32        -> 0x01 || RecordV1 of a superseded version (protobuf; older stores: every version)
//! latest      publisher 0x00 summary_id                         -> version:u32 log_index:u64 (older stores: version:u32 alone)
//! by_patient  pseudonym[32] system 0x00 code 0x00 inv_performed:u64 publisher 0x00 summary_id -> ()
//! certs       sha256(certificate DER)[32]                        -> certificate DER
//! consulted   member 0x00 publisher 0x00 summary_id                -> 0x01 || ConsultationV1 (older stores; read, no longer written)
//! shown       member 0x00 pseudonym[32]                          -> 0x01 || ShownV1
//! decisions   member 0x00 decision_id                            -> 0x01 || DecisionV1
//! events      at_ms:u64 seq:u64                                  -> 0x01 || EventV1, or 0x02 || EventGroupV1 (events at the same ms)
//! consent     pseudonym[32]                                      -> 0x01 || ConsentV1
//! access      pseudonym[32] at_ms:u64 log_index:u64              -> ()
//! log_leaves  index:u64                                          -> leaf bytes (huren_core::logentry)
//! log_tiles   tile:u64                                           -> hash[32] of each of its leaves (16, fewer in the last tile)
//! log_nodes   level:u8 index:u64                                 -> hash[32] of a complete subtree (level >= 5; older stores: >= 1)
//! log_meta    "size"                                             -> tree size:u64
//!             "tiles_from"                                       -> first tile:u64 in log_tiles
//! ```
//!
//! The log (RFC 6962 tree, see `huren_core::merkle`): `log_leaves` holds every leaf, `log_meta`
//! the size. Tile t holds the hashes of leaves 16t to 16t + 15, so one read gives every node
//! of levels 0 to 4 inside it (at most 15 hashes to fold); `log_nodes` holds the complete
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
//! patient for the access report. A `latest` entry names the latest version's leaf, so a query
//! reads two keys per result (latest entry, leaf) and takes what it returns from the log alone;
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
//! [`Store::commit`] returns, that is after a flush that covers the write: concurrent writers
//! share flushes (group commit), so a receipt is never sent for data that a `kill -9` right
//! after could lose. sled's flush is
//! `sync_file_range` on Linux: it survives a crashed or killed process, not necessarily a power
//! cut.

mod writeset;

use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use huren_core::identity::InstitutionId;
use huren_core::logentry::{Entry, Method, Purpose, ResultRef};
use huren_core::merkle::{self, Hash};
use huren_core::pseudonym::Pseudonym;
pub use huren_core::receipt::Receipt;
use huren_core::rules::RetestReason;
use huren_core::signing::{SignedEnvelope, VerifiedSummary, sha256};
use huren_core::stats::{ConsultationKey, Event, EventKind};
use huren_core::summary::{SuccessionError, Summary, UnixMillis};
use writeset::{TreeId, Trees, WriteSet};

use crate::batch::{Worker, next_batch};

/// First byte of every stored record: the record layout version.
const RECORD_V1: u8 = 1;

/// A stored summary version as kept on disk (store-private layout, version [`RECORD_V1`]).
#[derive(Clone, PartialEq, prost::Message)]
struct RecordV1 {
    /// The body bytes exactly as signed. Empty in records written since the log holds them:
    /// the leaf at `log_index` has body, signature, acceptance time and signer, and reads take
    /// all of them from there (see [`Store::summary_at_leaf`]).
    #[prost(bytes = "vec", tag = "1")]
    body: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    signature: Vec<u8>,
    /// SHA-256 of the signing certificate's DER; the DER is in the `certs` tree. Empty, like
    /// `body`, in records whose leaf holds it.
    #[prost(bytes = "vec", tag = "3")]
    signer_certificate_sha256: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    body_sha256: Vec<u8>,
    #[prost(int64, tag = "5")]
    accepted_at_ms: i64,
    /// Index of the version's leaf in the log.
    #[prost(uint64, tag = "6")]
    log_index: u64,
}

/// A patient's sharing consent (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
struct ConsentV1 {
    #[prost(bool, tag = "1")]
    opted_out: bool,
    /// The member that recorded it.
    #[prost(string, tag = "2")]
    member: String,
    #[prost(int64, tag = "3")]
    at_ms: i64,
    #[prost(uint64, tag = "4")]
    log_index: u64,
}

/// What a member was shown of a result (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
struct ConsultationV1 {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bool, tag = "2")]
    recognised: bool,
    #[prost(string, tag = "3")]
    item_system: String,
    #[prost(string, tag = "4")]
    item_code: String,
    #[prost(int64, tag = "5")]
    at_ms: i64,
}

/// What a member was shown for one patient (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
struct ShownV1 {
    #[prost(message, repeated, tag = "1")]
    results: Vec<ShownResultV1>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ShownResultV1 {
    #[prost(string, tag = "1")]
    publisher: String,
    #[prost(string, tag = "2")]
    summary_id: String,
    #[prost(message, optional, tag = "3")]
    consultation: Option<ConsultationV1>,
}

/// Statistics events that happened in the same millisecond (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
struct EventGroupV1 {
    #[prost(message, repeated, tag = "1")]
    events: Vec<EventV1>,
}

/// First byte of an [`EventGroupV1`] value in `events` (a single [`EventV1`] has
/// [`RECORD_V1`]).
const EVENT_GROUP_V1: u8 = 2;

/// A recorded decision (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
struct DecisionV1 {
    #[prost(string, tag = "1")]
    publisher: String,
    #[prost(string, tag = "2")]
    summary_id: String,
    #[prost(uint32, tag = "3")]
    version: u32,
    #[prost(bool, tag = "4")]
    adopted: bool,
    /// Re-test reason code, empty for none.
    #[prost(string, tag = "5")]
    reason: String,
    #[prost(string, tag = "6")]
    note: String,
    #[prost(int64, tag = "7")]
    at_ms: i64,
    #[prost(bool, tag = "8")]
    recognised: bool,
}

/// A statistics event (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
struct EventV1 {
    #[prost(int64, tag = "1")]
    at_ms: i64,
    #[prost(string, tag = "2")]
    member: String,
    #[prost(string, tag = "3")]
    item_system: String,
    #[prost(string, tag = "4")]
    item_code: String,
    #[prost(uint64, tag = "5")]
    price_fen: u64,
    /// 1 = query, 2 = decision.
    #[prost(uint32, tag = "6")]
    kind: u32,
    #[prost(bool, tag = "7")]
    found: bool,
    #[prost(bool, tag = "8")]
    cross_member: bool,
    #[prost(bool, tag = "9")]
    adopted: bool,
    #[prost(string, tag = "10")]
    reason: String,
    /// The consultation a decision is about (empty in decisions stored before they named one).
    #[prost(string, tag = "11")]
    consulted_publisher: String,
    #[prost(string, tag = "12")]
    consulted_summary_id: String,
    #[prost(int64, tag = "13")]
    consulted_at_ms: i64,
}

/// What a member was shown of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consultation {
    pub version: u32,
    pub recognised: bool,
    pub item_system: String,
    pub item_code: String,
    pub at: UnixMillis,
}

/// A decision to record.
#[derive(Clone, Debug)]
pub struct DecisionRecord {
    pub member: InstitutionId,
    pub decision_id: String,
    pub publisher: InstitutionId,
    pub summary_id: String,
    pub version: u32,
    pub adopted: bool,
    pub reason: Option<RetestReason>,
    pub note: String,
    pub at: UnixMillis,
    pub recognised: bool,
    pub event: Event,
}

/// What became of a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecisionOutcome {
    Recorded { at: UnixMillis },
    AlreadyRecorded { at: UnixMillis, recognised: bool },
}

/// A stored summary version: the envelope as published and its receipt.
#[derive(Clone, Debug)]
pub struct StoredSummary {
    pub envelope: SignedEnvelope,
    pub receipt: Receipt,
    /// The body, decoded.
    pub summary: Summary,
    /// Index of the version's leaf in the log.
    pub log_index: u64,
}

/// A tree size and its root: what a checkpoint states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHead {
    pub size: u64,
    pub root: Hash,
}

/// Where a write landed in the log, and a tree head that includes it and is durable once the
/// write's call returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logged {
    pub index: u64,
    pub head: TreeHead,
}

/// An access to log (see `huren_core::logentry::Entry::Access`).
#[derive(Clone, Debug)]
pub struct Access {
    pub at: UnixMillis,
    pub caller: InstitutionId,
    pub purpose: Purpose,
    pub method: Method,
    pub emergency_override: bool,
    pub withheld_by_consent: bool,
    pub patient: Pseudonym,
    pub results: Vec<ResultRef>,
    /// The version label of the policy in force, whose rules judged the answer.
    pub policy_version: String,
}

/// A result a member was shown, as remembered for its decisions.
#[derive(Clone, Debug)]
pub struct Shown {
    pub publisher: String,
    pub summary_id: String,
    pub version: u32,
    pub item_system: String,
    pub item_code: String,
    pub recognised: bool,
}

/// Everything one answered query leaves behind.
#[derive(Clone, Debug)]
pub struct QueryRecord {
    pub member: InstitutionId,
    pub shown: Vec<Shown>,
    pub events: Vec<Event>,
    pub access: Access,
}

/// One stored (or already stored) version of a batch: its outcome, its leaf's index and the
/// leaf's inclusion proof against the batch's tree head.
#[derive(Clone, Debug)]
pub struct Put {
    pub outcome: PutOutcome,
    pub index: u64,
    pub proof: Vec<Hash>,
}

/// What became of a batch of puts: one result per version, in order, and the tree head right
/// after the batch (durable once [`Store::commit`] returns).
#[derive(Debug)]
pub struct PutBatch {
    pub results: Vec<Result<Put, StoreError>>,
    pub head: TreeHead,
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
    #[error("version {version} of {key} cannot be stored: {reason}")]
    Succession {
        key: String,
        version: u32,
        reason: SuccessionError,
    },
    #[error("storage engine: {0}")]
    Engine(#[from] sled::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the store at {} is in use by another process (is another hub running on it?)",
        .0.display()
    )]
    InUse(std::path::PathBuf),
    #[error("the store's commit thread has stopped")]
    CommitterGone,
    #[error("query journal: {0}")]
    Journal(String),
    #[error("publish writer: {0}")]
    Intake(String),
    #[error("decision {decision_id} was already recorded for another result")]
    DecisionIdReused { decision_id: String },
    #[error("the log has no tree of size {size} (it has {current} entries)")]
    BeyondLog { size: u64, current: u64 },
    #[error("log: {0}")]
    Tree(String),
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
    /// Signing certificates already read, by SHA-256 of their DER.
    cert_cache: RwLock<HashMap<Vec<u8>, Arc<[u8]>>>,
    consulted: sled::Tree,
    shown: sled::Tree,
    decisions: sled::Tree,
    events: sled::Tree,
    consent: sled::Tree,
    access: sled::Tree,
    log_leaves: sled::Tree,
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

/// Leaves appended, in order, to a copy of the log's state, each written into the caller's
/// [`WriteSet`] as it comes: the leaf, the nodes above the tiles it completes, and its tile if
/// it fills one. [`Growth::finish`] adds the last, incomplete tile and the new size, after
/// everything they make reachable. The real state moves only once the set is applied.
struct Growth {
    start_size: u64,
    /// The incomplete tile as stored when the growth began (what undoing the set restores).
    start_tile: Option<Vec<u8>>,
    next: LogState,
}

/// One leaf appended by a [`Growth`].
struct Appended {
    index: u64,
    /// Every node the leaf completed, from its own hash (level 0) up: what a proof against
    /// the new size needs before the write is applied.
    nodes: Vec<(u8, u64, Hash)>,
}

impl Growth {
    fn new(log: &LogState) -> Self {
        Self {
            start_size: log.size,
            start_tile: (!log.tile.is_empty()).then(|| tile_value(&log.tile)),
            next: LogState {
                size: log.size,
                frontier: log.frontier.clone(),
                tile: log.tile.clone(),
            },
        }
    }

    /// The index the next leaf gets.
    fn next_index(&self) -> u64 {
        self.next.size
    }

    fn push(&mut self, ws: &mut WriteSet, leaf: Vec<u8>) -> Appended {
        let index = self.next.size;
        let hash = merkle::leaf_hash(&leaf);
        let nodes = merkle::append(&mut self.next.frontier, index, hash);
        ws.add(TreeId::LogLeaves, index.to_be_bytes(), leaf);
        for (level, at, node) in nodes.iter().filter(|(level, _, _)| *level > TILE_LEVEL) {
            ws.add(TreeId::LogNodes, node_key(*level, *at), node.as_slice());
        }
        self.next.size += 1;
        self.next.tile.push(hash);
        if self.next.tile.len() as u64 == TILE_LEAVES {
            self.write_tile(ws, index / TILE_LEAVES);
            self.next.tile.clear();
        }
        Appended { index, nodes }
    }

    fn write_tile(&self, ws: &mut WriteSet, block: u64) {
        // Only the tile that was incomplete at the start can have a stored value.
        let before = match block == self.start_size / TILE_LEAVES {
            true => self.start_tile.as_deref(),
            false => None,
        };
        ws.replace(
            TreeId::LogTiles,
            block.to_be_bytes(),
            tile_value(&self.next.tile),
            before,
        );
    }

    /// Adds the incomplete last tile and the new size (if any leaf was appended) and returns
    /// the state to keep once the set is applied.
    fn finish(self, ws: &mut WriteSet) -> LogState {
        if self.next.size != self.start_size {
            if !self.next.tile.is_empty() {
                self.write_tile(ws, self.next.size / TILE_LEAVES);
            }
            let before = self.start_size.to_be_bytes();
            let before = (self.start_size > 0).then_some(before.as_slice());
            ws.replace(
                TreeId::LogMeta,
                LOG_SIZE_KEY,
                self.next.size.to_be_bytes(),
                before,
            );
        }
        self.next
    }
}

/// Leaves per tile. A tile's value is the hashes of its leaves, so one read gives every node
/// of levels 0 to [`TILE_LEVEL`] inside it.
const TILE_LEAVES: u64 = 16;
/// The level of a tile's root: nodes up to this level come from tiles, nodes above from
/// `log_nodes`.
const TILE_LEVEL: u8 = 4;
const _: () = assert!(TILE_LEAVES == 1 << TILE_LEVEL);

/// A tile's stored value: its leaf hashes, in order.
fn tile_value(hashes: &[Hash]) -> Vec<u8> {
    hashes.concat()
}

/// The hashes in (part of) a tile's stored value; a trailing partial hash is ignored (callers
/// check the length).
fn tile_hashes(raw: &[u8]) -> Vec<Hash> {
    raw.chunks_exact(32)
        .map(|h| {
            let mut hash = [0; 32];
            hash.copy_from_slice(h);
            hash
        })
        .collect()
}

const LOG_SIZE_KEY: &[u8] = b"size";
/// The first tile of the log whose value is in `log_tiles` (see [`start_tiles`]).
const TILES_FROM_KEY: &[u8] = b"tiles_from";

/// How long opening waits for a store that is locked (see [`Store::open_with_cache`]).
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// How old the newest known durable head may get, while the log grows, before
/// [`Store::recent_durable_head`] starts a flush to refresh it.
const DURABLE_HEAD_MAX_AGE: Duration = Duration::from_millis(250);

fn node_key(level: u8, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The log leaf of an access.
fn access_leaf(a: &Access) -> Vec<u8> {
    Entry::Access {
        at: a.at,
        caller: a.caller.to_string(),
        purpose: a.purpose,
        method: a.method,
        emergency_override: a.emergency_override,
        withheld_by_consent: a.withheld_by_consent,
        pseudonym: *a.patient.as_bytes(),
        results: a.results.clone(),
        policy_version: Some(a.policy_version.clone()),
    }
    .encode()
}

/// Reads complete-subtree hashes from memory where a batch already has them, from the store
/// otherwise.
struct Layered<'a> {
    known: &'a HashMap<(u8, u64), Hash>,
    store: Nodes<'a>,
}

impl merkle::NodeReader for Layered<'_> {
    type Error = StoreError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        match self.known.get(&(level, index)) {
            Some(h) => Ok(*h),
            None => self.store.node(level, index),
        }
    }
}

/// One summary version of a batch, with its keys and leaf worked out before the store is read.
struct PreparedPut<'a> {
    verified: &'a VerifiedSummary,
    accepted_at: UnixMillis,
    rkey: Vec<u8>,
    vkey: Vec<u8>,
    index_key: Vec<u8>,
    cert_hash: Hash,
    leaf: Vec<u8>,
}

impl<'a> PreparedPut<'a> {
    fn new(v: &'a VerifiedSummary, accepted_at: UnixMillis) -> Self {
        let s = &v.summary;
        let rkey = result_key(s.publisher.as_str(), s.id.as_str());
        let vkey = version_key(s.publisher.as_str(), s.id.as_str(), s.version);
        let cert_hash = sha256(&v.envelope.signer_certificate);
        let leaf = Entry::Summary {
            accepted_at,
            signer_certificate_sha256: cert_hash,
            signature: v.envelope.signature,
            body: v.envelope.body.clone(),
        }
        .encode();
        let mut index_key = item_prefix(&s.patient, &s.item.system, &s.item.code);
        index_key.extend_from_slice(&inv_time(s.performed_at));
        index_key.extend_from_slice(&rkey);
        Self {
            verified: v,
            accepted_at,
            rkey,
            vkey,
            index_key,
            cert_hash,
            leaf,
        }
    }

    fn receipt(&self, accepted_at_ms: i64) -> Receipt {
        let s = &self.verified.summary;
        Receipt {
            publisher: s.publisher.clone(),
            summary_id: s.id.clone(),
            version: s.version,
            body_sha256: self.verified.body_sha256,
            accepted_at: UnixMillis(accepted_at_ms),
        }
    }
}

/// Levels of the Merkle tree whose nodes are kept in memory once read: an inclusion proof takes
/// one node per level, and the nodes from this level up are a quarter of the tree's leaves in
/// number (10-20 MB per million log entries, with the map's spare room) and shared by every
/// proof. Below it, a proof takes three nodes (the sibling leaf's hash and the siblings at
/// levels 1 and 2), each folded from the leaf's tile unless [`RECENT_NODES`] has it. Level 3
/// rather than 6 made FindPrior with proofs 15% faster at 100,000 summaries (measured before
/// tiles, when each of those was a read of its own); level 1 gained no more than noise.
const CACHED_LEVELS: u8 = 3;

/// Lower-level nodes (and leaf hashes) kept once read, at most this many (about 4 MB); the
/// set is emptied when full. Every proof against a recent tree size needs the nodes along the
/// tree's right edge, so these are read from sled once rather than once per proof.
const RECENT_NODES: usize = 1 << 16;

/// A node's place as one number: its level in the top byte, its index below (a log never
/// reaches 2^56 entries).
fn node_place(level: u8, index: u64) -> u64 {
    (u64::from(level) << 56) | (index & ((1 << 56) - 1))
}

/// Hashes a [`node_place`] with MurmurHash3's 64-bit finaliser (two multiplications and three
/// shifts): the places are not chosen by anyone outside, so SipHash's protection against chosen
/// keys buys nothing here, and it was a visible part of every proof. A bare multiplication
/// would not do: the map picks buckets by the low bits, which a product takes from the low
/// bits of the place only, so the same index at two levels would share a bucket.
#[derive(Default)]
struct PlaceHasher(u64);

impl std::hash::Hasher for PlaceHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let mut x = n ^ (n >> 33);
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        self.0 = x ^ (x >> 33);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type NodeMap = HashMap<u64, Hash, std::hash::BuildHasherDefault<PlaceHasher>>;

/// Merkle node hashes read from the store (see [`Nodes`]).
#[derive(Default)]
struct NodeCache {
    /// Levels [`CACHED_LEVELS`] and up: kept.
    upper: RwLock<NodeMap>,
    /// Lower levels: at most [`RECENT_NODES`].
    recent: RwLock<NodeMap>,
}

impl NodeCache {
    fn map(&self, level: u8) -> &RwLock<NodeMap> {
        if level >= CACHED_LEVELS {
            &self.upper
        } else {
            &self.recent
        }
    }

    fn get(&self, level: u8, index: u64) -> Option<Hash> {
        self.map(level)
            .read()
            .ok()?
            .get(&node_place(level, index))
            .copied()
    }

    fn insert(&self, level: u8, index: u64, hash: Hash) {
        if let Ok(mut map) = self.map(level).write() {
            if level < CACHED_LEVELS && map.len() >= RECENT_NODES {
                map.clear();
            }
            map.insert(node_place(level, index), hash);
        }
    }
}

/// Reads complete-subtree hashes from `log_tiles` and `log_nodes` (and, in tiles written
/// before the store had `log_tiles`, from `log_leaves`), through a [`NodeCache`].
///
/// A complete subtree's hash never changes once its write is applied, and only applied
/// subtrees are read (proofs are for sizes up to the applied head), so the cache needs no
/// invalidation: a write undone at open belongs to an earlier process. An incomplete tile's
/// stored value only grows, and holds at least the leaves of the applied head.
struct Nodes<'a> {
    nodes: &'a sled::Tree,
    tiles: &'a sled::Tree,
    leaves: &'a sled::Tree,
    tiles_from: u64,
    cache: &'a NodeCache,
    /// The tile read last: a proof takes up to four nodes from its leaf's tile.
    last_tile: std::cell::RefCell<Option<(u64, sled::IVec)>>,
}

impl<'a> Nodes<'a> {
    fn of(i: &'a Inner) -> Self {
        Self {
            nodes: &i.log_nodes,
            tiles: &i.log_tiles,
            leaves: &i.log_leaves,
            tiles_from: i.tiles_from,
            cache: &i.node_cache,
            last_tile: std::cell::RefCell::new(None),
        }
    }

    /// Tile `block`'s value, read once for consecutive nodes inside it.
    fn tile(&self, block: u64) -> Result<sled::IVec, StoreError> {
        if let Some((b, raw)) = &*self.last_tile.borrow()
            && *b == block
        {
            return Ok(raw.clone());
        }
        let raw = self
            .tiles
            .get(block.to_be_bytes())?
            .ok_or_else(|| StoreError::Corrupt(format!("log tile {block} is missing")))?;
        *self.last_tile.borrow_mut() = Some((block, raw.clone()));
        Ok(raw)
    }

    /// A node inside a tile (level up to [`TILE_LEVEL`]), folded up from the tile's hashes.
    fn in_tile(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        let block = index >> (TILE_LEVEL - level);
        let raw = self.tile(block)?;
        let first = ((index << level) - block * TILE_LEAVES) as usize;
        let width = 1usize << level;
        let row = raw.get(first * 32..(first + width) * 32).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "log tile {block} holds {} hashes, node ({level}, {index}) needs {}",
                raw.len() / 32,
                first + width
            ))
        })?;
        let mut row = tile_hashes(row);
        while row.len() > 1 {
            row = row
                .chunks_exact(2)
                .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
                .collect();
        }
        Ok(row[0])
    }

    /// A node as stores without tiles kept it: leaf hashes from the leaves, the rest in
    /// `log_nodes`.
    fn stored(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        if level == 0 {
            let leaf = self
                .leaves
                .get(index.to_be_bytes())?
                .ok_or_else(|| StoreError::Corrupt(format!("log leaf {index} is missing")))?;
            return Ok(merkle::leaf_hash(&leaf));
        }
        let raw = self.nodes.get(node_key(level, index))?.ok_or_else(|| {
            StoreError::Corrupt(format!("log node ({level}, {index}) is missing"))
        })?;
        raw.as_ref().try_into().map_err(|_| {
            StoreError::Corrupt(format!("log node ({level}, {index}) is not 32 bytes"))
        })
    }
}

impl merkle::NodeReader for Nodes<'_> {
    type Error = StoreError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        if let Some(hash) = self.cache.get(level, index) {
            return Ok(hash);
        }
        let in_tiles = level <= TILE_LEVEL && index >> (TILE_LEVEL - level) >= self.tiles_from;
        let hash = match in_tiles {
            true => self.in_tile(level, index)?,
            false => self.stored(level, index)?,
        };
        self.cache.insert(level, index, hash);
        Ok(hash)
    }
}

fn tree_error(e: merkle::TreeError<StoreError>) -> StoreError {
    match e {
        merkle::TreeError::Node { source, .. } => source,
        other => StoreError::Tree(other.to_string()),
    }
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

/// The result key (`publisher 0x00 summary_id`) a patient index key ends with: past the
/// pseudonym, the 0x00-terminated system and code, and the 8-byte time.
fn indexed_result(key: &[u8]) -> Result<&[u8], StoreError> {
    let malformed = || StoreError::Corrupt("malformed patient index key".into());
    let rest = key.get(32..).ok_or_else(malformed)?;
    let mut zeros = rest
        .iter()
        .enumerate()
        .filter(|&(_, b)| *b == 0)
        .map(|(i, _)| i);
    let (Some(_), Some(code_end)) = (zeros.next(), zeros.next()) else {
        return Err(malformed());
    };
    rest.get(code_end + 1 + 8..).ok_or_else(malformed)
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

/// A `latest` value: the version and, in values written since bodies live in the log, the
/// index of that version's leaf, so a query reads the leaf without going through the record.
fn read_latest(bytes: &[u8]) -> Result<(u32, Option<u64>), StoreError> {
    let corrupt = || StoreError::Corrupt("a latest-version entry is neither 4 nor 12 bytes".into());
    let (version, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let version = u32::from_be_bytes(*version);
    match rest.len() {
        0 => Ok((version, None)),
        8 => Ok((
            version,
            Some(u64::from_be_bytes(rest.try_into().map_err(|_| corrupt())?)),
        )),
        _ => Err(corrupt()),
    }
}

/// The fields of a summary version's log leaf ([`Entry::Summary`]).
struct SummaryLeaf {
    accepted_at: UnixMillis,
    signer_certificate_sha256: Hash,
    signature: [u8; 64],
    body: Vec<u8>,
}

/// The record of a version that a newer one superseded: body, signature and signer stay in
/// its log leaf; the record keeps what a republished version is checked against (digest,
/// acceptance time) and where its leaf is.
fn superseded_record(body_sha256: Hash, accepted_at_ms: i64, log_index: u64) -> RecordV1 {
    RecordV1 {
        body: Vec::new(),
        signature: Vec::new(),
        signer_certificate_sha256: Vec::new(),
        body_sha256: body_sha256.to_vec(),
        accepted_at_ms,
        log_index,
    }
}

fn latest_value(version: u32, log_index: u64) -> [u8; 12] {
    let mut v = [0; 12];
    v[..4].copy_from_slice(&version.to_be_bytes());
    v[4..].copy_from_slice(&log_index.to_be_bytes());
    v
}

/// sled's own default page cache, 1 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

/// The first tile of the log kept in `log_tiles`, from `log_meta`. A store written before tiles
/// kept every node in `log_nodes` and has no such key: its tiles begin with the one the log is
/// filling, whose value is built here from its leaves (at most 15 reads), once. Nothing is
/// rewritten: the nodes of earlier tiles stay where they are and are read from there.
fn start_tiles(inner: &Inner, size: u64) -> Result<u64, StoreError> {
    if let Some(raw) = inner.log_meta.get(TILES_FROM_KEY)? {
        let raw: [u8; 8] = raw
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::Corrupt("the log's first tile is not 8 bytes".into()))?;
        return Ok(u64::from_be_bytes(raw));
    }
    let from = size / TILE_LEAVES;
    let mut ws = WriteSet::new();
    if !size.is_multiple_of(TILE_LEAVES) {
        // Leaf hashes as those stores kept them: from the leaves.
        let nodes = Nodes::of(inner);
        let hashes = (from * TILE_LEAVES..size)
            .map(|index| nodes.stored(0, index))
            .collect::<Result<Vec<Hash>, _>>()?;
        let key = from.to_be_bytes();
        let before = inner.log_tiles.get(key)?;
        ws.replace(
            TreeId::LogTiles,
            key,
            tile_value(&hashes),
            before.as_deref(),
        );
    }
    ws.add(TreeId::LogMeta, TILES_FROM_KEY, from.to_be_bytes());
    ws.apply(inner)?;
    inner.db.flush()?;
    if size > 0 {
        tracing::info!(
            first_tile = from,
            "the log keeps its lower nodes in tiles from here on"
        );
    }
    Ok(from)
}

impl Store {
    /// Opens (or creates) the store in `dir` with the default page cache
    /// ([`DEFAULT_CACHE_BYTES`]) and starts its commit thread. Dropping the last handle
    /// waits for that thread to end, so the directory can be opened again right after.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with a page cache of at most `cache_bytes`: the memory sled may use to
    /// keep the store's pages (most of the hub's resident memory once queries have read them).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
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
        let mut inner = Inner {
            consent: db.open_tree("consent")?,
            access: db.open_tree("access")?,
            log_leaves: db.open_tree("log_leaves")?,
            log_nodes: db.open_tree("log_nodes")?,
            log_tiles: db.open_tree("log_tiles")?,
            tiles_from: 0,
            node_cache: NodeCache::default(),
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
        inner.commits = Some(
            Worker::start("huren-commit", move |rx| group_commit(db, rx))
                .map_err(|e| StoreError::Engine(sled::Error::Io(e)))?,
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
            let next = growth.finish(&mut ws);
            ws.apply(&**i)?;
            *log = next;
            self.set_applied(log.head());
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
            .map_err(|e| StoreError::Engine(sled::Error::Io(std::io::Error::other(e))))?;
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

    /// Stores summary versions in one atomic write, in order, each with its own outcome: a
    /// refused version (a conflict, a version out of order) refuses only itself. Versions of one
    /// result may follow each other in the same batch. Returns each stored version's inclusion
    /// proof against the tree head right after the batch, computed from the nodes the batch
    /// wrote and the frontier before it (no store reads, except for duplicates).
    ///
    /// Not durable on return: call [`Store::commit`] before acknowledging anything.
    pub fn put_summaries(
        &self,
        items: &[(&VerifiedSummary, UnixMillis)],
    ) -> Result<PutBatch, StoreError> {
        let prepared: Vec<PreparedPut> = items
            .iter()
            .map(|(v, at)| PreparedPut::new(v, *at))
            .collect();
        let i = &self.inner;
        let mut log = self.log_state()?;
        let before_size = log.size;
        let mut growth = Growth::new(&log);
        // What this batch stores, for the versions after it in the same batch.
        let mut staged_versions: HashMap<&[u8], (Hash, i64, u64)> = HashMap::new();
        let mut staged_latest: HashMap<&[u8], [u8; 12]> = HashMap::new();
        let mut staged_certs: HashSet<Hash> = HashSet::new();
        let mut new_certs: Vec<(&Hash, &[u8])> = Vec::new();
        let mut staged_index: HashSet<&[u8]> = HashSet::new();
        // The latest version of each result this batch stores, for a later version's check.
        let mut staged_summaries: HashMap<&[u8], &Summary> = HashMap::new();
        let mut ws = WriteSet::new();
        // Written after the rest, so a reader never finds an index entry or a latest version
        // before the leaf (or record) it points to.
        let mut references = WriteSet::new();
        let mut written = Vec::new();
        let mut results = Vec::with_capacity(prepared.len());
        for p in &prepared {
            let s = &p.verified.summary;
            // The latest version as stored (its raw value is what undoing the write restores).
            let stored_raw = match staged_latest.get(p.rkey.as_slice()) {
                Some(v) => Some(v.to_vec()),
                None => i.latest.get(&p.rkey)?.map(|v| v.to_vec()),
            };
            let stored_latest = stored_raw.as_deref().map(read_latest).transpose()?;
            let stored = stored_latest.map(|(version, _)| version);
            let existing = match staged_versions.get(p.vkey.as_slice()) {
                Some(&(digest, at, index)) => Some((digest, at, index)),
                None => match stored_latest {
                    // The latest version has no record: its leaf is all there is.
                    Some((version, Some(index))) if version == s.version => {
                        let (digest, at) = self.leaf_digest(index)?;
                        Some((digest, at.0, index))
                    }
                    Some((version, _)) if version >= s.version => {
                        match i.summaries.get(&p.vkey)? {
                            Some(raw) => {
                                let old = decode_record(&raw)?;
                                let digest =
                                    old.body_sha256.as_slice().try_into().map_err(|_| {
                                        StoreError::Corrupt("body digest is not 32 bytes".into())
                                    })?;
                                Some((digest, old.accepted_at_ms, old.log_index))
                            }
                            None => {
                                return Err(StoreError::Corrupt(format!(
                                    "version {} of a result is missing",
                                    s.version
                                )));
                            }
                        }
                    }
                    _ => None,
                },
            };
            if let Some((digest, at, index)) = existing {
                let same = digest == p.verified.body_sha256;
                results.push(if same {
                    Ok((Some(at), index))
                } else {
                    Err(StoreError::Conflict {
                        key: s.result_key(),
                        version: s.version,
                    })
                });
                continue;
            }
            let expected = stored.map_or(1, |v| v + 1);
            if s.version != expected {
                let reason = match stored {
                    None => "the first version of a result must be 1".to_owned(),
                    Some(v) => format!("the stored version is {v}, so the next must be {expected}"),
                };
                results.push(Err(StoreError::OutOfOrder {
                    key: s.result_key(),
                    version: s.version,
                    reason,
                }));
                continue;
            }
            // A new version never moves a result to another patient nor revives a void.
            if let Some((previous_version, previous_index)) = stored_latest {
                let follows = match staged_summaries.get(p.rkey.as_slice()) {
                    Some(&previous) => s.may_follow(previous),
                    None => {
                        s.may_follow(&self.stored_version(s, previous_version, previous_index)?)
                    }
                };
                if let Err(reason) = follows {
                    results.push(Err(StoreError::Succession {
                        key: s.result_key(),
                        version: s.version,
                        reason,
                    }));
                    continue;
                }
            }
            if !staged_certs.contains(&p.cert_hash)
                && !self.certificate_cached(&p.cert_hash)
                && !i.certs.contains_key(p.cert_hash)?
            {
                ws.add(
                    TreeId::Certs,
                    p.cert_hash.as_slice(),
                    p.verified.envelope.signer_certificate.as_slice(),
                );
                new_certs.push((
                    &p.cert_hash,
                    p.verified.envelope.signer_certificate.as_slice(),
                ));
            }
            staged_certs.insert(p.cert_hash);
            let pending = growth.push(&mut ws, p.leaf.clone());
            // The latest version has no record (its latest-version entry names its leaf); the
            // version it supersedes gets one now, unless it has one (older stores wrote a
            // record for every version).
            if let Some((previous, Some(previous_index))) = stored_latest {
                let pkey = version_key(s.publisher.as_str(), s.id.as_str(), previous);
                let record = match staged_versions.get(pkey.as_slice()) {
                    Some(&(digest, at, _)) => Some((digest, at)),
                    None if i.summaries.contains_key(&pkey)? => None,
                    None => {
                        let (digest, at) = self.leaf_digest(previous_index)?;
                        Some((digest, at.0))
                    }
                };
                if let Some((digest, at)) = record {
                    ws.add(
                        TreeId::Summaries,
                        pkey,
                        encode_v1(&superseded_record(digest, at, previous_index)),
                    );
                }
            }
            let latest = latest_value(s.version, pending.index);
            references.replace(
                TreeId::Latest,
                p.rkey.as_slice(),
                latest,
                stored_raw.as_deref(),
            );
            // An amendment with the same patient, item and time has its entry already (and
            // undoing it must not remove it).
            let indexed = staged_index.contains(p.index_key.as_slice())
                || (stored.is_some() && i.by_patient.contains_key(&p.index_key)?);
            if !indexed {
                references.add(TreeId::ByPatient, p.index_key.as_slice(), Vec::new());
                staged_index.insert(&p.index_key);
            }
            staged_versions.insert(
                &p.vkey,
                (p.verified.body_sha256, p.accepted_at.0, pending.index),
            );
            staged_latest.insert(&p.rkey, latest);
            staged_summaries.insert(&p.rkey, s);
            results.push(Ok((None, pending.index)));
            written.extend(pending.nodes);
        }
        let next = growth.finish(&mut ws);
        ws.extend(references);
        ws.apply(&**i)?;
        for (hash, der) in new_certs {
            self.cache_certificate(hash, der.into());
        }
        // The nodes a proof for this batch needs are the ones it wrote and, to their left, the
        // frontier before it.
        let mut known: HashMap<(u8, u64), Hash> = merkle::frontier_nodes(before_size)
            .zip(log.frontier.iter().copied())
            .collect();
        known.extend(written.into_iter().map(|(l, i, h)| ((l, i), h)));
        *log = next;
        let head = log.head();
        self.set_applied(head);
        drop(log);
        let reader = Layered {
            known: &known,
            store: Nodes::of(i),
        };
        let results = results
            .into_iter()
            .zip(&prepared)
            .map(|(r, p)| {
                let (earlier, index) = r?;
                let proof =
                    merkle::inclusion_proof(index, head.size, &reader).map_err(tree_error)?;
                let receipt = p.receipt(earlier.unwrap_or(p.accepted_at.0));
                let outcome = match earlier {
                    Some(_) => PutOutcome::AlreadyStored(receipt),
                    None => PutOutcome::Stored(receipt),
                };
                Ok(Put {
                    outcome,
                    index,
                    proof,
                })
            })
            .collect();
        Ok(PutBatch { results, head })
    }

    /// Loads the latest version of a result.
    fn load_latest(&self, rkey: &[u8]) -> Result<Option<StoredSummary>, StoreError> {
        let Some(v) = self.inner.latest.get(rkey)? else {
            return Ok(None);
        };
        let (version, log_index) = read_latest(&v)?;
        if let Some(index) = log_index {
            let stored = self.summary_at_leaf(index)?;
            let s = &stored.summary;
            if s.version != version || result_key(s.publisher.as_str(), s.id.as_str()) != rkey {
                return Err(StoreError::Corrupt(format!(
                    "log leaf {index} is not version {version} of the result its latest-version entry names"
                )));
            }
            return Ok(Some(stored));
        }
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

    /// The summary leaf at `index`, decoded.
    fn summary_leaf(&self, index: u64) -> Result<SummaryLeaf, StoreError> {
        let leaf = self
            .inner
            .log_leaves
            .get(index.to_be_bytes())?
            .ok_or_else(|| StoreError::Corrupt(format!("log leaf {index} is missing")))?;
        match Entry::decode(&leaf) {
            Ok(Entry::Summary {
                accepted_at,
                signer_certificate_sha256,
                signature,
                body,
            }) => Ok(SummaryLeaf {
                accepted_at,
                signer_certificate_sha256,
                signature,
                body,
            }),
            Ok(_) => Err(StoreError::Corrupt(format!(
                "log leaf {index} is not a summary"
            ))),
            Err(e) => Err(StoreError::Corrupt(format!(
                "log leaf {index} does not decode: {e}"
            ))),
        }
    }

    /// Version `version` of the result `s` belongs to, decoded from its leaf (`index`) or, in
    /// stores written before the log held bodies, from its record: what a new version is
    /// checked against. Only amendments and voids read it.
    fn stored_version(
        &self,
        s: &Summary,
        version: u32,
        index: Option<u64>,
    ) -> Result<Summary, StoreError> {
        let body = match index {
            Some(index) => self.summary_leaf(index)?.body,
            None => {
                let key = version_key(s.publisher.as_str(), s.id.as_str(), version);
                let raw = self.inner.summaries.get(&key)?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "version {version} of {} is missing",
                        s.result_key()
                    ))
                })?;
                decode_record(&raw)?.body
            }
        };
        Summary::from_stored_body_bytes(&body).map_err(|e| {
            StoreError::Corrupt(format!(
                "stored version {version} of {} does not decode: {e}",
                s.result_key()
            ))
        })
    }

    /// The body digest and acceptance time of the summary version whose leaf is at `index`
    /// (what a republished version is checked against; no certificate or body decoding).
    fn leaf_digest(&self, index: u64) -> Result<(Hash, UnixMillis), StoreError> {
        let leaf = self.summary_leaf(index)?;
        Ok((sha256(&leaf.body), leaf.accepted_at))
    }

    /// The summary version whose leaf is at `index`, everything taken from the leaf: body,
    /// signature, acceptance time and signer. What the hub returns is what its log holds, and
    /// the hub does not vouch for it: agents check every body against its receipt, signature
    /// and inclusion proof.
    fn summary_at_leaf(&self, index: u64) -> Result<StoredSummary, StoreError> {
        let leaf = self.summary_leaf(index)?;
        self.stored_summary(
            leaf.body,
            leaf.signature,
            &leaf.signer_certificate_sha256,
            leaf.accepted_at,
            index,
        )
    }

    /// A signing certificate by the SHA-256 of its DER. An alliance has a few per member, so
    /// they are kept in memory once read.
    fn certificate(&self, hash: &[u8]) -> Result<Arc<[u8]>, StoreError> {
        if let Ok(cache) = self.inner.cert_cache.read()
            && let Some(c) = cache.get(hash)
        {
            return Ok(c.clone());
        }
        let der: Arc<[u8]> = self
            .inner
            .certs
            .get(hash)?
            .ok_or_else(|| StoreError::Corrupt("signing certificate missing".into()))?
            .as_ref()
            .into();
        self.cache_certificate(hash, der.clone());
        Ok(der)
    }

    /// Whether a certificate is known to be in the `certs` tree without reading it: the cache
    /// holds only certificates read from the tree or written to it.
    fn certificate_cached(&self, hash: &[u8]) -> bool {
        self.inner
            .cert_cache
            .read()
            .is_ok_and(|cache| cache.contains_key(hash))
    }

    /// Call only for a certificate that is in the `certs` tree.
    fn cache_certificate(&self, hash: &[u8], der: Arc<[u8]>) {
        if let Ok(mut cache) = self.inner.cert_cache.write() {
            if cache.len() >= 4096 {
                cache.clear();
            }
            cache.insert(hash.to_vec(), der);
        }
    }

    fn to_stored(&self, rec: RecordV1) -> Result<StoredSummary, StoreError> {
        if rec.body.is_empty() {
            return self.summary_at_leaf(rec.log_index);
        }
        // A record written before the log existed holds its body and signature itself.
        let signature = rec
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("signature is not 64 bytes".into()))?;
        self.stored_summary(
            rec.body,
            signature,
            &rec.signer_certificate_sha256,
            UnixMillis(rec.accepted_at_ms),
            rec.log_index,
        )
    }

    fn stored_summary(
        &self,
        body: Vec<u8>,
        signature: [u8; 64],
        signer_certificate_sha256: &[u8],
        accepted_at: UnixMillis,
        log_index: u64,
    ) -> Result<StoredSummary, StoreError> {
        let cert = self.certificate(signer_certificate_sha256)?;
        // Stored bodies were checked (canonical form included) when accepted; a body that no
        // longer decodes is corruption.
        let summary = Summary::from_stored_body_bytes(&body)
            .map_err(|e| StoreError::Corrupt(format!("stored body no longer decodes: {e}")))?;
        Ok(StoredSummary {
            receipt: Receipt {
                publisher: summary.publisher.clone(),
                summary_id: summary.id.clone(),
                version: summary.version,
                body_sha256: sha256(&body),
                accepted_at,
            },
            log_index,
            envelope: SignedEnvelope {
                signature,
                body,
                signer_certificate: cert.as_ref().to_vec(),
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
            hits.push(indexed_result(&key)?.to_vec());
        }
        self.resolve(hits, q, |_| true)
    }

    /// Whether `publisher` has published a result for `patient` (one whose patient index entry
    /// names it): the members who hold a patient's results may record the patient's consent.
    pub fn has_published_for(
        &self,
        patient: &Pseudonym,
        publisher: &InstitutionId,
    ) -> Result<bool, StoreError> {
        let mut prefix = publisher.as_str().as_bytes().to_vec();
        prefix.push(0);
        for entry in self.inner.by_patient.scan_prefix(patient.as_bytes()) {
            let (key, _) = entry?;
            if indexed_result(&key)?.starts_with(&prefix) {
                return Ok(true);
            }
        }
        Ok(false)
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

    /// Every version of one result, newest first.
    pub fn versions(&self, publisher: &str, id: &str) -> Result<Vec<StoredSummary>, StoreError> {
        let rkey = result_key(publisher, id);
        let mut prefix = rkey.clone();
        prefix.push(0);
        let mut out = Vec::new();
        // Superseded versions have records (in older stores, every version has one).
        for entry in self.inner.summaries.scan_prefix(&prefix) {
            let (_, raw) = entry?;
            out.push(self.to_stored(decode_record(&raw)?)?);
        }
        // The latest version, when it has no record.
        if let Some(latest) = self.load_latest(&rkey)?
            && out
                .last()
                .is_none_or(|s| s.summary.version < latest.summary.version)
        {
            out.push(latest);
        }
        out.reverse();
        Ok(out)
    }

    /// The latest version of one result.
    pub fn latest(&self, publisher: &str, id: &str) -> Result<Option<StoredSummary>, StoreError> {
        self.load_latest(&result_key(publisher, id))
    }

    /// Records a batch of answered queries in one go: what each member was shown (so it can
    /// record decisions on those results), the statistics events, and one access leaf each,
    /// appended to the log in a single atomic write. Called by the hub's journal thread, which
    /// gathers concurrent queries into one batch (group commit, like publishes).
    pub fn record_query_batch(&self, batch: &[QueryRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut shown: Vec<(Vec<u8>, &QueryRecord)> = Vec::new();
        let mut by_ms: Vec<(i64, Vec<EventV1>)> = Vec::new();
        for q in batch {
            if !q.shown.is_empty() {
                shown.push((shown_key(&q.member, &q.access.patient), q));
            }
            for e in &q.events {
                match by_ms.iter_mut().find(|(at, _)| *at == e.at.0) {
                    Some((_, group)) => group.push(event_to_record(e)),
                    None => by_ms.push((e.at.0, vec![event_to_record(e)])),
                }
            }
        }
        let mut events = Vec::with_capacity(by_ms.len());
        for (at, group) in by_ms {
            let value = match <[EventV1; 1]>::try_from(group) {
                Ok([one]) => encode_v1(&one),
                Err(group) => encode_as(EVENT_GROUP_V1, &EventGroupV1 { events: group }),
            };
            events.push((self.event_key(UnixMillis(at))?, value));
        }
        let accesses: Vec<&Access> = batch.iter().map(|q| &q.access).collect();
        self.write_journal(&shown, &events, &accesses)
    }

    /// Writes consultations, events and access leaves (appended in order) as one write set
    /// under one hold of the log.
    fn write_journal(
        &self,
        shown: &[(Vec<u8>, &QueryRecord)],
        events: &[([u8; 16], Vec<u8>)],
        accesses: &[&Access],
    ) -> Result<(), StoreError> {
        let i = &self.inner;
        let leaves: Vec<Vec<u8>> = accesses.iter().map(|a| access_leaf(a)).collect();
        let mut log = self.log_state()?;
        let mut growth = Growth::new(&log);
        let mut ws = WriteSet::new();
        // Each member and patient's record, updated by every query of the batch in order.
        let mut updated: HashMap<&[u8], (ShownV1, Option<sled::IVec>)> = HashMap::new();
        for (key, q) in shown {
            let (record, _) = match updated.entry(key.as_slice()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let raw = i.shown.get(key)?;
                    let stored = match &raw {
                        Some(raw) => decode_v1(raw)?,
                        None => ShownV1::default(),
                    };
                    e.insert((stored, raw))
                }
            };
            for r in &q.shown {
                let consultation = Some(ConsultationV1 {
                    version: r.version,
                    recognised: r.recognised,
                    item_system: r.item_system.clone(),
                    item_code: r.item_code.clone(),
                    at_ms: q.access.at.0,
                });
                match record
                    .results
                    .iter_mut()
                    .find(|x| x.publisher == r.publisher && x.summary_id == r.summary_id)
                {
                    Some(x) => x.consultation = consultation,
                    None => record.results.push(ShownResultV1 {
                        publisher: r.publisher.clone(),
                        summary_id: r.summary_id.clone(),
                        consultation,
                    }),
                }
            }
        }
        for (key, (record, before)) in updated {
            ws.replace(TreeId::Shown, key, encode_v1(&record), before.as_deref());
        }
        for (k, v) in events {
            ws.add(TreeId::Events, k.as_slice(), v.as_slice());
        }
        let mut access_keys = Vec::with_capacity(accesses.len());
        for (a, leaf) in accesses.iter().zip(leaves) {
            let index = growth.push(&mut ws, leaf).index;
            let mut key = a.patient.as_bytes().to_vec();
            key.extend_from_slice(&(a.at.0.max(0) as u64).to_be_bytes());
            key.extend_from_slice(&index.to_be_bytes());
            access_keys.push(key);
        }
        // The index after the leaves it points to.
        for key in access_keys {
            ws.add(TreeId::Access, key, Vec::new());
        }
        let next = growth.finish(&mut ws);
        ws.apply(&**i)?;
        *log = next;
        self.set_applied(log.head());
        Ok(())
    }

    fn event_key(&self, at: UnixMillis) -> Result<[u8; 16], StoreError> {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&(at.0.max(0) as u64).to_be_bytes());
        k[8..].copy_from_slice(&self.inner.db.generate_id()?.to_be_bytes());
        Ok(k)
    }

    /// What `member` was last shown of a result of `patient`, if it consulted it.
    pub fn consultation(
        &self,
        member: &InstitutionId,
        patient: &Pseudonym,
        publisher: &str,
        id: &str,
    ) -> Result<Option<Consultation>, StoreError> {
        let i = &self.inner;
        let mut found = None;
        if let Some(raw) = i.shown.get(shown_key(member, patient))? {
            let record: ShownV1 = decode_v1(&raw)?;
            found = record
                .results
                .into_iter()
                .find(|r| r.publisher == publisher && r.summary_id == id)
                .and_then(|r| r.consultation);
        }
        if found.is_none()
            && let Some(raw) = i.consulted.get(consulted_key(member, publisher, id))?
        {
            found = Some(decode_v1(&raw)?);
        }
        let Some(c) = found else {
            return Ok(None);
        };
        Ok(Some(Consultation {
            version: c.version,
            recognised: c.recognised,
            item_system: c.item_system,
            item_code: c.item_code,
            at: UnixMillis(c.at_ms),
        }))
    }

    /// Records a decision durably, once per (member, decision id).
    pub async fn record_decision(&self, d: &DecisionRecord) -> Result<DecisionOutcome, StoreError> {
        Ok(self.record_decision_logged(d).await?.0)
    }

    /// [`Store::record_decision`], also saying where a newly recorded decision's leaf is in the
    /// log (`None` for an already recorded one).
    pub async fn record_decision_logged(
        &self,
        d: &DecisionRecord,
    ) -> Result<(DecisionOutcome, Option<Logged>), StoreError> {
        let mut key = d.member.as_str().as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(d.decision_id.as_bytes());
        let record = DecisionV1 {
            publisher: d.publisher.to_string(),
            summary_id: d.summary_id.clone(),
            version: d.version,
            adopted: d.adopted,
            reason: d.reason.map(|r| r.code().to_owned()).unwrap_or_default(),
            note: d.note.clone(),
            at_ms: d.at.0,
            recognised: d.recognised,
        };
        let leaf = Entry::Decision {
            at: d.at,
            member: d.member.to_string(),
            decision_id: d.decision_id.clone(),
            publisher: record.publisher.clone(),
            summary_id: record.summary_id.clone(),
            version: record.version,
            adopted: record.adopted,
            recognised: record.recognised,
            reason: record.reason.clone(),
            note: record.note.clone(),
        }
        .encode();
        let event_key = self.event_key(d.at)?;
        let event = encode_v1(&event_to_record(&d.event));
        let value = encode_v1(&record);
        let i = &self.inner;
        let (outcome, logged) = {
            let mut log = self.log_state()?;
            match i.decisions.get(&key)? {
                Some(raw) => {
                    let old: DecisionV1 = decode_v1(&raw)?;
                    if old.publisher != record.publisher
                        || old.summary_id != record.summary_id
                        || old.version != record.version
                        || old.adopted != record.adopted
                        || old.reason != record.reason
                    {
                        return Err(StoreError::DecisionIdReused {
                            decision_id: d.decision_id.clone(),
                        });
                    }
                    let outcome = DecisionOutcome::AlreadyRecorded {
                        at: UnixMillis(old.at_ms),
                        recognised: old.recognised,
                    };
                    (outcome, None)
                }
                None => {
                    let mut growth = Growth::new(&log);
                    let mut ws = WriteSet::new();
                    let index = growth.push(&mut ws, leaf).index;
                    let next = growth.finish(&mut ws);
                    ws.add(TreeId::Events, event_key, event);
                    ws.add(TreeId::Decisions, key, value);
                    ws.apply(&**i)?;
                    *log = next;
                    self.set_applied(log.head());
                    let logged = Logged {
                        index,
                        head: log.head(),
                    };
                    (DecisionOutcome::Recorded { at: d.at }, Some(logged))
                }
            }
        };
        self.commit().await?;
        Ok((outcome, logged))
    }

    /// Appends an access leaf and indexes it by patient, in one atomic write. Not flushed on its
    /// own (like the statistics); [`Store::durable_head`] flushes before a checkpoint covers it.
    pub fn log_access(&self, a: &Access) -> Result<(), StoreError> {
        self.log_accesses(&[a])
    }

    /// Appends access leaves, in order, in one atomic write under one hold of the log.
    pub fn log_accesses(&self, batch: &[&Access]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write_journal(&[], &[], batch)
    }

    /// Records a patient's opt-out (or opt-back-in) as told to `member`, durably and logged.
    /// Returns whether the state changed; a leaf is logged either way.
    pub async fn set_consent(
        &self,
        patient: &Pseudonym,
        opted_out: bool,
        member: &InstitutionId,
        at: UnixMillis,
    ) -> Result<(bool, Logged), StoreError> {
        let leaf = Entry::Consent {
            at,
            member: member.to_string(),
            pseudonym: *patient.as_bytes(),
            opted_out,
        }
        .encode();
        let i = &self.inner;
        let (changed, index, head) = {
            let mut log = self.log_state()?;
            let mut growth = Growth::new(&log);
            let value = encode_v1(&ConsentV1 {
                opted_out,
                member: member.to_string(),
                at_ms: at.0,
                log_index: growth.next_index(),
            });
            let raw = i.consent.get(patient.as_bytes())?;
            let before = match &raw {
                Some(raw) => decode_v1::<ConsentV1>(raw)?.opted_out,
                None => false,
            };
            let mut ws = WriteSet::new();
            let index = growth.push(&mut ws, leaf).index;
            let next = growth.finish(&mut ws);
            ws.replace(
                TreeId::Consent,
                patient.as_bytes().as_slice(),
                value,
                raw.as_deref(),
            );
            ws.apply(&**i)?;
            let changed = before != opted_out;
            *log = next;
            self.set_applied(log.head());
            (changed, index, log.head())
        };
        self.commit().await?;
        Ok((changed, Logged { index, head }))
    }

    /// Whether the patient has opted out of sharing.
    pub fn opted_out(&self, patient: &Pseudonym) -> Result<bool, StoreError> {
        match self.inner.consent.get(patient.as_bytes())? {
            Some(raw) => Ok(decode_v1::<ConsentV1>(&raw)?.opted_out),
            None => Ok(false),
        }
    }

    /// Log indexes of the accesses to a patient's results in `[from, to)`, oldest first.
    pub fn accesses(
        &self,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<Vec<u64>, StoreError> {
        let key = |t: UnixMillis| {
            let mut k = patient.as_bytes().to_vec();
            k.extend_from_slice(&(t.0.max(0) as u64).to_be_bytes());
            k
        };
        let mut out = Vec::new();
        for entry in self.inner.access.range(key(from)..key(to)) {
            let (k, _) = entry?;
            let index = k
                .get(40..48)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt("malformed access index key".into()))?;
            out.push(index);
        }
        Ok(out)
    }

    /// The current tree head (it may include entries not yet flushed).
    pub fn tree_head(&self) -> Result<TreeHead, StoreError> {
        self.inner
            .applied
            .lock()
            .map(|h| *h)
            .map_err(|_| StoreError::Corrupt("a log append panicked earlier".into()))
    }

    /// Called by every writer, under the log's lock, once its write set is applied.
    fn set_applied(&self, head: TreeHead) {
        if let Ok(mut applied) = self.inner.applied.lock() {
            *applied = head;
        }
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

    /// The leaf bytes at `index`.
    pub fn leaf(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        self.inner
            .log_leaves
            .get(index.to_be_bytes())?
            .map(|v| v.to_vec())
            .ok_or_else(|| StoreError::Corrupt(format!("log leaf {index} is missing")))
    }

    fn check_size(&self, size: u64) -> Result<(), StoreError> {
        let current = self.tree_head()?.size;
        if size > current {
            return Err(StoreError::BeyondLog { size, current });
        }
        Ok(())
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(size)?;
        merkle::inclusion_proof(index, size, &Nodes::of(&self.inner)).map_err(tree_error)
    }

    /// The consistency proof from the tree of `old_size` leaves to the tree of `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(new_size)?;
        merkle::consistency_proof(old_size, new_size, &Nodes::of(&self.inner)).map_err(tree_error)
    }

    /// Events in `[from, to)`, oldest first.
    pub fn events(&self, from: UnixMillis, to: UnixMillis) -> Result<Vec<Event>, StoreError> {
        let start = (from.0.max(0) as u64).to_be_bytes();
        let end = (to.0.max(0) as u64).to_be_bytes();
        let mut out = Vec::new();
        for entry in self.inner.events.range(start..end) {
            let (_, raw) = entry?;
            if raw.first() == Some(&EVENT_GROUP_V1) {
                let group: EventGroupV1 = EventGroupV1::decode(&raw[1..])
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                for e in group.events {
                    out.push(event_from_record(e)?);
                }
            } else {
                out.push(event_from_record(decode_v1(&raw)?)?);
            }
        }
        Ok(out)
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

/// One tree's contents, from [`Store::tree_contents`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeContents {
    pub name: String,
    pub keys: u64,
    /// Keys' and values' bytes together.
    pub bytes: u64,
}

fn encode_v1(m: &impl Message) -> Vec<u8> {
    encode_as(RECORD_V1, m)
}

/// A record with its layout byte first.
fn encode_as(layout: u8, m: &impl Message) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + m.encoded_len());
    v.push(layout);
    // Encoding into a Vec grows it as needed and cannot fail.
    let _ = m.encode(&mut v);
    v
}

fn decode_v1<M: Message + Default>(raw: &[u8]) -> Result<M, StoreError> {
    match raw.split_first() {
        Some((&RECORD_V1, rest)) => M::decode(rest).map_err(|e| StoreError::Corrupt(e.to_string())),
        Some((v, _)) => Err(StoreError::Corrupt(format!("unknown record version {v}"))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}

fn event_to_record(e: &Event) -> EventV1 {
    let mut r = EventV1 {
        at_ms: e.at.0,
        member: e.member.to_string(),
        item_system: e.item_system.clone(),
        item_code: e.item_code.clone(),
        price_fen: e.price_fen,
        ..EventV1::default()
    };
    match &e.kind {
        EventKind::Query {
            found,
            cross_member,
        } => {
            r.kind = 1;
            r.found = *found;
            r.cross_member = *cross_member;
        }
        EventKind::Decision {
            adopted,
            reason,
            consultation,
        } => {
            r.kind = 2;
            r.adopted = *adopted;
            r.reason = reason.map(|x| x.code().to_owned()).unwrap_or_default();
            if let Some(c) = consultation {
                r.consulted_publisher = c.publisher.clone();
                r.consulted_summary_id = c.summary_id.clone();
                r.consulted_at_ms = c.consulted_at.0;
            }
        }
    }
    r
}

fn event_from_record(r: EventV1) -> Result<Event, StoreError> {
    let kind = match r.kind {
        1 => EventKind::Query {
            found: r.found,
            cross_member: r.cross_member,
        },
        2 => EventKind::Decision {
            adopted: r.adopted,
            reason: RetestReason::from_code(&r.reason),
            consultation: (!r.consulted_publisher.is_empty()).then_some(ConsultationKey {
                publisher: r.consulted_publisher,
                summary_id: r.consulted_summary_id,
                consulted_at: UnixMillis(r.consulted_at_ms),
            }),
        },
        k => return Err(StoreError::Corrupt(format!("unknown event kind {k}"))),
    };
    Ok(Event {
        at: UnixMillis(r.at_ms),
        member: InstitutionId::parse(&r.member).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        item_system: r.item_system,
        item_code: r.item_code,
        price_fen: r.price_fen,
        kind,
    })
}

fn shown_key(member: &InstitutionId, patient: &Pseudonym) -> Vec<u8> {
    let mut k = member.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(patient.as_bytes());
    k
}

fn consulted_key(member: &InstitutionId, publisher: &str, id: &str) -> Vec<u8> {
    let mut k = member.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&result_key(publisher, id));
    k
}

fn decode_record(raw: &[u8]) -> Result<RecordV1, StoreError> {
    decode_v1(raw)
}

/// The committer thread's loop (group commit): each flush covers every write made before it
/// started, and answers every caller that was waiting when it started.
fn group_commit(
    db: sled::Db,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(waiting) = next_batch(&mut rx, usize::MAX, |_| 1) {
        let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.flush())) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the flush panicked".to_string()),
        };
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use huren_core::merkle::{MemoryTree, verify_consistency, verify_inclusion};

    fn access(i: u8, patient: Pseudonym) -> Access {
        Access {
            at: UnixMillis(1_000 + i64::from(i)),
            caller: InstitutionId::parse("hosp-a").unwrap(),
            purpose: Purpose::Treatment,
            method: Method::FindPrior,
            emergency_override: false,
            withheld_by_consent: false,
            patient,
            results: vec![],
            policy_version: "test".into(),
        }
    }

    fn query(
        member: &str,
        patient: Pseudonym,
        at: i64,
        shown: &[(&str, u32, bool)],
    ) -> QueryRecord {
        let member = InstitutionId::parse(member).unwrap();
        let event = |code: &str| Event {
            at: UnixMillis(at),
            member: member.clone(),
            item_system: "loinc".into(),
            item_code: code.into(),
            price_fen: 100,
            kind: EventKind::Query {
                found: true,
                cross_member: false,
            },
        };
        let mut a = access(0, patient);
        a.at = UnixMillis(at);
        QueryRecord {
            shown: shown
                .iter()
                .map(|&(id, version, recognised)| Shown {
                    publisher: "hosp-a".into(),
                    summary_id: id.into(),
                    version,
                    item_system: "loinc".into(),
                    item_code: "718-7".into(),
                    recognised,
                })
                .collect(),
            events: vec![event("718-7"), event("2345-7")],
            access: a,
            member,
        }
    }

    /// A query batch keeps one record per member and patient, updated by each query in order,
    /// and groups events by millisecond without losing one; earlier layouts are still read.
    #[tokio::test]
    async fn query_records_are_grouped_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Pseudonym::from_slice(&[4; 32]).unwrap();
        let q = Pseudonym::from_slice(&[5; 32]).unwrap();
        let b = InstitutionId::parse("hosp-b").unwrap();
        let c = InstitutionId::parse("hosp-c").unwrap();
        store
            .record_query_batch(&[
                query("hosp-b", p, 5_000, &[("R1", 1, true), ("R2", 1, false)]),
                query("hosp-b", p, 5_000, &[("R1", 2, false)]),
                query("hosp-c", p, 5_001, &[("R3", 1, true)]),
                query("hosp-b", q, 5_002, &[]),
            ])
            .unwrap();
        let seen = |m: &InstitutionId, patient: &Pseudonym, id: &str| {
            store
                .consultation(m, patient, "hosp-a", id)
                .unwrap()
                .map(|c| (c.version, c.recognised, c.at.0))
        };
        assert_eq!(seen(&b, &p, "R1"), Some((2, false, 5_000)));
        assert_eq!(seen(&b, &p, "R2"), Some((1, false, 5_000)));
        assert_eq!(seen(&b, &p, "R3"), None);
        assert_eq!(seen(&c, &p, "R3"), Some((1, true, 5_001)));
        assert_eq!(seen(&b, &q, "R1"), None);
        // A later batch adds to the stored record.
        store
            .record_query_batch(&[query("hosp-b", p, 6_000, &[("R3", 1, true)])])
            .unwrap();
        assert_eq!(seen(&b, &p, "R3"), Some((1, true, 6_000)));
        assert_eq!(seen(&b, &p, "R1"), Some((2, false, 5_000)));
        // Ten events in three milliseconds, all there, oldest first; a range cuts by time.
        let events = store.events(UnixMillis(0), UnixMillis(10_000)).unwrap();
        let times: Vec<i64> = events.iter().map(|e| e.at.0).collect();
        assert_eq!(
            times,
            [
                5_000, 5_000, 5_000, 5_000, 5_001, 5_001, 5_002, 5_002, 6_000, 6_000
            ]
        );
        assert_eq!(
            store
                .events(UnixMillis(5_001), UnixMillis(5_002))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(store.tree_head().unwrap().size, 5);
        // Written by earlier hubs: a per-result consultation and a single event.
        let old = ConsultationV1 {
            version: 3,
            recognised: true,
            item_system: "loinc".into(),
            item_code: "718-7".into(),
            at_ms: 100,
        };
        let i = &store.inner;
        i.consulted
            .insert(consulted_key(&c, "hosp-a", "OLD"), encode_v1(&old))
            .unwrap();
        let single = event_to_record(&query("hosp-c", p, 100, &[]).events[0]);
        i.events
            .insert(
                store.event_key(UnixMillis(100)).unwrap(),
                encode_v1(&single),
            )
            .unwrap();
        assert_eq!(seen(&c, &q, "OLD"), Some((3, true, 100)));
        let events = store.events(UnixMillis(0), UnixMillis(10_000)).unwrap();
        assert_eq!(events.len(), 11);
        assert_eq!(events[0].member, c);
    }

    /// Answers reuse the newest durable head when it covers what they prove; a larger one is
    /// flushed for; an old one is refreshed in the background once the log has grown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recent_durable_heads_cover_what_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Pseudonym::from_slice(&[6; 32]).unwrap();
        store.log_access(&access(0, p)).unwrap();
        store.log_access(&access(1, p)).unwrap();
        store.commit().await.unwrap();
        store.log_access(&access(2, p)).unwrap();
        assert_eq!(store.recent_durable_head(2).await.unwrap().size, 2);
        let flushed = store.recent_durable_head(3).await.unwrap();
        assert_eq!(flushed, store.tree_head().unwrap());
        assert_eq!(store.recent_durable_head(0).await.unwrap().size, 3);
        store.log_access(&access(3, p)).unwrap();
        tokio::time::sleep(DURABLE_HEAD_MAX_AGE + Duration::from_millis(50)).await;
        // Still the old head (no waiting), with a refresh started.
        assert_eq!(store.recent_durable_head(0).await.unwrap().size, 3);
        let mut size = 3;
        for _ in 0..200 {
            size = store.recent_durable_head(0).await.unwrap().size;
            if size == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(size, 4);
    }

    /// A store another handle holds open is refused with an error that says so, after a short
    /// wait (a store just dropped may be locked for a moment).
    #[tokio::test]
    async fn a_store_in_use_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let _open = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::InUse(_)), "{err}");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
    }

    /// Dropping the last handle ends the commit thread, which holds the database: the directory
    /// opens again at once, with everything committed in it (a hub restarted in the same
    /// process relies on this).
    #[tokio::test]
    async fn a_dropped_store_releases_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pseudonym::from_slice(&[4; 32]).unwrap();
        for round in 0..5u8 {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.tree_head().unwrap().size, u64::from(round));
            store.log_access(&access(round, p)).unwrap();
            store.commit().await.unwrap();
        }
    }

    /// A write that a crash stopped halfway is undone when the store opens: the log, its size
    /// and the access index agree, and the next append continues the tree.
    #[tokio::test]
    async fn a_write_cut_short_is_undone_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pseudonym::from_slice(&[3; 32]).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.log_access(&access(0, p)).unwrap();
            writeset::CUT_SHORT.with(|c| c.set(true));
            let cut = store.log_accesses(&[&access(1, p), &access(2, p)]);
            writeset::CUT_SHORT.with(|c| c.set(false));
            assert!(cut.is_err());
            assert_eq!(store.tree_head().unwrap().size, 1);
            // Half of it is on disk: the first leaf, not the access index.
            let leaf_1 = store.inner.log_leaves.get(1u64.to_be_bytes()).unwrap();
            assert!(leaf_1.is_some());
            store.commit().await.unwrap();
        }
        // Dropping the store released its files.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.tree_head().unwrap().size, 1);
        for i in 1..3u64 {
            let leaf = store.inner.log_leaves.get(i.to_be_bytes()).unwrap();
            assert!(leaf.is_none(), "leaf {i} is still there");
        }
        store.log_access(&access(3, p)).unwrap();
        let mut tree = MemoryTree::new();
        for i in 0..2 {
            tree.push(&store.leaf(i).unwrap());
        }
        assert_eq!(store.tree_head().unwrap().root, tree.root());
        let all = store
            .accesses(&p, UnixMillis(0), UnixMillis(i64::MAX))
            .unwrap();
        assert_eq!(all, [0, 1]);
    }

    /// Every logged write lands in the tree; roots and proofs match a tree rebuilt from the
    /// stored leaves; the access index finds a patient's accesses.
    #[tokio::test]
    async fn logged_writes_build_the_rfc6962_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Pseudonym::from_slice(&[1; 32]).unwrap();
        let q = Pseudonym::from_slice(&[2; 32]).unwrap();
        let member = InstitutionId::parse("hosp-b").unwrap();
        let mut heads = Vec::new();
        let mut state = std::collections::HashMap::new();
        for i in 0..10u8 {
            let patient = if i % 3 == 0 { q } else { p };
            store.log_access(&access(i, patient)).unwrap();
            assert_eq!(store.tree_head().unwrap().size, u64::from(i) * 2 + 1);
            let (changed, logged) = store
                .set_consent(&patient, i % 2 == 0, &member, UnixMillis(2_000))
                .await
                .unwrap();
            assert_eq!(logged.index, u64::from(i) * 2 + 1);
            assert_eq!(logged.head, store.tree_head().unwrap());
            let before = state.insert(patient, i % 2 == 0).unwrap_or(false);
            assert_eq!(changed, before != (i % 2 == 0));
            heads.push(logged.head);
        }
        // A batch appends in order, in one atomic write.
        let batch: Vec<Access> = (10..15).map(|i| access(i, p)).collect();
        store
            .log_accesses(&batch.iter().collect::<Vec<_>>())
            .unwrap();
        assert_eq!(store.tree_head().unwrap().size, 25);
        // 25 leaves: one full tile and one of 9, and no node above them (the first is at 32).
        assert!(store.inner.log_nodes.is_empty());
        let tiles: Vec<usize> = store
            .inner
            .log_tiles
            .iter()
            .values()
            .map(|v| v.unwrap().len())
            .collect();
        assert_eq!(tiles, [16 * 32, 9 * 32]);
        let mut tree = MemoryTree::new();
        for i in 0..25 {
            tree.push(&store.leaf(i).unwrap());
        }
        assert_eq!(store.tree_head().unwrap().root, tree.root());
        for (i, old) in heads.iter().enumerate() {
            for new in &heads[i..] {
                let proof = store.consistency_proof(old.size, new.size).unwrap();
                verify_consistency(old.size, new.size, &old.root, &new.root, &proof).unwrap();
            }
        }
        let last = *heads.last().unwrap();
        for i in 0..last.size {
            let proof = store.inclusion_proof(i, last.size).unwrap();
            let leaf = merkle::leaf_hash(&store.leaf(i).unwrap());
            verify_inclusion(&leaf, i, last.size, &proof, &last.root).unwrap();
        }
        assert!(matches!(
            store.inclusion_proof(0, 26),
            Err(StoreError::BeyondLog {
                size: 26,
                current: 25
            })
        ));
        let of_q = store
            .accesses(&q, UnixMillis(0), UnixMillis(i64::MAX))
            .unwrap();
        assert_eq!(of_q, [0, 6, 12, 18]);
        // p's last change was at i = 8 (opt-out), q's at i = 9 (opt-in).
        assert!(store.opted_out(&p).unwrap());
        assert!(!store.opted_out(&q).unwrap());
    }

    /// Appends `n` access leaves to the store in batches of uneven sizes (1 to 7) and to
    /// `tree`; returns the store's head after each batch, each checked against `tree`.
    fn grow(store: &Store, tree: &mut MemoryTree, n: u64) -> Vec<TreeHead> {
        let p = Pseudonym::from_slice(&[3; 32]).unwrap();
        let mut heads = Vec::new();
        let end = tree.size() + n;
        while tree.size() < end {
            let start = tree.size();
            let len = (start % 7 + 1).min(end - start);
            let batch: Vec<Access> = (start..start + len).map(|i| access(i as u8, p)).collect();
            store
                .log_accesses(&batch.iter().collect::<Vec<_>>())
                .unwrap();
            for i in start..start + len {
                tree.push(&store.leaf(i).unwrap());
            }
            let head = store.tree_head().unwrap();
            assert_eq!(head.size, tree.size());
            assert_eq!(head.root, tree.root(), "root at size {}", head.size);
            heads.push(head);
        }
        heads
    }

    /// Checks every leaf's inclusion proof at the store's size, and the consistency proof from
    /// each of `heads` to it.
    fn check_proofs(store: &Store, heads: &[TreeHead]) {
        let last = store.tree_head().unwrap();
        for i in 0..last.size {
            let proof = store.inclusion_proof(i, last.size).unwrap();
            let leaf = merkle::leaf_hash(&store.leaf(i).unwrap());
            verify_inclusion(&leaf, i, last.size, &proof, &last.root)
                .unwrap_or_else(|e| panic!("leaf {i} at size {}: {e}", last.size));
        }
        for old in heads {
            let proof = store.consistency_proof(old.size, last.size).unwrap();
            verify_consistency(old.size, last.size, &old.root, &last.root, &proof)
                .unwrap_or_else(|e| panic!("size {} to {}: {e}", old.size, last.size));
        }
    }

    /// The last, incomplete tile is stored as it fills: a reopened store reads it back and
    /// goes on filling it, and proofs through it stay right.
    #[tokio::test]
    async fn a_reopened_store_goes_on_filling_its_last_tile() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = MemoryTree::new();
        let mut heads = {
            let store = Store::open(dir.path()).unwrap();
            grow(&store, &mut tree, 21)
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.tree_head().unwrap(), *heads.last().unwrap());
        assert_eq!(store.log_state().unwrap().tile.len(), 5);
        heads.extend(grow(&store, &mut tree, 20));
        check_proofs(&store, &heads);
    }

    /// A store written before tiles (every node of level 1 and up in `log_nodes`, no
    /// `tiles_from`) reads as before, and grows with tiles from the tile it was filling.
    #[tokio::test]
    async fn a_store_written_before_tiles_is_read_and_grown() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = MemoryTree::new();
        let mut heads = {
            let store = Store::open(dir.path()).unwrap();
            let heads = grow(&store, &mut tree, 45);
            // Rewrite the tree as those stores kept it.
            let i = &store.inner;
            i.log_tiles.clear().unwrap();
            i.log_nodes.clear().unwrap();
            i.log_meta.remove(TILES_FROM_KEY).unwrap();
            let mut frontier = Vec::new();
            for index in 0..45 {
                let leaf = merkle::leaf_hash(&store.leaf(index).unwrap());
                for (level, at, hash) in merkle::append(&mut frontier, index, leaf) {
                    if level > 0 {
                        i.log_nodes.insert(node_key(level, at), &hash).unwrap();
                    }
                }
            }
            i.db.flush().unwrap();
            heads
        };
        let store = Store::open(dir.path()).unwrap();
        // Tiles begin with the one the log was filling (leaves 32 to 44).
        assert_eq!(store.inner.tiles_from, 2);
        assert_eq!(store.tree_head().unwrap(), *heads.last().unwrap());
        check_proofs(&store, &heads);
        heads.extend(grow(&store, &mut tree, 40));
        check_proofs(&store, &heads);
        let tiles: Vec<u64> = store
            .inner
            .log_tiles
            .iter()
            .keys()
            .map(|k| u64::from_be_bytes(k.unwrap().as_ref().try_into().unwrap()))
            .collect();
        assert_eq!(tiles, [2, 3, 4, 5]);
        drop(store);
        // And after another reopen, from what it wrote since.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.inner.tiles_from, 2);
        assert_eq!(store.tree_head().unwrap().root, tree.root());
        check_proofs(&store, &heads);
    }

    /// Node places spread over the map's buckets (picked by the low bits of the hash): the
    /// same index at many levels, and neighbouring indices, do not pile into a few buckets.
    #[test]
    fn node_places_spread_over_buckets() {
        use std::hash::BuildHasher;
        let hasher = std::hash::BuildHasherDefault::<PlaceHasher>::default();
        let places: Vec<u64> = (3..21u8)
            .flat_map(|level| (0..1000u64).map(move |index| node_place(level, index)))
            .collect();
        let buckets: HashSet<u64> = places.iter().map(|p| hasher.hash_one(p) & 0xffff).collect();
        // 18,000 places thrown at random into 65,536 buckets fill about 15,700.
        assert!(
            buckets.len() > 14_000,
            "{} places fell into {} buckets",
            places.len(),
            buckets.len()
        );
    }

    /// Proofs read through the node cache stay right as the tree grows past the cached
    /// levels: every size's proofs are checked against a tree rebuilt from the leaves, after
    /// earlier sizes have filled the cache.
    #[tokio::test]
    async fn cached_nodes_give_the_same_proofs_as_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tree = MemoryTree::new();
        let mut heads = Vec::new();
        // Batches of uneven sizes, through tiles and the nodes above them, to 71 leaves, each
        // size checked after the earlier ones have filled the cache.
        let total = (1u64 << (TILE_LEVEL + 2)) + 7;
        while tree.size() < total {
            let batch = (tree.size() % 7 + 1).min(total - tree.size());
            let grown = grow(&store, &mut tree, batch);
            check_proofs(&store, &heads);
            heads.extend(grown);
        }
        let cache = &store.inner.node_cache;
        assert!(
            !cache.upper.read().unwrap().is_empty(),
            "upper levels cached"
        );
        assert!(
            !cache.recent.read().unwrap().is_empty(),
            "lower levels cached"
        );
    }
}
