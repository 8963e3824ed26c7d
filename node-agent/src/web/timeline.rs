//! One patient's results: the timeline (every member's results, newest first, by item or by
//! visit), a result's detail with its full report and the closed-loop decision, and the order
//! check. Every page that shows results asks the hub anew, stating the look-up's purpose and
//! the person's staff id, and shows only results that verified; a result that failed
//! verification is shown as failing, beside the others.

use std::collections::BTreeMap;

use axum::Form;
use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use huren_core::rules::{Decision, Reason, RetestReason, Verdict};
use huren_core::summary::{Outcome, Status, UnixMillis};
use maud::{Markup, html};
use serde::Deserialize;

use super::WebState;
use super::pages::{Refusal, error_page, layout, page};
use super::patient::{patient_box, patient_of};
use super::session::{Ctx, Lookup, see_other};
use crate::verify::{FailedResult, VerifiedResult};
use crate::{AgentError, Asking, OrderItem};

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/p/{handle}", get(timeline))
        .route("/p/{handle}/r/{place}", get(detail).post(decide))
        .route("/p/{handle}/r/{place}/report", get(report))
        .route("/p/{handle}/order", get(order_form).post(order_check))
}

/// The page for an error from the agent: the hub's refusal in plain words, an unreachable hub,
/// or a log that failed verification (recorded, so every page shows the red banner).
pub fn agent_error(ctx: &Ctx, e: &AgentError) -> Response {
    match e {
        AgentError::Log(what) => {
            if let Some(w) = ctx.state.agent().log() {
                w.raise_alarm(what);
            }
            tracing::error!(error = %e, "web app: the hub's log failed verification");
            error_page(ctx, StatusCode::BAD_GATEWAY, &ctx.tw("error-log", &[("detail", e.to_string().into())]))
        }
        AgentError::Connect { .. } => {
            error_page(ctx, StatusCode::SERVICE_UNAVAILABLE, &ctx.t("error-hub-down"))
        }
        AgentError::Hub(status) => {
            let (code, key) = match status.code() {
                tonic::Code::PermissionDenied => (StatusCode::FORBIDDEN, "error-hub-denied"),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    (StatusCode::SERVICE_UNAVAILABLE, "error-hub-down")
                }
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "error-hub-refused")
                }
                _ => (StatusCode::BAD_GATEWAY, "error-hub-refused"),
            };
            tracing::warn!(code = ?status.code(), message = status.message(), "web app: the hub refused a call");
            error_page(ctx, code, &ctx.tw(key, &[("detail", status.message().to_owned().into())]))
        }
        other => {
            tracing::warn!(error = %other, "web app: a call to the hub failed");
            error_page(ctx, StatusCode::BAD_GATEWAY, &ctx.tw("error-hub-refused", &[("detail", other.to_string().into())]))
        }
    }
}

fn asking(me: &super::accounts::Account, l: &Lookup) -> Asking {
    Asking::new(l.purpose).by(me.staff_id.clone())
}

/// A verdict reason in the page's language.
fn reason_text(ctx: &Ctx, r: Reason) -> String {
    ctx.t(match r {
        Reason::NotInCatalogue => "reason-not-in-catalogue",
        Reason::OutsideValidityWindow => "reason-outside-window",
        Reason::PublisherNotQualified => "reason-not-qualified",
        Reason::Direction => "reason-direction",
        Reason::Voided => "reason-voided",
        Reason::Superseded => "reason-superseded",
        Reason::OutsideScope => "reason-outside-scope",
        Reason::PublisherRevoked => "reason-revoked",
    })
}

