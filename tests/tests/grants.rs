//! Access grants end to end: people log in with remote `hersectl` (password + TOTP over
//! the HTTPS control API), an engineer asks, managers decide, and real OpenSSH sessions
//! open under the grant, get warnings, and are cut at expiry, revocation or suspension.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use herse_e2e::people::{init_with_portal, jump_config, People};
use herse_e2e::*;

const DEPLOY: &str = "hdeploy";
const PASSWORD: &str = "Correct-Horse-Battery-9";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct World {
    gw: Gateway,
    people: People,
    alice_cfg: PathBuf,
}

impl World {
    /// `hersectl` in remote mode as `who` (their own saved login).
    fn as_(&self, who: &str) -> Command {
        self.people.as_(who)
    }

    fn login(&self, who: &str) {
        self.people.login(who, &self.people.code(who));
    }

    fn ssh(&self, target: &str, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        with_askpass(&mut c, &self.people.askpass)
            .arg("-F")
            .arg(&self.alice_cfg)
            .args(["-l", DEPLOY, target, cmd])
            .stdin(Stdio::null());
        c
    }

    fn local_json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&ok(self.gw.ctl().args(args).arg("--json"))).unwrap()
    }
}

fn refused(out: &Output, code: i32, why: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(why), "wanted {why:?}: {}", text(&out.stderr));
}

fn request(w: &World, tier: &str, duration: &str) -> String {
    let out = ok(w.as_("alice").args([
        "grants",
        "request",
        "--tier",
        tier,
        "--duration",
        duration,
        "--reason",
        "INC-42",
        "--json",
    ]));
    let g: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(g["status"], "pending");
    g["id"].as_str().unwrap().to_owned()
}

/// The (last) session row under `grant`, once the gateway has closed it.
fn session_row(w: &World, grant: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let all = w.local_json(&["sessions", "list", "--all"]);
        let row = all
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["grant"] == grant)
            .cloned()
            .unwrap_or_else(|| panic!("no session under {grant}: {all}"));
        if row["ended_at"].is_i64() {
            return row;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "session under {grant} never closed: {row}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start `ssh ... sleep` under a grant; return once the command runs on the target.
fn live_session(w: &World, target: &str, grant: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = w
        .ssh(target, "echo started; sleep 600")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "started", "session under {grant} never started");
    child
}

