//! This node among the gateways that share one database: it reports itself alive, closes
//! the sessions of nodes that stopped reporting, and ends its own sessions if another
//! node presumed it stopped (see `store::nodes` for why both halves are needed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::gateway::Gateway;
use crate::ident::SessionId;
use crate::store::{now_micros, AuditEvent, Heartbeat, Severity, STOPPED_INSTANCE};

/// How often a node reports itself alive and looks for silent nodes.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a second process under this node's name is reported again.
const NAME_SHARED_REPEAT: Duration = Duration::from_secs(600);

/// This process, among the processes that have run as this node.
fn new_instance() -> String {
    SessionId::random().as_str().to_owned()
}

/// Before this process touches anything of its node: refuse to start if another
/// process still runs under the same node name (a copied config, a second host left
/// with the same `[cluster] node`, a unit started twice). Start-up closes the node's
/// open session rows as left over from a crash; with the other process alive, those
/// are its live sessions, which kills and grant ends could then no longer reach.
///
/// A process that stopped cleanly says so in the row, and one that last reported more
/// than `cluster.node_timeout` ago is taken for gone. Otherwise (a crash, or a live
/// namesake) this waits a little over one heartbeat and looks whether the row's counter
/// moved: only a running process moves it. Returns how long it waited.
pub async fn refuse_a_running_namesake(gw: &Gateway) -> anyhow::Result<Duration> {
    let Some(seen) = gw.store.node_report(&gw.node).await? else {
        return Ok(Duration::ZERO);
    };
    let silent_for = now_micros().saturating_sub(seen.seen_at);
    if seen.instance == STOPPED_INSTANCE || silent_for > gw.config.node_timeout.as_micros() as i64 {
        return Ok(Duration::ZERO);
    }
    let wait = HEARTBEAT + Duration::from_secs(1);
    eprintln!(
        "herse: node {} did not stop cleanly (last report {:.0}s ago): waiting {}s to see whether \
         another process still runs as it",
        gw.node,
        (silent_for.max(0) as f64) / 1e6,
        wait.as_secs()
    );
    tokio::time::sleep(wait).await;
    let again = gw.store.node_report(&gw.node).await?;
    if again.is_some_and(|a| a.beats != seen.beats) {
        anyhow::bail!(
            "another gateway process runs as node {} (its heartbeat moved within the last {}s): stop it, \
             or give this one its own [cluster] node name",
            gw.node,
            wait.as_secs()
        );
    }
    Ok(wait)
}

/// The node's first report, before it serves: an error stops the start (the database
/// is unreachable), as the rest of start-up would.
pub async fn join(gw: &Gateway) -> anyhow::Result<Member> {
    let mut member = Member {
        instance: new_instance(),
        beaten: false,
        name_shared_told: None,
        reported: Instant::now(),
        cut_off: false,
        watch: SilenceWatch::default(),
    };
    member.beat(gw).await?;
    Ok(member)
}

/// This process's standing as the node.
pub struct Member {
    instance: String,
    beaten: bool,
    name_shared_told: Option<Instant>,
    /// The last heartbeat that reached the database.
    reported: Instant,
    /// The database has been out of reach for longer than `cluster.node_timeout`.
    cut_off: bool,
    /// The other nodes' heartbeat counters, as last seen.
    watch: SilenceWatch,
}

