//! Durable state: users, their keys and role bindings, the gateway's sealed keys, live
//! sessions and the audit log. One code base for SQLite (embedded default) and
//! PostgreSQL, through sqlx's `Any` driver with portable SQL.

mod audit;
mod grants;
mod home;
mod mfa;
mod nodes;
mod portal;
mod sessions;
mod users;
mod webauthn;
mod workstations;

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::ConnectOptions;

pub use audit::{AuditCheckpoint, AuditEvent, AuditFilter, AuditRow, Severity};
pub use grants::{ApprovalRow, GrantFilter, GrantRow, GrantStatus, NewGrant};
pub use nodes::{Heartbeat, NodeRemoval, NodeReport, NodeRow, STOPPED_INSTANCE};
pub use portal::{PasswordChange, WebSession};
pub use sessions::{SessionCursor, SessionRow, SessionStart};
pub use users::{fingerprint, KeyRow, UserRow, UserStatus};
pub use webauthn::{Approval, SecurityKeyRow};
pub use workstations::{ActivePeer, PeerEndpoint, WorkstationRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("stored data is invalid: {0}")]
    Invalid(String),
    /// The change is not allowed in the object's present state (the text says why).
    #[error("{0}")]
    Refused(String),
}

/// Unix time in microseconds.
/// A duration in microseconds, as the store keeps times; saturating, so that a long
/// configured duration never wraps into a negative one.
pub fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(micros).unwrap_or(0)
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: home::HomePool,
    /// Where this process forwards the audit events it appends (`[audit] syslog`).
    syslog: Option<std::sync::Arc<crate::audit_log::syslog::Syslog>>,
    /// What a `SELECT` that must see a row's committed state, and keep it until the
    /// transaction ends, appends: `FOR SHARE` on PostgreSQL (which waits for a writer
    /// of the row and re-checks the row after it); nothing on SQLite, whose writers run
    /// one at a time.
    share_lock: &'static str,
}

impl Store {
    /// An insert for `user` that happens only while the user is active, checked in the
    /// same statement (see [`Store::share_lock`]): a suspension committed first stops
    /// it, and one committed after it deletes what it wrote.
    fn while_active(&self, insert_select: &str) -> String {
        format!(
            "{insert_select} FROM users WHERE name = $1 AND status = 'active'{}",
            self.share_lock
        )
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Open the database. With `create`, a missing SQLite file is created; otherwise
    /// it must exist (so a typo in the path is an error, not an empty gateway).
    pub async fn connect(url: &str, create: bool) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite {
            let mode = if create { "rwc" } else { "rw" };
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode={mode}")
        } else {
            url.to_owned()
        };
        let opts = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        if sqlite {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        Ok(Store {
            pool: home::HomePool::here(pool),
            syslog: None,
            share_lock: if sqlite { "" } else { " FOR SHARE" },
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(self.pool.inner()).await?;
        // Rows from before the audit chain (or from an older node) join it in order.
        let chained = self.chain_unchained_audit().await?;
        if chained > 0 {
            tracing::info!(chained, "audit events chained");
        }
        Ok(())
    }

    /// Forward every audit event this store appends to `syslog`.
    pub fn with_syslog(mut self, syslog: std::sync::Arc<crate::audit_log::syslog::Syslog>) -> Self {
        self.syslog = Some(syslog);
        self
    }

    /// Close the pool, after handing the queued audit events to syslog (at most 2 s).
    pub async fn close(&self) {
        if let Some(s) = self.syslog.clone() {
            let _ = tokio::task::spawn_blocking(move || s.close()).await;
        }
        self.pool.close().await;
    }

    /// Store a sealed gateway key; refuses to replace one.
    pub async fn put_gateway_key(&self, name: &str, public: &str, sealed: &str) -> Result<(), StoreError> {
        let r = sqlx::query("INSERT INTO gateway_keys (name, public_key, sealed, created_at) VALUES ($1, $2, $3, $4)")
            .bind(name)
            .bind(public)
            .bind(sealed)
            .bind(now_micros())
            .execute(&self.pool)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Exists(format!("gateway key {name}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// `(public, sealed)` of a gateway key.
    pub async fn gateway_key(&self, name: &str) -> Result<(String, String), StoreError> {
        use sqlx::Row;
        let row = sqlx::query("SELECT public_key, sealed FROM gateway_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("gateway key {name}")))?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    pub async fn has_gateway_keys(&self) -> Result<bool, StoreError> {
        use sqlx::Row;
        let row = sqlx::query("SELECT COUNT(*) FROM gateway_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }
}

/// A failure counter with its lock on the users table (second factor, portal login).
#[derive(Clone, Copy)]
pub enum Lockout {
    SecondFactor,
    Login,
}

impl Lockout {
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            Lockout::SecondFactor => ("mfa_failures", "mfa_locked_until"),
            Lockout::Login => ("login_failures", "login_locked_until"),
        }
    }
}

impl Store {
    /// Count a failure; from `max` in a row the user is locked for `lock_micros`, doubled
    /// for every further failure (at most a day). Returns the count and the lock, if one
    /// is now in force.
    pub(crate) async fn count_failure(
        &self,
        which: Lockout,
        user: &crate::ident::UserName,
        max: i64,
        lock_micros: i64,
    ) -> Result<(i64, Option<i64>), StoreError> {
        let n = self.bump_failures(which, user).await?;
        Ok((n, self.lock_after(which, user, n, max, lock_micros).await?))
    }

    /// Add one to the failure count (atomically) and return it.
    pub(crate) async fn bump_failures(&self, which: Lockout, user: &crate::ident::UserName) -> Result<i64, StoreError> {
        use sqlx::Row;
        let (failures, _) = which.columns();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE users SET {failures} = {failures} + 1 WHERE name = $1"
        )))
        .bind(user.as_str())
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {failures} FROM users WHERE name = $1"
        )))
        .bind(user.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(0))
    }

    /// Take back one count of [`Store::bump_failures`]: the attempt it counted turned
    /// out not to be a failure.
    pub(crate) async fn unbump_failures(
        &self,
        which: Lockout,
        user: &crate::ident::UserName,
    ) -> Result<(), StoreError> {
        let (failures, _) = which.columns();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE users SET {failures} = {failures} - 1 WHERE name = $1 AND {failures} > 0"
        )))
        .bind(user.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// With `n` failures counted, lock the user if `n` reached `max` (for `lock_micros`,
    /// doubled per failure beyond, at most a day).
    pub(crate) async fn lock_after(
        &self,
        which: Lockout,
        user: &crate::ident::UserName,
        n: i64,
        max: i64,
        lock_micros: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (_, locked) = which.columns();
        if n < max {
            return Ok(None);
        }
        let until = now_micros()
            + lock_micros
                .saturating_mul(1i64 << (n - max).clamp(0, 10))
                .min(86_400_000_000);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE users SET {locked} = $1 WHERE name = $2"
        )))
        .bind(until)
        .bind(user.as_str())
        .execute(&self.pool)
        .await?;
        Ok(Some(until))
    }

    /// Until when (Unix µs) `user` is locked, if they are now.
    pub(crate) async fn locked_until(
        &self,
        which: Lockout,
        user: &crate::ident::UserName,
    ) -> Result<Option<i64>, StoreError> {
        use sqlx::Row;
        let (_, locked) = which.columns();
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {locked} FROM users WHERE name = $1"
        )))
        .bind(user.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let until: Option<i64> = match r {
            Some(r) => r.try_get(0)?,
            None => None,
        };
        Ok(until.filter(|u| *u > now_micros()))
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation() || d.message().contains("UNIQUE") || d.code().as_deref() == Some("23505")
        }
        _ => false,
    }
}

