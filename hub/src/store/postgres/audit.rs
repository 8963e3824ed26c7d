//! What answered queries leave behind, decisions, consent and statistics events.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use huren_core::identity::InstitutionId;
use huren_core::logentry::Entry;
use huren_core::pseudonym::Pseudonym;
use huren_core::rules::RetestReason;
use huren_core::stats::{ConsultationKey, Event, EventKind};
use huren_core::summary::UnixMillis;

use super::log::{Growth, P, lock_head};
use super::{PgStore, pg};
use crate::store::{
    Consultation, DecisionOutcome, DecisionRecord, Logged, QueryRecord, StoreError,
};

/// What members were shown, as `shown_to` rows: per (member, patient), a JSON object from
/// `publisher/summary_id` to `[version, recognised, item_system, item_code, at]` (the last
/// consultation of each result wins). Publisher and summary ids cannot hold a `/`, so the key
/// names one result.
#[derive(Default)]
pub(super) struct ShownRows<'a> {
    rows: HashMap<(&'a str, &'a [u8; 32]), serde_json::Map<String, serde_json::Value>>,
}

impl<'a> ShownRows<'a> {
    pub(super) fn push(
        &mut self,
        member: &'a str,
        patient: &'a Pseudonym,
        publisher: &str,
        summary_id: &str,
        c: &Consultation,
    ) {
        self.rows
            .entry((member, patient.as_bytes()))
            .or_default()
            .insert(
                shown_key(publisher, summary_id),
                serde_json::json!([c.version, c.recognised, c.item_system, c.item_code, c.at.0]),
            );
    }

    /// Upserts the rows, merging each object into what the row held (`||`: the batch's
    /// entries replace those of the same results).
    pub(super) async fn upsert(&self, tx: &Transaction<'_>) -> Result<u64, tokio_postgres::Error> {
        let (mut member, mut patient, mut results) = (vec![], vec![], vec![]);
        for ((m, p), map) in &self.rows {
            member.push(*m);
            patient.push(p.as_slice());
            results.push(serde_json::to_string(map).unwrap_or_default());
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO shown_to (member, patient, results)
                 SELECT m, p, r::jsonb FROM unnest($1::text[], $2::bytea[], $3::text[]) AS u(m, p, r)
                 ON CONFLICT (member, patient) DO UPDATE SET results = shown_to.results || EXCLUDED.results",
            )
            .await?;
        let params: [P; 3] = [&member, &patient, &results];
        tx.execute(&stmt, &params).await
    }
}

/// A result's key in a `shown_to` object.
fn shown_key(publisher: &str, summary_id: &str) -> String {
    format!("{publisher}/{summary_id}")
}

/// Reads one `shown_to` entry (`[version, recognised, item_system, item_code, at]`).
fn consultation_of(text: &str) -> Result<Consultation, StoreError> {
    let bad = || StoreError::Corrupt(format!("a shown_to entry is malformed: {text}"));
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
    let [version, recognised, system, code, at] =
        value.as_array().map(Vec::as_slice).ok_or_else(bad)?
    else {
        return Err(bad());
    };
    Ok(Consultation {
        version: version
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(bad)?,
        recognised: recognised.as_bool().ok_or_else(bad)?,
        item_system: system.as_str().ok_or_else(bad)?.to_owned(),
        item_code: code.as_str().ok_or_else(bad)?.to_owned(),
        at: UnixMillis(at.as_i64().ok_or_else(bad)?),
    })
}

/// A page of the access leaves of patient $1 by member $2 (and those of rows from before
/// schema 4, which name no member) before (`at`, `log_index`) = ($3, $4), newest first, at
/// most $5 of them.
pub(super) const ACCESS_LEAVES_BEFORE: &str = "SELECT a.at, a.log_index, l.leaf FROM access a
    JOIN log_leaves l ON l.idx = a.log_index
    WHERE a.patient = $1 AND (a.member = $2 OR a.member IS NULL)
        AND (a.at, a.log_index) < ($3, $4)
    ORDER BY a.at DESC, a.log_index DESC LIMIT $5";

