//! The exam-result summary as a validated domain value, and its one byte encoding.
//!
//! Bytes on the wire are a `huren.summary.v1.SummaryBody` protobuf message
//! (proto/huren/summary/v1/summary.proto). [`Summary::from_body_bytes`] accepts them only if they
//! are in canonical form: decoding and re-encoding gives back the same bytes. That rules out
//! unknown fields (nothing can ride along unseen, such as a patient's name) and gives every
//! summary exactly one byte form, so "the same summary" means "the same bytes".

use prost::Message;

use crate::identity::InstitutionId;
use crate::pb;
use crate::pseudonym::Pseudonym;

/// The body layout this code reads and writes.
pub const SUMMARY_FORMAT: u32 = 1;
/// Largest accepted summary body, in bytes. A summary is a few hundred bytes; the full report
/// stays at the publisher.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest summary id, in characters.
pub const MAX_SUMMARY_ID_LEN: usize = 128;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// This computer's clock (0 if it is set before 1970, the largest time past year 292
    /// million): the one clock reading the hub and the agents share.
    pub fn now() -> Self {
        Self(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

/// Parses a UTC offset written `+08:00` or `-05:30` (sign required, hours 0 to 23, minutes 0
/// to 59) into seconds east of UTC: how the policy and the agents' configurations write one.
pub fn parse_utc_offset(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 6 || b[3] != b':' {
        return None;
    }
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = |i: usize| {
        (b[i].is_ascii_digit() && b[i + 1].is_ascii_digit())
            .then(|| i32::from(b[i] - b'0') * 10 + i32::from(b[i + 1] - b'0'))
    };
    let (h, m) = (digits(1)?, digits(4)?);
    (h < 24 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

/// A publisher's id for a result, stable across its versions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SummaryId(String);

impl SummaryId {
    /// Checks `s`: 1 to 128 characters from `A-Z a-z 0-9 . _ - :`, starting with a letter or digit.
    pub fn parse(s: &str) -> Result<Self, BodyError> {
        let bad = || {
            BodyError::invalid(
                "summary_id",
                format!(
                    "{s:?} is not a valid summary id: use 1 to {MAX_SUMMARY_ID_LEN} characters from letters, digits, '.', '_', '-', ':', starting with a letter or digit"
                ),
            )
        };
        if s.is_empty() || s.len() > MAX_SUMMARY_ID_LEN || !s.as_bytes()[0].is_ascii_alphanumeric()
        {
            return Err(bad());
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SummaryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A catalogue item as the publisher coded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub system: String,
    pub code: String,
    pub display: String,
    pub local_code: String,
}

/// The kind of result: a lab test (检验) or one of the exam (检查) kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    Lab,
    Imaging,
    Electrophysiology,
    NuclearMedicine,
}

/// HL7 v2 table 0078 interpretation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbnormalFlag {
    Unspecified,
    Normal,
    Low,
    High,
    CriticalLow,
    CriticalHigh,
    Abnormal,
}

impl AbnormalFlag {
    /// The HL7 v2 code: "N", "L", "H", "LL", "HH", "A", or "" when unspecified.
    pub fn hl7_code(self) -> &'static str {
        match self {
            Self::Unspecified => "",
            Self::Normal => "N",
            Self::Low => "L",
            Self::High => "H",
            Self::CriticalLow => "LL",
            Self::CriticalHigh => "HH",
            Self::Abnormal => "A",
        }
    }

    /// Reads an HL7 v2 code; the empty string is `Unspecified`.
    pub fn from_hl7_code(code: &str) -> Option<Self> {
        Some(match code {
            "" => Self::Unspecified,
            "N" => Self::Normal,
            "L" => Self::Low,
            "H" => Self::High,
            "LL" => Self::CriticalLow,
            "HH" => Self::CriticalHigh,
            "A" => Self::Abnormal,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabResult {
    pub value: String,
    pub unit: String,
    pub reference_range: String,
    pub flag: AbnormalFlag,
    pub specimen: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExamResult {
    pub modality: String,
    pub body_site: String,
    pub impression: String,
    pub study_uid: String,
}

/// The result itself: lab results for category LAB, exam results for the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Lab(LabResult),
    Exam(ExamResult),
}

/// The full report, kept by the publisher, committed to by digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRef {
    pub sha256: [u8; 32],
    pub locator: String,
    pub media_type: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Final,
    Amended,
    Voided,
}

/// The latest time a summary may carry, 9999-12-31T23:59:59.999Z in Unix milliseconds (the
/// hub refuses anything after its own clock plus a small skew; this bound holds everywhere).
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// One result of one catalogue item for one patient, as its publisher states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub id: SummaryId,
    pub version: u32,
    pub publisher: InstitutionId,
    pub patient: Pseudonym,
    pub item: Item,
    pub category: Category,
    pub performed_at: UnixMillis,
    pub reported_at: UnixMillis,
    pub outcome: Outcome,
    pub report: ReportRef,
    pub status: Status,
    pub status_reason: String,
}

/// Why a summary body was refused. Each variant names the field so a person can fix the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("summary body is {0} bytes; at most {MAX_BODY_BYTES} are accepted")]
    TooLarge(usize),
    #[error("summary body is not a valid SummaryBody message: {0}")]
    Undecodable(String),
    #[error(
        "summary body is not in canonical form (it has unknown fields or a non-standard encoding); encode it with the huren.summary.v1 schema"
    )]
    NotCanonical,
    #[error("summary format {0} is not supported; this software reads format {SUMMARY_FORMAT}")]
    UnsupportedFormat(u32),
    #[error("field {field} is missing")]
    Missing { field: &'static str },
    #[error("field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl BodyError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Checks a text field: required or not, a length limit in characters, and no control
/// characters (line breaks and tabs are allowed where `multiline`).
fn text(
    field: &'static str,
    value: &str,
    required: bool,
    max_chars: usize,
    multiline: bool,
) -> Result<String, BodyError> {
    if value.is_empty() && !required {
        return Ok(String::new());
    }
    if value.trim().is_empty() {
        if required {
            return Err(BodyError::Missing { field });
        }
        // Keeping it would give the summary two byte forms; dropping it would change the bytes.
        return Err(BodyError::invalid(field, "must not be only white space"));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(BodyError::invalid(
            field,
            format!("{chars} characters; at most {max_chars} are allowed"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
    {
        return Err(BodyError::invalid(field, "contains control characters"));
    }
    Ok(value.to_owned())
}

/// A code: required, no white space, at most `max` characters.
fn code(field: &'static str, value: &str, max: usize) -> Result<String, BodyError> {
    let v = text(field, value, true, max, false)?;
    if v.chars().any(char::is_whitespace) {
        return Err(BodyError::invalid(field, "must not contain spaces"));
    }
    Ok(v)
}

impl Summary {
    /// Decodes and validates signed body bytes. The bytes must be canonical (see module doc).
    pub fn from_body_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
        if bytes.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge(bytes.len()));
        }
        let body =
            pb::SummaryBody::decode(bytes).map_err(|e| BodyError::Undecodable(e.to_string()))?;
        if body.encode_to_vec() != bytes {
            return Err(BodyError::NotCanonical);
        }
        Self::try_from(body)
    }

    /// Decodes and validates body bytes that were already checked for canonical form when
    /// they were accepted (a store reading back what it stored), skipping the re-encoding.
    /// Never use it on bytes from the network.
    pub fn from_stored_body_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
        let body =
            pb::SummaryBody::decode(bytes).map_err(|e| BodyError::Undecodable(e.to_string()))?;
        Self::try_from(body)
    }

    /// The canonical body bytes that a publisher signs.
    pub fn to_body_bytes(&self) -> Vec<u8> {
        pb::SummaryBody::from(self).encode_to_vec()
    }

    /// The key that names this result across versions: `publisher/summary_id`.
    pub fn result_key(&self) -> String {
        format!("{}/{}", self.publisher, self.id)
    }

    /// Whether this version may follow `previous`, the version before it of the same result.
    ///
    /// A new version corrects a result; it never moves it to another patient (an order number
    /// reused for another patient would otherwise take the result, and its history, with it)
    /// and never brings a voided result back. A result published for the wrong patient is
    /// voided, and the right one published under a new summary id.
    pub fn may_follow(&self, previous: &Summary) -> Result<(), SuccessionError> {
        if previous.status == Status::Voided {
            return Err(SuccessionError::AfterVoid {
                voided_in: previous.version,
            });
        }
        if self.patient != previous.patient {
            return Err(SuccessionError::PatientChanged);
        }
        Ok(())
    }
}

/// Why a version may not follow the one before it ([`Summary::may_follow`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuccessionError {
    #[error(
        "a new version may not change the patient of a result: void this result and publish the correct one under a new summary id"
    )]
    PatientChanged,
    #[error(
        "version {voided_in} voided this result and a voided result stays voided: publish the corrected result under a new summary id"
    )]
    AfterVoid { voided_in: u32 },
}

