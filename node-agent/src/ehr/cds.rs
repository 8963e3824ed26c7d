//! CDS Hooks 2.0 services: `order-select` and `order-sign`.
//!
//! The EHR sends the draft orders (FHIR R4 ServiceRequests in `context.draftOrders`) and the
//! patient (a prefetched Patient with its identifiers). Each ordered item is mapped to the
//! catalogue (the mapping file's local codes, or a catalogue coding as given; other codes go to
//! the hub as this member's local codes), the patient is pseudonymised here, and one CheckOrder
//! asks the hub for each item's newest recognised result. Every result offered was verified
//! (signature, receipt, log proof when configured).
//!
//! The answer: one card per item with a reusable result (summary, detail, a suggestion to
//! delete the draft order, the override reasons, a link to the result) and, when configured,
//! one `info` card per item without one, saying why. When the hub does not answer within
//! `[ehr] hub_timeout_ms`, or fails, the answer is no cards and the failure is logged: an
//! order is never held up by Huren.
//!
//! Feedback (`POST /cds-services/{id}/feedback`) closes the loop: `accepted` records the
//! result as adopted, `overridden` with one of the card's override reasons records a re-test
//! with that reason (RecordDecision, decision id `cds-<card uuid>`, so a repeated feedback is
//! recorded once).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use huren_core::logentry::Purpose;
use huren_core::rules::{Decision, RetestReason};
use huren_core::summary::{Outcome, UnixMillis};

use super::auth::requester;
use super::{
    Asking, EhrError, EhrState, FhirIdentifier, HandedOut, Lang, OfferedCard, fhir, new_uuid,
};
use crate::client::{OrderCheck, OrderItem};
use crate::mapping::Lookup;
use crate::verify::VerifiedResult;

/// The two services and the hooks they answer.
const SERVICES: [(&str, &str); 2] = [
    ("huren-order-select", "order-select"),
    ("huren-order-sign", "order-sign"),
];

/// Most draft orders looked at in one call.
const MAX_ORDERS: usize = 100;

/// Code system of the national re-test reasons on cards.
pub const NATIONAL_REASONS: &str = "urn:huren:override-reason:national";
/// Code system of a member's own override reasons.
pub const LOCAL_REASONS: &str = "urn:huren:override-reason:local";

pub fn routes() -> Router<Arc<EhrState>> {
    Router::new()
        .route("/cds-services", get(discovery))
        .route("/cds-services/{id}", post(call))
        .route("/cds-services/{id}/feedback", post(feedback))
}

fn hook_of(id: &str) -> Option<&'static str> {
    SERVICES.iter().find(|(s, _)| *s == id).map(|(_, h)| *h)
}

/// An error as CDS Hooks clients read one: the status and a JSON message.
fn error_response(e: &EhrError, what: &str) -> Response {
    let status = e.logged_status(what);
    (status, axum::Json(json!({ "error": e.to_string() }))).into_response()
}

async fn discovery(State(state): State<Arc<EhrState>>, headers: HeaderMap) -> Response {
    let lang = Lang::of(&headers, state.lang);
    let services: Vec<Value> = SERVICES
        .iter()
        .map(|(id, hook)| {
            let (title, description) = if *hook == "order-select" {
                (
                    lang.pick("检查检验结果互认提醒（选择医嘱时）", "Reusable results while selecting orders"),
                    lang.pick(
                        "选择检查检验医嘱时，提示联盟内可互认的既往结果（已验证签名），可撤销重复医嘱。",
                        "When a test or exam is selected, shows a verified prior result from the alliance that may be reused instead.",
                    ),
                )
            } else {
                (
                    lang.pick("检查检验结果互认提醒（签署医嘱时）", "Reusable results when signing orders"),
                    lang.pick(
                        "签署检查检验医嘱前，提示联盟内可互认的既往结果（已验证签名），可撤销重复医嘱。",
                        "Before orders are signed, shows verified prior results from the alliance that may be reused instead.",
                    ),
                )
            };
            json!({
                "hook": hook,
                "id": id,
                "title": title,
                "description": description,
                "prefetch": { "patient": "Patient/{{context.patientId}}" },
                "usageRequirements": lang.pick(
                    "预取 patient 需含患者身份证号等标识（其 system 须在 [ehr] identifier_systems 中配置）。",
                    "The prefetched patient must carry an identifier whose system is configured in [ehr] identifier_systems.",
                ),
            })
        })
        .collect();
    axum::Json(json!({ "services": services })).into_response()
}

