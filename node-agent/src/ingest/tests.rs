//! Ingestion tests over the fixtures in node-agent/tests-data/ (realistic HL7 v2 and FHIR R4
//! messages written for these tests, malformed ones included).

use std::path::Path;
use std::sync::Arc;

use huren_core::identity::InstitutionId;
use huren_core::pseudonym::{PatientId, PseudonymKey};
use huren_core::signing::{SummarySigner, sha256};
use huren_core::summary::{AbnormalFlag, Category, Outcome, Status, UnixMillis};

use super::*;
use crate::mapping::Mapping;
use crate::store::Store;

/// Patient ids used in the fixtures; none may appear in a reason.
const PATIENT_IDS: [&str; 3] = ["610102196703151235", "610122198807222047", "E12345678"];
const NAMES: [&str; 3] = ["王", "建国", "秀英"];

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests-data")
            .join(name),
    )
    .unwrap()
}

fn mapping(member: &str) -> Mapping {
    Mapping::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(format!("mapping-{member}.toml")),
    )
    .unwrap()
}

fn parse(name: &str, member: &str) -> Vec<Result<Unit, Vec<String>>> {
    parse_file(&data(name), &mapping(member), &IngestSettings::default())
        .units
        .into_iter()
        .map(|(_, u)| u)
        .collect()
}

fn one_unit(name: &str, member: &str) -> Unit {
    let mut units = parse(name, member);
    assert_eq!(units.len(), 1);
    units.remove(0).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn reasons(name: &str, member: &str) -> String {
    let units = parse(name, member);
    let text = units
        .into_iter()
        .filter_map(Result::err)
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!text.is_empty(), "{name} was accepted");
    for secret in PATIENT_IDS.iter().chain(&NAMES) {
        assert!(
            !text.contains(secret),
            "a reason shows patient data: {text}"
        );
    }
    text
}

fn lab(f: &Finding) -> &huren_core::summary::LabResult {
    match &f.draft.outcome {
        Outcome::Lab(l) => l,
        Outcome::Exam(_) => panic!("{} is not a lab result", f.label),
    }
}

fn exam(f: &Finding) -> &huren_core::summary::ExamResult {
    match &f.draft.outcome {
        Outcome::Exam(e) => e,
        Outcome::Lab(_) => panic!("{} is not an exam", f.label),
    }
}

fn ric(id: &str) -> PatientId {
    PatientId::new("cn-ric", id).unwrap()
}

#[test]
fn hl7_lab_message_with_two_orders() {
    let u = one_unit("hl7/oru-lab-utf8.hl7", "shx-prov-people");
    let ids: Vec<&str> = u.findings.iter().map(|f| f.draft.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "LAB-20261118-00731-HGB",
            "LAB-20261118-00731-PLT",
            "LAB-20261118-00732-ALT",
            "LAB-20261118-00732-CREA"
        ]
    );
    assert_eq!(u.skipped.len(), 1, "{:?}", u.skipped);
    assert!(u.skipped[0].contains("MCHC"));
    let hgb = &u.findings[0];
    assert_eq!(hgb.draft.patient, ric("610102196703151235"));
    assert_eq!(hgb.draft.item.code, "718-7");
    assert_eq!(hgb.draft.item.local_code, "HGB");
    assert_eq!(hgb.draft.performed_at, UnixMillis(1_794_959_100_000));
    // OBR-22 2026-11-18T09:00:00+08:00
    assert_eq!(hgb.draft.reported_at, UnixMillis(1_794_963_600_000));
    assert_eq!(hgb.status, SourceStatus::Final);
    let l = lab(hgb);
    assert_eq!(
        (
            l.value.as_str(),
            l.unit.as_str(),
            l.reference_range.as_str()
        ),
        ("128", "g/L", "130-175")
    );
    assert_eq!(l.flag, AbnormalFlag::Low);
    assert_eq!(l.specimen, "全血");
    // \S\ in a unit is the component separator, not a split.
    assert_eq!(lab(&u.findings[1]).unit, "10^9/L");
    // SN "<^44" reads "<44"; the second OBR's specimen and report time are its own.
    let crea = &u.findings[3];
    assert_eq!(lab(crea).value, "<44");
    assert_eq!(lab(crea).specimen, "血清");
    assert_eq!(lab(&u.findings[2]).flag, AbnormalFlag::High);
    // The full report is the message's own bytes.
    assert_eq!(u.reports.len(), 1);
    assert_eq!(u.reports[0].sha256, sha256(&data("hl7/oru-lab-utf8.hl7")));
    assert_eq!(hgb.draft.report_media_type, oru::HL7_MEDIA_TYPE);
}

