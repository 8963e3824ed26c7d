use super::*;
use huren_core::logentry::{Method, Purpose};
use huren_core::merkle::{MemoryTree, verify_consistency, verify_inclusion};

fn access(i: u8, patient: Pseudonym) -> Access {
    Access {
        at: UnixMillis(1_000 + i64::from(i)),
        caller: InstitutionId::parse("hosp-a").unwrap(),
        purpose: Purpose::Treatment,
        method: Method::FindPrior,
        emergency_override: false,
        withheld_by_consent: false,
        patient,
        results: vec![],
        policy_version: "test".into(),
        requester: format!("staff:{i}"),
        facts: Default::default(),
    }
}

fn query(member: &str, patient: Pseudonym, at: i64, shown: &[(&str, u32, bool)]) -> QueryRecord {
    let member = InstitutionId::parse(member).unwrap();
    let event = |code: &str| Event {
        at: UnixMillis(at),
        member: member.clone(),
        item_system: "loinc".into(),
        item_code: code.into(),
        price_fen: 100,
        kind: EventKind::Query {
            found: true,
            cross_member: false,
        },
    };
    let mut a = access(0, patient);
    a.at = UnixMillis(at);
    a.caller = member.clone();
    a.show(shown);
    QueryRecord {
        events: vec![event("718-7"), event("2345-7")],
        access: a,
    }
}

/// A query batch keeps one record per member and patient, updated by each query in order,
/// and groups events by millisecond without losing one; earlier layouts are still read.
#[tokio::test]
async fn query_records_are_grouped_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let p = Pseudonym::from_slice(&[4; 32]).unwrap();
    let q = Pseudonym::from_slice(&[5; 32]).unwrap();
    let b = InstitutionId::parse("hosp-b").unwrap();
    let c = InstitutionId::parse("hosp-c").unwrap();
    store
        .record_query_batch(&[
            query("hosp-b", p, 5_000, &[("R1", 1, true), ("R2", 1, false)]),
            query("hosp-b", p, 5_000, &[("R1", 2, false)]),
            query("hosp-c", p, 5_001, &[("R3", 1, true)]),
            query("hosp-b", q, 5_002, &[]),
        ])
        .unwrap();
    let seen = |m: &InstitutionId, patient: &Pseudonym, id: &str| {
        store
            .consultation(m, patient, "hosp-a", id)
            .unwrap()
            .map(|c| (c.version, c.recognised, c.at.0))
    };
    assert_eq!(seen(&b, &p, "R1"), Some((2, false, 5_000)));
    assert_eq!(seen(&b, &p, "R2"), Some((1, false, 5_000)));
    assert_eq!(seen(&b, &p, "R3"), None);
    assert_eq!(seen(&c, &p, "R3"), Some((1, true, 5_001)));
    assert_eq!(seen(&b, &q, "R1"), None);
    // A later batch adds to the stored record.
    store
        .record_query_batch(&[query("hosp-b", p, 6_000, &[("R3", 1, true)])])
        .unwrap();
    assert_eq!(seen(&b, &p, "R3"), Some((1, true, 6_000)));
    assert_eq!(seen(&b, &p, "R1"), Some((2, false, 5_000)));
    // Ten events in three milliseconds, all there, oldest first; a range cuts by time.
    let events = store.events(UnixMillis(0), UnixMillis(10_000)).unwrap();
    let times: Vec<i64> = events.iter().map(|e| e.at.0).collect();
    assert_eq!(
        times,
        [
            5_000, 5_000, 5_000, 5_000, 5_001, 5_001, 5_002, 5_002, 6_000, 6_000
        ]
    );
    assert_eq!(
        store
            .events(UnixMillis(5_001), UnixMillis(5_002))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(store.tree_head().unwrap().size, 5);
    // Written by earlier hubs: a per-result consultation and a single event.
    let old = ConsultationV1 {
        version: 3,
        recognised: true,
        item_system: "loinc".into(),
        item_code: "718-7".into(),
        at_ms: 100,
    };
    let i = &store.inner;
    i.consulted
        .insert(consulted_key(&c, "hosp-a", "OLD"), encode_v1(&old))
        .unwrap();
    let single = event_to_record(&query("hosp-c", p, 100, &[]).events[0]);
    i.events
        .insert(
            store.event_key(UnixMillis(100)).unwrap(),
            encode_v1(&single),
        )
        .unwrap();
    assert_eq!(seen(&c, &q, "OLD"), Some((3, true, 100)));
    let events = store.events(UnixMillis(0), UnixMillis(10_000)).unwrap();
    assert_eq!(events.len(), 11);
    assert_eq!(events[0].member, c);
}

/// Answers reuse the newest durable head when it covers what they prove; a larger one is
/// flushed for; an old one is refreshed in the background once the log has grown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_durable_heads_cover_what_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let p = Pseudonym::from_slice(&[6; 32]).unwrap();
    store.log_access(&access(0, p)).unwrap();
    store.log_access(&access(1, p)).unwrap();
    store.commit().await.unwrap();
    store.log_access(&access(2, p)).unwrap();
    assert_eq!(store.recent_durable_head(2).await.unwrap().size, 2);
    let flushed = store.recent_durable_head(3).await.unwrap();
    assert_eq!(flushed, store.tree_head().unwrap());
    assert_eq!(store.recent_durable_head(0).await.unwrap().size, 3);
    store.log_access(&access(3, p)).unwrap();
    tokio::time::sleep(DURABLE_HEAD_MAX_AGE + Duration::from_millis(50)).await;
    // Still the old head (no waiting), with a refresh started.
    assert_eq!(store.recent_durable_head(0).await.unwrap().size, 3);
    let mut size = 3;
    for _ in 0..200 {
        size = store.recent_durable_head(0).await.unwrap().size;
        if size == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(size, 4);
}

