//! The control API: what `hersectl` asks, as data. Local mode executes a [`Call`] here
//! directly (as [`Caller::Local`]); remote mode sends the same `Call` as JSON to
//! `POST /api/v1/call` on the portal, which executes it here as the person its token
//! names. One code path, one permission check ([`crate::access::check`]) per call.

use crate::access::{self, Action, Caller};
use crate::audit_log::{self, AuditLogError};
use crate::grants::{self, GrantError, GrantRequest, Listing};
use crate::ident::{SessionId, UserName};
use crate::policy::Policy;
use crate::store::{AuditEvent, AuditFilter, Severity, Store, StoreError};

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
    SessionsList {
        live: bool,
        limit: i64,
    },
    SessionsKill {
        id: String,
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
    /// Verify the chain and checkpoints, with this public key (hex) or the stored one.
    AuditVerify {
        public_key: Option<String>,
    },
}

impl Call {
    /// Whether executing this call reads the policy (grant rules, roles). Local mode can
    /// run the others while the policy file is broken (recovery).
    pub fn needs_policy(&self) -> bool {
        matches!(self, Call::GrantsRequest(_) | Call::GrantsApprove { .. } | Call::Whoami)
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

fn err(kind: ErrorKind, message: impl Into<String>) -> ControlError {
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

impl From<access::Refusal> for ControlError {
    fn from(r: access::Refusal) -> Self {
        err(ErrorKind::Refused, format!("refused: {r}"))
    }
}

/// What a call runs against.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub policy: &'a Policy,
}

/// Listing sizes a caller may ask for: at least one row, at most 10 000 per call.
fn clamp(limit: i64) -> i64 {
    limit.clamp(1, 10_000)
}

fn user(name: &str) -> Result<UserName, ControlError> {
    UserName::parse(name).map_err(|e| err(ErrorKind::Invalid, e.to_string()))
}

fn json<T: serde::Serialize>(v: T) -> Result<serde_json::Value, ControlError> {
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
        Call::GrantsRequest(r) => json(grants::request(store, ctx.policy, caller, r).await?),
        Call::GrantsList { listing, limit } => json(grants::list(store, caller, *listing, clamp(*limit)).await?),
        Call::GrantsShow { id } => json(grants::show(store, caller, id).await?),
        Call::GrantsApprove { id, comment } => json(grants::approve(store, ctx.policy, caller, id, comment).await?),
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
            if until.is_some_and(|t| t <= crate::store::now_micros()) {
                return Err(err(ErrorKind::Invalid, "--until must be in the future"));
            }
            store.suspend_user(&u, reason, *until).await?;
            let until_text = until
                .map(|t| format!(" until {}", crate::web::rfc3339(t)))
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
        Call::SessionsList { live, limit } => {
            access::check(caller, &Action::ListSessions)?;
            json(store.sessions(*live, clamp(*limit)).await?)
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
        Call::AuditVerify { public_key } => {
            access::check(caller, &Action::ReadAudit)?;
            let key = match public_key {
                Some(k) => audit_log::public_key_from_arg(k)?,
                None => audit_log::stored_public_key(store).await?,
            };
            json(audit_log::verify(store, &key).await?)
        }
    }
}

async fn audit(store: &Store, e: AuditEvent) -> Result<(), ControlError> {
    store.audit(&e).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let ctx = Ctx {
            store: &store,
            policy: &policy,
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
            policy: &policy2,
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
        let bad = Call::GrantsShow { id: "../etc".into() };
        assert_eq!(execute(&ctx, &dave, &bad).await.unwrap_err().kind, ErrorKind::Invalid);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
