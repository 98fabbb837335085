//! The recording format: a golden file checked byte for byte, and tamper tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use session_recordings::*;

fn header() -> Header {
    Header {
        session_id: "00112233445566778899aabbccddeeff".into(),
        user: "alice".into(),
        client_addr: "10.77.0.2:50000".into(),
        workstation: Some("alice-ws1".into()),
        target: "db1".into(),
        target_addr: "192.0.2.10:22".into(),
        tier: "db".into(),
        login: "postgres".into(),
        role: "dba".into(),
        grant: None,
        decision: "allowed postgres@db1 (tier db) by roles [dba]".into(),
        started_at_micros: 1_700_000_000_000_000,
        previous: Some(PreviousRecording {
            session_id: "ffeeddccbbaa99887766554433221100".into(),
            header_hash: "ab".repeat(32),
        }),
        signing_key: hex_key(),
        encryption: None,
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn hex_key() -> String {
    key()
        .verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("herse-format-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("r.herserec")
}

/// A deterministic recording: fixed key, header and clock.
fn write_golden(path: &Path) {
    write_golden_as(path, false)
}

/// The same recording, bulk data handed over as shared packets (`data_shared`) or not.
fn write_golden_as(path: &Path, shared: bool) {
    let t = Arc::new(AtomicU64::new(0));
    let t2 = t.clone();
    let rec = FileRecorder::create_with_clock(
        path,
        &header(),
        key(),
        Box::new(move || t2.fetch_add(250_000, Ordering::SeqCst)),
    )
    .unwrap();
    rec.meta(
        0,
        &Meta::ChannelOpen {
            kind: ChannelKind::Session,
        },
    )
    .unwrap();
    rec.meta(
        0,
        &Meta::Pty {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
            pix_width: 0,
            pix_height: 0,
            modes: Vec::new(),
        },
    )
    .unwrap();
    rec.meta(0, &Meta::Shell).unwrap();
    let data = |d: DataDirection, b: &[u8]| {
        if shared {
            rec.data_shared(0, d, bytes::Bytes::copy_from_slice(b)).unwrap()
        } else {
            rec.data(0, d, b).unwrap()
        }
    };
    data(DataDirection::Input, b"ls\r");
    data(DataDirection::Output, b"ls\r\nfile1  file2\r\n$ ");
    rec.meta(
        0,
        &Meta::Resize {
            cols: 120,
            rows: 40,
            pix_width: 0,
            pix_height: 0,
        },
    )
    .unwrap();
    // Large output spans several EVENTS frames, in packets as a relay sees them.
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for packet in big.chunks(32 * 1024) {
        data(DataDirection::Output, packet);
    }
    rec.meta(0, &Meta::ExitStatus { code: 0 }).unwrap();
    rec.meta(0, &Meta::Close).unwrap();
    rec.finish("client closed").unwrap();
}

fn golden_path(version: u16) -> PathBuf {
    // The directory `cargo test` runs us from, not the one we were compiled in: a test
    // binary reused from a shared target dir may come from another checkout.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.join(format!("tests/golden/v{version}.herserec"))
}

/// Every version's golden file: older recordings must keep reading and verifying.
fn goldens() -> Vec<(u16, Vec<u8>)> {
    (1..=VERSION)
        .map(|v| (v, std::fs::read(golden_path(v)).expect("golden file")))
        .collect()
}

#[test]
fn golden_recording_is_byte_for_byte_stable_and_reads_back() {
    let path = tmp("golden");
    write_golden(&path);
    let written = std::fs::read(&path).unwrap();
    if std::env::var_os("HERSE_UPDATE_GOLDEN").is_some() {
        std::fs::write(golden_path(VERSION), &written).unwrap();
    }
    let golden = std::fs::read(golden_path(VERSION)).expect("golden file (regenerate with HERSE_UPDATE_GOLDEN=1)");
    assert!(
        written == golden,
        "the writer's output changed: the format is a contract (regenerate only with a version bump)"
    );
    assert_eq!(u16::from_be_bytes([golden[8], golden[9]]), VERSION);
    for (version, golden) in goldens() {
        reads_back_whole(version, &golden);
    }
}

fn reads_back_whole(version: u16, golden: &[u8]) {
    let (h, events, truncated) = RecordingReader::new(golden, None).unwrap().events().unwrap();
    assert_eq!(h, header(), "version {version}");
    assert!(!truncated);
    let metas: Vec<&Meta> = events.iter().filter_map(Event::meta).collect();
    assert_eq!(
        metas[0],
        &Meta::ChannelOpen {
            kind: ChannelKind::Session
        }
    );
    assert_eq!(
        metas.last().unwrap(),
        &&Meta::End {
            reason: "client closed".into()
        }
    );
    let output: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            Event::Data {
                direction: DataDirection::Output,
                data,
                ..
            } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(output.len(), 300_000 + 20);
    // Time stamps come from the clock, in order.
    let ts: Vec<u64> = events.iter().map(|e| e.t_micros()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]));

    let v = RecordingReader::new(golden, Some(key().verifying_key()))
        .unwrap()
        .verify()
        .unwrap();
    assert!(
        matches!(v.completeness, Completeness::Complete { .. }),
        "version {version}: {:?}",
        v.completeness
    );
    assert!(v.frames >= 5, "header, checkpoint, events frames, seal: {}", v.frames);
}

/// Byte ranges of the frames of a recording.
fn frames(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 10;
    while at + 13 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at + 9..at + 13].try_into().unwrap()) as usize;
        let end = at + 13 + len + 32;
        out.push(at..end.min(bytes.len()));
        at = end;
    }
    out
}

