//! The test vectors of VERIFYING.md, in tests/vectors/huren-v1.json: pseudonyms, two signed
//! versions of a summary with their certificate chain, Ed25519 signatures the rule accepts and
//! refuses, log leaves of every kind, roots, inclusion and consistency proofs, and signed
//! checkpoints.
//!
//! The file's random inputs (a development CA, a member's signing certificate and key, the time
//! they were made) were drawn once; every other value is computed from them here with the code
//! the hub and the agents run, and the first test checks that the file says exactly that. After
//! a deliberate format change, `HUREN_WRITE_VECTORS=1 cargo test --test it vectors::` writes
//! the file anew from its own random inputs (from fresh ones when there is no file). The second test runs tests/vectors/verify.py, a verifier written in Python
//! from VERIFYING.md alone, over the file, and over a copy with one byte changed, which it must
//! refuse.

use anyhow::{Context, bail, ensure};
use base64::Engine;
use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::SigningKey;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

use huren_core::checkpoint::{Checkpoint, NoteSigner, sign_checkpoint};
use huren_core::ed25519;
use huren_core::identity::InstitutionId;
use huren_core::logentry::{
    AccessFacts, DecisionFacts, Entry, Method, Purpose, ResultRef, ShownFact, summary_leaf,
};
use huren_core::merkle::{MemoryTree, consistency_proof, inclusion_proof, leaf_hash};
use huren_core::pseudonym::{
    ALLIANCE_ID_TYPES, IdTypes, PSEUDONYM_CONTEXT, PatientId, Pseudonym, PseudonymKey,
};
use huren_core::signing::{SummarySigner, sha256, signing_message};
use huren_core::summary::{
    AbnormalFlag, Category, Item, LabResult, Outcome, ReportRef, Status, Summary, SummaryId,
    UnixMillis,
};
use huren_core::trust::AllianceCa;

use crate::harness::{cert_der, mixed_order_signature};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/huren-v1.json");
const VERIFY_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/verify.py");

/// The log's origin and the seed of its checkpoint key (a test key: never use it).
const LOG_ORIGIN: &str = "huren.example/alliance-log";
const LOG_KEY_SEED: [u8; 32] = [0x4c; 32];
/// The publisher of the vectors' summaries, named by their signing certificate.
const PUBLISHER: &str = "shx-prov-people";
/// The member that queries and decides in the log vectors.
const QUERIER: &str = "lantian-county";
/// The largest tree of the log vectors: every root, inclusion and consistency proof up to it.
const LOG_SIZE: u64 = 9;

/// The policy text of the vectors' policy leaf (a valid policy file).
const VECTOR_POLICY: &str = "version = \"2026.12-1\"\nutc_offset = \"+08:00\"\n\n[[members]]\nid = \"shx-prov-people\"\nname = \"陕西省人民医院\"\nlevel = \"tertiary\"\nregion = \"610102\"\n\n[[items]]\ncode = \"718-7\"\nname = \"血红蛋白 Hemoglobin\"\ncategory = \"lab\"\ngroup = \"haematology\"\nvalidity_days = 7\nscope = \"national\"\nprice_yuan = 5.00\n";

/// The pseudonymisation key of the vectors: bytes 0, 1, …, 31.
fn pseudonym_key_bytes() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

/// One pseudonym case: an id as typed, the local type's assigning authority as configured (for
/// a local type), and what VERIFYING.md says the HMAC input's type and value are.
struct IdCase {
    id_type: &'static str,
    id_value: &'static str,
    assigning_authority: Option<&'static str>,
    hmac_type: &'static str,
    normalised_value: &'static str,
}

