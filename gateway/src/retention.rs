//! Recording retention: purge recordings older than their tier's retention, except those
//! under legal hold. Each purge is an audit event; the session row stays, marked purged,
//! so the chain of recordings shows a removal by policy rather than a loss.
//!
//! A purge destroys evidence with the gateway's own signature on the event, so it does
//! not take the database's word for it: whoever can write the database could otherwise
//! set a held recording's row free, or its end far back, and have the gateway remove it
//! for them. Before a file goes, [`purge`] also needs
//! - the recording itself, verified with the audit key, to be of the row's session and
//!   tier and to have ended before the tier's retention (its seal's time, or its last
//!   checkpoint's when it was cut short);
//! - the signed audit log to verify, and to hold no `recording.hold` for it that a
//!   `recording.release` did not end. The log is verified from where the last purge left
//!   it ([`Retention`] keeps that point and the holds seen up to it), so each event is
//!   hashed once a day (a full walk, [`FULL_WALK_EVERY`]), not once an hour.
//!
//! # Releases are signed
//!
//! A checkpoint signs whatever chain the database holds, so it proves that no event
//! changed after it, not who wrote one: a database writer can append a well-chained
//! event. A hold believed from such an event only keeps a recording longer; a release
//! would destroy one. So a `recording.release` ends a hold only when its `detail` ends
//! with `; ends hold event <seq> <hash>; signed <sig>`, where `<seq>` (decimal) and
//! `<hash>` (64 hex digits) are the `seq` and `hash` of the `recording.hold` event
//! standing for that session (0 and 64 zeros when none), and `<sig>` is, in 128 hex
//! digits, the audit key's Ed25519 signature of
//!
//! `"herse-recording-release-v1" || str(session_id) || i64(seq) || hash (32 raw bytes)`
//!
//! (`str` and `i64` as in the audit chain's encoding). A release without it, signed by
//! another key, or naming another hold (a copy of an old release; one signed for a hold
//! that did not exist yet, whose hash nobody could know) ends nothing. Only `hersectl`
//! in local mode signs one: it reads the master key, which the database does not give.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use session_recordings::{Completeness, RecordingReader};

use crate::audit_log::{self, Anchor};
use crate::ident::SessionId;
use crate::policy::Policy;
use crate::store::{micros, now_micros, AuditEvent, AuditRow, SessionRow, Severity, Store, StoreError};

/// What purges check rows against, kept between runs.
pub struct Retention {
    /// The audit key's public half, from the gateway's own sealed key (never the
    /// database's copy of it).
    key: VerifyingKey,
    /// This node's witness of the chain: a log rewritten behind it purges nothing.
    witness: audit_log::Witness,
    state: tokio::sync::Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// The log is verified up to here.
    anchor: Anchor,
    /// The last event the previous walk met (after `anchor` when the log has an unsigned
    /// tail): still on the chain next time, or the tail was rewritten.
    walked: Anchor,
    /// Sessions held, each with the hold standing: by the signed events up to `anchor`
    /// in order, and by every hold met after it (a hold is believed at once; a release
    /// only once a checkpoint signs it).
    held: HashMap<String, HoldRef>,
    /// Sessions a purge refused, with why: each alerted once per process.
    refused: HashSet<(String, String)>,
    /// When the last walk from the first event was: the next one after
    /// [`FULL_WALK_EVERY`] starts there again, so that an event edited at or before the
    /// anchor (which an incremental walk never reads) is caught within a day.
    full_walk_at: Option<std::time::Instant>,
    /// Recordings marked purged whose file could not be removed: tried again each run.
    leftovers: Vec<(String, PathBuf)>,
}

impl Retention {
    pub fn new(key: VerifyingKey, witness: audit_log::Witness) -> Retention {
        Retention {
            key,
            witness,
            state: tokio::sync::Mutex::new(Ledger::default()),
        }
    }
}

/// A `recording.hold` event: its `seq` and `hash` on the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRef {
    pub seq: i64,
    pub hash: [u8; 32],
}

/// A hold or release the walk met.
struct HoldEvent {
    seq: i64,
    session: String,
    mark: Mark,
}

enum Mark {
    Hold(HoldRef),
    /// A release, with the hold it ends when its signature verifies (else none).
    Release {
        ends: Option<HoldRef>,
    },
}

const RELEASE_DOMAIN: &str = "herse-recording-release-v1";

