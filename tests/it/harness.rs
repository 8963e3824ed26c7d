//! The shared test harness: a real hub on `127.0.0.1:<free port>` with real mutual TLS, a fresh
//! development PKI and a fresh store in a temporary directory, plus helpers to make, sign and
//! publish summaries.
//!
//! ```ignore
//! let hub = TestHub::start().await?;            // in-process hub (huren_hub::run)
//! let mut a = hub.client("hosp-a").await?;       // mTLS client of member hosp-a
//! let patient = hub.patient("E00000001");        // pseudonym with the alliance key
//! let summary = lab_summary("hosp-a", "LAB-1", patient, HGB, hours(1))?;
//! let receipt = publish(&mut a, sign(&hub.member("hosp-a")?, &summary)?).await?;
//! ```
//!
//! The hub runs either in this process ([`TestHub::start`], a tokio task, stopped gracefully
//! through a oneshot) or as the real `huren-hub` binary ([`TestHub::start_process`], killed with
//! SIGKILL by [`TestHub::stop`] or when dropped). Either way [`TestHub::restart`] brings it back on
//! the same address and the same store. Start-up is confirmed with a health check over mTLS,
//! never by sleeping.
//!
//! Each hub runs on the [`Backend`] of the test: sled in `store/`, or a PostgreSQL database of
//! its own on the process's throwaway cluster (`huren_hub::store::postgres::cluster`: started
//! on first use, stopped and removed when the test process ends; `HUREN_TEST_POSTGRES` names a
//! server to use instead). A test written inside `on_each_store! { … }` runs once on each.
//!
//! Files in [`TestHub::root`]:
//!
//! ```text
//! pki/…            the development PKI (ca/ca.pem, hub/hub.pem, members/<id>/…), see huren-certs-dev
//! hub.toml         the hub configuration
//! store/           the hub's store
//! hub-<n>.log      stderr of the n-th hub process (process mode only)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use huren_certs_dev::{DevPki, DevPkiDir, MemberCredentials, MemberFiles, PemPair};
use huren_core::identity::InstitutionId;
use huren_core::pb;
use huren_core::pseudonym::{PatientId, Pseudonym, PseudonymKey};
use huren_core::signing::{SummarySigner, signing_message};
use huren_core::summary::{
    AbnormalFlag, Category, ExamResult, Item, LabResult, Outcome, ReportRef,
    Status as SummaryStatus, Summary, SummaryId, UnixMillis,
};
use huren_hub::config::Limits;
use huren_hub::server::ServerError;
use huren_hub::store::sled::{run_leaves, run_value};
use huren_proto::hub::hub_client::HubClient;
use huren_proto::hub::{
    FindPriorRequest, HistoryRequest, ItemCode, PublishRequest, PublishResponse,
};

/// The store backend a test's hubs run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sled,
    Postgres,
}

tokio::task_local! {
    static BACKEND: Backend;
}

impl Backend {
    /// The backend of the running test: the one `on_each_store!` set, sled otherwise.
    pub fn current() -> Backend {
        BACKEND.try_with(|b| *b).unwrap_or(Backend::Sled)
    }

    /// Runs a test body with this backend as [`Backend::current`].
    pub async fn scope<F: std::future::Future>(self, test: F) -> F::Output {
        BACKEND.scope(self, test).await
    }
}

/// Makes two tests of one: `NAME::sled` and `NAME::postgres`, the same body on each
/// [`Backend`]. Write the test as usual (attributes, doc comment, `async fn NAME() -> …`)
/// inside the braces.
macro_rules! on_each_store {
    ($(#[$attr:meta])* async fn $name:ident() $(-> $ret:ty)? $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$attr])*
            async fn sled() $(-> $ret)? {
                $crate::harness::Backend::Sled.scope(async move $body).await
            }

            $(#[$attr])*
            async fn postgres() $(-> $ret)? {
                $crate::harness::Backend::Postgres.scope(async move $body).await
            }
        }
    };
}

/// How long a hub may take to come up (or a locked store to be released) before a test fails.
/// Queries of the agent-level tests: for treatment, no one named.
pub const TREATMENT: huren_agent::Asking = huren_agent::Asking {
    purpose: huren_core::logentry::Purpose::Treatment,
    requester: None,
};

pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// The name the hub's certificate carries and clients check.
pub const HUB_DOMAIN: &str = "localhost";

/// LOINC, the code system of the lab items below.
pub const LOINC: &str = "http://loinc.org";
/// LOINC 718-7, haemoglobin.
pub const HGB: &str = "718-7";
/// LOINC 2345-7, glucose.
pub const GLUCOSE: &str = "2345-7";
/// Code system of the imaging items below (an alliance catalogue).
pub const EXAM_CATALOGUE: &str = "urn:huren:catalogue:exam";
/// Chest CT in [`EXAM_CATALOGUE`].
pub const CT_CHEST: &str = "CT-CHEST";

/// Member id the harness itself uses for start-up health checks.
const PROBE_MEMBER: &str = "harness-probe";

/// The example policy's administrator (a health commission): reads statistics and access
/// reports for every member.
pub const ADMIN: &str = "xian-health-commission";

/// Members the test policy adds to the example policy's (id, level, GB/T 2260 region). The
/// example's own members (shx-prov-people, xian-central, lantian-county, lantian-tangyu,
/// xian-health-commission) are there too.
pub const TEST_MEMBERS: &[(&str, &str, &str)] = &[
    ("hosp-a", "tertiary", "610102"),
    ("hosp-b", "tertiary", "610104"),
    ("hosp-c", "secondary", "610122"),
    ("harness-probe", "primary", "610122"),
];

/// The example policy with the test members added.
pub fn test_policy() -> anyhow::Result<String> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("hub/policy.example.toml");
    let mut text = fs::read_to_string(&example).with_context(|| example.display().to_string())?;
    for (id, level, region) in TEST_MEMBERS {
        text.push_str(&format!(
            "\n[[members]]\nid = \"{id}\"\nname = \"{id}\"\nlevel = \"{level}\"\nregion = \"{region}\"\n"
        ));
    }
    Ok(text)
}

/// Runs the `huren-agent` binary with a configuration file, as a hospital IT engineer would,
/// and returns (succeeded, stdout, stderr). tokio's `Command`, so a hub running on the test's
/// own runtime keeps answering while it waits.
pub async fn run_agent_cli(
    config: &Path,
    args: &[String],
) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_huren-agent"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Installs ring as rustls' process-wide provider (idempotent).
pub fn init() {
    huren::install_crypto_provider();
}

