//! The soak run (issue 20, part 6): `huren-bench --soak SECONDS --soak-csv FILE` seeds the
//! store, measures the peak unary publish and FindPrior rates for a few seconds, then runs
//! both at a share of their peak (`--soak-publish-share`, `--soak-query-share`, half by
//! default) for SECONDS and every 10 s appends one line to FILE: the process's
//! resident memory and open descriptors, the store's size on disk, the p99 latency and
//! count of each kind of call in those 10 s, and, on a PostgreSQL cluster the bench started,
//! the server's memory (its processes' summed proportional set sizes). `docs/soak-chart.py` draws the file.
//!
//! The load is paced (a call starts every 1/rate seconds across the workers, never more at
//! once than the workers), so latency is measured at a steady offered load, not at
//! saturation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use huren_core::identity::InstitutionId;
use huren_core::signing::SummarySigner;
use huren_proto::hub as pb;
use huren_proto::hub::hub_client::HubClient;

use super::{
    Args, Bench, PUBLISHER, SEED, channels, load, open_store, patient, pem_der, prior_request,
    rss_bytes, summary,
};

const SAMPLE: Duration = Duration::from_secs(10);
const WORKERS: u64 = 32;

/// Latencies of the calls that ended in the current sample.
#[derive(Default)]
struct Window {
    publish: Vec<Duration>,
    query: Vec<Duration>,
    errors: u64,
}

fn p99(v: &mut [Duration]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
}

/// Free bytes on the file system holding `dir` (`df`), if it can be read.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-k", "--output=avail"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kb: u64 = text.lines().nth(1)?.trim().parse().ok()?;
    Some(kb * 1024)
}

/// The soak stops early, and says so, when the disk gets this full.
const MIN_FREE: u64 = 5 << 30;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A process's proportional set size (its private pages plus its share of shared ones, such
/// as PostgreSQL's shared buffers), in bytes.
fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The memory of a PostgreSQL cluster: the summed proportional set sizes of its postmaster
/// (the first line of `postmaster.pid` in its data folder) and the postmaster's children, so
/// shared buffers count once.
fn server_bytes(data: &std::path::Path) -> Option<u64> {
    let pid: u32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    let mut total = pss_bytes(pid)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // After the command in brackets: state, then the parent's pid.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            total += pss_bytes(child).unwrap_or(0);
        }
    }
    Some(total)
}

