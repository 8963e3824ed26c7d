//! `huren-bench`: how fast Huren is, set against what this machine allows.
//!
//! One run starts a real hub in this process (mutual TLS, sled store in a temporary folder, or
//! a PostgreSQL database with `--store`), seeds it with N signed summaries straight through the
//! store (with a progress bar), and measures, each beside its baseline:
//!
//! | figure | baseline |
//! |---|---|
//! | publish, unary, durable receipt | raw echo: the gRPC health `Check` over the same mTLS channels at the same concurrency |
//! | FindPrior and CheckOrder, throughput, p50, p99 | raw echo |
//! | FindPrior, throughput | sized echo: a no-op RPC answering as many bytes as FindPrior's mean answer (see [`echo`]) |
//! | publish per second | Ed25519 verifications per second on one core (x2 for two cores) |
//! | disk bytes per stored summary | the summary's own bytes (body + signature) |
//!
//! Client and hub share the machine, as they do on a two-core test box. Each measurement
//! also prints the CPU time of the whole process per call and how busy the hub's own threads
//! were (`busy: huren-intake 76%`: a fraction of one core; those under 5% are left out). Those
//! threads do one batch at a time, so one near 100% is what limits the rate.
//!
//! Run: `cargo run --release -p huren-bench -- --summaries 1000000`
//!
//! `--store sled,postgres` runs the whole table once per backend, in that order, in one
//! process, and ends with the two side by side, PostgreSQL's as a share of sled's.
//! `postgres` is a throwaway cluster started for each size's run (`fsync` on, like a real
//! server; see `huren_hub::store::postgres::cluster`); `postgres://user:password@host:port/db`
//! names an existing empty database instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use huren_certs_dev::DevPki;
use huren_core::identity::InstitutionId;
use huren_core::pseudonym::Pseudonym;
use huren_core::signing::{SignedEnvelope, SummarySigner, VerifiedSummary, sha256};
use huren_core::summary::{
    AbnormalFlag, Category, Item, LabResult, Outcome, ReportRef, Status, Summary, SummaryId,
    UnixMillis,
};
use huren_proto::hub as pb;
use huren_proto::hub::hub_client::HubClient;

mod agent_ingest;
mod agent_paths;
mod echo;
mod soak;

/// The allocator the huren-hub binary runs with, so the figures are the hub's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure Huren against this machine's limits.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// Summaries to seed before measuring queries; several sizes (comma-separated, e.g.
    /// 100000,1000000,10000000) measure each on a store of its own, one after the other, and
    /// end with a table of every size.
    #[arg(long = "summaries", value_delimiter = ',', default_value = "1000000")]
    sizes: Vec<u64>,
    /// The size this run seeds (one of `sizes`).
    #[arg(skip)]
    summaries: u64,
    /// Results per patient in the seeded data.
    #[arg(long, default_value_t = 20)]
    per_patient: u64,
    /// Requests in flight during each measurement.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// TLS connections the clients spread requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Summaries per PublishBatch call.
    #[arg(long, default_value_t = 250)]
    batch: usize,
    /// PublishBatch calls in flight.
    #[arg(long, default_value_t = 4)]
    batches_in_flight: usize,
    /// Measure only these (comma-separated: publish, publish-batch, find-prior, check-order,
    /// latency, agent: the CDS Hooks answer and the web timeline page; ingest: the agent's
    /// HL7 ingest on one thread, run only when named, without a hub); the echo baseline
    /// always runs with the hub's paths. For profiling one path at a time.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Commit durability of the hub's store: flush (default) or fsync (the hub's
    /// `durability` setting).
    #[arg(long, default_value = "flush", value_parser = ["flush", "fsync"])]
    durability: String,
    /// The backends to measure, one run each: sled, postgres (a throwaway cluster) or
    /// postgres://… (an existing empty database).
    #[arg(long, value_delimiter = ',', default_value = "sled")]
    store: Vec<String>,
    /// sled's page cache in MiB (the hub's `store_cache_mb`; default its default, 1024).
    #[arg(long)]
    store_cache_mb: Option<u64>,
    /// Memory for the log's Merkle nodes in MiB (the hub's `[log] node_cache_mb`; default its
    /// default, 128).
    #[arg(long)]
    node_cache_mb: Option<u64>,
    /// Messages per file for `--only ingest` (the agent's HL7 ingest; only run when asked).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    ingest_messages: Vec<usize>,
    /// Connections the hub keeps to PostgreSQL (its `store_connections`); default four per
    /// core of this machine, where the throwaway cluster runs too.
    #[arg(long)]
    store_connections: Option<usize>,
    /// Measure the queries right after the publish measurements, without first letting the
    /// store write out what those left behind (a flush, and on the throwaway PostgreSQL
    /// cluster a CHECKPOINT): for comparison with the settled figures.
    #[arg(long)]
    no_settle: bool,
    /// Instead of the table: a soak run of this many seconds at a share of the peak publish
    /// and FindPrior rates, on the first --store, sampled every 10 s into --soak-csv.
    #[arg(long)]
    soak: Option<u64>,
    /// Where the soak run writes its samples.
    #[arg(long, default_value = "soak.csv")]
    soak_csv: std::path::PathBuf,
    /// The soak's publish load, as a share of the peak unary publish rate.
    #[arg(long, default_value_t = 0.5)]
    soak_publish_share: f64,
    /// The soak's FindPrior load, as a share of the peak FindPrior rate.
    #[arg(long, default_value_t = 0.5)]
    soak_query_share: f64,
}

