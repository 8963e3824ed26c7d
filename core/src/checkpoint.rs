//! Checkpoints of the hub's Merkle log: C2SP tlog-checkpoint bodies carried in C2SP signed
//! notes, signed with Ed25519.
//!
//! Checkpoint body (the note text, c2sp.org/tlog-checkpoint):
//!
//! ```text
//! <origin>\n              the log's identity; non-empty, no control characters
//! <tree size>\n           ASCII decimal, no leading zeros ("0" for the empty tree)
//! <root hash>\n           standard base64 (RFC 4648 section 4, padded) of the 32-byte root
//! [<extension line>\n]*   optional, non-empty, opaque: accepted and ignored when parsing
//! ```
//!
//! Signed note (c2sp.org/signed-note):
//!
//! ```text
//! note           = text "\n" signature-line+      text is one or more lines, each ending "\n"
//! signature-line = "— " key-name " " base64(key ID || signature) "\n"
//! key ID         = 4 bytes, big-endian
//! ```
//!
//! "—" is U+2014 EM DASH (UTF-8 `e2 80 94`). A note is UTF-8 with no control characters other
//! than newline; the text ends at the last blank line. Key names are non-empty with no spaces
//! and no `+`.
//!
//! Ed25519 (signature type `0x01`):
//!
//! ```text
//! key ID       = SHA-256(key name || 0x0A || 0x01 || public key (32 bytes))[0..4]
//! signature    = Ed25519(signing key, text)      64 bytes, over the text with its final "\n"
//! verifier key = <key name> "+" <key ID, 8 hex digits> "+" base64(0x01 || public key)
//! ```
//!
//! A verifier checks every signature line of its own key (name and key ID both match) and
//! ignores the rest, so witnesses may add cosignatures; the log's key name should be its origin.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// Signature type byte of Ed25519 note signatures.
pub const ALG_ED25519: u8 = 0x01;
/// Most signature lines a note may carry (the spec asks verifiers to accept at least 16).
pub const MAX_SIGNATURES: usize = 100;
/// Start of every signature line: U+2014 EM DASH and a space.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// A log's signed statement of its tree: the origin names the log, size and root the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("a checkpoint body must end with a newline")]
    NoFinalNewline,
    #[error("a checkpoint must not contain control characters other than newline")]
    ControlCharacter,
    #[error("the checkpoint has no {0} line")]
    MissingLine(&'static str),
    #[error("the checkpoint origin is empty")]
    EmptyOrigin,
    #[error(
        "the tree size {0:?} is not a decimal number without leading zeros that fits in 64 bits"
    )]
    BadSize(String),
    #[error("the root hash {0:?} is not the standard base64 of 32 bytes")]
    BadRoot(String),
    #[error("checkpoint extension lines must not be empty")]
    EmptyExtensionLine,
    #[error("the checkpoint is for origin {got:?}, expected {expected:?}")]
    OriginMismatch { expected: String, got: String },
    #[error(transparent)]
    Note(#[from] NoteError),
}

impl Checkpoint {
    /// The note text: origin, size and root lines, each ending in a newline.
    pub fn to_body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        )
    }

    /// Parses a checkpoint body strictly. Extension lines are accepted and ignored, so
    /// `to_body` of the result equals `body` only when it has none.
    pub fn parse(body: &str) -> Result<Self, CheckpointError> {
        if body.chars().any(|c| c < ' ' && c != '\n') {
            return Err(CheckpointError::ControlCharacter);
        }
        let lines = body
            .strip_suffix('\n')
            .ok_or(CheckpointError::NoFinalNewline)?;
        let mut lines = lines.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        let size = lines
            .next()
            .ok_or(CheckpointError::MissingLine("tree size"))?;
        let root = lines
            .next()
            .ok_or(CheckpointError::MissingLine("root hash"))?;
        if lines.any(str::is_empty) {
            return Err(CheckpointError::EmptyExtensionLine);
        }
        Ok(Self {
            origin: origin.to_owned(),
            size: parse_size(size).ok_or_else(|| CheckpointError::BadSize(size.to_owned()))?,
            root: BASE64
                .decode(root)
                .ok()
                .and_then(|bytes| Hash::try_from(bytes).ok())
                .ok_or_else(|| CheckpointError::BadRoot(root.to_owned()))?,
        })
    }

    /// Whether `to_body` yields a body that parses back to this checkpoint.
    fn check(&self) -> Result<(), CheckpointError> {
        if self.origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        if self.origin.chars().any(|c| c < ' ') {
            return Err(CheckpointError::ControlCharacter);
        }
        Ok(())
    }
}

