//! Network namespaces and veth pairs, so workstations, the gateway and the tiers are
//! separate hosts as far as the kernel is concerned. Everything is removed on drop
//! (processes still running inside a namespace are killed first).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ok, run};

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace named `<role>-<pid>` with its loopback up.
    pub fn new(role: &str) -> Netns {
        let name = format!("h{role}-{}", std::process::id());
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `cmd` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `ip ARGS` inside the namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        ok(self.command("ip").args(args))
    }

    /// Whether a TCP connection to `addr:port` from this namespace succeeds within
    /// `timeout_s` seconds.
    pub fn tcp_connects(&self, addr: &str, port: u16, timeout_s: u32) -> bool {
        self.command("nc")
            .args(["-z", "-w", &timeout_s.to_string(), addr, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    pub fn wait_port(&self, addr: &str, port: u16) {
        let start = Instant::now();
        while !self.tcp_connects(addr, port, 1) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{addr}:{port} never opened in {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Bring up a WireGuard interface with wg-quick (Debian's wireguard-go, since this
    /// kernel has no WireGuard module) from a configuration file named `IFNAME.conf`.
    pub fn wg_quick_up(&self, conf: &Path) {
        ok(self.command("wg-quick").arg("up").arg(conf));
    }

    pub fn wg_quick_down(&self, conf: &Path) {
        let _ = run(self.command("wg-quick").arg("down").arg(conf));
    }

    /// `wg show IF latest-handshakes` as seconds since the epoch (0: never).
    pub fn wg_latest_handshake(&self, iface: &str) -> u64 {
        let out = ok(self.command("wg").args(["show", iface, "latest-handshakes"]));
        out.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// `wg show IF transfer`: (received, sent) bytes from the first peer.
    pub fn wg_transfer(&self, iface: &str) -> (u64, u64) {
        let out = ok(self.command("wg").args(["show", iface, "transfer"]));
        let mut f = out.split_whitespace().skip(1);
        let rx = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let tx = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        (rx, tx)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // wireguard-go daemonises and sshd forks: kill whatever still runs inside.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Join `a` and `b` with a veth pair: `a_if` gets `a_addr` (CIDR) in `a`, and so on.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    ok(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]));
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}
