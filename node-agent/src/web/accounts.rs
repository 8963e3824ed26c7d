//! Local web accounts, kept in the agent's store: a login name, the staff id the hub records
//! as the requester of every query (never a person's name), a role, an Argon2id password hash
//! (PHC string) and the lock-out state.
//!
//! Lock-out: after [`FREE_FAILURES`] wrong passwords in a row an account is locked for 30 s,
//! doubling with every further failure up to an hour; a right password while locked is
//! refused too (and does not reset the count). `huren-agent user reset` clears it.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use huren_core::summary::UnixMillis;

use crate::store::{Store, StoreError, WebAccountRecord};

/// Wrong passwords allowed before the first lock.
pub const FREE_FAILURES: u32 = 4;
const FIRST_LOCK_MS: i64 = 30_000;
const LONGEST_LOCK_MS: i64 = 3_600_000;
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// What an account may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Finds patients, reads timelines and results, checks orders, records decisions.
    Clinician,
    /// The same, with the referral purpose by default.
    ReferralDesk,
    /// Statistics for this member.
    QualityOffice,
    /// Everything, and access reports (if the member is an administrator in the policy).
    Administrator,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Clinician,
        Role::ReferralDesk,
        Role::QualityOffice,
        Role::Administrator,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::ReferralDesk => "referral-desk",
            Role::QualityOffice => "quality-office",
            Role::Administrator => "administrator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.code() == s)
    }

    /// May look at patients' results.
    pub fn sees_patients(self) -> bool {
        matches!(
            self,
            Role::Clinician | Role::ReferralDesk | Role::Administrator
        )
    }

    /// May read statistics.
    pub fn sees_statistics(self) -> bool {
        matches!(self, Role::QualityOffice | Role::Administrator)
    }

    /// May ask for access reports.
    pub fn sees_access_reports(self) -> bool {
        self == Role::Administrator
    }
}

/// A web account as the pages use it.
#[derive(Clone, Debug)]
pub struct Account {
    pub username: String,
    pub staff_id: String,
    pub role: Role,
    pub disabled: bool,
}

impl Account {
    pub fn from_record(r: WebAccountRecord) -> Option<Account> {
        Some(Account {
            role: Role::parse(&r.role)?,
            username: r.username,
            staff_id: r.staff_id,
            disabled: r.disabled,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the login name must be 1 to 64 characters of letters, digits and . _ - @")]
    BadUsername,
    #[error(
        "the staff id must be 1 to 64 characters of A-Z a-z 0-9 . _ : @ - (an id, never a name)"
    )]
    BadStaffId,
    #[error("unknown role {0:?}: use clinician, referral-desk, quality-office or administrator")]
    BadRole(String),
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    ShortPassword,
    #[error("an account named {0:?} already exists")]
    Exists(String),
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a sign-in attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum SignIn {
    Ok,
    /// Wrong name or password (not said which).
    Wrong,
    /// Locked until this time.
    Locked(UnixMillis),
    Disabled,
}

fn valid_id(s: &str, extra: &[u8]) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b) || extra.contains(&b))
}

/// A staff id the hub accepts as a requester (`A-Za-z0-9._:@-`, 1 to 64).
pub fn valid_staff_id(s: &str) -> bool {
    valid_id(s, b":")
}

fn hash(password: &str) -> Result<String, AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccountError::ShortPassword);
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// Adds an account.
pub fn add(
    store: &Store,
    username: &str,
    staff_id: &str,
    role: &str,
    password: &str,
) -> Result<(), AccountError> {
    if !valid_id(username, b"") {
        return Err(AccountError::BadUsername);
    }
    if !valid_staff_id(staff_id) {
        return Err(AccountError::BadStaffId);
    }
    let role = Role::parse(role).ok_or_else(|| AccountError::BadRole(role.to_owned()))?;
    if store.web_account(username)?.is_some() {
        return Err(AccountError::Exists(username.to_owned()));
    }
    store.put_web_account(&WebAccountRecord {
        username: username.to_owned(),
        staff_id: staff_id.to_owned(),
        role: role.code().to_owned(),
        password_hash: hash(password)?,
        disabled: false,
        failures: 0,
        locked_until_ms: 0,
        created_at_ms: UnixMillis::now().0,
    })?;
    store.flush()?;
    Ok(())
}

/// Disables (or enables again) an account.
pub fn set_disabled(store: &Store, username: &str, disabled: bool) -> Result<(), AccountError> {
    let mut r = store
        .web_account(username)?
        .ok_or_else(|| AccountError::NoSuchAccount(username.to_owned()))?;
    r.disabled = disabled;
    store.put_web_account(&r)?;
    store.flush()?;
    Ok(())
}

