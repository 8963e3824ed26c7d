//! The hub's configuration file (TOML). See `hub/hub.example.toml`.

use huren_core::config_file;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything the hub needs to run.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Address to listen on for members' gRPC calls (mutual TLS). Port 7443 by convention.
    pub listen: SocketAddr,
    /// Folder of the hub's sled store (created if missing), or the URL of a PostgreSQL
    /// database, `postgres://user:password@host:port/dbname` (see [`HubConfig::store_kind`]).
    /// Back it up; it is the alliance's record.
    pub store: PathBuf,
    /// The alliance policy file (see hub/policy.example.toml). Reloaded when it changes or on
    /// SIGHUP; a policy with an error is refused and the one in force stays.
    pub policy: PathBuf,
    /// Memory the store may use to cache its pages, in MiB (default 1024, 16 to
    /// [`MAX_CACHE_MB`]). With the queries' working set cached, this is most of the hub's
    /// resident memory.
    #[serde(default = "default_store_cache_mb")]
    pub store_cache_mb: u64,
    /// What each commit waits for before anything is acknowledged: "flush" (default: survives
    /// a crash or kill of the hub) or "fsync" (also a power cut; see
    /// `store::Durability` and README, Running it for real).
    #[serde(default)]
    pub durability: crate::store::Durability,
    /// With a PostgreSQL store, the connections the hub keeps open to it at most (default 16,
    /// 1 to 1000). More than two to four per core of the database server only adds switching
    /// between its processes; ignored for sled.
    #[serde(default = "default_store_connections")]
    pub store_connections: usize,
    pub tls: TlsConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Witnesses asked to cosign every checkpoint the hub hands out (c2sp.org/tlog-witness).
    /// None (the default): checkpoints carry the log's signature only.
    #[serde(default, rename = "witness")]
    pub witnesses: Vec<crate::witness::client::WitnessEndpoint>,
}

/// The verifiable log's identity and signing key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The Ed25519 key that signs checkpoints (PKCS#8 PEM). Created with mode 0600 on first
    /// start if missing. Default: the store path with `.log-key` appended. Back it up with the
    /// store: a hub that loses it can no longer extend the log agents trust.
    pub key: Option<PathBuf>,
    /// The log's origin: the first line of every checkpoint and the name of its key. Agents'
    /// `[log] verifier_key` carries it.
    pub origin: String,
    /// How long the hub waits for a witness's cosignature, in milliseconds (default 3000). A
    /// witness that does not answer in time adds nothing to that checkpoint.
    pub witness_timeout_ms: u64,
    /// Memory the log's Merkle nodes may take, in MiB (default 128, 1 to [`MAX_CACHE_MB`]): with
    /// every node of the log in memory, an inclusion proof reads nothing from the store. 128
    /// MiB holds every node of a log of two million entries; a longer log keeps its upper
    /// levels (the ones most proofs share), about 64 bytes per entry to keep them all.
    pub node_cache_mb: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            key: None,
            origin: DEFAULT_LOG_ORIGIN.into(),
            witness_timeout_ms: 3000,
            node_cache_mb: crate::store::DEFAULT_NODE_CACHE_BYTES >> 20,
        }
    }
}

fn default_store_connections() -> usize {
    crate::store::postgres::DEFAULT_CONNECTIONS
}

fn default_store_cache_mb() -> u64 {
    crate::store::DEFAULT_CACHE_BYTES >> 20
}

/// The smallest page cache the hub accepts, in MiB.
pub const MIN_STORE_CACHE_MB: u64 = 16;

/// The largest cache the hub accepts, in MiB (1 TiB): a larger figure is a typing mistake, and
/// one past 2^44 MiB would not even count its bytes in 64 bits.
pub const MAX_CACHE_MB: u64 = 1 << 20;

/// The log origin when the configuration names none.
pub const DEFAULT_LOG_ORIGIN: &str = "huren.example/alliance-log";

/// The metrics endpoint (`hub::metrics`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics` (plain HTTP, no certificate): keep it on 127.0.0.1 or a
    /// management network. Absent (the default): no metrics listener.
    pub listen: Option<SocketAddr>,
}

/// Certificates and keys, as PEM files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The alliance CA certificate. Client certificates and summary-signing certificates must be
    /// issued by it.
    pub ca: PathBuf,
    /// The hub's server certificate; its names must match the address members dial.
    pub cert: PathBuf,
    /// The hub's private key (PKCS#8 PEM). Keep it readable by the hub's user only.
    pub key: PathBuf,
}

