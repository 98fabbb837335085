//! Reading a recording while the gateway is still writing it (live view).

use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A file read like `tail -f`: at the end it waits for more bytes instead of returning
/// end-of-file, until `stop` is set (the writer is gone).
pub struct TailFile {
    file: File,
    stop: Arc<AtomicBool>,
    poll: Duration,
}

impl TailFile {
    pub fn new(file: File, stop: Arc<AtomicBool>) -> Self {
        TailFile {
            file,
            stop,
            poll: Duration::from_millis(100),
        }
    }
}

impl Read for TailFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.file.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            if self.stop.load(Ordering::Acquire) {
                return Ok(0);
            }
            std::thread::sleep(self.poll);
        }
    }
}
