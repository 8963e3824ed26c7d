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
//!
//! Which types an agent accepts is its [`IdTypes`]: the alliance-wide types (an id of one of
//! these names the same person at every member; default [`ALLIANCE_ID_TYPES`]) and local types,
//! each declared with its assigning authority (e.g. a hospital's record number `mrn` assigned
//! by `shx-prov-people`). A local type's pseudonym input names the authority, so two members'
//! record numbers never share a pseudonym:
//!
//! ```text
//! pseudonym = HMAC-SHA-256(key, "huren-pseudonym-v1" || 0x00 || id_type "@" authority || 0x00 || id_value)
//! ```

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

/// The identifier types accepted by default as alliance-wide: resident identity card,
/// Hong Kong/Macao travel permit, passport, the regional (electronic) health card and the
/// social-security card (社会保障卡).
pub const ALLIANCE_ID_TYPES: &[&str] = &[
    "cn-ric",
    "cn-hk-mo-pass",
    "passport",
    "cn-health-card",
    "cn-ssc",
];

/// The identifier types an agent accepts (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTypes {
    alliance_wide: Vec<String>,
    /// (local type, its assigning authority), both normalised.
    local: Vec<(String, String)>,
}

impl Default for IdTypes {
    fn default() -> Self {
        Self {
            alliance_wide: ALLIANCE_ID_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            local: Vec::new(),
        }
    }
}

fn normalise_type(id_type: &str) -> Result<String, PatientIdError> {
    let id_type = id_type.trim().to_ascii_lowercase();
    if id_type.is_empty()
        || id_type.len() > 32
        || !id_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(PatientIdError::BadType(id_type));
    }
    Ok(id_type)
}

impl IdTypes {
    /// Alliance-wide types and local `(type, assigning authority)` pairs. Types are normalised
    /// as in [`PatientId::new`]; an authority is trimmed and lower-cased, 1–64 of `a-z 0-9 . - _ :`
    /// (an institution id or an OID). A type may not be both, nor local twice.
    pub fn new(
        alliance_wide: &[String],
        local: &[(String, String)],
    ) -> Result<Self, PatientIdError> {
        let alliance_wide = alliance_wide
            .iter()
            .map(|t| normalise_type(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(local.len());
        for (t, authority) in local {
            let t = normalise_type(t)?;
            let a = authority.trim().to_ascii_lowercase();
            if a.is_empty()
                || a.len() > 64
                || !a
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_:".contains(&b))
            {
                return Err(PatientIdError::BadAuthority(t));
            }
            if alliance_wide.contains(&t) || out.iter().any(|(o, _)| *o == t) {
                return Err(PatientIdError::DuplicateType(t));
            }
            out.push((t, a));
        }
        Ok(Self {
            alliance_wide,
            local: out,
        })
    }

    /// The HMAC's type input for `id_type`: the type itself if alliance-wide,
    /// `type@authority` if local; refused otherwise, naming the accepted types.
    fn pseudonym_type(&self, id_type: &str) -> Result<String, PatientIdError> {
        if self.alliance_wide.iter().any(|t| t == id_type) {
            return Ok(id_type.to_owned());
        }
        if let Some((t, a)) = self.local.iter().find(|(t, _)| t == id_type) {
            return Ok(format!("{t}@{a}"));
        }
        let mut allowed = self.alliance_wide.clone();
        allowed.extend(self.local.iter().map(|(t, _)| t.clone()));
        Err(PatientIdError::TypeNotAccepted {
            id_type: id_type.to_owned(),
            allowed: allowed.join(", "),
        })
    }
}

/// The members' shared pseudonymisation key, with the identifier types this agent accepts
/// ([`PseudonymKey::with_id_types`]). Its `Debug` never shows the key.
#[derive(Clone)]
pub struct PseudonymKey([u8; 32], Option<IdTypes>);

impl PseudonymKey {
    /// A key that pseudonymises ids of any type with [`PseudonymKey::pseudonymise`]; an agent
    /// sets its accepted types with [`PseudonymKey::with_id_types`].
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes, None)
    }

    /// The key restricted to `types`, for [`PseudonymKey::pseudonymise_checked`].
    pub fn with_id_types(mut self, types: IdTypes) -> Self {
        self.1 = Some(types);
        self
    }

    /// The pseudonym of a patient id whose type this key accepts (all of [`IdTypes::default`]
    /// without [`PseudonymKey::with_id_types`]); a local type's input names its authority.
    pub fn pseudonymise_checked(&self, id: &PatientId) -> Result<Pseudonym, PatientIdError> {
        let default;
        let types = match &self.1 {
            Some(t) => t,
            None => {
                default = IdTypes::default();
                &default
            }
        };
        let id_type = types.pseudonym_type(&id.id_type)?;
        Ok(self.hmac(&id_type, &id.value))
    }