/// A store another handle holds open is refused with an error that says so, after a short
/// wait (a store just dropped may be locked for a moment).
#[tokio::test]
async fn a_store_in_use_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let _open = SledStore::open(dir.path()).unwrap();
    let err = SledStore::open(dir.path()).err().unwrap();
    assert!(matches!(err, StoreError::InUse(_)), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

/// Dropping the last handle ends the commit thread, which holds the database: the directory
/// opens again at once, with everything committed in it (a hub restarted in the same
/// process relies on this).
#[tokio::test]
async fn a_dropped_store_releases_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pseudonym::from_slice(&[4; 32]).unwrap();
    for round in 0..5u8 {
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.tree_head().unwrap().size, u64::from(round));
        store.log_access(&access(round, p)).unwrap();
        store.commit().await.unwrap();
    }
}

/// A write that a crash stopped halfway is undone when the store opens: the log, its size
/// and the access index agree, and the next append continues the tree.
#[tokio::test]
async fn a_write_cut_short_is_undone_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pseudonym::from_slice(&[3; 32]).unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.log_access(&access(0, p)).unwrap();
        writeset::CUT_SHORT.with(|c| c.set(true));
        let cut = store.log_accesses(&[&access(1, p), &access(2, p)]);
        writeset::CUT_SHORT.with(|c| c.set(false));
        assert!(cut.is_err());
        assert_eq!(store.tree_head().unwrap().size, 1);
        // Half of it is on disk: the run of its two leaves, not the access index.
        let run = store.inner.log_runs.get(2u64.to_be_bytes()).unwrap();
        assert_eq!(run_leaves(&run.unwrap()).unwrap().len(), 2);
        store.commit().await.unwrap();
    }
    // Dropping the store released its files.
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.tree_head().unwrap().size, 1);
    for i in 1..3u64 {
        let leaf = store.leaf(i);
        assert!(
            matches!(&leaf, Err(StoreError::Corrupt(why)) if why == &format!("log leaf {i} is missing")),
            "leaf {i} is still there"
        );
    }
    assert!(
        store
            .inner
            .log_runs
            .get(2u64.to_be_bytes())
            .unwrap()
            .is_none()
    );
    store.log_access(&access(3, p)).unwrap();
    let mut tree = MemoryTree::new();
    for i in 0..2 {
        tree.push(&store.leaf(i).unwrap());
    }
    assert_eq!(store.tree_head().unwrap().root, tree.root());
    let all = store
        .accesses(&p, UnixMillis(0), UnixMillis(i64::MAX))
        .unwrap();
    assert_eq!(all, [0, 1]);
}

/// Every logged write lands in the tree; roots and proofs match a tree rebuilt from the
/// stored leaves; the access index finds a patient's accesses.
#[tokio::test]
async fn logged_writes_build_the_rfc6962_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let p = Pseudonym::from_slice(&[1; 32]).unwrap();
    let q = Pseudonym::from_slice(&[2; 32]).unwrap();
    let member = InstitutionId::parse("hosp-b").unwrap();
    let mut heads = Vec::new();
    let mut state = std::collections::HashMap::new();
    for i in 0..10u8 {
        let patient = if i % 3 == 0 { q } else { p };
        store.log_access(&access(i, patient)).unwrap();
        assert_eq!(store.tree_head().unwrap().size, u64::from(i) * 2 + 1);
        let (changed, logged) = store
            .set_consent(&patient, i % 2 == 0, &member, UnixMillis(2_000))
            .await
            .unwrap();
        assert_eq!(logged.index, u64::from(i) * 2 + 1);
        assert_eq!(logged.head, store.tree_head().unwrap());
        let before = state.insert(patient, i % 2 == 0).unwrap_or(false);
        assert_eq!(changed, before != (i % 2 == 0));
        heads.push(logged.head);
    }
    // A batch appends in order, in one atomic write.
    let batch: Vec<Access> = (10..15).map(|i| access(i, p)).collect();
    store
        .log_accesses(&batch.iter().collect::<Vec<_>>())
        .unwrap();
    assert_eq!(store.tree_head().unwrap().size, 25);
    // 25 leaves: one full tile and one of 9, and no node above them (the first is at 32).
    assert!(store.inner.log_nodes.is_empty());
    let tiles: Vec<usize> = store
        .inner
        .log_tiles
        .iter()
        .values()
        .map(|v| v.unwrap().len())
        .collect();
    assert_eq!(tiles, [16 * 32, 9 * 32]);
    let mut tree = MemoryTree::new();
    for i in 0..25 {
        tree.push(&store.leaf(i).unwrap());
    }
    assert_eq!(store.tree_head().unwrap().root, tree.root());
    for (i, old) in heads.iter().enumerate() {
        for new in &heads[i..] {
            let proof = store.consistency_proof(old.size, new.size).unwrap();
            verify_consistency(old.size, new.size, &old.root, &new.root, &proof).unwrap();
        }
    }
    let last = *heads.last().unwrap();
    for i in 0..last.size {
        let proof = store.inclusion_proof(i, last.size).unwrap();
        let leaf = merkle::leaf_hash(&store.leaf(i).unwrap());
        verify_inclusion(&leaf, i, last.size, &proof, &last.root).unwrap();
    }
    assert!(matches!(
        store.inclusion_proof(0, 26),
        Err(StoreError::BeyondLog {
            size: 26,
            current: 25
        })
    ));
    let of_q = store
        .accesses(&q, UnixMillis(0), UnixMillis(i64::MAX))
        .unwrap();
    assert_eq!(of_q, [0, 6, 12, 18]);
    // p's last change was at i = 8 (opt-out), q's at i = 9 (opt-in).
    assert!(store.opted_out(&p).unwrap());
    assert!(!store.opted_out(&q).unwrap());
}

