//! The `huren-agent` command line: its commands and what each prints. The binary
//! (src/bin/huren-agent.rs) only parses the global options and calls [`run`]. Every result
//! shown has been verified against the alliance CA.

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Duration;

use huren_core::stats::{GroupBy, Row};

use crate::table::{Table, format_time, parse_offset, results_table, verdict_cell};
use crate::{Agent, AgentConfig, Answer, Asking, OrderItem};
use huren_core::logentry::Purpose;
use huren_core::rules::{Decision, RetestReason};
use huren_core::summary::UnixMillis;

/// Why the patient's results are looked at: logged with every query. Only emergency sees the
/// results of a patient who opted out, and it is flagged in the access audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PurposeArg {
    Treatment,
    Referral,
    Emergency,
    PatientRequest,
    Administration,
    QualityControl,
}

impl From<PurposeArg> for Purpose {
    fn from(p: PurposeArg) -> Self {
        match p {
            PurposeArg::Treatment => Purpose::Treatment,
            PurposeArg::Referral => Purpose::Referral,
            PurposeArg::Emergency => Purpose::Emergency,
            PurposeArg::PatientRequest => Purpose::PatientRequest,
            PurposeArg::Administration => Purpose::Administration,
            PurposeArg::QualityControl => Purpose::QualityControl,
        }
    }
}

/// What was done with a prior result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DecisionArg {
    Adopted,
    Retested,
}

/// Why a result was tested again: the national list, then the local additions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReasonArg {
    ConditionChanged,
    FastChangingValue,
    CriticalStep,
    Emergency,
    Appraisal,
    Other,
    PatientRequest,
    SourceFailedEqa,
    TooOld,
    PhysicianJudgement,
}

impl From<ReasonArg> for RetestReason {
    fn from(r: ReasonArg) -> Self {
        match r {
            ReasonArg::ConditionChanged => RetestReason::ConditionChanged,
            ReasonArg::FastChangingValue => RetestReason::FastChangingValue,
            ReasonArg::CriticalStep => RetestReason::CriticalStep,
            ReasonArg::Emergency => RetestReason::Emergency,
            ReasonArg::Appraisal => RetestReason::Appraisal,
            ReasonArg::Other => RetestReason::Other,
            ReasonArg::PatientRequest => RetestReason::PatientRequest,
            ReasonArg::SourceFailedEqa => RetestReason::SourceFailedEqa,
            ReasonArg::TooOld => RetestReason::TooOld,
            ReasonArg::PhysicianJudgement => RetestReason::PhysicianJudgement,
        }
    }
}

/// A patient's sharing consent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConsentArg {
    OptOut,
    OptIn,
}

/// How statistics are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GroupArg {
    Item,
    Member,
    Day,
    Month,
}

impl GroupArg {
    /// The name on the command line, and the first column's header.
    pub fn name(self) -> &'static str {
        match self {
            GroupArg::Item => "item",
            GroupArg::Member => "member",
            GroupArg::Day => "day",
            GroupArg::Month => "month",
        }
    }
}