/// A running (or stopped) hub with its PKI, configuration and store in a temporary directory.
pub struct TestHub {
    /// Where the hub listens. Kept across [`TestHub::restart`].
    pub addr: SocketAddr,
    /// The alliance's development CA; issue more certificates from it at will.
    pub pki: DevPki,
    /// The temporary directory holding everything (removed on drop).
    pub dir: TempDir,
    /// Paths of the PKI files: `paths.ca_cert`, `paths.hub_cert`, `paths.hub_key`,
    /// `paths.pseudonym_key`, … (members: see [`TestHub::member_files`]).
    pub paths: DevPkiDir,
    /// The hub configuration file.
    pub config_path: PathBuf,
    /// The hub's store folder (sled), and the prefix of its log key's path (either backend).
    pub store_path: PathBuf,
    /// The store's backend, and for PostgreSQL the database's URL (as its superuser).
    pub backend: Backend,
    pub store_url: Option<String>,
    /// The alliance policy the hub runs with: hub/policy.example.toml plus [`TEST_MEMBERS`].
    /// Rewrite it to change the policy; the hub checks it every second.
    pub policy_path: PathBuf,
    mode: Mode,
    running: Running,
    starts: u32,
    members: Mutex<BTreeMap<String, (MemberCredentials, MemberFiles)>>,
    other_pki: OnceLock<DevPki>,
    other_members: Mutex<BTreeMap<String, MemberCredentials>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    InProcess,
    Process,
}

enum Running {
    Task {
        shutdown: oneshot::Sender<()>,
        join: JoinHandle<Result<(), ServerError>>,
    },
    Process(ChildGuard),
    Stopped,
}

impl TestHub {
    /// Starts a hub in this process with default limits.
    pub async fn start() -> anyhow::Result<TestHub> {
        Self::start_with(Limits::default()).await
    }

    /// Starts a hub in this process with the given limits.
    pub async fn start_with(limits: Limits) -> anyhow::Result<TestHub> {
        let mut hub = Self::prepare(Mode::InProcess, &limits).await?;
        hub.launch().await?;
        Ok(hub)
    }

    /// Starts a hub in this process whose policy is the test policy with `extra` (TOML)
    /// appended.
    pub async fn start_with_policy(extra: &str) -> anyhow::Result<TestHub> {
        let mut hub = Self::prepare(Mode::InProcess, &Limits::default()).await?;
        let mut policy = fs::read_to_string(&hub.policy_path)?;
        policy.push('\n');
        policy.push_str(extra);
        fs::write(&hub.policy_path, policy)?;
        hub.launch().await?;
        Ok(hub)
    }

