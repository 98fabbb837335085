//! Finding recordings: the metadata filters of `recordings list` and the text scan behind
//! `--contains` and `recordings search`. Runs where the recordings are (the gateway, or
//! `hersectl` in local mode), so a remote auditor gets the same answers as a local one.
//!
//! The scan reads each recording whole; encrypted ones are read only with identities
//! the process was given (the gateway has none: it cannot read encrypted tiers, by
//! design), and are otherwise reported as skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use session_recordings::{DataDirection, Event, Meta, ReadError, RecordingReader};

use crate::store::{SessionRow, Store, StoreError};

/// Most rows or hits one query returns.
pub const MAX_RESULTS: i64 = 10_000;
/// Longest search text (characters).
pub const MAX_NEEDLE: usize = 1000;

/// `recordings list` filters; times are Unix microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    pub tier: Option<String>,
    /// Workstation name, or a prefix of the client address.
    pub workstation: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Terminal text, commands or SFTP paths containing this.
    pub contains: Option<String>,
    pub limit: i64,
}

impl RecordingFilter {
    /// The metadata part of the filter (everything but `contains`). Purged recordings never
    /// match.
    pub fn keeps(&self, s: &SessionRow) -> bool {
        self.user.as_ref().is_none_or(|u| &s.user == u)
            && self.target.as_ref().is_none_or(|t| &s.target == t)
            && self.tier.as_ref().is_none_or(|t| &s.tier == t)
            && self
                .workstation
                .as_ref()
                .is_none_or(|w| s.workstation.as_deref() == Some(w.as_str()) || s.client_addr.starts_with(w.as_str()))
            && self.since.is_none_or(|t| s.started_at >= t)
            && self.until.is_none_or(|t| s.started_at < t)
            && s.purged_at.is_none()
    }
}

/// `recordings search`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    pub text: String,
    pub user: Option<String>,
    pub target: Option<String>,
    pub limit: i64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Hit {
    pub session: String,
    pub user: String,
    pub target: String,
    pub at_seconds: f64,
    pub snippet: String,
}

/// A recording the scan could not read (encrypted without an identity, damaged, gone).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub session: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SearchResult {
    pub hits: Vec<Hit>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Identity(String),
}

fn limit(l: i64) -> Result<usize, QueryError> {
    if l < 1 {
        return Err(QueryError::Input("--limit must be at least 1".into()));
    }
    Ok(l.min(MAX_RESULTS) as usize)
}

fn needle(text: &str) -> Result<(), QueryError> {
    if text.is_empty() || text.chars().count() > MAX_NEEDLE {
        return Err(QueryError::Input(format!(
            "the search text must have 1 to {MAX_NEEDLE} characters"
        )));
    }
    Ok(())
}

/// The identities in these age identity files (an auditor's, in local mode).
fn identities(files: &[PathBuf]) -> Result<Vec<Box<dyn age::Identity>>, QueryError> {
    let mut ids = Vec::new();
    for p in files {
        ids.extend(
            session_recordings::crypt::load_identities(p)
                .map_err(|e| QueryError::Identity(format!("{}: {e}", p.display())))?,
        );
    }
    Ok(ids)
}

/// Open a recording for its events, unlocking it with `ids` when encrypted.
pub fn open_events(
    path: &Path,
    ids: &[Box<dyn age::Identity>],
) -> Result<RecordingReader<std::io::BufReader<std::fs::File>>, ReadError> {
    let mut r = RecordingReader::open(path)?;
    if r.header().encryption.is_some() {
        if ids.is_empty() {
            return Err(ReadError::Encrypted);
        }
        r.unlock(ids)?;
    }
    Ok(r)
}

