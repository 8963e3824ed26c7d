//! The Huren node agent, run by each member institution.
//!
//! It turns the hospital's results into signed summaries and publishes them to the hub, and it
//! asks the hub for a patient's prior results and verifies every one before showing it.
//! Patient ids are pseudonymised here and never leave the agent.
//!
//! - [`client::Agent`]: the connection to the hub, signing, pseudonymisation, verified queries.
//! - [`results`]: the `huren-results/1` JSON format read by `huren-agent publish`.
//! - [`log`]: the agent as a witness of the hub's verifiable log (proofs, checkpoints, audit).
//! - [`hub`]: the hub's gRPC calls, requests from and answers to domain values; with
//!   [`repository`]'s service, the only module that sees `huren_proto` types.
//! - [`verify`]: checks on everything the hub returns.
//! - [`table`]: result tables for the terminal.
//! - [`config`]: the TOML configuration.
//! - [`error`]: the agent's error type, `AgentError`.
//!
//! The daemon side (`huren-agent run`, `backfill`, `outbox`, `fetch-report`; node-agent/INBOX.md):
//!
//! - [`daemon`]: `Daemon::start` / `run(config, shutdown)`: inbox watcher, publisher, repository.
//! - [`ingest`]: HL7 v2 ORU^R01 (`ingest::hl7`, our own ER7 reader; `ingest::oru`) and FHIR R4
//!   (`ingest::fhir`) to results; versions; the inbox's `done/` and `rejected/` folders.
//! - [`mapping`]: the member's `huren-mapping/1` file (local codes to catalogue, patient ids).
//! - [`draft`]: `ResultDraft`, the format-neutral result every reader produces, and the one
//!   place it becomes a validated `Summary`.
//! - [`store`]: the agent's own store (outbox, reports, ingest progress); the only module that
//!   imports sled.
//! - [`outbox`]: publishing with back-off, exactly-once by identical signed bytes, dead letters.
//! - [`repository`]: serving and fetching full reports over mTLS, checked against the digest.
//! - [`backfill`]: loading an archive with progress bars, resumable.
//! - [`credentials`]: keys and certificates, and a hub channel that connects lazily.
//! - [`commands`]: the daemon-side CLI commands as library functions.
//!
//! The web app (`huren-agent serve`, or `run` with `[web]`): [`web`], for the referral desk,
//! clinicians, the quality office and administrators; other HTTP services mount beside it.
//! For the hospital's EHR: [`ehr`], CDS Hooks 2.0 order-check services and a FHIR R4 read API
//! (one `axum::Router`, mounted by the agent's HTTP server).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod backfill;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod draft;
pub mod ehr;
pub mod error;
pub mod hub;
pub mod ingest;
pub mod log;
pub mod mapping;
pub mod metrics;
pub mod outbox;
pub mod proof_file;
pub mod repository;
pub mod results;
pub mod store;
pub mod table;
pub mod trust_checks;
pub mod verify;
pub mod web;

pub use client::{Agent, Answer, Asking, DecisionRecorded, OrderCheck, OrderItem, Published};
pub use config::AgentConfig;
pub use error::AgentError;
