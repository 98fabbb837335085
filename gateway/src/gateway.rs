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
    /// When each (reader, recording) download was last audited (see `read_is_new`).
    recording_reads: Mutex<HashMap<(String, String), std::time::Instant>>,
}

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
        Arc::new(Gateway {
            connections,
            node: config.node.clone(),
            config,
            policy: ArcSwap::from_pointee(policy),
            store,
            keys,
            live: Mutex::new(HashMap::new()),
            stop_accepting: CancellationToken::new(),
            tasks: TaskTracker::new(),
            recording_chain: tokio::sync::Mutex::new(()),
            webauthn,
            portal_tls,
            recording_reads: Mutex::new(HashMap::new()),
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

    /// Whether `reader` reading recording `session` starts a new read to audit: the first
    /// request of a download at any offset, again after 10 minutes of a long read (a
    /// live `sessions watch`); not every chunk or poll.
    pub(crate) fn read_is_new(&self, reader: &str, session: &str) -> bool {
        const AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
        let mut reads = self.recording_reads.lock().unwrap_or_else(|p| p.into_inner());
        if reads.len() > 10_000 {
            reads.retain(|_, at| at.elapsed() < AGAIN_AFTER);
        }
        let key = (reader.to_owned(), session.to_owned());
        match reads.get(&key) {
            Some(at) if at.elapsed() < AGAIN_AFTER => false,
            _ => {
                reads.insert(key, std::time::Instant::now());
                true
            }
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
