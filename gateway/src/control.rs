//! The control API: what `hersectl` asks, as data. Local mode executes a [`Call`] here
//! directly (as [`Caller::Local`]); remote mode sends the same `Call` as JSON to
//! `POST /api/v1/call` on the portal, which executes it here as the person its token
//! names. One code path, one permission check ([`crate::access::check`]) per call.

use crate::access::{self, Action, Caller};
use crate::audit_log::{self, AuditLogError};
use crate::grants::{self, GrantError, GrantRequest, Listing};
use crate::ident::{SessionId, UserName};
use crate::policy::Policy;
use crate::recordings_query::{QueryError, RecordingFilter, SearchQuery};
use crate::store::{AuditEvent, AuditFilter, NodeRemoval, SessionCursor, Severity, Store, StoreError};

/// One request. Tagged JSON: `{"call": "grants-approve", "id": "g…", "comment": ""}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "call", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Call {
    Whoami,
    GrantsRequest(GrantRequest),
    GrantsList {
        listing: Listing,
        limit: i64,
    },
    GrantsShow {
        id: String,
    },
    GrantsApprove {
        id: String,
        comment: String,
    },
    GrantsDeny {
        id: String,
        reason: String,
    },
    GrantsRevoke {
        id: String,
        reason: String,
    },
    /// `key`: an OpenSSH public key line.
    UsersAdd {
        name: String,
        key: Option<String>,
    },
    UsersList,
    UsersShow {
        name: String,
    },
    /// `until`: Unix microseconds.
    UsersSuspend {
        name: String,
        reason: String,
        until: Option<i64>,
    },
    UsersResume {
        name: String,
    },
    /// Newest first, at most `limit` (capped at [`MAX_PAGE`]); `after`: continue after
    /// the last row of the previous page.
    SessionsList {
        live: bool,
        limit: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<SessionCursor>,
    },
    SessionsKill {
        id: String,
    },
    /// One session's row, live or ended (`null` if there is none).
    SessionsShow {
        id: String,
    },
    NodesList,
    /// Forget a node taken out of service.
    NodesRemove {
        name: String,
    },
    /// The newest `limit` events matching, oldest first.
    AuditList {
        filter: AuditFilter,
        limit: i64,
    },
    /// Events matching with `seq > after`, oldest first (following).
    AuditAfter {
        filter: AuditFilter,
        after: i64,
        limit: i64,
    },
    /// The chain head's `seq`.
    AuditHead,
    /// Verify the chain and checkpoints, with this public key (hex) or the stored one,
    /// against this node's witness and the copies of witnesses given.
    AuditVerify {
        public_key: Option<String>,
        #[serde(default)]
        witnesses: Vec<WitnessCopy>,
    },
    UsersRemove {
        name: String,
    },
    /// Lift second-factor and portal-login lockouts.
    UsersUnlock {
        name: String,
    },
    /// Set a portal password (admins; people change their own at the portal, which asks
    /// for the current one).
    UsersPassword {
        name: String,
        password: Secret,
    },
    /// New one-time recovery codes, returned once.
    UsersRecoveryCodes {
        name: String,
    },
    UsersTotpRemove {
        name: String,
    },
    /// `key`: the text of an OpenSSH `.pub` file.
    KeysAdd {
        user: String,
        key: String,
    },
    KeysRemove {
        user: String,
        fingerprint: String,
    },
    KeysList {
        user: String,
    },
    RolesBind {
        user: String,
        role: String,
    },
    RolesUnbind {
        user: String,
        role: String,
    },
    /// Enrol; without `public_key` the gateway generates the pair and the answer's
    /// wg-quick file carries the private key (shown once, stored nowhere).
    WorkstationsAdd {
        name: String,
        owner: String,
        public_key: Option<String>,
    },
    WorkstationsList,
    WorkstationsShow {
        name: String,
    },
    WorkstationsRevoke {
        name: String,
        reason: String,
    },
    WorkstationsRotateKey {
        name: String,
        public_key: Option<String>,
    },
    TargetsList,
    /// Probe a target from the gateway and check its host key.
    TargetsCheck {
        name: String,
    },
    RecordingsList(RecordingFilter),
    RecordingsSearch(SearchQuery),
    /// The session row of one recording (to fetch, show, play, export, verify, watch it).
    RecordingsGet {
        id: String,
    },
    /// The audit public key recordings are signed with (hex), as the gateway stores it.
    RecordingsPublicKey,
    RecordingsHold {
        id: String,
        release: bool,
    },
    /// Purge recordings past their tier's retention on this gateway node now.
    RecordingsPurge,
}

/// A copy of a witness file handed to a verification: the name the caller knows it by,
/// and its text (read on the caller's side; the gateway reads no file for a caller).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WitnessCopy {
    pub name: String,
    pub line: String,
}

/// The most witness copies one verification takes (a cluster's nodes, with room).
pub const MAX_WITNESS_COPIES: usize = 64;

