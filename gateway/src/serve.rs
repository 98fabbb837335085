//! `herse serve`: listeners, live-session watcher, and signal handling (SIGHUP reloads
//! the policy, SIGTERM and SIGINT drain).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::conn_threads::{self, ConnectionThreads};
use crate::front::{base_config, FrontHandler};
use crate::gateway::Gateway;
use crate::ident::WorkstationName;
use crate::origin::{Origin, Via};
use crate::policy;
use crate::store::{ActivePeer, AuditEvent, Severity};
use crate::wg::uapi::{self, Uapi};
use crate::wg::{Accepted, PeerSpec, WgConfig, WireGuard};

/// Run until SIGTERM or SIGINT, then drain.
pub async fn run(gw: Arc<Gateway>) -> anyhow::Result<()> {
    if cfg!(feature = "bench-null-recorder") {
        if std::env::var("HERSE_BENCH_UNRECORDED").as_deref() != Ok("1") {
            anyhow::bail!("this is a benchmark build that records nothing; refusing to serve");
        }
        eprintln!("herse: WARNING: benchmark build, sessions are NOT recorded");
    }
    if cfg!(feature = "bench-tunnel-forward") {
        if std::env::var("HERSE_BENCH_UNRECORDED").as_deref() != Ok("1") {
            anyhow::bail!("this is a benchmark build with an unrecorded tunnel forward; refusing to serve");
        }
        eprintln!("herse: WARNING: benchmark build, a tunnel port is forwarded unrecorded");
    }
    crate::cluster::refuse_a_running_namesake(&gw).await?;
    let closed = gw.store.close_orphaned_sessions(&gw.node).await?;
    if closed > 0 {
        gw.audit(AuditEvent::new(
            "session.end",
            Severity::Warning,
            format!("{closed} session(s) left open by a previous run closed as 'gateway restarted'"),
        ))
        .await;
    }
    // Join the nodes before serving: a node that cannot report itself alive would
    // soon have its sessions closed by the others.
    let member = crate::cluster::join(&gw).await?;
    let instance = member.instance().to_owned();
    let config = Arc::new(base_config(&gw));
    let permits = gw.connections.clone();
    let threads =
        Arc::new(ConnectionThreads::start().map_err(|e| anyhow::anyhow!("cannot start connection threads: {e}"))?);
    let mut listeners = Vec::new();
    for addr in &gw.config.ssh_listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let local = l.local_addr()?;
        eprintln!("herse: SSH listening on {local}");
        tracing::info!(%local, "SSH listening");
        listeners.push(tokio::spawn(accept_loop(
            gw.clone(),
            l,
            config.clone(),
            permits.clone(),
            threads.clone(),
        )));
    }
    let mut uapi_socket = None;
    let mut endpoint_book = None;
    let portal = gw
        .portal_tls
        .clone()
        .map(|tls| crate::web::Portal::new(gw.clone(), tls));
    let web_tunnel_port = gw.config.web.as_ref().and_then(|w| w.tunnel_port);
    if let (Some(p), Some(w)) = (&portal, &gw.config.web) {
        for addr in &w.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            eprintln!("herse: portal listening on https://{}", l.local_addr()?);
            listeners.push(tokio::spawn(portal_accept_loop(gw.clone(), l, p.clone())));
        }
    }
    let wireguard = match &gw.config.wireguard {
        Some(wc) => {
            let peers = peer_specs(&gw.store.active_peers().await?);
            let (greet, book) = crate::peer_endpoints::load(&gw).await;
            let (wg, acceptor) = WireGuard::start(
                &WgConfig {
                    listen: wc.listen,
                    net: wc.net,
                    ports: std::iter::once(wc.ssh_port)
                        .chain(portal.as_ref().and(web_tunnel_port))
                        .chain(bench_forward().map(|f| f.0))
                        .collect(),
                    liveness: gw.config.client_alive,
                },
                gw.keys.wireguard.clone(),
                peers,
                greet,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot start WireGuard on {}: {e}", wc.listen))?;
            eprintln!(
                "herse: WireGuard on udp {} (public key {}); SSH on {}:{} inside the tunnel",
                wg.local_addr(),
                wg.public_key(),
                wc.net.gateway,
                wc.ssh_port
            );
            listeners.push(tokio::spawn(tunnel_accept_loop(
                gw.clone(),
                acceptor,
                config.clone(),
                permits.clone(),
                threads.clone(),
                portal.clone().zip(web_tunnel_port),
            )));
            if let Some(p) = web_tunnel_port.filter(|_| portal.is_some()) {
                eprintln!("herse: portal on https://{}:{p} inside the tunnel", wc.net.gateway);
            }
            let wg = Arc::new(wg);
            let book = Arc::new(tokio::sync::Mutex::new(book));
            listeners.push(tokio::spawn(watch_workstations(gw.clone(), wg.clone(), book.clone())));
            endpoint_book = Some(book);
            if let Some(name) = &wc.interface {
                let u = Uapi::start(std::path::Path::new(uapi::SOCKET_DIR), name, wg.clone())
                    .map_err(|e| anyhow::anyhow!("cannot serve the WireGuard UAPI socket for {name}: {e}"))?;
                eprintln!("herse: `wg show {name}` reads {}", u.path().display());
                uapi_socket = Some(u);
            }
            Some(wg)
        }
        None => None,
    };
    if let Some(addr) = gw.config.metrics_listen {
        let l = crate::metrics::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        eprintln!("herse: metrics on http://{}/metrics", l.local_addr()?);
        listeners.push(tokio::spawn(crate::metrics::serve(l, gw.clone(), wireguard.clone())));
    }
    gw.audit(AuditEvent::new(
        "gateway.start",
        Severity::Info,
        match &wireguard {
            Some(wg) => format!(
                "node {} listening on WireGuard udp {} and loopback {:?}",
                gw.node,
                wg.local_addr(),
                gw.config.ssh_listen
            ),
            None => format!("node {} listening on loopback {:?}", gw.node, gw.config.ssh_listen),
        },
    ))
    .await;
    let watcher = tokio::spawn(watch_sessions(gw.clone()));
    let grant_keeper = tokio::spawn(grant_housekeeping(gw.clone()));
    let purger = tokio::spawn(purge_loop(gw.clone()));
    let heartbeat = tokio::spawn(member.run(gw.clone()));
    tokio::spawn(crate::audit_log::checkpoint_loop(gw.clone()));

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&gw).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drain(&gw).await;
    // The heartbeat runs through the drain, which may outlast cluster.node_timeout.
    watcher.abort();
    grant_keeper.abort();
    purger.abort();
    heartbeat.abort();
    for l in listeners {
        l.abort();
    }
    drop(uapi_socket);
    // Handshakes of the last seconds too, so the next start can greet those peers.
    if let (Some(wg), Some(book)) = (&wireguard, &endpoint_book) {
        book.lock().await.save(&gw, wg).await;
    }
    drop(wireguard);
    gw.audit(AuditEvent::new(
        "gateway.stop",
        Severity::Info,
        format!("node {} stopped", gw.node),
    ))
    .await;
    crate::audit_log::checkpoint_at_shutdown(&gw).await;
    // Last of the node's rows: the next process under this name starts without waiting.
    if let Err(e) = gw.store.node_stopped(&gw.node, &instance).await {
        tracing::warn!(error = %e, "cannot mark the node stopped; its next start waits a heartbeat");
    }
    gw.store.close().await;
    // Last: database connections opened from a connection thread are driven by it.
    drop(threads);
    Ok(())
}

