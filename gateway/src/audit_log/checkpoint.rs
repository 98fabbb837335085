//! Signing the head of the chain: every 10 s while it moves (backing off to every 5 min
//! while it fails), and once more at shutdown; each time only after walking the chain
//! from this node's witness to that head.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};

use super::chain;
use super::verify::{signature_ok, still_there, walk_now, Anchor, Problem};
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
    /// A row this node cannot overwrite holds its place at that seq.
    #[error("the checkpoint at seq {seq} cannot be stored: a row for this node is in its place")]
    Unstored { seq: i64 },
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
/// witness. Refused when the walk finds a problem that [`Problem::blocks_signing`]: the
/// node must not vouch for a chain it cannot tell extends what it signed before. `seen`
/// is the head the previous walk met (kept by the caller, signed or not): it must still
/// be there, so that events written while signing was refused cannot be rewritten once
/// the refusal's cause is undone; it moves to this walk's head unless it went. When a
/// valid checkpoint (from any node) already signs exactly that head, nothing new is
/// signed; the witness moves to it. Returns the new checkpoint.
pub async fn sign_head(
    store: &Store,
    key: &SigningKey,
    node: &str,
    witness: &Witness,
    seen: &mut Option<Anchor>,
) -> Result<Option<AuditCheckpoint>, CheckpointError> {
    let public = key.verifying_key();
    let witnessed_now = witness.read();
    let (from, witnessed) = match &witnessed_now {
        Witnessed::Checkpoint(c) => (
            Anchor {
                seq: c.seq,
                hash: c.hash.clone(),
            },
            c.seq,
        ),
        _ => (Anchor::genesis(), 0),
    };
    let walked = walk_now(store, &public, from, witnessed_now, |_| {}).await?;
    let mut problems = walked.report.problems;
    let before = match seen.as_ref() {
        Some(p) if p.seq > 0 => still_there(store, p.seq, &p.hash, "this node walked the chain last").await?,
        _ => None,
    };
    match before {
        Some(p) => problems.push(p),
        None if walked.last.seq > 0 => *seen = Some(walked.last.clone()),
        None => {}
    }
    let blocking: Vec<Problem> = problems.into_iter().filter(Problem::blocks_signing).collect();
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
                // This node's name already has a row at that seq that does not verify
                // (one that did would have been found above, or reported as a
                // mismatch): planted, to keep the head unsigned. Overwrite it.
                let planted = store
                    .audit_checkpoints_at(c.seq)
                    .await?
                    .into_iter()
                    .find(|k| k.node == c.node && !signature_ok(&public, k));
                let replaced = match planted {
                    Some(k) => store.replace_audit_checkpoint(&c, &k.signature).await?,
                    None => false,
                };
                if !replaced {
                    return Err(CheckpointError::Unstored { seq: c.seq });
                }
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

/// A lasting refusal is alerted again this often.
pub const REALERT_EVERY: Duration = Duration::from_secs(3600);

/// Store errors in a row before they are alerted (with the back-off, about five minutes
/// of them): a database restarting is not news, rows that no longer decode are.
const STORE_ERRORS_ALERTED: u32 = 6;

/// The longest wait between two tries of the periodic signer while it keeps failing.
pub const RETRY_AT_MOST: Duration = Duration::from_secs(300);

/// The wait before the periodic signer tries again after a failure, the one before it
/// having been `before`: [`CHECKPOINT_EVERY`], then doubling up to [`RETRY_AT_MOST`].
/// A refusal lasts until an operator acts, and each try walks the chain from the
/// witness (from the first event when the witness is unusable): on a long log that is
/// seconds of CPU and database reads, which must not repeat every 10 s for days.
pub fn retry_after(before: Option<Duration>) -> Duration {
    match before {
        None => CHECKPOINT_EVERY,
        Some(d) => d.saturating_mul(2).min(RETRY_AT_MOST),
    }
}

/// What one call of the signer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// The head is signed (or nothing needed it).
    Done,
    /// Refused, or the store or the witness failed: logged, and alerted when news.
    Failed,
    /// Not tried: the periodic signer is backing off after failures.
    Deferred,
}

