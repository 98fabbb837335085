//! The tamper-evident audit log, above the store's rows: the hash chain's encoding
//! (`chain`), signed checkpoints of its head (`checkpoint`), this node's own record of
//! the last one it verified (`witness`), verification with only the public key
//! (`verify`), syslog forwarding (`syslog`), and the queries `hersectl` and the control
//! API share (listing with filters, following).
//!
//! Appends happen in `Store::audit`, which every caller already uses: the chain is
//! extended inside the same transaction as the insert.

pub mod chain;
pub mod checkpoint;
pub mod syslog;
pub mod verify;
pub mod witness;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;

pub use checkpoint::{
    checkpoint_at_shutdown, checkpoint_loop, retry_after, sign_head, CheckpointError, Checkpointer, Signing,
    RETRY_AT_MOST,
};
pub use verify::{verify, verify_from, verify_with_copies, Anchor, Continued, Problem, VerifyReport};
pub use witness::{copy_from_text, read_bounded as read_witness_file, Witness, WitnessOf, Witnessed};

use crate::store::{AuditFilter, AuditRow, Store, StoreError};

/// How often `follow` polls for new events.
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller gave something unusable (a time, a key).
    #[error("{0}")]
    Input(String),
}

/// A time bound: RFC 3339 (`2025-01-31T12:00:00Z`, or without the zone meaning UTC) or a
/// duration before `now` (`90s`, `1h`, `2d 3h`). Returns Unix microseconds.
pub fn parse_time(s: &str, now: SystemTime) -> Result<i64, AuditLogError> {
    let s = s.trim();
    let t = match humantime::parse_duration(s) {
        Ok(d) => now
            .checked_sub(d)
            .ok_or_else(|| AuditLogError::Input(format!("{s:?} reaches before 1970")))?,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|e| {
            AuditLogError::Input(format!(
                "{s:?} is neither RFC 3339 (2025-01-31T12:00:00Z) nor a duration (1h, 30m): {e}"
            ))
        })?,
    };
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AuditLogError::Input(format!("{s:?} is before 1970")))?;
    i64::try_from(d.as_micros()).map_err(|_| AuditLogError::Input(format!("{s:?} is too far ahead")))
}

/// The newest `limit` events matching `filter`, oldest first.
pub async fn list(store: &Store, filter: &AuditFilter, limit: i64) -> Result<Vec<AuditRow>, AuditLogError> {
    Ok(store.audit_query(filter, None, limit.max(0)).await?)
}

/// Events matching `filter` with `seq > after`, oldest first, at most `limit`: the next
/// page for a follower (whose cursor is the last `seq` it saw).
pub async fn after(
    store: &Store,
    filter: &AuditFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRow>, AuditLogError> {
    Ok(store.audit_query(filter, Some(after), limit.max(0)).await?)
}

/// The audit public key stored in the database (`gateway_keys` name `audit`).
pub async fn stored_public_key(store: &Store) -> Result<VerifyingKey, AuditLogError> {
    let (public, _) = store.gateway_key("audit").await?;
    parse_public_key(&public).map_err(|e| AuditLogError::Input(format!("stored audit public key: {e}")))
}

/// An Ed25519 public key in hex (64 digits), given directly or as a file holding it
/// (such as `data_dir/audit_key.pub`).
pub fn public_key_from_arg(arg: &str) -> Result<VerifyingKey, AuditLogError> {
    let text = if is_hex_key(arg.trim()) {
        arg.trim().to_owned()
    } else {
        std::fs::read_to_string(Path::new(arg))
            .map_err(|e| AuditLogError::Input(format!("{arg} is neither a hex public key nor a readable file: {e}")))?
    };
    parse_public_key(&text).map_err(|e| AuditLogError::Input(format!("{arg}: {e}")))
}

/// A public key given as 64 hex digits only: what a call from elsewhere may carry (a
/// path would make the gateway read its own files for the caller).
pub fn public_key_from_hex(arg: &str) -> Result<VerifyingKey, AuditLogError> {
    if !is_hex_key(arg.trim()) {
        return Err(AuditLogError::Input("the public key must be 64 hex digits".into()));
    }
    parse_public_key(arg.trim()).map_err(|e| AuditLogError::Input(format!("{arg}: {e}")))
}

fn is_hex_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    let s = s.trim();
    if !is_hex_key(s) {
        return Err("not 64 hex digits".into());
    }
    let bytes: [u8; 32] = hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("not 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 key: {e}"))
}

#[cfg(test)]
mod tests;