const ID_CASES: &[IdCase] = &[
    IdCase {
        id_type: "cn-ric",
        id_value: "11010519491231002X",
        assigning_authority: None,
        hmac_type: "cn-ric",
        normalised_value: "11010519491231002X",
    },
    IdCase {
        id_type: " CN-RIC ",
        id_value: "１１０１０５　１９４９１２３１　００２ｘ",
        assigning_authority: None,
        hmac_type: "cn-ric",
        normalised_value: "11010519491231002X",
    },
    IdCase {
        id_type: "cn-ric",
        id_value: "110105491231002",
        assigning_authority: None,
        hmac_type: "cn-ric",
        normalised_value: "11010519491231002X",
    },
    IdCase {
        id_type: "passport",
        id_value: "e 1234-5678",
        assigning_authority: None,
        hmac_type: "passport",
        normalised_value: "E12345678",
    },
    IdCase {
        id_type: "MRN",
        id_value: "a0012345",
        assigning_authority: Some(" SHX-Prov-People "),
        hmac_type: "mrn@shx-prov-people",
        normalised_value: "A0012345",
    },
];

/// What was random when the file was written.
struct Inputs {
    ca_certificate_pem: String,
    signer_certificate_der: Vec<u8>,
    signing_key_seed: [u8; 32],
    accepted_at_ms: i64,
}

impl Inputs {
    /// A fresh development CA and a signing certificate of [`PUBLISHER`].
    fn fresh() -> anyhow::Result<Self> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let pki = huren_certs_dev::DevPki::generate()?;
        let member = pki.issue_member(&InstitutionId::parse(PUBLISHER)?)?;
        let key = SigningKey::from_pkcs8_pem(&member.signing.key_pem)
            .map_err(|e| anyhow::anyhow!("signing key: {e}"))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        Ok(Self {
            ca_certificate_pem: pki.ca_cert_pem().to_owned(),
            signer_certificate_der: cert_der(&member.signing.cert_pem)?,
            signing_key_seed: key.to_bytes(),
            // Whole minutes, so the vectors' times read easily.
            accepted_at_ms: i64::try_from(now.as_millis())? / 60_000 * 60_000,
        })
    }

    fn from_file(v: &Value) -> anyhow::Result<Self> {
        let s = &v["summary"];
        Ok(Self {
            ca_certificate_pem: text(&s["ca_certificate_pem"])?.to_owned(),
            signer_certificate_der: unhex(&s["signer_certificate_der"])?,
            signing_key_seed: unhex(&s["signing_key_seed"])?
                .try_into()
                .map_err(|_| anyhow::anyhow!("signing_key_seed is not 32 bytes"))?,
            accepted_at_ms: s["versions"][0]["accepted_at_ms"]
                .as_i64()
                .context("accepted_at_ms")?,
        })
    }
}

fn text(v: &Value) -> anyhow::Result<&str> {
    v.as_str().with_context(|| format!("not a string: {v}"))
}

fn unhex(v: &Value) -> anyhow::Result<Vec<u8>> {
    Ok(hex::decode(text(v)?)?)
}

fn hexes<T: AsRef<[u8]>>(items: &[T]) -> Vec<String> {
    items.iter().map(hex::encode).collect()
}

/// The pseudonym cases, each checked three ways: the agent's code, the HMAC of the input
/// VERIFYING.md describes, and that input built from the stated normalised parts.
fn pseudonyms() -> anyhow::Result<(Value, Pseudonym)> {
    let key_bytes = pseudonym_key_bytes();
    let mut out = Vec::new();
    let mut first = None;
    for case in ID_CASES {
        let alliance: Vec<String> = ALLIANCE_ID_TYPES.iter().map(|t| (*t).to_owned()).collect();
        let local: Vec<(String, String)> = case
            .assigning_authority
            .map(|a| (case.id_type.to_owned(), a.to_owned()))
            .into_iter()
            .collect();
        let key = PseudonymKey::new(key_bytes).with_id_types(IdTypes::new(&alliance, &local)?);
        let pseudonym = key.pseudonymise_checked(&PatientId::new(case.id_type, case.id_value)?)?;
        let mut input = PSEUDONYM_CONTEXT.to_vec();
        input.push(0);
        input.extend_from_slice(case.hmac_type.as_bytes());
        input.push(0);
        input.extend_from_slice(case.normalised_value.as_bytes());
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key_bytes)?;
        mac.update(&input);
        let independent: [u8; 32] = mac.finalize().into_bytes().into();
        ensure!(
            independent == *pseudonym.as_bytes(),
            "{:?}/{:?}: the stated HMAC input gives another pseudonym",
            case.id_type,
            case.id_value
        );
        first.get_or_insert(pseudonym);
        let mut row = json!({
            "key": hex::encode(key_bytes),
            "id_type": case.id_type,
            "id_value": case.id_value,
        });
        if let Some(a) = case.assigning_authority {
            row["assigning_authority"] = json!(a);
        }
        row["hmac_type"] = json!(case.hmac_type);
        row["normalised_value"] = json!(case.normalised_value);
        row["hmac_input"] = json!(hex::encode(&input));
        row["pseudonym"] = json!(hex::encode(pseudonym.as_bytes()));
        out.push(row);
    }
    Ok((Value::Array(out), first.context("no pseudonym cases")?))
}

