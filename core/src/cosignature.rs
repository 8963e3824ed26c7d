//! Witness cosignatures of checkpoints (c2sp.org/tlog-cosignature, the Ed25519
//! `cosignature/v1` type) and the body of a witness's `add-checkpoint` request
//! (c2sp.org/tlog-witness).
//!
//! A cosignature is a note signature line added to a checkpoint by a witness:
//!
//! ```text
//! — <witness name> base64(key ID || timestamp:u64 big-endian || Ed25519 signature[64])
//!
//! key ID         = SHA-256(name || 0x0A || 0x04 || public key (32 bytes))[0..4]
//! signed message = "cosignature/v1\n" || "time " <timestamp, ASCII decimal> "\n"
//!                  || the checkpoint body (origin, size, root and any extension lines,
//!                     with the final newline; no signature lines)
//! verifier key   = <name> "+" <key ID, 8 hex digits> "+" base64(0x04 || public key)
//! ```
//!
//! The timestamp is POSIX seconds, never zero, at most 2^63 - 1. A v1 cosignature states
//! that, at that time, this was the largest tree the witness had checked to be consistent
//! with everything it cosigned before for that log.
//!
//! `add-checkpoint` request body: `old <size>\n`, up to 63 lines of one base64 hash each (the
//! RFC 6962 consistency proof from the old size), an empty line, then the signed checkpoint.
//!
//! The log signs with [`crate::checkpoint::NoteSigner`] (type 0x01); a witness key is a
//! different key with a different type byte, so one can never pass for the other.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer};
use sha2::{Digest, Sha256};

use crate::checkpoint::{
    NoteError, SIGNATURE_PREFIX, check_key_name, parse_signature_line, split_note,
};
use crate::merkle::Hash;

/// Signature type byte of Ed25519 `cosignature/v1` keys.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;
/// Most consistency-proof lines an `add-checkpoint` request may carry.
pub const MAX_PROOF_LINES: usize = 63;

/// The message a `cosignature/v1` signs.
fn signed_message(body: &str, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{body}").into_bytes()
}

fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let digest: [u8; 32] = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ALG_COSIGNATURE_V1])
        .chain_update(public_key)
        .finalize()
        .into();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A witness's signing key under its name.
