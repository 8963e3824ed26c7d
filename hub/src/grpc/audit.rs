use super::*;

/// The RecordDecision call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn record_decision(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::RecordDecisionRequest,
) -> Result<pb::RecordDecisionResponse, HubError> {
    let publisher = InstitutionId::parse(&r.publisher)
        .map_err(|e| HubError::BadRequest(format!("publisher: {e}")))?;
    let reason = retest_reason(r.reason).ok_or_else(|| {
        HubError::BadRequest(format!("reason {} is not a known re-test reason", r.reason))
    })?;
    let decision = match pb::DecisionKind::try_from(r.decision) {
        Ok(pb::DecisionKind::Adopted) => {
            if reason.is_some() {
                return Err(HubError::BadRequest(
                    "an adopted result takes no re-test reason".into(),
                ));
            }
            Decision::Adopted
        }
        Ok(pb::DecisionKind::Retested) => Decision::Retested {
            reason,
            note: r.note,
        },
        _ => {
            return Err(HubError::BadRequest(
                "decision must be ADOPTED or RETESTED".into(),
            ));
        }
    };
    let (outcome, recognised, proof) = g
        .hub
        .record_decision(
            &caller,
            DecisionRequest {
                decision_id: r.decision_id,
                publisher,
                summary_id: r.summary_id,
                version: r.version,
                decision,
            },
        )
        .await?;
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
    let by = convert::group_by(r.group_by).ok_or_else(|| {
        HubError::BadRequest("group_by must be ITEM, MEMBER, DAY or MONTH".into())
    })?;
    let to = if r.to_ms == 0 {
        now()
    } else {
        UnixMillis(r.to_ms)
    };
    if r.from_ms < 0 || to.0 < r.from_ms {
        return Err(HubError::BadRequest(
            "the period must have 0 <= from_ms <= to_ms".into(),
        ));
    }
    let s = g
        .hub
        .statistics(&caller, UnixMillis(r.from_ms), to, by)
        .await?;
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
    let patient = pseudonym(&r.patient_pseudonym)?;
    check_requester(&r.requester)?;
    let to = if r.to_ms == 0 {
        UnixMillis(i64::MAX)
    } else {
        UnixMillis(r.to_ms)
    };
    if r.from_ms < 0 || to.0 < r.from_ms {
        return Err(HubError::BadRequest(
            "the period must have 0 <= from_ms <= to_ms".into(),
        ));
    }
    let report = g
        .hub
        .access_report(&caller, &r.requester, &patient, UnixMillis(r.from_ms), to)
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
    let patient = pseudonym(&r.patient_pseudonym)?;
    let (changed, at, proof) = g.hub.set_consent(&caller, &patient, r.opted_out).await?;
    Ok(pb::SetConsentResponse {
        recorded_at_ms: at.0,
        log_proof: Some(pb::LogProof::from(proof)),
        changed,
    })
}
