//! Remote `hersectl` under each caller's own permissions: an engineer's real OpenSSH
//! session is recorded; an auditor logged in from "a workstation" lists, searches,
//! shows, verifies, exports and plays it through the HTTPS control API (the recording is
//! downloaded into a private cache and checked there); an admin manages users, keys and
//! role bindings remotely; each is refused what their role does not give them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use herse_e2e::people::{init_with_portal, jump_config, People};
use herse_e2e::*;

const DEPLOY: &str = "hdeploy";
const PASSWORD: &str = "Correct-Horse-Battery-9";
const MARKER: &str = "MARKER-remote-7f3a";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct World {
    dir: PathBuf,
    gw: Gateway,
    port: u16,
    people: People,
    eve_cfg: PathBuf,
    eve_key: PathBuf,
}

impl World {
    fn as_(&self, who: &str) -> Command {
        self.people.as_(who)
    }

    /// eve's real OpenSSH client running `command` on db1 through the gateway (her second
    /// factor through the askpass).
    fn eve_runs(&self, command: &str) -> Command {
        let mut ssh = Command::new("ssh");
        with_askpass(&mut ssh, &self.people.askpass)
            .arg("-F")
            .arg(&self.eve_cfg)
            .args(["-l", DEPLOY, "db1", command])
            .stdin(Stdio::null());
        ssh
    }

    fn session_file(&self, who: &str) -> PathBuf {
        self.people.session_file(who)
    }

    fn login(&self, who: &str, code: &str) {
        self.people.login(who, code)
    }

    fn code(&self, who: &str) -> String {
        self.people.code(who)
    }

    /// GET the recording file endpoint with `who`'s token, as an attacker with curl
    /// would: the HTTP status.
    fn curl_file(&self, who: &str, path_and_query: &str) -> String {
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.session_file(who)).unwrap()).unwrap();
        let token = saved["token"].as_str().unwrap();
        ok(Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--path-as-is",
                "--cacert",
            ])
            .arg(self.dir.join("data/portal_cert.pem"))
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("https://127.0.0.1:{}{path_and_query}", self.port)))
    }
}

