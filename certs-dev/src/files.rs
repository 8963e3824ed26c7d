//! The development PKI on disk: layout, creating it, adding to it, loading it.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use huren_core::identity::InstitutionId;
use rcgen::{KeyPair, PublicKeyData};
use time::OffsetDateTime;

use crate::Error;
use crate::pki::{BACKDATE, DevPki, LEAF_VALIDITY, PemPair, pem_to_der, random_bytes};

/// Name of the warning file at the top of the directory.
pub const NOTICE_FILE: &str = "DEVELOPMENT-ONLY.txt";
/// Name of the pseudonymisation key file at the top of the directory.
pub const PSEUDONYM_KEY_FILE: &str = "alliance-pseudonym.key";

const NOTICE_TEXT: &str = "\
DEVELOPMENT PKI - NEVER USE IN PRODUCTION

Everything in this directory was made by huren-certs-dev for development and testing.
The private keys are stored unencrypted and anyone who can read them can act as the CA,
the hub or a member. A production alliance uses its own CA; nothing else changes.

  ca/ca.pem                    development CA certificate (trust anchor for hub and members)
  ca/ca.key.pem                development CA private key (PKCS#8, unencrypted)
  hub/hub.pem                  hub TLS server certificate (localhost, 127.0.0.1, ::1, extra names)
  hub/hub.key.pem              hub TLS private key
  members/<id>/tls.pem         member TLS client certificate (SAN urn:huren:institution:<id>)
  members/<id>/tls.key.pem     member TLS private key
  members/<id>/signing.pem     member summary-signing certificate (Ed25519, EKU documentSigning)
  members/<id>/signing.key.pem member summary-signing private key
  alliance-pseudonym.key       members' shared pseudonymisation key, 64 hex characters;
                               give it to the members only, never to the hub

Run huren-certs-dev again with more --member options to add members; existing files are kept.
";

/// Whether a file was made in this run or was already there and left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    /// The file was written in this run.
    Written,
    /// The file already existed and was kept unchanged.
    Kept,
}

/// One file of the development PKI directory and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// Written or kept.
    pub action: FileAction,
}

/// The files of one member in a development PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberFiles {
    /// The member.
    pub institution: InstitutionId,
    /// `members/<id>/`.
    pub dir: PathBuf,
    /// `members/<id>/tls.pem`: TLS client certificate.
    pub tls_cert: PathBuf,
    /// `members/<id>/tls.key.pem`: TLS private key.
    pub tls_key: PathBuf,
    /// `members/<id>/signing.pem`: summary-signing certificate.
    pub signing_cert: PathBuf,
    /// `members/<id>/signing.key.pem`: summary-signing private key.
    pub signing_key: PathBuf,
}

impl MemberFiles {
    /// Where a member's files live under the development PKI directory `root`.
    pub fn in_dir(root: &Path, institution: &InstitutionId) -> MemberFiles {
        // Institution ids are limited to `A-Z a-z 0-9 . _ -` and start with a letter or digit,
        // so they are safe as a single path component.
        let dir = root.join("members").join(institution.as_str());
        MemberFiles {
            institution: institution.clone(),
            tls_cert: dir.join("tls.pem"),
            tls_key: dir.join("tls.key.pem"),
            signing_cert: dir.join("signing.pem"),
            signing_key: dir.join("signing.key.pem"),
            dir,
        }
    }
}

/// The paths of a development PKI directory, as written (or kept) by [`init_dir`] or
/// [`DevPki::write_to`], and what was done to each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPkiDir {
    /// The directory itself.
    pub root: PathBuf,
    /// `DEVELOPMENT-ONLY.txt`: the warning and a description of each file.
    pub notice: PathBuf,
    /// `ca/ca.pem`: the CA certificate, the trust anchor of hub and members.
    pub ca_cert: PathBuf,
    /// `ca/ca.key.pem`: the CA private key.
    pub ca_key: PathBuf,
    /// `hub/hub.pem`: the hub's TLS server certificate.
    pub hub_cert: PathBuf,
    /// `hub/hub.key.pem`: the hub's TLS private key.
    pub hub_key: PathBuf,
    /// `alliance-pseudonym.key`: the members' shared pseudonymisation key (hex).
    pub pseudonym_key: PathBuf,
    /// The files of each member asked for, in the order asked (duplicates removed).
    pub members: Vec<MemberFiles>,
    /// Every file above with whether it was written or kept, in a stable order.
    pub files: Vec<FileReport>,
}

