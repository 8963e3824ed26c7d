//! The alliance policy file (TOML; see hub/policy.example.toml) read into a [`Policy`]: every
//! field checked, every error naming its line and field
//! (`line 214, items[31].validity_days: must be at least 1`).
//!
//! Pure: the hub reads the file and parses it here; an agent or an auditor parses the same
//! text, taken from the hub's log (a policy leaf, `logentry::Entry::Policy`), with the same
//! code, so a verdict can be replayed under exactly the rules the hub used.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};
use toml::Spanned;

use crate::identity::InstitutionId;
use crate::rules::{
    CatalogueItem, Level, Member, Policy, QcKind, Qualification, QualificationTarget, RegionCode,
    Scope,
};
use crate::summary::{Category, UnixMillis};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: String,
    #[serde(default)]
    alliance: String,
    #[serde(default = "default_offset")]
    utc_offset: String,
    #[serde(default = "default_system")]
    catalogue_system: String,
    #[serde(default)]
    higher_recognises_lower: bool,
    #[serde(default)]
    administrators: Vec<String>,
    #[serde(default)]
    members: Vec<Spanned<RawMember>>,
    #[serde(default)]
    items: Vec<Spanned<RawItem>>,
    #[serde(default)]
    qualifications: Vec<Spanned<RawQualification>>,
    #[serde(default)]
    mappings: Vec<Spanned<RawMapping>>,
    #[serde(default)]
    revoked: Vec<Spanned<RawRevocation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    member: String,
    at: toml::value::Datetime,
    reason: String,
    /// "not-recognised" (default) or "withheld".
    #[serde(default)]
    summaries_after: Option<String>,
}

fn default_offset() -> String {
    "+08:00".into()
}

fn default_system() -> String {
    "http://loinc.org".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: String,
    name: String,
    level: String,
    region: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    #[serde(default)]
    system: Option<String>,
    code: String,
    name: String,
    category: String,
    group: String,
    validity_days: u32,
    scope: String,
    #[serde(default)]
    price_yuan: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQualification {
    member: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    item: Option<String>,
    #[serde(default)]
    system: Option<String>,
    kind: String,
    scope: String,
    mark: String,
    valid_from: toml::value::Datetime,
    valid_to: toml::value::Datetime,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    member: String,
    local_code: String,
    item: String,
    #[serde(default)]
    system: Option<String>,
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path} line {line}, {field}: {message}")]
    Field {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
    #[error(
        "{path} changed but its version is still \"{version}\": give the changed policy a new version, so every verdict names the rules it was made under"
    )]
    VersionUnchanged { path: PathBuf, version: String },
}

/// Collects field errors with their lines; the first one is reported.
struct Check<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Check<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn err(&self, offset: usize, field: String, message: impl Into<String>) -> PolicyError {
        PolicyError::Field {
            path: self.path.to_owned(),
            line: self.line(offset),
            field,
            message: message.into(),
        }
    }
}

fn parse_scope(s: &str) -> Option<Scope> {
    match s {
        "national" => Some(Scope::National),
        "alliance" => Some(Scope::Alliance),
        _ => s
            .strip_prefix("region:")
            .and_then(RegionCode::parse)
            .map(Scope::Region),
    }
}

const SCOPE_HELP: &str = "must be national, alliance or region:<6-digit GB/T 2260 code>";

