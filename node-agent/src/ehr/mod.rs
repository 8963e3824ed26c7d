//! Where the hospital's own systems meet Huren: CDS Hooks 2.0 services that put a card in
//! front of a physician who orders a test someone in the alliance already did, and a FHIR R4
//! read API that lets the EMR read prior results. Both run on this member's agent, because it
//! holds the pseudonymisation key and the local-code mappings: the hub never sees a patient id.
//!
//! - [`cds`]: `GET /cds-services` (discovery), `POST /cds-services/{id}` for the `order-select`
//!   and `order-sign` hooks, `POST /cds-services/{id}/feedback` (accepted → adopted,
//!   overridden with a coded reason → re-tested, through RecordDecision).
//! - [`fhir`]: `GET /fhir/metadata`, DiagnosticReport and Observation searches and reads,
//!   `GET /fhir/Binary/{id}` (the full report, checked against the signed digest).
//! - [`auth`]: the JWT bearer CDS Hooks specifies, against configured issuers' keys.
//! - [`config`]: the `[ehr]` section.
//!
//! [`router`] returns one `axum::Router` with all of it; the agent's HTTP server mounts it.
//! Every call that reaches the hub states its purpose and its requester (`ehr:<issuer>[:user]`),
//! so the hub's access audit says which EHR, and which user when it fits, asked.
//! Handlers never log a patient identifier or a token.

pub mod auth;
pub mod cds;
pub mod config;
pub mod fhir;
pub mod recent;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};

use huren_core::logentry::Purpose;
use huren_core::pseudonym::{PatientId, Pseudonym};
use huren_core::receipt::Receipt;

pub use config::EhrConfig;

use crate::client::Agent;
pub use crate::client::Asking;
use crate::error::AgentError;
use crate::mapping::{Mapping, PatientIdRule};
use auth::Authenticator;
use recent::Recent;

/// Longest list of cards or FHIR ids remembered at once.
const REMEMBER_CAP: usize = 200_000;

/// Why an EHR call failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum EhrError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Upstream(AgentError),
    #[error("the hub did not answer in time")]
    Timeout,
    #[error("{0}")]
    Internal(String),
}

impl EhrError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Upstream(e) => match e {
                AgentError::Hub(s) => match s.code() {
                    tonic::Code::InvalidArgument => StatusCode::UNPROCESSABLE_ENTITY,
                    tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                    tonic::Code::NotFound => StatusCode::NOT_FOUND,
                    tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition => {
                        StatusCode::CONFLICT
                    }
                    tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                    tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_GATEWAY,
                },
                AgentError::PatientId(_) => StatusCode::UNPROCESSABLE_ENTITY,
                AgentError::Connect { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// Logs the error once (what a person needs; no patient data is in any message) and
    /// returns the status.
    pub fn logged_status(&self, what: &str) -> StatusCode {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(call = what, status = status.as_u16(), error = %self, "EHR call failed");
        } else if status != StatusCode::UNAUTHORIZED {
            // 401s are logged by `auth` with their reason.
            tracing::info!(call = what, status = status.as_u16(), error = %self, "EHR call refused");
        }
        status
    }
}

/// Language of texts for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// The configured language, unless the request's `Accept-Language` puts English before
    /// Chinese.
    pub fn of(headers: &HeaderMap, configured: Lang) -> Lang {
        let Some(accept) = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
        else {
            return configured;
        };
        for part in accept.split(',') {
            let tag = part
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if tag.starts_with("zh") {
                return Lang::Zh;
            }
            if tag.starts_with("en") {
                return Lang::En;
            }
        }
        configured
    }

    /// Chinese or English text.
    pub fn pick<'a>(self, zh: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }
}

/// A card offered for a result: what its feedback records a decision on.
#[derive(Clone, Debug)]
pub struct OfferedCard {
    pub service: String,
    pub receipt: Receipt,
    pub requester: String,
}

/// A FHIR resource id handed out by a search: what a read needs to ask the hub again.
#[derive(Clone, Debug)]
pub struct HandedOut {
    pub patient: Pseudonym,
    pub item: (String, String),
    pub publisher: String,
    pub summary_id: String,
}

/// Everything the handlers share.
pub struct EhrState {
    pub agent: Arc<Agent>,
    pub config: EhrConfig,
    pub mapping: Option<Mapping>,
    pub auth: Authenticator,
    pub lang: Lang,
    pub default_purpose: Purpose,
    pub cards: Recent<String, OfferedCard>,
    pub ids: Recent<String, HandedOut>,
    /// The member's TLS identity for fetching reports from publishers' repositories.
    pub tls: Option<ReportFetching>,
    pub utc_offset: i32,
}

