//! The node agent's daemon side against a real hub: HL7 v2 and FHIR files dropped in the inbox
//! reach the hub; refused files land in `rejected/` with reasons; 1,000 results survive a hub
//! outage and arrive exactly once; an agent killed with SIGKILL mid-publish loses and
//! duplicates nothing; full reports are fetched over mTLS and checked against the signed digest;
//! backfill loads a folder and resumes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use huren_agent::commands::{CommandError, Expected};
use huren_agent::daemon::Daemon;
use huren_agent::repository::FetchError;
use huren_agent::{AgentConfig, Asking};
use huren_core::logentry::Purpose;
use huren_core::pseudonym::PatientId;

use crate::harness::{ChildGuard, TREATMENT, TestHub, init};

pub(crate) const TERTIARY: &str = "shx-prov-people";
pub(crate) const COUNTY: &str = "lantian-county";
/// The patient of most fixtures (a valid resident identity card number).
pub(crate) const PATIENT: &str = "610102196703151235";
/// Longest a test waits for the agent to get somewhere.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("node-agent/tests-data")
        .join(name)
}

fn mapping(id: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("node-agent/examples/mapping-{id}.toml"))
}

/// Folders of one test agent under the hub's temporary directory.
pub(crate) struct AgentDirs {
    pub(crate) config: PathBuf,
    pub(crate) inbox: PathBuf,
    pub(crate) store: PathBuf,
}

impl AgentDirs {
    pub(crate) fn done(&self) -> PathBuf {
        self.inbox.join("done")
    }

    pub(crate) fn rejected(&self) -> PathBuf {
        self.inbox.join("rejected")
    }
}

/// Writes a daemon configuration for member `id` (fast polling and back-off for tests).
pub(crate) fn agent_config(hub: &TestHub, id: &str) -> anyhow::Result<AgentDirs> {
    let files = hub.member_files(id)?;
    let root = hub.root().join(format!("agent-{id}"));
    std::fs::create_dir_all(&root)?;
    let dirs = AgentDirs {
        config: root.join("agent.toml"),
        inbox: root.join("inbox"),
        store: root.join("store"),
    };
    let text = format!(
        "institution = \"{id}\"\nhub = \"{}\"\nhub_tls_name = \"localhost\"\n\
         [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
         [signing]\ncert = {:?}\nkey = {:?}\n\
         [pseudonym]\nkey_file = {:?}\n\
         [inbox]\ndir = {:?}\npoll_ms = 20\nsettle_ms = 0\nincomplete_hold_ms = 0\n\
         [store]\npath = {:?}\n\
         [mapping]\nfile = {:?}\n\
         [outbox]\ninitial_backoff_ms = 20\nmax_backoff_ms = 200\n",
        hub.url(),
        hub.paths.ca_cert,
        files.tls_cert,
        files.tls_key,
        files.signing_cert,
        files.signing_key,
        hub.paths.pseudonym_key,
        dirs.inbox,
        dirs.store,
        mapping(id),
    );
    std::fs::write(&dirs.config, text)?;
    Ok(dirs)
}

/// Drops a file into the inbox the way an interface engine should: write, then rename.
pub(crate) fn drop_file(inbox: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(inbox)?;
    let tmp = inbox.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, inbox.join(name))?;
    Ok(())
}

/// Polls `done` every 20 ms until it holds or `DEADLINE` passes.
pub(crate) async fn wait_for(
    what: &str,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Files still waiting in the inbox (not the done/rejected folders).
pub(crate) fn inbox_files(inbox: &Path) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(inbox)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .count())
}

