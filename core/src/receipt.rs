//! The hub's acknowledgement that it holds a summary version durably.

use crate::identity::InstitutionId;
use crate::summary::{SummaryId, UnixMillis};

/// Names one stored summary version and when the hub accepted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub publisher: InstitutionId,
    pub summary_id: SummaryId,
    pub version: u32,
    /// SHA-256 of the stored body bytes.
    pub body_sha256: [u8; 32],
    pub accepted_at: UnixMillis,
}
