//! Signing and verifying summaries.
//!
//! Byte layout of what is signed (format 1):
//!
//! ```text
//! message = "HUREN-SUMMARY-V1\n" || body
//! signature = Ed25519(signing key, message)        64 bytes
//! ```
//!
//! `body` is the canonical `SummaryBody` encoding (see [`crate::summary`]) exactly as it travels
//! in `SignedSummary.body`. The prefix separates summary signatures from anything else a key
//! might ever sign. Verifiers check the signature over the received bytes, then decode them;
//! nobody re-encodes a body to verify it.

use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};

use crate::ed25519::{self, PublicKey};
use crate::identity::InstitutionId;
use crate::pb;
use crate::summary::{BodyError, MAX_BODY_BYTES, Summary, UnixMillis};
use crate::trust::{AllianceCa, CertifiedSigner, TrustError, institution_in_certificate};

/// Prefix of every signed summary message.
pub const SUMMARY_SIGNING_CONTEXT: &[u8] = b"HUREN-SUMMARY-V1\n";

/// The exact bytes a summary signature covers.
pub fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SUMMARY_SIGNING_CONTEXT.len() + body.len());
    m.extend_from_slice(SUMMARY_SIGNING_CONTEXT);
    m.extend_from_slice(body);
    m
}

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A signed summary as it travels: body bytes, signature, signing certificate (DER).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEnvelope {
    pub body: Vec<u8>,
    pub signature: [u8; 64],
    pub signer_certificate: Vec<u8>,
}

/// A verified summary: the envelope, the decoded summary, and the body's SHA-256.
#[derive(Clone, Debug)]
pub struct VerifiedSummary {
    pub envelope: SignedEnvelope,
    pub summary: Summary,
    pub body_sha256: [u8; 32],
}

/// Why a signed summary was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature must be 64 bytes, got {0}")]
    SignatureLength(usize),
    #[error("signing certificate: {0}")]
    Certificate(#[from] TrustError),
    #[error("the signature does not verify: the body was changed or signed with another key")]
    BadSignature,
    #[error(
        "the signing certificate's public key is not usable (a small-order point or a non-canonical encoding)"
    )]
    WeakKey,
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("the summary names publisher {body} but is signed by {certificate}")]
    PublisherMismatch {
        body: InstitutionId,
        certificate: InstitutionId,
    },
}

impl TryFrom<pb::SignedSummary> for SignedEnvelope {
    type Error = VerifyError;

    fn try_from(s: pb::SignedSummary) -> Result<Self, VerifyError> {
        let signature = s
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::SignatureLength(s.signature.len()))?;
        Ok(Self {
            body: s.body,
            signature,
            signer_certificate: s.signer_certificate,
        })
    }
}

impl From<SignedEnvelope> for pb::SignedSummary {
    fn from(e: SignedEnvelope) -> Self {
        Self {
            body: e.body,
            signature: e.signature.to_vec(),
            signer_certificate: e.signer_certificate,
        }
    }
}

impl SignedEnvelope {
    /// The envelope as one `huren.summary.v1.SignedSummary` message: how an agent keeps a
    /// signed summary until it is published (the exact bytes signed, sent again on a retry).
    pub fn to_bytes(&self) -> Vec<u8> {
        use prost::Message;
        pb::SignedSummary::from(self.clone()).encode_to_vec()
    }

