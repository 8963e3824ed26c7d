//! The PostgreSQL backend against a real server: the process's throwaway cluster
//! ([`super::cluster::shared`]), a database of its own per test.

use super::*;
use crate::store::Access;
use crate::store::testing::{hemoglobin, verified};
use huren_core::logentry::{Entry, Method, Purpose, ResultRef};
use huren_core::merkle::{self, MemoryTree, verify_consistency, verify_inclusion};
use huren_core::stats::EventKind;

async fn fresh() -> (PgStore, String) {
    let cluster = cluster::shared().unwrap_or_else(|e| panic!("no PostgreSQL for the tests: {e}"));
    let url = cluster.create_database().await.unwrap();
    (PgStore::open(&url).await.unwrap(), url)
}

/// Runs SQL on a test database as the superuser (to look under the store, or tamper with it).
async fn sql(url: &str, statements: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let task = tokio::spawn(connection);
    let result = client.batch_execute(statements).await;
    drop(client);
    let _ = task.await;
    result
}

fn access(i: u64, patient: Pseudonym) -> Access {
    Access {
        at: UnixMillis(1_000 + i as i64),
        caller: InstitutionId::parse("hosp-a").unwrap(),
        purpose: Purpose::Treatment,
        method: Method::FindPrior,
        emergency_override: false,
        withheld_by_consent: false,
        patient,
        results: vec![],
        policy_version: "test".into(),
        requester: String::new(),
        facts: Default::default(),
    }
}

fn query(member: &str, patient: Pseudonym, at: i64, shown: &[(&str, u32, bool)]) -> QueryRecord {
    let member = InstitutionId::parse(member).unwrap();
    let mut a = access(0, patient);
    a.at = UnixMillis(at);
    a.caller = member.clone();
    a.show(shown);
    QueryRecord {
        events: vec![Event {
            at: UnixMillis(at),
            member: member.clone(),
            item_system: "loinc".into(),
            item_code: "718-7".into(),
            price_fen: 100,
            kind: EventKind::Query {
                found: true,
                cross_member: false,
            },
        }],
        access: a,
    }
}

/// What `member` was last shown of result `hosp-a/id` of `patient`: version, verdict, item
/// code and time.
async fn seen(
    store: &PgStore,
    member: &str,
    patient: &Pseudonym,
    id: &str,
) -> Option<(u32, bool, String, i64)> {
    let member = InstitutionId::parse(member).unwrap();
    store
        .consultation(&member, patient, "hosp-a", id)
        .await
        .unwrap()
        .map(|c| (c.version, c.recognised, c.item_code, c.at.0))
}

/// Appends `n` access leaves in batches of 1 to 7 and to `tree`; the head after each batch,
/// checked against `tree`.
async fn grow(store: &PgStore, tree: &mut MemoryTree, n: u64) -> Vec<TreeHead> {
    let p = Pseudonym::from_slice(&[3; 32]).unwrap();
    let mut heads = Vec::new();
    let end = tree.size() + n;
    while tree.size() < end {
        let start = tree.size();
        let len = (start % 7 + 1).min(end - start);
        let batch: Vec<QueryRecord> = (start..start + len)
            .map(|i| {
                let mut q = query("hosp-b", p, 0, &[]);
                q.access = access(i, p);
                q.events.clear();
                q
            })
            .collect();
        store.record_query_batch(&batch).await.unwrap();
        for i in start..start + len {
            tree.push(&store.leaf_bytes(i).await.unwrap());
        }
        let head = store.read_tree_head().await.unwrap();
        assert_eq!(head.size, tree.size());
        assert_eq!(head.root, tree.root(), "root at size {}", head.size);
        heads.push(head);
    }
    heads
}

async fn check_proofs(store: &PgStore, heads: &[TreeHead]) {
    let last = store.read_tree_head().await.unwrap();
    let all: Vec<u64> = (0..last.size).rev().collect();
    let together = store.inclusions(&all, last.size).await.unwrap();
    assert_eq!(together.len(), all.len());
    for i in 0..last.size {
        let proof = store.inclusion(i, last.size).await.unwrap();
        let leaf = merkle::leaf_hash(&store.leaf_bytes(i).await.unwrap());
        verify_inclusion(&leaf, i, last.size, &proof, &last.root)
            .unwrap_or_else(|e| panic!("leaf {i} at size {}: {e}", last.size));
        let at = (last.size - 1 - i) as usize;
        assert_eq!(together[at], proof, "leaf {i} at size {}", last.size);
    }
    for old in heads {
        let proof = store.consistency(old.size, last.size).await.unwrap();
        verify_consistency(old.size, last.size, &old.root, &last.root, &proof)
            .unwrap_or_else(|e| panic!("size {} to {}: {e}", old.size, last.size));
    }
}

