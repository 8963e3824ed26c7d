//! Checks that need trust in no one (issue 21): verdicts replayed under the policy the hub
//! logged (part 2), statistics recomputed from the log (part 3), and who may read access
//! reports and the log in bulk (part 5). A lying hub is our real hub behind a tiny in-test
//! gRPC proxy that edits its answers on the way: nothing of ours is mocked.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tonic::transport::{Certificate, Channel, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

use huren_agent::client::{Agent, Asking};
use huren_agent::config::AgentConfig;
use huren_core::logentry::{Entry, Purpose};
use huren_core::pseudonym::Pseudonym;
use huren_core::rules::Reason;
use huren_core::stats::GroupBy;
use huren_core::summary::UnixMillis;
use huren_proto::hub::{self as pb, hub_client::HubClient};

use crate::harness::{
    ADMIN, GLUCOSE, HGB, LOINC, TestHub, lab_summary, now_ms, prior_request, publish,
    run_agent_cli, sign,
};
use crate::log::agent_config_with;

const TERTIARY: &str = "shx-prov-people"; // 全国HR for haematology
const COUNTY: &str = "lantian-county";
const PASSPORT: &str = "E21000001";

/// Publishes a haemoglobin of `TERTIARY` performed `hours_ago` hours ago.
async fn publish_hgb(
    hub: &TestHub,
    id: &str,
    patient: Pseudonym,
    hours_ago: i64,
) -> anyhow::Result<()> {
    let s = lab_summary(TERTIARY, id, patient, HGB, now_ms() - hours_ago * 3_600_000)?;
    let mut c = hub.client(TERTIARY).await?;
    publish(&mut c, sign(&hub.member(TERTIARY)?, &s)?).await?;
    Ok(())
}

/// An agent of `id` that checks the log, its state in a folder of its own.
async fn agent(hub: &TestHub, id: &str, state: &str) -> anyhow::Result<(Agent, PathBuf)> {
    let config = agent_config_with(hub, id, &hub.root().join(state), "")?;
    Ok((Agent::connect(AgentConfig::load(&config)?).await?, config))
}

fn treatment() -> Asking {
    Asking::new(Purpose::Treatment)
}

/// Rewrites the test policy with a new version label and `extra` appended, and waits until the
/// hub has put it in force (its verdicts name the new version).
async fn change_policy(
    hub: &TestHub,
    version: &str,
    extra: &str,
    patient: Pseudonym,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&hub.policy_path)?;
    let text = text.replacen(
        "version = \"2026.11-1\"",
        &format!("version = \"{version}\""),
        1,
    );
    std::fs::write(&hub.policy_path, format!("{text}\n{extra}\n"))?;
    let mut c = hub.client(COUNTY).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut h = crate::harness::history_request(&patient, 0);
        h.purpose = pb::Purpose::Treatment as i32;
        let a = c.history(h).await?.into_inner();
        if a.results
            .iter()
            .filter_map(|r| r.verdict.as_ref())
            .any(|v| v.policy_version == version)
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the hub did not take policy {version}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

