//! A FHIR R4 read API over verified results: what an EMR needs to show a patient's prior
//! results from the alliance.
//!
//! - `GET /fhir/metadata`: the CapabilityStatement, stating exactly what is below.
//! - `GET /fhir/DiagnosticReport?…`, `GET /fhir/Observation?…`: searchset Bundles. Parameters:
//!   `patient.identifier=system|value` (required), `code` (token, `system|code`, `code`,
//!   comma = or; this member's local codes are mapped), `date` (`eq ne lt le gt ge` prefixes,
//!   repeatable), `category`, `_count` (0 to 100, default 20), `_offset` (paging), `_format`
//!   (json) and `purpose-of-use`. Any other parameter is refused (400).
//! - `GET /fhir/DiagnosticReport/{id}`, `GET /fhir/Observation/{id}`: a result handed out by a
//!   search or card, asked of the hub again.
//! - `GET /fhir/Binary/{id}`: the full report, fetched from the publisher's repository and
//!   checked against the SHA-256 in the signed summary.
//!
//! Each resource is built from a verified summary: the publisher is the performer (a logical
//! Organization reference with its institution id), the recognition verdict for this member is
//! the extension [`RECOGNITION`], the signed summary and its log leaf are the extension
//! [`SIGNED_SUMMARY`] and the tag [`LOG_LEAF`]. Errors are OperationOutcomes with the HTTP
//! status. The purpose of use comes from the `X-Purpose-Of-Use` header or the
//! `purpose-of-use` parameter (default `[ehr] default_purpose`); only `emergency` (break-glass)
//! reads a patient who opted out. Every search and read is a hub query, in the hub's access
//! audit with the requester.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::{Value, json};

use huren_core::logentry::{Purpose, summary_leaf};
use huren_core::rules::{Reason, Verdict};
use huren_core::summary::{AbnormalFlag, Category, Outcome, Status, SummaryId, UnixMillis};

use super::auth::{Caller, requester};
use super::{Asking, EhrError, EhrState, FhirIdentifier, HandedOut, fhir_time};
use crate::mapping::Lookup;
use crate::verify::VerifiedResult;

/// The recognition verdict extension (complex): `recognised` (boolean), `mark` (string, e.g.
/// 全国HR), `validUntil` (dateTime), `reason` (Coding of [`REASON_SYSTEM`], repeated), `asker`
/// (the institution id the verdict is for).
pub const RECOGNITION: &str = "urn:huren:fhir:extension:recognition";
/// The signed summary behind a resource (complex): `publisher`, `summaryId`, `version`,
/// `bodySha256` (hex), `acceptedAt` (instant the hub accepted it), `reportSha256` (hex).
pub const SIGNED_SUMMARY: &str = "urn:huren:fhir:extension:signed-summary";
/// meta.tag system whose code is the hex SHA-256 leaf hash (RFC 6962) of the summary's entry
/// in the hub's log: the reference an inclusion proof is asked and checked for.
pub const LOG_LEAF: &str = "urn:huren:log-leaf-sha256";
/// Why a result is not recognised.
pub const REASON_SYSTEM: &str = "urn:huren:not-recognised-reason";
/// Identifier system of a member institution (performer references).
pub const INSTITUTION_SYSTEM: &str = "urn:huren:institution";

const V2_0074: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
const MAX_COUNT: usize = 100;
const DEFAULT_COUNT: usize = 20;
const MAX_OFFSET: usize = 10_000;

pub fn routes() -> Router<Arc<EhrState>> {
    Router::new()
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/DiagnosticReport", get(search_reports))
        .route("/fhir/Observation", get(search_observations))
        .route("/fhir/DiagnosticReport/{id}", get(read_report))
        .route("/fhir/Observation/{id}", get(read_observation))
        .route("/fhir/Binary/{id}", get(read_binary))
        .route("/fhir/{*rest}", get(unknown))
}

/// The FHIR id of a result (all its versions): 32 hex characters of
/// SHA-256(publisher, 0x00, summary id).
pub fn resource_id(publisher: &str, summary_id: &str) -> String {
    let mut input = Vec::with_capacity(publisher.len() + summary_id.len() + 1);
    input.extend_from_slice(publisher.as_bytes());
    input.push(0);
    input.extend_from_slice(summary_id.as_bytes());
    hex::encode(&huren_core::signing::sha256(&input)[..16])
}

fn fhir_json(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}

/// An OperationOutcome for an error, with its status.
pub fn outcome(e: &EhrError, what: &str) -> Response {
    let status = e.logged_status(what);
    let code = match status.as_u16() {
        400 => "invalid",
        401 => "login",
        403 => "forbidden",
        404 => "not-found",
        409 => "conflict",
        422 => "processing",
        503 => "transient",
        504 => "timeout",
        _ => "exception",
    };
    let mut r = fhir_json(
        status,
        &json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": code,
                "diagnostics": e.to_string(),
            }]
        }),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"huren-fhir\""),
        );
    }
    r
}