fn verify(bytes: &[u8]) -> Result<Verified, ReadError> {
    RecordingReader::new(bytes, Some(key().verifying_key()))?.verify()
}

#[test]
fn any_changed_byte_fails_with_its_position() {
    for (_, golden) in goldens() {
        changed_bytes_fail(&golden);
    }
}

fn changed_bytes_fail(golden: &[u8]) {
    let fr = frames(golden);
    // One byte in every frame, and a sample of positions across the whole file.
    let mut positions: Vec<usize> = fr.iter().map(|r| r.start + (r.end - r.start) / 2).collect();
    positions.extend((10..golden.len()).step_by(997));
    for pos in positions {
        let mut t = golden.to_vec();
        t[pos] ^= 0x20;
        match verify(&t) {
            Err(ReadError::Corrupt { frame, offset, .. }) | Err(ReadError::BadSignature { frame, offset }) => {
                let owner = fr.iter().position(|r| r.contains(&pos)).unwrap() as u64;
                assert!(frame <= owner, "byte {pos} in frame {owner} reported at frame {frame}");
                assert!(offset as usize <= pos);
            }
            Err(e) => panic!("byte {pos}: unexpected error {e}"),
            Ok(v) => panic!("byte {pos} flipped but verified: {:?}", v.completeness),
        }
    }
    // Wrong key.
    let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
    assert!(matches!(
        RecordingReader::new(golden, Some(other)).unwrap().verify(),
        Err(ReadError::BadSignature { frame: 1, .. })
    ));
}

#[test]
fn dropped_duplicated_and_swapped_frames_fail() {
    for (_, golden) in goldens() {
        frame_edits_fail(&golden);
    }
}

fn frame_edits_fail(golden: &[u8]) {
    let fr = frames(golden);
    assert!(fr.len() >= 5);
    let splice = |parts: Vec<std::ops::Range<usize>>| -> Vec<u8> {
        let mut v = golden[..10].to_vec();
        for p in parts {
            v.extend_from_slice(&golden[p]);
        }
        v
    };
    let mut dropped = fr.clone();
    dropped.remove(2);
    let e = verify(&splice(dropped)).unwrap_err().to_string();
    assert!(e.contains("frame 2") && e.contains("dropped"), "{e}");

    let mut dup = fr.clone();
    dup.insert(3, fr[2].clone());
    let e = verify(&splice(dup)).unwrap_err().to_string();
    assert!(e.contains("frame 3") && e.contains("duplicated"), "{e}");

    let mut swapped = fr.clone();
    swapped.swap(2, 3);
    let e = verify(&splice(swapped)).unwrap_err().to_string();
    assert!(e.contains("frame 2"), "{e}");
}

#[test]
fn a_cut_recording_is_truncated_never_complete() {
    for (_, golden) in goldens() {
        cuts_are_truncated(&golden);
    }
}