/// Checks policy text; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    let raw: RawPolicy =
        toml::from_str(text).map_err(|e: toml::de::Error| PolicyError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let c = Check { path, text };
    if raw.version.trim().is_empty() {
        return Err(c.err(0, "version".into(), "must not be empty"));
    }
    let offset_seconds = crate::summary::parse_utc_offset(&raw.utc_offset)
        .ok_or_else(|| c.err(0, "utc_offset".into(), "must look like +08:00"))?;
    let offset = UtcOffset::from_whole_seconds(offset_seconds)
        .map_err(|_| c.err(0, "utc_offset".into(), "must look like +08:00"))?;
    let mut policy = Policy {
        version: raw.version.clone(),
        higher_recognises_lower: raw.higher_recognises_lower,
        utc_offset_seconds: offset_seconds,
        ..Policy::default()
    };
    let _ = &raw.alliance;

    for (i, m) in raw.members.iter().enumerate() {
        let at = m.span().start;
        let m = m.get_ref();
        let field = |f: &str| format!("members[{i}].{f}");
        let id = InstitutionId::parse(&m.id).map_err(|e| c.err(at, field("id"), e.to_string()))?;
        let level = Level::from_name(&m.level)
            .ok_or_else(|| c.err(at, field("level"), "must be tertiary, secondary or primary"))?;
        let region = RegionCode::parse(&m.region)
            .ok_or_else(|| c.err(at, field("region"), "must be a 6-digit GB/T 2260 code"))?;
        if m.name.trim().is_empty() {
            return Err(c.err(at, field("name"), "must not be empty"));
        }
        let member = Member {
            id: id.clone(),
            name: m.name.clone(),
            level,
            region,
        };
        if policy.members.insert(id.clone(), member).is_some() {
            return Err(c.err(at, field("id"), format!("{id} is listed twice")));
        }
    }
    for (i, a) in raw.administrators.iter().enumerate() {
        let id = InstitutionId::parse(a)
            .map_err(|e| c.err(0, format!("administrators[{i}]"), e.to_string()))?;
        policy.administrators.insert(id);
    }

    let mut groups = BTreeSet::new();
    for (i, it) in raw.items.iter().enumerate() {
        let at = it.span().start;
        let it = it.get_ref();
        let field = |f: &str| format!("items[{i}].{f}");
        let system = it
            .system
            .clone()
            .unwrap_or_else(|| raw.catalogue_system.clone());
        if it.code.trim().is_empty() || it.code.contains(char::is_whitespace) {
            return Err(c.err(at, field("code"), "must be a code without spaces"));
        }
        let category = Category::from_name(&it.category).ok_or_else(|| {
            c.err(
                at,
                field("category"),
                "must be lab, imaging, electrophysiology or nuclear-medicine",
            )
        })?;
        if it.group.trim().is_empty() {
            return Err(c.err(at, field("group"), "must not be empty"));
        }
        if it.validity_days == 0 {
            return Err(c.err(at, field("validity_days"), "must be at least 1"));
        }
        let scope = parse_scope(&it.scope).ok_or_else(|| c.err(at, field("scope"), SCOPE_HELP))?;
        if !(it.price_yuan.is_finite() && it.price_yuan >= 0.0) {
            return Err(c.err(at, field("price_yuan"), "must be 0 or more"));
        }
        groups.insert(it.group.clone());
        let item = CatalogueItem {
            system: system.clone(),
            code: it.code.clone(),
            name: it.name.clone(),
            category,
            group: it.group.clone(),
            validity_days: it.validity_days,
            scope,
            price_fen: (it.price_yuan * 100.0).round() as u64,
        };
        if policy
            .items
            .insert((system, it.code.clone()), item)
            .is_some()
        {
            return Err(c.err(at, field("code"), format!("{} is listed twice", it.code)));
        }
    }

    let member_ref = |at: usize, field: String, id: &str| -> Result<InstitutionId, PolicyError> {
        let id = InstitutionId::parse(id).map_err(|e| c.err(at, field.clone(), e.to_string()))?;
        if !policy.members.contains_key(&id) {
            return Err(c.err(at, field, format!("{id} is not in [[members]]")));
        }
        Ok(id)
    };
    let mut qualifications = Vec::new();
    for (i, q) in raw.qualifications.iter().enumerate() {
        let at = q.span().start;
        let q = q.get_ref();
        let field = |f: &str| format!("qualifications[{i}].{f}");
        let member = member_ref(at, field("member"), &q.member)?;
        let target = match (&q.group, &q.item) {
            (Some(g), None) => {
                if !groups.contains(g) {
                    return Err(c.err(
                        at,
                        field("group"),
                        format!("no catalogue item is in group {g:?}"),
                    ));
                }
                QualificationTarget::Group(g.clone())
            }
            (None, Some(code)) => {
                let system = q
                    .system
                    .clone()
                    .unwrap_or_else(|| raw.catalogue_system.clone());
                if policy.item(&system, code).is_none() {
                    return Err(c.err(
                        at,
                        field("item"),
                        format!("{code} is not in the catalogue"),
                    ));
                }
                QualificationTarget::Item {
                    system,
                    code: code.clone(),
                }
            }
            _ => return Err(c.err(at, field("group"), "name exactly one of group and item")),
        };
        let kind = match q.kind.as_str() {
            "eqa" => QcKind::Eqa,
            "exam-qc" => QcKind::ExamQc,
            _ => return Err(c.err(at, field("kind"), "must be eqa or exam-qc")),
        };
        let scope = parse_scope(&q.scope).ok_or_else(|| c.err(at, field("scope"), SCOPE_HELP))?;
        if q.mark.trim().is_empty() {
            return Err(c.err(at, field("mark"), "must not be empty (e.g. 全国HR)"));
        }
        let from = day_start(&q.valid_from, offset)
            .ok_or_else(|| c.err(at, field("valid_from"), "must be a date such as 2026-01-01"))?;
        let to_start = day_start(&q.valid_to, offset)
            .ok_or_else(|| c.err(at, field("valid_to"), "must be a date such as 2026-12-31"))?;
        if to_start < from {
            return Err(c.err(at, field("valid_to"), "is before valid_from"));
        }
        qualifications.push(Qualification {
            member,
            target,
            kind,
            scope,
            mark: q.mark.clone(),
            valid_from: UnixMillis(from),
            // valid_to is inclusive: up to the last millisecond of that day.
            valid_to: UnixMillis(to_start + crate::rules::DAY_MS - 1),
        });
    }
    let mut mappings = BTreeMap::new();
    for (i, m) in raw.mappings.iter().enumerate() {
        let at = m.span().start;
        let m = m.get_ref();
        let field = |f: &str| format!("mappings[{i}].{f}");
        let member = member_ref(at, field("member"), &m.member)?;
        let system = m
            .system
            .clone()
            .unwrap_or_else(|| raw.catalogue_system.clone());
        if policy.item(&system, &m.item).is_none() {
            return Err(c.err(
                at,
                field("item"),
                format!("{} is not in the catalogue", m.item),
            ));
        }
        if m.local_code.trim().is_empty() {
            return Err(c.err(at, field("local_code"), "must not be empty"));
        }
        if mappings
            .insert(
                (member.clone(), m.local_code.clone()),
                (system, m.item.clone()),
            )
            .is_some()
        {
            return Err(c.err(
                at,
                field("local_code"),
                format!("{} is mapped twice for {member}", m.local_code),
            ));
        }
    }
    let mut revoked = BTreeMap::new();
    for (i, r) in raw.revoked.iter().enumerate() {
        let at = r.span().start;
        let r = r.get_ref();
        let field = |f: &str| format!("revoked[{i}].{f}");
        let member = member_ref(at, field("member"), &r.member)?;
        let when = instant(&r.at).ok_or_else(|| {
            c.err(
                at,
                field("at"),
                "must be a date and time with an offset, such as 2026-11-20T10:00:00+08:00",
            )
        })?;
        if r.reason.trim().is_empty() {
            return Err(c.err(
                at,
                field("reason"),
                "must say why (e.g. \"key compromise\")",
            ));
        }
        let after = match r.summaries_after.as_deref() {
            None | Some("not-recognised") => crate::rules::AfterRevocation::NotRecognised,
            Some("withheld") => crate::rules::AfterRevocation::Withheld,
            Some(other) => {
                return Err(c.err(
                    at,
                    field("summaries_after"),
                    format!("is \"{other}\"; use \"not-recognised\" or \"withheld\""),
                ));
            }
        };
        let revocation = crate::rules::Revocation {
            at: UnixMillis(when),
            reason: r.reason.clone(),
            after,
        };
        if revoked.insert(member.clone(), revocation).is_some() {
            return Err(c.err(at, field("member"), format!("{member} is revoked twice")));
        }
    }
    policy.revoked = revoked;
    policy.qualifications = qualifications;
    policy.mappings = mappings;
    Ok(policy)
}

/// A TOML offset date-time in Unix milliseconds; `None` for a local date or time.
fn instant(d: &toml::value::Datetime) -> Option<i64> {
    let (date, time, offset) = (d.date?, d.time?, d.offset?);
    let date = Date::from_calendar_date(
        i32::from(date.year),
        Month::try_from(date.month).ok()?,
        date.day,
    )
    .ok()?;
    let time = Time::from_hms_nano(time.hour, time.minute, time.second, time.nanosecond).ok()?;
    let offset = match offset {
        toml::value::Offset::Z => UtcOffset::UTC,
        toml::value::Offset::Custom { minutes } => {
            UtcOffset::from_whole_seconds(i32::from(minutes) * 60).ok()?
        }
    };
    let t = PrimitiveDateTime::new(date, time).assume_offset(offset);
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Midnight at the start of a TOML local date, at `offset`, in Unix milliseconds.
fn day_start(d: &toml::value::Datetime, offset: UtcOffset) -> Option<i64> {
    let date = d.date?;
    if d.time.is_some() {
        return None;
    }
    let date = Date::from_calendar_date(
        i32::from(date.year),
        Month::try_from(date.month).ok()?,
        date.day,
    )
    .ok()?;
    let t = PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_offset(offset);
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}
