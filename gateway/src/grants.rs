//! The access-grant workflow: an engineer asks for a tier (optionally one target and
//! one login) for a bounded time with a reason; managers of that tier approve or deny;
//! the grant starts when the last approval it needs arrives and ends at its expiry or
//! when revoked. Sessions opened under it end with it (see `serve` and `session`).
//!
//! Each function checks the caller with [`crate::access::check`], changes the store with
//! one conditional update (so racing approvers or nodes cannot both win), and writes an
//! audit event. Used by local `hersectl` and by the control API alike.

use std::time::Duration;

use crate::access::{self, Action, ApprovalState, Caller, Refusal};
use crate::ident::{GrantId, Login, TargetName, TierName, UserName};
use crate::policy::{ActiveGrant, Policy};
use crate::store::{AuditEvent, GrantFilter, GrantRow, GrantStatus, NewGrant, Severity, Store, StoreError};

/// The shortest grant one may ask for.
pub const MIN_DURATION: Duration = Duration::from_secs(60);
/// Requests one user may have waiting at once.
pub const MAX_PENDING: i64 = 10;
const MAX_TEXT: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Invalid(String),
    #[error("grant {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an engineer asks for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub tier: String,
    pub target: Option<String>,
    pub login: Option<String>,
    /// Seconds.
    pub duration_secs: u64,
    pub reason: String,
}

/// Which grants to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listing {
    /// The caller's own requests and grants.
    Mine,
    /// Requests waiting on a decision the caller may make.
    Pending,
    /// Everything the caller may see.
    All,
}

fn text(what: &str, v: &str) -> Result<String, GrantError> {
    let v = v.trim();
    if v.is_empty() {
        return Err(GrantError::Invalid(format!("{what} must not be empty")));
    }
    if v.len() > MAX_TEXT || v.chars().any(|c| c.is_control()) {
        return Err(GrantError::Invalid(format!(
            "{what} must be one line of at most {MAX_TEXT} bytes"
        )));
    }
    Ok(v.to_owned())
}

fn person(caller: &Caller) -> Result<&access::Person, GrantError> {
    caller.person().ok_or(GrantError::Refused(Refusal::NotEngineer))
}

fn parse_id(id: &str) -> Result<GrantId, GrantError> {
    GrantId::parse(id).map_err(|e| GrantError::Invalid(e.to_string()))
}

async fn load(store: &Store, id: &GrantId) -> Result<GrantRow, GrantError> {
    store
        .grant(id)
        .await?
        .ok_or_else(|| GrantError::NotFound(id.to_string()))
}

fn names(g: &GrantRow) -> Result<(TierName, UserName), GrantError> {
    let tier = TierName::parse(&g.tier).map_err(|e| GrantError::Invalid(e.to_string()))?;
    let requester = UserName::parse(&g.requester).map_err(|e| GrantError::Invalid(e.to_string()))?;
    Ok((tier, requester))
}

/// What a grant covers, for messages: `tier db (target db1, login postgres)`.
pub fn scope(g: &GrantRow) -> String {
    let mut s = format!("tier {}", g.tier);
    match (&g.target, &g.login) {
        (Some(t), Some(l)) => s += &format!(" (target {t}, login {l})"),
        (Some(t), None) => s += &format!(" (target {t})"),
        (None, Some(l)) => s += &format!(" (login {l})"),
        (None, None) => {}
    }
    s
}

