//! The PostgreSQL backend of the storage seam ([`super::Store`]), selected by
//! `store = "postgres://…"` in the hub's configuration. The only module that imports the
//! driver (tokio-postgres, through the deadpool-postgres connection pool).
//!
//! Tables (see [`schema`] for the SQL; every integer a `bigint`, every hash and pseudonym
//! `bytea`, names and codes `text`):
//!
//! ```text
//! log_head     one row: size, frontier             the tree head; locked by every logged write
//! log_leaves   idx -> hash, leaf                   every leaf, bytes as encoded by core
//! log_nodes    (level >= 1, idx) -> hash           every complete subtree above the leaves
//! certs        sha256 -> der                       signing certificates, once each
//! summaries    (publisher, summary_id, version) -> body_sha256, accepted_at, log_index
//! latest       (publisher, summary_id) -> version, log_index
//! by_patient   (patient, item_system, item_code, performed_at, publisher, summary_id)
//!              -> version, log_index of the latest version when it is this row's (else NULL)
//! shown_to     (member, patient) -> jsonb: publisher/summary_id -> what the member was shown,
//!              for consultations from before schema 4 (later ones: the access leaves)
//! decisions    (member, decision_id) -> the decision and its leaf
//! events       seq -> a statistics event (at, member, item, kind, ...)
//! consent      patient -> opted_out, member, at, log_index
//! access       (patient, at, log_index) -> member  the access leaves of each patient (member:
//!                                                  NULL in rows from before schema 4)
//! policies     log_index                           the policy leaves (the latest is in force)
//! huren_schema one row: the schema version (see schema::SCHEMA_VERSION)
//! ```
//!
//! How the guarantees of [`super`] are kept:
//!
//! - **Durable before acknowledged.** Every write method runs one transaction and returns
//!   after its COMMIT, which PostgreSQL makes durable (with `synchronous_commit` on, its
//!   default); [`Store::commit`] has nothing left to wait for. The intake and the journal hand
//!   a whole batch of publishes or answered queries to one call: one transaction per batch is
//!   the group commit.
//! - **Data and log together.** A write inserts its leaves, the subtree hashes they complete
//!   and the new head in the same transaction as its data.
//! - **Appends sequenced by the database.** Each logged write first locks the one `log_head`
//!   row (`SELECT … FOR UPDATE`) and reads size and frontier under that lock, so writers,
//!   in this process or in another hub on the same database, append one after the other, and
//!   no two heads of one size differ. Every writer takes that lock first, so they cannot
//!   deadlock on each other.
//! - **Append-only.** Triggers refuse UPDATE, DELETE and TRUNCATE on `log_leaves` and
//!   `log_nodes`, and any change of `log_head` but growth; the hub's own role needs no more
//!   than SELECT and INSERT on them (README, PostgreSQL).
//! - **Proofs from stored subtrees.** A proof reads the O(log n) node hashes it needs in one
//!   round trip (listed beforehand for inclusion and consistency proofs, learnt from a first
//!   pass for a receipt's: [`PgStore::with_nodes`]), never the leaves; hashes once read are cached
//!   (they never change once committed).
//! - **Bytes as received.** Body, signature, acceptance time and signer's certificate hash
//!   come from the leaf, byte for byte; certificates from `certs`.
//!
//! Everything read is checked as it is decoded: a row that does not read back gives
//! [`StoreError::Corrupt`], never a panic. The driver's errors map onto [`StoreError`] in
//! [`pg`]: a lost or refused connection is `Unavailable` with the driver's error as source.

mod audit;
pub mod cluster;
mod import;
mod log;
pub mod schema;
mod summaries;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use huren_core::identity::InstitutionId;
use huren_core::merkle::Hash;
use huren_core::pseudonym::Pseudonym;
use huren_core::signing::VerifiedSummary;
use huren_core::stats::Event;
use huren_core::summary::UnixMillis;

