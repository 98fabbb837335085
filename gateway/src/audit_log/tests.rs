use ed25519_dalek::SigningKey;

use super::*;
use crate::store::{test_backends, AuditEvent, Severity};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

async fn append(store: &Store, n: usize) {
    for i in 0..n {
        store
            .audit(&AuditEvent::new("test.event", Severity::Info, format!("event {i}")).user("alice"))
            .await
            .unwrap();
    }
}

async fn exec(store: &Store, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(store.pool())
        .await
        .unwrap();
}

async fn report(store: &Store) -> VerifyReport {
    verify(store, &key().verifying_key(), Witnessed::Nothing).await.unwrap()
}

/// A witness of its own for each call: these tests are about the chain and the
/// checkpoints in the database, not about what one node saw before.
fn witness() -> Witness {
    Witness::in_dir(&crate::store::test_dir("witness"))
}

#[tokio::test]
async fn a_whole_log_verifies_and_shows_its_unsigned_tail() {
    for (name, s) in test_backends().await {
        let r = report(&s).await;
        assert!(r.is_whole() && r.events == 0, "{name}: {r}");
        append(&s, 5).await;
        let c = sign_head(&s, &key(), "n1", &witness(), &mut None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.seq, 5, "{name}");
        assert!(
            sign_head(&s, &key(), "n1", &witness(), &mut None)
                .await
                .unwrap()
                .is_none(),
            "{name}: head did not move"
        );
        append(&s, 2).await;
        let r = report(&s).await;
        assert!(r.is_whole(), "{name}: {r}");
        assert_eq!((r.events, r.last_checkpoint_seq, r.unsigned_tail), (7, 5, 2), "{name}");
        assert!(
            r.to_string()
                .contains("2 events after the last signed checkpoint (unsigned tail)"),
            "{name}: {r}"
        );
        let rows = list(&s, &AuditFilter::default(), 3).await.unwrap();
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [Some(5), Some(6), Some(7)]
        );
    }
}

#[tokio::test]
async fn an_edited_field_is_named_by_seq() {
    for (name, s) in test_backends().await {
        append(&s, 6).await;
        sign_head(&s, &key(), "n1", &witness(), &mut None).await.unwrap();
        exec(&s, "UPDATE audit_events SET user_name = 'mallory' WHERE seq = 3").await;
        let r = report(&s).await;
        assert!(
            matches!(&r.problems[..], [Problem::Edited { seq: 3, .. }]),
            "{name}: {r}"
        );
        assert!(r.to_string().contains("event seq 3 (id "), "{name}: {r}");
    }
}

/// What a database writer can do: recompute every event's links and hash from the
/// first, and point the head at the last, so that the chain is whole again.
async fn rechain(s: &Store) {
    let rows = s.audit_chain_page(0, i64::MAX, 10_000).await.unwrap();
    let mut prev = chain::GENESIS;
    for r in &rows {
        let seq = r.seq.unwrap();
        let h = chain::event_hash(&chain::EventFields::of(r, seq), &prev);
        exec(
            s,
            &format!(
                "UPDATE audit_events SET prev_hash = '{}', hash = '{}' WHERE seq = {seq}",
                hex::encode(prev),
                hex::encode(h)
            ),
        )
        .await;
        prev = h;
    }
    let last = rows.last().and_then(|r| r.seq).unwrap_or(0);
    exec(
        s,
        &format!("UPDATE audit_head SET seq = {last}, hash = '{}'", hex::encode(prev)),
    )
    .await;
}

async fn checkpoint_seqs(s: &Store) -> Vec<i64> {
    s.audit_checkpoints().await.unwrap().iter().map(|c| c.seq).collect()
}

