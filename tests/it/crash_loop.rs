//! The crash loop (issue 20, part 4): the real `huren-hub` process under concurrent publish,
//! query and decide load is killed with SIGKILL at a random moment, checked offline
//! (`huren-hub --check`), restarted on the same store, and checked from outside:
//!
//! - every acknowledged summary is there, with the receipt it was acknowledged with;
//! - every acknowledged decision is there (recording it again says "already recorded");
//! - every answered query has its access record (the administrator's access report);
//! - the log is consistent with every checkpoint handed out before, in any round.
//!
//! The suite runs [`ROUNDS`] rounds; `HUREN_CRASH_ROUNDS=200 cargo test --test it crash_loop --
//! --nocapture` runs the long one and prints its figures (README, Reliability).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::task::JoinSet;

use huren_core::checkpoint::{Checkpoint, open_checkpoint};
use huren_core::merkle::{Hash, verify_consistency};
use huren_core::pseudonym::Pseudonym;
use huren_proto::hub as pb;

use crate::harness::*;
use crate::log::verifier;

/// Rounds the suite runs (keep `.ci/run` short); `HUREN_CRASH_ROUNDS` overrides.
const ROUNDS: usize = 10;
const PATIENTS: usize = 4;

/// A small xorshift generator: the seed is printed, so a failing round can be replayed with
/// `HUREN_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the hub acknowledged, across all rounds.
#[derive(Default)]
struct Acked {
    /// (publisher, summary id) → receipt.
    summaries: BTreeMap<(String, String), pb::Receipt>,
    /// Decision ids acknowledged, with the result they are about.
    decisions: BTreeMap<String, (String, String, u32)>,
    /// Answered FindPrior calls by hosp-c, per patient.
    answered: BTreeMap<usize, usize>,
    /// Every checkpoint handed out: (size, root).
    checkpoints: BTreeSet<(u64, Hash)>,
}

type Shared = Arc<Mutex<Acked>>;

fn lock(a: &Shared) -> std::sync::MutexGuard<'_, Acked> {
    a.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

