//! The log in PostgreSQL: the head row, appends, and proofs from stored subtree hashes.

use std::cell::RefCell;
use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Transaction};
use huren_core::merkle::{self, Hash};

use super::{PgStore, pg};
use crate::store::{StoreError, TreeHead};

/// A statement parameter.
pub(super) type P<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

/// The tree's size and frontier (one hash per set bit of the size, largest subtree first).
#[derive(Clone, Debug, Default)]
pub(super) struct LogState {
    pub(super) size: u64,
    pub(super) frontier: Vec<Hash>,
}

impl LogState {
    pub(super) fn head(&self) -> TreeHead {
        TreeHead {
            size: self.size,
            root: merkle::root_from_frontier(&self.frontier, self.size),
        }
    }

    /// The state from the head row's columns, checked.
    fn from_row(size: i64, frontier: &[u8]) -> Result<Self, StoreError> {
        let size = u64::try_from(size)
            .map_err(|_| StoreError::Corrupt(format!("the log's size {size} is negative")))?;
        if frontier.len() != size.count_ones() as usize * 32 {
            return Err(StoreError::Corrupt(format!(
                "the log's frontier holds {} bytes, a tree of {size} leaves needs {}",
                frontier.len(),
                size.count_ones() * 32
            )));
        }
        Ok(Self {
            size,
            frontier: hashes(frontier)?,
        })
    }
}

/// 32-byte hashes from their concatenation.
pub(super) fn hashes(raw: &[u8]) -> Result<Vec<Hash>, StoreError> {
    merkle::split_hashes(raw)
        .ok_or_else(|| StoreError::Corrupt("a stored hash is not 32 bytes".into()))
}

pub(super) fn hash(raw: &[u8], what: impl Fn() -> String) -> Result<Hash, StoreError> {
    raw.try_into()
        .map_err(|_| StoreError::Corrupt(format!("{} is not 32 bytes", what())))
}

/// Reads the head inside a write transaction and locks its row until the transaction ends:
/// every logged write takes this lock first, so appends are sequenced by the database (across
/// every hub on it) and lock order is the same for all writers.
pub(super) async fn lock_head(tx: &Transaction<'_>) -> Result<LogState, StoreError> {
    let row = tx
        .query_one("SELECT size, frontier FROM log_head FOR UPDATE", &[])
        .await
        .map_err(pg)?;
    LogState::from_row(row.try_get(0).map_err(pg)?, row.try_get(1).map_err(pg)?)
}

/// Reads the committed head.
pub(super) async fn read_head(client: &impl GenericClient) -> Result<LogState, StoreError> {
    let row = client
        .query_one("SELECT size, frontier FROM log_head", &[])
        .await
        .map_err(pg)?;
    LogState::from_row(row.try_get(0).map_err(pg)?, row.try_get(1).map_err(pg)?)
}

/// Leaves appended to the locked head inside one transaction; [`Growth::write`] inserts them,
/// the nodes they complete and the new head, in that transaction.
pub(super) struct Growth {
    pub(super) next: LogState,
    leaf_idx: Vec<i64>,
    leaf_hash: Vec<Vec<u8>>,
    leaves: Vec<Vec<u8>>,
    /// Every node completed (level 0 included): what proofs against the new head need before
    /// anything is read back.
    pub(super) written: Vec<(u8, u64, Hash)>,
}

impl Growth {
    pub(super) fn new(log: LogState) -> Self {
        Self {
            next: log,
            leaf_idx: Vec::new(),
            leaf_hash: Vec::new(),
            leaves: Vec::new(),
            written: Vec::new(),
        }
    }

    /// Appends a leaf; its index.
    pub(super) fn push(&mut self, leaf: Vec<u8>) -> Result<u64, StoreError> {
        let index = self.next.size;
        let idx = i64::try_from(index).map_err(|_| StoreError::Tree("the log is full".into()))?;
        let h = merkle::leaf_hash(&leaf);
        let nodes = merkle::append(&mut self.next.frontier, index, h);
        self.next.size += 1;
        self.leaf_idx.push(idx);
        self.leaf_hash.push(h.to_vec());
        self.leaves.push(leaf);
        self.written.extend(nodes);
        Ok(index)
    }

