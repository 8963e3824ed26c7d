//! The verifiable log end to end: receipts and answers carry inclusion proofs that verify with
//! only the checkpoint, the hub's log key and the bytes; checkpoints stay consistent; agents
//! catch a hub whose store was rewritten, whose log lost or reordered entries, or that shows
//! two members different logs; the access audit, consent and revocation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

use huren_agent::{Agent, AgentConfig, AgentError, Asking};
use huren_core::checkpoint::{NoteVerifier, open_checkpoint};
use huren_core::logentry::{Entry, LogProof, Method, Purpose, summary_leaf, verify_leaf};
use huren_core::merkle::{Hash, verify_consistency};
use huren_core::pb::SignedSummary;
use huren_core::pseudonym::Pseudonym;
use huren_core::summary::{Summary, UnixMillis};
use huren_proto::hub as pb;
use huren_proto::hub::hub_client::HubClient;

use crate::harness::{
    ADMIN, Backend, HGB, LOINC, STARTUP_DEADLINE, TREATMENT, TestHub, history_request, hours, init,
    lab_summary, now_ms, prior_request, publish, sign,
};

/// The hub's log verifier key, read from the key file the hub created.
pub(crate) fn verifier(hub: &TestHub) -> anyhow::Result<NoteVerifier> {
    let config = huren_hub::HubConfig::load(&hub.config_path)?;
    let key =
        huren_hub::log::LogSigner::load_or_create(&config.log_key_path(), &config.log.origin)?;
    Ok(NoteVerifier::parse(&key.verifier_key())?)
}

fn proof(p: Option<pb::LogProof>) -> anyhow::Result<LogProof> {
    let p = p.context("no log proof")?;
    Ok(LogProof {
        index: p.index,
        tree_size: p.tree_size,
        proof: p
            .proof
            .iter()
            .map(|h| Hash::try_from(h.as_slice()))
            .collect::<Result<_, _>>()?,
        checkpoint: p.checkpoint,
    })
}

/// The leaf of a published summary: exactly the bytes the publisher signed, its signature and
/// certificate, and the hub's acceptance time from the receipt.
pub(crate) fn leaf_of(signed: &SignedSummary, accepted_at_ms: i64) -> anyhow::Result<Vec<u8>> {
    Ok(summary_leaf(
        &signed.body,
        &signed.signature.as_slice().try_into()?,
        &signed.signer_certificate,
        UnixMillis(accepted_at_ms),
    ))
}

fn with_purpose(mut r: pb::FindPriorRequest, purpose: pb::Purpose) -> pb::FindPriorRequest {
    r.purpose = purpose as i32;
    r.with_proofs = true;
    r
}

/// An agent configuration with the log checked, its state in `state`.
fn agent_config(hub: &TestHub, id: &str, state: &Path) -> anyhow::Result<PathBuf> {
    agent_config_with(hub, id, state, "")
}

/// [`agent_config`] with more lines in its `[log]` section.
pub(crate) fn agent_config_with(
    hub: &TestHub,
    id: &str,
    state: &Path,
    more_log: &str,
) -> anyhow::Result<PathBuf> {
    let files = hub.member_files(id)?;
    let path = hub.root().join(format!("log-agent-{id}.toml"));
    std::fs::write(
        &path,
        format!(
            "institution = \"{id}\"\nhub = \"{}\"\nhub_tls_name = \"localhost\"\n\
             [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
             [signing]\ncert = {:?}\nkey = {:?}\n\
             [pseudonym]\nkey_file = {:?}\n\
             [log]\nverifier_key = {:?}\nstate_dir = {:?}\n{more_log}",
            hub.url(),
            hub.paths.ca_cert,
            files.tls_cert,
            files.tls_key,
            files.signing_cert,
            files.signing_key,
            hub.paths.pseudonym_key,
            verifier(hub)?.to_string(),
            state,
        ),
    )?;
    Ok(path)
}

async fn log_agent(hub: &TestHub, id: &str, state: &str) -> anyhow::Result<Agent> {
    let state = hub.root().join(state);
    Ok(Agent::connect(AgentConfig::load(&agent_config(hub, id, &state)?)?).await?)
}

/// Publishes `n` haemoglobin results of `patient` through `agent`.
async fn publish_some(
    agent: &Agent,
    prefix: &str,
    patient: Pseudonym,
    n: i64,
) -> anyhow::Result<()> {
    for i in 0..n {
        let s = lab_summary(
            agent.institution().as_str(),
            &format!("{prefix}-{i}"),
            patient,
            HGB,
            hours(i),
        )?;
        let env = agent.sign(&s)?;
        agent.publish(&s, env).await?;
    }
    Ok(())
}

async fn consistency(c: &mut HubClient<Channel>, old: u64, new: u64) -> anyhow::Result<Vec<Hash>> {
    let r = c
        .get_consistency_proof(pb::ConsistencyProofRequest {
            old_size: old,
            new_size: new,
        })
        .await?
        .into_inner();
    Ok(r.proof
        .iter()
        .map(|h| Hash::try_from(h.as_slice()))
        .collect::<Result<_, _>>()?)
}

