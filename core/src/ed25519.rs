//! The one Ed25519 signature rule that the hub and every agent apply, alone and in batches.
//!
//! For a public key encoding `A_enc` (32 bytes), a signature `R_enc || S_enc` (32 + 32 bytes)
//! and a message `M`, a signature is valid when:
//!
//! 1. `S_enc` is the canonical little-endian encoding of an integer `S < ℓ` (the order of the
//!    base point);
//! 2. `A_enc` and `R_enc` are canonical point encodings (decoding then encoding again gives the
//!    same 32 bytes) of points `A` and `R` that are not of small order (`[8]P` is not the
//!    identity);
//! 3. with `k = SHA-512(R_enc || A_enc || M)` read little-endian modulo `ℓ`, the cofactored
//!    equation `[8]([S]B − R − [k]A) = 0` holds.
//!
//! A batch of signatures is checked with fresh 128-bit coefficients `z_i`:
//! `[8]([Σ z_i·S_i]B − Σ [z_i]R_i − Σ [z_i·k_i]A_i) = 0`, after rules 1 and 2 for each.
//!
//! Why this rule and not `verify_strict`'s cofactorless one: the two must never disagree, or
//! a member could publish a summary the hub accepts in a batch and every agent refuses (one
//! member blanking any patient's history for everyone). Write `e_i = [S_i]B − R_i − [k_i]A_i`.
//! The group of curve points is `Z/8 × Z/ℓ`, so `[8]e_i` lies in the subgroup of prime order
//! `ℓ`. If every signature passes alone, every `[8]e_i` is 0 and so is `Σ z_i·[8]e_i`: the
//! batch passes. If one fails alone, `[8]e_j ≠ 0` in a group of prime order, and the batch
//! sum is 0 only if `z_j` takes one value modulo `ℓ` given the others: probability at most
//! `2^-128` over the fresh coefficients. `verify_strict` checks the cofactorless equation
//! (`e = 0` exactly), which a residual `e_j` of small order (a "mixed-order" `R` that only the
//! key holder can make) never passes, while ed25519-dalek's batch equation passes it (a test
//! here shows it): the hub batching with one and agents checking with the other disagreed.
//! Honest signers' `e_i` is 0, so they pass either way; this is the cofactored check of
//! RFC 8032 section 5.1.7 with canonical encodings and small-order points refused.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};

/// A point from its encoding, if canonical and not of small order (rule 2).
///
/// "Decoding then encoding again gives the same bytes" is checked without the encoding (a
/// field inversion, about a fifth of a batch's work per signature). An encoding is the
/// y-coordinate in the low 255 bits and the parity of x in the top bit. Decoding reduces y
/// modulo p = 2^255 − 19 and takes the x of the given parity, except that x = 0 has no odd
/// form and stays 0. So the encoding comes back unchanged exactly when y < p and not (x = 0
/// and the top bit set). The points with x = 0 are (0, 1) and (0, −1), both of small order
/// and refused anyway, so what is left to check is y < p. A test compares this with the
/// round trip on every edge and on random encodings.
fn point(encoding: &[u8; 32]) -> Option<EdwardsPoint> {
    if !y_is_reduced(encoding) {
        return None;
    }
    let p = CompressedEdwardsY(*encoding).decompress()?;
    (!p.is_small_order()).then_some(p)
}

/// Whether the y-coordinate of a point encoding (its low 255 bits, little-endian) is below
/// p = 2^255 − 19: p's encoding is `ed ff … ff 7f`, so y ≥ p only when every byte but the
/// first is at its most and the first is at least `0xed`.
fn y_is_reduced(encoding: &[u8; 32]) -> bool {
    !(encoding[31] & 0x7f == 0x7f
        && encoding[1..31].iter().all(|&b| b == 0xff)
        && encoding[0] >= 0xed)
}

/// A public key checked once for rule 2, to check many signatures with.
#[derive(Clone, Copy, Debug)]
pub struct PublicKey {
    encoding: [u8; 32],
    point: EdwardsPoint,
}

