//! The layout every page shares, and the pages that are not about a patient: sign-in,
//! sign-out, the language switch, home, errors.

use axum::Form;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use huren_core::summary::UnixMillis;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::accounts::{self, Role, SignIn};
use super::session::{Ctx, LANG_COOKIE, SessionChange, see_other, set_cookie};
use super::{Lang, WebState, assets};

/// Every route of the pages (the session layer is added by `web::app`).
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/", get(home))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/language", post(language))
        .route("/static/{name}", get(assets::serve))
        .route("/healthz", get(|| async { "ok" }))
        .merge(super::patient::routes())
        .merge(super::timeline::routes())
        .merge(super::reports::routes())
        .fallback(not_found)
}

/// The role's name in the page's language.
pub fn role_name(ctx: &Ctx, role: Role) -> String {
    ctx.t(match role {
        Role::Clinician => "role-clinician",
        Role::ReferralDesk => "role-referral-desk",
        Role::QualityOffice => "role-quality-office",
        Role::Administrator => "role-administrator",
    })
}

/// The red banner on every page once this agent caught the hub's log inconsistent.
fn log_alarm(ctx: &Ctx) -> Option<String> {
    let witness = ctx.state.agent().log()?;
    let alarms = witness.alarms();
    (!alarms.is_empty()).then(|| ctx.tw("banner-log-inconsistent", &[("count", alarms.len().into())]))
}