/// Limits that protect the hub from oversized requests and answers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most results one FindPrior or History answer carries; more sets `truncated`.
    pub max_results: usize,
    /// Largest gRPC message the hub accepts, in bytes. A summary is a few hundred bytes.
    pub max_message_bytes: usize,
    /// Largest PublishBatch request, in bytes (a signed summary with its certificate is about
    /// 1 KiB; a batch holds at most 1000).
    pub max_batch_bytes: usize,
    /// Seconds after which a request is abandoned; also how long (plus a second) a stopping hub
    /// waits for its connections to close.
    pub request_timeout_seconds: u64,
    /// How often to check the policy file for changes, in seconds.
    pub policy_poll_seconds: u64,
    /// How far in the future (by the hub's clock, in seconds) a summary's performed or
    /// reported time may lie: members' clocks drift, but a result from the future would be
    /// shown as recognised and picked by order checks.
    pub max_clock_skew_seconds: u64,
    /// Connections held at once, in all; one over it is closed at once. Each holds a file
    /// descriptor and some memory: keep it below the process's descriptor limit.
    pub max_connections: usize,
    /// Connections held at once from one peer address. Behind a TCP load balancer (every
    /// member arrives from its address) raise it to `max_connections`.
    pub max_connections_per_address: usize,
    /// Seconds a connection may take to finish its TLS handshake.
    pub handshake_timeout_seconds: u64,
    /// Seconds a connection may go without a byte read or written before it is closed
    /// (agents reconnect when they need to).
    pub idle_timeout_seconds: u64,
    /// Seconds a write may stay blocked because the peer stopped reading before the
    /// connection is closed (an answer held for a slow reader holds memory).
    pub send_timeout_seconds: u64,
    /// Requests in flight at once on one connection (HTTP/2 streams).
    pub max_streams_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_results: 500,
            max_message_bytes: 64 * 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            request_timeout_seconds: 30,
            policy_poll_seconds: 5,
            max_clock_skew_seconds: 600,
            max_connections: 1024,
            max_connections_per_address: 256,
            handshake_timeout_seconds: 10,
            idle_timeout_seconds: 120,
            send_timeout_seconds: 30,
            max_streams_per_connection: 256,
        }
    }
}

pub use huren_core::config_file::ConfigError;

/// The store's backend, from the form of `store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sled,
    Postgres,
}