impl TryFrom<pb::SummaryBody> for Summary {
    type Error = BodyError;

    fn try_from(b: pb::SummaryBody) -> Result<Self, BodyError> {
        if b.format != SUMMARY_FORMAT {
            return Err(BodyError::UnsupportedFormat(b.format));
        }
        let id = SummaryId::parse(&b.summary_id)?;
        if b.version == 0 {
            return Err(BodyError::invalid("version", "must be 1 or more"));
        }
        let publisher = InstitutionId::parse(&b.publisher)
            .map_err(|e| BodyError::invalid("publisher", e.to_string()))?;
        let patient = Pseudonym::from_slice(&b.patient_pseudonym).ok_or_else(|| {
            BodyError::invalid(
                "patient_pseudonym",
                format!(
                    "must be 32 bytes (an HMAC-SHA-256), got {}",
                    b.patient_pseudonym.len()
                ),
            )
        })?;
        let item = b.item.ok_or(BodyError::Missing { field: "item" })?;
        let item = Item {
            system: code("item.system", &item.system, 256)?,
            code: code("item.code", &item.code, 64)?,
            display: text("item.display", &item.display, false, 256, false)?,
            local_code: text("item.local_code", &item.local_code, false, 64, false)?,
        };
        let category = match pb::Category::try_from(b.category) {
            Ok(pb::Category::Lab) => Category::Lab,
            Ok(pb::Category::Imaging) => Category::Imaging,
            Ok(pb::Category::Electrophysiology) => Category::Electrophysiology,
            Ok(pb::Category::NuclearMedicine) => Category::NuclearMedicine,
            Ok(pb::Category::Unspecified) => return Err(BodyError::Missing { field: "category" }),
            Err(_) => {
                return Err(BodyError::invalid(
                    "category",
                    format!("unknown category {}", b.category),
                ));
            }
        };
        if b.performed_at_ms <= 0 {
            return Err(BodyError::Missing {
                field: "performed_at_ms",
            });
        }
        if b.reported_at_ms <= 0 {
            return Err(BodyError::Missing {
                field: "reported_at_ms",
            });
        }
        for (field, t) in [
            ("performed_at_ms", b.performed_at_ms),
            ("reported_at_ms", b.reported_at_ms),
        ] {
            if t > MAX_TIME_MS {
                return Err(BodyError::invalid(
                    field,
                    "the time is after the year 9999; send Unix milliseconds (UTC)",
                ));
            }
        }
        if b.reported_at_ms < b.performed_at_ms {
            return Err(BodyError::invalid(
                "reported_at_ms",
                "the result is reported before it was performed",
            ));
        }
        let outcome = match (b.result, category) {
            (None, _) => return Err(BodyError::Missing { field: "result" }),
            (Some(pb::summary_body::Result::Lab(lab)), Category::Lab) => Outcome::Lab(LabResult {
                value: text("lab.value", &lab.value, true, 256, false)?,
                unit: text("lab.unit", &lab.unit, false, 32, false)?,
                reference_range: text(
                    "lab.reference_range",
                    &lab.reference_range,
                    false,
                    64,
                    false,
                )?,
                flag: match pb::AbnormalFlag::try_from(lab.flag) {
                    Ok(f) => f.into(),
                    Err(_) => {
                        return Err(BodyError::invalid(
                            "lab.flag",
                            format!("unknown abnormal flag {}", lab.flag),
                        ));
                    }
                },
                specimen: text("lab.specimen", &lab.specimen, false, 64, false)?,
            }),
            (Some(pb::summary_body::Result::Exam(exam)), c) if c != Category::Lab => {
                Outcome::Exam(ExamResult {
                    modality: code("exam.modality", &exam.modality, 16)?,
                    body_site: text("exam.body_site", &exam.body_site, false, 128, false)?,
                    impression: text("exam.impression", &exam.impression, false, 4096, true)?,
                    study_uid: text("exam.study_uid", &exam.study_uid, false, 64, false)?,
                })
            }
            (Some(pb::summary_body::Result::Lab(_)), _) => {
                return Err(BodyError::invalid(
                    "result",
                    "a lab result needs category LAB",
                ));
            }
            (Some(pb::summary_body::Result::Exam(_)), _) => {
                return Err(BodyError::invalid(
                    "result",
                    "category LAB needs a lab result, not an exam result",
                ));
            }
        };
        let report = b.report.ok_or(BodyError::Missing { field: "report" })?;
        let report = ReportRef {
            sha256: report.sha256.as_slice().try_into().map_err(|_| {
                BodyError::invalid(
                    "report.sha256",
                    format!("must be 32 bytes, got {}", report.sha256.len()),
                )
            })?,
            locator: text("report.locator", &report.locator, true, 512, false)?,
            media_type: text("report.media_type", &report.media_type, false, 128, false)?,
        };
        let status = match pb::Status::try_from(b.status) {
            Ok(pb::Status::Final) => Status::Final,
            Ok(pb::Status::Amended) => Status::Amended,
            Ok(pb::Status::Voided) => Status::Voided,
            Ok(pb::Status::Unspecified) => return Err(BodyError::Missing { field: "status" }),
            Err(_) => {
                return Err(BodyError::invalid(
                    "status",
                    format!("unknown status {}", b.status),
                ));
            }
        };
        match (b.version, status) {
            (1, Status::Final) | (2.., Status::Amended | Status::Voided) => {}
            (1, _) => {
                return Err(BodyError::invalid(
                    "status",
                    "version 1 of a result must be FINAL",
                ));
            }
            (_, _) => {
                return Err(BodyError::invalid(
                    "status",
                    "a version after the first must be AMENDED or VOIDED",
                ));
            }
        }
        let status_reason = text(
            "status_reason",
            &b.status_reason,
            status != Status::Final,
            1024,
            true,
        )?;
        Ok(Self {
            id,
            version: b.version,
            publisher,
            patient,
            item,
            category,
            performed_at: UnixMillis(b.performed_at_ms),
            reported_at: UnixMillis(b.reported_at_ms),
            outcome,
            report,
            status,
            status_reason,
        })
    }
}