/// What `Binary` reads need to fetch a report from another member.
pub struct ReportFetching {
    pub ca: huren_core::trust::AllianceCa,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl EhrState {
    /// Builds the shared state from the agent's configuration (`[ehr]` must be present).
    pub fn new(agent: Arc<Agent>) -> Result<Arc<Self>, AgentError> {
        let config = agent.config().ehr.clone().ok_or_else(|| {
            AgentError::Setup("the CDS Hooks and FHIR endpoints need an [ehr] section".into())
        })?;
        let base = config.base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(AgentError::Setup(format!(
                "[ehr] base_url {:?} must be an http(s) URL, e.g. https://huren.hospital.example:8443",
                config.base_url
            )));
        }
        let auth =
            Authenticator::load(&config.issuers, &config.tls_clients).map_err(AgentError::Setup)?;
        let lang = match config.language.as_str() {
            "zh-CN" | "zh" => Lang::Zh,
            "en" | "en-US" | "en-GB" => Lang::En,
            other => {
                return Err(AgentError::Setup(format!(
                    "[ehr] language {other:?}: use zh-CN or en"
                )));
            }
        };
        let default_purpose = parse_purpose(&config.default_purpose).ok_or_else(|| {
            AgentError::Setup(format!(
                "[ehr] default_purpose {:?}: use one of {}",
                config.default_purpose,
                purpose_names()
            ))
        })?;
        if !matches!(config.reusable_indicator.as_str(), "info" | "warning") {
            return Err(AgentError::Setup(format!(
                "[ehr] reusable_indicator {:?}: use info or warning",
                config.reusable_indicator
            )));
        }
        for r in &config.override_reasons {
            if huren_core::rules::RetestReason::from_code(&r.maps_to).is_none() {
                return Err(AgentError::Setup(format!(
                    "[[ehr.override_reasons]] {:?}: maps_to {:?} is not a re-test reason code",
                    r.code, r.maps_to
                )));
            }
        }
        let mapping = match &agent.config().mapping {
            Some(m) => Some(Mapping::load(&m.file).map_err(|e| AgentError::Setup(e.to_string()))?),
            None => None,
        };
        let credentials = crate::credentials::Credentials::load(agent.config())?;
        let utc_offset = huren_core::summary::parse_utc_offset(&agent.config().display_utc_offset)
            .unwrap_or(8 * 3600);
        let remember = Duration::from_secs(config.remember_minutes.saturating_mul(60));
        let mut config = config;
        config.base_url = base;
        Ok(Arc::new(Self {
            agent,
            config,
            mapping,
            auth,
            lang,
            default_purpose,
            cards: Recent::new(remember, REMEMBER_CAP),
            ids: Recent::new(remember, REMEMBER_CAP),
            tls: Some(ReportFetching {
                ca: credentials.ca,
                cert_pem: credentials.tls_cert_pem,
                key_pem: credentials.tls_key_pem,
            }),
            utc_offset,
        }))
    }