/// Batches of appends build the RFC 6962 tree; proofs, from stored nodes, check against it,
/// from a fresh process's store too (nothing cached); a size past the end is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_build_the_rfc6962_tree_and_proofs_come_from_stored_nodes() {
    let (store, url) = fresh().await;
    let mut tree = MemoryTree::new();
    let heads = grow(&store, &mut tree, 70).await;
    check_proofs(&store, &heads).await;
    drop(store);
    let reopened = PgStore::open(&url).await.unwrap();
    assert_eq!(reopened.read_tree_head().await.unwrap().root, tree.root());
    check_proofs(&reopened, &heads).await;
    let more = grow(&reopened, &mut tree, 20).await;
    let all = [heads, more].concat();
    check_proofs(&reopened, &all).await;
    // A node cache too small for the tree: levels given up, so proofs mix cached nodes with
    // fetched ones, cold and again once the cache holds what it can.
    let small = PgStore::open_with(&url, 2, 40 * 32).await.unwrap();
    check_proofs(&small, &all).await;
    check_proofs(&small, &all).await;
    assert!(matches!(
        reopened.inclusion(0, 91).await,
        Err(StoreError::BeyondLog {
            size: 91,
            current: 90
        })
    ));
    // Proofs read stored nodes: one missing is corruption, not a recomputation.
    sql(
        &url,
        "ALTER TABLE log_nodes DISABLE TRIGGER log_nodes_append_only;
         DELETE FROM log_nodes WHERE level = 6 AND idx = 0;",
    )
    .await
    .unwrap();
    let cold = PgStore::open(&url).await.unwrap();
    match cold.inclusion(64, 90).await {
        Err(StoreError::Corrupt(e)) => assert!(e.contains("(6, 0)"), "{e}"),
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// A query batch records what each member was shown (the last query of the batch wins),
/// its events and one access leaf per query, indexed by patient.
#[tokio::test]
async fn query_records_consultations_events_and_accesses() {
    let (store, _) = fresh().await;
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
        .await
        .unwrap();
    let seen = async |m: &InstitutionId, patient: &Pseudonym, id: &str| {
        store
            .consultation(m, patient, "hosp-a", id)
            .await
            .unwrap()
            .map(|c| (c.version, c.recognised, c.at.0))
    };
    assert_eq!(seen(&b, &p, "R1").await, Some((2, false, 5_000)));
    assert_eq!(seen(&b, &p, "R2").await, Some((1, false, 5_000)));
    assert_eq!(seen(&b, &p, "R3").await, None);
    assert_eq!(seen(&c, &p, "R3").await, Some((1, true, 5_001)));
    // The entry's key joins publisher and id with a '/', which neither may hold: names that
    // would spell the same key another way find nothing.
    for (publisher, id) in [
        ("hosp-a/R1", ""),
        ("hosp", "a/R1"),
        ("hosp-a", "R1/"),
        ("", "hosp-a/R1"),
    ] {
        assert!(
            store
                .consultation(&b, &p, publisher, id)
                .await
                .unwrap()
                .is_none(),
            "{publisher:?} {id:?}"
        );
    }
    let events = store
        .events(UnixMillis(5_000), UnixMillis(5_002))
        .await
        .unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].member, c);
    let all = UnixMillis(i64::MAX);
    assert_eq!(
        store.accesses(&p, UnixMillis(0), all).await.unwrap(),
        [0, 1, 2]
    );
    assert_eq!(store.accesses(&q, UnixMillis(0), all).await.unwrap(), [3]);
    assert_eq!(store.read_tree_head().await.unwrap().size, 4);
}

/// An adoption by `member` of hosp-a's R1, version 1.
fn decision(member: &InstitutionId) -> DecisionRecord {
    DecisionRecord {
        member: member.clone(),
        decision_id: "d-1".into(),
        publisher: InstitutionId::parse("hosp-a").unwrap(),
        summary_id: "R1".into(),
        version: 1,
        adopted: true,
        reason: None,
        note: "ok".into(),
        at: UnixMillis(7_000),
        recognised: true,
        event: Event {
            at: UnixMillis(7_000),
            member: member.clone(),
            item_system: "loinc".into(),
            item_code: "718-7".into(),
            price_fen: 1,
            kind: EventKind::Decision {
                adopted: true,
                reason: None,
                consultation: None,
            },
        },
    }
}

