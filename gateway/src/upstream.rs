//! The gateway's SSH client towards targets: verifies the target's host key or host
//! certificate against policy, then logs in with a fresh key and a user certificate
//! that is valid only as long as the session may last.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::ssh_key::Algorithm;
use russh::keys::PublicKeyOrCertificate;

use crate::certs::{self, HostKeyError, Presented, UserCertRights};
use crate::ident::SessionId;
use crate::keys::new_ssh_key;
use crate::policy::{Authorized, HostKeyCheck, Operation, Target};

/// Why the gateway could not open a target connection.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("timed out connecting to {0}")]
    Timeout(String),
    #[error("host key verification failed for {target}: {reason}")]
    HostKey { target: String, reason: HostKeyError },
    #[error("{target} refused the gateway's certificate for login {login} (check TrustedUserCAKeys and the account)")]
    AuthRejected { target: String, login: String },
    #[error("SSH error talking to {target}: {source}")]
    Ssh { target: String, source: russh::Error },
    #[error("cannot mint a certificate: {0}")]
    Cert(#[from] certs::CertError),
}

/// Verifies the target's identity; remembers why it refused, for the error message.
pub struct UpstreamHandler {
    check: HostKeyCheck,
    refusal: Arc<Mutex<Option<HostKeyError>>>,
    /// Channels the target tried to open towards the gateway (see [`refuse`]).
    refused_channels: u64,
}

/// Refuse a channel the target opened towards the gateway. The gateway asks targets
/// for no forwarding (no agent, X11, remote ports or sockets), so every such open is a
/// target misbehaving: russh's defaults would accept it and keep its state for the
/// connection's life, which a hostile target could repeat until the gateway's memory ran
/// out. A refusal keeps nothing.
///
/// Logged at the first refusal and then at each power of two, not once per open.
async fn refuse(refused: &mut u64, reply: client::ChannelOpenHandle, kind: &str) -> Result<(), russh::Error> {
    *refused += 1;
    if refused.is_power_of_two() {
        tracing::warn!(
            kind,
            refused = *refused,
            "target opened a channel towards the gateway; refused"
        );
    }
    reply
        .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
        .await;
    Ok(())
}

impl client::Handler for UpstreamHandler {
    type Error = russh::Error;

    async fn server_channel_open_session(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(&mut self.refused_channels, reply, "session").await
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(&mut self.refused_channels, reply, "direct-tcpip").await
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(&mut self.refused_channels, reply, "forwarded-tcpip").await
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(&mut self.refused_channels, reply, "direct-streamlocal").await
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(&mut self.refused_channels, reply, "forwarded-streamlocal").await
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(&mut self.refused_channels, reply, "auth-agent").await
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(&mut self.refused_channels, reply, "x11").await
    }

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let presented = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => Presented::Key(key),
            PublicKeyOrCertificate::Certificate(c) => Presented::Certificate(c),
        };
        match certs::verify_host(&self.check, presented) {
            Ok(()) => Ok(true),
            Err(e) => {
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Ok(false)
            }
        }
    }
}

pub type UpstreamHandle = client::Handle<UpstreamHandler>;

/// Ciphers offered to clients by default (`ssh.ciphers` narrows them), in russh's order
/// plus aes128-gcm, which OpenSSH users commonly select for speed on AES-NI hardware.
/// The client's order decides, so this order is only what a client without preferences
/// would get.
pub const FRONT_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// Upstream, the gateway is the client and its order decides. With AES and carry-less
/// multiply in hardware, AES-GCM costs far less than chacha20-poly1305@openssh.com here
/// (sealing 1 GiB in one process: 0.09 against 0.69 CPU-s), so it goes first; without
/// them chacha20 is the faster and constant-time choice, as in OpenSSH's default.
const UPSTREAM_CIPHERS_AES_HW: &[russh::cipher::Name] = &[
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_128_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_256_CTR,
];

/// Algorithms the gateway's SSH server offers to clients: `ciphers` (from `ssh.ciphers`).
pub fn front_algorithms(ciphers: &[russh::cipher::Name]) -> russh::Preferred {
    russh::Preferred {
        cipher: std::borrow::Cow::Owned(ciphers.to_vec()),
        ..russh::Preferred::DEFAULT
    }
}

/// Algorithms the gateway asks targets for, first choice first.
fn upstream_algorithms(aes_in_hardware: bool) -> russh::Preferred {
    let cipher = if aes_in_hardware {
        UPSTREAM_CIPHERS_AES_HW
    } else {
        FRONT_CIPHERS
    };
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(cipher),
        ..russh::Preferred::DEFAULT
    }
}

/// Whether this CPU runs AES-GCM in hardware (AES rounds and carry-less multiply).
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

fn client_config(target: &Target) -> client::Config {
    let mut cfg = client::Config {
        preferred: upstream_algorithms(aes_in_hardware()),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 65535,
        // A window's packets (8 MiB in packets of 128 bytes or more): see
        // `front::base_config`.
        channel_buffer_size: 65536,
        ..Default::default()
    };
    if matches!(target.host_key, HostKeyCheck::Ca { .. }) {
        cfg.preferred.host_key_certificates = std::borrow::Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: russh::keys::ssh_key::EcdsaCurve::NistP256,
            },
            Algorithm::Rsa {
                hash: Some(russh::keys::ssh_key::HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(russh::keys::ssh_key::HashAlg::Sha256),
            },
        ]);
    }
    cfg
}