#[tokio::test]
async fn a_chain_rewritten_with_its_checkpoints_is_caught_by_the_witness() {
    for (name, s) in test_backends().await {
        let w = witness();
        append(&s, 6).await;
        assert_eq!(
            sign_head(&s, &key(), "n1", &w, &mut None).await.unwrap().map(|c| c.seq),
            Some(6)
        );
        append(&s, 2).await;
        assert_eq!(
            sign_head(&s, &key(), "n1", &w, &mut None).await.unwrap().map(|c| c.seq),
            Some(8)
        );
        assert!(matches!(w.read(), Witnessed::Checkpoint(c) if c.seq == 8), "{name}");
        // The writer drops the checkpoints from event 4 on, rewrites event 4 (say, a
        // hold that should not have been) and recomputes the chain after it.
        exec(&s, "DELETE FROM audit_checkpoints WHERE seq >= 4").await;
        exec(&s, "UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 4").await;
        rechain(&s).await;
        assert!(
            report(&s).await.is_whole(),
            "{name}: without the witness, nothing shows"
        );
        let r = verify(&s, &key().verifying_key(), w.read()).await.unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| matches!(p, Problem::Rewritten { seq: 8, .. }))
                && r.problems.contains(&Problem::CheckpointGone {
                    seq: 8,
                    signed_at: match w.read() {
                        Witnessed::Checkpoint(c) => c.signed_at,
                        other => panic!("{other:?}"),
                    },
                    witness: "this node's witness of the chain".into(),
                }),
            "{name}: {r}"
        );
        assert!(r.to_string().contains("event seq 8 was rewritten"), "{name}: {r}");
        // The gateway does not sign the rewritten head, now or after more events.
        append(&s, 1).await;
        let e = sign_head(&s, &key(), "n1", &w, &mut None).await.unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Refused(ps) if matches!(&ps[..], [Problem::Rewritten { seq: 8, what }, ..] if what.contains("when this node verified the chain up to it"))),
            "{name}: {e}"
        );
        assert_eq!(checkpoint_seqs(&s).await, Vec::<i64>::new(), "{name}");
        assert!(matches!(w.read(), Witnessed::Checkpoint(c) if c.seq == 8), "{name}");
    }
}

#[tokio::test]
async fn a_tail_deleted_with_its_checkpoints_is_named_by_the_witness() {
    for (name, s) in test_backends().await {
        let w = witness();
        append(&s, 6).await;
        sign_head(&s, &key(), "n1", &w, &mut None).await.unwrap();
        exec(&s, "DELETE FROM audit_events WHERE seq >= 5").await;
        exec(&s, "DELETE FROM audit_checkpoints").await;
        rechain(&s).await;
        assert!(report(&s).await.is_whole(), "{name}");
        let r = verify(&s, &key().verifying_key(), w.read()).await.unwrap();
        assert!(
            r.problems.iter().any(|p| matches!(p,
                Problem::DeletedTail { last_event: 4, expected: 6, evidence } if evidence == "this node's witness of the chain")),
            "{name}: {r}"
        );
        assert!(
            matches!(
                sign_head(&s, &key(), "n1", &w, &mut None).await,
                Err(CheckpointError::Refused(_))
            ),
            "{name}"
        );
        assert_eq!(checkpoint_seqs(&s).await, Vec::<i64>::new(), "{name}");
    }
}

#[tokio::test]
async fn a_witness_not_signed_by_the_audit_key_or_unreadable_stops_the_signing() {
    let s = crate::store::memory_store().await;
    let w = witness();
    append(&s, 3).await;
    sign_head(&s, &key(), "n1", &w, &mut None).await.unwrap();
    append(&s, 1).await;
    let good = std::fs::read_to_string(w.path()).unwrap();
    let rows = s.audit_chain_page(0, 4, 4).await.unwrap();
    // Moved forward by hand to event 4's hash: the signature is for event 3's.
    let moved = good
        .replace(" 3 ", " 4 ")
        .replace(rows[2].hash.as_deref().unwrap(), rows[3].hash.as_deref().unwrap());
    for (bad, says) in [
        (moved, "not signed by the audit key"),
        ("junk\n".to_owned(), "not a witness line"),
    ] {
        std::fs::write(w.path(), &bad).unwrap();
        let e = sign_head(&s, &key(), "n1", &w, &mut None).await.unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Refused(ps) if matches!(&ps[..], [Problem::Witness { what, .. }] if what.contains(says))),
            "{bad:?}: {e}"
        );
        assert!(e.to_string().contains("witness of the chain is unusable"), "{e}");
    }
    assert_eq!(checkpoint_seqs(&s).await, [3]);
    // An operator who removes it has the next signing walk the chain from its start.
    std::fs::remove_file(w.path()).unwrap();
    assert_eq!(
        sign_head(&s, &key(), "n1", &w, &mut None).await.unwrap().map(|c| c.seq),
        Some(4)
    );
    assert!(matches!(w.read(), Witnessed::Checkpoint(c) if c.seq == 4));
}

