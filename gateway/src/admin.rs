//! Administration behind the control API: users (removal, unlocks, passwords, recovery
//! codes, TOTP removal), keys, role bindings, workstations and targets. Each function
//! runs after [`crate::control::execute`] checked the caller's permission; it validates
//! its input, changes the store, writes the audit event naming the caller, and returns
//! the JSON `hersectl` renders (locally or remotely: one implementation).

use std::time::Duration;

use russh::keys::ssh_key::PublicKey;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::access::Caller;
use crate::control::ControlError;
use crate::control::{audit, err, user, Ctx, ErrorKind};
use crate::ident::{RoleName, TargetName, UserName, WorkstationName};
use crate::store::{AuditEvent, Severity, WorkstationRow};
use crate::wg::{WgPublicKey, WgSecret};

/// How long `targets check` waits for a target.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

fn invalid(m: impl Into<String>) -> ControlError {
    err(ErrorKind::Invalid, m)
}

fn not_found(m: impl Into<String>) -> ControlError {
    err(ErrorKind::NotFound, m)
}

/// An OpenSSH public key line (the first non-comment line of a `.pub` file).
pub fn parse_public_key(text: &str) -> Result<PublicKey, ControlError> {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    PublicKey::from_openssh(line.trim()).map_err(|e| invalid(format!("not an OpenSSH public key: {e}")))
}

pub(crate) async fn users_remove(ctx: &Ctx<'_>, caller: &Caller, name: &str) -> Result<Value, ControlError> {
    let u = user(name)?;
    ctx.store.remove_user(&u).await?;
    audit(
        ctx.store,
        AuditEvent::new("user.remove", Severity::Warning, format!("by {}", caller.label())).user(&u),
    )
    .await?;
    Ok(json!({ "user": u.as_str(), "message": format!("user {u} removed") }))
}

pub(crate) async fn users_unlock(ctx: &Ctx<'_>, caller: &Caller, name: &str) -> Result<Value, ControlError> {
    let u = user(name)?;
    ctx.store.reset_login_failures(&u).await?;
    if !ctx.store.reset_mfa_failures(&u).await? {
        return Err(not_found(format!("user {u} not found")));
    }
    audit(
        ctx.store,
        AuditEvent::new("mfa.unlock", Severity::Info, format!("by {}", caller.label())).user(&u),
    )
    .await?;
    Ok(json!({ "user": u.as_str(), "message": format!("user {u}: second factor and portal login unlocked") }))
}

pub(crate) async fn users_password(
    ctx: &Ctx<'_>,
    caller: &Caller,
    name: &str,
    password: &str,
) -> Result<Value, ControlError> {
    let u = user(name)?;
    if let Err(reason) = ctx.config.password_policy.check(u.as_str(), password) {
        return Err(err(ErrorKind::Conflict, format!("password refused: {reason}")));
    }
    // Off the async workers, and under the portal's limit on hashes at once (each
    // argon2id hash takes about 19 MiB and tens of milliseconds of CPU).
    let hash = crate::web::password::hash_async(password)
        .await
        .map_err(|e| err(ErrorKind::Internal, e))?;
    // Not checked against the user's retired passwords: that would tell an admin which
    // guesses were once the user's. Recorded among them, though.
    ctx.store
        .set_password(
            &u,
            &hash,
            crate::store::PasswordChange::Reset,
            ctx.config.password_policy.history,
        )
        .await?;
    ctx.store.end_other_web_sessions(&u, "").await?;
    audit(
        ctx.store,
        AuditEvent::new(
            "password.set",
            Severity::Warning,
            format!("by {}; the user's portal sessions and API tokens ended", caller.label()),
        )
        .user(&u),
    )
    .await?;
    Ok(json!({ "user": u.as_str(), "message": format!("password set for {u}") }))
}

/// New recovery codes, stored hashed; the answer carries them once.
pub(crate) async fn users_recovery_codes(ctx: &Ctx<'_>, caller: &Caller, name: &str) -> Result<Value, ControlError> {
    let u = user(name)?;
    let key = ctx.user_secrets.ok_or_else(|| {
        err(
            ErrorKind::Internal,
            "recovery codes need the gateway's master key, which this side does not hold",
        )
    })?;
    let codes = crate::mfa::new_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| crate::mfa::recovery_hash(key, &u, c)).collect();
    ctx.store.set_recovery_codes(&u, &hashes).await?;
    ctx.store.end_other_web_sessions(&u, "").await?;
    audit(
        ctx.store,
        AuditEvent::new(
            "mfa.recovery_codes",
            Severity::Warning,
            format!("{} new recovery codes by {}", codes.len(), caller.label()),
        )
        .user(&u),
    )
    .await?;
    let list: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
    Ok(json!({ "user": u.as_str(), "recovery_codes": list }))
}

