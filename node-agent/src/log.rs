//! The agent as a witness of the hub's log.
//!
//! With `[log] verifier_key` configured, the agent checks every log proof the hub gives it:
//! each receipt's and each returned result's inclusion proof against a checkpoint signed by the
//! hub's log key, and each new checkpoint's consistency with the last one it saw (kept in
//! `<state_dir>/checkpoint`). Every entry it relied on (its own publications, results it was
//! shown) is appended to `<state_dir>/receipts` (one `index hex(leaf)` line each), so
//! `huren-agent audit` can re-check all of them against the latest checkpoint. A hub that
//! rewrites, drops or reorders history, or shows different trees to different members, fails
//! one of these checks: the agent then refuses the answer with [`AgentError::Log`].

use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

use huren_core::checkpoint::{Checkpoint, NoteVerifier, open_checkpoint};
use huren_core::cosignature::{CosignerKey, cosigned_by};
use huren_core::logentry::{LogProof, verify_leaf};
use huren_core::merkle::{leaf_hash, verify_consistency, verify_inclusion};

use crate::error::AgentError;
use crate::hub::{HubApi, SentProof};

/// File of the last checkpoint seen, in the state folder.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// File of the log entries this agent relied on, in the state folder.
pub const RECEIPTS_FILE: &str = "receipts";
/// File of every inconsistency this agent caught, one line each (time in ms, then the
/// problem): once it exists the web app shows a red banner on every page.
pub const ALARMS_FILE: &str = "alarms";

/// The last checkpoint seen, opened, with its signed note.
#[derive(Clone, Debug)]
pub struct Seen {
    pub checkpoint: Checkpoint,
    pub note: String,
}

/// The agent's view of the hub's log.
#[derive(Debug)]
pub struct LogWitness {
    verifier: NoteVerifier,
    dir: PathBuf,
    last: Mutex<Option<Seen>>,
    /// Witnesses whose cosignatures count, and how many a checkpoint needs (0: none).
    witnesses: Vec<CosignerKey>,
    quorum: usize,
}

fn log_err(what: impl std::fmt::Display) -> AgentError {
    AgentError::Log(what.to_string())
}

fn io_err(path: &Path, e: std::io::Error) -> AgentError {
    AgentError::Setup(format!("log state {}: {e}", path.display()))
}

/// A proof the hub sent for an entry the agent relies on: one that is missing (`missing` says
/// what came without it) or does not read is the hub's log failing verification.
pub fn required_proof(proof: SentProof, missing: &str) -> Result<LogProof, AgentError> {
    proof.map_err(log_err)?.ok_or_else(|| log_err(missing))
}

/// What `huren-agent audit` found.
#[derive(Clone, Debug)]
pub struct AuditReport {
    /// The checkpoint this agent had before the audit.
    pub before: Option<Checkpoint>,
    /// The hub's latest checkpoint.
    pub now: Checkpoint,
    /// Log entries re-checked.
    pub entries_checked: usize,
    /// Every inconsistency found; empty when the log is consistent.
    pub problems: Vec<String>,
}

