//! Second factors end to end: the real OpenSSH client answers Herse's TOTP prompt
//! (keyboard-interactive after the public key), in ProxyJump form; a raw SSH client
//! checks that the gateway, not the SSH library, enforces the order of factors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herse_e2e::*;

const DEPLOY: &str = "hdeploy";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct World {
    dir: TempDir,
    gw: Gateway,
    _web: Sshd,
    _db: Sshd,
    alice_cfg: PathBuf,
    alice_totp: String,
    bob_totp: String,
}

impl World {
    fn d(&self) -> &Path {
        &self.dir.0
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        json_lines(&ok(self.gw.ctl().args(["audit", "list", "--json"])))
    }

    fn has_event(&self, kind: &str, detail: &str) -> bool {
        self.audit()
            .iter()
            .any(|e| e["kind"] == kind && e["user"] == "alice" && e["detail"].as_str().unwrap_or("").contains(detail))
    }
}

fn world(name: &str) -> World {
    ensure_account(DEPLOY);
    let dir = TempDir::new(name);
    let d = dir.0.clone();
    std::fs::write(d.join("policy.toml"), "").unwrap();
    let config = Gateway::init(&d);
    // The askpass waits for a fresh TOTP step (up to 30 s) once both steps it may use
    // are spent: the gateway must wait longer than that for the answer, or the test
    // fails whenever it starts early in a 30 s window.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("auth_timeout = \"20s\""));
    std::fs::write(
        &config,
        text.replace("auth_timeout = \"20s\"", "auth_timeout = \"45s\""),
    )
    .unwrap();
    let user_ca = d.join("data/user_ca.pub");
    let opts = || SshdOptions {
        user_ca_pub: &user_ca,
        netns: None,
        host_cert: None,
        host_key: None,
        sftp: true,
    };
    let web = Sshd::start(&d, "web1", opts());
    let db = Sshd::start(&d, "db1", opts());
    std::fs::write(
        d.join("policy.toml"),
        format!(
            "[tiers.web.targets.web1]\naddress = \"127.0.0.1\"\nport = {}\nhost_keys = [\"{}\"]\n\
             [tiers.db]\nmfa_always_fresh = true\n\
             [tiers.db.targets.db1]\naddress = \"127.0.0.1\"\nport = {}\nhost_keys = [\"{}\"]\n\
             [roles.eng]\ntiers = [\"web\", \"db\"]\nlogins = [\"{DEPLOY}\"]\noperations = [\"shell\", \"exec\"]\n\
             max_session = \"1h\"\nidle_timeout = \"10m\"\nmfa_remember = \"10m\"\n",
            web.port, web.host_key_pub, db.port, db.host_key_pub
        ),
    )
    .unwrap();
    let gw = Gateway::start(&d, &config);
    let alice_key = keygen(&d, "alice");
    let bob_key = keygen(&d, "bob");
    for (u, k) in [("alice", &alice_key), ("bob", &bob_key)] {
        ok(gw
            .ctl()
            .args(["users", "add", u, "--key"])
            .arg(format!("{}.pub", k.display())));
        ok(gw.ctl().args(["roles", "bind", u, "eng"]));
    }
    let alice_totp = enrol_totp(&config, "alice");
    let bob_totp = enrol_totp(&config, "bob");
    let host_ca = std::fs::read_to_string(d.join("data/host_ca.pub")).unwrap();
    let host_key = std::fs::read_to_string(d.join("data/host_key.pub")).unwrap();
    std::fs::write(
        d.join("known_hosts"),
        format!(
            "@cert-authority web1,db1 {}\n[127.0.0.1]:{} {}\n",
            host_ca.trim(),
            gw.port,
            host_key.trim()
        ),
    )
    .unwrap();
    let alice_cfg = d.join("ssh_config_alice");
    std::fs::write(
        &alice_cfg,
        format!(
            "Host gw\n  HostName 127.0.0.1\n  Port {}\n  User alice\nHost web1 db1\n  ProxyJump gw\n\
             Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n\
             PasswordAuthentication no\n  KbdInteractiveAuthentication yes\n  BatchMode no\n\
             NumberOfPasswordPrompts 1\n  LogLevel INFO\n  ConnectTimeout 15\n",
            gw.port,
            alice_key.display(),
            d.join("known_hosts").display()
        ),
    )
    .unwrap();
    World {
        dir,
        gw,
        _web: web,
        _db: db,
        alice_cfg,
        alice_totp,
        bob_totp,
    }
}