/// Recordings matching `f`, newest first.
pub async fn list(
    store: &Store,
    f: &RecordingFilter,
    identity_files: &[PathBuf],
) -> Result<Vec<SessionRow>, QueryError> {
    let max = limit(f.limit)?;
    if let Some(t) = &f.contains {
        needle(t)?;
    }
    let Some(text) = f.contains.clone() else {
        // Page by page until `max` rows match, not the whole table per call.
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = store.sessions_page(false, ROWS_PAGE, after.as_ref()).await?;
            let last_page = (page.len() as i64) < ROWS_PAGE;
            after = page.last().map(SessionRow::cursor);
            let room = max - out.len();
            out.extend(page.into_iter().filter(|s| f.keeps(s)).take(room));
            if last_page || out.len() >= max {
                return Ok(out);
            }
        }
    };
    let files = identity_files.to_vec();
    let (store, f) = (store.clone(), f.clone());
    let rt = tokio::runtime::Handle::current();
    blocking(move |gone| {
        let ids = identities(&files)?;
        let mut out = Vec::new();
        for s in Rows::new(store, rt) {
            let s = s?;
            if !f.keeps(&s) {
                continue;
            }
            gone.check()?;
            if hits(Path::new(&s.recording), &text, 1, &ids, gone).is_ok_and(|h| !h.is_empty()) {
                out.push(s);
                if out.len() >= max {
                    break;
                }
            }
        }
        Ok(out)
    })
    .await
}

/// Every place `q.text` occurs, newest recording first, at most `q.limit` hits.
pub async fn search(store: &Store, q: &SearchQuery, identity_files: &[PathBuf]) -> Result<SearchResult, QueryError> {
    let max = limit(q.limit)?;
    needle(&q.text)?;
    let files = identity_files.to_vec();
    let (store, q) = (store.clone(), q.clone());
    let rt = tokio::runtime::Handle::current();
    blocking(move |gone| {
        let ids = identities(&files)?;
        let text = &q.text;
        let mut r = SearchResult::default();
        for s in Rows::new(store, rt) {
            let s = s?;
            let keep = s.purged_at.is_none()
                && q.user.as_ref().is_none_or(|u| &s.user == u)
                && q.target.as_ref().is_none_or(|t| &s.target == t);
            if !keep {
                continue;
            }
            gone.check()?;
            let left = max.saturating_sub(r.hits.len());
            if left == 0 {
                break;
            }
            match hits(Path::new(&s.recording), text, left, &ids, gone) {
                Ok(h) => r.hits.extend(h.into_iter().map(|(t, snippet)| Hit {
                    session: s.id.clone(),
                    user: s.user.clone(),
                    target: s.target.clone(),
                    at_seconds: t as f64 / 1e6,
                    snippet,
                })),
                Err(e) => r.skipped.push(Skipped {
                    session: s.id.clone(),
                    error: e.to_string(),
                }),
            }
        }
        Ok(r)
    })
    .await
}

/// Session rows read per query while listing or scanning.
const ROWS_PAGE: i64 = 1000;

/// Every session row, newest first, read a page at a time by a scan on its blocking
/// thread once it has its turn: a scan never holds the whole table, and callers waiting
/// for the turn hold nothing.
struct Rows {
    store: Store,
    rt: tokio::runtime::Handle,
    after: Option<crate::store::SessionCursor>,
    page: std::vec::IntoIter<SessionRow>,
    done: bool,
}

impl Rows {
    fn new(store: Store, rt: tokio::runtime::Handle) -> Rows {
        Rows {
            store,
            rt,
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        }
    }
}