    /// The patient named by FHIR identifiers: the first that an `[[ehr.identifier_systems]]`
    /// entry or a `[[patient_id]]` rule of the mapping accepts, pseudonymised here.
    pub fn patient_of(&self, ids: &[FhirIdentifier<'_>]) -> Result<Pseudonym, EhrError> {
        for id in ids {
            if id.value.trim().is_empty() {
                continue;
            }
            if let Some(s) = self
                .config
                .identifier_systems
                .iter()
                .find(|s| s.system == id.system)
            {
                return self.pseudonymise(&s.id_type, id.value);
            }
        }
        let rules: &[PatientIdRule] = self
            .mapping
            .as_ref()
            .map_or(&[], |m| m.patient_id_rules.as_slice());
        for rule in rules {
            for id in ids {
                if id.value.trim().is_empty() {
                    continue;
                }
                let type_ok = rule
                    .type_code
                    .as_ref()
                    .is_none_or(|t| id.type_codes.iter().any(|c| c.eq_ignore_ascii_case(t)));
                let authority_ok = rule.authority.as_ref().is_none_or(|a| a == id.system);
                if type_ok && authority_ok {
                    return self.pseudonymise(&rule.id_type, id.value);
                }
            }
        }
        Err(EhrError::Unprocessable(format!(
            "no patient identifier has a system this agent knows (systems given: {}); configure it in [[ehr.identifier_systems]]",
            ids.iter()
                .take(5)
                .map(|i| if i.system.is_empty() {
                    "(none)".to_owned()
                } else {
                    i.system.chars().take(80).collect()
                })
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    fn pseudonymise(&self, id_type: &str, value: &str) -> Result<Pseudonym, EhrError> {
        let id = PatientId::new(id_type, value).map_err(|e| {
            EhrError::Unprocessable(format!("the patient identifier is not valid: {e}"))
        })?;
        self.agent
            .pseudonym_key()
            .pseudonymise_checked(&id)
            .map_err(|e| EhrError::Unprocessable(format!("the patient identifier: {e}")))
    }

    /// A publisher's repository address: `[ehr.repositories]`, else `[web] repositories`.
    pub fn repository_of(&self, publisher: &str) -> Option<String> {
        self.config
            .repositories
            .get(publisher)
            .cloned()
            .or_else(|| {
                self.agent
                    .config()
                    .web
                    .as_ref()
                    .and_then(|w| w.repositories.get(publisher).cloned())
            })
    }

    /// The display name of a member.
    pub fn member_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.config.member_names.get(id).map_or(id, String::as_str)
    }

    pub fn hub_timeout(&self) -> Duration {
        Duration::from_millis(self.config.hub_timeout_ms.max(1))
    }
}

/// A patient identifier as FHIR gives it (`system`, `value`, `type.coding.code`s).
pub struct FhirIdentifier<'a> {
    pub system: &'a str,
    pub value: &'a str,
    pub type_codes: Vec<&'a str>,
}

/// Purpose of use by name (`treatment`, `referral`, `emergency`, `patient-request`,
/// `administration`, `quality-control`) or HL7 v3 PurposeOfUse code (`TREAT`, `COC`,
/// `ETREAT`, `PATRQT`, `HOPERAT`, `HQUALIMP`).
pub fn parse_purpose(s: &str) -> Option<Purpose> {
    let s = s.trim();
    Some(match s {
        "TREAT" => Purpose::Treatment,
        "COC" => Purpose::Referral,
        "ETREAT" | "BTG" => Purpose::Emergency,
        "PATRQT" => Purpose::PatientRequest,
        "HOPERAT" => Purpose::Administration,
        "HQUALIMP" => Purpose::QualityControl,
        _ => {
            let lower = s.to_ascii_lowercase().replace('_', "-");
            return Purpose::ALL.into_iter().find(|p| purpose_name(*p) == lower);
        }
    })
}

/// The name of a purpose as the EHR endpoints accept it.
pub fn purpose_name(p: Purpose) -> &'static str {
    match p {
        Purpose::Treatment => "treatment",
        Purpose::Referral => "referral",
        Purpose::Emergency => "emergency",
        Purpose::PatientRequest => "patient-request",
        Purpose::Administration => "administration",
        Purpose::QualityControl => "quality-control",
    }
}

fn purpose_names() -> String {
    Purpose::ALL
        .into_iter()
        .map(purpose_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A random UUID (version 4), for cards and suggestions.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    // getrandom fails only without an OS source of randomness; then a time-derived value
    // still gives distinct ids in practice (cards are not secrets).
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes();
        b.copy_from_slice(&t);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A time as FHIR `dateTime`/`instant` (RFC 3339 with the display offset, milliseconds).
pub fn fhir_time(ms: i64, offset_seconds: i32) -> String {
    let offset =
        time::UtcOffset::from_whole_seconds(offset_seconds).unwrap_or(time::UtcOffset::UTC);
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3][offset_hour sign:mandatory]:[offset_minute]"
    );
    t.format(&fmt).unwrap_or_default()
}

/// A date `YYYY-MM-DD` in the display offset.
pub fn fhir_date(ms: i64, offset_seconds: i32) -> String {
    fhir_time(ms, offset_seconds).chars().take(10).collect()
}

/// What the agent's HTTP server (`web::serve`) mounts beside its pages: these endpoints when
/// `[ehr]` is configured, else nothing.
pub fn extra_routes(agent: Arc<Agent>) -> Result<Router, AgentError> {
    if agent.config().ehr.is_none() {
        return Ok(Router::new());
    }
    let state = EhrState::new(agent)?;
    tracing::info!("CDS Hooks services at /cds-services and the FHIR R4 read API at /fhir");
    Ok(router(state))
}

/// All endpoints: `/cds-services…` and `/fhir/…`.
pub fn router(state: Arc<EhrState>) -> Router {
    Router::new()
        .merge(cds::routes())
        .merge(fhir::routes())
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_by_name_and_v3_code() {
        assert_eq!(parse_purpose("treatment"), Some(Purpose::Treatment));
        assert_eq!(parse_purpose("ETREAT"), Some(Purpose::Emergency));
        assert_eq!(
            parse_purpose("Quality_Control"),
            Some(Purpose::QualityControl)
        );
        assert_eq!(parse_purpose("marketing"), None);
        for p in Purpose::ALL {
            assert_eq!(parse_purpose(purpose_name(p)), Some(p));
        }
    }

    #[test]
    fn uuids_are_version_4() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uuid());
    }

    #[test]
    fn times_carry_the_offset() {
        assert_eq!(fhir_time(0, 8 * 3600), "1970-01-01T08:00:00.000+08:00");
        assert_eq!(fhir_date(0, -3600), "1969-12-31");
    }

    #[test]
    fn accept_language_picks_english_only_when_asked_first() {
        let mut h = HeaderMap::new();
        assert_eq!(Lang::of(&h, Lang::Zh), Lang::Zh);
        h.insert(
            axum::http::header::ACCEPT_LANGUAGE,
            "en-US,en;q=0.9,zh;q=0.5".parse().unwrap(),
        );
        assert_eq!(Lang::of(&h, Lang::Zh), Lang::En);
        h.insert(
            axum::http::header::ACCEPT_LANGUAGE,
            "zh-CN,en;q=0.5".parse().unwrap(),
        );
        assert_eq!(Lang::of(&h, Lang::En), Lang::Zh);
    }
}
