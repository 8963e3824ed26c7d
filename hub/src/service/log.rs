use super::*;

impl Hub {
    /// The latest checkpoint; it covers only durable entries.
    pub async fn checkpoint(&self, caller: &InstitutionId) -> Result<String, HubError> {
        self.member_policy(caller)?;
        let head = self.store.durable_head().await?;
        Ok(self.checkpoint_note(head).await?.1)
    }

    /// The consistency proof between two tree sizes (`new_size` 0: the latest durable size).
    pub async fn consistency_proof(
        &self,
        caller: &InstitutionId,
        old_size: u64,
        new_size: u64,
    ) -> Result<(Vec<Hash>, u64), HubError> {
        self.member_policy(caller)?;
        let new_size = match new_size {
            0 => self.store.durable_head().await?.size,
            n => n,
        };
        Ok((
            self.store.consistency_proof(old_size, new_size).await?,
            new_size,
        ))
    }

    /// The inclusion proof of leaf `index` in the tree of `tree_size` leaves (0: the latest),
    /// with the signed checkpoint when that size is the latest durable one, and the leaf's
    /// bytes when the caller may read them: its own entries (a summary it published, a
    /// decision it recorded, an access it made, a consent change it recorded), or any entry
    /// for an administrator, whose read is logged as an access (purpose ADMINISTRATION) to the
    /// entry's patient. Others get the proof alone (an empty leaf): a member checks entries it
    /// already holds; other members' contents reach it only through the queries that enforce
    /// purpose, consent and audit.
    pub async fn inclusion_proof(
        &self,
        caller: &InstitutionId,
        index: u64,
        tree_size: u64,
    ) -> Result<(Vec<u8>, LogProof), HubError> {
        let policy = self.member_policy(caller)?;
        let head = if tree_size == 0 {
            self.store.durable_head().await?
        } else {
            self.store.recent_durable_head(tree_size).await?
        };
        // With witnesses, the checkpoint handed out may be of a later head than asked for: a
        // proof for an explicit size then comes without one (the caller holds that checkpoint).
        let proof = if tree_size == 0 || (tree_size == head.size && self.witnesses.is_none()) {
            self.log_proof(index, head).await?
        } else {
            LogProof {
                index,
                tree_size,
                proof: self.store.inclusion_proof(index, tree_size).await?,
                checkpoint: String::new(),
            }
        };
        let leaf = self.store.leaf(index).await?;
        let entry = Entry::decode(&leaf).map_err(|e| {
            HubError::Store(crate::store::StoreError::Corrupt(format!(
                "log leaf {index}: {e}"
            )))
        })?;
        let me = caller.as_str();
        let (own, patient) = match &entry {
            Entry::Summary { body, .. } => {
                let s = Summary::from_stored_body_bytes(body).map_err(|e| {
                    HubError::Store(crate::store::StoreError::Corrupt(format!(
                        "log leaf {index}: {e}"
                    )))
                })?;
                (s.publisher == *caller, Some(s.patient))
            }
            Entry::Decision {
                member,
                publisher,
                summary_id,
                ..
            } => (
                member == me,
                self.store
                    .latest(publisher, summary_id)
                    .await?
                    .map(|s| s.summary.patient),
            ),
            Entry::Access {
                caller: c,
                pseudonym,
                ..
            } => (c == me, Some(Pseudonym::from_bytes(*pseudonym))),
            Entry::Consent {
                member, pseudonym, ..
            } => (member == me, Some(Pseudonym::from_bytes(*pseudonym))),
            // The policies verdicts were made under are everyone's to read.
            Entry::Policy { .. } => (true, None),
        };
        if own {
            return Ok((leaf, proof));
        }
        if !policy.is_administrator(caller) {
            return Ok((Vec::new(), proof));
        }
        // The audit read is logged like any access to the patient's data. (A decision whose
        // result is gone has no patient to file it under; it is filed under no one.)
        let patient = patient.unwrap_or(Pseudonym::from_bytes([0; 32]));
        self.journal(
            &policy,
            caller,
            &[],
            &[],
            Purpose::Administration,
            "",
            Method::LogEntry,
            &patient,
            Gate::default(),
            now(),
        )
        .await?;
        tracing::info!(index, "log entry read for audit");
        Ok((leaf, proof))
    }
}

/// Most entries one GetLogEntries call returns.
pub const MAX_LOG_ENTRIES: u64 = 1000;

/// One entry of a statistics audit: its bytes (decision, access, policy) or its leaf hash.
#[derive(Clone, Debug)]
pub enum AuditEntry {
    Leaf(Vec<u8>),
    Hash(Hash),
}

/// Entries `[start, end)` of one tree, for a statistics audit.
#[derive(Clone, Debug)]
pub struct LogEntries {
    pub entries: Vec<(u64, AuditEntry)>,
    pub tree_size: u64,
    /// The signed checkpoint of `tree_size`, when the latest was asked for.
    pub checkpoint: String,
}

impl Hub {
    /// Entries `[start, end)` of the tree of `tree_size` leaves (0: the latest durable
    /// checkpoint, which comes with them), for an administrator's statistics audit: decision,
    /// access and policy entries with their bytes, the others (summaries, consent changes) as
    /// leaf hashes. Each patient whose access entries are returned gets an access of their
    /// own in the log (method GetInclusionProof, purpose ADMINISTRATION), as for any
    /// administrator's read of a log entry.
    pub async fn log_entries(
        &self,
        caller: &InstitutionId,
        start: u64,
        end: u64,
        tree_size: u64,
    ) -> Result<LogEntries, HubError> {
        let policy = self.member_policy(caller)?;
        if !policy.is_administrator(caller) {
            tracing::warn!("a member asked for the log's entries in bulk");
            return Err(HubError::AuditNotYours {
                caller: caller.clone(),
            });
        }
        if end < start || end - start > MAX_LOG_ENTRIES {
            return Err(HubError::BadRequest(format!(
                "ask for 0 to {MAX_LOG_ENTRIES} entries at a time, with start ≤ end (asked [{start}, {end}))"
            )));
        }
        let durable = self.store.durable_head().await?;
        let (size, checkpoint) = if tree_size == 0 {
            let (head, note) = self.checkpoint_note(durable).await?;
            (head.size, note)
        } else if tree_size > durable.size {
            return Err(HubError::BadRequest(format!(
                "the log has no checkpoint of {tree_size} entries yet (it has {})",
                durable.size
            )));
        } else {
            (tree_size, String::new())
        };
        if end > size {
            return Err(HubError::BadRequest(format!(
                "entries up to {end} asked from a tree of {size}"
            )));
        }
        let mut entries = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
        let mut patients = std::collections::BTreeSet::new();
        for index in start..end {
            let leaf = self.store.leaf(index).await?;
            let entry = match Entry::decode(&leaf) {
                Ok(Entry::Access { pseudonym, .. }) => {
                    patients.insert(pseudonym);
                    AuditEntry::Leaf(leaf)
                }
                Ok(Entry::Decision { .. } | Entry::Policy { .. }) => AuditEntry::Leaf(leaf),
                _ => AuditEntry::Hash(huren_core::merkle::leaf_hash(&leaf)),
            };
            entries.push((index, entry));
        }
        for patient in patients {
            self.journal(
                &policy,
                caller,
                &[],
                &[],
                Purpose::Administration,
                "",
                Method::LogEntry,
                &Pseudonym::from_bytes(patient),
                Gate::default(),
                now(),
            )
            .await?;
        }
        tracing::info!(start, end, size, "log entries read for a statistics audit");
        Ok(LogEntries {
            entries,
            tree_size: size,
            checkpoint,
        })
    }
}
