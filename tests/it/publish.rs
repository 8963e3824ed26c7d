//! Publishing: receipts, idempotent retries, conflicting bodies, and the order of versions.

use anyhow::Context;
use tonic::Code;

use huren_core::signing::sha256;
use huren_core::summary::Summary;
use huren_proto::hub::{Receipt, StoredSummary};

use crate::harness::*;

/// The receipt of a successful publish, or a failure that names the step.
fn receipt_of(
    step: &str,
    r: Result<huren_proto::hub::PublishResponse, tonic::Status>,
) -> anyhow::Result<(Receipt, bool)> {
    let r = r.map_err(|s| anyhow::anyhow!("{step}: refused: {s}"))?;
    let receipt = r.receipt.with_context(|| format!("{step}: no receipt"))?;
    Ok((receipt, r.already_stored))
}

/// Asserts that `r` is an error with `code` whose message contains `phrase`.
fn assert_refused<T: std::fmt::Debug>(
    step: &str,
    r: Result<T, tonic::Status>,
    code: Code,
    phrase: &str,
) {
    match r {
        Ok(v) => panic!("{step}: expected {code:?}, the hub accepted it: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{step}: {s}");
            assert!(
                s.message().contains(phrase),
                "{step}: expected {phrase:?} in {:?}",
                s.message()
            );
        }
    }
}

/// The one result FindPrior returns for `patient` and `item`.
async fn only_prior(
    client: &mut huren_proto::hub::hub_client::HubClient<tonic::transport::Channel>,
    patient: &huren_core::pseudonym::Pseudonym,
    item: (&str, &str),
) -> anyhow::Result<StoredSummary> {
    let found = client
        .find_prior(prior_request(patient, &[item]))
        .await?
        .into_inner();
    anyhow::ensure!(
        found.results.len() == 1,
        "expected exactly one result, got {}",
        found.results.len()
    );
    found.results.into_iter().next().context("no result")
}

on_each_store! {
#[tokio::test]
async fn receipt_describes_the_summary_and_a_retry_gets_the_same_receipt() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let mut client = hub.client("hosp-a").await?;
    let patient = hub.patient("E00000001");
    let summary = lab_summary("hosp-a", "LAB-0001", patient, HGB, hours(1))?;
    let signed = sign(&a, &summary)?;

    let before = now_ms();
    let (receipt, already) = receipt_of("first", publish(&mut client, signed.clone()).await)?;
    let after = now_ms();
    assert!(!already, "a first publish is not 'already stored'");
    assert_eq!(receipt.publisher, "hosp-a");
    assert_eq!(receipt.summary_id, "LAB-0001");
    assert_eq!(receipt.version, 1);
    assert_eq!(receipt.body_sha256, sha256(&signed.body).to_vec());
    assert!(
        (before..=after).contains(&receipt.accepted_at_ms),
        "accepted_at {} not within the call [{before}, {after}]",
        receipt.accepted_at_ms
    );

    // The same summary again, from a new connection: the first receipt, marked as a repeat.
    let mut again_client = hub.client("hosp-a").await?;
    let (again, already) = receipt_of("retry", publish(&mut again_client, signed.clone()).await)?;
    assert!(already, "a retry must say already_stored");
    assert_eq!(again, receipt);

    let stored = only_prior(&mut client, &patient, (LOINC, HGB)).await?;
    assert_eq!(stored.receipt, Some(receipt));
    assert_eq!(stored.summary, Some(signed));
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn a_different_body_under_a_stored_version_is_refused() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let mut client = hub.client("hosp-a").await?;
    let patient = hub.patient("E00000002");
    let original = lab_summary("hosp-a", "LAB-0002", patient, HGB, hours(1))?;
    let signed = sign(&a, &original)?;
    let (receipt, _) = receipt_of("original", publish(&mut client, signed.clone()).await)?;

    let changed = with_lab_value(&original, "98");
    assert_refused(
        "changed value, same version",
        publish(&mut client, sign(&a, &changed)?).await,
        Code::AlreadyExists,
        "already stored with a different body",
    );

    let stored = only_prior(&mut client, &patient, (LOINC, HGB)).await?;
    assert_eq!(stored.receipt, Some(receipt), "the stored receipt changed");
    assert_eq!(stored.summary, Some(signed), "the stored summary changed");
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn versions_must_arrive_in_order_and_queries_return_the_latest() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let mut client = hub.client("hosp-a").await?;
    let patient = hub.patient("E00000003");
    let v1 = lab_summary("hosp-a", "LAB-0003", patient, HGB, hours(1))?;
    let v2 = amended(&v1, "unit corrected");
    let v3 = amended(&v2, "value re-checked");

    assert_refused(
        "version 2 first",
        publish(&mut client, sign(&a, &v2)?).await,
        Code::FailedPrecondition,
        "the first version of a result must be 1",
    );
    let (r1, _) = receipt_of("version 1", publish(&mut client, sign(&a, &v1)?).await)?;
    assert_refused(
        "version 3 before 2",
        publish(&mut client, sign(&a, &v3)?).await,
        Code::FailedPrecondition,
        "the stored version is 1, so the next must be 2",
    );
    let signed_v2 = sign(&a, &v2)?;
    let (r2, already) = receipt_of("version 2", publish(&mut client, signed_v2.clone()).await)?;
    assert!(!already);
    assert_eq!(r2.version, 2);

    let stored = only_prior(&mut client, &patient, (LOINC, HGB)).await?;
    assert_eq!(stored.receipt, Some(r2.clone()));
    assert_eq!(stored.summary, Some(signed_v2.clone()));
    let history = client
        .history(history_request(&patient, 0))
        .await?
        .into_inner();
    assert_eq!(history.results.len(), 1, "history lists each result once");
    assert_eq!(history.results[0].receipt, Some(r2.clone()));

    // A late retry of version 1 still gets its own receipt and changes nothing.
    let (late, already) = receipt_of("retry of 1", publish(&mut client, sign(&a, &v1)?).await)?;
    assert!(already);
    assert_eq!(late, r1);
    let stored = only_prior(&mut client, &patient, (LOINC, HGB)).await?;
    assert_eq!(stored.summary, Some(signed_v2));
    Ok(())
}
}