fn cuts_are_truncated(golden: &[u8]) {
    let fr = frames(golden);
    // Without the seal: truncated at the first checkpoint (the only one before it).
    let no_seal = &golden[..fr[fr.len() - 1].start];
    // Read, but vouched for by nothing: none of the events after that checkpoint count
    // as authenticated, while the whole recording's all do.
    let cut = verify(no_seal).unwrap();
    assert!(cut.events > 0);
    assert_eq!(cut.authenticated_events, 0);
    let whole = verify(golden).unwrap();
    assert_eq!(whole.authenticated_events, whole.events);
    match verify(no_seal).unwrap().completeness {
        Completeness::Truncated {
            authenticated_until_micros,
            unauthenticated_bytes,
        } => {
            assert_eq!(authenticated_until_micros, 0, "the checkpoint right after the header");
            assert!(unauthenticated_bytes > 0);
        }
        c => panic!("{c:?}"),
    }
    // Cut in the middle of a frame: the same, and events before the cut still replay.
    let mid = fr[3].start + 100;
    assert!(matches!(
        verify(&golden[..mid]).unwrap().completeness,
        Completeness::Truncated { .. }
    ));
    let (_, events, truncated) = RecordingReader::new(&golden[..mid], None).unwrap().events().unwrap();
    assert!(truncated && !events.is_empty());
    // Cut inside the header: not a recording at all.
    assert!(verify(&golden[..20]).is_err());
    // The bytes of a frame cut short count as unauthenticated.
    let unauth = |b: &[u8]| match verify(b).unwrap().completeness {
        Completeness::Truncated {
            unauthenticated_bytes, ..
        } => unauthenticated_bytes,
        c => panic!("{c:?}"),
    };
    assert_eq!(unauth(&golden[..no_seal.len() + 20]), unauth(no_seal) + 20);
}

#[test]
fn nothing_may_follow_the_seal() {
    for (_, golden) in goldens() {
        let fr = frames(&golden);
        let seal = fr[fr.len() - 1].clone();
        // A frame head after the seal announcing forged frames to come (what a seek
        // index could point into), a few stray bytes, a whole copy of a frame.
        let mut head = golden.clone();
        head.extend_from_slice(&[2u8, 0, 0, 0, 0, 0, 0, 0, fr.len() as u8, 0, 0x40, 0, 0]);
        let mut stray = golden.clone();
        stray.extend_from_slice(b"xyz");
        let mut frame = golden.clone();
        frame.extend_from_slice(&golden[fr[2].clone()]);
        for (what, bytes) in [("head", head), ("stray", stray), ("frame", frame)] {
            let e = verify(&bytes).expect_err(what).to_string();
            assert!(
                e.contains("after the seal") || e.contains(&format!("frame {}", fr.len())),
                "{what}: {e}"
            );
            assert!(e.contains(&seal.end.to_string()), "{what}: the position is named: {e}");
        }
    }
}

