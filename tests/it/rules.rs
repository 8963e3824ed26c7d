//! Mutual-recognition rules and the closed loop through a real hub: verdicts with every
//! reason, versions, the order-time check, decisions, statistics and policy reload.

use std::time::{Duration, Instant};

use huren_core::pseudonym::Pseudonym;
use huren_proto::hub::{
    self as pb, CheckOrderRequest, DecisionKind, GroupBy, HistoryRequest, ItemCode,
    NotRecognisedReason as R, OrderItem, RecordDecisionRequest, RetestReason, StatisticsRequest,
    order_item,
};
use tonic::Code;

use anyhow::Context;

use crate::harness::{
    ADMIN, HGB, LOINC, TestHub, amended, history_request, lab_summary, now_ms, prior_request,
    publish, sign,
};

const TERTIARY: &str = "shx-prov-people"; // 全国HR for haematology and biochemistry
const COUNTY: &str = "lantian-county"; // 陕HR haematology
const TOWNSHIP: &str = "lantian-tangyu"; // primary, no qualification
const COMMISSION: &str = ADMIN; // administrator
const CREATININE: &str = "2160-0";

/// Publishes a lab result of `publisher` performed `hours_ago` hours ago.
async fn publish_lab(
    hub: &TestHub,
    publisher: &str,
    id: &str,
    patient: Pseudonym,
    code: &str,
    hours_ago: i64,
) -> anyhow::Result<huren_core::summary::Summary> {
    let s = lab_summary(
        publisher,
        id,
        patient,
        code,
        now_ms() - hours_ago * 3_600_000,
    )?;
    let mut c = hub.client(publisher).await?;
    publish(&mut c, sign(&hub.member(publisher)?, &s)?).await?;
    Ok(s)
}