/// The page around `body`: header with navigation, account and language switch, banners.
pub fn layout(ctx: &Ctx, title: &str, body: Markup) -> Markup {
    let institution = ctx.state.agent().institution().to_string();
    html! {
        (DOCTYPE)
        html lang=(ctx.lang.tag()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · " (ctx.t("app-name")) }
                link rel="stylesheet" href=(assets::css_path());
                script src=(assets::js_path()) defer {}
            }
            body {
                a.skip href="#main" { (ctx.t("skip-to-content")) }
                header.top {
                    a.brand href="/" { (ctx.t("app-name")) }
                    span.who { (institution) }
                    @if let Some(a) = &ctx.account {
                        nav aria-label=(ctx.t("nav-label")) {
                            ul {
                                @if a.role.sees_patients() {
                                    li { a href="/" { (ctx.t("nav-find")) } }
                                }
                                @if a.role.sees_statistics() {
                                    li { a href="/statistics" { (ctx.t("nav-statistics")) } }
                                }
                                @if a.role.sees_access_reports() {
                                    li { a href="/access-report" { (ctx.t("nav-access-report")) } }
                                }
                                li { a href="/log" { (ctx.t("nav-log")) } }
                            }
                        }
                    }
                    div.right {
                        form method="post" action="/language" {
                            input type="hidden" name="csrf" value=(ctx.csrf);
                            input type="hidden" name="back" value=(ctx.path);
                            @for l in Lang::ALL {
                                @if l != ctx.lang {
                                    button type="submit" name="lang" value=(l.tag()) lang=(l.tag()) { (l.own_name()) }
                                }
                            }
                        }
                        @if let Some(a) = &ctx.account {
                            span.who { (a.username) " (" (role_name(ctx, a.role)) ")" }
                            form method="post" action="/sign-out" {
                                input type="hidden" name="csrf" value=(ctx.csrf);
                                button type="submit" { (ctx.t("sign-out")) }
                            }
                        }
                    }
                }
                @if let Some(alarm) = log_alarm(ctx) {
                    div.banner.alarm role="alert" { (alarm) " " a href="/log" { (ctx.t("banner-log-more")) } }
                }
                main #main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page response with status `status`.
pub fn page(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// An error page: what went wrong in plain words, and a way back.
pub fn error_page(ctx: &Ctx, status: StatusCode, message: &str) -> Response {
    let title = ctx.t(if status == StatusCode::NOT_FOUND {
        "error-not-found-title"
    } else {
        "error-title"
    });
    page(
        status,
        layout(
            ctx,
            &title,
            html! {
                div.error-summary role="alert" { p { (message) } }
                p { a href="/" { (ctx.t("back-home")) } }
            },
        ),
    )
}

async fn not_found(ctx: Ctx) -> Response {
    error_page(&ctx, StatusCode::NOT_FOUND, &ctx.t("error-not-found"))
}

/// The page to answer instead of the one asked for (sign in first, not allowed, no such
/// result…): a boxed [`Response`], so the `Result`s that carry it stay small.
pub struct Refusal(Box<Response>);

impl From<Response> for Refusal {
    fn from(r: Response) -> Self {
        Refusal(Box::new(r))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// The signed-in account, or a redirect to the sign-in page.
pub fn signed_in(ctx: &Ctx) -> Result<&accounts::Account, Refusal> {
    ctx.account.as_ref().ok_or_else(|| see_other("/sign-in").into())
}

/// The signed-in account if its role allows `allowed`, else 403 (or the sign-in page).
pub fn allowed(ctx: &Ctx, allowed: fn(Role) -> bool) -> Result<&accounts::Account, Refusal> {
    let a = signed_in(ctx)?;
    if allowed(a.role) {
        Ok(a)
    } else {
        Err(error_page(ctx, StatusCode::FORBIDDEN, &ctx.t("error-role")).into())
    }
}

async fn home(ctx: Ctx) -> Response {
    let me = match signed_in(&ctx) {
        Ok(a) => a.clone(),
        Err(r) => return r.into_response(),
    };
    if me.role.sees_patients() {
        return super::patient::find_page(&ctx, &me, None, StatusCode::OK);
    }
    page(
        StatusCode::OK,
        layout(
            &ctx,
            &ctx.t("home-title"),
            html! {
                p { (ctx.tw("home-welcome", &[("name", me.username.clone().into())])) }
                ul {
                    @if me.role.sees_statistics() { li { a href="/statistics" { (ctx.t("nav-statistics")) } } }
                    li { a href="/log" { (ctx.t("nav-log")) } }
                }
            },
        ),
    )
}

fn sign_in_form(ctx: &Ctx, error: Option<&str>, username: &str) -> Markup {
    layout(
        ctx,
        &ctx.t("sign-in-title"),
        html! {
            @if let Some(e) = error {
                div.error-summary role="alert" tabindex="-1" {
                    h2 { (ctx.t("sign-in-failed")) }
                    p { (e) }
                }
            }
            form.stack method="post" action="/sign-in" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                div {
                    label for="username" { (ctx.t("username")) }
                    input #username type="text" name="username" value=(username) autocomplete="username" required autofocus;
                }
                div {
                    label for="password" { (ctx.t("password")) }
                    input #password type="password" name="password" autocomplete="current-password" required;
                }
                div { button type="submit" { (ctx.t("sign-in")) } }
            }
        },
    )
}

async fn sign_in_page(ctx: Ctx) -> Response {
    if ctx.account.is_some() {
        return see_other("/");
    }
    page(StatusCode::OK, sign_in_form(&ctx, None, ""))
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

async fn sign_in(ctx: Ctx, Form(f): Form<SignInForm>) -> Response {
    let store = ctx.state.store().clone();
    let username = f.username.trim().to_owned();
    let name = username.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        accounts::sign_in(&store, &name, &f.password, UnixMillis::now())
    })
    .await;
    let (status, message) = match outcome {
        Ok(Ok(SignIn::Ok)) => {
            let id = ctx.sessions().sign_in(&ctx.session, &username);
            tracing::info!(user = %username, "web app: signed in");
            let mut r = see_other("/");
            r.extensions_mut().insert(SessionChange::New(id));
            return r;
        }
        Ok(Ok(SignIn::Wrong)) => (StatusCode::UNAUTHORIZED, ctx.t("sign-in-wrong")),
        Ok(Ok(SignIn::Locked(until))) => {
            tracing::warn!(user = %username, "web app: sign-in refused, account locked");
            (
                StatusCode::TOO_MANY_REQUESTS,
                ctx.tw("sign-in-locked", &[("until", ctx.zone().minute(until).into())]),
            )
        }
        Ok(Ok(SignIn::Disabled)) => (StatusCode::FORBIDDEN, ctx.t("sign-in-disabled")),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "web app: sign-in");
            (StatusCode::INTERNAL_SERVER_ERROR, ctx.t("error-internal"))
        }
        Err(e) => {
            tracing::error!(error = %e, "web app: sign-in task");
            (StatusCode::INTERNAL_SERVER_ERROR, ctx.t("error-internal"))
        }
    };
    page(status, sign_in_form(&ctx, Some(&message), &username))
}

async fn sign_out(ctx: Ctx) -> Response {
    ctx.sessions().end(&ctx.session);
    let mut r = see_other("/sign-in");
    r.extensions_mut().insert(SessionChange::Ended);
    r
}

#[derive(Deserialize)]
struct LanguageForm {
    #[serde(default)]
    lang: String,
    /// The page the switch was pressed on (a local path).
    #[serde(default)]
    back: String,
}

/// `back` if it is a page of this site that can be shown again with GET, else "/".
fn local_page(back: &str) -> &str {
    let ok = back.starts_with('/')
        && !back.starts_with("//")
        && !back.contains(['\\', '?', '#'])
        && back.len() <= 200
        && !["/sign-out", "/language"].contains(&back);
    if ok { back } else { "/" }
}

async fn language(ctx: Ctx, Form(f): Form<LanguageForm>) -> Response {
    let Some(lang) = Lang::parse(&f.lang) else {
        return error_page(&ctx, StatusCode::BAD_REQUEST, &ctx.t("error-language"));
    };
    let mut r = see_other(local_page(&f.back));
    r.headers_mut().append(
        axum::http::header::SET_COOKIE,
        set_cookie(&ctx.state, LANG_COOKIE, lang.tag(), Some(365 * 86_400)),
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_language_switch_returns_only_to_local_pages() {
        assert_eq!(super::local_page("/statistics"), "/statistics");
        for bad in ["//evil.example/", "https://evil.example/", "", "/\\evil", "/x?y", "/sign-out"] {
            assert_eq!(super::local_page(bad), "/", "{bad}");
        }
    }
}
