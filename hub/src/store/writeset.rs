//! Atomic writes across trees without sled transactions.
//!
//! Why not sled's transactions: in sled 0.34 the first transaction (or `apply_batch`) switches
//! the whole process to a global reader-writer lock. From then on every read takes the read
//! side, every transaction the write side, and a flush holds the read side while it waits for
//! the disk; a transaction waiting behind a flush stops every read in the process until the
//! disk answers. Measured on the hub: FindPrior halved, p99 in the tens of milliseconds.
//!
//! What replaces them: a writer (always holding the log's mutex, so there is one at a time)
//! gathers its writes in a [`WriteSet`]. [`WriteSet::apply`] first stores the whole set,
//! encoded, under one key ([`REDO_KEY`]), a single-key write that sled makes atomic, and only
//! then writes each key with a plain insert. sled's log is recovered as a prefix of its writes
//! in order (0.34's recovery reads the log in sequence-number order and stops at the first torn
//! or corrupt message: `pagecache/iterator.rs`), and one thread's inserts get increasing
//! sequence numbers, so after a crash either the redo record of the last set is there (and
//! [`replay`] writes the set again on open: every write is "set this key to these bytes", so
//! writing it twice changes nothing), or the crash came before it and none of that set's keys
//! were written. Earlier sets were complete before the next one started. The record is
//! overwritten by the next set, never deleted, so the store holds one.
//!
//! Readers may see a set half-applied; writers order their keys so that a reader following
//! references (index entry → latest version → record → certificate, log size → nodes) never
//! finds a reference before what it points to.

use super::StoreError;

#[cfg(test)]
thread_local! {
    /// Tests set this to stop [`WriteSet::apply`] right after the redo record, as a crash would.
    pub(super) static CUT_SHORT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Key of the redo record in the database's default tree.
pub(super) const REDO_KEY: &[u8] = b"huren.redo";

/// First byte of an encoded write set: its layout version.
const LAYOUT_V1: u8 = 1;

/// The trees a write set can write, with the tag each has in a redo record. Tags are on disk:
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
}

