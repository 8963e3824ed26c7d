use super::*;

use std::ops::Range;

/// Leaves appended, in order, to a copy of the log's state, written into the caller's
/// [`WriteSet`] as they come: the nodes above the tiles each completes, the run of leaves when
/// a leaf ends its group of [`RUN_LEAVES`], and the tile when a leaf fills it.
/// [`Growth::finish`] adds the last run, the last, incomplete tile and the new size, after
/// everything they make reachable. The real state moves only once the set is applied.
pub(super) struct Growth {
    pub(super) start_size: u64,
    /// The incomplete tile as stored when the growth began (what undoing the set restores).
    pub(super) start_tile: Option<Vec<u8>>,
    pub(super) next: LogState,
    /// Every node the appended leaves completed, from their own hashes (level 0) up: what a
    /// proof against the new size needs before the write is applied, and what the node cache
    /// takes once it is.
    written: Vec<(u8, u64, Hash)>,
    /// Leaves appended since the last run was written: the next run's (see [`run_value`]).
    run: Vec<Vec<u8>>,
}

impl Growth {
    pub(super) fn new(log: &LogState) -> Self {
        Self {
            start_size: log.size,
            start_tile: (!log.tile.is_empty()).then(|| tile_value(&log.tile)),
            next: LogState {
                size: log.size,
                frontier: log.frontier.clone(),
                tile: log.tile.clone(),
            },
            written: Vec::new(),
            run: Vec::new(),
        }
    }

    /// The index the next leaf gets.
    pub(super) fn next_index(&self) -> u64 {
        self.next.size
    }

    /// Appends a leaf; its index. The leaf itself is written with the others of its run, when
    /// its group of [`RUN_LEAVES`] is complete or at [`Growth::finish`]: whatever points at the
    /// leaf goes into the set after `finish`, so that a reader never finds it before the leaf.
    pub(super) fn push(&mut self, ws: &mut WriteSet, leaf: Vec<u8>) -> u64 {
        let index = self.next.size;
        let hash = merkle::leaf_hash(&leaf);
        let nodes = merkle::append(&mut self.next.frontier, index, hash);
        self.run.push(leaf);
        if (index + 1).is_multiple_of(RUN_LEAVES) {
            self.write_run(ws, index);
        }
        for (level, at, node) in nodes.iter().filter(|(level, _, _)| *level > TILE_LEVEL) {
            ws.add(TreeId::LogNodes, node_key(*level, *at), node.as_slice());
        }
        self.next.size += 1;
        self.next.tile.push(hash);
        if self.next.tile.len() as u64 == TILE_LEAVES {
            self.write_tile(ws, index / TILE_LEAVES);
            self.next.tile.clear();
        }
        self.written.extend(nodes);
        index
    }

    /// Writes the leaves appended since the last run, the last of them at `last`, as one run.
    fn write_run(&mut self, ws: &mut WriteSet, last: u64) {
        if self.run.is_empty() {
            return;
        }
        ws.add(TreeId::LogRuns, last.to_be_bytes(), run_value(&self.run));
        self.run.clear();
    }

