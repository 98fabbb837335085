//! The WireGuard front door, end to end, in network namespaces: workstations run Debian's
//! wireguard-go configured by wg-quick from what `hersectl workstations add` printed;
//! the gateway runs `herse serve` in its own namespace; two tiers run OpenSSH sshd.
//!
//! ```text
//!  ws1 (alice) 10.210.1.2 ──┐                 ┌── 10.211.1.2 web (sshd)
//!                           ├── gw (herse) ───┤
//!  ws2 (bob)   10.210.2.2 ──┘  tunnel 10.77/24 └── 10.211.2.2 db  (sshd)
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herse_e2e::netns::{veth, Netns};
use herse_e2e::*;

const DEPLOY: &str = "hdeploy";

struct Net {
    gw: Netns,
    ws1: Netns,
    ws2: Netns,
    web: Netns,
    db: Netns,
}

fn topology() -> Net {
    let n = Net {
        gw: Netns::new("gw"),
        ws1: Netns::new("ws1"),
        ws2: Netns::new("ws2"),
        web: Netns::new("web"),
        db: Netns::new("db"),
    };
    veth(&n.gw, "to-ws1", "10.210.1.1/24", &n.ws1, "eth0", "10.210.1.2/24");
    veth(&n.gw, "to-ws2", "10.210.2.1/24", &n.ws2, "eth0", "10.210.2.2/24");
    veth(&n.gw, "to-web", "10.211.1.1/24", &n.web, "eth0", "10.211.1.2/24");
    veth(&n.gw, "to-db", "10.211.2.1/24", &n.db, "eth0", "10.211.2.2/24");
    // Every other host routes through the gateway host, as if it were their router:
    // only the gateway's refusal to forward keeps the tiers apart.
    n.ws1.ip(&["route", "add", "default", "via", "10.210.1.1"]);
    n.ws2.ip(&["route", "add", "default", "via", "10.210.2.1"]);
    n.web.ip(&["route", "add", "default", "via", "10.211.1.1"]);
    n.db.ip(&["route", "add", "default", "via", "10.211.2.1"]);
    n
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ssh_config(d: &Path, user: &str, key: &Path) -> PathBuf {
    let p = d.join(format!(
        "ssh_config_{user}_{}",
        key.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &p,
        format!(
            "Host gw\n  HostName 10.77.0.1\n  User {user}\n\
             Host web1 db1\n  ProxyJump gw\n\
             Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n\
             PasswordAuthentication no\n  KbdInteractiveAuthentication yes\n  BatchMode no\n  LogLevel INFO\n\
             ConnectTimeout 10\n",
            key.display(),
            d.join("known_hosts").display()
        ),
    )
    .unwrap();
    p
}

fn ssh(ns: &Netns, cfg: &Path) -> Command {
    let mut c = ns.command("ssh");
    // Answers Herse's TOTP prompt (see write_askpass).
    let askpass = cfg.parent().unwrap().join("askpass");
    with_askpass(&mut c, &askpass);
    c.arg("-F").arg(cfg).stdin(Stdio::null());
    c
}

/// Enrol a workstation and write the wg-quick configuration hersectl printed to
/// `DIR/IFNAME.conf` (wg-quick names the interface after the file).
fn enrol(gw: &Gateway, d: &Path, name: &str, owner: &str, iface: &str) -> PathBuf {
    let conf = ok(gw.ctl().args(["workstations", "add", name, "--owner", owner]));
    assert!(
        conf.contains("PrivateKey = ") && conf.contains("AllowedIPs = 10.77.0.1/32"),
        "{conf}"
    );
    let p = d.join(format!("{iface}.conf"));
    std::fs::write(&p, conf).unwrap();
    p
}

/// Python for a workstation's probes of the gateway's SSH port: `conn()` opens a
/// connection, `banner()` says what a fresh one hears first ("-": nothing, refused).
const PROBE_PY: &str = r#"
import socket, sys, time
def conn():
    return socket.create_connection(("10.77.0.1", 22), timeout=5)
def banner():
    s = conn()
    try:
        d = s.recv(64)
    except OSError:
        d = b""
    s.close()
    return d[:7].decode(errors="replace") or "-"
"#;

fn iface(tag: &str) -> String {
    // Interface names are global to wireguard-go's control sockets: keep them unique.
    format!("h{tag}{}", std::process::id() % 100_000)
}

#[test]
fn workstations_reach_targets_only_through_the_tunnel_bound_to_their_owner() {
    ensure_account(DEPLOY);
    let dir = TempDir::new("wireguard");
    let d = dir.0.clone();
    let net = topology();

    // Tiers.
    std::fs::write(d.join("policy.toml"), "").unwrap();
    let config = d.join("herse.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\nmaster_key_file = \"secrets/master.key\"\npolicy = \"policy.toml\"\n\
         [ssh]\nauth_timeout = \"20s\"\ndrain_timeout = \"3s\"\n\
         client_alive_interval = \"1s\"\nclient_alive_count_max = 2\n\
         [wireguard]\nlisten = \"0.0.0.0:51820\"\naddress = \"10.77.0.1/24\"\nendpoint = \"10.210.1.1:51820\"\n\
         interface = \"{uapi}\"\n[metrics]\nlisten = \"127.0.0.1:9187\"\n[web]\n",
            uapi = iface("g")
        ),
    )
    .unwrap();
    let init = ok(Command::new(bin("herse"))
        .arg("-c")
        .arg(&config)
        .arg("init")
        .arg("--json"));
    let init: serde_json::Value = serde_json::from_str(&init).unwrap();
    let user_ca = d.join("data/user_ca.pub");
    let web = Sshd::start(
        &d,
        "web1",
        SshdOptions {
            user_ca_pub: &user_ca,
            netns: Some((&net.web, "10.211.1.2", 22)),
            host_cert: None,
            host_key: None,
            sftp: true,
        },
    );
    let db = Sshd::start(
        &d,
        "db1",
        SshdOptions {
            user_ca_pub: &user_ca,
            netns: Some((&net.db, "10.211.2.2", 22)),
            host_cert: None,
            host_key: None,
            sftp: true,
        },
    );
    std::fs::write(
        d.join("policy.toml"),
        format!(
            "[tiers.web.targets.web1]\naddress = \"10.211.1.2\"\nport = 22\nhost_keys = [\"{}\"]\n\
             [tiers.db.targets.db1]\naddress = \"10.211.2.2\"\nport = 22\nhost_keys = [\"{}\"]\n\
             [roles.eng]\ntiers = [\"web\", \"db\"]\nlogins = [\"{DEPLOY}\"]\noperations = [\"shell\", \"exec\"]\n\
             max_session = \"1h\"\nmfa_remember = \"1h\"\nidle_timeout = \"10m\"\n",
            web.host_key_pub, db.host_key_pub
        ),
    )
    .unwrap();

    // People, keys, workstations.
    let alice_key = keygen(&d, "alice");
    let bob_key = keygen(&d, "bob");
    let ctl = || {
        let mut c = Command::new(bin("hersectl"));
        c.arg("-c").arg(&config);
        c
    };
    for (u, k) in [("alice", &alice_key), ("bob", &bob_key)] {
        ok(ctl()
            .args(["users", "add", u, "--key"])
            .arg(format!("{}.pub", k.display())));
        ok(ctl().args(["roles", "bind", u, "eng"]));
    }
    let (alice_totp, bob_totp) = (enrol_totp(&config, "alice"), enrol_totp(&config, "bob"));
    write_askpass(&d.join("askpass"), &[("alice", &alice_totp), ("bob", &bob_totp)]);
    let mut herse = Gateway::spawn(&d, &config, Some(&net.gw));
    herse.wait_line("WireGuard on udp", Duration::from_secs(20));
    let (if1, if2, ifx) = (iface("a"), iface("b"), iface("x"));
    let alice_conf = enrol(&herse, &d, "alice-ws", "alice", &if1);
    let bob_conf = enrol(&herse, &d, "bob-ws", "bob", &if2);
    // --qr adds the same file as a terminal QR code; --json carries it as a field.
    let qr = ok(herse
        .ctl()
        .args(["workstations", "add", "spare-ws", "--owner", "alice", "--qr"]));
    assert!(qr.contains("[Peer]") && qr.contains('█'), "{qr}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(herse.ctl().args(["workstations", "show", "spare-ws", "--json"]))).unwrap();
    assert_eq!(
        (shown["owner"].as_str(), shown["address"].as_str()),
        (Some("alice"), Some("10.77.0.4"))
    );
    ok(herse
        .ctl()
        .args(["workstations", "revoke", "spare-ws", "--reason", "not needed"]));
    let again = run(herse
        .ctl()
        .args(["workstations", "revoke", "spare-ws", "--reason", "twice"]));
    assert_eq!(again.status.code(), Some(1), "revoking twice is an error");
    let missing = run(herse.ctl().args(["workstations", "show", "nope", "--json"]));
    assert_eq!(missing.status.code(), Some(3), "unknown workstation");
    let bad = run(herse
        .ctl()
        .args(["workstations", "add", "x", "--owner", "alice", "--public-key", "bad"]));
    assert_eq!(bad.status.code(), Some(2), "malformed key is a usage error");
    // Enrolment reaches the running gateway without a restart.
    std::thread::sleep(Duration::from_millis(600));

    let host_ca = std::fs::read_to_string(d.join("data/host_ca.pub")).unwrap();
    let host_key = std::fs::read_to_string(d.join("data/host_key.pub")).unwrap();
    std::fs::write(
        d.join("known_hosts"),
        format!(
            "@cert-authority web1,db1 {}\n10.77.0.1 {}\n",
            host_ca.trim(),
            host_key.trim()
        ),
    )
    .unwrap();
    let alice = ssh_config(&d, "alice", &alice_key);
    let bob_on_ws1 = ssh_config(&d, "bob", &bob_key);

    // 1. Alice's workstation reaches both tiers through the tunnel, ProxyJump form.
    net.ws1.wg_quick_up(&alice_conf);
    for target in ["web1", "db1"] {
        let out =
            run(ssh(&net.ws1, &alice).args(["-l", DEPLOY, target, "echo reached-$(hostname -I | cut -d' ' -f1)"]));
        assert!(out.status.success(), "{target}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with("reached-10.211."),
            "{}",
            text(&out.stdout)
        );
    }
    // The recording header and the session row name the workstation.
    let listed: serde_json::Value = serde_json::from_str(&ok(ctl().args(["recordings", "list", "--json"]))).unwrap();
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    for r in rows {
        assert_eq!(r["workstation"], "alice-ws", "{r}");
        assert!(r["client_addr"].as_str().unwrap().starts_with("10.77.0.2:"), "{r}");
    }

    // 2. Segmentation. The tiers are not reachable directly, even though the
    //    workstation routes everything through the gateway host ...
    assert!(
        !net.ws1.tcp_connects("10.211.1.2", 22, 2),
        "tier reachable around the gateway"
    );
    // ... nor is the gateway's SSH outside the tunnel, nor any other tunnel port.
    assert!(
        !net.ws1.tcp_connects("10.210.1.1", 22, 2),
        "gateway SSH outside the tunnel"
    );
    assert!(
        net.ws1.tcp_connects("10.77.0.1", 22, 2),
        "gateway SSH inside the tunnel"
    );
    assert!(
        !net.ws1.tcp_connects("10.77.0.1", 2222, 2),
        "a port the gateway does not serve"
    );
    // The portal lives on the tunnel address too, and only there.
    let portal = net
        .ws1
        .command("curl")
        // Verified against the certificate `herse init` made (valid for the tunnel address).
        .args(["-sS", "--cacert"])
        .arg(d.join("data/portal_cert.pem"))
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "https://10.77.0.1/login",
        ])
        .output()
        .unwrap();
    assert_eq!(
        text(&portal.stdout),
        "200",
        "portal through the tunnel: {}",
        text(&portal.stderr)
    );
    assert!(!net.ws1.tcp_connects("10.210.1.1", 443, 2), "portal outside the tunnel");
    // Even with the host forwarding packets, and a workstation that widens its own
    // AllowedIPs to the tiers, the tunnel leads nowhere but Herse's own listeners.
    ok(net.gw.command("sysctl").args(["-q", "-w", "net.ipv4.ip_forward=1"]));
    let gw_pub = init["wireguard_public_key"].as_str().unwrap().to_owned();
    ok(net.ws1.command("wg").args([
        "set",
        &if1,
        "peer",
        &gw_pub,
        "allowed-ips",
        "10.77.0.1/32,10.211.0.0/16",
    ]));
    net.ws1.ip(&["route", "add", "10.211.0.0/16", "dev", &if1]);
    assert!(
        !net.ws1.tcp_connects("10.211.1.2", 22, 2),
        "tier reachable through the tunnel"
    );
    net.ws1.ip(&["route", "del", "10.211.0.0/16", "dev", &if1]);
    ok(net.gw.command("sysctl").args(["-q", "-w", "net.ipv4.ip_forward=0"]));

    // 3. Bob's key from Alice's workstation: refused, with an alert.
    let out = run(ssh(&net.ws1, &bob_on_ws1).args(["-l", DEPLOY, "web1", "true"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("workstation alice-ws belongs to alice, not to bob"),
        "{}",
        text(&out.stderr)
    );
    let audit = json_lines(&ok(ctl().args(["audit", "list", "--json"])));
    assert!(
        audit.iter().any(|e| e["kind"] == "login.wrong_workstation"
            && e["severity"] == "alert"
            && e["workstation"] == "alice-ws"
            && e["user"] == "bob"),
        "{audit:?}"
    );

    // 3b. Remote hersectl through the tunnel: a login (password + TOTP) on Alice's
    //     workstation gets a token bound to it; the same token from Bob's workstation is
    //     refused.
    {
        use std::io::Write;
        let mut c = ctl()
            .args(["users", "password", "alice"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(c.stdin.take().unwrap(), "Tunnel-Passphrase-2026").unwrap();
        assert!(c.wait().unwrap().success());
    }
    let session = d.join("alice-session.json");
    let remote = |ns: &Netns| {
        let mut c = ns.command(bin("hersectl"));
        c.env_remove("HERSE_CONFIG").env("HERSE_SESSION", &session);
        c
    };
    let mut login = remote(&net.ws1)
        .args(["login", "--server", "https://10.77.0.1", "--ca"])
        .arg(d.join("data/portal_cert.pem"))
        .args(["--user", "alice"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = ok(Command::new(d.join("askpass")).arg("Verification code (TOTP) for alice:"));
    {
        use std::io::Write;
        writeln!(login.stdin.take().unwrap(), "Tunnel-Passphrase-2026\n{}", code.trim()).unwrap();
    }
    let out = login.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "hersectl login through the tunnel: {}",
        text(&out.stderr)
    );
    let me: serde_json::Value = serde_json::from_str(&ok(remote(&net.ws1).args(["whoami", "--json"]))).unwrap();
    assert_eq!(me["user"], "alice");
    net.ws2.wg_quick_up(&bob_conf);
    let stolen = run(remote(&net.ws2).args(["whoami"]));
    assert_eq!(
        stolen.status.code(),
        Some(4),
        "a token from another workstation: {}",
        text(&stolen.stderr)
    );
    assert!(
        text(&stolen.stderr).contains("foreign token"),
        "{}",
        text(&stolen.stderr)
    );
    net.ws2.wg_quick_down(&bob_conf);

    // 4. A key the gateway does not know gets no answer at all.
    let unknown_key = ok(net.ws2.command("wg").arg("genkey")).trim().to_owned();
    let unknown_conf = d.join(format!("{ifx}.conf"));
    std::fs::write(
        &unknown_conf,
        format!(
            "[Interface]\nPrivateKey = {unknown_key}\nAddress = 10.77.0.99/32\n\n[Peer]\nPublicKey = {gw_pub}\n\
             Endpoint = 10.210.1.1:51820\nAllowedIPs = 10.77.0.1/32\n"
        ),
    )
    .unwrap();
    net.ws2.wg_quick_up(&unknown_conf);
    assert!(!net.ws2.tcp_connects("10.77.0.1", 22, 3));
    assert_eq!(net.ws2.wg_latest_handshake(&ifx), 0, "handshake with an unknown key");
    assert_eq!(net.ws2.wg_transfer(&ifx).0, 0, "bytes received by an unknown key");
    net.ws2.wg_quick_down(&unknown_conf);
    let metrics = net
        .gw
        .command("bash")
        .args([
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9187; \
        printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        ])
        .output()
        .unwrap();
    let metrics = text(&metrics.stdout);
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from metrics:\n{metrics}"))
    };
    assert!(
        counter("herse_wireguard_unknown_peer_handshakes_total") >= 1,
        "{metrics}"
    );
    assert!(counter("herse_wireguard_handshakes_total") >= 1, "{metrics}");
    // Debian's `wg` reads the gateway's peers through the UAPI socket.
    let show = ok(Command::new("wg").args(["show", &iface("g")]));
    assert!(show.contains("listening port: 51820"), "{show}");
    assert!(
        show.contains("allowed ips: 10.77.0.2/32") && show.contains("latest handshake:"),
        "{show}"
    );
    assert!(show.contains("transfer:"), "{show}");

    // 5. Revoking Alice's workstation ends her live session within a second and the
    //    next handshake fails.
    let mut live = ssh(&net.ws1, &alice)
        .args(["-l", DEPLOY, "web1", "echo started; exec sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(live.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "started");
    let t0 = Instant::now();
    ok(ctl().args(["workstations", "revoke", "alice-ws", "--reason", "laptop stolen"]));
    let waited = loop {
        if live.try_wait().unwrap().is_some() {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "session survived revocation");
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("revocation closed the live session in {waited:?}");
    assert!(waited < Duration::from_millis(1500), "revocation took {waited:?}");
    // The client is cut first; the session's row is closed after its recording is
    // sealed, a moment later.
    let t0 = Instant::now();
    loop {
        let rows: serde_json::Value =
            serde_json::from_str(&ok(ctl().args(["sessions", "list", "--all", "--json"]))).unwrap();
        if rows.as_array().unwrap().iter().any(|r| {
            r["end_reason"]
                .as_str()
                .is_some_and(|e| e.contains("workstation alice-ws revoked"))
        }) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{rows}");
        std::thread::sleep(Duration::from_millis(50));
    }
    net.ws1.wg_quick_down(&alice_conf);
    net.ws1.wg_quick_up(&alice_conf);
    assert!(
        !net.ws1.tcp_connects("10.77.0.1", 22, 3),
        "revoked workstation still connects"
    );
    assert_eq!(
        net.ws1.wg_latest_handshake(&if1),
        0,
        "revoked workstation completed a handshake"
    );

    // 6. A re-keyed workstation works with its new key only.
    net.ws2.wg_quick_up(&bob_conf);
    let bob = ssh_config(&d, "bob", &bob_key);
    let out = run(ssh(&net.ws2, &bob).args(["-l", DEPLOY, "web1", "echo bob-in"]));
    assert_eq!(text(&out.stdout).trim(), "bob-in", "{}", text(&out.stderr));
    let new_conf = ok(ctl().args(["workstations", "rotate-key", "bob-ws"]));
    std::thread::sleep(Duration::from_millis(600));
    assert!(!net.ws2.tcp_connects("10.77.0.1", 22, 3), "the old key still works");
    net.ws2.wg_quick_down(&bob_conf);
    std::fs::write(&bob_conf, new_conf).unwrap();
    net.ws2.wg_quick_up(&bob_conf);
    let out = run(ssh(&net.ws2, &bob).args(["-l", DEPLOY, "web1", "echo bob-again"]));
    assert_eq!(text(&out.stdout).trim(), "bob-again", "{}", text(&out.stderr));

    // `workstations list` shows handshakes and traffic from the running gateway.
    std::thread::sleep(Duration::from_millis(5500));
    let list: serde_json::Value = serde_json::from_str(&ok(ctl().args(["workstations", "list", "--json"]))).unwrap();
    let bob_row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "bob-ws")
        .unwrap()
        .clone();
    assert!(bob_row["last_handshake_at"].as_i64().is_some(), "{bob_row}");
    assert!(bob_row["rx_bytes"].as_i64().unwrap() > 0, "{bob_row}");

    // 7. Suspending the owner removes the peer at once, and resuming brings it back.
    let mut live = ssh(&net.ws2, &bob)
        .args(["-l", DEPLOY, "web1", "echo started; exec sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(live.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let t0 = Instant::now();
    ok(ctl().args(["users", "suspend", "bob", "--reason", "investigation"]));
    while live.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "session survived the owner's suspension"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("suspension closed the live session in {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_millis(1500));
    // The peer goes with the next pass of the workstation watcher (4 per second).
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !net.ws2.tcp_connects("10.77.0.1", 22, 2),
        "a suspended owner's workstation still connects"
    );
    ok(ctl().args(["users", "resume", "bob"]));
    std::thread::sleep(Duration::from_millis(600));
    assert!(net.ws2.tcp_connects("10.77.0.1", 22, 5), "resumed owner's workstation");

    // 8. A restarted gateway has lost its WireGuard sessions while the workstation still
    //    holds its own; left to its timers, the workstation would only start a new
    //    handshake 15 s after its first unanswered packet. The gateway saved where it
    //    heard the peer and greets it with a handshake at start, even after a crash.
    let out = run(ssh(&net.ws2, &bob).args(["-l", DEPLOY, "web1", "echo before-restart"]));
    assert_eq!(text(&out.stdout).trim(), "before-restart", "{}", text(&out.stderr));
    herse.signal("KILL");
    let _ = herse.proc.take().unwrap().child.wait();
    let saved = ok(Command::new("python3").arg("-c").arg(format!(
        "import sqlite3; print([r[0] for r in sqlite3.connect({:?}).execute('SELECT endpoint FROM wireguard_endpoints')])",
        d.join("data/herse.db").display().to_string()
    )));
    assert!(saved.contains("'10.210.2.2:"), "endpoints saved: {saved}");
    let herse = Gateway::spawn(&d, &config, Some(&net.gw));
    herse.wait_line("WireGuard on udp", Duration::from_secs(20));
    let t0 = Instant::now();
    let out = run(ssh(&net.ws2, &bob).args(["-l", DEPLOY, "web1", "echo after-restart"]));
    let took = t0.elapsed();
    assert_eq!(text(&out.stdout).trim(), "after-restart", "{}", text(&out.stderr));
    eprintln!("first ssh after a gateway restart took {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "reconnecting after a restart took {took:?}"
    );

    // 8b. A workstation that opens connections and never logs in holds at most 16 of
    //     the gateway's connection permits (each workstation has its own 16: see
    //     `pending`'s unit tests): the 17th is refused at once, and closing them gives
    //     the places back.
    let script = PROBE_PY.to_owned()
        + r#"
held = []
for _ in range(16):
    s = conn()
    s.sendall(b"SSH-2.0-never-logs-in\r\n")
    held.append(s)
time.sleep(1)
print("full", banner(), flush=True)
sys.stdin.readline()
for s in held:
    s.close()
time.sleep(1)
print("freed", banner(), flush=True)
"#;
    let mut holder = net
        .ws2
        .command("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "full -",
        "a 17th login under way from one workstation is refused"
    );
    holder.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    said.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "freed SSH-2.0",
        "places come back once those connections close"
    );
    assert!(holder.wait().unwrap().success());
    let out = run(ssh(&net.ws2, &bob).args(["-l", DEPLOY, "web1", "echo logged-in-again"]));
    assert_eq!(text(&out.stdout).trim(), "logged-in-again", "{}", text(&out.stderr));
    // A ProxyJump login is accepted on its key alone (the second factor comes at the
    // hop), so it counts until a hop has logged in: 16 `ssh -N gw` that never open one
    // hold the workstation's places as well.
    let logins = || {
        ok(ctl().args([
            "audit",
            "list",
            "--kind",
            "login.success",
            "--user",
            "bob",
            "--limit",
            "100000",
            "--json",
        ]))
        .lines()
        .count()
    };
    let before = logins();
    // One after another, each once the last has logged in: sixteen handshakes at once
    // through the tunnel's 8 half-open connections can outlast a client's connect
    // timeout on a loaded machine.
    let mut idle_jumps = Vec::new();
    for n in 1..=16 {
        idle_jumps.push(
            ssh(&net.ws2, &bob)
                .args(["-N", "gw"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t0 = Instant::now();
        while logins() < before + n {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "ProxyJump login {n} of 16 did not log in"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let probe = |what: &str| {
        let out = run(net
            .ws2
            .command("python3")
            .args(["-c", &(PROBE_PY.to_owned() + "print(banner())")]));
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        probe("once the jumps logged in"),
        "-",
        "logged-in ProxyJump connections without a hop still count"
    );
    for c in &mut idle_jumps {
        let _ = c.kill();
        let _ = c.wait();
    }
    let t0 = Instant::now();
    while probe("after the jumps left") != "SSH-2.0" {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the idle jumps' places did not come back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 9. A workstation that leaves connections half closed (the gateway dropped them,
    //    its own side never closes and answers keep-alives) cannot make the gateway
    //    hold their buffers without bound: closing connections count against its 64,
    //    and are reset after 20 s.
    let script = PROBE_PY.to_owned()
        + r#"
held = []
for _ in range(64):
    s = conn()
    # A version line, then a packet length no SSH server takes: the gateway drops it.
    s.sendall(b"SSH-2.0-junk\r\n" + b"\xff" * 64)
    held.append(s)
time.sleep(3)
print("capped", banner(), flush=True)
time.sleep(22)
print("after", banner(), flush=True)
"#;
    let out = run(net.ws2.command("python3").args(["-c", &script]));
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(
        said.contains("capped -"),
        "a 65th connection is reset, not served: {said}"
    );
    assert!(
        said.contains("after SSH-2.0"),
        "served again once the linger ran out: {said}"
    );

    // 10. A workstation that vanishes while output flows to it (its tunnel gone, nothing
    //     answers) does not hold its session: its connections are reset once the
    //     gateway has heard nothing back for client_alive_interval × (count_max + 1),
    //     here 3 s, although data still waits for it (the SSH layer's own keep-alives
    //     cannot go out then: the connection's send buffer is full).
    let mut flowing = ssh(&net.ws2, &bob)
        .args(["-l", DEPLOY, "web1", "yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(flowing.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..1000 {
        line.clear();
        out.read_line(&mut line).unwrap();
    }
    assert_eq!(line, "y\n");
    let bobs = || {
        serde_json::from_str::<Vec<serde_json::Value>>(&ok(ctl().args(["sessions", "list", "--json"])))
            .unwrap()
            .into_iter()
            .filter(|r| r["user"] == "bob")
            .count()
    };
    assert_eq!(bobs(), 1);
    net.ws2.wg_quick_down(&bob_conf);
    let t0 = Instant::now();
    while bobs() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "a vanished workstation's session is still live"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("a vanished workstation's session ended after {:?}", t0.elapsed());
    let _ = flowing.kill();
    let _ = flowing.wait();

    net.ws1.wg_quick_down(&alice_conf);
    drop(herse);
}