    /// Reads a key written as 64 hex characters (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<Self, PatientIdError> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).map_err(|_| PatientIdError::BadKey)?;
        Ok(Self::new(key))
    }

    /// The pseudonym of a normalised patient id, whatever its type (no [`IdTypes`] check: an
    /// agent uses [`PseudonymKey::pseudonymise_checked`]).
    pub fn pseudonymise(&self, id: &PatientId) -> Pseudonym {
        self.hmac(&id.id_type, &id.value)
    }

    fn hmac(&self, id_type: &str, value: &str) -> Pseudonym {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        let Ok(mut mac) = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0) else {
            unreachable!("HMAC-SHA-256 takes keys of any length")
        };
        mac.update(PSEUDONYM_CONTEXT);
        mac.update(&[0]);
        mac.update(id_type.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
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
    #[error(
        "patient id type {id_type:?} is not accepted: use an alliance-wide type ({allowed}), or declare a local type with its assigning authority under [[pseudonym.local_types]]"
    )]
    TypeNotAccepted { id_type: String, allowed: String },
    #[error(
        "local patient id type {0:?} needs an assigning_authority of 1 to 64 of a-z, 0-9, '.', '-', '_', ':'"
    )]
    BadAuthority(String),
    #[error("patient id type {0:?} is listed twice (alliance-wide or local)")]
    DuplicateType(String),
}

/// GB 11643 / ISO 7064 MOD 11-2 check character of the first 17 digits of a resident
/// identity card number; `None` unless given exactly 17 ASCII digits.
pub fn ric_check_char(first17: &[u8]) -> Option<char> {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHARS: &[u8; 11] = b"10X98765432";
    if first17.len() != 17 || !first17.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = first17
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    Some(CHARS[(sum % 11) as usize] as char)
}

impl PatientId {
    /// Normalises an id type and value (see the module doc).
    pub fn new(id_type: &str, value: &str) -> Result<Self, PatientIdError> {
        let id_type = normalise_type(id_type)?;
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
            if ric_check_char(&b[..17]) != Some(b[17] as char) {
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
            let check = ric_check_char(first17.as_bytes()).ok_or(PatientIdError::BadCharacters)?;
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

    /// Issue 16, finding 12: only alliance-wide types and declared local types are accepted;
    /// the alliance-wide pseudonym is the pinned one; a local type's pseudonym depends on its
    /// authority. Pinned, computed independently with Python's hmac module:
    /// hmac.new(bytes(range(32)), b'huren-pseudonym-v1\x00mrn@shx-prov-people\x00A0012345', sha256)
    #[test]
    fn id_types_are_checked_and_local_types_name_their_authority() {
        let local = |authority: &str| {
            key().with_id_types(
                IdTypes::new(
                    &["cn-ric".to_owned()],
                    &[("mrn".to_owned(), authority.to_owned())],
                )
                .unwrap(),
            )
        };
        let ric = PatientId::new("cn-ric", "11010519491231002X").unwrap();
        assert_eq!(
            hex::encode(local("x").pseudonymise_checked(&ric).unwrap().as_bytes()),
            "62de25610e2b38801c7a673ca848fed41a5b5684bf4d6dd55f4e45233ad5f816"
        );
        let mrn = PatientId::new("MRN", "A0012345").unwrap();
        let a = local(" SHX-PROV-PEOPLE ")
            .pseudonymise_checked(&mrn)
            .unwrap();
        assert_eq!(
            hex::encode(a.as_bytes()),
            "4f400b62d94a1ac2374e75bdcfcff0f8496e5626eb7465d42cd222c867643fe8"
        );
        let b = local("lantian-county").pseudonymise_checked(&mrn).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, key().pseudonymise(&mrn));
        // Unknown types are refused everywhere, with the accepted ones listed.
        let err = key().pseudonymise_checked(&mrn).unwrap_err();
        assert!(
            err.to_string().contains("\"mrn\" is not accepted")
                && err.to_string().contains("cn-ric, cn-hk-mo-pass, passport"),
            "{err}"
        );
        let err = local("x")
            .pseudonymise_checked(&PatientId::new("passport", "E1").unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("cn-ric, mrn"), "{err}");
        assert!(matches!(
            IdTypes::new(&[], &[("mrn".to_owned(), " ".to_owned())]),
            Err(PatientIdError::BadAuthority(_))
        ));
        assert!(matches!(
            IdTypes::new(&["mrn".to_owned()], &[("mrn".to_owned(), "a".to_owned())]),
            Err(PatientIdError::DuplicateType(_))
        ));
    }
}
