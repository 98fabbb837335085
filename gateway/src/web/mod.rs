//! The web portal: HTTPS on the tunnel address (and an optional loopback listener for
//! the local admin). Users log in with a password and a second factor, and manage their
//! password. Sessions are short-lived cookies (HttpOnly, Secure, SameSite=Strict); every
//! state-changing request must come from the portal's own origin and carry the
//! session's CSRF token.
//!
//! - [`password`]: the password policy and argon2id hashes.
//! - [`tls`]: the portal's certificate (configured, or self-signed and sealed).
//! - [`pages`]: the handlers.

mod api;
mod grants;
mod keys;
pub use keys::build as webauthn;
mod pages;
pub mod password;
mod slots;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::gateway::Gateway;
use crate::origin::Origin;

/// Portal sessions last this long, whatever happens.
pub const SESSION_TTL: Duration = Duration::from_secs(15 * 60);
/// Failed portal logins in a row before the account is locked.
pub const LOGIN_FAILURES: i64 = 5;
/// First lock length (doubled per further failure).
pub const LOGIN_LOCK: Duration = Duration::from_secs(15 * 60);

/// A fresh 256-bit secret token (cookies, API tokens, CSRF tokens, approval URLs,
/// ceremony ids), URL-safe base64.
pub fn random_token() -> String {
    use base64::Engine as _;
    use rand::RngExt;
    let mut raw = [0u8; 32];
    rand::rng().fill(&mut raw[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// What the store keeps of a token: its SHA-256, in hex.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Portal connections at once (all listeners); more wait for nothing and are closed.
const MAX_CONNECTIONS: usize = 128;
/// Portal connections at once from one address (a workstation's tunnel address, or
/// loopback for the local admin): a browser opens about six, hersectl one per command.
const MAX_CONNECTIONS_PER_CLIENT: usize = 16;
/// A request's headers must arrive within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No portal connection lives longer than this (pages are small; browsers reconnect).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// The portal, ready to serve connections.
#[derive(Clone)]
pub struct Portal {
    router: axum::Router,
    tls: tokio_rustls::TlsAcceptor,
    slots: Arc<slots::Slots>,
}

impl Portal {
    pub fn new(gw: Arc<Gateway>, tls: Arc<rustls::ServerConfig>) -> Portal {
        Portal {
            router: pages::router(gw),
            tls: tokio_rustls::TlsAcceptor::from(tls),
            slots: slots::Slots::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT),
        }
    }

    /// Serve one connection (TLS, then HTTP/1.1) from `origin`.
    pub async fn serve<S>(&self, stream: S, origin: Origin)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _slot = match self.slots.take(origin.addr.ip()) {
            Ok(slot) => slot,
            Err(slots::Full::All) => {
                tracing::warn!(client = %origin.addr, "portal connection limit reached");
                return;
            }
            Err(slots::Full::Client) => {
                tracing::warn!(
                    client = %origin.addr,
                    workstation = ?origin.workstation().map(|w| w.as_str()),
                    "portal connection limit of this client reached"
                );
                return;
            }
        };
        let tls = match tokio::time::timeout(Duration::from_secs(10), self.tls.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "portal TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
        let service = TowerToHyperService::new(self.router.clone().layer(axum::Extension(origin)));
        let mut builder = Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        let conn = builder.serve_connection(TokioIo::new(tls), service);
        match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
            Ok(Err(e)) => tracing::debug!(error = %e, "portal connection ended"),
            Err(_) => tracing::debug!("portal connection closed at its lifetime limit"),
            Ok(Ok(())) => {}
        }
    }
}

/// A short code an approval page shows, to match against the terminal that asked:
/// six characters without look-alikes.
pub fn short_code() -> String {
    use rand::RngExt;
    const CODE: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..6)
        .map(|_| CODE[rand::rng().random_range(0..CODE.len())] as char)
        .collect()
}
