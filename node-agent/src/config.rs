//! The agent's configuration file (TOML). See `node-agent/agent.example.toml`.

use huren_core::config_file;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Everything a member's agent needs to talk to the hub and sign for its institution.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This member's institution id. Must match the id in its certificates; checked at start.
    pub institution: String,
    /// The hub's address, e.g. `https://hub.alliance.example:7443`.
    pub hub: String,
    /// Name the hub's certificate must carry, when it differs from the host in `hub`.
    #[serde(default)]
    pub hub_tls_name: Option<String>,
    pub tls: TlsFiles,
    pub signing: SigningFiles,
    #[serde(default)]
    pub pseudonym: PseudonymSource,
    /// UTC offset used to show times in tables, e.g. "+08:00" (China Standard Time).
    #[serde(default = "default_offset")]
    pub display_utc_offset: String,
    /// The folder the hospital's interface engine writes HL7 v2 / FHIR files to
    /// (`huren-agent run`). Without it the daemon only publishes what is already queued.
    #[serde(default)]
    pub inbox: Option<InboxConfig>,
    /// The agent's own store: outbox, full reports, ingest progress (`run`, `backfill`,
    /// `outbox`).
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// The member's mapping of local item codes to the catalogue (`run`, `backfill`).
    #[serde(default)]
    pub mapping: Option<MappingConfig>,
    /// How queued results are published.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Serving full reports to alliance members (`run`). Without it no report is served.
    #[serde(default)]
    pub repository: Option<RepositoryConfig>,
    /// The metrics endpoint; absent: none.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The hub's verifiable log: with it the agent checks every receipt and result against
    /// checkpoints signed by the hub's log key (`huren-agent audit`). See node-agent/src/log.rs.
    #[serde(default)]
    pub log: Option<LogConfig>,
    /// The web app for the member's staff (`huren-agent serve`, and `run` when present).
    /// See node-agent/src/web/mod.rs.
    #[serde(default)]
    pub web: Option<WebConfig>,
    /// CDS Hooks services and the FHIR R4 read API for the hospital's EHR (`huren_agent::ehr`);
    /// absent: none.
    #[serde(default)]
    pub ehr: Option<crate::ehr::EhrConfig>,
}

/// The web app (`[web]`): the referral desk's and clinicians' pages, served by this agent.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address to listen on, e.g. "0.0.0.0:8443".
    pub listen: std::net::SocketAddr,
    /// HTTPS certificate and key (PEM); default the member's TLS certificate of `[tls]`. A
    /// certificate the hospital's browsers trust (its own CA or a public one) avoids warnings.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS. Refused unless `listen` is a loopback address
    /// (127.0.0.1 or ::1): for a reverse proxy on the same host, or a demonstration.
    #[serde(default)]
    pub plain_http_on_loopback: bool,
    /// IANA time zone that pages show times in.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Interface language before a person chooses one: "zh-CN" or "en".
    #[serde(default = "default_language")]
    pub default_language: String,
    /// A signed-in session ends after this many minutes without a request.
    #[serde(default = "default_session_idle_minutes")]
    pub session_idle_minutes: u64,
    /// A patient look-up (the handle in the page addresses) ends after this many minutes.
    #[serde(default = "default_lookup_minutes")]
    pub lookup_minutes: u64,
    /// Each member's repository address (`host:port`), by institution id, so full reports can
    /// be fetched from the publisher, e.g. `shx-prov-people = "10.1.2.3:7444"`.
    #[serde(default)]
    pub repositories: std::collections::BTreeMap<String, String>,
}

fn default_time_zone() -> String {
    "Asia/Shanghai".into()
}

fn default_language() -> String {
    "zh-CN".into()
}

fn default_session_idle_minutes() -> u64 {
    30
}

fn default_lookup_minutes() -> u64 {
    15
}

impl WebConfig {
    /// A `[web]` section on `listen` with every default (tests, the demo).
    pub fn on(listen: std::net::SocketAddr) -> Self {
        Self {
            listen,
            cert: None,
            key: None,
            plain_http_on_loopback: false,
            time_zone: default_time_zone(),
            default_language: default_language(),
            session_idle_minutes: default_session_idle_minutes(),
            lookup_minutes: default_lookup_minutes(),
            repositories: Default::default(),
        }
    }
}

