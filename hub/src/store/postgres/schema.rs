//! The PostgreSQL schema, as versioned migrations embedded in the binary and applied at open.
//!
//! [`migrate`] runs every migration newer than the database's `huren_schema.version` in one
//! transaction, under a transaction-scoped advisory lock, so several hubs starting at once on
//! one database apply each migration exactly once. A database whose version is newer than
//! [`SCHEMA_VERSION`] is refused ([`StoreError::NewerLayout`]) before anything is read.
//! Migrations are never edited once released: a change is a new one.

use deadpool_postgres::Client;

use super::{Place, pg};
use crate::store::StoreError;

/// The schema this code reads and writes: the last migration's version.
pub const SCHEMA_VERSION: u32 = 4;

/// The advisory lock migrations run under ("huren" and a 1, as one number).
const MIGRATION_LOCK: i64 = 0x6875_7265_6e00_0001;

/// Each migration's version and SQL, oldest first.
const MIGRATIONS: &[(u32, &str)] = &[(1, V1), (2, V2), (3, V3), (4, V4)];

/// Version 4: what a member was shown is read from the patient's access leaves (whose facts,
/// leaf format 4, name each shown result's item and verdict), so an answered query no longer
/// writes `shown_to`. Each access row names its member (NULL in rows from before this
/// version), so that reading one member's consultation skips the other members' leaves.
/// `shown_to` stays for what the leaves cannot answer: consultations in older leaves,
/// recorded before this version, and copies from sled. The version also stops an older hub,
/// which would look for new consultations in `shown_to`, from running on this database.
const V4: &str = r#"
ALTER TABLE access ADD COLUMN member text;
COMMENT ON TABLE shown_to IS
    'huren: consultations recorded before schema 4 or copied from sled; later ones are read from the access leaves';
"#;

/// Version 3: fewer rows touched per answered query.
///
/// - Each patient-index row carries the version and leaf index of its result's latest
///   version while that version is the one the row was written for (NULL otherwise: the row
///   of an earlier version whose patient, item or date a later one changed). FindPrior and
///   History read the leaves straight from the index and go through `latest` only for NULL
///   rows. Rows of results never amended are filled here; those of amended results stay NULL
///   until their next version.
/// - What a member was shown of a patient's results is one row per (member, patient): a jsonb
///   object from `publisher/summary_id` to `[version, recognised, item_system, item_code,
///   at]`, merged with `||`, so an answered query writes one row instead of one per result.
const V3: &str = r#"
ALTER TABLE by_patient ADD COLUMN version integer, ADD COLUMN log_index bigint;
UPDATE by_patient b SET version = 1, log_index = l.log_index
    FROM latest l
    WHERE l.publisher = b.publisher AND l.summary_id = b.summary_id AND l.version = 1;

CREATE TABLE shown_to (
    member text NOT NULL,
    patient bytea NOT NULL,
    results jsonb NOT NULL,
    PRIMARY KEY (member, patient)
);
INSERT INTO shown_to (member, patient, results)
    SELECT member, patient, jsonb_object_agg(publisher || '/' || summary_id,
        jsonb_build_array(version, recognised, item_system, item_code, at))
    FROM shown GROUP BY member, patient;
DROP TABLE shown;
"#;

/// Fills the leaf of each patient-index row whose result was never amended (its one row is
/// its latest version's): after migration 3, and after a copy from sled, which writes every
/// row unfilled.
pub(super) const FILL_UNAMENDED: &str =
    "UPDATE by_patient b SET version = 1, log_index = l.log_index
    FROM latest l
    WHERE b.log_index IS NULL
        AND l.publisher = b.publisher AND l.summary_id = b.summary_id AND l.version = 1";

/// Version 2: the log indexes of the policy leaves (the latest is the policy last put in
/// force).
const V2: &str = r#"
CREATE TABLE policies (
    log_index bigint PRIMARY KEY
);
"#;

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].0 == SCHEMA_VERSION);

/// Version 1: the log (head, leaves, nodes; append-only by trigger), summaries and their
/// patient index, the audit (what members were shown, decisions, statistics events, consent,
/// the access index).
const V1: &str = r#"
CREATE TABLE huren_schema (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    version integer NOT NULL
);

-- The log's tree head: its size and frontier (the hash of each complete subtree on its right
-- edge, largest first, concatenated). One row; every logged write locks it first (FOR UPDATE),
-- which sequences appends across every hub on the database.
CREATE TABLE log_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    size bigint NOT NULL CHECK (size >= 0),
    frontier bytea NOT NULL
);
INSERT INTO log_head (size, frontier) VALUES (0, '\x');

-- Every leaf, as encoded by huren_core::logentry, with its RFC 6962 leaf hash.
CREATE TABLE log_leaves (
    idx bigint PRIMARY KEY CHECK (idx >= 0),
    hash bytea NOT NULL CHECK (length(hash) = 32),
    leaf bytea NOT NULL
);

