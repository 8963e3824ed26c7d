//! The one place where wire messages and domain values meet for what both the hub and the
//! agents convert: purposes, re-test reasons and decisions, groupings, reasons and verdicts,
//! log proofs and receipts. Each direction is
//! written once; a value off the wire that the domain has no place for is `None` or a
//! [`WireError`] naming the field, never a panic.

use huren_core::identity::InstitutionId;
use huren_core::logentry::{LogProof, Purpose};
use huren_core::merkle::Hash;
use huren_core::receipt::Receipt;
use huren_core::rules::{Basis, Decision, Reason, RetestReason, Verdict};
use huren_core::stats::{GroupBy, Row};
use huren_core::summary::{SummaryId, UnixMillis};

use crate::hub as pb;

/// A wire message the domain cannot take, with the field named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WireError {
    pub field: &'static str,
    pub reason: String,
}

impl From<Purpose> for pb::Purpose {
    fn from(p: Purpose) -> Self {
        match p {
            Purpose::Treatment => pb::Purpose::Treatment,
            Purpose::Referral => pb::Purpose::Referral,
            Purpose::Emergency => pb::Purpose::Emergency,
            Purpose::PatientRequest => pb::Purpose::PatientRequest,
            Purpose::Administration => pb::Purpose::Administration,
            Purpose::QualityControl => pb::Purpose::QualityControl,
        }
    }
}

/// The purpose a wire value names; `None` for unspecified or unknown.
pub fn purpose(value: i32) -> Option<Purpose> {
    Some(match pb::Purpose::try_from(value).ok()? {
        pb::Purpose::Treatment => Purpose::Treatment,
        pb::Purpose::Referral => Purpose::Referral,
        pb::Purpose::Emergency => Purpose::Emergency,
        pb::Purpose::PatientRequest => Purpose::PatientRequest,
        pb::Purpose::Administration => Purpose::Administration,
        pb::Purpose::QualityControl => Purpose::QualityControl,
        pb::Purpose::Unspecified => return None,
    })
}

impl From<RetestReason> for pb::RetestReason {
    fn from(r: RetestReason) -> Self {
        use RetestReason::*;
        match r {
            ConditionChanged => pb::RetestReason::ConditionChanged,
            FastChangingValue => pb::RetestReason::FastChangingValue,
            CriticalStep => pb::RetestReason::CriticalStep,
            Emergency => pb::RetestReason::Emergency,
            Appraisal => pb::RetestReason::Appraisal,
            Other => pb::RetestReason::Other,
            PatientRequest => pb::RetestReason::PatientRequest,
            SourceFailedEqa => pb::RetestReason::SourceFailedEqa,
            TooOld => pb::RetestReason::TooOld,
            PhysicianJudgement => pb::RetestReason::PhysicianJudgement,
        }
    }
}

/// The re-test reason a wire value names: `Some(None)` for unspecified (no reason given),
/// `None` for an unknown value.
pub fn retest_reason(value: i32) -> Option<Option<RetestReason>> {
    use pb::RetestReason as P;
    Some(Some(match P::try_from(value).ok()? {
        P::ConditionChanged => RetestReason::ConditionChanged,
        P::FastChangingValue => RetestReason::FastChangingValue,
        P::CriticalStep => RetestReason::CriticalStep,
        P::Emergency => RetestReason::Emergency,
        P::Appraisal => RetestReason::Appraisal,
        P::Other => RetestReason::Other,
        P::PatientRequest => RetestReason::PatientRequest,
        P::SourceFailedEqa => RetestReason::SourceFailedEqa,
        P::TooOld => RetestReason::TooOld,
        P::PhysicianJudgement => RetestReason::PhysicianJudgement,
        P::Unspecified => return Some(None),
    }))
}

/// A decision as RecordDecisionRequest carries it: kind, re-test reason and note.
pub fn decision_to_pb(d: &Decision) -> (pb::DecisionKind, pb::RetestReason, String) {
    match d {
        Decision::Adopted => (
            pb::DecisionKind::Adopted,
            pb::RetestReason::Unspecified,
            String::new(),
        ),
        Decision::Retested { reason, note } => (
            pb::DecisionKind::Retested,
            reason.map_or(pb::RetestReason::Unspecified, pb::RetestReason::from),
            note.clone(),
        ),
    }
}