on_each_store! {
#[tokio::test]
async fn the_hub_survives_a_crash_loop_under_load() -> anyhow::Result<()> {
    let rounds = std::env::var("HUREN_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    let seed = std::env::var("HUREN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("crash loop: {rounds} rounds, HUREN_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut hub = TestHub::start_process().await?;
    let log_key = verifier(&hub)?;
    // Patients of their own each round, so no patient's History outgrows `max_results` however
    // many rounds run; every check reads every round's patients.
    let mut all_patients: Vec<Pseudonym> = Vec::new();
    let acked: Shared = Arc::default();
    let started = Instant::now();
    let mut check_time = Duration::ZERO;

    for round in 0..rounds {
        let first = all_patients.len();
        all_patients
            .extend((0..PATIENTS).map(|i| hub.patient(&format!("E{:07}{i}", 4_000_000 + round))));
        let patients = all_patients[first..].to_vec();
        // Load: two publishers, one asker that decides on what it was shown.
        let mut load = JoinSet::new();
        for member in ["hosp-a", "hosp-b"] {
            let (creds, mut client) = (hub.member(member)?, hub.client(member).await?);
            let (acked, patients, log_key) = (acked.clone(), patients.clone(), log_key.clone());
            load.spawn(async move {
                for n in 0.. {
                    let id = format!("CL-{round}-{member}-{n}");
                    let p = patients[n % PATIENTS];
                    let Ok(summary) = lab_summary(member, &id, p, HGB, hours(n as i64)) else {
                        return;
                    };
                    let Ok(signed) = sign(&creds, &summary) else {
                        return;
                    };
                    match publish(&mut client, signed).await {
                        Ok(r) => {
                            let mut a = lock(&acked);
                            if let Some(p) = &r.log_proof
                                && let Ok(c) =
                                    open_checkpoint(&p.checkpoint, &log_key, log_key.name())
                            {
                                a.checkpoints.insert((c.size, c.root));
                            }
                            if let Some(receipt) = r.receipt {
                                a.summaries.insert(
                                    (receipt.publisher.clone(), receipt.summary_id.clone()),
                                    receipt,
                                );
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        {
            let mut client = hub.client("hosp-c").await?;
            let (acked, patients, log_key) = (acked.clone(), patients.clone(), log_key.clone());
            load.spawn(async move {
                for n in 0.. {
                    let i = n % PATIENTS;
                    let mut request = prior_request(&patients[i], &[(LOINC, HGB)]);
                    request.with_proofs = true;
                    let Ok(answer) = client.find_prior(request).await else {
                        return;
                    };
                    let answer = answer.into_inner();
                    {
                        let mut a = lock(&acked);
                        *a.answered.entry(first + i).or_default() += 1;
                        for r in &answer.results {
                            if let Some(p) = &r.log_proof
                                && let Ok(c) =
                                    open_checkpoint(&p.checkpoint, &log_key, log_key.name())
                            {
                                a.checkpoints.insert((c.size, c.root));
                            }
                        }
                    }
                    // Decide on the first result shown (a re-test, which needs no verdict).
                    let Some(receipt) = answer.results.first().and_then(|r| r.receipt.clone())
                    else {
                        continue;
                    };
                    let decision_id = format!("CL-D-{round}-{n}");
                    let decided = client
                        .record_decision(pb::RecordDecisionRequest {
                            decision_id: decision_id.clone(),
                            publisher: receipt.publisher.clone(),
                            summary_id: receipt.summary_id.clone(),
                            version: receipt.version,
                            decision: pb::DecisionKind::Retested as i32,
                            reason: pb::RetestReason::ConditionChanged as i32,
                            note: String::new(),
                        })
                        .await;
                    match decided {
                        Ok(_) => {
                            lock(&acked).decisions.insert(
                                decision_id,
                                (receipt.publisher, receipt.summary_id, receipt.version),
                            );
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        // Crash at a random moment.
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
        hub.stop().await?;
        while load.join_next().await.is_some() {}

        let checking = Instant::now();
        // Offline: every leaf against the stored tree, every index against the log (sled;
        // PostgreSQL recovers its own files, and the checks below read it from outside).
        if hub.backend == Backend::Sled {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_huren-hub"))
                .arg("--config")
                .arg(&hub.config_path)
                .arg("--check")
                .env("RUST_LOG", "warn")
                .output()?;
            ensure!(
                out.status.success(),
                "round {round} (seed {seed}): huren-hub --check found problems:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        hub.restart().await?;
        check(&hub, &acked, &all_patients, &log_key)
            .await
            .with_context(|| format!("round {round} (seed {seed})"))?;
        check_time += checking.elapsed();
    }
    let a = lock(&acked);
    println!(
        "crash loop: {rounds} kills in {:.1} s ({:.1} s checking): {} summaries, {} decisions and {} answered queries acknowledged, {} checkpoints; none lost",
        started.elapsed().as_secs_f64(),
        check_time.as_secs_f64(),
        a.summaries.len(),
        a.decisions.len(),
        a.answered.values().sum::<usize>(),
        a.checkpoints.len(),
    );
    ensure!(
        !a.summaries.is_empty() && a.answered.values().sum::<usize>() > 0,
        "the load did nothing"
    );
    Ok(())
}
}

/// Everything acknowledged so far is there, and the log extends every checkpoint seen.
async fn check(
    hub: &TestHub,
    acked: &Shared,
    patients: &[Pseudonym],
    log_key: &huren_core::checkpoint::NoteVerifier,
) -> anyhow::Result<()> {
    let (summaries, decisions, answered, checkpoints) = {
        let a = lock(acked);
        (
            a.summaries.clone(),
            a.decisions.clone(),
            a.answered.clone(),
            a.checkpoints.clone(),
        )
    };
    // Summaries, with the receipts they were acknowledged with.
    let mut reader = hub.client("hosp-c").await?;
    let mut found = BTreeMap::new();
    for p in patients {
        let answer = reader.history(history_request(p, 0)).await?.into_inner();
        ensure!(!answer.truncated, "a History answer was truncated");
        for r in answer.results {
            let receipt = r.receipt.context("a result without its receipt")?;
            found.insert(
                (receipt.publisher.clone(), receipt.summary_id.clone()),
                receipt,
            );
        }
    }
    for (key, receipt) in &summaries {
        ensure!(
            found.get(key) == Some(receipt),
            "acknowledged summary {key:?} is lost or changed: {:?}",
            found.get(key)
        );
    }
    // Decisions: recording one again finds it.
    for (id, (publisher, summary_id, version)) in &decisions {
        let again = reader
            .record_decision(pb::RecordDecisionRequest {
                decision_id: id.clone(),
                publisher: publisher.clone(),
                summary_id: summary_id.clone(),
                version: *version,
                decision: pb::DecisionKind::Retested as i32,
                reason: pb::RetestReason::ConditionChanged as i32,
                note: String::new(),
            })
            .await?
            .into_inner();
        ensure!(again.already_recorded, "acknowledged decision {id} is lost");
    }
    // Accesses: at least one FindPrior access of hosp-c per answered query.
    for (i, n) in &answered {
        let logged = hub
            .access_entries(ADMIN, &patients[*i])
            .await?
            .iter()
            .filter(|e| e.caller == "hosp-c" && e.method == "FindPrior")
            .count();
        ensure!(
            logged >= *n,
            "patient {i}: {n} queries answered, {logged} accesses logged"
        );
    }
    // The log extends every checkpoint handed out, in this round or before.
    let mut client = hub.client("hosp-c").await?;
    let note = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner()
        .checkpoint;
    let now: Checkpoint = open_checkpoint(&note, log_key, log_key.name())?;
    for (size, root) in &checkpoints {
        ensure!(
            *size <= now.size,
            "a checkpoint of {size} entries was handed out; the log now has {}",
            now.size
        );
        let proof: Vec<Hash> = client
            .get_consistency_proof(pb::ConsistencyProofRequest {
                old_size: *size,
                new_size: now.size,
            })
            .await?
            .into_inner()
            .proof
            .iter()
            .map(|h| Hash::try_from(h.as_slice()))
            .collect::<Result<_, _>>()?;
        verify_consistency(*size, now.size, root, &now.root, &proof).map_err(|e| {
            anyhow::anyhow!("the checkpoint of {size} entries is not a prefix: {e}")
        })?;
    }
    Ok(())
}
