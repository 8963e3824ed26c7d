//! Closed-loop statistics (闭环管理): what was asked, what was found, what was adopted or
//! re-tested and why, and what that saved. A pure fold over recorded events.

use std::collections::BTreeMap;

use crate::identity::InstitutionId;
use crate::rules::{DAY_MS, RetestReason};
use crate::summary::UnixMillis;

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A member asked for an item of a patient (FindPrior or CheckOrder).
    Query {
        /// A recognised result was found.
        found: bool,
        /// The recognised result found was published by another member.
        cross_member: bool,
    },
    /// A member recorded its decision on a result it consulted.
    Decision {
        adopted: bool,
        reason: Option<RetestReason>,
        /// The consultation decided on. Of a member's decisions on one consultation only the
        /// latest counts (a later decision replaces an earlier one; the log keeps both);
        /// `None` for decisions stored before consultations were named, each counted.
        consultation: Option<ConsultationKey>,
    },
}

/// One consultation of a result by a member: the result, and when the query that showed it
/// was answered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsultationKey {
    pub publisher: String,
    pub summary_id: String,
    pub consulted_at: UnixMillis,
}

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at: UnixMillis,
    /// The member that asked or decided.
    pub member: InstitutionId,
    pub item_system: String,
    pub item_code: String,
    /// Reference price of the item when the event happened, in fen.
    pub price_fen: u64,
    pub kind: EventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Item,
    Member,
    /// Local calendar day, `2026-11-23`.
    Day,
    /// Local calendar month, `2026-11`.
    Month,
}

/// Totals for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub key: String,
    pub queries: u64,
    pub found: u64,
    pub cross_member: u64,
    pub adopted: u64,
    pub retested: u64,
    /// Re-tests by reason code; "unspecified" for re-tests of unrecognised results without one.
    pub retested_by_reason: BTreeMap<String, u64>,
    pub tests_avoided: u64,
    pub money_saved_fen: u64,
}

impl Row {
    fn add(&mut self, e: &Event) {
        match &e.kind {
            EventKind::Query {
                found,
                cross_member,
            } => {
                self.queries += 1;
                self.found += u64::from(*found);
                self.cross_member += u64::from(*found && *cross_member);
            }
            EventKind::Decision { adopted: true, .. } => {
                self.adopted += 1;
                self.tests_avoided += 1;
                self.money_saved_fen += e.price_fen;
            }
            EventKind::Decision {
                adopted: false,
                reason,
                ..
            } => {
                self.retested += 1;
                let code = reason.map_or("unspecified", RetestReason::code);
                *self.retested_by_reason.entry(code.to_owned()).or_default() += 1;
            }
        }
    }
}

/// The proleptic Gregorian date of a day number since 1970-01-01 (civil-from-days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn group_key(e: &Event, by: GroupBy, utc_offset_seconds: i32) -> String {
    let local_day = || {
        e.at.0
            .saturating_add(i64::from(utc_offset_seconds) * 1000)
            .div_euclid(DAY_MS)
    };
    match by {
        GroupBy::Item => e.item_code.clone(),
        GroupBy::Member => e.member.to_string(),
        GroupBy::Day => {
            let (y, m, d) = civil(local_day());
            format!("{y:04}-{m:02}-{d:02}")
        }
        GroupBy::Month => {
            let (y, m, _) = civil(local_day());
            format!("{y:04}-{m:02}")
        }
    }
}

