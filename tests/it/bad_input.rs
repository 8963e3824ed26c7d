//! Requests the hub must refuse: each with the right status code, a message that tells a person
//! what is wrong, and no trace in the store afterwards.

use prost::Message;
use time::{Duration, OffsetDateTime};
use tonic::Code;
use tonic::transport::Channel;

use huren_certs_dev::PemPair;
use huren_core::identity::InstitutionId;
use huren_core::pb;
use huren_core::pseudonym::Pseudonym;
use huren_proto::hub::hub_client::HubClient;
use huren_proto::hub::{FindPriorRequest, HistoryRequest, ItemCode, PublishRequest};

use crate::harness::*;

/// Status codes a client sees when the TLS handshake is refused (the refusal only shows at the
/// first call with TLS 1.3).
const TLS_REFUSED: &[Code] = &[Code::Unknown, Code::Unavailable, Code::Cancelled];

/// Collects the cases that went wrong, so one run reports all of them.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    /// `result` must be refused with one of `codes`, and the status (message, and for transport
    /// errors its source) must contain `phrase`.
    fn refused<T: std::fmt::Debug>(
        &mut self,
        case: &str,
        result: Result<T, tonic::Status>,
        codes: &[Code],
        phrase: &str,
    ) {
        match result {
            Ok(v) => self
                .failures
                .push(format!("{case}: accepted, expected {codes:?}: {v:?}")),
            Err(s) if !codes.contains(&s.code()) => self
                .failures
                .push(format!("{case}: expected {codes:?}, got {s}")),
            Err(s) if !s.to_string().contains(phrase) => self.failures.push(format!(
                "{case}: expected {phrase:?} in the status, got {s}"
            )),
            Err(_) => {}
        }
    }

    fn fail(&mut self, case: &str, what: String) {
        self.failures.push(format!("{case}: {what}"));
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} case(s) failed:\n  {}",
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}

