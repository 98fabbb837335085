//! Forwarding appended audit events to syslog, one RFC 5424 message per event, over UDP
//! (RFC 5426: one message per datagram) or a Unix datagram socket such as `/dev/log`.
//!
//! Best effort and never in the audited action's way: `send` formats the message and
//! `try_send`s it into a bounded queue; a full queue drops the message and counts it
//! (logged at the 1st, 2nd, 4th, 8th … drop). A sender thread (not a tokio task, so
//! `hersectl` and the daemon behave alike and a runtime shutdown does not lose the
//! queue) writes the messages with non-blocking sockets; `close` drains it, bounded.
//!
//! Message: `<PRI>1 TIMESTAMP HOSTNAME herse PROCID KIND - JSON`, facility authpriv
//! (10), severity info → 6 (informational), warning → 4, alert → 1; TIMESTAMP is the
//! event's `at` (RFC 3339, microseconds, UTC); no structured data; MSG is one JSON object
//! with `seq`, `at`, `kind`, `severity`, `user`, `session`, `client_addr`, `workstation`,
//! `detail` (cut at 4 KiB, then `detail_truncated: true`) and `hash`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;
use std::time::Duration;

use crate::store::AuditRow;

/// Messages waiting for the sender thread.
const QUEUE: usize = 1024;
/// `detail` longer than this is cut in the message (the database keeps it whole).
const MAX_DETAIL: usize = 4096;
/// RFC 5424 facility: authpriv.
const FACILITY: u8 = 10;
/// How long `close` waits for the queue to drain.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Where to send: `udp:ADDRESS:PORT` or `unix:/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    Udp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for SyslogTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(a) = s.strip_prefix("udp:") {
            a.parse()
                .map(SyslogTarget::Udp)
                .map_err(|_| format!("{a:?} is not IP:PORT (e.g. udp:127.0.0.1:514, udp:[::1]:514)"))
        } else if let Some(p) = s.strip_prefix("unix:") {
            if p.starts_with('/') {
                Ok(SyslogTarget::Unix(PathBuf::from(p)))
            } else {
                Err(format!("{p:?} is not an absolute socket path (e.g. unix:/dev/log)"))
            }
        } else {
            Err("expected udp:IP:PORT or unix:/PATH".into())
        }
    }
}

impl std::fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyslogTarget::Udp(a) => write!(f, "udp:{a}"),
            SyslogTarget::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The forwarder: a bounded queue and its sender thread.
pub struct Syslog {
    target: SyslogTarget,
    hostname: String,
    queue: Mutex<Option<SyncSender<Vec<u8>>>>,
    done: Mutex<Option<Receiver<()>>>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Syslog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syslog")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Syslog {
    /// Start the sender thread. `hostname` is the HOSTNAME field (the node name).
    pub fn start(target: SyslogTarget, hostname: &str) -> io::Result<Syslog> {
        let socket = Socket::open(&target)?;
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (done_tx, done_rx) = mpsc::channel();
        let t = target.clone();
        std::thread::Builder::new().name("herse-syslog".into()).spawn(move || {
            let mut socket = socket;
            let mut failures = 0u64;
            for msg in rx {
                if let Err(e) = socket.send(&t, &msg) {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(target = %t, error = %e, failures, "cannot send audit event to syslog");
                    }
                }
            }
            let _ = done_tx.send(());
        })?;
        Ok(Syslog {
            target,
            hostname: sanitize(hostname, 255),
            queue: Mutex::new(Some(tx)),
            done: Mutex::new(Some(done_rx)),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue one event; never blocks.
    pub fn send(&self, row: &AuditRow) {
        let msg = format_rfc5424(row, &self.hostname, std::process::id());
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // Full, or closed (shutting down): counted, never waited for.
        let queued = queue.as_ref().is_some_and(|q| q.try_send(msg.into_bytes()).is_ok());
        if !queued {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(target = %self.target, dropped = n, "syslog queue full: audit events not forwarded");
            }
        }
    }

    /// Events not forwarded because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stop queueing and wait (at most 2 s) for the queued messages to be sent. Blocking.
    pub fn close(&self) {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(done) = self.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = done.recv_timeout(CLOSE_WAIT);
        }
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.close();
    }
}

enum Socket {
    Udp(UdpSocket),
    /// Connected lazily (and again after an error): syslogd may start after us.
    Unix(UnixDatagram, bool),
}

impl Socket {
    fn open(t: &SyslogTarget) -> io::Result<Socket> {
        match t {
            SyslogTarget::Udp(a) => {
                let local: SocketAddr = if a.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let s = UdpSocket::bind(local)?;
                s.connect(a)?;
                s.set_nonblocking(true)?;
                Ok(Socket::Udp(s))
            }
            SyslogTarget::Unix(_) => {
                let s = UnixDatagram::unbound()?;
                s.set_nonblocking(true)?;
                Ok(Socket::Unix(s, false))
            }
        }
    }