fn audiences(state: &EhrState, path: &str) -> Vec<String> {
    vec![format!("{}{path}", state.config.base_url)]
}

async fn call(
    State(state): State<Arc<EhrState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hook) = hook_of(&id) else {
        return error_response(
            &EhrError::NotFound(format!("no CDS service {id:?} here; see GET /cds-services")),
            "cds",
        );
    };
    let caller = match state
        .auth
        .check(&headers, &audiences(&state, &format!("/cds-services/{id}")))
    {
        Ok(c) => c,
        Err(e) => return error_response(&e, hook),
    };
    let lang = Lang::of(&headers, state.lang);
    let request = match parse_request(&body, hook) {
        Ok(r) => r,
        Err(e) => return error_response(&e, hook),
    };
    let requester = requester(
        &caller.issuer,
        request.user_id.as_deref().or(caller.user.as_deref()),
    );
    let asking = Asking::new(Purpose::Treatment).by(requester);
    let cards = cards_for(&state, &id, &request, &asking, lang).await;
    axum::Json(json!({ "cards": cards })).into_response()
}

/// One draft ServiceRequest as read from the request.
struct Draft {
    /// `ServiceRequest/<id>` when the draft has an id.
    reference: Option<String>,
    /// (system, code, display) of each coding.
    codings: Vec<(String, String, String)>,
    text: String,
}