#[test]
fn an_events_frame_that_is_not_records_is_corrupt() {
    use session_recordings::format::{encode_frame, frame_head, FRAME_EVENTS, FRAME_HEADER};
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&VERSION.to_be_bytes());
    let header_hash = encode_frame(
        &mut file,
        &[0; 32],
        FRAME_HEADER,
        0,
        &serde_json::to_vec(&header()).unwrap(),
    );
    // One record whose length runs past the frame; no hash can match it.
    let mut payload = vec![2u8; 17];
    payload[13..17].copy_from_slice(&100u32.to_be_bytes());
    file.extend_from_slice(&frame_head(FRAME_EVENTS, 1, payload.len()));
    file.extend_from_slice(&payload);
    file.extend_from_slice(&header_hash);
    match RecordingReader::new(&file[..], None).unwrap().verify() {
        Err(ReadError::Corrupt { frame: 1, what, .. }) => assert!(what.contains("records"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn shared_packets_are_recorded_byte_for_byte_like_copied_ones() {
    let (a, b) = (tmp("copied"), tmp("shared"));
    write_golden_as(&a, false);
    write_golden_as(&b, true);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(
        std::fs::read(session_recordings::format::index_path(&a)).unwrap(),
        std::fs::read(session_recordings::format::index_path(&b)).unwrap()
    );
}

#[test]
fn the_version_picks_the_hash_and_is_checked() {
    // Claiming another version of the format breaks a hash: the header's (1 against 2
    // or 3), or the first EVENTS frame's (2 against 3, whose others hash alike).
    for (version, golden) in goldens() {
        for claimed in (1..=VERSION).filter(|&v| v != version) {
            let mut t = golden.clone();
            t[9] = claimed as u8;
            match verify(&t) {
                Err(ReadError::Corrupt { frame, what, .. }) => {
                    assert!(frame <= 2, "v{version} read as v{claimed}: frame {frame}: {what}")
                }
                other => panic!("v{version} read as v{claimed}: {other:?}"),
            }
        }
        let mut t = golden.clone();
        t[9] = (VERSION + 1) as u8;
        assert!(matches!(verify(&t), Err(ReadError::Version(v)) if v == VERSION + 1));
    }
}

#[test]
fn flush_writes_events_and_checkpoints_while_running() {
    let path = tmp("live");
    let rec = FileRecorder::create(&path, &header(), key()).unwrap();
    // Locked by its writer from creation to the seal: retention can tell it is live.
    assert!(session_recordings::is_being_written(&path).unwrap());
    rec.data(1, DataDirection::Output, b"hello").unwrap();
    rec.flush().unwrap();
    // Readable (and authenticated up to the first checkpoint) while still open.
    let v = RecordingReader::open_verified(&path, &key().verifying_key())
        .unwrap()
        .verify()
        .unwrap();
    assert!(matches!(v.completeness, Completeness::Truncated { .. }));
    assert_eq!(v.events, 1);
    std::thread::sleep(CHECKPOINT_EVERY + std::time::Duration::from_millis(100));
    rec.data(1, DataDirection::Output, b"world").unwrap();
    rec.flush().unwrap();
    let v = RecordingReader::open_verified(&path, &key().verifying_key())
        .unwrap()
        .verify()
        .unwrap();
    match v.completeness {
        Completeness::Truncated {
            unauthenticated_bytes, ..
        } => assert_eq!(unauthenticated_bytes, 0, "the second flush signed a checkpoint"),
        c => panic!("{c:?}"),
    }
    rec.finish("done").unwrap();
    assert!(!session_recordings::is_being_written(&path).unwrap());
    assert!(matches!(
        rec.data(1, DataDirection::Output, b"late"),
        Err(RecordError::Finished)
    ));
    let v = RecordingReader::open_verified(&path, &key().verifying_key())
        .unwrap()
        .verify()
        .unwrap();
    assert!(matches!(v.completeness, Completeness::Complete { .. }));
    assert!(
        FileRecorder::create(&path, &header(), key()).is_err(),
        "never overwrites"
    );
}

/// Bytes of `path` in the page cache, as util-linux's `fincore` reports them.
fn cached_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(
        out.status.success(),
        "fincore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn synced_recording_pages_leave_the_page_cache() {
    // Write-once data: a bulk recording bypasses the page cache (direct I/O, see the
    // crate's `sink`), the buffered path drops what is written back every write-behind
    // step, and every checkpoint's sync drops what is on disk, so a long session neither
    // fills the page cache nor writes into memory the hypervisor took back. Needs a
    // disk-backed temp dir (tmpfs pages cannot be dropped).
    let path = tmp("dropcache");
    let rec = FileRecorder::create(&path, &header(), key()).unwrap();
    let block: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    for _ in 0..256 {
        rec.data(1, DataDirection::Output, &block).unwrap();
    }
    rec.flush().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 16 << 20, "{len}");
    // Bulk: the first 4 MiB went through the cache, the rest bypassed it.
    std::thread::sleep(std::time::Duration::from_millis(800));
    for _ in 0..256 {
        rec.data(1, DataDirection::Output, &block).unwrap();
    }
    let cached = cached_bytes(&path);
    assert!(
        cached < 24 << 20,
        "written back before the checkpoint, {cached} bytes still cached"
    );
    std::thread::sleep(CHECKPOINT_EVERY + std::time::Duration::from_millis(100));
    rec.data(1, DataDirection::Output, b"tail").unwrap();
    rec.flush().unwrap();
    let cached = cached_bytes(&path);
    assert!(cached <= 64 * 1024, "synced pages dropped, {cached} bytes still cached");
    rec.finish("done").unwrap();
    assert!(cached_bytes(&path) <= 128 * 1024, "sealed and dropped");
    let v = RecordingReader::open_verified(&path, &key().verifying_key())
        .unwrap()
        .verify()
        .unwrap();
    assert!(matches!(v.completeness, Completeness::Complete { .. }));
    assert_eq!(
        v.events,
        2 * 256 + 1 + 1,
        "every record reads back from disk, and the end"
    );
}

#[test]
fn encrypted_events_verify_without_the_key_and_read_only_with_it() {
    let path = tmp("encrypted");
    let auditor = age::x25519::Identity::generate();
    let (data_key, enc) = session_recordings::crypt::new_key(&[auditor.to_public()]).unwrap();
    let h = Header {
        encryption: Some(enc),
        ..header()
    };
    let rec = FileRecorder::create_encrypted(&path, &h, key(), data_key).unwrap();
    rec.data(0, DataDirection::Output, b"secret output").unwrap();
    rec.finish("done").unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(!bytes.windows(13).any(|w| w == b"secret output"));
    let v = RecordingReader::new(&bytes[..], Some(key().verifying_key()))
        .unwrap()
        .verify()
        .unwrap();
    assert!(matches!(v.completeness, Completeness::Complete { .. }));
    assert!(matches!(
        RecordingReader::new(&bytes[..], None).unwrap().events(),
        Err(ReadError::Encrypted)
    ));
    let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(auditor)];
    let mut r = RecordingReader::new(&bytes[..], None).unwrap();
    r.unlock(&ids).unwrap();
    let (_, events, _) = r.events().unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Data { data, .. } if data == b"secret output")));
    let wrong: Vec<Box<dyn age::Identity>> = vec![Box::new(age::x25519::Identity::generate())];
    assert!(RecordingReader::new(&bytes[..], None).unwrap().unlock(&wrong).is_err());
}

