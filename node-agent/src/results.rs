//! Our JSON results format, `huren-results/1`: what a hospital's export script writes for
//! `huren-agent publish`. Documented in node-agent/RESULTS-FORMAT.md; an example is in
//! node-agent/examples/results.json.
//!
//! The patient's real id is read here, pseudonymised at once, and never stored or sent.

use serde::Deserialize;
use std::path::Path;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use huren_core::identity::InstitutionId;
use huren_core::pseudonym::{PatientId, PseudonymKey};
use huren_core::signing::sha256;
use huren_core::summary::{
    AbnormalFlag, Category, ExamResult, Item, LabResult, Outcome, Status, Summary, SummaryId,
    UnixMillis,
};

use crate::draft::ResultDraft;

/// The value of the `format` field this code reads.
pub const RESULTS_FORMAT: &str = "huren-results/1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsFile {
    pub format: String,
    pub results: Vec<ResultEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultEntry {
    pub id: String,
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default = "final_status")]
    pub status: String,
    #[serde(default)]
    pub status_reason: String,
    pub patient: PatientEntry,
    pub item: ItemEntry,
    pub category: String,
    pub performed_at: String,
    pub reported_at: String,
    #[serde(default)]
    pub lab: Option<LabEntry>,
    #[serde(default)]
    pub exam: Option<ExamEntry>,
    pub report: ReportEntry,
}

fn one() -> u32 {
    1
}

fn final_status() -> String {
    "final".into()
}

/// The patient's id as the hospital knows it. Names are deliberately not part of the format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientEntry {
    pub id_type: String,
    pub id: String,
}

impl std::fmt::Debug for PatientEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PatientEntry({}, <redacted>)", self.id_type)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemEntry {
    pub system: String,
    pub code: String,
    #[serde(default)]
    pub display: String,
    #[serde(default)]
    pub local_code: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabEntry {
    pub value: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub reference_range: String,
    #[serde(default)]
    pub flag: String,
    #[serde(default)]
    pub specimen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExamEntry {
    pub modality: String,
    #[serde(default)]
    pub body_site: String,
    #[serde(default)]
    pub impression: String,
    #[serde(default)]
    pub study_uid: String,
}

/// The full report: a file next to the results file (its SHA-256 is computed here), or a digest
/// the export already computed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportEntry {
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub locator: Option<String>,
    #[serde(default)]
    pub media_type: String,
}

/// Why a results file or one of its entries was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid results file: {message}")]
    Json {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{path}: format is {found:?}; this agent reads {RESULTS_FORMAT:?}")]
    Format {
        path: std::path::PathBuf,
        found: String,
    },
    #[error("{path}: {} of {total} results are invalid, nothing was published:\n{}", errors.len(), errors.join("\n"))]
    Entries {
        path: std::path::PathBuf,
        total: usize,
        errors: Vec<String>,
    },
}

