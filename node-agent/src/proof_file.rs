//! A portable proof of one result (`huren-proof/1`): the signed summary, its signing
//! certificate, the hub's acceptance time, the leaf's inclusion proof and the checkpoint (with
//! whatever witness cosignatures it carries), in one JSON file a patient or another region's
//! hospital can carry. [`verify`] checks it offline with only the alliance CA certificate and
//! the log's verifier key (and, if the reader trusts witnesses, their keys and a quorum):
//! VERIFYING.md section 5.4 is the same procedure in words.
//!
//! ```json
//! {
//!   "format": "huren-proof/1",
//!   "publisher": "shx-prov-people", "summary_id": "LAB-…", "version": 1,
//!   "accepted_at_ms": 1763596800000,
//!   "body": "<base64 of the signed body bytes>",
//!   "signature": "<base64, 64 bytes>",
//!   "signer_certificate": "<base64 of the DER>",
//!   "log_index": 12, "tree_size": 40,
//!   "inclusion_proof": ["<base64, 32 bytes>", …],
//!   "checkpoint": "<the signed note, newlines and all>"
//! }
//! ```
//!
//! Every field is checked and a failure names it; nothing in the file is trusted on its own
//! say (the readable `publisher`, `summary_id` and `version` must match the signed body).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use huren_core::checkpoint::NoteVerifier;
use huren_core::cosignature::{CosignerKey, cosigned_by};
use huren_core::logentry::{LogProof, summary_leaf, verify_leaf};
use huren_core::merkle::Hash;
use huren_core::signing::SignedEnvelope;
use huren_core::summary::{Summary, UnixMillis};
use huren_core::trust::AllianceCa;

use crate::verify::VerifiedResult;

/// The format tag of the file.
pub const FORMAT: &str = "huren-proof/1";
/// The largest file [`verify`] reads (a summary, a certificate and a proof take a few KiB).
pub const MAX_FILE_BYTES: usize = 256 * 1024;

/// The file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofFile {
    pub format: String,
    pub publisher: String,
    pub summary_id: String,
    pub version: u32,
    pub accepted_at_ms: i64,
    pub body: String,
    pub signature: String,
    pub signer_certificate: String,
    pub log_index: u64,
    pub tree_size: u64,
    pub inclusion_proof: Vec<String>,
    pub checkpoint: String,
}

/// Why a result cannot be exported, or a file does not prove what it says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofFileError {
    #[error(
        "{0} was not checked against the hub's log: configure [log] verifier_key so results come with inclusion proofs"
    )]
    NotLogged(String),
    #[error("the file is over {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("the file is not a huren-proof/1 JSON document: {0}")]
    Json(String),
    #[error("format is {0:?}; this reader knows {FORMAT:?}")]
    Format(String),
    #[error("{field}: {why}")]
    Field { field: &'static str, why: String },
    #[error(
        "{field} says {stated:?}, but the signed summary says {signed:?}: the file was altered"
    )]
    Mismatch {
        field: &'static str,
        stated: String,
        signed: String,
    },
    #[error(
        "body, signature or signer_certificate: the summary is not validly signed by an alliance member: {0}"
    )]
    Signature(String),
    #[error(
        "log_index, tree_size, inclusion_proof, accepted_at_ms or checkpoint: the log does not prove this summary: {0}"
    )]
    Log(String),
    #[error("checkpoint: {0}")]
    Witnesses(String),
}

fn field(field: &'static str, why: impl Into<String>) -> ProofFileError {
    ProofFileError::Field {
        field,
        why: why.into(),
    }
}

/// The file for a result the agent verified against the hub's log.
pub fn export(v: &VerifiedResult) -> Result<ProofFile, ProofFileError> {
    let key = v.summary.result_key();
    let proof = v
        .log_proof
        .as_ref()
        .ok_or_else(|| ProofFileError::NotLogged(key.clone()))?;
    Ok(ProofFile {
        format: FORMAT.into(),
        publisher: v.receipt.publisher.to_string(),
        summary_id: v.receipt.summary_id.to_string(),
        version: v.receipt.version,
        accepted_at_ms: v.receipt.accepted_at.0,
        body: BASE64.encode(&v.envelope.body),
        signature: BASE64.encode(v.envelope.signature),
        signer_certificate: BASE64.encode(&v.envelope.signer_certificate),
        log_index: proof.index,
        tree_size: proof.tree_size,
        inclusion_proof: proof.proof.iter().map(|h| BASE64.encode(h)).collect(),
        checkpoint: proof.checkpoint.clone(),
    })
}

