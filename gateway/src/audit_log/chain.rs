//! The audit log's hash chain and checkpoint signatures, byte for byte, so that a third
//! party can verify an exported log without Herse.
//!
//! # Event hash
//!
//! Every row of `audit_events` carries `seq` (1, 2, 3 … without gaps), `prev_hash` (the
//! `hash` of the event `seq - 1`; for `seq = 1`, 32 zero bytes) and `hash`, both stored as
//! 64 lowercase hex digits. `hash = SHA-256(E)` where `E` is the concatenation of:
//!
//! | field         | encoding                                   |
//! |---------------|--------------------------------------------|
//! | domain        | `str("herse-audit-event-v1")`              |
//! | `seq`         | `i64`                                      |
//! | `id`          | `str`                                      |
//! | `at`          | `i64` (Unix time, microseconds)            |
//! | `kind`        | `str`                                      |
//! | `severity`    | `str` (`info`, `warning` or `alert`)       |
//! | `user_name`   | `opt`                                      |
//! | `session_id`  | `opt`                                      |
//! | `client_addr` | `opt`                                      |
//! | `workstation` | `opt`                                      |
//! | `detail`      | `str`                                      |
//! | `prev_hash`   | 32 raw bytes (not hex)                     |
//!
//! - `i64`: 8 bytes, big-endian two's complement.
//! - `str(s)`: the length of `s`'s UTF-8 bytes as 4 bytes big-endian, then the bytes.
//! - `opt`: one byte `0x00` for NULL; or `0x01` followed by `str(s)`.
//!
//! Every field has a fixed size or a length prefix, so two different rows never
//! encode to the same bytes. The values hashed are the stored column values as text
//! (`id` included, so no column of a row can change unnoticed).
//!
//! # Checkpoint signature
//!
//! A row of `audit_checkpoints` signs the head of the chain: `signature` (hex) is the
//! Ed25519 signature, by the gateway's audit key (`gateway_keys` name `audit`, public key
//! in hex, also `data_dir/audit_key.pub`), of the bytes
//!
//! `"herse-audit-checkpoint-v1" || i64(seq) || hash (32 raw bytes) || i64(signed_at)`
//!
//! where `hash` is the `hash` of event `seq` and `signed_at` the checkpoint's time (Unix
//! microseconds). The `node` column is informational and not signed.

use sha2::{Digest, Sha256};

/// `prev_hash` of the first event.
pub const GENESIS: [u8; 32] = [0; 32];

const EVENT_DOMAIN: &str = "herse-audit-event-v1";
const CHECKPOINT_DOMAIN: &[u8] = b"herse-audit-checkpoint-v1";

/// The hashed columns of one event, as stored.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub seq: i64,
    pub id: &'a str,
    pub at: i64,
    pub kind: &'a str,
    pub severity: &'a str,
    pub user: Option<&'a str>,
    pub session: Option<&'a str>,
    pub client_addr: Option<&'a str>,
    pub workstation: Option<&'a str>,
    pub detail: &'a str,
}

impl<'a> EventFields<'a> {
    /// The fields of a stored row, under the sequence number `seq`.
    pub fn of(row: &'a crate::store::AuditRow, seq: i64) -> Self {
        EventFields {
            seq,
            id: &row.id,
            at: row.at,
            kind: &row.kind,
            severity: &row.severity,
            user: row.user.as_deref(),
            session: row.session.as_deref(),
            client_addr: row.client_addr.as_deref(),
            workstation: row.workstation.as_deref(),
            detail: &row.detail,
        }
    }
}

/// The canonical encoding `E` of an event (see the module documentation).
pub fn encode_event(f: &EventFields<'_>, prev: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + f.detail.len());
    put_str(&mut out, EVENT_DOMAIN);
    out.extend_from_slice(&f.seq.to_be_bytes());
    put_str(&mut out, f.id);
    out.extend_from_slice(&f.at.to_be_bytes());
    put_str(&mut out, f.kind);
    put_str(&mut out, f.severity);
    for o in [f.user, f.session, f.client_addr, f.workstation] {
        match o {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                put_str(&mut out, s);
            }
        }
    }
    put_str(&mut out, f.detail);
    out.extend_from_slice(prev);
    out
}

/// `hash` of an event.
pub fn event_hash(f: &EventFields<'_>, prev: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(encode_event(f, prev)).into()
}

/// The bytes a checkpoint signs.
pub fn checkpoint_message(seq: i64, hash: &[u8; 32], signed_at: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 48);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&signed_at.to_be_bytes());
    m
}

/// A stored hash: exactly 64 hex digits.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Stored columns are far below 4 GiB; a longer one would still hash, truncated length
    // aside, and never panic.
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> EventFields<'static> {
        EventFields {
            seq: 1,
            id: "abc",
            at: 1_700_000_000_000_000,
            kind: "user.add",
            severity: "info",
            user: Some("alice"),
            session: None,
            client_addr: None,
            workstation: Some(""),
            detail: "by local:root",
        }
    }

    #[test]
    fn encoding_is_pinned() {
        // The encoding byte for byte: changing it breaks every stored chain.
        let e = encode_event(&fields(), &GENESIS);
        let mut want = Vec::new();
        want.extend_from_slice(&20u32.to_be_bytes());
        want.extend_from_slice(b"herse-audit-event-v1");
        want.extend_from_slice(&1i64.to_be_bytes());
        want.extend_from_slice(&3u32.to_be_bytes());
        want.extend_from_slice(b"abc");
        want.extend_from_slice(&1_700_000_000_000_000i64.to_be_bytes());
        want.extend_from_slice(&8u32.to_be_bytes());
        want.extend_from_slice(b"user.add");
        want.extend_from_slice(&4u32.to_be_bytes());
        want.extend_from_slice(b"info");
        want.extend_from_slice(&[1, 0, 0, 0, 5]);
        want.extend_from_slice(b"alice");
        want.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0]);
        want.extend_from_slice(&13u32.to_be_bytes());
        want.extend_from_slice(b"by local:root");
        want.extend_from_slice(&[0; 32]);
        assert_eq!(e, want);
    }

    #[test]
    fn null_and_empty_differ_and_fields_cannot_shift() {
        let a = fields();
        let b = EventFields { workstation: None, ..a };
        assert_ne!(event_hash(&a, &GENESIS), event_hash(&b, &GENESIS));
        let c = EventFields {
            kind: "user.addinfo",
            severity: "",
            ..a
        };
        assert_ne!(event_hash(&a, &GENESIS), event_hash(&c, &GENESIS));
        assert_ne!(event_hash(&a, &GENESIS), event_hash(&a, &[1; 32]));
    }

    #[test]
    fn hashes_parse_strictly() {
        assert!(parse_hash(&"ab".repeat(32)).is_some());
        assert!(parse_hash(&"ab".repeat(31)).is_none());
        assert!(parse_hash(&"zz".repeat(32)).is_none());
    }
}