/// A secret in a call (a password): redacted `Debug`, zeroized on drop.
#[derive(Clone, Default)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    pub fn new(s: &str) -> Secret {
        Secret(zeroize::Zeroizing::new(s.to_owned()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        Ok(Secret(zeroize::Zeroizing::new(String::deserialize(d)?)))
    }
}

/// Why a call failed; `kind` picks the exit code and HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The caller may not do this.
    Refused,
    /// The request is malformed or names something invalid.
    Invalid,
    NotFound,
    /// The object is not in a state that allows it.
    Conflict,
    /// The gateway failed (storage).
    Internal,
}

impl ErrorKind {
    /// `hersectl` exit code: 1 failed, 2 usage, 3 not found, 4 refused.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Refused => 4,
            ErrorKind::Invalid => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Conflict | ErrorKind::Internal => 1,
        }
    }
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Refused => 403,
            ErrorKind::Invalid => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Internal => 500,
        }
    }
}

pub(crate) fn err(kind: ErrorKind, message: impl Into<String>) -> ControlError {
    ControlError {
        kind,
        message: message.into(),
    }
}

impl From<GrantError> for ControlError {
    fn from(e: GrantError) -> Self {
        let kind = match e {
            GrantError::Refused(_) => ErrorKind::Refused,
            GrantError::Invalid(_) => ErrorKind::Invalid,
            GrantError::NotFound(_) => ErrorKind::NotFound,
            GrantError::Conflict(_) => ErrorKind::Conflict,
            GrantError::Store(e) => return e.into(),
        };
        err(kind, e.to_string())
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => err(ErrorKind::NotFound, format!("{what} not found")),
            StoreError::Exists(what) => err(ErrorKind::Conflict, format!("{what} already exists")),
            StoreError::Refused(why) => err(ErrorKind::Conflict, why),
            other => {
                tracing::error!(error = %other, "control call failed in the store");
                err(ErrorKind::Internal, "gateway storage error")
            }
        }
    }
}

impl From<AuditLogError> for ControlError {
    fn from(e: AuditLogError) -> Self {
        match e {
            AuditLogError::Store(e) => e.into(),
            AuditLogError::Input(m) => err(ErrorKind::Invalid, m),
        }
    }
}

impl From<QueryError> for ControlError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Store(e) => e.into(),
            QueryError::Input(m) | QueryError::Identity(m) => err(ErrorKind::Invalid, m),
        }
    }
}

impl From<access::Refusal> for ControlError {
    fn from(r: access::Refusal) -> Self {
        err(ErrorKind::Refused, format!("refused: {r}"))
    }
}

/// What a call runs against.
pub struct Ctx<'a> {
    pub store: &'a Store,
    /// The policy, or why it does not load: local mode must still run the calls that do
    /// not need it (recovery from a broken policy file); the others report the reason.
    pub policy: Result<&'a Policy, &'a str>,
    pub config: &'a crate::config::GatewayConfig,
    /// age identity files for reading encrypted recordings in searches: the local
    /// operator's `--identity` files; none on the gateway, which cannot read them.
    pub identity_files: &'a [std::path::PathBuf],
    /// The gateway's user-secrets key, for the calls that store a secret (recovery codes
    /// are kept as keyed hashes): the gateway's own; in local mode loaded from the master
    /// key only for those calls.
    pub user_secrets: Option<&'a crate::secrets::MasterKey>,
    /// For `recordings purge`: the gateway's own; in local mode built from the master
    /// key only for that call.
    pub retention: Option<&'a crate::retention::Retention>,
    /// The audit key, which signs the release of a legal hold: opened from the master
    /// key in local mode, for that call only. The gateway never passes it: releases do
    /// not go through the API (see `recordings_hold`).
    pub audit_key: Option<&'a ed25519_dalek::SigningKey>,
}

/// The most rows one listing returns; longer ones are read page by page.
pub const MAX_PAGE: i64 = 10_000;

/// Listing sizes a caller may ask for: at least one row, at most [`MAX_PAGE`] per call.
fn clamp(limit: i64) -> i64 {
    limit.clamp(1, MAX_PAGE)
}

impl<'a> Ctx<'a> {
    pub(crate) fn policy(&self) -> Result<&'a Policy, ControlError> {
        self.policy
            .map_err(|why| err(ErrorKind::Invalid, format!("the policy does not load: {why}")))
    }
}

pub(crate) fn user(name: &str) -> Result<UserName, ControlError> {
    UserName::parse(name).map_err(|e| err(ErrorKind::Invalid, e.to_string()))
}

pub(crate) fn json<T: serde::Serialize>(v: T) -> Result<serde_json::Value, ControlError> {
    serde_json::to_value(v).map_err(|e| err(ErrorKind::Internal, e.to_string()))
}