fn release_message(session: &str, hold: &HoldRef) -> Vec<u8> {
    let mut m = Vec::with_capacity(96 + session.len());
    for s in [RELEASE_DOMAIN, session] {
        m.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        m.extend_from_slice(s.as_bytes());
    }
    m.extend_from_slice(&hold.seq.to_be_bytes());
    m.extend_from_slice(&hold.hash);
    m
}

impl HoldRef {
    /// A stored `(seq, hash hex)`; `None` when the hash is not 64 hex digits.
    pub fn parse(seq: i64, hash: &str) -> Option<HoldRef> {
        Some(HoldRef {
            seq,
            hash: crate::audit_log::chain::parse_hash(hash)?,
        })
    }
}

/// The `detail` of a `recording.release` event by `by` that ends the hold event `hold`
/// of `session` (none: a release that ends nothing), signed with the audit key (see the
/// module documentation).
pub fn release_detail(key: &SigningKey, session: &str, hold: Option<&HoldRef>, by: &str) -> String {
    let none = HoldRef { seq: 0, hash: [0; 32] };
    let hold = hold.unwrap_or(&none);
    let sig = key.sign(&release_message(session, hold));
    format!(
        "by {by}; ends hold event {} {}; signed {}",
        hold.seq,
        hex::encode(hold.hash),
        hex::encode(sig.to_bytes())
    )
}