/// ASCII decimal without sign or leading zeros.
fn parse_size(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return None;
    }
    s.parse().ok()
}

/// Signs a checkpoint: the whole signed note, ready to publish.
///
/// Fails only for an origin that could not be parsed back (empty, or with a control character).
pub fn sign_checkpoint(
    checkpoint: &Checkpoint,
    signer: &NoteSigner,
) -> Result<String, CheckpointError> {
    checkpoint.check()?;
    Ok(signer.sign(&checkpoint.to_body())?)
}

/// Opens a signed checkpoint: checks `verifier`'s signature, parses the body, and checks that it
/// is for `expected_origin`.
pub fn open_checkpoint(
    note: &str,
    verifier: &NoteVerifier,
    expected_origin: &str,
) -> Result<Checkpoint, CheckpointError> {
    let text = open(note, verifier)?;
    let checkpoint = Checkpoint::parse(&text)?;
    if checkpoint.origin != expected_origin {
        return Err(CheckpointError::OriginMismatch {
            expected: expected_origin.to_owned(),
            got: checkpoint.origin,
        });
    }
    Ok(checkpoint)
}

/// Why a note could not be signed or opened, or a key not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error(
        "invalid key name {0:?}: it must be non-empty, with no spaces, '+' or control characters"
    )]
    BadKeyName(String),
    #[error("malformed verifier key: {0}")]
    BadVerifierKey(&'static str),
    #[error("the verifier key's ID does not match its name and public key")]
    KeyIdMismatch,
    #[error("cannot sign this text: {0}")]
    BadText(&'static str),
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("a signature by {name}+{key_id:08x} does not verify")]
    BadSignature { name: String, key_id: u32 },
    #[error("the note has no signature by {name}+{key_id:08x}")]
    NotSigned { name: String, key_id: u32 },
}

/// Signs notes with an Ed25519 key under a key name.
pub struct NoteSigner {
    name: String,
    key_id: u32,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for NoteSigner {
    // Never the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    pub fn new(name: impl Into<String>, key: ed25519_dalek::SigningKey) -> Result<Self, NoteError> {
        let name = name.into();
        check_key_name(&name)?;
        let key_id = key_id(&name, key.verifying_key().as_bytes());
        Ok(Self { name, key_id, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The verifier key text to hand to clients: `<name>+<key ID hex>+<base64(0x01 || key)>`.
    pub fn verifier_key(&self) -> String {
        self.verifier().to_string()
    }

    /// Signs `text` (non-empty, ending in a newline, no control characters other than newline)
    /// and returns the whole signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') {
            return Err(NoteError::BadText("the text must end with a newline"));
        }
        if text.chars().any(|c| c < ' ' && c != '\n') {
            return Err(NoteError::BadText(
                "the text must not contain control characters other than newline",
            ));
        }
        let mut raw = Vec::with_capacity(4 + 64);
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.key.sign(text.as_bytes()).to_bytes());
        Ok(format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(raw)
        ))
    }
}