impl Args {
    /// The PostgreSQL connections the hub keeps: as asked, or four per core.
    fn pg_connections(&self) -> usize {
        self.store_connections
            .unwrap_or_else(|| 4 * std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    fn measures(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

const PUBLISHER: &str = "shx-prov-people";
const ASKER: &str = "lantian-county";
const LOINC: &str = "http://loinc.org";
/// Catalogue items of hub/policy.example.toml the seeded results use, with lantian-county's
/// local codes for the order check.
const ITEMS: [(&str, &str); 8] = [
    ("718-7", "XCG-HB"),
    ("6690-2", "XCG-WBC"),
    ("777-3", "XCG-PLT"),
    ("1742-6", "SH-ALT"),
    ("1920-8", "SH-AST"),
    ("2160-0", "SH-CR"),
    ("3094-0", "SH-BUN"),
    ("2345-7", "SH-GLU"),
];

/// Who the bench's queries say asks (a staff id, as the web app sends).
const BENCH_REQUESTER: &str = "staff:D0423";

/// The FindPrior the bench asks: two items for one patient, as of now.
fn prior_request(
    p: &Pseudonym,
    certificates_once: bool,
    with_proofs: bool,
) -> pb::FindPriorRequest {
    prior_request_for(p, 2, certificates_once, with_proofs)
}

/// A FindPrior for the first `items` of [`ITEMS`].
fn prior_request_for(
    p: &Pseudonym,
    items: usize,
    certificates_once: bool,
    with_proofs: bool,
) -> pb::FindPriorRequest {
    pb::FindPriorRequest {
        patient_pseudonym: p.as_bytes().to_vec(),
        items: ITEMS[..items.min(ITEMS.len())]
            .iter()
            .map(|(code, _)| pb::ItemCode {
                system: LOINC.into(),
                code: (*code).into(),
            })
            .collect(),
        as_of_ms: 0,
        lookback_seconds: 0,
        purpose: pb::Purpose::Treatment as i32,
        // As a clinician's query from the web app names its asker.
        requester: BENCH_REQUESTER.into(),
        with_proofs,
        certificates_once,
        // As agents ask: the checkpoint once, each path packed.
        compact_proofs: with_proofs,
    }
}

/// Throughput and latency of one measurement.
struct Load {
    ok: u64,
    errors: u64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time of the whole process (hub and clients) per successful call: steadier than
    /// throughput on a machine whose neighbours take CPU.
    cpu_per_call: Option<Duration>,
    /// How busy the hub's own threads (`huren-intake`, `huren-journal`, ...) were, each a
    /// fraction of one core: a one-at-a-time stage near 100% is what limits the rate.
    stages: Vec<(String, f64)>,
    /// The first failed call's error, to name what went wrong.
    first_error: Option<String>,
}

impl Load {
    /// CPU µs of the process per call, or per item when a call carries several.
    fn cpu_us(&self, per_call_items: u64) -> Option<f64> {
        self.cpu_per_call
            .map(|c| c.as_secs_f64() * 1e6 / per_call_items.max(1) as f64)
    }

    fn cpu_micros(&self, per_call_items: u64) -> String {
        let cpu = self.cpu_per_call.map_or(String::new(), |c| {
            format!(
                "  cpu {:.0} us/{}",
                c.as_secs_f64() * 1e6 / per_call_items.max(1) as f64,
                if per_call_items > 1 {
                    "summary"
                } else {
                    "call"
                }
            )
        });
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|(name, busy)| format!("{name} {:.0}%", busy * 100.0))
            .collect();
        if stages.is_empty() {
            cpu
        } else {
            format!("{cpu}  (busy: {})", stages.join(", "))
        }
    }
}

/// CPU time used so far by each of the hub's named threads (`huren-*`), summed by name, from
/// /proc/self/task (Linux; empty elsewhere).
fn stage_cpu() -> HashMap<String, Duration> {
    let mut by_name = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((name, cpu)) = stat_cpu(&stat)
            && name.starts_with("huren-")
        {
            *by_name.entry(name.to_owned()).or_default() += cpu;
        }
    }
    by_name
}

/// CPU time this process (every thread) has used, from /proc/self/stat (Linux; None elsewhere).
fn process_cpu() -> Option<Duration> {
    Some(stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)?.1)
}

/// The command name and the CPU time (user + system) of a /proc `stat` line. The name may
/// hold spaces and sits in parentheses; the fields after the last ')' hold utime and stime as
/// the 12th and 13th, in clock ticks of 1/100 s.
fn stat_cpu(stat: &str) -> Option<(&str, Duration)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, name) = head.split_once('(')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, Duration::from_millis(ticks * 10)))
}

impl Load {
    fn line(&self, name: &str, baseline: Option<(&str, f64)>, target: &str) {
        let ratio = baseline.map_or(String::new(), |(b, rate)| {
            format!("{:>5.0}% of {b}", 100.0 * self.per_second / rate)
        });
        println!(
            "{name:<34} {:>10.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  {ratio:<28} {target}{}{}",
            self.per_second,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.cpu_micros(1),
            if self.errors > 0 {
                format!(
                    "  ({} errors; the first: {})",
                    self.errors,
                    self.first_error.as_deref().unwrap_or("?")
                )
            } else {
                String::new()
            }
        );
    }
}