on_each_store! {
/// Every verdict names the logged policy it was made under and replays equal, before and after
/// a policy change (which the hub logs before it judges with it); an earlier verdict still
/// replays under its own policy. GetPolicy gives only policy entries.
#[tokio::test]
async fn verdicts_replay_equal_under_the_logged_policy_across_a_change() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let (county, config) = agent(&hub, COUNTY, "state-county").await?;
    let patient = county.pseudonymise("passport", PASSPORT)?;
    publish_hgb(&hub, "LAB-RV-1", patient, 24).await?;

    let before = county.history(&treatment(), &patient, UnixMillis(0), true).await?;
    ensure!(before.results.len() == 1, "{:?}", before.failed);
    let first = &before.results[0];
    let v = first.verdict.as_ref().context("no verdict")?;
    ensure!(v.recognised(), "{:?}", v.reasons);
    let basis = v.basis.clone().context("the verdict names no policy")?;
    assert_eq!(basis.policy_version, "2026.11-1");
    let replayed = county.replay_verdict(first, true).await??;
    assert!(replayed.differences.is_empty(), "{:?}", replayed.differences);
    assert_eq!(replayed.verdict.hr_mark.as_deref(), Some("全国HR"));

    // A FindPrior's verdict (judged at the query's moment) replays the same way.
    let found = county
        .find_prior(
            &treatment(),
            &patient,
            &[(LOINC.to_owned(), HGB.to_owned())],
            UnixMillis(now_ms()),
            None,
        )
        .await?;
    ensure!(found.results.len() == 1, "{:?}", found.failed);
    let replayed = county.replay_verdict(&found.results[0], true).await??;
    assert!(replayed.differences.is_empty(), "{:?}", replayed.differences);

    // The policy leaf is everyone's to read; anything else is not a policy.
    let mut c = hub.client(COUNTY).await?;
    let policy = c
        .get_policy(pb::GetPolicyRequest { index: basis.policy_index })
        .await?
        .into_inner();
    let Entry::Policy { version, text, .. } = Entry::decode(&policy.leaf)? else {
        anyhow::bail!("GetPolicy gave another kind of entry");
    };
    assert_eq!(version, "2026.11-1");
    assert_eq!(text, std::fs::read(&hub.policy_path)?, "the leaf holds the file's exact text");
    let summary_index = first.log_proof.as_ref().context("no proof")?.index;
    for index in [summary_index, 1_000_000] {
        let err = c
            .get_policy(pb::GetPolicyRequest { index })
            .await
            .expect_err("a non-policy entry was served as a policy");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }

    // A new policy (the publisher revoked from long ago): logged, then judged with.
    change_policy(
        &hub,
        "2026.12-revoked",
        "[[revoked]]\nmember = \"shx-prov-people\"\nat = 2020-01-01T00:00:00Z\nreason = \"key compromise\"",
        patient,
    )
    .await?;
    let after = county.history(&treatment(), &patient, UnixMillis(0), true).await?;
    let now = &after.results[0];
    let v2 = now.verdict.as_ref().context("no verdict")?;
    assert!(v2.has(Reason::PublisherRevoked), "{:?}", v2.reasons);
    let basis2 = v2.basis.clone().context("no basis")?;
    assert_eq!(basis2.policy_version, "2026.12-revoked");
    assert!(basis2.policy_index > basis.policy_index, "the new policy is a later leaf");
    let replayed = county.replay_verdict(now, true).await??;
    assert!(replayed.differences.is_empty(), "{:?}", replayed.differences);
    // The verdict from before the change still replays under the policy it names.
    let replayed = county.replay_verdict(first, true).await??;
    assert!(replayed.differences.is_empty(), "{:?}", replayed.differences);

    // The command line says the same, and exits zero.
    let (ok, out, err) = run_agent_cli(
        &config,
        &args(&["verify-verdict", "--id-type", "passport", "--patient-id", PASSPORT]),
    )
    .await?;
    ensure!(ok, "verify-verdict failed: {out}\n{err}");
    assert!(out.contains("replayed, the same"), "{out}");
    assert!(out.contains("2026.12-revoked"), "{out}");
    Ok(())
}
}

on_each_store! {
/// A restart with the same policy file logs nothing new (the latest policy leaf holds it); a
/// file changed while the hub was stopped is logged at start, before the first verdict.
#[tokio::test]
async fn a_policy_changed_while_the_hub_was_stopped_is_logged_at_start() -> anyhow::Result<()> {
    let mut hub = TestHub::start().await?;
    let patient = hub.pseudonym_of("passport", PASSPORT)?;
    publish_hgb(&hub, "LAB-RS-1", patient, 24).await?;
    let basis = |a: &pb::HistoryResponse| {
        a.results
            .first()
            .and_then(|r| r.verdict.as_ref())
            .map(|v| (v.policy_index, v.policy_version.clone()))
    };
    let history = || {
        let mut h = crate::harness::history_request(&patient, 0);
        h.purpose = pb::Purpose::Treatment as i32;
        h
    };
    let first = basis(&hub.client(COUNTY).await?.history(history()).await?.into_inner());
    hub.restart().await?;
    let size = log_size(&hub).await?;
    let again = basis(&hub.client(COUNTY).await?.history(history()).await?.into_inner());
    assert_eq!(again, first, "a restart with the same file logged a new policy");
    assert_eq!(log_size(&hub).await?, size + 1, "only the History's access was logged");

    hub.stop().await?;
    let text = std::fs::read_to_string(&hub.policy_path)?;
    std::fs::write(
        &hub.policy_path,
        text.replacen("version = \"2026.11-1\"", "version = \"2026.12-offline\"", 1),
    )?;
    hub.restart().await?;
    let (county, _) = agent(&hub, COUNTY, "state-restart").await?;
    let answer = county.history(&treatment(), &patient, UnixMillis(0), false).await?;
    let v = answer.results[0].verdict.as_ref().context("no verdict")?;
    let b = v.basis.as_ref().context("no basis")?;
    assert_eq!(b.policy_version, "2026.12-offline");
    assert!(Some(Some(b.policy_index)) != first.as_ref().map(|f| f.0));
    let replayed = county.replay_verdict(&answer.results[0], true).await??;
    assert!(replayed.differences.is_empty(), "{:?}", replayed.differences);
    Ok(())
}
}

