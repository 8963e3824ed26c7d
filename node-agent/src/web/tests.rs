//! The web app through its router (no browser: tests/it/web_browser.rs drives a real Chromium
//! against a real hub): headers, sessions, CSRF, sign-in, language.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use super::*;

/// A member's configuration with a development PKI and a store; the hub is never reached.
fn state(dir: &std::path::Path) -> WebState {
    let id = huren_core::identity::InstitutionId::parse("lantian-county").unwrap();
    let pki = huren_certs_dev::init_dir(&dir.join("pki"), &[], std::slice::from_ref(&id)).unwrap();
    let files = pki.member(&id).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "institution = \"lantian-county\"\nhub = \"https://127.0.0.1:9\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[signing]\ncert = {:?}\nkey = {:?}\n[pseudonym]\nkey_file = {:?}\n[store]\npath = {:?}\n[web]\nlisten = \"127.0.0.1:0\"\n",
            pki.ca_cert, files.tls_cert, files.tls_key, files.signing_cert, files.signing_key,
            pki.pseudonym_key, dir.join("store")
        ),
    )
    .unwrap();
    let config = AgentConfig::load(&path).unwrap();
    let store = crate::daemon::open_store(&config).unwrap();
    accounts::add(&store, "nurse1", "S-0042", "referral-desk", "correct horse 1").unwrap();
    let agent = Arc::new(Agent::connect_lazily(config).unwrap());
    WebState::new(agent, store).unwrap()
}

struct Browser {
    app: Router,
    cookies: Vec<String>,
}

impl Browser {
    async fn send(&mut self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = req;
        if !self.cookies.is_empty() {
            req.headers_mut()
                .insert(header::COOKIE, self.cookies.join("; ").parse().unwrap());
        }
        let r = self.app.clone().oneshot(req).await.unwrap();
        let (parts, body) = r.into_parts();
        for c in parts.headers.get_all(header::SET_COOKIE) {
            let pair = c.to_str().unwrap().split(';').next().unwrap().to_owned();
            let name = pair.split('=').next().unwrap().to_owned();
            self.cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            if !pair.ends_with('=') {
                self.cookies.push(pair);
            }
        }
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn get(&mut self, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        self.send(Request::get(path).body(Body::empty()).unwrap()).await
    }

    async fn post(&mut self, path: &str, form: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        self.send(
            Request::post(path)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form.to_owned()))
                .unwrap(),
        )
        .await
    }
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    page[at..at + 64].to_owned()
}

#[tokio::test]
async fn headers_sessions_csrf_sign_in_and_language() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Browser {
        app: app(state(dir.path()), Router::new()),
        cookies: Vec::new(),
    };
    // Not signed in: to the sign-in page.
    let (status, h, _) = b.get("/").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/sign-in");
    let (status, h, page) = b.get("/sign-in").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert!(page.contains("lang=\"zh-CN\"") && page.contains("登录"), "Chinese first");
    assert!(!page.contains("<script>"), "no inline script");
    // The stylesheet is served from the binary.
    let css = page.split("href=\"/static/").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let (status, h, body) = b.get(&format!("/static/{css}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/css"));
    assert!(body.contains("@media print"));
    assert_eq!(b.get("/static/evil.css").await.0, StatusCode::NOT_FOUND);
    // A form without its token changes nothing.
    let (status, _, page) = b.post("/sign-in", "username=nurse1&password=correct+horse+1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("表单已过期"));
    let (_, _, page) = b.get("/sign-in").await;
    let csrf = csrf_of(&page);
    let (status, _, page) = b
        .post("/sign-in", &format!("csrf={csrf}&username=nurse1&password=wrong+horse"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("用户名或密码不正确"));
    let before = b.cookies.clone();
    let (status, h, _) = b
        .post("/sign-in", &format!("csrf={csrf}&username=nurse1&password=correct+horse+1"))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = h[header::SET_COOKIE].to_str().unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert_ne!(before, b.cookies, "a new session id after sign-in");
    let (status, _, page) = b.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("查找患者") && page.contains("nurse1"));
    // The old token is dead with the old session.
    let (status, _, _) = b.post("/language", &format!("csrf={csrf}&lang=en")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let csrf = csrf_of(&page);
    let (status, h, _) = b
        .post("/language", &format!("csrf={csrf}&lang=en&back=%2Fsign-in"))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/sign-in");
    let (_, _, page) = b.get("/").await;
    assert!(page.contains("lang=\"en\"") && page.contains("Find patient"));
    let (status, _, page) = b.get("/no/such/page").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("There is no such page"));
    // Signing out ends the session.
    let (status, _, _) = b.post("/sign-out", &format!("csrf={csrf}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/").await.0, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn plain_http_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    let mut web = s.web_config().clone();
    web.plain_http_on_loopback = true;
    let mut config = s.config().clone();
    config.web = Some(web);
    let agent = Arc::new(Agent::connect_lazily(config).unwrap());
    let s2 = WebState::new(agent, s.store().clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = serve(s2, listener, Router::new(), async {}).await.unwrap_err();
    assert!(err.to_string().contains("only allowed on 127.0.0.1"), "{err}");
}
