//! `hersectl recordings`: list, search, show, verify, play and export session recordings.
//!
//! `list` and `search` run where the recordings are, through the control API. The
//! others read a recording file: in local mode the gateway's own, in remote mode a copy
//! downloaded into a private cache (`$XDG_CACHE_HOME/herse/recordings`, mode 0700),
//! verified and (with `--identity`) decrypted here, on the auditor's side.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use ed25519_dalek::VerifyingKey;
use herse::control::Call;
use herse::ident::SessionId;
use herse::recordings_query::{RecordingFilter, SearchQuery, SearchResult};
use herse::store::{SessionCursor, SessionRow, Store};
use session_recordings::{shown, Completeness, DataDirection, Event, Meta, RecordingReader};

use crate::commands::{execute, Failure};
use crate::output;
use crate::Cli;

/// `--public-key` help, shared by the commands that verify signatures.
const PUBLIC_KEY_HELP: &str = "The audit public key to verify signatures with (64 hex digits, or a file holding \
them such as DATA_DIR/audit_key.pub). Default: locally the one in the database; remotely the one the \
gateway reports, which proves the recording is intact as the gateway knows it but not against a \
compromised gateway (pin the key you got at `herse init` to check independently).";

#[derive(Subcommand)]
pub enum RecordingsCmd {
    /// Recordings, newest first.
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        tier: Option<String>,
        /// Client address or workstation.
        #[arg(long)]
        workstation: Option<String>,
        /// Started within this long ago ("2h", "7d") or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Started before this long ago or this time.
        #[arg(long)]
        until: Option<String>,
        /// Only recordings whose terminal text, commands or SFTP paths contain TEXT.
        #[arg(long)]
        contains: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Replay a terminal: real time, --speed N, --at SECONDS; in a terminal, keys pause
    /// (space), jump (arrows, 10 s), change speed (+/-), skip idle (i), quit (q).
    Play {
        id: String,
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Start this many seconds into the recording.
        #[arg(long, default_value_t = 0.0)]
        at: f64,
        /// Shorten pauses longer than one second.
        #[arg(long)]
        skip_idle: bool,
    },
    /// Find TEXT across recordings (terminal output and input, commands, SFTP paths), with
    /// the time of each hit; --play replays the first hit from just before it.
    Search {
        text: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[arg(long)]
        play: bool,
    },
    /// Metadata and a summary of execs, SFTP operations and denials.
    Show {
        id: String,
        #[arg(long, help = PUBLIC_KEY_HELP)]
        public_key: Option<String>,
    },
    /// Check hash chains, signatures and the chain of recordings; exit 1 on any failure.
    Verify {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[arg(long, help = PUBLIC_KEY_HELP)]
        public_key: Option<String>,
    },
    /// Put a recording under legal hold (never purged), or release it with --release
    /// (local mode only: the release is signed with the audit key, opened with the
    /// master key).
    Hold {
        id: String,
        #[arg(long)]
        release: bool,
    },
    /// Purge recordings past their tier's retention now (the gateway also does it hourly).
    Purge,
    /// Write a recording as asciicast v2, a plain-text transcript, or JSON lines.
    Export {
        id: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Asciicast)]
        format: ExportFormat,
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Asciicast,
    Text,
    Json,
}

static IDENTITIES: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

pub fn set_identities(paths: Vec<PathBuf>) {
    let _ = IDENTITIES.set(paths);
}

/// Unlock an encrypted recording with the `--identity` files, if any were given.
fn unlock<R: std::io::Read>(reader: &mut RecordingReader<R>) -> Result<(), session_recordings::ReadError> {
    if reader.header().encryption.is_none() {
        return Ok(());
    }
    let paths = IDENTITIES.get().map(Vec::as_slice).unwrap_or_default();
    if paths.is_empty() {
        return Err(session_recordings::ReadError::Encrypted);
    }
    let mut ids = Vec::new();
    for p in paths {
        ids.extend(session_recordings::crypt::load_identities(p)?);
    }
    reader.unlock(&ids)
}

/// A recording opened to be read with its signatures checked, and unlocked when it is
/// encrypted (with the identities given by `--identity`).
/// From `at_micros` on (through the seek index), when it is not 0.
pub(crate) fn open_recording(
    path: &Path,
    key: &VerifyingKey,
    at_micros: u64,
) -> Result<RecordingReader<impl std::io::Read + std::io::Seek>, session_recordings::ReadError> {
    let mut r = if at_micros == 0 {
        RecordingReader::open_verified(path, key)?
    } else {
        RecordingReader::open_at_verified(path, at_micros, key)?
    };
    unlock(&mut r)?;
    Ok(r)
}

/// As [`open_recording`], landing on the index entry an earlier read landed on (from the
/// start: `None`).
pub(crate) fn reopen_recording(
    path: &Path,
    key: &VerifyingKey,
    landed_on: Option<session_recordings::format::IndexEntry>,
) -> Result<RecordingReader<impl std::io::Read + std::io::Seek>, session_recordings::ReadError> {
    let mut r = match landed_on {
        None => RecordingReader::open_verified(path, key)?,
        Some(e) => RecordingReader::open_at_entry_verified(path, e, key)?,
    };
    unlock(&mut r)?;
    Ok(r)
}

pub(crate) fn failed(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        message: e.to_string(),
    }
}

fn session_id(id: &str) -> Result<SessionId, Failure> {
    SessionId::parse(id).map_err(|e| Failure {
        code: 2,
        message: e.to_string(),
    })
}

/// Where recording files come from: this host's store (local mode) or the gateway
/// (remote mode, under the logged-in auditor's permissions).
pub enum Source {
    Local(Store),
    Remote(crate::remote::Saved),
}

impl Source {
    pub async fn open(cli: &Cli) -> Result<Source, Failure> {
        Ok(match crate::commands::remote(cli)? {
            Some(saved) => Source::Remote(saved),
            None => Source::Local(crate::commands::open(cli).await?),
        })
    }

