//! `hersectl recordings`: list, show, verify and export session recordings.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use ed25519_dalek::VerifyingKey;
use herse::ident::SessionId;
use herse::store::{SessionRow, Store};
use session_recordings::{Completeness, DataDirection, Event, Meta, RecordingReader};

use crate::commands::Failure;
use crate::output;

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
    Show { id: String },
    /// Check hash chains, signatures and the chain of recordings; exit 1 on any failure.
    Verify {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Put a recording under legal hold (never purged), or release it with --release.
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

/// Open a recording for reading its events (unlocking it when encrypted).
fn open_reader(
    path: &Path,
) -> Result<RecordingReader<std::io::BufReader<std::fs::File>>, session_recordings::ReadError> {
    let mut r = RecordingReader::open(path)?;
    unlock(&mut r)?;
    Ok(r)
}

async fn audit_key(store: &Store) -> Result<VerifyingKey, Failure> {
    let (public, _) = store.gateway_key("audit").await?;
    let bytes: [u8; 32] = hex::decode(public.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Failure {
            code: 1,
            message: "stored audit public key is malformed".into(),
        })?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| Failure {
        code: 1,
        message: format!("audit public key: {e}"),
    })
}

async fn session_row(store: &Store, id: &str) -> Result<SessionRow, Failure> {
    let sid = SessionId::parse(id).map_err(|e| Failure {
        code: 2,
        message: e.to_string(),
    })?;
    store.session(&sid).await?.ok_or_else(|| Failure {
        code: 3,
        message: format!("no recording for session {sid}"),
    })
}