/// Who makes the call.
enum Caller {
    Member(&'static str),
    NoCertificate,
    OtherCa(&'static str),
    /// Any certificate and key as the TLS client identity.
    Tls(PemPair),
}

async fn client_for(hub: &TestHub, caller: &Caller) -> anyhow::Result<HubClient<Channel>> {
    match caller {
        Caller::Member(id) => hub.client(id).await,
        Caller::NoCertificate => hub.client_without_cert(),
        Caller::OtherCa(id) => hub.client_from_other_ca(id),
        Caller::Tls(identity) => hub.client_with_tls(identity),
    }
}

/// The body bytes of `summary`, edited as a protobuf message first.
fn edited_body(
    summary: &huren_core::summary::Summary,
    edit: impl FnOnce(&mut pb::SummaryBody),
) -> Vec<u8> {
    let mut body = pb::SummaryBody::from(summary);
    edit(&mut body);
    body.encode_to_vec()
}

/// `body` followed by field 99 (length-delimited) so that the whole is `total` bytes.
fn padded_to(mut body: Vec<u8>, total: usize) -> Vec<u8> {
    // Tag 99 wire type 2 is two bytes (0x9a 0x06); the length takes three bytes here.
    let pad = total - body.len() - 5;
    body.extend_from_slice(&[0x9a, 0x06]);
    let mut len = pad;
    while len >= 0x80 {
        body.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    body.push(len as u8);
    assert_eq!(body.len(), total - pad, "the length must take three bytes");
    body.resize(total, b'x');
    body
}

fn request(summary: pb::SignedSummary) -> PublishRequest {
    PublishRequest {
        summary: Some(summary),
    }
}

async fn is_untouched(
    good: &mut HubClient<Channel>,
    patient: &Pseudonym,
) -> anyhow::Result<Option<String>> {
    let history = good
        .history(HistoryRequest {
            requester: String::new(),
            compact_proofs: false,
            patient_pseudonym: patient.as_bytes().to_vec(),
            since_ms: 0,
            include_earlier_versions: false,
            purpose: huren_proto::hub::Purpose::Treatment as i32,
            with_proofs: false,
            certificates_once: false,
        })
        .await?
        .into_inner();
    let prior = good
        .find_prior(prior_request(patient, &[(LOINC, HGB)]))
        .await?
        .into_inner();
    Ok(
        (!history.results.is_empty() || !prior.results.is_empty()).then(|| {
            format!(
                "the hub stored something: history {} result(s), prior {} result(s)",
                history.results.len(),
                prior.results.len()
            )
        }),
    )
}

on_each_store! {
#[tokio::test]
async fn refused_publishes_leave_no_trace() -> anyhow::Result<()> {
    let mut hub = TestHub::start().await?;
    let a = hub.member("hosp-a")?;
    let b = hub.member("hosp-b")?;
    let p = hub.patient("E10000001");
    let mut good = hub.client("hosp-a").await?;

    let summary = lab_summary("hosp-a", "LAB-1001", p, HGB, hours(1))?;
    let valid = sign(&a, &summary)?;
    let of_b = lab_summary("hosp-b", "LAB-1001", p, HGB, hours(1))?;
    let now = OffsetDateTime::now_utc();
    let institution_a = InstitutionId::parse("hosp-a")?;
    let expired = hub.pki.issue_member_valid(
        &institution_a,
        now - Duration::days(30),
        now - Duration::days(1),
    )?;
    let not_yet = hub.pki.issue_member_valid(
        &institution_a,
        now + Duration::days(1),
        now + Duration::days(30),
    )?;

    let tampered = {
        let mut s = valid.clone();
        let last = s.body.len() - 1;
        s.body[last] ^= 0x01;
        s
    };
    let short_signature = {
        let mut s = valid.clone();
        s.signature.truncate(63);
        s
    };
    let no_signature = pb::SignedSummary {
        signature: vec![],
        ..valid.clone()
    };
    let tls_cert_as_signer = pb::SignedSummary {
        signer_certificate: cert_der(&a.tls.cert_pem)?,
        ..valid.clone()
    };
    let garbage_certificate = pb::SignedSummary {
        signer_certificate: b"not a certificate".to_vec(),
        ..valid.clone()
    };
    let mut non_canonical = summary.to_body_bytes();
    // Field 99, varint 1: an unknown field appended to a valid body.
    non_canonical.extend_from_slice(&[0x98, 0x06, 0x01]);
    let oversized_body = padded_to(summary.to_body_bytes(), 20_000);
    let over_transport_limit = padded_to(summary.to_body_bytes(), 100 * 1024);
    let malformed: Vec<u8> = (0u32..64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 0x80)
        .collect();

    use Caller::*;
    type Case = (
        &'static str,
        Caller,
        PublishRequest,
        &'static [Code],
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "no client certificate",
            NoCertificate,
            request(valid.clone()),
            TLS_REFUSED,
            "CertificateRequired",
        ),
        (
            "client certificate from another CA",
            OtherCa("hosp-a"),
            request(valid.clone()),
            TLS_REFUSED,
            "received fatal alert",
        ),
        (
            "expired client certificate",
            Tls(expired.tls.clone()),
            request(valid.clone()),
            TLS_REFUSED,
            "CertificateExpired",
        ),
        (
            "signing certificate as client certificate",
            Tls(a.signing.clone()),
            request(valid.clone()),
            TLS_REFUSED,
            "UnsupportedCertificate",
        ),
        (
            "hub certificate as client certificate",
            Tls(hub.pki.hub_identity(&[])?),
            request(valid.clone()),
            TLS_REFUSED,
            "UnsupportedCertificate",
        ),
        (
            "publishing another institution's summary",
            Member("hosp-a"),
            request(sign(&b, &of_b)?),
            &[Code::PermissionDenied],
            "hosp-a cannot publish a summary of hosp-b",
        ),
        (
            "summary naming another publisher than its signer",
            Member("hosp-a"),
            request(sign_body(&a, of_b.to_body_bytes())?),
            &[Code::InvalidArgument],
            "names publisher hosp-b but is signed by hosp-a",
        ),
        (
            "body changed after signing",
            Member("hosp-a"),
            request(tampered),
            &[Code::InvalidArgument],
            "signature does not verify",
        ),
        (
            "signature of 63 bytes",
            Member("hosp-a"),
            request(short_signature),
            &[Code::InvalidArgument],
            "must be 64 bytes, got 63",
        ),
        (
            "no signature",
            Member("hosp-a"),
            request(no_signature),
            &[Code::InvalidArgument],
            "must be 64 bytes, got 0",
        ),
        (
            "signing certificate from another CA",
            Member("hosp-a"),
            request(sign(&hub.other_ca_member("hosp-a")?, &summary)?),
            &[Code::PermissionDenied],
            "not issued by this alliance's CA",
        ),
        (
            "expired signing certificate",
            Member("hosp-a"),
            request(sign(&expired, &summary)?),
            &[Code::PermissionDenied],
            "expired",
        ),
        (
            "signing certificate not valid yet",
            Member("hosp-a"),
            request(sign(&not_yet, &summary)?),
            &[Code::PermissionDenied],
            "not valid yet",
        ),
        (
            "TLS certificate as signing certificate",
            Member("hosp-a"),
            request(tls_cert_as_signer),
            &[Code::PermissionDenied],
            "Document Signing",
        ),
        (
            "signing certificate that is not a certificate",
            Member("hosp-a"),
            request(garbage_certificate),
            &[Code::InvalidArgument],
            "cannot be parsed",
        ),
        (
            "malformed body, validly signed",
            Member("hosp-a"),
            request(sign_body(&a, malformed)?),
            &[Code::InvalidArgument],
            "not a valid SummaryBody",
        ),
        (
            "body with an unknown field, validly signed",
            Member("hosp-a"),
            request(sign_body(&a, non_canonical)?),
            &[Code::InvalidArgument],
            "canonical",
        ),
        (
            "body of 20000 bytes",
            Member("hosp-a"),
            request(sign_body(&a, oversized_body)?),
            &[Code::InvalidArgument],
            "summary body is 20000 bytes; at most 16384",
        ),
        (
            "message over the transport limit",
            Member("hosp-a"),
            request(sign_body(&a, over_transport_limit)?),
            &[Code::OutOfRange],
            "too large",
        ),
        (
            "no summary",
            Member("hosp-a"),
            PublishRequest { summary: None },
            &[Code::InvalidArgument],
            "summary is missing",
        ),
        (
            "body without an item",
            Member("hosp-a"),
            request(sign_body(&a, edited_body(&summary, |b| b.item = None))?),
            &[Code::InvalidArgument],
            "field item is missing",
        ),
        (
            "empty summary id",
            Member("hosp-a"),
            request(sign_body(
                &a,
                edited_body(&summary, |b| b.summary_id.clear()),
            )?),
            &[Code::InvalidArgument],
            "summary_id",
        ),
        (
            "pseudonym of 16 bytes",
            Member("hosp-a"),
            request(sign_body(
                &a,
                edited_body(&summary, |b| b.patient_pseudonym.truncate(16)),
            )?),
            &[Code::InvalidArgument],
            "patient_pseudonym: must be 32 bytes",
        ),
        (
            "unsupported body format",
            Member("hosp-a"),
            request(sign_body(&a, edited_body(&summary, |b| b.format = 2))?),
            &[Code::InvalidArgument],
            "format 2 is not supported",
        ),
    ];

    let mut checks = Checks::default();
    for (case, caller, req, codes, phrase) in cases {
        let mut client = client_for(&hub, &caller).await?;
        let result = client.publish(req).await.map(tonic::Response::into_inner);
        checks.refused(case, result, codes, phrase);
        if let Some(changed) = is_untouched(&mut good, &p).await? {
            checks.fail(case, changed);
        }
    }
    checks.finish();

    // The hub is still up and takes a good summary.
    let ok = publish(&mut good, valid).await?;
    assert!(!ok.already_stored);
    let history = good.history(history_request(&p, 0)).await?.into_inner();
    assert_eq!(history.results.len(), 1);

    // Nothing else reached the store, not even under another key.
    hub.stop().await?;
    assert_eq!(hub.stored_summary_count().await?, 1);
    // Nor a signing certificate or an index entry of a refused summary (trees and tables as
    // documented in hub/src/store/sled/mod.rs and hub/src/store/postgres/mod.rs).
    let (certs, index) = match hub.backend {
        Backend::Sled => {
            let db = hub.open_store_db().await?;
            (db.open_tree("certs")?.len(), db.open_tree("by_patient")?.len())
        }
        Backend::Postgres => {
            let sql = hub.sql_client().await?;
            let count = async |table: &str| -> anyhow::Result<usize> {
                let n: i64 = sql
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await?
                    .get(0);
                Ok(n as usize)
            };
            (count("certs").await?, count("by_patient").await?)
        }
    };
    assert_eq!(certs, 1, "certificates stored");
    assert_eq!(index, 1, "index entries");
    Ok(())
}
}

on_each_store! {
#[tokio::test]
async fn refused_queries_say_what_is_wrong() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let p = hub.patient("E10000002");
    let mut client = hub.client("hosp-a").await?;
    let item = |i: usize| ItemCode {
        system: LOINC.into(),
        code: format!("{i}-0"),
    };
    let prior = |edit: &dyn Fn(&mut FindPriorRequest)| {
        let mut r = prior_request(&p, &[(LOINC, HGB)]);
        edit(&mut r);
        r
    };
    let history = |pseudonym: Vec<u8>, since_ms: i64| HistoryRequest {
        requester: String::new(),
        compact_proofs: false,
        patient_pseudonym: pseudonym,
        since_ms,
        include_earlier_versions: false,
        purpose: huren_proto::hub::Purpose::Treatment as i32,
        with_proofs: false,
        certificates_once: false,
    };

    let mut checks = Checks::default();
    let prior_cases: Vec<(&str, FindPriorRequest, &str)> = vec![
        (
            "FindPrior with a 16-byte pseudonym",
            prior(&|r| r.patient_pseudonym.truncate(16)),
            "patient_pseudonym must be 32 bytes",
        ),
        (
            "FindPrior without a pseudonym",
            prior(&|r| r.patient_pseudonym.clear()),
            "patient_pseudonym must be 32 bytes",
        ),
        (
            "FindPrior without items",
            prior(&|r| r.items.clear()),
            "at least one item code",
        ),
        (
            "FindPrior with 201 items",
            prior(&|r| r.items = (0..201).map(item).collect()),
            "201 item codes asked for; at most 200",
        ),
        (
            "FindPrior with an item without a code",
            prior(&|r| {
                r.items.push(ItemCode {
                    system: LOINC.into(),
                    code: String::new(),
                })
            }),
            "items[1] needs both a code system and a code",
        ),
        (
            "FindPrior with a negative as_of_ms",
            prior(&|r| r.as_of_ms = -1),
            "as_of_ms must not be negative",
        ),
        // The requester names who asks at the member: an id, never a person's name.
        (
            "FindPrior naming a person as requester",
            prior(&|r| r.requester = "张三".into()),
            "never a name",
        ),
        (
            "FindPrior with a requester holding a space",
            prior(&|r| r.requester = "Zhang San".into()),
            "found ' '",
        ),
        (
            "FindPrior with a 65-character requester",
            prior(&|r| r.requester = "d".repeat(65)),
            "requester must be 1 to 64 characters; got 65",
        ),
    ];
    for (case, req, phrase) in prior_cases {
        let result = client.find_prior(req).await;
        checks.refused(case, result, &[Code::InvalidArgument], phrase);
    }
    let history_cases = vec![
        (
            "History with a 16-byte pseudonym",
            history(vec![7; 16], 0),
            "patient_pseudonym must be 32 bytes",
        ),
        (
            "History with a 33-byte pseudonym",
            history(vec![7; 33], 0),
            "patient_pseudonym must be 32 bytes",
        ),
        (
            "History with a negative since_ms",
            history(p.as_bytes().to_vec(), -5),
            "since_ms must not be negative",
        ),
        (
            "History with a requester holding a line break",
            HistoryRequest {
                requester: "staff:1\nforged".into(),
                ..history(p.as_bytes().to_vec(), 0)
            },
            "A-Z and a-z, the digits and . _ : @ -",
        ),
    ];
    for (case, req, phrase) in history_cases {
        let result = client.history(req).await;
        checks.refused(case, result, &[Code::InvalidArgument], phrase);
    }
    let mut anonymous = hub.client_without_cert()?;
    checks.refused(
        "FindPrior without a client certificate",
        anonymous
            .find_prior(prior_request(&p, &[(LOINC, HGB)]))
            .await,
        TLS_REFUSED,
        "CertificateRequired",
    );
    let mut stranger = hub.client_from_other_ca("hosp-a")?;
    checks.refused(
        "History with a client certificate from another CA",
        stranger.history(history_request(&p, 0)).await,
        TLS_REFUSED,
        "received fatal alert",
    );
    checks.finish();
    // None of the refused queries left an access in the log.
    let accesses = hub.access_entries(ADMIN, &p).await?;
    assert!(
        accesses.iter().all(|e| e.method == "AccessReport"),
        "{accesses:?}"
    );

    // The limits themselves are allowed: exactly 200 items, a 64-character requester.
    let longest = "d".repeat(64);
    let named = prior(&|r| r.requester = longest.clone());
    assert!(
        client
            .find_prior(named)
            .await?
            .into_inner()
            .results
            .is_empty()
    );
    let accesses = hub.access_entries(ADMIN, &p).await?;
    assert!(
        accesses.iter().any(|e| e.requester == longest),
        "{accesses:?}"
    );
    let full = prior(&|r| r.items = (0..200).map(item).collect());
    let found = client.find_prior(full).await?.into_inner();
    assert!(found.results.is_empty());
    Ok(())
}
}

on_each_store! {
/// One batch of 300 bad summaries is one WARN line in the hub's log (the count per code and
/// the first reasons), not 300.
#[tokio::test]
async fn a_bad_batch_is_logged_in_one_line() -> anyhow::Result<()> {
    let mut hub = TestHub::start_process().await?;
    let a = hub.member("hosp-a")?;
    let mut client = hub.client("hosp-a").await?;
    let mut summaries = Vec::new();
    for i in 0..300u32 {
        summaries.push(sign_body(&a, vec![0x08, 0x01, 0xff, (i % 200) as u8])?);
    }
    let outcomes = client
        .publish_batch(huren_proto::hub::PublishBatchRequest { summaries })
        .await?
        .into_inner()
        .outcomes;
    assert_eq!(outcomes.len(), 300);
    drop(client);
    hub.stop_gracefully().await?;
    let mut log = String::new();
    for entry in std::fs::read_dir(hub.root())? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("hub-") && n.ends_with(".log"))
        {
            log.push_str(&std::fs::read_to_string(path)?);
        }
    }
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    assert_eq!(warnings, 1, "{log}");
    assert!(log.contains("summaries of a batch refused"), "{log}");
    Ok(())
}
}

