//! The EVENTS frame being filled, without copying bulk data.
//!
//! Record heads and small payloads are copied into one buffer; a large payload that the
//! caller hands over as [`Bytes`] (a relayed packet) is kept by reference and written
//! from where it is. Each record's data hash comes with it (taken by the relay while the
//! packet was still in its core's cache) or is taken as it arrives, so each recorded
//! byte is read once to hash it and once to write it; the frame's hash, over the
//! records' heads and data hashes (format version 3), is finished when the frame closes.

use std::io::IoSlice;

use bytes::Bytes;

use crate::format::{self, ChainHash, FRAME_EVENTS, RECORD_HEADER_LEN};

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

/// A record's data hash (version 3), as far as the frame's hash needs it.
#[derive(Clone, Copy)]
pub(crate) enum Digest {
    /// Not needed: the payload is transformed first (encrypted tiers), and the frame's
    /// hash covers the sealed bytes.
    Skip,
    /// Hash the data now.
    Now,
    /// Already taken, where the data was hot in the cache (the relay's thread).
    Given([u8; 32]),
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

#[derive(Default)]
pub(crate) struct Chunk {
    small: Vec<u8>,
    pieces: Vec<Piece>,
    len: usize,
    first_t: Option<u64>,
    records: usize,
    /// The frame's hash input so far (version 3): each record's head and data hash, for
    /// the records pushed with one (`Digest::Now` or `Given`: all of a plaintext frame's).
    body: Vec<u8>,
    digested: usize,
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

    /// Append one record, with its data hash for a plaintext frame's hash (see
    /// [`Digest`]). A given hash must be [`format::record_digest`] of `data`.
    pub(crate) fn push(&mut self, kind: u8, t: u64, channel: u32, data: Payload<'_>, digest: Digest) {
        if self.first_t.is_none() {
            self.first_t = Some(t);
        }
        let head = format::record_head(kind, t, channel, data.len());
        let digest = match digest {
            Digest::Skip => None,
            Digest::Now => Some(format::record_digest(data.as_slice())),
            Digest::Given(d) => {
                debug_assert_eq!(d, format::record_digest(data.as_slice()));
                Some(d)
            }
        };
        if let Some(d) = digest {
            self.body.extend_from_slice(&head);
            self.body.extend_from_slice(&d);
            self.digested += 1;
        }
        self.records += 1;
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

    /// The hash of this frame as a plaintext EVENTS frame at chain position (`seq`,
    /// `prev`): from the data hashes taken as records arrived, or, if some were pushed
    /// without, over the whole payload now. `None` only if the payload does not parse
    /// as the records it was built from, which would be a bug: the caller fails closed.
    pub(crate) fn hash(&self, seq: u64, prev: &[u8; 32]) -> Option<[u8; 32]> {
        if self.digested == self.records {
            debug_assert_eq!(self.body.len(), self.records * (RECORD_HEADER_LEN + 32));
            let mut h = format::frame_hasher(prev, FRAME_EVENTS, seq);
            h.update(&self.body);
            return Some(format::finish_frame_hash(h, self.len));
        }
        format::events_frame_hash(ChainHash::CURRENT, prev, seq, &self.contiguous())
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
        self.records = 0;
        self.body.clear();
        self.digested = 0;
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
        c.push(1, 5, 0, Payload::Borrowed(&small), Digest::Now);
        c.push(2, 6, 0, Payload::Shared(big.clone()), Digest::Now);
        c.push(
            2,
            7,
            0,
            Payload::Shared(Bytes::from_static(b"tiny")),
            Digest::Given(format::record_digest(b"tiny")),
        );
        c.push(1, 8, 1, Payload::Shared(big.clone()), Digest::Now);
        let want = encoded(&[(1, 5, 0, &small), (2, 6, 0, &big), (2, 7, 0, b"tiny"), (1, 8, 1, &big)]);
        assert_eq!(c.contiguous(), want);
        assert_eq!(c.len(), want.len());
        assert_eq!(c.first_t(), Some(5));
        // Heads and small payloads between two shared packets share one piece.
        assert_eq!(c.pieces(), 4, "head+ls+head | big | head+tiny+head | big");
        let expect = format::events_frame_hash(ChainHash::CURRENT, &prev, 3, &want);
        assert_eq!(c.hash(3, &prev), expect);
    }

    /// The version-3 hash exactly as the format's documentation states it, computed
    /// here without the crate's helpers.
    #[test]
    fn the_hash_is_the_specified_one() {
        let prev = [1u8; 32];
        let mut c = Chunk::with_capacity(64);
        c.push(2, 9, 4, Payload::Borrowed(b"out"), Digest::Now);
        c.push(16, 10, 4, Payload::Shared(Bytes::from(vec![3u8; 5000])), Digest::Now);
        let mut spec = blake3::Hasher::new();
        spec.update(&prev);
        spec.update(&[FRAME_EVENTS]);
        spec.update(&7u64.to_be_bytes());
        for (kind, t, data) in [(2u8, 9u64, b"out".to_vec()), (16, 10, vec![3u8; 5000])] {
            spec.update(&[kind]);
            spec.update(&t.to_be_bytes());
            spec.update(&4u32.to_be_bytes());
            spec.update(&(data.len() as u32).to_be_bytes());
            spec.update(blake3::hash(&data).as_bytes());
        }
        spec.update(&((2 * 17 + 3 + 5000) as u32).to_be_bytes());
        let spec: [u8; 32] = spec.finalize().into();
        assert_eq!(c.hash(7, &prev), Some(spec));
        let blob = format::frame_hash(ChainHash::CURRENT, &prev, FRAME_EVENTS, 7, &c.contiguous());
        assert_ne!(Some(blob), c.hash(7, &prev), "data is hashed record by record");
    }

    #[test]
    fn records_pushed_without_their_digest_are_hashed_at_the_close() {
        let prev = [1u8; 32];
        let mut c = Chunk::with_capacity(64);
        c.push(2, 0, 0, Payload::Borrowed(b"out"), Digest::Skip);
        c.push(2, 1, 0, Payload::Borrowed(b"more"), Digest::Now);
        let want = encoded(&[(2, 0, 0, b"out"), (2, 1, 0, b"more")]);
        assert_eq!(
            c.hash(5, &prev),
            format::events_frame_hash(ChainHash::CURRENT, &prev, 5, &want)
        );
        assert!(c.hash(5, &prev).is_some());
        c.clear();
        assert!(c.is_empty() && c.first_t().is_none() && c.pieces() == 0);
        c.push(2, 0, 0, Payload::Borrowed(b"x"), Digest::Now);
        assert_eq!(
            c.hash(6, &prev),
            format::events_frame_hash(ChainHash::CURRENT, &prev, 6, &encoded(&[(2, 0, 0, b"x")]))
        );
    }
}
