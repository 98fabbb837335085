//! Portal state: password hashes with their lockout, and portal sessions.

use sqlx::Row;

use super::{now_micros, Store, StoreError};
use crate::ident::UserName;

/// A live portal session.
#[derive(Debug, Clone)]
pub struct WebSession {
    pub user: String,
    pub workstation: String,
    pub csrf: String,
    pub expires_at: i64,
}

/// Who sets a password, and on what grounds.
#[derive(Debug, Clone, Copy)]
pub enum PasswordChange<'a> {
    /// The user, on the portal, having proved the current password, whose stored hash
    /// is `replaces`: refused if it is no longer the stored one.
    Own { replaces: &'a str },
    /// An administrator's reset: whatever is stored is replaced.
    Reset,
}

impl Store {
    /// Set the user's password to `hash`. The one it replaces joins the user's history,
    /// of which the newest `keep` are kept (see [`Store::retired_passwords`]). An own
    /// change happens only if the stored hash is still the one the caller checked the
    /// current password against: otherwise `Refused`, and nothing changes, so a change
    /// checked against an old password cannot undo a reset made meanwhile. Its time is
    /// kept (see [`Store::own_password_change`]); a reset clears it.
    pub async fn set_password(
        &self,
        user: &UserName,
        hash: &str,
        change: PasswordChange<'_>,
        keep: usize,
    ) -> Result<(), StoreError> {
        let now = now_micros();
        let mut tx = self.pool.begin().await?;
        // The row first (PostgreSQL's row lock, SQLite's write lock): the hash read next is
        // the one replaced, whatever else changes the password at the same time.
        let r = sqlx::query("UPDATE users SET login_failures = login_failures WHERE name = $1")
            .bind(user.as_str())
            .execute(tx.conn()?)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        let old: Option<String> = sqlx::query("SELECT password_hash FROM users WHERE name = $1")
            .bind(user.as_str())
            .fetch_one(tx.conn()?)
            .await?
            .try_get(0)?;
        let own = match change {
            PasswordChange::Own { replaces } if old.as_deref() != Some(replaces) => {
                return Err(StoreError::Refused(format!("the password of {user} changed meanwhile")));
            }
            PasswordChange::Own { .. } => Some(now),
            PasswordChange::Reset => None,
        };
        if let Some(old) = &old {
            // The row lock above orders this with every other change of the user's.
            sqlx::query(
                "INSERT INTO password_history (user_name, password_hash, retired_at, n) VALUES ($1, $2, $3, \
                 (SELECT COALESCE(MAX(n), 0) + 1 FROM password_history WHERE user_name = $1))",
            )
            .bind(user.as_str())
            .bind(old)
            .bind(now)
            .execute(tx.conn()?)
            .await?;
        }
        sqlx::query(
            "UPDATE users SET password_hash = $1, password_set_at = $2, password_self_set_at = $3 WHERE name = $4",
        )
        .bind(hash)
        .bind(now)
        .bind(own)
        .bind(user.as_str())
        .execute(tx.conn()?)
        .await?;
        let prune = match keep.checked_sub(1) {
            None => sqlx::query("DELETE FROM password_history WHERE user_name = $1").bind(user.as_str()),
            // Older than the keep-th newest (none when there are fewer).
            Some(offset) => sqlx::query(
                "DELETE FROM password_history WHERE user_name = $1 AND n < (SELECT n \
                 FROM password_history WHERE user_name = $1 ORDER BY n DESC LIMIT 1 OFFSET $2)",
            )
            .bind(user.as_str())
            .bind(i64::try_from(offset).unwrap_or(i64::MAX)),
        };
        prune.execute(tx.conn()?).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The hashes of the user's newest `limit` retired passwords, newest first.
    pub async fn retired_passwords(&self, user: &UserName, limit: usize) -> Result<Vec<String>, StoreError> {
        sqlx::query("SELECT password_hash FROM password_history WHERE user_name = $1 ORDER BY n DESC LIMIT $2")
            .bind(user.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// When the user last changed their own password (not since reset by an
    /// administrator), if they did.
    pub async fn own_password_change(&self, user: &UserName) -> Result<Option<i64>, StoreError> {
        let r = sqlx::query("SELECT password_self_set_at FROM users WHERE name = $1")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match r {
            Some(r) => r.try_get(0)?,
            None => None,
        })
    }

    /// `(hash, set at)` of the user's password, if one is set.
    pub async fn password(&self, user: &UserName) -> Result<Option<(String, i64)>, StoreError> {
        let r = sqlx::query("SELECT password_hash, password_set_at FROM users WHERE name = $1")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = r else { return Ok(None) };
        let h: Option<String> = r.try_get(0)?;
        let at: Option<i64> = r.try_get(1)?;
        Ok(h.map(|h| (h, at.unwrap_or(0))))
    }

    pub async fn login_locked_until(&self, user: &UserName) -> Result<Option<i64>, StoreError> {
        self.locked_until(super::Lockout::Login, user).await
    }

    /// Count a failed portal or API login (see `count_failure`); returns the new lock.
    pub async fn record_login_failure(
        &self,
        user: &UserName,
        max: i64,
        lock_micros: i64,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .count_failure(super::Lockout::Login, user, max, lock_micros)
            .await?
            .1)
    }

    /// A successful login, or an admin's unlock.
    pub async fn reset_login_failures(&self, user: &UserName) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE users SET login_failures = 0, login_locked_until = NULL WHERE name = $1")
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn create_web_session(
        &self,
        token_hash: &str,
        user: &UserName,
        workstation: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        // Expired sessions and tokens go as new ones come: the table stays small.
        sqlx::query("DELETE FROM web_sessions WHERE expires_at < $1")
            .bind(now_micros())
            .execute(&self.pool)
            .await?;
        // Only for an active user: a login that passed while a suspension committed must
        // not leave a session or token that comes back on resume.
        let insert = self.while_active(
            "INSERT INTO web_sessions (token_hash, user_name, workstation, csrf, created_at, expires_at) \
             SELECT $2, name, $3, $4, $5, $6",
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(user.as_str())
            .bind(token_hash)
            .bind(workstation)
            .bind(csrf)
            .bind(now_micros())
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Refused(format!("user {user} is not active")));
        }
        Ok(())
    }

