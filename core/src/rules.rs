//! Mutual-recognition rules: may this member reuse this result, and if not, why not.
//!
//! [`evaluate`] applies every rule to one candidate result and returns a [`Verdict`] that lists
//! every reason that applies, so a clinician sees the whole picture at once:
//!
//! | rule | reason |
//! |---|---|
//! | the item is in the alliance catalogue | [`Reason::NotInCatalogue`] |
//! | performed no longer ago than the item's validity window (参考时限) at the query time | [`Reason::OutsideValidityWindow`] |
//! | the publisher held an EQA (室间质评) or exam-QC qualification for the item on the day performed | [`Reason::PublisherNotQualified`] |
//! | the asker lies inside the qualification's scope and the item's scope | [`Reason::OutsideScope`] |
//! | direction: same level and lower-recognises-higher always; higher-recognises-lower only by policy | [`Reason::Direction`] |
//! | the result is not voided | [`Reason::Voided`] |
//! | the result is the latest version | [`Reason::Superseded`] |
//!
//! A recognised result carries the HR mark of the qualification that makes it recognisable
//! (e.g. "全国HR"). Re-testing a recognised result needs a coded reason ([`check_decision`]).
//! Everything here is a plain function over plain values.

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::InstitutionId;
use crate::summary::{Category, Status, Summary, UnixMillis};

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Institution level (医院等级).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// 一级: township health centres, community hospitals.
    Primary = 1,
    /// 二级: most county hospitals.
    Secondary = 2,
    /// 三级: tertiary hospitals.
    Tertiary = 3,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
            Self::Tertiary => "tertiary",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Primary, Self::Secondary, Self::Tertiary]
            .into_iter()
            .find(|l| l.name() == s)
    }
}

/// An administrative division code (GB/T 2260), six digits: 610000 Shaanxi province, 610100
/// Xi'an city, 610122 Lantian county.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionCode(String);

impl RegionCode {
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())).then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The significant prefix: trailing "00" pairs name the whole province or city.
    fn prefix(&self) -> &str {
        let mut p = self.0.as_str();
        while p.len() > 2 && p.ends_with("00") {
            p = &p[..p.len() - 2];
        }
        p
    }

    /// Whether `other` lies inside this division (or is it).
    pub fn contains(&self, other: &RegionCode) -> bool {
        other.0.starts_with(self.prefix())
    }
}

/// Where a qualification or a catalogue entry applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole country (全国).
    National,
    /// One administrative division (a province or a city).
    Region(RegionCode),
    /// The alliance's members, wherever they are.
    Alliance,
}

impl Scope {
    /// Whether a member in `region` lies inside this scope. Every asker is an alliance member.
    pub fn covers(&self, region: &RegionCode) -> bool {
        match self {
            Self::National | Self::Alliance => true,
            Self::Region(r) => r.contains(region),
        }
    }

    /// Wider scopes sort higher: national > province > city > county > alliance.
    fn breadth(&self) -> usize {
        match self {
            Self::National => 10,
            Self::Region(r) => 8 - r.prefix().len(),
            Self::Alliance => 0,
        }
    }
}

/// A member institution as the policy knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: InstitutionId,
    pub name: String,
    pub level: Level,
    pub region: RegionCode,
}

/// One entry of the mutual-recognition catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogueItem {
    pub system: String,
    pub code: String,
    pub name: String,
    pub category: Category,
    /// Qualification group the item belongs to, e.g. "haematology", "ct".
    pub group: String,
    /// Reference time limit (参考时限) in days.
    pub validity_days: u32,
    pub scope: Scope,
    /// Reference price in fen (0.01 yuan), for "money saved".
    pub price_fen: u64,
}

/// The kind of quality control behind a qualification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QcKind {
    /// External quality assessment (室间质评), for lab tests.
    Eqa,
    /// Exam quality control (影像/检查质控), for imaging, electrophysiology and nuclear medicine.
    ExamQc,
}

impl QcKind {
    pub fn for_category(c: Category) -> Self {
        match c {
            Category::Lab => Self::Eqa,
            _ => Self::ExamQc,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Eqa => "eqa",
            Self::ExamQc => "exam-qc",
        }
    }
}

/// What a qualification covers: one item, or a whole group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QualificationTarget {
    Item { system: String, code: String },
    Group(String),
}

/// A publisher's qualification for an item or group, valid over a period (inclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qualification {
    pub member: InstitutionId,
    pub target: QualificationTarget,
    pub kind: QcKind,
    pub scope: Scope,
    /// The mark printed on reports, e.g. "全国HR", "陕HR", "西安HR".
    pub mark: String,
    pub valid_from: UnixMillis,
    pub valid_to: UnixMillis,
}