/// An askpass program that answers `code` once, then gives up (as a person would after
/// one try), so each ssh run counts one failure.
fn fixed_answer(d: &Path, name: &str, code: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = d.join(name);
    let used = d.join(format!("{name}.used"));
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\n[ -e {u} ] && exit 1\ntouch {u}\necho {code}\n",
            u = used.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// `ssh -l DEPLOY TARGET CMD` as alice (ProxyJump), answering the prompt with `askpass`.
fn ssh_with(w: &World, askpass: &Path, target: &str, cmd: &str) -> std::process::Output {
    let mut c = Command::new("ssh");
    with_askpass(&mut c, askpass)
        .arg("-F")
        .arg(&w.alice_cfg)
        .args(["-l", DEPLOY, target, cmd])
        .stdin(Stdio::null());
    run(&mut c)
}

#[test]
fn totp_through_openssh_in_proxyjump_form_with_replay_lockout_and_unlock() {
    let w = world("mfa-totp");
    let d = w.d().to_owned();

    // 1. A person at a terminal (tmux): ProxyJump, prompted after the key, types the code.
    let sock = d.join("tmux.sock");
    let tmux = |args: &[&str]| run(Command::new("tmux").arg("-S").arg(&sock).args(args));
    let cmd = format!(
        "ssh -F {} -l {DEPLOY} web1 'echo totp-accepted; sleep 2'",
        w.alice_cfg.display()
    );
    tmux(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "120",
        "-y",
        "30",
        &cmd,
    ]);
    let screen = |want: &str| {
        let start = Instant::now();
        loop {
            let s = text(&tmux(&["capture-pane", "-p", "-t", "t"]).stdout);
            if s.contains(want) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "never saw {want:?}:\n{s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    screen("Verification code (TOTP) for alice:");
    // The enrolment used this step's code: the next step's is valid now (one step of skew).
    let typed = totp_next(&w.alice_totp);
    tmux(&["send-keys", "-t", "t", &typed, "Enter"]);
    screen("totp-accepted");
    let _ = tmux(&["kill-server"]);
    assert!(w.has_event("mfa.success", "TOTP"));

    // 2. The role remembers the proof for this workstation (here: the loopback
    //    listener) for 10 minutes: no prompt (a wrong answer would fail).
    let out = ssh_with(&w, &fixed_answer(&d, "never", "000000"), "web1", "echo remembered");
    assert_eq!(text(&out.stdout).trim(), "remembered", "{}", text(&out.stderr));

    // 3. The db tier always wants a fresh factor: a wrong code is refused.
    let out = ssh_with(&w, &fixed_answer(&d, "wrong1", "000000"), "db1", "echo no");
    assert!(
        !out.status.success() && text(&out.stdout).is_empty(),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("herse: wrong code"), "{}", text(&out.stderr));
    assert!(w.has_event("mfa.failure", "wrong code"));

    // 4. The code typed in step 1 is refused the second time.
    let out = ssh_with(&w, &fixed_answer(&d, "replay", &typed), "db1", "echo no");
    assert!(!out.status.success(), "a used code logged in");
    assert!(w.has_event("mfa.failure", "code already used"), "{:?}", w.audit());

    // 5. Bob's valid code is not alice's.
    let out = ssh_with(&w, &fixed_answer(&d, "bobs", &totp_now(&w.bob_totp)), "db1", "echo no");
    assert!(!out.status.success(), "another user's code logged in");

    // 6. Fifth failure in a row: locked, and then even the right code is refused.
    let _ = ssh_with(&w, &fixed_answer(&d, "wrong2", "000000"), "db1", "echo no");
    let out = ssh_with(&w, &fixed_answer(&d, "wrong3", "000000"), "db1", "echo no");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("second factor locked"),
        "{}",
        text(&out.stderr)
    );
    assert!(w
        .audit()
        .iter()
        .any(|e| e["kind"] == "mfa.lockout" && e["severity"] == "alert" && e["user"] == "alice"));
    let askpass = d.join("askpass");
    write_askpass(&askpass, &[("alice", &w.alice_totp)]);
    let out = ssh_with(&w, &askpass, "db1", "echo no");
    assert!(!out.status.success(), "locked user logged in");
    assert!(text(&out.stderr).contains("locked"), "{}", text(&out.stderr));

    // A user without a second factor is told so, before any prompt.
    let carol_key = keygen(&d, "carol");
    ok(w.gw
        .ctl()
        .args(["users", "add", "carol", "--key"])
        .arg(format!("{}.pub", carol_key.display())));
    ok(w.gw.ctl().args(["roles", "bind", "carol", "eng"]));
    let carol_cfg = d.join("ssh_config_carol");
    std::fs::write(
        &carol_cfg,
        std::fs::read_to_string(&w.alice_cfg)
            .unwrap()
            .replace("User alice", "User carol")
            .replace(
                &format!("{}", d.join("alice").display()),
                &format!("{}", carol_key.display()),
            ),
    )
    .unwrap();
    let out = run(with_askpass(&mut Command::new("ssh"), &askpass)
        .arg("-F")
        .arg(&carol_cfg)
        .args(["-l", DEPLOY, "web1", "true"])
        .stdin(Stdio::null()));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("carol has no second factor enrolled"),
        "{}",
        text(&out.stderr)
    );

    // 7. An admin unlocks; the right code works again.
    ok(w.gw.ctl().args(["users", "unlock", "alice"]));
    let out = ssh_with(&w, &askpass, "db1", "echo unlocked");
    assert_eq!(text(&out.stdout).trim(), "unlocked", "{}", text(&out.stderr));

    // 8. A one-time recovery code stands in for the authenticator, once.
    let codes = ok(w.gw.ctl().args(["users", "recovery-codes", "alice"]));
    let code = codes.lines().next().unwrap().trim().to_owned();
    assert_eq!(codes.lines().count(), 10, "{codes}");
    let out = ssh_with(&w, &fixed_answer(&d, "recovery1", &code), "db1", "echo recovered");
    assert_eq!(text(&out.stdout).trim(), "recovered", "{}", text(&out.stderr));
    assert!(w
        .audit()
        .iter()
        .any(|e| e["kind"] == "mfa.success" && e["severity"] == "warning" && e["detail"] == "recovery code (9 left)"));
    let out = ssh_with(&w, &fixed_answer(&d, "recovery2", &code), "db1", "echo again");
    assert!(!out.status.success(), "a recovery code worked twice");
    assert!(w.has_event("mfa.failure", "unknown or used recovery code"));
}

