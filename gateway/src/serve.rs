//! `herse serve`: listeners, live-session watcher, and signal handling (SIGHUP reloads
//! the policy, SIGTERM and SIGINT drain).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::front::{base_config, FrontHandler};
use crate::gateway::Gateway;
use crate::policy;
use crate::store::{AuditEvent, Severity};

/// Run until SIGTERM or SIGINT, then drain.
pub async fn run(gw: Arc<Gateway>) -> anyhow::Result<()> {
    if cfg!(feature = "bench-null-recorder") {
        if std::env::var("HERSE_BENCH_UNRECORDED").as_deref() != Ok("1") {
            anyhow::bail!("this is a benchmark build that records nothing; refusing to serve");
        }
        eprintln!("herse: WARNING: benchmark build, sessions are NOT recorded");
    }
    let closed = gw.store.close_orphaned_sessions(&gw.node).await?;
    if closed > 0 {
        gw.audit(AuditEvent::new(
            "session.end",
            Severity::Warning,
            format!("{closed} session(s) left open by a previous run closed as 'gateway restarted'"),
        ))
        .await;
    }
    let config = Arc::new(base_config(&gw));
    let permits = Arc::new(Semaphore::new(gw.config.max_connections));
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
        )));
    }
    gw.audit(AuditEvent::new(
        "gateway.start",
        Severity::Info,
        format!("node {} listening on {:?}", gw.node, gw.config.ssh_listen),
    ))
    .await;
    let watcher = tokio::spawn(watch_sessions(gw.clone()));
    let purger = tokio::spawn(purge_loop(gw.clone()));

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
    watcher.abort();
    purger.abort();
    for l in listeners {
        l.abort();
    }
    gw.audit(AuditEvent::new(
        "gateway.stop",
        Severity::Info,
        format!("node {} stopped", gw.node),
    ))
    .await;
    gw.store.close().await;
    Ok(())
}

async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    permits: Arc<Semaphore>,
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
        gw.tasks.spawn(async move {
            let _permit = permit;
            serve_connection(gw2, tcp, peer, config)
                .instrument(tracing::info_span!("connection", client.addr = %peer))
                .await;
        });
    }
}

async fn serve_connection(
    gw: Arc<Gateway>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
) {
    let authenticated = Arc::new(AtomicBool::new(false));
    let handler = FrontHandler::outer(gw.clone(), peer, authenticated.clone());
    let running = match russh::server::run_stream(config, tcp, handler).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = ?e, "handshake failed");
            return;
        }
    };
    let handle = running.handle();
    let auth_timeout = gw.config.auth_timeout;
    // A client that has not authenticated by the auth timeout is cut: no half-open
    // connections sit on the gateway.
    let timer = tokio::spawn(async move {
        tokio::time::sleep(auth_timeout).await;
        if !authenticated.load(Ordering::Acquire) {
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "herse: authentication timed out".into(),
                    String::new(),
                )
                .await;
        }
    });
    if let Err(e) = running.await {
        tracing::debug!(error = ?e, "connection ended with error");
    }
    timer.abort();
}

/// Ends live sessions that an operator killed or whose user was suspended or removed,
/// checked four times a second (so a kill from any node takes effect within a second).
async fn watch_sessions(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        match gw.store.sessions_to_end(&gw.node).await {
            Ok(list) => {
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
            Err(e) => tracing::error!(error = %e, "cannot read session kill requests"),
        }
    }
}

/// Apply recording retention at start and then every hour.
async fn purge_loop(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(crate::retention::PURGE_EVERY);
    loop {
        tick.tick().await;
        let policy = gw.policy.load_full();
        match crate::retention::purge(&gw.store, &policy, &gw.node).await {
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