/// An auditor checks the chain against copies of other nodes' witnesses (or this
/// node's, kept aside after a restore): a rewrite behind any of them is named with the
/// file it was caught by; a copy that is not a witness line is reported, never ignored.
#[tokio::test]
async fn copies_of_other_witnesses_catch_a_rewrite_behind_them() {
    let s = crate::store::memory_store().await;
    let (w1, w2) = (witness(), witness());
    append(&s, 3).await;
    sign_head(&s, &key(), "n1", &w1, &mut None).await.unwrap();
    append(&s, 2).await;
    sign_head(&s, &key(), "n2", &w2, &mut None).await.unwrap();
    let copy = |name: &str, w: &Witness| copy_from_text(name, &std::fs::read_to_string(w.path()).unwrap());
    let check = |copies: Vec<(String, Witnessed)>| {
        let s = s.clone();
        async move {
            verify_with_copies(&s, &key().verifying_key(), Witnessed::Nothing, copies)
                .await
                .unwrap()
        }
    };
    let r = check(vec![copy("n1.witness", &w1), copy("n2.witness", &w2)]).await;
    assert!(r.is_whole(), "{r}");
    // Rewritten after n1's witness and with its checkpoints gone: only n2's copy sees it.
    exec(&s, "DELETE FROM audit_checkpoints").await;
    exec(&s, "UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 4").await;
    rechain(&s).await;
    let r = check(vec![copy("n1.witness", &w1)]).await;
    assert!(
        !r.problems.is_empty()
            && r.problems.iter().all(|p| matches!(p, Problem::CheckpointGone { seq: 3, witness, .. } if witness == "the witness in n1.witness")),
        "{r}"
    );
    let r = check(vec![copy("n2.witness", &w2)]).await;
    assert!(
        r.problems
            .iter()
            .any(|p| matches!(p, Problem::Rewritten { seq: 5, what }
            if what.contains("when the node whose witness is in n2.witness verified the chain up to it"))),
        "{r}"
    );
    // Bad copies: junk, too long, a name with control characters.
    let r = check(vec![
        copy_from_text("junk\u{1b}[2J", "junk\n"),
        copy_from_text("long", &"x".repeat(600)),
    ])
    .await;
    let text = r.to_string();
    assert!(
        text.contains("the witness in junk[2J is unusable: junk[2J is not a witness line"),
        "{text}"
    );
    assert!(text.contains("long is longer than a witness line"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
}

#[tokio::test]
async fn the_witness_moves_to_a_head_another_node_signed() {
    let s = crate::store::memory_store().await;
    let (w1, w2) = (witness(), witness());
    append(&s, 3).await;
    assert!(sign_head(&s, &key(), "n1", &w1, &mut None).await.unwrap().is_some());
    assert!(
        sign_head(&s, &key(), "n2", &w2, &mut None).await.unwrap().is_none(),
        "signed once"
    );
    assert!(matches!(w2.read(), Witnessed::Checkpoint(c) if c.seq == 3));
    assert_eq!(checkpoint_seqs(&s).await, [3]);
}

#[tokio::test]
async fn a_lasting_refusal_is_alerted_once_and_a_bad_row_does_not_stop_the_signing() {
    let s = crate::store::memory_store().await;
    let signer = Checkpointer::new(witness());
    append(&s, 3).await;
    signer.sign(&s, &key(), "n1").await;
    // An edited event stays in every verification; later events are still signed.
    append(&s, 1).await;
    exec(&s, "UPDATE audit_events SET detail = 'by nobody' WHERE seq = 4").await;
    append(&s, 1).await;
    signer.sign(&s, &key(), "n1").await;
    assert_eq!(checkpoint_seqs(&s).await, [3, 5]);
    // A rewrite of signed events behind the witness: refused, alerted once.
    exec(&s, "DELETE FROM audit_checkpoints").await;
    exec(&s, "UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 2").await;
    rechain(&s).await;
    for _ in 0..3 {
        append(&s, 1).await;
        assert_eq!(signer.sign(&s, &key(), "n1").await, Signing::Failed);
    }
    // The periodic signer backs off rather than walking the chain again at every tick.
    assert_eq!(signer.tick(&s, &key(), "n1").await, Signing::Deferred);
    let alerts = s.audit_events(Some("audit.checkpoint_refused"), 10).await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].severity, "alert");
    assert!(
        alerts[0].detail.contains("event seq 5 was rewritten"),
        "{}",
        alerts[0].detail
    );
    assert_eq!(checkpoint_seqs(&s).await, Vec::<i64>::new());
}