    pub(super) fn write_tile(&self, ws: &mut WriteSet, block: u64) {
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
    /// the state to keep once the set is applied, with the nodes the leaves completed (for
    /// `SledStore::set_applied`).
    pub(super) fn finish(mut self, ws: &mut WriteSet) -> (LogState, Vec<(u8, u64, Hash)>) {
        let last = self.next.size.saturating_sub(1);
        self.write_run(ws, last);
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
        (self.next, self.written)
    }
}

/// Leaves per tile. A tile's value is the hashes of its leaves, so one read gives every node
/// of levels 0 to [`TILE_LEVEL`] inside it.
pub(super) const TILE_LEAVES: u64 = 16;
/// The level of a tile's root: nodes up to this level come from tiles, nodes above from
/// `log_nodes`.
pub(super) const TILE_LEVEL: u8 = 4;
const _: () = assert!(TILE_LEAVES == 1 << TILE_LEVEL);

/// A tile's stored value: its leaf hashes, in order.
pub(super) fn tile_value(hashes: &[Hash]) -> Vec<u8> {
    hashes.concat()
}

/// The hashes in (part of) a tile's stored value; a trailing partial hash is ignored (callers
/// check the length).
pub(super) fn tile_hashes(raw: &[u8]) -> Vec<Hash> {
    merkle::split_hashes(&raw[..raw.len() - raw.len() % 32]).unwrap_or_default()
}

/// Most leaves in a run: a run holds the leaves one write appended within one aligned group of
/// this many (leaves 4g to 4g + 3), so a run never reaches past its tile. Four and not a
/// tile's sixteen: sled keeps up to 16 keys in a node and reads a node whole when it is not in
/// its cache, so runs of sixteen made every such read of one leaf decode about 100 KB.
/// Measured at 1M (a 64 MiB page cache for the reads; README, performance): runs of 16 wrote
/// as fast as runs of 4 and took 4.8x the summary bytes on disk against 5.0x, but FindPrior
/// fell from 8,300 to 7,000-7,200/s; runs of 4 read as fast as single leaves.
pub(super) const RUN_LEAVES: u64 = 4;
const _: () = assert!(TILE_LEAVES.is_multiple_of(RUN_LEAVES));

/// First byte of a run's stored value: its layout.
const RUN_V1: u8 = 1;
/// Bytes of a run's value before its leaves: layout, count, and a length per leaf.
fn run_header_len(count: usize) -> usize {
    2 + 4 * count
}

/// A run's stored value: `RUN_V1 || count:u8 || count × length:u32 || the leaves, in order`.
/// A run holds 1 to [`RUN_LEAVES`] leaves appended by one write, all in one group.
pub fn run_value(leaves: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = leaves.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(run_header_len(leaves.len()) + body);
    out.push(RUN_V1);
    // At most RUN_LEAVES leaves, each far below 4 GiB (the hub refuses larger messages).
    out.push(leaves.len() as u8);
    for leaf in leaves {
        out.extend_from_slice(&(leaf.len() as u32).to_be_bytes());
    }
    for leaf in leaves {
        out.extend_from_slice(leaf);
    }
    out
}

/// Where each leaf of a run's stored value lies in it, in order; why not, for a value that is
/// not a run.
pub fn run_leaves(raw: &[u8]) -> Result<Vec<Range<usize>>, String> {
    let (&layout, rest) = raw.split_first().ok_or("it is empty")?;
    if layout != RUN_V1 {
        return Err(format!("its layout is {layout}, not {RUN_V1}"));
    }
    let count = usize::from(*rest.first().ok_or("it has no count")?);
    if count == 0 || count as u64 > RUN_LEAVES {
        return Err(format!("it holds {count} leaves (1 to {RUN_LEAVES})"));
    }
    let header = run_header_len(count);
    let lengths = raw
        .get(2..header)
        .ok_or_else(|| format!("it ends inside its {count} lengths"))?;
    let mut at = header;
    let mut ranges = Vec::with_capacity(count);
    for len in lengths.chunks_exact(4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = at.checked_add(len).filter(|end| *end <= raw.len());
        let end = end.ok_or_else(|| format!("it ends inside leaf {} of {count}", ranges.len()))?;
        ranges.push(at..end);
        at = end;
    }
    if at != raw.len() {
        return Err(format!("{} bytes follow its last leaf", raw.len() - at));
    }
    Ok(ranges)
}

/// One leaf's bytes, inside the stored value that holds them.
pub(super) struct LeafBytes {
    raw: sled::IVec,
    at: Range<usize>,
}

impl std::ops::Deref for LeafBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // `at` was checked against `raw` when the value was read.
        self.raw.get(self.at.clone()).unwrap_or_default()
    }
}

/// Reads leaves by index: below `runs_from` each from its own key in `log_leaves` (stores
/// written before runs), from there on from the run in `log_runs` that holds it, the first run
/// whose key (its last leaf's index) is at or after the leaf's: one ordered lookup.
#[derive(Clone, Copy)]
pub(super) struct Leaves<'a> {
    pub(super) singles: &'a sled::Tree,
    pub(super) runs: &'a sled::Tree,
    pub(super) runs_from: u64,
}

impl<'a> Leaves<'a> {
    pub(super) fn of(i: &'a Inner) -> Self {
        Self {
            singles: &i.log_leaves,
            runs: &i.log_runs,
            runs_from: i.runs_from,
        }
    }

