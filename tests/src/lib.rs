//! End-to-end test harness: real OpenSSH `sshd` targets, the real `herse` gateway and
//! `hersectl`, and the real OpenSSH client, all on loopback in a throwaway directory.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

pub use anyhow::Result;

pub mod netns;
pub mod people;

/// Directory holding the built `herse` and `hersectl` binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("HERSE_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(|p| p.parent()).expect("target dir").to_owned()
}

/// This crate's directory as `cargo test` gives it at run time (a test binary reused
/// from a shared target dir may have been compiled in another checkout).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A loopback TCP port nothing listens on, for a server a test starts next.
///
/// It is taken below the kernel's ephemeral range. A port from `bind(0)` is free only until
/// the kernel hands it to the next outgoing connection, and tests running at the same time
/// make many (to targets, to the portal); one of them taking the port before the server
/// binds it fails that server's start, as it once did in CI. Ports below the range are
/// never handed out that way, and a counter keeps this process's tests apart.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static FIRST: OnceLock<u32> = OnceLock::new();
    const LOW: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low < LOW + 1_000 {
        return TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    }
    let span = ephemeral_low - LOW;
    // Successive test binaries start at different places, away from ports the one before
    // may have left in TIME_WAIT.
    let first = *FIRST.get_or_init(|| std::process::id().wrapping_mul(7_919) % span);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (first + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral_low}");
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Unix account on this machine for targets to log in to (created once, idempotent).
pub fn ensure_account(login: &str) {
    let exists = Command::new("id")
        .arg(login)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    if !exists {
        // `-p '*'`: no password, but not locked (sshd with UsePAM no refuses locked accounts).
        let st = Command::new("useradd")
            .args(["-m", "-p", "*", "-s", "/bin/sh", login])
            .status()
            .unwrap();
        assert!(
            st.success() || Command::new("id").arg(login).status().unwrap().success(),
            "useradd {login}"
        );
    }
    // A home left behind by an earlier account of that name (removed, then added again
    // under another uid) is not the login's own, and writes there would fail on the
    // target for a reason that has nothing to do with Herse.
    let entry = Command::new("getent").args(["passwd", login]).output().unwrap();
    let entry = String::from_utf8_lossy(&entry.stdout);
    if let Some(home) = entry.trim().split(':').nth(5).filter(|h| h.starts_with("/home/")) {
        let st = Command::new("chown")
            .arg(format!("{login}:"))
            .arg(home)
            .status()
            .unwrap();
        assert!(st.success(), "chown {login}: {home}");
    }
}

/// Kill the child on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OpenSSH sshd target.
pub struct Sshd {
    pub port: u16,
    pub host_key_pub: String,
    pub dir: PathBuf,
    pub proc: Proc,
}

pub struct SshdOptions<'a> {
    pub user_ca_pub: &'a Path,
    /// Run inside this network namespace, listening on `(address, port)` there.
    /// Default: loopback of the test's namespace, on a free port.
    pub netns: Option<(&'a netns::Netns, &'a str, u16)>,
    /// An OpenSSH host certificate file to present, if any.
    pub host_cert: Option<&'a Path>,
    pub host_key: Option<&'a Path>,
    /// Serve the sftp subsystem (OpenSSH's sftp-server).
    pub sftp: bool,
}

impl Sshd {
    /// A target on loopback trusting the test gateway's user CA (`dir/data/user_ca.pub`),
    /// with its own host key.
    pub fn target(dir: &Path, name: &str) -> Sshd {
        Sshd::start(
            dir,
            name,
            SshdOptions {
                user_ca_pub: &dir.join("data/user_ca.pub"),
                netns: None,
                host_cert: None,
                host_key: None,
                sftp: true,
            },
        )
    }

