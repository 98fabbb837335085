//! Prometheus text exposition on an optional loopback listener (`[metrics] listen`):
//! WireGuard handshake, invalid-packet and cookie counters, per-workstation traffic and
//! live sessions. Answers `GET /metrics` and nothing else.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::wg::WireGuard;

pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, wg: Option<Arc<WireGuard>>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let body = render(&gw, wg.as_deref());
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut req)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let first = String::from_utf8_lossy(&req[..n]);
            let first = first.lines().next().unwrap_or("");
            let resp = if first.starts_with("GET /metrics ") {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
            };
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn render(gw: &Gateway, wg: Option<&WireGuard>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# TYPE herse_sessions_live gauge\nherse_sessions_live {}",
        gw.live_sessions().len()
    );
    if let Some(wg) = wg {
        let c = wg.counters();
        for (name, help, v) in [
            ("handshakes", "Handshakes answered", c.handshakes),
            (
                "invalid_packets",
                "Datagrams dropped as malformed, unauthenticated or spoofed",
                c.invalid_packets,
            ),
            (
                "unknown_peer_handshakes",
                "Handshakes from keys not enrolled (never answered)",
                c.unknown_peers,
            ),
            (
                "cookie_replies",
                "Cookie replies sent under handshake load",
                c.cookie_replies,
            ),
            (
                "throttled_handshakes",
                "Handshake messages dropped over their source address's rate",
                c.throttled_handshakes,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP herse_wireguard_{name}_total {help}\n# TYPE herse_wireguard_{name}_total counter\n\
                 herse_wireguard_{name}_total {v}"
            );
        }
        let peers = wg.status();
        let _ = writeln!(
            o,
            "# TYPE herse_wireguard_peers gauge\nherse_wireguard_peers {}",
            peers.len()
        );
        let _ = writeln!(
            o,
            "# TYPE herse_wireguard_peer_rx_bytes counter\n# TYPE herse_wireguard_peer_tx_bytes counter"
        );
        for p in &peers {
            // Workstation names are validated identifiers: no quoting issues.
            let _ = writeln!(
                o,
                "herse_wireguard_peer_rx_bytes{{workstation=\"{w}\"}} {}\nherse_wireguard_peer_tx_bytes{{workstation=\"{w}\"}} {}",
                p.rx_bytes,
                p.tx_bytes,
                w = p.workstation
            );
        }
    }
    o
}
