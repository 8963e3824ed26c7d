//! Structured seeds made with the fixtures' keys: what the test data cannot give as files
//! (signed notes, a proof file, protobuf requests, outbox records). `huren-fuzz-seeds` writes
//! them, with the test data files, into fuzz/corpus/<target>/; tests/replay.rs also runs them
//! straight from here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost::Message;
use serde_json::Value;

use huren_agent::proof_file::{FORMAT, ProofFile};
use huren_core::checkpoint::{Checkpoint, sign_checkpoint};
use huren_core::cosignature::{AddCheckpoint, add_signature_lines};
use huren_core::logentry::summary_leaf;
use huren_core::merkle::{MemoryTree, consistency_proof, inclusion_proof};
use huren_core::signing::SignedEnvelope;
use huren_core::summary::Summary;
use huren_proto::hub as pb;

use crate::fixtures;

const VECTORS: &str = include_str!("../../tests/vectors/huren-v1.json");

fn hexes(v: &Value) -> Vec<Vec<u8>> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().and_then(|s| hex::decode(s).ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The summary bodies of the vectors, each signed with the fixtures' signer.
fn signed() -> Vec<SignedEnvelope> {
    let v: Value = serde_json::from_str(VECTORS).unwrap_or(Value::Null);
    let f = fixtures::get();
    let bodies = hexes(
        &v["summary"]["versions"]
            .as_array()
            .map(|a| a.iter().map(|x| x["body"].clone()).collect())
            .unwrap_or(Value::Null),
    );
    bodies
        .iter()
        .filter_map(|b| Summary::from_body_bytes(b).ok())
        .filter_map(|s| f.signer.sign(&s).ok())
        .collect()
}

fn req(method: &str, bytes: Vec<u8>) -> Vec<u8> {
    let i = huren_hub::grpc::requests::METHODS
        .iter()
        .position(|m| *m == method)
        .unwrap_or(0);
    let mut out = vec![u8::try_from(i).unwrap_or(0)];
    out.extend(bytes);
    out
}

/// Every structured seed: (target, file name, bytes).
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let f = fixtures::get();
    let v: Value = serde_json::from_str(VECTORS).unwrap_or(Value::Null);
    let envelopes = signed();
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();

    // Summaries and envelopes.
    for (i, e) in envelopes.iter().enumerate() {
        out.push(("summary", format!("vector-body-{i}"), e.body.clone()));
        out.push(("envelope", format!("vector-envelope-{i}"), e.to_bytes()));
        let mut key = (i as u64 + 1).to_be_bytes().to_vec();
        key.extend(huren_agent::store::encode_outbox_record(
            "LAB-20261201-0001",
            u32::try_from(i).unwrap_or(0) + 1,
            e,
        ));
        out.push(("outbox_record", format!("vector-record-{i}"), key));
    }

    // Hub requests, one or more per RPC.
    let pseudonym = vec![7u8; 32];
    let item = pb::ItemCode {
        system: "http://loinc.org".into(),
        code: "718-7".into(),
    };
    let mut hub: Vec<(&str, Vec<u8>)> = vec![
        (
            "FindPrior",
            pb::FindPriorRequest {
                patient_pseudonym: pseudonym.clone(),
                items: vec![item.clone()],
                as_of_ms: 1_796_364_660_000,
                lookback_seconds: 86_400,
                purpose: 1,
                requester: "staff-0042".into(),
                with_proofs: true,
                certificates_once: true,
                compact_proofs: true,
            }
            .encode_to_vec(),
        ),
        (
            "History",
            pb::HistoryRequest {
                patient_pseudonym: pseudonym.clone(),
                since_ms: 5,
                include_earlier_versions: true,
                purpose: 2,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "CheckOrder",
            pb::CheckOrderRequest {
                patient_pseudonym: pseudonym.clone(),
                items: vec![
                    pb::OrderItem {
                        code: Some(pb::order_item::Code::Catalogue(item.clone())),
                    },
                    pb::OrderItem {
                        code: Some(pb::order_item::Code::LocalCode("HGB".into())),
                    },
                ],
                purpose: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "RecordDecision",
            pb::RecordDecisionRequest {
                decision_id: "d-1".into(),
                publisher: "shx-prov-people".into(),
                summary_id: "LAB-20261201-0001".into(),
                version: 1,
                decision: 2,
                reason: 1,
                note: "before surgery".into(),
            }
            .encode_to_vec(),
        ),
        (
            "GetStatistics",
            pb::StatisticsRequest {
                from_ms: 1,
                to_ms: 2,
                group_by: 1,
            }
            .encode_to_vec(),
        ),
        (
            "AccessReport",
            pb::AccessReportRequest {
                patient_pseudonym: pseudonym.clone(),
                requester: "staff-0042".into(),
                from_ms: 0,
                to_ms: 0,
            }
            .encode_to_vec(),
        ),
        (
            "SetConsent",
            pb::SetConsentRequest {
                patient_pseudonym: pseudonym,
                opted_out: true,
            }
            .encode_to_vec(),
        ),
        (
            "GetConsistencyProof",
            pb::ConsistencyProofRequest {
                old_size: 3,
                new_size: 7,
            }
            .encode_to_vec(),
        ),
        (
            "GetInclusionProof",
            pb::InclusionProofRequest {
                index: 1,
                tree_size: 7,
            }
            .encode_to_vec(),
        ),
        ("GetCheckpoint", vec![]),
    ];
    if let Some(e) = envelopes.first() {
        hub.push((
            "Publish",
            pb::PublishRequest {
                summary: Some(e.clone().into()),
            }
            .encode_to_vec(),
        ));
    }
    hub.push((
        "PublishBatch",
        pb::PublishBatchRequest {
            summaries: envelopes.iter().cloned().map(Into::into).collect(),
        }
        .encode_to_vec(),
    ));
    for (m, bytes) in hub {
        out.push(("hub_request", format!("rpc-{m}"), req(m, bytes)));
    }

    // The log: leaves of every kind, a tree over them and the summary's own leaf, proofs.
    for (i, leaf) in v["log"]["leaves"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["leaf"].as_str().and_then(|s| hex::decode(s).ok()))
        .enumerate()
    {
        out.push(("log_leaf", format!("vector-leaf-{i}"), leaf));
    }
    let accepted = f.at;
    let mut tree = MemoryTree::new();
    let first = envelopes.first();
    let leaf = first.map(|e| summary_leaf(&e.body, &e.signature, &e.signer_certificate, accepted));
    if let Some(l) = &leaf {
        tree.push(l);
        out.push(("log_leaf", "summary-leaf".into(), l.clone()));
    }
    for k in 1u64..6 {
        tree.push(&k.to_be_bytes());
    }
    let size = tree.size();
    let checkpoint = Checkpoint {
        origin: f.origin.clone(),
        size,
        root: tree.root(),
    };
    let note = sign_checkpoint(&checkpoint, &f.log).unwrap_or_default();
    let line = f
        .witness
        .cosign(&checkpoint.to_body(), 1_796_364_660)
        .unwrap_or_default();
    let cosigned = add_signature_lines(&note, &line).unwrap_or_else(|_| note.clone());
    out.push(("checkpoint", "note".into(), note.clone().into_bytes()));
    out.push((
        "checkpoint",
        "cosigned-note".into(),
        cosigned.clone().into_bytes(),
    ));
    out.push((
        "checkpoint",
        "body".into(),
        checkpoint.to_body().into_bytes(),
    ));
    out.push((
        "checkpoint",
        "verifier-key".into(),
        f.log_verifier.to_string().into_bytes(),
    ));
    out.push((
        "checkpoint",
        "witness-key".into(),
        f.witness_key.to_string().into_bytes(),
    ));
    out.push((
        "checkpoint",
        "add-signature-lines".into(),
        format!("{note}\n\n{line}").into_bytes(),
    ));
    let mut old = MemoryTree::new();
    if let Some(l) = &leaf {
        old.push(l);
    }
    old.push(&1u64.to_be_bytes());
    let add = AddCheckpoint {
        old_size: old.size(),
        proof: consistency_proof(old.size(), size, &tree).unwrap_or_default(),
        checkpoint: note.clone(),
    };
    out.push((
        "checkpoint",
        "add-checkpoint".into(),
        add.to_body().into_bytes(),
    ));
    for (n, (a, b, c, d)) in [
        (0u8, 0u8, 0u8, 0u8),
        (200, 37, 99, 5),
        (255, 255, 128, 31),
        (6, 3, 4, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = vec![0u8; 16];
        m.extend([a, b, c, d]);
        out.push(("merkle", format!("tree-{n}"), m));
    }
    if let Ok(p) = inclusion_proof(3, size, &tree) {
        let mut m = 3u64.to_be_bytes().to_vec();
        m.extend(size.to_be_bytes());
        m.extend(huren_core::merkle::leaf_hash(&3u64.to_be_bytes()));
        m.extend(tree.root());
        for h in p {
            m.extend(h);
        }
        out.push(("merkle", "inclusion-3".into(), m));
    }

    // A proof file for the first envelope, with the witness's cosignature.
    if let (Some(e), Ok(proof)) = (first, inclusion_proof(0, size, &tree))
        && let Ok(s) = Summary::from_body_bytes(&e.body)
    {
        let file = ProofFile {
            format: FORMAT.into(),
            publisher: s.publisher.to_string(),
            summary_id: s.id.to_string(),
            version: s.version,
            accepted_at_ms: accepted.0,
            body: BASE64.encode(&e.body),
            signature: BASE64.encode(e.signature),
            signer_certificate: BASE64.encode(&e.signer_certificate),
            log_index: 0,
            tree_size: size,
            inclusion_proof: proof.iter().map(|h| BASE64.encode(h)).collect(),
            checkpoint: cosigned,
        };
        let text = serde_json::to_string_pretty(&file).unwrap_or_default();
        out.push(("proof_file", "cosigned".into(), text.into_bytes()));
    }
    out
}

/// Test data files that seed a target: (target, path from the repository's root).
pub const FILE_SEEDS: &[(&str, &str)] = &[
    ("hl7", "node-agent/tests-data/hl7"),
    ("fhir", "node-agent/tests-data/fhir"),
    ("policy", "hub/policy.example.toml"),
    ("results", "node-agent/examples/results.json"),
];
