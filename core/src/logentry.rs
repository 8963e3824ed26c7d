//! Entries of the hub's Merkle log: the exact leaf bytes for each kind of logged event, and the
//! pure verifier that checks a leaf against a signed checkpoint.
//!
//! Every leaf starts with a format version and a kind. Integers are big-endian; `str` and
//! `bytes` fields are a `u32` big-endian length followed by that many bytes (UTF-8 for `str`).
//!
//! ```text
//! leaf = format:u8 || kind:u8 || fields
//!
//! format 0x01 (LEAF_V1) for every kind; 0x02 (LEAF_V2) for access leaves that end with the
//! policy version that judged the answer; 0x03 (LEAF_V3) for access leaves that also name who
//! asked; 0x04 (LEAF_V4) for decision and access leaves that also carry what the statistics
//! are computed from (all decision and access leaves the hub writes now). Every format is read.
//!
//! kind 0x01 summary version (publish, amendment and void alike: a void is a version)
//!   accepted_at_ms:i64 || signer_certificate_sha256[32] || signature[64] || body:bytes
//! kind 0x02 decision
//!   at_ms:i64 || member:str || decision_id:str || publisher:str || summary_id:str
//!   || version:u32 || adopted:u8 || recognised:u8 || reason:str || note:str
//!   [|| item_system:str || item_code:str || price_fen:u64 || consulted_at_ms:i64]   format 0x04
//! kind 0x03 access (FindPrior, History, CheckOrder, AccessReport)
//!   at_ms:i64 || caller:str || purpose:u8 || method:u8 || flags:u8 || pseudonym[32]
//!   || count:u32 || count × (publisher:str || summary_id:str || version:u32)
//!   [|| policy_version:str]                       formats 0x02 and 0x03
//!   [|| requester:str]                            formats 0x03 and 0x04 (empty: none stated)
//!   [|| asked:u32 || asked × (system:str || code:str)
//!    || count × (item_system:str || item_code:str || recognised:u8)]   format 0x04
//!   flags: bit 0 = emergency override of an opt-out, bit 1 = results withheld by consent
//! kind 0x04 consent
//!   at_ms:i64 || member:str || pseudonym[32] || opted_out:u8
//! kind 0x05 policy (a policy the hub put in force, logged before any verdict uses it)
//!   at_ms:i64 || version:str || text:bytes          text: the policy file's exact bytes (TOML)
//! ```
//!
//! A summary leaf commits to the exact signed body bytes, the signature, the signing
//! certificate (by SHA-256 of its DER) and the hub's acceptance time, so "signed before the
//! revocation, by log time" is provable from the leaf alone. The leaf hash is
//! [`crate::merkle::leaf_hash`] of these bytes (RFC 6962 `0x00` prefix).
//!
//! [`verify_leaf`] needs nothing but the signed checkpoint, the log's public key (a C2SP
//! verifier key) and the leaf bytes: anyone can check a receipt or an access-report entry
//! without trusting the hub.

use crate::checkpoint::{Checkpoint, CheckpointError, NoteVerifier, open_checkpoint};
use crate::merkle::{Hash, ProofError, leaf_hash, verify_inclusion};
use crate::summary::UnixMillis;

/// First byte of every leaf: the leaf format version.
pub const LEAF_V1: u8 = 0x01;
/// Format of access leaves that name the policy version in force (all access leaves written
/// since 2026-12-04).
pub const LEAF_V2: u8 = 0x02;
/// Format of access leaves that also name who asked at the calling member (see
/// [`check_requester`]); every access leaf the hub writes now.
pub const LEAF_V3: u8 = 0x03;

/// Format of decision and access leaves that also carry what the statistics are computed
/// from ([`DecisionFacts`], [`AccessFacts`]); every decision and access leaf the hub writes
/// now.
pub const LEAF_V4: u8 = 0x04;

/// The longest requester id an access leaf carries.
pub const MAX_REQUESTER_LEN: usize = 64;