struct HookRequest {
    user_id: Option<String>,
    patient: Option<Value>,
    drafts: Vec<Draft>,
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Reads the parts of a hook request this service uses; anything malformed is a 400.
fn parse_request(body: &[u8], hook: &str) -> Result<HookRequest, EhrError> {
    let bad = |m: &str| EhrError::BadRequest(m.to_owned());
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| EhrError::BadRequest(format!("the request is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("the request must be a JSON object"));
    }
    let got = s(&v, "hook");
    if got != hook {
        return Err(EhrError::BadRequest(format!(
            "this service answers the {hook} hook, not {got:?}"
        )));
    }
    if s(&v, "hookInstance").is_empty() {
        return Err(bad("hookInstance is missing"));
    }
    let context = v
        .get("context")
        .filter(|c| c.is_object())
        .ok_or_else(|| bad("context is missing"))?;
    let bundle = context
        .get("draftOrders")
        .ok_or_else(|| bad("context.draftOrders is missing"))?;
    if s(bundle, "resourceType") != "Bundle" {
        return Err(bad("context.draftOrders must be a FHIR Bundle"));
    }
    let selections: Vec<&str> = context
        .get("selections")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let entries = match bundle.get("entry") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(_) => return Err(bad("context.draftOrders.entry must be an array")),
    };
    let mut drafts = Vec::new();
    for e in entries {
        let Some(r) = e.get("resource") else { continue };
        if s(r, "resourceType") != "ServiceRequest" {
            continue;
        }
        let reference = Some(s(r, "id"))
            .filter(|i| !i.is_empty())
            .map(|i| format!("ServiceRequest/{i}"));
        // order-select: only the orders just selected.
        if hook == "order-select"
            && !selections.is_empty()
            && !reference
                .as_deref()
                .is_some_and(|r| selections.contains(&r))
        {
            continue;
        }
        let code = r.get("code");
        let codings = code
            .and_then(|c| c.get("coding"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            s(c, "system").to_owned(),
                            s(c, "code").trim().to_owned(),
                            s(c, "display").to_owned(),
                        )
                    })
                    .filter(|(_, c, _)| !c.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let text = code.map_or("", |c| s(c, "text")).to_owned();
        drafts.push(Draft {
            reference,
            codings,
            text,
        });
    }
    if drafts.len() > MAX_ORDERS {
        return Err(EhrError::BadRequest(format!(
            "{} draft orders in one call; at most {MAX_ORDERS} are checked",
            drafts.len()
        )));
    }
    let user_id = Some(s(context, "userId").to_owned()).filter(|u| !u.is_empty());
    let patient = v
        .get("prefetch")
        .and_then(|p| p.get("patient"))
        .filter(|p| s(p, "resourceType") == "Patient")
        .cloned();
    Ok(HookRequest {
        user_id,
        patient,
        drafts,
    })
}

/// The order item a draft asks for: a mapped local code, else a LOINC or other catalogue
/// coding as given, else the first code as this member's local code (the hub maps it).
fn order_item(state: &EhrState, d: &Draft) -> Option<OrderItem> {
    if let Some(m) = &state.mapping {
        for (system, code, _) in &d.codings {
            if let Lookup::Mapped(item) = m.coding(system, code) {
                return Some(OrderItem::Catalogue {
                    system: item.item.system.clone(),
                    code: item.item.code.clone(),
                });
            }
        }
    }
    if let Some((system, code, _)) = d.codings.iter().find(|(s, _, _)| s == "http://loinc.org") {
        return Some(OrderItem::Catalogue {
            system: system.clone(),
            code: code.clone(),
        });
    }
    d.codings
        .first()
        .map(|(_, code, _)| OrderItem::Local(code.clone()))
}

fn draft_name(d: &Draft) -> String {
    if !d.text.is_empty() {
        return d.text.clone();
    }
    d.codings
        .iter()
        .find(|(_, _, display)| !display.is_empty())
        .map(|(_, _, display)| display.clone())
        .or_else(|| d.codings.first().map(|(_, c, _)| c.clone()))
        .unwrap_or_default()
}

fn info_card(state: &EhrState, lang: Lang, summary: String, detail: String) -> Value {
    json!({
        "uuid": new_uuid(),
        "summary": cut(&summary, 139),
        "detail": detail,
        "indicator": "info",
        "source": source(state, lang),
    })
}

fn source(_state: &EhrState, lang: Lang) -> Value {
    json!({
        "label": lang.pick("检查检验结果互认（Huren）", "Huren mutual recognition of results"),
        "topic": {
            "system": "urn:huren:cds-topic",
            "code": "prior-result",
            "display": lang.pick("既往检查检验结果", "Prior result"),
        }
    })
}

async fn cards_for(
    state: &EhrState,
    service: &str,
    request: &HookRequest,
    asking: &Asking,
    lang: Lang,
) -> Vec<Value> {
    let info = state.config.info_cards;
    let mut cards = Vec::new();
    if request.drafts.is_empty() {
        return cards;
    }
    let patient = match &request.patient {
        None => {
            tracing::info!(service, "CDS call without a prefetched Patient: no cards");
            if info {
                cards.push(info_card(
                    state,
                    lang,
                    lang.pick("互认提醒未运行：缺少患者信息", "No recognition check: patient not provided").into(),
                    lang.pick(
                        "请求未包含预取的 Patient 资源（prefetch.patient），无法识别患者。",
                        "The request carried no prefetched Patient (prefetch.patient), so the patient could not be identified.",
                    )
                    .into(),
                ));
            }
            return cards;
        }
        Some(p) => p,
    };
    let identifiers: Vec<FhirIdentifier<'_>> = patient
        .get("identifier")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|i| FhirIdentifier {
                    system: s(i, "system"),
                    value: s(i, "value"),
                    type_codes: i
                        .get("type")
                        .and_then(|t| t.get("coding"))
                        .and_then(Value::as_array)
                        .map(|c| c.iter().map(|c| s(c, "code")).collect())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let pseudonym = match state.patient_of(&identifiers) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(service, error = %e, "CDS call: patient not identified; no cards");
            if info {
                cards.push(info_card(
                    state,
                    lang,
                    lang.pick(
                        "互认提醒未运行：无法识别患者",
                        "No recognition check: patient not identified",
                    )
                    .into(),
                    format!(
                        "{}\n\n{}",
                        lang.pick(
                            "患者标识无法用于互认查询。",
                            "The patient's identifiers cannot be used for the recognition check."
                        ),
                        md_escape(&e.to_string())
                    ),
                ));
            }
            return cards;
        }
    };
    let mut asked = Vec::new();
    let mut unreadable = Vec::new();
    for d in &request.drafts {
        match order_item(state, d) {
            Some(item) => asked.push((d, item)),
            None => unreadable.push(d),
        }
    }
    if info {
        for d in &unreadable {
            cards.push(info_card(
                state,
                lang,
                format!(
                    "{}{}",
                    lang.pick("未检查：", "Not checked: "),
                    if draft_name(d).is_empty() {
                        "?".into()
                    } else {
                        draft_name(d)
                    }
                ),
                lang.pick(
                    "该医嘱没有项目编码（ServiceRequest.code.coding）。",
                    "The order has no item code (ServiceRequest.code.coding).",
                )
                .into(),
            ));
        }
    }
    if asked.is_empty() {
        return cards;
    }
    let order: Vec<OrderItem> = asked.iter().map(|(_, i)| i.clone()).collect();
    let now = UnixMillis::now();
    let answer = tokio::time::timeout(
        state.hub_timeout(),
        state.agent.check_order(asking, &pseudonym, &order, now),
    )
    .await;
    let checks = match answer {
        Err(_) => {
            tracing::warn!(
                service,
                items = order.len(),
                timeout_ms = state.config.hub_timeout_ms,
                "CDS call: the hub did not answer in time; answered with no cards"
            );
            return cards;
        }
        Ok(Err(e)) => {
            tracing::error!(service, error = %e, "CDS call: the hub check failed; answered with no cards");
            return cards;
        }
        Ok(Ok(c)) => c,
    };
    for ((draft, _), check) in asked.iter().zip(checks) {
        match &check.best {
            Some(best) => {
                let card_uuid = new_uuid();
                let card = reusable_card(state, lang, &card_uuid, draft, &check, best);
                state.cards.insert(
                    card_uuid,
                    OfferedCard {
                        service: service.to_owned(),
                        receipt: best.receipt.clone(),
                        requester: asking.requester.clone().unwrap_or_default(),
                    },
                );
                cards.push(card);
            }
            None if info => cards.push(not_reusable_card(state, lang, draft, &check)),
            None => {}
        }
    }
    cards
}

