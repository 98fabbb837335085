//! A target session: one authorized login on one target through one upstream SSH
//! connection, with one recording. It ends exactly once, for one reason, and on every
//! end path the recording is sealed and the session row closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use russh::server;
use session_recordings::{FileRecorder, Header, PreviousRecording, RecordError, Recorder};
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::ident::{Login, SessionId, TargetName, UserName};
use crate::origin::Origin;
use crate::policy::{Authorized, Denial};
use crate::store::{AuditEvent, SessionStart, Severity, StoreError};
use crate::upstream::{self, UpstreamError, UpstreamHandle, UpstreamLogin};

/// Why a session could not start. `client_message` is safe to show to the client.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("access denied: {0}")]
    Denied(#[from] Denial),
    #[error("session refused: recording is unavailable ({0})")]
    Recording(String),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("session refused: gateway storage error")]
    Store(String),
    #[error("access denied: this login needs a second factor; connect again")]
    FactorNeeded,
    #[error("access denied: your account was suspended or your key removed while you logged in")]
    NoLongerActive,
}

/// How the user proved who they are, as the session opening checks it again: the key
/// must still be theirs and they still active (a second factor or an approval can take
/// minutes), and the second factor must cover the login.
pub struct LoginBy<'a> {
    pub key: &'a russh::keys::ssh_key::PublicKey,
    pub factor: SecondFactor,
}

/// How a login's second factor stands when its session is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactor {
    /// Proven on this connection (a TOTP code, a security-key approval).
    ProvenNow,
    /// Not asked for: a recent proof from this origin must cover the login, as the
    /// decision that opens the session judges it (not an earlier look, which may have
    /// refused the login and so asked for nothing).
    Remembered,
}

pub struct TargetSession {
    id: SessionId,
    authorized: Authorized,
    origin: Origin,
    upstream: UpstreamHandle,
    recorder: Arc<dyn Recorder>,
    cancel: CancellationToken,
    end_reason: Mutex<Option<String>>,
    front: Mutex<Option<server::Handle>>,
    started: Instant,
    /// Milliseconds since `started` of the last activity, for the idle timeout: what the
    /// client sends (input, a resize), and what the target sends on a channel without a
    /// terminal (a transfer, a non-interactive command's output).
    last_activity_ms: AtomicU64,
    /// The last time the relays took something the target sent (ms since `started`).
    last_output_ms: AtomicU64,
    store: crate::store::Store,
    /// Relayed channels still running; the supervisor lets them tell the client why the
    /// session ends before it disconnects.
    open_channels: AtomicUsize,
    channels_done: tokio::sync::Notify,
    /// Lines for the user at their first session channel (grant outcomes since their
    /// last login).
    greeting: Mutex<Vec<String>>,
    /// Requests refused on this session so far (see [`AUDITED_DENIALS`]).
    denials: AtomicU32,
}

/// Refused requests of one session that are audited one by one. Every refusal is in the
/// session's recording; past this many, the audit log gets a notice instead of a row
/// per refusal, and the total in the session's end event, so a client repeating refused
/// requests (an sftp loop, say) cannot grow the audit log without bound.
pub const AUDITED_DENIALS: u32 = 20;

/// After the target closed the connection, how long the relays may go without passing
/// anything on before the session ends with what they still hold.
const TARGET_GONE_DRAIN: Duration = Duration::from_secs(5);

/// How long an ending session's channels have to tell the client why, before the
/// connection is cut. The relays wait as long to hand the message over: it may queue
/// behind a busy channel's output on a loaded host, and the cut bounds the wait anyway.
pub const TELL_CLIENT: Duration = Duration::from_secs(1);

/// Counts a relayed channel while it lives.
pub struct ChannelGuard(Arc<TargetSession>);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        if self.0.open_channels.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.channels_done.notify_waiters();
        }
    }
}

