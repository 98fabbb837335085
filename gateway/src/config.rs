//! The gateway's own configuration (`herse.toml`): where its state lives and how it listens.
//! Parsed once into typed values; every problem is reported with file:line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{self, Diagnostics, Source};
use crate::wg::pool::TunnelNet;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Spanned<PathBuf>,
    master_key_file: Option<Spanned<PathBuf>>,
    policy: Spanned<PathBuf>,
    database_url: Option<Spanned<String>>,
    ssh: RawSsh,
    wireguard: Option<RawWireguard>,
    metrics: Option<RawMetrics>,
    web: Option<RawWeb>,
    #[serde(default)]
    passwords: RawPasswords,
    #[serde(default)]
    recordings: RawRecordings,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    cluster: RawCluster,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    tunnel_port: Option<Spanned<u16>>,
    max_connections: Option<Spanned<usize>>,
    max_sessions: Option<Spanned<usize>>,
    ciphers: Option<Spanned<Vec<Spanned<String>>>>,
    auth_timeout: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    client_alive_interval: Option<Spanned<String>>,
    client_alive_count_max: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWireguard {
    listen: Spanned<String>,
    address: Spanned<String>,
    endpoint: Spanned<String>,
    persistent_keepalive: Option<Spanned<u16>>,
    /// Serve a read-only UAPI socket under this interface name, for `wg show NAME`.
    interface: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    tunnel_port: Option<Spanned<u16>>,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    #[serde(default)]
    names: Vec<String>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    /// The WebAuthn relying party: the portal's DNS name (an IP address cannot be one).
    rp_id: Option<Spanned<String>>,
    /// The portal's origin as browsers see it (default https://RP_ID).
    origin: Option<Spanned<String>>,
    /// How long an SSH login waits for its security-key approval.
    approval_ttl: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPasswords {
    min_length: Option<Spanned<usize>>,
    min_classes: Option<Spanned<usize>>,
    max_age: Option<Spanned<String>>,
    history: Option<Spanned<usize>>,
    min_age: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRecordings {
    dir: Option<Spanned<PathBuf>>,
    /// How long the recording store may take to accept a write before it counts as
    /// failed.
    stall_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    #[serde(default)]
    env_allow: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// `udp:IP:PORT` or `unix:/PATH`: forward each audit event as RFC 5424.
    syslog: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    /// This gateway's name among the nodes sharing the database (default: the host name).
    node: Option<Spanned<String>>,
    /// How long a node may go unseen before the others close its sessions.
    node_timeout: Option<Spanned<String>>,
}

/// Bounds of `recordings.stall_timeout`: above a loaded disk's slowest sync, and short
/// enough that a hung store ends its sessions (and refuses new ones) promptly.
const STALL_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const STALL_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// Bounds of `cluster.node_timeout`: at least three heartbeats, at most an hour.
const NODE_TIMEOUT_MIN: Duration = Duration::from_secs(15);
const NODE_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// This machine's host name, the default node name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| valid_node_name(s))
        .unwrap_or_else(|| "herse".to_owned())
}

/// What `[cluster] node` may be: 1–64 of `[A-Za-z0-9._-]`.
pub fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The WireGuard front door.
#[derive(Debug, Clone)]
pub struct WireguardConfig {
    /// The UDP socket: the gateway's only public surface.
    pub listen: SocketAddr,
    /// The gateway's tunnel address; the rest of its subnet is the workstation pool.
    pub net: TunnelNet,
    /// `host:port` that workstations' wg-quick configs name as `Endpoint`.
    pub endpoint: String,
    pub persistent_keepalive: u16,
    /// The SSH front's port on the tunnel address.
    pub ssh_port: u16,
    /// UAPI socket name (`wg show NAME`), when configured.
    pub interface: Option<String>,
}

/// The web portal.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Its port on the tunnel address (with `[wireguard]`).
    pub tunnel_port: Option<u16>,
    /// Loopback listeners (local admin, tests).
    pub listen: Vec<SocketAddr>,
    /// Names (and addresses) the self-signed certificate is made for.
    pub names: Vec<String>,
    /// A certificate chain and key (PEM files) instead of the self-signed pair.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    /// WebAuthn: relying-party id and the portal's origin, when security keys are on.
    pub webauthn: Option<(String, String)>,
    pub approval_ttl: Duration,
}