impl DevPkiDir {
    /// The paths of a development PKI directory at `root` for `members`, without touching the
    /// disk (`files` is empty).
    pub fn layout(root: &Path, members: &[InstitutionId]) -> DevPkiDir {
        let mut seen = BTreeSet::new();
        let members = members
            .iter()
            .filter(|id| seen.insert((*id).clone()))
            .map(|id| MemberFiles::in_dir(root, id))
            .collect();
        DevPkiDir {
            root: root.to_owned(),
            notice: root.join(NOTICE_FILE),
            ca_cert: root.join("ca").join("ca.pem"),
            ca_key: root.join("ca").join("ca.key.pem"),
            hub_cert: root.join("hub").join("hub.pem"),
            hub_key: root.join("hub").join("hub.key.pem"),
            pseudonym_key: root.join(PSEUDONYM_KEY_FILE),
            members,
            files: Vec::new(),
        }
    }

    /// The files of `institution`, if it was one of the members asked for.
    pub fn member(&self, institution: &InstitutionId) -> Option<&MemberFiles> {
        self.members.iter().find(|m| &m.institution == institution)
    }

    fn record(&mut self, path: &Path, action: FileAction) {
        self.files.push(FileReport {
            path: path.to_owned(),
            action,
        });
    }
}

/// Creates or extends a development PKI directory.
///
/// Creates `dir` if needed. If `dir/ca/ca.pem` and `dir/ca/ca.key.pem` exist, that CA is loaded
/// (and `alliance-pseudonym.key` with it, if present); otherwise a new CA is made. Then every file
/// of the layout that is missing is written: the hub certificate (for `localhost`, `127.0.0.1`,
/// `::1` and `hub_names`) and both certificates of each member in `members`. A certificate whose
/// certificate and key files both exist is kept, after checking that the key belongs to it and
/// that this CA issued it; so members can be added later by calling this again. To reissue a
/// certificate (for instance to change the hub's names), delete its files first.
///
/// Fails if only one of the two CA files exists.
pub fn init_dir(
    dir: &Path,
    hub_names: &[String],
    members: &[InstitutionId],
) -> Result<DevPkiDir, Error> {
    let layout = DevPkiDir::layout(dir, &[]);
    let pseudonym_key = if exists(&layout.pseudonym_key)? {
        Some(read_pseudonym_key(&layout.pseudonym_key)?)
    } else {
        None
    };
    let pki = match (exists(&layout.ca_cert)?, exists(&layout.ca_key)?) {
        (true, true) => {
            let pseudonym_key = match pseudonym_key {
                Some(key) => key,
                None => random_bytes()?,
            };
            load_ca(&layout.ca_cert, &layout.ca_key, pseudonym_key)?
        }
        (false, false) => {
            let mut pki = DevPki::generate()?;
            if let Some(key) = pseudonym_key {
                pki.set_pseudonym_key(key);
            }
            pki
        }
        (true, false) => {
            return Err(Error::IncompleteCa {
                present: layout.ca_cert,
                missing: layout.ca_key,
            });
        }
        (false, true) => {
            return Err(Error::IncompleteCa {
                present: layout.ca_key,
                missing: layout.ca_cert,
            });
        }
    };
    pki.write_to(dir, hub_names, members)
}

/// Reads a pseudonymisation key file: 64 hexadecimal characters, surrounding whitespace ignored.
pub fn read_pseudonym_key(path: &Path) -> Result<[u8; 32], Error> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    parse_pseudonym_key(&text).map_err(|reason| Error::BadPseudonymKey {
        path: path.to_owned(),
        reason,
    })
}

fn parse_pseudonym_key(text: &str) -> Result<[u8; 32], String> {
    let hex_text = text.trim();
    if hex_text.len() != 64 {
        return Err(format!(
            "found {} characters after trimming whitespace",
            hex_text.chars().count()
        ));
    }
    if let Some(bad) = hex_text.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("found the non-hexadecimal character {bad:?}"));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut key).map_err(|e| e.to_string())?;
    Ok(key)
}

fn load_ca(cert_path: &Path, key_path: &Path, pseudonym_key: [u8; 32]) -> Result<DevPki, Error> {
    let cert_pem = read_text(cert_path)?;
    let key_pem = read_text(key_path)?;
    DevPki::from_ca_pem(&cert_pem, cert_path, &key_pem, key_path, pseudonym_key)
}

