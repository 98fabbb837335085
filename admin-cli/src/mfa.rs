//! `hersectl users totp`: enrol (confirmed with a first code) and remove TOTP.

use std::io::BufRead;

use clap::Subcommand;
use herse::mfa::Enrolment;
use herse::secrets::{MasterKey, MasterKeySource};
use herse::store::{AuditEvent, Severity};

use crate::commands::{load_config, open, operator, store_err, user_name, Failure};
use crate::Cli;

#[derive(Subcommand)]
pub enum TotpCmd {
    /// Print an otpauth URI (and with --qr a QR code) for the user's authenticator app,
    /// then read the first code it shows from standard input to confirm.
    Enroll {
        name: String,
        /// Replace an existing TOTP secret.
        #[arg(long)]
        replace: bool,
        #[arg(long)]
        qr: bool,
    },
    /// Remove the user's TOTP secret (they cannot log in until they enrol again).
    Remove { name: String },
}

pub async fn totp(cli: &Cli, c: &TotpCmd) -> Result<(), Failure> {
    let store = open(cli).await?;
    let op = operator();
    match c {
        TotpCmd::Enroll { name, replace, qr } => {
            let u = user_name(name)?;
            if store.user(&u).await.map_err(store_err)?.is_none() {
                return Err(Failure {
                    code: 3,
                    message: format!("user {u} not found"),
                });
            }
            if !replace && store.totp(&u).await.map_err(store_err)?.is_some() {
                return Err(Failure::from(format!(
                    "{u} already has TOTP; use --replace to enrol a new secret"
                )));
            }
            // The secret is sealed with the gateway's user-secrets key, which only the
            // master key opens: local mode on the gateway host.
            let config = load_config(cli)?;
            let master = MasterKey::load(&MasterKeySource::resolve(None, &config.master_key_file))?;
            let key = herse::keys::user_secrets_key(&store, &master).await?;
            drop(master);
            let e = Enrolment::new(&u).map_err(Failure::from)?;
            let uri = e.uri();
            println!("{}", uri.as_str());
            if *qr {
                if let Ok(code) = qrcode::QrCode::new(uri.as_bytes()) {
                    let art = code
                        .render::<qrcode::render::unicode::Dense1x2>()
                        .dark_color(qrcode::render::unicode::Dense1x2::Light)
                        .light_color(qrcode::render::unicode::Dense1x2::Dark)
                        .build();
                    println!("{art}");
                }
            }
            eprint!("code shown by the authenticator: ");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            e.confirm(&store, &key, &line, *replace).await.map_err(Failure::from)?;
            store
                .audit(&AuditEvent::new("mfa.enroll", Severity::Info, format!("TOTP by {op}")).user(&u))
                .await?;
            eprintln!("TOTP enrolled for {u}");
        }
        // Carried by the control API (commands::control), locally and remotely.
        TotpCmd::Remove { .. } => return Err(crate::commands::usage("internal: totp remove is a control call")),
    }
    Ok(())
}
