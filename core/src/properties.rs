//! Property tests: round trips and invariants checked over generated inputs, beside the
//! example-based tests of each module.

use proptest::prelude::*;

use crate::identity::InstitutionId;
use crate::merkle::{
    self, MemoryTree, consistency_proof, inclusion_proof, verify_consistency, verify_inclusion,
};
use crate::pseudonym::{PatientId, Pseudonym, PseudonymKey};
use crate::rules::RetestReason;
use crate::stats::{ConsultationKey, Event, EventKind, GroupBy, Row, aggregate};
use crate::summary::{
    AbnormalFlag, Category, ExamResult, Item, LabResult, MAX_TIME_MS, Outcome, ReportRef, Status,
    Summary, SummaryId, UnixMillis,
};

/// Text a summary accepts: empty, or starting with a non-space character, with letters,
/// digits, CJK characters, spaces and punctuation, no control characters.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9\u{4e00}-\u{9fa5}][A-Za-z0-9 \u{4e00}-\u{9fa5}.,:/()%<>=+-]{0,30}",
    ]
    .boxed()
}

/// A code: no white space.
fn code() -> BoxedStrategy<String> {
    "[A-Za-z0-9][A-Za-z0-9:/._-]{0,20}".boxed()
}

const FLAGS: [AbnormalFlag; 7] = [
    AbnormalFlag::Unspecified,
    AbnormalFlag::Normal,
    AbnormalFlag::Low,
    AbnormalFlag::High,
    AbnormalFlag::CriticalLow,
    AbnormalFlag::CriticalHigh,
    AbnormalFlag::Abnormal,
];

prop_compose! {
    fn item()(system in code(), code in code(), display in text(), local_code in text()) -> Item {
        Item { system, code, display, local_code }
    }
}

prop_compose! {
    fn lab()(
        value in "[A-Za-z0-9<>.\u{4e00}-\u{9fa5}][A-Za-z0-9 <>.\u{4e00}-\u{9fa5}]{0,20}",
        unit in text(),
        reference_range in text(),
        flag in 0usize..7,
        specimen in text(),
    ) -> (Category, Outcome) {
        (Category::Lab, Outcome::Lab(LabResult { value, unit, reference_range, flag: FLAGS[flag], specimen }))
    }
}

prop_compose! {
    fn exam()(
        kind in 0usize..3,
        modality in "[A-Z]{1,8}",
        body_site in text(),
        impression in prop_oneof![Just(String::new()), "[A-Za-z\u{4e00}-\u{9fa5}][A-Za-z \n\t\u{4e00}-\u{9fa5}]{0,60}"],
        study_uid in prop_oneof![Just(String::new()), "[0-9][0-9.]{0,40}"],
    ) -> (Category, Outcome) {
        let category = [Category::Imaging, Category::Electrophysiology, Category::NuclearMedicine][kind];
        (category, Outcome::Exam(ExamResult { modality, body_site, impression, study_uid }))
    }
}

prop_compose! {
    fn report()(sha256 in any::<[u8; 32]>(), locator in "[a-z][a-z0-9:/._-]{0,60}", media_type in text()) -> ReportRef {
        ReportRef { sha256, locator, media_type }
    }
}

