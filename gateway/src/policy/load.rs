//! TOML to [`Policy`], collecting every error with its file:line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use russh::keys::ssh_key::PublicKey;
use serde::Deserialize;
use toml::Spanned;

use super::{Duty, ForwardTarget, GrantRules, HostKeyCheck, Operation, Policy, Role, Target, Tier};
use crate::diag::{self, Diagnostic, Diagnostics, Source};
use crate::ident::{Login, RoleName, TargetName, TierName};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    tiers: BTreeMap<Spanned<String>, RawTier>,
    #[serde(default)]
    roles: BTreeMap<Spanned<String>, RawRole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    #[serde(default)]
    description: String,
    /// How long recordings of this tier are kept (e.g. "400d"); absent: forever.
    retention: Option<Spanned<String>>,
    /// Encrypt recordings of this tier to these age X25519 recipients (auditors).
    #[serde(default)]
    encrypt_to: Vec<Spanned<String>>,
    /// Every session on this tier proves a fresh second factor, whatever roles remember.
    #[serde(default)]
    mfa_always_fresh: bool,
    #[serde(default)]
    targets: BTreeMap<Spanned<String>, RawTarget>,
    /// How grants to this tier are approved (roles with `requires_grant`).
    grants: Option<Spanned<RawGrantRules>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrantRules {
    max_duration: Option<Spanned<String>>,
    approvals: Option<Spanned<i64>>,
    external_approver_role: Option<Spanned<String>>,
}

/// What a role is for: connecting (engineer) or a people duty.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum RoleKind {
    #[default]
    Engineer,
    Manager,
    Auditor,
    Admin,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    address: Spanned<String>,
    port: Option<Spanned<u16>>,
    #[serde(default)]
    host_keys: Vec<Spanned<String>>,
    #[serde(default)]
    host_cas: Vec<Spanned<String>>,
    host_principal: Option<String>,
    /// Upstream certificates carry `source-address` (the gateway's own address on the
    /// connection), unless a NAT between gateway and target hides it: then `false`.
    #[serde(default = "yes")]
    pin_source_address: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    kind: RoleKind,
    tiers: Option<Vec<Spanned<String>>>,
    targets: Option<Vec<Spanned<String>>>,
    logins: Option<Vec<Spanned<String>>>,
    operations: Option<Vec<Spanned<Operation>>>,
    #[serde(default)]
    forward: Vec<Spanned<String>>,
    max_session: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    requires_grant: Option<Spanned<bool>>,
    /// A second factor proven from a workstation covers this role's logins from it for
    /// this long (e.g. "15m"); absent: a fresh one for every connection.
    mfa_remember: Option<Spanned<String>>,
    /// Target sessions a holder may have open at once, on every node.
    max_connections: Option<Spanned<i64>>,
}

/// The most `max_connections` may say: a number, not a way to spell "unlimited".
const MAX_CONNECTIONS_LIMIT: i64 = 10_000;

/// Read and validate a policy file. Every problem is reported, not only the first.
pub fn load(path: &Path) -> Result<Policy, Diagnostics> {
    let text = diag::read(path)?;
    parse(path, &text)
}