#[test]
fn the_seek_index_jumps_near_a_time_and_cannot_forge_data() {
    let path = tmp("seek");
    let t = Arc::new(AtomicU64::new(0));
    let t2 = t.clone();
    let rec = FileRecorder::create_with_clock(
        &path,
        &header(),
        key(),
        Box::new(move || t2.fetch_add(1_000, Ordering::SeqCst)),
    )
    .unwrap();
    let block = vec![b'x'; 64 * 1024];
    for _ in 0..200 {
        rec.data(0, DataDirection::Output, &block).unwrap();
    }
    rec.finish("done").unwrap();
    let middle = 100_000; // µs: about the 100th record
    let mut r = RecordingReader::open_at(&path, middle).unwrap();
    assert!(
        r.offset() > 1_000_000,
        "jumped into the file, not read from the start: {}",
        r.offset()
    );
    let first = r.next_event().unwrap().unwrap();
    assert!(
        first.t_micros() <= middle && first.t_micros() + 10_000 >= middle,
        "{}",
        first.t_micros()
    );
    let mut n = 1;
    while r.next_event().unwrap().is_some() {
        n += 1;
    }
    assert!(n < 200 && n > 50, "{n}");
    // Read with the key from the seek point: each checkpoint after it is checked, so a
    // wrong key (or anything not signed by the right one) fails the read.
    let r = RecordingReader::open_at_verified(&path, middle, &key().verifying_key()).unwrap();
    let (_, events, truncated) = r.events().unwrap();
    assert!(!truncated && events.len() == n, "{} events", events.len());
    // A second read lands on the entry the first landed on, whatever the index says by
    // then (a recording still growing gains entries between two reads).
    let r = RecordingReader::open_at_verified(&path, middle, &key().verifying_key()).unwrap();
    let (landed, offset) = (r.landed_on().expect("it jumped"), r.offset());
    let r = RecordingReader::open_at_entry_verified(&path, landed, &key().verifying_key()).unwrap();
    assert_eq!((r.landed_on(), r.offset()), (Some(landed), offset));
    assert_eq!(r.events().unwrap().1.len(), n);
    assert!(RecordingReader::open_verified(&path, &key().verifying_key())
        .unwrap()
        .landed_on()
        .is_none());
    let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
    let r = RecordingReader::open_at_verified(&path, middle, &other).unwrap();
    assert!(matches!(r.events(), Err(ReadError::BadSignature { .. })));
    // An entry for a later frame, with its real position and chain hash but an earlier
    // time, would skip what came between in silence: the frame's real first event
    // gives it away.
    let idx_path = session_recordings::format::index_path(&path);
    let real = std::fs::read(&idx_path).unwrap();
    let later = real[8..]
        .chunks(56)
        .find(|e| u64::from_be_bytes(e[16..24].try_into().unwrap()) > middle + 20_000)
        .expect("a frame well after the middle");
    let mut forged = real[..8].to_vec();
    forged.extend_from_slice(&later[..16]);
    forged.extend_from_slice(&0u64.to_be_bytes());
    forged.extend_from_slice(&later[24..]);
    std::fs::write(&idx_path, &forged).unwrap();
    let r = RecordingReader::open_at_verified(&path, middle, &key().verifying_key()).unwrap();
    assert!(r.offset() > 1_000_000, "the forged entry was followed");
    let err = r.events().unwrap_err().to_string();
    assert!(err.contains("seek index does not match"), "{err}");
    std::fs::write(&idx_path, &real).unwrap();
    // A forged index entry breaks the chain instead of yielding data.
    let mut idx = std::fs::read(&idx_path).unwrap();
    let last = idx.len() - 32;
    idx[last] ^= 1;
    std::fs::write(&idx_path, &idx).unwrap();
    let mut r = RecordingReader::open_at(&path, u64::MAX).unwrap();
    assert!(r.next_event().is_err());
}