async fn unknown() -> Response {
    outcome(
        &EhrError::NotFound(
            "not supported here: see GET /fhir/metadata for the resources and interactions this server has".into(),
        ),
        "fhir",
    )
}

/// Authentication and purpose of a FHIR call.
fn authenticate(state: &EhrState, headers: &HeaderMap) -> Result<Caller, EhrError> {
    state
        .auth
        .check(headers, &[format!("{}/fhir", state.config.base_url)])
}

fn purpose_of(
    state: &EhrState,
    headers: &HeaderMap,
    param: Option<&str>,
) -> Result<Purpose, EhrError> {
    let header = headers
        .get("x-purpose-of-use")
        .map(|v| {
            v.to_str()
                .map_err(|_| EhrError::BadRequest("X-Purpose-Of-Use is not text".into()))
        })
        .transpose()?;
    match param.or(header) {
        None => Ok(state.default_purpose),
        Some(p) => super::parse_purpose(p).ok_or_else(|| {
            EhrError::BadRequest(format!(
                "purpose of use {p:?} is not one of treatment, referral, emergency, patient-request, administration, quality-control (or TREAT, COC, ETREAT, PATRQT, HOPERAT, HQUALIMP)"
            ))
        }),
    }
}

fn asking(caller: &Caller, purpose: Purpose) -> Asking {
    Asking::new(purpose).by(requester(&caller.issuer, caller.user.as_deref()))
}

async fn metadata(State(state): State<Arc<EhrState>>) -> Response {
    fhir_json(StatusCode::OK, &capability_statement(&state))
}

/// The CapabilityStatement: exactly the interactions and parameters served here.
pub fn capability_statement(state: &EhrState) -> Value {
    let base = format!("{}/fhir", state.config.base_url);
    let search_params = |category_doc: &str| {
        json!([
            {"name": "patient", "type": "reference", "documentation": "Required, and only as the chain patient.identifier=system|value: the patient's identifier (e.g. the resident identity card number) with a system configured in [ehr] identifier_systems. It is pseudonymised on this agent and never leaves it."},
            {"name": "code", "type": "token", "documentation": "system|code or code; several separated by commas match any. LOINC or the alliance catalogue's codes, or this hospital's local codes (mapped with its mapping file)."},
            {"name": "date", "type": "date", "documentation": "When the test or exam was performed. Prefixes eq, ne, lt, le, gt, ge; repeat the parameter for a range. Dates without a time zone are in the agent's display offset."},
            {"name": "category", "type": "token", "documentation": category_doc},
            {"name": "purpose-of-use", "type": "token", "documentation": "Purpose of use (also the X-Purpose-Of-Use header): treatment, referral, emergency, patient-request, administration, quality-control, or HL7 v3 TREAT, COC, ETREAT, PATRQT, HOPERAT, HQUALIMP. Only emergency (break-glass) reads a patient who opted out of sharing, and is audited as such."},
        ])
    };
    let resource_doc = format!(
        "Results from the alliance's members, each verified on this agent (publisher's signature, the hub's receipt and log proof). performer: the publishing member, as an Organization identifier of system {INSTITUTION_SYSTEM}. Extension {RECOGNITION}: the recognition verdict for this member (recognised: boolean; mark: the HR mark such as 全国HR; validUntil: dateTime; reason: Coding of {REASON_SYSTEM}, one per reason it is not recognised; asker: the institution id the verdict is for). Extension {SIGNED_SUMMARY}: the signed summary (publisher, summaryId, version, bodySha256, acceptedAt, reportSha256). meta.tag of system {LOG_LEAF}: the RFC 6962 leaf hash of its entry in the hub's log. Results: _count (0 to 100, default 20) per page, _offset for paging (use the Bundle's next link). Unknown parameters are refused with 400."
    );
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": super::fhir_date(UnixMillis::now().0, state.utc_offset),
        "publisher": "Huren",
        "kind": "instance",
        "software": {"name": "huren-agent", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {
            "description": format!("Huren node agent of {}: prior results across the alliance, read only", state.agent.institution()),
            "url": base,
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "Read only. Every search and read is a query at the alliance hub, recorded in its access audit with the purpose of use and the requester (ehr:<issuer>[:<user>]).",
            "security": {
                "cors": false,
                "description": "Authorization: Bearer <JWT> signed by a configured EHR issuer (as CDS Hooks 2.0 specifies: iss, aud = this base URL, exp at most 5 minutes ahead, iat, unique jti). Calls without a valid token get 401.",
            },
            "resource": [
                {
                    "type": "DiagnosticReport",
                    "documentation": resource_doc,
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "versioning": "no-version",
                    "readHistory": false,
                    "updateCreate": false,
                    "conditionalRead": "not-supported",
                    "searchParam": search_params("v2-0074 codes: LAB (lab tests), RAD (imaging), EC (electrophysiology), NMS (nuclear medicine)."),
                },
                {
                    "type": "Observation",
                    "documentation": resource_doc,
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "versioning": "no-version",
                    "readHistory": false,
                    "updateCreate": false,
                    "conditionalRead": "not-supported",
                    "searchParam": search_params("observation-category codes: laboratory, imaging (imaging and nuclear medicine), procedure (electrophysiology)."),
                },
                {
                    "type": "Binary",
                    "documentation": "The full report of a DiagnosticReport (same id), fetched from the publishing member's repository and checked against the SHA-256 in its signed summary. As the report's own media type (served as an attachment), or as a Binary resource when Accept asks for application/fhir+json.",
                    "interaction": [{"code": "read"}],
                },
            ],
        }],
    })
}