/// The hold a release's `detail` ends, if the audit key signed it.
fn release_ends(key: &VerifyingKey, session: &str, detail: &str) -> Option<HoldRef> {
    let (rest, sig) = detail.rsplit_once("; signed ")?;
    let (_, named) = rest.rsplit_once("; ends hold event ")?;
    let (seq, hash) = named.split_once(' ')?;
    if sig.len() != 128 || seq.is_empty() || seq.len() > 19 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hold = HoldRef::parse(seq.parse().ok()?, hash)?;
    let sig: [u8; 64] = hex::decode(sig).ok()?.try_into().ok()?;
    key.verify_strict(
        &release_message(session, &hold),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .ok()?;
    Some(hold)
}

impl Ledger {
    /// Verify the log past the anchor and take in its holds up to its last signed
    /// checkpoint. Returns the sessions under hold now (those, with the holds and
    /// releases of the unsigned tail applied: that tail is walked again next time), or
    /// what is wrong with the log.
    async fn refresh(
        &mut self,
        store: &Store,
        key: &VerifyingKey,
        witness: &audit_log::Witness,
    ) -> Result<Result<HashSet<String>, String>, StoreError> {
        // What was walked stays as it was: an event at or before the anchor, or in the
        // tail walked last time, is never read again otherwise.
        for point in [&self.anchor, &self.walked] {
            if point.seq == 0 {
                continue;
            }
            let row = store.audit_chain_page(point.seq - 1, point.seq, 1).await?;
            if row.first().and_then(|r| r.hash.as_deref()) != Some(point.hash.as_str()) {
                return Ok(Err(format!(
                    "the audit log does not verify (event seq {} changed or went since it was verified; \
                     see `hersectl audit verify`)",
                    point.seq
                )));
            }
        }
        if self.full_walk_at.is_none_or(|t| t.elapsed() >= FULL_WALK_EVERY) {
            self.anchor = Anchor::genesis();
            self.walked = Anchor::genesis();
            self.held.clear();
        }
        let from_genesis = self.anchor.seq == 0;
        let seen: Arc<std::sync::Mutex<Vec<HoldEvent>>> = Arc::default();
        let sink = seen.clone();
        let public = *key;
        let walked = audit_log::verify_from(store, key, self.anchor.clone(), witness.read(), move |r: &AuditRow| {
            let (Some(seq), Some(session)) = (r.seq, &r.session) else {
                return;
            };
            let mark = match r.kind.as_str() {
                // (A hash that does not parse fails the walk anyway.)
                "recording.hold" => match r.hash.as_deref().and_then(|h| HoldRef::parse(seq, h)) {
                    Some(hold) => Mark::Hold(hold),
                    None => return,
                },
                "recording.release" => Mark::Release {
                    ends: release_ends(&public, session, &r.detail),
                },
                _ => return,
            };
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(HoldEvent {
                seq,
                session: session.clone(),
                mark,
            });
        })
        .await?;
        if let Some(p) = walked.report.problems.first() {
            return Ok(Err(format!(
                "the audit log does not verify ({p}; {} problem(s) in all, see `hersectl audit verify`)",
                walked.report.problems.len()
            )));
        }
        let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        let (signed, tail): (Vec<_>, Vec<_>) = seen.into_iter().partition(|e| e.seq <= walked.signed.seq);
        apply(&mut self.held, &signed);
        for e in &tail {
            if let Mark::Hold(hold) = &e.mark {
                self.held.insert(e.session.clone(), hold.clone());
            }
        }
        self.anchor = walked.signed;
        self.walked = walked.last;
        if from_genesis {
            self.full_walk_at = Some(std::time::Instant::now());
        }
        let mut now = self.held.clone();
        apply(&mut now, &tail);
        Ok(Ok(now.into_keys().collect()))
    }
}

/// Take in holds and releases in log order: a release ends the hold standing only when
/// it is signed for that very hold.
fn apply(held: &mut HashMap<String, HoldRef>, events: &[HoldEvent]) {
    for e in events {
        match &e.mark {
            Mark::Hold(hold) => {
                held.insert(e.session.clone(), hold.clone());
            }
            Mark::Release { ends: Some(hold) } if held.get(&e.session) == Some(hold) => {
                held.remove(&e.session);
            }
            Mark::Release { .. } => {}
        }
    }
}

/// Purge what is due on `node`; returns the purged session ids.
pub async fn purge(
    store: &Store,
    policy: &Policy,
    node: &str,
    recordings_dir: &Path,
    retention: &Retention,
) -> Result<Vec<String>, StoreError> {
    let mut ledger = retention.state.lock().await;
    let mut purged = Vec::new();
    retry_leftovers(&mut ledger, &mut purged);
    let now = now_micros();
    // Each row with its tier's retention.
    let mut due = Vec::new();
    for tier in policy.tiers.values() {
        let Some(keep) = tier.retention else { continue };
        let before = now.saturating_sub(micros(keep));
        due.extend(
            store
                .purgeable(node, tier.name.as_str(), before)
                .await?
                .into_iter()
                .map(|row| (row, keep)),
        );
    }
    // Walked at every run, due rows or not, so that each walk is short and a broken log
    // is reported within the hour.
    let held = match ledger.refresh(store, &retention.key, &retention.witness).await? {
        Ok(tail) => tail,
        Err(why) => {
            tracing::error!(%why, "no recording purged");
            store
                .audit(&AuditEvent::new(
                    "recording.purge_refused",
                    Severity::Alert,
                    format!("{why}; no recording is purged until it does"),
                ))
                .await?;
            return Ok(purged);
        }
    };
    for (row, keep) in due {
        // The file this node wrote for the session, whatever path the row names (and
        // only for an id that is one: no path is built from anything else).
        let Ok(id) = SessionId::parse(&row.id) else {
            refuse(store, &mut ledger, &row, "the database row's id is not a session id").await?;
            continue;
        };
        let path = recordings_dir.join(format!("{id}.herserec"));
        let vouched = if held.contains(&row.id) {
            Err(
                "the signed audit log has it under legal hold, the database row not (only a release \
                 signed by the audit key ends a hold)"
                    .to_owned(),
            )
        } else if Path::new(&row.recording) != path {
            Err(format!(
                "the database row names {}, not {}",
                row.recording,
                path.display()
            ))
        } else {
            let (path, key, row) = (path.clone(), retention.key, row.clone());
            tokio::task::spawn_blocking(move || recording_is_due(&path, &key, &row, keep, now))
                .await
                .unwrap_or_else(|e| Err(format!("the check stopped: {e}")))
        };
        if let Err(why) = vouched {
            refuse(store, &mut ledger, &row, &why).await?;
            continue;
        }
        // The row and its event first, in one transaction that checks the hold again;
        // the file after. A verify that reads the row before this finds the file; one
        // that reads it after finds the mark and its event.
        let event = AuditEvent::new(
            "recording.purge",
            Severity::Info,
            format!("tier {} retention {}s", row.tier, keep.as_secs()),
        )
        .user(&row.user)
        .session(&row.id);
        if !store.mark_purged(&row.id, &event).await? {
            continue;
        }
        let _ = std::fs::remove_file(session_recordings::format::index_path(&path));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                // Marked purged but still on disk: kept past its retention. Loud, so
                // that someone removes it; nothing reads it as a live recording. Tried
                // again at each run of this process.
                tracing::error!(session = %row.id, error = %e, "cannot remove a purged recording");
                store
                    .audit(
                        &AuditEvent::new(
                            "recording.purge_incomplete",
                            Severity::Alert,
                            format!(
                                "{} could not be removed: {e}; tried again at each purge, or remove it by hand",
                                row.recording
                            ),
                        )
                        .user(&row.user)
                        .session(&row.id),
                    )
                    .await?;
                ledger.leftovers.push((row.id.clone(), path));
            }
        }
        purged.push(row.id);
    }
    Ok(purged)
}