/// A gateway's checkpoint signer: its witness, one signing at a time, the head its last
/// walk met, the alert last raised (so that a lasting refusal is one alert an hour,
/// not one every 10 s), and when it tries again after failures.
pub struct Checkpointer {
    witness: Witness,
    state: tokio::sync::Mutex<SignerState>,
}

#[derive(Default)]
struct SignerState {
    seen: Option<Anchor>,
    alerted: Option<(String, std::time::Instant)>,
    store_errors: u32,
    /// After a failure: when the periodic signer tries again, and the wait that led there.
    backoff: Option<(tokio::time::Instant, Duration)>,
}

impl Checkpointer {
    /// The signer of this node, with the last event its walks reached before (kept in
    /// the data directory beside the witness).
    pub fn new(witness: Witness) -> Checkpointer {
        let seen = witness.read_seen().unwrap_or_else(|e| {
            // Not fatal: the witness still guards every signed event; only the events
            // walked while signing was refused lose their guard. Said loudly.
            tracing::error!(error = %e, "the last audit event walked is unknown; events walked while signing was refused are not guarded");
            None
        });
        Checkpointer {
            witness,
            state: tokio::sync::Mutex::new(SignerState {
                seen,
                ..SignerState::default()
            }),
        }
    }

    /// Where this signer's witness is kept.
    pub fn witness_path(&self) -> &std::path::Path {
        self.witness.path()
    }

    /// The periodic signing: [`Checkpointer::sign`], unless failures before it asked
    /// to wait longer ([`retry_after`]).
    pub async fn tick(&self, store: &Store, key: &SigningKey, node: &str) -> Signing {
        let due = {
            let state = self.state.lock().await;
            state.backoff.is_none_or(|(at, _)| tokio::time::Instant::now() >= at)
        };
        if !due {
            return Signing::Deferred;
        }
        self.sign(store, key, node).await
    }

    /// Sign the head now; a refusal is logged, and alerted in the audit log when it
    /// is news (or an hour old).
    pub async fn sign(&self, store: &Store, key: &SigningKey, node: &str) -> Signing {
        let mut state = self.state.lock().await;
        let before = state.seen.clone();
        let signed = sign_head(store, key, node, &self.witness, &mut state.seen).await;
        if state.seen != before {
            if let Some(seen) = &state.seen {
                if let Err(e) = self.witness.record_seen(seen) {
                    tracing::error!(error = %e, "cannot keep the last audit event walked");
                }
            }
        }
        let e = match signed {
            Ok(_) => {
                state.alerted = None;
                state.store_errors = 0;
                state.backoff = None;
                return Signing::Done;
            }
            Err(e) => e,
        };
        let wait = retry_after(state.backoff.map(|(_, d)| d));
        state.backoff = Some((tokio::time::Instant::now() + wait, wait));
        tracing::error!(error = %e, retry_in_s = wait.as_secs(), "cannot sign an audit checkpoint");
        if matches!(e, CheckpointError::Store(_)) {
            state.store_errors = state.store_errors.saturating_add(1);
            if state.store_errors < STORE_ERRORS_ALERTED {
                return Signing::Failed;
            }
        }
        let why = e.to_string();
        if state
            .alerted
            .as_ref()
            .is_some_and(|(w, at)| *w == why && at.elapsed() < REALERT_EVERY)
        {
            return Signing::Failed;
        }
        let event = AuditEvent::new(
            "audit.checkpoint_refused",
            Severity::Alert,
            format!("{why}; this node signs no checkpoint until it does (see `hersectl audit verify`)"),
        );
        match store.audit(&event).await {
            Ok(()) => state.alerted = Some((why, std::time::Instant::now())),
            Err(e) => tracing::error!(error = %e, "cannot write the audit.checkpoint_refused alert"),
        }
        Signing::Failed
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
        gw.checkpoints.tick(&gw.store, &gw.keys.audit, &gw.node).await;
    }
}

/// The last checkpoint of this run (after `gateway.stop`).
pub async fn checkpoint_at_shutdown(gw: &Gateway) {
    let _ = gw.checkpoints.sign(&gw.store, &gw.keys.audit, &gw.node).await;
}
