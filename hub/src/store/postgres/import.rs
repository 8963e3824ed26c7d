//! Copying a sled store into an empty PostgreSQL database (`huren-hub migrate`).
//!
//! The log is copied leaf by leaf, in order, and every table is rebuilt from the leaves (a
//! summary leaf holds the body, signature, signer and acceptance time; decision, consent and
//! access leaves hold what their tables keep), so the copy's log has the same leaves, size and
//! root as the original, and every checkpoint the original signed stays provably consistent
//! with the copy's. What is not in the log comes from the sled store's own trees: signing
//! certificates, statistics events, and what members were shown. Everything is written in one
//! transaction: a copy cut short leaves the database as it was.

use std::collections::{HashMap, HashSet};

use huren_core::logentry::Entry;
use huren_core::merkle::Hash;
use huren_core::signing::sha256;
use huren_core::summary::{Summary, UnixMillis};

use super::audit::{EventRows, ShownRows};
use super::log::{Growth, P, lock_head};
use super::schema::FILL_UNAMENDED;
use super::{PgStore, pg};
use crate::store::{SledStore, StoreError, TreeHead};

/// Leaves written per statement batch.
const CHUNK: u64 = 5_000;

/// What [`PgStore::import_sled`] copied.
#[derive(Clone, Debug)]
pub struct ImportReport {
    /// The log as copied: the same size and root as the original's.
    pub head: TreeHead,
    pub summaries: u64,
    pub events: usize,
    pub shown: usize,
    /// Entries of the sled store's oldest consultation layout, which does not name the
    /// patient and is not copied (decisions on those consultations can no longer be recorded).
    pub skipped_consulted: usize,
}