async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    permits: Arc<Semaphore>,
    threads: Arc<ConnectionThreads>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = gw.stop_accepting.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let gw2 = gw.clone();
        let config = config.clone();
        let origin = Origin {
            addr: peer,
            via: Via::Loopback,
        };
        threads.spawn(&gw.tasks, async move {
            let _permit = permit;
            let tcp = match conn_threads::rehome(tcp) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot move the connection to its thread");
                    return;
                }
            };
            let tcp = crate::front::read_buffered(tcp);
            serve_connection(gw2, tcp, origin, config)
                .instrument(tracing::info_span!("connection", client.addr = %peer))
                .await;
        });
    }
}

/// The portal's loopback listener (local admin).
async fn portal_accept_loop(gw: Arc<Gateway>, listener: TcpListener, portal: crate::web::Portal) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = gw.stop_accepting.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let p = portal.clone();
        gw.tasks.spawn(async move {
            p.serve(
                tcp,
                Origin {
                    addr: peer,
                    via: Via::Loopback,
                },
            )
            .await;
        });
    }
}

/// Connections through the WireGuard tunnel, attributed to the workstation whose key
/// carried them.
async fn tunnel_accept_loop(
    gw: Arc<Gateway>,
    mut acceptor: tokio::sync::mpsc::Receiver<Accepted>,
    config: Arc<russh::server::Config>,
    permits: Arc<Semaphore>,
    threads: Arc<ConnectionThreads>,
    portal: Option<(crate::web::Portal, u16)>,
) {
    loop {
        let accepted = tokio::select! {
            _ = gw.stop_accepting.cancelled() => return,
            a = acceptor.recv() => match a {
                Some(a) => a,
                None => return,
            },
        };
        if let Some((port, to)) = bench_forward() {
            if accepted.local_port == port {
                tokio::spawn(async move {
                    let mut a = accepted.stream;
                    if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 256 * 1024, 256 * 1024).await;
                    }
                });
                continue;
            }
        }
        let ws = match WorkstationName::parse(&accepted.workstation) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "stored workstation name is invalid");
                continue;
            }
        };
        let origin = Origin {
            addr: accepted.remote,
            via: Via::Workstation(ws),
        };
        // The portal has its own connection limit: it cannot use up SSH's.
        if let Some((p, port)) = &portal {
            if accepted.local_port == *port {
                let p = p.clone();
                gw.tasks.spawn(async move { p.serve(accepted.stream, origin).await });
                continue;
            }
        }
        // Counted until it authenticates: a workstation holds at most a few of the
        // permits with logins it never finishes (`MAX_STARTUPS_PER_WORKSTATION`).
        let Some(starting) = gw.workstation_startups.enter(accepted.workstation.as_str()) else {
            tracing::warn!(
                workstation = %accepted.workstation,
                limit = gw.workstation_startups.limit(),
                "too many logins under way from this workstation; refusing connection"
            );
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(remote = %accepted.remote, "connection limit reached; refusing connection");
            continue;
        };
        let gw2 = gw.clone();
        let config = config.clone();
        threads.spawn(&gw.tasks, async move {
            let _permit = permit;
            let span =
                tracing::info_span!("connection", client.addr = %origin.addr, workstation = %accepted.workstation);
            let handler = FrontHandler::outer(gw2, origin).counted(starting);
            crate::front::serve_ssh(config, accepted.stream, handler)
                .instrument(span)
                .await;
        });
    }
}

