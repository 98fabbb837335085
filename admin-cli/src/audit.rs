//! `hersectl audit`: list (table or JSON lines for a SIEM), follow, verify. The queries
//! and the verification are the gateway library's (`herse::audit_log`); this only prints.

use std::io::Write;
use std::time::SystemTime;

use herse::audit_log::{self, AuditLogError};
use herse::store::{AuditFilter, AuditRow, Store};

use crate::commands::{store_err, usage, Failure};
use crate::output;

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

pub async fn list(store: &Store, json: bool, f: &FilterArgs, limit: i64) -> Result<(), Failure> {
    let rows = audit_log::list(store, &f.filter()?, limit).await.map_err(input)?;
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
pub async fn follow(store: &Store, json: bool, f: &FilterArgs) -> Result<(), Failure> {
    let filter = f.filter()?;
    let mut cursor = if filter.since.is_some() {
        0
    } else {
        let backlog = audit_log::list(store, &filter, FOLLOW_BACKLOG).await.map_err(input)?;
        print_rows(&backlog, json)?;
        match backlog.last().and_then(|r| r.seq) {
            Some(s) => s,
            // Nothing matched yet: start after the current head.
            None => store.audit_head().await.map_err(store_err)?.0,
        }
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let page = audit_log::after(store, &filter, cursor, FOLLOW_PAGE)
            .await
            .map_err(input)?;
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

pub async fn verify(store: &Store, json: bool, public_key: Option<&str>) -> Result<(), Failure> {
    let key = match public_key {
        Some(k) => audit_log::public_key_from_arg(k).map_err(input)?,
        None => audit_log::stored_public_key(store).await.map_err(input)?,
    };
    let report = audit_log::verify(store, &key).await.map_err(store_err)?;
    if json {
        output::object(true, &report);
    } else {
        println!("{report}");
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
                r.kind,
                r.severity,
                r.user.as_deref().unwrap_or("-"),
                r.session.as_deref().unwrap_or("-"),
                r.detail
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
