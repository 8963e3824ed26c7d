//! The Huren hub.
//!
//! It verifies members' signed summaries, stores and indexes them, and answers "what prior
//! results does this patient have?" with the signed envelopes so the asker verifies them itself.
//!
//! Layout, outside in:
//! - [`server`]: `run(config, listener, shutdown)`: TLS, the service, health, reflection.
//! - [`grpc`]: the gRPC edge; caller identity from the client certificate; pb ⇄ domain.
//! - [`service`]: the domain operations ([`service::Hub`]).
//! - [`intake`], [`journal`]: the two group writers, for publishes and for what queries leave.
//! - [`signers`]: signing certificates, validated once each; [`verifier`]: unary publishes'
//!   signatures, checked in batches.
//! - [`store`]: the storage seam ([`store::Store`]) and its sled backend; group commit.
//! - [`metrics`]: Prometheus metrics on a listener of their own (off by default).
//! - [`log`]: the log key that signs checkpoints ([`log::LogSigner`]).
//! - [`witness`]: the witness (`huren-witness`) and the hub's side of getting cosignatures.
//! - [`error`]: [`error::HubError`] and its one mapping to gRPC status codes.
//! - [`config`]: the TOML configuration.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod batch;
pub mod config;
pub mod conn;
pub mod error;
pub mod grpc;
pub mod intake;
pub mod journal;
pub mod log;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod service;
pub mod signers;
pub mod store;
pub mod verifier;
pub mod witness;

pub use config::HubConfig;
pub use server::{run, run_with_store};