fn reasons(s: &pb::StoredSummary) -> Vec<R> {
    s.verdict
        .as_ref()
        .map(|v| {
            v.reasons
                .iter()
                .filter_map(|r| R::try_from(r.reason).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn mark(s: &pb::StoredSummary) -> &str {
    s.verdict.as_ref().map_or("", |v| v.hr_mark.as_str())
}

fn id_of(s: &pb::StoredSummary) -> &str {
    s.receipt.as_ref().map_or("", |r| r.summary_id.as_str())
}

on_each_store! {
#[tokio::test]
async fn every_rule_reaches_the_asker() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let p = hub.patient("E10000001");
    publish_lab(&hub, TERTIARY, "T-HGB-FRESH", p, HGB, 48).await?;
    publish_lab(&hub, TERTIARY, "T-HGB-OLD", p, HGB, 24 * 10).await?;
    publish_lab(&hub, COUNTY, "C-HGB", p, HGB, 24).await?;
    publish_lab(&hub, TOWNSHIP, "TS-HGB", p, HGB, 12).await?;
    publish_lab(&hub, TERTIARY, "T-NOT-IN-CATALOGUE", p, "99999-9", 2).await?;
    let voided = publish_lab(&hub, TERTIARY, "T-HGB-VOIDED", p, HGB, 6).await?;
    let mut v2 = amended(&voided, "specimen haemolysed");
    v2.status = huren_core::summary::Status::Voided;
    publish(
        &mut hub.client(TERTIARY).await?,
        sign(&hub.member(TERTIARY)?, &v2)?,
    )
    .await?;

    let ask = |asker: &'static str| {
        let hub = &hub;
        async move {
            let mut c = hub.client(asker).await?;
            let r = c
                .find_prior(prior_request(&p, &[(LOINC, HGB), (LOINC, "99999-9")]))
                .await?
                .into_inner();
            anyhow::Ok(r.results)
        }
    };
    let county_view = ask(COUNTY).await?;
    let by_id = |results: &[pb::StoredSummary], id: &str| {
        results
            .iter()
            .find(|s| id_of(s) == id)
            .cloned()
            .unwrap_or_default()
    };
    let fresh = by_id(&county_view, "T-HGB-FRESH");
    assert_eq!(reasons(&fresh), []);
    assert_eq!(mark(&fresh), "全国HR");
    assert_eq!(
        fresh.verdict.as_ref().map(|v| v.policy_version.as_str()),
        Some("2026.11-1")
    );
    assert_eq!(
        reasons(&by_id(&county_view, "T-HGB-OLD")),
        [R::OutsideValidityWindow]
    );
    assert_eq!(reasons(&by_id(&county_view, "C-HGB")), []);
    assert_eq!(mark(&by_id(&county_view, "C-HGB")), "陕HR");
    // The township centre holds no qualification, and a county hospital does not recognise a
    // lower level's results under this policy.
    assert_eq!(
        reasons(&by_id(&county_view, "TS-HGB")),
        [R::PublisherNotQualified, R::Direction]
    );
    assert_eq!(
        reasons(&by_id(&county_view, "T-NOT-IN-CATALOGUE")),
        [R::NotInCatalogue]
    );
    let voided = by_id(&county_view, "T-HGB-VOIDED");
    assert_eq!(reasons(&voided), [R::Voided]);
    assert!(
        voided
            .verdict
            .as_ref()
            .is_some_and(|v| v.reasons[0].explanation.contains("haemolysed")),
        "{voided:?}"
    );
    // The tertiary hospital does not recognise the county hospital's result (direction).
    let tertiary_view = ask(TERTIARY).await?;
    assert_eq!(reasons(&by_id(&tertiary_view, "C-HGB")), [R::Direction]);
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn amend_and_void_only_by_the_owner_and_history_shows_the_chain() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let p = hub.patient("E10000002");
    let v1 = publish_lab(&hub, TERTIARY, "T-CREA", p, CREATININE, 20).await?;
    let mut v2 = amended(&v1, "unit corrected");
    if let huren_core::summary::Outcome::Lab(l) = &mut v2.outcome {
        l.value = "88".into();
        l.unit = "umol/L".into();
    }
    // Another member cannot amend it: its certificate does not name the publisher.
    let err = publish(
        &mut hub.client(COUNTY).await?,
        sign(&hub.member(TERTIARY)?, &v2)?,
    )
    .await
    .expect_err("a county hospital amended a tertiary hospital's result");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = publish(
        &mut hub.client(COUNTY).await?,
        sign(&hub.member(COUNTY)?, &{
            let mut s = v2.clone();
            s.publisher = huren_core::identity::InstitutionId::parse(COUNTY)?;
            s
        })?,
    )
    .await
    .expect_err("a version 2 of an unknown result was stored");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // The owner amends, then voids.
    publish(
        &mut hub.client(TERTIARY).await?,
        sign(&hub.member(TERTIARY)?, &v2)?,
    )
    .await?;
    let mut v3 = amended(&v2, "wrong patient");
    v3.status = huren_core::summary::Status::Voided;
    publish(
        &mut hub.client(TERTIARY).await?,
        sign(&hub.member(TERTIARY)?, &v3)?,
    )
    .await?;

    let mut county = hub.client(COUNTY).await?;
    let h = county
        .history(HistoryRequest {
            requester: String::new(),
            compact_proofs: false,
            patient_pseudonym: p.as_bytes().to_vec(),
            since_ms: 0,
            include_earlier_versions: true,
            purpose: huren_proto::hub::Purpose::Referral as i32,
            with_proofs: false,
            certificates_once: false,
        })
        .await?
        .into_inner();
    assert_eq!(h.results.len(), 1);
    let latest = &h.results[0];
    assert_eq!(latest.receipt.as_ref().map(|r| r.version), Some(3));
    assert_eq!(reasons(latest), [R::Voided]);
    let earlier: Vec<(u32, Vec<R>)> = latest
        .earlier_versions
        .iter()
        .map(|e| (e.receipt.as_ref().map_or(0, |r| r.version), reasons(e)))
        .collect();
    assert_eq!(
        earlier,
        [(2, vec![R::Superseded]), (1, vec![R::Superseded])]
    );
    Ok(())
}
}

fn local(code: &str) -> OrderItem {
    OrderItem {
        code: Some(order_item::Code::LocalCode(code.into())),
    }
}

/// An order check of `items` for patient `p`, for treatment, each signing certificate once.
fn order_for(p: &Pseudonym, items: Vec<OrderItem>) -> CheckOrderRequest {
    CheckOrderRequest {
        requester: String::new(),
        compact_proofs: false,
        patient_pseudonym: p.as_bytes().to_vec(),
        items,
        as_of_ms: 0,
        purpose: pb::Purpose::Treatment as i32,
        with_proofs: false,
        certificates_once: true,
    }
}

/// Each answer of an order check: the catalogue code it mapped to, the id of the result it
/// recognised, and how many results it judged.
fn answered(order: &pb::CheckOrderResponse) -> Vec<(Option<&str>, Option<&str>, u32)> {
    order
        .items
        .iter()
        .map(|c| {
            (
                c.item.as_ref().map(|i| i.code.as_str()),
                c.best.as_ref().map(id_of),
                c.candidates,
            )
        })
        .collect()
}

async fn decide(
    hub: &TestHub,
    who: &str,
    decision_id: &str,
    result: (&str, &str),
    decision: DecisionKind,
    reason: RetestReason,
) -> Result<pb::RecordDecisionResponse, tonic::Status> {
    let mut c = hub
        .client(who)
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    c.record_decision(RecordDecisionRequest {
        decision_id: decision_id.into(),
        publisher: result.0.into(),
        summary_id: result.1.into(),
        version: 1,
        decision: decision as i32,
        reason: reason as i32,
        note: String::new(),
    })
    .await
    .map(tonic::Response::into_inner)
}

on_each_store! {
/// The closed loop on a known data set: an order check, decisions, and the statistics that
/// follow from them, worked out by hand.
#[tokio::test]
async fn order_check_decisions_and_statistics() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let p = hub.patient("E10000003");
    publish_lab(&hub, TERTIARY, "T-HGB", p, HGB, 30).await?;
    publish_lab(&hub, TERTIARY, "T-GLU", p, "2345-7", 20).await?;
    publish_lab(&hub, TERTIARY, "T-GLU-OLD", p, "2345-7", 24 * 5).await?;

    // The county hospital orders haemoglobin, glucose and creatinine by its local codes, plus
    // an unmapped code.
    let mut county = hub.client(COUNTY).await?;
    let mut request = order_for(
        &p,
        vec![
            local("XCG-HB"),
            local("SH-GLU"),
            local("SH-CR"),
            local("NO-SUCH"),
        ],
    );
    // As agents ask: proofs, compact.
    (request.with_proofs, request.compact_proofs) = (true, true);
    let order = county.check_order(request).await?.into_inner();
    // Each signing certificate once: one member signed both results shown; the checkpoint
    // once, each proof leading to it.
    assert_eq!(order.signer_certificates.len(), 1);
    assert!(!order.checkpoint.is_empty());
    let ca = huren_core::trust::AllianceCa::from_pem(hub.ca_pem())?;
    let log_key = crate::log::verifier(&hub)?;
    for best in order.items.iter().filter_map(|i| i.best.clone()) {
        let accepted = best.receipt.as_ref().map_or(0, |r| r.accepted_at_ms);
        let mut signed = anyhow::Context::context(best.summary, "a result without its summary")?;
        assert!(signed.signer_certificate.is_empty());
        signed.signer_certificate =
            order.signer_certificates[best.signer_certificate_index as usize].clone();
        let proof = anyhow::Context::context(best.log_proof, "a result without its proof")?;
        assert!(proof.checkpoint.is_empty() && proof.proof.is_empty());
        let mut proof = huren_core::logentry::LogProof::try_from(proof)?;
        proof.checkpoint = order.checkpoint.clone();
        huren_core::logentry::verify_leaf(
            &log_key,
            &crate::log::leaf_of(&signed, accepted)?,
            &proof,
        )?;
        huren_core::signing::SignedEnvelope::try_from(signed)?
            .verify(&ca, huren_core::summary::UnixMillis(accepted))?;
    }
    let summary = answered(&order);
    assert_eq!(
        summary,
        [
            (Some(HGB), Some("T-HGB"), 1),
            (Some("2345-7"), Some("T-GLU"), 2),
            (Some(CREATININE), None, 0),
            (None, None, 0),
        ]
    );
    assert!(
        order.items[2].explanation.contains("no result on file"),
        "{}",
        order.items[2].explanation
    );
    assert!(
        order.items[3].explanation.contains("not mapped"),
        "{}",
        order.items[3].explanation
    );

    // Decisions: adopt the haemoglobin; re-testing the recognised glucose needs a reason.
    let adopt = decide(
        &hub,
        COUNTY,
        "ORD-1-HB",
        (TERTIARY, "T-HGB"),
        DecisionKind::Adopted,
        RetestReason::Unspecified,
    )
    .await?;
    assert!(!adopt.already_recorded && adopt.result_was_recognised);
    let err = decide(
        &hub,
        COUNTY,
        "ORD-1-GLU",
        (TERTIARY, "T-GLU"),
        DecisionKind::Retested,
        RetestReason::Unspecified,
    )
    .await
    .expect_err("re-test of a recognised result without a reason was accepted");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("needs a coded reason"),
        "{}",
        err.message()
    );
    decide(
        &hub,
        COUNTY,
        "ORD-1-GLU",
        (TERTIARY, "T-GLU"),
        DecisionKind::Retested,
        RetestReason::FastChangingValue,
    )
    .await?;
    // A retry is not counted twice; reusing the id for something else is refused.
    let again = decide(
        &hub,
        COUNTY,
        "ORD-1-HB",
        (TERTIARY, "T-HGB"),
        DecisionKind::Adopted,
        RetestReason::Unspecified,
    )
    .await?;
    assert!(again.already_recorded);
    let err = decide(
        &hub,
        COUNTY,
        "ORD-1-HB",
        (TERTIARY, "T-GLU"),
        DecisionKind::Adopted,
        RetestReason::Unspecified,
    )
    .await
    .expect_err("a decision id was reused for another result");
    assert_eq!(err.code(), Code::AlreadyExists);
    // Only results the member consulted; only results that exist; only members.
    let err = decide(
        &hub,
        COUNTY,
        "ORD-2",
        (TERTIARY, "T-GLU-OLD"),
        DecisionKind::Adopted,
        RetestReason::Unspecified,
    )
    .await
    .expect_err("a decision on a result never shown was accepted");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = decide(
        &hub,
        COUNTY,
        "ORD-3",
        (TERTIARY, "NO-SUCH"),
        DecisionKind::Adopted,
        RetestReason::Unspecified,
    )
    .await
    .expect_err("a decision on a missing result was accepted");
    assert_eq!(err.code(), Code::NotFound);
    let err = decide(
        &hub,
        "not-a-member",
        "ORD-4",
        (TERTIARY, "T-HGB"),
        DecisionKind::Adopted,
        RetestReason::Unspecified,
    )
    .await
    .expect_err("a non-member recorded a decision");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("not a member"), "{}", err.message());

    // The township centre looks too, and re-tests at the patient's request.
    let mut township = hub.client(TOWNSHIP).await?;
    township
        .find_prior(prior_request(&p, &[(LOINC, HGB)]))
        .await?;
    decide(
        &hub,
        TOWNSHIP,
        "TS-1",
        (TERTIARY, "T-HGB"),
        DecisionKind::Retested,
        RetestReason::PatientRequest,
    )
    .await?;

    // By hand: county asked 3 catalogue items (the unmapped code is no catalogue item), found
    // 2 recognised (HB, GLU, both cross-member); adopted HB (5.00 yuan), re-tested GLU
    // (fast-changing-value). Township asked 1, found 1, re-tested 1 (patient-request).
    let stats = |who: &'static str, by: GroupBy| {
        let hub = &hub;
        async move {
            let mut c = hub.client(who).await?;
            anyhow::Ok(
                c.get_statistics(StatisticsRequest {
                    from_ms: 0,
                    to_ms: 0,
                    group_by: by as i32,
                })
                .await?
                .into_inner(),
            )
        }
    };
    let all = stats(COMMISSION, GroupBy::Member).await?;
    let total = all.total.clone().unwrap_or_default();
    assert_eq!(
        (
            total.queries,
            total.recognisable_found,
            total.cross_member,
            total.adopted,
            total.retested
        ),
        (4, 3, 3, 1, 2)
    );
    assert_eq!((total.tests_avoided, total.money_saved_fen), (1, 500));
    assert_eq!(
        total.retested_by_reason.get("fast-changing-value"),
        Some(&1)
    );
    assert_eq!(total.retested_by_reason.get("patient-request"), Some(&1));
    let members: Vec<(&str, &str, u64, u64)> = all
        .rows
        .iter()
        .map(|r| (r.key.as_str(), r.label.as_str(), r.queries, r.adopted))
        .collect();
    assert_eq!(
        members,
        [
            (COUNTY, "蓝田县人民医院", 3, 1),
            (TOWNSHIP, "蓝田县汤峪镇卫生院", 1, 0)
        ]
    );
    let by_item = stats(COMMISSION, GroupBy::Item).await?;
    let items: Vec<(&str, u64, u64, u64)> = by_item
        .rows
        .iter()
        .map(|r| (r.key.as_str(), r.queries, r.recognisable_found, r.retested))
        .collect();
    assert_eq!(
        items,
        [(CREATININE, 1, 0, 0), ("2345-7", 1, 1, 1), (HGB, 2, 2, 1)]
    );
    // A member sees only its own figures.
    let own = stats(TOWNSHIP, GroupBy::Member).await?;
    assert_eq!(own.rows.len(), 1);
    assert_eq!(own.rows[0].key, TOWNSHIP);
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn a_changed_policy_file_changes_verdicts_without_a_restart() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let p = hub.patient("E10000004");
    publish_lab(&hub, TERTIARY, "T-HGB", p, HGB, 48).await?;
    let verdict = || {
        let hub = &hub;
        async move {
            let mut c = hub.client(COUNTY).await?;
            let r = c
                .find_prior(prior_request(&p, &[(LOINC, HGB)]))
                .await?
                .into_inner();
            anyhow::Ok(r.results.first().map(|s| {
                (
                    reasons(s),
                    s.verdict.clone().unwrap_or_default().policy_version,
                )
            }))
        }
    };
    assert_eq!(verdict().await?, Some((vec![], "2026.11-1".to_owned())));
    // The administrator shortens the haemoglobin window to 1 day.
    let text = std::fs::read_to_string(&hub.policy_path)?;
    let changed = text.replacen("version = \"2026.11-1\"", "version = \"2026.11-2\"", 1).replacen(
        "code = \"718-7\"\nname = \"血红蛋白 Hemoglobin\"\ncategory = \"lab\"\ngroup = \"haematology\"\nvalidity_days = 7",
        "code = \"718-7\"\nname = \"血红蛋白 Hemoglobin\"\ncategory = \"lab\"\ngroup = \"haematology\"\nvalidity_days = 1",
        1,
    );
    assert!(changed.contains("validity_days = 1\n"));
    std::fs::write(&hub.policy_path, changed)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = verdict().await?;
        if v == Some((vec![R::OutsideValidityWindow], "2026.11-2".to_owned())) {
            break;
        }
        assert!(Instant::now() < deadline, "policy not reloaded: {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each answer's access leaf names the policy version that judged it: the first under
    // 2026.11-1, the last under 2026.11-2 (issue 16, finding 8), and the report says the same.
    let entries = hub.access_entries(ADMIN, &p).await?;
    let finds: Vec<_> = entries.iter().filter(|e| e.method == "FindPrior").collect();
    anyhow::ensure!(finds.len() >= 2, "{entries:?}");
    for e in &finds {
        let huren_core::logentry::Entry::Access { policy_version, .. } =
            huren_core::logentry::Entry::decode(&e.leaf)?
        else {
            anyhow::bail!("not an access leaf");
        };
        assert_eq!(policy_version.as_deref(), Some(e.policy_version.as_str()));
    }
    assert_eq!(finds[0].policy_version, "2026.11-1");
    assert_eq!(finds[finds.len() - 1].policy_version, "2026.11-2");
    let _ = ItemCode::default();
    Ok(())
}
}