/// Benchmark builds only (`--features bench-tunnel-forward`): a tunnel port piped to a
/// local address, so iperf3 can measure the embedded WireGuard interface alone.
fn bench_forward() -> Option<(u16, std::net::SocketAddr)> {
    if !cfg!(feature = "bench-tunnel-forward") {
        return None;
    }
    let v = std::env::var("HERSE_BENCH_TUNNEL_FORWARD").ok()?;
    let (port, to) = v.split_once('=')?;
    Some((port.parse().ok()?, to.parse().ok()?))
}

fn peer_specs(peers: &[ActivePeer]) -> Vec<PeerSpec> {
    peers
        .iter()
        .map(|p| PeerSpec {
            public_key: p.public_key,
            address: p.address,
            workstation: p.name.clone(),
        })
        .collect()
}

/// How long one step of the workstation watcher may wait for the store: a hung query
/// must not hold up the next revocation.
const STEP_LIMIT: Duration = Duration::from_secs(2);

/// Keeps the WireGuard peers equal to the enrolled, live workstations of active users,
/// four times a second: a revoked workstation or a suspended owner loses its peer and
/// every session from it at once. Traffic counters are saved for `workstations list`, and
/// the peers' endpoints for the next start (`peer_endpoints`).
async fn watch_workstations(
    gw: Arc<Gateway>,
    wg: Arc<WireGuard>,
    book: Arc<tokio::sync::Mutex<crate::peer_endpoints::EndpointBook>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_stats = tokio::time::Instant::now();
    // The last pass that read the workstations: revocations are known up to then.
    let mut read_at = tokio::time::Instant::now();
    let mut cut_off = false;
    loop {
        tick.tick().await;
        let active = match tokio::time::timeout(STEP_LIMIT, gw.store.active_peers()).await {
            Ok(Ok(a)) => {
                read_at = tokio::time::Instant::now();
                if std::mem::take(&mut cut_off) {
                    eprintln!("herse: the workstation list is readable again; peers restored");
                }
                a
            }
            failed => {
                let e = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {STEP_LIMIT:?}"),
                };
                if read_at.elapsed() < gw.config.node_timeout {
                    tracing::error!(error = %e, "cannot read workstations; keeping the current peers for now");
                    continue;
                }
                // A revocation may have been missed for node_timeout: fail closed, as the
                // session watcher does. Peers come back when the list can be read.
                if !cut_off {
                    cut_off = true;
                    eprintln!(
                        "herse: the workstation list could not be read for {:?} ({e}): every tunnel peer removed",
                        gw.config.node_timeout
                    );
                }
                Vec::new()
            }
        };
        let live: std::collections::HashSet<&str> = active.iter().map(|p| p.name.as_str()).collect();
        // Sessions first, so their recordings are sealed with the reason before the
        // tunnel connections are reset.
        let mut ending = Vec::new();
        for s in gw.live_sessions() {
            if let Some(ws) = s.origin().workstation() {
                if !live.contains(ws.as_str()) {
                    let reason = if cut_off {
                        "the gateway cannot read the workstation list (revocations unknown)".to_owned()
                    } else {
                        tokio::time::timeout(STEP_LIMIT, removal_reason(&gw, ws, false))
                            .await
                            .unwrap_or_else(|_| format!("workstation {ws} removed"))
                    };
                    s.end(reason);
                    ending.push(s.id().clone());
                }
            }
        }
        // Give them a moment to tell their clients why, through the tunnel that is
        // about to close; whatever is left is reset with the peer.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while ending.iter().any(|id| gw.live_session(id.as_str()).is_some()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let removed = wg.set_peers(peer_specs(&active));
        if !removed.is_empty() {
            // Told in a task of its own: its reads and the audit chain's lock must not
            // hold up the next pass, which may have a revocation to carry out.
            let (gw, live) = (gw.clone(), live.iter().map(|w| w.to_string()).collect::<Vec<_>>());
            tokio::spawn(async move {
                for ws in removed {
                    let reason = match WorkstationName::parse(&ws) {
                        Ok(w) => removal_reason(&gw, &w, live.contains(&ws)).await,
                        Err(_) => "workstation removed".to_owned(),
                    };
                    gw.audit(AuditEvent::new("workstation.peer_removed", Severity::Info, reason).workstation(&ws))
                        .await;
                }
            });
        }
        // Every pass, so a crash right after a workstation's first handshake still lets
        // the next start greet it; only changes are written (a rekey every 2 minutes).
        if tokio::time::timeout(STEP_LIMIT, async { book.lock().await.save(&gw, &wg).await })
            .await
            .is_err()
        {
            tracing::warn!("saving WireGuard endpoints took over {STEP_LIMIT:?}; later");
        }
        if last_stats.elapsed() >= Duration::from_secs(5) {
            last_stats = tokio::time::Instant::now();
            let save = async {
                for p in wg.status() {
                    if let Err(e) = gw
                        .store
                        .record_workstation_traffic(&p.workstation, p.last_handshake, p.rx_bytes, p.tx_bytes)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot save workstation traffic");
                    }
                }
            };
            if tokio::time::timeout(STEP_LIMIT, save).await.is_err() {
                tracing::warn!("saving workstation traffic took over {STEP_LIMIT:?}; later");
            }
            let c = wg.counters();
            // Every 5 s: debug level (the metrics listener serves them for real use).
            tracing::debug!(
                handshakes = c.handshakes,
                invalid_packets = c.invalid_packets,
                unknown_peers = c.unknown_peers,
                cookie_replies = c.cookie_replies,
                throttled_handshakes = c.throttled_handshakes,
                "wireguard counters"
            );
        }
    }
}