#[cfg(test)]
impl Store {
    /// Raw access for tests that tamper with rows.
    pub(crate) fn pool(&self) -> &sqlx::AnyPool {
        self.pool.inner()
    }
}

/// A recording header for tests: session `id` of alice on db1, tier `tier`.
#[cfg(test)]
pub(crate) fn test_header(id: &str, tier: &str, started_at_micros: u64) -> session_recordings::Header {
    session_recordings::Header {
        session_id: id.into(),
        user: "alice".into(),
        client_addr: "10.77.0.2:40000".into(),
        workstation: None,
        target: "db1".into(),
        target_addr: "127.0.0.1:22".into(),
        tier: tier.into(),
        login: "deploy".into(),
        role: "dba".into(),
        grant: None,
        decision: "test".into(),
        started_at_micros,
        previous: None,
        signing_key: String::new(),
        encryption: None,
    }
}

/// A fresh, empty directory for one test (`tag` names it in `/tmp`).
#[cfg(test)]
pub(crate) fn test_dir(tag: &str) -> std::path::PathBuf {
    use rand::RngExt;
    let dir = std::env::temp_dir().join(format!(
        "herse-{tag}-{}-{}",
        std::process::id(),
        hex::encode(rand::rng().random::<[u8; 6]>())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A session of `user` on node n1, open until it is ended (store tests).
#[cfg(test)]
pub(crate) fn test_session<'a>(user: &'a str, id: &'a crate::ident::SessionId) -> SessionStart<'a> {
    SessionStart {
        id,
        node: "n1",
        user,
        target: "web1",
        tier: "web",
        login: "deploy",
        client_addr: "a",
        workstation: None,
        recording: "r",
        grant: None,
        ends_by: i64::MAX,
    }
}

#[cfg(test)]
pub(crate) async fn memory_store() -> Store {
    // One connection: every pooled `sqlite::memory:` connection is its own database.
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let s = Store {
        pool: home::HomePool::here(pool),
        syslog: None,
        share_lock: "",
    };
    s.migrate().await.unwrap();
    s
}

/// Every backend the store tests run on: SQLite always, and a fresh PostgreSQL database
/// when `HERSE_TEST_POSTGRES_URL` names a server (`scripts/test-all` starts one and sets
/// `HERSE_REQUIRE_POSTGRES`, so CI cannot skip it silently).
#[cfg(test)]
pub(crate) async fn test_backends() -> Vec<(&'static str, Store)> {
    let mut out = vec![("sqlite", memory_store().await)];
    match std::env::var("HERSE_TEST_POSTGRES_URL") {
        Ok(admin_url) => {
            use rand::RngExt;
            let name = format!("herse_test_{}", hex::encode(rand::rng().random::<[u8; 6]>()));
            let admin = AnyPoolOptions::new()
                .max_connections(1)
                .connect(&admin_url)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let url = match admin_url.rsplit_once('/') {
                Some((base, _)) => format!("{base}/{name}"),
                None => panic!("HERSE_TEST_POSTGRES_URL must end in /DATABASE"),
            };
            let s = Store::connect(&url, false).await.unwrap();
            s.migrate().await.unwrap();
            out.push(("postgres", s));
        }
        Err(_) => assert!(
            std::env::var_os("HERSE_REQUIRE_POSTGRES").is_none(),
            "HERSE_REQUIRE_POSTGRES is set but HERSE_TEST_POSTGRES_URL is not"
        ),
    }
    out
}

#[cfg(test)]
#[test]
fn a_duration_too_long_for_microseconds_saturates() {
    use std::time::Duration;
    assert_eq!(micros(Duration::from_secs(86_400)), 86_400_000_000);
    // humantime takes "300000000years": it must stay longer than any age, not wrap.
    assert_eq!(micros(Duration::from_secs(u64::MAX)), i64::MAX);
}