impl From<&Summary> for pb::SummaryBody {
    fn from(s: &Summary) -> Self {
        pb::SummaryBody {
            format: SUMMARY_FORMAT,
            summary_id: s.id.as_str().to_owned(),
            version: s.version,
            publisher: s.publisher.as_str().to_owned(),
            patient_pseudonym: s.patient.as_bytes().to_vec(),
            item: Some(pb::Item {
                system: s.item.system.clone(),
                code: s.item.code.clone(),
                display: s.item.display.clone(),
                local_code: s.item.local_code.clone(),
            }),
            category: pb::Category::from(s.category) as i32,
            performed_at_ms: s.performed_at.0,
            reported_at_ms: s.reported_at.0,
            result: Some(match &s.outcome {
                Outcome::Lab(l) => pb::summary_body::Result::Lab(pb::LabResult {
                    value: l.value.clone(),
                    unit: l.unit.clone(),
                    reference_range: l.reference_range.clone(),
                    flag: pb::AbnormalFlag::from(l.flag) as i32,
                    specimen: l.specimen.clone(),
                }),
                Outcome::Exam(e) => pb::summary_body::Result::Exam(pb::ExamResult {
                    modality: e.modality.clone(),
                    body_site: e.body_site.clone(),
                    impression: e.impression.clone(),
                    study_uid: e.study_uid.clone(),
                }),
            }),
            report: Some(pb::ReportRef {
                sha256: s.report.sha256.to_vec(),
                locator: s.report.locator.clone(),
                media_type: s.report.media_type.clone(),
            }),
            status: match s.status {
                Status::Final => pb::Status::Final,
                Status::Amended => pb::Status::Amended,
                Status::Voided => pb::Status::Voided,
            } as i32,
            status_reason: s.status_reason.clone(),
        }
    }
}