/// Version 1 (FINAL) and version 2 (AMENDED) of one haemoglobin result.
fn summary_versions(patient: Pseudonym) -> anyhow::Result<[Summary; 2]> {
    // 2026-12-01 08:30 at +08:00, reported two hours later.
    let performed = 1_764_549_000_000;
    let first = Summary {
        id: SummaryId::parse("LAB-20261201-0001")?,
        version: 1,
        publisher: InstitutionId::parse(PUBLISHER)?,
        patient,
        item: Item {
            system: "http://loinc.org".into(),
            code: "718-7".into(),
            display: "血红蛋白 Hemoglobin".into(),
            local_code: "HGB".into(),
        },
        category: Category::Lab,
        performed_at: UnixMillis(performed),
        reported_at: UnixMillis(performed + 7_200_000),
        outcome: Outcome::Lab(LabResult {
            value: "132".into(),
            unit: "g/L".into(),
            reference_range: "130-175".into(),
            flag: AbnormalFlag::Normal,
            specimen: "全血 whole blood".into(),
        }),
        report: ReportRef {
            sha256: sha256("the full report's bytes".as_bytes()),
            locator: format!("huren-report:{PUBLISHER}/LAB-20261201-0001"),
            media_type: "application/pdf".into(),
        },
        status: Status::Final,
        status_reason: String::new(),
    };
    let mut second = first.clone();
    second.version = 2;
    second.status = Status::Amended;
    second.status_reason = "复核后更正 corrected after review".into();
    second.outcome = Outcome::Lab(LabResult {
        value: "134".into(),
        unit: "g/L".into(),
        reference_range: "130-175".into(),
        flag: AbnormalFlag::Normal,
        specimen: "全血 whole blood".into(),
    });
    Ok([first, second])
}

/// A summary's fields as VERIFYING.md names them (the proto's field names, enum value names).
fn fields(s: &Summary) -> Value {
    let Outcome::Lab(lab) = &s.outcome else {
        return Value::Null;
    };
    json!({
        "format": 1,
        "summary_id": s.id.as_str(),
        "version": s.version,
        "publisher": s.publisher.as_str(),
        "patient_pseudonym": hex::encode(s.patient.as_bytes()),
        "item": {
            "system": s.item.system,
            "code": s.item.code,
            "display": s.item.display,
            "local_code": s.item.local_code,
        },
        "category": "CATEGORY_LAB",
        "performed_at_ms": s.performed_at.0,
        "reported_at_ms": s.reported_at.0,
        "lab": {
            "value": lab.value,
            "unit": lab.unit,
            "reference_range": lab.reference_range,
            "flag": "ABNORMAL_FLAG_NORMAL",
            "specimen": lab.specimen,
        },
        "report": {
            "sha256": hex::encode(s.report.sha256),
            "locator": s.report.locator,
            "media_type": s.report.media_type,
        },
        "status": match s.status {
            Status::Final => "STATUS_FINAL",
            Status::Amended => "STATUS_AMENDED",
            Status::Voided => "STATUS_VOIDED",
        },
        "status_reason": s.status_reason,
    })
}

/// `a + b` for 256-bit little-endian integers whose sum fits.
fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    out
}