    /// Starts a hub in this process with its metrics endpoint on a free local port, returned.
    pub async fn start_with_metrics() -> anyhow::Result<(TestHub, SocketAddr)> {
        let mut hub = Self::prepare(Mode::InProcess, &Limits::default()).await?;
        let base = fs::read_to_string(&hub.config_path)?;
        let mut attempts = 0;
        loop {
            // A port the system just gave out; the hub binds it again right after. In between,
            // another test's outgoing connection may be given the same port: then another.
            let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            fs::write(
                &hub.config_path,
                format!("{base}\n[metrics]\nlisten = \"{metrics}\"\n"),
            )?;
            attempts += 1;
            match hub.launch().await {
                Ok(()) => return Ok((hub, metrics)),
                Err(e)
                    if attempts < 5
                        && e.chain().any(|c| {
                            matches!(
                                c.downcast_ref::<ServerError>(),
                                Some(ServerError::Metrics { .. })
                            )
                        }) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts a hub in this process with `more` appended to its configuration file (TOML
    /// tables, e.g. `[[witness]]` entries). A `[log]` table in `more` replaces the one the
    /// harness writes for PostgreSQL (it must then name the log key).
    pub async fn start_with_config(more: &str) -> anyhow::Result<TestHub> {
        let mut hub = Self::prepare(Mode::InProcess, &Limits::default()).await?;
        let mut config = fs::read_to_string(&hub.config_path)?;
        if more.lines().any(|l| l.trim() == "[log]")
            && let Some(at) = config.find("\n[log]\nkey = ")
        {
            let end = config[at + 1..]
                .find("\n\n")
                .map_or(config.len(), |e| at + 1 + e + 1);
            config.replace_range(at..end, "");
        }
        config.push('\n');
        config.push_str(more);
        fs::write(&hub.config_path, config)?;
        hub.launch().await?;
        Ok(hub)
    }

    /// Starts the real `huren-hub` binary as a child process (default limits).
    pub async fn start_process() -> anyhow::Result<TestHub> {
        let mut hub = Self::prepare(Mode::Process, &Limits::default()).await?;
        hub.launch().await?;
        Ok(hub)
    }

    /// Makes the PKI, the configuration and the paths; does not start anything.
    async fn prepare(mode: Mode, limits: &Limits) -> anyhow::Result<TestHub> {
        init();
        let backend = Backend::current();
        let store_url = match backend {
            Backend::Sled => None,
            Backend::Postgres => Some(
                huren_hub::store::postgres::cluster::shared()
                    .map_err(|e| anyhow::anyhow!("the PostgreSQL tests need a server: {e}"))?
                    .create_database()
                    .await
                    .map_err(|e| anyhow::anyhow!("a database for the test: {e}"))?,
            ),
        };
        let dir = tempfile::Builder::new().prefix("huren-it-").tempdir()?;
        let pki = DevPki::generate()?;
        let paths = pki.write_to(&dir.path().join("pki"), &[], &[])?;
        let store_path = dir.path().join("store");
        let config_path = dir.path().join("hub.toml");
        let policy_path = dir.path().join("policy.toml");
        fs::write(&policy_path, test_policy()?)?;
        let quote = |p: &Path| serde_json::to_string(&p.to_string_lossy());
        let mut log_key = store_path.clone().into_os_string();
        log_key.push(".log-key");
        let log_key = PathBuf::from(log_key);
        let store = match &store_url {
            None => quote(&store_path)?,
            Some(url) => serde_json::to_string(url)?,
        };
        let mut config = format!(
            "listen = \"127.0.0.1:0\"\nstore = {}\npolicy = {}\n\n[tls]\nca = {}\ncert = {}\nkey = {}\n\n\
             [limits]\nmax_results = {}\nmax_message_bytes = {}\nmax_batch_bytes = {}\n\
             request_timeout_seconds = {}\npolicy_poll_seconds = 1\n\
             max_connections = {}\nmax_connections_per_address = {}\n\
             handshake_timeout_seconds = {}\nidle_timeout_seconds = {}\nsend_timeout_seconds = {}\n",
            store,
            quote(&policy_path)?,
            quote(&paths.ca_cert)?,
            quote(&paths.hub_cert)?,
            quote(&paths.hub_key)?,
            limits.max_results,
            limits.max_message_bytes,
            limits.max_batch_bytes,
            limits.request_timeout_seconds,
            limits.max_connections,
            limits.max_connections_per_address,
            limits.handshake_timeout_seconds,
            limits.idle_timeout_seconds,
            limits.send_timeout_seconds,
        );
        if store_url.is_some() {
            // Beside the sled store's, where tests look for it.
            config.push_str(&format!("\n[log]\nkey = {}\n", quote(&log_key)?));
        }
        fs::write(&config_path, config)?;
        Ok(TestHub {
            backend,
            store_url,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pki,
            dir,
            paths,
            config_path,
            store_path,
            policy_path,
            mode,
            running: Running::Stopped,
            starts: 0,
            members: Mutex::new(BTreeMap::new()),
            other_pki: OnceLock::new(),
            other_members: Mutex::new(BTreeMap::new()),
        })
    }

    /// The temporary directory everything lives in.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The alliance CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.pki.ca_cert_pem()
    }

    /// `https://127.0.0.1:<port>`, what a client dials (with domain name [`HUB_DOMAIN`]).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The members' shared pseudonymisation key.
    pub fn pseudonym_key(&self) -> PseudonymKey {
        PseudonymKey::new(*self.pki.pseudonym_key())
    }

    /// The access report of `patient` as `who` asks for it (all time), oldest first.
    pub async fn access_entries(
        &self,
        who: &str,
        patient: &Pseudonym,
    ) -> anyhow::Result<Vec<huren_proto::hub::AccessEntry>> {
        Ok(self
            .client(who)
            .await?
            .access_report(huren_proto::hub::AccessReportRequest {
                requester: String::new(),
                patient_pseudonym: patient.as_bytes().to_vec(),
                from_ms: 0,
                to_ms: 0,
            })
            .await?
            .into_inner()
            .entries)
    }

    /// The pseudonym of the patient with passport number `passport`.
    pub fn patient(&self, passport: &str) -> Pseudonym {
        match PatientId::new("passport", passport) {
            Ok(id) => self.pseudonym_key().pseudonymise(&id),
            Err(e) => panic!("test patient id {passport:?}: {e}"),
        }
    }

    /// The pseudonym of a patient id of any type (as an agent computes it).
    pub fn pseudonym_of(&self, id_type: &str, id: &str) -> anyhow::Result<Pseudonym> {
        Ok(self
            .pseudonym_key()
            .pseudonymise(&PatientId::new(id_type, id)?))
    }

    /// Both certificates of member `id`, issued (and written under `pki/members/<id>/`) on first
    /// use and cached.
    pub fn member(&self, id: &str) -> anyhow::Result<MemberCredentials> {
        Ok(self.member_entry(id)?.0)
    }

    /// Paths of member `id`'s certificate and key files (issued on first use).
    pub fn member_files(&self, id: &str) -> anyhow::Result<MemberFiles> {
        Ok(self.member_entry(id)?.1)
    }

    fn member_entry(&self, id: &str) -> anyhow::Result<(MemberCredentials, MemberFiles)> {
        let mut members = self
            .members
            .lock()
            .map_err(|_| anyhow::anyhow!("member cache poisoned"))?;
        if let Some(entry) = members.get(id) {
            return Ok(entry.clone());
        }
        let institution = InstitutionId::parse(id)?;
        let written =
            self.pki
                .write_to(&self.paths.root, &[], std::slice::from_ref(&institution))?;
        let files = written
            .member(&institution)
            .context("certs-dev wrote no files for the member")?
            .clone();
        let read = |p: &Path| fs::read_to_string(p).with_context(|| format!("{}", p.display()));
        let credentials = MemberCredentials {
            institution,
            tls: PemPair {
                cert_pem: read(&files.tls_cert)?,
                key_pem: read(&files.tls_key)?,
            },
            signing: PemPair {
                cert_pem: read(&files.signing_cert)?,
                key_pem: read(&files.signing_key)?,
            },
        };
        members.insert(id.to_owned(), (credentials.clone(), files.clone()));
        Ok((credentials, files))
    }

    /// Member `id`'s certificates issued by a second, unrelated development CA (cached).
    pub fn other_ca_member(&self, id: &str) -> anyhow::Result<MemberCredentials> {
        let mut members = self
            .other_members
            .lock()
            .map_err(|_| anyhow::anyhow!("member cache poisoned"))?;
        if let Some(m) = members.get(id) {
            return Ok(m.clone());
        }
        let other = match self.other_pki.get() {
            Some(p) => p,
            None => {
                let _ = self.other_pki.set(DevPki::generate()?);
                self.other_pki.get().context("other CA")?
            }
        };
        let m = other.issue_member(&InstitutionId::parse(id)?)?;
        members.insert(id.to_owned(), m.clone());
        Ok(m)
    }

    /// An mTLS channel to the hub with member `id`'s TLS certificate.
    pub async fn channel(&self, id: &str) -> anyhow::Result<Channel> {
        self.channel_at(self.addr, id).await
    }

    /// An mTLS channel of member `id` to the hub at `addr` (this hub or a [`Sibling`]).
    pub async fn channel_at(&self, addr: SocketAddr, id: &str) -> anyhow::Result<Channel> {
        let m = self.member(id)?;
        let tls = self
            .tls()
            .identity(Identity::from_pem(&m.tls.cert_pem, &m.tls.key_pem));
        let channel = Channel::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect()
            .await
            .with_context(|| format!("connecting to the hub at {addr} as {id}"))?;
        Ok(channel)
    }

    /// A Hub client of member `id` to the hub at `addr` (this hub or a [`Sibling`]).
    pub async fn client_at(
        &self,
        addr: SocketAddr,
        id: &str,
    ) -> anyhow::Result<HubClient<Channel>> {
        Ok(HubClient::new(self.channel_at(addr, id).await?))
    }

    /// A Hub client of member `id` over mutual TLS.
    pub async fn client(&self, id: &str) -> anyhow::Result<HubClient<Channel>> {
        Ok(HubClient::new(self.channel(id).await?))
    }

    /// A connection of member `id` that answers one health check, then stops reading: its
    /// runtime is blocked until the returned guard is dropped (a client machine that froze).
    pub async fn stalled_connection(&self, id: &str) -> anyhow::Result<StalledConnection> {
        let m = self.member(id)?;
        let tls = self
            .tls()
            .identity(Identity::from_pem(&m.tls.cert_pem, &m.tls.key_pem));
        let endpoint = Channel::from_shared(self.url())?.tls_config(tls)?;
        let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<()>>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let channel = runtime.block_on(async {
                let channel = endpoint.connect().await?;
                HealthClient::new(channel.clone())
                    .check(HealthCheckRequest::default())
                    .await?;
                anyhow::Ok(channel)
            });
            let connected = channel
                .as_ref()
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{e:#}"));
            let _ = ready_tx.send(connected);
            // Nothing runs on this runtime until released: the connection is open and silent.
            let _ = released.recv();
            drop(channel);
        });
        ready_rx.await??;
        Ok(StalledConnection {
            release: Some(release),
            thread: Some(thread),
        })
    }

    /// A client that trusts the hub but presents no certificate. The hub's refusal shows at the
    /// first call, not here.
    pub fn client_without_cert(&self) -> anyhow::Result<HubClient<Channel>> {
        let channel = Channel::from_shared(self.url())?
            .tls_config(self.tls())?
            .connect_lazy();
        Ok(HubClient::new(channel))
    }

    /// A client that trusts the hub and presents member `id`'s certificate from another CA. The
    /// hub's refusal shows at the first call.
    pub fn client_from_other_ca(&self, id: &str) -> anyhow::Result<HubClient<Channel>> {
        let m = self.other_ca_member(id)?;
        self.client_with_tls(&m.tls)
    }

    /// A client that presents any certificate and key (PEM) as its TLS identity, connecting on
    /// first use: for certificates the hub must refuse.
    pub fn client_with_tls(&self, identity: &PemPair) -> anyhow::Result<HubClient<Channel>> {
        let tls = self
            .tls()
            .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
        let channel = Channel::from_shared(self.url())?
            .tls_config(tls)?
            .connect_lazy();
        Ok(HubClient::new(channel))
    }

    fn tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca_pem()))
            .domain_name(HUB_DOMAIN)
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) a hub started with [`TestHub::start_process`]: a
    /// frozen hub keeps its connections open and answers nothing.
    pub fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        let Running::Process(child) = &self.running else {
            anyhow::bail!("only a hub run as a process can be frozen");
        };
        child.signal(if frozen { libc::SIGSTOP } else { libc::SIGCONT })?;
        // A signal takes effect when the kernel next schedules the process: wait for it.
        for _ in 0..500 {
            if child.stopped()? == frozen {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        anyhow::bail!(
            "the hub process did not {}",
            if frozen { "stop" } else { "continue" }
        )
    }

    /// Whether the hub is running (as far as the harness knows).
    pub fn is_running(&self) -> bool {
        !matches!(self.running, Running::Stopped)
    }

    /// Stops the hub. In process: graceful shutdown; fails if `run` returned an error. As a
    /// process: SIGKILL (a crash, nothing is flushed on the way out), then waits for the exit.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Task { shutdown, join } => {
                let _ = shutdown.send(());
                join.await
                    .context("hub task panicked")?
                    .context("hub stopped with an error")?;
            }
            Running::Process(mut child) => {
                child.kill()?;
            }
            Running::Stopped => {}
        }
        Ok(())
    }

    /// Stops the hub the way an operator does: in process, graceful shutdown (as [`stop`]); as a
    /// process, SIGTERM, and the process must exit successfully.
    ///
    /// [`stop`]: TestHub::stop
    pub async fn stop_gracefully(&mut self) -> anyhow::Result<()> {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Process(mut child) => {
                // Waited for on another thread: this test's runtime must keep running, so its
                // clients can see the hub close their connections.
                let status = tokio::task::spawn_blocking(move || child.terminate()).await??;
                ensure!(status.success(), "the hub exited with {status} on SIGTERM");
                Ok(())
            }
            other => {
                self.running = other;
                self.stop().await
            }
        }
    }

    /// Stops the hub (if running) and starts it again, same way, same address, same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// Number of summary versions in the store, read directly. The hub must be stopped.
    pub async fn stored_summary_count(&self) -> anyhow::Result<usize> {
        if let Some(url) = &self.store_url {
            ensure!(!self.is_running(), "stop the hub before opening its store");
            let store = huren_hub::store::PgStore::open(url).await?;
            return Ok(usize::try_from(store.summary_count().await?)?);
        }
        let store = self
            .when_store_released(|| Ok(huren_hub::store::SledStore::open(&self.store_path)?))
            .await?;
        Ok(usize::try_from(store.summary_count()?)?)
    }

    /// The stopped hub's store opened directly with sled (to inspect or tamper with it). Drop
    /// the handle before [`TestHub::restart`].
    pub async fn open_store_db(&self) -> anyhow::Result<sled::Db> {
        ensure!(
            self.backend == Backend::Sled,
            "open_store_db is for sled stores"
        );
        self.when_store_released(|| Ok(sled::open(&self.store_path)?))
            .await
    }

    /// Runs `open` until it succeeds: a stopped in-process hub lets go of its store (sled's file
    /// lock) only when the hub's worker threads have noticed, shortly after `run` returns.
    async fn when_store_released<T>(
        &self,
        open: impl Fn() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        ensure!(!self.is_running(), "stop the hub before opening its store");
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            match open() {
                Ok(opened) => return Ok(opened),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e.context("opening the stopped hub's store")),
            }
        }
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        ensure!(!self.is_running(), "the hub is already running");
        self.starts += 1;
        match self.mode {
            Mode::InProcess => self.launch_task().await,
            Mode::Process => self.launch_process().await,
        }
    }

    /// Binds, then spawns `huren_hub::run`, then waits for a health check to pass. A store still
    /// locked by the previous run (its worker threads exit asynchronously) is retried until
    /// [`STARTUP_DEADLINE`].
    async fn launch_task(&mut self) -> anyhow::Result<()> {
        let config = huren_hub::HubConfig::load(&self.config_path)?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            let listener = tokio::net::TcpListener::bind(self.addr)
                .await
                .with_context(|| format!("binding {}", self.addr))?;
            self.addr = listener.local_addr()?;
            let (shutdown, stop) = oneshot::channel::<()>();
            let mut join = tokio::spawn(huren_hub::run(config.clone(), listener, async {
                let _ = stop.await;
            }));
            let probe = tokio::time::timeout_at(deadline, self.probe());
            tokio::select! {
                biased;
                ended = &mut join => match ended.context("hub task panicked")? {
                    Err(ServerError::Store { .. }) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(e) => return Err(e).context("the hub did not start"),
                    Ok(()) => bail!("the hub stopped right after starting"),
                },
                ready = probe => {
                    let ready = ready.context("the hub did not answer a health check in time");
                    if let Err(e) = ready.and_then(|r| r) {
                        join.abort();
                        return Err(e);
                    }
                    self.running = Running::Task { shutdown, join };
                    return Ok(());
                }
            }
        }
    }

    /// Runs the `huren-hub` binary on this hub's configuration, learns its address from the line
    /// it prints, then waits for a health check to pass.
    async fn launch_process(&mut self) -> anyhow::Result<()> {
        let log_path = self.root().join(format!("hub-{}.log", self.starts));
        let (child, addr) = self.spawn_process(self.addr, &log_path).await?;
        self.addr = addr;
        self.running = Running::Process(child);
        Ok(())
    }

    /// Runs one more `huren-hub` process on this hub's configuration (so on its PostgreSQL
    /// database, with its log key and certificate) on a free port of its own: several hubs,
    /// one log (README, "Several hubs"). Only a PostgreSQL hub can have siblings (a sled
    /// store is one process's).
    pub async fn start_sibling(&self) -> anyhow::Result<Sibling> {
        ensure!(
            self.store_url.is_some(),
            "only hubs on PostgreSQL share a store; run the test on Backend::Postgres"
        );
        let n = SIBLINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = self.root().join(format!("sibling-{n}.log"));
        let (child, addr) = self
            .spawn_process(SocketAddr::from(([127, 0, 0, 1], 0)), &log_path)
            .await?;
        Ok(Sibling {
            addr,
            child: Some(child),
            log_path,
        })
    }

    /// Spawns `huren-hub --config <this hub's> --listen <listen>` with stderr in `log_path`,
    /// and returns it once it answers a health check at the address it printed.
    async fn spawn_process(
        &self,
        listen: SocketAddr,
        log_path: &Path,
    ) -> anyhow::Result<(ChildGuard, SocketAddr)> {
        let log = fs::File::create(log_path)?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_huren-hub"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("--listen")
            .arg(listen.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let (child, line) = ChildGuard::spawn_reading_first_line(command, "huren-hub")?;
        let log_tail = || {
            let text = fs::read_to_string(log_path).unwrap_or_default();
            let lines: Vec<_> = text.lines().rev().take(20).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        let line = match tokio::time::timeout(STARTUP_DEADLINE, line).await {
            Ok(Ok(Ok(line))) => line,
            Ok(Ok(Err(e))) => bail!("reading huren-hub's stdout: {e}\n{}", log_tail()),
            Ok(Err(_)) | Err(_) => bail!("huren-hub printed no address\n{}", log_tail()),
        };
        let addr = line
            .trim()
            .strip_prefix("huren-hub listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .with_context(|| format!("unexpected first line {line:?}\n{}", log_tail()))?;
        match tokio::time::timeout(STARTUP_DEADLINE, self.probe_at(addr)).await {
            Ok(Ok(())) => Ok((child, addr)),
            Ok(Err(e)) => Err(e.context(log_tail())),
            Err(_) => bail!("huren-hub did not answer a health check\n{}", log_tail()),
        }
    }

    /// One health check over mTLS: the hub is up and serving.
    async fn probe(&self) -> anyhow::Result<()> {
        self.probe_at(self.addr).await
    }

    /// One health check over mTLS of the hub at `addr` (this hub or a sibling).
    async fn probe_at(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let mut health = HealthClient::new(self.channel_at(addr, PROBE_MEMBER).await?);
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status();
        ensure!(status == ServingStatus::Serving, "hub health is {status:?}");
        Ok(())
    }
}

/// Siblings started in this test process, for their log files' names.
static SIBLINGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One more `huren-hub` process on a [`TestHub`]'s PostgreSQL database
/// ([`TestHub::start_sibling`]); killed (SIGKILL) by [`Sibling::kill`] or when dropped.
pub struct Sibling {
    pub addr: SocketAddr,
    child: Option<ChildGuard>,
    /// Its stderr.
    pub log_path: PathBuf,
}

impl Sibling {
    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
        }
        Ok(())
    }

    /// The last lines of its stderr (for a failing test's message).
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<_> = text.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        // A test that fails half-way must not leave a hub running, and the hub must be gone
        // before the temporary directory is removed (fields drop after this).
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Task { shutdown, join } => {
                let _ = shutdown.send(());
                join.abort();
            }
            Running::Process(child) => drop(child),
            Running::Stopped => {}
        }
    }
}

