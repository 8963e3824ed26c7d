//! The agent's paths, measured beside the hub calls they are built on, from the same process
//! and one request at a time (what a physician or a nurse waits for):
//!
//! - a CDS Hooks `order-sign` answer for ten ordered items (issue 18: p99 ≤ 500 ms), through
//!   the agent's real EHR router (JWT checked, patient pseudonymised, CheckOrder at the hub,
//!   cards built), beside a bare CheckOrder of the same ten items;
//! - the web app's timeline page of a patient with 200 results (issue 17: p95 ≤ 300 ms),
//!   through the agent's real web router (session cookie, look-up handle, History at the hub,
//!   verification of every result, the page rendered), beside a bare History of the patient.
//!
//! Both patients' results are published through the hub before the measurement, on top of
//! the seeded store.

use std::sync::Arc;

use anyhow::{Context, ensure};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tonic::transport::Channel;
use tower::ServiceExt;

use huren_agent::{Agent, AgentConfig};
use huren_core::identity::InstitutionId;
use huren_core::pseudonym::{PatientId, PseudonymKey};
use huren_core::signing::SummarySigner;
use huren_proto::hub as pb;
use huren_proto::hub::hub_client::HubClient;

use super::{ASKER, Bench, ITEMS, LOINC, Load, load, summary};

/// The patient the CDS cards are for: one result of each of the eight items.
const CDS_PATIENT: &str = "BENCHCDS1";
/// The patient whose timeline is shown.
const TIMELINE_PATIENT: &str = "BENCHTL01";
const TIMELINE_RESULTS: u64 = 200;
const PASSPORT_SYSTEM: &str = "urn:huren:bench:passport";
const BASE: &str = "https://huren.bench.test";
const ISS: &str = "https://his.bench.test";
/// Ordered items without a result anywhere (the cards say why there is none).
const NOT_SEEDED: [&str; 2] = ["2093-3", "2571-8"];

/// What [`measure`] found.
pub struct AgentFigures {
    pub cds: Load,
    pub check_order: Load,
    pub timeline: Load,
    pub history: Load,
    /// Cards in one answer, results on the timeline page.
    pub cards: usize,
    pub history_results: usize,
}