/// A raw SSH client (russh), to send what OpenSSH never would.
struct AcceptAny;
impl russh::client::Handler for AcceptAny {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

async fn connect(port: u16) -> russh::client::Handle<AcceptAny> {
    russh::client::connect(
        std::sync::Arc::new(russh::client::Config::default()),
        ("127.0.0.1", port),
        AcceptAny,
    )
    .await
    .unwrap()
}

/// Answer a keyboard-interactive round with `code`; true if that logged in.
async fn ki(h: &mut russh::client::Handle<AcceptAny>, user: &str, code: &str) -> bool {
    use russh::client::KeyboardInteractiveAuthResponse as R;
    match h.authenticate_keyboard_interactive_start(user, None).await {
        Ok(R::Success) => true,
        Ok(R::InfoRequest { .. }) => matches!(
            h.authenticate_keyboard_interactive_respond(vec![code.to_owned()]).await,
            Ok(R::Success)
        ),
        _ => false,
    }
}

#[test]
fn the_gateway_enforces_the_order_of_factors() {
    let w = world("mfa-order");
    let key = std::sync::Arc::new(russh::keys::load_secret_key(w.d().join("alice"), None).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let user = format!("alice+{DEPLOY}+db1");
    rt.block_on(async {
        // A valid code with no public key proven first never logs in.
        let mut h = connect(w.gw.port).await;
        assert!(
            !ki(&mut h, &user, &totp_next(&w.alice_totp)).await,
            "second factor alone logged in"
        );

        // The public key proven for alice, then a valid second factor for bob on the
        // same connection: refused.
        let mut h = connect(w.gw.port).await;
        let auth = h
            .authenticate_publickey(&user, russh::keys::PrivateKeyWithHashAlg::new(key.clone(), None))
            .await
            .unwrap();
        assert!(
            !auth.success(),
            "public key alone logged in to a tier that wants a second factor"
        );
        assert!(
            !ki(&mut h, &format!("bob+{DEPLOY}+db1"), &totp_next(&w.bob_totp)).await,
            "a factor for another user name logged in"
        );
        // ... and the state it was in is gone: alice's own code is refused too now.
        assert!(!ki(&mut h, &user, &totp_next(&w.alice_totp)).await);

        // The proper order logs in.
        let mut h = connect(w.gw.port).await;
        let auth = h
            .authenticate_publickey(&user, russh::keys::PrivateKeyWithHashAlg::new(key.clone(), None))
            .await
            .unwrap();
        assert!(!auth.success());
        assert!(ki(&mut h, &user, &totp_next(&w.alice_totp)).await, "key then code");
    });
}
