//! Blind patient index: patient ids become keyed pseudonyms at the member's agent.
//!
//! ```text
//! pseudonym = HMAC-SHA-256(key, "huren-pseudonym-v1" || 0x00 || id_type || 0x00 || id_value)
//! ```
//!
//! `key` is 32 bytes shared by the alliance members and never given to the hub. `id_type` and
//! `id_value` are normalised first (see [`PatientId::new`]), so the same person typed two ways at
//! two hospitals gets the same pseudonym:
//! - `id_type`: trimmed, ASCII lower case, 1–32 of `a-z 0-9 -`. Recommended values: `cn-ric`
//!   (居民身份证, resident identity card), `cn-hk-mo-pass` (港澳居民来往内地通行证), `passport`,
//!   `cn-health-card` (电子健康卡).
//! - `id_value`: full-width ASCII (全角) folded to half-width, spaces and hyphens removed, ASCII
//!   upper case. For `cn-ric` the value must be a valid GB 11643 number: 18 characters with a
//!   correct ISO 7064 MOD 11-2 check character, or a first-generation 15-digit number, which is
//!   converted to its 18-character form.

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use std::fmt;

/// Domain-separation prefix of the HMAC input; bump it if the normalisation ever changes.
pub const PSEUDONYM_CONTEXT: &[u8] = b"huren-pseudonym-v1";

/// 32 bytes that stand for one patient in everything the hub sees.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pseudonym([u8; 32]);

impl Pseudonym {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex of the first 8 bytes: enough to tell pseudonyms apart in a log line or a
    /// table, without printing the whole value.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pseudonym({}…)", self.short())
    }
}

/// The members' shared pseudonymisation key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct PseudonymKey([u8; 32]);

impl PseudonymKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a key written as 64 hex characters (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<Self, PatientIdError> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).map_err(|_| PatientIdError::BadKey)?;
        Ok(Self(key))
    }

    /// The pseudonym of a normalised patient id.
    pub fn pseudonymise(&self, id: &PatientId) -> Pseudonym {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        let Ok(mut mac) = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0) else {
            unreachable!("HMAC-SHA-256 takes keys of any length")
        };
        mac.update(PSEUDONYM_CONTEXT);
        mac.update(&[0]);
        mac.update(id.id_type.as_bytes());
        mac.update(&[0]);
        mac.update(id.value.as_bytes());
        Pseudonym(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymKey(<redacted>)")
    }
}

/// A normalised patient id. Lives only inside a member's agent. Its `Debug` hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct PatientId {
    id_type: String,
    value: String,
}

/// Why a patient id or key was refused. Messages never repeat the id value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatientIdError {
    #[error("patient id type {0:?} is not valid: use 1 to 32 of a-z, 0-9 and '-', e.g. cn-ric")]
    BadType(String),
    #[error("patient id is empty")]
    EmptyValue,
    #[error("patient id is longer than 64 characters")]
    TooLong,
    #[error("patient id may only contain letters and digits after normalisation")]
    BadCharacters,
    #[error(
        "resident identity card number must have 18 characters (or 15 digits for a first-generation card)"
    )]
    RicLength,
    #[error(
        "resident identity card number has a wrong check character; please re-check the number"
    )]
    RicChecksum,
    #[error("pseudonymisation key must be 64 hex characters (32 bytes)")]
    BadKey,
}

/// GB 11643 / ISO 7064 MOD 11-2 check character of the first 17 digits.
fn ric_check_char(first17: &[u8]) -> char {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHARS: &[u8; 11] = b"10X98765432";
    let sum: u32 = first17
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    CHARS[(sum % 11) as usize] as char
}

impl PatientId {
    /// Normalises an id type and value (see the module doc).
    pub fn new(id_type: &str, value: &str) -> Result<Self, PatientIdError> {
        let id_type = id_type.trim().to_ascii_lowercase();
        if id_type.is_empty()
            || id_type.len() > 32
            || !id_type
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(PatientIdError::BadType(id_type));
        }
        let mut v = String::with_capacity(value.len());
        for c in value.chars() {
            // Full-width forms U+FF01..U+FF5E map to ASCII 0x21..0x7E; U+3000 is a full-width space.
            let c = match c {
                '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
                '\u{3000}' => ' ',
                _ => c,
            };
            if c.is_whitespace() || c == '-' {
                continue;
            }
            if !c.is_ascii_alphanumeric() {
                return Err(PatientIdError::BadCharacters);
            }
            v.push(c.to_ascii_uppercase());
        }
        if v.is_empty() {
            return Err(PatientIdError::EmptyValue);
        }
        if v.len() > 64 {
            return Err(PatientIdError::TooLong);
        }
        if id_type == "cn-ric" {
            v = normalise_ric(&v)?;
        }
        Ok(Self { id_type, value: v })
    }

    pub fn id_type(&self) -> &str {
        &self.id_type
    }
}