/// Signatures the rule accepts and refuses, each checked with [`ed25519::verify`].
fn ed25519_cases(key: &SigningKey, message: &[u8], good: &[u8; 64]) -> anyhow::Result<Value> {
    let public = key.verifying_key().to_bytes();
    let mut cases = Vec::new();
    // S + ℓ: the same equation, a second encoding of S.
    let mut s_plus_l = *good;
    let s: [u8; 32] = good[32..].try_into()?;
    s_plus_l[32..].copy_from_slice(&add_le(&s, &ELL));
    // R = [r]B + T with T of order 8: only the cofactored equation holds.
    let mixed = mixed_order_signature(key, message, 1)?;
    // R of small order and S = k·a: the cofactored equation holds for any message.
    let small_r = EIGHT_TORSION[1].compress();
    let a = clamped_secret(key);
    let k = challenge(small_r.as_bytes(), &public, message);
    let mut small_r_signature = [0u8; 64];
    small_r_signature[..32].copy_from_slice(small_r.as_bytes());
    small_r_signature[32..].copy_from_slice((k * a).as_bytes());
    // The identity as key, R the identity, S = 0: every equation holds for every message.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut identity_signature = [0u8; 64];
    identity_signature[0] = 1;
    for (case, public, signature, accepted, why) in [
        (
            "valid",
            public,
            *good,
            true,
            "version 1's signature, as its publisher made it",
        ),
        (
            "s-not-reduced",
            public,
            s_plus_l,
            false,
            "S + ℓ in place of S: S must be below ℓ",
        ),
        (
            "mixed-order-r",
            public,
            mixed,
            true,
            "R = [r]B + T, T of order 8: the cofactored equation holds, the cofactorless one does not; only the key holder can make it",
        ),
        (
            "small-order-r",
            public,
            small_r_signature,
            false,
            "R of order 8 and S = k·a: R must not be of small order",
        ),
        (
            "small-order-key",
            identity,
            identity_signature,
            false,
            "A, R the identity and S = 0 pass every equation for every message: A must not be of small order",
        ),
    ] {
        let got = ed25519::PublicKey::from_bytes(&public)
            .is_some_and(|k| ed25519::verify(&k, message, &signature));
        ensure!(got == accepted, "Ed25519 case {case}: the rule says {got}");
        cases.push(json!({
            "case": case,
            "public_key": hex::encode(public),
            "message": hex::encode(message),
            "signature": hex::encode(signature),
            "accepted": accepted,
            "why": why,
        }));
    }
    Ok(Value::Array(cases))
}

/// ℓ, the order of the base point, little-endian.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

/// The secret scalar `a` of an Ed25519 key (RFC 8032 5.1.5).
fn clamped_secret(key: &SigningKey) -> Scalar {
    let h = Sha512::digest(key.to_bytes());
    let mut a = [0u8; 32];
    a.copy_from_slice(&h[..32]);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    Scalar::from_bytes_mod_order(a)
}

/// `k = SHA-512(R || A || M)` modulo ℓ.
fn challenge(r: &[u8; 32], a: &[u8; 32], message: &[u8]) -> Scalar {
    Scalar::from_bytes_mod_order_wide(&Sha512::digest([&r[..], a, message].concat()).into())
}