/// The search parameters of one call.
#[derive(Debug, Default)]
struct Search {
    identifier: Option<(String, String)>,
    codes: Vec<(Option<String>, String)>,
    dates: Vec<DateBound>,
    categories: Vec<(Option<String>, String)>,
    count: usize,
    offset: usize,
    purpose: Option<String>,
    /// The parameters as given (for the self and next links).
    given: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy)]
enum Prefix {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A date parameter: the prefix and the range `[lo, hi)` its value covers.
#[derive(Debug, Clone, Copy)]
struct DateBound {
    prefix: Prefix,
    lo: i64,
    hi: i64,
}

impl DateBound {
    fn matches(&self, t: i64) -> bool {
        match self.prefix {
            Prefix::Eq => self.lo <= t && t < self.hi,
            Prefix::Ne => !(self.lo <= t && t < self.hi),
            Prefix::Lt => t < self.lo,
            Prefix::Le => t < self.hi,
            Prefix::Gt => t >= self.hi,
            Prefix::Ge => t >= self.lo,
        }
    }

    /// The earliest time that can match, when the bound gives one.
    fn earliest(&self) -> Option<i64> {
        match self.prefix {
            Prefix::Eq | Prefix::Ge => Some(self.lo),
            Prefix::Gt => Some(self.hi),
            _ => None,
        }
    }
}

fn token(v: &str) -> (Option<String>, String) {
    match v.split_once('|') {
        Some((system, code)) => (
            Some(system.to_owned()).filter(|s| !s.is_empty()),
            code.to_owned(),
        ),
        None => (None, v.to_owned()),
    }
}

/// Parses a FHIR date search value into `[lo, hi)` Unix milliseconds.
fn date_range(v: &str, offset_seconds: i32) -> Result<(i64, i64), String> {
    use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};
    let bad = || {
        format!("date value {v:?} is not YYYY, YYYY-MM, YYYY-MM-DD or a dateTime with a time zone")
    };
    let offset = UtcOffset::from_whole_seconds(offset_seconds).map_err(|_| bad())?;
    let at = |y: i32, m: u8, d: u8| -> Result<i64, String> {
        let month = Month::try_from(m).map_err(|_| bad())?;
        let date = Date::from_calendar_date(y, month, d).map_err(|_| bad())?;
        let t = PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_offset(offset);
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let num = |s: &str| s.parse::<i32>().map_err(|_| bad());
    if v.contains('T') {
        let t = OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
            .map_err(|_| bad())?;
        let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())?;
        // Precision: to the second (or the millisecond when given).
        let width = if v.contains('.') { 1 } else { 1000 };
        let lo = ms - ms.rem_euclid(width);
        return Ok((lo, lo + width));
    }
    let parts: Vec<&str> = v.split('-').collect();
    match parts.as_slice() {
        [y] if digits(y, 4) => {
            let y = num(y)?;
            Ok((at(y, 1, 1)?, at(y + 1, 1, 1)?))
        }
        [y, m] if digits(y, 4) && digits(m, 2) => {
            let (y, m) = (num(y)?, u8::try_from(num(m)?).map_err(|_| bad())?);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Ok((at(y, m, 1)?, at(ny, nm, 1)?))
        }
        [y, m, d] if digits(y, 4) && digits(m, 2) && digits(d, 2) => {
            let (y, m, d) = (
                num(y)?,
                u8::try_from(num(m)?).map_err(|_| bad())?,
                u8::try_from(num(d)?).map_err(|_| bad())?,
            );
            let lo = at(y, m, d)?;
            Ok((lo, lo + 86_400_000))
        }
        _ => Err(bad()),
    }
}