/// Sets a new password and clears the lock-out.
pub fn reset(store: &Store, username: &str, password: &str) -> Result<(), AccountError> {
    let mut r = store
        .web_account(username)?
        .ok_or_else(|| AccountError::NoSuchAccount(username.to_owned()))?;
    r.password_hash = hash(password)?;
    r.failures = 0;
    r.locked_until_ms = 0;
    store.put_web_account(&r)?;
    store.flush()?;
    Ok(())
}

/// Every account, by login name.
pub fn list(store: &Store) -> Result<Vec<WebAccountRecord>, AccountError> {
    Ok(store.web_accounts()?)
}

/// How long the lock after `failures` wrong passwords in a row lasts (0: none).
pub fn lock_ms(failures: u32) -> i64 {
    if failures <= FREE_FAILURES {
        return 0;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(20);
    (FIRST_LOCK_MS << doublings).min(LONGEST_LOCK_MS)
}

/// Checks a password (Argon2id, so this takes tens of milliseconds: call it off the async
/// workers) and records the outcome.
pub fn sign_in(
    store: &Store,
    username: &str,
    password: &str,
    now: UnixMillis,
) -> Result<SignIn, AccountError> {
    let Some(mut r) = store.web_account(username)? else {
        // Spend the same time as for a real account, so timing does not tell names apart.
        let _ = hash(&format!("{password}-no-such-account-padding"));
        return Ok(SignIn::Wrong);
    };
    if r.locked_until_ms > now.0 {
        return Ok(SignIn::Locked(UnixMillis(r.locked_until_ms)));
    }
    let right = PasswordHash::new(&r.password_hash).ok().is_some_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    });
    if !right {
        r.failures = r.failures.saturating_add(1);
        let lock = lock_ms(r.failures);
        if lock > 0 {
            r.locked_until_ms = now.0.saturating_add(lock);
        }
        store.put_web_account(&r)?;
        return Ok(if lock > 0 {
            SignIn::Locked(UnixMillis(r.locked_until_ms))
        } else {
            SignIn::Wrong
        });
    }
    if r.disabled {
        return Ok(SignIn::Disabled);
    }
    if r.failures != 0 || r.locked_until_ms != 0 {
        r.failures = 0;
        r.locked_until_ms = 0;
        store.put_web_account(&r)?;
    }
    Ok(SignIn::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sign_in_lock_out_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        add(&store, "nurse1", "S-0042", "referral-desk", "correct horse").unwrap();
        assert!(matches!(
            add(&store, "nurse1", "S-0043", "clinician", "correct horse"),
            Err(AccountError::Exists(_))
        ));
        assert!(matches!(
            add(&store, "n2", "张三", "clinician", "correct horse"),
            Err(AccountError::BadStaffId)
        ));
        assert!(matches!(
            add(&store, "n2", "S1", "doctor", "correct horse"),
            Err(AccountError::BadRole(_))
        ));
        assert!(matches!(
            add(&store, "n2", "S1", "clinician", "short"),
            Err(AccountError::ShortPassword)
        ));
        let r = store.web_account("nurse1").unwrap().unwrap();
        assert!(
            r.password_hash.starts_with("$argon2id$"),
            "{}",
            r.password_hash
        );
        let t = UnixMillis(1_000_000);
        assert_eq!(
            sign_in(&store, "nurse1", "correct horse", t).unwrap(),
            SignIn::Ok
        );
        assert_eq!(
            sign_in(&store, "nobody", "correct horse", t).unwrap(),
            SignIn::Wrong
        );
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                sign_in(&store, "nurse1", "wrong", t).unwrap(),
                SignIn::Wrong
            );
        }
        assert_eq!(
            sign_in(&store, "nurse1", "wrong", t).unwrap(),
            SignIn::Locked(UnixMillis(t.0 + 30_000))
        );
        // Locked: even the right password is refused until the time passes.
        assert!(matches!(
            sign_in(&store, "nurse1", "correct horse", t).unwrap(),
            SignIn::Locked(_)
        ));
        let later = UnixMillis(t.0 + 30_001);
        assert_eq!(
            sign_in(&store, "nurse1", "wrong", later).unwrap(),
            SignIn::Locked(UnixMillis(later.0 + 60_000)),
            "the lock doubles"
        );
        reset(&store, "nurse1", "new password 1").unwrap();
        assert_eq!(
            sign_in(&store, "nurse1", "new password 1", later).unwrap(),
            SignIn::Ok
        );
        set_disabled(&store, "nurse1", true).unwrap();
        assert_eq!(
            sign_in(&store, "nurse1", "new password 1", later).unwrap(),
            SignIn::Disabled
        );
        assert_eq!(list(&store).unwrap().len(), 1);
    }

    #[test]
    fn lock_grows_and_is_capped() {
        assert_eq!(lock_ms(FREE_FAILURES), 0);
        assert_eq!(lock_ms(FREE_FAILURES + 1), 30_000);
        assert_eq!(lock_ms(FREE_FAILURES + 2), 60_000);
        assert_eq!(lock_ms(1000), 3_600_000);
    }
}
