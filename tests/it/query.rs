//! Queries: FindPrior and History ordering and filters, envelopes that verify against the CA,
//! truncation, and the standard health and reflection services.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use tonic::transport::Channel;

use huren_core::pb;
use huren_core::pseudonym::Pseudonym;
use huren_core::signing::{SignedEnvelope, sha256};
use huren_core::summary::UnixMillis;
use huren_core::trust::AllianceCa;
use huren_hub::config::Limits;
use huren_proto::hub::hub_client::HubClient;
use huren_proto::hub::{FindPriorRequest, StoredSummary};

use crate::harness::*;

/// A small alliance history for two patients, published by two members.
struct World {
    hub: TestHub,
    client: HubClient<Channel>,
    p: Pseudonym,
    q: Pseudonym,
    /// (publisher, summary id) -> what was published.
    published: BTreeMap<(String, String), pb::SignedSummary>,
}

/// Patient p: hosp-a HGB at hours 1 and 2, hosp-b HGB at hour 3, hosp-a glucose at hour 4,
/// hosp-b chest CT at hour 5. Patient q: hosp-a HGB at hour 6.
async fn world() -> anyhow::Result<World> {
    let hub = TestHub::start().await?;
    let p = hub.patient("E20000001");
    let q = hub.patient("E20000002");
    let a = hub.member("hosp-a")?;
    let b = hub.member("hosp-b")?;
    let mut client_a = hub.client("hosp-a").await?;
    let mut client_b = hub.client("hosp-b").await?;
    let summaries = [
        (lab_summary("hosp-a", "A-1", p, HGB, hours(1))?, &a),
        (lab_summary("hosp-b", "B-3", p, HGB, hours(3))?, &b),
        (lab_summary("hosp-a", "A-2", p, HGB, hours(2))?, &a),
        (lab_summary("hosp-a", "A-4", p, GLUCOSE, hours(4))?, &a),
        (imaging_summary("hosp-b", "B-5", p, CT_CHEST, hours(5))?, &b),
        (lab_summary("hosp-a", "A-6", q, HGB, hours(6))?, &a),
    ];
    let mut published = BTreeMap::new();
    for (summary, member) in summaries {
        let signed = sign(member, &summary)?;
        let client = if summary.publisher.as_str() == "hosp-a" {
            &mut client_a
        } else {
            &mut client_b
        };
        publish(client, signed.clone())
            .await
            .with_context(|| format!("publishing {}", summary.id))?;
        published.insert(
            (summary.publisher.to_string(), summary.id.to_string()),
            signed,
        );
    }
    // A third member asks.
    let client = hub.client("hosp-c").await?;
    Ok(World {
        hub,
        client,
        p,
        q,
        published,
    })
}

impl World {
    /// Checks every result (it verifies against the CA at its acceptance time, it is exactly
    /// what was published, its receipt matches its body, it is `patient`'s) and returns the
    /// summary ids in order.
    fn ids(&self, patient: &Pseudonym, results: &[StoredSummary]) -> anyhow::Result<Vec<String>> {
        let ca = AllianceCa::from_pem(self.hub.ca_pem())?;
        let mut ids = Vec::new();
        for r in results {
            let receipt = r.receipt.as_ref().context("result without receipt")?;
            let signed = r.summary.clone().context("result without summary")?;
            let verified = SignedEnvelope::try_from(signed.clone())?
                .verify(&ca, UnixMillis(receipt.accepted_at_ms))
                .with_context(|| format!("{} does not verify", receipt.summary_id))?;
            ensure!(
                verified.summary.patient == *patient,
                "another patient's result"
            );
            ensure!(verified.summary.publisher.as_str() == receipt.publisher);
            ensure!(verified.summary.id.as_str() == receipt.summary_id);
            ensure!(verified.summary.version == receipt.version);
            ensure!(receipt.body_sha256 == sha256(&signed.body).to_vec());
            let key = (receipt.publisher.clone(), receipt.summary_id.clone());
            ensure!(
                self.published.get(&key) == Some(&signed),
                "{key:?} is not byte for byte what was published"
            );
            ids.push(receipt.summary_id.clone());
        }
        Ok(ids)
    }

    async fn prior(&mut self, req: FindPriorRequest) -> anyhow::Result<Vec<String>> {
        let patient = Pseudonym::from_slice(&req.patient_pseudonym).context("pseudonym")?;
        let found = self.client.find_prior(req).await?.into_inner();
        ensure!(!found.truncated);
        self.ids(&patient, &found.results)
    }

