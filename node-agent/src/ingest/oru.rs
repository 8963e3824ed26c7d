//! HL7 v2 ORU^R01 (unsolicited observation result) to results.
//!
//! Structure read (v2.3 to v2.9; other segments are passed over):
//!
//! ```text
//! MSH  PID [PV1 ...]  { [ORC] OBR [ZDS] { OBX [NTE] } [SPM { OBX }] }  [PID ... again]
//! ```
//!
//! - **Patient**: PID-3 repetitions (CX). The first `[[patient_id]]` rule of the mapping that
//!   matches a repetition's type code (PID-3.5) or assigning authority (PID-3.4.1 or .4.2)
//!   picks the identifier and its Huren id type. Names (PID-5) are never read.
//! - **Exam** (OBR-4 maps to an imaging, electrophysiology or nuclear-medicine item): one
//!   result per OBR, id = OBR-3.1 (filler order / accession number, else OBR-2.1). Impression
//!   = OBX values whose OBX-3.1 is an impression code; Study Instance UID = ZDS-1.1 or an OBX
//!   whose OBX-3.1 is a study-UID code; modality and body site from the mapping.
//! - **Lab** (otherwise): one result per OBX, id = `<OBR-3.1>-<OBX-3.1>`; value from OBX-5 by
//!   OBX-2 (NM, ST, TX, FT as text; SN as `<comparator><num>[<sep><num>]`; CE/CWE by text);
//!   unit OBX-6 (CE: identifier, else text; required for a numeric NM value), range OBX-7 (see `reference_range`), flag OBX-8 (table 0078), specimen SPM-4 or OBR-15.
//! - **Times**: performed = OBX-14, else OBR-7; reported = OBR-22, else OBX-19, else MSH-7.
//!   Without an offset, times are at the configured local offset.
//! - **Processing id**: MSH-11.1 `T` (training) or `D` (debugging) refuses the message.
//! - **Status**: OBX-11, required (an empty one refuses the message): F final; C corrected (an
//!   amendment); D, W void;
//!   P, R, I, S, A, X are not final and are not published (noted, not rejected).
//! - **Full report**: the first OBX of type ED in the OBR group (e.g. a PDF, Base64), else the
//!   message's own bytes.

use base64::Engine;

use huren_core::pseudonym::PatientId;
use huren_core::signing::sha256;
use huren_core::summary::{
    AbnormalFlag, Category, ExamResult, LabResult, Outcome, Status, UnixMillis,
};

use super::hl7::{Message, Segment, parse_dtm};
use super::{Finding, IngestSettings, Report, SourceStatus, Unit, summary_id_part};
use crate::draft::ResultDraft;
use crate::mapping::{Lookup, Mapping, PatientIdRule};

/// Media type of a report that is the HL7 v2 message itself.
pub const HL7_MEDIA_TYPE: &str = "x-application/hl7-v2+er7";

/// Longest impression kept in a summary, in characters; the full report has all of it.
const MAX_IMPRESSION_CHARS: usize = 4000;

struct Order<'a> {
    obr: &'a Segment,
    patient: usize,
    observations: Vec<(usize, &'a Segment)>,
    spm: Option<&'a Segment>,
    zds: Option<&'a Segment>,
}

