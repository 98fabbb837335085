//! Opening the gateway's state from its configuration: shared by `herse serve` and the
//! local mode of `hersectl`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::GatewayConfig;
use crate::gateway::Gateway;
use crate::keys::GatewayKeys;
use crate::policy;
use crate::secrets::{MasterKey, MasterKeySource};
use crate::store::Store;

pub async fn open_store(config: &GatewayConfig) -> anyhow::Result<Store> {
    let store = Store::connect(config.database_url.expose(), false)
        .await
        .with_context(|| {
            format!(
                "cannot open the database {} (did you run `herse init`?)",
                config.database_url
            )
        })?;
    store.migrate().await?;
    Ok(match &config.audit_syslog {
        Some(t) => store.with_syslog(std::sync::Arc::new(
            crate::audit_log::syslog::Syslog::start(t.clone(), &config.node)
                .with_context(|| format!("cannot start syslog forwarding to {t}"))?,
        )),
        None => store,
    })
}

/// Everything `serve` needs; errors name what is wrong.
pub async fn open_gateway(config_path: &Path, master_key_fd: Option<u32>) -> anyhow::Result<Arc<Gateway>> {
    let config = GatewayConfig::load(config_path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let policy = policy::load(&config.policy_path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let master = MasterKey::load(&MasterKeySource::resolve(master_key_fd, &config.master_key_file))?;
    let store = open_store(&config).await?;
    let keys = GatewayKeys::load(&store, &master).await?;
    let portal_tls = match &config.web {
        None => None,
        Some(w) => {
            let (cert, key) = match &w.cert_and_key {
                Some((c, k)) => (
                    std::fs::read_to_string(c).with_context(|| format!("cannot read {}", c.display()))?,
                    zeroize::Zeroizing::new(
                        std::fs::read_to_string(k).with_context(|| format!("cannot read {}", k.display()))?,
                    ),
                ),
                None => {
                    let mut names = w.names.clone();
                    if let Some(wg) = &config.wireguard {
                        names.push(wg.net.gateway.to_string());
                    }
                    crate::web::tls::self_signed(&store, &master, &names).await?
                }
            };
            Some(crate::web::tls::server_config(&cert, &key).map_err(|e| anyhow::anyhow!(e))?)
        }
    };
    drop(master);
    Ok(Gateway::new(config, policy, store, keys, portal_tls))
}