pub(crate) fn parse(path: &Path, text: &str) -> Result<Policy, Diagnostics> {
    let src = Source { path, text };
    let raw: RawPolicy = src.parse()?;
    let mut errors: Vec<Diagnostic> = Vec::new();
    let mut policy = Policy::default();

    for (tier_key, raw_tier) in &raw.tiers {
        let Some(tier) = name(&src, &mut errors, tier_key, TierName::parse) else {
            continue;
        };
        for (target_key, raw_target) in &raw_tier.targets {
            let Some(target_name) = name(&src, &mut errors, target_key, TargetName::parse) else {
                continue;
            };
            if policy.targets.contains_key(&target_name) {
                errors.push(src.at(
                    Some(target_key.span()),
                    format!("target {target_name} is defined twice: target names are global"),
                ));
                continue;
            }
            if let Some(t) = target(&src, &mut errors, &tier, &target_name, raw_target) {
                policy.targets.insert(target_name, t);
            }
        }
        let retention = raw_tier
            .retention
            .as_ref()
            .map(|r| duration(&src, &mut errors, r, "retention"));
        let mut encrypt_to = Vec::new();
        for r in &raw_tier.encrypt_to {
            match session_recordings::crypt::parse_recipients(std::slice::from_ref(r.get_ref())) {
                Ok(_) => encrypt_to.push(r.get_ref().trim().to_owned()),
                Err(e) => errors.push(src.at(Some(r.span()), format!("encrypt_to: {e}"))),
            }
        }
        policy.tiers.insert(
            tier.clone(),
            Tier {
                name: tier,
                description: raw_tier.description.clone(),
                retention,
                encrypt_to,
                mfa_always_fresh: raw_tier.mfa_always_fresh,
                grants: GrantRules::default(),
            },
        );
    }

    for (role_key, raw_role) in &raw.roles {
        let Some(role_name) = name(&src, &mut errors, role_key, RoleName::parse) else {
            continue;
        };
        if raw_role.kind == RoleKind::Engineer {
            if let Some(r) = role(&src, &mut errors, &policy, role_key, role_name.clone(), raw_role) {
                policy.roles.insert(role_name, r);
            }
        } else if let Some(d) = duty(&src, &mut errors, &policy, role_key, &role_name, raw_role) {
            policy.duties.insert(role_name, d);
        }
    }

    // Grant rules last: they may name a manager role.
    for (tier_key, raw_tier) in &raw.tiers {
        let (Ok(tier), Some(raw_rules)) = (TierName::parse(tier_key.get_ref()), &raw_tier.grants) else {
            continue;
        };
        let rules = grant_rules(&src, &mut errors, &policy, &tier, raw_rules);
        if let Some(t) = policy.tiers.get_mut(&tier) {
            t.grants = rules;
        }
    }

    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(Diagnostics(errors))
    }
}

fn name<T, E: std::fmt::Display>(
    src: &Source<'_>,
    errors: &mut Vec<Diagnostic>,
    key: &Spanned<String>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Option<T> {
    parse(key.get_ref())
        .map_err(|e| errors.push(src.at(Some(key.span()), e.to_string())))
        .ok()
}

fn public_keys(
    src: &Source<'_>,
    errors: &mut Vec<Diagnostic>,
    lines: &[Spanned<String>],
    what: &str,
) -> Vec<PublicKey> {
    lines
        .iter()
        .filter_map(|l| match PublicKey::from_openssh(l.get_ref().trim()) {
            Ok(k) => Some(k),
            Err(e) => {
                errors.push(src.at(Some(l.span()), format!("{what}: not an OpenSSH public key: {e}")));
                None
            }
        })
        .collect()
}

fn target(
    src: &Source<'_>,
    errors: &mut Vec<Diagnostic>,
    tier: &TierName,
    name: &TargetName,
    raw: &RawTarget,
) -> Option<Target> {
    let before = errors.len();
    let host = raw.address.get_ref().trim().to_owned();
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        errors.push(src.at(Some(raw.address.span()), "address must be a host name or IP address"));
    }
    let port = match &raw.port {
        Some(p) if *p.get_ref() == 0 => {
            errors.push(src.at(Some(p.span()), "port must not be 0"));
            22
        }
        Some(p) => *p.get_ref(),
        None => 22,
    };
    let host_key = match (raw.host_keys.is_empty(), raw.host_cas.is_empty()) {
        (false, true) => HostKeyCheck::Pinned(public_keys(src, errors, &raw.host_keys, "host_keys")),
        (true, false) => HostKeyCheck::Ca {
            authorities: public_keys(src, errors, &raw.host_cas, "host_cas"),
            principal: raw.host_principal.clone().unwrap_or_else(|| host.clone()),
        },
        _ => {
            errors.push(src.at(
                Some(raw.address.span()),
                format!("target {name}: give exactly one of host_keys (pinned keys) or host_cas (trusted host CAs)"),
            ));
            HostKeyCheck::Pinned(Vec::new())
        }
    };
    (errors.len() == before).then(|| Target {
        name: name.clone(),
        tier: tier.clone(),
        host,
        port,
        host_key,
        pin_source_address: raw.pin_source_address,
    })
}