impl PublicKey {
    /// The key, or `None` if its encoding is not canonical or the point is of small order.
    pub fn from_bytes(encoding: &[u8; 32]) -> Option<Self> {
        Some(Self {
            encoding: *encoding,
            point: point(encoding)?,
        })
    }
}

/// One signature with its terms, parsed for the equation.
struct Terms {
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
    a: EdwardsPoint,
}

fn terms(key: &PublicKey, message: &[u8], signature: &[u8; 64]) -> Option<Terms> {
    let mut r_enc = [0u8; 32];
    r_enc.copy_from_slice(&signature[..32]);
    let mut s_enc = [0u8; 32];
    s_enc.copy_from_slice(&signature[32..]);
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_enc))?;
    let r = point(&r_enc)?;
    let mut h = Sha512::new();
    h.update(r_enc);
    h.update(key.encoding);
    h.update(message);
    let mut wide = [0u8; 64];
    wide.copy_from_slice(&h.finalize());
    Some(Terms {
        r,
        s,
        k: Scalar::from_bytes_mod_order_wide(&wide),
        a: key.point,
    })
}

/// Whether `signature` is valid for `message` under `key` by the rule in the module doc.
pub fn verify(key: &PublicKey, message: &[u8], signature: &[u8; 64]) -> bool {
    let Some(t) = terms(key, message, signature) else {
        return false;
    };
    // [S]B − [k]A − R
    let residual = EdwardsPoint::vartime_double_scalar_mul_basepoint(&t.k, &(-t.a), &t.s) - t.r;
    residual.mul_by_cofactor().is_identity()
}

/// Whether every signature of a batch is valid by the rule in the module doc, checked with one
/// equation: `true` only if each would pass [`verify`] alone (up to a chance of `2^-128`), and
/// always `true` when each does. An empty batch is valid.
pub fn verify_batch(items: &[(&PublicKey, &[u8], &[u8; 64])]) -> bool {
    let mut all = Vec::with_capacity(items.len());
    for (key, message, signature) in items {
        match terms(key, message, signature) {
            Some(t) => all.push(t),
            None => return false,
        }
    }
    if all.is_empty() {
        return true;
    }
    let zs = coefficients(items, &all);
    let mut b_coefficient = Scalar::ZERO;
    // The terms of one key are added up first: `Σ [z_i·k_i]A` over a key's signatures is one
    // point with one scalar, so a batch from one signer (a PublishBatch) multiplies about
    // half as many points. A batch holds a few keys; a hostile one of 256 different keys
    // costs 256 × 256 comparisons of 32 bytes, nothing beside the curve arithmetic.
    let mut keys: Vec<(&PublicKey, Scalar)> = Vec::new();
    let mut scalars = Vec::with_capacity(all.len() + 2);
    let mut points = Vec::with_capacity(all.len() + 2);
    for ((t, z), (key, _, _)) in all.iter().zip(&zs).zip(items) {
        b_coefficient += z * t.s;
        scalars.push(-z);
        points.push(t.r);
        let zk = z * t.k;
        match keys.iter_mut().find(|(k, _)| k.encoding == key.encoding) {
            Some((_, sum)) => *sum += zk,
            None => keys.push((key, zk)),
        }
    }
    for (key, sum) in keys {
        scalars.push(-sum);
        points.push(key.point);
    }
    scalars.push(b_coefficient);
    points.push(ED25519_BASEPOINT_POINT);
    match EdwardsPoint::optional_multiscalar_mul(scalars, points.into_iter().map(Some)) {
        Some(sum) => sum.mul_by_cofactor().is_identity(),
        None => false,
    }
}

