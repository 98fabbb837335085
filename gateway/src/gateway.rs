//! The running gateway's shared state: configuration, the current policy (swapped on
//! SIGHUP), the store, the opened keys and the registry of live sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GatewayConfig;
use crate::keys::GatewayKeys;
use crate::policy::Policy;
use crate::session::TargetSession;
use crate::store::{AuditEvent, Store};

pub struct Gateway {
    pub config: GatewayConfig,
    pub policy: ArcSwap<Policy>,
    pub store: Store,
    pub keys: GatewayKeys,
    /// This node's name in the sessions table (one gateway process per name).
    pub node: String,
    live: Mutex<HashMap<String, Arc<TargetSession>>>,
    /// Cancelled to stop accepting new connections (drain).
    pub stop_accepting: CancellationToken,
    /// Every connection and session task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Serialises recording creation so this node's chain of recordings stays linear.
    pub(crate) recording_chain: tokio::sync::Mutex<()>,
    /// The portal's TLS configuration, when `[web]` is configured.
    pub portal_tls: Option<Arc<rustls::ServerConfig>>,
    /// Security keys (WebAuthn), when `web.rp_id` is configured.
    pub webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    /// One permit per SSH connection, accepted or inner (a ProxyJump hop): `ssh.max_connections`.
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
    /// ProxyJump hops whose inner login has not authenticated yet, per user (each holds
    /// a connection permit): [`MAX_PENDING_HOPS`] at most.
    pub(crate) pending_hops: Arc<crate::pending::PendingLogins>,
    /// Connections from each workstation whose login has not authenticated yet (each
    /// holds a connection permit): [`MAX_STARTUPS_PER_WORKSTATION`] at most.
    pub(crate) workstation_startups: Arc<crate::pending::PendingLogins>,
    /// Sessions starting on this node, per user: between the limit check and the row
    /// that then counts (a recording and an upstream login apart), they count too.
    pub(crate) starting: Arc<crate::pending::PendingLogins>,
    /// Held while a starting session checks the user's connection limit and joins
    /// `starting`, so that concurrent logins count each other in turn.
    pub(crate) start_checks: tokio::sync::Mutex<()>,
    /// Which recordings each reader fetched lately, so that a download is audited once
    /// per read, not per chunk.
    pub(crate) recording_reads: RecentReads,
    /// What retention purges check rows against (the verified audit log's holds).
    pub retention: crate::retention::Retention,
    /// Signs the audit log's head, from this node's witness of the chain.
    pub checkpoints: crate::audit_log::Checkpointer,
}

/// ProxyJump hops a user may have waiting for their inner login at once, on all of
/// their connections. A client jumping through the gateway opens one and logs in at
/// once; without a cap, the hops of a workstation's connections (64 connections, each
/// with `ssh.max_sessions` hops) could hold every connection permit, with a key alone.
pub const MAX_PENDING_HOPS: usize = 4;

/// Logins under way (connected, not yet authenticated) from one workstation, as
/// OpenSSH's `MaxStartups` but per workstation: a workstation that opens connections
/// and never logs in holds at most this many of `ssh.max_connections`, so it cannot
/// lock the other workstations out. Room for a burst of parallel logins (Ansible's
/// default is 5 at once).
pub const MAX_STARTUPS_PER_WORKSTATION: usize = 16;

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        policy: Policy,
        store: Store,
        keys: GatewayKeys,
        portal_tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Arc<Self> {
        let webauthn = config
            .web
            .as_ref()
            .and_then(|w| w.webauthn.as_ref())
            .and_then(|(rp, origin)| crate::web::webauthn(rp, origin));
        let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        let witness = crate::audit_log::Witness::in_dir(&config.data_dir);
        Arc::new(Gateway {
            connections,
            pending_hops: crate::pending::PendingLogins::new(MAX_PENDING_HOPS),
            workstation_startups: crate::pending::PendingLogins::new(MAX_STARTUPS_PER_WORKSTATION),
            starting: crate::pending::PendingLogins::new(usize::MAX),
            start_checks: tokio::sync::Mutex::new(()),
            node: config.node.clone(),
            config,
            policy: ArcSwap::from_pointee(policy),
            store,
            live: Mutex::new(HashMap::new()),
            stop_accepting: CancellationToken::new(),
            tasks: TaskTracker::new(),
            recording_chain: tokio::sync::Mutex::new(()),
            webauthn,
            portal_tls,
            recording_reads: RecentReads::default(),
            retention: crate::retention::Retention::new(keys.audit.verifying_key(), witness.clone()),
            checkpoints: crate::audit_log::Checkpointer::new(witness),
            keys,
        })
    }

    /// Write an audit event; a failure is logged (the event's action already happened or
    /// was refused, so there is nothing to roll back).
    pub async fn audit(&self, event: AuditEvent) {
        tracing::info!(kind = event.kind, user = ?event.user, session = ?event.session, detail = %event.detail, "audit");
        if let Err(e) = self.store.audit(&event).await {
            tracing::error!(error = %e, kind = event.kind, "cannot write audit event");
        }
    }

    pub(crate) fn register(&self, s: Arc<TargetSession>) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.id().to_string(), s);
    }

    pub(crate) fn unregister(&self, id: &str) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    pub fn live_session(&self, id: &str) -> Option<Arc<TargetSession>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    pub fn live_sessions(&self) -> Vec<Arc<TargetSession>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// When each (reader, recording) download was last audited. A read is audited at its
/// first request, at any offset, and again after 10 minutes of a long read (a live
/// `sessions watch`); not at every chunk or poll.
///
/// A read counts as audited only once its event is written: if the write fails, the
/// request is refused and the next one must audit again. (Two first requests at once
/// both audit: an event too many rather than a read unseen.)
#[derive(Default)]
pub(crate) struct RecentReads(Mutex<HashMap<(String, String), std::time::Instant>>);

impl RecentReads {
    const AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
    const PRUNE_PAST: usize = 10_000;

    /// Whether `reader` reading recording `session` must be audited before any byte goes.
    pub(crate) fn needs_audit(&self, reader: &str, session: &str) -> bool {
        let reads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        reads
            .get(&(reader.to_owned(), session.to_owned()))
            .is_none_or(|at| at.elapsed() >= Self::AGAIN_AFTER)
    }

    /// The read's event is written.
    pub(crate) fn audited(&self, reader: &str, session: &str) {
        let mut reads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if reads.len() > Self::PRUNE_PAST {
            reads.retain(|_, at| at.elapsed() < Self::AGAIN_AFTER);
        }
        reads.insert((reader.to_owned(), session.to_owned()), std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::RecentReads;

    #[test]
    fn a_read_is_audited_once_and_only_once_its_event_is_written() {
        let reads = RecentReads::default();
        assert!(reads.needs_audit("ann", "s1"));
        // The event's write failed: nothing was marked, so the retry audits again.
        assert!(reads.needs_audit("ann", "s1"));
        reads.audited("ann", "s1");
        assert!(!reads.needs_audit("ann", "s1"));
        // Per reader and per recording.
        assert!(reads.needs_audit("bob", "s1"));
        assert!(reads.needs_audit("ann", "s2"));
    }
}