    async fn row(&self, id: &str) -> Result<SessionRow, Failure> {
        let sid = session_id(id)?;
        match self {
            Source::Local(store) => store.session(&sid).await?.ok_or_else(|| Failure {
                code: 3,
                message: format!("no recording for session {sid}"),
            }),
            Source::Remote(saved) => {
                parse(crate::remote::call(saved, &Call::RecordingsGet { id: sid.to_string() }).await?)
            }
        }
    }

    /// Every session row, newest first. Remotely, page by page: the gateway returns at
    /// most `MAX_PAGE` rows per call, and `verify --all` must see every recording.
    async fn all_rows(&self) -> Result<Vec<SessionRow>, Failure> {
        let saved = match self {
            Source::Local(store) => return Ok(store.sessions(false, i64::MAX).await?),
            Source::Remote(saved) => saved,
        };
        every_page(herse::control::MAX_PAGE, |after| {
            let call = Call::SessionsList {
                live: false,
                limit: herse::control::MAX_PAGE,
                after,
            };
            async move { parse(crate::remote::call(saved, &call).await?) }
        })
        .await
    }

    /// The key given, else the stored one (locally) or the gateway's (remotely).
    async fn audit_key(&self, given: Option<&str>) -> Result<VerifyingKey, Failure> {
        let hex_key = match (given, self) {
            (Some(k), _) => {
                return herse::audit_log::public_key_from_arg(k).map_err(|e| Failure {
                    code: 2,
                    message: e.to_string(),
                })
            }
            (None, Source::Local(store)) => store.gateway_key("audit").await?.0,
            (None, Source::Remote(saved)) => parse(crate::remote::call(saved, &Call::RecordingsPublicKey).await?)?,
        };
        let bytes: [u8; 32] = hex::decode(hex_key.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| failed("the audit public key is malformed"))?;
        VerifyingKey::from_bytes(&bytes).map_err(|e| failed(format!("audit public key: {e}")))
    }

    /// A readable copy of the row's recording (and its seek index, when there is one).
    async fn file(&self, row: &SessionRow) -> Result<PathBuf, Failure> {
        match self {
            Source::Local(_) => Ok(PathBuf::from(&row.recording)),
            Source::Remote(saved) => {
                let sid = session_id(&row.id)?;
                let path = cache_dir()?.join(format!("{}.herserec", sid.as_str()));
                download(saved, &sid, false, &path).await?;
                let index = session_recordings::format::index_path(&path);
                if !download(saved, &sid, true, &index).await? {
                    let _ = std::fs::remove_file(&index);
                }
                Ok(path)
            }
        }
    }
}