async fn removal_reason(gw: &Gateway, ws: &WorkstationName, still_live: bool) -> String {
    if still_live {
        return format!("workstation {ws} key rotated: connections under the old key reset");
    }
    match gw.store.workstation(ws).await {
        Ok(Some(w)) if w.is_revoked() => format!(
            "workstation {ws} revoked by {}: {}",
            w.revoked_by.as_deref().unwrap_or("?"),
            w.revoke_reason.as_deref().unwrap_or("")
        ),
        Ok(Some(w)) => format!("workstation {ws} owner {} suspended", w.owner),
        _ => format!("workstation {ws} removed"),
    }
}

async fn serve_connection<S>(gw: Arc<Gateway>, stream: S, origin: Origin, config: Arc<russh::server::Config>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    crate::front::serve_ssh(config, stream, FrontHandler::outer(gw, origin)).await;
}

/// Expires grants and ends suspensions that have run out, once a second, in a task of
/// its own (its audit writes wait on the cluster-wide audit chain, and must never hold
/// up the session watcher).
async fn grant_housekeeping(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::grants::housekeeping(&gw.store).await;
    }
}

/// When the session watcher last read its kill list.
struct WatchHealth {
    last_read: std::time::Instant,
}

impl WatchHealth {
    fn new() -> WatchHealth {
        WatchHealth {
            last_read: std::time::Instant::now(),
        }
    }

