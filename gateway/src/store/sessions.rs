use sqlx::Row;

use super::{now_micros, Store, StoreError};
use crate::ident::SessionId;

/// What the gateway writes when a session starts.
#[derive(Debug, Clone)]
pub struct SessionStart<'a> {
    pub id: &'a SessionId,
    pub node: &'a str,
    pub user: &'a str,
    pub target: &'a str,
    pub tier: &'a str,
    pub login: &'a str,
    pub client_addr: &'a str,
    pub workstation: Option<&'a str>,
    pub recording: &'a str,
    /// The access grant the session runs under, if its decision needed one.
    pub grant: Option<&'a str>,
    /// When the session must have ended (Unix microseconds): its maximum length.
    pub ends_by: i64,
}

/// Where a page of [`Store::sessions_page`] ends: its last row's start time and id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCursor {
    pub started_at: i64,
    pub id: String,
}

impl SessionRow {
    /// The cursor that continues after this row.
    pub fn cursor(&self) -> SessionCursor {
        SessionCursor {
            started_at: self.started_at,
            id: self.id.clone(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionRow {
    pub id: String,
    pub node: String,
    pub user: String,
    pub target: String,
    pub tier: String,
    pub login: String,
    pub client_addr: String,
    pub workstation: Option<String>,
    pub recording: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub kill_requested_by: Option<String>,
    pub legal_hold: bool,
    pub purged_at: Option<i64>,
    pub grant: Option<String>,
}

/// Close node $3's open rows at $1 for reason $2. A row cut before (its recording was
/// still being sealed when the node stopped) keeps the reason it was cut for.
pub(super) const CLOSE_OPEN_ROWS_OF_NODE: &str =
    "UPDATE sessions SET ended_at = $1, end_reason = COALESCE(end_reason, $2) WHERE node = $3 AND ended_at IS NULL";

/// The live sessions of user $1 at $2, for `max_connections`. Rows from before
/// `ends_by` existed count while open.
const LIVE_OF_USER: &str =
    "SELECT COUNT(*) FROM sessions WHERE user_name = $1 AND ended_at IS NULL AND (ends_by IS NULL OR ends_by > $2)";

const COLUMNS: &str = "id, node, user_name, target, tier, login, client_addr, recording, started_at, ended_at, end_reason, kill_requested_by, legal_hold, purged_at, workstation, grant_id";

fn row(r: &sqlx::any::AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        id: r.try_get(0)?,
        node: r.try_get(1)?,
        user: r.try_get(2)?,
        target: r.try_get(3)?,
        tier: r.try_get(4)?,
        login: r.try_get(5)?,
        client_addr: r.try_get(6)?,
        workstation: r.try_get(14)?,
        recording: r.try_get(7)?,
        started_at: r.try_get(8)?,
        ended_at: r.try_get(9)?,
        end_reason: r.try_get(10)?,
        kill_requested_by: r.try_get(11)?,
        legal_hold: r.try_get::<i64, _>(12)? != 0,
        purged_at: r.try_get(13)?,
        grant: r.try_get(15)?,
    })
}

impl Store {
    /// Place or lift a legal hold and write its event `e`, in one transaction (retention
    /// goes by the event: a row and a log that disagree keep the recording, with an
    /// alert). False, nothing written, when there is no such recording or it is purged.
    pub async fn set_legal_hold(&self, id: &SessionId, hold: bool, e: &super::AuditEvent) -> Result<bool, StoreError> {
        let change = sqlx::query("UPDATE sessions SET legal_hold = $1 WHERE id = $2 AND purged_at IS NULL")
            .bind(i64::from(hold))
            .bind(id.as_str());
        self.audited_change(e, change).await
    }

    /// The newest `recording.hold` event of `id` on the chain (at or before its head),
    /// as `(seq, hash)`: the hold a release ends. Read outside the release's transaction:
    /// a hold placed in between stands (the release names the earlier one), which keeps a
    /// recording, never loses one.
    pub async fn standing_hold(&self, id: &SessionId) -> Result<Option<(i64, String)>, StoreError> {
        let r = sqlx::query(
            "SELECT seq, hash FROM audit_events WHERE kind = 'recording.hold' AND session_id = $1 \
             AND seq <= (SELECT seq FROM audit_head WHERE id = 1) ORDER BY seq DESC LIMIT 1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = r else { return Ok(None) };
        Ok(Some((
            r.try_get(0)?,
            r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
        )))
    }

    /// Ended, unheld, unpurged sessions of `node` and `tier` that ended before `before`.
    pub async fn purgeable(&self, node: &str, tier: &str, before: i64) -> Result<Vec<SessionRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM sessions WHERE node = $1 AND tier = $2 AND ended_at IS NOT NULL \
             AND ended_at < $3 AND legal_hold = 0 AND purged_at IS NULL ORDER BY ended_at"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(node)
            .bind(tier)
            .bind(before)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| row(r).map_err(StoreError::from))
            .collect()
    }

    /// Mark a recording purged and write its purge event `e`, in one transaction; false
    /// (nothing written) when it is under legal hold or already purged by now. Only then
    /// may its file go: a hold placed after [`Store::purgeable`] listed it wins.
    pub async fn mark_purged(&self, id: &str, e: &super::AuditEvent) -> Result<bool, StoreError> {
        let change =
            sqlx::query("UPDATE sessions SET purged_at = $1 WHERE id = $2 AND legal_hold = 0 AND purged_at IS NULL")
                .bind(now_micros())
                .bind(id);
        self.audited_change(e, change).await
    }

    /// The newest recording of `node`: `(session_id, header_hash)`.
    pub async fn recording_chain_head(&self, node: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT session_id, header_hash FROM recording_chain WHERE node = $1")
            .bind(node)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Move `node`'s chain head to a new recording.
    pub async fn set_recording_chain_head(
        &self,
        node: &str,
        session: &str,
        header_hash: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM recording_chain WHERE node = $1")
            .bind(node)
            .execute(tx.conn()?)
            .await?;
        sqlx::query("INSERT INTO recording_chain (node, session_id, header_hash) VALUES ($1, $2, $3)")
            .bind(node)
            .bind(session)
            .bind(header_hash)
            .execute(tx.conn()?)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn session_started(&self, s: &SessionStart<'_>) -> Result<(), StoreError> {
        insert_session(&self.pool, s).await?;
        Ok(())
    }

    /// Record a live session unless its user already has `max` live sessions (on any
    /// node); `Ok(false)` then, and nothing is written. The user's row is locked first,
    /// so two nodes starting sessions for one user at once cannot both pass the count.
    /// (A non-key column: on PostgreSQL that lock does not hold up foreign-key checks
    /// of rows that reference the user.)
    pub async fn session_started_within(&self, s: &SessionStart<'_>, max: u32) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET status = status WHERE name = $1")
            .bind(s.user)
            .execute(tx.conn()?)
            .await?;
        let open: i64 = sqlx::query(LIVE_OF_USER)
            .bind(s.user)
            .bind(now_micros())
            .fetch_one(tx.conn()?)
            .await?
            .try_get(0)?;
        if open >= i64::from(max) {
            return Ok(false);
        }
        insert_session(tx.conn()?, s).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Live sessions of `user`, on every node: open rows whose maximum length has not
    /// passed (a row past it was left by a node that crashed).
    pub async fn live_sessions_of(&self, user: &str) -> Result<u64, StoreError> {
        let open: i64 = sqlx::query(LIVE_OF_USER)
            .bind(user)
            .bind(now_micros())
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(open).unwrap_or(0))
    }

    /// The session's client was cut, for `reason`; its recording is still being sealed
    /// (which a hung store may hold up to the stall limit), so the row stays live until
    /// [`Self::session_ended`]. The first reason stays.
    pub async fn session_ending(&self, id: &SessionId, reason: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET end_reason = $1 WHERE id = $2 AND ended_at IS NULL AND end_reason IS NULL")
            .bind(reason)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn session_ended(&self, id: &SessionId, reason: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET ended_at = $1, end_reason = $2 WHERE id = $3 AND ended_at IS NULL")
            .bind(now_micros())
            .bind(reason)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ask the node running a live session to end it; false if no such live session.
    pub async fn request_kill(&self, id: &SessionId, by: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE sessions SET kill_requested_at = $1, kill_requested_by = $2 WHERE id = $3 AND ended_at IS NULL",
        )
        .bind(now_micros())
        .bind(by)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Ask the nodes running `user`'s live sessions to end them all (a key or role they
    /// may rest on was withdrawn); an earlier kill request keeps its reason. The number
    /// of sessions asked.
    pub async fn request_kill_of_user(&self, user: &str, by: &str) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE sessions SET kill_requested_at = $1, kill_requested_by = $2 \
             WHERE user_name = $3 AND ended_at IS NULL AND kill_requested_at IS NULL",
        )
        .bind(now_micros())
        .bind(by)
        .bind(user)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Live sessions on `node` that must end now, with the reason: a kill was requested,
    /// their user was suspended or removed, or the grant they run under ended.
    pub async fn sessions_to_end(&self, node: &str) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query(
            "SELECT s.id, s.kill_requested_by, u.status, u.status_reason, s.grant_id, g.status, g.ended_by, g.end_note \
             FROM sessions s LEFT JOIN users u ON u.name = s.user_name LEFT JOIN grants g ON g.id = s.grant_id \
             WHERE s.node = $1 AND s.ended_at IS NULL \
             AND (s.kill_requested_at IS NOT NULL OR u.name IS NULL OR u.status <> 'active' \
                  OR (s.grant_id IS NOT NULL AND (g.id IS NULL OR g.status <> 'active' OR g.expires_at <= $2)))",
        )
        .bind(node)
        .bind(now_micros())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let id: String = r.try_get(0)?;
            let by: Option<String> = r.try_get(1)?;
            let status: Option<String> = r.try_get(2)?;
            let status_reason: Option<String> = r.try_get(3)?;
            let grant: Option<String> = r.try_get(4)?;
            let grant_status: Option<String> = r.try_get(5)?;
            let grant_by: Option<String> = r.try_get(6)?;
            let grant_note: Option<String> = r.try_get(7)?;
            let reason = match (by, status) {
                (Some(by), _) => format!("killed by {by}"),
                (None, None) => "user removed".to_owned(),
                (None, Some(s)) if s != "active" => match status_reason {
                    Some(why) => format!("user {s}: {why}"),
                    None => format!("user {s}"),
                },
                _ => match (grant_status.as_deref(), grant_by) {
                    (Some("revoked"), Some(by)) => format!(
                        "access grant {} revoked by {by}: {}",
                        grant.unwrap_or_default(),
                        grant_note.unwrap_or_default()
                    ),
                    (Some("active") | Some("expired"), _) => {
                        format!("access grant {} expired", grant.unwrap_or_default())
                    }
                    (Some(other), _) => format!("access grant {} {other}", grant.unwrap_or_default()),
                    (None, _) => format!("access grant {} no longer exists", grant.unwrap_or_default()),
                },
            };
            Ok((id, reason))
        })
        .collect()
    }

    /// Sessions left open by a node that stopped without closing them (a crash).
    pub async fn close_orphaned_sessions(&self, node: &str) -> Result<u64, StoreError> {
        let r = sqlx::query(CLOSE_OPEN_ROWS_OF_NODE)
            .bind(now_micros())
            .bind("gateway restarted")
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// The newest sessions first, at most `limit`.
    pub async fn sessions(&self, live_only: bool, limit: i64) -> Result<Vec<SessionRow>, StoreError> {
        self.sessions_page(live_only, limit, None).await
    }

    /// As [`Self::sessions`], continuing after `after` (a row's start time and id, the
    /// last of the previous page): pages follow (start time, id) downwards, so every row
    /// comes exactly once however many share a start time.
    pub async fn sessions_page(
        &self,
        live_only: bool,
        limit: i64,
        after: Option<&SessionCursor>,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let live = if live_only { "ended_at IS NULL" } else { "TRUE" };
        let sql = match after {
            None => format!("SELECT {COLUMNS} FROM sessions WHERE {live} ORDER BY started_at DESC, id DESC LIMIT $1"),
            Some(_) => format!(
                "SELECT {COLUMNS} FROM sessions WHERE {live} AND (started_at < $2 OR (started_at = $2 AND id < $3)) \
                 ORDER BY started_at DESC, id DESC LIMIT $1"
            ),
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(limit);
        if let Some(c) = after {
            q = q.bind(c.started_at).bind(c.id.clone());
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| row(r).map_err(StoreError::from))
            .collect()
    }

    pub async fn session(&self, id: &SessionId) -> Result<Option<SessionRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM sessions WHERE id = $1");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose().map_err(StoreError::from)
    }
}

async fn insert_session<'c>(
    conn: impl sqlx::Executor<'c, Database = sqlx::Any>,
    s: &SessionStart<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sessions (id, node, user_name, target, tier, login, client_addr, recording, started_at, workstation, grant_id, ends_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(s.id.as_str())
    .bind(s.node)
    .bind(s.user)
    .bind(s.target)
    .bind(s.tier)
    .bind(s.login)
    .bind(s.client_addr)
    .bind(s.recording)
    .bind(now_micros())
    .bind(s.workstation)
    .bind(s.grant)
    .bind(s.ends_by)
    .execute(conn)
    .await?;
    Ok(())
}