/// The decision a RecordDecisionRequest's `decision`, `reason` and `note` state.
pub fn decision(kind: i32, reason: i32, note: String) -> Result<Decision, WireError> {
    let bad = |field, reason: &str| WireError {
        field,
        reason: reason.to_owned(),
    };
    let reason = retest_reason(reason).ok_or_else(|| WireError {
        field: "RecordDecisionRequest.reason",
        reason: format!("{reason} is not a known re-test reason"),
    })?;
    match pb::DecisionKind::try_from(kind) {
        Ok(pb::DecisionKind::Adopted) if reason.is_some() => Err(bad(
            "RecordDecisionRequest.reason",
            "an adopted result takes no re-test reason",
        )),
        Ok(pb::DecisionKind::Adopted) => Ok(Decision::Adopted),
        Ok(pb::DecisionKind::Retested) => Ok(Decision::Retested { reason, note }),
        _ => Err(bad(
            "RecordDecisionRequest.decision",
            "must be ADOPTED or RETESTED",
        )),
    }
}

impl From<GroupBy> for pb::GroupBy {
    fn from(g: GroupBy) -> Self {
        match g {
            GroupBy::Item => pb::GroupBy::Item,
            GroupBy::Member => pb::GroupBy::Member,
            GroupBy::Day => pb::GroupBy::Day,
            GroupBy::Month => pb::GroupBy::Month,
        }
    }
}

/// The grouping a wire value names; `None` for unspecified or unknown.
pub fn group_by(value: i32) -> Option<GroupBy> {
    Some(match pb::GroupBy::try_from(value).ok()? {
        pb::GroupBy::Item => GroupBy::Item,
        pb::GroupBy::Member => GroupBy::Member,
        pb::GroupBy::Day => GroupBy::Day,
        pb::GroupBy::Month => GroupBy::Month,
        pb::GroupBy::Unspecified => return None,
    })
}

impl From<Reason> for pb::NotRecognisedReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::NotInCatalogue => pb::NotRecognisedReason::NotInCatalogue,
            Reason::OutsideValidityWindow => pb::NotRecognisedReason::OutsideValidityWindow,
            Reason::PublisherNotQualified => pb::NotRecognisedReason::PublisherNotQualified,
            Reason::Direction => pb::NotRecognisedReason::Direction,
            Reason::Voided => pb::NotRecognisedReason::Voided,
            Reason::Superseded => pb::NotRecognisedReason::Superseded,
            Reason::OutsideScope => pb::NotRecognisedReason::OutsideScope,
            Reason::PublisherRevoked => pb::NotRecognisedReason::PublisherRevoked,
        }
    }
}

/// The reason a wire value names; `None` for unspecified or unknown.
pub fn reason(value: i32) -> Option<Reason> {
    use pb::NotRecognisedReason as P;
    Some(match P::try_from(value).ok()? {
        P::NotInCatalogue => Reason::NotInCatalogue,
        P::OutsideValidityWindow => Reason::OutsideValidityWindow,
        P::PublisherNotQualified => Reason::PublisherNotQualified,
        P::Direction => Reason::Direction,
        P::Voided => Reason::Voided,
        P::Superseded => Reason::Superseded,
        P::OutsideScope => Reason::OutsideScope,
        P::PublisherRevoked => Reason::PublisherRevoked,
        P::Unspecified => return None,
    })
}

/// A verdict as the wire carries it, under the policy version that made it (its
/// [`Verdict::basis`] when it has one, which also names the policy's log leaf and the moment
/// judged at).
pub fn verdict_to_pb(v: &Verdict, policy_version: &str) -> pb::Verdict {
    pb::Verdict {
        recognition: if v.recognised() {
            pb::Recognition::Recognised
        } else {
            pb::Recognition::NotRecognised
        } as i32,
        reasons: v
            .reasons
            .iter()
            .map(|(r, text)| pb::ReasonDetail {
                reason: pb::NotRecognisedReason::from(*r) as i32,
                explanation: text.clone(),
            })
            .collect(),
        hr_mark: v.hr_mark.clone().unwrap_or_default(),
        valid_until_ms: v.valid_until.map_or(0, |t| t.0),
        policy_version: v
            .basis
            .as_ref()
            .map_or(policy_version, |b| b.policy_version.as_str())
            .to_owned(),
        policy_index: v.basis.as_ref().map(|b| b.policy_index),
        as_of_ms: v.basis.as_ref().map_or(0, |b| b.as_of.0),
    }
}

/// A verdict off the wire. One that says RECOGNISED but lists reasons (or the reverse)
/// contradicts itself and is refused.
impl TryFrom<pb::Verdict> for Verdict {
    type Error = WireError;

