use russh::keys::ssh_key::{HashAlg, PublicKey};
use sqlx::Row;

use super::{is_unique_violation, now_micros, Store, StoreError};
use crate::ident::{RoleName, UserName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Suspended,
}

impl UserStatus {
    fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Suspended => "suspended",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(UserStatus::Active),
            "suspended" => Ok(UserStatus::Suspended),
            other => Err(StoreError::Invalid(format!("user status {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UserRow {
    pub name: String,
    pub status: UserStatus,
    pub status_reason: Option<String>,
    pub created_at: i64,
    /// A suspension that ends by itself ends then.
    pub suspended_until: Option<i64>,
    pub roles: Vec<String>,
    pub keys: Vec<KeyRow>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KeyRow {
    pub fingerprint: String,
    pub public_key: String,
    pub comment: String,
    pub added_at: i64,
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl Store {
    pub async fn add_user(&self, name: &UserName) -> Result<(), StoreError> {
        let r = sqlx::query("INSERT INTO users (name, status, created_at) VALUES ($1, 'active', $2)")
            .bind(name.as_str())
            .bind(now_micros())
            .execute(&self.pool)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Exists(format!("user {name}"))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn user(&self, name: &UserName) -> Result<Option<UserRow>, StoreError> {
        let Some(row) =
            sqlx::query("SELECT name, status, status_reason, created_at, suspended_until FROM users WHERE name = $1")
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let mut u = UserRow {
            name: row.try_get(0)?,
            status: UserStatus::parse(&row.try_get::<String, _>(1)?)?,
            status_reason: row.try_get(2)?,
            created_at: row.try_get(3)?,
            suspended_until: row.try_get(4)?,
            roles: Vec::new(),
            keys: Vec::new(),
        };
        u.roles = self.roles_of(name).await?.into_iter().map(|r| r.to_string()).collect();
        u.keys = self.keys_of(name).await?;
        Ok(Some(u))
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        let names: Vec<String> = sqlx::query("SELECT name FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for n in names {
            let name = UserName::parse(&n).map_err(|e| StoreError::Invalid(e.to_string()))?;
            if let Some(u) = self.user(&name).await? {
                out.push(u);
            }
        }
        Ok(out)
    }

    pub async fn set_user_status(
        &self,
        name: &UserName,
        status: UserStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update_status(name, status, reason, None).await
    }

    /// Suspend `name` (until `until`, if given: a gateway resumes them then).
    pub async fn suspend_user(&self, name: &UserName, reason: &str, until: Option<i64>) -> Result<(), StoreError> {
        self.update_status(name, UserStatus::Suspended, Some(reason), until)
            .await
    }

    async fn update_status(
        &self,
        name: &UserName,
        status: UserStatus,
        reason: Option<&str>,
        until: Option<i64>,
    ) -> Result<(), StoreError> {
        // One transaction: a suspension is written together with the end of everything
        // it takes away, or not at all. Resumed, a user proves a factor again before any
        // login, and logs in to the portal and the API again: nothing taken before the
        // suspension comes back.
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE users SET status = $1, status_reason = $2, suspended_until = $3 WHERE name = $4")
            .bind(status.as_str())
            .bind(reason)
            .bind(until)
            .bind(name.as_str())
            .execute(tx.conn()?)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {name}")));
        }
        if status != UserStatus::Active {
            for statement in [
                "DELETE FROM mfa_proofs WHERE user_name = $1",
                "DELETE FROM web_sessions WHERE user_name = $1",
            ] {
                sqlx::query(statement).bind(name.as_str()).execute(tx.conn()?).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Resume users whose suspension has run out; returns their names (each once, even
    /// with several nodes).
    pub async fn resume_due_users(&self) -> Result<Vec<String>, StoreError> {
        let now = now_micros();
        let due: Vec<String> =
            sqlx::query("SELECT name FROM users WHERE status = 'suspended' AND suspended_until <= $1")
                .bind(now)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
        let mut resumed = Vec::new();
        for name in due {
            let r = sqlx::query(
                "UPDATE users SET status = 'active', status_reason = NULL, suspended_until = NULL \
                 WHERE name = $1 AND status = 'suspended' AND suspended_until <= $2",
            )
            .bind(&name)
            .bind(now)
            .execute(&self.pool)
            .await?;
            if r.rows_affected() > 0 {
                resumed.push(name);
            }
        }
        Ok(resumed)
    }

    pub async fn remove_user(&self, name: &UserName) -> Result<(), StoreError> {
        // What the audit trail names stays, and so does its user.
        for (count, what) in [
            (
                "SELECT COUNT(*) FROM workstations WHERE owner = $1",
                "enrolled workstations",
            ),
            ("SELECT COUNT(*) FROM grants WHERE requester = $1", "access grants"),
        ] {
            let n: i64 = sqlx::query(count)
                .bind(name.as_str())
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
            if n > 0 {
                return Err(StoreError::Refused(format!(
                    "user {name} has {what}, kept for the audit trail: suspend the user instead"
                )));
            }
        }
        let mut tx = self.pool.begin().await?;
        // Everything that would let the name act again (tokens, factors, keys, votes on
        // requests still open) goes with it.
        for q in [
            "DELETE FROM totp WHERE user_name = $1",
            "DELETE FROM mfa_proofs WHERE user_name = $1",
            "DELETE FROM web_sessions WHERE user_name = $1",
            "DELETE FROM password_history WHERE user_name = $1",
            "DELETE FROM recovery_codes WHERE user_name = $1",
            "DELETE FROM security_keys WHERE user_name = $1",
            "DELETE FROM webauthn_states WHERE user_name = $1",
            "DELETE FROM ssh_approvals WHERE user_name = $1",
            "DELETE FROM grant_approvals WHERE approver = $1 \
             AND grant_id IN (SELECT id FROM grants WHERE status = 'pending')",
        ] {
            sqlx::query(q).bind(name.as_str()).execute(tx.conn()?).await?;
        }
        sqlx::query("DELETE FROM user_keys WHERE user_name = $1")
            .bind(name.as_str())
            .execute(tx.conn()?)
            .await?;
        sqlx::query("DELETE FROM role_bindings WHERE user_name = $1")
            .bind(name.as_str())
            .execute(tx.conn()?)
            .await?;
        let r = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name.as_str())
            .execute(tx.conn()?)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {name}")));
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn add_key(&self, user: &UserName, key: &PublicKey) -> Result<String, StoreError> {
        let fp = fingerprint(key);
        let text = key
            .to_openssh()
            .map_err(|e| StoreError::Invalid(format!("public key: {e}")))?;
        let r = sqlx::query(
            "INSERT INTO user_keys (fingerprint, user_name, public_key, comment, added_at) \
             SELECT $1, name, $2, $3, $4 FROM users WHERE name = $5",
        )
        .bind(&fp)
        .bind(text)
        .bind(key.comment().to_string())
        .bind(now_micros())
        .bind(user.as_str())
        .execute(&self.pool)
        .await;
        match r {
            Ok(r) if r.rows_affected() == 0 => Err(StoreError::NotFound(format!("user {user}"))),
            Ok(_) => Ok(fp),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Exists(format!("key {fp}"))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn remove_key(&self, user: &UserName, fp: &str) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM user_keys WHERE user_name = $1 AND fingerprint = $2")
            .bind(user.as_str())
            .bind(fp)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("key {fp} of user {user}")));
        }
        Ok(())
    }

    pub async fn keys_of(&self, user: &UserName) -> Result<Vec<KeyRow>, StoreError> {
        sqlx::query(
            "SELECT fingerprint, public_key, comment, added_at FROM user_keys WHERE user_name = $1 ORDER BY added_at",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(KeyRow {
                fingerprint: r.try_get(0)?,
                public_key: r.try_get(1)?,
                comment: r.try_get(2)?,
                added_at: r.try_get(3)?,
            })
        })
        .collect()
    }

    /// The user, if active and holding `key`; the check every public-key login makes.
    pub async fn active_user_with_key(&self, user: &UserName, key: &PublicKey) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM user_keys k JOIN users u ON u.name = k.user_name \
             WHERE k.user_name = $1 AND k.fingerprint = $2 AND u.status = 'active'",
        )
        .bind(user.as_str())
        .bind(fingerprint(key))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    pub async fn is_active(&self, user: &UserName) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM users WHERE name = $1 AND status = 'active'")
            .bind(user.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    pub async fn bind_role(&self, user: &UserName, role: &RoleName) -> Result<(), StoreError> {
        let r = sqlx::query("INSERT INTO role_bindings (user_name, role) SELECT name, $1 FROM users WHERE name = $2")
            .bind(role.as_str())
            .bind(user.as_str())
            .execute(&self.pool)
            .await;
        match r {
            Ok(r) if r.rows_affected() == 0 => Err(StoreError::NotFound(format!("user {user}"))),
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Exists(format!("binding of {user} to {role}"))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn unbind_role(&self, user: &UserName, role: &RoleName) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM role_bindings WHERE user_name = $1 AND role = $2")
            .bind(user.as_str())
            .bind(role.as_str())
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("binding of {user} to {role}")));
        }
        Ok(())
    }

    pub async fn roles_of(&self, user: &UserName) -> Result<Vec<RoleName>, StoreError> {
        sqlx::query("SELECT role FROM role_bindings WHERE user_name = $1 ORDER BY role")
            .bind(user.as_str())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let s: String = r.try_get(0)?;
                RoleName::parse(&s).map_err(|e| StoreError::Invalid(e.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEh4KR6w7B2dEyE62oDLhFFbFtVWeUwyH8zqz4pWX5VA alice@ws";

    use crate::store::test_session as session_of;

    #[tokio::test]
    async fn users_keys_roles_sessions_audit_on_every_backend() {
        for (backend, s) in crate::store::test_backends().await {
            users_keys_roles(&s).await;
            sessions_and_audit(&s).await;
            eprintln!("store tests passed on {backend}");
        }
    }

    /// A suspension is written with the end of the user's proofs and portal sessions, or
    /// not at all: a suspension that half happened would bring old sessions back on
    /// resume.
    #[tokio::test]
    async fn a_suspension_that_cannot_end_sessions_is_not_written_on_every_backend() {
        for (backend, s) in crate::store::test_backends().await {
            let alice = UserName::parse("alice").unwrap();
            s.add_user(&alice).await.unwrap();
            s.record_mfa_proof(&alice, "ws").await.unwrap();
            let far = now_micros() + 3_600_000_000;
            s.create_web_session("tok", &alice, "ws", "csrf", far).await.unwrap();
            let refuse: &[&str] = if backend == "sqlite" {
                &["CREATE TRIGGER refuse BEFORE DELETE ON web_sessions BEGIN SELECT RAISE(ABORT, 'refused'); END"]
            } else {
                &[
                    "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql",
                    "CREATE TRIGGER refuse BEFORE DELETE ON web_sessions FOR EACH STATEMENT EXECUTE FUNCTION refuse()",
                ]
            };
            for statement in refuse {
                sqlx::query(sqlx::AssertSqlSafe(*statement))
                    .execute(&s.pool)
                    .await
                    .unwrap();
            }
            assert!(s.suspend_user(&alice, "test", None).await.is_err(), "{backend}");
            let u = s.user(&alice).await.unwrap().unwrap();
            assert_eq!(u.status, UserStatus::Active, "{backend}: nothing written");
            assert!(s.last_mfa_proof(&alice, "ws").await.unwrap().is_some(), "{backend}");
            let drop = if backend == "sqlite" {
                "DROP TRIGGER refuse"
            } else {
                "DROP TRIGGER refuse ON web_sessions"
            };
            sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&s.pool).await.unwrap();
            s.suspend_user(&alice, "test", None).await.unwrap();
            assert!(s.web_session("tok").await.unwrap().is_none(), "{backend}");
            assert!(s.last_mfa_proof(&alice, "ws").await.unwrap().is_none(), "{backend}");
            let u = s.user(&alice).await.unwrap().unwrap();
            assert_eq!(u.status, UserStatus::Suspended, "{backend}");
            // A login finishing after the suspension leaves nothing for the resume.
            assert!(s.record_mfa_proof(&alice, "ws").await.is_err(), "{backend}");
            assert!(
                s.create_web_session("tok2", &alice, "ws", "csrf", far).await.is_err(),
                "{backend}"
            );
            s.set_user_status(&alice, UserStatus::Active, None).await.unwrap();
            assert!(s.last_mfa_proof(&alice, "ws").await.unwrap().is_none(), "{backend}");
            assert!(s.web_session("tok2").await.unwrap().is_none(), "{backend}");
            s.record_mfa_proof(&alice, "ws").await.unwrap();
            assert!(s.last_mfa_proof(&alice, "ws").await.unwrap().is_some(), "{backend}");
        }
    }

    /// Remote `recordings verify --all` reads every row page by page: each row must come
    /// exactly once, in order, even when rows share a start time.
    #[tokio::test]
    async fn session_pages_cover_every_row_once_on_every_backend() {
        use crate::ident::SessionId;
        use crate::store::SessionRow;
        for (backend, s) in crate::store::test_backends().await {
            s.add_user(&UserName::parse("pat").unwrap()).await.unwrap();
            let ids: Vec<SessionId> = (0..7).map(|_| SessionId::random()).collect();
            for id in &ids {
                s.session_started(&session_of("pat", id)).await.unwrap();
            }
            // Three share one start time, as rows written in the same microsecond would.
            for id in &ids[2..5] {
                sqlx::query("UPDATE sessions SET started_at = $1 WHERE id = $2")
                    .bind(1_000i64)
                    .bind(id.as_str())
                    .execute(&s.pool)
                    .await
                    .unwrap();
            }
            let all = s.sessions(false, 100).await.unwrap();
            assert_eq!(all.len(), 7, "{backend}");
            let mut paged: Vec<SessionRow> = Vec::new();
            loop {
                let after = paged.last().map(SessionRow::cursor);
                let page = s.sessions_page(false, 2, after.as_ref()).await.unwrap();
                assert!(page.len() <= 2, "{backend}");
                if page.is_empty() {
                    break;
                }
                paged.extend(page);
            }
            let ids_of = |v: &[SessionRow]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
            assert_eq!(ids_of(&paged), ids_of(&all), "{backend}");
            // The live listing pages the same way.
            s.session_ended(&ids[3], "exit").await.unwrap();
            let live = s.sessions_page(true, 10, Some(&all[1].cursor())).await.unwrap();
            assert_eq!(live.len(), 4, "{backend}: rows after the second, one of them ended");
            assert!(live.iter().all(|r| r.ended_at.is_none()), "{backend}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_users_live_sessions_are_counted_against_a_limit_on_every_backend() {
        use crate::ident::SessionId;
        use crate::store::SessionStart;
        for (backend, s) in crate::store::test_backends().await {
            let carol = UserName::parse("carol").unwrap();
            s.add_user(&carol).await.unwrap();
            let ids: Vec<SessionId> = (0..16).map(|_| SessionId::random()).collect();
            // Sixteen starts at once on two "nodes", at most three live sessions.
            let mut starts = tokio::task::JoinSet::new();
            for (i, id) in ids.iter().enumerate() {
                let (s, id) = (s.clone(), id.clone());
                starts.spawn(async move {
                    let row = SessionStart {
                        node: if i % 2 == 0 { "n1" } else { "n2" },
                        ..session_of("carol", &id)
                    };
                    s.session_started_within(&row, 3).await.unwrap().then_some(id)
                });
            }
            let mut started = Vec::new();
            while let Some(r) = starts.join_next().await {
                started.extend(r.unwrap());
            }
            assert_eq!(started.len(), 3, "{backend}: exactly the limit starts");
            assert_eq!(s.live_sessions_of("carol").await.unwrap(), 3, "{backend}");
            assert_eq!(
                s.sessions(true, 100).await.unwrap().len(),
                3,
                "{backend}: refused starts write nothing"
            );
            // An ended session frees its place; other users do not count.
            s.session_ended(&started[0], "done").await.unwrap();
            assert_eq!(s.live_sessions_of("carol").await.unwrap(), 2, "{backend}");
            let next = SessionId::random();
            assert!(
                s.session_started_within(&session_of("carol", &next), 3).await.unwrap(),
                "{backend}"
            );
            assert!(
                !s.session_started_within(&session_of("carol", &SessionId::random()), 3)
                    .await
                    .unwrap(),
                "{backend}"
            );
            assert_eq!(s.live_sessions_of("nobody").await.unwrap(), 0, "{backend}");
            // A row left open past its maximum length (by a node that crashed and never
            // came back) no longer counts.
            s.session_ended(&next, "done").await.unwrap();
            let stale = SessionId::random();
            s.session_started(&SessionStart {
                ends_by: crate::store::now_micros() - 1,
                ..session_of("carol", &stale)
            })
            .await
            .unwrap();
            assert_eq!(
                s.sessions(true, 100).await.unwrap().len(),
                3,
                "{backend}: still listed as open"
            );
            assert_eq!(s.live_sessions_of("carol").await.unwrap(), 2, "{backend}");
            assert!(
                s.session_started_within(&session_of("carol", &SessionId::random()), 3)
                    .await
                    .unwrap(),
                "{backend}"
            );
            eprintln!("session limit tests passed on {backend}");
        }
    }

    async fn users_keys_roles(s: &Store) {
        let alice = UserName::parse("alice").unwrap();
        let key = PublicKey::from_openssh(KEY).unwrap();
        assert!(matches!(s.add_key(&alice, &key).await, Err(StoreError::NotFound(_))));
        s.add_user(&alice).await.unwrap();
        assert!(matches!(s.add_user(&alice).await, Err(StoreError::Exists(_))));
        let fp = s.add_key(&alice, &key).await.unwrap();
        assert!(matches!(s.add_key(&alice, &key).await, Err(StoreError::Exists(_))));
        assert!(s.active_user_with_key(&alice, &key).await.unwrap());
        s.bind_role(&alice, &RoleName::parse("dev").unwrap()).await.unwrap();
        let u = s.user(&alice).await.unwrap().unwrap();
        assert_eq!(u.roles, vec!["dev"]);
        assert_eq!(u.keys[0].fingerprint, fp);
        assert_eq!(s.users().await.unwrap().len(), 1);
        s.set_user_status(&alice, UserStatus::Suspended, Some("left"))
            .await
            .unwrap();
        assert!(
            !s.active_user_with_key(&alice, &key).await.unwrap(),
            "suspension locks keys out"
        );
        s.set_user_status(&alice, UserStatus::Active, None).await.unwrap();
        s.remove_key(&alice, &fp).await.unwrap();
        assert!(!s.active_user_with_key(&alice, &key).await.unwrap());
        s.remove_user(&alice).await.unwrap();
        assert!(s.user(&alice).await.unwrap().is_none());
    }

    async fn sessions_and_audit(s: &Store) {
        use crate::ident::SessionId;
        use crate::store::{AuditEvent, SessionStart, Severity};
        let bob = UserName::parse("bob").unwrap();
        s.add_user(&bob).await.unwrap();
        let id = SessionId::random();
        s.session_started(&session_of("bob", &id)).await.unwrap();
        assert!(s.sessions_to_end("n1").await.unwrap().is_empty());
        assert!(s.request_kill(&id, "local:root").await.unwrap());
        assert_eq!(
            s.sessions_to_end("n1").await.unwrap(),
            vec![(id.to_string(), "killed by local:root".to_string())]
        );
        assert!(
            s.sessions_to_end("n2").await.unwrap().is_empty(),
            "other nodes do not see it"
        );
        // Withdrawing what a user's sessions may rest on ends them all, on every node,
        // keeping an earlier kill's reason.
        let (other, elsewhere) = (SessionId::random(), SessionId::random());
        s.session_started(&session_of("bob", &other)).await.unwrap();
        s.session_started(&SessionStart {
            node: "n2",
            ..session_of("bob", &elsewhere)
        })
        .await
        .unwrap();
        assert_eq!(
            s.request_kill_of_user("bob", "admin ann (role x unbound)")
                .await
                .unwrap(),
            2
        );
        let mut ending = s.sessions_to_end("n1").await.unwrap();
        ending.sort();
        let mut want = vec![
            (id.to_string(), "killed by local:root".to_string()),
            (other.to_string(), "killed by admin ann (role x unbound)".to_string()),
        ];
        want.sort();
        assert_eq!(ending, want);
        assert_eq!(s.sessions_to_end("n2").await.unwrap().len(), 1);
        s.session_ended(&other, "killed").await.unwrap();
        s.session_ended(&elsewhere, "killed").await.unwrap();
        // Cut, its recording still being sealed: live, with its reason; the first
        // reason stays.
        s.session_ending(&id, "killed").await.unwrap();
        s.session_ending(&id, "idle timeout").await.unwrap();
        let ending = s.sessions(true, 10).await.unwrap();
        assert_eq!(ending.len(), 1);
        assert_eq!(ending[0].end_reason.as_deref(), Some("killed"));
        assert_eq!(ending[0].ended_at, None);
        s.session_ended(&id, "killed").await.unwrap();
        assert!(
            !s.request_kill(&id, "x").await.unwrap(),
            "ended sessions cannot be killed"
        );
        assert_eq!(s.sessions(true, 10).await.unwrap().len(), 0);
        assert_eq!(
            s.sessions(false, 10).await.unwrap()[0].end_reason.as_deref(),
            Some("killed")
        );

        // A suspended user's live session is reported for ending.
        let id2 = SessionId::random();
        s.session_started(&session_of("bob", &id2)).await.unwrap();
        s.set_user_status(&bob, UserStatus::Suspended, None).await.unwrap();
        assert_eq!(s.sessions_to_end("n1").await.unwrap()[0].1, "user suspended");
        // Cut while its node crashed mid-seal: the restart keeps why it ended.
        s.session_ending(&id2, "user suspended").await.unwrap();
        assert_eq!(s.close_orphaned_sessions("n1").await.unwrap(), 1);
        let row = s.session(&id2).await.unwrap().unwrap();
        assert_eq!(row.end_reason.as_deref(), Some("user suspended"));
        assert!(row.ended_at.is_some());
        s.set_user_status(&bob, UserStatus::Active, None).await.unwrap();

        // A session under a grant ends when the grant is revoked; approvals and state
        // changes are conditional (a second activation or denial changes nothing).
        use crate::store::{GrantStatus, NewGrant};
        let gid = crate::ident::GrantId::random();
        s.create_grant(&NewGrant {
            id: &gid,
            requester: &bob,
            tier: "web",
            target: None,
            login: None,
            duration_secs: 600,
            reason: "INC-1",
        })
        .await
        .unwrap();
        let carol = UserName::parse("carol").unwrap();
        s.add_user(&carol).await.unwrap();
        s.add_approval(&gid, &carol, false, "").await.unwrap();
        assert!(matches!(
            s.add_approval(&gid, &carol, false, "").await,
            Err(StoreError::Exists(_))
        ));
        assert!(s.activate_grant(&gid, 600).await.unwrap().is_some());
        assert!(s.activate_grant(&gid, 600).await.unwrap().is_none());
        assert!(!s.end_grant(&gid, GrantStatus::Denied, "carol", "no").await.unwrap());
        assert_eq!(s.active_grants(&bob).await.unwrap().len(), 1);
        let id3 = SessionId::random();
        s.session_started(&SessionStart {
            grant: Some(gid.as_str()),
            ..session_of("bob", &id3)
        })
        .await
        .unwrap();
        assert!(s.sessions_to_end("n1").await.unwrap().is_empty());
        assert!(s.end_grant(&gid, GrantStatus::Revoked, "carol", "done").await.unwrap());
        assert_eq!(
            s.sessions_to_end("n1").await.unwrap()[0].1,
            format!("access grant {gid} revoked by carol: done")
        );
        assert!(s.active_grants(&bob).await.unwrap().is_empty());
        let told = s.take_grant_outcomes(&bob).await.unwrap();
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].approvals[0].approver, "carol");
        assert!(s.take_grant_outcomes(&bob).await.unwrap().is_empty());
        assert_eq!(s.close_orphaned_sessions("n1").await.unwrap(), 1);

        s.audit(&AuditEvent::new("login.failure", Severity::Warning, "x").user("bob"))
            .await
            .unwrap();
        s.audit(&AuditEvent::new("login.success", Severity::Info, "y"))
            .await
            .unwrap();
        assert_eq!(s.audit_events(Some("login.failure"), 10).await.unwrap().len(), 1);
        assert_eq!(s.audit_events(None, 10).await.unwrap().len(), 2);
    }
}
