//! Moves one channel between the client and the target, through the recorder.
//!
//! Each direction runs as its own future, so a full window one way never stalls the
//! other. Writes wait for the peer's SSH window (russh `ChannelWriteHalf`), and reads
//! come from russh's bounded per-channel queues, so a slow reader stops the gateway from
//! reading the fast side instead of making it buffer: memory per channel is bounded.
//! Every byte is handed to the recorder before it is forwarded; a recorder error ends
//! the session (fail closed).

use std::sync::Arc;
use std::time::Duration;

use russh::{server, Channel, ChannelMsg};
use session_recordings::{ChannelKind, DataDirection, Meta, RecordError};

use session_recordings::scp::{self, ScpDirection, ScpTracker};
use session_recordings::sftp::{self, Framer};
use session_recordings::sftp_audit::SftpAudit;

use crate::policy::Request;
use crate::session::{TargetSession, TELL_CLIENT};

type FrontChannel = Channel<server::Msg>;
type UpChannel = Channel<russh::client::Msg>;

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("recording failed: {0}")]
    Record(#[from] RecordError),
    #[error("channel error: {0}")]
    Ssh(#[from] russh::Error),
    /// Ends this channel only (for example a malformed SFTP packet); the session goes on.
    #[error("{0}")]
    Channel(String),
    /// The session is ending: nothing more is forwarded to the target.
    #[error("session ended")]
    Ended,
}

/// How a request on a session channel is judged; the front handler uses the same
/// function to answer the client, so the reply and the relay always agree.
pub fn judge(s: &TargetSession, msg: &ChannelMsg) -> Option<Result<(), String>> {
    let a = s.authorized();
    match msg {
        ChannelMsg::RequestShell { .. } => Some(a.check(&Request::Shell)),
        ChannelMsg::Exec { command, .. } => Some(a.check(&Request::Exec(&String::from_utf8_lossy(command)))),
        ChannelMsg::RequestSubsystem { name, .. } => Some(a.check(&Request::Subsystem(name))),
        ChannelMsg::RequestPty { .. } => Some(
            a.check(&Request::Shell)
                .or_else(|_| a.check(&Request::Exec("")))
                .map_err(|_| "a terminal is not allowed for this role".to_owned()),
        ),
        ChannelMsg::RequestX11 { .. } => Some(Err("X11 forwarding is not allowed".to_owned())),
        ChannelMsg::AgentForward { .. } => Some(Err("agent forwarding is not allowed".to_owned())),
        _ => None,
    }
}

/// Relay a session channel opened by the client.
pub async fn session_channel(
    s: Arc<TargetSession>,
    front: FrontChannel,
    front_handle: server::Handle,
    env_allowed: impl Fn(&str) -> bool + Send + Sync,
) {
    let id = u32::from(front.id());
    let Some(opened) = unless_ended(&s, &front, s.upstream().channel_open_session()).await else {
        return;
    };
    let up = match opened {
        Ok(c) => c,
        Err(e) => {
            let _ = front
                .extended_data_bytes(
                    1,
                    format!(
                        "herse: cannot open a channel on {}: {e}\r\n",
                        s.authorized().target().name
                    ),
                )
                .await;
            let _ = front.exit_status(1).await;
            let _ = front.close().await;
            return;
        }
    };
    run(s, id, ChannelKind::Session, front, up, front_handle, &env_allowed).await;
}

/// Relay a `direct-tcpip` channel (port forwarding) that policy already allowed.
pub async fn forward_channel(
    s: Arc<TargetSession>,
    front: FrontChannel,
    front_handle: server::Handle,
    host: String,
    port: u32,
    orig: (String, u32),
) {
    let id = u32::from(front.id());
    let open = s
        .upstream()
        .channel_open_direct_tcpip(host.clone(), port, orig.0, orig.1);
    let Some(opened) = unless_ended(&s, &front, open).await else {
        return;
    };
    let up = match opened {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(session = %s.id(), error = %e, "target refused port forward");
            let _ = front.close().await;
            return;
        }
    };
    run(
        s,
        id,
        ChannelKind::DirectTcpip { host, port },
        front,
        up,
        front_handle,
        &|_| false,
    )
    .await;
}