/// The alliance policy: catalogue, members, qualifications, mappings, direction.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Administrator-chosen version label, reported with every verdict.
    pub version: String,
    pub items: BTreeMap<(String, String), CatalogueItem>,
    pub members: BTreeMap<InstitutionId, Member>,
    pub qualifications: Vec<Qualification>,
    /// (member, local code) → (system, code) of a catalogue item.
    pub mappings: BTreeMap<(InstitutionId, String), (String, String)>,
    /// Whether a higher-level member recognises a lower-level member's results.
    pub higher_recognises_lower: bool,
    /// Institutions that may read statistics and audits for the whole alliance.
    pub administrators: BTreeSet<InstitutionId>,
    /// The alliance's UTC offset in seconds: dates in the policy and statistics days are local.
    pub utc_offset_seconds: i32,
    /// Members whose certificates the administrator revoked, and from when. From that moment
    /// the hub refuses the member's calls and new summaries; what it published before stays.
    pub revoked: BTreeMap<InstitutionId, Revocation>,
    /// The index of the log leaf that holds this policy's text (`logentry::Entry::Policy`):
    /// the hub logs every policy before it puts it in force, and every verdict names it.
    /// `None` for a policy that is not (yet) in a log.
    pub log_index: Option<u64>,
}

/// A member's revocation: from `at` on, its certificates are no longer honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub at: UnixMillis,
    pub reason: String,
    /// What queries do with the summaries the hub accepted from the member at or after `at`
    /// (by log time: a backdated revocation after a key compromise); earlier ones stay.
    pub after: AfterRevocation,
}

/// What becomes of a revoked member's summaries accepted from its revocation on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AfterRevocation {
    /// Returned, NOT_RECOGNISED with the reason [`Reason::PublisherRevoked`], so the person
    /// asking sees what the compromised key signed.
    #[default]
    NotRecognised,
    /// Not returned at all.
    Withheld,
}

/// Why a result is not recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    NotInCatalogue,
    OutsideValidityWindow,
    PublisherNotQualified,
    Direction,
    Voided,
    Superseded,
    OutsideScope,
    /// The hub accepted the summary at or after its publisher's revocation (a compromised
    /// key may have signed it).
    PublisherRevoked,
}

impl Reason {
    /// A short code for reports (`not-in-catalogue`, `outside-validity-window`, …).
    pub fn code(self) -> &'static str {
        match self {
            Self::NotInCatalogue => "not-in-catalogue",
            Self::OutsideValidityWindow => "outside-validity-window",
            Self::PublisherNotQualified => "publisher-not-qualified",
            Self::Direction => "direction",
            Self::Voided => "voided",
            Self::Superseded => "superseded",
            Self::OutsideScope => "outside-scope",
            Self::PublisherRevoked => "publisher-revoked",
        }
    }
}

/// The answer for one candidate result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Every reason that applies, with a sentence for people. Empty means recognised.
    pub reasons: Vec<(Reason, String)>,
    /// The HR mark when recognised.
    pub hr_mark: Option<String>,
    /// Last moment the result is inside its validity window (catalogue items only).
    pub valid_until: Option<UnixMillis>,
    /// What the verdict was made under: set by the hub on every verdict it gives, so anyone
    /// can replay it ([`replay`]); `None` from [`evaluate`] alone, and in answers of hubs
    /// from before policies were logged.
    pub basis: Option<Basis>,
}

/// What a verdict was made under: the policy (its log leaf and version label) and the moment
/// judged at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Basis {
    /// The index of the policy's leaf in the hub's log.
    pub policy_index: u64,
    /// The policy's version label.
    pub policy_version: String,
    /// The moment the result was judged at (a query's as-of time, or when it was answered).
    pub as_of: UnixMillis,
}

impl Verdict {
    pub fn recognised(&self) -> bool {
        self.reasons.is_empty()
    }

    pub fn has(&self, r: Reason) -> bool {
        self.reasons.iter().any(|(x, _)| *x == r)
    }
}

impl Policy {
    pub fn item(&self, system: &str, code: &str) -> Option<&CatalogueItem> {
        self.items.get(&(system.to_owned(), code.to_owned()))
    }

    pub fn member(&self, id: &InstitutionId) -> Option<&Member> {
        self.members.get(id)
    }

    /// The catalogue item a member's local code maps to.
    pub fn map_local(&self, member: &InstitutionId, local_code: &str) -> Option<&CatalogueItem> {
        let (system, code) = self
            .mappings
            .get(&(member.clone(), local_code.to_owned()))?;
        self.item(system, code)
    }