on_each_store! {
/// With `[log]`, an agent checks its decision's log entry: it says what was sent (and names
/// the item and the price the statistics count), and it is in the log. A hub that hands back
/// a leaf with another price is caught.
#[tokio::test]
async fn an_agent_checks_the_log_entry_of_its_decision() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let patient = hub.pseudonym_of("passport", PASSPORT)?;
    publish_hgb(&hub, "LAB-DC-1", patient, 24).await?;
    let (county, _) = agent(&hub, COUNTY, "state-decide").await?;
    let answer = county
        .history(&treatment(), &patient, UnixMillis(0), false)
        .await?;
    let receipt = answer.results[0].receipt.clone();
    let recorded = county
        .record_decision("order-1", &receipt, &huren_core::rules::Decision::Adopted)
        .await?;
    let Entry::Decision {
        facts: Some(f), ..
    } = Entry::decode(&recorded.leaf)?
    else {
        anyhow::bail!("not a format 0x04 decision leaf");
    };
    assert_eq!((f.item_code.as_str(), f.price_fen), (HGB, 500));
    let audit = county.audit().await?;
    assert!(audit.problems.is_empty(), "{:?}", audit.problems);

    let lying = lying_hub(&hub, COUNTY, Lie::DecisionPrice, "decide-lie").await?;
    let liar = Agent::connect(AgentConfig::load(&lying)?).await?;
    liar.history(&treatment(), &patient, UnixMillis(0), false)
        .await?;
    let err = liar
        .record_decision("order-2", &receipt, &huren_core::rules::Decision::Adopted)
        .await
        .expect_err("a changed decision entry passed");
    assert!(
        matches!(err, huren_agent::error::AgentError::Log(_)),
        "{err}"
    );
    assert!(err.to_string().contains("not proven"), "{err}");
    Ok(())
}
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// How the lying hub edits answers.
#[derive(Clone, Copy)]
enum Lie {
    /// Says a recognised result is not (direction), leaving the signed summary alone.
    NotRecognised,
    /// Names another log entry (the result's own summary leaf) as the policy.
    WrongPolicyEntry,
    /// Adds one adoption to the statistics' total and first row.
    MoreAdoptions,
    /// Gives a decision entry's leaf hash in place of its bytes, with one byte changed.
    HideADecision,
    /// Answers a recorded decision with its leaf's price changed.
    DecisionPrice,
}

/// Our real hub behind a proxy that forwards every call as one member and edits answers.
struct LyingHub {
    up: HubClient<Channel>,
    lie: Lie,
}