/// Every row of a listing served in pages of at most `page` rows, newest first: `fetch`
/// is asked for the page after the last row so far, until a short page. A gateway that
/// hands back a row already seen (one that ignores the cursor) is an error, not an
/// endless loop.
async fn every_page<F, Fut>(page: i64, mut fetch: F) -> Result<Vec<SessionRow>, Failure>
where
    F: FnMut(Option<SessionCursor>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<SessionRow>, Failure>>,
{
    let mut rows: Vec<SessionRow> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    loop {
        let batch = fetch(rows.last().map(SessionRow::cursor)).await?;
        let full = batch.len() as i64 >= page;
        for r in batch {
            if !seen.insert(r.id.clone()) {
                return Err(failed(format!(
                    "the gateway listed session {} twice while paging through sessions",
                    r.id
                )));
            }
            rows.push(r);
        }
        if !full {
            return Ok(rows);
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| failed(format!("unexpected answer: {e}")))
}

/// `$XDG_CACHE_HOME/herse/recordings`, else `~/.cache/herse/recordings`; made 0700.
fn cache_dir() -> Result<PathBuf, Failure> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| crate::commands::usage("no HOME: set XDG_CACHE_HOME for the recordings cache"))?;
    let dir = base.join("herse").join("recordings");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// A new private (0600) file, replacing whatever was at `path`.
fn private_file(path: &Path) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let _ = std::fs::remove_file(path);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Download a recording (or its index) whole into `path`, chunk by chunk; false when the
/// gateway has no index for it.
async fn download(saved: &crate::remote::Saved, sid: &SessionId, index: bool, path: &Path) -> Result<bool, Failure> {
    // NAME.herserec.part / NAME.herseidx.part: never the other file's.
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut out = std::io::BufWriter::new(private_file(&part)?);
    let mut offset = 0u64;
    loop {
        match crate::remote::recording_chunk(saved, sid, offset, index, &mut out).await? {
            None => {
                drop(out);
                let _ = std::fs::remove_file(&part);
                return Ok(false);
            }
            Some((n, size)) => {
                offset += n;
                if n == 0 || offset >= size {
                    break;
                }
            }
        }
    }
    out.into_inner().map_err(|e| failed(e.error()))?.sync_all()?;
    std::fs::rename(&part, path)?;
    Ok(true)
}

/// The `recordings list` filter from the command line.
#[allow(clippy::too_many_arguments)]
fn list_filter(
    user: &Option<String>,
    target: &Option<String>,
    tier: &Option<String>,
    workstation: &Option<String>,
    since: &Option<String>,
    until: &Option<String>,
    contains: &Option<String>,
    limit: i64,
) -> Result<RecordingFilter, Failure> {
    Ok(RecordingFilter {
        user: user.clone(),
        target: target.clone(),
        tier: tier.clone(),
        workstation: workstation.clone(),
        since: since.as_deref().map(parse_when).transpose()?,
        until: until.as_deref().map(parse_when).transpose()?,
        contains: contains.clone(),
        limit,
    })
}

pub async fn run(cli: &Cli, cmd: &RecordingsCmd) -> Result<(), Failure> {
    let json = cli.json;
    match cmd {
        RecordingsCmd::List {
            user,
            target,
            tier,
            workstation,
            since,
            until,
            contains,
            limit,
        } => {
            let f = list_filter(user, target, tier, workstation, since, until, contains, *limit)?;
            let rows: Vec<SessionRow> = parse(execute(cli, &Call::RecordingsList(f)).await?)?;
            output::table(
                json,
                &rows,
                &[
                    "ID",
                    "USER",
                    "WORKSTATION",
                    "TARGET",
                    "LOGIN",
                    "TIER",
                    "STARTED",
                    "ENDED",
                    "REASON",
                ],
                |s| {
                    vec![
                        s.id.clone(),
                        s.user.clone(),
                        s.workstation.clone().unwrap_or_else(|| "-".into()),
                        s.target.clone(),
                        s.login.clone(),
                        s.tier.clone(),
                        output::time(s.started_at),
                        s.ended_at.map(output::time).unwrap_or_else(|| "live".into()),
                        s.end_reason.clone().unwrap_or_default(),
                    ]
                },
            );
            Ok(())
        }
        RecordingsCmd::Play {
            id,
            speed,
            at,
            skip_idle,
        } => {
            let source = Source::open(cli).await?;
            let row = source.row(id).await?;
            let key = source.audit_key(None).await?;
            let path = source.file(&row).await?;
            play_file(&path, &key, &row, *speed, *at, *skip_idle)
        }
        RecordingsCmd::Search {
            text,
            user,
            target,
            limit,
            play,
        } => {
            let q = SearchQuery {
                text: text.clone(),
                user: user.clone(),
                target: target.clone(),
                limit: *limit,
            };
            let r: SearchResult = parse(execute(cli, &Call::RecordingsSearch(q)).await?)?;
            for s in &r.skipped {
                eprintln!("hersectl: {}: {}", output::clean(&s.session), output::clean(&s.error));
            }
            let found = r.hits;
            if *play {
                let first = found.first().ok_or_else(|| Failure {
                    code: 3,
                    message: format!("no recording contains {text:?}"),
                })?;
                let source = Source::open(cli).await?;
                let row = source.row(&first.session).await?;
                let key = source.audit_key(None).await?;
                let path = source.file(&row).await?;
                return play_file(&path, &key, &row, 1.0, (first.at_seconds - 2.0).max(0.0), false);
            }
            output::table(json, &found, &["SESSION", "USER", "TARGET", "AT", "MATCH"], |h| {
                vec![
                    h.session.clone(),
                    h.user.clone(),
                    h.target.clone(),
                    format!("{:.1}s", h.at_seconds),
                    h.snippet.clone(),
                ]
            });
            if !json && !found.is_empty() {
                eprintln!("replay a hit: hersectl recordings play SESSION --at SECONDS");
            }
            if found.is_empty() {
                return Err(Failure {
                    code: 3,
                    message: format!("no recording contains {text:?}"),
                });
            }
            Ok(())
        }
        RecordingsCmd::Show { id, public_key } => {
            show(&Source::open(cli).await?, json, id, public_key.as_deref()).await
        }
        RecordingsCmd::Hold { id, release } => {
            let v = execute(
                cli,
                &Call::RecordingsHold {
                    id: id.clone(),
                    release: *release,
                },
            )
            .await?;
            crate::commands::print_message(json, &v);
            Ok(())
        }
        RecordingsCmd::Purge => {
            let v = execute(cli, &Call::RecordingsPurge).await?;
            crate::commands::print_message(json, &v);
            Ok(())
        }
        RecordingsCmd::Verify { id, all, public_key } => {
            verify(
                cli,
                &Source::open(cli).await?,
                json,
                id.as_deref(),
                *all,
                public_key.as_deref(),
            )
            .await
        }
        RecordingsCmd::Export { id, format, output } => {
            let source = Source::open(cli).await?;
            let row = source.row(id).await?;
            let key = source.audit_key(None).await?;
            let path = source.file(&row).await?;
            crate::export::export(&path, &key, &row, *format, output.as_deref())
        }
    }
}

async fn show(source: &Source, json: bool, id: &str, public_key: Option<&str>) -> Result<(), Failure> {
    let row = source.row(id).await?;
    let key = source.audit_key(public_key).await?;
    let path = source.file(&row).await?;
    // Read with the key, whole, before anything is summarised: nothing of a recording
    // that fails verification, or is another session's, is shown as if it were this
    // session's (as `play` and `export` refuse it). Then read again, one event at a time.
    let checked = crate::reread::Checked::first_read(&path, &key, &row, "shown")?;
    let verified = &checked.verified;
    let header = &verified.header;
    // In a recording cut short, what follows its last checkpoint was read but nothing
    // signed vouches for it: summarised apart, never mixed into the session's account.
    let (mut vouched, mut tail) = (Summary::default(), Summary::default());
    checked.read_again(false, |e, is_vouched| {
        if is_vouched { &mut vouched } else { &mut tail }.add(e);
        Ok(())
    })?;
    let Summary {
        events,
        execs,
        sftp,
        files,
        denied,
        recorded_end,
        bytes,
        unrecognised,
    } = vouched;
    let unauthenticated = tail_summary(&tail);
    let status = completeness(&verified.completeness);
    let mut summary = serde_json::json!({
        "session": header.session_id, "user": header.user, "client": header.client_addr, "workstation": header.workstation,
        "target": header.target, "target_address": header.target_addr, "tier": header.tier, "login": header.login,
        "role": header.role, "grant": header.grant, "decision": header.decision,
        "started": output::time(header.started_at_micros as i64), "ended": row.ended_at.map(output::time), "end_reason": row.end_reason,
        "recorded_end_reason": recorded_end,
        "verification": status, "events": events, "bytes": bytes, "execs": execs, "sftp": sftp, "files": files, "denied": denied,
        "unauthenticated_tail": unauthenticated,
        "file": row.recording,
    });
    if unrecognised > 0 {
        summary["unrecognised_events"] = format!(
            "{unrecognised} events of types this hersectl does not know (a newer gateway wrote them; \
             they verify, but are not shown): upgrade hersectl to see them"
        )
        .into();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    } else if let serde_json::Value::Object(map) = summary {
        for (k, v) in map {
            match v {
                serde_json::Value::Array(items) if !items.is_empty() => {
                    println!("{k}:");
                    for i in items {
                        let line = i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string());
                        println!("  {}", output::clean(&line));
                    }
                }
                serde_json::Value::String(s) => println!("{k}: {}", output::clean(&s)),
                serde_json::Value::Null => println!("{k}: -"),
                other => println!("{k}: {}", output::clean(&other.to_string())),
            }
        }
    }
    Ok(())
}

