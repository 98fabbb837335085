//! Benchmark for the recording format (run by bench/recordings.sh, release build):
//! writer throughput and memory, and the time to reach the middle of a large recording
//! through the seek index versus a scan.
//!
//! Usage: seek_bench DIR [SIZE_MIB]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use session_recordings::*;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: seek_bench DIR [SIZE_MIB]"));
    let mib: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let path = dir.join("bench.herserec");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(format::index_path(&path));
    let header = Header {
        session_id: "0123456789abcdef0123456789abcdef".into(),
        user: "bench".into(),
        client_addr: "127.0.0.1:1".into(),
        workstation: None,
        target: "t".into(),
        target_addr: "127.0.0.1:22".into(),
        tier: "bench".into(),
        login: "bench".into(),
        role: "bench".into(),
        grant: None,
        decision: "bench".into(),
        started_at_micros: 0,
        previous: None,
        signing_key: String::new(),
        encryption: None,
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
    // One record per 32 KiB packet, 1 ms apart (recording time).
    let clock = Arc::new(AtomicU64::new(0));
    let c = clock.clone();
    let rec = FileRecorder::create_with_clock(
        &path,
        &header,
        key.clone(),
        Box::new(move || c.fetch_add(1_000, Ordering::Relaxed)),
    )
    .unwrap();
    let block = vec![b'x'; 32 * 1024];
    let records = mib * 32;
    let rss_before = rss_kib("VmRSS:");
    let t0 = Instant::now();
    for i in 0..records {
        rec.data(0, DataDirection::Output, &block).unwrap();
        if i % 1024 == 0 {
            rec.flush().unwrap();
        }
    }
    rec.finish("bench").unwrap();
    let write_s = t0.elapsed().as_secs_f64();
    let rss_peak = rss_kib("VmHWM:");
    let middle = records / 2 * 1_000;

    let t1 = Instant::now();
    let mut r = RecordingReader::open_at(&path, middle).unwrap();
    let mut first = r.next_event().unwrap().unwrap();
    while first.t_micros() < middle {
        first = r.next_event().unwrap().unwrap();
    }
    let seek_ms = t1.elapsed().as_secs_f64() * 1e3;

    let t2 = Instant::now();
    let mut r = RecordingReader::open(&path).unwrap();
    loop {
        let e = r.next_event().unwrap().unwrap();
        if e.t_micros() >= middle {
            break;
        }
    }
    let scan_ms = t2.elapsed().as_secs_f64() * 1e3;

    let t3 = Instant::now();
    let v = RecordingReader::open_verified(&path, &key.verifying_key())
        .unwrap()
        .verify()
        .unwrap();
    let verify_s = t3.elapsed().as_secs_f64();
    assert!(matches!(v.completeness, Completeness::Complete { .. }));
    println!("| recording size | {mib} MiB |");
    println!(
        "| write (hash chain + checkpoints) | {:.0} MiB/s |",
        mib as f64 / write_s
    );
    println!(
        "| writer memory growth over the whole recording | {} KiB (RSS before {} KiB, peak {} KiB) |",
        rss_peak.saturating_sub(rss_before),
        rss_before,
        rss_peak
    );
    println!("| seek to the middle with the index | {seek_ms:.2} ms |");
    println!("| reach the middle by scanning | {scan_ms:.0} ms |");
    println!(
        "| verify the whole recording | {verify_s:.2} s ({:.0} MiB/s) |",
        mib as f64 / verify_s
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(format::index_path(&path));
}
