use super::*;

impl Hub {
    /// The latest checkpoint; it covers only durable entries.
    pub async fn checkpoint(&self, caller: &InstitutionId) -> Result<String, HubError> {
        self.member_policy(caller)?;
        let head = self.store.durable_head().await?;
        self.sign(head)
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
        let proof = if tree_size == 0 || tree_size == head.size {
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
