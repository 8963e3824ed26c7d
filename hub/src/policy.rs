//! The alliance policy file (TOML; see hub/policy.example.toml): parsing, validation and live
//! reloading.
//!
//! A policy is checked whole before it is used. Every error names the line and the field
//! (`line 214, items[31].validity_days: must be at least 1`); a policy with an error is refused
//! and the hub keeps the one it had. [`PolicyHandle`] holds the current policy; readers take an
//! `Arc<Policy>` and keep a consistent view for the whole request.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};
use toml::Spanned;

use huren_core::identity::InstitutionId;
use huren_core::rules::{
    CatalogueItem, Level, Member, Policy, QcKind, Qualification, QualificationTarget, RegionCode,
    Scope,
};
use huren_core::summary::{Category, UnixMillis};

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

/// Reads and checks a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

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
    let offset_seconds = huren_core::summary::parse_utc_offset(&raw.utc_offset)
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
            valid_to: UnixMillis(to_start + huren_core::rules::DAY_MS - 1),
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
            None | Some("not-recognised") => huren_core::rules::AfterRevocation::NotRecognised,
            Some("withheld") => huren_core::rules::AfterRevocation::Withheld,
            Some(other) => {
                return Err(c.err(
                    at,
                    field("summaries_after"),
                    format!("is \"{other}\"; use \"not-recognised\" or \"withheld\""),
                ));
            }
        };
        let revocation = huren_core::rules::Revocation {
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

/// The current policy, replaceable while the hub runs.
pub struct PolicyHandle {
    path: PathBuf,
    current: RwLock<(Arc<Policy>, Option<SystemTime>)>,
    /// The policy in force as TOML values (comments and layout aside): a reload with the same
    /// version label must hold the same values.
    content: RwLock<Option<toml::Table>>,
}

/// The file's TOML values, if it parses as TOML.
fn content_of(path: &Path) -> Option<toml::Table> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl PolicyHandle {
    /// Loads the policy at `path`; the hub does not start without a valid one.
    pub fn open(path: &Path) -> Result<Self, PolicyError> {
        let stamp = modified(path);
        let policy = load(path)?;
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new((Arc::new(policy), stamp)),
            content: RwLock::new(content_of(path)),
        })
    }

    /// The policy in force now.
    pub fn get(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(g) => g.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Reads the file again. On error the current policy stays and the error is returned.
    pub fn reload(&self) -> Result<Arc<Policy>, PolicyError> {
        let stamp = modified(&self.path);
        let policy = Arc::new(load(&self.path)?);
        let content = content_of(&self.path);
        let same_label = policy.version == self.get().version;
        let changed = match self.content.read() {
            Ok(c) => *c != content,
            Err(poisoned) => *poisoned.into_inner() != content,
        };
        if same_label && changed {
            return Err(PolicyError::VersionUnchanged {
                path: self.path.clone(),
                version: policy.version.clone(),
            });
        }
        if let Ok(mut c) = self.content.write() {
            *c = content;
        }
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = (policy.clone(), stamp);
        Ok(policy)
    }

    /// Reloads if the file's modification time changed since the last load. Logs the outcome.
    pub fn reload_if_changed(&self) {
        let stamp = modified(&self.path);
        let last = match self.current.read() {
            Ok(g) => g.1,
            Err(poisoned) => poisoned.into_inner().1,
        };
        if stamp != last {
            self.reload_logged();
        }
    }

    /// Reloads and logs the outcome; on error the file's time is remembered so the same broken
    /// file is reported once, not every poll.
    pub fn reload_logged(&self) {
        match self.reload() {
            Ok(p) => {
                tracing::info!(version = %p.version, items = p.items.len(), members = p.members.len(), "policy loaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "policy refused; keeping the policy in force");
                let stamp = modified(&self.path);
                if let Ok(mut g) = self.current.write() {
                    g.1 = stamp;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.example.toml")
    }

    /// A changed policy under an unchanged version label is refused on reload (the one in
    /// force stays); a comment-only edit is not a change; a new label is taken.
    #[test]
    fn a_changed_policy_needs_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let text = std::fs::read_to_string(example()).unwrap();
        std::fs::write(&path, &text).unwrap();
        let handle = PolicyHandle::open(&path).unwrap();
        let before = handle.get();
        let shorter = text.replacen("validity_days = 7", "validity_days = 1", 1);
        assert_ne!(shorter, text);
        std::fs::write(&path, &shorter).unwrap();
        let err = handle.reload().unwrap_err();
        assert!(matches!(err, PolicyError::VersionUnchanged { .. }), "{err}");
        assert!(Arc::ptr_eq(&handle.get(), &before));
        std::fs::write(&path, format!("{text}\n# a comment\n")).unwrap();
        handle.reload().unwrap();
        let relabelled = shorter.replacen("version = \"2026.11-1\"", "version = \"2026.11-2\"", 1);
        std::fs::write(&path, relabelled).unwrap();
        assert_eq!(handle.reload().unwrap().version, "2026.11-2");
    }

    #[test]
    fn example_policy_is_valid_and_realistic() {
        let p = load(&example()).unwrap();
        assert!(p.items.len() >= 40, "{} items", p.items.len());
        for category in [Category::Lab, Category::Imaging] {
            assert!(p.items.values().any(|i| i.category == category));
        }
        let windows: BTreeSet<u32> = p.items.values().map(|i| i.validity_days).collect();
        assert!(
            windows.len() >= 4,
            "windows should differ by item: {windows:?}"
        );
        for m in ["shx-prov-people", "lantian-county"] {
            let id = InstitutionId::parse(m).unwrap();
            assert!(
                p.mappings.keys().any(|(member, _)| *member == id),
                "{m} has no mappings"
            );
        }
        let hgb = p.item("http://loinc.org", "718-7").unwrap();
        assert_eq!(hgb.price_fen, 500);
        let county = InstitutionId::parse("lantian-county").unwrap();
        assert_eq!(
            p.map_local(&county, "XCG-HB").map(|i| i.code.as_str()),
            Some("718-7")
        );
        // valid_to 2026-12-31 at +08:00 ends at 2026-12-31T15:59:59.999Z.
        let q = &p.qualifications[0];
        assert_eq!(q.valid_to.0, 1_798_732_799_999);
    }

    /// Breaks the example one way at a time; each error must name its line and field.
    #[test]
    fn errors_name_line_and_field() {
        let text = std::fs::read_to_string(example()).unwrap();
        let line_of = |needle: &str| text[..text.find(needle).unwrap()].matches('\n').count() + 1;
        let cases = [
            (
                "validity_days = 3\n",
                "validity_days = 0\n",
                "validity_days",
                "must be at least 1",
            ),
            (
                "scope = \"region:610000\"\nprice_yuan = 4.00",
                "scope = \"province\"\nprice_yuan = 4.00",
                "scope",
                "GB/T 2260",
            ),
            (
                "level = \"primary\"",
                "level = \"county\"",
                "level",
                "tertiary, secondary or primary",
            ),
            (
                "item = \"2345-7\"\nkind",
                "item = \"0000-0\"\nkind",
                "item",
                "not in the catalogue",
            ),
            (
                "member = \"lantian-county\"\nlocal_code = \"XCG-HB\"",
                "member = \"nobody\"\nlocal_code = \"XCG-HB\"",
                "member",
                "not in [[members]]",
            ),
            (
                "valid_to = 2027-05-31",
                "valid_to = 2025-05-31",
                "valid_to",
                "before valid_from",
            ),
        ];
        for (from, to, field, phrase) in cases {
            let broken = text.replacen(from, to, 1);
            assert_ne!(broken, text, "{from:?} not found");
            let err = parse(Path::new("policy.toml"), &broken).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(field) && msg.contains(phrase), "{msg}");
            match err {
                PolicyError::Field { line, .. } => {
                    // The entry starts at most a few lines above the changed key.
                    let changed = line_of(from);
                    assert!(
                        line <= changed && changed - line < 12,
                        "line {line} vs {changed}: {msg}"
                    );
                }
                other => panic!("expected a field error, got {other}"),
            }
        }
        let err = parse(Path::new("policy.toml"), "version = \"x\"\nunknown = 1\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown") && err.to_string().contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn revocations_parse_and_their_errors_name_line_and_field() {
        let text = std::fs::read_to_string(example()).unwrap();
        let with = |entry: &str| format!("{text}\n[[revoked]]\n{entry}\n");
        let p = parse(
            Path::new("policy.toml"),
            &with("member = \"lantian-tangyu\"\nat = 2026-11-20T10:00:00+08:00\nreason = \"key compromise\""),
        )
        .unwrap();
        let id = InstitutionId::parse("lantian-tangyu").unwrap();
        let r = &p.revoked[&id];
        assert_eq!(r.at, UnixMillis(1_795_140_000_000));
        assert_eq!(r.reason, "key compromise");
        assert_eq!(r.after, huren_core::rules::AfterRevocation::NotRecognised);
        assert!(p.revoked_at(&id, UnixMillis(1_795_139_999_999)).is_none());
        assert!(p.revoked_at(&id, UnixMillis(1_795_140_000_000)).is_some());
        let revoked_line = with("").matches('\n').count() - 1;
        for (entry, field, phrase) in [
            (
                "member = \"nobody\"\nat = 2026-11-20T10:00:00+08:00\nreason = \"x\"",
                "revoked[0].member",
                "not in [[members]]",
            ),
            (
                "member = \"lantian-tangyu\"\nat = 2026-11-20\nreason = \"x\"",
                "revoked[0].at",
                "with an offset",
            ),
            (
                "member = \"lantian-tangyu\"\nat = 2026-11-20T10:00:00Z\nreason = \" \"",
                "revoked[0].reason",
                "must say why",
            ),
            (
                "member = \"lantian-tangyu\"\nat = 2026-11-20T10:00:00Z\nreason = \"x\"\nsummaries_after = \"hidden\"",
                "revoked[0].summaries_after",
                "\"withheld\"",
            ),
        ] {
            let err = parse(Path::new("policy.toml"), &with(entry)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(field) && msg.contains(phrase), "{msg}");
            match err {
                PolicyError::Field { line, .. } => assert!(
                    line.abs_diff(revoked_line) <= 2,
                    "line {line} vs {revoked_line}: {msg}"
                ),
                other => panic!("expected a field error, got {other}"),
            }
        }
    }

    #[test]
    fn a_broken_file_keeps_the_policy_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::copy(example(), &path).unwrap();
        let handle = PolicyHandle::open(&path).unwrap();
        assert_eq!(handle.get().version, "2026.11-1");
        std::fs::write(&path, "version = \n").unwrap();
        assert!(handle.reload().is_err());
        assert_eq!(handle.get().version, "2026.11-1");
        let text = std::fs::read_to_string(example())
            .unwrap()
            .replace("2026.11-1", "2026.12-1");
        std::fs::write(&path, text).unwrap();
        handle.reload().unwrap();
        assert_eq!(handle.get().version, "2026.12-1");
    }
}