    fn read(&mut self) {
        self.last_read = std::time::Instant::now();
    }

    /// A pass failed: whether the node's sessions must now end, because kills,
    /// suspensions and grant ends have not been able to reach them for `limit`.
    fn failed(&self, limit: Duration) -> bool {
        self.last_read.elapsed() >= limit
    }
}

/// Ends live sessions that an operator killed, whose user was suspended or removed, or
/// whose grant was revoked or expired, checked four times a second (so a change made on
/// any node takes effect within a second). Each pass is bounded; when none has read the
/// list for `cluster.node_timeout` (a failing or hung query, while the heartbeat may
/// still succeed), the node's sessions end: nothing runs where a kill cannot reach it.
async fn watch_sessions(gw: Arc<Gateway>) {
    const PASS_LIMIT: Duration = Duration::from_secs(2);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health = WatchHealth::new();
    loop {
        tick.tick().await;
        let pass = tokio::time::timeout(PASS_LIMIT, gw.store.sessions_to_end(&gw.node)).await;
        let error = match pass {
            Ok(Ok(list)) => {
                health.read();
                end_listed(&gw, list).await;
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {PASS_LIMIT:?}"),
        };
        tracing::error!(error, "cannot read session kill requests");
        if !health.failed(gw.config.node_timeout) {
            continue;
        }
        let live = gw.live_sessions();
        if !live.is_empty() {
            let why = format!(
                "node {} could not read kills, suspensions and grant ends for over {}",
                gw.node,
                humantime::format_duration(gw.config.node_timeout)
            );
            tracing::error!(sessions = live.len(), "{why}; ending its sessions");
            for s in live {
                s.end(why.clone());
            }
        }
    }
}

/// End the sessions of this node the watcher found listed, and close the rows of those
/// this process does not run.
async fn end_listed(gw: &Gateway, list: Vec<(String, String)>) {
    for (id, reason) in list {
        if let Some(s) = gw.live_session(&id) {
            s.end(reason);
        } else {
            // A row for a session this process does not run (it crashed earlier).
            if let Ok(sid) = crate::ident::SessionId::parse(&id) {
                let _ = gw.store.session_ended(&sid, &reason).await;
            }
        }
    }
}

/// Apply recording retention at start and then every hour.
async fn purge_loop(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(crate::retention::PURGE_EVERY);
    loop {
        tick.tick().await;
        let policy = gw.policy.load_full();
        match crate::retention::purge(&gw.store, &policy, &gw.node, &gw.config.recordings_dir, &gw.retention).await {
            Ok(ids) if !ids.is_empty() => tracing::info!(count = ids.len(), "purged recordings past retention"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "recording purge failed"),
        }
    }
}

/// SIGHUP: load the policy again; an invalid policy is refused and the old one stays.
pub async fn reload(gw: &Gateway) {
    match policy::load(&gw.config.policy_path) {
        Ok(p) => {
            let summary = format!(
                "{} tiers, {} targets, {} roles",
                p.tiers.len(),
                p.targets.len(),
                p.roles.len()
            );
            gw.policy.store(Arc::new(p));
            eprintln!("herse: policy reloaded ({summary})");
            gw.audit(AuditEvent::new("policy.reload", Severity::Info, summary))
                .await;
        }
        Err(diags) => {
            eprintln!("herse: policy reload refused, keeping the previous policy:\n{diags}");
            gw.audit(AuditEvent::new(
                "policy.reload_refused",
                Severity::Alert,
                diags.to_string(),
            ))
            .await;
        }
    }
}

async fn drain(gw: &Arc<Gateway>) {
    eprintln!(
        "herse: draining ({} live sessions, up to {:?})",
        gw.live_sessions().len(),
        gw.config.drain_timeout
    );
    gw.stop_accepting.cancel();
    let deadline = tokio::time::Instant::now() + gw.config.drain_timeout;
    while !gw.live_sessions().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in gw.live_sessions() {
        s.end("gateway shutting down");
    }
    gw.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), gw.tasks.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watcher_gives_up_on_its_sessions_only_after_the_node_timeout() {
        let limit = Duration::from_millis(200);
        let mut health = WatchHealth::new();
        assert!(!health.failed(limit), "a first failure is not yet a cut-off");
        std::thread::sleep(limit);
        assert!(health.failed(limit));
        health.read();
        assert!(!health.failed(limit), "a good pass starts the count again");
    }
}
