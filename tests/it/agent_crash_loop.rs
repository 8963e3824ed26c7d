//! The agent's crash loop (issue 20, part 4, agent side): the real `huren-agent run` binary
//! is killed with SIGKILL again and again, alternately while it ingests inbox files (some
//! moved to `done/`, others still waiting) and while its outbox publishes (some of the
//! round's results at the hub, others queued), and restarted on the same store and inbox with
//! new files each round. At the end one more run drains everything, and from outside:
//!
//! - every result of every inbox file is at the hub exactly once (History of each patient:
//!   each result once, version 1, none missing; the hub's store holds exactly that many);
//! - the agent's outbox moved each one to `published` once, nothing dead, no file rejected;
//! - the receipts the agent kept are consistent with the hub's log (`huren-agent audit`
//!   re-checks every one of them against the latest checkpoint).
//!
//! The suite runs [`ROUNDS`] rounds; `HUREN_AGENT_CRASH_ROUNDS=50 cargo test --test it
//! agent_crash_loop -- --nocapture` runs a longer one and prints its figures (README,
//! Reliability). `HUREN_CRASH_SEED` replays the random kill delays of a run.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use huren_core::pseudonym::{PatientId, Pseudonym};

use crate::harness::{ChildGuard, TestHub, history_request, init};
use crate::node_daemon::{
    COUNTY, DEADLINE, TERTIARY, agent_config, drop_file, inbox_files, log_verifier_key, oru, ric,
    start_daemon, wait_for, with_log,
};

/// Rounds the suite runs (keep `.ci/run` short); `HUREN_AGENT_CRASH_ROUNDS` overrides.
const ROUNDS: usize = 6;
/// Inbox files dropped before each round, each for a patient of its own.
const FILES_PER_ROUND: usize = 30;
/// Results per file (one ORU^R01 message, one OBR per result).
const RESULTS_PER_FILE: usize = 5;

/// xorshift; the seed is printed so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn done_files(dirs: &crate::node_daemon::AgentDirs) -> usize {
    std::fs::read_dir(dirs.done())
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0)
}

/// Results at the hub for `patients`, as (summary id → versions seen).
async fn at_hub(
    client: &mut huren_proto::hub::hub_client::HubClient<tonic::transport::Channel>,
    patients: &[Pseudonym],
) -> anyhow::Result<BTreeMap<String, Vec<u32>>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for p in patients {
        let mut request = history_request(p, 0);
        request.include_earlier_versions = true;
        let answer = client.history(request).await?.into_inner();
        ensure!(!answer.truncated, "a History answer was truncated");
        for r in answer.results {
            let receipt = r.receipt.context("a result without a receipt")?;
            let versions = out.entry(receipt.summary_id).or_default();
            versions.push(receipt.version);
            for e in r.earlier_versions {
                versions.push(
                    e.receipt
                        .context("an earlier version without a receipt")?
                        .version,
                );
            }
        }
    }
    Ok(out)
}

/// The size of the hub's log now.
async fn log_size(
    client: &mut huren_proto::hub::hub_client::HubClient<tonic::transport::Channel>,
) -> anyhow::Result<u64> {
    let note = client
        .get_checkpoint(huren_proto::hub::GetCheckpointRequest::default())
        .await?
        .into_inner()
        .checkpoint;
    note.lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .context("a checkpoint without a size line")
}

