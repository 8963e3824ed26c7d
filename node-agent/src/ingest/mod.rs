//! Ingestion: files from the hospital's interface engine (HL7 v2 ORU^R01 or FHIR R4 JSON)
//! become signed summaries queued in the agent's store. Formats and folders are described in
//! node-agent/INBOX.md.
//!
//! - [`hl7`]: the ER7 reader (framing, character sets, delimiters, escapes).
//! - [`oru`]: ORU^R01 to results; [`fhir`]: FHIR R4 to results.
//! - [`Ingestor`]: results to summaries (mapping, validation, versions), signing and queueing.
//! - [`inbox`]: the watched folder and its `done/` and `rejected/` folders.
//!
//! A file is read in units that are accepted or rejected whole: each HL7 message, or each FHIR
//! resource with what it refers to. A file that is not whole yet ([`incomplete`]) is not read. A unit is queued in one store transaction and flushed before its file leaves the
//! inbox, so a crash at any point loses nothing; reading a file again queues nothing twice (an
//! unchanged result is recognised by its content digest).
//!
//! Invariant: a patient id is read here, pseudonymised in [`crate::draft`], and never logged or
//! written anywhere (reasons name segments, fields and codes, never values from PID or Patient).

pub mod fhir;
pub mod hl7;
pub mod inbox;
pub mod oru;

use std::collections::HashMap;
use std::sync::Arc;

use huren_core::identity::InstitutionId;
use huren_core::pseudonym::{Pseudonym, PseudonymKey};
use huren_core::signing::{SummarySigner, sha256};
use huren_core::summary::{ReportRef, Status, Summary, SummaryId};

use crate::draft::ResultDraft;
use crate::mapping::Mapping;
use crate::store::{NewResult, ReportBytes, ResultState, Store, StoreError};

pub use hl7::CharsetSetting;

/// Reading settings from the agent configuration (`[inbox]`).
#[derive(Clone, Copy, Debug)]
pub struct IngestSettings {
    /// Offset of times that carry none (HL7 TS without zone, FHIR dates).
    pub default_offset: time::UtcOffset,
    pub charset: CharsetSetting,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            default_offset: time::UtcOffset::from_whole_seconds(8 * 3600)
                .unwrap_or(time::UtcOffset::UTC),
            charset: CharsetSetting::Auto,
        }
    }
}

/// Summary fields as the source names them, for reasons a person at the hospital can act on:
/// (field in the summary, HL7 v2, FHIR R4).
const SOURCE_FIELDS: &[(&str, &str, &str)] = &[
    (
        "performed_at_ms",
        "OBX-14 (date/time of the observation), else OBR-7 (observation date/time)",
        "effectiveDateTime (ImagingStudy: started)",
    ),
    (
        "reported_at_ms",
        "OBR-22 (results report/status change date/time), else OBX-19, else MSH-7",
        "issued",
    ),
    (
        "lab.value",
        "OBX-5 (observation value)",
        "Observation.value[x]",
    ),
    (
        "lab.unit",
        "OBX-6 (units)",
        "Observation.valueQuantity.unit",
    ),
    (
        "lab.reference_range",
        "OBX-7 (reference range)",
        "Observation.referenceRange",
    ),
    (
        "lab.flag",
        "OBX-8 (abnormal flags)",
        "Observation.interpretation",
    ),
    (
        "lab.specimen",
        "SPM-4 (specimen type), else OBR-15",
        "Observation.specimen",
    ),
    (
        "exam.impression",
        "the impression OBX-5 (impression_codes)",
        "DiagnosticReport.conclusion",
    ),
    (
        "exam.study_uid",
        "ZDS-1 (Study Instance UID), else the OBX-5 of a study_uid_codes OBX",
        "ImagingStudy.identifier (urn:dicom:uid)",
    ),
    (
        "exam.modality",
        "the mapping's modality of the OBR-4 item",
        "ImagingStudy.modality",
    ),
    (
        "exam.body_site",
        "the mapping's body_site of the OBR-4 item",
        "ImagingStudy.series.bodySite",
    ),
    (
        "summary_id",
        "the result id made of OBR-3 (filler order number) and OBX-3 (observation identifier)",
        "identifier",
    ),
    (
        "report.media_type",
        "OBX-5 (ED attachment) type",
        "DiagnosticReport.presentedForm.contentType",
    ),
    (
        "report.locator",
        "OBX-5 (ED attachment)",
        "DiagnosticReport.presentedForm",
    ),
    (
        "status_reason",
        "OBX-11 (observation result status)",
        "status",
    ),
];