#[test]
fn a_failing_signer_waits_longer_each_time_up_to_five_minutes() {
    let mut waits = vec![];
    let mut d = None;
    for _ in 0..8 {
        let w = retry_after(d);
        waits.push(w.as_secs());
        d = Some(w);
    }
    assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(RETRY_AT_MOST.as_secs(), 300);
}

#[tokio::test]
async fn a_signer_that_succeeds_again_signs_at_every_tick() {
    let s = crate::store::memory_store().await;
    let signer = Checkpointer::new(witness());
    append(&s, 2).await;
    assert_eq!(signer.tick(&s, &key(), "n1").await, Signing::Done);
    let good = std::fs::read_to_string(signer.witness_path()).unwrap();
    std::fs::write(signer.witness_path(), "junk\n").unwrap();
    append(&s, 1).await;
    assert_eq!(signer.tick(&s, &key(), "n1").await, Signing::Failed);
    assert_eq!(signer.tick(&s, &key(), "n1").await, Signing::Deferred);
    // The cause undone (the operator put the witness back): an explicit signing (as at
    // shutdown) goes through the back-off and ends it.
    std::fs::write(signer.witness_path(), good).unwrap();
    assert_eq!(signer.sign(&s, &key(), "n1").await, Signing::Done);
    append(&s, 1).await;
    assert_eq!(signer.tick(&s, &key(), "n1").await, Signing::Done);
    // (Seq 4 is the refusal's alert.)
    assert_eq!(checkpoint_seqs(&s).await, [2, 4, 5]);
}

#[tokio::test]
async fn what_a_refused_walk_saw_cannot_be_rewritten_once_the_refusal_ends() {
    let s = crate::store::memory_store().await;
    let (w, mut seen) = (witness(), None);
    append(&s, 3).await;
    assert!(sign_head(&s, &key(), "n1", &w, &mut seen).await.unwrap().is_some());
    let good = std::fs::read_to_string(w.path()).unwrap();
    std::fs::write(w.path(), "junk\n").unwrap();
    append(&s, 2).await;
    assert!(sign_head(&s, &key(), "n1", &w, &mut seen).await.is_err());
    assert_eq!(seen.as_ref().map(|a| a.seq), Some(5));
    // Meanwhile the events nobody signed are rewritten, and the refusal's cause undone.
    exec(&s, "UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 5").await;
    rechain(&s).await;
    std::fs::write(w.path(), good).unwrap();
    let e = sign_head(&s, &key(), "n1", &w, &mut seen).await.unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Refused(ps) if matches!(&ps[..], [Problem::Rewritten { seq: 5, what }] if what.contains("walked the chain last"))),
        "{e}"
    );
    assert_eq!(checkpoint_seqs(&s).await, [3]);
}