/// Folds events into one row per group (sorted by key) and a total.
pub fn aggregate<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    by: GroupBy,
    utc_offset_seconds: i32,
) -> (Vec<Row>, Row) {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut total = Row {
        key: "total".into(),
        ..Row::default()
    };
    let events: Vec<&Event> = events.into_iter().collect();
    // Of a member's decisions on one consultation, the latest (the last one at the latest
    // time) is the one that counts.
    let mut counted: BTreeMap<(&InstitutionId, &ConsultationKey), (UnixMillis, usize)> =
        BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        if let EventKind::Decision {
            consultation: Some(c),
            ..
        } = &e.kind
        {
            let slot = counted.entry((&e.member, c)).or_insert((e.at, i));
            if e.at >= slot.0 {
                *slot = (e.at, i);
            }
        }
    }
    for (i, e) in events.iter().enumerate() {
        if let EventKind::Decision {
            consultation: Some(c),
            ..
        } = &e.kind
            && counted.get(&(&e.member, c)).is_some_and(|&(_, j)| j != i)
        {
            continue;
        }
        let key = group_key(e, by, utc_offset_seconds);
        rows.entry(key.clone())
            .or_insert_with(|| Row {
                key,
                ..Row::default()
            })
            .add(e);
        total.add(e);
    }
    (rows.into_values().collect(), total)
}

/// What a log entry contributes to the statistics, recomputed from its leaf alone (an
/// auditor's recomputation, `huren-agent audit-stats`): a FindPrior or CheckOrder access leaf
/// one query event per item asked, a decision leaf one decision event, exactly as the hub
/// recorded them when it wrote the leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recomputed {
    /// The entry's events (none for entries that count nothing: summaries, consent, policies,
    /// History, access reports, log reads).
    Events(Vec<Event>),
    /// A decision or access leaf from before format 0x04, which does not carry what the
    /// statistics need: its figures cannot be recomputed.
    OlderFormat,
    /// The leaf names a member that is not a valid institution id.
    Unreadable(String),
}

/// Recomputes the statistics events of one decoded log entry (see [`Recomputed`]).
pub fn events_of_entry(entry: &crate::logentry::Entry) -> Recomputed {
    use crate::logentry::Entry;
    match entry {
        Entry::Access {
            at,
            caller,
            results,
            facts,
            ..
        } => {
            let Some(facts) = facts else {
                return Recomputed::OlderFormat;
            };
            if facts.asked.is_empty() {
                return Recomputed::Events(Vec::new());
            }
            let member = match InstitutionId::parse(caller) {
                Ok(m) => m,
                Err(e) => return Recomputed::Unreadable(format!("caller {caller:?}: {e}")),
            };
            let events = facts
                .asked
                .iter()
                .map(|(system, code)| {
                    // The first recognised result of the item shown, as the hub counts it.
                    let best = facts.shown.iter().zip(results).find(|(f, _)| {
                        f.recognised && f.item_system == *system && f.item_code == *code
                    });
                    Event {
                        at: *at,
                        member: member.clone(),
                        item_system: system.clone(),
                        item_code: code.clone(),
                        price_fen: 0,
                        kind: EventKind::Query {
                            found: best.is_some(),
                            cross_member: best.is_some_and(|(_, r)| r.publisher != *caller),
                        },
                    }
                })
                .collect();
            Recomputed::Events(events)
        }
        Entry::Decision {
            at,
            member,
            publisher,
            summary_id,
            adopted,
            reason,
            facts,
            ..
        } => {
            let Some(f) = facts else {
                return Recomputed::OlderFormat;
            };
            let member = match InstitutionId::parse(member) {
                Ok(m) => m,
                Err(e) => return Recomputed::Unreadable(format!("member {member:?}: {e}")),
            };
            let reason = if reason.is_empty() {
                None
            } else {
                match RetestReason::from_code(reason) {
                    Some(r) => Some(r),
                    None => return Recomputed::Unreadable(format!("re-test reason {reason:?}")),
                }
            };
            Recomputed::Events(vec![Event {
                at: *at,
                member,
                item_system: f.item_system.clone(),
                item_code: f.item_code.clone(),
                price_fen: f.price_fen,
                kind: EventKind::Decision {
                    adopted: *adopted,
                    reason,
                    consultation: Some(ConsultationKey {
                        publisher: publisher.clone(),
                        summary_id: summary_id.clone(),
                        consulted_at: f.consulted_at,
                    }),
                },
            }])
        }
        _ => Recomputed::Events(Vec::new()),
    }
}