fn normalise_ric(v: &str) -> Result<String, PatientIdError> {
    let b = v.as_bytes();
    match b.len() {
        18 => {
            if !b[..17].iter().all(u8::is_ascii_digit) {
                return Err(PatientIdError::BadCharacters);
            }
            if ric_check_char(&b[..17]) != b[17] as char {
                return Err(PatientIdError::RicChecksum);
            }
            Ok(v.to_owned())
        }
        15 => {
            if !b.iter().all(u8::is_ascii_digit) {
                return Err(PatientIdError::BadCharacters);
            }
            // First-generation cards omit the century (always 19xx) and the check character.
            let first17 = format!("{}19{}", &v[..6], &v[6..]);
            let check = ric_check_char(first17.as_bytes());
            Ok(format!("{first17}{check}"))
        }
        _ => Err(PatientIdError::RicLength),
    }
}

impl fmt::Debug for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PatientId({}, <redacted>)", self.id_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PseudonymKey {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        PseudonymKey::new(k)
    }

    /// Pinned vector, computed independently with Python's hmac module:
    /// hmac.new(bytes(range(32)), b'huren-pseudonym-v1\x00cn-ric\x0011010519491231002X', sha256)
    #[test]
    fn pinned_vector() {
        let id = PatientId::new("cn-ric", "11010519491231002X").unwrap();
        assert_eq!(
            hex::encode(key().pseudonymise(&id).as_bytes()),
            "62de25610e2b38801c7a673ca848fed41a5b5684bf4d6dd55f4e45233ad5f816"
        );
    }

    #[test]
    fn spellings_of_one_person_agree() {
        let k = key();
        let canonical = k.pseudonymise(&PatientId::new("cn-ric", "11010519491231002X").unwrap());
        for (t, v) in [
            (" CN-RIC ", "11010519491231002x"),
            ("cn-ric", "110105 19491231 002X"),
            ("cn-ric", "１１０１０５１９４９１２３１００２Ｘ"),
            // The first-generation 15-digit card of the same person.
            ("cn-ric", "110105491231002"),
        ] {
            assert_eq!(
                k.pseudonymise(&PatientId::new(t, v).unwrap()),
                canonical,
                "{t} {v}"
            );
        }
    }

    #[test]
    fn type_and_key_separate_pseudonyms() {
        let k = key();
        let a = k.pseudonymise(&PatientId::new("passport", "E12345678").unwrap());
        let b = k.pseudonymise(&PatientId::new("cn-health-card", "E12345678").unwrap());
        assert_ne!(a, b);
        let other = PseudonymKey::new([1; 32]);
        assert_ne!(
            other.pseudonymise(&PatientId::new("passport", "E12345678").unwrap()),
            a
        );
    }

    #[test]
    fn bad_ids_are_refused_without_echoing_the_value() {
        let cases = [
            ("cn-ric", "11010519491231002Y", PatientIdError::RicChecksum),
            (
                "cn-ric",
                "1101051949123100AX",
                PatientIdError::BadCharacters,
            ),
            ("cn-ric", "110105194912310021", PatientIdError::RicChecksum),
            ("cn-ric", "1101051949", PatientIdError::RicLength),
            ("cn-ric", "", PatientIdError::EmptyValue),
            ("passport", "E1234@5678", PatientIdError::BadCharacters),
            ("", "E12345678", PatientIdError::BadType(String::new())),
            (
                "pass port",
                "E12345678",
                PatientIdError::BadType("pass port".into()),
            ),
        ];
        for (t, v, want) in cases {
            let err = PatientId::new(t, v).unwrap_err();
            assert_eq!(err, want, "{t} {v}");
            if !v.is_empty() {
                assert!(!err.to_string().contains(v));
            }
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let id = PatientId::new("cn-ric", "11010519491231002X").unwrap();
        assert!(!format!("{id:?}").contains("1101"));
        assert!(!format!("{:?}", key()).contains("00010203"));
        assert_eq!(
            PseudonymKey::from_hex("zz").unwrap_err(),
            PatientIdError::BadKey
        );
    }
}