/// One coefficient below `2^128` per signature: SHA-512 over 32 fresh random bytes and
/// everything in the batch, so they are unpredictable to whoever wrote the signatures (and, if
/// the system's random source ever failed, still bound to the whole batch). Each signature's
/// message is bound through its `k = SHA-512(R_enc || A_enc || M)`, already computed, rather
/// than hashed a second time.
fn coefficients(items: &[(&PublicKey, &[u8], &[u8; 64])], terms: &[Terms]) -> Vec<Scalar> {
    let mut seed = [0u8; 32];
    // A failed random source leaves zeros: the hash of the batch alone still binds them.
    let _ = getrandom::fill(&mut seed);
    let mut h = Sha512::new();
    h.update(b"huren-ed25519-batch-v2");
    h.update(seed);
    for ((key, _, signature), t) in items.iter().zip(terms) {
        h.update(key.encoding);
        h.update(t.k.as_bytes());
        h.update(signature);
    }
    let base = h.finalize();
    // Each block of SHA-512 output gives four coefficients of 16 bytes.
    let mut zs = Vec::with_capacity(terms.len() + 3);
    for block in 0..terms.len().div_ceil(4) {
        let mut hi = Sha512::new();
        hi.update(base);
        hi.update((block as u64).to_le_bytes());
        let d = hi.finalize();
        for part in d.chunks_exact(16) {
            let mut bytes = [0u8; 32];
            bytes[..16].copy_from_slice(part);
            zs.push(Scalar::from_bytes_mod_order(bytes));
        }
    }
    zs.truncate(terms.len());
    zs
}

/// Signatures no honest signer makes, for tests here and in [`crate::signing`].
#[cfg(test)]
pub(crate) mod testonly {
    use super::*;

    /// The secret scalar `a` and nonce prefix of an RFC 8032 key, to make signatures by hand.
    fn expanded(sk: &ed25519_dalek::SigningKey) -> (Scalar, [u8; 32]) {
        let h = Sha512::digest(sk.to_bytes());
        let mut a = [0u8; 32];
        a.copy_from_slice(&h[..32]);
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        let mut prefix = [0u8; 32];
        prefix.copy_from_slice(&h[32..]);
        (Scalar::from_bytes_mod_order(a), prefix)
    }

    /// A signature whose R is `[r]B + T` for a torsion point `T`, with S computed so that the
    /// cofactored equation holds and the cofactorless one does not: what only a key holder
    /// can make.
    pub(crate) fn mixed_order_signature(
        sk: &ed25519_dalek::SigningKey,
        message: &[u8],
        torsion: EdwardsPoint,
    ) -> [u8; 64] {
        let (a, prefix) = expanded(sk);
        let r = Scalar::from_bytes_mod_order_wide(
            &Sha512::digest([&prefix[..], message].concat()).into(),
        );
        let big_r = (ED25519_BASEPOINT_POINT * r + torsion).compress();
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::digest([big_r.as_bytes(), sk.verifying_key().as_bytes(), message].concat())
                .into(),
        );
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(big_r.as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        sig
    }
}

#[cfg(test)]
mod tests {
    use super::testonly::mixed_order_signature;
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::Signer;

    fn key(seed: u8) -> (ed25519_dalek::SigningKey, PublicKey) {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let pk = PublicKey::from_bytes(sk.verifying_key().as_bytes()).unwrap();
        (sk, pk)
    }