/// The same across a restart: the signer keeps the last event it walked beside its
/// witness, so a new process still refuses a rewrite of what the old one walked.
#[tokio::test]
async fn what_a_refused_walk_saw_is_kept_across_a_restart() {
    let s = crate::store::memory_store().await;
    let w = witness();
    let signer = Checkpointer::new(w.clone());
    append(&s, 3).await;
    assert_eq!(signer.sign(&s, &key(), "n1").await, Signing::Done);
    let good = std::fs::read_to_string(w.path()).unwrap();
    std::fs::write(w.path(), "junk\n").unwrap();
    append(&s, 2).await;
    assert_eq!(signer.sign(&s, &key(), "n1").await, Signing::Failed);
    // (Seq 6 is the refusal's alert, written after the walk.)
    assert_eq!(w.read_seen().unwrap().map(|a| a.seq), Some(5));
    drop(signer);
    exec(&s, "UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 5").await;
    rechain(&s).await;
    std::fs::write(w.path(), good).unwrap();
    let restarted = Checkpointer::new(w.clone());
    assert_eq!(restarted.sign(&s, &key(), "n1").await, Signing::Failed);
    let alerts = s.audit_events(Some("audit.checkpoint_refused"), 10).await.unwrap();
    assert!(
        alerts[0].detail.contains("event seq 5 was rewritten") && alerts[0].detail.contains("walked the chain last"),
        "{alerts:?}"
    );
    assert_eq!(checkpoint_seqs(&s).await, [3]);
}

#[test]
fn the_last_event_walked_reads_back_and_a_bad_file_is_an_error() {
    let w = witness();
    assert_eq!(w.read_seen(), Ok(None));
    let a = Anchor {
        seq: 12,
        hash: "ab".repeat(32),
    };
    w.record_seen(&a).unwrap();
    assert_eq!(w.read_seen(), Ok(Some(a)));
    let seen = w.path().with_file_name(witness::SEEN_FILE);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&seen).unwrap().permissions().mode() & 0o777, 0o600);
    for bad in [
        "",
        "herse-audit-seen-v1 12\n",
        "herse-audit-seen-v1 x abab\n",
        "herse-audit-seen-v2 12 abababababababababababababababababababababababababababababababab\n",
        "herse-audit-seen-v1 12 abababababababababababababababababababababababababababababababab",
    ] {
        std::fs::write(&seen, bad).unwrap();
        assert!(w.read_seen().is_err(), "{bad:?}");
    }
    // A signer whose file is bad still starts (loudly), guarding with its witness.
    let _ = Checkpointer::new(w);
}

#[tokio::test]
async fn an_empty_log_is_not_a_rewritten_one() {
    let s = crate::store::memory_store().await;
    let (w, mut seen) = (witness(), None);
    for _ in 0..2 {
        assert!(sign_head(&s, &key(), "n1", &w, &mut seen).await.unwrap().is_none());
    }
    append(&s, 1).await;
    assert!(sign_head(&s, &key(), "n1", &w, &mut seen).await.unwrap().is_some());
}

#[tokio::test]
async fn a_row_planted_in_this_nodes_place_is_overwritten() {
    let s = crate::store::memory_store().await;
    append(&s, 3).await;
    let (seq, hash) = s.audit_head().await.unwrap();
    exec(
        &s,
        &format!(
            "INSERT INTO audit_checkpoints (seq, hash, signed_at, node, signature) VALUES ({seq}, '{hash}', 1, 'n1', '{}')",
            "00".repeat(64)
        ),
    )
    .await;
    let c = sign_head(&s, &key(), "n1", &witness(), &mut None).await.unwrap();
    assert_eq!(c.map(|c| c.seq), Some(3));
    let r = report(&s).await;
    assert!(r.is_whole() && r.unsigned_tail == 0, "{r}");
}

#[tokio::test]
async fn a_rewritten_chain_is_caught_by_the_checkpoint() {
    let s = crate::store::memory_store().await;
    append(&s, 4).await;
    sign_head(&s, &key(), "n1", &witness(), &mut None).await.unwrap();
    // Rewrite event 2 and recompute every hash after it, head included: only the
    // signature can tell.
    exec(&s, "UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 2").await;
    rechain(&s).await;
    let r = report(&s).await;
    assert!(
        matches!(&r.problems[..], [Problem::CheckpointMismatch { seq: 4, .. }]),
        "{r}"
    );
}

#[tokio::test]
async fn a_deleted_middle_event_is_a_named_gap() {
    for (name, s) in test_backends().await {
        append(&s, 6).await;
        exec(&s, "DELETE FROM audit_events WHERE seq = 3 OR seq = 4").await;
        let r = report(&s).await;
        assert_eq!(r.problems, [Problem::Missing { from: 3, to: 4 }], "{name}: {r}");
        assert!(r.to_string().contains("events seq 3 to 4 are missing"), "{name}: {r}");
    }
}