/// Stores summaries one batch at a time, each version following the one before.
async fn put(store: &PgStore, batch: &[&VerifiedSummary]) {
    let items: Vec<_> = batch.iter().map(|v| (*v, UnixMillis(50))).collect();
    let put = store
        .put_summaries(&items, |s, previous| s.may_follow(previous))
        .await
        .unwrap();
    for r in &put.results {
        assert!(r.is_ok(), "{r:?}");
    }
}

/// A decision is recorded once with its leaf and event; the same id again is the same
/// decision, or refused when it names another result.
#[tokio::test]
async fn decisions_are_recorded_once_and_consent_is_logged() {
    let (store, _) = fresh().await;
    let member = InstitutionId::parse("hosp-b").unwrap();
    let d = decision(&member);
    let (outcome, logged) = store.record_decision_logged(&d).await.unwrap();
    assert_eq!(
        outcome,
        DecisionOutcome::Recorded {
            at: UnixMillis(7_000)
        }
    );
    let logged = logged.unwrap();
    assert_eq!((logged.index, logged.head.size), (0, 1));
    let mut later = d.clone();
    later.at = UnixMillis(9_000);
    let (again, none) = store.record_decision_logged(&later).await.unwrap();
    assert_eq!(
        again,
        DecisionOutcome::AlreadyRecorded {
            at: UnixMillis(7_000),
            recognised: true
        }
    );
    assert!(none.is_none());
    let mut other = d.clone();
    other.summary_id = "R2".into();
    assert!(matches!(
        store.record_decision_logged(&other).await,
        Err(StoreError::DecisionIdReused { .. })
    ));
    assert_eq!(
        store
            .events(UnixMillis(0), UnixMillis(i64::MAX))
            .await
            .unwrap()
            .len(),
        1
    );
    let p = Pseudonym::from_slice(&[6; 32]).unwrap();
    assert!(!store.opted_out(&p).await.unwrap());
    let (changed, at) = store
        .set_consent(&p, true, &member, UnixMillis(8_000))
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(at.index, 1);
    assert!(store.opted_out(&p).await.unwrap());
    let (changed, _) = store
        .set_consent(&p, true, &member, UnixMillis(8_001))
        .await
        .unwrap();
    assert!(!changed);
    assert_eq!(store.read_tree_head().await.unwrap().size, 3);
}

/// Triggers refuse changes to the log even to the tables' owner; a role with the documented
/// rights (README, PostgreSQL) runs the hub but cannot change the log at all.
#[tokio::test]
async fn the_log_is_append_only_and_the_hub_role_cannot_change_it() {
    let (store, url) = fresh().await;
    let p = Pseudonym::from_slice(&[7; 32]).unwrap();
    let member = InstitutionId::parse("hosp-b").unwrap();
    store
        .set_consent(&p, true, &member, UnixMillis(1))
        .await
        .unwrap();
    for attempt in [
        "UPDATE log_leaves SET leaf = '\\x00'",
        "DELETE FROM log_leaves",
        "TRUNCATE log_leaves",
        "UPDATE log_head SET size = 0, frontier = '\\x'",
        "DELETE FROM log_head",
    ] {
        let e = sql(&url, attempt).await.unwrap_err();
        assert!(
            e.to_string().contains("refused") || format!("{e:?}").contains("refused"),
            "{attempt}: {e:?}"
        );
    }
    // The hub's role, as README grants it.
    let role = format!("huren_hub_{}", std::process::id());
    sql(
        &url,
        &format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;"),
    )
    .await
    .ok();
    sql(&url, &hub_role_grants(&role)).await.unwrap();
    let as_hub = url.replacen("huren@", &format!("{role}@"), 1);
    let hub = PgStore::open(&as_hub).await.unwrap();
    hub.set_consent(&p, false, &member, UnixMillis(2))
        .await
        .unwrap();
    assert_eq!(hub.read_tree_head().await.unwrap().size, 2);
    // Every kind of write the hub makes: a result and an amendment that moves it, a query,
    // a decision, a policy.
    let v1 = verified("R1", 1, p, 1_000);
    let v2 = verified("R1", 2, p, 2_000);
    put(&hub, &[&v1]).await;
    put(&hub, &[&v2]).await;
    hub.record_query_batch(&[query("hosp-b", p, 3_000, &[("R1", 2, true)])])
        .await
        .unwrap();
    assert!(
        hub.consultation(&member, &p, "hosp-a", "R1")
            .await
            .unwrap()
            .is_some()
    );
    hub.record_decision_logged(&decision(&member))
        .await
        .unwrap();
    hub.append_policy(
        huren_core::logentry::Entry::Policy {
            at: UnixMillis(4_000),
            version: "v".into(),
            text: b"version = \"v\"".to_vec(),
        }
        .encode(),
    )
    .await
    .unwrap();
    assert_eq!(hub.read_tree_head().await.unwrap().size, 7);
    let refused = sql(
        &as_hub,
        "ALTER TABLE log_leaves DISABLE TRIGGER log_leaves_append_only",
    )
    .await;
    assert!(refused.is_err());
    let refused = sql(&as_hub, "UPDATE log_leaves SET leaf = '\\x00'")
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("permission denied"),
        "{refused:?}"
    );
}

