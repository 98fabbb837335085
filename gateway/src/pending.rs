//! Logins under way that have not authenticated yet, counted per principal with a cap:
//! OpenSSH's `MaxStartups`, per principal. Each such login holds one of the gateway's
//! `ssh.max_connections` permits until it authenticates or `ssh.auth_timeout` cuts it,
//! so without a cap per principal one principal could hold them all and lock everyone
//! else out of the only door into production.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The counts of one kind of pending login.
#[derive(Debug)]
pub struct PendingLogins {
    limit: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One pending login, counted until dropped (authenticated, or gone).
#[derive(Debug)]
pub struct Pending {
    owner: Arc<PendingLogins>,
    key: String,
}

impl PendingLogins {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(PendingLogins {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Count one more login for `key`; `None` when `key` already has `limit` pending.
    pub fn enter(self: &Arc<Self>, key: &str) -> Option<Pending> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.to_owned()).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Pending {
            owner: self.clone(),
            key: key.to_owned(),
        })
    }

    /// Logins pending for `key`.
    pub fn count(&self, key: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_principal_has_its_own_cap_and_gets_places_back() {
        let p = PendingLogins::new(2);
        let a1 = p.enter("alice").unwrap();
        let _a2 = p.enter("alice").unwrap();
        assert!(p.enter("alice").is_none(), "alice is at her cap");
        let _b = p.enter("bob").expect("bob is not held up by alice");
        drop(a1);
        assert_eq!(p.count("alice"), 1);
        let _a3 = p.enter("alice").expect("a place given back is free again");
        drop(_a3);
        drop(_a2);
        assert_eq!(p.count("alice"), 0);
        assert!(p.counts.lock().unwrap().get("alice").is_none(), "no entry left behind");
    }
}
