//! The repository role: serving the full reports behind this member's summaries to alliance
//! members, and fetching another member's report and checking it against the signed summary.
//!
//! Both directions use mutual TLS with certificates of the alliance CA, and identify members by
//! the institution in their certificate (`urn:huren:institution:<id>`), as the hub does:
//!
//! - **Serving** ([`serve`]): client certificates are required and verified against the alliance
//!   CA; the caller's institution comes from its certificate. Each fetch is logged with the
//!   caller, summary id and version (never the patient). Before sending, the stored report is
//!   checked against its digest; a damaged report is not served (`DATA_LOSS`).
//! - **Fetching** ([`fetch_report`]): the serving agent is authenticated by the institution in
//!   its certificate, not by a DNS name ([`PeerVerifier`]): its certificate must chain to the
//!   alliance CA (server or client authentication usage, so a member's ordinary TLS
//!   certificate serves) and name the expected publisher. The report's SHA-256 must equal the
//!   digest in the signed summary; a mismatch is refused ([`FetchError::DigestMismatch`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use huren_core::identity::InstitutionId;
use huren_core::signing::sha256;
use huren_core::summary::SummaryId;
use huren_core::trust::{AllianceCa, institution_in_certificate};
use huren_proto::agent as pb;
use huren_proto::agent::repository_client::RepositoryClient;
use huren_proto::agent::repository_server::{Repository, RepositoryServer};

use crate::store::Store;

/// Largest report served or accepted, in bytes.
pub const MAX_REPORT_BYTES: usize = 32 * 1024 * 1024;

/// The repository service over the agent's store.
pub struct RepositoryService {
    store: Arc<Store>,
    institution: InstitutionId,
}

impl RepositoryService {
    pub fn new(store: Arc<Store>, institution: InstitutionId) -> Self {
        Self { store, institution }
    }
}

