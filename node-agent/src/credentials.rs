//! A member's credentials for the long-running parts of the agent (daemon, backfill,
//! repository): the institution, the alliance CA, the summary signer, the pseudonymisation key
//! and the TLS identity; and a hub channel that does not need the hub to be up.
//!
//! `client::Agent::connect` does the same checks for the interactive commands but connects at
//! once; the daemon must start (and queue results) while the hub is down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use huren_core::identity::InstitutionId;
use huren_core::pseudonym::PseudonymKey;
use huren_core::signing::SummarySigner;
use huren_core::trust::AllianceCa;

use crate::config::AgentConfig;
use crate::error::AgentError;

/// Everything a member signs and authenticates with.
pub struct Credentials {
    pub institution: InstitutionId,
    pub ca: AllianceCa,
    pub ca_pem: Vec<u8>,
    pub signer: Arc<SummarySigner>,
    pub pseudonym_key: PseudonymKey,
    pub tls_cert_pem: Vec<u8>,
    pub tls_key_pem: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, AgentError> {
    std::fs::read(path).map_err(|source| AgentError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, AgentError> {
    String::from_utf8(read(path)?)
        .map_err(|_| AgentError::Setup(format!("{} is not text", path.display())))
}

impl Credentials {
    /// Loads and checks the files named in the configuration: the signing certificate must
    /// name the configured institution.
    pub fn load(config: &AgentConfig) -> Result<Credentials, AgentError> {
        use pki_types::{CertificateDer, pem::PemObject};
        let institution = InstitutionId::parse(&config.institution)
            .map_err(|e| AgentError::Setup(format!("institution in the configuration: {e}")))?;
        let ca_pem = read(&config.tls.ca)?;
        let ca = AllianceCa::from_pem(&String::from_utf8_lossy(&ca_pem))
            .map_err(|e| AgentError::Setup(e.to_string()))?;
        let cert_pem = read_text(&config.signing.cert)?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            AgentError::Setup(format!(
                "{}: no PEM certificate found ({e})",
                config.signing.cert.display()
            ))
        })?;
        let signer =
            SummarySigner::from_pkcs8_pem(&read_text(&config.signing.key)?, cert.to_vec())?;
        if *signer.institution() != institution {
            return Err(AgentError::Setup(format!(
                "the signing certificate {} is for {}, but this agent is configured as {}",
                config.signing.cert.display(),
                signer.institution(),
                institution
            )));
        }
        Ok(Credentials {
            institution,
            ca,
            ca_pem,
            signer: Arc::new(signer),
            pseudonym_key: load_pseudonym_key(config)?,
            tls_cert_pem: read(&config.tls.cert)?,
            tls_key_pem: read(&config.tls.key)?,
        })
    }

    /// A channel to the hub over mutual TLS that connects on first use and reconnects after
    /// the hub comes back, so the agent can start while the hub is down.
    pub fn hub_channel(&self, config: &AgentConfig) -> Result<Channel, AgentError> {
        Ok(self.hub_endpoint(config)?.connect_lazy())
    }

    /// The hub's address with this member's TLS identity, time-outs set; not yet connected.
    pub fn hub_endpoint(&self, config: &AgentConfig) -> Result<Endpoint, AgentError> {
        let host = tonic::transport::Uri::try_from(config.hub.as_str())
            .ok()
            .and_then(|u| u.host().map(str::to_owned))
            .ok_or_else(|| {
                AgentError::Setup(format!(
                    "hub address {:?} is not a URL such as https://hub.example:7443",
                    config.hub
                ))
            })?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.tls_cert_pem, &self.tls_key_pem))
            .domain_name(config.hub_tls_name.clone().unwrap_or(host));
        Ok(Channel::from_shared(config.hub.clone())
            .map_err(|e| AgentError::Setup(format!("hub address {:?}: {e}", config.hub)))?
            .tls_config(tls)
            .map_err(|e| AgentError::Setup(format!("TLS set-up: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30)))
    }
}

fn load_pseudonym_key(config: &AgentConfig) -> Result<PseudonymKey, AgentError> {
    let (text, origin): (String, PathBuf) = match &config.pseudonym.key_file {
        Some(path) => (read_text(path)?, path.clone()),
        None => match std::env::var(&config.pseudonym.key_env) {
            Ok(v) => (v, PathBuf::from(format!("${}", config.pseudonym.key_env))),
            Err(_) => {
                return Err(AgentError::Setup(format!(
                    "no pseudonymisation key: set [pseudonym] key_file in the configuration or the environment variable {}",
                    config.pseudonym.key_env
                )));
            }
        },
    };
    let types = config
        .pseudonym
        .id_types()
        .map_err(|e| AgentError::Setup(format!("[pseudonym]: {e}")))?;
    Ok(PseudonymKey::from_hex(&text)
        .map_err(|e| AgentError::Setup(format!("{}: {e}", origin.display())))?
        .with_id_types(types))
}
