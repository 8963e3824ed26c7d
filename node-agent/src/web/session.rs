//! Server-side sessions, the CSRF check and the interface language, as one middleware
//! ([`layer`]) in front of every page; and the patient look-up handles.
//!
//! A browser holds only a random session id (cookie `huren_session`: HttpOnly, Secure,
//! SameSite=Strict); everything else stays here: the signed-in account's name, the session's
//! CSRF token, and its patient look-ups. Every POST must carry the session's token in the
//! form field `csrf`, or it is refused with 403 before any handler runs. Sessions end after
//! `[web] session_idle_minutes` without a request, and on sign-out; a restart of the agent
//! ends them all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use huren_core::logentry::Purpose;
use huren_core::pseudonym::Pseudonym;

use super::accounts::Account;
use super::{Lang, WebState};

pub const SESSION_COOKIE: &str = "huren_session";
pub const LANG_COOKIE: &str = "huren_lang";
/// The largest form body accepted (a pasted order list fits easily).
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Sessions kept at most; the least recently used go first beyond it.
const MAX_SESSIONS: usize = 10_000;

/// A random token: 32 bytes from the operating system, hex.
pub fn token() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // Without the OS's randomness nothing here is safe: make the token unusable.
        tracing::error!("the operating system gave no random bytes");
        return String::new();
    }
    hex::encode(bytes)
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

struct Session {
    csrf: String,
    user: Option<String>,
    last: Instant,
}

/// A patient look-up: what a handle in a page address stands for. The patient id itself is
/// not kept, only its pseudonym and a masked form to show.
#[derive(Clone, Debug)]
pub struct Lookup {
    session: String,
    pub pseudonym: Pseudonym,
    pub purpose: Purpose,
    /// The id with its middle hidden, e.g. "6101**********1235".
    pub masked: String,
    pub id_type: String,
    pub break_glass: bool,
    created: Instant,
    /// Results shown in this look-up (timeline, order check), verified; the pages name a
    /// result by its place here, so no result id appears in an address either.
    pub results: Vec<crate::verify::VerifiedResult>,
    /// What was recorded for a result here (by place): shown back on its page.
    pub decided: std::collections::BTreeMap<usize, String>,
}

/// Results one look-up keeps at most (then the oldest are dropped, and the pages that named
/// them ask to go back to the timeline).
const MAX_RESULTS_PER_LOOKUP: usize = 5_000;

/// Every session and look-up of this server.
pub struct Sessions {
    idle: Duration,
    lookup_ttl: Duration,
    sessions: Mutex<HashMap<String, Session>>,
    lookups: Mutex<HashMap<String, Lookup>>,
}

