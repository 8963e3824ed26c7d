use super::*;

impl Hub {
    /// Verifies and stores a summary published by `caller`.
    ///
    /// Checks, in order: the caller is a member; the signing certificate is the alliance's and
    /// valid now; the signature covers the exact body bytes; the body is well formed; the
    /// body's publisher is the certificate's institution; the caller is that publisher. Only
    /// then is anything written.
    pub async fn publish(
        &self,
        caller: &InstitutionId,
        envelope: SignedEnvelope,
    ) -> Result<(PutOutcome, LogProof), HubError> {
        let policy = self.member_policy(caller)?;
        let at = now();
        let signer = self
            .signers
            .certify(&envelope.signer_certificate, at)
            .map_err(VerifyError::from)?;
        let verified = self.signatures.verify(envelope, signer).await?;
        self.may_publish(&policy, caller, &verified, at)?;
        self.store_verified(vec![verified], at)
            .await?
            .pop()
            .ok_or_else(|| {
                HubError::Checkpoint("a publish of one summary gave no outcome".into())
            })?
    }

    /// [`Hub::publish`] for many summaries at once: each is checked on its own (signatures
    /// together, in one batch equation) and has its own outcome, in order. Only a caller that
    /// may not publish at all fails the whole call.
    pub async fn publish_batch(
        &self,
        caller: &InstitutionId,
        envelopes: Vec<SignedEnvelope>,
    ) -> Result<Vec<Result<(PutOutcome, LogProof), HubError>>, HubError> {
        let policy = self.member_policy(caller)?;
        let at = now();
        let mut outcomes: Vec<Option<Result<(PutOutcome, LogProof), HubError>>> =
            Vec::with_capacity(envelopes.len());
        let mut certified = Vec::with_capacity(envelopes.len());
        let mut positions = Vec::with_capacity(envelopes.len());
        for (i, envelope) in envelopes.into_iter().enumerate() {
            match self.signers.certify(&envelope.signer_certificate, at) {
                Ok(signer) => {
                    positions.push(i);
                    certified.push((envelope, signer));
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(Err(VerifyError::from(e).into()))),
            }
        }
        // Signature checks are CPU work: keep them off the async workers.
        // A panicked check is the hub's fault (INTERNAL), not the request's.
        let checked = tokio::task::spawn_blocking(move || verify_many(certified))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "a batch of signature checks panicked");
                HubError::Checking
            })?;
        let mut accepted = Vec::with_capacity(checked.len());
        let mut accepted_at = Vec::with_capacity(checked.len());
        for (i, v) in positions.into_iter().zip(checked) {
            match v
                .map_err(HubError::from)
                .and_then(|v| self.may_publish(&policy, caller, &v, at).map(|()| v))
            {
                Ok(v) => {
                    accepted_at.push(i);
                    accepted.push(v);
                }
                Err(e) => outcomes[i] = Some(Err(e)),
            }
        }
        if !accepted.is_empty() {
            for (i, r) in accepted_at
                .into_iter()
                .zip(self.store_verified(accepted, at).await?)
            {
                outcomes[i] = Some(r);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(HubError::BadRequest("not processed".into()))))
            .collect())
    }

    /// Whether `caller` may publish this verified summary: its own, not revoked, and not
    /// dated after the hub's clock plus the allowed skew.
    pub(super) fn may_publish(
        &self,
        policy: &Policy,
        caller: &InstitutionId,
        verified: &VerifiedSummary,
        at: UnixMillis,
    ) -> Result<(), HubError> {
        let latest = UnixMillis(at.0.saturating_add(self.max_clock_skew_ms));
        let s = &verified.summary;
        for (field, t) in [
            ("performed_at_ms", s.performed_at),
            ("reported_at_ms", s.reported_at),
        ] {
            if t > latest {
                return Err(HubError::BadRequest(format!(
                    "{field} of {} is {}, after the hub's clock ({}) plus the {} s it allows for clock drift: a result cannot be performed or reported in the future; check the sending system's clock and time zone",
                    s.result_key(),
                    rfc3339(t),
                    rfc3339(at),
                    self.max_clock_skew_ms / 1000
                )));
            }
        }
        if verified.summary.publisher != *caller {
            return Err(HubError::NotPublisher {
                caller: caller.clone(),
                publisher: verified.summary.publisher.clone(),
            });
        }
        // The signing certificate names the publisher: a revoked signer's summaries are refused.
        Self::not_revoked(policy, &verified.summary.publisher, at)
    }

    /// Stores verified summaries through the publish writer; once durable, each stored one
    /// comes with its inclusion proof against one signed checkpoint.
    pub(super) async fn store_verified(
        &self,
        verified: Vec<VerifiedSummary>,
        at: UnixMillis,
    ) -> Result<Vec<Result<(PutOutcome, LogProof), HubError>>, HubError> {
        let (puts, batch_head) = self.intake.put(verified, at).await?;
        let (head, checkpoint) = self.checkpoint_note(batch_head).await?;
        let mut out = Vec::with_capacity(puts.len());
        for put in puts {
            let put = match put {
                Ok(p) => p,
                Err(e) => {
                    out.push(Err(e.into()));
                    continue;
                }
            };
            // A cosigned checkpoint may cover a later head than the batch's.
            let proof = if head == batch_head {
                put.proof
            } else {
                self.store.inclusion_proof(put.index, head.size).await?
            };
            out.push(Ok((
                put.outcome,
                LogProof {
                    index: put.index,
                    tree_size: head.size,
                    proof,
                    checkpoint: checkpoint.clone(),
                },
            )));
        }
        Ok(out)
    }
}
