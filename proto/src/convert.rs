//! The one place where wire messages and domain values meet for what both the hub and the
//! agents convert: purposes, groupings, reasons, log proofs and receipts. Each direction is
//! written once; a value off the wire that the domain has no place for is `None` or a
//! [`WireError`] naming the field, never a panic.

use huren_core::logentry::{LogProof, Purpose};
use huren_core::merkle::Hash;
use huren_core::receipt::Receipt;
use huren_core::rules::Reason;
use huren_core::stats::{GroupBy, Row};

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

impl From<LogProof> for pb::LogProof {
    fn from(p: LogProof) -> Self {
        pb::LogProof {
            index: p.index,
            tree_size: p.tree_size,
            proof: p.proof.iter().map(|h| h.to_vec()).collect(),
            checkpoint: p.checkpoint,
        }
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

impl TryFrom<pb::LogProof> for LogProof {
    type Error = WireError;

    fn try_from(p: pb::LogProof) -> Result<Self, WireError> {
        Ok(LogProof {
            index: p.index,
            tree_size: p.tree_size,
            proof: hashes("LogProof.proof", &p.proof)?,
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
}