/// The longest duration a policy may give (a year and a day): sessions, idle times,
/// remembered factors and grants are far shorter, and a larger one would overflow the
/// clock arithmetic it feeds (deadlines, certificate validity).
const MAX_POLICY_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

fn duration(src: &Source<'_>, errors: &mut Vec<Diagnostic>, v: &Spanned<String>, what: &str) -> Duration {
    match humantime::parse_duration(v.get_ref()) {
        Ok(d) if d > MAX_POLICY_DURATION => {
            errors.push(src.at(Some(v.span()), format!("{what} must be at most 366d")));
            MAX_POLICY_DURATION
        }
        Ok(d) if d >= Duration::from_secs(1) => d,
        Ok(_) => {
            errors.push(src.at(Some(v.span()), format!("{what} must be at least 1s")));
            Duration::from_secs(1)
        }
        Err(e) => {
            errors.push(src.at(Some(v.span()), format!("{what}: {e} (write e.g. \"8h\" or \"30m\")")));
            Duration::from_secs(1)
        }
    }
}

/// The tiers a role names, each checked against the policy; an empty list is an error.
fn role_tiers(
    src: &Source<'_>,
    errors: &mut Vec<Diagnostic>,
    policy: &Policy,
    key: &Spanned<String>,
    name: &RoleName,
    raw: Option<&Vec<Spanned<String>>>,
) -> BTreeSet<TierName> {
    let mut tiers = BTreeSet::new();
    for t in raw.map(|v| v.as_slice()).unwrap_or_default() {
        if let Some(tier) = self::name(src, errors, t, TierName::parse) {
            if !policy.tiers.contains_key(&tier) {
                errors.push(src.at(Some(t.span()), format!("role {name}: unknown tier {tier}")));
            }
            tiers.insert(tier);
        }
    }
    if raw.is_none_or(|v| v.is_empty()) {
        errors.push(src.at(Some(key.span()), format!("role {name}: tiers must not be empty")));
    }
    tiers
}

/// A field an engineer role must have.
fn required<'r, T>(
    src: &Source<'_>,
    errors: &mut Vec<Diagnostic>,
    key: &Spanned<String>,
    name: &RoleName,
    field: &str,
    v: Option<&'r T>,
) -> Option<&'r T> {
    if v.is_none() {
        errors.push(src.at(Some(key.span()), format!("role {name}: missing field `{field}`")));
    }
    v
}