/// Bytes sent as a request, as they are.
#[derive(Clone, Default)]
struct RawBytes;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

on_each_store! {
/// A request whose bytes are not a protobuf message of the method's type is the caller's
/// fault: INVALID_ARGUMENT (it was INTERNAL), and the hub keeps answering.
#[tokio::test]
async fn an_undecodable_request_is_invalid_argument() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    for path in [
        "/huren.hub.v1.Hub/Publish",
        "/huren.hub.v1.Hub/FindPrior",
        "/huren.hub.v1.Hub/PublishBatch",
    ] {
        let mut grpc = tonic::client::Grpc::new(hub.channel("hosp-a").await?);
        grpc.ready().await?;
        let status = grpc
            .unary(
                tonic::Request::new(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawBytes,
            )
            .await
            .expect_err("garbage was accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status.message().contains("not a valid protobuf"),
            "{status:?}"
        );
    }
    let mut client = hub.client("hosp-a").await?;
    client
        .find_prior(prior_request(&hub.patient("E00000501"), &[(LOINC, HGB)]))
        .await?;
    Ok(())
}
}

on_each_store! {
/// A TLS client certificate from the alliance CA without the clientAuth extended key usage
/// (TLS validation alone accepts a certificate without any for every purpose) is refused.
#[tokio::test]
async fn a_client_certificate_without_client_auth_is_refused() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let pem = hub
        .pki
        .issue_tls_without_eku(&InstitutionId::parse("hosp-a")?)?;
    let mut client = hub.client_with_tls(&pem)?;
    let status = client
        .find_prior(prior_request(&hub.patient("E00000502"), &[(LOINC, HGB)]))
        .await
        .expect_err("a certificate without clientAuth was accepted");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("clientAuth"), "{status:?}");
    Ok(())
}
}
