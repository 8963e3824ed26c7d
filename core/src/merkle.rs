//! The hub's append-only Merkle log: RFC 6962 tree hashing, RFC 9162 inclusion and consistency
//! proofs, and the storage model the hub keeps the tree in.
//!
//! Hashes (RFC 6962 section 2.1, SHA-256, 32 bytes each):
//!
//! ```text
//! leaf hash  = SHA-256(0x00 || leaf bytes)
//! node hash  = SHA-256(0x01 || left hash || right hash)
//! MTH({})    = SHA-256("")                                    the empty tree
//! MTH(D[n])  = node hash(MTH(D[0:k]), MTH(D[k:n]))            k = largest power of two < n
//! ```
//!
//! The `0x00`/`0x01` prefixes keep a leaf from ever hashing like an inner node.
//!
//! Storage model: only hashes of *complete* subtrees are stored, addressed by `(level, index)`.
//! Node `(level, index)` covers leaves `[index << level, (index + 1) << level)`; level 0 holds the
//! leaf hashes. A stored node never changes once written, so the store is append-only too. The
//! hash of an incomplete subtree (the right edge of a tree whose size is not a power of two) is
//! never stored: [`root`], [`inclusion_proof`] and [`consistency_proof`] recompute it from
//! complete subtrees read through a [`NodeReader`], which also lets them answer for any past
//! tree size.
//!
//! Frontier: the tree of `size` leaves splits into complete subtrees, one per set bit of `size`,
//! largest (leftmost) first: for size 6 = 0b110 the frontier is `[node(2, 0), node(1, 2)]`. It
//! is all [`append`] needs to add a leaf and all [`root_from_frontier`] needs to compute the root,
//! so the hub keeps it in memory and can rebuild it from the store with [`frontier`].
//!
//! Proofs are lists of hashes in RFC 9162 order, from the leaf end up to the root end; the
//! verifiers [`verify_inclusion`] and [`verify_consistency`] need no store at all.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: of a leaf, of a node, or the root of a tree.
pub type Hash = [u8; 32];

/// Prefix of a leaf hash's input (RFC 6962).
pub const LEAF_PREFIX: u8 = 0x00;
/// Prefix of an inner node hash's input (RFC 6962).
pub const NODE_PREFIX: u8 = 0x01;

/// The hashes in their concatenation (32 bytes each, as proofs, tiles and stored node lists
/// carry them); `None` when the length is not a whole number of hashes.
pub fn split_hashes(raw: &[u8]) -> Option<Vec<Hash>> {
    if !raw.len().is_multiple_of(32) {
        return None;
    }
    Some(
        raw.chunks_exact(32)
            .map(|h| {
                let mut hash = [0; 32];
                hash.copy_from_slice(h);
                hash
            })
            .collect(),
    )
}

/// `SHA-256(0x00 || data)`: the hash of one leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// `SHA-256("")`: the root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Read access to the stored hashes of complete subtrees.
///
/// `node(level, index)` returns the hash of the complete subtree over leaves
/// `[index << level, (index + 1) << level)`. The functions here only ask for nodes that lie
/// entirely inside the tree size they were given.
pub trait NodeReader {
    type Error;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// Why a root or proof could not be computed from stored nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError<E> {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    SizeOrder { old_size: u64, new_size: u64 },
    #[error("reading stored node (level {level}, index {index}): {source}")]
    Node {
        level: u8,
        index: u64,
        #[source]
        source: E,
    },
}

/// Why a proof was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    SizeOrder { old_size: u64, new_size: u64 },
    #[error("the proof has {got} hashes, but these tree sizes need {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("the inclusion proof does not lead to the given root")]
    RootMismatch,
    #[error("the consistency proof does not lead to the old root")]
    OldRootMismatch,
    #[error("the consistency proof does not lead to the new root")]
    NewRootMismatch,
    #[error("two trees of the same size have different roots")]
    SameSizeRootsDiffer,
    #[error("a tree of size 0 must have the empty root SHA-256(\"\")")]
    NotEmptyRoot,
}

/// Appends one leaf (its [`leaf_hash`]) to a tree of `size` leaves whose frontier is
/// `frontier`, updates the frontier to the tree of `size + 1` leaves, and returns every node that
/// became complete: the leaf itself as `(0, size, leaf)`, then each parent it completed, level by
/// level. The caller stores them; nothing else ever needs writing.
///
/// `frontier` must be the frontier of the tree of `size` leaves (one hash per set bit of `size`,
/// largest subtree first, as this function leaves it); given anything else the result is
/// meaningless. O(log size).
pub fn append(frontier: &mut Vec<Hash>, size: u64, leaf: Hash) -> Vec<(u8, u64, Hash)> {
    debug_assert_eq!(frontier.len(), size.count_ones() as usize);
    let mut completed = Vec::with_capacity(size.trailing_ones() as usize + 1);
    let (mut level, mut index, mut hash) = (0u8, size, leaf);
    completed.push((level, index, hash));
    // A right child completes its parent; the left sibling is the last frontier entry.
    while index & 1 == 1 {
        let Some(left) = frontier.pop() else { break };
        hash = node_hash(&left, &hash);
        level += 1;
        index >>= 1;
        completed.push((level, index, hash));
    }
    frontier.push(hash);
    completed
}