/// Who the patient is. The id is pseudonymised on this machine and never sent anywhere.
#[derive(clap::Args)]
pub struct Patient {
    /// Patient id type: cn-ric (居民身份证), passport, cn-health-card, … (the alliance-wide
    /// and local types of [pseudonym] in the configuration)
    #[arg(long, default_value = "cn-ric")]
    id_type: String,
    /// Patient id, or "-" to read it from standard input (keeps it out of the shell history).
    #[arg(long, env = "HUREN_PATIENT_ID", hide_env_values = true)]
    patient_id: String,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Also show each result's earlier versions (amendments, voids).
        #[arg(long)]
        versions: bool,
    },
    /// The order-time check: for each item about to be ordered, the best recognised prior
    /// result or why there is none.
    Check {
        #[command(flatten)]
        patient: Patient,
        /// Ordered item: this hospital's local code (e.g. XCG-HB), or SYSTEM|CODE for a
        /// catalogue code. Repeat for several.
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        /// Check as of this time (RFC 3339); default now.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Record what was done with a prior result: adopted, or re-tested with a reason.
    Decide {
        /// The result: PUBLISHER/SUMMARY_ID (as shown by query or check).
        #[arg(long)]
        result: String,
        /// Its version (as shown by query or check).
        #[arg(long, default_value_t = 1)]
        version: u32,
        /// adopted or retested.
        #[arg(long, value_enum)]
        decision: DecisionArg,
        /// Re-test reason (with retested).
        #[arg(long, value_enum)]
        reason: Option<ReasonArg>,
        /// Free text, required with reason "other".
        #[arg(long, default_value = "")]
        note: String,
        /// An id unique within this hospital (e.g. the order number); a retry with the same id
        /// is not counted twice. Default: derived from the result and the current minute.
        #[arg(long)]
        decision_id: Option<String>,
    },
    /// Recognition statistics: queries, recognised results found, adopted, re-tested by
    /// reason, tests avoided and money saved.
    Stats {
        /// Start of the period (RFC 3339); default 30 days ago.
        #[arg(long)]
        from: Option<String>,
        /// End of the period (RFC 3339); default now.
        #[arg(long)]
        to: Option<String>,
        /// How to group the figures.
        #[arg(long, value_enum, default_value = "item")]
        by: GroupArg,
        /// Write the rows as CSV to this file instead of printing a table ("-" for stdout).
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// Re-check the hub's verifiable log: the latest checkpoint against the last one this
    /// agent saw (consistency proof), and every entry this agent relied on (inclusion proofs).
    /// Exits non-zero on any inconsistency. Needs [log] verifier_key in the configuration.
    Audit,
    /// Who looked at a patient's results, when and why, from the hub's log; every entry's
    /// inclusion proof is verified. Only the alliance administrator may ask, on the patient's
    /// request (a member is refused).
    AccessReport {
        #[command(flatten)]
        patient: Patient,
        /// Start of the period (RFC 3339); default: everything.
        #[arg(long)]
        from: Option<String>,
        /// End of the period (RFC 3339); default now.
        #[arg(long)]
        to: Option<String>,
    },
    /// Record a patient's opt-out of sharing their results (or opt-back-in).
    Consent {
        #[command(flatten)]
        patient: Patient,
        /// opt-out or opt-in.
        #[arg(long, value_enum)]
        set: ConsentArg,
    },
    /// The long-running agent and its store: run, backfill, outbox, fetch-report.
    #[command(flatten)]
    Node(NodeCommand),
}

/// Commands of the agent's daemon side (node-agent/INBOX.md). None of them needs the hub to be
/// up when it starts.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Run the agent: watch the inbox ([inbox]), queue signed summaries in the store ([store]),
    /// publish them with retries, serve full reports ([repository]). Stops on Ctrl-C / SIGTERM.
    Run,
    /// Load a folder of exported history (HL7 v2 / FHIR files, any depth) into the outbox with a
    /// progress bar, then publish it. Interrupt at will; the same command resumes.
    Backfill {
        /// The folder of exported files.
        dir: PathBuf,
        /// Where refused files are copied with their reasons; default DIR.rejected beside DIR.
        #[arg(long)]
        rejected: Option<PathBuf>,
        /// Only queue; leave publishing to `huren-agent run`.
        #[arg(long)]
        no_publish: bool,
    },
    /// Show the outbox: pending, published, and the dead letters the hub refused, with reasons.
    Outbox {
        /// Queue every dead letter again (after fixing the cause).
        #[arg(long)]
        retry_dead: bool,
    },
    /// Fetch a full report from the publisher's agent and check it against the signed summary.
    FetchReport {
        /// The publisher's repository address, host:port.
        #[arg(long)]
        from: String,
        /// The publisher's institution id (its certificate must name it).
        #[arg(long)]
        publisher: String,
        #[arg(long)]
        summary_id: String,
        /// The summary version; default the latest.
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// The expected SHA-256 (hex) from a summary you verified; or give --patient-id to take
        /// it from the patient's verified history at the hub.
        #[arg(long, required_unless_present = "patient_id")]
        sha256: Option<String>,
        /// Patient id type for --patient-id.
        #[arg(long, default_value = "cn-ric")]
        id_type: String,
        /// The patient's id ("-" reads standard input); pseudonymised here, never sent.
        #[arg(long, env = "HUREN_PATIENT_ID", hide_env_values = true)]
        patient_id: Option<String>,
        /// Where to write the report.
        #[arg(long)]
        out: PathBuf,
    },
}

