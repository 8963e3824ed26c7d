//! FHIR R4 JSON to results. A file holds one resource: a DiagnosticReport, an Observation, an
//! ImagingStudy, or a Bundle of them (with the Patient and Specimen resources they refer to).
//! We read the few elements we need from `serde_json::Value`; a full FHIR model would be far
//! larger than this reader.
//!
//! - **DiagnosticReport** whose `code` maps to an exam item: one exam result (id from
//!   `identifier[0].value`, else `id`; impression = `conclusion`; Study Instance UID, modality
//!   and body site from the ImagingStudy in `imagingStudy`, else the mapping).
//! - **DiagnosticReport** otherwise: one lab result per Observation in `result` (contained
//!   `#id`, or in the Bundle by `fullUrl` or `Type/id`; `hasMember` panels are followed). Id =
//!   `<report id>-<local code>`.
//! - **ImagingStudy** that no DiagnosticReport refers to: one exam result (performed = reported
//!   = `started`; an exam's recognisable part is its images).
//! - **Observation** that no DiagnosticReport refers to: one lab result.
//! - **Codes**: each coding's `code` is looked up as a local code, then `(system, code)` as a
//!   catalogue code. **Patient**: `subject` (contained, in the Bundle, or a logical
//!   `identifier`), its `identifier`s matched by the mapping's `[[patient_id]]` rules
//!   (`type.coding.code`, `system`).
//! - **Status**: final → final; amended, corrected, appended → amendment; entered-in-error,
//!   cancelled → void; registered, preliminary, partial, unknown → not published (noted).
//! - **Full report**: the report's first `presentedForm` with inline `data` (e.g. a PDF); else
//!   the file itself when it is one resource, and for a Bundle a `collection` Bundle of the
//!   result's own resources (the report or result, what it refers to, its patient), never the
//!   whole file: a Bundle may hold other patients' results (media type
//!   `application/fhir+json`).

use base64::Engine;
use serde_json::Value;

use huren_core::pseudonym::PatientId;
use huren_core::signing::sha256;
use huren_core::summary::{
    AbnormalFlag, Category, ExamResult, LabResult, Outcome, Status, UnixMillis,
};

use super::{Finding, IngestSettings, Report, SourceStatus, Unit, summary_id_part};
use crate::draft::ResultDraft;
use crate::mapping::{Lookup, MappedItem, Mapping};

pub const FHIR_MEDIA_TYPE: &str = "application/fhir+json";

/// Deepest `hasMember` nesting followed.
const MAX_PANEL_DEPTH: usize = 4;

/// The resources of one file, for resolving references.
struct Resources<'a> {
    /// (fullUrl, `Type/id`, resource) of each Bundle entry, or the single resource.
    entries: Vec<(String, String, &'a Value)>,
}

