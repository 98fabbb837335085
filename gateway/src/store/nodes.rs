//! Gateway nodes sharing the database: each reports itself alive every few seconds,
//! and the open sessions of a node that stopped reporting are closed by the others.
//!
//! Without this, a node that crashed and never came back left its sessions "live" in
//! `sessions list` for good, where `sessions kill` could not end them. Closing them is
//! safe only if a node that was merely slow (a long pause, a lost database connection)
//! learns of it: it is marked `presumed_stopped_at`, sees the mark at its next
//! heartbeat, and ends every session whose row was closed, so a running session always
//! has an open row that a kill request reaches.
//!
//! Silence is judged by a heartbeat counter (`beats`), never by comparing one node's
//! wall clock with another's: the observer notes when each counter last moved on its own
//! monotonic clock, and the closing is conditional on the counter it saw. A node whose
//! clock runs behind is therefore not reaped while it reports, and one whose clock runs
//! ahead is not spared after it stops.

use sqlx::Row;

use super::{Store, StoreError};

/// What a node must act on after reporting itself alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Another node found this one silent at this time (Unix microseconds) and closed
    /// the sessions it had open then.
    pub presumed_stopped_at: Option<i64>,
    /// Another process wrote this node's row since its last heartbeat: two gateways
    /// run under one node name.
    pub name_shared: bool,
    /// This process has reported before, yet the row was gone (`hersectl nodes
    /// remove`): a mark set before the removal may have gone with it, so the node must
    /// look for closed rows of its sessions as if it had been presumed stopped.
    pub row_removed: bool,
}

/// The `instance` of a node whose last process stopped cleanly (a real instance is a
/// random session-id-like string, never empty).
pub const STOPPED_INSTANCE: &str = "";

/// A node's row, as [`Store::node_report`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The process that last wrote the row; [`STOPPED_INSTANCE`] once it stopped cleanly.
    pub instance: String,
    pub beats: i64,
    /// Unix microseconds, on the clock of the process that wrote it.
    pub seen_at: i64,
}

/// What `remove_node` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRemoval {
    Removed,
    NotFound,
    /// The node still has open session rows: they close once it is presumed stopped
    /// (or it ends them), and removing it first would hide them from `nodes list`.
    HasOpenSessions(i64),
    /// The node reported at this time (Unix microseconds), after the caller's cut.
    RecentlySeen(i64),
}

/// A node as `hersectl nodes list` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeRow {
    pub name: String,
    pub started_at: i64,
    pub seen_at: i64,
    pub presumed_stopped_at: Option<i64>,
    pub live_sessions: i64,
}

impl Store {
    /// Record that `node`, run by the process `instance`, is alive at `now`. `beat_before`
    /// says whether this process has reported before (so a row written by another
    /// instance since then means a second process uses the name).
    pub async fn node_alive(
        &self,
        node: &str,
        instance: &str,
        now: i64,
        beat_before: bool,
    ) -> Result<Heartbeat, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Lock the row first (a write on SQLite takes the database's write lock), so a
        // node closing our sessions and this heartbeat happen one after the other.
        sqlx::query("UPDATE nodes SET seen_at = seen_at WHERE name = $1")
            .bind(node)
            .execute(tx.conn()?)
            .await?;
        let row = sqlx::query("SELECT instance, presumed_stopped_at FROM nodes WHERE name = $1")
            .bind(node)
            .fetch_optional(tx.conn()?)
            .await?;
        let previous = row
            .map(|r| Ok::<_, sqlx::Error>((r.try_get::<String, _>(0)?, r.try_get::<Option<i64>, _>(1)?)))
            .transpose()?;
        // A new process restarts the node's clock; the mark is consumed; the counter
        // only ever moves forward, across processes too.
        sqlx::query(
            "INSERT INTO nodes (name, instance, started_at, seen_at, presumed_stopped_at, beats) \
             VALUES ($1, $2, $3, $3, NULL, 1) \
             ON CONFLICT (name) DO UPDATE SET \
             started_at = CASE WHEN nodes.instance = excluded.instance THEN nodes.started_at ELSE excluded.started_at END, \
             instance = excluded.instance, seen_at = excluded.seen_at, presumed_stopped_at = NULL, \
             beats = nodes.beats + 1",
        )
        .bind(node)
        .bind(instance)
        .bind(now)
        .execute(tx.conn()?)
        .await?;
        let beat = Heartbeat {
            presumed_stopped_at: previous.as_ref().and_then(|(_, at)| *at),
            name_shared: beat_before && previous.as_ref().is_some_and(|(was, _)| was != instance),
            row_removed: beat_before && previous.is_none(),
        };
        tx.commit().await?;
        Ok(beat)
    }

