//! The commands, in local mode: each opens the gateway's database from its configuration.

use std::time::{Duration, Instant};

use clap::Subcommand;
use herse::config::GatewayConfig;
use herse::ident::{RoleName, TargetName, UserName};
use herse::store::{AuditEvent, Severity, Store, StoreError};
use russh::keys::ssh_key::PublicKey;

use crate::output;
use crate::Cli;

/// A failure with its exit code.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            message: e.to_string(),
        }
    }
}

pub(crate) fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

pub(crate) fn store_err(e: StoreError) -> Failure {
    let code = match e {
        StoreError::NotFound(_) => 3,
        _ => 1,
    };
    Failure {
        code,
        message: e.to_string(),
    }
}

#[derive(Subcommand)]
pub enum UsersCmd {
    /// Create a user, optionally with a first public key file.
    Add {
        name: String,
        #[arg(long)]
        key: Option<std::path::PathBuf>,
    },
    List,
    Show {
        name: String,
    },
    /// Suspend a user: logins are refused and live sessions end within a second.
    Suspend {
        name: String,
        #[arg(long)]
        reason: String,
        /// End the suspension by itself at this time (RFC 3339, e.g.
        /// 2026-12-01T09:00:00Z) or after this long (e.g. 3d).
        #[arg(long)]
        until: Option<String>,
    },
    Resume {
        name: String,
    },
    Remove {
        name: String,
    },
    /// The user's TOTP second factor.
    #[command(subcommand)]
    Totp(crate::mfa::TotpCmd),
    /// Lift second-factor and portal-login lockouts and forget the failures behind them.
    Unlock {
        name: String,
    },
    /// Make the user's one-time recovery codes (replacing any earlier ones) and print
    /// them once; each stands in for a TOTP code a single time.
    RecoveryCodes {
        name: String,
    },
    /// Set the user's portal password, read from standard input (the password policy
    /// applies; the user should change it at first login).
    Password {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Add an OpenSSH public key (a .pub file, or - for standard input).
    Add {
        user: String,
        file: std::path::PathBuf,
    },
    /// Remove a key by its SHA256 fingerprint.
    Remove {
        user: String,
        fingerprint: String,
    },
    List {
        user: String,
    },
}

#[derive(Subcommand)]
pub enum RolesCmd {
    Bind { user: String, role: String },
    Unbind { user: String, role: String },
}

#[derive(Subcommand)]
pub enum SessionsCmd {
    /// Live sessions (with --all, past ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// End a live session; waits until the gateway has closed it.
    Kill { id: String },
    /// Show a live session's terminal in real time, read-only (from now, or --from-start).
    Watch {
        id: String,
        #[arg(long)]
        from_start: bool,
    },
}

#[derive(Subcommand)]
pub enum TargetsCmd {
    /// Targets in the policy.
    List,
    /// Connect to a target and verify its host key.
    Check { name: String },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Events, oldest first (the newest --limit matching); with --json, one JSON object
    /// per line (with seq and hash), for a SIEM.
    List {
        #[command(flatten)]
        filter: crate::audit::FilterArgs,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Print the last events (or those since --since), then each new one as it is
    /// appended, until Ctrl-C.
    Follow {
        #[command(flatten)]
        filter: crate::audit::FilterArgs,
    },
    /// Check the hash chain and the signed checkpoints; exit 1 naming the first problem.
    Verify {
        /// The audit public key (64 hex digits, or a file holding them such as
        /// DATA_DIR/audit_key.pub); default: the one stored in the database.
        #[arg(long)]
        public_key: Option<String>,
    },
}

pub(crate) fn load_config(cli: &Cli) -> Result<GatewayConfig, Failure> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("/etc/herse/herse.toml"));
    GatewayConfig::load(&path).map_err(|d| usage(d.to_string()))
}

/// The saved remote login, when this invocation runs remotely: no `--config` (or
/// `HERSE_CONFIG`) and no `--local`.
pub(crate) fn remote(cli: &Cli) -> Result<Option<crate::remote::Saved>, Failure> {
    if cli.local || cli.config.is_some() {
        return Ok(None);
    }
    crate::remote::saved()
}

