//! `huren-agent`: a member's node agent: publish results, query prior results, list a
//! patient's history, run the daemon. The commands are `huren_agent::cli`; this binary parses
//! the global options, sets up logging and the stop signal, and runs one.

use clap::Parser;
use std::path::PathBuf;

use huren_agent::Asking;
use huren_agent::cli::{Command, PurposeArg};

/// The Huren node agent of one member institution.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (see node-agent/agent.example.toml).
    #[arg(long, short, env = "HUREN_AGENT_CONFIG")]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t)]
    log_format: huren::LogFormat,
    /// Why you look at the patient's results (logged with every query). Only emergency sees
    /// the results of a patient who opted out, and it is flagged in the access audit.
    #[arg(long, global = true, value_enum, default_value = "treatment")]
    purpose: PurposeArg,
    /// Who asks, as this member names them to the alliance: a staff or account id (letters,
    /// digits and . _ : @ -, at most 64), never a name. Logged with every query.
    #[arg(long, global = true, env = "HUREN_REQUESTER", value_parser = requester)]
    requester: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    huren::install_crypto_provider();
    let args = Args::parse();
    huren::init_tracing(args.log_format);
    let shutdown = huren::shutdown_signal();
    let mut asking = Asking::new(args.purpose.into());
    asking.requester = args.requester;
    huren_agent::cli::run(&args.config, asking, args.command, shutdown).await
}

fn requester(s: &str) -> Result<String, String> {
    huren_core::logentry::check_requester(s)?;
    Ok(s.to_owned())
}
