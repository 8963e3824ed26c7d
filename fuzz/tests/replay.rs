//! Replays every fuzz target over its corpus (fuzz/corpus/<target>/), its crash inputs
//! (fuzz/crashes/<target>/: each one a bug found and fixed, kept as a regression test) and the
//! structured seeds, with the same functions the fuzzer runs. No fuzzing here: this is what
//! `cargo test --workspace` (and so .ci/run) checks.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Instant;

use huren_fuzz::targets::{TARGETS, by_name};

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"));
    out.sort();
    out
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind);
    let mut total = 0;
    for (name, target) in TARGETS {
        let started = Instant::now();
        let inputs = files(&root.join(name));
        for path in &inputs {
            let bytes = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{name} panics on {}", path.display());
        }
        println!(
            "{kind}/{name}: {} inputs in {:?}",
            inputs.len(),
            started.elapsed()
        );
        total += inputs.len();
    }
    total
}

#[test]
fn every_corpus_file_passes_its_target() {
    let n = replay("corpus");
    // The committed corpus holds at least the seeds of every target.
    assert!(n >= 50, "only {n} corpus files: is fuzz/corpus/ there?");
    for (name, _) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(name);
        assert!(!files(&dir).is_empty(), "no corpus for {name}");
    }
}

#[test]
fn every_crash_input_is_fixed() {
    replay("crashes");
}

#[test]
fn structured_seeds_pass_and_reach_deep() {
    let seeds = huren_fuzz::seeds::all();
    for (target, name, bytes) in &seeds {
        let f = by_name(target).unwrap();
        f(bytes);
        let _ = name;
    }
    // The seeds are valid where they claim to be, so the fuzzer starts past the signatures.
    let f = huren_fuzz::fixtures::get();
    let proof = seeds
        .iter()
        .find(|(t, _, _)| *t == "proof_file")
        .map(|(_, _, b)| String::from_utf8(b.clone()).unwrap())
        .unwrap();
    let trust = huren_agent::proof_file::Trust {
        ca: f.ca.clone(),
        log: f.log_verifier.clone(),
        witnesses: vec![f.witness_key.clone()],
        quorum: 1,
    };
    huren_agent::proof_file::verify(&proof, &trust).unwrap();
    let note = seeds
        .iter()
        .find(|(t, n, _)| *t == "checkpoint" && n == "cosigned-note")
        .map(|(_, _, b)| String::from_utf8(b.clone()).unwrap())
        .unwrap();
    huren_core::checkpoint::open_checkpoint(&note, &f.log_verifier, &f.origin).unwrap();
    let publish = seeds
        .iter()
        .find(|(t, n, _)| *t == "hub_request" && n == "rpc-PublishBatch")
        .map(|(_, _, b)| b.clone())
        .unwrap();
    match huren_hub::grpc::requests::check_encoded("PublishBatch", &publish[1..], 100).unwrap() {
        huren_hub::grpc::requests::Checked::Envelopes(e) => {
            assert_eq!(e.len(), 2);
            for e in e {
                e.verify(&f.ca, f.at).unwrap();
            }
        }
        other => panic!("{other:?}"),
    }
}