/// Every vector, from the random inputs.
fn compute(inputs: &Inputs) -> anyhow::Result<Value> {
    let (pseudonyms, patient) = pseudonyms()?;
    let ca = AllianceCa::from_pem(&inputs.ca_certificate_pem)?;
    let key = SigningKey::from_bytes(&inputs.signing_key_seed);
    let signer = SummarySigner::new(key.clone(), inputs.signer_certificate_der.clone())?;
    let cert_sha256 = sha256(&inputs.signer_certificate_der);
    let day = 86_400_000;
    let mut versions = Vec::new();
    let mut summary_leaves = Vec::new();
    for (i, summary) in summary_versions(patient)?.iter().enumerate() {
        let accepted_at = UnixMillis(inputs.accepted_at_ms + day * i as i64);
        let envelope = signer.sign(summary)?;
        let certified = ca.certify_signer(&envelope.signer_certificate, accepted_at)?;
        let verified = envelope.verify_with(&certified)?;
        ensure!(
            verified.summary == *summary,
            "the body does not decode back"
        );
        let leaf = summary_leaf(
            &envelope.body,
            &envelope.signature,
            &envelope.signer_certificate,
            accepted_at,
        );
        versions.push(json!({
            "fields": fields(summary),
            "body": hex::encode(&envelope.body),
            "body_sha256": hex::encode(verified.body_sha256),
            "signing_message": hex::encode(signing_message(&envelope.body)),
            "signature": hex::encode(envelope.signature),
            "accepted_at_ms": accepted_at.0,
            "leaf": hex::encode(&leaf),
            "leaf_hash": hex::encode(leaf_hash(&leaf)),
        }));
        summary_leaves.push((leaf, envelope));
    }
    let [(first_leaf, first), (second_leaf, _)] =
        <[_; 2]>::try_from(summary_leaves).map_err(|_| anyhow::anyhow!("two versions expected"))?;
    let ed25519 = ed25519_cases(&key, &signing_message(&first.body), &first.signature)?;

    let t0 = inputs.accepted_at_ms;
    let the_result = |version| ResultRef {
        publisher: PUBLISHER.into(),
        summary_id: "LAB-20261201-0001".into(),
        version,
    };
    let decision = |at, version, adopted, reason: &str, note: &str| Entry::Decision {
        at: UnixMillis(at),
        member: QUERIER.into(),
        decision_id: format!("{QUERIER}/REQ-{at}"),
        publisher: PUBLISHER.into(),
        summary_id: "LAB-20261201-0001".into(),
        version,
        adopted,
        recognised: true,
        reason: reason.into(),
        note: note.into(),
        facts: None,
    };
    huren_core::policy_file::parse(std::path::Path::new("the vectors' policy"), VECTOR_POLICY)
        .context("the vectors' policy text is not a valid policy")?;
    let entries = [
        ("summary", first_leaf),
        (
            "access",
            Entry::Access {
                // Format 0x02 (written before format 0x03): no requester.
                requester: None,
                at: UnixMillis(t0 + 60_000),
                caller: QUERIER.into(),
                purpose: Purpose::Referral,
                method: Method::FindPrior,
                emergency_override: false,
                withheld_by_consent: false,
                pseudonym: *patient.as_bytes(),
                results: vec![the_result(1)],
                policy_version: Some("2026.11-1".into()),
                facts: None,
            }
            .encode(),
        ),
        ("decision", decision(t0 + 120_000, 1, true, "", "").encode()),
        (
            "consent",
            Entry::Consent {
                at: UnixMillis(t0 + 180_000),
                member: PUBLISHER.into(),
                pseudonym: *patient.as_bytes(),
                opted_out: true,
            }
            .encode(),
        ),
        (
            "access",
            Entry::Access {
                // Format 0x03: names who asked (what the hub writes now).
                requester: Some("staff:ER-07".into()),
                at: UnixMillis(t0 + 240_000),
                caller: QUERIER.into(),
                purpose: Purpose::Emergency,
                method: Method::History,
                emergency_override: true,
                withheld_by_consent: false,
                pseudonym: *patient.as_bytes(),
                results: vec![the_result(1)],
                policy_version: Some("2026.11-1".into()),
                facts: None,
            }
            .encode(),
        ),
        ("summary", second_leaf),
        (
            "decision",
            // Format 0x04: with the item, the price in force and the consultation.
            {
                let mut d = decision(
                    t0 + day + 60_000,
                    2,
                    false,
                    "condition-changed",
                    "病情变化 condition changed",
                );
                if let Entry::Decision { facts, .. } = &mut d {
                    *facts = Some(DecisionFacts {
                        item_system: "http://loinc.org".into(),
                        item_code: "718-7".into(),
                        price_fen: 500,
                        consulted_at: UnixMillis(t0 + day + 30_000),
                    });
                }
                d.encode()
            },
        ),
        (
            "policy",
            Entry::Policy {
                at: UnixMillis(t0 + day + 90_000),
                version: "2026.12-1".into(),
                text: VECTOR_POLICY.as_bytes().to_vec(),
            }
            .encode(),
        ),
        (
            "access",
            Entry::Access {
                // Format 0x04: the items asked for and each shown result's item and verdict.
                requester: Some("staff:LT-D0423".into()),
                at: UnixMillis(t0 + day + 120_000),
                caller: QUERIER.into(),
                purpose: Purpose::Treatment,
                method: Method::FindPrior,
                emergency_override: false,
                withheld_by_consent: false,
                pseudonym: *patient.as_bytes(),
                results: vec![the_result(2)],
                policy_version: Some("2026.12-1".into()),
                facts: Some(AccessFacts {
                    asked: vec![
                        ("http://loinc.org".into(), "718-7".into()),
                        ("http://loinc.org".into(), "2160-0".into()),
                    ],
                    shown: vec![ShownFact {
                        item_system: "http://loinc.org".into(),
                        item_code: "718-7".into(),
                        recognised: true,
                    }],
                }),
            }
            .encode(),
        ),
    ];
    ensure!(
        entries.len() as u64 == LOG_SIZE,
        "LOG_SIZE is the leaf count"
    );
    let mut tree = MemoryTree::new();
    let mut roots = vec![json!({"size": 0, "root": hex::encode(tree.root())})];
    let mut leaves = Vec::new();
    for (kind, leaf) in &entries {
        Entry::decode(leaf).with_context(|| format!("a {kind} leaf does not decode"))?;
        tree.push(leaf);
        roots.push(json!({"size": tree.size(), "root": hex::encode(tree.root())}));
        leaves.push(json!({"kind": kind, "leaf": hex::encode(leaf), "leaf_hash": hex::encode(leaf_hash(leaf))}));
    }
    let mut inclusion = Vec::new();
    let mut consistency = Vec::new();
    for size in 1..=LOG_SIZE {
        for index in 0..size {
            let proof = inclusion_proof(index, size, &tree)?;
            inclusion.push(json!({"index": index, "tree_size": size, "proof": hexes(&proof)}));
        }
        for old in 1..size {
            let proof = consistency_proof(old, size, &tree)?;
            consistency.push(json!({"old_size": old, "new_size": size, "proof": hexes(&proof)}));
        }
    }
    let log_key = NoteSigner::new(LOG_ORIGIN, SigningKey::from_bytes(&LOG_KEY_SEED))?;
    let mut checkpoints = Vec::new();
    for size in [3, LOG_SIZE] {
        let root = huren_core::merkle::root(size, &tree)?;
        let checkpoint = Checkpoint {
            origin: LOG_ORIGIN.into(),
            size,
            root,
        };
        checkpoints.push(json!({
            "size": size,
            "body": checkpoint.to_body(),
            "note": sign_checkpoint(&checkpoint, &log_key)?,
        }));
    }

    Ok(json!({
        "about": "Test vectors of VERIFYING.md (Huren format 1). Every key here is a test key: never use one. Byte strings are lower-case hex.",
        "pseudonyms": pseudonyms,
        "summary": {
            "ca_certificate_pem": inputs.ca_certificate_pem,
            "signer_certificate_der": hex::encode(&inputs.signer_certificate_der),
            "signer_certificate_sha256": hex::encode(cert_sha256),
            "institution": PUBLISHER,
            "signing_key_seed": hex::encode(inputs.signing_key_seed),
            "public_key": hex::encode(key.verifying_key().to_bytes()),
            "versions": versions,
        },
        "ed25519": ed25519,
        "log": {
            "origin": LOG_ORIGIN,
            "log_key_seed": hex::encode(LOG_KEY_SEED),
            "verifier_key": log_key.verifier_key(),
            "leaves": leaves,
            "roots": roots,
            "inclusion": inclusion,
            "consistency": consistency,
            "checkpoints": checkpoints,
        },
    }))
}