on_each_store! {
/// The hub keeps a record only for superseded versions (the latest is named by its
/// latest-version entry): versions amended within one batch, retried later, or republished
/// with another body still get their own receipts, and History lists every version.
#[tokio::test]
async fn versions_superseded_in_one_batch_keep_their_receipts() -> anyhow::Result<()> {
    let mut hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let mut client = hub.client("hosp-a").await?;
    let patient = hub.patient("E00000012");
    let v1 = lab_summary("hosp-a", "LAB-0012", patient, HGB, hours(1))?;
    let v2 = amended(&v1, "unit corrected");
    let v3 = amended(&v2, "value re-checked");
    let (r1, _) = receipt_of("version 1", publish(&mut client, sign(&a, &v1)?).await)?;
    // Versions 2 and 3 in one batch: 2 is superseded before anything is written.
    let outcomes = client
        .publish_batch(huren_proto::hub::PublishBatchRequest {
            summaries: vec![sign(&a, &v2)?, sign(&a, &v3)?],
        })
        .await?
        .into_inner()
        .outcomes;
    let mut batch_receipts = Vec::new();
    for o in outcomes {
        match o.outcome {
            Some(huren_proto::hub::publish_outcome::Outcome::Published(p)) => {
                batch_receipts.push(p.receipt.context("a receipt")?);
            }
            other => anyhow::bail!("a version of the batch was not stored: {other:?}"),
        }
    }
    let [r2, r3] =
        <[Receipt; 2]>::try_from(batch_receipts).map_err(|r| anyhow::anyhow!("{r:?}"))?;
    for (step, s, receipt) in [
        ("retry of 1", &v1, &r1),
        ("retry of 2", &v2, &r2),
        ("retry of 3", &v3, &r3),
    ] {
        let (again, already) = receipt_of(step, publish(&mut client, sign(&a, s)?).await)?;
        assert!(already, "{step}");
        assert_eq!(&again, receipt, "{step}");
    }
    let other_body = with_lab_value(&v2, "99");
    assert_refused(
        "another body under version 2",
        publish(&mut client, sign(&a, &other_body)?).await,
        Code::AlreadyExists,
        "",
    );
    let mut request = history_request(&patient, 0);
    request.include_earlier_versions = true;
    let history = client.history(request).await?.into_inner();
    assert_eq!(history.results.len(), 1);
    assert_eq!(history.results[0].receipt, Some(r3));
    let earlier: Vec<_> = history.results[0]
        .earlier_versions
        .iter()
        .map(|e| e.receipt.clone())
        .collect();
    assert_eq!(
        earlier,
        [Some(r2), Some(r1)],
        "earlier versions, newest first"
    );
    drop(client);
    hub.stop().await?;
    assert_eq!(hub.stored_summary_count().await?, 3);
    if hub.backend == Backend::Sled {
        let db = hub.open_store_db().await?;
        let records = db
            .open_tree("summaries")?
            .scan_prefix(b"hosp-a\0LAB-0012\0")
            .count();
        assert_eq!(records, 2, "records for versions 1 and 2 only");
        let latest = db
            .open_tree("latest")?
            .get(b"hosp-a\0LAB-0012")?
            .context("latest")?;
        assert_eq!(
            latest[..4],
            3u32.to_be_bytes(),
            "the latest entry names version 3"
        );
    } else {
        // PostgreSQL keeps a row per version and the latest apart.
        let sql = hub.sql_client().await?;
        let versions: Vec<i32> = sql
            .query(
                "SELECT version FROM summaries WHERE publisher = 'hosp-a' AND summary_id = 'LAB-0012' ORDER BY version",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, [1, 2, 3]);
        let latest: i32 = sql
            .query_one(
                "SELECT version FROM latest WHERE publisher = 'hosp-a' AND summary_id = 'LAB-0012'",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(latest, 3, "the latest entry names version 3");
    }
    Ok(())
}
}

on_each_store! {
/// An amendment that changes the item or the time is found where it now is, and no longer
/// where version 1 was. One that changes the patient is refused (an order number reused for
/// another patient must not take the result with it): the publisher voids the result and
/// publishes the right one anew, and nothing follows a void.
#[tokio::test]
async fn an_amendment_that_moves_the_result_is_found_only_where_it_now_is() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let mut client = hub.client("hosp-a").await?;
    let p = hub.patient("E00000004");
    let q = hub.patient("E00000005");
    let v1 = lab_summary("hosp-a", "LAB-0004", p, HGB, hours(1))?;
    receipt_of("v1", publish(&mut client, sign(&a, &v1)?).await)?;

    // v2: wrong item and time corrected.
    let mut v2: Summary = amended(&v1, "ordered item was glucose");
    v2.item.code = GLUCOSE.into();
    v2.performed_at = huren_core::summary::UnixMillis(hours(5));
    v2.reported_at = huren_core::summary::UnixMillis(hours(6));
    let (r2, _) = receipt_of("v2", publish(&mut client, sign(&a, &v2)?).await)?;

    let hgb = client
        .find_prior(prior_request(&p, &[(LOINC, HGB)]))
        .await?
        .into_inner();
    assert!(
        hgb.results.is_empty(),
        "the old item still matches: {hgb:?}"
    );
    let glucose = only_prior(&mut client, &p, (LOINC, GLUCOSE)).await?;
    assert_eq!(glucose.receipt, Some(r2.clone()));
    // As of hour 2 the result (now performed at hour 5) did not exist yet.
    let mut early = prior_request(&p, &[(LOINC, HGB), (LOINC, GLUCOSE)]);
    early.as_of_ms = hours(2);
    let early = client.find_prior(early).await?.into_inner();
    assert!(
        early.results.is_empty(),
        "old time still matches: {early:?}"
    );

    // v3: it was another patient's specimen. Moving it is refused, alone or in a batch.
    let mut v3 = amended(&v2, "specimen belonged to another patient");
    v3.patient = q;
    assert_refused(
        "v3 to another patient",
        publish(&mut client, sign(&a, &v3)?).await,
        Code::FailedPrecondition,
        "may not change the patient",
    );
    let outcomes = client
        .publish_batch(huren_proto::hub::PublishBatchRequest {
            summaries: vec![sign(&a, &v3)?],
        })
        .await?
        .into_inner()
        .outcomes;
    match outcomes.first().and_then(|o| o.outcome.as_ref()) {
        Some(huren_proto::hub::publish_outcome::Outcome::Refused(r)) => {
            assert_eq!(r.code, Code::FailedPrecondition as i32, "{r:?}");
            assert!(r.message.contains("may not change the patient"), "{r:?}");
        }
        other => panic!("a batch moved the result to another patient: {other:?}"),
    }
    let still = only_prior(&mut client, &p, (LOINC, GLUCOSE)).await?;
    assert_eq!(still.receipt, Some(r2), "the result left its patient");
    let q_prior = client
        .find_prior(prior_request(&q, &[(LOINC, GLUCOSE)]))
        .await?
        .into_inner();
    assert!(q_prior.results.is_empty(), "{q_prior:?}");

    // The correction: void it for p, publish anew for q.
    let mut void = amended(&v2, "specimen belonged to another patient");
    void.status = huren_core::summary::Status::Voided;
    receipt_of("void", publish(&mut client, sign(&a, &void)?).await)?;
    let mut anew = lab_summary("hosp-a", "LAB-0004-R", q, GLUCOSE, hours(5))?;
    anew.reported_at = huren_core::summary::UnixMillis(hours(6));
    let (r_anew, _) = receipt_of("anew", publish(&mut client, sign(&a, &anew)?).await)?;
    let q_result = only_prior(&mut client, &q, (LOINC, GLUCOSE)).await?;
    assert_eq!(q_result.receipt, Some(r_anew));

    // A voided result stays voided: a later amendment (same patient or not) is refused,
    // and so is an amendment and its void sent together in one batch followed by a revival.
    let revived = amended(&void, "un-void");
    assert_refused(
        "amendment after the void",
        publish(&mut client, sign(&a, &revived)?).await,
        Code::FailedPrecondition,
        "a voided result stays voided",
    );
    let w1 = lab_summary("hosp-a", "LAB-0004-W", p, HGB, hours(1))?;
    let mut w2 = amended(&w1, "voided");
    w2.status = huren_core::summary::Status::Voided;
    let w3 = amended(&w2, "revived in the same batch");
    let outcomes = client
        .publish_batch(huren_proto::hub::PublishBatchRequest {
            summaries: vec![sign(&a, &w1)?, sign(&a, &w2)?, sign(&a, &w3)?],
        })
        .await?
        .into_inner()
        .outcomes;
    let refused: Vec<bool> = outcomes
        .iter()
        .map(|o| {
            matches!(
                o.outcome,
                Some(huren_proto::hub::publish_outcome::Outcome::Refused(_))
            )
        })
        .collect();
    assert_eq!(refused, vec![false, false, true], "{outcomes:?}");
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn an_imaging_summary_is_published_and_found() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let b = hub.member("hosp-b")?;
    let mut client = hub.client("hosp-b").await?;
    let patient = hub.patient("E00000006");
    let ct = imaging_summary("hosp-b", "CT-0001", patient, CT_CHEST, hours(3))?;
    let signed = sign(&b, &ct)?;
    let (receipt, _) = receipt_of("ct", publish(&mut client, signed.clone()).await)?;
    let stored = only_prior(&mut client, &patient, (EXAM_CATALOGUE, CT_CHEST)).await?;
    assert_eq!(stored.receipt, Some(receipt));
    assert_eq!(stored.summary, Some(signed));
    Ok(())
}
}

