//! A development PKI for a Huren alliance. **For development and testing only, never for
//! production.**
//!
//! Huren's hub and member agents talk gRPC over mutual TLS, and members sign exam-result
//! summaries with Ed25519 keys certified by the alliance. To run any of that on one machine you
//! need a CA and certificates shaped exactly as the hub and the agents expect. This crate makes
//! them:
//!
//! - a CA (ECDSA P-256, `CN=Huren Development Alliance CA (NOT FOR PRODUCTION)`, path length 0);
//! - the hub's TLS server certificate (ECDSA P-256, EKU serverAuth, names `localhost`,
//!   `127.0.0.1`, `::1` and any extra names asked for);
//! - per member institution, a TLS client certificate (ECDSA P-256, EKU clientAuth) and a
//!   summary-signing certificate (Ed25519, EKU documentSigning of RFC 9336), both naming the
//!   institution in a URI subject alternative name `urn:huren:institution:<id>` and in the CN;
//! - the alliance's 32-byte pseudonymisation key, shared by the members and never given to the
//!   hub.
//!
//! Private keys are PKCS#8 PEM and **unencrypted**; Ed25519 signing keys are PKCS#8 v1 (seed
//! only), which OpenSSL 3 and Python's cryptography read. A production alliance issues the same kinds
//! of certificates from its own CA; nothing else in Huren changes.
//!
//! Use [`DevPki`] to make everything in memory (tests, the demo), or [`init_dir`] to write a
//! directory (the `huren-certs-dev` command). [`init_dir`] lays the directory out like this:
//!
//! ```text
//! DEVELOPMENT-ONLY.txt            warning and description of each file
//! ca/ca.pem                       CA certificate (trust anchor of hub and members)
//! ca/ca.key.pem                   CA private key
//! hub/hub.pem                     hub TLS server certificate
//! hub/hub.key.pem                 hub TLS private key
//! members/<id>/tls.pem            member TLS client certificate
//! members/<id>/tls.key.pem        member TLS private key
//! members/<id>/signing.pem        member summary-signing certificate
//! members/<id>/signing.key.pem    member summary-signing private key
//! alliance-pseudonym.key          pseudonymisation key: 64 lowercase hex characters and "\n"
//! ```
//!
//! Private keys and the pseudonymisation key are written with mode 0600 on Unix. Calling
//! [`init_dir`] again on the same directory keeps the CA, the pseudonymisation key and every
//! certificate already there, and issues only what is missing, so members can be added later.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod files;
mod pki;

#[cfg(test)]
mod tests;

pub use error::Error;
pub use files::{
    DevPkiDir, FileAction, FileReport, MemberFiles, NOTICE_FILE, PSEUDONYM_KEY_FILE, init_dir,
    read_pseudonym_key,
};
pub use pki::{
    BACKDATE, CA_COMMON_NAME, CA_VALIDITY, DevPki, HUB_COMMON_NAME, LEAF_VALIDITY,
    MemberCredentials, PemPair,
};
