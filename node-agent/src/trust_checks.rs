//! Checks that need trust in no one: a verdict replayed under the policy the hub logged, and
//! the statistics recomputed from the log's own entries (issue 21, parts 2 and 3).
//!
//! - [`Agent::replay_verdict`] (`huren-agent verify-verdict`): takes a shown result (verified,
//!   with its inclusion proof), fetches the policy leaf its verdict names (`GetPolicy`), checks
//!   that leaf's inclusion against a checkpoint consistent with what this agent saw, and
//!   judges the result again with `huren_core::rules::replay`.
//! - [`Agent::audit_statistics`] (`huren-agent audit-stats`, administrators): reads every
//!   entry of the log's tree (`GetLogEntries`: decision, access and policy entries whole, the
//!   others as leaf hashes), recomputes the tree's root against the checkpoint (so nothing was
//!   left out or changed), recomputes every statistics figure of the period from the decision
//!   and access leaves (`huren_core::stats::events_of_entry`) and compares them with the hub's.

use huren_core::logentry::Entry;
use huren_core::merkle::{self, Hash};
use huren_core::rules::{ReplayError, Replayed};
use huren_core::stats::{self, GroupBy, Recomputed, Row};
use huren_core::summary::UnixMillis;

use crate::client::Agent;
use crate::error::AgentError;
use crate::hub::{PageEntry, Statistics};
use crate::log::required_proof;
use crate::verify::VerifiedResult;

/// Entries asked for per GetLogEntries call (the hub's maximum).
const PAGE: u64 = 1000;

/// What `audit-stats` found.
#[derive(Clone, Debug)]
pub struct StatsAudit {
    /// The hub's figures.
    pub hub: Statistics,
    /// The figures recomputed from the log: rows, then the total.
    pub recomputed: (Vec<Row>, Row),
    /// Every figure that differs, one line each; empty when the hub's figures are the log's.
    pub differences: Vec<String>,
    /// The tree read (all of it, its root checked against the checkpoint).
    pub tree_size: u64,
    /// Decision and access leaves of the period in a format before 0x04, whose figures cannot
    /// be recomputed.
    pub older_format: usize,
    /// Leaves whose contents could not be read into statistics, one line each.
    pub unreadable: Vec<String>,
    /// The newest policy in the tree (its version), whose UTC offset grouped days and months.
    pub policy_version: Option<String>,
}