/// Ask for a grant. The caller must hold an engineer role that needs a grant on the
/// tier (and allows the target and login, when named).
pub async fn request(
    store: &Store,
    policy: &Policy,
    caller: &Caller,
    req: &GrantRequest,
) -> Result<GrantRow, GrantError> {
    access::check(caller, &Action::RequestGrant)?;
    let me = person(caller)?;
    let tier = TierName::parse(&req.tier).map_err(|e| GrantError::Invalid(e.to_string()))?;
    let Some(t) = policy.tiers.get(&tier) else {
        return Err(GrantError::Invalid(format!("unknown tier {tier}")));
    };
    let target = match &req.target {
        Some(x) => {
            let name = TargetName::parse(x).map_err(|e| GrantError::Invalid(e.to_string()))?;
            match policy.target(&name) {
                Some(tt) if tt.tier == tier => Some(name),
                Some(_) => return Err(GrantError::Invalid(format!("target {name} is not in tier {tier}"))),
                None => return Err(GrantError::Invalid(format!("unknown target {name}"))),
            }
        }
        None => None,
    };
    let login = match &req.login {
        Some(l) => Some(Login::parse(l).map_err(|e| GrantError::Invalid(e.to_string()))?),
        None => None,
    };
    // Only a role of the caller's that needs a grant here makes a request meaningful.
    let useful = me.roles.iter().filter_map(|r| policy.roles.get(r)).any(|r| {
        r.requires_grant
            && r.tiers.contains(&tier)
            && target.as_ref().is_none_or(|x| match &r.targets {
                None => true,
                Some(p) => p.iter().any(|p| p.matches(x.as_str())),
            })
            && login.as_ref().is_none_or(|l| r.logins.contains(l))
    });
    if !useful {
        return Err(GrantError::Invalid(format!(
            "none of your roles needs a grant for {tier}{}{}: a grant there would open nothing",
            target.as_ref().map(|t| format!(" target {t}")).unwrap_or_default(),
            login.as_ref().map(|l| format!(" login {l}")).unwrap_or_default(),
        )));
    }
    let duration = Duration::from_secs(req.duration_secs);
    if duration < MIN_DURATION || duration > t.grants.max_duration {
        return Err(GrantError::Invalid(format!(
            "duration must be between {} and tier {tier}'s maximum of {}",
            humantime::format_duration(MIN_DURATION),
            humantime::format_duration(t.grants.max_duration)
        )));
    }
    let reason = text("reason", &req.reason)?;
    if store.pending_grant_count(&me.name).await? >= MAX_PENDING {
        return Err(GrantError::Conflict(format!(
            "you already have {MAX_PENDING} requests waiting"
        )));
    }
    let id = GrantId::random();
    store
        .create_grant(&NewGrant {
            id: &id,
            requester: &me.name,
            tier: tier.as_str(),
            target: target.as_ref().map(|t| t.as_str()),
            login: login.as_ref().map(|l| l.as_str()),
            duration_secs: i64::try_from(req.duration_secs).unwrap_or(i64::MAX),
            reason: &reason,
        })
        .await?;
    let g = load(store, &id).await?;
    audit(
        store,
        AuditEvent::new(
            "grant.requested",
            Severity::Info,
            format!(
                "{id}: {} for {}: {reason}",
                scope(&g),
                humantime::format_duration(duration)
            ),
        )
        .user(&me.name),
    )
    .await;
    Ok(g)
}

/// Approve a pending grant. It starts when the approvals the tier needs are all in.
pub async fn approve(
    store: &Store,
    policy: &Policy,
    caller: &Caller,
    id: &str,
    comment: &str,
) -> Result<GrantRow, GrantError> {
    let id = parse_id(id)?;
    let g = load(store, &id).await?;
    let (tier, requester) = names(&g)?;
    access::check(
        caller,
        &Action::ApproveGrant {
            tier: &tier,
            requester: &requester,
        },
    )?;
    let me = person(caller)?;
    if g.status != GrantStatus::Pending {
        return Err(GrantError::Conflict(format!(
            "grant {id} is {}, not pending",
            g.status.as_str()
        )));
    }
    // A tier gone from the policy approves nothing (its rules are unknown now).
    let Some(rules) = policy.tiers.get(&tier).map(|t| t.grants.clone()) else {
        return Err(GrantError::Conflict(format!("tier {tier} is no longer in the policy")));
    };
    let external = rules.external_role.as_ref().is_some_and(|r| me.roles.contains(r));
    let comment = comment.trim();
    if comment.len() > MAX_TEXT || comment.chars().any(|c| c.is_control()) {
        return Err(GrantError::Invalid(format!(
            "comment must be one line of at most {MAX_TEXT} bytes"
        )));
    }
    // The vote and the start are two writes. When a failure came between them, the
    // grant waits with all the votes it needs: the same approver approving again
    // finishes it, and a vote already in changes nothing else.
    let again = match store.add_approval(&id, &me.name, external, comment).await {
        Ok(()) => false,
        Err(StoreError::Exists(_)) => true,
        Err(StoreError::NotFound(_)) => {
            return Err(GrantError::Conflict(format!("grant {id} is no longer pending")));
        }
        Err(e) => return Err(e.into()),
    };
    let g = load(store, &id).await?;
    let votes = current_votes(store, policy, &g, &tier, &requester).await?;
    let state = access::approval_state(&rules, &requester, &votes);
    if again && state != ApprovalState::Approved {
        return Err(GrantError::Conflict(format!("you already approved {id}")));
    }
    let detail = match &state {
        ApprovalState::Approved => match store
            .activate_grant(
                &id,
                g.duration_secs
                    .min(i64::try_from(rules.max_duration.as_secs()).unwrap_or(i64::MAX)),
            )
            .await?
        {
            Some(expires) => format!(
                "{id}: approved by {}; {} active until {}",
                me.name,
                scope(&g),
                crate::timefmt::rfc3339(expires)
            ),
            None => format!("{id}: approved by {} (already decided)", me.name),
        },
        ApprovalState::Waiting { more, external } => format!(
            "{id}: approved by {}; waiting for {more} more approval{}{}",
            me.name,
            if *more == 1 { "" } else { "s" },
            if *external {
                format!(
                    ", one from role {}",
                    rules.external_role.as_ref().map(|r| r.as_str()).unwrap_or("")
                )
            } else {
                String::new()
            }
        ),
    };
    audit(
        store,
        AuditEvent::new("grant.approved", Severity::Info, detail).user(&requester),
    )
    .await;
    load(store, &id).await
}

