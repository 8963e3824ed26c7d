//! Issue 16, agent ingest: a wrong result must never be published as final. Through the real
//! daemon and hub: a file still being written (cut inside a segment) is held in the inbox and
//! read whole once complete, or refused with a reason once it stops changing; an order number
//! reused for another patient is refused, not moved to the other patient.

use std::io::Write;

use anyhow::Context;

use huren_agent::AgentConfig;

use crate::harness::{TREATMENT, TestHub, init};
use crate::node_daemon::{
    AgentDirs, TERTIARY, agent_config, drop_file, inbox_files, oru, ric, start_daemon, wait_for,
};

/// Sets `[inbox] incomplete_hold_ms` of a test agent.
fn set_incomplete_hold(dirs: &AgentDirs, ms: u64) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&dirs.config)?;
    anyhow::ensure!(text.contains("incomplete_hold_ms = 0\n"), "{text}");
    std::fs::write(
        &dirs.config,
        text.replace(
            "incomplete_hold_ms = 0\n",
            &format!("incomplete_hold_ms = {ms}\n"),
        ),
    )?;
    Ok(())
}

/// Result ids the county hospital sees for `patient` (a resident identity card number).
async fn seen_for(hub: &TestHub, patient: &str) -> anyhow::Result<Vec<(String, u32, String)>> {
    let county = huren_agent::Agent::connect(AgentConfig::load(
        &agent_config(hub, crate::node_daemon::COUNTY)?.config,
    )?)
    .await?;
    let p = county.pseudonymise("cn-ric", patient)?;
    let history = county
        .history(&TREATMENT, &p, huren_core::summary::UnixMillis(0), false)
        .await?;
    let mut ids: Vec<(String, u32, String)> = history
        .results
        .iter()
        .map(|r| {
            (
                r.summary.id.to_string(),
                r.summary.version,
                format!("{:?}", r.summary.status),
            )
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// A file the interface engine is still writing (two messages, the second cut inside OBX-5, no
/// segment terminator) is held in the inbox: nothing of it is published, even after the
/// settle time. Once written whole it is read and all its results are published; a file that
/// stays cut is refused with a reason naming what is missing once it stops changing.
#[tokio::test]
async fn a_file_still_being_written_is_held_until_whole() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    set_incomplete_hold(&dirs, 600_000)?;
    let daemon = start_daemon(&dirs).await?;

    let patient = ric(901);
    let whole = format!(
        "{}{}",
        oru("GROW-1", &patient, 3),
        oru("GROW-2", &patient, 3)
    );
    // Cut inside the last OBX-5: glucose "5.2" would read as "5".
    let cut_at = whole
        .rfind("|5.2|")
        .map(|i| i + 2)
        .ok_or_else(|| anyhow::anyhow!("no glucose in {whole:?}"))?;
    let growing = dirs.inbox.join("growing.hl7");
    std::fs::write(&growing, &whole.as_bytes()[..cut_at])?;

    // A later, complete file: once it is done, the older growing file has been looked at.
    drop_file(
        &dirs.inbox,
        "later.hl7",
        oru("LATER-1", &ric(902), 2).as_bytes(),
    )?;
    wait_for("the later file accepted", || {
        Ok(dirs.done().join("later.hl7").exists())
    })
    .await?;
    wait_for("its 2 results published", || {
        Ok(daemon.counts().published == 2)
    })
    .await?;
    assert!(growing.exists(), "the growing file left the inbox");
    assert_eq!(std::fs::read_dir(dirs.rejected())?.count(), 0);
    assert_eq!(daemon.counts().pending, 0);
    assert_eq!(seen_for(&hub, &patient).await?, []);

    // The engine finishes the file: every result of both messages arrives, once.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&growing)?
        .write_all(&whole.as_bytes()[cut_at..])?;
    wait_for("the whole file accepted and published", || {
        Ok(dirs.done().join("growing.hl7").exists()
            && daemon.counts().pending == 0
            && daemon.counts().published == 8)
    })
    .await?;
    let seen = seen_for(&hub, &patient).await?;
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen.iter().all(|(_, v, _)| *v == 1), "{seen:?}");
    daemon.shutdown().await?;

    // With a hold of 0, a file that stays cut is refused at once, with the reason.
    let dirs = agent_config(&hub, TERTIARY)?;
    let daemon = start_daemon(&dirs).await?;
    let cut = oru("CUT-1", &ric(903), 2);
    let cut = &cut[..cut.len() - 5];
    drop_file(&dirs.inbox, "cut.hl7", cut.as_bytes())?;
    wait_for(
        "the cut file refused",
        || Ok(inbox_files(&dirs.inbox)? == 0),
    )
    .await?;
    let reason = std::fs::read_to_string(dirs.rejected().join("cut.hl7.reason.txt"))?;
    assert!(
        reason.contains("not whole") && reason.contains("segment terminator"),
        "{reason}"
    );
    assert!(!reason.contains(&ric(903)), "{reason}");
    assert_eq!(daemon.counts().pending + daemon.counts().published, 8);
    daemon.shutdown().await?;
    Ok(())
}

/// An order number (OBR-3) published for patient P and sent again for patient Q is refused by
/// the agent to rejected/, with a reason naming the order number and the conflict (never a
/// patient id); P keeps the result and Q gets none. A void then a re-send does not bring the
/// voided result back.
#[tokio::test]
async fn a_reused_order_number_does_not_move_a_result_to_another_patient() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let daemon = start_daemon(&dirs).await?;
    let (p, q) = (ric(911), ric(912));
    drop_file(&dirs.inbox, "p.hl7", oru("REUSED", &p, 2).as_bytes())?;
    wait_for("P's 2 results published", || {
        Ok(inbox_files(&dirs.inbox)? == 0 && daemon.counts().published == 2)
    })
    .await?;
    drop_file(&dirs.inbox, "q.hl7", oru("REUSED", &q, 2).as_bytes())?;
    wait_for("Q's file refused", || {
        Ok(dirs.rejected().join("q.hl7.reason.txt").exists())
    })
    .await?;
    let reason = std::fs::read_to_string(dirs.rejected().join("q.hl7.reason.txt"))?;
    assert!(
        reason.contains("OBR-3 (filler order number) \"REUSED-0\"")
            && reason.contains("another patient")
            && reason.contains("may not change the patient"),
        "{reason}"
    );
    assert!(!reason.contains(&p) && !reason.contains(&q), "{reason}");
    assert_eq!(daemon.counts().pending, 0);
    assert_eq!(daemon.counts().published, 2);
    let at_p = seen_for(&hub, &p).await?;
    assert_eq!(
        at_p,
        [
            ("REUSED-0-HGB".to_owned(), 1, "Final".to_owned()),
            ("REUSED-1-PLT".to_owned(), 1, "Final".to_owned())
        ]
    );
    assert_eq!(seen_for(&hub, &q).await?, []);

    // Voided for P, then sent again as final: the void stands.
    let final_msg = oru("REUSED", &p, 2);
    drop_file(
        &dirs.inbox,
        "p-void.hl7",
        final_msg.replace("|N|||F\r", "|N|||D\r").as_bytes(),
    )?;
    wait_for("the void published", || {
        Ok(inbox_files(&dirs.inbox)? == 0 && daemon.counts().published == 4)
    })
    .await?;
    drop_file(&dirs.inbox, "p-again.hl7", final_msg.as_bytes())?;
    wait_for("the re-send refused", || {
        Ok(dirs.rejected().join("p-again.hl7.reason.txt").exists())
    })
    .await?;
    let reason = std::fs::read_to_string(dirs.rejected().join("p-again.hl7.reason.txt"))?;
    assert!(reason.contains("a voided result stays voided"), "{reason}");
    assert_eq!(daemon.counts().published, 4);
    assert_eq!(daemon.counts().pending, 0);
    daemon.shutdown().await?;
    Ok(())
}