impl Sessions {
    pub fn new(idle: Duration, lookup_ttl: Duration) -> Self {
        Self {
            idle,
            lookup_ttl,
            sessions: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookups(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lookup>> {
        self.lookups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session without an account: (id, csrf token).
    fn begin(&self, user: Option<String>) -> (String, String) {
        let (id, csrf) = (token(), token());
        let mut s = self.sessions();
        if s.len() >= MAX_SESSIONS {
            let idle = self.idle;
            s.retain(|_, v| v.last.elapsed() < idle);
            if s.len() >= MAX_SESSIONS
                && let Some(oldest) = s.iter().min_by_key(|(_, v)| v.last).map(|(k, _)| k.clone())
            {
                s.remove(&oldest);
            }
        }
        s.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                user,
                last: Instant::now(),
            },
        );
        (id, csrf)
    }

    /// The session's csrf token and account name, if it is live (and marks it used).
    fn touch(&self, id: &str) -> Option<(String, Option<String>)> {
        let mut s = self.sessions();
        let live = s.get(id).is_some_and(|v| v.last.elapsed() < self.idle);
        if !live {
            s.remove(id);
            return None;
        }
        let v = s.get_mut(id)?;
        v.last = Instant::now();
        Some((v.csrf.clone(), v.user.clone()))
    }

    /// Signs `user` in: the old session ends and a new one (new id, new token) begins, so an
    /// id planted before sign-in is worth nothing after it.
    pub fn sign_in(&self, old: &str, user: &str) -> String {
        self.end(old);
        self.begin(Some(user.to_owned())).0
    }

    /// Ends a session and its look-ups.
    pub fn end(&self, id: &str) {
        self.sessions().remove(id);
        self.lookups().retain(|_, l| l.session != id);
    }

    /// Ends every session of `user` (disabled or password reset).
    pub fn end_user(&self, user: &str) {
        let ids: Vec<String> = self
            .sessions()
            .iter()
            .filter(|(_, v)| v.user.as_deref() == Some(user))
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.end(&id);
        }
    }

    /// Keeps a look-up for `session`; returns its handle.
    pub fn add_lookup(
        &self,
        session: &str,
        pseudonym: Pseudonym,
        purpose: Purpose,
        id_type: &str,
        masked: String,
        break_glass: bool,
    ) -> String {
        let handle = token()[..32].to_owned();
        let mut l = self.lookups();
        let ttl = self.lookup_ttl;
        l.retain(|_, v| v.created.elapsed() < ttl);
        l.insert(
            handle.clone(),
            Lookup {
                session: session.to_owned(),
                pseudonym,
                purpose,
                masked,
                id_type: id_type.to_owned(),
                break_glass,
                created: Instant::now(),
                results: Vec::new(),
                decided: Default::default(),
            },
        );
        handle
    }

    /// Keeps `results` in the look-up; returns the place of the first (the others follow).
    pub fn keep_results(
        &self,
        session: &str,
        handle: &str,
        results: &[crate::verify::VerifiedResult],
    ) -> Option<usize> {
        let mut l = self.lookups();
        let v = l.get_mut(handle).filter(|v| v.session == session)?;
        if v.results.len() + results.len() > MAX_RESULTS_PER_LOOKUP {
            v.results.clear();
            v.decided.clear();
        }
        let first = v.results.len();
        v.results.extend_from_slice(results);
        Some(first)
    }

    /// Notes what was recorded for the result at `place`.
    pub fn note_decision(&self, session: &str, handle: &str, place: usize, text: String) {
        let mut l = self.lookups();
        if let Some(v) = l.get_mut(handle).filter(|v| v.session == session) {
            v.decided.insert(place, text);
        }
    }

    /// The look-up behind `handle`, if it belongs to `session` and has not expired.
    pub fn lookup(&self, session: &str, handle: &str) -> Option<Lookup> {
        let mut l = self.lookups();
        match l.get(handle) {
            Some(v) if v.session == session && v.created.elapsed() < self.lookup_ttl => {
                Some(v.clone())
            }
            Some(v) if v.created.elapsed() >= self.lookup_ttl => {
                l.remove(handle);
                None
            }
            _ => None,
        }
    }
}

/// What a page handler knows about the request: the state, the language, the session and the
/// signed-in account (read from the store at each request, so a disabled account stops at once).
#[derive(Clone)]
pub struct Ctx {
    pub state: WebState,
    pub lang: Lang,
    pub session: String,
    pub csrf: String,
    pub account: Option<Account>,
    /// The request's path (never holds a patient id), for the language switch to come back to.
    pub path: String,
}

impl Ctx {
    /// A message in the request's language.
    pub fn t(&self, id: &str) -> String {
        self.state.0.catalogues.get(self.lang, id)
    }

