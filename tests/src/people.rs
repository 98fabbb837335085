//! People of a test gateway with a loopback portal: each has a role, a password and a
//! TOTP factor (one askpass program answers both `ssh` and `hersectl login`, so no code
//! is offered twice), and their own remote `hersectl` (token file and recordings cache).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{bin, enrol_totp, ok, write_askpass, Gateway};

/// `herse.toml` with the loopback SSH listener and a loopback portal on a free port, then
/// `herse init` (which writes the portal certificate). Returns the config and the port.
pub fn init_with_portal(dir: &Path) -> (PathBuf, u16) {
    let port = crate::free_port();
    let cfg = dir.join("herse.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"data\"\nmaster_key_file = \"secrets/master.key\"\npolicy = \"policy.toml\"\n\
             [ssh]\nlisten = [\"127.0.0.1:0\"]\nauth_timeout = \"60s\"\ndrain_timeout = \"3s\"\n\
             [web]\nlisten = [\"127.0.0.1:{port}\"]\n"
        ),
    )
    .unwrap();
    if !dir.join("policy.toml").exists() {
        std::fs::write(dir.join("policy.toml"), "").unwrap();
    }
    ok(Command::new(bin("herse")).arg("-c").arg(&cfg).arg("init").arg("--json"));
    (cfg, port)
}

/// Set `user`'s portal password with local `hersectl`.
pub fn set_password(gw: &Gateway, user: &str, password: &str) {
    let mut c = gw
        .ctl()
        .args(["users", "password", user])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    assert!(c.wait().unwrap().success(), "password for {user}");
}

pub struct People {
    pub dir: PathBuf,
    pub port: u16,
    pub askpass: PathBuf,
    pub password: String,
}

impl People {
    /// Add each `(user, role)` with `password` and a TOTP factor; write the askpass.
    pub fn enrol(gw: &Gateway, port: u16, password: &str, people: &[(&str, &str)]) -> People {
        let mut uris = Vec::new();
        for (u, role) in people {
            ok(gw.ctl().args(["users", "add", u]));
            ok(gw.ctl().args(["roles", "bind", u, role]));
            set_password(gw, u, password);
            uris.push((*u, enrol_totp(&gw.config, u)));
        }
        let askpass = gw.dir.join("askpass");
        let refs: Vec<(&str, &str)> = uris.iter().map(|(u, s)| (*u, s.as_str())).collect();
        write_askpass(&askpass, &refs);
        People {
            dir: gw.dir.clone(),
            port,
            askpass,
            password: password.to_owned(),
        }
    }

    pub fn session_file(&self, who: &str) -> PathBuf {
        self.dir.join(format!("session-{who}.json"))
    }

    /// `hersectl` in remote mode as `who`, with their own login and recordings cache.
    pub fn as_(&self, who: &str) -> Command {
        let mut c = Command::new(bin("hersectl"));
        c.env_remove("HERSE_CONFIG")
            .env("HERSE_SESSION", self.session_file(who))
            .env("XDG_CACHE_HOME", self.dir.join(format!("cache-{who}")))
            .stdin(Stdio::null());
        c
    }

    /// A fresh TOTP code for `who` from the askpass program (never a step twice).
    pub fn code(&self, who: &str) -> String {
        ok(Command::new(&self.askpass).arg(format!("Verification code (TOTP) for {who}:")))
            .trim()
            .to_owned()
    }

    /// `hersectl login` as `who` with the password and `code` (TOTP or recovery code);
    /// checks the token file is private.
    pub fn login(&self, who: &str, code: &str) {
        let mut child = self
            .as_(who)
            .args(["login", "--server", &format!("https://127.0.0.1:{}", self.port), "--ca"])
            .arg(self.dir.join("data/portal_cert.pem"))
            .args(["--user", who])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{}\n{code}", self.password).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "login {who}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(self.session_file(who)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "token file mode");
    }
}

/// `known_hosts` trusting the gateway's host CA for `targets` and its own host key, and
/// an ssh config for `user` (key `key`) that jumps through the loopback listener.
pub fn jump_config(dir: &Path, gw_port: u16, user: &str, key: &Path, targets: &[&str], log_level: &str) -> PathBuf {
    let host_ca = std::fs::read_to_string(dir.join("data/host_ca.pub")).unwrap();
    let host_key = std::fs::read_to_string(dir.join("data/host_key.pub")).unwrap();
    let known = dir.join(format!("known_hosts_{user}"));
    std::fs::write(
        &known,
        format!(
            "@cert-authority {} {}\n[127.0.0.1]:{gw_port} {}\n",
            targets.join(","),
            host_ca.trim(),
            host_key.trim()
        ),
    )
    .unwrap();
    let cfg = dir.join(format!("ssh_config_{user}"));
    std::fs::write(
        &cfg,
        format!(
            "Host gw\n  HostName 127.0.0.1\n  Port {gw_port}\n  User {user}\nHost {}\n  ProxyJump gw\n\
             Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n\
             PasswordAuthentication no\n  KbdInteractiveAuthentication yes\n  BatchMode no\n\
             NumberOfPasswordPrompts 1\n  LogLevel {log_level}\n  ConnectTimeout 15\n",
            targets.join(" "),
            key.display(),
            known.display()
        ),
    )
    .unwrap();
    cfg
}
