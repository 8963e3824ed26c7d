//! Who is who in an alliance: institution ids and how certificates carry them.
//!
//! Every member certificate (the TLS client certificate and the summary-signing certificate)
//! names its institution in a subject alternative name of type URI:
//! `urn:huren:institution:<id>`. The hub takes a caller's identity from that name in its
//! verified client certificate and from nowhere else.
//!
//! Summary-signing certificates carry the Document Signing extended key usage of RFC 9336
//! (`id-kp-documentSigning`, 1.3.6.1.5.5.7.3.36); TLS certificates do not, so a TLS key can never
//! pass for a signing key.

use std::fmt;

/// Prefix of the URI subject alternative name that carries an institution id.
pub const INSTITUTION_URI_PREFIX: &str = "urn:huren:institution:";

/// OID arcs of `id-kp-documentSigning` (RFC 9336), the extended key usage of signing certificates.
pub const DOCUMENT_SIGNING_EKU_ARCS: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 3, 36];

/// DER contents (without tag and length) of the `id-kp-documentSigning` OID, as webpki wants it.
pub const DOCUMENT_SIGNING_EKU_DER: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x24];

/// Longest institution id accepted.
pub const MAX_INSTITUTION_ID_LEN: usize = 64;

/// A validated institution id: 1 to 64 characters from `A-Z a-z 0-9 . _ -`, starting with a
/// letter or digit. The narrow alphabet keeps ids safe in URIs, file names, store keys and logs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstitutionId(String);

/// Why a string is not an institution id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstitutionIdError {
    #[error("institution id is empty")]
    Empty,
    #[error("institution id is {0} characters long; at most {MAX_INSTITUTION_ID_LEN} are allowed")]
    TooLong(usize),
    #[error(
        "institution id {0:?} may only contain letters, digits, '.', '_' and '-', and must start with a letter or digit"
    )]
    BadCharacter(String),
}

impl InstitutionId {
    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<Self, InstitutionIdError> {
        if s.is_empty() {
            return Err(InstitutionIdError::Empty);
        }
        let ok_first = s.as_bytes()[0].is_ascii_alphanumeric();
        let ok_rest = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !(ok_first && ok_rest) {
            return Err(InstitutionIdError::BadCharacter(s.to_owned()));
        }
        // All ASCII from here on, so bytes are characters.
        if s.len() > MAX_INSTITUTION_ID_LEN {
            return Err(InstitutionIdError::TooLong(s.len()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI subject alternative name that carries this id in a certificate.
    pub fn to_uri(&self) -> String {
        format!("{INSTITUTION_URI_PREFIX}{}", self.0)
    }

    /// Reads an institution id back from a URI subject alternative name, if it is one of ours.
    pub fn from_uri(uri: &str) -> Option<Result<Self, InstitutionIdError>> {
        uri.strip_prefix(INSTITUTION_URI_PREFIX).map(Self::parse)
    }
}

impl fmt::Display for InstitutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, ok: bool) {
        assert_eq!(InstitutionId::parse(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn institution_id_alphabet() {
        check("shx-prov-people", true);
        check("H61010200001", true);
        check("a", true);
        check(&"a".repeat(64), true);
        check(&"a".repeat(65), false);
        check("", false);
        check("-leading-dash", false);
        check("has space", false);
        check("slash/inside", false);
        check("nul\0inside", false);
        check("县医院", false);
        assert_eq!(
            InstitutionId::parse(&"县".repeat(30)),
            Err(InstitutionIdError::BadCharacter("县".repeat(30)))
        );
        assert_eq!(
            InstitutionId::parse(&"a".repeat(65)),
            Err(InstitutionIdError::TooLong(65))
        );
    }

    #[test]
    fn uri_round_trip() {
        let id = InstitutionId::parse("lantian-county").unwrap();
        assert_eq!(id.to_uri(), "urn:huren:institution:lantian-county");
        assert_eq!(InstitutionId::from_uri(&id.to_uri()), Some(Ok(id)));
        assert_eq!(InstitutionId::from_uri("urn:other:x"), None);
        assert!(matches!(
            InstitutionId::from_uri("urn:huren:institution:bad id"),
            Some(Err(_))
        ));
    }

    #[test]
    fn eku_der_matches_arcs() {
        // First two arcs pack into one byte (40*1+3 = 0x2b); the rest are below 128.
        let mut der =
            vec![(DOCUMENT_SIGNING_EKU_ARCS[0] * 40 + DOCUMENT_SIGNING_EKU_ARCS[1]) as u8];
        der.extend(DOCUMENT_SIGNING_EKU_ARCS[2..].iter().map(|&a| a as u8));
        assert_eq!(der, DOCUMENT_SIGNING_EKU_DER);
    }
}
