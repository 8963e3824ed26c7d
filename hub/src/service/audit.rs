use super::*;

impl Hub {
    /// Records the caller's decision on a result it consulted.
    pub async fn record_decision(
        &self,
        caller: &InstitutionId,
        d: DecisionRequest,
    ) -> Result<(DecisionOutcome, bool, Option<(LogProof, Vec<u8>)>), HubError> {
        let policy = self.member_policy(caller)?;
        if d.decision_id.is_empty() || d.decision_id.len() > MAX_DECISION_ID {
            return Err(HubError::BadRequest(format!(
                "decision_id must be 1 to {MAX_DECISION_ID} bytes; use an id unique within your institution"
            )));
        }
        let Some(latest) = self
            .store
            .latest(d.publisher.as_str(), &d.summary_id)
            .await?
        else {
            return Err(HubError::UnknownResult(format!(
                "{}/{}",
                d.publisher, d.summary_id
            )));
        };
        if d.version == 0 || d.version > latest.summary.version {
            return Err(HubError::UnknownResult(format!(
                "{}/{} version {}",
                d.publisher, d.summary_id, d.version
            )));
        }
        // Looked up under the patient the result belongs to now: a result moved to another
        // patient by an amendment counts as not consulted by whoever saw it under the old one.
        let Some(consulted) = self
            .store
            .consultation(
                caller,
                &latest.summary.patient,
                d.publisher.as_str(),
                &d.summary_id,
            )
            .await?
        else {
            return Err(HubError::NotConsulted(format!(
                "{}/{}",
                d.publisher, d.summary_id
            )));
        };
        check_decision(consulted.recognised, &d.decision)?;
        let (adopted, reason, note) = match &d.decision {
            Decision::Adopted => (true, None, String::new()),
            Decision::Retested { reason, note } => (false, *reason, note.clone()),
        };
        let at = now();
        let record = DecisionRecord {
            member: caller.clone(),
            decision_id: d.decision_id.clone(),
            publisher: d.publisher.clone(),
            summary_id: d.summary_id.clone(),
            version: d.version,
            adopted,
            reason,
            note,
            at,
            recognised: consulted.recognised,
            event: Event {
                at,
                member: caller.clone(),
                price_fen: policy
                    .item(&consulted.item_system, &consulted.item_code)
                    .map_or(0, |i| i.price_fen),
                item_system: consulted.item_system,
                item_code: consulted.item_code,
                kind: EventKind::Decision {
                    adopted,
                    reason,
                    consultation: Some(ConsultationKey {
                        publisher: d.publisher.to_string(),
                        summary_id: d.summary_id.clone(),
                        consulted_at: consulted.at,
                    }),
                },
            },
        };
        let (outcome, logged) = self.store.record_decision_logged(&record).await?;
        let recognised = match &outcome {
            DecisionOutcome::AlreadyRecorded { recognised, .. } => *recognised,
            DecisionOutcome::Recorded { .. } => consulted.recognised,
        };
        let proof = match logged {
            Some(l) => Some((self.log_proof(l.index, l.head).await?, record.leaf())),
            None => None,
        };
        Ok((outcome, recognised, proof))
    }

    /// Records a patient's opt-out (or opt-back-in), as told to the calling member. Only a
    /// member that holds results of the patient (it published one) or an administrator may
    /// record it, either way; the log leaf names who did.
    pub async fn set_consent(
        &self,
        caller: &InstitutionId,
        patient: &Pseudonym,
        opted_out: bool,
    ) -> Result<(bool, UnixMillis, LogProof), HubError> {
        let policy = self.member_policy(caller)?;
        if !policy.is_administrator(caller)
            && !self.store.has_published_for(patient, caller).await?
        {
            return Err(HubError::ConsentNotYours {
                caller: caller.clone(),
            });
        }
        let at = now();
        let (changed, logged) = self
            .store
            .set_consent(patient, opted_out, caller, at)
            .await?;
        tracing::info!(opted_out, changed, "consent recorded");
        Ok((
            changed,
            at,
            self.log_proof(logged.index, logged.head).await?,
        ))
    }

    /// Who looked at a patient's results in `[from, to)`, each access with its inclusion
    /// proof. Only an administrator of the policy may ask, on the patient's request (a member
    /// gets `AccessReportNotYours`, PERMISSION_DENIED, and nothing is logged); each report is
    /// itself logged as an access (method AccessReport, purpose PATIENT_REQUEST) before it is
    /// answered.
    pub async fn access_report(
        &self,
        caller: &InstitutionId,
        requester: &str,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<AccessReport, HubError> {
        let policy = self.member_policy(caller)?;
        // The patient's right (PIPL): given to the alliance's administrators, on the patient's
        // request, never to a member (who could otherwise watch its peers' look-ups).
        if !policy.is_administrator(caller) {
            tracing::warn!("an access report was asked by a member, not an administrator");
            return Err(HubError::AccessReportNotYours {
                caller: caller.clone(),
            });
        }
        let indexes = self.store.accesses(patient, from, to).await?;
        self.journal(
            &policy,
            caller,
            &[],
            &[],
            Purpose::PatientRequest,
            requester,
            Method::AccessReport,
            patient,
            Gate::default(),
            now(),
        )
        .await?;
        let head = self.store.durable_head().await?;
        let (head, checkpoint) = self.checkpoint_note(head).await?;
        let mut entries = Vec::with_capacity(indexes.len());
        for index in indexes {
            let leaf = self.store.leaf(index).await?;
            let entry = Entry::decode(&leaf).map_err(|e| {
                HubError::Store(crate::store::StoreError::Corrupt(format!(
                    "log leaf {index}: {e}"
                )))
            })?;
            entries.push(AccessRecord {
                index,
                proof: LogProof {
                    index,
                    tree_size: head.size,
                    proof: self.store.inclusion_proof(index, head.size).await?,
                    checkpoint: checkpoint.clone(),
                },
                leaf,
                entry,
            });
        }
        Ok(AccessReport {
            entries,
            opted_out: self.store.opted_out(patient).await?,
        })
    }

    /// Statistics for `[from, to)`. Administrators see everything; a member its own events.
    pub async fn statistics(
        &self,
        caller: &InstitutionId,
        from: UnixMillis,
        to: UnixMillis,
        by: GroupBy,
    ) -> Result<Statistics, HubError> {
        let policy = self.member_policy(caller)?;
        let mut events = self.store.events(from, to).await?;
        if !policy.is_administrator(caller) {
            events.retain(|e| e.member == *caller);
        }
        let (rows, total) = stats::aggregate(&events, by, policy.utc_offset_seconds);
        let rows = rows
            .into_iter()
            .map(|r| {
                let label = match by {
                    GroupBy::Item => policy
                        .items
                        .values()
                        .find(|i| i.code == r.key)
                        .map(|i| i.name.clone()),
                    GroupBy::Member => InstitutionId::parse(&r.key)
                        .ok()
                        .and_then(|id| policy.member(&id).map(|m| m.name.clone())),
                    GroupBy::Day | GroupBy::Month => None,
                };
                (r, label.unwrap_or_default())
            })
            .collect();
        Ok(Statistics {
            rows,
            total,
            policy_version: policy.version.clone(),
        })
    }
}