/// A child process that is killed (SIGKILL) and reaped when the guard is dropped, so a failing
/// test never leaves it behind.
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    pub fn new(child: Child, name: &str) -> ChildGuard {
        ChildGuard {
            child,
            name: name.to_owned(),
        }
    }

    /// Spawns `command` (whose stdout must be piped) and returns the guard and the first line
    /// the child prints. The rest of stdout is drained in the background.
    pub fn spawn_reading_first_line(
        mut command: Command,
        name: &str,
    ) -> anyhow::Result<(ChildGuard, oneshot::Receiver<std::io::Result<String>>)> {
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take();
        let guard = ChildGuard::new(child, name);
        let stdout = stdout.context("stdout of the child is not piped")?;
        let (tx, rx) = oneshot::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send(first);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        Ok((guard, rx))
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill(2) with a pid this guard still owns (not yet waited for) and a valid
        // signal number; it touches no memory of ours.
        let sent = unsafe { libc::kill(pid, signal) };
        ensure!(sent == 0, "could not send signal {signal} to {}", self.name);
        Ok(())
    }

    /// Whether every thread of the child is stopped (SIGSTOP), from /proc (Linux).
    pub fn stopped(&self) -> anyhow::Result<bool> {
        let mut all = true;
        for task in fs::read_dir(format!("/proc/{}/task", self.child.id()))? {
            let stat = fs::read_to_string(task?.path().join("stat"))?;
            // pid (comm) state …: the state follows the last ')'.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .context("unreadable /proc stat")?;
            all &= state == 'T';
        }
        Ok(all)
    }

    /// SIGTERM (what systemd or Ctrl-C sends), then wait for the exit.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill(2) with a pid this guard still owns (not yet waited for) and a valid
        // signal number; it touches no memory of ours.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        ensure!(sent == 0, "could not send SIGTERM to {}", self.name);
        self.child
            .wait()
            .with_context(|| format!("waiting for {} to exit", self.name))
    }

    /// SIGKILL, then wait for the exit.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        // Fails only if the child already exited; `wait` then returns its status.
        let _ = self.child.kill();
        self.child
            .wait()
            .with_context(|| format!("waiting for {} to exit", self.name))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Summaries

