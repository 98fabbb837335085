//! The commands, in local mode: each opens the gateway's database from its configuration.

use std::time::{Duration, Instant};

use clap::Subcommand;
use herse::config::GatewayConfig;
use herse::ident::UserName;
use herse::store::{Store, StoreError};
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
    /// End a live session; returns once the gateway has cut its client (its recording's
    /// seal may still be running).
    Kill { id: String },
    /// Show a live session's terminal in real time, read-only (from now, or --from-start).
    Watch {
        id: String,
        #[arg(long)]
        from_start: bool,
    },
}

#[derive(Subcommand)]
pub enum NodesCmd {
    /// Every node that has run against this database: when it last reported, its live
    /// sessions, and whether another node presumed it stopped.
    List,
    /// Forget a node taken out of service. Refused while it has open sessions or has
    /// reported within cluster.node_timeout (a node still running adds itself back).
    Remove {
        /// The node's name, as `nodes list` shows it.
        name: String,
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
        /// A copy of a node's witness file (DATA_DIR/audit_witness), checked besides the
        /// gateway's own: the event it names must still be on the chain with its hash.
        /// Repeat for each node; use it after a restore or from another host.
        #[arg(long, value_name = "FILE")]
        witness: Vec<std::path::PathBuf>,
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
            "`hersectl {what}` runs only in local mode on the gateway host (pass --config or --local); \
             people enrol their own authenticator at the portal (/totp)"
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
    // A broken policy file must not lock the operator out of recovery: calls that need
    // the policy report why it does not load; the rest run.
    let policy = herse::policy::load(&config.policy_path).map_err(|d| d.to_string());
    let store = open(cli).await?;
    // Only the calls that store a secret, or purge, read the master key (and need the
    // right to).
    let master =
        || herse::secrets::MasterKey::load(&herse::secrets::MasterKeySource::resolve(None, &config.master_key_file));
    let user_secrets = match call {
        herse::control::Call::UsersRecoveryCodes { .. } => {
            Some(herse::keys::user_secrets_key(&store, &master()?).await?)
        }
        _ => None,
    };
    // A purge verifies recordings and the log with the key sealed under the master key,
    // not with the database's copy of its public half.
    let retention = match call {
        herse::control::Call::RecordingsPurge => Some(herse::retention::Retention::new(
            herse::keys::audit_verifying_key(&store, &master()?).await?,
            herse::audit_log::Witness::in_dir(&config.data_dir),
        )),
        _ => None,
    };
    // Only the audit key signs the release of a legal hold.
    let audit_key = match call {
        herse::control::Call::RecordingsHold { release: true, .. } => {
            Some(herse::keys::audit_signing_key(&store, &master()?).await?)
        }
        _ => None,
    };
    let ctx = herse::control::Ctx {
        store: &store,
        policy: policy.as_ref().map_err(String::as_str),
        config: &config,
        identity_files: &cli.identity,
        user_secrets: user_secrets.as_ref(),
        retention: retention.as_ref(),
        audit_key: audit_key.as_ref(),
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

/// Print a call's answer: its `message` (or the object) for people, JSON with --json.
pub(crate) fn print_message(json: bool, v: &serde_json::Value) {
    if json {
        output::object(true, v);
    } else if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
        println!("{m}");
    } else {
        output::object(false, v);
    }
}

/// The password for `users password`, one line of standard input.
fn read_password() -> Result<herse::control::Secret, Failure> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().read_line(&mut line)?;
    Ok(herse::control::Secret::new(line.trim_end_matches(['\n', '\r'])))
}

/// The call a command stands for, when it is one call whose answer is a message or an
/// object (the rest build their calls where they render them).
fn simple_call(c: &crate::Command) -> Result<Option<herse::control::Call>, Failure> {
    use crate::Command as C;
    use herse::control::Call;
    Ok(Some(match c {
        C::Users(UsersCmd::Add { name, key }) => Call::UsersAdd {
            name: name.clone(),
            // The key file is read here, so remote callers send its contents.
            key: key
                .as_deref()
                .map(read_key)
                .transpose()?
                .map(|k| k.to_openssh().unwrap_or_default()),
        },
        C::Users(UsersCmd::Show { name }) => Call::UsersShow { name: name.clone() },
        C::Users(UsersCmd::Suspend { name, reason, until }) => Call::UsersSuspend {
            name: name.clone(),
            reason: reason.clone(),
            until: until.as_deref().map(parse_until).transpose()?,
        },
        C::Users(UsersCmd::Resume { name }) => Call::UsersResume { name: name.clone() },
        C::Users(UsersCmd::Remove { name }) => Call::UsersRemove { name: name.clone() },
        C::Users(UsersCmd::Unlock { name }) => Call::UsersUnlock { name: name.clone() },
        C::Users(UsersCmd::Password { name }) => Call::UsersPassword {
            name: name.clone(),
            password: read_password()?,
        },
        C::Users(UsersCmd::Totp(crate::mfa::TotpCmd::Remove { name })) => Call::UsersTotpRemove { name: name.clone() },
        C::Keys(KeysCmd::Add { user, file }) => Call::KeysAdd {
            user: user.clone(),
            key: read_key(file)?.to_openssh().map_err(|e| usage(e.to_string()))?,
        },
        C::Keys(KeysCmd::Remove { user, fingerprint }) => Call::KeysRemove {
            user: user.clone(),
            fingerprint: fingerprint.clone(),
        },
        C::Roles(RolesCmd::Bind { user, role }) => Call::RolesBind {
            user: user.clone(),
            role: role.clone(),
        },
        C::Roles(RolesCmd::Unbind { user, role }) => Call::RolesUnbind {
            user: user.clone(),
            role: role.clone(),
        },
        C::Sessions(SessionsCmd::Kill { id }) => Call::SessionsKill { id: id.clone() },
        C::Nodes(NodesCmd::Remove { name }) => Call::NodesRemove { name: name.clone() },
        _ => return Ok(None),
    }))
}

/// Commands that run through the control API, locally or remotely.
async fn control(cli: &Cli) -> Result<(), Failure> {
    use herse::control::Call;
    if let Some(call) = simple_call(&cli.command)? {
        let v = execute(cli, &call).await?;
        if let crate::Command::Sessions(SessionsCmd::Kill { id }) = &cli.command {
            return wait_ended(cli, id).await;
        }
        print_message(cli.json, &v);
        return Ok(());
    }
    match &cli.command {
        crate::Command::Users(UsersCmd::List) => {
            let list: Vec<herse::store::UserRow> = parse(execute(cli, &Call::UsersList).await?)?;
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
        crate::Command::Users(UsersCmd::RecoveryCodes { name }) => {
            let v = execute(cli, &Call::UsersRecoveryCodes { name: name.clone() }).await?;
            if cli.json {
                println!("{v}");
            } else {
                for c in v["recovery_codes"].as_array().into_iter().flatten() {
                    println!("{}", c.as_str().unwrap_or_default());
                }
            }
            let u = v["user"].as_str().unwrap_or(name);
            eprintln!("hersectl: shown once, stored hashed; earlier codes of {u} no longer work");
        }
        crate::Command::Keys(KeysCmd::List { user }) => {
            let keys: Vec<herse::store::KeyRow> = parse(execute(cli, &Call::KeysList { user: user.clone() }).await?)?;
            output::table(cli.json, &keys, &["FINGERPRINT", "COMMENT", "ADDED"], |k| {
                vec![k.fingerprint.clone(), k.comment.clone(), output::time(k.added_at)]
            });
        }
        crate::Command::Sessions(SessionsCmd::List { all, limit }) => {
            let call = Call::SessionsList {
                live: !all,
                limit: *limit,
                after: None,
            };
            let list: Vec<herse::store::SessionRow> = parse(execute(cli, &call).await?)?;
            output::table(
                cli.json,
                &list,
                &[
                    "ID", "USER", "TARGET", "LOGIN", "CLIENT", "NODE", "STARTED", "ENDED", "GRANT",
                ],
                |s| {
                    vec![
                        s.id.clone(),
                        s.user.clone(),
                        s.target.clone(),
                        s.login.clone(),
                        s.client_addr.clone(),
                        s.node.clone(),
                        output::time(s.started_at),
                        s.ended_at.map(output::time).unwrap_or_else(|| "live".into()),
                        s.grant.clone().unwrap_or_default(),
                    ]
                },
            );
        }
        crate::Command::Nodes(NodesCmd::List) => {
            let list: Vec<herse::store::NodeRow> = parse(execute(cli, &Call::NodesList).await?)?;
            output::table(
                cli.json,
                &list,
                &["NODE", "STARTED", "LAST SEEN", "LIVE SESSIONS", "PRESUMED STOPPED"],
                |n| {
                    vec![
                        n.name.clone(),
                        output::time(n.started_at),
                        output::time(n.seen_at),
                        n.live_sessions.to_string(),
                        n.presumed_stopped_at.map(output::time).unwrap_or_default(),
                    ]
                },
            );
        }
        crate::Command::Targets(TargetsCmd::List) => {
            let list: Vec<serde_json::Value> = parse(execute(cli, &Call::TargetsList).await?)?;
            output::table(cli.json, &list, &["NAME", "TIER", "ADDRESS", "HOST KEY"], |v| {
                ["name", "tier", "address", "host_key"]
                    .iter()
                    .map(|k| v[k].as_str().unwrap_or("").to_owned())
                    .collect()
            });
        }
        crate::Command::Targets(TargetsCmd::Check { name }) => {
            let report: herse::upstream::ProbeReport =
                parse(execute(cli, &Call::TargetsCheck { name: name.clone() }).await?)?;
            output::object(cli.json, &report);
            if !report.host_key_ok {
                return Err(Failure {
                    code: 1,
                    message: format!("target {name}: {}", report.detail),
                });
            }
        }
        _ => return Err(usage("not a control command")),
    }
    Ok(())
}

/// After a kill: wait until the gateway has cut the session's client (any node, within
/// a second), which it marks on the row before sealing the recording.
async fn wait_ended(cli: &Cli, id: &str) -> Result<(), Failure> {
    use herse::control::Call;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let row: Option<herse::store::SessionRow> =
            parse(execute(cli, &Call::SessionsShow { id: id.to_owned() }).await?)?;
        // Closed: ended, and the seal done or given up. Open with a reason: its client is
        // cut and the recording is being sealed (a hung store holds that up to the
        // gateway's stall limit); the kill has done its part. (No row: purged since.)
        let closed = match row {
            None => true,
            Some(s) if s.ended_at.is_some() => true,
            Some(s) if s.end_reason.is_some() => false,
            Some(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ms = start.elapsed().as_millis();
        if cli.json {
            output::object(
                true,
                &serde_json::json!({ "session": id, "ended_after_ms": ms, "seal_pending": !closed }),
            );
        } else if closed {
            println!("session {id} ended after {ms} ms");
        } else {
            println!("session {id} ended after {ms} ms (its recording is still being sealed)");
        }
        return Ok(());
    }
    Err(Failure {
        code: 1,
        message: format!("kill requested, but session {id} has not ended after 5 s (is its gateway node running?)"),
    })
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        crate::Command::Login { server, ca, user } => crate::remote::login(server, ca, user.as_deref()).await,
        crate::Command::Logout { local } => crate::remote::logout(*local).await,
        crate::Command::Whoami => {
            let v = execute(&cli, &herse::control::Call::Whoami).await?;
            output::object(cli.json, &v);
            Ok(())
        }
        crate::Command::Grants(c) => crate::grants::run(&cli, c).await,
        crate::Command::Audit(c) => audit(&cli, c).await,
        crate::Command::Workstations(c) => crate::workstations::run(&cli, c).await,
        crate::Command::Recordings(c) => crate::recordings::run(&cli, c).await,
        crate::Command::Sessions(SessionsCmd::Watch { id, from_start }) => {
            crate::recordings::watch(&cli, id, *from_start).await
        }
        // Enrolling TOTP shows a secret and waits for its first code; the secret stays in
        // this process between the two, so it runs only here, on the gateway host. People
        // enrol their own authenticator at the portal (/totp).
        crate::Command::Users(UsersCmd::Totp(t @ crate::mfa::TotpCmd::Enroll { .. })) => {
            local_only(&cli, "users totp enroll")?;
            crate::mfa::totp(&cli, t).await
        }
        crate::Command::Users(_)
        | crate::Command::Keys(_)
        | crate::Command::Roles(_)
        | crate::Command::Sessions(_)
        | crate::Command::Nodes(_)
        | crate::Command::Targets(_) => control(&cli).await,
    }
}

async fn audit(cli: &Cli, c: &AuditCmd) -> Result<(), Failure> {
    match c {
        AuditCmd::List { filter, limit } => crate::audit::list(cli, filter, *limit).await,
        AuditCmd::Follow { filter } => crate::audit::follow(cli, filter).await,
        AuditCmd::Verify { public_key, witness } => crate::audit::verify(cli, public_key.as_deref(), witness).await,
    }
}
