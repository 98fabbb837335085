//! The embedded WireGuard interface: one UDP socket, a boringtun `Tunn` per enrolled
//! workstation, and a userspace TCP/IP stack (smoltcp) that ends the tunnel inside this
//! process. Decrypted packets never reach the host's kernel, so nothing can be routed
//! from the tunnel to the tiers, and a workstation can reach exactly the ports this
//! module listens on, and nothing else of the gateway host.
//!
//! One task owns the UDP socket's receive side and drives the stack; TCP connections are
//! handed out as [`TunnelStream`]s that lock the stack briefly on each read and write.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use rand::RngExt;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::key::{WgPublicKey, WgSecret};
use super::pool::TunnelNet;
use super::stream::TunnelStream;

/// WireGuard's usual tunnel MTU (wg-quick's default on a 1500-byte link).
pub const MTU: usize = 1420;
/// Handshake initiations per second before the gateway answers with cookies only.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Listening sockets kept ready per port (smoltcp accepts one connection per socket).
const BACKLOG: usize = 8;
/// Connections that completed no handshake within this time are dropped.
const SYN_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(10);
/// Connections one workstation may hold, open or closing (each costs its socket buffers).
const MAX_CONNS_PER_PEER: usize = 64;
/// Connections of all workstations together, open or closing.
const MAX_CONNS: usize = 1024;
/// How long a connection whose stream is gone may take to close before it is reset: a
/// peer that never closes its side (and answers keep-alives) would otherwise hold it,
/// and its buffers, for good.
const LINGER: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(20);
/// Connections between SYN and established, across all ports and per workstation.
const MAX_HALF_OPEN: usize = 64;
const MAX_HALF_OPEN_PER_PEER: usize = 8;
const RX_BUFFER: usize = 512 * 1024;
const TX_BUFFER: usize = 512 * 1024;
const TIMER_TICK: Duration = Duration::from_millis(100);

/// What the interface is: its UDP endpoint, its own tunnel address and subnet, the TCP
/// ports it serves on that address, and when a connection's peer counts as gone.
#[derive(Debug, Clone)]
pub struct WgConfig {
    pub listen: SocketAddr,
    pub net: TunnelNet,
    pub ports: Vec<u16>,
    pub liveness: Liveness,
}

/// When a workstation that went silent loses its connections: each connection sends a
/// TCP keep-alive after `interval` of quiet, and once the gateway has sent the
/// workstation packets and heard nothing back for `interval × (count_max + 1)`, every
/// connection from it is reset (as OpenSSH's `ClientAliveInterval` and
/// `ClientAliveCountMax` do one layer up). Without it, data sent to a workstation that
/// vanished is retransmitted for ever, and the SSH session writing it never notices:
/// once its send buffer is full, its own keep-alives cannot go out.
///
/// Silence is judged on the whole tunnel, not per TCP connection: a workstation whose
/// user stopped reading (ssh suspended with Ctrl-Z) still acknowledges the zero-window
/// probes, which smoltcp spaces up to 60 s apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub interval: Duration,
    pub count_max: u32,
}

/// Each connection's own timeout, a backstop for a workstation whose tunnel answers
/// but whose TCP does not: above smoltcp's longest retransmission and zero-window probe
/// interval (60 s), so a live but stalled reader is never cut by it.
const TCP_TIMEOUT_FLOOR: Duration = Duration::from_secs(120);

impl Liveness {
    /// The longest interval and count the configuration accepts, which keeps every
    /// product well inside smoltcp's microsecond clock.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
    pub const MAX_COUNT: u32 = 100;

    fn keep_alive(&self) -> smoltcp::time::Duration {
        smoltcp_duration(self.interval)
    }

    /// How long a workstation may leave the gateway unanswered.
    fn silence(&self) -> Duration {
        self.interval.saturating_mul(self.count_max.saturating_add(1))
    }

    fn dead_after(&self) -> smoltcp::time::Duration {
        smoltcp_duration(self.silence())
    }

    fn tcp_timeout(&self) -> smoltcp::time::Duration {
        smoltcp_duration(self.silence().max(TCP_TIMEOUT_FLOOR))
    }
}

/// A duration for smoltcp, at least a millisecond and at most a year (its clock counts
/// signed microseconds).
fn smoltcp_duration(d: Duration) -> smoltcp::time::Duration {
    const YEAR_MS: u128 = 365 * 24 * 3600 * 1000;
    let ms = d.as_millis().clamp(1, YEAR_MS);
    smoltcp::time::Duration::from_millis(u64::try_from(ms).unwrap_or(1))
}

/// An enrolled, active workstation: the only kind of peer the interface knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub public_key: WgPublicKey,
    pub address: Ipv4Addr,
    pub workstation: String,
}

/// A TCP connection that arrived through the tunnel. `workstation` is the peer whose
/// key decrypted the packets: WireGuard's cryptokey routing makes the source address
/// proof of the workstation.
pub struct Accepted {
    pub stream: TunnelStream,
    pub remote: SocketAddr,
    pub local_port: u16,
    pub workstation: String,
}

