#!/usr/bin/env bash
# The WireGuard front door against wireguard-go, in one run, in one namespace topology:
#
#   bws (workstation) 10.220.0.2 ── veth ── 10.220.0.1 bgw (gateway host)
#
#   (a) veth       plain veth, no tunnel
#   (b) wg-go      wireguard-go (workstation) <-> wireguard-go (gateway host), kernel TCP
#   (c) herse      wireguard-go (workstation) <-> herse's embedded WireGuard + userspace TCP
#
# Figures per path: iperf3 throughput (TCP, workstation -> gateway, SECONDS s), ssh
# throughput (SIZE_MIB piped into `cat > /dev/null` on an sshd in the gateway namespace),
# and CPU seconds per GiB of the gateway-side tunnel process (wireguard-go or herse) during
# the iperf3 run, from /proc. For (c), iperf3 goes through a tunnel port that a
# bench-only build forwards to the gateway's loopback (--features bench-tunnel-forward;
# that build refuses to serve without HERSE_BENCH_UNRECORDED=1), and ssh goes through
# Herse as users do: ProxyJump, recorded — so it carries Herse's SSH relay too.
#
# With --recording-rounds N, a second table gives what recording costs through the
# tunnel (issue #3's ratio, as workstations see it): throughput through Herse of ssh into
# `cat > /dev/null` and of an sftp put (its SFTP stream parsed, the file hashed), single
# hop and ProxyJump, with this build and with a bench-only build whose recorder records
# nothing (--features bench-null-recorder), restarting the gateway between the two, in
# N alternating rounds; medians. The gateway's CPU-s/GiB there covers WireGuard, TCP, SSH
# and recording together.
#
# Usage: bench/wireguard.sh [--size-mib 512] [--seconds 10] [--recording-rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=512
SECONDS_=10
RROUNDS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mib) SIZE_MIB=$2; shift 2;;
    --seconds) SECONDS_=$2; shift 2;;
    --recording-rounds) RROUNDS=$2; shift 2;;
    -h|--help) sed -n '2,26p' "$0"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/herse/target}"
scripts/install-test-deps
W=$(mktemp -d /tmp/herse-wgbench.XXXXXX)
cargo build --release --quiet -p herse-gateway -p hersectl --features herse-gateway/bench-tunnel-forward
cp "$CARGO_TARGET_DIR/release/herse" "$W/herse"
cp "$CARGO_TARGET_DIR/release/hersectl" "$W/hersectl"
if [ "$RROUNDS" -gt 0 ]; then
  cargo build --release --quiet -p herse-gateway --features bench-tunnel-forward,bench-null-recorder
  cp "$CARGO_TARGET_DIR/release/herse" "$W/herse-null"
fi
LOGIN=hbench
id "$LOGIN" >/dev/null 2>&1 || useradd -m -p '*' -s /bin/sh "$LOGIN"
WS=hbws-$$; GW=hbgw-$$
IFW=hbw$(($$ % 100000)); IFG=hbg$(($$ % 100000)); IFH=hbh$(($$ % 100000))
cleanup() {
  for ns in "$WS" "$GW"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$W"
}
trap cleanup EXIT
ip netns add "$WS"; ip netns add "$GW"
ip -n "$WS" link set lo up; ip -n "$GW" link set lo up
ip link add eth0 netns "$WS" type veth peer name eth0 netns "$GW"
ip -n "$WS" addr add 10.220.0.2/24 dev eth0; ip -n "$GW" addr add 10.220.0.1/24 dev eth0
ip -n "$WS" link set eth0 up; ip -n "$GW" link set eth0 up
inws() { ip netns exec "$WS" "$@"; }
ingw() { ip netns exec "$GW" "$@"; }

