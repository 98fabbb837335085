//! Security keys end to end: Debian's headless chromium with a Chrome DevTools Protocol
//! virtual authenticator (driven by playwright-core, tests/webauthn/drive.js) enrols a
//! key on the portal and approves an SSH login that a real `ssh` is waiting on.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use herse_e2e::people::set_password;

/// Failed logins that lock an account (the gateway's `web::LOGIN_FAILURES`).
const LOGIN_FAILURES: usize = 5;
use herse_e2e::*;

const DEPLOY: &str = "hdeploy";
const RP: &str = "gw.herse.test";

/// One user's browser.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Browser {
    fn start(home: &Path, base: &str, port: u16) -> Browser {
        let dir = manifest_dir().join("webauthn");
        let mut child = Command::new("node")
            .arg(dir.join("drive.js"))
            .arg(base)
            .arg(format!("MAP {RP} 127.0.0.1:{port}"))
            .current_dir(&dir)
            .env("HOME", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (scripts/install-test-deps installs it)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Browser { child, stdin, stdout }
    }

    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).unwrap();
        out.trim().to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA the test's browsers trust (through their NSS database) and a portal
/// certificate it signed for the relying party's name.
fn pki(d: &Path, home: &Path) {
    let sh = |script: &str| ok(Command::new("sh").arg("-c").arg(script).current_dir(d));
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 \
         -subj '/CN=Herse test CA' -addext 'basicConstraints=critical,CA:true' -addext 'keyUsage=critical,keyCertSign' 2>/dev/null && \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout portal.key -out portal.csr -subj '/CN={RP}' 2>/dev/null && \
         printf 'subjectAltName=DNS:{RP},IP:127.0.0.1\\nbasicConstraints=CA:false\\nextendedKeyUsage=serverAuth\\n' > ext && \
         openssl x509 -req -in portal.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out portal.pem -days 2 -extfile ext 2>/dev/null"
    ));
    let nss = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nss).unwrap();
    let db = format!("sql:{}", nss.display());
    ok(Command::new("certutil").args(["-d", &db, "-N", "--empty-password"]));
    ok(Command::new("certutil")
        .args(["-d", &db, "-A", "-t", "C,,", "-n", "herse-test-ca", "-i"])
        .arg(d.join("ca.pem")));
}

/// Start `ssh` as `user` and return it with the approval URL it printed (the caller
/// waits for it: `finished`).
fn ssh_waiting(d: &Path, gw_port: u16, user: &str, key: &Path) -> (Child, String) {
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null", "-p", &gw_port.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            &format!("UserKnownHostsFile={}", d.join("known_hosts").display()),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "LogLevel=INFO",
            "-o",
            "BatchMode=no",
            &format!("{user}+{DEPLOY}+web1@127.0.0.1"),
            "echo approved-login",
        ]);
    waiting(c)
}

/// The same in ProxyJump form (`ssh -J alice@gw hdeploy@web1`): the approval is asked
/// at the inner login, by the main ssh process.
fn ssh_jump_waiting(cfg: &Path) -> (Child, String) {
    let mut c = Command::new("ssh");
    c.arg("-F").arg(cfg).args(["-l", DEPLOY, "web1", "echo approved-login"]);
    waiting(c)
}

#[allow(clippy::zombie_processes)]
fn waiting(mut c: Command) -> (Child, String) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let start = Instant::now();
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap_or(0) == 0 || start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no approval URL from ssh: {seen}");
        }
        seen.push_str(&line);
        if let Some(url) = line.split_whitespace().find(|w| w.contains("/approve/")) {
            // Keep draining stderr so ssh never blocks on it.
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
            return (child, url.to_owned());
        }
    }
}

