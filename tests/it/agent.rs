//! The node agent against a real hub: publish a results file, query and list history with
//! verification, the CLI binary, and detection of a hub that serves altered data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use huren_agent::{Agent, AgentConfig};
use huren_core::summary::UnixMillis;

use crate::harness::{ADMIN, TREATMENT, TestHub, init, run_agent_cli};

const TERTIARY: &str = "shx-prov-people";
const COUNTY: &str = "lantian-county";
/// First patient of node-agent/examples/results.json (five results).
const PATIENT: &str = "610102196703151235";
/// Second patient of the example file (two results).
const OTHER_PATIENT: &str = "610122198807222047";
const LOINC: &str = "http://loinc.org";

fn example_results() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node-agent/examples/results.json")
}

fn config_toml(hub: &TestHub, id: &str) -> anyhow::Result<String> {
    let files = hub.member_files(id)?;
    Ok(format!(
        "institution = \"{id}\"\nhub = \"{}\"\nhub_tls_name = \"localhost\"\n\
         [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
         [signing]\ncert = {:?}\nkey = {:?}\n\
         [pseudonym]\nkey_file = {:?}\n",
        hub.url(),
        hub.paths.ca_cert,
        files.tls_cert,
        files.tls_key,
        files.signing_cert,
        files.signing_key,
        hub.paths.pseudonym_key,
    ))
}

fn write_config(hub: &TestHub, id: &str) -> anyhow::Result<PathBuf> {
    let path = hub.root().join(format!("agent-{id}.toml"));
    std::fs::write(&path, config_toml(hub, id)?)?;
    Ok(path)
}

async fn agent(hub: &TestHub, id: &str) -> anyhow::Result<Agent> {
    Ok(Agent::connect(AgentConfig::load(&write_config(hub, id)?)?).await?)
}

fn as_of() -> UnixMillis {
    // 2026-11-23T09:00:00+08:00
    huren_agent::results::parse_time("as_of", "2026-11-23T09:00:00+08:00").unwrap_or(UnixMillis(0))
}

async fn publish_examples(tertiary: &Agent) -> anyhow::Result<usize> {
    let signed = tertiary.sign_results_file(&example_results())?;
    let n = signed.len();
    for (summary, envelope) in signed {
        let p = tertiary.publish(&summary, envelope).await?;
        assert!(!p.already_stored);
        assert_eq!(p.receipt.summary_id, summary.id);
    }
    Ok(n)
}

#[tokio::test]
async fn county_finds_and_verifies_what_the_tertiary_hospital_published() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let tertiary = agent(&hub, TERTIARY).await?;
    let county = agent(&hub, COUNTY).await?;
    assert_eq!(publish_examples(&tertiary).await?, 7);

    let patient = county.pseudonymise("cn-ric", PATIENT)?;
    let items = vec![
        (LOINC.to_owned(), "718-7".to_owned()),
        (LOINC.to_owned(), "24627-2".to_owned()),
    ];
    // Last 30 days: the September haemoglobin is too old to be returned.
    let answer = county
        .find_prior(
            &TREATMENT,
            &patient,
            &items,
            as_of(),
            Some(Duration::from_secs(30 * 86_400)),
        )
        .await?;
    let ids: Vec<&str> = answer
        .results
        .iter()
        .map(|r| r.summary.id.as_str())
        .collect();
    assert_eq!(ids, ["RIS-20261119-00215", "LAB-20261118-00731-HGB"]);
    assert!(answer.results.iter().all(|r| r.summary.patient == patient));

    // No look-back limit: both haemoglobin results, newest first.
    let answer = county
        .find_prior(&TREATMENT, &patient, &items[..1], as_of(), None)
        .await?;
    let ids: Vec<&str> = answer
        .results
        .iter()
        .map(|r| r.summary.id.as_str())
        .collect();
    assert_eq!(ids, ["LAB-20261118-00731-HGB", "LAB-20260902-01188-HGB"]);

    // History spans all items; the other patient's results stay apart.
    let history = county
        .history(&TREATMENT, &patient, UnixMillis(0), false)
        .await?;
    assert_eq!(history.results.len(), 5);
    let other = county.pseudonymise("cn-ric", OTHER_PATIENT)?;
    let history = county
        .history(&TREATMENT, &other, UnixMillis(0), false)
        .await?;
    let ids: Vec<&str> = history
        .results
        .iter()
        .map(|r| r.summary.id.as_str())
        .collect();
    assert_eq!(ids, ["US-20261121-00088", "LAB-20261120-00412-GLU"]);
    Ok(())
}