/// Where two sets of statistics rows differ, one line per figure: `theirs` (the hub's) against
/// `ours` (recomputed), matched by row key, the total included.
pub fn row_differences(theirs: &[Row], ours: &[Row]) -> Vec<String> {
    let by_key = |rows: &[Row]| -> BTreeMap<String, Row> {
        rows.iter().map(|r| (r.key.clone(), r.clone())).collect()
    };
    let (a, b) = (by_key(theirs), by_key(ours));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let empty = Row::default();
    let mut out = Vec::new();
    for key in keys {
        let (x, y) = (a.get(key).unwrap_or(&empty), b.get(key).unwrap_or(&empty));
        let figures: [(&str, u64, u64); 7] = [
            ("queries", x.queries, y.queries),
            ("found", x.found, y.found),
            ("cross-member", x.cross_member, y.cross_member),
            ("adopted", x.adopted, y.adopted),
            ("re-tested", x.retested, y.retested),
            ("tests avoided", x.tests_avoided, y.tests_avoided),
            ("money saved (fen)", x.money_saved_fen, y.money_saved_fen),
        ];
        for (name, hub, log) in figures {
            if hub != log {
                out.push(format!(
                    "{key}: {name}: the hub says {hub}, the log gives {log}"
                ));
            }
        }
        let mut reasons: Vec<&String> = x
            .retested_by_reason
            .keys()
            .chain(y.retested_by_reason.keys())
            .collect();
        reasons.sort();
        reasons.dedup();
        for r in reasons {
            let hub = x.retested_by_reason.get(r).copied().unwrap_or(0);
            let log = y.retested_by_reason.get(r).copied().unwrap_or(0);
            if hub != log {
                out.push(format!(
                    "{key}: re-tested for {r}: the hub says {hub}, the log gives {log}"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_23_0830_CST: i64 = 1_795_393_800_000; // 2026-11-23T08:30:00+08:00
    const CST: i32 = 8 * 3600;

    fn ev(hours_later: i64, member: &str, code: &str, price: u64, kind: EventKind) -> Event {
        Event {
            at: UnixMillis(NOV_23_0830_CST + hours_later * 3_600_000),
            member: InstitutionId::parse(member).unwrap(),
            item_system: "http://loinc.org".into(),
            item_code: code.into(),
            price_fen: price,
            kind,
        }
    }

    fn q(found: bool, cross: bool) -> EventKind {
        EventKind::Query {
            found,
            cross_member: cross,
        }
    }

    fn adopted() -> EventKind {
        EventKind::Decision {
            adopted: true,
            reason: None,
            consultation: None,
        }
    }

    fn retested(r: Option<RetestReason>) -> EventKind {
        EventKind::Decision {
            adopted: false,
            reason: r,
            consultation: None,
        }
    }

    fn on(adopted: bool, result: &str, consulted_hour: i64) -> EventKind {
        EventKind::Decision {
            adopted,
            reason: (!adopted).then_some(RetestReason::PatientRequest),
            consultation: Some(ConsultationKey {
                publisher: "tertiary".into(),
                summary_id: result.into(),
                consulted_at: UnixMillis(NOV_23_0830_CST + consulted_hour * 3_600_000),
            }),
        }
    }

    /// Statistics events recomputed from leaves: a format-4 FindPrior access gives one query
    /// per item asked (found and cross-member as the hub counts them), a format-4 decision
    /// its decision; older formats say they cannot be recomputed.
    #[test]
    fn events_are_recomputed_from_format_4_leaves() {
        use crate::logentry::{
            AccessFacts, DecisionFacts, Entry, Method, Purpose, ResultRef, ShownFact,
        };
        let shown = |p: &str, code: &str, recognised| {
            (
                ResultRef {
                    publisher: p.into(),
                    summary_id: format!("{p}-{code}"),
                    version: 1,
                },
                ShownFact {
                    item_system: "l".into(),
                    item_code: code.into(),
                    recognised,
                },
            )
        };
        let results = [
            shown("county", "718-7", true),
            shown("tertiary", "718-7", true),
            shown("tertiary", "2345-7", false),
        ];
        let access = |facts| Entry::Access {
            at: UnixMillis(5),
            caller: "county".into(),
            purpose: Purpose::Treatment,
            method: Method::FindPrior,
            emergency_override: false,
            withheld_by_consent: false,
            pseudonym: [0; 32],
            results: results.iter().map(|(r, _)| r.clone()).collect(),
            policy_version: Some("v".into()),
            requester: Some(String::new()),
            facts,
        };
        let facts = AccessFacts {
            asked: vec![
                ("l".into(), "718-7".into()),
                ("l".into(), "2345-7".into()),
                ("l".into(), "9-9".into()),
            ],
            shown: results.iter().map(|(_, f)| f.clone()).collect(),
        };
        let Recomputed::Events(events) = events_of_entry(&access(Some(facts))) else {
            panic!("a format-4 access gives events");
        };
        let kinds: Vec<(&str, EventKind)> = events
            .iter()
            .map(|e| (e.item_code.as_str(), e.kind.clone()))
            .collect();
        // The first recognised haemoglobin is the county's own: found, not cross-member.
        assert_eq!(
            kinds,
            [
                ("718-7", q(true, false)),
                ("2345-7", q(false, false)),
                ("9-9", q(false, false))
            ]
        );
        assert_eq!(events_of_entry(&access(None)), Recomputed::OlderFormat);

        let decision = |facts| Entry::Decision {
            at: UnixMillis(9),
            member: "county".into(),
            decision_id: "d".into(),
            publisher: "tertiary".into(),
            summary_id: "R1".into(),
            version: 1,
            adopted: false,
            recognised: true,
            reason: "too-old".into(),
            note: String::new(),
            facts,
        };
        let f = DecisionFacts {
            item_system: "l".into(),
            item_code: "718-7".into(),
            price_fen: 500,
            consulted_at: UnixMillis(5),
        };
        let Recomputed::Events(events) = events_of_entry(&decision(Some(f))) else {
            panic!("a format-4 decision gives an event");
        };
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].price_fen, 500);
        assert_eq!(
            events[0].kind,
            EventKind::Decision {
                adopted: false,
                reason: Some(RetestReason::TooOld),
                consultation: Some(ConsultationKey {
                    publisher: "tertiary".into(),
                    summary_id: "R1".into(),
                    consulted_at: UnixMillis(5),
                }),
            }
        );
        assert_eq!(events_of_entry(&decision(None)), Recomputed::OlderFormat);

        // Differences are named figure by figure, rows missing on one side included.
        let (rows, total) = aggregate(&events, GroupBy::Item, CST);
        let mut more = total.clone();
        more.adopted += 1;
        assert_eq!(
            row_differences(&[more], std::slice::from_ref(&total)),
            ["total: adopted: the hub says 1, the log gives 0"]
        );
        assert_eq!(
            row_differences(&[], &rows),
            [
                "718-7: re-tested: the hub says 0, the log gives 1",
                "718-7: re-tested for too-old: the hub says 0, the log gives 1"
            ]
        );
    }

    /// Of a member's decisions on one consultation only the latest counts: a hundred
    /// adoptions of one shown result count once, a later re-test replaces them, and a new
    /// consultation (or another member) counts on its own.
    #[test]
    fn one_decision_per_member_and_consultation_counts() {
        let mut events: Vec<Event> = (0..100)
            .map(|_| ev(1, "county", "718-7", 500, on(true, "R1", 0)))
            .collect();
        let (_, total) = aggregate(&events, GroupBy::Member, CST);
        assert_eq!(
            (total.adopted, total.tests_avoided, total.money_saved_fen),
            (1, 1, 500)
        );
        events.push(ev(2, "county", "718-7", 500, on(false, "R1", 0)));
        let (_, total) = aggregate(&events, GroupBy::Member, CST);
        assert_eq!(
            (total.adopted, total.retested, total.money_saved_fen),
            (0, 1, 0)
        );
        events.push(ev(3, "county", "718-7", 500, on(true, "R1", 3)));
        events.push(ev(3, "township", "718-7", 500, on(true, "R1", 0)));
        events.push(ev(3, "county", "718-7", 500, on(true, "R2", 0)));
        let (_, total) = aggregate(&events, GroupBy::Member, CST);
        assert_eq!((total.adopted, total.retested), (3, 1));
    }

    /// A known day at a county hospital and a township centre; every figure worked by hand.
    fn data() -> Vec<Event> {
        use RetestReason::*;
        vec![
            ev(0, "county", "718-7", 500, q(true, true)),
            ev(0, "county", "718-7", 500, adopted()),
            ev(1, "county", "24627-2", 22000, q(true, true)),
            ev(1, "county", "24627-2", 22000, adopted()),
            ev(2, "county", "2345-7", 400, q(true, false)),
            ev(
                2,
                "county",
                "2345-7",
                400,
                retested(Some(FastChangingValue)),
            ),
            ev(3, "township", "718-7", 500, q(false, false)),
            ev(3, "township", "718-7", 500, retested(None)),
            ev(4, "township", "24627-2", 22000, q(true, true)),
            ev(
                4,
                "township",
                "24627-2",
                22000,
                retested(Some(PatientRequest)),
            ),
            // 16:00 UTC+8 plus 8 h is past midnight: the next local day.
            ev(16, "county", "718-7", 500, q(true, true)),
            ev(16, "county", "718-7", 500, adopted()),
        ]
    }

    #[test]
    fn totals_on_a_known_data_set() {
        let (_, total) = aggregate(&data(), GroupBy::Item, CST);
        assert_eq!(total.queries, 6);
        assert_eq!(total.found, 5);
        assert_eq!(total.cross_member, 4);
        assert_eq!(total.adopted, 3);
        assert_eq!(total.retested, 3);
        assert_eq!(total.tests_avoided, 3);
        assert_eq!(total.money_saved_fen, 500 + 22000 + 500);
        assert_eq!(
            total.retested_by_reason,
            BTreeMap::from([
                ("fast-changing-value".to_owned(), 1),
                ("patient-request".to_owned(), 1),
                ("unspecified".to_owned(), 1),
            ])
        );
    }

    #[test]
    fn grouped_by_item_member_day_and_month() {
        let (rows, _) = aggregate(&data(), GroupBy::Item, CST);
        let by_item: Vec<(&str, u64, u64, u64)> = rows
            .iter()
            .map(|r| (r.key.as_str(), r.queries, r.adopted, r.money_saved_fen))
            .collect();
        assert_eq!(
            by_item,
            [
                ("2345-7", 1, 0, 0),
                ("24627-2", 2, 1, 22000),
                ("718-7", 3, 2, 1000)
            ]
        );
        let (rows, _) = aggregate(&data(), GroupBy::Member, CST);
        let by_member: Vec<(&str, u64, u64, u64)> = rows
            .iter()
            .map(|r| (r.key.as_str(), r.queries, r.found, r.retested))
            .collect();
        assert_eq!(by_member, [("county", 4, 4, 1), ("township", 2, 1, 2)]);
        let (rows, _) = aggregate(&data(), GroupBy::Day, CST);
        let by_day: Vec<(&str, u64)> = rows.iter().map(|r| (r.key.as_str(), r.queries)).collect();
        assert_eq!(by_day, [("2026-11-23", 5), ("2026-11-24", 1)]);
        let (rows, _) = aggregate(&data(), GroupBy::Month, CST);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key, "2026-11");
    }

    #[test]
    fn calendar_conversion() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_780), (2026, 11, 23));
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(civil(11_016), (2000, 2, 29));
    }
}