    /// `node`'s row as its last writer left it: who wrote it, its heartbeat counter and
    /// when it last reported (on its own clock). `None` when no process ever ran as it.
    pub async fn node_report(&self, node: &str) -> Result<Option<NodeReport>, StoreError> {
        let r = sqlx::query("SELECT instance, beats, seen_at FROM nodes WHERE name = $1")
            .bind(node)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match r {
            Some(r) => Some(NodeReport {
                instance: r.try_get(0)?,
                beats: r.try_get(1)?,
                seen_at: r.try_get(2)?,
            }),
            None => None,
        })
    }

    /// The process `instance` stopped cleanly as `node`: the next process under that
    /// name need not wait to see whether it still runs. A row another process wrote
    /// since is left alone.
    pub async fn node_stopped(&self, node: &str, instance: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET instance = $1 WHERE name = $2 AND instance = $3")
            .bind(STOPPED_INSTANCE)
            .bind(node)
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The heartbeat counter of every node but `me` that has open sessions.
    pub async fn node_beats(&self, me: &str) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query(
            "SELECT n.name, n.beats FROM nodes n WHERE n.name <> $1 \
             AND EXISTS (SELECT 1 FROM sessions s WHERE s.node = n.name AND s.ended_at IS NULL)",
        )
        .bind(me)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }

    /// `node` was found silent with its counter at `beats`: unless it has reported since,
    /// mark it presumed stopped at `now` and close its open sessions with `reason`.
    /// Returns the number of sessions closed.
    pub async fn close_sessions_of_silent_node(
        &self,
        node: &str,
        beats: i64,
        now: i64,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The mark is the decision, taken under the node row's lock: a heartbeat that got
        // there first moved the counter and makes it match nothing, and one that comes
        // after sees the mark.
        let marked = sqlx::query(
            "UPDATE nodes SET presumed_stopped_at = COALESCE(presumed_stopped_at, $1) \
             WHERE name = $2 AND beats = $3",
        )
        .bind(now)
        .bind(node)
        .bind(beats)
        .execute(tx.conn()?)
        .await?
        .rows_affected();
        if marked == 0 {
            return Ok(0);
        }
        let closed = sqlx::query(super::sessions::CLOSE_OPEN_ROWS_OF_NODE)
            .bind(now)
            .bind(reason)
            .bind(node)
            .execute(tx.conn()?)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(closed)
    }

    /// The ids of `node`'s open session rows.
    pub async fn open_sessions_of_node(&self, node: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query("SELECT id FROM sessions WHERE node = $1 AND ended_at IS NULL")
            .bind(node)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// Forget `node` (a gateway taken out of service), unless it has open sessions or
    /// reported at or after `seen_since`. A node still running adds itself back at its
    /// next heartbeat, so this only tidies `nodes list`; it decides nothing.
    pub async fn remove_node(&self, node: &str, seen_since: i64) -> Result<NodeRemoval, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Under the row's lock, like the heartbeat and the closing of a silent node.
        let found = sqlx::query("UPDATE nodes SET seen_at = seen_at WHERE name = $1")
            .bind(node)
            .execute(tx.conn()?)
            .await?
            .rows_affected();
        if found == 0 {
            return Ok(NodeRemoval::NotFound);
        }
        let row = sqlx::query(
            "SELECT n.seen_at, (SELECT COUNT(*) FROM sessions s WHERE s.node = n.name AND s.ended_at IS NULL) \
             FROM nodes n WHERE n.name = $1",
        )
        .bind(node)
        .fetch_one(tx.conn()?)
        .await?;
        let (seen_at, open): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if open > 0 {
            return Ok(NodeRemoval::HasOpenSessions(open));
        }
        if seen_at >= seen_since {
            return Ok(NodeRemoval::RecentlySeen(seen_at));
        }
        sqlx::query("DELETE FROM wireguard_endpoints WHERE node = $1")
            .bind(node)
            .execute(tx.conn()?)
            .await?;
        sqlx::query("DELETE FROM nodes WHERE name = $1")
            .bind(node)
            .execute(tx.conn()?)
            .await?;
        tx.commit().await?;
        Ok(NodeRemoval::Removed)
    }

    /// Every node that has reported, newest first, with its open sessions.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        sqlx::query(
            "SELECT n.name, n.started_at, n.seen_at, n.presumed_stopped_at, \
             (SELECT COUNT(*) FROM sessions s WHERE s.node = n.name AND s.ended_at IS NULL) \
             FROM nodes n ORDER BY n.seen_at DESC",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(NodeRow {
                name: r.try_get(0)?,
                started_at: r.try_get(1)?,
                seen_at: r.try_get(2)?,
                presumed_stopped_at: r.try_get(3)?,
                live_sessions: r.try_get(4)?,
            })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::ident::{SessionId, UserName};
    use crate::store::SessionStart;

    const SEC: i64 = 1_000_000;

    fn on<'a>(node: &'a str, id: &'a SessionId) -> SessionStart<'a> {
        SessionStart {
            node,
            ..crate::store::test_session("carol", id)
        }
    }

    #[tokio::test]
    async fn a_clean_stop_is_told_apart_from_a_process_that_may_still_run() {
        for (backend, s) in crate::store::test_backends().await {
            assert_eq!(s.node_report("n1").await.unwrap(), None, "{backend}");
            s.node_alive("n1", "i1", 7, false).await.unwrap();
            s.node_alive("n1", "i1", 9, true).await.unwrap();
            let seen = s.node_report("n1").await.unwrap().unwrap();
            assert_eq!(
                (seen.instance.as_str(), seen.beats, seen.seen_at),
                ("i1", 2, 9),
                "{backend}"
            );
            // Another process's clean stop does not mark this one stopped.
            s.node_stopped("n1", "i0").await.unwrap();
            assert_eq!(s.node_report("n1").await.unwrap().unwrap().instance, "i1");
            s.node_stopped("n1", "i1").await.unwrap();
            let seen = s.node_report("n1").await.unwrap().unwrap();
            assert_eq!(seen.instance, super::STOPPED_INSTANCE, "{backend}");
            // The next process takes the name over as usual, and is not told it shares it.
            let beat = s.node_alive("n1", "i2", 11, false).await.unwrap();
            assert!(!beat.name_shared && beat.presumed_stopped_at.is_none(), "{backend}");
            assert_eq!(s.node_report("n1").await.unwrap().unwrap().beats, 3, "{backend}");
        }
    }

    #[tokio::test]
    async fn a_silent_nodes_sessions_are_closed_and_it_learns_so_on_every_backend() {
        for (backend, s) in crate::store::test_backends().await {
            s.add_user(&UserName::parse("carol").unwrap()).await.unwrap();
            let first = s.node_alive("n1", "i1", 0, false).await.unwrap();
            assert_eq!(first.presumed_stopped_at, None, "{backend}");
            assert!(!first.name_shared, "{backend}");
            assert!(!first.row_removed, "{backend}: a first heartbeat creates the row");
            s.node_alive("n2", "i2", 0, false).await.unwrap();
            let (a, b, c) = (SessionId::random(), SessionId::random(), SessionId::random());
            s.session_started(&on("n1", &a)).await.unwrap();
            s.session_started(&on("n1", &b)).await.unwrap();
            s.session_started(&on("n2", &c)).await.unwrap();
            s.session_ended(&b, "exit").await.unwrap();
            let reason = "node n1 stopped responding";

            // n2 watches the counters of the other nodes that have open sessions.
            assert_eq!(
                s.node_beats("n2").await.unwrap(),
                vec![("n1".to_owned(), 1)],
                "{backend}"
            );
            // n1 reports again with its clock an hour behind: the counter moved, so a
            // closing decided on the old counter does nothing.
            s.node_alive("n1", "i1", -3600 * SEC, true).await.unwrap();
            assert_eq!(
                s.close_sessions_of_silent_node("n1", 1, 70 * SEC, reason)
                    .await
                    .unwrap(),
                0,
                "{backend}: a node that reported since is not closed, whatever its clock"
            );
            assert_eq!(s.session(&a).await.unwrap().unwrap().ended_at, None, "{backend}");

            // n1 falls silent at counter 2.
            assert_eq!(
                s.node_beats("n2").await.unwrap(),
                vec![("n1".to_owned(), 2)],
                "{backend}"
            );
            assert_eq!(
                s.close_sessions_of_silent_node("n1", 2, 70 * SEC, reason)
                    .await
                    .unwrap(),
                1,
                "{backend}: only n1's open session"
            );
            let row = s.session(&a).await.unwrap().unwrap();
            assert_eq!(row.ended_at, Some(70 * SEC), "{backend}");
            assert_eq!(row.end_reason.as_deref(), Some(reason), "{backend}");
            assert_eq!(
                s.session(&b).await.unwrap().unwrap().end_reason.as_deref(),
                Some("exit")
            );
            assert_eq!(
                s.session(&c).await.unwrap().unwrap().ended_at,
                None,
                "{backend}: n2's own"
            );
            assert_eq!(s.live_sessions_of("carol").await.unwrap(), 1, "{backend}");
            // Nothing more to close: n1 is no longer watched, and a second pass does nothing.
            assert!(s.node_beats("n2").await.unwrap().is_empty(), "{backend}");
            assert_eq!(
                s.close_sessions_of_silent_node("n1", 2, 80 * SEC, reason)
                    .await
                    .unwrap(),
                0
            );

            // n1 was only paused: its next heartbeat says when it was presumed stopped
            // (the first mark, not the second pass's), once.
            let back = s.node_alive("n1", "i1", 90 * SEC, true).await.unwrap();
            assert_eq!(back.presumed_stopped_at, Some(70 * SEC), "{backend}");
            assert!(!back.name_shared, "{backend}");
            let again = s.node_alive("n1", "i1", 95 * SEC, true).await.unwrap();
            assert_eq!(again.presumed_stopped_at, None, "{backend}");
            // Sessions n1 starts now are its own to run: the old counter matches nothing.
            let d = SessionId::random();
            s.session_started(&on("n1", &d)).await.unwrap();
            assert_eq!(
                s.close_sessions_of_silent_node("n1", 2, 100 * SEC, reason)
                    .await
                    .unwrap(),
                0
            );
            assert_eq!(s.session(&d).await.unwrap().unwrap().ended_at, None, "{backend}");

            // A second process under the name n1 shows up at n1's next heartbeat; a
            // restart (a new process beating for the first time) does not.
            s.node_alive("n1", "intruder", 96 * SEC, true).await.unwrap();
            assert!(
                s.node_alive("n1", "i1", 97 * SEC, true).await.unwrap().name_shared,
                "{backend}"
            );
            assert!(
                !s.node_alive("n1", "i3", 98 * SEC, false).await.unwrap().name_shared,
                "{backend}"
            );

            let nodes = s.nodes().await.unwrap();
            assert_eq!(nodes.len(), 2, "{backend}");
            assert_eq!(nodes[0].name, "n1", "{backend}: newest first");
            assert_eq!(
                nodes[0].started_at,
                98 * SEC,
                "{backend}: a new process restarts the clock"
            );
            assert_eq!(nodes[0].live_sessions, 1, "{backend}");
            assert_eq!(nodes[1].live_sessions, 1, "{backend}");

            // Forgetting a node: not while it has open sessions, nor if it reported
            // after the cut; otherwise once.
            use super::NodeRemoval;
            assert_eq!(s.remove_node("nx", 0).await.unwrap(), NodeRemoval::NotFound);
            assert_eq!(
                s.remove_node("n2", 999 * SEC).await.unwrap(),
                NodeRemoval::HasOpenSessions(1),
                "{backend}"
            );
            s.session_ended(&c, "exit").await.unwrap();
            assert_eq!(
                s.remove_node("n2", 0).await.unwrap(),
                NodeRemoval::RecentlySeen(0),
                "{backend}: seen at the cut"
            );
            assert_eq!(s.remove_node("n2", 1).await.unwrap(), NodeRemoval::Removed);
            assert_eq!(s.remove_node("n2", 1).await.unwrap(), NodeRemoval::NotFound);
            assert_eq!(s.nodes().await.unwrap().len(), 1, "{backend}");
            // Removed under a node that still runs: it learns so, and is back.
            let beat = s.node_alive("n2", "i2", 99 * SEC, true).await.unwrap();
            assert!(beat.row_removed, "{backend}");
            assert!(!beat.name_shared, "{backend}");
            assert!(!s.node_alive("n2", "i2", 100 * SEC, true).await.unwrap().row_removed);
            assert_eq!(s.nodes().await.unwrap().len(), 2, "{backend}");
        }
    }
}
