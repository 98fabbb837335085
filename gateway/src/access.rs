//! People roles and what they permit, decided in one place.
//!
//! A person's duties come from the roles bound to them: any engineer role (a
//! [`crate::policy::Role`]) makes them an engineer; people roles ([`Duty`]) make them a
//! manager of some tiers, an auditor or an admin. Every decision is a pure function of
//! the caller and the action, so it can be tested exhaustively and reasoned about alone.
//!
//! - engineer: requests grants, connects, sees their own grants;
//! - manager: approves, denies and revokes grants to the tiers their role names, never
//!   their own request;
//! - auditor: reads recordings, sessions and the audit log, nothing else;
//! - admin: users, keys, role bindings, workstations, sessions, targets.
//!
//! The local operator (`hersectl` on the gateway host, with the master key) can do what an
//! admin and an auditor can, deny and revoke grants, but never approve one: an approval
//! is a person's decision, made after a second factor.

use std::collections::BTreeSet;

use crate::ident::{RoleName, TierName, UserName};
use crate::policy::{Duty, Policy};

/// What a person may do, derived from their role bindings and the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: UserName,
    /// Holds at least one engineer role.
    pub engineer: bool,
    /// Tiers whose grants this person decides.
    pub manages: BTreeSet<TierName>,
    pub auditor: bool,
    pub admin: bool,
    /// Every bound role the policy knows (to check an external approver role).
    pub roles: BTreeSet<RoleName>,
}

impl Person {
    /// Bindings naming roles the policy no longer defines are ignored.
    pub fn new(policy: &Policy, name: UserName, bound: &[RoleName]) -> Person {
        let mut p = Person {
            name,
            engineer: false,
            manages: BTreeSet::new(),
            auditor: false,
            admin: false,
            roles: BTreeSet::new(),
        };
        for r in bound {
            if policy.roles.contains_key(r) {
                p.engineer = true;
            } else if let Some(d) = policy.duties.get(r) {
                match d {
                    Duty::Manager { tiers } => p.manages.extend(tiers.iter().cloned()),
                    Duty::Auditor => p.auditor = true,
                    Duty::Admin => p.admin = true,
                }
            } else {
                continue;
            }
            p.roles.insert(r.clone());
        }
        p
    }

    /// The people roles held, for display (`engineer`, `manager(db,web)`, …).
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.engineer {
            parts.push("engineer".to_owned());
        }
        if !self.manages.is_empty() {
            let tiers: Vec<_> = self.manages.iter().map(|t| t.as_str()).collect();
            parts.push(format!("manager({})", tiers.join(",")));
        }
        if self.auditor {
            parts.push("auditor".to_owned());
        }
        if self.admin {
            parts.push("admin".to_owned());
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `hersectl` in local mode on the gateway host (bootstrap and recovery), with the
    /// operator's login name (`local:root`).
    Local(String),
    /// A person, authenticated through the control API.
    Person(Person),
}

impl Caller {
    /// The name written into audit events and grant decisions.
    pub fn label(&self) -> String {
        match self {
            Caller::Local(who) => who.clone(),
            Caller::Person(p) => p.name.to_string(),
        }
    }
    pub fn person(&self) -> Option<&Person> {
        match self {
            Caller::Local(_) => None,
            Caller::Person(p) => Some(p),
        }
    }
}

/// Something a caller wants to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    /// Who am I, my own grants, my own password and factors.
    SelfService,
    /// Ask for a grant to a tier.
    RequestGrant,
    /// See one grant (or list grants) of `requester` to `tier`.
    ViewGrant {
        tier: &'a TierName,
        requester: &'a UserName,
    },
    /// Approve a pending grant.
    ApproveGrant {
        tier: &'a TierName,
        requester: &'a UserName,
    },
    /// Deny a pending grant.
    DenyGrant {
        tier: &'a TierName,
        requester: &'a UserName,
    },
    /// End a grant early (its sessions end with it).
    RevokeGrant {
        tier: &'a TierName,
        requester: &'a UserName,
    },
    /// Read recordings (list, show, verify, play, search, export, watch live).
    ReadRecordings,
    /// Read and verify the audit log.
    ReadAudit,
    /// List sessions.
    ListSessions,
    /// Kill a session.
    KillSession,
    /// Put or lift a legal hold on a recording; purge expired recordings.
    ManageRecordings,
    /// Users, keys, role bindings, suspensions, factors of others.
    ManageUsers,
    /// Enrol, revoke and re-key workstations.
    ManageWorkstations,
    /// List targets, probe them.
    ManageTargets,
    /// Forget a gateway node that no longer runs.
    ManageNodes,
}