    pub fn start(dir: &Path, name: &str, opts: SshdOptions<'_>) -> Sshd {
        std::fs::create_dir_all("/run/sshd").ok();
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let key = match opts.host_key {
            Some(k) => k.to_owned(),
            None => {
                let k = d.join("host_ed25519");
                if !k.exists() {
                    ok(Command::new("ssh-keygen")
                        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                        .arg(&k));
                }
                k
            }
        };
        let host_key_pub =
            std::fs::read_to_string(key.with_extension("pub").to_string_lossy().replace(".pub", "") + ".pub")
                .unwrap_or_else(|_| std::fs::read_to_string(format!("{}.pub", key.display())).unwrap());
        let (port, listen) = match opts.netns {
            Some((_, addr, port)) => (port, addr.to_owned()),
            None => (free_port(), "127.0.0.1".to_owned()),
        };
        let mut cfg = format!(
            "Port {port}\nListenAddress {listen}\nHostKey {}\nTrustedUserCAKeys {}\nAuthorizedKeysFile none\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             AllowTcpForwarding yes\nLogLevel VERBOSE\nPrintMotd no\nExposeAuthInfo yes\n\
             AcceptEnv LANG LC_* TZ HERSE_TEST_*\n",
            key.display(),
            opts.user_ca_pub.display()
        );
        if opts.sftp {
            cfg.push_str("Subsystem sftp /usr/lib/openssh/sftp-server\n");
        }
        if let Some(c) = opts.host_cert {
            cfg.push_str(&format!("HostCertificate {}\n", c.display()));
        }
        let cfg_path = d.join("sshd_config");
        std::fs::write(&cfg_path, cfg).unwrap();
        let check = run(Command::new("/usr/sbin/sshd").arg("-t").arg("-f").arg(&cfg_path));
        assert!(
            check.status.success(),
            "sshd -t: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = match opts.netns {
            Some((ns, _, _)) => ns.command("/usr/sbin/sshd"),
            None => Command::new("/usr/sbin/sshd"),
        };
        let child = cmd
            .arg("-D")
            .arg("-f")
            .arg(&cfg_path)
            .arg("-E")
            .arg(d.join("sshd.log"))
            .spawn()
            .unwrap();
        let proc = Proc {
            child,
            name: format!("sshd {name}"),
        };
        match opts.netns {
            Some((ns, addr, port)) => ns.wait_port(addr, port),
            None => wait_port(port),
        }
        Sshd {
            port,
            host_key_pub: host_key_pub.trim().to_owned(),
            dir: d,
            proc,
        }
    }
}

pub fn wait_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `herse serve` with its configuration directory.
pub struct Gateway {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub proc: Option<Proc>,
    pub stderr_lines: mpsc::Receiver<String>,
}

impl Gateway {
    /// Write the config (listening on an ephemeral port), run `herse init`.
    pub fn init(dir: &Path) -> PathBuf {
        Gateway::init_with(dir, "")
    }

    /// [`Gateway::init`] with `top` (top-level settings, such as `database_url`) added.
    pub fn init_with(dir: &Path, top: &str) -> PathBuf {
        let cfg = dir.join("herse.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"data\"\nmaster_key_file = \"secrets/master.key\"\npolicy = \"policy.toml\"\n{top}\
                 [ssh]\nlisten = [\"127.0.0.1:0\"]\nauth_timeout = \"20s\"\ndrain_timeout = \"3s\"\n\
                 [sessions]\nenv_allow = [\"LANG\", \"HERSE_TEST_*\"]\n"
            ),
        )
        .unwrap();
        ok(Command::new(bin("herse")).arg("-c").arg(&cfg).arg("init").arg("--json"));
        cfg
    }

    pub fn start(dir: &Path, config: &Path) -> Gateway {
        let mut gw = Gateway::spawn(dir, config, None);
        let line = gw.wait_line("SSH listening on", Duration::from_secs(20));
        gw.port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
        gw
    }

    /// Start `herse serve` (inside `netns` if given) without waiting for a listener.
    pub fn spawn(dir: &Path, config: &Path, netns: Option<&netns::Netns>) -> Gateway {
        let mut cmd = match netns {
            Some(ns) => ns.command(bin("herse")),
            None => Command::new(bin("herse")),
        };
        let mut child = cmd
            .arg("-c")
            .arg(config)
            .arg("serve")
            // `HERSE_TEST_LOG` sets the gateway's log filter for a debugging run.
            .env(
                "HERSE_LOG",
                std::env::var("HERSE_TEST_LOG").unwrap_or_else(|_| "info,russh=warn".to_owned()),
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = dir.join("herse.log");
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
                let _ = tx.send(line);
            }
        });
        Gateway {
            dir: dir.to_owned(),
            config: config.to_owned(),
            port: 0,
            proc: Some(Proc {
                child,
                name: "herse".into(),
            }),
            stderr_lines: rx,
        }
    }

    /// Wait for a line of the gateway's stderr containing `needle`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(why) => {
                    // CI keeps only the test's output, not its directory: show the log's end.
                    let log = self.dir.join("herse.log");
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                    let state = match why {
                        mpsc::RecvTimeoutError::Timeout => "still running",
                        mpsc::RecvTimeoutError::Disconnected => "exited",
                    };
                    panic!(
                        "gateway never printed {needle:?} ({state}); the end of {}:\n{tail}",
                        log.display()
                    )
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().unwrap().child.id()
    }

    pub fn signal(&self, sig: &str) {
        ok(Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()));
    }

    /// Resident memory of the gateway process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn ctl(&self) -> Command {
        let mut c = Command::new(bin("hersectl"));
        c.arg("-c").arg(&self.config);
        c
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// The URL of a fresh database on the tests' PostgreSQL server (`HERSE_TEST_POSTGRES_URL`,
/// started by `scripts/test-all`), or `None` where none runs. `HERSE_REQUIRE_POSTGRES`
/// makes a missing server an error, so the full run cannot skip it silently.
pub fn postgres_database(prefix: &str) -> Option<String> {
    let Ok(admin) = std::env::var("HERSE_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("HERSE_REQUIRE_POSTGRES").is_none(),
            "HERSE_REQUIRE_POSTGRES is set but HERSE_TEST_POSTGRES_URL is not"
        );
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("herse_e2e_{prefix}_{}_{nanos}", std::process::id());
    ok(Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", &admin, "-c"])
        .arg(format!("CREATE DATABASE {name}")));
    let (base, _) = admin
        .rsplit_once('/')
        .expect("HERSE_TEST_POSTGRES_URL ends in /DATABASE");
    Some(format!("{base}/{name}"))
}