/// Checks a requester id: who asked at the calling member, as the member names them to the
/// alliance (a staff number, an account id, a hashed id, `ehr:` and a client id), never a
/// person's name. 1 to [`MAX_REQUESTER_LEN`] characters of `A-Z a-z 0-9 . _ : @ -`; the
/// closed set keeps names (and any other free text) out of the log.
pub fn check_requester(requester: &str) -> Result<(), String> {
    if requester.is_empty() || requester.len() > MAX_REQUESTER_LEN {
        return Err(format!(
            "requester must be 1 to {MAX_REQUESTER_LEN} characters; got {}",
            requester.chars().count()
        ));
    }
    match requester
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')))
    {
        Some(c) => Err(format!(
            "requester may hold only the letters A-Z and a-z, the digits and . _ : @ - (a staff or account id, never a name); found {c:?}"
        )),
        None => Ok(()),
    }
}

/// Kind byte of a summary-version leaf.
pub const KIND_SUMMARY: u8 = 0x01;
/// Kind byte of a decision leaf.
pub const KIND_DECISION: u8 = 0x02;
/// Kind byte of an access leaf.
pub const KIND_ACCESS: u8 = 0x03;
/// Kind byte of a consent leaf.
pub const KIND_CONSENT: u8 = 0x04;
/// Kind byte of a policy leaf.
pub const KIND_POLICY: u8 = 0x05;

/// Why a query was made (purpose of use). The numbers are the leaf bytes and the wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Purpose {
    /// Care of the patient at the caller's institution.
    Treatment = 1,
    /// Preparing or receiving a referral.
    Referral = 2,
    /// Emergency care: the only purpose that sees the results of a patient who opted out.
    Emergency = 3,
    /// The patient asked (e.g. for their own access report).
    PatientRequest = 4,
    /// Alliance administration and audit.
    Administration = 5,
    /// Quality control of the alliance's results.
    QualityControl = 6,
}

impl Purpose {
    pub const ALL: [Purpose; 6] = [
        Self::Treatment,
        Self::Referral,
        Self::Emergency,
        Self::PatientRequest,
        Self::Administration,
        Self::QualityControl,
    ];

    pub fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| *p as u8 == b)
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Treatment => "treatment",
            Self::Referral => "referral",
            Self::Emergency => "emergency",
            Self::PatientRequest => "patient-request",
            Self::Administration => "administration",
            Self::QualityControl => "quality-control",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Which call an access leaf records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    FindPrior = 1,
    History = 2,
    CheckOrder = 3,
    AccessReport = 4,
    /// An administrator read a log entry's bytes (GetInclusionProof) for audit.
    LogEntry = 5,
}

impl Method {
    pub fn from_u8(b: u8) -> Option<Self> {
        [
            Self::FindPrior,
            Self::History,
            Self::CheckOrder,
            Self::AccessReport,
            Self::LogEntry,
        ]
        .into_iter()
        .find(|m| *m as u8 == b)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::FindPrior => "FindPrior",
            Self::History => "History",
            Self::CheckOrder => "CheckOrder",
            Self::AccessReport => "AccessReport",
            Self::LogEntry => "GetInclusionProof",
        }
    }
}

/// One result named in an access leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultRef {
    pub publisher: String,
    pub summary_id: String,
    pub version: u32,
}

/// What a decision leaf of format [`LEAF_V4`] adds: the item decided on, its reference price
/// under the policy in force, and the consultation decided on (statistics count only a
/// member's latest decision per consultation, `stats::ConsultationKey`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionFacts {
    pub item_system: String,
    pub item_code: String,
    /// The item's reference price when the decision was recorded, in fen.
    pub price_fen: u64,
    /// When the query that showed the result was answered (its access leaf's `at_ms`).
    pub consulted_at: UnixMillis,
}

/// What an access leaf of format [`LEAF_V4`] adds: the items asked for (FindPrior and
/// CheckOrder: one statistics query each) and, for each result shown (in the order of
/// `results`), its item and whether it was recognised for the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessFacts {
    /// (code system, code) of each item asked for.
    pub asked: Vec<(String, String)>,
    /// One per result shown, in the same order.
    pub shown: Vec<ShownFact>,
}

/// A shown result's item and verdict, in an access leaf of format [`LEAF_V4`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShownFact {
    pub item_system: String,
    pub item_code: String,
    pub recognised: bool,
}

