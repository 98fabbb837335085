//! Verifying the audit log with nothing but the audit public key: the chain from seq 1,
//! every checkpoint's signature, and that the head and the last checkpoint are on it.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;

use super::chain::{self, EventFields, GENESIS};
use super::witness::{WitnessOf, Witnessed};
use crate::store::{AuditCheckpoint, AuditRow, Store, StoreError};

/// Events read per query while walking the chain.
const PAGE: i64 = 1000;

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The event's columns no longer hash to its stored `hash` (or that is malformed).
    Edited { seq: i64, id: String, what: String },
    /// The event's `prev_hash` is not the `hash` of the event before it.
    BrokenLink { seq: i64, id: String, what: String },
    /// Events `from..=to` are gone.
    Missing { from: i64, to: i64 },
    /// Rows without a place in the chain (written outside it).
    Unchained { count: i64 },
    /// A checkpoint whose signature the public key does not verify.
    BadSignature { seq: i64, node: String, signed_at: i64 },
    /// A validly signed checkpoint whose hash is not the chain's at its `seq`.
    CheckpointMismatch { seq: i64, node: String, what: String },
    /// Events at the end were removed: the head or a checkpoint names a later `seq`.
    DeletedTail {
        last_event: i64,
        expected: i64,
        evidence: String,
    },
    /// The head row's hash is not the last event's.
    HeadMismatch { seq: i64, what: String },
    /// An event verified before (this node's witness, or the point a walk continues
    /// from) no longer has the hash it had: the chain was rewritten from there on.
    Rewritten { seq: i64, what: String },
    /// A witness of the chain (this node's `data_dir/audit_witness`, or a copy given to
    /// the verification) cannot be used.
    Witness {
        what: String,
        /// Which witness.
        #[serde(default = "own_witness")]
        witness: String,
    },
    /// The checkpoint a witness names is no longer in the database.
    CheckpointGone {
        seq: i64,
        signed_at: i64,
        /// Which witness.
        #[serde(default = "own_witness")]
        witness: String,
    },
}

fn own_witness() -> String {
    WitnessOf::ThisNode.name()
}

impl Problem {
    /// Whether a node must not sign a head over this: events already signed or
    /// witnessed changed or went, or the node cannot tell that the chain extends what it
    /// verified before. A signature then would vouch for the rewrite, and once the
    /// evidence beside it is deleted, nothing would show it. The other problems stay in
    /// every verification whatever is signed after them (an edited row no longer hashes
    /// right, a gap stays a gap), so the signing goes on: one bad row must not leave every
    /// later event unsigned.
    pub fn blocks_signing(&self) -> bool {
        matches!(
            self,
            Problem::Rewritten { .. }
                | Problem::CheckpointMismatch { .. }
                | Problem::DeletedTail { .. }
                | Problem::Witness { .. }
        )
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Edited { seq, id, what } => write!(f, "event seq {seq} (id {id}) was edited: {what}"),
            Problem::BrokenLink { seq, id, what } => write!(f, "event seq {seq} (id {id}): broken link: {what}"),
            Problem::Missing { from, to } if from == to => write!(f, "event seq {from} is missing"),
            Problem::Missing { from, to } => write!(f, "events seq {from} to {to} are missing ({})", to - from + 1),
            Problem::Unchained { count } => write!(f, "{count} event(s) are outside the chain (no seq)"),
            Problem::BadSignature { seq, node, signed_at } => write!(
                f,
                "checkpoint at seq {seq} (node {node}, signed at {}) has a bad signature",
                crate::timefmt::rfc3339(*signed_at)
            ),
            Problem::CheckpointMismatch { seq, node, what } => {
                write!(
                    f,
                    "checkpoint at seq {seq} (node {node}) does not match the chain: {what}"
                )
            }
            Problem::DeletedTail {
                last_event,
                expected,
                evidence,
            } => write!(
                f,
                "events after seq {last_event} were deleted: {evidence} names seq {expected}"
            ),
            Problem::HeadMismatch { seq, what } => write!(f, "the head (seq {seq}) does not match: {what}"),
            Problem::Rewritten { seq, what } => write!(f, "event seq {seq} was rewritten: {what}"),
            Problem::Witness { what, witness } => write!(f, "{witness} is unusable: {what}"),
            Problem::CheckpointGone {
                seq,
                signed_at,
                witness,
            } => write!(
                f,
                "the checkpoint at seq {seq} signed at {}, which {witness} names, is gone from the database",
                crate::timefmt::rfc3339(*signed_at)
            ),
        }
    }
}

