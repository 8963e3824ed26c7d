//! Portable proofs (`huren-proof/1`): exported by one member's agent from a real hub with its
//! log checked, verified offline by `huren-agent verify-file` with only the CA and the log key,
//! and refused, with the field named, when any byte of the file is changed.

use anyhow::{Context, ensure};

use huren_agent::proof_file::{ProofFileError, Trust, verify};
use huren_agent::{Agent, AgentConfig};
use huren_core::checkpoint::NoteVerifier;
use huren_core::trust::AllianceCa;

use crate::harness::{HGB, TestHub, hours, init, lab_summary, run_agent_cli};
use crate::log::{agent_config_with, verifier};

const PASSPORT: &str = "E30000001";

on_each_store! {
#[tokio::test]
async fn an_exported_proof_verifies_offline_and_every_changed_byte_is_caught() -> anyhow::Result<()>
{
    init();
    let hub = TestHub::start().await?;
    let config_a = agent_config_with(&hub, "hosp-a", &hub.root().join("log-a"), "")?;
    let config_b = agent_config_with(&hub, "hosp-b", &hub.root().join("log-b"), "")?;
    let a = Agent::connect(AgentConfig::load(&config_a)?).await?;
    let patient = a.pseudonymise("passport", PASSPORT)?;
    let s = lab_summary("hosp-a", "PF-1", patient, HGB, hours(1))?;
    a.publish(&s, a.sign(&s)?).await?;

    // Another member exports it, as a referral desk would hand it to the patient.
    let file = hub.root().join("proof.json");
    let (ok, _, err) = run_agent_cli(
        &config_b,
        &[
            "export-proof".into(),
            "--id-type".into(),
            "passport".into(),
            "--patient-id".into(),
            PASSPORT.into(),
            "--result".into(),
            "hosp-a/PF-1".into(),
            "--out".into(),
            file.display().to_string(),
        ],
    )
    .await?;
    ensure!(ok, "export-proof failed: {err}");
    let text = std::fs::read_to_string(&file)?;
    ensure!(!text.contains(PASSPORT), "the patient's id is in the file");

    // Offline, with no configuration: only the CA certificate and the log's key.
    let log_key = verifier(&hub)?.to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_huren-agent"))
        .env_remove("HUREN_AGENT_CONFIG")
        .args(["verify-file", &file.display().to_string(), "--ca"])
        .arg(&hub.paths.ca_cert)
        .args(["--log-key", &log_key])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.starts_with("PROVEN: hosp-a/PF-1 v1"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let trust = Trust {
        ca: AllianceCa::from_pem(&std::fs::read_to_string(&hub.paths.ca_cert)?)?,
        log: NoteVerifier::parse(&log_key)?,
        witnesses: vec![],
        quorum: 0,
    };
    verify(&text, &trust)?;

    // Named refusals: each part of the file changed on its own.
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = json.clone();
        f(&mut v);
        v.to_string()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "version",
            edit(&|v| v["version"] = 2.into()),
            "version says \"2\", but the signed summary says \"1\"",
        ),
        (
            "publisher",
            edit(&|v| v["publisher"] = "hosp-b".into()),
            "publisher says",
        ),
        (
            "accepted_at_ms",
            edit(&|v| v["accepted_at_ms"] = (v["accepted_at_ms"].as_i64().unwrap_or(0) + 1).into()),
            "the log does not prove this summary",
        ),
        (
            "log_index",
            edit(&|v| v["log_index"] = (v["log_index"].as_u64().unwrap_or(0) + 1).into()),
            "the log does not prove this summary",
        ),
        (
            "format",
            edit(&|v| v["format"] = "huren-proof/2".into()),
            "format is \"huren-proof/2\"",
        ),
        (
            "signature",
            edit(&|v| v["signature"] = "AAAA".into()),
            "signature: an Ed25519 signature is 64 bytes",
        ),
        (
            "extra field",
            edit(&|v| v["note"] = "trust me".into()),
            "unknown field `note`",
        ),
    ];
    for (what, changed, phrase) in cases {
        let err = verify(&changed, &trust).expect_err(what).to_string();
        ensure!(err.contains(phrase), "{what}: {err}");
    }
    // A reader who requires a witness refuses a checkpoint no witness cosigned.
    let strict = Trust {
        quorum: 1,
        witnesses: vec![huren_core::cosignature::CosignerKey::parse(
            &huren_core::cosignature::Cosigner::new(
                "w.example/1",
                ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
            )?
            .verifier()
            .to_string(),
        )?],
        ..trust.clone()
    };
    ensure!(matches!(
        verify(&text, &strict),
        Err(ProofFileError::Witnesses(_))
    ));

    // Any one byte of the file changed: refused, every time.
    let bytes = text.as_bytes();
    let mut accepted = Vec::new();
    for i in 0..bytes.len() {
        let mut changed = bytes.to_vec();
        changed[i] ^= 0x01;
        let Ok(changed) = String::from_utf8(changed) else {
            continue; // not text: verify-file refuses it before reading
        };
        if verify(&changed, &trust).is_ok() {
            accepted.push(i);
        }
    }
    ensure!(
        accepted.is_empty(),
        "changed bytes at {accepted:?} of {} were accepted",
        bytes.len()
    );

    // The lookup was an access like any other: logged with the exporting member.
    let accesses = hub
        .access_entries(
            crate::harness::ADMIN,
            &hub.pseudonym_of("passport", PASSPORT)?,
        )
        .await?;
    ensure!(
        accesses
            .iter()
            .any(|e| e.caller == "hosp-b" && e.method == "History"),
        "{accesses:?}"
    );
    // An unknown result is a clear error.
    let (ok, _, err) = run_agent_cli(
        &config_b,
        &[
            "export-proof".into(),
            "--id-type".into(),
            "passport".into(),
            "--patient-id".into(),
            PASSPORT.into(),
            "--result".into(),
            "hosp-a/PF-404".into(),
        ],
    )
    .await?;
    ensure!(
        !ok && err.contains("is not among this patient's results"),
        "{err}"
    );
    Ok(())
}
}

/// `verify-file` on what is not a proof file says so and fails.
#[tokio::test]
async fn verify_file_refuses_what_is_not_a_proof() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let log_key = verifier(&hub)?.to_string();
    let junk = hub.root().join("junk.json");
    for (content, phrase) in [
        (&b"{}"[..], "not a huren-proof/1 JSON document"),
        (&b"\xff\xfe"[..], "not UTF-8"),
    ] {
        std::fs::write(&junk, content)?;
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_huren-agent"))
            .env_remove("HUREN_AGENT_CONFIG")
            .args(["verify-file", &junk.display().to_string(), "--ca"])
            .arg(&hub.paths.ca_cert)
            .args(["--log-key", &log_key])
            .output()
            .await
            .context("running huren-agent")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && stderr.contains(phrase), "{stderr}");
    }
    Ok(())
}