/// Open the target's side of a channel unless the session ends first (it may have ended
/// since the client's open was accepted): then nothing is opened on the target, and the
/// client's channel is closed.
async fn unless_ended<T>(
    s: &TargetSession,
    front: &FrontChannel,
    open: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = s.cancelled() => {
            let _ = front.close().await;
            None
        }
        r = open => Some(r),
    }
}

/// Requests per channel whose reply from the target may be due at once.
const MAX_REPLIES_DUE: usize = 8;

/// A request forwarded to the target with want-reply.
#[derive(Debug)]
enum Due {
    Terminal,
    /// The channel's shell, exec or subsystem request, named for messages.
    Start(String),
}

/// State shared by the two directions of one channel.
struct Chan<'a> {
    s: &'a TargetSession,
    id: u32,
    up: &'a russh::ChannelWriteHalf<russh::client::Msg>,
    front: &'a russh::ChannelWriteHalf<server::Msg>,
    /// Held while writing one whole message to the client, so a packet the gateway
    /// injects (an SFTP refusal) never lands inside a packet from the target.
    front_lock: tokio::sync::Mutex<()>,
    /// Set once the channel runs the sftp subsystem.
    sftp: std::sync::Mutex<Option<SftpAudit>>,
    /// Set once the channel runs a legacy `scp -t` / `scp -f`.
    scp: std::sync::Mutex<Option<(ScpDirection, ScpTracker)>>,
    /// A session channel runs exactly one shell, exec or subsystem, and carries no data
    /// before it (so nothing reaches the target outside a judged command).
    is_session: bool,
    started: std::sync::atomic::AtomicBool,
    /// Set once the client asked for a terminal: the target's output then does not count
    /// as activity for the idle timeout (`TargetSession::touch_output`). Cleared if the
    /// target refuses it, unless it granted one before (`terminal_granted`).
    terminal: std::sync::atomic::AtomicBool,
    terminal_granted: std::sync::atomic::AtomicBool,
    /// Requests forwarded with want-reply whose answer from the target is still due
    /// (answers come in order). The client had its answer already (see `front`'s request
    /// handlers), so a refusal is acted on here: a refused shell, exec or subsystem ends
    /// the channel with the reason (without want-reply, the client was left waiting on
    /// an open channel for good), a refused terminal is reported to the client.
    replies_due: std::sync::Mutex<std::collections::VecDeque<Due>>,
    /// Bytes from the client and from the target, for the channel's closing record.
    bytes_in: std::sync::atomic::AtomicU64,
    bytes_out: std::sync::atomic::AtomicU64,
}

