//! The Huren node agent, run by each member institution.
//!
//! It turns the hospital's results into signed summaries and publishes them to the hub, and it
//! asks the hub for a patient's prior results and verifies every one before showing it.
//! Patient ids are pseudonymised here and never leave the agent.
//!
//! - [`client::Agent`]: the connection to the hub, signing, pseudonymisation, verified queries.
//! - [`results`]: the `huren-results/1` JSON format read by `huren-agent publish`.
//! - [`log`]: the agent as a witness of the hub's verifiable log (proofs, checkpoints, audit).
//! - [`verify`]: checks on everything the hub returns.
//! - [`table`]: result tables for the terminal.
//! - [`config`]: the TOML configuration.
//! - [`error`]: the agent's error type, `AgentError`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod backfill;
pub mod client;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod draft;
pub mod error;
pub mod ingest;
pub mod log;
pub mod mapping;
pub mod outbox;
pub mod repository;
pub mod results;
pub mod store;
pub mod table;
pub mod verify;

pub use client::{Agent, Answer, DecisionRecorded, OrderCheck, OrderItem, Published};
pub use config::AgentConfig;
pub use error::AgentError;