/// Columns of the `events` rows a write inserts.
#[derive(Default)]
pub(super) struct EventRows {
    at: Vec<i64>,
    member: Vec<String>,
    item_system: Vec<String>,
    item_code: Vec<String>,
    price_fen: Vec<i64>,
    kind: Vec<i16>,
    found: Vec<bool>,
    cross_member: Vec<bool>,
    adopted: Vec<bool>,
    reason: Vec<String>,
    consulted_publisher: Vec<String>,
    consulted_summary_id: Vec<String>,
    consulted_at: Vec<i64>,
}

impl EventRows {
    pub(super) fn push(&mut self, e: &Event) {
        self.at.push(e.at.0);
        self.member.push(e.member.to_string());
        self.item_system.push(e.item_system.clone());
        self.item_code.push(e.item_code.clone());
        self.price_fen
            .push(i64::try_from(e.price_fen).unwrap_or(i64::MAX));
        let (mut found, mut cross, mut adopted) = (false, false, false);
        let (mut reason, mut c_pub, mut c_id, mut c_at) =
            (String::new(), String::new(), String::new(), 0);
        let kind = match &e.kind {
            EventKind::Query {
                found: f,
                cross_member,
            } => {
                found = *f;
                cross = *cross_member;
                1
            }
            EventKind::Decision {
                adopted: a,
                reason: r,
                consultation,
            } => {
                adopted = *a;
                reason = r.map(|x| x.code().to_owned()).unwrap_or_default();
                if let Some(c) = consultation {
                    c_pub = c.publisher.clone();
                    c_id = c.summary_id.clone();
                    c_at = c.consulted_at.0;
                }
                2
            }
        };
        self.kind.push(kind);
        self.found.push(found);
        self.cross_member.push(cross);
        self.adopted.push(adopted);
        self.reason.push(reason);
        self.consulted_publisher.push(c_pub);
        self.consulted_summary_id.push(c_id);
        self.consulted_at.push(c_at);
    }

    pub(super) async fn insert(&self, tx: &Transaction<'_>) -> Result<u64, tokio_postgres::Error> {
        if self.at.is_empty() {
            return Ok(0);
        }
        let q = tx
            .prepare_cached(
                "INSERT INTO events (at, member, item_system, item_code, price_fen, kind, found,
                    cross_member, adopted, reason, consulted_publisher, consulted_summary_id, consulted_at)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                    $6::smallint[], $7::bool[], $8::bool[], $9::bool[], $10::text[], $11::text[],
                    $12::text[], $13::bigint[])",
            )
            .await?;
        tx.execute(
            &q,
            &[
                &self.at,
                &self.member,
                &self.item_system,
                &self.item_code,
                &self.price_fen,
                &self.kind,
                &self.found,
                &self.cross_member,
                &self.adopted,
                &self.reason,
                &self.consulted_publisher,
                &self.consulted_summary_id,
                &self.consulted_at,
            ],
        )
        .await
    }
}

fn event_from_row(row: &tokio_postgres::Row) -> Result<Event, StoreError> {
    let kind: i16 = row.try_get("kind").map_err(pg)?;
    let kind = match kind {
        1 => EventKind::Query {
            found: row.try_get("found").map_err(pg)?,
            cross_member: row.try_get("cross_member").map_err(pg)?,
        },
        2 => {
            let reason: String = row.try_get("reason").map_err(pg)?;
            let publisher: String = row.try_get("consulted_publisher").map_err(pg)?;
            EventKind::Decision {
                adopted: row.try_get("adopted").map_err(pg)?,
                reason: RetestReason::from_code(&reason),
                consultation: match publisher.is_empty() {
                    true => None,
                    false => Some(ConsultationKey {
                        publisher,
                        summary_id: row.try_get("consulted_summary_id").map_err(pg)?,
                        consulted_at: UnixMillis(row.try_get("consulted_at").map_err(pg)?),
                    }),
                },
            }
        }
        k => return Err(StoreError::Corrupt(format!("unknown event kind {k}"))),
    };
    let member: String = row.try_get("member").map_err(pg)?;
    let price: i64 = row.try_get("price_fen").map_err(pg)?;
    Ok(Event {
        at: UnixMillis(row.try_get("at").map_err(pg)?),
        member: InstitutionId::parse(&member).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        item_system: row.try_get("item_system").map_err(pg)?,
        item_code: row.try_get("item_code").map_err(pg)?,
        price_fen: u64::try_from(price)
            .map_err(|_| StoreError::Corrupt(format!("price {price} is negative")))?,
        kind,
    })
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Tree(format!("{n} is out of range")))
}