/// Refuse a command remote mode does not carry yet, rather than run it on a local
/// configuration the caller did not name.
fn local_only(cli: &Cli, what: &str) -> Result<(), Failure> {
    if remote(cli)?.is_some() {
        return Err(usage(format!(
            "`hersectl {what}` runs only in local mode on the gateway host (pass --config or --local)"
        )));
    }
    Ok(())
}

/// Run a control call: on the gateway as the logged-in person (remote mode), or here
/// as the local operator.
pub(crate) async fn execute(cli: &Cli, call: &herse::control::Call) -> Result<serde_json::Value, Failure> {
    if let Some(saved) = remote(cli)? {
        return crate::remote::call(&saved, call).await;
    }
    let config = load_config(cli)?;
    // A broken policy file must not lock the operator out of recovery (audit, users,
    // sessions): only the calls that read it need it.
    let policy = match herse::policy::load(&config.policy_path) {
        Ok(p) => p,
        Err(_) if !call.needs_policy() => herse::policy::Policy::default(),
        Err(d) => return Err(usage(d.to_string())),
    };
    let store = open(cli).await?;
    let ctx = herse::control::Ctx {
        store: &store,
        policy: &policy,
    };
    let r = herse::control::execute(&ctx, &herse::access::Caller::Local(operator()), call).await;
    store.close().await;
    r.map_err(|e| Failure {
        code: e.kind.exit_code(),
        message: e.message,
    })
}

pub(crate) async fn open(cli: &Cli) -> Result<Store, Failure> {
    let config = load_config(cli)?;
    herse::runtime::open_store(&config).await.map_err(|e| Failure {
        code: 1,
        message: format!("{e:#}"),
    })
}

pub fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("local:{user}")
}

pub(crate) fn user_name(s: &str) -> Result<UserName, Failure> {
    UserName::parse(s).map_err(|e| usage(e.to_string()))
}

fn read_key(path: &std::path::Path) -> Result<PublicKey, Failure> {
    let text = if path == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?
    };
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    PublicKey::from_openssh(line.trim())
        .map_err(|e| usage(format!("{}: not an OpenSSH public key: {e}", path.display())))
}

/// `--until`: an RFC 3339 time or a duration from now, as Unix microseconds.
fn parse_until(s: &str) -> Result<i64, Failure> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let d = humantime::parse_duration(s)
                .map_err(|_| usage(format!("--until {s:?}: give an RFC 3339 time or a duration like 3d")))?;
            std::time::SystemTime::now() + d
        }
    };
    let micros = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| usage(format!("--until {s:?} is before 1970")))?
        .as_micros();
    i64::try_from(micros).map_err(|_| usage(format!("--until {s:?} is too far away")))
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::from(format!("unexpected answer: {e}")))
}