/// The votes of approvers who may still approve this grant now (a manager who lost the
/// role since voting no longer counts), with the external role as held now.
async fn current_votes(
    store: &Store,
    policy: &Policy,
    g: &GrantRow,
    tier: &TierName,
    requester: &UserName,
) -> Result<Vec<access::ApprovalVote>, GrantError> {
    let external_role = policy.tiers.get(tier).and_then(|t| t.grants.external_role.clone());
    let mut out = Vec::new();
    for v in g.votes() {
        let roles = store.roles_of(&v.approver).await?;
        let active = store.is_active(&v.approver).await?;
        let p = access::Person::new(policy, v.approver.clone(), &roles);
        let allowed = access::check(&Caller::Person(p.clone()), &Action::ApproveGrant { tier, requester }).is_ok();
        if active && allowed {
            out.push(access::ApprovalVote {
                external: external_role.as_ref().is_some_and(|r| p.roles.contains(r)),
                approver: v.approver,
            });
        }
    }
    Ok(out)
}

/// Deny a pending request.
pub async fn deny(store: &Store, caller: &Caller, id: &str, reason: &str) -> Result<GrantRow, GrantError> {
    let id = parse_id(id)?;
    let g = load(store, &id).await?;
    let (tier, requester) = names(&g)?;
    access::check(
        caller,
        &Action::DenyGrant {
            tier: &tier,
            requester: &requester,
        },
    )?;
    let reason = text("reason", reason)?;
    if !store
        .end_grant(&id, GrantStatus::Denied, &caller.label(), &reason)
        .await?
    {
        return Err(GrantError::Conflict(format!(
            "grant {id} is {}, not pending",
            g.status.as_str()
        )));
    }
    audit(
        store,
        AuditEvent::new(
            "grant.denied",
            Severity::Info,
            format!("{id}: {} denied by {}: {reason}", scope(&g), caller.label()),
        )
        .user(&requester),
    )
    .await;
    load(store, &id).await
}

/// End a pending or active grant now; its sessions end within a second (the session
/// watcher of every node sees it).
pub async fn revoke(store: &Store, caller: &Caller, id: &str, reason: &str) -> Result<GrantRow, GrantError> {
    let id = parse_id(id)?;
    let g = load(store, &id).await?;
    let (tier, requester) = names(&g)?;
    access::check(
        caller,
        &Action::RevokeGrant {
            tier: &tier,
            requester: &requester,
        },
    )?;
    let reason = text("reason", reason)?;
    if !store
        .end_grant(&id, GrantStatus::Revoked, &caller.label(), &reason)
        .await?
    {
        return Err(GrantError::Conflict(format!(
            "grant {id} is {}, not pending or active",
            g.status.as_str()
        )));
    }
    audit(
        store,
        AuditEvent::new(
            "grant.revoked",
            Severity::Warning,
            format!("{id}: {} revoked by {}: {reason}", scope(&g), caller.label()),
        )
        .user(&requester),
    )
    .await;
    load(store, &id).await
}

