//! Any bytes given to the recording reader and verifier: an error or a result, never a
//! panic, a hang or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_recordings::RecordingReader;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
    if let Ok(r) = RecordingReader::new(data, Some(key)) {
        let _ = r.verify();
    }
    if let Ok(r) = RecordingReader::new(data, None) {
        let _ = r.events();
    }
});