fn refused(out: &Output, why: &str) {
    assert_eq!(out.status.code(), Some(4), "wanted refusal: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains(why), "wanted {why:?}: {}", text(&out.stderr));
}

/// A gateway with its portal, one target and three people; `name` keeps the test's
/// directory apart from the other tests of this file, which run at the same time.
fn world(name: &str) -> (TempDir, World, Sshd) {
    ensure_account(DEPLOY);
    let dir = TempDir::new(name);
    let d = dir.0.clone();
    let (cfg, port) = init_with_portal(&d);
    let db = Sshd::target(&d, "db1");
    std::fs::write(
        d.join("policy.toml"),
        format!(
            "[tiers.db.targets.db1]\naddress = \"127.0.0.1\"\nport = {p}\nhost_keys = [\"{k}\"]\n\
             [roles.engineers]\ntiers = [\"db\"]\nlogins = [\"{DEPLOY}\"]\noperations = [\"shell\", \"exec\"]\n\
             max_session = \"1h\"\nidle_timeout = \"10m\"\nmfa_remember = \"1h\"\n\
             [roles.auditors]\nkind = \"auditor\"\n\
             [roles.admins]\nkind = \"admin\"\n",
            p = db.port,
            k = db.host_key_pub
        ),
    )
    .unwrap();
    let gw = Gateway::start(&d, &cfg);
    gw.wait_line("portal listening on", Duration::from_secs(10));
    let people = People::enrol(
        &gw,
        port,
        PASSWORD,
        &[("eve", "engineers"), ("audrey", "auditors"), ("adam", "admins")],
    );
    let eve_key = keygen(&d, "eve");
    ok(gw
        .ctl()
        .args(["keys", "add", "eve"])
        .arg(format!("{}.pub", eve_key.display())));
    let eve_cfg = jump_config(&d, gw.port, "eve", &eve_key, &["db1"], "ERROR");
    let w = World {
        dir: d,
        gw,
        port,
        people,
        eve_cfg,
        eve_key,
    };
    (dir, w, db)
}

/// A text scan reads every recording whole and holds the gateway's one scan turn. An
/// auditor who gives up (hersectl interrupted, its connection closed) must not leave it
/// reading on for nobody while every other scan waits.
#[test]
fn a_remote_scan_stops_when_its_caller_hangs_up() {
    let (_dir, w, _db) = world("remote-scan");
    // A recording that takes seconds to scan: 100 MB of terminal-less output.
    let mut ssh = w.eve_runs("head -c 100000000 /dev/zero | tr '\\0' a | fold -w 99");
    assert!(ssh.stdout(Stdio::null()).status().unwrap().success());
    w.login("audrey", &w.code("audrey"));
    let started = std::time::Instant::now();
    let mut scan = w
        .as_("audrey")
        .args(["recordings", "search", "text-that-is-nowhere"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        scan.try_wait().unwrap().is_none(),
        "the scan ended within {:?}: the recording is too small for this test",
        started.elapsed()
    );
    scan.kill().unwrap();
    let _ = scan.wait();
    let hung_up = std::time::Instant::now();
    w.gw.wait_line("recording scan stopped early", Duration::from_secs(10));
    eprintln!("scan stopped {:?} after its caller hung up", hung_up.elapsed());
}

#[test]
fn every_command_remotely_under_the_callers_permissions() {
    let (_dir, w, _db) = world("remote");

    // The engineer's real session, recorded.
    let out = ok(&mut w.eve_runs(&format!("echo {MARKER}")));
    assert!(out.contains(MARKER), "{out}");
    let all: serde_json::Value =
        serde_json::from_str(&ok(w.gw.ctl().args(["sessions", "list", "--all", "--json"]))).unwrap();
    let id = all[0]["id"].as_str().unwrap().to_owned();
    // The row closes as the session ends.
    for _ in 0..50 {
        let s: serde_json::Value =
            serde_json::from_str(&ok(w.gw.ctl().args(["sessions", "list", "--all", "--json"]))).unwrap();
        if !s[0]["ended_at"].is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    w.login("audrey", &w.code("audrey"));
    w.login("adam", &w.code("adam"));
    // eve's TOTP step went to ssh: she logs in with a recovery code.
    let codes = ok(w.gw.ctl().args(["users", "recovery-codes", "eve"]));
    w.login("eve", codes.lines().next().unwrap().trim());

    // The auditor: list (with --contains, scanned on the gateway), search, show, verify,
    // export, play.
    let list: serde_json::Value = serde_json::from_str(&ok(w.as_("audrey").args([
        "recordings",
        "list",
        "--contains",
        MARKER,
        "--json",
    ])))
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    let none: serde_json::Value = serde_json::from_str(&ok(w.as_("audrey").args([
        "recordings",
        "list",
        "--contains",
        "no-such-text-anywhere",
        "--json",
    ])))
    .unwrap();
    assert!(none.as_array().unwrap().is_empty(), "{none}");
    let hits: serde_json::Value =
        serde_json::from_str(&ok(w.as_("audrey").args(["recordings", "search", MARKER, "--json"]))).unwrap();
    assert_eq!(hits[0]["session"], id.as_str(), "{hits}");

    let show: serde_json::Value =
        serde_json::from_str(&ok(w.as_("audrey").args(["recordings", "show", &id, "--json"]))).unwrap();
    assert_eq!(show["verification"], "complete", "{show}");
    assert_eq!(show["user"], "eve");
    let verify = ok(w.as_("audrey").args(["recordings", "verify", &id]));
    assert!(verify.contains("complete"), "{verify}");
    // With the key pinned from `herse init`, not the gateway's word.
    ok(w.as_("audrey")
        .args(["recordings", "verify", &id, "--public-key"])
        .arg(w.dir.join("data/audit_key.pub")));
    // A wrong pinned key fails the check.
    let wrong = run(w.as_("audrey").args([
        "recordings",
        "verify",
        &id,
        "--public-key",
        "5866666666666666666666666666666666666666666666666666666666666666",
    ]));
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong.stdout));
    // Every recording and the chain between them, read page by page from the gateway.
    let all: serde_json::Value =
        serde_json::from_str(&ok(w.as_("audrey").args(["recordings", "verify", "--all", "--json"]))).unwrap();
    assert!(all.to_string().contains(&id), "{all}");

    let export = ok(w.as_("audrey").args(["recordings", "export", &id, "--format", "text"]));
    assert!(export.contains(MARKER), "{export}");
    let play = ok(w.as_("audrey").args(["recordings", "play", &id, "--speed", "100"]));
    assert!(play.contains(MARKER), "{play}");

    // The copy is private to the auditor.
    use std::os::unix::fs::PermissionsExt;
    let cache = w.dir.join("cache-audrey/herse/recordings");
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    let copy = cache.join(format!("{id}.herserec"));
    assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);

    // Each download was audited with the auditor's name, once per download.
    let reads = json_lines(&ok(w.gw.ctl().args([
        "audit",
        "list",
        "--kind",
        "recording.read",
        "--json",
    ])));
    assert!(!reads.is_empty() && reads.iter().all(|e| e["session"] == id.as_str()));
    assert!(
        reads.iter().all(|e| e["detail"].as_str().unwrap().contains("audrey")),
        "{reads:?}"
    );
    assert!(
        reads.len() <= 7,
        "one read per download, not per chunk: {}",
        reads.len()
    );

    // Searching inside recordings is audited too.
    let searches = json_lines(&ok(w.gw.ctl().args([
        "audit",
        "list",
        "--kind",
        "recording.search",
        "--json",
    ])));
    assert!(
        searches.iter().any(|e| e["detail"].as_str().unwrap().contains(MARKER)
            && e["detail"].as_str().unwrap().contains("audrey")),
        "{searches:?}"
    );

    // The file endpoint, as an attacker sees it.
    assert_eq!(
        w.curl_file("audrey", &format!("/api/v1/recordings/{id}/file?offset=0")),
        "200"
    );
    assert_eq!(
        w.curl_file("audrey", &format!("/api/v1/recordings/{id}/file?offset=99999999999")),
        "416"
    );
    assert_eq!(
        w.curl_file("audrey", "/api/v1/recordings/..%2F..%2Fherse.toml/file"),
        "400"
    );
    assert_eq!(w.curl_file("audrey", "/api/v1/recordings/not-a-session/file"), "400");
    assert_eq!(w.curl_file("eve", &format!("/api/v1/recordings/{id}/file")), "403");
    assert_eq!(w.curl_file("adam", &format!("/api/v1/recordings/{id}/file")), "403");

    // The auditor administers nothing.
    refused(&run(w.as_("audrey").args(["users", "add", "mallory"])), "admin");
    refused(
        &run(w
            .as_("audrey")
            .args(["keys", "add", "eve"])
            .arg(format!("{}.pub", w.eve_key.display()))),
        "admin",
    );
    refused(&run(w.as_("audrey").args(["workstations", "list"])), "admin");
    refused(&run(w.as_("audrey").args(["recordings", "hold", &id])), "admin");

    // The admin manages people remotely, and reads no recording.
    let frank_key = keygen(&w.dir, "frank");
    ok(w.as_("adam").args(["users", "add", "frank"]));
    let fp = ok(w
        .as_("adam")
        .args(["keys", "add", "frank"])
        .arg(format!("{}.pub", frank_key.display())));
    assert!(fp.trim().starts_with("SHA256:"), "{fp}");
    ok(w.as_("adam").args(["roles", "bind", "frank", "engineers"]));
    let bad_role = run(w.as_("adam").args(["roles", "bind", "frank", "no-such-role"]));
    assert_eq!(bad_role.status.code(), Some(2), "{}", text(&bad_role.stderr));
    let frank: serde_json::Value =
        serde_json::from_str(&ok(w.gw.ctl().args(["users", "show", "frank", "--json"]))).unwrap();
    assert_eq!(frank["roles"][0], "engineers", "{frank}");
    assert_eq!(frank["keys"].as_array().map(Vec::len), Some(1), "{frank}");
    let keys = ok(w.as_("adam").args(["keys", "list", "frank"]));
    assert!(keys.contains(fp.trim()), "{keys}");
    let targets = ok(w.as_("adam").args(["targets", "list"]));
    assert!(targets.contains("db1"), "{targets}");
    let bind = json_lines(&ok(w.gw.ctl().args([
        "audit",
        "list",
        "--kind",
        "role.bind",
        "--user",
        "frank",
        "--json",
    ])));
    assert!(bind[0]["detail"].as_str().unwrap().contains("by adam"), "{bind:?}");
    let check: serde_json::Value =
        serde_json::from_str(&ok(w.as_("adam").args(["targets", "check", "db1", "--json"]))).unwrap();
    assert_eq!(check["host_key_ok"], true, "{check}");
    let ws: serde_json::Value =
        serde_json::from_str(&ok(w.as_("adam").args(["workstations", "list", "--json"]))).unwrap();
    assert!(ws.as_array().unwrap().is_empty(), "{ws}");
    let mut pw = w
        .as_("adam")
        .args(["users", "password", "frank"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(pw.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(pw.wait_with_output().unwrap().status.success());
    let codes = ok(w.as_("adam").args(["users", "recovery-codes", "frank"]));
    assert!(codes.lines().count() >= 8, "{codes}");
    let enrol = run(w.as_("adam").args(["users", "totp", "enroll", "frank"]));
    assert_eq!(enrol.status.code(), Some(2), "{}", text(&enrol.stderr));
    assert!(text(&enrol.stderr).contains("local mode"), "{}", text(&enrol.stderr));
    ok(w.as_("adam").args(["recordings", "hold", &id]));
    // Releasing one lets retention destroy it: only on the gateway host, with the master
    // key (an API caller is made of database rows); nothing is released.
    let release = run(w.as_("adam").args(["recordings", "hold", "--release", &id]));
    assert_eq!(release.status.code(), Some(4), "{}", text(&release.stderr));
    assert!(
        text(&release.stderr).contains("local mode"),
        "{}",
        text(&release.stderr)
    );
    let releases = ok(w
        .gw
        .ctl()
        .args(["audit", "list", "--kind", "recording.release", "--json"]));
    assert!(!releases.contains(id.as_str()), "{releases}");
    refused(&run(w.as_("adam").args(["recordings", "export", &id])), "auditor");
    refused(&run(w.as_("adam").args(["recordings", "list"])), "auditor");

    // The engineer reads no recordings, not even their own.
    refused(&run(w.as_("eve").args(["recordings", "list"])), "auditor");
    refused(&run(w.as_("eve").args(["recordings", "show", &id])), "auditor");

    // An id that is not a session id never becomes a path, here either.
    let bad = run(w.as_("audrey").args(["recordings", "show", "../../etc/passwd"]));
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));

    watch_a_live_session_remotely(&w);
    logout_revokes_the_token(&w);
}

/// `hersectl logout` revokes the token on the gateway: a copy of it kept elsewhere no
/// longer works. Logging out with a revoked token still removes the file.
fn logout_revokes_the_token(w: &World) {
    let file = w.session_file("eve");
    let kept = std::fs::read(&file).unwrap();
    let out = ok(w.as_("eve").arg("logout"));
    assert!(out.contains("token revoked"), "{out}");
    assert!(!file.exists());
    assert!(ok(w.as_("eve").arg("logout")).contains("not logged in"));
    std::fs::write(&file, &kept).unwrap();
    let who = run(w.as_("eve").arg("whoami"));
    assert_eq!(who.status.code(), Some(4), "{}", text(&who.stderr));
    assert!(
        text(&who.stderr).contains("expired or foreign token"),
        "{}",
        text(&who.stderr)
    );
    let out = ok(w.as_("eve").arg("logout"));
    assert!(out.contains("the gateway holds no such token"), "{out}");
    assert!(!file.exists());
    let audit = json_lines(&ok(w.gw.ctl().args([
        "audit",
        "list",
        "--kind",
        "api.logout",
        "--json",
    ])));
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["user"], "eve");
    // audrey's token is hers alone: eve's logout did not touch it.
    ok(w.as_("audrey").arg("whoami"));
    // A suspension ends the user's tokens: resumed, they log in again.
    ok(w.gw
        .ctl()
        .args(["users", "suspend", "audrey", "--reason", "laptop lost"]));
    ok(w.gw.ctl().args(["users", "resume", "audrey"]));
    let who = run(w.as_("audrey").arg("whoami"));
    assert_eq!(who.status.code(), Some(4), "{}", text(&who.stderr));
}

