//! Huren's pure core: what a summary is, how it is signed and verified, how patients are
//! pseudonymised, and which certificates the alliance trusts.
//!
//! Hub and agent both use exactly this code, so a summary means the same to both. Nothing here
//! does I/O, spawns tasks or knows about gRPC; every function is a plain function over plain
//! values and can be tested in microseconds.
//!
//! - [`identity`]: institution ids and how certificates carry them.
//! - [`summary`]: the validated [`summary::Summary`] and its canonical byte encoding.
//! - [`signing`]: the signed message layout, [`signing::SummarySigner`] and envelope verification.
//! - [`trust`]: the alliance CA as trust anchor; certifying signing certificates.
//! - [`pseudonym`]: patient id normalisation and the keyed pseudonym.
//! - [`receipt`]: the hub's acknowledgement of a stored summary.
//! - [`merkle`]: the RFC 6962 Merkle log: hashing, appends, inclusion and consistency proofs.
//! - [`checkpoint`]: C2SP checkpoints of the log in Ed25519-signed notes.
//! - [`logentry`]: the log's leaf layouts (summaries, decisions, accesses, consent) and the
//!   pure verifier of a leaf against a signed checkpoint.
//! - [`rules`]: the alliance policy model, recognition verdicts (and their replay) and
//!   decision checks.
//! - [`policy_file`]: the policy file's TOML read into a [`rules::Policy`].
//! - [`stats`]: closed-loop statistics, a pure fold over recorded events.
//! - [`pb`]: the generated `huren.summary.v1` messages, the byte format of a signed body.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod checkpoint;
pub mod config_file;
pub mod cosignature;
pub mod ed25519;
pub mod identity;
pub mod logentry;
pub mod merkle;
pub mod policy_file;
#[cfg(test)]
mod properties;
pub mod pseudonym;
pub mod receipt;
pub mod rules;
pub mod signing;
pub mod stats;
pub mod summary;
pub mod trust;

/// Generated `huren.summary.v1` messages (proto/huren/summary/v1/summary.proto).
#[allow(clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/huren.summary.v1.rs"));
}
