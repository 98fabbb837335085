//! `herse init`: create the data directory, the database, the master key and the
//! gateway's keys, then print what targets and users need to trust the gateway.

use std::os::unix::fs::DirBuilderExt;

use serde::Serialize;

use crate::config::GatewayConfig;
use crate::keys::GatewayKeys;
use crate::secrets::MasterKey;
use crate::store::Store;

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub data_dir: String,
    pub master_key_file: String,
    pub host_key: String,
    pub user_ca: String,
    pub host_ca: String,
    pub audit_public_key: String,
    /// The gateway's WireGuard public key (workstations' `[Peer] PublicKey`).
    pub wireguard_public_key: String,
    /// The portal's self-signed certificate (PEM file), for browsers to trust.
    pub portal_certificate: Option<String>,
    /// Lines for a target's sshd_config.
    pub sshd_config: Vec<String>,
    /// Lines for a user's ~/.ssh/known_hosts.
    pub known_hosts: Vec<String>,
}

pub async fn init(config: &GatewayConfig) -> anyhow::Result<InitReport> {
    if config.master_key_file.exists() {
        anyhow::bail!(
            "{} already exists: this gateway is already initialised; refusing to overwrite",
            config.master_key_file.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.recordings_dir)?;
    let store = Store::connect(config.database_url.expose(), true).await?;
    store.migrate().await?;
    if store.has_gateway_keys().await? {
        anyhow::bail!(
            "the database {} already holds gateway keys; refusing to overwrite",
            config.database_url
        );
    }
    let master = MasterKey::generate();
    let keys = GatewayKeys::generate();
    master.write_new(&config.master_key_file)?;
    keys.save(&store, &master).await?;
    // The portal's self-signed certificate, unless the configuration names one.
    let mut portal_certificate = None;
    if let Some(w) = config.web.as_ref().filter(|w| w.cert_and_key.is_none()) {
        let mut names = w.names.clone();
        if let Some(wg) = &config.wireguard {
            names.push(wg.net.gateway.to_string());
        }
        let (cert, _) = crate::web::tls::self_signed(&store, &master, &names).await?;
        std::fs::write(config.data_dir.join("portal_cert.pem"), &cert)?;
        portal_certificate = Some(config.data_dir.join("portal_cert.pem").display().to_string());
    }
    store.close().await;

    let user_ca = keys.user_ca.public_key().to_openssh()?;
    let host_ca = keys.host_ca.public_key().to_openssh()?;
    let host_key = keys.host.public_key().to_openssh()?;
    std::fs::write(config.data_dir.join("user_ca.pub"), format!("{user_ca}\n"))?;
    std::fs::write(config.data_dir.join("host_ca.pub"), format!("{host_ca}\n"))?;
    std::fs::write(config.data_dir.join("host_key.pub"), format!("{host_key}\n"))?;
    std::fs::write(
        config.data_dir.join("audit_key.pub"),
        format!("{}\n", hex::encode(keys.audit.verifying_key().as_bytes())),
    )?;
    let mut known_hosts = vec![format!("@cert-authority * {host_ca}")];
    if let Some(w) = &config.wireguard {
        known_hosts.push(match w.ssh_port {
            22 => format!("{} {host_key}", w.net.gateway),
            p => format!("[{}]:{p} {host_key}", w.net.gateway),
        });
    }
    for addr in &config.ssh_listen {
        known_hosts.push(format!("[{}]:{} {host_key}", addr.ip(), addr.port()));
    }
    Ok(InitReport {
        data_dir: config.data_dir.display().to_string(),
        master_key_file: config.master_key_file.display().to_string(),
        sshd_config: vec![
            format!("# save the user CA as /etc/ssh/herse_user_ca.pub:  {user_ca}"),
            "TrustedUserCAKeys /etc/ssh/herse_user_ca.pub".to_owned(),
        ],
        known_hosts,
        host_key,
        user_ca,
        host_ca,
        audit_public_key: hex::encode(keys.audit.verifying_key().as_bytes()),
        wireguard_public_key: keys.wireguard.public().to_string(),
        portal_certificate,
    })
}
