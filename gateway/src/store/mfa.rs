//! Second-factor state: sealed TOTP secrets with their last accepted step, consecutive
//! failures and lockouts, and when a user last proved a factor from a workstation.

use sqlx::Row;

use super::{now_micros, Store, StoreError};
use crate::ident::UserName;

impl Store {
    /// Store a user's sealed TOTP secret; refuses to replace one unless `replace`.
    pub async fn put_totp(&self, user: &UserName, sealed: &str, replace: bool) -> Result<(), StoreError> {
        if self.user(user).await?.is_none() {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        if self.totp(user).await?.is_some() {
            if !replace {
                return Err(StoreError::Exists(format!("TOTP for {user}")));
            }
            sqlx::query("DELETE FROM totp WHERE user_name = $1")
                .bind(user.as_str())
                .execute(&self.pool)
                .await?;
        }
        sqlx::query("INSERT INTO totp (user_name, sealed_secret, last_step, enrolled_at) VALUES ($1, $2, 0, $3)")
            .bind(user.as_str())
            .bind(sealed)
            .bind(now_micros())
            .execute(&self.pool)
            .await?;
        self.forget_mfa_proofs(user).await
    }

    /// `(sealed secret, last accepted step)`.
    pub async fn totp(&self, user: &UserName) -> Result<Option<(String, i64)>, StoreError> {
        let r = sqlx::query("SELECT sealed_secret, last_step FROM totp WHERE user_name = $1")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match r {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    pub async fn remove_totp(&self, user: &UserName) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM totp WHERE user_name = $1")
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("TOTP for {user}")));
        }
        self.forget_mfa_proofs(user).await
    }

    /// Accept TOTP time step `step` once: true only for the first caller with a step
    /// above every step accepted before (atomic on both backends).
    pub async fn accept_totp_step(&self, user: &UserName, step: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE totp SET last_step = $1 WHERE user_name = $2 AND last_step < $1")
            .bind(step)
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Until when (Unix µs) second factors of `user` are locked, if they are now.
    pub async fn mfa_locked_until(&self, user: &UserName) -> Result<Option<i64>, StoreError> {
        self.locked_until(super::Lockout::SecondFactor, user).await
    }

    /// Count a second-factor failure (see `count_failure`).
    pub async fn record_mfa_failure(
        &self,
        user: &UserName,
        max: i64,
        lock_micros: i64,
    ) -> Result<(i64, Option<i64>), StoreError> {
        self.count_failure(super::Lockout::SecondFactor, user, max, lock_micros)
            .await
    }

    /// A success, or an admin's unlock: failures forgotten, lock lifted.
    pub async fn reset_mfa_failures(&self, user: &UserName) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE users SET mfa_failures = 0, mfa_locked_until = NULL WHERE name = $1")
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn record_mfa_proof(&self, user: &UserName, workstation: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM mfa_proofs WHERE user_name = $1 AND workstation = $2")
            .bind(user.as_str())
            .bind(workstation)
            .execute(tx.conn()?)
            .await?;
        // Only for an active user: a login that proved its factor while a suspension
        // committed must not leave a proof that counts again on resume.
        let insert =
            self.while_active("INSERT INTO mfa_proofs (user_name, workstation, proved_at) SELECT name, $2, $3");
        let r = sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(user.as_str())
            .bind(workstation)
            .bind(now_micros())
            .execute(tx.conn()?)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Refused(format!("user {user} is not active")));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forget every second-factor proof `user` made: a login after this asks for a
    /// factor again, whatever the role remembers. Called whenever a factor is replaced,
    /// removed or reset, and when the user is suspended, so a proof never outlives what
    /// it proved.
    pub(crate) async fn forget_mfa_proofs(&self, user: &UserName) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM mfa_proofs WHERE user_name = $1")
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// When `user` last proved a second factor from `workstation` (Unix µs).
    pub async fn last_mfa_proof(&self, user: &UserName, workstation: &str) -> Result<Option<i64>, StoreError> {
        let r = sqlx::query("SELECT proved_at FROM mfa_proofs WHERE user_name = $1 AND workstation = $2")
            .bind(user.as_str())
            .bind(workstation)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match r {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }
}

impl Store {
    /// Replace the user's recovery codes with these hashes.
    pub async fn set_recovery_codes(&self, user: &UserName, hashes: &[String]) -> Result<(), StoreError> {
        if self.user(user).await?.is_none() {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_name = $1")
            .bind(user.as_str())
            .execute(tx.conn()?)
            .await?;
        for h in hashes {
            sqlx::query("INSERT INTO recovery_codes (user_name, code_hash, created_at) VALUES ($1, $2, $3)")
                .bind(user.as_str())
                .bind(h)
                .bind(now_micros())
                .execute(tx.conn()?)
                .await?;
        }
        tx.commit().await?;
        self.forget_mfa_proofs(user).await
    }

    /// Use a recovery code once: true for the first use of a code the user holds.
    pub async fn use_recovery_code(&self, user: &UserName, hash: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 WHERE user_name = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now_micros())
        .bind(user.as_str())
        .bind(hash)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn recovery_codes_left(&self, user: &UserName) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM recovery_codes WHERE user_name = $1 AND used_at IS NULL")
                .bind(user.as_str())
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::ident::UserName;
    use crate::store::test_backends;

    #[tokio::test]
    async fn steps_once_lockout_and_proofs_on_every_backend() {
        for (backend, s) in test_backends().await {
            let alice = UserName::parse("alice").unwrap();
            s.add_user(&alice).await.unwrap();
            s.put_totp(&alice, "sealed", false).await.unwrap();
            assert!(s.put_totp(&alice, "again", false).await.is_err(), "{backend}");
            assert!(s.accept_totp_step(&alice, 100).await.unwrap());
            assert!(!s.accept_totp_step(&alice, 100).await.unwrap(), "{backend}: replay");
            assert!(!s.accept_totp_step(&alice, 99).await.unwrap(), "{backend}: older step");
            assert!(s.accept_totp_step(&alice, 101).await.unwrap());
            for i in 1..5 {
                assert_eq!(s.record_mfa_failure(&alice, 5, 60_000_000).await.unwrap(), (i, None));
            }
            let (n, lock) = s.record_mfa_failure(&alice, 5, 60_000_000).await.unwrap();
            assert_eq!(n, 5);
            assert!(
                lock.is_some() && s.mfa_locked_until(&alice).await.unwrap().is_some(),
                "{backend}"
            );
            assert!(s.reset_mfa_failures(&alice).await.unwrap());
            assert!(s.mfa_locked_until(&alice).await.unwrap().is_none());
            assert!(s.last_mfa_proof(&alice, "ws").await.unwrap().is_none());
            s.record_mfa_proof(&alice, "ws").await.unwrap();
            s.record_mfa_proof(&alice, "ws").await.unwrap();
            assert!(s.last_mfa_proof(&alice, "ws").await.unwrap().is_some());
            // A proof never outlives a change of what it proved, nor a suspension.
            for change in 0..5 {
                s.record_mfa_proof(&alice, "ws").await.unwrap();
                s.record_mfa_proof(&alice, "ws2").await.unwrap();
                match change {
                    0 => s.put_totp(&alice, "new", true).await.unwrap(),
                    1 => s.remove_totp(&alice).await.unwrap(),
                    2 => s.set_recovery_codes(&alice, &["h".into()]).await.unwrap(),
                    3 => {
                        s.add_security_key(&alice, "cred", "yubi", "{}").await.unwrap();
                        // A use saves only over the key as it read it.
                        assert!(s.update_security_key("cred", "{}", "{\"n\":1}").await.unwrap());
                        assert!(!s.update_security_key("cred", "{}", "{\"n\":2}").await.unwrap());
                        let rows = s.security_keys(&alice).await.unwrap();
                        assert_eq!(rows[0].key_json, "{\"n\":1}", "{backend}");
                        assert!(rows[0].last_used_at.is_some());
                        assert!(s.remove_security_key(&alice, "yubi").await.unwrap());
                    }
                    _ => s.suspend_user(&alice, "test", None).await.unwrap(),
                }
                assert!(
                    s.last_mfa_proof(&alice, "ws").await.unwrap().is_none(),
                    "{backend}: change {change}"
                );
                assert!(
                    s.last_mfa_proof(&alice, "ws2").await.unwrap().is_none(),
                    "{backend}: change {change}"
                );
            }
            s.remove_user(&alice).await.unwrap();
        }
    }
}
