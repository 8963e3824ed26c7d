//! The storage seam: what the hub asks of a store, and the guarantees every backend keeps.
//!
//! The hub's service, intake, journal and server hold an `Arc<dyn Store>` and nothing of the
//! engine behind it. One backend so far: [`SledStore`] (embedded, the default; module
//! [`sled`]). A backend keeps bytes, indexes and the log; the rules about what may be stored
//! (who may publish, which version may follow which, who may decide on what) are the
//! service's and core's, applied before or, where they must see the stored state atomically,
//! passed in.
//!
//! Every backend keeps these guarantees, which the hub's answers rely on:
//!
//! - **Durable before acknowledged.** A write is durable once [`Store::commit`] returns after
//!   it (concurrent writers may share one flush or transaction: group commit). The hub sends a
//!   receipt only then.
//! - **Data and log together.** Each logged write (a summary version, a decision, an access, a
//!   consent change) appends its leaf in the same atomic write as the data it logs, so the two
//!   cannot diverge; a write cut short by a crash leaves neither.
//! - **Append-only log, one writer at a time.** Leaves are never changed or removed; appends
//!   are sequenced, so no two tree heads of one size ever differ. Proofs for any past size are
//!   served from stored subtrees, not by re-reading every leaf.
//! - **Bytes as received.** A summary's signed body, signature and certificate come back
//!   byte for byte as they were stored.
//! - **Layout versions.** A store records its layout version; a hub refuses a store written in
//!   a newer layout ([`StoreError::NewerLayout`]) rather than misread it.
//!
//! Methods are async: a backend on a networked engine awaits it, the embedded one answers in
//! place (its reads are short and mostly from its page cache).

mod node_cache;
pub mod postgres;
pub mod sled;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use async_trait::async_trait;

use huren_core::identity::InstitutionId;
use huren_core::logentry::{AccessFacts, DecisionFacts, Entry, Method, Purpose, ResultRef};
use huren_core::merkle::Hash;
use huren_core::pseudonym::Pseudonym;
pub use huren_core::receipt::Receipt;
use huren_core::rules::RetestReason;
use huren_core::signing::{SignedEnvelope, VerifiedSummary};
use huren_core::stats::Event;
use huren_core::summary::{SuccessionError, Summary, UnixMillis};

pub use self::postgres::PgStore;
pub use self::sled::{DEFAULT_CACHE_BYTES, Durability, SledStore, TreeContents};

/// Memory the log's Merkle node hashes may take by default (128 MiB; the hub's `[log]
/// node_cache_mb`).
pub const DEFAULT_NODE_CACHE_BYTES: u64 = node_cache::UPPER_NODES as u64 * 32;

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

impl DecisionRecord {
    /// The decision's log leaf (format 0x04: with the item, the price in force and the
    /// consultation, from its statistics event), the same for every backend.
    pub fn leaf(&self) -> Vec<u8> {
        let consulted_at = match &self.event.kind {
            huren_core::stats::EventKind::Decision {
                consultation: Some(c),
                ..
            } => c.consulted_at,
            _ => UnixMillis(0),
        };
        Entry::Decision {
            at: self.at,
            member: self.member.to_string(),
            decision_id: self.decision_id.clone(),
            publisher: self.publisher.to_string(),
            summary_id: self.summary_id.clone(),
            version: self.version,
            adopted: self.adopted,
            recognised: self.recognised,
            reason: self.reason.map(|r| r.code().to_owned()).unwrap_or_default(),
            note: self.note.clone(),
            facts: Some(DecisionFacts {
                item_system: self.event.item_system.clone(),
                item_code: self.event.item_code.clone(),
                price_fen: self.event.price_fen,
                consulted_at,
            }),
        }
        .encode()
    }
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
    /// Who asked at the caller, as the caller names them (checked by
    /// `huren_core::logentry::check_requester`); empty when it named no one.
    pub requester: String,
    /// The items asked for and each shown result's item and verdict (the statistics' facts).
    pub facts: AccessFacts,
}

/// A result a member was shown, as remembered for its decisions: one of an access's
/// results with its item and verdict ([`Access::shown`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shown<'a> {
    pub publisher: &'a str,
    pub summary_id: &'a str,
    pub version: u32,
    pub item_system: &'a str,
    pub item_code: &'a str,
    pub recognised: bool,
}

impl Access {
    /// Each result shown, with its item and verdict: `results` beside `facts.shown`, which
    /// holds one entry per result in the same order (the hub builds both from one list).
    pub fn shown(&self) -> impl Iterator<Item = Shown<'_>> {
        self.results
            .iter()
            .zip(&self.facts.shown)
            .map(|(r, f)| Shown {
                publisher: &r.publisher,
                summary_id: &r.summary_id,
                version: r.version,
                item_system: &f.item_system,
                item_code: &f.item_code,
                recognised: f.recognised,
            })
    }
}