fn role(
    src: &Source<'_>,
    errors: &mut Vec<Diagnostic>,
    policy: &Policy,
    key: &Spanned<String>,
    name: RoleName,
    raw: &RawRole,
) -> Option<Role> {
    let before = errors.len();
    let tiers = role_tiers(src, errors, policy, key, &name, raw.tiers.as_ref());
    let raw_logins = required(src, errors, key, &name, "logins", raw.logins.as_ref());
    let raw_operations = required(src, errors, key, &name, "operations", raw.operations.as_ref());
    let raw_max_session = required(src, errors, key, &name, "max_session", raw.max_session.as_ref());
    let raw_idle_timeout = required(src, errors, key, &name, "idle_timeout", raw.idle_timeout.as_ref());
    let targets = raw.targets.as_ref().map(|pats| {
        pats.iter()
            .filter_map(|p| match glob::Pattern::new(p.get_ref()) {
                Ok(g) => {
                    let matches_any = policy
                        .targets
                        .values()
                        .any(|t| tiers.contains(&t.tier) && g.matches(t.name.as_str()));
                    if !matches_any {
                        errors.push(src.at(
                            Some(p.span()),
                            format!(
                                "role {name}: target pattern {:?} matches no target in the role's tiers",
                                p.get_ref()
                            ),
                        ));
                    }
                    Some(g)
                }
                Err(e) => {
                    errors.push(src.at(Some(p.span()), format!("role {name}: bad target pattern: {e}")));
                    None
                }
            })
            .collect()
    });
    let mut logins = BTreeSet::new();
    for l in raw_logins.map(|v| v.as_slice()).unwrap_or_default() {
        if let Some(login) = self::name(src, errors, l, Login::parse) {
            logins.insert(login);
        }
    }
    let operations: BTreeSet<Operation> = raw_operations
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|o| *o.get_ref())
        .collect();
    let mut forwards = Vec::new();
    for f in &raw.forward {
        match parse_forward(f.get_ref()) {
            Some(ft) => forwards.push(ft),
            None => errors.push(src.at(
                Some(f.span()),
                format!("role {name}: forward entries are \"host:port\""),
            )),
        }
    }
    if !forwards.is_empty() && !operations.contains(&Operation::PortForward) {
        errors.push(src.at(
            Some(raw.forward[0].span()),
            format!("role {name}: forward is listed but operations lacks \"port-forward\""),
        ));
    }
    let max_session = raw_max_session.map_or(Duration::ZERO, |d| duration(src, errors, d, "max_session"));
    let idle_timeout = raw_idle_timeout.map_or(Duration::ZERO, |d| duration(src, errors, d, "idle_timeout"));
    let mfa_remember = raw
        .mfa_remember
        .as_ref()
        .map(|r| duration(src, errors, r, "mfa_remember"));
    let max_connections = raw.max_connections.as_ref().and_then(|n| {
        let v = *n.get_ref();
        let ok = (1..=MAX_CONNECTIONS_LIMIT).contains(&v);
        if !ok {
            errors.push(src.at(
                Some(n.span()),
                format!("role {name}: max_connections must be between 1 and {MAX_CONNECTIONS_LIMIT}, not {v}"),
            ));
        }
        u32::try_from(v).ok().filter(|_| ok)
    });
    (errors.len() == before).then_some(Role {
        mfa_remember,
        max_connections,
        name,
        tiers,
        targets,
        logins,
        operations,
        forwards,
        max_session,
        idle_timeout,
        requires_grant: raw.requires_grant.as_ref().is_some_and(|g| *g.get_ref()),
    })
}

/// A people role: a manager names the tiers whose grants it decides; auditors and admins
/// name nothing. Connection fields on a people role are errors (a manager role never
/// opens a session by itself).
fn duty(
    src: &Source<'_>,
    errors: &mut Vec<Diagnostic>,
    policy: &Policy,
    key: &Spanned<String>,
    name: &RoleName,
    raw: &RawRole,
) -> Option<Duty> {
    let before = errors.len();
    let kind = match raw.kind {
        RoleKind::Manager => "manager",
        RoleKind::Auditor => "auditor",
        RoleKind::Admin => "admin",
        RoleKind::Engineer => "engineer",
    };
    let misplaced = [
        ("targets", raw.targets.is_some()),
        ("logins", raw.logins.is_some()),
        ("operations", raw.operations.is_some()),
        ("forward", !raw.forward.is_empty()),
        ("max_session", raw.max_session.is_some()),
        ("idle_timeout", raw.idle_timeout.is_some()),
        ("requires_grant", raw.requires_grant.is_some()),
        ("mfa_remember", raw.mfa_remember.is_some()),
        ("max_connections", raw.max_connections.is_some()),
        ("tiers", raw.kind != RoleKind::Manager && raw.tiers.is_some()),
    ];
    for (field, present) in misplaced {
        if present {
            errors.push(src.at(
                Some(key.span()),
                format!("role {name}: `{field}` does not apply to a role of kind \"{kind}\""),
            ));
        }
    }
    let d = match raw.kind {
        RoleKind::Manager => Duty::Manager {
            tiers: role_tiers(src, errors, policy, key, name, raw.tiers.as_ref()),
        },
        RoleKind::Auditor => Duty::Auditor,
        RoleKind::Admin | RoleKind::Engineer => Duty::Admin,
    };
    (errors.len() == before).then_some(d)
}