#[test]
fn hl7_ct_exam_in_gb18030_with_mllp_zds_and_pdf() {
    let u = one_unit("hl7/oru-ct-gb18030-mllp.hl7", "shx-prov-people");
    assert_eq!(u.findings.len(), 1);
    let f = &u.findings[0];
    assert_eq!(f.draft.id, "RIS-20261119-00215");
    assert_eq!(f.draft.category, Category::Imaging);
    assert_eq!(f.draft.item.code, "24627-2");
    let e = exam(f);
    assert_eq!(e.modality, "CT");
    assert_eq!(e.body_site, "胸部 chest");
    assert_eq!(e.impression, "双肺未见明显异常。\n建议年度复查。");
    assert_eq!(e.study_uid, "1.2.840.113619.2.55.3.2831164355.20261119.215");
    // The PDF in the ED OBX is the full report.
    let pdf = data("hl7/report.pdf");
    assert_eq!(f.draft.report_sha256, sha256(&pdf));
    assert_eq!(f.draft.report_media_type, "application/pdf");
    assert_eq!(&*u.reports[f.report].bytes, &pdf[..]);
}

#[test]
fn hl7_county_message_gb18030_without_msh18_and_id_type_code() {
    let u = one_unit("hl7/county-glu-gb18030.hl7", "lantian-county");
    assert_eq!(u.findings.len(), 1);
    let f = &u.findings[0];
    assert_eq!(f.draft.id, "LT-20261120-0412-2001");
    assert_eq!(f.draft.item.display, "葡萄糖 Glucose");
    assert_eq!(f.draft.patient, ric("610122198807222047"));
    // No offset in the message: +08:00. 2026-11-20T07:00:00+08:00.
    assert_eq!(f.draft.performed_at, UnixMillis(1_795_129_200_000));
    assert_eq!(lab(f).value, "5.6");
}

#[test]
fn malformed_hl7_is_refused_with_reasons() {
    let r = reasons("hl7/bad-no-msh.hl7", "shx-prov-people");
    assert!(r.contains("does not start with an MSH segment"), "{r}");
    let r = reasons("hl7/bad-adt.hl7", "shx-prov-people");
    assert!(r.contains("ADT^A01") && r.contains("ORU^R01"), "{r}");
    let r = reasons("hl7/bad-no-pid3.hl7", "shx-prov-people");
    assert!(r.contains("PID-3"), "{r}");
    let r = reasons("hl7/bad-obx-no-value.hl7", "shx-prov-people");
    assert!(r.contains("OBX-5") && r.contains("empty"), "{r}");
    let r = reasons("hl7/bad-unknown-code.hl7", "shx-prov-people");
    assert!(
        r.contains("XYZ9") && r.contains("not in the mapping"),
        "{r}"
    );
    // No identifier of a configured type (the defaults replaced): refused, naming the types
    // present only.
    let only_id = Mapping::parse(
        "format = \"huren-mapping/1\"\nignore = [\"HGB\", \"PLT\", \"MCHC\", \"ALT\", \"CREA\"]\n\
         replace_default_patient_id_rules = true\n\
         [[patient_id]]\ntype_code = \"ID\"\nid_type = \"cn-ric\"\n",
        Path::new("only-id.toml"),
    )
    .unwrap();
    let units = parse_file(
        &data("hl7/oru-lab-utf8.hl7"),
        &only_id,
        &IngestSettings::default(),
    );
    let r = units.units[0].1.as_ref().unwrap_err().join("\n");
    assert!(
        r.contains("NNCHN, MR") && !r.contains(PATIENT_IDS[0]),
        "{r}"
    );
    // Bytes that are neither format.
    let units = parse_file(
        b"hello",
        &mapping("shx-prov-people"),
        &IngestSettings::default(),
    );
    assert!(units.units[0].1.is_err());
}

#[test]
fn fhir_report_with_contained_observations() {
    let u = one_unit("fhir/dr-contained-lab.json", "shx-prov-people");
    let ids: Vec<&str> = u.findings.iter().map(|f| f.draft.id.as_str()).collect();
    assert_eq!(
        ids,
        ["LAB-20261120-00412-2345-7", "LAB-20261120-00412-CREA"]
    );
    let glu = &u.findings[0];
    // Coded only in LOINC: found through the catalogue side of the mapping.
    assert_eq!(glu.draft.item.local_code, "GLU");
    assert_eq!(glu.draft.patient, ric("610102196703151235"));
    let l = lab(glu);
    assert_eq!(
        (
            l.value.as_str(),
            l.unit.as_str(),
            l.reference_range.as_str()
        ),
        ("6.8", "mmol/L", "3.9-6.1")
    );
    assert_eq!(l.flag, AbnormalFlag::High);
    assert_eq!(l.specimen, "血清 serum");
    assert_eq!(lab(&u.findings[1]).reference_range, "57-111");
    // issued 2026-11-20T10:05:00+08:00
    assert_eq!(glu.draft.reported_at, UnixMillis(1_795_140_300_000));
    assert_eq!(
        glu.draft.report_sha256,
        sha256(&data("fhir/dr-contained-lab.json"))
    );
}

