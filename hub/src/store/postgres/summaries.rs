//! Summaries, their patient index and the certificates that signed them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use huren_core::identity::InstitutionId;
use huren_core::logentry::Entry;
use huren_core::merkle::{self, Hash};
use huren_core::pseudonym::Pseudonym;
use huren_core::signing::{SignedEnvelope, VerifiedSummary, sha256};
use huren_core::summary::{Summary, UnixMillis};

use super::log::{Growth, P, Reader, lock_head};
use super::{PgStore, pg};
use crate::store::{
    Found, PriorQuery, Put, PutBatch, PutOutcome, Receipt, StoreError, StoredSummary, Succession,
};

/// A summary leaf's fields.
struct SummaryLeaf {
    accepted_at: UnixMillis,
    signer_certificate_sha256: Hash,
    signature: [u8; 64],
    body: Vec<u8>,
}

fn summary_leaf(index: u64, leaf: &[u8]) -> Result<SummaryLeaf, StoreError> {
    match Entry::decode(leaf) {
        Ok(Entry::Summary {
            accepted_at,
            signer_certificate_sha256,
            signature,
            body,
        }) => Ok(SummaryLeaf {
            accepted_at,
            signer_certificate_sha256,
            signature,
            body,
        }),
        Ok(_) => Err(StoreError::Corrupt(format!(
            "log leaf {index} is not a summary"
        ))),
        Err(e) => Err(StoreError::Corrupt(format!(
            "log leaf {index} does not decode: {e}"
        ))),
    }
}

fn index_of(raw: i64) -> Result<u64, StoreError> {
    u64::try_from(raw).map_err(|_| StoreError::Corrupt(format!("log index {raw} is negative")))
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Tree(format!("{n} is out of range")))
}

/// A `by_patient` row: (patient, item_system, item_code, performed_at, publisher, summary_id).
type IndexRow<'a> = (&'a [u8; 32], &'a str, &'a str, i64, &'a str, &'a str);

/// A summary's key in the patient index.
fn index_key(s: &Summary) -> IndexRow<'_> {
    (
        s.patient.as_bytes(),
        s.item.system.as_str(),
        s.item.code.as_str(),
        s.performed_at.0,
        s.publisher.as_str(),
        s.id.as_str(),
    )
}

/// A row naming a result's version and its leaf: (publisher, summary_id, version, log_index,
/// leaf).
type VersionRow = (String, String, u32, u64, Vec<u8>);

fn version_row(row: &tokio_postgres::Row) -> Result<VersionRow, StoreError> {
    version_row_at(row, 0)
}

/// A [`VersionRow`] from the row's columns `first` to `first + 4`.
fn version_row_at(row: &tokio_postgres::Row, first: usize) -> Result<VersionRow, StoreError> {
    let version: i32 = row.try_get(first + 2).map_err(pg)?;
    Ok((
        row.try_get(first).map_err(pg)?,
        row.try_get(first + 1).map_err(pg)?,
        u32::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("version {version} is negative")))?,
        index_of(row.try_get(first + 3).map_err(pg)?)?,
        row.try_get(first + 4).map_err(pg)?,
    ))
}

/// The latest versions of a patient's results for some items (`$2`, `$3`: systems and
/// codes), performed in `[$4, $5]`, each with its leaf. An index row that carries its leaf
/// (the row of its result's latest version, see migration 3) is read as it is; only the
/// others go through `latest` (a lateral subquery, kept apart by its LIMIT, so that the
/// `IS NULL` test gates the lookup instead of filtering after it).
macro_rules! find_prior_sql {
    () => {
        latest_leaves_sql!(
            "SELECT b.publisher, b.summary_id, b.version, b.log_index
            FROM unnest($2::text[], $3::text[]) AS q(sys, code)
            JOIN by_patient b ON b.patient = $1 AND b.item_system = q.sys
                AND b.item_code = q.code AND b.performed_at BETWEEN $4 AND $5"
        )
    };
}