fn grant_rules(
    src: &Source<'_>,
    errors: &mut Vec<Diagnostic>,
    policy: &Policy,
    tier: &TierName,
    raw: &Spanned<RawGrantRules>,
) -> GrantRules {
    let mut rules = GrantRules::default();
    if let Some(d) = &raw.get_ref().max_duration {
        rules.max_duration = duration(src, errors, d, "max_duration");
    }
    if let Some(n) = &raw.get_ref().approvals {
        match u8::try_from(*n.get_ref()) {
            Ok(v @ 1..=5) => rules.approvals = v,
            _ => errors.push(src.at(Some(n.span()), "approvals must be between 1 and 5")),
        }
    }
    if let Some(r) = &raw.get_ref().external_approver_role {
        if let Some(role) = name(src, errors, r, RoleName::parse) {
            match policy.duties.get(&role) {
                Some(Duty::Manager { tiers }) if tiers.contains(tier) => rules.external_role = Some(role),
                Some(Duty::Manager { .. }) => errors.push(src.at(
                    Some(r.span()),
                    format!("external_approver_role {role} is a manager role that does not name tier {tier}"),
                )),
                _ => errors.push(src.at(
                    Some(r.span()),
                    format!("external_approver_role {role} is not a manager role (kind = \"manager\")"),
                )),
            }
        }
    }
    rules
}

