//! The `[ehr]` section of the agent's configuration: who may call the CDS Hooks services and
//! the FHIR read API, how their patients' identifiers map to Huren id types, and how cards
//! read. Documented field by field; `node-agent/agent.example.toml` has an example.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// CDS Hooks services and the FHIR R4 read API (`huren_agent::ehr`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EhrConfig {
    /// The public base URL of this agent's HTTP server as the EHR calls it, without a trailing
    /// slash, e.g. `https://huren.lantian.example:8443`. A JWT's `aud` must be the URL of the
    /// endpoint called under it (`{base_url}/cds-services/{id}`, `{base_url}/fhir`); links in
    /// cards and Bundles start with it.
    pub base_url: String,
    /// The EHRs allowed to call, each with the keys its JWTs are signed with.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Language of card texts and messages: `zh-CN` (default) or `en`. A request's
    /// `Accept-Language` asking for English first gets English.
    #[serde(default = "default_language")]
    pub language: String,
    /// Answer an `info` card for an ordered item without a reusable result, saying why
    /// (default true). False: only items with a reusable result get a card.
    #[serde(default = "yes")]
    pub info_cards: bool,
    /// Indicator of a card offering a reusable result: `info` or `warning` (default).
    #[serde(default = "default_indicator")]
    pub reusable_indicator: String,
    /// How long a CDS call waits for the hub, in milliseconds (default 2000). Past it the
    /// service answers with no cards and logs the timeout: an order is never held up.
    #[serde(default = "default_hub_timeout_ms")]
    pub hub_timeout_ms: u64,
    /// Purpose of use when a FHIR call states none (default `treatment`); CDS Hooks calls
    /// always state `treatment`.
    #[serde(default = "default_purpose")]
    pub default_purpose: String,
    /// FHIR `identifier.system` values and the Huren id type each one carries, e.g.
    /// `{ system = "urn:oid:2.16.156.10011.1.3", id_type = "cn-ric" }`. Also tried: the
    /// `[[patient_id]]` rules of the mapping file (by `authority` and `type_code`).
    #[serde(default)]
    pub identifier_systems: Vec<IdentifierSystem>,
    /// Override reasons this member adds to the national list on its cards; each is recorded
    /// at the hub as one of the coded re-test reasons (`maps_to`) with its text as the note.
    #[serde(default)]
    pub override_reasons: Vec<LocalOverrideReason>,
    /// Display names of alliance members for card texts, by institution id (default: the id).
    #[serde(default)]
    pub member_names: BTreeMap<String, String>,
    /// Repository addresses (`host:port`) of members, by institution id: where
    /// `GET /fhir/Binary/{id}` fetches a full report. Default: `[web] repositories`.
    #[serde(default)]
    pub repositories: BTreeMap<String, String>,
    /// How long cards and FHIR resource ids are remembered for feedback and reads, in minutes
    /// (default 1440: one day). They are kept in memory only.
    #[serde(default = "default_remember_minutes")]
    pub remember_minutes: u64,
    /// Mutual TLS, beside JWTs: the CA (PEM) whose client certificates the agent's HTTPS
    /// server asks for (browsers without one are still served). A call that carries no
    /// Authorization header is then authenticated by its verified client certificate when a
    /// name in it is one of `tls_clients`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// The EHR systems allowed in by client certificate: a DNS or URI name of the certificate
    /// and the short id recorded as the requester (`ehr:<id>`).
    #[serde(default)]
    pub tls_clients: Vec<TlsClientConfig>,
}

/// An EHR system authenticated by its TLS client certificate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsClientConfig {
    /// Short name in the access audit's requester (`ehr:<id>`), as for `[[ehr.issuers]]`.
    pub id: String,
    /// A DNS name or URI in the certificate's subject alternative names.
    pub name: String,
}

/// One EHR allowed to call (`[[ehr.issuers]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Short name used in the access audit's requester (`ehr:<id>`): 1 to 24 characters of
    /// `A-Za-z0-9._-`.
    pub id: String,
    /// The JWT `iss` this EHR signs with (its identifier, usually a URL).
    pub iss: String,
    /// PEM files of the public keys its JWTs are signed with (EC P-256/P-384 or RSA; the
    /// algorithms CDS Hooks names are ES384 and RS384).
    #[serde(default)]
    pub public_keys: Vec<PathBuf>,
    /// A JWK Set file (JSON) with its public keys, matched by `kid`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
}

/// A FHIR identifier system and the Huren id type it carries.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierSystem {
    pub system: String,
    pub id_type: String,
}

/// A member's own override reason (`[[ehr.override_reasons]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalOverrideReason {
    /// Code shown to the EHR (system `urn:huren:override-reason:local`).
    pub code: String,
    /// Text the physician picks.
    pub display: String,
    /// The coded re-test reason recorded at the hub, e.g. `other` or `physician-judgement`.
    pub maps_to: String,
}

fn yes() -> bool {
    true
}

fn default_language() -> String {
    "zh-CN".into()
}

fn default_indicator() -> String {
    "warning".into()
}

fn default_hub_timeout_ms() -> u64 {
    2000
}

fn default_purpose() -> String {
    "treatment".into()
}

fn default_remember_minutes() -> u64 {
    1440
}

impl EhrConfig {
    /// The configuration's relative paths, to be taken relative to the file.
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut out = Vec::new();
        for i in &mut self.issuers {
            out.extend(i.public_keys.iter_mut());
            out.extend(i.jwks_file.as_mut());
        }
        out.extend(self.client_ca.as_mut());
        out
    }
}
