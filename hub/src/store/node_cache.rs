//! Merkle node hashes kept in memory once read or written, for both backends. A committed
//! subtree's hash never changes, so nothing is ever invalidated; what the cache needs is a
//! bound, since the tree grows for as long as the hub runs.
//!
//! An inclusion proof takes one node per level. The nodes from [`CACHED_LEVELS`] up are shared
//! by many proofs (a node at level `l` by `2^l` leaves) and are kept in one array per level,
//! indexed by the node's index, up to [`UPPER_NODES`] places in all; when that is reached, the
//! lowest level kept is given up (which halves the count), so the most shared nodes stay and
//! memory stays flat however long the log grows. Below, a proof's
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

/// Places of upper nodes kept at most (16 MB of hashes, up to twice that while an array
/// grows): all of them for a log of up to two million entries, then the levels above the
/// lowest given up.
pub(crate) const UPPER_NODES: usize = 1 << 19;

/// An empty place of an upper level's array. A node whose hash is all zeros (a SHA-256 output
/// no one can aim at) would only be read from the store each time, never answered wrongly.
const ABSENT: Hash = [0; 32];

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

/// The upper nodes: for each level from `lowest` up, an array of its nodes by index
/// ([`ABSENT`] where not yet read), `places` in all. An array lookup is one memory access where
/// the map it replaced took two or three, and proofs at a million entries missed the CPU's
/// caches at each.
struct Upper {
    lowest: u8,
    levels: Vec<Vec<Hash>>,
    places: usize,
}

impl Upper {
    fn get(&self, level: u8, index: u64) -> Option<Hash> {
        if level < self.lowest {
            return None;
        }
        let hash = *self
            .levels
            .get(usize::from(level))?
            .get(usize::try_from(index).ok()?)?;
        (hash != ABSENT).then_some(hash)
    }

    /// Gives up the lowest level kept.
    fn give_up_lowest(&mut self) {
        if let Some(level) = self.levels.get_mut(usize::from(self.lowest)) {
            self.places -= level.len();
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
    /// A cache that keeps at most `upper_limit` upper nodes (tests use small ones).
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
        if level >= CACHED_LEVELS
            && let Some(h) = self.upper.read().ok()?.get(level, index)
        {
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
        let place = node_place(level, index);
        if (CACHED_LEVELS..64).contains(&level)
            && let Ok(index) = usize::try_from(index)
            && let Ok(mut upper) = self.upper.write()
            && level >= upper.lowest
        {
            let at = usize::from(level);
            let len = upper.levels.get(at).map_or(0, Vec::len);
            let grow = index.saturating_add(1).saturating_sub(len);
            // Room is made before the array grows: a node far along a level (read after a
            // restart, say) would otherwise allocate its whole level at once.
            while upper.places.saturating_add(grow) > self.upper_limit && upper.lowest <= level {
                upper.give_up_lowest();
            }
            if level >= upper.lowest
                && let Some(nodes) = upper.levels.get_mut(at)
            {
                if grow > 0 {
                    nodes.resize(index + 1, ABSENT);
                }
                if let Some(slot) = nodes.get_mut(index) {
                    *slot = hash;
                }
                upper.places += grow;
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
        // A node far along a level gives up that level instead of growing its array past the
        // limit; it is still served, from the lower set.
        let far = NodeCache::with_limit(100);
        far.insert(12, 3, hash(12, 3));
        far.insert(4, 5_000, hash(4, 5_000));
        let (places, _, lowest) = far.counts();
        assert_eq!((places, lowest), (4, 5));
        assert_eq!(far.get(4, 5_000), Some(hash(4, 5_000)));
        assert_eq!(far.get(12, 3), Some(hash(12, 3)));
        assert_eq!(far.get(12, 2), None, "an empty place is no node");
        assert_eq!(far.get(12, 99), None);
        // A level given up is not kept above any more, whatever comes.
        cache.insert(CACHED_LEVELS, 10_000, hash(CACHED_LEVELS, 10_000));
        assert_eq!(cache.counts().0, upper);
        assert_eq!(
            cache.get(CACHED_LEVELS, 10_000),
            Some(hash(CACHED_LEVELS, 10_000))
        );
    }
}