impl HubConfig {
    /// Reads a configuration file. Relative paths inside it are taken relative to the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::read(path, e))?;
        let mut config: HubConfig = config_file::parse_toml(&text, path, "hub")?;
        if !(MIN_STORE_CACHE_MB..=MAX_CACHE_MB).contains(&config.store_cache_mb) {
            return Err(ConfigError::invalid(
                path,
                "hub",
                format!(
                    "store_cache_mb is {}: it must be from {MIN_STORE_CACHE_MB} to \
                     {MAX_CACHE_MB} (MiB)",
                    config.store_cache_mb
                ),
            ));
        }
        if !(1..=MAX_CACHE_MB).contains(&config.log.node_cache_mb) {
            return Err(ConfigError::invalid(
                path,
                "hub",
                format!(
                    "[log] node_cache_mb is {}: it must be from 1 to {MAX_CACHE_MB} (MiB)",
                    config.log.node_cache_mb
                ),
            ));
        }
        if !(1..=1000).contains(&config.store_connections) {
            return Err(ConfigError::invalid(
                path,
                "hub",
                format!(
                    "store_connections is {}: it must be from 1 to 1000",
                    config.store_connections
                ),
            ));
        }
        let postgres = config.store_kind() == StoreKind::Postgres;
        if postgres && config.log.key.is_none() {
            return Err(ConfigError::invalid(
                path,
                "hub",
                "a PostgreSQL store needs `[log] key`: the path of the checkpoint key, kept \
                 beside the configuration (it cannot default to a path next to the store)"
                    .to_owned(),
            ));
        }
        let sled_store = (!postgres).then_some(&mut config.store);
        config_file::relative_to_file(
            path,
            config.log.key.iter_mut().chain(sled_store).chain([
                &mut config.policy,
                &mut config.tls.ca,
                &mut config.tls.cert,
                &mut config.tls.key,
            ]),
        );
        Ok(config)
    }

    /// Which backend `store` names: a `postgres://` (or `postgresql://`) URL, or a folder.
    pub fn store_kind(&self) -> StoreKind {
        match self.store.to_str() {
            Some(s) if crate::store::postgres::is_url(s) => StoreKind::Postgres,
            _ => StoreKind::Sled,
        }
    }

    /// The store for messages and logs: the folder, or the database's URL without user or
    /// password.
    pub fn store_display(&self) -> String {
        match self.store_kind() {
            StoreKind::Sled => self.store.display().to_string(),
            StoreKind::Postgres => crate::store::postgres::redact(&self.store.to_string_lossy()),
        }
    }

    /// Where the log key is: `[log] key`, or the store path with `.log-key` appended.
    pub fn log_key_path(&self) -> PathBuf {
        self.log.key.clone().unwrap_or_else(|| {
            let mut p = self.store.clone().into_os_string();
            p.push(".log-key");
            PathBuf::from(p)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("hub.example.toml");
        let config = HubConfig::load(&path).unwrap();
        assert_eq!(config.listen.port(), 7443);
        assert!(config.tls.ca.is_absolute());
        assert_eq!(config.limits.max_results, 500);
        assert_eq!(config.durability, crate::store::Durability::Flush);
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(config.store_cache_mb, 1024);
        assert_eq!(config.log.node_cache_mb, 128);
        assert_eq!(config.log.origin, "huren.example/alliance-log");
        assert!(config.log_key_path().is_absolute());
    }

    /// Loads a minimal configuration with `top` among its top-level keys and `tail` after its
    /// `[tls]` table; the error as text.
    fn load_minimal(top: &str, tail: &str) -> Result<HubConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        let base = "listen = \"127.0.0.1:7443\"\nstore = \"s\"\npolicy = \"p\"\n";
        let tls = "[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        std::fs::write(&path, format!("{base}{top}{tls}{tail}")).unwrap();
        HubConfig::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn a_page_cache_too_small_is_refused_and_a_missing_one_defaults() {
        let err = load_minimal("store_cache_mb = 8\n", "").unwrap_err();
        assert!(err.contains("store_cache_mb is 8"), "{err}");
        for huge in [MAX_CACHE_MB + 1, u64::MAX / 2] {
            let err = load_minimal(&format!("store_cache_mb = {huge}\n"), "").unwrap_err();
            assert!(err.contains(&format!("store_cache_mb is {huge}")), "{err}");
        }
        assert_eq!(load_minimal("", "").unwrap().store_cache_mb, 1024);
    }

    #[test]
    fn a_node_cache_of_nothing_is_refused_and_a_missing_one_defaults() {
        let err = load_minimal("", "[log]\nnode_cache_mb = 0\n").unwrap_err();
        assert!(err.contains("[log] node_cache_mb is 0"), "{err}");
        // A figure whose bytes would wrap past 2^64, and one merely absurd; a negative one is
        // not a number of MiB at all.
        for huge in [1u64 << 50, MAX_CACHE_MB + 1] {
            let err = load_minimal("", &format!("[log]\nnode_cache_mb = {huge}\n")).unwrap_err();
            assert!(err.contains(&format!("node_cache_mb is {huge}")), "{err}");
        }
        let err = load_minimal("", "[log]\nnode_cache_mb = -1\n").unwrap_err();
        assert!(err.contains("node_cache_mb"), "{err}");
        let config = load_minimal("", &format!("[log]\nnode_cache_mb = {MAX_CACHE_MB}\n"));
        assert_eq!(config.unwrap().log.node_cache_mb, MAX_CACHE_MB);
        let config = load_minimal("", "[log]\nnode_cache_mb = 640\n").unwrap();
        assert_eq!(config.log.node_cache_mb, 640);
        assert_eq!(load_minimal("", "").unwrap().log.node_cache_mb, 128);
    }

    #[test]
    fn store_connections_out_of_range_are_refused_and_a_missing_one_defaults() {
        for bad in [0, 1001] {
            let err = load_minimal(&format!("store_connections = {bad}\n"), "").unwrap_err();
            assert!(
                err.contains(&format!("store_connections is {bad}")),
                "{err}"
            );
        }
        let config = load_minimal("store_connections = 4\n", "").unwrap();
        assert_eq!(config.store_connections, 4);
        assert_eq!(load_minimal("", "").unwrap().store_connections, 16);
    }

    #[test]
    fn a_postgres_url_selects_postgres_and_needs_a_log_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        let base = "listen = \"127.0.0.1:7443\"\nstore = \"postgres://hub:secret@db.example:5433/huren\"\npolicy = \"p\"\n";
        let tls = "[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        std::fs::write(&path, format!("{base}{tls}")).unwrap();
        let err = HubConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("needs `[log] key`"), "{err}");
        std::fs::write(&path, format!("{base}{tls}[log]\nkey = \"log.key\"\n")).unwrap();
        let config = HubConfig::load(&path).unwrap();
        assert_eq!(config.store_kind(), StoreKind::Postgres);
        // Not taken as a path relative to the file, and never shown with its password.
        assert_eq!(
            config.store.to_str(),
            Some("postgres://hub:secret@db.example:5433/huren")
        );
        assert_eq!(config.store_display(), "postgres://db.example:5433/huren");
        assert_eq!(config.log_key_path(), dir.path().join("log.key"));
    }

    #[test]
    fn durability_is_flush_or_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        let base = "listen = \"127.0.0.1:7443\"\nstore = \"s\"\npolicy = \"p\"\n";
        let tls = "[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        std::fs::write(&path, format!("{base}durability = \"fsync\"\n{tls}")).unwrap();
        assert_eq!(
            HubConfig::load(&path).unwrap().durability,
            crate::store::Durability::Fsync
        );
        std::fs::write(&path, format!("{base}durability = \"sometimes\"\n{tls}")).unwrap();
        let err = HubConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("sometimes") && err.contains("fsync"), "{err}");
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7443\"\nstore = \"s\"\npolicy = \"p\"\nstoer = \"typo\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        )
        .unwrap();
        let err = HubConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("stoer"), "{err}");
    }
}
