//! Second factors: TOTP (RFC 6238: SHA-1, 6 digits, 30 s, one step of skew either way),
//! each code accepted once, secrets sealed at rest, lockout after repeated failures.

use std::time::Duration;

use totp_rs::{Builder, Totp};
use zeroize::Zeroizing;

use crate::ident::UserName;
use crate::secrets::MasterKey;
use crate::store::{now_micros, Store, StoreError};

/// Consecutive failures before a user's second factor is locked.
pub const MAX_FAILURES: i64 = 5;
/// First lock length; doubled for each further failure, at most a day.
pub const LOCK: Duration = Duration::from_secs(15 * 60);

fn label(user: &UserName) -> String {
    format!("herse-totp:{user}")
}

fn totp(secret: &[u8], user: &UserName) -> Result<Totp, String> {
    Builder::new()
        .with_secret(secret.to_vec())
        .with_skew(1)
        .with_issuer(Some("Herse"))
        .with_account_name(user.as_str())
        .build()
        .map_err(|e| e.to_string())
}

/// A TOTP enrolment waiting for its first code.
pub struct Enrolment {
    user: UserName,
    secret: Zeroizing<Vec<u8>>,
    totp: Totp,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Enrolment({}, secret redacted)", self.user)
    }
}

impl Enrolment {
    pub fn new(user: &UserName) -> Result<Self, String> {
        let mut secret = Zeroizing::new(vec![0u8; 20]);
        rand::RngExt::fill(&mut rand::rng(), &mut secret[..]);
        let totp = totp(&secret, user)?;
        Ok(Enrolment {
            user: user.clone(),
            secret,
            totp,
        })
    }

    /// An enrolment resumed from its secret (kept sealed between two portal requests).
    pub fn from_secret(user: &UserName, secret: Zeroizing<Vec<u8>>) -> Result<Self, String> {
        let totp = totp(&secret, user)?;
        Ok(Enrolment {
            user: user.clone(),
            secret,
            totp,
        })
    }

    /// The secret sealed for keeping until the confirmation (label bound to the user).
    pub fn seal_pending(&self, key: &MasterKey) -> String {
        key.seal(&format!("herse-totp-pending:{}", self.user), &self.secret)
    }

    /// Open what `seal_pending` made.
    pub fn open_pending(user: &UserName, key: &MasterKey, sealed: &str) -> Result<Self, String> {
        let secret = key
            .open(&format!("herse-totp-pending:{user}"), sealed)
            .map_err(|e| e.to_string())?;
        Enrolment::from_secret(user, secret)
    }

    /// The `otpauth://` URI authenticator apps import (it contains the secret).
    pub fn uri(&self) -> Zeroizing<String> {
        Zeroizing::new(self.totp.to_url().unwrap_or_default())
    }

    /// Confirm with a code from the authenticator, then store the sealed secret. The
    /// confirming step counts as used.
    pub async fn confirm(self, store: &Store, key: &MasterKey, code: &str, replace: bool) -> Result<(), String> {
        let step = self
            .totp
            .check_current(code.trim())
            .ok_or("the code does not match: check the authenticator's clock and try again")?;
        store
            .put_totp(&self.user, &key.seal(&label(&self.user), &self.secret), replace)
            .await
            .map_err(|e| e.to_string())?;
        store
            .accept_totp_step(&self.user, step as i64)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The outcome of one TOTP check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// A one-time recovery code was used; `left` remain.
    AcceptedRecovery {
        left: i64,
    },
    /// No TOTP enrolled for the user.
    NotEnrolled,
    /// Locked until (Unix µs) by earlier failures; the code was not even checked.
    Locked(i64),
    /// Refused for `reason`; `locked_until` when this failure started a lock.
    Failed {
        reason: &'static str,
        locked_until: Option<i64>,
    },
}

/// How many recovery codes a user gets.
pub const RECOVERY_CODES: usize = 10;
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// Fresh one-time recovery codes (`xxxx-xxxx-xxxx`, about 59 bits each), to show once.
pub fn new_recovery_codes() -> Vec<Zeroizing<String>> {
    let mut rng = rand::rng();
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut c = Zeroizing::new(String::with_capacity(14));
            for i in 0..12 {
                if i > 0 && i % 4 == 0 {
                    c.push('-');
                }
                let k = rand::RngExt::random_range(&mut rng, 0..RECOVERY_ALPHABET.len());
                c.push(RECOVERY_ALPHABET[k] as char);
            }
            c
        })
        .collect()
}