/// Appends `n` access leaves to the store in batches of uneven sizes (1 to 7) and to
/// `tree`; returns the store's head after each batch, each checked against `tree`.
fn grow(store: &SledStore, tree: &mut MemoryTree, n: u64) -> Vec<TreeHead> {
    let p = Pseudonym::from_slice(&[3; 32]).unwrap();
    let mut heads = Vec::new();
    let end = tree.size() + n;
    while tree.size() < end {
        let start = tree.size();
        let len = (start % 7 + 1).min(end - start);
        let batch: Vec<Access> = (start..start + len).map(|i| access(i as u8, p)).collect();
        store
            .log_accesses(&batch.iter().collect::<Vec<_>>())
            .unwrap();
        for i in start..start + len {
            tree.push(&store.leaf(i).unwrap());
        }
        let head = store.tree_head().unwrap();
        assert_eq!(head.size, tree.size());
        assert_eq!(head.root, tree.root(), "root at size {}", head.size);
        heads.push(head);
    }
    heads
}

/// Checks every leaf's inclusion proof at the store's size, and the consistency proof from
/// each of `heads` to it.
fn check_proofs(store: &SledStore, heads: &[TreeHead]) {
    let last = store.tree_head().unwrap();
    let all: Vec<u64> = (0..last.size).collect();
    let together = store.inclusion_proofs(&all, last.size).unwrap();
    assert_eq!(together.len(), all.len());
    for i in 0..last.size {
        let proof = store.inclusion_proof(i, last.size).unwrap();
        let leaf = merkle::leaf_hash(&store.leaf(i).unwrap());
        verify_inclusion(&leaf, i, last.size, &proof, &last.root)
            .unwrap_or_else(|e| panic!("leaf {i} at size {}: {e}", last.size));
        assert_eq!(
            together[i as usize], proof,
            "leaf {i} at size {}",
            last.size
        );
    }
    for old in heads {
        let proof = store.consistency_proof(old.size, last.size).unwrap();
        verify_consistency(old.size, last.size, &old.root, &last.root, &proof)
            .unwrap_or_else(|e| panic!("size {} to {}: {e}", old.size, last.size));
    }
}

/// The last, incomplete tile is stored as it fills: a reopened store reads it back and
/// goes on filling it, and proofs through it stay right.
#[tokio::test]
async fn a_reopened_store_goes_on_filling_its_last_tile() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = MemoryTree::new();
    let mut heads = {
        let store = SledStore::open(dir.path()).unwrap();
        grow(&store, &mut tree, 21)
    };
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.tree_head().unwrap(), *heads.last().unwrap());
    assert_eq!(store.log_state().unwrap().tile.len(), 5);
    heads.extend(grow(&store, &mut tree, 20));
    check_proofs(&store, &heads);
}

/// A store written before tiles and runs (every node of level 1 and up in `log_nodes`, no
/// `tiles_from`) reads as before, and grows with tiles from the tile it was filling.
#[tokio::test]
async fn a_store_written_before_tiles_is_read_and_grown() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = MemoryTree::new();
    let mut heads = {
        let store = SledStore::open(dir.path()).unwrap();
        let heads = grow(&store, &mut tree, 45);
        // Rewrite the tree as those stores kept it, and their leaves.
        let i = &store.inner;
        i.log_tiles.clear().unwrap();
        i.log_nodes.clear().unwrap();
        i.log_meta.remove(TILES_FROM_KEY).unwrap();
        let mut frontier = Vec::new();
        for index in 0..45 {
            let leaf = merkle::leaf_hash(&store.leaf(index).unwrap());
            for (level, at, hash) in merkle::append(&mut frontier, index, leaf) {
                if level > 0 {
                    i.log_nodes.insert(node_key(level, at), &hash).unwrap();
                }
            }
        }
        rewrite_as_before_runs(&store);
        heads
    };
    let store = SledStore::open(dir.path()).unwrap();
    // Tiles begin with the one the log was filling (leaves 32 to 44), runs with leaf 45.
    assert_eq!(store.inner.tiles_from, 2);
    assert_eq!(store.inner.runs_from, 45);
    assert_eq!(store.tree_head().unwrap(), *heads.last().unwrap());
    check_proofs(&store, &heads);
    heads.extend(grow(&store, &mut tree, 40));
    check_proofs(&store, &heads);
    let tiles: Vec<u64> = store
        .inner
        .log_tiles
        .iter()
        .keys()
        .map(|k| u64::from_be_bytes(k.unwrap().as_ref().try_into().unwrap()))
        .collect();
    assert_eq!(tiles, [2, 3, 4, 5]);
    drop(store);
    // And after another reopen, from what it wrote since.
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.inner.tiles_from, 2);
    assert_eq!(store.tree_head().unwrap().root, tree.root());
    check_proofs(&store, &heads);
}

/// Rewrites the store's leaves as stores written before runs kept them: each under its own
/// index in `log_leaves`, no `runs_from`, layout 1.
fn rewrite_as_before_runs(store: &SledStore) {
    let i = &store.inner;
    for kv in i.log_runs.iter() {
        let (key, raw) = kv.unwrap();
        let last = u64::from_be_bytes(key.as_ref().try_into().unwrap());
        let ranges = run_leaves(&raw).unwrap();
        let first = last + 1 - ranges.len() as u64;
        for (index, at) in (first..).zip(ranges) {
            i.log_leaves.insert(index.to_be_bytes(), &raw[at]).unwrap();
        }
    }
    i.log_runs.clear().unwrap();
    i.log_meta.remove(RUNS_FROM_KEY).unwrap();
    i.db.insert(LAYOUT_KEY, &1u32.to_be_bytes()).unwrap();
    i.db.flush().unwrap();
}

/// The keys of `log_runs` with the number of leaves each run holds.
fn runs(store: &SledStore) -> Vec<(u64, usize)> {
    store
        .inner
        .log_runs
        .iter()
        .map(|kv| {
            let (key, raw) = kv.unwrap();
            let last = u64::from_be_bytes(key.as_ref().try_into().unwrap());
            (last, run_leaves(&raw).unwrap().len())
        })
        .collect()
}