fn parse_search(query: Option<&str>, offset_seconds: i32) -> Result<Search, EhrError> {
    let bad = |m: String| EhrError::BadRequest(m);
    let mut s = Search {
        count: DEFAULT_COUNT,
        ..Default::default()
    };
    let query = query.unwrap_or("");
    if query.len() > 8192 {
        return Err(bad("the query string is longer than 8192 bytes".into()));
    }
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let (k, v) = (k.into_owned(), v.into_owned());
        match k.as_str() {
            "patient.identifier" => {
                if s.identifier.is_some() {
                    return Err(bad(
                        "patient.identifier is given twice; search one patient at a time".into(),
                    ));
                }
                let (system, value) = v.split_once('|').ok_or_else(|| {
                    bad("patient.identifier must be system|value (the identifier's system, a bar, its value)".into())
                })?;
                if system.is_empty() || value.is_empty() {
                    return Err(bad(
                        "patient.identifier needs both system and value: system|value".into(),
                    ));
                }
                s.identifier = Some((system.to_owned(), value.to_owned()));
            }
            "code" => s
                .codes
                .extend(v.split(',').filter(|c| !c.is_empty()).map(token)),
            "category" => s
                .categories
                .extend(v.split(',').filter(|c| !c.is_empty()).map(token)),
            "date" => {
                let (prefix, value) = match v.get(..2) {
                    Some("eq") => (Prefix::Eq, &v[2..]),
                    Some("ne") => (Prefix::Ne, &v[2..]),
                    Some("lt") => (Prefix::Lt, &v[2..]),
                    Some("le") => (Prefix::Le, &v[2..]),
                    Some("gt") => (Prefix::Gt, &v[2..]),
                    Some("ge") => (Prefix::Ge, &v[2..]),
                    Some("sa" | "eb" | "ap") => {
                        return Err(bad(format!(
                            "date prefix {:?} is not supported; use eq, ne, lt, le, gt or ge",
                            &v[..2]
                        )));
                    }
                    _ => (Prefix::Eq, v.as_str()),
                };
                let (lo, hi) = date_range(value, offset_seconds).map_err(bad)?;
                s.dates.push(DateBound { prefix, lo, hi });
            }
            "_count" => {
                s.count = v
                    .parse::<usize>()
                    .ok()
                    .filter(|c| *c <= MAX_COUNT)
                    .ok_or_else(|| bad(format!("_count must be a number from 0 to {MAX_COUNT}")))?;
            }
            "_offset" => {
                s.offset = v
                    .parse::<usize>()
                    .ok()
                    .filter(|c| *c <= MAX_OFFSET)
                    .ok_or_else(|| {
                        bad(format!("_offset must be a number from 0 to {MAX_OFFSET}"))
                    })?;
            }
            "_format" => {
                if !matches!(
                    v.as_str(),
                    "json" | "application/fhir+json" | "application/json"
                ) {
                    return Err(bad(format!("_format {v:?}: only json is served")));
                }
            }
            "purpose-of-use" => s.purpose = Some(v.clone()),
            other => {
                return Err(bad(format!(
                    "search parameter {other:?} is not supported; supported: patient.identifier, code, date, category, _count, _offset, _format, purpose-of-use"
                )));
            }
        }
        if k != "_offset" {
            s.given.push((k, v));
        }
    }
    Ok(s)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Report,
    Observation,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Report => "DiagnosticReport",
            Kind::Observation => "Observation",
        }
    }
}

/// (system, code, display) of a result's category for each resource type.
fn category_coding(kind: Kind, c: Category) -> (&'static str, &'static str, &'static str) {
    match (kind, c) {
        (Kind::Report, Category::Lab) => (V2_0074, "LAB", "Laboratory"),
        (Kind::Report, Category::Imaging) => (V2_0074, "RAD", "Radiology"),
        (Kind::Report, Category::Electrophysiology) => (V2_0074, "EC", "Electrocardiac"),
        (Kind::Report, Category::NuclearMedicine) => (V2_0074, "NMS", "Nuclear Medicine Scan"),
        (Kind::Observation, Category::Lab) => (OBS_CATEGORY, "laboratory", "Laboratory"),
        (Kind::Observation, Category::Imaging | Category::NuclearMedicine) => {
            (OBS_CATEGORY, "imaging", "Imaging")
        }
        (Kind::Observation, Category::Electrophysiology) => {
            (OBS_CATEGORY, "procedure", "Procedure")
        }
    }
}

async fn search_reports(
    State(state): State<Arc<EhrState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    search(&state, &headers, query.as_deref(), Kind::Report).await
}

async fn search_observations(
    State(state): State<Arc<EhrState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    search(&state, &headers, query.as_deref(), Kind::Observation).await
}

async fn search(
    state: &EhrState,
    headers: &HeaderMap,
    query: Option<&str>,
    kind: Kind,
) -> Response {
    match search_bundle(state, headers, query, kind).await {
        Ok(b) => fhir_json(StatusCode::OK, &b),
        Err(e) => outcome(&e, kind.name()),
    }
}

fn refuse_withheld(purpose: Purpose) -> EhrError {
    let _ = purpose;
    EhrError::Forbidden(
        "the patient opted out of sharing results across the alliance; only an emergency (break-glass) read sees them: state purpose-of-use emergency (ETREAT), which is audited as such".into(),
    )
}