/// The grants README documents for the hub's role.
fn hub_role_grants(role: &str) -> String {
    format!(
        "GRANT SELECT ON huren_schema TO {role};
         GRANT SELECT, INSERT ON log_leaves, log_nodes, certs, summaries, access, events, policies TO {role};
         GRANT SELECT, UPDATE ON log_head TO {role};
         GRANT SELECT, INSERT, UPDATE ON latest, by_patient, shown_to, decisions, consent TO {role};
         GRANT USAGE ON SEQUENCE events_seq_seq TO {role};"
    )
}

/// A database written by a newer hub is refused by name, before anything is read.
#[tokio::test]
async fn a_newer_schema_is_refused() {
    let (store, url) = fresh().await;
    drop(store);
    sql(&url, "UPDATE huren_schema SET version = 99")
        .await
        .unwrap();
    match PgStore::open(&url).await {
        Err(e @ StoreError::NewerLayout { found: 99, .. }) => {
            let text = e.to_string();
            assert!(text.contains("postgres://127.0.0.1:"), "{text}");
            assert!(
                text.contains(&format!(
                    "newer than this hub reads (up to {})",
                    super::schema::SCHEMA_VERSION
                )),
                "{text}"
            );
        }
        Err(e) => panic!("expected NewerLayout, got {e}"),
        Ok(_) => panic!("expected NewerLayout, the store opened"),
    }
}

/// A database of schema 1 (from before policies were logged) is migrated to the current
/// schema at open: the policies table is there and a policy leaf is remembered in it.
#[tokio::test]
async fn a_schema_1_database_is_migrated() {
    let (store, url) = fresh().await;
    drop(store);
    sql(
        &url,
        &format!(
            "{} DROP TABLE policies; UPDATE huren_schema SET version = 1",
            back_to_schema_2("")
        ),
    )
    .await
    .unwrap();
    let store = PgStore::open(&url).await.unwrap();
    assert!(store.latest_policy().await.unwrap().is_none());
    let leaf = huren_core::logentry::Entry::Policy {
        at: UnixMillis(1),
        version: "v".into(),
        text: b"version = \"v\"".to_vec(),
    }
    .encode();
    let logged = store.append_policy(leaf.clone()).await.unwrap();
    assert_eq!(
        store.latest_policy().await.unwrap(),
        Some((logged.index, leaf))
    );
}

/// Several hubs opening one new database at once apply the schema once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_migrate_once() {
    let url = cluster::shared().unwrap().create_database().await.unwrap();
    let opens = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { PgStore::open(&url).await.map(|_| ()) })
    });
    for open in opens {
        open.await.unwrap().unwrap();
    }
}

/// A server that is not there is reported as unavailable, naming where it was looked for.
#[tokio::test]
async fn an_unreachable_server_is_unavailable_by_name() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://huren@127.0.0.1:{port}/nothing?connect_timeout=2");
    match PgStore::open(&url).await {
        Err(e @ StoreError::Unavailable(_)) => {
            let text = format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            assert!(
                text.contains(&format!(
                    "cannot reach PostgreSQL at postgres://127.0.0.1:{port}/nothing"
                )),
                "{text}"
            );
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("expected Unavailable, it opened"),
    }
}