    /// Inserts the leaves, the nodes above them and the new head (nothing when no leaf was
    /// appended).
    pub(super) async fn write(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        if self.leaves.is_empty() {
            return Ok(());
        }
        let (mut levels, mut idxs, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
        for (level, index, h) in self.written.iter().filter(|(l, _, _)| *l > 0) {
            levels.push(i16::from(*level));
            idxs.push(i64::try_from(*index).map_err(|_| StoreError::Tree("node index".into()))?);
            hashes.push(h.to_vec());
        }
        let size = i64::try_from(self.next.size)
            .map_err(|_| StoreError::Tree("the log is full".into()))?;
        let frontier = self.next.frontier.concat();
        let leaves = tx.prepare_cached(
            "INSERT INTO log_leaves (idx, hash, leaf)
             SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])",
        );
        let nodes = tx.prepare_cached(
            "INSERT INTO log_nodes (level, idx, hash)
             SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
        );
        let head = tx.prepare_cached("UPDATE log_head SET size = $1, frontier = $2");
        let (leaves, nodes, head) = tokio::try_join!(leaves, nodes, head).map_err(pg)?;
        let p_leaves: [P; 3] = [&self.leaf_idx, &self.leaf_hash, &self.leaves];
        let p_nodes: [P; 3] = [&levels, &idxs, &hashes];
        let p_head: [P; 2] = [&size, &frontier];
        tokio::try_join!(
            tx.execute(&leaves, &p_leaves),
            tx.execute(&nodes, &p_nodes),
            tx.execute(&head, &p_head),
        )
        .map_err(pg)?;
        Ok(())
    }
}

pub(super) use crate::store::node_cache::NodeCache;
use crate::store::node_cache::{NodeMap, node_place};

/// The node reader of one proof: the cache, nodes the caller knows (a batch's own), nodes
/// fetched for it; in its first pass, a missing node is noted and stands in as zeros. What the
/// first pass took from the cache is kept for the second: another request may clear the
/// cache's lower levels in between (they are bounded), and the second pass must not then
/// find a node it did not fetch missing.
struct Lookup<'a> {
    cache: &'a NodeCache,
    known: &'a HashMap<(u8, u64), Hash>,
    /// Keyed by `node_place`, hashed by `PlaceHasher` (every lookup of both passes goes through
    /// these maps).
    fetched: NodeMap,
    from_cache: RefCell<NodeMap>,
    missing: RefCell<Vec<(u8, u64)>>,
    strict: bool,
}

impl merkle::NodeReader for Lookup<'_> {
    type Error = StoreError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        if let Some(h) = self.known.get(&(level, index)) {
            return Ok(*h);
        }
        let place = node_place(level, index);
        if let Some(h) = self.fetched.get(&place) {
            return Ok(*h);
        }
        if let Some(h) = self.from_cache.borrow().get(&place) {
            return Ok(*h);
        }
        if let Some(h) = self.cache.get(level, index) {
            self.from_cache.borrow_mut().insert(place, h);
            return Ok(h);
        }
        if self.strict {
            return Err(StoreError::Corrupt(format!(
                "log node ({level}, {index}) is missing"
            )));
        }
        self.missing.borrow_mut().push((level, index));
        Ok([0; 32])
    }
}

fn tree_error(e: merkle::TreeError<StoreError>) -> StoreError {
    match e {
        merkle::TreeError::Node { source, .. } => source,
        other => StoreError::Tree(other.to_string()),
    }
}

impl PgStore {
    /// Runs `compute` over the log's nodes: once to learn which nodes it needs (the nodes a
    /// proof reads depend only on the sizes and indexes, not on the hashes), then, after one
    /// fetch of those not at hand, again for the answer.
    pub(super) async fn with_nodes<T>(
        &self,
        known: &HashMap<(u8, u64), Hash>,
        compute: impl Fn(
            &dyn Fn(u8, u64) -> Result<Hash, StoreError>,
        ) -> Result<T, merkle::TreeError<StoreError>>,
    ) -> Result<T, StoreError> {
        let mut lookup = self.lookup(known);
        let first = {
            let reader = |l, i| merkle::NodeReader::node(&lookup, l, i);
            compute(&reader)
        };
        let missing = lookup.missing.take();
        if missing.is_empty() {
            return first.map_err(tree_error);
        }
        lookup.fetched = self.fetch_nodes(&missing).await?;
        lookup.strict = true;
        let reader = |l, i| merkle::NodeReader::node(&lookup, l, i);
        compute(&reader).map_err(tree_error)
    }