impl Chan<'_> {
    /// Follow a legacy scp stream: bytes going `flow` (`Upload`: from the client) are
    /// the sender's when the transfer goes that way, the receiver's answers otherwise.
    /// Record the files it carries.
    fn scp_feed(&self, flow: ScpDirection, data: &[u8]) -> Result<(), RelayError> {
        let events = match self.scp.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some((d, t)) if *d == flow => t.feed(data),
            Some((_, t)) => t.answer(data),
            None => return Ok(()),
        };
        for m in &events {
            self.s.recorder().meta(self.id, m)?;
        }
        Ok(())
    }

    /// Whether to ask the target for a reply to `due`. A target that never answers
    /// cannot make the queue grow past a few entries: later requests go without.
    fn want_reply(&self, due: Due) -> bool {
        let mut q = self.replies_due.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_REPLIES_DUE {
            return false;
        }
        q.push_back(due);
        true
    }

    /// The request the target's success or failure answers; `None` if none was due.
    fn answered(&self) -> Option<Due> {
        self.replies_due.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    fn on_terminal(&self) -> bool {
        self.terminal.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn sftp_active(&self) -> bool {
        self.sftp.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn scp_active(&self) -> bool {
        self.scp.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Tell the client why the channel is refused or ends, then close it.
    async fn fail(&self, message: &str) {
        let _g = self.front_lock.lock().await;
        let _ = self.front.extended_data_bytes(1, format!("herse: {message}\r\n")).await;
        let _ = self.front.exit_status(1).await;
        let _ = self.front.eof().await;
        let _ = self.front.close().await;
    }
}

async fn run(
    s: Arc<TargetSession>,
    id: u32,
    kind: ChannelKind,
    front: FrontChannel,
    up: UpChannel,
    front_handle: server::Handle,
    env_allowed: &(dyn Fn(&str) -> bool + Send + Sync),
) {
    let _guard = s.channel_guard();
    let is_session = kind == ChannelKind::Session;
    if let Err(e) = s.recorder().meta(id, &Meta::ChannelOpen { kind }) {
        s.end(format!("recording failed: {e}"));
        return;
    }
    let (mut front_rx, front_tx) = front.split();
    let (mut up_rx, up_tx) = up.split();
    let chan = Chan {
        s: &s,
        id,
        up: &up_tx,
        front: &front_tx,
        front_lock: tokio::sync::Mutex::new(()),
        sftp: std::sync::Mutex::new(None),
        scp: std::sync::Mutex::new(None),
        bytes_in: std::sync::atomic::AtomicU64::new(0),
        bytes_out: std::sync::atomic::AtomicU64::new(0),
        is_session,
        started: std::sync::atomic::AtomicBool::new(false),
        terminal: std::sync::atomic::AtomicBool::new(false),
        terminal_granted: std::sync::atomic::AtomicBool::new(false),
        replies_due: Default::default(),
    };

    let inbound = async {
        let mut framer = Framer::default();
        while let Some(msg) = front_rx.wait().await {
            match client_to_target(&chan, msg, &mut framer, env_allowed).await {
                Ok(true) => {}
                Ok(false) => break,
                // The target closed the connection: what it sent before that (the tail of
                // the output, an exit status) is still being passed on by `outbound`,
                // which ends the channel once it has. What the client sent last was
                // recorded before it was sent; the recording says it never arrived.
                Err(RelayError::Ssh(_)) if s.upstream().is_closed() => {
                    let gone = Meta::Undelivered {
                        reason: "the target had closed its connection".into(),
                    };
                    s.recorder().meta(id, &gone)?;
                    std::future::pending::<()>().await
                }
                Err(e) => return Err(e),
            }
        }
        let _ = up_tx.close().await;
        Ok::<(), RelayError>(())
    };
    let outbound = async {
        let mut framer = Framer::default();
        while let Some(msg) = up_rx.wait().await {
            if !target_to_client(&chan, msg, &mut framer, &front_handle).await? {
                break;
            }
        }
        let _ = front_tx.close().await;
        Ok::<(), RelayError>(())
    };
    // Grant-end warnings go to session channels; this future never finishes by itself.
    let notices = async {
        if is_session {
            if let Err(e) = session_notices(&chan).await {
                s.end(e.to_string());
            }
        }
        std::future::pending::<Result<((), ()), RelayError>>().await
    };
    let both = async {
        tokio::select! {
            // A close from either side ends the channel. Once the gateway has closed one
            // side, russh delivers nothing more from it, not even the peer's CLOSE
            // reply: waiting for both directions would hold the channel (its task, its
            // `ssh.max_sessions` slot) until the connection ends.
            r = async { tokio::select! { r = inbound => r, r = outbound => r } } => r.map(|()| ((), ())),
            never = notices => never,
        }
    };
    // Set when the channel is ended by the gateway with a message to the client.
    let mut told_client = false;
    tokio::select! {
        // An ending session forwards nothing more, even when a request from the client
        // is ready in the same poll.
        biased;
        _ = s.cancelled() => {
            if is_session {
                // Best effort: the client may not be reading.
                let _ = tokio::time::timeout(TELL_CLIENT, chan.fail(&format!("session ended: {}", s.reason()))).await;
                told_client = true;
            }
        }
        r = both => match r {
            Err(RelayError::Channel(reason)) => {
                let _ = s.recorder().meta(id, &Meta::Denied { request: "channel".into(), reason: reason.clone() });
                tracing::warn!(session = %s.id(), channel = id, %reason, "channel ended");
                chan.fail(&reason).await;
                let _ = up_tx.close().await;
                told_client = true;
            }
            Err(e) => {
                s.end(e.to_string());
                if is_session {
                    let message = format!("session ended: {}", s.reason());
                    let _ = tokio::time::timeout(TELL_CLIENT, chan.fail(&message)).await;
                    told_client = true;
                }
            }
            Ok(_) => {}
        },
    }
    if told_client {
        // Let the client read the message and close the channel itself before the
        // connection goes: an OpenSSH client that is still writing when the connection
        // drops reports a broken pipe instead of the reason. Nothing is forwarded here.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(m) = front_rx.wait().await {
                if matches!(m, ChannelMsg::Close) {
                    break;
                }
            }
        })
        .await;
    }
    let leftovers = chan
        .sftp
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .map(|a| a.finish())
        .unwrap_or_default();
    for m in leftovers {
        let _ = s.recorder().meta(id, &m);
    }
    if !is_session {
        let bytes_in = chan.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
        let bytes_out = chan.bytes_out.load(std::sync::atomic::Ordering::Relaxed);
        let _ = s.recorder().meta(id, &Meta::ForwardClosed { bytes_in, bytes_out });
    }
    let _ = s.recorder().meta(id, &Meta::Close);
    // Channel close is a flush point: what the channel did is on disk now. Off this
    // thread: a flush may wait for the recording's writer or sign and sync a checkpoint.
    // A session that is ending does not wait for it: its seal writes everything, and
    // its end (a kill, above all) must not wait for a slow or hung store.
    let flushed = tokio::select! {
        r = crate::session::off_thread(s.recorder(), |r| r.flush()) => r,
        _ = s.cancelled() => Ok(()),
    };
    if let Err(e) = flushed {
        s.end(format!("recording failed: {e}"));
    }
}