impl Agent {
    /// Replays the hub's verdict on a shown result: `result` as verified from a query answer
    /// with `[log]` (so its summary's inclusion proof was checked), `latest` whether it was
    /// shown as its result's latest version (not among the earlier versions). The outer
    /// error is a failure to ask or a log inconsistency; the inner one a verdict that cannot
    /// be replayed (it names no policy, or names a log entry that is no policy), itself a
    /// finding against the hub.
    pub async fn replay_verdict(
        &self,
        result: &VerifiedResult,
        latest: bool,
    ) -> Result<Result<Replayed, ReplayError>, AgentError> {
        let log = self.witness()?;
        let Some(given) = &result.verdict else {
            return Ok(Err(ReplayError::NoBasis));
        };
        let Some(basis) = &given.basis else {
            return Ok(Err(ReplayError::NoBasis));
        };
        if result.log_proof.is_none() {
            return Err(AgentError::Log(format!(
                "{}/{} was shown without its inclusion proof",
                result.summary.publisher, result.summary.id
            )));
        }
        let answer = match self.hub_api().get_policy(basis.policy_index).await {
            Ok(a) => a,
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Ok(Err(ReplayError::NotAPolicy {
                    index: basis.policy_index,
                    reason: status.message().to_owned(),
                }));
            }
            Err(status) => return Err(AgentError::Hub(status)),
        };
        let proof = required_proof(
            answer.proof,
            &format!(
                "the policy in log entry {} came without its inclusion proof",
                basis.policy_index
            ),
        )?;
        if proof.index != basis.policy_index {
            return Err(AgentError::Log(format!(
                "asked for log entry {} the hub proved entry {}",
                basis.policy_index, proof.index
            )));
        }
        log.verify_entry(&answer.leaf, &proof)?;
        log.observe(self.hub_api(), &proof.checkpoint).await?;
        Ok(huren_core::rules::replay(
            given,
            &answer.leaf,
            self.institution(),
            &result.summary,
            result.receipt.accepted_at,
            latest,
        ))
    }

    /// Recomputes the statistics of `[from, to)` grouped `by` from the hub's log and compares
    /// them with the hub's own figures. Needs `[log]` and an administrator's certificate.
    pub async fn audit_statistics(
        &self,
        from: UnixMillis,
        to: UnixMillis,
        by: GroupBy,
    ) -> Result<StatsAudit, AgentError> {
        let log = self.witness()?;
        let hub = self.hub_api();
        let figures = hub
            .statistics(from, to, by)
            .await
            .map_err(AgentError::Hub)?;
        let first = hub.log_entries(0, 0, 0).await.map_err(AgentError::Hub)?;
        let checkpoint = log.observe(hub, &first.checkpoint).await?;
        if checkpoint.size != first.tree_size {
            return Err(AgentError::Log(format!(
                "the hub named a tree of {} entries with a checkpoint of {}",
                first.tree_size, checkpoint.size
            )));
        }
        let size = checkpoint.size;
        let mut frontier: Vec<Hash> = Vec::new();
        let mut events = Vec::new();
        let mut older_format = 0;
        let mut unreadable = Vec::new();
        let mut policy_text: Option<(String, Vec<u8>)> = None;
        let mut next = 0u64;
        while next < size {
            let end = (next + PAGE).min(size);
            let page = hub
                .log_entries(next, end, size)
                .await
                .map_err(AgentError::Hub)?;
            if page.entries.len() as u64 != end - next {
                return Err(AgentError::Log(format!(
                    "asked for log entries {next} to {end}, the hub gave {}",
                    page.entries.len()
                )));
            }
            for (index, entry) in page.entries {
                if index != next {
                    return Err(AgentError::Log(format!(
                        "the hub gave log entry {index} in place of {next}"
                    )));
                }
                let hash = match entry {
                    PageEntry::Hash(h) => h.map_err(AgentError::Log)?,
                    PageEntry::Leaf(leaf) => {
                        match Entry::decode(&leaf) {
                            Ok(Entry::Policy { version, text, .. }) => {
                                policy_text = Some((version, text));
                            }
                            Ok(e) => {
                                let at = match &e {
                                    Entry::Access { at, .. } | Entry::Decision { at, .. } => *at,
                                    _ => UnixMillis(i64::MIN),
                                };
                                if from <= at && at < to {
                                    match stats::events_of_entry(&e) {
                                        Recomputed::Events(mut ev) => events.append(&mut ev),
                                        Recomputed::OlderFormat => older_format += 1,
                                        Recomputed::Unreadable(why) => {
                                            unreadable.push(format!("log entry {index}: {why}"))
                                        }
                                    }
                                }
                            }
                            Err(e) => unreadable.push(format!("log entry {index}: {e}")),
                        }
                        merkle::leaf_hash(&leaf)
                    }
                };
                merkle::append(&mut frontier, next, hash);
                next += 1;
            }
        }
        if merkle::root_from_frontier(&frontier, size) != checkpoint.root {
            let problem = format!(
                "the {size} log entries the hub gave for the statistics audit do not make up the tree of its checkpoint: entries were left out or changed"
            );
            log.raise_alarm(&problem);
            return Err(AgentError::Log(problem));
        }
        let (policy_version, offset) = match &policy_text {
            Some((version, text)) => {
                let offset = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| {
                        huren_core::policy_file::parse(std::path::Path::new("policy"), t).ok()
                    })
                    .map_or(8 * 3600, |p| p.utc_offset_seconds);
                (Some(version.clone()), offset)
            }
            None => (None, 8 * 3600),
        };
        let recomputed = stats::aggregate(&events, by, offset);
        let mut theirs: Vec<Row> = figures.rows.iter().map(|(r, _)| r.clone()).collect();
        theirs.push(Row {
            key: "total".into(),
            ..figures.total.clone()
        });
        let mut ours = recomputed.0.clone();
        ours.push(recomputed.1.clone());
        let differences = stats::row_differences(&theirs, &ours);
        Ok(StatsAudit {
            hub: figures,
            recomputed,
            differences,
            tree_size: size,
            older_format,
            unreadable,
            policy_version,
        })
    }
}
