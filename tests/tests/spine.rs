//! The gateway spine, end to end: real OpenSSH clients through `herse` to real sshd
//! targets, in both ProxyJump and single-hop forms, with the refusals policy demands.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herse_e2e::*;
use session_recordings::{Event, Meta};

const DEPLOY: &str = "hdeploy";
const OPS: &str = "hops";

struct World {
    dir: TempDir,
    gw: Gateway,
    web: Sshd,
    _db: Sshd,
    alice: PathBuf,
    bob: PathBuf,
    /// otpauth URI of alice's TOTP (what her authenticator app holds).
    alice_totp: String,
    bob_totp: String,
}

thread_local! {
    /// This test's SSH_ASKPASS program (each test runs on its own thread).
    static ASKPASS: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// An OpenSSH client program that answers Herse's TOTP prompt like the user would.
fn client(program: &str) -> Command {
    let mut c = Command::new(program);
    if program == "sftp" {
        // `sftp -b` turns BatchMode on, which forbids answering the TOTP prompt; an
        // earlier -o wins.
        c.arg("-oBatchMode=no");
    }
    ASKPASS.with(|a| {
        if let Some(p) = &*a.borrow() {
            with_askpass(&mut c, p);
        }
    });
    c
}

impl World {
    fn new(name: &str) -> World {
        World::with_ssh(name, "")
    }

    /// A world whose gateway config has `ssh_lines` added to its `[ssh]` section.
    fn with_ssh(name: &str, ssh_lines: &str) -> World {
        World::with_config(name, "", ssh_lines)
    }

    /// A world whose gateway config has `top` added to its top-level settings and
    /// `ssh_lines` to its `[ssh]` section.
    fn with_config(name: &str, top: &str, ssh_lines: &str) -> World {
        ensure_account(DEPLOY);
        ensure_account(OPS);
        let dir = TempDir::new(name);
        let d = dir.0.clone();
        // Placeholder policy so `herse init` can run; rewritten once targets exist.
        std::fs::write(d.join("policy.toml"), "").unwrap();
        let config = Gateway::init_with(&d, top);
        let mut text = std::fs::read_to_string(&config).unwrap();
        if ssh_lines.contains("auth_timeout") {
            text = text.replace("auth_timeout = \"20s\"\n", "");
        }
        std::fs::write(&config, text.replacen("[ssh]\n", &format!("[ssh]\n{ssh_lines}"), 1)).unwrap();
        let user_ca = d.join("data/user_ca.pub");

        let web = Sshd::start(
            &d,
            "web1",
            SshdOptions {
                user_ca_pub: &user_ca,
                netns: None,
                host_cert: None,
                host_key: None,
                sftp: true,
            },
        );
        // db1 presents a host certificate from a site host CA (not Herse's).
        let site_ca = keygen(&d, "site_host_ca");
        let db_dir = d.join("db1");
        std::fs::create_dir_all(&db_dir).unwrap();
        let db_key = db_dir.join("host_ed25519");
        ok(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&db_key));
        ok(Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&site_ca)
            .args(["-I", "db1", "-h", "-n", "db1", "-V", "-5m:+1d"])
            .arg(format!("{}.pub", db_key.display())));
        let db_cert = PathBuf::from(format!("{}-cert.pub", db_key.display()));
        let db = Sshd::start(
            &d,
            "db1",
            SshdOptions {
                user_ca_pub: &user_ca,
                netns: None,
                host_cert: Some(&db_cert),
                host_key: Some(&db_key),
                sftp: true,
            },
        );
        let site_ca_pub = std::fs::read_to_string(format!("{}.pub", site_ca.display())).unwrap();
        let other_key = std::fs::read_to_string(format!("{}.pub", keygen(&d, "unrelated").display())).unwrap();

        let policy = format!(
            r#"
[tiers.web]
description = "web tier"
[tiers.web.targets.web1]
address = "127.0.0.1"
port = {wp}
host_keys = ["{web_key}"]
[tiers.web.targets.drop1]
address = "127.0.0.1"
port = {wp}
host_keys = ["{web_key}"]
[tiers.web.targets.web-bad]
address = "127.0.0.1"
port = {wp}
host_keys = ["{other}"]

[tiers.db.targets.db1]
address = "127.0.0.1"
port = {dp}
host_cas = ["{ca}"]
host_principal = "db1"
[tiers.db.targets.db-wrongname]
address = "127.0.0.1"
port = {dp}
host_cas = ["{ca}"]
host_principal = "db9"

[roles.web-full]
tiers = ["web"]
logins = ["{DEPLOY}"]
operations = ["shell", "exec", "sftp-read", "sftp-write", "port-forward"]
forward = ["127.0.0.1:{wp}"]
max_session = "1h"
mfa_remember = "1h"
idle_timeout = "10m"

[roles.web-shell]
tiers = ["web"]
targets = ["web1"]
logins = ["{OPS}"]
operations = ["shell"]
max_session = "1h"
mfa_remember = "1h"
idle_timeout = "10m"

[roles.web-readonly]
tiers = ["web"]
targets = ["web1"]
logins = ["{OPS}"]
operations = ["sftp-read"]
max_session = "1h"
mfa_remember = "1h"
idle_timeout = "10m"

[roles.web-dropbox]
tiers = ["web"]
targets = ["drop1"]
logins = ["{OPS}"]
operations = ["sftp-write"]
max_session = "1h"
mfa_remember = "1h"
idle_timeout = "10m"

[roles.db-exec]
tiers = ["db"]
logins = ["{DEPLOY}"]
operations = ["exec"]
max_session = "1h"
mfa_remember = "1h"
idle_timeout = "10m"
"#,
            wp = web.port,
            dp = db.port,
            web_key = web.host_key_pub,
            other = other_key.trim(),
            ca = site_ca_pub.trim(),
        );
        std::fs::write(d.join("policy.toml"), policy).unwrap();
        ok(Command::new(bin("herse")).arg("-c").arg(&config).arg("check-config"));
        let gw = Gateway::start(&d, &config);

        let alice_key = keygen(&d, "alice");
        let bob_key = keygen(&d, "bob");
        ok(gw
            .ctl()
            .args(["users", "add", "alice", "--key"])
            .arg(format!("{}.pub", alice_key.display())));
        ok(gw
            .ctl()
            .args(["users", "add", "bob", "--key"])
            .arg(format!("{}.pub", bob_key.display())));
        // Second factors: each user's TOTP, answered by an askpass program; the roles
        // remember a proof for an hour, so most connections are not asked again.
        let alice_totp = enrol_totp(&config, "alice");
        let bob_totp = enrol_totp(&config, "bob");
        let askpass = d.join("askpass");
        write_askpass(&askpass, &[("alice", &alice_totp), ("bob", &bob_totp)]);
        ASKPASS.with(|a| *a.borrow_mut() = Some(askpass));
        for (u, r) in [
            ("alice", "web-full"),
            ("alice", "db-exec"),
            ("bob", "web-shell"),
            ("bob", "web-readonly"),
            ("bob", "web-dropbox"),
        ] {
            ok(gw.ctl().args(["roles", "bind", u, r]));
        }
        let host_ca = std::fs::read_to_string(d.join("data/host_ca.pub")).unwrap();
        let host_key = std::fs::read_to_string(d.join("data/host_key.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!(
                "@cert-authority web1,drop1,web-bad,db1,db-wrongname,vault1 {}\n[127.0.0.1]:{} {}\n",
                host_ca.trim(),
                gw.port,
                host_key.trim()
            ),
        )
        .unwrap();
        let alice = client_config(&d, "alice", &alice_key, gw.port);
        let bob = client_config(&d, "bob", &bob_key, gw.port);
        World {
            dir,
            gw,
            web,
            _db: db,
            alice,
            bob,
            alice_totp,
            bob_totp,
        }
    }

    fn d(&self) -> &Path {
        &self.dir.0
    }
}

fn client_config(d: &Path, user: &str, key: &Path, gw_port: u16) -> PathBuf {
    let tag = key.file_name().unwrap().to_string_lossy();
    let p = d.join(format!("ssh_config_{user}_{tag}"));
    std::fs::write(
        &p,
        format!(
            "Host gw\n  HostName 127.0.0.1\n  Port {gw_port}\n  User {user}\n\
             Host web1 drop1 web-bad db1 db-wrongname\n  ProxyJump gw\n\
             Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n\
             PasswordAuthentication no\n  KbdInteractiveAuthentication yes\n  BatchMode no\n  KexAlgorithms curve25519-sha256\n\
             ConnectTimeout 15\n  SendEnv HERSE_TEST_*\n",
            key.display(),
            d.join("known_hosts").display()
        ),
    )
    .unwrap();
    p
}