impl DevPki {
    /// Loads the CA and the pseudonymisation key of an existing development PKI directory
    /// (`ca/ca.pem`, `ca/ca.key.pem`, `alliance-pseudonym.key`).
    pub fn load(dir: &Path) -> Result<DevPki, Error> {
        let layout = DevPkiDir::layout(dir, &[]);
        let pseudonym_key = read_pseudonym_key(&layout.pseudonym_key)?;
        load_ca(&layout.ca_cert, &layout.ca_key, pseudonym_key)
    }

    /// Writes this CA and pseudonymisation key to `dir` and issues whatever hub and member
    /// certificates are missing there, keeping those that exist (see [`init_dir`]).
    ///
    /// Fails without changing anything already there if `dir` holds a different CA or
    /// pseudonymisation key, or a certificate this CA did not issue.
    pub fn write_to(
        &self,
        dir: &Path,
        hub_names: &[String],
        members: &[InstitutionId],
    ) -> Result<DevPkiDir, Error> {
        let mut out = DevPkiDir::layout(dir, members);
        create_dir(dir)?;

        // Check everything that would be kept before writing anything.
        let ca_cert_kept = self.check_existing_ca_cert(&out.ca_cert)?;
        let ca_key_kept = self.check_existing_ca_key(&out.ca_key)?;
        let pseudonym_key_kept = self.check_existing_pseudonym_key(&out.pseudonym_key)?;
        let hub_kept = self.check_pair(&out.hub_cert, &out.hub_key, &out.ca_cert)?;
        let mut members_kept = Vec::with_capacity(out.members.len());
        for m in &out.members {
            members_kept.push((
                self.check_pair(&m.tls_cert, &m.tls_key, &out.ca_cert)?,
                self.check_pair(&m.signing_cert, &m.signing_key, &out.ca_cert)?,
            ));
        }

        let notice_kept = fs::read(&out.notice).is_ok_and(|old| old == NOTICE_TEXT.as_bytes());
        if !notice_kept {
            write_file(&out.notice, NOTICE_TEXT.as_bytes(), Access::Public)?;
        }
        out.record(&out.notice.clone(), action(notice_kept));

        create_dir(&dir.join("ca"))?;
        if !ca_cert_kept {
            write_file(&out.ca_cert, self.ca_cert_pem().as_bytes(), Access::Public)?;
        }
        if !ca_key_kept {
            write_file(&out.ca_key, self.ca_key_pem().as_bytes(), Access::Private)?;
        }
        out.record(&out.ca_cert.clone(), action(ca_cert_kept));
        out.record(&out.ca_key.clone(), action(ca_key_kept));

        if !pseudonym_key_kept {
            let text = format!("{}\n", hex::encode(self.pseudonym_key()));
            write_file(&out.pseudonym_key, text.as_bytes(), Access::Private)?;
        }
        out.record(&out.pseudonym_key.clone(), action(pseudonym_key_kept));

        create_dir(&dir.join("hub"))?;
        if !hub_kept {
            let pair = self.hub_identity(hub_names)?;
            write_pair(&pair, &out.hub_cert, &out.hub_key)?;
        }
        out.record(&out.hub_cert.clone(), action(hub_kept));
        out.record(&out.hub_key.clone(), action(hub_kept));

        let now = OffsetDateTime::now_utc();
        let (not_before, not_after) = (now - BACKDATE, now + LEAF_VALIDITY);
        let members = out.members.clone();
        for (m, (tls_kept, signing_kept)) in members.iter().zip(members_kept) {
            create_dir(&m.dir)?;
            if !tls_kept {
                let pair = self.member_tls(&m.institution, not_before, not_after)?;
                write_pair(&pair, &m.tls_cert, &m.tls_key)?;
            }
            out.record(&m.tls_cert, action(tls_kept));
            out.record(&m.tls_key, action(tls_kept));
            if !signing_kept {
                let pair = self.member_signing(&m.institution, not_before, not_after)?;
                write_pair(&pair, &m.signing_cert, &m.signing_key)?;
            }
            out.record(&m.signing_cert, action(signing_kept));
            out.record(&m.signing_key, action(signing_kept));
        }
        Ok(out)
    }

