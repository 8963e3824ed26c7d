//! Checks every result the hub returns before anything is shown: the publisher's signature
//! against the alliance CA, the receipt against the body, and that the result answers the
//! question asked (this patient, these items, this time window). A hub cannot slip in another
//! patient's result, alter a body, or serve a summary signed outside the alliance.

use huren_core::pseudonym::Pseudonym;
use huren_core::receipt::Receipt;
use huren_core::rules::Verdict;
use huren_core::signing::SignedEnvelope;
use huren_core::summary::{Summary, UnixMillis};
use huren_core::trust::AllianceCa;

use crate::hub::SentProof;

/// How a returned result's receipt names it, as the hub sent it (unverified, maybe not even
/// valid ids): what a failure is reported under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub publisher: String,
    pub summary_id: String,
    pub version: u32,
}

/// One result as the hub returned it, read from the wire ([`crate::hub`]), not yet verified.
#[derive(Debug)]
pub struct Returned {
    /// How its receipt names it; `None` without a receipt.
    pub claimed: Option<Claimed>,
    /// Its parts, or why they do not read (then the result fails verification).
    pub parts: Result<Unverified, String>,
}

/// The parts of a returned result.
#[derive(Debug)]
pub struct Unverified {
    pub receipt: Receipt,
    pub envelope: SignedEnvelope,
    /// The hub's verdict for us (absent only in answers that carry none).
    pub verdict: Option<Verdict>,
    /// Earlier versions, newest first (History with versions).
    pub earlier: Vec<Unverified>,
    /// Its inclusion proof (asked for when the agent checks the hub's log).
    pub log_proof: SentProof,
}

impl Unverified {
    /// Takes out its log proof and its earlier versions' (checked against the log after the
    /// result verifies).
    pub fn take_proofs(&mut self) -> (SentProof, Vec<SentProof>) {
        let earlier = self
            .earlier
            .iter_mut()
            .map(|e| std::mem::replace(&mut e.log_proof, Ok(None)))
            .collect();
        (std::mem::replace(&mut self.log_proof, Ok(None)), earlier)
    }
}

/// A result whose signature and receipt were verified, with the hub's verdict for us.
#[derive(Clone, Debug)]
pub struct VerifiedResult {
    pub summary: Summary,
    pub receipt: Receipt,
    pub envelope: SignedEnvelope,
    /// The hub's verdict (absent only in answers that carry none).
    pub verdict: Option<Verdict>,
    /// Earlier versions of the result, newest first, each verified (History with versions).
    pub earlier: Vec<VerifiedResult>,
    /// The inclusion proof the result was checked with, when the agent checks the hub's log
    /// (`[log]`): what `huren-agent export-proof` writes out.
    pub log_proof: Option<huren_core::logentry::LogProof>,
}

/// A returned result that failed verification: kept out of what is shown, and reported with
/// the publisher and result its unverified receipt names (so a person knows whom to ask).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedResult {
    /// 1-based position in the hub's answer.
    pub position: usize,
    /// `publisher/summary_id` as the receipt names it (unverified), or "?" without one.
    pub claimed: String,
    /// The publisher as the receipt names it (unverified), or "?".
    pub publisher: String,
    pub reason: String,
}

impl FailedResult {
    /// The failure of the result at `position` (1-based), named by its unverified receipt.
    pub fn new(position: usize, receipt: Option<&Claimed>, reason: String) -> Self {
        let (publisher, claimed) = match receipt {
            Some(r) => (
                r.publisher.clone(),
                format!("{}/{} v{}", r.publisher, r.summary_id, r.version),
            ),
            None => ("?".into(), "?".into()),
        };
        Self {
            position,
            claimed,
            publisher,
            reason,
        }
    }

    /// [`FailedResult::new`], logged once as a warning (no patient data is in it).
    pub fn logged(position: usize, receipt: Option<&Claimed>, reason: String) -> Self {
        let f = Self::new(position, receipt, reason);
        tracing::warn!(
            position = f.position,
            result = %f.claimed,
            reason = %f.reason,
            "a result from the hub failed verification; it is not shown"
        );
        f
    }
}

/// What the returned results must match.
pub struct Expectation<'a> {
    pub patient: &'a Pseudonym,
    /// (system, code) pairs; `None` means any item (History).
    pub items: Option<&'a [(String, String)]>,
    pub from: UnixMillis,
    pub until: UnixMillis,
}

/// Verifies one result returned by the hub (its log proofs taken out first by the caller).
pub fn verify_stored(
    stored: Unverified,
    ca: &AllianceCa,
    expect: &Expectation<'_>,
) -> Result<VerifiedResult, String> {
    let Unverified {
        receipt,
        envelope,
        verdict,
        earlier: earlier_versions,
        ..
    } = stored;
    let mut earlier = Vec::with_capacity(earlier_versions.len());
    for e in earlier_versions {
        // Earlier versions are about the same patient; their items and times may differ.
        let any = Expectation {
            patient: expect.patient,
            items: None,
            from: UnixMillis(i64::MIN),
            until: UnixMillis(i64::MAX),
        };
        earlier.push(verify_stored(e, ca, &any)?);
    }
    let accepted_at = receipt.accepted_at;
    let verified = envelope
        .verify(ca, accepted_at)
        .map_err(|e| e.to_string())?;
    let s = &verified.summary;
    if receipt.body_sha256 != verified.body_sha256
        || receipt.publisher != s.publisher
        || receipt.summary_id != s.id
        || receipt.version != s.version
    {
        return Err(format!(
            "its receipt does not match the signed summary {}",
            s.result_key()
        ));
    }
    if s.patient != *expect.patient {
        return Err(format!("{} is about another patient", s.result_key()));
    }
    if let Some(items) = expect.items
        && !items
            .iter()
            .any(|(sys, code)| *sys == s.item.system && *code == s.item.code)
    {
        return Err(format!(
            "{} is for item {} which was not asked for",
            s.result_key(),
            s.item.code
        ));
    }
    if s.performed_at < expect.from || s.performed_at > expect.until {
        return Err(format!(
            "{} was performed outside the time window asked for",
            s.result_key()
        ));
    }
    Ok(VerifiedResult {
        receipt: Receipt {
            publisher: s.publisher.clone(),
            summary_id: s.id.clone(),
            version: s.version,
            body_sha256: verified.body_sha256,
            accepted_at,
        },
        summary: verified.summary,
        envelope: verified.envelope,
        verdict,
        earlier,
        log_proof: None,
    })
}

/// Checks that a receipt returned by Publish names what was sent.
pub fn check_receipt(
    r: Receipt,
    sent: &Summary,
    body_sha256: &[u8; 32],
) -> Result<Receipt, String> {
    if r.publisher != sent.publisher
        || r.summary_id != sent.id
        || r.version != sent.version
        || r.body_sha256 != *body_sha256
    {
        return Err(format!(
            "the hub's receipt does not name the summary sent ({} version {})",
            sent.result_key(),
            sent.version
        ));
    }
    Ok(r)
}