/// Reads one parsed ORU^R01 message. `raw` is the message's bytes (its default full report).
/// Errors list every problem found; none of them quotes a patient's id or name.
pub fn read_oru(
    m: &Message,
    raw: &[u8],
    mapping: &Mapping,
    settings: &IngestSettings,
) -> Result<Unit, Vec<String>> {
    let msh = m.msh();
    let (kind, event) = (m.text(msh, 9, 1, 0), m.text(msh, 9, 2, 0));
    let control = m.text(msh, 10, 0, 0);
    if kind != "ORU" || event != "R01" {
        return Err(vec![format!(
            "message type (MSH-9) is {kind}^{event}; this agent reads ORU^R01 results"
        )]);
    }
    // MSH-11.1 processing id (HL7 table 0103): P production, T training, D debugging.
    // Training and debugging messages are not real results and are never published.
    let processing = m.text(msh, 11, 1, 0);
    match processing.as_str() {
        "T" | "D" => {
            let what = if processing == "T" {
                "training"
            } else {
                "debugging"
            };
            return Err(vec![format!(
                "MSH-11 (processing id) is {processing} ({what}); only production (P) \
                 messages are published as results"
            )]);
        }
        _ => {}
    }
    let msh_time = m.text(msh, 7, 1, 0);
    let mut errors = Vec::new();
    let mut patients: Vec<Result<PatientId, String>> = Vec::new();
    let mut orders: Vec<Order<'_>> = Vec::new();
    let mut in_specimen = false;
    for (i, seg) in m.segments.iter().enumerate() {
        let n = i + 1;
        match seg.id() {
            "PID" => {
                patients.push(patient_of(m, seg, &mapping.patient_id_rules));
                in_specimen = false;
            }
            "OBR" => {
                if patients.is_empty() {
                    errors.push(format!("segment {n}: OBR comes before any PID segment"));
                    continue;
                }
                orders.push(Order {
                    obr: seg,
                    patient: patients.len() - 1,
                    observations: Vec::new(),
                    spm: None,
                    zds: None,
                });
                in_specimen = false;
            }
            "OBX" => match orders.last_mut() {
                // OBX after SPM describe the specimen, not a result.
                Some(_) if in_specimen => {}
                Some(o) => o.observations.push((n, seg)),
                None => errors.push(format!("segment {n}: OBX comes before any OBR segment")),
            },
            "SPM" => {
                if let Some(o) = orders.last_mut() {
                    o.spm.get_or_insert(seg);
                }
                in_specimen = true;
            }
            "ZDS" => {
                if let Some(o) = orders.last_mut() {
                    o.zds = Some(seg);
                }
            }
            _ => {}
        }
    }
    if orders.is_empty() && errors.is_empty() {
        errors.push("the message has no OBR segment, so no result".into());
    }
    let mut unit = Unit {
        label: format!("message {control:?}"),
        findings: Vec::new(),
        reports: vec![Report {
            sha256: sha256(raw),
            bytes: raw.into(),
            media_type: HL7_MEDIA_TYPE.into(),
        }],
        skipped: Vec::new(),
    };
    for (k, order) in orders.iter().enumerate() {
        let label = format!("OBR {}", k + 1);
        let patient = match &patients[order.patient] {
            Ok(p) => p.clone(),
            Err(e) => {
                errors.push(format!("{label}: {e}"));
                continue;
            }
        };
        if let Err(e) = read_order(
            m, order, &label, patient, &msh_time, mapping, settings, &mut unit,
        ) {
            errors.extend(e);
        }
    }
    if errors.is_empty() {
        Ok(unit)
    } else {
        // Every problem at once: the checks made before signing too.
        super::check_findings(&unit.findings, super::FileKind::Hl7, &mut errors);
        Err(errors)
    }
}

/// The patient's id from PID-3 by the mapping's rules.
fn patient_of(m: &Message, pid: &Segment, rules: &[PatientIdRule]) -> Result<PatientId, String> {
    let ids = m.repetitions(pid, 3);
    if ids.iter().all(|v| v.component(1).is_empty()) {
        return Err("PID-3 (patient identifier list) is empty".into());
    }
    for rule in rules {
        for cx in &ids {
            let value = cx.component(1).text();
            if value.is_empty() {
                continue;
            }
            let type_code = cx.component(5).text();
            let authority = cx.component(4);
            let (namespace, universal) = (
                authority.subcomponent(1).text(),
                authority.subcomponent(2).text(),
            );
            let type_ok = rule
                .type_code
                .as_ref()
                .is_none_or(|t| t.eq_ignore_ascii_case(type_code.trim()));
            let authority_ok = rule
                .authority
                .as_ref()
                .is_none_or(|a| *a == namespace.trim() || *a == universal.trim());
            if type_ok && authority_ok {
                return PatientId::new(&rule.id_type, &value)
                    .map_err(|e| format!("PID-3 identifier of type {:?}: {e}", type_code.trim()));
            }
        }
    }
    let types: Vec<String> = ids
        .iter()
        .map(|cx| cx.component(5).text())
        .filter(|t| !t.is_empty())
        .collect();
    Err(format!(
        "no PID-3 identifier matches a [[patient_id]] rule of the mapping (identifier types present: {})",
        if types.is_empty() {
            "none".to_owned()
        } else {
            types.join(", ")
        }
    ))
}

/// HL7 result status (table 0085 / 0123) to what the agent does with the result.
fn source_status(code: &str) -> SourceStatus {
    match code.trim() {
        "F" | "" => SourceStatus::Final,
        "C" => SourceStatus::Corrected,
        "D" | "W" => SourceStatus::Void,
        other => SourceStatus::NotFinal(format!("result status {other}")),
    }
}