/// `show`'s account of the events after a cut-short recording's last checkpoint, if any.
fn tail_summary(t: &Summary) -> Option<serde_json::Value> {
    if t.events == 0 {
        return None;
    }
    let mut v = serde_json::json!({
        "events": t.events, "execs": t.execs, "sftp": t.sftp, "files": t.files, "denied": t.denied,
        "recorded_end_reason": t.recorded_end, "bytes": t.bytes,
    });
    if t.unrecognised > 0 {
        v["unrecognised_events"] = t.unrecognised.into();
    }
    Some(v)
}

/// What `show` lists of a run of events, taken one event at a time.
#[derive(Default)]
struct Summary {
    events: u64,
    execs: Vec<String>,
    sftp: Vec<String>,
    /// Files moved by legacy scp.
    files: Vec<String>,
    denied: Vec<String>,
    recorded_end: Option<String>,
    bytes: HashMap<&'static str, u64>,
    /// Events of types this hersectl does not know (see [`Meta::Unrecognised`]).
    unrecognised: usize,
}

#[cfg(test)]
fn summarise(events: &[Event]) -> Summary {
    let mut s = Summary::default();
    for e in events {
        s.add(e);
    }
    s
}

impl Summary {
    fn add(&mut self, e: &Event) {
        self.events += 1;
        match e {
            Event::Meta {
                meta: Meta::Unrecognised,
                ..
            } => self.unrecognised += 1,
            // The reason sealed into the recording, which the session row may not hold
            // (a row closed by another node, or after the database came back).
            Event::Meta {
                meta: Meta::End { reason },
                ..
            } => self.recorded_end = Some(reason.clone()),
            Event::Meta {
                meta: m @ Meta::Exec { .. },
                ..
            } => self.execs.push(exec_line(m)),
            Event::Meta {
                meta:
                    Meta::SftpFile {
                        path,
                        path_hex,
                        bytes_read,
                        bytes_written,
                        sha256_read,
                        sha256_written,
                        ..
                    },
                ..
            } => self.sftp.push(format!(
                "{}: read {bytes_read} B{}, written {bytes_written} B{}",
                shown(path, path_hex.as_deref()),
                sha256_read
                    .as_ref()
                    .map(|h| format!(" (sha256 {h})"))
                    .unwrap_or_default(),
                sha256_written
                    .as_ref()
                    .map(|h| format!(" (sha256 {h})"))
                    .unwrap_or_default()
            )),
            Event::Meta {
                meta: meta @ Meta::SftpOp { op, detail, .. },
                ..
            } if op != "open" || detail.is_some() => self.sftp.push(sftp_op_words(meta)),
            Event::Meta {
                meta: meta @ Meta::FileTransfer { sha256, .. },
                ..
            } => self.files.push(format!(
                "{}{}",
                transfer_words(meta),
                sha256.as_ref().map(|h| format!(" (sha256 {h})")).unwrap_or_default()
            )),
            Event::Meta {
                meta: Meta::Untracked { protocol, reason },
                ..
            } => self.files.push(format!(
                "{protocol}: files after this point are not listed (their bytes are recorded): {reason}"
            )),
            Event::Meta {
                meta: Meta::Denied { request, reason },
                ..
            } => self.denied.push(format!("{request}: {reason}")),
            Event::Data { direction, data, .. } => {
                let k = match direction {
                    DataDirection::Input => "input",
                    DataDirection::Output => "output",
                    DataDirection::Stderr => "stderr",
                };
                *self.bytes.entry(k).or_default() += data.len() as u64;
            }
            _ => {}
        }
    }
}

/// `setstat /srv/x (mode 0640) -> ok`. Empty for any other event.
pub(crate) fn sftp_op_words(meta: &Meta) -> String {
    let Meta::SftpOp {
        op,
        path,
        path_hex,
        target,
        target_hex,
        detail,
        outcome,
        ..
    } = meta
    else {
        return String::new();
    };
    format!(
        "{op} {}{}{} -> {outcome}",
        shown(path, path_hex.as_deref()),
        target
            .as_ref()
            .map(|t| format!(" {}", shown(t, target_hex.as_deref())))
            .unwrap_or_default(),
        detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
    )
}

/// `scp upload /srv/new (sent as f.txt): 12 B, mode 0644`, or
/// `scp upload directory /srv/d, mode 0755, mtime 2020-01-01T00:00:00Z, atime …` (under
/// `scp -p`). Empty for any other event.
pub(crate) fn transfer_words(meta: &Meta) -> String {
    let Meta::FileTransfer {
        protocol,
        upload,
        path,
        path_hex,
        sent_as,
        sent_as_hex,
        bytes,
        mode,
        directory,
        mtime,
        atime,
        ..
    } = meta
    else {
        return String::new();
    };
    let way = if *upload { "upload" } else { "download" };
    let path = shown(path, path_hex.as_deref());
    let sent_as = sent_as
        .as_ref()
        .map(|n| format!(" (sent as {})", shown(n, sent_as_hex.as_deref())))
        .unwrap_or_default();
    let mut mode = mode.as_ref().map(|m| format!(", mode {m}")).unwrap_or_default();
    for (name, t) in [("mtime", mtime), ("atime", atime)] {
        if let Some(t) = t {
            mode.push_str(&format!(", {name} {}", unix_seconds(*t)));
        }
    }
    if *directory {
        format!("{protocol} {way} directory {path}{sent_as}{mode}")
    } else {
        format!("{protocol} {way} {path}{sent_as}: {bytes} B{mode}")
    }
}

