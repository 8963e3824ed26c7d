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
        let key = match std::fs::read_to_string(path) {
            Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| LogKeyError::Malformed {
                path: path.to_owned(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path)?,
            Err(source) => {
                return Err(LogKeyError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::new(origin, key)
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

fn create(path: &Path) -> Result<SigningKey, LogKeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| LogKeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| LogKeyError::Random(e.to_string()))?;
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
    tracing::info!(path = %path.display(), "created a new log key");
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
}