#[test]
fn fhir_bundle_with_referenced_observations() {
    let u = one_unit("fhir/bundle-referenced-lab.json", "shx-prov-people");
    let ids: Vec<&str> = u.findings.iter().map(|f| f.draft.id.as_str()).collect();
    // By urn:uuid fullUrl and by Observation/id; MCHC is ignored by the mapping.
    assert_eq!(ids, ["LAB-20261121-00077-HGB", "LAB-20261121-00077-PLT"]);
    assert_eq!(u.skipped.len(), 1);
    assert_eq!(lab(&u.findings[0]).specimen, "全血 whole blood");
    // Times come from the report when the Observation has none.
    assert_eq!(
        u.findings[1].draft.performed_at,
        UnixMillis(1_795_219_200_000)
    );
    assert_eq!(u.findings[0].draft.patient, ric("610122198807222047"));
}

#[test]
fn fhir_imaging_report_and_imaging_study() {
    let u = one_unit("fhir/bundle-imaging-report.json", "shx-prov-people");
    assert_eq!(
        u.findings.len(),
        1,
        "the ImagingStudy is read through the report"
    );
    let f = &u.findings[0];
    assert_eq!(f.draft.id, "US-20261121-00088");
    let e = exam(f);
    assert_eq!(
        (
            e.modality.as_str(),
            e.body_site.as_str(),
            e.study_uid.as_str()
        ),
        ("US", "腹部 abdomen", "1.2.840.113619.2.55.3.88")
    );
    assert_eq!(e.impression, "肝胆胰脾未见明显异常。");
    assert_eq!(f.draft.report_media_type, "application/pdf");
    assert_eq!(&*u.reports[f.report].bytes, &data("hl7/report.pdf")[..]);

    let u = one_unit("fhir/imaging-study.json", "shx-prov-people");
    let f = &u.findings[0];
    assert_eq!(f.draft.id, "RIS-20261122-00077");
    assert_eq!(
        f.draft.patient,
        PatientId::new("passport", "E12345678").unwrap()
    );
    assert_eq!(exam(f).study_uid, "1.2.840.113619.2.55.3.77");
    assert_eq!(f.draft.performed_at, f.draft.reported_at);
}

