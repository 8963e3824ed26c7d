//! The in-memory development CA and the certificates it issues.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use huren_core::identity::{DOCUMENT_SIGNING_EKU_ARCS, InstitutionId};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, PublicKeyData, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::Error;

/// Common name of the development CA. It says loudly what it is, so that nobody mistakes a
/// certificate chaining to it for a real one.
pub const CA_COMMON_NAME: &str = "Huren Development Alliance CA (NOT FOR PRODUCTION)";

/// Common name of the development hub certificate.
pub const HUB_COMMON_NAME: &str = "Huren development hub (NOT FOR PRODUCTION)";

/// How long a freshly made development CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3653);

/// How long hub and member certificates are valid.
pub const LEAF_VALIDITY: Duration = Duration::days(1827);

/// How far back `notBefore` is set, so that small clock differences between machines do not
/// make a brand-new certificate "not yet valid".
pub const BACKDATE: Duration = Duration::hours(1);

/// A certificate and its private key, both PEM: the certificate as `CERTIFICATE`, the key as
/// PKCS#8 `PRIVATE KEY`.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for PemPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Everything one member institution needs: its TLS client identity and its summary-signing
/// identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberCredentials {
    /// The institution both certificates name.
    pub institution: InstitutionId,
    /// ECDSA P-256 TLS client certificate: SAN URI `urn:huren:institution:<id>`, CN `<id>`,
    /// EKU clientAuth, KU digitalSignature.
    pub tls: PemPair,
    /// Ed25519 summary-signing certificate: the same SAN URI and CN, EKU documentSigning
    /// (RFC 9336) only, KU digitalSignature and contentCommitment.
    pub signing: PemPair,
}