/// Runs `op` with `concurrency` requests in flight for `seconds`. Says on stderr what it
/// measures as it starts (the table is printed at the end), so that a profiler can be attached
/// to one path (`perf record -p`, see README "Performance").
async fn load<F, Fut>(what: &str, concurrency: usize, seconds: f64, op: F) -> Load
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    eprintln!("huren-bench: measuring {what}, {concurrency} in flight, {seconds} s");
    let op = Arc::new(op);
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let cpu_before = process_cpu();
    let stages_before = stage_cpu();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let op = op.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                match op(n).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        if let Ok((l, e, first)) = t.await {
            all.extend(l);
            errors += e;
            if first_error.is_none() {
                first_error = first;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_per_call = match (cpu_before, process_cpu()) {
        (Some(a), Some(b)) if !all.is_empty() => Some(b.saturating_sub(a) / all.len() as u32),
        _ => None,
    };
    let mut stages: Vec<(String, f64)> = stage_cpu()
        .into_iter()
        .map(|(name, cpu)| {
            let before = stages_before.get(&name).copied().unwrap_or_default();
            let busy = cpu.saturating_sub(before).as_secs_f64() / elapsed;
            (name, busy)
        })
        .filter(|(_, busy)| *busy >= 0.05)
        .collect();
    stages.sort_by(|a, b| b.1.total_cmp(&a.1));
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Load {
        ok: all.len() as u64,
        errors,
        per_second: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_per_call,
        stages,
        first_error,
    }
}

/// Ed25519 verifications per second on one core.
fn ed25519_verify_rate(seconds: f64) -> f64 {
    let key = SigningKey::from_bytes(&[7; 32]);
    let msg = [0x42u8; 400];
    let sig = key.sign(&msg);
    let vk = key.verifying_key();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..100 {
            if vk.verify_strict(&msg, &sig).is_ok() {
                n += 1;
            }
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The `n`th patient of a set (the seeded summaries' or a publish measurement's). Each
/// measurement publishes for patients of its own, so what the queries find (and how large
/// their answers are) is the seeded data alone, however many summaries the publish
/// measurements managed to store before them.
fn patient(set: &str, n: u64) -> Pseudonym {
    let mut key = set.as_bytes().to_vec();
    key.extend_from_slice(&n.to_be_bytes());
    Pseudonym::from_bytes(sha256(&key))
}

/// The patients the queries ask for.
const SEED: &str = "SEED";

/// The `n`th summary named `prefix`: patient n / per_patient of the set `prefix`, one of the
/// items, spread over the last 30 days so most are inside their windows.
fn summary(n: u64, per_patient: u64, now: i64, prefix: &str) -> anyhow::Result<Summary> {
    let (code, _) = ITEMS[(n % ITEMS.len() as u64) as usize];
    let performed = now - ((n * 7_919) % (30 * 86_400)) as i64 * 1000 - 3_600_000;
    Ok(Summary {
        id: SummaryId::parse(&format!("{prefix}-{n:08}"))?,
        version: 1,
        publisher: InstitutionId::parse(PUBLISHER)?,
        patient: patient(prefix, n / per_patient),
        item: Item {
            system: LOINC.into(),
            code: code.into(),
            display: format!("item {code}"),
            local_code: format!("L{code}"),
        },
        category: Category::Lab,
        performed_at: UnixMillis(performed),
        reported_at: UnixMillis(performed + 3_600_000),
        outcome: Outcome::Lab(LabResult {
            value: format!("{}", 100 + n % 80),
            unit: "g/L".into(),
            reference_range: "130-175".into(),
            flag: AbnormalFlag::Normal,
            specimen: "whole blood".into(),
        }),
        report: ReportRef {
            sha256: sha256(&n.to_le_bytes()),
            locator: format!("huren-report:{PUBLISHER}/{prefix}-{n:08}/1"),
            media_type: "application/pdf".into(),
        },
        status: Status::Final,
        status_reason: String::new(),
    })
}

/// Total size of the files below `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                // Blocks allocated, not the apparent length: what the disk holds.
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// Resident memory of this process (hub and clients together), from /proc.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

struct Bench {
    args: Args,
    dir: tempfile::TempDir,
    pki: DevPki,
    store: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Bench {
    fn prepare(args: Args) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("huren-bench-").tempdir()?;
        let pki = DevPki::generate()?;
        let members = [
            InstitutionId::parse(PUBLISHER)?,
            InstitutionId::parse(ASKER)?,
        ];
        let paths = pki.write_to(&dir.path().join("pki"), &[], &members)?;
        let store = dir.path().join("store");
        let policy =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hub/policy.example.toml");
        let config = dir.path().join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstore = {:?}\npolicy = {:?}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                store, policy, paths.ca_cert, paths.hub_cert, paths.hub_key
            ),
        )?;
        Ok(Self {
            args,
            dir,
            pki,
            store,
            config,
        })
    }

    /// Seeds summaries straight into the store: signed like a publisher's, stored like the
    /// hub stores them (batches through `SledStore::put_summaries`, each made durable before the
    /// next counts), without the RPC (which is measured separately). Runs on its own runtime, into
    /// the store the hub then serves (it is never closed and reopened in between).
    fn seed(&self, store: &BenchStore) -> anyhow::Result<(u64, u64)> {
        let m = self.pki.issue_member(&InstitutionId::parse(PUBLISHER)?)?;
        let cert = pem_der(&m.signing.cert_pem)?;
        let signer = Arc::new(SummarySigner::from_pkcs8_pem(&m.signing.key_pem, cert)?);
        let (store, total, per_patient) =
            (store.clone(), self.args.summaries, self.args.per_patient);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let result = rt.block_on(async move {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(indicatif::ProgressStyle::with_template(
                "seeding {bar:40} {pos}/{len} summaries  {per_sec}  eta {eta}",
            )?);
            let now = huren_core::summary::UnixMillis::now().0;
            let raw = Arc::new(AtomicU64::new(0));
            let next = Arc::new(AtomicU64::new(0));
            const CHUNK: u64 = 2000;
            let mut tasks = Vec::new();
            // Two writers: one signs its next chunk while the other's is stored.
            for _ in 0..2 {
                let (store, signer, bar, raw, next) = (
                    store.clone(),
                    signer.clone(),
                    bar.clone(),
                    raw.clone(),
                    next.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    loop {
                        let from = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if from >= total {
                            return anyhow::Ok(());
                        }
                        let to = (from + CHUNK).min(total);
                        let (signer, raw) = (signer.clone(), raw.clone());
                        let chunk = tokio::task::spawn_blocking(move || {
                            let mut chunk = Vec::with_capacity((to - from) as usize);
                            for n in from..to {
                                let s = summary(n, per_patient, now, SEED)?;
                                let envelope = signer.sign(&s)?;
                                raw.fetch_add(envelope.body.len() as u64 + 64, Ordering::Relaxed);
                                chunk.push(VerifiedSummary {
                                    body_sha256: sha256(&envelope.body),
                                    envelope,
                                    summary: s,
                                });
                            }
                            anyhow::Ok(chunk)
                        })
                        .await??;
                        put_durably(&store.shared(), &chunk, now).await?;
                        bar.inc(to - from);
                    }
                }));
            }
            for t in tasks {
                t.await??;
            }
            bar.finish();
            anyhow::Ok((store.summary_count().await?, raw.load(Ordering::Relaxed)))
        });
        drop(rt);
        result
    }
}

/// The store a run measures.
#[derive(Clone)]
enum BenchStore {
    Sled(huren_hub::store::SledStore),
    Postgres(huren_hub::store::PgStore),
}

impl BenchStore {
    fn shared(&self) -> huren_hub::store::SharedStore {
        match self {
            BenchStore::Sled(s) => Arc::new(s.clone()),
            BenchStore::Postgres(s) => Arc::new(s.clone()),
        }
    }

    async fn summary_count(&self) -> anyhow::Result<u64> {
        Ok(match self {
            BenchStore::Sled(s) => s.summary_count()?,
            BenchStore::Postgres(s) => s.summary_count().await?,
        })
    }

    /// Bytes on disk: sled's folder, or the database.
    async fn disk_bytes(&self, dir: &std::path::Path) -> anyhow::Result<u64> {
        Ok(match self {
            BenchStore::Sled(_) => dir_bytes(dir),
            BenchStore::Postgres(s) => s.database_bytes().await?,
        })
    }

    /// What each tree or table holds.
    async fn contents(&self) -> anyhow::Result<Vec<huren_hub::store::TreeContents>> {
        Ok(match self {
            BenchStore::Sled(s) => tokio::task::block_in_place(|| s.tree_contents())?,
            BenchStore::Postgres(s) => s.table_contents().await?,
        })
    }
}

/// Opens the store a run measures: `sled` in the bench's folder, `postgres` on a throwaway
/// cluster (started here unless `cluster` holds one), or an existing `postgres://` database.
async fn open_store(
    bench: &Bench,
    kind: &str,
    cache_bytes: u64,
    durability: huren_hub::store::Durability,
    node_cache_bytes: u64,
    cluster: &mut Option<huren_hub::store::postgres::cluster::Cluster>,
) -> anyhow::Result<BenchStore> {
    use huren_hub::store::postgres::{cluster::Cluster, is_url};
    if kind == "sled" {
        return Ok(BenchStore::Sled(huren_hub::store::SledStore::open_with(
            &bench.store,
            cache_bytes,
            durability,
            node_cache_bytes,
        )?));
    }
    let url = if is_url(kind) {
        kind.to_owned()
    } else if kind == "postgres" {
        if cluster.is_none() {
            let started = Cluster::start_with_fsync(true).map_err(|e| anyhow::anyhow!(e))?;
            // A bench stopped by a signal must not leave the server running.
            started
                .remove_when_this_process_ends()
                .map_err(|e| anyhow::anyhow!(e))?;
            *cluster = Some(started);
        }
        let c = cluster.as_ref().context("the cluster")?;
        c.create_database().await.map_err(|e| anyhow::anyhow!(e))?
    } else {
        anyhow::bail!("--store takes sled, postgres or postgres://…, not {kind}");
    };
    Ok(BenchStore::Postgres(
        huren_hub::store::PgStore::open_with(&url, bench.args.pg_connections(), node_cache_bytes)
            .await?,
    ))
}

