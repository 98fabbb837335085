//! Recording retention: purge recordings older than their tier's retention, except those
//! under legal hold. Each purge is an audit event; the session row stays, marked purged,
//! so the chain of recordings shows a removal by policy rather than a loss.

use std::time::Duration;

use crate::policy::Policy;
use crate::store::{now_micros, AuditEvent, Severity, Store, StoreError};

/// Purge what is due on `node`; returns the purged session ids.
pub async fn purge(store: &Store, policy: &Policy, node: &str) -> Result<Vec<String>, StoreError> {
    let mut purged = Vec::new();
    for tier in policy.tiers.values() {
        let Some(keep) = tier.retention else { continue };
        let before = now_micros().saturating_sub(i64::try_from(keep.as_micros()).unwrap_or(i64::MAX));
        for row in store.purgeable(node, tier.name.as_str(), before).await? {
            match std::fs::remove_file(&row.recording) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(session = %row.id, error = %e, "cannot purge recording");
                    continue;
                }
            }
            let _ = std::fs::remove_file(session_recordings::format::index_path(std::path::Path::new(
                &row.recording,
            )));
            store.mark_purged(&row.id).await?;
            store
                .audit(
                    &AuditEvent::new(
                        "recording.purge",
                        Severity::Info,
                        format!("tier {} retention {}s", tier.name, keep.as_secs()),
                    )
                    .user(&row.user)
                    .session(&row.id),
                )
                .await?;
            purged.push(row.id);
        }
    }
    Ok(purged)
}

/// How often the gateway runs [`purge`].
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);