/// Checks note signatures of one Ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl NoteVerifier {
    pub fn new(
        name: impl Into<String>,
        key: ed25519_dalek::VerifyingKey,
    ) -> Result<Self, NoteError> {
        let name = name.into();
        check_key_name(&name)?;
        let key_id = key_id(&name, key.as_bytes());
        Ok(Self { name, key_id, key })
    }

    /// Parses a verifier key `<name>+<key ID, 8 hex digits>+<base64(0x01 || public key)>`,
    /// checking that the key ID belongs to the name and key.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let (name, rest) = vkey
            .split_once('+')
            .ok_or(NoteError::BadVerifierKey("expected <name>+<key ID>+<key>"))?;
        let (id_hex, key_b64) = rest
            .split_once('+')
            .ok_or(NoteError::BadVerifierKey("expected <name>+<key ID>+<key>"))?;
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
        if alg != ALG_ED25519 {
            return Err(NoteError::BadVerifierKey("unknown signature type"));
        }
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| NoteError::BadVerifierKey("an Ed25519 key is 32 bytes"))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
            .map_err(|_| NoteError::BadVerifierKey("not an Ed25519 public key"))?;
        let verifier = Self::new(name, key)?;
        if verifier.key_id != id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(verifier)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn key(&self) -> &ed25519_dalek::VerifyingKey {
        &self.key
    }
}

impl FromStr for NoteVerifier {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Self, NoteError> {
        Self::parse(s)
    }
}

/// The verifier key text.
impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
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

/// Opens a signed note: checks its form and every signature line of `verifier`'s key (name and
/// key ID), ignoring other keys' lines, and returns the text. Fails if the note is malformed, if
/// any of the key's signatures does not verify, or if there is none.
pub fn open(note: &str, verifier: &NoteVerifier) -> Result<String, NoteError> {
    let (text, signatures) = split_note(note)?;
    let mut verified = false;
    for line in signatures {
        let (name, key_id, signature) = parse_signature_line(line)?;
        if name != verifier.name || key_id != verifier.key_id {
            continue;
        }
        let bad = || NoteError::BadSignature {
            name: verifier.name.clone(),
            key_id,
        };
        let signature: [u8; 64] = signature.try_into().map_err(|_| bad())?;
        verifier
            .key
            .verify_strict(text.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| bad())?;
        verified = true;
    }
    if !verified {
        return Err(NoteError::NotSigned {
            name: verifier.name.clone(),
            key_id: verifier.key_id,
        });
    }
    Ok(text.to_owned())
}

/// A note's text (ending in its final newline) and its signature lines (without their
/// newlines), checked for form: no control characters but newlines, a blank line before the
/// signatures, at least one and at most [`MAX_SIGNATURES`] signature lines, the last ending
/// in a newline.
pub(crate) fn split_note(note: &str) -> Result<(&str, Vec<&str>), NoteError> {
    if note.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed(
            "control characters other than newline",
        ));
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    let signatures = signatures
        .strip_suffix('\n')
        .filter(|s| !s.is_empty())
        .ok_or(NoteError::Malformed(
            "the signature lines must end with a newline",
        ))?;
    // Counted before any verification, so a flood of lines costs no signature checks.
    let lines: Vec<&str> = signatures.split('\n').take(MAX_SIGNATURES + 1).collect();
    if lines.len() > MAX_SIGNATURES {
        return Err(NoteError::Malformed("too many signatures"));
    }
    Ok((text, lines))
}

/// `— <name> <base64(key ID || signature)>` into name, key ID and signature bytes.
pub(crate) fn parse_signature_line(line: &str) -> Result<(&str, u32, Vec<u8>), NoteError> {
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(NoteError::Malformed(
            "a signature line must start with an em dash and a space",
        ))?;
    let (name, b64) = rest.split_once(' ').ok_or(NoteError::Malformed(
        "a signature line needs a key name and a signature",
    ))?;
    if check_key_name(name).is_err() {
        return Err(NoteError::Malformed("invalid key name in a signature line"));
    }
    let raw = BASE64
        .decode(b64)
        .map_err(|_| NoteError::Malformed("a signature is not standard base64"))?;
    match raw.split_first_chunk::<4>() {
        Some((id, signature)) if !signature.is_empty() => {
            Ok((name, u32::from_be_bytes(*id), signature.to_vec()))
        }
        _ => Err(NoteError::Malformed("a signature is too short")),
    }
}

pub(crate) fn check_key_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '+')
    {
        return Err(NoteError::BadKeyName(name.to_owned()));
    }
    Ok(())
}