/// What a pooled connection's `SHOW name` says.
async fn setting(client: &deadpool_postgres::Client, name: &str) -> String {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The hub's connections plan each statement once, as index lookups, without JIT; an
/// operator's own options in the URL win over the hub's.
#[tokio::test]
async fn connections_plan_once_unless_the_url_says_otherwise() {
    let (store, url) = fresh().await;
    let client = store.client().await.unwrap();
    for (name, want) in [
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
        ("jit", "off"),
    ] {
        assert_eq!(setting(&client, name).await, want, "{name}");
    }
    drop(client);
    let separator = if url.contains('?') { '&' } else { '?' };
    let own = PgStore::open(&format!(
        "{url}{separator}options=-c%20plan_cache_mode%3Dauto"
    ))
    .await
    .unwrap();
    let client = own.client().await.unwrap();
    assert_eq!(setting(&client, "plan_cache_mode").await, "auto");
    assert_eq!(setting(&client, "enable_seqscan").await, "off");
}

/// A plan made on an empty database still looks results up by index once the tables are
/// large: a hub started on a new database must not scan whole tables for as long as its
/// connections live (what a plan chosen for the sizes of the moment would do).
#[tokio::test]
async fn a_plan_made_on_empty_tables_stays_an_index_lookup() {
    let (store, url) = fresh().await;
    let client = store.client().await.unwrap();
    client
        .batch_execute(&format!(
            "PREPARE find_prior (bytea, text[], text[], bigint, bigint) AS {};
             PREPARE stored_versions (text[], text[], int[]) AS {};
             PREPARE access_leaves (bytea, text, bigint, bigint, bigint) AS {};",
            summaries::FIND_PRIOR,
            summaries::STORED_VERSIONS,
            audit::ACCESS_LEAVES_BEFORE,
        ))
        .await
        .unwrap();
    let statements = [
        (
            "find_prior(int8send(7), '{loinc}', '{718-7}', 0, 100)",
            &["by_patient", "latest", "log_leaves"][..],
        ),
        (
            "stored_versions('{hosp-a}', '{r7}', '{1}')",
            &["summaries"][..],
        ),
        (
            "access_leaves(int8send(7), 'hosp-b', 9223372036854775807, 9223372036854775807, 64)",
            &["access", "log_leaves"][..],
        ),
    ];
    // Run once on the empty tables: the plan is made at the first run, and kept until the
    // tables are next analysed (which autovacuum may not do for a long while; the test does
    // not).
    for (statement, _) in statements {
        client
            .batch_execute(&format!("EXECUTE {statement}"))
            .await
            .unwrap();
    }
    sql(
        &url,
        "INSERT INTO by_patient SELECT int8send(g), 'loinc', '718-7', g, 'hosp-a', 'r' || g
             FROM generate_series(1, 20000) g;
         INSERT INTO latest SELECT 'hosp-a', 'r' || g, 1, g FROM generate_series(1, 20000) g;
         INSERT INTO summaries SELECT 'hosp-a', 'r' || g, 1, '\\x00', 0, g
             FROM generate_series(1, 20000) g;
         INSERT INTO log_leaves SELECT g, sha256(int8send(g)), '\\x00'
             FROM generate_series(1, 20000) g;
         INSERT INTO access SELECT int8send(g % 2000), g, g, 'hosp-b'
             FROM generate_series(1, 20000) g;",
    )
    .await
    .unwrap();
    for (statement, tables) in statements {
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN EXECUTE {statement}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan = plan.join("\n");
        for table in tables {
            assert!(
                !plan.contains(&format!("Seq Scan on {table}")),
                "{statement}: {table} is scanned whole:\n{plan}"
            );
            assert!(
                plan.contains(&format!("{table}_pkey")),
                "{statement}:\n{plan}"
            );
        }
    }
}

/// FindPrior's one-statement read says whether the patient opted out even when there is no
/// result to return, and follows the consent as it changes.
#[tokio::test]
async fn the_gated_read_reports_consent_with_or_without_results() {
    let (store, _) = fresh().await;
    let p = Pseudonym::from_slice(&[8; 32]).unwrap();
    let member = InstitutionId::parse("hosp-a").unwrap();
    let q = hemoglobin(p, 0, i64::MAX);
    let read = async || {
        let (opted_out, found) = store.find_prior_gated(&q).await.unwrap();
        (opted_out, found.results.len())
    };
    assert_eq!(read().await, (false, 0));
    store
        .set_consent(&p, true, &member, UnixMillis(1))
        .await
        .unwrap();
    assert_eq!(read().await, (true, 0));
    store
        .set_consent(&p, false, &member, UnixMillis(2))
        .await
        .unwrap();
    assert_eq!(read().await, (false, 0));
}

/// Each patient-index row carries its result's latest leaf while that version is the row's,
/// and none once a later version moved the result (FindPrior then reads through `latest`);
/// versions superseded within one batch leave no leaf behind either.
#[tokio::test]
async fn index_rows_carry_only_the_latest_leaf() {
    let (store, url) = fresh().await;
    let p = Pseudonym::from_slice(&[9; 32]).unwrap();
    let v1 = verified("R1", 1, p, 1_000);
    let v2 = verified("R1", 2, p, 1_000);
    let v3 = verified("R1", 3, p, 5_000);
    let v4 = verified("R1", 4, p, 7_000);
    let v5 = verified("R1", 5, p, 5_000);
    let rows = async || {
        let client = store.client().await.unwrap();
        let rows = client
            .query(
                "SELECT performed_at, version, log_index FROM by_patient ORDER BY performed_at",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0),
                    r.get::<_, Option<i32>>(1),
                    r.get::<_, Option<i64>>(2),
                )
            })
            .collect::<Vec<_>>()
    };
    let found = async |from: i64, until: i64| {
        let q = hemoglobin(p, from, until);
        let (opted_out, found) = store.find_prior_gated(&q).await.unwrap();
        assert!(!opted_out);
        let history = store.history(&q).await.unwrap();
        let versions = |f: &Found| {
            f.results
                .iter()
                .map(|r| r.summary.version)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            versions(&found),
            versions(&history),
            "FindPrior and History differ"
        );
        versions(&found)
    };
    put(&store, &[&v1]).await;
    assert_eq!(rows().await, [(1_000, Some(1), Some(0))]);
    // The same key: the row now carries version 2.
    put(&store, &[&v2]).await;
    assert_eq!(rows().await, [(1_000, Some(2), Some(1))]);
    // Moved to 5,000: the old row keeps no leaf.
    put(&store, &[&v3]).await;
    assert_eq!(
        rows().await,
        [(1_000, None, None), (5_000, Some(3), Some(2))]
    );
    assert_eq!(found(0, 2_000).await, Vec::<u32>::new());
    assert_eq!(found(0, 10_000).await, [3]);
    // Versions 4 (at 7,000) and 5 (back at 5,000) in one batch: only 5 keeps a leaf.
    put(&store, &[&v4, &v5]).await;
    assert_eq!(
        rows().await,
        [
            (1_000, None, None),
            (5_000, Some(5), Some(4)),
            (7_000, None, None)
        ]
    );
    assert_eq!(found(6_000, 10_000).await, Vec::<u32>::new());
    assert_eq!(found(0, 10_000).await, [5]);
    // A row without its leaf (as migration 3 leaves an amended result's) is read through
    // `latest`, and finds the same.
    sql(
        &url,
        "UPDATE by_patient SET version = NULL, log_index = NULL",
    )
    .await
    .unwrap();
    assert_eq!(found(0, 10_000).await, [5]);
    assert_eq!(found(6_000, 10_000).await, Vec::<u32>::new());
}

