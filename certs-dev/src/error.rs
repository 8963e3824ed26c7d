//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while making, loading or writing the development PKI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen refused to build or sign a certificate, or to parse a key.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),

    /// An Ed25519 private key could not be re-encoded as PKCS#8 v1.
    #[error("could not write the Ed25519 key as PKCS#8 v1: {0}")]
    KeyEncoding(String),

    /// The operating system's random number generator failed.
    #[error("could not get random bytes from the operating system: {0}")]
    Random(String),

    /// Reading, writing or renaming a file or directory failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "writing", "creating directory", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A certificate or private key file could not be parsed.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The pseudonymisation key file is not 64 hexadecimal characters.
    #[error(
        "pseudonymisation key file {}: {reason}; it must hold exactly 64 hexadecimal characters (32 bytes)",
        path.display()
    )]
    BadPseudonymKey {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A private key does not belong to the certificate next to it.
    #[error("{} does not hold the private key of the certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate.
        cert: PathBuf,
        /// The private key file that does not match it.
        key: PathBuf,
    },

    /// Only one of the CA certificate and the CA private key exists.
    #[error(
        "incomplete CA: {} exists but {} does not; restore the missing file or delete the directory to start over",
        present.display(),
        missing.display()
    )]
    IncompleteCa {
        /// The CA file that is there.
        present: PathBuf,
        /// The CA file that is missing.
        missing: PathBuf,
    },

    /// The directory already holds a CA (or pseudonymisation key) other than the one being written.
    #[error(
        "{} already holds a different {what}; use another directory or delete it first",
        path.display()
    )]
    DifferentExisting {
        /// The existing file.
        path: PathBuf,
        /// What it holds ("CA certificate", "pseudonymisation key", ...).
        what: &'static str,
    },

    /// An existing certificate that would be kept was not issued by this CA.
    #[error(
        "{} was not issued by the CA in {}; delete it (with its key) to have it reissued",
        cert.display(),
        ca.display()
    )]
    NotIssuedByCa {
        /// The certificate.
        cert: PathBuf,
        /// The CA certificate it should chain to.
        ca: PathBuf,
    },

    /// A name given for the hub certificate is neither a DNS name nor an IP address.
    #[error(
        "hub name {0:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.', optionally starting with \"*.\")"
    )]
    InvalidHubName(String),

    /// A requested validity period ends before it starts.
    #[error("certificate validity ends ({not_after}) before it starts ({not_before})")]
    InvalidValidity {
        /// Requested start.
        not_before: time::OffsetDateTime,
        /// Requested end.
        not_after: time::OffsetDateTime,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