#[tokio::test]
async fn a_deleted_tail_is_seen_through_the_head_or_a_checkpoint() {
    for (name, s) in test_backends().await {
        append(&s, 6).await;
        sign_head(&s, &key(), "n1", &witness(), &mut None).await.unwrap();
        exec(&s, "DELETE FROM audit_events WHERE seq >= 5").await;
        let r = report(&s).await;
        assert!(
            r.problems.iter().any(|p| matches!(
                p,
                Problem::DeletedTail {
                    last_event: 4,
                    expected: 6,
                    ..
                }
            )),
            "{name}: {r}"
        );
        // The head rewound too: the signed checkpoint still knows.
        let (_, h4) = {
            let rows = s.audit_chain_page(3, 4, 1).await.unwrap();
            (4, rows[0].hash.clone().unwrap())
        };
        exec(&s, &format!("UPDATE audit_head SET seq = 4, hash = '{h4}'")).await;
        let r = report(&s).await;
        assert!(
            matches!(&r.problems[..], [Problem::DeletedTail { last_event: 4, expected: 6, evidence }] if evidence == "a signed checkpoint"),
            "{name}: {r}"
        );
    }
}

#[tokio::test]
async fn a_bad_checkpoint_signature_is_detected() {
    let s = crate::store::memory_store().await;
    append(&s, 3).await;
    sign_head(&s, &key(), "n1", &witness(), &mut None).await.unwrap();
    let r = verify(
        &s,
        &SigningKey::from_bytes(&[8; 32]).verifying_key(),
        Witnessed::Nothing,
    )
    .await
    .unwrap();
    assert!(matches!(&r.problems[..], [Problem::BadSignature { seq: 3, .. }]), "{r}");
    exec(&s, "UPDATE audit_checkpoints SET signed_at = signed_at + 1").await;
    let r = report(&s).await;
    assert!(matches!(&r.problems[..], [Problem::BadSignature { seq: 3, .. }]), "{r}");
    assert_eq!(r.unsigned_tail, 3, "an invalid checkpoint signs nothing");
}

#[tokio::test]
async fn a_forged_checkpoint_does_not_stop_the_signing() {
    let s = crate::store::memory_store().await;
    append(&s, 3).await;
    // Someone with write access plants a checkpoint for the head (and one far ahead)
    // with garbage signatures, from another node name.
    let (seq, hash) = s.audit_head().await.unwrap();
    for (at, node) in [(seq, "evil"), (seq + 1000, "evil")] {
        exec(
            &s,
            &format!(
                "INSERT INTO audit_checkpoints (seq, hash, signed_at, node, signature) \
                 VALUES ({at}, '{hash}', 1, '{node}', '{}')",
                "00".repeat(64)
            ),
        )
        .await;
    }
    let c = sign_head(&s, &key(), "n1", &witness(), &mut None).await.unwrap();
    assert_eq!(c.map(|c| c.seq), Some(3), "the gateway still signs its head");
    assert!(
        sign_head(&s, &key(), "n1", &witness(), &mut None)
            .await
            .unwrap()
            .is_none(),
        "once"
    );
}