impl Iterator for Rows {
    type Item = Result<SessionRow, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.page.next() {
                return Some(Ok(row));
            }
            if self.done {
                return None;
            }
            let page = self
                .rt
                .block_on(self.store.sessions_page(false, ROWS_PAGE, self.after.as_ref()));
            match page {
                Ok(page) => {
                    self.done = (page.len() as i64) < ROWS_PAGE;
                    self.after = page.last().map(SessionRow::cursor);
                    self.page = page.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Text scans running at once in this process. A scan reads every recording whole
/// (gigabytes, at a core's speed); without a bound, a few concurrent searches would take
/// every core from the sessions being relayed. Further scans wait their turn, for a
/// minute at most.
static SCANS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Set once the caller of a scan went away (its future was dropped: the client hung up
/// or gave up): the scan stops at its next check rather than reading on for nobody while
/// it holds the one turn.
#[derive(Clone, Default)]
pub struct Abandoned {
    set: Arc<AtomicBool>,
    /// A check found it set, so the scan stopped short.
    stopped: Arc<AtomicBool>,
}

impl Abandoned {
    /// Whether the caller went away; the scan stops short if so.
    pub fn stop_here(&self) -> bool {
        let gone = self.set.load(Ordering::Relaxed);
        if gone {
            self.stopped.store(true, Ordering::Relaxed);
        }
        gone
    }

    fn check(&self) -> Result<(), QueryError> {
        if self.stop_here() {
            return Err(QueryError::Input(
                "the recording scan was abandoned by its caller".into(),
            ));
        }
        Ok(())
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// Sets its [`Abandoned`] when dropped: with the caller's future, whether it finished or
/// was cancelled.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Reading recordings is file I/O and CPU: off the async threads, one scan at a time,
/// stopped when its caller goes away.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce(&Abandoned) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, QueryError> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);
    let turn = match tokio::time::timeout(WAIT, SCANS.acquire()).await {
        Ok(Ok(turn)) => turn,
        Ok(Err(_)) => return Err(QueryError::Input("recording scans are shut down".into())),
        Err(_) => {
            return Err(QueryError::Input(
                "another recording scan has been running for a minute; try again later".into(),
            ))
        }
    };
    // The turn ends with the scan itself, not with this future; a caller that goes away
    // makes the scan stop at its next check (per recording, and every few hundred events).
    let gone = Abandoned::default();
    let _set_when_gone = SetOnDrop(gone.set.clone());
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let r = f(&gone);
        if gone.stopped() {
            tracing::info!("a recording scan stopped early: its caller went away");
        }
        r
    })
    .await
    .map_err(|e| QueryError::Input(format!("recording scan failed: {e}")))?
}

/// Where `needle` occurs in a recording: (time, snippet), at most `limit`. Text split
/// across two data events of one channel and direction is still found. Stops early,
/// with the hits so far, once `gone` is set.
pub fn hits(
    path: &Path,
    needle: &str,
    limit: usize,
    ids: &[Box<dyn age::Identity>],
    gone: &Abandoned,
) -> Result<Vec<(u64, String)>, ReadError> {
    /// Events read between two looks at `gone`.
    const CHECK_EVERY: u32 = 256;
    let mut reader = open_events(path, ids)?;
    let mut out = Vec::new();
    let mut tails: HashMap<Stream, String> = HashMap::new();
    let keep = needle.chars().count().saturating_sub(1);
    let mut read = 0u32;
    while let Some(e) = reader.next_event()? {
        read = read.wrapping_add(1);
        if read.is_multiple_of(CHECK_EVERY) && gone.stop_here() {
            break;
        }
        let Some((t, text, key)) = searchable(&e) else { continue };
        let joined = match key {
            Some(k) => {
                let tail = tails.entry(k).or_default();
                let joined = format!("{tail}{text}");
                *tail = last_chars(&joined, keep);
                joined
            }
            None => text,
        };
        if let Some(i) = joined.find(needle) {
            out.push((t, snippet(&joined, i)));
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// A data stream: (channel, is input).
type Stream = (u32, bool);

/// The names an event holds, as one text: each name's text and, for one that is not
/// UTF-8, its bytes in hex, so that a search can find either.
fn names(parts: &[Option<&String>]) -> String {
    parts.iter().flatten().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
}

/// The text an event offers to a search, with its time and, for data, its stream.
fn searchable(e: &Event) -> Option<(u64, String, Option<Stream>)> {
    match e {
        Event::Data {
            t_micros,
            channel,
            direction,
            data,
        } => Some((
            *t_micros,
            strip_ansi(&String::from_utf8_lossy(data)),
            Some((*channel, *direction == DataDirection::Input)),
        )),
        Event::Meta {
            t_micros,
            meta: Meta::Exec { command, command_hex },
            ..
        } => Some((*t_micros, names(&[Some(command), command_hex.as_ref()]), None)),
        Event::Meta {
            t_micros,
            meta:
                Meta::SftpOp {
                    path,
                    path_hex,
                    target,
                    target_hex,
                    ..
                },
            ..
        } => Some((
            *t_micros,
            names(&[Some(path), path_hex.as_ref(), target.as_ref(), target_hex.as_ref()]),
            None,
        )),
        Event::Meta {
            t_micros,
            meta:
                Meta::FileTransfer {
                    path,
                    path_hex,
                    sent_as,
                    sent_as_hex,
                    ..
                },
            ..
        } => Some((
            *t_micros,
            names(&[Some(path), path_hex.as_ref(), sent_as.as_ref(), sent_as_hex.as_ref()]),
            None,
        )),
        _ => None,
    }
}

fn last_chars(s: &str, n: usize) -> String {
    let start = s.char_indices().rev().nth(n.saturating_sub(1)).map_or(0, |(i, _)| i);
    if n == 0 {
        return String::new();
    }
    s[start..].to_owned()
}

/// About 30 characters before the match, 80 in all, on one line.
fn snippet(joined: &str, i: usize) -> String {
    let start = joined[..i].char_indices().rev().nth(30).map(|(j, _)| j).unwrap_or(0);
    let s: String = joined[start..]
        .chars()
        .take(80)
        .collect::<String>()
        .replace(['\n', '\r'], " ");
    s.trim().to_owned()
}

/// Remove terminal control sequences (CSI, OSC, other escapes) and carriage returns.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\u{1b}' => match it.next() {
                Some('[') => {
                    for d in it.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(d) = it.next() {
                        if d == '\u{7}' || (d == '\u{1b}' && it.peek() == Some(&'\\')) {
                            if d == '\u{1b}' {
                                it.next();
                            }
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => {}
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commands, SFTP paths and the files legacy scp moved are found by name, as well as
    /// the terminal's text.
    #[test]
    fn searches_see_commands_and_every_kind_of_file_name() {
        let meta = |meta| Event::Meta {
            t_micros: 7,
            channel: 0,
            meta,
        };
        let found = |e: Event| searchable(&e).map(|(_, text, _)| text);
        assert_eq!(found(meta(Meta::exec(b"uptime"))).as_deref(), Some("uptime"));
        assert_eq!(
            found(meta(Meta::SftpOp {
                op: "rename".into(),
                path: "/srv/a".into(),
                path_hex: None,
                target: Some("/srv/b".into()),
                target_hex: None,
                flags: None,
                detail: None,
                outcome: "ok".into(),
            }))
            .as_deref(),
            Some("/srv/a /srv/b")
        );
        assert_eq!(
            found(meta(Meta::FileTransfer {
                protocol: "scp".into(),
                upload: false,
                path: "/srv/drop".into(),
                path_hex: None,
                sent_as: Some("shadow".into()),
                sent_as_hex: None,
                bytes: 1,
                sha256: None,
                mode: Some("0644".into()),
                directory: false,
                mtime: None,
                atime: None,
            }))
            .as_deref(),
            Some("/srv/drop shadow")
        );
        assert_eq!(found(meta(Meta::Shell)), None);
    }

    /// Listing and scanning read the table a page at a time, and still see every row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listings_and_scans_read_past_the_first_page() {
        let n = 2 * ROWS_PAGE as usize + 10;
        for (backend, s) in crate::store::test_backends().await {
            let mut bobs = Vec::new();
            for i in 0..n {
                let id = crate::ident::SessionId::random();
                let user = if i % 2 == 0 { "ann" } else { "bob" };
                s.session_started(&crate::store::test_session(user, &id)).await.unwrap();
                if user == "bob" {
                    bobs.push(id.as_str().to_owned());
                }
            }
            let bob = |limit: i64| RecordingFilter {
                user: Some("bob".into()),
                limit,
                ..RecordingFilter::default()
            };
            let all = list(&s, &bob(i64::MAX), &[]).await.unwrap();
            assert_eq!(all.len(), bobs.len(), "{backend}");
            let mut ids: Vec<String> = all.iter().map(|r| r.id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), bobs.len(), "{backend}: each row once");
            assert_eq!(list(&s, &bob(3), &[]).await.unwrap().len(), 3, "{backend}");
            // A scan meets every row too (their recordings do not exist: each is skipped).
            let q = SearchQuery {
                text: "x".into(),
                user: Some("bob".into()),
                target: None,
                limit: 10,
            };
            let r = search(&s, &q, &[]).await.unwrap();
            assert_eq!(r.skipped.len(), bobs.len(), "{backend}");
        }
    }

    #[tokio::test]
    async fn scans_run_one_at_a_time() {
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn(blocking(move |_| {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            Ok(1)
        }));
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        // While the first scan runs, a second one waits for its turn.
        let mut second = tokio::spawn(blocking(|_| Ok(2)));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut second)
                .await
                .is_err(),
            "a second scan ran beside the first"
        );
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_scan_whose_caller_goes_away_stops_and_frees_its_turn() {
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel::<bool>();
        let scan = tokio::spawn(blocking(move |gone| {
            started_tx.send(()).unwrap();
            // A scan that would read on for 10 s, looking at `gone` as scans do (bounded:
            // a broken flag fails the test instead of hanging it).
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_secs(10) {
                if let Err(e) = gone.check() {
                    stopped_tx.send(true).unwrap();
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            stopped_tx.send(false).unwrap();
            Ok(1)
        }));
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        // The caller goes away: its future is dropped, as when a client hangs up.
        scan.abort();
        let stopped = tokio::task::spawn_blocking(move || stopped_rx.recv_timeout(std::time::Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(stopped, Ok(true), "the scan went on for nobody");
        // Its turn is free: the next scan runs at once.
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), blocking(|_| Ok(2))).await;
        assert_eq!(next.expect("the turn was not freed").unwrap(), 2);
    }

    #[test]
    fn hits_stop_early_once_the_caller_is_gone() {
        use session_recordings::{FileRecorder, Recorder};
        let dir = std::env::temp_dir().join(format!("herse-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.herserec");
        let header = crate::store::test_header("s", "db", 0);
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let r = FileRecorder::create(&path, &header, key).unwrap();
        for i in 0..2000 {
            r.data(0, DataDirection::Output, format!("line {i} needle\r\n").as_bytes())
                .unwrap();
        }
        r.finish("done").unwrap();
        let all = hits(&path, "needle", 10_000, &[], &Abandoned::default()).unwrap();
        assert_eq!(all.len(), 2000);
        let gone = Abandoned::default();
        drop(SetOnDrop(gone.set.clone()));
        let some = hits(&path, "needle", 10_000, &[], &gone).unwrap();
        assert!(some.len() < 256, "read on after its caller left: {} hits", some.len());
        assert!(gone.stopped(), "the stop is told");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn row(user: &str, tier: &str, ws: Option<&str>, addr: &str, started: i64) -> SessionRow {
        SessionRow {
            id: "s1".into(),
            node: "n".into(),
            user: user.into(),
            target: "db1".into(),
            tier: tier.into(),
            login: "deploy".into(),
            client_addr: addr.into(),
            workstation: ws.map(str::to_owned),
            recording: "/nonexistent".into(),
            started_at: started,
            ended_at: None,
            end_reason: None,
            kill_requested_by: None,
            legal_hold: false,
            purged_at: None,
            grant: None,
        }
    }

    #[test]
    fn filters_combine_and_purged_never_match() {
        let r = row("alice", "db", Some("lap1"), "10.77.0.5:4000", 100);
        let all = RecordingFilter::default();
        assert!(all.keeps(&r));
        let f = |g: fn(&mut RecordingFilter)| {
            let mut f = RecordingFilter::default();
            g(&mut f);
            f.keeps(&r)
        };
        assert!(f(|f| f.user = Some("alice".into())));
        assert!(!f(|f| f.user = Some("bob".into())));
        assert!(!f(|f| f.tier = Some("web".into())));
        assert!(f(|f| f.workstation = Some("lap1".into())));
        assert!(f(|f| f.workstation = Some("10.77.0.".into())));
        assert!(!f(|f| f.workstation = Some("lap2".into())));
        assert!(f(|f| f.since = Some(100)));
        assert!(!f(|f| f.since = Some(101)));
        assert!(!f(|f| f.until = Some(100)));
        assert!(f(|f| f.until = Some(101)));
        let mut purged = r.clone();
        purged.purged_at = Some(5);
        assert!(!all.keeps(&purged));
    }

    #[test]
    fn limits_and_needles_are_bounded() {
        assert!(limit(0).is_err());
        assert_eq!(limit(i64::MAX).unwrap(), MAX_RESULTS as usize);
        assert!(needle("").is_err());
        assert!(needle(&"x".repeat(MAX_NEEDLE + 1)).is_err());
        assert!(needle("marker").is_ok());
    }

    #[test]
    fn ansi_is_stripped_and_snippets_stay_on_one_line() {
        assert_eq!(strip_ansi("\u{1b}[1;32mok\u{1b}[0m\r\n\u{1b}]0;title\u{7}x"), "ok\nx");
        assert_eq!(last_chars("héllo", 3), "llo");
        assert_eq!(last_chars("hé", 5), "hé");
        assert_eq!(last_chars("abc", 0), "");
        let text = format!("{}needle\nafter", "a".repeat(50));
        let s = snippet(&text, 50);
        assert!(s.starts_with(&"a".repeat(30)) && s.contains("needle after"), "{s}");
    }

    #[test]
    fn a_missing_recording_is_an_error_not_a_panic() {
        assert!(hits(Path::new("/nonexistent/x.herserec"), "x", 1, &[], &Abandoned::default()).is_err());
    }
}