/// How the agent checks the hub's log.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The hub log's C2SP verifier key, as `huren-hub --print-log-key` prints it, e.g.
    /// `huren.example/alliance-log+1a2b3c4d+AT…`. Its name is the log's origin.
    pub verifier_key: String,
    /// Where the last checkpoint seen and the log entries this agent relied on are kept.
    /// Default: `huren-log-<institution>` next to this file. Keep it: it is what lets this
    /// member prove that the hub changed history.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Witnesses' verifier keys (`huren-witness --print-key`). With any, a checkpoint from
    /// the hub is accepted only with the cosignatures of at least `witness_quorum` of them, so
    /// a hub that shows this member a history the witnesses did not check is caught.
    #[serde(default)]
    pub witnesses: Vec<String>,
    /// How many of `witnesses` must have cosigned a checkpoint (default: all of them).
    pub witness_quorum: Option<usize>,
}

impl LogConfig {
    /// Opens the log witness state every path of this agent shares (CLI queries and
    /// publishes, the daemon and backfill): `state_dir`, or `huren-log-<institution>`.
    pub fn open_witness(
        &self,
        institution: &str,
    ) -> Result<crate::log::LogWitness, crate::error::AgentError> {
        let dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("huren-log-{institution}")));
        let witnesses = self
            .witnesses
            .iter()
            .map(|w| {
                huren_core::cosignature::CosignerKey::parse(w.trim()).map_err(|e| {
                    crate::error::AgentError::Setup(format!("[log] witnesses: {w:?}: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let quorum = self.witness_quorum.unwrap_or(witnesses.len());
        if quorum > witnesses.len() {
            return Err(crate::error::AgentError::Setup(format!(
                "[log] witness_quorum is {quorum}, but only {} witnesses are configured",
                witnesses.len()
            )));
        }
        if quorum == 0 && !witnesses.is_empty() {
            return Err(crate::error::AgentError::Setup(
                "[log] witness_quorum is 0: at least one witness must have cosigned a checkpoint"
                    .into(),
            ));
        }
        crate::log::LogWitness::open(&self.verifier_key, &dir)?.with_witnesses(witnesses, quorum)
    }
}

/// The inbox folder and what happens to files after reading. See node-agent/INBOX.md.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    /// Where the interface engine writes files. Names starting with `.` or ending in `.tmp`,
    /// `.part` or `.partial` are left alone, so the engine can write, then rename.
    pub dir: PathBuf,
    /// Accepted files move here (default `<dir>/done`); see `keep_done`.
    #[serde(default)]
    pub done: Option<PathBuf>,
    /// Keep accepted files in `done`; if false they are deleted once their results are queued.
    #[serde(default = "yes")]
    pub keep_done: bool,
    /// Refused files move here, each with a `.reason.txt` (default `<dir>/rejected`).
    #[serde(default)]
    pub rejected: Option<PathBuf>,
    /// How often the folder is looked at, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// A file is read once it has not changed for this long (milliseconds), so a half-written
    /// file is not taken. 0 takes files at once (for engines that write, then rename).
    #[serde(default = "default_poll_ms")]
    pub settle_ms: u64,
    /// A file that is not whole (an MLLP frame without its end block, a last segment without
    /// terminator, batch counts that do not add up, JSON that ends early) stays in the inbox
    /// and is tried again; once it has not changed for this long (milliseconds) it moves to the
    /// rejected folder with the reason. Default 600000 (10 minutes).
    #[serde(default = "default_incomplete_hold_ms")]
    pub incomplete_hold_ms: u64,
    /// Character set of HL7 v2 messages: "auto" (MSH-18, else UTF-8 if valid, else GB18030),
    /// "utf-8" or "gb18030".
    #[serde(default)]
    pub hl7_charset: crate::ingest::CharsetSetting,
    /// UTC offset of times that carry none (HL7 TS without zone, FHIR dates), e.g. "+08:00".
    #[serde(default = "default_offset")]
    pub local_utc_offset: String,
}

fn yes() -> bool {
    true
}

fn default_poll_ms() -> u64 {
    2000
}

fn default_incomplete_hold_ms() -> u64 {
    600_000
}

impl InboxConfig {
    pub fn done_dir(&self) -> Option<PathBuf> {
        self.keep_done
            .then(|| self.done.clone().unwrap_or_else(|| self.dir.join("done")))
    }

    pub fn rejected_dir(&self) -> PathBuf {
        self.rejected
            .clone()
            .unwrap_or_else(|| self.dir.join("rejected"))
    }
}

/// The agent's store folder (sled). One process opens it at a time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
}

/// The mapping file (`huren-mapping/1`, see node-agent/INBOX.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    pub file: PathBuf,
}

/// Publishing: retries with exponential back-off and jitter while the hub is unreachable.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// First retry delay after a failed attempt, milliseconds.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest retry delay, milliseconds.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Publish calls in flight at once (versions of one result are always sent in order).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Summaries per PublishBatch call, 1 to 1000 (1: one Publish call per summary).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

fn default_batch_size() -> usize {
    100
}

fn default_initial_backoff_ms() -> u64 {
    250
}

fn default_max_backoff_ms() -> u64 {
    30_000
}

fn default_concurrency() -> usize {
    16
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            concurrency: default_concurrency(),
            batch_size: default_batch_size(),
        }
    }
}