/// A reason from the summary checks with its field named as the source names it
/// (`field reported_at_ms: …` becomes `OBR-22 (…), else OBX-19, else MSH-7: …`).
pub fn source_names(kind: FileKind, reason: &str) -> String {
    let mut out = reason.to_owned();
    for (field, hl7, fhir) in SOURCE_FIELDS {
        let name = match kind {
            FileKind::Hl7 => hl7,
            FileKind::Fhir => fhir,
        };
        out = out
            .replace(&format!("field {field}:"), &format!("{name}:"))
            .replace(
                &format!("field {field} is missing"),
                &format!("{name} is missing"),
            );
    }
    out
}

/// The checks the hub makes (and [`Ingestor`] makes before signing), run on the findings of a
/// unit that is refused anyway, so that its reasons list every problem at once rather than
/// one stage after the other.
pub(crate) fn check_findings(findings: &[Finding], kind: FileKind, errors: &mut Vec<String>) {
    let Ok(probe) = InstitutionId::parse("probe") else {
        return;
    };
    let key = PseudonymKey::new([0; 32]);
    // The patient was checked when read; a stand-in keeps this to the summary's own checks
    // (whatever id types the agent's real key accepts).
    let stand_in = huren_core::pseudonym::PatientId::new("passport", "E00000000").ok();
    for f in findings {
        let mut draft = f.draft.clone();
        if let Some(p) = &stand_in {
            draft.patient = p.clone();
        }
        if let Err(e) = draft.into_summary(&probe, &key) {
            errors.push(format!("{}: {}", f.label, source_names(kind, &e)));
        }
    }
}

/// A unit's reasons, each once: the same problem at several places (`<where>: <what>`) becomes
/// one line naming the places (`OBR 1, segment 5 (OBX "HGB"); OBR 1, segment 7 (OBX "PLT"):
/// <what>`), in the order first met.
pub fn merge_reasons(reasons: Vec<String>) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut places: HashMap<String, Vec<String>> = HashMap::new();
    for r in reasons {
        let (place, what) = match r.split_once(": ") {
            Some((p, w)) => (Some(p.to_owned()), w.to_owned()),
            None => (None, r),
        };
        let entry = places.entry(what.clone()).or_insert_with(|| {
            order.push(what.clone());
            Vec::new()
        });
        if let Some(p) = place
            && !entry.contains(&p)
        {
            entry.push(p);
        }
    }
    order
        .into_iter()
        .map(|what| match places.get(&what).map(Vec::as_slice) {
            None | Some([]) => what,
            Some(p) if p.len() > 6 => {
                format!("{} and {} more: {what}", p[..5].join("; "), p.len() - 5)
            }
            Some(p) => format!("{}: {what}", p.join("; ")),
        })
        .collect()
}

/// What the source says about a result's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    Final,
    /// Corrected or amended at the source: becomes a new version if it changed.
    Corrected,
    /// Deleted, withdrawn or entered in error: becomes a voided version.
    Void,
    /// Preliminary, pending, cancelled before a result…: not published (noted).
    NotFinal(String),
}

/// A full report found in a unit.
#[derive(Clone, Debug)]
pub struct Report {
    pub sha256: [u8; 32],
    /// Shared where several results have one report (the findings of one HL7 message).
    pub bytes: Arc<[u8]>,
    pub media_type: String,
}

/// One result found in a unit, before versioning.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Where it is in the unit, e.g. `OBR 1, segment 5 (OBX "HGB")`; never patient data.
    pub label: String,
    /// Where the result's id comes from, as the source names it, e.g.
    /// `OBR-3 (filler order number) "LAB-1"`; never patient data.
    pub id_from: String,
    pub status: SourceStatus,
    /// Index into [`Unit::reports`].
    pub report: usize,
    /// Version 1, final: the versioning below decides the rest.
    pub draft: ResultDraft,
}

/// A message or file read whole.
#[derive(Clone, Debug)]
pub struct Unit {
    pub label: String,
    pub findings: Vec<Finding>,
    pub reports: Vec<Report>,
    /// Results deliberately not published (ignored codes, preliminary results), for the log.
    pub skipped: Vec<String>,
}