#[test]
fn malformed_fhir_is_refused_with_reasons() {
    // JSON that ends early is a file not yet whole: held, not read in part.
    let truncated = parse_file(
        &data("fhir/bad-truncated.json"),
        &mapping("shx-prov-people"),
        &IngestSettings::default(),
    );
    assert!(truncated.units.is_empty());
    let why = truncated.incomplete.unwrap();
    assert!(why.contains("JSON ends"), "{why}");
    let r = reasons_of(b"{\"resourceType\": ]}");
    assert!(r.contains("not valid JSON"), "{r}");
    let r = reasons("fhir/bad-unknown-code.json", "shx-prov-people");
    assert!(
        r.contains("NEWTEST") && r.contains("not in the mapping"),
        "{r}"
    );
    let m = mapping("shx-prov-people");
    let s = IngestSettings::default();
    let err = |json: &str| {
        fhir::read_fhir(json.as_bytes(), &m, &s)
            .into_iter()
            .filter_map(Result::err)
            .flatten()
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(err(r#"{"resourceType":"Patient"}"#).contains("not read by this agent"));
    assert!(err(r#"{"resourceType":"Bundle","entry":[]}"#).contains("holds no"));
    let dangling = String::from_utf8(data("fhir/dr-contained-lab.json"))
        .unwrap()
        .replace("\"#crea\"", "\"#nothing\"");
    assert!(err(&dangling).contains("cannot be resolved"));
}

#[test]
fn versions_from_source_status() {
    let content = [1; 32];
    let p = huren_core::pseudonym::Pseudonym::from_bytes([5; 32]);
    let report = [2; 32];
    let prev = |version, voided| ResultState {
        version,
        content,
        report_sha256: report,
        voided,
        patient: Some(p),
    };
    let q = |v, s: Status| match decide(
        Some(&prev(v, false)),
        &SourceStatus::Corrected,
        &[3; 32],
        &report,
        &p,
    ) {
        Decision::Queue {
            version, status, ..
        } => (version, status) == (v + 1, s),
        _ => false,
    };
    assert!(q(1, Status::Amended));
    assert_eq!(
        decide(None, &SourceStatus::Final, &content, &report, &p),
        Decision::Queue {
            version: 1,
            status: Status::Final,
            reason: String::new()
        }
    );
    assert_eq!(
        decide(
            Some(&prev(1, false)),
            &SourceStatus::Final,
            &content,
            &[9; 32],
            &p
        ),
        Decision::Duplicate,
        "a re-sent message with the same results is not a new version"
    );
    assert!(matches!(
        decide(
            Some(&prev(2, false)),
            &SourceStatus::Void,
            &content,
            &report,
            &p
        ),
        Decision::Queue {
            version: 3,
            status: Status::Voided,
            ..
        }
    ));
    assert_eq!(
        decide(
            Some(&prev(3, true)),
            &SourceStatus::Void,
            &content,
            &report,
            &p
        ),
        Decision::Duplicate
    );
    assert!(matches!(
        decide(None, &SourceStatus::Void, &content, &report, &p),
        Decision::Skip(_)
    ));
    assert!(matches!(
        decide(
            None,
            &SourceStatus::NotFinal("P".into()),
            &content,
            &report,
            &p
        ),
        Decision::Skip(_)
    ));
}

#[test]
fn summary_id_parts() {
    assert_eq!(summary_id_part("LAB-1"), "LAB-1");
    let a = summary_id_part("血糖");
    let b = summary_id_part("血脂");
    assert_ne!(a, b);
    assert!(huren_core::summary::SummaryId::parse(&format!("X-{a}")).is_ok());
    assert!(summary_id_part("A/B").starts_with("AB_"));
}

fn test_ingestor(dir: &Path) -> Ingestor {
    let pki = huren_certs_dev::DevPki::generate().unwrap();
    let id = InstitutionId::parse("shx-prov-people").unwrap();
    let member = pki.issue_member(&id).unwrap();
    let cert = pki_types::CertificateDer::from_pem_slice(member.signing.cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    let signer = SummarySigner::from_pkcs8_pem(&member.signing.key_pem, cert).unwrap();
    Ingestor::new(
        id,
        Arc::new(signer),
        PseudonymKey::new([7; 32]),
        mapping("shx-prov-people"),
        IngestSettings::default(),
        Arc::new(Store::open(&dir.join("store")).unwrap()),
    )
}

use pki_types::pem::PemObject;

#[test]
fn ingesting_again_queues_nothing_and_a_correction_queues_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let ing = test_ingestor(dir.path());
    let first = ing.ingest(&data("hl7/oru-lab-utf8.hl7"), None).unwrap();
    assert_eq!((first.queued, first.duplicates), (4, 0));
    // The same file (after a crash before it left the inbox) and the same results re-sent
    // under another control id: nothing new.
    let again = ing.ingest(&data("hl7/oru-lab-utf8.hl7"), None).unwrap();
    assert_eq!((again.queued, again.duplicates), (0, 4));
    let resent = ing.ingest(&data("hl7/oru-lab-resent.hl7"), None).unwrap();
    assert_eq!((resent.queued, resent.duplicates), (0, 4));
    // The correction of the haemoglobin: version 2, amended; the rest unchanged.
    let corrected = ing
        .ingest(&data("hl7/oru-lab-corrected.hl7"), None)
        .unwrap();
    assert_eq!(
        (corrected.queued, corrected.amended, corrected.duplicates),
        (1, 1, 3)
    );
    let pending = ing.store().pending(100).unwrap();
    assert_eq!(pending.len(), 5);
    let last = pending.last().unwrap();
    assert_eq!(
        (last.summary_id.as_str(), last.version),
        ("LAB-20261118-00731-HGB", 2)
    );
    let s = huren_core::summary::Summary::from_body_bytes(&last.envelope.body).unwrap();
    assert_eq!(s.status, Status::Amended);
    assert_eq!(
        s.report.locator,
        "huren-report:shx-prov-people/LAB-20261118-00731-HGB/2"
    );
    // Both versions' reports are kept and served by version.
    let id = huren_core::summary::SummaryId::parse("LAB-20261118-00731-HGB").unwrap();
    let v1 = ing.store().report(&id, Some(1)).unwrap().unwrap();
    let v2 = ing.store().report(&id, None).unwrap().unwrap();
    assert_eq!(v1.bytes, data("hl7/oru-lab-utf8.hl7"));
    assert_eq!(
        (v2.version, v2.bytes),
        (2, data("hl7/oru-lab-corrected.hl7"))
    );
}

#[test]
fn a_file_with_one_bad_message_of_two_keeps_the_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let ing = test_ingestor(dir.path());
    let mut both = data("hl7/oru-lab-utf8.hl7");
    both.extend(data("hl7/bad-unknown-code.hl7"));
    let out = ing.ingest(&both, None).unwrap();
    assert_eq!(out.units, 2);
    assert_eq!(out.queued, 4);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(
        out.rejected[0].bytes.as_deref(),
        Some(&data("hl7/bad-unknown-code.hl7")[..])
    );
    assert!(!out.wholly_rejected());
}

#[test]
fn training_and_debug_messages_are_refused() {
    let good = String::from_utf8(data("hl7/oru-lab-utf8.hl7")).unwrap();
    assert!(good.contains("|P|2.5.1|"));
    for (id, word) in [("T", "training"), ("D", "debugging")] {
        let text = good.replacen("|P|2.5.1|", &format!("|{id}|2.5.1|"), 1);
        let units = parse_file(
            text.as_bytes(),
            &mapping("shx-prov-people"),
            &IngestSettings::default(),
        );
        assert_eq!(units.units.len(), 1);
        let r = units.units[0].1.as_ref().unwrap_err().join("\n");
        assert!(r.contains("MSH-11") && r.contains(word), "{r}");
        assert!(!r.contains(PATIENT_IDS[0]), "{r}");
    }
}

#[test]
fn coded_units_and_component_reference_ranges() {
    let good = String::from_utf8(data("hl7/oru-lab-utf8.hl7")).unwrap();
    let text = good.replacen(
        "|128|g/L|130-175|",
        "|128|g/L^grams per litre^UCUM|130^175|",
        1,
    );
    assert_ne!(text, good);
    let units = parse_file(
        text.as_bytes(),
        &mapping("shx-prov-people"),
        &IngestSettings::default(),
    );
    let u = units.units[0].1.as_ref().unwrap();
    let hgb = lab(&u.findings[0]);
    assert_eq!(hgb.unit, "g/L");
    assert_eq!(hgb.reference_range, "130-175");
}

/// HL7 v2.5.1 data types, component by component: OBX-6 (CE) is its identifier, else its
/// text, escapes decoded; OBX-7 (ST) as a range however the sender split it, with escapes and
/// repetitions kept.
#[test]
fn units_and_ranges_by_component_with_escapes_and_repeats() {
    let good = String::from_utf8(data("hl7/oru-lab-utf8.hl7")).unwrap();
    let read = |obx6: &str, obx7: &str| {
        let text = good.replacen("|128|g/L|130-175|", &format!("|128|{obx6}|{obx7}|"), 1);
        assert_ne!(text, good);
        let units = parse_file(
            text.as_bytes(),
            &mapping("shx-prov-people"),
            &IngestSettings::default(),
        );
        let u = units.units[0].1.as_ref().unwrap();
        let hgb = lab(&u.findings[0]);
        (hgb.unit.clone(), hgb.reference_range.clone())
    };
    assert_eq!(
        read("mg/dL^mg/dL^UCUM", "3.5^5.5"),
        ("mg/dL".into(), "3.5-5.5".into())
    );
    assert_eq!(read("^g/L^UCUM", "^175"), ("g/L".into(), "<=175".into()));
    assert_eq!(
        read("10\\S\\9/L", "130^"),
        ("10^9/L".into(), ">=130".into())
    );
    assert_eq!(
        read("g/L", "130^175^male~120^160^female"),
        ("g/L".into(), "130-175 male; 120-160 female".into())
    );
    assert_eq!(
        read("g/L", "130\\T\\175 \\F\\ adult"),
        ("g/L".into(), "130&175 | adult".into())
    );
    assert_eq!(read("g/L", ""), ("g/L".into(), String::new()));
}

fn reasons_of(bytes: &[u8]) -> String {
    parse_file(
        bytes,
        &mapping("shx-prov-people"),
        &IngestSettings::default(),
    )
    .units
    .into_iter()
    .filter_map(|(_, u)| u.err())
    .flatten()
    .collect::<Vec<_>>()
    .join("\n")
}

/// A file cut short or still being written is never read in part: a cut inside a segment
/// (no final segment terminator), an MLLP frame without its end block, a batch whose BTS-1
/// count or trailer is missing, a file header without its trailer. The same files whole are
/// read.
#[test]
fn a_file_that_is_not_whole_is_held_not_read_in_part() {
    let lab = data("hl7/oru-lab-utf8.hl7");
    let text = String::from_utf8(lab.clone()).unwrap();
    let incomplete = |bytes: &[u8]| {
        parse_file(
            bytes,
            &mapping("shx-prov-people"),
            &IngestSettings::default(),
        )
        .incomplete
    };
    let whole = |bytes: &[u8]| {
        let p = parse_file(
            bytes,
            &mapping("shx-prov-people"),
            &IngestSettings::default(),
        );
        assert!(p.incomplete.is_none(), "{:?}", p.incomplete);
        p.units.iter().filter(|(_, u)| u.is_ok()).count()
    };
    assert_eq!(whole(&lab), 1);
    // Cut inside OBX-5 ("128" becomes "12"): the last segment has no terminator.
    let at = text.find("|128|g/L|").unwrap();
    let cut = &text[..at + 3];
    let why = incomplete(cut.as_bytes()).unwrap();
    assert!(why.contains("segment terminator"), "{why}");
    // Cut right after a segment: complete as far as plain HL7 can tell, but two messages in a
    // batch whose trailer says three are not.
    let batch = |count: &str, trailer: bool| {
        let mut b = format!("FHS|^~\\&\rBHS|^~\\&\r{text}{text}");
        if trailer {
            b.push_str(&format!("BTS|{count}\rFTS|1\r"));
        }
        b
    };
    assert_eq!(whole(batch("2", true).as_bytes()), 2);
    assert_eq!(whole(batch("", true).as_bytes()), 2);
    let why = incomplete(batch("3", true).as_bytes()).unwrap();
    assert!(
        why.contains("BTS-1") && why.contains("3") && why.contains("2"),
        "{why}"
    );
    let why = incomplete(batch("", false).as_bytes()).unwrap();
    assert!(why.contains("BTS"), "{why}");
    let only_fhs = format!("FHS|^~\\&\r{text}");
    assert!(incomplete(only_fhs.as_bytes()).unwrap().contains("FTS"));
    let fts_wrong = batch("2", true).replace("FTS|1", "FTS|2");
    assert!(incomplete(fts_wrong.as_bytes()).unwrap().contains("FTS-1"));
    // MLLP: the last frame without its end block, or its closing 0x0D.
    let mllp = data("hl7/oru-ct-gb18030-mllp.hl7");
    assert_eq!(whole(&mllp), 1);
    let mut two = mllp.clone();
    two.extend_from_slice(&mllp[..mllp.len() - 2]);
    let why = incomplete(&two).unwrap();
    assert!(why.contains("end block"), "{why}");
    let why = incomplete(&mllp[..mllp.len() - 1]).unwrap();
    assert!(why.contains("0x0D"), "{why}");
    // Held files queue nothing through the ingestor either.
    let dir = tempfile::tempdir().unwrap();
    let ing = test_ingestor(dir.path());
    let out = ing.ingest(cut.as_bytes(), None).unwrap();
    assert!(out.incomplete.is_some() && out.queued == 0 && out.rejected.is_empty());
    assert_eq!(ing.store().counts().pending, 0);
}

/// An order number (OBR-3) already published for one patient and sent again for another is
/// refused, naming the order number and the conflict (no patient id), and queues nothing; a
/// voided result is not brought back by a later final or corrected message.
#[test]
fn a_new_version_never_changes_the_patient_and_nothing_follows_a_void() {
    let dir = tempfile::tempdir().unwrap();
    let ing = test_ingestor(dir.path());
    let lab = String::from_utf8(data("hl7/oru-lab-utf8.hl7")).unwrap();
    assert_eq!(ing.ingest(lab.as_bytes(), None).unwrap().queued, 4);
    let other = lab.replace(PATIENT_IDS[0], PATIENT_IDS[1]);
    let out = ing.ingest(other.as_bytes(), None).unwrap();
    assert_eq!((out.queued, out.amended, out.rejected.len()), (0, 0, 1));
    let reason = out.rejected[0].reasons.join("\n");
    assert!(
        reason.contains("OBR-3 (filler order number) \"LAB-20261118-00731\"")
            && reason.contains("another patient")
            && reason.contains("may not change the patient"),
        "{reason}"
    );
    for id in PATIENT_IDS {
        assert!(!reason.contains(id), "{reason}");
    }
    assert_eq!(ing.store().pending(100).unwrap().len(), 4);

    // Voided at the source, then sent again as final (or corrected): refused.
    let void = lab.replace("|||F|||", "|||D|||");
    let out = ing.ingest(void.as_bytes(), None).unwrap();
    assert_eq!((out.voided, out.rejected.len()), (4, 0));
    for resend in [lab.clone(), lab.replace("|||F|||", "|||C|||")] {
        let out = ing.ingest(resend.as_bytes(), None).unwrap();
        assert_eq!((out.queued, out.rejected.len()), (0, 1));
        let reason = out.rejected[0].reasons.join("\n");
        assert!(reason.contains("a voided result stays voided"), "{reason}");
    }
    assert_eq!(ing.store().pending(100).unwrap().len(), 8);
}

/// `n` copies of the example lab message, each with order numbers of its own
/// (`<prefix><k>-31`, `<prefix><k>-32`): four results each.
fn batch_of_example_messages(prefix: &str, n: usize) -> String {
    let good = String::from_utf8(data("hl7/oru-lab-utf8.hl7")).unwrap();
    (0..n)
        .map(|k| {
            good.replace("LAB-20261118-00731", &format!("{prefix}{k}-31"))
                .replace("LAB-20261118-00732", &format!("{prefix}{k}-32"))
        })
        .collect()
}

/// A batch file of many messages costs the same per result as a small one: the versions
/// decided earlier in the file are not copied for every message (they were: n messages cost
/// n²/2 copied entries, about 9 minutes for 12,000 messages).
#[test]
fn a_big_batch_file_is_read_in_linear_work() {
    let dir = tempfile::tempdir().unwrap();
    let ing = test_ingestor(dir.path());
    let messages = 400;
    let file = batch_of_example_messages("B", messages);
    let out = ing.ingest(file.as_bytes(), None).unwrap();
    assert_eq!(out.rejected.len(), 0, "{:?}", out.rejected);
    assert_eq!(out.queued, 4 * messages);
    assert!(
        out.overlay_work <= 2 * out.queued,
        "{} overlay entries for {} results",
        out.overlay_work,
        out.queued
    );
}

/// Results are queued several messages to a transaction: a correction later in the same file
/// gets version 2 both for a result already queued (the first message) and for one still
/// waiting to be (the last), and every result is queued once, in order.
#[test]
fn corrections_in_the_same_file_follow_queued_and_waiting_results() {
    let dir = tempfile::tempdir().unwrap();
    let ing = test_ingestor(dir.path());
    let corrected = String::from_utf8(data("hl7/oru-lab-corrected.hl7")).unwrap();
    let correct = |k: usize| {
        corrected
            .replace("LAB-20261118-00731", &format!("Q{k}-31"))
            .replace("LAB-20261118-00732", &format!("Q{k}-32"))
    };
    let file = format!(
        "{}{}{}",
        batch_of_example_messages("Q", 100),
        correct(0),
        correct(99)
    );
    let out = ing.ingest(file.as_bytes(), None).unwrap();
    assert_eq!(out.rejected.len(), 0, "{:?}", out.rejected);
    assert_eq!((out.queued, out.amended, out.duplicates), (402, 2, 6));
    let pending = ing.store().pending(1000).unwrap();
    assert_eq!(pending.len(), 402);
    let tail: Vec<(&str, u32)> = pending[400..]
        .iter()
        .map(|p| (p.summary_id.as_str(), p.version))
        .collect();
    assert_eq!(tail, [("Q0-31-HGB", 2), ("Q99-31-HGB", 2)]);
    assert_eq!(
        (pending[0].summary_id.as_str(), pending[0].version),
        ("Q0-31-HGB", 1)
    );
}

/// Stopped in the middle of a big file (shutdown, Ctrl-C), the ingestor keeps what it queued
/// and does not mark the file done; reading the file again queues exactly the rest.
#[test]
fn a_file_stopped_midway_resumes_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let ing = test_ingestor(dir.path());
    let file = batch_of_example_messages("S", 50);
    let units = std::cell::Cell::new(0);
    let stop_after_20 = || {
        units.set(units.get() + 1);
        units.get() > 20
    };
    let first = ing
        .ingest_until(file.as_bytes(), Some("big"), &stop_after_20)
        .unwrap();
    assert!(first.interrupted);
    assert_eq!(first.queued, 80);
    assert!(!ing.store().file_ingested("big").unwrap());
    let again = ing.ingest(file.as_bytes(), Some("big")).unwrap();
    assert!(!again.interrupted);
    assert_eq!((again.queued, again.duplicates), (120, 80));
    assert!(ing.store().file_ingested("big").unwrap());
    assert_eq!(ing.store().pending(1000).unwrap().len(), 200);
}

/// A refused message's reasons name HL7 fields as HL7 does (not the summary's internal
/// names), say each problem once with the places it occurs, and list the problems of every
/// stage together (a bad OBX and a date the summary checks refuse, in one report). FHIR
/// reasons name the resource by type and id.
#[test]
fn reasons_name_source_fields_once_and_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ing = test_ingestor(dir.path());
    let good = String::from_utf8(data("hl7/oru-lab-utf8.hl7")).unwrap();
    // Reported (OBR-22) before performed (OBX-14) for every result of the first order, and an
    // OBX without its value in the second.
    let text = good
        .replacen("20261118090000+0800", "20261101090000+0800", 1)
        .replacen("|56|U/L|", "||U/L|", 1);
    assert_ne!(text, good);
    let out = ing.ingest(text.as_bytes(), None).unwrap();
    assert_eq!(out.rejected.len(), 1);
    let reasons = &out.rejected[0].reasons;
    let all = reasons.join("\n");
    assert!(!all.contains("_ms") && !all.contains("field "), "{all}");
    let dates: Vec<&String> = reasons
        .iter()
        .filter(|r| r.contains("reported before it was performed"))
        .collect();
    assert_eq!(dates.len(), 1, "{all}");
    assert!(
        dates[0].contains("OBR-22") && dates[0].contains("\"HGB\"") && dates[0].contains("\"PLT\""),
        "{all}"
    );
    assert!(
        all.contains("OBX-5"),
        "the empty value is in the same report: {all}"
    );
    for id in PATIENT_IDS {
        assert!(!all.contains(id), "{all}");
    }

    // FHIR: the resource by type and id, its element by FHIR name.
    let fhir = String::from_utf8(data("fhir/bundle-referenced-lab.json"))
        .unwrap()
        .replace("2026-11-21T09:30:00+08:00", "2026-11-01T09:30:00+08:00");
    let out = ing.ingest(fhir.as_bytes(), None).unwrap();
    let all = out
        .rejected
        .iter()
        .flat_map(|r| r.reasons.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        all.contains("DiagnosticReport/r1 (Bundle.entry[1])") && all.contains("issued:"),
        "{all}"
    );
    assert!(!all.contains("_ms"), "{all}");
}

#[test]
fn merged_reasons() {
    let merged = merge_reasons(vec![
        "OBX 1: empty".into(),
        "OBX 2: empty".into(),
        "OBX 2: empty".into(),
        "no place".into(),
        "no place".into(),
        "OBX 3: other".into(),
    ]);
    assert_eq!(merged, ["OBX 1; OBX 2: empty", "no place", "OBX 3: other"]);
}

/// A message cut inside OBX-5 ("128" becoming "12", no unit, no status) is refused, not
/// published as a final result; so is a numeric value without its unit, and a result without
/// OBX-11 (the order's OBR-25 no longer stands in for it).
#[test]
fn a_cut_result_without_status_or_unit_is_refused() {
    let good = String::from_utf8(data("hl7/oru-lab-utf8.hl7")).unwrap();
    let at = good.find("|128|g/L|").unwrap();
    let end = good[at..].find('\r').map_or(good.len(), |e| at + e);
    let check = |text: &str, fields: &[&str]| {
        let units = parse_file(
            text.as_bytes(),
            &mapping("shx-prov-people"),
            &IngestSettings::default(),
        );
        let r = units.units[0].1.as_ref().unwrap_err().join("\n");
        for f in fields {
            assert!(r.contains(f), "{f}: {r}");
        }
        assert!(!r.contains(PATIENT_IDS[0]), "{r}");
    };
    // Cut inside the value: the rest of the line is gone.
    let cut = format!(
        "{}|12\r{}",
        &good[..at],
        &good[end..].trim_start_matches('\r')
    );
    check(&cut, &["OBX-11"]);
    // The line whole but without its unit.
    check(&good.replacen("|128|g/L|", "|128||", 1), &["OBX-6", "NM"]);
    // The line whole but without its status.
    let line = &good[at..end];
    let fields: Vec<&str> = line.split('|').collect();
    assert!(fields.len() > 7, "{line}");
    let without_status = {
        // OBX-11 is the 8th field after OBX-5's "|128".
        let mut f: Vec<String> = fields.iter().map(|s| (*s).to_owned()).collect();
        f[7] = String::new();
        f.join("|")
    };
    check(&good.replacen(line, &without_status, 1), &["OBX-11"]);
}

/// A Bundle with two patients' reports: each result's full report is a Bundle of its own
/// resources and its own patient, never the file, so a member fetching one patient's report
/// never sees the other patient (the file used to be every result's report).
#[test]
fn a_bundle_result_report_holds_only_its_own_patient() {
    let lab: serde_json::Value =
        serde_json::from_slice(&data("fhir/bundle-referenced-lab.json")).unwrap();
    let mut imaging: serde_json::Value =
        serde_json::from_slice(&data("fhir/bundle-imaging-report.json")).unwrap();
    let other = "11010519491231002X";
    imaging["entry"][0]["resource"]["identifier"][0]["value"] = other.into();
    let mut merged = lab.clone();
    let entries = merged["entry"].as_array_mut().unwrap();
    entries.extend(imaging["entry"].as_array().unwrap().iter().cloned());
    let bytes = serde_json::to_vec(&merged).unwrap();
    let units: Vec<Unit> = parse_file(
        &bytes,
        &mapping("shx-prov-people"),
        &IngestSettings::default(),
    )
    .units
    .into_iter()
    .map(|(_, u)| u.unwrap())
    .collect();
    assert_eq!(units.len(), 2);
    let mut seen = Vec::new();
    for u in &units {
        let f = &u.findings[0];
        let report = &u.reports[0];
        assert_ne!(
            report.sha256,
            sha256(&bytes),
            "{}: the whole file is its report",
            u.label
        );
        let text = std::str::from_utf8(&report.bytes).unwrap();
        let own_lab = f.draft.patient == ric("610122198807222047");
        let (own, not_own) = match own_lab {
            true => ("610122198807222047", other),
            false => (other, "610122198807222047"),
        };
        assert!(
            text.contains(own) && !text.contains(not_own),
            "{}: {text}",
            u.label
        );
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(parsed["resourceType"], "Bundle");
        assert_eq!(parsed["type"], "collection");
        seen.push(own_lab);
        // Its own results are in it; the other report's are not.
        if own_lab {
            assert!(text.contains("o-hgb") && text.contains("o-plt") && !text.contains("st-88"));
        } else {
            assert!(text.contains("st-88") && !text.contains("o-hgb"));
        }
    }
    seen.sort();
    assert_eq!(seen, [false, true]);
    // The whole two-patient file, which older agents stored as each result's report, is
    // recognised so that the repository refuses to serve it; each result's own Bundle is not.
    use crate::ingest::fhir::{FHIR_MEDIA_TYPE, holds_several_patients};
    assert!(holds_several_patients(FHIR_MEDIA_TYPE, &bytes));
    for u in &units {
        assert!(
            !holds_several_patients(FHIR_MEDIA_TYPE, &u.reports[0].bytes),
            "{}",
            u.label
        );
    }
    assert!(!holds_several_patients("application/pdf", &bytes));
    assert!(!holds_several_patients(
        FHIR_MEDIA_TYPE,
        &data("fhir/bundle-referenced-lab.json")
    ));
}
