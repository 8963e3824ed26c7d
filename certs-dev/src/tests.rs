use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use huren_core::identity::{DOCUMENT_SIGNING_EKU_ARCS, InstitutionId};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};

use crate::pki::pem_to_der;
use crate::*;

fn id(s: &str) -> InstitutionId {
    InstitutionId::parse(s).unwrap()
}

fn der(pem: &str) -> Vec<u8> {
    pem_to_der(pem).unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn common_name<'a>(cert: &'a X509Certificate<'_>) -> &'a str {
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

fn assert_issued_by(cert: &X509Certificate<'_>, ca: &X509Certificate<'_>) {
    assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
    cert.verify_signature(Some(ca.public_key())).unwrap();
}

#[test]
fn ca_certificate() {
    let pki = DevPki::generate().unwrap();
    let ca_der = der(pki.ca_cert_pem());
    assert_eq!(ca_der, pki.ca_cert_der());
    let ca = parse(&ca_der);
    assert!(common_name(&ca).starts_with(CA_COMMON_NAME));
    let other = DevPki::generate().unwrap();
    assert_ne!(
        common_name(&parse(&der(other.ca_cert_pem()))),
        common_name(&ca),
        "two development CAs must differ by name"
    );
    assert_eq!(ca.subject().as_raw(), ca.issuer().as_raw());
    ca.verify_signature(None).unwrap();
    let bc = ca.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert_eq!(
        ca.public_key().algorithm.algorithm,
        OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    let now = OffsetDateTime::now_utc();
    let not_before = ca.validity().not_before.to_datetime();
    let not_after = ca.validity().not_after.to_datetime();
    assert!(not_before < now - time::Duration::minutes(59));
    assert!(not_before > now - time::Duration::minutes(61));
    assert!(not_after > now + time::Duration::days(3650));
    assert!(not_after < now + time::Duration::days(3660));
    // A fresh pseudonymisation key each time, and not all zero.
    let other = DevPki::generate().unwrap();
    assert_ne!(pki.pseudonym_key(), other.pseudonym_key());
    assert_ne!(pki.pseudonym_key(), &[0u8; 32]);
    assert_ne!(pki.ca_cert_der(), other.ca_cert_der());
}

#[test]
fn member_tls_certificate() {
    let pki = DevPki::generate().unwrap();
    let member = id("shx-prov-people");
    let creds = pki.issue_member(&member).unwrap();
    assert_eq!(creds.institution, member);

    let ca_der = der(pki.ca_cert_pem());
    let ca = parse(&ca_der);
    let tls_der = der(&creds.tls.cert_pem);
    let tls = parse(&tls_der);

    assert_eq!(
        uri_sans(&tls),
        vec!["urn:huren:institution:shx-prov-people".to_owned()]
    );
    assert_eq!(common_name(&tls), "shx-prov-people");
    let eku = tls.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth);
    assert!(eku.other.is_empty());
    let ku = tls.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign());
    assert!(!tls.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(
        tls.public_key().algorithm.algorithm,
        OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    assert_issued_by(&tls, &ca);

    // The signature check is real: another CA did not sign it.
    let stranger_der = DevPki::generate().unwrap().ca_cert_der().to_vec();
    let stranger = parse(&stranger_der);
    assert!(tls.verify_signature(Some(stranger.public_key())).is_err());

    // The key PEM holds the private key of this certificate.
    let key = rcgen::KeyPair::from_pem(&creds.tls.key_pem).unwrap();
    assert_eq!(
        rcgen::PublicKeyData::subject_public_key_info(&key),
        tls.public_key().raw
    );
    assert!(creds.tls.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
}

#[test]
fn member_signing_certificate() {
    let pki = DevPki::generate().unwrap();
    let member = id("lantian-county");
    let creds = pki.issue_member(&member).unwrap();

    let ca_der = der(pki.ca_cert_pem());
    let ca = parse(&ca_der);
    let signing_der = der(&creds.signing.cert_pem);
    let signing = parse(&signing_der);

    assert_eq!(signing.public_key().algorithm.algorithm, OID_SIG_ED25519);
    assert_eq!(
        uri_sans(&signing),
        vec!["urn:huren:institution:lantian-county".to_owned()]
    );
    assert_eq!(common_name(&signing), "lantian-county");
    let eku = signing.extended_key_usage().unwrap().unwrap().value;
    assert!(!eku.client_auth);
    assert!(!eku.server_auth);
    assert!(!eku.any);
    let others: Vec<Vec<u64>> = eku
        .other
        .iter()
        .map(|oid| oid.iter().unwrap().collect())
        .collect();
    assert_eq!(others, vec![DOCUMENT_SIGNING_EKU_ARCS.to_vec()]);
    let ku = signing.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(ku.non_repudiation()); // contentCommitment
    assert!(!ku.key_cert_sign());
    assert_issued_by(&signing, &ca);

    // The agent loads the key with ed25519-dalek; its public key is the certificate's.
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&creds.signing.key_pem).unwrap();
    assert_eq!(
        key.verifying_key().as_bytes().as_slice(),
        signing.public_key().subject_public_key.data.as_ref()
    );

    // The TLS certificate of the same member is a different key.
    let tls_der = der(&creds.tls.cert_pem);
    assert_ne!(parse(&tls_der).public_key().raw, signing.public_key().raw);
}

#[test]
fn member_validity_can_be_chosen() {
    let pki = DevPki::generate().unwrap();
    let member = id("expired-clinic");
    let not_before = OffsetDateTime::now_utc() - time::Duration::days(30);
    let not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
    let creds = pki
        .issue_member_valid(&member, not_before, not_after)
        .unwrap();
    for pem in [&creds.tls.cert_pem, &creds.signing.cert_pem] {
        let cert_der = der(pem);
        let cert = parse(&cert_der);
        assert_eq!(
            cert.validity().not_before.timestamp(),
            not_before.unix_timestamp()
        );
        assert_eq!(
            cert.validity().not_after.timestamp(),
            not_after.unix_timestamp()
        );
        assert!(!cert.validity().is_valid());
    }
    let err = pki
        .issue_member_valid(&member, not_after, not_before)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidValidity { .. }), "{err}");
}

#[test]
fn hub_certificate() {
    let pki = DevPki::generate().unwrap();
    let extra = vec![
        "hub.alliance.test".to_owned(),
        "10.1.2.3".to_owned(),
        "localhost".to_owned(),
    ];
    let hub = pki.hub_identity(&extra).unwrap();
    let ca_der = der(pki.ca_cert_pem());
    let ca = parse(&ca_der);
    let hub_der = der(&hub.cert_pem);
    let cert = parse(&hub_der);
    assert_issued_by(&cert, &ca);

    let san = cert.subject_alternative_name().unwrap().unwrap();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push((*d).to_owned()),
            GeneralName::IPAddress(octets) => ips.push(match octets.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*octets).unwrap()),
                16 => IpAddr::from(<[u8; 16]>::try_from(*octets).unwrap()),
                n => panic!("IP address of {n} bytes"),
            }),
            other => panic!("unexpected name {other:?}"),
        }
    }
    assert_eq!(dns, vec!["localhost", "hub.alliance.test"]);
    assert_eq!(
        ips,
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        ]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth);
    assert!(!eku.client_auth);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);

    for bad in ["", "has space", "-bad.example", "a..b", "urn:huren:x"] {
        let err = pki.hub_identity(&[bad.to_owned()]).unwrap_err();
        assert!(matches!(err, Error::InvalidHubName(_)), "{bad:?}: {err}");
    }
}