    pub fn is_administrator(&self, id: &InstitutionId) -> bool {
        self.administrators.contains(id)
    }

    /// The revocation of `publisher` that covers a summary the hub accepted at `accepted_at`
    /// (revoked at or before it).
    pub fn revocation_covering(
        &self,
        publisher: &InstitutionId,
        accepted_at: UnixMillis,
    ) -> Option<&Revocation> {
        self.revoked.get(publisher).filter(|r| r.at <= accepted_at)
    }

    /// The revocation of `id` if it is in force at `now` (revoked at or before `now`).
    pub fn revoked_at(&self, id: &InstitutionId, now: UnixMillis) -> Option<&Revocation> {
        self.revoked.get(id).filter(|r| r.at <= now)
    }
}

fn days(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// Applies every recognition rule to `summary` for `asker` at `as_of`. `is_latest` is false for
/// an earlier version of a result.
pub fn evaluate(
    policy: &Policy,
    asker: &InstitutionId,
    summary: &Summary,
    is_latest: bool,
    as_of: UnixMillis,
) -> Verdict {
    let mut reasons = Vec::new();
    let mut hr_mark = None;
    let mut valid_until = None;
    let asker_member = policy.member(asker);
    let publisher = policy.member(&summary.publisher);
    let item = policy.item(&summary.item.system, &summary.item.code);

    match item {
        None => reasons.push((
            Reason::NotInCatalogue,
            format!(
                "item {} ({}) is not in the alliance catalogue (policy {})",
                summary.item.code, summary.item.system, policy.version
            ),
        )),
        Some(item) => {
            let until = summary
                .performed_at
                .0
                .saturating_add(i64::from(item.validity_days) * DAY_MS);
            valid_until = Some(UnixMillis(until));
            if as_of.0 > until {
                reasons.push((
                    Reason::OutsideValidityWindow,
                    format!(
                        "performed {} days before the query; {} is recognised for {} days",
                        days(as_of.0 - summary.performed_at.0),
                        item.name,
                        item.validity_days
                    ),
                ));
            }
            if let Some(asker) = asker_member
                && !item.scope.covers(&asker.region)
            {
                reasons.push((
                    Reason::OutsideScope,
                    format!(
                        "{} is recognised only within its catalogue scope, which does not cover {}",
                        item.name, asker.id
                    ),
                ));
            }
            match publisher {
                None => reasons.push((
                    Reason::PublisherNotQualified,
                    format!(
                        "{} is not a member in the alliance policy",
                        summary.publisher
                    ),
                )),
                Some(p) => {
                    let kind = QcKind::for_category(item.category);
                    let held: Vec<&Qualification> = policy
                        .qualifications
                        .iter()
                        .filter(|q| {
                            q.member == p.id
                                && q.kind == kind
                                && q.valid_from <= summary.performed_at
                                && summary.performed_at <= q.valid_to
                                && match &q.target {
                                    QualificationTarget::Item { system, code } => {
                                        *system == item.system && *code == item.code
                                    }
                                    QualificationTarget::Group(g) => *g == item.group,
                                }
                        })
                        .collect();
                    if held.is_empty() {
                        reasons.push((
                            Reason::PublisherNotQualified,
                            format!(
                                "{} held no {} qualification for {} on the day it was performed",
                                p.id,
                                kind.name(),
                                item.name
                            ),
                        ));
                    } else {
                        let covering = asker_member.and_then(|a| {
                            held.iter()
                                .filter(|q| q.scope.covers(&a.region))
                                .max_by_key(|q| q.scope.breadth())
                        });
                        match covering {
                            Some(q) => hr_mark = Some(q.mark.clone()),
                            None => reasons.push((
                                Reason::OutsideScope,
                                format!(
                                    "the publisher's qualification ({}) does not cover {}",
                                    held.iter()
                                        .map(|q| q.mark.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", "),
                                    asker
                                ),
                            )),
                        }
                    }
                }
            }
        }
    }
    if let (Some(a), Some(p)) = (asker_member, publisher)
        && a.level > p.level
        && !policy.higher_recognises_lower
    {
        reasons.push((
            Reason::Direction,
            format!(
                "a {} institution does not recognise a {} institution's results under this policy",
                a.level.name(),
                p.level.name()
            ),
        ));
    }
    if summary.status == Status::Voided {
        reasons.push((
            Reason::Voided,
            format!("voided by {}: {}", summary.publisher, summary.status_reason),
        ));
    }
    if !is_latest {
        reasons.push((
            Reason::Superseded,
            format!(
                "version {} has been superseded by a later version",
                summary.version
            ),
        ));
    }
    reasons.sort_by_key(|(r, _)| *r);
    // One entry per reason; two explanations of the same reason are joined.
    reasons.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            earlier.1 = format!("{}; {}", earlier.1, later.1);
        }
        same
    });
    if !reasons.is_empty() {
        hr_mark = None;
    }
    Verdict {
        reasons,
        hr_mark,
        valid_until,
        basis: None,
    }
}