on_each_store! {
/// Statistics cannot be inflated: of a member's decisions on one consultation of a result only
/// the latest counts (a hundred adoptions with fresh ids count once; a later re-test replaces
/// them; the log keeps them all), a new look-up is a new consultation, and adopting a result
/// that was NOT_RECOGNISED for the member is refused.
#[tokio::test]
async fn one_decision_per_consultation_counts() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let p = hub.patient("E10000042");
    publish_lab(&hub, TERTIARY, "S-HGB", p, HGB, 30).await?;
    publish_lab(&hub, TERTIARY, "S-GLU-OLD", p, "2345-7", 24 * 5).await?;
    let mut county = hub.client(COUNTY).await?;
    let shown = county
        .find_prior(prior_request(&p, &[(LOINC, HGB), (LOINC, "2345-7")]))
        .await?
        .into_inner();
    assert_eq!(shown.results.len(), 2);
    let counted = || {
        let hub = &hub;
        async move {
            let mut c = hub.client(COUNTY).await?;
            let t = c
                .get_statistics(StatisticsRequest {
                    from_ms: 0,
                    to_ms: 0,
                    group_by: GroupBy::Item as i32,
                })
                .await?
                .into_inner()
                .total
                .unwrap_or_default();
            anyhow::Ok((t.adopted, t.retested, t.tests_avoided))
        }
    };
    for n in 0..101 {
        decide(
            &hub,
            COUNTY,
            &format!("INFLATE-{n}"),
            (TERTIARY, "S-HGB"),
            DecisionKind::Adopted,
            RetestReason::Unspecified,
        )
        .await?;
    }
    assert_eq!(counted().await?, (1, 0, 1));
    decide(
        &hub,
        COUNTY,
        "CHANGED-MIND",
        (TERTIARY, "S-HGB"),
        DecisionKind::Retested,
        RetestReason::ConditionChanged,
    )
    .await?;
    assert_eq!(counted().await?, (0, 1, 0));
    let err = decide(
        &hub,
        COUNTY,
        "ADOPT-OLD",
        (TERTIARY, "S-GLU-OLD"),
        DecisionKind::Adopted,
        RetestReason::Unspecified,
    )
    .await
    .expect_err("adopting a NOT_RECOGNISED result was counted");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("NOT_RECOGNISED"),
        "{}",
        err.message()
    );
    assert_eq!(counted().await?, (0, 1, 0));
    // A later look-up is a new consultation: its decision counts beside the first one's.
    tokio::time::sleep(Duration::from_millis(5)).await;
    county
        .find_prior(prior_request(&p, &[(LOINC, HGB)]))
        .await?;
    decide(
        &hub,
        COUNTY,
        "SECOND-VISIT",
        (TERTIARY, "S-HGB"),
        DecisionKind::Adopted,
        RetestReason::Unspecified,
    )
    .await?;
    assert_eq!(counted().await?, (1, 1, 1));
    Ok(())
}
}

