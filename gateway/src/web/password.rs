//! Portal passwords: the policy a new password must meet (by default the ANSSI guidance
//! for passwords protected by a second factor and a lockout: at least 12 characters of at
//! least 3 kinds, not a common password, not built on the user name, renewed after a
//! year) and argon2id hashes.

use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use zeroize::Zeroizing;

/// Passwords refused whatever their length: the most common choices and the patterns
/// people stretch to a minimum length. Compared case-insensitively, also with digits and
/// punctuation stripped from the ends ("Password2024!" is "password").
const COMMON: &[&str] = &[
    "password",
    "passw0rd",
    "motdepasse",
    "azerty",
    "azertyuiop",
    "qwerty",
    "qwertyuiop",
    "123456",
    "12345678",
    "123456789",
    "1234567890",
    "111111",
    "000000",
    "abc123",
    "letmein",
    "welcome",
    "bienvenue",
    "admin",
    "administrator",
    "root",
    "toor",
    "changeme",
    "changeit",
    "secret",
    "master",
    "dragon",
    "monkey",
    "football",
    "baseball",
    "iloveyou",
    "trustno1",
    "sunshine",
    "princess",
    "shadow",
    "superman",
    "batman",
    "starwars",
    "whatever",
    "soleil",
    "doudou",
    "loulou",
    "chouchou",
    "marseille",
    "paris",
    "france",
    "jetaime",
    "hello",
    "login",
    "access",
    "default",
    "guest",
    "test",
    "testing",
    "temp",
    "temporary",
    "summer",
    "winter",
    "spring",
    "autumn",
    "automne",
    "hiver",
    "printemps",
    "ete",
    "january",
    "janvier",
    "company",
    "production",
    "prod",
    "server",
    "database",
    "bastion",
    "herse",
    "portcullis",
    "security",
    "securite",
    "qazwsx",
    "zaq12wsx",
    "1q2w3e4r",
    "1qaz2wsx",
    "q1w2e3r4",
    "asdfgh",
    "asdfghjkl",
    "zxcvbn",
    "zxcvbnm",
    "password1",
    "password123",
    "p@ssw0rd",
    "p@ssword",
    "pa$$word",
    "aaaaaa",
    "abcdef",
    "abcdefgh",
    "abcdefghijkl",
    "azerty123",
    "qwerty123",
    "welcome1",
    "letmein1",
];

#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_length: usize,
    /// Kinds among lowercase, uppercase, digits and others.
    pub min_classes: usize,
    /// A password older than this must be changed at the next login.
    pub max_age: Option<Duration>,
    /// How many retired passwords a change on the portal may not bring back.
    pub history: usize,
    /// How long after changing their own password a user may not change it again on
    /// the portal (zero: no wait), so that `history` changes in a row cannot flush the
    /// history. An administrator's reset is not a change of one's own.
    pub min_age: Duration,
}

/// The most retired passwords `passwords.history` may keep: each is an argon2id check
/// at every change.
pub const MAX_HISTORY: usize = 24;

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_length: 12,
            min_classes: 3,
            max_age: Some(Duration::from_secs(365 * 24 * 3600)),
            history: 5,
            min_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl PasswordPolicy {
    /// `Ok` or the reason the password is refused (shown to the user as is).
    pub fn check(&self, user: &str, password: &str) -> Result<(), String> {
        let chars = password.chars().count();
        if chars < self.min_length {
            return Err(format!(
                "too short: at least {} characters ({chars} given)",
                self.min_length
            ));
        }
        if chars > 1024 {
            return Err("too long: at most 1024 characters".into());
        }
        let classes = [
            password.chars().any(|c| c.is_lowercase()),
            password.chars().any(|c| c.is_uppercase()),
            password.chars().any(|c| c.is_ascii_digit()),
            password.chars().any(|c| !c.is_alphanumeric()),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if classes < self.min_classes {
            return Err(format!(
                "too simple: use at least {} of lowercase letters, uppercase letters, digits and other characters",
                self.min_classes
            ));
        }
        let lower = password.to_lowercase();
        let core = lower.trim_matches(|c: char| !c.is_alphabetic());
        if COMMON.iter().any(|c| *c == lower || *c == core) {
            return Err("too common: this password is on the list of the most used ones".into());
        }
        if !user.is_empty() && lower.contains(&user.to_lowercase()) {
            return Err("it contains the user name".into());
        }
        let first = password.chars().next().unwrap_or(' ');
        if password.chars().all(|c| c == first) {
            return Err("it repeats one character".into());
        }
        Ok(())
    }
}

/// An argon2id hash in PHC form (parameters and salt included).
pub fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the stored hash (constant-time comparison in argon2).
pub fn verify(password: &str, stored: &str) -> bool {
    let Ok(h) = PasswordHash::new(stored) else {
        return false;
    };
    let password = Zeroizing::new(password.to_owned());
    Argon2::default().verify_password(password.as_bytes(), &h).is_ok()
}

/// argon2 costs ~19 MiB and tens of milliseconds: off the async workers, two at a time,
/// so a burst of logins cannot stall the gateway's relays and tunnel.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub async fn verify_async(password: &str, stored: &str) -> bool {
    let Ok(_permit) = HASHING.acquire().await else {
        return false;
    };
    let (password, stored) = (Zeroizing::new(password.to_owned()), stored.to_owned());
    tokio::task::spawn_blocking(move || verify(&password, &stored))
        .await
        .unwrap_or(false)
}

pub async fn hash_async(password: &str) -> Result<String, String> {
    let _permit = HASHING.acquire().await.map_err(|e| e.to_string())?;
    let password = Zeroizing::new(password.to_owned());
    tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_with_reasons() {
        let p = PasswordPolicy::default();
        assert!(p.check("alice", "short1A!").unwrap_err().contains("too short"));
        assert!(p
            .check("alice", "alllowercaseletters")
            .unwrap_err()
            .contains("too simple"));
        assert!(p.check("alice", "Password2024!").unwrap_err().contains("too common"));
        assert!(p.check("alice", "P@ssw0rd").unwrap_err().contains("too short"));
        assert!(p.check("alice", "Alice-the-Great-7").unwrap_err().contains("user name"));
        assert!(p.check("alice", "Correct-Horse-Battery-9").is_ok());
    }

    #[test]
    fn argon2id_hashes_verify() {
        let h = hash("Correct-Horse-Battery-9").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("Correct-Horse-Battery-9", &h));
        assert!(!verify("Correct-Horse-Battery-8", &h));
        assert!(!verify("x", "not a hash"));
    }
}