#[tokio::test]
async fn publishing_the_same_file_twice_changes_nothing() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let tertiary = agent(&hub, TERTIARY).await?;
    publish_examples(&tertiary).await?;
    let first = tertiary
        .history(
            &TREATMENT,
            &tertiary.pseudonymise("cn-ric", PATIENT)?,
            UnixMillis(0),
            false,
        )
        .await?;
    for (summary, envelope) in tertiary.sign_results_file(&example_results())? {
        let again = tertiary.publish(&summary, envelope).await?;
        assert!(again.already_stored, "{} was stored twice", summary.id);
        let original = first
            .results
            .iter()
            .find(|r| r.summary.id == summary.id)
            .map(|r| r.receipt.clone());
        if let Some(original) = original {
            assert_eq!(again.receipt, original);
        }
    }
    let second = tertiary
        .history(
            &TREATMENT,
            &tertiary.pseudonymise("cn-ric", PATIENT)?,
            UnixMillis(0),
            false,
        )
        .await?;
    assert_eq!(second.results.len(), first.results.len());
    Ok(())
}

#[tokio::test]
async fn agent_marks_a_summary_altered_in_the_hub_store_and_shows_the_others() -> anyhow::Result<()>
{
    init();
    let mut hub = TestHub::start().await?;
    let tertiary = agent(&hub, TERTIARY).await?;
    publish_examples(&tertiary).await?;
    drop(tertiary);
    hub.stop().await?;

    // Someone with access to the hub's disk changes a haemoglobin value from 128 to 138 g/L
    // (the hub keeps a summary's body in its log leaf).
    {
        let db = hub.open_store_db().await?;
        let summaries = db.open_tree("log_leaves")?;
        let mut altered = 0;
        for entry in summaries.iter() {
            let (key, value) = entry?;
            if let Some(pos) = value.windows(4).position(|w| w == b"\x03128") {
                let mut v = value.to_vec();
                v[pos + 2] = b'3';
                summaries.insert(key, v)?;
                altered += 1;
            }
        }
        assert_eq!(
            altered, 1,
            "the test expects exactly one stored value of 128"
        );
        db.flush()?;
    }
    hub.restart().await?;

    let county = agent(&hub, COUNTY).await?;
    let patient = county.pseudonymise("cn-ric", PATIENT)?;
    // The altered haemoglobin is kept out and named with its publisher; the other
    // haemoglobin result of the patient is still shown.
    let answer = county
        .find_prior(
            &TREATMENT,
            &patient,
            &[(LOINC.to_owned(), "718-7".to_owned())],
            as_of(),
            None,
        )
        .await?;
    let shown: Vec<&str> = answer
        .results
        .iter()
        .map(|r| r.summary.id.as_str())
        .collect();
    assert_eq!(shown, ["LAB-20260902-01188-HGB"], "{answer:?}");
    assert_eq!(answer.failed.len(), 1, "{answer:?}");
    let failed = &answer.failed[0];
    assert_eq!(failed.publisher, TERTIARY);
    assert!(
        failed.claimed.contains("LAB-20261118-00731-HGB"),
        "{failed:?}"
    );
    assert!(
        failed.reason.contains("signature does not verify"),
        "{failed:?}"
    );
    // History, too, shows the other four and marks the altered one.
    let history = county
        .history(&TREATMENT, &patient, UnixMillis(0), false)
        .await?;
    assert_eq!(history.results.len(), 4);
    assert_eq!(history.failed.len(), 1);
    // The CLI says so, with the publisher, and still lists the others.
    let config = write_config(&hub, COUNTY)?;
    let args = ["history", "--patient-id", PATIENT].map(str::to_owned);
    let (ok, out, err) = run_agent_cli(&config, &args).await?;
    assert!(ok, "history failed: {err}");
    assert!(out.contains("FAILED VERIFICATION"), "{out}");
    assert!(out.contains(TERTIARY), "{out}");
    assert!(out.contains("4 result(s)"), "{out}");
    // Results that were not altered still verify.
    let ct = county
        .find_prior(
            &TREATMENT,
            &patient,
            &[(LOINC.to_owned(), "24627-2".to_owned())],
            as_of(),
            None,
        )
        .await?;
    assert_eq!(ct.results.len(), 1);
    Ok(())
}