/// Unmounts the throwaway filesystem, whatever the test's outcome.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_write_error_stops_the_recording_which_then_reads_as_truncated() {
    // A 1 MiB filesystem (tmpfs; the test suite runs as root, as the end-to-end tests do).
    let dir = tmp("enospc").parent().unwrap().join("fs");
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "herse-test-enospc"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs (needs root)");
    let _m = Mounted(dir.clone());
    let path = dir.join("r.herserec");
    let rec = FileRecorder::create(&path, &header(), key()).unwrap();
    let packet = bytes::Bytes::from(vec![b'x'; 32 * 1024]);
    let err = (0..100)
        .find_map(|_| rec.data_shared(0, DataDirection::Output, packet.clone()).err())
        .expect("a 1 MiB filesystem fills up");
    assert!(matches!(err, RecordError::Write(_)), "{err}");
    // Nothing more is written after the failure, whatever the caller tries.
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(matches!(
        rec.data(0, DataDirection::Output, b"more"),
        Err(RecordError::Stopped)
    ));
    assert!(matches!(rec.flush(), Err(RecordError::Stopped)));
    assert!(matches!(rec.finish("done"), Err(RecordError::Stopped)));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    // The file reads as cut short, authenticated up to its checkpoint: never complete,
    // never a spliced frame.
    let v = verify(&std::fs::read(&path).unwrap()).unwrap();
    assert!(
        matches!(v.completeness, Completeness::Truncated { .. }),
        "{:?}",
        v.completeness
    );
}

/// A loop-mounted ext4 that `fsfreeze` can freeze: writes to a frozen filesystem block in
/// the kernel, as on a hung disk or network volume. Thawed and unmounted on drop.
struct Frozen {
    mount: PathBuf,
    image: PathBuf,
}