/// The result of a verification. Whole when `problems` is empty.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VerifyReport {
    /// Events walked (those up to the head as it was when verification began).
    pub events: i64,
    /// The last event's `seq` (0 when none).
    pub last_seq: i64,
    /// The head row's `seq`.
    pub head_seq: i64,
    /// Checkpoints with a valid signature / all checkpoints.
    pub valid_checkpoints: usize,
    pub checkpoints: usize,
    /// The highest `seq` a valid checkpoint signs (0 when none).
    pub last_checkpoint_seq: i64,
    /// Events after the last valid checkpoint: chained but not signed yet.
    pub unsigned_tail: i64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_whole(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} events (seq 1 to {}), head at seq {}",
            self.events, self.last_seq, self.head_seq
        )?;
        writeln!(
            f,
            "{} of {} checkpoints validly signed, the last at seq {}",
            self.valid_checkpoints, self.checkpoints, self.last_checkpoint_seq
        )?;
        if self.unsigned_tail > 0 {
            writeln!(
                f,
                "{} events after the last signed checkpoint (unsigned tail)",
                self.unsigned_tail
            )?;
        }
        if self.is_whole() {
            write!(f, "audit log is whole")
        } else {
            writeln!(f, "audit log is NOT whole: {} problem(s)", self.problems.len())?;
            for (i, p) in self.problems.iter().enumerate() {
                if i > 0 {
                    writeln!(f)?;
                }
                write!(f, "  - {p}")?;
            }
            Ok(())
        }
    }
}

/// One verification at a time per process.
static VERIFYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Wait for this process's verification turn.
async fn turn() -> Result<tokio::sync::SemaphorePermit<'static>, StoreError> {
    VERIFYING
        .acquire()
        .await
        .map_err(|_| StoreError::Refused("audit log verification is shutting down".into()))
}

/// Verify the whole log against `key` (the audit public key; take it from somewhere
/// other than the database being verified when the database itself is in doubt), and
/// that it still holds the event this node's `witness` names, as it was.
///
/// A long log is seconds of CPU (every event hashed, every checkpoint's signature
/// checked: 8,640 checkpoints a day at the default interval). So verifications take
/// turns, and each runs on a blocking thread, never on the runtime's workers that carry
/// the tunnel, the listeners and the cluster heartbeat.
pub async fn verify(store: &Store, key: &VerifyingKey, witness: Witnessed) -> Result<VerifyReport, StoreError> {
    verify_with_copies(store, key, witness, Vec::new()).await
}

/// [`verify`], and against copies of other witnesses too (other nodes' files, or this
/// node's kept aside after a restore), each with the name the caller gave it: every one
/// must still find the event it names, with its hash, and its checkpoint.
pub async fn verify_with_copies(
    store: &Store,
    key: &VerifyingKey,
    witness: Witnessed,
    copies: Vec<(String, Witnessed)>,
) -> Result<VerifyReport, StoreError> {
    let mut witnesses = vec![(WitnessOf::ThisNode, witness)];
    witnesses.extend(copies.into_iter().map(|(name, w)| (WitnessOf::Copy(name), w)));
    let _turn = turn().await?;
    Ok(walk_witnessed(store, key, Anchor::genesis(), witnesses, |_| {})
        .await?
        .report)
}

/// A point of the chain: an event's `seq` and its stored hash (seq 0: before the first
/// event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

impl Anchor {
    pub fn genesis() -> Anchor {
        Anchor {
            seq: 0,
            hash: hex::encode(GENESIS),
        }
    }
}