/// See [`TestHub::stalled_connection`]. Dropping it lets the connection's runtime run again
/// and end.
pub struct StalledConnection {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StalledConnection {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Unix milliseconds `h` hours after a fixed day (2026-11-20 00:00 UTC): stable, in the past.
pub fn hours(h: i64) -> i64 {
    1_763_596_800_000 + h * 3_600_000
}

/// The current time, Unix milliseconds.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A valid FINAL lab summary (version 1) of LOINC item `code` for `patient`, published by
/// `publisher`, performed at `performed_at_ms` and reported an hour later.
pub fn lab_summary(
    publisher: &str,
    id: &str,
    patient: Pseudonym,
    code: &str,
    performed_at_ms: i64,
) -> anyhow::Result<Summary> {
    Ok(Summary {
        id: SummaryId::parse(id)?,
        version: 1,
        publisher: InstitutionId::parse(publisher)?,
        patient,
        item: Item {
            system: LOINC.into(),
            code: code.into(),
            display: format!("LOINC {code}"),
            local_code: format!("L{code}"),
        },
        category: Category::Lab,
        performed_at: UnixMillis(performed_at_ms),
        reported_at: UnixMillis(performed_at_ms + 3_600_000),
        outcome: Outcome::Lab(LabResult {
            value: "132".into(),
            unit: "g/L".into(),
            reference_range: "130-175".into(),
            flag: AbnormalFlag::Normal,
            specimen: "whole blood".into(),
        }),
        report: ReportRef {
            sha256: huren_core::signing::sha256(id.as_bytes()),
            locator: format!("huren-report:{publisher}/{id}"),
            media_type: "application/pdf".into(),
        },
        status: SummaryStatus::Final,
        status_reason: String::new(),
    })
}

/// A valid FINAL imaging summary (version 1) of item `code` in [`EXAM_CATALOGUE`].
pub fn imaging_summary(
    publisher: &str,
    id: &str,
    patient: Pseudonym,
    code: &str,
    performed_at_ms: i64,
) -> anyhow::Result<Summary> {
    let mut s = lab_summary(publisher, id, patient, code, performed_at_ms)?;
    s.item = Item {
        system: EXAM_CATALOGUE.into(),
        code: code.into(),
        display: "胸部CT Chest CT".into(),
        local_code: String::new(),
    };
    s.category = Category::Imaging;
    s.outcome = Outcome::Exam(ExamResult {
        modality: "CT".into(),
        body_site: "胸部 chest".into(),
        impression: "双肺未见明显异常。\nNo acute findings.".into(),
        study_uid: "1.2.840.113619.2.55.3.1".into(),
    });
    s.report.media_type = "application/dicom".into();
    Ok(s)
}

/// `s` with another lab value (the same version: a different body under it).
pub fn with_lab_value(s: &Summary, value: impl Into<String>) -> Summary {
    let mut changed = s.clone();
    if let Outcome::Lab(lab) = &mut changed.outcome {
        lab.value = value.into();
    }
    changed
}

/// The next version of `s`: AMENDED with `reason`.
pub fn amended(s: &Summary, reason: &str) -> Summary {
    let mut next = s.clone();
    next.version = s.version + 1;
    next.status = SummaryStatus::Amended;
    next.status_reason = reason.into();
    next
}

/// DER of the first certificate in `pem`.
pub fn cert_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

/// Signs `summary` with `member`'s signing key, as an agent does.
pub fn sign(member: &MemberCredentials, summary: &Summary) -> anyhow::Result<pb::SignedSummary> {
    let signer = SummarySigner::from_pkcs8_pem(
        &member.signing.key_pem,
        cert_der(&member.signing.cert_pem)?,
    )?;
    Ok(signer.sign(summary)?.into())
}

/// Signs arbitrary body bytes with `member`'s signing key (a valid signature over whatever the
/// bytes are), with the member's signing certificate attached.
pub fn sign_body(member: &MemberCredentials, body: Vec<u8>) -> anyhow::Result<pb::SignedSummary> {
    use ed25519_dalek::Signer;
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&member.signing.key_pem)
        .map_err(|e| anyhow::anyhow!("signing key: {e}"))?;
    Ok(pb::SignedSummary {
        signature: key.sign(&signing_message(&body)).to_bytes().to_vec(),
        body,
        signer_certificate: cert_der(&member.signing.cert_pem)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Calls

/// Publishes one signed summary; the raw result.
pub async fn publish(
    client: &mut HubClient<Channel>,
    summary: pb::SignedSummary,
) -> Result<PublishResponse, Status> {
    client
        .publish(PublishRequest {
            summary: Some(summary),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A FindPrior request for `patient` and `(system, code)` items, as of now, no lookback limit.
pub fn prior_request(patient: &Pseudonym, items: &[(&str, &str)]) -> FindPriorRequest {
    FindPriorRequest {
        requester: String::new(),
        compact_proofs: false,
        patient_pseudonym: patient.as_bytes().to_vec(),
        items: items
            .iter()
            .map(|(system, code)| ItemCode {
                system: (*system).into(),
                code: (*code).into(),
            })
            .collect(),
        as_of_ms: 0,
        lookback_seconds: 0,
        purpose: huren_proto::hub::Purpose::Treatment as i32,
        with_proofs: false,
        certificates_once: false,
    }
}

/// A History request for `patient` since `since_ms`.
pub fn history_request(patient: &Pseudonym, since_ms: i64) -> HistoryRequest {
    HistoryRequest {
        requester: String::new(),
        compact_proofs: false,
        patient_pseudonym: patient.as_bytes().to_vec(),
        since_ms,
        include_earlier_versions: false,
        purpose: huren_proto::hub::Purpose::Treatment as i32,
        with_proofs: false,
        certificates_once: false,
    }
}

/// The files the harness writes are the ones a binary (hub or agent) would be given.
#[tokio::test]
async fn harness_files_match_what_it_hands_out() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let member = hub.member("hosp-a")?;
    let files = hub.member_files("hosp-a")?;
    assert_eq!(fs::read_to_string(&files.tls_cert)?, member.tls.cert_pem);
    assert_eq!(
        fs::read_to_string(&files.signing_key)?,
        member.signing.key_pem
    );
    // Cached: asking again gives the same certificates.
    assert_eq!(hub.member("hosp-a")?, member);
    assert_eq!(fs::read_to_string(&hub.paths.ca_cert)?, hub.ca_pem());
    let key = huren_certs_dev::read_pseudonym_key(&hub.paths.pseudonym_key)?;
    assert_eq!(&key, hub.pki.pseudonym_key());
    let config = huren_hub::HubConfig::load(&hub.config_path)?;
    assert_eq!(config.store, hub.store_path);
    assert!(files.tls_cert.starts_with(hub.root()));
    Ok(())
}

/// Signs `summary` as `member`, but with R = [r]B + T for the `torsion`-th point of order
/// dividing 8 and S made so that the cofactored equation holds: a signature only the key
/// holder can make, which ed25519-dalek's batch and its `verify_strict` judged differently.
pub fn sign_with_mixed_order_r(
    member: &MemberCredentials,
    summary: &Summary,
    torsion: usize,
) -> anyhow::Result<pb::SignedSummary> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&member.signing.key_pem)
        .map_err(|e| anyhow::anyhow!("signing key: {e}"))?;
    let body = summary.to_body_bytes();
    let signature = mixed_order_signature(&key, &signing_message(&body), torsion)?;
    Ok(pb::SignedSummary {
        body,
        signature: signature.to_vec(),
        signer_certificate: cert_der(&member.signing.cert_pem)?,
    })
}

/// An Ed25519 signature of `message` by `key` with R = [r]B + T, T the `torsion`-th point of
/// order dividing 8, and S made so that the cofactored equation holds (the cofactorless one
/// does not, for T not the identity).
pub fn mixed_order_signature(
    key: &ed25519_dalek::SigningKey,
    message: &[u8],
    torsion: usize,
) -> anyhow::Result<[u8; 64]> {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::scalar::Scalar;
    use sha2::{Digest, Sha512};
    let h = Sha512::digest(key.to_bytes());
    let mut a = [0u8; 32];
    a.copy_from_slice(&h[..32]);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    let a = Scalar::from_bytes_mod_order(a);
    let r = Scalar::from_bytes_mod_order_wide(&Sha512::digest([&h[32..], message].concat()).into());
    let t = EIGHT_TORSION
        .get(torsion)
        .context("a torsion index below 8")?;
    let big_r = (ED25519_BASEPOINT_POINT * r + t).compress();
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::digest([big_r.as_bytes(), key.verifying_key().as_bytes(), message].concat())
            .into(),
    );
    let s = r + k * a;
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(big_r.as_bytes());
    signature[32..].copy_from_slice(s.as_bytes());
    Ok(signature)
}

/// Sends one HTTP/1.1 request to `addr` and returns the whole answer (head and body).
pub async fn http(addr: std::net::SocketAddr, request: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Looking under a PostgreSQL store, and tampering with it, as its superuser: what someone with
/// the database's administration might do. The hub should be stopped.
impl TestHub {
    /// A connection to the hub's PostgreSQL database as the superuser.
    pub async fn sql_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let url = self
            .store_url
            .as_deref()
            .context("not a PostgreSQL store")?;
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// The stored leaves in order (either backend; the hub must be stopped).
    pub async fn stored_leaves(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        match self.backend {
            Backend::Sled => {
                // Leaves kept on their own (stores written before runs), then the runs'.
                let db = self.open_store_db().await?;
                let mut leaves: Vec<Vec<u8>> = db
                    .open_tree("log_leaves")?
                    .iter()
                    .values()
                    .map(|v| v.map(|v| v.to_vec()))
                    .collect::<Result<_, _>>()?;
                for run in db.open_tree("log_runs")?.iter().values() {
                    let run = run?;
                    let ranges = run_leaves(&run).map_err(anyhow::Error::msg)?;
                    leaves.extend(ranges.into_iter().map(|at| run[at].to_vec()));
                }
                Ok(leaves)
            }
            Backend::Postgres => {
                let client = self.sql_client().await?;
                let rows = client
                    .query("SELECT leaf FROM log_leaves ORDER BY idx", &[])
                    .await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            }
        }
    }

    /// Changes stored leaves in place, bypassing the hub: `edit` returns the new bytes of a
    /// leaf it changes. Only the leaf: the stored tree (tiles, nodes, head) stays as it was.
    /// Returns how many leaves changed.
    pub async fn edit_stored_leaves(
        &self,
        mut edit: impl FnMut(u64, &[u8]) -> Option<Vec<u8>>,
    ) -> anyhow::Result<usize> {
        let leaves = self.stored_leaves().await?;
        let changes: Vec<(u64, Vec<u8>)> = leaves
            .iter()
            .enumerate()
            .filter_map(|(i, leaf)| edit(i as u64, leaf).map(|new| (i as u64, new)))
            .collect();
        match self.backend {
            Backend::Sled => {
                let db = self.open_store_db().await?;
                let singles = db.open_tree("log_leaves")?;
                let runs = db.open_tree("log_runs")?;
                for (i, leaf) in &changes {
                    let key = i.to_be_bytes();
                    if singles.contains_key(key)? {
                        singles.insert(key, leaf.as_slice())?;
                        continue;
                    }
                    // The run holding leaf i: the first whose last leaf is at or after it.
                    let (last, run) = runs.range(key..).next().context("leaf's run")??;
                    let last = u64::from_be_bytes(last.as_ref().try_into()?);
                    let mut leaves: Vec<Vec<u8>> = run_leaves(&run)
                        .map_err(anyhow::Error::msg)?
                        .into_iter()
                        .map(|at| run[at].to_vec())
                        .collect();
                    let from_end = usize::try_from(last - i)?;
                    let at = leaves
                        .len()
                        .checked_sub(1 + from_end)
                        .context("leaf in run")?;
                    leaves[at] = leaf.clone();
                    runs.insert(last.to_be_bytes(), run_value(&leaves))?;
                }
                db.flush()?;
            }
            Backend::Postgres => {
                let mut client = self.sql_client().await?;
                let tx = client.transaction().await?;
                // The append-only trigger stops the hub's own role; a superuser can lift it.
                tx.batch_execute("ALTER TABLE log_leaves DISABLE TRIGGER USER")
                    .await?;
                for (i, leaf) in &changes {
                    let n = tx
                        .execute(
                            "UPDATE log_leaves SET leaf = $2 WHERE idx = $1",
                            &[&(*i as i64), leaf],
                        )
                        .await?;
                    ensure!(n == 1, "leaf {i} is not stored");
                }
                tx.batch_execute("ALTER TABLE log_leaves ENABLE TRIGGER USER")
                    .await?;
                tx.commit().await?;
            }
        }
        Ok(changes.len())
    }

    /// Rewrites the stopped hub's log from its leaves after `edit` changed their order or
    /// number, tree and head included: what an operator who wants a self-consistent altered
    /// log would do.
    pub async fn rewrite_stored_log(
        &self,
        edit: impl FnOnce(&mut Vec<Vec<u8>>),
    ) -> anyhow::Result<()> {
        use huren_core::merkle;
        let mut leaves = self.stored_leaves().await?;
        edit(&mut leaves);
        match self.backend {
            Backend::Sled => {
                let db = self.open_store_db().await?;
                let leaves_tree = db.open_tree("log_leaves")?;
                let nodes = db.open_tree("log_nodes")?;
                let meta = db.open_tree("log_meta")?;
                leaves_tree.clear()?;
                nodes.clear()?;
                // Written the way stores before tiles and runs kept the tree (every node in
                // `log_nodes`, every leaf under its own index), which the hub reads without a
                // tile-by-tile rewrite.
                db.open_tree("log_tiles")?.clear()?;
                db.open_tree("log_runs")?.clear()?;
                meta.remove("tiles_from")?;
                meta.remove("runs_from")?;
                let mut frontier = Vec::new();
                for (i, leaf) in leaves.iter().enumerate() {
                    let i = i as u64;
                    leaves_tree.insert(i.to_be_bytes(), leaf.as_slice())?;
                    for (level, index, hash) in
                        merkle::append(&mut frontier, i, merkle::leaf_hash(leaf))
                    {
                        let mut k = vec![level];
                        k.extend_from_slice(&index.to_be_bytes());
                        nodes.insert(k, &hash)?;
                    }
                }
                meta.insert("size", &(leaves.len() as u64).to_be_bytes())?;
                db.flush()?;
            }
            Backend::Postgres => {
                let mut client = self.sql_client().await?;
                let tx = client.transaction().await?;
                tx.batch_execute(
                    "ALTER TABLE log_leaves DISABLE TRIGGER USER;
                     ALTER TABLE log_nodes DISABLE TRIGGER USER;
                     ALTER TABLE log_head DISABLE TRIGGER USER;
                     DELETE FROM log_leaves; DELETE FROM log_nodes;",
                )
                .await?;
                let mut frontier = Vec::new();
                for (i, leaf) in leaves.iter().enumerate() {
                    let h = merkle::leaf_hash(leaf);
                    tx.execute(
                        "INSERT INTO log_leaves (idx, hash, leaf) VALUES ($1, $2, $3)",
                        &[&(i as i64), &h.as_slice(), leaf],
                    )
                    .await?;
                    for (level, index, hash) in merkle::append(&mut frontier, i as u64, h) {
                        if level > 0 {
                            tx.execute(
                                "INSERT INTO log_nodes (level, idx, hash) VALUES ($1, $2, $3)",
                                &[&i16::from(level), &(index as i64), &hash.as_slice()],
                            )
                            .await?;
                        }
                    }
                }
                tx.execute(
                    "UPDATE log_head SET size = $1, frontier = $2",
                    &[&(leaves.len() as i64), &frontier.concat()],
                )
                .await?;
                tx.batch_execute(
                    "ALTER TABLE log_leaves ENABLE TRIGGER USER;
                     ALTER TABLE log_nodes ENABLE TRIGGER USER;
                     ALTER TABLE log_head ENABLE TRIGGER USER;",
                )
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Copies the stopped hub's store aside (a sled folder, or a PostgreSQL database made
    /// from it as a template); [`TestHub::restore_store`] puts the copy back.
    pub async fn back_up_store(&self) -> anyhow::Result<()> {
        match (&self.backend, &self.store_url) {
            (Backend::Postgres, Some(url)) => {
                let name = database_name(url)?;
                self.admin_until_free(&format!("CREATE DATABASE {name}_backup TEMPLATE {name}"))
                    .await
            }
            _ => {
                drop(self.open_store_db().await?);
                copy_dir(&self.store_path, &self.root().join("store-backup"))
            }
        }
    }

    /// Puts back the copy [`TestHub::back_up_store`] made (it can be put back again).
    pub async fn restore_store(&self) -> anyhow::Result<()> {
        match (&self.backend, &self.store_url) {
            (Backend::Postgres, Some(url)) => {
                let name = database_name(url)?;
                self.admin_until_free(&format!("DROP DATABASE {name} WITH (FORCE)"))
                    .await?;
                self.admin_until_free(&format!("CREATE DATABASE {name} TEMPLATE {name}_backup"))
                    .await
            }
            _ => {
                drop(self.open_store_db().await?);
                std::fs::remove_dir_all(&self.store_path)?;
                copy_dir(&self.root().join("store-backup"), &self.store_path)
            }
        }
    }

    /// Runs an administrative statement on the cluster, again while the database is still in
    /// use (a stopped in-process hub closes its connections a moment after it stops).
    async fn admin_until_free(&self, sql: &str) -> anyhow::Result<()> {
        let cluster =
            huren_hub::store::postgres::cluster::shared().map_err(|e| anyhow::anyhow!("{e}"))?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            match cluster.execute(sql).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.contains("being accessed by other users") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => bail!("{e}"),
            }
        }
    }
}

/// The database a `postgres://…/NAME` URL names.
fn database_name(url: &str) -> anyhow::Result<String> {
    let name = url.rsplit('/').next().unwrap_or_default();
    ensure!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "unexpected database in {url}"
    );
    Ok(name.to_owned())
}

/// Copies a directory tree (files and folders).
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

impl TestHub {
    /// Points the stopped hub's configuration at the PostgreSQL database `url`, keeping the
    /// log key it had (restart it afterwards).
    pub fn use_postgres_store(&mut self, url: &str) -> anyhow::Result<()> {
        ensure!(!self.is_running(), "stop the hub first");
        let config = fs::read_to_string(&self.config_path)?;
        let mut log_key = self.store_path.clone().into_os_string();
        log_key.push(".log-key");
        let mut out = String::new();
        for line in config.lines() {
            if line.starts_with("store = ") {
                out.push_str(&format!("store = {}\n", serde_json::to_string(url)?));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if self.store_url.is_none() {
            out.push_str(&format!(
                "\n[log]\nkey = {}\n",
                serde_json::to_string(&log_key.to_string_lossy())?
            ));
        }
        fs::write(&self.config_path, out)?;
        self.backend = Backend::Postgres;
        self.store_url = Some(url.to_owned());
        Ok(())
    }
}