    /// `Ok(true)` if `path` holds this CA certificate, `Ok(false)` if it does not exist.
    fn check_existing_ca_cert(&self, path: &Path) -> Result<bool, Error> {
        if !exists(path)? {
            return Ok(false);
        }
        let der = pem_to_der(&read_text(path)?).map_err(|reason| Error::BadFile {
            path: path.to_owned(),
            reason,
        })?;
        if der != self.ca_cert_der() {
            return Err(Error::DifferentExisting {
                path: path.to_owned(),
                what: "CA certificate",
            });
        }
        Ok(true)
    }

    /// `Ok(true)` if `path` holds this CA's private key, `Ok(false)` if it does not exist.
    fn check_existing_ca_key(&self, path: &Path) -> Result<bool, Error> {
        if !exists(path)? {
            return Ok(false);
        }
        if read_key(path)?.subject_public_key_info() != self.ca_public_key_spki() {
            return Err(Error::DifferentExisting {
                path: path.to_owned(),
                what: "CA private key",
            });
        }
        Ok(true)
    }

    /// `Ok(true)` if `path` holds this pseudonymisation key, `Ok(false)` if it does not exist.
    fn check_existing_pseudonym_key(&self, path: &Path) -> Result<bool, Error> {
        if !exists(path)? {
            return Ok(false);
        }
        if &read_pseudonym_key(path)? != self.pseudonym_key() {
            return Err(Error::DifferentExisting {
                path: path.to_owned(),
                what: "pseudonymisation key",
            });
        }
        Ok(true)
    }

    /// `Ok(true)` if both files exist, the key belongs to the certificate and this CA issued
    /// it; `Ok(false)` if either file is missing (the pair will be issued anew).
    fn check_pair(&self, cert_path: &Path, key_path: &Path, ca_path: &Path) -> Result<bool, Error> {
        if !(exists(cert_path)? && exists(key_path)?) {
            return Ok(false);
        }
        let bad_cert = |reason: String| Error::BadFile {
            path: cert_path.to_owned(),
            reason,
        };
        let der = pem_to_der(&read_text(cert_path)?).map_err(bad_cert)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad_cert(format!("not an X.509 certificate: {e}")))?;
        let (_, ca) = x509_parser::parse_x509_certificate(self.ca_cert_der())
            .map_err(|e| bad_cert(format!("the CA certificate does not parse: {e}")))?;
        let issued_by_ca = cert.issuer().as_raw() == ca.subject().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok();
        if !issued_by_ca {
            return Err(Error::NotIssuedByCa {
                cert: cert_path.to_owned(),
                ca: ca_path.to_owned(),
            });
        }
        if read_key(key_path)?.subject_public_key_info() != cert.public_key().raw {
            return Err(Error::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        Ok(true)
    }
}

fn action(kept: bool) -> FileAction {
    if kept {
        FileAction::Kept
    } else {
        FileAction::Written
    }
}

fn exists(path: &Path) -> Result<bool, Error> {
    path.try_exists()
        .map_err(|e| Error::io("checking", path, e))
}

fn create_dir(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|e| Error::io("creating directory", path, e))
}

fn read_text(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))
}

fn read_key(path: &Path) -> Result<KeyPair, Error> {
    KeyPair::from_pem(&read_text(path)?).map_err(|e| Error::BadFile {
        path: path.to_owned(),
        reason: format!("not a PKCS#8 private key rcgen can use: {e}"),
    })
}

/// Who may read a file written by [`write_file`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Mode 0644 (before the umask): certificates and the notice.
    Public,
    /// Mode 0600: private keys and the pseudonymisation key.
    Private,
}

/// Writes the key before the certificate: a run interrupted in between leaves the pair
/// incomplete, and the next run reissues it.
fn write_pair(pair: &PemPair, cert_path: &Path, key_path: &Path) -> Result<(), Error> {
    write_file(key_path, pair.key_pem.as_bytes(), Access::Private)?;
    write_file(cert_path, pair.cert_pem.as_bytes(), Access::Public)
}

/// Writes `contents` to a temporary file next to `path` (created with the final permissions, so
/// a private key is never readable by others, not even briefly), syncs it and renames it over
/// `path`.
fn write_file(path: &Path, contents: &[u8], access: Access) -> Result<(), Error> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    // A leftover from an earlier crashed run with the same process id would block create_new.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("removing stale temporary file", &tmp, e)),
    }
    let result = write_new(&tmp, contents, access)
        .map_err(|e| Error::io("writing", &tmp, e))
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_new(path: &Path, contents: &[u8], access: Access) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(match access {
            Access::Public => 0o644,
            Access::Private => 0o600,
        });
    }
    #[cfg(not(unix))]
    let _ = access;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