#[test]
fn debug_output_hides_private_keys() {
    let pki = DevPki::generate().unwrap();
    let creds = pki.issue_member(&id("a")).unwrap();
    let shown = format!("{pki:?} {creds:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!shown.contains(&hex::encode(pki.pseudonym_key())));
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn member_bytes(files: &MemberFiles) -> Vec<Vec<u8>> {
    [
        &files.tls_cert,
        &files.tls_key,
        &files.signing_cert,
        &files.signing_key,
    ]
    .iter()
    .map(|p| std::fs::read(p).unwrap())
    .collect()
}

#[test]
fn init_dir_twice_keeps_ca_and_adds_members() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let first = id("shx-prov-people");
    let second = id("lantian-county");

    let out1 = init_dir(&dir, &["hub.test".to_owned()], std::slice::from_ref(&first)).unwrap();
    assert!(out1.files.iter().all(|f| f.action == FileAction::Written));
    assert_eq!(out1.files.len(), 4 + 2 + 4);
    for f in &out1.files {
        assert!(f.path.is_file(), "{}", f.path.display());
    }
    assert_eq!(out1.ca_cert, dir.join("ca").join("ca.pem"));
    assert_eq!(out1.ca_key, dir.join("ca").join("ca.key.pem"));
    assert_eq!(out1.hub_cert, dir.join("hub").join("hub.pem"));
    assert_eq!(out1.hub_key, dir.join("hub").join("hub.key.pem"));
    assert_eq!(out1.pseudonym_key, dir.join("alliance-pseudonym.key"));
    assert_eq!(out1.notice, dir.join("DEVELOPMENT-ONLY.txt"));
    let m1 = out1.member(&first).unwrap().clone();
    assert_eq!(m1.tls_cert, dir.join("members/shx-prov-people/tls.pem"));
    assert_eq!(m1.tls_key, dir.join("members/shx-prov-people/tls.key.pem"));
    assert_eq!(
        m1.signing_cert,
        dir.join("members/shx-prov-people/signing.pem")
    );
    assert_eq!(
        m1.signing_key,
        dir.join("members/shx-prov-people/signing.key.pem")
    );
    let notice = std::fs::read_to_string(&out1.notice).unwrap();
    assert!(notice.contains("NEVER USE IN PRODUCTION"));

    let pseudonym_text = std::fs::read_to_string(&out1.pseudonym_key).unwrap();
    assert_eq!(pseudonym_text.len(), 65);
    assert!(pseudonym_text.ends_with('\n'));
    assert!(
        pseudonym_text[..64]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );

    let ca_pem_before = std::fs::read(&out1.ca_cert).unwrap();
    let m1_before = member_bytes(&m1);
    let hub_before = std::fs::read(&out1.hub_cert).unwrap();
    let pseudonym_before = read_pseudonym_key(&out1.pseudonym_key).unwrap();

    let out2 = init_dir(&dir, &[], &[first.clone(), second.clone(), first.clone()]).unwrap();
    assert_eq!(out2.members.len(), 2, "duplicates are dropped");
    assert_eq!(std::fs::read(&out2.ca_cert).unwrap(), ca_pem_before);
    assert_eq!(std::fs::read(&out2.hub_cert).unwrap(), hub_before);
    assert_eq!(member_bytes(&m1), m1_before);
    assert_eq!(
        read_pseudonym_key(&out2.pseudonym_key).unwrap(),
        pseudonym_before
    );
    let m2 = out2.member(&second).unwrap();
    for f in &out2.files {
        let expected = if f.path.starts_with(&m2.dir) {
            FileAction::Written
        } else {
            FileAction::Kept
        };
        assert_eq!(f.action, expected, "{}", f.path.display());
    }

    // The new member is signed by the kept CA.
    let ca_pem = String::from_utf8(ca_pem_before).unwrap();
    let ca_der = der(&ca_pem);
    let ca = parse(&ca_der);
    for cert_path in [&m2.tls_cert, &m2.signing_cert] {
        let cert_der = der(&std::fs::read_to_string(cert_path).unwrap());
        let cert = parse(&cert_der);
        assert_issued_by(&cert, &ca);
        assert_eq!(
            uri_sans(&cert),
            vec!["urn:huren:institution:lantian-county".to_owned()]
        );
    }
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(
        &std::fs::read_to_string(&m2.signing_key).unwrap(),
    );
    assert!(key.is_ok());

    // Loading the directory gives back the same CA and pseudonymisation key.
    let loaded = DevPki::load(&dir).unwrap();
    assert_eq!(loaded.ca_cert_pem(), ca_pem);
    assert_eq!(loaded.pseudonym_key(), &pseudonym_before);
    let more = loaded.issue_member(&id("third")).unwrap();
    let more_der = der(&more.tls.cert_pem);
    assert_issued_by(&parse(&more_der), &ca);

    #[cfg(unix)]
    {
        let private = [
            &out2.ca_key,
            &out2.hub_key,
            &out2.pseudonym_key,
            &m1.tls_key,
            &m1.signing_key,
            &m2.tls_key,
            &m2.signing_key,
        ];
        for p in private {
            assert_eq!(mode(p), 0o600, "{}", p.display());
        }
        for p in [&out2.ca_cert, &out2.hub_cert, &m2.tls_cert, &out2.notice] {
            assert_eq!(mode(p) & 0o077 & !0o044, 0, "{}", p.display());
        }
    }

    // No temporary files are left behind.
    for entry in walk(&dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "{}", entry.display());
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn init_dir_reissues_an_incomplete_pair_only() {
    let tmp = tempfile::tempdir().unwrap();
    let member = id("a-clinic");
    let out = init_dir(tmp.path(), &[], std::slice::from_ref(&member)).unwrap();
    let m = out.member(&member).unwrap();
    let signing_before = std::fs::read(&m.signing_cert).unwrap();
    let tls_before = std::fs::read(&m.tls_cert).unwrap();
    std::fs::remove_file(&m.tls_key).unwrap();
    let again = init_dir(tmp.path(), &[], std::slice::from_ref(&member)).unwrap();
    assert_ne!(std::fs::read(&m.tls_cert).unwrap(), tls_before);
    assert_eq!(std::fs::read(&m.signing_cert).unwrap(), signing_before);
    let written: Vec<_> = again
        .files
        .iter()
        .filter(|f| f.action == FileAction::Written)
        .map(|f| f.path.clone())
        .collect();
    assert_eq!(written, vec![m.tls_cert.clone(), m.tls_key.clone()]);
}

#[test]
fn init_dir_refuses_inconsistent_directories() {
    let member = id("a-clinic");

    // Half a CA.
    let tmp = tempfile::tempdir().unwrap();
    let out = init_dir(tmp.path(), &[], &[]).unwrap();
    std::fs::remove_file(&out.ca_key).unwrap();
    let err = init_dir(tmp.path(), &[], &[]).unwrap_err();
    assert!(matches!(err, Error::IncompleteCa { .. }), "{err}");
    assert!(err.to_string().contains("ca.key.pem"), "{err}");

    // A member certificate from another CA.
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    init_dir(a.path(), &[], &[]).unwrap();
    let out_b = init_dir(b.path(), &[], std::slice::from_ref(&member)).unwrap();
    let mb = out_b.member(&member).unwrap();
    let ma = MemberFiles::in_dir(a.path(), &member);
    std::fs::create_dir_all(&ma.dir).unwrap();
    std::fs::copy(&mb.tls_cert, &ma.tls_cert).unwrap();
    std::fs::copy(&mb.tls_key, &ma.tls_key).unwrap();
    let err = init_dir(a.path(), &[], std::slice::from_ref(&member)).unwrap_err();
    assert!(matches!(err, Error::NotIssuedByCa { .. }), "{err}");

    // A key that does not belong to its certificate.
    std::fs::remove_file(&ma.tls_cert).unwrap();
    std::fs::remove_file(&ma.tls_key).unwrap();
    let out_a = init_dir(a.path(), &[], std::slice::from_ref(&member)).unwrap();
    std::fs::copy(&out_a.hub_key, &ma.tls_key).unwrap();
    let err = init_dir(a.path(), &[], std::slice::from_ref(&member)).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");

    // Writing a different in-memory CA over an existing one.
    let c = tempfile::tempdir().unwrap();
    init_dir(c.path(), &[], &[]).unwrap();
    let err = DevPki::generate()
        .unwrap()
        .write_to(c.path(), &[], &[])
        .unwrap_err();
    assert!(matches!(err, Error::DifferentExisting { .. }), "{err}");
}

#[test]
fn read_pseudonym_key_parses_and_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("alliance-pseudonym.key");

    let key: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
    std::fs::write(&path, format!("  {}\r\n\n", hex::encode(key))).unwrap();
    assert_eq!(read_pseudonym_key(&path).unwrap(), key);
    std::fs::write(&path, hex::encode_upper(key)).unwrap();
    assert_eq!(read_pseudonym_key(&path).unwrap(), key);

    let bad = [
        ("", "0 characters"),
        ("abcd\n", "4 characters"),
        (&"0".repeat(66), "66 characters"),
        (
            &format!("{}zz", "0".repeat(62)),
            "non-hexadecimal character 'z'",
        ),
        (&format!("{} {}", "0".repeat(31), "0".repeat(32)), "' '"),
    ];
    for (content, expected) in bad {
        std::fs::write(&path, content).unwrap();
        let err = read_pseudonym_key(&path).unwrap_err();
        assert!(matches!(err, Error::BadPseudonymKey { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(expected), "{msg}");
        assert!(msg.contains("64 hexadecimal characters"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    let missing = tmp.path().join("nope.key");
    let err = read_pseudonym_key(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("nope.key"), "{err}");
}

/// The DER of an Ed25519 private key in PKCS#8 v1 (RFC 5208 / RFC 8410): version 0, the
/// algorithm 1.3.101.112, the 32-byte seed, and nothing after it (no [1] public key).
const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Member signing keys are written as PKCS#8 v1, which OpenSSL 3 and Python's cryptography
/// read (they refuse the v2 form with the public key).
#[test]
fn signing_keys_are_pkcs8_v1() {
    let pki = DevPki::generate().unwrap();
    let member = pki.issue_member(&id("pkcs8-check")).unwrap();
    let (label, doc) =
        ed25519_dalek::pkcs8::SecretDocument::from_pem(&member.signing.key_pem).unwrap();
    assert_eq!(label, "PRIVATE KEY");
    let der = doc.as_bytes();
    assert_eq!(der.len(), 48, "{}", hex::encode(der));
    assert_eq!(der[..16], PKCS8_V1_ED25519_PREFIX, "{}", hex::encode(der));
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&member.signing.key_pem).unwrap();
    assert_eq!(der[16..], key.to_bytes());
}