pub(crate) async fn users_totp_remove(ctx: &Ctx<'_>, caller: &Caller, name: &str) -> Result<Value, ControlError> {
    let u = user(name)?;
    ctx.store.remove_totp(&u).await?;
    ctx.store.end_other_web_sessions(&u, "").await?;
    audit(
        ctx.store,
        AuditEvent::new("mfa.remove", Severity::Warning, format!("TOTP by {}", caller.label())).user(&u),
    )
    .await?;
    Ok(json!({ "user": u.as_str(), "message": format!("TOTP removed from {u}") }))
}

pub(crate) async fn keys_add(ctx: &Ctx<'_>, caller: &Caller, name: &str, key: &str) -> Result<Value, ControlError> {
    let u = user(name)?;
    let k = parse_public_key(key)?;
    let fp = ctx.store.add_key(&u, &k).await?;
    audit(
        ctx.store,
        AuditEvent::new("key.add", Severity::Info, format!("{fp} by {}", caller.label())).user(&u),
    )
    .await?;
    Ok(json!({ "user": u.as_str(), "fingerprint": fp, "message": fp }))
}

pub(crate) async fn keys_remove(
    ctx: &Ctx<'_>,
    caller: &Caller,
    name: &str,
    fingerprint: &str,
) -> Result<Value, ControlError> {
    let u = user(name)?;
    if fingerprint.len() > 200 || fingerprint.chars().any(|c| c.is_control()) {
        return Err(invalid("not a key fingerprint"));
    }
    ctx.store.remove_key(&u, fingerprint).await?;
    // Sessions do not record which key opened them, so all of the user's end: a key is
    // removed because it leaked or is retired, and what it opened must not outlive it.
    let ending = ctx
        .store
        .request_kill_of_user(u.as_str(), &format!("{} (key {fingerprint} removed)", caller.label()))
        .await?;
    audit(
        ctx.store,
        AuditEvent::new(
            "key.remove",
            Severity::Info,
            format!("{fingerprint} by {}; {ending} open session(s) ended", caller.label()),
        )
        .user(&u),
    )
    .await?;
    Ok(json!({
        "user": u.as_str(),
        "sessions_ended": ending,
        "message": format!("key {fingerprint} removed from {u}{}", sessions_note(ending)),
    }))
}

pub(crate) async fn keys_list(ctx: &Ctx<'_>, name: &str) -> Result<Value, ControlError> {
    let u = user(name)?;
    crate::control::json(ctx.store.keys_of(&u).await?)
}

fn role(ctx: &Ctx<'_>, name: &str) -> Result<RoleName, ControlError> {
    let r = RoleName::parse(name).map_err(|e| invalid(e.to_string()))?;
    let policy = ctx.policy()?;
    if !policy.has_role(&r) {
        let known: Vec<_> = policy
            .roles
            .keys()
            .chain(policy.duties.keys())
            .map(|r| r.to_string())
            .collect();
        return Err(invalid(format!(
            "role {r} is not defined in the policy (roles: {})",
            known.join(", ")
        )));
    }
    Ok(r)
}

pub(crate) async fn roles_bind(
    ctx: &Ctx<'_>,
    caller: &Caller,
    name: &str,
    role_name: &str,
) -> Result<Value, ControlError> {
    let u = user(name)?;
    let r = role(ctx, role_name)?;
    not_own_roles(caller, &u)?;
    ctx.store.bind_role(&u, &r).await?;
    // Handing out a duty (manager, auditor, admin) changes who decides: an alert.
    let severity = if ctx.policy()?.duties.contains_key(&r) {
        Severity::Alert
    } else {
        Severity::Info
    };
    audit(
        ctx.store,
        AuditEvent::new("role.bind", severity, format!("{r} by {}", caller.label())).user(&u),
    )
    .await?;
    Ok(json!({ "user": u.as_str(), "role": r.as_str(), "message": format!("{u} now holds role {r}") }))
}

