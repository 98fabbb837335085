//! Pure access decisions.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{ForwardTarget, Operation, Policy, Target};
use crate::ident::{Login, RoleName, TargetName, TierName, UserName};

/// Why access was refused. The text is shown to the client and written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("unknown target {0}")]
    UnknownTarget(TargetName),
    #[error("user {0} has no role")]
    NoRoles(UserName),
    #[error("none of your roles ({roles}) covers tier {tier} (target {target})")]
    TierNotAllowed {
        roles: String,
        tier: TierName,
        target: TargetName,
    },
    #[error("none of your roles allows target {0}")]
    TargetNotAllowed(TargetName),
    #[error("login {login} is not allowed on {target} (allowed: {allowed})")]
    LoginNotAllowed {
        login: Login,
        target: TargetName,
        allowed: String,
    },
    #[error("tier {tier} requires an approved access grant and you have none active")]
    GrantRequired { tier: TierName },
    #[error(
        "{user} already has {open} session{s} open, the most role {role} allows \
         (max_connections); end one first",
        s = if *open == 1 { "" } else { "s" }
    )]
    TooManySessions { user: UserName, open: u64, role: RoleName },
}

/// What an SFTP request needs from the role.
pub use session_recordings::sftp::Access as SftpAccess;

/// A request made on an authorized session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Shell,
    Exec(&'a str),
    Subsystem(&'a str),
    Forward { host: &'a str, port: u32 },
}

/// An approved access grant in force, as a decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveGrant {
    pub id: String,
    pub tier: TierName,
    /// Only this target, when set.
    pub target: Option<TargetName>,
    /// Only this login, when set.
    pub login: Option<Login>,
    /// Unix microseconds.
    pub expires_at: i64,
}

impl ActiveGrant {
    fn covers(&self, tier: &TierName, target: &TargetName, login: &Login, now: i64) -> bool {
        &self.tier == tier
            && self.target.as_ref().is_none_or(|t| t == target)
            && self.login.as_ref().is_none_or(|l| l == login)
            && self.expires_at > now
    }
}

/// The grant a session runs under: it ends when the grant does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantUse {
    pub id: String,
    /// Unix microseconds.
    pub expires_at: i64,
}

/// The most target sessions a user may have open at once (on every node), and the
/// role that says so: the lowest `max_connections` among all the user's roles, whether
/// or not they cover this target, as Teleport does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimit {
    pub max: u32,
    pub role: RoleName,
}

impl ConnectionLimit {
    /// The refusal of a login by `user`, who has `open` sessions open already.
    pub fn refusal(&self, user: &UserName, open: u64) -> Denial {
        Denial::TooManySessions {
            user: user.clone(),
            open,
            role: self.role.clone(),
        }
    }
}

/// Proof that policy allowed `user` to log in as `login` on `target`. Only
/// [`Authorized::decide`] builds one, and the relay takes one to start.
#[derive(Debug, Clone)]
pub struct Authorized {
    user: UserName,
    target: Target,
    login: Login,
    roles: Vec<RoleName>,
    operations: BTreeSet<Operation>,
    forwards: Vec<ForwardTarget>,
    max_session: Duration,
    idle_timeout: Duration,
    /// How long an earlier second-factor proof covers this login; `None`: fresh now.
    mfa_window: Option<Duration>,
    /// Set when a role that requires a grant was needed for this decision.
    grant: Option<GrantUse>,
    connection_limit: Option<ConnectionLimit>,
}