fn reusable_card(
    state: &EhrState,
    lang: Lang,
    uuid: &str,
    draft: &Draft,
    check: &OrderCheck,
    best: &VerifiedResult,
) -> Value {
    let s = &best.summary;
    let publisher = state.member_name(s.publisher.as_str()).to_owned();
    let date = super::fhir_date(s.performed_at.0, state.utc_offset);
    let item = if check.item_name.is_empty() {
        if s.item.display.is_empty() {
            s.item.code.clone()
        } else {
            s.item.display.clone()
        }
    } else {
        check.item_name.clone()
    };
    let mark = best
        .verdict
        .as_ref()
        .and_then(|v| v.hr_mark.clone())
        .unwrap_or_default();
    let value = match &s.outcome {
        Outcome::Lab(l) => format!("{} {}", l.value, l.unit).trim().to_owned(),
        Outcome::Exam(e) => cut(&e.impression.replace(['\n', '\r'], " "), 30),
    };
    let summary = match lang {
        Lang::Zh => {
            format!("可互认结果：{publisher}，{date}，{item} {value}（{mark}）— 是否采用？")
        }
        Lang::En => {
            format!("Recognised result from {publisher}, {date}, {item} {value}, {mark} — reuse?")
        }
    };
    let fhir_id = fhir::resource_id(s.publisher.as_str(), s.id.as_str());
    state.ids.insert(
        fhir_id.clone(),
        HandedOut {
            patient: s.patient,
            item: (s.item.system.clone(), s.item.code.clone()),
            publisher: s.publisher.to_string(),
            summary_id: s.id.to_string(),
        },
    );
    let valid_until = best
        .verdict
        .as_ref()
        .and_then(|v| v.valid_until)
        .map(|t| super::fhir_date(t.0, state.utc_offset))
        .unwrap_or_default();
    let mut detail = String::new();
    let line = |k: &str, v: &str| format!("- {k}{}\n", md_escape(v));
    detail.push_str(&format!("**{}**\n\n", md_escape(&item)));
    match &s.outcome {
        Outcome::Lab(l) => {
            detail.push_str(&line(
                lang.pick("结果：", "Result: "),
                &format!("{} {}", l.value, l.unit),
            ));
            if !l.reference_range.is_empty() {
                detail.push_str(&line(
                    lang.pick("参考范围：", "Reference range: "),
                    &l.reference_range,
                ));
            }
        }
        Outcome::Exam(e) => {
            detail.push_str(&line(
                lang.pick("印象：", "Impression: "),
                &e.impression.replace(['\n', '\r'], " "),
            ));
            detail.push_str(&line(
                lang.pick("检查：", "Exam: "),
                &format!("{} {}", e.modality, e.body_site),
            ));
        }
    }
    detail.push_str(&line(
        lang.pick("检查时间：", "Performed: "),
        &super::fhir_time(s.performed_at.0, state.utc_offset),
    ));
    detail.push_str(&line(lang.pick("发布机构：", "Published by: "), &publisher));
    detail.push_str(&line(
        lang.pick("互认标识：", "Recognition mark: "),
        &if valid_until.is_empty() {
            mark.clone()
        } else {
            format!(
                "{mark}，{}{valid_until}",
                lang.pick("有效期至 ", "valid until ")
            )
        },
    ));
    detail.push_str(&line(
        lang.pick("核验：", "Verified: "),
        &match lang {
            Lang::Zh => format!("发布机构签名已验证（结果 {} 第 {} 版）", s.id, s.version),
            Lang::En => format!(
                "publisher's signature verified (result {} version {})",
                s.id, s.version
            ),
        },
    ));
    let mut suggestion = json!({
        "label": lang.pick("撤销此医嘱，采用已有结果", "Remove this order and reuse the result"),
        "uuid": new_uuid(),
        "isRecommended": true,
    });
    if let Some(reference) = &draft.reference {
        suggestion["actions"] = json!([{
            "type": "delete",
            "description": match lang {
                Lang::Zh => format!("撤销 {}", draft_name(draft)),
                Lang::En => format!("Remove the order {}", draft_name(draft)),
            },
            "resourceId": reference,
        }]);
    }
    json!({
        "uuid": uuid,
        "summary": cut(&summary, 139),
        "detail": detail,
        "indicator": state.config.reusable_indicator,
        "source": source(state, lang),
        "suggestions": [suggestion],
        "selectionBehavior": "at-most-one",
        "overrideReasons": override_reasons(state, lang),
        "links": [{
            "label": lang.pick("查看结果详情", "View the result"),
            "url": detail_url(state, &fhir_id),
            "type": "absolute",
        }],
    })
}

