//! `huren-agent`: a member's node agent: publish results, query prior results, list a
//! patient's history. Every result shown has been verified against the alliance CA.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

use huren_agent::table::{Table, format_time, parse_offset, results_table};
use huren_agent::{Agent, AgentConfig, Answer};
use huren_core::summary::UnixMillis;

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
    #[command(subcommand)]
    command: Command,
}

/// Who the patient is. The id is pseudonymised on this machine and never sent anywhere.
#[derive(clap::Args)]
struct Patient {
    /// Patient id type: cn-ric (居民身份证), passport, cn-health-card, …
    #[arg(long, default_value = "cn-ric")]
    id_type: String,
    /// Patient id, or "-" to read it from standard input (keeps it out of the shell history).
    #[arg(long, env = "HUREN_PATIENT_ID", hide_env_values = true)]
    patient_id: String,
}

#[derive(Subcommand)]
enum Command {
    /// Sign and publish every result in a huren-results/1 JSON file (see
    /// node-agent/RESULTS-FORMAT.md). Nothing is sent if any entry is invalid.
    Publish {
        /// The results file.
        file: PathBuf,
    },
    /// Prior results of a patient for some items, newest first, each verified.
    Query {
        #[command(flatten)]
        patient: Patient,
        /// Item to look for: SYSTEM|CODE (e.g. "http://loinc.org|718-7"), or a bare CODE in
        /// the --system code system. Repeat for several.
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        /// Code system for bare item codes.
        #[arg(long, default_value = "http://loinc.org")]
        system: String,
        /// Ask as of this time (RFC 3339, e.g. 2026-11-20T08:30:00+08:00); default now.
        #[arg(long)]
        as_of: Option<String>,
        /// How far back to look: e.g. 30d, 12w, 72h, 1y; default no limit.
        #[arg(long)]
        lookback: Option<String>,
    },
    /// All of a patient's results across the alliance, newest first, each verified.
    History {
        #[command(flatten)]
        patient: Patient,
        /// Only results performed at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
}

/// Parses "30d", "12w", "72h", "1y".
fn parse_lookback(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("look-back {s:?} should look like 30d, 12w, 72h or 1y"))?;
    let hours = match unit {
        "h" => 1,
        "d" => 24,
        "w" => 24 * 7,
        "y" => 24 * 365,
        _ => bail!("look-back {s:?} should look like 30d, 12w, 72h or 1y"),
    };
    Ok(Duration::from_secs(n * hours * 3600))
}

fn patient_pseudonym(
    agent: &Agent,
    p: &Patient,
) -> anyhow::Result<huren_core::pseudonym::Pseudonym> {
    let id = if p.patient_id == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line
    } else {
        p.patient_id.clone()
    };
    Ok(agent.pseudonymise(&p.id_type, &id)?)
}

fn now() -> UnixMillis {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    UnixMillis(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn print_answer(answer: &Answer, offset: time::UtcOffset) {
    if answer.results.is_empty() {
        println!("No results found.");
        return;
    }
    print!("{}", results_table(&answer.results, offset).render());
    println!(
        "{} result(s); every signature verified against the alliance CA.",
        answer.results.len()
    );
    if answer.truncated {
        println!(
            "The hub had more results than one answer carries; narrow the query to see the rest."
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    huren::install_crypto_provider();
    let args = Args::parse();
    huren::init_tracing(args.log_format);
    let config = AgentConfig::load(&args.config)?;
    let offset = parse_offset(&config.display_utc_offset).map_err(anyhow::Error::msg)?;
    let agent = Agent::connect(config).await?;
    match args.command {
        Command::Publish { file } => {
            let signed = agent.sign_results_file(&file)?;
            let mut table = Table::new(["Summary", "Version", "Item", "Outcome", "Accepted"]);
            let mut failures = 0;
            for (summary, envelope) in signed {
                let row = match agent.publish(&summary, envelope).await {
                    Ok(p) => vec![
                        if p.already_stored {
                            "already stored"
                        } else {
                            "stored"
                        }
                        .to_owned(),
                        format_time(p.receipt.accepted_at, offset),
                    ],
                    Err(e) => {
                        failures += 1;
                        vec![format!("REFUSED: {e}"), String::new()]
                    }
                };
                let mut full = vec![
                    summary.id.to_string(),
                    summary.version.to_string(),
                    format!("{} {}", summary.item.code, summary.item.display),
                ];
                full.extend(row);
                table.push(full);
            }
            print!("{}", table.render());
            if failures > 0 {
                bail!("{failures} result(s) were not published; see the table above");
            }
        }
        Command::Query {
            patient,
            items,
            system,
            as_of,
            lookback,
        } => {
            let pseudonym = patient_pseudonym(&agent, &patient)?;
            let items: Vec<(String, String)> = items
                .iter()
                .map(|i| match i.split_once('|') {
                    Some((s, c)) => (s.to_owned(), c.to_owned()),
                    None => (system.clone(), i.clone()),
                })
                .collect();
            let as_of = match as_of {
                Some(t) => {
                    huren_agent::results::parse_time("--as-of", &t).map_err(anyhow::Error::msg)?
                }
                None => now(),
            };
            let lookback = lookback.as_deref().map(parse_lookback).transpose()?;
            let answer = agent
                .find_prior(&pseudonym, &items, as_of, lookback)
                .await?;
            println!(
                "Prior results as of {}{}, items: {}",
                format_time(as_of, offset),
                lookback.map_or(String::new(), |d| format!(
                    ", looking back {} days",
                    d.as_secs() / 86_400
                )),
                items
                    .iter()
                    .map(|(_, c)| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            print_answer(&answer, offset);
        }
        Command::History { patient, since } => {
            let pseudonym = patient_pseudonym(&agent, &patient)?;
            let since = match since {
                Some(t) => {
                    huren_agent::results::parse_time("--since", &t).map_err(anyhow::Error::msg)?
                }
                None => UnixMillis(0),
            };
            let answer = agent.history(&pseudonym, since).await?;
            println!(
                "Results across the alliance since {}:",
                format_time(since, offset)
            );
            print_answer(&answer, offset);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookback_units() {
        assert_eq!(
            parse_lookback("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_lookback("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(
            parse_lookback("72h").unwrap(),
            Duration::from_secs(72 * 3_600)
        );
        assert!(parse_lookback("30 days").is_err());
        assert!(parse_lookback("d").is_err());
    }
}