/// A time a sender chose, as RFC 3339 when it is one (1970 to 9999), else as the number
/// it sent: never clamped into a time it did not send.
fn unix_seconds(t: i64) -> String {
    match t.checked_mul(1_000_000) {
        Some(micros) if (0..=253_402_300_799).contains(&t) => output::time(micros),
        _ => format!("{t} (Unix seconds)"),
    }
}

fn completeness(c: &Completeness) -> String {
    match c {
        Completeness::Complete { .. } => "complete".to_owned(),
        Completeness::Truncated {
            authenticated_until_micros,
            unauthenticated_bytes,
        } => format!(
            "truncated at {:.3}s (authenticated up to there; {unauthenticated_bytes} bytes after it unauthenticated)",
            *authenticated_until_micros as f64 / 1e6
        ),
    }
}

#[derive(serde::Serialize)]
struct VerifyLine {
    session: String,
    file: String,
    ok: bool,
    status: String,
}

/// What the signed audit log says happened to sessions, to hold the session rows (which
/// whoever controls the database can edit) to it.
#[derive(Default)]
struct Logged {
    /// Sessions started, with the seq of their `session.start` event.
    started: HashMap<String, i64>,
    ended: std::collections::HashSet<String>,
    purged: std::collections::HashSet<String>,
}

impl Logged {
    async fn read(cli: &Cli) -> Result<Logged, Failure> {
        const PAGE: i64 = herse::control::MAX_PAGE;
        let mut logged = Logged::default();
        for kind in ["session.start", "session.end", "recording.purge"] {
            let filter = herse::store::AuditFilter {
                kind: Some(kind.into()),
                ..Default::default()
            };
            let mut after = 0;
            loop {
                let call = Call::AuditAfter {
                    filter: filter.clone(),
                    after,
                    limit: PAGE,
                };
                let page: Vec<herse::store::AuditRow> = parse(execute(cli, &call).await?)?;
                for e in &page {
                    let (Some(session), Some(seq)) = (e.session.clone(), e.seq) else {
                        continue;
                    };
                    match kind {
                        "session.start" => {
                            logged.started.insert(session, seq);
                        }
                        "session.end" => {
                            logged.ended.insert(session);
                        }
                        _ => {
                            logged.purged.insert(session);
                        }
                    }
                }
                match page.last().and_then(|e| e.seq) {
                    Some(seq) if page.len() as i64 == PAGE => after = seq,
                    _ => break,
                }
            }
        }
        Ok(logged)
    }
}

/// Verify one unpurged session's recording against `key` and its row; a recording that
/// verifies leaves its header hash and its link to the previous recording for the chain
/// check.
async fn verify_one(
    source: &Source,
    row: &SessionRow,
    key: &VerifyingKey,
    logged: &Logged,
    headers: &mut HashMap<String, String>,
    links: &mut Vec<(String, session_recordings::PreviousRecording)>,
) -> VerifyLine {
    let failed = |status: String| VerifyLine {
        session: row.id.clone(),
        file: row.recording.clone(),
        ok: false,
        status,
    };
    let path = match source.file(row).await {
        Ok(p) => p,
        Err(e) => return failed(format!("FAILED: {}", e.message)),
    };
    match RecordingReader::open_verified(&path, key).and_then(|r| r.verify()) {
        Ok(v) => match not_its_session(&v.header, row) {
            Some(what) => failed(format!(
                "FAILED: this is not the session's recording (its {what} differs from the session's)"
            )),
            None => {
                headers.insert(row.id.clone(), hex::encode(v.header_hash));
                if let Some(p) = &v.header.previous {
                    links.push((row.id.clone(), p.clone()));
                }
                let complete = matches!(v.completeness, Completeness::Complete { .. });
                // A live session is legitimately unsealed; an ended one must be sealed
                // (ended by its row, or by the audit log whatever the row now says).
                let live = row.ended_at.is_none() && !logged.ended.contains(&row.id);
                VerifyLine {
                    session: row.id.clone(),
                    file: row.recording.clone(),
                    ok: complete || live,
                    status: completeness(&v.completeness),
                }
            }
        },
        Err(e) => failed(format!("FAILED: {e}")),
    }
}