/// Lets the store write out what seeding and the publish measurements left behind before the
/// queries are measured, so that each query figure is the query's own and not the deferred
/// writing of the measurement before it: a commit, and a CHECKPOINT of `cluster`, the bench's
/// own PostgreSQL cluster when the store is on it (otherwise its checkpointer and background
/// writer write the publishes' dirty pages out on the same cores while the queries run). An
/// existing `postgres://` database is only committed to: the hub's role need not be allowed to
/// checkpoint. Returns what was done and how long it took.
async fn settle(
    store: &BenchStore,
    cluster: Option<&huren_hub::store::postgres::cluster::Cluster>,
) -> anyhow::Result<String> {
    let t = Instant::now();
    store.shared().commit().await?;
    let what = match cluster {
        Some(c) => {
            c.execute("CHECKPOINT")
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            "the store committed and PostgreSQL checkpointed"
        }
        None => "the store committed",
    };
    Ok(format!("{what} in {:.1} s", t.elapsed().as_secs_f64()))
}

/// The figures of one run set side by side at the end.
#[derive(Clone, Debug, Default)]
struct Figures {
    store: String,
    echo: f64,
    publish: Option<f64>,
    publish_batch: Option<f64>,
    find_prior: Option<f64>,
    find_prior_proofs: Option<f64>,
    find_prior_p99_ms: Option<f64>,
    check_order: Option<f64>,
    bytes_per_summary: f64,
    /// Summaries seeded.
    size: u64,
    /// CPU time of the process per call (per summary for PublishBatch), in µs.
    publish_cpu: Option<f64>,
    publish_batch_cpu: Option<f64>,
    find_prior_cpu: Option<f64>,
    find_prior_proofs_cpu: Option<f64>,
    check_order_cpu: Option<f64>,
    /// FindPrior one call at a time, p99 in ms.
    alone_p99_ms: Option<f64>,
    /// The bench process's resident memory with the store just opened and at the end, MB.
    rss_open_mb: Option<f64>,
    rss_end_mb: Option<f64>,
}

/// Signs `count` summaries named `prefix-n` on every core, so measurements see the hub's work
/// rather than the client's signing.
/// Puts summaries accepted at `now` into the store as one batch and commits it; fails unless
/// every one is stored.
async fn put_durably(
    store: &huren_hub::store::SharedStore,
    summaries: &[VerifiedSummary],
    now: i64,
) -> anyhow::Result<()> {
    let items: Vec<_> = summaries.iter().map(|v| (v, UnixMillis(now))).collect();
    for r in store
        .put_summaries(&items, huren_core::summary::Summary::may_follow)
        .await?
        .results
    {
        r?;
    }
    store.commit().await?;
    Ok(())
}

/// The store-write part of a unary publish's floor: CPU µs of this process per summary when
/// summaries are put straight into the store (no hub, no RPC, no signature check) in batches
/// of `batch` with a commit after each, as the intake groups that many publishes in flight.
/// The summaries are new ones of new patients, signed before the clock starts.
async fn store_write_cpu(
    bench: &Bench,
    store: &BenchStore,
    batch: usize,
) -> anyhow::Result<(f64, u64)> {
    let batch = batch.max(1);
    let m = bench.pki.issue_member(&InstitutionId::parse(PUBLISHER)?)?;
    let signer = SummarySigner::from_pkcs8_pem(&m.signing.key_pem, pem_der(&m.signing.cert_pem)?)?;
    let count = (batch * 100) as u64;
    let now = UnixMillis::now().0;
    let verified = presign(&signer, "FLOOR", count, bench.args.per_patient)?
        .into_iter()
        .map(|envelope| {
            let summary = huren_core::summary::Summary::from_body_bytes(&envelope.body)?;
            anyhow::Ok(VerifiedSummary {
                body_sha256: sha256(&envelope.body),
                envelope,
                summary,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shared = store.shared();
    let before = process_cpu().context("this process's CPU time (/proc/self/stat)")?;
    for chunk in verified.chunks(batch) {
        put_durably(&shared, chunk, now).await?;
    }
    let spent = process_cpu().context("this process's CPU time")? - before;
    Ok((spent.as_secs_f64() * 1e6 / count as f64, count))
}

fn presign(
    signer: &SummarySigner,
    prefix: &str,
    count: u64,
    per_patient: u64,
) -> anyhow::Result<Vec<SignedEnvelope>> {
    let now = huren_core::summary::UnixMillis::now().0;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let per = count.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t * per..((t + 1) * per).min(count))
                        .map(|n| Ok(signer.sign(&summary(n, per_patient, now, prefix)?)?))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count as usize);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a signing thread panicked"))??,
            );
        }
        Ok(all)
    })
}

fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

async fn channels(
    bench: &Bench,
    addr: std::net::SocketAddr,
    who: &str,
) -> anyhow::Result<Vec<Channel>> {
    let m = bench.pki.issue_member(&InstitutionId::parse(who)?)?;
    let mut out = Vec::new();
    for _ in 0..bench.args.connections.max(1) {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(bench.pki.ca_cert_pem()))
            .identity(Identity::from_pem(&m.tls.cert_pem, &m.tls.key_pem))
            .domain_name("localhost");
        out.push(
            Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))?
                .tls_config(tls)?
                .connect()
                .await?,
        );
    }
    Ok(out)
}