/// A logged event, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Summary {
        accepted_at: UnixMillis,
        signer_certificate_sha256: Hash,
        signature: [u8; 64],
        body: Vec<u8>,
    },
    Decision {
        at: UnixMillis,
        member: String,
        decision_id: String,
        publisher: String,
        summary_id: String,
        version: u32,
        adopted: bool,
        recognised: bool,
        /// Re-test reason code, empty for none.
        reason: String,
        note: String,
        /// What the statistics count the decision under: `Some` in a [`LEAF_V4`] leaf.
        facts: Option<DecisionFacts>,
    },
    Access {
        at: UnixMillis,
        caller: String,
        purpose: Purpose,
        method: Method,
        /// The patient had opted out and the emergency purpose overrode it.
        emergency_override: bool,
        /// The patient had opted out and nothing was returned.
        withheld_by_consent: bool,
        pseudonym: [u8; 32],
        results: Vec<ResultRef>,
        /// The version label of the alliance policy whose rules judged the answer: `Some` in
        /// a [`LEAF_V2`] or [`LEAF_V3`] leaf, `None` in an older [`LEAF_V1`] one.
        policy_version: Option<String>,
        /// Who asked at the caller (see [`check_requester`]; empty when the member stated
        /// no one): `Some` in a [`LEAF_V3`] or [`LEAF_V4`] leaf, `None` in older ones. A
        /// leaf with a requester always has a policy version (`None` is written as empty).
        requester: Option<String>,
        /// What the statistics count the access under: `Some` in a [`LEAF_V4`] leaf (which
        /// always has a requester and a policy version; `None` are written as empty).
        facts: Option<AccessFacts>,
    },
    Consent {
        at: UnixMillis,
        member: String,
        pseudonym: [u8; 32],
        opted_out: bool,
    },
    /// A policy the hub put in force: its version label and the policy file's exact text,
    /// which `policy_file::parse` reads (every verdict names this leaf's index).
    Policy {
        at: UnixMillis,
        version: String,
        text: Vec<u8>,
    },
}

const FLAG_EMERGENCY_OVERRIDE: u8 = 0b01;
const FLAG_WITHHELD: u8 = 0b10;

struct W(Vec<u8>);