/// Each write's leaves are stored as runs that end where a group of four ends or the write
/// does, each under its last leaf's index, and every leaf reads back as written.
#[tokio::test]
async fn a_write_stores_its_leaves_in_runs_of_up_to_four() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let p = Pseudonym::from_bytes([4; 32]);
    let all: Vec<Access> = (0..41).map(|i| access(i, p)).collect();
    store.log_access(&all[0]).unwrap();
    store
        .log_accesses(&all[1..].iter().collect::<Vec<_>>())
        .unwrap();
    // Leaf 0 alone, then 1 to 3 (the rest of its group), 4 to 7, … 36 to 39, and 40.
    let mut expected = vec![(0, 1), (3, 3)];
    expected.extend((7..40).step_by(4).map(|last| (last, 4)));
    expected.push((40, 1));
    assert_eq!(runs(&store), expected);
    for (index, a) in (0..).zip(&all) {
        assert_eq!(store.leaf(index).unwrap(), access_leaf(a), "leaf {index}");
    }
    let beyond = store.leaf(41).err().unwrap();
    assert!(
        matches!(&beyond, StoreError::Corrupt(why) if why == "log leaf 41 is missing"),
        "{beyond}"
    );
    assert!(store.inner.log_leaves.is_empty());
    let report = store.check().unwrap();
    assert_eq!(report.leaves, 41);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A store written before runs (layout 1: every leaf under its own index in `log_leaves`) is
/// marked with the new layout when opened, reads its old leaves where they are, and stores the
/// leaves it appends from then on in runs; `check` finds both in order.
#[tokio::test]
async fn a_store_written_before_runs_is_read_and_grown() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = MemoryTree::new();
    let mut heads = {
        let store = SledStore::open(dir.path()).unwrap();
        let heads = grow(&store, &mut tree, 45);
        rewrite_as_before_runs(&store);
        heads
    };
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.inner.db.get(LAYOUT_KEY).unwrap().unwrap().as_ref(),
        STORE_LAYOUT.to_be_bytes()
    );
    assert_eq!(store.inner.runs_from, 45);
    assert_eq!(store.inner.log_leaves.len(), 45);
    assert!(store.inner.log_runs.is_empty());
    assert_eq!(store.tree_head().unwrap(), *heads.last().unwrap());
    check_proofs(&store, &heads);
    heads.extend(grow(&store, &mut tree, 40));
    check_proofs(&store, &heads);
    assert_eq!(store.inner.log_leaves.len(), 45);
    assert!(runs(&store).iter().all(|(last, _)| *last >= 45));
    let report = store.check().unwrap();
    assert_eq!(report.leaves, 85);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.inner.runs_from, 45);
    assert_eq!(store.tree_head().unwrap().root, tree.root());
    check_proofs(&store, &heads);
}

/// A damaged `runs_from` (not 8 bytes, or past the log's size) is refused by name when the
/// store opens, and the store is left as it was: fixed, it opens with every leaf readable.
#[tokio::test]
async fn a_damaged_first_run_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pseudonym::from_bytes([10; 32]);
    let all: Vec<Access> = (0..6).map(|i| access(i, p)).collect();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.log_accesses(&all.iter().collect::<Vec<_>>()).unwrap();
        store.commit().await.unwrap();
    }
    let set = |value: &[u8]| {
        let deadline = Instant::now() + Duration::from_secs(2);
        let db = loop {
            match sled::open(dir.path()) {
                Ok(db) => break db,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
        };
        db.open_tree("log_meta")
            .unwrap()
            .insert(RUNS_FROM_KEY, value)
            .unwrap();
        db.flush().unwrap();
    };
    for (value, why) in [
        (
            &b"\x00\x01"[..],
            "the log's first run is not 8 bytes".to_owned(),
        ),
        (
            &7u64.to_be_bytes()[..],
            "the log's first run is leaf 7, past the log's size 6".to_owned(),
        ),
    ] {
        set(value);
        let err = SledStore::open(dir.path()).err().unwrap();
        assert!(
            matches!(&err, StoreError::Corrupt(found) if *found == why),
            "{err}"
        );
    }
    set(&0u64.to_be_bytes());
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.tree_head().unwrap().size, 6);
    for (index, a) in (0..).zip(&all) {
        assert_eq!(store.leaf(index).unwrap(), access_leaf(a), "leaf {index}");
    }
}