on_each_store! {
#[tokio::test]
async fn receipts_and_answers_verify_with_only_checkpoint_key_and_bytes() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let vkey = verifier(&hub)?;
    let a = hub.member("hosp-a")?;
    let mut ca = hub.client("hosp-a").await?;
    let mut cb = hub.client("hosp-b").await?;
    let p = hub.patient("E10000001");

    // Publishes interleaved with queries (which are logged too): every receipt proves its
    // summary, and every pair of checkpoints is consistent.
    let mut checkpoints = Vec::new();
    let mut signed_all = Vec::new();
    for i in 0..12 {
        let signed = sign(
            &a,
            &lab_summary("hosp-a", &format!("L-{i}"), p, HGB, hours(i))?,
        )?;
        let r = publish(&mut ca, signed.clone()).await?;
        let receipt = r.receipt.context("receipt")?;
        let lp = proof(r.log_proof)?;
        let cp = verify_leaf(&vkey, &leaf_of(&signed, receipt.accepted_at_ms)?, &lp)?;
        assert!(lp.index < cp.size);
        checkpoints.push(cp);
        signed_all.push((signed, receipt.accepted_at_ms, lp.index));
        if i % 3 == 0 {
            cb.find_prior(prior_request(&p, &[(LOINC, HGB)])).await?;
        }
    }
    // Queries were logged between the publishes: indexes skip them.
    let indexes: Vec<u64> = signed_all.iter().map(|(_, _, i)| *i).collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]));
    assert!(indexes.last() > Some(&11), "{indexes:?}");

    // The same summary again: the first receipt, the same log entry.
    let (first, at, index) = &signed_all[0];
    let again = publish(&mut ca, first.clone()).await?;
    assert!(again.already_stored);
    let lp = proof(again.log_proof)?;
    assert_eq!(lp.index, *index);
    verify_leaf(&vkey, &leaf_of(first, *at)?, &lp)?;

    // Every checkpoint is a prefix of every later one.
    for (i, old) in checkpoints.iter().enumerate() {
        for new in &checkpoints[i..] {
            let proof = consistency(&mut cb, old.size, new.size).await?;
            verify_consistency(old.size, new.size, &old.root, &new.root, &proof)?;
        }
    }
    // The latest checkpoint extends them all; a tree the hub does not have is refused.
    let latest = cb
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner()
        .checkpoint;
    let latest = open_checkpoint(&latest, &vkey, vkey.name())?;
    let last = checkpoints.last().context("checkpoints")?;
    verify_consistency(
        last.size,
        latest.size,
        &last.root,
        &latest.root,
        &consistency(&mut cb, last.size, 0).await?,
    )?;
    let err = consistency(&mut cb, 1, latest.size + 100)
        .await
        .expect_err("beyond the log");
    let status = err.downcast::<tonic::Status>()?;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // FindPrior with proofs: each returned summary verifies from its own bytes.
    let answer = cb
        .find_prior(with_purpose(
            prior_request(&p, &[(LOINC, HGB)]),
            pb::Purpose::Treatment,
        ))
        .await?
        .into_inner();
    assert_eq!(answer.results.len(), 12);
    for r in &answer.results {
        let signed = r.summary.clone().context("summary")?;
        let at = r.receipt.as_ref().context("receipt")?.accepted_at_ms;
        verify_leaf(&vkey, &leaf_of(&signed, at)?, &proof(r.log_proof.clone())?)?;
    }
    assert!(answer.checkpoint.is_empty(), "full proofs carry their own");

    // With compact_proofs (as agents ask) the checkpoint comes once, in the answer, and each
    // path packed in one field; every proof verifies against that checkpoint. The same for
    // History (CheckOrder's in rules.rs).
    let compact_proof = |p: Option<pb::LogProof>, checkpoint: &str| -> anyhow::Result<LogProof> {
        let p = p.context("no log proof")?;
        ensure!(p.proof.is_empty() && p.checkpoint.is_empty(), "not compact: {p:?}");
        ensure!(!p.path.is_empty(), "no path");
        let mut lp = LogProof::try_from(p)?;
        lp.checkpoint = checkpoint.to_owned();
        Ok(lp)
    };
    let mut request = with_purpose(prior_request(&p, &[(LOINC, HGB)]), pb::Purpose::Treatment);
    request.compact_proofs = true;
    let compact = cb.find_prior(request).await?.into_inner();
    assert_eq!(compact.results.len(), 12);
    assert!(!compact.checkpoint.is_empty());
    for r in &compact.results {
        let signed = r.summary.clone().context("summary")?;
        let at = r.receipt.as_ref().context("receipt")?.accepted_at_ms;
        let lp = compact_proof(r.log_proof.clone(), &compact.checkpoint)?;
        verify_leaf(&vkey, &leaf_of(&signed, at)?, &lp)?;
    }
    assert!(compact.encoded_len() < answer.encoded_len());
    // A path that is not the leaf's fails against the same checkpoint.
    let r = &compact.results[0];
    let mut wrong = compact_proof(compact.results[1].log_proof.clone(), &compact.checkpoint)?;
    wrong.index = r.log_proof.as_ref().context("proof")?.index;
    let signed = r.summary.clone().context("summary")?;
    let at = r.receipt.as_ref().context("receipt")?.accepted_at_ms;
    assert!(verify_leaf(&vkey, &leaf_of(&signed, at)?, &wrong).is_err());

    let mut request = history_request(&p, 0);
    (request.with_proofs, request.compact_proofs) = (true, true);
    request.include_earlier_versions = true;
    let history = cb.history(request).await?.into_inner();
    assert_eq!(history.results.len(), 12);
    for r in &history.results {
        compact_proof(r.log_proof.clone(), &history.checkpoint)?;
    }
    // A query without a purpose is refused and says why.
    let mut no_purpose = prior_request(&p, &[(LOINC, HGB)]);
    no_purpose.purpose = 0;
    let err = cb.find_prior(no_purpose).await.expect_err("no purpose");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("purpose is required"), "{err:?}");
    let mut no_purpose = history_request(&p, 0);
    no_purpose.purpose = 0;
    let err = cb.history(no_purpose).await.expect_err("no purpose");
    assert_eq!(err.code(), Code::InvalidArgument);

    // A decision's log proof verifies against its leaf.
    let r = &answer.results[0].receipt.clone().context("receipt")?;
    let d = cb
        .record_decision(pb::RecordDecisionRequest {
            decision_id: "order-1".into(),
            publisher: r.publisher.clone(),
            summary_id: r.summary_id.clone(),
            version: r.version,
            decision: pb::DecisionKind::Retested as i32,
            reason: pb::RetestReason::ConditionChanged as i32,
            note: String::new(),
        })
        .await?
        .into_inner();
    // The leaf comes with the answer (format 0x04: it also names the item, the price in force
    // and the consultation); its fields are what was sent, and the proof verifies with it.
    let leaf = d.leaf.clone();
    let Entry::Decision {
        at,
        member,
        decision_id,
        publisher,
        summary_id,
        version,
        adopted,
        recognised,
        reason,
        note,
        facts: Some(facts),
    } = Entry::decode(&leaf)?
    else {
        anyhow::bail!("not a format 0x04 decision leaf");
    };
    assert_eq!(
        (
            at.0,
            member.as_str(),
            decision_id.as_str(),
            publisher.as_str(),
            summary_id.as_str(),
            version,
            adopted,
            recognised,
            reason.as_str(),
            note.as_str()
        ),
        (
            d.recorded_at_ms,
            "hosp-b",
            "order-1",
            r.publisher.as_str(),
            r.summary_id.as_str(),
            r.version,
            false,
            d.result_was_recognised,
            "condition-changed",
            ""
        )
    );
    assert_eq!((facts.item_system.as_str(), facts.item_code.as_str()), (LOINC, HGB));
    assert_eq!(facts.price_fen, 500, "the haemoglobin's reference price");
    assert!(facts.consulted_at.0 > 0 && facts.consulted_at.0 <= d.recorded_at_ms);
    verify_leaf(&vkey, &leaf, &proof(d.log_proof)?)?;
    Ok(())
}
}

/// RecordV1 of hub::store, mirrored to tamper with (store-private layout, version 1).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredRecord {
    #[prost(bytes = "vec", tag = "1")]
    body: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    signature: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    signer_certificate_sha256: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    body_sha256: Vec<u8>,
    #[prost(int64, tag = "5")]
    accepted_at_ms: i64,
    #[prost(uint64, tag = "6")]
    log_index: u64,
}