/// Execute `call` for `caller`. The result is the JSON `hersectl` renders.
pub async fn execute(ctx: &Ctx<'_>, caller: &Caller, call: &Call) -> Result<serde_json::Value, ControlError> {
    let store = ctx.store;
    match call {
        Call::Whoami => {
            access::check(caller, &Action::SelfService)?;
            match caller {
                Caller::Local(who) => {
                    json(serde_json::json!({ "user": null, "roles": format!("local operator ({who})") }))
                }
                Caller::Person(p) => json(serde_json::json!({
                    "user": p.name.as_str(),
                    "roles": p.label(),
                    "bound_roles": p.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                })),
            }
        }
        Call::GrantsRequest(r) => json(grants::request(store, ctx.policy()?, caller, r).await?),
        Call::GrantsList { listing, limit } => json(grants::list(store, caller, *listing, clamp(*limit)).await?),
        Call::GrantsShow { id } => json(grants::show(store, caller, id).await?),
        Call::GrantsApprove { id, comment } => json(grants::approve(store, ctx.policy()?, caller, id, comment).await?),
        Call::GrantsDeny { id, reason } => json(grants::deny(store, caller, id, reason).await?),
        Call::GrantsRevoke { id, reason } => json(grants::revoke(store, caller, id, reason).await?),
        Call::UsersAdd { name, key } => {
            access::check(caller, &Action::ManageUsers)?;
            let u = user(name)?;
            let key = key
                .as_deref()
                .map(|k| russh::keys::ssh_key::PublicKey::from_openssh(k.trim()))
                .transpose()
                .map_err(|e| err(ErrorKind::Invalid, format!("not an OpenSSH public key: {e}")))?;
            store.add_user(&u).await?;
            let by = caller.label();
            audit(
                store,
                AuditEvent::new("user.add", Severity::Info, format!("by {by}")).user(&u),
            )
            .await?;
            if let Some(k) = key {
                let fp = store.add_key(&u, &k).await?;
                audit(
                    store,
                    AuditEvent::new("key.add", Severity::Info, format!("{fp} by {by}")).user(&u),
                )
                .await?;
            }
            json(serde_json::json!({ "user": u.as_str(), "message": format!("user {u} added") }))
        }
        Call::UsersList => {
            access::check(caller, &Action::ManageUsers)?;
            json(store.users().await?)
        }
        Call::UsersShow { name } => {
            let u = user(name)?;
            let me = caller.person().is_some_and(|p| p.name == u);
            if !me {
                access::check(caller, &Action::ManageUsers)?;
            }
            json(
                store
                    .user(&u)
                    .await?
                    .ok_or_else(|| err(ErrorKind::NotFound, format!("user {u} not found")))?,
            )
        }
        Call::UsersSuspend { name, reason, until } => {
            access::check(caller, &Action::ManageUsers)?;
            let u = user(name)?;
            let reason = reason.trim();
            if reason.is_empty() || reason.len() > 500 || reason.chars().any(|c| c.is_control()) {
                return Err(err(
                    ErrorKind::Invalid,
                    "reason must be one non-empty line of at most 500 bytes",
                ));
            }
            let now = crate::store::now_micros();
            if until.is_some_and(|t| t <= now) {
                return Err(err(ErrorKind::Invalid, "--until must be in the future"));
            }
            // Longer than ten years is a mistake (or an attempt to overflow the clock).
            if until.is_some_and(|t| t > now.saturating_add(10 * 365 * 86_400 * 1_000_000)) {
                return Err(err(ErrorKind::Invalid, "--until must be within ten years"));
            }
            store.suspend_user(&u, reason, *until).await?;
            let until_text = until
                .map(|t| format!(" until {}", crate::timefmt::rfc3339(t)))
                .unwrap_or_default();
            audit(
                store,
                AuditEvent::new(
                    "user.suspend",
                    Severity::Warning,
                    format!("{reason}{until_text} (by {})", caller.label()),
                )
                .user(&u),
            )
            .await?;
            json(serde_json::json!({
                "user": u.as_str(),
                "message": format!("user {u} suspended{until_text}; live sessions end within a second"),
            }))
        }
        Call::UsersResume { name } => {
            access::check(caller, &Action::ManageUsers)?;
            let u = user(name)?;
            store
                .set_user_status(&u, crate::store::UserStatus::Active, None)
                .await?;
            audit(
                store,
                AuditEvent::new("user.resume", Severity::Info, format!("by {}", caller.label())).user(&u),
            )
            .await?;
            json(serde_json::json!({ "user": u.as_str(), "message": format!("user {u} resumed") }))
        }
        Call::SessionsList { live, limit, after } => {
            access::check(caller, &Action::ListSessions)?;
            json(store.sessions_page(*live, clamp(*limit), after.as_ref()).await?)
        }
        Call::NodesList => {
            access::check(caller, &Action::ListSessions)?;
            json(store.nodes().await?)
        }
        Call::NodesRemove { name } => {
            access::check(caller, &Action::ManageNodes)?;
            if !crate::config::valid_node_name(name) {
                return Err(err(
                    ErrorKind::Invalid,
                    "a node name is 1 to 64 letters, digits, '.', '_' or '-'",
                ));
            }
            let timeout = ctx.config.node_timeout;
            let cut = crate::store::now_micros().saturating_sub(i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX));
            match store.remove_node(name, cut).await? {
                NodeRemoval::Removed => {}
                NodeRemoval::NotFound => return Err(err(ErrorKind::NotFound, format!("no node {name}"))),
                NodeRemoval::HasOpenSessions(n) => {
                    return Err(err(
                        ErrorKind::Conflict,
                        format!(
                            "node {name} has {n} open session(s): they close once it has been silent for \
                             cluster.node_timeout ({})",
                            humantime::format_duration(timeout)
                        ),
                    ))
                }
                NodeRemoval::RecentlySeen(at) => {
                    return Err(err(
                        ErrorKind::Conflict,
                        format!(
                            "node {name} reported at {}, within cluster.node_timeout ({}): stop it first \
                             (a running node adds itself back)",
                            crate::timefmt::rfc3339(at),
                            humantime::format_duration(timeout)
                        ),
                    ))
                }
            }
            audit(
                store,
                AuditEvent::new(
                    "node.removed",
                    Severity::Info,
                    format!("node {name} forgotten by {}", caller.label()),
                ),
            )
            .await?;
            json(serde_json::json!({ "node": name, "message": format!("node {name} removed") }))
        }
        Call::SessionsShow { id } => {
            access::check(caller, &Action::ListSessions)?;
            let sid = SessionId::parse(id).map_err(|e| err(ErrorKind::Invalid, e.to_string()))?;
            json(store.session(&sid).await?)
        }
        Call::SessionsKill { id } => {
            access::check(caller, &Action::KillSession)?;
            let sid = SessionId::parse(id).map_err(|e| err(ErrorKind::Invalid, e.to_string()))?;
            if !store.request_kill(&sid, &caller.label()).await? {
                return Err(err(ErrorKind::NotFound, format!("no live session {sid}")));
            }
            audit(
                store,
                AuditEvent::new(
                    "session.kill",
                    Severity::Warning,
                    format!("requested by {}", caller.label()),
                )
                .session(&sid),
            )
            .await?;
            json(
                serde_json::json!({ "session": sid.as_str(), "message": format!("session {sid} will end within a second") }),
            )
        }
        Call::AuditList { filter, limit } => {
            access::check(caller, &Action::ReadAudit)?;
            json(audit_log::list(store, filter, clamp(*limit)).await?)
        }
        Call::AuditAfter { filter, after, limit } => {
            access::check(caller, &Action::ReadAudit)?;
            json(audit_log::after(store, filter, *after, clamp(*limit)).await?)
        }
        Call::AuditHead => {
            access::check(caller, &Action::ReadAudit)?;
            json(store.audit_head().await?.0)
        }
        Call::AuditVerify { public_key, witnesses } => {
            access::check(caller, &Action::ReadAudit)?;
            // Hex only: a path here would have the gateway read its own files for the
            // caller (hersectl reads a key file on the caller's side).
            let key = match public_key {
                Some(k) => audit_log::public_key_from_hex(k)?,
                None => audit_log::stored_public_key(store).await?,
            };
            // Against this node's witness too: the one thing a database writer cannot
            // rewrite.
            let witness = audit_log::Witness::in_dir(&ctx.config.data_dir).read();
            if witnesses.len() > MAX_WITNESS_COPIES {
                return Err(err(
                    ErrorKind::Invalid,
                    format!("at most {MAX_WITNESS_COPIES} witnesses per verification"),
                ));
            }
            let copies = witnesses
                .iter()
                .map(|w| audit_log::copy_from_text(&w.name, &w.line))
                .collect();
            json(audit_log::verify_with_copies(store, &key, witness, copies).await?)
        }
        _ => {
            // The rest are administration and recordings: one action each, checked here
            // before anything runs; a call without one is an internal error (fail closed).
            let a = action(call).ok_or_else(|| err(ErrorKind::Internal, "call without an action"))?;
            access::check(caller, &a)?;
            more(ctx, caller, call).await
        }
    }
}