/// Unbinding needs no check against the policy: a role it no longer defines must still
/// be removable.
pub(crate) async fn roles_unbind(
    ctx: &Ctx<'_>,
    caller: &Caller,
    name: &str,
    role_name: &str,
) -> Result<Value, ControlError> {
    let u = user(name)?;
    let r = RoleName::parse(role_name).map_err(|e| invalid(e.to_string()))?;
    not_own_roles(caller, &u)?;
    ctx.store.unbind_role(&u, &r).await?;
    // The user's open sessions may rest on that role: they end, and the user connects
    // again under what they still hold.
    let ending = ctx
        .store
        .request_kill_of_user(u.as_str(), &format!("{} (role {r} unbound)", caller.label()))
        .await?;
    audit(
        ctx.store,
        AuditEvent::new(
            "role.unbind",
            Severity::Info,
            format!("{r} by {}; {ending} open session(s) ended", caller.label()),
        )
        .user(&u),
    )
    .await?;
    Ok(json!({
        "user": u.as_str(),
        "role": r.as_str(),
        "sessions_ended": ending,
        "message": format!("{u} no longer holds role {r}{}", sessions_note(ending)),
    }))
}

fn sessions_note(ending: u64) -> String {
    match ending {
        0 => String::new(),
        1 => "; their open session is ending".into(),
        n => format!("; their {n} open sessions are ending"),
    }
}

/// Nobody changes their own role bindings remotely: an admin who could bind themselves a
/// manager or engineer role could approve their own access (local mode, on the gateway
/// host, stays the recovery path).
fn not_own_roles(caller: &Caller, user: &UserName) -> Result<(), ControlError> {
    match caller.person() {
        Some(p) if &p.name == user => Err(err(ErrorKind::Refused, "refused: you cannot change your own roles")),
        _ => Ok(()),
    }
}

fn ws_name(s: &str) -> Result<WorkstationName, ControlError> {
    WorkstationName::parse(s).map_err(|e| invalid(e.to_string()))
}

/// The key to enrol: the one given, or a fresh pair whose private half goes into the
/// returned configuration only.
fn key_pair(given: Option<&str>) -> Result<(WgPublicKey, Option<Zeroizing<String>>), ControlError> {
    match given {
        Some(k) => Ok((
            WgPublicKey::parse(k).map_err(|e| invalid(format!("--public-key: {e}")))?,
            None,
        )),
        None => {
            let s = WgSecret::generate();
            Ok((s.public(), Some(s.to_base64())))
        }
    }
}

fn wireguard<'a>(ctx: &Ctx<'a>) -> Result<&'a crate::config::WireguardConfig, ControlError> {
    ctx.config
        .wireguard
        .as_ref()
        .ok_or_else(|| invalid("the gateway configuration has no [wireguard] section"))
}

/// `{workstation, config, private_key_generated}`: the wg-quick file holds the private
/// key when the gateway generated it (shown once, stored nowhere).
async fn enrolled(
    ctx: &Ctx<'_>,
    w: &WorkstationRow,
    private: Option<&Zeroizing<String>>,
) -> Result<Value, ControlError> {
    let wc = wireguard(ctx)?;
    let gateway_key = crate::keys::wireguard_public(ctx.store).await.map_err(|e| {
        err(
            ErrorKind::Internal,
            format!("the gateway's WireGuard key is not in the database ({e}); run `herse init` first"),
        )
    })?;
    let address = w.address.parse().map_err(|_| {
        err(
            ErrorKind::Internal,
            format!("stored address {:?} is invalid", w.address),
        )
    })?;
    let text = crate::wg::quick::QuickConfig {
        private_key: private.map(|p| p.as_str()),
        address,
        gateway_public_key: gateway_key,
        gateway_address: wc.net.gateway,
        endpoint: &wc.endpoint,
        persistent_keepalive: wc.persistent_keepalive,
    }
    .render();
    Ok(json!({ "workstation": w, "config": text.as_str(), "private_key_generated": private.is_some() }))
}

