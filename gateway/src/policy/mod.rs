//! The access policy (`policy.toml`): tiers, their targets, and roles.
//!
//! Only this module builds an [`Authorized`] value; the relay needs one to start. Every
//! decision is a pure function of the policy, the user's role bindings and the request.

mod decide;
mod load;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use russh::keys::ssh_key::PublicKey;

pub use decide::{ActiveGrant, Authorized, Denial, GrantUse, Request, SftpAccess};
pub use load::load;

/// Parse a policy from text (tests in other modules).
#[cfg(test)]
pub(crate) fn parse_text(text: &str) -> Result<Policy, crate::diag::Diagnostics> {
    load::parse(std::path::Path::new("policy.toml"), text)
}

use crate::ident::{Login, RoleName, TargetName, TierName};

/// How the gateway recognises a target's host key.
#[derive(Debug, Clone)]
pub enum HostKeyCheck {
    /// Exactly these keys.
    Pinned(Vec<PublicKey>),
    /// A host certificate signed by one of these CAs, naming `principal`.
    Ca {
        authorities: Vec<PublicKey>,
        principal: String,
    },
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: TargetName,
    pub tier: TierName,
    pub host: String,
    pub port: u16,
    pub host_key: HostKeyCheck,
    /// Upstream certificates for this target are valid only from the address the gateway
    /// connected from (the `source-address` critical option).
    pub pin_source_address: bool,
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub name: TierName,
    pub description: String,
    /// Recordings older than this (since the session ended) are purged; `None` keeps them.
    pub retention: Option<Duration>,
    /// age X25519 recipients recordings are encrypted to; empty: not encrypted.
    pub encrypt_to: Vec<String>,
    /// Sessions here always prove a fresh second factor.
    pub mfa_always_fresh: bool,
    /// How access grants to this tier are approved and how long they may run.
    pub grants: GrantRules,
}

/// How grants to a tier are approved. A role with `requires_grant` opens this tier only
/// under an approved, unexpired grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRules {
    /// The longest grant a request may ask for.
    pub max_duration: Duration,
    /// Distinct approvers needed (never the requester).
    pub approvals: u8,
    /// When set, at least one approver must hold this manager role (the customer's
    /// explicit consent, for example).
    pub external_role: Option<RoleName>,
}

impl Default for GrantRules {
    fn default() -> Self {
        GrantRules {
            max_duration: Duration::from_secs(8 * 3600),
            approvals: 1,
            external_role: None,
        }
    }
}

/// What a people role (a `kind` other than `engineer`) lets its holders do, besides
/// connecting. Engineer roles are [`Role`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Duty {
    /// Approves, denies and revokes grants to these tiers.
    Manager { tiers: BTreeSet<TierName> },
    /// Reads recordings and the audit log, nothing else.
    Auditor,
    /// Users, workstations, keys, role bindings, sessions, targets.
    Admin,
}

/// Something a role may do on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Shell,
    Exec,
    SftpRead,
    SftpWrite,
    PortForward,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Shell => "shell",
            Operation::Exec => "exec",
            Operation::SftpRead => "sftp-read",
            Operation::SftpWrite => "sftp-write",
            Operation::PortForward => "port-forward",
        }
    }
}

/// A `host:port` a role may forward to, as seen from the target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForwardTarget {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: RoleName,
    pub tiers: BTreeSet<TierName>,
    /// Glob patterns on target names; `None` means every target of the role's tiers.
    pub targets: Option<Vec<glob::Pattern>>,
    pub logins: BTreeSet<Login>,
    pub operations: BTreeSet<Operation>,
    pub forwards: Vec<ForwardTarget>,
    pub max_session: Duration,
    pub idle_timeout: Duration,
    pub requires_grant: bool,
    /// How long a second factor proven from a workstation covers this role's logins.
    pub mfa_remember: Option<Duration>,
    /// Target sessions a holder of this role may have open at once, on every node
    /// (Teleport's `max_connections`); the lowest among a user's roles applies.
    pub max_connections: Option<u32>,
}

/// A whole, validated policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub tiers: BTreeMap<TierName, Tier>,
    pub targets: BTreeMap<TargetName, Target>,
    pub roles: BTreeMap<RoleName, Role>,
    /// People roles (manager, auditor, admin); names never clash with `roles`.
    pub duties: BTreeMap<RoleName, Duty>,
}

impl Policy {
    pub fn target(&self, name: &TargetName) -> Option<&Target> {
        self.targets.get(name)
    }

    /// Whether `role` names an engineer role or a people role.
    pub fn has_role(&self, role: &RoleName) -> bool {
        self.roles.contains_key(role) || self.duties.contains_key(role)
    }
}
