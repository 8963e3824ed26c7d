use super::*;

/// The FindPrior call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn find_prior(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::FindPriorRequest,
) -> Result<pb::FindPriorResponse, HubError> {
    let compact_proofs = r.compact_proofs;
    let (ask, certificates_once, query) = requests::find_prior(r, g.hub.max_results())?;
    let answer = g.hub.find_prior(&caller, &query, &ask).await?;
    let (mut results, truncated, withheld_by_consent, checkpoint) =
        answer_parts(answer, compact_proofs);
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
        checkpoint,
    })
}

/// The History call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn history(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::HistoryRequest,
) -> Result<pb::HistoryResponse, HubError> {
    let (include_earlier_versions, certificates_once, compact_proofs) = (
        r.include_earlier_versions,
        r.certificates_once,
        r.compact_proofs,
    );
    let (ask, query) = requests::history(r, g.hub.max_results())?;
    let answer = g
        .hub
        .history(&caller, &query, include_earlier_versions, &ask)
        .await?;
    let (mut results, truncated, withheld_by_consent, checkpoint) =
        answer_parts(answer, compact_proofs);
    let signer_certificates = SharedCertificates::share(certificates_once, &mut results);
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
        checkpoint,
    })
}

/// The CheckOrder call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn check_order(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::CheckOrderRequest,
) -> Result<pb::CheckOrderResponse, HubError> {
    let requests::OrderRequest {
        ask,
        certificates_once,
        compact_proofs,
        patient,
        order,
        at,
    } = requests::check_order(r)?;
    let (answers, version, withheld_by_consent) =
        g.hub.check_order(&caller, patient, order, at, &ask).await?;
    let recognised = answers.iter().filter(|a| a.best.is_some()).count();
    tracing::info!(items = answers.len(), recognised, "order checked");
    let checkpoint = answer_checkpoint(
        compact_proofs,
        answers.iter().filter_map(|a| a.best.as_ref()),
    );
    let form = compact_proofs.then_some(checkpoint.as_str());
    let mut items: Vec<pb::OrderCheck> = answers
        .into_iter()
        .map(|a| pb::OrderCheck {
            asked: Some(order_code_to_pb(&a.asked)),
            item: a.item.as_ref().map(|(system, code, _)| pb::ItemCode {
                system: system.clone(),
                code: code.clone(),
            }),
            item_name: a.item.map(|(_, _, name)| name).unwrap_or_default(),
            best: a.best.map(|j| judged_to_pb(j, &version, form)),
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
        checkpoint,
    })
}