#[tokio::test]
async fn agent_will_not_start_with_another_institutions_signing_key() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    hub.member_files(TERTIARY)?;
    let tertiary_files = hub.member_files(TERTIARY)?;
    let mut config = AgentConfig::load(&write_config(&hub, COUNTY)?)?;
    config.signing.cert = tertiary_files.signing_cert;
    config.signing.key = tertiary_files.signing_key;
    let err = Agent::connect(config)
        .await
        .err()
        .context("agent started")?;
    assert!(err.to_string().contains("is for shx-prov-people"), "{err}");
    Ok(())
}

/// The `huren-agent` binary, as a hospital IT engineer runs it.
#[tokio::test]
async fn cli_publishes_and_queries() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let tertiary = write_config(&hub, TERTIARY)?;
    let county = write_config(&hub, COUNTY)?;
    let run =
        |config: PathBuf, args: Vec<String>| async move { run_agent_cli(&config, &args).await };
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();

    let (ok, out, err) = run(
        tertiary.clone(),
        s(&["publish", example_results().to_str().context("path")?]),
    )
    .await?;
    assert!(ok, "publish failed: {err}");
    assert_eq!(out.matches("stored").count(), 7, "{out}");

    let (ok, out, err) = run(
        county.clone(),
        s(&[
            "query",
            "--patient-id",
            PATIENT,
            "--item",
            "718-7",
            "--item",
            "http://loinc.org|24627-2",
            "--as-of",
            "2026-11-23T09:00:00+08:00",
            "--lookback",
            "30d",
        ]),
    )
    .await?;
    assert!(ok, "query failed: {err}");
    assert!(out.contains("RIS-20261119-00215 v1"), "{out}");
    assert!(out.contains("128 g/L (L)"), "{out}");
    assert!(!out.contains("LAB-20260902-01188-HGB"), "{out}");
    assert!(
        out.contains("2 result(s); every signature verified"),
        "{out}"
    );
    // The patient's id appears nowhere in what the agent prints or logs.
    assert!(!out.contains(PATIENT) && !err.contains(PATIENT));

    // A mistyped id card number is caught locally, with a clear message and a failing exit.
    let (ok, _, err) = run(
        county.clone(),
        s(&["history", "--patient-id", "610102196703151236"]),
    )
    .await?;
    assert!(!ok);
    assert!(err.contains("wrong check character"), "{err}");

    // Who asks is an id, never a name: a name is refused before anything is asked.
    let (ok, _, err) = run(
        county.clone(),
        s(&["--requester", "王医生", "history", "--patient-id", PATIENT]),
    )
    .await?;
    assert!(!ok);
    assert!(
        err.contains("--requester") && err.contains("never a name"),
        "{err}"
    );
    // A staff id is asked with and logged: the administrator's access report shows it.
    let (ok, _, err) = run(
        county,
        s(&[
            "--requester",
            "staff:LT-D0423",
            "history",
            "--patient-id",
            PATIENT,
        ]),
    )
    .await?;
    assert!(ok, "history failed: {err}");
    let accesses = hub
        .access_entries(ADMIN, &hub.pseudonym_of("cn-ric", PATIENT)?)
        .await?;
    assert!(
        accesses
            .iter()
            .any(|e| e.method == "History" && e.requester == "staff:LT-D0423"),
        "{accesses:?}"
    );
    Ok(())
}