/// A summary id component made from a source value: kept if it only uses the characters a
/// summary id allows, else the allowed characters plus a short hash (two different values never
/// become the same id).
pub fn summary_id_part(s: &str) -> String {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if !s.is_empty() && s.chars().all(ok) {
        return s.to_owned();
    }
    let kept: String = s.chars().filter(|&c| ok(c)).take(32).collect();
    let h = hex::encode(&sha256(s.as_bytes())[..4]);
    if kept.is_empty() {
        format!("x{h}")
    } else {
        format!("{kept}_{h}")
    }
}

/// The kind of a file, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Hl7,
    Fhir,
}

pub fn detect(bytes: &[u8]) -> Option<FileKind> {
    let b = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(bytes);
    let first = b.iter().position(|c| !c.is_ascii_whitespace())?;
    let b = &b[first..];
    // A segment id and a field separator: HL7 v2 (perhaps without its MSH, which the reader
    // then reports).
    let looks_like_segment = b.len() > 3
        && b[..3]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && b[3] == b'|';
    if b[0] == hl7::MLLP_START || looks_like_segment || b.starts_with(b"MSH") {
        Some(FileKind::Hl7)
    } else if b[0] == b'{' {
        Some(FileKind::Fhir)
    } else {
        None
    }
}

/// A unit of a file: its own bytes when the file holds several (to put a refused message
/// apart), else `None`; and the unit read, or the reasons it was refused.
pub type ParsedUnit = (Option<Vec<u8>>, Result<Unit, Vec<String>>);

/// A file's units, each read or refused.
pub struct ParsedFile {
    pub kind: Option<FileKind>,
    pub units: Vec<ParsedUnit>,
    /// Why the file is not whole yet (see [`incomplete`]); then `units` is empty.
    pub incomplete: Option<String>,
}

/// Why a file looks cut short or still being written (HL7 v2 framing, segment terminators,
/// batch counts; FHIR JSON that ends before its last value), or `None`. Such a file is never
/// read in part: the inbox holds it and tries again.
pub fn incomplete(bytes: &[u8]) -> Option<String> {
    match detect(bytes)? {
        FileKind::Hl7 => hl7::incomplete(bytes),
        FileKind::Fhir => match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(e) if e.is_eof() => Some(format!(
                "the JSON ends before its last value is closed (line {}, column {}): the file ends early",
                e.line(),
                e.column()
            )),
            _ => None,
        },
    }
}

/// Reads a file's bytes into units.
pub fn parse_file(bytes: &[u8], mapping: &Mapping, settings: &IngestSettings) -> ParsedFile {
    let kind = detect(bytes);
    if let Some(why) = incomplete(bytes) {
        return ParsedFile {
            kind,
            units: Vec::new(),
            incomplete: Some(why),
        };
    }
    let units = match kind {
        None => vec![(
            None,
            Err(vec![
                "the file is neither an HL7 v2 message (starting with MSH, or MLLP-framed) nor FHIR JSON"
                    .to_owned(),
            ]),
        )],
        Some(FileKind::Fhir) => fhir::read_fhir(bytes, mapping, settings)
            .into_iter()
            .map(|u| (None, u.map_err(merge_reasons)))
            .collect(),
        Some(FileKind::Hl7) => match hl7::Message::read_all(bytes, settings.charset) {
            Err(e) => vec![(None, Err(vec![e.to_string()]))],
            Ok(messages) => {
                let several = messages.len() > 1;
                messages
                    .into_iter()
                    .enumerate()
                    .map(|(i, (raw, parsed))| {
                        let unit = parsed
                            .map_err(|e| vec![e.to_string()])
                            .and_then(|m| oru::read_oru(&m, raw, mapping, settings))
                            .map_err(merge_reasons)
                            .map_err(|errs| {
                                if several {
                                    errs.into_iter()
                                        .map(|e| format!("message {} of the file: {e}", i + 1))
                                        .collect()
                                } else {
                                    errs
                                }
                            });
                        (several.then(|| raw.to_vec()), unit)
                    })
                    .collect()
            }
        },
    };
    ParsedFile {
        kind,
        units,
        incomplete: None,
    }
}

/// SHA-256 of a summary's clinical content: everything but version, status, reason and the
/// report reference. A result sent again unchanged has the same digest even if its message
/// (control id, send time) differs.
pub fn content_digest(s: &Summary) -> [u8; 32] {
    let mut c = s.clone();
    c.version = 1;
    c.status = Status::Final;
    c.status_reason.clear();
    c.report = ReportRef {
        sha256: [0; 32],
        locator: String::new(),
        media_type: String::new(),
    };
    sha256(&c.to_body_bytes())
}