/// The verdict: a green RECOGNISED tag with the HR mark, or a red one with every reason in
/// plain words (the hub's own sentence beside each).
pub fn verdict_markup(ctx: &Ctx, v: Option<&Verdict>) -> Markup {
    html! {
        @match v {
            None => span.tag.warn { (ctx.t("verdict-none")) },
            Some(v) if v.recognised() => {
                span.tag.ok { (ctx.t("verdict-recognised")) }
                @if let Some(hr) = &v.hr_mark { " " span.tag.ok { (hr) } }
            }
            Some(v) => {
                span.tag.no { (ctx.t("verdict-not-recognised")) }
                ul.reasons {
                    @for (r, sentence) in &v.reasons {
                        li { (reason_text(ctx, *r)) @if !sentence.is_empty() { span.hint { " (" (sentence) ")" } } }
                    }
                }
            }
        }
    }
}

fn status_text(ctx: &Ctx, s: Status) -> String {
    ctx.t(match s {
        Status::Final => "status-final",
        Status::Amended => "status-amended",
        Status::Voided => "status-voided",
    })
}

/// The value with its unit and flag, or the exam's modality, site and impression.
fn value_text(r: &VerifiedResult) -> String {
    match &r.summary.outcome {
        Outcome::Lab(l) => {
            let flag = l.flag.hl7_code();
            let mut v = format!("{} {}", l.value, l.unit).trim().to_owned();
            if !flag.is_empty() && flag != "N" {
                v.push_str(&format!(" ({flag})"));
            }
            v
        }
        Outcome::Exam(e) => format!("{} {}: {}", e.modality, e.body_site, e.impression),
    }
}

fn item_text(r: &VerifiedResult) -> String {
    let i = &r.summary.item;
    if i.display.is_empty() {
        i.code.clone()
    } else {
        format!("{} ({})", i.display, i.code)
    }
}

/// Age in days and the validity window's end.
fn age_markup(ctx: &Ctx, r: &VerifiedResult, now: UnixMillis) -> Markup {
    let days = (now.0 - r.summary.performed_at.0).max(0) / 86_400_000;
    let until = r.verdict.as_ref().and_then(|v| v.valid_until);
    html! {
        (ctx.tw("age-days", &[("days", days.into())]))
        @if let Some(u) = until {
            br; span.hint {
                @if u.0 >= now.0 { (ctx.tw("valid-until", &[("date", ctx.zone().day(u).into())])) }
                @else { (ctx.tw("expired-on", &[("date", ctx.zone().day(u).into())])) }
            }
        }
    }
}

/// Signature and log-proof status of a verified result.
fn proof_markup(ctx: &Ctx) -> Markup {
    html! {
        span.tag.ok title=(ctx.t("signature-ok-long")) { (ctx.t("signature-ok")) }
        " "
        @if ctx.state.agent().log().is_some() {
            span.tag.ok title=(ctx.t("log-proof-ok-long")) { (ctx.t("log-proof-ok")) }
        } @else {
            span.tag.warn { (ctx.t("log-proof-off")) }
        }
    }
}

/// Results that failed verification: red, with whom to ask, never with their content.
fn failed_markup(ctx: &Ctx, failed: &[FailedResult]) -> Markup {
    html! {
        @for f in failed {
            div.failed role="alert" {
                strong { (ctx.t("failed-title")) }
                " " (ctx.tw("failed-text", &[("publisher", f.publisher.clone().into()), ("result", f.claimed.clone().into())]))
                br; span.hint { (f.reason) }
            }
        }
    }
}

