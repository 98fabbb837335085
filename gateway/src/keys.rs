//! The gateway's own keys: SSH host key, user CA, host CA and audit-signing key.
//! Created once by `herse init`, stored sealed under the master key, opened at start.

use ed25519_dalek::SigningKey;
use rand::RngExt;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::secrets::{MasterKey, SecretError};
use crate::store::{Store, StoreError};
use crate::wg::{WgPublicKey, WgSecret};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("stored key {0} is not a valid key")]
    Invalid(&'static str),
    #[error("the gateway is already initialised (keys exist in the database); refusing to overwrite")]
    AlreadyInitialised,
}

const HOST: &str = "ssh-host";
const USER_CA: &str = "user-ca";
const HOST_CA: &str = "host-ca";
const AUDIT: &str = "audit";
const WIREGUARD: &str = "wireguard";
const USER_SECRETS: &str = "user-secrets";

/// The opened keys. Private halves are zeroized on drop (by ssh-key and ed25519-dalek).
pub struct GatewayKeys {
    pub host: PrivateKey,
    pub user_ca: PrivateKey,
    pub host_ca: PrivateKey,
    pub audit: SigningKey,
    /// The WireGuard interface's static key.
    pub wireguard: WgSecret,
    /// Seals users' second-factor secrets (TOTP), so the gateway can check codes
    /// without keeping the master key in memory.
    pub user_secrets: MasterKey,
}

impl std::fmt::Debug for GatewayKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKeys")
            .field("host", &self.host.public_key().to_openssh().unwrap_or_default())
            .field("user_ca", &self.user_ca.public_key().to_openssh().unwrap_or_default())
            .field("host_ca", &self.host_ca.public_key().to_openssh().unwrap_or_default())
            .finish_non_exhaustive()
    }
}

fn label(name: &str) -> String {
    format!("herse-gateway-key:{name}")
}

/// A fresh ed25519 SSH key.
pub fn new_ssh_key(comment: &str) -> PrivateKey {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::rng().fill(&mut seed[..]);
    let mut k = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    k.set_comment(comment);
    k
}

async fn save_wireguard(store: &Store, master: &MasterKey, k: &WgSecret) -> Result<(), KeyError> {
    let raw = k.to_bytes();
    store
        .put_gateway_key(
            WIREGUARD,
            &k.public().to_string(),
            &master.seal(&label(WIREGUARD), &raw[..]),
        )
        .await?;
    Ok(())
}

/// The audit key's public half, from its sealed private half: what a local command that
/// must not trust the database's copy of the public key (retention) verifies with.
pub async fn audit_verifying_key(store: &Store, master: &MasterKey) -> Result<ed25519_dalek::VerifyingKey, KeyError> {
    Ok(audit_signing_key(store, master).await?.verifying_key())
}

/// The audit key itself, opened from its sealed copy: the gateway's, and a local
/// command's that signs (the release of a legal hold).
pub async fn audit_signing_key(store: &Store, master: &MasterKey) -> Result<SigningKey, KeyError> {
    let (_, sealed) = store.gateway_key(AUDIT).await?;
    let raw = master.open(&label(AUDIT), &sealed)?;
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(raw[..].try_into().map_err(|_| KeyError::Invalid(AUDIT))?);
    Ok(SigningKey::from_bytes(&seed))
}