/// One peer as `wg show` would describe it.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub workstation: String,
    pub public_key: WgPublicKey,
    pub address: Ipv4Addr,
    pub endpoint: Option<SocketAddr>,
    /// Unix microseconds of the last completed handshake.
    pub last_handshake: Option<i64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Interface counters, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Handshake responses sent (each is a completed handshake from our side).
    pub handshakes: AtomicU64,
    /// Datagrams that failed to parse, authenticate or decrypt, or carried a spoofed
    /// inner source address.
    pub invalid_packets: AtomicU64,
    /// Valid-looking handshake initiations from keys that are not enrolled (no answer).
    pub unknown_peers: AtomicU64,
    /// Cookie replies sent because handshakes arrived faster than the rate limit.
    pub cookie_replies: AtomicU64,
    /// Handshake messages dropped because their source address sent too many.
    pub throttled_handshakes: AtomicU64,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CounterSnapshot {
    pub handshakes: u64,
    pub invalid_packets: u64,
    pub unknown_peers: u64,
    pub cookie_replies: u64,
    pub throttled_handshakes: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            handshakes: self.handshakes.load(Ordering::Relaxed),
            invalid_packets: self.invalid_packets.load(Ordering::Relaxed),
            unknown_peers: self.unknown_peers.load(Ordering::Relaxed),
            cookie_replies: self.cookie_replies.load(Ordering::Relaxed),
            throttled_handshakes: self.throttled_handshakes.load(Ordering::Relaxed),
        }
    }
}

struct Peer {
    spec: PeerSpec,
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
    index: u32,
    /// Since when the gateway has sent this peer packets and heard nothing back. Every
    /// WireGuard peer answers within seconds (a TCP ACK, or its passive keep-alive 10 s
    /// after data it did not answer), however slowly its applications read.
    unanswered_since: Option<smoltcp::time::Instant>,
}

/// Decrypted IP packets in, IP packets to encrypt out.
#[derive(Default)]
struct Device {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    free: Vec<Vec<u8>>,
}

struct RxToken(Vec<u8>);
struct TxToken<'a> {
    tx: &'a mut Vec<Vec<u8>>,
    free: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.free.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.tx.push(buf);
        r
    }
}

impl phy::Device for Device {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxToken, TxToken<'_>)> {
        let pkt = self.rx.pop_front()?;
        Some((
            RxToken(pkt),
            TxToken {
                tx: &mut self.tx,
                free: &mut self.free,
            },
        ))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tx: &mut self.tx,
            free: &mut self.free,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        // Every received packet was authenticated by WireGuard's AEAD: verifying IP and
        // TCP checksums again buys nothing. Sent packets carry them (the peer checks).
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps
    }
}

/// Datagrams to send once the stack lock is released.
#[derive(Default)]
struct Outbox {
    items: Vec<(SocketAddr, Vec<u8>)>,
    free: Vec<Vec<u8>>,
}

impl Outbox {
    fn push(&mut self, to: SocketAddr, data: &[u8]) {
        let mut b = self.free.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(data);
        self.items.push((to, b));
    }
}

/// Whether `s` is a connection with the tunnel address `addr`.
fn from(s: &tcp::Socket, addr: Ipv4Addr) -> bool {
    matches!(s.remote_endpoint(), Some(e) if e.addr == IpAddress::Ipv4(addr))
}

/// A connection on its way out.
pub(crate) struct Closing {
    handle: SocketHandle,
    since: smoltcp::time::Instant,
}

pub(crate) struct Stack {
    iface: Interface,
    device: Device,
    pub(crate) sockets: SocketSet<'static>,
    listeners: Vec<(u16, SocketHandle)>,
    half_open: Vec<(u16, SocketHandle)>,
    /// The tunnel subnet: a peer's address must be one of its pool addresses.
    net: TunnelNet,
    liveness: Liveness,
    /// Peers left out for an address outside the pool, reported once each.
    misaddressed: std::collections::HashSet<WgPublicKey>,
    /// Connections handed out, with the tunnel address they came from.
    pub(crate) conns: HashMap<SocketHandle, Ipv4Addr>,
    /// Connections whose stream was dropped (or that were refused), closing in the
    /// background until [`LINGER`] after `since`.
    pub(crate) closing: Vec<Closing>,
    peers: HashMap<WgPublicKey, Peer>,
    /// Peers removed from the set: their connections were reset, and they stay only
    /// until the next poll has sent those resets through their tunnel.
    retiring: std::collections::HashSet<WgPublicKey>,
    /// Where removed peers were last seen, so a peer that comes back (owner resumed)
    /// gets a handshake from the gateway at once instead of waiting for its own timers.
    /// At start: the peers to greet after a restart.
    last_endpoints: HashMap<WgPublicKey, SocketAddr>,
    /// Peers to send a handshake initiation to on the next poll.
    kick: Vec<WgPublicKey>,
    by_index: HashMap<u32, WgPublicKey>,
    by_ip: HashMap<Ipv4Addr, WgPublicKey>,
    next_index: u32,
    secret: WgSecret,
    public: PublicKey,
    rate_limiter: Arc<RateLimiter>,
    /// Each tunnel's own limiter: checks MAC1 again and never reports load, so a
    /// handshake is counted once (by `rate_limiter`) and a tunnel never answers with a
    /// cookie (which would also move its endpoint to an unauthenticated address).
    unlimited: Arc<RateLimiter>,
    throttle: super::throttle::Throttle,
    /// Handshake messages past MAC1 since the limiter's last reset (about a second):
    /// over [`HANDSHAKE_RATE_LIMIT`], the interface is under load.
    handshakes_now: u64,
    scratch: Vec<u8>,
    epoch: Instant,
}