/// An ORU^R01 with `n` haemoglobin/platelet/glucose/ALT/creatinine results (one OBR per result)
/// for patient `patient`, filler numbers `<order>-<k>`.
pub(crate) fn oru(order: &str, patient: &str, n: usize) -> String {
    let codes = [
        ("HGB", "132", "g/L"),
        ("PLT", "210", "10*9/L"),
        ("GLU", "5.2", "mmol/L"),
        ("ALT", "23", "U/L"),
        ("CREA", "80", "umol/L"),
    ];
    let mut m = format!(
        "MSH|^~\\&|LIS|SHXPH|HUREN|ALLIANCE|20261118091500+0800||ORU^R01^ORU_R01|{order}|P|2.5.1\r\
         PID|1||{patient}^^^&2.16.156.10011.1.3&ISO^NNCHN||测试^患者||19670315|M\r"
    );
    for k in 0..n {
        let (code, value, unit) = codes[k % codes.len()];
        m.push_str(&format!(
            "OBR|{}||{order}-{k}^LIS|PANEL^组合^L|||20261118074500+0800|||||||||||||||20261118090000+0800||CH|F\r\
             OBX|1|NM|{code}^{code}^L||{value}|{unit}||N|||F\r",
            k + 1
        ));
    }
    m
}

/// Valid resident identity card numbers (GB 11643 check character computed).
pub(crate) fn ric(n: usize) -> String {
    let first17 = format!("61010219800101{:03}", n % 1000);
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17
        .bytes()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{first17}{check}")
}

pub(crate) async fn start_daemon(dirs: &AgentDirs) -> anyhow::Result<Daemon> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(Daemon::start(AgentConfig::load(&dirs.config)?, Some(listener)).await?)
}

on_each_store! {
#[tokio::test]
async fn hl7_and_fhir_files_reach_the_hub_and_bad_ones_are_rejected_with_reasons()
-> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let daemon = start_daemon(&dirs).await?;
    let good = [
        "hl7/oru-lab-utf8.hl7",
        "hl7/oru-ct-gb18030-mllp.hl7",
        "fhir/dr-contained-lab.json",
        "fhir/bundle-imaging-report.json",
    ];
    let bad = [
        "hl7/bad-no-msh.hl7",
        "hl7/bad-adt.hl7",
        "hl7/bad-no-pid3.hl7",
        "hl7/bad-obx-no-value.hl7",
        "hl7/bad-unknown-code.hl7",
        "fhir/bad-truncated.json",
        "fhir/bad-unknown-code.json",
    ];
    for name in good.iter().chain(&bad) {
        let file_name = name.replace('/', "-");
        drop_file(&dirs.inbox, &file_name, &std::fs::read(fixture(name))?)?;
    }
    // 4 lab + 1 CT + 2 lab + 1 ultrasound.
    wait_for("8 results published", || {
        let c = daemon.counts();
        Ok(inbox_files(&dirs.inbox)? == 0 && c.pending == 0 && c.published == 8)
    })
    .await?;
    assert_eq!(daemon.counts().dead, 0);
    daemon.shutdown().await?;

    // Accepted files are in done/, refused ones in rejected/ with a reason each.
    for name in good {
        assert!(
            dirs.done().join(name.replace('/', "-")).exists(),
            "{name} not in done/"
        );
    }
    for name in bad {
        let file = dirs.rejected().join(name.replace('/', "-"));
        assert!(file.exists(), "{name} not in rejected/");
        let reason = std::fs::read_to_string(format!("{}.reason.txt", file.display()))?;
        assert!(reason.contains("Reasons:"), "{reason}");
        // Never the patient's id or name.
        for secret in [PATIENT, "王", "建国"] {
            assert!(!reason.contains(secret), "{name}: {reason}");
        }
    }
    let unknown =
        std::fs::read_to_string(dirs.rejected().join("hl7-bad-unknown-code.hl7.reason.txt"))?;
    assert!(unknown.contains("XYZ9"), "{unknown}");

    // The county hospital finds and verifies the results.
    let county =
        huren_agent::Agent::connect(AgentConfig::load(&agent_config(&hub, COUNTY)?.config)?)
            .await?;
    let patient = county.pseudonymise("cn-ric", PATIENT)?;
    let history = county
        .history(
            &TREATMENT,
            &patient,
            huren_core::summary::UnixMillis(0),
            false,
        )
        .await?;
    let mut ids: Vec<String> = history
        .results
        .iter()
        .map(|r| r.summary.id.to_string())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "LAB-20261118-00731-HGB",
            "LAB-20261118-00731-PLT",
            "LAB-20261118-00732-ALT",
            "LAB-20261118-00732-CREA",
            "LAB-20261120-00412-2345-7",
            "LAB-20261120-00412-CREA",
            "RIS-20261119-00215",
        ]
    );
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn a_thousand_results_survive_a_hub_outage_and_arrive_once() -> anyhow::Result<()> {
    init();
    let started = Instant::now();
    let mut hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    hub.stop().await?;
    let daemon = start_daemon(&dirs).await?;
    // 1,000 results: 200 messages of 5 results, for 50 patients.
    for f in 0..200 {
        let order = format!("OUT-{f:04}");
        drop_file(
            &dirs.inbox,
            &format!("{order}.hl7"),
            oru(&order, &ric(f % 50), 5).as_bytes(),
        )?;
    }
    wait_for("1,000 results queued while the hub is down", || {
        Ok(inbox_files(&dirs.inbox)? == 0 && daemon.counts().pending == 1000)
    })
    .await?;
    let queued_at = started.elapsed();
    assert_eq!(daemon.counts().published, 0);
    assert_eq!(std::fs::read_dir(dirs.rejected())?.count(), 0);

    hub.restart().await?;
    let restarted = Instant::now();
    wait_for("1,000 results published after the restart", || {
        let c = daemon.counts();
        Ok(c.pending == 0 && c.published == 1000)
    })
    .await?;
    let publish_time = restarted.elapsed();
    assert_eq!(daemon.counts().dead, 0);
    daemon.shutdown().await?;
    hub.stop().await?;
    // Exactly 1,000 summary versions at the hub: every result once, no extra versions.
    assert_eq!(hub.stored_summary_count().await?, 1000);
    println!(
        "outage test: 1,000 results queued in {:.2?} with the hub down, published in {publish_time:.2?} after its restart; total {:.2?}",
        queued_at,
        started.elapsed()
    );
    Ok(())
}
}

