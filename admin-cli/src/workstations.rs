//! `hersectl workstations`: enrol, list, show, revoke and re-key the WireGuard peers.

use clap::Subcommand;
use herse::ident::{UserName, WorkstationName};
use herse::store::{AuditEvent, Severity, Store, WorkstationRow};
use herse::wg::quick::QuickConfig;
use herse::wg::{WgPublicKey, WgSecret};
use zeroize::Zeroizing;

use crate::commands::{load_config, open, operator, store_err, usage, Failure};
use crate::output;
use crate::Cli;

#[derive(Subcommand)]
pub enum WorkstationsCmd {
    /// Enrol a workstation for its owner and print its wg-quick configuration. Without
    /// --public-key a key pair is generated; the private key is shown once, never stored.
    Add {
        name: String,
        #[arg(long)]
        owner: String,
        /// The workstation's own WireGuard public key (base64), if it made one.
        #[arg(long)]
        public_key: Option<String>,
        /// Also print the configuration as a QR code.
        #[arg(long)]
        qr: bool,
    },
    /// Every workstation, with its last handshake and traffic.
    List,
    Show {
        name: String,
    },
    /// Revoke: the peer is removed and its sessions end within a second. Final.
    Revoke {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Give a workstation a new key; the old one stops working at once and for good.
    RotateKey {
        name: String,
        #[arg(long)]
        public_key: Option<String>,
        #[arg(long)]
        qr: bool,
    },
}

fn ws_name(s: &str) -> Result<WorkstationName, Failure> {
    WorkstationName::parse(s).map_err(|e| usage(e.to_string()))
}

fn parse_key(s: &str) -> Result<WgPublicKey, Failure> {
    WgPublicKey::parse(s).map_err(|e| usage(format!("--public-key: {e}")))
}

/// The key to enrol: the one given, or a fresh pair whose private half goes into the
/// printed configuration only.
fn key_pair(given: Option<&str>) -> Result<(WgPublicKey, Option<Zeroizing<String>>), Failure> {
    match given {
        Some(k) => Ok((parse_key(k)?, None)),
        None => {
            let s = WgSecret::generate();
            Ok((s.public(), Some(s.to_base64())))
        }
    }
}

#[derive(serde::Serialize)]
struct Enrolled<'a> {
    workstation: &'a WorkstationRow,
    /// The wg-quick configuration (contains the private key when one was generated).
    config: &'a str,
    private_key_generated: bool,
}

async fn print_config(
    cli: &Cli,
    store: &Store,
    w: &WorkstationRow,
    private: Option<&Zeroizing<String>>,
    qr: bool,
) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let wc = config
        .wireguard
        .as_ref()
        .ok_or_else(|| usage("the gateway configuration has no [wireguard] section"))?;
    let gateway_key = herse::keys::wireguard_public(store).await.map_err(|e| Failure {
        code: 1,
        message: format!("the gateway's WireGuard key is not in the database ({e}); run `herse init` first"),
    })?;
    let text = QuickConfig {
        private_key: private.map(|p| p.as_str()),
        address: w
            .address
            .parse()
            .map_err(|_| Failure::from(format!("stored address {:?} is invalid", w.address)))?,
        gateway_public_key: gateway_key,
        gateway_address: wc.net.gateway,
        endpoint: &wc.endpoint,
        persistent_keepalive: wc.persistent_keepalive,
    }
    .render();
    if cli.json {
        output::object(
            true,
            &Enrolled {
                workstation: w,
                config: &text,
                private_key_generated: private.is_some(),
            },
        );
    } else {
        print!("{}", text.as_str());
        if qr {
            let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| Failure::from(format!("QR code: {e}")))?;
            let art = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            println!("\n{art}");
        }
    }
    if private.is_some() {
        eprintln!(
            "hersectl: the private key above is shown once and stored nowhere: save this as /etc/wireguard/<name>.conf \
             on the workstation (mode 0600)"
        );
    } else {
        eprintln!("hersectl: put the workstation's own private key in the PrivateKey line");
    }
    Ok(())
}