impl Default for Anchor {
    fn default() -> Anchor {
        Anchor::genesis()
    }
}

/// A verification of the chain after an anchor.
#[derive(Debug)]
pub struct Continued {
    pub report: VerifyReport,
    /// The last event a validly signed checkpoint vouches for (the anchor given when no
    /// new checkpoint does): where the next verification may start, when the report is
    /// whole.
    pub signed: Anchor,
    /// The last event walked.
    pub last: Anchor,
}

/// Verify the chain after `from`, taking the events up to `from` as verified already (a
/// walk made earlier: `from` itself must still have its hash), check it against this
/// node's `witness`, and hand every event walked to `visit`, in `seq` order: so a reader
/// of the log that must trust it (retention, for holds; the checkpoint signer) pays for
/// each event once, not for the whole log every time. Only the checkpoints after `from`
/// are read; the report's counts are of the events after it. `verify` is this from the
/// genesis.
pub async fn verify_from(
    store: &Store,
    key: &VerifyingKey,
    from: Anchor,
    witness: Witnessed,
    visit: impl FnMut(&AuditRow) + Send + 'static,
) -> Result<Continued, StoreError> {
    let _turn = turn().await?;
    walk_now(store, key, from, witness, visit).await
}

/// [`verify_from`] without waiting for its turn: for the checkpoint signer, whose walks
/// (from its witness, 10 s of events) must not queue behind a full verification.
pub(crate) async fn walk_now(
    store: &Store,
    key: &VerifyingKey,
    from: Anchor,
    witness: Witnessed,
    visit: impl FnMut(&AuditRow) + Send + 'static,
) -> Result<Continued, StoreError> {
    walk_witnessed(store, key, from, vec![(WitnessOf::ThisNode, witness)], visit).await
}

async fn walk_witnessed(
    store: &Store,
    key: &VerifyingKey,
    from: Anchor,
    witnesses: Vec<(WitnessOf, Witnessed)>,
    visit: impl FnMut(&AuditRow) + Send + 'static,
) -> Result<Continued, StoreError> {
    let (store, key) = (store.clone(), *key);
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || rt.block_on(verify_here(&store, &key, from, witnesses, visit)))
        .await
        .map_err(|e| StoreError::Refused(format!("audit log verification stopped: {e}")))?
}