/// Publishes the two patients' results, starts the county agent's EHR and web routers on the
/// hub at `hub_url`, and measures both paths for `seconds` each.
pub async fn measure(
    bench: &Bench,
    hub_url: &str,
    publisher: &[Channel],
    asker: &[Channel],
    signer: &SummarySigner,
    seconds: f64,
) -> anyhow::Result<AgentFigures> {
    let key = PseudonymKey::new(*bench.pki.pseudonym_key());
    let cds_patient = key.pseudonymise(&PatientId::new("passport", CDS_PATIENT)?);
    let timeline_patient = key.pseudonymise(&PatientId::new("passport", TIMELINE_PATIENT)?);
    let now = huren_core::summary::UnixMillis::now().0;
    let mut client = HubClient::new(publisher[0].clone());
    let mut to_publish = Vec::new();
    for n in 0..ITEMS.len() as u64 {
        let mut s = summary(n, 1, now, "BENCH-CDS")?;
        s.patient = cds_patient;
        to_publish.push(s);
    }
    for n in 0..TIMELINE_RESULTS {
        let mut s = summary(n, 1, now, "BENCH-TL")?;
        s.patient = timeline_patient;
        to_publish.push(s);
    }
    for s in &to_publish {
        client
            .publish(pb::PublishRequest {
                summary: Some(signer.sign(s)?.into()),
            })
            .await
            .with_context(|| format!("publishing {}", s.id))?;
    }

    let (agent, ehr_key) = county_agent(bench, hub_url).await?;
    let agent = Arc::new(agent);

    // CDS Hooks: ten draft orders (the eight items, two with no result anywhere).
    let ehr = huren_agent::ehr::router(huren_agent::ehr::EhrState::new(agent.clone())?);
    let codes: Vec<&str> = ITEMS
        .iter()
        .map(|(code, _)| *code)
        .chain(NOT_SEEDED)
        .collect();
    let body = order_sign(&codes).to_string();
    let uri = "/cds-services/huren-order-sign";
    let (status, answer) = cds_call(&ehr, &ehr_key, uri, &body).await?;
    ensure!(
        status == StatusCode::OK,
        "order-sign answered {status}: {answer}"
    );
    let cards = answer["cards"].as_array().map_or(0, Vec::len);
    ensure!(
        cards >= ITEMS.len(),
        "order-sign gave {cards} cards: {answer}"
    );
    let cds = {
        let (ehr, key, body) = (ehr.clone(), ehr_key.clone(), Arc::new(body));
        load("CDS Hooks order-sign", 1, seconds, move |_| {
            let (ehr, key, body) = (ehr.clone(), key.clone(), body.clone());
            async move {
                let (status, answer) = cds_call(&ehr, &key, uri, &body).await?;
                ensure!(
                    status == StatusCode::OK,
                    "order-sign answered {status}: {answer}"
                );
                Ok(())
            }
        })
        .await
    };
    let check_order = {
        let chan = asker[0].clone();
        let codes: Vec<String> = codes.iter().map(|c| (*c).to_owned()).collect();
        load(
            "CheckOrder (10 items, one at a time)",
            1,
            seconds,
            move |_| {
                let mut c = HubClient::new(chan.clone());
                let items = codes
                    .iter()
                    .map(|code| pb::OrderItem {
                        code: Some(pb::order_item::Code::Catalogue(pb::ItemCode {
                            system: LOINC.into(),
                            code: code.clone(),
                        })),
                    })
                    .collect();
                async move {
                    c.check_order(pb::CheckOrderRequest {
                        patient_pseudonym: cds_patient.as_bytes().to_vec(),
                        items,
                        as_of_ms: 0,
                        purpose: pb::Purpose::Treatment as i32,
                        requester: "staff:S-0042".into(),
                        with_proofs: false,
                        certificates_once: true,
                        compact_proofs: false,
                    })
                    .await?;
                    Ok(())
                }
            },
        )
        .await
    };

    // The web app: a clinician signed in, the timeline patient looked up once, its page
    // asked for again and again (each view is a History at the hub, as a reload is).
    let store = huren_agent::daemon::open_store(agent.config())?;
    huren_agent::web::accounts::add(&store, "bench1", "S-0042", "clinician", "bench horse 1")?;
    let web = huren_agent::web::app(
        huren_agent::web::WebState::new(agent.clone(), store)?,
        Router::new(),
    );
    let mut browser = Browser {
        app: web,
        cookies: Vec::new(),
    };
    let (_, _, page) = browser.send("GET", "/sign-in", None).await?;
    let csrf = csrf_of(&page)?;
    let (status, _, page) = browser
        .send(
            "POST",
            "/sign-in",
            Some(format!(
                "csrf={csrf}&username=bench1&password=bench+horse+1"
            )),
        )
        .await?;
    ensure!(
        status == StatusCode::SEE_OTHER,
        "sign-in answered {status}: {page}"
    );
    let (_, _, page) = browser.send("GET", "/", None).await?;
    let csrf = csrf_of(&page)?;
    let (status, location, page) = browser
        .send(
            "POST",
            "/find",
            Some(format!(
                "csrf={csrf}&id_type=passport&id={TIMELINE_PATIENT}&purpose=treatment"
            )),
        )
        .await?;
    ensure!(
        status == StatusCode::SEE_OTHER,
        "find answered {status}: {page}"
    );
    let timeline_path = location.context("find gave no address")?;
    let (status, _, page) = browser.send("GET", &timeline_path, None).await?;
    ensure!(status == StatusCode::OK, "the timeline answered {status}");
    let shown = page.matches(&format!("href=\"{timeline_path}/r/")).count();
    ensure!(
        shown as u64 >= TIMELINE_RESULTS,
        "the timeline links {shown} of the patient's {TIMELINE_RESULTS} results"
    );
    let browser = Arc::new(browser);
    let timeline = {
        let (browser, path) = (browser.clone(), Arc::new(timeline_path));
        load("web timeline page", 1, seconds, move |_| {
            let (browser, path) = (browser.clone(), path.clone());
            async move {
                let (status, _, _) = browser.get(&path).await?;
                ensure!(status == StatusCode::OK, "the timeline answered {status}");
                Ok(())
            }
        })
        .await
    };
    let mut history_results = 0;
    let history = {
        let mut c = HubClient::new(asker[0].clone());
        let answer = c
            .history(history_request(&timeline_patient))
            .await?
            .into_inner();
        history_results = history_results.max(answer.results.len());
        let chan = asker[0].clone();
        load("History (one at a time)", 1, seconds, move |_| {
            let mut c = HubClient::new(chan.clone());
            async move {
                c.history(history_request(&timeline_patient)).await?;
                Ok(())
            }
        })
        .await
    };
    ensure!(
        history_results as u64 >= TIMELINE_RESULTS,
        "History found {history_results} of the patient's {TIMELINE_RESULTS} results"
    );
    Ok(AgentFigures {
        cds,
        check_order,
        timeline,
        history,
        cards,
        history_results,
    })
}

fn history_request(patient: &huren_core::pseudonym::Pseudonym) -> pb::HistoryRequest {
    pb::HistoryRequest {
        patient_pseudonym: patient.as_bytes().to_vec(),
        since_ms: 0,
        // As the timeline asks (the agent's History): every version, certificates once.
        include_earlier_versions: true,
        purpose: pb::Purpose::Treatment as i32,
        with_proofs: false,
        certificates_once: true,
        requester: "staff:S-0042".into(),
        compact_proofs: false,
    }
}