async fn verify(
    cli: &Cli,
    source: &Source,
    json: bool,
    id: Option<&str>,
    all: bool,
    public_key: Option<&str>,
) -> Result<(), Failure> {
    let key = source.audit_key(public_key).await?;
    if public_key.is_none() && !json {
        // Whoever can rewrite recordings on the gateway host may have replaced the key
        // stored there too, and re-signed them.
        eprintln!(
            "checking against the audit key the gateway keeps ({}); pass --public-key with a copy \
             kept off the gateway host to rule out a replaced key",
            hex::encode(key.as_bytes())
        );
    }
    // The log first, then the rows: every session the log shows ended or purged had its
    // row closed or marked (and its recording sealed) before that event was written.
    let logged = if all {
        Logged::read(cli).await?
    } else {
        Logged::default()
    };
    // A purge running meanwhile marks a row (with its event) after the log above was
    // read, and removes its file after the row was read: such a row is read again, and
    // the log once more, before it counts as a failure.
    let mut unexplained = Vec::new();
    let rows = match (id, all) {
        (Some(id), _) => vec![source.row(id).await?],
        (None, true) => source.all_rows().await?,
        (None, false) => {
            return Err(Failure {
                code: 2,
                message: "name a session ID or pass --all".into(),
            })
        }
    };
    let mut lines = Vec::new();
    let mut headers = HashMap::new();
    let mut links = Vec::new();
    let total = rows.len();
    let mut purged = std::collections::HashSet::new();
    for (i, row) in rows.iter().enumerate() {
        if all && !json && total > 20 {
            eprint!("\rverifying {}/{total}", i + 1);
        }
        let mut line = match row.purged_at {
            Some(_) => None,
            None => Some(verify_one(source, row, &key, &logged, &mut headers, &mut links).await),
        };
        // A purge running meanwhile marks the row after it was read and then removes the
        // file: a failure on a row that is marked purged now is that purge.
        if line.as_ref().is_some_and(|l| !l.ok)
            && matches!(source.row(&row.id).await, Ok(again) if again.purged_at.is_some())
        {
            line = None;
        }
        if let Some(line) = line {
            lines.push(line);
            continue;
        }
        purged.insert(row.id.clone());
        if !logged.purged.contains(&row.id) {
            // Decided after the loop, from a log read once more then: every purge marks
            // its row and writes its event in one commit, before the row is read again.
            unexplained.push(lines.len());
        }
        lines.push(VerifyLine {
            session: row.id.clone(),
            file: row.recording.clone(),
            ok: true,
            status: "purged by retention".into(),
        });
    }
    // A row marked purged without its signed event is a recording removed by someone
    // else. Its event may be newer than the log read above (or, for one ID, no log was
    // read): one more read settles every such row.
    if !unexplained.is_empty() {
        let reread = Logged::read(cli).await?;
        for i in unexplained {
            if !reread.purged.contains(&lines[i].session) {
                lines[i].ok = false;
                lines[i].status = "FAILED: marked purged, but the audit log has no recording.purge event for it".into();
            }
        }
    }
    if all && !json && total > 20 {
        eprintln!();
    }
    if all {
        // Every session the audit log saw start still has its row.
        let have: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let mut gone: Vec<(&String, &i64)> = logged
            .started
            .iter()
            .filter(|(id, _)| !have.contains(id.as_str()))
            .collect();
        gone.sort_by_key(|(_, seq)| **seq);
        for (id, seq) in gone {
            lines.push(VerifyLine {
                session: id.clone(),
                file: String::new(),
                ok: false,
                status: format!("FAILED: the session started (audit event seq {seq}) but its row is gone"),
            });
        }
        // The chain of recordings: every link must name a recording that is still here,
        // with the same header.
        for (from, prev) in links {
            let status = match headers.get(&prev.session_id) {
                Some(h) if *h == prev.header_hash => continue,
                None if purged.contains(&prev.session_id) => continue,
                Some(_) => format!(
                    "FAILED: recording {} was replaced (named by {from} with another header)",
                    prev.session_id
                ),
                None => format!("FAILED: recording {} is missing (named by {from})", prev.session_id),
            };
            lines.push(VerifyLine {
                session: prev.session_id.clone(),
                file: String::new(),
                ok: false,
                status,
            });
        }
    }
    output::table(json, &lines, &["SESSION", "OK", "STATUS"], |l| {
        vec![
            l.session.clone(),
            if l.ok { "yes" } else { "NO" }.into(),
            l.status.clone(),
        ]
    });
    let failed = lines.iter().filter(|l| !l.ok).count();
    if failed > 0 {
        return Err(Failure {
            code: 1,
            message: format!("{failed} recording check(s) failed"),
        });
    }
    Ok(())
}

/// The first field in which a recording's signed header and its session row disagree: a
/// valid recording of another session (a file copied over this one, a row pointed at
/// another file), or a row whose who and where were edited.
pub(crate) fn not_its_session(h: &session_recordings::Header, row: &SessionRow) -> Option<&'static str> {
    let fields = [
        ("session id", h.session_id == row.id),
        ("user", h.user == row.user),
        ("target", h.target == row.target),
        ("tier", h.tier == row.tier),
        ("login", h.login == row.login),
        ("client address", h.client_addr == row.client_addr),
        ("workstation", h.workstation == row.workstation),
        ("grant", h.grant == row.grant),
    ];
    fields.into_iter().find(|(_, same)| !same).map(|(what, _)| what)
}

/// An exec's command line for people: its text, and its exact bytes when they are not
/// UTF-8 (the text then shows U+FFFD in their place).
fn exec_line(m: &Meta) -> String {
    match m {
        Meta::Exec { command, command_hex } => shown(command, command_hex.as_deref()),
        _ => String::new(),
    }
}

