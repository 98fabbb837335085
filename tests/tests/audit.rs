//! The audit log end to end: events from `hersectl` and from the gateway are chained,
//! forwarded to syslog as RFC 5424, listed as JSON lines, and `hersectl audit verify`
//! names the event that was edited or deleted behind the gateway's back.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herse_e2e::*;

/// Datagrams received until every needle appeared in one of them (or 15 s passed).
fn syslog_until(sock: &UdpSocket, needles: &[&str]) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && !needles.iter().all(|n| got.iter().any(|m| m.contains(n))) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn the_audit_log_is_chained_forwarded_and_verified() {
    let dir = TempDir::new("audit");
    let d = dir.0.clone();
    std::fs::write(d.join("policy.toml"), "").unwrap();
    let config = Gateway::init(&d);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("[audit]\nsyslog = \"udp:{}\"\n", sock.local_addr().unwrap()));
    std::fs::write(&config, text).unwrap();
    let gw = Gateway::start(&d, &config);

    // One event from hersectl, one refused login at the gateway.
    ok(gw.ctl().args(["users", "add", "alice"]));
    let stranger = keygen(&d, "stranger");
    let out = run(Command::new("ssh")
        .args(["-p", &gw.port.to_string(), "-i"])
        .arg(&stranger)
        .args([
            "-oIdentitiesOnly=yes",
            "-oBatchMode=yes",
            "-oStrictHostKeyChecking=no",
            "-oUserKnownHostsFile=/dev/null",
            "alice@127.0.0.1",
            "true",
        ])
        .stdin(Stdio::null()));
    assert!(!out.status.success());

    let msgs = syslog_until(&sock, &["user.add", "login.failure"]);
    for kind in ["user.add", "login.failure"] {
        let m = msgs
            .iter()
            .find(|m| m.contains(" herse ") && m.contains(&format!(" {kind} - {{")))
            .unwrap_or_else(|| panic!("no RFC 5424 message for {kind}: {msgs:#?}"));
        // <PRI>1 TIMESTAMP HOST herse PID KIND - JSON; authpriv: info 86, warning 84.
        let pri = if kind == "user.add" { "<86>1 " } else { "<84>1 " };
        assert!(m.starts_with(pri), "{m}");
        let json: serde_json::Value = serde_json::from_str(m.split_once(" - ").unwrap().1).unwrap();
        assert!(
            json["seq"].as_i64().is_some() && json["hash"].as_str().is_some_and(|h| h.len() == 64),
            "{m}"
        );
        assert_eq!(json["user"], "alice", "{m}");
    }

    let verify = ok(gw.ctl().args(["audit", "verify"]));
    assert!(verify.contains("audit log is whole"), "{verify}");
    let events = json_lines(&ok(gw.ctl().args(["audit", "list", "--json"])));
    assert!(events.len() >= 3, "{events:?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_i64(), Some(i as i64 + 1), "{e}");
        assert_eq!(e["hash"].as_str().map(str::len), Some(64), "{e}");
    }
    let added = events.iter().find(|e| e["kind"] == "user.add").unwrap()["seq"]
        .as_i64()
        .unwrap();
    let filtered = json_lines(&ok(gw.ctl().args([
        "audit",
        "list",
        "--json",
        "--kind",
        "login.failure",
        "--since",
        "1h",
    ])));
    assert!(
        !filtered.is_empty() && filtered.iter().all(|e| e["kind"] == "login.failure"),
        "{filtered:?}"
    );

    // Follow: the backlog, then a new event as it is appended; Ctrl-C ends it with 0.
    let mut follow = gw
        .ctl()
        .args(["audit", "follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let line = |what: &str| {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("follow: no {what}"))
    };
    assert!(line("backlog").contains("\"seq\":1,"));
    ok(gw.ctl().args(["users", "add", "bob"]));
    let bob = loop {
        let l = line("event for bob");
        if l.contains("\"bob\"") {
            break l;
        }
    };
    assert!(bob.contains("user.add"), "{bob}");
    ok(Command::new("kill").args(["-INT", &follow.id().to_string()]));
    assert_eq!(follow.wait().unwrap().code(), Some(0));
    let events = json_lines(&ok(gw.ctl().args(["audit", "list", "--json"])));

    // At shutdown the gateway signs its last event (gateway.stop): no unsigned tail, and
    // its witness of the chain names that checkpoint.
    let mut gw = gw;
    gw.signal("TERM");
    let mut proc = gw.proc.take().unwrap();
    assert!(proc.child.wait().unwrap().success());
    let r: serde_json::Value = serde_json::from_str(&ok(gw.ctl().args(["audit", "verify", "--json"]))).unwrap();
    assert_eq!(r["unsigned_tail"], 0, "{r}");
    let signed = r["last_checkpoint_seq"].as_i64().unwrap();
    let witness = gw.data().join("audit_witness");
    let line = std::fs::read_to_string(&witness).unwrap();
    assert!(line.starts_with(&format!("herse-audit-witness-v1 {signed} ")), "{line}");

    // A database writer rewrites an event and every hash after it, deletes the
    // checkpoints that signed them and moves the head: the chain is whole again, and
    // only the witness, outside the database, tells.
    let db = gw.data().join("herse.db");
    sqlite_rewrite_audit_event(&db, added, "nothing happened");
    let aside = witness.with_extension("aside");
    std::fs::rename(&witness, &aside).unwrap();
    assert!(ok(gw.ctl().args(["audit", "verify"])).contains("audit log is whole"));
    // A witness kept aside (after a restore, or a copy from another node) still tells,
    // given to the verification.
    let v = run(gw.ctl().args(["audit", "verify", "--witness"]).arg(&aside));
    let err = String::from_utf8_lossy(&v.stderr);
    assert_eq!(v.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("event seq {signed} was rewritten"))
            && err.contains(&format!("the node whose witness is in {}", aside.display())),
        "{err}"
    );
    let v = run(gw
        .ctl()
        .args(["audit", "verify", "--witness"])
        .arg(d.join("no-such-witness")));
    assert_eq!(v.status.code(), Some(2), "a missing witness copy is a usage error");
    std::fs::rename(&aside, &witness).unwrap();
    let v = run(gw.ctl().args(["audit", "verify"]));
    let err = String::from_utf8_lossy(&v.stderr);
    assert_eq!(v.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("event seq {signed} was rewritten")), "{err}");
    // The gateway, started again, refuses to sign the rewritten chain, and says so.
    let gw = Gateway::start(&d, &config);
    let deadline = Instant::now() + Duration::from_secs(20);
    let alert = loop {
        let alerts = json_lines(&ok(gw.ctl().args([
            "audit",
            "list",
            "--json",
            "--kind",
            "audit.checkpoint_refused",
        ])));
        if let Some(a) = alerts.first() {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "no audit.checkpoint_refused alert");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alert["severity"], "alert", "{alert}");
    assert!(
        alert["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("event seq {signed} was rewritten")),
        "{alert}"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&run(gw.ctl().args(["audit", "verify", "--json"])).stdout).unwrap();
    assert!(
        r["last_checkpoint_seq"].as_i64() < Some(added),
        "no checkpoint after the rewrite: {r}"
    );

    // Behind the gateway's back again: edit one event, then delete another.
    sqlite(
        &db,
        &format!("UPDATE audit_events SET detail = 'by nobody' WHERE seq = {added}"),
    );
    let v = run(gw.ctl().args(["audit", "verify"]));
    let report = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("event seq {added} (id ")) && report.contains("edited"),
        "{report}"
    );

    // A middle one (not the last: that would be a deleted tail).
    let gone = (1..events.len() as i64).find(|s| *s != added).unwrap();
    sqlite(&db, &format!("DELETE FROM audit_events WHERE seq = {gone}"));
    let v = run(gw.ctl().args(["audit", "verify"]));
    let report = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "{report}");
    assert!(report.contains(&format!("event seq {gone} is missing")), "{report}");

    // Verification with the public key from outside the database agrees.
    let key = gw.data().join("audit_key.pub");
    let v = run(gw.ctl().args(["audit", "verify", "--public-key"]).arg(&key));
    assert_eq!(v.status.code(), Some(1));

    // It still drains and stops cleanly, without signing.
    let mut gw = gw;
    gw.signal("TERM");
    let mut proc = gw.proc.take().unwrap();
    assert!(proc.child.wait().unwrap().success());
    let r: serde_json::Value =
        serde_json::from_slice(&run(gw.ctl().args(["audit", "verify", "--json"])).stdout).unwrap();
    assert!(r["last_checkpoint_seq"].as_i64() < Some(added), "{r}");
}
