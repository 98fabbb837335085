//! `hersectl audit`: list (table or JSON lines for a SIEM), follow, verify. The queries
//! and the verification are the gateway library's (`herse::audit_log`); this only prints.

use std::io::Write;
use std::time::SystemTime;

use herse::audit_log::{self, AuditLogError, VerifyReport};
use herse::control::{Call, WitnessCopy};
use herse::store::{AuditFilter, AuditRow};

use crate::commands::{execute, store_err, usage, Failure};
use crate::output;
use crate::Cli;

/// Events shown before following when no --since is given (like `tail -f`).
const FOLLOW_BACKLOG: i64 = 10;
/// Events read per poll while following.
const FOLLOW_PAGE: i64 = 500;

#[derive(clap::Args)]
pub struct FilterArgs {
    /// At or after this time: RFC 3339 (2025-01-31T12:00:00Z) or a duration ago (1h, 30m).
    #[arg(long)]
    since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only events about this user.
    #[arg(long)]
    user: Option<String>,
    /// Only events of this kind (e.g. login.failure).
    #[arg(long)]
    kind: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<AuditFilter, Failure> {
        let now = SystemTime::now();
        let time = |s: &Option<String>| s.as_deref().map(|s| audit_log::parse_time(s, now)).transpose();
        Ok(AuditFilter {
            since: time(&self.since).map_err(input)?,
            until: time(&self.until).map_err(input)?,
            user: self.user.clone(),
            kind: self.kind.clone(),
        })
    }
}

fn input(e: AuditLogError) -> Failure {
    match e {
        AuditLogError::Store(e) => store_err(e),
        AuditLogError::Input(m) => usage(m),
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::from(format!("unexpected answer: {e}")))
}

async fn rows(cli: &Cli, call: Call) -> Result<Vec<AuditRow>, Failure> {
    parse(execute(cli, &call).await?)
}

pub async fn list(cli: &Cli, f: &FilterArgs, limit: i64) -> Result<(), Failure> {
    let json = cli.json;
    let rows = rows(
        cli,
        Call::AuditList {
            filter: f.filter()?,
            limit,
        },
    )
    .await?;
    if json {
        for r in &rows {
            println!("{}", json_line(r));
        }
        return Ok(());
    }
    output::table(
        false,
        &rows,
        &["SEQ", "TIME", "KIND", "SEVERITY", "USER", "SESSION", "DETAIL"],
        |r| {
            vec![
                r.seq.map(|s| s.to_string()).unwrap_or_default(),
                output::time(r.at),
                r.kind.clone(),
                r.severity.clone(),
                r.user.clone().unwrap_or_default(),
                r.session.clone().unwrap_or_default(),
                r.detail.clone(),
            ]
        },
    );
    Ok(())
}

/// Existing events, then new ones as they are appended, until Ctrl-C (exit 0).
pub async fn follow(cli: &Cli, f: &FilterArgs) -> Result<(), Failure> {
    let json = cli.json;
    let filter = f.filter()?;
    let mut cursor = if filter.since.is_some() {
        0
    } else {
        let backlog = rows(
            cli,
            Call::AuditList {
                filter: filter.clone(),
                limit: FOLLOW_BACKLOG,
            },
        )
        .await?;
        print_rows(&backlog, json)?;
        match backlog.last().and_then(|r| r.seq) {
            Some(s) => s,
            // Nothing matched yet: start after the current head.
            None => parse(execute(cli, &Call::AuditHead).await?)?,
        }
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let page = rows(
            cli,
            Call::AuditAfter {
                filter: filter.clone(),
                after: cursor,
                limit: FOLLOW_PAGE,
            },
        )
        .await?;
        print_rows(&page, json)?;
        if let Some(s) = page.last().and_then(|r| r.seq) {
            cursor = s;
        }
        if page.len() as i64 == FOLLOW_PAGE {
            continue;
        }
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tokio::time::sleep(audit_log::FOLLOW_POLL) => {}
        }
    }
}

pub async fn verify(cli: &Cli, public_key: Option<&str>, witness_files: &[std::path::PathBuf]) -> Result<(), Failure> {
    let json = cli.json;
    // Witness copies are read here too, bounded: the gateway reads no file for a caller.
    let mut witnesses = Vec::with_capacity(witness_files.len());
    for path in witness_files {
        witnesses.push(WitnessCopy {
            name: path.display().to_string(),
            line: read_witness_copy(path)?,
        });
    }
    // A key file is read here, so a remote caller checks with their own copy.
    let public_key = match public_key {
        Some(k) => Some(hex::encode(
            audit_log::public_key_from_arg(k).map_err(input)?.as_bytes(),
        )),
        None => None,
    };
    let report: VerifyReport = parse(execute(cli, &Call::AuditVerify { public_key, witnesses }).await?)?;
    if json {
        output::object(true, &report);
    } else {
        println!("{}", output::clean_lines(&report.to_string()));
    }
    match report.problems.first() {
        None => Ok(()),
        Some(p) => Err(Failure {
            code: 1,
            message: format!(
                "audit log is NOT whole: {p}{}",
                match report.problems.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                }
            ),
        }),
    }
}

/// A witness file's text, or a usage error naming it. A file longer than a witness line
/// is read only that far and sent as it is: the verification reports it unusable.
fn read_witness_copy(path: &std::path::Path) -> Result<String, Failure> {
    match audit_log::read_witness_file(path) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(usage(format!("--witness {}: no such file", path.display()))),
        Err(e) => Err(usage(format!("--witness: {e}"))),
    }
}

fn json_line(r: &AuditRow) -> String {
    serde_json::to_string(r).unwrap_or_else(|_| "{}".into())
}

fn print_rows(rows: &[AuditRow], json: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    for r in rows {
        if json {
            writeln!(out, "{}", json_line(r))?;
        } else {
            writeln!(
                out,
                "{:>6}  {}  {}  {}  {}  {}  {}",
                r.seq.unwrap_or(0),
                output::time(r.at),
                output::clean(&r.kind),
                output::clean(&r.severity),
                output::clean(r.user.as_deref().unwrap_or("-")),
                output::clean(r.session.as_deref().unwrap_or("-")),
                output::clean(&r.detail)
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
