//! Finding a patient, and every page about one patient: timeline, result detail and
//! decision, order check, full report. The patient id is POSTed once (`/find`), pseudonymised
//! here, and stands behind a short-lived look-up handle bound to the session from then on:
//! no page address, log line or browser history entry holds it.

use axum::Form;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use huren_core::logentry::Purpose;
use maud::html;
use serde::Deserialize;

use super::WebState;
use super::accounts::{Account, Role};
use super::pages::{Refusal, allowed, error_page, layout, page};
use super::session::{Ctx, Lookup, see_other};
use crate::store::BreakGlassRecord;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/find", post(find))
}

/// The look-up behind `handle` for this session and the signed-in account allowed to see
/// patients, or the page to answer instead.
pub fn patient_of(ctx: &Ctx, handle: &str) -> Result<(Account, Lookup), Refusal> {
    let me = allowed(ctx, Role::sees_patients)?.clone();
    match ctx.sessions().lookup(&ctx.session, handle) {
        Some(l) => Ok((me, l)),
        None => Err(error_page(ctx, StatusCode::NOT_FOUND, &ctx.t("error-lookup-expired")).into()),
    }
}

/// The box naming the patient (masked id) and the purpose of this look-up, on every page.
pub fn patient_box(ctx: &Ctx, l: &Lookup) -> maud::Markup {
    html! {
        div.patient {
            strong { (id_type_name(ctx, &l.id_type)) " " (l.masked) }
            " · " (ctx.t("find-purpose")) ": " (purpose_name(ctx, l.purpose))
            @if l.break_glass { " " span.tag.warn { (ctx.t("break-glass-flag")) } }
        }
    }
}


/// Longest break-glass reason kept.
const MAX_REASON_CHARS: usize = 500;

/// The identifier types this agent accepts, in the order shown.
fn id_types(ctx: &Ctx) -> Vec<String> {
    let p = &ctx.state.config().pseudonym;
    p.alliance_types
        .iter()
        .cloned()
        .chain(p.local_types.iter().map(|l| l.id_type.clone()))
        .collect()
}

/// An identifier type's name in the page's language (the code itself for a local type).
pub fn id_type_name(ctx: &Ctx, id_type: &str) -> String {
    let key = match id_type {
        "cn-ric" => "idtype-cn-ric",
        "passport" => "idtype-passport",
        "cn-hk-mo-pass" => "idtype-cn-hk-mo-pass",
        "cn-health-card" => "idtype-cn-health-card",
        "cn-ssc" => "idtype-cn-ssc",
        other => return other.to_owned(),
    };
    ctx.t(key)
}

/// A purpose's name in the page's language.
pub fn purpose_name(ctx: &Ctx, p: Purpose) -> String {
    ctx.t(match p {
        Purpose::Treatment => "purpose-treatment",
        Purpose::Referral => "purpose-referral",
        Purpose::Emergency => "purpose-emergency",
        Purpose::PatientRequest => "purpose-patient-request",
        Purpose::Administration => "purpose-administration",
        Purpose::QualityControl => "purpose-quality-control",
    })
}

/// The id with its middle hidden: enough for a person to see it is the right patient.
pub fn mask(id: &str) -> String {
    let chars: Vec<char> = id.trim().chars().collect();
    let n = chars.len();
    if n <= 4 {
        return "*".repeat(n);
    }
    let keep = if n > 10 { 4 } else { 2 };
    let mut out: String = chars[..keep].iter().collect();
    out.push_str(&"*".repeat(n - 2 * keep));
    out.extend(&chars[n - keep..]);
    out
}

/// What the find form held (shown again with an error).
#[derive(Default, Deserialize)]
pub struct FindForm {
    #[serde(default)]
    id_type: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: String,
}