/// Warnings a session channel gets before its grant ends: at 5 and at 1 minute (or at
/// once with the time left, for a grant that is already closer to its end). Data is not
/// touched: warnings go to the client's stderr (their terminal), whole, under the lock.
const GRANT_WARNINGS: [Duration; 2] = [Duration::from_secs(300), Duration::from_secs(60)];

async fn session_notices(chan: &Chan<'_>) -> Result<(), RelayError> {
    for line in chan.s.take_greeting() {
        notify(chan, &line).await?;
    }
    let Some(grant) = chan.s.authorized().grant().cloned() else {
        return Ok(());
    };
    let left = || Duration::from_micros(u64::try_from(grant.expires_at - crate::store::now_micros()).unwrap_or(0));
    let ends_at = crate::timefmt::rfc3339(grant.expires_at);
    if left() <= GRANT_WARNINGS[0] {
        let l = left();
        let secs = l.as_secs() + u64::from(l.subsec_nanos() > 0);
        let text = humantime::format_duration(Duration::from_secs(secs));
        notify(
            chan,
            &format!("access grant {} ends in {text} (at {ends_at})", grant.id),
        )
        .await?;
    }
    for at in GRANT_WARNINGS {
        let l = left();
        if l <= at {
            continue;
        }
        tokio::time::sleep(l - at).await;
        let minutes = at.as_secs() / 60;
        notify(
            chan,
            &format!(
                "access grant {} ends in {minutes} minute{} (at {ends_at}); this session will be closed then",
                grant.id,
                if minutes == 1 { "" } else { "s" }
            ),
        )
        .await?;
    }
    Ok(())
}

/// Write a gateway message to the client's stderr, and record it.
async fn notify(chan: &Chan<'_>, text: &str) -> Result<(), RelayError> {
    let msg = format!("\r\nherse: {text}\r\n");
    chan.s.recorder().data(chan.id, DataDirection::Stderr, msg.as_bytes())?;
    let _g = chan.front_lock.lock().await;
    chan.front.extended_data_bytes(1, msg.into_bytes()).await?;
    Ok(())
}

