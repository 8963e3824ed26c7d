//! The web app's timeline page (issue 17) measured beside the hub calls under it: one patient
//! with [`RESULTS`] results, published by the tertiary hospital through its agent; the county
//! hospital's agent serves its web app (`huren_agent::web::serve`, plain HTTP on 127.0.0.1)
//! from this process, and a clinician's session asks for the timeline one page at a time. The
//! baselines, from the same process, one call at a time for the same patient: a bare FindPrior
//! of the eight items (gRPC, nothing verified), the History call the page makes (gRPC), and
//! `Agent::history` (History with every summary's signature verified, what the page shows).

use std::sync::Arc;

use anyhow::{Context, ensure};
use huren_agent::{Agent, AgentConfig, Asking};
use huren_core::identity::InstitutionId;
use huren_core::logentry::Purpose;
use huren_core::pseudonym::{PatientId, PseudonymKey};
use huren_proto::hub as pb;
use huren_proto::hub::hub_client::HubClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use super::{ASKER, BENCH_REQUESTER, Bench, ITEMS, LOINC, Load, PUBLISHER, load, summary};

/// Results of the measured patient.
pub const RESULTS: u64 = 200;
/// The measured patient (a synthetic resident identity card number).
const PATIENT_ID: &str = "610102196703151235";
const PASSWORD: &str = "bench-password-1";

/// The page and its baselines.
pub struct Timeline {
    pub page: Load,
    pub find_prior: Load,
    pub history: Load,
    pub verified: Load,
}

fn agent_config(bench: &Bench, hub: std::net::SocketAddr, id: &str, web: bool) -> anyhow::Result<AgentConfig> {
    let institution = InstitutionId::parse(id)?;
    let files = bench.paths.member(&institution).context("member files")?;
    let mut text = format!(
        "institution = \"{id}\"\nhub = \"https://127.0.0.1:{}\"\nhub_tls_name = \"localhost\"\n\
         [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[signing]\ncert = {:?}\nkey = {:?}\n\
         [pseudonym]\nkey_file = {:?}\n[store]\npath = {:?}\n",
        hub.port(),
        bench.paths.ca_cert,
        files.tls_cert,
        files.tls_key,
        files.signing_cert,
        files.signing_key,
        bench.paths.pseudonym_key,
        bench.dir.path().join(format!("agent-store-{id}")),
    );
    if web {
        text.push_str("[web]\nlisten = \"127.0.0.1:0\"\nplain_http_on_loopback = true\n");
    }
    let path = bench.dir.path().join(format!("agent-{id}.toml"));
    std::fs::write(&path, text)?;
    Ok(AgentConfig::load(&path)?)
}