/// The validated gateway configuration. Relative paths are resolved against the
/// directory of the configuration file.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub path: PathBuf,
    pub data_dir: PathBuf,
    pub master_key_file: PathBuf,
    pub policy_path: PathBuf,
    pub database_url: crate::database_url::DatabaseUrl,
    /// Plain TCP listeners, loopback only (local admin, quickstart, tests).
    pub ssh_listen: Vec<SocketAddr>,
    pub wireguard: Option<WireguardConfig>,
    /// Loopback address serving Prometheus metrics, when configured.
    pub metrics_listen: Option<SocketAddr>,
    pub web: Option<WebConfig>,
    pub password_policy: crate::web::password::PasswordPolicy,
    pub max_connections: usize,
    /// Channels open at once on one SSH connection (OpenSSH's `MaxSessions`): shells,
    /// execs, SFTP, forwards and ProxyJump hops alike.
    pub max_sessions: usize,
    /// Ciphers the SSH server offers clients (OpenSSH's `Ciphers`); the client's order
    /// picks among them.
    pub ciphers: Vec<russh::cipher::Name>,
    pub auth_timeout: Duration,
    pub drain_timeout: Duration,
    /// When a silent client counts as gone (OpenSSH's `ClientAliveInterval` and
    /// `ClientAliveCountMax`): SSH keep-alives, and the tunnel's TCP connections.
    pub client_alive: crate::wg::Liveness,
    pub recordings_dir: PathBuf,
    /// A recording store that takes longer than this to accept a write has failed: its
    /// sessions end and new ones are refused (`[recordings] stall_timeout`).
    pub recordings_stall: Duration,
    pub env_allow: Vec<glob::Pattern>,
    /// Where audit events are also sent (`[audit] syslog`).
    pub audit_syslog: Option<crate::audit_log::syslog::SyslogTarget>,
    /// This gateway's node name in the shared database (`[cluster] node`).
    pub node: String,
    /// A node unseen for this long is presumed stopped and its sessions are closed.
    pub node_timeout: Duration,
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self, Diagnostics> {
        let text = diag::read(path)?;
        let src = Source { path, text: &text };
        let raw: RawConfig = src.parse()?;
        // Relative paths are relative to the configuration file's directory, made
        // absolute once so every later use (SQLite URL, recordings) agrees.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_owned());
        let resolve = |p: &Path| normalize(&if p.is_absolute() { p.to_owned() } else { base.join(p) });
        let mut errors = Vec::new();

        let data_dir = resolve(raw.data_dir.get_ref());
        let master_key_file = match &raw.master_key_file {
            Some(p) => resolve(p.get_ref()),
            None => PathBuf::from("/etc/herse/master.key"),
        };
        if master_key_file.starts_with(&data_dir) {
            errors.push(src.at(
                raw.master_key_file.as_ref().map(|p| p.span()),
                "master_key_file must not live inside data_dir: the key that encrypts the data \
                 is never stored beside it",
            ));
        }
        let mut ssh_listen = Vec::new();
        for l in &raw.ssh.listen {
            match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => ssh_listen.push(a),
                Err(e) => errors.push(src.at(Some(l.span()), format!("ssh.listen: {e}"))),
            }
        }
        for (l, a) in raw.ssh.listen.iter().zip(&ssh_listen) {
            if !a.ip().is_loopback() {
                errors.push(src.at(
                    Some(l.span()),
                    "ssh.listen accepts loopback addresses only: workstations reach the gateway through \
                     WireGuard ([wireguard]), never a plain TCP port",
                ));
            }
        }
        let wireguard = raw.wireguard.as_ref().and_then(|w| {
            let listen = match w.listen.get_ref().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(src.at(Some(w.listen.span()), format!("wireguard.listen: {e}")));
                    None
                }
            };
            let net = match TunnelNet::parse(w.address.get_ref()) {
                Ok(n) => Some(n),
                Err(e) => {
                    errors.push(src.at(Some(w.address.span()), format!("wireguard.address: {e}")));
                    None
                }
            };
            let endpoint = w.endpoint.get_ref().trim().to_owned();
            let port_ok = endpoint
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !port_ok || endpoint.contains(char::is_whitespace) {
                errors.push(src.at(
                    Some(w.endpoint.span()),
                    "wireguard.endpoint must be HOST:PORT as workstations reach it (e.g. gw.example.com:51820)",
                ));
            }
            let ssh_port = raw.ssh.tunnel_port.as_ref().map(|p| *p.get_ref()).unwrap_or(22);
            if ssh_port == 0 {
                errors.push(src.at(
                    raw.ssh.tunnel_port.as_ref().map(|p| p.span()),
                    "ssh.tunnel_port must not be 0",
                ));
            }
            let interface = w.interface.as_ref().and_then(|i| {
                let n = i.get_ref();
                let valid = !n.is_empty()
                    && n.len() <= 15
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if valid {
                    Some(n.clone())
                } else {
                    errors.push(src.at(
                        Some(i.span()),
                        "wireguard.interface must be an interface name: 1 to 15 letters, digits, '-', '_' or '.'",
                    ));
                    None
                }
            });
            Some(WireguardConfig {
                interface,
                listen: listen?,
                net: net?,
                endpoint,
                persistent_keepalive: w.persistent_keepalive.as_ref().map(|k| *k.get_ref()).unwrap_or(25),
                ssh_port,
            })
        });
        let metrics_listen = raw
            .metrics
            .as_ref()
            .and_then(|m| match m.listen.get_ref().parse::<SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => Some(a),
                Ok(_) => {
                    errors.push(src.at(Some(m.listen.span()), "metrics.listen accepts loopback addresses only"));
                    None
                }
                Err(e) => {
                    errors.push(src.at(Some(m.listen.span()), format!("metrics.listen: {e}")));
                    None
                }
            });
        let web = raw.web.as_ref().map(|w| {
            let mut listen = Vec::new();
            for l in &w.listen {
                match l.get_ref().parse::<SocketAddr>() {
                    Ok(a) if a.ip().is_loopback() => listen.push(a),
                    Ok(_) => errors.push(src.at(
                        Some(l.span()),
                        "web.listen accepts loopback addresses only: workstations reach the portal through WireGuard",
                    )),
                    Err(e) => errors.push(src.at(Some(l.span()), format!("web.listen: {e}"))),
                }
            }
            let tunnel_port = match (&raw.wireguard, &w.tunnel_port) {
                (Some(_), p) => Some(p.as_ref().map(|p| *p.get_ref()).unwrap_or(443)),
                (None, Some(p)) => {
                    errors.push(src.at(Some(p.span()), "web.tunnel_port needs a [wireguard] section"));
                    None
                }
                (None, None) => None,
            };
            let cert_and_key = match (&w.cert, &w.key) {
                (Some(c), Some(k)) => Some((resolve(c.get_ref()), resolve(k.get_ref()))),
                (None, None) => None,
                (Some(c), None) => {
                    errors.push(src.at(Some(c.span()), "web.cert needs web.key"));
                    None
                }
                (None, Some(k)) => {
                    errors.push(src.at(Some(k.span()), "web.key needs web.cert"));
                    None
                }
            };
            let mut names = w.names.clone();
            names.push("localhost".into());
            names.push("127.0.0.1".into());
            let webauthn = match (&w.rp_id, &w.origin) {
                (Some(rp), origin) => {
                    let rp_id = rp.get_ref().trim().to_owned();
                    if rp_id.is_empty() || rp_id.parse::<std::net::IpAddr>().is_ok() || rp_id.contains(['/', ':']) {
                        errors.push(src.at(Some(rp.span()), "web.rp_id must be a DNS name (not an address)"));
                    }
                    names.push(rp_id.clone());
                    let origin = origin
                        .as_ref()
                        .map(|o| o.get_ref().trim_end_matches('/').to_owned())
                        .unwrap_or_else(|| format!("https://{rp_id}"));
                    if !origin.starts_with(&format!("https://{rp_id}")) {
                        errors.push(src.at(
                            w.origin.as_ref().map(|o| o.span()),
                            "web.origin must be https://RP_ID[:PORT]",
                        ));
                    }
                    Some((rp_id, origin))
                }
                (None, Some(o)) => {
                    errors.push(src.at(Some(o.span()), "web.origin needs web.rp_id"));
                    None
                }
                (None, None) => None,
            };
            let approval_ttl = match &w.approval_ttl {
                None => Duration::from_secs(50),
                Some(t) => match humantime::parse_duration(t.get_ref()) {
                    Ok(d) if !d.is_zero() && d <= Duration::from_secs(900) => d,
                    _ => {
                        errors.push(src.at(Some(t.span()), "web.approval_ttl: a duration up to 15m"));
                        Duration::from_secs(120)
                    }
                },
            };
            WebConfig {
                tunnel_port,
                listen,
                names,
                cert_and_key,
                webauthn,
                approval_ttl,
            }
        });
        let mut password_policy = crate::web::password::PasswordPolicy::default();
        if let Some(m) = &raw.passwords.min_length {
            if *m.get_ref() < 8 {
                errors.push(src.at(Some(m.span()), "passwords.min_length must be at least 8"));
            }
            password_policy.min_length = *m.get_ref();
        }
        if let Some(m) = &raw.passwords.min_classes {
            if !(1..=4).contains(m.get_ref()) {
                errors.push(src.at(Some(m.span()), "passwords.min_classes is between 1 and 4"));
            }
            password_policy.min_classes = *m.get_ref();
        }
        if let Some(m) = &raw.passwords.max_age {
            match m.get_ref().as_str() {
                "never" => password_policy.max_age = None,
                v => match humantime::parse_duration(v) {
                    Ok(d) if !d.is_zero() => password_policy.max_age = Some(d),
                    _ => errors.push(src.at(Some(m.span()), "passwords.max_age: a duration (\"365d\") or \"never\"")),
                },
            }
        }
        if let Some(h) = &raw.passwords.history {
            if *h.get_ref() > crate::web::password::MAX_HISTORY {
                errors.push(src.at(
                    Some(h.span()),
                    format!(
                        "passwords.history is at most {} (each is an argon2id check at every change)",
                        crate::web::password::MAX_HISTORY
                    ),
                ));
            }
            password_policy.history = *h.get_ref();
        }
        if let Some(m) = &raw.passwords.min_age {
            match humantime::parse_duration(m.get_ref()) {
                Ok(d) if password_policy.max_age.is_some_and(|max| d >= max) => errors.push(src.at(
                    Some(m.span()),
                    "passwords.min_age must be shorter than passwords.max_age (or nobody could renew in time)",
                )),
                Ok(d) => password_policy.min_age = d,
                Err(_) => errors.push(src.at(
                    Some(m.span()),
                    "passwords.min_age: a duration (\"1d\", \"0s\" for none)",
                )),
            }
        }
        if raw.ssh.listen.is_empty() && raw.wireguard.is_none() {
            errors.push(src.at(
                None,
                "nothing to serve: configure [wireguard] (and optionally a loopback ssh.listen)",
            ));
        }
        if raw.wireguard.is_none() {
            if let Some(p) = &raw.ssh.tunnel_port {
                errors.push(src.at(Some(p.span()), "ssh.tunnel_port needs a [wireguard] section"));
            }
        }
        let mut duration = |v: &Option<Spanned<String>>, what: &str, default: Duration| match v {
            None => default,
            Some(s) => match humantime::parse_duration(s.get_ref()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    errors.push(src.at(Some(s.span()), format!("{what} must be more than zero")));
                    default
                }
                Err(e) => {
                    errors.push(src.at(Some(s.span()), format!("{what}: {e}")));
                    default
                }
            },
        };
        let auth_timeout = duration(&raw.ssh.auth_timeout, "ssh.auth_timeout", Duration::from_secs(60));
        let drain_timeout = duration(&raw.ssh.drain_timeout, "ssh.drain_timeout", Duration::from_secs(30));
        let client_alive_interval = match &raw.ssh.client_alive_interval {
            None => Duration::from_secs(30),
            Some(t) => match humantime::parse_duration(t.get_ref()) {
                Ok(d) if (Duration::from_secs(1)..=crate::wg::Liveness::MAX_INTERVAL).contains(&d) => d,
                _ => {
                    errors.push(src.at(Some(t.span()), "ssh.client_alive_interval: a duration from 1s to 1h"));
                    Duration::from_secs(30)
                }
            },
        };
        let client_alive_count_max = match &raw.ssh.client_alive_count_max {
            Some(m) if !(1..=crate::wg::Liveness::MAX_COUNT).contains(m.get_ref()) => {
                errors.push(src.at(
                    Some(m.span()),
                    format!(
                        "ssh.client_alive_count_max: from 1 to {}",
                        crate::wg::Liveness::MAX_COUNT
                    ),
                ));
                3
            }
            Some(m) => *m.get_ref(),
            None => 3,
        };
        let max_connections = match &raw.ssh.max_connections {
            Some(m) if *m.get_ref() == 0 => {
                errors.push(src.at(Some(m.span()), "ssh.max_connections must be at least 1"));
                1
            }
            Some(m) => *m.get_ref(),
            None => 512,
        };
        let max_sessions = match &raw.ssh.max_sessions {
            Some(m) if *m.get_ref() == 0 => {
                errors.push(src.at(Some(m.span()), "ssh.max_sessions must be at least 1"));
                1
            }
            Some(m) => *m.get_ref(),
            None => 10,
        };
        let ciphers = match &raw.ssh.ciphers {
            None => crate::upstream::FRONT_CIPHERS.to_vec(),
            Some(list) if list.get_ref().is_empty() => {
                errors.push(src.at(Some(list.span()), "ssh.ciphers must name at least one cipher"));
                crate::upstream::FRONT_CIPHERS.to_vec()
            }
            Some(list) => {
                let mut ciphers = Vec::new();
                for c in list.get_ref() {
                    match crate::upstream::FRONT_CIPHERS
                        .iter()
                        .find(|n| n.as_ref() == c.get_ref())
                    {
                        Some(n) if ciphers.contains(n) => {
                            errors.push(src.at(Some(c.span()), format!("ssh.ciphers: {} is listed twice", c.get_ref())))
                        }
                        Some(n) => ciphers.push(*n),
                        None => errors.push(src.at(
                            Some(c.span()),
                            format!(
                                "ssh.ciphers: unknown cipher {:?} (supported: {})",
                                c.get_ref(),
                                crate::upstream::FRONT_CIPHERS
                                    .iter()
                                    .map(|n| n.as_ref())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )),
                    }
                }
                ciphers
            }
        };
        let mut env_allow = Vec::new();
        for p in &raw.sessions.env_allow {
            match glob::Pattern::new(p.get_ref()) {
                Ok(g) => env_allow.push(g),
                Err(e) => errors.push(src.at(Some(p.span()), format!("sessions.env_allow: {e}"))),
            }
        }
        let database_url = match &raw.database_url {
            Some(u) => {
                let u = u.get_ref().clone();
                if !(u.starts_with("sqlite:") || u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                    errors.push(src.at(
                        raw.database_url.as_ref().map(|u| u.span()),
                        "database_url must start with sqlite:, postgres:// or postgresql://",
                    ));
                }
                u
            }
            None => format!("sqlite://{}", data_dir.join("herse.db").display()),
        };
        let recordings_dir = match &raw.recordings.dir {
            Some(d) => resolve(d.get_ref()),
            None => data_dir.join("recordings"),
        };
        if let (Some(w), Some(raw_web)) = (&web, &raw.web) {
            // A login waiting for its approval is still cut at the auth timeout.
            if w.webauthn.is_some() && w.approval_ttl >= auth_timeout {
                errors.push(src.at(
                    raw_web.approval_ttl.as_ref().map(|t| t.span()),
                    format!(
                        "web.approval_ttl ({}) must be shorter than ssh.auth_timeout ({})",
                        humantime::format_duration(w.approval_ttl),
                        humantime::format_duration(auth_timeout)
                    ),
                ));
            }
        }
        let audit_syslog = raw.audit.syslog.as_ref().and_then(|t| match t.get_ref().parse() {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(src.at(Some(t.span()), format!("audit.syslog: {e}")));
                None
            }
        });
        let node = match &raw.cluster.node {
            None => host_name(),
            Some(n) if valid_node_name(n.get_ref()) => n.get_ref().clone(),
            Some(n) => {
                errors.push(src.at(
                    Some(n.span()),
                    "cluster.node must be 1 to 64 letters, digits, '-', '_' or '.'",
                ));
                String::new()
            }
        };
        let recordings_stall = match &raw.recordings.stall_timeout {
            None => session_recordings::STALL_LIMIT,
            Some(t) => match humantime::parse_duration(t.get_ref()) {
                Ok(d) if (STALL_TIMEOUT_MIN..=STALL_TIMEOUT_MAX).contains(&d) => d,
                _ => {
                    errors.push(src.at(Some(t.span()), "recordings.stall_timeout: a duration from 1s to 5m"));
                    STALL_TIMEOUT_MIN
                }
            },
        };
        let node_timeout = match &raw.cluster.node_timeout {
            None => Duration::from_secs(60),
            Some(t) => match humantime::parse_duration(t.get_ref()) {
                Ok(d) if (NODE_TIMEOUT_MIN..=NODE_TIMEOUT_MAX).contains(&d) => d,
                _ => {
                    errors.push(src.at(
                        Some(t.span()),
                        "cluster.node_timeout: a duration from 15s to 1h (three heartbeats at least)",
                    ));
                    NODE_TIMEOUT_MIN
                }
            },
        };
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        Ok(GatewayConfig {
            path: path.to_owned(),
            data_dir,
            master_key_file,
            policy_path: resolve(raw.policy.get_ref()),
            database_url: crate::database_url::DatabaseUrl::new(database_url),
            ssh_listen,
            wireguard,
            metrics_listen,
            web,
            password_policy,
            max_connections,
            max_sessions,
            ciphers,
            auth_timeout,
            drain_timeout,
            client_alive: crate::wg::Liveness {
                interval: client_alive_interval,
                count_max: client_alive_count_max,
            },
            recordings_dir,
            recordings_stall,
            env_allow,
            audit_syslog,
            node,
            node_timeout,
        })
    }

    /// Whether a client may pass this environment variable to the target.
    pub fn env_allowed(&self, name: &str) -> bool {
        self.env_allow.iter().any(|p| p.matches(name))
    }
}