impl std::fmt::Debug for TargetSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetSession")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl TargetSession {
    /// Decide, record, connect upstream, and register; any failure refuses the session
    /// and is audited.
    pub async fn start(
        gw: &Arc<Gateway>,
        user: &UserName,
        target: &TargetName,
        login: &Login,
        origin: &Origin,
        login_by: LoginBy<'_>,
    ) -> Result<Arc<TargetSession>, StartError> {
        let active = gw
            .store
            .active_user_with_key(user, login_by.key)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        let refused = |why: &str| {
            AuditEvent::new("access.denied", Severity::Warning, format!("{login}@{target}: {why}"))
                .user(user)
                .origin(origin)
        };
        if !active {
            gw.audit(refused("suspended, removed, or its key removed during the login"))
                .await;
            return Err(StartError::NoLongerActive);
        }
        let authorized = match decide_now(gw, user, target, login)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?
        {
            Ok(a) => a,
            Err(denial) => return Err(denied(gw, user, target, login, origin, denial).await),
        };
        // Checked first so a user at the limit costs no recording and no upstream
        // connection; checked again, atomically, when the session's row is written.
        // Logins of the user starting on this node meanwhile count (their rows do not
        // exist yet): a burst of logins at once costs no more recordings and upstream
        // logins than the limit allows. One check at a time on this node, each counting
        // the logins that passed before it: a burst gets in up to the limit (counting
        // each other at once, all of it could be refused).
        let (over, starting) = {
            let _turn = gw.start_checks.lock().await;
            let over = over_connection_limit(gw, user, &authorized)
                .await
                .map_err(|e| StartError::Store(e.to_string()))?;
            let starting = over.is_none().then(|| gw.starting.enter(user.as_str())).flatten();
            (over, starting)
        };
        if let Some(denial) = over {
            return Err(denied(gw, user, target, login, origin, denial).await);
        }
        if login_by.factor == SecondFactor::Remembered {
            let proved = gw
                .store
                .last_mfa_proof(user, origin.proof_place())
                .await
                .map_err(|e| StartError::Store(e.to_string()))?;
            if !crate::mfa::proof_covers(proved, authorized.mfa_window()) {
                gw.audit(refused("allowed only once the second factor was no longer asked for"))
                    .await;
                return Err(StartError::FactorNeeded);
            }
        }
        let id = SessionId::random();
        let recorder = match open_recording(gw, &id, &authorized, origin).await {
            Ok(r) => r,
            Err(e) => {
                gw.audit(
                    AuditEvent::new(
                        "session.refused",
                        Severity::Alert,
                        format!("{login}@{target}: recording unavailable: {e}"),
                    )
                    .user(user)
                    .session(&id)
                    .origin(origin),
                )
                .await;
                return Err(StartError::Recording(e));
            }
        };
        let upstream = match upstream::connect(
            &authorized,
            UpstreamLogin {
                user_ca: &gw.keys.user_ca,
                session: &id,
                connect_timeout: Duration::from_secs(15),
            },
        )
        .await
        {
            Ok(u) => u,
            Err(e) => {
                let severity = match e {
                    UpstreamError::HostKey { .. } => Severity::Alert,
                    _ => Severity::Warning,
                };
                gw.audit(
                    AuditEvent::new("upstream.failed", severity, e.to_string())
                        .user(user)
                        .session(&id)
                        .origin(origin),
                )
                .await;
                let _ = seal(gw, &recorder, format!("upstream failed: {e}")).await;
                return Err(e.into());
            }
        };
        let recording = recording_path(gw, &id);
        // Best effort: a store hiccup here costs the user a message, not the session.
        let greeting = match gw.store.take_grant_outcomes(user).await {
            Ok(gs) => gs.iter().map(crate::grants::outcome_line).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read grant outcomes");
                Vec::new()
            }
        };
        let session = Arc::new(TargetSession {
            id,
            authorized,
            origin: origin.clone(),
            upstream,
            recorder,
            cancel: CancellationToken::new(),
            end_reason: Mutex::new(None),
            front: Mutex::new(None),
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            last_output_ms: AtomicU64::new(0),
            store: gw.store.clone(),
            open_channels: AtomicUsize::new(0),
            channels_done: tokio::sync::Notify::new(),
            greeting: Mutex::new(greeting),
            denials: AtomicU32::new(0),
        });
        // Registered before its row exists, so the watcher never mistakes this session's
        // row for one left behind by a crash (and closes the row while it still runs).
        gw.register(session.clone());
        let row = SessionStart {
            id: &session.id,
            node: &gw.node,
            user: user.as_str(),
            target: target.as_str(),
            tier: session.authorized.target().tier.as_str(),
            login: login.as_str(),
            client_addr: &origin.addr.to_string(),
            workstation: origin.workstation().map(|w| w.as_str()),
            recording: &recording.to_string_lossy(),
            grant: session.authorized.grant().map(|g| g.id.as_str()),
            ends_by: crate::store::now_micros()
                .saturating_add(i64::try_from(session.authorized.max_session().as_micros()).unwrap_or(i64::MAX)),
        };
        // `Ok(Some(limit))`: the limit was reached by another session of this user that
        // started meanwhile, on this node or another.
        let written = match session.authorized.connection_limit() {
            None => gw.store.session_started(&row).await.map(|()| None),
            Some(limit) => gw
                .store
                .session_started_within(&row, limit.max)
                .await
                .map(|ok| (!ok).then_some(limit)),
        };
        // The row counts from now on (or the session is refused).
        drop(starting);
        let refusal = match written {
            Ok(None) => None,
            Ok(Some(limit)) => Some((
                denied(
                    gw,
                    user,
                    target,
                    login,
                    origin,
                    limit.refusal(user, u64::from(limit.max)),
                )
                .await,
                "connection limit reached",
            )),
            Err(e) => Some((StartError::Store(e.to_string()), "gateway storage error")),
        };
        if let Some((err, why)) = refusal {
            gw.unregister(session.id.as_str());
            let _ = session
                .upstream
                .disconnect(russh::Disconnect::ByApplication, "session refused", "")
                .await;
            let _ = seal(gw, &session.recorder, why.to_owned()).await;
            return Err(err);
        }
        gw.audit(
            AuditEvent::new("session.start", Severity::Info, session.authorized.describe())
                .user(user)
                .session(&session.id)
                .origin(origin),
        )
        .await;
        gw.tasks.spawn(supervise(gw.clone(), session.clone()));
        Ok(session)
    }

    pub fn id(&self) -> &SessionId {
        &self.id
    }
    pub fn authorized(&self) -> &Authorized {
        &self.authorized
    }
    pub fn client_addr(&self) -> SocketAddr {
        self.origin.addr
    }
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
    pub fn upstream(&self) -> &UpstreamHandle {
        &self.upstream
    }
    pub fn recorder(&self) -> &Arc<dyn Recorder> {
        &self.recorder
    }
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
    pub fn is_ended(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The client connection carrying this session, to disconnect it when the session ends.
    pub fn set_front(&self, handle: server::Handle) {
        *self.front.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// Audit and log a request refused on this session (up to [`AUDITED_DENIALS`] of
    /// them: a client can repeat a refused request as fast as it likes, and neither the
    /// audit trail nor the log may grow with it).
    pub async fn audit_denied(&self, request: &str, reason: &str) {
        let n = self.denials.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= AUDITED_DENIALS {
            tracing::info!(session = %self.id, request, reason, "request denied");
        }
        let detail = match n.cmp(&AUDITED_DENIALS) {
            std::cmp::Ordering::Less => format!("{request}: {reason}"),
            std::cmp::Ordering::Equal => format!(
                "{request}: {reason} (the {AUDITED_DENIALS}th refusal on this session: further ones are in \
                 its recording only, and counted in its end event)"
            ),
            std::cmp::Ordering::Greater => {
                tracing::debug!(session = %self.id, request, reason, "request denied, not audited");
                return;
            }
        };
        let e = AuditEvent::new("access.denied", Severity::Warning, detail)
            .user(self.authorized.user())
            .session(&self.id)
            .origin(&self.origin);
        // Written by a task of its own: the relay asking may be dropped before the write
        // completes (its channel closed from the other side), and would roll it back.
        let store = self.store.clone();
        let write = tokio::spawn(async move {
            if let Err(err) = store.audit(&e).await {
                tracing::error!(error = %err, "cannot write audit event");
            }
        });
        let _ = write.await;
    }

    /// Note the client's activity (for the idle timeout).
    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    /// Note traffic from the target (progress once the target is gone): one clock read
    /// per packet, as `touch`. Output to a terminal is not activity: an unattended
    /// terminal running `top` or `tail -f` is idle, as in Teleport's client idle timeout
    /// (and PCI DSS's idle re-authentication). Output elsewhere is: a download by scp,
    /// sftp or rsync, or a long job's log read by a script, has nobody typing.
    pub fn touch_output(&self, to_terminal: bool) {
        let ms = self.started.elapsed().as_millis() as u64;
        if !to_terminal {
            self.last_activity_ms.store(ms, Ordering::Relaxed);
        }
        self.last_output_ms.store(ms, Ordering::Relaxed);
    }

    /// End the session for `reason`; the first reason given wins.
    pub fn end(&self, reason: impl Into<String>) {
        {
            let mut r = self.end_reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        self.cancel.cancel();
    }

    /// The greeting lines, once: the first session channel shows them.
    pub fn take_greeting(&self) -> Vec<String> {
        std::mem::take(&mut *self.greeting.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Count a relayed channel until the guard drops.
    pub fn channel_guard(self: &Arc<Self>) -> ChannelGuard {
        self.open_channels.fetch_add(1, Ordering::AcqRel);
        ChannelGuard(self.clone())
    }

    /// Why the session ended (once it has).
    pub fn reason(&self) -> String {
        self.end_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "ended".to_owned())
    }
}

/// The refusal of one more session for `user` if they already have as many open (on
/// every node, and starting on this one) as `authorized`'s roles allow. Not atomic
/// across nodes: the session's row is checked again when written.
pub async fn over_connection_limit(
    gw: &Gateway,
    user: &UserName,
    authorized: &Authorized,
) -> Result<Option<Denial>, StoreError> {
    let Some(limit) = authorized.connection_limit() else {
        return Ok(None);
    };
    let rows = gw.store.live_sessions_of(user.as_str()).await?;
    let starting = gw.starting.count(user.as_str()) as u64;
    let open = rows + starting;
    Ok((open >= u64::from(limit.max)).then(|| limit.refusal(user, open)))
}

/// The policy's decision for `user` now: their role bindings and the grants in force.
pub async fn decide_now(
    gw: &Gateway,
    user: &UserName,
    target: &TargetName,
    login: &Login,
) -> Result<Result<Authorized, Denial>, crate::store::StoreError> {
    let roles = gw.store.roles_of(user).await?;
    let grants = crate::grants::in_force(&gw.store, user).await?;
    let policy = gw.policy.load_full();
    Ok(Authorized::decide(
        &policy,
        user,
        &roles,
        &grants,
        crate::store::now_micros(),
        target,
        login,
    ))
}

fn recording_path(gw: &Gateway, id: &SessionId) -> std::path::PathBuf {
    gw.config.recordings_dir.join(format!("{id}.herserec"))
}

/// Audit a login that policy refused, and say why.
async fn denied(
    gw: &Gateway,
    user: &UserName,
    target: &TargetName,
    login: &Login,
    origin: &Origin,
    denial: Denial,
) -> StartError {
    gw.audit(
        AuditEvent::new(
            "access.denied",
            Severity::Warning,
            format!("{login}@{target}: {denial}"),
        )
        .user(user)
        .origin(origin),
    )
    .await;
    denial.into()
}

async fn open_recording(
    gw: &Gateway,
    id: &SessionId,
    a: &Authorized,
    origin: &Origin,
) -> Result<Arc<dyn Recorder>, String> {
    // Benchmark-only build (`--features bench-null-recorder`): measures the relay without
    // recording. `herse serve` built this way refuses to start unless
    // HERSE_BENCH_UNRECORDED=1; no release or test build enables the feature.
    if cfg!(feature = "bench-null-recorder") {
        return Ok(Arc::new(session_recordings::NullRecorder));
    }
    let _chain = gw.recording_chain.lock().await;
    let previous = gw
        .store
        .recording_chain_head(&gw.node)
        .await
        .map_err(|e| e.to_string())?
        .map(|(session_id, header_hash)| PreviousRecording {
            session_id,
            header_hash,
        });
    let header = Header {
        session_id: id.to_string(),
        user: a.user().to_string(),
        client_addr: origin.addr.to_string(),
        workstation: origin.workstation().map(|w| w.to_string()),
        target: a.target().name.to_string(),
        target_addr: format!("{}:{}", a.target().host, a.target().port),
        tier: a.target().tier.to_string(),
        login: a.login().to_string(),
        role: a.role_label(),
        grant: a.grant().map(|g| g.id.clone()),
        decision: a.describe(),
        started_at_micros: unix_micros(),
        previous,
        signing_key: hex::encode(gw.keys.audit.verifying_key().as_bytes()),
        encryption: None,
    };
    let recipients = gw
        .policy
        .load()
        .tiers
        .get(&a.target().tier)
        .map(|t| t.encrypt_to.clone())
        .unwrap_or_default();
    let path = recording_path(gw, id);
    let dir = gw.config.recordings_dir.clone();
    let key = gw.keys.audit.clone();
    let sealed_to = if recipients.is_empty() {
        None
    } else {
        let parsed = session_recordings::crypt::parse_recipients(&recipients).map_err(|e| e.to_string())?;
        Some(session_recordings::crypt::new_key(&parsed).map_err(|e| e.to_string())?)
    };
    let stall = gw.config.recordings_stall;
    // Creations that outlived the stall limit and still wait for the store: past a few,
    // the store is not answering, and a session is refused without adding one more
    // blocked thread (clients retrying cannot pile them up).
    let Some(creating) = Creating::enter() else {
        return Err(format!(
            "the recording store is not answering ({MAX_CREATING} recordings are still waiting for it)"
        ));
    };
    // Creating the file syncs it to disk: on the blocking pool, not on the connection's
    // thread, whose other sessions keep relaying meanwhile. A store that hangs refuses
    // the session after the stall limit, like one that fails; should the file appear
    // later, no session uses it, and it is removed.
    let (created_tx, created) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let _creating = creating;
        let r = std::fs::create_dir_all(&dir)
            .map_err(|e| RecordError::Create {
                path: dir.clone(),
                source: e,
            })
            .and_then(|()| match sealed_to {
                None => FileRecorder::create(&path, &header, key),
                Some((data_key, encryption)) => {
                    let header = Header {
                        encryption: Some(encryption),
                        ..header
                    };
                    FileRecorder::create_encrypted(&path, &header, key, data_key)
                }
            })
            .map(|r| r.with_stall_limit(stall));
        if let Err(Ok(abandoned)) = created_tx.send(r) {
            drop(abandoned);
            let _ = std::fs::remove_file(session_recordings::format::index_path(&path));
            let _ = std::fs::remove_file(&path);
        }
    });
    let r = match tokio::time::timeout(stall, created).await {
        Err(_) => {
            return Err(format!(
                "the recording store did not answer within {}s",
                stall.as_secs_f32()
            ))
        }
        Ok(Err(_)) => return Err("recording could not be created: its thread stopped".to_owned()),
        Ok(Ok(r)) => r.map_err(|e| e.to_string())?,
    };
    gw.store
        .set_recording_chain_head(&gw.node, id.as_str(), &hex::encode(r.header_hash()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(r))
}

/// Run a recorder call that may wait for the disk (a checkpoint's sync, the seal) on the
/// blocking pool: the connection's thread keeps relaying its other sessions meanwhile.
pub(crate) async fn off_thread<F>(recorder: &Arc<dyn Recorder>, call: F) -> Result<(), RecordError>
where
    F: FnOnce(&dyn Recorder) -> Result<(), RecordError> + Send + 'static,
{
    let r = recorder.clone();
    match tokio::task::spawn_blocking(move || call(r.as_ref())).await {
        Ok(result) => result,
        // The runtime is shutting down or the call panicked: report it as a failure.
        Err(e) => Err(RecordError::Write(std::io::Error::other(format!(
            "recorder call failed: {e}"
        )))),
    }
}

/// Recordings being created at once, in this process, beyond which a store is taken to
/// be hung (creating one takes milliseconds when it answers).
const MAX_CREATING: usize = 16;
static CREATING: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_CREATING`] places, given back when the creation ends.
struct Creating;

impl Creating {
    fn enter() -> Option<Creating> {
        CREATING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CREATING).then_some(n + 1)
            })
            .ok()
            .map(|_| Creating)
    }
}

impl Drop for Creating {
    fn drop(&mut self) {
        CREATING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Seal a recording off the connection's thread, waiting at most the stall limit: a
/// store that hangs leaves the recording unsealed (it then reads as truncated).
async fn seal(gw: &Gateway, recorder: &Arc<dyn Recorder>, reason: String) -> Result<(), RecordError> {
    let stall = gw.config.recordings_stall;
    tokio::time::timeout(stall, off_thread(recorder, move |r| r.finish(&reason)))
        .await
        .unwrap_or(Err(RecordError::Stalled(stall)))
}

/// Runs beside a session until it ends: flushes the recording every second (a failed
/// flush ends the session), enforces the maximum length and the idle timeout, then
/// disconnects client and target, writes the reason on the row (still open, so the
/// session counts towards `max_connections` until the seal) while it seals the
/// recording, and closes the row.
async fn supervise(gw: Arc<Gateway>, s: Arc<TargetSession>) {
    let deadline = tokio::time::Instant::now() + s.authorized.max_session();
    // A session under a grant ends with it, to the second, on this node's own clock (the
    // watcher also ends it when the grant is revoked from any node).
    let grant_end = s.authorized.grant().map(|g| {
        let left = u64::try_from(g.expires_at - crate::store::now_micros()).unwrap_or(0);
        (g.id.clone(), tokio::time::Instant::now() + Duration::from_micros(left))
    });
    let idle = s.authorized.idle_timeout();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // When the supervisor first saw the target's connection closed (since the start).
    let mut target_gone: Option<Duration> = None;
    loop {
        tokio::select! {
            _ = s.cancel.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {
                s.end("maximum session length reached");
            }
            _ = async {
                match &grant_end {
                    Some((_, at)) => tokio::time::sleep_until(*at).await,
                    None => std::future::pending().await,
                }
            } => {
                let id = grant_end.as_ref().map(|(id, _)| id.as_str()).unwrap_or_default();
                s.end(format!("access grant {id} expired"));
            }
            _ = tick.tick() => {
                // A disk that hangs must not hold up the session's end (kill, grant,
                // maximum length): those cancel the session, and the seal follows.
                // A flush that outlasts the stall limit (its checkpoint's sync hangs) fails.
                let stall = gw.config.recordings_stall;
                let flushed = tokio::select! {
                    r = tokio::time::timeout(stall, off_thread(&s.recorder, |r| r.flush())) => {
                        r.unwrap_or(Err(RecordError::Stalled(stall)))
                    }
                    _ = s.cancel.cancelled() => Ok(()),
                };
                if let Err(e) = flushed {
                    s.end(format!("recording failed: {e}"));
                }
                let now = s.started.elapsed();
                let last_activity = Duration::from_millis(s.last_activity_ms.load(Ordering::Relaxed));
                if now.saturating_sub(last_activity) >= idle {
                    s.end("idle timeout");
                }
                if s.upstream.is_closed() {
                    // What the target sent before it closed (the output's tail, an exit
                    // status) may still be on its way to the client, as OpenSSH's jump
                    // host would deliver it: the session ends once the relays are done,
                    // or once they stop passing anything on. Progress is what the relays
                    // take from the target: a client that keeps sending cannot hold a
                    // session whose target is gone.
                    let gone = *target_gone.get_or_insert(now);
                    let last_output = Duration::from_millis(s.last_output_ms.load(Ordering::Relaxed));
                    let stalled = now.saturating_sub(gone.max(last_output)) >= TARGET_GONE_DRAIN;
                    if s.open_channels.load(Ordering::Acquire) == 0 || stalled {
                        s.end("target closed the connection");
                    }
                }
            }
        }
    }
    let reason = s.reason();
    // Give the relays a moment to write the reason to the client's terminals.
    let drained = s.channels_done.notified();
    if s.open_channels.load(Ordering::Acquire) > 0 {
        let _ = tokio::time::timeout(TELL_CLIENT, drained).await;
    }
    let front = s.front.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(front) = front {
        let _ = front
            .disconnect(
                russh::Disconnect::ByApplication,
                format!("herse: session ended: {reason}"),
                String::new(),
            )
            .await;
    }
    let _ = s
        .upstream
        .disconnect(russh::Disconnect::ByApplication, "session ended", "")
        .await;
    // The client is cut: say so at once (`sessions kill` waits for it), while the seal,
    // which a hung store may hold up to the stall limit, runs.
    let (sealed, ending) = tokio::join!(
        seal(&gw, &s.recorder, reason.clone()),
        gw.store.session_ending(&s.id, &reason)
    );
    if let Err(e) = ending {
        tracing::warn!(session = %s.id, error = %e, "cannot mark session row as ending");
    }
    if let Err(e) = &sealed {
        tracing::error!(session = %s.id, error = %e, "cannot seal recording");
    }
    if let Err(e) = gw.store.session_ended(&s.id, &reason).await {
        tracing::error!(session = %s.id, error = %e, "cannot close session row");
    }
    let denials = s.denials.load(Ordering::Relaxed);
    let detail = if denials > AUDITED_DENIALS {
        format!("{reason} ({denials} requests refused)")
    } else {
        reason
    };
    gw.audit(
        AuditEvent::new("session.end", Severity::Info, detail)
            .user(s.authorized.user())
            .session(&s.id)
            .origin(&s.origin),
    )
    .await;
    gw.unregister(s.id.as_str());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_waiting_on_a_hung_store_are_capped() {
        let held: Vec<Creating> = (0..MAX_CREATING).map(|_| Creating::enter().unwrap()).collect();
        assert!(Creating::enter().is_none(), "one more would block another thread");
        drop(held);
        assert!(Creating::enter().is_some(), "places come back as creations end");
    }
}