#[allow(clippy::too_many_arguments)]
fn read_order(
    m: &Message,
    order: &Order<'_>,
    label: &str,
    patient: PatientId,
    msh_time: &str,
    mapping: &Mapping,
    settings: &IngestSettings,
    unit: &mut Unit,
) -> Result<(), Vec<String>> {
    let obr = order.obr;
    let (id_field, order_id) = [
        ("OBR-3 (filler order number)", m.text(obr, 3, 1, 0)),
        ("OBR-2 (placer order number)", m.text(obr, 2, 1, 0)),
    ]
    .into_iter()
    .find(|(_, s)| !s.trim().is_empty())
    .ok_or_else(|| {
            vec![format!(
                "{label}: OBR-3 (filler order number) and OBR-2 (placer order number) are empty; a result needs an id"
            )]
        })?;
    let order_id = summary_id_part(order_id.trim());
    let id_from = format!("{id_field} {:?}", order_id);
    let time = |field: &str, v: &str| -> Result<Option<i64>, String> {
        if v.trim().is_empty() {
            return Ok(None);
        }
        parse_dtm(v, settings.default_offset)
            .map(Some)
            .map_err(|e| format!("{label}: {field}: {e}"))
    };
    let obr_observed = time("OBR-7", &m.text(obr, 7, 1, 0)).map_err(|e| vec![e])?;
    let obr_reported = time("OBR-22", &m.text(obr, 22, 1, 0)).map_err(|e| vec![e])?;
    let msh_reported = time("MSH-7", msh_time).map_err(|e| vec![e])?;
    let obr_status = m.text(obr, 25, 0, 0);

    // An ED attachment in the group is the full report; else the message itself (report 0).
    let mut report = 0;
    for (n, obx) in &order.observations {
        if m.text(obx, 2, 0, 0) == "ED" {
            let ed = m.first(obx, 5);
            report = attachment(
                ed.component(2).text(),
                ed.component(3).text(),
                ed.component(4).text(),
                ed.component(5).raw(),
            )
            .map(|r| {
                unit.reports.push(r);
                unit.reports.len() - 1
            })
            .map_err(|e| vec![format!("{label}, segment {n}: OBX-5 (ED attachment): {e}")])?;
            break;
        }
    }
    let report_sha256 = unit.reports[report].sha256;
    let media_type = unit.reports[report].media_type.clone();

    let service_code = m.text(obr, 4, 1, 0);
    if let Lookup::Mapped(item) = mapping.local(&service_code)
        && item.category != Category::Lab
    {
        // An exam: one result for the whole OBR.
        let mut impression = Vec::new();
        let mut study_uid = order.zds.map(|z| m.text(z, 1, 1, 0)).unwrap_or_default();
        for (_, obx) in &order.observations {
            let code = m.text(obx, 3, 1, 0);
            if mapping.impression_codes.contains(code.trim()) {
                impression.push(obx_text(m, obx));
            } else if mapping.study_uid_codes.contains(code.trim()) && study_uid.is_empty() {
                study_uid = m.text(obx, 5, 1, 0);
            }
        }
        let mut impression = impression.join("\n");
        if impression.chars().count() > MAX_IMPRESSION_CHARS {
            impression = impression
                .chars()
                .take(MAX_IMPRESSION_CHARS)
                .collect::<String>();
            impression.push_str("…（全文见报告 see the full report）");
        }
        let performed = obr_observed
            .ok_or_else(|| vec![format!("{label}: OBR-7 (observation date/time) is empty")])?;
        let reported = obr_reported.or(msh_reported).unwrap_or(performed);
        let status = source_status(&obr_status);
        unit.findings.push(Finding {
            label: format!("{label} ({})", service_code.trim()),
            id_from: id_from.clone(),
            status,
            report,
            draft: ResultDraft {
                id: order_id.clone(),
                version: 1,
                status: Status::Final,
                status_reason: String::new(),
                patient,
                item: item.item.clone(),
                category: item.category,
                performed_at: UnixMillis(performed),
                reported_at: UnixMillis(reported),
                outcome: Outcome::Exam(ExamResult {
                    modality: item.modality.clone().unwrap_or_default(),
                    body_site: item.body_site.clone(),
                    impression,
                    study_uid: study_uid.trim().to_owned(),
                }),
                report_sha256,
                report_locator: None,
                report_media_type: media_type,
            },
        });
        return Ok(());
    }

    // Lab: one result per OBX.
    let specimen = order
        .spm
        .map(|s| first_non_empty([m.text(s, 4, 2, 0), m.text(s, 4, 1, 0)]))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| first_non_empty([m.text(obr, 15, 1, 2), m.text(obr, 15, 1, 1)]));
    let mut errors = Vec::new();
    for (n, obx) in &order.observations {
        let value_type = m.text(obx, 2, 0, 0);
        if matches!(value_type.as_str(), "ED" | "RP") {
            continue;
        }
        let code = m.text(obx, 3, 1, 0);
        let at = format!("{label}, segment {n} (OBX {:?})", code.trim());
        if code.trim().is_empty() {
            errors.push(format!(
                "{label}, segment {n}: OBX-3 (observation identifier) is empty"
            ));
            continue;
        }
        let item = match mapping.local(&code) {
            Lookup::Mapped(item) if item.category == Category::Lab => item,
            Lookup::Mapped(item) => {
                errors.push(format!(
                    "{at}: maps to {} item {}, but OBR-4 {:?} is not mapped to an exam",
                    item.category.name(),
                    item.item.code,
                    service_code
                ));
                continue;
            }
            Lookup::Ignored => {
                unit.skipped.push(format!("{at}: ignored by the mapping"));
                continue;
            }
            Lookup::Unknown => {
                errors.push(format!(
                    "{at}: local code {:?} ({}) is not in the mapping file {}; map it or add it to `ignore`",
                    code.trim(),
                    m.text(obx, 3, 2, 0),
                    mapping.source.display()
                ));
                continue;
            }
        };
        // OBX-11 is required: a missing status must not turn a result final (OBR-25 is the
        // order's status, not this result's; a file cut short loses its OBX-11 first).
        let status_code = m.text(obx, 11, 0, 0);
        if status_code.trim().is_empty() {
            errors.push(format!(
                "{at}: OBX-11 (observation result status) is empty; a result is published only with its status (F final, C corrected, D or W deleted)"
            ));
            continue;
        }
        let status = source_status(&status_code);
        if let SourceStatus::NotFinal(why) = &status {
            unit.skipped.push(format!("{at}: not final ({why})"));
            continue;
        }
        let value = lab_value(m, obx, &value_type);
        if value.trim().is_empty() && status != SourceStatus::Void {
            errors.push(format!("{at}: OBX-5 (observation value) is empty"));
            continue;
        }
        let flag_code = m.text(obx, 8, 1, 0);
        let Some(flag) = abnormal_flag(&flag_code) else {
            errors.push(format!(
                "{at}: OBX-8 abnormal flag {:?} is not one of N, L, H, LL, HH, A, AA, <, >",
                flag_code
            ));
            continue;
        };
        let performed = match time("OBX-14", &m.text(obx, 14, 1, 0)) {
            Ok(t) => t.or(obr_observed),
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let Some(performed) = performed else {
            errors.push(format!(
                "{at}: neither OBX-14 nor OBR-7 gives the observation time"
            ));
            continue;
        };
        let analysed = match time("OBX-19", &m.text(obx, 19, 1, 0)) {
            Ok(t) => t,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let reported = obr_reported
            .or(analysed)
            .or(msh_reported)
            .unwrap_or(performed);
        let unit_text = first_non_empty([m.text(obx, 6, 1, 0), m.text(obx, 6, 2, 0)]);
        if value_type == "NM" && unit_text.trim().is_empty() && status != SourceStatus::Void {
            errors.push(format!(
                "{at}: OBX-6 (units) is empty for a numeric (NM) value; a number is published only with its unit"
            ));
            continue;
        }
        unit.findings.push(Finding {
            label: at,
            id_from: id_from.clone(),
            status,
            report,
            draft: ResultDraft {
                id: format!("{order_id}-{}", summary_id_part(code.trim())),
                version: 1,
                status: Status::Final,
                status_reason: String::new(),
                patient: patient.clone(),
                item: item.item.clone(),
                category: Category::Lab,
                performed_at: UnixMillis(performed),
                reported_at: UnixMillis(reported),
                outcome: Outcome::Lab(LabResult {
                    value: value.trim().to_owned(),
                    unit: unit_text.trim().to_owned(),
                    reference_range: reference_range(m, obx),
                    flag,
                    specimen: specimen.trim().to_owned(),
                }),
                report_sha256,
                report_locator: None,
                report_media_type: media_type.clone(),
            },
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// OBX-7 (ST in v2.5.1) as text, escapes decoded. Senders also split it as a numeric range
/// (NR: low ^ high, perhaps followed by text): both given → `low-high` (`3.5^5.5` →
/// `3.5-5.5`); only the high limit → `<=high` (`^5.5` → `<=5.5`); only the low one → `>=low`;
/// further non-empty components follow after a space (`3.5^5.5^mmol/L` → `3.5-5.5 mmol/L`).
/// Repetitions (e.g. one range per sex) are kept, joined with `; `.
fn reference_range(m: &Message, obx: &Segment) -> String {
    m.repetitions(obx, 7)
        .iter()
        .map(|rep| {
            let parts: Vec<String> = rep
                .components()
                .iter()
                .map(|c| c.text().trim().to_owned())
                .collect();
            let (low, high) = match parts.as_slice() {
                [] => return String::new(),
                [only] => return only.clone(),
                [low, high, ..] => (low.as_str(), high.as_str()),
            };
            let range = match (low.is_empty(), high.is_empty()) {
                (false, false) => format!("{low}-{high}"),
                (true, false) => format!("<={high}"),
                (false, true) => format!(">={low}"),
                (true, true) => String::new(),
            };
            let rest: Vec<&str> = parts[2..]
                .iter()
                .map(String::as_str)
                .filter(|t| !t.is_empty())
                .collect();
            [range, rest.join(" ")]
                .into_iter()
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn first_non_empty<const N: usize>(values: [String; N]) -> String {
    values
        .into_iter()
        .find(|v| !v.trim().is_empty())
        .unwrap_or_default()
}

/// The whole OBX-5 as text: repetitions joined by line breaks (TX and FT lines).
fn obx_text(m: &Message, obx: &Segment) -> String {
    m.repetitions(obx, 5)
        .iter()
        .map(|v| v.text())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

/// OBX-5 as the printed value, by OBX-2 value type.
fn lab_value(m: &Message, obx: &Segment, value_type: &str) -> String {
    let v = m.first(obx, 5);
    match value_type {
        // Structured numeric: comparator ^ num1 ^ separator/suffix ^ num2.
        "SN" => {
            let c: Vec<String> = (1..=4).map(|i| v.component(i).text()).collect();
            format!("{}{}{}{}", c[0], c[1], c[2], c[3])
        }
        "CE" | "CWE" | "CNE" | "CF" => {
            first_non_empty([v.component(2).text(), v.component(1).text()])
        }
        "TX" | "FT" => obx_text(m, obx),
        _ => {
            let reps = m.repetitions(obx, 5);
            reps.iter()
                .map(|r| r.text())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// HL7 table 0078 to the summary's flag; `AA` (very abnormal) reads as A, `<`/`>` (below/above
/// the measurable range) as L/H.
fn abnormal_flag(code: &str) -> Option<AbnormalFlag> {
    match code.trim() {
        "AA" => Some(AbnormalFlag::Abnormal),
        "<" => Some(AbnormalFlag::Low),
        ">" => Some(AbnormalFlag::High),
        other => AbnormalFlag::from_hl7_code(other),
    }
}

/// An ED value (type ^ subtype ^ encoding ^ data) as a report.
fn attachment(
    kind: String,
    subtype: String,
    encoding: String,
    data: &str,
) -> Result<Report, String> {
    let bytes = match encoding.to_ascii_lowercase().as_str() {
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| format!("the Base64 data does not decode: {e}"))?,
        "hex" => {
            hex::decode(data.trim()).map_err(|_| "the hex data does not decode".to_string())?
        }
        "a" | "" => data.as_bytes().to_vec(),
        other => return Err(format!("encoding {other:?} is not Base64, Hex or A")),
    };
    if bytes.is_empty() {
        return Err("the attachment is empty".into());
    }
    let (kind, subtype) = (kind.to_ascii_lowercase(), subtype.to_ascii_lowercase());
    let media_type = match (kind.as_str(), subtype.as_str()) {
        (_, "pdf") => "application/pdf".to_owned(),
        ("image", s) | ("im", s) if !s.is_empty() => format!("image/{s}"),
        ("text", s) | ("tx", s) if !s.is_empty() => format!("text/{s}"),
        ("application", s) if !s.is_empty() => format!("application/{s}"),
        _ => "application/octet-stream".to_owned(),
    };
    Ok(Report {
        sha256: sha256(&bytes),
        bytes: bytes.into(),
        media_type,
    })
}