pub async fn run(store: &Store, json: bool, cmd: &RecordingsCmd) -> Result<(), Failure> {
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
            let since = since.as_deref().map(parse_when).transpose()?;
            let until = until.as_deref().map(parse_when).transpose()?;
            let mut rows = Vec::new();
            for s in store.sessions(false, i64::MAX).await? {
                let keep = user.as_ref().is_none_or(|u| &s.user == u)
                    && target.as_ref().is_none_or(|t| &s.target == t)
                    && tier.as_ref().is_none_or(|t| &s.tier == t)
                    && workstation.as_ref().is_none_or(|w| {
                        s.workstation.as_deref() == Some(w.as_str()) || s.client_addr.starts_with(w.as_str())
                    })
                    && since.is_none_or(|t| s.started_at >= t)
                    && until.is_none_or(|t| s.started_at < t)
                    && s.purged_at.is_none();
                if !keep {
                    continue;
                }
                if let Some(text) = contains {
                    if hits(Path::new(&s.recording), text, 1)
                        .map(|h| h.is_empty())
                        .unwrap_or(true)
                    {
                        continue;
                    }
                }
                rows.push(s);
                if rows.len() as i64 >= *limit {
                    break;
                }
            }
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
            let row = session_row(store, id).await?;
            play_file(&row.recording, *speed, *at, *skip_idle)
        }
        RecordingsCmd::Search {
            text,
            user,
            target,
            limit,
            play,
        } => {
            let mut found: Vec<Hit> = Vec::new();
            for s in store.sessions(false, i64::MAX).await? {
                if s.purged_at.is_some()
                    || user.as_ref().is_some_and(|u| &s.user != u)
                    || target.as_ref().is_some_and(|t| &s.target != t)
                {
                    continue;
                }
                let left = (*limit as usize).saturating_sub(found.len());
                if left == 0 {
                    break;
                }
                match hits(Path::new(&s.recording), text, left) {
                    Ok(h) => found.extend(h.into_iter().map(|(t, snippet)| Hit {
                        session: s.id.clone(),
                        user: s.user.clone(),
                        target: s.target.clone(),
                        at_seconds: t as f64 / 1e6,
                        snippet,
                    })),
                    Err(e) => eprintln!("hersectl: {}: {e}", s.recording),
                }
            }
            if *play {
                let first = found.first().ok_or_else(|| Failure {
                    code: 3,
                    message: format!("no recording contains {text:?}"),
                })?;
                let row = session_row(store, &first.session).await?;
                return play_file(&row.recording, 1.0, (first.at_seconds - 2.0).max(0.0), false);
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
        RecordingsCmd::Show { id } => show(store, json, id).await,
        RecordingsCmd::Hold { id, release } => {
            let sid = SessionId::parse(id).map_err(|e| Failure {
                code: 2,
                message: e.to_string(),
            })?;
            if !store.set_legal_hold(&sid, !release).await? {
                return Err(Failure {
                    code: 3,
                    message: format!("no recording for session {sid}"),
                });
            }
            let (kind, word) = if *release {
                ("recording.release", "released from")
            } else {
                ("recording.hold", "placed under")
            };
            store
                .audit(
                    &herse::store::AuditEvent::new(
                        kind,
                        herse::store::Severity::Info,
                        format!("by {}", crate::commands::operator()),
                    )
                    .session(&sid),
                )
                .await?;
            println!("recording {sid} {word} legal hold");
            Ok(())
        }
        RecordingsCmd::Purge => Err(Failure {
            code: 2,
            message: "internal: purge is run by the caller".into(),
        }),
        RecordingsCmd::Verify { id, all } => verify(store, json, id.as_deref(), *all).await,
        RecordingsCmd::Export { id, format, output } => {
            let row = session_row(store, id).await?;
            let reader = open_reader(Path::new(&row.recording)).map_err(|e| Failure {
                code: 1,
                message: format!("{}: {e}", row.recording),
            })?;
            let (header, events, _) = reader.events().map_err(|e| Failure {
                code: 1,
                message: e.to_string(),
            })?;
            let text = match format {
                ExportFormat::Asciicast => asciicast(&header, &events),
                ExportFormat::Text => transcript(&events),
                ExportFormat::Json => json_lines(&events),
            };
            match output {
                Some(p) => std::fs::write(p, text)?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
            Ok(())
        }
    }
}

async fn show(store: &Store, json: bool, id: &str) -> Result<(), Failure> {
    let row = session_row(store, id).await?;
    let key = audit_key(store).await?;
    let verified = RecordingReader::open_verified(Path::new(&row.recording), &key).and_then(|r| r.verify());
    let (header, events, _) = open_reader(Path::new(&row.recording))
        .and_then(|r| r.events())
        .map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })?;
    let mut execs = Vec::new();
    let mut sftp = Vec::new();
    let mut denied = Vec::new();
    let mut bytes = HashMap::<&str, u64>::new();
    for e in &events {
        match e {
            Event::Meta {
                meta: Meta::Exec { command },
                ..
            } => execs.push(command.clone()),
            Event::Meta {
                meta:
                    Meta::SftpFile {
                        path,
                        bytes_read,
                        bytes_written,
                        sha256_read,
                        sha256_written,
                        ..
                    },
                ..
            } => sftp.push(format!(
                "{path}: read {bytes_read} B{}, written {bytes_written} B{}",
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
                meta:
                    Meta::SftpOp {
                        op,
                        path,
                        target,
                        outcome,
                        ..
                    },
                ..
            } if op != "open" => sftp.push(format!(
                "{op} {path}{} -> {outcome}",
                target.as_ref().map(|t| format!(" {t}")).unwrap_or_default()
            )),
            Event::Meta {
                meta: Meta::Denied { request, reason },
                ..
            } => denied.push(format!("{request}: {reason}")),
            Event::Data { direction, data, .. } => {
                let k = match direction {
                    DataDirection::Input => "input",
                    DataDirection::Output => "output",
                    DataDirection::Stderr => "stderr",
                };
                *bytes.entry(k).or_default() += data.len() as u64;
            }
            _ => {}
        }
    }
    let status = match &verified {
        Ok(v) => completeness(&v.completeness),
        Err(e) => format!("FAILED: {e}"),
    };
    let summary = serde_json::json!({
        "session": header.session_id, "user": header.user, "client": header.client_addr, "workstation": header.workstation,
        "target": header.target, "target_address": header.target_addr, "tier": header.tier, "login": header.login,
        "role": header.role, "grant": header.grant, "decision": header.decision,
        "started": output::time(header.started_at_micros as i64), "ended": row.ended_at.map(output::time), "end_reason": row.end_reason,
        "verification": status, "events": events.len(), "bytes": bytes, "execs": execs, "sftp": sftp, "denied": denied,
        "file": row.recording,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    } else if let serde_json::Value::Object(map) = summary {
        for (k, v) in map {
            match v {
                serde_json::Value::Array(items) if !items.is_empty() => {
                    println!("{k}:");
                    for i in items {
                        println!("  {}", i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string()));
                    }
                }
                serde_json::Value::String(s) => println!("{k}: {s}"),
                serde_json::Value::Null => println!("{k}: -"),
                other => println!("{k}: {other}"),
            }
        }
    }
    Ok(())
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

async fn verify(store: &Store, json: bool, id: Option<&str>, all: bool) -> Result<(), Failure> {
    let key = audit_key(store).await?;
    let rows = match (id, all) {
        (Some(id), _) => vec![session_row(store, id).await?],
        (None, true) => store.sessions(false, i64::MAX).await?,
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
        if row.purged_at.is_some() {
            purged.insert(row.id.clone());
            lines.push(VerifyLine {
                session: row.id.clone(),
                file: row.recording.clone(),
                ok: true,
                status: "purged by retention".into(),
            });
            continue;
        }
        if all && !json && total > 20 {
            eprint!("\rverifying {}/{total}", i + 1);
        }
        let line = match RecordingReader::open_verified(Path::new(&row.recording), &key).and_then(|r| r.verify()) {
            Ok(v) => {
                headers.insert(row.id.clone(), hex::encode(v.header_hash));
                if let Some(p) = &v.header.previous {
                    links.push((row.id.clone(), p.clone()));
                }
                let complete = matches!(v.completeness, Completeness::Complete { .. });
                // A live session is legitimately unsealed; an ended one must be sealed.
                let ok = complete || row.ended_at.is_none();
                VerifyLine {
                    session: row.id.clone(),
                    file: row.recording.clone(),
                    ok,
                    status: completeness(&v.completeness),
                }
            }
            Err(e) => VerifyLine {
                session: row.id.clone(),
                file: row.recording.clone(),
                ok: false,
                status: format!("FAILED: {e}"),
            },
        };
        lines.push(line);
    }
    if all && !json && total > 20 {
        eprintln!();
    }
    if all {
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

/// Assemble UTF-8 text from byte chunks that may split a character.
#[derive(Default)]
struct Utf8Joiner {
    carry: Vec<u8>,
}

impl Utf8Joiner {
    fn push(&mut self, data: &[u8]) -> String {
        self.carry.extend_from_slice(data);
        let valid_up_to = match std::str::from_utf8(&self.carry) {
            Ok(_) => self.carry.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.carry.len(),
        };
        let rest = self.carry.split_off(valid_up_to);
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = rest;
        text
    }
}

/// asciicast v2 of the first terminal channel (the one with a pty, else the first with output).
fn asciicast(header: &session_recordings::Header, events: &[Event]) -> String {
    let (channel, term, cols, rows) = crate::play::terminal_channel(events);
    let head = serde_json::json!({
        "version": 2, "width": cols, "height": rows, "timestamp": header.started_at_micros / 1_000_000,
        "env": {"TERM": term}, "title": format!("{}@{} via Herse ({})", header.login, header.target, header.user),
    });
    let mut out = format!("{head}\n");
    let mut joiner = Utf8Joiner::default();
    for e in events {
        if let Event::Data {
            t_micros,
            channel: ch,
            direction: DataDirection::Output | DataDirection::Stderr,
            data,
        } = e
        {
            if *ch == channel {
                let text = joiner.push(data);
                if !text.is_empty() {
                    out.push_str(&serde_json::json!([*t_micros as f64 / 1e6, "o", text]).to_string());
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// A readable transcript: commands, output without terminal escapes, exit codes.
fn transcript(events: &[Event]) -> String {
    let mut out = String::new();
    let mut joiners: HashMap<u32, Utf8Joiner> = HashMap::new();
    for e in events {
        match e {
            Event::Meta {
                t_micros,
                channel,
                meta,
            } => {
                let t = *t_micros as f64 / 1e6;
                let line = match meta {
                    Meta::Exec { command } => Some(format!("$ {command}")),
                    Meta::Shell => Some("[shell]".into()),
                    Meta::Subsystem { name } => Some(format!("[subsystem {name}]")),
                    Meta::ExitStatus { code } => Some(format!("[exit {code}]")),
                    Meta::ExitSignal { signal, .. } => Some(format!("[killed by {signal}]")),
                    Meta::Denied { request, reason } => Some(format!("[denied: {request}: {reason}]")),
                    Meta::SftpOp {
                        op,
                        path,
                        target,
                        outcome,
                        ..
                    } => Some(format!(
                        "[sftp {op} {path}{} -> {outcome}]",
                        target.as_ref().map(|t| format!(" {t}")).unwrap_or_default()
                    )),
                    Meta::SftpFile {
                        path,
                        bytes_read,
                        bytes_written,
                        ..
                    } => Some(format!(
                        "[sftp file {path}: read {bytes_read} B, written {bytes_written} B]"
                    )),
                    Meta::End { reason } => Some(format!("[session ended: {reason}]")),
                    _ => None,
                };
                if let Some(l) = line {
                    if !out.is_empty() && !out.ends_with('\n') {
                        out.push('\n');
                    }
                    out.push_str(&format!("{t:>9.3} #{channel} {l}\n"));
                }
            }
            Event::Data {
                channel,
                direction: DataDirection::Output | DataDirection::Stderr,
                data,
                ..
            } => {
                let text = joiners.entry(*channel).or_default().push(data);
                out.push_str(&strip_ansi(&text));
            }
            Event::Data { .. } => {}
        }
    }
    out
}

/// Remove terminal control sequences (CSI, OSC, other escapes) and carriage returns.
fn strip_ansi(s: &str) -> String {
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

fn json_lines(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        let v = match e {
            Event::Data {
                t_micros,
                channel,
                direction,
                data,
            } => serde_json::json!({
                "t": *t_micros as f64 / 1e6, "channel": channel, "type": direction, "bytes": data.len(),
                "data": String::from_utf8_lossy(data),
            }),
            Event::Meta {
                t_micros,
                channel,
                meta,
            } => serde_json::json!({
                "t": *t_micros as f64 / 1e6, "channel": channel, "type": "meta", "meta": meta,
            }),
        };
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

/// Follow a live session's recording and print its terminal output as it is written.
pub async fn watch(store: &Store, id: &str, from_start: bool) -> Result<(), Failure> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let row = session_row(store, id).await?;
    if row.ended_at.is_some() {
        return Err(Failure {
            code: 1,
            message: format!("session {} has ended; use `hersectl recordings export`", row.id),
        });
    }
    let key = audit_key(store).await?;
    let file = std::fs::File::open(&row.recording)?;
    let join_at = file.metadata()?.len();
    let stop = Arc::new(AtomicBool::new(false));
    let reader_stop = stop.clone();
    let follow = tokio::task::spawn_blocking(move || -> Result<String, Failure> {
        let tail = session_recordings::TailFile::new(file, reader_stop);
        let mut reader = RecordingReader::new(tail, Some(key)).map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })?;
        unlock(&mut reader).map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })?;
        let mut out = std::io::stdout().lock();
        eprintln!(
            "herse: watching session {} ({}@{}, user {}), read-only; Ctrl-C to stop",
            reader.header().session_id,
            reader.header().login,
            reader.header().target,
            reader.header().user
        );
        while let Some(e) = reader.next_event().map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })? {
            match e {
                Event::Data {
                    direction: DataDirection::Output | DataDirection::Stderr,
                    data,
                    ..
                } if from_start || reader.offset() > join_at => {
                    out.write_all(&data)?;
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
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut ended_since: Option<std::time::Instant> = None;
    let reason = loop {
        tokio::select! {
            r = &mut follow => break r.map_err(|e| Failure { code: 1, message: e.to_string() })??,
            _ = tick.tick() => {
                // A gateway that died leaves the recording unsealed: stop when the row says
                // the session is over and nothing more arrives.
                let live = store.session(&SessionId::parse(&row.id).map_err(|e| Failure { code: 1, message: e.to_string() })?).await?
                    .is_some_and(|s| s.ended_at.is_none());
                if !live {
                    let since = *ended_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > std::time::Duration::from_secs(3) {
                        stop.store(true, Ordering::Release);
                    }
                }
            }
        }
    };
    eprintln!("\r\nherse: session ended: {reason}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped_and_utf8_is_joined() {
        assert_eq!(strip_ansi("\u{1b}[1;32mok\u{1b}[0m\r\n\u{1b}]0;title\u{7}x"), "ok\nx");
        let mut j = Utf8Joiner::default();
        let e = "é".as_bytes();
        assert_eq!(j.push(&e[..1]), "");
        assert_eq!(j.push(&e[1..]), "é");
    }
}

#[derive(serde::Serialize)]
struct Hit {
    session: String,
    user: String,
    target: String,
    at_seconds: f64,
    snippet: String,
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

fn play_file(path: &str, speed: f64, at: f64, skip_idle: bool) -> Result<(), Failure> {
    let at_micros = (at.max(0.0) * 1e6) as u64;
    // Starting later: jump through the seek index instead of decoding from the start
    // (the player can then seek back only to the frame it started from).
    let open = |p: &Path| {
        if at_micros == 0 {
            return open_reader(p);
        }
        let mut r = RecordingReader::open_at(p, at_micros)?;
        unlock(&mut r)?;
        Ok(r)
    };
    let (_, events, _) = open(Path::new(path)).and_then(|r| r.events()).map_err(|e| Failure {
        code: 1,
        message: format!("{path}: {e}"),
    })?;
    let timeline = crate::play::Timeline::from_events(&events);
    crate::play::play(
        &timeline,
        &crate::play::PlayOptions {
            speed,
            at_micros: (at.max(0.0) * 1e6) as u64,
            max_idle: skip_idle.then_some(std::time::Duration::from_secs(1)),
        },
    )
}

/// Where `needle` occurs in a recording: (time, snippet), at most `limit`.
fn hits(path: &Path, needle: &str, limit: usize) -> Result<Vec<(u64, String)>, session_recordings::ReadError> {
    let mut reader = open_reader(path)?;
    let mut out = Vec::new();
    let mut tails: HashMap<(u32, bool), String> = HashMap::new();
    let keep = needle.chars().count().saturating_sub(1);
    while let Some(e) = reader.next_event()? {
        let (t, text, key) = match &e {
            Event::Data {
                t_micros,
                channel,
                direction,
                data,
            } => (
                *t_micros,
                strip_ansi(&String::from_utf8_lossy(data)),
                Some((*channel, *direction == DataDirection::Input)),
            ),
            Event::Meta {
                t_micros,
                meta: Meta::Exec { command },
                ..
            } => (*t_micros, command.clone(), None),
            Event::Meta {
                t_micros,
                meta: Meta::SftpOp { path, target, .. },
                ..
            } => (
                *t_micros,
                format!("{path} {}", target.clone().unwrap_or_default()),
                None,
            ),
            _ => continue,
        };
        let joined = match key {
            Some(k) => {
                let tail = tails.entry(k).or_default();
                let joined = format!("{tail}{text}");
                *tail = joined
                    .chars()
                    .rev()
                    .take(keep)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                joined
            }
            None => text,
        };
        if let Some(i) = joined.find(needle) {
            let start = joined[..i].char_indices().rev().nth(30).map(|(j, _)| j).unwrap_or(0);
            let snippet: String = joined[start..]
                .chars()
                .take(80)
                .collect::<String>()
                .replace(['\n', '\r'], " ");
            out.push((t, snippet.trim().to_owned()));
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}