prop_compose! {
    fn summary()(
        id in "[A-Za-z0-9][A-Za-z0-9._:-]{0,40}",
        (version, voided) in (1u32..6, any::<bool>()),
        publisher in "[a-z0-9][a-z0-9._-]{0,30}",
        patient in any::<[u8; 32]>(),
        item in item(),
        (category, outcome) in prop_oneof![lab(), exam()],
        (performed, delay) in (1i64..(MAX_TIME_MS - 10_000_000_000), 0i64..10_000_000_000),
        report in report(),
        reason in "[A-Za-z\u{4e00}-\u{9fa5}][A-Za-z \u{4e00}-\u{9fa5}]{0,30}",
    ) -> Summary {
        let status = match (version, voided) {
            (1, _) => Status::Final,
            (_, true) => Status::Voided,
            (_, false) => Status::Amended,
        };
        Summary {
            id: SummaryId::parse(&id).expect("the pattern gives valid ids"),
            version,
            publisher: InstitutionId::parse(&publisher).expect("the pattern gives valid ids"),
            patient: Pseudonym::from_bytes(patient),
            item,
            category,
            performed_at: UnixMillis(performed),
            reported_at: UnixMillis(performed + delay),
            outcome,
            report,
            status_reason: if status == Status::Final { String::new() } else { reason },
            status,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every valid summary round-trips through its bytes, and its bytes are the only ones
    /// that decode to it: a body with any one byte changed either is refused or decodes to a
    /// summary whose canonical bytes are exactly the changed ones.
    #[test]
    fn canonical_form_round_trips_and_is_unique(s in summary(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let bytes = s.to_body_bytes();
        let decoded = Summary::from_body_bytes(&bytes).expect("a valid summary decodes");
        prop_assert_eq!(&decoded, &s);
        prop_assert_eq!(decoded.to_body_bytes(), bytes.clone());
        let mut changed = bytes.clone();
        let i = at.index(changed.len());
        changed[i] ^= xor;
        if let Ok(other) = Summary::from_body_bytes(&changed) {
            prop_assert_eq!(other.to_body_bytes(), changed);
        }
    }
}

/// The 18-character resident identity card number of 17 digits (check character computed).
fn ric(first17: &str) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17
        .bytes()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    format!("{first17}{}", b"10X98765432"[(sum % 11) as usize] as char)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// One person typed any of the ways a registration desk does (spaces and hyphens between
    /// characters, full-width digits, a lower-case x) gets one pseudonym.
    #[test]
    fn spellings_of_one_id_get_one_pseudonym(
        first17 in "[1-6][0-9]{16}",
        marks in proptest::collection::vec((0usize..4, any::<bool>()), 18),
    ) {
        let key = PseudonymKey::new([3; 32]);
        let canonical = ric(&first17);
        let mut typed = String::new();
        for (c, (mark, wide)) in canonical.chars().zip(&marks) {
            match mark {
                1 => typed.push(' '),
                2 => typed.push('-'),
                3 => typed.push('\u{3000}'),
                _ => {}
            }
            let c = if c == 'X' && *wide { 'x' } else { c };
            if *wide && c.is_ascii_digit() {
                typed.push(char::from_u32(c as u32 + 0xFEE0).expect("a full-width digit"));
            } else {
                typed.push(c);
            }
        }
        let a = key.pseudonymise(&PatientId::new("cn-ric", &canonical).expect("a valid number"));
        let b = key.pseudonymise(&PatientId::new(" CN-RIC", &typed).expect("the same number"));
        prop_assert_eq!(a, b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any id of a non-RIC type (passport, local numbers), typed in either case, with spaces,
    /// hyphens and full-width characters, gets one pseudonym; a different id another.
    #[test]
    fn any_id_typed_any_way_gets_one_pseudonym_and_another_id_another(
        value in "[A-Z0-9]{1,40}",
        other in "[A-Z0-9]{1,40}",
        marks in proptest::collection::vec((0usize..4, any::<bool>(), any::<bool>()), 40),
    ) {
        let key = PseudonymKey::new([9; 32]);
        let mut typed = String::new();
        for (c, (mark, wide, lower)) in value.chars().zip(&marks) {
            match mark {
                1 => typed.push(' '),
                2 => typed.push('-'),
                3 => typed.push('\u{3000}'),
                _ => {}
            }
            let c = if *lower { c.to_ascii_lowercase() } else { c };
            if *wide {
                typed.push(char::from_u32(c as u32 + 0xFEE0).expect("a full-width form"));
            } else {
                typed.push(c);
            }
        }
        let a = key.pseudonymise(&PatientId::new("passport", &value).expect("a valid id"));
        let b = key.pseudonymise(&PatientId::new(" Passport ", &typed).expect("the same id"));
        prop_assert_eq!(a, b);
        let c = key.pseudonymise(&PatientId::new("passport", &other).expect("a valid id"));
        prop_assert_eq!(a == c, value == other);
        // The type is part of the input: the same value under another type is another person.
        let d = key.pseudonymise(&PatientId::new("hospital-card", &value).expect("a valid id"));
        prop_assert_ne!(a, d);
    }
}

/// A tree of 5,000 leaves built once for the Merkle properties.
fn tree() -> &'static MemoryTree {
    static TREE: std::sync::OnceLock<MemoryTree> = std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        let mut t = MemoryTree::new();
        for i in 0..5_000u32 {
            t.push(&i.to_be_bytes());
        }
        t
    })
}

/// Every leaf of every tree up to 200 leaves is proven in it, and every smaller tree is
/// proven a prefix of it.
#[test]
fn every_inclusion_and_consistency_proof_up_to_200_leaves_verifies() {
    let t = tree();
    for size in 1..=200u64 {
        let root = merkle::root(size, t).unwrap();
        for index in 0..size {
            let proof = inclusion_proof(index, size, t).unwrap();
            let leaf = merkle::leaf_hash(&(index as u32).to_be_bytes());
            verify_inclusion(&leaf, index, size, &proof, &root)
                .unwrap_or_else(|e| panic!("leaf {index} of {size}: {e}"));
        }
        for old in 0..=size {
            let old_root = merkle::root(old, t).unwrap();
            let proof = consistency_proof(old, size, t).unwrap();
            verify_consistency(old, size, &old_root, &root, &proof)
                .unwrap_or_else(|e| panic!("{old} to {size}: {e}"));
        }
    }
}

/// Largest tree whose every (index, size) pair is proven exhaustively (about 2.1 million
/// proofs), and whose every (old, new) pair of sizes is proven consistent (about 2.1 million).
const EXHAUSTIVE_LEAVES: u64 = 2_048;

/// Every leaf of every tree up to [`EXHAUSTIVE_LEAVES`] is proven in it: each (index, size)
/// pair, with the proof the tree gives.
#[test]
fn every_inclusion_proof_up_to_2048_leaves_verifies() {
    let t = tree();
    let leaves: Vec<_> = (0..EXHAUSTIVE_LEAVES)
        .map(|i| merkle::leaf_hash(&(i as u32).to_be_bytes()))
        .collect();
    let mut checked = 0u64;
    for size in 1..=EXHAUSTIVE_LEAVES {
        let root = merkle::root(size, t).unwrap();
        for index in 0..size {
            let proof = inclusion_proof(index, size, t).unwrap();
            verify_inclusion(&leaves[index as usize], index, size, &proof, &root)
                .unwrap_or_else(|e| panic!("leaf {index} of {size}: {e}"));
            checked += 1;
        }
    }
    assert_eq!(checked, EXHAUSTIVE_LEAVES * (EXHAUSTIVE_LEAVES + 1) / 2);
}

/// Every tree up to [`EXHAUSTIVE_LEAVES`] is proven a prefix of every larger one up to it.
#[test]
fn every_consistency_proof_up_to_2048_leaves_verifies() {
    let t = tree();
    let roots: Vec<_> = (0..=EXHAUSTIVE_LEAVES)
        .map(|n| merkle::root(n, t).unwrap())
        .collect();
    for new in 0..=EXHAUSTIVE_LEAVES {
        for old in 0..=new {
            let proof = consistency_proof(old, new, t).unwrap();
            verify_consistency(old, new, &roots[old as usize], &roots[new as usize], &proof)
                .unwrap_or_else(|e| panic!("{old} to {new}: {e}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Inclusion proofs in trees up to 5,000 leaves verify, and fail for another leaf, index
    /// or root, or with any one proof hash changed.
    #[test]
    fn inclusion_proofs_verify_and_nothing_else_does(size in 1u64..=5_000, at in any::<prop::sample::Index>(), bit in 0usize..256, which in any::<prop::sample::Index>()) {
        let t = tree();
        let index = at.index(size as usize) as u64;
        let root = merkle::root(size, t).unwrap();
        let proof = inclusion_proof(index, size, t).unwrap();
        let leaf = merkle::leaf_hash(&(index as u32).to_be_bytes());
        prop_assert!(verify_inclusion(&leaf, index, size, &proof, &root).is_ok());
        let other = merkle::leaf_hash(&(index as u32 + 1).to_be_bytes());
        prop_assert!(verify_inclusion(&other, index, size, &proof, &root).is_err());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let k = which.index(bad.len());
            bad[k][bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify_inclusion(&leaf, index, size, &bad, &root).is_err());
        }
        if size > 1 {
            let moved = (index + 1) % size;
            prop_assert!(verify_inclusion(&leaf, moved, size, &proof, &root).is_err());
        }
    }

    /// Any tree up to 5,000 leaves is proven a prefix of any larger one, and not of a tree
    /// with another root.
    #[test]
    fn consistency_proofs_verify_between_any_two_sizes(a in 0u64..=5_000, b in 0u64..=5_000) {
        let t = tree();
        let (old, new) = (a.min(b), a.max(b));
        let (old_root, new_root) = (merkle::root(old, t).unwrap(), merkle::root(new, t).unwrap());
        let proof = consistency_proof(old, new, t).unwrap();
        prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof).is_ok());
        if old > 0 && old < new {
            let wrong = merkle::root(new - 1, t).unwrap();
            prop_assert!(verify_consistency(old, new, &old_root, &wrong, &proof).is_err());
        }
    }
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(found, cross_member)| EventKind::Query {
            found,
            cross_member
        }),
        (
            any::<bool>(),
            0usize..RetestReason::ALL.len(),
            proptest::option::of((0u8..3, 0i64..3))
        )
            .prop_map(|(adopted, r, consulted)| EventKind::Decision {
                adopted,
                reason: (!adopted).then(|| RetestReason::ALL[r]),
                consultation: consulted.map(|(result, hour)| ConsultationKey {
                    publisher: "tertiary".into(),
                    summary_id: format!("R{result}"),
                    consulted_at: UnixMillis(1_795_393_800_000 + hour * 3_600_000),
                }),
            }),
    ]
}

