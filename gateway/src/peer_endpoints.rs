//! Where this node hears its WireGuard peers, kept across restarts.
//!
//! A restarted node has lost every WireGuard session, while its workstations still hold
//! theirs: a workstation keeps sending under its old keys, gets no answer, and only
//! starts a new handshake after 15 s (WireGuard's keepalive plus rekey timeouts). So the
//! node saves each peer's endpoint and last handshake time, and at start sends a
//! handshake to every peer whose session may still be live on the workstation's side.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::gateway::Gateway;
use crate::store::{now_micros, PeerEndpoint};
use crate::wg::{WgPublicKey, WireGuard};

/// WireGuard's REJECT_AFTER_TIME: a peer whose last handshake is older holds no usable
/// session, and starts a handshake of its own as soon as it has something to send.
const SESSION_LIFETIME_MICROS: i64 = 180_000_000;

/// Handshake times read back from the engine move by a few microseconds between calls
/// (they are derived from "time since"); closer than this counts as unchanged.
const SAME_HANDSHAKE_MICROS: i64 = 1_000_000;

/// What this node last saved, so that only changes are written: a peer's row changes
/// when it roams or rekeys (every 2 minutes while it has traffic).
#[derive(Debug, Default)]
pub struct EndpointBook {
    saved: HashMap<WgPublicKey, (SocketAddr, i64)>,
}

/// The peers to greet at start (where this node last heard them, if their session may
/// still be live), and the book of what is saved. A database error greets nobody: the
/// peers then recover on their own timers, as they would without this.
pub async fn load(gw: &Gateway) -> (HashMap<WgPublicKey, SocketAddr>, EndpointBook) {
    let rows = match gw.store.peer_endpoints(&gw.node).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read saved WireGuard endpoints; peers reconnect on their own timers");
            Vec::new()
        }
    };
    (greet(&rows, now_micros()), EndpointBook::from_rows(&rows))
}

fn greet(rows: &[PeerEndpoint], now: i64) -> HashMap<WgPublicKey, SocketAddr> {
    rows.iter()
        .filter(|r| now.saturating_sub(r.handshake_at) < SESSION_LIFETIME_MICROS)
        .map(|r| (r.public_key, r.endpoint))
        .collect()
}

impl EndpointBook {
    fn from_rows(rows: &[PeerEndpoint]) -> Self {
        EndpointBook {
            saved: rows
                .iter()
                .map(|r| (r.public_key, (r.endpoint, r.handshake_at)))
                .collect(),
        }
    }

    /// The peers whose endpoint or handshake changed since the last save.
    fn changes(&self, wg: &WireGuard) -> Vec<PeerEndpoint> {
        wg.status()
            .into_iter()
            .filter_map(|p| {
                let (endpoint, handshake_at) = (p.endpoint?, p.last_handshake?);
                let same = self
                    .saved
                    .get(&p.public_key)
                    .is_some_and(|(e, at)| *e == endpoint && (handshake_at - at).abs() < SAME_HANDSHAKE_MICROS);
                (!same).then_some(PeerEndpoint {
                    public_key: p.public_key,
                    endpoint,
                    handshake_at,
                })
            })
            .collect()
    }

    /// Save what changed. A failure is logged and retried at the next call.
    pub async fn save(&mut self, gw: &Gateway, wg: &WireGuard) {
        let changed = self.changes(wg);
        if changed.is_empty() {
            return;
        }
        match gw.store.save_peer_endpoints(&gw.node, &changed).await {
            Ok(()) => {
                for c in changed {
                    self.saved.insert(c.public_key, (c.endpoint, c.handshake_at));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot save WireGuard endpoints"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wg::WgSecret;

    #[test]
    fn only_peers_whose_session_may_still_be_live_are_greeted() {
        let (a, b) = (WgSecret::generate().public(), WgSecret::generate().public());
        let now = 1_000_000_000_000;
        let row = |public_key, handshake_at| PeerEndpoint {
            public_key,
            endpoint: "192.0.2.1:51820".parse().unwrap(),
            handshake_at,
        };
        let rows = [
            row(a, now - SESSION_LIFETIME_MICROS + 1),
            row(b, now - SESSION_LIFETIME_MICROS),
        ];
        let greeted = greet(&rows, now);
        assert_eq!(greeted.keys().collect::<Vec<_>>(), vec![&a]);
        // A saved time in the future (a clock stepped back) still greets: one handshake
        // too many costs nothing.
        assert_eq!(greet(&[row(b, now + 5_000_000)], now).len(), 1);
        assert!(greet(&[row(b, i64::MIN)], now).is_empty());
    }
}