impl W {
    fn new(kind: u8) -> Self {
        Self(vec![LEAF_V1, kind])
    }
    fn with_format(format: u8, kind: u8) -> Self {
        Self(vec![format, kind])
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Leaves are far below 4 GiB (bodies are limited by the hub's message size).
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.raw(v)
    }
}

impl Entry {
    /// The leaf bytes (layout in the module doc).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Entry::Summary {
                accepted_at,
                signer_certificate_sha256,
                signature,
                body,
            } => {
                let mut w = W::new(KIND_SUMMARY);
                w.i64(accepted_at.0)
                    .raw(signer_certificate_sha256)
                    .raw(signature)
                    .bytes(body);
                w.0
            }
            Entry::Decision {
                at,
                member,
                decision_id,
                publisher,
                summary_id,
                version,
                adopted,
                recognised,
                reason,
                note,
                facts,
            } => {
                let format = if facts.is_some() { LEAF_V4 } else { LEAF_V1 };
                let mut w = W::with_format(format, KIND_DECISION);
                w.i64(at.0)
                    .bytes(member.as_bytes())
                    .bytes(decision_id.as_bytes())
                    .bytes(publisher.as_bytes())
                    .bytes(summary_id.as_bytes())
                    .u32(*version)
                    .u8(u8::from(*adopted))
                    .u8(u8::from(*recognised))
                    .bytes(reason.as_bytes())
                    .bytes(note.as_bytes());
                if let Some(f) = facts {
                    w.bytes(f.item_system.as_bytes())
                        .bytes(f.item_code.as_bytes())
                        .u64(f.price_fen)
                        .i64(f.consulted_at.0);
                }
                w.0
            }
            Entry::Access {
                at,
                caller,
                purpose,
                method,
                emergency_override,
                withheld_by_consent,
                pseudonym,
                results,
                policy_version,
                requester,
                facts,
            } => {
                let mut flags = 0;
                if *emergency_override {
                    flags |= FLAG_EMERGENCY_OVERRIDE;
                }
                if *withheld_by_consent {
                    flags |= FLAG_WITHHELD;
                }
                let format = match (policy_version, requester) {
                    _ if facts.is_some() => LEAF_V4,
                    (_, Some(_)) => LEAF_V3,
                    (Some(_), None) => LEAF_V2,
                    (None, None) => LEAF_V1,
                };
                let mut w = W::with_format(format, KIND_ACCESS);
                w.i64(at.0)
                    .bytes(caller.as_bytes())
                    .u8(*purpose as u8)
                    .u8(*method as u8)
                    .u8(flags)
                    .raw(pseudonym)
                    .u32(u32::try_from(results.len()).unwrap_or(u32::MAX));
                for r in results {
                    w.bytes(r.publisher.as_bytes())
                        .bytes(r.summary_id.as_bytes())
                        .u32(r.version);
                }
                if format != LEAF_V1 {
                    w.bytes(policy_version.as_deref().unwrap_or_default().as_bytes());
                }
                if format == LEAF_V3 || format == LEAF_V4 {
                    w.bytes(requester.as_deref().unwrap_or_default().as_bytes());
                }
                if let Some(f) = facts {
                    w.u32(u32::try_from(f.asked.len()).unwrap_or(u32::MAX));
                    for (system, code) in &f.asked {
                        w.bytes(system.as_bytes()).bytes(code.as_bytes());
                    }
                    // One per result: a missing one is written as an unknown, unrecognised item.
                    for i in 0..results.len() {
                        match f.shown.get(i) {
                            Some(x) => w
                                .bytes(x.item_system.as_bytes())
                                .bytes(x.item_code.as_bytes())
                                .u8(u8::from(x.recognised)),
                            None => w.bytes(b"").bytes(b"").u8(0),
                        };
                    }
                }
                w.0
            }
            Entry::Consent {
                at,
                member,
                pseudonym,
                opted_out,
            } => {
                let mut w = W::new(KIND_CONSENT);
                w.i64(at.0)
                    .bytes(member.as_bytes())
                    .raw(pseudonym)
                    .u8(u8::from(*opted_out));
                w.0
            }
            Entry::Policy { at, version, text } => {
                let mut w = W::new(KIND_POLICY);
                w.i64(at.0).bytes(version.as_bytes()).bytes(text);
                w.0
            }
        }
    }

    /// Reads leaf bytes; the exact inverse of [`Entry::encode`] (trailing bytes are refused).
    pub fn decode(leaf: &[u8]) -> Result<Entry, LeafError> {
        let mut r = R(leaf);
        let format = r.u8()?;
        let kind = r.u8()?;
        match (format, kind) {
            (LEAF_V1, _) | (LEAF_V2 | LEAF_V3 | LEAF_V4, KIND_ACCESS) => {}
            (LEAF_V4, KIND_DECISION) => {}
            (LEAF_V2 | LEAF_V3 | LEAF_V4, k) => return Err(LeafError::Kind(k)),
            (f, _) => return Err(LeafError::Version(f)),
        }
        let entry = match kind {
            KIND_SUMMARY => Entry::Summary {
                accepted_at: UnixMillis(r.i64()?),
                signer_certificate_sha256: r.array()?,
                signature: r.array()?,
                body: r.bytes()?.to_vec(),
            },
            KIND_DECISION => Entry::Decision {
                at: UnixMillis(r.i64()?),
                member: r.str()?,
                decision_id: r.str()?,
                publisher: r.str()?,
                summary_id: r.str()?,
                version: r.u32()?,
                adopted: r.bool()?,
                recognised: r.bool()?,
                reason: r.str()?,
                note: r.str()?,
                facts: if format == LEAF_V4 {
                    Some(DecisionFacts {
                        item_system: r.str()?,
                        item_code: r.str()?,
                        price_fen: r.u64()?,
                        consulted_at: UnixMillis(r.i64()?),
                    })
                } else {
                    None
                },
            },
            KIND_ACCESS => {
                let at = UnixMillis(r.i64()?);
                let caller = r.str()?;
                let p = r.u8()?;
                let purpose = Purpose::from_u8(p).ok_or(LeafError::Value("purpose"))?;
                let m = r.u8()?;
                let method = Method::from_u8(m).ok_or(LeafError::Value("method"))?;
                let flags = r.u8()?;
                if flags & !(FLAG_EMERGENCY_OVERRIDE | FLAG_WITHHELD) != 0 {
                    return Err(LeafError::Value("flags"));
                }
                let pseudonym = r.array()?;
                let n = r.u32()?;
                let mut results = Vec::new();
                for _ in 0..n {
                    results.push(ResultRef {
                        publisher: r.str()?,
                        summary_id: r.str()?,
                        version: r.u32()?,
                    });
                }
                let policy_version = if format == LEAF_V1 {
                    None
                } else {
                    Some(r.str()?)
                };
                let requester = if format == LEAF_V3 || format == LEAF_V4 {
                    Some(r.str()?)
                } else {
                    None
                };
                let facts = if format == LEAF_V4 {
                    let asked_n = r.u32()?;
                    let mut asked = Vec::new();
                    for _ in 0..asked_n {
                        asked.push((r.str()?, r.str()?));
                    }
                    let mut shown = Vec::with_capacity(results.len());
                    for _ in 0..results.len() {
                        shown.push(ShownFact {
                            item_system: r.str()?,
                            item_code: r.str()?,
                            recognised: r.bool()?,
                        });
                    }
                    Some(AccessFacts { asked, shown })
                } else {
                    None
                };
                Entry::Access {
                    at,
                    caller,
                    purpose,
                    method,
                    emergency_override: flags & FLAG_EMERGENCY_OVERRIDE != 0,
                    withheld_by_consent: flags & FLAG_WITHHELD != 0,
                    pseudonym,
                    results,
                    policy_version,
                    requester,
                    facts,
                }
            }
            KIND_CONSENT => Entry::Consent {
                at: UnixMillis(r.i64()?),
                member: r.str()?,
                pseudonym: r.array()?,
                opted_out: r.bool()?,
            },
            KIND_POLICY => Entry::Policy {
                at: UnixMillis(r.i64()?),
                version: r.str()?,
                text: r.bytes()?.to_vec(),
            },
            k => return Err(LeafError::Kind(k)),
        };
        if !r.0.is_empty() {
            return Err(LeafError::Trailing);
        }
        Ok(entry)
    }

    /// The leaf hash of this entry.
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.encode())
    }
}