/// Stopping the daemon in the middle of a big batch file stops between two messages: the file
/// stays in the inbox, and the next start reads it again and publishes every result exactly
/// once.
#[tokio::test]
async fn a_big_file_stops_midway_on_shutdown_and_resumes_without_duplicates() -> anyhow::Result<()>
{
    init();
    let mut hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let messages = 2000;
    let mut big = String::new();
    for k in 0..messages {
        big.push_str(&oru(&format!("BIG-{k:05}"), &ric(k % 50), 1));
    }
    let daemon = start_daemon(&dirs).await?;
    drop_file(&dirs.inbox, "big.hl7", big.as_bytes())?;
    wait_for("the first results queued", || {
        let c = daemon.counts();
        Ok(c.pending + c.published > 0)
    })
    .await?;
    daemon.shutdown().await?;
    assert!(
        dirs.inbox.join("big.hl7").exists(),
        "the file was finished before stopping"
    );
    let daemon = start_daemon(&dirs).await?;
    let queued_before = daemon.counts().pending + daemon.counts().published;
    assert!(queued_before < messages, "{queued_before}");
    wait_for("every result published once", || {
        let c = daemon.counts();
        Ok(inbox_files(&dirs.inbox)? == 0 && c.pending == 0 && c.published == messages)
    })
    .await?;
    assert!(dirs.done().join("big.hl7").exists());
    daemon.shutdown().await?;
    hub.stop().await?;
    assert_eq!(hub.stored_summary_count().await?, messages);
    Ok(())
}