/// When every hit carries its leaf, FindPrior's read never looks into `latest`.
#[tokio::test]
async fn find_prior_skips_latest_for_rows_with_their_leaf() {
    let (store, _) = fresh().await;
    let p = Pseudonym::from_slice(&[10; 32]).unwrap();
    let (a, b) = (verified("R1", 1, p, 1_000), verified("R2", 1, p, 2_000));
    put(&store, &[&a, &b]).await;
    let client = store.client().await.unwrap();
    let plan: Vec<String> = client
        .query(
            &format!(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {}",
                summaries::FIND_PRIOR
                    .replace("$1", "'\\x0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a'::bytea")
                    .replace("$2", "'{loinc}'")
                    .replace("$3", "'{718-7}'")
                    .replace("$4", "0")
                    .replace("$5", "10000")
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("rows=2 loops=1"), "{plan}");
    let latest = plan
        .lines()
        .find(|l| l.contains("latest_pkey"))
        .unwrap_or_else(|| panic!("latest is not in the plan:\n{plan}"));
    assert!(latest.contains("never executed"), "{plan}");
}

/// Takes a new database back to schema 2: index rows without leaves, access rows without
/// their member, what members were shown one row per result (`shown`), as `shown_rows` (SQL
/// `VALUES` rows) say.
fn back_to_schema_2(shown_rows: &str) -> String {
    let insert = match shown_rows {
        "" => String::new(),
        rows => format!("INSERT INTO shown VALUES {rows};"),
    };
    format!(
        "ALTER TABLE by_patient DROP COLUMN version, DROP COLUMN log_index;
         ALTER TABLE access DROP COLUMN member;
         DROP TABLE shown_to;
         CREATE TABLE shown (
            member text NOT NULL, patient bytea NOT NULL, publisher text NOT NULL,
            summary_id text NOT NULL, version integer NOT NULL, recognised boolean NOT NULL,
            item_system text NOT NULL, item_code text NOT NULL, at bigint NOT NULL,
            PRIMARY KEY (member, patient, publisher, summary_id));
         {insert}
         UPDATE huren_schema SET version = 2;"
    )
}

/// A schema-2 database (what each member was shown as one row per result; index rows without
/// leaves) is migrated at open: the shown rows become one object per member and patient, and
/// the rows of results never amended get their leaf.
#[tokio::test]
async fn a_schema_2_database_is_migrated() {
    let (store, url) = fresh().await;
    let p = Pseudonym::from_slice(&[11; 32]).unwrap();
    let r1 = verified("R1", 1, p, 1_000);
    let r2 = verified("R2", 1, p, 2_000);
    let r2b = verified("R2", 2, p, 2_000);
    put(&store, &[&r1, &r2, &r2b]).await;
    drop(store);
    let patient = "'\\x0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b'";
    sql(
        &url,
        &back_to_schema_2(&format!(
            "('hosp-b', {patient}, 'hosp-a', 'R1', 1, true, 'loinc', '718-7', 10),
             ('hosp-b', {patient}, 'hosp-a', 'R2', 2, false, 'loinc', '718-7', 11),
             ('hosp-c', {patient}, 'hosp-a', 'R1', 1, false, 'loinc', '718-7', 12)"
        )),
    )
    .await
    .unwrap();
    let store = PgStore::open(&url).await.unwrap();
    let seen = async |m: &str, id: &str| seen(&store, m, &p, id).await;
    assert_eq!(
        seen("hosp-b", "R1").await,
        Some((1, true, "718-7".into(), 10))
    );
    assert_eq!(
        seen("hosp-b", "R2").await,
        Some((2, false, "718-7".into(), 11))
    );
    assert_eq!(
        seen("hosp-c", "R1").await,
        Some((1, false, "718-7".into(), 12))
    );
    assert_eq!(seen("hosp-c", "R2").await, None);
    let client = store.client().await.unwrap();
    let rows: Vec<(String, Option<i64>)> = client
        .query(
            "SELECT summary_id, log_index FROM by_patient ORDER BY summary_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [("R1".into(), Some(0)), ("R2".into(), None)]);
    drop(client);
    let q = hemoglobin(p, 0, 10_000);
    let found = store.find_prior(&q).await.unwrap();
    let got: Vec<_> = found
        .results
        .iter()
        .map(|r| (r.summary.id.as_str().to_owned(), r.summary.version))
        .collect();
    assert_eq!(got, [("R2".into(), 2), ("R1".into(), 1)]);
}

/// A `shown_to` entry (kept for consultations from before schema 4) that is not what the hub
/// wrote is reported as corruption, by name.
#[tokio::test]
async fn a_malformed_shown_entry_is_corruption() {
    let (store, url) = fresh().await;
    sql(
        &url,
        &format!(
            "INSERT INTO shown_to VALUES ('hosp-b', '\\x{}', '{{\"hosp-a/R1\": [1, \"yes\"]}}')",
            "0c".repeat(32)
        ),
    )
    .await
    .unwrap();
    let p = Pseudonym::from_slice(&[12; 32]).unwrap();
    let member = InstitutionId::parse("hosp-b").unwrap();
    match store.consultation(&member, &p, "hosp-a", "R1").await {
        Err(StoreError::Corrupt(m)) => assert!(m.contains("shown_to"), "{m}"),
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// What a member was shown is read from the member's access leaves for the patient, newest
/// first, past a page; an answered query writes no `shown_to` row.
#[tokio::test]
async fn consultations_are_read_from_the_access_leaves() {
    let (store, url) = fresh().await;
    let p = Pseudonym::from_slice(&[14; 32]).unwrap();
    let mut batch = vec![
        query("hosp-b", p, 1_000, &[("R1", 1, true)]),
        query("hosp-c", p, 1_100, &[("R2", 1, true), ("R1", 1, false)]),
        query("hosp-b", p, 1_200, &[("R1", 2, false)]),
    ];
    // More of hosp-c's later accesses than one page holds, none showing R1.
    batch.extend((0..150).map(|i| query("hosp-c", p, 2_000 + i, &[("R2", 1, true)])));
    store.record_query_batch(&batch).await.unwrap();
    // A newer row of another member, pointing at hosp-b's first leaf: only the member's own
    // rows are read.
    sql(
        &url,
        &format!(
            "INSERT INTO access VALUES ('\\x{}', 5000, 0, 'hosp-x')",
            hex::encode(p.as_bytes())
        ),
    )
    .await
    .unwrap();
    let seen = async |m: &str, id: &str| seen(&store, m, &p, id).await;
    assert_eq!(
        seen("hosp-b", "R1").await,
        Some((2, false, "718-7".into(), 1_200))
    );
    assert_eq!(
        seen("hosp-c", "R1").await,
        Some((1, false, "718-7".into(), 1_100))
    );
    assert_eq!(
        seen("hosp-c", "R2").await,
        Some((1, true, "718-7".into(), 2_149))
    );
    assert_eq!(seen("hosp-b", "R2").await, None);
    assert_eq!(seen("hosp-d", "R1").await, None);
    let client = store.client().await.unwrap();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM shown_to", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

/// An access row that points at a leaf that is not an access, or at bytes that are no leaf,
/// is reported as corruption naming its log index, not read past or answered from.
#[tokio::test]
async fn an_access_row_at_a_wrong_leaf_is_corruption() {
    let (store, url) = fresh().await;
    let p = Pseudonym::from_slice(&[16; 32]).unwrap();
    let q = Pseudonym::from_slice(&[17; 32]).unwrap();
    put(&store, &[&verified("R1", 1, p, 1_000)]).await;
    sql(
        &url,
        &format!(
            "INSERT INTO access VALUES ('\\x{p}', 2000, 0, 'hosp-b');
             INSERT INTO log_leaves VALUES (1000, '\\x{hash}', '\\x00ff');
             INSERT INTO access VALUES ('\\x{q}', 2000, 1000, 'hosp-b');",
            p = hex::encode(p.as_bytes()),
            q = hex::encode(q.as_bytes()),
            hash = hex::encode([0u8; 32]),
        ),
    )
    .await
    .unwrap();
    let member = InstitutionId::parse("hosp-b").unwrap();
    for (patient, why) in [(p, "not an access"), (q, "a bad leaf")] {
        match store.consultation(&member, &patient, "hosp-a", "R1").await {
            Err(StoreError::Corrupt(m)) => {
                assert!(m.contains(why) && m.contains("log index"), "{m}")
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }
}

/// A consultation whose newest access leaf is older than leaf format 4 (no verdicts in it;
/// its row from before schema 4 names no member) is read from `shown_to`, where the hub kept
/// it then; an older format-4 leaf is not mistaken for it.
#[tokio::test]
async fn a_consultation_in_an_older_leaf_is_read_from_shown_to() {
    let (store, url) = fresh().await;
    let p = Pseudonym::from_slice(&[15; 32]).unwrap();
    store
        .record_query_batch(&[query("hosp-b", p, 1_000, &[("R1", 1, true)])])
        .await
        .unwrap();
    let older = Entry::Access {
        at: UnixMillis(2_000),
        caller: "hosp-b".into(),
        purpose: Purpose::Treatment,
        method: Method::FindPrior,
        emergency_override: false,
        withheld_by_consent: false,
        pseudonym: *p.as_bytes(),
        results: vec![ResultRef {
            publisher: "hosp-a".into(),
            summary_id: "R1".into(),
            version: 2,
        }],
        policy_version: Some("test".into()),
        requester: Some(String::new()),
        facts: None,
    }
    .encode();
    let patient = hex::encode(p.as_bytes());
    sql(
        &url,
        &format!(
            "INSERT INTO log_leaves VALUES (1000, '\\x{hash}', '\\x{leaf}');
             INSERT INTO access (patient, at, log_index) VALUES ('\\x{patient}', 2000, 1000);
             INSERT INTO shown_to VALUES ('hosp-b', '\\x{patient}',
                '{{\"hosp-a/R1\": [2, false, \"loinc\", \"718-7\", 2000]}}');",
            hash = hex::encode([0u8; 32]),
            leaf = hex::encode(&older),
        ),
    )
    .await
    .unwrap();
    let member = InstitutionId::parse("hosp-b").unwrap();
    let c = store
        .consultation(&member, &p, "hosp-a", "R1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.version, c.recognised, c.at.0), (2, false, 2_000));
}

/// A stored result whose signing certificate is gone from `certs` is reported as corruption
/// by a hub that has not cached it, not answered without one.
#[tokio::test]
async fn a_result_without_its_certificate_is_corruption() {
    let (store, url) = fresh().await;
    let p = Pseudonym::from_slice(&[13; 32]).unwrap();
    put(&store, &[&verified("R1", 1, p, 1_000)]).await;
    assert_eq!(
        store
            .find_prior(&hemoglobin(p, 0, 10_000))
            .await
            .unwrap()
            .results
            .len(),
        1
    );
    drop(store);
    sql(&url, "DELETE FROM certs").await.unwrap();
    let reopened = PgStore::open(&url).await.unwrap();
    match reopened.find_prior(&hemoglobin(p, 0, 10_000)).await {
        Err(StoreError::Corrupt(m)) => assert!(m.contains("certificate"), "{m}"),
        other => panic!("expected corruption, got {other:?}"),
    }
}
