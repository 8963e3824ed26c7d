//! The web app on the member's agent: the pages the referral desk, clinicians, the quality
//! office and administrators use (issue 17). It runs in the agent because the agent holds the
//! pseudonymisation key: a patient id typed into a page is pseudonymised here and never leaves
//! this process; the hub sees the pseudonym, the purpose and the person's staff id.
//!
//! ```text
//!  browser ──HTTPS──▶ serve ─▶ security headers ─▶ session + CSRF ─▶ page handler ─▶ Agent ─▶ hub
//!                       │                                            (maud template,
//!                       └─▶ extra routes (CDS Hooks, FHIR: issue 18)   fluent catalogue)
//! ```
//!
//! - [`serve`]: HTTPS with the member's certificate (or `[web] cert`/`key`), or plain HTTP on a
//!   loopback address with `plain_http_on_loopback`; stops gracefully on `shutdown`.
//! - `session`: server-side sessions (cookie `huren_session`: HttpOnly, Secure,
//!   SameSite=Strict), a CSRF token checked on every POST, and the interface language.
//! - `accounts`: local accounts in the agent's store, Argon2id, lock-out with back-off.
//! - `i18n`: one fluent catalogue per language (`locales/zh-CN.ftl` default, `locales/en.ftl`).
//! - `pages`: the layout and pages (maud: compiled, escaped).
//! - `assets`: the stylesheet and script, embedded in the binary (no CDN).
//!
//! Every response carries a Content-Security-Policy without inline script,
//! `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.
//!
//! # Mounting other routes (the hook for CDS Hooks and the FHIR API)
//!
//! [`serve`] and [`app`] take an `extra: axum::Router` merged beside the pages. Build it with
//! the shared [`WebState`] (`Router::new().route("/fhir/metadata", get(h)).with_state(state)`):
//! it holds the one [`Agent`](crate::Agent) (`state.agent()`), the configuration
//! (`state.config()`, `state.web_config()`) and the store (`state.store()`). The extra routes
//! get the security headers but not the cookie session or its CSRF check (hospital systems
//! authenticate otherwise); they must use their own path prefixes (`/cds-services`, `/fhir`)
//! and set no fallback (axum refuses two). These signatures stay stable.

pub mod accounts;
mod assets;
mod i18n;
mod pages;
mod patient;
mod reports;
mod session;
#[cfg(test)]
mod tests;
mod timeline;
mod tls;
mod zone;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::Agent;
use crate::config::{AgentConfig, WebConfig};
use crate::store::Store;

pub use accounts::Role;
pub use i18n::Lang;

/// Why the web app could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("the configuration has no [web] section")]
    NotConfigured,
    #[error("[web] {0}")]
    Config(String),
    #[error("[web] cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("[web] TLS: {0}")]
    Tls(String),
    #[error("[web] serving: {0}")]
    Serve(std::io::Error),
}

/// What every page handler (and the routes mounted beside them) shares: one per server,
/// cheap to clone.
#[derive(Clone)]
pub struct WebState(Arc<Inner>);

struct Inner {
    agent: Arc<Agent>,
    store: Arc<Store>,
    web: WebConfig,
    zone: zone::Zone,
    catalogues: i18n::Catalogues,
    sessions: session::Sessions,
    default_lang: Lang,
    secure_cookies: bool,
    /// When this web app last saw the hub's checkpoint verified consistent (ms; 0: never).
    last_log_check: std::sync::atomic::AtomicI64,
}

impl WebState {
    /// The state for `agent`, whose configuration must have a `[web]` section, over `store`
    /// (the agent's store: accounts live there; `huren-agent run` passes the daemon's).
    pub fn new(agent: Arc<Agent>, store: Arc<Store>) -> Result<Self, WebError> {
        let web = agent.config().web.clone().ok_or(WebError::NotConfigured)?;
        let zone = zone::Zone::named(&web.time_zone).map_err(WebError::Config)?;
        let default_lang = Lang::parse(&web.default_language).ok_or_else(|| {
            WebError::Config(format!(
                "default_language {:?}: use \"zh-CN\" or \"en\"",
                web.default_language
            ))
        })?;
        let catalogues = i18n::Catalogues::load().map_err(WebError::Config)?;
        let sessions = session::Sessions::new(
            std::time::Duration::from_secs(web.session_idle_minutes.max(1) * 60),
            std::time::Duration::from_secs(web.lookup_minutes.max(1) * 60),
        );
        Ok(Self(Arc::new(Inner {
            agent,
            store,
            secure_cookies: !web.plain_http_on_loopback,
            web,
            zone,
            catalogues,
            sessions,
            default_lang,
            last_log_check: std::sync::atomic::AtomicI64::new(0),
        })))
    }

    pub fn agent(&self) -> &Arc<Agent> {
        &self.0.agent
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.0.store
    }

    pub fn config(&self) -> &AgentConfig {
        self.0.agent.config()
    }

    pub fn web_config(&self) -> &WebConfig {
        &self.0.web
    }