#[tonic::async_trait]
impl Repository for RepositoryService {
    async fn fetch_report(
        &self,
        request: Request<pb::FetchReportRequest>,
    ) -> Result<Response<pb::FetchReportResponse>, Status> {
        let caller = request
            .peer_certs()
            .and_then(|c| c.first().map(|leaf| institution_in_certificate(leaf)))
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?
            .map_err(|e| {
                tracing::warn!(error = %e, "report fetch refused: caller certificate");
                Status::unauthenticated(format!("the client certificate names no member: {e}"))
            })?;
        let req = request.into_inner();
        let span = tracing::info_span!("fetch_report", caller = %caller, summary = %req.summary_id, version = req.version);
        let _guard = span.enter();
        let id = SummaryId::parse(&req.summary_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let version = (req.version != 0).then_some(req.version);
        let found = self.store.report(&id, version).map_err(|e| {
            tracing::error!(error = %e, "report fetch failed");
            Status::internal("the report could not be read; the error is in the publisher's log")
        })?;
        let Some(report) = found else {
            tracing::info!("report fetch: not found");
            return Err(Status::not_found(format!(
                "{} holds no report for {id}{}",
                self.institution,
                version.map_or(String::new(), |v| format!(" version {v}"))
            )));
        };
        if sha256(&report.bytes) != report.sha256 {
            tracing::error!(
                version = report.version,
                "the stored report does not match its digest; not served"
            );
            return Err(Status::data_loss(
                "the publisher's copy of the report is damaged; the publisher has been alerted in its log",
            ));
        }
        if crate::ingest::fhir::holds_several_patients(&report.media_type, &report.bytes) {
            tracing::error!(
                version = report.version,
                "the stored report is a FHIR Bundle holding more than one patient; not served"
            );
            return Err(Status::failed_precondition(
                "this report is a FHIR Bundle that also holds other patients' results, so it is not served; the publisher must send the result again from its source as a correction (FHIR status amended or corrected), which gives it a report of its own",
            ));
        }
        tracing::info!(
            version = report.version,
            bytes = report.bytes.len(),
            "report served"
        );
        Ok(Response::new(pb::FetchReportResponse {
            summary_id: id.to_string(),
            version: report.version,
            media_type: report.media_type,
            content: report.bytes,
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("repository TLS set-up: {0}")]
    Tls(tonic::transport::Error),
    #[error("repository server: {0}")]
    Serve(tonic::transport::Error),
}

/// Serves the repository on an already bound listener until `shutdown` completes.
pub async fn serve(
    service: RepositoryService,
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RepositoryError> {
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(ca_pem));
    tracing::info!(addr = ?listener.local_addr().ok(), "repository listening");
    Server::builder()
        .tls_config(tls)
        .map_err(RepositoryError::Tls)?
        .timeout(Duration::from_secs(60))
        .add_service(
            RepositoryServer::new(service).max_encoding_message_size(MAX_REPORT_BYTES + 4096),
        )
        .serve_with_incoming_shutdown(no_delay(listener), shutdown)
        .await
        .map_err(RepositoryError::Serve)
}

/// Why a report could not be fetched or was refused.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("TLS set-up: {0}")]
    Setup(String),
    #[error("cannot reach the repository of {publisher} at {addr}: {detail}")]
    Connect {
        publisher: InstitutionId,
        addr: String,
        detail: String,
    },
    #[error("the repository of {publisher} refused ({:?}): {}", .status.code(), .status.message())]
    Refused {
        publisher: InstitutionId,
        status: Status,
    },
    #[error(
        "the report served for {summary_id} version {version} does not match the signed summary (expected SHA-256 {expected}, got {actual}); it was discarded"
    )]
    DigestMismatch {
        summary_id: String,
        version: u32,
        expected: String,
        actual: String,
    },
    #[error("the repository answered for {got}, not for {asked}")]
    WrongAnswer { asked: String, got: String },
}

/// A report fetched and checked against its digest.
#[derive(Clone, Debug)]
pub struct FetchedReport {
    pub summary_id: String,
    pub version: u32,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// What to fetch and what it must hash to.
pub struct ReportRequest<'a> {
    /// `host:port` of the publisher's repository.
    pub addr: &'a str,
    pub publisher: &'a InstitutionId,
    pub summary_id: &'a SummaryId,
    pub version: u32,
    /// `report.sha256` of the signed summary (verified by the caller, e.g. from History).
    pub expected_sha256: [u8; 32],
}

/// The asking member's TLS identity and trust anchor.
pub struct PeerIdentity<'a> {
    pub ca: &'a AllianceCa,
    pub cert_pem: &'a [u8],
    pub key_pem: &'a [u8],
    /// This member, for the log.
    pub institution: &'a InstitutionId,
}

/// Fetches a report from a publisher's repository and checks it against the signed digest.
pub async fn fetch_report(
    me: &PeerIdentity<'_>,
    req: &ReportRequest<'_>,
) -> Result<FetchedReport, FetchError> {
    let channel = peer_channel(me, req.publisher, req.addr).await?;
    let mut client =
        RepositoryClient::new(channel).max_decoding_message_size(MAX_REPORT_BYTES + 4096);
    let answer = client
        .fetch_report(pb::FetchReportRequest {
            summary_id: req.summary_id.to_string(),
            version: req.version,
        })
        .await
        .map_err(|status| {
            tracing::warn!(publisher = %req.publisher, summary = %req.summary_id, code = ?status.code(), "report fetch refused");
            FetchError::Refused {
                publisher: req.publisher.clone(),
                status,
            }
        })?
        .into_inner();
    if answer.summary_id != req.summary_id.as_str()
        || (req.version != 0 && answer.version != req.version)
    {
        return Err(FetchError::WrongAnswer {
            asked: format!("{} version {}", req.summary_id, req.version),
            got: format!("{} version {}", answer.summary_id, answer.version),
        });
    }
    let actual = sha256(&answer.content);
    if actual != req.expected_sha256 {
        tracing::error!(publisher = %req.publisher, summary = %req.summary_id, version = answer.version, "fetched report does not match the signed summary; discarded");
        return Err(FetchError::DigestMismatch {
            summary_id: answer.summary_id,
            version: answer.version,
            expected: hex::encode(req.expected_sha256),
            actual: hex::encode(actual),
        });
    }
    tracing::info!(
        publisher = %req.publisher,
        asker = %me.institution,
        summary = %req.summary_id,
        version = answer.version,
        bytes = answer.content.len(),
        "report fetched and matches the signed summary"
    );
    Ok(FetchedReport {
        summary_id: answer.summary_id,
        version: answer.version,
        media_type: answer.media_type,
        content: answer.content,
    })
}