async fn search_bundle(
    state: &EhrState,
    headers: &HeaderMap,
    query: Option<&str>,
    kind: Kind,
) -> Result<Value, EhrError> {
    let caller = authenticate(state, headers)?;
    let search = parse_search(query, state.utc_offset)?;
    let purpose = purpose_of(state, headers, search.purpose.as_deref())?;
    let (system, value) = search.identifier.clone().ok_or_else(|| {
        EhrError::BadRequest(
            "patient.identifier=system|value is required: this server answers for one patient at a time".into(),
        )
    })?;
    let patient = state.patient_of(&[FhirIdentifier {
        system: &system,
        value: &value,
        type_codes: Vec::new(),
    }])?;
    // Codes: this member's local codes become catalogue codes.
    let codes: Vec<(Option<String>, String)> = search
        .codes
        .iter()
        .map(
            |(system, code)| match state.mapping.as_ref().map(|m| m.local(code)) {
                Some(Lookup::Mapped(m)) if system.is_none() => {
                    (Some(m.item.system.clone()), m.item.code.clone())
                }
                _ => (system.clone(), code.clone()),
            },
        )
        .collect();
    let since = search
        .dates
        .iter()
        .filter_map(DateBound::earliest)
        .max()
        .unwrap_or(0);
    let asking = asking(&caller, purpose);
    let answer = tokio::time::timeout(
        state.hub_timeout() * 5,
        state
            .agent
            .history(&asking, &patient, UnixMillis(since), false),
    )
    .await
    .map_err(|_| EhrError::Timeout)?
    .map_err(EhrError::Upstream)?;
    if answer.withheld_by_consent {
        return Err(refuse_withheld(purpose));
    }
    let matching: Vec<&VerifiedResult> = answer
        .results
        .iter()
        .filter(|r| {
            let s = &r.summary;
            let code_ok = codes.is_empty()
                || codes.iter().any(|(sys, code)| {
                    *code == s.item.code && sys.as_ref().is_none_or(|x| *x == s.item.system)
                });
            let (csys, ccode, _) = category_coding(kind, s.category);
            let category_ok = search.categories.is_empty()
                || search.categories.iter().any(|(sys, code)| {
                    code.eq_ignore_ascii_case(ccode) && sys.as_ref().is_none_or(|x| x == csys)
                });
            let date_ok = search.dates.iter().all(|d| d.matches(s.performed_at.0));
            code_ok && category_ok && date_ok
        })
        .collect();
    let total = matching.len();
    let base = format!("{}/fhir", state.config.base_url);
    let link = |offset: usize| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &search.given {
            q.append_pair(k, v);
        }
        if offset > 0 {
            q.append_pair("_offset", &offset.to_string());
        }
        format!("{base}/{}?{}", kind.name(), q.finish())
    };
    let mut links = vec![json!({"relation": "self", "url": link(search.offset)})];
    if search.count > 0 && search.offset + search.count < total {
        links.push(json!({"relation": "next", "url": link(search.offset + search.count)}));
    }
    if search.offset > 0 {
        links.push(json!({"relation": "previous", "url": link(search.offset.saturating_sub(search.count.max(1)))}));
    }
    let mut entries = Vec::new();
    for r in matching.iter().skip(search.offset).take(search.count) {
        let id = remember(state, r);
        let resource = match kind {
            Kind::Report => diagnostic_report(state, r, &id),
            Kind::Observation => observation(state, r, &id),
        };
        entries.push(json!({
            "fullUrl": format!("{base}/{}/{id}", kind.name()),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    if !answer.failed.is_empty() || answer.truncated {
        let mut issues: Vec<Value> = answer
            .failed
            .iter()
            .map(|f| {
                json!({
                    "severity": "warning",
                    "code": "security",
                    "diagnostics": format!("a result the hub returned ({}) failed verification and is left out: {}", f.claimed, f.reason),
                })
            })
            .collect();
        if answer.truncated {
            issues.push(json!({
                "severity": "information",
                "code": "incomplete",
                "diagnostics": "the hub holds more results than one answer carries; narrow the search with date",
            }));
        }
        entries.push(json!({
            "resource": {"resourceType": "OperationOutcome", "issue": issues},
            "search": {"mode": "outcome"},
        }));
    }
    Ok(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    }))
}

/// Remembers a result's id for reads, and returns it.
fn remember(state: &EhrState, r: &VerifiedResult) -> String {
    let s = &r.summary;
    let id = resource_id(s.publisher.as_str(), s.id.as_str());
    state.ids.insert(
        id.clone(),
        HandedOut {
            patient: s.patient,
            item: (s.item.system.clone(), s.item.code.clone()),
            publisher: s.publisher.to_string(),
            summary_id: s.id.to_string(),
        },
    );
    id
}

fn status_code(s: Status) -> &'static str {
    match s {
        Status::Final => "final",
        Status::Amended => "amended",
        Status::Voided => "entered-in-error",
    }
}

fn reason_code(r: Reason) -> &'static str {
    match r {
        Reason::NotInCatalogue => "not-in-catalogue",
        Reason::OutsideValidityWindow => "outside-validity-window",
        Reason::PublisherNotQualified => "publisher-not-qualified",
        Reason::Direction => "direction",
        Reason::Voided => "voided",
        Reason::Superseded => "superseded",
        Reason::OutsideScope => "outside-scope",
        Reason::PublisherRevoked => "publisher-revoked",
    }
}

