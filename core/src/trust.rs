//! Trust in the alliance PKI: which certificates the alliance CA vouches for and which
//! institution each one names. Pure functions over DER bytes; no I/O.

use pki_types::{CertificateDer, UnixTime, pem::PemObject};
use std::time::Duration;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::identity::{DOCUMENT_SIGNING_EKU_DER, InstitutionId};
use crate::summary::UnixMillis;

/// Signature algorithms accepted on certificates issued by an alliance CA.
static CERT_SIGNATURE_ALGS: &[&dyn pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
];

/// `1.3.101.112`, the Ed25519 public key algorithm, DER contents.
const ED25519_OID_DER: &[u8] = &[0x2b, 0x65, 0x70];

/// Why a certificate was not trusted or not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("the alliance CA certificate is not usable: {0}")]
    BadCa(String),
    #[error("the certificate cannot be parsed: {0}")]
    Malformed(String),
    #[error("the certificate was not issued by this alliance's CA")]
    UnknownIssuer,
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate is not valid yet")]
    NotYetValid,
    #[error(
        "the certificate is not a summary-signing certificate (it lacks the Document Signing extended key usage)"
    )]
    NotForSigning,
    #[error("the certificate is not valid for the alliance: {0}")]
    Invalid(String),
    #[error("the certificate names no institution (no urn:huren:institution: URI)")]
    NoInstitution,
    #[error("the certificate names more than one institution")]
    SeveralInstitutions,
    #[error("the certificate names an invalid institution id: {0}")]
    BadInstitution(String),
    #[error("the signing certificate does not hold an Ed25519 key")]
    NotEd25519,
    #[error(
        "the certificate is not a TLS client certificate (it lacks the clientAuth extended key usage)"
    )]
    NotForClientAuth,
}

/// The alliance CA certificate: the one trust anchor of an alliance.
#[derive(Clone, Debug)]
pub struct AllianceCa {
    der: CertificateDer<'static>,
}

/// A signing certificate the alliance CA vouches for, reduced to what verification needs.
#[derive(Clone, Debug)]
pub struct CertifiedSigner {
    pub institution: InstitutionId,
    pub key: ed25519_dalek::VerifyingKey,
    /// The certificate's validity period (inclusive), so a cached certification can be
    /// re-checked for another moment without parsing the certificate again.
    pub valid_from: UnixMillis,
    pub valid_until: UnixMillis,
}

impl CertifiedSigner {
    /// Whether the certificate is valid at `at`.
    pub fn valid_at(&self, at: UnixMillis) -> bool {
        self.valid_from <= at && at <= self.valid_until
    }
}

fn unix_time(at: UnixMillis) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_millis(at.0.max(0) as u64))
}

impl AllianceCa {
    /// Takes the CA certificate in DER.
    pub fn from_der(der: Vec<u8>) -> Result<Self, TrustError> {
        let der = CertificateDer::from(der);
        webpki::anchor_from_trusted_cert(&der).map_err(|e| TrustError::BadCa(format!("{e:?}")))?;
        Ok(Self { der })
    }

    /// Takes the CA certificate in PEM (the first certificate in the text).
    pub fn from_pem(pem: &str) -> Result<Self, TrustError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| TrustError::BadCa(format!("no PEM certificate found: {e}")))?;
        Self::from_der(der.to_vec())
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Checks that `cert_der` is a summary-signing certificate issued by this CA and valid at
    /// `at`, and returns the institution it names and its Ed25519 key.
    pub fn certify_signer(
        &self,
        cert_der: &[u8],
        at: UnixMillis,
    ) -> Result<CertifiedSigner, TrustError> {
        let anchor = webpki::anchor_from_trusted_cert(&self.der)
            .map_err(|e| TrustError::BadCa(format!("{e:?}")))?;
        let leaf = CertificateDer::from(cert_der);
        let ee = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| TrustError::Malformed(format!("{e:?}")))?;
        ee.verify_for_usage(
            CERT_SIGNATURE_ALGS,
            &[anchor],
            &[],
            unix_time(at),
            webpki::KeyUsage::required(&DOCUMENT_SIGNING_EKU_DER),
            None,
            None,
        )
        .map_err(map_webpki)?;
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| TrustError::Malformed(e.to_string()))?;
        let spki = cert.public_key();
        if spki.algorithm.algorithm.as_bytes() != ED25519_OID_DER {
            return Err(TrustError::NotEd25519);
        }
        let key_bytes: [u8; 32] = spki
            .subject_public_key
            .data
            .as_ref()
            .try_into()
            .map_err(|_| TrustError::NotEd25519)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes)
            .map_err(|_| TrustError::NotEd25519)?;
        let validity = cert.validity();
        Ok(CertifiedSigner {
            institution: institution_of(&cert)?,
            key,
            valid_from: UnixMillis(validity.not_before.timestamp().saturating_mul(1000)),
            valid_until: UnixMillis(validity.not_after.timestamp().saturating_mul(1000)),
        })
    }
}

fn map_webpki(e: webpki::Error) -> TrustError {
    match e {
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            TrustError::UnknownIssuer
        }
        webpki::Error::CertExpired { .. } => TrustError::Expired,
        webpki::Error::CertNotValidYet { .. } => TrustError::NotYetValid,
        webpki::Error::RequiredEkuNotFoundContext(_) => TrustError::NotForSigning,
        other => TrustError::Invalid(format!("{other:?}")),
    }
}

/// The institution named by a certificate (TLS or signing) that has already been verified.
/// Exactly one `urn:huren:institution:` URI must be present.
pub fn institution_in_certificate(cert_der: &[u8]) -> Result<InstitutionId, TrustError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| TrustError::Malformed(e.to_string()))?;
    institution_of(&cert)
}

/// The institution named by a member's TLS client certificate, which must carry the clientAuth
/// extended key usage: TLS path validation accepts a certificate without any extended key
/// usage for every purpose, so a CA-issued certificate meant for something else would do.
pub fn client_institution(cert_der: &[u8]) -> Result<InstitutionId, TrustError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| TrustError::Malformed(e.to_string()))?;
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.client_auth => institution_of(&cert),
        Ok(_) => Err(TrustError::NotForClientAuth),
        Err(e) => Err(TrustError::Malformed(e.to_string())),
    }
}

fn institution_of(cert: &X509Certificate<'_>) -> Result<InstitutionId, TrustError> {
    let mut found = None;
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name
                    && let Some(id) = InstitutionId::from_uri(uri)
                {
                    if found.is_some() {
                        return Err(TrustError::SeveralInstitutions);
                    }
                    found = Some(id.map_err(|e| TrustError::BadInstitution(e.to_string()))?);
                }
            }
        }
    }
    found.ok_or(TrustError::NoInstitution)
}