fn edit_history(lie: Lie, a: &mut pb::HistoryResponse) {
    for r in &mut a.results {
        let index = r.log_proof.as_ref().map_or(0, |p| p.index);
        let Some(v) = r.verdict.as_mut() else {
            continue;
        };
        match lie {
            Lie::NotRecognised => {
                v.recognition = pb::Recognition::NotRecognised as i32;
                v.hr_mark.clear();
                v.reasons.push(pb::ReasonDetail {
                    reason: pb::NotRecognisedReason::Direction as i32,
                    explanation: "a tertiary result is not recognised here".into(),
                });
            }
            Lie::WrongPolicyEntry => v.policy_index = Some(index),
            _ => {}
        }
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::hub_server::Hub for LyingHub {
    async fn publish(&self, r: Request<pb::PublishRequest>) -> Answer<pb::PublishResponse> {
        self.up.clone().publish(r.into_inner()).await
    }
    async fn publish_batch(
        &self,
        r: Request<pb::PublishBatchRequest>,
    ) -> Answer<pb::PublishBatchResponse> {
        self.up.clone().publish_batch(r.into_inner()).await
    }
    async fn find_prior(&self, r: Request<pb::FindPriorRequest>) -> Answer<pb::FindPriorResponse> {
        self.up.clone().find_prior(r.into_inner()).await
    }
    async fn history(&self, r: Request<pb::HistoryRequest>) -> Answer<pb::HistoryResponse> {
        let mut a = self.up.clone().history(r.into_inner()).await?.into_inner();
        edit_history(self.lie, &mut a);
        Ok(Response::new(a))
    }
    async fn check_order(
        &self,
        r: Request<pb::CheckOrderRequest>,
    ) -> Answer<pb::CheckOrderResponse> {
        self.up.clone().check_order(r.into_inner()).await
    }
    async fn record_decision(
        &self,
        r: Request<pb::RecordDecisionRequest>,
    ) -> Answer<pb::RecordDecisionResponse> {
        let mut a = self
            .up
            .clone()
            .record_decision(r.into_inner())
            .await?
            .into_inner();
        if let Lie::DecisionPrice = self.lie
            && let Ok(Entry::Decision {
                facts: Some(mut f),
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
            }) = Entry::decode(&a.leaf)
        {
            f.price_fen += 100;
            a.leaf = Entry::Decision {
                facts: Some(f),
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
            }
            .encode();
        }
        Ok(Response::new(a))
    }
    async fn get_statistics(
        &self,
        r: Request<pb::StatisticsRequest>,
    ) -> Answer<pb::StatisticsResponse> {
        let mut a = self
            .up
            .clone()
            .get_statistics(r.into_inner())
            .await?
            .into_inner();
        if let Lie::MoreAdoptions = self.lie {
            if let Some(t) = a.total.as_mut() {
                t.adopted += 1;
            }
            if let Some(row) = a.rows.first_mut() {
                row.adopted += 1;
            }
        }
        Ok(Response::new(a))
    }
    async fn get_checkpoint(
        &self,
        r: Request<pb::GetCheckpointRequest>,
    ) -> Answer<pb::GetCheckpointResponse> {
        self.up.clone().get_checkpoint(r.into_inner()).await
    }
    async fn get_consistency_proof(
        &self,
        r: Request<pb::ConsistencyProofRequest>,
    ) -> Answer<pb::ConsistencyProofResponse> {
        self.up.clone().get_consistency_proof(r.into_inner()).await
    }
    async fn get_inclusion_proof(
        &self,
        r: Request<pb::InclusionProofRequest>,
    ) -> Answer<pb::InclusionProofResponse> {
        self.up.clone().get_inclusion_proof(r.into_inner()).await
    }
    async fn get_policy(&self, r: Request<pb::GetPolicyRequest>) -> Answer<pb::GetPolicyResponse> {
        self.up.clone().get_policy(r.into_inner()).await
    }
    async fn get_log_entries(
        &self,
        r: Request<pb::LogEntriesRequest>,
    ) -> Answer<pb::LogEntriesResponse> {
        let mut a = self
            .up
            .clone()
            .get_log_entries(r.into_inner())
            .await?
            .into_inner();
        if let Lie::HideADecision = self.lie {
            for e in &mut a.entries {
                if matches!(Entry::decode(&e.leaf), Ok(Entry::Decision { .. })) {
                    let mut leaf = std::mem::take(&mut e.leaf);
                    if let Some(last) = leaf.last_mut() {
                        *last ^= 1;
                    }
                    e.leaf_hash = huren_core::merkle::leaf_hash(&leaf).to_vec();
                    break;
                }
            }
        }
        Ok(Response::new(a))
    }
    async fn access_report(
        &self,
        r: Request<pb::AccessReportRequest>,
    ) -> Answer<pb::AccessReportResponse> {
        self.up.clone().access_report(r.into_inner()).await
    }
    async fn set_consent(
        &self,
        r: Request<pb::SetConsentRequest>,
    ) -> Answer<pb::SetConsentResponse> {
        self.up.clone().set_consent(r.into_inner()).await
    }
}

/// Starts a lying hub in front of `hub` for member `id` (the proxy presents the hub's own TLS
/// certificate and forwards as `id`), and writes an agent configuration of `id` that dials it.
async fn lying_hub(hub: &TestHub, id: &str, lie: Lie, state: &str) -> anyhow::Result<PathBuf> {
    let up = hub.client(id).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let read = |p: &Path| std::fs::read(p).with_context(|| p.display().to_string());
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&hub.paths.hub_cert)?,
            read(&hub.paths.hub_key)?,
        ))
        .client_ca_root(Certificate::from_pem(read(&hub.paths.ca_cert)?));
    let server = Server::builder()
        .tls_config(tls)?
        .add_service(pb::hub_server::HubServer::new(LyingHub { up, lie }));
    tokio::spawn(
        server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let config = agent_config_with(hub, id, &hub.root().join(state), "")?;
    let text = std::fs::read_to_string(&config)?;
    let lying = config.with_file_name(format!("lying-{state}.toml"));
    let url = hub.url();
    ensure!(
        text.contains(&url),
        "the configuration does not name the hub"
    );
    std::fs::write(&lying, text.replace(&url, &format!("https://{addr}")))?;
    Ok(lying)
}

