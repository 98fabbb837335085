//! Where a recording's bytes go, and how they reach the file.
//!
//! Two modes, chosen by the rate a recording is written at:
//! - **Buffered** (the start, and any quiet session): writes through the page cache,
//!   with write-behind: every [`WRITE_BEHIND_STEP`] the pages already written back are
//!   dropped and writeback of the new ones is started (see [`drop_from_cache`]).
//! - **Direct** (bulk: at least [`DIRECT_AFTER`] within one flush interval): bytes are
//!   copied into 1 MiB staging buffers aligned for `O_DIRECT`, and a writer thread of
//!   this recording writes each full buffer with direct I/O, while the relay fills the
//!   other. On ext4 a buffered write costs a page allocation, a delayed-allocation
//!   reservation and buffer heads per 4 KiB page: measured here 0.37 to 0.48 CPU-s per
//!   GiB with write-behind, against 0.09 to 0.11 for direct writes of 1 MiB including the
//!   copy into the staging buffer. At a flush the partial buffer's new bytes go through
//!   the page cache (the file then holds every byte appended, and nothing else), after
//!   the writer thread is drained so the file never has a hole; when the buffer fills,
//!   the direct write covers them again, and the kernel keeps the two coherent.
//!
//! A session that slows down (less than [`DIRECT_KEEP`] in a flush interval) goes back
//! to buffered writes and frees its staging buffers and writer thread, so an idle
//! terminal session holds none. At most [`MAX_DIRECT`] recordings of the process are in
//! direct mode at once (2 MiB of buffers and a thread each); others wait their turn in
//! buffered mode, so many clients pushing bulk at once cannot grow the gateway's memory
//! or thread count beyond that. A filesystem without direct I/O (tmpfs, some network
//! filesystems), or whose alignment needs more than 4 KiB, stays buffered.
//!
//! Errors from either path come back as `io::Error` from the next call: the recorder
//! then stops, and the session with it.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// Buffered mode: how much is written between two write-behind steps; small enough that
/// the pages dropped one step are reused, still warm, by the next.
pub(crate) const WRITE_BEHIND_STEP: u64 = 8 << 20;
/// Bytes appended within one flush interval that switch a recording to direct writes.
pub(crate) const DIRECT_AFTER: u64 = 4 << 20;
/// A recording in direct mode that appends less than this in a flush interval goes back
/// to buffered writes.
pub(crate) const DIRECT_KEEP: u64 = 1 << 20;
/// Size of a staging buffer, and of each direct write (smaller writes cost more per
/// byte: 0.24 CPU-s/GiB at 256 KiB against 0.10 at 1 MiB here).
const STAGING: usize = 1 << 20;
/// Alignment of direct I/O buffers and offsets we provide.
const ALIGN: usize = 4096;
/// Recordings in direct mode at once, in this process.
pub(crate) const MAX_DIRECT: usize = 64;
static DIRECT_NOW: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_DIRECT`] places in direct mode, given back when dropped.
struct DirectSlot;

impl DirectSlot {
    fn take() -> Option<DirectSlot> {
        DIRECT_NOW
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_DIRECT).then_some(n + 1)
            })
            .ok()
            .map(|_| DirectSlot)
    }
}

impl Drop for DirectSlot {
    fn drop(&mut self) {
        DIRECT_NOW.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) struct Sink {
    /// The recording, opened for buffered reads and writes.
    file: File,
    /// The same file opened with `O_DIRECT`; `None` where the filesystem has no direct
    /// I/O with our alignment.
    direct_fd: Option<Arc<File>>,
    /// Bytes appended so far: the recording's length once flushed.
    len: u64,
    /// `len` at the last flush (the rate that picks the mode).
    len_at_flush: u64,
    /// Buffered mode's write-behind: dropped from the cache / writeback started below.
    dropped: u64,
    kicked: u64,
    direct: Option<Direct>,
}

/// Direct mode's state: the staging buffer being filled covers the file's bytes
/// `base..base + fill`.
struct Direct {
    buf: Staging,
    base: u64,
    fill: usize,
    /// Bytes of `buf[..fill]` already in the file (written buffered at a flush).
    in_file: usize,
    spare: Option<Staging>,
    writer: Writer,
    /// Buffers sent to the writer and not yet back (at most one).
    in_flight: usize,
    _slot: DirectSlot,
}

impl Sink {
    /// `file` is the recording just created (read and write), empty.
    pub(crate) fn new(file: File, path: &Path) -> Self {
        let direct_fd = open_direct(&file, path).map(Arc::new);
        Sink {
            file,
            direct_fd,
            len: 0,
            len_at_flush: 0,
            dropped: 0,
            kicked: 0,
            direct: None,
        }
    }

    /// Bytes appended so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// True while bulk data goes through staging buffers and direct writes.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Append `bufs`, in order.
    pub(crate) fn append(&mut self, bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
        if self.direct.is_none() && self.direct_fd.is_some() && self.len - self.len_at_flush >= DIRECT_AFTER {
            self.enter_direct()?;
        }
        match &mut self.direct {
            Some(d) => {
                for b in bufs.iter() {
                    d.copy_in(b)?;
                    self.len += b.len() as u64;
                }
            }
            None => {
                let n: usize = bufs.iter().map(|b| b.len()).sum();
                write_all_vectored(&mut self.file, bufs)?;
                self.len += n as u64;
                self.write_behind();
            }
        }
        Ok(())
    }

    /// Everything appended is in the file (in the page cache or on disk) when this
    /// returns; a session that slowed down leaves direct mode.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        if let Some(d) = &mut self.direct {
            d.write_tail(&self.file)?;
            if self.len - self.len_at_flush < DIRECT_KEEP {
                self.leave_direct()?;
            }
        }
        self.len_at_flush = self.len;
        Ok(())
    }

    /// Flush, and stop the writer thread: nothing more is appended.
    pub(crate) fn close(&mut self) -> std::io::Result<()> {
        if let Some(d) = &mut self.direct {
            d.write_tail(&self.file)?;
        }
        self.leave_direct()
    }

    /// A second descriptor of the file, to sync it outside the caller's lock.
    pub(crate) fn sync_handle(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Sync the file (the caller's last step) and drop it from the page cache.
    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        drop_from_cache(&self.file, self.dropped, self.len);
        self.dropped = self.len;
        Ok(())
    }

    /// Everything below `to` was synced (through [`Self::sync_handle`]) and dropped.
    pub(crate) fn synced(&mut self, to: u64) {
        self.dropped = self.dropped.max(to);
    }

    /// The offset from which the page cache may still hold this file's pages.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    fn enter_direct(&mut self) -> std::io::Result<()> {
        let Some(fd) = self.direct_fd.clone() else {
            return Ok(());
        };
        let Some(slot) = DirectSlot::take() else {
            // Every place is taken: buffered, and asked again at the next append.
            return Ok(());
        };
        // The staging buffer starts at the block holding the end of the file; the bytes
        // of that block already written are read back into it.
        let base = self.len - self.len % ALIGN as u64;
        let fill = (self.len - base) as usize;
        let mut buf = Staging::new();
        self.file.read_exact_at(&mut buf.bytes_mut()[..fill], base)?;
        let Ok(writer) = Writer::spawn(fd) else {
            // No thread to spare: this recording stays buffered, as slow as before but
            // whole.
            self.direct_fd = None;
            return Ok(());
        };
        self.direct = Some(Direct {
            buf,
            base,
            fill,
            in_file: fill,
            spare: None,
            writer,
            in_flight: 0,
            _slot: slot,
        });
        Ok(())
    }

    /// Back to buffered writes; the caller wrote the tail.
    fn leave_direct(&mut self) -> std::io::Result<()> {
        if let Some(mut d) = self.direct.take() {
            d.drain()?;
            d.writer.stop();
            // Buffered writes go on at the end (direct and tail writes are positional).
            self.file.seek(SeekFrom::Start(self.len))?;
            // Write-behind resumes from here; what the direct writes covered is not in
            // the cache.
            self.kicked = self.len;
        }
        Ok(())
    }

    /// Every [`WRITE_BEHIND_STEP`] bytes: drop the pages written back since the last
    /// step (and any left behind since the last checkpoint), and start writing back the
    /// step just written (see [`drop_from_cache`] for why). A checkpoint's sync and drop
    /// catch whatever was still under writeback.
    fn write_behind(&mut self) {
        if self.len < self.kicked + WRITE_BEHIND_STEP {
            return;
        }
        // Never the sync's business: this neither waits nor claims anything is on
        // disk. DONTNEED starts writeback of dirty pages and drops clean ones.
        drop_from_cache(&self.file, self.dropped, self.kicked);
        drop_from_cache(&self.file, self.kicked, self.len);
        self.kicked = self.len;
    }
}

impl Direct {
    fn copy_in(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let n = (STAGING - self.fill).min(data.len());
            self.buf.bytes_mut()[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.fill == STAGING {
                self.submit()?;
            }
        }
        Ok(())
    }

    /// Hand the full buffer to the writer and continue in the other one (waiting for it
    /// if it is still being written: that is the backpressure on a slow disk).
    fn submit(&mut self) -> std::io::Result<()> {
        let next = match self.spare.take() {
            Some(b) => b,
            None if self.in_flight == 0 => Staging::new(),
            None => self.wait_one()?,
        };
        let full = std::mem::replace(&mut self.buf, next);
        self.writer.send(full, self.base)?;
        self.in_flight += 1;
        self.base += STAGING as u64;
        self.fill = 0;
        self.in_file = 0;
        Ok(())
    }

    fn wait_one(&mut self) -> std::io::Result<Staging> {
        let b = self.writer.wait()?;
        self.in_flight -= 1;
        Ok(b)
    }

    /// Wait until every direct write sent is done.
    fn drain(&mut self) -> std::io::Result<()> {
        while self.in_flight > 0 {
            let b = self.wait_one()?;
            self.spare = Some(b);
        }
        Ok(())
    }

    /// Write the partial buffer's new bytes through the page cache, after every direct
    /// write before them is done (no hole in the file, even for a moment).
    fn write_tail(&mut self, file: &File) -> std::io::Result<()> {
        self.drain()?;
        if self.in_file < self.fill {
            let at = self.base + self.in_file as u64;
            file.write_all_at(&self.buf.bytes()[self.in_file..self.fill], at)?;
            self.in_file = self.fill;
        }
        Ok(())
    }
}

/// A buffer of [`STAGING`] bytes at an address aligned to [`ALIGN`].
struct Staging {
    raw: Vec<u8>,
    start: usize,
}

impl Staging {
    fn new() -> Self {
        let raw = vec![0u8; STAGING + ALIGN];
        let addr = raw.as_ptr() as usize;
        let start = (ALIGN - addr % ALIGN) % ALIGN;
        Staging { raw, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + STAGING]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + STAGING]
    }
}

/// The recording's writer thread: writes full staging buffers with direct I/O, in the
/// order sent, and sends each buffer back (or the error) when done.
struct Writer {
    jobs: Option<SyncSender<(Staging, u64)>>,
    done: Receiver<std::io::Result<Staging>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn spawn(fd: Arc<File>) -> std::io::Result<Self> {
        let (jobs, todo) = sync_channel::<(Staging, u64)>(1);
        let (done_tx, done) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("herse-rec-io".into())
            .stack_size(64 << 10)
            .spawn(move || {
                for (buf, at) in todo {
                    let r = fd.write_all_at(buf.bytes(), at).map(|()| buf);
                    let failed = r.is_err();
                    if done_tx.send(r).is_err() || failed {
                        break;
                    }
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    fn send(&self, buf: Staging, at: u64) -> std::io::Result<()> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send((buf, at)).ok())
            .ok_or_else(writer_gone)
    }

    fn wait(&self) -> std::io::Result<Staging> {
        self.done.recv().map_err(|_| writer_gone())?
    }

    /// End the thread; the caller drained it, so it is waiting for work and ends at once.
    fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    /// Without [`Writer::stop`] (a recording abandoned after an error): the thread ends
    /// after its last write, unwaited.
    fn drop(&mut self) {
        self.jobs = None;
    }
}

fn writer_gone() -> std::io::Error {
    std::io::Error::other("the recording's writer thread stopped")
}

/// The recording opened a second time with `O_DIRECT`, if its filesystem supports direct
/// I/O at our alignment; checked to be the same file.
fn open_direct(file: &File, path: &Path) -> Option<File> {
    use rustix::fs::{statx, AtFlags, OFlags, StatxFlags};
    let st = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    let (mem, off) = (st.stx_dio_mem_align as usize, st.stx_dio_offset_align as usize);
    if !StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN)
        || mem == 0
        || off == 0
        || !ALIGN.is_multiple_of(mem)
        || !ALIGN.is_multiple_of(off)
    {
        return None;
    }
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(OFlags::DIRECT.bits() as i32)
        .open(path)
        .ok()?;
    let (a, b) = (file.metadata().ok()?, direct.metadata().ok()?);
    (a.dev() == b.dev() && a.ino() == b.ino()).then_some(direct)
}

/// Drop the bytes `from..to` of a recording from the page cache: clean pages leave it,
/// dirty ones are queued for writeback (and left for a later call).
///
/// A recording is written once and read again, if ever, long after; keeping it cached
/// only evicts pages that are useful. On virtual machines that hand freed memory back
/// to the host (free page reporting, DAMON), it also makes every recorded byte land on
/// a page the host must fault in again, measured here at about 4 s of system time per
/// GiB; pages dropped every write-behind step are reused warm by the next step's
/// writes. Only clean pages are dropped, so this never loses data; it is a hint, and
/// its failure changes nothing but the cache (a writeback error still reaches the next
/// checkpoint's sync, which stops the recording).
pub(crate) fn drop_from_cache(file: &File, from: u64, to: u64) {
    let page = rustix::param::page_size() as u64;
    let from = from - from % page;
    if let Some(len) = to.checked_sub(from).filter(|&n| n > 0) {
        let _ = rustix::fs::fadvise(file, from, std::num::NonZeroU64::new(len), rustix::fs::Advice::DontNeed);
    }
}

/// `write_all` for several buffers at once (std's `write_all_vectored` is unstable).
fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte `i` of the test stream.
    fn byte(i: u64) -> u8 {
        (i.wrapping_mul(2_654_435_761) >> 13) as u8
    }

    struct Stream {
        next: u64,
        rng: u64,
    }

    impl Stream {
        /// Append `n` bytes in pieces of varying sizes, three slices per call.
        fn append(&mut self, sink: &mut Sink, n: u64) -> std::io::Result<()> {
            let end = self.next + n;
            while self.next < end {
                let mut bufs = Vec::new();
                for _ in 0..3 {
                    self.rng ^= self.rng << 13;
                    self.rng ^= self.rng >> 7;
                    self.rng ^= self.rng << 17;
                    let len = (self.rng % 70_000).min(end - self.next);
                    bufs.push((self.next..self.next + len).map(byte).collect::<Vec<u8>>());
                    self.next += len;
                }
                let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
                sink.append(&mut slices)?;
            }
            Ok(())
        }
    }

    /// Tests that need direct mode, or fill its places, run one at a time.
    static DIRECT_PLACES: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn temp(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("herse-sink-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    fn assert_file_is(path: &Path, n: u64) {
        let got = std::fs::read(path).unwrap();
        assert_eq!(
            got.len() as u64,
            n,
            "the file holds every byte appended, and nothing else"
        );
        if let Some(i) = (0..n).find(|&i| got[i as usize] != byte(i)) {
            panic!("byte {i} differs");
        }
    }

    /// Needs a disk-backed temp dir with direct I/O (ext4 or xfs; not tmpfs), like the
    /// page-cache test of the format.
    #[test]
    fn bulk_goes_direct_and_every_flush_leaves_the_whole_stream_in_the_file() {
        let _one = DIRECT_PLACES.lock().unwrap_or_else(|p| p.into_inner());
        let (path, file) = temp("modes");
        let mut sink = Sink::new(file, &path);
        assert!(sink.direct_fd.is_some(), "the temp dir's filesystem has direct I/O");
        let mut s = Stream {
            next: 0,
            rng: 88_172_645,
        };
        // A quiet start stays buffered.
        s.append(&mut sink, 100_000).unwrap();
        sink.flush().unwrap();
        assert!(!sink.is_direct());
        assert_file_is(&path, s.next);
        // Bulk switches to direct writes from an unaligned length (the partial block
        // is read back), and a flush puts the partial staging buffer in the file.
        s.append(&mut sink, 6 << 20).unwrap();
        assert!(sink.is_direct());
        sink.flush().unwrap();
        assert_file_is(&path, s.next);
        assert!(sink.is_direct(), "still busy");
        // Tails written twice (at flushes, then by the full buffer's direct write).
        for _ in 0..3 {
            s.append(&mut sink, 1_500_000).unwrap();
            sink.flush().unwrap();
            assert_file_is(&path, s.next);
        }
        // A quiet interval goes back to buffered writes, at the right offset.
        s.append(&mut sink, 10_000).unwrap();
        sink.flush().unwrap();
        assert!(!sink.is_direct());
        s.append(&mut sink, 50_000).unwrap();
        sink.flush().unwrap();
        assert_file_is(&path, s.next);
        s.append(&mut sink, 5 << 20).unwrap();
        assert!(sink.is_direct());
        sink.close().unwrap();
        sink.sync().unwrap();
        assert!(!sink.is_direct());
        assert_file_is(&path, s.next);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn direct_mode_has_a_bounded_number_of_places() {
        let _one = DIRECT_PLACES.lock().unwrap_or_else(|p| p.into_inner());
        let taken: Vec<DirectSlot> = std::iter::from_fn(DirectSlot::take).take(MAX_DIRECT + 1).collect();
        assert_eq!(taken.len(), MAX_DIRECT);
        let (path, file) = temp("places");
        let mut sink = Sink::new(file, &path);
        assert!(sink.direct_fd.is_some(), "the temp dir's filesystem has direct I/O");
        let mut s = Stream { next: 0, rng: 7 };
        s.append(&mut sink, 6 << 20).unwrap();
        assert!(!sink.is_direct(), "no place: still buffered");
        drop(taken);
        s.append(&mut sink, 1 << 20).unwrap();
        assert!(sink.is_direct(), "a place came free");
        sink.close().unwrap();
        assert_eq!(DIRECT_NOW.load(Ordering::Acquire), 0, "the place is given back");
        assert_file_is(&path, s.next);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn without_direct_io_writes_are_buffered_with_write_behind() {
        let (path, file) = temp("buffered");
        let mut sink = Sink::new(file, &path);
        sink.direct_fd = None;
        let mut s = Stream {
            next: 0,
            rng: 2_463_534_242,
        };
        s.append(&mut sink, 20 << 20).unwrap();
        assert!(!sink.is_direct());
        assert!(sink.kicked >= 16 << 20, "write-behind ran: {}", sink.kicked);
        sink.close().unwrap();
        sink.sync().unwrap();
        assert_eq!(sink.dropped(), s.next);
        assert_file_is(&path, s.next);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_failed_direct_write_comes_back_as_an_error() {
        let _one = DIRECT_PLACES.lock().unwrap_or_else(|p| p.into_inner());
        let (path, file) = temp("fails");
        let mut sink = Sink::new(file, &path);
        // A descriptor that cannot write: the writer thread's first write fails.
        sink.direct_fd = Some(Arc::new(File::open(&path).unwrap()));
        let mut s = Stream { next: 0, rng: 1 };
        let r = s.append(&mut sink, 8 << 20).and_then(|()| sink.flush());
        assert!(r.is_err(), "the error reaches the recorder");
        let _ = std::fs::remove_file(&path);
    }
}