async fn node_command(
    config: AgentConfig,
    asking: &Asking,
    command: NodeCommand,
    offset: time::UtcOffset,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    match command {
        NodeCommand::Run => crate::daemon::run(config, shutdown).await?,
        NodeCommand::Backfill {
            dir,
            rejected,
            no_publish,
        } => {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            tokio::spawn(async move {
                shutdown.await;
                flag.store(true, Ordering::Relaxed);
            });
            let text =
                crate::commands::backfill(&config, &dir, rejected, !no_publish, true, stop).await?;
            print!("{text}");
        }
        NodeCommand::Outbox { retry_dead } => {
            print!("{}", crate::commands::outbox(&config, retry_dead, offset)?);
        }
        NodeCommand::FetchReport {
            from,
            publisher,
            summary_id,
            version,
            sha256,
            id_type,
            patient_id,
            out,
        } => {
            use crate::commands::Expected;
            let expected = match (sha256, patient_id) {
                (Some(d), _) => Expected::Sha256(d),
                (None, Some(id)) => {
                    let id = if id == "-" {
                        let mut line = String::new();
                        std::io::stdin().read_line(&mut line)?;
                        line
                    } else {
                        id
                    };
                    Expected::Patient {
                        id_type,
                        id,
                        asking: asking.clone(),
                    }
                }
                (None, None) => bail!("give --sha256 or --patient-id"),
            };
            let text = crate::commands::fetch(
                config,
                &from,
                &publisher,
                &summary_id,
                version,
                expected,
                &out,
                offset,
            )
            .await?;
            print!("{text}");
        }
    }
    Ok(())
}

fn yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

const REASON_CODES: [&str; 11] = [
    "condition-changed",
    "fast-changing-value",
    "critical-step",
    "emergency",
    "appraisal",
    "other",
    "patient-request",
    "source-failed-eqa",
    "too-old",
    "physician-judgement",
    "unspecified",
];

/// Every row of `r` and then the total, each with its label.
fn rows_and_total(r: &crate::client::Statistics) -> impl Iterator<Item = (&Row, &str)> {
    r.rows
        .iter()
        .map(|(row, label)| (row, label.as_str()))
        .chain(std::iter::once((&r.total, "")))
}

fn stats_csv(r: &crate::client::Statistics) -> String {
    let mut out = String::from(
        "key,label,queries,recognisable_found,cross_member,adopted,retested,tests_avoided,money_saved_yuan",
    );
    for code in REASON_CODES {
        out.push_str(&format!(",retested_{}", code.replace('-', "_")));
    }
    out.push('\n');
    for (row, label) in rows_and_total(r) {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}",
            csv_field(&row.key),
            csv_field(label),
            row.queries,
            row.found,
            row.cross_member,
            row.adopted,
            row.retested,
            row.tests_avoided,
            yuan(row.money_saved_fen)
        ));
        for code in REASON_CODES {
            out.push_str(&format!(
                ",{}",
                row.retested_by_reason.get(code).copied().unwrap_or(0)
            ));
        }
        out.push('\n');
    }
    out
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

/// Results the hub returned that failed verification: never shown as results, each named
/// with the publisher its receipt claims, so the alliance can follow it up.
fn print_failed(failed: &[crate::verify::FailedResult]) {
    for f in failed {
        println!(
            "验证失败 FAILED VERIFICATION: result #{} ({}, publisher {}) is not shown: {}. Report it to the alliance administrator.",
            f.position, f.claimed, f.publisher, f.reason
        );
    }
}

