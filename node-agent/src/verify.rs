//! Checks every result the hub returns before anything is shown: the publisher's signature
//! against the alliance CA, the receipt against the body, and that the result answers the
//! question asked (this patient, these items, this time window). A hub cannot slip in another
//! patient's result, alter a body, or serve a summary signed outside the alliance.

use huren_core::identity::InstitutionId;
use huren_core::pseudonym::Pseudonym;
use huren_core::receipt::Receipt;
use huren_core::rules::Verdict;
use huren_core::signing::SignedEnvelope;
use huren_core::summary::{Summary, SummaryId, UnixMillis};
use huren_core::trust::AllianceCa;
use huren_proto::hub as pb;

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
    pub fn new(position: usize, receipt: Option<&pb::Receipt>, reason: String) -> Self {
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
    pub fn logged(position: usize, receipt: Option<&pb::Receipt>, reason: String) -> Self {
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

/// Reads the hub's verdict. A verdict that says RECOGNISED but lists reasons (or the reverse)
/// is a protocol error.
pub fn verdict_from_pb(v: pb::Verdict) -> Result<Verdict, String> {
    let mut reasons = Vec::with_capacity(v.reasons.len());
    for d in v.reasons {
        let r = huren_proto::convert::reason(d.reason)
            .ok_or_else(|| format!("unknown reason {}", d.reason))?;
        reasons.push((r, d.explanation));
    }
    let recognised = v.recognition == pb::Recognition::Recognised as i32;
    if recognised != reasons.is_empty() {
        return Err("its verdict contradicts itself".into());
    }
    Ok(Verdict {
        reasons,
        hr_mark: (!v.hr_mark.is_empty()).then_some(v.hr_mark),
        valid_until: (v.valid_until_ms != 0).then_some(UnixMillis(v.valid_until_ms)),
    })
}

/// What the returned results must match.
pub struct Expectation<'a> {
    pub patient: &'a Pseudonym,
    /// (system, code) pairs; `None` means any item (History).
    pub items: Option<&'a [(String, String)]>,
    pub from: UnixMillis,
    pub until: UnixMillis,
}

/// Puts back into a returned summary (and its earlier versions) the signing certificate a hub
/// sent once for the whole answer (requests with `certificates_once`). A summary that carries
/// its own certificate keeps it, so an answer from a hub that ignores the flag passes too.
pub fn restore_certificate(
    stored: &mut pb::StoredSummary,
    shared: &[Vec<u8>],
) -> Result<(), String> {
    for e in &mut stored.earlier_versions {
        restore_certificate(e, shared)?;
    }
    let Some(signed) = stored.summary.as_mut() else {
        return Ok(());
    };
    if signed.signer_certificate.is_empty() {
        let i = stored.signer_certificate_index as usize;
        let cert = shared.get(i).ok_or_else(|| {
            format!(
                "it names signing certificate {i} of the answer, which has {}",
                shared.len()
            )
        })?;
        signed.signer_certificate = cert.clone();
    }
    Ok(())
}

/// Verifies one stored summary returned by the hub.
pub fn verify_stored(
    stored: pb::StoredSummary,
    ca: &AllianceCa,
    expect: &Expectation<'_>,
) -> Result<VerifiedResult, String> {
    let receipt = stored.receipt.ok_or("it has no receipt")?;
    let signed = stored.summary.ok_or("it has no signed summary")?;
    let verdict = stored.verdict.map(verdict_from_pb).transpose()?;
    let mut earlier = Vec::with_capacity(stored.earlier_versions.len());
    for e in stored.earlier_versions {
        // Earlier versions are about the same patient; their items and times may differ.
        let any = Expectation {
            patient: expect.patient,
            items: None,
            from: UnixMillis(i64::MIN),
            until: UnixMillis(i64::MAX),
        };
        earlier.push(verify_stored(e, ca, &any)?);
    }
    let envelope = SignedEnvelope::try_from(signed).map_err(|e| e.to_string())?;
    let accepted_at = UnixMillis(receipt.accepted_at_ms);
    let verified = envelope
        .verify(ca, accepted_at)
        .map_err(|e| e.to_string())?;
    let s = &verified.summary;
    if receipt.body_sha256 != verified.body_sha256
        || receipt.publisher != s.publisher.as_str()
        || receipt.summary_id != s.id.as_str()
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
    })
}

/// Reads a receipt returned by Publish and checks it names what was sent.
pub fn check_receipt(
    r: pb::Receipt,
    sent: &Summary,
    body_sha256: &[u8; 32],
) -> Result<Receipt, String> {
    let publisher = InstitutionId::parse(&r.publisher).map_err(|e| e.to_string())?;
    let summary_id = SummaryId::parse(&r.summary_id).map_err(|e| e.to_string())?;
    if publisher != sent.publisher
        || summary_id != sent.id
        || r.version != sent.version
        || r.body_sha256 != body_sha256
    {
        return Err(format!(
            "the hub's receipt does not name the summary sent ({} version {})",
            sent.result_key(),
            sent.version
        ));
    }
    Ok(Receipt {
        publisher,
        summary_id,
        version: r.version,
        body_sha256: *body_sha256,
        accepted_at: UnixMillis(r.accepted_at_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(cert: &[u8], index: u32, earlier: Vec<pb::StoredSummary>) -> pb::StoredSummary {
        pb::StoredSummary {
            summary: Some(huren_core::pb::SignedSummary {
                body: vec![1],
                signature: vec![2],
                signer_certificate: cert.to_vec(),
            }),
            signer_certificate_index: index,
            earlier_versions: earlier,
            ..Default::default()
        }
    }

    fn cert_of(s: &pb::StoredSummary) -> &[u8] {
        &s.summary.as_ref().unwrap().signer_certificate
    }

    #[test]
    fn shared_certificates_are_put_back_and_a_bad_index_is_refused() {
        let shared = vec![b"cert-a".to_vec(), b"cert-b".to_vec()];
        let mut s = stored(b"", 1, vec![stored(b"", 0, vec![])]);
        restore_certificate(&mut s, &shared).unwrap();
        assert_eq!(cert_of(&s), b"cert-b");
        assert_eq!(cert_of(&s.earlier_versions[0]), b"cert-a");
        // A summary with its own certificate keeps it (a hub that ignored the request).
        let mut own = stored(b"own", 1, vec![]);
        restore_certificate(&mut own, &[]).unwrap();
        assert_eq!(cert_of(&own), b"own");
        let mut bad = stored(b"", 2, vec![]);
        let err = restore_certificate(&mut bad, &shared).unwrap_err();
        assert!(err.contains("signing certificate 2"), "{err}");
        let mut bad_earlier = stored(b"own", 0, vec![stored(b"", 5, vec![])]);
        assert!(restore_certificate(&mut bad_earlier, &shared).is_err());
    }
}