/// A run's value that is not one (cut anywhere, a wrong layout or count, bytes left over) is
/// refused by name, never read past its end; read through the store it is a corrupt store,
/// and `check` names it. A run reaching past its group of four is named by `check` too.
#[tokio::test]
async fn a_run_that_is_not_one_is_refused_by_name() {
    let leaves = vec![b"first".to_vec(), Vec::new(), b"third leaf".to_vec()];
    let good = run_value(&leaves);
    let ranges = run_leaves(&good).unwrap();
    let back: Vec<&[u8]> = ranges.into_iter().map(|at| &good[at]).collect();
    assert_eq!(back, leaves);
    for cut in 0..good.len() {
        assert!(run_leaves(&good[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(
        run_leaves(&longer).unwrap_err(),
        "1 bytes follow its last leaf"
    );
    let mut layout = good.clone();
    layout[0] = 2;
    assert_eq!(run_leaves(&layout).unwrap_err(), "its layout is 2, not 1");
    for count in [0u8, 5, 255] {
        let mut bad = good.clone();
        bad[1] = count;
        assert_eq!(
            run_leaves(&bad).unwrap_err(),
            format!("it holds {count} leaves (1 to 4)")
        );
    }
    let mut huge = good.clone();
    huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(run_leaves(&huge).unwrap_err(), "it ends inside leaf 0 of 3");
    // Any byte changed: refused, or leaves that tile the value exactly after its header.
    for at in 0..good.len() {
        for byte in [0u8, 1, 3, 4, 0x7f, 0xff] {
            let mut changed = good.clone();
            changed[at] = byte;
            if let Ok(ranges) = run_leaves(&changed) {
                let header = 2 + 4 * ranges.len();
                let mut end = header;
                for r in &ranges {
                    assert_eq!(r.start, end, "byte {at} set to {byte}");
                    end = r.end;
                }
                assert_eq!(end, changed.len(), "byte {at} set to {byte}");
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let p = Pseudonym::from_bytes([9; 32]);
    let all: Vec<Access> = (0..41).map(|i| access(i, p)).collect();
    store.log_accesses(&all.iter().collect::<Vec<_>>()).unwrap();
    let mut expected: Vec<(u64, usize)> = (3..40).step_by(4).map(|last| (last, 4)).collect();
    expected.push((40, 1));
    assert_eq!(runs(&store), expected);
    let i = &store.inner;
    // Leaves 0 to 7 regrouped as 0 and 1, 2 to 5 (reaching from one group into the next), 6
    // and 7. Every leaf is still where a read looks for it.
    let leaf = |index: u64| store.leaf(index).unwrap();
    let first: Vec<Vec<u8>> = (0..2).map(leaf).collect();
    let across: Vec<Vec<u8>> = (2..6).map(leaf).collect();
    let rest: Vec<Vec<u8>> = (6..8).map(leaf).collect();
    i.log_runs.remove(3u64.to_be_bytes()).unwrap();
    i.log_runs
        .insert(1u64.to_be_bytes(), run_value(&first))
        .unwrap();
    i.log_runs
        .insert(5u64.to_be_bytes(), run_value(&across))
        .unwrap();
    i.log_runs
        .insert(7u64.to_be_bytes(), run_value(&rest))
        .unwrap();
    for (index, a) in (0..).zip(&all) {
        assert_eq!(store.leaf(index).unwrap(), access_leaf(a), "leaf {index}");
    }
    let report = store.check().unwrap();
    assert_eq!(report.leaves, 41);
    assert_eq!(
        report.problems,
        ["the log run of leaves 2 to 5 reaches past its group of 4"]
    );
    // A later run cut short.
    let raw = i.log_runs.get(35u64.to_be_bytes()).unwrap().unwrap();
    i.log_runs
        .insert(35u64.to_be_bytes(), &raw[..raw.len() - 1])
        .unwrap();
    let cut = "the log run ending at leaf 35 is not one: it ends inside leaf 3 of 4";
    let err = store.leaf(33).err().unwrap();
    assert!(
        matches!(&err, StoreError::Corrupt(why) if why == cut),
        "{err}"
    );
    let report = store.check().unwrap();
    assert_eq!(report.leaves, 32);
    assert!(
        report.problems.iter().any(|p| p == cut),
        "{:?}",
        report.problems
    );
}

/// Proofs read through the node cache stay right as the tree grows past the cached
/// levels: every size's proofs are checked against a tree rebuilt from the leaves, after
/// earlier sizes have filled the cache.
#[tokio::test]
async fn cached_nodes_give_the_same_proofs_as_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut tree = MemoryTree::new();
    let mut heads = Vec::new();
    // Batches of uneven sizes, through tiles and the nodes above them, to 71 leaves, each
    // size checked after the earlier ones have filled the cache.
    let total = (1u64 << (TILE_LEVEL + 2)) + 7;
    while tree.size() < total {
        let batch = (tree.size() % 7 + 1).min(total - tree.size());
        let grown = grow(&store, &mut tree, batch);
        check_proofs(&store, &heads);
        heads.extend(grown);
    }
    let cache = &store.inner.node_cache;
    let (upper, _, lowest) = cache.counts();
    assert!(upper > 0, "nodes cached");
    assert_eq!(lowest, 0, "leaf hashes kept");
}

/// The nodes a write completes are cached once it is applied, leaf hashes included, and serve
/// the proofs; past the bound, the nodes of levels given up are dropped, not churned through
/// the set of given-up levels.
#[tokio::test]
async fn written_nodes_are_cached_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut tree = MemoryTree::new();
    let heads = grow(&store, &mut tree, 3 * TILE_LEAVES + 8);
    let cache = &store.inner.node_cache;
    for index in 0..tree.size() {
        assert_eq!(
            cache.get(0, index),
            Some(merkle::leaf_hash(&store.leaf(index).unwrap())),
            "leaf hash {index}"
        );
    }
    assert_eq!(cache.get(5, 0), merkle::NodeReader::node(&tree, 5, 0).ok());
    assert_eq!(cache.get(0, tree.size()), None, "nothing past the log");
    check_proofs(&store, &heads);
    // A bound of 40 places: the leaf level is given up on the way, and what is written
    // after goes nowhere but the arrays of the levels kept.
    let dir = tempfile::tempdir().unwrap();
    let small =
        SledStore::open_with(dir.path(), DEFAULT_CACHE_BYTES, Durability::Flush, 40 * 32).unwrap();
    let mut tree = MemoryTree::new();
    let heads = grow(&small, &mut tree, 3 * TILE_LEAVES + 8);
    let (places, recent, lowest) = small.inner.node_cache.counts();
    assert!(places <= 40, "{places} places");
    assert!(lowest > 0, "the leaf level given up");
    assert_eq!(recent, 0, "written nodes of levels given up are dropped");
    check_proofs(&small, &heads);
}

/// A proof that reads a tile whose leaves are all within the size it is for caches every node
/// of that tile; a tile that reaches past that size (whose write another writer may still be
/// applying, and a failure undo) gives only the nodes the proof asked for. Either way the
/// proofs equal the tree's.
#[tokio::test]
async fn a_tile_is_cached_whole_only_below_the_size_proven() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = MemoryTree::new();
    {
        let store = SledStore::open(dir.path()).unwrap();
        grow(&store, &mut tree, 3 * TILE_LEAVES + 8);
    }
    // Reopened: the cache is empty (writes fill it; a new process starts without it).
    let store = SledStore::open(dir.path()).unwrap();
    let cache = &store.inner.node_cache;
    let cached = |level: u8, index: u64| cache.get(level, index).is_some();
    assert!(!cached(0, 5));
    // Leaf 17 against size 20: tile 1 (leaves 16 to 31) is complete in the store but reaches
    // past 20, so only what the proof read is kept.
    let proof = store.inclusion_proof(17, 20).unwrap();
    assert_eq!(proof, merkle::inclusion_proof(17, 20, &tree).unwrap());
    assert!(cached(0, 16), "the proof's own sibling");
    assert!(!cached(0, 30), "a leaf of the tile past the size proven");
    assert!(!cached(4, 1), "the root of a tile past the size proven");
    // Leaf 3 against the whole log: tile 0 is below it, and kept whole, up to its root.
    let size = tree.size();
    let proof = store.inclusion_proof(3, size).unwrap();
    assert_eq!(proof, merkle::inclusion_proof(3, size, &tree).unwrap());
    for index in 0..TILE_LEAVES {
        assert_eq!(
            cache.get(0, index),
            Some(merkle::leaf_hash(&store.leaf(index).unwrap())),
            "leaf hash {index}"
        );
    }
    assert!(cached(1, 7) && cached(2, 3) && cached(3, 1) && cached(4, 0));
    // The last, incomplete tile (leaves 48 to 55) is never kept whole.
    let proof = store.inclusion_proof(49, size).unwrap();
    assert_eq!(proof, merkle::inclusion_proof(49, size, &tree).unwrap());
    assert!(cached(0, 48));
    assert!(
        !cached(0, 55),
        "a leaf of the incomplete tile the proof did not read"
    );
    // Proofs read back from the cache are still the tree's.
    for index in [3, 17, 49] {
        assert_eq!(
            store.inclusion_proof(index, size).unwrap(),
            merkle::inclusion_proof(index, size, &tree).unwrap()
        );
    }
}

/// The store records its layout version when it is first opened; a store in a newer layout
/// is refused by name and left as it was; a damaged version is refused as corruption.
#[tokio::test]
async fn a_store_in_a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .log_access(&access(0, Pseudonym::from_bytes([5; 32])))
            .unwrap();
        store.commit().await.unwrap();
        assert_eq!(
            store.inner.db.get(LAYOUT_KEY).unwrap().unwrap().as_ref(),
            STORE_LAYOUT.to_be_bytes()
        );
    }
    let set = |value: &[u8]| {
        // A store just dropped may hold its lock for a moment (see `LOCK_WAIT`).
        let deadline = Instant::now() + Duration::from_secs(2);
        let db = loop {
            match sled::open(dir.path()) {
                Ok(db) => break db,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        };
        db.insert(LAYOUT_KEY, value).unwrap();
        db.flush().unwrap();
    };
    set(&(STORE_LAYOUT + 1).to_be_bytes());
    let err = SledStore::open(dir.path()).err().unwrap();
    assert!(
        matches!(err, StoreError::NewerLayout { found, supported, .. } if found == STORE_LAYOUT + 1 && supported == STORE_LAYOUT),
        "{err}"
    );
    assert!(
        err.to_string().contains("newer than this hub reads"),
        "{err}"
    );
    set(b"\x01");
    assert!(matches!(
        SledStore::open(dir.path()).err().unwrap(),
        StoreError::Corrupt(_)
    ));
    set(&STORE_LAYOUT.to_be_bytes());
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.tree_head().unwrap().size, 1);
}

/// `check` finds nothing wrong in a store as written, and finds a changed leaf (the root and
/// its tile no longer match) and an access index entry pointing at the wrong leaf.
#[tokio::test]
async fn check_finds_a_changed_leaf_and_a_wrong_index_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let p = Pseudonym::from_bytes([6; 32]);
    let member = InstitutionId::parse("hosp-b").unwrap();
    for i in 0..20u8 {
        store.log_access(&access(i, p)).unwrap();
        if i % 5 == 0 {
            store
                .set_consent(&p, i % 10 == 0, &member, UnixMillis(3_000))
                .await
                .unwrap();
        }
    }
    store.commit().await.unwrap();
    let clean = store.check().unwrap();
    assert_eq!(clean.leaves, 24);
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);

    // A leaf changed on disk: the rebuilt root and the leaf's tile no longer match. Each
    // access above was a write of its own, so leaf 3 is a run of one.
    let i = &store.inner;
    let mut run = i
        .log_runs
        .get(3u64.to_be_bytes())
        .unwrap()
        .unwrap()
        .to_vec();
    let last = run.len() - 1;
    run[last] ^= 1;
    i.log_runs.insert(3u64.to_be_bytes(), run).unwrap();
    // The first access index entry (leaf 0) made to name leaf 1, the first consent change.
    let first_access = i.access.iter().next().unwrap().unwrap().0;
    let mut moved = first_access.to_vec();
    moved[40..].copy_from_slice(&1u64.to_be_bytes());
    i.access.remove(&first_access).unwrap();
    i.access.insert(moved, Vec::<u8>::new()).unwrap();
    let report = store.check().unwrap();
    let all = report.problems.join("\n");
    assert!(all.contains("not the log's root"), "{all}");
    assert!(all.contains("log tile 0: the hash of leaf 3"), "{all}");
    assert!(
        all.contains("names log leaf 1, which is not an access to that patient"),
        "{all}"
    );
    assert_eq!(report.problem_count, report.problems.len());
}

