//! Signing the head of the chain: every 10 s while it moves, and once more at shutdown.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};

use super::chain;
use crate::gateway::Gateway;
use crate::store::{now_micros, AuditCheckpoint, Store, StoreError};

/// How often the head is signed when it moved.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// Sign the current head unless a valid checkpoint (from any node) already signs exactly
/// it. Only a checkpoint whose signature verifies counts: a forged row with a high `seq`
/// must not stop the signing. Returns the new checkpoint.
pub async fn sign_head(store: &Store, key: &SigningKey, node: &str) -> Result<Option<AuditCheckpoint>, StoreError> {
    let (seq, hash_hex) = store.audit_head().await?;
    if seq == 0 {
        return Ok(None);
    }
    let hash =
        chain::parse_hash(&hash_hex).ok_or_else(|| StoreError::Invalid(format!("audit head hash {hash_hex:?}")))?;
    let public = key.verifying_key();
    let signed = store.audit_checkpoints_at(seq).await?.iter().any(|c| {
        c.hash == hash_hex
            && hex::decode(&c.signature)
                .ok()
                .and_then(|b| <[u8; 64]>::try_from(b).ok())
                .is_some_and(|sig| {
                    public
                        .verify_strict(
                            &chain::checkpoint_message(seq, &hash, c.signed_at),
                            &ed25519_dalek::Signature::from_bytes(&sig),
                        )
                        .is_ok()
                })
    });
    if signed {
        return Ok(None);
    }
    let signed_at = now_micros();
    let c = AuditCheckpoint {
        seq,
        hash: hash_hex,
        signed_at,
        node: node.to_owned(),
        signature: hex::encode(key.sign(&chain::checkpoint_message(seq, &hash, signed_at)).to_bytes()),
    };
    Ok(store.put_audit_checkpoint(&c).await?.then_some(c))
}

/// `herse serve`'s checkpoint task: until the gateway stops accepting connections; the
/// final checkpoint is [`checkpoint_at_shutdown`], after the last event.
pub async fn checkpoint_loop(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gw.stop_accepting.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sign_head(&gw.store, &gw.keys.audit, &gw.node).await {
            tracing::error!(error = %e, "cannot sign an audit checkpoint");
        }
    }
}

/// The last checkpoint of this run (after `gateway.stop`).
pub async fn checkpoint_at_shutdown(gw: &Gateway) {
    if let Err(e) = sign_head(&gw.store, &gw.keys.audit, &gw.node).await {
        tracing::error!(error = %e, "cannot sign the final audit checkpoint");
    }
}