pub(crate) struct Shared {
    stack: Mutex<Stack>,
    /// Wakes the engine: a stream wrote, read (the window opened) or closed.
    pub(crate) wake: Notify,
    counters: Counters,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Stack> {
        self.stack.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running interface. Dropping it stops the engine.
pub struct WireGuard {
    shared: Arc<Shared>,
    public: WgPublicKey,
    local_addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for WireGuard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl WireGuard {
    /// Bind the UDP port and start the engine with `peers`. New connections arrive on the
    /// returned receiver.
    ///
    /// `greet` names peers that may still hold a session with the process this one
    /// replaces, and where they were: each gets a handshake initiation at once, so its
    /// traffic resumes without waiting for its own timers (which give up on a silent
    /// session only after 15 s).
    pub async fn start(
        config: &WgConfig,
        secret: WgSecret,
        peers: Vec<PeerSpec>,
        greet: HashMap<WgPublicKey, SocketAddr>,
    ) -> std::io::Result<(WireGuard, mpsc::Receiver<Accepted>)> {
        let udp = UdpSocket::bind(config.listen).await?;
        let local_addr = udp.local_addr()?;
        let public = secret.public();
        let x_public = public.to_x25519();
        let mut device = Device::default();
        let epoch = Instant::now();
        let mut ic = IfaceConfig::new(HardwareAddress::Ip);
        ic.random_seed = rand::rng().random();
        let mut iface = Interface::new(ic, &mut device, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(config.net.gateway), config.net.prefix));
        });
        let mut stack = Stack {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            listeners: Vec::new(),
            half_open: Vec::new(),
            net: config.net,
            liveness: config.liveness,
            misaddressed: Default::default(),
            conns: HashMap::new(),
            closing: Vec::new(),
            peers: HashMap::new(),
            retiring: Default::default(),
            last_endpoints: greet,
            kick: Vec::new(),
            by_index: HashMap::new(),
            by_ip: HashMap::new(),
            next_index: rand::rng().random::<u32>() & 0x00ff_ffff,
            secret,
            public: x_public,
            rate_limiter: Arc::new(RateLimiter::new(&x_public, HANDSHAKE_RATE_LIMIT)),
            unlimited: Arc::new(RateLimiter::new(&x_public, u64::MAX)),
            throttle: super::throttle::Throttle::new(),
            handshakes_now: 0,
            scratch: vec![0u8; 65536 + 256],
            epoch,
        };
        for &port in &config.ports {
            for _ in 0..BACKLOG {
                let h = stack.listen(port).map_err(std::io::Error::other)?;
                stack.listeners.push((port, h));
            }
        }
        stack.set_peers(peers);
        let shared = Arc::new(Shared {
            stack: Mutex::new(stack),
            wake: Notify::new(),
            counters: Counters::default(),
        });
        let (tx, rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        tokio::spawn(run(shared.clone(), Arc::new(udp), tx, stop.clone()));
        Ok((
            WireGuard {
                shared,
                public,
                local_addr,
                stop,
            },
            rx,
        ))
    }

    pub fn public_key(&self) -> WgPublicKey {
        self.public
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replace the peer set. Peers that disappear (or changed key or address) are removed
    /// at once and every TCP connection from their address is reset. Returns the
    /// workstations removed.
    pub fn set_peers(&self, peers: Vec<PeerSpec>) -> Vec<String> {
        let removed = self.shared.lock().set_peers(peers);
        self.shared.wake.notify_one();
        removed
    }

    pub fn status(&self) -> Vec<PeerStatus> {
        self.shared.lock().status()
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }
}

impl Stack {
    /// Let `handle`'s socket close in the background (reset after [`LINGER`]).
    pub(crate) fn close_later(&mut self, handle: SocketHandle) {
        let since = self.now();
        self.closing.push(Closing { handle, since });
    }

    /// Connections from `addr` that hold a socket: handed out, or closing.
    fn sockets_of(&self, addr: Ipv4Addr) -> usize {
        let open = self.conns.values().filter(|a| **a == addr).count();
        let closing = self
            .closing
            .iter()
            .filter(|c| from(self.sockets.get::<tcp::Socket>(c.handle), addr))
            .count();
        open + closing
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX))
    }