/// A development CA (certificate and private key, kept in memory so that more certificates can
/// be issued at any time) together with the alliance's pseudonymisation key.
pub struct DevPki {
    ca_cert_pem: String,
    ca_cert_der: Vec<u8>,
    ca_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    pseudonym_key: [u8; 32],
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPki")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"<redacted>")
            .field("pseudonym_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl DevPki {
    /// Makes a new CA (ECDSA P-256, CA with path length 0, key usages keyCertSign and cRLSign,
    /// valid from an hour ago for ten years) and a new random 32-byte pseudonymisation key.
    pub fn generate() -> Result<DevPki, Error> {
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        // A random suffix keeps two development CAs apart by name: a certificate from another
        // one is then refused as "unknown CA", not with a confusing signature error.
        let mut suffix = [0u8; 4];
        getrandom::fill(&mut suffix).map_err(|e| Error::Random(e.to_string()))?;
        params.distinguished_name =
            common_name(&format!("{CA_COMMON_NAME} {}", hex::encode(suffix)));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(DevPki {
            ca_cert_pem: cert.pem(),
            ca_cert_der: cert.der().to_vec(),
            ca_key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            pseudonym_key: random_bytes()?,
        })
    }

    /// Rebuilds a CA from its PEM certificate and PEM private key. The paths only label errors.
    ///
    /// Checks that the certificate is a CA certificate and that the key belongs to it.
    pub(crate) fn from_ca_pem(
        cert_pem: &str,
        cert_path: &Path,
        key_pem: &str,
        key_path: &Path,
        pseudonym_key: [u8; 32],
    ) -> Result<DevPki, Error> {
        let bad_cert = |reason: String| Error::BadFile {
            path: cert_path.to_owned(),
            reason,
        };
        let ca_cert_der = pem_to_der(cert_pem).map_err(&bad_cert)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::BadFile {
            path: key_path.to_owned(),
            reason: format!("not a PKCS#8 private key rcgen can use: {e}"),
        })?;
        {
            let (_, x509) = x509_parser::parse_x509_certificate(&ca_cert_der)
                .map_err(|e| bad_cert(format!("not an X.509 certificate: {e}")))?;
            if !x509.is_ca() {
                return Err(bad_cert("not a CA certificate".to_owned()));
            }
            if x509.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(Error::KeyMismatch {
                    cert: cert_path.to_owned(),
                    key: key_path.to_owned(),
                });
            }
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| bad_cert(format!("rcgen cannot issue from this CA: {e}")))?;
        Ok(DevPki {
            ca_cert_pem: cert_pem.to_owned(),
            ca_cert_der,
            ca_key_pem: key_pem.to_owned(),
            issuer,
            pseudonym_key,
        })
    }

    /// The CA certificate, PEM. This is the trust anchor the hub and the members are given.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The CA certificate, DER.
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.ca_cert_der
    }

    /// The CA private key, PKCS#8 PEM.
    pub(crate) fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    /// The public key of the CA, SubjectPublicKeyInfo DER.
    pub(crate) fn ca_public_key_spki(&self) -> Vec<u8> {
        self.issuer.key().subject_public_key_info()
    }

    /// The alliance's shared pseudonymisation (HMAC) key. Members use it to pseudonymise patient
    /// identifiers; the hub never gets it.
    pub fn pseudonym_key(&self) -> &[u8; 32] {
        &self.pseudonym_key
    }

    pub(crate) fn set_pseudonym_key(&mut self, key: [u8; 32]) {
        self.pseudonym_key = key;
    }

    /// Issues the hub's TLS server certificate (ECDSA P-256, EKU serverAuth, valid from an hour
    /// ago for five years).
    ///
    /// Its subject alternative names are DNS `localhost`, IP `127.0.0.1` and IP `::1`, plus each
    /// entry of `extra_names`: an entry that parses as an IP address becomes an IP address name,
    /// anything else must be a DNS name (a leading `*.` wildcard is allowed).
    pub fn hub_identity(&self, extra_names: &[String]) -> Result<PemPair, Error> {
        let now = OffsetDateTime::now_utc();
        let mut params = self.leaf_params(HUB_COMMON_NAME, now - BACKDATE, now + LEAF_VALIDITY)?;
        let mut sans = vec![
            SanType::DnsName(Ia5String::try_from("localhost")?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        for name in extra_names {
            let name = name.trim();
            let san = if let Ok(ip) = name.parse::<IpAddr>() {
                SanType::IpAddress(ip)
            } else if is_dns_name(name) {
                SanType::DnsName(Ia5String::try_from(name)?)
            } else {
                return Err(Error::InvalidHubName(name.to_owned()));
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(&params, KeyPair::generate()?)
    }

    /// Issues both certificates of a member, valid from an hour ago for five years.
    pub fn issue_member(&self, institution: &InstitutionId) -> Result<MemberCredentials, Error> {
        let now = OffsetDateTime::now_utc();
        self.issue_member_valid(institution, now - BACKDATE, now + LEAF_VALIDITY)
    }

    /// Issues both certificates of a member with the given validity period. Tests use it to make
    /// expired and not-yet-valid certificates. The times are truncated to whole seconds.
    pub fn issue_member_valid(
        &self,
        institution: &InstitutionId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<MemberCredentials, Error> {
        Ok(MemberCredentials {
            institution: institution.clone(),
            tls: self.member_tls(institution, not_before, not_after)?,
            signing: self.member_signing(institution, not_before, not_after)?,
        })
    }

    /// The member's TLS client certificate alone.
    pub(crate) fn member_tls(
        &self,
        institution: &InstitutionId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<PemPair, Error> {
        let mut params = self.member_params(institution, not_before, not_after)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&params, KeyPair::generate()?)
    }

    /// A TLS client certificate for `institution` from this CA without any extended key usage:
    /// TLS path validation accepts it for every purpose, so tests use it to check that the hub
    /// still refuses it as a member's client certificate.
    pub fn issue_tls_without_eku(&self, institution: &InstitutionId) -> Result<PemPair, Error> {
        let now = OffsetDateTime::now_utc();
        let mut params = self.member_params(institution, now - BACKDATE, now + LEAF_VALIDITY)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = Vec::new();
        self.sign(&params, KeyPair::generate()?)
    }

    /// The member's summary-signing certificate alone.
    pub(crate) fn member_signing(
        &self,
        institution: &InstitutionId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<PemPair, Error> {
        let mut params = self.member_params(institution, not_before, not_after)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(
            DOCUMENT_SIGNING_EKU_ARCS.to_vec(),
        )];
        self.sign(&params, KeyPair::generate_for(&PKCS_ED25519)?)
    }

    fn member_params(
        &self,
        institution: &InstitutionId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertificateParams, Error> {
        let mut params = self.leaf_params(institution.as_str(), not_before, not_after)?;
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(institution.to_uri())?)];
        Ok(params)
    }

    /// Parameters shared by every end-entity certificate: subject CN, validity, a random serial,
    /// basicConstraints cA=FALSE, and an authority key identifier pointing at the CA.
    fn leaf_params(
        &self,
        cn: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertificateParams, Error> {
        if not_after <= not_before {
            return Err(Error::InvalidValidity {
                not_before,
                not_after,
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        Ok(params)
    }

    fn sign(&self, params: &CertificateParams, key: KeyPair) -> Result<PemPair, Error> {
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key_pem(&key)?,
        })
    }
}

/// A private key's PKCS#8 PEM. Ed25519 keys are written as PKCS#8 v1 (RFC 5208: version 0, the
/// seed only): rcgen (ring) writes v2 with the public key, which OpenSSL 3 and Python's
/// cryptography refuse. Other keys as rcgen writes them.
pub(crate) fn key_pem(key: &KeyPair) -> Result<String, Error> {
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
    if key.algorithm() != &PKCS_ED25519 {
        return Ok(key.serialize_pem());
    }
    let pkcs8 = |e: ed25519_dalek::pkcs8::Error| Error::KeyEncoding(e.to_string());
    let signing = ed25519_dalek::SigningKey::from_pkcs8_der(&key.serialize_der()).map_err(pkcs8)?;
    let seed_only = KeypairBytes {
        secret_key: signing.to_bytes(),
        public_key: None,
    };
    let pem = seed_only.to_pkcs8_pem(Default::default()).map_err(pkcs8)?;
    Ok(pem.as_str().to_owned())
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A positive 128-bit serial number with its top byte non-zero (so it always encodes in 16
/// bytes).
fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes: [u8; 16] = random_bytes()?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| Error::Random(e.to_string()))?;
    Ok(buf)
}

/// The DER of the first `CERTIFICATE` block of a PEM text.
pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if block.label != "CERTIFICATE" {
        return Err(format!(
            "PEM block is {:?}, expected \"CERTIFICATE\"",
            block.label
        ));
    }
    Ok(block.contents)
}

/// A host name made of letters, digits and hyphens in dot-separated labels, optionally with a
/// leading `*.` wildcard label.
fn is_dns_name(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && name.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