    #[test]
    fn honest_signatures_pass_alone_and_in_batches() {
        let (sk, pk) = key(1);
        let msgs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; usize::from(i) * 7]).collect();
        let sigs: Vec<[u8; 64]> = msgs.iter().map(|m| sk.sign(m).to_bytes()).collect();
        for (m, s) in msgs.iter().zip(&sigs) {
            assert!(verify(&pk, m, s));
        }
        let items: Vec<_> = msgs
            .iter()
            .zip(&sigs)
            .map(|(m, s)| (&pk, m.as_slice(), s))
            .collect();
        assert!(verify_batch(&items));
        assert!(verify_batch(&[]));
    }

    /// RFC 8032 section 7.1, test 2, through this rule.
    #[test]
    fn rfc8032_vector_passes() {
        let pk = PublicKey::from_bytes(
            &hex::decode("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
                .unwrap()
                .try_into()
                .unwrap(),
        )
        .unwrap();
        let sig: [u8; 64] = hex::decode(
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        )
        .unwrap()
        .try_into()
        .unwrap();
        assert!(verify(&pk, &[0x72], &sig));
        assert!(!verify(&pk, &[0x73], &sig));
    }

    /// A mixed-order R gets the same answer alone and in every batch, however often the
    /// batch's coefficients are drawn (the cofactorless batch accepted it about half the time).
    #[test]
    fn mixed_order_r_gets_one_answer_alone_and_in_batches() {
        let (sk, pk) = key(2);
        let honest = sk.sign(b"other").to_bytes();
        for (t, &torsion) in EIGHT_TORSION.iter().enumerate().skip(1) {
            let m = format!("mixed {t}").into_bytes();
            let sig = mixed_order_signature(&sk, &m, torsion);
            // The cofactorless strict check refuses it; the shared rule gives one answer.
            let vk = sk.verifying_key();
            assert!(
                vk.verify_strict(&m, &ed25519_dalek::Signature::from_bytes(&sig))
                    .is_err()
            );
            let alone = verify(&pk, &m, &sig);
            assert!(
                alone,
                "the cofactored rule accepts what only the key holder can make"
            );
            // What this rule replaced: ed25519-dalek's batch accepts such a signature (always or
            // some of the time, by its coefficients) while its verify_strict never does.
            if t == 4 {
                let signature = ed25519_dalek::Signature::from_bytes(&sig);
                let accepted = (0..64)
                    .filter(|_| ed25519_dalek::verify_batch(&[&m[..]], &[signature], &[vk]).is_ok())
                    .count();
                assert!(accepted > 0, "the dalek batch never accepted it");
            }
            for _ in 0..64 {
                assert_eq!(verify_batch(&[(&pk, &m, &sig)]), alone);
                assert_eq!(
                    verify_batch(&[(&pk, b"other", &honest), (&pk, &m, &sig)]),
                    alone
                );
            }
        }
    }

    #[test]
    fn small_order_points_and_non_canonical_encodings_are_refused() {
        let (sk, pk) = key(3);
        let m = b"message";
        let good = sk.sign(m).to_bytes();
        assert!(verify(&pk, m, &good));
        // Small-order keys.
        for t in EIGHT_TORSION {
            assert!(PublicKey::from_bytes(t.compress().as_bytes()).is_none());
        }
        // Small-order R (with any S).
        for t in EIGHT_TORSION {
            let mut sig = good;
            sig[..32].copy_from_slice(t.compress().as_bytes());
            assert!(!verify(&pk, m, &sig));
            assert!(!verify_batch(&[(&pk, m, &sig)]));
        }
        // S + ℓ: the same S modulo ℓ, not canonical.
        let s = Scalar::from_canonical_bytes(good[32..].try_into().unwrap()).unwrap();
        let mut wide = [0u8; 32];
        // ℓ = 2^252 + 27742317777372353535851937790883648493
        let l = hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
            .unwrap();
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(s.as_bytes()[i]) + u16::from(l[i]) + carry;
            wide[i] = v as u8;
            carry = v >> 8;
        }
        let mut sig = good;
        sig[32..].copy_from_slice(&wide);
        assert!(!verify(&pk, m, &sig));
        assert!(!verify_batch(&[(&pk, m, &sig)]));
        // A non-canonical R: y + p for a point whose y is small enough (y = 1 + p is the
        // identity's non-canonical form; the identity is small-order anyway). Key bytes with
        // the top bit flipped encode another x sign: a different key, and the signature fails.
        let mut flipped = *sk.verifying_key().as_bytes();
        flipped[31] ^= 0x80;
        if let Some(other) = PublicKey::from_bytes(&flipped) {
            assert!(!verify(&other, m, &good));
        }
    }

    /// The byte check of rule 2 against its definition (decode, encode again, compare; and not
    /// of small order), on every edge of y and on random encodings.
    #[test]
    fn point_decoding_agrees_with_the_round_trip() {
        fn by_definition(encoding: &[u8; 32]) -> bool {
            let compressed = CompressedEdwardsY(*encoding);
            compressed
                .decompress()
                .is_some_and(|p| p.compress() == compressed && !p.is_small_order())
        }
        // y as a little-endian 255-bit integer: p + c for c < 19 (every y from p to 2^255 − 1),
        // then p − 1 − c and small y for c < 40.
        let p_minus = |c: u8| {
            let mut e = [0xff; 32];
            e[31] = 0x7f;
            e[0] = 0xed - 1 - c;
            e
        };
        let p_plus = |c: u8| {
            let mut e = [0xff; 32];
            e[31] = 0x7f;
            e[0] = 0xed + c;
            e
        };
        let small = |c: u8| {
            let mut e = [0; 32];
            e[0] = c;
            e
        };
        let mut encodings = Vec::new();
        for c in 0..19 {
            encodings.push(p_plus(c));
        }
        for c in 0..40 {
            encodings.push(p_minus(c));
            encodings.push(small(c));
        }
        for i in 0u32..4000 {
            let d = Sha512::digest(i.to_le_bytes());
            encodings.push(d[..32].try_into().unwrap());
        }
        for i in 1u64..200 {
            let p = ED25519_BASEPOINT_POINT * Scalar::from(i);
            encodings.push(p.compress().0);
            encodings.push((-p).compress().0);
        }
        for t in curve25519_dalek::constants::EIGHT_TORSION {
            encodings.push(t.compress().0);
        }
        let with_sign: Vec<[u8; 32]> = encodings
            .iter()
            .map(|e| {
                let mut e = *e;
                e[31] ^= 0x80;
                e
            })
            .collect();
        encodings.extend(with_sign);
        let mut decoded = 0;
        for e in &encodings {
            let ours = point(e).is_some();
            assert_eq!(ours, by_definition(e), "{}", hex::encode(e));
            decoded += usize::from(ours);
        }
        // Both outcomes occur, and so do non-canonical encodings of points of large order,
        // which only the y check refuses.
        assert!(
            decoded > 1000 && decoded < encodings.len() - 1000,
            "{decoded}"
        );
        let non_canonical_large = (0..19)
            .flat_map(|c| {
                [p_plus(c), {
                    let mut e = p_plus(c);
                    e[31] |= 0x80;
                    e
                }]
            })
            .filter(|e| {
                CompressedEdwardsY(*e)
                    .decompress()
                    .is_some_and(|p| !p.is_small_order())
            })
            .count();
        assert!(non_canonical_large > 0);
    }

    /// A batch of several signers, whose terms are added up per key, passes when each
    /// signature does and fails when any one does not: a tampered one, two of one key's
    /// signatures swapped between their messages, or one under another key's name.
    #[test]
    fn batches_of_several_keys_pass_and_fail_as_their_signatures_do() {
        let signers: Vec<_> = (10..14).map(key).collect();
        let msgs: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 30 + usize::from(i)]).collect();
        let sigs: Vec<[u8; 64]> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| signers[i % 4].0.sign(m).to_bytes())
            .collect();
        let items = |sigs: &[[u8; 64]], keys: &[usize]| -> bool {
            let batch: Vec<_> = msgs
                .iter()
                .zip(sigs)
                .zip(keys)
                .map(|((m, s), k)| (&signers[*k].1, m.as_slice(), s))
                .collect();
            verify_batch(&batch)
        };
        let keys: Vec<usize> = (0..40).map(|i| i % 4).collect();
        assert!(items(&sigs, &keys));
        let mut tampered = sigs.clone();
        tampered[17][33] ^= 4;
        assert!(!items(&tampered, &keys));
        // Signatures 1 and 5 are both key 1's: swapped, each is wrong for its message.
        let mut swapped = sigs.clone();
        swapped.swap(1, 5);
        assert!(!items(&swapped, &keys));
        let mut misnamed = keys.clone();
        misnamed[6] = 3;
        assert!(!items(&sigs, &misnamed));
    }

    #[test]
    fn a_bad_signature_fails_the_batch() {
        let (sk, pk) = key(4);
        let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 10]).collect();
        let mut sigs: Vec<[u8; 64]> = msgs.iter().map(|m| sk.sign(m).to_bytes()).collect();
        sigs[5][40] ^= 1;
        let items: Vec<_> = msgs
            .iter()
            .zip(&sigs)
            .map(|(m, s)| (&pk, m.as_slice(), s))
            .collect();
        assert!(!verify_batch(&items));
        assert!(!verify(&pk, &msgs[5], &sigs[5]));
    }
}