fn not_reusable_card(state: &EhrState, lang: Lang, draft: &Draft, check: &OrderCheck) -> Value {
    let name = if check.item_name.is_empty() {
        draft_name(draft)
    } else {
        check.item_name.clone()
    };
    let summary = match lang {
        Lang::Zh => format!("{name}：无可互认的既往结果"),
        Lang::En => format!("{name}: no reusable prior result"),
    };
    let mut detail = match lang {
        Lang::Zh => format!(
            "联盟内的候选结果 {} 个，均不可互认或没有。原因：",
            check.candidates
        ),
        Lang::En => format!(
            "{} candidate result(s) in the alliance, none reusable. Why: ",
            check.candidates
        ),
    };
    detail.push_str(&md_escape(&check.explanation));
    if let Some(f) = &check.failed {
        detail.push_str(&match lang {
            Lang::Zh => format!(
                "\n\n中心提供的结果未通过核验（{}），未予显示。",
                md_escape(&f.reason)
            ),
            Lang::En => format!(
                "\n\nThe hub's result failed verification ({}) and is not shown.",
                md_escape(&f.reason)
            ),
        });
    }
    info_card(state, lang, summary, detail)
}

/// Where a card's link goes: the result as a FHIR DiagnosticReport on this agent.
fn detail_url(state: &EhrState, fhir_id: &str) -> String {
    format!("{}/fhir/DiagnosticReport/{fhir_id}", state.config.base_url)
}

/// The override reasons on every card: the national list, then the member's own.
pub fn override_reasons(state: &EhrState, lang: Lang) -> Vec<Value> {
    let mut out: Vec<Value> = RetestReason::ALL
        .into_iter()
        .map(|r| {
            json!({
                "system": NATIONAL_REASONS,
                "code": r.code(),
                "display": reason_text(r, lang),
            })
        })
        .collect();
    for r in &state.config.override_reasons {
        out.push(json!({ "system": LOCAL_REASONS, "code": r.code, "display": r.display }));
    }
    out
}