async fn verify_here(
    store: &Store,
    key: &VerifyingKey,
    from: Anchor,
    witnesses: Vec<(WitnessOf, Witnessed)>,
    mut visit: impl FnMut(&AuditRow),
) -> Result<Continued, StoreError> {
    // Checkpoints, then the head, then the events up to that head: each read sees at
    // least what the one before it saw, so a concurrent append is never a "deleted tail".
    let checkpoints = if from.seq == 0 {
        store.audit_checkpoints().await?
    } else {
        store.audit_checkpoints_after(from.seq).await?
    };
    let (head_seq, head_hash) = store.audit_head().await?;
    let mut problems = Vec::new();
    // The witnesses whose checkpoint the audit key signed, each checked against the
    // chain: the event it names must still have its hash, and its checkpoint be kept.
    let mut witnessed: Vec<(WitnessOf, AuditCheckpoint)> = Vec::new();
    for (of, said) in witnesses {
        let c = match said {
            Witnessed::Nothing => continue,
            Witnessed::Unusable(what) => {
                problems.push(Problem::Witness {
                    what,
                    witness: of.name(),
                });
                continue;
            }
            Witnessed::Checkpoint(c) if !signature_ok(key, &c) => {
                problems.push(Problem::Witness {
                    what: format!("its checkpoint at seq {} is not signed by the audit key", c.seq),
                    witness: of.name(),
                });
                continue;
            }
            Witnessed::Checkpoint(c) => c,
        };
        // A witness past the last event is a deleted tail, reported below.
        if c.seq <= head_seq {
            let what = format!(
                "{} verified the chain up to it at {}",
                of.verifier(),
                crate::timefmt::rfc3339(c.signed_at)
            );
            if let Some(p) = still_there(store, c.seq, &c.hash, &what).await? {
                problems.push(p);
            }
        }
        let kept = store.audit_checkpoints_at(c.seq).await?;
        if !kept
            .iter()
            .any(|k| k.hash == c.hash && k.signed_at == c.signed_at && k.signature == c.signature)
        {
            problems.push(Problem::CheckpointGone {
                seq: c.seq,
                signed_at: c.signed_at,
                witness: of.name(),
            });
        }
        witnessed.push((of, c));
    }
    // The point the walk starts from (unless it is this node's witness, checked just
    // above).
    let from_is_witness = witnessed
        .iter()
        .any(|(of, c)| matches!(of, WitnessOf::ThisNode) && c.seq == from.seq && c.hash == from.hash);
    if from.seq > head_seq {
        // Nothing to walk, and the walk would take the point for the last event.
        problems.push(Problem::DeletedTail {
            last_event: head_seq,
            expected: from.seq,
            evidence: if from_is_witness {
                WitnessOf::ThisNode.name()
            } else {
                "the point verified before".into()
            },
        });
    } else if from.seq > 0 && !from_is_witness {
        if let Some(p) = still_there(store, from.seq, &from.hash, "verified before").await? {
            problems.push(p);
        }
    }

    let mut valid: BTreeMap<i64, Vec<&AuditCheckpoint>> = BTreeMap::new();
    for c in &checkpoints {
        if signature_ok(key, c) {
            valid.entry(c.seq).or_default().push(c);
        } else {
            problems.push(Problem::BadSignature {
                seq: c.seq,
                node: c.node.clone(),
                signed_at: c.signed_at,
            });
        }
    }

    let from_seq = from.seq;
    let mut walk = Walk {
        last_seq: from.seq,
        last_hash: (from.seq > 0).then(|| from.hash.clone()),
        signed: from,
        ..Walk::default()
    };
    loop {
        let page = store.audit_chain_page(walk.last_seq, head_seq, PAGE).await?;
        for r in &page {
            walk.step(r, &valid, &mut problems);
            visit(r);
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }

    let unchained = store.unchained_audit_count().await?;
    if unchained > 0 {
        problems.push(Problem::Unchained { count: unchained });
    }
    // Checkpoints the walk never met: beyond the last event (a deleted tail) or in a gap.
    let last_checkpoint_seq = valid.keys().next_back().copied().unwrap_or(0);
    for (seq, cs) in valid.range(..=walk.last_seq) {
        if !walk.seen_checkpoints.contains(seq) {
            for c in cs {
                problems.push(Problem::CheckpointMismatch {
                    seq: *seq,
                    node: c.node.clone(),
                    what: format!("event seq {seq} is missing"),
                });
            }
        }
    }
    let mut expected = (head_seq, "the head row".to_owned());
    if last_checkpoint_seq > expected.0 {
        expected = (last_checkpoint_seq, "a signed checkpoint".to_owned());
    }
    for (of, c) in &witnessed {
        if c.seq > expected.0 {
            expected = (c.seq, of.name());
        }
    }
    let (expected, evidence) = expected;
    if expected > walk.last_seq {
        problems.push(Problem::DeletedTail {
            last_event: walk.last_seq,
            expected,
            evidence,
        });
    } else if head_seq > 0 && from_seq <= head_seq && walk.last_hash.as_deref() != Some(head_hash.as_str()) {
        problems.push(Problem::HeadMismatch {
            seq: head_seq,
            what: format!("head hash {head_hash} is not the last event's"),
        });
    }
    let report = VerifyReport {
        events: walk.events,
        last_seq: walk.last_seq,
        head_seq,
        valid_checkpoints: valid.values().map(Vec::len).sum(),
        checkpoints: checkpoints.len(),
        last_checkpoint_seq,
        unsigned_tail: (walk.last_seq - last_checkpoint_seq).max(0),
        problems,
    };
    let last = match walk.last_hash {
        Some(hash) => Anchor {
            seq: walk.last_seq,
            hash,
        },
        None => Anchor::genesis(),
    };
    Ok(Continued {
        report,
        signed: walk.signed,
        last,
    })
}

/// Whether event `seq` still has `hash`; the problem when not. (`seq` is at most the
/// head: one past it is a deleted tail.)
pub(crate) async fn still_there(
    store: &Store,
    seq: i64,
    hash: &str,
    when: &str,
) -> Result<Option<Problem>, StoreError> {
    let row = store.audit_chain_page(seq - 1, seq, 1).await?;
    Ok(match row.first().and_then(|r| r.hash.as_deref()) {
        Some(h) if h == hash => None,
        Some(h) => Some(Problem::Rewritten {
            seq,
            what: format!("its hash was {hash} when {when}, it is now {h}"),
        }),
        None => Some(Problem::Rewritten {
            seq,
            what: format!("it had hash {hash} when {when}, and it is gone"),
        }),
    })
}

pub(crate) fn signature_ok(key: &VerifyingKey, c: &AuditCheckpoint) -> bool {
    let Some(hash) = chain::parse_hash(&c.hash) else {
        return false;
    };
    let Some(sig) = hex::decode(&c.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return false;
    };
    key.verify_strict(
        &chain::checkpoint_message(c.seq, &hash, c.signed_at),
        &Signature::from_bytes(&sig),
    )
    .is_ok()
}

/// The state of a walk along the chain.
#[derive(Default)]
struct Walk {
    events: i64,
    last_seq: i64,
    /// The stored hash of the last event (so one edit is reported once, not for every
    /// event after it).
    last_hash: Option<String>,
    seen_checkpoints: std::collections::HashSet<i64>,
    /// The last event a valid checkpoint signs, whose stored hash it names.
    signed: Anchor,
}

impl Walk {
    fn step(&mut self, r: &AuditRow, checkpoints: &BTreeMap<i64, Vec<&AuditCheckpoint>>, problems: &mut Vec<Problem>) {
        // The page query only returns rows with a seq.
        let seq = r.seq.unwrap_or(0);
        let expected = self.last_seq + 1;
        let after_gap = seq > expected;
        if after_gap {
            problems.push(Problem::Missing {
                from: expected,
                to: seq - 1,
            });
        }
        let prev_stored = r.prev_hash.as_deref().unwrap_or("");
        if !after_gap {
            let want = self.last_hash.clone().unwrap_or_else(|| hex::encode(GENESIS));
            if prev_stored != want {
                problems.push(Problem::BrokenLink {
                    seq,
                    id: r.id.clone(),
                    what: format!(
                        "its prev_hash is not the hash of event seq {} (that event was rewritten, or this link edited)",
                        seq - 1
                    ),
                });
            }
        }
        // The event itself: its columns and its own prev_hash must give its hash.
        let prev = chain::parse_hash(prev_stored);
        let stored = r.hash.as_deref().unwrap_or("");
        match prev {
            None => problems.push(Problem::Edited {
                seq,
                id: r.id.clone(),
                what: format!("prev_hash {prev_stored:?} is not a hash"),
            }),
            Some(prev) => {
                let computed = hex::encode(chain::event_hash(&EventFields::of(r, seq), &prev));
                if stored != computed {
                    problems.push(Problem::Edited {
                        seq,
                        id: r.id.clone(),
                        what: "its columns do not hash to its stored hash".into(),
                    });
                }
            }
        }
        for c in checkpoints.get(&seq).into_iter().flatten() {
            self.seen_checkpoints.insert(seq);
            if c.hash == stored {
                self.signed = Anchor {
                    seq,
                    hash: stored.to_owned(),
                };
            } else {
                problems.push(Problem::CheckpointMismatch {
                    seq,
                    node: c.node.clone(),
                    what: format!("signed hash {}, event hash {stored}", c.hash),
                });
            }
        }
        self.events += 1;
        self.last_seq = seq;
        self.last_hash = Some(stored.to_owned());
    }
}