impl Authorized {
    /// Decide whether `user`, holding `bound_roles`, may log in as `login` on `target`.
    ///
    /// Roles that allow the target and the login are combined (their operations and
    /// forwards are a union; the session may last as long as the longest of them). Roles
    /// naming unknown role names (bindings left over after a policy change) are ignored.
    /// A role that requires a grant counts only under one of `grants` that covers this
    /// tier, target and login at `now` (Unix microseconds); the session then runs under
    /// the grant that lasts longest, and ends with it.
    pub fn decide(
        policy: &Policy,
        user: &UserName,
        bound_roles: &[RoleName],
        grants: &[ActiveGrant],
        now: i64,
        target: &TargetName,
        login: &Login,
    ) -> Result<Authorized, Denial> {
        let t = policy
            .target(target)
            .ok_or_else(|| Denial::UnknownTarget(target.clone()))?;
        let roles: Vec<_> = bound_roles.iter().filter_map(|r| policy.roles.get(r)).collect();
        if roles.is_empty() {
            return Err(Denial::NoRoles(user.clone()));
        }
        let connection_limit = roles
            .iter()
            .filter_map(|r| {
                r.max_connections.map(|max| ConnectionLimit {
                    max,
                    role: r.name.clone(),
                })
            })
            .min_by_key(|l| l.max);
        let on_tier: Vec<_> = roles.iter().filter(|r| r.tiers.contains(&t.tier)).collect();
        if on_tier.is_empty() {
            return Err(Denial::TierNotAllowed {
                roles: join(roles.iter().map(|r| r.name.as_str())),
                tier: t.tier.clone(),
                target: target.clone(),
            });
        }
        let on_target: Vec<_> = on_tier
            .into_iter()
            .filter(|r| match &r.targets {
                None => true,
                Some(pats) => pats.iter().any(|p| p.matches(target.as_str())),
            })
            .collect();
        if on_target.is_empty() {
            return Err(Denial::TargetNotAllowed(target.clone()));
        }
        let with_login: Vec<_> = on_target.iter().filter(|r| r.logins.contains(login)).collect();
        if with_login.is_empty() {
            return Err(Denial::LoginNotAllowed {
                login: login.clone(),
                target: target.clone(),
                allowed: join(on_target.iter().flat_map(|r| r.logins.iter().map(|l| l.as_str()))),
            });
        }
        // A role that requires a grant allows nothing without one in force.
        let grant = grants
            .iter()
            .filter(|g| g.covers(&t.tier, target, login, now))
            .max_by_key(|g| g.expires_at);
        let granted: Vec<_> = with_login
            .iter()
            .filter(|r| !r.requires_grant || grant.is_some())
            .collect();
        if granted.is_empty() {
            return Err(Denial::GrantRequired { tier: t.tier.clone() });
        }
        let grant = grant
            .filter(|_| granted.iter().any(|r| r.requires_grant))
            .map(|g| GrantUse {
                id: g.id.clone(),
                expires_at: g.expires_at,
            });
        let mut operations = BTreeSet::new();
        let mut forwards = Vec::new();
        for r in &granted {
            operations.extend(r.operations.iter().copied());
            forwards.extend(r.forwards.iter().cloned());
        }
        forwards.sort();
        forwards.dedup();
        Ok(Authorized {
            user: user.clone(),
            target: t.clone(),
            login: login.clone(),
            roles: granted.iter().map(|r| r.name.clone()).collect(),
            operations,
            forwards,
            max_session: granted.iter().map(|r| r.max_session).max().unwrap_or_default(),
            idle_timeout: granted.iter().map(|r| r.idle_timeout).max().unwrap_or_default(),
            // The strictest wins: any role without a window, or a tier that always
            // wants a fresh factor, means a fresh one.
            mfa_window: if policy.tiers.get(&t.tier).is_some_and(|tier| tier.mfa_always_fresh) {
                None
            } else {
                granted
                    .iter()
                    .map(|r| r.mfa_remember)
                    .collect::<Option<Vec<_>>>()
                    .and_then(|w| w.into_iter().min())
            },
            grant,
            connection_limit,
        })
    }

    /// How many target sessions this user may have open at once, if any role limits it.
    pub fn connection_limit(&self) -> Option<&ConnectionLimit> {
        self.connection_limit.as_ref()
    }

    /// How long an earlier second-factor proof from the same workstation covers this
    /// login; `None` asks for a fresh one.
    pub fn mfa_window(&self) -> Option<Duration> {
        self.mfa_window
    }

    /// `Ok` if the roles grant `op`, else the reason shown to the client.
    fn need(&self, op: Operation) -> Result<(), String> {
        if self.operations.contains(&op) {
            Ok(())
        } else {
            Err(format!(
                "{} is not allowed for {} on {} (roles: {})",
                op.as_str(),
                self.login,
                self.target.name,
                self.role_label()
            ))
        }
    }