/// The re-test reasons as a physician reads them.
pub fn reason_text(r: RetestReason, lang: Lang) -> &'static str {
    use RetestReason::*;
    match r {
        ConditionChanged => lang.pick(
            "病情变化或结果与临床不符",
            "Condition changed or result contradicts the clinical picture",
        ),
        FastChangingValue => lang.pick("指标变化快", "Fast-changing value"),
        CriticalStep => lang.pick(
            "关键诊疗环节（术前、输血等）",
            "Critical step (before surgery, transfusion)",
        ),
        Emergency => lang.pick("急诊抢救", "Emergency"),
        Appraisal => lang.pick("司法鉴定或伤残鉴定", "Judicial or disability appraisal"),
        Other => lang.pick("其他", "Other"),
        PatientRequest => lang.pick("患者要求", "Patient request"),
        SourceFailedEqa => lang.pick("来源实验室室间质评未通过", "Source lab failed EQA"),
        TooOld => lang.pick("结果时间过久", "Too old to be useful"),
        PhysicianJudgement => lang.pick("医师判断", "Physician judgement"),
    }
}

async fn feedback(
    State(state): State<Arc<EhrState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if hook_of(&id).is_none() {
        return error_response(
            &EhrError::NotFound(format!("no CDS service {id:?} here; see GET /cds-services")),
            "cds-feedback",
        );
    }
    let mut aud = audiences(&state, &format!("/cds-services/{id}/feedback"));
    aud.extend(audiences(&state, &format!("/cds-services/{id}")));
    let caller = match state.auth.check(&headers, &aud) {
        Ok(c) => c,
        Err(e) => return error_response(&e, "cds-feedback"),
    };
    match record_feedback(&state, &id, &body, &caller).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error_response(&e, "cds-feedback"),
    }
}

async fn record_feedback(
    state: &EhrState,
    service: &str,
    body: &[u8],
    caller: &super::auth::Caller,
) -> Result<(), EhrError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| EhrError::BadRequest(format!("the feedback is not JSON: {e}")))?;
    let items = v
        .get("feedback")
        .and_then(Value::as_array)
        .ok_or_else(|| EhrError::BadRequest("feedback must be an array".into()))?;
    if items.is_empty() || items.len() > MAX_ORDERS {
        return Err(EhrError::BadRequest(format!(
            "feedback must hold 1 to {MAX_ORDERS} entries"
        )));
    }
    // Read everything first: one bad entry changes nothing.
    let mut decisions = Vec::with_capacity(items.len());
    for (i, f) in items.iter().enumerate() {
        let at = |m: String| EhrError::BadRequest(format!("feedback[{i}]: {m}"));
        let card = s(f, "card");
        if card.is_empty() {
            return Err(at("card (the card's uuid) is missing".into()));
        }
        let offered = state.cards.get(&card.to_owned()).ok_or_else(|| {
            EhrError::NotFound(format!(
                "feedback[{i}]: card {card} is not one this agent offered in the last {} minutes (or the agent restarted since)",
                state.config.remember_minutes
            ))
        })?;
        if offered.service != service {
            return Err(at(format!(
                "card {card} was offered by {}, not {service}",
                offered.service
            )));
        }
        let decision = match s(f, "outcome") {
            "accepted" => Decision::Adopted,
            "overridden" => overridden(state, f)
                .map_err(|m| EhrError::Unprocessable(format!("feedback[{i}]: {m}")))?,
            other => {
                return Err(at(format!(
                    "outcome {other:?} is not accepted or overridden"
                )));
            }
        };
        decisions.push((card.to_owned(), offered, decision));
    }
    for (card, offered, decision) in decisions {
        let _ = caller;
        state
            .agent
            .record_decision(&format!("cds-{card}"), &offered.receipt, &decision)
            .await
            .map_err(EhrError::Upstream)?;
        tracing::info!(
            service,
            requester = %offered.requester,
            result = %format!("{}/{}", offered.receipt.publisher, offered.receipt.summary_id),
            decision = match decision { Decision::Adopted => "adopted", Decision::Retested { .. } => "re-tested" },
            "CDS feedback recorded"
        );
    }
    Ok(())
}