/// The action a call of the second half of [`Call`] needs.
fn action(call: &Call) -> Option<Action<'static>> {
    Some(match call {
        Call::UsersRemove { .. }
        | Call::UsersUnlock { .. }
        | Call::UsersPassword { .. }
        | Call::UsersRecoveryCodes { .. }
        | Call::UsersTotpRemove { .. }
        | Call::KeysAdd { .. }
        | Call::KeysRemove { .. }
        | Call::KeysList { .. }
        | Call::RolesBind { .. }
        | Call::RolesUnbind { .. } => Action::ManageUsers,
        Call::WorkstationsAdd { .. }
        | Call::WorkstationsList
        | Call::WorkstationsShow { .. }
        | Call::WorkstationsRevoke { .. }
        | Call::WorkstationsRotateKey { .. } => Action::ManageWorkstations,
        Call::TargetsList | Call::TargetsCheck { .. } => Action::ManageTargets,
        Call::RecordingsList(_)
        | Call::RecordingsSearch(_)
        | Call::RecordingsGet { .. }
        | Call::RecordingsPublicKey => Action::ReadRecordings,
        Call::RecordingsHold { .. } | Call::RecordingsPurge => Action::ManageRecordings,
        _ => return None,
    })
}

async fn more(ctx: &Ctx<'_>, caller: &Caller, call: &Call) -> Result<serde_json::Value, ControlError> {
    use crate::admin;
    match call {
        Call::UsersRemove { name } => admin::users_remove(ctx, caller, name).await,
        Call::UsersUnlock { name } => admin::users_unlock(ctx, caller, name).await,
        Call::UsersPassword { name, password } => admin::users_password(ctx, caller, name, password.expose()).await,
        Call::UsersRecoveryCodes { name } => admin::users_recovery_codes(ctx, caller, name).await,
        Call::UsersTotpRemove { name } => admin::users_totp_remove(ctx, caller, name).await,
        Call::KeysAdd { user, key } => admin::keys_add(ctx, caller, user, key).await,
        Call::KeysRemove { user, fingerprint } => admin::keys_remove(ctx, caller, user, fingerprint).await,
        Call::KeysList { user } => admin::keys_list(ctx, user).await,
        Call::RolesBind { user, role } => admin::roles_bind(ctx, caller, user, role).await,
        Call::RolesUnbind { user, role } => admin::roles_unbind(ctx, caller, user, role).await,
        Call::WorkstationsAdd {
            name,
            owner,
            public_key,
        } => admin::workstations_add(ctx, caller, name, owner, public_key.as_deref()).await,
        Call::WorkstationsList => json(ctx.store.workstations().await?),
        Call::WorkstationsShow { name } => admin::workstations_show(ctx, name).await,
        Call::WorkstationsRevoke { name, reason } => admin::workstations_revoke(ctx, caller, name, reason).await,
        Call::WorkstationsRotateKey { name, public_key } => {
            admin::workstations_rotate_key(ctx, caller, name, public_key.as_deref()).await
        }
        Call::TargetsList => admin::targets_list(ctx),
        Call::TargetsCheck { name } => admin::targets_check(ctx, caller, name).await,
        Call::RecordingsList(f) => {
            let rows = crate::recordings_query::list(ctx.store, f, ctx.identity_files).await?;
            if let Some(text) = &f.contains {
                // Reading inside recordings is a read: audited like a download.
                let detail = format!(
                    "list containing {text:?} by {}: {} recordings",
                    caller.label(),
                    rows.len()
                );
                audit(ctx.store, AuditEvent::new("recording.search", Severity::Info, detail)).await?;
            }
            json(rows)
        }
        Call::RecordingsSearch(q) => {
            let found = crate::recordings_query::search(ctx.store, q, ctx.identity_files).await?;
            let detail = format!("search {:?} by {}", q.text, caller.label());
            audit(ctx.store, AuditEvent::new("recording.search", Severity::Info, detail)).await?;
            json(found)
        }
        Call::RecordingsGet { id } => {
            let sid = session_id(id)?;
            let row = ctx
                .store
                .session(&sid)
                .await?
                .ok_or_else(|| err(ErrorKind::NotFound, format!("no recording for session {sid}")))?;
            json(row)
        }
        Call::RecordingsPublicKey => {
            let key = audit_log::stored_public_key(ctx.store).await?;
            json(hex::encode(key.as_bytes()))
        }
        Call::RecordingsHold { id, release } => recordings_hold(ctx, caller, id, *release).await,
        Call::RecordingsPurge => {
            let retention = ctx.retention.ok_or_else(|| {
                err(
                    ErrorKind::Internal,
                    "a purge needs the audit key, which this caller did not load",
                )
            })?;
            let ids = crate::retention::purge(
                ctx.store,
                ctx.policy()?,
                &ctx.config.node,
                &ctx.config.recordings_dir,
                retention,
            )
            .await?;
            let message = format!(
                "purged {} recording(s){}{}",
                ids.len(),
                if ids.is_empty() { "" } else { ": " },
                ids.join(", ")
            );
            json(serde_json::json!({ "purged": ids, "message": message }))
        }
        _ => Err(err(ErrorKind::Internal, "call not dispatched")),
    }
}