on_each_store! {
/// A hub that lies about a verdict is caught by replaying it: a recognised result said not to
/// be, and a verdict naming a log entry that is no policy. Each is refused by name, with a
/// non-zero exit.
#[tokio::test]
async fn a_hub_that_lies_about_a_verdict_is_caught() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let patient = hub.pseudonym_of("passport", PASSPORT)?;
    publish_hgb(&hub, "LAB-LIE-1", patient, 24).await?;
    let verify = ["verify-verdict", "--id-type", "passport", "--patient-id", PASSPORT];

    // Through the proxy without a lie, the verdict replays the same: the proxy itself is
    // honest, so what follows is the lie's doing.
    let config = lying_hub(&hub, COUNTY, Lie::MoreAdoptions, "honest").await?;
    let (ok, out, err) = run_agent_cli(&config, &args(&verify)).await?;
    ensure!(ok, "{out}\n{err}");

    let config = lying_hub(&hub, COUNTY, Lie::NotRecognised, "lie-1").await?;
    let (ok, out, err) = run_agent_cli(&config, &args(&verify)).await?;
    ensure!(!ok, "a wrong verdict passed: {out}");
    assert!(out.contains("THE HUB JUDGED WRONGLY"), "{out}\n{err}");
    assert!(
        out.contains("recognition: the hub said NOT_RECOGNISED, the policy gives RECOGNISED"),
        "{out}"
    );
    assert!(out.contains("reason direction was given by the hub but does not apply"), "{out}");
    assert!(out.contains("HR mark"), "{out}");

    let config = lying_hub(&hub, COUNTY, Lie::WrongPolicyEntry, "lie-2").await?;
    let (ok, out, _) = run_agent_cli(&config, &args(&verify)).await?;
    ensure!(!ok, "a verdict naming no policy passed: {out}");
    assert!(out.contains("CANNOT BE REPLAYED"), "{out}");
    assert!(out.contains("is not a policy"), "{out}");
    Ok(())
}
}