fn parse_forward(s: &str) -> Option<ForwardTarget> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    Some(ForwardTarget {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::TierName;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEh4KR6w7B2dEyE62oDLhFFbFtVWeUwyH8zqz4pWX5VA";

    fn ok_policy() -> String {
        format!(
            r#"
[tiers.web]
description = "web front"
[tiers.web.targets.web1]
address = "127.0.0.1"
port = 2201
host_keys = ["{KEY}"]

[roles.dev]
tiers = ["web"]
logins = ["deploy"]
operations = ["shell", "exec", "port-forward"]
forward = ["127.0.0.1:8080"]
max_session = "8h"
idle_timeout = "30m"
"#
        )
    }

    #[test]
    fn parses_a_good_policy() {
        let p = parse(Path::new("policy.toml"), &ok_policy()).unwrap();
        let t = p.target(&TargetName::parse("web1").unwrap()).unwrap();
        assert_eq!(t.port, 2201);
        assert!(t.pin_source_address, "pinned unless the policy says otherwise");
        let natted = ok_policy().replace("port = 2201", "port = 2201\npin_source_address = false");
        let p2 = parse(Path::new("policy.toml"), &natted).unwrap();
        assert!(
            !p2.target(&TargetName::parse("web1").unwrap())
                .unwrap()
                .pin_source_address
        );
        let r = &p.roles[&RoleName::parse("dev").unwrap()];
        assert_eq!(r.max_session, Duration::from_secs(8 * 3600));
        assert_eq!(r.forwards[0].port, 8080);
    }

    #[test]
    fn reports_every_error_with_its_line() {
        let text = r#"
[tiers.web.targets.web1]
address = "127.0.0.1"

[roles.dev]
tiers = ["nope"]
logins = ["Root"]
operations = ["shell"]
max_session = "forever"
idle_timeout = "30m"
"#;
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        let all = Diagnostics(errs.clone()).to_string();
        assert!(all.contains("exactly one of host_keys"), "{all}");
        assert!(all.contains("unknown tier nope"), "{all}");
        assert!(all.contains("invalid login"), "{all}");
        assert!(all.contains("max_session"), "{all}");
        assert!(
            lines.contains(&3) && lines.contains(&6) && lines.contains(&7) && lines.contains(&9),
            "{all}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = ok_policy().replace("port = 2201", "port = 2201\nprot = 1");
        let err = parse(Path::new("p.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("unknown field `prot`"), "{err}");
        assert!(err.starts_with("p.toml:7:"), "{err}");
    }

    #[test]
    fn people_roles_and_grant_rules() {
        let text = ok_policy()
            + r#"
[tiers.web.grants]
max_duration = "2h"
approvals = 2
external_approver_role = "customer"
[roles.web-managers]
kind = "manager"
tiers = ["web"]
[roles.customer]
kind = "manager"
tiers = ["web"]
[roles.audit]
kind = "auditor"
"#;
        let p = parse(Path::new("p.toml"), &text).unwrap();
        let web = &p.tiers[&TierName::parse("web").unwrap()];
        assert_eq!(web.grants.max_duration, Duration::from_secs(7200));
        assert_eq!(web.grants.approvals, 2);
        assert_eq!(web.grants.external_role.as_ref().map(|r| r.as_str()), Some("customer"));
        assert!(matches!(p.duties[&RoleName::parse("audit").unwrap()], Duty::Auditor));
        assert!(!p.roles.contains_key(&RoleName::parse("customer").unwrap()));
    }

    #[test]
    fn people_roles_are_checked() {
        let text = ok_policy()
            + r#"
[tiers.web.grants]
approvals = 9
external_approver_role = "audit"
[roles.boss]
kind = "manager"
tiers = ["web"]
logins = ["root"]
[roles.audit]
kind = "auditor"
tiers = ["web"]
"#;
        let err = parse(Path::new("p.toml"), &text).unwrap_err().to_string();
        assert!(
            err.contains("`logins` does not apply to a role of kind \"manager\""),
            "{err}"
        );
        assert!(
            err.contains("`tiers` does not apply to a role of kind \"auditor\""),
            "{err}"
        );
        assert!(err.contains("approvals must be between 1 and 5"), "{err}");
        assert!(
            err.contains("external_approver_role audit is not a manager role"),
            "{err}"
        );
        let text = ok_policy() + "[roles.nobody]\nkind = \"superuser\"\n";
        let err = parse(Path::new("p.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("unknown variant `superuser`"), "{err}");
    }

    #[test]
    fn durations_are_bounded_both_ways() {
        let text = ok_policy().replace("max_session = \"8h\"", "max_session = \"500000000years\"");
        let err = parse(Path::new("p.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("max_session must be at most 366d"), "{err}");
        assert!(err.contains("p.toml:"), "with its line: {err}");
        let text = ok_policy().replace("idle_timeout = \"30m\"", "idle_timeout = \"0s\"");
        let err = parse(Path::new("p.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("idle_timeout must be at least 1s"), "{err}");
        let text = ok_policy().replace("max_session = \"8h\"", "max_session = \"366d\"");
        assert!(parse(Path::new("p.toml"), &text).is_ok());
    }

    #[test]
    fn engineer_roles_need_their_fields() {
        let text = ok_policy().replace("max_session = \"8h\"\n", "");
        let err = parse(Path::new("p.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("role dev: missing field `max_session`"), "{err}");
    }

    #[test]
    fn max_connections_is_a_bounded_count_on_engineer_roles() {
        let text = ok_policy().replace(
            "idle_timeout = \"30m\"\n",
            "idle_timeout = \"30m\"\nmax_connections = 3\n",
        );
        let p = parse(Path::new("p.toml"), &text).unwrap();
        assert_eq!(p.roles[&RoleName::parse("dev").unwrap()].max_connections, Some(3));
        assert_eq!(
            parse(Path::new("p.toml"), &ok_policy()).unwrap().roles[&RoleName::parse("dev").unwrap()].max_connections,
            None
        );
        for bad in ["0", "-1", "10001"] {
            let text = ok_policy().replace(
                "idle_timeout = \"30m\"\n",
                &format!("idle_timeout = \"30m\"\nmax_connections = {bad}\n"),
            );
            let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(
                errs[0].message.contains("max_connections must be between 1 and 10000"),
                "{}",
                errs[0].message
            );
            assert_eq!(errs[0].line, 16, "{bad}: the line of the value");
        }
        let text = ok_policy().replace(
            "idle_timeout = \"30m\"\n",
            "idle_timeout = \"30m\"\nmax_connections = \"3\"\n",
        );
        assert!(parse(Path::new("p.toml"), &text).is_err(), "a string is not a count");
        let text = ok_policy() + "[roles.audit]\nkind = \"auditor\"\nmax_connections = 2\n";
        let err = parse(Path::new("p.toml"), &text).unwrap_err().to_string();
        assert!(
            err.contains("`max_connections` does not apply to a role of kind \"auditor\""),
            "{err}"
        );
    }

    #[test]
    fn operations_are_a_closed_set() {
        let text = ok_policy().replace("\"shell\",", "\"root-everything\",");
        assert!(parse(Path::new("p.toml"), &text).is_err());
    }
}