#[tokio::test]
async fn an_agent_killed_mid_inbox_and_mid_outbox_delivers_every_result_exactly_once()
-> anyhow::Result<()> {
    init();
    let rounds = std::env::var("HUREN_AGENT_CRASH_ROUNDS")
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
    println!("agent crash loop: {rounds} rounds, HUREN_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    with_log(&dirs, &log_verifier_key(&hub, false)?)?;
    let key = hub.pseudonym_key();
    let mut client = hub.client(COUNTY).await?;
    let started = Instant::now();
    let mut patients: Vec<Pseudonym> = Vec::new();
    let (mut mid_inbox, mut mid_outbox, mut files_left_at_kills) = (0usize, 0usize, 0usize);
    let mut queued_at_kills = 0usize;

    for round in 0..rounds {
        for f in 0..FILES_PER_ROUND {
            let n = round * FILES_PER_ROUND + f;
            let id = ric(n);
            let p = key.pseudonymise(&PatientId::new("cn-ric", &id)?);
            if !patients.contains(&p) {
                patients.push(p);
            }
            let order = format!("CRASH-{round:03}-{f}");
            drop_file(
                &dirs.inbox,
                &format!("{order}.hl7"),
                oru(&order, &id, RESULTS_PER_FILE).as_bytes(),
            )?;
        }
        let done_before = done_files(&dirs);
        let size_before = log_size(&mut client).await?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_huren-agent"));
        command
            .arg("--config")
            .arg(&dirs.config)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = ChildGuard::new(command.spawn()?, "huren-agent run");
        let deadline = Instant::now() + DEADLINE;
        if round % 2 == 0 {
            // Mid-inbox: as soon as one of this round's files is ingested.
            while done_files(&dirs) == done_before {
                ensure!(
                    Instant::now() < deadline,
                    "round {round}: no file was ingested"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            mid_inbox += 1;
        } else {
            // Mid-outbox: as soon as the hub's log grows (one of this round's results is in).
            while log_size(&mut client).await? == size_before {
                ensure!(
                    Instant::now() < deadline,
                    "round {round}: nothing was published"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            mid_outbox += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
        child.kill()?;
        files_left_at_kills += inbox_files(&dirs.inbox)?;
        let c = huren_agent::store::Store::open(&dirs.store)?.counts();
        queued_at_kills += c.pending;
        println!(
            "round {round}: killed {} after {:.2} s; {} queued, {} published",
            if round % 2 == 0 {
                "mid-inbox"
            } else {
                "mid-outbox"
            },
            (Instant::now() + DEADLINE - deadline).as_secs_f64(),
            c.pending,
            c.published
        );
    }

    // One last run drains the inbox and the outbox.
    let daemon = start_daemon(&dirs).await?;
    wait_for("the inbox and the outbox drained", || {
        Ok(inbox_files(&dirs.inbox)? == 0 && daemon.counts().pending == 0)
    })
    .await?;
    let counts = daemon.counts();
    daemon.shutdown().await?;

    // The kills came while there was work in flight (else this loop proves little).
    ensure!(
        files_left_at_kills + queued_at_kills > 0,
        "no kill caught a file in the inbox or a result in the outbox"
    );
    let files = rounds * FILES_PER_ROUND;
    let expected = files * RESULTS_PER_FILE;
    let seen = at_hub(&mut client, &patients).await?;
    let twice: Vec<_> = seen.iter().filter(|(_, v)| v.as_slice() != [1]).collect();
    ensure!(
        twice.is_empty(),
        "results not exactly once at the hub: {twice:?}"
    );
    for round in 0..rounds {
        for f in 0..FILES_PER_ROUND {
            for k in 0..RESULTS_PER_FILE {
                let order = format!("CRASH-{round:03}-{f}-{k}");
                ensure!(
                    seen.keys().any(|id| id.contains(&order)),
                    "result {order} is missing at the hub"
                );
            }
        }
    }
    ensure!(
        seen.len() == expected,
        "{} results at the hub, {expected} expected",
        seen.len()
    );
    ensure!(
        counts.published == expected && counts.dead == 0,
        "agent outbox: {counts:?}, {expected} published expected"
    );
    ensure!(done_files(&dirs) == files, "not every file reached done/");
    ensure!(
        std::fs::read_dir(dirs.rejected())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "a file was rejected"
    );

    // The receipts the agent kept agree with the hub's log (the hub runs on this test's
    // runtime: wait for the child without blocking it).
    let audit = tokio::process::Command::new(env!("CARGO_BIN_EXE_huren-agent"))
        .arg("--config")
        .arg(&dirs.config)
        .arg("audit")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await?;
    let said = String::from_utf8_lossy(&audit.stdout);
    ensure!(
        audit.status.success() && said.contains("OK: the hub's log is consistent"),
        "audit: {said}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    let rechecked: usize = said
        .lines()
        .find_map(|l| l.strip_prefix("Entries re-checked:"))
        .and_then(|n| n.trim().parse().ok())
        .context("audit printed no count")?;
    ensure!(
        rechecked >= expected,
        "audit re-checked {rechecked} receipts, {expected} expected"
    );
    hub.stop().await?;
    ensure!(hub.stored_summary_count().await? == expected);
    println!(
        "agent crash loop: {rounds} rounds ({mid_inbox} SIGKILLs mid-inbox, {mid_outbox} mid-outbox), \
         {files} files, {expected} results published exactly once (none missing, no duplicate, \
         none dead), {rechecked} receipts re-checked against the log; at the kills {files_left_at_kills} \
         files were still in the inbox and {queued_at_kills} results queued (summed over rounds); \
         {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