/// The root of the tree of `size` leaves from its frontier (RFC 6962 MTH): the complete
/// subtrees folded right to left. The empty tree has [`empty_root`].
pub fn root_from_frontier(frontier: &[Hash], size: u64) -> Hash {
    debug_assert_eq!(frontier.len(), size.count_ones() as usize);
    let mut right_to_left = frontier.iter().rev();
    match right_to_left.next() {
        Some(last) if size != 0 => right_to_left.fold(*last, |acc, left| node_hash(left, &acc)),
        _ => empty_root(),
    }
}

/// Reads the frontier of the tree of `size` leaves from the store (after a restart, say).
pub fn frontier<R: NodeReader>(size: u64, reader: &R) -> Result<Vec<Hash>, TreeError<R::Error>> {
    complete_subtrees(0, size)
        .map(|(level, index)| read(reader, level, index))
        .collect()
}

/// Where the frontier of the tree of `size` leaves sits: the `(level, index)` of each of its
/// complete subtrees, in the order [`append`] keeps the frontier.
pub fn frontier_nodes(size: u64) -> impl Iterator<Item = (u8, u64)> {
    complete_subtrees(0, size)
}

/// The root of the tree of `size` leaves (RFC 6962 MTH), from stored complete subtrees.
pub fn root<R: NodeReader>(size: u64, reader: &R) -> Result<Hash, TreeError<R::Error>> {
    subtree_hash(reader, 0, size)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves (RFC 9162 section 2.1.3.1,
/// `PATH(index, D[size])`), from the leaf's sibling up.
pub fn inclusion_proof<R: NodeReader>(
    index: u64,
    size: u64,
    reader: &R,
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    if index >= size {
        return Err(TreeError::IndexOutOfRange { index, size });
    }
    inclusion_ranges(index, size)
        .into_iter()
        .map(|(begin, end)| subtree_hash(reader, begin, end))
        .collect()
}

/// The inclusion proofs of leaves `indexes` in the tree of `size` leaves, in the order asked,
/// each as [`inclusion_proof`] gives it. A proof's sibling on the tree's right edge is, unless
/// `size` is a power of two, an incomplete subtree: its hash is folded from up to one stored
/// node per level below it (twenty reads and as many hashes in a tree of a million leaves).
/// Proofs of one tree share those subtrees, so each is folded once here.
pub fn inclusion_proofs<R: NodeReader>(
    indexes: &[u64],
    size: u64,
    reader: &R,
) -> Result<Vec<Vec<Hash>>, TreeError<R::Error>> {
    // The right-edge subtrees folded so far, by their first leaf: at most one per level.
    let mut edge: Vec<(u64, Hash)> = Vec::new();
    let mut proofs = Vec::with_capacity(indexes.len());
    for &index in indexes {
        if index >= size {
            return Err(TreeError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        for (begin, end) in inclusion_ranges(index, size) {
            let incomplete = end == size && !(end - begin).is_power_of_two();
            let hash = match edge.iter().find(|(b, _)| incomplete && *b == begin) {
                Some((_, hash)) => *hash,
                None => {
                    let hash = subtree_hash(reader, begin, end)?;
                    if incomplete {
                        edge.push((begin, hash));
                    }
                    hash
                }
            };
            proof.push(hash);
        }
        proofs.push(proof);
    }
    Ok(proofs)
}

/// The stored nodes `(level, index)` that [`inclusion_proofs`] reads for leaves `indexes` in
/// the tree of `size` leaves, each once, in the order first read: what a reader whose reads
/// are round trips fetches before the proofs are made. Leaves outside the tree add nothing
/// (their proofs fail).
pub fn inclusion_proof_nodes(indexes: &[u64], size: u64) -> Vec<(u8, u64)> {
    nodes_of(
        indexes
            .iter()
            .filter(|&&index| index < size)
            .flat_map(|&index| inclusion_ranges(index, size)),
    )
}

/// The proof that the tree of `old_size` leaves is a prefix of the tree of `new_size` leaves
/// (RFC 9162 section 2.1.4.1, `PROOF(old_size, D[new_size])`). Empty when `old_size` is 0 or
/// equals `new_size`: those need no hashes.
pub fn consistency_proof<R: NodeReader>(
    old_size: u64,
    new_size: u64,
    reader: &R,
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    if old_size > new_size {
        return Err(TreeError::SizeOrder { old_size, new_size });
    }
    consistency_ranges(old_size, new_size)
        .into_iter()
        .map(|(begin, end)| subtree_hash(reader, begin, end))
        .collect()
}

/// The stored nodes `(level, index)` that [`consistency_proof`] reads from the tree of
/// `old_size` to the tree of `new_size`, each once, in the order first read (as
/// [`inclusion_proof_nodes`] for inclusion proofs). Sizes out of order add nothing.
pub fn consistency_proof_nodes(old_size: u64, new_size: u64) -> Vec<(u8, u64)> {
    match old_size > new_size {
        true => Vec::new(),
        false => nodes_of(consistency_ranges(old_size, new_size)),
    }
}

/// The complete subtrees the hashes of leaf ranges `ranges` are folded from, each once, in
/// the order [`subtree_hash`] reads them.
fn nodes_of(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u8, u64)> {
    let mut nodes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (begin, end) in ranges {
        for node in complete_subtrees(begin, end - begin) {
            if seen.insert(node) {
                nodes.push(node);
            }
        }
    }
    nodes
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `size` leaves with root `root`
/// (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_ranges(index, size).len();
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    let (mut fn_, mut sn, mut r) = (index, size - 1, *leaf_hash);
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength {
                expected,
                got: proof.len(),
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root` (RFC 9162 section 2.1.4.2).
///
/// Edge cases RFC 9162 leaves open: equal sizes need an empty proof and equal roots; old size 0
/// needs an empty proof and `old_root` equal to [`empty_root`] (and so `new_root` too when both
/// sizes are 0), since every tree extends the empty one.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeOrder { old_size, new_size });
    }
    let wrong_length = |expected| ProofError::WrongLength {
        expected,
        got: proof.len(),
    };
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(wrong_length(0));
        }
        if *old_root != empty_root() || (new_size == 0 && *new_root != empty_root()) {
            return Err(ProofError::NotEmptyRoot);
        }
        return Ok(());
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(wrong_length(0));
        }
        if old_root != new_root {
            return Err(ProofError::SameSizeRootsDiffer);
        }
        return Ok(());
    }
    let expected = consistency_ranges(old_size, new_size).len();
    if proof.len() != expected {
        return Err(wrong_length(expected));
    }
    // When the old tree is a complete subtree its root is the proof's implicit first hash.
    let (first, rest) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        match proof.split_first() {
            Some((first, rest)) => (*first, rest),
            None => return Err(wrong_length(expected)),
        }
    };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in rest {
        if sn == 0 {
            return Err(wrong_length(expected));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(wrong_length(expected));
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::NewRootMismatch);
    }
    Ok(())
}

/// A whole Merkle log in memory: every complete node, level by level, plus the frontier.
/// For tests, and for callers that want an in-memory log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryTree {
    /// `levels[level][index]` is node `(level, index)`.
    levels: Vec<Vec<Hash>>,
    frontier: Vec<Hash>,
    size: u64,
}

/// A [`MemoryTree`] was asked for a node it does not have (not complete yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tree has no complete node at level {level}, index {index}")]
pub struct MissingNode {
    pub level: u8,
    pub index: u64,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The current root.
    pub fn root(&self) -> Hash {
        root_from_frontier(&self.frontier, self.size)
    }

    /// The current frontier (see the module doc).
    pub fn frontier(&self) -> &[Hash] {
        &self.frontier
    }

    /// Appends a leaf's data; returns its index.
    pub fn push(&mut self, data: &[u8]) -> u64 {
        self.push_leaf_hash(leaf_hash(data))
    }

    /// Appends an already computed leaf hash; returns its index.
    pub fn push_leaf_hash(&mut self, leaf: Hash) -> u64 {
        let index = self.size;
        for (level, _, hash) in append(&mut self.frontier, self.size, leaf) {
            // Nodes complete bottom-up and left to right, so each is the next of its level.
            match self.levels.get_mut(usize::from(level)) {
                Some(nodes) => nodes.push(hash),
                None => self.levels.push(vec![hash]),
            }
        }
        self.size += 1;
        index
    }
}

impl NodeReader for MemoryTree {
    type Error = MissingNode;

    fn node(&self, level: u8, index: u64) -> Result<Hash, MissingNode> {
        self.levels
            .get(usize::from(level))
            .and_then(|nodes| nodes.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(MissingNode { level, index })
    }
}

fn read<R: NodeReader>(reader: &R, level: u8, index: u64) -> Result<Hash, TreeError<R::Error>> {
    reader.node(level, index).map_err(|source| TreeError::Node {
        level,
        index,
        source,
    })
}

/// The complete subtrees `(level, index)` that leaves `[begin, begin + len)` split into, left to
/// right, largest first. `begin` must be a multiple of the smallest power of two >= `len`, which
/// holds for the root and every subtree the RFC 6962 recursion visits.
fn complete_subtrees(begin: u64, len: u64) -> impl Iterator<Item = (u8, u64)> {
    let mut next = begin;
    (0..64u8).rev().filter_map(move |level| {
        if len & (1 << level) == 0 {
            return None;
        }
        let node = (level, next >> level);
        next += 1 << level;
        Some(node)
    })
}

/// MTH(D[begin:end]) for a subtree the RFC 6962 recursion visits.
fn subtree_hash<R: NodeReader>(
    reader: &R,
    begin: u64,
    end: u64,
) -> Result<Hash, TreeError<R::Error>> {
    let mut nodes = Vec::with_capacity(64);
    for (level, index) in complete_subtrees(begin, end - begin) {
        nodes.push(read(reader, level, index)?);
    }
    Ok(root_from_frontier(&nodes, end - begin))
}

/// The largest power of two smaller than `n` (the RFC's `k`); `n` must be at least 2.
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The leaf ranges whose subtree hashes form PATH(index, D[size]), in proof order.
/// Requires `index < size`.
fn inclusion_ranges(index: u64, size: u64) -> Vec<(u64, u64)> {
    let (mut begin, mut end) = (0, size);
    let mut ranges = Vec::new();
    while end - begin > 1 {
        let mid = begin + split_point(end - begin);
        if index < mid {
            ranges.push((mid, end));
            end = mid;
        } else {
            ranges.push((begin, mid));
            begin = mid;
        }
    }
    ranges.reverse();
    ranges
}

/// The leaf ranges whose subtree hashes form PROOF(old_size, D[new_size]), in proof order.
/// Empty when `old_size` is 0 or equals `new_size`. Requires `old_size <= new_size`.
fn consistency_ranges(old_size: u64, new_size: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    if old_size == 0 || old_size == new_size {
        return ranges;
    }
    // SUBPROOF's flag b: whether the verifier knows this subtree's hash already (the old root).
    let (mut begin, mut end, mut known) = (0, new_size, true);
    loop {
        if old_size == end {
            if !known {
                ranges.push((begin, end));
            }
            break;
        }
        let mid = begin + split_point(end - begin);
        if old_size <= mid {
            ranges.push((mid, end));
            end = mid;
        } else {
            ranges.push((begin, mid));
            begin = mid;
            known = false;
        }
    }
    ranges.reverse();
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hex: &str) -> Hash {
        hex::decode(hex).unwrap().try_into().unwrap()
    }

    // ---- RFC 6962 test vectors, as published in transparency-dev/merkle testonly/constants.go
    // and proof/verify_test.go (the same values as certificate-transparency-go's
    // merkletree/merkle_verifier_test.go).

    const LEAF_INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// Complete-subtree hashes by level, then index (testonly `NodeHashes`).
    const NODE_HASHES: [&[&str]; 4] = [
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
            "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
        ],
        &[
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        ],
        &[
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
        &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
    ];

    /// Roots for sizes 0..=8 (testonly `RootHashes`).
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// Frontiers for sizes 0..=8 as (level, index) into NODE_HASHES (testonly `CompactTrees`).
    const FRONTIERS: [&[(usize, usize)]; 9] = [
        &[],
        &[(0, 0)],
        &[(1, 0)],
        &[(1, 0), (0, 2)],
        &[(2, 0)],
        &[(2, 0), (0, 4)],
        &[(2, 0), (1, 2)],
        &[(2, 0), (1, 2), (0, 6)],
        &[(3, 0)],
    ];

    /// (leaf index, tree size, proof) from proof/verify_test.go `inclusionProofs` (which counts
    /// leaves from 1; converted to 0-based indices here).
    const INCLUSION_PROOFS: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    /// (old size, new size, proof) from proof/verify_test.go `consistencyProofs`.
    const CONSISTENCY_PROOFS: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn vector_tree() -> MemoryTree {
        let mut tree = MemoryTree::new();
        for input in LEAF_INPUTS {
            tree.push(&hex::decode(input).unwrap());
        }
        tree
    }

    fn hashes(hex: &[&str]) -> Vec<Hash> {
        hex.iter().map(|x| h(x)).collect()
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(empty_root(), h(ROOTS[0]));
        assert_eq!(MemoryTree::new().root(), empty_root());
        assert_eq!(root(0, &MemoryTree::new()).unwrap(), empty_root());
    }

    #[test]
    fn rfc6962_nodes_roots_and_frontiers() {
        let mut tree = MemoryTree::new();
        let mut frontier = Vec::new();
        for (size, input) in LEAF_INPUTS.iter().enumerate() {
            let size = size as u64;
            let leaf = leaf_hash(&hex::decode(input).unwrap());
            let completed = append(&mut frontier, size, leaf);
            for &(level, index, hash) in &completed {
                assert_eq!(
                    hash,
                    h(NODE_HASHES[level as usize][index as usize]),
                    "node ({level}, {index})"
                );
            }
            assert_eq!(completed[0], (0, size, leaf));
            assert_eq!(completed.len() as u32, size.trailing_ones() + 1);
            assert_eq!(tree.push(&hex::decode(input).unwrap()), size);
            let want: Vec<Hash> = FRONTIERS[size as usize + 1]
                .iter()
                .map(|&(l, i)| h(NODE_HASHES[l][i]))
                .collect();
            assert_eq!(frontier, want, "frontier after {} leaves", size + 1);
            assert_eq!(tree.frontier(), want.as_slice());
        }
        for (size, want) in ROOTS.iter().enumerate() {
            let size = size as u64;
            let want = h(want);
            assert_eq!(root(size, &tree).unwrap(), want, "root({size})");
            let f = frontier_of(size, &tree);
            assert_eq!(root_from_frontier(&f, size), want);
        }
        assert_eq!(tree.root(), h(ROOTS[8]));
        for (level, nodes) in NODE_HASHES.iter().enumerate() {
            for (index, want) in nodes.iter().enumerate() {
                assert_eq!(tree.node(level as u8, index as u64).unwrap(), h(want));
            }
        }
    }

    fn frontier_of(size: u64, tree: &MemoryTree) -> Vec<Hash> {
        frontier(size, tree).unwrap()
    }

    #[test]
    fn rfc6962_inclusion_proofs() {
        let tree = vector_tree();
        for (index, size, want) in INCLUSION_PROOFS {
            let want = hashes(want);
            let proof = inclusion_proof(index, size, &tree).unwrap();
            assert_eq!(proof, want, "inclusion proof of {index} in {size}");
            let leaf = leaf_hash(&hex::decode(LEAF_INPUTS[index as usize]).unwrap());
            verify_inclusion(&leaf, index, size, &want, &h(ROOTS[size as usize])).unwrap();
        }
    }

    #[test]
    fn rfc6962_consistency_proofs() {
        let tree = vector_tree();
        for (old, new, want) in CONSISTENCY_PROOFS {
            let want = hashes(want);
            let proof = consistency_proof(old, new, &tree).unwrap();
            assert_eq!(proof, want, "consistency proof {old} -> {new}");
            verify_consistency(
                old,
                new,
                &h(ROOTS[old as usize]),
                &h(ROOTS[new as usize]),
                &want,
            )
            .unwrap();
        }
    }

    /// Which subtrees a proof is made of, from transparency-dev/merkle proof/proof_test.go
    /// (`TestInclusion`, `TestConsistency`), written as leaf ranges: node (level, index) is
    /// `[index << level, (index + 1) << level)` and a "rehash" of nodes is the range they cover.
    #[test]
    fn proof_shapes() {
        type Shape = &'static [(u64, u64)];
        let inclusion: &[(u64, u64, Shape)] = &[
            (1, 0, &[]),
            (2, 0, &[(1, 2)]),
            (2, 1, &[(0, 1)]),
            (3, 1, &[(0, 1), (2, 3)]),
            (7, 0, &[(1, 2), (2, 4), (4, 7)]),
            (7, 1, &[(0, 1), (2, 4), (4, 7)]),
            (7, 2, &[(3, 4), (0, 2), (4, 7)]),
            (7, 3, &[(2, 3), (0, 2), (4, 7)]),
            (7, 4, &[(5, 6), (6, 7), (0, 4)]),
            (7, 5, &[(4, 5), (6, 7), (0, 4)]),
            (7, 6, &[(4, 6), (0, 4)]),
            (4, 2, &[(3, 4), (0, 2)]),
            (5, 3, &[(2, 3), (0, 2), (4, 5)]),
            (6, 3, &[(2, 3), (0, 2), (4, 6)]),
            (6, 4, &[(5, 6), (0, 4)]),
            (15, 10, &[(11, 12), (8, 10), (12, 15), (0, 8)]),
            (31, 24, &[(25, 26), (26, 28), (28, 31), (16, 24), (0, 16)]),
            (
                95,
                81,
                &[(80, 81), (82, 84), (84, 88), (88, 95), (64, 80), (0, 64)],
            ),
        ];
        for &(size, index, want) in inclusion {
            assert_eq!(inclusion_ranges(index, size), want, "PATH({index}, {size})");
        }
        let consistency: &[(u64, u64, Shape)] = &[
            (1, 2, &[(1, 2)]),
            (1, 4, &[(1, 2), (2, 4)]),
            (1, 6, &[(1, 2), (2, 4), (4, 6)]),
            (2, 3, &[(2, 3)]),
            (2, 8, &[(2, 4), (4, 8)]),
            (3, 7, &[(2, 3), (3, 4), (0, 2), (4, 7)]),
            (4, 7, &[(4, 7)]),
            (5, 7, &[(4, 5), (5, 6), (6, 7), (0, 4)]),
            (6, 7, &[(4, 6), (6, 7), (0, 4)]),
            (7, 8, &[(6, 7), (7, 8), (4, 6), (0, 4)]),
            (1, 1, &[]),
            (2, 2, &[]),
            (3, 3, &[]),
            (4, 4, &[]),
            (5, 5, &[]),
            (7, 7, &[]),
            (8, 8, &[]),
            (2, 4, &[(2, 4)]),
            (3, 5, &[(2, 3), (3, 4), (0, 2), (4, 5)]),
            (3, 6, &[(2, 3), (3, 4), (0, 2), (4, 6)]),
            (4, 6, &[(4, 6)]),
            (1, 7, &[(1, 2), (2, 4), (4, 7)]),
            (10, 15, &[(8, 10), (10, 12), (12, 15), (0, 8)]),
            (24, 31, &[(16, 24), (24, 31), (0, 16)]),
            (
                81,
                95,
                &[
                    (80, 81),
                    (81, 82),
                    (82, 84),
                    (84, 88),
                    (88, 95),
                    (64, 80),
                    (0, 64),
                ],
            ),
        ];
        for &(old, new, want) in consistency {
            assert_eq!(consistency_ranges(old, new), want, "PROOF({old}, {new})");
        }
    }

    // ---- A naive reference straight from the RFC's recursive definitions.

    fn naive_mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&naive_mth(&leaves[..k]), &naive_mth(&leaves[k..]))
            }
        }
    }

    fn naive_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n == 1 {
            return vec![];
        }
        let k = split_point(n as u64) as usize;
        if m < k {
            let mut p = naive_path(m, &leaves[..k]);
            p.push(naive_mth(&leaves[k..]));
            p
        } else {
            let mut p = naive_path(m - k, &leaves[k..]);
            p.push(naive_mth(&leaves[..k]));
            p
        }
    }

    fn naive_subproof(m: usize, leaves: &[Hash], b: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if b { vec![] } else { vec![naive_mth(leaves)] };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = naive_subproof(m, &leaves[..k], b);
            p.push(naive_mth(&leaves[k..]));
            p
        } else {
            let mut p = naive_subproof(m - k, &leaves[k..], false);
            p.push(naive_mth(&leaves[..k]));
            p
        }
    }

    fn numbered_tree(n: u64) -> (MemoryTree, Vec<Hash>) {
        let mut tree = MemoryTree::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let data = format!("leaf {i}");
            tree.push(data.as_bytes());
            leaves.push(leaf_hash(data.as_bytes()));
        }
        (tree, leaves)
    }

    #[test]
    fn root_matches_naive_mth() {
        let (tree, leaves) = numbered_tree(70);
        for size in 0..=70u64 {
            let want = naive_mth(&leaves[..size as usize]);
            assert_eq!(root(size, &tree).unwrap(), want, "root({size})");
            assert_eq!(
                root_from_frontier(&frontier(size, &tree).unwrap(), size),
                want
            );
        }
        assert_eq!(tree.root(), naive_mth(&leaves));
    }

    fn flip(proof: &[Hash], i: usize) -> Vec<Hash> {
        let mut p = proof.to_vec();
        p[i][0] ^= 0x08;
        p
    }

    /// Tampering checks. A wrong size is checked against the root of a tree of that size: a root
    /// commits to its size, and the same hashes can legitimately fold into the same root under
    /// another size of the same shape (PATH(0, D[3]) read as a proof in a tree of 4 leaves), so a
    /// proof with the size changed but the root kept proves nothing new.
    #[test]
    fn every_inclusion_proof_up_to_64_verifies_and_tampering_fails() {
        let (tree, leaves) = numbered_tree(128);
        let roots: Vec<Hash> = (0..=128).map(|s| root(s, &tree).unwrap()).collect();
        let bogus = leaf_hash(b"bogus");
        for size in 1..=64u64 {
            let root_hash = roots[size as usize];
            for index in 0..size {
                let leaf = leaves[index as usize];
                let proof = inclusion_proof(index, size, &tree).unwrap();
                assert_eq!(
                    proof,
                    naive_path(index as usize, &leaves[..size as usize]),
                    "PATH({index}, {size})"
                );
                verify_inclusion(&leaf, index, size, &proof, &root_hash).unwrap();

                let bad = |i: u64, s: u64, p: &[Hash], l: &Hash, r: &Hash| {
                    assert!(
                        verify_inclusion(l, i, s, p, r).is_err(),
                        "accepted index {i} size {s} (real {index} of {size})"
                    );
                };
                for i in 0..proof.len() {
                    bad(index, size, &flip(&proof, i), &leaf, &root_hash);
                }
                for wrong in [index.wrapping_sub(1), index + 1, index ^ 2, index ^ 1] {
                    if wrong != index {
                        bad(wrong, size, &proof, &leaf, &root_hash);
                    }
                }
                for wrong in [size - 1, size + 1, size * 2, size / 2] {
                    if wrong != size {
                        bad(index, wrong, &proof, &leaf, &roots[wrong as usize]);
                    }
                }
                bad(index, size, &proof, &bogus, &root_hash);
                bad(index, size, &proof, &leaf, &empty_root());
                let mut longer = proof.clone();
                longer.push(root_hash);
                bad(index, size, &longer, &leaf, &root_hash);
                let mut front = vec![leaf];
                front.extend_from_slice(&proof);
                bad(index, size, &front, &leaf, &root_hash);
                if !proof.is_empty() {
                    bad(index, size, &proof[..proof.len() - 1], &leaf, &root_hash);
                }
            }
        }
        // The shape coincidence described above, pinned so the reason stays visible.
        let p03 = inclusion_proof(0, 3, &tree).unwrap();
        verify_inclusion(&leaves[0], 0, 4, &p03, &roots[3]).unwrap();
        assert!(verify_inclusion(&leaves[0], 0, 4, &p03, &roots[4]).is_err());
    }

    /// A tree that counts its node reads.
    struct Counting<'a>(&'a MemoryTree, std::cell::Cell<usize>);

    impl NodeReader for Counting<'_> {
        type Error = MissingNode;
        fn node(&self, level: u8, index: u64) -> Result<Hash, MissingNode> {
            self.1.set(self.1.get() + 1);
            self.0.node(level, index)
        }
    }

    /// Proofs made together are each the RFC's path, in the order asked (repeats included),
    /// whatever the tree's shape; the right edge they share is read once, so together they
    /// read fewer nodes than one at a time whenever the tree has an incomplete subtree on its
    /// right edge; a leaf outside the tree fails the whole call.
    #[test]
    fn proofs_made_together_are_the_same_paths_with_fewer_reads() {
        let (tree, leaves) = numbered_tree(300);
        for size in [1u64, 2, 3, 5, 8, 13, 64, 100, 255, 256, 257, 300] {
            let mut indexes: Vec<u64> = (0..size).rev().step_by(3).collect();
            indexes.extend([0, size - 1, 0]);
            let counting = Counting(&tree, std::cell::Cell::new(0));
            let together = inclusion_proofs(&indexes, size, &counting).unwrap();
            let together_reads = counting.1.get();
            counting.1.set(0);
            let mut one_by_one = Vec::new();
            for &index in &indexes {
                one_by_one.push(inclusion_proof(index, size, &counting).unwrap());
            }
            assert_eq!(together, one_by_one, "size {size}");
            for (&index, proof) in indexes.iter().zip(&together) {
                assert_eq!(
                    *proof,
                    naive_path(index as usize, &leaves[..size as usize]),
                    "PATH({index}, {size})"
                );
            }
            // An incomplete subtree on the right edge needs three subtrees at least (5 = 4 + 1
            // has none: [4, 5) is a leaf).
            match size.count_ones() < 3 {
                true => assert_eq!(together_reads, counting.1.get(), "size {size}"),
                false => assert!(
                    together_reads < counting.1.get(),
                    "size {size}: {together_reads} reads together, {} one by one",
                    counting.1.get()
                ),
            }
        }
        assert_eq!(
            inclusion_proofs(&[1, 7], 5, &tree),
            Err(TreeError::IndexOutOfRange { index: 7, size: 5 })
        );
        assert_eq!(inclusion_proof_nodes(&[7], 5), vec![]);
    }

    /// A tree that records which nodes are read.
    struct Recording<'a>(&'a MemoryTree, std::cell::RefCell<Vec<(u8, u64)>>);

    impl NodeReader for Recording<'_> {
        type Error = MissingNode;
        fn node(&self, level: u8, index: u64) -> Result<Hash, MissingNode> {
            self.1.borrow_mut().push((level, index));
            self.0.node(level, index)
        }
    }

    /// The same for consistency proofs, between every pair of sizes up to 70.
    #[test]
    fn the_nodes_listed_for_consistency_proofs_are_the_nodes_they_read() {
        let (tree, _) = numbered_tree(70);
        for new in 0..=70u64 {
            for old in 0..=new {
                let recording = Recording(&tree, std::cell::RefCell::new(Vec::new()));
                consistency_proof(old, new, &recording).unwrap();
                let mut read = recording.1.take();
                let mut unique = std::collections::HashSet::new();
                read.retain(|n| unique.insert(*n));
                assert_eq!(consistency_proof_nodes(old, new), read, "{old} to {new}");
            }
        }
        assert_eq!(consistency_proof_nodes(9, 5), vec![]);
    }

    /// The nodes listed for proofs are exactly those the proofs read, each once: a reader that
    /// fetches the list beforehand has every node the proofs need and none they do not.
    #[test]
    fn the_nodes_listed_for_proofs_are_the_nodes_they_read() {
        let (tree, _) = numbered_tree(300);
        for size in [1u64, 2, 3, 5, 13, 64, 100, 255, 256, 257, 300] {
            for indexes in [
                vec![0],
                vec![size - 1],
                (0..size).step_by(5).collect::<Vec<_>>(),
                vec![size / 2, 0, size / 2, size - 1],
            ] {
                let listed = inclusion_proof_nodes(&indexes, size);
                let recording = Recording(&tree, std::cell::RefCell::new(Vec::new()));
                inclusion_proofs(&indexes, size, &recording).unwrap();
                let mut read = recording.1.take();
                let mut unique = std::collections::HashSet::new();
                read.retain(|n| unique.insert(*n));
                assert_eq!(listed, read, "size {size}, leaves {indexes:?}");
            }
        }
        assert_eq!(inclusion_proofs(&[], 5, &tree), Ok(vec![]));
    }

    #[test]
    fn every_consistency_proof_up_to_64_verifies_and_tampering_fails() {
        let (tree, leaves) = numbered_tree(128);
        let roots: Vec<Hash> = (0..=128).map(|s| root(s, &tree).unwrap()).collect();
        for new in 1..=64u64 {
            let new_root = roots[new as usize];
            for old in 0..=new {
                let old_root = roots[old as usize];
                let proof = consistency_proof(old, new, &tree).unwrap();
                if old > 0 {
                    assert_eq!(
                        proof,
                        naive_subproof(old as usize, &leaves[..new as usize], true),
                        "PROOF({old}, {new})"
                    );
                }
                verify_consistency(old, new, &old_root, &new_root, &proof).unwrap();

                let bad = |o: u64, n: u64, or: &Hash, nr: &Hash, p: &[Hash]| {
                    assert!(
                        verify_consistency(o, n, or, nr, p).is_err(),
                        "accepted {o} -> {n} (real {old} -> {new})"
                    );
                };
                if old == 0 {
                    bad(old, new, &old_root, &new_root, &[new_root]);
                    bad(old, new, &new_root, &new_root, &proof);
                    continue;
                }
                if old == new {
                    bad(old, new, &old_root, &roots[old as usize - 1], &proof);
                    bad(old, new, &old_root, &new_root, &[new_root]);
                    continue;
                }
                for i in 0..proof.len() {
                    bad(old, new, &old_root, &new_root, &flip(&proof, i));
                }
                for wrong in [old - 1, old + 1, old ^ 2] {
                    if wrong != old && wrong <= 128 {
                        bad(wrong, new, &roots[wrong as usize], &new_root, &proof);
                    }
                }
                for wrong in [new - 1, new + 1, new * 2, new / 2] {
                    if wrong != new {
                        bad(old, wrong, &old_root, &roots[wrong as usize], &proof);
                    }
                }
                bad(old, new, &new_root, &new_root, &proof);
                bad(old, new, &old_root, &old_root, &proof);
                bad(old, new, &new_root, &old_root, &proof);
                bad(old, new, &old_root, &new_root, &[]);
                bad(old, new, &old_root, &new_root, &proof[..proof.len() - 1]);
                let mut longer = proof.clone();
                longer.push(old_root);
                bad(old, new, &old_root, &new_root, &longer);
                let mut front = vec![proof[0]];
                front.extend_from_slice(&proof);
                bad(old, new, &old_root, &new_root, &front);
            }
        }
    }

    #[test]
    fn generation_errors() {
        let (tree, _) = numbered_tree(5);
        assert_eq!(
            inclusion_proof(0, 0, &tree),
            Err(TreeError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            inclusion_proof(5, 5, &tree),
            Err(TreeError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            consistency_proof(4, 3, &tree),
            Err(TreeError::SizeOrder {
                old_size: 4,
                new_size: 3
            })
        );
        assert_eq!(consistency_proof(0, 5, &tree), Ok(vec![]));
        assert_eq!(consistency_proof(5, 5, &tree), Ok(vec![]));
        // Asking beyond what is stored surfaces the reader's error with the node it wanted.
        assert_eq!(
            root(6, &tree),
            Err(TreeError::Node {
                level: 1,
                index: 2,
                source: MissingNode { level: 1, index: 2 }
            })
        );
        assert!(inclusion_proof(0, 8, &tree).is_err());
        assert!(consistency_proof(3, 6, &tree).is_err());
        let err = root(6, &tree).unwrap_err().to_string();
        assert!(err.contains("level 1, index 2"), "{err}");
    }

    #[test]
    fn verification_edge_cases() {
        let e = empty_root();
        let (tree, leaves) = numbered_tree(2);
        let (r1, r2) = (root(1, &tree).unwrap(), root(2, &tree).unwrap());

        // Inclusion in an empty tree, or past the end, is refused before any hashing.
        assert_eq!(
            verify_inclusion(&leaves[0], 0, 0, &[], &e),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            verify_inclusion(&leaves[0], 2, 1, &[], &r1),
            Err(ProofError::IndexOutOfRange { index: 2, size: 1 })
        );
        // A one-leaf tree: the root is the leaf hash and the proof is empty.
        verify_inclusion(&leaves[0], 0, 1, &[], &r1).unwrap();
        assert_eq!(
            verify_inclusion(&leaves[1], 0, 1, &[], &r1),
            Err(ProofError::RootMismatch)
        );
        assert_eq!(
            verify_inclusion(&leaves[0], 0, 2, &[], &r2),
            Err(ProofError::WrongLength {
                expected: 1,
                got: 0
            })
        );

        // Sizes that need no proof.
        verify_consistency(0, 0, &e, &e, &[]).unwrap();
        verify_consistency(0, 2, &e, &r2, &[]).unwrap();
        verify_consistency(1, 1, &r1, &r1, &[]).unwrap();
        verify_consistency(2, 2, &r2, &r2, &[]).unwrap();
        assert_eq!(
            verify_consistency(0, 0, &r1, &r1, &[]),
            Err(ProofError::NotEmptyRoot)
        );
        assert_eq!(
            verify_consistency(0, 2, &r1, &r2, &[]),
            Err(ProofError::NotEmptyRoot)
        );
        assert_eq!(
            verify_consistency(0, 2, &e, &r2, &[e]),
            Err(ProofError::WrongLength {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            verify_consistency(1, 1, &r1, &r2, &[]),
            Err(ProofError::SameSizeRootsDiffer)
        );
        assert_eq!(
            verify_consistency(1, 1, &r1, &r1, &[r1]),
            Err(ProofError::WrongLength {
                expected: 0,
                got: 1
            })
        );
        // Time travel and missing proofs.
        assert_eq!(
            verify_consistency(2, 1, &r2, &r1, &[]),
            Err(ProofError::SizeOrder {
                old_size: 2,
                new_size: 1
            })
        );
        assert_eq!(
            verify_consistency(1, 2, &r1, &r2, &[]),
            Err(ProofError::WrongLength {
                expected: 1,
                got: 0
            })
        );
        verify_consistency(1, 2, &r1, &r2, &[leaves[1]]).unwrap();
        // An old size that is a power of two is a node of the new tree: its root enters the
        // new root's computation, so a wrong one shows as a new-root mismatch.
        assert_eq!(
            verify_consistency(1, 2, &r2, &r2, &[leaves[1]]),
            Err(ProofError::NewRootMismatch)
        );
        assert_eq!(
            verify_consistency(1, 2, &r1, &r1, &[leaves[1]]),
            Err(ProofError::NewRootMismatch)
        );
        // Otherwise the old root is rebuilt from the proof and compared on its own.
        let (tree, _) = numbered_tree(4);
        let (r3, r4) = (root(3, &tree).unwrap(), root(4, &tree).unwrap());
        let p = consistency_proof(3, 4, &tree).unwrap();
        verify_consistency(3, 4, &r3, &r4, &p).unwrap();
        assert_eq!(
            verify_consistency(3, 4, &r4, &r4, &p),
            Err(ProofError::OldRootMismatch)
        );
        assert_eq!(
            verify_consistency(3, 4, &r3, &r3, &p),
            Err(ProofError::NewRootMismatch)
        );
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        // Shapes only: no tree this large exists, but the arithmetic must hold at the edges.
        let max = u64::MAX;
        assert_eq!(inclusion_ranges(max - 1, max).len(), 63);
        assert_eq!(inclusion_ranges(0, max).len(), 64);
        assert!(!consistency_ranges(max - 1, max).is_empty());
        assert_eq!(consistency_ranges(1 << 63, max).len(), 1);
        assert_eq!(complete_subtrees(0, max).count(), 64);
        assert_eq!(
            verify_inclusion(&empty_root(), max - 1, max, &[], &empty_root()),
            Err(ProofError::WrongLength {
                expected: 63,
                got: 0
            })
        );
    }
}