use super::{
    Consultation, DecisionOutcome, DecisionRecord, Found, Logged, PriorQuery, PutBatch,
    QueryRecord, Store, StoreError, StoredSummary, Succession, TreeHead,
};
use log::{LogState, NodeCache};

pub use import::ImportReport;
pub use schema::SCHEMA_VERSION;

/// Connections the hub keeps to PostgreSQL at most, unless its configuration says
/// (`store_connections`).
pub const DEFAULT_CONNECTIONS: usize = 16;

/// How long a connection may take to open before the store counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How old the newest known head may get before [`PgStore::recent_durable_head`] reads it
/// again (another hub on the database may have appended).
const HEAD_MAX_AGE: Duration = Duration::from_millis(250);

/// The hub's store on PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    place: Place,
    /// The newest committed head this process knows of, and when it learnt it.
    head: Mutex<(TreeHead, Instant)>,
    nodes: NodeCache,
    /// Signing certificates known to be in `certs`, by SHA-256.
    certs: RwLock<HashMap<Hash, Arc<[u8]>>>,
}

/// Where the database is, for messages: `postgres://host:port/dbname`, never the password.
#[derive(Clone, Debug)]
pub struct Place(pub String);

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Place {
    fn of(config: &tokio_postgres::Config) -> Self {
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(h, port)| match h {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                tokio_postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
            })
            .collect();
        Place(format!(
            "postgres://{}/{}",
            hosts.join(","),
            config.get_dbname().unwrap_or_default()
        ))
    }
}

/// Whether a configured store names a PostgreSQL database rather than a sled folder.
pub fn is_url(store: &str) -> bool {
    store.starts_with("postgres://") || store.starts_with("postgresql://")
}

/// A store URL for messages: scheme, host, port and database, never user or password.
pub fn redact(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => Place::of(&config).0,
        Err(_) => "postgres://(a URL that does not parse)".into(),
    }
}

/// `store` for messages: redacted when it is a PostgreSQL URL, as it is otherwise.
pub fn redact_if_url(store: &str) -> String {
    match is_url(store) {
        true => redact(store),
        false => store.to_owned(),
    }
}