/// The find-patient page (also the home page of roles that see patients).
pub fn find_page(ctx: &Ctx, me: &Account, form: Option<(&FindForm, String)>, status: StatusCode) -> Response {
    let (f, error) = match form {
        Some((f, e)) => (Some(f), Some(e)),
        None => (None, None),
    };
    let chosen_type = f.map_or("cn-ric", |f| f.id_type.as_str());
    let default_purpose = if me.role == Role::ReferralDesk { "referral" } else { "treatment" };
    let chosen_purpose = f.map_or(default_purpose, |f| f.purpose.as_str());
    let body = html! {
        @if let Some(e) = &error {
            div.error-summary role="alert" {
                h2 { (ctx.t("find-problem")) }
                p { (e) }
            }
        }
        p.hint { (ctx.t("find-intro")) }
        form.stack method="post" action="/find" autocomplete="off" {
            input type="hidden" name="csrf" value=(ctx.csrf);
            div {
                label for="id_type" { (ctx.t("find-id-type")) }
                select #id_type name="id_type" {
                    @for t in id_types(ctx) {
                        option value=(t) selected[t == chosen_type] { (id_type_name(ctx, &t)) }
                    }
                }
            }
            div {
                label for="patient_id" { (ctx.t("find-id")) " " span.hint { (ctx.t("find-id-hint")) } }
                input #patient_id type="text" name="id" required autofocus spellcheck="false"
                    value=(f.map_or("", |f| f.id.as_str()));
            }
            fieldset {
                legend { (ctx.t("find-purpose")) }
                @for (code, p) in [("treatment", Purpose::Treatment), ("referral", Purpose::Referral), ("emergency", Purpose::Emergency)] {
                    label { input type="radio" name="purpose" value=(code) checked[code == chosen_purpose]; (purpose_name(ctx, p)) }
                }
            }
            fieldset {
                legend { (ctx.t("find-break-glass")) }
                p.hint { (ctx.t("find-break-glass-hint")) }
                label for="reason" { (ctx.t("find-reason")) }
                textarea #reason name="reason" maxlength="500" { (f.map_or("", |f| f.reason.as_str())) }
                label { input type="checkbox" name="confirm" value="yes"; (ctx.t("find-confirm")) }
            }
            div { button type="submit" { (ctx.t("find-submit")) } }
        }
    };
    page(status, layout(ctx, &ctx.t("find-title"), body))
}

async fn find(ctx: Ctx, Form(f): Form<FindForm>) -> Response {
    let me = match allowed(&ctx, Role::sees_patients) {
        Ok(a) => a.clone(),
        Err(r) => return r.into_response(),
    };
    let again = |message: String| find_page(&ctx, &me, Some((&f, message)), StatusCode::UNPROCESSABLE_ENTITY);
    let purpose = match f.purpose.as_str() {
        "treatment" => Purpose::Treatment,
        "referral" => Purpose::Referral,
        "emergency" => Purpose::Emergency,
        _ => return again(ctx.t("find-no-purpose")),
    };
    if !id_types(&ctx).contains(&f.id_type) {
        return again(ctx.t("find-bad-type"));
    }
    if f.id.trim().is_empty() {
        return again(ctx.t("find-no-id"));
    }
    let pseudonym = match ctx.state.agent().pseudonymise(&f.id_type, &f.id) {
        Ok(p) => p,
        Err(e) => return again(ctx.tw("find-bad-id", &[("detail", e.to_string().into())])),
    };
    let break_glass = purpose == Purpose::Emergency;
    if break_glass {
        let reason = f.reason.trim();
        if f.confirm != "yes" {
            return again(ctx.t("find-confirm-missing"));
        }
        if reason.chars().count() < 4 {
            return again(ctx.t("find-reason-missing"));
        }
        let record = BreakGlassRecord {
            at_ms: huren_core::summary::UnixMillis::now().0,
            username: me.username.clone(),
            staff_id: me.staff_id.clone(),
            reason: reason.chars().take(MAX_REASON_CHARS).collect(),
            pseudonym: pseudonym.as_bytes().to_vec(),
        };
        match ctx.state.store().record_break_glass(&record) {
            Ok(seq) => tracing::warn!(
                user = %me.username,
                staff_id = %me.staff_id,
                record = seq,
                "web app: emergency (break-glass) look-up; its reason is in the agent store's break-glass register"
            ),
            Err(e) => {
                tracing::error!(error = %e, "web app: the break-glass record could not be written; look-up refused");
                return error_page(&ctx, StatusCode::INTERNAL_SERVER_ERROR, &ctx.t("error-internal"));
            }
        }
    }
    let handle = ctx.sessions().add_lookup(
        &ctx.session,
        pseudonym,
        purpose,
        &f.id_type,
        mask(&f.id),
        break_glass,
    );
    see_other(&format!("/p/{handle}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_masked() {
        assert_eq!(super::mask("610102196703151235"), "6101**********1235");
        assert_eq!(super::mask("E1234567"), "E1****67");
        assert_eq!(super::mask("abc"), "***");
    }
}