fn print_answer(answer: &Answer, offset: time::UtcOffset) {
    if answer.withheld_by_consent {
        println!(
            "The patient has opted out of sharing their results; only an emergency query (--purpose emergency) sees them."
        );
        return;
    }
    print_failed(&answer.failed);
    if answer.results.is_empty() {
        println!("No results found.");
        return;
    }
    print!("{}", results_table(&answer.results, offset).render());
    for (i, r) in answer.results.iter().enumerate() {
        if let Some(v) = r.verdict.as_ref().filter(|v| !v.recognised()) {
            let why: Vec<&str> = v.reasons.iter().map(|(_, text)| text.as_str()).collect();
            println!("  #{} not recognised: {}", i + 1, why.join("; "));
        }
    }
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

/// Runs one command with the configuration at `config`, asking the hub as `asking` says.
/// `shutdown` completes on Ctrl-C or SIGTERM (the daemon and backfill stop on it).
pub async fn run(
    config: &Path,
    asking: Asking,
    command: Command,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = AgentConfig::load(config)?;
    let offset = parse_offset(&config.display_utc_offset).map_err(anyhow::Error::msg)?;
    let command = match command {
        Command::Node(c) => return node_command(config, &asking, c, offset, shutdown).await,
        other => other,
    };
    let agent = Agent::connect(config).await?;
    match command {
        // Handled above, before connecting.
        Command::Node(_) => {}
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
                Some(t) => crate::results::parse_time("--as-of", &t).map_err(anyhow::Error::msg)?,
                None => UnixMillis::now(),
            };
            let lookback = lookback.as_deref().map(parse_lookback).transpose()?;
            let answer = agent
                .find_prior(&asking, &pseudonym, &items, as_of, lookback)
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
        Command::History {
            patient,
            since,
            versions,
        } => {
            let pseudonym = patient_pseudonym(&agent, &patient)?;
            let since = match since {
                Some(t) => crate::results::parse_time("--since", &t).map_err(anyhow::Error::msg)?,
                None => UnixMillis(0),
            };
            let answer = agent.history(&asking, &pseudonym, since, versions).await?;
            println!(
                "Results across the alliance since {}:",
                format_time(since, offset)
            );
            print_answer(&answer, offset);
            for r in answer.results.iter().filter(|r| !r.earlier.is_empty()) {
                println!(
                    "\nEarlier versions of {}/{}:",
                    r.summary.publisher, r.summary.id
                );
                print!("{}", results_table(&r.earlier, offset).render());
            }
        }
        Command::Check {
            patient,
            items,
            as_of,
        } => run_check(&agent, &asking, &patient, &items, as_of, offset).await?,
        Command::Decide {
            result,
            version,
            decision,
            reason,
            note,
            decision_id,
        } => {
            run_decide(
                &agent,
                &result,
                version,
                decision,
                reason,
                note,
                decision_id,
            )
            .await?
        }
        Command::Stats { from, to, by, csv } => {
            run_stats(&agent, from, to, by, csv, offset).await?
        }
        Command::Audit => run_audit(&agent).await?,
        Command::AccessReport { patient, from, to } => {
            run_access_report(
                &agent,
                asking.requester.as_deref(),
                &patient,
                from,
                to,
                offset,
            )
            .await?
        }
        Command::Consent { patient, set } => {
            let pseudonym = patient_pseudonym(&agent, &patient)?;
            let opted_out = set == ConsentArg::OptOut;
            let (changed, at) = agent.set_consent(&pseudonym, opted_out).await?;
            println!(
                "Recorded at {}: the patient {} sharing{}.",
                format_time(at, offset),
                if opted_out {
                    "opted out of"
                } else {
                    "opted back in to"
                },
                if changed { "" } else { " (no change)" }
            );
        }
    }
    Ok(())
}

/// `huren-agent audit`: loud on any inconsistency, non-zero exit.
async fn run_audit(agent: &Agent) -> anyhow::Result<()> {
    let report = agent.audit().await?;
    let head = |c: &huren_core::checkpoint::Checkpoint| {
        format!("{} entries, root {}", c.size, hex_root(&c.root))
    };
    match &report.before {
        Some(b) => println!("Last checkpoint seen:  {}", head(b)),
        None => println!("Last checkpoint seen:  none yet"),
    }
    println!("Hub's latest:          {}", head(&report.now));
    println!("Entries re-checked:    {}", report.entries_checked);
    if report.problems.is_empty() {
        println!("OK: the hub's log is consistent with everything this agent saw.");
        return Ok(());
    }
    eprintln!();
    eprintln!("!!! THE HUB'S LOG IS INCONSISTENT WITH WHAT THIS AGENT SAW !!!");
    for p in &report.problems {
        eprintln!("  - {p}");
    }
    eprintln!(
        "Keep this agent's log state folder as evidence and report this to the alliance administrator."
    );
    bail!(
        "{} inconsistenc(ies) in the hub's log",
        report.problems.len()
    )
}