    /// Reads [`SignedEnvelope::to_bytes`]; says why bytes are not an envelope.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        use prost::Message;
        let signed = pb::SignedSummary::decode(bytes).map_err(|e| e.to_string())?;
        Self::try_from(signed).map_err(|e| e.to_string())
    }

    /// Verifies the envelope with an already certified signer: signature first, over the exact
    /// bytes; then the body; then that the body's publisher is the certificate's institution.
    pub fn verify_with(&self, signer: &CertifiedSigner) -> Result<VerifiedSummary, VerifyError> {
        self.clone().verify_into(signer)
    }

    /// [`SignedEnvelope::verify_with`], keeping the envelope's bytes instead of copying them.
    pub fn verify_into(self, signer: &CertifiedSigner) -> Result<VerifiedSummary, VerifyError> {
        self.check_size()?;
        self.check_signature(signer)?;
        self.decode(signer)
    }

    fn check_size(&self) -> Result<(), VerifyError> {
        if self.body.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge(self.body.len()).into());
        }
        Ok(())
    }

    /// The signature by the one rule hub and agents share ([`crate::ed25519`]).
    fn check_signature(&self, signer: &CertifiedSigner) -> Result<(), VerifyError> {
        let key = PublicKey::from_bytes(signer.key.as_bytes()).ok_or(VerifyError::WeakKey)?;
        if ed25519::verify(&key, &signing_message(&self.body), &self.signature) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    /// The body decoded and matched to the signer; the signature is already checked.
    fn decode(self, signer: &CertifiedSigner) -> Result<VerifiedSummary, VerifyError> {
        let summary = Summary::from_body_bytes(&self.body)?;
        if summary.publisher != signer.institution {
            return Err(VerifyError::PublisherMismatch {
                body: summary.publisher,
                certificate: signer.institution.clone(),
            });
        }
        Ok(VerifiedSummary {
            body_sha256: sha256(&self.body),
            envelope: self,
            summary,
        })
    }

    /// Verifies the envelope from scratch against the alliance CA, with the signing certificate
    /// checked for validity at `at` (the time the hub accepted the summary, for stored ones).
    pub fn verify(&self, ca: &AllianceCa, at: UnixMillis) -> Result<VerifiedSummary, VerifyError> {
        let signer = ca.certify_signer(&self.signer_certificate, at)?;
        self.verify_with(&signer)
    }
}

/// Verifies many envelopes, each with its certified signer, and gives one outcome per
/// envelope, in order: the same outcomes as [`SignedEnvelope::verify_into`] one by one.
///
/// The signatures are checked together with one batch equation of the same rule
/// ([`ed25519::verify_batch`]: cofactored, so the batch accepts exactly what each check alone
/// accepts, up to a chance of 2^-128); if the batch fails, each is checked on its own to find
/// which.
pub fn verify_many(
    items: Vec<(SignedEnvelope, CertifiedSigner)>,
) -> Vec<Result<VerifiedSummary, VerifyError>> {
    let mut sized = Vec::with_capacity(items.len());
    let mut out: Vec<Option<Result<VerifiedSummary, VerifyError>>> =
        Vec::with_capacity(items.len());
    // A batch comes from a few signers: each key is decoded once.
    let mut keys: Vec<([u8; 32], Option<PublicKey>)> = Vec::new();
    for (i, (envelope, signer)) in items.into_iter().enumerate() {
        let encoding = *signer.key.as_bytes();
        let key = match keys.iter().find(|(e, _)| *e == encoding) {
            Some((_, k)) => *k,
            None => {
                let k = PublicKey::from_bytes(&encoding);
                keys.push((encoding, k));
                k
            }
        };
        match (envelope.check_size(), key) {
            (Err(e), _) => out.push(Some(Err(e))),
            (Ok(()), None) => out.push(Some(Err(VerifyError::WeakKey))),
            (Ok(()), Some(key)) => {
                sized.push((i, envelope, signer, key));
                out.push(None);
            }
        }
    }
    let messages: Vec<Vec<u8>> = sized
        .iter()
        .map(|(_, e, _, _)| signing_message(&e.body))
        .collect();
    let batch: Vec<(&PublicKey, &[u8], &[u8; 64])> = sized
        .iter()
        .zip(&messages)
        .map(|((_, e, _, k), m)| (k, m.as_slice(), &e.signature))
        .collect();
    let all_good = !batch.is_empty() && ed25519::verify_batch(&batch);
    drop(batch);
    for ((i, envelope, signer, key), message) in sized.into_iter().zip(&messages) {
        let outcome = if all_good || ed25519::verify(&key, message, &envelope.signature) {
            envelope.decode(&signer)
        } else {
            Err(VerifyError::BadSignature)
        };
        out[i] = Some(outcome);
    }
    out.into_iter()
        .map(|o| o.unwrap_or(Err(VerifyError::BadSignature)))
        .collect()
}

/// A member's summary-signing key with its certificate.
pub struct SummarySigner {
    key: ed25519_dalek::SigningKey,
    certificate_der: Vec<u8>,
    institution: InstitutionId,
}