/// How often remote `sessions watch` asks the gateway for new bytes.
const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Follow a live session's recording and print its terminal output as it is written.
/// Remotely, the recording is copied into the cache as it grows (polling the gateway
/// from the copy's length) and the same follower reads the copy.
pub async fn watch(cli: &Cli, id: &str, from_start: bool) -> Result<(), Failure> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let source = Source::open(cli).await?;
    let row = source.row(id).await?;
    if row.ended_at.is_some() {
        return Err(failed(format!(
            "session {} has ended; use `hersectl recordings export`",
            row.id
        )));
    }
    let key = source.audit_key(None).await?;
    // Remote: the copy so far, and an appender that keeps it growing.
    let mut copy = match &source {
        Source::Local(_) => None,
        Source::Remote(saved) => {
            let sid = session_id(&row.id)?;
            let path = cache_dir()?.join(format!("{}.herserec", sid.as_str()));
            let mut out = private_file(&path)?;
            let mut offset = 0;
            loop {
                let (n, size) = crate::remote::recording_chunk(saved, &sid, offset, false, &mut out)
                    .await?
                    .unwrap_or((0, 0));
                offset += n;
                if n == 0 || offset >= size {
                    break;
                }
            }
            Some((saved, sid, path, out, offset))
        }
    };
    let path = match &copy {
        Some((_, _, path, _, _)) => path.clone(),
        None => PathBuf::from(&row.recording),
    };
    let file = std::fs::File::open(&path)?;
    let join_at = file.metadata()?.len();
    let stop = Arc::new(AtomicBool::new(false));
    let reader_stop = stop.clone();
    let follow = tokio::task::spawn_blocking(move || -> Result<String, Failure> {
        let tail = session_recordings::TailFile::new(file, reader_stop);
        let mut reader = RecordingReader::new(tail, Some(key)).map_err(failed)?;
        unlock(&mut reader).map_err(failed)?;
        let mut out = std::io::stdout().lock();
        let mut filter = crate::term_filter::TerminalFilter::default();
        let mut shown = Vec::new();
        let h = reader.header();
        eprintln!(
            "herse: watching session {} ({}@{}, user {}), read-only; Ctrl-C to stop",
            output::clean(&h.session_id),
            output::clean(&h.login),
            output::clean(&h.target),
            output::clean(&h.user)
        );
        while let Some(e) = reader.next_event().map_err(failed)? {
            match e {
                Event::Data {
                    direction: DataDirection::Output | DataDirection::Stderr,
                    data,
                    ..
                } if from_start || reader.offset() > join_at => {
                    shown.clear();
                    filter.feed(&data, &mut shown);
                    out.write_all(&shown)?;
                    out.flush()?;
                }
                Event::Meta {
                    meta: Meta::End { reason },
                    ..
                } => return Ok(reason),
                _ => {}
            }
        }
        Ok("the recording stopped growing".into())
    });
    tokio::pin!(follow);
    let mut tick = tokio::time::interval(WATCH_POLL);
    let mut last_check = std::time::Instant::now();
    let mut ended_since: Option<std::time::Instant> = None;
    let reason = loop {
        tokio::select! {
            r = &mut follow => break r.map_err(failed)??,
            _ = tick.tick() => {
                if let Some((saved, sid, _, out, offset)) = copy.as_mut() {
                    if let Some((n, _)) = crate::remote::recording_chunk(saved, sid, *offset, false, out).await? {
                        *offset += n;
                        out.flush()?;
                    }
                }
                if last_check.elapsed() < std::time::Duration::from_secs(1) {
                    continue;
                }
                last_check = std::time::Instant::now();
                // A gateway that died leaves the recording unsealed: stop when the row says
                // the session is over and nothing more arrives.
                let live = source.row(&row.id).await?.ended_at.is_none();
                if !live {
                    let since = *ended_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > std::time::Duration::from_secs(3) {
                        stop.store(true, Ordering::Release);
                    }
                }
            }
        }
    };
    eprintln!("\r\nherse: session ended: {}", output::clean(&reason));
    Ok(())
}

/// Microseconds since the epoch from "2h" (ago) or an RFC 3339 time.
fn parse_when(s: &str) -> Result<i64, Failure> {
    let now = std::time::SystemTime::now();
    let t = match humantime::parse_duration(s) {
        Ok(d) => now - d,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|e| Failure {
            code: 2,
            message: format!("{s:?}: not a duration (\"2h\") or a time (RFC 3339): {e}"),
        })?,
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0))
}