on_each_store! {
/// Many agents retrying the same summary at once: one stores it, all get the same receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_publishes_store_once() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let patient = hub.patient("E00000007");
    let signed = sign(
        &a,
        &lab_summary("hosp-a", "LAB-0007", patient, HGB, hours(1))?,
    )?;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        // Separate connections, so the calls really run side by side.
        let mut client = hub.client("hosp-a").await?;
        let signed = signed.clone();
        calls.spawn(async move { publish(&mut client, signed).await });
    }
    let mut receipts = Vec::new();
    let mut stored = 0;
    while let Some(r) = calls.join_next().await {
        let (receipt, already) = receipt_of("concurrent", r?)?;
        stored += usize::from(!already);
        receipts.push(receipt);
    }
    assert_eq!(stored, 1, "exactly one call stores the summary");
    assert!(receipts.windows(2).all(|w| w[0] == w[1]), "{receipts:?}");
    Ok(())
}
}

on_each_store! {
/// Publishes arriving together have their signatures checked together (one batch equation);
/// a bad signature among them is refused on its own and the others are stored, each caller
/// hearing its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_among_concurrent_publishes_refuses_only_itself() -> anyhow::Result<()> {
    let mut hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let patient = hub.patient("E00000011");
    // Connect first, then release every call at once, so they wait for their checks together.
    const CALLS: usize = 24;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CALLS));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let id = format!("LAB-CONC-{i}");
        let mut signed = sign(
            &a,
            &lab_summary("hosp-a", &id, patient, HGB, hours(i as i64 + 1))?,
        )?;
        let bad = i % 3 == 1;
        if bad {
            signed.signature[10] ^= 0x01;
        }
        let mut client = hub.client("hosp-a").await?;
        let start = start.clone();
        calls.spawn(async move {
            start.wait().await;
            (id, bad, publish(&mut client, signed).await)
        });
    }
    let mut stored = 0;
    while let Some(r) = calls.join_next().await {
        let (id, bad, outcome) = r?;
        if bad {
            assert_refused(
                &id,
                outcome,
                Code::InvalidArgument,
                "signature does not verify",
            );
        } else {
            let (receipt, already) = receipt_of(&id, outcome)?;
            assert_eq!(receipt.summary_id, id, "each caller gets its own receipt");
            assert!(!already);
            stored += 1;
        }
    }
    assert_eq!(stored, 16);
    hub.stop().await?;
    assert_eq!(
        hub.stored_summary_count().await?,
        16,
        "only the good ones are stored"
    );
    Ok(())
}
}

