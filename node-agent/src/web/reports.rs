//! Pages that are not about one patient's results: statistics (tables, a chart drawn here as
//! SVG, CSV), the access report (administrators), the log status.

use axum::Form;
use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use huren_core::stats::{GroupBy, Row};
use huren_core::summary::UnixMillis;
use maud::{Markup, html};
use serde::Deserialize;

use super::WebState;
use super::accounts::Role;
use super::pages::{allowed, error_page, layout, page, signed_in};
use super::patient::{id_type_name, purpose_name};
use super::session::{Ctx, see_other};
use super::timeline::agent_error;
use crate::client::Statistics;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/statistics", get(statistics))
        .route("/statistics.csv", get(statistics_csv))
        .route("/access-report", get(access_form).post(access_report))
        .route("/log", get(log_status))
        .route("/log/check", post(log_check))
}

const DAY_MS: i64 = 86_400_000;

#[derive(Default, Deserialize)]
struct StatsQuery {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    by: String,
}

struct Period {
    from: UnixMillis,
    /// Exclusive: the day after the last day asked.
    to: UnixMillis,
    from_day: String,
    to_day: String,
    by: GroupBy,
    by_code: &'static str,
}

/// The period and grouping asked for (dates in the configured zone, `to` inclusive); the last
/// 30 days by item when nothing is given. `Err`: the message for a person.
fn period(ctx: &Ctx, q: &StatsQuery) -> Result<Period, String> {
    let zone = ctx.zone();
    let today = zone.day(UnixMillis::now());
    let to_day = if q.to.trim().is_empty() { today } else { q.to.trim().to_owned() };
    let last = zone.parse_day(&to_day).ok_or_else(|| ctx.t("stats-bad-date"))?;
    let from_day = if q.from.trim().is_empty() {
        zone.day(UnixMillis(last.0 - 29 * DAY_MS))
    } else {
        q.from.trim().to_owned()
    };
    let from = zone.parse_day(&from_day).ok_or_else(|| ctx.t("stats-bad-date"))?;
    if from.0 > last.0 {
        return Err(ctx.t("stats-bad-period"));
    }
    let (by, by_code) = match q.by.as_str() {
        "" | "item" => (GroupBy::Item, "item"),
        "member" => (GroupBy::Member, "member"),
        "day" => (GroupBy::Day, "day"),
        "month" => (GroupBy::Month, "month"),
        _ => return Err(ctx.t("stats-bad-group")),
    };
    Ok(Period {
        from,
        to: UnixMillis(last.0 + DAY_MS),
        from_day,
        to_day,
        by,
        by_code,
    })
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "—".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// A horizontal bar chart, drawn here: per group, results found, adopted and re-tested.
pub fn chart(ctx: &Ctx, rows: &[(Row, String)]) -> Markup {
    const LABEL_W: u32 = 220;
    const BAR_H: u32 = 10;
    const GROUP_H: u32 = 3 * BAR_H + 14;
    const PLOT_W: u32 = 600;
    let shown: Vec<&(Row, String)> = rows.iter().take(30).collect();
    let max = shown
        .iter()
        .map(|(r, _)| r.found.max(r.adopted).max(r.retested))
        .max()
        .unwrap_or(0)
        .max(1);
    let height = 40 + GROUP_H * u32::try_from(shown.len()).unwrap_or(30);
    let width = LABEL_W + PLOT_W + 60;
    let bar = |v: u64| -> u64 { v * u64::from(PLOT_W) / max };
    let series = [
        ("#0b5394", ctx.t("stats-found")),
        ("#116329", ctx.t("stats-adopted")),
        ("#a40e26", ctx.t("stats-retested")),
    ];
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" role="img" width=(width) height=(height)
            viewBox=(format!("0 0 {width} {height}")) aria-labelledby="chart-title" {
            title #chart-title { (ctx.t("stats-chart-title")) }
            @for (i, (colour, name)) in series.iter().enumerate() {
                rect x=(LABEL_W + 150 * u32::try_from(i).unwrap_or(0)) y="8" width="12" height="12" fill=(colour) {}
                text x=(LABEL_W + 150 * u32::try_from(i).unwrap_or(0) + 18) y="19" { (name) }
            }
            @for (g, (row, label)) in shown.iter().enumerate() {
                @let y = 32 + GROUP_H * u32::try_from(g).unwrap_or(0);
                text x="4" y=(y + 2 * BAR_H) { (if label.is_empty() { row.key.clone() } else { format!("{label} ({})", row.key) }) }
                @for (k, v) in [row.found, row.adopted, row.retested].into_iter().enumerate() {
                    rect x=(LABEL_W) y=(y + BAR_H * u32::try_from(k).unwrap_or(0)) width=(bar(v)) height=(BAR_H - 1) fill=(series[k].0) {
                        title { (series[k].1) ": " (v) }
                    }
                    text x=(u64::from(LABEL_W) + bar(v) + 4) y=(y + BAR_H * u32::try_from(k).unwrap_or(0) + BAR_H - 1) { (v) }
                }
            }
        }
    }
}

