//! The web portal: HTTPS on the tunnel address (and an optional loopback listener for
//! the local admin). Users log in with a password and a second factor, and manage their
//! password. Sessions are short-lived cookies (HttpOnly, Secure, SameSite=Strict); every
//! state-changing request must come from the portal's own origin and carry the
//! session's CSRF token.
//!
//! - [`password`]: the password policy and argon2id hashes.
//! - [`tls`]: the portal's certificate (configured, or self-signed and sealed).
//! - [`pages`]: the handlers.

mod keys;
pub use keys::build as webauthn;
pub use keys::token_hash as approval_token_hash;
mod pages;
pub mod password;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
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

/// The portal, ready to serve connections.
#[derive(Clone)]
pub struct Portal {
    router: axum::Router,
    tls: tokio_rustls::TlsAcceptor,
}

impl Portal {
    pub fn new(gw: Arc<Gateway>, tls: Arc<rustls::ServerConfig>) -> Portal {
        Portal {
            router: pages::router(gw),
            tls: tokio_rustls::TlsAcceptor::from(tls),
        }
    }

    /// Serve one connection (TLS, then HTTP/1.1) from `origin`.
    pub async fn serve<S>(&self, stream: S, origin: Origin)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tls = match tokio::time::timeout(Duration::from_secs(10), self.tls.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "portal TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
        let service = TowerToHyperService::new(self.router.clone().layer(axum::Extension(origin)));
        if let Err(e) = Builder::new(TokioExecutor::new())
            .http1_only()
            .serve_connection(TokioIo::new(tls), service)
            .await
        {
            tracing::debug!(error = %e, "portal connection ended");
        }
    }
}
