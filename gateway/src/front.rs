//! The SSH front: the russh server every client talks to.
//!
//! One handler type serves two kinds of connection:
//! - **outer** connections arrive from the network. The SSH user name is either `alice`
//!   (a jump login: targets are then named in `direct-tcpip` channels, as OpenSSH's
//!   ProxyJump does) or `alice+root+db1` (single hop straight to `root` on `db1`).
//! - **inner** connections run inside an outer connection's `direct-tcpip` channel
//!   (ProxyJump). The gateway presents a host certificate for the target's name, signed
//!   by its host CA, and the inner user name is the target login.
//!
//! Authentication state is tracked here, per connection, and never assumed from russh:
//! a public key must be verified for the very user name being logged in, and
//! keyboard-interactive is only ever used to show a refusal, never to accept.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::PublicKey;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::certs;
use crate::gateway::Gateway;
use crate::ident::{FrontLogin, Login, TargetName, UserName};
use crate::origin::{Origin, Via};
use crate::policy::Request;
use crate::relay;
use crate::session::{SecondFactor, TargetSession};
use crate::store::{AuditEvent, Severity};

/// What the connection is.
#[derive(Clone)]
enum Mode {
    Outer,
    Inner { user: UserName, target: TargetName },
}

/// Where authentication stands on this connection.
enum AuthState {
    None,
    /// The key was verified but access was refused; the next keyboard-interactive round
    /// shows `message` to `ssh_user`, then the login fails.
    Refused {
        ssh_user: String,
        message: String,
    },
    /// The key (and workstation) were accepted for `ssh_user`; the login waits for a
    /// second factor, asked through keyboard-interactive.
    SecondFactor {
        ssh_user: String,
        user: UserName,
        target: TargetName,
        login: Login,
    },
    /// Waiting for the user to approve this login with a security key on the portal.
    AwaitApproval {
        ssh_user: String,
        user: UserName,
        target: TargetName,
        login: Login,
        token_hash: String,
        /// What the terminal shows: the URL and the code the page repeats.
        instructions: String,
    },
    /// `alice` logged in for ProxyJump.
    Jump {
        user: UserName,
    },
    /// Logged in to a target session.
    Target(Arc<TargetSession>),
}

pub struct FrontHandler {
    gw: Arc<Gateway>,
    authenticated: Arc<AtomicBool>,
    origin: Origin,
    mode: Mode,
    state: AuthState,
    /// Channels open at once on this connection, up to `ssh.max_sessions`.
    channels: Arc<Semaphore>,
    /// Whether a refusal at that limit was audited already: once per connection, so a
    /// client retrying in a loop cannot flood the audit trail.
    limit_audited: AtomicBool,
    /// Channel opens refused on this connection (see [`MAX_REFUSED_CHANNELS`]), and
    /// the logins its ProxyJump hops were refused: shared with the hops' handlers.
    refused_channels: Arc<AtomicU32>,
    /// The key proven by the last public-key step, checked again when the session opens.
    key: Option<PublicKey>,
    /// An inner login (a ProxyJump hop) counted among its user's pending hops until it
    /// authenticates.
    pending_login: Option<crate::pending::Pending>,
    /// An accepted connection counted among its workstation's logins under way until the
    /// login is done: at its authentication, or for a ProxyJump connection (whose key
    /// alone authenticates it; the second factor comes at the hop) once a hop's inner
    /// login has authenticated. Shared with the connection's hops.
    startup: Arc<std::sync::Mutex<Option<crate::pending::Pending>>>,
}

/// Channel opens refused by policy on one connection before the gateway closes it: a
/// refused open holds no channel slot, so without this a client could probe targets and
/// forwards, each refusal audited, for as long as it likes. OpenSSH users retry by
/// hand; a script that is refused this often is not going to succeed.
pub const MAX_REFUSED_CHANNELS: u32 = 16;

/// A kernel socket carrying SSH, read through a 128 KiB buffer. russh reads each packet
/// with two `read_exact` calls (its first cipher block, then the rest), which on a bare
/// socket is two or three `recv` system calls per packet; through the buffer one `recv`
/// carries several packets. Writes pass straight through.
pub(crate) fn read_buffered<S: tokio::io::AsyncRead>(socket: S) -> tokio::io::BufReader<S> {
    tokio::io::BufReader::with_capacity(128 * 1024, socket)
}

/// Serve one SSH connection, accepted or inner (a ProxyJump hop), until it ends. The
/// version exchange, key exchange and authentication must be done within
/// `ssh.auth_timeout`, or the connection is cut: nothing half-open holds a connection
/// or a channel slot.
pub async fn serve_ssh<S>(config: Arc<server::Config>, stream: S, handler: FrontHandler)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let authenticated = handler.authenticated.clone();
    let deadline = tokio::time::Instant::now() + handler.gw.config.auth_timeout;
    let running = match tokio::time::timeout_at(deadline, server::run_stream(config, stream, handler)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = ?e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("no SSH handshake within the auth timeout");
            return;
        }
    };
    let handle = running.handle();
    let timer = tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        if !authenticated.load(Ordering::Acquire) {
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "herse: authentication timed out".into(),
                    String::new(),
                )
                .await;
        }
    });
    if let Err(e) = running.await {
        tracing::debug!(error = ?e, "connection ended with error");
    }
    timer.abort();
}