fn world() -> (TempDir, World, Sshd) {
    ensure_account(DEPLOY);
    let dir = TempDir::new("grants");
    let d = dir.0.clone();
    let (cfg, port) = init_with_portal(&d);
    let db = Sshd::target(&d, "db1");
    // db: one manager approves; pay (the same sshd under another name): two distinct
    // approvers, one of them the customer's.
    std::fs::write(
        d.join("policy.toml"),
        format!(
            "[tiers.web]\n\
             [tiers.db.grants]\nmax_duration = \"1h\"\n\
             [tiers.db.targets.db1]\naddress = \"127.0.0.1\"\nport = {p}\nhost_keys = [\"{k}\"]\n\
             [tiers.pay.grants]\napprovals = 2\nexternal_approver_role = \"customer\"\n\
             [tiers.pay.targets.pay1]\naddress = \"127.0.0.1\"\nport = {p}\nhost_keys = [\"{k}\"]\n\
             [roles.dba]\ntiers = [\"db\", \"pay\"]\nlogins = [\"{DEPLOY}\"]\noperations = [\"shell\", \"exec\"]\n\
             max_session = \"1h\"\nidle_timeout = \"10m\"\nmfa_remember = \"1h\"\nrequires_grant = true\n\
             [roles.db-managers]\nkind = \"manager\"\ntiers = [\"db\", \"pay\"]\n\
             [roles.web-managers]\nkind = \"manager\"\ntiers = [\"web\"]\n\
             [roles.customer]\nkind = \"manager\"\ntiers = [\"pay\"]\n\
             [roles.auditors]\nkind = \"auditor\"\n",
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
        &[
            ("alice", "dba"),
            ("bob", "db-managers"),
            ("carol", "web-managers"),
            ("erin", "customer"),
            ("dave", "auditors"),
        ],
    );
    let alice_key = keygen(&d, "alice");
    ok(gw
        .ctl()
        .args(["keys", "add", "alice"])
        .arg(format!("{}.pub", alice_key.display())));
    let alice_cfg = jump_config(&d, gw.port, "alice", &alice_key, &["db1", "pay1"], "INFO");
    (dir, World { gw, people, alice_cfg }, db)
}

#[test]
fn grant_lifecycle_with_real_sessions() {
    let (_dir, w, _db) = world();
    for who in ["alice", "bob", "carol", "erin", "dave"] {
        w.login(who);
    }
    let me: serde_json::Value = serde_json::from_str(&ok(w.as_("bob").args(["whoami", "--json"]))).unwrap();
    assert_eq!(me["roles"], "manager(db,pay)");

    // Without a grant the tier stays closed.
    let out = run(&mut w.ssh("db1", "echo no"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("requires an approved access grant"),
        "{}",
        text(&out.stderr)
    );

    // 1. Request; nobody approves their own; another tier's manager, an auditor and the
    //    local operator cannot approve; a duration over the tier's maximum is refused.
    refused(
        &run(w
            .as_("alice")
            .args(["grants", "request", "--tier", "db", "--duration", "2h", "--reason", "x"])),
        2,
        "maximum of 1h",
    );
    let g1 = request(&w, "db", "10m");
    refused(
        &run(w.as_("alice").args(["grants", "approve", &g1])),
        4,
        "your own request",
    );
    refused(
        &run(w.as_("carol").args(["grants", "approve", &g1])),
        4,
        "you do not manage tier db",
    );
    refused(
        &run(w.as_("dave").args(["grants", "approve", &g1])),
        4,
        "you do not manage tier db",
    );
    refused(&run(w.gw.ctl().args(["grants", "approve", &g1])), 4, "second factor");
    // A manager who also requests cannot approve their own either (the check is by name).
    let pending = ok(w.as_("bob").args(["grants", "list", "--pending"]));
    assert!(pending.contains(&g1) && pending.contains("INC-42"), "{pending}");
    assert!(!ok(w.as_("carol").args(["grants", "list", "--pending"])).contains(&g1));

    // 2. The right manager approves: the session opens; revocation cuts it at once.
    assert!(ok(w.as_("bob").args(["grants", "approve", &g1, "--comment", "ok"])).contains("active until"));
    let out = run(&mut w.ssh("db1", "echo inside"));
    assert_eq!(text(&out.stdout).trim(), "inside", "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("your access grant {g1} (tier db) was approved by bob")),
        "outcome at next login: {}",
        text(&out.stderr)
    );
    let child = live_session(&w, "db1", &g1);
    let t0 = Instant::now();
    ok(w.as_("bob")
        .args(["grants", "revoke", &g1, "--reason", "incident over"]));
    let out = child.wait_with_output().unwrap();
    let cut = t0.elapsed();
    eprintln!("measured: revocation cut the session in {cut:?}");
    assert!(cut < Duration::from_millis(1500), "revocation took {cut:?}");
    assert!(
        text(&out.stderr).contains(&format!("access grant {g1} revoked by bob: incident over")),
        "{}",
        text(&out.stderr)
    );
    let row = session_row(&w, &g1);
    assert!(row["end_reason"].as_str().unwrap().contains("revoked by bob"), "{row}");
    refused(
        &run(&mut w.ssh("db1", "echo no")),
        255,
        "requires an approved access grant",
    );

    // 3. A denial reaches the requester at their next login.
    let g2 = request(&w, "db", "5m");
    ok(w.as_("bob").args(["grants", "deny", &g2, "--reason", "use staging"]));
    let mine = ok(w.as_("alice").args(["grants", "list", "--mine"]));
    assert!(mine.contains(&g2) && mine.contains("denied"), "{mine}");

    // 4. Two approvers, one from the customer's role: one approval leaves it closed.
    let g3 = request(&w, "pay", "30m");
    let one = ok(w.as_("bob").args(["grants", "approve", &g3]));
    assert!(one.contains("pending"), "{one}");
    refused(
        &run(&mut w.ssh("pay1", "echo no")),
        255,
        "requires an approved access grant",
    );
    refused(
        &run(w.as_("bob").args(["grants", "approve", &g3])),
        1,
        "already approved",
    );
    assert!(ok(w.as_("erin").args(["grants", "approve", &g3])).contains("active until"));
    let out = run(&mut w.ssh("pay1", "echo pay"));
    assert_eq!(text(&out.stdout).trim(), "pay", "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("{g2} (tier db) was denied by bob: use staging")),
        "{}",
        text(&out.stderr)
    );

    // 5. Suspension cuts a live session within a second, with the reason.
    let child = live_session(&w, "pay1", &g3);
    let t0 = Instant::now();
    refused(
        &run(w.as_("dave").args(["users", "suspend", "alice", "--reason", "x"])),
        4,
        "admin",
    );
    ok(w.gw.ctl().args([
        "users",
        "suspend",
        "alice",
        "--reason",
        "laptop stolen",
        "--until",
        "1h",
    ]));
    let out = child.wait_with_output().unwrap();
    eprintln!("measured: suspension cut the session in {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "suspension took {:?}",
        t0.elapsed()
    );
    assert!(
        text(&out.stderr).contains("user suspended: laptop stolen"),
        "{}",
        text(&out.stderr)
    );
    let u = w.local_json(&["users", "show", "alice"]);
    assert_eq!(u["status"], "suspended");
    assert!(u["suspended_until"].as_i64().unwrap() > 0);
    // A suspended user's token stops working too.
    refused(
        &run(w.as_("alice").args(["grants", "list", "--mine"])),
        4,
        "hersectl login",
    );
    ok(w.gw.ctl().args(["users", "resume", "alice"]));
    // The suspension ended her tokens: resumed, she logs in again (with a recovery
    // code, keeping the TOTP steps for ssh).
    refused(
        &run(w.as_("alice").args(["grants", "list", "--mine"])),
        4,
        "hersectl login",
    );
    let codes = ok(w.gw.ctl().args(["users", "recovery-codes", "alice"]));
    w.people.login("alice", codes.lines().next().unwrap().trim());
    // A suspension forgets the remembered second factor: the first login after the
    // resume proves it again (under the pay grant, still active), and the logins below
    // are remembered from there.
    let out = w.ssh("pay1", "true").stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Herse second factor"),
        "{}",
        text(&out.stderr)
    );

    // 6. The auditor reads the audit log remotely (and verifies it), but adds no user.
    refused(&run(w.as_("dave").args(["users", "add", "mallory"])), 4, "admin");
    let revoked = session_row(&w, &g1)["id"].as_str().unwrap().to_owned();
    let replay = ok(w
        .as_("dave")
        .args(["recordings", "export", &revoked, "--format", "text"]));
    assert!(replay.contains("started"), "the auditor replays the session: {replay}");
    assert!(ok(w.as_("dave").args(["recordings", "play", &revoked, "--speed", "100"])).contains("started"));
    refused(
        &run(w.as_("bob").args(["recordings", "export", &revoked])),
        4,
        "auditor",
    );
    let events = json_lines(&ok(w.as_("dave").args(["audit", "list", "--json", "--limit", "1000"])));
    for kind in [
        "grant.requested",
        "grant.approved",
        "grant.denied",
        "grant.revoked",
        "user.suspend",
    ] {
        assert!(events.iter().any(|e| e["kind"] == kind), "no {kind} event");
    }
    ok(w.as_("dave").args(["audit", "verify"]));
    refused(&run(w.as_("alice").args(["audit", "list"])), 4, "auditor");

    // 7. Expiry: a short grant warns in the terminal (stderr) and cuts at its end.
    let g4 = request(&w, "db", "70s");
    ok(w.as_("bob").args(["grants", "approve", &g4]));
    let expires = w.local_json(&["grants", "show", &g4])["expires_at"].as_i64().unwrap();
    let child = live_session(&w, "db1", &g4);
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("access grant {g4} ends in 1m")),
        "first warning: {err}"
    );
    assert!(
        err.contains(&format!("access grant {g4} ends in 1 minute")),
        "one-minute warning: {err}"
    );
    assert!(err.contains(&format!("access grant {g4} expired")), "{err}");
    let row = session_row(&w, &g4);
    let late_ms = (row["ended_at"].as_i64().unwrap() - expires) / 1000;
    eprintln!("measured: session row closed {late_ms} ms after the grant's end");
    assert!(
        (0..1000).contains(&late_ms),
        "session ended {late_ms} ms after the grant"
    );
    refused(
        &run(&mut w.ssh("db1", "echo no")),
        255,
        "requires an approved access grant",
    );
    let shown = w.local_json(&["grants", "show", &g4]);
    let start = Instant::now();
    let mut status = shown["status"].clone();
    while status != "expired" && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
        status = w.local_json(&["grants", "show", &g4])["status"].clone();
    }
    assert_eq!(status, "expired");
}