    /// The session for a token hash, if it exists, has not expired and its user is active.
    pub async fn web_session(&self, token_hash: &str) -> Result<Option<WebSession>, StoreError> {
        let r = sqlx::query(
            "SELECT s.user_name, s.workstation, s.csrf, s.expires_at FROM web_sessions s \
             JOIN users u ON u.name = s.user_name \
             WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.status = 'active'",
        )
        .bind(token_hash)
        .bind(now_micros())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match r {
            Some(r) => Some(WebSession {
                user: r.try_get(0)?,
                workstation: r.try_get(1)?,
                csrf: r.try_get(2)?,
                expires_at: r.try_get(3)?,
            }),
            None => None,
        })
    }

    /// End the user's other sessions and API tokens (after a password change).
    pub async fn end_other_web_sessions(&self, user: &UserName, keep: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM web_sessions WHERE user_name = $1 AND token_hash <> $2")
            .bind(user.as_str())
            .bind(keep)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revoke an API token of `workstation` (whatever its user's state): its user, or
    /// `None` when there was no such live token.
    pub async fn revoke_api_token(
        &self,
        token_hash: &str,
        workstation: &str,
        mark: &str,
    ) -> Result<Option<String>, StoreError> {
        let r = sqlx::query(
            "DELETE FROM web_sessions WHERE token_hash = $1 AND workstation = $2 AND csrf = $3 AND expires_at > $4 \
             RETURNING user_name",
        )
        .bind(token_hash)
        .bind(workstation)
        .bind(mark)
        .bind(now_micros())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match r {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    pub async fn delete_web_session(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM web_sessions WHERE token_hash = $1 OR expires_at < $2")
            .bind(token_hash)
            .bind(now_micros())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::PasswordChange::{Own, Reset};
    use crate::ident::UserName;
    use crate::store::StoreError;

    /// Each change retires the password it replaces; only the newest `keep` are kept, a
    /// user never set a password has none, and removing the user removes them.
    #[tokio::test]
    async fn retired_passwords_keep_the_newest_on_every_backend() {
        for (backend, s) in crate::store::test_backends().await {
            let u = UserName::parse("hist").unwrap();
            s.add_user(&u).await.unwrap();
            s.set_password(&u, "h1", Reset, 2).await.unwrap();
            assert!(s.retired_passwords(&u, 10).await.unwrap().is_empty(), "{backend}");
            // In the order made, whatever the clocks say (all within one microsecond,
            // or one node's clock behind another's).
            for h in ["h2", "h3", "h4"] {
                s.set_password(&u, h, Reset, 2).await.unwrap();
                sqlx::query("UPDATE password_history SET retired_at = 5 WHERE user_name = 'hist'")
                    .execute(s.pool())
                    .await
                    .unwrap();
            }
            assert_eq!(s.retired_passwords(&u, 10).await.unwrap(), ["h3", "h2"], "{backend}");
            assert_eq!(s.retired_passwords(&u, 1).await.unwrap(), ["h3"], "{backend}");
            assert_eq!(s.password(&u).await.unwrap().unwrap().0, "h4", "{backend}");
            s.set_password(&u, "h5", Reset, 0).await.unwrap();
            assert!(s.retired_passwords(&u, 10).await.unwrap().is_empty(), "{backend}");
            let ghost = UserName::parse("ghost").unwrap();
            assert!(s.set_password(&ghost, "h", Reset, 2).await.is_err(), "{backend}");
            // A change checked against a password replaced since changes nothing.
            let stale = s.set_password(&u, "h6", Own { replaces: "h4" }, 2).await;
            assert!(matches!(stale, Err(StoreError::Refused(_))), "{backend}: {stale:?}");
            assert_eq!(s.password(&u).await.unwrap().unwrap().0, "h5", "{backend}");
            assert!(s.retired_passwords(&u, 10).await.unwrap().is_empty(), "{backend}");
            assert_eq!(s.own_password_change(&u).await.unwrap(), None, "{backend}");
            s.set_password(&u, "h6", Own { replaces: "h5" }, 2).await.unwrap();
            assert_eq!(s.retired_passwords(&u, 10).await.unwrap(), ["h5"], "{backend}");
            // An own change is timed (for `passwords.min_age`); a reset clears it.
            let at = s.own_password_change(&u).await.unwrap();
            assert!(
                at.is_some_and(|t| (crate::store::now_micros() - t).abs() < 60_000_000),
                "{backend}: {at:?}"
            );
            s.set_password(&u, "h7", Reset, 2).await.unwrap();
            assert_eq!(s.own_password_change(&u).await.unwrap(), None, "{backend}");
            assert_eq!(s.retired_passwords(&u, 10).await.unwrap(), ["h6", "h5"], "{backend}");
            s.remove_user(&u).await.unwrap();
            let left: i64 = sqlx::Row::try_get(
                &sqlx::query("SELECT COUNT(*) FROM password_history WHERE user_name = 'hist'")
                    .fetch_one(s.pool())
                    .await
                    .unwrap(),
                0,
            )
            .unwrap();
            assert_eq!(left, 0, "{backend}");
        }
    }
}
