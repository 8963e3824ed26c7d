use super::*;

/// The GetCheckpoint call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn get_checkpoint(
    g: &HubGrpc,
    caller: InstitutionId,
    _r: pb::GetCheckpointRequest,
) -> Result<pb::GetCheckpointResponse, HubError> {
    Ok(pb::GetCheckpointResponse {
        checkpoint: g.hub.checkpoint(&caller).await?,
    })
}

/// The GetConsistencyProof call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn get_consistency_proof(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::ConsistencyProofRequest,
) -> Result<pb::ConsistencyProofResponse, HubError> {
    let (proof, new_size) = g
        .hub
        .consistency_proof(&caller, r.old_size, r.new_size)
        .await?;
    Ok(pb::ConsistencyProofResponse {
        proof: proof.iter().map(|h| h.to_vec()).collect(),
        new_size,
    })
}

/// The GetInclusionProof call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn get_inclusion_proof(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::InclusionProofRequest,
) -> Result<pb::InclusionProofResponse, HubError> {
    let (leaf, proof) = g.hub.inclusion_proof(&caller, r.index, r.tree_size).await?;
    Ok(pb::InclusionProofResponse {
        leaf,
        proof: Some(pb::LogProof::from(proof)),
    })
}

/// The GetPolicy call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn get_policy(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::GetPolicyRequest,
) -> Result<pb::GetPolicyResponse, HubError> {
    let (leaf, proof) = g.hub.policy_entry(&caller, r.index).await?;
    Ok(pb::GetPolicyResponse {
        leaf,
        proof: Some(pb::LogProof::from(proof)),
    })
}

/// The GetLogEntries call (hub.proto): the request in domain terms, the answer back.
pub(super) async fn get_log_entries(
    g: &HubGrpc,
    caller: InstitutionId,
    r: pb::LogEntriesRequest,
) -> Result<pb::LogEntriesResponse, HubError> {
    let got = g
        .hub
        .log_entries(&caller, r.start, r.end, r.tree_size)
        .await?;
    Ok(pb::LogEntriesResponse {
        entries: got
            .entries
            .into_iter()
            .map(|(index, e)| match e {
                crate::service::AuditEntry::Leaf(leaf) => pb::LogEntryBytes {
                    index,
                    leaf,
                    leaf_hash: Vec::new(),
                },
                crate::service::AuditEntry::Hash(h) => pb::LogEntryBytes {
                    index,
                    leaf: Vec::new(),
                    leaf_hash: h.to_vec(),
                },
            })
            .collect(),
        tree_size: got.tree_size,
        checkpoint: got.checkpoint,
    })
}