/// A throwaway directory removed on drop (kept when HERSE_KEEP_TEST_DIRS is set).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("herse-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("HERSE_KEEP_TEST_DIRS").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Make an ed25519 key pair; returns the private key path.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let k = dir.join(name);
    ok(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(name)
        .arg("-f")
        .arg(&k));
    k
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Enrol a TOTP second factor for `user` with `hersectl users totp enroll`, answering its
/// confirmation like an authenticator app would. Returns the otpauth URI.
pub fn enrol_totp(config: &Path, user: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(bin("hersectl"))
        .arg("-c")
        .arg(config)
        .args(["users", "totp", "enroll", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut uri = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut uri)
        .unwrap();
    let uri = uri.trim().to_owned();
    let code = totp_rs::Totp::from_url(&uri).unwrap().generate_current();
    writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "totp enroll {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    uri
}

/// The current TOTP code of an otpauth URI.
pub fn totp_now(uri: &str) -> String {
    totp_rs::Totp::from_url(uri).unwrap().generate_current().to_string()
}

/// The code of the next 30 s step (accepted now: one step of skew).
pub fn totp_next(uri: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    totp_rs::Totp::from_url(uri).unwrap().generate(now + 30).to_string()
}

/// An `SSH_ASKPASS` program answering Herse's TOTP prompt ("... (TOTP) for USER: ") like
/// an authenticator app: the code of that user's URI. A code is accepted once, so the
/// script waits for the next 30 s step rather than offer one it already gave.
pub fn write_askpass(path: &Path, users: &[(&str, &str)]) {
    use std::os::unix::fs::PermissionsExt;
    let mut secrets = String::new();
    for (user, uri) in users {
        let t = totp_rs::Totp::from_url(uri).unwrap();
        secrets.push_str(&format!("    {user:?}: {:?},\n", t.secret().to_base32()));
    }
    let state = format!("{}.state", path.display());
    let script = format!(
        r#"#!/usr/bin/env python3
import base64, fcntl, hashlib, hmac, struct, sys, time
SECRETS = {{
{secrets}}}
prompt = sys.argv[1] if len(sys.argv) > 1 else ""
user = prompt.rsplit(" for ", 1)[-1].strip().rstrip(":").strip()
if "(TOTP)" not in prompt or user not in SECRETS:
    print("")
    sys.exit(0)
with open("{state}." + user, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    last = int(f.read().strip() or 0)
    now = int(time.time()) // 30
    # The gateway accepts one step of skew: the next step's code is valid now.
    step = max(now, last + 1)
    if step > now + 1:
        time.sleep((step - 1) * 30 - time.time() + 0.3)
    f.seek(0)
    f.truncate()
    f.write(str(step))
key = base64.b32decode(SECRETS[user] + "=" * (-len(SECRETS[user]) % 8))
h = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1000000))
"#
    );
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The enrolment used the current step.
    for (user, _) in users {
        let step = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 30;
        std::fs::write(format!("{state}.{user}"), step.to_string()).unwrap();
    }
}

