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
    /// Configuration file (see hub/hub.example.toml). Required, except by `migrate`.
    #[arg(long, short, env = "HUREN_HUB_CONFIG")]
    config: Option<PathBuf>,
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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Copy a stopped hub's store into a new, empty PostgreSQL database: the same log (every
    /// leaf, so the same size and root, and every checkpoint signed before stays provably
    /// consistent), summaries, audit and statistics. Then point `store` at the database and
    /// `[log] key` at the same log key, and start the hub.
    Migrate {
        /// The store to copy: `sled:DIR`, the folder `store` names today.
        #[arg(long)]
        from: String,
        /// The database to copy it into: `postgres://user:password@host:port/dbname`. It must
        /// be empty; its tables are created.
        #[arg(long)]
        to: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    huren::install_crypto_provider();
    let args = Args::parse();
    huren::init_tracing(args.log_format);
    if let Some(Command::Migrate { from, to }) = &args.command {
        return migrate(from, to).await;
    }
    let config_path = args
        .config
        .context("--config (or HUREN_HUB_CONFIG) is required: the hub's configuration file")?;
    let mut config = huren_hub::HubConfig::load(&config_path)?;
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

/// `migrate`: copies a sled store into an empty PostgreSQL database and checks the copy's log.
async fn migrate(from: &str, to: &str) -> anyhow::Result<()> {
    let dir = from
        .strip_prefix("sled:")
        .context("--from takes sled:DIR, the folder of the store to copy")?;
    anyhow::ensure!(
        huren_hub::store::postgres::is_url(to),
        "--to takes postgres://user:password@host:port/dbname"
    );
    let place = huren_hub::store::postgres::redact(to);
    let source = huren_hub::store::SledStore::open(std::path::Path::new(dir))
        .with_context(|| format!("opening the store {dir} (stop its hub first)"))?;
    let target = huren_hub::store::PgStore::open(to)
        .await
        .with_context(|| format!("opening {place}"))?;
    let report = target
        .import_sled(&source)
        .await
        .with_context(|| format!("copying {dir} into {place}"))?;
    println!(
        "copied {dir} into {place}: {} log entries (root {}), {} summary versions, {} statistics events, {} consultations",
        report.head.size,
        report
            .head
            .root
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        report.summaries,
        report.events,
        report.shown,
    );
    if report.skipped_consulted > 0 {
        println!(
            "not copied: {} consultations in the oldest layout, which does not name the patient (decisions on them can no longer be recorded)",
            report.skipped_consulted
        );
    }
    println!(
        "the log's size and root are the original's. Now set store = \"{place}\" (with its user and password) and [log] key to the log key this store used, and start the hub."
    );
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