/// Pass client bytes on an sftp channel packet by packet, refusing what the role forbids
/// with an SFTP permission-denied status; the session goes on.
async fn sftp_inbound(chan: &Chan<'_>, framer: &mut Framer, data: &[u8]) -> Result<(), RelayError> {
    framer.push(data);
    while let Some(packet) = framer
        .next_packet()
        .map_err(|e| RelayError::Channel(format!("client sent {e}")))?
    {
        let req = sftp::parse_request(&packet).map_err(|e| RelayError::Channel(format!("client sent {e}")))?;
        // One message may carry many packets, each with its events.
        recording_room(chan.s).await?;
        match chan.s.authorized().check_sftp(req.access()) {
            Ok(()) => {
                if let Some(a) = chan.sftp.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    a.request(&req).map_err(|e| RelayError::Channel(e.to_string()))?;
                }
                // The recording keeps the client's bytes; the target is asked for v3.
                let packet = sftp::init_as_version_3(&packet).unwrap_or(packet);
                chan.up.data_bytes(packet).await?;
            }
            Err(reason) => {
                let request = format!("sftp {req}");
                chan.s.recorder().meta(
                    chan.id,
                    &Meta::Denied {
                        request: request.clone(),
                        reason: reason.clone(),
                    },
                )?;
                chan.s.audit_denied(&request, &reason).await;
                let id = req.id().unwrap_or(0);
                let status = sftp::status_packet(id, sftp::FX_PERMISSION_DENIED, &format!("herse: {reason}"));
                let _g = chan.front_lock.lock().await;
                chan.front.data_bytes(bytes::Bytes::from(status)).await?;
            }
        }
    }
    Ok(())
}

/// Pass target bytes on an sftp channel to the client in whole packets, auditing them.
async fn sftp_outbound(chan: &Chan<'_>, framer: &mut Framer, data: &[u8]) -> Result<(), RelayError> {
    framer.push(data);
    while let Some(packet) = framer
        .next_packet()
        .map_err(|e| RelayError::Channel(format!("target sent {e}")))?
    {
        let resp = sftp::parse_response(&packet).map_err(|e| RelayError::Channel(format!("target sent {e}")))?;
        recording_room(chan.s).await?;
        let events = match chan.sftp.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(a) => a.response(&resp).map_err(|e| RelayError::Channel(e.to_string()))?,
            None => Vec::new(),
        };
        for m in &events {
            chan.s.recorder().meta(chan.id, m)?;
        }
        let _g = chan.front_lock.lock().await;
        chan.front.data_bytes(packet).await?;
    }
    Ok(())
}

/// Wait while the session's recording is behind: off this thread, which other
/// connections share, so that a slow or hung store holds up only this session (and
/// fails it after the stall limit). Called before each message's records, and before
/// each SFTP packet's.
async fn recording_room(s: &TargetSession) -> Result<(), RelayError> {
    while s.recorder().backlogged() {
        crate::session::off_thread(s.recorder(), |r| r.await_room()).await?;
    }
    Ok(())
}