    /// Runs `compute` over the log's nodes once, after one fetch of those of `wanted` not at
    /// hand: for proofs, whose nodes are known beforehand (`merkle::inclusion_proof_nodes`,
    /// `merkle::consistency_proof_nodes`), this saves [`Self::with_nodes`]'s first pass, a
    /// whole computation of the proofs. A node
    /// `compute` reads that is neither listed nor cached is an error, never a zero.
    async fn with_listed_nodes<T>(
        &self,
        wanted: &[(u8, u64)],
        compute: impl Fn(
            &dyn Fn(u8, u64) -> Result<Hash, StoreError>,
        ) -> Result<T, merkle::TreeError<StoreError>>,
    ) -> Result<T, StoreError> {
        // Every node at hand in the cache (the usual case once the log's nodes are cached):
        // computed from it directly, without the maps of the path below. A node whose level
        // the cache gave up in between fails this computation, which then takes that path.
        let cache = &self.inner.nodes;
        if wanted.iter().all(|&(l, i)| cache.get(l, i).is_some()) {
            let reader = |l, i| {
                cache
                    .get(l, i)
                    .ok_or_else(|| StoreError::Corrupt(format!("log node ({l}, {i}) is missing")))
            };
            if let Ok(found) = compute(&reader) {
                return Ok(found);
            }
        }
        let known = HashMap::new();
        let mut lookup = self.lookup(&known);
        for &(level, index) in wanted {
            // Not yet strict: a node not at hand is noted for the fetch, not an error.
            if merkle::NodeReader::node(&lookup, level, index).is_err() {
                return Err(StoreError::Tree(format!(
                    "node ({level}, {index}) could not be looked up"
                )));
            }
        }
        let missing = lookup.missing.take();
        if !missing.is_empty() {
            lookup.fetched = self.fetch_nodes(&missing).await?;
        }
        lookup.strict = true;
        let reader = |l, i| merkle::NodeReader::node(&lookup, l, i);
        compute(&reader).map_err(tree_error)
    }

    /// A node reader over the cache, `known` and (once fetched) the store; not yet strict.
    fn lookup<'a>(&'a self, known: &'a HashMap<(u8, u64), Hash>) -> Lookup<'a> {
        Lookup {
            cache: &self.inner.nodes,
            known,
            fetched: NodeMap::default(),
            from_cache: RefCell::new(NodeMap::default()),
            missing: RefCell::new(Vec::new()),
            strict: false,
        }
    }

    /// Reads nodes (level 0: leaf hashes) in one round trip, and caches them.
    async fn fetch_nodes(&self, wanted: &[(u8, u64)]) -> Result<NodeMap, StoreError> {
        let leaves: Vec<i64> = wanted
            .iter()
            .filter(|(l, _)| *l == 0)
            .filter_map(|(_, i)| i64::try_from(*i).ok())
            .collect();
        let (mut levels, mut idxs) = (Vec::new(), Vec::new());
        for (l, i) in wanted.iter().filter(|(l, _)| *l > 0) {
            levels.push(i16::from(*l));
            idxs.push(i64::try_from(*i).unwrap_or(i64::MAX));
        }
        let client = self.client().await?;
        let q_leaves =
            client.prepare_cached("SELECT idx, hash FROM log_leaves WHERE idx = ANY($1)");
        let q_nodes = client.prepare_cached(
            "SELECT n.level, n.idx, n.hash FROM unnest($1::smallint[], $2::bigint[]) AS w(level, idx)
             JOIN log_nodes n ON n.level = w.level AND n.idx = w.idx",
        );
        let (q_leaves, q_nodes) = tokio::try_join!(q_leaves, q_nodes).map_err(pg)?;
        let p_leaves: [P; 1] = [&leaves];
        let p_nodes: [P; 2] = [&levels, &idxs];
        let (leaf_rows, node_rows) = tokio::try_join!(
            client.query(&q_leaves, &p_leaves),
            client.query(&q_nodes, &p_nodes),
        )
        .map_err(pg)?;
        let mut out = NodeMap::with_capacity_and_hasher(wanted.len(), Default::default());
        let mut read = Vec::with_capacity(wanted.len());
        for row in leaf_rows {
            let idx: i64 = row.try_get(0).map_err(pg)?;
            let raw: &[u8] = row.try_get(1).map_err(pg)?;
            let h = hash(raw, || format!("the hash of log leaf {idx}"))?;
            read.push((0, idx as u64, h));
        }
        for row in node_rows {
            let level: i16 = row.try_get(0).map_err(pg)?;
            let idx: i64 = row.try_get(1).map_err(pg)?;
            let raw: &[u8] = row.try_get(2).map_err(pg)?;
            let h = hash(raw, || format!("log node ({level}, {idx})"))?;
            read.push((level as u8, idx as u64, h));
        }
        self.inner.nodes.insert_all(&read);
        out.extend(read.iter().map(|&(l, i, h)| (node_place(l, i), h)));
        Ok(out)
    }

