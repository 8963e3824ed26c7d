use super::*;

/// The RecordDecision call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn record_decision(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::RecordDecisionRequest,
) -> Result<pb::RecordDecisionResponse, HubError> {
    let decision = requests::record_decision(r)?;
    let (outcome, recognised, proof) = g.hub.record_decision(&caller, decision).await?;
    let (already_recorded, at) = match outcome {
        DecisionOutcome::Recorded { at } => (false, at),
        DecisionOutcome::AlreadyRecorded { at, .. } => (true, at),
    };
    tracing::info!(already_recorded, recognised, "decision recorded");
    Ok(pb::RecordDecisionResponse {
        already_recorded,
        recorded_at_ms: at.0,
        result_was_recognised: recognised,
        leaf: proof
            .as_ref()
            .map(|(_, leaf)| leaf.clone())
            .unwrap_or_default(),
        log_proof: proof.map(|(p, _)| pb::LogProof::from(p)),
    })
}

/// The GetStatistics call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn get_statistics(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::StatisticsRequest,
) -> Result<pb::StatisticsResponse, HubError> {
    let (from, to, by) = requests::statistics(r)?;
    let s = g.hub.statistics(&caller, from, to, by).await?;
    Ok(pb::StatisticsResponse {
        rows: s
            .rows
            .into_iter()
            .map(|(r, l)| convert::row_to_pb(r, l))
            .collect(),
        total: Some(convert::row_to_pb(s.total, String::new())),
        policy_version: s.policy_version,
    })
}

/// The AccessReport call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn access_report(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::AccessReportRequest,
) -> Result<pb::AccessReportResponse, HubError> {
    let (patient, requester, from, to) = requests::access_report(r)?;
    let report = g
        .hub
        .access_report(&caller, &requester, &patient, from, to)
        .await?;
    tracing::info!(entries = report.entries.len(), "access report");
    let mut entries = Vec::with_capacity(report.entries.len());
    for a in report.entries {
        let Entry::Access {
            at,
            caller,
            purpose,
            method,
            emergency_override,
            withheld_by_consent,
            results,
            policy_version,
            requester,
            ..
        } = a.entry
        else {
            return Err(HubError::Store(crate::store::StoreError::Corrupt(format!(
                "log leaf {} is not an access",
                a.index
            ))));
        };
        entries.push(pb::AccessEntry {
            at_ms: at.0,
            caller,
            purpose: pb::Purpose::from(purpose) as i32,
            method: method.name().to_owned(),
            emergency_override,
            withheld_by_consent,
            results: u32::try_from(results.len()).unwrap_or(u32::MAX),
            leaf: a.leaf,
            proof: Some(pb::LogProof::from(a.proof)),
            policy_version: policy_version.unwrap_or_default(),
            requester: requester.unwrap_or_default(),
        });
    }
    Ok(pb::AccessReportResponse {
        entries,
        opted_out: report.opted_out,
    })
}

/// The SetConsent call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn set_consent(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::SetConsentRequest,
) -> Result<pb::SetConsentResponse, HubError> {
    let (patient, opted_out) = requests::set_consent(r)?;
    let (changed, at, proof) = g.hub.set_consent(&caller, &patient, opted_out).await?;
    Ok(pb::SetConsentResponse {
        recorded_at_ms: at.0,
        log_proof: Some(pb::LogProof::from(proof)),
        changed,
    })
}