/// What the upstream login needs beyond the authorization.
pub struct UpstreamLogin<'a> {
    pub user_ca: &'a russh::keys::ssh_key::PrivateKey,
    pub session: &'a SessionId,
    pub connect_timeout: Duration,
}

/// Open and authenticate the connection to the authorized target.
pub async fn connect(auth: &Authorized, login: UpstreamLogin<'_>) -> Result<UpstreamHandle, UpstreamError> {
    let target = auth.target();
    let addr = format!("{}:{}", target.host, target.port);
    let refusal = Arc::new(Mutex::new(None));
    let handler = UpstreamHandler {
        check: target.host_key.clone(),
        refusal: refusal.clone(),
        refused_channels: 0,
    };
    let tcp = tokio::time::timeout(login.connect_timeout, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| UpstreamError::Timeout(addr.clone()))?
        .map_err(|source| UpstreamError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    // The certificate is good only from where this connection comes from, as the target
    // sees it; a target behind a NAT opts out in the policy.
    let source = if target.pin_source_address {
        let local = tcp.local_addr().map_err(|source| UpstreamError::Connect {
            addr: addr.clone(),
            source,
        })?;
        Some(local.ip().to_canonical())
    } else {
        None
    };
    // Bulk downloads arrive on this leg: read it buffered, like the front.
    let tcp = crate::front::read_buffered(tcp);
    let connecting = client::connect_stream(Arc::new(client_config(target)), tcp, handler);
    let mut handle = match tokio::time::timeout(login.connect_timeout, connecting).await {
        Err(_) => return Err(UpstreamError::Timeout(addr)),
        Ok(Ok(h)) => h,
        Ok(Err(source)) => {
            if let Some(reason) = refusal.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(UpstreamError::HostKey {
                    target: target.name.to_string(),
                    reason,
                });
            }
            return Err(UpstreamError::Ssh {
                target: target.name.to_string(),
                source,
            });
        }
    };

    let key = new_ssh_key("herse upstream");
    let cert = certs::user_certificate(
        login.user_ca,
        key.public_key(),
        auth.login().as_str(),
        &format!("herse:user={}:session={}", auth.user(), login.session),
        // The certificate must not outlive the session; a little slack for clock skew.
        auth.limit_from(crate::store::now_micros()) + Duration::from_secs(60),
        UserCertRights {
            pty: auth.allows(Operation::Shell) || auth.allows(Operation::Exec),
            port_forwarding: auth.allows(Operation::PortForward),
            sftp_only: !auth.runs_commands(),
        },
        source,
    )?;
    // Bounded like the handshake: this runs inside the client's authentication, which
    // the front's auth timeout cannot interrupt, so a target that stops answering here
    // would otherwise hold the client's connection (and a recording) for ever.
    let authenticating = handle.authenticate_openssh_cert(auth.login().as_str(), Arc::new(key), cert);
    let result = tokio::time::timeout(login.connect_timeout, authenticating)
        .await
        .map_err(|_| UpstreamError::Timeout(addr.clone()))?
        .map_err(|source| UpstreamError::Ssh {
            target: target.name.to_string(),
            source,
        })?;
    if !result.success() {
        return Err(UpstreamError::AuthRejected {
            target: target.name.to_string(),
            login: auth.login().to_string(),
        });
    }
    Ok(handle)
}

/// What `hersectl targets check` reports.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ProbeReport {
    pub target: String,
    pub address: String,
    pub host_key_ok: bool,
    pub detail: String,
}

/// Connect to a target and verify its host key or certificate, without logging in.
pub async fn probe(target: &Target, timeout: Duration) -> ProbeReport {
    let address = format!("{}:{}", target.host, target.port);
    let refusal = Arc::new(Mutex::new(None));
    let handler = UpstreamHandler {
        check: target.host_key.clone(),
        refusal: refusal.clone(),
        refused_channels: 0,
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| e.to_string())?;
        client::connect_stream(Arc::new(client_config(target)), tcp, handler)
            .await
            .map_err(|e| e.to_string())
    };
    let (ok, detail) = match tokio::time::timeout(timeout, attempt).await {
        Err(_) => (false, format!("timed out after {timeout:?}")),
        Ok(Ok(h)) => {
            let _ = h.disconnect(russh::Disconnect::ByApplication, "probe", "").await;
            (true, "host key verified".to_owned())
        }
        Ok(Err(e)) => match refusal.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(r) => (false, format!("host key verification failed: {r}")),
            None => (false, e),
        },
    };
    ProbeReport {
        target: target.name.to_string(),
        address,
        host_key_ok: ok,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_prefers_aes_gcm_only_with_aes_in_hardware() {
        assert_eq!(
            upstream_algorithms(true).cipher.first(),
            Some(&russh::cipher::AES_128_GCM)
        );
        assert_eq!(
            upstream_algorithms(false).cipher.first(),
            Some(&russh::cipher::CHACHA20_POLY1305)
        );
        // Both orders offer the same set, so a target limited to either cipher still
        // connects whatever the CPU.
        let mut with = upstream_algorithms(true).cipher.to_vec();
        let mut without = upstream_algorithms(false).cipher.to_vec();
        with.sort_by_key(|n| n.as_ref().to_owned());
        without.sort_by_key(|n| n.as_ref().to_owned());
        assert_eq!(with, without);
    }

    #[test]
    fn clients_are_offered_chacha20_and_aes_gcm() {
        let front = front_algorithms(FRONT_CIPHERS);
        for c in [
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_128_GCM,
            russh::cipher::AES_256_GCM,
        ] {
            assert!(front.cipher.contains(&c), "{c:?} not offered");
        }
    }
}
