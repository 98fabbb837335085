//! Workstations: enrolled WireGuard peers, each bound to one user.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};

use sqlx::Row;

use super::{is_unique_violation, now_micros, Store, StoreError};
use crate::ident::{UserName, WorkstationName};
use crate::wg::pool::TunnelNet;
use crate::wg::WgPublicKey;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkstationRow {
    pub name: String,
    pub owner: String,
    pub public_key: String,
    pub address: String,
    pub created_at: i64,
    pub created_by: String,
    pub key_rotated_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
    pub last_handshake_at: Option<i64>,
    pub rx_bytes: i64,
    pub tx_bytes: i64,
}

impl WorkstationRow {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// A workstation the WireGuard interface should accept now: not revoked, owner active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivePeer {
    pub name: String,
    pub owner: String,
    pub public_key: WgPublicKey,
    pub address: Ipv4Addr,
}

/// Where a node last heard a WireGuard peer, so that after a restart it can send that
/// peer a handshake instead of waiting for the peer's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEndpoint {
    pub public_key: WgPublicKey,
    pub endpoint: SocketAddr,
    /// Unix microseconds of the peer's last completed handshake with the node.
    pub handshake_at: i64,
}

const COLUMNS: &str = "name, owner, public_key, address, created_at, created_by, key_rotated_at, revoked_at, \
                       revoked_by, revoke_reason, last_handshake_at, rx_bytes, tx_bytes";

fn row(r: &sqlx::any::AnyRow) -> Result<WorkstationRow, sqlx::Error> {
    Ok(WorkstationRow {
        name: r.try_get(0)?,
        owner: r.try_get(1)?,
        public_key: r.try_get(2)?,
        address: r.try_get(3)?,
        created_at: r.try_get(4)?,
        created_by: r.try_get(5)?,
        key_rotated_at: r.try_get(6)?,
        revoked_at: r.try_get(7)?,
        revoked_by: r.try_get(8)?,
        revoke_reason: r.try_get(9)?,
        last_handshake_at: r.try_get(10)?,
        rx_bytes: r.try_get(11)?,
        tx_bytes: r.try_get(12)?,
    })
}

impl Store {
    /// Enrol a workstation for `owner` with `key`, at the lowest free address of `net`.
    pub async fn add_workstation(
        &self,
        name: &WorkstationName,
        owner: &UserName,
        key: &WgPublicKey,
        net: &TunnelNet,
        by: &str,
    ) -> Result<WorkstationRow, StoreError> {
        if self.user(owner).await?.is_none() {
            return Err(StoreError::NotFound(format!("user {owner}")));
        }
        self.refuse_known_key(key).await?;
        // Two concurrent enrolments may pick the same address: the partial unique index
        // refuses the second, which then tries the next free one.
        for _ in 0..8 {
            let taken: HashSet<Ipv4Addr> = self
                .workstations()
                .await?
                .into_iter()
                .filter(|w| !w.is_revoked())
                .filter_map(|w| w.address.parse().ok())
                .collect();
            let address = net.allocate(&taken).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let r = sqlx::query(
                "INSERT INTO workstations (name, owner, public_key, address, created_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(name.as_str())
            .bind(owner.as_str())
            .bind(key.to_string())
            .bind(address.to_string())
            .bind(now_micros())
            .bind(by)
            .execute(&self.pool)
            .await;
            match r {
                Ok(_) => {
                    return self
                        .workstation(name)
                        .await?
                        .ok_or_else(|| StoreError::NotFound(format!("workstation {name}")))
                }
                Err(e) if is_unique_violation(&e) => {
                    if self.workstation(name).await?.is_some() {
                        return Err(StoreError::Exists(format!("workstation {name}")));
                    }
                    if self.key_in_use(key).await? {
                        return Err(StoreError::Exists(format!("WireGuard key {key}")));
                    }
                    // The address was taken meanwhile: allocate again.
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Invalid("could not allocate a tunnel address".into()))
    }

    async fn key_in_use(&self, key: &WgPublicKey) -> Result<bool, StoreError> {
        let k = key.to_string();
        let a = sqlx::query("SELECT COUNT(*) FROM workstations WHERE public_key = $1")
            .bind(&k)
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)?;
        let b = sqlx::query("SELECT COUNT(*) FROM workstation_retired_keys WHERE public_key = $1")
            .bind(&k)
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)?;
        Ok(a + b > 0)
    }

    /// A key that was ever enrolled (even revoked or rotated away) is never taken again.
    async fn refuse_known_key(&self, key: &WgPublicKey) -> Result<(), StoreError> {
        if self.key_in_use(key).await? {
            return Err(StoreError::Exists(format!(
                "WireGuard key {key} (a key once enrolled is never accepted again)"
            )));
        }
        Ok(())
    }

    pub async fn workstation(&self, name: &WorkstationName) -> Result<Option<WorkstationRow>, StoreError> {
        let q = format!("SELECT {COLUMNS} FROM workstations WHERE name = $1");
        let r = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(row).transpose()?)
    }