    fn listen(&mut self, port: u16) -> Result<SocketHandle, tcp::ListenError> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; TX_BUFFER]),
        );
        s.set_nagle_enabled(false);
        s.set_congestion_control(tcp::CongestionControl::Cubic);
        s.set_timeout(Some(SYN_TIMEOUT));
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(30)));
        s.listen(port)?;
        Ok(self.sockets.add(s))
    }

    fn set_peers(&mut self, peers: Vec<PeerSpec>) -> Vec<String> {
        let wanted: HashMap<WgPublicKey, PeerSpec> = peers.into_iter().map(|p| (p.public_key, p)).collect();
        let stale: Vec<WgPublicKey> = self
            .peers
            .iter()
            .filter(|(k, p)| !self.retiring.contains(*k) && wanted.get(*k) != Some(&p.spec))
            .map(|(k, _)| *k)
            .collect();
        let mut removed = Vec::new();
        for k in stale {
            if let Some(p) = self.peers.get(&k) {
                // No packet from it is accepted any more; the resets of its connections
                // still go out through its tunnel on the next poll, then it is dropped.
                self.by_index.remove(&p.index);
                let (addr, name) = (p.spec.address, p.spec.workstation.clone());
                self.retiring.insert(k);
                self.reset_connections_from(addr);
                removed.push(name);
            }
        }
        self.misaddressed.retain(|k| wanted.contains_key(k));
        for (k, spec) in wanted {
            // The store hands out pool addresses only; a row that says otherwise (edited,
            // or written under another subnet) must not route anything.
            if !self.net.is_pool_address(spec.address) {
                if self.misaddressed.insert(k) {
                    tracing::error!(
                        workstation = %spec.workstation,
                        address = %spec.address,
                        net = %self.net,
                        "workstation's tunnel address is outside the pool; its peer is left out"
                    );
                }
                continue;
            }
            if self.retiring.remove(&k) {
                self.drop_peer(&k); // back again (e.g. owner resumed): start afresh
            } else if self.peers.contains_key(&k) {
                continue;
            }
            // An address held by another live key (the store keeps them unique, so this
            // is a bug) goes to nobody rather than to the wrong peer.
            if let Some(other) = self.by_ip.get(&spec.address) {
                if *other != k && !self.retiring.contains(other) {
                    tracing::error!(address = %spec.address, "two WireGuard peers claim one address; ignoring the newer");
                    continue;
                }
            }
            let index = self.alloc_index();
            let tunn = Tunn::new(
                self.secret.x25519().clone(),
                k.to_x25519(),
                None,
                None,
                index,
                Some(self.unlimited.clone()),
            );
            self.by_index.insert(index, k);
            self.by_ip.insert(spec.address, k);
            let endpoint = self.last_endpoints.remove(&k);
            if endpoint.is_some() {
                self.kick.push(k);
            }
            self.peers.insert(
                k,
                Peer {
                    spec,
                    tunn,
                    endpoint,
                    index,
                    unanswered_since: None,
                },
            );
        }
        removed
    }

    fn drop_peer(&mut self, k: &WgPublicKey) {
        if let Some(p) = self.peers.remove(k) {
            if let Some(e) = p.endpoint {
                self.last_endpoints.insert(*k, e);
            }
            if self.by_index.get(&p.index) == Some(k) {
                self.by_index.remove(&p.index);
            }
            if self.by_ip.get(&p.spec.address) == Some(k) {
                self.by_ip.remove(&p.spec.address);
            }
        }
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if !self.by_index.contains_key(&self.next_index) {
                return self.next_index;
            }
        }
    }

    fn reset_connections_from(&mut self, addr: Ipv4Addr) {
        for (&h, a) in &self.conns {
            if *a == addr {
                self.sockets.get_mut::<tcp::Socket>(h).abort();
            }
        }
        let pending = self.half_open.iter().map(|&(_, h)| h);
        for h in pending.chain(self.closing.iter().map(|c| c.handle)) {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if from(s, addr) {
                s.abort();
            }
        }
    }

    fn status(&self) -> Vec<PeerStatus> {
        let now = SystemTime::now();
        let mut out: Vec<PeerStatus> = self
            .peers
            .iter()
            .filter(|(k, _)| !self.retiring.contains(*k))
            .map(|(_, p)| {
                let (since, tx, rx, _, _) = p.tunn.stats();
                PeerStatus {
                    workstation: p.spec.workstation.clone(),
                    public_key: p.spec.public_key,
                    address: p.spec.address,
                    endpoint: p.endpoint,
                    last_handshake: since.and_then(|d| now.checked_sub(d)).map(|t| {
                        t.duration_since(SystemTime::UNIX_EPOCH)
                            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
                            .unwrap_or(0)
                    }),
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                }
            })
            .collect();
        out.sort_by(|a, b| a.workstation.cmp(&b.workstation));
        out
    }

    /// One datagram from the network.
    fn on_datagram(&mut self, from: SocketAddr, data: &[u8], out: &mut Outbox, counters: &Counters) {
        let mut cookie = [0u8; 64];
        // MAC1 (and under load MAC2) first: no Diffie-Hellman for a packet that does not
        // even know the gateway's public key.
        let verified = self.rate_limiter.verify_packet(Some(from.ip()), data, &mut cookie);
        // Past MAC1 (and MAC2 under load), before any Diffie-Hellman: under load, a
        // source's rate. Only under load, as the kernel's WireGuard: the workstations of
        // one office behind one NAT address all answer the greeting after a restart.
        if matches!(verified, Ok(Packet::HandshakeInit(_) | Packet::HandshakeResponse(_))) {
            self.handshakes_now += 1;
            if self.handshakes_now > HANDSHAKE_RATE_LIMIT && !self.throttle.allow(from.ip(), std::time::Instant::now())
            {
                counters.throttled_handshakes.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let key = match verified {
            Ok(Packet::HandshakeInit(p)) => match parse_handshake_anon(self.secret.x25519(), &self.public, &p) {
                Ok(half) => {
                    let k = WgPublicKey::from_bytes(half.peer_static_public);
                    if !self.peers.contains_key(&k) || self.retiring.contains(&k) {
                        counters.unknown_peers.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    k
                }
                Err(_) => {
                    counters.invalid_packets.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            Ok(Packet::HandshakeResponse(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return counters.invalid(),
            },
            Ok(Packet::PacketCookieReply(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return counters.invalid(),
            },
            Ok(Packet::PacketData(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return counters.invalid(),
            },
            Err(TunnResult::WriteToNetwork(c)) => {
                counters.cookie_replies.fetch_add(1, Ordering::Relaxed);
                out.push(from, c);
                return;
            }
            Err(_) => return counters.invalid(),
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        // A cookie reply proves nothing about who sent it (anyone who knows the peer's
        // public key and saw our message can make one): it never moves the endpoint.
        // Everything else that decapsulates was authenticated with the peer's key, but a
        // handshake initiation is not proof of a live peer either: one captured on the
        // wire is accepted once more by a restarted gateway (the last timestamp seen is
        // kept in memory only, as in every WireGuard), and would move the endpoint to
        // whoever replays it. Its response goes back where it came from; the endpoint
        // moves with the initiator's first transport packet, which needs the session keys.
        let authenticated = !matches!(data.first(), Some(3));
        let initiation = matches!(data.first(), Some(1));
        match peer.tunn.decapsulate(Some(from.ip()), data, &mut self.scratch) {
            TunnResult::Done => {
                if authenticated {
                    peer.endpoint = Some(from);
                    peer.unanswered_since = None;
                }
            }
            TunnResult::Err(_) => counters.invalid(),
            TunnResult::WriteToNetwork(p) => {
                if authenticated && !initiation && p.first() != Some(&3) {
                    peer.endpoint = Some(from);
                    peer.unanswered_since = None;
                }
                if p.first() == Some(&2) {
                    counters.handshakes.fetch_add(1, Ordering::Relaxed);
                }
                out.push(from, p);
                while let TunnResult::WriteToNetwork(p) = peer.tunn.decapsulate(None, &[], &mut self.scratch) {
                    out.push(from, p);
                }
            }
            TunnResult::WriteToTunnelV4(pkt, src) => {
                peer.endpoint = Some(from);
                peer.unanswered_since = None;
                // Cryptokey routing: a peer may only speak from its own address.
                if src == peer.spec.address {
                    let mut b = self.device.free.pop().unwrap_or_default();
                    b.clear();
                    b.extend_from_slice(pkt);
                    self.device.rx.push_back(b);
                } else {
                    counters.invalid();
                }
            }
            TunnResult::WriteToTunnelV6(..) => counters.invalid(),
        }
    }

    /// Run the TCP/IP stack, encrypt what it sends, and hand out new connections.
    fn poll(&mut self, out: &mut Outbox, accept: &mpsc::Sender<Accepted>, shared: &Arc<Shared>) {
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        let sent = std::mem::take(&mut self.device.tx);
        for pkt in &sent {
            // IPv4 destination: bytes 16..20. smoltcp only emits well-formed packets.
            let Some(dst) = pkt.get(16..20).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3])) else {
                continue;
            };
            let Some(peer) = self.by_ip.get(&dst).and_then(|k| self.peers.get_mut(k)) else {
                continue;
            };
            let Some(endpoint) = peer.endpoint else {
                continue;
            };
            if let TunnResult::WriteToNetwork(p) = peer.tunn.encapsulate(pkt, &mut self.scratch) {
                out.push(endpoint, p);
                peer.unanswered_since.get_or_insert(now);
            }
        }
        self.device.free.extend(sent);
        for k in std::mem::take(&mut self.retiring) {
            self.drop_peer(&k);
        }
        for k in std::mem::take(&mut self.kick) {
            if let Some(peer) = self.peers.get_mut(&k) {
                if let (Some(e), TunnResult::WriteToNetwork(p)) = (
                    peer.endpoint,
                    peer.tunn.format_handshake_initiation(&mut self.scratch, false),
                ) {
                    out.push(e, p);
                }
            }
        }
        self.accept(accept, shared);
        self.reap();
    }

    fn accept(&mut self, accept: &mpsc::Sender<Accepted>, shared: &Arc<Shared>) {
        for i in 0..self.listeners.len() {
            let (port, h) = self.listeners[i];
            if self.sockets.get::<tcp::Socket>(h).state() != tcp::State::Listen {
                let from = self.sockets.get::<tcp::Socket>(h).remote_endpoint().map(|e| e.addr);
                if !self.make_room_for_half_open(from) {
                    // A flood of unfinished handshakes: the flooding workstation loses its
                    // newest, the others keep connecting (and nothing grows).
                    self.sockets.get_mut::<tcp::Socket>(h).abort();
                    let _ = self.sockets.get_mut::<tcp::Socket>(h).listen(port);
                    continue;
                }
                match self.listen(port) {
                    Ok(new) => self.listeners[i] = (port, new),
                    Err(e) => tracing::error!(error = %e, port, "cannot re-arm tunnel listener"),
                }
                self.half_open.push((port, h));
            }
        }
        let mut i = 0;
        while i < self.half_open.len() {
            let (port, h) = self.half_open[i];
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::SynReceived => i += 1,
                tcp::State::Established => {
                    self.half_open.swap_remove(i);
                    let remote = match s.remote_endpoint() {
                        Some(e) => match e.addr {
                            IpAddress::Ipv4(a) => SocketAddrV4::new(a, e.port),
                        },
                        None => {
                            s.abort();
                            self.close_later(h);
                            continue;
                        }
                    };
                    let peer = self
                        .by_ip
                        .get(remote.ip())
                        .filter(|k| !self.retiring.contains(*k))
                        .and_then(|k| self.peers.get(k));
                    let Some(workstation) = peer.map(|p| p.spec.workstation.clone()) else {
                        s.abort();
                        self.close_later(h);
                        continue;
                    };
                    // Closing connections count: their buffers are held until they close.
                    let full = self.conns.len() + self.closing.len() >= MAX_CONNS;
                    if full || self.sockets_of(*remote.ip()) >= MAX_CONNS_PER_PEER {
                        tracing::warn!(%workstation, all = full, "too many tunnel connections; reset");
                        self.sockets.get_mut::<tcp::Socket>(h).abort();
                        self.close_later(h);
                        continue;
                    }
                    // From now on a silent workstation is cut by the liveness rule
                    // (`timers`); the handshake's own timeout no longer applies.
                    let live = self.liveness;
                    let s = self.sockets.get_mut::<tcp::Socket>(h);
                    s.set_keep_alive(Some(live.keep_alive()));
                    s.set_timeout(Some(live.tcp_timeout()));
                    let accepted = Accepted {
                        stream: TunnelStream::new(shared.clone(), h),
                        remote: SocketAddr::V4(remote),
                        local_port: port,
                        workstation,
                    };
                    self.conns.insert(h, *remote.ip());
                    if let Err(e) = accept.try_send(accepted) {
                        // The stream's drop would lock the stack we hold: take it apart here.
                        let a = match e {
                            mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a) => a,
                        };
                        a.stream.forget();
                        self.conns.remove(&h);
                        self.sockets.get_mut::<tcp::Socket>(h).abort();
                        self.close_later(h);
                        tracing::warn!(remote = %remote, "tunnel accept queue full; connection reset");
                    }
                }
                _ => {
                    self.half_open.swap_remove(i);
                    s.abort();
                    self.close_later(h);
                }
            }
        }
    }

    /// Whether a new unfinished handshake from `from` may be kept. Each workstation holds
    /// at most [`MAX_HALF_OPEN_PER_PEER`]; when all [`MAX_HALF_OPEN`] are taken, the
    /// workstation holding the most gives one up to a workstation holding fewer, so that
    /// several workstations together cannot lock the others out.
    fn make_room_for_half_open(&mut self, from: Option<IpAddress>) -> bool {
        let source =
            |sockets: &SocketSet<'_>, h: SocketHandle| sockets.get::<tcp::Socket>(h).remote_endpoint().map(|e| e.addr);
        let mut held: HashMap<Option<IpAddress>, (usize, usize)> = HashMap::new();
        for (i, &(_, h)) in self.half_open.iter().enumerate() {
            held.entry(source(&self.sockets, h)).or_insert((0, i)).0 += 1;
        }
        let mine = held.get(&from).map_or(0, |c| c.0);
        if mine >= MAX_HALF_OPEN_PER_PEER {
            return false;
        }
        if self.half_open.len() < MAX_HALF_OPEN {
            return true;
        }
        let Some((count, victim)) = held.values().copied().max_by_key(|c| c.0) else {
            return false;
        };
        if count <= mine + 1 {
            return false;
        }
        let (_, h) = self.half_open.swap_remove(victim);
        self.sockets.get_mut::<tcp::Socket>(h).abort();
        self.close_later(h);
        true
    }

    /// Free sockets whose stream is gone once they are closed; reset those that took
    /// longer than [`LINGER`] (freed on the next pass, after the reset went out).
    fn reap(&mut self) {
        let now = self.now();
        let sockets = &mut self.sockets;
        self.closing.retain(|c| {
            let s = sockets.get_mut::<tcp::Socket>(c.handle);
            match s.state() {
                tcp::State::Closed | tcp::State::TimeWait => {
                    sockets.remove(c.handle);
                    false
                }
                _ => {
                    if now >= c.since + LINGER {
                        s.abort();
                    }
                    true
                }
            }
        });
    }

    fn timers(&mut self, out: &mut Outbox) {
        let now = self.now();
        let dead_after = self.liveness.dead_after();
        let mut silent = Vec::new();
        for (k, peer) in self.peers.iter_mut() {
            if self.retiring.contains(k) {
                continue;
            }
            if let TunnResult::WriteToNetwork(p) = peer.tunn.update_timers(&mut self.scratch) {
                if let Some(e) = peer.endpoint {
                    out.push(e, p);
                }
            }
            if peer.unanswered_since.is_some_and(|t| now >= t + dead_after) {
                peer.unanswered_since = None;
                silent.push((peer.spec.address, peer.spec.workstation.clone()));
            }
        }
        for (address, workstation) in silent {
            if self.sockets_of(address) > 0 {
                tracing::info!(%workstation, %address, "workstation silent past ssh.client_alive; its connections are reset");
                self.reset_connections_from(address);
            }
        }
    }
}

impl Counters {
    fn invalid(&self) {
        self.invalid_packets.fetch_add(1, Ordering::Relaxed);
    }
}

async fn run(shared: Arc<Shared>, udp: Arc<UdpSocket>, accept: mpsc::Sender<Accepted>, stop: CancellationToken) {
    let mut buf = vec![0u8; 65536];
    let mut out = Outbox::default();
    let mut last_timers = Instant::now();
    let mut last_reset = Instant::now();
    loop {
        let delay = {
            let mut guard = shared.lock();
            let st = &mut *guard;
            let now = st.now();
            st.iface
                .poll_delay(now, &st.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(TIMER_TICK)
                .min(TIMER_TICK)
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = udp.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    let mut st = shared.lock();
                    st.on_datagram(from, &buf[..n], &mut out, &shared.counters);
                    // Drain what else is queued before running the stack once for all.
                    for _ in 0..256 {
                        match udp.try_recv_from(&mut buf) {
                            Ok((n, from)) => st.on_datagram(from, &buf[..n], &mut out, &shared.counters),
                            Err(_) => break,
                        }
                    }
                }
            }
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        {
            let mut st = shared.lock();
            st.poll(&mut out, &accept, &shared);
            if last_timers.elapsed() >= TIMER_TICK {
                last_timers = Instant::now();
                st.timers(&mut out);
            }
            if last_reset.elapsed() >= Duration::from_secs(1) {
                last_reset = Instant::now();
                st.rate_limiter.reset_count();
                st.handshakes_now = 0;
            }
        }
        for (to, pkt) in out.items.drain(..) {
            if let Err(e) = udp.send_to(&pkt, to).await {
                tracing::debug!(error = %e, %to, "WireGuard send failed");
            }
            out.free.push(pkt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn engine(secret: &WgSecret, workstation: &WgPublicKey) -> WireGuard {
        let peers = vec![PeerSpec {
            public_key: *workstation,
            address: Ipv4Addr::new(10, 99, 0, 2),
            workstation: "ws1".into(),
        }];
        engine_with(secret, peers).await
    }

    /// An engine on 10.99.0.1/24 serving port 22 to `peers`.
    async fn engine_with(secret: &WgSecret, peers: Vec<PeerSpec>) -> WireGuard {
        let config = WgConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            net: TunnelNet::parse("10.99.0.1/24").unwrap(),
            ports: vec![22],
            liveness: Liveness {
                interval: Duration::from_secs(30),
                count_max: 3,
            },
        };
        WireGuard::start(&config, secret.clone(), peers, HashMap::new())
            .await
            .unwrap()
            .0
    }

    async fn answer(sock: &UdpSocket) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .expect("the gateway answers")
            .unwrap();
        buf.truncate(n);
        buf
    }

    fn endpoint(wg: &WireGuard) -> Option<SocketAddr> {
        wg.status()[0].endpoint
    }

    /// A handshake initiation captured on the wire and replayed to a restarted gateway
    /// (which no longer knows the last timestamp it accepted) is answered, but does not
    /// move the workstation's endpoint to the replayer: only the initiator's first
    /// transport packet, which needs the session's keys, does.
    #[tokio::test]
    async fn a_handshake_replayed_after_a_restart_does_not_move_the_endpoint() {
        let gw_secret = WgSecret::generate();
        let ws_secret = WgSecret::generate();
        let ws_public = ws_secret.public();
        let mut ws = Tunn::new(
            ws_secret.x25519().clone(),
            gw_secret.public().to_x25519(),
            None,
            None,
            7,
            None,
        );
        let mut buf = vec![0u8; 2048];
        let init = match ws.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no initiation"),
        };

        let wg = engine(&gw_secret, &ws_public).await;
        let real = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        real.connect(wg.local_addr()).await.unwrap();
        real.send(&init).await.unwrap();
        let response = answer(&real).await;
        assert_eq!(response.first(), Some(&2));
        assert_eq!(endpoint(&wg), None, "an initiation alone moves nothing");
        // The workstation confirms with its first transport packet (a keepalive).
        let keepalive = match ws.decapsulate(None, &response, &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no keepalive"),
        };
        real.send(&keepalive).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while endpoint(&wg) != Some(real.local_addr().unwrap()) {
            assert!(Instant::now() < deadline, "the keepalive moved no endpoint");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Restarted: the same initiation, replayed from elsewhere, is taken once more.
        drop(wg);
        let wg = engine(&gw_secret, &ws_public).await;
        let replayer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        replayer.connect(wg.local_addr()).await.unwrap();
        replayer.send(&init).await.unwrap();
        assert_eq!(answer(&replayer).await.first(), Some(&2));
        assert_eq!(endpoint(&wg), None, "the replayer did not become the endpoint");
    }

    #[tokio::test]
    async fn a_peer_whose_address_is_outside_the_pool_is_left_out() {
        let peer = |address: [u8; 4], name: &str| PeerSpec {
            public_key: WgSecret::generate().public(),
            address: Ipv4Addr::from(address),
            workstation: name.into(),
        };
        let wg = engine_with(
            &WgSecret::generate(),
            vec![
                peer([10, 99, 0, 2], "fits"),
                peer([10, 98, 0, 2], "other-subnet"),
                peer([10, 99, 0, 1], "the-gateway"),
                peer([10, 99, 0, 255], "broadcast"),
                peer([10, 99, 0, 0], "network"),
            ],
        )
        .await;
        let names: Vec<String> = wg.status().into_iter().map(|p| p.workstation).collect();
        assert_eq!(names, ["fits"]);
    }

    /// A workstation's side of the tunnel, enough to send TCP segments and read replies.
    struct Station {
        tunn: Tunn,
        udp: UdpSocket,
        address: Ipv4Addr,
    }

    impl Station {
        async fn connect(wg: &WireGuard, gw: &WgSecret, secret: &WgSecret, n: u8) -> Station {
            let mut tunn = Tunn::new(
                secret.x25519().clone(),
                gw.public().to_x25519(),
                None,
                None,
                u32::from(n),
                None,
            );
            // Each station its own loopback source: the handshake throttle counts per source.
            let udp = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 10 + n), 0)).await.unwrap();
            udp.connect(wg.local_addr()).await.unwrap();
            let mut buf = vec![0u8; 2048];
            let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut buf, false) else {
                panic!("no initiation");
            };
            udp.send(init).await.unwrap();
            let response = answer(&udp).await;
            let TunnResult::WriteToNetwork(keepalive) = tunn.decapsulate(None, &response, &mut buf) else {
                panic!("no keepalive");
            };
            udp.send(keepalive).await.unwrap();
            Station {
                tunn,
                udp,
                address: Ipv4Addr::new(10, 99, 0, n),
            }
        }

        async fn syn(&mut self, port: u16) {
            use smoltcp::phy::ChecksumCapabilities;
            use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr, TcpSeqNumber};
            let tcp = TcpRepr {
                src_port: port,
                dst_port: 22,
                control: smoltcp::wire::TcpControl::Syn,
                seq_number: TcpSeqNumber(1000),
                ack_number: None,
                window_len: 64240,
                window_scale: None,
                max_seg_size: Some(1360),
                sack_permitted: false,
                sack_ranges: [None; 3],
                timestamp: None,
                payload: &[],
            };
            let gateway = Ipv4Addr::new(10, 99, 0, 1);
            let ip = Ipv4Repr {
                src_addr: self.address,
                dst_addr: gateway,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            let mut packet = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
            let caps = ChecksumCapabilities::default();
            let mut ipp = Ipv4Packet::new_unchecked(&mut packet[..]);
            ip.emit(&mut ipp, &caps);
            tcp.emit(
                &mut TcpPacket::new_unchecked(ipp.payload_mut()),
                &IpAddress::Ipv4(self.address),
                &IpAddress::Ipv4(gateway),
                &caps,
            );
            let mut buf = vec![0u8; 2048];
            let TunnResult::WriteToNetwork(sealed) = self.tunn.encapsulate(&packet, &mut buf) else {
                panic!("cannot encapsulate");
            };
            self.udp.send(sealed).await.unwrap();
        }

        /// Send a SYN from `port` and say whether the gateway keeps the unfinished
        /// connection ("kept") or forgot it ("dropped"). Every SYN is answered by a
        /// listening socket before the gateway looks at it.
        async fn try_open(&mut self, wg: &WireGuard, port: u16) -> &'static str {
            use smoltcp::wire::{Ipv4Packet, TcpPacket};
            self.syn(port).await;
            let mut buf = vec![0u8; 2048];
            loop {
                let sealed = answer(&self.udp).await;
                let TunnResult::WriteToTunnelV4(packet, _) = self.tunn.decapsulate(None, &sealed, &mut buf) else {
                    continue;
                };
                let ip = Ipv4Packet::new_checked(&packet[..]).unwrap();
                let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
                if tcp.dst_port() == port && tcp.syn() {
                    break;
                }
            }
            // The accept pass runs right after the poll that answered.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let st = wg.shared.lock();
            let me = smoltcp::wire::IpEndpoint::new(IpAddress::Ipv4(self.address), port);
            let kept = st
                .half_open
                .iter()
                .any(|&(_, h)| st.sockets.get::<tcp::Socket>(h).remote_endpoint() == Some(me));
            if kept {
                "kept"
            } else {
                "dropped"
            }
        }
    }

    /// Workstations that each hold their own share of unfinished handshakes cannot, even
    /// together, lock another out: when every place is taken, the biggest holder gives
    /// one up. One workstation alone still gets no more than its share.
    #[tokio::test]
    async fn unfinished_handshakes_cannot_lock_out_another_workstation() {
        let gw = WgSecret::generate();
        let stations: Vec<WgSecret> = (0..10).map(|_| WgSecret::generate()).collect();
        let peers = stations
            .iter()
            .enumerate()
            .map(|(i, s)| PeerSpec {
                public_key: s.public(),
                address: Ipv4Addr::new(10, 99, 0, 2 + i as u8),
                workstation: format!("ws{i}"),
            })
            .collect();
        let wg = engine_with(&gw, peers).await;
        let mut connected = Vec::new();
        for (i, s) in stations.iter().enumerate() {
            connected.push(Station::connect(&wg, &gw, s, 2 + i as u8).await);
        }
        let (late, flooders) = connected.split_last_mut().unwrap();
        let (greedy, flooders) = flooders.split_last_mut().unwrap();
        // Eight workstations take every place, eight each, and never finish.
        for st in flooders.iter_mut() {
            for port in 0..MAX_HALF_OPEN_PER_PEER as u16 {
                assert_eq!(st.try_open(&wg, 40000 + port).await, "kept");
            }
        }
        // One more from a workstation over its share is refused ...
        let over = flooders[0].address;
        assert_eq!(
            flooders[0].try_open(&wg, 41000).await,
            "dropped",
            "{over} over its share"
        );
        // ... and two others still get places, each taken from a bigger holder.
        assert_eq!(greedy.try_open(&wg, 42000).await, "kept", "a newcomer was locked out");
        assert_eq!(
            late.try_open(&wg, 43000).await,
            "kept",
            "a second newcomer was locked out"
        );
        // Places go only from a bigger holder to a smaller one: a newcomer that goes on
        // is refused before it holds more than the others.
        let mut held = 1;
        for port in 1..=MAX_HALF_OPEN_PER_PEER as u16 {
            match greedy.try_open(&wg, 42000 + port).await {
                "kept" => held += 1,
                _ => break,
            }
        }
        assert!(held < MAX_HALF_OPEN_PER_PEER, "the newcomer took {held} places");
    }
}