fn finished(mut child: Child) -> (bool, String) {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut out = String::new();
            let _ = std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out);
            return (st.success(), out);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return (false, String::new());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn security_keys_approve_ssh_logins_in_a_real_browser() {
    ensure_account(DEPLOY);
    let dir = TempDir::new("webauthn");
    let d = dir.0.clone();
    let home = d.join("home");
    pki(&d, &home);
    std::fs::write(d.join("policy.toml"), "").unwrap();
    let config = Gateway::init(&d);
    let web = Sshd::target(&d, "web1");
    std::fs::write(
        d.join("policy.toml"),
        format!(
            "[tiers.web.targets.web1]\naddress = \"127.0.0.1\"\nport = {}\nhost_keys = [\"{}\"]\n\
             [roles.eng]\ntiers = [\"web\"]\nlogins = [\"{DEPLOY}\"]\noperations = [\"exec\"]\n\
             max_session = \"1h\"\nidle_timeout = \"10m\"\n\
             [tiers.db]\n[roles.dba]\ntiers = [\"db\"]\nlogins = [\"{DEPLOY}\"]\noperations = [\"exec\"]\n\
             max_session = \"1h\"\nidle_timeout = \"10m\"\nrequires_grant = true\n\
             [roles.db-managers]\nkind = \"manager\"\ntiers = [\"db\"]\n",
            web.port, web.host_key_pub
        ),
    )
    .unwrap();
    let port = free_port();
    let base = format!("https://{RP}:{port}");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[web]\nlisten = [\"127.0.0.1:{port}\"]\nrp_id = \"{RP}\"\norigin = \"{base}\"\ncert = \"portal.pem\"\n\
         key = \"portal.key\"\napproval_ttl = \"8s\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let gw = Gateway::start(&d, &config);
    let host_key = std::fs::read_to_string(d.join("data/host_key.pub")).unwrap();
    std::fs::write(
        d.join("known_hosts"),
        format!("[127.0.0.1]:{} {}", gw.port, host_key.trim()),
    )
    .unwrap();
    let mut totp = Vec::new();
    for u in ["alice", "bob"] {
        let k = keygen(&d, u);
        ok(gw
            .ctl()
            .args(["users", "add", u, "--key"])
            .arg(format!("{}.pub", k.display())));
        ok(gw.ctl().args(["roles", "bind", u, "eng"]));
        totp.push(enrol_totp(&config, u));
        set_password(&gw, u, &format!("Good-Passphrase-{}-42", u.len() * 7));
    }
    ok(gw.ctl().args(["roles", "bind", "alice", "dba"]));
    ok(gw.ctl().args(["roles", "bind", "bob", "db-managers"]));
    let audit = || json_lines(&ok(gw.ctl().args(["audit", "list", "--json", "--limit", "1000"])));

    // Recovery codes now: minting them later would end the users' portal sessions.
    let codes = ok(gw.ctl().args(["users", "recovery-codes", "alice"]));

    // Each user's browser logs in to the portal (password + TOTP).
    let mut alice = Browser::start(&home, &base, port);
    let mut bob = Browser::start(&home, &base, port);
    let r = alice.cmd(&format!("login alice Good-Passphrase-35-42 {}", totp_next(&totp[0])));
    assert_eq!(r, "ok logged in");
    let r = bob.cmd(&format!("login bob Good-Passphrase-21-42 {}", totp_next(&totp[1])));
    assert_eq!(r, "ok logged in");

    // Enrol a key: a touch of the (virtual) authenticator.
    let r = alice.cmd("enrol yubikey-5");
    assert!(r.starts_with("ok key added"), "{r}");
    assert!(audit()
        .iter()
        .any(|e| e["kind"] == "mfa.enroll" && e["user"] == "alice"));
    // With a key enrolled, a portal session (password + TOTP) alone neither adds nor
    // removes one: a touch of a key comes first.
    for bare in ["bare-enrol spare", "bare-remove yubikey-5"] {
        let r = alice.cmd(bare);
        assert!(
            r.starts_with("err 403") && r.contains("touch one of your keys"),
            "{bare}: {r}"
        );
    }
    // With the touch, the gateway starts the registration; this virtual authenticator
    // then declines to hold a second credential for the same account (exclusion list).
    let r = alice.cmd("enrol spare");
    assert!(r.contains("already registered with the relying party"), "{r}");

    // An SSH login waits; the URL it shows is approved with the key, and the login
    // goes on.
    let (ssh, url) = ssh_waiting(&d, gw.port, "alice", &d.join("alice"));
    assert!(url.starts_with(&format!("{base}/approve/")), "{url}");
    // Bob, logged in on the portal, cannot approve Alice's login.
    let r = bob.cmd(&format!("approve {url}"));
    assert!(r.starts_with("err 403") && r.contains("another user"), "{r}");
    let r = alice.cmd(&format!("approve {url}"));
    assert_eq!(r, "ok approved");
    let (ok_, out) = finished(ssh);
    assert!(ok_, "the approved login failed");
    assert_eq!(out.trim(), "approved-login");
    // ProxyJump form: the inner login asks, the main ssh shows the URL.
    let host_ca = std::fs::read_to_string(d.join("data/host_ca.pub")).unwrap();
    std::fs::write(
        d.join("known_hosts_jump"),
        format!(
            "@cert-authority web1 {}\n[127.0.0.1]:{} {}\n",
            host_ca.trim(),
            gw.port,
            host_key.trim()
        ),
    )
    .unwrap();
    let jump_cfg = d.join("ssh_config_jump");
    std::fs::write(
        &jump_cfg,
        format!(
            "Host gw\n  HostName 127.0.0.1\n  Port {}\n  User alice\nHost web1\n  ProxyJump gw\n\
             Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n\
             LogLevel INFO\n  BatchMode no\n",
            gw.port,
            d.join("alice").display(),
            d.join("known_hosts_jump").display()
        ),
    )
    .unwrap();
    let (ssh, jump_url) = ssh_jump_waiting(&jump_cfg);
    assert_ne!(jump_url, url, "each login has its own approval");
    assert_eq!(alice.cmd(&format!("approve {jump_url}")), "ok approved");
    let (ok_, out) = finished(ssh);
    assert!(ok_ && out.trim() == "approved-login", "ProxyJump approval: {out}");

    // The approval was for one login only.
    let r = alice.cmd(&format!("approve {url}"));
    assert!(r.starts_with("err 403") && r.contains("already used"), "{r}");

    // An approval left too long expires, and the waiting login is refused.
    let (ssh, url) = ssh_waiting(&d, gw.port, "alice", &d.join("alice"));
    std::thread::sleep(Duration::from_secs(9));
    let r = alice.cmd(&format!("approve {url}"));
    assert!(r.starts_with("err 403") && r.contains("expired"), "{r}");
    let (ok_, _) = finished(ssh);
    assert!(!ok_, "an expired approval logged in");

    // A removed key no longer approves anything.
    let (ssh, url) = ssh_waiting(&d, gw.port, "alice", &d.join("alice"));
    let r = alice.cmd("remove yubikey-5");
    assert!(r.contains("Removed"), "{r}");
    let r = alice.cmd(&format!("approve {url}"));
    assert!(r.starts_with("err"), "{r}");
    let (ok_, _) = finished(ssh);
    assert!(!ok_, "a removed key approved a login");
    let events = audit();
    assert!(events.iter().any(|e| e["kind"] == "mfa.remove" && e["user"] == "alice"));
    assert!(events.iter().any(|e| e["kind"] == "mfa.failure"
        && e["user"] == "bob"
        && e["detail"].as_str().unwrap().contains("another user")));
    assert!(events
        .iter()
        .any(|e| e["kind"] == "mfa.success" && e["detail"] == "security key"));

    // A manager approves a pending access request on the portal with a key touch.
    // Alice asks with remote hersectl (her TOTP step is spent: a recovery code logs in).
    let code = codes
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.contains(' '))
        .expect("a recovery code")
        .to_owned();
    let session = d.join("alice-session.json");
    let remote = || {
        let mut c = Command::new(bin("hersectl"));
        c.env_remove("HERSE_CONFIG").env("HERSE_SESSION", &session);
        c
    };
    let mut login = remote()
        .args(["login", "--server", &format!("https://127.0.0.1:{port}"), "--ca"])
        .arg(d.join("ca.pem"))
        .args(["--user", "alice"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(login.stdin.take().unwrap(), "Good-Passphrase-35-42\n{code}").unwrap();
    let out = login.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let g: serde_json::Value = serde_json::from_str(&ok(remote().args([
        "grants",
        "request",
        "--tier",
        "db",
        "--duration",
        "30m",
        "--reason",
        "CHG-7",
        "--json",
    ])))
    .unwrap();
    let id = g["id"].as_str().unwrap().to_owned();
    // Alice (the requester) sees no approve button for her own request; bob needs a key.
    let r = alice.cmd(&format!("grant {id}"));
    assert!(r.starts_with("err") && r.contains("No request waits"), "{r}");
    assert!(bob.cmd("enrol bob-key").starts_with("ok key added"));
    let r = bob.cmd(&format!("grant {id}"));
    assert_eq!(r, format!("ok grant {id}: active"));
    let shown: serde_json::Value = serde_json::from_str(&ok(gw.ctl().args(["grants", "show", &id, "--json"]))).unwrap();
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["approvals"][0]["approver"], "bob");
    assert!(shown["approvals"][0]["comment"]
        .as_str()
        .unwrap()
        .contains("security key \"bob-key\""));

    // A security-key user logs in to hersectl with the key: no code, an approval URL, a
    // touch (a TOTP code is refused: the key is the factor, as for SSH).
    let bob_session = d.join("bob-session.json");
    let bob_ctl = || {
        let mut c = Command::new(bin("hersectl"));
        c.env_remove("HERSE_CONFIG").env("HERSE_SESSION", &bob_session);
        c
    };
    let login = |code: &str| {
        let mut c = bob_ctl()
            .args(["login", "--server", &format!("https://127.0.0.1:{port}"), "--ca"])
            .arg(d.join("ca.pem"))
            .args(["--user", "bob"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(c.stdin.take().unwrap(), "Good-Passphrase-21-42\n{code}").unwrap();
        c
    };
    let out = login(&totp_now(&totp[1])).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("leave the code empty"));
    // The URL, and the rest of the login's stderr (kept open: hersectl still writes).
    let approval_url = |c: &mut Child| {
        let mut err = BufReader::new(c.stderr.take().unwrap());
        loop {
            let mut line = String::new();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "no approval URL from hersectl login: {line}"
            );
            if let Some(u) = line.split_whitespace().find(|w| w.contains("/approve/")) {
                break (u.to_owned(), err);
            }
        }
    };
    // Logins left unapproved (more than the lockout's count) are not failures: the
    // right password was given each time, and the account stays open.
    for _ in 0..=LOGIN_FAILURES {
        let mut c = login("");
        approval_url(&mut c);
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut c = login("");
    let (url, _err) = approval_url(&mut c);
    assert_eq!(bob.cmd(&format!("approve {url}")), "ok approved");
    assert!(c.wait().unwrap().success(), "hersectl login after the approval");
    let me: serde_json::Value = serde_json::from_str(&ok(bob_ctl().args(["whoami", "--json"]))).unwrap();
    assert_eq!(me["user"], "bob");
    assert_eq!(me["roles"], "engineer manager(db)");
}
