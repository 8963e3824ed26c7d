//! The daemon-side commands of `huren-agent` (`backfill`, `outbox`, `fetch-report`), as library
//! functions that return the text to print, so the binary stays thin and tests can call them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::Notify;

use huren_core::identity::InstitutionId;
use huren_core::summary::{SummaryId, UnixMillis};

use crate::backfill::{BackfillError, ingest_dir, publish_all};
use crate::client::{Agent, Asking};
use crate::config::AgentConfig;
use crate::credentials::Credentials;
use crate::daemon::{DaemonError, ingestor, open_store};
use crate::error::AgentError;
use crate::outbox::Publisher;
use crate::repository::{FetchError, PeerIdentity, ReportRequest, fetch_report};
use crate::store::StoreError;
use crate::table::{Table, format_time};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backfill(#[from] BackfillError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// `huren-agent backfill DIR`: ingest with a progress bar, then publish (unless `publish` is
/// false). `stop` interrupts between files and between publish rounds; run again to resume.
pub async fn backfill(
    config: &AgentConfig,
    dir: &Path,
    rejected: Option<PathBuf>,
    publish: bool,
    show_progress: bool,
    stop: Arc<AtomicBool>,
) -> Result<String, CommandError> {
    let credentials = Credentials::load(config)?;
    let store = open_store(config)?;
    let ingestor = ingestor(config, &credentials, store.clone())?;
    let rejected = rejected.unwrap_or_else(|| {
        let mut name = dir.file_name().unwrap_or_default().to_owned();
        name.push(".rejected");
        dir.with_file_name(name)
    });
    let (dir_owned, rejected_owned, stop_ingest) = (dir.to_owned(), rejected.clone(), stop.clone());
    let report = tokio::task::spawn_blocking(move || {
        ingest_dir(
            &ingestor,
            &dir_owned,
            &rejected_owned,
            show_progress,
            &stop_ingest,
        )
    })
    .await
    .map_err(|e| CommandError::Usage(format!("backfill task: {e}")))??;
    let secs = report.elapsed.as_secs_f64().max(0.001);
    // Files read in this run (not those left after an interruption).
    let new_files = report.accepted_files + report.rejected_files;
    let mut out = format!(
        "Backfill of {}: {} files ({} done in an earlier run), {} accepted, {} refused (copied to {} with reasons); {} messages or resources of accepted files refused (written there apart).\n\
         {} results queued, {} unchanged results skipped, {} not published on purpose.\n\
         Ingested {} files ({:.1} MB) in {:.1} s: {:.0} files/s, {:.0} results/s.\n",
        dir.display(),
        report.files,
        report.already_done,
        report.accepted_files,
        report.rejected_files,
        rejected.display(),
        report.refused_units,
        report.queued,
        report.unchanged,
        report.skipped,
        new_files,
        report.bytes as f64 / 1e6,
        secs,
        new_files as f64 / secs,
        report.queued as f64 / secs,
    );
    if report.interrupted {
        out.push_str("Interrupted: run the same command again to resume where it stopped.\n");
        return Ok(out);
    }
    if publish {
        let publisher = Publisher::new(
            store.clone(),
            credentials.hub_channel(config)?,
            config.outbox.clone(),
            Arc::new(Notify::new()),
        )
        .with_log(match &config.log {
            Some(l) => Some(Arc::new(l.open_witness(&config.institution)?)),
            None => None,
        });
        let started = std::time::Instant::now();
        let n = publish_all(
            &publisher,
            Duration::from_millis(config.outbox.initial_backoff_ms),
            Duration::from_millis(config.outbox.max_backoff_ms),
            show_progress,
            stop,
        )
        .await?;
        let counts = store.counts();
        out.push_str(&format!(
            "Published {n} results in {:.1} s; outbox now: {} pending, {} published, {} dead letters.\n",
            started.elapsed().as_secs_f64(),
            counts.pending,
            counts.published,
            counts.dead
        ));
        if counts.pending > 0 {
            out.push_str(
                "Results are still queued: run `huren-agent run` (or this command again) to publish them.\n",
            );
        }
    } else {
        out.push_str("Not published (--no-publish): `huren-agent run` publishes the queue.\n");
    }
    store.flush()?;
    Ok(out)
}

/// `huren-agent outbox`: outbox sizes and dead letters; `retry_dead` queues them again.
pub fn outbox(
    config: &AgentConfig,
    retry_dead: bool,
    offset: time::UtcOffset,
) -> Result<String, CommandError> {
    let store = open_store(config)?;
    let mut out = String::new();
    if retry_dead {
        let n = store.retry_dead_letters()?;
        out.push_str(&format!(
            "{n} dead letter(s) queued again; the running agent publishes them.\n"
        ));
    }
    let counts = store.counts();
    out.push_str(&format!(
        "Outbox: {} pending, {} published, {} dead letter(s).\n",
        counts.pending, counts.published, counts.dead
    ));
    let dead = store.dead_letters()?;
    if !dead.is_empty() {
        let mut table = Table::new(["Summary", "Version", "Refused at", "Reason"]);
        for d in dead {
            table.push(vec![
                d.summary_id,
                d.version.to_string(),
                format_time(d.at, offset),
                d.reason,
            ]);
        }
        out.push_str(&table.render());
        out.push_str("Fix the cause (certificate, catalogue, version order), then run `huren-agent outbox --retry-dead`.\n");
    }
    Ok(out)
}

/// Where the expected digest of a report comes from.
pub enum Expected {
    /// Given by the caller (64 hex characters).
    Sha256(String),
    /// From the verified summary in the patient's history at the hub, asked as `asking` says.
    Patient {
        id_type: String,
        id: String,
        asking: Asking,
    },
}

/// `huren-agent fetch-report`: fetches a report from a publisher's repository, checks it against
/// the signed summary and writes it to `out`.
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    config: AgentConfig,
    from: &str,
    publisher: &str,
    summary_id: &str,
    version: u32,
    expected: Expected,
    out: &Path,
    offset: time::UtcOffset,
) -> Result<String, CommandError> {
    let publisher = InstitutionId::parse(publisher)
        .map_err(|e| CommandError::Usage(format!("--publisher: {e}")))?;
    let summary_id = SummaryId::parse(summary_id)
        .map_err(|e| CommandError::Usage(format!("--summary-id: {e}")))?;
    let credentials = Credentials::load(&config)?;
    let (expected_sha256, version, described) = match expected {
        Expected::Sha256(hex_digest) => {
            let mut d = [0u8; 32];
            hex::decode_to_slice(hex_digest.trim(), &mut d)
                .map_err(|_| CommandError::Usage("--sha256 must be 64 hex characters".into()))?;
            (d, version, "the given digest".to_owned())
        }
        Expected::Patient {
            id_type,
            id,
            asking,
        } => {
            let agent = Agent::connect(config).await?;
            let pseudonym = agent.pseudonymise(&id_type, &id)?;
            // With versions, so an older version's report can be checked too.
            let history = agent
                .history(&asking, &pseudonym, UnixMillis(0), true)
                .await?;
            let found = history
                .results
                .into_iter()
                .filter(|r| r.summary.publisher == publisher && r.summary.id == summary_id)
                .filter(|r| version == 0 || r.summary.version == version)
                .max_by_key(|r| r.summary.version)
                .ok_or_else(|| {
                    CommandError::Usage(format!(
                        "the patient's history at the hub has no result {summary_id}{} of {publisher}",
                        if version == 0 {
                            String::new()
                        } else {
                            format!(" version {version}")
                        }
                    ))
                })?;
            (
                found.summary.report.sha256,
                found.summary.version,
                format!(
                    "the signed summary (version {}, verified, accepted by the hub {})",
                    found.summary.version,
                    format_time(found.receipt.accepted_at, offset)
                ),
            )
        }
    };
    let me = PeerIdentity {
        ca: &credentials.ca,
        cert_pem: &credentials.tls_cert_pem,
        key_pem: &credentials.tls_key_pem,
        institution: &credentials.institution,
    };
    let report = fetch_report(
        &me,
        &ReportRequest {
            addr: from,
            publisher: &publisher,
            summary_id: &summary_id,
            version,
            expected_sha256,
        },
    )
    .await?;
    std::fs::write(out, &report.content).map_err(|e| CommandError::Io(out.to_owned(), e))?;
    Ok(format!(
        "Report of {summary_id} version {} from {publisher}: {} bytes, {}; its SHA-256 matches {described}. Written to {}.\n",
        report.version,
        report.content.len(),
        if report.media_type.is_empty() {
            "no media type"
        } else {
            &report.media_type
        },
        out.display()
    ))
}