/// Why an action is refused. Safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("you cannot decide on your own request")]
    OwnRequest,
    #[error("you do not manage tier {0}")]
    NotManager(TierName),
    #[error("approving needs a manager logged in with a second factor (not local mode)")]
    ApprovalNeedsPerson,
    #[error("only engineers request grants")]
    NotEngineer,
    #[error("this needs the {0} role")]
    Needs(&'static str),
}

/// The one permission check. Pure: no I/O, no clock.
pub fn check(caller: &Caller, action: &Action<'_>) -> Result<(), Refusal> {
    let p = match caller {
        Caller::Local(_) => {
            return match action {
                Action::ApproveGrant { .. } => Err(Refusal::ApprovalNeedsPerson),
                // Nobody to request for, and nobody's own things to see.
                Action::RequestGrant => Err(Refusal::NotEngineer),
                _ => Ok(()),
            };
        }
        Caller::Person(p) => p,
    };
    let needs = |ok: bool, role: &'static str| if ok { Ok(()) } else { Err(Refusal::Needs(role)) };
    match action {
        Action::SelfService => Ok(()),
        Action::RequestGrant => {
            if p.engineer {
                Ok(())
            } else {
                Err(Refusal::NotEngineer)
            }
        }
        Action::ViewGrant { tier, requester } => {
            if *requester == &p.name || p.manages.contains(*tier) || p.auditor || p.admin {
                Ok(())
            } else {
                Err(Refusal::NotManager((*tier).clone()))
            }
        }
        Action::ApproveGrant { tier, requester } | Action::DenyGrant { tier, requester } => {
            if *requester == &p.name {
                Err(Refusal::OwnRequest)
            } else if p.manages.contains(*tier) {
                Ok(())
            } else {
                Err(Refusal::NotManager((*tier).clone()))
            }
        }
        // Withdrawing one's own grant is always allowed: it only removes access.
        Action::RevokeGrant { tier, requester } => {
            if *requester == &p.name || p.manages.contains(*tier) || p.admin {
                Ok(())
            } else {
                Err(Refusal::NotManager((*tier).clone()))
            }
        }
        Action::ReadRecordings | Action::ReadAudit => needs(p.auditor, "auditor"),
        Action::ListSessions => needs(p.auditor || p.admin, "auditor or admin"),
        Action::KillSession
        | Action::ManageRecordings
        | Action::ManageUsers
        | Action::ManageWorkstations
        | Action::ManageTargets
        | Action::ManageNodes => needs(p.admin, "admin"),
    }
}

/// Where the approvals of a grant stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalState {
    Approved,
    /// `more` distinct approvals still needed; `external` when none yet came from the
    /// tier's external approver role.
    Waiting {
        more: u8,
        external: bool,
    },
}

/// One approval as recorded: who, and whether they held the tier's external approver
/// role when they approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalVote {
    pub approver: UserName,
    pub external: bool,
}