impl From<Category> for pb::Category {
    fn from(c: Category) -> Self {
        match c {
            Category::Lab => pb::Category::Lab,
            Category::Imaging => pb::Category::Imaging,
            Category::Electrophysiology => pb::Category::Electrophysiology,
            Category::NuclearMedicine => pb::Category::NuclearMedicine,
        }
    }
}

impl From<AbnormalFlag> for pb::AbnormalFlag {
    fn from(f: AbnormalFlag) -> Self {
        match f {
            AbnormalFlag::Unspecified => pb::AbnormalFlag::Unspecified,
            AbnormalFlag::Normal => pb::AbnormalFlag::Normal,
            AbnormalFlag::Low => pb::AbnormalFlag::Low,
            AbnormalFlag::High => pb::AbnormalFlag::High,
            AbnormalFlag::CriticalLow => pb::AbnormalFlag::CriticalLow,
            AbnormalFlag::CriticalHigh => pb::AbnormalFlag::CriticalHigh,
            AbnormalFlag::Abnormal => pb::AbnormalFlag::Abnormal,
        }
    }
}

impl From<pb::AbnormalFlag> for AbnormalFlag {
    fn from(f: pb::AbnormalFlag) -> Self {
        match f {
            pb::AbnormalFlag::Unspecified => AbnormalFlag::Unspecified,
            pb::AbnormalFlag::Normal => AbnormalFlag::Normal,
            pb::AbnormalFlag::Low => AbnormalFlag::Low,
            pb::AbnormalFlag::High => AbnormalFlag::High,
            pb::AbnormalFlag::CriticalLow => AbnormalFlag::CriticalLow,
            pb::AbnormalFlag::CriticalHigh => AbnormalFlag::CriticalHigh,
            pb::AbnormalFlag::Abnormal => AbnormalFlag::Abnormal,
        }
    }
}