on_each_store! {
/// Two different bodies racing for the same version: one wins, the other gets ALREADY_EXISTS,
/// and the stored one is the winner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conflicting_publishes_have_one_winner() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let patient = hub.patient("E00000008");
    let base = lab_summary("hosp-a", "LAB-0008", patient, HGB, hours(1))?;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..8 {
        let s = with_lab_value(&base, format!("{}", 120 + i));
        let signed = sign(&a, &s)?;
        let mut client = hub.client("hosp-a").await?;
        calls.spawn(async move { (signed.clone(), publish(&mut client, signed).await) });
    }
    let mut winners = Vec::new();
    while let Some(r) = calls.join_next().await {
        match r? {
            (signed, Ok(response)) => winners.push((signed, response.receipt)),
            (_, Err(s)) => assert_eq!(s.code(), Code::AlreadyExists, "{s}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one body may win");
    let (signed, receipt) = winners.remove(0);
    let mut client = hub.client("hosp-a").await?;
    let stored = only_prior(&mut client, &patient, (LOINC, HGB)).await?;
    assert_eq!(stored.summary, Some(signed));
    assert_eq!(stored.receipt, receipt);
    Ok(())
}
}

on_each_store! {
/// A result dated in the future (beyond the hub's 10 minutes for clock drift) or after the
/// year 9999 is refused, alone and in a batch, with the field named; one a few minutes
/// ahead (a drifting clock) is taken.
#[tokio::test]
async fn results_from_the_future_are_refused() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let mut client = hub.client("hosp-a").await?;
    let patient = hub.patient("E00000099");
    let day = 24 * 3_600_000;
    let tomorrow = lab_summary("hosp-a", "LAB-FUTURE-1", patient, HGB, now_ms() + day)?;
    assert_refused(
        "performed tomorrow",
        publish(&mut client, sign(&a, &tomorrow)?).await,
        Code::InvalidArgument,
        "performed_at_ms",
    );
    let mut reported_later = lab_summary("hosp-a", "LAB-FUTURE-2", patient, HGB, now_ms())?;
    reported_later.reported_at = huren_core::summary::UnixMillis(now_ms() + day);
    let outcomes = client
        .publish_batch(huren_proto::hub::PublishBatchRequest {
            summaries: vec![sign(&a, &reported_later)?],
        })
        .await?
        .into_inner()
        .outcomes;
    match outcomes.first().and_then(|o| o.outcome.as_ref()) {
        Some(huren_proto::hub::publish_outcome::Outcome::Refused(r)) => {
            assert_eq!(r.code, Code::InvalidArgument as i32, "{r:?}");
            assert!(r.message.contains("reported_at_ms"), "{r:?}");
        }
        other => panic!("a result reported tomorrow was taken in a batch: {other:?}"),
    }
    // Year 9999 is refused as a malformed body (the signature is fine).
    let mut far = lab_summary("hosp-a", "LAB-FUTURE-3", patient, HGB, hours(1))?;
    far.performed_at = huren_core::summary::UnixMillis(253_402_300_799_999);
    far.reported_at = huren_core::summary::UnixMillis(i64::MAX);
    let body = huren_core::pb::SummaryBody::from(&far);
    let signed = sign_body(&a, prost::Message::encode_to_vec(&body))?;
    assert_refused(
        "year 9999",
        publish(&mut client, signed).await,
        Code::InvalidArgument,
        "reported_at_ms",
    );
    // Five minutes ahead: a drifting clock, taken.
    let mut drift = lab_summary("hosp-a", "LAB-DRIFT", patient, HGB, now_ms() + 300_000)?;
    drift.reported_at = drift.performed_at;
    receipt_of(
        "five minutes ahead",
        publish(&mut client, sign(&a, &drift)?).await,
    )?;
    let history = client
        .history(history_request(&patient, 0))
        .await?
        .into_inner();
    assert_eq!(
        history.results.len(),
        1,
        "only the drifting result is stored"
    );
    Ok(())
}
}