impl TreeId {
    fn from_tag(tag: u8) -> Option<Self> {
        use TreeId::*;
        [
            Summaries, Latest, ByPatient, Certs, Consulted, Decisions, Events, Consent, Access,
            LogLeaves, LogNodes, LogMeta, Shown,
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

/// Writes to make together, in order.
#[derive(Debug, Default)]
pub(super) struct WriteSet {
    ops: Vec<(TreeId, Vec<u8>, Vec<u8>)>,
    encoded_len: usize,
}

impl WriteSet {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Sets `key` in `tree` to `value` when the set is applied.
    pub(super) fn insert(
        &mut self,
        tree: TreeId,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) {
        let (key, value) = (key.into(), value.into());
        self.encoded_len += 1 + 4 + key.len() + 4 + value.len();
        self.ops.push((tree, key, value));
    }

    /// Appends another set's writes after this one's.
    pub(super) fn extend(&mut self, other: WriteSet) {
        self.encoded_len += other.encoded_len;
        self.ops.extend(other.ops);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.encoded_len);
        out.push(LAYOUT_V1);
        for (tree, key, value) in &self.ops {
            out.push(*tree as u8);
            // Keys and values are far below 4 GiB: the hub refuses messages over its limits.
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("redo record: {what}"));
        let Some((&LAYOUT_V1, mut rest)) = raw.split_first() else {
            return Err(corrupt("unknown layout"));
        };
        let mut set = Self::new();
        fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            *rest = tail;
            Some(head)
        }
        fn take_len(rest: &mut &[u8]) -> Option<usize> {
            let raw: [u8; 4] = take(rest, 4)?.try_into().ok()?;
            Some(u32::from_be_bytes(raw) as usize)
        }
        while !rest.is_empty() {
            let tag = take(&mut rest, 1).ok_or_else(|| corrupt("truncated"))?[0];
            let tree = TreeId::from_tag(tag).ok_or_else(|| corrupt("unknown tree"))?;
            let key_len = take_len(&mut rest).ok_or_else(|| corrupt("truncated key length"))?;
            let key = take(&mut rest, key_len).ok_or_else(|| corrupt("truncated key"))?;
            let value_len = take_len(&mut rest).ok_or_else(|| corrupt("truncated value length"))?;
            let value = take(&mut rest, value_len).ok_or_else(|| corrupt("truncated value"))?;
            set.insert(tree, key, value);
        }
        Ok(set)
    }

    /// Makes the writes: the redo record first, then each key in order. Not flushed.
    pub(super) fn apply(self, trees: &impl Trees) -> Result<(), StoreError> {
        if self.is_empty() {
            return Ok(());
        }
        trees.db().insert(REDO_KEY, self.encode())?;
        #[cfg(test)]
        if CUT_SHORT.with(|c| c.get()) {
            return Err(StoreError::Corrupt(
                "cut short after the redo record (test)".into(),
            ));
        }
        self.write_keys(trees)
    }

    fn write_keys(self, trees: &impl Trees) -> Result<(), StoreError> {
        for (tree, key, value) in self.ops {
            trees.tree(tree).insert(key, value)?;
        }
        Ok(())
    }
}

/// Writes the last set again if its redo record is there (see the module documentation).
/// Returns how many keys it wrote.
pub(super) fn replay(trees: &impl Trees) -> Result<usize, StoreError> {
    let Some(raw) = trees.db().get(REDO_KEY)? else {
        return Ok(0);
    };
    let set = WriteSet::decode(&raw)?;
    let n = set.ops.len();
    set.write_keys(trees)?;
    Ok(n)
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

    fn sample() -> WriteSet {
        let mut set = WriteSet::new();
        set.insert(TreeId::Summaries, b"k1".to_vec(), b"v1".to_vec());
        set.insert(
            TreeId::LogMeta,
            b"size".to_vec(),
            7u64.to_be_bytes().to_vec(),
        );
        set.insert(TreeId::Access, b"".to_vec(), b"".to_vec());
        set.insert(TreeId::Summaries, b"k1".to_vec(), b"v2".to_vec());
        set
    }

    #[test]
    fn a_set_round_trips_through_its_encoding() {
        let set = sample();
        let back = WriteSet::decode(&set.encode()).unwrap();
        assert_eq!(back.ops, set.ops);
        assert_eq!(set.encode().len(), 1 + set.encoded_len);
    }

    #[test]
    fn a_damaged_record_is_refused_not_half_read() {
        let raw = sample().encode();
        for cut in [0, 3, 9, raw.len() - 1] {
            assert!(
                matches!(WriteSet::decode(&raw[..cut]), Err(StoreError::Corrupt(_))),
                "cut at {cut}"
            );
        }
        let mut bad_tree = raw.clone();
        bad_tree[1] = 99;
        assert!(matches!(
            WriteSet::decode(&bad_tree),
            Err(StoreError::Corrupt(_))
        ));
        let mut bad_layout = raw;
        bad_layout[0] = 2;
        assert!(matches!(
            WriteSet::decode(&bad_layout),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// A crash after the redo record and before the keys: reopening writes the keys.
    #[test]
    fn replay_finishes_a_set_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = open(dir.path());
            let mut first = WriteSet::new();
            first.insert(TreeId::Latest, b"r".to_vec(), b"1".to_vec());
            first.apply(&o).unwrap();
            // The second set gets as far as its redo record.
            o.db.insert(REDO_KEY, sample().encode()).unwrap();
            o.db.flush().unwrap();
            assert!(o.tree(TreeId::Summaries).get(b"k1").unwrap().is_none());
        }
        let o = open(dir.path());
        assert_eq!(replay(&o).unwrap(), 4);
        assert_eq!(
            &*o.tree(TreeId::Summaries).get(b"k1").unwrap().unwrap(),
            b"v2"
        );
        assert_eq!(
            &*o.tree(TreeId::LogMeta).get(b"size").unwrap().unwrap(),
            &7u64.to_be_bytes()
        );
        assert!(o.tree(TreeId::Access).get(b"").unwrap().is_some());
        // The first set was complete and is untouched.
        assert_eq!(&*o.tree(TreeId::Latest).get(b"r").unwrap().unwrap(), b"1");
        // Replaying again changes nothing.
        assert_eq!(replay(&o).unwrap(), 4);
        assert_eq!(
            &*o.tree(TreeId::Summaries).get(b"k1").unwrap().unwrap(),
            b"v2"
        );
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
        assert_eq!(
            &*o.tree(TreeId::Summaries).get(b"k1").unwrap().unwrap(),
            b"v2"
        );
    }
}