/// One grant, if the caller may see it.
pub async fn show(store: &Store, caller: &Caller, id: &str) -> Result<GrantRow, GrantError> {
    let id = parse_id(id)?;
    let g = load(store, &id).await?;
    let (tier, requester) = names(&g)?;
    access::check(
        caller,
        &Action::ViewGrant {
            tier: &tier,
            requester: &requester,
        },
    )?;
    Ok(g)
}

/// Grants the caller may see, for `listing`.
pub async fn list(store: &Store, caller: &Caller, listing: Listing, limit: i64) -> Result<Vec<GrantRow>, GrantError> {
    let me = caller.person();
    let mine = me.map(|p| p.name.as_str());
    let filter = match (listing, me) {
        (Listing::Mine, None) => return Err(GrantError::Refused(Refusal::NotEngineer)),
        (Listing::Mine, Some(_)) => GrantFilter {
            requester: mine,
            ..GrantFilter::default()
        },
        (Listing::Pending, _) => GrantFilter {
            status: Some(GrantStatus::Pending),
            ..GrantFilter::default()
        },
        (Listing::All, _) => GrantFilter::default(),
    };
    let rows = store.grants(&filter, 10_000).await?;
    let mut out = Vec::new();
    for g in rows {
        let Ok((tier, requester)) = names(&g) else { continue };
        let visible = match listing {
            Listing::Mine => true,
            // Pending: what the caller can decide (never their own).
            Listing::Pending => access::check(
                caller,
                &Action::DenyGrant {
                    tier: &tier,
                    requester: &requester,
                },
            )
            .is_ok(),
            Listing::All => access::check(
                caller,
                &Action::ViewGrant {
                    tier: &tier,
                    requester: &requester,
                },
            )
            .is_ok(),
        };
        if visible {
            out.push(g);
            if out.len() as i64 >= limit {
                break;
            }
        }
    }
    store.load_approvals(&mut out).await?;
    Ok(out)
}

/// The user's grants in force, as decisions need them.
pub async fn in_force(store: &Store, user: &UserName) -> Result<Vec<ActiveGrant>, StoreError> {
    Ok(store
        .active_grants(user)
        .await?
        .into_iter()
        .filter_map(|g| {
            Some(ActiveGrant {
                tier: TierName::parse(&g.tier).ok()?,
                target: match &g.target {
                    Some(t) => Some(TargetName::parse(t).ok()?),
                    None => None,
                },
                login: match &g.login {
                    Some(l) => Some(Login::parse(l).ok()?),
                    None => None,
                },
                expires_at: g.expires_at?,
                id: g.id,
            })
        })
        .collect())
}

