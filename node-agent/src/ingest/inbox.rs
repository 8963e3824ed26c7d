//! The inbox folder the hospital's interface engine writes to, and where files go afterwards.
//!
//! - A file is taken once it has not changed for `settle` (or at once if `settle` is zero);
//!   names starting with `.` or ending in `.tmp`, `.part` or `.partial` are never taken, so an
//!   engine can write under such a name and rename when done. Files are taken oldest first
//!   (modification time, then name), so a correction comes after the result it corrects.
//! - Accepted: the file moves to `done/` (or is deleted when no `done` folder is configured),
//!   only after its results are flushed to the store.
//! - Refused: the file moves to `rejected/` with `<name>.reason.txt` beside it. When a file held
//!   several HL7 messages and only some were refused, each refused message is written to
//!   `rejected/<name>.msg<k>.hl7` with its own reason file, and the file goes to `done/`.
//!   Reason files name segments, fields and codes; never a patient's id or name.
//! - Held: a file that is not whole yet (MLLP frame without its end block, a last segment
//!   without terminator, batch counts that do not add up, JSON that ends early) or that changed
//!   while it was read stays in the inbox and is read again later; nothing of it is published
//!   in part. Once it has not changed for `incomplete_hold` and is still not whole, it moves to
//!   `rejected/` with the reason.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{FileOutcome, IngestError, Ingestor, Rejection};

/// Folder settings.
#[derive(Clone, Debug)]
pub struct InboxDirs {
    pub inbox: PathBuf,
    /// `None`: accepted files are deleted.
    pub done: Option<PathBuf>,
    pub rejected: PathBuf,
    pub settle: Duration,
    /// How long a file that is not whole may stay unchanged in the inbox before it is refused.
    pub incomplete_hold: Duration,
}

impl InboxDirs {
    /// Creates the folders if missing.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.inbox)?;
        std::fs::create_dir_all(&self.rejected)?;
        if let Some(d) = &self.done {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// Files ready to be read, oldest first.
    pub fn ready_files(&self) -> std::io::Result<Vec<PathBuf>> {
        let now = SystemTime::now();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.inbox)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(_) => continue, // vanished meanwhile
            };
            if !meta.is_file() {
                continue;
            }
            let path = entry.path();
            if !is_candidate(&path) {
                continue;
            }
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if !self.settle.is_zero()
                && now.duration_since(modified).unwrap_or_default() < self.settle
            {
                continue;
            }
            files.push((modified, path));
        }
        files.sort();
        Ok(files.into_iter().map(|(_, p)| p).collect())
    }
}

/// Whether a file name is one the inbox takes.
pub fn is_candidate(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        // Not UTF-8: still a file someone dropped; take it.
        return true;
    };
    !(name.starts_with('.')
        || name.ends_with(".tmp")
        || name.ends_with(".part")
        || name.ends_with(".partial")
        || name.ends_with(".reason.txt"))
}

/// Reads one inbox file, queues its results, then moves it away. Errors (store, signing,
/// file system) leave the file in the inbox to be tried again; so does `stop()` turning true
/// while it is read (shutdown in the middle of a big file): what was queued stays queued, and
/// reading the file again queues only the rest.
pub fn process_file(
    ingestor: &Ingestor,
    dirs: &InboxDirs,
    path: &Path,
    stop: &dyn Fn() -> bool,
) -> Result<FileOutcome, ProcessError> {
    let before = stamp(path)?;
    let bytes = std::fs::read(path).map_err(|e| ProcessError::Io(path.to_owned(), e))?;
    let held = |why: &str| FileOutcome {
        incomplete: Some(why.to_owned()),
        ..Default::default()
    };
    if stamp(path)? != before || before.0 != bytes.len() as u64 {
        return Ok(held(
            "the file changed while it was read (still being written); it is read again when it stops changing",
        ));
    }
    let mut outcome = ingestor.ingest_until(&bytes, None, stop)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    if let Some(why) = outcome.incomplete.clone() {
        let unchanged_for = SystemTime::now()
            .duration_since(before.1)
            .unwrap_or_default();
        if unchanged_for < dirs.incomplete_hold {
            return Ok(outcome);
        }
        let target = free_name(&dirs.rejected, &name);
        move_file(path, &target)?;
        write_reason(
            &target,
            &name,
            &[format!(
                "the file is not whole: {why}; it did not change for {} s (incomplete_hold_ms), so it is refused rather than published in part",
                unchanged_for.as_secs()
            )],
        )?;
        outcome.incomplete = None;
        outcome.rejected.push(super::Rejection {
            unit: "file".into(),
            reasons: vec![why],
            bytes: None,
        });
        outcome.units = 1;
        return Ok(outcome);
    }
    ingestor.store().flush().map_err(IngestError::from)?;
    if outcome.interrupted {
        return Ok(outcome);
    }
    if stamp(path)? != before {
        // Written to while it was being read: what was queued is whole messages (each is
        // checked), and reading the file again queues nothing twice.
        outcome.incomplete = Some(
            "the file changed while it was read (still being written); it is read again when it stops changing".into(),
        );
        return Ok(outcome);
    }
    if outcome.wholly_rejected() && outcome.queued == 0 {
        let reasons: Vec<String> = outcome
            .rejected
            .iter()
            .flat_map(|r| r.reasons.iter().cloned())
            .collect();
        let target = free_name(&dirs.rejected, &name);
        move_file(path, &target)?;
        write_reason(&target, &name, &reasons)?;
        return Ok(outcome);
    }
    write_refused_units(&dirs.rejected, &name, &bytes, &outcome.rejected)?;
    match &dirs.done {
        Some(done) => move_file(path, &free_name(done, &name))?,
        None => std::fs::remove_file(path).map_err(|e| ProcessError::Io(path.to_owned(), e))?,
    }
    Ok(outcome)
}