#[cfg(test)]
impl Access {
    /// Adds results of publisher `hosp-a` shown (`id`, `version`, `recognised`), each of item
    /// LOINC 718-7, for the stores' tests.
    pub(crate) fn show(&mut self, shown: &[(&str, u32, bool)]) {
        for &(id, version, recognised) in shown {
            self.results.push(huren_core::logentry::ResultRef {
                publisher: "hosp-a".into(),
                summary_id: id.into(),
                version,
            });
            self.facts.shown.push(huren_core::logentry::ShownFact {
                item_system: "loinc".into(),
                item_code: "718-7".into(),
                recognised,
            });
        }
    }
}

/// Everything one answered query leaves behind: its statistics events and its access leaf,
/// which also says what the caller was shown (so it can record decisions on those results).
#[derive(Clone, Debug)]
pub struct QueryRecord {
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

/// What went wrong in the store, in the hub's terms. Every backend maps its engine's errors
/// onto these, keeping the engine's error as the source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another body under a version already stored (a conflict, never an overwrite).
    #[error("version {version} of {key} is already stored with a different body")]
    Conflict { key: String, version: u32 },
    #[error("version {version} of {key} cannot be stored: {reason}")]
    OutOfOrder {
        key: String,
        version: u32,
        reason: String,
    },
    /// The new version may not follow the one before it (see `Summary::may_follow`).
    #[error("version {version} of {key} cannot be stored: {reason}")]
    Succession {
        key: String,
        version: u32,
        reason: SuccessionError,
    },
    #[error("decision {decision_id} was already recorded for another result")]
    DecisionIdReused { decision_id: String },
    /// A tree size past the log's end (the caller asked for something not there yet).
    #[error("the log has no tree of size {size} (it has {current} entries)")]
    BeyondLog { size: u64, current: u64 },
    /// A request the log cannot answer as asked (e.g. an index outside the tree).
    #[error("log: {0}")]
    Tree(String),
    /// What is stored does not read back as it was written.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The engine failed (I/O, a lost connection): the request may succeed if tried again.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "the store at {} is in use by another process (is another hub running on it?)",
        .0.display()
    )]
    InUse(std::path::PathBuf),
    /// The store was written by a newer hub in a layout this one does not know.
    #[error(
        "the store at {} has layout version {found}, newer than this hub reads (up to {supported}): run the newer hub, or restore a backup taken before it",
        path.display()
    )]
    NewerLayout {
        path: std::path::PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("the store's commit thread has stopped")]
    CommitterGone,
    #[error("query journal: {0}")]
    Journal(String),
    #[error("publish writer: {0}")]
    Intake(String),
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