fn stats_table(ctx: &Ctx, s: &Statistics) -> Markup {
    let reasons = |row: &Row| -> String {
        row.retested_by_reason
            .iter()
            .map(|(code, n)| {
                let name = huren_core::rules::RetestReason::from_code(code)
                    .map_or_else(|| code.clone(), |r| super::timeline::retest_reason_text(ctx, r));
                format!("{name} {n}")
            })
            .collect::<Vec<_>>()
            .join("；")
    };
    html! {
        table {
            thead { tr {
                th scope="col" { (ctx.t("stats-group")) }
                th.num scope="col" { (ctx.t("stats-queries")) }
                th.num scope="col" { (ctx.t("stats-found")) }
                th.num scope="col" { (ctx.t("stats-rate")) }
                th.num scope="col" { (ctx.t("stats-cross")) }
                th.num scope="col" { (ctx.t("stats-adopted")) }
                th.num scope="col" { (ctx.t("stats-retested")) }
                th scope="col" { (ctx.t("stats-reasons")) }
                th.num scope="col" { (ctx.t("stats-avoided")) }
                th.num scope="col" { (ctx.t("stats-saved")) }
            } }
            tbody {
                @for (row, label, total) in s.rows.iter().map(|(r, l)| (r, l.as_str(), false)).chain(std::iter::once((&s.total, "", true))) {
                    tr {
                        // The total row's key is the hub's own word ("total"): named here.
                        @if total { th scope="row" { (ctx.t("stats-total")) } }
                        @else { td { (row.key) @if !label.is_empty() { " " (label) } } }
                        td.num { (row.queries) }
                        td.num { (row.found) }
                        td.num { (percent(row.found, row.queries)) }
                        td.num { (row.cross_member) }
                        td.num { (row.adopted) }
                        td.num { (row.retested) }
                        td { (reasons(row)) }
                        td.num { (row.tests_avoided) }
                        td.num { (crate::cli::yuan(row.money_saved_fen)) }
                    }
                }
            }
        }
    }
}