/// A file's size and modification time.
fn stamp(path: &Path) -> Result<(u64, SystemTime), ProcessError> {
    let meta = std::fs::metadata(path).map_err(|e| ProcessError::Io(path.to_owned(), e))?;
    Ok((
        meta.len(),
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// `dir/name`, or `dir/name.<n>` if that exists already (a file sent twice keeps both copies).
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| dir.join(format!("{name}.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn move_file(from: &Path, to: &Path) -> Result<(), ProcessError> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        // Another file system: copy, then remove.
        Err(_) => {
            std::fs::copy(from, to).map_err(|e| ProcessError::Io(to.to_owned(), e))?;
            std::fs::remove_file(from).map_err(|e| ProcessError::Io(from.to_owned(), e))
        }
    }
}

/// Writes the refused units of a file that was otherwise accepted into `dir`: each refused HL7
/// message as `<name>.msg<k>.hl7` with its own reason file; refused FHIR resources (which have
/// no bytes of their own) as one copy of the file `<name>` whose reason file names each
/// refused resource (the others were accepted; reading the file again queues only what is
/// new). The inbox and backfill both use this, so they judge a file the same way.
pub fn write_refused_units(
    dir: &Path,
    name: &str,
    file_bytes: &[u8],
    rejected: &[Rejection],
) -> Result<(), ProcessError> {
    let mut whole_file_reasons = Vec::new();
    for (k, r) in rejected.iter().enumerate() {
        match &r.bytes {
            Some(bytes) => {
                let target = free_name(dir, &format!("{name}.msg{}.hl7", k + 1));
                std::fs::write(&target, bytes).map_err(|e| ProcessError::Io(target.clone(), e))?;
                write_reason(&target, name, &r.reasons)?;
            }
            None => whole_file_reasons.extend(r.reasons.iter().cloned()),
        }
    }
    if !whole_file_reasons.is_empty() {
        whole_file_reasons.push(
            "the file's other resources were accepted; once this is corrected, the whole file can be sent again (what was accepted is not published twice)"
                .into(),
        );
        let target = free_name(dir, name);
        std::fs::write(&target, file_bytes).map_err(|e| ProcessError::Io(target.clone(), e))?;
        write_reason(&target, name, &whole_file_reasons)?;
    }
    Ok(())
}

/// Writes `<target>.reason.txt`.
pub fn write_reason(target: &Path, original: &str, reasons: &[String]) -> Result<(), ProcessError> {
    let mut path = target.as_os_str().to_owned();
    path.push(".reason.txt");
    let path = PathBuf::from(path);
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut text = format!(
        "Huren node agent: the results in this file were not published.\n\
         File: {original}\nRefused at: {at}\nReasons:\n"
    );
    for r in reasons {
        text.push_str("  - ");
        text.push_str(&r.replace('\n', "\n    "));
        text.push('\n');
    }
    text.push_str(
        "\nWhat to do: correct the mapping file or the export, then move the file back into the \
         inbox. Results it shares with files already accepted are not published twice.\n",
    );
    std::fs::write(&path, text).map_err(|e| ProcessError::Io(path, e))
}