fn session_id(id: &str) -> Result<SessionId, ControlError> {
    SessionId::parse(id).map_err(|e| err(ErrorKind::Invalid, e.to_string()))
}

async fn recordings_hold(
    ctx: &Ctx<'_>,
    caller: &Caller,
    id: &str,
    release: bool,
) -> Result<serde_json::Value, ControlError> {
    let sid = session_id(id)?;
    let (kind, word) = if release {
        ("recording.release", "released from")
    } else {
        ("recording.hold", "placed under")
    };
    // A release lets retention destroy evidence, so only the gateway host's operator,
    // with the master key, signs one for the hold it ends; retention believes no other.
    // Not through the API: whoever can write the database can make an API caller (a
    // token, a workstation, a role binding are rows), not open the master key.
    let detail = if release {
        if !matches!(caller, Caller::Local(_)) {
            return Err(err(
                ErrorKind::Refused,
                "a legal hold is released only on the gateway host, in local mode \
                 (`hersectl --local recordings hold --release ID`, which reads the master key)",
            ));
        }
        let key = ctx.audit_key.ok_or_else(|| {
            err(
                ErrorKind::Internal,
                "releasing a legal hold needs the audit key, which this process has not opened",
            )
        })?;
        let hold = match ctx.store.standing_hold(&sid).await? {
            None => None,
            Some((seq, hash)) => Some(crate::retention::HoldRef::parse(seq, &hash).ok_or_else(|| {
                err(
                    ErrorKind::Internal,
                    format!("hold event {seq} has no valid hash: the audit log is damaged (`hersectl audit verify`)"),
                )
            })?),
        };
        crate::retention::release_detail(key, sid.as_str(), hold.as_ref(), &caller.label())
    } else {
        format!("by {}", caller.label())
    };
    let event = AuditEvent::new(kind, Severity::Info, detail).session(&sid);
    if !ctx.store.set_legal_hold(&sid, !release, &event).await? {
        return Err(match ctx.store.session(&sid).await? {
            Some(row) if row.purged_at.is_some() => err(
                ErrorKind::Conflict,
                format!("the recording of session {sid} was already purged by retention"),
            ),
            _ => err(ErrorKind::NotFound, format!("no recording for session {sid}")),
        });
    }
    json(serde_json::json!({ "session": sid.as_str(), "message": format!("recording {sid} {word} legal hold") }))
}