fn recognition_extension(state: &EhrState, v: Option<&Verdict>) -> Option<Value> {
    let v = v?;
    let mut parts = vec![json!({"url": "recognised", "valueBoolean": v.recognised()})];
    if let Some(mark) = &v.hr_mark {
        parts.push(json!({"url": "mark", "valueString": mark}));
    }
    if let Some(until) = v.valid_until {
        parts.push(
            json!({"url": "validUntil", "valueDateTime": fhir_time(until.0, state.utc_offset)}),
        );
    }
    for (r, text) in &v.reasons {
        parts.push(json!({"url": "reason", "valueCoding": {"system": REASON_SYSTEM, "code": reason_code(*r), "display": text}}));
    }
    parts.push(json!({"url": "asker", "valueString": state.agent.institution().as_str()}));
    Some(json!({"url": RECOGNITION, "extension": parts}))
}

/// What every resource built from a result carries: meta, extensions, code, times, performer.
fn common(state: &EhrState, r: &VerifiedResult, id: &str) -> serde_json::Map<String, Value> {
    let s = &r.summary;
    let e = &r.envelope;
    let leaf = summary_leaf(
        &e.body,
        &e.signature,
        &e.signer_certificate,
        r.receipt.accepted_at,
    );
    let leaf_hash = huren_core::merkle::leaf_hash(&leaf);
    let mut extensions = Vec::new();
    extensions.extend(recognition_extension(state, r.verdict.as_ref()));
    extensions.push(json!({
        "url": SIGNED_SUMMARY,
        "extension": [
            {"url": "publisher", "valueString": s.publisher.as_str()},
            {"url": "summaryId", "valueString": s.id.as_str()},
            {"url": "version", "valueInteger": s.version},
            {"url": "bodySha256", "valueString": hex::encode(r.receipt.body_sha256)},
            {"url": "acceptedAt", "valueInstant": fhir_time(r.receipt.accepted_at.0, state.utc_offset)},
            {"url": "reportSha256", "valueString": hex::encode(s.report.sha256)},
        ]
    }));
    let mut m = serde_json::Map::new();
    m.insert("id".into(), json!(id));
    m.insert(
        "meta".into(),
        json!({
            "versionId": s.version.to_string(),
            "lastUpdated": fhir_time(r.receipt.accepted_at.0, state.utc_offset),
            "tag": [{"system": LOG_LEAF, "code": hex::encode(leaf_hash), "display": "hub log entry (RFC 6962 leaf hash)"}],
        }),
    );
    m.insert("extension".into(), Value::Array(extensions));
    m.insert(
        "identifier".into(),
        json!([{"system": format!("urn:huren:result:{}", s.publisher), "value": s.id.as_str()}]),
    );
    m.insert("status".into(), json!(status_code(s.status)));
    let mut coding = json!({"system": s.item.system, "code": s.item.code});
    if !s.item.display.is_empty() {
        coding["display"] = json!(s.item.display);
    }
    let mut code = json!({"coding": [coding]});
    if !s.item.display.is_empty() {
        code["text"] = json!(s.item.display);
    }
    m.insert("code".into(), code);
    m.insert(
        "effectiveDateTime".into(),
        json!(fhir_time(s.performed_at.0, state.utc_offset)),
    );
    m.insert(
        "issued".into(),
        json!(fhir_time(s.reported_at.0, state.utc_offset)),
    );
    m.insert(
        "performer".into(),
        json!([{
            "type": "Organization",
            "identifier": {"system": INSTITUTION_SYSTEM, "value": s.publisher.as_str()},
            "display": state.member_name(s.publisher.as_str()),
        }]),
    );
    m
}

fn category(kind: Kind, c: Category) -> Value {
    let (system, code, display) = category_coding(kind, c);
    json!([{"coding": [{"system": system, "code": code, "display": display}]}])
}

/// A DiagnosticReport for a verified result.
pub fn diagnostic_report(state: &EhrState, r: &VerifiedResult, id: &str) -> Value {
    let s = &r.summary;
    let mut m = serde_json::Map::new();
    m.insert("resourceType".into(), json!("DiagnosticReport"));
    let common = common(state, r, id);
    m.extend(common);
    m.insert("category".into(), category(Kind::Report, s.category));
    match &s.outcome {
        Outcome::Lab(_) => {
            m.insert(
                "result".into(),
                json!([{"reference": format!("Observation/{id}")}]),
            );
        }
        Outcome::Exam(e) => {
            if !e.impression.is_empty() {
                m.insert("conclusion".into(), json!(e.impression));
            }
        }
    }
    let mut form = json!({
        "url": format!("{}/fhir/Binary/{id}", state.config.base_url),
        "title": "full report (from the publisher's repository, checked against the signed digest)",
    });
    if !s.report.media_type.is_empty() {
        form["contentType"] = json!(s.report.media_type);
    }
    m.insert("presentedForm".into(), json!([form]));
    Value::Object(reorder(m))
}