    async fn history(&mut self, patient: Pseudonym, since_ms: i64) -> anyhow::Result<Vec<String>> {
        let found = self
            .client
            .history(history_request(&patient, since_ms))
            .await?
            .into_inner();
        ensure!(!found.truncated);
        self.ids(&patient, &found.results)
    }
}

on_each_store! {
/// With `certificates_once`, an answer carries each signing certificate once and the
/// summaries point at it; put back, they are byte for byte the summaries of an answer without
/// it, and the answer is smaller by the copies left out. History shares the same way
/// (CheckOrder: rules.rs).
#[tokio::test]
async fn certificates_once_sends_each_signing_certificate_once() -> anyhow::Result<()> {
    use prost::Message;

    let mut w = world().await?;
    let p = w.p;
    let mut plain = prior_request(&p, &[(LOINC, HGB), (LOINC, GLUCOSE)]);
    // One moment for both answers: a verdict names the moment it judged at.
    plain.as_of_ms = crate::harness::now_ms();
    let full = w.client.find_prior(plain.clone()).await?.into_inner();
    plain.certificates_once = true;
    let shared = w.client.find_prior(plain).await?.into_inner();
    assert!(full.signer_certificates.is_empty());
    // Four results from two members: two certificates.
    assert_eq!(shared.results.len(), 4);
    assert_eq!(shared.signer_certificates.len(), 2);
    assert_ne!(shared.signer_certificates[0], shared.signer_certificates[1]);
    let mut restored = shared.results.clone();
    for r in &mut restored {
        let signed = r.summary.as_mut().context("no summary")?;
        assert!(signed.signer_certificate.is_empty());
        signed.signer_certificate =
            shared.signer_certificates[r.signer_certificate_index as usize].clone();
        r.signer_certificate_index = 0;
    }
    assert_eq!(restored, full.results);
    assert_eq!(w.ids(&p, &restored)?, ["A-4", "B-3", "A-2", "A-1"]);
    let (full_len, shared_len) = (full.encoded_len(), shared.encoded_len());
    // Two of the four copies are gone.
    let smallest = shared
        .signer_certificates
        .iter()
        .map(Vec::len)
        .min()
        .unwrap_or(0);
    assert!(
        shared_len + 2 * smallest <= full_len,
        "{shared_len} vs {full_len} bytes"
    );

    let mut history = history_request(&p, 0);
    history.certificates_once = true;
    let h = w.client.history(history).await?.into_inner();
    assert_eq!(h.results.len(), 5);
    assert_eq!(h.signer_certificates.len(), 2);
    assert!(h.results.iter().all(|r| {
        r.summary
            .as_ref()
            .is_some_and(|s| s.signer_certificate.is_empty())
    }));

    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn find_prior_is_newest_first_and_honours_items_and_time() -> anyhow::Result<()> {
    let mut w = world().await?;
    let (p, q) = (w.p, w.q);

    let hgb = prior_request(&p, &[(LOINC, HGB)]);
    assert_eq!(w.prior(hgb.clone()).await?, ["B-3", "A-2", "A-1"]);
    let both = prior_request(&p, &[(LOINC, HGB), (LOINC, GLUCOSE)]);
    assert_eq!(w.prior(both).await?, ["A-4", "B-3", "A-2", "A-1"]);
    let ct = prior_request(&p, &[(EXAM_CATALOGUE, CT_CHEST)]);
    assert_eq!(w.prior(ct).await?, ["B-5"]);
    // The same code in another code system is another item.
    let wrong_system = prior_request(&p, &[(EXAM_CATALOGUE, HGB)]);
    assert!(w.prior(wrong_system).await?.is_empty());
    // Asking twice for an item does not duplicate results.
    let twice = prior_request(&p, &[(LOINC, HGB), (LOINC, HGB)]);
    assert_eq!(w.prior(twice).await?, ["B-3", "A-2", "A-1"]);

    // as_of: results performed after it are not returned; performed exactly at it are.
    let as_of = |ms| FindPriorRequest {
        as_of_ms: ms,
        ..hgb.clone()
    };
    assert_eq!(w.prior(as_of(hours(2))).await?, ["A-2", "A-1"]);
    assert_eq!(w.prior(as_of(hours(2) - 1)).await?, ["A-1"]);
    assert!(w.prior(as_of(hours(1) - 1)).await?.is_empty());

    // lookback: back from as_of, the start included.
    let lookback = |s| FindPriorRequest {
        as_of_ms: hours(3),
        lookback_seconds: s,
        ..hgb.clone()
    };
    assert_eq!(w.prior(lookback(3600)).await?, ["B-3", "A-2"]);
    assert_eq!(w.prior(lookback(3599)).await?, ["B-3"]);
    assert_eq!(w.prior(lookback(u64::MAX)).await?, ["B-3", "A-2", "A-1"]);

    // The other patient sees only their own result, and p never sees it.
    assert_eq!(w.prior(prior_request(&q, &[(LOINC, HGB)])).await?, ["A-6"]);
    let unknown = w.hub.patient("E20000003");
    assert!(
        w.prior(prior_request(&unknown, &[(LOINC, HGB)]))
            .await?
            .is_empty()
    );
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn history_lists_all_items_across_members_newest_first() -> anyhow::Result<()> {
    let mut w = world().await?;
    let (p, q) = (w.p, w.q);
    assert_eq!(w.history(p, 0).await?, ["B-5", "A-4", "B-3", "A-2", "A-1"]);
    assert_eq!(w.history(p, hours(3)).await?, ["B-5", "A-4", "B-3"]);
    assert_eq!(w.history(p, hours(3) + 1).await?, ["B-5", "A-4"]);
    assert!(w.history(p, hours(6)).await?.is_empty());
    assert_eq!(w.history(q, 0).await?, ["A-6"]);
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn answers_over_the_limit_are_truncated_to_the_newest() -> anyhow::Result<()> {
    let hub = TestHub::start_with(Limits {
        max_results: 2,
        ..Limits::default()
    })
    .await?;
    let a = hub.member("hosp-a")?;
    let mut client = hub.client("hosp-a").await?;
    let p = hub.patient("E20000004");
    for h in 1..=3 {
        let s = lab_summary("hosp-a", &format!("T-{h}"), p, HGB, hours(h))?;
        publish(&mut client, sign(&a, &s)?).await?;
    }
    let ids = |results: &[StoredSummary]| -> Vec<String> {
        results
            .iter()
            .filter_map(|r| r.receipt.as_ref().map(|r| r.summary_id.clone()))
            .collect()
    };
    let prior = client
        .find_prior(prior_request(&p, &[(LOINC, HGB)]))
        .await?
        .into_inner();
    assert!(prior.truncated);
    assert_eq!(ids(&prior.results), ["T-3", "T-2"]);
    let history = client.history(history_request(&p, 0)).await?.into_inner();
    assert!(history.truncated);
    assert_eq!(ids(&history.results), ["T-3", "T-2"]);
    // Exactly at the limit is not truncated.
    let history = client
        .history(history_request(&p, hours(2)))
        .await?
        .into_inner();
    assert!(!history.truncated);
    assert_eq!(ids(&history.results), ["T-3", "T-2"]);
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn health_reports_serving_over_mtls() -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let hub = TestHub::start().await?;
    let mut health = HealthClient::new(hub.channel("hosp-a").await?);
    for service in ["", "huren.hub.v1.Hub"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "huren.hub.v1.NoSuchService".into(),
        })
        .await;
    assert_eq!(
        unknown.map(|r| r.into_inner()).err().map(|s| s.code()),
        Some(tonic::Code::NotFound)
    );
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn reflection_lists_the_hub_service() -> anyhow::Result<()> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let hub = TestHub::start().await?;
    let mut reflection = ServerReflectionClient::new(hub.channel("hosp-a").await?);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "huren.hub.v1.Hub".into(),
        )),
    ];
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut next = async || -> anyhow::Result<MessageResponse> {
        let answer: ServerReflectionResponse = answers
            .message()
            .await?
            .context("reflection stream ended")?;
        answer.message_response.context("empty reflection answer")
    };

    let MessageResponse::ListServicesResponse(list) = next().await? else {
        anyhow::bail!("list_services was not answered with a list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"huren.hub.v1.Hub"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let MessageResponse::FileDescriptorResponse(files) = next().await? else {
        anyhow::bail!("the Hub service's file was not found");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    Ok(())
}
}