pub(crate) async fn workstations_add(
    ctx: &Ctx<'_>,
    caller: &Caller,
    name: &str,
    owner: &str,
    public_key: Option<&str>,
) -> Result<Value, ControlError> {
    let name = ws_name(name)?;
    let owner = user(owner)?;
    let wc = wireguard(ctx)?;
    let (public, private) = key_pair(public_key)?;
    let by = caller.label();
    let w = ctx.store.add_workstation(&name, &owner, &public, &wc.net, &by).await?;
    audit(
        ctx.store,
        AuditEvent::new(
            "workstation.add",
            Severity::Info,
            format!("{} at {} key {public} by {by}", w.name, w.address),
        )
        .user(&owner)
        .workstation(&name),
    )
    .await?;
    enrolled(ctx, &w, private.as_ref()).await
}

pub(crate) async fn workstations_show(ctx: &Ctx<'_>, name: &str) -> Result<Value, ControlError> {
    let name = ws_name(name)?;
    let w = ctx
        .store
        .workstation(&name)
        .await?
        .ok_or_else(|| not_found(format!("workstation {name} not found")))?;
    crate::control::json(w)
}

pub(crate) async fn workstations_revoke(
    ctx: &Ctx<'_>,
    caller: &Caller,
    name: &str,
    reason: &str,
) -> Result<Value, ControlError> {
    let name = ws_name(name)?;
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 500 || reason.chars().any(|c| c.is_control()) {
        return Err(invalid("reason must be one non-empty line of at most 500 bytes"));
    }
    let by = caller.label();
    if !ctx.store.revoke_workstation(&name, &by, reason).await? {
        return Err(err(
            ErrorKind::Conflict,
            format!("workstation {name} is already revoked"),
        ));
    }
    let mut e =
        AuditEvent::new("workstation.revoke", Severity::Warning, format!("{reason} (by {by})")).workstation(&name);
    if let Some(w) = ctx.store.workstation(&name).await? {
        e = e.user(&w.owner);
    }
    audit(ctx.store, e).await?;
    Ok(json!({
        "workstation": name.as_str(),
        "message": format!("workstation {name} revoked; its peer is removed and its sessions end within a second"),
    }))
}

pub(crate) async fn workstations_rotate_key(
    ctx: &Ctx<'_>,
    caller: &Caller,
    name: &str,
    public_key: Option<&str>,
) -> Result<Value, ControlError> {
    let name = ws_name(name)?;
    // Refuse before generating or storing anything when no configuration can be made.
    wireguard(ctx)?;
    let (public, private) = key_pair(public_key)?;
    ctx.store.rotate_workstation_key(&name, &public).await?;
    let w = ctx
        .store
        .workstation(&name)
        .await?
        .ok_or_else(|| not_found(format!("workstation {name} vanished")))?;
    audit(
        ctx.store,
        AuditEvent::new(
            "workstation.rotate_key",
            Severity::Warning,
            format!("new key {public} by {}", caller.label()),
        )
        .user(&w.owner)
        .workstation(&name),
    )
    .await?;
    enrolled(ctx, &w, private.as_ref()).await
}

pub(crate) fn targets_list(ctx: &Ctx<'_>) -> Result<Value, ControlError> {
    let list: Vec<Value> = ctx
        .policy()?
        .targets
        .values()
        .map(|t| {
            json!({
                "name": t.name,
                "tier": t.tier.to_string(),
                "address": format!("{}:{}", t.host, t.port),
                "host_key": match &t.host_key {
                    crate::policy::HostKeyCheck::Pinned(_) => "pinned",
                    crate::policy::HostKeyCheck::Ca { .. } => "host CA",
                },
            })
        })
        .collect();
    Ok(Value::Array(list))
}

/// Probe from the gateway (where the targets are reachable); the report says whether the
/// host key matched.
pub(crate) async fn targets_check(ctx: &Ctx<'_>, caller: &Caller, name: &str) -> Result<Value, ControlError> {
    let n = TargetName::parse(name).map_err(|e| invalid(e.to_string()))?;
    let t = ctx
        .policy()?
        .target(&n)
        .ok_or_else(|| not_found(format!("target {n} is not in the policy")))?;
    let report = crate::upstream::probe(t, PROBE_TIMEOUT).await;
    tracing::info!(target = %n, by = %caller.label(), ok = report.host_key_ok, "targets check");
    crate::control::json(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_text_skips_comments_and_refuses_garbage() {
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice";
        assert!(parse_public_key(&format!("# mine\n\n{line}\n")).is_ok());
        assert_eq!(parse_public_key("nope").unwrap_err().kind, ErrorKind::Invalid);
        assert_eq!(parse_public_key("").unwrap_err().kind, ErrorKind::Invalid);
    }
}