/// Commands that run through the control API, locally or remotely.
async fn remote_capable(cli: &Cli) -> Result<(), Failure> {
    use herse::control::Call;
    let call = match &cli.command {
        crate::Command::Users(UsersCmd::Add { name, key }) => Call::UsersAdd {
            name: name.clone(),
            // The key file is read here, so remote callers send its contents.
            key: key
                .as_deref()
                .map(read_key)
                .transpose()?
                .map(|k| k.to_openssh().unwrap_or_default()),
        },
        crate::Command::Users(UsersCmd::List) => Call::UsersList,
        crate::Command::Users(UsersCmd::Show { name }) => Call::UsersShow { name: name.clone() },
        crate::Command::Users(UsersCmd::Suspend { name, reason, until }) => Call::UsersSuspend {
            name: name.clone(),
            reason: reason.clone(),
            until: until.as_deref().map(parse_until).transpose()?,
        },
        crate::Command::Users(UsersCmd::Resume { name }) => Call::UsersResume { name: name.clone() },
        crate::Command::Sessions(SessionsCmd::List { all, limit }) => Call::SessionsList {
            live: !all,
            limit: *limit,
        },
        crate::Command::Sessions(SessionsCmd::Kill { id }) => Call::SessionsKill { id: id.clone() },
        _ => return Err(usage("not a control command")),
    };
    let v = execute(cli, &call).await?;
    match &cli.command {
        crate::Command::Users(UsersCmd::List) => {
            let list: Vec<herse::store::UserRow> = parse(v)?;
            output::table(cli.json, &list, &["NAME", "STATUS", "ROLES", "KEYS", "CREATED"], |u| {
                vec![
                    u.name.clone(),
                    format!("{:?}", u.status).to_lowercase(),
                    u.roles.join(","),
                    u.keys.len().to_string(),
                    output::time(u.created_at),
                ]
            });
        }
        crate::Command::Sessions(SessionsCmd::List { .. }) => {
            let list: Vec<herse::store::SessionRow> = parse(v)?;
            output::table(
                cli.json,
                &list,
                &["ID", "USER", "TARGET", "LOGIN", "CLIENT", "STARTED", "ENDED", "GRANT"],
                |s| {
                    vec![
                        s.id.clone(),
                        s.user.clone(),
                        s.target.clone(),
                        s.login.clone(),
                        s.client_addr.clone(),
                        output::time(s.started_at),
                        s.ended_at.map(output::time).unwrap_or_else(|| "live".into()),
                        s.grant.clone().unwrap_or_default(),
                    ]
                },
            );
        }
        crate::Command::Sessions(SessionsCmd::Kill { id }) => {
            // Wait until the gateway has closed it (any node, within a second).
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                let list: Vec<herse::store::SessionRow> = parse(
                    execute(
                        cli,
                        &Call::SessionsList {
                            live: true,
                            limit: 10_000,
                        },
                    )
                    .await?,
                )?;
                if !list.iter().any(|s| &s.id == id) {
                    println!("session {id} ended after {} ms", start.elapsed().as_millis());
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Err(Failure {
                code: 1,
                message: format!(
                    "kill requested, but session {id} has not ended after 5 s (is its gateway node running?)"
                ),
            });
        }
        _ => {
            if cli.json {
                output::object(true, &v);
            } else if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
                println!("{m}");
            } else {
                output::object(false, &v);
            }
        }
    }
    Ok(())
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        crate::Command::Login { server, ca, user } => return crate::remote::login(server, ca, user.as_deref()).await,
        crate::Command::Logout => return crate::remote::logout(),
        crate::Command::Whoami => {
            let v = execute(&cli, &herse::control::Call::Whoami).await?;
            output::object(cli.json, &v);
            return Ok(());
        }
        crate::Command::Grants(c) => return crate::grants::run(&cli, c).await,
        crate::Command::Users(
            UsersCmd::Add { .. }
            | UsersCmd::List
            | UsersCmd::Show { .. }
            | UsersCmd::Suspend { .. }
            | UsersCmd::Resume { .. },
        )
        | crate::Command::Sessions(SessionsCmd::List { .. } | SessionsCmd::Kill { .. }) => {
            return remote_capable(&cli).await
        }
        crate::Command::Audit(c) => return audit(&cli, c).await,
        _ => local_only(&cli, "this command")?,
    }
    match &cli.command {
        crate::Command::Login { .. } | crate::Command::Logout | crate::Command::Whoami | crate::Command::Grants(_) => {
            Ok(())
        }
        crate::Command::Users(c) => users(&cli, c).await,
        crate::Command::Keys(c) => keys(&cli, c).await,
        crate::Command::Roles(c) => roles(&cli, c).await,
        crate::Command::Sessions(c) => sessions(&cli, c).await,
        crate::Command::Targets(c) => targets(&cli, c).await,
        crate::Command::Audit(c) => audit(&cli, c).await,
        crate::Command::Workstations(c) => crate::workstations::run(&cli, c).await,
        crate::Command::Recordings(crate::recordings::RecordingsCmd::Purge) => {
            let config = load_config(&cli)?;
            let policy = herse::policy::load(&config.policy_path).map_err(|d| usage(d.to_string()))?;
            let store = open(&cli).await?;
            let ids = herse::retention::purge(&store, &policy, &herse::runtime::node_name())
                .await
                .map_err(store_err)?;
            println!(
                "purged {} recording(s){}{}",
                ids.len(),
                if ids.is_empty() { "" } else { ": " },
                ids.join(", ")
            );
            Ok(())
        }
        crate::Command::Recordings(c) => {
            let store = open(&cli).await?;
            crate::recordings::run(&store, cli.json, c).await
        }
    }
}

