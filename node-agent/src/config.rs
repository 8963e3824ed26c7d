//! The agent's configuration file (TOML). See `node-agent/agent.example.toml`.

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
}

fn default_key_env() -> String {
    "HUREN_PSEUDONYM_KEY".into()
}

impl Default for PseudonymSource {
    fn default() -> Self {
        Self {
            key_file: None,
            key_env: default_key_env(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid agent configuration: {message}")]
    Parse { path: PathBuf, message: String },
}

impl AgentConfig {
    /// Reads a configuration file. Relative paths inside it are taken relative to the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: AgentConfig =
            toml::from_str(&text).map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if let Some(base) = path.parent() {
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
            for p in paths {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
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
        assert!(config.pseudonym.key_file.is_some());
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