impl PgStore {
    /// Records a batch of answered queries in one transaction: what each member was shown,
    /// the statistics events and one access leaf each. Durable once this returns.
    pub async fn record_query_batch(&self, batch: &[QueryRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut events = EventRows::default();
        for e in batch.iter().flat_map(|q| &q.events) {
            events.push(e);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let mut growth = Growth::new(lock_head(&tx).await?);
        let (mut a_patient, mut a_at, mut a_idx, mut a_member) = (vec![], vec![], vec![], vec![]);
        for q in batch {
            let index = growth.push(crate::store::sled::access_leaf(&q.access))?;
            a_patient.push(q.access.patient.as_bytes().as_slice());
            a_at.push(q.access.at.0);
            a_idx.push(to_i64(index)?);
            a_member.push(q.access.caller.as_str());
        }
        let q_access = tx
            .prepare_cached(
                "INSERT INTO access (patient, at, log_index, member)
                 SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::text[])",
            )
            .await
            .map_err(pg)?;
        let p_access: [P; 4] = [&a_patient, &a_at, &a_idx, &a_member];
        tokio::try_join!(tx.execute(&q_access, &p_access), events.insert(&tx)).map_err(pg)?;
        growth.write(&tx).await?;
        tx.commit().await.map_err(pg)?;
        self.saw_head(growth.next.head());
        self.cache_written(&growth.written);
        Ok(())
    }

    /// What `member` was last shown of a result of `patient`, if it consulted it: read from
    /// the patient's access leaves, newest first (by time, then log order), whose facts name
    /// each shown result's item and verdict; `shown_to` only for consultations those leaves
    /// cannot answer (leaves older than format 4, and stores from before schema 4).
    pub async fn consultation(
        &self,
        member: &InstitutionId,
        patient: &Pseudonym,
        publisher: &str,
        id: &str,
    ) -> Result<Option<Consultation>, StoreError> {
        const PAGE: i64 = 64;
        let client = self.client().await?;
        let page = client
            .prepare_cached(ACCESS_LEAVES_BEFORE)
            .await
            .map_err(pg)?;
        let mut before = (i64::MAX, i64::MAX);
        'pages: loop {
            let rows = client
                .query(
                    &page,
                    &[
                        &patient.as_bytes().as_slice(),
                        &member.as_str(),
                        &before.0,
                        &before.1,
                        &PAGE,
                    ],
                )
                .await
                .map_err(pg)?;
            for row in &rows {
                before = (row.try_get(0).map_err(pg)?, row.try_get(1).map_err(pg)?);
                let leaf: &[u8] = row.try_get(2).map_err(pg)?;
                let bad = |why: String| {
                    StoreError::Corrupt(format!(
                        "the access row at log index {} points at {why}",
                        before.1
                    ))
                };
                let entry = Entry::decode(leaf).map_err(|e| bad(format!("a bad leaf: {e}")))?;
                let Entry::Access {
                    caller,
                    results,
                    facts,
                    at,
                    ..
                } = entry
                else {
                    return Err(bad("a leaf that is not an access".into()));
                };
                if caller != member.as_str() {
                    continue;
                }
                let Some(i) = results
                    .iter()
                    .position(|r| r.publisher == publisher && r.summary_id == id)
                else {
                    continue;
                };
                let Some(facts) = facts else {
                    // A leaf from before format 4: its consultation was kept in `shown_to`.
                    break 'pages;
                };
                let Some(fact) = facts.shown.into_iter().nth(i) else {
                    return Err(bad(format!(
                        "an access leaf with {} results but fewer verdicts",
                        results.len()
                    )));
                };
                return Ok(Some(Consultation {
                    version: results[i].version,
                    recognised: fact.recognised,
                    item_system: fact.item_system,
                    item_code: fact.item_code,
                    at,
                }));
            }
            if rows.len() < PAGE as usize {
                break;
            }
        }
        let row = client
            .query_opt(
                "SELECT (results -> $3)::text FROM shown_to WHERE member = $1 AND patient = $2",
                &[
                    &member.as_str(),
                    &patient.as_bytes().as_slice(),
                    &shown_key(publisher, id),
                ],
            )
            .await
            .map_err(pg)?;
        let entry: Option<String> = match row {
            Some(row) => row.try_get(0).map_err(pg)?,
            None => None,
        };
        entry.as_deref().map(consultation_of).transpose()
    }