/// The latest version and leaf of each result among `$hits` (patient-index rows: publisher,
/// summary_id, version, log_index), once each.
macro_rules! latest_leaves_sql {
    ($hits:literal) => {
        concat!(
            "WITH hits AS (",
            $hits,
            "),
         cur AS (
            SELECT DISTINCT h.publisher, h.summary_id,
                coalesce(h.version, l.version) AS version,
                coalesce(h.log_index, l.log_index) AS log_index
            FROM hits h LEFT JOIN LATERAL (
                SELECT l.version, l.log_index FROM latest l
                WHERE h.log_index IS NULL
                    AND l.publisher = h.publisher AND l.summary_id = h.summary_id
                LIMIT 1) l ON true)
         SELECT cur.publisher, cur.summary_id, cur.version, cur.log_index, lf.leaf
         FROM cur JOIN log_leaves lf ON lf.idx = cur.log_index"
        )
    };
}

/// FindPrior's read (see [`find_prior_sql`]).
pub(super) const FIND_PRIOR: &str = find_prior_sql!();

/// FindPrior's read with the patient's consent: whether opted out, then the result's
/// columns (NULL when there is none), one row at least.
pub(super) const FIND_PRIOR_GATED: &str = concat!(
    "WITH consent_now AS (
        SELECT coalesce((SELECT opted_out FROM consent WHERE patient = $1), false) AS opted_out),
     prior AS (",
    find_prior_sql!(),
    ")
     SELECT c.opted_out, p.publisher, p.summary_id, p.version, p.log_index, p.leaf
     FROM consent_now c LEFT JOIN prior p ON true"
);

/// The stored versions among those a publish batch names (`$1`, `$2`, `$3`: publishers, ids
/// and versions).
pub(super) const STORED_VERSIONS: &str =
    "SELECT s.publisher, s.summary_id, s.version, s.body_sha256, s.accepted_at, s.log_index
     FROM unnest($1::text[], $2::text[], $3::int[]) AS k(p, i, v)
     JOIN summaries s ON s.publisher = k.p AND s.summary_id = k.i AND s.version = k.v";

impl PgStore {
    /// Stores summary versions in one transaction (see [`crate::store::Store::put_summaries`]):
    /// durable once this returns.
    pub async fn put_summaries(
        &self,
        items: &[(&VerifiedSummary, UnixMillis)],
        follows: Succession,
    ) -> Result<PutBatch, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let log = lock_head(&tx).await?;
        // What is stored of each result in the batch, and each version it names.
        let mut keys: Vec<(&str, &str)> = Vec::new();
        let mut amended: HashSet<(&str, &str)> = HashSet::new();
        for (v, _) in items {
            let k = (v.summary.publisher.as_str(), v.summary.id.as_str());
            if !keys.contains(&k) {
                keys.push(k);
            }
            if v.summary.version > 1 {
                amended.insert(k);
            }
        }
        let k_pub: Vec<&str> = keys.iter().map(|k| k.0).collect();
        let k_id: Vec<&str> = keys.iter().map(|k| k.1).collect();
        let k_amend: Vec<bool> = keys.iter().map(|k| amended.contains(k)).collect();
        let v_pub: Vec<&str> = items
            .iter()
            .map(|(v, _)| v.summary.publisher.as_str())
            .collect();
        let v_id: Vec<&str> = items.iter().map(|(v, _)| v.summary.id.as_str()).collect();
        let v_ver: Vec<i32> = items
            .iter()
            .map(|(v, _)| i32::try_from(v.summary.version).unwrap_or(i32::MAX))
            .collect();
        let q_latest = tx.prepare_cached(
            "SELECT l.publisher, l.summary_id, l.version, l.log_index, lf.leaf
             FROM unnest($1::text[], $2::text[], $3::bool[]) AS k(p, i, amend)
             JOIN latest l ON l.publisher = k.p AND l.summary_id = k.i
             LEFT JOIN log_leaves lf ON k.amend AND lf.idx = l.log_index",
        );
        let q_versions = tx.prepare_cached(STORED_VERSIONS);
        let (q_latest, q_versions) = tokio::try_join!(q_latest, q_versions).map_err(pg)?;
        let p_latest: [P; 3] = [&k_pub, &k_id, &k_amend];
        let p_versions: [P; 3] = [&v_pub, &v_id, &v_ver];
        let (latest_rows, version_rows) = tokio::try_join!(
            tx.query(&q_latest, &p_latest),
            tx.query(&q_versions, &p_versions),
        )
        .map_err(pg)?;
        // (publisher, id) -> (version, log_index, the latest version's summary when needed)
        let mut stored_latest: HashMap<(String, String), (u32, u64, Option<Summary>)> =
            HashMap::new();
        for row in &latest_rows {
            let version: i32 = row.try_get(2).map_err(pg)?;
            let version = u32::try_from(version)
                .map_err(|_| StoreError::Corrupt(format!("version {version} is negative")))?;
            let index = index_of(row.try_get(3).map_err(pg)?)?;
            let leaf: Option<Vec<u8>> = row.try_get(4).map_err(pg)?;
            let previous = match leaf {
                Some(leaf) => {
                    let body = summary_leaf(index, &leaf)?.body;
                    Some(Summary::from_stored_body_bytes(&body).map_err(|e| {
                        StoreError::Corrupt(format!(
                            "stored version {version} does not decode: {e}"
                        ))
                    })?)
                }
                None => None,
            };
            stored_latest.insert(
                (row.try_get(0).map_err(pg)?, row.try_get(1).map_err(pg)?),
                (version, index, previous),
            );
        }
        // (publisher, id, version) -> (body digest, accepted at, log index)
        let mut existing: HashMap<(String, String, u32), (Hash, i64, u64)> = HashMap::new();
        for row in &version_rows {
            let version: i32 = row.try_get(2).map_err(pg)?;
            let digest: &[u8] = row.try_get(3).map_err(pg)?;
            existing.insert(
                (
                    row.try_get(0).map_err(pg)?,
                    row.try_get(1).map_err(pg)?,
                    version as u32,
                ),
                (
                    super::log::hash(digest, || "a body digest".into())?,
                    row.try_get(4).map_err(pg)?,
                    index_of(row.try_get(5).map_err(pg)?)?,
                ),
            );
        }