-- Every complete subtree above the leaves: level >= 1, covering leaves
-- [idx << level, (idx + 1) << level).
CREATE TABLE log_nodes (
    level smallint NOT NULL CHECK (level BETWEEN 1 AND 63),
    idx bigint NOT NULL CHECK (idx >= 0),
    hash bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE FUNCTION huren_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'huren: % on % is refused: the log is append-only', TG_OP, TG_TABLE_NAME;
END
$$;

CREATE FUNCTION huren_log_head_grows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.size < OLD.size THEN
        RAISE EXCEPTION 'huren: % on log_head is refused: the log only grows', TG_OP;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER log_leaves_append_only BEFORE UPDATE OR DELETE ON log_leaves
    FOR EACH ROW EXECUTE FUNCTION huren_log_append_only();
CREATE TRIGGER log_leaves_no_truncate BEFORE TRUNCATE ON log_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION huren_log_append_only();
CREATE TRIGGER log_nodes_append_only BEFORE UPDATE OR DELETE ON log_nodes
    FOR EACH ROW EXECUTE FUNCTION huren_log_append_only();
CREATE TRIGGER log_nodes_no_truncate BEFORE TRUNCATE ON log_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION huren_log_append_only();
CREATE TRIGGER log_head_grows BEFORE UPDATE OR DELETE ON log_head
    FOR EACH ROW EXECUTE FUNCTION huren_log_head_grows();
CREATE TRIGGER log_head_no_truncate BEFORE TRUNCATE ON log_head
    FOR EACH STATEMENT EXECUTE FUNCTION huren_log_append_only();

-- Signing certificates (DER), once each, by SHA-256.
CREATE TABLE certs (
    sha256 bytea PRIMARY KEY CHECK (length(sha256) = 32),
    der bytea NOT NULL
);

-- Every stored version of every result; body, signature and signer are in its leaf.
CREATE TABLE summaries (
    publisher text NOT NULL,
    summary_id text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    body_sha256 bytea NOT NULL,
    accepted_at bigint NOT NULL,
    log_index bigint NOT NULL,
    PRIMARY KEY (publisher, summary_id, version)
);

-- Each result's latest version and its leaf.
CREATE TABLE latest (
    publisher text NOT NULL,
    summary_id text NOT NULL,
    version integer NOT NULL,
    log_index bigint NOT NULL,
    PRIMARY KEY (publisher, summary_id)
);

-- The patient index. Never pruned: a query resolves each hit to the result's latest version
-- and checks that it still matches.
CREATE TABLE by_patient (
    patient bytea NOT NULL,
    item_system text NOT NULL,
    item_code text NOT NULL,
    performed_at bigint NOT NULL,
    publisher text NOT NULL,
    summary_id text NOT NULL,
    PRIMARY KEY (patient, item_system, item_code, performed_at, publisher, summary_id)
);

-- What a member was last shown of a result of a patient.
CREATE TABLE shown (
    member text NOT NULL,
    patient bytea NOT NULL,
    publisher text NOT NULL,
    summary_id text NOT NULL,
    version integer NOT NULL,
    recognised boolean NOT NULL,
    item_system text NOT NULL,
    item_code text NOT NULL,
    at bigint NOT NULL,
    PRIMARY KEY (member, patient, publisher, summary_id)
);

CREATE TABLE decisions (
    member text NOT NULL,
    decision_id text NOT NULL,
    publisher text NOT NULL,
    summary_id text NOT NULL,
    version integer NOT NULL,
    adopted boolean NOT NULL,
    reason text NOT NULL,
    note text NOT NULL,
    at bigint NOT NULL,
    recognised boolean NOT NULL,
    log_index bigint NOT NULL,
    PRIMARY KEY (member, decision_id)
);

-- Statistics events; kind 1 = query, 2 = decision.
CREATE TABLE events (
    seq bigserial PRIMARY KEY,
    at bigint NOT NULL,
    member text NOT NULL,
    item_system text NOT NULL,
    item_code text NOT NULL,
    price_fen bigint NOT NULL,
    kind smallint NOT NULL,
    found boolean NOT NULL,
    cross_member boolean NOT NULL,
    adopted boolean NOT NULL,
    reason text NOT NULL,
    consulted_publisher text NOT NULL,
    consulted_summary_id text NOT NULL,
    consulted_at bigint NOT NULL
);
CREATE INDEX events_by_time ON events (at, seq);

CREATE TABLE consent (
    patient bytea PRIMARY KEY,
    opted_out boolean NOT NULL,
    member text NOT NULL,
    at bigint NOT NULL,
    log_index bigint NOT NULL
);

-- The access leaves of each patient, for the access report.
CREATE TABLE access (
    patient bytea NOT NULL,
    at bigint NOT NULL,
    log_index bigint NOT NULL,
    PRIMARY KEY (patient, at, log_index)
);
"#;

/// Applies the migrations the database lacks, or refuses a database in a newer schema.
pub(super) async fn migrate(client: &mut Client, place: &Place) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        .await
        .map_err(pg)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('huren_schema') IS NOT NULL", &[])
        .await
        .map_err(pg)?
        .try_get(0)
        .map_err(pg)?;
    let current = match exists {
        false => 0,
        true => {
            let row = tx
                .query_opt("SELECT version FROM huren_schema", &[])
                .await
                .map_err(pg)?;
            let version: i32 = match row {
                Some(row) => row.try_get(0).map_err(pg)?,
                None => 0,
            };
            u32::try_from(version).map_err(|_| {
                StoreError::Corrupt(format!("the schema version {version} is negative"))
            })?
        }
    };
    if current > SCHEMA_VERSION {
        return Err(StoreError::NewerLayout {
            path: place.0.clone().into(),
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(|e| {
            let why = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            StoreError::Unavailable(
                format!("migration {version} of the PostgreSQL schema failed: {why}").into(),
            )
        })?;
    }
    let version = i32::try_from(SCHEMA_VERSION).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO huren_schema (version) VALUES ($1)
         ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version",
        &[&version],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    tracing::info!(store = %place.0, from = current, to = SCHEMA_VERSION, "PostgreSQL schema migrated");
    Ok(())
}