/// The county hospital's agent on the bench's hub, with `[ehr]` (an EHR issuer whose ES384
/// key is returned) and a web app store.
async fn county_agent(
    bench: &Bench,
    hub_url: &str,
) -> anyhow::Result<(Agent, Arc<jsonwebtoken::EncodingKey>)> {
    let dir = bench.dir.path().join("county-agent");
    let asker = InstitutionId::parse(ASKER)?;
    let pki = bench
        .pki
        .write_to(&dir.join("pki"), &[], std::slice::from_ref(&asker))?;
    let files = pki.member(&asker).context("no files for the county")?;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
    let public = dir.join("his-jwt.pem");
    std::fs::write(&public, pair.public_key_pem())?;
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "institution = \"{ASKER}\"\nhub = \"{hub_url}\"\nhub_tls_name = \"localhost\"\n\
             [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
             [signing]\ncert = {:?}\nkey = {:?}\n\
             [pseudonym]\nkey_file = {:?}\n\
             [store]\npath = {:?}\n\
             [web]\nlisten = \"127.0.0.1:0\"\nplain_http_on_loopback = true\n\
             [ehr]\nbase_url = \"{BASE}\"\nhub_timeout_ms = 5000\n\
             identifier_systems = [{{ system = \"{PASSPORT_SYSTEM}\", id_type = \"passport\" }}]\n\
             [[ehr.issuers]]\nid = \"his\"\niss = \"{ISS}\"\npublic_keys = [{:?}]\n",
            pki.ca_cert,
            files.tls_cert,
            files.tls_key,
            files.signing_cert,
            files.signing_key,
            pki.pseudonym_key,
            dir.join("store"),
            public,
        ),
    )?;
    let agent = Agent::connect(AgentConfig::load(&path)?).await?;
    Ok((agent, Arc::new(key)))
}

/// An order-sign request for the CDS patient ordering `codes` (LOINC).
fn order_sign(codes: &[&str]) -> Value {
    let drafts: Vec<Value> = codes
        .iter()
        .enumerate()
        .map(|(i, code)| {
            json!({"resource": {
                "resourceType": "ServiceRequest",
                "id": format!("sr-{i}"),
                "status": "draft",
                "intent": "proposal",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": "Patient/p1"},
            }})
        })
        .collect();
    json!({
        "hookInstance": huren_agent::ehr::new_uuid(),
        "hook": "order-sign",
        "context": {
            "userId": "Practitioner/7",
            "patientId": "p1",
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": drafts},
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": "p1",
                "identifier": [{"system": PASSPORT_SYSTEM, "value": CDS_PATIENT}],
            }
        },
    })
}

/// One CDS Hooks call with a fresh token (each has its own jti, as an EHR sends).
async fn cds_call(
    router: &Router,
    key: &jsonwebtoken::EncodingKey,
    uri: &str,
    body: &str,
) -> anyhow::Result<(StatusCode, Value)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({
        "iss": ISS,
        "sub": "his-client",
        "aud": format!("{BASE}{uri}"),
        "exp": now + 240,
        "iat": now,
        "jti": huren_agent::ehr::new_uuid(),
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384),
        &claims,
        key,
    )?;
    let request = Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))?;
    let response = router.clone().oneshot(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, json))
}

/// A browser's cookie jar in front of the web router.
struct Browser {
    app: Router,
    cookies: Vec<String>,
}

impl Browser {
    /// Sends a request, keeping the cookies it sets; (status, Location, body).
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        form: Option<String>,
    ) -> anyhow::Result<(StatusCode, Option<String>, String)> {
        let (status, location, set, body) = self.request(method, path, form).await?;
        for cookie in set {
            let name = cookie.split('=').next().unwrap_or_default().to_owned();
            self.cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            self.cookies.push(cookie);
        }
        Ok((status, location, body))
    }

    /// A GET that keeps no cookie (the session is already set).
    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Option<String>, String)> {
        let (status, location, _, body) = self.request("GET", path, None).await?;
        Ok((status, location, body))
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        form: Option<String>,
    ) -> anyhow::Result<(StatusCode, Option<String>, Vec<String>, String)> {
        let mut request = Request::builder().method(method).uri(path);
        if !self.cookies.is_empty() {
            request = request.header(header::COOKIE, self.cookies.join("; "));
        }
        let request = match form {
            Some(f) => request
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(f))?,
            None => request.body(Body::empty())?,
        };
        let response = self.app.clone().oneshot(request).await?;
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        let set: Vec<String> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|c| c.to_str().ok())
            .filter_map(|c| c.split(';').next())
            .map(str::to_owned)
            .collect();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((
            status,
            location,
            set,
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }
}

/// The CSRF token of a page's first form.
fn csrf_of(page: &str) -> anyhow::Result<String> {
    const MARK: &str = "name=\"csrf\" value=\"";
    let at = page.find(MARK).context("no CSRF token on the page")? + MARK.len();
    let end = page[at..].find('"').context("an unterminated CSRF token")?;
    Ok(page[at..at + end].to_owned())
}
