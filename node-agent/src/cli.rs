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
    /// Recompute the statistics of a period from the hub's log and compare them with the
    /// hub's (`stats`), figure by figure. Reads every entry of the log (decisions and
    /// accesses whole, the rest as hashes) and checks the tree's root against a checkpoint.
    /// Exits non-zero when a figure differs. Administrators only; needs [log]. Give a period
    /// that has ended: queries answered while the audit runs may count in one and not the
    /// other.
    AuditStats {
        /// Start of the period (RFC 3339); default 30 days ago.
        #[arg(long)]
        from: Option<String>,
        /// End of the period (RFC 3339); default now.
        #[arg(long)]
        to: Option<String>,
        /// How to group the figures.
        #[arg(long, value_enum, default_value = "item")]
        by: GroupArg,
    },
    /// Replay the hub's verdicts on a patient's results: for each result shown (or the one
    /// named), fetch the policy version its verdict names from the hub's log (with its
    /// inclusion proof), judge the result again with the same rules, and say whether the hub
    /// judged correctly. Exits non-zero when a verdict differs or cannot be replayed. Needs
    /// [log]. The lookup is a History query (with earlier versions), logged like any other.
    VerifyVerdict {
        #[command(flatten)]
        patient: Patient,
        /// Only this result: publisher/summary-id.
        #[arg(long)]
        result: Option<String>,
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
    /// Write a portable proof of one of a patient's results (huren-proof/1 JSON): the signed
    /// summary, its certificate, its inclusion proof and the (cosigned) checkpoint, checkable
    /// offline by anyone with the alliance CA and the log's key (`verify-file`). Needs [log].
    /// The lookup is a History query, logged like any other.
    ExportProof {
        #[command(flatten)]
        patient: Patient,
        /// The result: publisher/summary-id, optionally @version (default the latest).
        #[arg(long)]
        result: String,
        /// Where to write it; default standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a huren-proof/1 file offline: signature, certificate, the leaf's inclusion in the
    /// log, the checkpoint's signature, and witness cosignatures if asked. Needs no
    /// configuration and no network.
    VerifyFile {
        /// The proof file.
        file: PathBuf,
        /// The alliance CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// The log's verifier key (`huren-hub --print-log-key`).
        #[arg(long)]
        log_key: String,
        /// A trusted witness's verifier key (repeat for several).
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// How many of the witnesses must have cosigned (default: all given).
        #[arg(long)]
        quorum: Option<usize>,
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
    /// Serve the web app of [web] (without the inbox and publisher; `run` serves it too when
    /// [web] is configured). Needs [store], where the accounts are. Stops on Ctrl-C / SIGTERM.
    Serve,
    /// Web app accounts (kept in [store]; stop `huren-agent run`/`serve` first: one process
    /// opens the store at a time).
    #[command(subcommand)]
    User(UserCommand),
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

/// `huren-agent user …`: the web app's local accounts. Passwords are read from standard input
/// (one line), never from the command line.
#[derive(Subcommand)]
pub enum UserCommand {
    /// Add an account; its password is read from standard input.
    Add {
        /// Login name.
        username: String,
        /// The staff id the hub records as the requester of this person's queries (an id,
        /// never a name; A-Z a-z 0-9 . _ : @ -).
        #[arg(long)]
        staff_id: String,
        /// clinician, referral-desk, quality-office or administrator.
        #[arg(long)]
        role: String,
    },
    /// Disable an account (its sessions end at their next request).
    Disable { username: String },
    /// Enable a disabled account again.
    Enable { username: String },
    /// Set a new password (read from standard input) and clear the lock-out.
    Reset { username: String },
    /// List the accounts.
    List,
}

fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprint!("Password (shown as you type; or pipe it in): ");
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn user_command(config: &AgentConfig, command: UserCommand) -> anyhow::Result<()> {
    use crate::web::accounts;
    let store = crate::daemon::open_store(config)?;
    match command {
        UserCommand::Add {
            username,
            staff_id,
            role,
        } => {
            let password = read_password()?;
            accounts::add(&store, &username, &staff_id, &role, &password)?;
            println!("Account {username} added (staff id {staff_id}, role {role}).");
        }
        UserCommand::Disable { username } => {
            accounts::set_disabled(&store, &username, true)?;
            println!("Account {username} disabled.");
        }
        UserCommand::Enable { username } => {
            accounts::set_disabled(&store, &username, false)?;
            println!("Account {username} enabled.");
        }
        UserCommand::Reset { username } => {
            let password = read_password()?;
            accounts::reset(&store, &username, &password)?;
            println!("Password of {username} set; lock-out cleared.");
        }
        UserCommand::List => {
            let mut t = Table::new(["User", "Staff id", "Role", "State", "Failures"]);
            for a in accounts::list(&store)? {
                t.push(vec![
                    a.username,
                    a.staff_id,
                    a.role,
                    if a.disabled { "disabled" } else { "active" }.into(),
                    a.failures.to_string(),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
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
        NodeCommand::Serve => crate::web::run(config, shutdown).await?,
        NodeCommand::User(c) => user_command(&config, c)?,
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

pub fn yuan(fen: u64) -> String {
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

/// The statistics as CSV (RFC 4180), as `huren-agent stats --csv` writes them and the web app
/// offers them.
pub fn stats_csv(r: &crate::client::Statistics) -> String {
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
    config: Option<&Path>,
    asking: Asking,
    command: Command,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Command::VerifyFile {
        file,
        ca,
        log_key,
        witnesses,
        quorum,
    } = &command
    {
        return verify_file(file, ca, log_key, witnesses, *quorum);
    }
    let config = config.ok_or_else(|| {
        anyhow::anyhow!("give the agent's configuration with --config (or HUREN_AGENT_CONFIG)")
    })?;
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
        // Handled above, before the configuration is read.
        Command::VerifyFile { .. } => {}
        Command::ExportProof {
            patient,
            result,
            out,
        } => export_proof(&agent, &asking, &patient, &result, out.as_deref()).await?,
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
        Command::AuditStats { from, to, by } => run_audit_stats(&agent, from, to, by).await?,
        Command::VerifyVerdict { patient, result } => {
            run_verify_verdict(&agent, &asking, &patient, result.as_deref(), offset).await?
        }
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

/// The period of `stats` and `audit-stats`: `--to` default now, `--from` default 30 days
/// before it.
fn period(from: Option<String>, to: Option<String>) -> anyhow::Result<(UnixMillis, UnixMillis)> {
    let parse = |flag: &str, t: Option<String>| -> anyhow::Result<Option<UnixMillis>> {
        t.map(|t| crate::results::parse_time(flag, &t).map_err(anyhow::Error::msg))
            .transpose()
    };
    let to = parse("--to", to)?.unwrap_or_else(UnixMillis::now);
    let from = parse("--from", from)?.unwrap_or(UnixMillis(to.0 - 30 * 86_400_000));
    Ok((from, to))
}

fn group_by(by: GroupArg) -> GroupBy {
    match by {
        GroupArg::Item => GroupBy::Item,
        GroupArg::Member => GroupBy::Member,
        GroupArg::Day => GroupBy::Day,
        GroupArg::Month => GroupBy::Month,
    }
}

/// `huren-agent audit-stats`: the hub's figures against the log's, non-zero exit on a
/// difference.
async fn run_audit_stats(
    agent: &Agent,
    from: Option<String>,
    to: Option<String>,
    by: GroupArg,
) -> anyhow::Result<()> {
    let (from, to) = period(from, to)?;
    let audit = agent.audit_statistics(from, to, group_by(by)).await?;
    println!(
        "Read the hub's whole log ({} entries); its root matches the checkpoint.",
        audit.tree_size
    );
    if let Some(v) = &audit.policy_version {
        println!("Newest policy in the log: {v}");
    }
    let (rows, total) = &audit.recomputed;
    println!(
        "Recomputed from the log: {} row(s); total {} queries, {} found, {} cross-member, {} adopted, {} re-tested, {} avoided, {} yuan saved.",
        rows.len(),
        total.queries,
        total.found,
        total.cross_member,
        total.adopted,
        total.retested,
        total.tests_avoided,
        yuan(total.money_saved_fen)
    );
    if audit.older_format > 0 {
        println!(
            "Note: {} decision or access entr(ies) of the period are in a leaf format before 0x04 and cannot be recomputed.",
            audit.older_format
        );
    }
    for u in &audit.unreadable {
        println!("Unreadable: {u}");
    }
    if audit.differences.is_empty() {
        println!(
            "OK: every figure the hub gives (stats --by {}) is the log's.",
            by.name()
        );
        return Ok(());
    }
    eprintln!("!!! THE HUB'S STATISTICS DIFFER FROM ITS LOG !!!");
    for d in &audit.differences {
        eprintln!("  - {d}");
    }
    bail!("{} figure(s) differ from the log", audit.differences.len())
}

/// `huren-agent verify-verdict`: replays each shown result's verdict; non-zero exit when one
/// differs or cannot be replayed.
async fn run_verify_verdict(
    agent: &Agent,
    asking: &Asking,
    patient: &Patient,
    only: Option<&str>,
    offset: time::UtcOffset,
) -> anyhow::Result<()> {
    let (publisher, summary_id) = match only {
        Some(r) => {
            let (p, id) = r.split_once('/').ok_or_else(|| {
                anyhow::anyhow!("--result must be publisher/summary-id, got {r:?}")
            })?;
            (Some(p), Some(id))
        }
        None => (None, None),
    };
    if agent.log().is_none() {
        bail!(
            "verify-verdict needs the hub's log checked: add [log] verifier_key to the configuration"
        );
    }
    let pseudonym = patient_pseudonym(agent, patient)?;
    let answer = agent
        .history(asking, &pseudonym, UnixMillis(0), true)
        .await?;
    let mut shown: Vec<(&crate::verify::VerifiedResult, bool)> = Vec::new();
    for r in &answer.results {
        shown.push((r, true));
        shown.extend(r.earlier.iter().map(|e| (e, false)));
    }
    shown.retain(|(r, _)| {
        publisher.is_none_or(|p| r.receipt.publisher.as_str() == p)
            && summary_id.is_none_or(|id| r.receipt.summary_id.as_str() == id)
    });
    if shown.is_empty() {
        bail!(
            "no result to replay: the hub showed none for this patient{}",
            match only {
                Some(r) => format!(" named {r}"),
                None => String::new(),
            }
        );
    }
    let mut wrong = 0;
    for (r, latest) in shown {
        let name = format!(
            "{}/{} v{}",
            r.receipt.publisher, r.receipt.summary_id, r.receipt.version
        );
        let given = crate::table::verdict_cell(r.verdict.as_ref());
        let basis = r
            .verdict
            .as_ref()
            .and_then(|v| v.basis.as_ref())
            .map(|b| {
                format!(
                    "policy {} (log entry {}), judged at {}",
                    b.policy_version,
                    b.policy_index,
                    format_time(b.as_of, offset)
                )
            })
            .unwrap_or_else(|| "no policy named".into());
        match agent.replay_verdict(r, latest).await? {
            Ok(replayed) if replayed.differences.is_empty() => {
                println!("{name}: {given}; {basis}: replayed, the same.");
            }
            Ok(replayed) => {
                wrong += 1;
                println!("{name}: {given}; {basis}: THE HUB JUDGED WRONGLY:");
                for d in &replayed.differences {
                    println!("  - {d}");
                }
            }
            Err(e) => {
                wrong += 1;
                println!("{name}: {given}: CANNOT BE REPLAYED: {e}");
            }
        }
    }
    if wrong > 0 {
        bail!("{wrong} verdict(s) differ from the logged policy's or cannot be replayed");
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

/// `export-proof`: finds the result in the patient's history (verified, with its proof) and
/// writes its huren-proof/1 file.
async fn export_proof(
    agent: &Agent,
    asking: &Asking,
    patient: &Patient,
    result: &str,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let (key, version) = match result.split_once('@') {
        Some((k, v)) => (
            k,
            Some(v.parse::<u32>().map_err(|_| {
                anyhow::anyhow!("--result: the version after @ must be a number, got {v:?}")
            })?),
        ),
        None => (result, None),
    };
    let (publisher, summary_id) = key.split_once('/').ok_or_else(|| {
        anyhow::anyhow!("--result must be publisher/summary-id[@version], got {result:?}")
    })?;
    if agent.log().is_none() {
        bail!(
            "export-proof needs the hub's log checked: add [log] verifier_key to the configuration"
        );
    }
    let pseudonym = patient_pseudonym(agent, patient)?;
    let answer = agent
        .history(asking, &pseudonym, UnixMillis(0), version.is_some())
        .await?;
    let found = answer
        .results
        .iter()
        .flat_map(|r| std::iter::once(r).chain(r.earlier.iter()))
        .find(|r| {
            r.receipt.publisher.as_str() == publisher
                && r.receipt.summary_id.as_str() == summary_id
                && version.is_none_or(|v| r.receipt.version == v)
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{result} is not among this patient's results at the hub (check the publisher, the summary id and the version)"
            )
        })?;
    let file = crate::proof_file::export(found)?;
    let text = serde_json::to_string_pretty(&file)? + "\n";
    match out {
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "Wrote the proof of {} v{} to {}; check it with huren-agent verify-file.",
                key,
                found.receipt.version,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `verify-file`: the offline check of a huren-proof/1 file.
fn verify_file(
    file: &Path,
    ca: &Path,
    log_key: &str,
    witnesses: &[String],
    quorum: Option<usize>,
) -> anyhow::Result<()> {
    use crate::proof_file::{MAX_FILE_BYTES, Trust, verify};
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
    };
    let ca = huren_core::trust::AllianceCa::from_pem(&String::from_utf8_lossy(&read(ca)?))
        .map_err(|e| anyhow::anyhow!("--ca: {e}"))?;
    let log = huren_core::checkpoint::NoteVerifier::parse(log_key.trim())
        .map_err(|e| anyhow::anyhow!("--log-key: {e}"))?;
    let witnesses = witnesses
        .iter()
        .map(|w| {
            huren_core::cosignature::CosignerKey::parse(w.trim())
                .map_err(|e| anyhow::anyhow!("--witness {w:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let quorum = quorum.unwrap_or(witnesses.len());
    if quorum > witnesses.len() {
        bail!(
            "--quorum {quorum} is more than the {} witnesses given",
            witnesses.len()
        );
    }
    let bytes = read(file)?;
    if bytes.len() > MAX_FILE_BYTES {
        bail!(
            "{}: over {MAX_FILE_BYTES} bytes; not a proof file",
            file.display()
        );
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text; not a proof file", file.display()))?;
    let proven = verify(
        &text,
        &Trust {
            ca,
            log,
            witnesses,
            quorum,
        },
    )
    .map_err(|e| anyhow::anyhow!("{}: NOT PROVEN: {e}", file.display()))?;
    let s = &proven.summary;
    println!(
        "PROVEN: {} v{} ({} {}), signed by {}, accepted by the hub at {}, entry {} of the log of {} entries{}.",
        s.result_key(),
        s.version,
        s.item.code,
        s.item.display,
        s.publisher,
        format_time(proven.accepted_at, time::UtcOffset::UTC),
        proven.log_index,
        proven.tree_size,
        if proven.cosigned_by.is_empty() {
            String::new()
        } else {
            format!(
                ", cosigned by {}",
                proven
                    .cosigned_by
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
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