pub async fn run(args: Args, seconds: u64, csv: std::path::PathBuf) -> anyhow::Result<()> {
    let bench = Bench::prepare(args.clone())?;
    let hub_config = huren_hub::HubConfig::load(&bench.config)?;
    let mut cluster = None;
    let kind = args.store.first().map_or("sled", String::as_str);
    let store = open_store(
        &bench,
        kind,
        hub_config.store_cache_mb << 20,
        huren_hub::store::Durability::Flush,
        hub_config.log.node_cache_mb << 20,
        &mut cluster,
    )
    .await?;
    let (stored, _) = tokio::task::block_in_place(|| bench.seed(&store))?;
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
    let asker = channels(&bench, addr, super::ASKER).await?;
    let publisher = channels(&bench, addr, PUBLISHER).await?;
    let m = bench.pki.issue_member(&InstitutionId::parse(PUBLISHER)?)?;
    let signer = Arc::new(SummarySigner::from_pkcs8_pem(
        &m.signing.key_pem,
        pem_der(&m.signing.cert_pem)?,
    )?);
    let patients = (stored / args.per_patient).max(1);
    let published = Arc::new(AtomicU64::new(0));

    // Peak rates, a few seconds each, as the bench measures them.
    let op = publish_op(&publisher, &signer, &published, &args);
    let peak_publish = load("peak publish", 64, 3.0, move |n| op(n)).await;
    let op = query_op(&asker, patients);
    let peak_query = load("peak FindPrior", 64, 3.0, move |n| op(n)).await;
    let publish_rate = peak_publish.per_second * args.soak_publish_share;
    let query_rate = peak_query.per_second * args.soak_query_share;
    println!(
        "soak: {stored} summaries seeded; peak {:.0} publishes/s and {:.0} FindPrior/s; running at {:.0}% and {:.0}% of them ({publish_rate:.0}/s and {query_rate:.0}/s) for {seconds} s, sampled every {} s into {}",
        peak_publish.per_second,
        peak_query.per_second,
        args.soak_publish_share * 100.0,
        args.soak_query_share * 100.0,
        SAMPLE.as_secs(),
        csv.display()
    );
    anyhow::ensure!(
        publish_rate >= 1.0 && query_rate >= 1.0,
        "the peak measurements failed"
    );

    let window = Arc::new(Mutex::new(Window::default()));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for (kind, rate) in [("publish", publish_rate), ("query", query_rate)] {
        let interval = Duration::from_secs_f64(WORKERS as f64 / rate);
        let publish = publish_op(&publisher, &signer, &published, &args);
        let query = query_op(&asker, patients);
        for w in 0..WORKERS {
            let (publish, query, window) = (publish.clone(), query.clone(), window.clone());
            workers.push(tokio::spawn(async move {
                // Spread the workers' first calls over one interval.
                let mut next = start + interval.mul_f64(w as f64 / WORKERS as f64);
                let mut n = w;
                while next < end {
                    tokio::time::sleep_until(next.into()).await;
                    let t = Instant::now();
                    let result = if kind == "publish" {
                        publish(n).await
                    } else {
                        query(n).await
                    };
                    let took = t.elapsed();
                    let mut win = window.lock().await;
                    match (result, kind) {
                        (Ok(()), "publish") => win.publish.push(took),
                        (Ok(()), _) => win.query.push(took),
                        (Err(_), _) => win.errors += 1,
                    }
                    drop(win);
                    n += WORKERS;
                    next += interval;
                    // A worker that fell behind does not burst to catch up.
                    let now = Instant::now();
                    if next < now {
                        next = now;
                    }
                }
            }));
        }
    }

    let mut out = std::fs::File::create(&csv).with_context(|| format!("{}", csv.display()))?;
    use std::io::Write;
    writeln!(
        out,
        "seconds,rss_mb,open_fds,disk_mb,publishes,publish_p99_ms,queries,query_p99_ms,errors,db_server_mb"
    )?;
    // The database server's own memory, when the store is a cluster the bench started.
    let server_data = cluster
        .as_ref()
        .and_then(|c: &huren_hub::store::postgres::cluster::Cluster| c.dir())
        .map(|d| d.join("data"));
    let mut tick = tokio::time::interval_at((start + SAMPLE).into(), SAMPLE);
    let mut stopped_early = None;
    while Instant::now() < end {
        tick.tick().await;
        if let Some(free) = free_bytes(bench.dir.path())
            && free < MIN_FREE
        {
            stopped_early = Some(free);
            break;
        }
        let mut win = std::mem::take(&mut *window.lock().await);
        writeln!(
            out,
            "{},{:.1},{},{:.1},{},{:.2},{},{:.2},{},{:.1}",
            start.elapsed().as_secs(),
            rss_bytes().unwrap_or(0) as f64 / 1e6,
            open_fds(),
            store.disk_bytes(&bench.store).await.unwrap_or(0) as f64 / 1e6,
            win.publish.len(),
            p99(&mut win.publish),
            win.query.len(),
            p99(&mut win.query),
            win.errors,
            server_data.as_deref().and_then(server_bytes).unwrap_or(0) as f64 / 1e6,
        )?;
        out.flush()?;
    }
    if let Some(free) = stopped_early {
        println!(
            "soak: stopped after {:.0} s: {:.1} GB left on the disk",
            start.elapsed().as_secs_f64(),
            free as f64 / 1e9
        );
        for w in &workers {
            w.abort();
        }
    }
    for w in workers {
        let _ = w.await;
    }
    let _ = stop.send(());
    hub.await??;
    drop(store);
    drop(cluster);
    println!(
        "soak: done after {:.0} s; {} summaries published",
        start.elapsed().as_secs_f64(),
        published.load(Ordering::Relaxed)
    );
    Ok(())
}

type Op = Arc<
    dyn Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync,
>;

/// One unary publish of a new summary (signed when sent) for patients of the soak's own.
fn publish_op(
    publisher: &[Channel],
    signer: &Arc<SummarySigner>,
    published: &Arc<AtomicU64>,
    args: &Args,
) -> Op {
    let (chans, signer, published, per_patient) = (
        publisher.to_vec(),
        signer.clone(),
        published.clone(),
        args.per_patient,
    );
    let now = huren_core::summary::UnixMillis::now().0;
    Arc::new(move |_| {
        let mut c = HubClient::new(chans[0].clone());
        let (signer, published) = (signer.clone(), published.clone());
        let n = published.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let env = signer.sign(&summary(n, per_patient, now, "SOAK")?)?;
            c.publish(pb::PublishRequest {
                summary: Some(env.into()),
            })
            .await?;
            Ok(())
        })
    })
}

/// One FindPrior (two items, certificates once) for a seeded patient.
fn query_op(asker: &[Channel], patients: u64) -> Op {
    let chans = asker.to_vec();
    Arc::new(move |n| {
        let mut c = HubClient::new(chans[n as usize % chans.len()].clone());
        let p = patient(SEED, (n * 2_654_435_761) % patients);
        Box::pin(async move {
            c.find_prior(prior_request(&p, true, false)).await?;
            Ok(())
        })
    })
}