/// An Observation for a verified result.
pub fn observation(state: &EhrState, r: &VerifiedResult, id: &str) -> Value {
    let s = &r.summary;
    let mut m = serde_json::Map::new();
    m.insert("resourceType".into(), json!("Observation"));
    let common = common(state, r, id);
    m.extend(common);
    m.insert("category".into(), category(Kind::Observation, s.category));
    match &s.outcome {
        Outcome::Lab(l) => {
            match l.value.trim().parse::<f64>().ok().filter(|v| v.is_finite()) {
                Some(v) => {
                    let mut q = json!({"value": v});
                    if !l.unit.is_empty() {
                        q["unit"] = json!(l.unit);
                    }
                    m.insert("valueQuantity".into(), q);
                }
                None if !l.value.is_empty() => {
                    m.insert("valueString".into(), json!(l.value));
                }
                None => {}
            }
            let flag = match l.flag {
                AbnormalFlag::Unspecified => None,
                AbnormalFlag::Normal => Some(("N", "Normal")),
                AbnormalFlag::Low => Some(("L", "Low")),
                AbnormalFlag::High => Some(("H", "High")),
                AbnormalFlag::CriticalLow => Some(("LL", "Critical low")),
                AbnormalFlag::CriticalHigh => Some(("HH", "Critical high")),
                AbnormalFlag::Abnormal => Some(("A", "Abnormal")),
            };
            if let Some((code, display)) = flag {
                m.insert(
                    "interpretation".into(),
                    json!([{"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}]),
                );
            }
            if !l.reference_range.is_empty() {
                m.insert(
                    "referenceRange".into(),
                    json!([{"text": l.reference_range}]),
                );
            }
            if !l.specimen.is_empty() {
                m.insert(
                    "note".into(),
                    json!([{"text": format!("specimen: {}", l.specimen)}]),
                );
            }
        }
        Outcome::Exam(e) => {
            if !e.impression.is_empty() {
                m.insert("valueString".into(), json!(e.impression));
            }
            if !e.body_site.is_empty() {
                m.insert("bodySite".into(), json!({"text": e.body_site}));
            }
            if !e.modality.is_empty() {
                m.insert(
                    "method".into(),
                    json!({"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": e.modality}]}),
                );
            }
        }
    }
    Value::Object(reorder(m))
}

/// Puts `resourceType`, `id` and `meta` first (readability only; JSON order carries no meaning).
fn reorder(m: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    let mut rest = m;
    for k in ["resourceType", "id", "meta"] {
        if let Some(v) = rest.remove(k) {
            out.insert(k.into(), v);
        }
    }
    out.extend(rest);
    out
}

/// Finds a result handed out earlier, asking the hub again (so the read is audited and the
/// result verified now).
async fn find_again(
    state: &EhrState,
    headers: &HeaderMap,
    id: &str,
) -> Result<VerifiedResult, EhrError> {
    let caller = authenticate(state, headers)?;
    let purpose = purpose_of(state, headers, None)?;
    let not_found = || {
        EhrError::NotFound(format!(
            "no result {id:?} here: ids come from a search or a card of the last {} minutes; search again",
            state.config.remember_minutes
        ))
    };
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let handed = state.ids.get(&id.to_owned()).ok_or_else(not_found)?;
    let asking = asking(&caller, purpose);
    let answer = tokio::time::timeout(
        state.hub_timeout() * 5,
        state.agent.find_prior(
            &asking,
            &handed.patient,
            std::slice::from_ref(&handed.item),
            UnixMillis::now(),
            None,
        ),
    )
    .await
    .map_err(|_| EhrError::Timeout)?
    .map_err(EhrError::Upstream)?;
    if answer.withheld_by_consent {
        return Err(refuse_withheld(purpose));
    }
    answer
        .results
        .into_iter()
        .find(|r| {
            r.summary.publisher.as_str() == handed.publisher
                && r.summary.id.as_str() == handed.summary_id
        })
        .ok_or_else(|| {
            EhrError::NotFound(format!(
                "result {id} is no longer returned by the hub (voided or withdrawn)"
            ))
        })
}

async fn read_report(
    State(state): State<Arc<EhrState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match find_again(&state, &headers, &id).await {
        Ok(r) => fhir_json(StatusCode::OK, &diagnostic_report(&state, &r, &id)),
        Err(e) => outcome(&e, "DiagnosticReport read"),
    }
}

async fn read_observation(
    State(state): State<Arc<EhrState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match find_again(&state, &headers, &id).await {
        Ok(r) => fhir_json(StatusCode::OK, &observation(&state, &r, &id)),
        Err(e) => outcome(&e, "Observation read"),
    }
}

async fn read_binary(
    State(state): State<Arc<EhrState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match binary(&state, &headers, &id).await {
        Ok(r) => r,
        Err(e) => outcome(&e, "Binary read"),
    }
}

async fn binary(state: &EhrState, headers: &HeaderMap, id: &str) -> Result<Response, EhrError> {
    use crate::repository::{FetchError, PeerIdentity, ReportRequest, fetch_report};
    let r = find_again(state, headers, id).await?;
    let s = &r.summary;
    let addr = state.repository_of(s.publisher.as_str()).ok_or_else(|| {
        EhrError::NotFound(format!(
            "the full report stays with its publisher {}, whose repository address is not configured here ([web.repositories] or [ehr.repositories])",
            s.publisher
        ))
    })?;
    let addr = &addr;
    let tls = state
        .tls
        .as_ref()
        .ok_or_else(|| EhrError::Internal("no TLS identity to fetch reports with".into()))?;
    let summary_id =
        SummaryId::parse(s.id.as_str()).map_err(|e| EhrError::Internal(e.to_string()))?;
    let fetched = fetch_report(
        &PeerIdentity {
            ca: &tls.ca,
            cert_pem: &tls.cert_pem,
            key_pem: &tls.key_pem,
            institution: state.agent.institution(),
        },
        &ReportRequest {
            addr,
            publisher: &s.publisher,
            summary_id: &summary_id,
            version: s.version,
            expected_sha256: s.report.sha256,
        },
    )
    .await
    .map_err(|e| match &e {
        FetchError::Refused { status, .. } if status.code() == tonic::Code::NotFound => {
            EhrError::NotFound(e.to_string())
        }
        FetchError::Connect { .. } => EhrError::Upstream(crate::error::AgentError::Connect {
            hub: addr.clone(),
            detail: e.to_string(),
        }),
        _ => EhrError::Upstream(crate::error::AgentError::Protocol(e.to_string())),
    })?;
    let wants_fhir = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/fhir+json") || a.contains("application/json"));
    let media = if fetched.media_type.is_empty() {
        "application/octet-stream".to_owned()
    } else {
        fetched.media_type.clone()
    };
    if wants_fhir {
        return Ok(fhir_json(
            StatusCode::OK,
            &json!({
                "resourceType": "Binary",
                "id": id,
                "contentType": media,
                "data": base64::engine::general_purpose::STANDARD.encode(&fetched.content),
            }),
        ));
    }
    let mut resp = Response::new(Body::from(fetched.content));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&media)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    // Another member's file: never rendered in the EHR's origin.
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CST: i32 = 8 * 3600;

    #[test]
    fn date_values_cover_their_precision() {
        let day = date_range("2026-11-18", CST).unwrap();
        assert_eq!(day.1 - day.0, 86_400_000);
        assert_eq!(fhir_time(day.0, CST), "2026-11-18T00:00:00.000+08:00");
        let month = date_range("2026-12", CST).unwrap();
        assert_eq!(fhir_time(month.1, CST), "2027-01-01T00:00:00.000+08:00");
        let year = date_range("2026", CST).unwrap();
        assert_eq!(fhir_time(year.0, CST), "2026-01-01T00:00:00.000+08:00");
        let t = date_range("2026-11-18T09:30:00Z", CST).unwrap();
        assert_eq!(t.1 - t.0, 1000);
        for bad in [
            "2026-13",
            "26-11-18",
            "2026-11-18T09:30",
            "yesterday",
            "2026-02-30",
            "",
        ] {
            assert!(date_range(bad, CST).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_compare_with_the_range() {
        let (lo, hi) = date_range("2026-11-18", CST).unwrap();
        let b = |prefix| DateBound { prefix, lo, hi };
        let inside = lo + 1000;
        assert!(b(Prefix::Eq).matches(inside));
        assert!(!b(Prefix::Ne).matches(inside));
        assert!(b(Prefix::Lt).matches(lo - 1) && !b(Prefix::Lt).matches(inside));
        assert!(b(Prefix::Le).matches(inside) && !b(Prefix::Le).matches(hi));
        assert!(b(Prefix::Gt).matches(hi) && !b(Prefix::Gt).matches(inside));
        assert!(b(Prefix::Ge).matches(lo) && !b(Prefix::Ge).matches(lo - 1));
    }

    #[test]
    fn search_parameters_are_read_or_refused() {
        let s = parse_search(
            Some("patient.identifier=urn%3Aoid%3A1%7C610102&code=http://loinc.org|718-7,777-3&date=ge2026-11-01&date=lt2026-12&_count=5&_offset=5"),
            CST,
        )
        .unwrap();
        assert_eq!(s.identifier, Some(("urn:oid:1".into(), "610102".into())));
        assert_eq!(s.codes.len(), 2);
        assert_eq!(
            s.codes[0],
            (Some("http://loinc.org".into()), "718-7".into())
        );
        assert_eq!(s.dates.len(), 2);
        assert_eq!((s.count, s.offset), (5, 5));
        assert!(!s.given.iter().any(|(k, _)| k == "_offset"));
        let err = |q: &str| parse_search(Some(q), CST).unwrap_err().to_string();
        assert!(err("_sort=date").contains("_sort"));
        assert!(err("patient.identifier=610102").contains("system|value"));
        assert!(err("_count=1000").contains("_count"));
        assert!(err("date=ap2026").contains("ap"));
        assert!(err("_format=xml").contains("json"));
    }

    #[test]
    fn ids_are_fhir_ids() {
        let id = resource_id("shx-prov-people", "LAB:2026:1");
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, resource_id("shx-prov-people", "LAB:2026:2"));
    }
}