/// Forward one message from the client. `Ok(false)` ends this direction.
async fn client_to_target(
    chan: &Chan<'_>,
    msg: ChannelMsg,
    framer: &mut Framer,
    env_allowed: &(dyn Fn(&str) -> bool + Send + Sync),
) -> Result<bool, RelayError> {
    let (s, id, up) = (chan.s, chan.id, chan.up);
    if s.is_ended() {
        return Err(RelayError::Ended);
    }
    recording_room(s).await?;
    let rec = s.recorder();
    if let Some(Err(reason)) = judge(s, &msg) {
        let request = request_name(&msg);
        rec.meta(
            id,
            &Meta::Denied {
                request: request.clone(),
                reason: reason.clone(),
            },
        )?;
        s.audit_denied(&request, &reason).await;
        if matches!(
            msg,
            ChannelMsg::RequestShell { .. } | ChannelMsg::Exec { .. } | ChannelMsg::RequestSubsystem { .. }
        ) {
            chan.fail(&reason).await;
            return Ok(false);
        }
        return Ok(true);
    }
    if chan.is_session {
        use std::sync::atomic::Ordering::AcqRel;
        let starts = matches!(
            msg,
            ChannelMsg::RequestShell { .. } | ChannelMsg::Exec { .. } | ChannelMsg::RequestSubsystem { .. }
        );
        if starts && chan.started.swap(true, AcqRel) {
            return Err(RelayError::Channel("a channel runs one command".into()));
        }
        let data = matches!(msg, ChannelMsg::Data { .. } | ChannelMsg::ExtendedData { .. });
        if data && !chan.started.load(std::sync::atomic::Ordering::Acquire) {
            return Err(RelayError::Channel("data sent before a command was started".into()));
        }
    }
    match msg {
        ChannelMsg::Data { data } => {
            s.touch();
            chan.bytes_in
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            rec.data_shared(id, DataDirection::Input, data.clone())?;
            if chan.sftp_active() {
                sftp_inbound(chan, framer, &data).await?;
            } else {
                chan.scp_feed(ScpDirection::Upload, &data)?;
                up.data_bytes(data).await?;
            }
        }
        ChannelMsg::ExtendedData { data, ext } => {
            s.touch();
            rec.data_shared(id, DataDirection::Input, data.clone())?;
            // A client has no extended data to send on a session (stderr flows the
            // other way; OpenSSH's sshd drops it). On a file transfer it would be bytes
            // past the parser that judges the transfer, so it ends the channel there.
            if chan.sftp_active() || chan.scp_active() {
                return Err(RelayError::Channel(
                    "client sent extended data on a file-transfer channel".into(),
                ));
            }
            up.extended_data_bytes(ext, data).await?;
        }
        ChannelMsg::Eof => {
            rec.meta(id, &Meta::Eof { from_client: true })?;
            up.eof().await?;
        }
        ChannelMsg::Close => return Ok(false),
        ChannelMsg::RequestPty {
            term,
            col_width,
            row_height,
            pix_width,
            pix_height,
            terminal_modes,
            ..
        } => {
            rec.meta(
                id,
                &Meta::Pty {
                    term: term.clone(),
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                    modes: terminal_modes.iter().map(|&(op, v)| (op as u8, v)).collect(),
                },
            )?;
            chan.terminal.store(true, std::sync::atomic::Ordering::Relaxed);
            up.request_pty(
                chan.want_reply(Due::Terminal),
                &term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                &terminal_modes,
            )
            .await?;
        }
        ChannelMsg::RequestShell { .. } => {
            rec.meta(id, &Meta::Shell)?;
            up.request_shell(chan.want_reply(Due::Start("shell".into()))).await?;
        }
        ChannelMsg::Exec { command, .. } => {
            let text = String::from_utf8_lossy(&command).into_owned();
            if let Some(command) = scp::parse_command(&text) {
                *chan.scp.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((command.direction, ScpTracker::new(command)));
            }
            rec.meta(id, &Meta::exec(&command))?;
            up.exec(chan.want_reply(Due::Start("exec".into())), command).await?;
        }
        ChannelMsg::RequestSubsystem { name, .. } => {
            rec.meta(id, &Meta::Subsystem { name: name.clone() })?;
            if name == "sftp" {
                *chan.sftp.lock().unwrap_or_else(|p| p.into_inner()) = Some(SftpAudit::default());
            }
            let want_reply = chan.want_reply(Due::Start(format!("subsystem {name}")));
            up.request_subsystem(want_reply, name).await?;
        }
        ChannelMsg::SetEnv {
            variable_name,
            variable_value,
            ..
        } if env_allowed(&variable_name) => {
            rec.meta(
                id,
                &Meta::Env {
                    name: variable_name.clone(),
                    value: variable_value.clone(),
                },
            )?;
            up.set_env(false, variable_name, variable_value).await?;
        }
        ChannelMsg::WindowChange {
            col_width,
            row_height,
            pix_width,
            pix_height,
        } => {
            s.touch();
            rec.meta(
                id,
                &Meta::Resize {
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                },
            )?;
            up.window_change(col_width, row_height, pix_width, pix_height).await?;
        }
        ChannelMsg::Signal { signal } => {
            rec.meta(
                id,
                &Meta::Signal {
                    name: format!("{signal:?}"),
                },
            )?;
            up.signal(signal).await?;
        }
        _ => {}
    }
    Ok(true)
}