/// A FHIR transaction Bundle of good lab results and one ImagingStudy whose procedure code the
/// mapping does not know: the lab results are published, and the ImagingStudy is refused by
/// its id (a copy of the file in rejected/ whose reason names `ImagingStudy/<id>`).
#[tokio::test]
async fn a_bundle_with_one_unreadable_resource_publishes_the_rest() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let daemon = start_daemon(&dirs).await?;
    let fixture = |name: &str| -> anyhow::Result<serde_json::Value> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("node-agent/tests-data/fhir")
            .join(name);
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    };
    let mut bundle = fixture("bundle-referenced-lab.json")?;
    let mut study = fixture("imaging-study.json")?;
    study["id"] = "st-unknown".into();
    study["procedureCode"][0]["coding"][0]["code"] = "NOT-MAPPED".into();
    bundle["entry"]
        .as_array_mut()
        .context("entries")?
        .push(serde_json::json!({ "fullUrl": "ImagingStudy/st-unknown", "resource": study }));
    drop_file(&dirs.inbox, "bundle.json", &serde_json::to_vec(&bundle)?)?;
    wait_for("the lab results published", || {
        Ok(inbox_files(&dirs.inbox)? == 0 && daemon.counts().published == 2)
    })
    .await?;
    assert!(dirs.done().join("bundle.json").exists());
    let reason = std::fs::read_to_string(dirs.rejected().join("bundle.json.reason.txt"))?;
    assert!(
        reason.contains("ImagingStudy/st-unknown (Bundle.entry[6])")
            && reason.contains("NOT-MAPPED"),
        "{reason}"
    );
    assert!(!reason.contains("E12345678"), "{reason}");
    assert_eq!(daemon.counts().pending, 0);
    daemon.shutdown().await?;
    Ok(())
}

/// `backfill` judges a file as `run` does: a file with one refused message of two is accepted,
/// its good message queued and the refused one written apart with its reason; and after an
/// interruption the count of files ingested is the files read, not the files listed.
#[tokio::test]
async fn backfill_judges_files_as_run_does_and_counts_right_when_interrupted() -> anyhow::Result<()>
{
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let archive = hub.root().join("archive");
    std::fs::create_dir_all(&archive)?;
    let bad = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("node-agent/tests-data/hl7/bad-unknown-code.hl7"),
    )?;
    std::fs::write(
        archive.join("mixed.hl7"),
        format!("{}{bad}", oru("MIXED", &ric(921), 2)),
    )?;
    for f in 0..3 {
        std::fs::write(
            archive.join(format!("more-{f}.hl7")),
            oru(&format!("MORE-{f}"), &ric(922), 1),
        )?;
    }
    let config = AgentConfig::load(&dirs.config)?;
    let rejected = hub.root().join("archive-rejected");
    let backfill = |stop: bool| {
        let (config, archive, rejected) = (config.clone(), archive.clone(), rejected.clone());
        async move {
            huren_agent::commands::backfill(
                &config,
                &archive,
                Some(rejected),
                false,
                false,
                std::sync::Arc::new(std::sync::atomic::AtomicBool::new(stop)),
            )
            .await
        }
    };
    // Interrupted before the first file: nothing was ingested.
    let out = backfill(true).await?;
    assert!(out.contains("Ingested 0 files"), "{out}");
    assert!(out.contains("Interrupted"), "{out}");
    let out = backfill(false).await?;
    assert!(
        out.contains("4 files (0 done in an earlier run), 4 accepted, 0 refused")
            && out.contains("1 messages or resources of accepted files refused")
            && out.contains("5 results queued")
            && out.contains("Ingested 4 files"),
        "{out}"
    );
    let reason = std::fs::read_to_string(rejected.join("mixed.hl7.msg1.hl7.reason.txt"))?;
    assert!(reason.contains("XYZ9"), "{reason}");
    assert_eq!(
        std::fs::read_to_string(rejected.join("mixed.hl7.msg1.hl7"))?,
        bad
    );
    // Done: a second run reads nothing again.
    let out = backfill(false).await?;
    assert!(
        out.contains("(4 done in an earlier run)") && out.contains("Ingested 0 files"),
        "{out}"
    );
    Ok(())
}