/// The re-test an `overridden` feedback records: its override reason must be one the card
/// offered (national or local); "other" needs the user's comment.
fn overridden(state: &EhrState, f: &Value) -> Result<Decision, String> {
    let reason = f.get("overrideReason");
    let coding = reason.and_then(|r| r.get("reason"));
    let comment = reason.map_or("", |r| s(r, "userComment")).trim().to_owned();
    let Some(coding) = coding else {
        return Err("overridden without an override reason: re-testing a recognised result needs one of the card's overrideReasons".into());
    };
    let (system, code) = (s(coding, "system"), s(coding, "code"));
    let (reason, note) = match system {
        NATIONAL_REASONS => (
            RetestReason::from_code(code)
                .ok_or_else(|| format!("override reason {code:?} is not on the national list"))?,
            comment,
        ),
        LOCAL_REASONS => {
            let local = state
                .config
                .override_reasons
                .iter()
                .find(|r| r.code == code)
                .ok_or_else(|| format!("override reason {code:?} is not one of this member's"))?;
            let mapped = RetestReason::from_code(&local.maps_to)
                .ok_or_else(|| format!("override reason {code:?} maps to an unknown reason"))?;
            let note = if comment.is_empty() {
                local.display.clone()
            } else {
                format!("{}: {comment}", local.display)
            };
            (mapped, note)
        }
        other => {
            return Err(format!(
                "override reason system {other:?} is not one the card offered"
            ));
        }
    };
    if reason == RetestReason::Other && note.is_empty() {
        return Err(
            "override reason \"other\" needs the user's comment (overrideReason.userComment)"
                .into(),
        );
    }
    let note: String = note.chars().take(1000).collect();
    Ok(Decision::Retested {
        reason: Some(reason),
        note,
    })
}

/// At most `max` characters, with "…" when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Text from a result or the hub, made inert in Markdown.
pub fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '`'
                | '*'
                | '_'
                | '{'
                | '}'
                | '['
                | ']'
                | '('
                | ')'
                | '#'
                | '+'
                | '!'
                | '<'
                | '>'
                | '|'
                | '~'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_from_results_is_inert() {
        assert_eq!(md_escape("[x](javascript:1)"), "\\[x\\]\\(javascript:1\\)");
        assert_eq!(md_escape("血红蛋白 132"), "血红蛋白 132");
    }

    #[test]
    fn cut_counts_characters() {
        assert_eq!(cut("可互认结果", 3), "可互…");
        assert_eq!(cut("abc", 3), "abc");
    }

    #[test]
    fn malformed_requests_are_refused_with_their_reason() {
        let e = |b: &str| {
            parse_request(b.as_bytes(), "order-sign")
                .err()
                .map(|e| e.to_string())
        };
        assert!(e("not json").unwrap().contains("not JSON"));
        assert!(
            e(r#"{"hook":"order-select","hookInstance":"x","context":{}}"#)
                .unwrap()
                .contains("order-sign")
        );
        assert!(
            e(r#"{"hook":"order-sign","hookInstance":"x","context":{}}"#)
                .unwrap()
                .contains("draftOrders")
        );
        assert!(e(r#"{"hook":"order-sign","hookInstance":"x","context":{"draftOrders":{"resourceType":"Bundle","entry":{}}}}"#).unwrap().contains("array"));
        let ok = parse_request(
            br#"{"hook":"order-sign","hookInstance":"x","context":{"userId":"Practitioner/1","patientId":"p","draftOrders":{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"ServiceRequest","id":"sr1","code":{"coding":[{"system":"http://loinc.org","code":"718-7"}]}}},{"resource":{"resourceType":"MedicationRequest"}}]}}}"#,
            "order-sign",
        )
        .unwrap();
        assert_eq!(ok.drafts.len(), 1);
        assert_eq!(
            ok.drafts[0].reference.as_deref(),
            Some("ServiceRequest/sr1")
        );
        assert!(ok.patient.is_none());
    }

    #[test]
    fn order_select_looks_at_the_selection_only() {
        let r = parse_request(
            br#"{"hook":"order-select","hookInstance":"x","context":{"selections":["ServiceRequest/b"],"draftOrders":{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"ServiceRequest","id":"a","code":{"coding":[{"code":"1"}]}}},{"resource":{"resourceType":"ServiceRequest","id":"b","code":{"coding":[{"code":"2"}]}}}]}}}"#,
            "order-select",
        )
        .unwrap();
        assert_eq!(r.drafts.len(), 1);
        assert_eq!(r.drafts[0].codings[0].1, "2");
    }
}
