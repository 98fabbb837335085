//! `hersectl grants`: ask for, decide on and revoke time-limited access grants.

use clap::Subcommand;
use herse::control::Call;
use herse::grants::{GrantRequest, Listing};
use herse::store::GrantRow;

use crate::commands::{usage, Failure};
use crate::output;
use crate::Cli;

#[derive(Subcommand)]
pub enum GrantsCmd {
    /// Ask for access to a tier (optionally one target and one login) for a while.
    Request {
        /// The tier (production segment) to open.
        #[arg(long)]
        tier: String,
        /// Only this target of the tier.
        #[arg(long)]
        target: Option<String>,
        /// Only this login on the targets.
        #[arg(long)]
        login: Option<String>,
        /// How long, e.g. 2h or 30m (at most the tier's maximum).
        #[arg(long)]
        duration: String,
        /// Why (a ticket, an incident): shown to approvers and kept in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Grants: by default everything you may see.
    List {
        /// Requests waiting for your decision.
        #[arg(long, conflicts_with = "mine")]
        pending: bool,
        /// Your own requests and grants.
        #[arg(long)]
        mine: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    Show {
        id: String,
    },
    /// Approve a pending request (a manager of its tier; never your own).
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Deny a pending request.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// End a grant now: its sessions are closed within a second.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

fn rows(v: serde_json::Value) -> Result<Vec<GrantRow>, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::from(format!("unexpected answer: {e}")))
}

fn one(v: serde_json::Value) -> Result<GrantRow, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::from(format!("unexpected answer: {e}")))
}

fn status_line(g: &GrantRow) -> String {
    match g.status {
        herse::store::GrantStatus::Active => format!(
            "grant {} is active until {}",
            g.id,
            output::time(g.expires_at.unwrap_or_default())
        ),
        s => {
            let approvals: Vec<_> = g.approvals.iter().map(|a| a.approver.as_str()).collect();
            if approvals.is_empty() {
                format!("grant {} is {}", g.id, s.as_str())
            } else {
                format!(
                    "grant {} is {} (approved by {})",
                    g.id,
                    s.as_str(),
                    approvals.join(", ")
                )
            }
        }
    }
}

pub async fn run(cli: &Cli, c: &GrantsCmd) -> Result<(), Failure> {
    let call = match c {
        GrantsCmd::Request {
            tier,
            target,
            login,
            duration,
            reason,
        } => {
            let d = humantime::parse_duration(duration)
                .map_err(|e| usage(format!("--duration {duration:?}: {e} (write e.g. 2h or 30m)")))?;
            Call::GrantsRequest(GrantRequest {
                tier: tier.clone(),
                target: target.clone(),
                login: login.clone(),
                duration_secs: d.as_secs(),
                reason: reason.clone(),
            })
        }
        GrantsCmd::List { pending, mine, limit } => Call::GrantsList {
            listing: if *pending {
                Listing::Pending
            } else if *mine {
                Listing::Mine
            } else {
                Listing::All
            },
            limit: *limit,
        },
        GrantsCmd::Show { id } => Call::GrantsShow { id: id.clone() },
        GrantsCmd::Approve { id, comment } => Call::GrantsApprove {
            id: id.clone(),
            comment: comment.clone(),
        },
        GrantsCmd::Deny { id, reason } => Call::GrantsDeny {
            id: id.clone(),
            reason: reason.clone(),
        },
        GrantsCmd::Revoke { id, reason } => Call::GrantsRevoke {
            id: id.clone(),
            reason: reason.clone(),
        },
    };
    let v = crate::commands::execute(cli, &call).await?;
    match c {
        GrantsCmd::List { .. } => {
            let list = rows(v)?;
            output::table(
                cli.json,
                &list,
                &[
                    "ID",
                    "REQUESTER",
                    "SCOPE",
                    "DURATION",
                    "STATUS",
                    "APPROVED BY",
                    "ENDS",
                    "REASON",
                ],
                |g| {
                    vec![
                        g.id.clone(),
                        g.requester.clone(),
                        herse::grants::scope(g),
                        humantime::format_duration(std::time::Duration::from_secs(g.duration_secs.max(0) as u64))
                            .to_string(),
                        g.status.as_str().to_owned(),
                        g.approvals
                            .iter()
                            .map(|a| a.approver.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        g.expires_at.map(output::time).unwrap_or_default(),
                        g.reason.clone(),
                    ]
                },
            );
        }
        GrantsCmd::Show { .. } => output::object(cli.json, &one(v)?),
        _ => {
            let g = one(v)?;
            if cli.json {
                output::object(true, &g);
            } else if matches!(c, GrantsCmd::Request { .. }) {
                let line = format!(
                    "requested grant {} for {}; managers of tier {} decide",
                    g.id,
                    herse::grants::scope(&g),
                    g.tier
                );
                println!("{}", output::clean(&line));
            } else {
                println!("{}", output::clean_lines(&status_line(&g)));
            }
        }
    }
    Ok(())
}