/// One HTTP/1.1 exchange over a new connection: status, `Set-Cookie` pairs, `Location`, body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    cookie: &str,
    form: &str,
) -> anyhow::Result<(u16, Vec<String>, Option<String>, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !cookie.is_empty() {
        req.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(form);
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let (mut cookies, mut location) = (Vec::new(), None);
    for l in lines {
        let Some((name, value)) = l.split_once(':') else { continue };
        match name.trim().to_ascii_lowercase().as_str() {
            "set-cookie" => cookies.extend(value.split(';').next().map(|c| c.trim().to_owned())),
            "location" => location = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    Ok((status, cookies, location, body.to_owned()))
}

fn csrf_of(page: &str) -> anyhow::Result<String> {
    let at = page.find("name=\"csrf\" value=\"").context("no CSRF token on the page")? + 19;
    Ok(page.get(at..at + 64).context("short CSRF token")?.to_owned())
}

/// Publishes [`RESULTS`] results of the patient, signs a clinician in at the county
/// hospital's web app, and measures the timeline page and its baselines for `seconds` each.
pub async fn timeline(
    bench: &Bench,
    hub: std::net::SocketAddr,
    asker: Vec<Channel>,
    seconds: f64,
) -> anyhow::Result<Timeline> {
    let key = PseudonymKey::new(*bench.pki.pseudonym_key());
    let pseudonym = key.pseudonymise(&PatientId::new("cn-ric", PATIENT_ID)?);
    let publisher = Agent::connect(agent_config(bench, hub, PUBLISHER, false)?).await?;
    let now = huren_core::summary::UnixMillis::now().0;
    for n in 0..RESULTS {
        let mut s = summary(n, 1, now, "WEB")?;
        s.patient = pseudonym;
        let signed = publisher.sign(&s)?;
        publisher.publish(&s, signed).await?;
    }

    let config = agent_config(bench, hub, ASKER, true)?;
    let store = huren_agent::daemon::open_store(&config)?;
    huren_agent::web::accounts::add(&store, "doctor", "LT-D0423", "clinician", PASSWORD)?;
    let county = Arc::new(Agent::connect(config).await?);
    let state = huren_agent::web::WebState::new(county.clone(), store)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let web = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(huren_agent::web::serve(
        state,
        listener,
        axum::Router::new(),
        async {
            let _ = stopped.await;
        },
    ));

    // Sign in and look the patient up, as a person does.
    let (_, cookies, _, page) = http(web, "GET", "/sign-in", "", "").await?;
    let csrf = csrf_of(&page)?;
    let form = format!("csrf={csrf}&username=doctor&password={}", PASSWORD.replace(' ', "+"));
    let (status, cookies, _, _) = http(web, "POST", "/sign-in", &cookies.join("; "), &form).await?;
    ensure!(status == 303, "sign-in answered {status}");
    let cookie = cookies.join("; ");
    let (_, _, _, home) = http(web, "GET", "/", &cookie, "").await?;
    let form = format!("csrf={}&id_type=cn-ric&id={PATIENT_ID}&purpose=treatment", csrf_of(&home)?);
    let (status, _, location, _) = http(web, "POST", "/find", &cookie, &form).await?;
    let path = location.filter(|_| status == 303).with_context(|| format!("find answered {status}"))?;
    let (status, _, _, page) = http(web, "GET", &path, &cookie, "").await?;
    ensure!(
        status == 200 && page.contains(&format!("共 {RESULTS} 条结果")),
        "the timeline does not show {RESULTS} results ({status})"
    );

    let (cookie, path) = (Arc::new(cookie), Arc::new(path));
    let page = load(1, seconds, move |_| {
        let (cookie, path) = (cookie.clone(), path.clone());
        async move {
            let (status, _, _, _) = http(web, "GET", &path, &cookie, "").await?;
            ensure!(status == 200, "timeline answered {status}");
            Ok(())
        }
    })
    .await;

    let channel = asker.first().cloned().context("no channel")?;
    let p = pseudonym.as_bytes().to_vec();
    let c = channel.clone();
    let find_prior = load(1, seconds, move |_| {
        let mut c = HubClient::new(c.clone());
        let p = p.clone();
        async move {
            c.find_prior(pb::FindPriorRequest {
                patient_pseudonym: p,
                items: ITEMS
                    .iter()
                    .map(|(code, _)| pb::ItemCode { system: LOINC.into(), code: (*code).into() })
                    .collect(),
                as_of_ms: 0,
                lookback_seconds: 0,
                purpose: pb::Purpose::Treatment as i32,
                requester: BENCH_REQUESTER.into(),
                with_proofs: false,
                certificates_once: true,
            })
            .await?;
            Ok(())
        }
    })
    .await;
    let p = pseudonym.as_bytes().to_vec();
    let history = load(1, seconds, move |_| {
        let mut c = HubClient::new(channel.clone());
        let p = p.clone();
        async move {
            c.history(pb::HistoryRequest {
                patient_pseudonym: p,
                since_ms: 0,
                include_earlier_versions: true,
                purpose: pb::Purpose::Treatment as i32,
                with_proofs: false,
                certificates_once: true,
                requester: BENCH_REQUESTER.into(),
            })
            .await?;
            Ok(())
        }
    })
    .await;
    let verified = load(1, seconds, move |_| {
        let county = county.clone();
        async move {
            let a = county
                .history(
                    &Asking::new(Purpose::Treatment).by(BENCH_REQUESTER),
                    &pseudonym,
                    huren_core::summary::UnixMillis(0),
                    true,
                )
                .await?;
            ensure!(a.results.len() as u64 == RESULTS, "{} results", a.results.len());
            Ok(())
        }
    })
    .await;
    let _ = stop.send(());
    server.await??;
    Ok(Timeline { page, find_prior, history, verified })
}