/// An HL7 v2 TS (`YYYYMMDDHHMMSS+0000`) `days` from now.
fn hl7_time_from_now(days: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Through the real daemon: a training message (MSH-11 `T`), a debugging one (`D`) and results
/// dated tomorrow (a wrong LIS clock or time zone) are refused to rejected/ with the HL7 field
/// named, and nothing of them is signed or published; a good file beside them is published.
#[tokio::test]
async fn test_messages_and_future_results_are_refused_before_signing() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let daemon = start_daemon(&dirs).await?;
    let (training, debugging, future, good) = (ric(921), ric(922), ric(923), ric(924));
    let as_processing =
        |msg: String, id: &str| msg.replace("|P|2.5.1\r", &format!("|{id}|2.5.1\r"));
    drop_file(
        &dirs.inbox,
        "training.hl7",
        as_processing(oru("TRAIN", &training, 2), "T").as_bytes(),
    )?;
    drop_file(
        &dirs.inbox,
        "debugging.hl7",
        as_processing(oru("DEBUG", &debugging, 1), "D").as_bytes(),
    )?;
    let tomorrow = oru("AHEAD", &future, 2)
        .replace("20261118074500+0800", &hl7_time_from_now(1))
        .replace("20261118090000+0800", &hl7_time_from_now(1));
    drop_file(&dirs.inbox, "future.hl7", tomorrow.as_bytes())?;
    drop_file(&dirs.inbox, "good.hl7", oru("GOOD", &good, 2).as_bytes())?;
    wait_for("the good file published and the others refused", || {
        Ok(inbox_files(&dirs.inbox)? == 0
            && daemon.counts().published == 2
            && ["training", "debugging", "future"]
                .iter()
                .all(|f| dirs.rejected().join(format!("{f}.hl7.reason.txt")).exists()))
    })
    .await?;
    let reason =
        |f: &str| std::fs::read_to_string(dirs.rejected().join(format!("{f}.hl7.reason.txt")));
    let r = reason("training")?;
    assert!(r.contains("MSH-11 (processing id) is T (training)"), "{r}");
    let r = reason("debugging")?;
    assert!(r.contains("MSH-11 (processing id) is D"), "{r}");
    let r = reason("future")?;
    assert!(
        r.contains(
            "OBX-14 (date/time of the observation), else OBR-7 (observation date/time): the time is"
        ) && r.contains("ahead of this computer's clock"),
        "{r}"
    );
    assert!(!r.contains(&future), "{r}");
    assert_eq!(daemon.counts().pending, 0);
    for p in [&training, &debugging, &future] {
        assert_eq!(seen_for(&hub, p).await?, [], "published for a refused file");
    }
    assert_eq!(seen_for(&hub, &good).await?.len(), 2);
    daemon.shutdown().await?;
    Ok(())
}

/// The value of metric `name` (a line `name value`) in a metrics page.
fn metric(page: &str, name: &str) -> anyhow::Result<i64> {
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .with_context(|| format!("no {name} in:\n{page}"))?
        .trim()
        .parse()
        .with_context(|| format!("{name} is not a number"))
}

/// The agent daemon's metrics endpoint (issue 20, part 7): what is published, and, while the hub
/// is down, what waits and for how long, read from the store at each scrape.
#[tokio::test]
async fn the_agent_metrics_show_the_outbox_and_its_oldest_wait() -> anyhow::Result<()> {
    init();
    let mut hub = TestHub::start().await?;
    let dirs = agent_config(&hub, TERTIARY)?;
    let mut text = std::fs::read_to_string(&dirs.config)?;
    text.push_str("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&dirs.config, text)?;
    let daemon = start_daemon(&dirs).await?;
    let addr = daemon.metrics_addr().context("no metrics endpoint")?;
    let get = || {
        crate::harness::http(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
    };
    drop_file(&dirs.inbox, "a.hl7", oru("MET-A", &ric(931), 2).as_bytes())?;
    wait_for("2 published", || Ok(daemon.counts().published == 2)).await?;
    let page = get().await?;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_eq!(metric(&page, "huren_agent_outbox_published")?, 2);
    assert_eq!(metric(&page, "huren_agent_outbox_pending")?, 0);
    assert_eq!(metric(&page, "huren_agent_outbox_oldest_age_seconds")?, 0);
    // Counted per process (other tests in this one may fail log checks on purpose): present.
    metric(&page, "huren_agent_log_check_failures_total")?;
    assert!(!page.contains(&ric(931)), "{page}");

    // The hub goes away: what is read now waits, and the wait shows.
    hub.stop().await?;
    drop_file(&dirs.inbox, "b.hl7", oru("MET-B", &ric(932), 1).as_bytes())?;
    wait_for("1 waiting", || Ok(daemon.counts().pending == 1)).await?;
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let page = get().await?;
    assert_eq!(metric(&page, "huren_agent_outbox_pending")?, 1);
    assert!(
        metric(&page, "huren_agent_outbox_oldest_age_seconds")? >= 2,
        "{page}"
    );
    daemon.shutdown().await?;
    Ok(())
}