/// The county's order check for haemoglobin (local code XCG-HB) now, for treatment.
fn order_hb_now(patient: &Pseudonym) -> pb::CheckOrderRequest {
    pb::CheckOrderRequest {
        requester: String::new(),
        compact_proofs: false,
        patient_pseudonym: patient.as_bytes().to_vec(),
        items: vec![local("XCG-HB")],
        as_of_ms: 0,
        purpose: pb::Purpose::Treatment as i32,
        with_proofs: false,
        certificates_once: false,
    }
}

/// Writes `policy` with version label `label` and waits until the hub answers under it.
async fn reload_policy(
    hub: &TestHub,
    policy: &str,
    label: &str,
    patient: &Pseudonym,
) -> anyhow::Result<()> {
    std::fs::write(
        &hub.policy_path,
        policy.replace("version = \"2026.11-1\"", &format!("version = \"{label}\"")),
    )?;
    let mut c = hub.client(COUNTY).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.check_order(order_hb_now(patient)).await?.into_inner();
        if r.policy_version == label {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "policy {label} not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_each_store! {
/// A revocation dated in the past (a key compromise found late) reaches the summaries the hub
/// accepted from that moment on: they are shown NOT_RECOGNISED with the reason, or withheld,
/// as the policy says, and an order check never picks them; earlier ones stay recognised.
#[tokio::test]
async fn a_backdated_revocation_reaches_what_the_hub_accepted_after_it() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let p = hub.patient("E10000077");
    publish_lab(&hub, TERTIARY, "K-OLD", p, HGB, 3).await?;
    let before = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    publish_lab(&hub, TERTIARY, "K-NEW", p, HGB, 2).await?;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(before + 1) * 1_000_000)?
        .format(&time::format_description::well_known::Rfc3339)?;
    let policy = std::fs::read_to_string(&hub.policy_path)?;
    let revoked = format!(
        "{policy}\n[[revoked]]\nmember = \"{TERTIARY}\"\nat = {at}\nreason = \"signing key compromise\"\n"
    );
    reload_policy(&hub, &revoked, "revoked-1", &p).await?;

    let mut county = hub.client(COUNTY).await?;
    let answer = county
        .find_prior(prior_request(&p, &[(LOINC, HGB)]))
        .await?
        .into_inner();
    let verdicts: Vec<(String, Vec<R>)> = answer
        .results
        .iter()
        .map(|r| {
            (
                r.receipt
                    .as_ref()
                    .map(|r| r.summary_id.clone())
                    .unwrap_or_default(),
                reasons(r),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("K-NEW".to_owned(), vec![R::PublisherRevoked]),
            ("K-OLD".to_owned(), vec![])
        ]
    );
    let why = &answer.results[0]
        .verdict
        .as_ref()
        .context("verdict")?
        .reasons[0]
        .explanation;
    assert!(why.contains("signing key compromise"), "{why}");
    let order = county.check_order(order_hb_now(&p)).await?.into_inner();
    let best = order.items[0].best.as_ref().context("a best result")?;
    assert_eq!(
        best.receipt.as_ref().map(|r| r.summary_id.as_str()),
        Some("K-OLD")
    );

    // Withheld: the later one is not returned at all.
    let withheld = revoked.replace(
        "reason = \"signing key compromise\"\n",
        "reason = \"signing key compromise\"\nsummaries_after = \"withheld\"\n",
    );
    reload_policy(&hub, &withheld, "revoked-2", &p).await?;
    let answer = county.history(history_request(&p, 0)).await?.into_inner();
    let ids: Vec<&str> = answer
        .results
        .iter()
        .filter_map(|r| r.receipt.as_ref().map(|r| r.summary_id.as_str()))
        .collect();
    assert_eq!(ids, ["K-OLD"]);
    Ok(())
}
}