/// With fsync durability every commit also syncs the store's file; what was committed is
/// there after the store is reopened (the sync itself is what a power cut would test).
#[tokio::test]
async fn fsync_durability_commits_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pseudonym::from_bytes([8; 32]);
    {
        let store = SledStore::open_with(
            dir.path(),
            DEFAULT_CACHE_BYTES,
            Durability::Fsync,
            crate::store::DEFAULT_NODE_CACHE_BYTES,
        )
        .unwrap();
        for i in 0..5u8 {
            store.log_access(&access(i, p)).unwrap();
            store.commit().await.unwrap();
        }
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.tree_head().unwrap().size, 5);
}

/// Stores summaries as one batch; every one must be stored.
fn put(store: &SledStore, batch: &[&VerifiedSummary]) {
    let items: Vec<_> = batch.iter().map(|v| (*v, UnixMillis(50))).collect();
    let put = store.put_summaries(&items, Summary::may_follow).unwrap();
    for r in &put.results {
        assert!(r.is_ok(), "{r:?}");
    }
}

/// The patient index entries of `p`'s hemoglobin results: (performed at, leaf named).
fn index_entries(store: &SledStore, p: Pseudonym) -> Vec<(i64, Option<u64>)> {
    let prefix = item_prefix(&p, "loinc", "718-7");
    store
        .inner
        .by_patient
        .scan_prefix(&prefix)
        .map(|kv| {
            let (key, value) = kv.unwrap();
            let inv = be_u64(&key[prefix.len()..prefix.len() + 8]).unwrap();
            let at = i64::try_from(u64::MAX - inv).unwrap();
            (at, read_index_value(&value).unwrap())
        })
        .rev()
        .collect()
}