on_each_store! {
/// A hub whose batch limit is below the agent's batches refuses them whole; the agent then
/// publishes one summary per call, and everything arrives once.
#[tokio::test]
async fn an_agent_falls_back_to_one_summary_per_call_when_the_hub_refuses_its_batches()
-> anyhow::Result<()> {
    init();
    let mut hub = TestHub::start_with(huren_hub::config::Limits {
        max_batch_bytes: 4 * 1024,
        ..Default::default()
    })
    .await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let patients: Vec<String> = (0..4).map(ric).collect();
    for f in 0..8 {
        let order = format!("SMALL-{f:03}");
        drop_file(
            &dirs.inbox,
            &format!("{order}.hl7"),
            oru(&order, &patients[f % 4], 5).as_bytes(),
        )?;
    }
    let daemon = start_daemon(&dirs).await?;
    wait_for("40 results published one per call", || {
        let c = daemon.counts();
        Ok(inbox_files(&dirs.inbox)? == 0 && c.pending == 0 && c.published == 40)
    })
    .await?;
    assert_eq!(daemon.counts().dead, 0);
    daemon.shutdown().await?;
    hub.stop().await?;
    assert_eq!(hub.stored_summary_count().await?, 40);
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn an_agent_killed_mid_publish_publishes_every_result_once() -> anyhow::Result<()> {
    init();
    let mut hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let patients: Vec<String> = (0..10).map(ric).collect();
    for f in 0..60 {
        let order = format!("KILL-{f:03}");
        drop_file(
            &dirs.inbox,
            &format!("{order}.hl7"),
            oru(&order, &patients[f % 10], 5).as_bytes(),
        )?;
    }
    // The real binary, killed with SIGKILL as soon as the first result is at the hub.
    let mut command = Command::new(env!("CARGO_BIN_EXE_huren-agent"));
    command
        .arg("--config")
        .arg(&dirs.config)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = ChildGuard::new(command.spawn()?, "huren-agent run");
    let key = hub.pseudonym_key();
    let pseudonyms: Vec<_> = patients
        .iter()
        .map(|p| Ok(key.pseudonymise(&PatientId::new("cn-ric", p)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut client = hub.client(COUNTY).await?;
    let deadline = Instant::now() + DEADLINE;
    'watch: loop {
        for p in &pseudonyms {
            let n = client
                .history(crate::harness::history_request(p, 0))
                .await?
                .into_inner()
                .results
                .len();
            if n > 0 {
                break 'watch;
            }
        }
        ensure!(Instant::now() < deadline, "nothing reached the hub");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill()?;
    let at_kill = huren_agent::store::Store::open(&dirs.store)?.counts();
    let files_left = inbox_files(&dirs.inbox)?;

    // Start again (in process) on the same store and inbox: everything arrives, nothing twice.
    let daemon = start_daemon(&dirs).await?;
    wait_for("300 results published after the restart", || {
        let c = daemon.counts();
        Ok(inbox_files(&dirs.inbox)? == 0 && c.pending == 0)
    })
    .await?;
    let counts = daemon.counts();
    assert_eq!(counts.dead, 0);
    daemon.shutdown().await?;
    hub.stop().await?;
    assert_eq!(hub.stored_summary_count().await?, 300);
    println!(
        "kill test: at the SIGKILL {} results were queued and {} marked published ({} files left in the inbox); after the restart {} published in all",
        at_kill.pending + at_kill.published,
        at_kill.published,
        files_left,
        counts.published
    );
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn reports_are_served_over_mtls_and_checked_against_the_signed_digest() -> anyhow::Result<()>
{
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let county = AgentConfig::load(&agent_config(&hub, COUNTY)?.config)?;
    let daemon = start_daemon(&dirs).await?;
    let addr = daemon
        .repository_addr()
        .context("no repository")?
        .to_string();
    drop_file(
        &dirs.inbox,
        "ct.hl7",
        &std::fs::read(fixture("hl7/oru-ct-gb18030-mllp.hl7"))?,
    )?;
    drop_file(
        &dirs.inbox,
        "lab.hl7",
        &std::fs::read(fixture("hl7/oru-lab-utf8.hl7"))?,
    )?;
    wait_for("5 results published", || Ok(daemon.counts().published == 5)).await?;
    let out = hub.root().join("fetched.bin");
    let offset = huren_agent::table::parse_offset("+08:00").map_err(anyhow::Error::msg)?;
    let by_patient = || Expected::Patient {
        id_type: "cn-ric".into(),
        id: PATIENT.into(),
        asking: Asking::new(Purpose::Treatment),
    };

    // The CT report is the PDF attached to the message; its digest is in the signed summary.
    let text = huren_agent::commands::fetch(
        county.clone(),
        &addr,
        TERTIARY,
        "RIS-20261119-00215",
        0,
        by_patient(),
        &out,
        offset,
    )
    .await?;
    assert!(text.contains("matches the signed summary"), "{text}");
    assert_eq!(
        std::fs::read(&out)?,
        std::fs::read(fixture("hl7/report.pdf"))?
    );

    // A wrong expected digest is refused by the asking side.
    let err = huren_agent::commands::fetch(
        county.clone(),
        &addr,
        TERTIARY,
        "LAB-20261118-00731-HGB",
        0,
        Expected::Sha256("00".repeat(32)),
        &out,
        offset,
    )
    .await
    .err()
    .context("a mismatching report was accepted")?;
    assert!(
        matches!(err, CommandError::Fetch(FetchError::DigestMismatch { .. })),
        "{err}"
    );

    // Asking the repository for a publisher it is not: the TLS handshake fails.
    let err = huren_agent::commands::fetch(
        county.clone(),
        &addr,
        COUNTY,
        "LAB-20261118-00731-HGB",
        0,
        Expected::Sha256("00".repeat(32)),
        &out,
        offset,
    )
    .await
    .err()
    .context("a repository of another institution was trusted")?;
    assert!(err.to_string().contains(COUNTY), "{err}");

    // Tamper with the stored report on the publisher's disk: it is no longer served.
    daemon.shutdown().await?;
    {
        let db = sled_open(&dirs.store).await?;
        let reports = db.open_tree("reports")?;
        let mut n = 0;
        for entry in reports.iter() {
            let (k, v) = entry?;
            let mut v = v.to_vec();
            v[0] ^= 1;
            reports.insert(k, v)?;
            n += 1;
        }
        ensure!(
            n == 2,
            "expected the message and the PDF, found {n} reports"
        );
        db.flush()?;
    }
    let daemon = start_daemon(&dirs).await?;
    let addr = daemon
        .repository_addr()
        .context("no repository")?
        .to_string();
    let err = huren_agent::commands::fetch(
        county,
        &addr,
        TERTIARY,
        "LAB-20261118-00731-HGB",
        0,
        by_patient(),
        &out,
        offset,
    )
    .await
    .err()
    .context("a tampered report was served")?;
    match &err {
        CommandError::Fetch(FetchError::Refused { status, .. }) => {
            assert_eq!(status.code(), tonic::Code::DataLoss, "{err}")
        }
        other => bail!("unexpected error: {other}"),
    }
    daemon.shutdown().await?;
    Ok(())
}
}

/// Opens a stopped agent's store with sled (its lock is released when the daemon has stopped).
async fn sled_open(path: &Path) -> anyhow::Result<sled::Db> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match sled::open(path) {
            Ok(db) => return Ok(db),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
}

on_each_store! {
#[tokio::test]
async fn a_refused_summary_becomes_a_dead_letter_listed_by_outbox() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    // The same result id, published before with other content (e.g. by the old JSON export).
    let tertiary = huren_agent::Agent::connect(AgentConfig::load(&dirs.config)?).await?;
    for (summary, envelope) in tertiary.sign_results_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("node-agent/examples/results.json"),
    )? {
        tertiary.publish(&summary, envelope).await?;
    }
    drop(tertiary);
    let daemon = start_daemon(&dirs).await?;
    drop_file(
        &dirs.inbox,
        "lab.hl7",
        &std::fs::read(fixture("hl7/oru-lab-utf8.hl7"))?,
    )?;
    // HGB, PLT and ALT exist with other content (AlreadyExists); CREA is new.
    wait_for("the outbox to settle", || {
        let c = daemon.counts();
        Ok(c.pending == 0 && c.dead + c.published == 4)
    })
    .await?;
    assert_eq!(daemon.counts().dead, 3);
    daemon.shutdown().await?;
    let config = AgentConfig::load(&dirs.config)?;
    let offset = huren_agent::table::parse_offset("+08:00").map_err(anyhow::Error::msg)?;
    // The store's lock goes with the daemon's last background thread, shortly after shutdown.
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        match huren_agent::commands::outbox(&config, false, offset) {
            Ok(text) => break text,
            Err(e) if Instant::now() < deadline && e.to_string().contains("in use") => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert!(text.contains("3 dead letter(s)"), "{text}");
    assert!(
        text.contains("LAB-20261118-00731-HGB") && text.contains("AlreadyExists"),
        "{text}"
    );
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn backfill_loads_a_folder_and_resumes() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let archive = hub.root().join("archive");
    for year in ["2024", "2025"] {
        for f in 0..10 {
            let order = format!("HIST-{year}-{f:03}");
            let dir = archive.join(year);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("{order}.hl7")), oru(&order, &ric(f), 3))?;
        }
    }
    std::fs::write(archive.join("2025/broken.hl7"), "PID|1||x\r")?;
    let run = |args: Vec<String>| {
        let config = dirs.config.clone();
        async move { crate::harness::run_agent_cli(&config, &args).await }
    };
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let archive_arg = archive.to_str().context("path")?;
    let (ok, out, err) = run(s(&["backfill", archive_arg, "--no-publish"])).await?;
    assert!(ok, "{err}");
    assert!(
        out.contains("21 files (0 done in an earlier run), 20 accepted, 1 refused"),
        "{out}"
    );
    assert!(out.contains("60 results queued"), "{out}");
    assert!(
        archive
            .with_file_name("archive.rejected")
            .join("2025__broken.hl7.reason.txt")
            .exists()
    );
    // Again: the accepted files are skipped, the refused one is read again; then published.
    let (ok, out, err) = run(s(&["backfill", archive_arg])).await?;
    assert!(ok, "{err}");
    assert!(out.contains("(20 done in an earlier run)"), "{out}");
    assert!(out.contains("Published 60 results"), "{out}");
    let (ok, out, _) = run(s(&["outbox"])).await?;
    assert!(ok);
    assert!(
        out.contains("0 pending, 60 published, 0 dead letter(s)"),
        "{out}"
    );
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn the_daemon_binary_stops_gracefully_on_sigterm() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    drop_file(
        &dirs.inbox,
        "lab.hl7",
        &std::fs::read(fixture("hl7/oru-lab-utf8.hl7"))?,
    )?;
    let log = hub.root().join("agent.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_huren-agent"))
        .arg("--config")
        .arg(&dirs.config)
        .args(["--log-format", "json", "run"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()?;
    wait_for("the file to be ingested", || {
        Ok(dirs.done().join("lab.hl7").exists())
    })
    .await?;
    let pid = child.id().context("no pid")?;
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    ensure!(status.success(), "kill -TERM failed");
    let exit = tokio::time::timeout(DEADLINE, child.wait()).await??;
    assert!(exit.success(), "{exit:?}");
    let text = std::fs::read_to_string(&log)?;
    // Structured logs: one JSON object per line, the file's line and the stop.
    assert!(text.lines().all(|l| l.starts_with('{')), "{text}");
    assert!(
        text.contains("file ingested") && text.contains("agent stopped"),
        "{text}"
    );
    assert!(!text.contains(PATIENT), "{text}");
    Ok(())
}
}

/// The verifier key of `hub`'s log, or (with `other`) of a log key the hub does not hold.
pub(crate) fn log_verifier_key(hub: &TestHub, other: bool) -> anyhow::Result<String> {
    let config = huren_hub::HubConfig::load(&hub.config_path)?;
    let path = if other {
        hub.root().join("another-log.key")
    } else {
        config.log_key_path()
    };
    let key = huren_hub::log::LogSigner::load_or_create(&path, &config.log.origin)?;
    Ok(key.verifier_key())
}

/// Adds `[log]` to a test agent's configuration.
pub(crate) fn with_log(dirs: &AgentDirs, verifier_key: &str) -> anyhow::Result<PathBuf> {
    let state = dirs.store.with_file_name("log-state");
    let mut text = std::fs::read_to_string(&dirs.config)?;
    text.push_str(&format!(
        "[log]\nverifier_key = {verifier_key:?}\nstate_dir = {state:?}\n"
    ));
    std::fs::write(&dirs.config, text)?;
    Ok(state)
}

on_each_store! {
/// Every publishing path checks its receipts against the hub's log: the daemon and backfill
/// keep each entry for `audit` (before, only the CLI's `publish` did: `audit` re-checked 0),
/// and a receipt not proven by the configured log key is not taken (the result stays queued).
#[tokio::test]
async fn the_daemon_and_backfill_check_receipts_against_the_log() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let state = with_log(&dirs, &log_verifier_key(&hub, false)?)?;
    let daemon = start_daemon(&dirs).await?;
    for f in 0..4 {
        let order = format!("LOGGED-{f:03}");
        drop_file(
            &dirs.inbox,
            &format!("{order}.hl7"),
            oru(&order, &ric(f), 5).as_bytes(),
        )?;
    }
    wait_for("20 results published", || {
        let c = daemon.counts();
        Ok(c.pending == 0 && c.published == 20)
    })
    .await?;
    daemon.shutdown().await?;
    let receipts = std::fs::read_to_string(state.join("receipts")).unwrap_or_default();
    assert_eq!(receipts.lines().count(), 20, "{receipts}");
    let audit = |config: PathBuf| async move {
        crate::harness::run_agent_cli(&config, &["audit".to_owned()]).await
    };
    let (ok, out, err) = audit(dirs.config.clone()).await?;
    assert!(ok, "{out}{err}");
    assert!(out.contains("Entries re-checked:    20"), "{out}");

    // Backfill: 5 more, kept too.
    let archive = hub.root().join("logged-archive");
    std::fs::create_dir_all(&archive)?;
    std::fs::write(archive.join("one.hl7"), oru("LOGGED-ARCH", &ric(7), 5))?;
    let args = [
        "backfill".to_owned(),
        archive.to_str().context("path")?.to_owned(),
    ];
    let (ok, out, err) = crate::harness::run_agent_cli(&dirs.config, &args).await?;
    assert!(ok, "{out}{err}");
    assert!(out.contains("Published 5 results"), "{out}");
    let (ok, out, err) = audit(dirs.config.clone()).await?;
    assert!(ok, "{out}{err}");
    assert!(out.contains("Entries re-checked:    25"), "{out}");

    // The same agent given another log key (and a fresh state folder): the hub's proofs do
    // not verify under it, so nothing is marked published and nothing is remembered.
    let text = std::fs::read_to_string(&dirs.config)?;
    let cut = text.find("[log]").context("[log] section")?;
    std::fs::write(&dirs.config, &text[..cut])?;
    let county_state = with_log(&dirs, &log_verifier_key(&hub, true)?)?;
    let text = std::fs::read_to_string(&dirs.config)?.replace("log-state", "log-state-other");
    std::fs::write(&dirs.config, text)?;
    let county_state = county_state.with_file_name("log-state-other");
    let daemon = start_daemon(&dirs).await?;
    let before = daemon.counts();
    drop_file(
        &dirs.inbox,
        "unproven.hl7",
        oru("UNPROVEN-1", &ric(9), 2).as_bytes(),
    )?;
    wait_for("the results queued", || {
        Ok(inbox_files(&dirs.inbox)? == 0 && daemon.counts().pending == 2)
    })
    .await?;
    // Several publish attempts (back-off is 20-200 ms in tests) without one being taken.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = daemon.counts();
    daemon.shutdown().await?;
    assert_eq!((c.pending, c.published), (2, before.published), "{c:?}");
    assert!(!county_state.join("receipts").exists());
    Ok(())
}
}

on_each_store! {
/// A report stored before 2026-12-04 for a result read from a FHIR Bundle was the whole file,
/// other patients included: the repository does not serve such a report, and says how the
/// publisher fixes it.
#[tokio::test]
async fn a_stored_report_holding_several_patients_is_not_served() -> anyhow::Result<()> {
    use huren_agent::store::{NewResult, ReportBytes, ResultState};
    use huren_core::signing::{SignedEnvelope, sha256};
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let county = AgentConfig::load(&agent_config(&hub, COUNTY)?.config)?;
    let daemon = start_daemon(&dirs).await?;
    let addr = daemon
        .repository_addr()
        .context("no repository")?
        .to_string();
    // A Bundle with two patients, as older agents kept it as each result's report.
    let patient = |id: &str, ric: &str| {
        serde_json::json!({"resource": {"resourceType": "Patient", "id": id,
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": ric}]}})
    };
    let bundle = serde_json::to_vec(&serde_json::json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": [patient("p1", &ric(941)), patient("p2", &ric(942))],
    }))?;
    let digest = sha256(&bundle);
    let mut summary = crate::harness::lab_summary(
        TERTIARY,
        "OLD-BUNDLE-1",
        hub.patient("E60000001"),
        crate::harness::HGB,
        crate::harness::hours(3),
    )?;
    summary.report.sha256 = digest;
    summary.report.media_type = huren_agent::ingest::fhir::FHIR_MEDIA_TYPE.into();
    let envelope =
        SignedEnvelope::try_from(crate::harness::sign(&hub.member(TERTIARY)?, &summary)?)?;
    let report = ReportBytes {
        sha256: digest,
        media_type: huren_agent::ingest::fhir::FHIR_MEDIA_TYPE.into(),
        bytes: bundle,
    };
    daemon.store().enqueue(
        &[NewResult {
            envelope: &envelope,
            summary_id: &summary.id,
            version: 1,
            state: ResultState {
                version: 1,
                content: [0; 32],
                report_sha256: digest,
                voided: false,
                patient: Some(summary.patient),
            },
            report: &report,
        }],
        None,
    )?;
    let err = huren_agent::commands::fetch(
        county,
        &addr,
        TERTIARY,
        "OLD-BUNDLE-1",
        0,
        Expected::Sha256(hex::encode(digest)),
        &hub.root().join("fetched.json"),
        huren_agent::table::parse_offset("+08:00").map_err(anyhow::Error::msg)?,
    )
    .await
    .err()
    .context("a report holding two patients was served")?;
    match &err {
        CommandError::Fetch(FetchError::Refused { status, .. }) => {
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{err}");
            assert!(status.message().contains("as a correction"), "{err}");
        }
        other => bail!("unexpected error: {other}"),
    }
    assert!(!hub.root().join("fetched.json").exists());
    daemon.shutdown().await?;
    Ok(())
}
}