impl LogWitness {
    /// Opens the witness state in `dir` (created if missing). A stored checkpoint that no
    /// longer verifies under `verifier_key` is an error.
    pub fn open(verifier_key: &str, dir: &Path) -> Result<Self, AgentError> {
        let verifier = NoteVerifier::parse(verifier_key.trim())
            .map_err(|e| AgentError::Setup(format!("[log] verifier_key: {e}")))?;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let path = dir.join(CHECKPOINT_FILE);
        let last = match std::fs::read_to_string(&path) {
            Ok(note) => {
                let checkpoint =
                    open_checkpoint(&note, &verifier, verifier.name()).map_err(|e| {
                        log_err(format!(
                            "the stored checkpoint {} does not verify: {e}",
                            path.display()
                        ))
                    })?;
                Some(Seen { checkpoint, note })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&path, e)),
        };
        Ok(Self {
            verifier,
            dir: dir.to_owned(),
            last: Mutex::new(last),
            witnesses: Vec::new(),
            quorum: 0,
        })
    }

    /// Accepts a checkpoint only with the cosignatures of at least `quorum` of `witnesses`.
    pub fn with_witnesses(
        mut self,
        witnesses: Vec<CosignerKey>,
        quorum: usize,
    ) -> Result<Self, AgentError> {
        self.witnesses = witnesses;
        self.quorum = quorum;
        Ok(self)
    }

    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// The last checkpoint this agent saw.
    pub async fn last(&self) -> Option<Seen> {
        self.last.lock().await.clone()
    }

    /// Opens a checkpoint signed by the hub's log key and, with witnesses configured,
    /// cosigned by at least a quorum of them.
    pub fn open_note(&self, note: &str) -> Result<Checkpoint, AgentError> {
        let checkpoint = open_checkpoint(note, &self.verifier, self.verifier.name())
            .map_err(|e| log_err(format!("a checkpoint from the hub does not verify: {e}")))?;
        self.check_quorum(note, &checkpoint)?;
        Ok(checkpoint)
    }

    fn check_quorum(&self, note: &str, checkpoint: &Checkpoint) -> Result<(), AgentError> {
        if self.quorum == 0 {
            return Ok(());
        }
        let cosigned = cosigned_by(note, &self.witnesses).map_err(|e| {
            log_err(format!(
                "the checkpoint of {} entries carries a witness cosignature that does not verify: {e}",
                checkpoint.size
            ))
        })?;
        if cosigned.len() < self.quorum {
            let names: Vec<&str> = cosigned.iter().map(|(k, _)| k.name()).collect();
            return Err(log_err(format!(
                "the checkpoint of {} entries is cosigned by {} of the configured witnesses ({}), and {} are required: the witnesses did not check this history (a hub showing this member a fork, or witnesses unreachable from the hub)",
                checkpoint.size,
                cosigned.len(),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                },
                self.quorum
            )));
        }
        Ok(())
    }

    /// Checks that `leaf` is in the log as `proof` says.
    pub fn verify_entry(&self, leaf: &[u8], proof: &LogProof) -> Result<Checkpoint, AgentError> {
        let checkpoint = verify_leaf(&self.verifier, leaf, proof).map_err(|e| {
            log_err(format!(
                "log entry {} is not proven by the hub's checkpoint: {e}",
                proof.index
            ))
        })?;
        self.check_quorum(&proof.checkpoint, &checkpoint)?;
        Ok(checkpoint)
    }

    /// Checks that two checkpoints describe one append-only log, asking the hub for the
    /// consistency proof between their sizes.
    async fn consistent(hub: &HubApi, a: &Checkpoint, b: &Checkpoint) -> Result<(), AgentError> {
        let (old, new) = if a.size <= b.size { (a, b) } else { (b, a) };
        if old.size == new.size {
            if old.root != new.root {
                return Err(log_err(format!(
                    "two checkpoints of the same size {} have different roots: the hub shows different logs (a fork)",
                    old.size
                )));
            }
            return Ok(());
        }
        let proof = hub
            .consistency_proof(old.size, new.size)
            .await
            .map_err(|status| {
                if status.code() == tonic::Code::OutOfRange {
                    // The hub no longer has a tree as large as one it signed: it shrank.
                    log_err(format!(
                        "the hub cannot prove its log of {} entries extends to the {} entries of a checkpoint it signed earlier: entries were dropped ({})",
                        old.size,
                        new.size,
                        status.message()
                    ))
                } else {
                    AgentError::Hub(status)
                }
            })?
            .map_err(log_err)?;
        verify_consistency(old.size, new.size, &old.root, &new.root, &proof)
        .map_err(|e| {
            log_err(format!(
                "the log of {} entries is not an extension of the log of {} entries this agent saw: {e}",
                new.size, old.size
            ))
        })
    }

    /// Takes in a checkpoint from the hub: checks it is consistent with the last one seen and
    /// keeps the larger.
    pub async fn observe(&self, hub: &HubApi, note: &str) -> Result<Checkpoint, AgentError> {
        let checkpoint = self.open_note(note)?;
        let mut last = self.last.lock().await;
        if let Some(seen) = last.as_ref() {
            Self::consistent(hub, &seen.checkpoint, &checkpoint).await?;
            if checkpoint.size <= seen.checkpoint.size {
                return Ok(checkpoint);
            }
        }
        self.save_checkpoint(note)?;
        *last = Some(Seen {
            checkpoint: checkpoint.clone(),
            note: note.to_owned(),
        });
        Ok(checkpoint)
    }

    /// Compares a checkpoint obtained elsewhere (gossiped by another member, say) with this
    /// agent's last one. A hub that served the two members different trees fails here.
    pub async fn compare(&self, hub: &HubApi, foreign_note: &str) -> Result<(), AgentError> {
        let foreign = self.open_note(foreign_note)?;
        let last = self.last.lock().await;
        match last.as_ref() {
            Some(seen) => Self::consistent(hub, &seen.checkpoint, &foreign).await,
            None => Ok(()),
        }
    }

    fn save_checkpoint(&self, note: &str) -> Result<(), AgentError> {
        let path = self.dir.join(CHECKPOINT_FILE);
        let tmp = self.dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        std::fs::write(&tmp, note).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))
    }

    /// Records that the hub's log failed verification (kept in [`ALARMS_FILE`] for good:
    /// evidence, and the web app's banner). A failure to write is logged, not returned: the
    /// caller is already reporting the inconsistency itself.
    pub fn raise_alarm(&self, problem: &str) {
        let path = self.dir.join(ALARMS_FILE);
        let line = format!(
            "{} {}\n",
            huren_core::summary::UnixMillis::now().0,
            problem.replace(['\n', '\r'], " ")
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "cannot record the log alarm");
        }
    }

    /// Every inconsistency recorded: (time, problem), oldest first.
    pub fn alarms(&self) -> Vec<(huren_core::summary::UnixMillis, String)> {
        let path = self.dir.join(ALARMS_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Vec::new();
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (at, what) = l.split_once(' ').unwrap_or(("0", l));
                (
                    huren_core::summary::UnixMillis(at.parse().unwrap_or(0)),
                    what.to_owned(),
                )
            })
            .collect()
    }

    /// Remembers a log entry this agent relied on, for `audit`.
    pub fn remember(&self, index: u64, leaf: &[u8]) -> Result<(), AgentError> {
        let path = self.dir.join(RECEIPTS_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        writeln!(file, "{index} {}", hex::encode(leaf)).map_err(|e| io_err(&path, e))
    }

    /// [`LogWitness::remember`] for many entries, with one open of the file.
    pub fn remember_all(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), AgentError> {
        if entries.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(RECEIPTS_FILE);
        let mut text = String::new();
        for (index, leaf) in entries {
            text.push_str(&format!("{index} {}\n", hex::encode(leaf)));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| io_err(&path, e))
    }

    /// The log entries this agent relied on, deduplicated, by index.
    pub fn remembered(&self) -> Result<Vec<(u64, Vec<u8>)>, AgentError> {
        let path = self.dir.join(RECEIPTS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path, e)),
        };
        let mut out = std::collections::BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let bad = || log_err(format!("{} line {} is malformed", path.display(), n + 1));
            let (index, leaf) = line.split_once(' ').ok_or_else(bad)?;
            let index: u64 = index.parse().map_err(|_| bad())?;
            let leaf = hex::decode(leaf).map_err(|_| bad())?;
            if let Some(other) = out.insert(index, leaf.clone())
                && other != leaf
            {
                return Err(log_err(format!(
                    "this agent was shown two different entries at log index {index}"
                )));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Re-checks everything: the hub's latest checkpoint against the last one seen, and every
    /// remembered entry against the latest checkpoint. Keeps the latest checkpoint only if
    /// nothing is wrong.
    pub async fn audit(&self, hub: &HubApi) -> Result<AuditReport, AgentError> {
        let note = hub.checkpoint().await.map_err(AgentError::Hub)?;
        let now = self.open_note(&note)?;
        let before = self.last().await.map(|s| s.checkpoint);
        let mut problems = Vec::new();
        if let Some(before) = &before
            && let Err(e) = Self::consistent(hub, before, &now).await
        {
            problems.push(e.to_string());
        }
        let entries = self.remembered()?;
        for (index, leaf) in &entries {
            if *index >= now.size {
                problems.push(format!(
                    "log entry {index} this agent holds is beyond the hub's latest checkpoint ({} entries): the log was truncated",
                    now.size
                ));
                continue;
            }
            let answer = match hub.inclusion_proof(*index, now.size).await {
                Ok(a) => a,
                Err(status) => {
                    problems.push(format!(
                        "log entry {index}: the hub gave no inclusion proof ({})",
                        status.message()
                    ));
                    continue;
                }
            };
            // The hub sends the bytes of this member's own entries only; the inclusion proof
            // below is checked with the bytes this agent kept, whoever wrote them.
            if !answer.leaf.is_empty() && answer.leaf != *leaf {
                problems.push(format!(
                    "log entry {index} is no longer what the hub logged when this agent saw it (rewritten, dropped or reordered)"
                ));
            }
            let proof = match answer.proof {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("log entry {index}: {}", log_err(e)));
                    continue;
                }
            };
            if let Err(e) = verify_inclusion(&leaf_hash(leaf), *index, now.size, &proof, &now.root)
            {
                problems.push(format!(
                    "log entry {index} is not in the hub's latest checkpoint: {e}"
                ));
            }
        }
        for p in &problems {
            self.raise_alarm(p);
        }
        if problems.is_empty() {
            let mut last = self.last.lock().await;
            if last.as_ref().is_none_or(|s| s.checkpoint.size <= now.size) {
                self.save_checkpoint(&note)?;
                *last = Some(Seen {
                    checkpoint: now.clone(),
                    note,
                });
            }
        }
        Ok(AuditReport {
            before,
            now,
            entries_checked: entries.len(),
            problems,
        })
    }
}
