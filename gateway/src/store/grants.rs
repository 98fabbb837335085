//! Access grants and their approvals. Every state change is one conditional `UPDATE`
//! (`WHERE status = 'pending'` …), so two managers or two nodes racing can never both
//! win: the loser sees zero rows changed.

use sqlx::Row;

use super::{is_unique_violation, now_micros, Store, StoreError};
use crate::access::ApprovalVote;
use crate::ident::{GrantId, UserName};

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    Pending,
    Active,
    Denied,
    Revoked,
    Expired,
    /// Pending for longer than requests may wait.
    Lapsed,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Pending => "pending",
            GrantStatus::Active => "active",
            GrantStatus::Denied => "denied",
            GrantStatus::Revoked => "revoked",
            GrantStatus::Expired => "expired",
            GrantStatus::Lapsed => "lapsed",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => GrantStatus::Pending,
            "active" => GrantStatus::Active,
            "denied" => GrantStatus::Denied,
            "revoked" => GrantStatus::Revoked,
            "expired" => GrantStatus::Expired,
            "lapsed" => GrantStatus::Lapsed,
            other => return Err(StoreError::Invalid(format!("grant status {other:?}"))),
        })
    }
}

/// A new request, validated by `crate::grants`.
#[derive(Debug, Clone)]
pub struct NewGrant<'a> {
    pub id: &'a GrantId,
    pub requester: &'a UserName,
    pub tier: &'a str,
    pub target: Option<&'a str>,
    pub login: Option<&'a str>,
    pub duration_secs: i64,
    pub reason: &'a str,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ApprovalRow {
    pub approver: String,
    pub external: bool,
    pub comment: String,
    pub at: i64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GrantRow {
    pub id: String,
    pub requester: String,
    pub tier: String,
    pub target: Option<String>,
    pub login: Option<String>,
    pub duration_secs: i64,
    pub reason: String,
    pub status: GrantStatus,
    pub requested_at: i64,
    pub starts_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub ended_by: Option<String>,
    pub end_note: Option<String>,
    pub approvals: Vec<ApprovalRow>,
}

impl GrantRow {
    pub fn votes(&self) -> Vec<ApprovalVote> {
        self.approvals
            .iter()
            .filter_map(|a| {
                UserName::parse(&a.approver).ok().map(|approver| ApprovalVote {
                    approver,
                    external: a.external,
                })
            })
            .collect()
    }
}

/// Which grants to list.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter<'a> {
    pub requester: Option<&'a str>,
    pub status: Option<GrantStatus>,
    /// Only grants to these tiers (`None`: any tier).
    pub tiers: Option<Vec<String>>,
}

const COLUMNS: &str = "id, requester, tier, target, login, duration_secs, reason, status, requested_at, \
                       starts_at, expires_at, ended_at, ended_by, end_note";

fn row(r: &sqlx::any::AnyRow) -> Result<GrantRow, StoreError> {
    Ok(GrantRow {
        id: r.try_get(0)?,
        requester: r.try_get(1)?,
        tier: r.try_get(2)?,
        target: r.try_get(3)?,
        login: r.try_get(4)?,
        duration_secs: r.try_get(5)?,
        reason: r.try_get(6)?,
        status: GrantStatus::parse(&r.try_get::<String, _>(7)?)?,
        requested_at: r.try_get(8)?,
        starts_at: r.try_get(9)?,
        expires_at: r.try_get(10)?,
        ended_at: r.try_get(11)?,
        ended_by: r.try_get(12)?,
        end_note: r.try_get(13)?,
        approvals: Vec::new(),
    })
}

/// Pending requests lapse after this long without a decision.
pub const REQUEST_TTL_MICROS: i64 = 24 * 3600 * 1_000_000;