impl Category {
    /// Lower-case name used in files and tables: lab, imaging, electrophysiology, nuclear-medicine.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lab => "lab",
            Self::Imaging => "imaging",
            Self::Electrophysiology => "electrophysiology",
            Self::NuclearMedicine => "nuclear-medicine",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Lab,
            Self::Imaging,
            Self::Electrophysiology,
            Self::NuclearMedicine,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Final => "final",
            Self::Amended => "amended",
            Self::Voided => "voided",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Final, Self::Amended, Self::Voided]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid lab summary for tests.
    pub(crate) fn sample() -> Summary {
        Summary {
            id: SummaryId::parse("LAB-20261120-0001").unwrap(),
            version: 1,
            publisher: InstitutionId::parse("shx-prov-people").unwrap(),
            patient: Pseudonym::from_bytes([7; 32]),
            item: Item {
                system: "http://loinc.org".into(),
                code: "718-7".into(),
                display: "血红蛋白 Hemoglobin".into(),
                local_code: "HGB".into(),
            },
            category: Category::Lab,
            performed_at: UnixMillis(1_763_600_000_000),
            reported_at: UnixMillis(1_763_603_600_000),
            outcome: Outcome::Lab(LabResult {
                value: "132".into(),
                unit: "g/L".into(),
                reference_range: "130-175".into(),
                flag: AbnormalFlag::Normal,
                specimen: "whole blood".into(),
            }),
            report: ReportRef {
                sha256: [9; 32],
                locator: "huren-report:shx-prov-people/LAB-20261120-0001".into(),
                media_type: "application/pdf".into(),
            },
            status: Status::Final,
            status_reason: String::new(),
        }
    }

    fn body_of(s: &Summary) -> pb::SummaryBody {
        pb::SummaryBody::from(s)
    }

    /// A version keeps its result's patient, and nothing follows a void.
    #[test]
    fn succession_keeps_the_patient_and_the_void() {
        let first = sample();
        let mut amended = sample();
        amended.version = 2;
        amended.status = Status::Amended;
        amended.status_reason = "corrected value".into();
        assert_eq!(amended.may_follow(&first), Ok(()));

        let mut moved = amended.clone();
        moved.patient = Pseudonym::from_bytes([8; 32]);
        assert_eq!(
            moved.may_follow(&first),
            Err(SuccessionError::PatientChanged)
        );

        let mut voided = amended.clone();
        voided.status = Status::Voided;
        let mut revived = sample();
        revived.version = 3;
        revived.status = Status::Amended;
        assert_eq!(
            revived.may_follow(&voided),
            Err(SuccessionError::AfterVoid { voided_in: 2 })
        );
        // A second void of a voided result is refused too: the first one stands.
        let mut voided_again = revived.clone();
        voided_again.status = Status::Voided;
        assert!(voided_again.may_follow(&voided).is_err());
    }

    #[test]
    fn utc_offsets_parse_as_written() {
        assert_eq!(parse_utc_offset("+08:00"), Some(8 * 3600));
        assert_eq!(parse_utc_offset("-05:30"), Some(-(5 * 3600 + 1800)));
        assert_eq!(parse_utc_offset("+00:00"), Some(0));
        for bad in [
            "8", "+8:00", "08:00", "+08:60", "+24:00", "+08-00", "+0８:00", "Z", "",
        ] {
            assert_eq!(parse_utc_offset(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trip_through_bytes() {
        let s = sample();
        let bytes = s.to_body_bytes();
        assert_eq!(Summary::from_body_bytes(&bytes).unwrap(), s);
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        let mut bytes = sample().to_body_bytes();
        // Field 99, varint 1: an unknown field appended to an otherwise valid body.
        bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
        assert_eq!(
            Summary::from_body_bytes(&bytes),
            Err(BodyError::NotCanonical)
        );
    }

    #[test]
    fn garbage_and_oversized_bodies_are_refused() {
        assert!(matches!(
            Summary::from_body_bytes(&[0xff, 0xff, 0xff]),
            Err(BodyError::Undecodable(_))
        ));
        assert_eq!(
            Summary::from_body_bytes(&vec![0; MAX_BODY_BYTES + 1]),
            Err(BodyError::TooLarge(MAX_BODY_BYTES + 1))
        );
    }

    /// Each case breaks one rule and names the field the error must mention.
    #[test]
    fn validation_names_the_field() {
        type Edit = fn(&mut pb::SummaryBody);
        let cases: &[(&str, Edit)] = &[
            ("format", |b| b.format = 2),
            ("summary_id", |b| b.summary_id = "has space".into()),
            ("summary_id", |b| b.summary_id.clear()),
            ("version", |b| b.version = 0),
            ("publisher", |b| b.publisher = "bad/id".into()),
            ("patient_pseudonym", |b| b.patient_pseudonym = vec![1; 16]),
            ("item", |b| b.item = None),
            ("item.code", |b| b.item.as_mut().unwrap().code.clear()),
            ("item.system", |b| {
                b.item.as_mut().unwrap().system = "a b".into()
            }),
            ("category", |b| b.category = 0),
            ("category", |b| b.category = 42),
            ("performed_at_ms", |b| b.performed_at_ms = 0),
            ("performed_at_ms", |b| b.performed_at_ms = i64::MAX),
            ("reported_at_ms", |b| b.reported_at_ms = MAX_TIME_MS + 1),
            ("reported_at_ms", |b| {
                b.reported_at_ms = b.performed_at_ms - 1
            }),
            ("result", |b| b.result = None),
            ("result", |b| b.category = pb::Category::Imaging as i32),
            ("lab.value", |b| {
                if let Some(pb::summary_body::Result::Lab(l)) = &mut b.result {
                    l.value.clear()
                }
            }),
            ("lab.flag", |b| {
                if let Some(pb::summary_body::Result::Lab(l)) = &mut b.result {
                    l.flag = 99
                }
            }),
            ("item.display", |b| {
                b.item.as_mut().unwrap().display = "a\u{7}b".into()
            }),
            ("item.display", |b| {
                b.item.as_mut().unwrap().display = " ".into()
            }),
            ("report", |b| b.report = None),
            ("report.sha256", |b| {
                b.report.as_mut().unwrap().sha256 = vec![1; 31]
            }),
            ("report.locator", |b| {
                b.report.as_mut().unwrap().locator.clear()
            }),
            ("status", |b| b.status = 0),
            ("status", |b| b.status = pb::Status::Voided as i32),
            ("status", |b| b.version = 2),
            ("status_reason", |b| {
                b.version = 2;
                b.status = pb::Status::Amended as i32;
            }),
        ];
        for (field, edit) in cases {
            let mut body = body_of(&sample());
            edit(&mut body);
            let err = Summary::try_from(body).expect_err(field);
            let msg = err.to_string();
            assert!(msg.contains(field), "expected {field:?} in {msg:?}");
        }
    }

    #[test]
    fn amendment_with_reason_is_valid() {
        let mut s = sample();
        s.version = 2;
        s.status = Status::Amended;
        s.status_reason = "unit corrected".into();
        assert_eq!(Summary::from_body_bytes(&s.to_body_bytes()).unwrap(), s);
    }

    #[test]
    fn exam_summary_is_valid() {
        let mut s = sample();
        s.category = Category::Imaging;
        s.outcome = Outcome::Exam(ExamResult {
            modality: "CT".into(),
            body_site: "胸部 chest".into(),
            impression: "双肺未见明显异常。\nNo acute findings.".into(),
            study_uid: "1.2.840.113619.2.55.3.604688119".into(),
        });
        assert_eq!(Summary::from_body_bytes(&s.to_body_bytes()).unwrap(), s);
    }
}