    /// Notes that the hub's latest checkpoint was just verified consistent with what this
    /// agent saw before (every verified answer with `[log]` does that).
    pub fn log_checked_now(&self) {
        self.0.last_log_check.store(
            huren_core::summary::UnixMillis::now().0,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn last_log_check(&self) -> Option<huren_core::summary::UnixMillis> {
        match self
            .0
            .last_log_check
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            t => Some(huren_core::summary::UnixMillis(t)),
        }
    }
}

/// The header in which the server passes the names of a connection's verified TLS client
/// certificate to the routes (the EHR's authentication). Whatever a caller sends in it is
/// removed first.
pub const TLS_CLIENT_HEADER: &str = "x-huren-tls-client";

/// Replaces [`TLS_CLIENT_HEADER`] with the names of the connection's verified client
/// certificate, if any (never what the caller sent).
async fn tls_client_names(mut request: Request, next: Next) -> Response {
    request.headers_mut().remove(TLS_CLIENT_HEADER);
    let names = request
        .extensions()
        .get::<axum::extract::ConnectInfo<tls::PeerNames>>()
        .map(|c| c.0.0.join(","))
        .unwrap_or_default();
    if !names.is_empty()
        && let Ok(v) = HeaderValue::from_str(&names)
    {
        request.headers_mut().insert(TLS_CLIENT_HEADER, v);
    }
    next.run(request).await
}

/// The whole application: the pages (behind sessions and CSRF checks) and `extra` (see the
/// module doc), all behind the security headers.
pub fn app(state: WebState, extra: Router) -> Router {
    let pages = pages::routes()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::layer,
        ))
        .with_state(state);
    Router::new()
        .merge(pages)
        .merge(extra)
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(tls_client_names))
}

/// Content-Security-Policy of every response: scripts and styles only from this server (no
/// inline script), no framing, forms only to this server.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Serves the web app on `listener` until `shutdown` completes: HTTPS with `[web] cert`/`key`
/// (default the member's `[tls]` certificate), or plain HTTP when `plain_http_on_loopback` is
/// set and the listener is on a loopback address. `extra`: routes mounted beside the pages
/// (see the module doc; `Router::new()` for none).
pub async fn serve(
    state: WebState,
    listener: tokio::net::TcpListener,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebError> {
    let local = listener.local_addr().map_err(WebError::Serve)?;
    let web = state.web_config().clone();
    let app = app(state.clone(), extra);
    if web.plain_http_on_loopback {
        if !local.ip().is_loopback() {
            return Err(WebError::Config(format!(
                "plain_http_on_loopback is set but the web app listens on {local}: plain HTTP is only allowed on 127.0.0.1 or ::1; remove the flag to serve HTTPS"
            )));
        }
        tracing::info!(addr = %local, "web app serving plain HTTP on loopback");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(WebError::Serve)
    } else {
        let config = state.config();
        let cert_path = web.cert.clone().unwrap_or_else(|| config.tls.cert.clone());
        let key_path = web.key.clone().unwrap_or_else(|| config.tls.key.clone());
        let client_ca = match config.ehr.as_ref().and_then(|e| e.client_ca.as_ref()) {
            Some(path) => Some(read(path)?),
            None => None,
        };
        let acceptor = tls::acceptor(&read(&cert_path)?, &read(&key_path)?, client_ca.as_deref())?;
        tracing::info!(addr = %local, "web app serving HTTPS");
        axum::serve(
            tls::TlsListener::new(listener, acceptor),
            app.into_make_service_with_connect_info::<tls::PeerNames>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(WebError::Serve)
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, WebError> {
    std::fs::read(path).map_err(|source| WebError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Binds `[web] listen` (a clear error when the address is taken).
pub async fn bind(web: &WebConfig) -> Result<tokio::net::TcpListener, WebError> {
    tokio::net::TcpListener::bind(web.listen)
        .await
        .map_err(|e| WebError::Config(format!("cannot listen on {}: {e}", web.listen)))
}

/// `huren-agent serve`: connects to the hub, opens the store and serves until `shutdown`.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::daemon::DaemonError> {
    let web = config
        .web
        .clone()
        .ok_or(crate::daemon::DaemonError::MissingSection("web"))?;
    let store = crate::daemon::open_store(&config)?;
    let agent = Arc::new(Agent::connect_lazily(config)?);
    let extra = crate::ehr::extra_routes(agent.clone())
        .map_err(|e| crate::daemon::DaemonError::Config(e.to_string()))?;
    let state = WebState::new(agent, store.clone())
        .map_err(|e| crate::daemon::DaemonError::Config(e.to_string()))?;
    let listener = bind(&web)
        .await
        .map_err(|e| crate::daemon::DaemonError::Config(e.to_string()))?;
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "huren-agent serve");
    let result = serve(state, listener, extra, shutdown).await;
    let _ = store.flush();
    result.map_err(|e| crate::daemon::DaemonError::Config(e.to_string()))
}