/// What happens to one finding given what was queued before for its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Queue version `version` with this status and reason.
    Queue {
        version: u32,
        status: Status,
        reason: String,
    },
    /// Nothing new: the same content was queued before (or it is voided already).
    Duplicate,
    /// Nothing to do (e.g. a void of a result never published), with why.
    Skip(String),
    /// The finding may not become a new version of what was queued before; its unit is
    /// refused with this reason.
    Refuse(String),
}

/// Decides the version of a finding for `patient` (see INBOX.md, "Versions"). A new version
/// never changes the patient, and nothing follows a void (the hub refuses both too).
pub fn decide(
    prev: Option<&ResultState>,
    status: &SourceStatus,
    content: &[u8; 32],
    report: &[u8; 32],
    patient: &Pseudonym,
) -> Decision {
    let queue = |version, status, reason: &str| Decision::Queue {
        version,
        status,
        reason: reason.to_owned(),
    };
    match (prev, status) {
        (_, SourceStatus::NotFinal(why)) => Decision::Skip(format!("not final ({why})")),
        (Some(p), _) if p.patient.is_some_and(|was| was != *patient) => Decision::Refuse(
            "it was published for another patient, and a new version may not change the patient \
             (an order number reused for another patient?). To correct a result sent for the \
             wrong patient: send it again for the first patient marked deleted (OBX-11 D, FHIR \
             entered-in-error), then send the right one under a new order number"
                .into(),
        ),
        (Some(p), SourceStatus::Final | SourceStatus::Corrected) if p.voided => Decision::Refuse(
            "it was voided, and a voided result stays voided; send the result again under a \
             new order number"
                .into(),
        ),
        (None, SourceStatus::Final | SourceStatus::Corrected) => queue(1, Status::Final, ""),
        (None, SourceStatus::Void) => {
            Decision::Skip("voided at the source before it was ever published".into())
        }
        (Some(p), SourceStatus::Void) if p.voided => Decision::Duplicate,
        (Some(p), SourceStatus::Void) => queue(
            p.version + 1,
            Status::Voided,
            "结果作废 voided at the source (deleted, withdrawn or entered in error)",
        ),
        (Some(p), SourceStatus::Final) if !p.voided && p.content == *content => Decision::Duplicate,
        (Some(p), SourceStatus::Corrected)
            if !p.voided && p.content == *content && p.report_sha256 == *report =>
        {
            Decision::Duplicate
        }
        (Some(p), SourceStatus::Corrected) => queue(
            p.version + 1,
            Status::Amended,
            "结果更正 corrected at the source",
        ),
        (Some(p), SourceStatus::Final) => queue(
            p.version + 1,
            Status::Amended,
            "结果更正 sent again by the source with changed content",
        ),
    }
}

/// Why a file could not be ingested now (it stays in the inbox and is tried again).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing: {0}")]
    Sign(#[from] huren_core::signing::SignError),
}

/// A refused unit.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub unit: String,
    pub reasons: Vec<String>,
    /// The unit's own bytes when the file held several units.
    pub bytes: Option<Vec<u8>>,
}

/// What became of a file.
#[derive(Clone, Debug, Default)]
pub struct FileOutcome {
    /// Results queued (new, amended or voided versions).
    pub queued: usize,
    pub amended: usize,
    pub voided: usize,
    pub duplicates: usize,
    pub skipped: Vec<String>,
    pub rejected: Vec<Rejection>,
    /// Units in the file.
    pub units: usize,
    /// The file is not whole yet (cut short or still being written): nothing was read from it.
    pub incomplete: Option<String>,
    /// Entries the file's version overlay wrote or copied: grows with the results of the file,
    /// not with their square (checked by a test).
    pub overlay_work: usize,
    /// Stopped between two units (shutdown): the file is to be read again.
    pub interrupted: bool,
}

impl FileOutcome {
    /// The whole file was refused (its only unit, or every unit).
    pub fn wholly_rejected(&self) -> bool {
        self.units > 0 && self.rejected.len() == self.units
    }
}

/// Turns files into queued, signed summaries. One ingestor writes to a store at a time (the
/// daemon runs one; backfill runs alone), which makes "read the latest version, then queue the
/// next" safe.
pub struct Ingestor {
    institution: InstitutionId,
    signer: Arc<SummarySigner>,
    key: PseudonymKey,
    mapping: Mapping,
    settings: IngestSettings,
    store: Arc<Store>,
}