on_each_store! {
/// An administrator recomputes every statistics figure from the log's decision and access
/// leaves and finds the hub's: per item, member and day, through the library and the command
/// line. A hub whose figures differ from its log is reported figure by figure; one that
/// changes a decision entry it hands out is caught by the tree's root. A member may not read
/// the log in bulk.
#[tokio::test]
async fn an_auditor_recomputes_the_statistics_from_the_log() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let patient = hub.pseudonym_of("passport", PASSPORT)?;
    publish_hgb(&hub, "LAB-ST-1", patient, 24).await?;
    publish_hgb(&hub, "LAB-ST-2", patient, 2000).await?; // outside its window
    // A glucose outside its window: shown, not recognised, so not found.
    let glucose = lab_summary(TERTIARY, "LAB-ST-3", patient, GLUCOSE, now_ms() - 2000 * 3_600_000)?;
    publish(&mut hub.client(TERTIARY).await?, sign(&hub.member(TERTIARY)?, &glucose)?).await?;
    let mut county = hub.client(COUNTY).await?;
    let mut find = prior_request(&patient, &[(LOINC, HGB), (LOINC, "2160-0"), (LOINC, GLUCOSE)]);
    find.purpose = pb::Purpose::Treatment as i32;
    let order = pb::CheckOrderRequest {
        patient_pseudonym: patient.as_bytes().to_vec(),
        items: vec![pb::OrderItem {
            code: Some(pb::order_item::Code::LocalCode("XCG-HB".into())),
        }],
        purpose: pb::Purpose::Referral as i32,
        ..Default::default()
    };
    county.check_order(order).await?;
    // The look-up decided on comes last: it showed both results.
    county.find_prior(find.clone()).await?;
    let decide = |id: &str, summary: &str, kind: pb::DecisionKind, reason: pb::RetestReason| {
        pb::RecordDecisionRequest {
            decision_id: id.into(),
            publisher: TERTIARY.into(),
            summary_id: summary.into(),
            version: 1,
            decision: kind as i32,
            reason: reason as i32,
            note: String::new(),
        }
    };
    use pb::{DecisionKind as K, RetestReason as R};
    county.record_decision(decide("d-1", "LAB-ST-1", K::Adopted, R::Unspecified)).await?;
    // A second decision on the same consultation replaces the first in the figures.
    county
        .record_decision(decide("d-2", "LAB-ST-1", K::Retested, R::PatientRequest))
        .await?;
    county.record_decision(decide("d-3", "LAB-ST-2", K::Retested, R::Unspecified)).await?;
    // Another member's look-up and adoption.
    let mut other = hub.client("hosp-c").await?;
    other.find_prior(find).await?;
    other.record_decision(decide("d-4", "LAB-ST-1", K::Adopted, R::Unspecified)).await?;

    let (admin, config) = agent(&hub, ADMIN, "state-admin").await?;
    let (from, to) = (UnixMillis(now_ms() - 3_600_000), UnixMillis(now_ms() + 3_600_000));
    for by in [GroupBy::Item, GroupBy::Member, GroupBy::Day] {
        let audit = admin.audit_statistics(from, to, by).await?;
        assert!(audit.differences.is_empty(), "{by:?}: {:?}", audit.differences);
        assert_eq!(audit.older_format, 0);
        assert!(audit.unreadable.is_empty(), "{:?}", audit.unreadable);
        let total = &audit.recomputed.1;
        // Queries: 1 order + 3 items + 3 items, haemoglobin found each time; adopted: hosp-c's;
        // re-tested: 2.
        assert_eq!(
            (total.queries, total.found, total.cross_member, total.adopted, total.retested),
            (7, 3, 3, 1, 2),
            "{by:?}: {total:?}"
        );
        assert_eq!(total.money_saved_fen, 500);
        assert_eq!(total.retested_by_reason.get("patient-request"), Some(&1));
    }
    let period = ["--from", "2020-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z"];
    let mut audit_args = vec!["audit-stats", "--by", "member"];
    audit_args.extend(period);
    let (ok, out, err) = run_agent_cli(&config, &args(&audit_args)).await?;
    ensure!(ok, "audit-stats failed: {out}\n{err}");
    assert!(out.contains("OK: every figure"), "{out}");

    // A hub whose statistics say one adoption more than its log.
    let lying = lying_hub(&hub, ADMIN, Lie::MoreAdoptions, "admin-lie-1").await?;
    let (ok, out, err) = run_agent_cli(&lying, &args(&audit_args)).await?;
    ensure!(!ok, "inflated figures passed: {out}");
    assert!(err.contains("total: adopted: the hub says 2, the log gives 1"), "{err}");
    assert!(err.contains("adopted: the hub says"), "{err}");
    // A hub that hands out a changed decision entry (as a hash) is caught by the root.
    let lying = lying_hub(&hub, ADMIN, Lie::HideADecision, "admin-lie-2").await?;
    let (ok, out, err) = run_agent_cli(&lying, &args(&audit_args)).await?;
    ensure!(!ok, "a changed entry passed: {out}");
    assert!(err.contains("do not make up the tree of its checkpoint"), "{err}");

    // Members may not read the log in bulk.
    for member in [COUNTY, TERTIARY] {
        let err = hub
            .client(member)
            .await?
            .get_log_entries(pb::LogEntriesRequest { start: 0, end: 1, tree_size: 0 })
            .await
            .expect_err("a member read the log in bulk");
        assert_eq!(err.code(), Code::PermissionDenied, "{member}: {err:?}");
    }
    // Bad ranges are refused and say why.
    let mut admin_client = hub.client(ADMIN).await?;
    for (start, end, tree_size) in [(5, 1, 0), (0, 1001, 0), (0, 1, 1_000_000), (1_000_000, 1_000_001, 0)] {
        let err = admin_client
            .get_log_entries(pb::LogEntriesRequest { start, end, tree_size })
            .await
            .expect_err("a bad range was answered");
        assert_eq!(err.code(), Code::InvalidArgument, "[{start}, {end}) of {tree_size}: {err:?}");
    }
    Ok(())
}
}

