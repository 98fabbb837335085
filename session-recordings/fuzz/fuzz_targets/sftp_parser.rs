//! Any byte stream, in any split, through the SFTP framer, parsers and audit tracker, in
//! both directions, and through the legacy scp command parser and stream follower.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_recordings::sftp::{parse_request, parse_response, Framer};
use session_recordings::scp::{parse_command, ScpCommand, ScpDirection, ScpTracker};
use session_recordings::sftp_audit::SftpAudit;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut audit = SftpAudit::default();
    let mut inbound = Framer::default();
    let mut outbound = Framer::default();
    for (i, piece) in rest.chunks(usize::from(split).max(1)).enumerate() {
        let framer = if i % 2 == 0 { &mut inbound } else { &mut outbound };
        framer.push(piece);
        loop {
            match framer.next_packet() {
                Ok(Some(p)) => {
                    if i % 2 == 0 {
                        if let Ok(r) = parse_request(&p) {
                            let _ = r.to_string();
                            let _ = audit.request(&r);
                        }
                    } else if let Ok(r) = parse_response(&p) {
                        let _ = audit.response(&r);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = audit.finish();
    let _ = parse_command(&String::from_utf8_lossy(rest));
    let mut scp = ScpTracker::new(ScpCommand {
        direction: if split % 2 == 0 { ScpDirection::Upload } else { ScpDirection::Download },
        path: if split % 4 < 2 { "/t".into() } else { "/t/".into() },
        into_directory: split % 8 < 4,
        recursive: split % 16 < 8,
    });
    for (i, piece) in rest.chunks(usize::from(split).max(1)).enumerate() {
        let _ = if i % 3 == 2 { scp.answer(piece) } else { scp.feed(piece) };
    }
});