impl FrontHandler {
    /// The handler of an accepted connection.
    pub fn outer(gw: Arc<Gateway>, origin: Origin) -> Self {
        FrontHandler::new(gw, origin, Mode::Outer)
    }

    /// Count this connection among its workstation's logins under way (`pending`) until
    /// its login is done (see `startup`).
    pub fn counted(self, pending: crate::pending::Pending) -> Self {
        *self.startup.lock().unwrap_or_else(|p| p.into_inner()) = Some(pending);
        self
    }

    /// The login is done: the connection no longer counts among its workstation's logins
    /// under way.
    fn login_done(&self) {
        let done = self.startup.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(done);
    }

    /// A fresh connection's handler: nothing authenticated, no channel open.
    fn new(gw: Arc<Gateway>, origin: Origin, mode: Mode) -> Self {
        FrontHandler {
            authenticated: Arc::new(AtomicBool::new(false)),
            channels: Arc::new(Semaphore::new(gw.config.max_sessions)),
            limit_audited: AtomicBool::new(false),
            refused_channels: Arc::new(AtomicU32::new(0)),
            key: None,
            pending_login: None,
            startup: Default::default(),
            gw,
            origin,
            mode,
            state: AuthState::None,
        }
    }

    /// A slot for one more channel on this connection. At `ssh.max_sessions` the open is
    /// refused as a resource shortage (OpenSSH's `MaxSessions` answer); the first such
    /// refusal on a connection is audited.
    async fn channel_slot(&self, reply: ChannelOpenHandle) -> Option<(OwnedSemaphorePermit, ChannelOpenHandle)> {
        if let Ok(slot) = self.channels.clone().try_acquire_owned() {
            return Some((slot, reply));
        }
        let limit = self.gw.config.max_sessions;
        reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
        self.audit_limit(format!(
            "channel refused: {limit} already open on this connection (ssh.max_sessions)"
        ))
        .await;
        None
    }

    /// Audit a refusal at a resource limit, once per connection: a client retrying in a
    /// loop must not flood the audit trail.
    async fn audit_limit(&self, detail: String) {
        if self.limit_audited.swap(true, Ordering::Relaxed) {
            tracing::debug!(%detail, "refused at a limit again");
            return;
        }
        let mut event = AuditEvent::new("access.denied", Severity::Warning, detail).origin(&self.origin);
        match &self.state {
            AuthState::Target(s) => event = event.user(s.authorized().user()).session(s.id()),
            AuthState::Jump { user } => event = event.user(user),
            _ => {}
        }
        self.gw.audit(event).await;
    }

    /// Count a channel open refused by policy (after it was audited); at
    /// [`MAX_REFUSED_CHANNELS`], audit that and close the connection.
    async fn channel_refused(&mut self, session: &mut Session) {
        if self.refused_channels.fetch_add(1, Ordering::Relaxed) + 1 < MAX_REFUSED_CHANNELS {
            return;
        }
        let mut event = AuditEvent::new(
            "access.denied",
            Severity::Warning,
            format!("connection closed after {MAX_REFUSED_CHANNELS} refused channel requests"),
        )
        .origin(&self.origin);
        match &self.state {
            AuthState::Target(s) => event = event.user(s.authorized().user()).session(s.id()),
            AuthState::Jump { user } => event = event.user(user),
            _ => {}
        }
        self.gw.audit(event).await;
        let _ = session.disconnect(
            russh::Disconnect::ByApplication,
            &format!("herse: connection closed after {MAX_REFUSED_CHANNELS} refused requests"),
            "",
        );
    }

    /// A request Herse never serves (remote or Unix-socket forwarding, channels only a
    /// server may open): refused, audited, and counted towards the connection's limit of
    /// refusals (so a client repeating it cannot flood the audit trail).
    async fn unsupported(&mut self, request: String, session: &mut Session) {
        const REASON: &str = "not served by the gateway";
        match &self.state {
            AuthState::Target(s) => s.audit_denied(&request, REASON).await,
            state => {
                let mut event = AuditEvent::new("access.denied", Severity::Warning, format!("{request}: {REASON}"))
                    .origin(&self.origin);
                if let AuthState::Jump { user } = state {
                    event = event.user(user);
                }
                self.gw.audit(event).await;
            }
        }
        self.channel_refused(session).await;
    }