pub struct Cosigner {
    name: String,
    key_id: u32,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for Cosigner {
    // Never the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cosigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    pub fn new(name: impl Into<String>, key: ed25519_dalek::SigningKey) -> Result<Self, NoteError> {
        let name = name.into();
        check_key_name(&name)?;
        let key_id = key_id(&name, key.verifying_key().as_bytes());
        Ok(Self { name, key_id, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching verifier.
    pub fn verifier(&self) -> CosignerKey {
        CosignerKey {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The cosignature line (with its final newline) over a checkpoint body at `timestamp`.
    pub fn cosign(&self, body: &str, timestamp: u64) -> Result<String, NoteError> {
        if timestamp == 0 || timestamp > i64::MAX as u64 {
            return Err(NoteError::BadText(
                "a cosignature's timestamp must be between 1 and 2^63 - 1",
            ));
        }
        if !body.ends_with('\n') || body.chars().any(|c| c < ' ' && c != '\n') {
            return Err(NoteError::BadText(
                "a checkpoint body ends with a newline and has no other control characters",
            ));
        }
        let signature = self.key.sign(&signed_message(body, timestamp));
        let mut raw = Vec::with_capacity(4 + 8 + 64);
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&timestamp.to_be_bytes());
        raw.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(raw)
        ))
    }
}

/// A witness's public key under its name: checks its cosignatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    key_id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl CosignerKey {
    /// Parses a verifier key `<name>+<key ID>+<base64(0x04 || public key)>`, checking that the
    /// key ID belongs to the name and key.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::BadVerifierKey("expected <name>+<key ID>+<key>"));
        };
        check_key_name(name)?;
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NoteError::BadVerifierKey("the key ID must be 8 hex digits"));
        }
        let id = u32::from_str_radix(id_hex, 16)
            .map_err(|_| NoteError::BadVerifierKey("the key ID must be 8 hex digits"))?;
        let raw = BASE64
            .decode(key_b64)
            .map_err(|_| NoteError::BadVerifierKey("the key is not standard base64"))?;
        let (&alg, key) = raw
            .split_first()
            .ok_or(NoteError::BadVerifierKey("the key is empty"))?;
        if alg != ALG_COSIGNATURE_V1 {
            return Err(NoteError::BadVerifierKey(
                "not a cosignature/v1 key (signature type 0x04); is this the log's key?",
            ));
        }
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| NoteError::BadVerifierKey("an Ed25519 key is 32 bytes"))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
            .map_err(|_| NoteError::BadVerifierKey("not an Ed25519 public key"))?;
        let parsed = Self {
            name: name.to_owned(),
            key_id: key_id(name, key.as_bytes()),
            key,
        };
        if parsed.key_id != id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(parsed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks one cosignature line (without its newline) of this key over `body`; its
    /// timestamp. `Ok(None)` when the line is another key's.
    fn check_line(&self, body: &str, line: &str) -> Result<Option<u64>, NoteError> {
        let (name, key_id, raw) = parse_signature_line(line)?;
        if name != self.name || key_id != self.key_id {
            return Ok(None);
        }
        let bad = || NoteError::BadSignature {
            name: self.name.clone(),
            key_id,
        };
        let (timestamp, signature) = raw.split_first_chunk::<8>().ok_or_else(bad)?;
        let timestamp = u64::from_be_bytes(*timestamp);
        let signature: [u8; 64] = signature.try_into().map_err(|_| bad())?;
        if timestamp == 0 || timestamp > i64::MAX as u64 {
            return Err(bad());
        }
        self.key
            .verify_strict(
                &signed_message(body, timestamp),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| bad())?;
        Ok(Some(timestamp))
    }
}

impl std::str::FromStr for CosignerKey {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Self, NoteError> {
        Self::parse(s)
    }
}

/// The verifier key text.
impl fmt::Display for CosignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_COSIGNATURE_V1);
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(raw)
        )
    }
}

/// Which of `witnesses` cosigned a note, each with its cosignature's timestamp, in the order
/// of `witnesses`. A line of a listed witness that does not verify makes the note malformed
/// (an error), as the signed-note text requires; other keys' lines are ignored.
pub fn cosigned_by<'a>(
    note: &str,
    witnesses: &'a [CosignerKey],
) -> Result<Vec<(&'a CosignerKey, u64)>, NoteError> {
    let (body, lines) = split_note(note)?;
    let mut found = Vec::new();
    for w in witnesses {
        let mut timestamp = None;
        for line in &lines {
            if let Some(t) = w.check_line(body, line)? {
                timestamp = Some(t);
            }
        }
        if let Some(t) = timestamp {
            found.push((w, t));
        }
    }
    Ok(found)
}

/// The signature lines of `response` (a witness's answer: one or more lines, each starting
/// with the em dash and ending in a newline) added to `note`. Nothing is verified here.
pub fn add_signature_lines(note: &str, response: &str) -> Result<String, NoteError> {
    if response.is_empty()
        || !response.ends_with('\n')
        || response
            .split_terminator('\n')
            .any(|l| parse_signature_line(l).is_err())
    {
        return Err(NoteError::Malformed(
            "a witness's answer must be signature lines, each ending in a newline",
        ));
    }
    let mut out = String::with_capacity(note.len() + response.len());
    out.push_str(note);
    out.push_str(response);
    // The result must still be one well-formed note.
    split_note(&out)?;
    Ok(out)
}

/// A tlog-witness `add-checkpoint` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the witness last cosigned for this log, as the log believes.
    pub old_size: u64,
    /// The RFC 6962 consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint (a note).
    pub checkpoint: String,
}

