//! `huren-hub`: runs the alliance hub.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

/// mimalloc instead of glibc malloc: under load the hub spent a quarter of its CPU in glibc's
/// arena locks and free-list consolidation (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Huren hub: verifies, stores and indexes members' signed exam-result summaries and
/// answers their queries over gRPC with mutual TLS.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (see hub/hub.example.toml).
    #[arg(long, short, env = "HUREN_HUB_CONFIG")]
    config: PathBuf,
    /// Listen on this address instead of the one in the configuration (port 0 picks a free
    /// port; the address actually bound is printed on stdout).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value_t)]
    log_format: huren::LogFormat,
    /// Print the verifier key of the hub's log (creating the log key if missing) and exit. Put
    /// it in every agent's configuration as `[log] verifier_key`.
    #[arg(long)]
    print_log_key: bool,
    /// Check the store offline and exit: every log leaf against the stored tree and its root,
    /// and what points into the log (latest versions, records, the access and consent indexes,
    /// signing certificates). Prints what is wrong and exits non-zero if anything is. Stop the
    /// hub first; the check changes nothing (opening the store finishes or undoes a write a
    /// crash cut short, as every start does).
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    huren::install_crypto_provider();
    let args = Args::parse();
    huren::init_tracing(args.log_format);
    let mut config = huren_hub::HubConfig::load(&args.config)?;
    if args.print_log_key {
        let key =
            huren_hub::log::LogSigner::load_or_create(&config.log_key_path(), &config.log.origin)?;
        println!("{}", key.verifier_key());
        return Ok(());
    }
    if args.check {
        return check(&config);
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    println!("huren-hub listening on {}", listener.local_addr()?);
    huren_hub::run(config, listener, huren::shutdown_signal()).await?;
    Ok(())
}

/// `--check`: the store against itself; a non-zero exit when anything is wrong.
fn check(config: &huren_hub::HubConfig) -> anyhow::Result<()> {
    if config.store_kind() == huren_hub::config::StoreKind::Postgres {
        anyhow::bail!(
            "--check reads sled stores; {} is a PostgreSQL database (its log is checked by the agents' proofs, and its tables are append-only by trigger: README, PostgreSQL)",
            config.store_display()
        );
    }
    let store =
        huren_hub::store::SledStore::open_with_cache(&config.store, config.store_cache_mb << 20)
            .with_context(|| format!("opening the store {}", config.store.display()))?;
    let report = store.check()?;
    println!(
        "checked {} log entries ({} summary versions) in {}",
        report.leaves,
        report.summaries,
        config.store.display()
    );
    if report.problem_count == 0 {
        println!("no problems found");
        return Ok(());
    }
    for p in &report.problems {
        println!("PROBLEM: {p}");
    }
    if report.problem_count > report.problems.len() {
        println!(
            "… and {} more",
            report.problem_count - report.problems.len()
        );
    }
    anyhow::bail!(
        "{} problem(s) found in the store; restore it from a backup, or keep it as evidence and tell the alliance",
        report.problem_count
    )
}
