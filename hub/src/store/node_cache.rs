//! Merkle node hashes kept in memory once read or written, for both backends. A committed
//! subtree's hash never changes, so nothing is ever invalidated; what the cache needs is a
//! bound, since the tree grows for as long as the hub runs.
//!
//! An inclusion proof takes one node per level. Nodes are kept in one array per level, in
//! chunks, indexed by the node's index, from the leaf hashes ([`CACHED_LEVELS`]) up, up to
//! [`UPPER_NODES`] places in all; when a new chunk would pass that, the lowest level kept is
//! given up (which halves the count), so the most shared nodes stay (a node at level `l` is in
//! the proofs of `2^l` leaves) and memory stays flat however long the log grows. The nodes of
//! levels given up are kept up to [`RECENT_NODES`] and that set is emptied when full: every
//! proof against a recent size needs the nodes along the tree's right edge, so those are read
//! once rather than once per proof.

use std::collections::HashMap;
use std::sync::RwLock;

use huren_core::merkle::Hash;

/// The lowest level kept while the upper set has room: the leaf hashes themselves, so that once
/// read or written, a proof needs nothing from the store. Level 3 rather than 6 made FindPrior
/// with proofs 15% faster at 100,000 summaries on sled (measured before tiles, when each lower
/// node was a read of its own); level 0, with a tile's nodes kept whole when one is read and a
/// write's nodes kept once applied, took the tile reads out of proofs (README, "Where the time
/// goes").
pub(crate) const CACHED_LEVELS: u8 = 0;

/// Places kept at most in the upper set by default (128 MiB of hashes; the hub's `[log]
/// node_cache_mb` sets it): every node of a log of up to two million entries, then the levels
/// above the lowest given up, one at a time (at ten million, levels 3 and up; at a hundred
/// million, 6 and up).
pub(crate) const UPPER_NODES: usize = 1 << 22;

/// An empty place of an upper level's array. A node whose hash is all zeros (a SHA-256 output
/// no one can aim at) would only be read from the store each time, never answered wrongly.
const ABSENT: Hash = [0; 32];

/// Nodes of levels given up kept at most (about 4 MB); the set is emptied when full.
pub(crate) const RECENT_NODES: usize = 1 << 16;

/// A node's place as one number: its level in the top byte, its index below (a log never
/// reaches 2^56 entries).
pub(crate) fn node_place(level: u8, index: u64) -> u64 {
    (u64::from(level) << 56) | (index & ((1 << 56) - 1))
}

/// Hashes a [`node_place`] with MurmurHash3's 64-bit finaliser (two multiplications and three
/// shifts): the places are not chosen by anyone outside, so SipHash's protection against chosen
/// keys buys nothing here, and it was a visible part of every proof. A bare multiplication
/// would not do: the map picks buckets by the low bits, which a product takes from the low
/// bits of the place only, so the same index at two levels would share a bucket.
#[derive(Default)]
pub(crate) struct PlaceHasher(u64);

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

pub(crate) type NodeMap = HashMap<u64, Hash, std::hash::BuildHasherDefault<PlaceHasher>>;

/// Places in one chunk of a level at most (128 KiB of hashes): a level is allocated a chunk at a
/// time, so it is never copied whole to grow, and a node far along a level (read after a
/// restart, say) costs its chunk, not the level up to it. A chunk grows by doubling up to this,
/// so the small levels near the root cost what they hold.
const CHUNK: usize = 1 << 12;

/// One level's chunks, by `index / CHUNK`; an empty one where no node of it was kept.
type Level = Vec<Vec<Hash>>;

/// The upper nodes: for each level from `lowest` up, its nodes by index in chunks ([`ABSENT`]
/// where not yet read), `places` in all (a chunk counts the places it has allocated, a slot of
/// a level's chunk list one). A lookup is two memory accesses, the chunk list of a level being
/// small enough to stay in the CPU's caches; the map this replaced took two or three that
/// missed them.
struct Upper {
    lowest: u8,
    levels: Vec<Level>,
    places: usize,
}

impl Upper {
    fn get(&self, level: u8, index: u64) -> Option<Hash> {
        if level < self.lowest {
            return None;
        }
        let index = usize::try_from(index).ok()?;
        let hash = *self
            .levels
            .get(usize::from(level))?
            .get(index / CHUNK)?
            .get(index % CHUNK)?;
        (hash != ABSENT).then_some(hash)
    }

