//! The agent's error type. Messages are meant for a hospital IT engineer or a clinician.

use std::path::PathBuf;

use huren_core::pseudonym::PatientIdError;
use huren_core::signing::SignError;

use crate::config::ConfigError;
use crate::results::ResultsError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("set-up: {0}")]
    Setup(String),
    #[error("signing: {0}")]
    Signer(#[from] SignError),
    #[error("patient id: {0}")]
    PatientId(#[from] PatientIdError),
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("cannot reach the hub at {hub}: {detail}")]
    Connect { hub: String, detail: String },
    #[error("the hub refused the request ({}): {}", describe(.0.code()), .0.message())]
    Hub(tonic::Status),
    #[error(
        "result #{position} from the hub failed verification: {reason}. Nothing is shown; report this to the alliance administrator."
    )]
    Untrusted { position: usize, reason: String },
    #[error("unexpected answer from the hub: {0}")]
    Protocol(String),
    #[error(
        "THE HUB'S LOG FAILED VERIFICATION: {0}. The hub may have altered, hidden or forked its history. Nothing is shown; keep this agent's log state folder as evidence and report this to the alliance administrator."
    )]
    Log(String),
}

/// Plain words for a gRPC status code.
fn describe(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        InvalidArgument => "invalid request",
        PermissionDenied => "not allowed",
        Unauthenticated => "not authenticated",
        AlreadyExists => "already exists with different content",
        FailedPrecondition => "out of order",
        NotFound => "not found",
        Unavailable => "hub unavailable",
        DeadlineExceeded => "timed out",
        OutOfRange | ResourceExhausted => "too large",
        Internal => "hub error",
        _ => "error",
    }
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