/// An HTTP/2 channel over mutual TLS to `addr`, accepting only a certificate of `publisher`.
async fn peer_channel(
    me: &PeerIdentity<'_>,
    publisher: &InstitutionId,
    addr: &str,
) -> Result<tonic::transport::Channel, FetchError> {
    use rustls::pki_types::pem::PemObject;
    let setup = |e: String| FetchError::Setup(e);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(me.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| setup(format!("TLS certificate: {e}")))?;
    let key =
        PrivateKeyDer::from_pem_slice(me.key_pem).map_err(|e| setup(format!("TLS key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PeerVerifier {
        ca: me.ca.der().to_vec(),
        expected: publisher.clone(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)
        .map_err(|e| setup(format!("TLS identity: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = addr.to_owned();
    let connect = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let connector = connector.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            // The name is not checked (the verifier checks the institution); rustls needs one.
            let name = ServerName::try_from("repository.huren.invalid")
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let connect_err = |detail: String| FetchError::Connect {
        publisher: publisher.clone(),
        addr: addr.to_owned(),
        detail,
    };
    let _: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| connect_err(e.to_string()))?
        .next()
        .ok_or_else(|| connect_err("the address does not resolve".into()))?;
    tonic::transport::Endpoint::from_static("http://repository.huren.invalid")
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .connect_with_connector(connect)
        .await
        .map_err(|e| connect_err(crate::error::chain(&e)))
}

/// Accepts a server certificate that chains to the alliance CA (server- or client-auth usage)
/// and names the expected institution; the DNS name is not used.
#[derive(Debug)]
pub struct PeerVerifier {
    ca: Vec<u8>,
    expected: InstitutionId,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = CertificateDer::from(self.ca.as_slice());
        let anchor = webpki::anchor_from_trusted_cert(&ca)
            .map_err(|e| rustls::Error::General(format!("alliance CA: {e:?}")))?;
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer certificate: {e:?}")))?;
        let anchors = [anchor];
        let verify = |usage| {
            ee.verify_for_usage(
                self.algorithms.all,
                &anchors,
                intermediates,
                now,
                usage,
                None,
                None,
            )
        };
        verify(webpki::KeyUsage::server_auth())
            .or_else(|_| verify(webpki::KeyUsage::client_auth()))
            .map_err(|e| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                    rustls::OtherError(Arc::new(PeerCertError(format!(
                        "not a certificate of the alliance CA: {e:?}"
                    )))),
                ))
            })?;
        let named = institution_in_certificate(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(PeerCertError(e.to_string())),
            )))
        })?;
        if named != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PeerCertError(
                    format!(
                        "the repository is {named}, not the publisher {}",
                        self.expected
                    ),
                )))),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct PeerCertError(String);

impl std::fmt::Display for PeerCertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerCertError {}

/// Accepted connections with Nagle's algorithm off. `serve_with_incoming` ignores tonic's own
/// `tcp_nodelay` setting, and with Nagle on, a response written in two parts waits for the
/// client's delayed ACK: about 40 ms per call.
fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(error = %e, "could not turn off Nagle's algorithm on a connection");
            }
        })
    })
}