async fn statistics(ctx: Ctx, Query(q): Query<StatsQuery>) -> Response {
    if let Err(r) = allowed(&ctx, Role::sees_statistics) {
        return r.into_response();
    }
    let form = |p: Option<&Period>| {
        html! {
            form.inline method="get" action="/statistics" {
                div { label for="from" { (ctx.t("stats-from")) } input #from type="date" name="from" value=(p.map_or(q.from.as_str(), |p| p.from_day.as_str())); }
                div { label for="to" { (ctx.t("stats-to")) } input #to type="date" name="to" value=(p.map_or(q.to.as_str(), |p| p.to_day.as_str())); }
                div { label for="by" { (ctx.t("stats-by")) }
                    select #by name="by" {
                        @for (code, key) in [("item", "stats-by-item"), ("member", "stats-by-member"), ("day", "stats-by-day"), ("month", "stats-by-month")] {
                            option value=(code) selected[p.is_some_and(|p| p.by_code == code)] { (ctx.t(key)) }
                        }
                    }
                }
                div { button type="submit" { (ctx.t("stats-show")) } }
            }
        }
    };
    let p = match period(&ctx, &q) {
        Ok(p) => p,
        Err(message) => {
            return page(
                StatusCode::UNPROCESSABLE_ENTITY,
                layout(&ctx, &ctx.t("nav-statistics"), html! { div.error-summary role="alert" { p { (message) } } (form(None)) }),
            );
        }
    };
    let s = match ctx.state.agent().statistics(p.from, p.to, p.by).await {
        Ok(s) => s,
        Err(e) => return agent_error(&ctx, &e),
    };
    let csv = format!("/statistics.csv?from={}&to={}&by={}", p.from_day, p.to_day, p.by_code);
    let body = html! {
        (form(Some(&p)))
        p { (ctx.tw("stats-period", &[("from", p.from_day.clone().into()), ("to", p.to_day.clone().into()), ("policy", s.policy_version.clone().into())])) }
        p.no-print { a href=(csv) download { (ctx.t("stats-csv")) } }
        @if s.rows.is_empty() { p { (ctx.t("stats-empty")) } }
        @else { (chart(&ctx, &s.rows)) }
        (stats_table(&ctx, &s))
    };
    page(StatusCode::OK, layout(&ctx, &ctx.t("nav-statistics"), body))
}

async fn statistics_csv(ctx: Ctx, Query(q): Query<StatsQuery>) -> Response {
    if let Err(r) = allowed(&ctx, Role::sees_statistics) {
        return r.into_response();
    }
    let p = match period(&ctx, &q) {
        Ok(p) => p,
        Err(m) => return error_page(&ctx, StatusCode::UNPROCESSABLE_ENTITY, &m),
    };
    match ctx.state.agent().statistics(p.from, p.to, p.by).await {
        Ok(s) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8")),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_str(&format!(
                        "attachment; filename=\"huren-statistics-{}-{}-{}.csv\"",
                        p.from_day, p.to_day, p.by_code
                    ))
                    .unwrap_or(HeaderValue::from_static("attachment")),
                ),
            ],
            crate::cli::stats_csv(&s),
        )
            .into_response(),
        Err(e) => agent_error(&ctx, &e),
    }
}

#[derive(Default, Deserialize)]
struct AccessForm {
    #[serde(default)]
    id_type: String,
    #[serde(default)]
    id: String,
}