    /// [`Self::unsupported`] for a channel open, which is rejected first.
    async fn unsupported_channel(&mut self, reply: ChannelOpenHandle, request: String, session: &mut Session) {
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        self.unsupported(request, session).await;
    }

    fn refuse(&mut self, ssh_user: &str, message: String) -> Auth {
        self.state = AuthState::Refused {
            ssh_user: ssh_user.to_owned(),
            message,
        };
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::KeyboardInteractive][..])),
            partial_success: false,
        }
    }

    async fn audit_failure(&self, user: &str, reason: &str) {
        // The name comes from an unauthenticated client: escaped and bounded before it
        // reaches the audit log.
        let user: String = user.escape_debug().take(80).collect();
        self.gw
            .audit(
                AuditEvent::new("login.failure", Severity::Warning, reason.to_owned())
                    .user(user)
                    .origin(&self.origin),
            )
            .await;
    }

    /// A user logs in only from a workstation bound to them. Anything else is refused
    /// and raises an alert: a workstation key in the wrong hands, or a shared machine.
    async fn check_workstation(&self, user: &UserName) -> Result<(), String> {
        let ws = match &self.origin.via {
            Via::Loopback => return Ok(()),
            Via::Workstation(ws) => ws,
        };
        let row = match self.gw.store.workstation(ws).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "store unavailable during login");
                return Err("herse: access denied: the gateway cannot check your workstation now".into());
            }
        };
        let reason = match row {
            Some(w) if w.is_revoked() => format!("workstation {ws} is revoked"),
            Some(w) if w.owner == user.as_str() => return Ok(()),
            Some(w) => format!("workstation {ws} belongs to {}, not to {user}", w.owner),
            None => format!("workstation {ws} is not enrolled"),
        };
        self.gw
            .audit(
                AuditEvent::new("login.wrong_workstation", Severity::Alert, reason.clone())
                    .user(user)
                    .origin(&self.origin),
            )
            .await;
        Err(format!("herse: access denied: {reason}"))
    }

    /// The key is proven; ask for a second factor unless a recent enough proof from
    /// this workstation covers the login, then open the session.
    async fn start_target(&mut self, ssh_user: &str, user: &UserName, target: &TargetName, login: &Login) -> Auth {
        match self.second_factor_needed(user, target, login).await {
            Ok(false) => {
                self.open_session(ssh_user, user, target, login, SecondFactor::Remembered)
                    .await
            }
            Ok(true) => {
                // A user with security keys approves on the portal (a touch), if the
                // portal has WebAuthn configured; otherwise TOTP.
                if self.gw.webauthn.is_some() {
                    match self.gw.store.security_keys(user).await {
                        Ok(keys) if !keys.is_empty() => {
                            return self.begin_approval(ssh_user, user, target, login).await
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "store unavailable during login");
                            return self.refuse(
                                ssh_user,
                                "herse: access denied: the gateway cannot check your second factor now".into(),
                            );
                        }
                    }
                }
                match self.gw.store.totp(user).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        self.audit_factor(
                            user,
                            "mfa.failure",
                            Severity::Warning,
                            "no second factor enrolled".into(),
                        )
                        .await;
                        return self.refuse(
                            ssh_user,
                            format!(
                                "herse: access denied: {user} has no second factor enrolled \
                                 (ask an admin: hersectl users totp enroll {user})"
                            ),
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store unavailable during login");
                        return self.refuse(
                            ssh_user,
                            "herse: access denied: the gateway cannot check your second factor now".into(),
                        );
                    }
                }
                self.state = AuthState::SecondFactor {
                    ssh_user: ssh_user.to_owned(),
                    user: user.clone(),
                    target: target.clone(),
                    login: login.clone(),
                };
                Auth::Reject {
                    proceed_with_methods: Some(MethodSet::from(&[MethodKind::KeyboardInteractive][..])),
                    partial_success: true,
                }
            }
            Err(message) => self.refuse(ssh_user, message),
        }
    }

    /// Issue a one-time approval URL for this login and wait for it in the next
    /// keyboard-interactive round.
    async fn begin_approval(&mut self, ssh_user: &str, user: &UserName, target: &TargetName, login: &Login) -> Auth {
        let (Some(web), true) = (self.gw.config.web.as_ref(), self.gw.webauthn.is_some()) else {
            return self.refuse(
                ssh_user,
                "herse: access denied: security keys are not configured".into(),
            );
        };
        let Some((_, origin)) = &web.webauthn else {
            return self.refuse(
                ssh_user,
                "herse: access denied: security keys are not configured".into(),
            );
        };
        let token = crate::web::random_token();
        let code = crate::web::short_code();
        let expires = crate::store::now_micros() + web.approval_ttl.as_micros() as i64;
        let hash = crate::web::token_hash(&token);
        if let Err(e) = self
            .gw
            .store
            .create_approval(
                &hash,
                user,
                self.origin.proof_place(),
                target.as_str(),
                login.as_str(),
                &code,
                expires,
            )
            .await
        {
            if let crate::store::StoreError::Refused(why) = e {
                return self.refuse(ssh_user, format!("herse: access denied: {why}"));
            }
            tracing::error!(error = %e, "cannot create an approval");
            return self.refuse(
                ssh_user,
                "herse: access denied: the gateway cannot check your second factor now".into(),
            );
        }
        self.state = AuthState::AwaitApproval {
            ssh_user: ssh_user.to_owned(),
            user: user.clone(),
            target: target.clone(),
            login: login.clone(),
            token_hash: hash,
            instructions: format!(
                "herse: approve this login with your security key, on this workstation, within {}:\n  {origin}/approve/{token}\n  (the page shows the code {code})\n",
                humantime::format_duration(web.approval_ttl)
            ),
        };
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::KeyboardInteractive][..])),
            partial_success: true,
        }
    }

    /// Wait for the approval (polled 4 times a second) until it is given or expires.
    async fn await_approval(
        &mut self,
        ssh_user: &str,
        user: UserName,
        target: TargetName,
        login: Login,
        hash: String,
    ) -> Auth {
        loop {
            match self.gw.store.consume_approval(&hash).await {
                Ok(true) => {
                    if let Err(e) = self.gw.store.record_mfa_proof(&user, self.origin.proof_place()).await {
                        tracing::error!(error = %e, "cannot record second-factor proof");
                    }
                    self.audit_factor(&user, "mfa.success", Severity::Info, "security key".into())
                        .await;
                    return self
                        .open_session(ssh_user, &user, &target, &login, SecondFactor::ProvenNow)
                        .await;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot read approvals");
                }
            }
            // Ends at expiry whatever the store says (an approval given but never taken
            // because the store fails must not keep this login waiting).
            match self.gw.store.approval(&hash).await {
                Ok(Some(a)) if a.expires_at > crate::store::now_micros() => {}
                _ => {
                    self.audit_factor(
                        &user,
                        "mfa.failure",
                        Severity::Warning,
                        "security-key approval expired".into(),
                    )
                    .await;
                    return self.refuse(ssh_user, "herse: access denied: the approval expired".into());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A refusal decided during keyboard-interactive is shown at once, in the same
    /// exchange (the client may not start another round): an instruction with no prompt,
    /// whose empty answer then fails the login.
    fn show_refusal_now(&self, auth: Auth) -> Auth {
        match (&self.state, auth) {
            (AuthState::Refused { message, .. }, Auth::Reject { .. }) => Auth::Partial {
                name: "".into(),
                instructions: format!("{message}\n").into(),
                prompts: Vec::new().into(),
            },
            (_, auth) => auth,
        }
    }

    async fn second_factor_needed(&self, user: &UserName, target: &TargetName, login: &Login) -> Result<bool, String> {
        let unavailable = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "store unavailable during login");
            "herse: access denied: the gateway cannot check your second factor now".to_owned()
        };
        // A login the policy refuses anyway is refused (with its reason) without asking,
        // and so is one over the user's max_connections.
        let Ok(authorized) = crate::session::decide_now(&self.gw, user, target, login)
            .await
            .map_err(unavailable)?
        else {
            return Ok(false);
        };
        if crate::session::over_connection_limit(&self.gw, user, &authorized)
            .await
            .map_err(unavailable)?
            .is_some()
        {
            return Ok(false);
        }
        let proved = self
            .gw
            .store
            .last_mfa_proof(user, self.origin.proof_place())
            .await
            .map_err(unavailable)?;
        Ok(!crate::mfa::proof_covers(proved, authorized.mfa_window()))
    }

    async fn open_session(
        &mut self,
        ssh_user: &str,
        user: &UserName,
        target: &TargetName,
        login: &Login,
        factor: SecondFactor,
    ) -> Auth {
        let Some(key) = self.key.clone() else {
            return self.refuse(
                ssh_user,
                "herse: access denied: no key was proven for this login".into(),
            );
        };
        let login_by = crate::session::LoginBy { key: &key, factor };
        match TargetSession::start(&self.gw, user, target, login, &self.origin, login_by).await {
            Ok(s) => {
                self.state = AuthState::Target(s);
                Auth::Accept
            }
            Err(e) => {
                // A hop's refused login (audited) counts towards its jump connection's
                // refusals, like a refused channel: hops are cheap to open again.
                if matches!(self.mode, Mode::Inner { .. }) {
                    self.refused_channels.fetch_add(1, Ordering::Relaxed);
                }
                self.refuse(ssh_user, format!("herse: {e}"))
            }
        }
    }

    async fn audit_factor(&self, user: &UserName, kind: &'static str, severity: Severity, detail: String) {
        self.gw
            .audit(AuditEvent::new(kind, severity, detail).user(user).origin(&self.origin))
            .await;
    }

    /// One answer to the TOTP prompt.
    async fn second_factor_answer(
        &mut self,
        ssh_user: &str,
        user: UserName,
        target: TargetName,
        login: Login,
        code: &str,
    ) -> Auth {
        use crate::mfa::Verdict;
        let verdict = crate::mfa::check_second_factor(&self.gw.store, &self.gw.keys.user_secrets, &user, code).await;
        let when = crate::timefmt::rfc3339;
        match verdict {
            Ok(v @ (Verdict::Accepted | Verdict::AcceptedRecovery { .. })) => {
                if let Err(e) = self.gw.store.record_mfa_proof(&user, self.origin.proof_place()).await {
                    tracing::error!(error = %e, "cannot record second-factor proof");
                }
                match v {
                    Verdict::AcceptedRecovery { left } => {
                        // Notable: the authenticator may be lost or stolen.
                        self.audit_factor(
                            &user,
                            "mfa.success",
                            Severity::Warning,
                            format!("recovery code ({left} left)"),
                        )
                        .await
                    }
                    _ => {
                        self.audit_factor(&user, "mfa.success", Severity::Info, "TOTP".into())
                            .await
                    }
                }
                self.open_session(ssh_user, &user, &target, &login, SecondFactor::ProvenNow)
                    .await
            }
            Ok(Verdict::NotEnrolled) => {
                self.audit_factor(
                    &user,
                    "mfa.failure",
                    Severity::Warning,
                    "no second factor enrolled".into(),
                )
                .await;
                self.refuse(ssh_user, format!("herse: access denied: {user} has no second factor enrolled (ask an admin: hersectl users totp enroll {user})"))
            }
            Ok(Verdict::Locked(until)) => {
                self.audit_factor(
                    &user,
                    "mfa.failure",
                    Severity::Warning,
                    format!("locked until {}", when(until)),
                )
                .await;
                self.refuse(ssh_user, format!("herse: access denied: second factor locked after repeated failures until {} (an admin can unlock it)", when(until)))
            }
            Ok(Verdict::Failed { reason, locked_until }) => {
                self.audit_factor(&user, "mfa.failure", Severity::Warning, format!("TOTP: {reason}"))
                    .await;
                if let Some(until) = locked_until {
                    self.audit_factor(
                        &user,
                        "mfa.lockout",
                        Severity::Alert,
                        format!("second factor locked until {}", when(until)),
                    )
                    .await;
                    return self.refuse(
                        ssh_user,
                        format!(
                            "herse: access denied: {reason}; second factor locked until {}",
                            when(until)
                        ),
                    );
                }
                // Say why and ask again (each answer counts towards the lock).
                let prompt = totp_prompt(&user);
                self.state = AuthState::SecondFactor {
                    ssh_user: ssh_user.to_owned(),
                    user,
                    target,
                    login,
                };
                Auth::Partial {
                    name: "Herse second factor".into(),
                    instructions: format!("herse: {reason}\n").into(),
                    prompts: vec![(prompt.into(), false)].into(),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "second factor check failed");
                self.refuse(
                    ssh_user,
                    "herse: access denied: the gateway cannot check your second factor now".into(),
                )
            }
        }
    }
}

impl FrontHandler {
    async fn publickey_offered(&mut self, user: &str, offer: server::PublicKeyOffer<'_>) -> Result<Auth, russh::Error> {
        let key: &PublicKey = offer.public_key;
        // Only say "yes, prove it" for keys the user really holds, so probing reveals nothing
        // beyond what a signature attempt would.
        let Ok(login) = FrontLogin::parse(user) else {
            return Ok(Auth::reject());
        };
        let owner = match &self.mode {
            Mode::Outer => login.user().clone(),
            Mode::Inner { user: u, .. } => u.clone(),
        };
        match self.gw.store.active_user_with_key(&owner, key).await {
            Ok(true) => Ok(Auth::Accept),
            Ok(false) => {
                let fp = crate::store::fingerprint(key);
                self.audit_failure(user, &format!("key {fp} is not registered to an active user {owner}"))
                    .await;
                Ok(Auth::reject())
            }
            Err(e) => {
                tracing::error!(error = %e, "store unavailable during login");
                Ok(Auth::reject())
            }
        }
    }

    async fn publickey(&mut self, ssh_user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, russh::Error> {
        self.state = AuthState::None;
        self.key = None;
        match self.mode.clone() {
            Mode::Outer => {
                let front = match FrontLogin::parse(ssh_user) {
                    Ok(f) => f,
                    Err(e) => {
                        self.audit_failure(ssh_user, &e.to_string()).await;
                        return Ok(self.refuse(ssh_user, format!("herse: {e}")));
                    }
                };
                let user = front.user().clone();
                match self.gw.store.active_user_with_key(&user, key.public_key).await {
                    Ok(true) => self.key = Some(key.public_key.clone()),
                    Ok(false) => {
                        self.audit_failure(ssh_user, "unknown user, suspended user, or key not registered")
                            .await;
                        return Ok(Auth::reject());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store unavailable during login");
                        return Ok(Auth::reject());
                    }
                }
                if let Err(refusal) = self.check_workstation(&user).await {
                    return Ok(self.refuse(ssh_user, refusal));
                }
                self.gw
                    .audit(
                        AuditEvent::new("login.success", Severity::Info, format!("public key as {ssh_user}"))
                            .user(&user)
                            .origin(&self.origin),
                    )
                    .await;
                match front {
                    FrontLogin::Jump { user } => {
                        self.state = AuthState::Jump { user };
                        Ok(Auth::Accept)
                    }
                    FrontLogin::Direct { user, login, target } => {
                        Ok(self.start_target(ssh_user, &user, &target, &login).await)
                    }
                }
            }
            Mode::Inner { user, target } => {
                // The inner login must be proven again with one of the same user's keys.
                match self.gw.store.active_user_with_key(&user, key.public_key).await {
                    Ok(true) => self.key = Some(key.public_key.clone()),
                    _ => {
                        self.audit_failure(user.as_str(), "inner login with a key the user does not hold")
                            .await;
                        return Ok(Auth::reject());
                    }
                }
                let login = match Login::parse(ssh_user) {
                    Ok(l) => l,
                    Err(e) => return Ok(self.refuse(ssh_user, format!("herse: {e}"))),
                };
                Ok(self.start_target(ssh_user, &user, &target, &login).await)
            }
        }
    }

    async fn keyboard_interactive<'a>(
        &'a mut self,
        ssh_user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, russh::Error> {
        // Accepts only a second factor, for the user name whose key was just proven on
        // this connection (russh calls this method whatever was advertised, so the
        // order is enforced here); otherwise only shows why a login was refused.
        match (&self.state, response) {
            (AuthState::Refused { ssh_user: u, message }, None) if u == ssh_user => Ok(Auth::Partial {
                name: "".into(),
                instructions: format!("{message}\n").into(),
                prompts: Vec::new().into(),
            }),
            (
                AuthState::AwaitApproval {
                    ssh_user: u,
                    instructions,
                    ..
                },
                None,
            ) if u == ssh_user => Ok(Auth::Partial {
                name: "Herse second factor".into(),
                instructions: instructions.clone().into(),
                prompts: Vec::new().into(),
            }),
            (AuthState::AwaitApproval { ssh_user: u, .. }, Some(_)) if u == ssh_user => {
                let AuthState::AwaitApproval {
                    user,
                    target,
                    login,
                    token_hash,
                    ..
                } = std::mem::replace(&mut self.state, AuthState::None)
                else {
                    return Ok(Auth::reject());
                };
                let auth = self.await_approval(ssh_user, user, target, login, token_hash).await;
                Ok(self.show_refusal_now(auth))
            }
            (AuthState::SecondFactor { ssh_user: u, user, .. }, None) if u == ssh_user => Ok(Auth::Partial {
                name: "Herse second factor".into(),
                instructions: "".into(),
                prompts: vec![(totp_prompt(user).into(), false)].into(),
            }),
            (AuthState::SecondFactor { ssh_user: u, .. }, Some(mut answers)) if u == ssh_user => {
                let AuthState::SecondFactor {
                    user, target, login, ..
                } = std::mem::replace(&mut self.state, AuthState::None)
                else {
                    return Ok(Auth::reject());
                };
                // A code is six digits: anything longer is cut before it is looked at.
                let code: String = answers
                    .next()
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned())
                    .unwrap_or_default();
                if code.trim().is_empty() {
                    // An empty answer cancels this round (not a failure); the client may
                    // start another.
                    self.state = AuthState::SecondFactor {
                        ssh_user: ssh_user.to_owned(),
                        user,
                        target,
                        login,
                    };
                    return Ok(Auth::Reject {
                        proceed_with_methods: Some(MethodSet::from(&[MethodKind::KeyboardInteractive][..])),
                        partial_success: false,
                    });
                }
                let auth = self.second_factor_answer(ssh_user, user, target, login, &code).await;
                Ok(self.show_refusal_now(auth))
            }
            _ => {
                self.state = AuthState::None;
                Ok(Auth::reject())
            }
        }
    }
}

impl Drop for FrontHandler {
    fn drop(&mut self) {
        if let AuthState::Target(s) = &self.state {
            s.end("client disconnected");
        }
    }
}

/// How long a failed authentication attempt is held before the answer: slows guessing
/// and hides which check failed. Partial successes and prompts are not delayed.
const REJECTION_PAD: Duration = Duration::from_millis(300);

async fn padded(r: Result<Auth, russh::Error>) -> Result<Auth, russh::Error> {
    if let Ok(Auth::Reject {
        partial_success: false, ..
    }) = &r
    {
        tokio::time::sleep(REJECTION_PAD).await;
    }
    r
}

fn totp_prompt(user: &UserName) -> String {
    format!("Verification code (TOTP) for {user}: ")
}

/// The host certificate the inner server presents for `target`.
fn inner_config(gw: &Gateway, target: &TargetName) -> Result<server::Config, certs::CertError> {
    let cert = certs::host_certificate(
        &gw.keys.host_ca,
        gw.keys.host_public(),
        target.as_str(),
        Duration::from_secs(24 * 3600),
    )?;
    Ok(server::Config {
        keys: vec![gw.keys.host.clone()],
        certificates: vec![cert],
        ..base_config(gw)
    })
}

/// Settings shared by outer and inner servers.
pub fn base_config(gw: &Gateway) -> server::Config {
    server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-Herse".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // Rejections are padded by `padded`, not by russh, which would also delay a
        // partial success (public key accepted, second factor next).
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![gw.keys.host.clone()],
        // OpenSSH's own window (2 MiB). Offered 8 MiB, the OpenSSH client buffered that
        // much and spent twice the CPU per GiB on allocating and unmapping its buffers
        // (ProxyJump upload: 6.8 against 3.3 CPU-s/GiB with 2 MiB).
        window_size: 2 * 1024 * 1024,
        maximum_packet_size: 65535,
        // The patched russh (vendor/russh/HERSE-PATCH.md) queues at most a window of
        // data per channel and grants more only as the relay takes it. The queue must
        // hold a window's packets, or the session loop waits on it again (and may
        // deadlock): 2 MiB in packets of 32 bytes or more. tokio allocates slots only
        // as they fill, so the bound costs nothing until it is used.
        channel_buffer_size: 65536,
        max_auth_attempts: 6,
        inactivity_timeout: None,
        keepalive_interval: Some(gw.config.client_alive.interval),
        keepalive_max: usize::try_from(gw.config.client_alive.count_max).unwrap_or(usize::MAX),
        nodelay: true,
        preferred: crate::upstream::front_algorithms(&gw.config.ciphers),
        ..Default::default()
    }
}