# An sshd on the gateway host, for the ssh figures; it trusts Herse's user CA too.
cat > "$W/herse.toml" <<CFG
data_dir = "data"
master_key_file = "secrets/master.key"
policy = "policy.toml"
[ssh]
[wireguard]
listen = "10.220.0.1:51821"
address = "10.77.0.1/24"
endpoint = "10.220.0.1:51821"
CFG
: > "$W/policy.toml"
"$W/herse" -c "$W/herse.toml" init --json > /dev/null
ssh-keygen -q -t ed25519 -N '' -f "$W/host"; ssh-keygen -q -t ed25519 -N '' -f "$W/user"
mkdir -p "$W/ak"; cp "$W/user.pub" "$W/ak/authorized_keys"
chmod 755 "$W" "$W/ak"; chmod 644 "$W/ak/authorized_keys"
mkdir -p /run/sshd
cat > "$W/sshd_config" <<CFG
Port 22
HostKey $W/host
TrustedUserCAKeys $W/data/user_ca.pub
AuthorizedKeysFile $W/ak/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel ERROR
Subsystem sftp /usr/lib/openssh/sftp-server
CFG
ingw /usr/sbin/sshd -f "$W/sshd_config" -E "$W/sshd.log"
ingw iperf3 -s -D --logfile "$W/iperf3.log"
cat > "$W/policy.toml" <<POL
[tiers.bench.targets.tgt]
address = "127.0.0.1"
port = 22
host_keys = ["$(cat "$W/host.pub")"]
[roles.bench]
tiers = ["bench"]
logins = ["$LOGIN"]
operations = ["shell", "exec", "sftp-read", "sftp-write"]
max_session = "8h"
idle_timeout = "1h"
mfa_remember = "1h"
POL
CTL() { "$W/hersectl" -c "$W/herse.toml" "$@"; }
CTL users add alice --key "$W/user.pub" >/dev/null
CTL roles bind alice bench >/dev/null
# Every session proves a second factor: TOTP for alice, proved once before the ssh
# figure (askpass); the role remembers the proof for her workstation.
. bench/totp.sh
SECRET=$(totp_enrol "$W/hersectl" "$W/herse.toml" alice)
totp_askpass "$W/askpass" "$SECRET"
CTL workstations add bench-ws --owner alice > "$W/$IFH.conf" 2>/dev/null
start_herse() {
  # In a subshell, so this shell does not report the job killed at cleanup.
  (HERSE_BENCH_UNRECORDED=1 HERSE_BENCH_TUNNEL_FORWARD=5201=127.0.0.1:5201 HERSE_LOG=warn \
    ip netns exec "$GW" "$1" -c "$W/herse.toml" serve 2>> "$W/herse.log" &)
  sleep 1
  HERSE_PID=$(ingw pgrep -f "$1 -c" | head -1)
}
stop_herse() {
  kill -TERM "$HERSE_PID"
  while kill -0 "$HERSE_PID" 2>/dev/null; do sleep 0.1; done
}
start_herse "$W/herse"

# wireguard-go on both ends for (b).
WSK=$(wg genkey); GWK=$(wg genkey)
cat > "$W/$IFW.conf" <<CFG
[Interface]
PrivateKey = $WSK
Address = 10.230.0.2/32
[Peer]
PublicKey = $(echo "$GWK" | wg pubkey)
Endpoint = 10.220.0.1:51820
AllowedIPs = 10.230.0.1/32
CFG
cat > "$W/$IFG.conf" <<CFG
[Interface]
PrivateKey = $GWK
Address = 10.230.0.1/32
ListenPort = 51820
[Peer]
PublicKey = $(echo "$WSK" | wg pubkey)
AllowedIPs = 10.230.0.2/32
CFG
inws wg-quick up "$W/$IFW.conf" 2>/dev/null
ingw wg-quick up "$W/$IFG.conf" 2>/dev/null
inws wg-quick up "$W/$IFH.conf" 2>/dev/null
WGGO_PID=$(pgrep -f "wireguard-go $IFG" | head -1)

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
KNOWN="$W/known_hosts"
echo "@cert-authority tgt $(cat "$W/data/host_ca.pub")" > "$KNOWN"
echo "10.77.0.1 $(cat "$W/data/host_key.pub")" >> "$KNOWN"
for a in 10.220.0.1 10.230.0.1; do echo "$a $(cat "$W/host.pub")" >> "$KNOWN"; done
# -J passes -F to the jump leg but not -o: every option lives in the file.
cat > "$W/ssh_config" <<CFG
Host *
  IdentityFile $W/user
  IdentitiesOnly yes
  UserKnownHostsFile $KNOWN
  StrictHostKeyChecking yes
  Ciphers chacha20-poly1305@openssh.com
  KexAlgorithms curve25519-sha256
  BatchMode yes
CFG
SSHOPTS=(-F "$W/ssh_config")
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$W/payload"