/// The log's size, from its latest checkpoint (asked by a member: reading it logs nothing).
async fn log_size(hub: &TestHub) -> anyhow::Result<u64> {
    let note = hub
        .client(COUNTY)
        .await?
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner()
        .checkpoint;
    Ok(note.lines().nth(1).context("checkpoint size")?.parse()?)
}

on_each_store! {
/// The access report is the patient's right, given to an administrator on the patient's
/// request and logged before it is answered; no member gets it, whether it published the
/// patient's results, looked at them or neither, nor a revoked administrator, nor a
/// certificate of the CA that the policy does not name; a refusal changes nothing in the log.
#[tokio::test]
async fn access_reports_go_only_to_an_administrator_and_each_is_logged() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let patient = hub.pseudonym_of("passport", PASSPORT)?;
    publish_hgb(&hub, "LAB-AR-1", patient, 24).await?;
    let mut find = prior_request(&patient, &[(LOINC, HGB)]);
    find.purpose = pb::Purpose::Treatment as i32;
    hub.client(COUNTY).await?.find_prior(find).await?;
    // A second administrator, revoked since.
    let text = std::fs::read_to_string(&hub.policy_path)?;
    let admins = "administrators = [\"xian-health-commission\"]";
    ensure!(text.contains(admins), "the test policy's administrators moved");
    std::fs::write(
        &hub.policy_path,
        text.replacen(admins, "administrators = [\"xian-health-commission\", \"old-admin\"]", 1),
    )?;
    change_policy(
        &hub,
        "2026.12-admins",
        "[[members]]\nid = \"old-admin\"\nname = \"old-admin\"\nlevel = \"tertiary\"\nregion = \"610000\"\n\
         [[revoked]]\nmember = \"old-admin\"\nat = 2020-01-01T00:00:00Z\nreason = \"left the alliance\"",
        patient,
    )
    .await?;
    let ask = pb::AccessReportRequest {
        patient_pseudonym: patient.as_bytes().to_vec(),
        from_ms: 0,
        to_ms: 0,
        requester: "staff:PR-01".into(),
    };
    let mut probe = hub.client(ADMIN).await?;
    let before = log_size(&hub).await?;
    // The publisher, the member that looked, a member that did neither, a revoked member, and
    // a certificate from the CA for an institution the policy does not name.
    for (who, code) in [
        (TERTIARY, Code::PermissionDenied),
        (COUNTY, Code::PermissionDenied),
        ("hosp-b", Code::PermissionDenied),
        ("old-admin", Code::PermissionDenied),
        ("not-in-policy", Code::PermissionDenied),
    ] {
        let err = hub
            .client(who)
            .await?
            .access_report(ask.clone())
            .await
            .expect_err("an access report went to someone other than an administrator");
        assert_eq!(err.code(), code, "{who}: {err:?}");
    }
    assert_eq!(log_size(&hub).await?, before, "a refused request changed the log");

    // The administrator gets it; the request is itself in the log (and in the next report),
    // on the patient's request, with who asked.
    let first = probe.access_report(ask.clone()).await?.into_inner();
    assert!(first.entries.iter().all(|e| e.method != "AccessReport"));
    let second = probe.access_report(ask).await?.into_inner();
    let logged: Vec<&pb::AccessEntry> =
        second.entries.iter().filter(|e| e.method == "AccessReport").collect();
    assert_eq!(logged.len(), 1, "{:?}", second.entries);
    assert_eq!(logged[0].caller, ADMIN);
    assert_eq!(logged[0].purpose, pb::Purpose::PatientRequest as i32);
    assert_eq!(logged[0].requester, "staff:PR-01");
    assert_eq!(log_size(&hub).await?, before + 2, "each report is one access leaf");
    Ok(())
}
}