prop_compose! {
    fn event()(member in 0usize..3, code in 0usize..3, hours in 0i64..96, price in 0u64..2_000, kind in event_kind()) -> Event {
        Event {
            at: UnixMillis(1_795_393_800_000 + hours * 3_600_000),
            member: InstitutionId::parse(["county", "township", "tertiary"][member]).expect("valid"),
            item_system: "http://loinc.org".into(),
            item_code: ["718-7", "2345-7", "24627-2"][code].into(),
            price_fen: price,
            kind,
        }
    }
}

/// The figures of a row that add up.
fn figures(r: &Row) -> [u64; 7] {
    [
        r.queries,
        r.found,
        r.cross_member,
        r.adopted,
        r.retested,
        r.tests_avoided,
        r.money_saved_fen,
    ]
}

fn add(a: [u64; 7], b: [u64; 7]) -> [u64; 7] {
    std::array::from_fn(|i| a[i] + b[i])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Statistics add up: the alliance's total is the sum of each member's totals (computed
    /// from that member's events alone), and under every grouping the rows sum to the total.
    #[test]
    fn statistics_are_additive_over_members_and_rows(events in proptest::collection::vec(event(), 0..120)) {
        let (_, total) = aggregate(&events, GroupBy::Member, 8 * 3600);
        let mut by_member = [0; 7];
        for m in ["county", "township", "tertiary"] {
            let own: Vec<&Event> = events.iter().filter(|e| e.member.as_str() == m).collect();
            let (_, t) = aggregate(own, GroupBy::Item, 8 * 3600);
            by_member = add(by_member, figures(&t));
        }
        prop_assert_eq!(by_member, figures(&total));
        for by in [GroupBy::Item, GroupBy::Member, GroupBy::Day, GroupBy::Month] {
            let (rows, t) = aggregate(&events, by, 8 * 3600);
            let sum = rows.iter().fold([0; 7], |acc, r| add(acc, figures(r)));
            prop_assert_eq!(sum, figures(&t));
        }
    }
}

/// One signature of a generated batch: which of four keys signs, the message, and what is
/// done to the signature afterwards (nothing, a bit flipped, or another key named).
#[derive(Clone, Debug)]
struct Signed {
    key: usize,
    message: Vec<u8>,
    flip: Option<usize>,
    named: Option<usize>,
}

prop_compose! {
    fn signed()(
        key in 0usize..4,
        message in proptest::collection::vec(any::<u8>(), 0..200),
        flip in proptest::option::weighted(0.1, 0usize..512),
        named in proptest::option::weighted(0.05, 0usize..4),
    ) -> Signed {
        Signed { key, message, flip, named }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A batch equation, which adds up each key's terms, accepts exactly when every signature
    /// passes alone: batches of up to four keys, some signatures tampered with or put under
    /// another key.
    #[test]
    fn a_batch_passes_exactly_when_each_signature_does(batch in proptest::collection::vec(signed(), 1..24)) {
        use crate::ed25519::{PublicKey, verify, verify_batch};
        use ed25519_dalek::Signer;
        let keys: Vec<_> = (0..4u8)
            .map(|i| ed25519_dalek::SigningKey::from_bytes(&[i + 40; 32]))
            .collect();
        let public: Vec<PublicKey> = keys
            .iter()
            .map(|k| PublicKey::from_bytes(k.verifying_key().as_bytes()).unwrap())
            .collect();
        let signatures: Vec<[u8; 64]> = batch
            .iter()
            .map(|s| {
                let mut sig = keys[s.key].sign(&s.message).to_bytes();
                if let Some(bit) = s.flip {
                    sig[bit / 8] ^= 1 << (bit % 8);
                }
                sig
            })
            .collect();
        let items: Vec<(&PublicKey, &[u8], &[u8; 64])> = batch
            .iter()
            .zip(&signatures)
            .map(|(s, sig)| (&public[s.named.unwrap_or(s.key)], s.message.as_slice(), sig))
            .collect();
        let each = items.iter().all(|(k, m, s)| verify(k, m, s));
        prop_assert_eq!(verify_batch(&items), each);
    }
}