    /// Records a decision with its leaf and event in one transaction, once per
    /// (member, decision id).
    pub async fn record_decision_logged(
        &self,
        d: &DecisionRecord,
    ) -> Result<(DecisionOutcome, Option<Logged>), StoreError> {
        let reason = d.reason.map(|r| r.code().to_owned()).unwrap_or_default();
        let publisher = d.publisher.to_string();
        let version = i32::try_from(d.version).unwrap_or(i32::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let log = lock_head(&tx).await?;
        let old = tx
            .query_opt(
                "SELECT publisher, summary_id, version, adopted, reason, at, recognised
                 FROM decisions WHERE member = $1 AND decision_id = $2",
                &[&d.member.as_str(), &d.decision_id],
            )
            .await
            .map_err(pg)?;
        if let Some(old) = old {
            let same = old.try_get::<_, String>(0).map_err(pg)? == publisher
                && old.try_get::<_, String>(1).map_err(pg)? == d.summary_id
                && old.try_get::<_, i32>(2).map_err(pg)? == version
                && old.try_get::<_, bool>(3).map_err(pg)? == d.adopted
                && old.try_get::<_, String>(4).map_err(pg)? == reason;
            if !same {
                return Err(StoreError::DecisionIdReused {
                    decision_id: d.decision_id.clone(),
                });
            }
            let outcome = DecisionOutcome::AlreadyRecorded {
                at: UnixMillis(old.try_get(5).map_err(pg)?),
                recognised: old.try_get(6).map_err(pg)?,
            };
            return Ok((outcome, None));
        }
        let mut growth = Growth::new(log);
        let index = growth.push(d.leaf())?;
        let idx = to_i64(index)?;
        let mut events = EventRows::default();
        events.push(&d.event);
        let member = d.member.as_str();
        let p_decision: [P; 11] = [
            &member,
            &d.decision_id,
            &publisher,
            &d.summary_id,
            &version,
            &d.adopted,
            &reason,
            &d.note,
            &d.at.0,
            &d.recognised,
            &idx,
        ];
        tokio::try_join!(
            tx.execute(
                "INSERT INTO decisions (member, decision_id, publisher, summary_id, version,
                    adopted, reason, note, at, recognised, log_index)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &p_decision,
            ),
            events.insert(&tx),
        )
        .map_err(pg)?;
        growth.write(&tx).await?;
        tx.commit().await.map_err(pg)?;
        let head = growth.next.head();
        self.saw_head(head);
        self.cache_written(&growth.written);
        Ok((
            DecisionOutcome::Recorded { at: d.at },
            Some(Logged { index, head }),
        ))
    }

