//! One result in no particular input format: what every reader (the `huren-results/1` JSON of
//! `results.rs`, HL7 v2 and FHIR in `ingest/`) produces, and the one place it becomes a
//! [`Summary`]. The patient id is pseudonymised here and dropped; the summary then passes the
//! same checks the hub makes, so a bad result is caught before anything is signed or sent.

use huren_core::identity::InstitutionId;
use huren_core::pseudonym::{PatientId, PseudonymKey};
use huren_core::summary::{
    BodyError, Category, Item, Outcome, ReportRef, Status, Summary, SummaryId, UnixMillis,
};

/// A result read from some input, before pseudonymisation and signing.
#[derive(Clone, Debug)]
pub struct ResultDraft {
    /// The hospital's id for the result; checked by [`SummaryId::parse`].
    pub id: String,
    pub version: u32,
    pub status: Status,
    /// Required for amended and voided versions.
    pub status_reason: String,
    /// The patient as the hospital identifies them (never leaves the agent).
    pub patient: PatientId,
    /// The catalogue item (already mapped from the local code).
    pub item: Item,
    pub category: Category,
    pub performed_at: UnixMillis,
    pub reported_at: UnixMillis,
    pub outcome: Outcome,
    /// SHA-256 of the full report the agent can serve (or that the export already computed).
    pub report_sha256: [u8; 32],
    /// Where the report is served; default `huren-report:<institution>/<id>/<version>`.
    pub report_locator: Option<String>,
    pub report_media_type: String,
}

impl ResultDraft {
    /// The summary of `publisher` for this result, validated exactly as the hub validates it.
    pub fn into_summary(
        self,
        publisher: &InstitutionId,
        key: &PseudonymKey,
    ) -> Result<Summary, String> {
        let id = SummaryId::parse(&self.id).map_err(|e| e.to_string())?;
        let locator = self
            .report_locator
            .unwrap_or_else(|| default_locator(publisher, &id, self.version));
        let summary = Summary {
            id,
            version: self.version,
            publisher: publisher.clone(),
            patient: key
                .pseudonymise_checked(&self.patient)
                .map_err(|e| e.to_string())?,
            item: self.item,
            category: self.category,
            performed_at: self.performed_at,
            reported_at: self.reported_at,
            outcome: self.outcome,
            report: ReportRef {
                sha256: self.report_sha256,
                locator,
                media_type: self.report_media_type,
            },
            status: self.status,
            status_reason: self.status_reason,
        };
        // The same checks the hub makes, so a bad entry is caught here, before anything is sent.
        let summary = Summary::from_body_bytes(&summary.to_body_bytes())
            .map_err(|e: BodyError| e.to_string())?;
        check_not_future(&summary, UnixMillis::now().0)?;
        Ok(summary)
    }
}

/// How far past this computer's clock a result's time may lie: the hub's default
/// (`[limits] max_clock_skew_seconds`), so what the agent signs the hub accepts.
pub const MAX_CLOCK_SKEW_MS: i64 = 600_000;

/// Refuses a result performed or reported later than `now_ms` plus [`MAX_CLOCK_SKEW_MS`]: a
/// result from the future is a wrong LIS clock or time zone, and would otherwise be signed,
/// then refused by the hub and retried for ever.
fn check_not_future(summary: &Summary, now_ms: i64) -> Result<(), String> {
    let latest = now_ms.saturating_add(MAX_CLOCK_SKEW_MS);
    for (field, t) in [
        ("performed_at_ms", summary.performed_at),
        ("reported_at_ms", summary.reported_at),
    ] {
        if t.0 > latest {
            return Err(format!(
                "field {field}: the time is {} minutes ahead of this computer's clock (at most {} are allowed); check the sending system's clock and time zone",
                (t.0 - now_ms) / 60_000,
                MAX_CLOCK_SKEW_MS / 60_000
            ));
        }
    }
    Ok(())
}

/// `huren-report:<institution>/<summary id>/<version>`: where a member's agent serves a report.
pub fn default_locator(publisher: &InstitutionId, id: &SummaryId, version: u32) -> String {
    format!("huren-report:{publisher}/{id}/{version}")
}