/// The key that seals users' second-factor secrets; created on first use by a gateway
/// initialised before second factors existed.
pub async fn user_secrets_key(store: &Store, master: &MasterKey) -> Result<MasterKey, KeyError> {
    match store.gateway_key(USER_SECRETS).await {
        Ok((_, sealed)) => {
            let raw = master.open(&label(USER_SECRETS), &sealed)?;
            MasterKey::from_bytes(&raw[..]).ok_or(KeyError::Invalid(USER_SECRETS))
        }
        Err(StoreError::NotFound(_)) => {
            let k = MasterKey::generate();
            match store
                .put_gateway_key(USER_SECRETS, "-", &master.seal(&label(USER_SECRETS), &k.to_bytes()[..]))
                .await
            {
                Ok(()) => Ok(k),
                // Created concurrently by another process: use theirs.
                Err(StoreError::Exists(_)) => Box::pin(user_secrets_key(store, master)).await,
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The gateway's WireGuard public key, readable without the master key (enrolment).
pub async fn wireguard_public(store: &Store) -> Result<WgPublicKey, KeyError> {
    let (public, _) = store.gateway_key(WIREGUARD).await?;
    WgPublicKey::parse(&public).map_err(|_| KeyError::Invalid(WIREGUARD))
}

impl GatewayKeys {
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rng().fill(&mut seed[..]);
        GatewayKeys {
            host: new_ssh_key("herse host key"),
            user_ca: new_ssh_key("herse user CA"),
            host_ca: new_ssh_key("herse host CA"),
            audit: SigningKey::from_bytes(&seed),
            wireguard: WgSecret::generate(),
            user_secrets: MasterKey::generate(),
        }
    }

    /// Seal and store every key; fails if any key already exists.
    pub async fn save(&self, store: &Store, master: &MasterKey) -> Result<(), KeyError> {
        if store.has_gateway_keys().await? {
            return Err(KeyError::AlreadyInitialised);
        }
        for (name, key) in [(HOST, &self.host), (USER_CA, &self.user_ca), (HOST_CA, &self.host_ca)] {
            let private = key.to_openssh(LineEnding::LF).map_err(|_| KeyError::Invalid(name))?;
            let public = key.public_key().to_openssh().map_err(|_| KeyError::Invalid(name))?;
            store
                .put_gateway_key(name, &public, &master.seal(&label(name), private.as_bytes()))
                .await?;
        }
        let audit_public = hex::encode(self.audit.verifying_key().as_bytes());
        store
            .put_gateway_key(AUDIT, &audit_public, &master.seal(&label(AUDIT), self.audit.as_bytes()))
            .await?;
        save_wireguard(store, master, &self.wireguard).await?;
        store
            .put_gateway_key(
                USER_SECRETS,
                "-",
                &master.seal(&label(USER_SECRETS), &self.user_secrets.to_bytes()[..]),
            )
            .await?;
        Ok(())
    }

    pub async fn load(store: &Store, master: &MasterKey) -> Result<Self, KeyError> {
        async fn ssh(store: &Store, master: &MasterKey, name: &'static str) -> Result<PrivateKey, KeyError> {
            let (_, sealed) = store.gateway_key(name).await?;
            let pem = master.open(&label(name), &sealed)?;
            PrivateKey::from_openssh(&pem[..]).map_err(|_| KeyError::Invalid(name))
        }
        let audit = audit_signing_key(store, master).await?;
        // A gateway initialised before the WireGuard front door gets its key on first start.
        let wireguard = match store.gateway_key(WIREGUARD).await {
            Ok((_, sealed)) => {
                let raw = master.open(&label(WIREGUARD), &sealed)?;
                let raw: [u8; 32] = raw[..].try_into().map_err(|_| KeyError::Invalid(WIREGUARD))?;
                WgSecret::from_bytes(raw)
            }
            Err(StoreError::NotFound(_)) => {
                let k = WgSecret::generate();
                save_wireguard(store, master, &k).await?;
                tracing::info!(public_key = %k.public(), "generated the gateway's WireGuard key");
                k
            }
            Err(e) => return Err(e.into()),
        };
        Ok(GatewayKeys {
            host: ssh(store, master, HOST).await?,
            user_ca: ssh(store, master, USER_CA).await?,
            host_ca: ssh(store, master, HOST_CA).await?,
            audit,
            wireguard,
            user_secrets: user_secrets_key(store, master).await?,
        })
    }

    pub fn host_public(&self) -> &PublicKey {
        self.host.public_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory_store;

    #[tokio::test]
    async fn save_load_refuse_overwrite() {
        let s = memory_store().await;
        let m = MasterKey::generate();
        let k = GatewayKeys::generate();
        k.save(&s, &m).await.unwrap();
        let l = GatewayKeys::load(&s, &m).await.unwrap();
        assert_eq!(l.user_ca.public_key(), k.user_ca.public_key());
        assert_eq!(l.audit.verifying_key(), k.audit.verifying_key());
        assert_eq!(l.wireguard.public(), k.wireguard.public());
        assert_eq!(wireguard_public(&s).await.unwrap(), k.wireguard.public());
        assert!(matches!(
            GatewayKeys::generate().save(&s, &m).await,
            Err(KeyError::AlreadyInitialised)
        ));
        assert!(
            GatewayKeys::load(&s, &MasterKey::generate()).await.is_err(),
            "wrong master key"
        );
        // Nothing stored in the database reveals a private key.
        let (_, sealed) = s.gateway_key("user-ca").await.unwrap();
        assert!(!sealed.contains("PRIVATE KEY"));
        let (_, sealed) = s.gateway_key("wireguard").await.unwrap();
        assert!(!sealed.contains(k.wireguard.to_base64().as_str()));
    }
}