/// Whether `votes` approve a request by `requester` under `rules`. Distinct approvers
/// count once each; the requester never counts. Pure.
pub fn approval_state(
    rules: &crate::policy::GrantRules,
    requester: &UserName,
    votes: &[ApprovalVote],
) -> ApprovalState {
    let mut approvers = BTreeSet::new();
    let mut external = false;
    for v in votes.iter().filter(|v| &v.approver != requester) {
        approvers.insert(&v.approver);
        external |= v.external;
    }
    let need_external = rules.external_role.is_some() && !external;
    let have = u8::try_from(approvers.len()).unwrap_or(u8::MAX);
    let more = rules.approvals.saturating_sub(have);
    if more == 0 && !need_external {
        ApprovalState::Approved
    } else {
        ApprovalState::Waiting {
            // An external approval is still needed even when the count is reached.
            more: more.max(u8::from(need_external)),
            external: need_external,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::GrantRules;
    use proptest::prelude::*;

    const TIERS: [&str; 3] = ["web", "db", "pay"];
    const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

    fn tier(i: usize) -> TierName {
        TierName::parse(TIERS[i % TIERS.len()]).unwrap()
    }
    fn user(i: usize) -> UserName {
        UserName::parse(USERS[i % USERS.len()]).unwrap()
    }

    prop_compose! {
        fn person()(who in 0..4usize, engineer: bool, manages in proptest::collection::btree_set(0..3usize, 0..=3),
                    auditor: bool, admin: bool) -> Person {
            Person {
                name: user(who),
                engineer,
                manages: manages.into_iter().map(tier).collect(),
                auditor,
                admin,
                roles: BTreeSet::new(),
            }
        }
    }

    fn grant_actions<'a>(t: &'a TierName, r: &'a UserName) -> [Action<'a>; 4] {
        [
            Action::ViewGrant { tier: t, requester: r },
            Action::ApproveGrant { tier: t, requester: r },
            Action::DenyGrant { tier: t, requester: r },
            Action::RevokeGrant { tier: t, requester: r },
        ]
    }

    const OTHER: [Action<'static>; 11] = [
        Action::SelfService,
        Action::RequestGrant,
        Action::ReadRecordings,
        Action::ReadAudit,
        Action::ListSessions,
        Action::KillSession,
        Action::ManageRecordings,
        Action::ManageUsers,
        Action::ManageWorkstations,
        Action::ManageTargets,
        Action::ManageNodes,
    ];

    proptest! {
        /// Nobody, whatever roles they hold, approves or denies their own request.
        #[test]
        fn never_decide_own_request(p in person(), t in 0..3usize) {
            let tier = tier(t);
            let me = p.name.clone();
            let caller = Caller::Person(p);
            prop_assert_eq!(check(&caller, &Action::ApproveGrant { tier: &tier, requester: &me }), Err(Refusal::OwnRequest));
            prop_assert_eq!(check(&caller, &Action::DenyGrant { tier: &tier, requester: &me }), Err(Refusal::OwnRequest));
        }

        /// Approving needs managing that very tier; nothing else (admin, auditor) stands in.
        #[test]
        fn approval_needs_the_tiers_manager(p in person(), t in 0..3usize, r in 0..4usize) {
            let tier = tier(t);
            let requester = user(r);
            let allowed = check(&Caller::Person(p.clone()), &Action::ApproveGrant { tier: &tier, requester: &requester }).is_ok();
            prop_assert_eq!(allowed, p.manages.contains(&tier) && p.name != requester);
        }

        /// An auditor with no other role reads, and does nothing else.
        #[test]
        fn auditors_only_read(who in 0..4usize, t in 0..3usize, r in 0..4usize) {
            let p = Person { name: user(who), engineer: false, manages: BTreeSet::new(), auditor: true, admin: false, roles: BTreeSet::new() };
            let caller = Caller::Person(p.clone());
            let tier = tier(t);
            let requester = user(r);
            for a in OTHER.iter().chain(grant_actions(&tier, &requester).iter()) {
                let read = matches!(a, Action::SelfService | Action::ReadRecordings | Action::ReadAudit | Action::ListSessions | Action::ViewGrant { .. });
                let own_revoke = matches!(a, Action::RevokeGrant { .. }) && requester == p.name;
                prop_assert_eq!(check(&caller, a).is_ok(), read || own_revoke, "{:?}", a);
            }
        }

        /// More roles never take a permission away (apart from the own-request rule,
        /// which does not depend on roles at all).
        #[test]
        fn more_roles_never_less_power(p in person(), t in 0..3usize, r in 0..4usize, add in 0..4usize) {
            let mut q = p.clone();
            match add {
                0 => q.engineer = true,
                1 => q.auditor = true,
                2 => q.admin = true,
                _ => { q.manages.insert(tier(t)); }
            }
            let tier = tier(t);
            let requester = user(r);
            for a in OTHER.iter().chain(grant_actions(&tier, &requester).iter()) {
                if check(&Caller::Person(p.clone()), a).is_ok() {
                    prop_assert!(check(&Caller::Person(q.clone()), a).is_ok(), "{:?} lost by adding a role", a);
                }
            }
        }

        /// A person without admin never manages users, workstations, targets or sessions.
        #[test]
        fn administration_needs_admin(p in person()) {
            for a in [Action::ManageUsers, Action::ManageWorkstations, Action::ManageTargets, Action::KillSession, Action::ManageRecordings] {
                prop_assert_eq!(check(&Caller::Person(p.clone()), &a).is_ok(), p.admin);
            }
        }

        /// Approved exactly when enough distinct non-requester approvers voted and, where
        /// the tier names an external role, one of them held it.
        #[test]
        fn approvals_count_distinct_others(
            need in 1u8..=3, ext: bool, requester in 0..4usize,
            votes in proptest::collection::vec((0..4usize, any::<bool>()), 0..6),
        ) {
            let rules = GrantRules {
                approvals: need,
                external_role: ext.then(|| RoleName::parse("customer").unwrap()),
                ..GrantRules::default()
            };
            let req = user(requester);
            let votes: Vec<_> = votes.into_iter().map(|(u, e)| ApprovalVote { approver: user(u), external: e }).collect();
            let others: BTreeSet<_> = votes.iter().filter(|v| v.approver != req).map(|v| v.approver.clone()).collect();
            let has_ext = votes.iter().any(|v| v.approver != req && v.external);
            let expect = others.len() >= usize::from(need) && (!ext || has_ext);
            prop_assert_eq!(approval_state(&rules, &req, &votes) == ApprovalState::Approved, expect);
        }
    }

    fn local() -> Caller {
        Caller::Local("local:root".into())
    }

    #[test]
    fn local_operator_never_approves() {
        let t = tier(0);
        let r = user(0);
        assert_eq!(
            check(
                &local(),
                &Action::ApproveGrant {
                    tier: &t,
                    requester: &r
                }
            ),
            Err(Refusal::ApprovalNeedsPerson)
        );
        assert!(check(
            &local(),
            &Action::RevokeGrant {
                tier: &t,
                requester: &r
            }
        )
        .is_ok());
        assert!(check(&local(), &Action::ManageUsers).is_ok());
    }

    #[test]
    fn person_from_policy_bindings() {
        let text = r#"
[tiers.db]
[roles.dba]
tiers = ["db"]
logins = ["postgres"]
operations = ["shell"]
max_session = "1h"
idle_timeout = "10m"
requires_grant = true
[roles.db-managers]
kind = "manager"
tiers = ["db"]
[roles.auditors]
kind = "auditor"
"#;
        let policy = crate::policy::parse_text(text).unwrap();
        let roles: Vec<_> = ["dba", "db-managers", "auditors", "gone"]
            .iter()
            .map(|r| RoleName::parse(r).unwrap())
            .collect();
        let p = Person::new(&policy, user(0), &roles);
        assert!(p.engineer && p.auditor && !p.admin);
        assert_eq!(p.manages, [tier(1)].into_iter().collect());
        assert_eq!(p.label(), "engineer manager(db) auditor");
        assert_eq!(p.roles.len(), 3);
    }
}