    /// Keeps `hash` at its place unless its level is not kept (any more). Room is made first:
    /// the lowest levels are given up while what the place needs allocated would pass
    /// `limit`. False when not kept.
    fn put(&mut self, level: u8, index: u64, hash: Hash, limit: usize) -> bool {
        let (Ok(index), at) = (usize::try_from(index), usize::from(level)) else {
            return false;
        };
        let Some(chunks) = self.levels.get(at).filter(|_| level >= self.lowest) else {
            return false;
        };
        let (c, offset) = (index / CHUNK, index % CHUNK);
        let (len, capacity) = chunks.get(c).map_or((0, 0), |k| (k.len(), k.capacity()));
        if offset >= len {
            let wanted = match offset < capacity {
                true => capacity,
                false => (offset + 1).max(capacity * 2).min(CHUNK),
            };
            let grow = (wanted - capacity).saturating_add((c + 1).saturating_sub(chunks.len()));
            while self.places.saturating_add(grow) > limit && self.lowest <= level {
                self.give_up_lowest();
            }
            if level < self.lowest {
                return false;
            }
            let chunks = &mut self.levels[at];
            if chunks.len() <= c {
                self.places += c + 1 - chunks.len();
                chunks.resize_with(c + 1, Vec::new);
            }
            let chunk = &mut chunks[c];
            chunk.reserve_exact(wanted - len);
            chunk.resize(offset + 1, ABSENT);
            self.places += chunk.capacity() - capacity;
        }
        match self.levels[at].get_mut(c).and_then(|k| k.get_mut(offset)) {
            Some(slot) => {
                *slot = hash;
                true
            }
            None => false,
        }
    }

    /// Gives up the lowest level kept.
    fn give_up_lowest(&mut self) {
        if let Some(level) = self.levels.get_mut(usize::from(self.lowest)) {
            let allocated: usize = level.iter().map(Vec::capacity).sum();
            self.places -= level.len() + allocated;
            *level = Vec::new();
        }
        self.lowest += 1;
    }
}

/// See the module doc.
pub(crate) struct NodeCache {
    upper: RwLock<Upper>,
    recent: RwLock<NodeMap>,
    upper_limit: usize,
}

impl Default for NodeCache {
    fn default() -> Self {
        Self::with_limit(UPPER_NODES)
    }
}

impl NodeCache {
    /// A cache that keeps at most about `bytes` of hashes (the hub's `[log] node_cache_mb`).
    pub(crate) fn with_bytes(bytes: u64) -> Self {
        Self::with_limit(usize::try_from(bytes / 32).unwrap_or(usize::MAX))
    }

    /// A cache that keeps at most `upper_limit` upper places (tests use small ones).
    pub(crate) fn with_limit(upper_limit: usize) -> Self {
        NodeCache {
            upper: RwLock::new(Upper {
                lowest: CACHED_LEVELS,
                levels: vec![Vec::new(); 64],
                places: 0,
            }),
            recent: RwLock::new(NodeMap::default()),
            upper_limit: upper_limit.max(1),
        }
    }

    pub(crate) fn get(&self, level: u8, index: u64) -> Option<Hash> {
        if let Some(h) = self.upper.read().ok()?.get(level, index) {
            return Some(h);
        }
        self.recent
            .read()
            .ok()?
            .get(&node_place(level, index))
            .copied()
    }

    /// Call only with committed nodes.
    pub(crate) fn insert(&self, level: u8, index: u64, hash: Hash) {
        self.insert_all(&[(level, index, hash)]);
    }

    /// [`Self::insert`] for several nodes, each lock taken once. Call only with committed
    /// nodes.
    pub(crate) fn insert_all(&self, nodes: &[(u8, u64, Hash)]) {
        let mut rest = Vec::new();
        match self.upper.write() {
            Ok(mut upper) => {
                for &(level, index, hash) in nodes {
                    if !upper.put(level, index, hash, self.upper_limit) {
                        rest.push((level, index, hash));
                    }
                }
            }
            Err(_) => rest.extend_from_slice(nodes),
        }
        if rest.is_empty() {
            return;
        }
        if let Ok(mut recent) = self.recent.write() {
            for (level, index, hash) in rest {
                if recent.len() >= RECENT_NODES {
                    recent.clear();
                }
                recent.insert(node_place(level, index), hash);
            }
        }
    }

    /// Keeps those of `nodes` whose level is kept in the arrays, and drops the others: for
    /// nodes just written, most of which no proof may ask for soon, so that a log past the
    /// bound does not churn the set of given-up levels with each write. Call only with
    /// committed nodes.
    pub(crate) fn insert_kept(&self, nodes: &[(u8, u64, Hash)]) {
        if nodes.is_empty() {
            return;
        }
        if let Ok(mut upper) = self.upper.write() {
            for &(level, index, hash) in nodes {
                upper.put(level, index, hash, self.upper_limit);
            }
        }
    }