/// The metrics endpoint (`huren_agent::metrics`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics` (plain HTTP, no certificate): keep it on 127.0.0.1 or a
    /// management network.
    pub listen: std::net::SocketAddr,
}

/// The repository service: full reports to alliance members over mutual TLS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Address to listen on, e.g. "0.0.0.0:7444".
    pub listen: String,
    /// Server certificate and key (PEM); default the member's TLS certificate of `[tls]`.
    /// Callers authenticate the repository by the institution in it, not by a DNS name.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_offset() -> String {
    "+08:00".into()
}

/// The member's TLS client identity and the alliance CA, as PEM files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Alliance CA certificate: the hub's certificate and every signed summary must chain to it.
    pub ca: PathBuf,
    /// This member's TLS client certificate.
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
}

/// The member's summary-signing certificate and Ed25519 key, as PEM files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the alliance's shared pseudonymisation key comes from: a file of 64 hex characters, or
/// the environment variable named here (default `HUREN_PSEUDONYM_KEY`). The file wins if both
/// are set. The hub never has this key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudonymSource {
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default = "default_key_env")]
    pub key_env: String,
    /// Patient identifier types that name one person alliance-wide and are accepted as they
    /// are. Default: `cn-ric`, `cn-hk-mo-pass`, `passport`, `cn-health-card`, `cn-ssc`
    /// (huren_core::pseudonym::ALLIANCE_ID_TYPES).
    #[serde(default = "default_alliance_types")]
    pub alliance_types: Vec<String>,
    /// Local identifier types (e.g. a record number), each with its assigning authority, which
    /// becomes part of the pseudonym input. Any other type is refused. Default: none.
    #[serde(default)]
    pub local_types: Vec<LocalIdType>,
}

/// A local patient identifier type and the authority that assigns it
/// (`[[pseudonym.local_types]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalIdType {
    /// E.g. `mrn`.
    pub id_type: String,
    /// E.g. the institution id or the OID of the assigning authority.
    pub assigning_authority: String,
}

fn default_key_env() -> String {
    "HUREN_PSEUDONYM_KEY".into()
}

fn default_alliance_types() -> Vec<String> {
    huren_core::pseudonym::ALLIANCE_ID_TYPES
        .iter()
        .map(|t| (*t).to_owned())
        .collect()
}

impl PseudonymSource {
    /// The identifier types this configuration accepts.
    pub fn id_types(
        &self,
    ) -> Result<huren_core::pseudonym::IdTypes, huren_core::pseudonym::PatientIdError> {
        let local: Vec<(String, String)> = self
            .local_types
            .iter()
            .map(|l| (l.id_type.clone(), l.assigning_authority.clone()))
            .collect();
        huren_core::pseudonym::IdTypes::new(&self.alliance_types, &local)
    }
}

impl Default for PseudonymSource {
    fn default() -> Self {
        Self {
            key_file: None,
            key_env: default_key_env(),
            alliance_types: default_alliance_types(),
            local_types: Vec::new(),
        }
    }
}

pub use huren_core::config_file::ConfigError;