impl server::Handler for FrontHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let r = self.publickey_offered(user, offer).await;
        padded(r).await
    }

    async fn auth_publickey(&mut self, ssh_user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        let r = self.publickey(ssh_user, key).await;
        padded(r).await
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        ssh_user: &str,
        submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let r = self.keyboard_interactive(ssh_user, submethods, response).await;
        padded(r).await
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.authenticated.store(true, Ordering::Release);
        self.pending_login = None;
        // A ProxyJump connection's login is done at its first hop's.
        if !matches!(self.state, AuthState::Jump { .. }) {
            self.login_done();
        }
        if let AuthState::Target(s) = &self.state {
            s.set_front(session.handle());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match &self.state {
            // An ending session (killed, suspended, expired) starts nothing more, even in
            // the moment before its connection is cut: it is refused below.
            AuthState::Target(s) if !s.is_ended() => {
                let Some((slot, reply)) = self.channel_slot(reply).await else {
                    return Ok(());
                };
                reply.accept().await;
                let s = s.clone();
                let handle = session.handle();
                let cfg = self.gw.clone();
                self.gw.tasks.spawn(async move {
                    let _slot = slot;
                    relay::session_channel(s, channel, handle, move |name| cfg.config.env_allowed(name)).await;
                });
            }
            AuthState::Jump { user } => {
                let Some((slot, reply)) = self.channel_slot(reply).await else {
                    return Ok(());
                };
                reply.accept().await;
                let user = user.clone();
                self.gw.tasks.spawn(async move {
                    let _slot = slot;
                    let msg = format!(
                        "herse: {user}, name a target: ssh -J {user}@<gateway> LOGIN@TARGET, or ssh {user}+LOGIN+TARGET@<gateway>\r\n"
                    );
                    let _ = channel.extended_data_bytes(1, msg).await;
                    let _ = channel.exit_status(1).await;
                    let _ = channel.eof().await;
                    let _ = channel.close().await;
                });
            }
            _ => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await
            }
        }
        Ok(())
    }

    /// Remote forwarding (-R) would open a path from production into the workstation.
    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.unsupported(format!("remote port forwarding of {address}:{port}"), session)
            .await;
        Ok(false)
    }

    async fn streamlocal_forward(&mut self, socket_path: &str, session: &mut Session) -> Result<bool, Self::Error> {
        self.unsupported(format!("remote Unix socket forwarding of {socket_path}"), session)
            .await;
        Ok(false)
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = format!("Unix socket forwarding to {socket_path}");
        self.unsupported_channel(reply, request, session).await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = format!("an x11 channel from the client ({originator_address}:{originator_port})");
        self.unsupported_channel(reply, request, session).await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = format!("a forwarded-tcpip channel from the client ({host_to_connect}:{port_to_connect})");
        self.unsupported_channel(reply, request, session).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        orig_addr: &str,
        orig_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match &self.state {
            // Past the connection's refusals (its hops' refused logins among them).
            AuthState::Jump { .. } if self.refused_channels.load(Ordering::Relaxed) >= MAX_REFUSED_CHANNELS => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                self.channel_refused(session).await;
            }
            AuthState::Jump { user } => {
                let user = user.clone();
                let known = TargetName::parse(host)
                    .ok()
                    .filter(|t| self.gw.policy.load().target(t).is_some());
                let Some(target) = known else {
                    self.gw
                        .audit(
                            AuditEvent::new(
                                "access.denied",
                                Severity::Warning,
                                format!("ProxyJump to unknown target {host:?}:{port}"),
                            )
                            .user(&user)
                            .origin(&self.origin),
                        )
                        .await;
                    reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                    self.channel_refused(session).await;
                    return Ok(());
                };
                let Some(pending) = self.gw.pending_hops.enter(user.as_str()) else {
                    reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
                    let limit = self.gw.pending_hops.limit();
                    self.audit_limit(format!(
                        "ProxyJump hop to {target} refused: {limit} hops of this user are waiting for their login"
                    ))
                    .await;
                    return Ok(());
                };
                let Some((slot, reply)) = self.channel_slot(reply).await else {
                    return Ok(());
                };
                // The hop is a connection of its own (an upstream session, a recording):
                // it counts against `ssh.max_connections` like an accepted one.
                let Ok(connection) = self.gw.connections.clone().try_acquire_owned() else {
                    reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
                    let limit = self.gw.config.max_connections;
                    self.audit_limit(format!(
                        "ProxyJump hop to {target} refused: the gateway serves {limit} connections (ssh.max_connections)"
                    ))
                    .await;
                    return Ok(());
                };
                let config = match inner_config(&self.gw, &target) {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot mint host certificate");
                        reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                        return Ok(());
                    }
                };
                reply.accept().await;
                let mut inner = FrontHandler::new(self.gw.clone(), self.origin.clone(), Mode::Inner { user, target });
                inner.pending_login = Some(pending);
                inner.startup = self.startup.clone();
                inner.refused_channels = self.refused_channels.clone();
                let tasks = self.gw.tasks.clone();
                tasks.spawn(async move {
                    let _slots = (slot, connection);
                    serve_ssh(config, channel.into_stream(), inner).await;
                });
            }
            // An ending session opens nothing more (refused below).
            AuthState::Target(s) if !s.is_ended() => {
                let decision = s.authorized().check(&Request::Forward { host, port });
                match decision {
                    Ok(()) => {
                        let Some((slot, reply)) = self.channel_slot(reply).await else {
                            return Ok(());
                        };
                        reply.accept().await;
                        let s = s.clone();
                        let handle = session.handle();
                        let (host, orig) = (host.to_owned(), (orig_addr.to_owned(), orig_port));
                        self.gw.tasks.spawn(async move {
                            let _slot = slot;
                            relay::forward_channel(s, channel, handle, host, port, orig).await
                        });
                    }
                    Err(reason) => {
                        let request = format!("direct-tcpip {host}:{port}");
                        let recorded = s.recorder().meta(
                            u32::from(channel.id()),
                            &session_recordings::Meta::Denied {
                                request: request.clone(),
                                reason: reason.clone(),
                            },
                        );
                        if let Err(e) = recorded {
                            // Fail closed: a session whose recording broke goes no further.
                            s.end(format!("recording failed: {e}"));
                        }
                        s.audit_denied(&request, &reason).await;
                        reply
                            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                            .await;
                        self.channel_refused(session).await;
                    }
                }
            }
            _ => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await
            }
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = match &self.state {
            AuthState::Target(s) => {
                s.authorized().check(&Request::Shell).is_ok() || s.authorized().check(&Request::Exec("")).is_ok()
            }
            _ => false,
        };
        reply(session, channel, ok)
    }

    // Shell, exec and subsystem requests on a target session are acknowledged, and the
    // relay (which judges them with the same policy check) either forwards them or
    // writes the refusal to the client's stderr and exits 1: OpenSSH drops a channel's
    // output after a failed request, so a failure reply would hide the reason.
    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        reply(session, channel, matches!(self.state, AuthState::Target(_)))
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply(session, channel, matches!(self.state, AuthState::Target(_)))
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply(session, channel, matches!(self.state, AuthState::Target(_)))
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = matches!(&self.state, AuthState::Target(_)) && self.gw.config.env_allowed(name);
        reply(session, channel, ok)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply(session, channel, false)
    }

    async fn agent_request(&mut self, _channel: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

fn reply(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), russh::Error> {
    if ok {
        session.channel_success(channel)
    } else {
        session.channel_failure(channel)
    }
}