/// The verdict the hub gives: [`evaluate`], plus the publisher's revocation when it covers the
/// time the hub accepted the summary (`accepted_at`, from its log leaf), under a policy with
/// a log index, named in [`Verdict::basis`]. The one function the hub judges with and a
/// verifier replays with.
pub fn judge(
    policy: &Policy,
    asker: &InstitutionId,
    summary: &Summary,
    accepted_at: UnixMillis,
    is_latest: bool,
    as_of: UnixMillis,
) -> Verdict {
    let mut verdict = evaluate(policy, asker, summary, is_latest, as_of);
    if let Some(r) = policy.revocation_covering(&summary.publisher, accepted_at) {
        verdict.reasons.push((
            Reason::PublisherRevoked,
            format!(
                "publisher revoked ({}) at {}; the hub accepted this result at {}, after that",
                r.reason,
                rfc3339(r.at),
                rfc3339(accepted_at)
            ),
        ));
        verdict.hr_mark = None;
    }
    verdict.basis = policy.log_index.map(|policy_index| Basis {
        policy_index,
        policy_version: policy.version.clone(),
        as_of,
    });
    verdict
}

/// A time as RFC 3339 (UTC), or its milliseconds when it has no calendar date.
pub fn rfc3339(t: UnixMillis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.0) * 1_000_000)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{} ms", t.0))
}

/// Where a replayed verdict differs from the one given: each difference as a line for people.
/// Reasons are compared by code (their sentences are for people and may be worded
/// differently by another release), the HR mark and the end of the validity window exactly.
pub fn verdict_differences(given: &Verdict, replayed: &Verdict) -> Vec<String> {
    let mut out = Vec::new();
    let word = |v: &Verdict| {
        if v.recognised() {
            "RECOGNISED"
        } else {
            "NOT_RECOGNISED"
        }
    };
    if given.recognised() != replayed.recognised() {
        out.push(format!(
            "recognition: the hub said {}, the policy gives {}",
            word(given),
            word(replayed)
        ));
    }
    let codes = |v: &Verdict| {
        v.reasons
            .iter()
            .map(|(r, _)| *r)
            .collect::<BTreeSet<Reason>>()
    };
    let (g, r) = (codes(given), codes(replayed));
    for missing in r.difference(&g) {
        out.push(format!(
            "reason {} applies but the hub did not give it",
            missing.code()
        ));
    }
    for extra in g.difference(&r) {
        out.push(format!(
            "reason {} was given by the hub but does not apply",
            extra.code()
        ));
    }
    if given.hr_mark != replayed.hr_mark {
        out.push(format!(
            "HR mark: the hub said {:?}, the policy gives {:?}",
            given.hr_mark.as_deref().unwrap_or(""),
            replayed.hr_mark.as_deref().unwrap_or("")
        ));
    }
    if given.valid_until != replayed.valid_until {
        out.push(format!(
            "valid until: the hub said {}, the policy gives {}",
            given.valid_until.map_or("-".into(), rfc3339),
            replayed.valid_until.map_or("-".into(), rfc3339)
        ));
    }
    out
}

/// Why a verdict could not be replayed at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "the verdict does not name the policy it was made under (a hub from before policies were logged?)"
    )]
    NoBasis,
    #[error("log entry {index} is not a policy: {reason}")]
    NotAPolicy { index: u64, reason: String },
    #[error("the policy in log entry {index} does not parse: {reason}")]
    Unreadable { index: u64, reason: String },
    #[error(
        "the verdict names policy version {named:?} but log entry {index} holds version {logged:?}"
    )]
    VersionMismatch {
        index: u64,
        named: String,
        logged: String,
    },
}

/// A replayed verdict: the policy it was replayed under and how it compares.
#[derive(Clone, Debug)]
pub struct Replayed {
    /// The verdict the policy gives.
    pub verdict: Verdict,
    /// Where the hub's verdict differs from it; empty when the hub judged correctly.
    pub differences: Vec<String>,
}