async fn users(cli: &Cli, c: &UsersCmd) -> Result<(), Failure> {
    let store = open(cli).await?;
    let op = operator();
    match c {
        UsersCmd::Add { .. }
        | UsersCmd::List
        | UsersCmd::Show { .. }
        | UsersCmd::Suspend { .. }
        | UsersCmd::Resume { .. } => return remote_capable(cli).await,
        UsersCmd::Totp(t) => return crate::mfa::totp(cli, t).await,
        UsersCmd::Unlock { name } => {
            let u = user_name(name)?;
            store.reset_login_failures(&u).await.map_err(store_err)?;
            if !store.reset_mfa_failures(&u).await.map_err(store_err)? {
                return Err(Failure {
                    code: 3,
                    message: format!("user {u} not found"),
                });
            }
            store
                .audit(&AuditEvent::new("mfa.unlock", Severity::Info, format!("by {op}")).user(&u))
                .await?;
            println!("user {u}: second factor and portal login unlocked");
        }
        UsersCmd::RecoveryCodes { name } => {
            let u = user_name(name)?;
            let codes = herse::mfa::new_recovery_codes();
            let hashes: Vec<String> = codes.iter().map(|c| herse::mfa::recovery_hash(&u, c)).collect();
            store.set_recovery_codes(&u, &hashes).await.map_err(store_err)?;
            store
                .audit(
                    &AuditEvent::new(
                        "mfa.recovery_codes",
                        Severity::Info,
                        format!("{} new recovery codes by {op}", codes.len()),
                    )
                    .user(&u),
                )
                .await?;
            if cli.json {
                let list: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
                println!("{}", serde_json::json!({ "user": u.as_str(), "recovery_codes": list }));
            } else {
                for c in &codes {
                    println!("{}", c.as_str());
                }
            }
            eprintln!("hersectl: shown once, stored hashed; earlier codes of {u} no longer work");
        }
        UsersCmd::Password { name } => {
            let u = user_name(name)?;
            let config = load_config(cli)?;
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut line)?;
            let pw = line.trim_end_matches(['\n', '\r']);
            if let Err(reason) = config.password_policy.check(u.as_str(), pw) {
                return Err(Failure {
                    code: 1,
                    message: format!("password refused: {reason}"),
                });
            }
            let hash = herse::web::password::hash(pw).map_err(Failure::from)?;
            store.set_password(&u, &hash).await.map_err(store_err)?;
            store
                .audit(&AuditEvent::new("password.set", Severity::Info, format!("by {op}")).user(&u))
                .await?;
            println!("password set for {u}");
        }
        UsersCmd::Remove { name } => {
            let u = user_name(name)?;
            store.remove_user(&u).await.map_err(store_err)?;
            store
                .audit(&AuditEvent::new("user.remove", Severity::Warning, format!("by {op}")).user(&u))
                .await?;
            println!("user {u} removed");
        }
    }
    Ok(())
}

async fn keys(cli: &Cli, c: &KeysCmd) -> Result<(), Failure> {
    let store = open(cli).await?;
    let op = operator();
    match c {
        KeysCmd::Add { user, file } => {
            let u = user_name(user)?;
            let k = read_key(file)?;
            let fp = store.add_key(&u, &k).await.map_err(store_err)?;
            store
                .audit(&AuditEvent::new("key.add", Severity::Info, format!("{fp} by {op}")).user(&u))
                .await?;
            println!("{fp}");
        }
        KeysCmd::Remove { user, fingerprint } => {
            let u = user_name(user)?;
            store.remove_key(&u, fingerprint).await.map_err(store_err)?;
            store
                .audit(&AuditEvent::new("key.remove", Severity::Info, format!("{fingerprint} by {op}")).user(&u))
                .await?;
            println!("key {fingerprint} removed from {u}");
        }
        KeysCmd::List { user } => {
            let u = user_name(user)?;
            let keys = store.keys_of(&u).await.map_err(store_err)?;
            output::table(cli.json, &keys, &["FINGERPRINT", "COMMENT", "ADDED"], |k| {
                vec![k.fingerprint.clone(), k.comment.clone(), output::time(k.added_at)]
            });
        }
    }
    Ok(())
}

