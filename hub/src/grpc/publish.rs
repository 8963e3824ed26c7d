use super::*;

/// The Publish call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn publish(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::PublishRequest,
) -> Result<pb::PublishResponse, HubError> {
    let envelope = requests::publish(r)?;
    let (outcome, proof) = g.hub.publish(&caller, envelope).await?;
    let response = publish_response(&outcome, proof);
    if let Some(receipt) = &response.receipt {
        tracing::info!(
            summary = %format_args!("{}/{}", receipt.publisher, receipt.summary_id),
            version = receipt.version,
            already_stored = response.already_stored,
            "summary accepted"
        );
    }
    Ok(response)
}

/// The PublishBatch call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn publish_batch(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::PublishBatchRequest,
) -> Result<pb::PublishBatchResponse, HubError> {
    g.metrics.publish_batch(r.summaries.len());
    // A summary that does not even parse as an envelope is refused on its own.
    let (envelopes, malformed) = requests::publish_batch(r)?;
    let mut published = g.hub.publish_batch(&caller, envelopes).await?.into_iter();
    let total = published.len() + malformed.len();
    let mut malformed = malformed.into_iter().peekable();
    let (mut stored, mut refused) = (0usize, 0usize);
    // Refusals are logged together: a batch of a thousand bad summaries is one
    // line with the count per code and the first reasons, not a thousand.
    let mut by_code: std::collections::BTreeMap<&'static str, usize> =
        std::collections::BTreeMap::new();
    let mut first_reasons: Vec<String> = Vec::new();
    let mut outcomes = Vec::with_capacity(total);
    for i in 0..total {
        let outcome = match malformed.next_if(|(at, _)| *at == i) {
            Some((_, e)) => Err(e),
            None => published.next().ok_or_else(|| {
                HubError::BadRequest("a summary of the batch has no outcome".into())
            })?,
        };
        outcomes.push(pb::PublishOutcome {
            outcome: Some(match outcome {
                Ok((outcome, proof)) => {
                    stored += 1;
                    pb::publish_outcome::Outcome::Published(publish_response(&outcome, proof))
                }
                Err(e) => {
                    refused += 1;
                    let status = e.into_status_unlogged();
                    *by_code.entry(status.code().description()).or_default() += 1;
                    if first_reasons.len() < 3 {
                        first_reasons.push(format!("#{i}: {}", status.message()));
                    }
                    pb::publish_outcome::Outcome::Refused(pb::PublishRefusal {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    })
                }
            }),
        });
    }
    if refused > 0 {
        tracing::warn!(
            stored,
            refused,
            codes = ?by_code,
            first = ?first_reasons,
            "summaries of a batch refused"
        );
    } else {
        tracing::info!(stored, "summary batch handled");
    }
    Ok(pb::PublishBatchResponse { outcomes })
}