/// Wait until the askpass program can answer `user`'s next TOTP prompt at once. It gives
/// each 30 s step once, and the gateway accepts the next step's code too; a third login
/// within one step would make it sleep into the next, past the gateway's login timeout.
fn await_fresh_totp_step(w: &World, user: &str) {
    let state = w.d().join(format!("askpass.state.{user}"));
    let last: u64 = std::fs::read_to_string(&state).unwrap().trim().parse().unwrap();
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if now / 30 >= last {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ssh(cfg: &Path) -> Command {
    let mut c = client("ssh");
    c.arg("-F").arg(cfg).stdin(Stdio::null());
    c
}

/// Replace the gateway's policy with `text` and wait until a SIGHUP has loaded it.
fn reload_policy(w: &World, text: &str) {
    std::fs::write(w.d().join("policy.toml"), text).unwrap();
    w.gw.signal("HUP");
    w.gw.wait_line("policy reloaded", Duration::from_secs(10));
}

/// Sessions end (and their recordings are sealed) just after their clients leave.
fn wait_sessions_ended(w: &World) {
    let start = Instant::now();
    while !ok(w.gw.ctl().args(["sessions", "list", "--json"])).trim().eq("[]") {
        assert!(start.elapsed() < Duration::from_secs(10), "sessions still live");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn recordings(w: &World) -> Vec<(session_recordings::Header, Vec<Event>)> {
    std::fs::read_dir(w.gw.data().join("recordings"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "herserec"))
        .map(|e| {
            let (h, ev, _) = session_recordings::RecordingReader::open(&e.unwrap().path())
                .unwrap()
                .events()
                .unwrap();
            (h, ev)
        })
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exec_exit_codes_stderr_and_env_in_both_forms() {
    let w = World::new("exec");
    // ProxyJump form.
    let out = run(ssh(&w.alice)
        .args([
            "-l",
            DEPLOY,
            "web1",
            "echo out; echo err >&2; echo \"env=$HERSE_TEST_X\"; exit 7",
        ])
        .env("HERSE_TEST_X", "passed"));
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\nenv=passed\n");
    assert!(text(&out.stderr).contains("err"));
    // Single-hop form: USER+LOGIN+TARGET.
    let out = run(ssh(&w.alice).args([&format!("alice+{DEPLOY}+web1@gw"), "id -un; exit 3"]));
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), DEPLOY);
    // A host-CA target, by the certificate it presents.
    let out = run(ssh(&w.alice).args([
        "-l",
        DEPLOY,
        "db1",
        "hostname >/dev/null && echo db-ok && cat \"$SSH_USER_AUTH\"",
    ]));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().next(), Some("db-ok"), "stderr: {}", text(&out.stderr));
    // The certificate it logged in with (sshd's ExposeAuthInfo) is usable only from the
    // gateway's address on that connection.
    let used = stdout
        .lines()
        .find_map(|l| l.strip_prefix("publickey "))
        .unwrap_or_else(|| panic!("no certificate in SSH_USER_AUTH: {stdout}"));
    let cert_file = w.dir.0.join("upstream-cert.pub");
    std::fs::write(&cert_file, format!("{used}\n")).unwrap();
    let shown = ok(Command::new("ssh-keygen").arg("-Lf").arg(&cert_file));
    assert!(shown.contains("source-address 127.0.0.1/32"), "{shown}");
    assert!(shown.contains("herse:user=alice:session="), "{shown}");

    // The upstream login used a short-lived certificate naming user and session.
    let log = std::fs::read_to_string(w.web.dir.join("sshd.log")).unwrap();
    assert!(log.contains("herse:user=alice:session="), "sshd log: {log}");

    // Every session left a recording with the command, the output and the exit code.
    wait_sessions_ended(&w);
    let recs: Vec<_> = std::fs::read_dir(w.gw.data().join("recordings"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "herserec"))
        .collect();
    assert_eq!(recs.len(), 3, "{recs:?}");
    let mut saw = false;
    for r in recs {
        let (h, events, truncated) = session_recordings::RecordingReader::open(&r).unwrap().events().unwrap();
        assert!(!truncated);
        if h.login == DEPLOY
            && h.target == "web1"
            && events.iter().any(|e| {
                matches!(
                    e,
                    session_recordings::Event::Meta {
                        meta: session_recordings::Meta::ExitStatus { code: 7 },
                        ..
                    }
                )
            })
        {
            assert!(events.iter().any(|e| matches!(e, session_recordings::Event::Meta { meta: session_recordings::Meta::Exec { command, .. }, .. } if command.contains("exit 7"))));
            let stdout: Vec<u8> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Data {
                        direction: session_recordings::DataDirection::Output,
                        data,
                        ..
                    } => Some(data.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(stdout, b"out\nenv=passed\n");
            assert!(events.iter().any(|e| matches!(
                e,
                session_recordings::Event::Data {
                    direction: session_recordings::DataDirection::Stderr,
                    ..
                }
            )));
            assert!(matches!(
                events.last(),
                Some(session_recordings::Event::Meta {
                    meta: session_recordings::Meta::End { .. },
                    ..
                })
            ));
            saw = true;
        }
    }
    assert!(saw, "no recording of the exit-7 session");
    // A command carrying terminal escapes (here one that would erase the line naming it)
    // reaches an auditor's terminal written out, never acted on.
    let sly = "echo quiet # \u{1b}[2K\r\u{1b}]0;title\u{7}";
    ok(ssh(&w.alice).args(["-l", DEPLOY, "web1", sly]));
    let (header, _) = recordings(&w)
        .into_iter()
        .find(|(_, ev)| {
            ev.iter()
                .any(|e| matches!(e, Event::Meta { meta: Meta::Exec { command, .. }, .. } if command == sly))
        })
        .unwrap();
    let shown = ok(w.gw.ctl().args(["recordings", "show", &header.session_id]));
    assert!(
        shown.contains("echo quiet # \\u{1b}[2K\\u{d}\\u{1b}]0;title\\u{7}"),
        "{shown}"
    );
    assert!(!shown.contains(['\u{1b}', '\r', '\u{7}']), "{shown:?}");
    let transcript = ok(w
        .gw
        .ctl()
        .args(["recordings", "export", &header.session_id, "--format", "text"]));
    assert!(transcript.contains("$ echo quiet # \\u{1b}[2K"), "{transcript}");
    assert!(!transcript.contains(['\u{1b}', '\r', '\u{7}']), "{transcript:?}");
}

#[test]
fn interactive_shell_under_a_pty_with_resize() {
    let w = World::new("pty");
    let sock = w.d().join("tmux.sock");
    let tmux = |args: &[&str]| {
        let mut c = client("tmux");
        c.arg("-S").arg(&sock).args(args);
        run(&mut c)
    };
    let cmd = format!("ssh -F {} -l {OPS} web1", w.bob.display());
    let _ = tmux(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "100",
        "-y",
        "30",
        &cmd,
    ]);
    let screen = |want: &str| {
        let start = Instant::now();
        loop {
            let out = tmux(&["capture-pane", "-p", "-t", "t"]);
            let s = text(&out.stdout);
            if s.contains(want) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "never saw {want:?} on screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    tmux(&[
        "send-keys",
        "-t",
        "t",
        "tty; echo cols=$(tput cols 2>/dev/null || stty size)",
        "Enter",
    ]);
    screen("/dev/pts/");
    tmux(&["send-keys", "-t", "t", "echo sum=$((40+2)) size=$(stty size)", "Enter"]);
    screen("sum=42 size=30 100");
    tmux(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux(&["send-keys", "-t", "t", "echo now=$(stty size)", "Enter"]);
    screen("now=40 120");
    tmux(&["send-keys", "-t", "t", "exit", "Enter"]);
    let start = Instant::now();
    while tmux(&["has-session", "-t", "t"]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(10), "ssh did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = tmux(&["kill-server"]);
}

#[test]
fn file_transfers_scp_sftp_rsync_and_256_mib() {
    let w = World::new("files");
    let d = w.d().to_owned();
    let big = d.join("big.bin");
    ok(Command::new("head")
        .args(["-c", "256M", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).unwrap()));
    let want = sha256_file(&big);
    let remote_dir = format!("/home/{DEPLOY}/herse-files-{}", std::process::id());
    ok(ssh(&w.alice).args([
        "-l",
        DEPLOY,
        "web1",
        &format!("rm -rf {remote_dir}; mkdir -p {remote_dir}"),
    ]));

    // scp up (OpenSSH 9 scp speaks SFTP) and the remote hash matches.
    let start = Instant::now();
    ok(client("scp")
        .arg("-F")
        .arg(&w.alice)
        .arg(&big)
        .arg(format!("{DEPLOY}@web1:{remote_dir}/big.bin")));
    let up = start.elapsed();
    let remote = ok(ssh(&w.alice).args(["-l", DEPLOY, "web1", &format!("sha256sum {remote_dir}/big.bin")]));
    assert_eq!(remote.split_whitespace().next().unwrap(), want);
    // ...and back down through a plain exec stream.
    let back = d.join("back.bin");
    ok(ssh(&w.alice)
        .args(["-l", DEPLOY, "web1", &format!("cat {remote_dir}/big.bin")])
        .stdout(std::fs::File::create(&back).unwrap()));
    assert_eq!(sha256_file(&back), want);
    eprintln!("256 MiB scp upload through herse took {up:?}");
    // The recording of that upload names the file, its size and its SHA-256.
    let found = recordings(&w).into_iter().any(|(_, events)| {
        events.iter().any(|e| {
            matches!(e, Event::Meta { meta: Meta::SftpFile { path, bytes_written, sha256_written: Some(h), .. }, .. }
            if path.ends_with("/big.bin") && *bytes_written == 256 << 20 && *h == want)
        })
    });
    assert!(found, "no SftpFile event with the upload's size and hash");
    std::fs::remove_file(&back).unwrap();

    // scp down.
    let small = d.join("small.txt");
    std::fs::write(&small, "hello herse\n").unwrap();
    ok(client("scp")
        .arg("-F")
        .arg(&w.alice)
        .arg(&small)
        .arg(format!("{DEPLOY}@web1:{remote_dir}/small.txt")));
    let down = d.join("down.txt");
    ok(client("scp")
        .arg("-F")
        .arg(&w.alice)
        .arg(format!("{DEPLOY}@web1:{remote_dir}/small.txt"))
        .arg(&down));
    assert_eq!(std::fs::read_to_string(&down).unwrap(), "hello herse\n");

    // sftp: put (keeping mode and times: FSETSTAT), chmod (SETSTAT), cp (the target's
    // copy-data), ls, rename, get, rm.
    let batch = d.join("batch");
    std::fs::write(
        &batch,
        format!(
            "cd {remote_dir}\nput -p {} put.txt\nchmod 640 put.txt\ncp put.txt copy.txt\nls\n\
             rename put.txt renamed.txt\nget renamed.txt {}\nrm renamed.txt\nrm copy.txt\nls\n",
            small.display(),
            d.join("got.txt").display()
        ),
    )
    .unwrap();
    let out = ok(client("sftp")
        .arg("-F")
        .arg(&w.alice)
        .arg("-b")
        .arg(&batch)
        .arg(format!("{DEPLOY}@web1")));
    assert!(out.contains("put.txt"), "{out}");
    assert_eq!(std::fs::read_to_string(d.join("got.txt")).unwrap(), "hello herse\n");
    let listing = ok(ssh(&w.alice).args(["-l", DEPLOY, "web1", &format!("ls {remote_dir}")]));
    let ops: Vec<(String, String)> = recordings(&w)
        .into_iter()
        .flat_map(|(_, events)| events)
        .filter_map(|e| match e {
            Event::Meta {
                meta:
                    Meta::SftpOp {
                        op,
                        path,
                        target,
                        detail,
                        outcome,
                        ..
                    },
                ..
            } => Some((
                op,
                format!(
                    "{path} {} {} {outcome}",
                    target.unwrap_or_default(),
                    detail.unwrap_or_default()
                ),
            )),
            _ => None,
        })
        .collect();
    // What the attribute changes set, and both files of the copy.
    let small_mode = std::fs::metadata(&small).unwrap().permissions().mode() & 0o7777;
    let small_mtime = std::fs::metadata(&small).unwrap().mtime();
    assert!(
        ops.iter().any(|(op, p)| op == "fsetstat"
            && p.contains("/put.txt ")
            && p.contains(&format!("mode {small_mode:04o}"))
            && p.contains(&format!("/{small_mtime}"))
            && p.ends_with(" ok")),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .any(|(op, p)| op == "setstat" && p.contains("/put.txt ") && p.contains("mode 0640") && p.ends_with(" ok")),
        "{ops:?}"
    );
    assert!(
        ops.iter().any(|(op, p)| op == "copy-data"
            && p.contains("/put.txt ")
            && p.contains("/copy.txt ")
            && p.contains("to the end")
            && p.ends_with(" ok")),
        "{ops:?}"
    );
    // `recordings show` lists them with what they set.
    let sftp_session = recordings(&w)
        .into_iter()
        .find(|(_, ev)| {
            ev.iter()
                .any(|e| matches!(e, Event::Meta { meta: Meta::SftpOp { op, .. }, .. } if op == "copy-data"))
        })
        .unwrap()
        .0
        .session_id;
    let shown: serde_json::Value =
        serde_json::from_str(&ok(w.gw.ctl().args(["recordings", "show", &sftp_session, "--json"]))).unwrap();
    assert!(
        shown["sftp"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("setstat ")
                && l.as_str().unwrap().ends_with("/put.txt (mode 0640) -> ok")),
        "{shown}"
    );
    assert!(
        ops.iter().any(|(op, p)| op == "rename"
            && p.contains("/put.txt /")
            && p.contains("/renamed.txt ")
            && p.ends_with(" ok")),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .any(|(op, p)| op == "remove" && p.contains("/renamed.txt ") && p.ends_with(" ok")),
        "{ops:?}"
    );
    assert!(
        !listing.contains("renamed.txt") && !listing.contains("put.txt"),
        "{listing}"
    );

    // rsync over ssh, both ways.
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::set_permissions(tree.join("sub"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    for i in 0..20 {
        std::fs::write(
            tree.join("sub").join(format!("f{i}")),
            format!("file {i}\n").repeat(i * 100 + 1),
        )
        .unwrap();
    }
    let e = format!("ssh -F {} -l {DEPLOY}", w.alice.display());
    ok(client("rsync")
        .args(["-a", "-e", &e])
        .arg(format!("{}/", tree.display()))
        .arg(format!("web1:{remote_dir}/tree/")));
    let back = d.join("tree-back");
    ok(client("rsync")
        .args(["-a", "-e", &e])
        .arg(format!("web1:{remote_dir}/tree/"))
        .arg(format!("{}/", back.display())));
    let diff = run(Command::new("diff").arg("-r").arg(&tree).arg(&back));
    assert!(diff.status.success(), "{}", text(&diff.stdout));

    // Legacy scp of a tree with files the login cannot read: each is a warning in the
    // stream, and every file after it is still recorded with its size and hash.
    let unreadable = [3, 7, 11];
    ok(ssh(&w.alice).args([
        "-l",
        DEPLOY,
        "web1",
        &format!("cd {remote_dir}/tree/sub && chmod 000 f3 f7 f11"),
    ]));
    let legacy = d.join("legacy-tree");
    let out = run(client("scp")
        .args(["-O", "-r", "-F"])
        .arg(&w.alice)
        .arg(format!("{DEPLOY}@web1:{remote_dir}/tree"))
        .arg(&legacy));
    assert!(!out.status.success(), "scp reports the unreadable files");
    assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));
    let mut want: Vec<(String, u64, String)> = (0..20)
        .filter(|i| !unreadable.contains(i))
        .map(|i| {
            let f = tree.join("sub").join(format!("f{i}"));
            assert_eq!(
                std::fs::read(&f).unwrap(),
                std::fs::read(legacy.join("sub").join(format!("f{i}"))).unwrap()
            );
            (
                format!("{remote_dir}/tree/sub/f{i}"),
                std::fs::metadata(&f).unwrap().len(),
                sha256_file(&f),
            )
        })
        .collect();
    want.sort();
    let session = recordings(&w)
        .into_iter()
        .find(|(_, ev)| {
            ev.iter().any(
                |e| matches!(e, Event::Meta { meta: Meta::Exec { command, .. }, .. } if command.starts_with("scp -r") && command.ends_with("/tree")),
            )
        })
        .unwrap()
        .1;
    let mut got: Vec<(String, u64, String)> = session
        .iter()
        .filter_map(|e| match e {
            Event::Meta {
                meta:
                    Meta::FileTransfer {
                        path,
                        bytes,
                        sha256: Some(h),
                        upload: false,
                        ..
                    },
                ..
            } => Some((path.clone(), *bytes, h.clone())),
            _ => None,
        })
        .collect();
    got.sort();
    assert_eq!(got, want);
    // The directories, with the modes the client makes them with.
    let dirs: Vec<(String, String)> = session
        .iter()
        .filter_map(|e| match e {
            Event::Meta {
                meta:
                    Meta::FileTransfer {
                        path,
                        mode: Some(mode),
                        directory: true,
                        ..
                    },
                ..
            } => Some((path.clone(), mode.clone())),
            _ => None,
        })
        .collect();
    let mode_of = |p: &Path| format!("{:04o}", std::fs::metadata(p).unwrap().permissions().mode() & 0o7777);
    assert_eq!(
        dirs,
        [
            (format!("{remote_dir}/tree"), mode_of(&tree)),
            (format!("{remote_dir}/tree/sub"), mode_of(&tree.join("sub")))
        ]
    );
    assert!(
        !session.iter().any(|e| matches!(
            e,
            Event::Meta {
                meta: Meta::Untracked { .. },
                ..
            }
        )),
        "the warnings did not stop the following"
    );
    // A legacy upload to a new name: recorded at that name, with the sender's name
    // beside it (the gateway cannot see whether the path is a directory), and listed
    // by `recordings show`. Under -p with a back-dated time, which the target sets and
    // the recording shows.
    let back_dated: i64 = 981_173_106; // 2001-02-03T04:05:06Z
    ok(Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!("@{back_dated}"))
        .arg(&small));
    ok(client("scp")
        .args(["-O", "-p", "-F"])
        .arg(&w.alice)
        .arg(&small)
        .arg(format!("{DEPLOY}@web1:{remote_dir}/legacy-up.txt")));
    let landed = std::fs::metadata(format!("{remote_dir}/legacy-up.txt")).unwrap();
    assert_eq!(landed.mtime(), back_dated);
    let (header, events) = recordings(&w)
        .into_iter()
        .find(|(_, ev)| {
            ev.iter().any(
                |e| matches!(e, Event::Meta { meta: Meta::Exec { command, .. }, .. } if command.ends_with("/legacy-up.txt")),
            )
        })
        .unwrap();
    let want_path = format!("{remote_dir}/legacy-up.txt");
    assert!(
        events.iter().any(|e| matches!(e,
            Event::Meta { meta: Meta::FileTransfer { path, sent_as: Some(n), bytes: 12, upload: true, mtime: Some(t), atime: Some(_), .. }, .. }
            if *path == want_path && n == "small.txt" && *t == back_dated)),
        "{events:?}"
    );
    let shown: serde_json::Value = serde_json::from_str(&ok(w.gw.ctl().args([
        "recordings",
        "show",
        &header.session_id,
        "--json",
    ])))
    .unwrap();
    let line = format!(
        "scp upload {want_path} (sent as small.txt): 12 B, mode {small_mode:04o}, mtime 2001-02-03T04:05:06Z, atime "
    );
    let hash = format!(" (sha256 {})", sha256_file(&small));
    assert!(
        shown["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l.as_str())
            .any(|l| l.starts_with(&line) && l.ends_with(&hash)),
        "{line}: {shown}"
    );
    // A crafted sender: the record for `tree` (a directory there, which the target's
    // scp cannot open as a file, so it reads on) is sized to take the next record for
    // its data. The target writes the file that record names, and so does the recording.
    let planted = b"C0600 4 planted.txt\nssh!\0";
    let mut stream = format!("C0644 {} tree\n", planted.len()).into_bytes();
    stream.extend_from_slice(planted);
    let mut crafted = ssh(&w.alice)
        .args(["-l", DEPLOY, "web1", &format!("scp -t {remote_dir}/")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crafted.stdin.take().unwrap().write_all(&stream).unwrap();
    let answers = crafted.wait_with_output().unwrap();
    let remote = run(ssh(&w.alice).args(["-l", DEPLOY, "web1", &format!("cat {remote_dir}/planted.txt")]));
    assert_eq!(
        text(&remote.stdout),
        "ssh!",
        "{:?} {}",
        text(&answers.stdout),
        text(&answers.stderr)
    );
    let session = recordings(&w)
        .into_iter()
        .find(|(_, ev)| {
            ev.iter().any(
                |e| matches!(e, Event::Meta { meta: Meta::Exec { command, .. }, .. } if *command == format!("scp -t {remote_dir}/")),
            )
        })
        .unwrap()
        .1;
    let moved: Vec<String> = session
        .iter()
        .filter_map(|e| match e {
            Event::Meta {
                meta: Meta::FileTransfer { path, bytes, .. },
                ..
            } => Some(format!("{path} {bytes}")),
            _ => None,
        })
        .collect();
    assert_eq!(moved, [format!("{remote_dir}/planted.txt 4")]);
    ok(ssh(&w.alice).args(["-l", DEPLOY, "web1", &format!("rm -rf {remote_dir}")]));
}

#[test]
fn slow_reader_does_not_grow_gateway_memory() {
    let w = World::new("slow");
    let before = w.gw.rss_kib();
    // The target writes without end; the client reads nothing for a while.
    let mut child = ssh(&w.alice)
        .args(["-l", DEPLOY, "web1", "cat /dev/zero"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Prime: make sure data flows, then stop reading.
    let mut buf = vec![0u8; 1 << 20];
    stdout.read_exact(&mut buf).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let stalled = w.gw.rss_kib();
    // Reading resumes and the stream is intact.
    let mut total = 0usize;
    let start = Instant::now();
    while total < 64 << 20 && start.elapsed() < Duration::from_secs(60) {
        let n = stdout.read(&mut buf).unwrap();
        assert!(buf[..n].iter().all(|b| *b == 0));
        total += n;
    }
    let after = w.gw.rss_kib();
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("gateway RSS: before {before} KiB, stalled {stalled} KiB, after 64 MiB {after} KiB");
    assert!(total >= 64 << 20, "stream stalled for good");
    assert!(
        stalled < before + 48 * 1024,
        "gateway buffered while the reader stalled: {before} -> {stalled} KiB"
    );
    assert!(
        after < before + 64 * 1024,
        "gateway memory grew: {before} -> {after} KiB"
    );
}

/// Both directions of one channel at full speed at once: the client writes while the
/// target echoes everything back, so each side's window waits on the other's reader.
#[test]
fn full_duplex_echo_does_not_stall() {
    let w = World::new("duplex");
    let mut child = ssh(&w.alice)
        .args(["-l", DEPLOY, "web1", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    const TOTAL: usize = 200 << 20;
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut block = vec![0u8; 1 << 16];
        let mut sent = 0usize;
        while sent < TOTAL {
            for (i, b) in block.iter_mut().enumerate() {
                *b = ((sent + i) % 251) as u8;
            }
            if stdin.write_all(&block).is_err() {
                break;
            }
            sent += block.len();
        }
        sent
    });
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        let mut intact = true;
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    intact &= buf[..n].iter().enumerate().all(|(i, b)| *b == ((got + i) % 251) as u8);
                    got += n;
                }
            }
        }
        let _ = tx.send((got, intact));
    });
    // A stall shows as the reader not finishing; killing the client then frees the writer.
    let outcome = rx.recv_timeout(Duration::from_secs(120));
    let _ = child.kill();
    let status = child.wait().unwrap();
    let sent = writer.join().unwrap();
    let (got, intact) = outcome.expect("the echo stalled");
    assert_eq!(sent, TOTAL, "the client could not write everything");
    assert_eq!(got, TOTAL, "echoed {got} of {TOTAL} bytes (exit {status})");
    assert!(intact, "the echoed stream differs from what was sent");
}

fn refused(out: &std::process::Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected a refusal, got success: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(err.contains(needle), "expected {needle:?} in stderr:\n{err}");
}

#[test]
fn refusals_are_clear_and_audited() {
    let w = World::new("refuse");
    // Unknown user key.
    let stranger = keygen(w.d(), "stranger");
    let cfg = client_config(w.d(), "alice", &stranger, w.gw.port);
    refused(
        &run(ssh(&cfg).args(["-l", DEPLOY, "web1", "true"])),
        "Permission denied",
    );
    // Login not allowed.
    refused(
        &run(ssh(&w.alice).args(["-l", "root", "web1", "true"])),
        "login root is not allowed on web1",
    );
    refused(
        &run(ssh(&w.alice).args(["alice+root+web1@gw", "true"])),
        "login root is not allowed on web1",
    );
    // Tier not allowed.
    refused(&run(ssh(&w.bob).args(["-l", OPS, "db1", "true"])), "covers tier db");
    // Target not allowed by the role's target list.
    refused(
        &run(ssh(&w.bob).args(["-l", OPS, "web-bad", "true"])),
        "none of your roles allows target web-bad",
    );
    // Unknown target in ProxyJump form.
    refused(
        &run(ssh(&w.alice).args(["-J", "gw", "-l", DEPLOY, "nosuch", "true"])),
        "open failed",
    );
    // Exec under a shell-only role.
    refused(&run(ssh(&w.bob).args(["-l", OPS, "web1", "id"])), "exec is not allowed");
    // SFTP under a role without SFTP.
    let out = run(client("sftp")
        .arg("-F")
        .arg(&w.alice)
        .arg("-b")
        .arg("/dev/null")
        .arg(format!("{DEPLOY}@db1")));
    assert!(!out.status.success());
    // Port forwarding: allowed to the listed host:port, refused elsewhere.
    let mut fwd = ssh(&w.alice)
        .args(["-l", DEPLOY, "-W", &format!("127.0.0.1:{}", w.web.port), "web1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = [0u8; 8];
    fwd.stdout.as_mut().unwrap().read_exact(&mut banner).unwrap();
    assert_eq!(
        &banner, b"SSH-2.0-",
        "the forwarded port answers with the target's sshd banner"
    );
    let _ = fwd.stdin.as_mut().unwrap().write_all(b"bye\r\n");
    let _ = fwd.kill();
    let _ = fwd.wait();
    wait_sessions_ended(&w);
    let forwarded = recordings(&w).into_iter().flat_map(|(_, ev)| ev).any(|e| {
        matches!(e, Event::Meta { meta: Meta::ForwardClosed { bytes_in, bytes_out }, .. } if bytes_out >= 8 && bytes_in < 1 << 20)
    });
    assert!(forwarded, "the port forward's byte totals are recorded");
    refused(
        &run(ssh(&w.alice).args(["-l", DEPLOY, "-W", "127.0.0.1:1", "web1"])),
        "open failed",
    );
    // Remote forwarding is never served: refused, and audited.
    refused(
        &run(ssh(&w.alice).args([
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:22",
            &format!("alice+{DEPLOY}+web1@gw"),
            "true",
        ])),
        "forwarding failed",
    );
    let denied = ok(w.gw.ctl().args(["audit", "list", "--kind", "access.denied", "--json"]));
    assert!(
        denied.contains(":0: not served by the gateway") && denied.contains("remote port forwarding of"),
        "{denied}"
    );
    refused(
        &run(ssh(&w.bob).args(["-l", OPS, "-W", &format!("127.0.0.1:{}", w.web.port), "web1"])),
        "open failed",
    );
    // Host key mismatch, and a host certificate for the wrong principal.
    refused(
        &run(ssh(&w.alice).args(["-l", DEPLOY, "web-bad", "true"])),
        "host key verification failed for web-bad",
    );
    refused(
        &run(ssh(&w.alice).args(["-l", DEPLOY, "db-wrongname", "true"])),
        "does not name db9",
    );

    let audit = ok(w.gw.ctl().args(["audit", "list", "--json", "--limit", "500"]));
    let events = json_lines(&audit);
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"login.failure"), "{kinds:?}");
    assert!(
        kinds.iter().filter(|k| **k == "access.denied").count() >= 5,
        "{kinds:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "upstream.failed" && e["severity"] == "alert"),
        "host key mismatch is an alert"
    );
    // A refused login never produced a session.
    let sessions = ok(w.gw.ctl().args(["sessions", "list", "--all", "--json"]));
    let sessions: Vec<serde_json::Value> = serde_json::from_str(&sessions).unwrap();
    assert!(sessions.iter().all(|s| s["login"] != "root"));
}

#[test]
fn sighup_reload_keeps_old_policy_when_broken_and_sessions_kill() {
    let w = World::new("reload");
    let policy_path = w.d().join("policy.toml");
    let good = std::fs::read_to_string(&policy_path).unwrap();

    // A live shell, held open.
    let mut live = ssh(&w.bob)
        .args(["-tt", "-l", OPS, "web1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    live.stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo ready-$((1+1))\n")
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("ready-2") {
        let n = live.stdout.as_mut().unwrap().read(&mut buf).unwrap();
        assert!(n > 0, "shell closed early: {seen}");
        seen.push_str(&text(&buf[..n]));
    }

    // Broken policy: refused, old one stays, the live session goes on, an audit event says so.
    std::fs::write(
        &policy_path,
        good.replace("operations = [\"shell\"]", "operations = [\"shell\", \"teleport\"]"),
    )
    .unwrap();
    let check = run(Command::new(bin("herse"))
        .arg("-c")
        .arg(&w.gw.config)
        .arg("check-config"));
    assert_eq!(check.status.code(), Some(2));
    assert!(text(&check.stderr).contains("policy.toml:"), "{}", text(&check.stderr));
    w.gw.signal("HUP");
    w.gw.wait_line("policy reload refused", Duration::from_secs(10));
    // The old policy still rules: bob's role still has no exec.
    refused(&run(ssh(&w.bob).args(["-l", OPS, "web1", "echo x"])), "exec");
    let audit = ok(w
        .gw
        .ctl()
        .args(["audit", "list", "--kind", "policy.reload_refused", "--json"]));
    assert!(audit.contains("teleport"), "{audit}");

    // A valid change takes effect for new sessions.
    std::fs::write(
        &policy_path,
        good.replace("operations = [\"shell\"]", "operations = [\"shell\", \"exec\"]"),
    )
    .unwrap();
    w.gw.signal("HUP");
    w.gw.wait_line("policy reloaded", Duration::from_secs(10));
    let out = run(ssh(&w.bob).args(["-l", OPS, "web1", "echo now-allowed"]));
    assert_eq!(text(&out.stdout).trim(), "now-allowed", "{}", text(&out.stderr));

    // The shell opened before both reloads is still alive: kill it through hersectl.
    let list = ok(w.gw.ctl().args(["sessions", "list", "--json"]));
    let sessions: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    let id = sessions
        .iter()
        .find(|s| s["user"] == "bob")
        .expect("bob's live session")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let start = Instant::now();
    let out = ok(w.gw.ctl().args(["sessions", "kill", &id]));
    assert!(out.contains("ended"), "{out}");
    let status = loop {
        if let Some(s) = live.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "ssh still running after kill");
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    eprintln!("sessions kill ended the client in {took:?}");
    assert!(took < Duration::from_millis(1500), "kill took {took:?}");
    assert!(!status.success());
    let mut err = String::new();
    live.stderr.as_mut().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("killed by local:"), "client was told why: {err}");
}

/// Start alice's session on web1 running `cmd`, under a terminal (`-tt`) or not, with its
/// stdin kept open (and written to only by the test) and its stdout drained by a thread.
fn idle_probe(w: &World, terminal: bool, cmd: &str) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut c = ssh(&w.alice);
    if terminal {
        c.arg("-tt");
    }
    let mut child = c
        .args(["-l", DEPLOY, "web1", cmd])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    (child, reader)
}

#[test]
fn the_idle_timeout_counts_the_clients_activity_not_a_terminals_output() {
    // An unattended terminal that the target keeps writing to is idle (as Teleport's
    // client idle timeout has it); a transfer or a command's output without a terminal
    // is activity; keystrokes are.
    let w = World::new("idletimeout");
    let policy_path = w.d().join("policy.toml");
    let good = std::fs::read_to_string(&policy_path).unwrap();
    reload_policy(&w, &good.replace("idle_timeout = \"10m\"", "idle_timeout = \"3s\""));
    // The first login proves the second factor; the role remembers it for the others.
    ok(ssh(&w.alice).args(["-l", DEPLOY, "web1", "true"]));
    wait_sessions_ended(&w);

    let (mut top, top_out) = idle_probe(&w, true, "while :; do echo tick; sleep 0.3; done");
    let (mut job, job_out) = idle_probe(
        &w,
        false,
        "sleep 1; for i in $(seq 1 25); do echo line$i; sleep 0.3; done",
    );
    let (mut typed, typed_out) = idle_probe(&w, true, "cat");
    let (mut silent, _silent_out) = idle_probe(&w, false, "sleep 60");
    let start = Instant::now();
    while json_rows(&ok(w.gw.ctl().args(["sessions", "list", "--json"]))).len() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the four sessions did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = Instant::now();
    // Keystrokes every 600 ms for 7 s (past two idle timeouts) keep the terminal alive.
    let stdin = typed.stdin.as_mut().unwrap();
    while start.elapsed() < Duration::from_secs(7) {
        stdin.write_all(b"key\n").unwrap();
        std::thread::sleep(Duration::from_millis(600));
    }
    assert!(
        typed.try_wait().unwrap().is_none(),
        "a session being typed into was cut"
    );
    // The terminal's output alone did not keep it alive.
    let err = exits_within(&mut top, Duration::from_secs(3));
    assert!(err.contains("idle timeout"), "{err}");
    assert!(top_out.join().unwrap().contains("tick"));
    let err = exits_within(&mut silent, Duration::from_secs(3));
    assert!(err.contains("idle timeout"), "{err}");
    // Output without a terminal kept the job's session alive to its end (8.5 s).
    let status = loop {
        if let Some(st) = job.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the job did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    job.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "the job's session was cut: {err}");
    assert!(job_out.join().unwrap().contains("line25"));
    // Once the typing stops, the typed-into terminal goes idle as well.
    let err = exits_within(&mut typed, Duration::from_secs(8));
    assert!(err.contains("idle timeout"), "{err}");
    assert!(typed_out.join().unwrap().contains("key"));
    let audit = ok(w.gw.ctl().args(["audit", "list", "--json"]));
    assert_eq!(audit.matches("\"detail\":\"idle timeout\"").count(), 3, "{audit}");
}

#[test]
fn suspension_cuts_live_sessions_and_blocks_logins() {
    let w = World::new("suspend");
    let mut live = ssh(&w.alice)
        .args(["-l", DEPLOY, "web1", "sleep 60"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the session row.
    let start = Instant::now();
    loop {
        let list = ok(w.gw.ctl().args(["sessions", "list", "--json"]));
        if list.contains("alice") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    ok(w.gw
        .ctl()
        .args(["users", "suspend", "alice", "--reason", "offboarding"]));
    loop {
        if live.try_wait().unwrap().is_some() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "session survived suspension");
        std::thread::sleep(Duration::from_millis(20));
    }
    refused(
        &run(ssh(&w.alice).args(["-l", DEPLOY, "web1", "true"])),
        "Permission denied",
    );
    ok(w.gw.ctl().args(["users", "resume", "alice"]));
    // Suspension forgot alice's remembered proof: she is asked for a code again.
    await_fresh_totp_step(&w, "alice");
    let out = run(ssh(&w.alice).args(["-l", DEPLOY, "web1", "echo back"]));
    assert_eq!(text(&out.stdout).trim(), "back");
}

#[test]
fn init_refuses_to_overwrite_and_sigterm_drains() {
    let w = World::new("init");
    let out = run(Command::new(bin("herse")).arg("-c").arg(&w.gw.config).arg("init"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refusing to overwrite"),
        "{}",
        text(&out.stderr)
    );
    // No private key is stored in plaintext in the data directory.
    for entry in std::fs::read_dir(w.gw.data()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !text(&bytes).contains("PRIVATE KEY"),
                "{} holds a private key",
                p.display()
            );
        }
    }
    let targets = ok(w.gw.ctl().args(["targets", "check", "web1", "--json"]));
    assert!(targets.contains("\"host_key_ok\": true"), "{targets}");
    let bad = run(w.gw.ctl().args(["targets", "check", "web-bad"]));
    assert_eq!(bad.status.code(), Some(1));

    let mut gw = w.gw;
    gw.signal("TERM");
    let mut p = gw.proc.take().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "herse did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn a_request_the_target_refuses_ends_the_channel_with_the_reason() {
    let w = World::new("targetrefuses");
    let d = w.d().to_owned();
    // A web-tier target without an sftp subsystem: alice's role allows sftp there, the
    // target does not serve it. OpenSSH's client, talking to it directly, reports the
    // failed request and exits; through the gateway it must not wait on an open channel.
    let bare = Sshd::start(
        &d,
        "web-bare",
        SshdOptions {
            user_ca_pub: &d.join("data/user_ca.pub"),
            netns: None,
            host_cert: None,
            host_key: None,
            sftp: false,
        },
    );
    let policy_path = d.join("policy.toml");
    let mut policy = std::fs::read_to_string(&policy_path).unwrap();
    policy.push_str(&format!(
        "\n[tiers.web.targets.web-bare]\naddress = \"127.0.0.1\"\nport = {}\nhost_keys = [\"{}\"]\n",
        bare.port, bare.host_key_pub
    ));
    reload_policy(&w, &policy);
    let host_ca = std::fs::read_to_string(d.join("data/host_ca.pub")).unwrap();
    let mut known = std::fs::read_to_string(d.join("known_hosts")).unwrap();
    known.push_str(&format!("@cert-authority web-bare {}\n", host_ca.trim()));
    std::fs::write(d.join("known_hosts"), known).unwrap();
    std::fs::write(d.join("batch"), "ls\n").unwrap();

    let mut sftp = client("sftp")
        .arg("-F")
        .arg(&w.alice)
        .args(["-J", "gw", "-b"])
        .arg(d.join("batch"))
        .arg(format!("{DEPLOY}@web-bare"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while sftp.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = sftp.kill();
            panic!("sftp still waiting 20 s after the target refused its subsystem");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = sftp.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("herse: target web-bare refused the subsystem sftp request"),
        "{}",
        text(&out.stderr)
    );
    // The same target still runs commands.
    let out = run(ssh(&w.alice).args(["-J", "gw", "-l", DEPLOY, "web-bare", "echo served"]));
    assert_eq!(text(&out.stdout), "served\n", "{}", text(&out.stderr));
    // A target that refuses terminals (PermitTTY no): as with OpenSSH's "PTY allocation
    // request failed", the command runs without one and the user is told.
    let cfg = bare.dir.join("sshd_config");
    let mut c = std::fs::read_to_string(&cfg).unwrap();
    c.push_str("PermitTTY no\n");
    std::fs::write(&cfg, c).unwrap();
    ok(Command::new("kill").args(["-HUP", &bare.proc.child.id().to_string()]));
    std::thread::sleep(Duration::from_millis(500)); // sshd re-executes itself
    let out = run(ssh(&w.alice).args(["-tt", "-J", "gw", "-l", DEPLOY, "web-bare", "tty; echo ran"]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains("not a tty") && stdout.contains("ran"),
        "{stdout} / {stderr}"
    );
    assert!(
        stderr.contains("herse: target web-bare refused a terminal; running without one"),
        "{stdout} / {stderr}"
    );
    // The recording says why the channel ended.
    wait_sessions_ended(&w);
    let denied: Vec<String> = recordings(&w)
        .into_iter()
        .flat_map(|(_, events)| events)
        .filter_map(|e| match e {
            Event::Meta {
                meta: Meta::Denied { reason, .. },
                ..
            } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        denied.iter().any(|r| r.contains("refused the subsystem sftp request")),
        "{denied:?}"
    );
    assert!(
        denied.iter().any(|r| r == "target web-bare refused a terminal"),
        "{denied:?}"
    );
}

#[test]
fn read_only_sftp_refuses_writes_and_allows_reads() {
    let w = World::new("sftpro");
    let home = format!("/home/{OPS}");
    let file = format!("{home}/herse-ro-{}.txt", std::process::id());
    std::fs::write(&file, "read me\n").unwrap();
    ok(Command::new("chown").arg(format!("{OPS}:{OPS}")).arg(&file));
    let local = w.d().join("upload.txt");
    std::fs::write(&local, "nope\n").unwrap();
    let name = Path::new(&file).file_name().unwrap().to_string_lossy().into_owned();
    let batch = |cmds: &str| {
        let b = w.d().join("ro-batch");
        std::fs::write(&b, cmds).unwrap();
        run(client("sftp")
            .arg("-F")
            .arg(&w.bob)
            .arg("-b")
            .arg(&b)
            .arg(format!("{OPS}@web1")))
    };
    // get works.
    let got = w.d().join("got.txt");
    let out = batch(&format!("get {name} {}\n", got.display()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "read me\n");
    // put, rm and rename are refused with permission denied, and the session goes on.
    for cmd in [
        format!("put {} up.txt", local.display()),
        format!("rm {name}"),
        format!("rename {name} moved.txt"),
        "mkdir d".to_string(),
    ] {
        let out = batch(&format!("{cmd}\n"));
        assert!(!out.status.success(), "{cmd} succeeded");
        assert!(
            text(&out.stderr).to_lowercase().contains("permission denied"),
            "{cmd}: {}",
            text(&out.stderr)
        );
    }
    let out = batch(&format!(
        "-rm {name}\nls\nget {name} {}\n",
        w.d().join("again.txt").display()
    ));
    assert!(
        out.status.success(),
        "reads still work after a refusal in the same session: {}",
        text(&out.stderr)
    );
    assert!(Path::new(&file).exists(), "the file survived");
    assert!(!Path::new(&format!("{home}/up.txt")).exists());
    // Legacy scp (-O) is a file transfer too: download allowed, upload refused.
    let legacy = w.d().join("legacy.txt");
    ok(client("scp")
        .arg("-O")
        .arg("-F")
        .arg(&w.bob)
        .arg(format!("{OPS}@web1:{name}"))
        .arg(&legacy));
    assert_eq!(std::fs::read_to_string(&legacy).unwrap(), "read me\n");
    let up = run(client("scp")
        .arg("-O")
        .arg("-F")
        .arg(&w.bob)
        .arg(&local)
        .arg(format!("{OPS}@web1:up2.txt")));
    assert!(!up.status.success());
    assert!(!Path::new(&format!("{home}/up2.txt")).exists());
    // An upload dressed as a download for a shell that splits words differently from
    // the gateway (vertical tabs are not word breaks to sh, so the target would run
    // `scp -r -t` into a directory named "-f\v-f\v") is a plain exec, and refused.
    let sly_dir = "-f\u{b}-f\u{b}";
    let sly = run(client("ssh")
        .arg("-F")
        .arg(&w.bob)
        .arg(format!("{OPS}@web1"))
        .arg(format!("scp -r -t -- {sly_dir}")));
    assert!(!sly.status.success());
    assert!(text(&sly.stderr).contains("not allowed"), "{}", text(&sly.stderr));
    assert!(!Path::new(&format!("{home}/{sly_dir}")).exists());
    let transfers: Vec<(String, u64)> = recordings(&w)
        .into_iter()
        .flat_map(|(_, ev)| ev)
        .filter_map(|e| match e {
            Event::Meta {
                meta:
                    Meta::FileTransfer {
                        path,
                        bytes,
                        upload: false,
                        ..
                    },
                ..
            } => Some((path, bytes)),
            _ => None,
        })
        .collect();
    assert!(
        transfers.iter().any(|(p, b)| p.ends_with(&name) && *b == 8),
        "{transfers:?}"
    );
    std::fs::remove_file(&file).unwrap();
    // Refusals are recorded and audited.
    let denied: Vec<String> = recordings(&w)
        .into_iter()
        .flat_map(|(_, ev)| ev)
        .filter_map(|e| match e {
            Event::Meta {
                meta: Meta::Denied { request, .. },
                ..
            } => Some(request),
            _ => None,
        })
        .collect();
    assert!(denied.iter().any(|r| r.contains("remove")), "{denied:?}");
    assert!(denied.iter().any(|r| r.contains("rename")), "{denied:?}");
    let audit = ok(w.gw.ctl().args(["audit", "list", "--kind", "access.denied", "--json"]));
    assert!(audit.contains("sftp-write is not allowed"), "{audit}");
    // A session repeating refused requests: every refusal is recorded, the audit log
    // keeps the first herse::session::AUDITED_DENIALS and the total in the end event.
    let flood = 25;
    let cmds: String = (0..flood).map(|i| format!("-mkdir flood{i}\n")).collect();
    let out = batch(&cmds);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_sessions_ended(&w);
    let recorded = recordings(&w)
        .into_iter()
        .flat_map(|(_, ev)| ev)
        .filter(|e| matches!(e, Event::Meta { meta: Meta::Denied { request, .. }, .. } if request.contains("flood")))
        .count();
    assert_eq!(recorded, flood, "every refusal is in the recording");
    let events = json_lines(&ok(w.gw.ctl().args(["audit", "list", "--json", "--limit", "500"])));
    let detail = |e: &serde_json::Value| e["detail"].as_str().unwrap_or("").to_owned();
    let audited = events
        .iter()
        .filter(|e| e["kind"] == "access.denied" && detail(e).contains("flood"))
        .count();
    assert_eq!(audited, 20, "herse::session::AUDITED_DENIALS");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "session.end" && detail(e).contains(&format!("({flood} requests refused)"))),
        "the end event counts the refusals"
    );
    // The log is bounded the same way: a client repeating a refused request cannot
    // flood it either.
    let log = std::fs::read_to_string(w.gw.dir.join("herse.log")).unwrap();
    let logged = log
        .lines()
        .filter(|l| l.contains("request denied") && l.contains("flood"))
        .count();
    assert_eq!(logged, 20, "herse::session::AUDITED_DENIALS");
}

fn recording_ids(w: &World) -> Vec<String> {
    let list = ok(w.gw.ctl().args(["recordings", "list", "--json"]));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    rows.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

/// Run hersectl under GNU time: its output, and its peak RSS in KiB.
fn ctl_peak_rss(w: &World, args: &[&str]) -> (std::process::Output, u64) {
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "maxrss-kib %M"])
        .arg(bin("hersectl"))
        .arg("-c")
        .arg(&w.gw.config)
        .args(args);
    let done = run(&mut c);
    let err = text(&done.stderr);
    assert!(done.status.success(), "{err}");
    let rss = err
        .lines()
        .find_map(|l| l.strip_prefix("maxrss-kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no max RSS in {err}"));
    (done, rss)
}

#[test]
fn reading_a_large_recording_takes_memory_that_does_not_grow_with_it() {
    // 64 MiB of output: an export, a `show` or a `play` that held the events (or the
    // export's text) in memory would need more than that (140 MiB of RSS before they
    // streamed, 19 after).
    let w = World::new("bigexport");
    let out = run(ssh(&w.alice).args([
        "-l",
        DEPLOY,
        "web1",
        "yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz | head -c 67108864",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 67_108_864);
    wait_sessions_ended(&w);
    let id = recording_ids(&w).pop().unwrap();
    for format in ["json", "asciicast", "text"] {
        let file = w.d().join(format!("big.{format}"));
        let (_, rss) = ctl_peak_rss(
            &w,
            &[
                "recordings",
                "export",
                &id,
                "--format",
                format,
                "-o",
                file.to_str().unwrap(),
            ],
        );
        let size = std::fs::metadata(&file).unwrap().len();
        eprintln!("export --format {format}: {size} bytes written, max RSS {rss} KiB");
        assert!(size >= 67_108_864, "{format}: only {size} bytes");
        assert!(rss < 48 * 1024, "{format}: export took {rss} KiB");
        std::fs::remove_file(&file).unwrap();
    }
    // `show` sums the same events up the same way.
    let (done, rss) = ctl_peak_rss(&w, &["recordings", "show", &id, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    eprintln!("show: max RSS {rss} KiB");
    assert_eq!(shown["bytes"]["output"], 67_108_864, "{shown}");
    assert!(
        shown["verification"].as_str().unwrap().starts_with("complete"),
        "{shown}"
    );
    assert!(rss < 48 * 1024, "show took {rss} KiB");

    // `play` keeps the terminal's output, not the other channels' bulk: a session with a
    // terminal that prints a line and a channel that moves 64 MiB beside it.
    let key = key_of(&w, "alice");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = raw_login(w.gw.port, key, &w.alice_totp).await;
        let mut term = h.channel_open_session().await.unwrap();
        term.request_pty(false, "xterm", 80, 24, 0, 0, &[]).await.unwrap();
        term.exec(true, "echo on-the-terminal; sleep 1").await.unwrap();
        let mut bulk = h.channel_open_session().await.unwrap();
        bulk.exec(true, "head -c 67108864 /dev/zero").await.unwrap();
        let mut moved = 0;
        while let Some(m) = bulk.wait().await {
            if let russh::ChannelMsg::Data { data } = m {
                moved += data.len();
            }
        }
        assert_eq!(moved, 67_108_864);
        while term.wait().await.is_some() {}
    });
    drop(rt);
    wait_sessions_ended(&w);
    let id = recording_ids(&w)
        .into_iter()
        .find(|r| *r != id)
        .expect("the second session's recording");
    let (done, rss) = ctl_peak_rss(&w, &["recordings", "play", &id, "--speed", "100"]);
    eprintln!("play: max RSS {rss} KiB");
    assert!(text(&done.stdout).contains("on-the-terminal"), "{}", text(&done.stdout));
    assert!(rss < 48 * 1024, "play took {rss} KiB");
    // From a seek point past the terminal's request (in the bulk's frames), the player
    // still finds the terminal, not the bulk channel.
    let (_, rss) = ctl_peak_rss(&w, &["recordings", "play", &id, "--speed", "100", "--at", "0.4"]);
    eprintln!("play --at 0.4: max RSS {rss} KiB");
    assert!(rss < 48 * 1024, "play --at took {rss} KiB");
}

#[test]
fn recordings_verify_detect_tampering_and_gaps_and_export_plays() {
    let w = World::new("recverify");
    // A terminal session with a recognisable output, then two exec sessions.
    let out = run(ssh(&w.alice).args(["-tt", "-l", DEPLOY, "web1", "printf 'hello from herse %s\\n' $((6*7))"]));
    assert!(
        text(&out.stdout).contains("hello from herse 42"),
        "{}",
        text(&out.stderr)
    );
    for i in 0..2 {
        ok(ssh(&w.alice).args(["-l", DEPLOY, "web1", &format!("echo run {i}")]));
    }
    // Sessions end asynchronously after the client leaves; wait for the seals.
    let start = Instant::now();
    while !ok(w.gw.ctl().args(["sessions", "list", "--json"])).trim().eq("[]") {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = run(w.gw.ctl().args(["recordings", "verify", "--all"]));
    assert!(v.status.success(), "{}{}", text(&v.stdout), text(&v.stderr));
    let ids = recording_ids(&w);
    assert_eq!(ids.len(), 3);
    let oldest = ids.last().unwrap().clone();

    // Export the terminal session and play it with the real asciinema.
    let cast = w.d().join("s.cast");
    ok(w.gw
        .ctl()
        .args(["recordings", "export", &oldest, "--format", "asciicast", "-o"])
        .arg(&cast));
    let played = ok(Command::new("asciinema").arg("cat").arg(&cast));
    assert!(played.contains("hello from herse 42"), "{played}");
    let later = ok(w
        .gw
        .ctl()
        .args(["recordings", "play", &oldest, "--speed", "100", "--at", "0.05"]));
    assert!(later.contains("hello from herse 42"), "{later}");
    let transcript = ok(w.gw.ctl().args(["recordings", "export", &oldest, "--format", "text"]));
    assert!(
        transcript.contains("hello from herse 42") && transcript.contains("[exit 0]"),
        "{transcript}"
    );
    let show = ok(w.gw.ctl().args(["recordings", "show", &oldest, "--json"]));
    assert!(show.contains("\"verification\": \"complete\""), "{show}");

    // Search finds the text with its time; list filters by content; play replays it.
    let found = ok(w
        .gw
        .ctl()
        .args(["recordings", "search", "hello from herse 42", "--json"]));
    let found: Vec<serde_json::Value> = serde_json::from_str(&found).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["session"], oldest.as_str());
    assert!(found[0]["at_seconds"].as_f64().unwrap() >= 0.0);
    let listed = ok(w
        .gw
        .ctl()
        .args(["recordings", "list", "--contains", "hello from herse", "--json"]));
    assert!(listed.contains(&oldest) && !listed.contains(&ids[0]), "{listed}");
    assert_eq!(
        run(w.gw.ctl().args(["recordings", "search", "no such text anywhere"]))
            .status
            .code(),
        Some(3)
    );
    let played = ok(w.gw.ctl().args(["recordings", "play", &oldest, "--speed", "100"]));
    assert!(played.contains("hello from herse 42"), "{played}");
    // In a terminal the player shows its progress bar and quits on 'q'.
    let sock = w.d().join("play.sock");
    let tmux = |args: &[&str]| run(client("tmux").arg("-S").arg(&sock).args(args));
    let cmd = format!(
        "{} -c {} recordings play {oldest} --speed 0.25",
        bin("hersectl").display(),
        w.gw.config.display()
    );
    tmux(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "p",
        "-x",
        "120",
        "-y",
        "30",
        &cmd,
    ]);
    let t = Instant::now();
    loop {
        let screen = text(&tmux(&["capture-pane", "-p", "-t", "p"]).stdout);
        if screen.contains("[q] quit") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no player bar:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    }
    tmux(&["send-keys", "-t", "p", "q"]);
    let t = Instant::now();
    while tmux(&["has-session", "-t", "p"]).status.success() {
        assert!(t.elapsed() < Duration::from_secs(5), "player did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = tmux(&["kill-server"]);

    // Flip one byte in the middle recording: verify names it and fails.
    let middle = &ids[1];
    let path = w.gw.data().join("recordings").join(format!("{middle}.herserec"));
    let mut bytes = std::fs::read(&path).unwrap();
    let pos = bytes.len() / 2;
    bytes[pos] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let v = run(w.gw.ctl().args(["recordings", "verify", middle]));
    assert_eq!(v.status.code(), Some(1));
    assert!(text(&v.stdout).contains("frame"), "{}", text(&v.stdout));
    // Nor is any of it exported, played or summarised.
    for args in [
        &["recordings", "show", middle.as_str()][..],
        &["recordings", "export", middle.as_str(), "--format", "text"][..],
        &["recordings", "play", middle.as_str(), "--speed", "100"][..],
    ] {
        let out = run(w.gw.ctl().args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(text(&out.stdout).is_empty(), "{args:?}: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains("does not verify"), "{}", text(&out.stderr));
    }
    bytes[pos] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(run(w.gw.ctl().args(["recordings", "verify", middle])).status.success());

    // Another session's recording, whole and validly signed, copied over this one's:
    // verify sees that it is not this session's.
    let newest = w.gw.data().join("recordings").join(format!("{}.herserec", ids[0]));
    std::fs::copy(&newest, &path).unwrap();
    let v = run(w.gw.ctl().args(["recordings", "verify", middle]));
    assert_eq!(v.status.code(), Some(1));
    assert!(
        text(&v.stdout).contains("not the session's recording (its session id differs"),
        "{}",
        text(&v.stdout)
    );
    // Nor is it shown, exported or played as this session's.
    for args in [
        &["recordings", "show", middle.as_str()][..],
        &["recordings", "export", middle.as_str(), "--format", "text"][..],
        &["recordings", "play", middle.as_str(), "--speed", "100"][..],
    ] {
        let out = run(w.gw.ctl().args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out.stdout));
        assert!(text(&out.stdout).is_empty(), "{args:?}: {}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("not the session's recording"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    // A recording made up without the key: this session's header, then an EVENTS frame,
    // hash-chained, with no checkpoint. Nothing of it is exported or played.
    use session_recordings::format as f;
    let forge = |header: &[u8], output: &[u8]| {
        let mut file = session_recordings::MAGIC.to_vec();
        file.extend_from_slice(&session_recordings::VERSION.to_be_bytes());
        let prev = f::encode_frame(&mut file, &[0u8; 32], f::FRAME_HEADER, 0, header);
        let mut payload = Vec::new();
        f::encode_record(&mut payload, 2, 1_000, 0, output);
        let chain = f::ChainHash::of_version(session_recordings::VERSION).unwrap();
        let hash = f::events_frame_hash(chain, &prev, 1, &payload).unwrap();
        file.extend_from_slice(&f::frame_head(f::FRAME_EVENTS, 1, payload.len()));
        file.extend_from_slice(&payload);
        file.extend_from_slice(&hash);
        file
    };
    let real_header = serde_json::to_value(
        session_recordings::RecordingReader::new(&bytes[..], None)
            .unwrap()
            .header(),
    )
    .unwrap();
    std::fs::write(
        &path,
        forge(&serde_json::to_vec(&real_header).unwrap(), b"forged output\n"),
    )
    .unwrap();
    for args in [
        &["recordings", "export", middle.as_str(), "--format", "text"][..],
        &["recordings", "play", middle.as_str(), "--speed", "100"][..],
    ] {
        let out = run(w.gw.ctl().args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out.stdout));
        assert!(!text(&out.stdout).contains("forged"), "{args:?}: {}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("no checkpoint"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // Its errors quote the file: whatever terminal escapes it holds are written out, not
    // sent to the auditor's terminal (an unknown header field named like an OSC 52
    // clipboard write).
    let mut odd = real_header.clone();
    odd["\u{1b}]52;c;aGk=\u{7}"] = 1.into();
    std::fs::write(&path, forge(&serde_json::to_vec(&odd).unwrap(), b"x")).unwrap();
    let out = run(w
        .gw
        .ctl()
        .args(["recordings", "export", middle.as_str(), "--format", "text"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown field") && !text(&out.stderr).contains('\u{1b}'),
        "{:?}",
        text(&out.stderr)
    );
    std::fs::write(&path, &bytes).unwrap();

    // Session rows are held to the signed audit log: a row marked purged with no purge
    // in the log, a row reopened as if live, a row deleted.
    let db = w.gw.data().join("herse.db");
    let sql = |q: &str| sqlite(&db, q);
    let verify_all = || {
        let v = run(w.gw.ctl().args(["recordings", "verify", "--all"]));
        (v.status.code(), text(&v.stdout))
    };
    sql(&format!("UPDATE sessions SET purged_at = 1 WHERE id = '{}'", ids[0]));
    let (code, out) = verify_all();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no recording.purge event"), "{out}");
    // Asked about that one session alone, verify holds the mark to the log too.
    let v = run(w.gw.ctl().args(["recordings", "verify", &ids[0]]));
    assert_eq!(v.status.code(), Some(1), "{}", text(&v.stdout));
    assert!(
        text(&v.stdout).contains("no recording.purge event"),
        "{}",
        text(&v.stdout)
    );
    sql(&format!("UPDATE sessions SET purged_at = NULL WHERE id = '{}'", ids[0]));
    // Reopened and cut at its first checkpoint: an unsealed recording of a session the
    // log saw end.
    let newest_bytes = std::fs::read(&newest).unwrap();
    sql(&format!("UPDATE sessions SET ended_at = NULL WHERE id = '{}'", ids[0]));
    let (code, out) = verify_all();
    assert_eq!(code, Some(0), "the recording itself is still sealed: {out}");
    std::fs::write(&newest, &newest_bytes[..newest_bytes.len() - 40]).unwrap();
    let (code, out) = verify_all();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("truncated"), "{out}");
    // Its export holds only what a checkpoint vouches for: not the events written after
    // the last one (this short session's output and end: its only checkpoint is the
    // one after the header), which it says it left out.
    let out = run(w.gw.ctl().args(["recordings", "export", &ids[0], "--format", "text"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("run 1"), "{}", text(&out.stdout));
    assert!(!text(&out.stdout).contains("[session ended"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("are left out"), "{}", text(&out.stderr));
    std::fs::write(&newest, &newest_bytes).unwrap();
    sql(&format!("UPDATE sessions SET ended_at = 1 WHERE id = '{}'", ids[0]));
    assert_eq!(verify_all().0, Some(0));

    // Delete it: the next recording's link shows the gap.
    std::fs::remove_file(&path).unwrap();
    let v = run(w.gw.ctl().args(["recordings", "verify", "--all"]));
    assert_eq!(v.status.code(), Some(1));
    assert!(
        text(&v.stdout).contains(&format!("recording {middle} is missing")),
        "{}",
        text(&v.stdout)
    );
    // Delete the newest session's row (nothing links to it yet): the log still shows it.
    sql(&format!("DELETE FROM sessions WHERE id = '{}'", ids[0]));
    let (code, out) = verify_all();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "{}  NO   FAILED: the session started (audit event seq",
            ids[0]
        )),
        "{out}"
    );
}

/// A session's output that would act on the auditor's terminal beyond drawing (write
/// their clipboard, ask for a report the terminal answers as typed input) is kept in
/// the recording, byte for byte, and left out when the session is played.
#[test]
fn playing_a_recording_does_not_let_it_act_on_the_auditors_terminal() {
    let w = World::new("playfilter");
    let printed = "printf 'before\\033]52;c;cm0gLXJmIH4K\\007\\033[6n\\033[21t\\033[1;32mafter\\033[0m\\n'";
    let out = run(ssh(&w.alice).args(["-tt", "-l", DEPLOY, "web1", printed]));
    assert!(text(&out.stdout).contains("after"), "{}", text(&out.stderr));
    wait_sessions_ended(&w);
    let id = recording_ids(&w).remove(0);
    let played = run(w.gw.ctl().args(["recordings", "play", &id, "--speed", "100"]));
    assert!(played.status.success(), "{}", text(&played.stderr));
    let shown = &played.stdout;
    let has = |needle: &[u8]| shown.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"before") && has(b"\x1b[1;32mafter\x1b[0m"), "{:?}", text(shown));
    assert!(
        !has(b"\x1b]52") && !has(b"\x1b[6n") && !has(b"\x1b[21t"),
        "{:?}",
        text(shown)
    );
    // The recording holds them: the JSON export has every byte.
    let json = ok(w.gw.ctl().args(["recordings", "export", &id, "--format", "json"]));
    let bytes: Vec<u8> = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["data"].as_str().map(str::to_owned))
        .flat_map(|d| d.into_bytes())
        .collect();
    let raw = String::from_utf8_lossy(&bytes);
    assert!(raw.contains("\u{1b}]52;c;cm0gLXJmIH4K\u{7}"), "{json}");
}

#[test]
fn sigkill_during_a_transfer_leaves_a_truncated_recording_that_replays() {
    let w = World::new("sigkill");
    let mut child = ssh(&w.alice)
        .args([
            "-l",
            DEPLOY,
            "web1",
            "for i in $(seq 1 100000); do echo line $i; sleep 0.001; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 65536];
    let mut seen = String::new();
    // Let it run past a few checkpoints.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        let n = child.stdout.as_mut().unwrap().read(&mut buf).unwrap();
        seen.push_str(&text(&buf[..n]));
    }
    let mut gw = w.gw;
    gw.signal("KILL");
    let _ = gw.proc.take().unwrap().child.wait();
    let _ = child.kill();
    let _ = child.wait();
    let ids = {
        let list = ok(Command::new(bin("hersectl"))
            .arg("-c")
            .arg(&gw.config)
            .args(["recordings", "list", "--json"]));
        let rows: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
        rows.iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids.len(), 1);
    let v =
        run(Command::new(bin("hersectl"))
            .arg("-c")
            .arg(&gw.config)
            .args(["recordings", "verify", &ids[0], "--json"]));
    let out = text(&v.stdout);
    assert!(out.contains("truncated at"), "{out}");
    assert!(!out.contains("complete"), "a killed session is never complete: {out}");
    let transcript = ok(Command::new(bin("hersectl")).arg("-c").arg(&gw.config).args([
        "recordings",
        "export",
        &ids[0],
        "--format",
        "text",
    ]));
    assert!(transcript.contains("line 1\n"), "replays up to the cut");
}

/// The same with bulk output, which the recorder stages and writes with direct I/O (a
/// recording that takes 4 MiB within a flush interval): the cut recording verifies as
/// truncated, never as corrupt, and holds the output up to the cut.
#[test]
fn sigkill_during_bulk_output_leaves_a_truncated_recording() {
    let w = World::new("sigkillbulk");
    let mut child = ssh(&w.alice)
        .args(["-l", DEPLOY, "web1", "head -c 8000000000 /dev/zero"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        let n = child.stdout.as_mut().unwrap().read(&mut buf).unwrap();
        assert!(n > 0, "the transfer ended early");
        got += n as u64;
    }
    assert!(got > 32 << 20, "bulk output, well above 4 MiB a second: {got} bytes");
    let mut gw = w.gw;
    gw.signal("KILL");
    let _ = gw.proc.take().unwrap().child.wait();
    let _ = child.kill();
    let _ = child.wait();
    let hersectl = |args: &[&str]| ok(Command::new(bin("hersectl")).arg("-c").arg(&gw.config).args(args));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&hersectl(&["recordings", "list", "--json"])).unwrap();
    assert_eq!(rows.len(), 1);
    let id = rows[0]["id"].as_str().unwrap().to_owned();
    let show: serde_json::Value = serde_json::from_str(&hersectl(&["recordings", "show", &id, "--json"])).unwrap();
    let status = show["verification"].as_str().unwrap();
    assert!(status.contains("truncated at"), "{show}");
    // What the last checkpoint vouches for is the session's account; what follows it is
    // listed apart, as unauthenticated.
    let vouched = show["bytes"]["output"].as_u64().unwrap_or(0);
    let tail = &show["unauthenticated_tail"];
    let tail_bytes = tail["bytes"]["output"].as_u64().unwrap_or(0);
    let recorded = vouched + tail_bytes;
    assert!(
        vouched > 0 && recorded >= 16 << 20 && recorded <= got + (8 << 20),
        "the output up to the cut is recorded: {vouched} + {tail_bytes} of {got} bytes relayed"
    );
    let unauthenticated: u64 = status
        .split("; ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{status}"));
    if unauthenticated >= 8 << 20 {
        // Whole frames after the checkpoint: their events are the tail, none counted above.
        assert!(tail_bytes > 0 && tail["events"].as_u64() > Some(0), "{show}");
    }
}

/// A new session is refused, nothing runs, and the client is told the recording is
/// unavailable.
fn refused_for_its_recording(w: &World) {
    let out = run(ssh(&w.alice).args(["-l", DEPLOY, "web1", "echo should-not-run"]));
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains("should-not-run"));
    assert!(
        text(&out.stderr).contains("recording is unavailable"),
        "{}",
        text(&out.stderr)
    );
}

/// Unmounts on drop.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_recording_store_fails_closed() {
    let w = World::new("full");
    let dir = w.gw.data().join("recordings");
    std::fs::create_dir_all(&dir).unwrap();
    ok(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "herse-test-full"])
        .arg(&dir));
    let _m = Mount(dir.clone());

    // A session whose output outgrows the store ends; the client is told why.
    let start = Instant::now();
    let out = run(ssh(&w.alice).args(["-l", DEPLOY, "web1", "head -c 16000000 /dev/zero"]));
    assert!(!out.status.success(), "the session must not outlive its recording");
    assert!(
        out.stdout.len() < 16_000_000,
        "output went on unrecorded: {} bytes",
        out.stdout.len()
    );
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(text(&out.stderr).contains("recording failed"), "{}", text(&out.stderr));

    // The store is full: new sessions are refused with a clear message.
    refused_for_its_recording(&w);
    let audit = ok(w
        .gw
        .ctl()
        .args(["audit", "list", "--kind", "session.refused", "--json"]));
    assert!(audit.contains("alert"), "{audit}");

    // Space again: sessions work.
    drop(_m);
    let out = run(ssh(&w.alice).args(["-l", DEPLOY, "web1", "echo back"]));
    assert_eq!(text(&out.stdout).trim(), "back", "{}", text(&out.stderr));
}

/// An ext4 image loop-mounted over `dir`, which `fsfreeze` can freeze: writes to a
/// frozen filesystem block in the kernel, as on a hung disk or network volume. Thawed
/// and unmounted on drop, whatever the test's outcome.
struct Freezable(PathBuf);

impl Freezable {
    fn mount(dir: &Path, image: &Path) -> Freezable {
        std::fs::create_dir_all(dir).unwrap();
        ok(Command::new("truncate").args(["-s", "64M"]).arg(image));
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image));
        ok(Command::new("mount").args(["-o", "loop"]).arg(image).arg(dir));
        Freezable(dir.to_owned())
    }

    fn freeze(&self, frozen: bool) {
        ok(Command::new("fsfreeze")
            .arg(if frozen { "-f" } else { "-u" })
            .arg(&self.0));
    }
}

impl Drop for Freezable {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Waits for `child` to exit, at most `limit`; its stderr.
fn exits_within(child: &mut std::process::Child, limit: Duration) -> String {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    err
}

/// A gateway with `stall_timeout` whose recording store can be frozen, and a way to
/// start alice's sessions on web1 in the background (stderr kept for the reason).
fn freezable_world(name: &str, stall_timeout: &str) -> (World, Freezable) {
    let w = World::with_config(
        name,
        &format!("[recordings]\nstall_timeout = \"{stall_timeout}\"\n"),
        "",
    );
    let store = Freezable::mount(&w.gw.data().join("recordings"), &w.dir.0.join("recordings.img"));
    (w, store)
}

fn background_session(w: &World, cmd: &str) -> std::process::Child {
    ssh(&w.alice)
        .args(["-l", DEPLOY, "web1", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_recording_store_that_hangs_ends_its_sessions_and_refuses_new_ones() {
    let (w, store) = freezable_world("hang", "3s");
    let session = |cmd: &str| background_session(&w, cmd);
    // One after the other: the first proves the second factor, the role remembers it.
    let mut busy = session("i=0; while [ $i -lt 1200 ]; do echo tick $i; i=$((i+1)); sleep 0.05; done");
    let mut idle = None;
    let start = Instant::now();
    let ids = loop {
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&ok(w.gw.ctl().args(["sessions", "list", "--json"]))).unwrap();
        if rows.len() == 1 && idle.is_none() {
            idle = Some(session("sleep 120"));
        }
        if rows.len() == 2 {
            break rows;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let mut err = String::new();
            for c in std::iter::once(&mut busy).chain(idle.as_mut()) {
                let _ = c.kill();
                c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            }
            panic!("sessions did not start: {rows:?}: {err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Past a checkpoint of everything the idle session recorded.
    std::thread::sleep(Duration::from_millis(3500));

    store.freeze(true);
    let frozen_at = Instant::now();
    // A session with output to record ends once the store has not answered for the
    // stall limit; the client is told why.
    let err = exits_within(&mut busy, Duration::from_secs(12));
    assert!(err.contains("recording failed") && err.contains("within 3s"), "{err}");
    eprintln!("busy session ended {:?} after the freeze", frozen_at.elapsed());
    // An idle session has nothing unrecorded; `sessions kill` still ends it at once.
    let idle_id = ids
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .find(|id| ok(w.gw.ctl().args(["sessions", "list", "--json"])).contains(id.as_str()))
        .expect("the idle session is still live");
    let killed_at = Instant::now();
    let kill =
        w.gw.ctl()
            .args(["sessions", "kill", &idle_id])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let err = exits_within(idle.as_mut().unwrap(), Duration::from_secs(5));
    let cut = killed_at.elapsed();
    assert!(err.contains("killed by"), "{err}");
    // The client is cut without waiting for the store, and hersectl says so without
    // waiting for the seal either (which gives up only at the 3 s stall limit).
    assert!(cut < Duration::from_millis(1900), "{cut:?}");
    let done = kill.wait_with_output().unwrap();
    let said = killed_at.elapsed();
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success() && out.contains("still being sealed"), "{out}");
    assert!(said < Duration::from_millis(2900), "hersectl returned after {said:?}");
    eprintln!("idle session's client cut {cut:?} after the kill, hersectl returned after {said:?}");
    // New sessions are refused after the stall limit, with the reason.
    let t = Instant::now();
    refused_for_its_recording(&w);
    assert!(t.elapsed() < Duration::from_secs(8), "refused after {:?}", t.elapsed());

    // The store answers again: sessions work, and the refused session's recording,
    // created once the store came back, is removed.
    store.freeze(false);
    let out = run(ssh(&w.alice).args(["-l", DEPLOY, "web1", "echo back"]));
    assert_eq!(text(&out.stdout).trim(), "back", "{}", text(&out.stderr));
    wait_sessions_ended(&w);
    let files = std::fs::read_dir(w.gw.data().join("recordings"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "herserec"))
        .count();
    assert_eq!(files, 3, "the busy, idle and last sessions' recordings, no other");
    let audit = ok(w
        .gw
        .ctl()
        .args(["audit", "list", "--kind", "session.refused", "--json"]));
    assert!(audit.contains("did not answer within 3s"), "{audit}");
}

/// Every connection thread serves several connections. A session whose recording falls
/// behind (its store hung) waits for it off that thread, so the other connections there
/// go on: killed, they are cut at once, long before the stall limit.
#[test]
fn a_session_waiting_for_its_recording_holds_up_no_other_connection() {
    let (w, store) = freezable_world("hangshare", "30s");
    let session = |cmd: &str| background_session(&w, cmd);
    let live = |n: usize| {
        let start = Instant::now();
        loop {
            let rows = json_rows(&ok(w.gw.ctl().args(["sessions", "list", "--json"])));
            if rows.len() == n {
                break rows;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{} sessions of {n}",
                rows.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Output as fast as the client takes it. (The first login proves the second
    // factor; the role remembers it for the others.)
    let mut bulk = session("cat /dev/zero");
    let bulk_id = live(1)[0]["id"].as_str().unwrap().to_owned();
    // The gateway has a connection thread per core and gives each connection to the
    // one with the fewest: with one idle session fewer than twice the threads, at
    // least one idle session shares the bulk session's thread.
    let threads = std::thread::available_parallelism().unwrap().get();
    let mut idle: Vec<_> = (0..2 * threads - 1).map(|_| session("sleep 120")).collect();
    let ids: Vec<String> = live(2 * threads)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .filter(|id| *id != bulk_id)
        .collect();

    store.freeze(true);
    // The bulk session's recording falls behind within milliseconds.
    std::thread::sleep(Duration::from_secs(2));
    let mut slowest = Duration::ZERO;
    for (n, id) in ids.iter().enumerate() {
        let t = Instant::now();
        let kill =
            w.gw.ctl()
                .args(["sessions", "kill", id])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
        // Which client is whose does not matter: each kill cuts one more.
        loop {
            if idle
                .iter_mut()
                .map(|c| c.try_wait().unwrap().is_some())
                .filter(|e| *e)
                .count()
                > n
            {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "a killed session was not cut");
            std::thread::sleep(Duration::from_millis(20));
        }
        slowest = slowest.max(t.elapsed());
        assert!(kill.wait_with_output().unwrap().status.success());
    }
    eprintln!("killed idle sessions cut within {slowest:?} while the bulk session waited for its store");
    assert!(slowest < Duration::from_secs(3), "{slowest:?}");
    store.freeze(false);
    let _ = bulk.kill();
    let _ = bulk.wait();
}

#[test]
fn sessions_watch_follows_a_live_session_read_only() {
    let w = World::new("watch");
    let mut live = ssh(&w.alice)
        .args([
            "-l",
            DEPLOY,
            "web1",
            "i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo tick $i; sleep 0.1; done",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let id = loop {
        let list = ok(w.gw.ctl().args(["sessions", "list", "--json"]));
        let rows: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
        if let Some(r) = rows.first() {
            break r["id"].as_str().unwrap().to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(1500));
    let mut watch =
        w.gw.ctl()
            .args(["sessions", "watch", &id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    // New ticks arrive while watching (at most about a second behind).
    let first_tick = loop {
        let n = watch.stdout.as_mut().unwrap().read(&mut buf).unwrap();
        assert!(n > 0, "watch ended early");
        seen.push_str(&text(&buf[..n]));
        let ticks: Vec<u32> = seen
            .lines()
            .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
            .collect();
        if ticks.len() >= 2 {
            break ticks[0];
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no live output: {seen}");
    };
    assert!(
        first_tick > 5,
        "watch joined at the current point, not the start (first tick {first_tick})"
    );
    ok(w.gw.ctl().args(["sessions", "kill", &id]));
    let status = watch.wait().unwrap();
    let mut err = String::new();
    watch.stderr.as_mut().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("session ended: killed by local:"), "{err}");
    let _ = live.kill();
    let _ = live.wait();
}

#[test]
fn retention_purges_old_recordings_except_those_on_hold() {
    let mut w = World::new("retain");
    for i in 0..3 {
        ok(ssh(&w.alice).args(["-l", DEPLOY, "web1", &format!("echo {i}")]));
    }
    let start = Instant::now();
    while !ok(w.gw.ctl().args(["sessions", "list", "--json"])).trim().eq("[]") {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    let ids = recording_ids(&w);
    assert_eq!(ids.len(), 3);
    ok(w.gw.ctl().args(["recordings", "hold", &ids[1]]));
    let policy_path = w.d().join("policy.toml");
    let policy = std::fs::read_to_string(&policy_path).unwrap();
    std::fs::write(
        &policy_path,
        policy.replace(
            "description = \"web tier\"",
            "description = \"web tier\"\nretention = \"1s\"",
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    // Someone who can write only the database frees the held recording, marks a live
    // session ended long ago and points a row at another file: no row is believed. The
    // signed log holds the first, the live recording's writer holds its file, and the
    // file is not the one this node wrote for the session.
    let db = w.gw.data().join("herse.db");
    let sql = |q: &str| sqlite(&db, q);
    let mut live = ssh(&w.alice)
        .args(["-l", DEPLOY, "web1", "echo started; sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut started = [0u8; 8];
    live.stdout.as_mut().unwrap().read_exact(&mut started).unwrap();
    let live_id = recording_ids(&w).into_iter().find(|id| !ids.contains(id)).unwrap();
    sql(&format!("UPDATE sessions SET legal_hold = 0 WHERE id = '{}'", ids[1]));
    // With a release in the log, well chained (and signed at the next checkpoint), but
    // not signed by the audit key for the hold it claims to end.
    sqlite_forge_audit_event(&db, "recording.release", &ids[1], "by root");
    sql(&format!("UPDATE sessions SET ended_at = 1 WHERE id = '{live_id}'"));
    let dir = w.gw.data().join("recordings");
    let elsewhere = w.d().join("elsewhere.herserec");
    std::fs::copy(dir.join(format!("{}.herserec", ids[2])), &elsewhere).unwrap();
    sql(&format!(
        "UPDATE sessions SET recording = '{}' WHERE id = '{}'",
        elsewhere.display(),
        ids[2]
    ));
    let out = ok(w.gw.ctl().args(["recordings", "purge"]));
    assert!(out.contains("purged 1 recording(s)"), "{out}");
    assert!(elsewhere.exists(), "a file the row names elsewhere is never removed");
    let refused = json_lines(&ok(w.gw.ctl().args([
        "audit",
        "list",
        "--kind",
        "recording.purge_refused",
        "--json",
    ])));
    let why = |id: &str| {
        refused
            .iter()
            .find(|e| e["session"] == id)
            .map(|e| e["detail"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no purge_refused for {id}: {refused:?}"))
    };
    assert!(why(&ids[1]).contains("legal hold"), "{refused:?}");
    assert!(why(&live_id).contains("still being written"), "{refused:?}");
    assert!(why(&ids[2]).contains("the database row names"), "{refused:?}");
    assert!(dir.join(format!("{live_id}.herserec")).exists(), "live recording kept");
    let _ = live.kill();
    let _ = live.wait();
    sql(&format!("UPDATE sessions SET legal_hold = 1 WHERE id = '{}'", ids[1]));
    sql(&format!(
        "UPDATE sessions SET recording = '{}' WHERE id = '{}'",
        dir.join(format!("{}.herserec", ids[2])).display(),
        ids[2]
    ));
    let out = ok(w.gw.ctl().args(["recordings", "purge"]));
    assert!(out.contains(&ids[2]) && !out.contains(&ids[1]), "{out}");
    assert!(!dir.join(format!("{}.herserec", ids[0])).exists());
    assert!(dir.join(format!("{}.herserec", ids[1])).exists(), "held recording kept");
    assert!(!dir.join(format!("{}.herserec", ids[2])).exists());
    // Purged by policy is not tampering: the chain still verifies.
    let v = run(w.gw.ctl().args(["recordings", "verify", "--all"]));
    assert!(v.status.success(), "{}", text(&v.stdout));
    assert!(text(&v.stdout).contains("purged by retention"));
    let audit = ok(w
        .gw
        .ctl()
        .args(["audit", "list", "--kind", "recording.purge", "--json"]));
    let events = json_lines(&audit);
    // (The live session, ended just now, may be purged too when this runs slowly.)
    let of = |id: &str| events.iter().filter(|e| e["session"] == id).count();
    assert_eq!((of(&ids[0]), of(&ids[1]), of(&ids[2])), (1, 0, 1), "{events:?}");
    // A hold on a recording already purged would hold nothing: refused.
    let late = run(w.gw.ctl().args(["recordings", "hold", &ids[0]]));
    assert!(!late.status.success());
    assert!(text(&late.stderr).contains("already purged"), "{}", text(&late.stderr));
    // One purged session alone verifies too: its purge event is in the log.
    let one = run(w.gw.ctl().args(["recordings", "verify", &ids[0]]));
    assert!(one.status.success(), "{}", text(&one.stdout));
    assert!(
        text(&one.stdout).contains("purged by retention"),
        "{}",
        text(&one.stdout)
    );
    // Releasing the hold makes it purgeable.
    ok(w.gw.ctl().args(["recordings", "hold", "--release", &ids[1]]));
    let out = ok(w.gw.ctl().args(["recordings", "purge"]));
    assert!(out.contains(&ids[1]), "{out}");
    assert!(!dir.join(format!("{}.herserec", ids[1])).exists());

    // The gateway applies the same retention itself, at its start and then hourly,
    // under the policy it loaded (the file now says 1 s), with no hersectl involved.
    ok(ssh(&w.alice).args(["-l", DEPLOY, "web1", "echo last"]));
    let start = Instant::now();
    while !ok(w.gw.ctl().args(["sessions", "list", "--json"])).trim().eq("[]") {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = recording_ids(&w)
        .into_iter()
        .find(|id| !ids.contains(id) && *id != live_id)
        .unwrap();
    let last_file = dir.join(format!("{last}.herserec"));
    assert!(last_file.exists());
    std::thread::sleep(Duration::from_millis(1200));
    w.gw.signal("TERM");
    let _ = w.gw.proc.take().unwrap().child.wait();
    let (d, config) = (w.gw.dir.clone(), w.gw.config.clone());
    w.gw = Gateway::start(&d, &config);
    let start = Instant::now();
    while last_file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the gateway never purged {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = json_lines(&ok(w.gw.ctl().args([
        "audit",
        "list",
        "--kind",
        "recording.purge",
        "--json",
    ])));
    assert_eq!(
        events.iter().filter(|e| e["session"] == last.as_str()).count(),
        1,
        "{events:?}"
    );
    // Still held to the same checks: the verified log and the recording itself.
    let v = run(w.gw.ctl().args(["recordings", "verify", "--all"]));
    assert!(v.status.success(), "{}", text(&v.stdout));
}

#[test]
fn recordings_of_an_encrypting_tier_need_an_auditor_identity() {
    use age::secrecy::ExposeSecret;
    let w = World::new("encrypt");
    let auditor = age::x25519::Identity::generate();
    let identity_file = w.d().join("auditor.age");
    std::fs::write(&identity_file, format!("{}\n", auditor.to_string().expose_secret())).unwrap();
    let policy_path = w.d().join("policy.toml");
    let mut policy = std::fs::read_to_string(&policy_path).unwrap();
    policy.push_str(&format!(
        "\n[tiers.vault]\nencrypt_to = [\"{}\"]\n[tiers.vault.targets.vault1]\naddress = \"127.0.0.1\"\nport = {}\nhost_keys = [\"{}\"]\n\
         [roles.vault-exec]\ntiers = [\"vault\"]\nlogins = [\"{DEPLOY}\"]\noperations = [\"exec\"]\nmax_session = \"1h\"\nmfa_remember = \"1h\"\nidle_timeout = \"10m\"\n",
        auditor.to_public(),
        w.web.port,
        w.web.host_key_pub
    ));
    reload_policy(&w, &policy);
    ok(w.gw.ctl().args(["roles", "bind", "alice", "vault-exec"]));
    let out = run(ssh(&w.alice).args(["-J", "gw", "-l", DEPLOY, "vault1", "echo top-secret-$((40+2))"]));
    assert_eq!(text(&out.stdout).trim(), "top-secret-42", "{}", text(&out.stderr));
    let start = Instant::now();
    while !ok(w.gw.ctl().args(["sessions", "list", "--json"])).trim().eq("[]") {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    let id = recording_ids(&w).remove(0);
    let raw = std::fs::read(w.gw.data().join("recordings").join(format!("{id}.herserec"))).unwrap();
    assert!(!text(&raw).contains("top-secret-42"), "plaintext on the gateway's disk");
    assert!(
        !text(&raw).contains("echo top-secret"),
        "command in plaintext on the gateway's disk"
    );
    // Anyone with the audit public key can verify it; only the auditor can read it.
    ok(w.gw.ctl().args(["recordings", "verify", &id]));
    let denied = run(w.gw.ctl().args(["recordings", "export", &id, "--format", "text"]));
    assert_eq!(denied.status.code(), Some(1));
    assert!(text(&denied.stderr).contains("encrypted"), "{}", text(&denied.stderr));
    let other = w.d().join("other.age");
    std::fs::write(
        &other,
        format!("{}\n", age::x25519::Identity::generate().to_string().expose_secret()),
    )
    .unwrap();
    assert!(!run(w
        .gw
        .ctl()
        .arg("--identity")
        .arg(&other)
        .args(["recordings", "export", &id, "--format", "text"]))
    .status
    .success());
    let plain =
        ok(w.gw
            .ctl()
            .arg("--identity")
            .arg(&identity_file)
            .args(["recordings", "export", &id, "--format", "text"]));
    assert!(
        plain.contains("top-secret-42") && plain.contains("$ echo top-secret"),
        "{plain}"
    );
}

/// A raw SSH client (russh), to send what OpenSSH never would.
struct AcceptAny;
impl russh::client::Handler for AcceptAny {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A test user's private key, for raw clients.
fn key_of(w: &World, user: &str) -> std::sync::Arc<russh::keys::PrivateKey> {
    std::sync::Arc::new(russh::keys::load_secret_key(w.d().join(user), None).unwrap())
}

/// Log in as alice+hdeploy+web1 with a raw client: public key, then the TOTP code when
/// the gateway asks for it (not when a recent proof covers the login).
async fn raw_login(
    port: u16,
    key: std::sync::Arc<russh::keys::PrivateKey>,
    totp: &str,
) -> russh::client::Handle<AcceptAny> {
    raw_login_as(port, key, totp, &format!("alice+{DEPLOY}+web1")).await
}

/// A raw client's SSH connection to the gateway, not yet authenticated.
async fn raw_connect(port: u16) -> Result<russh::client::Handle<AcceptAny>, russh::Error> {
    russh::client::connect(
        std::sync::Arc::new(russh::client::Config::default()),
        ("127.0.0.1", port),
        AcceptAny,
    )
    .await
}

/// Log in as `user` (a single-hop name, or a plain one for ProxyJump) with a raw client.
async fn raw_login_as(
    port: u16,
    key: std::sync::Arc<russh::keys::PrivateKey>,
    totp: &str,
    user: &str,
) -> russh::client::Handle<AcceptAny> {
    let mut h = raw_connect(port).await.unwrap();
    let auth = h
        .authenticate_publickey(user, russh::keys::PrivateKeyWithHashAlg::new(key, None))
        .await
        .unwrap();
    if !auth.success() {
        let r = h.authenticate_keyboard_interactive_start(user, None).await.unwrap();
        assert!(
            matches!(r, russh::client::KeyboardInteractiveAuthResponse::InfoRequest { .. }),
            "{r:?}"
        );
        let r = h
            .authenticate_keyboard_interactive_respond(vec![totp_next(totp)])
            .await
            .unwrap();
        assert!(
            matches!(r, russh::client::KeyboardInteractiveAuthResponse::Success),
            "{r:?}"
        );
    }
    h
}

/// What the gateway writes to a channel's stderr until it closes the channel (within
/// 10 s, or the test fails).
async fn stderr_until_closed(ch: &mut russh::Channel<russh::client::Msg>) -> String {
    let mut stderr = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ch.wait().await {
            if let russh::ChannelMsg::ExtendedData { data, .. } = m {
                stderr.extend_from_slice(&data);
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the gateway did not end the channel");
    String::from_utf8_lossy(&stderr).into_owned()
}

#[test]
fn an_ending_session_starts_nothing_more() {
    // Between a kill and the cut of the client's connection the gateway gives the
    // session's channels a moment to say why. A client that opens channels in that
    // moment must not get one more command run on the target.
    let w = World::new("endingsession");
    let key = key_of(&w, "alice");
    let markers: Vec<PathBuf> = (0..5)
        .map(|n| PathBuf::from(format!("/tmp/herse-after-kill-{}-{n}", std::process::id())))
        .collect();
    for m in &markers {
        let _ = std::fs::remove_file(m);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = raw_login(w.gw.port, key, &w.alice_totp).await;
        // A channel whose output is never read holds the session's end open.
        let holder = h.channel_open_session().await.unwrap();
        holder.exec(true, "cat /dev/zero").await.unwrap();
        let mut watch = h.channel_open_session().await.unwrap();
        watch.exec(true, "sleep 60").await.unwrap();
        let rows = json_rows(&ok(w.gw.ctl().args(["sessions", "list", "--json"])));
        let id = rows[0]["id"].as_str().unwrap().to_owned();
        let mut kill = w.gw.ctl().args(["sessions", "kill", &id]).spawn().unwrap();
        let said = stderr_until_closed(&mut watch).await;
        assert!(said.contains("session ended"), "{said}");
        let mut opened = 0;
        for (n, m) in markers.iter().enumerate() {
            if let Ok(Ok(ch)) = tokio::time::timeout(Duration::from_secs(2), h.channel_open_session()).await {
                opened += 1;
                let _ = ch.exec(true, format!("touch {}", m.display())).await;
            } else {
                eprintln!("channel {n} refused");
            }
        }
        assert!(kill.wait().unwrap().success());
        drop(holder);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ran: Vec<_> = markers.iter().filter(|m| m.exists()).collect();
        assert!(ran.is_empty(), "commands ran after the kill: {ran:?}");
        assert_eq!(opened, 0, "channels opened in an ending session");
    });
}

#[test]
fn output_sent_before_the_target_closed_reaches_the_client() {
    // The target sends 3 MB, more than the client's window, and its connection then dies.
    // What the gateway already holds is the client's, as an OpenSSH jump host would
    // deliver it: the session ends once it is passed on, not when the target is seen gone.
    let w = World::new("targetgone");
    let key = key_of(&w, "alice");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = raw_login(w.gw.port, key.clone(), &w.alice_totp).await;
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, "head -c 3000000 /dev/zero; sleep 1; kill -9 $PPID")
            .await
            .unwrap();
        // Read nothing while the target closes and the gateway notices (it looks every
        // second). What the client sends then cannot reach the target, and does not
        // cost it the output either.
        tokio::time::sleep(Duration::from_secs(3)).await;
        ch.data(&b"typed after the target died\n"[..]).await.unwrap();
        // Still not reading: the client's loop sends the input before it takes any
        // output (it may otherwise take the output first and see the channel closed).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut got = 0;
        let mut said = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(m) = ch.wait().await {
                match m {
                    russh::ChannelMsg::Data { data } => got += data.len(),
                    russh::ChannelMsg::ExtendedData { data, .. } => said.extend_from_slice(&data),
                    _ => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the channel never ended");
        assert_eq!(got, 3_000_000, "stderr: {}", text(&said));
        wait_sessions_ended(&w);

        // A client that takes nothing more does not hold the session open: it ends once
        // the relays have passed nothing on for a while (5 s).
        let h = raw_login(w.gw.port, key, &w.alice_totp).await;
        let stuck = h.channel_open_session().await.unwrap();
        stuck
            .exec(true, "head -c 3000000 /dev/zero; sleep 1; kill -9 $PPID")
            .await
            .unwrap();
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        loop {
            let live = json_rows(&ok(w.gw.ctl().args(["sessions", "list", "--json"])));
            if live.is_empty() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "the stalled session was held");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(stuck);
    });
    let (_, events) = recordings(&w)
        .into_iter()
        .min_by_key(|(h, _)| h.started_at_micros)
        .unwrap();
    let output: usize = events
        .iter()
        .filter_map(|e| match e {
            Event::Data {
                direction: session_recordings::DataDirection::Output,
                data,
                ..
            } => Some(data.len()),
            _ => None,
        })
        .sum();
    assert_eq!(output, 3_000_000, "the recording holds what the client got");
    // The input the client typed then is recorded, and so is that it never arrived.
    let typed = events
        .iter()
        .position(|e| matches!(e, Event::Data { data, .. } if data == b"typed after the target died\n"))
        .expect("the late input is recorded");
    let next = events[typed + 1..].iter().find(|e| {
        matches!(
            e,
            Event::Meta {
                meta: Meta::Undelivered { .. },
                ..
            }
        ) || matches!(
            e,
            Event::Data {
                direction: session_recordings::DataDirection::Input,
                ..
            }
        )
    });
    assert!(
        matches!(next, Some(Event::Meta { meta: Meta::Undelivered { reason }, .. }) if reason.contains("closed")),
        "{next:?}"
    );
}

#[test]
fn terminal_requests_and_command_bytes_are_recorded_exactly() {
    // What the target was asked for is what the recording holds: the terminal's pixel
    // sizes and modes, and a command line that is not UTF-8, byte for byte.
    let w = World::new("exactbytes");
    let key = key_of(&w, "alice");
    let command = b"printf 'caf\xe9-%s' ok; echo \xff >/dev/null".to_vec();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = raw_login(w.gw.port, key, &w.alice_totp).await;
        let mut ch = h.channel_open_session().await.unwrap();
        ch.request_pty(
            false,
            "xterm",
            80,
            24,
            640,
            480,
            &[(russh::Pty::ECHO, 0), (russh::Pty::TTY_OP_ISPEED, 38400)],
        )
        .await
        .unwrap();
        ch.window_change(100, 30, 800, 600).await.unwrap();
        ch.exec(true, command.clone()).await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch.wait().await {
            if let russh::ChannelMsg::Data { data } = m {
                out.extend_from_slice(&data);
            }
        }
        assert_eq!(out, b"caf\xe9-ok", "the target ran the exact bytes");
    });
    wait_sessions_ended(&w);
    let (header, events) = recordings(&w).pop().unwrap();
    let metas: Vec<&Meta> = events.iter().filter_map(Event::meta).collect();
    assert!(
        metas.contains(&&Meta::Pty {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
            pix_width: 640,
            pix_height: 480,
            modes: vec![(53, 0), (128, 38400)],
        }),
        "{metas:?}"
    );
    assert!(
        metas.contains(&&Meta::Resize {
            cols: 100,
            rows: 30,
            pix_width: 800,
            pix_height: 600
        }),
        "{metas:?}"
    );
    let exec = metas
        .iter()
        .find(|m| matches!(m, Meta::Exec { .. }))
        .expect("the exec is recorded");
    assert_eq!(exec.exec_bytes().unwrap(), command);
    // The transcript shows the text, and the bytes it cannot show.
    let shown = ok(w
        .gw
        .ctl()
        .args(["recordings", "export", &header.session_id, "--format", "text"]));
    assert!(shown.contains("[not UTF-8; bytes: 7072696e746620276361"), "{shown}");
    let summary = ok(w.gw.ctl().args(["recordings", "show", &header.session_id]));
    assert!(summary.contains("[not UTF-8; bytes: 7072696e746620276361"), "{summary}");
}

/// File names are bytes: names that are not UTF-8, moved by real sftp and legacy scp,
/// land on the target as sent and are recorded exactly (their text could not tell
/// `caf\xe9` from `caf\xff`), and auditors see and can search those bytes.
#[test]
fn file_names_that_are_not_utf8_are_recorded_exactly() {
    use std::os::unix::ffi::OsStrExt;
    let w = World::new("rawnames");
    let d = w.d().to_owned();
    let remote_dir = format!("/home/{DEPLOY}/herse-rawnames-{}", std::process::id());
    ok(ssh(&w.alice).args([
        "-l",
        DEPLOY,
        "web1",
        &format!("rm -rf {remote_dir}; mkdir -p {remote_dir}"),
    ]));
    let local = |name: &[u8], body: &str| {
        let p = d.join(std::ffi::OsStr::from_bytes(name));
        std::fs::write(&p, body).unwrap();
        p
    };
    // sftp: put, then rename to a name whose text is the same.
    let put = local(b"caf\xe9.txt", "sent by sftp\n");
    let mut batch = format!("cd {remote_dir}\nput ").into_bytes();
    batch.extend_from_slice(put.as_os_str().as_bytes());
    batch.extend_from_slice(b" caf\xe9.txt\nrename caf\xe9.txt caf\xff.txt\n");
    std::fs::write(d.join("batch"), &batch).unwrap();
    ok(client("sftp")
        .arg("-F")
        .arg(&w.alice)
        .arg("-b")
        .arg(d.join("batch"))
        .arg(format!("{DEPLOY}@web1")));
    // legacy scp: the file's name travels in the protocol's C record.
    let sent = local(b"r\xfe.bin", "sent by scp\n");
    ok(client("scp")
        .arg("-O")
        .arg("-F")
        .arg(&w.alice)
        .arg(&sent)
        .arg(format!("{DEPLOY}@web1:{remote_dir}/")));
    let listing = run(ssh(&w.alice).args(["-l", DEPLOY, "web1", &format!("ls {remote_dir}")])).stdout;
    assert_eq!(
        listing,
        b"caf\xff.txt\nr\xfe.bin\n",
        "{}",
        String::from_utf8_lossy(&listing)
    );
    wait_sessions_ended(&w);

    let exact = |text: &str, hex: &Option<String>| session_recordings::Name::from_recorded(text, hex.as_deref());
    let want = |name: &[u8]| {
        let mut p = format!("{remote_dir}/").into_bytes();
        p.extend_from_slice(name);
        session_recordings::Name::new(p)
    };
    let all: Vec<(String, Meta)> = recordings(&w)
        .into_iter()
        .flat_map(|(h, ev)| {
            ev.into_iter()
                .filter_map(move |e| Some((h.session_id.clone(), e.meta()?.clone())))
        })
        .collect();
    let file = all.iter().find_map(|(id, m)| match m {
        Meta::SftpFile {
            path,
            path_hex,
            bytes_written: 13,
            ..
        } => Some((id, exact(path, path_hex))),
        _ => None,
    });
    let (sftp_session, file) = file.expect("the put's file summary");
    assert_eq!(file, want(b"caf\xe9.txt"));
    let rename = all.iter().find_map(|(_, m)| match m {
        Meta::SftpOp {
            op,
            path,
            path_hex,
            target: Some(t),
            target_hex,
            outcome,
            ..
        } if op == "rename" => Some((exact(path, path_hex), exact(t, target_hex), outcome.clone())),
        _ => None,
    });
    assert_eq!(
        rename,
        Some((want(b"caf\xe9.txt"), want(b"caf\xff.txt"), "ok".to_owned()))
    );
    let transfer = all.iter().find_map(|(id, m)| match m {
        Meta::FileTransfer {
            path,
            path_hex,
            bytes: 12,
            ..
        } => Some((id, exact(path, path_hex))),
        _ => None,
    });
    let (scp_session, transfer) = transfer.expect("the scp upload's transfer");
    assert_eq!(transfer, want(b"r\xfe.bin"));

    // People see the bytes beside the text; a search by them finds the session.
    let summary = ok(w.gw.ctl().args(["recordings", "show", sftp_session]));
    let renamed = hex::encode(want(b"caf\xff.txt").as_bytes());
    assert!(
        summary.contains(&format!("[not UTF-8; bytes: {renamed}] -> ok")),
        "{summary}"
    );
    let summary = ok(w.gw.ctl().args(["recordings", "show", scp_session]));
    assert!(
        summary.contains(&hex::encode(want(b"r\xfe.bin").as_bytes())),
        "{summary}"
    );
    let found: Vec<serde_json::Value> =
        serde_json::from_str(&ok(w.gw.ctl().args(["recordings", "search", &renamed, "--json"]))).unwrap();
    assert!(found.iter().any(|f| f["session"] == sftp_session.as_str()), "{found:?}");
}

/// A refused request that leaves the channel open (X11, here) can be repeated as fast
/// as the client likes: every one is recorded, but the audit trail and the log keep
/// only the first 20 (herse::session::AUDITED_DENIALS).
#[test]
fn repeated_refused_requests_do_not_flood_the_log() {
    let w = World::new("x11flood");
    let key = key_of(&w, "alice");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = raw_login(w.gw.port, key, &w.alice_totp).await;
        let mut ch = h.channel_open_session().await.unwrap();
        for _ in 0..60 {
            ch.request_x11(false, false, "MIT-MAGIC-COOKIE-1", "00", 0)
                .await
                .unwrap();
        }
        ch.exec(true, "true").await.unwrap();
        while ch.wait().await.is_some() {}
    });
    wait_sessions_ended(&w);
    let recorded = recordings(&w)
        .into_iter()
        .flat_map(|(_, ev)| ev)
        .filter(|e| matches!(e, Event::Meta { meta: Meta::Denied { request, .. }, .. } if request.contains("x11")))
        .count();
    assert_eq!(recorded, 60, "every refusal is recorded");
    let log = std::fs::read_to_string(w.gw.dir.join("herse.log")).unwrap();
    let logged = log.lines().filter(|l| l.contains("request denied")).count();
    assert_eq!(logged, 20, "the log keeps the audited refusals only");
}

#[test]
fn a_session_channel_carries_one_judged_command_and_no_data_before_it() {
    let w = World::new("raw");
    let key = key_of(&w, "alice");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Data before any command: the channel is ended with a reason, nothing runs.
        let h = raw_login(w.gw.port, key.clone(), &w.alice_totp).await;
        let mut ch = h.channel_open_session().await.unwrap();
        ch.data(&b"echo smuggled > /tmp/herse-smuggled\n"[..]).await.unwrap();
        let stderr = stderr_until_closed(&mut ch).await;
        assert!(stderr.contains("data sent before a command"), "{stderr}");

        // A second command on the same channel is refused.
        let h = raw_login(w.gw.port, key.clone(), &w.alice_totp).await;
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, "sleep 2").await.unwrap();
        ch.exec(true, "touch /tmp/herse-second-command").await.unwrap();
        let stderr = stderr_until_closed(&mut ch).await;
        assert!(stderr.contains("one command"), "{stderr}");
    });
    assert!(!Path::new("/tmp/herse-smuggled").exists());
    assert!(!Path::new("/tmp/herse-second-command").exists());
}

/// A second factor can take a while to answer (or a security key to approve): a key
/// removed meanwhile opens nothing, however right the factor.
#[test]
fn a_key_removed_while_the_second_factor_is_asked_opens_nothing() {
    let w = World::new("keygone");
    let bob: serde_json::Value =
        serde_json::from_str(&ok(w.gw.ctl().args(["users", "show", "bob", "--json"]))).unwrap();
    let fp = bob["keys"][0]["fingerprint"].as_str().unwrap().to_owned();
    let key = key_of(&w, "bob");
    let user = format!("bob+{OPS}+web1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer = rt.block_on(async {
        let mut h = raw_connect(w.gw.port).await.unwrap();
        let auth = h
            .authenticate_publickey(&user, russh::keys::PrivateKeyWithHashAlg::new(key, None))
            .await
            .unwrap();
        assert!(!auth.success(), "a second factor is asked first");
        ok(w.gw.ctl().args(["keys", "remove", "bob", &fp]));
        let r = h.authenticate_keyboard_interactive_start(&user, None).await.unwrap();
        assert!(
            matches!(r, russh::client::KeyboardInteractiveAuthResponse::InfoRequest { .. }),
            "{r:?}"
        );
        h.authenticate_keyboard_interactive_respond(vec![totp_next(&w.bob_totp)])
            .await
            .unwrap()
    });
    assert!(
        !matches!(answer, russh::client::KeyboardInteractiveAuthResponse::Success),
        "the login went through with a removed key"
    );
    let audit = ok(w.gw.ctl().args(["audit", "list", "--kind", "access.denied", "--json"]));
    assert!(audit.contains("its key removed during the login"), "{audit}");
    assert_eq!(ok(w.gw.ctl().args(["sessions", "list", "--json"])).trim(), "[]");
}

/// An SFTP conversation driven by hand over a raw client's channel.
struct RawSftp {
    ch: russh::Channel<russh::client::Msg>,
    buf: Vec<u8>,
}

impl RawSftp {
    async fn send(&mut self, kind: u8, body: &[u8]) {
        let mut p = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend_from_slice(body);
        self.ch.data(&p[..]).await.unwrap();
    }

    /// The next packet: its type and body.
    async fn recv(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + len {
                    let p: Vec<u8> = self.buf.drain(..4 + len).collect();
                    return (p[4], p[5..].to_vec());
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), self.ch.wait()).await {
                Ok(Some(russh::ChannelMsg::Data { data })) => self.buf.extend_from_slice(&data),
                Ok(Some(_)) => {}
                other => panic!("the channel ended: {other:?}"),
            }
        }
    }
}

fn sftp_string(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s);
}

/// A write-only SFTP role (a drop box) never gets a file's content: not through an OPEN
/// that also asks to read (sftp-server opens `READ | APPEND` read-only), nor through
/// READ on a handle it opened to write.
#[test]
fn a_write_only_sftp_role_cannot_read() {
    const STATUS: u8 = 101;
    const HANDLE: u8 = 102;
    let w = World::new("sftpwo");
    let home = format!("/home/{OPS}");
    let secret = format!("{home}/herse-wo-{}.txt", std::process::id());
    let dropped = format!("{home}/herse-wo-new-{}.txt", std::process::id());
    std::fs::write(&secret, "secret\n").unwrap();
    ok(Command::new("chown").arg(format!("{OPS}:{OPS}")).arg(&secret));
    let key = key_of(&w, "bob");
    let open = |id: u32, path: &str, pflags: u32| {
        let mut b = id.to_be_bytes().to_vec();
        sftp_string(&mut b, path.as_bytes());
        b.extend_from_slice(&pflags.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b
    };
    let status_code = |body: &[u8]| u32::from_be_bytes(body[4..8].try_into().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = raw_login_as(w.gw.port, key, &w.bob_totp, &format!("bob+{OPS}+drop1")).await;
        let ch = h.channel_open_session().await.unwrap();
        ch.request_subsystem(true, "sftp").await.unwrap();
        let mut sftp = RawSftp { ch, buf: Vec::new() };
        sftp.send(1, &3u32.to_be_bytes()).await;
        assert_eq!(sftp.recv().await.0, 2, "VERSION");

        // READ | APPEND on a file that exists: refused by the gateway.
        sftp.send(3, &open(1, &secret, 0x01 | 0x04)).await;
        let (kind, body) = sftp.recv().await;
        assert_eq!(kind, STATUS, "an OPEN that reads must not give a handle to this role");
        assert_eq!(status_code(&body), 3, "permission denied");

        // Opening to write is what the role is for...
        sftp.send(3, &open(2, &dropped, 0x02 | 0x08 | 0x10)).await;
        let (kind, body) = sftp.recv().await;
        assert_eq!(kind, HANDLE, "{body:?}");
        let handle = body[8..].to_vec();
        // ...but reading through that handle is refused by the gateway itself (the
        // target would answer "failure", not "permission denied").
        let mut read = 3u32.to_be_bytes().to_vec();
        sftp_string(&mut read, &handle);
        read.extend_from_slice(&0u64.to_be_bytes());
        read.extend_from_slice(&64u32.to_be_bytes());
        sftp.send(5, &read).await;
        let (kind, body) = sftp.recv().await;
        assert_eq!(kind, STATUS);
        assert_eq!(status_code(&body), 3, "permission denied");
        assert!(String::from_utf8_lossy(&body).contains("herse:"), "{body:?}");

        // Bytes beside the SFTP stream (extended data, which no client sends on a
        // session) would pass unjudged: they end the channel instead.
        sftp.ch.extended_data(1, &b"\0\0\0\x05\x03"[..]).await.unwrap();
        let stderr = stderr_until_closed(&mut sftp.ch).await;
        assert!(stderr.contains("extended data on a file-transfer channel"), "{stderr}");
    });
    // A role that may run no command gets an upstream certificate forcing sshd's
    // in-process SFTP server (never the login's shell and its startup files): stock
    // scp, which speaks SFTP, works through it...
    let local = w.d().join("drop.txt");
    std::fs::write(&local, "dropped by scp\n").unwrap();
    let by_scp = format!("{home}/herse-wo-scp-{}.txt", std::process::id());
    ok(client("scp")
        .arg("-F")
        .arg(&w.bob)
        .arg(&local)
        .arg(format!("{OPS}@drop1:{by_scp}")));
    assert_eq!(std::fs::read_to_string(&by_scp).unwrap(), "dropped by scp\n");
    // ...while legacy scp, which runs through that shell, is refused by the gateway.
    let legacy = format!("{home}/herse-wo-legacy-{}.txt", std::process::id());
    let up = run(client("scp")
        .arg("-O")
        .arg("-F")
        .arg(&w.bob)
        .arg(&local)
        .arg(format!("{OPS}@drop1:{legacy}")));
    assert!(!up.status.success());
    assert!(text(&up.stderr).contains("legacy scp"), "{}", text(&up.stderr));
    assert!(!Path::new(&legacy).exists());
    let _ = std::fs::remove_file(&secret);
    let _ = std::fs::remove_file(&dropped);
    let _ = std::fs::remove_file(&by_scp);
}

/// `ssh.ciphers` is what clients are offered, on the outer connection and the ProxyJump
/// hop alike (OpenSSH's `Ciphers`): a stock OpenSSH client still connects, one insisting
/// on another cipher does not.
#[test]
fn ssh_ciphers_limit_what_clients_negotiate() {
    let w = World::with_ssh("ciphers", "ciphers = [\"aes128-gcm@openssh.com\"]\n");
    let out = ok(ssh(&w.alice).args(["-l", DEPLOY, "web1", "echo through"]));
    assert_eq!(out.trim(), "through");
    refused(
        &run(ssh(&w.alice).args(["-c", "chacha20-poly1305@openssh.com", "-l", DEPLOY, "web1", "true"])),
        "no matching cipher",
    );
}

/// Refused channel opens are audited each, up to herse::front::MAX_REFUSED_CHANNELS per
/// connection; then the connection is closed, so probing targets cannot flood the audit
/// log through one login.
#[test]
fn a_connection_that_keeps_being_refused_is_closed() {
    let w = World::new("refusals");
    let key = key_of(&w, "alice");
    let limit: u32 = 16; // herse::front::MAX_REFUSED_CHANNELS
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let jump = raw_login_as(w.gw.port, key.clone(), &w.alice_totp, "alice").await;
        for i in 0..limit {
            let r = jump
                .channel_open_direct_tcpip(format!("probe{i}"), 22, "127.0.0.1", 5000)
                .await;
            assert!(r.is_err(), "an unknown target was opened");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !jump.is_closed() {
            assert!(Instant::now() < deadline, "the connection stayed open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Under the limit, a connection goes on after a refusal.
        let other = raw_login_as(w.gw.port, key.clone(), &w.alice_totp, "alice").await;
        assert!(other
            .channel_open_direct_tcpip("nowhere", 22, "127.0.0.1", 5000)
            .await
            .is_err());
        other
            .channel_open_direct_tcpip("web1", 22, "127.0.0.1", 5000)
            .await
            .expect("a known target after one refusal");
    });
    let events = json_lines(&ok(w.gw.ctl().args(["audit", "list", "--json", "--limit", "500"])));
    let detail = |e: &serde_json::Value| e["detail"].as_str().unwrap_or("").to_owned();
    let probes = events.iter().filter(|e| detail(e).contains("\"probe")).count();
    assert_eq!(probes, limit as usize, "each refusal is audited");
    assert!(
        events
            .iter()
            .any(|e| e["user"] == "alice" && detail(e).contains("connection closed after")),
        "the closing is audited"
    );
}

/// Channels per connection stop at `ssh.max_sessions`, like OpenSSH's MaxSessions, and a
/// ProxyJump hop counts against `ssh.max_connections` like an accepted connection: an
/// authenticated user cannot open upstream sessions without bound over one connection.
/// ProxyJump hops waiting for their inner login each hold a connection permit: a user
/// may have four waiting, on all of their connections, so that a key alone cannot hold
/// the gateway's permits (64 tunnel connections a workstation, ten hops each, are more
/// than the default 512). Other users are not held up, and a hop that logs in gives its
/// place back.
#[test]
fn a_users_hops_waiting_for_their_login_are_capped_across_connections() {
    let w = World::new("pendinghops");
    let shortage = |r: Result<(), russh::Error>| {
        matches!(
            r,
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::ResourceShortage
            ))
        )
    };
    let key = key_of(&w, "alice");
    let bob_key = key_of(&w, "bob");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let jump = raw_login_as(w.gw.port, key.clone(), &w.alice_totp, "alice").await;
        let hop = || jump.channel_open_direct_tcpip("web1", 22, "127.0.0.1", 5000);
        let mut waiting = Vec::new();
        for _ in 0..4 {
            waiting.push(hop().await.expect("a hop under the cap"));
        }
        assert!(shortage(hop().await.map(drop)), "a fifth waiting hop was served");
        // The cap is the user's, not the connection's.
        let other = raw_login_as(w.gw.port, key.clone(), &w.alice_totp, "alice").await;
        assert!(
            shortage(
                other
                    .channel_open_direct_tcpip("web1", 22, "127.0.0.1", 5000)
                    .await
                    .map(drop)
            ),
            "her other connection got a fifth waiting hop"
        );
        // Bob is not held up by her hops.
        let bob = raw_login_as(w.gw.port, bob_key, &w.bob_totp, "bob").await;
        bob.channel_open_direct_tcpip("web1", 22, "127.0.0.1", 5000)
            .await
            .expect("another user's hop");
        // One of her hops logs in: it waits no more, and a new hop is served.
        let mut inner = russh::client::connect_stream(
            std::sync::Arc::new(russh::client::Config::default()),
            waiting.pop().unwrap().into_stream(),
            AcceptAny,
        )
        .await
        .unwrap();
        let auth = inner
            .authenticate_publickey(DEPLOY, russh::keys::PrivateKeyWithHashAlg::new(key.clone(), None))
            .await
            .unwrap();
        if !auth.success() {
            inner
                .authenticate_keyboard_interactive_start(DEPLOY, None)
                .await
                .unwrap();
            let r = inner
                .authenticate_keyboard_interactive_respond(vec![totp_next(&w.alice_totp)])
                .await
                .unwrap();
            assert!(
                matches!(r, russh::client::KeyboardInteractiveAuthResponse::Success),
                "{r:?}"
            );
        }
        let ch = inner.channel_open_session().await.unwrap();
        ch.exec(true, "true").await.unwrap();
        hop().await.expect("the place of the hop that logged in");
        assert!(shortage(hop().await.map(drop)), "the cap held after the login");
        drop(waiting);
    });
}

/// A hop whose login the policy refuses is audited, and counts towards its jump
/// connection's refusals like a refused channel: after 16 the connection is closed,
/// so one connection cannot write refusals into the audit trail for as long as it likes.
#[test]
fn refused_hop_logins_count_towards_the_jump_connections_refusals() {
    let w = World::new("hoprefusals");
    let key = key_of(&w, "alice");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let jump = raw_login_as(w.gw.port, key.clone(), &w.alice_totp, "alice").await;
        let mut refused = 0;
        for _ in 0..40 {
            let Ok(hop) = jump.channel_open_direct_tcpip("web1", 22, "127.0.0.1", 5000).await else {
                break;
            };
            let mut inner = russh::client::connect_stream(
                std::sync::Arc::new(russh::client::Config::default()),
                hop.into_stream(),
                AcceptAny,
            )
            .await
            .unwrap();
            let auth = inner
                .authenticate_publickey("root", russh::keys::PrivateKeyWithHashAlg::new(key.clone(), None))
                .await
                .unwrap();
            assert!(!auth.success(), "root is not a login alice may use on web1");
            refused += 1;
            let _ = inner.disconnect(russh::Disconnect::ByApplication, "", "").await;
        }
        assert!(
            jump.is_closed()
                || jump
                    .channel_open_direct_tcpip("web1", 22, "127.0.0.1", 5000)
                    .await
                    .is_err()
        );
        refused
    });
    assert_eq!(refused, 16, "hop logins refused before the connection was closed");
    let audit = ok(w.gw.ctl().args(["audit", "list", "--json", "--limit", "500"]));
    let events = json_lines(&audit);
    let denied = events
        .iter()
        .filter(|e| e["kind"] == "access.denied" && e["detail"].as_str().unwrap_or("").contains("root@web1"))
        .count();
    assert_eq!(denied, 16, "{audit}");
    assert!(
        events.iter().any(|e| e["detail"]
            .as_str()
            .unwrap_or("")
            .contains("connection closed after 16 refused")),
        "{audit}"
    );
}

#[test]
fn channels_per_connection_and_proxyjump_hops_are_bounded() {
    let w = World::with_ssh(
        "limits",
        "max_connections = 4\nmax_sessions = 3\nauth_timeout = \"4s\"\n",
    );
    let shortage = |r: Result<(), russh::Error>| {
        matches!(
            r,
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::ResourceShortage
            ))
        )
    };
    let key = key_of(&w, "alice");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Single hop: three channels at once, not four; a closed one frees its slot.
        let hop = raw_login(w.gw.port, key.clone(), &w.alice_totp).await;
        let mut open = Vec::new();
        for _ in 0..3 {
            let ch = hop.channel_open_session().await.expect("a channel under the limit");
            ch.exec(true, "sleep 30").await.unwrap();
            open.push(ch);
        }
        for _ in 0..2 {
            assert!(
                shortage(hop.channel_open_session().await.map(drop)),
                "a fourth channel was not refused for resource shortage with max_sessions = 3"
            );
        }
        open.pop().unwrap().close().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match hop.channel_open_session().await {
                Ok(ch) => {
                    open.push(ch);
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "the slot was not freed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // ProxyJump: the jump connection (2 of 4) and two hops (3 and 4 of 4) fill the
        // gateway; a third hop and a new connection are both refused.
        let jump = raw_login_as(w.gw.port, key.clone(), &w.alice_totp, "alice").await;
        let mut hops = Vec::new();
        for _ in 0..2 {
            hops.push(
                jump.channel_open_direct_tcpip("web1", 22, "127.0.0.1", 5000)
                    .await
                    .expect("a hop under the connection limit"),
            );
        }
        assert!(
            shortage(
                jump.channel_open_direct_tcpip("web1", 22, "127.0.0.1", 5000)
                    .await
                    .map(drop)
            ),
            "a hop beyond max_connections was not refused for resource shortage"
        );
        let refused = tokio::time::timeout(Duration::from_secs(10), raw_connect(w.gw.port)).await;
        assert!(
            matches!(refused, Ok(Err(_))),
            "a connection beyond max_connections was not refused"
        );
        // Ending the single-hop connection frees a connection for a hop.
        drop(open);
        hop.disconnect(russh::Disconnect::ByApplication, "", "").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match jump.channel_open_direct_tcpip("web1", 22, "127.0.0.1", 5000).await {
                Ok(ch) => {
                    hops.push(ch);
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "the connection was not freed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Hops that never start their SSH handshake are cut at the auth timeout, like
        // any connection, and give their connections back: a new one is served.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let h = raw_connect(w.gw.port).await;
            if h.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "idle hops still hold their connections");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        drop(hops);
    });
    // OpenSSH connection sharing: more commands, one after another, than max_sessions
    // over one master connection. Each ends with the target closing its channel, and
    // each frees its slot.
    let ctl = w.d().join("mux.sock");
    let dest = format!("alice+{DEPLOY}+web1@gw");
    let mux = |c: &mut Command| {
        c.arg("-o").arg(format!("ControlPath={}", ctl.display()));
    };
    let mut master = ssh(&w.alice);
    mux(&mut master);
    ok(master.args(["-o", "ControlMaster=yes", "-o", "ControlPersist=30", "-f", "-N", &dest]));
    for i in 0..5 {
        let mut c = ssh(&w.alice);
        mux(&mut c);
        c.args(["-o", "ControlMaster=no", &dest, &format!("echo shared-{i}")]);
        let out = run(&mut c);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("shared-{i}")),
            "command {i} over the shared connection: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut exit = ssh(&w.alice);
    mux(&mut exit);
    let _ = run(exit.args(["-O", "exit", &dest]));

    // Refusals are audited once per connection, however often a client retries.
    let audit = ok(w.gw.ctl().args(["audit", "list", "--json"]));
    assert_eq!(audit.matches("ssh.max_sessions").count(), 1, "{audit}");
    assert_eq!(audit.matches("hop to web1 refused").count(), 1, "{audit}");
}

/// Logins started all at once are held to `max_connections` before any of them costs a
/// recording or an upstream login: those beyond the limit are refused at once, not
/// after the gateway has recorded and logged in for them.
#[test]
fn a_burst_of_logins_costs_no_more_recordings_than_max_connections_allows() {
    let w = World::new("maxburst");
    let policy_path = w.d().join("policy.toml");
    let policy = std::fs::read_to_string(&policy_path).unwrap();
    let limited = policy.replacen("[roles.db-exec]\n", "[roles.db-exec]\nmax_connections = 2\n", 1);
    assert_ne!(limited, policy);
    reload_policy(&w, &limited);
    let key = key_of(&w, "alice");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = rt.block_on(async {
        // The second factor, once: the role remembers it for the burst.
        let first = raw_login(w.gw.port, key.clone(), &w.alice_totp).await;
        first
            .disconnect(russh::Disconnect::ByApplication, "", "")
            .await
            .unwrap();
        drop(first);
        let user = format!("alice+{DEPLOY}+web1");
        let port = w.gw.port;
        let logins = (0..8).map(|_| {
            let (key, user) = (key.clone(), user.clone());
            tokio::spawn(async move {
                let mut h = raw_connect(port).await.unwrap();
                let auth = h
                    .authenticate_publickey(&user, russh::keys::PrivateKeyWithHashAlg::new(key, None))
                    .await
                    .unwrap();
                auth.success().then_some(h)
            })
        });
        let mut held = Vec::new();
        for l in logins.collect::<Vec<_>>() {
            if let Some(h) = l.await.unwrap() {
                held.push(h);
            }
        }
        let started = held.len();
        for h in held {
            let _ = h.disconnect(russh::Disconnect::ByApplication, "", "").await;
        }
        started
    });
    assert!(
        started <= 2,
        "{started} sessions started at once with max_connections = 2"
    );
    assert!(started >= 1, "none of the burst was served");
    wait_sessions_ended(&w);
    let files = std::fs::read_dir(w.gw.data().join("recordings"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "herserec"))
        .count();
    assert_eq!(files, 1 + started, "recordings made for logins that were then refused");
}

/// A role's `max_connections` caps the target sessions its holder has open at once
/// (Teleport's role option of that name): the lowest among all the user's roles applies,
/// the refusal says why and is audited, and a session that ends frees its place.
#[test]
fn a_roles_max_connections_caps_a_users_open_sessions() {
    let w = World::new("maxconn");
    let policy_path = w.d().join("policy.toml");
    let policy = std::fs::read_to_string(&policy_path).unwrap();
    // alice holds web-full and db-exec; the limit is on db-exec, which does not even
    // cover web1.
    let limited = policy.replacen("[roles.db-exec]\n", "[roles.db-exec]\nmax_connections = 2\n", 1);
    assert_ne!(limited, policy);
    reload_policy(&w, &limited);

    let live = |n: usize| {
        let start = Instant::now();
        loop {
            let rows =
                serde_json::from_str::<Vec<serde_json::Value>>(&ok(w.gw.ctl().args(["sessions", "list", "--json"])))
                    .unwrap();
            if rows.len() == n {
                return rows;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{} live sessions, not {n}",
                rows.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // One after the other: the first proves the second factor (a TOTP code is good
    // once), and the role remembers the proof for the second.
    let mut held = Vec::new();
    for n in 1..=2 {
        held.push(
            ssh(&w.alice)
                .args(["-l", DEPLOY, "web1", "sleep 60"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        live(n);
    }
    let rows = live(2);

    // From now on no proof is remembered, so a login that went ahead would ask alice
    // for a code (and the askpass program would use up a TOTP step); one over the
    // limit is refused before she is asked.
    let forgetful = std::fs::read_to_string(&policy_path)
        .unwrap()
        .replace("mfa_remember = \"1h\"\n", "");
    reload_policy(&w, &forgetful);
    let askpass_state = w.d().join("askpass.state.alice");
    let steps_used = || std::fs::read_to_string(&askpass_state).unwrap();
    let before = steps_used();

    let out = run(ssh(&w.alice).args(["-l", DEPLOY, "web1", "echo third"]));
    refused(
        &out,
        "alice already has 2 sessions open, the most role db-exec allows (max_connections)",
    );
    // The ProxyJump form counts the same sessions.
    refused(
        &run(ssh(&w.alice).args(["-J", "gw", "-l", DEPLOY, "web1", "echo third"])),
        "max_connections",
    );
    // Another user is not limited by alice's sessions (bob's roles allow a shell only).
    let mut bob = ssh(&w.bob)
        .args(["-T", "-l", OPS, "web1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        bob.stdin
            .take()
            .unwrap()
            .write_all(b"echo bob-$((1+1))\nexit\n")
            .unwrap();
    }
    let out = bob.wait_with_output().unwrap();
    assert!(text(&out.stdout).contains("bob-2"), "{}", text(&out.stderr));
    let audit = ok(w.gw.ctl().args(["audit", "list", "--json", "--limit", "500"]));
    let denials = json_lines(&audit)
        .into_iter()
        .filter(|e| e["kind"] == "access.denied" && e["detail"].as_str().unwrap_or("").contains("max_connections"))
        .count();
    assert_eq!(denials, 2, "each refusal is audited once:\n{audit}");
    assert_eq!(
        steps_used(),
        before,
        "alice was asked for a code for a login over the limit"
    );

    // Ending one session frees its place. (The proof is remembered again: a third TOTP
    // code within one 30 s step would make the askpass program wait for the next step,
    // past the gateway's auth_timeout.)
    reload_policy(&w, &limited);
    let id = rows[0]["id"].as_str().unwrap().to_owned();
    ok(w.gw.ctl().args(["sessions", "kill", &id]));
    live(1);
    assert_eq!(
        ok(ssh(&w.alice).args(["-l", DEPLOY, "web1", "echo again"])).trim(),
        "again"
    );
    for c in &mut held {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Two gateway nodes on one database. A node that stops reporting (here: frozen with
/// SIGSTOP) has its open sessions closed by the other after `cluster.node_timeout`, so
/// `sessions list` does not show them live for good; when the frozen node wakes, it
/// learns that and ends the sessions it still ran, so none runs where a kill cannot
/// reach it.
#[test]
fn a_silent_nodes_sessions_are_closed_by_another_node_and_it_ends_them_on_waking() {
    // On PostgreSQL, the multi-node backend, wherever the test server runs.
    let top = postgres_database("nodes")
        .map(|url| format!("database_url = \"{url}\"\n"))
        .unwrap_or_default();
    let w = World::with_config("nodes", &top, "");
    let second = w.d().join("herse-n2.toml");
    let text = std::fs::read_to_string(&w.gw.config).unwrap();
    std::fs::write(
        &second,
        format!("{text}\n[cluster]\nnode = \"n2\"\nnode_timeout = \"15s\"\n"),
    )
    .unwrap();
    let n2 = Gateway::start(w.d(), &second);
    let ctl2 = || n2.ctl();
    let json = |args: &[&str]| serde_json::from_str::<serde_json::Value>(&ok(ctl2().args(args))).unwrap();
    let wait = |what: &str, limit: Duration, mut done: Box<dyn FnMut() -> bool + '_>| {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < limit, "{what} within {limit:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // A session through the first node (its node name is the host name).
    let (mut held, row) = hold_session(&w, ctl2);
    let (id, first) = (
        row["id"].as_str().unwrap().to_owned(),
        row["node"].as_str().unwrap().to_owned(),
    );
    assert_ne!(first, "n2");
    let nodes = json(&["nodes", "list", "--json"]);
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let of = |name: &str| nodes.iter().find(|n| n["name"] == name).unwrap().clone();
    assert_eq!(of(&first)["live_sessions"], 1);
    assert_eq!(of("n2")["live_sessions"], 0);
    assert!(of(&first)["presumed_stopped_at"].is_null());

    // A second process started by mistake as the first node (its config again) sees the
    // node's heartbeat move and refuses to start, before it closes anything: the live
    // session's row stays open, where kills reach it.
    let started = Instant::now();
    let dup = run(Command::new(bin("herse"))
        .arg("-c")
        .arg(&w.gw.config)
        .arg("serve")
        .env("HERSE_LOG", "warn"));
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(!dup.status.success(), "{err}");
    assert!(
        err.contains(&format!("another gateway process runs as node {first}")),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_secs(5), "{err}");
    assert!(
        session_row(ctl2(), &id)["ended_at"].is_null(),
        "the live session's row is untouched"
    );

    // Freeze the first node: n2 closes its session once it has been silent for 15 s.
    w.gw.signal("STOP");
    let frozen = Instant::now();
    wait(
        "n2 closes the silent node's session",
        Duration::from_secs(40),
        Box::new(|| json(&["sessions", "list", "--json"]).as_array().unwrap().is_empty()),
    );
    assert!(
        frozen.elapsed() >= Duration::from_secs(10),
        "closed after {:?}, before the timeout",
        frozen.elapsed()
    );
    let row = session_row(ctl2(), &id);
    assert_eq!(
        row["end_reason"].as_str().unwrap(),
        format!("node {first} stopped responding (unseen for over 15s)")
    );
    let audit = ok(ctl2().args(["audit", "list", "--kind", "node.stopped", "--json"]));
    assert!(
        audit.contains(&format!(
            "node {first} unseen for over 15s: its 1 open session(s) closed by node n2"
        )),
        "{audit}"
    );
    assert!(!json(&["nodes", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == first.as_str() && n["presumed_stopped_at"].is_null()));
    assert!(held.try_wait().unwrap().is_none(), "the client cannot know yet");

    // Woken, the first node learns it was presumed stopped and ends the session.
    w.gw.signal("CONT");
    wait(
        "the woken node ends the session it still ran",
        Duration::from_secs(20),
        Box::new(|| held.try_wait().unwrap().is_some()),
    );
    let mut err = String::new();
    held.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("presumed stopped"), "the client is told why:\n{err}");
    let audit = ok(ctl2().args(["audit", "list", "--kind", "node.presumed_stopped", "--json"]));
    assert!(audit.contains("1 session(s) still running here ended"), "{audit}");
    // The row keeps the reason it was closed with; the recording is whole and sealed.
    let row = session_row(ctl2(), &id);
    assert!(row["end_reason"].as_str().unwrap().contains("stopped responding"));
    wait(
        "the recording verifies",
        Duration::from_secs(10),
        Box::new(|| run(ctl2().args(["recordings", "verify", &id])).status.success()),
    );
    let nodes = json(&["nodes", "list", "--json"]);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["presumed_stopped_at"].is_null()),
        "{nodes}"
    );
    // A node that runs cannot be forgotten; one that never existed is not found.
    let out = run(ctl2().args(["nodes", "remove", &first]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("within cluster.node_timeout (15s): stop it first"),
        "{out:?}"
    );
    assert_eq!(run(ctl2().args(["nodes", "remove", "gone"])).status.code(), Some(3));
    assert_eq!(run(ctl2().args(["nodes", "remove", "bad/name"])).status.code(), Some(2));
}

/// A PostgreSQL server of one test's own, which it may stop and start.
struct OwnPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl OwnPostgres {
    /// Started with the project's script (which installs PostgreSQL where it is missing).
    fn start(dir: PathBuf) -> OwnPostgres {
        let port = free_port();
        let script = manifest_dir().parent().unwrap().join("scripts/start-test-postgres");
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        ok(Command::new(script)
            .env("HERSE_TEST_PG_PORT", port.to_string())
            .env("HERSE_TEST_PG_DIR", &dir));
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .map(|e| e.unwrap().path().join("bin"))
            .max()
            .unwrap();
        OwnPostgres { dir, bin, port }
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        ok(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(args));
    }

    fn stop(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    fn restart(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.pg_ctl(&["-l", &format!("{}/log", self.dir.display()), "-w", "-o", &opts, "start"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fail closed when the database is lost: once a node has not reached it for
/// `cluster.node_timeout`, kills, suspensions and grant ends cannot reach its sessions,
/// so it ends them; when the database is back, it closes the rows it could not close
/// then.
#[test]
fn a_node_that_loses_its_database_ends_its_sessions_and_closes_their_rows_once_back() {
    if std::env::var_os("HERSE_TEST_POSTGRES_URL").is_none() {
        assert!(
            std::env::var_os("HERSE_REQUIRE_POSTGRES").is_none(),
            "PostgreSQL is required"
        );
        eprintln!("skipped: no PostgreSQL (scripts/test-all starts one)");
        return;
    }
    let pg = OwnPostgres::start(std::env::temp_dir().join(format!("herse-e2e-lostdb-pg-{}", std::process::id())));
    ok(Command::new("psql").args(["-q", &pg.url("postgres"), "-c", "CREATE DATABASE herse"]));
    let top = format!(
        "database_url = \"{}\"\n[cluster]\nnode_timeout = \"15s\"\n",
        pg.url("herse")
    );
    let w = World::with_config("lostdb", &top, "");
    let live = |w: &World| json_rows(&ok(w.gw.ctl().args(["sessions", "list", "--json"])));
    let (mut held, row) = hold_session(&w, || w.gw.ctl());
    let id = row["id"].as_str().unwrap().to_owned();

    pg.stop();
    let lost = Instant::now();
    while held.try_wait().unwrap().is_none() {
        assert!(
            lost.elapsed() < Duration::from_secs(40),
            "the session outlived its node's database"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        lost.elapsed() >= Duration::from_secs(10),
        "ended after {:?}",
        lost.elapsed()
    );
    let mut err = String::new();
    held.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("cannot reach the database for over 15s"), "{err}");

    // Back (after the node gave up writing the session's end): the row it could not
    // close then is closed, and audited.
    w.gw.wait_line("cannot close session row", Duration::from_secs(30));
    pg.restart();
    let back = Instant::now();
    while !live(&w).is_empty() {
        assert!(back.elapsed() < Duration::from_secs(30), "the row stayed open");
        std::thread::sleep(Duration::from_millis(300));
    }
    let row = session_row(w.gw.ctl(), &id);
    assert!(
        row["end_reason"].as_str().unwrap().contains("could not be written"),
        "{row}"
    );
    let audit = ok(w.gw.ctl().args(["audit", "list", "--kind", "session.end", "--json"]));
    assert!(audit.contains(&id), "{audit}");
    // The recording was sealed with the real reason, and verifies.
    ok(w.gw.ctl().args(["recordings", "verify", &id]));
    let shown = ok(w.gw.ctl().args(["recordings", "show", &id]));
    assert!(shown.contains("cannot reach the database"), "{shown}");
}

fn json_rows(out: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(out).unwrap()
}

/// Run `sleep 120` on web1 as alice and wait until its session is live (the only one,
/// as `ctl` lists them): the client, its stderr piped, and the session's row.
#[allow(clippy::zombie_processes)] // the client is returned; its caller waits for it
fn hold_session(w: &World, ctl: impl Fn() -> Command) -> (std::process::Child, serde_json::Value) {
    let mut held = ssh(&w.alice)
        .args(["-l", DEPLOY, "web1", "sleep 120"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let [row] = json_rows(&ok(ctl().args(["sessions", "list", "--json"]))).as_slice() {
            return (held, row.clone());
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = held.kill();
            panic!("the session never went live");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `sessions list --all` row of session `id`.
fn session_row(mut ctl: Command, id: &str) -> serde_json::Value {
    json_rows(&ok(ctl.args(["sessions", "list", "--all", "--json"])))
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no session {id}"))
}

/// A hostile target: accepts the gateway's login, and on `exec` tries to open every
/// kind of channel back towards the gateway, then answers and ends the command with a
/// signal and a message.
struct HostileTarget {
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Channels of each kind the hostile target opens per command.
const HOSTILE_OPENS: usize = 25;

impl russh::server::Handler for HostileTarget {
    type Error = russh::Error;

    async fn auth_openssh_certificate(
        &mut self,
        _: &str,
        _: &russh::keys::Certificate,
    ) -> Result<russh::server::Auth, Self::Error> {
        Ok(russh::server::Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _: russh::Channel<russh::server::Msg>,
        reply: russh::server::ChannelOpenHandle,
        _: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: russh::ChannelId,
        _: &[u8],
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let handle = session.handle();
        let (opened, refused) = (self.opened.clone(), self.refused.clone());
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::SeqCst;
            for _ in 0..HOSTILE_OPENS {
                let tries = [
                    handle.channel_open_session().await,
                    handle.channel_open_x11("127.0.0.1", 6010).await,
                    handle.channel_open_agent().await,
                    handle
                        .channel_open_forwarded_tcpip("127.0.0.1", 8080, "127.0.0.1", 4242)
                        .await,
                    handle
                        .channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 4242)
                        .await,
                ];
                for t in tries {
                    match t {
                        Ok(_) => opened.fetch_add(1, SeqCst),
                        Err(_) => refused.fetch_add(1, SeqCst),
                    };
                }
            }
            let _ = handle.data(channel, b"answered\n".to_vec()).await;
            let _ = handle
                .exit_signal_request(
                    channel,
                    russh::Sig::TERM,
                    false,
                    "words with the signal".into(),
                    "xx".into(),
                )
                .await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }
}

/// The gateway asks targets for no forwarding, so a channel a target opens towards it
/// is a target misbehaving: refused, every kind, rather than accepted and kept for the
/// connection's life (a hostile target repeating it would exhaust the gateway's
/// memory). The session itself goes on.
#[test]
fn channels_a_target_opens_towards_the_gateway_are_refused() {
    let w = World::new("hostile");
    let host = keygen(w.d(), "hostile_host");
    let host_pub = std::fs::read_to_string(format!("{}.pub", host.display())).unwrap();
    let host_key = russh::keys::load_secret_key(&host, None).unwrap();
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = std::sync::Arc::new(russh::server::Config {
        keys: vec![host_key],
        ..Default::default()
    });
    let (o, r) = (opened.clone(), refused.clone());
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = HostileTarget {
                opened: o.clone(),
                refused: r.clone(),
            };
            if let Ok(session) = russh::server::run_stream(config.clone(), stream, handler).await {
                tokio::spawn(session);
            }
        }
    });

    let policy_path = w.d().join("policy.toml");
    let policy = std::fs::read_to_string(&policy_path).unwrap();
    let hostile = format!(
        "[tiers.web.targets.hostile1]\naddress = \"127.0.0.1\"\nport = {port}\nhost_keys = [\"{}\"]\n\n",
        host_pub.trim()
    );
    reload_policy(
        &w,
        &policy.replacen("[tiers.db.targets.db1]", &format!("{hostile}[tiers.db.targets.db1]"), 1),
    );

    let key = key_of(&w, "alice");
    let (out, status) = rt.block_on(async {
        let h = raw_login_as(w.gw.port, key, &w.alice_totp, &format!("alice+{DEPLOY}+hostile1")).await;
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, "true").await.unwrap();
        let mut out = Vec::new();
        let mut status = None;
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = ch.wait().await {
                match m {
                    russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
                    russh::ChannelMsg::ExitSignal {
                        signal_name,
                        error_message,
                        lang_tag,
                        ..
                    } => status = Some((format!("{signal_name:?}"), error_message, lang_tag)),
                    _ => {}
                }
            }
        })
        .await
        .expect("the command answers within 30 s");
        (text(&out), status)
    });
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(opened.load(SeqCst), 0, "no channel the target opened was accepted");
    assert_eq!(refused.load(SeqCst), 5 * HOSTILE_OPENS);
    // The exit signal's words reach the client and the recording; its language tag,
    // which nothing records, does not cross.
    assert_eq!(
        (out.as_str(), status),
        (
            "answered\n",
            Some(("TERM".into(), "words with the signal".into(), String::new()))
        )
    );
    w.gw.wait_line(
        "target opened a channel towards the gateway; refused",
        Duration::from_secs(5),
    );
    wait_sessions_ended(&w);
    let recorded = recordings(&w)
        .into_iter()
        .find(|(h, _)| h.target == "hostile1")
        .expect("the hostile target's session is recorded")
        .1;
    assert!(
        recorded.iter().any(|e| matches!(e,
            Event::Meta { meta: Meta::ExitSignal { signal, message: Some(m), .. }, .. }
            if signal == "TERM" && m == "words with the signal")),
        "{recorded:?}"
    );
}