impl<'a> Resources<'a> {
    /// Resolves `reference` made from `from` (contained `#id` first).
    fn resolve(&self, from: &'a Value, reference: &str) -> Option<&'a Value> {
        if let Some(id) = reference.strip_prefix('#') {
            return from
                .get("contained")?
                .as_array()?
                .iter()
                .find(|r| r.get("id").and_then(Value::as_str) == Some(id));
        }
        self.entries
            .iter()
            .find(|(full, typed, _)| {
                full == reference
                    || typed == reference
                    || (!typed.is_empty() && full.ends_with(&format!("/{reference}")))
            })
            .map(|(_, _, r)| *r)
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn type_of(v: &Value) -> &str {
    s(v, "resourceType")
}

/// Whether a full report is a FHIR Bundle that holds more than one patient: several Patient
/// resources, or subjects named by different logical identifiers. Results read from a Bundle
/// before 2026-12-04 had the whole file as their report; the repository refuses to serve such
/// a report to other members (it would show them other patients' results).
pub fn holds_several_patients(media_type: &str, bytes: &[u8]) -> bool {
    if media_type != FHIR_MEDIA_TYPE {
        return false;
    }
    let Ok(root) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    if type_of(&root) != "Bundle" {
        return false;
    }
    let resources: Vec<&Value> = root
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().filter_map(|e| e.get("resource")).collect())
        .unwrap_or_default();
    let patients = resources.iter().filter(|r| type_of(r) == "Patient").count();
    // Subjects named by a logical identifier (no Patient resource): distinct identifiers are
    // distinct patients. References are not compared: one patient may be referred to by its
    // fullUrl in one resource and by Patient/id in another.
    let mut identified: Vec<String> = resources
        .iter()
        .filter_map(|r| r.get("subject")?.get("identifier"))
        .map(|id| format!("{}|{}", s(id, "system"), s(id, "value")))
        .collect();
    identified.sort();
    identified.dedup();
    patients > 1 || identified.len() > 1
}

/// Reads a FHIR JSON file: one unit per DiagnosticReport (with the Observations and
/// ImagingStudies it refers to) and per Observation or ImagingStudy no report refers to, each
/// accepted or refused on its own, so one resource the agent cannot read does not hold back
/// the others of a Bundle. Errors name the resource (`DiagnosticReport/<id>`) and the element,
/// list every problem found and never quote a patient's id.
pub fn read_fhir(
    bytes: &[u8],
    mapping: &Mapping,
    settings: &IngestSettings,
) -> Vec<Result<Unit, Vec<String>>> {
    match read_fhir_file(bytes, mapping, settings) {
        Ok(units) => units,
        Err(errors) => vec![Err(errors)],
    }
}

/// The name of a resource in a reason: `Type/id`, and where it is in a Bundle.
fn resource_label(r: &Value, entry: Option<usize>) -> String {
    let id = match s(r, "id") {
        "" => "(no id)".to_owned(),
        id => id.to_owned(),
    };
    match entry {
        Some(i) => format!("{}/{id} (Bundle.entry[{i}])", type_of(r)),
        None => format!("{}/{id}", type_of(r)),
    }
}

fn read_fhir_file(
    bytes: &[u8],
    mapping: &Mapping,
    settings: &IngestSettings,
) -> Result<Vec<Result<Unit, Vec<String>>>, Vec<String>> {
    let root: Value =
        serde_json::from_slice(bytes).map_err(|e| vec![format!("not valid JSON: {e}")])?;
    let in_bundle = type_of(&root) == "Bundle";
    let mut entries = Vec::new();
    match type_of(&root) {
        "Bundle" => {
            for (i, e) in root
                .get("entry")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let Some(r) = e.get("resource") else {
                    return Err(vec![format!("Bundle.entry[{i}] has no resource")]);
                };
                let typed = match (type_of(r), s(r, "id")) {
                    ("", _) | (_, "") => String::new(),
                    (t, id) => format!("{t}/{id}"),
                };
                entries.push((s(e, "fullUrl").to_owned(), typed, r));
            }
        }
        "DiagnosticReport" | "Observation" | "ImagingStudy" => {
            entries.push((String::new(), String::new(), &root));
        }
        "" => return Err(vec!["not a FHIR resource: resourceType is missing".into()]),
        other => {
            return Err(vec![format!(
                "resourceType {other} is not read by this agent (DiagnosticReport, Observation, ImagingStudy, or a Bundle of them)"
            )]);
        }
    }
    let res = Resources { entries };
    let file_report = Report {
        sha256: sha256(bytes),
        bytes: bytes.into(),
        media_type: FHIR_MEDIA_TYPE.into(),
    };
    // A unit's report 0: the file when it is one resource (one patient), else a Bundle of
    // the unit's own resources.
    let new_unit = |label: String, root: &Value| Unit {
        label,
        findings: Vec::new(),
        reports: vec![match in_bundle {
            true => own_resources_report(&res, root),
            false => file_report.clone(),
        }],
        skipped: Vec::new(),
    };
    let entry_of = |i: usize| in_bundle.then_some(i);
    let reports: Vec<(usize, &Value)> = res
        .entries
        .iter()
        .enumerate()
        .map(|(i, (_, _, r))| (i, *r))
        .filter(|(_, r)| type_of(r) == "DiagnosticReport")
        .collect();
    // Resources that a report refers to are read through it, not on their own.
    let mut referenced: std::collections::HashSet<*const Value> = std::collections::HashSet::new();
    for (_, dr) in &reports {
        for key in ["result", "imagingStudy"] {
            for r in refs(dr, key) {
                if let Some(target) = res.resolve(dr, r) {
                    referenced.insert(target as *const Value);
                    collect_members(&res, target, &mut referenced, 0);
                }
            }
        }
    }
    let reader = Reader {
        res: &res,
        mapping,
        settings,
    };
    let mut units = Vec::new();
    for (i, dr) in &reports {
        let label = resource_label(dr, entry_of(*i));
        let mut unit = new_unit(label.clone(), dr);
        units.push(with_checks(reader.report(dr, &label, &mut unit), unit));
    }
    for (i, (_, _, r)) in res.entries.iter().enumerate() {
        if referenced.contains(&(*r as *const Value)) {
            continue;
        }
        let label = resource_label(r, entry_of(i));
        let mut unit = new_unit(label.clone(), r);
        let result = match type_of(r) {
            "ImagingStudy" => reader.imaging_study(r, &label, &mut unit),
            "Observation" => reader.standalone_observation(r, &label, &mut unit),
            _ => continue,
        };
        units.push(with_checks(result, unit));
    }
    if units.is_empty() {
        return Err(vec![
            "the file holds no DiagnosticReport, Observation or ImagingStudy to publish".into(),
        ]);
    }
    Ok(units)
}

/// The unit, or every problem of it at once (the checks made before signing too).
fn with_checks(read: Result<(), Vec<String>>, unit: Unit) -> Result<Unit, Vec<String>> {
    match read {
        Ok(()) => Ok(unit),
        Err(mut errors) => {
            super::check_findings(&unit.findings, super::FileKind::Fhir, &mut errors);
            Err(errors)
        }
    }
}

fn refs<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    match v.get(key) {
        Some(Value::Array(a)) => a.iter().map(|r| s(r, "reference")).collect(),
        Some(r @ Value::Object(_)) => vec![s(r, "reference")],
        _ => Vec::new(),
    }
}