fn access_page(ctx: &Ctx, f: &AccessForm, error: Option<String>, answer: Option<Markup>, status: StatusCode) -> Response {
    let types: Vec<String> = {
        let p = &ctx.state.config().pseudonym;
        p.alliance_types.iter().cloned().chain(p.local_types.iter().map(|l| l.id_type.clone())).collect()
    };
    let chosen = if f.id_type.is_empty() { "cn-ric" } else { f.id_type.as_str() };
    let body = html! {
        @if let Some(e) = error { div.error-summary role="alert" { p { (e) } } }
        p.hint.no-print { (ctx.t("access-intro")) }
        form.inline method="post" action="/access-report" autocomplete="off" {
            input type="hidden" name="csrf" value=(ctx.csrf);
            div { label for="id_type" { (ctx.t("find-id-type")) }
                select #id_type name="id_type" { @for t in &types { option value=(t) selected[t == chosen] { (id_type_name(ctx, t)) } } } }
            div { label for="patient_id" { (ctx.t("find-id")) } input #patient_id type="text" name="id" required; }
            div { button type="submit" { (ctx.t("access-submit")) } }
        }
        @if let Some(a) = answer { (a) }
    };
    page(status, layout(ctx, &ctx.t("nav-access-report"), body))
}

async fn access_form(ctx: Ctx) -> Response {
    if let Err(r) = allowed(&ctx, Role::sees_access_reports) {
        return r.into_response();
    }
    access_page(&ctx, &AccessForm::default(), None, None, StatusCode::OK)
}

async fn access_report(ctx: Ctx, Form(f): Form<AccessForm>) -> Response {
    let me = match allowed(&ctx, Role::sees_access_reports) {
        Ok(a) => a.clone(),
        Err(r) => return r.into_response(),
    };
    let pseudonym = match ctx.state.agent().pseudonymise(&f.id_type, &f.id) {
        Ok(p) => p,
        Err(e) => {
            let m = ctx.tw("find-bad-id", &[("detail", e.to_string().into())]);
            return access_page(&ctx, &f, Some(m), None, StatusCode::UNPROCESSABLE_ENTITY);
        }
    };
    let report = match ctx
        .state
        .agent()
        .access_report(Some(&me.staff_id), &pseudonym, UnixMillis(0), UnixMillis(0))
        .await
    {
        Ok(r) => r,
        Err(e) => return agent_error(&ctx, &e),
    };
    let masked = super::patient::mask(&f.id);
    let answer = html! {
        h2 { (ctx.tw("access-for", &[("patient", format!("{} {masked}", id_type_name(&ctx, &f.id_type)).into())])) }
        p.no-print { button type="button" data-print hidden { (ctx.t("print")) } }
        p { (ctx.tw("access-summary", &[("count", report.entries.len().into())])) " "
            @if report.opted_out { (ctx.t("access-opted-out")) } @else { (ctx.t("access-sharing")) } }
        table {
            thead { tr {
                th scope="col" { (ctx.t("access-time")) }
                th scope="col" { (ctx.t("access-member")) }
                th scope="col" { (ctx.t("access-requester")) }
                th scope="col" { (ctx.t("find-purpose")) }
                th scope="col" { (ctx.t("access-call")) }
                th.num scope="col" { (ctx.t("access-results")) }
                th.num scope="col" { (ctx.t("access-log-entry")) }
            } }
            tbody {
                @for e in &report.entries {
                    tr {
                        td { (ctx.zone().minute(e.at)) }
                        td { (e.caller) }
                        td { (if e.requester.is_empty() { "—".to_owned() } else { e.requester.clone() }) }
                        td {
                            (purpose_name(&ctx, e.purpose))
                            @if e.emergency_override { " " span.tag.warn { (ctx.t("access-break-glass")) } }
                            @if e.withheld_by_consent { " " span.tag.no { (ctx.t("access-withheld")) } }
                        }
                        td { (e.method) }
                        td.num { (e.results) }
                        td.num { (e.index) }
                    }
                }
            }
        }
        p.hint { @if ctx.state.agent().log().is_some() { (ctx.t("access-verified")) } @else { (ctx.t("log-proof-off")) } }
    };
    access_page(&ctx, &AccessForm { id_type: f.id_type.clone(), id: String::new() }, None, Some(answer), StatusCode::OK)
}

async fn log_status(ctx: Ctx) -> Response {
    if let Err(r) = signed_in(&ctx) {
        return r.into_response();
    }
    let agent = ctx.state.agent();
    let body = match agent.log() {
        None => html! { p { (ctx.t("log-not-configured")) } },
        Some(w) => {
            let last = w.last().await;
            let alarms = w.alarms();
            let checked = ctx.state.last_log_check();
            html! {
                dl.facts {
                    dt { (ctx.t("log-origin")) } dd { (w.verifier().name()) }
                    dt { (ctx.t("log-last-checkpoint")) } dd {
                        @match &last {
                            Some(s) => { (ctx.tw("log-checkpoint", &[("size", s.checkpoint.size.into()), ("root", hex::encode(&s.checkpoint.root[..8]).into())])) }
                            None => { (ctx.t("log-none-yet")) }
                        }
                    }
                    dt { (ctx.t("log-last-check")) } dd {
                        @match checked {
                            Some(t) => { (ctx.tw("log-minutes-ago", &[("minutes", ((UnixMillis::now().0 - t.0).max(0) / 60_000).into()), ("time", ctx.zone().minute(t).into())])) }
                            None => { (ctx.t("log-not-since-start")) }
                        }
                    }
                }
                form method="post" action="/log/check" {
                    input type="hidden" name="csrf" value=(ctx.csrf);
                    button type="submit" { (ctx.t("log-check-now")) }
                }
                h2 { (ctx.t("log-alarms")) }
                @if alarms.is_empty() { p { span.tag.ok { (ctx.t("log-no-alarms")) } } }
                @else {
                    ul { @for (at, what) in &alarms { li { (ctx.zone().minute(*at)) ": " (what) } } }
                }
            }
        }
    };
    page(StatusCode::OK, layout(&ctx, &ctx.t("nav-log"), body))
}

async fn log_check(ctx: Ctx) -> Response {
    if let Err(r) = signed_in(&ctx) {
        return r.into_response();
    }
    match ctx.state.agent().checkpoint().await {
        Ok(_) => {
            ctx.state.log_checked_now();
            see_other("/log")
        }
        Err(e) => agent_error(&ctx, &e),
    }
}
