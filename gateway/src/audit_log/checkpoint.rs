//! Signing the head of the chain: every 10 s while it moves, and once more at shutdown;
//! each time only after walking the chain from this node's witness to that head.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};

use super::chain;
use super::verify::{signature_ok, verify_from, Anchor, Problem};
use super::witness::{Witness, Witnessed};
use crate::gateway::Gateway;
use crate::store::{now_micros, AuditCheckpoint, AuditEvent, Severity, Store, StoreError};

/// How often the head is signed when it moved.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain is not whole, or does not extend what this node verified before.
    #[error("no checkpoint is signed: {}", describe(.0))]
    Refused(Vec<Problem>),
    #[error("cannot record the audit witness {path}: {error}")]
    Witness { path: String, error: std::io::Error },
}

fn describe(problems: &[Problem]) -> String {
    match problems {
        [] => String::new(),
        [p] => p.to_string(),
        [p, rest @ ..] => format!("{p} (and {} more)", rest.len()),
    }
}

/// Sign the head of the chain, after verifying every event from this node's witness
/// (or, without one, from the first event) up to it, and make that checkpoint the new
/// witness. Refused when the walk finds the chain broken or rewritten: the node must
/// not vouch for a chain it cannot tell extends what it signed before. When a valid
/// checkpoint (from any node) already signs exactly that head, nothing new is signed;
/// the witness moves to it. Returns the new checkpoint.
pub async fn sign_head(
    store: &Store,
    key: &SigningKey,
    node: &str,
    witness: &Witness,
) -> Result<Option<AuditCheckpoint>, CheckpointError> {
    let public = key.verifying_key();
    let seen = witness.read();
    let (from, witnessed) = match &seen {
        Witnessed::Checkpoint(c) => (
            Anchor {
                seq: c.seq,
                hash: c.hash.clone(),
            },
            c.seq,
        ),
        _ => (Anchor::genesis(), 0),
    };
    let walked = verify_from(store, &public, from, seen, |_| {}).await?;
    let blocking: Vec<Problem> = walked
        .report
        .problems
        .into_iter()
        .filter(Problem::blocks_signing)
        .collect();
    if !blocking.is_empty() {
        return Err(CheckpointError::Refused(blocking));
    }
    let head = walked.last;
    if head.seq == 0 {
        return Ok(None);
    }
    let hash = chain::parse_hash(&head.hash)
        .ok_or_else(|| StoreError::Invalid(format!("audit event hash {:?}", head.hash)))?;
    // Only a checkpoint whose signature verifies counts: a forged row must not stop
    // the signing.
    let existing = store
        .audit_checkpoints_at(head.seq)
        .await?
        .into_iter()
        .find(|c| c.hash == head.hash && signature_ok(&public, c));
    let (checkpoint, new) = match existing {
        Some(c) => (c, false),
        None => {
            let signed_at = now_micros();
            let c = AuditCheckpoint {
                seq: head.seq,
                hash: head.hash,
                signed_at,
                node: node.to_owned(),
                signature: hex::encode(
                    key.sign(&chain::checkpoint_message(head.seq, &hash, signed_at))
                        .to_bytes(),
                ),
            };
            if !store.put_audit_checkpoint(&c).await? {
                // This node's name already has a row at that seq (planted: it would
                // have been found above otherwise); the next head gets signed.
                return Ok(None);
            }
            (c, true)
        }
    };
    if checkpoint.seq > witnessed {
        witness.record(&checkpoint).map_err(|error| CheckpointError::Witness {
            path: witness.path().display().to_string(),
            error,
        })?;
    }
    Ok(new.then_some(checkpoint))
}

/// A gateway's checkpoint signer: its witness, one signing at a time, and the alert
/// last raised (so that a lasting refusal is one alert, not one every 10 s).
pub struct Checkpointer {
    witness: Witness,
    turn: tokio::sync::Mutex<Option<String>>,
}

impl Checkpointer {
    pub fn new(witness: Witness) -> Checkpointer {
        Checkpointer {
            witness,
            turn: tokio::sync::Mutex::new(None),
        }
    }

    /// Sign the head now; a refusal is logged, and alerted in the audit log when it
    /// is news.
    pub async fn sign(&self, store: &Store, key: &SigningKey, node: &str) {
        let mut alerted = self.turn.lock().await;
        let e = match sign_head(store, key, node, &self.witness).await {
            Ok(_) => {
                *alerted = None;
                return;
            }
            Err(e) => e,
        };
        tracing::error!(error = %e, "cannot sign an audit checkpoint");
        if matches!(e, CheckpointError::Store(_)) {
            return;
        }
        let why = e.to_string();
        if alerted.as_deref() == Some(why.as_str()) {
            return;
        }
        let event = AuditEvent::new(
            "audit.checkpoint_refused",
            Severity::Alert,
            format!("{why}; this node signs no checkpoint until it does (see `hersectl audit verify`)"),
        );
        match store.audit(&event).await {
            Ok(()) => *alerted = Some(why),
            Err(e) => tracing::error!(error = %e, "cannot write the audit.checkpoint_refused alert"),
        }
    }
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
        gw.checkpoints.sign(&gw.store, &gw.keys.audit, &gw.node).await;
    }
}

/// The last checkpoint of this run (after `gateway.stop`).
pub async fn checkpoint_at_shutdown(gw: &Gateway) {
    gw.checkpoints.sign(&gw.store, &gw.keys.audit, &gw.node).await;
}