    /// One message; a full socket buffer is retried briefly, then the message dropped.
    fn send(&mut self, t: &SyslogTarget, msg: &[u8]) -> io::Result<()> {
        for _ in 0..50 {
            let r = match self {
                Socket::Udp(s) => s.send(msg).map(|_| ()),
                Socket::Unix(s, connected) => {
                    if !*connected {
                        if let SyslogTarget::Unix(p) = t {
                            s.connect(p)?;
                            *connected = true;
                        }
                    }
                    let r = s.send(msg).map(|_| ());
                    if r.as_ref().is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock) {
                        // The daemon restarted: a fresh socket connects again next time.
                        let fresh = UnixDatagram::unbound()?;
                        fresh.set_nonblocking(true)?;
                        *s = fresh;
                        *connected = false;
                    }
                    r
                }
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                other => return other,
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

fn severity_code(s: &str) -> u8 {
    match s {
        "alert" => 1,
        "warning" => 4,
        _ => 6,
    }
}

/// Printable US-ASCII without spaces, at most `max` characters; `-` when empty.
fn sanitize(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if out.is_empty() {
        "-".into()
    } else {
        out
    }
}

/// The RFC 5424 message for one appended event.
pub fn format_rfc5424(row: &AuditRow, hostname: &str, pid: u32) -> String {
    let pri = FACILITY * 8 + severity_code(&row.severity);
    let (detail, truncated) = if row.detail.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !row.detail.is_char_boundary(end) {
            end -= 1;
        }
        (&row.detail[..end], true)
    } else {
        (row.detail.as_str(), false)
    };
    let mut msg = serde_json::json!({
        "seq": row.seq,
        "at": row.at,
        "kind": row.kind,
        "severity": row.severity,
        "user": row.user,
        "session": row.session,
        "client_addr": row.client_addr,
        "workstation": row.workstation,
        "detail": detail,
        "hash": row.hash,
    });
    if truncated {
        msg["detail_truncated"] = true.into();
    }
    format!(
        "<{pri}>1 {} {} herse {pid} {} - {msg}",
        crate::timefmt::rfc3339_micros(row.at),
        sanitize(hostname, 255),
        sanitize(&row.kind, 32),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> AuditRow {
        AuditRow {
            seq: Some(7),
            id: "id".into(),
            at: 1_700_000_000_123_456,
            kind: "login.failure".into(),
            severity: "warning".into(),
            user: Some("alice".into()),
            session: None,
            client_addr: Some("127.0.0.1:5000".into()),
            workstation: None,
            detail: "bad key \"x\"\n".into(),
            prev_hash: None,
            hash: Some("ab".repeat(32)),
        }
    }

    #[test]
    fn messages_are_rfc5424_with_a_json_body() {
        let m = format_rfc5424(&row(), "gw 1", 42);
        let (head, json) = m.split_once(" - ").unwrap();
        assert_eq!(head, "<84>1 2023-11-14T22:13:20.123456Z gw_1 herse 42 login.failure");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!((v["seq"].as_i64(), v["user"].as_str()), (Some(7), Some("alice")));
        assert_eq!(v["detail"], "bad key \"x\"\n");
        let mut big = row();
        big.severity = "alert".into();
        big.detail = "é".repeat(3000);
        let m = format_rfc5424(&big, "", 1);
        assert!(
            m.starts_with("<81>1 ") && m.contains("Z - herse 1 login.failure - {"),
            "{m}"
        );
        assert!(m.contains("\"detail_truncated\":true"), "{m}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            "udp:127.0.0.1:514".parse::<SyslogTarget>(),
            Ok(SyslogTarget::Udp("127.0.0.1:514".parse().unwrap()))
        );
        assert!("udp:[::1]:514".parse::<SyslogTarget>().is_ok());
        assert_eq!(
            "unix:/dev/log".parse::<SyslogTarget>(),
            Ok(SyslogTarget::Unix("/dev/log".into()))
        );
        assert!("udp:localhost:514".parse::<SyslogTarget>().is_err());
        assert!("unix:dev/log".parse::<SyslogTarget>().is_err());
        assert!("tcp:1.2.3.4:514".parse::<SyslogTarget>().is_err());
    }

    #[test]
    fn events_reach_a_udp_listener_and_a_full_queue_drops() {
        let l = UdpSocket::bind("127.0.0.1:0").unwrap();
        l.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let s = Syslog::start(SyslogTarget::Udp(l.local_addr().unwrap()), "node").unwrap();
        s.send(&row());
        s.close();
        let mut buf = [0u8; 8192];
        let n = l.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("<84>1 "));
        // Closed: further events are counted as dropped, never block.
        s.send(&row());
        assert_eq!(s.dropped(), 1);
    }
}