/// Replays a verdict the hub gave: reads the policy from its log leaf (`policy_leaf`, the
/// bytes of the leaf at `given.basis.policy_index`, whose inclusion the caller has checked),
/// judges the summary again with [`judge`] for `asker` at the verdict's moment, and compares.
/// `accepted_at` is the hub's acceptance time from the summary's own log leaf; `is_latest`
/// whether the result was shown as its latest version.
pub fn replay(
    given: &Verdict,
    policy_leaf: &[u8],
    asker: &InstitutionId,
    summary: &Summary,
    accepted_at: UnixMillis,
    is_latest: bool,
) -> Result<Replayed, ReplayError> {
    let basis = given.basis.as_ref().ok_or(ReplayError::NoBasis)?;
    let index = basis.policy_index;
    let (version, text) = match crate::logentry::Entry::decode(policy_leaf) {
        Ok(crate::logentry::Entry::Policy { version, text, .. }) => (version, text),
        Ok(_) => {
            return Err(ReplayError::NotAPolicy {
                index,
                reason: "it is another kind of entry".into(),
            });
        }
        Err(e) => {
            return Err(ReplayError::NotAPolicy {
                index,
                reason: e.to_string(),
            });
        }
    };
    let text = String::from_utf8(text).map_err(|_| ReplayError::Unreadable {
        index,
        reason: "its text is not UTF-8".into(),
    })?;
    let mut policy =
        crate::policy_file::parse(std::path::Path::new("policy"), &text).map_err(|e| {
            ReplayError::Unreadable {
                index,
                reason: e.to_string(),
            }
        })?;
    if policy.version != version || version != basis.policy_version {
        return Err(ReplayError::VersionMismatch {
            index,
            named: basis.policy_version.clone(),
            logged: version,
        });
    }
    policy.log_index = Some(index);
    let verdict = judge(&policy, asker, summary, accepted_at, is_latest, basis.as_of);
    let differences = verdict_differences(given, &verdict);
    Ok(Replayed {
        verdict,
        differences,
    })
}

/// Coded reasons for re-testing instead of reusing a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RetestReason {
    // National list.
    ConditionChanged,
    FastChangingValue,
    CriticalStep,
    Emergency,
    Appraisal,
    Other,
    // Local list.
    PatientRequest,
    SourceFailedEqa,
    TooOld,
    PhysicianJudgement,
}

impl RetestReason {
    pub const ALL: [RetestReason; 10] = [
        Self::ConditionChanged,
        Self::FastChangingValue,
        Self::CriticalStep,
        Self::Emergency,
        Self::Appraisal,
        Self::Other,
        Self::PatientRequest,
        Self::SourceFailedEqa,
        Self::TooOld,
        Self::PhysicianJudgement,
    ];

    /// The code used in files, CLIs and CSV exports.
    pub fn code(self) -> &'static str {
        match self {
            Self::ConditionChanged => "condition-changed",
            Self::FastChangingValue => "fast-changing-value",
            Self::CriticalStep => "critical-step",
            Self::Emergency => "emergency",
            Self::Appraisal => "appraisal",
            Self::Other => "other",
            Self::PatientRequest => "patient-request",
            Self::SourceFailedEqa => "source-failed-eqa",
            Self::TooOld => "too-old",
            Self::PhysicianJudgement => "physician-judgement",
        }
    }

    pub fn from_code(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == s)
    }
}

/// What the asking member did with a result it consulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Adopted,
    Retested {
        reason: Option<RetestReason>,
        note: String,
    },
}

/// Why a decision was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error(
        "re-testing a recognised result needs a coded reason (condition-changed, fast-changing-value, critical-step, emergency, appraisal, other, patient-request, source-failed-eqa, too-old, physician-judgement)"
    )]
    ReasonRequired,
    #[error("reason \"other\" needs a note saying why")]
    NoteRequired,
    #[error("the note is {0} characters long; at most 1000 are allowed")]
    NoteTooLong(usize),
    #[error(
        "this result was NOT_RECOGNISED for your institution when you looked it up, so reusing it is not a mutual-recognition adoption; record the test as re-tested (with a reason), or look the result up again if its verdict has changed"
    )]
    NotRecognised,
}