# MB/s of SIZE_MIB through ssh ARGS…: KIND `cat` pipes it into `cat > /dev/null`,
# `sftp` puts it to /dev/null.
transfer_mbs() {
  local kind=$1 s e
  shift
  s=$(date +%s.%N)
  if [ "$kind" = cat ]; then
    inws ssh "${SSHOPTS[@]}" "$@" 'cat > /dev/null' < "$W/payload"
  else
    echo "put $W/payload /dev/null" | inws sftp -q "${SSHOPTS[@]}" -b - "$@" > /dev/null
  fi
  e=$(date +%s.%N)
  python3 -c "print(round($SIZE_MIB*1.048576/($e-$s)))"
}

printf '| path | iperf3 Mbit/s | gateway tunnel CPU-s/GiB (iperf3) | ssh MB/s |\n|---|---|---|---|\n'
for path in veth wg-go herse; do
  case $path in
    veth) addr=10.220.0.1; pid="";;
    wg-go) addr=10.230.0.1; pid=$WGGO_PID;;
    herse) addr=10.77.0.1; pid=$HERSE_PID;;
  esac
  t0=0; [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  json=$(inws iperf3 -c "$addr" -t "$SECONDS_" -J)
  t1=0; [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
  read -r mbit bytes < <(python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; print(round(e["bits_per_second"]/1e6), e["bytes"])' <<<"$json")
  cpu="-"
  [ -n "$pid" ] && cpu=$(python3 -c "print(f'{($t1-$t0)/$HZ/($bytes/2**30):.2f}')")
  if [ "$path" = herse ]; then
    dest=(-J "alice@10.77.0.1" "$LOGIN@tgt")
    # The one second-factor proof, outside the measurement (-o: the first value wins).
    inws env SSH_ASKPASS="$W/askpass" SSH_ASKPASS_REQUIRE=force DISPLAY=:0 \
      ssh -o BatchMode=no -o KbdInteractiveAuthentication=yes "${SSHOPTS[@]}" "${dest[@]}" true < /dev/null
  else
    dest=("$LOGIN@$addr")
  fi
  mbs=$(transfer_mbs cat "${dest[@]}")
  printf '| %s | %s | %s | %s |\n' "$path" "$mbit" "$cpu" "$mbs"
done

[ "$RROUNDS" -gt 0 ] || exit 0
# Recording's cost through the tunnel. A restarted gateway greets the workstation at
# once (it shook hands moments ago), and the role remembers the second factor.
: > "$W/rec-rows"
for round in $(seq "$RROUNDS"); do
  for build in recorded null; do
    bin="$W/herse"; [ "$build" = null ] && bin="$W/herse-null"
    stop_herse; start_herse "$bin"
    for form in hop jump; do
      for kind in cat sftp; do
        dest=(-J "alice@10.77.0.1" "$LOGIN@tgt")
        [ "$form" = hop ] && dest=("alice+$LOGIN+tgt@10.77.0.1")
        t0=$(cpu_ticks "$HERSE_PID")
        mbs=$(transfer_mbs "$kind" "${dest[@]}")
        t1=$(cpu_ticks "$HERSE_PID")
        echo "$form-$kind $build $mbs $(python3 -c "print(($t1-$t0)/$HZ/($SIZE_MIB/1024))")" >> "$W/rec-rows"
        echo "round $round/$RROUNDS: $build $form $kind $mbs MB/s" >&2
      done
    done
  done
done
echo
python3 - "$W/rec-rows" "$RROUNDS" "$SIZE_MIB" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    form, build, mbs, cpu = line.split()
    rows.setdefault((form, build), []).append((float(mbs), float(cpu)))
print(f"Recording through the tunnel, {sys.argv[3]} MiB per run, {sys.argv[2]} rounds, medians "
      "(ratio: median of each round's recorded/null)")
print()
print("| form, transfer | recorded MB/s | null MB/s | ratio | gateway CPU-s/GiB recorded / null |")
print("|---|---|---|---|---|")
for form in ("hop-cat", "hop-sftp", "jump-cat", "jump-sftp"):
    rec, null = rows[(form, "recorded")], rows[(form, "null")]
    ratio = statistics.median(r[0] / n[0] for r, n in zip(rec, null))
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    print(f"| herse-{form.replace('-', ', ', 1)} | {med(rec, 0):.0f} | {med(null, 0):.0f} | {ratio:.2f} | "
          f"{med(rec, 1):.2f} / {med(null, 1):.2f} |")
PY