/// The leaf of a summary version, from what a receipt and a stored summary carry.
pub fn summary_leaf(
    body: &[u8],
    signature: &[u8; 64],
    signer_certificate_der: &[u8],
    accepted_at: UnixMillis,
) -> Vec<u8> {
    Entry::Summary {
        accepted_at,
        signer_certificate_sha256: crate::signing::sha256(signer_certificate_der),
        signature: *signature,
        body: body.to_vec(),
    }
    .encode()
}

/// Why leaf bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    #[error("unknown leaf format version {0}")]
    Version(u8),
    #[error("unknown leaf kind {0}")]
    Kind(u8),
    #[error("the leaf ends early")]
    Truncated,
    #[error("the leaf has bytes after its last field")]
    Trailing,
    #[error("the leaf's {0} is not valid")]
    Value(&'static str),
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LeafError> {
        if self.0.len() < n {
            return Err(LeafError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], LeafError> {
        self.take(N)?.try_into().map_err(|_| LeafError::Truncated)
    }
    fn u8(&mut self) -> Result<u8, LeafError> {
        Ok(self.array::<1>()?[0])
    }
    fn bool(&mut self) -> Result<bool, LeafError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(LeafError::Value("boolean")),
        }
    }
    fn u32(&mut self) -> Result<u32, LeafError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, LeafError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, LeafError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], LeafError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, LeafError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| LeafError::Value("text"))
    }
}

/// Where a leaf sits in the log and the proof that it does, as a receipt carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogProof {
    /// The leaf's index (0-based).
    pub index: u64,
    /// The tree size the proof and the checkpoint are for.
    pub tree_size: u64,
    /// The RFC 9162 inclusion path, leaf end first.
    pub proof: Vec<Hash>,
    /// The hub's signed checkpoint (C2SP signed note) of a tree of `tree_size` leaves.
    pub checkpoint: String,
}

/// Why a leaf was not shown to be in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogVerifyError {
    #[error("the checkpoint is not valid: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the proof is for a tree of {proof} leaves but the checkpoint is for {checkpoint}")]
    SizeMismatch { proof: u64, checkpoint: u64 },
    #[error("the entry is not in the log at index {index}: {source}")]
    NotIncluded {
        index: u64,
        #[source]
        source: ProofError,
    },
}