fn hex_root(root: &[u8; 32]) -> String {
    root.iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}

async fn run_access_report(
    agent: &Agent,
    requester: Option<&str>,
    patient: &Patient,
    from: Option<String>,
    to: Option<String>,
    offset: time::UtcOffset,
) -> anyhow::Result<()> {
    let pseudonym = patient_pseudonym(agent, patient)?;
    let time = |name: &str, t: Option<String>, default: UnixMillis| match t {
        Some(t) => crate::results::parse_time(name, &t).map_err(anyhow::Error::msg),
        None => Ok(default),
    };
    let from = time("--from", from, UnixMillis(0))?;
    let to = time("--to", to, UnixMillis(0))?;
    let report = agent.access_report(requester, &pseudonym, from, to).await?;
    let mut table = Table::new([
        "Time",
        "Member",
        "Requester",
        "Purpose",
        "Call",
        "Results",
        "Log entry",
    ]);
    for e in &report.entries {
        let purpose = if e.emergency_override {
            format!("{} (OVERRODE OPT-OUT)", e.purpose.name())
        } else if e.withheld_by_consent {
            format!("{} (withheld: opted out)", e.purpose.name())
        } else {
            e.purpose.name().to_owned()
        };
        table.push(vec![
            format_time(e.at, offset),
            e.caller.clone(),
            e.requester.clone(),
            purpose,
            e.method.clone(),
            e.results.to_string(),
            e.index.to_string(),
        ]);
    }
    print!("{}", table.render());
    println!(
        "{} access(es); the patient is {}.{}",
        report.entries.len(),
        if report.opted_out {
            "opted out of sharing"
        } else {
            "sharing"
        },
        if agent.log().is_some() {
            " Every entry's inclusion proof verified against the hub's signed checkpoint."
        } else {
            " (Not verified: add [log] verifier_key to the configuration.)"
        }
    );
    Ok(())
}

async fn run_check(
    agent: &Agent,
    asking: &Asking,
    patient: &Patient,
    items: &[String],
    as_of: Option<String>,
    offset: time::UtcOffset,
) -> anyhow::Result<()> {
    let pseudonym = patient_pseudonym(agent, patient)?;
    let order: Vec<OrderItem> = items
        .iter()
        .map(|i| match i.split_once('|') {
            Some((system, code)) => OrderItem::Catalogue {
                system: system.to_owned(),
                code: code.to_owned(),
            },
            None => OrderItem::Local(i.clone()),
        })
        .collect();
    let as_of = match as_of {
        Some(t) => crate::results::parse_time("--as-of", &t).map_err(anyhow::Error::msg)?,
        None => UnixMillis::now(),
    };
    let checks = agent.check_order(asking, &pseudonym, &order, as_of).await?;
    let mut table = Table::new([
        "Ordered",
        "Catalogue item",
        "Prior result",
        "Performed",
        "Publisher",
        "Summary",
        "Advice",
    ]);
    for (asked, c) in items.iter().zip(&checks) {
        let item = match &c.item {
            Some((_, code)) => format!("{code} {}", c.item_name),
            None => "-".into(),
        };
        match &c.best {
            Some(b) => {
                let value = match &b.summary.outcome {
                    huren_core::summary::Outcome::Lab(l) => format!("{} {}", l.value, l.unit),
                    huren_core::summary::Outcome::Exam(e) => {
                        format!("{}: {}", e.modality, e.impression)
                    }
                };
                table.push(vec![
                    asked.clone(),
                    item,
                    value,
                    format_time(b.summary.performed_at, offset),
                    b.summary.publisher.to_string(),
                    format!("{} v{}", b.summary.id, b.summary.version),
                    format!(
                        "REUSE ({})",
                        verdict_cell(b.verdict.as_ref()).trim_start_matches("recognised ")
                    ),
                ]);
            }
            None => table.push(vec![
                asked.clone(),
                item,
                "-".into(),
                String::new(),
                String::new(),
                String::new(),
                match &c.failed {
                    Some(f) => format!(
                        "order: the hub's result #{} failed verification (see below)",
                        f.position
                    ),
                    None => format!("order: {}", c.explanation),
                },
            ]),
        }
    }
    println!("Order check as of {}:", format_time(as_of, offset));
    print!("{}", table.render());
    let failed: Vec<_> = checks.iter().filter_map(|c| c.failed.clone()).collect();
    print_failed(&failed);
    let reusable = checks.iter().filter(|c| c.best.is_some()).count();
    println!(
        "{reusable} of {} item(s) have a recognised prior result; record what you do with `huren-agent decide`.",
        checks.len()
    );
    Ok(())
}