/// The first place where two JSON values differ, as a JSON pointer.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let inner = format!("{path}/{key}");
                match (x.get(key), y.get(key)) {
                    (Some(p), Some(q)) => {
                        if let Some(d) = first_difference(&inner, p, q) {
                            return Some(d);
                        }
                    }
                    _ => return Some(inner),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path} (length {} against {})", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (p, q))| first_difference(&format!("{path}/{i}"), p, q))
        }
        _ => (a != b).then(|| path.to_owned()),
    }
}

/// The file says exactly what the code computes from its inputs.
#[test]
fn vectors_match_the_code() -> anyhow::Result<()> {
    if std::env::var_os("HUREN_WRITE_VECTORS").is_some() {
        // The file's own random inputs when there is one, so only what changed changes.
        let inputs = match std::fs::read_to_string(VECTORS) {
            Ok(text) => Inputs::from_file(&serde_json::from_str(&text)?)?,
            Err(_) => Inputs::fresh()?,
        };
        let vectors = compute(&inputs)?;
        std::fs::write(VECTORS, serde_json::to_string_pretty(&vectors)? + "\n")?;
    }
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(VECTORS).with_context(|| format!("reading {VECTORS}"))?,
    )?;
    let computed = compute(&Inputs::from_file(&file)?)?;
    if let Some(at) = first_difference("", &file, &computed) {
        bail!(
            "{VECTORS} differs from what the code computes at {at}: change the code back, or after a deliberate format change rewrite the file with HUREN_WRITE_VECTORS=1 and update VERIFYING.md"
        );
    }
    Ok(())
}

