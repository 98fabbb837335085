//! Security keys (WebAuthn credentials), single-use ceremony states and SSH approvals.

use sqlx::Row;

use super::{is_unique_violation, now_micros, Store, StoreError};
use crate::ident::UserName;

#[derive(Debug, Clone, serde::Serialize)]
pub struct SecurityKeyRow {
    pub credential_id: String,
    pub name: String,
    #[serde(skip)]
    pub key_json: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// An SSH login waiting for (or given) approval.
#[derive(Debug, Clone)]
pub struct Approval {
    pub user: String,
    pub workstation: String,
    pub target: String,
    pub login: String,
    pub short_code: String,
    pub expires_at: i64,
    pub approved_at: Option<i64>,
    pub consumed_at: Option<i64>,
}

/// Logins of one user, from one workstation, that may wait for approval with a security
/// key at once.
pub const MAX_PENDING_APPROVALS: i64 = 8;

impl Store {
    pub async fn add_security_key(
        &self,
        user: &UserName,
        credential_id: &str,
        name: &str,
        key_json: &str,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(
            "INSERT INTO security_keys (credential_id, user_name, name, key_json, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(credential_id)
        .bind(user.as_str())
        .bind(name)
        .bind(key_json)
        .bind(now_micros())
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Exists(format!("security key {name:?} of {user}"))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn security_keys(&self, user: &UserName) -> Result<Vec<SecurityKeyRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT credential_id, name, key_json, created_at, last_used_at FROM security_keys \
             WHERE user_name = $1 ORDER BY created_at",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SecurityKeyRow {
                    credential_id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    key_json: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    last_used_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Save a key after a use (its new signature counter), only if it is still stored as
    /// `was`: false when another use saved it in between, or the key is gone.
    pub async fn update_security_key(
        &self,
        credential_id: &str,
        was: &str,
        key_json: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE security_keys SET key_json = $1, last_used_at = $2 WHERE credential_id = $3 AND key_json = $4",
        )
        .bind(key_json)
        .bind(now_micros())
        .bind(credential_id)
        .bind(was)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Remove one of the user's keys by name; false if there was none.
    pub async fn remove_security_key(&self, user: &UserName, name: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM security_keys WHERE user_name = $1 AND name = $2")
            .bind(user.as_str())
            .bind(name)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        self.forget_mfa_proofs(user).await?;
        Ok(true)
    }

    pub async fn put_webauthn_state(
        &self,
        id: &str,
        user: &UserName,
        purpose: &str,
        state_json: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM webauthn_states WHERE expires_at < $1")
            .bind(now_micros())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO webauthn_states (id, user_name, purpose, state_json, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(user.as_str())
        .bind(purpose)
        .bind(state_json)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Take a ceremony state: it is deleted in the same step, so a second finish with the
    /// same state finds nothing (webauthn-rs would otherwise accept a replay).
    pub async fn take_webauthn_state(
        &self,
        id: &str,
        user: &UserName,
        purpose: &str,
    ) -> Result<Option<String>, StoreError> {
        let r = sqlx::query(
            "SELECT state_json FROM webauthn_states WHERE id = $1 AND user_name = $2 AND purpose = $3 AND expires_at > $4",
        )
        .bind(id)
        .bind(user.as_str())
        .bind(purpose)
        .bind(now_micros())
        .fetch_optional(&self.pool)
        .await?;
        let d = sqlx::query("DELETE FROM webauthn_states WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        match r {
            Some(r) if d.rows_affected() == 1 => Ok(Some(r.try_get(0)?)),
            _ => Ok(None),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create_approval(
        &self,
        token_hash: &str,
        user: &UserName,
        workstation: &str,
        target: &str,
        login: &str,
        short_code: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        // Approvals older than a day are of no use to anyone.
        sqlx::query("DELETE FROM ssh_approvals WHERE expires_at < $1")
            .bind(now_micros() - 86_400_000_000)
            .execute(&self.pool)
            .await?;
        // Only while fewer than MAX_PENDING_APPROVALS of the user's wait from this
        // workstation: rows stay bounded, and someone with the password elsewhere cannot
        // fill the slots the user's own workstation needs.
        let now = now_micros();
        // The count and the insert in one transaction that first writes the user's row:
        // PostgreSQL then orders concurrent logins of that user (each takes the row lock
        // and sees the others' inserts), SQLite takes its write lock up front. Without it,
        // logins arriving at once could each count seven and all insert.
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET login_failures = login_failures WHERE name = $1")
            .bind(user.as_str())
            .execute(tx.conn()?)
            .await?;
        let r = sqlx::query(
            "INSERT INTO ssh_approvals (token_hash, user_name, workstation, target, login, short_code, created_at, \
             expires_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
             WHERE (SELECT COUNT(*) FROM ssh_approvals WHERE user_name = $2 AND workstation = $3 AND expires_at > $7 \
             AND approved_at IS NULL AND consumed_at IS NULL) < $9",
        )
        .bind(token_hash)
        .bind(user.as_str())
        .bind(workstation)
        .bind(target)
        .bind(login)
        .bind(short_code)
        .bind(now)
        .bind(expires_at)
        .bind(MAX_PENDING_APPROVALS)
        .execute(tx.conn()?)
        .await?;
        tx.commit().await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Refused(format!(
                "{MAX_PENDING_APPROVALS} logins already wait for approval: approve them or let them expire"
            )));
        }
        Ok(())
    }

    pub async fn approval(&self, token_hash: &str) -> Result<Option<Approval>, StoreError> {
        let r = sqlx::query(
            "SELECT user_name, workstation, short_code, expires_at, approved_at, consumed_at, target, login \
             FROM ssh_approvals WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match r {
            Some(r) => Some(Approval {
                user: r.try_get(0)?,
                workstation: r.try_get(1)?,
                short_code: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                approved_at: r.try_get(4)?,
                consumed_at: r.try_get(5)?,
                target: r.try_get(6)?,
                login: r.try_get(7)?,
            }),
            None => None,
        })
    }

    /// Mark approved, once, while it has not expired.
    pub async fn approve(&self, token_hash: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE ssh_approvals SET approved_at = $1 WHERE token_hash = $2 AND approved_at IS NULL AND expires_at > $1",
        )
        .bind(now_micros())
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The waiting login takes its approval, once.
    pub async fn consume_approval(&self, token_hash: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE ssh_approvals SET consumed_at = $1 WHERE token_hash = $2 AND approved_at IS NOT NULL \
             AND consumed_at IS NULL AND expires_at > $1",
        )
        .bind(now_micros())
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::MAX_PENDING_APPROVALS;
    use crate::ident::UserName;
    use crate::store::{now_micros, test_backends, StoreError};

    /// Whoever has a user's password can ask for approvals, but only so many wait at
    /// once from one workstation: one approved, or expired, makes room; other users and
    /// the user's other workstations are not affected.
    #[tokio::test]
    async fn approvals_waiting_for_one_user_are_bounded() {
        for (backend, s) in test_backends().await {
            let (alice, bob) = (UserName::parse("alice").unwrap(), UserName::parse("bob").unwrap());
            s.add_user(&alice).await.unwrap();
            s.add_user(&bob).await.unwrap();
            let later = now_micros() + 60_000_000;
            let ask = |token: String, user: &UserName, expires: i64| {
                let (s, user) = (s.clone(), user.clone());
                async move {
                    s.create_approval(&token, &user, "ws", "db1", "pg", "12-34", expires)
                        .await
                }
            };
            // Expired ones do not count.
            ask("old".into(), &alice, now_micros() - 1).await.unwrap();
            for i in 0..MAX_PENDING_APPROVALS {
                ask(format!("t{i}"), &alice, later).await.unwrap();
            }
            let refused = ask("one-more".into(), &alice, later).await;
            assert!(matches!(refused, Err(StoreError::Refused(_))), "{backend}: {refused:?}");
            assert!(s.approval("one-more").await.unwrap().is_none(), "{backend}");
            ask("bob".into(), &bob, later).await.unwrap();
            s.create_approval("other-ws", &alice, "ws2", "db1", "pg", "12-34", later)
                .await
                .unwrap();
            assert!(s.approve("t0").await.unwrap(), "{backend}");
            ask("one-more".into(), &alice, later).await.unwrap();
            // Logins arriving at once are bounded too (on PostgreSQL each would otherwise
            // count the others' uncommitted rows as absent).
            let carol = UserName::parse("carol").unwrap();
            s.add_user(&carol).await.unwrap();
            let mut burst = tokio::task::JoinSet::new();
            for i in 0..3 * MAX_PENDING_APPROVALS {
                burst.spawn(ask(format!("c{i}"), &carol, later));
            }
            let admitted = burst.join_all().await.into_iter().filter(Result::is_ok).count();
            assert_eq!(admitted, MAX_PENDING_APPROVALS as usize, "{backend}");
        }
    }
}