/// Remove the files of earlier purges that could not be removed then.
fn retry_leftovers(ledger: &mut Ledger, purged: &mut Vec<String>) {
    ledger.leftovers.retain(|(id, path)| match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(session = %id, "removed a purged recording left over");
            purged.push(id.clone());
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
    });
}

/// Whether the recording itself says it is due: verified with the audit key, of the
/// row's session and tier (whose retention is `keep`), ended (sealed, or last
/// checkpointed) before that retention. A missing or unverifiable recording is never purged: its row then hides
/// nothing behind a purge event, and `recordings verify` reports it.
fn recording_is_due(path: &Path, key: &VerifyingKey, row: &SessionRow, keep: Duration, now: i64) -> Result<(), String> {
    // Neither a device, a pipe nor a link; nor a live session's, whose writer holds it.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => return Err(format!("{} is not a regular file", path.display())),
        Err(e) => return Err(format!("its recording cannot be read: {e}")),
    }
    match session_recordings::is_being_written(path) {
        Ok(false) => {}
        Ok(true) => return Err("its recording is still being written (a live session)".into()),
        Err(e) => return Err(format!("its recording cannot be read: {e}")),
    }
    let v = RecordingReader::open_verified(path, key)
        .and_then(|r| r.verify())
        .map_err(|e| format!("its recording does not verify: {e}"))?;
    let h = &v.header;
    if h.session_id != row.id {
        return Err(format!("its recording is session {}'s", h.session_id));
    }
    if h.tier != row.tier {
        return Err(format!(
            "its recording is of tier {}, the database row says {}",
            h.tier, row.tier
        ));
    }
    let ended = match v.completeness {
        Completeness::Complete { sealed_at_micros } => sealed_at_micros,
        Completeness::Truncated {
            authenticated_until_micros,
            ..
        } => authenticated_until_micros,
    };
    let ended = i64::try_from(h.started_at_micros.saturating_add(ended)).unwrap_or(i64::MAX);
    if ended.saturating_add(micros(keep)) > now {
        return Err(format!(
            "its recording ended at {}, within the tier's retention; the database row says {}",
            crate::timefmt::rfc3339(ended),
            row.ended_at.map(crate::timefmt::rfc3339).unwrap_or_default()
        ));
    }
    Ok(())
}

/// Keep a recording the database called due, and say why, once per process.
async fn refuse(store: &Store, ledger: &mut Ledger, row: &SessionRow, why: &str) -> Result<(), StoreError> {
    if !ledger.refused.insert((row.id.clone(), why.to_owned())) {
        return Ok(());
    }
    tracing::error!(session = %row.id, %why, "recording kept: its row says it is due");
    store
        .audit(
            &AuditEvent::new(
                "recording.purge_refused",
                Severity::Alert,
                format!("kept, although its database row says it is due: {why}"),
            )
            .user(&row.user)
            .session(&row.id),
        )
        .await
}

/// How often a purge verifies the whole audit log again rather than from its anchor.
pub const FULL_WALK_EVERY: Duration = Duration::from_secs(86_400);

