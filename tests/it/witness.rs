//! Witnesses (c2sp.org/tlog-witness, tlog-cosignature): `huren_hub::witness` served on a real
//! port and spoken to as a third party would (raw HTTP/1.1), and the whole loop with a hub that
//! asks witnesses to cosign and agents that require a quorum of cosignatures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use huren_agent::{Agent, AgentConfig, AgentError};
use huren_core::checkpoint::{Checkpoint, NoteSigner, sign_checkpoint};
use huren_core::cosignature::{AddCheckpoint, CosignerKey, add_signature_lines, cosigned_by};
use huren_core::merkle::{self, Hash, MemoryTree};
use huren_hub::witness::{Witness, WitnessConfig, WitnessedLog};

use crate::harness::{TestHub, hours, init, lab_summary};
use crate::log::{agent_config_with, verifier};

/// A witness served in this process on a free port, with its key and state in `dir`.
struct TestWitness {
    config: WitnessConfig,
    addr: std::net::SocketAddr,
    key: CosignerKey,
    stop: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestWitness {
    async fn start(dir: &Path, name: &str, log_vkeys: &[String]) -> anyhow::Result<TestWitness> {
        let config = WitnessConfig {
            listen: "127.0.0.1:0".parse()?,
            name: name.to_owned(),
            key: dir.join(format!("{name}.key").replace('/', "_")),
            state: dir.join(format!("{name}-state").replace('/', "_")),
            logs: log_vkeys
                .iter()
                .map(|v| WitnessedLog {
                    verifier_key: v.clone(),
                })
                .collect(),
        };
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let mut w = TestWitness {
            addr: listener.local_addr()?,
            key: Witness::open(&config)?.verifier_key(),
            config,
            stop: None,
        };
        w.serve(listener)?;
        Ok(w)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let witness = Arc::new(Witness::open(&self.config)?);
        let (tx, rx) = oneshot::channel();
        let join = tokio::spawn(huren_hub::witness::serve(witness, listener, async {
            let _ = rx.await;
        }));
        self.stop = Some((tx, join));
        Ok(())
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some((tx, join)) = self.stop.take() {
            let _ = tx.send(());
            join.await?;
        }
        Ok(())
    }

    /// Starts it again on the same port, from its state on disk.
    async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        self.serve(listener)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn evidence(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.config.state.join("evidence"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

/// One raw HTTP/1.1 exchange: (status, content type, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of head")?;
    let status = head
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse::<u16>()?;
    let kind = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    Ok((status, kind, body.to_owned()))
}

/// A log of its own (a key and a tree), to speak to a witness without a hub.
struct Log {
    signer: NoteSigner,
    tree: MemoryTree,
}

impl Log {
    fn new(origin: &str, seed: u8, leaves: &[&str]) -> Log {
        let mut tree = MemoryTree::new();
        for l in leaves {
            tree.push(l.as_bytes());
        }
        Log {
            signer: NoteSigner::new(origin, ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
                .unwrap_or_else(|e| panic!("{e}")),
            tree,
        }
    }

    fn checkpoint(&self, size: u64) -> anyhow::Result<String> {
        let root = merkle::root(size, &self.tree).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(sign_checkpoint(
            &Checkpoint {
                origin: self.signer.name().to_owned(),
                size,
                root,
            },
            &self.signer,
        )?)
    }

    fn proof(&self, old: u64, new: u64) -> anyhow::Result<Vec<Hash>> {
        merkle::consistency_proof(old, new, &self.tree).map_err(|e| anyhow::anyhow!("{e:?}"))
    }

    fn add(&self, old: u64, new: u64) -> anyhow::Result<String> {
        Ok(AddCheckpoint {
            old_size: old,
            proof: self.proof(old, new)?,
            checkpoint: self.checkpoint(new)?,
        }
        .to_body())
    }
}

fn origin_hash(origin: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(origin.as_bytes()))
}

#[tokio::test]
async fn a_witness_cosigns_only_consistent_extensions_and_keeps_its_state() -> anyhow::Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    const ORIGIN: &str = "huren.example/alliance-log";
    let log = Log::new(ORIGIN, 7, &["a", "b", "c", "d", "e", "f", "g"]);
    let mut w = TestWitness::start(
        dir.path(),
        "witness.example/w1",
        &[log.signer.verifier_key()],
    )
    .await?;
    let keys = [w.key.clone()];

    // The first checkpoint, from nothing: cosigned; the line verifies under the witness key.
    let (status, _, line) = http(w.addr, "POST", "/add-checkpoint", &log.add(0, 3)?).await?;
    ensure!(status == 200, "{status}: {line}");
    let cosigned = add_signature_lines(&log.checkpoint(3)?, &line)?;
    ensure!(cosigned_by(&cosigned, &keys)?.len() == 1);

    // A client that does not know where the witness is learns it: 409 with the size.
    let (status, kind, body) = http(w.addr, "POST", "/add-checkpoint", &log.add(0, 5)?).await?;
    ensure!(status == 409 && body == "3\n", "{status}: {body}");
    ensure!(kind == "text/x.tlog.size", "{kind}");
    // An extension with its consistency proof: cosigned.
    let (status, _, body) = http(w.addr, "POST", "/add-checkpoint", &log.add(3, 5)?).await?;
    ensure!(status == 200, "{status}: {body}");

    // A fork: another history of the same log (same key) is refused with 422, kept as
    // evidence, and changes nothing.
    let fork = Log::new(ORIGIN, 7, &["a", "b", "c", "d", "X", "f", "g"]);
    let (status, _, body) = http(w.addr, "POST", "/add-checkpoint", &fork.add(5, 7)?).await?;
    ensure!(status == 422, "{status}: {body}");
    ensure!(body.contains("not an extension"), "{body}");
    let same_size = AddCheckpoint {
        old_size: 5,
        proof: vec![],
        checkpoint: fork.checkpoint(5)?,
    };
    let (status, _, body) = http(w.addr, "POST", "/add-checkpoint", &same_size.to_body()).await?;
    ensure!(status == 422, "{status}: {body}");
    ensure!(w.evidence().len() == 2, "{:?}", w.evidence());
    let (status, _, body) = http(w.addr, "POST", "/add-checkpoint", &log.add(0, 7)?).await?;
    ensure!(status == 409 && body == "5\n", "{status}: {body}");

    // What is not the configured log's: an unknown origin is 404; the right origin signed by
    // another key is 403; a bad request is 400.
    let stranger = Log::new("other.example/log", 8, &["a"]);
    let (status, _, _) = http(w.addr, "POST", "/add-checkpoint", &stranger.add(0, 1)?).await?;
    ensure!(status == 404, "{status}");
    let impostor = Log::new(ORIGIN, 9, &["a", "b", "c", "d", "e", "f", "g"]);
    let (status, _, body) = http(w.addr, "POST", "/add-checkpoint", &impostor.add(5, 7)?).await?;
    ensure!(status == 403, "{status}: {body}");
    let backwards = AddCheckpoint {
        old_size: 7,
        proof: vec![],
        checkpoint: log.checkpoint(5)?,
    };
    for bad in [backwards.to_body(), "old 5\n".into(), "hello".into()] {
        let (status, _, body) = http(w.addr, "POST", "/add-checkpoint", &bad).await?;
        ensure!(status == 400, "{bad:?}: {status}: {body}");
    }
    let (status, _, _) = http(w.addr, "GET", "/add-checkpoint", "").await?;
    ensure!(status == 405, "{status}");

    // The monitoring path serves the last cosigned checkpoint with both signatures.
    let path = format!("/{}/checkpoint", origin_hash(ORIGIN));
    let (status, _, note) = http(w.addr, "GET", &path, "").await?;
    ensure!(status == 200, "{status}: {note}");
    ensure!(note.starts_with(&log.checkpoint(5)?), "{note}");
    ensure!(cosigned_by(&note, &keys)?.len() == 1);
    let (status, _, _) = http(
        w.addr,
        "GET",
        &format!("/{}/checkpoint", origin_hash("x")),
        "",
    )
    .await?;
    ensure!(status == 404, "{status}");

    // Restarted, it remembers: it will not be rolled back to an older size.
    w.restart().await?;
    let (status, _, body) = http(w.addr, "POST", "/add-checkpoint", &log.add(0, 3)?).await?;
    ensure!(status == 409 && body == "5\n", "{status}: {body}");
    let (status, _, body) = http(w.addr, "POST", "/add-checkpoint", &log.add(5, 7)?).await?;
    ensure!(status == 200, "{status}: {body}");
    w.stop().await?;
    Ok(())
}

/// A hub's `[log]` (its key at `log_key`) and `[[witness]]` entries.
fn witness_config(witnesses: &[&TestWitness], log_key: &Path) -> String {
    let mut out = format!("[log]\nkey = {log_key:?}\nwitness_timeout_ms = 2000\n");
    for w in witnesses {
        out.push_str(&format!(
            "\n[[witness]]\nurl = \"{}\"\nverifier_key = \"{}\"\n",
            w.url(),
            w.key
        ));
    }
    out
}

/// An agent that requires `quorum` of `witnesses`' cosignatures.
async fn agent(
    hub: &TestHub,
    id: &str,
    witnesses: &[&TestWitness],
    quorum: usize,
) -> anyhow::Result<Agent> {
    let keys: Vec<String> = witnesses.iter().map(|w| w.key.to_string()).collect();
    let path = agent_config_with(
        hub,
        id,
        &hub.root().join(format!("log-{id}")),
        &format!("witnesses = {keys:?}\nwitness_quorum = {quorum}\n"),
    )?;
    Ok(Agent::connect(AgentConfig::load(&path)?).await?)
}

async fn publish(agent: &Agent, id: &str, n: i64) -> Result<(), AgentError> {
    let patient = agent
        .pseudonymise("passport", "E20000001")
        .map_err(|e| AgentError::Setup(e.to_string()))?;
    let s = lab_summary(
        agent.institution().as_str(),
        id,
        patient,
        crate::harness::HGB,
        hours(n),
    )
    .map_err(|e| AgentError::Setup(e.to_string()))?;
    let envelope = agent.sign(&s)?;
    agent.publish(&s, envelope).await.map(|_| ())
}

on_each_store! {
#[tokio::test]
async fn agents_accept_checkpoints_only_with_a_quorum_of_witnesses() -> anyhow::Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    // The hub's log key exists before the hub starts, so the witnesses can be configured.
    let hub_dir = tempfile::tempdir()?;
    let log_key = hub_dir.path().join("log.key");
    let log = huren_hub::log::LogSigner::load_or_create(&log_key, "huren.example/alliance-log")?;
    let vkeys = [log.verifier_key()];
    let mut w1 = TestWitness::start(dir.path(), "w.example/1", &vkeys).await?;
    let mut w2 = TestWitness::start(dir.path(), "w.example/2", &vkeys).await?;
    let mut w3 = TestWitness::start(dir.path(), "w.example/3", &vkeys).await?;
    let hub = TestHub::start_with_config(&witness_config(&[&w1, &w2, &w3], &log_key)).await?;
    ensure!(verifier(&hub)?.to_string() == vkeys[0]);
    let a = agent(&hub, "hosp-a", &[&w1, &w2, &w3], 2).await?;

    // All three up: receipts and answers come with checkpoints the agent accepts.
    publish(&a, "W-1", 1).await?;
    let checkpoint = a.checkpoint().await?;
    ensure!(
        checkpoint.lines().filter(|l| l.starts_with('—')).count() == 4,
        "{checkpoint}"
    );
    // One witness down: two of three still make the quorum.
    w3.stop().await?;
    publish(&a, "W-2", 2).await?;
    // Two down: a checkpoint with one cosignature is refused, naming the shortfall.
    w2.stop().await?;
    let err = publish(&a, "W-3", 3)
        .await
        .expect_err("a checkpoint with one of three cosignatures was accepted");
    let text = err.to_string();
    ensure!(
        text.contains("cosigned by 1 of the configured witnesses (w.example/1)")
            && text.contains("2 are required"),
        "{text}"
    );
    // Back up: the next checkpoint makes the quorum again (the witnesses catch up from the
    // size they last cosigned, with a consistency proof).
    w2.restart().await?;
    w3.restart().await?;
    publish(&a, "W-4", 4).await?;
    ensure!(w1.evidence().is_empty() && w2.evidence().is_empty());
    w1.stop().await?;
    w2.stop().await?;
    w3.stop().await?;
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn a_fork_shown_to_another_member_is_refused_by_the_witness_and_caught() -> anyhow::Result<()>
{
    init();
    let dir = tempfile::tempdir()?;
    let key_dir = tempfile::tempdir()?;
    let log_key = key_dir.path().join("log.key");
    let log = huren_hub::log::LogSigner::load_or_create(&log_key, "huren.example/alliance-log")?;
    let w = TestWitness::start(dir.path(), "w.example/commission", &[log.verifier_key()]).await?;
    // Two hubs with the same log key and different stores: one log key, two histories, as a
    // hub operator who shows each member its own view would run it.
    let config = witness_config(&[&w], &log_key);
    let honest = TestHub::start_with_config(&config).await?;
    let forked = TestHub::start_with_config(&config).await?;
    let a = agent(&honest, "hosp-a", &[&w], 1).await?;
    let b = agent(&forked, "hosp-b", &[&w], 1).await?;

    publish(&a, "F-1", 1).await?;
    // The forked hub's checkpoints are refused by the witness (422), so they carry no
    // cosignature, and the member shown them refuses them.
    let err = publish(&b, "F-2", 2)
        .await
        .expect_err("a forked checkpoint without cosignatures was accepted");
    ensure!(
        err.to_string()
            .contains("cosigned by 0 of the configured witnesses (none), and 1 are required"),
        "{err}"
    );
    ensure!(
        !w.evidence().is_empty(),
        "the witness kept no evidence of the fork"
    );
    // The honest member goes on.
    publish(&a, "F-3", 3).await?;
    Ok(())
}
}