/// Runs the Python verifier over `path`; its exit status and output.
fn run_python_verifier(path: &std::path::Path) -> anyhow::Result<(bool, String)> {
    let output = std::process::Command::new("python3")
        .arg(VERIFY_PY)
        .arg(path)
        .output()
        .context("running python3 (Debian: apt-get install python3 python3-cryptography)")?;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

/// A verifier written from VERIFYING.md alone, in another language, agrees with every vector,
/// and refuses the file once one byte of the summary's body is changed.
#[test]
fn python_verifier_written_from_the_text_agrees() -> anyhow::Result<()> {
    let (ok, output) = run_python_verifier(std::path::Path::new(VECTORS))?;
    ensure!(ok, "verify.py refused the vectors:\n{output}");
    ensure!(output.contains("all vectors verified"), "{output}");

    // The last byte of version 1's body changed (and the signed message with it, so that the
    // signature is what must catch it): the status, FINAL, becomes AMENDED.
    let mut file: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS)?)?;
    let version = &mut file["summary"]["versions"][0];
    let mut bytes = unhex(&version["body"])?;
    let last = bytes.last_mut().context("empty body")?;
    *last ^= 0x03;
    version["body"] = json!(hex::encode(&bytes));
    version["signing_message"] = json!(hex::encode(signing_message(&bytes)));
    let dir = tempfile::tempdir()?;
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, serde_json::to_string(&file)?)?;
    let (ok, output) = run_python_verifier(&tampered)?;
    ensure!(!ok, "verify.py accepted a changed body:\n{output}");
    ensure!(
        output.contains("FAILED: version 1: the signature does not verify"),
        "{output}"
    );
    Ok(())
}

#[test]
fn base64_of_the_verifier_key_may_hold_a_plus() -> anyhow::Result<()> {
    // VERIFYING.md tells to split a verifier key at its first two '+' only; the vectors' key
    // is one whose base64 holds a '+' past them, so a verifier splitting at every '+' fails.
    let key = NoteSigner::new(LOG_ORIGIN, SigningKey::from_bytes(&LOG_KEY_SEED))?.verifier_key();
    let b64 = key.splitn(3, '+').nth(2).context("three parts")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64)?;
    ensure!(raw.len() == 33 && raw[0] == 1, "{key}");
    if !b64.contains('+') {
        bail!("the vectors' log key {key} has no '+' in its base64: choose a seed whose key does");
    }
    Ok(())
}