/// The full report of one result read from a Bundle: a `collection` Bundle of `root` (a
/// DiagnosticReport, Observation or ImagingStudy), the resources it refers to (results,
/// imaging studies, panel members) and its subject, in the order of the file. Other
/// patients' resources in the same file never reach it. Serialised with sorted keys, so the
/// same resources always give the same bytes and digest.
fn own_resources_report(res: &Resources<'_>, root: &Value) -> Report {
    let mut own: std::collections::HashSet<*const Value> = std::collections::HashSet::new();
    own.insert(root as *const Value);
    for key in ["result", "imagingStudy"] {
        for r in refs(root, key) {
            if let Some(target) = res.resolve(root, r) {
                own.insert(target as *const Value);
                collect_members(res, target, &mut own, 0);
            }
        }
    }
    collect_members(res, root, &mut own, 0);
    let subjects: Vec<&Value> = own
        .iter()
        .filter_map(|p| res.entries.iter().find(|(_, _, r)| std::ptr::eq(*r, *p)))
        .map(|(_, _, r)| *r)
        .filter_map(|r| r.get("subject").map(|s| (r, s)))
        .filter_map(|(r, subject)| res.resolve(r, s(subject, "reference")))
        .collect();
    for subject in subjects {
        own.insert(subject as *const Value);
    }
    let entries: Vec<Value> = res
        .entries
        .iter()
        .filter(|(_, _, r)| own.contains(&(*r as *const Value)))
        .map(|(full, _, r)| {
            let mut e = serde_json::Map::new();
            if !full.is_empty() {
                e.insert("fullUrl".into(), Value::String(full.clone()));
            }
            e.insert("resource".into(), (*r).clone());
            Value::Object(e)
        })
        .collect();
    let bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": entries,
    });
    let bytes = serde_json::to_vec(&bundle).unwrap_or_default();
    Report {
        sha256: sha256(&bytes),
        bytes: bytes.into(),
        media_type: FHIR_MEDIA_TYPE.into(),
    }
}

