//! Huren's integration tests, one binary so it builds once. Every test starts its own hub (see
//! `harness`) on a free port with real mutual TLS and a fresh store.

mod agent;
mod bad_input;
mod connections;
mod deploy;
mod durability;
mod ehr;
mod harness;
mod interop;
mod log;
mod node_daemon;
mod publish;
mod query;
mod rules;
mod security_ingest;
mod vectors;