        let before = log.clone();
        let mut growth = Growth::new(log);
        // Latest version per result as this batch leaves it (the summary, for a later
        // version's succession check).
        let mut staged: HashMap<(String, String), (u32, u64, Summary)> = HashMap::new();
        let mut new_certs: Vec<(Hash, &[u8])> = Vec::new();
        let mut rows_summaries = SummaryRows::default();
        // Every patient-index key this batch writes, of each result.
        let mut rows_index: HashSet<IndexRow> = HashSet::new();
        let mut results: Vec<Result<(Option<i64>, u64), StoreError>> = Vec::new();
        for (v, at) in items {
            let s = &v.summary;
            let key = (s.publisher.to_string(), s.id.to_string());
            let vkey = (key.0.clone(), key.1.clone(), s.version);
            if let Some(&(digest, accepted, index)) = existing.get(&vkey) {
                results.push(match digest == v.body_sha256 {
                    true => Ok((Some(accepted), index)),
                    false => Err(StoreError::Conflict {
                        key: s.result_key(),
                        version: s.version,
                    }),
                });
                continue;
            }
            let stored = match staged.get(&key) {
                Some((version, _, _)) => Some(*version),
                None => stored_latest.get(&key).map(|l| l.0),
            };
            let expected = stored.map_or(1, |v| v + 1);
            if s.version != expected {
                let reason = match stored {
                    None => "the first version of a result must be 1".to_owned(),
                    Some(v) if v >= s.version => {
                        return Err(StoreError::Corrupt(format!(
                            "version {} of {} is missing",
                            s.version,
                            s.result_key()
                        )));
                    }
                    Some(v) => format!("the stored version is {v}, so the next must be {expected}"),
                };
                results.push(Err(StoreError::OutOfOrder {
                    key: s.result_key(),
                    version: s.version,
                    reason,
                }));
                continue;
            }
            let previous = match staged.get(&key) {
                Some((_, _, previous)) => Some(previous),
                None => match stored_latest.get(&key) {
                    Some((_, _, Some(previous))) => Some(previous),
                    Some((version, _, None)) => {
                        return Err(StoreError::Corrupt(format!(
                            "version {version} of {} has no leaf",
                            s.result_key()
                        )));
                    }
                    None => None,
                },
            };
            if let Some(previous) = previous
                && let Err(reason) = follows(s, previous)
            {
                results.push(Err(StoreError::Succession {
                    key: s.result_key(),
                    version: s.version,
                    reason,
                }));
                continue;
            }
            let cert_hash = sha256(&v.envelope.signer_certificate);
            if !self.certificate_known(&cert_hash)
                && !new_certs.iter().any(|(h, _)| *h == cert_hash)
            {
                new_certs.push((cert_hash, v.envelope.signer_certificate.as_slice()));
            }
            let leaf = Entry::Summary {
                accepted_at: *at,
                signer_certificate_sha256: cert_hash,
                signature: v.envelope.signature,
                body: v.envelope.body.clone(),
            }
            .encode();
            let index = growth.push(leaf)?;
            rows_summaries.push(s, &v.body_sha256, at.0, to_i64(index)?);
            rows_index.insert(index_key(s));
            existing.insert(vkey, (v.body_sha256, at.0, index));
            staged.insert(key, (s.version, index, s.clone()));
            results.push(Ok((None, index)));
        }