/// A line for the requester about a decided grant, shown at their next login.
pub fn outcome_line(g: &GrantRow) -> String {
    let by = g.ended_by.as_deref().unwrap_or("?");
    let note = g.end_note.as_deref().unwrap_or("");
    match g.status {
        GrantStatus::Active => format!(
            "your access grant {} ({}) was approved by {}; it ends at {}",
            g.id,
            scope(g),
            g.approvals
                .iter()
                .map(|a| a.approver.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
            g.expires_at.map(crate::timefmt::rfc3339).unwrap_or_default()
        ),
        GrantStatus::Denied => format!("your access request {} ({}) was denied by {by}: {note}", g.id, scope(g)),
        GrantStatus::Revoked => format!("your access grant {} ({}) was revoked by {by}: {note}", g.id, scope(g)),
        GrantStatus::Expired => format!("your access grant {} ({}) has expired", g.id, scope(g)),
        GrantStatus::Lapsed => format!("your access request {} ({}) lapsed without a decision", g.id, scope(g)),
        GrantStatus::Pending => format!("your access request {} ({}) is waiting", g.id, scope(g)),
    }
}

/// Expire due grants and lapse stale requests, auditing each once; resume users whose
/// suspension has run out. Run every second by `herse serve`.
pub async fn housekeeping(store: &Store) {
    match store.expire_grants().await {
        Ok(changed) => {
            for g in changed {
                let (kind, detail) = match g.status {
                    GrantStatus::Expired => ("grant.expired", format!("{}: {} ended", g.id, scope(&g))),
                    _ => (
                        "grant.lapsed",
                        format!("{}: request for {} lapsed without a decision", g.id, scope(&g)),
                    ),
                };
                audit(store, AuditEvent::new(kind, Severity::Info, detail).user(&g.requester)).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot expire grants"),
    }
    match store.resume_due_users().await {
        Ok(names) => {
            for n in names {
                audit(
                    store,
                    AuditEvent::new("user.resumed", Severity::Info, "suspension ended").user(&n),
                )
                .await;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot resume users"),
    }
}

async fn audit(store: &Store, e: AuditEvent) {
    tracing::info!(kind = e.kind, user = ?e.user, detail = %e.detail, "audit");
    if let Err(err) = store.audit(&e).await {
        tracing::error!(error = %err, kind = e.kind, "cannot write audit event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Person;
    use crate::ident::RoleName;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEh4KR6w7B2dEyE62oDLhFFbFtVWeUwyH8zqz4pWX5VA";

    fn policy() -> Policy {
        let text = format!(
            "[tiers.db.grants]\napprovals = 2\nmax_duration = \"1h\"\n\
             [tiers.db.targets.db1]\naddress = \"127.0.0.1\"\nport = 22\nhost_keys = [\"{KEY}\"]\n\
             [roles.dba]\ntiers = [\"db\"]\nlogins = [\"postgres\"]\noperations = [\"shell\"]\n\
             max_session = \"1h\"\nidle_timeout = \"10m\"\nrequires_grant = true\n\
             [roles.mgr]\nkind = \"manager\"\ntiers = [\"db\"]\n"
        );
        crate::policy::parse_text(&text).unwrap()
    }

    fn caller(policy: &Policy, name: &str, role: &str) -> Caller {
        let role = RoleName::parse(role).unwrap();
        Caller::Person(Person::new(policy, UserName::parse(name).unwrap(), &[role]))
    }

    /// A failure between the last vote and the grant's start leaves the grant pending
    /// with every vote it needs: its last approver approving again starts it, and a
    /// repeated vote that completes nothing is still refused.
    #[tokio::test]
    async fn approving_again_finishes_a_grant_a_failure_left_pending() {
        let (_, store) = crate::store::test_backends().await.remove(0);
        let policy = policy();
        for (n, role) in [("eve", "dba"), ("mia", "mgr"), ("max", "mgr")] {
            let n = UserName::parse(n).unwrap();
            store.add_user(&n).await.unwrap();
            store.bind_role(&n, &RoleName::parse(role).unwrap()).await.unwrap();
        }
        let eve = caller(&policy, "eve", "dba");
        let req = GrantRequest {
            tier: "db".into(),
            target: None,
            login: None,
            duration_secs: 600,
            reason: "incident 42".into(),
        };
        let g = request(&store, &policy, &eve, &req).await.unwrap();
        let id = g.id.clone();
        let gid = GrantId::parse(&id).unwrap();
        let (mia, max) = (caller(&policy, "mia", "mgr"), caller(&policy, "max", "mgr"));
        approve(&store, &policy, &mia, &id, "ok").await.unwrap();
        let again = approve(&store, &policy, &mia, &id, "ok").await.unwrap_err();
        assert!(again.to_string().contains("already approved"), "{again}");
        // max's vote lands, then the start is lost (as if the store failed in between).
        store
            .add_approval(&gid, &UserName::parse("max").unwrap(), false, "ok")
            .await
            .unwrap();
        assert_eq!(load(&store, &gid).await.unwrap().status, GrantStatus::Pending);
        let done = approve(&store, &policy, &max, &id, "ok").await.unwrap();
        assert_eq!(done.status, GrantStatus::Active);
        assert!(done.expires_at.is_some());
        let late = approve(&store, &policy, &mia, &id, "ok").await.unwrap_err();
        assert!(late.to_string().contains("not pending"), "{late}");
    }
}