/// Runs the whole benchmark and prints the report.
async fn run(
    args: Args,
    kind: &str,
    cluster: &mut Option<huren_hub::store::postgres::cluster::Cluster>,
) -> anyhow::Result<Figures> {
    let bench = Bench::prepare(args.clone())?;
    println!(
        "huren-bench: store {}, {} summaries, {} in flight, {} s per measurement, {} cores",
        huren_hub::store::postgres::redact_if_url(kind),
        args.summaries,
        args.concurrency,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if kind != "sled" {
        println!(
            "PostgreSQL: {} connections from the hub (--store-connections)",
            args.pg_connections()
        );
    }

    let verify_rate =
        tokio::task::spawn_blocking(move || ed25519_verify_rate(args.seconds.min(2.0))).await?;
    let hub_config = huren_hub::HubConfig::load(&bench.config)?;
    let durability = match args.durability.as_str() {
        "fsync" => huren_hub::store::Durability::Fsync,
        _ => huren_hub::store::Durability::Flush,
    };
    let store = open_store(
        &bench,
        kind,
        args.store_cache_mb.unwrap_or(hub_config.store_cache_mb) << 20,
        durability,
        args.node_cache_mb.unwrap_or(hub_config.log.node_cache_mb) << 20,
        cluster,
    )
    .await?;
    let t = Instant::now();
    let (stored, raw_bytes) = tokio::task::block_in_place(|| bench.seed(&store))?;
    let seed_secs = t.elapsed().as_secs_f64();
    // The footprint of the seeded summaries alone, before queries add their access records.
    store.shared().commit().await?;
    let seeded_disk = store.disk_bytes(&bench.store).await?;
    let trees = store.contents().await?;

    let store_write = if args.measures("publish") {
        Some(store_write_cpu(&bench, &store, args.concurrency).await?)
    } else {
        None
    };

    let tls_files = hub_config.tls.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = tokio::spawn(huren_hub::run_with_store(
        hub_config,
        store.shared(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let asker = channels(&bench, addr, ASKER)
        .await
        .context("connecting to the hub")?;
    let publisher = channels(&bench, addr, PUBLISHER).await?;

    // Raw echo: the health check, a unary RPC that does no work, over the same channels.
    let echo = {
        let chans = asker.clone();
        load("raw echo", args.concurrency, args.seconds, move |n| {
            let mut c = tonic_health::pb::health_client::HealthClient::new(
                chans[n as usize % chans.len()].clone(),
            );
            async move {
                c.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
                Ok(())
            }
        })
        .await
    };

    // Before the publish measurements sign their summaries ahead (hundreds of MB): the hub
    // with its store open and the clients connected.
    let rss_hub = rss_bytes();
    let m = bench.pki.issue_member(&InstitutionId::parse(PUBLISHER)?)?;
    let signer = SummarySigner::from_pkcs8_pem(&m.signing.key_pem, pem_der(&m.signing.cert_pem)?)?;
    let publish = if !args.measures("publish") {
        None
    } else {
        // Sign ahead, so the measurement is the hub's work, not the client's signing.
        let expected = (echo.per_second * args.seconds * 1.5) as u64 + 1000;
        let envelopes = Arc::new(presign(&signer, "PUB", expected, args.per_patient)?);
        let chans = publisher.clone();
        let load = load(
            "publish (unary)",
            args.concurrency,
            args.seconds,
            move |n| {
                let mut c = HubClient::new(chans[n as usize % chans.len()].clone());
                let env = envelopes.get(n as usize).cloned();
                async move {
                    let env = env.context("ran out of pre-signed summaries")?;
                    c.publish(pb::PublishRequest {
                        summary: Some(env.into()),
                    })
                    .await?;
                    Ok(())
                }
            },
        )
        .await;
        Some(load)
    };

    let batch_size = args.batch.max(1);
    let publish_batch = if !args.measures("publish-batch") {
        None
    } else {
        // Enough for twice the two-core verification rate, in whole batches.
        let expected = ((4.0 * verify_rate * args.seconds) as u64).max(batch_size as u64 * 8);
        let envelopes: Vec<huren_core::pb::SignedSummary> =
            presign(&signer, "BATCH", expected, args.per_patient)?
                .into_iter()
                .map(Into::into)
                .collect();
        let batches: Arc<Vec<Vec<huren_core::pb::SignedSummary>>> =
            Arc::new(envelopes.chunks(batch_size).map(<[_]>::to_vec).collect());
        let chans = publisher.clone();
        let load = load(
            "PublishBatch",
            args.batches_in_flight,
            args.seconds,
            move |n| {
                let mut c = HubClient::new(chans[n as usize % chans.len()].clone());
                let batch = batches.get(n as usize).cloned();
                async move {
                    let summaries = batch.context("ran out of pre-signed batches")?;
                    let want = summaries.len();
                    let answer = c
                        .publish_batch(pb::PublishBatchRequest { summaries })
                        .await?
                        .into_inner();
                    let stored = answer
                        .outcomes
                        .iter()
                        .filter(|o| {
                            matches!(o.outcome, Some(pb::publish_outcome::Outcome::Published(_)))
                        })
                        .count();
                    anyhow::ensure!(
                        stored == want,
                        "{} of {want} summaries refused",
                        want - stored
                    );
                    Ok(())
                }
            },
        )
        .await;
        Some(load)
    };

    let settled = match args.no_settle {
        true => None,
        // Only the cluster this run's store is on (not one an earlier run started).
        false => Some(settle(&store, cluster.as_ref().filter(|_| kind == "postgres")).await?),
    };

    let patients = (stored / args.per_patient).max(1);
    // Each query path walks the seeded patients from its own place (`walk`, an eighth of them
    // apart), so that a path measured later does not find the patients an earlier one read
    // already in the store's cache: at 10M, where the cache holds a sixteenth of the store,
    // that made the later paths look faster than the first. The multiplier is prime, so each
    // walk visits distinct patients until it has taken an eighth of them.
    let walk_start = (patients / 8).max(1);
    let patient_of = move |walk: u64, n: u64| {
        patient(SEED, ((n + walk * walk_start) * 2_654_435_761) % patients)
    };
    // FindPrior for a seeded patient and two items: the call a county hospital makes.
    let find_prior_op = |chans: Vec<Channel>, with_proofs: bool, walk: u64| {
        move |n: u64| {
            let mut c = HubClient::new(chans[n as usize % chans.len()].clone());
            let p = patient_of(walk, n);
            async move {
                // Each signing certificate once, as the agent asks.
                c.find_prior(prior_request(&p, true, with_proofs)).await?;
                Ok(())
            }
        }
    };
    let (find_prior, find_prior_proofs) = if !args.measures("find-prior") {
        (None, None)
    } else {
        let op = |with_proofs, walk| find_prior_op(asker.clone(), with_proofs, walk);
        let plain = load("FindPrior", args.concurrency, args.seconds, op(false, 0)).await;
        // The same with an inclusion proof for every result: what an agent with a log
        // verifier key (every production agent) asks.
        let proofs = load(
            "FindPrior with proofs",
            args.concurrency,
            args.seconds,
            op(true, 1),
        )
        .await;
        (Some(plain), Some(proofs))
    };
    // The sized echo: a no-op RPC answering as many bytes as the mean FindPrior answer above
    // (the first patients the load asked for), over channels like the asker's.
    let sized_echo = if !args.measures("find-prior") {
        None
    } else {
        let mut c = HubClient::new(asker[0].clone());
        let sample = 256;
        let mut total = 0;
        for n in 0..sample {
            let answer = c
                .find_prior(prior_request(&patient_of(0, n), true, false))
                .await?;
            total += answer.into_inner().encoded_len();
        }
        let size = u32::try_from(total / sample as usize)?;
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(Identity::from_pem(
                std::fs::read(&tls_files.cert)?,
                std::fs::read(&tls_files.key)?,
            ))
            .client_ca_root(Certificate::from_pem(std::fs::read(&tls_files.ca)?));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let echo_addr = listener.local_addr()?;
        let (stop_echo, echo_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(echo::serve(tls, listener, async {
            let _ = echo_stopped.await;
        }));
        let chans = channels(&bench, echo_addr, ASKER).await?;
        let load = load("sized echo", args.concurrency, args.seconds, move |n| {
            echo::call(chans[n as usize % chans.len()].clone(), size)
        })
        .await;
        let _ = stop_echo.send(());
        server.await??;
        Some((size, load))
    };
    // One answer's size: with each summary's certificate, with each certificate once, and
    // with that and proofs, full (each with its checkpoint) and compact (as agents ask).
    let answer_sizes = if !args.measures("find-prior") {
        None
    } else {
        let mut c = HubClient::new(asker[0].clone());
        let mut sizes = Vec::new();
        for (once, proofs, compact) in [
            (false, false, false),
            (true, false, false),
            (true, true, false),
            (true, true, true),
        ] {
            let mut request = prior_request(&patient(SEED, 0), once, proofs);
            request.compact_proofs = compact;
            let answer = c.find_prior(request).await?.into_inner();
            sizes.push((answer.results.len(), answer.encoded_len()));
        }
        Some(sizes)
    };
    // Latency without queueing: one call at a time.
    let find_prior_alone = if !args.measures("latency") {
        None
    } else {
        Some(
            load(
                "FindPrior one at a time",
                1,
                args.seconds,
                find_prior_op(asker.clone(), false, 2),
            )
            .await,
        )
    };

    // FindPrior for the five items CheckOrder asks for below: what CheckOrder is compared with.
    let find_prior_five = if !args.measures("check-order") {
        None
    } else {
        let chans = asker.clone();
        Some(
            load(
                "FindPrior (5 items)",
                args.concurrency,
                args.seconds,
                move |n| {
                    let mut c = HubClient::new(chans[n as usize % chans.len()].clone());
                    let p = patient_of(3, n);
                    async move {
                        c.find_prior(prior_request_for(&p, 5, true, false)).await?;
                        Ok(())
                    }
                },
            )
            .await,
        )
    };
    let check_order = if !args.measures("check-order") {
        None
    } else {
        let chans = asker.clone();
        let load = load("CheckOrder", args.concurrency, args.seconds, move |n| {
            let mut c = HubClient::new(chans[n as usize % chans.len()].clone());
            let p = patient_of(4, n);
            async move {
                c.check_order(pb::CheckOrderRequest {
                    patient_pseudonym: p.as_bytes().to_vec(),
                    items: ITEMS[..5]
                        .iter()
                        .map(|(_, local)| pb::OrderItem {
                            code: Some(pb::order_item::Code::LocalCode((*local).into())),
                        })
                        .collect(),
                    as_of_ms: 0,
                    purpose: pb::Purpose::Treatment as i32,
                    requester: BENCH_REQUESTER.into(),
                    with_proofs: false,
                    // As the agent asks.
                    certificates_once: true,
                    compact_proofs: false,
                })
                .await?;
                Ok(())
            }
        })
        .await;
        Some(load)
    };

    // The agent's paths (CDS Hooks cards, the web app's timeline page) beside the hub calls
    // they are built on, one request at a time.
    let agent = if !args.measures("agent") {
        None
    } else {
        Some(
            agent_paths::measure(
                &bench,
                &format!("https://127.0.0.1:{}", addr.port()),
                &publisher,
                &asker,
                &signer,
                args.seconds,
            )
            .await
            .context("measuring the agent's paths")?,
        )
    };

    // A measurement in which no call succeeded measured nothing: the run fails rather than
    // print a rate of zero.
    let measured = [
        ("raw echo", Some(&echo)),
        ("publish", publish.as_ref()),
        ("publish-batch", publish_batch.as_ref()),
        ("find-prior", find_prior.as_ref()),
        ("find-prior with proofs", find_prior_proofs.as_ref()),
        ("sized echo", sized_echo.as_ref().map(|(_, l)| l)),
        ("latency", find_prior_alone.as_ref()),
        ("check-order", check_order.as_ref()),
        ("find-prior, 5 items", find_prior_five.as_ref()),
        ("CDS Hooks order-sign", agent.as_ref().map(|a| &a.cds)),
        (
            "CheckOrder, 10 items",
            agent.as_ref().map(|a| &a.check_order),
        ),
        ("timeline page", agent.as_ref().map(|a| &a.timeline)),
        ("History", agent.as_ref().map(|a| &a.history)),
    ];
    for (name, load) in measured {
        if let Some(load) = load {
            anyhow::ensure!(
                load.ok > 0,
                "the {name} measurement had no successful call ({} failed)",
                load.errors
            );
        }
    }
    let rss = rss_bytes();
    let _ = stop.send(());
    hub.await??;
    let total_stored = stored
        + store_write.map_or(0, |(_, count)| count)
        + publish.as_ref().map_or(0, |p| p.ok)
        + publish_batch
            .as_ref()
            .map_or(0, |p| p.ok * batch_size as u64);
    let disk = store.disk_bytes(&bench.store).await?;
    drop(store);

    println!();
    println!("baselines");
    println!(
        "  raw echo (gRPC health Check, same mTLS channels)  {:>10.0}/s  p50 {:.2} ms  p99 {:.2} ms{}",
        echo.per_second,
        echo.p50.as_secs_f64() * 1e3,
        echo.p99.as_secs_f64() * 1e3,
        echo.cpu_micros(1)
    );
    println!(
        "  Ed25519 verify, one core                         {:>10.0}/s  (two cores: {:.0}/s)",
        verify_rate,
        2.0 * verify_rate
    );
    println!();
    println!(
        "seeded {stored} summaries in {seed_secs:.1} s ({:.0}/s, signed and stored, group commit)",
        stored as f64 / seed_secs
    );
    println!();
    if let Some(publish) = &publish {
        publish.line(
            "publish (unary, durable receipt)",
            Some(("raw echo", echo.per_second)),
            "(target: against its floor, below)",
        );
    }
    if let Some(b) = &publish_batch {
        let per_second = b.per_second * batch_size as f64;
        println!(
            "{:<34} {:>10.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  {:>5.0}% of two-core Ed25519 verify  target >= 80%  ({} per call, {} calls in flight{}){}",
            "publish (batched, durable receipts)",
            per_second,
            b.p50.as_secs_f64() * 1e3,
            b.p99.as_secs_f64() * 1e3,
            100.0 * per_second / (2.0 * verify_rate),
            batch_size,
            args.batches_in_flight,
            if b.errors > 0 {
                format!(", {} failed calls", b.errors)
            } else {
                String::new()
            },
            b.cpu_micros(batch_size as u64)
        );
    }
    match &settled {
        Some(done) => println!("before the queries: {done} (--no-settle measures them without)"),
        None => println!(
            "before the queries: nothing (--no-settle): they share the machine with the writing out of what seeding and publishing left"
        ),
    }
    if let Some(find_prior) = &find_prior {
        find_prior.line(
            "FindPrior (2 items)",
            Some(("raw echo", echo.per_second)),
            "(target: against the sized echo, below)",
        );
    }
    if let Some((size, sized)) = &sized_echo {
        sized.line(
            &format!("sized echo ({size}-byte answer)"),
            None,
            "a no-op RPC answering FindPrior's mean answer size",
        );
        if let Some(find_prior) = &find_prior {
            println!(
                "{:<34} {:>5.0}% of the sized echo: the gap is the hub's work (reads, rules, the query's audit record) and the client's decoding",
                "FindPrior against the sized echo",
                100.0 * find_prior.per_second / sized.per_second
            );
        }
    }
    if let Some(proofs) = &find_prior_proofs {
        proofs.line(
            "FindPrior (2 items), with proofs",
            Some(("raw echo", echo.per_second)),
            "as the agent asks",
        );
    }
    if let Some([(results, each), (_, once), (_, full), (_, compact)]) = answer_sizes.as_deref() {
        println!(
            "{:<34} {results} results: {each} bytes with each summary's certificate, {once} with each certificate once",
            "FindPrior answer size"
        );
        println!(
            "{:<34} {full} bytes with each proof's own checkpoint, {compact} compact (the checkpoint once, as agents ask)",
            "  with proofs"
        );
    }
    if let Some(alone) = &find_prior_alone {
        alone.line(
            "FindPrior, one call at a time",
            None,
            "target p99 <= 1 ms (at 10M)",
        );
    }
    if let Some(five) = &find_prior_five {
        five.line(
            "FindPrior (CheckOrder's 5 items)",
            Some(("raw echo", echo.per_second)),
            "",
        );
    }
    if let Some(check_order) = &check_order {
        check_order.line(
            "CheckOrder (5 local codes)",
            Some(("raw echo", echo.per_second)),
            "",
        );
    }
    if let Some(a) = &agent {
        println!();
        println!("the agent's paths, one request at a time, beside the hub call each is built on:");
        a.check_order
            .line("  CheckOrder, 10 catalogue items", None, "(baseline)");
        a.cds.line(
            &format!("  CDS order-sign, 10 items, {} cards", a.cards),
            None,
            &format!(
                "p99 {:.1}x CheckOrder's; target p99 <= 500 ms",
                a.cds.p99.as_secs_f64() / a.check_order.p99.as_secs_f64().max(1e-9)
            ),
        );
        a.history.line(
            &format!("  History, {} results", a.history_results),
            None,
            "(baseline)",
        );
        a.timeline.line(
            "  web timeline page",
            None,
            &format!(
                "p99 {:.1}x History's; target p95 <= 300 ms (p99 shown: stricter)",
                a.timeline.p99.as_secs_f64() / a.history.p99.as_secs_f64().max(1e-9)
            ),
        );
    }
    println!();
    let raw_per = raw_bytes as f64 / stored.max(1) as f64;
    let seeded_per = seeded_disk as f64 / stored.max(1) as f64;
    println!(
        "disk after seeding: {:.1} MB for {stored} summaries = {seeded_per:.0} bytes each; summary bytes (body + signature) {raw_per:.0}: {:.2}x  (target <= 3.5x)",
        seeded_disk as f64 / 1e6,
        seeded_per / raw_per
    );
    let logical: u64 = trees.iter().map(|t| t.bytes).sum();
    println!(
        "  keys and values (sled) or tables with their indexes (PostgreSQL): {:.0} bytes per summary ({:.2}x the summary bytes):",
        logical as f64 / stored.max(1) as f64,
        logical as f64 / raw_bytes.max(1) as f64
    );
    for huren_hub::store::TreeContents { name, keys, bytes } in &trees {
        println!(
            "    {name:<24} {keys:>9} keys  {:>6.0} bytes per summary",
            *bytes as f64 / stored.max(1) as f64
        );
    }
    let queries = [
        &find_prior,
        &find_prior_proofs,
        &find_prior_alone,
        &find_prior_five,
        &check_order,
    ]
    .iter()
    .filter_map(|l| l.as_ref())
    .map(|l| l.ok)
    .sum::<u64>();
    println!(
        "disk at the end: {:.1} MB for {total_stored} summaries and {queries} queries (each query adds its access record to the log)",
        disk as f64 / 1e6,
    );
    if let (Some(hub), Some(end)) = (rss_hub, rss) {
        println!(
            "RSS of the bench process (hub and clients): {:.0} MB with the store just opened, {:.0} MB at the end ({}summaries signed ahead for publishing count too)",
            hub as f64 / 1e6,
            end as f64 / 1e6,
            match kind {
                "sled" => "sled's page cache, up to 1 GiB by default, fills as queries read; ",
                _ => "PostgreSQL's server processes are not counted; ",
            }
        );
    }
    println!();
    println!("against the restated targets (issue 22; CPU of this process, hub and clients):");
    let verify_us = 1e6 / verify_rate.max(1.0);
    if let (Some(cpu), Some(echo_cpu), Some(write)) = (
        publish.as_ref().and_then(|l| l.cpu_us(1)),
        echo.cpu_us(1),
        store_write.map(|(cpu, _)| cpu),
    ) {
        let floor = echo_cpu + verify_us + write;
        println!(
            "  unary publish        {cpu:>6.0} us per call; floor {floor:.0} us = echo {echo_cpu:.0} + one Ed25519 verify {verify_us:.0} + one store write {write:.0} (batches of {}): {:.2}x its floor   target <= 1.3x",
            args.concurrency,
            cpu / floor
        );
    }
    if let Some(b) = &publish_batch {
        println!(
            "  PublishBatch         {:>5.0}% of two-core Ed25519 verify                                              target >= 80%",
            100.0 * b.per_second * batch_size as f64 / (2.0 * verify_rate)
        );
    }
    if let (Some(fp), Some((_, sized))) = (&find_prior, &sized_echo) {
        println!(
            "  FindPrior            {:>5.0}% of the sized echo                                                      target >= 40%",
            100.0 * fp.per_second / sized.per_second
        );
    }
    if let (Some(plain), Some(proofs)) = (
        find_prior.as_ref().and_then(|l| l.cpu_us(1)),
        find_prior_proofs.as_ref().and_then(|l| l.cpu_us(1)),
    ) {
        println!(
            "  FindPrior, proofs    {:>6.2}x FindPrior's CPU per call                                                target <= 1.3x",
            proofs / plain
        );
    }
    if let (Some(five), Some(order)) = (
        find_prior_five.as_ref().and_then(|l| l.cpu_us(1)),
        check_order.as_ref().and_then(|l| l.cpu_us(1)),
    ) {
        println!(
            "  CheckOrder, 5 codes  {:>6.2}x the CPU per call of FindPrior for the same 5 items                      target <= 1.2x",
            order / five
        );
    }
    println!(
        "  disk per summary     {:>6.2}x body + signature                                                       target <= 3.5x",
        seeded_per / raw_per
    );
    drop(bench.dir);
    Ok(Figures {
        store: if kind.starts_with("postgres") {
            "PostgreSQL".into()
        } else {
            "sled".into()
        },
        echo: echo.per_second,
        publish: publish.as_ref().map(|l| l.per_second),
        publish_batch: publish_batch
            .as_ref()
            .map(|l| l.per_second * batch_size as f64),
        find_prior: find_prior.as_ref().map(|l| l.per_second),
        find_prior_proofs: find_prior_proofs.as_ref().map(|l| l.per_second),
        find_prior_p99_ms: find_prior.as_ref().map(|l| l.p99.as_secs_f64() * 1e3),
        check_order: check_order.as_ref().map(|l| l.per_second),
        bytes_per_summary: seeded_per,
        size: args.summaries,
        publish_cpu: publish.as_ref().and_then(|l| l.cpu_us(1)),
        publish_batch_cpu: publish_batch
            .as_ref()
            .and_then(|l| l.cpu_us(batch_size as u64)),
        find_prior_cpu: find_prior.as_ref().and_then(|l| l.cpu_us(1)),
        find_prior_proofs_cpu: find_prior_proofs.as_ref().and_then(|l| l.cpu_us(1)),
        check_order_cpu: check_order.as_ref().and_then(|l| l.cpu_us(1)),
        alone_p99_ms: find_prior_alone.as_ref().map(|l| l.p99.as_secs_f64() * 1e3),
        rss_open_mb: rss_hub.map(|b| b as f64 / 1e6),
        rss_end_mb: rss.map(|b| b as f64 / 1e6),
    })
}

/// A size for a column heading: 100k, 1M, 10M.
fn size_label(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// The runs side by side, in brackets each as a share of a base run (`base_of`, none for a
/// run that is its own base).
fn table(runs: &[Figures], title: &str, base_of: &dyn Fn(&Figures) -> Option<usize>) {
    println!();
    println!("{title}");
    let header: Vec<String> = runs
        .iter()
        .map(|r| format!("{:>24}", format!("{} {}", r.store, size_label(r.size))))
        .collect();
    println!("{:<40}{}", "", header.join(""));
    let row = |name: &str, get: &dyn Fn(&Figures) -> Option<f64>, unit: &str| {
        if runs.iter().all(|r| get(r).is_none()) {
            return;
        }
        let cells: Vec<String> = runs
            .iter()
            .map(|r| {
                let base = base_of(r).and_then(|b| runs.get(b)).and_then(get);
                match (get(r), base) {
                    (Some(v), Some(base)) if base > 0.0 => {
                        format!("{:>15.0}{unit:<3} ({:>3.0}%)", v, 100.0 * v / base)
                    }
                    (Some(v), _) => format!("{:>15.0}{unit:<3}       ", v),
                    (None, _) => format!("{:>24}", "-"),
                }
            })
            .collect();
        println!("{name:<40}{}", cells.join(""));
    };
    row("raw echo", &|f| Some(f.echo), "/s");
    row("publish (unary, durable receipt)", &|f| f.publish, "/s");
    row("  cpu per publish", &|f| f.publish_cpu, "us");
    row(
        "publish (batched, group commit)",
        &|f| f.publish_batch,
        "/s",
    );
    row("  cpu per summary", &|f| f.publish_batch_cpu, "us");
    row("FindPrior (2 items)", &|f| f.find_prior, "/s");
    row("  cpu per call", &|f| f.find_prior_cpu, "us");
    row("FindPrior, with proofs", &|f| f.find_prior_proofs, "/s");
    row("  cpu per call", &|f| f.find_prior_proofs_cpu, "us");
    row(
        "FindPrior p99 (64 in flight)",
        &|f| f.find_prior_p99_ms,
        "ms",
    );
    row(
        "FindPrior one at a time, p99",
        &|f| f.alone_p99_ms.map(|ms| ms * 1e3),
        "us",
    );
    row("CheckOrder (5 local codes)", &|f| f.check_order, "/s");
    row("  cpu per call", &|f| f.check_order_cpu, "us");
    row(
        "bytes stored per summary",
        &|f| Some(f.bytes_per_summary),
        "B",
    );
    row("RSS, store just opened", &|f| f.rss_open_mb, "MB");
    row("RSS at the end", &|f| f.rss_end_mb, "MB");
}

/// The runs side by side: each store against the first store at the same size, and each
/// size against the next smaller size of the same store.
fn compare(runs: &[Figures]) {
    let stores: Vec<&str> = runs
        .iter()
        .map(|r| r.store.as_str())
        .fold(Vec::new(), |mut v, s| {
            if !v.contains(&s) {
                v.push(s);
            }
            v
        });
    let sizes: Vec<u64> = runs.iter().map(|r| r.size).fold(Vec::new(), |mut v, s| {
        if !v.contains(&s) {
            v.push(s);
        }
        v
    });
    if stores.len() > 1 {
        table(
            runs,
            "side by side (in brackets: the share of the first store's figure at the same size)",
            &|r| {
                runs.iter()
                    .position(|b| b.store == stores[0] && b.size == r.size)
                    .filter(|&b| !std::ptr::eq(&runs[b], r))
            },
        );
    }
    if sizes.len() > 1 {
        table(
            runs,
            "by size (in brackets: the share of the same store's figure at the size before)",
            &|r| {
                let before = sizes.iter().position(|&s| s == r.size)?.checked_sub(1)?;
                runs.iter()
                    .position(|b| b.store == r.store && b.size == sizes[before])
            },
        );
    }
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = Args::parse();
    args.summaries = args.sizes.first().copied().unwrap_or(1_000_000);
    // The hub's errors on stderr (RUST_LOG, default error): a failed call names its cause.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            if let Some(seconds) = args.soak {
                return soak::run(args.clone(), seconds, args.soak_csv.clone()).await;
            }
            if args.only.iter().any(|o| o == "ingest") {
                let (sizes, seconds) = (args.ingest_messages.clone(), args.seconds);
                tokio::task::spawn_blocking(move || agent_ingest::run(&sizes, seconds)).await??;
                if args.only.iter().all(|o| o == "ingest") {
                    return anyhow::Ok(());
                }
                println!();
            }
            let mut runs = Vec::new();
            for kind in &args.store {
                for &size in &args.sizes {
                    if !runs.is_empty() {
                        println!();
                    }
                    let mut one = args.clone();
                    one.summaries = size;
                    // Each size on a cluster of its own, stopped (and its folder removed)
                    // once measured: the database of the size before would otherwise hold
                    // part of the shared buffers and its files the page cache.
                    let mut cluster = None;
                    runs.push(run(one, kind, &mut cluster).await?);
                }
            }
            if runs.len() > 1 {
                compare(&runs);
            }
            anyhow::Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread named like the hub's is found and its CPU time counted (in clock ticks of
    /// 10 ms; the bound is low because other tests share the cores while it spins).
    #[test]
    fn stage_cpu_counts_the_hubs_named_threads() -> anyhow::Result<()> {
        let spin = std::thread::Builder::new()
            .name("huren-test-spin".into())
            .spawn(|| {
                let until = Instant::now() + Duration::from_millis(300);
                let mut n = 0u64;
                while Instant::now() < until {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
                std::thread::sleep(Duration::from_millis(200));
            })?;
        std::thread::sleep(Duration::from_millis(350));
        let busy = stage_cpu().get("huren-test-spin").copied();
        spin.join()
            .map_err(|_| anyhow::anyhow!("the spinning thread panicked"))?;
        anyhow::ensure!(
            busy.is_some_and(|b| b >= Duration::from_millis(30)),
            "{busy:?}"
        );
        Ok(())
    }

    /// The benchmark runs end to end on a small data set and measures something.
    #[test]
    fn runs_on_a_small_data_set() -> anyhow::Result<()> {
        small_run("sled")
    }

    /// And on its own PostgreSQL cluster, settling it with a CHECKPOINT before the queries.
    #[test]
    fn runs_on_a_small_data_set_on_postgres() -> anyhow::Result<()> {
        small_run("postgres")
    }

    fn small_run(kind: &str) -> anyhow::Result<()> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let args = Args {
            sizes: vec![400],
            summaries: 400,
            per_patient: 20,
            concurrency: 4,
            seconds: 0.3,
            connections: 1,
            batch: 20,
            batches_in_flight: 2,
            only: Vec::new(),
            durability: "fsync".into(),
            store: vec![kind.into()],
            store_connections: None,
            store_cache_mb: None,
            node_cache_mb: None,
            ingest_messages: vec![20],
            soak: None,
            soak_csv: "soak.csv".into(),
            soak_publish_share: 0.5,
            soak_query_share: 0.5,
            no_settle: false,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        // A cluster the run starts stops when this is dropped, at the end of the test.
        let mut cluster = None;
        let figures = rt.block_on(run(args, kind, &mut cluster))?;
        anyhow::ensure!(figures.echo > 0.0, "no echo rate measured");
        anyhow::ensure!(
            figures.find_prior.is_some_and(|r| r > 0.0),
            "no FindPrior rate measured"
        );
        Ok(())
    }
}