impl Frozen {
    fn new(name: &str) -> Frozen {
        let base = tmp(name).parent().unwrap().to_owned();
        let (image, mount) = (base.join("fs.img"), base.join("fs"));
        std::fs::create_dir_all(&mount).unwrap();
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(std::process::Command::new("truncate").args(["-s", "32M"]).arg(&image));
        run(std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        Frozen { mount, image }
    }

    fn freeze(&self, frozen: bool) {
        let flag = if frozen { "-f" } else { "-u" };
        let ok = std::process::Command::new("fsfreeze")
            .arg(flag)
            .arg(&self.mount)
            .status()
            .unwrap();
        assert!(ok.success(), "fsfreeze {flag}");
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.mount)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

#[test]
fn a_store_that_stops_answering_fails_the_calls_within_the_stall_limit() {
    let fs = Frozen::new("stall");
    let path = fs.mount.join("r.herserec");
    let limit = std::time::Duration::from_millis(700);
    let rec = FileRecorder::create(&path, &header(), key())
        .unwrap()
        .with_stall_limit(limit);
    rec.data(1, DataDirection::Output, b"before").unwrap();
    rec.flush().unwrap();

    fs.freeze(true);
    // The recording's thread blocks on its first write; the callers fill its queue, and
    // the next call waits no longer than the limit.
    let packet = bytes::Bytes::from(vec![b'x'; 32 * 1024]);
    let start = std::time::Instant::now();
    let err = (0..100_000)
        .find_map(|_| rec.data_shared(1, DataDirection::Output, packet.clone()).err())
        .expect("a frozen store stalls the recorder");
    let waited = start.elapsed();
    assert!(matches!(err, RecordError::Stalled(l) if l == limit), "{err}");
    assert!(waited < limit * 4, "failed after {waited:?}");
    // Every later call fails at once, the seal included.
    let start = std::time::Instant::now();
    assert!(matches!(
        rec.data(1, DataDirection::Output, b"more"),
        Err(RecordError::Stalled(_))
    ));
    assert!(matches!(rec.flush(), Err(RecordError::Stalled(_))));
    assert!(matches!(rec.finish("done"), Err(RecordError::Stalled(_))));
    assert!(start.elapsed() < limit / 2, "{:?}", start.elapsed());

    // The store comes back: what was accepted before the stall is written, and the file
    // reads as cut short (never sealed), authenticated up to its checkpoint.
    fs.freeze(false);
    drop(rec);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let v = loop {
        let v = verify(&std::fs::read(&path).unwrap()).unwrap();
        if v.events > 1 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        matches!(v.completeness, Completeness::Truncated { .. }),
        "{:?}",
        v.completeness
    );
    assert!(v.events > 1, "the records queued before the stall were written");
}

/// A caller that can wait elsewhere (the relay, on a thread other connections share)
/// is told the recording is behind before any call would block, and waits in
/// `await_room` instead: there for at most the stall limit. Recording calls up to then
/// return at once.
#[test]
fn a_recording_that_falls_behind_says_so_before_any_call_blocks() {
    let fs = Frozen::new("behind");
    let path = fs.mount.join("r.herserec");
    let limit = std::time::Duration::from_millis(700);
    let rec = FileRecorder::create(&path, &header(), key())
        .unwrap()
        .with_stall_limit(limit);
    fs.freeze(true);
    let packet = bytes::Bytes::from(vec![b'x'; 32 * 1024]);
    let mut calls = 0;
    let waited = loop {
        if rec.backlogged() {
            // The thread may still take a batch before it blocks on the store.
            let t = std::time::Instant::now();
            match rec.await_room() {
                Ok(()) => {}
                Err(RecordError::Stalled(l)) if l == limit => break t.elapsed(),
                Err(e) => panic!("{e}"),
            }
        }
        let t = std::time::Instant::now();
        rec.data_shared(1, DataDirection::Output, packet.clone()).unwrap();
        assert!(t.elapsed() < limit / 2, "a call waited {:?}", t.elapsed());
        calls += 1;
        assert!(calls < 1000, "never behind");
    };
    assert!(waited >= limit && waited < limit * 3, "{waited:?}");
    fs.freeze(false);
}

#[test]
fn records_from_many_threads_keep_their_order_and_none_lands_after_the_seal() {
    let path = tmp("threads");
    let rec = Arc::new(FileRecorder::create(&path, &header(), key()).unwrap());
    let writers: Vec<_> = (0..4u32)
        .map(|ch| {
            let rec = rec.clone();
            std::thread::spawn(move || {
                let mut n = 0u32;
                while rec.data(ch, DataDirection::Output, &n.to_be_bytes()).is_ok() {
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    rec.finish("done").unwrap();
    let sent: Vec<u32> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let r = RecordingReader::open_verified(&path, &key().verifying_key()).unwrap();
    let mut next = [0u32; 4];
    let mut last_t = 0;
    let mut ended = false;
    let (_, events, truncated) = r.events().unwrap();
    assert!(!truncated);
    for e in events {
        assert!(!ended, "an event after the end: {e:?}");
        assert!(e.t_micros() >= last_t, "time goes forward");
        last_t = e.t_micros();
        match e {
            Event::Data { channel, data, .. } => {
                let n = u32::from_be_bytes(data[..].try_into().unwrap());
                assert_eq!(n, next[channel as usize], "channel {channel} in order");
                next[channel as usize] += 1;
            }
            Event::Meta {
                meta: Meta::End { .. }, ..
            } => ended = true,
            _ => {}
        }
    }
    assert!(ended);
    assert_eq!(next.to_vec(), sent, "every accepted record is in the recording");
}
