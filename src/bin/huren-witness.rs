//! `huren-witness`: a witness of the hub's log (c2sp.org/tlog-witness), run by a member or the
//! health commission: it cosigns a checkpoint only when it extends every checkpoint it cosigned
//! before, and raises an alarm on a fork. See `huren_hub::witness`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

/// A witness of the Huren hub's log.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (see hub/witness.example.toml).
    #[arg(long, short, env = "HUREN_WITNESS_CONFIG")]
    config: PathBuf,
    /// Listen on this address instead of the one in the configuration (port 0 picks a free
    /// port; the address actually bound is printed on stdout).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value_t)]
    log_format: huren::LogFormat,
    /// Print the witness's verifier key (creating its key if missing) and exit. It goes into the
    /// hub's `[[witness]]` and the agents' `[log] witnesses`.
    #[arg(long)]
    print_key: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    huren::init_tracing(args.log_format);
    let mut config = huren_hub::witness::WitnessConfig::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let witness = huren_hub::witness::Witness::open(&config)?;
    if args.print_key {
        println!("{}", witness.verifier_key());
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    println!("huren-witness listening on {}", listener.local_addr()?);
    println!("verifier key: {}", witness.verifier_key());
    tracing::info!(name = %config.name, logs = config.logs.len(), "witness started");
    huren_hub::witness::serve(Arc::new(witness), listener, huren::shutdown_signal()).await;
    Ok(())
}