    fn try_from(v: pb::Verdict) -> Result<Self, WireError> {
        let mut reasons = Vec::with_capacity(v.reasons.len());
        for d in v.reasons {
            let r = reason(d.reason).ok_or_else(|| WireError {
                field: "Verdict.reasons",
                reason: format!("unknown reason {}", d.reason),
            })?;
            reasons.push((r, d.explanation));
        }
        let recognised = v.recognition == pb::Recognition::Recognised as i32;
        if recognised != reasons.is_empty() {
            return Err(WireError {
                field: "Verdict.recognition",
                reason: "its verdict contradicts itself".into(),
            });
        }
        Ok(Verdict {
            reasons,
            hr_mark: (!v.hr_mark.is_empty()).then_some(v.hr_mark),
            valid_until: (v.valid_until_ms != 0).then_some(UnixMillis(v.valid_until_ms)),
            basis: v.policy_index.map(|policy_index| Basis {
                policy_index,
                policy_version: v.policy_version,
                as_of: UnixMillis(v.as_of_ms),
            }),
        })
    }
}

impl From<LogProof> for pb::LogProof {
    fn from(p: LogProof) -> Self {
        pb::LogProof {
            index: p.index,
            tree_size: p.tree_size,
            proof: p.proof.iter().map(|h| h.to_vec()).collect(),
            checkpoint: p.checkpoint,
            path: Vec::new(),
        }
    }
}

/// A proof as answers to requests with `compact_proofs` carry it: the path packed in one
/// field, and no checkpoint when it is the answer's (`answer_checkpoint`), which the answer
/// carries once. A proof that leads to another checkpoint keeps its own.
pub fn compact_log_proof(p: LogProof, answer_checkpoint: &str) -> pb::LogProof {
    pb::LogProof {
        index: p.index,
        tree_size: p.tree_size,
        proof: Vec::new(),
        checkpoint: match p.checkpoint == answer_checkpoint {
            true => String::new(),
            false => p.checkpoint,
        },
        path: p.proof.concat(),
    }
}

/// Hashes as they travel (32 bytes each) as [`Hash`]es.
pub fn hashes(field: &'static str, raw: &[Vec<u8>]) -> Result<Vec<Hash>, WireError> {
    raw.iter()
        .map(|h| {
            h.as_slice().try_into().map_err(|_| WireError {
                field,
                reason: format!("a hash is {} bytes, not 32", h.len()),
            })
        })
        .collect()
}

/// Hashes packed one after another (32 bytes each) as [`Hash`]es.
pub fn packed_hashes(field: &'static str, raw: &[u8]) -> Result<Vec<Hash>, WireError> {
    huren_core::merkle::split_hashes(raw).ok_or_else(|| WireError {
        field,
        reason: format!(
            "{} bytes are not a whole number of 32-byte hashes",
            raw.len()
        ),
    })
}

impl TryFrom<pb::LogProof> for LogProof {
    type Error = WireError;

    /// Either form of the path; an empty checkpoint stays empty (the caller puts in the
    /// answer's, see [`compact_log_proof`]).
    fn try_from(p: pb::LogProof) -> Result<Self, WireError> {
        let proof = match (p.proof.is_empty(), p.path.is_empty()) {
            (_, true) => hashes("LogProof.proof", &p.proof)?,
            (true, false) => packed_hashes("LogProof.path", &p.path)?,
            (false, false) => {
                return Err(WireError {
                    field: "LogProof.path",
                    reason: "a proof carries its path in `proof` or in `path`, not both".into(),
                });
            }
        };
        Ok(LogProof {
            index: p.index,
            tree_size: p.tree_size,
            proof,
            checkpoint: p.checkpoint,
        })
    }
}

impl From<&Receipt> for pb::Receipt {
    fn from(r: &Receipt) -> Self {
        pb::Receipt {
            publisher: r.publisher.to_string(),
            summary_id: r.summary_id.to_string(),
            version: r.version,
            body_sha256: r.body_sha256.to_vec(),
            accepted_at_ms: r.accepted_at.0,
        }
    }
}

/// A receipt off the wire: the publisher and summary id must be valid ids and the digest 32
/// bytes. Nothing here says the receipt is true; the agent checks it against the signed body.
impl TryFrom<pb::Receipt> for Receipt {
    type Error = WireError;

    fn try_from(r: pb::Receipt) -> Result<Self, WireError> {
        let bad = |field, reason: String| WireError { field, reason };
        Ok(Receipt {
            publisher: InstitutionId::parse(&r.publisher)
                .map_err(|e| bad("Receipt.publisher", e.to_string()))?,
            summary_id: SummaryId::parse(&r.summary_id)
                .map_err(|e| bad("Receipt.summary_id", e.to_string()))?,
            version: r.version,
            body_sha256: r.body_sha256.as_slice().try_into().map_err(|_| {
                bad(
                    "Receipt.body_sha256",
                    format!("{} bytes, not 32", r.body_sha256.len()),
                )
            })?,
            accepted_at: UnixMillis(r.accepted_at_ms),
        })
    }
}