/// Reads a results file and turns every entry into a summary of `publisher`. All or nothing:
/// if any entry is invalid, the error lists every invalid entry and no summary is returned.
pub fn load_results(
    path: &Path,
    publisher: &InstitutionId,
    key: &PseudonymKey,
) -> Result<Vec<Summary>, ResultsError> {
    let text = std::fs::read_to_string(path).map_err(|source| ResultsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_results(&text, path, publisher, key, &|file| {
        let path = base.join(file);
        std::fs::read(&path).map_err(|err| format!("report.file {}: {err}", path.display()))
    })
}

/// Reads the text of a results file (`path` only names it in errors), with `read_report`
/// giving the bytes of a report named by `report.file`: what [`load_results`] does once the
/// file is read, and what the fuzz target `results` runs.
pub fn parse_results(
    text: &str,
    path: &Path,
    publisher: &InstitutionId,
    key: &PseudonymKey,
    read_report: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Vec<Summary>, ResultsError> {
    let file: ResultsFile = serde_json::from_str(text).map_err(|e| ResultsError::Json {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if file.format != RESULTS_FORMAT {
        return Err(ResultsError::Format {
            path: path.to_owned(),
            found: file.format,
        });
    }
    let total = file.results.len();
    let mut summaries = Vec::with_capacity(total);
    let mut errors = Vec::new();
    for (i, entry) in file.results.into_iter().enumerate() {
        let label = format!("results[{i}] (id {:?})", entry.id);
        match entry_to_summary(entry, publisher, key, read_report) {
            Ok(s) => summaries.push(s),
            Err(e) => errors.push(format!("  {label}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(ResultsError::Entries {
            path: path.to_owned(),
            total,
            errors,
        });
    }
    Ok(summaries)
}

/// Parses an RFC 3339 time with offset, e.g. `2026-11-20T08:30:00+08:00`.
pub fn parse_time(field: &str, value: &str) -> Result<UnixMillis, String> {
    let t = OffsetDateTime::parse(value, &Rfc3339).map_err(|e| {
        format!(
            "{field}: {value:?} is not an RFC 3339 time such as 2026-11-20T08:30:00+08:00 ({e})"
        )
    })?;
    Ok(UnixMillis(
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| format!("{field}: out of range"))?,
    ))
}

fn entry_to_summary(
    e: ResultEntry,
    publisher: &InstitutionId,
    key: &PseudonymKey,
    read_report: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Summary, String> {
    SummaryId::parse(&e.id).map_err(|e| e.to_string())?;
    let patient = PatientId::new(&e.patient.id_type, &e.patient.id)
        .map_err(|err| format!("patient: {err}"))?;
    // The type must be one this agent accepts (checked again where it is pseudonymised).
    key.pseudonymise_checked(&patient)
        .map_err(|err| format!("patient.id_type: {err}"))?;
    let category = Category::from_name(&e.category).ok_or_else(|| {
        format!(
            "category {:?} is not one of lab, imaging, electrophysiology, nuclear-medicine",
            e.category
        )
    })?;
    let status = Status::from_name(&e.status)
        .ok_or_else(|| format!("status {:?} is not one of final, amended, voided", e.status))?;
    let outcome = match (category, e.lab, e.exam) {
        (Category::Lab, Some(l), None) => Outcome::Lab(LabResult {
            flag: AbnormalFlag::from_hl7_code(l.flag.trim()).ok_or_else(|| {
                format!(
                    "lab.flag {:?} is not one of N, L, H, LL, HH, A or empty",
                    l.flag
                )
            })?,
            value: l.value,
            unit: l.unit,
            reference_range: l.reference_range,
            specimen: l.specimen,
        }),
        (Category::Lab, _, _) => {
            return Err("category lab needs a \"lab\" object and no \"exam\"".into());
        }
        (_, None, Some(x)) => Outcome::Exam(ExamResult {
            modality: x.modality,
            body_site: x.body_site,
            impression: x.impression,
            study_uid: x.study_uid,
        }),
        (c, _, _) => {
            return Err(format!(
                "category {} needs an \"exam\" object and no \"lab\"",
                c.name()
            ));
        }
    };
    let sha256 = match (&e.report.file, &e.report.sha256) {
        (Some(file), None) => sha256(&read_report(file)?),
        (None, Some(hex_digest)) => {
            let mut d = [0u8; 32];
            hex::decode_to_slice(hex_digest.trim(), &mut d)
                .map_err(|_| "report.sha256 must be 64 hex characters".to_string())?;
            d
        }
        _ => return Err("report needs exactly one of \"file\" and \"sha256\"".into()),
    };
    ResultDraft {
        id: e.id,
        version: e.version,
        status,
        status_reason: e.status_reason,
        patient,
        item: Item {
            system: e.item.system,
            code: e.item.code,
            display: e.item.display,
            local_code: e.item.local_code,
        },
        category,
        performed_at: parse_time("performed_at", &e.performed_at)?,
        reported_at: parse_time("reported_at", &e.reported_at)?,
        outcome,
        report_sha256: sha256,
        report_locator: e.report.locator,
        report_media_type: e.report.media_type,
    }
    .into_summary(publisher, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher() -> InstitutionId {
        InstitutionId::parse("shx-prov-people").unwrap()
    }

    fn key() -> PseudonymKey {
        PseudonymKey::new([5; 32])
    }

    fn example() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/results.json")
    }

    #[test]
    fn example_file_loads() {
        let summaries = load_results(&example(), &publisher(), &key()).unwrap();
        assert_eq!(summaries.len(), 7);
        // The same person in several entries has one pseudonym; another person another.
        assert_eq!(summaries[0].patient, summaries[4].patient);
        assert_ne!(summaries[0].patient, summaries[5].patient);
        // A report given as a file is hashed here.
        let report = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/reports/LAB-20261118-00731.txt"),
        )
        .unwrap();
        assert_eq!(summaries[0].report.sha256, sha256(&report));
        assert_eq!(
            summaries[0].report.locator,
            "huren-report:shx-prov-people/LAB-20261118-00731-HGB/1"
        );
        // 2026-11-18T07:45:00+08:00
        assert_eq!(summaries[0].performed_at, UnixMillis(1_794_959_100_000));
        assert!(matches!(summaries[4].outcome, Outcome::Exam(_)));
    }

    fn write(dir: &Path, json: &str) -> std::path::PathBuf {
        let p = dir.join("r.json");
        std::fs::write(&p, json).unwrap();
        p
    }

    const GOOD: &str = r#"{"id":"A1","patient":{"id_type":"cn-ric","id":"11010519491231002X"},
        "item":{"system":"http://loinc.org","code":"718-7"},"category":"lab",
        "performed_at":"2026-11-18T07:45:00+08:00","reported_at":"2026-11-18T09:00:00+08:00",
        "lab":{"value":"130","flag":"N"},"report":{"sha256":"0000000000000000000000000000000000000000000000000000000000000000"}}"#;

    #[test]
    fn every_invalid_entry_is_listed_and_nothing_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let bad_time = GOOD.replace("2026-11-18T07:45:00+08:00", "18/11/2026 07:45");
        let bad_id = GOOD.replace("11010519491231002X", "110105194912310021");
        let json =
            format!(r#"{{"format":"huren-results/1","results":[{GOOD},{bad_time},{bad_id}]}}"#);
        let err = load_results(&write(dir.path(), &json), &publisher(), &key())
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 of 3 results are invalid"), "{err}");
        assert!(
            err.contains("results[1]") && err.contains("performed_at"),
            "{err}"
        );
        assert!(
            err.contains("results[2]") && err.contains("check character"),
            "{err}"
        );
        // The patient's id is never repeated in an error.
        assert!(!err.contains("110105194912310021"), "{err}");
    }

    #[test]
    fn a_patient_name_is_not_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let with_name = GOOD.replace(
            r#""id":"11010519491231002X""#,
            r#""id":"11010519491231002X","name":"张三""#,
        );
        let json = format!(r#"{{"format":"huren-results/1","results":[{with_name}]}}"#);
        let err = load_results(&write(dir.path(), &json), &publisher(), &key())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `name`"), "{err}");
    }

    #[test]
    fn wrong_format_and_mismatched_result_kind_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(r#"{{"format":"huren-results/2","results":[{GOOD}]}}"#);
        let err = load_results(&write(dir.path(), &json), &publisher(), &key()).unwrap_err();
        assert!(matches!(err, ResultsError::Format { .. }));

        let imaging = GOOD.replace(r#""category":"lab""#, r#""category":"imaging""#);
        let json = format!(r#"{{"format":"huren-results/1","results":[{imaging}]}}"#);
        let err = load_results(&write(dir.path(), &json), &publisher(), &key())
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs an \"exam\" object"), "{err}");
    }
}
