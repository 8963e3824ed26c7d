//! The hub's error type and the one place it becomes a gRPC status.

use huren_core::identity::InstitutionId;
use huren_core::signing::VerifyError;
use huren_core::trust::TrustError;
use tonic::{Code, Status};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("a client certificate is required")]
    NoClientCertificate,
    #[error("the client certificate does not name a member institution: {0}")]
    CallerCertificate(TrustError),
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "the {method} request is {bytes} bytes, too large: at most {limit} (the hub's limits.max_message_bytes / max_batch_bytes)"
    )]
    TooLarge {
        method: &'static str,
        bytes: usize,
        limit: usize,
    },
    #[error("the summary was refused: {0}")]
    Summary(#[from] VerifyError),
    #[error(
        "institution {caller} cannot publish a summary of {publisher}; publish your own results"
    )]
    NotPublisher {
        caller: InstitutionId,
        publisher: InstitutionId,
    },
    #[error(
        "institution {caller} is not a member in the alliance policy (version {policy_version}); ask the alliance administrator to add it"
    )]
    NotMember {
        caller: InstitutionId,
        policy_version: String,
    },
    #[error(
        "the certificates of institution {member} were revoked at {at} ({reason}); the hub accepts no calls or new summaries from it. Ask the alliance administrator"
    )]
    Revoked {
        member: InstitutionId,
        /// RFC 3339, UTC.
        at: String,
        reason: String,
    },
    #[error("the log could not sign a checkpoint: {0}")]
    Checkpoint(String),
    #[error("the hub's signature checks stopped before this summary's was done")]
    Checking,
    #[error("no such result: {0}")]
    UnknownResult(String),
    #[error(
        "record a decision only for a result your institution looked up; {0} was not among your query answers"
    )]
    NotConsulted(String),
    #[error(
        "{caller} holds no results of this patient: a consent change is recorded by a member that published the patient's results, or by an alliance administrator"
    )]
    ConsentNotYours { caller: InstitutionId },
    #[error(
        "{caller} is not an alliance administrator: a patient's access report is given by the alliance administrator, on the patient's request"
    )]
    AccessReportNotYours { caller: InstitutionId },
    #[error("{0}")]
    NotAPolicy(String),
    /// A statistics audit (GetLogEntries) asked by a member, not an administrator.
    #[error(
        "{caller} is not an alliance administrator: the log's decision and access entries are read in bulk only by an administrator, for a statistics audit"
    )]
    AuditNotYours { caller: InstitutionId },
    #[error("the decision was refused: {0}")]
    Decision(#[from] huren_core::rules::DecisionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HubError {
    /// The status code a client sees.
    pub fn code(&self) -> Code {
        match self {
            Self::NoClientCertificate | Self::CallerCertificate(_) => Code::Unauthenticated,
            Self::BadRequest(_) => Code::InvalidArgument,
            Self::TooLarge { .. } => Code::OutOfRange,
            Self::Summary(VerifyError::Certificate(TrustError::Malformed(_))) => {
                Code::InvalidArgument
            }
            Self::Summary(VerifyError::Certificate(_)) => Code::PermissionDenied,
            Self::Summary(_) => Code::InvalidArgument,
            Self::NotPublisher { .. }
            | Self::NotMember { .. }
            | Self::Revoked { .. }
            | Self::ConsentNotYours { .. }
            | Self::AccessReportNotYours { .. }
            | Self::AuditNotYours { .. } => Code::PermissionDenied,
            Self::NotAPolicy(_) => Code::NotFound,
            Self::Checkpoint(_) | Self::Checking => Code::Internal,
            Self::Store(StoreError::BeyondLog { .. }) => Code::OutOfRange,
            Self::Store(StoreError::Tree(_)) => Code::InvalidArgument,
            Self::UnknownResult(_) => Code::NotFound,
            Self::NotConsulted(_) => Code::FailedPrecondition,
            Self::Decision(huren_core::rules::DecisionError::NotRecognised) => {
                Code::FailedPrecondition
            }
            Self::Decision(_) => Code::InvalidArgument,
            Self::Store(StoreError::DecisionIdReused { .. }) => Code::AlreadyExists,
            Self::Store(StoreError::Conflict { .. }) => Code::AlreadyExists,
            Self::Store(StoreError::OutOfOrder { .. } | StoreError::Succession { .. }) => {
                Code::FailedPrecondition
            }
            // The engine failed (I/O, a lost connection): worth a retry.
            Self::Store(StoreError::Unavailable(_)) => Code::Unavailable,
            Self::Store(_) => Code::Internal,
        }
    }

    /// The status the client sees, logging only an internal error: a batch's refusals are
    /// logged together, in one line (see `grpc::publish_batch`).
    pub fn into_status_unlogged(self) -> Status {
        if matches!(self.code(), Code::Internal | Code::Unavailable) {
            return self.into_status();
        }
        Status::new(self.code(), self.to_string())
    }

    /// Logs the error once and turns it into the status the client sees. Internal details stay
    /// in the log; the client gets a safe message.
    pub fn into_status(self) -> Status {
        let code = self.code();
        if code == Code::Internal {
            tracing::error!(error = %self, "request failed");
            Status::internal("the hub could not complete the request; the error is in its log")
        } else if code == Code::Unavailable {
            tracing::error!(error = %self, "request failed");
            Status::unavailable("the hub's store is unavailable; try again shortly")
        } else {
            tracing::warn!(code = ?code, error = %self, "request refused");
            Status::new(code, self.to_string())
        }
    }
}
