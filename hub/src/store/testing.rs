//! Summaries and queries the stores' tests share.

use huren_core::identity::InstitutionId;
use huren_core::pseudonym::Pseudonym;
use huren_core::signing::VerifiedSummary;
use huren_core::summary::{Summary, UnixMillis};

use super::PriorQuery;

/// A summary of hosp-a's result `id` for `patient`, as the store receives it once verified
/// (the store keeps the envelope's bytes; it does not check the signature again).
pub(crate) fn verified(
    id: &str,
    version: u32,
    patient: Pseudonym,
    performed_at: i64,
) -> VerifiedSummary {
    use huren_core::summary::{
        AbnormalFlag, Category, Item, LabResult, Outcome, ReportRef, Status, SummaryId,
    };
    let (status, status_reason) = match version {
        1 => (Status::Final, String::new()),
        _ => (Status::Amended, "corrected".to_owned()),
    };
    let summary = Summary {
        id: SummaryId::parse(id).unwrap(),
        version,
        publisher: InstitutionId::parse("hosp-a").unwrap(),
        patient,
        item: Item {
            system: "loinc".into(),
            code: "718-7".into(),
            display: "血红蛋白".into(),
            local_code: "HGB".into(),
        },
        category: Category::Lab,
        performed_at: UnixMillis(performed_at),
        reported_at: UnixMillis(performed_at + 1),
        outcome: Outcome::Lab(LabResult {
            value: format!("13{version}"),
            unit: "g/L".into(),
            reference_range: "130-175".into(),
            flag: AbnormalFlag::Normal,
            specimen: "whole blood".into(),
        }),
        report: ReportRef {
            sha256: [9; 32],
            locator: format!("huren-report:hosp-a/{id}"),
            media_type: "application/pdf".into(),
        },
        status,
        status_reason,
    };
    let body = summary.to_body_bytes();
    VerifiedSummary {
        body_sha256: huren_core::signing::sha256(&body),
        envelope: huren_core::signing::SignedEnvelope {
            body,
            signature: [1; 64],
            signer_certificate: b"a test certificate".to_vec(),
        },
        summary,
    }
}

/// A query for `p`'s hemoglobin results performed in `[from, until]`.
pub(crate) fn hemoglobin(p: Pseudonym, from: i64, until: i64) -> PriorQuery {
    PriorQuery {
        patient: p,
        items: vec![("loinc".into(), "718-7".into())],
        from: UnixMillis(from),
        until: UnixMillis(until),
        limit: 10,
    }
}