/// The connection could not be made or was lost.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach PostgreSQL at {place}: {source}")]
pub struct Unreachable {
    pub place: Place,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The driver's errors in the hub's terms (see the module doc).
pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        return StoreError::Unavailable(Box::new(e));
    };
    let code = db.code();
    let class = &code.code()[..2];
    if class == "23" {
        // An integrity constraint: a row the hub did not expect (two writers of one key).
        return StoreError::Conflict {
            key: format!(
                "{} ({})",
                db.table().unwrap_or("a table"),
                db.constraint().unwrap_or("a constraint")
            ),
            version: 0,
        };
    }
    if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
        return StoreError::Corrupt(db.to_string());
    }
    StoreError::Unavailable(Box::new(e))
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/dbname`),
    /// applies the migrations it lacks (refusing a newer schema) and reads the log's head.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(
            url,
            DEFAULT_CONNECTIONS,
            crate::store::DEFAULT_NODE_CACHE_BYTES,
        )
        .await
    }

    /// [`PgStore::open`], keeping at most `connections` connections open and at most
    /// `node_cache_bytes` of the log's Merkle nodes in memory.
    pub async fn open_with(
        url: &str,
        connections: usize,
        node_cache_bytes: u64,
    ) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Unavailable(format!("the PostgreSQL URL does not parse: {e}").into())
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("huren-hub");
        // Every statement the hub runs is an index lookup, prepared once per connection and
        // run many times with other values: one plan serves every run. PostgreSQL's default
        // plans each of the first five runs anew and then keeps planning whenever that looks
        // cheaper (a fifth of the server's CPU under FindPrior load). A plan made once must
        // not depend on the tables' sizes at that moment (a hub started on an empty database
        // would scan whole tables for the life of the connection), so sequential scans and
        // hash or merge joins are priced out: each lookup stays an index scan. (That price
        // would set off JIT compilation of every statement on the one-row log head, so JIT is
        // off: it never pays for statements this small.) Options in the URL come after these,
        // so an operator's own settings win.
        const PLANNING: &str = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off \
             -c enable_hashjoin=off -c enable_mergejoin=off -c jit=off";
        let options = match config.get_options() {
            Some(given) if !given.is_empty() => format!("{PLANNING} {given}"),
            _ => PLANNING.to_string(),
        };
        config.options(&options);
        let place = Place::of(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .build()
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                place,
                head: Mutex::new((LogState::default().head(), Instant::now())),
                nodes: NodeCache::with_bytes(node_cache_bytes),
                certs: RwLock::new(HashMap::new()),
            }),
        };
        let mut client = store.client().await?;
        schema::migrate(&mut client, &store.inner.place).await?;
        drop(client);
        store.read_tree_head().await?;
        Ok(store)
    }

    /// Where the database is (no password), for messages.
    pub fn place(&self) -> &Place {
        &self.inner.place
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.inner.pool.get().await.map_err(|e| {
            let source: Box<dyn std::error::Error + Send + Sync> = match e {
                deadpool_postgres::PoolError::Backend(e) => Box::new(e),
                other => Box::new(other),
            };
            StoreError::Unavailable(Box::new(Unreachable {
                place: self.inner.place.clone(),
                source,
            }))
        })
    }

    /// The newest committed head this process knows of.
    pub(super) fn known_head(&self) -> TreeHead {
        self.inner.head.lock().map(|h| h.0).unwrap_or(TreeHead {
            size: 0,
            root: huren_core::merkle::empty_root(),
        })
    }

    /// Notes a committed head (kept if it is the newest known).
    pub(super) fn saw_head(&self, head: TreeHead) {
        if let Ok(mut known) = self.inner.head.lock()
            && known.0.size <= head.size
        {
            *known = (head, Instant::now());
        }
    }

    /// Reads the committed head from the database.
    pub(super) async fn read_tree_head(&self) -> Result<TreeHead, StoreError> {
        let client = self.client().await?;
        let head = log::read_head(&client).await?.head();
        self.saw_head(head);
        Ok(head)
    }

    /// Notes the nodes a committed write completed (they never change), in the levels the
    /// node cache keeps (`NodeCache::insert_kept`).
    pub(super) fn cache_written(&self, written: &[(u8, u64, Hash)]) {
        self.inner.nodes.insert_kept(written);
    }

    /// A durable head of at least `min_size` leaves: the newest known while it is recent.
    pub async fn recent_durable_head(&self, min_size: u64) -> Result<TreeHead, StoreError> {
        if let Ok(known) = self.inner.head.lock()
            && known.0.size >= min_size
            && known.1.elapsed() <= HEAD_MAX_AGE
        {
            return Ok(known.0);
        }
        self.read_tree_head().await
    }

    /// Bytes the database occupies on disk.
    pub async fn database_bytes(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;
        Ok(n.max(0) as u64)
    }

    /// Each table's rows and bytes on disk (with its indexes), largest first, empty ones left
    /// out. Counts every row: for diagnostics and the benchmark, not for a request path.
    pub async fn table_contents(&self) -> Result<Vec<super::TreeContents>, StoreError> {
        let client = self.client().await?;
        let mut out = Vec::new();
        for table in [
            "log_leaves",
            "log_nodes",
            "certs",
            "summaries",
            "latest",
            "by_patient",
            "shown_to",
            "decisions",
            "events",
            "consent",
            "access",
        ] {
            let row = client
                .query_one(
                    &format!("SELECT count(*), pg_total_relation_size('{table}') FROM {table}"),
                    &[],
                )
                .await
                .map_err(pg)?;
            let (keys, bytes): (i64, i64) =
                (row.try_get(0).map_err(pg)?, row.try_get(1).map_err(pg)?);
            if keys > 0 {
                out.push(super::TreeContents {
                    name: table.to_owned(),
                    keys: keys as u64,
                    bytes: bytes as u64,
                });
            }
        }
        out.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        Ok(out)
    }

    /// Number of stored summary versions.
    pub async fn summary_count(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM summaries", &[])
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;
        Ok(n.max(0) as u64)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn put_summaries(
        &self,
        items: &[(&VerifiedSummary, UnixMillis)],
        follows: Succession,
    ) -> Result<PutBatch, StoreError> {
        PgStore::put_summaries(self, items, follows).await
    }

    async fn commit(&self) -> Result<(), StoreError> {
        // Every write committed its own transaction before returning.
        Ok(())
    }

    async fn find_prior(&self, q: &PriorQuery) -> Result<Found, StoreError> {
        PgStore::find_prior(self, q).await
    }

    async fn history(&self, q: &PriorQuery) -> Result<Found, StoreError> {
        PgStore::history(self, q).await
    }

    async fn has_published_for(
        &self,
        patient: &Pseudonym,
        publisher: &InstitutionId,
    ) -> Result<bool, StoreError> {
        PgStore::has_published_for(self, patient, publisher).await
    }

    async fn versions(&self, publisher: &str, id: &str) -> Result<Vec<StoredSummary>, StoreError> {
        PgStore::versions(self, publisher, id).await
    }

    async fn latest(&self, publisher: &str, id: &str) -> Result<Option<StoredSummary>, StoreError> {
        PgStore::latest(self, publisher, id).await
    }

    async fn record_query_batch(&self, batch: &[QueryRecord]) -> Result<(), StoreError> {
        PgStore::record_query_batch(self, batch).await
    }

    async fn consultation(
        &self,
        member: &InstitutionId,
        patient: &Pseudonym,
        publisher: &str,
        id: &str,
    ) -> Result<Option<Consultation>, StoreError> {
        PgStore::consultation(self, member, patient, publisher, id).await
    }

    async fn record_decision_logged(
        &self,
        d: &DecisionRecord,
    ) -> Result<(DecisionOutcome, Option<Logged>), StoreError> {
        PgStore::record_decision_logged(self, d).await
    }

    async fn set_consent(
        &self,
        patient: &Pseudonym,
        opted_out: bool,
        member: &InstitutionId,
        at: UnixMillis,
    ) -> Result<(bool, Logged), StoreError> {
        PgStore::set_consent(self, patient, opted_out, member, at).await
    }

    async fn opted_out(&self, patient: &Pseudonym) -> Result<bool, StoreError> {
        PgStore::opted_out(self, patient).await
    }

    async fn find_prior_gated(&self, q: &PriorQuery) -> Result<(bool, Found), StoreError> {
        PgStore::find_prior_gated(self, q).await
    }

    async fn accesses(
        &self,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<Vec<u64>, StoreError> {
        PgStore::accesses(self, patient, from, to).await
    }

    async fn events(&self, from: UnixMillis, to: UnixMillis) -> Result<Vec<Event>, StoreError> {
        PgStore::events(self, from, to).await
    }

    async fn tree_head(&self) -> Result<TreeHead, StoreError> {
        self.read_tree_head().await
    }

    async fn recent_durable_head(&self, min_size: u64) -> Result<TreeHead, StoreError> {
        PgStore::recent_durable_head(self, min_size).await
    }

    async fn durable_head(&self) -> Result<TreeHead, StoreError> {
        // A committed head is durable.
        self.read_tree_head().await
    }

    async fn append_policy(&self, leaf: Vec<u8>) -> Result<Logged, StoreError> {
        PgStore::append_policy(self, leaf).await
    }

    async fn latest_policy(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        PgStore::latest_policy(self).await
    }

    async fn leaf(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        self.leaf_bytes(index).await
    }

    async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.inclusion(index, size).await
    }

    async fn inclusion_proofs(
        &self,
        indexes: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Hash>>, StoreError> {
        self.inclusions(indexes, size).await
    }

    async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        self.consistency(old_size, new_size).await
    }
}