pub async fn run(cli: &Cli, c: &WorkstationsCmd) -> Result<(), Failure> {
    let store = open(cli).await?;
    let op = operator();
    match c {
        WorkstationsCmd::Add {
            name,
            owner,
            public_key,
            qr,
        } => {
            let name = ws_name(name)?;
            let owner = UserName::parse(owner).map_err(|e| usage(e.to_string()))?;
            let config = load_config(cli)?;
            let wc = config
                .wireguard
                .as_ref()
                .ok_or_else(|| usage("the gateway configuration has no [wireguard] section"))?;
            let (public, private) = key_pair(public_key.as_deref())?;
            let w = store
                .add_workstation(&name, &owner, &public, &wc.net, &op)
                .await
                .map_err(store_err)?;
            store
                .audit(
                    &AuditEvent::new(
                        "workstation.add",
                        Severity::Info,
                        format!("{} at {} key {public} by {op}", w.name, w.address),
                    )
                    .user(&owner)
                    .workstation(&name),
                )
                .await?;
            print_config(cli, &store, &w, private.as_ref(), *qr).await?;
        }
        WorkstationsCmd::List => {
            let list = store.workstations().await.map_err(store_err)?;
            output::table(
                cli.json,
                &list,
                &["NAME", "OWNER", "ADDRESS", "STATUS", "LAST HANDSHAKE", "RX", "TX"],
                |w| {
                    vec![
                        w.name.clone(),
                        w.owner.clone(),
                        w.address.clone(),
                        if w.is_revoked() { "revoked" } else { "active" }.to_owned(),
                        w.last_handshake_at.map(output::time).unwrap_or_else(|| "never".into()),
                        bytes(w.rx_bytes),
                        bytes(w.tx_bytes),
                    ]
                },
            );
        }
        WorkstationsCmd::Show { name } => {
            let name = ws_name(name)?;
            let w = store
                .workstation(&name)
                .await
                .map_err(store_err)?
                .ok_or_else(|| Failure {
                    code: 3,
                    message: format!("workstation {name} not found"),
                })?;
            output::object(cli.json, &w);
        }
        WorkstationsCmd::Revoke { name, reason } => {
            let name = ws_name(name)?;
            let changed = store.revoke_workstation(&name, &op, reason).await.map_err(store_err)?;
            if !changed {
                return Err(Failure::from(format!("workstation {name} is already revoked")));
            }
            let w = store.workstation(&name).await.map_err(store_err)?;
            let mut e = AuditEvent::new("workstation.revoke", Severity::Warning, format!("{reason} (by {op})"))
                .workstation(&name);
            if let Some(w) = &w {
                e = e.user(&w.owner);
            }
            store.audit(&e).await?;
            println!("workstation {name} revoked; its peer is removed and its sessions end within a second");
        }
        WorkstationsCmd::RotateKey { name, public_key, qr } => {
            let name = ws_name(name)?;
            let (public, private) = key_pair(public_key.as_deref())?;
            store.rotate_workstation_key(&name, &public).await.map_err(store_err)?;
            let w = store
                .workstation(&name)
                .await
                .map_err(store_err)?
                .ok_or_else(|| Failure::from(format!("workstation {name} vanished")))?;
            store
                .audit(
                    &AuditEvent::new(
                        "workstation.rotate_key",
                        Severity::Warning,
                        format!("new key {public} by {op}"),
                    )
                    .user(&w.owner)
                    .workstation(&name),
                )
                .await?;
            print_config(cli, &store, &w, private.as_ref(), *qr).await?;
        }
    }
    Ok(())
}

fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0)),
        n if n >= 1024.0 * 1024.0 => format!("{:.1} MiB", n / (1024.0 * 1024.0)),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n} B"),
    }
}