/// What is stored of a recovery code: a keyed hash, under a key derived from the
/// user-secrets key, of `user:code`. A copy of the database alone gives nothing to
/// search offline (a plain hash of a 59-bit code would fall to a few GPU-months).
pub fn recovery_hash(key: &MasterKey, user: &UserName, code: &str) -> String {
    let k = key.derive("herse 2026-11 recovery code hash v1");
    let h = blake3::keyed_hash(&k, recovery_input(user, code).as_bytes());
    format!("{KEYED_PREFIX}{}", h.to_hex())
}

const KEYED_PREFIX: &str = "k1:";

/// What recovery codes made before keyed hashes were stored as (SHA-256, no key): they
/// still work, each once, until used or replaced; new codes are never stored so.
fn legacy_recovery_hash(user: &UserName, code: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(recovery_input(user, code).as_bytes()))
}

fn recovery_input(user: &UserName, code: &str) -> Zeroizing<String> {
    Zeroizing::new(format!("{user}:{}", code.trim().to_lowercase()))
}

fn looks_like_recovery_code(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 14 && b[4] == b'-' && b[9] == b'-'
}

/// Check a second-factor answer for `user`: a TOTP code (the right one within one step,
/// a step never accepted before) or a one-time recovery code. Every attempt is counted
/// *before* it is checked, in one atomic update, so concurrent guesses cannot all slip in
/// under the lock; a success clears the count.
pub async fn check_second_factor(
    store: &Store,
    key: &MasterKey,
    user: &UserName,
    code: &str,
) -> Result<Verdict, StoreError> {
    if let Some(until) = store.mfa_locked_until(user).await? {
        return Ok(Verdict::Locked(until));
    }
    let code = code.trim();
    let recovery = looks_like_recovery_code(code);
    let sealed = match store.totp(user).await? {
        Some((sealed, _)) => Some(sealed),
        None if recovery => None,
        None => return Ok(Verdict::NotEnrolled),
    };
    let which = crate::store::Lockout::SecondFactor;
    let n = store.bump_failures(which, user).await?;
    if n > MAX_FAILURES {
        // Racing guesses past the limit: refused unchecked, and locked.
        let until = store
            .lock_after(which, user, n, MAX_FAILURES, LOCK.as_micros() as i64)
            .await?;
        return Ok(Verdict::Locked(until.unwrap_or_else(now_micros)));
    }
    let reason = if recovery {
        if store.use_recovery_code(user, &recovery_hash(key, user, code)).await?
            || store.use_recovery_code(user, &legacy_recovery_hash(user, code)).await?
        {
            store.reset_mfa_failures(user).await?;
            let left = store.recovery_codes_left(user).await?;
            return Ok(Verdict::AcceptedRecovery { left });
        }
        "unknown or used recovery code"
    } else {
        let sealed = sealed.unwrap_or_default();
        let secret = key
            .open(&label(user), &sealed)
            .map_err(|e| StoreError::Invalid(format!("TOTP secret of {user}: {e}")))?;
        let totp = totp(&secret, user).map_err(StoreError::Invalid)?;
        let well_formed = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
        match well_formed.then(|| totp.check_current(code)).flatten() {
            Some(step) => {
                if store.accept_totp_step(user, step as i64).await? {
                    store.reset_mfa_failures(user).await?;
                    return Ok(Verdict::Accepted);
                }
                "code already used"
            }
            None => "wrong code",
        }
    };
    let locked_until = store
        .lock_after(which, user, n, MAX_FAILURES, LOCK.as_micros() as i64)
        .await?;
    Ok(Verdict::Failed { reason, locked_until })
}

