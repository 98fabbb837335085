//! The audit log: a hash chain of events (encoding in `crate::audit_log::chain`), its
//! head, and signed checkpoints of the head.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{is_unique_violation, now_micros, Store, StoreError};
use crate::audit_log::chain::{self, EventFields};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Alert,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Alert => "alert",
        }
    }
}

/// A security event. `detail` must never contain a credential.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub kind: &'static str,
    pub severity: Severity,
    pub user: Option<String>,
    pub session: Option<String>,
    pub client_addr: Option<String>,
    /// The enrolled workstation the connection came through, if any.
    pub workstation: Option<String>,
    pub detail: String,
}

impl AuditEvent {
    pub fn new(kind: &'static str, severity: Severity, detail: impl Into<String>) -> Self {
        Self {
            kind,
            severity,
            user: None,
            session: None,
            client_addr: None,
            workstation: None,
            detail: detail.into(),
        }
    }
    pub fn user(mut self, u: impl ToString) -> Self {
        self.user = Some(u.to_string());
        self
    }
    pub fn session(mut self, s: impl ToString) -> Self {
        self.session = Some(s.to_string());
        self
    }
    pub fn client(mut self, a: impl ToString) -> Self {
        self.client_addr = Some(a.to_string());
        self
    }
    pub fn workstation(mut self, w: impl ToString) -> Self {
        self.workstation = Some(w.to_string());
        self
    }
    /// Client address and workstation of a connection.
    pub fn origin(mut self, o: &crate::origin::Origin) -> Self {
        self.client_addr = Some(o.addr.to_string());
        self.workstation = o.workstation().map(|w| w.to_string());
        self
    }
}

/// A stored event. `seq`, `prev_hash` and `hash` are NULL only for a row not chained yet
/// (written by a gateway that predates the chain).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AuditRow {
    pub seq: Option<i64>,
    pub id: String,
    pub at: i64,
    pub kind: String,
    pub severity: String,
    pub user: Option<String>,
    pub session: Option<String>,
    pub client_addr: Option<String>,
    pub workstation: Option<String>,
    pub detail: String,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// Which events to list: every bound is optional (`at` in Unix microseconds).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    /// At or after.
    pub since: Option<i64>,
    /// Before.
    pub until: Option<i64>,
    pub user: Option<String>,
    pub kind: Option<String>,
}

/// A signed head of the chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditCheckpoint {
    pub seq: i64,
    pub hash: String,
    pub signed_at: i64,
    pub node: String,
    pub signature: String,
}

const COLUMNS: &str =
    "seq, id, at, kind, severity, user_name, session_id, client_addr, workstation, detail, prev_hash, hash";

fn row(r: &AnyRow) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        seq: r.try_get(0)?,
        id: r.try_get(1)?,
        at: r.try_get(2)?,
        kind: r.try_get(3)?,
        severity: r.try_get(4)?,
        user: r.try_get(5)?,
        session: r.try_get(6)?,
        client_addr: r.try_get(7)?,
        workstation: r.try_get(8)?,
        detail: r.try_get(9)?,
        prev_hash: r.try_get(10)?,
        hash: r.try_get(11)?,
    })
}

/// How many unchained rows one transaction chains at start.
const CHAIN_BATCH: i64 = 500;

