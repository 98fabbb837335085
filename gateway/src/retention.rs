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
            // The row and its event first, in one transaction that checks the hold again;
            // the file after. A verify that reads the row before this finds the file; one
            // that reads it after finds the mark and its event.
            let event = AuditEvent::new(
                "recording.purge",
                Severity::Info,
                format!("tier {} retention {}s", tier.name, keep.as_secs()),
            )
            .user(&row.user)
            .session(&row.id);
            if !store.mark_purged(&row.id, &event).await? {
                continue;
            }
            let path = std::path::Path::new(&row.recording);
            let _ = std::fs::remove_file(session_recordings::format::index_path(path));
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Marked purged but still on disk: kept past its retention. Loud, so
                    // that someone removes it; nothing reads it as a live recording.
                    tracing::error!(session = %row.id, error = %e, "cannot remove a purged recording");
                    store
                        .audit(
                            &AuditEvent::new(
                                "recording.purge_incomplete",
                                Severity::Alert,
                                format!("{} could not be removed: {e}; remove it by hand", row.recording),
                            )
                            .user(&row.user)
                            .session(&row.id),
                        )
                        .await?;
                }
            }
            purged.push(row.id);
        }
    }
    Ok(purged)
}

/// How often the gateway runs [`purge`].
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use crate::ident::{SessionId, UserName};
    use crate::store::{test_backends, test_session, AuditEvent, Severity};

    /// A purge marks the row and writes its event together, and only where no hold
    /// stands and no purge came first: a hold placed after the listing wins, and a
    /// second purge writes no second event.
    #[tokio::test]
    async fn a_purge_mark_is_one_write_with_its_event_and_yields_to_a_hold() {
        for (backend, s) in test_backends().await {
            s.add_user(&UserName::parse("pat").unwrap()).await.unwrap();
            let (held, free) = (SessionId::random(), SessionId::random());
            for id in [&held, &free] {
                s.session_started(&test_session("pat", id)).await.unwrap();
            }
            assert!(s.set_legal_hold(&held, true).await.unwrap());
            let event =
                |id: &SessionId| AuditEvent::new("recording.purge", Severity::Info, "test").session(id.as_str());
            let purges = || async { s.audit_events(Some("recording.purge"), 10).await.unwrap().len() };
            assert!(!s.mark_purged(held.as_str(), &event(&held)).await.unwrap(), "{backend}");
            assert_eq!(purges().await, 0, "{backend}: no event for a held recording");
            assert!(s.mark_purged(free.as_str(), &event(&free)).await.unwrap(), "{backend}");
            assert!(!s.mark_purged(free.as_str(), &event(&free)).await.unwrap(), "{backend}");
            assert_eq!(purges().await, 1, "{backend}: one event, with the one mark");
            let rows = s.sessions(false, 10).await.unwrap();
            let purged: Vec<_> = rows
                .iter()
                .filter(|r| r.purged_at.is_some())
                .map(|r| r.id.clone())
                .collect();
            assert_eq!(purged, vec![free.to_string()], "{backend}");
            // A hold on a purged recording would hold nothing: refused.
            assert!(!s.set_legal_hold(&free, true).await.unwrap(), "{backend}");
            assert!(s.set_legal_hold(&held, false).await.unwrap(), "{backend}");
        }
    }
}
