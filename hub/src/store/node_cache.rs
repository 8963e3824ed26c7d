//! Merkle node hashes kept in memory once read or written, for both backends. A committed
//! subtree's hash never changes, so nothing is ever invalidated; what the cache needs is a
//! bound, since the tree grows for as long as the hub runs.
//!
//! An inclusion proof takes one node per level. The nodes from [`CACHED_LEVELS`] up are shared
//! by many proofs (a node at level `l` by `2^l` leaves) and are kept up to [`UPPER_NODES`];
//! when that is reached, the lowest level kept is given up (which halves the count), so the
//! most shared nodes stay and memory stays flat however long the log grows. Below, a proof's
//! few nodes (and leaf hashes) are kept up to [`RECENT_NODES`] and the set is emptied when
//! full: every proof against a recent size needs the nodes along the tree's right edge, so
//! those are read once rather than once per proof.

use std::collections::HashMap;
use std::sync::RwLock;

use huren_core::merkle::Hash;

/// The lowest level kept while the upper set has room. Level 3 rather than 6 made FindPrior
/// with proofs 15% faster at 100,000 summaries on sled (measured before tiles, when each lower
/// node was a read of its own); level 1 gained no more than noise.
pub(crate) const CACHED_LEVELS: u8 = 3;

/// Upper nodes kept at most (about 25 MB with the map's spare room): all of them for a log of
/// up to two million entries, then the levels above the lowest given up.
pub(crate) const UPPER_NODES: usize = 1 << 19;

/// Lower-level nodes and leaf hashes kept at most (about 4 MB); the set is emptied when full.
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

/// The upper nodes and the lowest level they are kept from.
struct Upper {
    lowest: u8,
    nodes: NodeMap,
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
    /// A cache that keeps at most `upper_limit` upper nodes (tests use small ones).
    pub(crate) fn with_limit(upper_limit: usize) -> Self {
        NodeCache {
            upper: RwLock::new(Upper {
                lowest: CACHED_LEVELS,
                nodes: NodeMap::default(),
            }),
            recent: RwLock::new(NodeMap::default()),
            upper_limit: upper_limit.max(1),
        }
    }

    pub(crate) fn get(&self, level: u8, index: u64) -> Option<Hash> {
        let place = node_place(level, index);
        if level >= CACHED_LEVELS
            && let Some(h) = self.upper.read().ok()?.nodes.get(&place)
        {
            return Some(*h);
        }
        self.recent.read().ok()?.get(&place).copied()
    }

    /// Call only with committed nodes.
    pub(crate) fn insert(&self, level: u8, index: u64, hash: Hash) {
        let place = node_place(level, index);
        if level >= CACHED_LEVELS
            && let Ok(mut upper) = self.upper.write()
            && level >= upper.lowest
        {
            let before = upper.nodes.len();
            while upper.nodes.len() >= self.upper_limit && upper.lowest < 64 {
                upper.lowest += 1;
                let lowest = upper.lowest;
                upper.nodes.retain(|place, _| (place >> 56) as u8 >= lowest);
            }
            if upper.nodes.len() < before {
                upper.nodes.shrink_to_fit();
            }
            if level >= upper.lowest {
                upper.nodes.insert(place, hash);
                return;
            }
        }
        if let Ok(mut recent) = self.recent.write() {
            if recent.len() >= RECENT_NODES {
                recent.clear();
            }
            recent.insert(place, hash);
        }
    }

    /// How many upper and lower nodes are kept, and the lowest upper level.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize, u8) {
        let (upper, lowest) = self
            .upper
            .read()
            .map_or((0, 0), |u| (u.nodes.len(), u.lowest));
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
        let cache = NodeCache::with_limit(100);
        let hash = |level: u8, index: u64| {
            let mut h = [0u8; 32];
            h[0] = level;
            h[1..9].copy_from_slice(&index.to_be_bytes());
            h
        };
        // A log growing to 2^12 leaves: each node of levels 3 to 9 as it is completed.
        for leaves in 1..=(1u64 << 12) {
            for level in 3..10u8 {
                if leaves % (1 << level) == 0 {
                    cache.insert(
                        level,
                        (leaves >> level) - 1,
                        hash(level, (leaves >> level) - 1),
                    );
                    let (upper, _, _) = cache.counts();
                    assert!(upper <= 100, "{upper} upper nodes");
                }
            }
        }
        // Top down, too (as proofs of an old store might read them).
        let top_down = NodeCache::with_limit(100);
        for level in (3..10u8).rev() {
            for index in 0..(1u64 << (12 - level)) {
                top_down.insert(level, index, hash(level, index));
                assert!(top_down.counts().0 <= 100);
            }
        }
        let (upper, recent, lowest) = cache.counts();
        assert!(lowest > CACHED_LEVELS, "lowest level kept: {lowest}");
        assert!(upper > 0 && recent > 0);
        for level in lowest..10 {
            for index in 0..(1u64 << (12 - level)) {
                assert_eq!(cache.get(level, index), Some(hash(level, index)));
            }
        }
        // A level given up is not kept above any more, whatever comes.
        cache.insert(CACHED_LEVELS, 10_000, hash(CACHED_LEVELS, 10_000));
        assert_eq!(cache.counts().0, upper);
        assert_eq!(
            cache.get(CACHED_LEVELS, 10_000),
            Some(hash(CACHED_LEVELS, 10_000))
        );
    }
}