impl PgStore {
    /// Copies `from` into this database, which must be empty (see the module doc).
    pub async fn import_sled(&self, from: &SledStore) -> Result<ImportReport, StoreError> {
        let source_head = from.tree_head()?;
        let (shown, skipped_consulted) = from.shown_records()?;
        let events = from.events(UnixMillis(0), UnixMillis(i64::MAX))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let mut state = lock_head(&tx).await?;
        let rows: i64 = tx
            .query_one(
                "SELECT (SELECT count(*) FROM summaries) + (SELECT count(*) FROM events)
                    + (SELECT count(*) FROM shown_to) + (SELECT count(*) FROM decisions)",
                &[],
            )
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;
        if state.size != 0 || rows != 0 {
            return Err(StoreError::Conflict {
                key: format!(
                    "the database {} (it is not empty: {} log entries; copy into a new database)",
                    self.place(),
                    state.size
                ),
                version: 0,
            });
        }
        let mut certs_done: HashSet<Hash> = HashSet::new();
        let mut summaries = 0u64;
        let mut start = 0;
        while start < source_head.size {
            let end = (start + CHUNK).min(source_head.size);
            let mut growth = Growth::new(state);
            let mut chunk = Chunk::default();
            for index in start..end {
                let leaf = from.leaf(index)?;
                let pushed = growth.push(leaf.clone())?;
                if pushed != index {
                    return Err(StoreError::Tree(format!("leaf {index} landed at {pushed}")));
                }
                let idx =
                    i64::try_from(index).map_err(|_| StoreError::Tree("the log is full".into()))?;
                let entry = Entry::decode(&leaf).map_err(|e| {
                    StoreError::Corrupt(format!("log leaf {index} does not decode: {e}"))
                })?;
                match entry {
                    Entry::Summary {
                        accepted_at,
                        signer_certificate_sha256,
                        body,
                        ..
                    } => {
                        let s = Summary::from_stored_body_bytes(&body).map_err(|e| {
                            StoreError::Corrupt(format!(
                                "the body in leaf {index} does not decode: {e}"
                            ))
                        })?;
                        if certs_done.insert(signer_certificate_sha256) {
                            let der = from.certificate_der(&signer_certificate_sha256)?;
                            chunk.c_hash.push(signer_certificate_sha256.to_vec());
                            chunk.c_der.push(der);
                        }
                        chunk.s_pub.push(s.publisher.to_string());
                        chunk.s_id.push(s.id.to_string());
                        chunk
                            .s_ver
                            .push(i32::try_from(s.version).unwrap_or(i32::MAX));
                        chunk.s_digest.push(sha256(&body).to_vec());
                        chunk.s_at.push(accepted_at.0);
                        chunk.s_idx.push(idx);
                        chunk.latest.insert(
                            (s.publisher.to_string(), s.id.to_string()),
                            (i32::try_from(s.version).unwrap_or(i32::MAX), idx),
                        );
                        chunk.index.insert((
                            s.patient.as_bytes().to_vec(),
                            s.item.system.clone(),
                            s.item.code.clone(),
                            s.performed_at.0,
                            s.publisher.to_string(),
                            s.id.to_string(),
                        ));
                        summaries += 1;
                    }
                    Entry::Decision {
                        at,
                        member,
                        decision_id,
                        publisher,
                        summary_id,
                        version,
                        adopted,
                        recognised,
                        reason,
                        note,
                        ..
                    } => chunk.decisions.push((
                        member,
                        decision_id,
                        publisher,
                        summary_id,
                        i32::try_from(version).unwrap_or(i32::MAX),
                        adopted,
                        reason,
                        note,
                        at.0,
                        recognised,
                        idx,
                    )),
                    Entry::Consent {
                        at,
                        member,
                        pseudonym,
                        opted_out,
                    } => {
                        chunk
                            .consent
                            .insert(pseudonym.to_vec(), (opted_out, member, at.0, idx));
                    }
                    Entry::Access {
                        at,
                        pseudonym,
                        caller,
                        ..
                    } => {
                        chunk.a_patient.push(pseudonym.to_vec());
                        chunk.a_at.push(at.0);
                        chunk.a_idx.push(idx);
                        chunk.a_member.push(caller);
                    }
                    Entry::Policy { .. } => chunk.policies.push(idx),
                }
            }
            chunk.write(&tx).await?;
            growth.write(&tx).await?;
            state = growth.next;
            start = end;
        }
        let mut rows = EventRows::default();
        for e in &events {
            rows.push(e);
        }
        rows.insert(&tx).await.map_err(pg)?;
        let mut rows = ShownRows::default();
        for s in &shown {
            rows.push(
                s.member.as_str(),
                &s.patient,
                &s.publisher,
                &s.summary_id,
                &s.consultation,
            );
        }
        rows.upsert(&tx).await.map_err(pg)?;
        // The copy wrote every patient-index row without its leaf; those of results never
        // amended get it now.
        tx.execute(FILL_UNAMENDED, &[]).await.map_err(pg)?;
        let head = state.head();
        if head != source_head {
            return Err(StoreError::Corrupt(format!(
                "the copied log (size {}) does not have the original's root (size {}): nothing was copied",
                head.size, source_head.size
            )));
        }
        tx.commit().await.map_err(pg)?;
        self.saw_head(head);
        Ok(ImportReport {
            head,
            summaries,
            events: events.len(),
            shown: shown.len(),
            skipped_consulted,
        })
    }
}

/// A decisions row: member, decision_id, publisher, summary_id, version, adopted, reason,
/// note, at, recognised, log_index.
type DecisionRow = (
    String,
    String,
    String,
    String,
    i32,
    bool,
    String,
    String,
    i64,
    bool,
    i64,
);

/// The rows one chunk of leaves gives.
#[derive(Default)]
struct Chunk {
    c_hash: Vec<Vec<u8>>,
    c_der: Vec<Vec<u8>>,
    s_pub: Vec<String>,
    s_id: Vec<String>,
    s_ver: Vec<i32>,
    s_digest: Vec<Vec<u8>>,
    s_at: Vec<i64>,
    s_idx: Vec<i64>,
    latest: HashMap<(String, String), (i32, i64)>,
    index: HashSet<(Vec<u8>, String, String, i64, String, String)>,
    decisions: Vec<DecisionRow>,
    consent: HashMap<Vec<u8>, (bool, String, i64, i64)>,
    a_patient: Vec<Vec<u8>>,
    a_at: Vec<i64>,
    a_idx: Vec<i64>,
    a_member: Vec<String>,
    policies: Vec<i64>,
}