on_each_store! {
#[tokio::test]
async fn a_rewritten_stored_summary_is_caught_by_the_agent() -> anyhow::Result<()> {
    init();
    let mut hub = TestHub::start().await?;
    let a = log_agent(&hub, "hosp-a", "state-a").await?;
    let p = hub.patient("E10000002");
    publish_some(&a, "R", p, 2).await?;
    let b = log_agent(&hub, "hosp-b", "state-b").await?;
    let items = [(LOINC.to_owned(), HGB.to_owned())];
    assert_eq!(
        b.find_prior(&TREATMENT, &p, &items, UnixMillis(now_ms()), None)
            .await?
            .results
            .len(),
        2
    );
    drop((a, b));
    hub.stop().await?;

    // Someone with the hub's disk changes R-1's acceptance time (to move it across a
    // revocation, say). Its signature still verifies: only the log shows the change.
    move_acceptance_time(&hub, |s| s.id.as_str() == "R-1").await?;
    hub.restart().await?;
    let b = log_agent(&hub, "hosp-b", "state-b").await?;
    let err = b
        .find_prior(&TREATMENT, &p, &items, UnixMillis(now_ms()), None)
        .await
        .expect_err("a summary with a changed acceptance time must be refused");
    assert!(matches!(err, AgentError::Log(_)), "{err}");
    assert!(err.to_string().contains("not proven"), "{err}");
    Ok(())
}
}

on_each_store! {
/// Earlier versions in a History answer are held to the log like the results themselves.
#[tokio::test]
async fn an_earlier_version_with_a_changed_acceptance_time_is_caught() -> anyhow::Result<()> {
    init();
    let mut hub = TestHub::start().await?;
    let a = log_agent(&hub, "hosp-a", "state-a").await?;
    let p = hub.patient("E10000009");
    let v1 = lab_summary("hosp-a", "CHAIN-1", p, HGB, hours(1))?;
    a.publish(&v1, a.sign(&v1)?).await?;
    // Another result between the two versions, so that version 2's proof does not take
    // version 1's leaf hash (the hub computes leaf hashes from the leaves): the latest version
    // alone must still verify below, whatever is done to version 1.
    let other = lab_summary(
        "hosp-a",
        "SPACER-1",
        hub.patient("E10000010"),
        HGB,
        hours(1),
    )?;
    a.publish(&other, a.sign(&other)?).await?;
    let v2 = crate::harness::amended(&v1, "value corrected");
    a.publish(&v2, a.sign(&v2)?).await?;
    let b = log_agent(&hub, "hosp-b", "state-b").await?;
    let chain = b.history(&TREATMENT, &p, UnixMillis(0), true).await?;
    assert_eq!(chain.results.len(), 1);
    assert_eq!(chain.results[0].earlier.len(), 1);
    drop((a, b));
    hub.stop().await?;

    // Version 1's acceptance time is moved on disk; its signature still verifies.
    move_acceptance_time(&hub, |s| s.id.as_str() == "CHAIN-1" && s.version == 1).await?;
    hub.restart().await?;
    let b = log_agent(&hub, "hosp-b", "state-b").await?;
    // The latest version alone still verifies...
    let latest = b.history(&TREATMENT, &p, UnixMillis(0), false).await?;
    assert_eq!(latest.results.len(), 1);
    // ...but the chain with the altered earlier version does not.
    let err = b
        .history(&TREATMENT, &p, UnixMillis(0), true)
        .await
        .expect_err("an earlier version with a changed acceptance time must be refused");
    assert!(matches!(err, AgentError::Log(_)), "{err}");
    Ok(())
}
}

/// In the stopped hub's store, moves the acceptance time of the one summary version that
/// `pick` selects by a minute, in its log leaf (where the hub reads it from): what someone with
/// the hub's disk might do to move a summary across a revocation. The signature still
/// verifies; only the log shows the change.
async fn move_acceptance_time(
    hub: &TestHub,
    pick: impl Fn(&Summary) -> bool,
) -> anyhow::Result<()> {
    let changed = hub
        .edit_stored_leaves(|_, leaf| match Entry::decode(leaf).ok()? {
            Entry::Summary {
                accepted_at,
                signer_certificate_sha256,
                signature,
                body,
            } if pick(&Summary::from_stored_body_bytes(&body).ok()?) => Some(
                Entry::Summary {
                    accepted_at: UnixMillis(accepted_at.0 + 60_000),
                    signer_certificate_sha256,
                    signature,
                    body,
                }
                .encode(),
            ),
            _ => None,
        })
        .await?;
    ensure!(
        changed == 1,
        "expected to change one summary leaf, changed {changed}"
    );
    Ok(())
}

/// Runs `huren-agent audit` as hosp-a (state in `state-a`): (success, stdout, stderr).
async fn cli_audit(hub: &TestHub) -> anyhow::Result<(bool, String, String)> {
    let config = agent_config(hub, "hosp-a", &hub.root().join("state-a"))?;
    crate::harness::run_agent_cli(&config, &["audit".to_owned()]).await
}

async fn audit_after(edit: impl FnOnce(&mut Vec<Vec<u8>>)) -> anyhow::Result<Vec<String>> {
    let mut hub = TestHub::start().await?;
    let a = log_agent(&hub, "hosp-a", "state-a").await?;
    let p = hub.patient("E10000003");
    publish_some(&a, "D", p, 5).await?;
    let clean = a.audit().await?;
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    assert_eq!(clean.entries_checked, 5);
    drop(a);
    let (ok, out, _) = cli_audit(&hub).await?;
    assert!(
        ok && out.contains("OK: the hub's log is consistent"),
        "{out}"
    );
    hub.stop().await?;
    hub.rewrite_stored_log(edit).await?;
    hub.restart().await?;
    // `huren-agent audit` says so loudly and exits non-zero.
    let (ok, _, err) = cli_audit(&hub).await?;
    assert!(!ok && err.contains("INCONSISTENT"), "{err}");
    let a = log_agent(&hub, "hosp-a", "state-a").await?;
    let report = a.audit().await?;
    // The agent also refuses the hub's next checkpoint outright.
    let err = a
        .checkpoint()
        .await
        .expect_err("an inconsistent checkpoint");
    assert!(matches!(err, AgentError::Log(_)), "{err}");
    Ok(report.problems)
}