impl Member {
    /// This process's instance: [`Gateway`]'s store marks it stopped at a clean exit.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    async fn beat(&mut self, gw: &Gateway) -> anyhow::Result<()> {
        // Bounded: a query to an unreachable server may otherwise wait minutes for TCP
        // to give up, and the cut-off in `run` would come that late.
        let alive = gw.store.node_alive(&gw.node, &self.instance, now_micros(), self.beaten);
        let beat = tokio::time::timeout(HEARTBEAT, alive)
            .await
            .map_err(|_| anyhow::anyhow!("the database did not answer within {HEARTBEAT:?}"))??;
        self.beaten = true;
        self.act_on(gw, beat).await;
        Ok(())
    }

    async fn act_on(&mut self, gw: &Gateway, beat: Heartbeat) {
        if let Some(at) = beat.presumed_stopped_at {
            let cause = format!(
                "another node presumed node {} stopped at {} (unseen for longer than cluster.node_timeout) \
                 and closed its sessions",
                gw.node,
                crate::timefmt::rfc3339(at)
            );
            end_sessions_closed_elsewhere(gw, &cause).await;
        } else if beat.row_removed {
            let cause = format!(
                "node {}'s row was removed (hersectl nodes remove) while it ran; it is back, and any \
                 session row closed before the removal is honoured",
                gw.node
            );
            end_sessions_closed_elsewhere(gw, &cause).await;
        }
        if beat.name_shared && self.name_shared_told.is_none_or(|t| t.elapsed() >= NAME_SHARED_REPEAT) {
            self.name_shared_told = Some(Instant::now());
            let detail = format!(
                "another gateway process also runs as node {}: give each node its own [cluster] node name \
                 (each one closes the other's sessions when it restarts)",
                gw.node
            );
            eprintln!("herse: {detail}");
            gw.audit(AuditEvent::new("node.name_shared", Severity::Alert, detail))
                .await;
        }
    }

    /// Report every [`HEARTBEAT`] and close the sessions of silent nodes, until the
    /// process stops.
    pub async fn run(mut self, gw: Arc<Gateway>) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.beat(&gw).await {
                Ok(()) => {
                    self.reported = Instant::now();
                    if std::mem::take(&mut self.cut_off) {
                        eprintln!("herse: the database is reachable again");
                    }
                    // Bounded like the heartbeat, so a database that stops answering
                    // here cannot hold the loop (and the cut-off) up.
                    let tidy = async {
                        close_rows_of_ended_sessions(&gw).await;
                        close_silent_nodes_sessions(&gw, &mut self.watch).await;
                    };
                    if tokio::time::timeout(HEARTBEAT, tidy).await.is_err() {
                        tracing::error!("closing ended and silent nodes' sessions took over {HEARTBEAT:?}");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot report this node alive");
                    // The other nodes' counters may stand still for the same reason ours
                    // does: their silence is no evidence until we have watched them for
                    // a full timeout with the database reachable.
                    self.watch = SilenceWatch::default();
                    if self.reported.elapsed() >= gw.config.node_timeout {
                        self.end_sessions_cut_off(&gw);
                    }
                }
            }
        }
    }

    /// The database has been out of reach for `cluster.node_timeout`: kills,
    /// suspensions and grant ends can no longer reach this node's sessions, and the
    /// other nodes now presume it stopped. End them (fail closed); new sessions are
    /// refused meanwhile, since their rows cannot be written.
    fn end_sessions_cut_off(&mut self, gw: &Gateway) {
        let live = gw.live_sessions();
        if !self.cut_off || !live.is_empty() {
            let why = format!(
                "node {} cannot reach the database for over {}: kills, suspensions and grant ends \
                 could not reach this session",
                gw.node,
                humantime::format_duration(gw.config.node_timeout)
            );
            eprintln!("herse: {why}; ending {} session(s)", live.len());
            tracing::error!(sessions = live.len(), "{why}");
            for s in live {
                s.end(why.clone());
            }
        }
        self.cut_off = true;
    }
}

/// Close this node's open rows of sessions it no longer runs: a session that ended
/// while its row could not be written (the database was out of reach). A session is
/// registered before its row is written and unregistered after it is closed, so an
/// open row of an unregistered session is never one still starting or running.
async fn close_rows_of_ended_sessions(gw: &Gateway) {
    let open = match gw.store.open_sessions_of_node(&gw.node).await {
        Ok(open) => open,
        Err(e) => return tracing::error!(error = %e, "cannot list this node's open sessions"),
    };
    for id in open {
        if gw.live_session(&id).is_some() {
            continue;
        }
        let Ok(sid) = SessionId::parse(&id) else { continue };
        let reason = "ended while its row could not be written (its recording has the reason)";
        match gw.store.session_ended(&sid, reason).await {
            Ok(()) => {
                gw.audit(AuditEvent::new("session.end", Severity::Warning, reason).session(&sid))
                    .await
            }
            Err(e) => tracing::error!(error = %e, session = %sid, "cannot close a session row"),
        }
    }
}

/// Another node found this one silent and closed its sessions' rows (or the mark that
/// says so may have been removed with the node's row): end each session still running
/// here whose row is closed, so none runs where a kill cannot reach it.
async fn end_sessions_closed_elsewhere(gw: &Gateway, cause: &str) {
    let mut ended = 0usize;
    for s in gw.live_sessions() {
        match gw.store.session(s.id()).await {
            // No row yet: the session is starting, after the mark; its row will be open.
            Ok(None) => {}
            Ok(Some(row)) if row.ended_at.is_none() => {}
            Ok(Some(_)) => {
                s.end(format!(
                    "node {} was presumed stopped (unseen for longer than cluster.node_timeout) and its \
                     sessions were closed",
                    gw.node
                ));
                ended += 1;
            }
            Err(e) => tracing::error!(error = %e, session = %s.id(), "cannot read a session's row"),
        }
    }
    let detail = format!("{cause}; {ended} session(s) still running here ended");
    eprintln!("herse: {detail}");
    gw.audit(AuditEvent::new("node.presumed_stopped", Severity::Alert, detail))
        .await;
}