    /// A message with arguments.
    pub fn tw(&self, id: &str, args: &[(&str, fluent_bundle::FluentValue<'_>)]) -> String {
        self.state.0.catalogues.with(self.lang, id, args)
    }

    pub fn zone(&self) -> &super::zone::Zone {
        &self.state.0.zone
    }

    pub fn sessions(&self) -> &Sessions {
        &self.state.0.sessions
    }
}

impl FromRequestParts<WebState> for Ctx {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _: &WebState) -> Result<Self, StatusCode> {
        parts
            .extensions
            .get::<Ctx>()
            .cloned()
            .ok_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Tells [`layer`] to give the browser a new session id (after sign-in) or none (sign-out).
#[derive(Clone, Debug)]
pub enum SessionChange {
    New(String),
    Ended,
}

/// A cookie's value from the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Path=/, and Secure over HTTPS.
pub fn set_cookie(state: &WebState, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if state.0.secure_cookies {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// The session and CSRF middleware (see the module doc).
pub async fn layer(State(state): State<WebState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let lang = cookie(&parts.headers, LANG_COOKIE)
        .and_then(Lang::parse)
        .unwrap_or(state.0.default_lang);
    let sessions = &state.0.sessions;
    let existing = cookie(&parts.headers, SESSION_COOKIE)
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|id| {
            sessions
                .touch(id)
                .map(|(csrf, user)| (id.to_owned(), csrf, user))
        });
    let (session, csrf, user, fresh) = match existing {
        Some((id, csrf, user)) => (id, csrf, user, false),
        None => {
            let (id, csrf) = sessions.begin(None);
            (id, csrf, None, true)
        }
    };
    let account = match user {
        Some(name) => match state.0.store.web_account(&name) {
            Ok(Some(record)) => match Account::from_record(record) {
                Some(a) if !a.disabled => Some(a),
                _ => {
                    sessions.end_user(&name);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "web app: account store");
                None
            }
        },
        None => None,
    };
    let ctx = Ctx {
        state: state.clone(),
        lang,
        session: session.clone(),
        csrf: csrf.clone(),
        account,
        path: parts.uri.path().to_owned(),
    };
    let body = if parts.method == Method::POST {
        let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
            Ok(b) => b,
            Err(_) => {
                return super::pages::error_page(
                    &ctx,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &ctx.t("error-too-large"),
                );
            }
        };
        let sent = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if fresh || !same(&sent, &csrf) {
            tracing::warn!(path = %parts.uri.path(), "web app: a form without a valid CSRF token was refused");
            let mut r = super::pages::error_page(&ctx, StatusCode::FORBIDDEN, &ctx.t("error-csrf"));
            if fresh {
                r.headers_mut().append(
                    header::SET_COOKIE,
                    set_cookie(&state, SESSION_COOKIE, &session, None),
                );
            }
            return r;
        }
        Body::from(bytes)
    } else {
        body
    };
    parts.extensions.insert(ctx);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    let change = response.extensions_mut().remove::<SessionChange>();
    let h = response.headers_mut();
    match change {
        Some(SessionChange::New(id)) => {
            h.append(
                header::SET_COOKIE,
                set_cookie(&state, SESSION_COOKIE, &id, None),
            );
        }
        Some(SessionChange::Ended) => {
            h.append(
                header::SET_COOKIE,
                set_cookie(&state, SESSION_COOKIE, "", Some(0)),
            );
        }
        None if fresh => {
            h.append(
                header::SET_COOKIE,
                set_cookie(&state, SESSION_COOKIE, &session, None),
            );
        }
        None => {}
    }
    response
}

/// 303 See Other to `to` (after a POST, so reloading the page does not send the form again).
pub fn see_other(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")),
        )],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_rotate_and_end() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60));
        let (id, csrf) = s.begin(None);
        assert_eq!(id.len(), 64);
        assert_eq!(s.touch(&id), Some((csrf, None)));
        let new = s.sign_in(&id, "nurse1");
        assert!(s.touch(&id).is_none(), "the pre-sign-in id is dead");
        assert_eq!(s.touch(&new).unwrap().1.as_deref(), Some("nurse1"));
        let p = Pseudonym::from_bytes([7; 32]);
        let h = s.add_lookup(&new, p, Purpose::Treatment, "passport", "E*".into(), false);
        assert!(s.lookup(&new, &h).is_some());
        assert!(
            s.lookup("other-session", &h).is_none(),
            "a handle is bound to its session"
        );
        s.end_user("nurse1");
        assert!(s.touch(&new).is_none());
        assert!(s.lookup(&new, &h).is_none());
    }

    #[test]
    fn idle_sessions_and_old_lookups_expire() {
        let s = Sessions::new(Duration::ZERO, Duration::ZERO);
        let (id, _) = s.begin(Some("a".into()));
        assert!(s.touch(&id).is_none());
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x_huren_session=1; huren_session=abc; huren_lang=en"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LANG_COOKIE), Some("en"));
        assert_eq!(cookie(&h, "nope"), None);
        assert!(same("ab", "ab") && !same("ab", "ac") && !same("", ""));
    }
}