/// The versions FindPrior finds of `p`'s hemoglobin results in `[from, until]`, checked to be
/// what History finds in the same window.
fn found(store: &SledStore, p: Pseudonym, from: i64, until: i64) -> Vec<u32> {
    let q = crate::store::testing::hemoglobin(p, from, until);
    let versions = |f: Found| {
        f.results
            .iter()
            .map(|r| r.summary.version)
            .collect::<Vec<_>>()
    };
    let prior = versions(store.find_prior(&q).unwrap());
    assert_eq!(
        prior,
        versions(store.history(&q).unwrap()),
        "FindPrior and History differ"
    );
    prior
}

/// Empties every patient index value, as a store written before layout 3 has them.
fn empty_index_values(store: &SledStore) {
    for kv in store.inner.by_patient.iter() {
        let (key, _) = kv.unwrap();
        store
            .inner
            .by_patient
            .insert(key, Vec::<u8>::new())
            .unwrap();
    }
}

fn assert_clean(store: &SledStore) {
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// Each patient index entry names its result's latest leaf while that version is the entry's,
/// and none once a later version moved the result (FindPrior then reads through `latest`);
/// versions superseded within one batch leave no leaf behind either. The same walk as the
/// PostgreSQL backend's `index_rows_carry_only_the_latest_leaf`.
#[tokio::test]
async fn index_entries_name_only_the_latest_leaf() {
    use crate::store::testing::verified;
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let p = Pseudonym::from_bytes([9; 32]);
    let v1 = verified("R1", 1, p, 1_000);
    let v2 = verified("R1", 2, p, 1_000);
    let v3 = verified("R1", 3, p, 5_000);
    let v4 = verified("R1", 4, p, 7_000);
    let v5 = verified("R1", 5, p, 5_000);
    put(&store, &[&v1]);
    assert_eq!(index_entries(&store, p), [(1_000, Some(0))]);
    // The same key: the entry now names version 2's leaf.
    put(&store, &[&v2]);
    assert_eq!(index_entries(&store, p), [(1_000, Some(1))]);
    assert_eq!(found(&store, p, 0, 2_000), [2]);
    // Moved to 5,000: the old entry names no leaf.
    put(&store, &[&v3]);
    assert_eq!(index_entries(&store, p), [(1_000, None), (5_000, Some(2))]);
    assert_eq!(found(&store, p, 0, 2_000), Vec::<u32>::new());
    assert_eq!(found(&store, p, 0, 10_000), [3]);
    assert_clean(&store);
    // Versions 4 (at 7,000) and 5 (back at 5,000) in one batch: only 5 names a leaf.
    put(&store, &[&v4, &v5]);
    assert_eq!(
        index_entries(&store, p),
        [(1_000, None), (5_000, Some(4)), (7_000, None)]
    );
    assert_eq!(found(&store, p, 6_000, 10_000), Vec::<u32>::new());
    assert_eq!(found(&store, p, 0, 10_000), [5]);
    assert_clean(&store);
    // A republished version changes nothing.
    put(&store, &[&v5]);
    assert_eq!(index_entries(&store, p).len(), 3);
    // Entries without their leaf (as a store written before layout 3 has them) are read
    // through `latest`, and find the same.
    empty_index_values(&store);
    assert_eq!(found(&store, p, 0, 10_000), [5]);
    assert_eq!(found(&store, p, 6_000, 10_000), Vec::<u32>::new());
    assert_clean(&store);
}

/// A read that finds every result's leaf in the index never looks into `latest`: with the
/// `latest` tree emptied, FindPrior and History still answer the latest versions (and
/// `versions`, which needs it, finds only the superseded one's record).
#[tokio::test]
async fn find_prior_reads_named_leaves_without_latest() {
    use crate::store::testing::verified;
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let p = Pseudonym::from_bytes([10; 32]);
    let (a, b) = (verified("R1", 1, p, 1_000), verified("R2", 1, p, 2_000));
    let a2 = verified("R1", 2, p, 1_000);
    put(&store, &[&a, &b]);
    put(&store, &[&a2]);
    store.inner.latest.clear().unwrap();
    assert_eq!(found(&store, p, 0, 10_000), [1, 2]);
    let q = crate::store::testing::hemoglobin(p, 0, 10_000);
    let ids: Vec<String> = store
        .find_prior(&q)
        .unwrap()
        .results
        .iter()
        .map(|r| r.summary.id.to_string())
        .collect();
    assert_eq!(ids, ["R2", "R1"]);
    let versions: Vec<u32> = store
        .versions("hosp-a", "R1")
        .unwrap()
        .iter()
        .map(|s| s.summary.version)
        .collect();
    assert_eq!(versions, [1]);
}

/// A store written in layout 2 (patient index entries name no leaf) is marked layout 3 when
/// opened and answers as before; a new version of an old result names its leaf from then on,
/// and the store checks clean with both kinds of entry.
#[tokio::test]
async fn a_store_written_before_index_leaves_is_read_and_grown() {
    use crate::store::testing::verified;
    let dir = tempfile::tempdir().unwrap();
    let p = Pseudonym::from_bytes([11; 32]);
    let old: Vec<VerifiedSummary> = (0..6)
        .map(|n| verified(&format!("R{n}"), 1, p, 1_000 + n))
        .collect();
    {
        let store = SledStore::open(dir.path()).unwrap();
        put(&store, &old.iter().collect::<Vec<_>>());
        empty_index_values(&store);
        store
            .inner
            .db
            .insert(LAYOUT_KEY, &2u32.to_be_bytes())
            .unwrap();
        store.commit().await.unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.inner.db.get(LAYOUT_KEY).unwrap().unwrap().as_ref(),
        3u32.to_be_bytes()
    );
    assert_eq!(found(&store, p, 0, 10_000), [1; 6]);
    assert!(
        index_entries(&store, p)
            .iter()
            .all(|(_, leaf)| leaf.is_none())
    );
    // R2 amended in place, R4 moved to 9,000.
    let r2 = verified("R2", 2, p, 1_002);
    let r4 = verified("R4", 2, p, 9_000);
    put(&store, &[&r2, &r4]);
    assert_eq!(
        index_entries(&store, p),
        [
            (1_000, None),
            (1_001, None),
            (1_002, Some(6)),
            (1_003, None),
            (1_004, None),
            (1_005, None),
            (9_000, Some(7)),
        ]
    );
    assert_eq!(found(&store, p, 0, 10_000), [2, 1, 1, 2, 1, 1]);
    assert_eq!(found(&store, p, 1_004, 1_004), Vec::<u32>::new());
    assert_clean(&store);
}

/// A patient index value that is not one, or that names a leaf not of its result, is refused
/// by name when read; `check` names one that names an older version of its result, or its
/// result's latest leaf under another item or time.
#[tokio::test]
async fn a_wrong_index_leaf_is_refused_and_checked() {
    use crate::store::testing::verified;
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let p = Pseudonym::from_bytes([12; 32]);
    let (a, b) = (verified("R1", 1, p, 1_000), verified("R2", 1, p, 2_000));
    put(&store, &[&a, &b]);
    put(&store, &[&verified("R2", 2, p, 2_000)]);
    let key_of = |at: i64| {
        let mut key = item_prefix(&p, "loinc", "718-7");
        key.extend_from_slice(&inv_time(UnixMillis(at)));
        key
    };
    let (k1, k2) = (
        [key_of(1_000), b"hosp-a\0R1".to_vec()].concat(),
        [key_of(2_000), b"hosp-a\0R2".to_vec()].concat(),
    );
    let i = &store.inner;
    assert_eq!(
        read_index_value(&i.by_patient.get(&k2).unwrap().unwrap()).unwrap(),
        Some(2)
    );
    let q = crate::store::testing::hemoglobin(p, 0, 10_000);
    let refused = |why: &str| {
        let err = store.find_prior(&q).err().unwrap();
        assert!(
            matches!(&err, StoreError::Corrupt(found) if found == why),
            "{err}"
        );
        let err = store.history(&q).err().unwrap();
        assert!(
            matches!(&err, StoreError::Corrupt(found) if found == why),
            "{err}"
        );
    };
    i.by_patient.insert(&k1, &[1; 9][..]).unwrap();
    refused("a patient index value of 9 bytes is longer than 8");
    i.by_patient.insert(&k1, &[0, 0, 1][..]).unwrap();
    refused("a patient index value of 3 bytes has a leading zero byte");
    let report = store.check().unwrap();
    assert!(
        report.problems.iter().any(|p| p
            == "the patient index entry of hosp-a/R1: a patient index value of 3 bytes has a leading zero byte"),
        "{:?}",
        report.problems
    );
    // R1's entry names R2's leaf.
    i.by_patient.insert(&k1, index_value(Some(2))).unwrap();
    refused("log leaf 2 is not of the result its patient index entry names");
    i.by_patient.insert(&k1, index_value(Some(0))).unwrap();
    assert_clean(&store);
    // R2's entry names its first version.
    i.by_patient.insert(&k2, index_value(Some(1))).unwrap();
    let report = store.check().unwrap();
    assert_eq!(
        report.problems,
        ["a patient index entry of hosp-a/R2 names log leaf 1, which is not its latest version"]
    );
    i.by_patient.insert(&k2, index_value(Some(2))).unwrap();
    // R2's latest leaf named from another time too.
    let k3 = [key_of(3_000), b"hosp-a\0R2".to_vec()].concat();
    i.by_patient.insert(&k3, index_value(Some(2))).unwrap();
    let report = store.check().unwrap();
    assert_eq!(
        report.problems,
        [
            "a patient index entry of hosp-a/R2 names log leaf 2, whose patient, item or time is not the entry's"
        ]
    );
    i.by_patient.remove(&k3).unwrap();
    assert_clean(&store);
    assert_eq!(found(&store, p, 0, 10_000), [2, 1]);
}

/// A patient index value is the leaf index in as few bytes as it takes, one encoding each:
/// every length from 1 to 8 bytes round-trips, and a value with a leading zero byte is
/// refused.
#[test]
fn index_values_are_short_and_have_one_encoding() {
    assert_eq!(index_value(None), Vec::<u8>::new());
    assert_eq!(read_index_value(&[]).unwrap(), None);
    for (index, len) in [
        (0, 1),
        (1, 1),
        (255, 1),
        (256, 2),
        ((1 << 24) - 1, 3),
        (1 << 24, 4),
        (10_000_000_000, 5),
        (u64::MAX >> 8, 7),
        (u64::MAX, 8),
    ] {
        let value = index_value(Some(index));
        assert_eq!(value.len(), len, "{index}");
        assert_eq!(read_index_value(&value).unwrap(), Some(index), "{index}");
        let mut padded = vec![0];
        padded.extend_from_slice(&value);
        assert!(read_index_value(&padded).is_err(), "{index}");
    }
}
