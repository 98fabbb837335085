//! `hersectl workstations`: enrol, list, show, revoke and re-key the WireGuard peers.
//! The work is the gateway library's (`herse::admin`); this builds the call and renders.

use clap::Subcommand;
use herse::control::Call;
use herse::store::WorkstationRow;

use crate::commands::{execute, Failure};
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

/// Print an enrolment answer (`{workstation, config, private_key_generated}`): the
/// wg-quick file, and with `--qr` its QR code; JSON as is.
fn print_config(cli: &Cli, v: &serde_json::Value, qr: bool) -> Result<(), Failure> {
    let text = v["config"].as_str().unwrap_or_default();
    let private = v["private_key_generated"].as_bool().unwrap_or(false);
    if cli.json {
        output::object(true, v);
    } else {
        print!("{text}");
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
    if private {
        eprintln!(
            "hersectl: the private key above is shown once and stored nowhere: save this as /etc/wireguard/<name>.conf \
             on the workstation (mode 0600)"
        );
    } else {
        eprintln!("hersectl: put the workstation's own private key in the PrivateKey line");
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::from(format!("unexpected answer: {e}")))
}

/// Each command is one control call (locally or remotely); this only renders.
pub async fn run(cli: &Cli, c: &WorkstationsCmd) -> Result<(), Failure> {
    match c {
        WorkstationsCmd::Add {
            name,
            owner,
            public_key,
            qr,
        } => {
            let call = Call::WorkstationsAdd {
                name: name.clone(),
                owner: owner.clone(),
                public_key: public_key.clone(),
            };
            print_config(cli, &execute(cli, &call).await?, *qr)?;
        }
        WorkstationsCmd::List => {
            let list: Vec<WorkstationRow> = parse(execute(cli, &Call::WorkstationsList).await?)?;
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
            let v = execute(cli, &Call::WorkstationsShow { name: name.clone() }).await?;
            output::object(cli.json, &v);
        }
        WorkstationsCmd::Revoke { name, reason } => {
            let call = Call::WorkstationsRevoke {
                name: name.clone(),
                reason: reason.clone(),
            };
            crate::commands::print_message(cli.json, &execute(cli, &call).await?);
        }
        WorkstationsCmd::RotateKey { name, public_key, qr } => {
            let call = Call::WorkstationsRotateKey {
                name: name.clone(),
                public_key: public_key.clone(),
            };
            print_config(cli, &execute(cli, &call).await?, *qr)?;
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
