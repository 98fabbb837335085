//! The EVENTS frame being filled, without copying bulk data.
//!
//! Record heads and small payloads are copied into one buffer; a large payload that the
//! caller hands over as [`Bytes`] (a relayed packet) is kept by reference and written
//! from where it is. The frame's hash is computed as records arrive, while their bytes
//! are still in the CPU's cache, so the relay touches each recorded byte once to hash it
//! and once to write it (format version 2 hashes the payload before its length for this).

use std::io::IoSlice;

use bytes::Bytes;

use crate::format::{self, ChainHash, FRAME_EVENTS};

/// Payloads at least this long are kept by reference rather than copied.
const SHARE_MIN: usize = 2048;
/// A frame is closed before it holds more pieces than this (`writev` takes at most
/// 1024 buffers, and two go to the frame's head and hash).
pub(crate) const MAX_PIECES: usize = 512;

enum Piece {
    /// A range of `Chunk::small`.
    Small {
        start: usize,
        end: usize,
    },
    Shared(Bytes),
}

/// One record's payload, borrowed for the call or shared for the frame's lifetime.
pub(crate) enum Payload<'a> {
    Borrowed(&'a [u8]),
    Shared(Bytes),
}

impl Payload<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Borrowed(b) => b.len(),
            Payload::Shared(b) => b.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Shared(b) => b,
        }
    }
}

/// The running hash of a frame, bound to the chain position it was started at.
struct Running {
    hasher: blake3::Hasher,
    seq: u64,
    prev: [u8; 32],
}

#[derive(Default)]
pub(crate) struct Chunk {
    small: Vec<u8>,
    pieces: Vec<Piece>,
    len: usize,
    first_t: Option<u64>,
    running: Option<Running>,
}

impl Chunk {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Chunk {
            small: Vec::with_capacity(n),
            ..Chunk::default()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn pieces(&self) -> usize {
        self.pieces.len()
    }

    /// Time of the first record.
    pub(crate) fn first_t(&self) -> Option<u64> {
        self.first_t
    }

    /// Append one record. `hash_at`, read for a frame's first record only, is the chain
    /// position (`seq`, `prev`) the frame will take when its hash can be computed as it
    /// fills (plaintext frames); `None` when the payload is transformed first (encrypted
    /// tiers).
    pub(crate) fn push(&mut self, kind: u8, t: u64, channel: u32, data: Payload<'_>, hash_at: Option<(u64, [u8; 32])>) {
        if self.first_t.is_none() {
            self.first_t = Some(t);
        }
        if self.running.is_none() && self.len == 0 {
            self.running = hash_at.map(|(seq, prev)| Running {
                hasher: format::frame_hasher(&prev, FRAME_EVENTS, seq),
                seq,
                prev,
            });
        }
        let head = format::record_head(kind, t, channel, data.len());
        if let Some(r) = &mut self.running {
            r.hasher.update(&head);
            r.hasher.update(data.as_slice());
        }
        self.len += head.len() + data.len();
        let start = self.small.len();
        self.small.extend_from_slice(&head);
        match data {
            Payload::Shared(b) if b.len() >= SHARE_MIN => {
                self.extend_small(start);
                self.pieces.push(Piece::Shared(b));
            }
            other => {
                self.small.extend_from_slice(other.as_slice());
                self.extend_small(start);
            }
        }
    }

    /// Cover `small[start..]` with the last piece, or a new one.
    fn extend_small(&mut self, start: usize) {
        let end = self.small.len();
        match self.pieces.last_mut() {
            Some(Piece::Small { end: e, .. }) if *e == start => *e = end,
            _ => self.pieces.push(Piece::Small { start, end }),
        }
    }

    /// The frame's hash at chain position (`seq`, `prev`): from the running hash when it
    /// was started there, otherwise computed over the payload now.
    pub(crate) fn hash(&mut self, seq: u64, prev: &[u8; 32]) -> [u8; 32] {
        match self.running.take() {
            Some(r) if r.seq == seq && r.prev == *prev => format::finish_frame_hash(r.hasher, self.len),
            _ => format::frame_hash(ChainHash::CURRENT, prev, FRAME_EVENTS, seq, &self.contiguous()),
        }
    }

    /// The payload in one buffer (for sealing, or a hash that could not run ahead).
    pub(crate) fn contiguous(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for s in self.io_slices() {
            v.extend_from_slice(&s);
        }
        v
    }

    /// The payload as buffers for one vectored write, in order.
    pub(crate) fn io_slices(&self) -> Vec<IoSlice<'_>> {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Small { start, end } => IoSlice::new(&self.small[*start..*end]),
                Piece::Shared(b) => IoSlice::new(b),
            })
            .collect()
    }

    /// Empty it for the next frame, keeping the buffer's capacity and releasing the
    /// shared packets.
    pub(crate) fn clear(&mut self) {
        self.small.clear();
        self.pieces.clear();
        self.len = 0;
        self.first_t = None;
        self.running = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(records: &[(u8, u64, u32, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, t, c, d) in records {
            format::encode_record(&mut v, *k, *t, *c, d);
        }
        v
    }

    #[test]
    fn shared_and_copied_records_make_the_same_bytes_and_hash() {
        let big = Bytes::from(vec![7u8; 40_000]);
        let small = b"ls\r".to_vec();
        let prev = [9u8; 32];
        let mut c = Chunk::with_capacity(1024);
        c.push(1, 5, 0, Payload::Borrowed(&small), Some((3, prev)));
        c.push(2, 6, 0, Payload::Shared(big.clone()), Some((3, prev)));
        c.push(2, 7, 0, Payload::Shared(Bytes::from_static(b"tiny")), Some((3, prev)));
        c.push(1, 8, 1, Payload::Shared(big.clone()), Some((3, prev)));
        let want = encoded(&[(1, 5, 0, &small), (2, 6, 0, &big), (2, 7, 0, b"tiny"), (1, 8, 1, &big)]);
        assert_eq!(c.contiguous(), want);
        assert_eq!(c.len(), want.len());
        assert_eq!(c.first_t(), Some(5));
        // Heads and small payloads between two shared packets share one piece.
        assert_eq!(c.pieces(), 4, "head+ls+head | big | head+tiny+head | big");
        let expect = format::frame_hash(ChainHash::CURRENT, &prev, FRAME_EVENTS, 3, &want);
        assert_eq!(c.hash(3, &prev), expect);
    }

    #[test]
    fn a_hash_started_elsewhere_in_the_chain_is_recomputed() {
        let prev = [1u8; 32];
        let mut c = Chunk::with_capacity(64);
        c.push(2, 0, 0, Payload::Borrowed(b"out"), Some((4, prev)));
        let want = encoded(&[(2, 0, 0, b"out")]);
        let other = [2u8; 32];
        assert_eq!(
            c.hash(5, &other),
            format::frame_hash(ChainHash::CURRENT, &other, FRAME_EVENTS, 5, &want)
        );
        c.clear();
        assert!(c.is_empty() && c.first_t().is_none() && c.pieces() == 0);
    }
}