        // Certificates, data, the patient index and the log, pipelined on the transaction.
        let c_hash: Vec<&[u8]> = new_certs.iter().map(|(h, _)| h.as_slice()).collect();
        let c_der: Vec<&[u8]> = new_certs.iter().map(|(_, d)| *d).collect();
        let (mut l_pub, mut l_id, mut l_ver, mut l_idx) = (vec![], vec![], vec![], vec![]);
        for ((p, i), (version, index, _)) in &staged {
            l_pub.push(p.as_str());
            l_id.push(i.as_str());
            l_ver.push(i32::try_from(*version).unwrap_or(i32::MAX));
            l_idx.push(to_i64(*index)?);
        }
        // Each key's leaf: the key of a result's latest version carries it; every other key
        // the batch wrote for that result, and the key of the version it supersedes, carry
        // none (NULL: read through `latest`).
        let mut index_rows: HashMap<IndexRow, Option<(i32, i64)>> =
            rows_index.iter().map(|k| (*k, None)).collect();
        for (key, (_, _, _)) in &staged {
            if let Some((_, _, Some(previous))) = stored_latest.get(key) {
                index_rows.entry(index_key(previous)).or_insert(None);
            }
        }
        for (version, index, summary) in staged.values() {
            index_rows.insert(
                index_key(summary),
                Some((i32::try_from(*version).unwrap_or(i32::MAX), to_i64(*index)?)),
            );
        }
        let (mut b_pat, mut b_sys, mut b_code, mut b_at, mut b_pub, mut b_id) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut b_ver, mut b_idx) = (vec![], vec![]);
        for ((pat, sys, code, at, p, i), leaf) in &index_rows {
            b_pat.push(pat.as_slice());
            b_sys.push(*sys);
            b_code.push(*code);
            b_at.push(*at);
            b_pub.push(*p);
            b_id.push(*i);
            b_ver.push(leaf.map(|(v, _)| v));
            b_idx.push(leaf.map(|(_, i)| i));
        }
        let q_certs = tx.prepare_cached(
            "INSERT INTO certs (sha256, der) SELECT * FROM unnest($1::bytea[], $2::bytea[])
             ON CONFLICT (sha256) DO NOTHING",
        );
        let q_summaries = tx.prepare_cached(
            "INSERT INTO summaries (publisher, summary_id, version, body_sha256, accepted_at, log_index)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bytea[], $5::bigint[], $6::bigint[])",
        );
        let q_latest = tx.prepare_cached(
            "INSERT INTO latest (publisher, summary_id, version, log_index)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[])
             ON CONFLICT (publisher, summary_id)
             DO UPDATE SET version = EXCLUDED.version, log_index = EXCLUDED.log_index",
        );
        let q_index = tx.prepare_cached(
            "INSERT INTO by_patient (patient, item_system, item_code, performed_at, publisher,
                summary_id, version, log_index)
             SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                $6::text[], $7::int[], $8::bigint[])
             ON CONFLICT (patient, item_system, item_code, performed_at, publisher, summary_id)
             DO UPDATE SET version = EXCLUDED.version, log_index = EXCLUDED.log_index",
        );
        let (q_certs, q_summaries, q_latest, q_index) =
            tokio::try_join!(q_certs, q_summaries, q_latest, q_index).map_err(pg)?;
        let r = &rows_summaries;
        let p_certs: [P; 2] = [&c_hash, &c_der];
        let p_summaries: [P; 6] = [&r.publisher, &r.id, &r.version, &r.digest, &r.at, &r.index];
        let p_latest: [P; 4] = [&l_pub, &l_id, &l_ver, &l_idx];
        let p_index: [P; 8] = [
            &b_pat, &b_sys, &b_code, &b_at, &b_pub, &b_id, &b_ver, &b_idx,
        ];
        tokio::try_join!(
            tx.execute(&q_certs, &p_certs),
            tx.execute(&q_summaries, &p_summaries),
            tx.execute(&q_latest, &p_latest),
            tx.execute(&q_index, &p_index),
        )
        .map_err(pg)?;
        growth.write(&tx).await?;
        tx.commit().await.map_err(pg)?;
        drop(client);

        let head = growth.next.head();
        self.saw_head(head);
        self.cache_written(&growth.written);
        for (h, der) in new_certs {
            self.cache_certificate(h, der.into());
        }
        // Proofs from the nodes the batch wrote and, to their left, the frontier before it.
        let mut known: HashMap<(u8, u64), Hash> = merkle::frontier_nodes(before.size)
            .zip(before.frontier.iter().copied())
            .collect();
        known.extend(growth.written.iter().map(|(l, i, h)| ((*l, *i), *h)));
        let indexes: Vec<u64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|(_, i)| *i))
            .collect();
        let mut proofs = self
            .with_nodes(&known, |node| {
                // Together: the right edge most of them share is folded once.
                merkle::inclusion_proofs(&indexes, head.size, &Reader(node))
            })
            .await?
            .into_iter();
        let results = results
            .into_iter()
            .zip(items)
            .map(|(r, (v, at))| {
                let (earlier, index) = r?;
                let proof = proofs
                    .next()
                    .ok_or_else(|| StoreError::Tree("a proof is missing".into()))?;
                let s = &v.summary;
                let receipt = Receipt {
                    publisher: s.publisher.clone(),
                    summary_id: s.id.clone(),
                    version: s.version,
                    body_sha256: v.body_sha256,
                    accepted_at: UnixMillis(earlier.unwrap_or(at.0)),
                };
                let outcome = match earlier {
                    Some(_) => PutOutcome::AlreadyStored(receipt),
                    None => PutOutcome::Stored(receipt),
                };
                Ok(Put {
                    outcome,
                    index,
                    proof,
                })
            })
            .collect();
        Ok(PutBatch { results, head })
    }

    fn certificate_known(&self, hash: &Hash) -> bool {
        self.inner.certs.read().is_ok_and(|c| c.contains_key(hash))
    }

    /// Call only for a certificate committed to `certs`.
    fn cache_certificate(&self, hash: Hash, der: Arc<[u8]>) {
        if let Ok(mut cache) = self.inner.certs.write() {
            if cache.len() >= 4096 {
                cache.clear();
            }
            cache.insert(hash, der);
        }
    }

    /// Turns (publisher, id, version, index, leaf) rows into stored summaries, reading the
    /// certificates not yet cached in one round trip.
    async fn to_stored(&self, rows: Vec<VersionRow>) -> Result<Vec<StoredSummary>, StoreError> {
        let leaves = rows
            .into_iter()
            .map(|(p, i, version, index, leaf)| {
                Ok((p, i, version, index, summary_leaf(index, &leaf)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut wanted: Vec<&[u8]> = Vec::new();
        for (.., l) in &leaves {
            let h = &l.signer_certificate_sha256;
            if !self.certificate_known(h) && !wanted.contains(&h.as_slice()) {
                wanted.push(h);
            }
        }
        if !wanted.is_empty() {
            let client = self.client().await?;
            let q = client
                .prepare_cached("SELECT sha256, der FROM certs WHERE sha256 = ANY($1)")
                .await
                .map_err(pg)?;
            for row in client.query(&q, &[&wanted]).await.map_err(pg)? {
                let h: &[u8] = row.try_get(0).map_err(pg)?;
                let der: &[u8] = row.try_get(1).map_err(pg)?;
                self.cache_certificate(
                    super::log::hash(h, || "a certificate hash".into())?,
                    der.into(),
                );
            }
        }
        // Each result's certificate, taken under the lock (not a copy of the whole cache, which
        // holds every member's certificates).
        let ders = {
            let certs = self
                .inner
                .certs
                .read()
                .map_err(|_| StoreError::Corrupt("the certificate cache is poisoned".into()))?;
            leaves
                .iter()
                .map(|(.., leaf)| {
                    certs
                        .get(&leaf.signer_certificate_sha256)
                        .cloned()
                        .ok_or_else(|| StoreError::Corrupt("signing certificate missing".into()))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Vec::with_capacity(leaves.len());
        for ((publisher, id, version, index, leaf), der) in leaves.into_iter().zip(ders) {
            let summary = Summary::from_stored_body_bytes(&leaf.body)
                .map_err(|e| StoreError::Corrupt(format!("stored body no longer decodes: {e}")))?;
            if summary.version != version
                || summary.publisher.as_str() != publisher
                || summary.id.as_str() != id
            {
                return Err(StoreError::Corrupt(format!(
                    "log leaf {index} is not version {version} of the result that names it"
                )));
            }
            out.push(StoredSummary {
                receipt: Receipt {
                    publisher: summary.publisher.clone(),
                    summary_id: summary.id.clone(),
                    version: summary.version,
                    body_sha256: sha256(&leaf.body),
                    accepted_at: leaf.accepted_at,
                },
                log_index: index,
                envelope: SignedEnvelope {
                    signature: leaf.signature,
                    body: leaf.body,
                    signer_certificate: der.to_vec(),
                },
                summary,
            });
        }
        Ok(out)
    }

    /// Runs a FindPrior read (`FIND_PRIOR` or `FIND_PRIOR_GATED`) with the query's values.
    async fn prior_rows(
        &self,
        sql: &str,
        q: &PriorQuery,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let systems: Vec<&str> = q.items.iter().map(|(s, _)| s.as_str()).collect();
        let codes: Vec<&str> = q.items.iter().map(|(_, c)| c.as_str()).collect();
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg)?;
        client
            .query(
                &stmt,
                &[
                    &q.patient.as_bytes().as_slice(),
                    &systems,
                    &codes,
                    &q.from.0,
                    &q.until.0,
                ],
            )
            .await
            .map_err(pg)
    }

    /// The latest versions among `rows` that are still of one of the asked items.
    async fn resolve_prior(
        &self,
        rows: Vec<VersionRow>,
        q: &PriorQuery,
    ) -> Result<Found, StoreError> {
        self.resolve(rows, q, |s| {
            q.items
                .iter()
                .any(|(sys, code)| s.item.system == *sys && s.item.code == *code)
        })
        .await
    }

    /// Latest versions of a patient's results for some items, performed within the window,
    /// newest first.
    pub async fn find_prior(&self, q: &PriorQuery) -> Result<Found, StoreError> {
        let rows = self
            .prior_rows(FIND_PRIOR, q)
            .await?
            .iter()
            .map(version_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.resolve_prior(rows, q).await
    }

    /// Whether the patient opted out, and [`PgStore::find_prior`]'s results, in one
    /// statement.
    pub async fn find_prior_gated(&self, q: &PriorQuery) -> Result<(bool, Found), StoreError> {
        let rows = self.prior_rows(FIND_PRIOR_GATED, q).await?;
        let opted_out = match rows.first() {
            Some(row) => row.try_get(0).map_err(pg)?,
            None => {
                return Err(StoreError::Corrupt(
                    "FindPrior's read returned no row, not even the consent".into(),
                ));
            }
        };
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let publisher: Option<&str> = row.try_get(1).map_err(pg)?;
            if publisher.is_some() {
                found.push(version_row_at(row, 1)?);
            }
        }
        Ok((opted_out, self.resolve_prior(found, q).await?))
    }

    /// Latest versions of all of a patient's results in the period, newest first.
    pub async fn history(&self, q: &PriorQuery) -> Result<Found, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(latest_leaves_sql!(
                "SELECT b.publisher, b.summary_id, b.version, b.log_index
                     FROM by_patient b WHERE b.patient = $1"
            ))
            .await
            .map_err(pg)?;
        let rows = client
            .query(&stmt, &[&q.patient.as_bytes().as_slice()])
            .await
            .map_err(pg)?;
        drop(client);
        let rows = rows
            .iter()
            .map(version_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.resolve(rows, q, |_| true).await
    }

    /// The latest versions that still match, sorted newest performed first, at most the limit.
    async fn resolve(
        &self,
        rows: Vec<VersionRow>,
        q: &PriorQuery,
        matches: impl Fn(&Summary) -> bool,
    ) -> Result<Found, StoreError> {
        let mut results: Vec<StoredSummary> = self
            .to_stored(rows)
            .await?
            .into_iter()
            .filter(|stored| {
                let s = &stored.summary;
                s.patient == q.patient
                    && s.performed_at >= q.from
                    && s.performed_at <= q.until
                    && matches(s)
            })
            .collect();
        results.sort_by(|a, b| {
            b.summary
                .performed_at
                .cmp(&a.summary.performed_at)
                .then_with(|| a.receipt.publisher.cmp(&b.receipt.publisher))
                .then_with(|| a.receipt.summary_id.cmp(&b.receipt.summary_id))
        });
        let truncated = results.len() > q.limit;
        results.truncate(q.limit);
        Ok(Found { results, truncated })
    }

    /// Whether `publisher` has published a result for `patient`.
    pub async fn has_published_for(
        &self,
        patient: &Pseudonym,
        publisher: &InstitutionId,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM by_patient WHERE patient = $1 AND publisher = $2)",
                &[&patient.as_bytes().as_slice(), &publisher.as_str()],
            )
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)
    }

    /// Every version of one result, newest first.
    pub async fn versions(
        &self,
        publisher: &str,
        id: &str,
    ) -> Result<Vec<StoredSummary>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.publisher, s.summary_id, s.version, s.log_index, lf.leaf
                 FROM summaries s JOIN log_leaves lf ON lf.idx = s.log_index
                 WHERE s.publisher = $1 AND s.summary_id = $2 ORDER BY s.version DESC",
                &[&publisher, &id],
            )
            .await
            .map_err(pg)?;
        drop(client);
        let rows = rows
            .iter()
            .map(version_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.to_stored(rows).await
    }

    /// The latest version of one result.
    pub async fn latest(
        &self,
        publisher: &str,
        id: &str,
    ) -> Result<Option<StoredSummary>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT l.publisher, l.summary_id, l.version, l.log_index, lf.leaf
                 FROM latest l JOIN log_leaves lf ON lf.idx = l.log_index
                 WHERE l.publisher = $1 AND l.summary_id = $2",
                &[&publisher, &id],
            )
            .await
            .map_err(pg)?;
        drop(client);
        let rows = rows
            .iter()
            .map(version_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.to_stored(rows).await?.into_iter().next())
    }
}

/// Columns of the `summaries` rows a batch inserts.
#[derive(Default)]
struct SummaryRows<'a> {
    publisher: Vec<&'a str>,
    id: Vec<&'a str>,
    version: Vec<i32>,
    digest: Vec<&'a [u8]>,
    at: Vec<i64>,
    index: Vec<i64>,
}

impl<'a> SummaryRows<'a> {
    fn push(&mut self, s: &'a Summary, digest: &'a Hash, at: i64, index: i64) {
        self.publisher.push(s.publisher.as_str());
        self.id.push(s.id.as_str());
        self.version
            .push(i32::try_from(s.version).unwrap_or(i32::MAX));
        self.digest.push(digest.as_slice());
        self.at.push(at);
        self.index.push(index);
    }
}