/// Point OpenSSH at an askpass program for its keyboard-interactive prompts.
pub fn with_askpass<'a>(cmd: &'a mut Command, askpass: &Path) -> &'a mut Command {
    cmd.env("SSH_ASKPASS", askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
}

/// `hersectl ... --json` output of one JSON object per line (`audit list`).
pub fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// Run one statement on a gateway's SQLite database, as someone who can write only the
/// database would.
pub fn sqlite(db: &Path, sql: &str) {
    ok(Command::new("python3").arg("-c").arg(format!(
        "import sqlite3; c = sqlite3.connect({:?}); c.execute({sql:?}); c.commit()",
        db.display().to_string()
    )));
}

/// The audit chain's event hash (the spec in `gateway/src/audit_log/chain.rs`), in
/// Python, for the scripts below that act as a database writer who read it.
const PY_EVENT_HASH: &str = r#"
import hashlib, sqlite3, sys, time, uuid
def s(x):
    b = x.encode()
    return len(b).to_bytes(4, "big") + b
def o(x):
    return b"\x00" if x is None else b"\x01" + s(x)
def event_hash(seq, eid, at, kind, severity, user, session, addr, ws, detail, prev):
    e = (s("herse-audit-event-v1") + seq.to_bytes(8, "big", signed=True) + s(eid)
         + at.to_bytes(8, "big", signed=True) + s(kind) + s(severity)
         + o(user) + o(session) + o(addr) + o(ws) + s(detail) + bytes.fromhex(prev))
    return hashlib.sha256(e).hexdigest()
"#;

fn python_on_chain(script: &str, db: &Path, args: &[&str]) {
    ok(Command::new("python3")
        .arg("-c")
        .arg(format!("{PY_EVENT_HASH}{script}"))
        .arg(db)
        .args(args));
}

/// Append an audit event to a gateway's SQLite database with a correct hash chain, as
/// someone who can write only the database (and has read the chain's public spec) would.
/// The gateway's next checkpoint signs it along with the rest.
pub fn sqlite_forge_audit_event(db: &Path, kind: &str, session: &str, detail: &str) {
    const SCRIPT: &str = r#"
db, kind, session, detail = sys.argv[1:5]
c = sqlite3.connect(db, isolation_level=None)
c.execute("BEGIN IMMEDIATE")
seq, prev = c.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
seq += 1
eid, at = uuid.uuid4().hex, int(time.time() * 1e6)
h = event_hash(seq, eid, at, kind, "info", None, session, None, None, detail, prev)
c.execute("INSERT INTO audit_events (seq, id, at, kind, severity, user_name, session_id, client_addr, "
          "workstation, detail, prev_hash, hash) VALUES (?, ?, ?, ?, 'info', NULL, ?, NULL, NULL, ?, ?, ?)",
          (seq, eid, at, kind, session, detail, prev, h))
c.execute("UPDATE audit_head SET seq = ?, hash = ?, updated_at = ? WHERE id = 1", (seq, h, at))
c.execute("COMMIT")
"#;
    python_on_chain(SCRIPT, db, &[kind, session, detail]);
}

/// Rewrite audit event `seq`'s detail in a gateway's SQLite database and leave a whole
/// chain behind, as a database writer would: the checkpoints from `seq` on deleted, every
/// hash recomputed, the head moved. Only the gateway's witness can tell.
pub fn sqlite_rewrite_audit_event(db: &Path, seq: i64, detail: &str) {
    const SCRIPT: &str = r#"
db, target, detail = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = sqlite3.connect(db, isolation_level=None)
c.execute("BEGIN IMMEDIATE")
c.execute("DELETE FROM audit_checkpoints WHERE seq >= ?", (target,))
c.execute("UPDATE audit_events SET detail = ? WHERE seq = ?", (detail, target))
prev = "00" * 32
rows = c.execute("SELECT seq, id, at, kind, severity, user_name, session_id, client_addr, workstation, "
                 "detail FROM audit_events WHERE seq IS NOT NULL ORDER BY seq").fetchall()
for r in rows:
    h = event_hash(*r, prev)
    c.execute("UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, r[0]))
    prev = h
c.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (rows[-1][0], prev))
c.execute("COMMIT")
"#;
    python_on_chain(SCRIPT, db, &[&seq.to_string(), detail]);
}