/// One signature rule for the hub and every agent: a summary whose signature has a mixed-order
/// R (only its key holder can make one) is accepted by the hub alone and in batches, every
/// time, and the county's agent shows it with the patient's other results. Before, the hub's
/// batch accepted it and every agent's strict check refused the patient's whole answer. A
/// small-order R is refused by the hub, alone and in a batch.
#[tokio::test]
async fn the_hub_and_the_agents_judge_a_signature_alike() -> anyhow::Result<()> {
    use crate::harness::{HGB, hours, lab_summary, publish, sign_with_mixed_order_r};
    use huren_proto::hub as pb;
    init();
    let hub = TestHub::start().await?;
    let tertiary = agent(&hub, TERTIARY).await?;
    publish_examples(&tertiary).await?;
    let member = hub.member(TERTIARY)?;
    let county = agent(&hub, COUNTY).await?;
    let patient = county.pseudonymise("cn-ric", PATIENT)?;
    let mut client = hub.client(TERTIARY).await?;
    let mut batch = Vec::new();
    for t in 1..8 {
        let unary = lab_summary(
            TERTIARY,
            &format!("MIXED-U-{t}"),
            patient,
            HGB,
            hours(t as i64),
        )?;
        let r = publish(&mut client, sign_with_mixed_order_r(&member, &unary, t)?).await;
        assert!(r.is_ok(), "unary, torsion point {t}: {r:?}");
        let batched = lab_summary(
            TERTIARY,
            &format!("MIXED-B-{t}"),
            patient,
            HGB,
            hours(t as i64),
        )?;
        batch.push(sign_with_mixed_order_r(&member, &batched, t)?);
    }
    let outcomes = client
        .publish_batch(pb::PublishBatchRequest { summaries: batch })
        .await?
        .into_inner()
        .outcomes;
    for o in &outcomes {
        assert!(
            matches!(o.outcome, Some(pb::publish_outcome::Outcome::Published(_))),
            "{o:?}"
        );
    }
    let history = county
        .history(&TREATMENT, &patient, UnixMillis(0), false)
        .await?;
    assert!(history.failed.is_empty(), "{:?}", history.failed);
    assert_eq!(history.results.len(), 5 + 14);

    // A small-order R: refused alone and in a batch.
    let mut bad = sign_with_mixed_order_r(
        &member,
        &lab_summary(TERTIARY, "SMALL-R", patient, HGB, hours(9))?,
        1,
    )?;
    bad.signature[..32].copy_from_slice(
        curve25519_dalek::constants::EIGHT_TORSION[1]
            .compress()
            .as_bytes(),
    );
    let r = publish(&mut client, bad.clone()).await;
    assert_eq!(
        r.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::InvalidArgument)
    );
    let outcomes = client
        .publish_batch(pb::PublishBatchRequest {
            summaries: vec![bad],
        })
        .await?
        .into_inner()
        .outcomes;
    match outcomes.first().and_then(|o| o.outcome.as_ref()) {
        Some(pb::publish_outcome::Outcome::Refused(r)) => {
            assert_eq!(r.code, tonic::Code::InvalidArgument as i32, "{r:?}");
        }
        other => panic!("a small-order R was accepted in a batch: {other:?}"),
    }
    Ok(())
}