pub(crate) async fn audit(store: &Store, e: AuditEvent) -> Result<(), ControlError> {
    store.audit(&e).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_calls_never_show_in_debug() {
        let c = Call::UsersPassword {
            name: "alice".into(),
            password: Secret::new("hunter2-Horse"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let text = serde_json::to_string(&c).unwrap();
        let back: Call = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Call::UsersPassword { password, .. } if password.expose() == "hunter2-Horse"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<Call>(r#"{"call":"recordings-get","id":"x","path":"/etc/passwd"}"#).is_err());
        assert!(serde_json::from_str::<Call>(r#"{"call":"recordings-list","limit":5,"file":"x"}"#).is_err());
        assert!(serde_json::from_str::<Call>(r#"{"call":"recordings-list","limit":5}"#).is_ok());
        // The structs inside calls are strict too: a misspelt filter must not widen a
        // listing to everything, nor a misspelt field of a grant request vanish.
        let audit = |filter: &str| format!(r#"{{"call":"audit-list","limit":5,"filter":{filter}}}"#);
        assert!(serde_json::from_str::<Call>(&audit(r#"{"user":"alice"}"#)).is_ok());
        assert!(serde_json::from_str::<Call>(&audit(r#"{"users":"alice"}"#)).is_err());
        let request = |extra: &str| {
            format!(
                r#"{{"call":"grants-request","tier":"prod","target":null,"login":null,"duration_secs":60,"reason":"x"{extra}}}"#
            )
        };
        assert!(serde_json::from_str::<Call>(&request("")).is_ok());
        assert!(serde_json::from_str::<Call>(&request(r#","logins":"root""#)).is_err());
    }

    /// Every call past the first group names the action it needs (none falls through to
    /// "internal error", none runs unchecked).
    #[test]
    fn administration_and_recording_calls_have_actions() {
        let s = String::new;
        let calls = [
            Call::UsersRemove { name: s() },
            Call::UsersUnlock { name: s() },
            Call::UsersPassword {
                name: s(),
                password: Secret::default(),
            },
            Call::UsersRecoveryCodes { name: s() },
            Call::UsersTotpRemove { name: s() },
            Call::KeysAdd { user: s(), key: s() },
            Call::KeysRemove {
                user: s(),
                fingerprint: s(),
            },
            Call::KeysList { user: s() },
            Call::RolesBind { user: s(), role: s() },
            Call::RolesUnbind { user: s(), role: s() },
            Call::WorkstationsAdd {
                name: s(),
                owner: s(),
                public_key: None,
            },
            Call::WorkstationsList,
            Call::WorkstationsShow { name: s() },
            Call::WorkstationsRevoke { name: s(), reason: s() },
            Call::WorkstationsRotateKey {
                name: s(),
                public_key: None,
            },
            Call::TargetsList,
            Call::TargetsCheck { name: s() },
            Call::RecordingsList(RecordingFilter::default()),
            Call::RecordingsSearch(SearchQuery {
                text: s(),
                user: None,
                target: None,
                limit: 1,
            }),
            Call::RecordingsGet { id: s() },
            Call::RecordingsPublicKey,
            Call::RecordingsHold {
                id: s(),
                release: false,
            },
            Call::RecordingsPurge,
        ];
        for c in &calls {
            assert!(action(c).is_some(), "{c:?}");
        }
        assert_eq!(action(&calls[17]), Some(Action::ReadRecordings));
        assert_eq!(action(&calls[21]), Some(Action::ManageRecordings));
        assert_eq!(action(&Call::Whoami), None);
    }

    #[test]
    fn calls_are_tagged_json_and_strict() {
        let c: Call = serde_json::from_str(r#"{"call":"grants-approve","id":"g0123456789","comment":""}"#).unwrap();
        assert!(matches!(c, Call::GrantsApprove { .. }));
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["call"], "grants-approve");
        // Unknown calls and unknown fields are refused, not ignored.
        assert!(serde_json::from_str::<Call>(r#"{"call":"users-drop-all"}"#).is_err());
        assert!(
            serde_json::from_str::<Call>(r#"{"call":"grants-deny","id":"g0123456789","reason":"x","as":"root"}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Call>(r#"{"id":"g0123456789"}"#).is_err());
    }

    #[test]
    fn limits_are_clamped() {
        assert_eq!(clamp(-5), 1);
        assert_eq!(clamp(50), 50);
        assert_eq!(clamp(i64::MAX), 10_000);
    }

    #[tokio::test]
    async fn people_get_only_what_their_roles_allow() {
        let dir = std::env::temp_dir().join(format!("herse-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("db.sqlite").display());
        let store = Store::connect(&url, true).await.unwrap();
        store.migrate().await.unwrap();
        let policy = crate::policy::parse_text(
            "[tiers.db]\n[roles.dba]\ntiers = [\"db\"]\nlogins = [\"pg\"]\noperations = [\"shell\"]\n\
             max_session = \"1h\"\nidle_timeout = \"1h\"\nrequires_grant = true\n\
             [roles.boss]\nkind = \"manager\"\ntiers = [\"db\"]\n[roles.audit]\nkind = \"auditor\"\n",
        )
        .unwrap();
        let config = test_config(&dir);
        let ctx = Ctx {
            store: &store,
            policy: Ok(&policy),
            config: &config,
            identity_files: &[],
            user_secrets: None,
            retention: None,
            audit_key: None,
        };
        let person = |name: &str, role: &str| {
            let n = UserName::parse(name).unwrap();
            Caller::Person(crate::access::Person::new(
                &policy,
                n,
                &[crate::ident::RoleName::parse(role).unwrap()],
            ))
        };
        let local = Caller::Local("local:test".into());
        for u in ["alice", "bob", "dave"] {
            execute(
                &ctx,
                &local,
                &Call::UsersAdd {
                    name: u.into(),
                    key: None,
                },
            )
            .await
            .unwrap();
        }
        for (u, r) in [("alice", "dba"), ("bob", "boss"), ("dave", "audit")] {
            store
                .bind_role(&UserName::parse(u).unwrap(), &crate::ident::RoleName::parse(r).unwrap())
                .await
                .unwrap();
        }
        let (alice, bob, dave) = (person("alice", "dba"), person("bob", "boss"), person("dave", "audit"));
        let req = Call::GrantsRequest(GrantRequest {
            tier: "db".into(),
            target: None,
            login: None,
            duration_secs: 600,
            reason: "INC-1".into(),
        });
        assert_eq!(execute(&ctx, &bob, &req).await.unwrap_err().kind, ErrorKind::Refused);
        let g = execute(&ctx, &alice, &req).await.unwrap();
        let id = g["id"].as_str().unwrap().to_owned();
        let approve = Call::GrantsApprove {
            id: id.clone(),
            comment: String::new(),
        };
        for who in [&alice, &dave, &local] {
            assert_eq!(execute(&ctx, who, &approve).await.unwrap_err().kind, ErrorKind::Refused);
        }
        assert_eq!(execute(&ctx, &bob, &approve).await.unwrap()["status"], "active");
        assert_eq!(
            execute(&ctx, &bob, &approve).await.unwrap_err().kind,
            ErrorKind::Conflict
        );
        assert_eq!(
            execute(&ctx, &dave, &Call::UsersList).await.unwrap_err().kind,
            ErrorKind::Refused
        );
        assert!(execute(&ctx, &dave, &Call::AuditHead).await.is_ok());
        assert_eq!(
            execute(&ctx, &alice, &Call::AuditHead).await.unwrap_err().kind,
            ErrorKind::Refused
        );
        // Two approvers on pay; a vote stops counting when its manager loses the role.
        let policy2 = crate::policy::parse_text(
            "[tiers.pay.grants]\napprovals = 2\n[roles.dba]\ntiers = [\"pay\"]\nlogins = [\"pg\"]\n\
             operations = [\"shell\"]\nmax_session = \"1h\"\nidle_timeout = \"1h\"\nrequires_grant = true\n\
             [roles.boss]\nkind = \"manager\"\ntiers = [\"pay\"]\n",
        )
        .unwrap();
        let ctx2 = Ctx {
            store: &store,
            policy: Ok(&policy2),
            config: &config,
            identity_files: &[],
            user_secrets: None,
            retention: None,
            audit_key: None,
        };
        let boss = crate::ident::RoleName::parse("boss").unwrap();
        for u in ["m1", "m2"] {
            execute(
                &ctx2,
                &local,
                &Call::UsersAdd {
                    name: u.into(),
                    key: None,
                },
            )
            .await
            .unwrap();
            store.bind_role(&UserName::parse(u).unwrap(), &boss).await.unwrap();
        }
        let as_ = |u: &str| {
            Caller::Person(crate::access::Person::new(
                &policy2,
                UserName::parse(u).unwrap(),
                std::slice::from_ref(&boss),
            ))
        };
        let alice2 = Caller::Person(crate::access::Person::new(
            &policy2,
            UserName::parse("alice").unwrap(),
            &[crate::ident::RoleName::parse("dba").unwrap()],
        ));
        let mut req2 = req.clone();
        if let Call::GrantsRequest(r) = &mut req2 {
            r.tier = "pay".into();
        }
        let g2 = execute(&ctx2, &alice2, &req2).await.unwrap();
        let approve2 = Call::GrantsApprove {
            id: g2["id"].as_str().unwrap().to_owned(),
            comment: String::new(),
        };
        assert_eq!(
            execute(&ctx2, &as_("m1"), &approve2).await.unwrap()["status"],
            "pending"
        );
        store.unbind_role(&UserName::parse("m1").unwrap(), &boss).await.unwrap();
        assert_eq!(
            execute(&ctx2, &as_("m2"), &approve2).await.unwrap()["status"],
            "pending",
            "m1 no longer manages pay: one current approval is not two"
        );
        // Review fixes: a key over the API is hex only (never a path the gateway reads);
        // nobody changes their own roles; a suspension ends within ten years.
        let by_path = Call::AuditVerify {
            public_key: Some("/etc/passwd".into()),
            witnesses: vec![],
        };
        let e = execute(&ctx, &dave, &by_path).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(
            !e.message.contains("passwd") || e.message.contains("64 hex digits"),
            "{}",
            e.message
        );
        let admin = Caller::Person(crate::access::Person {
            name: UserName::parse("bob").unwrap(),
            engineer: false,
            manages: Default::default(),
            auditor: false,
            admin: true,
            roles: Default::default(),
        });
        let own = Call::RolesBind {
            user: "bob".into(),
            role: "dba".into(),
        };
        assert_eq!(execute(&ctx, &admin, &own).await.unwrap_err().kind, ErrorKind::Refused);
        let forever = Call::UsersSuspend {
            name: "alice".into(),
            reason: "x".into(),
            until: Some(i64::MAX),
        };
        assert_eq!(
            execute(&ctx, &admin, &forever).await.unwrap_err().kind,
            ErrorKind::Invalid
        );
        // A password reset ends the user's tokens; a user with grants is kept (clear
        // refusal), one without is removed with their tokens.
        let dave_name = UserName::parse("dave").unwrap();
        for (hash, who) in [("t-alice", "alice"), ("t-dave", "dave")] {
            store
                .create_web_session(hash, &UserName::parse(who).unwrap(), "@loopback", "-", i64::MAX)
                .await
                .unwrap();
        }
        let reset = Call::UsersPassword {
            name: "alice".into(),
            password: Secret::new("Correct-Horse-Battery-9"),
        };
        execute(&ctx, &local, &reset).await.unwrap();
        assert!(
            store.web_session("t-alice").await.unwrap().is_none(),
            "token survived a reset"
        );
        let e = execute(&ctx, &local, &Call::UsersRemove { name: "alice".into() })
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("has access grants"), "{}", e.message);
        store
            .unbind_role(&dave_name, &crate::ident::RoleName::parse("audit").unwrap())
            .await
            .unwrap();
        execute(&ctx, &local, &Call::UsersRemove { name: "dave".into() })
            .await
            .unwrap();
        assert!(store.web_session("t-dave").await.unwrap().is_none());
        let bad = Call::GrantsShow { id: "../etc".into() };
        assert_eq!(execute(&ctx, &dave, &bad).await.unwrap_err().kind, ErrorKind::Invalid);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn test_config(dir: &std::path::Path) -> crate::config::GatewayConfig {
        let path = dir.join("herse.toml");
        std::fs::write(
            &path,
            "data_dir = \"data\"\nmaster_key_file = \"m.key\"\npolicy = \"policy.toml\"\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n",
        )
        .unwrap();
        crate::config::GatewayConfig::load(&path).unwrap()
    }
}