    pub async fn workstations(&self) -> Result<Vec<WorkstationRow>, StoreError> {
        let q = format!("SELECT {COLUMNS} FROM workstations ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(q)).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
    }

    /// Revoke, and end the portal sessions and API tokens opened from it; false when the
    /// workstation was already revoked.
    ///
    /// Those sessions are bound to the workstation and its tunnel goes with the
    /// revocation, so nothing could use them any more; they go anyway, in the same
    /// transaction, so that no credential of a revoked device outlives it in the store.
    pub async fn revoke_workstation(&self, name: &WorkstationName, by: &str, reason: &str) -> Result<bool, StoreError> {
        if self.workstation(name).await?.is_none() {
            return Err(StoreError::NotFound(format!("workstation {name}")));
        }
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE workstations SET revoked_at = $1, revoked_by = $2, revoke_reason = $3 \
             WHERE name = $4 AND revoked_at IS NULL",
        )
        .bind(now_micros())
        .bind(by)
        .bind(reason)
        .bind(name.as_str())
        .execute(tx.conn()?)
        .await?;
        sqlx::query("DELETE FROM web_sessions WHERE workstation = $1")
            .bind(name.as_str())
            .execute(tx.conn()?)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Replace a live workstation's key; the old one is retired for good.
    pub async fn rotate_workstation_key(&self, name: &WorkstationName, key: &WgPublicKey) -> Result<(), StoreError> {
        let w = self
            .workstation(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("workstation {name}")))?;
        if w.is_revoked() {
            return Err(StoreError::Refused(format!("workstation {name} is revoked")));
        }
        self.refuse_known_key(key).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO workstation_retired_keys (public_key, workstation, retired_at) VALUES ($1, $2, $3)")
            .bind(&w.public_key)
            .bind(name.as_str())
            .bind(now_micros())
            .execute(tx.conn()?)
            .await?;
        let r = sqlx::query(
            "UPDATE workstations SET public_key = $1, key_rotated_at = $2, last_handshake_at = NULL \
             WHERE name = $3 AND public_key = $4 AND revoked_at IS NULL",
        )
        .bind(key.to_string())
        .bind(now_micros())
        .bind(name.as_str())
        .bind(&w.public_key)
        .execute(tx.conn()?)
        .await?;
        if r.rows_affected() != 1 {
            return Err(StoreError::Refused(format!(
                "workstation {name} changed meanwhile; try again"
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    /// The peers the WireGuard interface accepts: live workstations of active users.
    pub async fn active_peers(&self) -> Result<Vec<ActivePeer>, StoreError> {
        let rows = sqlx::query(
            "SELECT w.name, w.owner, w.public_key, w.address FROM workstations w \
             JOIN users u ON u.name = w.owner \
             WHERE w.revoked_at IS NULL AND u.status = 'active' ORDER BY w.name",
        )
        .fetch_all(&self.pool)
        .await?;
        // A row that does not parse loses its peer (logged) rather than failing the whole
        // list: a failed list keeps the current peers, and with them revoked ones.
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.try_get(0)?;
            let key: String = r.try_get(2)?;
            let addr: String = r.try_get(3)?;
            let (Ok(public_key), Ok(address)) = (WgPublicKey::parse(&key), addr.parse()) else {
                tracing::error!(
                    workstation = name,
                    key,
                    address = addr,
                    "a workstation row does not parse: it has no tunnel until fixed"
                );
                continue;
            };
            out.push(ActivePeer {
                owner: r.try_get(1)?,
                public_key,
                address,
                name,
            });
        }
        Ok(out)
    }

    /// The peers `node` heard, where it heard them, and when each last completed a
    /// handshake. Rows of keys that are no longer a live workstation's are deleted first;
    /// a row that does not parse (it is only a hint) is skipped with a warning.
    pub async fn peer_endpoints(&self, node: &str) -> Result<Vec<PeerEndpoint>, StoreError> {
        sqlx::query(
            "DELETE FROM wireguard_endpoints WHERE node = $1 AND public_key NOT IN \
             (SELECT public_key FROM workstations WHERE revoked_at IS NULL)",
        )
        .bind(node)
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query("SELECT public_key, endpoint, handshake_at FROM wireguard_endpoints WHERE node = $1")
            .bind(node)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (key, endpoint): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            match (WgPublicKey::parse(&key), endpoint.parse()) {
                (Ok(public_key), Ok(endpoint)) => out.push(PeerEndpoint {
                    public_key,
                    endpoint,
                    handshake_at: r.try_get(2)?,
                }),
                _ => tracing::warn!(%node, key, endpoint, "ignoring a saved WireGuard endpoint that does not parse"),
            }
        }
        Ok(out)
    }

    /// Save where `node` heard these peers (only those that changed need passing).
    pub async fn save_peer_endpoints(&self, node: &str, endpoints: &[PeerEndpoint]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for e in endpoints {
            sqlx::query(
                "INSERT INTO wireguard_endpoints (node, public_key, endpoint, handshake_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (node, public_key) DO UPDATE SET endpoint = excluded.endpoint, \
                 handshake_at = excluded.handshake_at",
            )
            .bind(node)
            .bind(e.public_key.to_string())
            .bind(e.endpoint.to_string())
            .bind(e.handshake_at)
            .execute(tx.conn()?)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn record_workstation_traffic(
        &self,
        name: &str,
        last_handshake_at: Option<i64>,
        rx: u64,
        tx: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE workstations SET last_handshake_at = COALESCE($1, last_handshake_at), rx_bytes = $2, tx_bytes = $3 \
             WHERE name = $4",
        )
        .bind(last_handshake_at)
        .bind(i64::try_from(rx).unwrap_or(i64::MAX))
        .bind(i64::try_from(tx).unwrap_or(i64::MAX))
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_backends;
    use crate::store::{NodeRemoval, UserStatus};
    use crate::wg::WgSecret;

    #[tokio::test]
    async fn peer_endpoints_are_kept_per_node_and_only_for_live_keys() {
        for (backend, s) in test_backends().await {
            let alice = UserName::parse("alice").unwrap();
            s.add_user(&alice).await.unwrap();
            let net = TunnelNet::parse("10.77.0.1/29").unwrap();
            let (ws1, ws2) = (
                WorkstationName::parse("ws1").unwrap(),
                WorkstationName::parse("ws2").unwrap(),
            );
            let (k1, k2) = (WgSecret::generate().public(), WgSecret::generate().public());
            s.add_workstation(&ws1, &alice, &k1, &net, "root").await.unwrap();
            s.add_workstation(&ws2, &alice, &k2, &net, "root").await.unwrap();
            let at = |public_key, endpoint: &str, handshake_at| PeerEndpoint {
                public_key,
                endpoint: endpoint.parse().unwrap(),
                handshake_at,
            };
            s.save_peer_endpoints("a", &[at(k1, "192.0.2.1:40000", 10), at(k2, "[2001:db8::2]:51820", 20)])
                .await
                .unwrap();
            s.save_peer_endpoints("b", &[at(k1, "198.51.100.1:1", 30)])
                .await
                .unwrap();
            // A later save replaces a peer's row (the workstation roamed).
            s.save_peer_endpoints("a", &[at(k1, "192.0.2.9:41000", 40)])
                .await
                .unwrap();
            let mut seen = s.peer_endpoints("a").await.unwrap();
            seen.sort_by_key(|e| e.handshake_at);
            assert_eq!(
                seen,
                vec![at(k2, "[2001:db8::2]:51820", 20), at(k1, "192.0.2.9:41000", 40)],
                "{backend}"
            );
            // A revoked workstation's key is forgotten.
            assert!(s.revoke_workstation(&ws2, "root", "lost").await.unwrap());
            assert_eq!(
                s.peer_endpoints("a").await.unwrap(),
                vec![at(k1, "192.0.2.9:41000", 40)]
            );
            // A row that does not parse is skipped, not an error.
            sqlx::query("UPDATE wireguard_endpoints SET endpoint = 'nonsense' WHERE node = 'b'")
                .execute(&s.pool)
                .await
                .unwrap();
            assert!(s.peer_endpoints("b").await.unwrap().is_empty(), "{backend}");
            // `nodes remove` takes the node's rows with it.
            s.node_alive("a", "i1", 1, false).await.unwrap();
            assert_eq!(s.remove_node("a", i64::MAX).await.unwrap(), NodeRemoval::Removed);
            assert!(s.peer_endpoints("a").await.unwrap().is_empty(), "{backend}");
        }
    }

    #[tokio::test]
    async fn enrol_revoke_rotate_on_every_backend() {
        for (backend, s) in test_backends().await {
            let alice = UserName::parse("alice").unwrap();
            s.add_user(&alice).await.unwrap();
            let net = TunnelNet::parse("10.77.0.1/29").unwrap();
            let ws = WorkstationName::parse("alice-ws1").unwrap();
            let k1 = WgSecret::generate().public();
            let w = s.add_workstation(&ws, &alice, &k1, &net, "root").await.unwrap();
            assert_eq!(w.address, "10.77.0.2", "{backend}");
            // Same name, same key, unknown owner: refused.
            let k2 = WgSecret::generate().public();
            assert!(matches!(
                s.add_workstation(&ws, &alice, &k2, &net, "root").await,
                Err(StoreError::Exists(_))
            ));
            let ws2 = WorkstationName::parse("alice-ws2").unwrap();
            assert!(matches!(
                s.add_workstation(&ws2, &alice, &k1, &net, "root").await,
                Err(StoreError::Exists(_))
            ));
            let bob = UserName::parse("bob").unwrap();
            assert!(matches!(
                s.add_workstation(&ws2, &bob, &k2, &net, "root").await,
                Err(StoreError::NotFound(_))
            ));
            let w2 = s.add_workstation(&ws2, &alice, &k2, &net, "root").await.unwrap();
            assert_eq!(w2.address, "10.77.0.3");
            assert_eq!(s.active_peers().await.unwrap().len(), 2);

            // Rotation retires the old key for good.
            let k3 = WgSecret::generate().public();
            s.rotate_workstation_key(&ws, &k3).await.unwrap();
            let ws3 = WorkstationName::parse("alice-ws3").unwrap();
            assert!(
                s.add_workstation(&ws3, &alice, &k1, &net, "root").await.is_err(),
                "{backend}: retired key"
            );
            assert_eq!(s.active_peers().await.unwrap()[0].public_key, k3);

            // Suspension and revocation take peers out; a revoked address is reusable,
            // its key is not.
            s.set_user_status(&alice, UserStatus::Suspended, Some("test"))
                .await
                .unwrap();
            assert!(s.active_peers().await.unwrap().is_empty());
            s.set_user_status(&alice, UserStatus::Active, None).await.unwrap();
            // Its portal sessions and API tokens go with it; others' stay.
            let far = now_micros() + 3_600_000_000;
            s.create_web_session("t-ws", &alice, ws.as_str(), "-", far)
                .await
                .unwrap();
            s.create_web_session("t-ws2", &alice, ws2.as_str(), "-", far)
                .await
                .unwrap();
            assert!(s.web_session("t-ws").await.unwrap().is_some());
            assert!(s.revoke_workstation(&ws, "root", "lost").await.unwrap());
            assert!(!s.revoke_workstation(&ws, "root", "again").await.unwrap());
            assert!(s.web_session("t-ws").await.unwrap().is_none(), "{backend}");
            assert!(s.web_session("t-ws2").await.unwrap().is_some(), "{backend}");
            // A token is revoked only from its own workstation, and only once.
            assert_eq!(s.revoke_api_token("t-ws2", ws.as_str(), "-").await.unwrap(), None);
            assert_eq!(
                s.revoke_api_token("t-ws2", ws2.as_str(), "-").await.unwrap().as_deref(),
                Some("alice"),
                "{backend}"
            );
            assert_eq!(s.revoke_api_token("t-ws2", ws2.as_str(), "-").await.unwrap(), None);
            assert!(s.web_session("t-ws2").await.unwrap().is_none(), "{backend}");
            assert_eq!(s.active_peers().await.unwrap().len(), 1);
            let k4 = WgSecret::generate().public();
            let w3 = s.add_workstation(&ws3, &alice, &k4, &net, "root").await.unwrap();
            assert_eq!(w3.address, "10.77.0.2", "{backend}: freed address reused");
            assert!(s
                .rotate_workstation_key(&ws, &WgSecret::generate().public())
                .await
                .is_err());
            s.record_workstation_traffic("alice-ws3", Some(5), 10, 20)
                .await
                .unwrap();
            assert_eq!(s.workstation(&ws3).await.unwrap().unwrap().rx_bytes, 10);

            // A row that does not parse loses its own peer, not everyone's list.
            let before = s.active_peers().await.unwrap().len();
            sqlx::query("UPDATE workstations SET public_key = 'not-a-key' WHERE name = 'alice-ws3'")
                .execute(s.pool())
                .await
                .unwrap();
            let peers = s.active_peers().await.unwrap();
            assert_eq!(peers.len(), before - 1, "{backend}");
            assert!(peers.iter().all(|p| p.name != "alice-ws3"), "{backend}");
        }
    }
}
