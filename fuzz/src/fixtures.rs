//! The fixed keys and files the targets use, built once per process.
//!
//! Keys are the test keys of tests/vectors/huren-v1.json (a development CA, a member's signing
//! key and certificate, the log key): the committed seeds in fuzz/corpus/ are signed with them,
//! so they stay valid on every machine. Every key here is a test key.

use std::path::Path;
use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use serde_json::Value;

use huren_agent::ingest::IngestSettings;
use huren_agent::mapping::Mapping;
use huren_core::checkpoint::{NoteSigner, NoteVerifier};
use huren_core::cosignature::{Cosigner, CosignerKey};
use huren_core::identity::InstitutionId;
use huren_core::pseudonym::PseudonymKey;
use huren_core::signing::SummarySigner;
use huren_core::summary::UnixMillis;
use huren_core::trust::AllianceCa;

const VECTORS: &str = include_str!("../../tests/vectors/huren-v1.json");
/// The example mapping of the tertiary hospital (its lab and imaging codes).
pub const MAPPING: &str = include_str!("../../node-agent/examples/mapping-shx-prov-people.toml");

/// Everything the targets verify or sign with.
pub struct Fixtures {
    pub ca: AllianceCa,
    pub signer: SummarySigner,
    pub publisher: InstitutionId,
    /// A time inside the signing certificate's validity (the vectors' acceptance time).
    pub at: UnixMillis,
    pub log: NoteSigner,
    pub log_verifier: NoteVerifier,
    pub origin: String,
    pub witness: Cosigner,
    pub witness_key: CosignerKey,
    pub pseudonym_key: PseudonymKey,
    pub mapping: Mapping,
    pub settings: IngestSettings,
}

fn seed(v: &Value) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(v.as_str().unwrap_or_default(), &mut out)
        .unwrap_or_else(|_| panic!("a 32-byte hex seed in the vectors"));
    out
}

fn build() -> Fixtures {
    #![allow(clippy::expect_used)]
    let v: Value = serde_json::from_str(VECTORS).expect("tests/vectors/huren-v1.json reads");
    let s = &v["summary"];
    let ca = AllianceCa::from_pem(s["ca_certificate_pem"].as_str().unwrap_or_default())
        .expect("the vectors' CA");
    let cert = hex::decode(s["signer_certificate_der"].as_str().unwrap_or_default())
        .expect("the vectors' signer certificate");
    let signer = SummarySigner::new(SigningKey::from_bytes(&seed(&s["signing_key_seed"])), cert)
        .expect("the vectors' signer");
    let publisher = signer.institution().clone();
    let at = UnixMillis(
        s["versions"][0]["accepted_at_ms"]
            .as_i64()
            .expect("an acceptance time"),
    );
    let origin = v["log"]["origin"].as_str().unwrap_or_default().to_owned();
    let log = NoteSigner::new(
        origin.clone(),
        SigningKey::from_bytes(&seed(&v["log"]["log_key_seed"])),
    )
    .expect("the log key");
    let log_verifier = log.verifier();
    let witness = Cosigner::new("witness.example/fuzz", SigningKey::from_bytes(&[0x57; 32]))
        .expect("the witness key");
    let witness_key = witness.verifier();
    let mapping = Mapping::parse(MAPPING, Path::new("mapping-shx-prov-people.toml"))
        .expect("the example mapping");
    Fixtures {
        ca,
        signer,
        publisher,
        at,
        log,
        log_verifier,
        origin,
        witness,
        witness_key,
        pseudonym_key: PseudonymKey::new([5; 32]),
        mapping,
        settings: IngestSettings::default(),
    }
}

/// The fixtures, built on first use.
pub fn get() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(build)
}
