//! The hub's log key: the Ed25519 key that signs checkpoints of the log, kept in a file.
//!
//! The key file is PKCS#8 PEM. If it is missing at start, a fresh key is generated and written
//! with mode 0600; the matching C2SP verifier key (`huren-hub --print-log-key`) goes into every
//! agent's configuration. Invariant: only this key signs checkpoints, and only
//! [`LogSigner::sign`] uses it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};

use huren_core::checkpoint::{Checkpoint, NoteSigner, sign_checkpoint};

use crate::store::TreeHead;

/// Why the log key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum LogKeyError {
    #[error("cannot read the log key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write a new log key to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an Ed25519 private key in PKCS#8 PEM: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("cannot generate a log key: {0}")]
    Random(String),
    #[error("log origin {origin:?}: {message}")]
    Origin { origin: String, message: String },
}

/// Signs checkpoints of the hub's log.
#[derive(Debug)]
pub struct LogSigner {
    signer: NoteSigner,
    /// The last checkpoint signed. Ed25519 signatures are deterministic, so signing the same
    /// head again would give the same text: concurrent answers about one head share it.
    last: Mutex<Option<(TreeHead, String)>>,
}

impl LogSigner {
    /// Loads the key at `path`, creating it (mode 0600) if the file does not exist. The key's
    /// name, and the origin line of every checkpoint, is `origin`.
    pub fn load_or_create(path: &Path, origin: &str) -> Result<Self, LogKeyError> {
        Self::new(origin, load_or_create_key(path)?)
    }

    /// A signer over an in-memory key.
    pub fn new(origin: &str, key: SigningKey) -> Result<Self, LogKeyError> {
        let signer = NoteSigner::new(origin, key).map_err(|e| LogKeyError::Origin {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self {
            signer,
            last: Mutex::new(None),
        })
    }

    /// The log's origin (its checkpoints' first line and its key's name).
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The C2SP verifier key agents configure: `<origin>+<key id>+<base64 key>`.
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    /// The signed checkpoint of a tree head.
    pub fn sign(&self, head: TreeHead) -> Result<String, String> {
        if let Ok(last) = self.last.lock()
            && let Some((h, text)) = last.as_ref()
            && *h == head
        {
            return Ok(text.clone());
        }
        let text = sign_checkpoint(
            &Checkpoint {
                origin: self.origin().to_owned(),
                size: head.size,
                root: head.root,
            },
            &self.signer,
        )
        .map_err(|e| e.to_string())?;
        if let Ok(mut last) = self.last.lock() {
            *last = Some((head, text.clone()));
        }
        Ok(text)
    }
}

/// Loads the Ed25519 key in PKCS#8 PEM at `path`, creating it (mode 0600) if the file does
/// not exist. The log key and a witness's key (`crate::witness`) are kept this way.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, LogKeyError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| LogKeyError::Malformed {
            path: path.to_owned(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(source) => Err(LogKeyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// PKCS#8 v1 (RFC 5208: version 0, the seed only, no public key), which OpenSSL 3 and
/// Python's cryptography read; ed25519-dalek's own `to_pkcs8_pem` writes v2 (RFC 5958, with the
/// public key), which they refuse. The reader accepts both.
fn pkcs8_v1_pem(key: &SigningKey) -> ed25519_dalek::pkcs8::Result<String> {
    let seed_only = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    Ok(seed_only
        .to_pkcs8_pem(Default::default())?
        .as_str()
        .to_owned())
}

fn create(path: &Path) -> Result<SigningKey, LogKeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| LogKeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let pem = pkcs8_v1_pem(&key).map_err(|e| LogKeyError::Random(e.to_string()))?;
    let write_err = |source| LogKeyError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options.open(path).map_err(write_err)?;
    file.write_all(pem.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    tracing::info!(path = %path.display(), "created a new signing key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_created_private_and_reloaded_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/log.key");
        let a = LogSigner::load_or_create(&path, "huren.example/alliance-log").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = LogSigner::load_or_create(&path, "huren.example/alliance-log").unwrap();
        assert_eq!(a.verifier_key(), b.verifier_key());
        assert!(a.verifier_key().starts_with("huren.example/alliance-log+"));
        std::fs::write(&path, "not a key").unwrap();
        let err = LogSigner::load_or_create(&path, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("PKCS#8"), "{err}");
    }

    /// The log key is written as PKCS#8 v1 (version 0, the seed, no [1] public key: 48 bytes of
    /// DER), which OpenSSL 3 and Python's cryptography read.
    #[test]
    fn the_log_key_is_written_as_pkcs8_v1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        let signer = LogSigner::load_or_create(&path, "huren.example/alliance-log").unwrap();
        let pem = std::fs::read_to_string(&path).unwrap();
        let (label, doc) = ed25519_dalek::pkcs8::SecretDocument::from_pem(&pem).unwrap();
        assert_eq!(label, "PRIVATE KEY");
        let der = doc.as_bytes();
        assert_eq!(der.len(), 48, "{der:02x?}");
        assert_eq!(
            der[..16],
            [
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20
            ]
        );
        let reloaded = SigningKey::from_pkcs8_pem(&pem).unwrap();
        let again = LogSigner::load_or_create(&path, "huren.example/alliance-log").unwrap();
        assert_eq!(signer.verifier_key(), again.verifier_key());
        assert_eq!(der[16..], reloaded.to_bytes());
    }

    /// A key written before (PKCS#8 v2, with the public key) is still read.
    #[test]
    fn a_pkcs8_v2_log_key_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        let key = SigningKey::from_bytes(&[7; 32]);
        let v2 = key.to_pkcs8_pem(Default::default()).unwrap();
        std::fs::write(&path, v2.as_bytes()).unwrap();
        let signer = LogSigner::load_or_create(&path, "o").unwrap();
        let expected = NoteSigner::new("o", key).unwrap().verifier_key();
        assert_eq!(signer.verifier_key(), expected);
    }
}