impl AgentConfig {
    /// Reads a configuration file. Relative paths inside it are taken relative to the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::read(path, e))?;
        let mut config: AgentConfig = config_file::parse_toml(&text, path, "agent")?;
        let mut paths = vec![
            &mut config.tls.ca,
            &mut config.tls.cert,
            &mut config.tls.key,
            &mut config.signing.cert,
            &mut config.signing.key,
        ];
        if let Some(k) = config.pseudonym.key_file.as_mut() {
            paths.push(k);
        }
        if let Some(inbox) = config.inbox.as_mut() {
            paths.push(&mut inbox.dir);
            paths.extend(inbox.done.as_mut());
            paths.extend(inbox.rejected.as_mut());
        }
        if let Some(store) = config.store.as_mut() {
            paths.push(&mut store.path);
        }
        if let Some(mapping) = config.mapping.as_mut() {
            paths.push(&mut mapping.file);
        }
        if let Some(repo) = config.repository.as_mut() {
            paths.extend(repo.cert.as_mut());
            paths.extend(repo.key.as_mut());
        }
        if let Some(web) = config.web.as_mut() {
            paths.extend(web.cert.as_mut());
            paths.extend(web.key.as_mut());
        }
        if let Some(ehr) = config.ehr.as_mut() {
            paths.extend(ehr.paths_mut());
        }
        if let Some(log) = config.log.as_mut() {
            let dir = log
                .state_dir
                .get_or_insert_with(|| PathBuf::from(format!("huren-log-{}", config.institution)));
            paths.push(dir);
        }
        config_file::relative_to_file(path, paths);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml");
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config.institution, "lantian-county");
        assert!(config.signing.key.is_absolute());
        assert_eq!(config.display_utc_offset, "+08:00");
        assert_eq!(
            config.metrics.as_ref().map(|m| m.listen),
            Some("127.0.0.1:9465".parse().unwrap())
        );
        assert!(config.pseudonym.key_file.is_some());
        let log = config.log.as_ref().unwrap();
        huren_core::checkpoint::NoteVerifier::parse(&log.verifier_key).unwrap();
        assert!(log.state_dir.as_ref().unwrap().is_absolute());
        // The daemon sections.
        let inbox = config.inbox.as_ref().unwrap();
        assert!(inbox.dir.is_absolute());
        assert_eq!(inbox.done_dir(), Some(inbox.dir.join("done")));
        assert_eq!(inbox.rejected_dir(), Path::new("/var/lib/huren/rejected"));
        assert_eq!(inbox.hl7_charset, crate::ingest::CharsetSetting::Auto);
        assert_eq!(inbox.poll_ms, 2000);
        assert!(config.store.unwrap().path.is_absolute());
        // The mapping is given relative to the example file.
        let mapping = config.mapping.unwrap().file;
        assert_eq!(
            mapping,
            path.parent()
                .unwrap()
                .join("examples/mapping-lantian-county.toml")
        );
        crate::mapping::Mapping::load(&mapping).unwrap();
        assert_eq!(config.outbox.max_backoff_ms, 30_000);
        assert_eq!(config.repository.unwrap().listen, "0.0.0.0:7444");
        let web = config.web.unwrap();
        assert_eq!(web.time_zone, "Asia/Shanghai");
        assert_eq!(web.default_language, "zh-CN");
        assert!(!web.plain_http_on_loopback);
        assert_eq!(web.repositories["shx-prov-people"], "10.20.1.5:7444");
        let ehr = config.ehr.unwrap();
        assert_eq!(ehr.issuers[0].id, "his");
        assert_eq!(ehr.language, "zh-CN");
        assert_eq!(ehr.identifier_systems[0].id_type, "cn-ric");
        assert_eq!(ehr.override_reasons[0].maps_to, "physician-judgement");
        assert!(
            huren_core::rules::RetestReason::from_code(&ehr.override_reasons[0].maps_to).is_some()
        );
        assert_eq!(ehr.member_names["shx-prov-people"], "陕西省人民医院");
    }

    #[test]
    fn a_config_without_daemon_sections_still_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "institution = \"a\"\nhub = \"https://h:1\"\n[tls]\nca=\"a\"\ncert=\"b\"\nkey=\"c\"\n[signing]\ncert=\"d\"\nkey=\"e\"\n",
        )
        .unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert!(config.inbox.is_none() && config.store.is_none() && config.repository.is_none());
        assert_eq!(config.outbox.initial_backoff_ms, 250);
    }

    #[test]
    fn typo_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "institution = \"a\"\nhub = \"https://h:1\"\nhubb = \"x\"\n[tls]\nca=\"a\"\ncert=\"b\"\nkey=\"c\"\n[signing]\ncert=\"d\"\nkey=\"e\"\n",
        )
        .unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("hubb"), "{err}");
    }
}