/// Whether a proof made at `proved_at` still covers a login now under `window`.
pub fn proof_covers(proved_at: Option<i64>, window: Option<Duration>) -> bool {
    match (proved_at, window) {
        (Some(at), Some(w)) => now_micros().saturating_sub(at) < w.as_micros() as i64,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory_store;

    #[tokio::test]
    async fn codes_are_checked_once_and_failures_lock() {
        let s = memory_store().await;
        let key = MasterKey::generate();
        let alice = UserName::parse("alice").unwrap();
        let bob = UserName::parse("bob").unwrap();
        s.add_user(&alice).await.unwrap();
        s.add_user(&bob).await.unwrap();
        assert_eq!(
            check_second_factor(&s, &key, &alice, "123456").await.unwrap(),
            Verdict::NotEnrolled
        );

        let e = Enrolment::new(&alice).unwrap();
        let uri = e.uri();
        assert!(uri.starts_with("otpauth://totp/Herse:alice?"), "{}", uri.as_str());
        let t = Totp::from_url(uri.as_str()).unwrap();
        assert!(e.confirm(&s, &key, "000000x", false).await.is_err());
        let e = Enrolment::new(&alice).unwrap();
        let t2 = Totp::from_url(e.uri().as_str()).unwrap();
        assert_ne!(t.secret(), t2.secret());
        // The confirming code is used up: the same code cannot then log in.
        let code = t2.generate_current().to_string();
        e.confirm(&s, &key, &code, false).await.unwrap();
        assert!(matches!(
            check_second_factor(&s, &key, &alice, &code).await.unwrap(),
            Verdict::Failed {
                reason: "code already used",
                ..
            }
        ));
        // A code from another secret, and garbage, are wrong codes.
        let other = t.generate_current().to_string();
        if other != code {
            assert!(matches!(
                check_second_factor(&s, &key, &alice, &other).await.unwrap(),
                Verdict::Failed {
                    reason: "wrong code",
                    ..
                }
            ));
        }
        for _ in 0..3 {
            let v = check_second_factor(&s, &key, &alice, "abcdef").await.unwrap();
            assert!(matches!(v, Verdict::Failed { .. }), "{v:?}");
        }
        // A secret sealed for alice does not open for bob (bound to the user name).
        let (sealed, _) = s.totp(&alice).await.unwrap().unwrap();
        s.put_totp(&bob, &sealed, false).await.unwrap();
        assert!(check_second_factor(&s, &key, &bob, &code).await.is_err());
        // Lock after MAX_FAILURES in a row, whatever the code.
        let mut locked = false;
        for _ in 0..MAX_FAILURES {
            match check_second_factor(&s, &key, &alice, "999999").await.unwrap() {
                Verdict::Failed {
                    locked_until: Some(_), ..
                }
                | Verdict::Locked(_) => {
                    locked = true;
                    break;
                }
                _ => {}
            }
        }
        assert!(locked);
        assert!(matches!(
            check_second_factor(&s, &key, &alice, &code).await.unwrap(),
            Verdict::Locked(_)
        ));
        // Recovery codes: each works once (even while TOTP is locked? no: the lock holds).
        s.reset_mfa_failures(&alice).await.unwrap();
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let hashes: Vec<String> = codes.iter().map(|c| recovery_hash(&key, &alice, c)).collect();
        // Stored keyed: neither the code nor its plain hash is in the database.
        assert!(hashes.iter().all(|h| h.starts_with(KEYED_PREFIX) && h.len() == 67));
        assert_ne!(recovery_hash(&MasterKey::generate(), &alice, &codes[0]), hashes[0]);
        assert!(!hashes.contains(&legacy_recovery_hash(&alice, &codes[0])));
        s.set_recovery_codes(&alice, &hashes).await.unwrap();
        assert_eq!(
            check_second_factor(&s, &key, &alice, &codes[0].to_uppercase())
                .await
                .unwrap(),
            Verdict::AcceptedRecovery { left: 9 }
        );
        assert!(matches!(
            check_second_factor(&s, &key, &alice, &codes[0]).await.unwrap(),
            Verdict::Failed {
                reason: "unknown or used recovery code",
                ..
            }
        ));
        assert!(
            matches!(
                check_second_factor(&s, &key, &bob, &codes[1]).await.unwrap(),
                Verdict::Failed { .. }
            ),
            "another user's code"
        );
        // A code stored before keyed hashes (plain SHA-256) still works, once.
        s.reset_mfa_failures(&alice).await.unwrap();
        let old = new_recovery_codes();
        s.set_recovery_codes(&alice, &[legacy_recovery_hash(&alice, &old[0])])
            .await
            .unwrap();
        assert_eq!(
            check_second_factor(&s, &key, &alice, &old[0]).await.unwrap(),
            Verdict::AcceptedRecovery { left: 0 }
        );
        assert!(matches!(
            check_second_factor(&s, &key, &alice, &old[0]).await.unwrap(),
            Verdict::Failed { .. }
        ));
        assert!(proof_covers(Some(now_micros()), Some(Duration::from_secs(60))));
        assert!(!proof_covers(
            Some(now_micros() - 120_000_000),
            Some(Duration::from_secs(60))
        ));
        assert!(!proof_covers(Some(now_micros()), None));
    }
}
