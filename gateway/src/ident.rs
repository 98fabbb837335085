//! Newtypes for the names that flow through the gateway. Each is validated once, when it
//! is built, so the rest of the code never sees a malformed name.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {why}")]
pub struct NameError {
    pub kind: &'static str,
    pub value: String,
    pub why: &'static str,
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, NameError> {
                $check(value).map_err(|why| NameError {
                    kind: $kind,
                    value: value.to_owned(),
                    why,
                })?;
                Ok(Self(value.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn check_simple(value: &str, extra: &[char], max: usize) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > max {
        return Err("too long");
    }
    let mut chars = value.chars();
    let first = chars.next().unwrap_or('-');
    if !(first.is_ascii_lowercase() || first.is_ascii_digit() || first == '_') {
        return Err("must start with a lowercase letter, a digit or '_'");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
    {
        return Err("may contain only lowercase letters, digits and the listed punctuation");
    }
    Ok(())
}

fn check_user(v: &str) -> Result<(), &'static str> {
    check_simple(v, &['_', '-', '.'], 64)
}
fn check_workstation(v: &str) -> Result<(), &'static str> {
    check_simple(v, &['_', '-', '.'], 64)
}
fn check_login(v: &str) -> Result<(), &'static str> {
    // POSIX portable user names, as sshd on the target sees them.
    check_simple(v, &['_', '-', '.'], 32)
}
fn check_target(v: &str) -> Result<(), &'static str> {
    check_simple(v, &['-', '.'], 253)
}
fn check_label(v: &str) -> Result<(), &'static str> {
    check_simple(v, &['-', '_'], 64)
}

name_type!(
    /// An enrolled workstation (a WireGuard peer of the gateway).
    WorkstationName,
    "workstation name",
    check_workstation
);
name_type!(
    /// A Herse user (a person).
    UserName, "user name", check_user
);
name_type!(
    /// An account on a target (the upstream SSH login).
    Login, "login", check_login
);
name_type!(
    /// A target's name as users type it (`ssh -J gw root@NAME`).
    TargetName, "target name", check_target
);
name_type!(
    /// A production tier (segment).
    TierName, "tier name", check_label
);
name_type!(
    /// A policy role.
    RoleName, "role name", check_label
);

/// A gateway session: one authorized connection to one target, with one recording.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn random() -> Self {
        use rand::RngExt;
        let bytes: [u8; 16] = rand::rng().random();
        Self(hex::encode(bytes))
    }
    pub fn parse(v: &str) -> Result<Self, NameError> {
        if v.len() == 32 && v.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
            Ok(Self(v.to_owned()))
        } else {
            Err(NameError {
                kind: "session id",
                value: v.to_owned(),
                why: "must be 32 lowercase hex digits",
            })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An access grant's id: `g` and 10 lowercase hex digits, short enough to type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct GrantId(String);

impl GrantId {
    pub fn random() -> Self {
        use rand::RngExt;
        let bytes: [u8; 5] = rand::rng().random();
        Self(format!("g{}", hex::encode(bytes)))
    }
    pub fn parse(v: &str) -> Result<Self, NameError> {
        let ok = v.len() == 11
            && v.starts_with('g')
            && v[1..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if ok {
            Ok(Self(v.to_owned()))
        } else {
            Err(NameError {
                kind: "grant id",
                value: v.to_owned(),
                why: "must be g followed by 10 lowercase hex digits",
            })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the SSH user name on the gateway asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontLogin {
    /// `alice`: a jump login; targets are named in `direct-tcpip` channels (ProxyJump).
    Jump { user: UserName },
    /// `alice+root+db1`: single hop, straight to `root` on `db1`.
    Direct {
        user: UserName,
        login: Login,
        target: TargetName,
    },
}

impl FrontLogin {
    pub fn parse(ssh_user: &str) -> Result<Self, NameError> {
        let parts: Vec<&str> = ssh_user.split('+').collect();
        match parts.as_slice() {
            [user] => Ok(FrontLogin::Jump {
                user: UserName::parse(user)?,
            }),
            [user, login, target] => Ok(FrontLogin::Direct {
                user: UserName::parse(user)?,
                login: Login::parse(login)?,
                target: TargetName::parse(target)?,
            }),
            _ => Err(NameError {
                kind: "gateway login",
                value: ssh_user.to_owned(),
                why: "use USER (with ProxyJump) or USER+LOGIN+TARGET",
            }),
        }
    }

    pub fn user(&self) -> &UserName {
        match self {
            FrontLogin::Jump { user } | FrontLogin::Direct { user, .. } => user,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_login_forms() {
        assert_eq!(
            FrontLogin::parse("alice").unwrap(),
            FrontLogin::Jump {
                user: UserName::parse("alice").unwrap()
            }
        );
        let d = FrontLogin::parse("alice+root+db1.prod").unwrap();
        assert!(matches!(d, FrontLogin::Direct { ref login, ref target, .. }
            if login.as_str() == "root" && target.as_str() == "db1.prod"));
        for bad in [
            "",
            "alice+root",
            "a+b+c+d",
            "Alice",
            "alice+root+",
            "al ice",
            "alice+ro/ot+db1",
            "-x",
        ] {
            assert!(FrontLogin::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn session_ids() {
        let id = SessionId::random();
        assert_eq!(SessionId::parse(id.as_str()).unwrap(), id);
        assert!(SessionId::parse("../../etc/passwd").is_err());
    }
}
