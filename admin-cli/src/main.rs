//! `hersectl`: Herse's administration tool. Local mode runs on the gateway host and
//! reads the same configuration as `herse` (bootstrap and recovery); remote mode, after
//! `hersectl login` from a workstation, sends each command to the gateway's control API,
//! where it runs under the caller's own permissions.
#![forbid(unsafe_code)]

mod audit;
mod commands;
mod export;
mod grants;
mod mfa;
mod output;
mod play;
mod recordings;
mod remote;
mod reread;
mod term_filter;
mod workstations;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hersectl",
    version,
    about = "Administer a Herse gateway",
    after_help = "Exit codes: 0 ok, 1 failed, 2 usage or configuration error, 3 not found, \
                  4 refused (permission or login)."
)]
pub struct Cli {
    /// Gateway configuration file: local mode, on the gateway host (default
    /// /etc/herse/herse.toml). Without it, a saved `hersectl login` means remote mode.
    #[arg(long, short, global = true, env = "HERSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Local mode even when a remote login is saved.
    #[arg(long, global = true)]
    pub local: bool,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// An auditor's age identity file, to read recordings of tiers that encrypt them
    /// (repeatable).
    #[arg(long, global = true)]
    pub identity: Vec<PathBuf>,
    /// Remote mode: seconds to wait for the gateway to answer one call (a gateway that
    /// accepts the connection and then hangs fails the command after this).
    #[arg(long, global = true, env = "HERSECTL_TIMEOUT", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Log in to the gateway's control API from a workstation (password and second
    /// factor); the token is saved with mode 0600 and commands then run remotely.
    Login {
        /// The portal address on the tunnel, e.g. https://10.77.0.1
        #[arg(long)]
        server: String,
        /// The portal's certificate (PEM), trusted for this server only.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        user: Option<String>,
    },
    /// End the saved login: the gateway revokes its token, then the file is removed.
    Logout {
        /// Only forget the token here, without asking the gateway to revoke it (it
        /// then works until it expires, at most an hour).
        #[arg(long)]
        local: bool,
    },
    /// Who the gateway takes you for, and your people roles.
    Whoami,
    /// Time-limited access grants: request, approve, deny, revoke.
    #[command(subcommand)]
    Grants(grants::GrantsCmd),
    /// People who may log in through the gateway.
    #[command(subcommand)]
    Users(commands::UsersCmd),
    /// Users' SSH public keys.
    #[command(subcommand)]
    Keys(commands::KeysCmd),
    /// Bindings of users to policy roles.
    #[command(subcommand)]
    Roles(commands::RolesCmd),
    /// Live and past sessions.
    #[command(subcommand)]
    Sessions(commands::SessionsCmd),
    /// Targets defined in the policy.
    #[command(subcommand)]
    Targets(commands::TargetsCmd),
    /// Gateway nodes sharing the database, and whether each still reports.
    #[command(subcommand)]
    Nodes(commands::NodesCmd),
    /// Enrolled workstations: the WireGuard peers, each bound to its owner.
    #[command(subcommand)]
    Workstations(workstations::WorkstationsCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(commands::AuditCmd),
    /// Session recordings: list, show, verify, export.
    #[command(subcommand)]
    Recordings(recordings::RecordingsCmd),
}

/// Exit codes: 0 success, 1 the operation failed, 2 usage or configuration error,
/// 3 the named object does not exist, 4 refused (permission or login).
fn main() -> ExitCode {
    let cli = Cli::parse();
    recordings::set_identities(cli.identity.clone());
    remote::set_timeout(std::time::Duration::from_secs(cli.timeout));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HERSE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hersectl: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Messages quote recordings, the database and the gateway's answers: nothing
            // in them may act on the terminal.
            eprintln!("hersectl: {}", output::clean_lines(&e.message));
            ExitCode::from(e.code)
        }
    }
}
