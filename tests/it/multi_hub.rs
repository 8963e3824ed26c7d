//! Several hubs, one log (issue 19, part 3): three `huren-hub` processes on one PostgreSQL
//! database, members publishing to all three at once (the same summary to all three at the
//! same moment, too), one hub killed with SIGKILL half-way. Afterwards, from every hub still
//! up and from one started in the killed one's place:
//!
//! - every acknowledged summary is found, with the receipt it was acknowledged with, once;
//! - no two different summaries were acknowledged at one log index, and a summary sent to
//!   several hubs at once got one receipt;
//! - no two checkpoints of one size differ, whichever hub handed them out, and the log is
//!   consistent with every one of them (proofs asked of every hub, checked against one);
//! - an agent whose hub address leads to one hub, then another (a load balancer), keeps
//!   verifying every receipt against the checkpoints it saw before.
//!
//! Only PostgreSQL can hold one log for several processes (a sled store is one process's),
//! so this test runs on that backend alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::task::JoinSet;

use huren_agent::{Agent, AgentConfig};
use huren_core::checkpoint::{NoteVerifier, open_checkpoint};
use huren_core::merkle::{Hash, verify_consistency};
use huren_core::pseudonym::Pseudonym;
use huren_proto::hub as pb;

use crate::harness::*;
use crate::log::{agent_config_with, verifier};

const PUBLISHERS: [&str; 3] = ["hosp-a", "hosp-b", "hosp-c"];
/// Patients the load publishes for. Every lane of every member moves to the next one after
/// [`PER_PATIENT`] summaries, so lanes share patients (their index entries are written by
/// three hubs at once) while no patient's History can reach the hub's `max_results` (500):
/// at most 9 lanes × 20 results each. With five patients shared round-robin, a machine fast
/// enough to publish 2,500 summaries in the load's time cut the oldest from a History and the
/// check reported them lost.
const PATIENTS: usize = 400;
const PER_PATIENT: usize = 20;
/// The hub's default `max_results`: a History this long may have been cut short.
const MAX_RESULTS: usize = 500;
/// How long members publish; the second hub is killed half-way.
const LOAD: Duration = Duration::from_millis(2400);

/// What the hubs acknowledged.
#[derive(Default)]
struct Acked {
    /// (publisher, summary id) → receipt.
    summaries: BTreeMap<(String, String), pb::Receipt>,
    /// Log index → the summary acknowledged there.
    at_index: BTreeMap<u64, (String, String)>,
    /// Every checkpoint handed out, by size: (root, the hub that handed it out).
    checkpoints: BTreeMap<u64, (Hash, SocketAddr)>,
    /// Problems seen while the load ran (reported at the end).
    problems: Vec<String>,
    /// Publishes refused or failed, by hub: (count, the first error).
    failed: BTreeMap<SocketAddr, (usize, String)>,
    /// Summaries sent to all three hubs at once.
    sent_thrice: usize,
    /// How many of the patients the load reached.
    patients_used: usize,
}

type Shared = Arc<Mutex<Acked>>;

fn lock(a: &Shared) -> std::sync::MutexGuard<'_, Acked> {
    a.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Acked {
    /// Notes an acknowledgement from the hub at `from`.
    fn note(&mut self, from: SocketAddr, answer: &pb::PublishResponse, log_key: &NoteVerifier) {
        let Some(receipt) = &answer.receipt else {
            self.problems
                .push(format!("{from}: an acknowledgement without a receipt"));
            return;
        };
        let key = (receipt.publisher.clone(), receipt.summary_id.clone());
        if let Some(before) = self.summaries.get(&key)
            && before != receipt
        {
            self.problems.push(format!(
                "{key:?} acknowledged twice with different receipts: {before:?} and, from {from}, {receipt:?}"
            ));
        }
        self.summaries.insert(key.clone(), receipt.clone());
        match answer.log_proof.as_ref().map(|p| p.index) {
            None => self
                .problems
                .push(format!("{from}: {key:?} acknowledged without a log proof")),
            Some(index) => {
                if let Some(other) = self.at_index.get(&index)
                    && *other != key
                {
                    self.problems.push(format!(
                        "log index {index} acknowledged for {other:?} and, by {from}, for {key:?}"
                    ));
                }
                self.at_index.insert(index, key);
            }
        }
        if let Some(p) = &answer.log_proof {
            match open_checkpoint(&p.checkpoint, log_key, log_key.name()) {
                Ok(c) => self.checkpoint(from, c.size, c.root),
                Err(e) => self
                    .problems
                    .push(format!("{from}: a checkpoint that does not open: {e}")),
            }
        }
    }

    fn checkpoint(&mut self, from: SocketAddr, size: u64, root: Hash) {
        match self.checkpoints.get(&size) {
            Some((other, by)) if *other != root => self.problems.push(format!(
                "two checkpoints of {size} entries differ: from {by} and from {from}"
            )),
            Some(_) => {}
            None => {
                self.checkpoints.insert(size, (root, from));
            }
        }
    }
}