/// Why a signer could not be set up or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("signing key is not a PKCS#8 Ed25519 key: {0}")]
    BadKey(String),
    #[error("signing certificate: {0}")]
    Certificate(#[from] TrustError),
    #[error("the signing key does not match the public key in the signing certificate")]
    KeyMismatch,
    #[error("this agent signs for {signer} and cannot sign a summary of publisher {publisher}")]
    WrongPublisher {
        signer: InstitutionId,
        publisher: InstitutionId,
    },
}

impl SummarySigner {
    /// Loads a PKCS#8 PEM Ed25519 key and its DER certificate, and checks they belong together.
    pub fn from_pkcs8_pem(key_pem: &str, certificate_der: Vec<u8>) -> Result<Self, SignError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(key_pem)
            .map_err(|e| SignError::BadKey(e.to_string()))?;
        Self::new(key, certificate_der)
    }

    pub fn new(
        key: ed25519_dalek::SigningKey,
        certificate_der: Vec<u8>,
    ) -> Result<Self, SignError> {
        let institution = institution_in_certificate(&certificate_der)?;
        let (_, cert) = <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<_>>::from_der(&certificate_der)
            .map_err(|e| TrustError::Malformed(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.verifying_key().as_bytes() {
            return Err(SignError::KeyMismatch);
        }
        Ok(Self {
            key,
            certificate_der,
            institution,
        })
    }

    /// The institution this signer signs for.
    pub fn institution(&self) -> &InstitutionId {
        &self.institution
    }

    /// Encodes and signs a summary of this signer's institution.
    pub fn sign(&self, summary: &Summary) -> Result<SignedEnvelope, SignError> {
        if summary.publisher != self.institution {
            return Err(SignError::WrongPublisher {
                signer: self.institution.clone(),
                publisher: summary.publisher.clone(),
            });
        }
        let body = summary.to_body_bytes();
        let signature = self.key.sign(&signing_message(&body)).to_bytes();
        Ok(SignedEnvelope {
            body,
            signature,
            signer_certificate: self.certificate_der.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signed message layout is part of the format: pin it.
    #[test]
    fn signing_message_layout() {
        assert_eq!(
            signing_message(b"\x08\x01"),
            b"HUREN-SUMMARY-V1\n\x08\x01".to_vec()
        );
    }

    /// The bytes an agent keeps a queued summary as are the `SignedSummary` message, byte for
    /// byte: stores written before `to_bytes` existed still read, and what is kept is what was
    /// signed and is sent again.
    #[test]
    fn stored_bytes_are_the_signed_summary_message() {
        use prost::Message;
        let env = SignedEnvelope {
            body: vec![0x08, 0x01],
            signature: [7; 64],
            signer_certificate: vec![0x30, 0x00],
        };
        let mut pinned = vec![0x0a, 0x02, 0x08, 0x01, 0x12, 64];
        pinned.extend([7; 64]);
        pinned.extend([0x1a, 0x02, 0x30, 0x00]);
        assert_eq!(env.to_bytes(), pinned);
        let before = pb::SignedSummary::from(env.clone()).encode_to_vec();
        assert_eq!(env.to_bytes(), before);
        assert_eq!(SignedEnvelope::from_bytes(&before), Ok(env));
        assert!(SignedEnvelope::from_bytes(&[0x12, 0x01, 0x00]).is_err());
        assert!(SignedEnvelope::from_bytes(&[0xff]).is_err());
    }

    /// RFC 8032 section 7.1, test 2: the Ed25519 implementation agrees with the standard.
    #[test]
    fn ed25519_rfc8032_vector() {
        let secret: [u8; 32] =
            hex::decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
                .unwrap()
                .try_into()
                .unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&secret);
        assert_eq!(
            hex::encode(key.verifying_key().as_bytes()),
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
        );
        assert_eq!(
            hex::encode(key.sign(&[0x72]).to_bytes()),
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
        );
    }

    #[test]
    fn tampered_body_fails_signature() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let summary = crate::summary::tests::sample();
        let body = summary.to_body_bytes();
        let env = SignedEnvelope {
            signature: key.sign(&signing_message(&body)).to_bytes(),
            body,
            signer_certificate: vec![],
        };
        let signer = CertifiedSigner {
            institution: summary.publisher.clone(),
            key: key.verifying_key(),
            valid_from: UnixMillis(0),
            valid_until: UnixMillis(i64::MAX),
        };
        let ok = env.verify_with(&signer).unwrap();
        assert_eq!(ok.summary, summary);
        assert_eq!(ok.body_sha256, sha256(&env.body));

        let mut bad = env.clone();
        let last = bad.body.len() - 1;
        bad.body[last] ^= 1;
        assert_eq!(
            bad.verify_with(&signer).unwrap_err(),
            VerifyError::BadSignature
        );

        let other = CertifiedSigner {
            institution: crate::identity::InstitutionId::parse("lantian-county").unwrap(),
            key: key.verifying_key(),
            valid_from: UnixMillis(0),
            valid_until: UnixMillis(i64::MAX),
        };
        assert!(matches!(
            env.verify_with(&other),
            Err(VerifyError::PublisherMismatch { .. })
        ));
    }

    fn signed(key: &ed25519_dalek::SigningKey, n: u8) -> (SignedEnvelope, CertifiedSigner) {
        let mut summary = crate::summary::tests::sample();
        summary.id = crate::summary::SummaryId::parse(&format!("batch-{n}")).unwrap();
        let body = summary.to_body_bytes();
        let env = SignedEnvelope {
            signature: key.sign(&signing_message(&body)).to_bytes(),
            body,
            signer_certificate: vec![],
        };
        let signer = CertifiedSigner {
            institution: summary.publisher,
            key: key.verifying_key(),
            valid_from: UnixMillis(0),
            valid_until: UnixMillis(i64::MAX),
        };
        (env, signer)
    }

    /// A summary whose signature has a mixed-order R (only its key holder can make one) gets
    /// one answer from the batch and from a check alone, every time: the hub's batch and the
    /// agents' single checks never disagree about it. (With ed25519-dalek's cofactorless batch
    /// it was accepted about half the time and always refused alone.)
    #[test]
    fn a_mixed_order_signature_gets_one_answer_in_and_out_of_batches() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
        for t in 1..8 {
            let (mut env, signer) = signed(&key, 100 + t as u8);
            env.signature = crate::ed25519::testonly::mixed_order_signature(
                &key,
                &signing_message(&env.body),
                curve25519_dalek::constants::EIGHT_TORSION[t],
            );
            let alone = env.verify_with(&signer).is_ok();
            for _ in 0..32 {
                let batch = verify_many(vec![(env.clone(), signer.clone()), signed(&key, 1)]);
                assert_eq!(batch[0].is_ok(), alone, "torsion point {t}");
                assert!(batch[1].is_ok());
            }
        }
    }

    /// A batch gives, envelope by envelope, what verifying each alone gives: a bad signature,
    /// an oversized body or a publisher mismatch refuses only its own envelope.
    #[test]
    fn verify_many_agrees_with_one_by_one() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let all_good: Vec<_> = (0..20).map(|n| signed(&key, n)).collect();
        let outcomes = verify_many(all_good.clone());
        assert_eq!(outcomes.len(), 20);
        for ((env, _), got) in all_good.iter().zip(&outcomes) {
            assert_eq!(got.as_ref().unwrap().envelope, *env);
        }

        let mut mixed = all_good;
        mixed[3].0.signature[10] ^= 1;
        let last = mixed[7].0.body.len() - 1;
        mixed[7].0.body[last] ^= 1;
        mixed[11].0.body = vec![0; MAX_BODY_BYTES + 1];
        mixed[15].1.institution = crate::identity::InstitutionId::parse("lantian-county").unwrap();
        let expected: Vec<_> = mixed
            .iter()
            .map(|(e, s)| {
                e.verify_with(s)
                    .map(|v| v.envelope)
                    .map_err(|e| e.to_string())
            })
            .collect();
        let got: Vec<_> = verify_many(mixed)
            .into_iter()
            .map(|r| r.map(|v| v.envelope).map_err(|e| e.to_string()))
            .collect();
        assert_eq!(got, expected);
        let refused: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(refused, vec![3, 7, 11, 15]);
        assert!(verify_many(Vec::new()).is_empty());
    }
}