/// `SHA-256(name || 0x0A || 0x01 || public key)[0..4]`, big-endian.
fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let digest: [u8; 32] = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ALG_ED25519])
        .chain_update(public_key)
        .finalize()
        .into();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- Known answers from golang.org/x/mod sumdb/note/note_test.go (TestNewVerifier,
    // TestNewSigner, TestSign, TestOpen).

    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    /// The Go signer key is `PRIVATE+KEY+PeterNeumann+c74f20a3+<base64(0x01 || seed)>`.
    const PETER_SKEY_B64: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn peter_signer() -> NoteSigner {
        let raw = BASE64.decode(PETER_SKEY_B64).unwrap();
        assert_eq!(raw[0], ALG_ED25519);
        let seed: [u8; 32] = raw[1..].try_into().unwrap();
        NoteSigner::new("PeterNeumann", ed25519_dalek::SigningKey::from_bytes(&seed)).unwrap()
    }

    fn peter() -> NoteVerifier {
        NoteVerifier::parse(PETER_VKEY).unwrap()
    }

    fn note(sigs: &[&str]) -> String {
        format!("{TEXT}\n{}", sigs.concat())
    }

    #[test]
    fn go_sumdb_note_known_answers() {
        let v = peter();
        assert_eq!(v.name(), "PeterNeumann");
        assert_eq!(v.key_id(), 0xc74f20a3);
        assert_eq!(v.to_string(), PETER_VKEY);
        assert_eq!(PETER_VKEY.parse::<NoteVerifier>().unwrap(), v);

        let signer = peter_signer();
        assert_eq!(signer.key_id(), 0xc74f20a3);
        assert_eq!(signer.verifier_key(), PETER_VKEY);
        // Ed25519 is deterministic, so signing reproduces the published note byte for byte.
        assert_eq!(signer.sign(TEXT).unwrap(), note(&[PETER_SIG]));

        assert_eq!(open(&note(&[PETER_SIG]), &v).unwrap(), TEXT);
        // Lines from other keys are ignored, whichever key is asked for.
        let both = note(&[PETER_SIG, ENOCH_SIG]);
        assert_eq!(open(&both, &v).unwrap(), TEXT);
        let enoch = NoteVerifier::parse(ENOCH_VKEY).unwrap();
        assert_eq!(enoch.key_id(), 0xaf0cfe78);
        assert_eq!(open(&both, &enoch).unwrap(), TEXT);
        assert_eq!(
            open(&note(&[ENOCH_SIG]), &v),
            Err(NoteError::NotSigned {
                name: "PeterNeumann".into(),
                key_id: 0xc74f20a3
            })
        );
    }

    #[test]
    fn go_sumdb_note_bad_notes() {
        let v = peter();
        // Four base64 characters inserted: still base64, but 67 signature bytes.
        let invalid = note(&[&format!("{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..])]);
        assert_eq!(
            open(&invalid, &v),
            Err(NoteError::BadSignature {
                name: "PeterNeumann".into(),
                key_id: 0xc74f20a3
            })
        );
        let malformed = [
            TEXT.to_owned(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
            format!("\u{1}{TEXT}\n{PETER_SIG}"),
            format!(
                "{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
            ),
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
            note(&[&PETER_SIG.repeat(MAX_SIGNATURES + 1)]),
            note(&["— PeterNeumann \n"]),
            note(&["— PeterNeumann x08go\n"]),
            note(&[
                "-- PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
            ]),
            note(&[
                "— PeterNeumann  x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
            ]),
        ];
        for msg in &malformed {
            assert!(
                matches!(open(msg, &v), Err(NoteError::Malformed(_))),
                "accepted or misjudged {msg:?}: {:?}",
                open(msg, &v)
            );
        }
        // Up to the limit is fine (a repeated valid signature verifies each time).
        assert_eq!(
            open(&note(&[&PETER_SIG.repeat(MAX_SIGNATURES)]), &v).unwrap(),
            TEXT
        );
        // One good and one bad signature by the same key: the note is refused.
        let forged = PETER_SIG.replace("x08go/ZJ", "x08go/ZK");
        assert!(matches!(
            open(&note(&[PETER_SIG, &forged]), &v),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn go_sumdb_verifier_key_manglings() {
        // Every proper substring and every single-byte increment of the key must be refused.
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i == 0 && j == b.len() {
                    continue;
                }
                let s = std::str::from_utf8(&b[i..j]).unwrap();
                assert!(NoteVerifier::parse(s).is_err(), "accepted {s:?}");
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] += 1;
            let s = String::from_utf8(m).unwrap();
            assert!(NoteVerifier::parse(&s).is_err(), "accepted {s:?}");
        }
        // Wrong key length and unknown algorithm, each with a matching key hash.
        assert!(
            NoteVerifier::parse(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
            )
            .is_err()
        );
        assert_eq!(
            NoteVerifier::parse(&format!(
                "PeterNeumann+c74f20a3+{}",
                BASE64.encode([1u8; 32])
            )),
            Err(NoteError::BadVerifierKey("an Ed25519 key is 32 bytes"))
        );
        assert_eq!(
            NoteVerifier::parse(
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            ),
            Err(NoteError::BadVerifierKey("unknown signature type"))
        );
        // The key ID may be written in upper case.
        NoteVerifier::parse(&PETER_VKEY.replace("c74f20a3", "C74F20A3")).unwrap();
    }

    #[test]
    fn signer_rules() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        for bad in ["", "a b", "a+b", "a\u{2003}b", "a\tb", "a\u{1}b"] {
            assert!(
                matches!(
                    NoteSigner::new(bad, key.clone()),
                    Err(NoteError::BadKeyName(_))
                ),
                "{bad:?}"
            );
        }
        let s = NoteSigner::new("hub.huren.example/log", key).unwrap();
        assert!(!format!("{s:?}").contains("SigningKey"));
        assert!(matches!(s.sign(""), Err(NoteError::BadText(_))));
        assert!(matches!(s.sign("no newline"), Err(NoteError::BadText(_))));
        assert!(matches!(s.sign("tab\there\n"), Err(NoteError::BadText(_))));
        // Blank lines inside the text are fine: the last blank line separates the signatures.
        let v = s.verifier();
        for text in ["x\n", "\n", "a\n\nb\n", "a\n\n"] {
            assert_eq!(open(&s.sign(text).unwrap(), &v).unwrap(), text);
        }
        assert_eq!(NoteVerifier::parse(&s.verifier_key()).unwrap(), v);
    }

    // ---- Checkpoints.

    /// The example body of c2sp.org/tlog-checkpoint.
    const SPEC_BODY: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    fn spec_checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "example.com/behind-the-sofa".into(),
            size: 20852163,
            root: BASE64
                .decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
                .unwrap()
                .try_into()
                .unwrap(),
        }
    }

    #[test]
    fn checkpoint_body_layout() {
        assert_eq!(spec_checkpoint().to_body(), SPEC_BODY);
        assert_eq!(Checkpoint::parse(SPEC_BODY).unwrap(), spec_checkpoint());
        let empty = Checkpoint {
            origin: "o".into(),
            size: 0,
            root: crate::merkle::empty_root(),
        };
        assert_eq!(
            empty.to_body(),
            "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
        );
        assert_eq!(Checkpoint::parse(&empty.to_body()).unwrap(), empty);
        // Extension lines are accepted and ignored; origins need not look like URLs.
        assert_eq!(
            Checkpoint::parse(&format!("{SPEC_BODY}ext one\nx\n")).unwrap(),
            spec_checkpoint()
        );
        let max = format!("a b\n{}\n{}", u64::MAX, &SPEC_BODY[37..]);
        assert_eq!(Checkpoint::parse(&max).unwrap().size, u64::MAX);
    }

    #[test]
    fn checkpoint_parse_is_strict() {
        let root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
        let body = |o: &str, s: &str, r: &str| format!("{o}\n{s}\n{r}\n");
        for size in [
            "",
            "01",
            "00",
            "+5",
            "-1",
            " 5",
            "5 ",
            "0x10",
            "1e3",
            "18446744073709551616",
        ] {
            assert_eq!(
                Checkpoint::parse(&body("o", size, root)),
                Err(CheckpointError::BadSize(size.into())),
                "{size:?}"
            );
        }
        for r in [
            "",
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I", // unpadded
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=", // non-canonical last bits
            "CsUYapGGPo4dkMgIAUqom_Xajj7h2fB2MPA3j2jxq2I=", // URL alphabet
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jx",    // 30 bytes
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", // 35 bytes
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I= ",
        ] {
            assert_eq!(
                Checkpoint::parse(&body("o", "1", r)),
                Err(CheckpointError::BadRoot(r.into())),
                "{r:?}"
            );
        }
        assert_eq!(
            Checkpoint::parse(&body("", "1", root)),
            Err(CheckpointError::EmptyOrigin)
        );
        assert_eq!(
            Checkpoint::parse(&SPEC_BODY[..SPEC_BODY.len() - 1]),
            Err(CheckpointError::NoFinalNewline)
        );
        assert_eq!(
            Checkpoint::parse("o\n1\n"),
            Err(CheckpointError::MissingLine("root hash"))
        );
        assert_eq!(
            Checkpoint::parse("o\n"),
            Err(CheckpointError::MissingLine("tree size"))
        );
        assert_eq!(Checkpoint::parse(""), Err(CheckpointError::NoFinalNewline));
        assert_eq!(
            Checkpoint::parse(&format!("{SPEC_BODY}\n")),
            Err(CheckpointError::EmptyExtensionLine)
        );
        assert_eq!(
            Checkpoint::parse(&format!("{SPEC_BODY}a\n\nb\n")),
            Err(CheckpointError::EmptyExtensionLine)
        );
        assert_eq!(
            Checkpoint::parse(&body("o\r", "1", root)),
            Err(CheckpointError::ControlCharacter)
        );
    }

    const ORIGIN: &str = "hub.huren.example/log";

    fn log_signer() -> NoteSigner {
        NoteSigner::new(ORIGIN, ed25519_dalek::SigningKey::from_bytes(&[42; 32])).unwrap()
    }

    fn sample() -> Checkpoint {
        let mut tree = crate::merkle::MemoryTree::new();
        for i in 0..5u8 {
            tree.push(&[i]);
        }
        Checkpoint {
            origin: ORIGIN.into(),
            size: tree.size(),
            root: tree.root(),
        }
    }

    #[test]
    fn checkpoint_round_trip() {
        let signer = log_signer();
        let cp = sample();
        let signed = sign_checkpoint(&cp, &signer).unwrap();
        assert!(signed.starts_with(&format!("{}\n— {ORIGIN} ", cp.to_body())));
        let verifier = NoteVerifier::parse(&signer.verifier_key()).unwrap();
        assert_eq!(open_checkpoint(&signed, &verifier, ORIGIN).unwrap(), cp);

        // A witness's cosignature line from another key does not disturb it.
        let witness = NoteSigner::new(
            "witness.example",
            ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
        )
        .unwrap();
        let cosigned = witness.sign(&cp.to_body()).unwrap();
        let cosig_line = cosigned.rsplit_once("\n\n").unwrap().1;
        let both = format!("{signed}{cosig_line}");
        assert_eq!(open_checkpoint(&both, &verifier, ORIGIN).unwrap(), cp);
        assert_eq!(
            open_checkpoint(&both, &witness.verifier(), ORIGIN).unwrap(),
            cp
        );
    }

    #[test]
    fn checkpoint_tampering_fails() {
        let signer = log_signer();
        let verifier = signer.verifier();
        let cp = sample();
        let signed = sign_checkpoint(&cp, &signer).unwrap();
        let bad_sig = || {
            Err(CheckpointError::Note(NoteError::BadSignature {
                name: ORIGIN.into(),
                key_id: signer.key_id(),
            }))
        };

        let size = signed.replacen("\n5\n", "\n6\n", 1);
        assert_ne!(size, signed);
        assert_eq!(open_checkpoint(&size, &verifier, ORIGIN), bad_sig());

        let root_line = BASE64.encode(cp.root);
        let mut other_root = cp.root;
        other_root[31] ^= 1;
        let root = signed.replacen(&root_line, &BASE64.encode(other_root), 1);
        assert_ne!(root, signed);
        assert_eq!(open_checkpoint(&root, &verifier, ORIGIN), bad_sig());

        let origin = signed.replacen("hub.huren", "hub.hurem", 1);
        assert_eq!(open_checkpoint(&origin, &verifier, ORIGIN), bad_sig());

        // A correctly signed checkpoint of another log is still refused.
        let elsewhere = NoteSigner::new(
            "other.example/log",
            ed25519_dalek::SigningKey::from_bytes(&[42; 32]),
        )
        .unwrap();
        let other_cp = Checkpoint {
            origin: "other.example/log".into(),
            ..cp.clone()
        };
        let other_signed = sign_checkpoint(&other_cp, &elsewhere).unwrap();
        assert_eq!(
            open_checkpoint(&other_signed, &elsewhere.verifier(), ORIGIN),
            Err(CheckpointError::OriginMismatch {
                expected: ORIGIN.into(),
                got: "other.example/log".into()
            })
        );

        // Another key under the same name: its key ID differs, so it is not ours.
        let impostor =
            NoteSigner::new(ORIGIN, ed25519_dalek::SigningKey::from_bytes(&[43; 32])).unwrap();
        assert_ne!(impostor.key_id(), signer.key_id());
        let forged = sign_checkpoint(&cp, &impostor).unwrap();
        assert_eq!(
            open_checkpoint(&forged, &verifier, ORIGIN),
            Err(CheckpointError::Note(NoteError::NotSigned {
                name: ORIGIN.into(),
                key_id: signer.key_id()
            }))
        );
        // The impostor's signature line spliced in under our key ID.
        let their_line = forged.rsplit_once("\n\n").unwrap().1;
        let mut raw = BASE64
            .decode(their_line.trim_end().rsplit_once(' ').unwrap().1)
            .unwrap();
        raw[..4].copy_from_slice(&signer.key_id().to_be_bytes());
        let spliced = format!(
            "{}\n{SIGNATURE_PREFIX}{ORIGIN} {}\n",
            cp.to_body(),
            BASE64.encode(raw)
        );
        assert_eq!(open_checkpoint(&spliced, &verifier, ORIGIN), bad_sig());

        // Truncated signature lines.
        let line_start = signed.rfind(SIGNATURE_PREFIX).unwrap();
        for cut in [
            signed.len() - 2,
            signed.len() - 5,
            signed.len() - 40,
            line_start + 10,
        ] {
            let truncated = format!("{}\n", &signed[..cut]);
            assert!(
                open_checkpoint(&truncated, &verifier, ORIGIN).is_err(),
                "accepted a note cut at {cut}"
            );
        }
        assert!(open_checkpoint(&signed[..line_start], &verifier, ORIGIN).is_err());
        assert!(open_checkpoint(&cp.to_body(), &verifier, ORIGIN).is_err());
    }

    #[test]
    fn signing_refuses_origins_that_would_not_parse_back() {
        let signer = log_signer();
        for origin in ["", "a\nb", "a\rb"] {
            let cp = Checkpoint {
                origin: origin.into(),
                ..sample()
            };
            assert!(sign_checkpoint(&cp, &signer).is_err(), "{origin:?}");
        }
    }

    #[test]
    fn signed_note_layout() {
        // Pin the exact bytes of a signature line: em dash, space, name, space, base64.
        let signed = log_signer().sign("x\n").unwrap();
        let (text, line) = signed.split_once("\n\n").unwrap();
        assert_eq!(text, "x");
        assert!(
            line.as_bytes()
                .starts_with(b"\xe2\x80\x94 hub.huren.example/log ")
        );
        let raw = BASE64
            .decode(line.trim_end().rsplit_once(' ').unwrap().1)
            .unwrap();
        assert_eq!(raw.len(), 4 + 64);
        assert_eq!(raw[..4], log_signer().key_id().to_be_bytes());
    }
}
