//! Atomic writes across trees without sled transactions.
//!
//! Why not sled's transactions: in sled 0.34 the first transaction (or `apply_batch`) switches
//! the whole process to a global reader-writer lock. From then on every read takes the read
//! side, every transaction the write side, and a flush holds the read side while it waits for
//! the disk; a transaction waiting behind a flush stops every read in the process until the
//! disk answers. Measured on the hub: FindPrior halved, p99 in the tens of milliseconds.
//!
//! What replaces them: a writer (always holding the log's mutex, so there is one at a time)
//! gathers its writes in a [`WriteSet`], each with what the key held before (nothing, for a new
//! key). [`WriteSet::apply`] first stores that undo list under one key ([`UNDO_KEY`]), a
//! single-key write that sled makes atomic, then writes each key with a plain insert, then
//! removes the undo list. sled's log is recovered as a prefix of its writes in order (0.34's
//! recovery reads the log in sequence-number order and stops at the first torn or corrupt
//! message: `pagecache/iterator.rs`), and one thread's writes get increasing sequence numbers.
//! So after a crash an undo list is there exactly when a set was cut short, and [`recover`]
//! puts back what its keys held, in reverse order: the set never happened. Nothing of a set
//! that was cut short had been acknowledged: acknowledgements wait for a flush that started
//! after the set was complete.
//!
//! An undo list holds keys and the few values a set overwrites, not the values it adds, so it
//! costs far less than a copy of the set would (sled reclaims overwritten space slowly).
//!
//! Readers may see a set half-applied; writers order their keys so that a reader following
//! references (index entry → latest version → record → certificate, log size → nodes) never
//! finds a reference before what it points to.

use super::StoreError;

#[cfg(test)]
thread_local! {
    /// Tests set this to stop [`WriteSet::apply`] halfway through its keys, as a crash would.
    pub(super) static CUT_SHORT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Key of the undo list in the database's default tree.
pub(super) const UNDO_KEY: &[u8] = b"huren.undo";

/// First byte of an encoded undo list: its layout version.
const LAYOUT_V1: u8 = 1;

/// The trees a write set can write, with the tag each has in an undo list. Tags are on disk:
/// never renumber one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TreeId {
    Summaries = 1,
    Latest = 2,
    ByPatient = 3,
    Certs = 4,
    Consulted = 5,
    Decisions = 6,
    Events = 7,
    Consent = 8,
    Access = 9,
    LogLeaves = 10,
    LogNodes = 11,
    LogMeta = 12,
    Shown = 13,
    LogTiles = 14,
    LogRuns = 15,
}

impl TreeId {
    fn from_tag(tag: u8) -> Option<Self> {
        use TreeId::*;
        [
            Summaries, Latest, ByPatient, Certs, Consulted, Decisions, Events, Consent, Access,
            LogLeaves, LogNodes, LogMeta, Shown, LogTiles, LogRuns,
        ]
        .into_iter()
        .find(|t| *t as u8 == tag)
    }
}

/// Resolves a tree tag to the open tree.
pub(super) trait Trees {
    fn tree(&self, id: TreeId) -> &sled::Tree;
    fn db(&self) -> &sled::Db;
}

/// Writes to make together, in order, each with what its key held before.
#[derive(Debug, Default)]
pub(super) struct WriteSet {
    ops: Vec<(TreeId, Vec<u8>, Vec<u8>)>,
    /// For each write, what its key held before (`None`: nothing).
    before: Vec<Option<Vec<u8>>>,
    undo_len: usize,
}

/// What a key held before a set wrote it: `None` for a key the set adds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Undo {
    tree: TreeId,
    key: Vec<u8>,
    before: Option<Vec<u8>>,
}

impl WriteSet {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Adds a key that is not in `tree` yet.
    pub(super) fn add(&mut self, tree: TreeId, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.write(tree, key.into(), value.into(), None);
    }

    /// Sets a key that may already be in `tree`, holding `before` (`None`: it is not there).
    pub(super) fn replace(
        &mut self,
        tree: TreeId,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        before: Option<&[u8]>,
    ) {
        self.write(tree, key.into(), value.into(), before.map(<[u8]>::to_vec));
    }

    fn write(&mut self, tree: TreeId, key: Vec<u8>, value: Vec<u8>, before: Option<Vec<u8>>) {
        self.undo_len += 1 + 4 + key.len() + 4 + before.as_ref().map_or(0, Vec::len);
        self.before.push(before);
        self.ops.push((tree, key, value));
    }