async fn roles(cli: &Cli, c: &RolesCmd) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let policy = herse::policy::load(&config.policy_path).map_err(|d| usage(d.to_string()))?;
    let store = open(cli).await?;
    let op = operator();
    match c {
        RolesCmd::Bind { user, role } => {
            let u = user_name(user)?;
            let r = RoleName::parse(role).map_err(|e| usage(e.to_string()))?;
            if !policy.has_role(&r) {
                let known: Vec<_> = policy
                    .roles
                    .keys()
                    .chain(policy.duties.keys())
                    .map(|r| r.to_string())
                    .collect();
                return Err(usage(format!(
                    "role {r} is not defined in the policy (roles: {})",
                    known.join(", ")
                )));
            }
            store.bind_role(&u, &r).await.map_err(store_err)?;
            store
                .audit(&AuditEvent::new("role.bind", Severity::Info, format!("{r} by {op}")).user(&u))
                .await?;
            println!("{u} now holds role {r}");
        }
        RolesCmd::Unbind { user, role } => {
            let u = user_name(user)?;
            let r = RoleName::parse(role).map_err(|e| usage(e.to_string()))?;
            store.unbind_role(&u, &r).await.map_err(store_err)?;
            store
                .audit(&AuditEvent::new("role.unbind", Severity::Info, format!("{r} by {op}")).user(&u))
                .await?;
            println!("{u} no longer holds role {r}");
        }
    }
    Ok(())
}

async fn sessions(cli: &Cli, c: &SessionsCmd) -> Result<(), Failure> {
    let store = open(cli).await?;
    match c {
        SessionsCmd::List { .. } | SessionsCmd::Kill { .. } => remote_capable(cli).await,
        SessionsCmd::Watch { id, from_start } => crate::recordings::watch(&store, id, *from_start).await,
    }
}

async fn targets(cli: &Cli, c: &TargetsCmd) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let policy = herse::policy::load(&config.policy_path).map_err(|d| usage(d.to_string()))?;
    match c {
        TargetsCmd::List => {
            let list: Vec<_> = policy
                .targets
                .values()
                .map(|t| serde_json::json!({"name": t.name, "tier": t.tier.to_string(), "address": format!("{}:{}", t.host, t.port),
                    "host_key": match &t.host_key { herse::policy::HostKeyCheck::Pinned(_) => "pinned", herse::policy::HostKeyCheck::Ca { .. } => "host CA" }}))
                .collect();
            output::table(cli.json, &list, &["NAME", "TIER", "ADDRESS", "HOST KEY"], |v| {
                ["name", "tier", "address", "host_key"]
                    .iter()
                    .map(|k| v[k].as_str().unwrap_or("").to_owned())
                    .collect()
            });
        }
        TargetsCmd::Check { name } => {
            let n = TargetName::parse(name).map_err(|e| usage(e.to_string()))?;
            let t = policy.target(&n).ok_or_else(|| Failure {
                code: 3,
                message: format!("target {n} is not in the policy"),
            })?;
            let report = herse::upstream::probe(t, Duration::from_secs(10)).await;
            output::object(cli.json, &report);
            if !report.host_key_ok {
                return Err(Failure {
                    code: 1,
                    message: format!("target {n}: {}", report.detail),
                });
            }
        }
    }
    Ok(())
}

async fn audit(cli: &Cli, c: &AuditCmd) -> Result<(), Failure> {
    match c {
        AuditCmd::List { filter, limit } => crate::audit::list(cli, filter, *limit).await,
        AuditCmd::Follow { filter } => crate::audit::follow(cli, filter).await,
        AuditCmd::Verify { public_key } => crate::audit::verify(cli, public_key.as_deref()).await,
    }
}
