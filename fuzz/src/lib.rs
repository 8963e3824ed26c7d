//! Fuzz targets for every decoder that takes outside input (FUZZING.md).
//!
//! - [`targets`]: one plain function per target, `fn(&[u8])`, listed in [`targets::TARGETS`].
//!   A target panics only when an invariant of ours breaks (a decoder panicking, or an
//!   accepted input that does not re-encode or verify as it must); refusing an input is the
//!   normal outcome.
//! - [`fixtures`]: the fixed keys the targets verify with (the test keys of
//!   tests/vectors/huren-v1.json, a witness key from a fixed seed) and the example mapping.
//! - [`seeds`]: structured seed inputs made with those keys (signed checkpoints, a proof file,
//!   envelopes, leaves, requests), written into `fuzz/corpus/` by `huren-fuzz-seeds`.
//!
//! The AFL++ harness (`src/bin/huren-fuzz-afl.rs`, feature `afl`) runs a target under the
//! fuzzer; `tests/replay.rs` runs every target over its corpus and crash files in
//! `cargo test --workspace`, without AFL.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod fixtures;
pub mod seeds;
pub mod targets;