/// Checks a decision against the verdict the asker was given.
pub fn check_decision(recognised: bool, decision: &Decision) -> Result<(), DecisionError> {
    match decision {
        Decision::Adopted if !recognised => Err(DecisionError::NotRecognised),
        Decision::Adopted => Ok(()),
        Decision::Retested { reason, note } => {
            let len = note.chars().count();
            if len > 1000 {
                return Err(DecisionError::NoteTooLong(len));
            }
            match reason {
                None if recognised => Err(DecisionError::ReasonRequired),
                Some(RetestReason::Other) if note.trim().is_empty() => {
                    Err(DecisionError::NoteRequired)
                }
                _ => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::sample;

    const T0: i64 = 1_794_959_100_000; // 2026-11-18T07:45:00+08:00

    fn id(s: &str) -> InstitutionId {
        InstitutionId::parse(s).unwrap()
    }

    fn region(s: &str) -> RegionCode {
        RegionCode::parse(s).unwrap()
    }

    /// A small alliance: a tertiary hospital in Xi'an (national EQA for haematology, city-scope
    /// CT QC), a county hospital in Lantian, a township centre, and one outside Shaanxi.
    fn policy() -> Policy {
        let mut p = Policy {
            version: "test-1".into(),
            ..Policy::default()
        };
        for (m, level, r) in [
            ("tertiary", Level::Tertiary, "610102"),
            ("county", Level::Secondary, "610122"),
            ("township", Level::Primary, "610122"),
            ("gansu", Level::Tertiary, "620102"),
        ] {
            p.members.insert(
                id(m),
                Member {
                    id: id(m),
                    name: m.into(),
                    level,
                    region: region(r),
                },
            );
        }
        for (code, group, category, days, scope) in [
            ("718-7", "haematology", Category::Lab, 7, Scope::National),
            ("24627-2", "ct", Category::Imaging, 30, Scope::National),
            (
                "2345-7",
                "biochemistry",
                Category::Lab,
                3,
                Scope::Region(region("610000")),
            ),
        ] {
            p.items.insert(
                ("http://loinc.org".into(), code.into()),
                CatalogueItem {
                    system: "http://loinc.org".into(),
                    code: code.into(),
                    name: code.into(),
                    category,
                    group: group.into(),
                    validity_days: days,
                    scope,
                    price_fen: 1000,
                },
            );
        }
        let year = (T0 - 200 * DAY_MS, T0 + 100 * DAY_MS);
        for (member, group, kind, scope, mark) in [
            (
                "tertiary",
                "haematology",
                QcKind::Eqa,
                Scope::National,
                "全国HR",
            ),
            (
                "tertiary",
                "biochemistry",
                QcKind::Eqa,
                Scope::Region(region("610000")),
                "陕HR",
            ),
            (
                "tertiary",
                "ct",
                QcKind::ExamQc,
                Scope::Region(region("610100")),
                "西安HR",
            ),
            (
                "county",
                "haematology",
                QcKind::Eqa,
                Scope::Region(region("610000")),
                "陕HR",
            ),
            (
                "gansu",
                "haematology",
                QcKind::Eqa,
                Scope::Region(region("620000")),
                "甘HR",
            ),
        ] {
            p.qualifications.push(Qualification {
                member: id(member),
                target: QualificationTarget::Group(group.into()),
                kind,
                scope,
                mark: mark.into(),
                valid_from: UnixMillis(year.0),
                valid_to: UnixMillis(year.1),
            });
        }
        p
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// A verdict is monotonic in age: a result recognised for a member at some moment is
        /// recognised at every earlier moment after it was performed, and the reasons it is
        /// not only grow as it ages.
        #[test]
        fn verdicts_are_monotonic_in_age(
            publisher in 0usize..4,
            asker in 0usize..4,
            item in 0usize..3,
            latest in proptest::prelude::any::<bool>(),
            younger in 0i64..(60 * DAY_MS),
            older_by in 0i64..(60 * DAY_MS),
        ) {
            let members = ["tertiary", "county", "township", "gansu"];
            let (code, category) = [
                ("718-7", Category::Lab),
                ("24627-2", Category::Imaging),
                ("2345-7", Category::Lab),
            ][item];
            let p = policy();
            let s = result(members[publisher], code, category);
            let at = |age: i64| evaluate(&p, &id(members[asker]), &s, latest, UnixMillis(T0 + age));
            let (young, old) = (at(younger), at(younger + older_by));
            if old.recognised() {
                proptest::prop_assert!(young.recognised(), "{:?}", young.reasons);
            }
            for (reason, _) in &young.reasons {
                proptest::prop_assert!(old.has(*reason), "{reason:?} went away with age");
            }
        }
    }

    fn result(publisher: &str, code: &str, category: Category) -> Summary {
        let mut s = sample();
        s.publisher = id(publisher);
        s.item.code = code.into();
        s.category = category;
        s.performed_at = UnixMillis(T0);
        s.reported_at = UnixMillis(T0 + 3_600_000);
        if category != Category::Lab {
            s.outcome = crate::summary::Outcome::Exam(crate::summary::ExamResult {
                modality: "CT".into(),
                body_site: String::new(),
                impression: String::new(),
                study_uid: String::new(),
            });
        }
        s
    }

    struct Case {
        name: &'static str,
        asker: &'static str,
        summary: Summary,
        latest: bool,
        days_later: i64,
        edit: fn(&mut Policy),
        want: &'static [Reason],
        mark: Option<&'static str>,
    }

    fn base(name: &'static str, asker: &'static str, summary: Summary) -> Case {
        Case {
            name,
            asker,
            summary,
            latest: true,
            days_later: 1,
            edit: |_| {},
            want: &[],
            mark: None,
        }
    }

    #[test]
    fn each_rule_and_combinations() {
        use Reason::*;
        let hb = || result("tertiary", "718-7", Category::Lab);
        let voided = {
            let mut s = hb();
            s.version = 2;
            s.status = Status::Voided;
            s.status_reason = "specimen haemolysed".into();
            s
        };
        let cases = vec![
            Case {
                mark: Some("全国HR"),
                ..base("recognised, national mark", "county", hb())
            },
            Case {
                mark: Some("全国HR"),
                ..base("same level recognises", "tertiary", hb())
            },
            Case {
                mark: Some("全国HR"),
                ..base("township recognises tertiary", "township", hb())
            },
            Case {
                mark: Some("全国HR"),
                days_later: 7,
                ..base("last day of the window", "county", hb())
            },
            Case {
                want: &[OutsideValidityWindow],
                days_later: 8,
                ..base("window passed", "county", hb())
            },
            Case {
                want: &[NotInCatalogue],
                ..base(
                    "not in catalogue",
                    "county",
                    result("tertiary", "99999-9", Category::Lab),
                )
            },
            Case {
                want: &[PublisherNotQualified],
                ..base(
                    "township has no qualification",
                    "township",
                    result("township", "718-7", Category::Lab),
                )
            },
            Case {
                want: &[PublisherNotQualified],
                edit: |p| {
                    for q in &mut p.qualifications {
                        q.valid_to = UnixMillis(T0 - DAY_MS)
                    }
                },
                ..base("qualification expired before the test", "county", hb())
            },
            Case {
                want: &[PublisherNotQualified],
                edit: |p| {
                    for q in &mut p.qualifications {
                        q.kind = QcKind::ExamQc
                    }
                },
                ..base("exam QC does not qualify a lab test", "county", hb())
            },
            Case {
                want: &[PublisherNotQualified],
                ..base(
                    "publisher not a member",
                    "county",
                    result("stranger", "718-7", Category::Lab),
                )
            },
            Case {
                want: &[Direction],
                ..base(
                    "tertiary does not recognise county",
                    "tertiary",
                    result("county", "718-7", Category::Lab),
                )
            },
            Case {
                mark: Some("陕HR"),
                edit: |p| p.higher_recognises_lower = true,
                ..base(
                    "unless the policy allows it",
                    "tertiary",
                    result("county", "718-7", Category::Lab),
                )
            },
            Case {
                want: &[OutsideScope],
                ..base(
                    "city-scope CT QC does not reach Gansu",
                    "gansu",
                    result("tertiary", "24627-2", Category::Imaging),
                )
            },
            Case {
                mark: Some("西安HR"),
                ..base(
                    "city-scope CT QC covers Lantian",
                    "county",
                    result("tertiary", "24627-2", Category::Imaging),
                )
            },
            Case {
                want: &[OutsideScope],
                ..base(
                    "provincial catalogue item outside the province",
                    "gansu",
                    result("tertiary", "2345-7", Category::Lab),
                )
            },
            Case {
                want: &[Voided],
                ..base("voided", "county", voided.clone())
            },
            Case {
                want: &[Superseded],
                latest: false,
                ..base("superseded", "county", hb())
            },
            Case {
                want: &[OutsideValidityWindow, Direction, Voided, OutsideScope],
                days_later: 30,
                ..base("several at once", "gansu", {
                    let mut s = voided.clone();
                    s.publisher = id("county");
                    s
                })
            },
        ];
        for c in cases {
            let mut p = policy();
            (c.edit)(&mut p);
            let as_of = UnixMillis(T0 + c.days_later * DAY_MS);
            let v = evaluate(&p, &id(c.asker), &c.summary, c.latest, as_of);
            let got: Vec<Reason> = v.reasons.iter().map(|(r, _)| *r).collect();
            assert_eq!(got, c.want, "{}: {:?}", c.name, v.reasons);
            assert_eq!(v.hr_mark.as_deref(), c.mark, "{}", c.name);
            assert_eq!(v.recognised(), c.want.is_empty(), "{}", c.name);
            assert!(
                v.reasons.iter().all(|(_, text)| !text.is_empty()),
                "{}",
                c.name
            );
        }
    }

    /// A verdict replays under the policy text it names (read from a policy leaf): the hub's
    /// own verdict gives no difference, each kind of lie gives its line, and a leaf that is
    /// not the named policy is refused.
    #[test]
    fn a_verdict_replays_under_its_logged_policy() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hub/policy.example.toml"
        ))
        .unwrap();
        let mut policy = crate::policy_file::parse(std::path::Path::new("p"), &text).unwrap();
        policy.log_index = Some(4);
        let leaf = crate::logentry::Entry::Policy {
            at: UnixMillis(1),
            version: policy.version.clone(),
            text: text.clone().into_bytes(),
        }
        .encode();
        let county = id("lantian-county");
        let mut s = result("shx-prov-people", "718-7", Category::Lab);
        s.item.system = "http://loinc.org".into();
        let at = UnixMillis(T0 + DAY_MS);
        let given = judge(&policy, &county, &s, UnixMillis(T0), true, at);
        assert!(given.recognised(), "{:?}", given.reasons);
        assert_eq!(given.basis.as_ref().map(|b| b.policy_index), Some(4));
        let replayed = replay(&given, &leaf, &county, &s, UnixMillis(T0), true).unwrap();
        assert_eq!(replayed.differences, Vec::<String>::new());
        assert_eq!(replayed.verdict, given);

        let mut lie = given.clone();
        lie.reasons.push((Reason::Direction, "no".into()));
        lie.hr_mark = None;
        let d = replay(&lie, &leaf, &county, &s, UnixMillis(T0), true)
            .unwrap()
            .differences;
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("recognition: the hub said NOT_RECOGNISED"));
        assert!(d[1].contains("reason direction was given by the hub but does not apply"));
        assert!(d[2].starts_with("HR mark"));
        // Judged as an earlier version: superseded applies and the hub did not say so.
        let d = replay(&given, &leaf, &county, &s, UnixMillis(T0), false)
            .unwrap()
            .differences;
        assert!(
            d.iter().any(|l| l.contains("reason superseded applies")),
            "{d:?}"
        );

        let mut other = given.clone();
        if let Some(b) = other.basis.as_mut() {
            b.policy_version = "another".into();
        }
        assert!(matches!(
            replay(&other, &leaf, &county, &s, UnixMillis(T0), true),
            Err(ReplayError::VersionMismatch { .. })
        ));
        let not_policy = crate::logentry::summary_leaf(b"x", &[0; 64], b"c", UnixMillis(0));
        assert!(matches!(
            replay(&given, &not_policy, &county, &s, UnixMillis(T0), true),
            Err(ReplayError::NotAPolicy { index: 4, .. })
        ));
        let mut no_basis = given.clone();
        no_basis.basis = None;
        assert_eq!(
            replay(&no_basis, &leaf, &county, &s, UnixMillis(T0), true).unwrap_err(),
            ReplayError::NoBasis
        );
    }

    #[test]
    fn valid_until_is_performed_plus_window() {
        let v = evaluate(
            &policy(),
            &id("county"),
            &result("tertiary", "718-7", Category::Lab),
            true,
            UnixMillis(T0),
        );
        assert_eq!(v.valid_until, Some(UnixMillis(T0 + 7 * DAY_MS)));
    }

    #[test]
    fn region_containment() {
        assert!(region("610000").contains(&region("610122")));
        assert!(region("610100").contains(&region("610122")));
        assert!(!region("610100").contains(&region("620102")));
        assert!(region("610122").contains(&region("610122")));
        assert!(!region("610122").contains(&region("610102")));
        assert!(RegionCode::parse("61012").is_none());
    }

    #[test]
    fn decisions() {
        use RetestReason::*;
        let retest = |reason, note: &str| Decision::Retested {
            reason,
            note: note.into(),
        };
        let cases: Vec<(bool, Decision, Result<(), DecisionError>)> = vec![
            (true, Decision::Adopted, Ok(())),
            (false, Decision::Adopted, Err(DecisionError::NotRecognised)),
            (true, retest(None, ""), Err(DecisionError::ReasonRequired)),
            (false, retest(None, ""), Ok(())),
            (true, retest(Some(Emergency), ""), Ok(())),
            (
                true,
                retest(Some(Other), " "),
                Err(DecisionError::NoteRequired),
            ),
            (
                true,
                retest(Some(Other), "family insisted on local lab"),
                Ok(()),
            ),
            (
                true,
                retest(Some(TooOld), &"x".repeat(1001)),
                Err(DecisionError::NoteTooLong(1001)),
            ),
        ];
        for (recognised, d, want) in cases {
            assert_eq!(check_decision(recognised, &d), want, "{d:?}");
        }
        for r in RetestReason::ALL {
            assert_eq!(RetestReason::from_code(r.code()), Some(r));
        }
    }
}