impl Store {
    pub async fn create_grant(&self, g: &NewGrant<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO grants (id, requester, tier, target, login, duration_secs, reason, status, requested_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8)",
        )
        .bind(g.id.as_str())
        .bind(g.requester.as_str())
        .bind(g.tier)
        .bind(g.target)
        .bind(g.login)
        .bind(g.duration_secs)
        .bind(g.reason)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn grant(&self, id: &GrantId) -> Result<Option<GrantRow>, StoreError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM grants WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = r else { return Ok(None) };
        let mut g = row(&r)?;
        g.approvals = self.approvals(id.as_str()).await?;
        Ok(Some(g))
    }

    async fn approvals(&self, id: &str) -> Result<Vec<ApprovalRow>, StoreError> {
        sqlx::query("SELECT approver, external, comment, at FROM grant_approvals WHERE grant_id = $1 ORDER BY at")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(ApprovalRow {
                    approver: r.try_get(0)?,
                    external: r.try_get::<i64, _>(1)? != 0,
                    comment: r.try_get(2)?,
                    at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Grants matching `f`, newest first, without their approvals (see
    /// [`Store::load_approvals`]); of the newest 10 000 matching in the database, so
    /// memory stays bounded however long the history.
    pub async fn grants(&self, f: &GrantFilter<'_>, limit: i64) -> Result<Vec<GrantRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM grants WHERE ($1 IS NULL OR requester = $1) AND ($2 IS NULL OR status = $2) \
             ORDER BY requested_at DESC LIMIT 10000"
        )))
        .bind(f.requester)
        .bind(f.status.map(|s| s.as_str()))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let g = row(r)?;
            if f.tiers.as_ref().is_some_and(|t| !t.contains(&g.tier)) {
                continue;
            }
            out.push(g);
            if out.len() as i64 >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Fill in the approvals of `rows` (after the caller kept only what it may show).
    pub async fn load_approvals(&self, rows: &mut [GrantRow]) -> Result<(), StoreError> {
        for g in rows {
            g.approvals = self.approvals(&g.id).await?;
        }
        Ok(())
    }

    /// Record one approver's vote on a pending grant. `Exists` if they already voted;
    /// `NotFound` if the grant is not pending any more.
    pub async fn add_approval(
        &self,
        id: &GrantId,
        approver: &UserName,
        external: bool,
        comment: &str,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(
            "INSERT INTO grant_approvals (grant_id, approver, external, comment, at) \
             SELECT id, $2, $3, $4, $5 FROM grants WHERE id = $1 AND status = 'pending'",
        )
        .bind(id.as_str())
        .bind(approver.as_str())
        .bind(i64::from(external))
        .bind(comment)
        .bind(now_micros())
        .execute(&self.pool)
        .await;
        match r {
            Ok(r) if r.rows_affected() == 0 => Err(StoreError::NotFound(format!("pending grant {id}"))),
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Exists(format!("your approval of {id}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Start a pending grant now, for `duration_secs` (the request's, cut to the tier's
    /// current maximum by the caller); `Some(expires_at)` if this call started it.
    pub async fn activate_grant(&self, id: &GrantId, duration_secs: i64) -> Result<Option<i64>, StoreError> {
        let now = now_micros();
        let r = sqlx::query(
            "UPDATE grants SET status = 'active', starts_at = $1, expires_at = $3 \
             WHERE id = $2 AND status = 'pending'",
        )
        .bind(now)
        .bind(id.as_str())
        .bind(now.saturating_add(duration_secs.saturating_mul(1_000_000)))
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        let exp: Option<i64> = sqlx::query("SELECT expires_at FROM grants WHERE id = $1")
            .bind(id.as_str())
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(exp)
    }

    /// End a grant: `to` is `Denied` (from pending) or `Revoked` (from pending or
    /// active). False if it was not in a state that allows it.
    pub async fn end_grant(&self, id: &GrantId, to: GrantStatus, by: &str, note: &str) -> Result<bool, StoreError> {
        let from = match to {
            GrantStatus::Denied => "status = 'pending'",
            GrantStatus::Revoked => "status IN ('pending', 'active')",
            _ => return Err(StoreError::Invalid(format!("cannot end a grant as {}", to.as_str()))),
        };
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE grants SET status = $1, ended_at = $2, ended_by = $3, end_note = $4 WHERE id = $5 AND {from}"
        )))
        .bind(to.as_str())
        .bind(now_micros())
        .bind(by)
        .bind(note)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Mark active grants past their end as expired and stale requests as lapsed;
    /// returns what this call changed (so one node audits each once).
    pub async fn expire_grants(&self) -> Result<Vec<GrantRow>, StoreError> {
        let now = now_micros();
        let due = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM grants WHERE (status = 'active' AND expires_at <= $1) \
             OR (status = 'pending' AND requested_at <= $2)"
        )))
        .bind(now)
        .bind(now - REQUEST_TTL_MICROS)
        .fetch_all(&self.pool)
        .await?;
        let mut changed = Vec::new();
        for r in &due {
            let mut g = row(r)?;
            let (to, from) = if g.status == GrantStatus::Active {
                (GrantStatus::Expired, "active")
            } else {
                (GrantStatus::Lapsed, "pending")
            };
            let r = sqlx::query("UPDATE grants SET status = $1, ended_at = $2 WHERE id = $3 AND status = $4")
                .bind(to.as_str())
                .bind(now)
                .bind(&g.id)
                .bind(from)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() > 0 {
                g.status = to;
                g.ended_at = Some(now);
                changed.push(g);
            }
        }
        Ok(changed)
    }

    /// The user's grants that are active now.
    pub async fn active_grants(&self, user: &UserName) -> Result<Vec<GrantRow>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM grants WHERE requester = $1 AND status = 'active' AND expires_at > $2"
        )))
        .bind(user.as_str())
        .bind(now_micros())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(row)
        .collect()
    }

    /// Decided grants whose outcome the requester has not been shown yet; marks them
    /// shown.
    pub async fn take_grant_outcomes(&self, user: &UserName) -> Result<Vec<GrantRow>, StoreError> {
        let rows: Vec<GrantRow> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM grants WHERE requester = $1 AND status <> 'pending' AND notified_at IS NULL \
             ORDER BY requested_at"
        )))
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(row)
        .collect::<Result<_, _>>()?;
        let mut rows = rows;
        for g in &mut rows {
            g.approvals = self.approvals(&g.id).await?;
        }
        for g in &rows {
            sqlx::query("UPDATE grants SET notified_at = $1 WHERE id = $2")
                .bind(now_micros())
                .bind(&g.id)
                .execute(&self.pool)
                .await?;
        }
        Ok(rows)
    }

    /// How many requests `user` has waiting.
    pub async fn pending_grant_count(&self, user: &UserName) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM grants WHERE requester = $1 AND status = 'pending'")
                .bind(user.as_str())
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }
}