/// How often the gateway runs [`purge`].
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::Ledger;
    use crate::ident::{SessionId, UserName};
    use crate::store::{test_backends, test_session, AuditEvent, Severity};

    /// The holds a purge believes are the signed log's, walked once: a hold stands until
    /// its release, whatever the rows say; a walk only goes past the last checkpoint it
    /// verified; an edited event stops every purge.
    #[tokio::test]
    async fn holds_come_from_the_verified_log_and_an_edited_log_stops_purges() {
        for (backend, s) in test_backends().await {
            let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
            let public = key.verifying_key();
            let event = |kind: &'static str, id: &str, detail: String| {
                let e = AuditEvent::new(kind, Severity::Info, detail).session(id);
                let s = s.clone();
                async move { s.append_audit(&e).await.unwrap() }
            };
            let hold = |id: &str| {
                let e = event("recording.hold", id, "test".into());
                async move {
                    let r = e.await;
                    super::HoldRef::parse(r.seq.unwrap(), r.hash.as_deref().unwrap()).unwrap()
                }
            };
            let release = |id: &str, ends: &super::HoldRef, key: &ed25519_dalek::SigningKey| {
                event(
                    "recording.release",
                    id,
                    super::release_detail(key, id, Some(ends), "test"),
                )
            };
            let w = crate::audit_log::Witness::in_dir(&crate::store::test_dir("ledger"));
            let sign = || async {
                crate::audit_log::sign_head(&s, &key, "n1", &w, &mut None)
                    .await
                    .unwrap()
            };
            let set = |ids: &[&str]| {
                ids.iter()
                    .map(|i| i.to_string())
                    .collect::<std::collections::HashSet<_>>()
            };
            let mut ledger = Ledger::default();
            let a = hold("a").await;
            sign().await;
            assert_eq!(
                ledger.refresh(&s, &public, &w).await.unwrap().unwrap(),
                set(&["a"]),
                "{backend}"
            );
            let signed_at = ledger.anchor.seq;
            assert!(signed_at > 0, "{backend}");
            // After the last checkpoint: in force for this run, walked again next time.
            release("a", &a, &key).await;
            let b = hold("b").await;
            assert_eq!(
                ledger.refresh(&s, &public, &w).await.unwrap().unwrap(),
                set(&["b"]),
                "{backend}"
            );
            // A hold is believed at once, a release only once signed.
            let held = |l: &Ledger| l.held.keys().cloned().collect::<std::collections::HashSet<_>>();
            assert_eq!(
                (ledger.anchor.seq, held(&ledger)),
                (signed_at, set(&["a", "b"])),
                "{backend}"
            );
            sign().await;
            assert_eq!(
                ledger.refresh(&s, &public, &w).await.unwrap().unwrap(),
                set(&["b"]),
                "{backend}"
            );
            assert_eq!(held(&ledger), set(&["b"]), "{backend}");
            // A release ends a hold only when the audit key signed it for that very hold:
            // not one a database writer appended, one signed by another key, one naming
            // another hold, nor a copy of an old release after the recording was held
            // again.
            let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
            event("recording.release", "b", "by mallory".into()).await;
            event(
                "recording.release",
                "b",
                format!(
                    "by mallory; ends hold event {} {}; signed {}",
                    b.seq,
                    hex::encode(b.hash),
                    "00".repeat(64)
                ),
            )
            .await;
            release("b", &b, &other).await;
            for guess in [
                super::HoldRef {
                    seq: b.seq - 1,
                    ..b.clone()
                },
                super::HoldRef {
                    hash: [1; 32],
                    ..b.clone()
                },
            ] {
                release("b", &guess, &key).await;
            }
            let r1 = hold("r").await;
            let old = release("r", &r1, &key).await;
            hold("r").await;
            event("recording.release", "r", old.detail).await;
            for _ in 0..2 {
                assert_eq!(
                    ledger.refresh(&s, &public, &w).await.unwrap().unwrap(),
                    set(&["b", "r"]),
                    "{backend}"
                );
                sign().await;
            }
            release("b", &b, &key).await;
            assert_eq!(
                ledger.refresh(&s, &public, &w).await.unwrap().unwrap(),
                set(&["r"]),
                "{backend}"
            );
            sign().await;
            // An edit before the anchor escapes the incremental walk, not the daily full
            // one. (Put back after.)
            let edit = |detail: &'static str| {
                let s = s.clone();
                async move {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE audit_events SET detail = '{detail}' WHERE session_id = 'a' AND kind = 'recording.hold'"
                    )))
                    .execute(s.pool())
                    .await
                    .unwrap();
                }
            };
            edit("edited").await;
            assert!(ledger.refresh(&s, &public, &w).await.unwrap().is_ok(), "{backend}");
            ledger.full_walk_at = None;
            let why = ledger.refresh(&s, &public, &w).await.unwrap().unwrap_err();
            assert!(why.contains("edited"), "{backend}: {why}");
            edit("test").await;
            assert_eq!(
                ledger.refresh(&s, &public, &w).await.unwrap().unwrap(),
                set(&["r"]),
                "{backend}"
            );
            // The tail walked last time, rewritten (here: its last event gone, the head
            // moved back onto the event before it), stops purges although what remains
            // is a whole chain.
            let mut rewritten = Ledger::default();
            hold("t").await;
            assert!(rewritten.refresh(&s, &public, &w).await.unwrap().is_ok(), "{backend}");
            for q in [
                "DELETE FROM audit_events WHERE session_id = 't'",
                "UPDATE audit_head SET seq = seq - 1, \
                 hash = (SELECT hash FROM audit_events WHERE seq = audit_head.seq - 1)",
            ] {
                sqlx::query(q).execute(s.pool()).await.unwrap();
            }
            assert!(
                crate::audit_log::verify(&s, &public, crate::audit_log::Witnessed::Nothing)
                    .await
                    .unwrap()
                    .is_whole(),
                "{backend}"
            );
            let why = rewritten.refresh(&s, &public, &w).await.unwrap().unwrap_err();
            assert!(why.contains("changed or went"), "{backend}: {why}");
            // An event edited after the anchor, or anywhere for a first walk: no holds
            // to go by, so no purge.
            hold("c").await;
            sqlx::query("UPDATE audit_events SET session_id = 'd' WHERE session_id = 'c'")
                .execute(s.pool())
                .await
                .unwrap();
            let why = ledger.refresh(&s, &public, &w).await.unwrap().unwrap_err();
            assert!(why.contains("does not verify"), "{backend}: {why}");
            let why = Ledger::default().refresh(&s, &public, &w).await.unwrap().unwrap_err();
            assert!(why.contains("edited"), "{backend}: {why}");
            // Checkpoints signed by another key vouch for nothing.
            let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]).verifying_key();
            assert!(
                Ledger::default().refresh(&s, &other, &w).await.unwrap().is_err(),
                "{backend}"
            );
        }
    }

    /// The recording itself must say it is due: the audit key's, of the row's session
    /// and tier, ended before the retention, a regular file no writer holds. Each
    /// difference keeps it, with the reason.
    #[test]
    fn a_recording_is_due_only_by_its_own_verified_word() {
        use session_recordings::{DataDirection, FileRecorder, Recorder};
        use std::time::Duration;
        let dir = std::env::temp_dir().join(format!("herse-due-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s1.herserec");
        let header = crate::store::test_header("s1", "db", 1_000_000);
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key();
        let row = |id: &str, tier: &str| crate::store::SessionRow {
            id: id.into(),
            node: "n".into(),
            user: "alice".into(),
            target: "db1".into(),
            tier: tier.into(),
            login: "deploy".into(),
            client_addr: "10.77.0.2:40000".into(),
            workstation: None,
            recording: path.display().to_string(),
            started_at: 1_000_000,
            ended_at: Some(1),
            end_reason: None,
            kill_requested_by: None,
            legal_hold: false,
            purged_at: None,
            grant: None,
        };
        let keep = Duration::from_secs(60);
        let late = 10_000_000_000;
        let due = |p: &std::path::Path, k: &ed25519_dalek::VerifyingKey, id: &str, tier: &str, now: i64| {
            super::recording_is_due(p, k, &row(id, tier), keep, now)
        };
        let r = FileRecorder::create(&path, &header, key).unwrap();
        r.data(0, DataDirection::Output, b"hello\r\n").unwrap();
        let live = due(&path, &public, "s1", "db", late).unwrap_err();
        assert!(live.contains("still being written"), "{live}");
        r.finish("done").unwrap();
        assert_eq!(due(&path, &public, "s1", "db", late), Ok(()));
        let why = due(&path, &public, "s2", "db", late).unwrap_err();
        assert!(why.contains("session s1's"), "{why}");
        let why = due(&path, &public, "s1", "web", late).unwrap_err();
        assert!(why.contains("tier db"), "{why}");
        let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        let why = due(&path, &other, "s1", "db", late).unwrap_err();
        assert!(why.contains("does not verify"), "{why}");
        let why = due(&path, &public, "s1", "db", 1_000_000).unwrap_err();
        assert!(why.contains("within the tier's retention"), "{why}");
        let link = dir.join("link.herserec");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let why = due(&link, &public, "s1", "db", late).unwrap_err();
        assert!(why.contains("not a regular file"), "{why}");
        let why = due(&dir.join("gone.herserec"), &public, "s1", "db", late).unwrap_err();
        assert!(why.contains("cannot be read"), "{why}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
            let hold = |id: &SessionId| AuditEvent::new("recording.hold", Severity::Info, "test").session(id.as_str());
            let holds = || async { s.audit_events(Some("recording.hold"), 10).await.unwrap().len() };
            assert!(s.set_legal_hold(&held, true, &hold(&held)).await.unwrap());
            assert_eq!(holds().await, 1, "{backend}: the hold is written with its event");
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
            assert!(!s.set_legal_hold(&free, true, &hold(&free)).await.unwrap(), "{backend}");
            assert_eq!(holds().await, 1, "{backend}: no event for a hold not placed");
            assert!(s.set_legal_hold(&held, false, &hold(&held)).await.unwrap(), "{backend}");
        }
    }
}