async fn run_decide(
    agent: &Agent,
    result: &str,
    version: u32,
    decision: DecisionArg,
    reason: Option<ReasonArg>,
    note: String,
    decision_id: Option<String>,
) -> anyhow::Result<()> {
    let (publisher, summary_id) = result.split_once('/').context(
        "--result must be PUBLISHER/SUMMARY_ID, e.g. shx-prov-people/LAB-20261118-00731-HGB",
    )?;
    let receipt = huren_core::receipt::Receipt {
        publisher: huren_core::identity::InstitutionId::parse(publisher)?,
        summary_id: huren_core::summary::SummaryId::parse(summary_id)?,
        version,
        body_sha256: [0; 32],
        accepted_at: UnixMillis(0),
    };
    let reason = reason.map(RetestReason::from);
    let decision = match decision {
        DecisionArg::Adopted if reason.is_some() => bail!("an adopted result takes no --reason"),
        DecisionArg::Adopted => Decision::Adopted,
        DecisionArg::Retested => Decision::Retested { reason, note },
    };
    let decision_id = decision_id.unwrap_or_else(|| {
        format!(
            "{}-{}-v{version}-{}",
            publisher,
            summary_id,
            UnixMillis::now().0 / 60_000
        )
    });
    let r = agent
        .record_decision(&decision_id, &receipt, &decision)
        .await?;
    println!(
        "Decision {decision_id} {} ({}).",
        if r.already_recorded {
            "was already recorded"
        } else {
            "recorded"
        },
        if r.result_was_recognised {
            "the result was recognised for this hospital"
        } else {
            "the result was not recognised for this hospital"
        }
    );
    Ok(())
}

async fn run_stats(
    agent: &Agent,
    from: Option<String>,
    to: Option<String>,
    by: GroupArg,
    csv: Option<PathBuf>,
    offset: time::UtcOffset,
) -> anyhow::Result<()> {
    let parse = |flag: &str, t: Option<String>| -> anyhow::Result<Option<UnixMillis>> {
        t.map(|t| crate::results::parse_time(flag, &t).map_err(anyhow::Error::msg))
            .transpose()
    };
    let to = parse("--to", to)?.unwrap_or_else(UnixMillis::now);
    let from = parse("--from", from)?.unwrap_or(UnixMillis(to.0 - 30 * 86_400_000));
    let group = match by {
        GroupArg::Item => GroupBy::Item,
        GroupArg::Member => GroupBy::Member,
        GroupArg::Day => GroupBy::Day,
        GroupArg::Month => GroupBy::Month,
    };
    let r = agent.statistics(from, to, group).await?;
    match csv {
        Some(path) if path.as_os_str() == "-" => print!("{}", stats_csv(&r)),
        Some(path) => {
            std::fs::write(&path, stats_csv(&r))
                .with_context(|| format!("writing {}", path.display()))?;
            println!("{} row(s) written to {}", r.rows.len() + 1, path.display());
        }
        None => {
            let mut t = Table::new([
                by.name(),
                "Name",
                "Queries",
                "Found",
                "Cross-member",
                "Adopted",
                "Re-tested",
                "Re-test reasons",
                "Avoided",
                "Saved (yuan)",
            ]);
            for (row, label) in rows_and_total(&r) {
                let reasons: Vec<String> = row
                    .retested_by_reason
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                t.push(vec![
                    row.key.clone(),
                    label.to_owned(),
                    row.queries.to_string(),
                    row.found.to_string(),
                    row.cross_member.to_string(),
                    row.adopted.to_string(),
                    row.retested.to_string(),
                    reasons.join(", "),
                    row.tests_avoided.to_string(),
                    yuan(row.money_saved_fen),
                ]);
            }
            println!(
                "Statistics from {} to {} (policy {}):",
                format_time(from, offset),
                format_time(to, offset),
                r.policy_version
            );
            print!("{}", t.render());
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
