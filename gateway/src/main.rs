//! `herse`: the gateway daemon.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::util::SubscriberInitExt;

/// mimalloc instead of glibc's malloc: the relay allocates and frees packet-sized buffers
/// continuously, and glibc trims its per-thread arenas back to the kernel after them, so
/// every packet faulted fresh zero pages in (36 859 page faults for 512 MiB relayed, 12% of
/// the gateway's CPU). mimalloc keeps its pages (2 400 faults).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "herse",
    version,
    about = "Herse bastion gateway: the only door into production SSH"
)]
struct Cli {
    /// Gateway configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "HERSE_CONFIG",
        default_value = "/etc/herse/herse.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory, database, master key and gateway keys.
    Init {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and the policy; print every error with file:line.
    CheckConfig {
        #[arg(long)]
        json: bool,
    },
    /// Run the gateway. SIGHUP reloads the policy; SIGTERM drains and stops.
    Serve {
        /// Read the master key from this inherited file descriptor.
        #[arg(long)]
        master_key_fd: Option<u32>,
    },
}

/// What the gateway logs unless `HERSE_LOG` says otherwise. boringtun's own messages
/// are WireGuard's normal timers ("HANDSHAKE(REKEY_TIMEOUT)" every 5 s for 90 s while a
/// workstation is offline, then "CONNECTION_EXPIRED") without saying which peer; the
/// tunnel's events that matter are logged by `wg::engine` with the workstation's name.
const DEFAULT_LOG: &str = "info,russh=warn,boringtun=off";

/// Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.
fn main() -> ExitCode {
    let cli = Cli::parse();
    // One event, one line: names and commands clients chose are escaped, not written
    // raw (see `log_lines`).
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERSE_LOG").unwrap_or_else(|_| DEFAULT_LOG.into());
    if herse::log_lines::subscriber(filter, std::io::stderr)
        .try_init()
        .is_err()
    {
        eprintln!("herse: cannot install the log subscriber");
        return ExitCode::from(1);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herse: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { json } => check_config(&cli.config, json),
        Command::Init { json } => {
            let config = match herse::config::GatewayConfig::load(&cli.config) {
                Ok(c) => c,
                Err(d) => {
                    eprintln!("{d}");
                    return ExitCode::from(2);
                }
            };
            match herse::init::init(&config).await {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    } else {
                        print_init(&report);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("herse init: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Serve { master_key_fd } => {
            let gw = match herse::runtime::open_gateway(&cli.config, master_key_fd).await {
                Ok(gw) => gw,
                Err(e) => {
                    eprintln!("herse serve: {e:#}");
                    return ExitCode::from(2);
                }
            };
            match herse::serve::run(gw).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("herse serve: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn check_config(path: &std::path::Path, json: bool) -> ExitCode {
    let mut errors = Vec::new();
    match herse::config::GatewayConfig::load(path) {
        Ok(config) => {
            if let Err(d) = herse::policy::load(&config.policy_path) {
                errors.extend(d.0);
            }
        }
        Err(d) => errors.extend(d.0),
    }
    if json {
        let list: Vec<_> = errors
            .iter()
            .map(|d| serde_json::json!({"file": d.file, "line": d.line, "column": d.column, "message": d.message}))
            .collect();
        println!("{}", serde_json::json!({"ok": errors.is_empty(), "errors": list}));
    } else if errors.is_empty() {
        println!("configuration and policy are valid");
    } else {
        for e in &errors {
            eprintln!("{e}");
        }
        eprintln!("{} error(s)", errors.len());
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn print_init(r: &herse::init::InitReport) {
    println!("Herse initialised in {}", r.data_dir);
    println!(
        "Master key written to {} (keep it off this disk's backups; mode 0600)",
        r.master_key_file
    );
    println!();
    println!("User CA (targets trust it for logins):\n  {}", r.user_ca);
    println!(
        "Host CA (users trust it for targets reached through Herse):\n  {}",
        r.host_ca
    );
    println!("Gateway host key:\n  {}", r.host_key);
    println!("Audit public key (ed25519, hex): {}", r.audit_public_key);
    println!("WireGuard public key: {}", r.wireguard_public_key);
    if let Some(c) = &r.portal_certificate {
        println!("Portal certificate (self-signed; trust it on workstations or set web.cert): {c}");
    }
    println!();
    println!("On each target, in sshd_config:");
    for l in &r.sshd_config {
        println!("  {l}");
    }
    println!("In each user's ~/.ssh/known_hosts:");
    for l in &r.known_hosts {
        println!("  {l}");
    }
}

#[cfg(test)]
mod tests {
    use super::DEFAULT_LOG;
    use tracing::Level;

    #[test]
    fn the_default_log_keeps_our_events_and_drops_boringtuns_timers() {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(DEFAULT_LOG))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(target: "herse::wg::engine", Level::INFO));
            assert!(!tracing::enabled!(target: "herse::wg::engine", Level::DEBUG));
            assert!(tracing::enabled!(target: "russh::server", Level::WARN));
            assert!(!tracing::enabled!(target: "russh::server", Level::INFO));
            assert!(!tracing::enabled!(target: "boringtun::noise::timers", Level::ERROR));
        });
    }
}