/// What a reader trusts: the alliance CA, the log's key, and optionally witnesses.
#[derive(Clone, Debug)]
pub struct Trust {
    pub ca: AllianceCa,
    pub log: NoteVerifier,
    pub witnesses: Vec<CosignerKey>,
    /// How many of `witnesses` must have cosigned the checkpoint.
    pub quorum: usize,
}

/// A result the file proves.
#[derive(Clone, Debug)]
pub struct Proven {
    pub summary: Summary,
    pub accepted_at: UnixMillis,
    pub log_index: u64,
    pub tree_size: u64,
    /// The witnesses that cosigned the checkpoint, with their timestamps.
    pub cosigned_by: Vec<(String, u64)>,
}

fn decode(name: &'static str, text: &str) -> Result<Vec<u8>, ProofFileError> {
    BASE64
        .decode(text)
        .map_err(|_| field(name, "not standard base64 (RFC 4648 section 4, padded)"))
}

/// Checks a file's text: every field, offline.
pub fn verify(text: &str, trust: &Trust) -> Result<Proven, ProofFileError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ProofFileError::TooLarge);
    }
    let file: ProofFile =
        serde_json::from_str(text).map_err(|e| ProofFileError::Json(e.to_string()))?;
    if file.format != FORMAT {
        return Err(ProofFileError::Format(file.format));
    }
    let body = decode("body", &file.body)?;
    let signature: [u8; 64] = decode("signature", &file.signature)?
        .try_into()
        .map_err(|_| field("signature", "an Ed25519 signature is 64 bytes"))?;
    let certificate = decode("signer_certificate", &file.signer_certificate)?;
    let mut proof = Vec::with_capacity(file.inclusion_proof.len());
    for h in &file.inclusion_proof {
        let h: Hash = decode("inclusion_proof", h)?
            .try_into()
            .map_err(|_| field("inclusion_proof", "each hash is 32 bytes"))?;
        proof.push(h);
    }
    let accepted_at = UnixMillis(file.accepted_at_ms);
    // 1. Signed by a member, by the alliance CA's certificate valid when the hub accepted it.
    let envelope = SignedEnvelope {
        body,
        signature,
        signer_certificate: certificate,
    };
    let verified = envelope
        .verify(&trust.ca, accepted_at)
        .map_err(|e| ProofFileError::Signature(e.to_string()))?;
    let s = &verified.summary;
    // 2. The readable claims are the signed ones.
    for (name, stated, signed) in [
        ("publisher", file.publisher.clone(), s.publisher.to_string()),
        ("summary_id", file.summary_id.clone(), s.id.to_string()),
        ("version", file.version.to_string(), s.version.to_string()),
    ] {
        if stated != signed {
            return Err(ProofFileError::Mismatch {
                field: name,
                stated,
                signed,
            });
        }
    }
    // 3. In the log, at the acceptance time stated: the leaf commits to it.
    let leaf = summary_leaf(
        &verified.envelope.body,
        &verified.envelope.signature,
        &verified.envelope.signer_certificate,
        accepted_at,
    );
    let log_proof = LogProof {
        index: file.log_index,
        tree_size: file.tree_size,
        proof,
        checkpoint: file.checkpoint.clone(),
    };
    verify_leaf(&trust.log, &leaf, &log_proof).map_err(|e| ProofFileError::Log(e.to_string()))?;
    // 4. Witnessed, if the reader asks for it.
    let cosigned = cosigned_by(&file.checkpoint, &trust.witnesses)
        .map_err(|e| ProofFileError::Witnesses(format!("a witness cosignature: {e}")))?;
    if cosigned.len() < trust.quorum {
        return Err(ProofFileError::Witnesses(format!(
            "cosigned by {} of the trusted witnesses; {} required",
            cosigned.len(),
            trust.quorum
        )));
    }
    Ok(Proven {
        cosigned_by: cosigned
            .into_iter()
            .map(|(k, t)| (k.name().to_owned(), t))
            .collect(),
        summary: verified.summary,
        accepted_at,
        log_index: file.log_index,
        tree_size: file.tree_size,
    })
}
