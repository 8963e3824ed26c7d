use super::*;

/// The FindPrior call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn find_prior(
    g: &HubGrpc,
    caller: InstitutionId,
    mut r: pb::FindPriorRequest,
) -> Result<pb::FindPriorResponse, HubError> {
    let ask = ask(r.purpose, std::mem::take(&mut r.requester), r.with_proofs)?;
    let certificates_once = r.certificates_once;
    let query = prior_query(&g.hub, r)?;
    let answer = g.hub.find_prior(&caller, &query, &ask).await?;
    let (mut results, truncated, withheld_by_consent) = answer_parts(answer);
    let signer_certificates = SharedCertificates::share(certificates_once, &mut results);
    tracing::info!(
        items = query.items.len(),
        results = results.len(),
        purpose = ask.purpose.name(),
        withheld_by_consent,
        "prior results found"
    );
    Ok(pb::FindPriorResponse {
        results,
        truncated,
        withheld_by_consent,
        signer_certificates,
    })
}

/// The History call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn history(
    g: &HubGrpc,
    caller: InstitutionId,
    mut r: pb::HistoryRequest,
) -> Result<pb::HistoryResponse, HubError> {
    let ask = ask(r.purpose, std::mem::take(&mut r.requester), r.with_proofs)?;
    if r.since_ms < 0 {
        return Err(HubError::BadRequest("since_ms must not be negative".into()));
    }
    let query = PriorQuery {
        patient: pseudonym(&r.patient_pseudonym)?,
        items: vec![],
        from: UnixMillis(r.since_ms),
        until: UnixMillis(i64::MAX),
        limit: g.hub.max_results(),
    };
    let answer = g
        .hub
        .history(&caller, &query, r.include_earlier_versions, &ask)
        .await?;
    let (mut results, truncated, withheld_by_consent) = answer_parts(answer);
    let signer_certificates = SharedCertificates::share(r.certificates_once, &mut results);
    tracing::info!(
        results = results.len(),
        purpose = ask.purpose.name(),
        withheld_by_consent,
        "history listed"
    );
    Ok(pb::HistoryResponse {
        results,
        truncated,
        withheld_by_consent,
        signer_certificates,
    })
}

/// The CheckOrder call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn check_order(
    g: &HubGrpc,
    caller: InstitutionId,
    mut r: pb::CheckOrderRequest,
) -> Result<pb::CheckOrderResponse, HubError> {
    let ask = ask(r.purpose, std::mem::take(&mut r.requester), r.with_proofs)?;
    let certificates_once = r.certificates_once;
    let patient = pseudonym(&r.patient_pseudonym)?;
    if r.items.is_empty() || r.items.len() > MAX_QUERY_ITEMS {
        return Err(HubError::BadRequest(format!(
            "name 1 to {MAX_QUERY_ITEMS} ordered items; got {}",
            r.items.len()
        )));
    }
    let mut order = Vec::with_capacity(r.items.len());
    for (i, item) in r.items.into_iter().enumerate() {
        order.push(match item.code {
            Some(pb::order_item::Code::Catalogue(c))
                if !c.system.is_empty() && !c.code.is_empty() =>
            {
                OrderCode::Catalogue {
                    system: c.system,
                    code: c.code,
                }
            }
            Some(pb::order_item::Code::LocalCode(l)) if !l.trim().is_empty() => OrderCode::Local(l),
            _ => {
                return Err(HubError::BadRequest(format!(
                    "items[{i}] needs a catalogue code (system and code) or a local code"
                )));
            }
        });
    }
    let at = as_of(r.as_of_ms)?;
    let (answers, version, withheld_by_consent) =
        g.hub.check_order(&caller, patient, order, at, &ask).await?;
    let recognised = answers.iter().filter(|a| a.best.is_some()).count();
    tracing::info!(items = answers.len(), recognised, "order checked");
    let mut items: Vec<pb::OrderCheck> = answers
        .into_iter()
        .map(|a| pb::OrderCheck {
            asked: Some(order_code_to_pb(&a.asked)),
            item: a.item.as_ref().map(|(system, code, _)| pb::ItemCode {
                system: system.clone(),
                code: code.clone(),
            }),
            item_name: a.item.map(|(_, _, name)| name).unwrap_or_default(),
            best: a.best.map(|j| judged_to_pb(j, &version)),
            explanation: a.explanation,
            candidates: u32::try_from(a.candidates).unwrap_or(u32::MAX),
        })
        .collect();
    let signer_certificates = SharedCertificates::share(
        certificates_once,
        items.iter_mut().filter_map(|i| i.best.as_mut()),
    );
    Ok(pb::CheckOrderResponse {
        items,
        policy_version: version,
        withheld_by_consent,
        signer_certificates,
    })
}