    /// The leaf at `index`.
    pub(super) fn get(&self, index: u64) -> Result<LeafBytes, StoreError> {
        let missing = || StoreError::Corrupt(format!("log leaf {index} is missing"));
        if index < self.runs_from {
            let raw = self.singles.get(index.to_be_bytes())?.ok_or_else(missing)?;
            let at = 0..raw.len();
            return Ok(LeafBytes { raw, at });
        }
        let (key, raw) = self
            .runs
            .range(index.to_be_bytes()..)
            .next()
            .ok_or_else(missing)??;
        let last = <[u8; 8]>::try_from(key.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| {
                StoreError::Corrupt(format!("a log run key is {} bytes, not 8", key.len()))
            })?;
        let mut ranges = run_leaves(&raw).map_err(|why| {
            StoreError::Corrupt(format!(
                "the log run ending at leaf {last} is not one: {why}"
            ))
        })?;
        // The run's leaves end at `last`; `index` is at most `last`.
        let from_end = (last - index) as usize;
        if from_end >= ranges.len() {
            return Err(missing());
        }
        let at = ranges.swap_remove(ranges.len() - 1 - from_end);
        Ok(LeafBytes { raw, at })
    }
}

/// Reads complete-subtree hashes from memory where a batch already has them, from the store
/// otherwise.
pub(super) struct Layered<'a> {
    pub(super) known: &'a HashMap<(u8, u64), Hash>,
    pub(super) store: Nodes<'a>,
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

pub(super) use crate::store::node_cache::NodeCache;

/// Reads complete-subtree hashes from `log_tiles` and `log_nodes` (and, in tiles written
/// before the store had `log_tiles`, from `log_leaves`), through a [`NodeCache`].
///
/// A complete subtree's hash never changes once its write is applied, and only applied
/// subtrees are read (proofs are for sizes up to the applied head), so the cache needs no
/// invalidation: a write undone at open belongs to an earlier process. An incomplete tile's
/// stored value only grows, and holds at least the leaves of the applied head.
pub(super) struct Nodes<'a> {
    pub(super) nodes: &'a sled::Tree,
    pub(super) tiles: &'a sled::Tree,
    pub(super) leaves: Leaves<'a>,
    pub(super) tiles_from: u64,
    pub(super) cache: &'a NodeCache,
    /// The tile read last: a proof takes up to four nodes from its leaf's tile.
    pub(super) last_tile: std::cell::RefCell<Option<(u64, sled::IVec)>>,
    /// A size of the log whose writes are applied (0 when the reader has none to go by): a
    /// tile whose leaves all lie below it is committed whole, and all its nodes are cached
    /// when one is read. A tile above it may belong to a write still being applied, which a
    /// failure would undo.
    pub(super) committed: u64,
}

impl<'a> Nodes<'a> {
    pub(super) fn of(i: &'a Inner) -> Self {
        Self {
            nodes: &i.log_nodes,
            tiles: &i.log_tiles,
            leaves: Leaves::of(i),
            tiles_from: i.tiles_from,
            cache: &i.node_cache,
            last_tile: std::cell::RefCell::new(None),
            committed: 0,
        }
    }

    /// A reader for proofs against `size` leaves, at most the applied head.
    pub(super) fn committed(i: &'a Inner, size: u64) -> Self {
        Self {
            committed: size,
            ..Self::of(i)
        }
    }

