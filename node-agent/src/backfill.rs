//! `huren-agent backfill DIR`: loads years of exported history (HL7 v2 and FHIR files, in any
//! folder structure) into the outbox, then publishes it, with progress bars.
//!
//! - Files are read in path order (archives are usually laid out by date), each exactly like an
//!   inbox file, but left where they are: refused files are copied to the rejected folder with
//!   a reason file, and the refused messages or resources of accepted files are written there
//!   apart (the inbox's own [`write_refused_units`]).
//! - **Resumable**: each accepted file is recorded in the store (key: relative path, size and
//!   modification time) in the same transaction as its results, so after an interruption
//!   (Ctrl-C, a crash, a reboot) the next run skips what was done. Wholly refused files are
//!   not recorded, so they are read again once the mapping is fixed. Even a file read twice
//!   queues nothing twice (results are recognised by content).
//! - The store is flushed every [`FLUSH_EVERY`] files and at the end; a crash loses at most
//!   the unflushed records, which the next run simply does again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::ingest::inbox::{write_reason, write_refused_units};
use crate::ingest::{IngestError, Ingestor, inbox::is_candidate};
use crate::outbox::{Backoff, Publisher};
use crate::store::StoreError;

/// Files between two flushes of the store.
pub const FLUSH_EVERY: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a backfill run did.
#[derive(Clone, Debug, Default)]
pub struct BackfillReport {
    pub files: usize,
    /// Files done in an earlier run.
    pub already_done: usize,
    pub accepted_files: usize,
    pub rejected_files: usize,
    /// Messages or resources refused in files otherwise accepted.
    pub refused_units: usize,
    pub queued: usize,
    pub unchanged: usize,
    pub skipped: usize,
    pub bytes: u64,
    pub interrupted: bool,
    pub elapsed: Duration,
}

/// Every candidate file under `dir`, in path order.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>, BackfillError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| BackfillError::Io(d.clone(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BackfillError::Io(d.clone(), e))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| BackfillError::Io(path.clone(), e))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() && is_candidate(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The resume key of a file: relative path, size, modification time.
fn file_key(root: &Path, path: &Path, meta: &std::fs::Metadata) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mtime = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("backfill:{}:{}:{}", rel.display(), meta.len(), mtime)
}

fn bar(total: u64, show: bool, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Reads every file under `dir` into the outbox. `stop` interrupts between files.
pub fn ingest_dir(
    ingestor: &Ingestor,
    dir: &Path,
    rejected: &Path,
    show_progress: bool,
    stop: &AtomicBool,
) -> Result<BackfillReport, BackfillError> {
    let started = Instant::now();
    std::fs::create_dir_all(rejected).map_err(|e| BackfillError::Io(rejected.to_owned(), e))?;
    let files = list_files(dir)?;
    let mut report = BackfillReport {
        files: files.len(),
        ..Default::default()
    };
    let progress = bar(
        files.len() as u64,
        show_progress,
        "{spinner} ingest  [{elapsed_precise}] [{wide_bar}] {pos}/{len} files ({per_sec}, eta {eta}) {msg}",
    );
    let store = ingestor.store();
    let mut since_flush = 0;
    for path in &files {
        if stop.load(Ordering::Relaxed) {
            report.interrupted = true;
            break;
        }
        let meta = std::fs::metadata(path).map_err(|e| BackfillError::Io(path.clone(), e))?;
        let key = file_key(dir, path, &meta);
        if store.file_ingested(&key)? {
            report.already_done += 1;
            progress.inc(1);
            continue;
        }
        let bytes = std::fs::read(path).map_err(|e| BackfillError::Io(path.clone(), e))?;
        report.bytes += bytes.len() as u64;
        let outcome =
            ingestor.ingest_until(&bytes, Some(&key), &|| stop.load(Ordering::Relaxed))?;
        if outcome.interrupted {
            // Ctrl-C in the middle of a big file: what was queued stays, the file is not
            // counted or marked, and the next run reads it again (queuing only the rest).
            report.queued += outcome.queued;
            report.interrupted = true;
            break;
        }
        report.queued += outcome.queued;
        report.unchanged += outcome.duplicates;
        report.skipped += outcome.skipped.len();
        let rel = path.strip_prefix(dir).unwrap_or(path);
        let flat = rel.to_string_lossy().replace(['/', '\\'], "__");
        if outcome.incomplete.is_none() && !outcome.wholly_rejected() {
            // Accepted, perhaps with some messages or resources refused: exactly as the inbox
            // does, each refused one is written apart with its reason.
            report.accepted_files += 1;
            if !outcome.rejected.is_empty() {
                report.refused_units += outcome.rejected.len();
                write_refused_units(rejected, &flat, &bytes, &outcome.rejected).map_err(|e| {
                    BackfillError::Io(rejected.to_owned(), std::io::Error::other(e.to_string()))
                })?;
                tracing::warn!(file = %rel.display(), refused = outcome.rejected.len(), "some messages refused; written to the rejected folder with reasons");
            }
        } else {
            report.rejected_files += 1;
            let target = rejected.join(&flat);
            std::fs::write(&target, &bytes).map_err(|e| BackfillError::Io(target.clone(), e))?;
            let reasons: Vec<String> = outcome
                .incomplete
                .iter()
                .map(|why| format!("the file is not whole: {why}"))
                .chain(
                    outcome
                        .rejected
                        .iter()
                        .flat_map(|r| r.reasons.iter().cloned()),
                )
                .collect();
            write_reason(&target, &rel.to_string_lossy(), &reasons).map_err(|e| {
                BackfillError::Io(target.clone(), std::io::Error::other(e.to_string()))
            })?;
            tracing::warn!(file = %rel.display(), "refused; copied to the rejected folder with a reason file");
        }
        since_flush += 1;
        if since_flush >= FLUSH_EVERY {
            store.flush()?;
            since_flush = 0;
        }
        progress.set_message(format!("{} results queued", report.queued));
        progress.inc(1);
    }
    store.flush()?;
    progress.finish();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Publishes the outbox until it is empty, retrying with back-off while the hub is
/// unreachable; stops early when `stop` is set. Returns how many were published (including
/// ones the hub already held).
pub async fn publish_all(
    publisher: &Publisher,
    initial_backoff: Duration,
    max_backoff: Duration,
    show_progress: bool,
    stop: Arc<AtomicBool>,
) -> Result<usize, StoreError> {
    let store = publisher.store();
    let total = store.counts().pending as u64;
    let progress = bar(
        total,
        show_progress,
        "{spinner} publish [{elapsed_precise}] [{wide_bar}] {pos}/{len} results ({per_sec}, eta {eta}) {msg}",
    );
    let mut backoff = Backoff::new(initial_backoff, max_backoff);
    let mut done = 0usize;
    loop {
        if stop.load(Ordering::Relaxed) || store.counts().pending == 0 {
            break;
        }
        let before = done;
        let pass = publisher
            .publish_pass_with(|c| {
                progress.set_position((before + c.published + c.already_stored + c.dead) as u64)
            })
            .await?;
        let n = pass.published + pass.already_stored + pass.dead;
        done += n;
        progress.set_position(done as u64);
        if pass.failed > 0 {
            let delay = backoff.next_delay();
            progress.set_message(format!(
                "hub unreachable, retry {} in {:.1}s",
                backoff.attempts(),
                delay.as_secs_f32()
            ));
            tokio::time::sleep(delay).await;
        } else if n > 0 {
            backoff.reset();
            progress.set_message(String::new());
        }
    }
    progress.finish();
    Ok(done)
}