    /// Records a patient's opt-out (or opt-back-in) with its leaf, in one transaction.
    pub async fn set_consent(
        &self,
        patient: &Pseudonym,
        opted_out: bool,
        member: &InstitutionId,
        at: UnixMillis,
    ) -> Result<(bool, Logged), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let mut growth = Growth::new(lock_head(&tx).await?);
        let before: bool = tx
            .query_opt(
                "SELECT opted_out FROM consent WHERE patient = $1",
                &[&patient.as_bytes().as_slice()],
            )
            .await
            .map_err(pg)?
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(pg)?
            .unwrap_or(false);
        let index = growth.push(
            Entry::Consent {
                at,
                member: member.to_string(),
                pseudonym: *patient.as_bytes(),
                opted_out,
            }
            .encode(),
        )?;
        tx.execute(
            "INSERT INTO consent (patient, opted_out, member, at, log_index)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (patient) DO UPDATE SET opted_out = EXCLUDED.opted_out,
                member = EXCLUDED.member, at = EXCLUDED.at, log_index = EXCLUDED.log_index",
            &[
                &patient.as_bytes().as_slice(),
                &opted_out,
                &member.as_str(),
                &at.0,
                &to_i64(index)?,
            ],
        )
        .await
        .map_err(pg)?;
        growth.write(&tx).await?;
        tx.commit().await.map_err(pg)?;
        let head = growth.next.head();
        self.saw_head(head);
        self.cache_written(&growth.written);
        Ok((before != opted_out, Logged { index, head }))
    }

    /// Appends a policy leaf, in a transaction of its own.
    pub async fn append_policy(&self, leaf: Vec<u8>) -> Result<Logged, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let mut growth = Growth::new(lock_head(&tx).await?);
        let index = growth.push(leaf)?;
        tx.execute(
            "INSERT INTO policies (log_index) VALUES ($1)",
            &[&to_i64(index)?],
        )
        .await
        .map_err(pg)?;
        growth.write(&tx).await?;
        tx.commit().await.map_err(pg)?;
        let head = growth.next.head();
        self.saw_head(head);
        self.cache_written(&growth.written);
        Ok(Logged { index, head })
    }

    /// The latest policy leaf appended, with its index.
    pub async fn latest_policy(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT max(log_index) FROM policies", &[])
            .await
            .map_err(pg)?;
        let Some(index) = row.try_get::<_, Option<i64>>(0).map_err(pg)? else {
            return Ok(None);
        };
        let index = u64::try_from(index)
            .map_err(|_| StoreError::Corrupt(format!("policies: log index {index}")))?;
        drop(client);
        Ok(Some((index, self.leaf_bytes(index).await?)))
    }

    /// Whether the patient has opted out of sharing.
    pub async fn opted_out(&self, patient: &Pseudonym) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let q = client
            .prepare_cached("SELECT opted_out FROM consent WHERE patient = $1")
            .await
            .map_err(pg)?;
        match client
            .query_opt(&q, &[&patient.as_bytes().as_slice()])
            .await
            .map_err(pg)?
        {
            Some(row) => row.try_get(0).map_err(pg),
            None => Ok(false),
        }
    }

    /// Log indexes of the accesses to a patient's results in `[from, to)`, oldest first.
    pub async fn accesses(
        &self,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<Vec<u64>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT log_index FROM access WHERE patient = $1 AND at >= $2 AND at < $3
                 ORDER BY at, log_index",
                &[&patient.as_bytes().as_slice(), &from.0, &to.0],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                let i: i64 = row.try_get(0).map_err(pg)?;
                u64::try_from(i)
                    .map_err(|_| StoreError::Corrupt(format!("log index {i} is negative")))
            })
            .collect()
    }

    /// Events in `[from, to)`, oldest first.
    pub async fn events(&self, from: UnixMillis, to: UnixMillis) -> Result<Vec<Event>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT at, member, item_system, item_code, price_fen, kind, found, cross_member,
                    adopted, reason, consulted_publisher, consulted_summary_id, consulted_at
                 FROM events WHERE at >= $1 AND at < $2 ORDER BY at, seq",
                &[&from.0, &to.0],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(event_from_row).collect()
    }
}