    /// Whether a request on this session is allowed; `Err` carries the reason.
    pub fn check(&self, request: &Request<'_>) -> Result<(), String> {
        let need = |op: Operation| self.need(op);
        match request {
            Request::Shell => need(Operation::Shell),
            // Legacy scp is a file transfer: the SFTP rights allow it (exec does too),
            // where the session may run commands at all (it runs through the login's
            // shell on the target; see `runs_commands`).
            Request::Exec(cmd) => match session_recordings::scp::parse_command(cmd).map(|c| c.direction) {
                Some(_) if !self.runs_commands() => Err(
                    "legacy scp (scp -O) runs through the login's shell on the target, which needs shell or exec; \
                     use scp's default (SFTP) mode"
                        .into(),
                ),
                Some(session_recordings::scp::ScpDirection::Upload) => {
                    need(Operation::SftpWrite).or_else(|_| need(Operation::Exec))
                }
                Some(session_recordings::scp::ScpDirection::Download) => {
                    need(Operation::SftpRead).or_else(|_| need(Operation::Exec))
                }
                None => need(Operation::Exec),
            },
            // The relay parses the SFTP stream and checks each request with `check_sftp`.
            Request::Subsystem("sftp") => need(Operation::SftpRead).or_else(|_| need(Operation::SftpWrite)),
            Request::Subsystem(other) => Err(format!("subsystem {other:?} is not supported")),
            Request::Forward { host, port } => {
                need(Operation::PortForward)?;
                let allowed = self
                    .forwards
                    .iter()
                    .any(|f| f.host == *host && u32::from(f.port) == *port);
                if allowed {
                    Ok(())
                } else {
                    Err(format!("port forwarding to {host}:{port} is not allowed"))
                }
            }
        }
    }

    /// Whether one SFTP request is allowed: reading a file's content needs `sftp-read`,
    /// anything that changes the target needs `sftp-write`, a handle that does both needs
    /// both, listing and stat need either.
    pub fn check_sftp(&self, access: SftpAccess) -> Result<(), String> {
        match access {
            SftpAccess::Metadata if self.allows(Operation::SftpWrite) => Ok(()),
            SftpAccess::Metadata | SftpAccess::Read => self.need(Operation::SftpRead),
            SftpAccess::Write => self.need(Operation::SftpWrite),
            SftpAccess::ReadWrite => self
                .need(Operation::SftpRead)
                .and_then(|()| self.need(Operation::SftpWrite)),
        }
    }

    pub fn user(&self) -> &UserName {
        &self.user
    }
    pub fn target(&self) -> &Target {
        &self.target
    }
    pub fn login(&self) -> &Login {
        &self.login
    }
    pub fn roles(&self) -> &[RoleName] {
        &self.roles
    }
    pub fn role_label(&self) -> String {
        join(self.roles.iter().map(|r| r.as_str()))
    }
    pub fn max_session(&self) -> Duration {
        self.max_session
    }
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
    /// The grant this session runs under, if its decision needed one.
    pub fn grant(&self) -> Option<&GrantUse> {
        self.grant.as_ref()
    }
    /// How long the session may last from `now` (Unix microseconds): the roles'
    /// maximum, cut short by the grant's end.
    pub fn limit_from(&self, now: i64) -> Duration {
        match &self.grant {
            Some(g) => {
                let left = Duration::from_micros(u64::try_from(g.expires_at.saturating_sub(now)).unwrap_or(0));
                left.min(self.max_session)
            }
            None => self.max_session,
        }
    }
    pub fn allows(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }

    /// Whether this session may run a command on the target (a shell or exec). When it
    /// may not, its upstream certificate forces `internal-sftp`: sshd serves SFTP in its
    /// own process, never through the login's shell, whose startup files (bash reads
    /// `~/.bashrc` even for the commands sshd runs) the role's SFTP writes would
    /// otherwise turn into commands that nobody records.
    pub fn runs_commands(&self) -> bool {
        self.allows(Operation::Shell) || self.allows(Operation::Exec)
    }
    /// A one-line account of the decision, for recordings and the audit log.
    pub fn describe(&self) -> String {
        let ops: Vec<_> = self.operations.iter().map(|o| o.as_str()).collect();
        format!(
            "allowed {}@{} (tier {}) by roles [{}]: operations [{}], max session {}s, idle timeout {}s",
            self.login,
            self.target.name,
            self.target.tier,
            self.role_label(),
            ops.join(", "),
            self.max_session.as_secs(),
            self.idle_timeout.as_secs()
        ) + &match &self.grant {
            Some(g) => format!(", under access grant {}", g.id),
            None => String::new(),
        }
    }
}

fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let set: BTreeSet<&str> = names.collect();
    set.into_iter().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::parse;
    use std::path::Path;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEh4KR6w7B2dEyE62oDLhFFbFtVWeUwyH8zqz4pWX5VA";

    fn policy() -> Policy {
        let text = format!(
            r#"
[tiers.web.targets.web1]
address = "127.0.0.1"
host_keys = ["{KEY}"]
[tiers.web.targets.web2]
address = "127.0.0.2"
host_keys = ["{KEY}"]
[tiers.db.targets.db1]
address = "127.0.0.3"
host_keys = ["{KEY}"]

[roles.web-ops]
tiers = ["web"]
targets = ["web1"]
logins = ["deploy"]
operations = ["shell"]
max_session = "1h"
idle_timeout = "10m"

[roles.web-exec]
tiers = ["web"]
logins = ["deploy", "app"]
operations = ["exec", "port-forward"]
forward = ["127.0.0.1:5432"]
max_session = "2h"
idle_timeout = "5m"

[roles.web-get]
tiers = ["web"]
logins = ["deploy"]
operations = ["sftp-read"]
max_session = "1h"
idle_timeout = "10m"

[roles.web-put]
tiers = ["web"]
logins = ["deploy"]
operations = ["sftp-write"]
max_session = "1h"
idle_timeout = "10m"

[roles.dba]
tiers = ["db"]
logins = ["postgres"]
operations = ["shell"]
max_session = "1h"
idle_timeout = "10m"
requires_grant = true
"#
        );
        parse(Path::new("p.toml"), &text).unwrap()
    }

    fn n<T>(f: fn(&str) -> Result<T, crate::ident::NameError>, s: &str) -> T {
        f(s).unwrap()
    }

    /// alice, holding `roles` (no grants), logging in as `login` on `target`.
    fn alice_with(p: &Policy, roles: &[&str], target: &str, login: &str) -> Authorized {
        let roles: Vec<RoleName> = roles.iter().map(|r| n(RoleName::parse, r)).collect();
        Authorized::decide(
            p,
            &n(UserName::parse, "alice"),
            &roles,
            &[],
            0,
            &n(TargetName::parse, target),
            &n(Login::parse, login),
        )
        .unwrap()
    }

    #[test]
    fn the_lowest_max_connections_among_all_the_users_roles_applies() {
        let text = format!(
            r#"
[tiers.web.targets.web1]
address = "127.0.0.1"
host_keys = ["{KEY}"]
[tiers.db.targets.db1]
address = "127.0.0.3"
host_keys = ["{KEY}"]
[roles.web]
tiers = ["web"]
logins = ["deploy"]
operations = ["shell"]
max_session = "1h"
idle_timeout = "10m"
max_connections = 5
[roles.open]
tiers = ["web"]
logins = ["deploy"]
operations = ["exec"]
max_session = "1h"
idle_timeout = "10m"
[roles.db]
tiers = ["db"]
logins = ["postgres"]
operations = ["shell"]
max_session = "1h"
idle_timeout = "10m"
max_connections = 2
"#
        );
        let p = parse(Path::new("p.toml"), &text).unwrap();
        let limit = |roles: &[&str]| {
            alice_with(&p, roles, "web1", "deploy")
                .connection_limit()
                .map(|l| (l.max, l.role.to_string()))
        };
        assert_eq!(limit(&["open"]), None);
        assert_eq!(limit(&["web", "open"]), Some((5, "web".into())));
        // The db role does not cover web1, and its limit still holds for alice.
        assert_eq!(limit(&["web", "open", "db"]), Some((2, "db".into())));
    }

    #[test]
    fn the_strictest_second_factor_window_wins() {
        let text = format!(
            r#"
[tiers.web.targets.web1]
address = "127.0.0.1"
host_keys = ["{KEY}"]
[tiers.db]
mfa_always_fresh = true
[tiers.db.targets.db1]
address = "127.0.0.3"
host_keys = ["{KEY}"]
[roles.long]
tiers = ["web", "db"]
logins = ["deploy"]
operations = ["shell"]
max_session = "1h"
idle_timeout = "10m"
mfa_remember = "1h"
[roles.short]
tiers = ["web"]
logins = ["deploy"]
operations = ["exec"]
max_session = "1h"
idle_timeout = "10m"
mfa_remember = "5m"
[roles.fresh]
tiers = ["web"]
logins = ["deploy"]
operations = ["exec"]
max_session = "1h"
idle_timeout = "10m"
"#
        );
        let p = parse(Path::new("p.toml"), &text).unwrap();
        let window = |roles: &[&str], target: &str| alice_with(&p, roles, target, "deploy").mfa_window();
        assert_eq!(window(&["long"], "web1"), Some(Duration::from_secs(3600)));
        assert_eq!(window(&["long", "short"], "web1"), Some(Duration::from_secs(300)));
        assert_eq!(window(&["long", "fresh"], "web1"), None, "a role without a window");
        assert_eq!(
            window(&["long"], "db1"),
            None,
            "a tier that always wants a fresh factor"
        );
        let bad = text.replace("mfa_remember = \"5m\"", "mfa_remember = \"soon\"");
        assert!(parse(Path::new("p.toml"), &bad)
            .unwrap_err()
            .to_string()
            .contains("mfa_remember"));
    }

    /// Reading a file's content needs sftp-read, changing anything needs sftp-write, a
    /// handle that does both needs both; legacy scp follows the same rights, and only
    /// in the exact form OpenSSH's scp sends.
    #[test]
    fn file_transfer_rights_keep_reading_and_writing_apart() {
        use SftpAccess::*;
        let p = policy();
        let get = alice_with(&p, &["web-get"], "web1", "deploy");
        let put = alice_with(&p, &["web-put"], "web1", "deploy");
        let both = alice_with(&p, &["web-get", "web-put"], "web1", "deploy");
        for a in [&get, &put, &both] {
            assert!(a.check(&Request::Subsystem("sftp")).is_ok());
            assert!(a.check_sftp(Metadata).is_ok());
        }
        assert!(get.check_sftp(Read).is_ok());
        assert!(get.check_sftp(Write).is_err());
        assert!(get.check_sftp(ReadWrite).is_err());
        assert!(put.check_sftp(Read).is_err());
        assert!(put.check_sftp(Write).is_ok());
        assert!(
            put.check_sftp(ReadWrite).is_err(),
            "a write-only role must not get a handle that reads"
        );
        assert!(both.check_sftp(ReadWrite).is_ok());

        // Legacy scp runs a shell on the target: only with the right to run commands.
        let get_shell = alice_with(&p, &["web-get", "web-ops"], "web1", "deploy");
        let put_shell = alice_with(&p, &["web-put", "web-ops"], "web1", "deploy");
        for a in [&get, &put, &both] {
            assert!(!a.runs_commands());
            for scp in ["scp -f /srv/x", "scp -t /srv/x"] {
                let e = a.check(&Request::Exec(scp)).unwrap_err();
                assert!(e.contains("legacy scp"), "{e}");
            }
        }
        assert!(get_shell.runs_commands());
        assert!(get_shell.check(&Request::Exec("scp -f /srv/x")).is_ok());
        assert!(get_shell.check(&Request::Exec("scp -t /srv/x")).is_err());
        assert!(put_shell.check(&Request::Exec("scp -t /srv/x")).is_ok());
        assert!(put_shell.check(&Request::Exec("scp -f /srv/x")).is_err());
        let (get, put) = (get_shell, put_shell);
        // Commands a shell reads differently from the gateway are plain execs, which
        // neither role may run.
        for sly in [
            "scp -r -t -- -f\u{b}-f\u{b}",
            "scp -t -f -f x",
            "scp -t -f -t x",
            "scp -f x; id",
        ] {
            assert!(get.check(&Request::Exec(sly)).is_err(), "{sly:?}");
            assert!(put.check(&Request::Exec(sly)).is_err(), "{sly:?}");
        }
        assert!(get.check(&Request::Exec("id")).is_err());
    }

    #[test]
    fn decisions() {
        let p = policy();
        let alice = n(UserName::parse, "alice");
        let roles = [n(RoleName::parse, "web-ops"), n(RoleName::parse, "web-exec")];
        let a = Authorized::decide(
            &p,
            &alice,
            &roles,
            &[],
            0,
            &n(TargetName::parse, "web1"),
            &n(Login::parse, "deploy"),
        )
        .unwrap();
        assert!(a.check(&Request::Shell).is_ok());
        assert!(a.check(&Request::Exec("id")).is_ok());
        assert!(a.check(&Request::Subsystem("sftp")).is_err());
        assert!(a
            .check(&Request::Forward {
                host: "127.0.0.1",
                port: 5432
            })
            .is_ok());
        assert!(a
            .check(&Request::Forward {
                host: "127.0.0.1",
                port: 22
            })
            .is_err());
        assert_eq!(a.max_session(), Duration::from_secs(7200));

        // web2 is outside web-ops' target list: only web-exec applies, so no shell.
        let b = Authorized::decide(
            &p,
            &alice,
            &roles,
            &[],
            0,
            &n(TargetName::parse, "web2"),
            &n(Login::parse, "deploy"),
        )
        .unwrap();
        assert!(b.check(&Request::Shell).is_err());

        let deny = |t: &str, l: &str| {
            Authorized::decide(
                &p,
                &alice,
                &roles,
                &[],
                0,
                &n(TargetName::parse, t),
                &n(Login::parse, l),
            )
            .unwrap_err()
        };
        assert!(matches!(deny("nope", "deploy"), Denial::UnknownTarget(_)));
        assert!(matches!(deny("web1", "root"), Denial::LoginNotAllowed { .. }));
        assert!(matches!(deny("db1", "postgres"), Denial::TierNotAllowed { .. }));
        let dba = [n(RoleName::parse, "dba")];
        assert!(matches!(
            Authorized::decide(
                &p,
                &alice,
                &dba,
                &[],
                0,
                &n(TargetName::parse, "db1"),
                &n(Login::parse, "postgres")
            ),
            Err(Denial::GrantRequired { .. })
        ));
        assert!(matches!(
            Authorized::decide(
                &p,
                &alice,
                &[],
                &[],
                0,
                &n(TargetName::parse, "web1"),
                &n(Login::parse, "deploy")
            ),
            Err(Denial::NoRoles(_))
        ));
        // A grant in force opens the grant-only role, and the session runs under it.
        let grant = |target: Option<&str>, login: Option<&str>, expires_at: i64| ActiveGrant {
            id: "g0000000001".into(),
            tier: n(TierName::parse, "db"),
            target: target.map(|t| n(TargetName::parse, t)),
            login: login.map(|l| n(Login::parse, l)),
            expires_at,
        };
        let now = 1_000_000_000;
        let db = |grants: &[ActiveGrant]| {
            Authorized::decide(
                &p,
                &alice,
                &dba,
                grants,
                now,
                &n(TargetName::parse, "db1"),
                &n(Login::parse, "postgres"),
            )
        };
        let a = db(&[grant(None, None, now + 600_000_000)]).unwrap();
        assert_eq!(a.grant().map(|g| g.id.as_str()), Some("g0000000001"));
        assert_eq!(a.limit_from(now), Duration::from_secs(600).min(a.max_session()));
        assert!(a.describe().contains("under access grant g0000000001"));
        assert!(db(&[grant(Some("db1"), Some("postgres"), now + 1)]).is_ok());
        for g in [
            grant(None, None, now),
            grant(Some("db2"), None, now + 600_000_000),
            grant(None, Some("root"), now + 600_000_000),
        ] {
            assert!(
                matches!(db(std::slice::from_ref(&g)), Err(Denial::GrantRequired { .. })),
                "{g:?} must not open db1 as postgres"
            );
        }
    }

    /// Property: whatever roles a user holds, an allowed decision only ever grants
    /// operations and logins that one of those roles lists for that target's tier.
    #[test]
    fn never_more_than_the_roles_grant() {
        let p = policy();
        let alice = n(UserName::parse, "alice");
        let all_roles: Vec<RoleName> = p.roles.keys().cloned().collect();
        let logins = ["deploy", "app", "postgres", "root"];
        for mask in 0u32..(1 << all_roles.len()) {
            let held: Vec<RoleName> = all_roles
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, r)| r.clone())
                .collect();
            for t in p.targets.keys() {
                for l in logins {
                    let login = n(Login::parse, l);
                    if let Ok(a) = Authorized::decide(&p, &alice, &held, &[], 0, t, &login) {
                        for op in [
                            Operation::Shell,
                            Operation::Exec,
                            Operation::SftpRead,
                            Operation::SftpWrite,
                            Operation::PortForward,
                        ] {
                            if a.allows(op) {
                                assert!(
                                    held.iter().any(|r| {
                                        let role = &p.roles[r];
                                        role.tiers.contains(&a.target().tier)
                                            && role.logins.contains(&login)
                                            && role.operations.contains(&op)
                                            && !role.requires_grant
                                    }),
                                    "{op:?} on {t} as {l} with {held:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