impl Store {
    /// Append an event to the chain (and hand it to the syslog forwarder, if any).
    pub async fn audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let row = self.append_audit(e).await?;
        if let Some(s) = &self.syslog {
            s.send(&row);
        }
        Ok(())
    }

    /// Append an event: one transaction that starts by bumping the head row, so appends
    /// from every process and node on this database are serialised (SQLite takes the
    /// write lock first, so no read-to-write upgrade can fail; PostgreSQL locks the row).
    pub async fn append_audit(&self, e: &AuditEvent) -> Result<AuditRow, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = Self::append_in(&mut tx, e).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Apply `change` and append `e` in one transaction: both happen, or neither.
    /// `change` returns whether it changed anything; when it did not, nothing is
    /// written and this returns false. The head row is locked first, as every append
    /// locks it, so this orders with other appends without deadlock.
    pub(crate) async fn audited_change(
        &self,
        e: &AuditEvent,
        change: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = Self::append_in(&mut tx, e).await?;
        if change.execute(tx.conn()?).await?.rows_affected() == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        if let Some(s) = &self.syslog {
            s.send(&row);
        }
        Ok(true)
    }

    /// Append `e` within `tx`: bumps the head row first (the lock every append takes).
    async fn append_in(tx: &mut super::home::HomeTx, e: &AuditEvent) -> Result<AuditRow, StoreError> {
        sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1")
            .execute(tx.conn()?)
            .await?;
        let (seq, prev_hex) = head_in(tx).await?;
        let prev =
            chain::parse_hash(&prev_hex).ok_or_else(|| StoreError::Invalid(format!("audit head hash {prev_hex:?}")))?;
        let mut r = AuditRow {
            seq: Some(seq),
            id: crate::ident::SessionId::random().to_string(),
            at: now_micros(),
            kind: e.kind.to_owned(),
            severity: e.severity.as_str().to_owned(),
            user: e.user.clone(),
            session: e.session.clone(),
            client_addr: e.client_addr.clone(),
            workstation: e.workstation.clone(),
            detail: e.detail.clone(),
            prev_hash: Some(prev_hex),
            hash: None,
        };
        let hash = hex::encode(chain::event_hash(&EventFields::of(&r, seq), &prev));
        sqlx::query(
            "INSERT INTO audit_events (seq, id, at, kind, severity, user_name, session_id, client_addr, \
             workstation, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(seq)
        .bind(&r.id)
        .bind(r.at)
        .bind(&r.kind)
        .bind(&r.severity)
        .bind(r.user.as_deref())
        .bind(r.session.as_deref())
        .bind(r.client_addr.as_deref())
        .bind(r.workstation.as_deref())
        .bind(&r.detail)
        .bind(r.prev_hash.as_deref())
        .bind(&hash)
        .execute(tx.conn()?)
        .await?;
        sqlx::query("UPDATE audit_head SET hash = $1, updated_at = $2 WHERE id = 1")
            .bind(&hash)
            .bind(r.at)
            .execute(tx.conn()?)
            .await?;
        r.hash = Some(hash);
        Ok(r)
    }

    /// Chain rows that have no `seq` yet (written before the chain existed), in `at`
    /// order, after the current head. Returns how many were chained.
    pub(crate) async fn chain_unchained_audit(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        while self.unchained_audit_count().await? > 0 {
            let mut tx = self.pool.begin().await?;
            // A write first: the same lock as an append.
            sqlx::query("UPDATE audit_head SET updated_at = updated_at WHERE id = 1")
                .execute(tx.conn()?)
                .await?;
            let (mut seq, prev_hex) = head_in(&mut tx).await?;
            let mut prev = chain::parse_hash(&prev_hex)
                .ok_or_else(|| StoreError::Invalid(format!("audit head hash {prev_hex:?}")))?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM audit_events WHERE seq IS NULL ORDER BY at, id LIMIT $1"
            )))
            .bind(CHAIN_BATCH)
            .fetch_all(tx.conn()?)
            .await?;
            for r in &rows {
                let r = row(r)?;
                seq += 1;
                let hash = chain::event_hash(&EventFields::of(&r, seq), &prev);
                sqlx::query("UPDATE audit_events SET seq = $1, prev_hash = $2, hash = $3 WHERE id = $4")
                    .bind(seq)
                    .bind(hex::encode(prev))
                    .bind(hex::encode(hash))
                    .bind(&r.id)
                    .execute(tx.conn()?)
                    .await?;
                prev = hash;
                total += 1;
            }
            sqlx::query("UPDATE audit_head SET seq = $1, hash = $2, updated_at = $3 WHERE id = 1")
                .bind(seq)
                .bind(hex::encode(prev))
                .bind(now_micros())
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
        }
        Ok(total)
    }

    /// Rows without a `seq`.
    pub async fn unchained_audit_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM audit_events WHERE seq IS NULL")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    /// The head of the chain: `(seq, hash hex)`; `(0, zeros)` when it is empty.
    pub async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        let r = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound("audit head".into()))?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    }

    /// Chained events with `after < seq <= up_to`, in chain order, at most `limit`.
    pub async fn audit_chain_page(&self, after: i64, up_to: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
        )))
        .bind(after)
        .bind(up_to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(row)
        .collect()
    }

    /// Chained events matching `f`: with `after = Some(n)`, the first `limit` with
    /// `seq > n`; otherwise the last `limit`. Oldest first either way.
    pub async fn audit_query(
        &self,
        f: &AuditFilter,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let order = if after.is_some() { "ASC" } else { "DESC" };
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 \
             AND ($2 IS NULL OR at >= $2) AND ($3 IS NULL OR at < $3) \
             AND ($4 IS NULL OR user_name = $4) AND ($5 IS NULL OR kind = $5) \
             ORDER BY seq {order} LIMIT $6"
        )))
        .bind(after.unwrap_or(0))
        .bind(f.since)
        .bind(f.until)
        .bind(f.user.as_deref())
        .bind(f.kind.as_deref())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(row)
        .collect::<Result<Vec<_>, _>>()?;
        if after.is_none() {
            rows.reverse();
        }
        Ok(rows)
    }

    /// The newest `limit` events, of one kind if given, newest first.
    pub async fn audit_events(&self, kind: Option<&str>, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let f = AuditFilter {
            kind: kind.map(str::to_owned),
            ..AuditFilter::default()
        };
        let mut rows = self.audit_query(&f, None, limit).await?;
        rows.reverse();
        Ok(rows)
    }

    /// Store a checkpoint; `false` if this node already signed that `seq`.
    pub async fn put_audit_checkpoint(&self, c: &AuditCheckpoint) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, signed_at, node, signature) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(c.seq)
        .bind(&c.hash)
        .bind(c.signed_at)
        .bind(&c.node)
        .bind(&c.signature)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Overwrite the row of `c`'s node at `c.seq` whose signature is `stale` (a row
    /// planted there that does not verify); `false` if that row is no longer so.
    pub async fn replace_audit_checkpoint(&self, c: &AuditCheckpoint, stale: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE audit_checkpoints SET hash = $1, signed_at = $2, signature = $3 \
             WHERE seq = $4 AND node = $5 AND signature = $6",
        )
        .bind(&c.hash)
        .bind(c.signed_at)
        .bind(&c.signature)
        .bind(c.seq)
        .bind(&c.node)
        .bind(stale)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every checkpoint, by `seq`.
    pub async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>, StoreError> {
        self.checkpoints_where(None, i64::MIN).await
    }

    /// The checkpoints signing a `seq` after `seq`, by `seq`: what a verification that
    /// starts from a point already verified needs.
    pub async fn audit_checkpoints_after(&self, seq: i64) -> Result<Vec<AuditCheckpoint>, StoreError> {
        self.checkpoints_where(None, seq).await
    }

    /// The checkpoints signing exactly `seq`.
    pub async fn audit_checkpoints_at(&self, seq: i64) -> Result<Vec<AuditCheckpoint>, StoreError> {
        self.checkpoints_where(Some(seq), i64::MIN).await
    }

    async fn checkpoints_where(&self, seq: Option<i64>, after: i64) -> Result<Vec<AuditCheckpoint>, StoreError> {
        sqlx::query(
            "SELECT seq, hash, signed_at, node, signature FROM audit_checkpoints WHERE ($1 IS NULL OR seq = $1) \
             AND seq > $2 ORDER BY seq, node",
        )
        .bind(seq)
        .bind(after)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(AuditCheckpoint {
                seq: r.try_get(0)?,
                hash: r.try_get(1)?,
                signed_at: r.try_get(2)?,
                node: r.try_get(3)?,
                signature: r.try_get(4)?,
            })
        })
        .collect()
    }

    /// The highest checkpointed `seq` (0 when none).
    pub async fn last_audit_checkpoint_seq(&self) -> Result<i64, StoreError> {
        let r = sqlx::query("SELECT MAX(seq) FROM audit_checkpoints")
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }
}

async fn head_in(tx: &mut super::home::HomeTx) -> Result<(i64, String), StoreError> {
    let r = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(tx.conn()?)
        .await?
        .ok_or_else(|| StoreError::NotFound("audit head".into()))?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}