impl Ingestor {
    pub fn new(
        institution: InstitutionId,
        signer: Arc<SummarySigner>,
        key: PseudonymKey,
        mapping: Mapping,
        settings: IngestSettings,
        store: Arc<Store>,
    ) -> Self {
        Self {
            institution,
            signer,
            key,
            mapping,
            settings,
            store,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Reads a file's bytes and queues its results; `file_key` (backfill) is recorded in the
    /// same transaction. Does not flush: call `store().flush()` before the file is moved.
    pub fn ingest(&self, bytes: &[u8], file_key: Option<&str>) -> Result<FileOutcome, IngestError> {
        self.ingest_until(bytes, file_key, &|| false)
    }

    /// [`Ingestor::ingest`], stopping between two units once `stop()` says so (Ctrl-C in the
    /// middle of a big file): the outcome is then `interrupted`, the units read so far are
    /// queued, and the file is not marked done. Reading it again queues only what is left
    /// (the units already queued are recognised by their content).
    pub fn ingest_until(
        &self,
        bytes: &[u8],
        file_key: Option<&str>,
        stop: &dyn Fn() -> bool,
    ) -> Result<FileOutcome, IngestError> {
        let parsed = parse_file(bytes, &self.mapping, &self.settings);
        let kind = parsed.kind.unwrap_or(FileKind::Hl7);
        let mut outcome = FileOutcome {
            units: parsed.units.len(),
            incomplete: parsed.incomplete,
            ..Default::default()
        };
        if outcome.incomplete.is_some() {
            return Ok(outcome);
        }
        // Versions decided earlier in this file, not yet in the store.
        let mut overlay = Overlay::default();
        // Units prepared but not yet queued: written together, one transaction for every
        // QUEUE_BATCH results or so (the overlay knows their versions meanwhile).
        let (mut waiting, mut waiting_results): (Vec<Batch>, usize) = (Vec::new(), 0);
        for (raw, unit) in parsed.units {
            if stop() {
                outcome.interrupted = true;
                break;
            }
            let unit = match unit {
                Ok(u) => u,
                Err(reasons) => {
                    outcome.rejected.push(Rejection {
                        unit: "file".into(),
                        reasons,
                        bytes: raw,
                    });
                    continue;
                }
            };
            let label = unit.label.clone();
            match self.prepare(unit, &mut overlay, &mut outcome, kind)? {
                Ok(batch) => {
                    if !batch.items.is_empty() {
                        waiting_results += batch.items.len();
                        waiting.push(batch);
                    }
                    if waiting_results >= QUEUE_BATCH {
                        self.queue(&waiting)?;
                        waiting.clear();
                        waiting_results = 0;
                    }
                }
                Err(reasons) => outcome.rejected.push(Rejection {
                    unit: label,
                    reasons,
                    bytes: raw,
                }),
            }
        }
        // Everything prepared is queued, also when stopped half-way.
        self.queue(&waiting)?;
        outcome.overlay_work = overlay.work;
        // A file is recorded as done once read, unless all of it was refused (then it is read
        // again once the mapping is fixed); its refused units are written apart by the caller.
        if let Some(key) = file_key
            && !outcome.wholly_rejected()
            && !outcome.interrupted
        {
            self.store.mark_file(key)?;
        }
        Ok(outcome)
    }

    /// Queues the results of prepared units, in order, in one transaction.
    fn queue(&self, batches: &[Batch]) -> Result<(), IngestError> {
        let new: Vec<NewResult<'_>> = batches
            .iter()
            .flat_map(|b| {
                b.items.iter().map(|(s, env, state, report)| NewResult {
                    envelope: env,
                    summary_id: &s.id,
                    version: s.version,
                    state: state.clone(),
                    report: &b.reports[*report],
                })
            })
            .collect();
        if !new.is_empty() {
            self.store.enqueue(&new, None)?;
        }
        Ok(())
    }

    /// Validates every finding of a unit (all or nothing), decides versions and signs.
    fn prepare(
        &self,
        unit: Unit,
        overlay: &mut Overlay,
        outcome: &mut FileOutcome,
        kind: FileKind,
    ) -> Result<Result<Batch, Vec<String>>, IngestError> {
        let mut errors = Vec::new();
        let mut checked = Vec::new();
        for f in unit.findings {
            match f.draft.clone().into_summary(&self.institution, &self.key) {
                Ok(s) => checked.push((f, s)),
                Err(e) => errors.push(format!("{}: {}", f.label, source_names(kind, &e))),
            }
        }
        if !errors.is_empty() {
            return Ok(Err(merge_reasons(errors)));
        }
        let reports: Vec<ReportBytes> = unit
            .reports
            .into_iter()
            .map(|r| ReportBytes {
                sha256: r.sha256,
                media_type: r.media_type,
                bytes: r.bytes.to_vec(),
            })
            .collect();
        let mut items = Vec::new();
        let mut local_overlay = overlay.tentative();
        for (f, v1) in checked {
            let content = content_digest(&v1);
            let report_sha = reports[f.report].sha256;
            let prev = match local_overlay.get(overlay, &v1.id) {
                Some(s) => Some(s.clone()),
                None => self.store.result_state(&v1.id)?,
            };
            let decision = decide(prev.as_ref(), &f.status, &content, &report_sha, &v1.patient);
            let summary = match decision {
                Decision::Refuse(why) => {
                    errors.push(format!(
                        "{}: {} (result {}): {why}",
                        f.label, f.id_from, v1.id
                    ));
                    continue;
                }
                Decision::Duplicate => {
                    outcome.duplicates += 1;
                    continue;
                }
                Decision::Skip(why) => {
                    outcome.skipped.push(format!("{}: {why}", f.label));
                    continue;
                }
                Decision::Queue {
                    version: 1,
                    status: Status::Final,
                    ..
                } => v1,
                Decision::Queue {
                    version,
                    status,
                    reason,
                } => {
                    let mut draft = f.draft.clone();
                    draft.version = version;
                    draft.status = status;
                    draft.status_reason = reason;
                    match draft.into_summary(&self.institution, &self.key) {
                        Ok(s) => {
                            if status == Status::Voided {
                                outcome.voided += 1;
                            } else {
                                outcome.amended += 1;
                            }
                            s
                        }
                        Err(e) => {
                            errors.push(format!("{}: {}", f.label, source_names(kind, &e)));
                            continue;
                        }
                    }
                }
            };
            let state = ResultState {
                version: summary.version,
                content,
                report_sha256: report_sha,
                voided: summary.status == Status::Voided,
                patient: Some(summary.patient),
            };
            local_overlay.insert(summary.id.clone(), state.clone());
            let envelope = self.signer.sign(&summary)?;
            items.push((summary, envelope, state, f.report));
        }
        if !errors.is_empty() {
            return Ok(Err(merge_reasons(errors)));
        }
        outcome.queued += items.len();
        outcome.skipped.extend(unit.skipped);
        overlay.commit(local_overlay);
        Ok(Ok(Batch { items, reports }))
    }
}

/// Versions decided earlier in the file being read, not yet in the store. A unit's decisions
/// are tentative until the whole unit is accepted: they are kept apart ([`Tentative`]) and
/// merged at once, so reading a file costs the same per result however many units came before
/// (cloning the overlay per unit made a batch file of n messages cost n²).
#[derive(Default)]
pub(crate) struct Overlay {
    states: HashMap<SummaryId, ResultState>,
    /// Entries written or copied so far: the work this overlay did (for tests).
    work: usize,
}

/// The decisions of the unit being prepared.
pub(crate) struct Tentative {
    states: HashMap<SummaryId, ResultState>,
}

impl Tentative {
    fn get<'a>(&'a self, base: &'a Overlay, id: &SummaryId) -> Option<&'a ResultState> {
        self.states.get(id).or_else(|| base.states.get(id))
    }

    fn insert(&mut self, id: SummaryId, state: ResultState) {
        self.states.insert(id, state);
    }
}

impl Overlay {
    fn tentative(&mut self) -> Tentative {
        Tentative {
            states: HashMap::new(),
        }
    }

    fn commit(&mut self, t: Tentative) {
        self.work += t.states.len();
        self.states.extend(t.states);
    }
}

/// Results queued per transaction while a file is read (several units each): one
/// transaction per unit cost about a quarter of the ingest's time.
const QUEUE_BATCH: usize = 256;

struct Batch {
    items: Vec<(
        Summary,
        huren_core::signing::SignedEnvelope,
        ResultState,
        usize,
    )>,
    reports: Vec<ReportBytes>,
}

#[cfg(test)]
mod tests;