#[tokio::test]
async fn rows_from_before_the_chain_are_chained_in_time_order() {
    let s = crate::store::memory_store().await;
    append(&s, 2).await;
    for (id, at) in [("b", 20), ("a", 10)] {
        exec(
            &s,
            &format!(
                "INSERT INTO audit_events (id, at, kind, severity, detail) VALUES ('{id}', {at}, 'legacy', 'info', 'old')"
            ),
        )
        .await;
    }
    assert_eq!(report(&s).await.problems, [Problem::Unchained { count: 2 }]);
    assert_eq!(s.chain_unchained_audit().await.unwrap(), 2);
    append(&s, 1).await;
    let r = report(&s).await;
    assert!(r.is_whole() && r.events == 5, "{r}");
    let ids: Vec<_> = s
        .audit_chain_page(2, 4, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[tokio::test]
async fn filters_select_by_time_user_and_kind() {
    for (name, s) in test_backends().await {
        append(&s, 3).await;
        s.audit(&AuditEvent::new("other.kind", Severity::Alert, "x").user("bob"))
            .await
            .unwrap();
        let f = |user: Option<&str>, kind: Option<&str>| AuditFilter {
            user: user.map(str::to_owned),
            kind: kind.map(str::to_owned),
            ..AuditFilter::default()
        };
        assert_eq!(list(&s, &f(Some("bob"), None), 10).await.unwrap().len(), 1, "{name}");
        assert_eq!(
            list(&s, &f(None, Some("test.event")), 10).await.unwrap().len(),
            3,
            "{name}"
        );
        let all = list(&s, &AuditFilter::default(), 10).await.unwrap();
        let t = all[2].at;
        let since = AuditFilter {
            since: Some(t),
            ..AuditFilter::default()
        };
        assert!(list(&s, &since, 10).await.unwrap().iter().all(|r| r.at >= t), "{name}");
        let until = AuditFilter {
            until: Some(t),
            ..AuditFilter::default()
        };
        assert!(list(&s, &until, 10).await.unwrap().iter().all(|r| r.at < t), "{name}");
        let next = after(&s, &AuditFilter::default(), 2, 10).await.unwrap();
        assert_eq!(next.first().and_then(|r| r.seq), Some(3), "{name}");
    }
}

#[test]
fn times_are_rfc3339_or_durations_ago() {
    let now = UNIX_EPOCH + Duration::from_secs(10_000);
    assert_eq!(parse_time("1h", now).unwrap(), 6_400_000_000);
    assert_eq!(parse_time("1970-01-01T00:00:01Z", now).unwrap(), 1_000_000);
    assert!(parse_time("yesterday", now).is_err());
    assert!(parse_time("1000h", now).is_err());
}

#[test]
fn public_keys_come_as_hex_or_a_file() {
    let hexkey = hex::encode(key().verifying_key().as_bytes());
    assert_eq!(public_key_from_arg(&hexkey).unwrap(), key().verifying_key());
    let f = std::env::temp_dir().join(format!("herse-audit-key-{}", std::process::id()));
    std::fs::write(&f, format!("{hexkey}\n")).unwrap();
    assert_eq!(public_key_from_arg(f.to_str().unwrap()).unwrap(), key().verifying_key());
    std::fs::remove_file(&f).unwrap();
    assert!(public_key_from_arg("nonsense").is_err());
}

/// Appends from many tasks, on several connections and (SQLite) two stores opened on one
/// file as two processes would: every event gets its own seq and the chain stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_keep_one_chain() {
    let dir = std::env::temp_dir().join(format!("herse-audit-conc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("h.db").display());
    let a = Store::connect(&url, true).await.unwrap();
    a.migrate().await.unwrap();
    let b = Store::connect(&url, false).await.unwrap();
    let mut stores = vec![("sqlite (two stores)", a, Some(b))];
    for (name, s) in test_backends().await.into_iter().filter(|(n, _)| *n == "postgres") {
        stores.push((name, s, None));
    }
    for (name, s, other) in stores {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let st = if t % 2 == 1 {
                other.clone().unwrap_or_else(|| s.clone())
            } else {
                s.clone()
            };
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    st.audit(&AuditEvent::new("test.concurrent", Severity::Info, format!("{t}/{i}")))
                        .await
                        .unwrap();
                }
            }));
        }
        let signer = {
            let s = s.clone();
            tokio::spawn(async move {
                let w = witness();
                for _ in 0..5 {
                    sign_head(&s, &key(), "n1", &w, &mut None).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        for t in tasks {
            t.await.unwrap();
        }
        signer.await.unwrap();
        let r = report(&s).await;
        assert!(r.is_whole(), "{name}: {r}");
        assert_eq!((r.events, r.head_seq), (200, 200), "{name}");
        let details: std::collections::HashSet<_> = s
            .audit_chain_page(0, 200, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.detail)
            .collect();
        assert_eq!(details.len(), 200, "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
