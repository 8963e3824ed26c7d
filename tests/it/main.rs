//! Huren's integration tests, one binary so it builds once. Every test starts its own hub (see
//! `harness`) on a free port with real mutual TLS and a fresh store. Every test that stores
//! anything runs twice, once on each backend: `on_each_store!` makes `NAME::sled` and
//! `NAME::postgres` of a test `NAME` (PostgreSQL: a database of its own on the throwaway
//! cluster the harness starts, see `harness::Backend`).

#[macro_use]
mod harness;
mod agent;
mod agent_crash_loop;
mod bad_input;
mod connections;
mod crash_loop;
mod deploy;
mod durability;
mod ehr;
mod interop;
mod log;
mod multi_hub;
mod node_daemon;
mod proof_file;
mod publish;
mod query;
mod rules;
mod security_ingest;
mod trust;
mod vectors;
mod web_browser;
mod witness;