fn collect_members(
    res: &Resources<'_>,
    obs: &Value,
    out: &mut std::collections::HashSet<*const Value>,
    depth: usize,
) {
    if depth >= MAX_PANEL_DEPTH {
        return;
    }
    for r in refs(obs, "hasMember") {
        if let Some(m) = res.resolve(obs, r) {
            out.insert(m as *const Value);
            collect_members(res, m, out, depth + 1);
        }
    }
}

fn status_of(code: &str) -> SourceStatus {
    match code {
        "final" => SourceStatus::Final,
        "amended" | "corrected" | "appended" => SourceStatus::Corrected,
        "entered-in-error" | "cancelled" => SourceStatus::Void,
        "available" => SourceStatus::Final, // ImagingStudy
        other => SourceStatus::NotFinal(format!("status {other:?}")),
    }
}

/// `(system, code, display)` of each coding of a CodeableConcept.
fn codings(cc: Option<&Value>) -> Vec<(&str, &str, &str)> {
    cc.and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| (s(c, "system"), s(c, "code"), s(c, "display")))
                .filter(|(_, code, _)| !code.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Text of a CodeableConcept: `text`, else the first coding's display, else its code.
fn concept_text(cc: Option<&Value>) -> String {
    let Some(cc) = cc else { return String::new() };
    let t = s(cc, "text");
    if !t.is_empty() {
        return t.to_owned();
    }
    codings(Some(cc))
        .first()
        .map(|(_, code, display)| if display.is_empty() { *code } else { *display })
        .unwrap_or("")
        .to_owned()
}

enum Mapped<'m> {
    Item(&'m MappedItem, String),
    Ignored(String),
    Unknown(String),
}

struct Reader<'a> {
    res: &'a Resources<'a>,
    mapping: &'a Mapping,
    settings: &'a IngestSettings,
}