/// Forward one message from the target. `Ok(false)` ends this direction.
async fn target_to_client(
    chan: &Chan<'_>,
    msg: ChannelMsg,
    framer: &mut Framer,
    front_handle: &server::Handle,
) -> Result<bool, RelayError> {
    let (s, id, front) = (chan.s, chan.id, chan.front);
    recording_room(s).await?;
    let rec = s.recorder();
    match msg {
        ChannelMsg::Data { data } => {
            s.touch_output(chan.on_terminal());
            chan.bytes_out
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            rec.data_shared(id, DataDirection::Output, data.clone())?;
            if chan.sftp_active() {
                sftp_outbound(chan, framer, &data).await?;
            } else {
                chan.scp_feed(ScpDirection::Download, &data)?;
                let _g = chan.front_lock.lock().await;
                front.data_bytes(data).await?;
            }
        }
        ChannelMsg::ExtendedData { data, ext } => {
            s.touch_output(chan.on_terminal());
            rec.data_shared(id, DataDirection::Stderr, data.clone())?;
            front.extended_data_bytes(ext, data).await?;
        }
        ChannelMsg::Eof => {
            rec.meta(id, &Meta::Eof { from_client: false })?;
            front.eof().await?;
        }
        ChannelMsg::ExitStatus { exit_status } => {
            rec.meta(id, &Meta::ExitStatus { code: exit_status })?;
            front.exit_status(exit_status).await?;
        }
        ChannelMsg::ExitSignal {
            signal_name,
            core_dumped,
            error_message,
            lang_tag: _,
        } => {
            // Everything forwarded is recorded: the message is, and the language tag
            // (which clients ignore) is not forwarded.
            rec.meta(
                id,
                &Meta::ExitSignal {
                    signal: format!("{signal_name:?}"),
                    core_dumped,
                    message: (!error_message.is_empty()).then(|| error_message.clone()),
                },
            )?;
            let _ = front_handle
                .exit_signal_request(front.id(), signal_name, core_dumped, error_message, String::new())
                .await;
        }
        ChannelMsg::Success => {
            if let Some(Due::Terminal) = chan.answered() {
                chan.terminal_granted.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        ChannelMsg::Failure => match chan.answered() {
            Some(Due::Start(what)) => {
                return Err(RelayError::Channel(format!(
                    "target {} refused the {what} request",
                    s.authorized().target().name
                )));
            }
            Some(Due::Terminal) => {
                // As OpenSSH does ("PTY allocation request failed"): the command runs
                // without a terminal, and the user is told why.
                // A second request refused does not take away the terminal granted first.
                if !chan.terminal_granted.load(std::sync::atomic::Ordering::Relaxed) {
                    chan.terminal.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                let reason = format!("target {} refused a terminal", s.authorized().target().name);
                rec.meta(
                    id,
                    &Meta::Denied {
                        request: "pty".into(),
                        reason: reason.clone(),
                    },
                )?;
                let _g = chan.front_lock.lock().await;
                front
                    .extended_data_bytes(1, format!("herse: {reason}; running without one\r\n"))
                    .await?;
            }
            None => {}
        },
        ChannelMsg::Close => return Ok(false),
        _ => {}
    }
    Ok(true)
}

fn request_name(msg: &ChannelMsg) -> String {
    match msg {
        ChannelMsg::RequestShell { .. } => "shell".into(),
        ChannelMsg::Exec { command, .. } => format!("exec {}", String::from_utf8_lossy(command)),
        ChannelMsg::RequestSubsystem { name, .. } => format!("subsystem {name}"),
        ChannelMsg::RequestPty { .. } => "pty".into(),
        ChannelMsg::RequestX11 { .. } => "x11".into(),
        ChannelMsg::AgentForward { .. } => "agent forwarding".into(),
        other => format!("{other:?}"),
    }
}