    /// The undo list, encoded (layout at [`decode_undo`]).
    fn encode_undo(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.undo_len);
        out.push(LAYOUT_V1);
        for ((tree, key, _), before) in self.ops.iter().zip(&self.before) {
            out.push(*tree as u8);
            // Keys and values are far below 4 GiB: the hub refuses messages over its limits.
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
            match before {
                None => out.extend_from_slice(&0u32.to_be_bytes()),
                Some(v) => {
                    out.extend_from_slice(&(v.len() as u32 + 1).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        out
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Makes the writes: the undo list first, then each key in order, then the undo list goes.
    /// Not flushed.
    pub(super) fn apply(self, trees: &impl Trees) -> Result<(), StoreError> {
        if self.is_empty() {
            return Ok(());
        }
        trees.db().insert(UNDO_KEY, self.encode_undo())?;
        let stop = cut_short_at(self.ops.len());
        for (n, (tree, key, value)) in self.ops.into_iter().enumerate() {
            if Some(n) == stop {
                return Err(StoreError::Corrupt("cut short halfway (test)".into()));
            }
            if let Err(e) = trees.tree(tree).insert(key, value) {
                // Put back what was written before the store gets used again.
                if let Err(undo) = recover(trees) {
                    tracing::error!(error = %undo, "could not undo a write that failed halfway; restart the hub to retry");
                }
                return Err(e.into());
            }
        }
        trees.db().remove(UNDO_KEY)?;
        Ok(())
    }
}

/// Where tests stop a set of `len` writes (see [`CUT_SHORT`]).
#[cfg(test)]
fn cut_short_at(len: usize) -> Option<usize> {
    CUT_SHORT.with(|c| c.get()).then_some(len / 2)
}

#[cfg(not(test))]
fn cut_short_at(_: usize) -> Option<usize> {
    None
}

/// Layout: version byte, then per entry: tree tag, key length (u32), key, and the old value's
/// length plus one (u32; 0 = no old value), old value.
fn decode_undo(raw: &[u8]) -> Result<Vec<Undo>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("undo list: {what}"));
    let Some((&LAYOUT_V1, mut rest)) = raw.split_first() else {
        return Err(corrupt("unknown layout"));
    };
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        *rest = tail;
        Some(head)
    }
    fn take_len(rest: &mut &[u8]) -> Option<usize> {
        let raw: [u8; 4] = take(rest, 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(raw) as usize)
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let tag = take(&mut rest, 1).ok_or_else(|| corrupt("truncated"))?[0];
        let tree = TreeId::from_tag(tag).ok_or_else(|| corrupt("unknown tree"))?;
        let key_len = take_len(&mut rest).ok_or_else(|| corrupt("truncated key length"))?;
        let key = take(&mut rest, key_len).ok_or_else(|| corrupt("truncated key"))?;
        let before = match take_len(&mut rest).ok_or_else(|| corrupt("truncated value length"))? {
            0 => None,
            n => Some(
                take(&mut rest, n - 1)
                    .ok_or_else(|| corrupt("truncated value"))?
                    .to_vec(),
            ),
        };
        out.push(Undo {
            tree,
            key: key.to_vec(),
            before,
        });
    }
    Ok(out)
}

/// Undoes a set a crash cut short, if there is one (see the module documentation): every key
/// it wrote gets back what it held, in reverse order. Returns how many keys it put back.
pub(super) fn recover(trees: &impl Trees) -> Result<usize, StoreError> {
    let Some(raw) = trees.db().get(UNDO_KEY)? else {
        return Ok(0);
    };
    let undo = decode_undo(&raw)?;
    for u in undo.iter().rev() {
        let tree = trees.tree(u.tree);
        match &u.before {
            None => tree.remove(&u.key)?,
            Some(v) => tree.insert(&u.key, v.as_slice())?,
        };
    }
    trees.db().remove(UNDO_KEY)?;
    Ok(undo.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Open {
        db: sled::Db,
        trees: Vec<sled::Tree>,
    }

    impl Trees for Open {
        fn tree(&self, id: TreeId) -> &sled::Tree {
            &self.trees[id as usize - 1]
        }
        fn db(&self) -> &sled::Db {
            &self.db
        }
    }

    fn open(dir: &std::path::Path) -> Open {
        let db = sled::Config::new().path(dir).open().unwrap();
        let trees = (1..=13u8).map(|t| db.open_tree([t]).unwrap()).collect();
        Open { db, trees }
    }

    /// Overwrites first (one key twice), then new keys.
    fn sample() -> WriteSet {
        let mut set = WriteSet::new();
        set.replace(TreeId::Latest, b"r".to_vec(), b"2".to_vec(), Some(b"1"));
        set.replace(TreeId::Latest, b"r".to_vec(), b"3".to_vec(), Some(b"2"));
        set.replace(TreeId::Consent, b"p".to_vec(), b"x".to_vec(), None);
        set.add(TreeId::Summaries, b"k1".to_vec(), b"v1".to_vec());
        set.replace(
            TreeId::LogMeta,
            b"size".to_vec(),
            7u64.to_be_bytes(),
            Some(&6u64.to_be_bytes()),
        );
        set.add(TreeId::Access, b"".to_vec(), b"".to_vec());
        set
    }

    #[test]
    fn an_undo_list_round_trips_through_its_encoding() {
        let set = sample();
        let raw = set.encode_undo();
        assert_eq!(raw.len(), 1 + set.undo_len);
        let expected: Vec<Undo> = set
            .ops
            .iter()
            .zip(&set.before)
            .map(|((tree, key, _), before)| Undo {
                tree: *tree,
                key: key.clone(),
                before: before.clone(),
            })
            .collect();
        assert_eq!(decode_undo(&raw).unwrap(), expected);
    }

    #[test]
    fn a_damaged_undo_list_is_refused_not_half_read() {
        let raw = sample().encode_undo();
        for cut in [0, 3, 9, raw.len() - 1] {
            assert!(
                matches!(decode_undo(&raw[..cut]), Err(StoreError::Corrupt(_))),
                "cut at {cut}"
            );
        }
        let mut bad_tree = raw.clone();
        bad_tree[1] = 99;
        assert!(matches!(
            decode_undo(&bad_tree),
            Err(StoreError::Corrupt(_))
        ));
        let mut bad_layout = raw;
        bad_layout[0] = 2;
        assert!(matches!(
            decode_undo(&bad_layout),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// A crash halfway through a set: reopening puts back what the keys held before it, the
    /// earlier, complete set is untouched.
    #[test]
    fn recovery_undoes_a_set_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = open(dir.path());
            let mut first = WriteSet::new();
            first.add(TreeId::Latest, b"r".to_vec(), b"1".to_vec());
            first.add(TreeId::LogMeta, b"size".to_vec(), 6u64.to_be_bytes());
            first.apply(&o).unwrap();
            assert!(o.db.get(UNDO_KEY).unwrap().is_none());
            CUT_SHORT.with(|c| c.set(true));
            let cut = sample().apply(&o);
            CUT_SHORT.with(|c| c.set(false));
            assert!(cut.is_err());
            // The first half is in.
            assert_eq!(&*o.tree(TreeId::Latest).get(b"r").unwrap().unwrap(), b"3");
            assert!(o.tree(TreeId::Consent).get(b"p").unwrap().is_some());
            assert!(o.tree(TreeId::Summaries).get(b"k1").unwrap().is_none());
            o.db.flush().unwrap();
        }
        let o = open(dir.path());
        assert_eq!(recover(&o).unwrap(), 6);
        assert!(o.tree(TreeId::Summaries).get(b"k1").unwrap().is_none());
        assert!(o.tree(TreeId::Access).get(b"").unwrap().is_none());
        assert!(o.tree(TreeId::Consent).get(b"p").unwrap().is_none());
        assert_eq!(&*o.tree(TreeId::Latest).get(b"r").unwrap().unwrap(), b"1");
        assert_eq!(
            &*o.tree(TreeId::LogMeta).get(b"size").unwrap().unwrap(),
            &6u64.to_be_bytes()
        );
        // Nothing left to undo.
        assert!(o.db.get(UNDO_KEY).unwrap().is_none());
        assert_eq!(recover(&o).unwrap(), 0);
    }

    /// Applied and flushed sets are there after a reopen, the later write of a key winning.
    #[test]
    fn applied_sets_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = open(dir.path());
            sample().apply(&o).unwrap();
            o.db.flush().unwrap();
        }
        let o = open(dir.path());
        assert_eq!(recover(&o).unwrap(), 0);
        assert_eq!(
            &*o.tree(TreeId::Summaries).get(b"k1").unwrap().unwrap(),
            b"v1"
        );
        assert_eq!(&*o.tree(TreeId::Latest).get(b"r").unwrap().unwrap(), b"3");
    }
}