/// A patient id type that is neither alliance-wide nor declared as local (with its
/// assigning authority) is refused wherever the agent builds a patient id: the CLI's patient
/// id and a results file. A declared local type is accepted and its pseudonym depends on the
/// authority, so two hospitals' record numbers do not collide.
#[tokio::test]
async fn unknown_id_types_are_refused_and_local_types_name_their_authority() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let tertiary = agent(&hub, TERTIARY).await?;
    let err = tertiary
        .pseudonymise("mrn", "A0012345")
        .expect_err("mrn is not declared");
    let text = err.to_string();
    assert!(
        text.contains("\"mrn\" is not accepted")
            && text.contains("cn-ric")
            && text.contains("[[pseudonym.local_types]]"),
        "{text}"
    );
    tertiary.pseudonymise("cn-ric", PATIENT)?;

    // A results file with an undeclared type: refused, naming the field, nothing signed.
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node-agent/examples/results.json"),
    )?;
    let bad = hub.root().join("results-mrn.json");
    std::fs::write(
        &bad,
        example.replacen("\"id_type\": \"cn-ric\"", "\"id_type\": \"mrn\"", 1),
    )?;
    let err = tertiary
        .sign_results_file(&bad)
        .err()
        .ok_or_else(|| anyhow::anyhow!("a results file with id_type mrn was signed"))?;
    assert!(err.to_string().contains("patient.id_type"), "{err}");

    // The CLI refuses it too, with the same message.
    let config = write_config(&hub, TERTIARY)?;
    let args: Vec<String> = ["history", "--patient-id", "A0012345", "--id-type", "mrn"]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    let (ok, _, err) = run_agent_cli(&config, &args).await?;
    assert!(!ok && err.contains("\"mrn\" is not accepted"), "{err}");

    // Declared with an authority: accepted; another authority gives another pseudonym.
    let with_mrn = |id: &str, authority: &str| -> anyhow::Result<AgentConfig> {
        let path = write_config(&hub, id)?;
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&format!(
            "[[pseudonym.local_types]]\nid_type = \"mrn\"\nassigning_authority = \"{authority}\"\n"
        ));
        std::fs::write(&path, text)?;
        Ok(AgentConfig::load(&path)?)
    };
    let a = Agent::connect(with_mrn(TERTIARY, TERTIARY)?).await?;
    let b = Agent::connect(with_mrn(COUNTY, COUNTY)?).await?;
    let pa = a.pseudonymise("mrn", "A0012345")?;
    let pb = b.pseudonymise("mrn", "A0012345")?;
    assert_ne!(
        pa, pb,
        "two hospitals' record numbers must not share a pseudonym"
    );
    assert_eq!(
        a.pseudonymise("cn-ric", PATIENT)?,
        b.pseudonymise("cn-ric", PATIENT)?
    );
    Ok(())
}

/// The closed sets on the command line (purpose, decision, re-test reason, consent, grouping)
/// are checked by the argument parser, which lists the accepted values; a decision the rules
/// refuse is refused before anything is sent; good values work against the real hub.
#[tokio::test]
async fn the_cli_checks_its_closed_sets_and_lists_the_accepted_values() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let config = write_config(&hub, COUNTY)?;
    let cli = |args: &[&str]| {
        let config = config.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        async move { run_agent_cli(&config, &args).await }
    };
    for (args, values) in [
        (
            vec!["--purpose", "curiosity", "history", "--patient-id", PATIENT],
            "treatment, referral, emergency, patient-request, administration, quality-control",
        ),
        (
            vec!["decide", "--result", "a/b", "--decision", "maybe"],
            "adopted, retested",
        ),
        (
            vec![
                "decide",
                "--result",
                "a/b",
                "--decision",
                "retested",
                "--reason",
                "bored",
            ],
            "condition-changed, fast-changing-value, critical-step, emergency, appraisal, other, patient-request, source-failed-eqa, too-old, physician-judgement",
        ),
        (
            vec!["consent", "--patient-id", PATIENT, "--set", "maybe"],
            "opt-out, opt-in",
        ),
        (vec!["stats", "--by", "year"], "item, member, day, month"),
    ] {
        let (ok, _, err) = cli(&args).await?;
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(values), "{args:?}: {err}");
    }
    let (ok, _, err) = cli(&[
        "decide",
        "--result",
        "a/b",
        "--decision",
        "adopted",
        "--reason",
        "too-old",
    ])
    .await?;
    assert!(
        !ok && err.contains("an adopted result takes no --reason"),
        "{err}"
    );
    let (ok, out, err) = cli(&["stats", "--by", "member"]).await?;
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("member ")), "{out}");
    Ok(())
}
