//! The targets' bodies. Each takes any bytes; refusing them is fine, panicking is a bug, and so
//! is an accepted input that breaks an invariant (the `assert!`s below).

use std::path::Path;

use huren_agent::ingest::{self, hl7};
use huren_agent::{proof_file, results, store};
use huren_core::checkpoint::{Checkpoint, NoteVerifier, open, open_checkpoint, sign_checkpoint};
use huren_core::cosignature::{AddCheckpoint, CosignerKey, add_signature_lines, cosigned_by};
use huren_core::logentry::{Entry, LogProof, verify_leaf};
use huren_core::merkle::{
    Hash, MemoryTree, consistency_proof, inclusion_proof, verify_consistency, verify_inclusion,
};
use huren_core::signing::SignedEnvelope;
use huren_core::summary::Summary;
use huren_hub::grpc::requests::{self, Checked};

use crate::fixtures;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by name (the name is the corpus folder `fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("hub_request", hub_request),
    ("summary", summary),
    ("envelope", envelope),
    ("checkpoint", checkpoint),
    ("merkle", merkle),
    ("log_leaf", log_leaf),
    ("hl7", hl7_file),
    ("fhir", fhir_file),
    ("policy", policy),
    ("results", results_file),
    ("outbox_record", outbox_record),
    ("proof_file", proof_file_text),
];

/// The target named `name`.
pub fn by_name(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// A hub request: the first byte picks the RPC (of `requests::METHODS`), the rest is the
/// request's protobuf bytes; decoded and checked as the gRPC edge does, then every envelope
/// it carries is verified as the service does (certificate, signature, body).
pub fn hub_request(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let method = requests::METHODS[usize::from(which) % requests::METHODS.len()];
    if let Ok(Checked::Envelopes(envelopes)) = requests::check_encoded(method, bytes, 100) {
        let f = fixtures::get();
        for e in envelopes.iter().take(8) {
            let _ = e.verify(&f.ca, f.at);
        }
    }
}

/// Summary body bytes: accepted only in canonical form (re-encoding gives the same bytes);
/// an accepted body of the fixtures' publisher, once signed, verifies.
pub fn summary(data: &[u8]) {
    let Ok(s) = Summary::from_body_bytes(data) else {
        return;
    };
    assert_eq!(
        s.to_body_bytes(),
        data,
        "an accepted body is its own canonical form"
    );
    let f = fixtures::get();
    if s.publisher == f.publisher {
        let signed = f.signer.sign(&s).unwrap_or_else(|e| panic!("signing: {e}"));
        assert_eq!(signed.body, data);
        if let Err(e) = signed.verify(&f.ca, f.at) {
            panic!("a signed valid body must verify: {e}");
        }
    }
}

/// A `SignedSummary` message (as the agent's outbox keeps it and the hub receives it), checked
/// against the CA: certificate chain and institution, signature, then the body.
pub fn envelope(data: &[u8]) {
    let Ok(e) = SignedEnvelope::from_bytes(data) else {
        return;
    };
    let f = fixtures::get();
    if let Ok(v) = e.verify(&f.ca, f.at) {
        assert_eq!(v.summary.to_body_bytes(), e.body);
    }
}

/// Checkpoints and signed notes, cosignature lines and witness requests, and verifier keys.
/// The text is opened as a note with the log's key (and checked for the witness's
/// cosignature); parsed as a checkpoint body, which is then signed and cosigned and must open
/// to the same checkpoint; parsed as an `add-checkpoint` body and as verifier keys.
pub fn checkpoint(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixtures::get();
    let _ = open(text, &f.log_verifier);
    let _ = open_checkpoint(text, &f.log_verifier, &f.origin);
    let _ = cosigned_by(text, std::slice::from_ref(&f.witness_key));
    let _ = NoteVerifier::parse(text.trim_end());
    let _ = CosignerKey::parse(text.trim_end());
    if let Ok(add) = AddCheckpoint::parse(text) {
        assert_eq!(
            AddCheckpoint::parse(&add.to_body()).as_ref(),
            Ok(&add),
            "an add-checkpoint body reads back"
        );
        let _ = open_checkpoint(&add.checkpoint, &f.log_verifier, &f.origin);
    }
    if let Some((note, response)) = text.split_once("\n\n\n") {
        let _ = add_signature_lines(note, response);
    }
    if let Ok(c) = Checkpoint::parse(text) {
        let c = Checkpoint {
            origin: f.origin.clone(),
            ..c
        };
        let Ok(note) = sign_checkpoint(&c, &f.log) else {
            return;
        };
        let opened = open_checkpoint(&note, &f.log_verifier, &f.origin)
            .unwrap_or_else(|e| panic!("a checkpoint we signed must open: {e}"));
        assert_eq!(opened, c);
        let line = f
            .witness
            .cosign(&c.to_body(), 1)
            .unwrap_or_else(|e| panic!("cosigning: {e}"));
        let cosigned = add_signature_lines(&note, &line)
            .unwrap_or_else(|e| panic!("adding a cosignature: {e}"));
        let by = cosigned_by(&cosigned, std::slice::from_ref(&f.witness_key))
            .unwrap_or_else(|e| panic!("a note we cosigned must read: {e}"));
        assert_eq!(by.len(), 1, "the witness's cosignature is found");
    }
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in data.iter().skip(at).take(8).enumerate() {
        b[i] = *x;
    }
    u64::from_be_bytes(b)
}

fn hashes(data: &[u8]) -> Vec<Hash> {
    data.chunks_exact(32)
        .take(70)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect()
}

/// Inclusion and consistency proof checking. Arbitrary indexes, sizes, roots and proofs
/// (from the bytes) must be refused without a panic; and in a real tree of up to 256 leaves,
/// the proofs the tree gives verify, and the same proofs with one bit flipped do not.
pub fn merkle(data: &[u8]) {
    // Arbitrary values: index/old size, size, then hashes (root, old root, proof).
    let (a, b) = (u64_at(data, 0), u64_at(data, 8));
    let rest = hashes(data.get(16..).unwrap_or_default());
    if let [leaf, root, proof @ ..] = rest.as_slice() {
        let _ = verify_inclusion(leaf, a, b, proof, root);
        let _ = verify_consistency(a, b, leaf, root, proof);
        let _ = verify_consistency(a % 300, b % 300, leaf, root, proof);
        let _ = verify_inclusion(leaf, a % 300, b % 300, proof, root);
    }
    // A real tree.
    let [n, i, j, flip @ ..] = data else {
        return;
    };
    let size = u64::from(*n) + 1;
    let mut tree = MemoryTree::new();
    for k in 0..size {
        tree.push(&k.to_be_bytes());
    }
    let (index, old) = (u64::from(*i) % size, u64::from(*j) % (size + 1));
    let leaf = huren_core::merkle::leaf_hash(&index.to_be_bytes());
    let root = tree.root();
    let mut proof =
        inclusion_proof(index, size, &tree).unwrap_or_else(|e| panic!("inclusion proof: {e:?}"));
    if let Err(e) = verify_inclusion(&leaf, index, size, &proof, &root) {
        panic!("a true inclusion proof ({index}, {size}) must verify: {e}");
    }
    let mut old_tree = MemoryTree::new();
    for k in 0..old {
        old_tree.push(&k.to_be_bytes());
    }
    let old_root = old_tree.root();
    let mut cproof =
        consistency_proof(old, size, &tree).unwrap_or_else(|e| panic!("consistency proof: {e:?}"));
    if let Err(e) = verify_consistency(old, size, &old_root, &root, &cproof) {
        panic!("a true consistency proof ({old}, {size}) must verify: {e}");
    }
    // One bit flipped in a proof hash: refused.
    if let [at, bit, ..] = flip {
        if !proof.is_empty() {
            let k = usize::from(*at) % proof.len();
            proof[k][usize::from(*bit) % 32] ^= 1 << (bit % 8);
            assert!(
                verify_inclusion(&leaf, index, size, &proof, &root).is_err(),
                "a changed inclusion proof must be refused"
            );
        }
        if !cproof.is_empty() {
            let k = usize::from(*at) % cproof.len();
            cproof[k][usize::from(*bit) % 32] ^= 1 << (bit % 8);
            assert!(
                verify_consistency(old, size, &old_root, &root, &cproof).is_err(),
                "a changed consistency proof must be refused"
            );
        }
    }
}

/// A log leaf as the agents and auditors read it: decoded, re-encoded in the current format
/// and decoded to the same entry; checked against a checkpoint for a log of that one leaf.
pub fn log_leaf(data: &[u8]) {
    let f = fixtures::get();
    if let Ok(e) = Entry::decode(data) {
        let again = e.encode();
        assert_eq!(
            Entry::decode(&again).as_ref(),
            Ok(&e),
            "an entry reads back from its encoding"
        );
        let _ = e.leaf_hash();
    }
    let mut tree = MemoryTree::new();
    tree.push(data);
    let c = Checkpoint {
        origin: f.origin.clone(),
        size: 1,
        root: tree.root(),
    };
    let Ok(note) = sign_checkpoint(&c, &f.log) else {
        return;
    };
    let proof = LogProof {
        index: 0,
        tree_size: 1,
        proof: vec![],
        checkpoint: note,
    };
    if let Err(e) = verify_leaf(&f.log_verifier, data, &proof) {
        panic!("a leaf in its own one-leaf log must verify: {e}");
    }
}

/// An inbox file as HL7 v2: framing (MLLP, batches), character sets, delimiters, escapes and
/// ORU^R01 reading; the character set setting is picked by the length.
pub fn hl7_file(data: &[u8]) {
    let f = fixtures::get();
    let mut settings = f.settings;
    settings.charset = match data.len() % 3 {
        0 => hl7::CharsetSetting::Auto,
        1 => hl7::CharsetSetting::Utf8,
        _ => hl7::CharsetSetting::Gb18030,
    };
    let _ = hl7::incomplete(data);
    if let Ok(messages) = hl7::split_messages(data) {
        for m in messages.iter().take(4) {
            if let Ok((text, charset)) = hl7::decode(m, settings.charset) {
                let _ = hl7::Message::parse(&text, charset);
            }
        }
    }
    let _ = ingest::parse_file(data, &f.mapping, &settings);
}

/// An inbox file as FHIR R4 JSON (Bundle, DiagnosticReport, Observation, ImagingStudy).
pub fn fhir_file(data: &[u8]) {
    let f = fixtures::get();
    let _ = ingest::incomplete(data);
    let _ = ingest::fhir::holds_several_patients("application/fhir+json", data);
    let _ = ingest::fhir::read_fhir(data, &f.mapping, &f.settings);
    let _ = ingest::parse_file(data, &f.mapping, &f.settings);
}

/// The hub's policy file (TOML).
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = huren_hub::policy::parse(Path::new("policy.toml"), text);
}

/// A `huren-results/1` JSON file; a report named by `report.file` reads as fixed bytes.
pub fn results_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixtures::get();
    let read = |_: &str| Ok(b"report".to_vec());
    if let Ok(summaries) = results::parse_results(
        text,
        Path::new("results.json"),
        &f.publisher,
        &f.pseudonym_key,
        &read,
    ) {
        for s in summaries.iter().take(4) {
            let bytes = s.to_body_bytes();
            assert!(
                Summary::from_body_bytes(&bytes).is_ok(),
                "a summary made from a results file is valid"
            );
        }
    }
}

/// An agent outbox record: the first 8 bytes are the key, the rest the stored record.
pub fn outbox_record(data: &[u8]) {
    let (key, value) = data.split_at(data.len().min(8));
    if let Ok(p) = store::read_outbox_record(key, value) {
        let f = fixtures::get();
        let _ = p.envelope.verify(&f.ca, f.at);
    }
}

/// A `huren-proof/1` file, checked offline against the CA, the log key and one witness
/// (quorum 1 when the length is even, else 0).
pub fn proof_file_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixtures::get();
    let trust = proof_file::Trust {
        ca: f.ca.clone(),
        log: f.log_verifier.clone(),
        witnesses: vec![f.witness_key.clone()],
        quorum: usize::from(data.len().is_multiple_of(2)),
    };
    let _ = proof_file::verify(text, &trust);
}