#[tokio::test]
async fn three_hubs_on_one_database_keep_one_log() -> anyhow::Result<()> {
    Backend::Postgres.scope(three_hubs()).await
}

async fn three_hubs() -> anyhow::Result<()> {
    let hub = TestHub::start_process().await?;
    let mut second = hub.start_sibling().await?;
    let third = hub.start_sibling().await?;
    let hubs = [hub.addr, second.addr, third.addr];
    let log_key = verifier(&hub)?;
    let patients: Vec<Pseudonym> = (0..PATIENTS)
        .map(|i| hub.patient(&format!("E5000000{i}")))
        .collect();
    let acked: Shared = Arc::default();
    let started = Instant::now();

    // Every publisher on every hub at once; every fifth summary goes to all three hubs at the
    // same moment (as an agent retrying through a load balancer would).
    let mut load = JoinSet::new();
    for member in PUBLISHERS {
        let creds = hub.member(member)?;
        let mut clients = Vec::new();
        for addr in hubs {
            clients.push((addr, hub.client_at(addr, member).await?));
        }
        for lane in 0..hubs.len() {
            let (creds, acked, patients, log_key) = (
                creds.clone(),
                acked.clone(),
                patients.clone(),
                log_key.clone(),
            );
            let clients = clients.clone();
            load.spawn(async move {
                for n in 0.. {
                    if started.elapsed() > LOAD {
                        return;
                    }
                    let id = format!("MH-{member}-{lane}-{n}");
                    let which = (n / PER_PATIENT) % PATIENTS;
                    let p = patients[which];
                    {
                        let mut a = lock(&acked);
                        a.patients_used = a.patients_used.max(which + 1);
                    }
                    let signed = match lab_summary(member, &id, p, HGB, hours(n as i64))
                        .and_then(|s| sign(&creds, &s))
                    {
                        Ok(s) => s,
                        Err(e) => {
                            lock(&acked).problems.push(format!("making {id}: {e}"));
                            return;
                        }
                    };
                    let targets: Vec<usize> = if n % 5 == 0 {
                        lock(&acked).sent_thrice += 1;
                        (0..clients.len()).collect()
                    } else {
                        vec![lane]
                    };
                    let mut sends = JoinSet::new();
                    for t in targets {
                        let (addr, mut client) = clients[t].clone();
                        let signed = signed.clone();
                        sends.spawn(async move { (addr, publish(&mut client, signed).await) });
                    }
                    while let Some(sent) = sends.join_next().await {
                        let Ok((addr, answer)) = sent else { continue };
                        let mut a = lock(&acked);
                        match answer {
                            Ok(answer) => a.note(addr, &answer, &log_key),
                            Err(e) => {
                                let f = a.failed.entry(addr).or_insert((0, e.to_string()));
                                f.0 += 1;
                            }
                        }
                    }
                }
            });
        }
    }
    tokio::time::sleep(LOAD / 2).await;
    second.kill()?;
    let killed_at = lock(&acked).summaries.len();
    while load.join_next().await.is_some() {}
    let load_time = started.elapsed();

    // The killed hub's place taken by a new process on the same database.
    let replacement = hub.start_sibling().await?;
    let serving = [hub.addr, third.addr, replacement.addr];

    let (summaries, problems, failed, sent_thrice, patients_used) = {
        let a = lock(&acked);
        (
            a.summaries.clone(),
            a.problems.clone(),
            a.failed.clone(),
            a.sent_thrice,
            a.patients_used,
        )
    };
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    // Only the killed hub may have failed a publish (a duplicate sent to several hubs at once
    // must be acknowledged by each, with one receipt).
    for (addr, (n, first)) in &failed {
        let tail = if *addr == third.addr {
            third.log_tail()
        } else {
            String::new()
        };
        ensure!(
            *addr == second.addr,
            "{n} publishes failed at {addr}, which was not killed; the first: {first}\n{tail}"
        );
    }
    let failed: usize = failed.values().map(|f| f.0).sum();
    ensure!(
        killed_at > 0 && summaries.len() > killed_at,
        "the load did not run on both sides of the kill: {killed_at} before, {} in all",
        summaries.len()
    );

    // Every acknowledged summary, from every hub, once, with its receipt.
    for addr in serving {
        let mut reader = hub.client_at(addr, "hosp-c").await?;
        let mut found: BTreeMap<(String, String), pb::Receipt> = BTreeMap::new();
        for p in &patients[..patients_used] {
            let results = reader
                .history(history_request(p, 0))
                .await
                .with_context(|| format!("History at {addr}"))?
                .into_inner()
                .results;
            ensure!(
                results.len() < MAX_RESULTS,
                "{addr}: a patient's History holds {} results, the hub's limit: it may be cut \
                 short, so this check cannot tell a lost summary from one left out (more \
                 patients or fewer results each, PATIENTS and PER_PATIENT)",
                results.len()
            );
            for r in results {
                let receipt = r.receipt.context("a result without its receipt")?;
                let key = (receipt.publisher.clone(), receipt.summary_id.clone());
                ensure!(
                    found.insert(key.clone(), receipt).is_none(),
                    "{addr}: {key:?} is in the history twice"
                );
            }
        }
        for (key, receipt) in &summaries {
            ensure!(
                found.get(key) == Some(receipt),
                "{addr}: acknowledged summary {key:?} is lost or changed: {:?}",
                found.get(key)
            );
        }
    }

    // One log: the checkpoints every hub hands out now join the ones handed out under load;
    // the newest must extend every one of them, by proofs asked of each hub in turn.
    for addr in serving {
        let note = hub
            .client_at(addr, "hosp-c")
            .await?
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await?
            .into_inner()
            .checkpoint;
        let c = open_checkpoint(&note, &log_key, log_key.name())?;
        lock(&acked).checkpoint(addr, c.size, c.root);
    }
    let checkpoints = {
        let a = lock(&acked);
        ensure!(a.problems.is_empty(), "{}", a.problems.join("\n"));
        a.checkpoints.clone()
    };
    let (&newest, &(newest_root, _)) = checkpoints
        .last_key_value()
        .context("no checkpoint was handed out")?;
    let mut provers = Vec::new();
    for addr in serving {
        provers.push(hub.client_at(addr, "hosp-c").await?);
    }
    for (n, (size, (root, from))) in checkpoints.iter().enumerate() {
        if *size == newest {
            continue;
        }
        let prover = &mut provers[n % serving.len()];
        let proof: Vec<Hash> = prover
            .get_consistency_proof(pb::ConsistencyProofRequest {
                old_size: *size,
                new_size: newest,
            })
            .await?
            .into_inner()
            .proof
            .iter()
            .map(|h| Hash::try_from(h.as_slice()))
            .collect::<Result<_, _>>()?;
        verify_consistency(*size, newest, root, &newest_root, &proof).map_err(|e| {
            anyhow::anyhow!("the checkpoint of {size} entries from {from} is not a prefix of the log of {newest}: {e}")
        })?;
    }

    // An agent behind a load balancer: the same member and log state, a different hub each
    // time; each receipt is verified against the checkpoints the agent saw on the others.
    let state = hub.root().join("agent-behind-a-balancer");
    let config_path = agent_config_with(&hub, "hosp-a", &state, "")?;
    let config = std::fs::read_to_string(&config_path)?;
    let mut verified = 0;
    for (round, addr) in serving.iter().cycle().take(6).enumerate() {
        let text = config.replace(&hub.url(), &format!("https://{addr}"));
        std::fs::write(&config_path, text)?;
        let agent = Agent::connect(AgentConfig::load(&config_path)?).await?;
        let s = lab_summary(
            "hosp-a",
            &format!("MH-LB-{round}"),
            patients[round % PATIENTS],
            HGB,
            hours(round as i64),
        )?;
        let signed = agent.sign(&s)?;
        agent
            .publish(&s, signed)
            .await
            .with_context(|| format!("publishing through {addr}, round {round}"))?;
        verified += 1;
    }

    println!(
        "several hubs: {} summaries acknowledged by 3 hubs in {:.1} s ({} sent to all three at once, {} publishes failed, {} before the kill), {} checkpoints, all consistent; an agent moved between hubs {verified} times",
        summaries.len(),
        load_time.as_secs_f64(),
        sent_thrice,
        failed,
        killed_at,
        checkpoints.len(),
    );
    drop(replacement);
    drop(third);
    Ok(())
}