    /// Every node of tile `block` (its 16 leaf hashes and the 15 nodes above them, up to the
    /// tile's root), for a tile whose leaves are all committed.
    fn whole_tile(&self, block: u64) -> Result<Vec<(u8, u64, Hash)>, StoreError> {
        let raw = self.tile(block)?;
        let leaves = raw
            .get(..TILE_LEAVES as usize * 32)
            .filter(|_| raw.len() == TILE_LEAVES as usize * 32)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "log tile {block} holds {} bytes where a complete tile holds {}",
                    raw.len(),
                    TILE_LEAVES * 32
                ))
            })?;
        let mut row = tile_hashes(leaves);
        let mut nodes = Vec::with_capacity(2 * TILE_LEAVES as usize - 1);
        for level in 0..=TILE_LEVEL {
            let first = block << (TILE_LEVEL - level);
            nodes.extend((first..).zip(&row).map(|(index, h)| (level, index, *h)));
            row = row
                .chunks_exact(2)
                .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
                .collect();
        }
        Ok(nodes)
    }

    /// Tile `block`'s value, read once for consecutive nodes inside it.
    pub(super) fn tile(&self, block: u64) -> Result<sled::IVec, StoreError> {
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
    pub(super) fn in_tile(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
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
    pub(super) fn stored(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        if level == 0 {
            return Ok(merkle::leaf_hash(&self.leaves.get(index)?));
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
        let block = index >> (TILE_LEVEL.saturating_sub(level));
        if in_tiles && block.saturating_add(1).saturating_mul(TILE_LEAVES) <= self.committed {
            // Each node of the tile is another proof's, and the tile is read anyway.
            let nodes = self.whole_tile(block)?;
            self.cache.insert_all(&nodes);
            return nodes
                .iter()
                .find(|(l, i, _)| (*l, *i) == (level, index))
                .map(|(_, _, h)| *h)
                .ok_or_else(|| {
                    StoreError::Tree(format!("node ({level}, {index}) is not in tile {block}"))
                });
        }
        let hash = match in_tiles {
            true => self.in_tile(level, index)?,
            false => self.stored(level, index)?,
        };
        self.cache.insert(level, index, hash);
        Ok(hash)
    }
}

pub(super) fn tree_error(e: merkle::TreeError<StoreError>) -> StoreError {
    match e {
        merkle::TreeError::Node { source, .. } => source,
        other => StoreError::Tree(other.to_string()),
    }
}

/// The first tile of the log kept in `log_tiles`, from `log_meta`. A store written before tiles
/// kept every node in `log_nodes` and has no such key: its tiles begin with the one the log is
/// filling, whose value is built here from its leaves (at most 15 reads), once. Nothing is
/// rewritten: the nodes of earlier tiles stay where they are and are read from there.
pub(super) fn start_tiles(inner: &Inner, size: u64) -> Result<u64, StoreError> {
    if let Some(from) = meta_u64(inner, TILES_FROM_KEY, "the log's first tile")? {
        return Ok(from);
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

/// A number kept in `log_meta` under `key` (`what` names it in an error).
fn meta_u64(inner: &Inner, key: &[u8], what: &str) -> Result<Option<u64>, StoreError> {
    let Some(raw) = inner.log_meta.get(key)? else {
        return Ok(None);
    };
    let raw: [u8; 8] = raw
        .as_ref()
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} is not 8 bytes")))?;
    Ok(Some(u64::from_be_bytes(raw)))
}

/// The first leaf of the log kept in `log_runs`, from `log_meta`. A store written before runs
/// kept each leaf under its own key in `log_leaves` and has no such key: its runs begin with
/// the next leaf appended. Nothing is rewritten: the earlier leaves stay where they are. A
/// first run past the log's size is refused: the leaves appended up to it would be looked for
/// where they were never written.
pub(super) fn start_runs(inner: &Inner, size: u64) -> Result<u64, StoreError> {
    if let Some(from) = meta_u64(inner, RUNS_FROM_KEY, "the log's first run")? {
        if from > size {
            return Err(StoreError::Corrupt(format!(
                "the log's first run is leaf {from}, past the log's size {size}"
            )));
        }
        return Ok(from);
    }
    let mut ws = WriteSet::new();
    ws.add(TreeId::LogMeta, RUNS_FROM_KEY, size.to_be_bytes());
    ws.apply(inner)?;
    inner.db.flush()?;
    if size > 0 {
        tracing::info!(
            first_leaf = size,
            "the log stores its leaves in runs from here on"
        );
    }
    Ok(size)
}

impl SledStore {
    /// The leaf bytes at `index`.
    pub fn leaf(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        Ok(Leaves::of(&self.inner).get(index)?.to_vec())
    }

    pub(super) fn check_size(&self, size: u64) -> Result<(), StoreError> {
        let current = self.tree_head()?.size;
        if size > current {
            return Err(StoreError::BeyondLog { size, current });
        }
        Ok(())
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(size)?;
        merkle::inclusion_proof(index, size, &Nodes::committed(&self.inner, size))
            .map_err(tree_error)
    }

    /// The inclusion proofs of leaves `indexes` in the tree of `size` leaves, in that order,
    /// the right edge they share folded once ([`merkle::inclusion_proofs`]).
    pub fn inclusion_proofs(
        &self,
        indexes: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Hash>>, StoreError> {
        self.check_size(size)?;
        merkle::inclusion_proofs(indexes, size, &Nodes::committed(&self.inner, size))
            .map_err(tree_error)
    }

    /// The consistency proof from the tree of `old_size` leaves to the tree of `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(new_size)?;
        merkle::consistency_proof(old_size, new_size, &Nodes::committed(&self.inner, new_size))
            .map_err(tree_error)
    }
}