/// The auditor watches a live session through the gateway (the copy grows by polling);
/// the admin kills it remotely and the watch ends with the reason.
fn watch_a_live_session_remotely(w: &World) {
    use std::io::{BufRead, BufReader, Read};
    use std::sync::mpsc;
    let mut ssh = Command::new("ssh");
    with_askpass(&mut ssh, &w.people.askpass)
        .arg("-F")
        .arg(&w.eve_cfg)
        .args([
            "-l",
            DEPLOY,
            "db1",
            "echo started; sleep 3; echo WATCHED-live-9c1; sleep 600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut session = ssh.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(session.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "started");
    let live: serde_json::Value = serde_json::from_str(&ok(w.gw.ctl().args(["sessions", "list", "--json"]))).unwrap();
    let id = live[0]["id"].as_str().unwrap().to_owned();

    let mut watch = w
        .as_("audrey")
        .args(["sessions", "watch", &id, "--from-start"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let mut out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !text(&seen).contains("WATCHED-live-9c1") {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(b) => seen.extend(b),
            Err(_) => panic!("the watch never showed the live output: {:?}", text(&seen)),
        }
    }
    let killed: serde_json::Value =
        serde_json::from_str(&ok(w.as_("adam").args(["sessions", "kill", &id, "--json"]))).unwrap();
    assert_eq!(killed["session"], id.as_str(), "{killed}");
    assert!(killed["ended_after_ms"].as_u64().is_some(), "{killed}");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the watch did not end with the session"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    watch.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("session ended"), "{err}");
    let _ = session.kill();
    let _ = session.wait();
}