/// Why an `add-checkpoint` body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddCheckpointError {
    #[error("the request must start with an \"old <size>\" line")]
    NoOldLine,
    #[error("the old size {0:?} is not a decimal number without leading zeros")]
    BadOldSize(String),
    #[error("a consistency proof line is not the base64 of a 32-byte hash")]
    BadProofLine,
    #[error("more than {MAX_PROOF_LINES} consistency proof lines")]
    TooManyProofLines,
    #[error("no empty line before the checkpoint")]
    NoBlankLine,
}

impl AddCheckpoint {
    /// The request body.
    pub fn to_body(&self) -> String {
        let mut out = format!("old {}\n", self.old_size);
        for h in &self.proof {
            out.push_str(&BASE64.encode(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// Reads a request body strictly (the checkpoint itself is checked by whoever opens it).
    pub fn parse(body: &str) -> Result<Self, AddCheckpointError> {
        let (first, mut rest) = body.split_once('\n').ok_or(AddCheckpointError::NoOldLine)?;
        let size = first
            .strip_prefix("old ")
            .ok_or(AddCheckpointError::NoOldLine)?;
        let canonical = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let old_size = canonical
            .then(|| size.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| AddCheckpointError::BadOldSize(size.to_owned()))?;
        let mut proof = Vec::new();
        loop {
            let (line, after) = rest
                .split_once('\n')
                .ok_or(AddCheckpointError::NoBlankLine)?;
            rest = after;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(AddCheckpointError::TooManyProofLines);
            }
            let hash = BASE64
                .decode(line)
                .ok()
                .and_then(|b| Hash::try_from(b).ok())
                .ok_or(AddCheckpointError::BadProofLine)?;
            proof.push(hash);
        }
        Ok(Self {
            old_size,
            proof,
            checkpoint: rest.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, NoteSigner, open, sign_checkpoint};

    fn log() -> NoteSigner {
        NoteSigner::new(
            "huren.example/log",
            ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
        )
        .unwrap()
    }

    fn witness(n: u8) -> Cosigner {
        Cosigner::new(
            format!("witness.example/w{n}"),
            ed25519_dalek::SigningKey::from_bytes(&[n; 32]),
        )
        .unwrap()
    }

    fn checkpoint(size: u64) -> String {
        sign_checkpoint(
            &Checkpoint {
                origin: "huren.example/log".into(),
                size,
                root: [7; 32],
            },
            &log(),
        )
        .unwrap()
    }

    fn body(note: &str) -> &str {
        split_note(note).unwrap().0
    }

    #[test]
    fn a_cosignature_has_the_specified_layout() {
        let w = witness(2);
        let note = checkpoint(5);
        let line = w.cosign(body(&note), 1_679_315_147).unwrap();
        let (name, id, raw) = parse_signature_line(line.trim_end_matches('\n')).unwrap();
        assert_eq!(name, "witness.example/w2");
        // The key ID commits to type 0x04, not the log's 0x01.
        let mut h = Sha256::new();
        h.update(b"witness.example/w2\n\x04");
        h.update(w.verifier().key.as_bytes());
        assert_eq!(id.to_be_bytes(), h.finalize()[..4]);
        assert_eq!(raw.len(), 8 + 64);
        assert_eq!(raw[..8], 1_679_315_147u64.to_be_bytes());
        // Over "cosignature/v1\ntime <t>\n" and the body.
        let message = format!("cosignature/v1\ntime 1679315147\n{}", body(&note));
        let sig = Signature::from_bytes(raw[8..].try_into().unwrap());
        w.verifier()
            .key
            .verify_strict(message.as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn cosigned_notes_name_their_witnesses_and_still_open_for_the_log() {
        let (w1, w2, w3) = (witness(2), witness(3), witness(4));
        let keys = [w1.verifier(), w2.verifier(), w3.verifier()];
        let note = checkpoint(9);
        let lines = format!(
            "{}{}",
            w1.cosign(body(&note), 10).unwrap(),
            w3.cosign(body(&note), 11).unwrap()
        );
        let cosigned = add_signature_lines(&note, &lines).unwrap();
        let found: Vec<(&str, u64)> = cosigned_by(&cosigned, &keys)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k.name(), t))
            .collect();
        assert_eq!(
            found,
            [("witness.example/w2", 10), ("witness.example/w4", 11)]
        );
        // The log's own signature still verifies; a cosignature is not a log signature.
        assert!(open(&cosigned, &log().verifier()).is_ok());
        // A cosignature over another checkpoint does not count; it is a bad signature.
        let other = checkpoint(10);
        let stolen = add_signature_lines(&other, &w1.cosign(body(&note), 10).unwrap()).unwrap();
        assert!(matches!(
            cosigned_by(&stolen, &keys),
            Err(NoteError::BadSignature { .. })
        ));
        // A changed timestamp breaks the signature.
        let line = w2.cosign(body(&note), 12).unwrap();
        let (name, id, mut raw) = parse_signature_line(line.trim_end_matches('\n')).unwrap();
        raw[7] ^= 1;
        let mut forged = id.to_be_bytes().to_vec();
        forged.extend_from_slice(&raw);
        let forged = format!("— {name} {}\n", BASE64.encode(forged));
        let forged = add_signature_lines(&note, &forged).unwrap();
        assert!(cosigned_by(&forged, &keys).is_err());
    }

    #[test]
    fn verifier_keys_round_trip_and_a_log_key_is_not_a_witness_key() {
        let k = witness(5).verifier();
        assert_eq!(CosignerKey::parse(&k.to_string()).unwrap(), k);
        let log_vkey = log().verifier_key();
        assert!(CosignerKey::parse(&log_vkey).is_err());
        let text = k.to_string();
        let (head, tail) = text.split_at(text.len() - 3);
        let mut other = tail.as_bytes().to_vec();
        other[0] = if other[0] == b'A' { b'B' } else { b'A' };
        let damaged = format!("{head}{}", String::from_utf8(other).unwrap());
        assert!(CosignerKey::parse(&damaged).is_err());
        assert!(witness(5).cosign("x\n", 0).is_err());
    }

    #[test]
    fn add_checkpoint_bodies_round_trip_and_bad_ones_are_refused() {
        let req = AddCheckpoint {
            old_size: 20_852_014,
            proof: vec![[1; 32], [2; 32]],
            checkpoint: checkpoint(20_852_163),
        };
        let text = req.to_body();
        assert!(text.starts_with("old 20852014\nAQEB"));
        assert_eq!(AddCheckpoint::parse(&text).unwrap(), req);
        let empty = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: checkpoint(3),
        };
        assert!(
            empty
                .to_body()
                .starts_with("old 0\n\nhuren.example/log\n3\n")
        );
        assert_eq!(AddCheckpoint::parse(&empty.to_body()).unwrap(), empty);
        for bad in [
            "",
            "old 1",
            "new 1\n\n",
            "old 01\n\n",
            "old -1\n\n",
            "old 1\nnot base64!\n\n",
            "old 1\nAQEB\n\n",
            "old 1\n",
        ] {
            assert!(AddCheckpoint::parse(bad).is_err(), "{bad:?}");
        }
        let long = AddCheckpoint {
            old_size: 1,
            proof: vec![[0; 32]; 64],
            checkpoint: String::new(),
        };
        assert_eq!(
            AddCheckpoint::parse(&long.to_body()),
            Err(AddCheckpointError::TooManyProofLines)
        );
        assert!(add_signature_lines(&checkpoint(1), "not a line\n").is_err());
        assert!(add_signature_lines(&checkpoint(1), "").is_err());
    }
}