impl Chunk {
    async fn write(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        let e = |e| pg(e);
        let p: [P; 1] = [&self.policies];
        tx.execute(
            "INSERT INTO policies (log_index) SELECT * FROM unnest($1::bigint[])",
            &p,
        )
        .await
        .map_err(e)?;
        let p: [P; 2] = [&self.c_hash, &self.c_der];
        tx.execute(
            "INSERT INTO certs (sha256, der) SELECT * FROM unnest($1::bytea[], $2::bytea[])
             ON CONFLICT (sha256) DO NOTHING",
            &p,
        )
        .await
        .map_err(e)?;
        let p: [P; 6] = [
            &self.s_pub,
            &self.s_id,
            &self.s_ver,
            &self.s_digest,
            &self.s_at,
            &self.s_idx,
        ];
        tx.execute(
            "INSERT INTO summaries (publisher, summary_id, version, body_sha256, accepted_at, log_index)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bytea[], $5::bigint[], $6::bigint[])",
            &p,
        )
        .await
        .map_err(e)?;
        let (mut l_pub, mut l_id, mut l_ver, mut l_idx) = (vec![], vec![], vec![], vec![]);
        for ((pb, id), (v, i)) in &self.latest {
            l_pub.push(pb.as_str());
            l_id.push(id.as_str());
            l_ver.push(*v);
            l_idx.push(*i);
        }
        let p: [P; 4] = [&l_pub, &l_id, &l_ver, &l_idx];
        tx.execute(
            "INSERT INTO latest (publisher, summary_id, version, log_index)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[])
             ON CONFLICT (publisher, summary_id)
             DO UPDATE SET version = EXCLUDED.version, log_index = EXCLUDED.log_index",
            &p,
        )
        .await
        .map_err(e)?;
        let (mut b0, mut b1, mut b2, mut b3, mut b4, mut b5) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (pat, sys, code, at, pb, id) in &self.index {
            b0.push(pat.as_slice());
            b1.push(sys.as_str());
            b2.push(code.as_str());
            b3.push(*at);
            b4.push(pb.as_str());
            b5.push(id.as_str());
        }
        let p: [P; 6] = [&b0, &b1, &b2, &b3, &b4, &b5];
        tx.execute(
            "INSERT INTO by_patient (patient, item_system, item_code, performed_at, publisher, summary_id)
             SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
             ON CONFLICT DO NOTHING",
            &p,
        )
        .await
        .map_err(e)?;
        for d in &self.decisions {
            let p: [P; 11] = [
                &d.0, &d.1, &d.2, &d.3, &d.4, &d.5, &d.6, &d.7, &d.8, &d.9, &d.10,
            ];
            tx.execute(
                "INSERT INTO decisions (member, decision_id, publisher, summary_id, version,
                    adopted, reason, note, at, recognised, log_index)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (member, decision_id) DO NOTHING",
                &p,
            )
            .await
            .map_err(e)?;
        }
        for (patient, (opted_out, member, at, idx)) in &self.consent {
            let p: [P; 5] = [patient, opted_out, member, at, idx];
            tx.execute(
                "INSERT INTO consent (patient, opted_out, member, at, log_index)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (patient) DO UPDATE SET opted_out = EXCLUDED.opted_out,
                    member = EXCLUDED.member, at = EXCLUDED.at, log_index = EXCLUDED.log_index",
                &p,
            )
            .await
            .map_err(e)?;
        }
        let p: [P; 4] = [&self.a_patient, &self.a_at, &self.a_idx, &self.a_member];
        tx.execute(
            "INSERT INTO access (patient, at, log_index, member)
             SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::text[])
             ON CONFLICT DO NOTHING",
            &p,
        )
        .await
        .map_err(e)?;
        Ok(())
    }
}