on_each_store! {
/// An order check reads every item at once, yet cuts each item's results to `max_results`
/// on its own: an item whose results are all older than another's many is not crowded out,
/// and an item ordered twice (by local and by catalogue code) gets the same answer twice.
#[tokio::test]
async fn an_order_check_limits_each_item_on_its_own() -> anyhow::Result<()> {
    let hub = TestHub::start_with(huren_hub::config::Limits {
        max_results: 2,
        ..Default::default()
    })
    .await?;
    let p = hub.patient("E10000091");
    for (id, hours) in [("H-1", 10), ("H-2", 20), ("H-3", 30)] {
        publish_lab(&hub, TERTIARY, id, p, HGB, hours).await?;
    }
    publish_lab(&hub, TERTIARY, "G-OLD", p, "2345-7", 40).await?;
    let mut county = hub.client(COUNTY).await?;
    let order = county
        .check_order(order_for(
            &p,
            vec![
                local("XCG-HB"),
                local("SH-GLU"),
                OrderItem {
                    code: Some(order_item::Code::Catalogue(ItemCode {
                        system: LOINC.into(),
                        code: HGB.into(),
                    })),
                },
            ],
        ))
        .await?
        .into_inner();
    assert_eq!(
        answered(&order),
        [
            (Some(HGB), Some("H-1"), 2),
            (Some("2345-7"), Some("G-OLD"), 1),
            (Some(HGB), Some("H-1"), 2),
        ]
    );
    Ok(())
}
}