/// What the hub asks of its store (see the module doc for the guarantees).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- Summaries and the patient index ---

    /// Stores a batch of verified summary versions, each with its acceptance time, in one
    /// atomic write with their log leaves: one outcome per version, in order (a version
    /// refused does not stop the others), and the tree head after the batch. Not durable
    /// until [`Store::commit`] returns.
    ///
    /// The store keeps versions in sequence (1, then each one more than the last; the same
    /// version again is a no-op with the same bytes, a [`StoreError::Conflict`] with others)
    /// and checks `follows` against the version before, in the same write: whether a version
    /// may follow another is the caller's rule, not the store's.
    async fn put_summaries(
        &self,
        items: &[(&VerifiedSummary, UnixMillis)],
        follows: Succession,
    ) -> Result<PutBatch, StoreError>;
    /// Makes every write before the call durable (shares the flush with concurrent callers).
    async fn commit(&self) -> Result<(), StoreError>;
    /// The latest versions of a patient's results of the asked items, newest performed first.
    async fn find_prior(&self, q: &PriorQuery) -> Result<Found, StoreError>;
    /// Every item's latest versions of a patient in the period, newest performed first.
    async fn history(&self, q: &PriorQuery) -> Result<Found, StoreError>;
    /// Whether `publisher` has published any result of `patient`.
    async fn has_published_for(
        &self,
        patient: &Pseudonym,
        publisher: &InstitutionId,
    ) -> Result<bool, StoreError>;
    /// Every stored version of one result, oldest first.
    async fn versions(&self, publisher: &str, id: &str) -> Result<Vec<StoredSummary>, StoreError>;
    /// The latest stored version of one result.
    async fn latest(&self, publisher: &str, id: &str) -> Result<Option<StoredSummary>, StoreError>;

    // --- Audit: queries, decisions, consent ---

    /// Records answered queries (what each member was shown, statistics events, the access
    /// leaf) in one atomic write. Not durable until [`Store::commit`] returns.
    async fn record_query_batch(&self, batch: &[QueryRecord]) -> Result<(), StoreError>;
    /// What `member` was last shown of a result of `patient`, if anything.
    async fn consultation(
        &self,
        member: &InstitutionId,
        patient: &Pseudonym,
        publisher: &str,
        id: &str,
    ) -> Result<Option<Consultation>, StoreError>;
    /// Records a decision with its leaf, durably; a repeated decision id is not recorded twice.
    async fn record_decision_logged(
        &self,
        d: &DecisionRecord,
    ) -> Result<(DecisionOutcome, Option<Logged>), StoreError>;
    /// Records a patient's consent with its leaf, durably; whether it changed, and where it
    /// was logged.
    async fn set_consent(
        &self,
        patient: &Pseudonym,
        opted_out: bool,
        member: &InstitutionId,
        at: UnixMillis,
    ) -> Result<(bool, Logged), StoreError>;
    /// Whether the patient is opted out now.
    async fn opted_out(&self, patient: &Pseudonym) -> Result<bool, StoreError>;
    /// [`Store::opted_out`] and [`Store::find_prior`] in one read where the backend can
    /// (one statement instead of two on PostgreSQL). The results come whatever the consent:
    /// the caller withholds them (an emergency may still see them).
    async fn find_prior_gated(&self, q: &PriorQuery) -> Result<(bool, Found), StoreError> {
        let opted_out = self.opted_out(&q.patient).await?;
        Ok((opted_out, self.find_prior(q).await?))
    }
    /// The log indexes of the access leaves of one patient in `[from, to)`, oldest first.
    async fn accesses(
        &self,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<Vec<u64>, StoreError>;
    /// Statistics events in `[from, to)`, oldest first.
    async fn events(&self, from: UnixMillis, to: UnixMillis) -> Result<Vec<Event>, StoreError>;

    // --- The log ---

    /// The current tree head (it may include entries not yet durable).
    async fn tree_head(&self) -> Result<TreeHead, StoreError>;
    /// A durable tree head of at least `min_size` leaves, recent but perhaps not the latest.
    async fn recent_durable_head(&self, min_size: u64) -> Result<TreeHead, StoreError>;
    /// The latest durable tree head.
    async fn durable_head(&self) -> Result<TreeHead, StoreError>;
    /// The leaf bytes at `index`.
    async fn leaf(&self, index: u64) -> Result<Vec<u8>, StoreError>;
    /// Appends a policy leaf (`Entry::Policy`) to the log, durably: the policy may be put in
    /// force once this returns. The store remembers it as the latest policy.
    async fn append_policy(&self, leaf: Vec<u8>) -> Result<Logged, StoreError>;
    /// The latest policy leaf appended (its index and bytes), if any.
    async fn latest_policy(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError>;
    /// The inclusion proofs of several leaves in one tree, in the order asked. The backends
    /// fold the right edge the proofs share once (`merkle::inclusion_proofs`), and PostgreSQL
    /// reads the nodes of all of them in one round trip.
    async fn inclusion_proofs(
        &self,
        indexes: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Hash>>, StoreError> {
        let mut proofs = Vec::with_capacity(indexes.len());
        for &index in indexes {
            proofs.push(self.inclusion_proof(index, size).await?);
        }
        Ok(proofs)
    }
    /// The proof that the tree of `old_size` leaves is a prefix of the tree of `new_size`.
    async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, StoreError>;
}

/// Opens the store `config.store` names: a sled folder or a PostgreSQL database.
pub async fn open(config: &crate::config::HubConfig) -> Result<SharedStore, StoreError> {
    Ok(match config.store_kind() {
        crate::config::StoreKind::Sled => Arc::new(SledStore::open_with(
            &config.store,
            config.store_cache_mb << 20,
            config.durability,
            config.log.node_cache_mb << 20,
        )?),
        crate::config::StoreKind::Postgres => Arc::new(
            PgStore::open_with(
                &config.store.to_string_lossy(),
                config.store_connections,
                config.log.node_cache_mb << 20,
            )
            .await?,
        ),
    })
}

/// Whether a new version (first) may follow the stored version before it (second); the hub
/// passes [`Summary::may_follow`].
pub type Succession = fn(&Summary, &Summary) -> Result<(), SuccessionError>;

/// A shared handle on a store of any backend.
pub type SharedStore = Arc<dyn Store>;