fn play_file(
    path: &Path,
    key: &VerifyingKey,
    row: &SessionRow,
    speed: f64,
    at: f64,
    skip_idle: bool,
) -> Result<(), Failure> {
    let at_micros = (at.max(0.0) * 1e6) as u64;
    // Starting later: jump through the seek index instead of decoding from the start
    // (the player can then seek back only to the frame it started from). Only the
    // terminal channel's output is kept: one read verifies, one finds the channel, one
    // takes its output.
    let checked = crate::reread::Checked::first_read_at(path, key, row, "shown", at_micros)?;
    let verified = &checked.verified;
    if verified.events > checked.vouched() {
        eprintln!(
            "hersectl: recording of session {} is not sealed (the session is live, or was cut \
             short): the {} events after its last checkpoint are not authenticated and are left \
             out (`hersectl recordings show` lists them apart)",
            row.id,
            verified.events - checked.vouched()
        );
    }
    let mut finder = crate::play::TerminalFinder::default();
    // From a seek point, the terminal's request is usually before it: look for it from
    // the start, up to there (within the first 64 MiB: a terminal is asked for as its
    // channel opens, and a session without one should not cost a read of the whole file;
    // past that, the first channel with output after the seek point plays).
    if let Some(landing) = checked.landing_time() {
        checked.scan_from_start(64 << 20, |e| {
            finder.see(e);
            !finder.has_pty() && e.t_micros() < landing
        })?;
    }
    if !finder.has_pty() {
        checked.read_again(true, |e, _| {
            finder.see(e);
            Ok(())
        })?;
    }
    let mut timeline = crate::play::TimelineBuilder::new(finder.found().0);
    checked.read_again(true, |e, _| {
        timeline.add(e);
        Ok(())
    })?;
    crate::play::play(
        &timeline.build(),
        &crate::play::PlayOptions {
            speed,
            at_micros,
            max_idle: skip_idle.then_some(std::time::Duration::from_secs(1)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{transcript, Utf8Joiner};
    use herse::recordings_query::strip_ansi;

    fn row(started_at: i64, id: &str) -> SessionRow {
        SessionRow {
            id: id.into(),
            node: "n1".into(),
            user: "ann".into(),
            target: "web1".into(),
            tier: "web".into(),
            login: "deploy".into(),
            client_addr: "10.0.0.2".into(),
            workstation: None,
            recording: format!("/r/{id}"),
            started_at,
            ended_at: None,
            end_reason: None,
            kill_requested_by: None,
            legal_hold: false,
            purged_at: None,
            grant: None,
        }
    }

    /// What the gateway's keyset paging does: rows after the cursor in
    /// (started_at, id) descending order, at most `page` of them.
    fn served(table: &[SessionRow], after: Option<SessionCursor>, page: usize) -> Vec<SessionRow> {
        table
            .iter()
            .filter(|r| {
                after
                    .as_ref()
                    .is_none_or(|c| (r.started_at, r.id.as_str()) < (c.started_at, c.id.as_str()))
            })
            .take(page)
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn every_page_reads_each_row_once_in_order() {
        // Newest first; three rows share a start time.
        let table = vec![
            row(9, "s7"),
            row(8, "s6"),
            row(5, "s5"),
            row(5, "s4"),
            row(5, "s3"),
            row(2, "s2"),
            row(1, "s1"),
        ];
        for page in 1..=8 {
            let mut calls = 0;
            let rows = every_page(page as i64, |after| {
                calls += 1;
                let batch = served(&table, after, page);
                async move { Ok(batch) }
            })
            .await
            .unwrap_or_else(|e| panic!("{}", e.message));
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, ["s7", "s6", "s5", "s4", "s3", "s2", "s1"], "page {page}");
            assert_eq!(calls, table.len() / page + 1, "page {page}");
        }
    }

    #[tokio::test]
    async fn a_gateway_that_ignores_the_cursor_is_an_error_not_a_loop() {
        let table = vec![row(3, "s3"), row(2, "s2"), row(1, "s1")];
        let err = every_page(2, |_| {
            let batch = served(&table, None, 2);
            async move { Ok(batch) }
        })
        .await
        .unwrap_err();
        assert!(err.message.contains("twice"), "{}", err.message);
    }

    /// `show`'s summary and the text export word scp files and directories with their
    /// modes, and count or mark events of types this hersectl does not know.
    #[test]
    fn transfers_and_unknown_events_are_worded() {
        let meta = |meta| Event::Meta {
            t_micros: 1_000_000,
            channel: 0,
            meta,
        };
        let transfer = |path: &str, directory: bool| Meta::FileTransfer {
            protocol: "scp".into(),
            upload: true,
            path: path.into(),
            path_hex: None,
            sent_as: None,
            sent_as_hex: None,
            bytes: if directory { 0 } else { 5 },
            sha256: (!directory).then(|| "ab".into()),
            mode: Some(if directory { "0755" } else { "4755" }.into()),
            directory,
            mtime: (!directory).then_some(86_400),
            atime: None,
        };
        let events = [
            meta(transfer("/srv/d", true)),
            meta(transfer("/srv/d/su", false)),
            meta(Meta::Unrecognised),
            meta(Meta::Unrecognised),
            meta(Meta::ExitSignal {
                signal: "TERM".into(),
                core_dumped: false,
                message: Some("bye".into()),
            }),
        ];
        let s = summarise(&events);
        assert_eq!(
            s.files,
            [
                "scp upload directory /srv/d, mode 0755",
                "scp upload /srv/d/su: 5 B, mode 4755, mtime 1970-01-02T00:00:00Z (sha256 ab)"
            ]
        );
        assert_eq!(s.unrecognised, 2);
        // The same events after the last checkpoint: counted there too.
        let tail = tail_summary(&summarise(&events)).unwrap();
        assert_eq!(tail["unrecognised_events"], 2);
        assert_eq!(tail["events"], 5);
        assert!(tail_summary(&summarise(&events[..2]))
            .unwrap()
            .get("unrecognised_events")
            .is_none());
        assert!(tail_summary(&summarise(&[])).is_none());
        let text = transcript(&events);
        assert!(
            text.contains("[scp upload /srv/d/su: 5 B, mode 4755, mtime 1970-01-02T00:00:00Z]"),
            "{text}"
        );
        assert!(text.contains("[killed by TERM: bye]"), "{text}");
        assert_eq!(unix_seconds(-1), "-1 (Unix seconds)");
        assert_eq!(unix_seconds(i64::MAX), format!("{} (Unix seconds)", i64::MAX));
        assert_eq!(
            text.matches("[an event of a type this hersectl does not know]").count(),
            2,
            "{text}"
        );
    }

    /// The session's output cannot pass for the transcript's own lines: each of its
    /// lines starts with the output mark, and text that would reorder what is shown is
    /// written out.
    #[test]
    fn output_cannot_imitate_the_transcripts_own_lines() {
        let out = |t: u64, data: &[u8]| Event::Data {
            t_micros: t,
            channel: 0,
            direction: DataDirection::Output,
            data: data.to_vec(),
        };
        let events = [
            Event::Meta {
                t_micros: 1_000,
                channel: 0,
                meta: Meta::exec(b"deploy"),
            },
            out(
                2_000,
                b"ok\r\n    9.000 #0 [session ended: client disconnected]\r\n    9.100 #0 $ true",
            ),
            out(3_000, " \u{202e}gpj.exe\tdone\n".as_bytes()),
            Event::Meta {
                t_micros: 4_000,
                channel: 0,
                meta: Meta::ExitStatus { code: 0 },
            },
        ];
        let want = [
            "    0.001 #0 $ deploy",
            "| ok",
            "|     9.000 #0 [session ended: client disconnected]",
            "|     9.100 #0 $ true \\u{202e}gpj.exe\tdone",
            "    0.004 #0 [exit 0]",
            "",
        ];
        assert_eq!(transcript(&events), want.join("\n"));
    }

    #[test]
    fn ansi_is_stripped_and_utf8_is_joined() {
        assert_eq!(strip_ansi("\u{1b}[1;32mok\u{1b}[0m\r\n\u{1b}]0;title\u{7}x"), "ok\nx");
        let mut j = Utf8Joiner::default();
        let e = "é".as_bytes();
        assert_eq!(j.push(&e[..1]), "");
        assert_eq!(j.push(&e[1..]), "é");
    }
}