/// Checks that `leaf` is entry `proof.index` of the log whose signed checkpoint is
/// `proof.checkpoint`, using only the log's verifier key. The checkpoint's origin must be the
/// key's name (C2SP: a log's key is named after its origin). Returns the opened checkpoint.
pub fn verify_leaf(
    verifier: &NoteVerifier,
    leaf: &[u8],
    proof: &LogProof,
) -> Result<Checkpoint, LogVerifyError> {
    let checkpoint = open_checkpoint(&proof.checkpoint, verifier, verifier.name())?;
    if checkpoint.size != proof.tree_size {
        return Err(LogVerifyError::SizeMismatch {
            proof: proof.tree_size,
            checkpoint: checkpoint.size,
        });
    }
    verify_inclusion(
        &leaf_hash(leaf),
        proof.index,
        checkpoint.size,
        &proof.proof,
        &checkpoint.root,
    )
    .map_err(|source| LogVerifyError::NotIncluded {
        index: proof.index,
        source,
    })?;
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{NoteSigner, sign_checkpoint};
    use crate::merkle::MemoryTree;

    fn hexs(b: &[u8]) -> String {
        hex::encode(b)
    }

    #[test]
    fn summary_leaf_bytes_are_pinned() {
        let leaf = Entry::Summary {
            accepted_at: UnixMillis(0x0102_0304_0506_0708),
            signer_certificate_sha256: [0xaa; 32],
            signature: [0xbb; 64],
            body: vec![0xc0, 0xc1],
        }
        .encode();
        let expected = format!(
            "0101{}{}{}{}{}",
            "0102030405060708",
            "aa".repeat(32),
            "bb".repeat(64),
            "00000002",
            "c0c1"
        );
        assert_eq!(hexs(&leaf), expected);
        assert_eq!(leaf.len(), 2 + 8 + 32 + 64 + 4 + 2);
    }

    #[test]
    fn decision_leaf_bytes_are_pinned() {
        let leaf = Entry::Decision {
            at: UnixMillis(1),
            member: "m".into(),
            decision_id: "d".into(),
            publisher: "p".into(),
            summary_id: "s".into(),
            version: 2,
            adopted: false,
            recognised: true,
            reason: "too-old".into(),
            note: "".into(),
            facts: None,
        }
        .encode();
        let expected = concat!(
            "0102",
            "0000000000000001",
            "000000016d",
            "0000000164",
            "0000000170",
            "0000000173",
            "00000002",
            "00",
            "01",
            "00000007746f6f2d6f6c64",
            "00000000"
        );
        assert_eq!(hexs(&leaf), expected);
    }

    /// Format 0x04 adds the item, the price in force and the consultation.
    #[test]
    fn decision_leaf_v4_bytes_are_pinned() {
        let entry = Entry::Decision {
            at: UnixMillis(1),
            member: "m".into(),
            decision_id: "d".into(),
            publisher: "p".into(),
            summary_id: "s".into(),
            version: 2,
            adopted: true,
            recognised: true,
            reason: "".into(),
            note: "".into(),
            facts: Some(DecisionFacts {
                item_system: "l".into(),
                item_code: "7".into(),
                price_fen: 500,
                consulted_at: UnixMillis(0x10),
            }),
        };
        let leaf = entry.encode();
        let expected = concat!(
            "0402",
            "0000000000000001",
            "000000016d",
            "0000000164",
            "0000000170",
            "0000000173",
            "00000002",
            "01",
            "01",
            "00000000",
            "00000000",
            "000000016c",
            "0000000137",
            "00000000000001f4",
            "0000000000000010"
        );
        assert_eq!(hexs(&leaf), expected);
        assert_eq!(Entry::decode(&leaf).unwrap(), entry);
    }

    #[test]
    fn policy_leaf_bytes_are_pinned() {
        let entry = Entry::Policy {
            at: UnixMillis(2),
            version: "v1".into(),
            text: b"version = \"v1\"\n".to_vec(),
        };
        let leaf = entry.encode();
        assert_eq!(
            hexs(&leaf),
            format!(
                "0105{}{}{}{}",
                "0000000000000002",
                "000000027631",
                "0000000f",
                hexs(b"version = \"v1\"\n")
            )
        );
        assert_eq!(Entry::decode(&leaf).unwrap(), entry);
        for format in [LEAF_V2, LEAF_V3, LEAF_V4] {
            let mut other = leaf.clone();
            other[0] = format;
            assert_eq!(Entry::decode(&other), Err(LeafError::Kind(KIND_POLICY)));
        }
    }

    /// Format 0x01 (written before 2026-12-04, still read), format 0x02, which ends with the
    /// policy version, and format 0x03, which then names who asked.
    #[test]
    fn access_leaf_bytes_are_pinned() {
        let access = |policy_version: Option<&str>, requester: Option<&str>| Entry::Access {
            at: UnixMillis(2),
            caller: "c".into(),
            purpose: Purpose::Emergency,
            method: Method::FindPrior,
            emergency_override: true,
            withheld_by_consent: false,
            pseudonym: [0x11; 32],
            results: vec![ResultRef {
                publisher: "p".into(),
                summary_id: "s".into(),
                version: 3,
            }],
            policy_version: policy_version.map(Into::into),
            requester: requester.map(Into::into),
            facts: None,
        };
        let fields = format!(
            "{}{}{}{}{}{}{}",
            "0000000000000002",
            "0000000163",
            "030101",
            "11".repeat(32),
            "00000001",
            "00000001700000000173",
            "00000003"
        );
        let v1 = access(None, None).encode();
        assert_eq!(hexs(&v1), format!("0103{fields}"));
        let v2 = access(Some("2026.11-1"), None).encode();
        let policy = format!("00000009{}", hexs(b"2026.11-1"));
        assert_eq!(hexs(&v2), format!("0203{fields}{policy}"));
        let v3 = access(Some("2026.11-1"), Some("staff:D0423")).encode();
        assert_eq!(
            hexs(&v3),
            format!("0303{fields}{policy}0000000b{}", hexs(b"staff:D0423"))
        );
        let v3_nobody = access(Some("2026.11-1"), Some("")).encode();
        assert_eq!(hexs(&v3_nobody), format!("0303{fields}{policy}00000000"));
        assert_eq!(Entry::decode(&v1).unwrap(), access(None, None));
        assert_eq!(Entry::decode(&v2).unwrap(), access(Some("2026.11-1"), None));
        assert_eq!(
            Entry::decode(&v3).unwrap(),
            access(Some("2026.11-1"), Some("staff:D0423"))
        );
        // A requester without a policy version writes the version as empty.
        assert_eq!(
            Entry::decode(&access(None, Some("x")).encode()).unwrap(),
            access(Some(""), Some("x"))
        );
        // A format 0x03 leaf cut after its policy version is refused, not read as 0x02.
        assert_eq!(Entry::decode(&v3[..v2.len()]), Err(LeafError::Truncated));
        // Format 0x04: the items asked, then each shown result's item and verdict.
        let mut v4_entry = access(Some("2026.11-1"), Some("staff:D0423"));
        if let Entry::Access { facts, .. } = &mut v4_entry {
            *facts = Some(AccessFacts {
                asked: vec![("l".into(), "7".into())],
                shown: vec![ShownFact {
                    item_system: "l".into(),
                    item_code: "7".into(),
                    recognised: true,
                }],
            });
        }
        let v4 = v4_entry.encode();
        assert_eq!(
            hexs(&v4),
            format!(
                "0403{fields}{policy}0000000b{}{}{}",
                hexs(b"staff:D0423"),
                "00000001000000016c0000000137",
                "000000016c000000013701"
            )
        );
        assert_eq!(Entry::decode(&v4).unwrap(), v4_entry);
        assert_eq!(Entry::decode(&v4[..v3.len()]), Err(LeafError::Truncated));
    }

    #[test]
    fn requester_ids_are_a_closed_set() {
        for ok in [
            "D0423",
            "staff:D0423",
            "ehr:his-01@ward.7",
            "a",
            &"x".repeat(64),
        ] {
            assert_eq!(check_requester(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "张三",
            "Zhang San",
            "a/b",
            "x\n",
            &"x".repeat(65),
            "id\u{0}",
        ] {
            assert!(check_requester(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn consent_leaf_bytes_are_pinned() {
        let leaf = Entry::Consent {
            at: UnixMillis(3),
            member: "m".into(),
            pseudonym: [0x22; 32],
            opted_out: true,
        }
        .encode();
        let expected = format!(
            "0104{}{}{}{}",
            "0000000000000003",
            "000000016d",
            "22".repeat(32),
            "01"
        );
        assert_eq!(hexs(&leaf), expected);
    }

    #[test]
    fn every_kind_round_trips_and_damage_is_refused() {
        let entries = [
            Entry::Summary {
                accepted_at: UnixMillis(-5),
                signer_certificate_sha256: [1; 32],
                signature: [2; 64],
                body: b"body".to_vec(),
            },
            Entry::Decision {
                at: UnixMillis(9),
                member: "蓝田".into(),
                decision_id: "x".into(),
                publisher: "p".into(),
                summary_id: "s".into(),
                version: 1,
                adopted: true,
                recognised: true,
                reason: String::new(),
                note: "n".into(),
                facts: None,
            },
            Entry::Access {
                at: UnixMillis(9),
                caller: "c".into(),
                purpose: Purpose::Treatment,
                method: Method::History,
                emergency_override: false,
                withheld_by_consent: true,
                pseudonym: [3; 32],
                results: vec![],
                policy_version: Some("v".into()),
                requester: Some("staff:1".into()),
                facts: Some(AccessFacts::default()),
            },
            Entry::Policy {
                at: UnixMillis(9),
                version: "v".into(),
                text: b"x".to_vec(),
            },
            Entry::Consent {
                at: UnixMillis(9),
                member: "m".into(),
                pseudonym: [4; 32],
                opted_out: false,
            },
        ];
        for e in entries {
            let leaf = e.encode();
            assert_eq!(Entry::decode(&leaf).unwrap(), e);
            assert_eq!(
                Entry::decode(&leaf[..leaf.len() - 1]),
                Err(LeafError::Truncated)
            );
            let mut longer = leaf.clone();
            longer.push(0);
            assert_eq!(Entry::decode(&longer), Err(LeafError::Trailing));
            let mut v5 = leaf.clone();
            v5[0] = 5;
            assert_eq!(Entry::decode(&v5), Err(LeafError::Version(5)));
            // Formats 2 and 3 are only for access leaves.
            if leaf[1] != KIND_ACCESS {
                for format in [LEAF_V2, LEAF_V3] {
                    let mut other = leaf.clone();
                    other[0] = format;
                    assert_eq!(Entry::decode(&other), Err(LeafError::Kind(leaf[1])));
                }
            }
        }
        assert_eq!(Entry::decode(&[1, 9]), Err(LeafError::Kind(9)));
    }

    #[test]
    fn purposes_have_stable_numbers_and_names() {
        for p in Purpose::ALL {
            assert_eq!(Purpose::from_u8(p as u8), Some(p));
            assert_eq!(Purpose::from_name(p.name()), Some(p));
        }
        assert_eq!(Purpose::Emergency as u8, 3);
        assert_eq!(Purpose::from_u8(0), None);
    }

    #[test]
    fn a_leaf_verifies_with_only_the_checkpoint_and_the_key() {
        let signer = NoteSigner::new(
            "huren.example/alliance-log",
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        )
        .unwrap();
        let verifier = NoteVerifier::parse(&signer.verifier_key()).unwrap();
        let mut tree = MemoryTree::new();
        let leaves: Vec<Vec<u8>> = (0..5u8)
            .map(|i| summary_leaf(&[i], &[i; 64], &[i], UnixMillis(i64::from(i))))
            .collect();
        for l in &leaves {
            tree.push(l);
        }
        let note = sign_checkpoint(
            &Checkpoint {
                origin: signer.name().to_owned(),
                size: tree.size(),
                root: tree.root(),
            },
            &signer,
        )
        .unwrap();
        let proof = |index| LogProof {
            index,
            tree_size: 5,
            proof: crate::merkle::inclusion_proof(index, 5, &tree).unwrap(),
            checkpoint: note.clone(),
        };
        for (i, leaf) in leaves.iter().enumerate() {
            let cp = verify_leaf(&verifier, leaf, &proof(i as u64)).unwrap();
            assert_eq!(cp.size, 5);
        }
        // Another leaf, another index, another size, or a forged checkpoint: refused.
        assert!(matches!(
            verify_leaf(&verifier, &leaves[1], &proof(2)),
            Err(LogVerifyError::NotIncluded { index: 2, .. })
        ));
        let mut p = proof(0);
        p.tree_size = 4;
        assert!(matches!(
            verify_leaf(&verifier, &leaves[0], &p),
            Err(LogVerifyError::SizeMismatch { .. })
        ));
        let other = NoteSigner::new(
            "huren.example/alliance-log",
            ed25519_dalek::SigningKey::from_bytes(&[8; 32]),
        )
        .unwrap();
        let mut p = proof(0);
        p.checkpoint = sign_checkpoint(
            &Checkpoint {
                origin: other.name().to_owned(),
                size: 5,
                root: tree.root(),
            },
            &other,
        )
        .unwrap();
        assert!(matches!(
            verify_leaf(&verifier, &leaves[0], &p),
            Err(LogVerifyError::Checkpoint(_))
        ));
    }
}
