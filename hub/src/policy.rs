//! The alliance policy in force: loading the file (parsed by `huren_core::policy_file`) and
//! live reloading.
//!
//! A policy is checked whole before it is used; a policy with an error is refused and the hub
//! keeps the one it had. [`PolicyHandle`] holds the current policy; readers take an
//! `Arc<Policy>` and keep a consistent view for the whole request. Every policy put in force
//! is appended to the log first (a policy leaf with the file's exact text), and carries its
//! leaf index (`Policy::log_index`), which every verdict names.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

pub use huren_core::policy_file::{PolicyError, parse};
use huren_core::rules::Policy;

/// Reads and checks a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// The current policy, replaceable while the hub runs.
pub struct PolicyHandle {
    path: PathBuf,
    current: RwLock<InForce>,
}

/// The policy in force and what it was read from.
struct InForce {
    policy: Arc<Policy>,
    /// The file's exact text: what the policy's log leaf holds.
    text: String,
    /// The file's modification time when it was read (or last refused).
    stamp: Option<SystemTime>,
    /// The policy as TOML values (comments and layout aside): a reload with the same version
    /// label must hold the same values.
    content: Option<toml::Table>,
}

/// A policy read from the file and checked, not yet in force: it is put in force once it is
/// in the log ([`PolicyHandle::install`]).
pub struct Candidate {
    pub policy: Policy,
    /// The file's exact text.
    pub text: String,
    stamp: Option<SystemTime>,
    content: Option<toml::Table>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_text(path: &Path) -> Result<(String, Option<SystemTime>), PolicyError> {
    let stamp = modified(path);
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok((text, stamp))
}

impl PolicyHandle {
    /// Loads the policy at `path`; the hub does not start without a valid one. It is in force
    /// for the hub once logged: the hub appends it to the log before it serves
    /// (`Hub::log_policy_in_force`), which sets its log index ([`PolicyHandle::set_logged`]).
    pub fn open(path: &Path) -> Result<Self, PolicyError> {
        let (text, stamp) = read_text(path)?;
        let policy = parse(path, &text)?;
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(InForce {
                policy: Arc::new(policy),
                content: text.parse::<toml::Table>().ok(),
                text,
                stamp,
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, InForce> {
        match self.current.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, InForce> {
        match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The policy in force now.
    pub fn get(&self) -> Arc<Policy> {
        self.read().policy.clone()
    }

    /// The policy in force and the exact text it was read from.
    pub fn get_with_text(&self) -> (Arc<Policy>, String) {
        let g = self.read();
        (g.policy.clone(), g.text.clone())
    }

    /// Records that the policy in force is the log's leaf `index` (when the hub starts), unless
    /// another policy was put in force meanwhile.
    pub fn set_logged(&self, policy: &Arc<Policy>, index: u64) {
        let mut g = self.write();
        if Arc::ptr_eq(&g.policy, policy) {
            let mut logged = (**policy).clone();
            logged.log_index = Some(index);
            g.policy = Arc::new(logged);
        }
    }

    /// Reads the file again and checks it; nothing changes until [`PolicyHandle::install`].
    /// A file whose values changed while its version label did not is refused.
    pub fn read_candidate(&self) -> Result<Candidate, PolicyError> {
        let (text, stamp) = read_text(&self.path)?;
        let policy = parse(&self.path, &text)?;
        let content = text.parse::<toml::Table>().ok();
        let g = self.read();
        if policy.version == g.policy.version && g.content != content {
            return Err(PolicyError::VersionUnchanged {
                path: self.path.clone(),
                version: policy.version.clone(),
            });
        }
        Ok(Candidate {
            policy,
            text,
            stamp,
            content,
        })
    }

    /// Puts a candidate in force, as the log's leaf `log_index` (`None` only in tests that
    /// run without a log).
    pub fn install(&self, candidate: Candidate, log_index: Option<u64>) -> Arc<Policy> {
        let mut policy = candidate.policy;
        policy.log_index = log_index;
        let policy = Arc::new(policy);
        *self.write() = InForce {
            policy: policy.clone(),
            text: candidate.text,
            stamp: candidate.stamp,
            content: candidate.content,
        };
        policy
    }

    /// Whether the file's modification time changed since it was last read (or refused).
    pub fn changed_on_disk(&self) -> bool {
        modified(&self.path) != self.read().stamp
    }

    /// Remembers the file's time after a refusal, so the same broken file is reported once,
    /// not at every poll.
    pub fn refused(&self) {
        let stamp = modified(&self.path);
        self.write().stamp = stamp;
    }

    /// Whether a candidate's text is the policy in force's, byte for byte (nothing to log).
    pub fn is_in_force(&self, candidate: &Candidate) -> bool {
        self.read().text == candidate.text
    }

    /// Reads the file again and puts it in force without logging it (tests of the file rules).
    #[cfg(test)]
    fn reload(&self) -> Result<Arc<Policy>, PolicyError> {
        let c = self.read_candidate()?;
        Ok(self.install(c, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use huren_core::identity::InstitutionId;
    use huren_core::summary::{Category, UnixMillis};
    use std::collections::BTreeSet;

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.example.toml")
    }

    /// A changed policy under an unchanged version label is refused on reload (the one in
    /// force stays); a comment-only edit is not a change; a new label is taken.
    #[test]
    fn a_changed_policy_needs_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let text = std::fs::read_to_string(example()).unwrap();
        std::fs::write(&path, &text).unwrap();
        let handle = PolicyHandle::open(&path).unwrap();
        let before = handle.get();
        let shorter = text.replacen("validity_days = 7", "validity_days = 1", 1);
        assert_ne!(shorter, text);
        std::fs::write(&path, &shorter).unwrap();
        let err = handle.reload().unwrap_err();
        assert!(matches!(err, PolicyError::VersionUnchanged { .. }), "{err}");
        assert!(Arc::ptr_eq(&handle.get(), &before));
        std::fs::write(&path, format!("{text}\n# a comment\n")).unwrap();
        handle.reload().unwrap();
        let relabelled = shorter.replacen("version = \"2026.11-1\"", "version = \"2026.11-2\"", 1);
        std::fs::write(&path, relabelled).unwrap();
        assert_eq!(handle.reload().unwrap().version, "2026.11-2");
    }

    #[test]
    fn example_policy_is_valid_and_realistic() {
        let p = load(&example()).unwrap();
        assert!(p.items.len() >= 40, "{} items", p.items.len());
        for category in [Category::Lab, Category::Imaging] {
            assert!(p.items.values().any(|i| i.category == category));
        }
        let windows: BTreeSet<u32> = p.items.values().map(|i| i.validity_days).collect();
        assert!(
            windows.len() >= 4,
            "windows should differ by item: {windows:?}"
        );
        for m in ["shx-prov-people", "lantian-county"] {
            let id = InstitutionId::parse(m).unwrap();
            assert!(
                p.mappings.keys().any(|(member, _)| *member == id),
                "{m} has no mappings"
            );
        }
        let hgb = p.item("http://loinc.org", "718-7").unwrap();
        assert_eq!(hgb.price_fen, 500);
        let county = InstitutionId::parse("lantian-county").unwrap();
        assert_eq!(
            p.map_local(&county, "XCG-HB").map(|i| i.code.as_str()),
            Some("718-7")
        );
        // valid_to 2026-12-31 at +08:00 ends at 2026-12-31T15:59:59.999Z.
        let q = &p.qualifications[0];
        assert_eq!(q.valid_to.0, 1_798_732_799_999);
    }

    /// Breaks the example one way at a time; each error must name its line and field.
    #[test]
    fn errors_name_line_and_field() {
        let text = std::fs::read_to_string(example()).unwrap();
        let line_of = |needle: &str| text[..text.find(needle).unwrap()].matches('\n').count() + 1;
        let cases = [
            (
                "validity_days = 3\n",
                "validity_days = 0\n",
                "validity_days",
                "must be at least 1",
            ),
            (
                "scope = \"region:610000\"\nprice_yuan = 4.00",
                "scope = \"province\"\nprice_yuan = 4.00",
                "scope",
                "GB/T 2260",
            ),
            (
                "level = \"primary\"",
                "level = \"county\"",
                "level",
                "tertiary, secondary or primary",
            ),
            (
                "item = \"2345-7\"\nkind",
                "item = \"0000-0\"\nkind",
                "item",
                "not in the catalogue",
            ),
            (
                "member = \"lantian-county\"\nlocal_code = \"XCG-HB\"",
                "member = \"nobody\"\nlocal_code = \"XCG-HB\"",
                "member",
                "not in [[members]]",
            ),
            (
                "valid_to = 2027-05-31",
                "valid_to = 2025-05-31",
                "valid_to",
                "before valid_from",
            ),
        ];
        for (from, to, field, phrase) in cases {
            let broken = text.replacen(from, to, 1);
            assert_ne!(broken, text, "{from:?} not found");
            let err = parse(Path::new("policy.toml"), &broken).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(field) && msg.contains(phrase), "{msg}");
            match err {
                PolicyError::Field { line, .. } => {
                    // The entry starts at most a few lines above the changed key.
                    let changed = line_of(from);
                    assert!(
                        line <= changed && changed - line < 12,
                        "line {line} vs {changed}: {msg}"
                    );
                }
                other => panic!("expected a field error, got {other}"),
            }
        }
        let err = parse(Path::new("policy.toml"), "version = \"x\"\nunknown = 1\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown") && err.to_string().contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn revocations_parse_and_their_errors_name_line_and_field() {
        let text = std::fs::read_to_string(example()).unwrap();
        let with = |entry: &str| format!("{text}\n[[revoked]]\n{entry}\n");
        let p = parse(
            Path::new("policy.toml"),
            &with("member = \"lantian-tangyu\"\nat = 2026-11-20T10:00:00+08:00\nreason = \"key compromise\""),
        )
        .unwrap();
        let id = InstitutionId::parse("lantian-tangyu").unwrap();
        let r = &p.revoked[&id];
        assert_eq!(r.at, UnixMillis(1_795_140_000_000));
        assert_eq!(r.reason, "key compromise");
        assert_eq!(r.after, huren_core::rules::AfterRevocation::NotRecognised);
        assert!(p.revoked_at(&id, UnixMillis(1_795_139_999_999)).is_none());
        assert!(p.revoked_at(&id, UnixMillis(1_795_140_000_000)).is_some());
        let revoked_line = with("").matches('\n').count() - 1;
        for (entry, field, phrase) in [
            (
                "member = \"nobody\"\nat = 2026-11-20T10:00:00+08:00\nreason = \"x\"",
                "revoked[0].member",
                "not in [[members]]",
            ),
            (
                "member = \"lantian-tangyu\"\nat = 2026-11-20\nreason = \"x\"",
                "revoked[0].at",
                "with an offset",
            ),
            (
                "member = \"lantian-tangyu\"\nat = 2026-11-20T10:00:00Z\nreason = \" \"",
                "revoked[0].reason",
                "must say why",
            ),
            (
                "member = \"lantian-tangyu\"\nat = 2026-11-20T10:00:00Z\nreason = \"x\"\nsummaries_after = \"hidden\"",
                "revoked[0].summaries_after",
                "\"withheld\"",
            ),
        ] {
            let err = parse(Path::new("policy.toml"), &with(entry)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(field) && msg.contains(phrase), "{msg}");
            match err {
                PolicyError::Field { line, .. } => assert!(
                    line.abs_diff(revoked_line) <= 2,
                    "line {line} vs {revoked_line}: {msg}"
                ),
                other => panic!("expected a field error, got {other}"),
            }
        }
    }

    #[test]
    fn a_broken_file_keeps_the_policy_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::copy(example(), &path).unwrap();
        let handle = PolicyHandle::open(&path).unwrap();
        assert_eq!(handle.get().version, "2026.11-1");
        std::fs::write(&path, "version = \n").unwrap();
        assert!(handle.reload().is_err());
        assert_eq!(handle.get().version, "2026.11-1");
        let text = std::fs::read_to_string(example())
            .unwrap()
            .replace("2026.11-1", "2026.12-1");
        std::fs::write(&path, text).unwrap();
        handle.reload().unwrap();
        assert_eq!(handle.get().version, "2026.12-1");
    }
}