    /// How many upper places and lower nodes are kept, and the lowest upper level.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize, u8) {
        let (upper, lowest) = self.upper.read().map_or((0, 0), |u| (u.places, u.lowest));
        let recent = self.recent.read().map_or(0, |r| r.len());
        (upper, recent, lowest)
    }

    /// Forgets the lower nodes (as an insert past [`RECENT_NODES`] does).
    #[cfg(test)]
    pub(crate) fn clear_recent(&self) {
        if let Ok(mut recent) = self.recent.write() {
            recent.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// Node places spread over the map's buckets (picked by the low bits of the hash): the
    /// same index at many levels, and neighbouring indices, do not pile into a few buckets.
    #[test]
    fn node_places_spread_over_buckets() {
        let hasher = std::hash::BuildHasherDefault::<PlaceHasher>::default();
        let places: Vec<u64> = (3..21u8)
            .flat_map(|level| (0..1000u64).map(move |index| node_place(level, index)))
            .collect();
        let buckets: std::collections::HashSet<u64> =
            places.iter().map(|p| hasher.hash_one(p) & 0xffff).collect();
        // 18,000 places thrown at random into 65,536 buckets fill about 15,700.
        assert!(
            buckets.len() > 14_000,
            "{} places fell into {} buckets",
            places.len(),
            buckets.len()
        );
    }

    /// The upper set never passes its limit: the lowest level goes first, the higher ones and
    /// what was kept of them stay, and a given-up level's nodes still serve from the lower set.
    #[test]
    fn the_upper_set_gives_up_its_lowest_level_at_the_limit() {
        assert_eq!(NodeCache::with_bytes(128 << 20).upper_limit, UPPER_NODES);
        assert_eq!(NodeCache::with_bytes(1 << 20).upper_limit, 32_768);
        let limit = 6 * CHUNK + 100;
        let cache = NodeCache::with_limit(limit);
        let hash = |level: u8, index: u64| {
            let mut h = [0u8; 32];
            h[0] = level + 1;
            h[1..9].copy_from_slice(&index.to_be_bytes());
            h
        };
        // A log growing to 2^15 leaves (eight chunks of leaf hashes, 27 chunks in all): each
        // node of levels 0 to 15 as it is completed.
        for leaves in 1..=(1u64 << 15) {
            for level in 0..16u8 {
                if leaves % (1 << level) == 0 {
                    let index = (leaves >> level) - 1;
                    cache.insert(level, index, hash(level, index));
                    let (upper, _, _) = cache.counts();
                    assert!(upper <= limit, "{upper} upper places");
                }
            }
        }
        let (upper, recent, lowest) = cache.counts();
        // Levels 0 and 1 (eight and four chunks) cannot stay; level 2 and up (two chunks, one,
        // and the rest about one between them) can.
        assert_eq!(lowest, 2, "lowest level kept");
        assert!(upper > 0 && recent > 0);
        for level in lowest..16 {
            for index in 0..(1u64 << (15 - level)) {
                assert_eq!(cache.get(level, index), Some(hash(level, index)));
            }
        }
        // Top down, too (as proofs of an old store might read them), in one call.
        let top_down = NodeCache::with_limit(limit);
        let nodes: Vec<_> = (0..16u8)
            .rev()
            .flat_map(|level| (0..(1u64 << (15 - level))).map(move |i| (level, i, hash(level, i))))
            .collect();
        top_down.insert_all(&nodes);
        let (places, _, lowest) = top_down.counts();
        assert!(places <= limit, "{places} upper places");
        assert_eq!(lowest, 2);
        assert_eq!(top_down.get(2, 8191), Some(hash(2, 8191)));
        // A node far along a level gives up that level instead of allocating the chunk list up
        // to it past the limit; it is still served, from the lower set.
        let far = NodeCache::with_limit(3 * CHUNK + 64);
        far.insert(12, 3, hash(12, 3));
        far.insert(4, 500_000_000, hash(4, 500_000_000));
        let (places, _, lowest) = far.counts();
        assert_eq!((places, lowest), (5, 5), "one slot and four places kept");
        assert_eq!(far.get(4, 500_000_000), Some(hash(4, 500_000_000)));
        assert_eq!(far.get(12, 3), Some(hash(12, 3)));
        assert_eq!(far.get(12, 2), None, "an empty place is no node");
        assert_eq!(far.get(12, 99_999), None);
        // A chunk far along a level that fits costs its chunk and the list's slots only.
        let sparse = NodeCache::with_limit(3 * CHUNK + 64);
        sparse.insert(0, 40 * CHUNK as u64 + 5, hash(0, 5));
        assert_eq!(sparse.counts(), (41 + 6, 0, 0), "41 slots, 6 places");
        assert_eq!(sparse.get(0, 40 * CHUNK as u64 + 5), Some(hash(0, 5)));
        assert_eq!(sparse.get(0, 5), None);
        // A level given up is not kept above any more, whatever comes.
        cache.insert(0, 10_000, hash(0, 10_000));
        assert_eq!(cache.counts().0, upper);
        assert_eq!(cache.get(0, 10_000), Some(hash(0, 10_000)));
    }
}