impl<'a> Reader<'a> {
    fn map_code(&self, cc: Option<&Value>) -> Mapped<'a> {
        let codes = codings(cc);
        for (system, code, _) in &codes {
            match self.mapping.coding(system, code) {
                Lookup::Mapped(m) => return Mapped::Item(m, (*code).to_owned()),
                Lookup::Ignored => return Mapped::Ignored((*code).to_owned()),
                Lookup::Unknown => {}
            }
        }
        Mapped::Unknown(
            codes
                .iter()
                .map(|(sys, c, _)| format!("{sys}|{c}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }

    fn time(&self, what: &str, v: &str) -> Result<Option<i64>, String> {
        if v.is_empty() {
            return Ok(None);
        }
        parse_fhir_time(v, self.settings.default_offset)
            .map(Some)
            .map_err(|e| format!("{what}: {e}"))
    }

    /// `effectiveDateTime`, else `effectivePeriod.start` (or ImagingStudy `started`).
    fn effective(&self, r: &Value, label: &str) -> Result<Option<i64>, String> {
        let v = [
            s(r, "effectiveDateTime"),
            r.get("effectivePeriod").map_or("", |p| s(p, "start")),
            s(r, "started"),
        ]
        .into_iter()
        .find(|v| !v.is_empty())
        .unwrap_or("");
        self.time(&format!("{label}: effective time"), v)
    }

    fn patient(&self, r: &Value, label: &str) -> Result<PatientId, String> {
        let subject = r
            .get("subject")
            .ok_or_else(|| format!("{label}: subject (the patient) is missing"))?;
        let identifiers: Vec<&Value> = if let Some(id) = subject.get("identifier") {
            vec![id]
        } else {
            let reference = s(subject, "reference");
            let patient = self.res.resolve(r, reference).ok_or_else(|| {
                format!("{label}: subject reference {reference:?} is not in the file")
            })?;
            patient
                .get("identifier")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default()
        };
        if identifiers.is_empty() {
            return Err(format!("{label}: the patient has no identifier"));
        }
        for rule in &self.mapping.patient_id_rules {
            for id in &identifiers {
                let value = s(id, "value");
                if value.is_empty() {
                    continue;
                }
                let types = codings(id.get("type"));
                let type_ok = rule.type_code.as_ref().is_none_or(|t| {
                    types
                        .iter()
                        .any(|(_, code, _)| code.eq_ignore_ascii_case(t))
                });
                let authority_ok = rule.authority.as_ref().is_none_or(|a| a == s(id, "system"));
                if type_ok && authority_ok {
                    return PatientId::new(&rule.id_type, value)
                        .map_err(|e| format!("{label}: patient identifier: {e}"));
                }
            }
        }
        Err(format!(
            "{label}: no patient identifier matches a [[patient_id]] rule of the mapping (systems present: {})",
            identifiers
                .iter()
                .map(|i| s(i, "system"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    fn result_id(&self, r: &Value, label: &str) -> Result<String, String> {
        let from_identifier = r
            .get("identifier")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|i| s(i, "value")).find(|v| !v.is_empty()));
        let id = from_identifier.unwrap_or_else(|| s(r, "id"));
        if id.trim().is_empty() {
            return Err(format!("{label}: neither identifier nor id is given"));
        }
        Ok(summary_id_part(id.trim()))
    }

    /// The presentedForm with inline data, as a report (index into `unit.reports`); else the
    /// file (report 0).
    fn presented_form(&self, dr: &Value, label: &str, unit: &mut Unit) -> Result<usize, String> {
        let Some(form) = dr
            .get("presentedForm")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|f| !s(f, "data").is_empty()))
        else {
            return Ok(0);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s(form, "data"))
            .map_err(|e| format!("{label}: presentedForm.data is not Base64: {e}"))?;
        let media = match s(form, "contentType") {
            "" => "application/octet-stream",
            t => t,
        };
        unit.reports.push(Report {
            sha256: sha256(&bytes),
            bytes: bytes.into(),
            media_type: media.to_owned(),
        });
        Ok(unit.reports.len() - 1)
    }

    fn report(&self, dr: &Value, label: &str, unit: &mut Unit) -> Result<(), Vec<String>> {
        let one = |e: String| vec![e];
        let status = status_of(s(dr, "status"));
        let code = self.map_code(dr.get("code"));
        let exam = matches!(&code, Mapped::Item(m, _) if m.category != Category::Lab);
        if let SourceStatus::NotFinal(why) = &status {
            unit.skipped.push(format!("{label}: not final ({why})"));
            return Ok(());
        }
        let id = self.result_id(dr, label).map_err(one)?;
        let patient = self.patient(dr, label).map_err(one)?;
        let report = self.presented_form(dr, label, unit).map_err(one)?;
        let performed = self.effective(dr, label).map_err(one)?;
        let issued = self
            .time(&format!("{label}: issued"), s(dr, "issued"))
            .map_err(one)?;
        if exam {
            let Mapped::Item(item, _) = code else {
                return Ok(());
            };
            let study = refs(dr, "imagingStudy")
                .into_iter()
                .find_map(|r| self.res.resolve(dr, r));
            let (uid, modality, body_site) = study.map(study_details).unwrap_or_default();
            let performed = performed
                .or_else(|| {
                    study.and_then(|st| self.time("started", s(st, "started")).ok().flatten())
                })
                .ok_or_else(|| one(format!("{label}: effectiveDateTime is missing")))?;
            let draft = self.exam_draft(
                id,
                patient,
                item,
                performed,
                issued.unwrap_or(performed),
                ExamResult {
                    modality: if modality.is_empty() {
                        item.modality.clone().unwrap_or_default()
                    } else {
                        modality
                    },
                    body_site: if body_site.is_empty() {
                        item.body_site.clone()
                    } else {
                        body_site
                    },
                    impression: s(dr, "conclusion").trim().to_owned(),
                    study_uid: uid,
                },
                &unit.reports[report],
            );
            unit.findings.push(Finding {
                label: label.to_owned(),
                id_from: format!("identifier {:?}", draft.id),
                status,
                report,
                draft,
            });
            return Ok(());
        }
        // Lab: one result per Observation.
        let mut errors = Vec::new();
        let mut observations = Vec::new();
        for r in refs(dr, "result") {
            match self.res.resolve(dr, r) {
                Some(o) if type_of(o) == "Observation" => {
                    self.expand_panel(o, dr, &mut observations, 0)
                }
                Some(_) => errors.push(format!("{label}: result {r:?} is not an Observation")),
                None => errors.push(format!(
                    "{label}: result {r:?} cannot be resolved (not contained and not in the Bundle)"
                )),
            }
        }
        if observations.is_empty() && errors.is_empty() {
            if let Mapped::Unknown(codes) = &code {
                errors.push(format!(
                    "{label}: code {codes} is not in the mapping and the report has no results"
                ));
            } else {
                errors.push(format!("{label}: the report has no results"));
            }
        }
        let specimen = dr
            .get("specimen")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .map(|sp| self.specimen_text(dr, sp))
            .unwrap_or_default();
        let ctx = LabContext {
            report_id: &id,
            patient: &patient,
            performed,
            issued,
            status: &status,
            specimen: &specimen,
            report,
        };
        for (i, o) in observations.iter().enumerate() {
            let olabel = format!("{label}, result {}", i + 1);
            if let Err(e) = self.observation(o, dr, &olabel, &ctx, unit) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn expand_panel(&self, o: &'a Value, from: &'a Value, out: &mut Vec<&'a Value>, depth: usize) {
        let members = refs(o, "hasMember");
        if members.is_empty() || depth >= MAX_PANEL_DEPTH {
            out.push(o);
            return;
        }
        for m in members {
            // Members of a contained panel are contained in the report, not in the panel.
            if let Some(x) = self.res.resolve(o, m).or_else(|| self.res.resolve(from, m)) {
                self.expand_panel(x, from, out, depth + 1);
            }
        }
    }

    fn specimen_text(&self, from: &Value, sp: &Value) -> String {
        let display = s(sp, "display");
        if !display.is_empty() {
            return display.to_owned();
        }
        self.res
            .resolve(from, s(sp, "reference"))
            .map(|r| concept_text(r.get("type")))
            .unwrap_or_default()
    }

    fn observation(
        &self,
        o: &Value,
        from: &Value,
        label: &str,
        ctx: &LabContext<'_>,
        unit: &mut Unit,
    ) -> Result<(), String> {
        let (item, local) = match self.map_code(o.get("code")) {
            Mapped::Item(m, local) if m.category == Category::Lab => (m, local),
            Mapped::Item(m, local) => {
                return Err(format!(
                    "{label}: code {local} maps to {} item {}, expected a lab item",
                    m.category.name(),
                    m.item.code
                ));
            }
            Mapped::Ignored(local) => {
                unit.skipped
                    .push(format!("{label} ({local}): ignored by the mapping"));
                return Ok(());
            }
            Mapped::Unknown(codes) => {
                return Err(format!(
                    "{label}: code {codes} is not in the mapping file {}; map it or add it to `ignore`",
                    self.mapping.source.display()
                ));
            }
        };
        let label = format!("{label} ({local})");
        let status = match o.get("status").and_then(Value::as_str) {
            Some(st) => status_of(st),
            None => ctx.status.clone(),
        };
        if let SourceStatus::NotFinal(why) = &status {
            unit.skipped.push(format!("{label}: not final ({why})"));
            return Ok(());
        }
        let (value, unit_text) = observation_value(o);
        if value.trim().is_empty() && status != SourceStatus::Void {
            return Err(format!("{label}: the Observation has no value"));
        }
        let flag = o
            .get("interpretation")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .map(|i| codings(Some(i)).first().map(|c| c.1).unwrap_or(""))
            .unwrap_or("");
        let flag = match flag {
            "AA" => Some(AbnormalFlag::Abnormal),
            f => AbnormalFlag::from_hl7_code(f),
        }
        .ok_or_else(|| {
            format!("{label}: interpretation {flag:?} is not one of N, L, H, LL, HH, A, AA")
        })?;
        let performed = self
            .effective(o, &label)?
            .or(ctx.performed)
            .ok_or_else(|| format!("{label}: effectiveDateTime is missing"))?;
        let reported = self
            .time(&format!("{label}: issued"), s(o, "issued"))?
            .or(ctx.issued)
            .unwrap_or(performed);
        let specimen = match o.get("specimen") {
            Some(sp) => self.specimen_text(from, sp),
            None => ctx.specimen.to_owned(),
        };
        let report = &unit.reports[ctx.report];
        unit.findings.push(Finding {
            label: label.clone(),
            id_from: format!("identifier {:?}", ctx.report_id),
            status,
            report: ctx.report,
            draft: ResultDraft {
                id: format!("{}-{}", ctx.report_id, summary_id_part(&local)),
                version: 1,
                status: Status::Final,
                status_reason: String::new(),
                patient: ctx.patient.clone(),
                item: item.item.clone(),
                category: Category::Lab,
                performed_at: UnixMillis(performed),
                reported_at: UnixMillis(reported),
                outcome: Outcome::Lab(LabResult {
                    value: value.trim().to_owned(),
                    unit: unit_text,
                    reference_range: reference_range(o),
                    flag,
                    specimen,
                }),
                report_sha256: report.sha256,
                report_locator: None,
                report_media_type: report.media_type.clone(),
            },
        });
        Ok(())
    }

    fn standalone_observation(
        &self,
        o: &Value,
        label: &str,
        unit: &mut Unit,
    ) -> Result<(), Vec<String>> {
        let one = |e: String| vec![e];
        let id = self.result_id(o, label).map_err(one)?;
        let patient = self.patient(o, label).map_err(one)?;
        let status = status_of(s(o, "status"));
        // Named like a report's results: `<Observation id>-<code>`.
        let ctx = LabContext {
            report_id: &id,
            patient: &patient,
            performed: None,
            issued: None,
            status: &status,
            specimen: "",
            report: 0,
        };
        self.observation(o, o, label, &ctx, unit).map_err(one)
    }

    fn imaging_study(&self, st: &Value, label: &str, unit: &mut Unit) -> Result<(), Vec<String>> {
        let one = |e: String| vec![e];
        let status = status_of(s(st, "status"));
        if let SourceStatus::NotFinal(why) = &status {
            unit.skipped.push(format!("{label}: not final ({why})"));
            return Ok(());
        }
        let procedure = st
            .get("procedureCode")
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        let item = match self.map_code(procedure) {
            Mapped::Item(m, _) if m.category != Category::Lab => m,
            Mapped::Item(m, local) => {
                return Err(one(format!(
                    "{label}: procedureCode {local} maps to lab item {}",
                    m.item.code
                )));
            }
            Mapped::Ignored(local) => {
                unit.skipped
                    .push(format!("{label} ({local}): ignored by the mapping"));
                return Ok(());
            }
            Mapped::Unknown(codes) => {
                return Err(one(format!(
                    "{label}: procedureCode {} is not in the mapping file {}",
                    if codes.is_empty() {
                        "(none)".to_owned()
                    } else {
                        codes
                    },
                    self.mapping.source.display()
                )));
            }
        };
        // The accession number names the result; else the study id.
        let accession = st
            .get("identifier")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|i| codings(i.get("type")).iter().any(|(_, c, _)| *c == "ACSN"))
            })
            .map(|i| s(i, "value"))
            .unwrap_or("");
        let id = if accession.is_empty() {
            self.result_id(st, label).map_err(one)?
        } else {
            summary_id_part(accession)
        };
        let patient = self.patient(st, label).map_err(one)?;
        let performed = self
            .effective(st, label)
            .map_err(one)?
            .ok_or_else(|| one(format!("{label}: started is missing")))?;
        let (uid, modality, body_site) = study_details(st);
        let draft = self.exam_draft(
            id,
            patient,
            item,
            performed,
            performed,
            ExamResult {
                modality: if modality.is_empty() {
                    item.modality.clone().unwrap_or_default()
                } else {
                    modality
                },
                body_site: if body_site.is_empty() {
                    item.body_site.clone()
                } else {
                    body_site
                },
                impression: String::new(),
                study_uid: uid,
            },
            &unit.reports[0],
        );
        unit.findings.push(Finding {
            label: label.to_owned(),
            id_from: format!("identifier {:?}", draft.id),
            status,
            report: 0,
            draft,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn exam_draft(
        &self,
        id: String,
        patient: PatientId,
        item: &MappedItem,
        performed: i64,
        reported: i64,
        exam: ExamResult,
        report: &Report,
    ) -> ResultDraft {
        ResultDraft {
            id,
            version: 1,
            status: Status::Final,
            status_reason: String::new(),
            patient,
            item: item.item.clone(),
            category: item.category,
            performed_at: UnixMillis(performed),
            reported_at: UnixMillis(reported.max(performed)),
            outcome: Outcome::Exam(exam),
            report_sha256: report.sha256,
            report_locator: None,
            report_media_type: report.media_type.clone(),
        }
    }
}

struct LabContext<'a> {
    report_id: &'a str,
    patient: &'a PatientId,
    performed: Option<i64>,
    issued: Option<i64>,
    status: &'a SourceStatus,
    specimen: &'a str,
    report: usize,
}

/// (Study Instance UID, modality, body site) of an ImagingStudy.
fn study_details(st: &Value) -> (String, String, String) {
    let uid = st
        .get("identifier")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|i| s(i, "system") == "urn:dicom:uid"))
        .map(|i| s(i, "value").trim_start_matches("urn:oid:").to_owned())
        .unwrap_or_default();
    let series = st
        .get("series")
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    let modality = st
        .get("modality")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .map(|m| s(m, "code"))
        .filter(|m| !m.is_empty())
        .or_else(|| {
            series
                .and_then(|se| se.get("modality"))
                .map(|m| s(m, "code"))
        })
        .unwrap_or("")
        .to_owned();
    let body_site = series
        .and_then(|se| se.get("bodySite"))
        .map(|b| {
            let d = s(b, "display");
            if d.is_empty() { s(b, "code") } else { d }
        })
        .unwrap_or("")
        .to_owned();
    (uid, modality, body_site)
}

fn number_text(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// (value as printed, unit) of an Observation's `value[x]`.
fn observation_value(o: &Value) -> (String, String) {
    if let Some(q) = o.get("valueQuantity") {
        let unit = [s(q, "unit"), s(q, "code")]
            .into_iter()
            .find(|u| !u.is_empty())
            .unwrap_or("")
            .to_owned();
        let comparator = s(q, "comparator");
        let value = q.get("value").map(number_text).unwrap_or_default();
        return (format!("{comparator}{value}"), unit);
    }
    if let Some(v) = o.get("valueString").and_then(Value::as_str) {
        return (v.to_owned(), String::new());
    }
    if let Some(cc) = o.get("valueCodeableConcept") {
        return (concept_text(Some(cc)), String::new());
    }
    if let Some(v) = o.get("valueInteger") {
        return (number_text(v), String::new());
    }
    if let Some(v) = o.get("valueBoolean").and_then(Value::as_bool) {
        return (
            if v {
                "阳性 positive"
            } else {
                "阴性 negative"
            }
            .to_owned(),
            String::new(),
        );
    }
    (String::new(), String::new())
}

/// `referenceRange[0]`: its text, else `low-high` (or `>=low`, `<=high`).
fn reference_range(o: &Value) -> String {
    let Some(r) = o
        .get("referenceRange")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    else {
        return String::new();
    };
    let text = s(r, "text");
    if !text.is_empty() {
        return text.to_owned();
    }
    let low = r.get("low").and_then(|l| l.get("value")).map(number_text);
    let high = r.get("high").and_then(|h| h.get("value")).map(number_text);
    match (low, high) {
        (Some(l), Some(h)) => format!("{l}-{h}"),
        (Some(l), None) => format!(">={l}"),
        (None, Some(h)) => format!("<={h}"),
        (None, None) => String::new(),
    }
}

/// A FHIR `dateTime`/`instant`: full RFC 3339, or a date (`YYYY-MM-DD`, at the local offset).
pub fn parse_fhir_time(v: &str, default_offset: time::UtcOffset) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    if v.len() == 10 {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        let d = time::Date::parse(v, &fmt)
            .map_err(|_| format!("{v:?} is not a FHIR date such as 2026-11-18"))?;
        let t = d.midnight().assume_offset(default_offset);
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| "out of range".into());
    }
    let t = time::OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
        format!("{v:?} is not a FHIR dateTime such as 2026-11-18T07:45:00+08:00 (a time needs seconds and an offset)")
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| "out of range".into())
}