/// Tells silent nodes by their heartbeat counters: a node is silent once its counter has
/// not moved for the timeout on this node's own monotonic clock. The nodes' wall clocks
/// never meet, so a node whose clock runs behind is not reaped while it reports, and one
/// whose clock runs ahead is not spared once it stops. A node that has just started, or
/// that could not reach the database itself, waits a full timeout before judging any
/// other node: a database outage shared by all must not read as every other node dying.
#[derive(Debug, Default)]
struct SilenceWatch {
    /// Per node: its counter and when this node first saw that value.
    seen: HashMap<String, (i64, Instant)>,
}

impl SilenceWatch {
    /// Note the counters read at `now` (nodes not listed are forgotten) and return those
    /// that have not moved for `timeout`, each with the counter it stopped at.
    fn observe(
        &mut self,
        now: Instant,
        timeout: Duration,
        beats: impl IntoIterator<Item = (String, i64)>,
    ) -> Vec<(String, i64)> {
        let mut seen = HashMap::new();
        let mut silent = Vec::new();
        for (node, count) in beats {
            let since = match self.seen.get(&node) {
                Some(&(before, since)) if before == count => since,
                _ => now,
            };
            if now.saturating_duration_since(since) >= timeout {
                silent.push((node.clone(), count));
            }
            seen.insert(node, (count, since));
        }
        self.seen = seen;
        silent
    }
}

async fn close_silent_nodes_sessions(gw: &Gateway, watch: &mut SilenceWatch) {
    let timeout = gw.config.node_timeout;
    let beats = match gw.store.node_beats(&gw.node).await {
        Ok(beats) => beats,
        Err(e) => return tracing::error!(error = %e, "cannot read the other nodes' heartbeats"),
    };
    let shown = humantime::format_duration(timeout).to_string();
    for (node, count) in watch.observe(Instant::now(), timeout, beats) {
        let reason = format!("node {node} stopped responding (unseen for over {shown})");
        match gw
            .store
            .close_sessions_of_silent_node(&node, count, now_micros(), &reason)
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                gw.audit(AuditEvent::new(
                    "node.stopped",
                    Severity::Warning,
                    format!(
                        "node {node} unseen for over {shown}: its {n} open session(s) closed by node {}",
                        gw.node
                    ),
                ))
                .await;
            }
            Err(e) => tracing::error!(error = %e, node, "cannot close the sessions of a silent node"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(15);

    fn beats(list: &[(&str, i64)]) -> Vec<(String, i64)> {
        list.iter().map(|&(n, c)| (n.to_owned(), c)).collect()
    }

    #[test]
    fn a_node_is_silent_when_its_counter_stands_still_for_the_timeout_on_our_clock() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = SilenceWatch::default();
        // Just started: nobody is judged before a full timeout of watching.
        assert!(w.observe(at(0), TIMEOUT, beats(&[("n1", 7), ("n2", 3)])).is_empty());
        // n1 keeps reporting; n2 stands still.
        assert!(w.observe(at(5), TIMEOUT, beats(&[("n1", 8), ("n2", 3)])).is_empty());
        assert!(w.observe(at(14), TIMEOUT, beats(&[("n1", 10), ("n2", 3)])).is_empty());
        assert_eq!(
            w.observe(at(15), TIMEOUT, beats(&[("n1", 10), ("n2", 3)])),
            beats(&[("n2", 3)]),
            "n2 at the timeout; n1 moved at 14 s"
        );
        assert_eq!(
            w.observe(at(29), TIMEOUT, beats(&[("n1", 10), ("n2", 3)])),
            beats(&[("n1", 10), ("n2", 3)]),
            "n1 stood still from 14 s"
        );
        // n2 comes back (any change counts, even a counter that went down with a
        // restored database), and a node no longer listed is forgotten.
        assert!(w.observe(at(30), TIMEOUT, beats(&[("n2", 1)])).is_empty());
        assert!(w.observe(at(44), TIMEOUT, beats(&[("n1", 10), ("n2", 1)])).is_empty());
        assert_eq!(
            w.observe(at(45), TIMEOUT, beats(&[("n1", 10), ("n2", 1)])),
            beats(&[("n2", 1)]),
            "n1 is watched afresh from 44 s"
        );
    }
}