fn result_rows(ctx: &Ctx, handle: &str, rows: &[(usize, &VerifiedResult)], now: UnixMillis, item_column: bool) -> Markup {
    html! {
        table {
            thead { tr {
                th scope="col" { (ctx.t("col-performed")) }
                @if item_column { th scope="col" { (ctx.t("col-item")) } }
                th scope="col" { (ctx.t("col-result")) }
                th scope="col" { (ctx.t("col-reference")) }
                th scope="col" { (ctx.t("col-publisher")) }
                th scope="col" { (ctx.t("col-age")) }
                th scope="col" { (ctx.t("col-verdict")) }
                th scope="col" { (ctx.t("col-version")) }
                th scope="col" { (ctx.t("col-verification")) }
            } }
            tbody {
                @for (place, r) in rows {
                    tr {
                        td { (ctx.zone().minute(r.summary.performed_at)) }
                        @if item_column { td { (item_text(r)) } }
                        td { a href=(format!("/p/{handle}/r/{place}")) { (value_text(r)) } }
                        td { @if let Outcome::Lab(l) = &r.summary.outcome { (l.reference_range) } }
                        td { (r.summary.publisher.to_string()) }
                        td { (age_markup(ctx, r, now)) }
                        td { (verdict_markup(ctx, r.verdict.as_ref())) }
                        td {
                            "v" (r.summary.version) " " (status_text(ctx, r.summary.status))
                            @if !r.summary.status_reason.is_empty() { br; span.hint { (r.summary.status_reason) } }
                            @for e in &r.earlier {
                                br; span.hint { "v" (e.summary.version) " " (status_text(ctx, e.summary.status)) ": " (value_text(e)) }
                            }
                        }
                        td { (proof_markup(ctx)) }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct TimelineQuery {
    #[serde(default)]
    by: String,
}

async fn timeline(ctx: Ctx, Path(handle): Path<String>, Query(q): Query<TimelineQuery>) -> Response {
    let (me, l) = match patient_of(&ctx, &handle) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let answer = match ctx
        .state
        .agent()
        .history(&asking(&me, &l), &l.pseudonym, UnixMillis(0), true)
        .await
    {
        Ok(a) => a,
        Err(e) => return agent_error(&ctx, &e),
    };
    if ctx.state.agent().log().is_some() {
        ctx.state.log_checked_now();
    }
    let first = ctx
        .sessions()
        .keep_results(&ctx.session, &handle, &answer.results)
        .unwrap_or(0);
    let now = UnixMillis::now();
    let by_visit = q.by == "visit";
    let numbered: Vec<(usize, &VerifiedResult)> =
        answer.results.iter().enumerate().map(|(i, r)| (first + i, r)).collect();
    // Groups in newest-first order of their newest result.
    let mut groups: Vec<(String, Vec<(usize, &VerifiedResult)>)> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (place, r) in &numbered {
        let key = if by_visit {
            format!("{} · {}", ctx.zone().day(r.summary.performed_at), r.summary.publisher)
        } else {
            item_text(r)
        };
        let g = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        if let Some(group) = groups.get_mut(g) {
            group.1.push((*place, r));
        }
    }
    let publishers: std::collections::BTreeSet<String> =
        answer.results.iter().map(|r| r.summary.publisher.to_string()).collect();
    let body = html! {
        (patient_box(&ctx, &l))
        p.no-print {
            a.button href=(format!("/p/{handle}/order")) { (ctx.t("nav-order-check")) }
            " "
            @if by_visit { a href=(format!("/p/{handle}")) { (ctx.t("group-by-item")) } }
            @else { a href=(format!("/p/{handle}?by=visit")) { (ctx.t("group-by-visit")) } }
            " "
            button type="button" data-print hidden { (ctx.t("print")) }
        }
        @if answer.withheld_by_consent {
            div.banner.notice role="status" { (ctx.t("withheld-by-consent")) }
        }
        (failed_markup(&ctx, &answer.failed))
        @if answer.results.is_empty() && !answer.withheld_by_consent {
            p { (ctx.t("no-results")) }
        } @else {
            p { (ctx.tw("timeline-summary", &[("results", answer.results.len().into()), ("publishers", publishers.len().into())])) }
        }
        @if answer.truncated { p.banner.notice { (ctx.t("truncated")) } }
        @for (title, rows) in &groups {
            section.group {
                h2 { (title) }
                (result_rows(&ctx, &handle, rows, now, by_visit))
            }
        }
    };
    page(StatusCode::OK, layout(&ctx, &ctx.t("timeline-title"), body))
}

fn result_at(ctx: &Ctx, l: &Lookup, handle: &str, place: &str) -> Result<(usize, VerifiedResult), Refusal> {
    place
        .parse::<usize>()
        .ok()
        .and_then(|n| l.results.get(n).cloned().map(|r| (n, r)))
        .ok_or_else(|| {
            let mut r = error_page(ctx, StatusCode::NOT_FOUND, &ctx.t("error-result-gone"));
            let _ = handle;
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Refusal::from(r)
        })
}

fn detail_page(ctx: &Ctx, handle: &str, l: &Lookup, place: usize, r: &VerifiedResult, notice: Option<(bool, String)>, status: StatusCode) -> Response {
    let s = &r.summary;
    let recognised = r.verdict.as_ref().is_some_and(|v| v.recognised());
    let decision_id = super::session::token()[..24].to_owned();
    let body = html! {
        (patient_box(ctx, l))
        p.no-print { a href=(format!("/p/{handle}")) { (ctx.t("back-to-timeline")) } }
        @if let Some((ok, text)) = &notice {
            @if *ok { div.success role="status" { (text) } } @else { div.error-summary role="alert" { p { (text) } } }
        }
        @if let Some(done) = l.decided.get(&place) {
            div.success role="status" { (ctx.tw("decision-shown", &[("what", done.clone().into())])) }
        }
        dl.facts {
            dt { (ctx.t("col-item")) } dd { (item_text(r)) " · " (s.item.system) }
            @match &s.outcome {
                Outcome::Lab(lab) => {
                    dt { (ctx.t("col-result")) } dd { strong { (lab.value) } " " (lab.unit) @if !lab.flag.hl7_code().is_empty() { " (" (lab.flag.hl7_code()) ")" } }
                    dt { (ctx.t("col-reference")) } dd { (lab.reference_range) }
                    dt { (ctx.t("specimen")) } dd { (lab.specimen) }
                }
                Outcome::Exam(e) => {
                    dt { (ctx.t("modality")) } dd { (e.modality) " " (e.body_site) }
                    dt { (ctx.t("impression")) } dd { (e.impression) }
                }
            }
            dt { (ctx.t("col-performed")) } dd { (ctx.zone().minute(s.performed_at)) }
            dt { (ctx.t("reported")) } dd { (ctx.zone().minute(s.reported_at)) }
            dt { (ctx.t("col-publisher")) } dd { (s.publisher.to_string()) }
            dt { (ctx.t("col-age")) } dd { (age_markup(ctx, r, UnixMillis::now())) }
            dt { (ctx.t("col-verdict")) } dd { (verdict_markup(ctx, r.verdict.as_ref())) }
            dt { (ctx.t("col-version")) } dd { "v" (s.version) " " (status_text(ctx, s.status)) @if !s.status_reason.is_empty() { " · " (s.status_reason) } }
            dt { (ctx.t("col-verification")) } dd { (proof_markup(ctx)) }
            dt { (ctx.t("summary-id")) } dd { (s.id.to_string()) }
            dt { (ctx.t("full-report")) } dd {
                a href=(format!("/p/{handle}/r/{place}/report")) { (ctx.t("open-report")) }
                " " span.hint { (s.report.media_type) " · SHA-256 " (hex::encode(&s.report.sha256[..8])) "…" }
            }
        }
        h2 { (ctx.t("decide-title")) }
        form.stack method="post" action=(format!("/p/{handle}/r/{place}")) {
            input type="hidden" name="csrf" value=(ctx.csrf);
            input type="hidden" name="decision_id" value=(decision_id);
            fieldset {
                legend { (ctx.t("decide-legend")) }
                label { input type="radio" name="decision" value="adopted" checked[recognised] disabled[!recognised]; (ctx.t("decide-adopt")) }
                label { input type="radio" name="decision" value="retested" checked[!recognised]; (ctx.t("decide-retest")) }
            }
            @if !recognised { p.hint { (ctx.t("decide-not-recognised-hint")) } }
            div {
                label for="reason" { (ctx.t("decide-reason")) }
                select #reason name="reason" {
                    option value="" { (ctx.t("decide-reason-none")) }
                    @for rr in RetestReason::ALL {
                        option value=(rr.code()) { (retest_reason_text(ctx, rr)) }
                    }
                }
            }
            div {
                label for="note" { (ctx.t("decide-note")) " " span.hint { (ctx.t("decide-note-hint")) } }
                textarea #note name="note" maxlength="1000" {}
            }
            div { button type="submit" { (ctx.t("decide-submit")) } }
        }
    };
    page(status, layout(ctx, &ctx.t("detail-title"), body))
}

/// A re-test reason in the page's language (national list, then local additions).
pub fn retest_reason_text(ctx: &Ctx, r: RetestReason) -> String {
    ctx.t(match r {
        RetestReason::ConditionChanged => "retest-condition-changed",
        RetestReason::FastChangingValue => "retest-fast-changing-value",
        RetestReason::CriticalStep => "retest-critical-step",
        RetestReason::Emergency => "retest-emergency",
        RetestReason::Appraisal => "retest-appraisal",
        RetestReason::Other => "retest-other",
        RetestReason::PatientRequest => "retest-patient-request",
        RetestReason::SourceFailedEqa => "retest-source-failed-eqa",
        RetestReason::TooOld => "retest-too-old",
        RetestReason::PhysicianJudgement => "retest-physician-judgement",
    })
}

async fn detail(ctx: Ctx, Path((handle, place)): Path<(String, String)>) -> Response {
    let (_me, l) = match patient_of(&ctx, &handle) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    match result_at(&ctx, &l, &handle, &place) {
        Ok((n, r)) => detail_page(&ctx, &handle, &l, n, &r, None, StatusCode::OK),
        Err(r) => r.into_response(),
    }
}

#[derive(Deserialize)]
struct DecideForm {
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    decision_id: String,
}

async fn decide(ctx: Ctx, Path((handle, place)): Path<(String, String)>, Form(f): Form<DecideForm>) -> Response {
    let (me, l) = match patient_of(&ctx, &handle) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let (n, r) = match result_at(&ctx, &l, &handle, &place) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let refuse = |text: String| detail_page(&ctx, &handle, &l, n, &r, Some((false, text)), StatusCode::UNPROCESSABLE_ENTITY);
    let reason = match f.reason.as_str() {
        "" => None,
        code => match RetestReason::from_code(code) {
            Some(rr) => Some(rr),
            None => return refuse(ctx.t("decide-bad-reason")),
        },
    };
    let note = f.note.trim().to_owned();
    let decision = match f.decision.as_str() {
        "adopted" if reason.is_some() => return refuse(ctx.t("decide-adopt-no-reason")),
        "adopted" => Decision::Adopted,
        "retested" => Decision::Retested { reason, note: note.clone() },
        _ => return refuse(ctx.t("decide-choose")),
    };
    if let Err(e) = huren_core::rules::check_decision(r.verdict.as_ref().is_some_and(|v| v.recognised()), &decision) {
        return refuse(ctx.tw("decide-refused", &[("detail", e.to_string().into())]));
    }
    let id_ok = f.decision_id.len() == 24 && f.decision_id.bytes().all(|b| b.is_ascii_hexdigit());
    if !id_ok {
        return refuse(ctx.t("decide-choose"));
    }
    let decision_id = format!("web-{}-{}", me.staff_id, f.decision_id);
    match ctx.state.agent().record_decision(&decision_id, &r.receipt, &decision).await {
        Ok(_) => {
            let what = match &decision {
                Decision::Adopted => ctx.t("decide-adopt"),
                Decision::Retested { reason, .. } => format!(
                    "{}: {}",
                    ctx.t("decide-retest"),
                    reason.map_or_else(|| ctx.t("decide-reason-none"), |rr| retest_reason_text(&ctx, rr))
                ),
            };
            let text = format!("{what} · {} · {}", me.staff_id, ctx.zone().minute(UnixMillis::now()));
            ctx.sessions().note_decision(&ctx.session, &handle, n, text);
            see_other(&format!("/p/{handle}/r/{n}"))
        }
        Err(AgentError::Hub(status)) if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition) => {
            refuse(ctx.tw("decide-refused", &[("detail", status.message().to_owned().into())]))
        }
        Err(e) => agent_error(&ctx, &e),
    }
}

async fn report(ctx: Ctx, Path((handle, place)): Path<(String, String)>) -> Response {
    let (_me, l) = match patient_of(&ctx, &handle) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let (_, r) = match result_at(&ctx, &l, &handle, &place) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let s = &r.summary;
    let Some(addr) = ctx.state.web_config().repositories.get(s.publisher.as_str()) else {
        return error_page(&ctx, StatusCode::NOT_FOUND, &ctx.tw("report-no-repository", &[("publisher", s.publisher.to_string().into())]));
    };
    let creds = match crate::credentials::Credentials::load(ctx.state.config()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "web app: credentials for a report fetch");
            return error_page(&ctx, StatusCode::INTERNAL_SERVER_ERROR, &ctx.t("error-internal"));
        }
    };
    let me = crate::repository::PeerIdentity {
        ca: &creds.ca,
        cert_pem: &creds.tls_cert_pem,
        key_pem: &creds.tls_key_pem,
        institution: &creds.institution,
    };
    let req = crate::repository::ReportRequest {
        addr,
        publisher: &s.publisher,
        summary_id: &s.id,
        version: s.version,
        expected_sha256: s.report.sha256,
    };
    match crate::repository::fetch_report(&me, &req).await {
        Ok(rep) => {
            let pdf = rep.media_type.eq_ignore_ascii_case("application/pdf");
            let ext = if pdf { "pdf" } else { "bin" };
            let disposition = format!(
                "{}; filename=\"report-{}-v{}.{ext}\"",
                if pdf { "inline" } else { "attachment" },
                s.id.as_str().replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
                rep.version
            );
            // Only a PDF is shown inline; anything else is a download, whatever type the
            // publisher claimed (a member's bytes are never rendered as a page of this site).
            let ctype = HeaderValue::from_static(if pdf { "application/pdf" } else { "application/octet-stream" });
            (
                [
                    (header::CONTENT_TYPE, ctype),
                    (header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment"))),
                ],
                rep.content,
            )
                .into_response()
        }
        Err(crate::repository::FetchError::DigestMismatch { .. }) => {
            error_page(&ctx, StatusCode::BAD_GATEWAY, &ctx.t("report-digest-mismatch"))
        }
        Err(e) => error_page(&ctx, StatusCode::BAD_GATEWAY, &ctx.tw("report-fetch-failed", &[("detail", e.to_string().into())])),
    }
}

fn order_page(ctx: &Ctx, handle: &str, l: &Lookup, codes: &str, answer: Option<Markup>, status: StatusCode) -> Response {
    let body = html! {
        (patient_box(ctx, l))
        p.no-print { a href=(format!("/p/{handle}")) { (ctx.t("back-to-timeline")) } }
        form.stack method="post" action=(format!("/p/{handle}/order")) {
            input type="hidden" name="csrf" value=(ctx.csrf);
            div {
                label for="codes" { (ctx.t("order-codes")) " " span.hint { (ctx.t("order-codes-hint")) } }
                textarea #codes name="codes" required { (codes) }
            }
            div { button type="submit" { (ctx.t("order-submit")) } }
        }
        @if let Some(a) = answer { (a) }
    };
    page(status, layout(ctx, &ctx.t("order-title"), body))
}

async fn order_form(ctx: Ctx, Path(handle): Path<String>) -> Response {
    match patient_of(&ctx, &handle) {
        Ok((_, l)) => order_page(&ctx, &handle, &l, "", None, StatusCode::OK),
        Err(r) => r.into_response(),
    }
}

#[derive(Deserialize)]
struct OrderForm {
    #[serde(default)]
    codes: String,
}

/// Most codes one order check takes.
const MAX_ORDER_ITEMS: usize = 50;

async fn order_check(ctx: Ctx, Path(handle): Path<String>, Form(f): Form<OrderForm>) -> Response {
    let (me, l) = match patient_of(&ctx, &handle) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let codes: Vec<String> = f
        .codes
        .split(|c: char| c.is_whitespace() || c == ',' || c == '，' || c == ';')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    if codes.is_empty() || codes.len() > MAX_ORDER_ITEMS || codes.iter().any(|c| c.len() > 128) {
        return order_page(&ctx, &handle, &l, &f.codes, Some(html! { div.error-summary role="alert" { p { (ctx.tw("order-bad", &[("max", MAX_ORDER_ITEMS.into())])) } } }), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let order: Vec<OrderItem> = codes
        .iter()
        .map(|c| match c.split_once('|') {
            Some((system, code)) => OrderItem::Catalogue { system: system.to_owned(), code: code.to_owned() },
            None => OrderItem::Local(c.clone()),
        })
        .collect();
    let checks = match ctx.state.agent().check_order(&asking(&me, &l), &l.pseudonym, &order, UnixMillis::now()).await {
        Ok(c) => c,
        Err(e) => return agent_error(&ctx, &e),
    };
    let best: Vec<VerifiedResult> = checks.iter().filter_map(|c| c.best.clone()).collect();
    let first = ctx.sessions().keep_results(&ctx.session, &handle, &best).unwrap_or(0);
    let mut next = first;
    let failed: Vec<FailedResult> = checks.iter().filter_map(|c| c.failed.clone()).collect();
    let reusable = best.len();
    let answer = html! {
        h2 { (ctx.t("order-answer")) }
        p { (ctx.tw("order-summary", &[("reusable", reusable.into()), ("items", checks.len().into())])) }
        (failed_markup(&ctx, &failed))
        table {
            thead { tr {
                th scope="col" { (ctx.t("order-col-ordered")) }
                th scope="col" { (ctx.t("col-item")) }
                th scope="col" { (ctx.t("order-col-advice")) }
                th scope="col" { (ctx.t("order-col-prior")) }
                th scope="col" { (ctx.t("col-verdict")) }
            } }
            tbody {
                @for (code, c) in codes.iter().zip(&checks) {
                    tr {
                        td { (code) }
                        td { @if let Some((_, item)) = &c.item { (c.item_name) " (" (item) ")" } @else { "—" } }
                        @if let Some(b) = &c.best {
                            @let place = { let p = next; next += 1; p };
                            td { span.tag.ok { (ctx.t("order-reuse")) } }
                            td {
                                a href=(format!("/p/{handle}/r/{place}")) { (value_text(b)) }
                                br; span.hint { (ctx.zone().minute(b.summary.performed_at)) " · " (b.summary.publisher.to_string()) }
                            }
                            td { (verdict_markup(&ctx, b.verdict.as_ref())) }
                        } @else {
                            td { span.tag.warn { (ctx.t("order-order")) } }
                            td colspan="2" {
                                @if c.failed.is_some() { (ctx.t("order-best-failed")) }
                                @else {
                                    // In plain words here; the hub's own sentence beside it.
                                    @if c.item.is_none() { (ctx.t("order-not-mapped")) }
                                    @else if c.candidates == 0 { (ctx.t("order-none-found")) }
                                    @else { (ctx.tw("order-none-recognised", &[("count", c.candidates.into())])) }
                                    @if !c.explanation.is_empty() { br; span.hint { "(" (c.explanation) ")" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    order_page(&ctx, &handle, &l, &f.codes, Some(answer), StatusCode::OK)
}