/// Remove `.` and `..` components without touching the filesystem, so that containment
/// checks (the master key outside the data directory) cannot be dodged with `..`.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<GatewayConfig, Diagnostics> {
        // A directory per call: tests run in parallel, and two configs of the same
        // length once shared one (and one test removed it under the other).
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("herse-cfg-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("herse.toml");
        std::fs::write(&p, text).unwrap();
        let r = GatewayConfig::load(&p);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn paths_are_absolute_and_the_master_key_stays_out_of_the_data_dir() {
        let c = load("data_dir = \"d\"\nmaster_key_file = \"../k/master.key\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n").unwrap();
        assert!(c.data_dir.is_absolute() && c.database_url.expose().starts_with("sqlite:///"));
        assert!(!c.master_key_file.to_string_lossy().contains(".."));
        let e = load("data_dir = \"d\"\nmaster_key_file = \"x/../d/master.key\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n").unwrap_err();
        assert!(e.to_string().contains("must not live inside data_dir"), "{e}");
        let e = load("data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"nope\"]\nauth_timeout = \"soon\"\n")
            .unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
    }

    #[test]
    fn plain_listeners_are_loopback_only_and_wireguard_is_checked() {
        let e = load("data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"0.0.0.0:22\"]\n").unwrap_err();
        assert!(e.to_string().contains("loopback addresses only"), "{e}");
        let e = load("data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\n").unwrap_err();
        assert!(e.to_string().contains("nothing to serve"), "{e}");
        let c = load(
            "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\ntunnel_port = 2022\n[wireguard]\nlisten = \"0.0.0.0:51820\"\n\
             address = \"10.77.0.1/24\"\nendpoint = \"gw.example.com:51820\"\n",
        )
        .unwrap();
        let w = c.wireguard.unwrap();
        assert_eq!((w.ssh_port, w.persistent_keepalive, w.net.prefix), (2022, 25, 24));
        let e = load(
            "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\n[wireguard]\nlisten = \"0.0.0.0\"\n\
             address = \"10.77.0.0/24\"\nendpoint = \"gw.example.com\"\nextra = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = load(
            "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\n[wireguard]\nlisten = \"0.0.0.0\"\n\
             address = \"10.77.0.0/24\"\nendpoint = \"gw.example.com\"\n",
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
    }

    #[test]
    fn client_alive_defaults_to_openssh_like_values_and_is_checked() {
        let base = "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n";
        let c = load(base).unwrap();
        assert_eq!(
            c.client_alive,
            crate::wg::Liveness {
                interval: Duration::from_secs(30),
                count_max: 3
            }
        );
        let c = load(&format!(
            "{base}client_alive_interval = \"2s\"\nclient_alive_count_max = 5\n"
        ))
        .unwrap();
        assert_eq!(
            c.client_alive,
            crate::wg::Liveness {
                interval: Duration::from_secs(2),
                count_max: 5
            }
        );
        for (lines, what) in [
            (
                "client_alive_interval = \"0s\"\n",
                "ssh.client_alive_interval: a duration from 1s to 1h",
            ),
            (
                "client_alive_interval = \"500us\"\n",
                "ssh.client_alive_interval: a duration from 1s to 1h",
            ),
            (
                "client_alive_interval = \"2h\"\n",
                "ssh.client_alive_interval: a duration from 1s to 1h",
            ),
            ("client_alive_interval = \"often\"\n", "ssh.client_alive_interval:"),
            (
                "client_alive_count_max = 0\n",
                "ssh.client_alive_count_max: from 1 to 100",
            ),
            (
                "client_alive_count_max = 4294967295\n",
                "ssh.client_alive_count_max: from 1 to 100",
            ),
        ] {
            let e = load(&format!("{base}{lines}")).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains(":5:"), "{lines}: {e}");
        }
    }

    #[test]
    fn ciphers_default_to_all_and_are_checked() {
        let base = "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n";
        let c = load(base).unwrap();
        assert_eq!(c.ciphers, crate::upstream::FRONT_CIPHERS);
        let c = load(&format!(
            "{base}ciphers = [\"aes128-gcm@openssh.com\", \"aes256-gcm@openssh.com\"]\n"
        ))
        .unwrap();
        assert_eq!(c.ciphers, [russh::cipher::AES_128_GCM, russh::cipher::AES_256_GCM]);
        for (list, what) in [
            (
                "[\"aes128-gcm@openssh.com\", \"3des-cbc\"]",
                "unknown cipher \"3des-cbc\"",
            ),
            (
                "[\"aes128-gcm@openssh.com\", \"aes128-gcm@openssh.com\"]",
                "listed twice",
            ),
            ("[]", "at least one"),
        ] {
            let e = load(&format!("{base}ciphers = {list}\n")).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains(":5:"), "{list}: {e}");
        }
    }

    #[test]
    fn connection_and_session_limits_default_like_openssh_and_refuse_zero() {
        let base = "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n";
        let c = load(base).unwrap();
        assert_eq!((c.max_connections, c.max_sessions), (512, 10));
        let c = load(&format!("{base}max_connections = 4\nmax_sessions = 2\n")).unwrap();
        assert_eq!((c.max_connections, c.max_sessions), (4, 2));
        for (key, line) in [("max_connections", 5), ("max_sessions", 5)] {
            let e = load(&format!("{base}{key} = 0\n")).unwrap_err().to_string();
            assert!(e.contains(&format!("ssh.{key} must be at least 1")), "{e}");
            assert!(e.contains(&format!(":{line}:")), "no line number: {e}");
        }
    }

    #[test]
    fn audit_syslog_targets_are_checked() {
        let base = "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n[audit]\n";
        let c = load(&format!("{base}syslog = \"udp:127.0.0.1:514\"\n")).unwrap();
        assert_eq!(c.audit_syslog.unwrap().to_string(), "udp:127.0.0.1:514");
        let c = load(&format!("{base}syslog = \"unix:/dev/log\"\n")).unwrap();
        assert_eq!(c.audit_syslog.unwrap().to_string(), "unix:/dev/log");
        let e = load(&format!("{base}syslog = \"udp:loghost\"\n")).unwrap_err();
        assert!(
            e.to_string().contains("herse.toml:6") && e.to_string().contains("audit.syslog"),
            "{e}"
        );
        let e = load(&format!("{base}facility = \"auth\"\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
    #[test]
    fn the_node_name_defaults_to_the_host_and_its_timeout_is_bounded() {
        let base = "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n";
        let c = load(base).unwrap();
        assert!(valid_node_name(&c.node), "{}", c.node);
        assert_eq!(c.node_timeout, Duration::from_secs(60));
        let c = load(&format!(
            "{base}[cluster]\nnode = \"gw-2.paris\"\nnode_timeout = \"2m\"\n"
        ))
        .unwrap();
        assert_eq!(
            (c.node.as_str(), c.node_timeout),
            ("gw-2.paris", Duration::from_secs(120))
        );
        for (line, what) in [
            ("node = \"\"", "cluster.node must be"),
            ("node = \"gw 2\"", "cluster.node must be"),
            ("node = \"gw/2\"", "cluster.node must be"),
            ("node_timeout = \"10s\"", "cluster.node_timeout"),
            ("node_timeout = \"2h\"", "cluster.node_timeout"),
            ("node_timeout = \"soon\"", "cluster.node_timeout"),
            ("heartbeat = \"1s\"", "unknown field"),
        ] {
            let e = load(&format!("{base}[cluster]\n{line}\n")).unwrap_err().to_string();
            assert!(e.contains("herse.toml:6") && e.contains(what), "{line}: {e}");
        }
    }

    #[test]
    fn password_history_defaults_to_five_and_is_bounded() {
        let base = "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n[passwords]\n";
        assert_eq!(load(base).unwrap().password_policy.history, 5);
        assert_eq!(
            load(&format!("{base}history = 0\n")).unwrap().password_policy.history,
            0
        );
        let e = load(&format!("{base}history = 25\n")).unwrap_err().to_string();
        assert!(
            e.contains("passwords.history is at most 24") && e.contains(":6:"),
            "{e}"
        );
    }

    #[test]
    fn password_min_age_defaults_to_a_day_and_stays_below_the_max_age() {
        let base = "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n[passwords]\n";
        let min_age = |extra: &str| load(&format!("{base}{extra}")).map(|c| c.password_policy.min_age);
        assert_eq!(min_age("").unwrap(), Duration::from_secs(86_400));
        assert_eq!(min_age("min_age = \"0s\"\n").unwrap(), Duration::ZERO);
        assert_eq!(
            min_age("max_age = \"never\"\nmin_age = \"400d\"\n").unwrap(),
            Duration::from_secs(400 * 86_400)
        );
        for (extra, what) in [
            ("min_age = \"400d\"\n", "shorter than passwords.max_age"),
            ("max_age = \"2d\"\nmin_age = \"2d\"\n", "shorter than passwords.max_age"),
            ("min_age = \"soon\"\n", "passwords.min_age: a duration"),
        ] {
            let e = min_age(extra).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("herse.toml:"), "{extra}: {e}");
        }
    }

    #[test]
    fn the_recording_stall_timeout_defaults_to_ten_seconds_and_is_bounded() {
        let base = "data_dir = \"d\"\npolicy = \"p.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n";
        assert_eq!(load(base).unwrap().recordings_stall, Duration::from_secs(10));
        let c = load(&format!("{base}[recordings]\nstall_timeout = \"3s\"\n")).unwrap();
        assert_eq!(c.recordings_stall, Duration::from_secs(3));
        for line in [
            "stall_timeout = \"500ms\"",
            "stall_timeout = \"1h\"",
            "stall_timeout = \"never\"",
        ] {
            let e = load(&format!("{base}[recordings]\n{line}\n")).unwrap_err().to_string();
            assert!(
                e.contains("herse.toml:6") && e.contains("recordings.stall_timeout"),
                "{line}: {e}"
            );
        }
    }
}