/// A statistics row and its label (item or member name) as the wire carries them.
pub fn row_to_pb(r: Row, label: String) -> pb::StatisticsRow {
    pb::StatisticsRow {
        key: r.key,
        label,
        queries: r.queries,
        recognisable_found: r.found,
        cross_member: r.cross_member,
        adopted: r.adopted,
        retested: r.retested,
        retested_by_reason: r.retested_by_reason.into_iter().collect(),
        tests_avoided: r.tests_avoided,
        money_saved_fen: r.money_saved_fen,
    }
}

/// A statistics row off the wire, and its label.
pub fn row_from_pb(r: pb::StatisticsRow) -> (Row, String) {
    (
        Row {
            key: r.key,
            queries: r.queries,
            found: r.recognisable_found,
            cross_member: r.cross_member,
            adopted: r.adopted,
            retested: r.retested,
            retested_by_reason: r.retested_by_reason.into_iter().collect(),
            tests_avoided: r.tests_avoided,
            money_saved_fen: r.money_saved_fen,
        },
        r.label,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every domain value goes to the wire and back unchanged; unspecified and unknown wire
    /// values have no domain value.
    #[test]
    fn round_trips_and_unknown_values() {
        for p in Purpose::ALL {
            assert_eq!(purpose(pb::Purpose::from(p) as i32), Some(p));
        }
        for g in [GroupBy::Item, GroupBy::Member, GroupBy::Day, GroupBy::Month] {
            assert_eq!(group_by(pb::GroupBy::from(g) as i32), Some(g));
        }
        for r in [
            Reason::NotInCatalogue,
            Reason::OutsideValidityWindow,
            Reason::PublisherNotQualified,
            Reason::Direction,
            Reason::Voided,
            Reason::Superseded,
            Reason::OutsideScope,
            Reason::PublisherRevoked,
        ] {
            assert_eq!(reason(pb::NotRecognisedReason::from(r) as i32), Some(r));
        }
        for unknown in [0, 99, -1] {
            assert_eq!(purpose(unknown), None);
            assert_eq!(group_by(unknown), None);
            assert_eq!(reason(unknown), None);
        }
        let proof = LogProof {
            index: 3,
            tree_size: 9,
            proof: vec![[1; 32], [2; 32]],
            checkpoint: "note".into(),
        };
        assert_eq!(
            LogProof::try_from(pb::LogProof::from(proof.clone())),
            Ok(proof)
        );
        let short = pb::LogProof {
            proof: vec![vec![0; 31]],
            ..Default::default()
        };
        let err = LogProof::try_from(short).unwrap_err();
        assert_eq!(err.field, "LogProof.proof");
    }

    /// A compact proof reads back as the same path; its checkpoint is left out only when it
    /// is the answer's; a torn or doubled path is refused with the field named.
    #[test]
    fn compact_proofs_round_trip_and_refuse_torn_paths() {
        let proof = LogProof {
            index: 3,
            tree_size: 9,
            proof: vec![[1; 32], [2; 32], [3; 32]],
            checkpoint: "note".into(),
        };
        let compact = compact_log_proof(proof.clone(), "note");
        assert!(compact.proof.is_empty());
        assert_eq!(compact.path.len(), 96);
        assert_eq!(compact.checkpoint, "");
        let mut back = LogProof::try_from(compact.clone()).unwrap();
        back.checkpoint = "note".into();
        assert_eq!(back, proof);
        // A proof that leads elsewhere keeps its checkpoint.
        let other = compact_log_proof(proof.clone(), "another note");
        assert_eq!(LogProof::try_from(other), Ok(proof.clone()));
        // The empty path of a one-leaf tree.
        let single = LogProof {
            proof: vec![],
            ..proof.clone()
        };
        assert_eq!(
            LogProof::try_from(compact_log_proof(single.clone(), "")),
            Ok(single)
        );
        for torn in [31, 33, 95] {
            let bad = pb::LogProof {
                path: vec![0; torn],
                ..compact.clone()
            };
            let err = LogProof::try_from(bad).unwrap_err();
            assert_eq!(err.field, "LogProof.path");
            assert!(
                err.reason.contains(&format!("{torn} bytes")),
                "{}",
                err.reason
            );
        }
        let both = pb::LogProof {
            proof: vec![vec![1; 32]],
            ..compact
        };
        assert_eq!(LogProof::try_from(both).unwrap_err().field, "LogProof.path");
        let row = Row {
            key: "718-7".into(),
            queries: 5,
            found: 4,
            cross_member: 3,
            adopted: 2,
            retested: 1,
            retested_by_reason: [("too-old".to_owned(), 1)].into_iter().collect(),
            tests_avoided: 2,
            money_saved_fen: 1000,
        };
        let (back, label) = row_from_pb(row_to_pb(row.clone(), "血红蛋白".into()));
        assert_eq!((back, label.as_str()), (row, "血红蛋白"));
    }

    /// Re-test reasons and decisions go to the wire and back; a decision the domain has no
    /// place for is refused with the field named.
    #[test]
    fn retest_reasons_and_decisions() {
        for r in RetestReason::ALL {
            assert_eq!(
                retest_reason(pb::RetestReason::from(r) as i32),
                Some(Some(r))
            );
        }
        assert_eq!(retest_reason(0), Some(None));
        assert_eq!(retest_reason(99), None);
        for d in [
            Decision::Adopted,
            Decision::Retested {
                reason: Some(RetestReason::TooOld),
                note: "n".into(),
            },
            Decision::Retested {
                reason: None,
                note: String::new(),
            },
        ] {
            let (kind, reason, note) = decision_to_pb(&d);
            assert_eq!(decision(kind as i32, reason as i32, note), Ok(d));
        }
        let adopted = pb::DecisionKind::Adopted as i32;
        let too_old = pb::RetestReason::TooOld as i32;
        let err = decision(adopted, too_old, String::new()).unwrap_err();
        assert_eq!(err.field, "RecordDecisionRequest.reason");
        assert!(err.reason.contains("adopted"), "{err}");
        assert_eq!(
            decision(0, 0, String::new()).unwrap_err().field,
            "RecordDecisionRequest.decision"
        );
        assert!(decision(adopted, 77, String::new()).is_err());
    }

    /// Verdicts and receipts go to the wire and back; a verdict that contradicts itself and a
    /// receipt with no valid ids do not read.
    #[test]
    fn verdicts_and_receipts() {
        let not = Verdict {
            reasons: vec![(Reason::Voided, "voided".into())],
            hr_mark: None,
            valid_until: Some(UnixMillis(5)),
            basis: None,
        };
        assert_eq!(Verdict::try_from(verdict_to_pb(&not, "7")), Ok(not));
        // The basis (policy leaf, version, moment) goes to the wire and back.
        let based = Verdict {
            reasons: vec![],
            hr_mark: Some("全国HR".into()),
            valid_until: None,
            basis: Some(Basis {
                policy_index: 0,
                policy_version: "2026.11-1".into(),
                as_of: UnixMillis(9),
            }),
        };
        let wire = verdict_to_pb(&based, "ignored");
        assert_eq!(wire.policy_version, "2026.11-1");
        assert_eq!(wire.policy_index, Some(0));
        assert_eq!(Verdict::try_from(wire), Ok(based));
        let recognised = Verdict {
            reasons: vec![],
            hr_mark: Some("全国HR".into()),
            valid_until: None,
            basis: None,
        };
        let wire = verdict_to_pb(&recognised, "7");
        assert_eq!(wire.policy_version, "7");
        assert_eq!(Verdict::try_from(wire.clone()), Ok(recognised));
        let mut contradictory = wire;
        contradictory.reasons.push(pb::ReasonDetail {
            reason: pb::NotRecognisedReason::Voided as i32,
            explanation: String::new(),
        });
        let err = Verdict::try_from(contradictory).unwrap_err();
        assert_eq!(err.field, "Verdict.recognition");

        let receipt = Receipt {
            publisher: InstitutionId::parse("shx-prov-people").unwrap(),
            summary_id: SummaryId::parse("LAB-1").unwrap(),
            version: 2,
            body_sha256: [9; 32],
            accepted_at: UnixMillis(11),
        };
        assert_eq!(
            Receipt::try_from(pb::Receipt::from(&receipt)),
            Ok(receipt.clone())
        );
        let err = Receipt::try_from(pb::Receipt::default()).unwrap_err();
        assert_eq!(err.field, "Receipt.publisher");
        let mut short = pb::Receipt::from(&receipt);
        short.body_sha256.pop();
        let err = Receipt::try_from(short).unwrap_err();
        assert_eq!(err.field, "Receipt.body_sha256");
    }
}