on_each_store! {
#[tokio::test]
async fn audit_catches_a_dropped_log_entry() -> anyhow::Result<()> {
    init();
    let problems = audit_after(|leaves| {
        leaves.remove(2);
    })
    .await?;
    assert!(
        problems.iter().any(|p| p.contains("entries were dropped")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("log entry 2")),
        "{problems:?}"
    );
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn audit_catches_reordered_log_entries() -> anyhow::Result<()> {
    init();
    let problems = audit_after(|leaves| leaves.swap(1, 3)).await?;
    assert!(
        problems.iter().any(|p| p.contains("different roots")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("log entry 1")),
        "{problems:?}"
    );
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn two_members_shown_different_logs_catch_the_fork() -> anyhow::Result<()> {
    init();
    let mut hub = TestHub::start().await?;
    let p = hub.patient("E10000004");
    {
        let a = log_agent(&hub, "hosp-a", "state-a").await?;
        publish_some(&a, "F", p, 2).await?;
        let b = log_agent(&hub, "hosp-b", "state-b").await?;
        b.checkpoint().await?;
    }
    // The hub keeps a copy of its store, lets A publish, then goes back to the copy and lets B
    // publish: two logs of the same size under one key.
    hub.stop().await?;
    hub.back_up_store().await?;
    hub.restart().await?;
    let a = log_agent(&hub, "hosp-a", "state-a").await?;
    publish_some(&a, "FA", p, 1).await?;
    let a_note = a.checkpoint().await?;
    drop(a);
    hub.stop().await?;
    hub.restore_store().await?;
    hub.restart().await?;
    let b = log_agent(&hub, "hosp-b", "state-b").await?;
    let s = lab_summary("hosp-b", "FB-0", p, HGB, hours(3))?;
    b.publish(&s, b.sign(&s)?).await?;
    let b_note = b.checkpoint().await?;
    let (va, vb) = {
        let v = verifier(&hub)?;
        (
            open_checkpoint(&a_note, &v, v.name())?,
            open_checkpoint(&b_note, &v, v.name())?,
        )
    };
    assert_eq!(va.size, vb.size, "the test wants two trees of one size");
    assert_ne!(va.root, vb.root);

    // Each checkpoint alone verifies; gossip shows the fork.
    let err = b
        .compare_checkpoint(&a_note)
        .await
        .expect_err("a fork must be caught");
    assert!(matches!(err, AgentError::Log(_)), "{err}");
    assert!(err.to_string().contains("fork"), "{err}");
    // A, talking to the rolled-back hub, is refused its checkpoint too.
    let a = log_agent(&hub, "hosp-a", "state-a").await?;
    let err = a.checkpoint().await.expect_err("A saw the other branch");
    assert!(matches!(err, AgentError::Log(_)), "{err}");
    let report = a.audit().await?;
    assert!(!report.problems.is_empty());
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn the_access_report_says_who_looked_when_and_why() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let vkey = verifier(&hub)?;
    let p = hub.patient("E10000005");
    let other = hub.patient("E10000006");
    let mut ca = hub.client("hosp-a").await?;
    publish(
        &mut ca,
        sign(
            &hub.member("hosp-a")?,
            &lab_summary("hosp-a", "AR-1", p, HGB, hours(1))?,
        )?,
    )
    .await?;
    let mut cb = hub.client("hosp-b").await?;
    let mut cc = hub.client("hosp-c").await?;
    cb.find_prior(with_purpose(
        prior_request(&p, &[(LOINC, HGB)]),
        pb::Purpose::Treatment,
    ))
    .await?;
    let mut h = history_request(&p, 0);
    h.purpose = pb::Purpose::Referral as i32;
    cc.history(h).await?;
    cc.find_prior(prior_request(&other, &[(LOINC, HGB)]))
        .await?;

    // The administrator's report: both accesses, each provable, the other patient's absent.
    let mut admin = hub.client(ADMIN).await?;
    let report = admin
        .access_report(pb::AccessReportRequest {
            requester: String::new(),
            patient_pseudonym: p.as_bytes().to_vec(),
            from_ms: 0,
            to_ms: 0,
        })
        .await?
        .into_inner();
    let seen: Vec<(&str, i32, &str, u32)> = report
        .entries
        .iter()
        .map(|e| (e.caller.as_str(), e.purpose, e.method.as_str(), e.results))
        .collect();
    assert_eq!(
        seen,
        [
            ("hosp-b", pb::Purpose::Treatment as i32, "FindPrior", 1),
            ("hosp-c", pb::Purpose::Referral as i32, "History", 1),
        ]
    );
    for e in &report.entries {
        verify_leaf(&vkey, &e.leaf, &proof(e.proof.clone())?)?;
        let Entry::Access { pseudonym, .. } = Entry::decode(&e.leaf)? else {
            anyhow::bail!("not an access leaf");
        };
        assert_eq!(&pseudonym, p.as_bytes());
    }

    // A member may not have it (it would watch its peers' look-ups), the one that looked and
    // the one that holds the result alike; nothing of theirs is logged as an access.
    for member in ["hosp-a", "hosp-b", "hosp-c"] {
        let refused = hub
            .client(member)
            .await?
            .access_report(pb::AccessReportRequest {
                requester: String::new(),
                patient_pseudonym: p.as_bytes().to_vec(),
                from_ms: 0,
                to_ms: 0,
            })
            .await
            .expect_err("a member got an access report");
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{member}: {refused:?}"
        );
        assert!(
            refused.message().contains("on the patient's request"),
            "{refused:?}"
        );
    }
    // The administrator's agent produces the same report, verified; the first report request
    // is in it, logged as asked on the patient's behalf.
    let commission = log_agent(&hub, ADMIN, "state-admin").await?;
    let report = commission
        .access_report(None, &p, UnixMillis(0), UnixMillis(0))
        .await?;
    let who: Vec<(&str, Purpose)> = report
        .entries
        .iter()
        .map(|e| (e.caller.as_str(), e.purpose))
        .collect();
    assert_eq!(
        who,
        [
            ("hosp-b", Purpose::Treatment),
            ("hosp-c", Purpose::Referral),
            (ADMIN, Purpose::PatientRequest),
        ]
    );
    assert_eq!(report.entries[2].method, Method::AccessReport.name());
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn an_opted_out_patient_is_seen_only_in_an_emergency_and_that_is_flagged()
-> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let vkey = verifier(&hub)?;
    let p = hub.patient("E10000007");
    let mut ca = hub.client("hosp-a").await?;
    publish(
        &mut ca,
        sign(
            &hub.member("hosp-a")?,
            &lab_summary("hosp-a", "C-1", p, HGB, hours(1))?,
        )?,
    )
    .await?;
    let mut cb = hub.client("hosp-b").await?;
    let q = || prior_request(&p, &[(LOINC, HGB)]);
    assert_eq!(cb.find_prior(q()).await?.into_inner().results.len(), 1);

    // A member that holds none of the patient's results cannot record their consent.
    let consent = |opted_out| pb::SetConsentRequest {
        patient_pseudonym: p.as_bytes().to_vec(),
        opted_out,
    };
    let mut cc = hub.client("hosp-c").await?;
    let refused = cc.set_consent(consent(true)).await.map(|_| ());
    assert_eq!(
        refused.as_ref().map_err(|s| s.code()),
        Err(Code::PermissionDenied),
        "{refused:?}"
    );
    assert_eq!(cb.find_prior(q()).await?.into_inner().results.len(), 1);

    // The patient tells hosp-a, which holds their result, that they opt out.
    let set = ca.set_consent(consent(true)).await?.into_inner();
    assert!(set.changed);
    let leaf = Entry::Consent {
        at: UnixMillis(set.recorded_at_ms),
        member: "hosp-a".into(),
        pseudonym: *p.as_bytes(),
        opted_out: true,
    }
    .encode();
    verify_leaf(&vkey, &leaf, &proof(set.log_proof)?)?;

    // Treatment, history, order check: nothing, and the answer says why.
    let r = cb.find_prior(q()).await?.into_inner();
    assert!(r.results.is_empty() && r.withheld_by_consent);
    let r = cb.history(history_request(&p, 0)).await?.into_inner();
    assert!(r.results.is_empty() && r.withheld_by_consent);
    let order = cb
        .check_order(pb::CheckOrderRequest {
            requester: String::new(),
            compact_proofs: false,
            patient_pseudonym: p.as_bytes().to_vec(),
            items: vec![pb::OrderItem {
                code: Some(pb::order_item::Code::Catalogue(pb::ItemCode {
                    system: LOINC.into(),
                    code: HGB.into(),
                })),
            }],
            as_of_ms: 0,
            purpose: pb::Purpose::Treatment as i32,
            with_proofs: false,
            certificates_once: false,
        })
        .await?
        .into_inner();
    assert!(order.withheld_by_consent);
    assert!(order.items[0].best.is_none());
    assert!(
        order.items[0].explanation.contains("opted out"),
        "{order:?}"
    );

    // An emergency sees the result, through the agent too.
    let r = cb
        .find_prior(with_purpose(q(), pb::Purpose::Emergency))
        .await?
        .into_inner();
    assert_eq!(r.results.len(), 1);
    assert!(!r.withheld_by_consent);
    let agent = log_agent(&hub, "hosp-b", "state-b").await?;
    let items = [(LOINC.to_owned(), HGB.to_owned())];
    let answer = agent
        .find_prior(&TREATMENT, &p, &items, UnixMillis(now_ms()), None)
        .await?;
    assert!(answer.withheld_by_consent && answer.results.is_empty());
    let emergency = Asking::new(Purpose::Emergency).by("staff:ER-07");
    let answer = agent
        .find_prior(&emergency, &p, &items, UnixMillis(now_ms()), None)
        .await?;
    assert_eq!(answer.results.len(), 1);

    // The audit (the administrator's, on the patient's request) shows the withheld queries and
    // flags both emergency overrides.
    let report = log_agent(&hub, ADMIN, "state-admin")
        .await?
        .access_report(Some("staff:QC-02"), &p, UnixMillis(0), UnixMillis(0))
        .await?;
    assert!(report.opted_out);
    let flags: Vec<(Purpose, bool, bool, &str)> = report
        .entries
        .iter()
        .filter(|e| e.method != Method::AccessReport.name())
        .map(|e| {
            (
                e.purpose,
                e.emergency_override,
                e.withheld_by_consent,
                e.requester.as_str(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            (Purpose::Treatment, false, false, ""),
            // After hosp-c's refused consent change: nothing changed.
            (Purpose::Treatment, false, false, ""),
            (Purpose::Treatment, false, true, ""),
            (Purpose::Treatment, false, true, ""),
            (Purpose::Treatment, false, true, ""),
            (Purpose::Emergency, true, false, ""),
            (Purpose::Treatment, false, true, ""),
            // Through the agent, naming who asked: the leaf says so.
            (Purpose::Emergency, true, false, "staff:ER-07"),
        ]
    );

    // Back in: hosp-b (no results of the patient) may not withdraw the opt-out; an
    // administrator may. Then treatment sees the result again.
    let err = agent
        .set_consent(&p, false)
        .await
        .expect_err("a member without the patient's results withdrew an opt-out");
    assert!(err.to_string().contains("holds no results"), "{err}");
    assert!(cb.find_prior(q()).await?.into_inner().withheld_by_consent);
    let mut admin = hub.client(ADMIN).await?;
    admin.set_consent(consent(false)).await?;
    let r = cb.find_prior(q()).await?.into_inner();
    assert_eq!(r.results.len(), 1);
    assert!(!r.withheld_by_consent);
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn a_revoked_member_is_refused_but_what_it_signed_before_stays_verifiable()
-> anyhow::Result<()> {
    init();
    let hub = TestHub::start().await?;
    let vkey = verifier(&hub)?;
    let p = hub.patient("E10000008");
    let c = hub.member("hosp-c")?;
    let mut cc = hub.client("hosp-c").await?;
    let before = sign(&c, &lab_summary("hosp-c", "V-1", p, HGB, hours(1))?)?;
    let receipt = publish(&mut cc, before.clone())
        .await?
        .receipt
        .context("receipt")?;

    // A revocation in the future changes nothing yet.
    let policy = std::fs::read_to_string(&hub.policy_path)?;
    let revoke = |at: &str| {
        format!(
            "{policy}\n[[revoked]]\nmember = \"hosp-c\"\nat = {at}\nreason = \"signing key compromise\"\n"
        )
    };
    std::fs::write(
        &hub.policy_path,
        revoke("2099-01-01T00:00:00+08:00").replace("version = \"2026.11-1\"", "version = \"r1\""),
    )?;
    let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
    let mut cb = hub.client("hosp-b").await?;
    loop {
        // The policy version shows when the hub has reloaded.
        let r = cb
            .find_prior(prior_request(&p, &[(LOINC, HGB)]))
            .await?
            .into_inner();
        let version = r.results[0]
            .verdict
            .as_ref()
            .map(|v| v.policy_version.clone());
        if version.as_deref() == Some("r1") {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "policy not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish(
        &mut cc,
        sign(&c, &lab_summary("hosp-c", "V-2", p, HGB, hours(2))?)?,
    )
    .await?;

    // Revoked as of now: calls and new summaries refused, with a clear message.
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    std::fs::write(&hub.policy_path, revoke(&now))?;
    let refused = loop {
        match cc.find_prior(prior_request(&p, &[(LOINC, HGB)])).await {
            Err(status) => break status,
            Ok(_) => {
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "revocation not loaded"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("revoked")
            && refused.message().contains("signing key compromise"),
        "{refused:?}"
    );
    // Its health check says so too (it said SERVING); another member's is unchanged.
    let health = |id: &'static str| {
        let hub = &hub;
        async move {
            let mut h = tonic_health::pb::health_client::HealthClient::new(hub.channel(id).await?);
            anyhow::Ok(
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status)
                .map_err(|s| s.code()),
            )
        }
    };
    assert_eq!(health("hosp-c").await?, Err(Code::PermissionDenied));
    assert_eq!(
        health("hosp-b").await?,
        Ok(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    );
    let size_before = cb
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner()
        .checkpoint;
    let err = publish(
        &mut cc,
        sign(&c, &lab_summary("hosp-c", "V-3", p, HGB, hours(3))?)?,
    )
    .await
    .expect_err("a revoked member's new summary");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("revoked"), "{err:?}");
    // Nothing changed: the log did not grow (the refused calls are not accesses).
    let size_after = cb
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner()
        .checkpoint;
    let (b, a) = (
        open_checkpoint(&size_before, &vkey, vkey.name())?,
        open_checkpoint(&size_after, &vkey, vkey.name())?,
    );
    assert_eq!(b, a);

    // What it signed before stays returned and provable, accepted before the revocation.
    let answer = cb
        .find_prior(with_purpose(
            prior_request(&p, &[(LOINC, HGB)]),
            pb::Purpose::Treatment,
        ))
        .await?
        .into_inner();
    let ids: Vec<&str> = answer
        .results
        .iter()
        .filter_map(|r| r.receipt.as_ref().map(|r| r.summary_id.as_str()))
        .collect();
    assert_eq!(ids, ["V-2", "V-1"]);
    let v1 = &answer.results[1];
    verify_leaf(
        &vkey,
        &leaf_of(&before, receipt.accepted_at_ms)?,
        &proof(v1.log_proof.clone())?,
    )?;
    assert!(receipt.accepted_at_ms <= now_ms());
    Ok(())
}
}

// sled only: the layout of sled stores written before the log existed.
#[tokio::test]
async fn a_store_from_before_the_log_gets_its_summaries_logged_at_start() -> anyhow::Result<()> {
    init();
    let mut hub = TestHub::start().await?;
    let p = hub.patient("E10000009");
    let a = hub.member("hosp-a")?;
    let mut ca = hub.client("hosp-a").await?;
    let mut signed_by_id = Vec::new();
    for i in 0..3 {
        let id = format!("OLD-{i}");
        let s = lab_summary("hosp-a", &id, p, HGB, hours(i))?;
        let signed = sign(&a, &s)?;
        let receipt = publish(&mut ca, signed.clone())
            .await?
            .receipt
            .context("a receipt")?;
        signed_by_id.push((id, signed, receipt));
    }
    hub.stop().await?;
    // What a store written before the log existed looks like: no log trees at all, a record
    // for every version holding its body, signature and signer (now the log leaf holds them,
    // and the latest version has no record), a latest-version entry that is the version
    // alone (it names the version's leaf now), and patient index entries that name no leaf.
    {
        let db = hub.open_store_db().await?;
        let by_patient = db.open_tree("by_patient")?;
        for kv in by_patient.iter() {
            let (key, value) = kv?;
            ensure!(!value.is_empty(), "a patient index entry names its leaf");
            by_patient.insert(key, Vec::<u8>::new())?;
        }
        for tree in [
            "log_leaves",
            "log_runs",
            "log_nodes",
            "log_tiles",
            "log_meta",
            "access",
        ] {
            db.drop_tree(tree)?;
        }
        let summaries = db.open_tree("summaries")?;
        let latest = db.open_tree("latest")?;
        for (id, signed, receipt) in &signed_by_id {
            let mut key = b"hosp-a\0".to_vec();
            key.extend_from_slice(id.as_bytes());
            ensure!(
                latest.get(&key)?.is_some_and(|v| v.len() == 12),
                "a latest-version entry names its leaf"
            );
            latest.insert(&key, &1u32.to_be_bytes())?;
            key.push(0);
            key.extend_from_slice(&1u32.to_be_bytes());
            ensure!(
                summaries.get(&key)?.is_none(),
                "the latest version has no record"
            );
            let rec = StoredRecord {
                body: signed.body.clone(),
                signature: signed.signature.clone(),
                signer_certificate_sha256: huren_core::signing::sha256(&signed.signer_certificate)
                    .to_vec(),
                body_sha256: receipt.body_sha256.clone(),
                accepted_at_ms: receipt.accepted_at_ms,
                log_index: 0,
            };
            let mut v = vec![1u8];
            rec.encode(&mut v)?;
            summaries.insert(key, v)?;
        }
        db.flush()?;
    }
    hub.restart().await?;
    let vkey = verifier(&hub)?;
    let mut cb = hub.client("hosp-b").await?;
    let answer = cb
        .find_prior(with_purpose(
            prior_request(&p, &[(LOINC, HGB)]),
            pb::Purpose::Treatment,
        ))
        .await?
        .into_inner();
    assert_eq!(answer.results.len(), 3);
    let mut indexes = Vec::new();
    for r in &answer.results {
        let signed = r.summary.clone().context("summary")?;
        let at = r.receipt.as_ref().context("receipt")?.accepted_at_ms;
        let lp = proof(r.log_proof.clone())?;
        indexes.push(lp.index);
        verify_leaf(&vkey, &leaf_of(&signed, at)?, &lp)?;
    }
    indexes.sort();
    assert_eq!(indexes, [0, 1, 2]);
    Ok(())
}

/// The outcome of one summary of a batch: the response, or the refusal's code and message.
fn batch_outcome(o: &pb::PublishOutcome) -> Result<&pb::PublishResponse, (Code, &str)> {
    match &o.outcome {
        Some(pb::publish_outcome::Outcome::Published(r)) => Ok(r),
        Some(pb::publish_outcome::Outcome::Refused(r)) => {
            Err((Code::from_i32(r.code), r.message.as_str()))
        }
        None => Err((Code::Unknown, "no outcome")),
    }
}

on_each_store! {
#[tokio::test]
async fn a_batch_refuses_only_its_bad_summaries_and_proves_the_rest() -> anyhow::Result<()> {
    init();
    let mut hub = TestHub::start().await?;
    let vkey = verifier(&hub)?;
    let a = hub.member("hosp-a")?;
    let b = hub.member("hosp-b")?;
    let mut ca = hub.client("hosp-a").await?;
    let p = hub.patient("E10000077");

    // Already stored before the batch: one body for B-9 version 1.
    let first = lab_summary("hosp-a", "B-9", p, HGB, hours(40))?;
    publish(&mut ca, sign(&a, &first)?).await?;

    let good: Vec<_> = (0..5)
        .map(|i| {
            let s = lab_summary("hosp-a", &format!("B-{i}"), p, HGB, hours(i + 1))?;
            Ok((s.clone(), sign(&a, &s)?))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut tampered = sign(&a, &lab_summary("hosp-a", "B-6", p, HGB, hours(6))?)?;
    tampered.signature[0] ^= 1;
    let mut short_signature = sign(&a, &lab_summary("hosp-a", "B-7", p, HGB, hours(7))?)?;
    short_signature.signature.truncate(10);
    let of_b = sign(&b, &lab_summary("hosp-b", "B-8", p, HGB, hours(8))?)?;
    let mut other_body = first.clone();
    other_body.performed_at.0 -= 1000;
    let amended_b0 = crate::harness::amended(&good[0].0, "corrected value");
    let mut gap = crate::harness::amended(&good[1].0, "skips version 2");
    gap.version = 3;

    let batch = vec![
        good[0].1.clone(),
        tampered,
        good[1].1.clone(),
        short_signature,
        of_b,
        good[2].1.clone(),
        sign(&a, &other_body)?,
        sign(&a, &amended_b0)?, // version 2 right after version 1 in the same batch
        sign(&a, &gap)?,
        good[3].1.clone(),
        good[3].1.clone(), // the same summary twice
        good[4].1.clone(),
    ];
    let answer = ca
        .publish_batch(pb::PublishBatchRequest {
            summaries: batch.clone(),
        })
        .await?
        .into_inner();
    ensure!(
        answer.outcomes.len() == batch.len(),
        "one outcome per summary"
    );
    let refused: Vec<(usize, Code, String)> = answer
        .outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| batch_outcome(o).err().map(|(c, m)| (i, c, m.to_owned())))
        .collect();
    let codes: Vec<(usize, Code)> = refused.iter().map(|(i, c, _)| (*i, *c)).collect();
    assert_eq!(
        codes,
        [
            (1, Code::InvalidArgument),
            (3, Code::InvalidArgument),
            (4, Code::PermissionDenied),
            (6, Code::AlreadyExists),
            (8, Code::FailedPrecondition),
        ],
        "{refused:#?}"
    );
    for (phrase, i) in [
        ("signature does not verify", 1),
        ("64 bytes", 3),
        ("cannot publish a summary of hosp-b", 4),
        ("different body", 6),
        ("the stored version is 1, so the next must be 2", 8),
    ] {
        let (_, _, message) = refused
            .iter()
            .find(|(j, _, _)| *j == i)
            .context("refusal")?;
        assert!(
            message.contains(phrase),
            "{i}: {phrase:?} not in {message:?}"
        );
    }

    // Every stored summary is proven against one signed checkpoint of the same tree.
    let mut sizes = Vec::new();
    for (i, o) in answer.outcomes.iter().enumerate() {
        let Ok(r) = batch_outcome(o) else { continue };
        let receipt = r.receipt.as_ref().context("receipt")?;
        assert_eq!(r.already_stored, i == 10, "summary {i}");
        let lp = proof(r.log_proof.clone())?;
        let cp = verify_leaf(&vkey, &leaf_of(&batch[i], receipt.accepted_at_ms)?, &lp)
            .with_context(|| format!("summary {i}'s proof"))?;
        sizes.push(cp.size);
    }
    assert_eq!(sizes.len(), 7);
    assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{sizes:?}");

    // B-0 now answers with version 2; the refused summaries left nothing behind.
    let found = ca
        .find_prior(prior_request(&p, &[(LOINC, HGB)]))
        .await?
        .into_inner();
    let mut ids: Vec<(String, u32)> = found
        .results
        .iter()
        .filter_map(|r| r.receipt.as_ref())
        .map(|r| (r.summary_id.clone(), r.version))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            ("B-0".to_owned(), 2),
            ("B-1".to_owned(), 1),
            ("B-2".to_owned(), 1),
            ("B-3".to_owned(), 1),
            ("B-4".to_owned(), 1),
            ("B-9".to_owned(), 1),
        ]
    );
    hub.stop().await?;
    assert_eq!(
        hub.stored_summary_count().await?,
        1 + 6,
        "B-9 and the six new versions"
    );
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn a_batch_over_its_limits_is_refused_whole() -> anyhow::Result<()> {
    init();
    let mut hub = TestHub::start_with(huren_hub::config::Limits {
        max_batch_bytes: 8 * 1024,
        ..Default::default()
    })
    .await?;
    let a = hub.member("hosp-a")?;
    let mut ca = hub.client("hosp-a").await?;
    let p = hub.patient("E10000078");
    let signed = sign(&a, &lab_summary("hosp-a", "C-1", p, HGB, hours(1))?)?;

    let empty = ca
        .publish_batch(pb::PublishBatchRequest { summaries: vec![] })
        .await
        .expect_err("an empty batch is refused");
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");

    let many = ca
        .publish_batch(pb::PublishBatchRequest {
            summaries: vec![signed.clone(); 1001],
        })
        .await
        .expect_err("1001 summaries are refused");
    assert!(
        [Code::InvalidArgument, Code::OutOfRange].contains(&many.code()),
        "{many:?}"
    );

    let big = ca
        .publish_batch(pb::PublishBatchRequest {
            summaries: vec![signed.clone(); 20],
        })
        .await
        .expect_err("a batch over max_batch_bytes is refused");
    assert_eq!(big.code(), Code::OutOfRange, "{big:?}");
    assert!(big.message().contains("too large"), "{big:?}");

    // Within the limits the same summary goes through.
    let ok = ca
        .publish_batch(pb::PublishBatchRequest {
            summaries: vec![signed],
        })
        .await?
        .into_inner();
    assert!(batch_outcome(&ok.outcomes[0]).is_ok());
    hub.stop().await?;
    assert_eq!(
        hub.stored_summary_count().await?,
        1,
        "only the batch within the limits stored anything"
    );
    Ok(())
}
}

on_each_store! {
/// GetInclusionProof gives a leaf's bytes only to its owner or to an administrator (whose read
/// is logged as an access); anyone else gets the proof alone, which verifies with the bytes it
/// already holds. Walking the indexes no longer dumps the alliance. The checkpoint comes with
/// the proof whenever the size asked is the latest (not only for size 0).
#[tokio::test]
async fn log_entries_are_read_only_by_their_owner_or_an_audited_administrator() -> anyhow::Result<()>
{
    let hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let mut client_a = hub.client("hosp-a").await?;
    let mut client_b = hub.client("hosp-b").await?;
    let mut admin = hub.client(ADMIN).await?;
    let patient = hub.patient("E00000777");
    let signed = sign(
        &a,
        &lab_summary("hosp-a", "LAB-0777", patient, HGB, hours(1))?,
    )?;
    let published = publish(&mut client_a, signed.clone()).await?;
    let receipt = published.receipt.context("receipt")?;
    let index = published.log_proof.context("proof")?.index;
    let leaf = leaf_of(&signed, receipt.accepted_at_ms)?;
    let key = verifier(&hub)?;
    let ask = |tree_size: u64| pb::InclusionProofRequest { index, tree_size };

    // Another member: no bytes, a proof that verifies with the bytes the publisher holds.
    let other = client_b.get_inclusion_proof(ask(0)).await?.into_inner();
    assert!(
        other.leaf.is_empty(),
        "another member read a summary's bytes"
    );
    let p = proof(other.proof)?;
    ensure!(
        !p.checkpoint.is_empty(),
        "no checkpoint for the latest size"
    );
    verify_leaf(&key, &leaf, &p)?;
    // The same at the latest size named explicitly: the checkpoint comes too.
    let explicit = client_b
        .get_inclusion_proof(ask(p.tree_size))
        .await?
        .into_inner();
    let explicit = proof(explicit.proof)?;
    assert_eq!(explicit.checkpoint, p.checkpoint);
    verify_leaf(&key, &leaf, &explicit)?;

    // The publisher reads its own entry.
    let own = client_a.get_inclusion_proof(ask(0)).await?.into_inner();
    assert_eq!(own.leaf, leaf);

    // A member's own access leaf is its to read; another member's is not.
    client_b
        .find_prior(with_purpose(
            prior_request(&patient, &[(LOINC, HGB)]),
            pb::Purpose::Treatment,
        ))
        .await?;
    let size = client_b
        .get_inclusion_proof(ask(0))
        .await?
        .into_inner()
        .proof
        .context("proof")?
        .tree_size;
    let access = pb::InclusionProofRequest {
        index: size - 1,
        tree_size: 0,
    };
    let b_access = client_b.get_inclusion_proof(access).await?.into_inner();
    assert!(
        matches!(Entry::decode(&b_access.leaf)?, Entry::Access { caller, .. } if caller == "hosp-b")
    );
    let a_reads_b = client_a.get_inclusion_proof(access).await?.into_inner();
    assert!(a_reads_b.leaf.is_empty(), "a member read another's access");

    // An administrator reads it, and that read is in the patient's access report.
    let audited = admin.get_inclusion_proof(ask(0)).await?.into_inner();
    assert_eq!(audited.leaf, leaf);
    let report = admin
        .access_report(pb::AccessReportRequest {
            requester: String::new(),
            patient_pseudonym: patient.as_bytes().to_vec(),
            from_ms: 0,
            to_ms: 0,
        })
        .await?
        .into_inner();
    assert!(
        report
            .entries
            .iter()
            .any(|e| e.caller == ADMIN && e.method == "GetInclusionProof"),
        "{report:?}"
    );
    Ok(())
}
}

/// Runs `huren-hub --check` on the (stopped) hub's store: exit status and standard output.
fn store_check(hub: &TestHub) -> anyhow::Result<(bool, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_huren-hub"))
        .arg("--config")
        .arg(&hub.config_path)
        .arg("--check")
        .env("RUST_LOG", "warn")
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// `huren-hub --check` on a real hub's store: nothing wrong after publishing and a query; a
/// summary leaf changed on disk afterwards is found (the leaves no longer give the log's
/// root), and the check exits non-zero (issue 20, part 7). sled only: `--check` reads sled
/// stores (a PostgreSQL store refuses it by name).
#[tokio::test]
async fn the_store_check_finds_a_summary_changed_on_disk() -> anyhow::Result<()> {
    let mut hub = TestHub::start().await?;
    let p = hub.patient("E40000001");
    let mut a = hub.client("hosp-a").await?;
    for (k, code) in ["718-7", "2345-7", "24627-2"].iter().enumerate() {
        let s = lab_summary("hosp-a", &format!("CHK-{k}"), p, code, hours(2))?;
        publish(&mut a, sign(&hub.member("hosp-a")?, &s)?).await?;
    }
    hub.client("hosp-b")
        .await?
        .find_prior(prior_request(&p, &[(LOINC, HGB)]))
        .await?;
    hub.stop().await?;
    let (ok, out) = store_check(&hub)?;
    assert!(ok, "{out}");
    assert!(
        out.contains("(3 summary versions)") && out.contains("no problems found"),
        "{out}"
    );

    let changed = hub
        .edit_stored_leaves(|index, leaf| {
            (index == 0).then(|| {
                let mut leaf = leaf.to_vec();
                if let Some(last) = leaf.last_mut() {
                    *last ^= 1;
                }
                leaf
            })
        })
        .await?;
    assert_eq!(changed, 1);
    let (ok, out) = store_check(&hub)?;
    assert!(!ok, "{out}");
    assert!(
        out.contains("PROBLEM: the root of the stored leaves is not the log's root"),
        "{out}"
    );
    assert!(out.contains("problem(s) found in the store"), "{out}");
    Ok(())
}

/// `huren-hub migrate` copies a sled store into PostgreSQL: the log's size and root are the
/// original's, a member's checkpoint from before is proven consistent with the copy's, the
/// copy answers queries with proofs, checks decisions against what members were shown before
/// the copy, and takes new publishes. A database that is not empty
/// is refused.
#[tokio::test]
async fn migrate_copies_a_sled_store_into_postgres_with_the_same_log() -> anyhow::Result<()> {
    init();
    let mut hub = Backend::Sled.scope(TestHub::start()).await?;
    let p = hub.patient("E50000001");
    let a = log_agent(&hub, "hosp-a", "state-a").await?;
    publish_some(&a, "MIG", p, 4).await?;
    let v2 = crate::harness::amended(
        &lab_summary("hosp-a", "MIG-0", p, HGB, hours(0))?,
        "value corrected",
    );
    a.publish(&v2, a.sign(&v2)?).await?;
    let b = log_agent(&hub, "hosp-b", "state-b").await?;
    let before = b.history(&TREATMENT, &p, UnixMillis(0), true).await?;
    a.set_consent(&p, true).await?;
    a.set_consent(&p, false).await?;
    let old_note = b.checkpoint().await?;
    drop((a, b));
    hub.stop().await?;
    drop(hub.open_store_db().await?);
    let sled_head = huren_hub::store::SledStore::open(&hub.store_path)?.tree_head()?;

    let url = huren_hub::store::postgres::cluster::shared()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .create_database()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let migrate = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_huren-hub"))
            .arg("migrate")
            .arg("--from")
            .arg(format!("sled:{}", hub.store_path.display()))
            .arg("--to")
            .arg(&url)
            .env("RUST_LOG", "warn")
            .output()
    };
    let out = migrate().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{} log entries", sled_head.size)),
        "{stdout}"
    );
    let copy = huren_hub::store::PgStore::open(&url).await?;
    use huren_hub::store::Store;
    assert_eq!(copy.tree_head().await?, sled_head, "same size and root");
    drop(copy);
    // Copying again would mix two stores: refused.
    let again = migrate().await?;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    hub.use_postgres_store(&url)?;
    hub.restart().await?;
    let b = log_agent(&hub, "hosp-b", "state-b").await?;
    // The checkpoint b kept from the sled hub is checked against the copy's.
    let new_note = b.checkpoint().await?;
    let v = verifier(&hub)?;
    let (old, new) = (
        open_checkpoint(&old_note, &v, v.name())?,
        open_checkpoint(&new_note, &v, v.name())?,
    );
    assert_eq!((new.size, new.root), (sled_head.size, sled_head.root));
    let mut c = hub.client("hosp-b").await?;
    let proof = consistency(&mut c, old.size, new.size).await?;
    verify_consistency(old.size, new.size, &old.root, &new.root, &proof)?;
    // The same answers, verified with their proofs.
    let after = b.history(&TREATMENT, &p, UnixMillis(0), true).await?;
    let ids = |a: &huren_agent::Answer| {
        a.results
            .iter()
            .map(|r| (r.summary.id.to_string(), r.summary.version, r.earlier.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(after.results.len(), 4);
    // What b was shown on the sled hub is what its decision is checked against on the copy.
    let shown = &before.results[0].summary;
    let retest = |decision_id: &str| pb::RecordDecisionRequest {
        decision_id: decision_id.into(),
        publisher: shown.publisher.to_string(),
        summary_id: shown.id.to_string(),
        version: shown.version,
        decision: pb::DecisionKind::Retested as i32,
        reason: pb::RetestReason::ConditionChanged as i32,
        note: String::new(),
    };
    c.record_decision(retest("after-migrate")).await?;
    let mut never = hub.client("hosp-c").await?;
    let err = never
        .record_decision(retest("never-shown"))
        .await
        .expect_err("hosp-c was never shown it");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("not among your query answers"),
        "{err:?}"
    );
    // And it goes on: a new publish, and b's next checkpoint is consistent again.
    let a = log_agent(&hub, "hosp-a", "state-a").await?;
    publish_some(&a, "AFTER", p, 1).await?;
    b.checkpoint().await?;
    Ok(())
}