    /// Refuses a size past the committed head.
    pub(super) async fn check_size(&self, size: u64) -> Result<(), StoreError> {
        if self.known_head().size >= size {
            return Ok(());
        }
        let current = self.read_tree_head().await?.size;
        if size > current {
            return Err(StoreError::BeyondLog { size, current });
        }
        Ok(())
    }

    pub(super) async fn inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(size).await?;
        let wanted = merkle::inclusion_proof_nodes(&[index], size);
        self.with_listed_nodes(&wanted, |node| {
            merkle::inclusion_proof(index, size, &Reader(node))
        })
        .await
    }

    /// Several inclusion proofs in one tree, from one read of the nodes they need that are not
    /// cached, listed beforehand, and one computation.
    pub(super) async fn inclusions(
        &self,
        indexes: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Hash>>, StoreError> {
        if indexes.is_empty() {
            return Ok(Vec::new());
        }
        self.check_size(size).await?;
        let wanted = merkle::inclusion_proof_nodes(indexes, size);
        self.with_listed_nodes(&wanted, |node| {
            merkle::inclusion_proofs(indexes, size, &Reader(node))
        })
        .await
    }

    pub(super) async fn consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(new).await?;
        let wanted = merkle::consistency_proof_nodes(old, new);
        self.with_listed_nodes(&wanted, |node| {
            merkle::consistency_proof(old, new, &Reader(node))
        })
        .await
    }

    /// The leaf bytes at `index`.
    pub(super) async fn leaf_bytes(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        let idx = i64::try_from(index).map_err(|_| StoreError::Tree(format!("no leaf {index}")))?;
        let client = self.client().await?;
        let q = client
            .prepare_cached("SELECT leaf FROM log_leaves WHERE idx = $1")
            .await
            .map_err(pg)?;
        match client.query_opt(&q, &[&idx]).await.map_err(pg)? {
            Some(row) => row.try_get(0).map_err(pg),
            None => Err(StoreError::Corrupt(format!("log leaf {index} is missing"))),
        }
    }
}

/// A node-reading closure as a [`merkle::NodeReader`].
pub(super) struct Reader<'a>(pub(super) &'a dyn Fn(u8, u64) -> Result<Hash, StoreError>);

impl merkle::NodeReader for Reader<'_> {
    type Error = StoreError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        (self.0)(level, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use merkle::NodeReader;

    /// A node the first pass read from the cache is still there in the second pass when the
    /// cache was cleared in between (as another request's insert does past RECENT_NODES).
    #[test]
    fn the_second_pass_keeps_what_the_first_read_from_the_cache() {
        let cache = NodeCache::default();
        cache.insert(2, 7, [7; 32]);
        let known = HashMap::new();
        let mut lookup = Lookup {
            cache: &cache,
            known: &known,
            fetched: NodeMap::default(),
            from_cache: RefCell::new(NodeMap::default()),
            missing: RefCell::new(Vec::new()),
            strict: false,
        };
        assert_eq!(lookup.node(2, 7).ok(), Some([7; 32]));
        assert!(lookup.missing.borrow().is_empty());
        cache.clear_recent();
        lookup.strict = true;
        assert_eq!(lookup.node(2, 7).ok(), Some([7; 32]));
        assert!(lookup.node(2, 8).is_err(), "a node never read is missing");
    }
}
