#!/usr/bin/env bash
# Side-by-side benchmark of the gateway spine against OpenSSH, in one run, same target,
# same key exchange and cipher on every path:
#   direct      ssh -> sshd target
#   jump        ssh -J (OpenSSH sshd jump host) -> target
#   herse-jump  ssh -J (herse) -> target            (ProxyJump form)
#   herse-hop   ssh alice+login+target@herse         (single-hop form)
# Figures: connection setup (median/p90 of N `ssh ... true`), throughput of SIZE_MIB piped
# into `cat > /dev/null`, and CPU seconds per GiB of the client, the middle process
# (jump sshd or herse) and the target sshd, read from /proc (utime+stime of the process
# trees), because wall time on a shared 2-core machine is noisy.
#
# Usage: bench/spine.sh [--cipher chacha20-poly1305@openssh.com] [--size-mib 1024] [--setups 30] [--download]
# --download moves the data the other way: the target's `head -c` into the client's
# /dev/null (the target's output, through the gateway's upstream window).
# --cipher default sets no cipher anywhere: what stock OpenSSH gets (chacha20 from the
# client; Herse picks its own upstream cipher, AES-GCM on AES hardware).
# HERSE_BENCH_PERF=FILE also records a perf profile of the gateway during the single-hop
# transfer (HERSE_BENCH_PERF_PATH=herse-jump: during the ProxyJump-form one).
# Needs root (creates a throwaway login), OpenSSH server and client, and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
CIPHER=chacha20-poly1305@openssh.com
SIZE_MIB=1024
SETUPS=30
DOWNLOAD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cipher) CIPHER=$2; shift 2;;
    --size-mib) SIZE_MIB=$2; shift 2;;
    --setups) SETUPS=$2; shift 2;;
    --download) DOWNLOAD=1; shift;;
    -h|--help) sed -n '2,20p' "$0"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
KEX=curve25519-sha256
CIPHER_LINE="Ciphers $CIPHER"
[ "$CIPHER" = default ] && CIPHER_LINE=""
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/herse/target}"
cargo build --release --quiet -p herse-gateway -p hersectl
BIN="$CARGO_TARGET_DIR/release"
HERSE_BIN=${HERSE_BIN:-$BIN/herse}
# PATHS limits the paths measured (default: all four).
# HERSE_BENCH_SSH_LINES adds lines to the gateway's [ssh] section, e.g.
# 'ciphers = ["aes128-gcm@openssh.com"]'.
PATHS=${PATHS:-"direct jump herse-jump herse-hop"}
scripts/install-test-deps
LOGIN=hbench
id "$LOGIN" >/dev/null 2>&1 || useradd -m -p '*' -s /bin/sh "$LOGIN"

W=$(mktemp -d /tmp/herse-bench.XXXXXX)
pids=()
# CPU accounting per process tree with cgroup v1 cpuacct (children inherit the group,
# and a process's time is counted even before its parent reaps it).
CG=/sys/fs/cgroup/cpuacct
cg_new() { mkdir -p "$CG/herse-bench-$1"; }
cg_add() { echo "$2" > "$CG/herse-bench-$1/cgroup.procs"; }
cg_ns() { cat "$CG/herse-bench-$1/cpuacct.usage"; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for g in target jump herse; do rmdir "$CG/herse-bench-$g" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Gateway state.
cat > "$W/herse.toml" <<CFG
data_dir = "data"
master_key_file = "secrets/master.key"
policy = "policy.toml"
[ssh]
listen = ["127.0.0.1:0"]
${HERSE_BENCH_SSH_LINES:-}
CFG
: > "$W/policy.toml"
"$HERSE_BIN" -c "$W/herse.toml" init --json > /dev/null

# Target and OpenSSH jump host.
ssh-keygen -q -t ed25519 -N '' -f "$W/target_host"
ssh-keygen -q -t ed25519 -N '' -f "$W/jump_host"
ssh-keygen -q -t ed25519 -N '' -f "$W/user"
TPORT=$(port); JPORT=$(port)
# The target trusts Herse's user CA and the bench user's key (for the direct and jump paths).
mkdir -p "$W/ak"; cp "$W/user.pub" "$W/ak/authorized_keys"
# sshd reads AuthorizedKeysFile as the login user.
chmod 755 "$W" "$W/ak"; chmod 644 "$W/ak/authorized_keys"
common="PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel ERROR
AllowTcpForwarding yes
$CIPHER_LINE
KexAlgorithms $KEX"
printf 'Port %s\nListenAddress 127.0.0.1\nHostKey %s\nTrustedUserCAKeys %s\nAuthorizedKeysFile %s\n%s\n' \
  "$TPORT" "$W/target_host" "$W/data/user_ca.pub" "$W/ak/authorized_keys" "$common" > "$W/target.conf"
printf 'Port %s\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\n%s\n' \
  "$JPORT" "$W/jump_host" "$W/ak/authorized_keys" "$common" > "$W/jump.conf"
mkdir -p /run/sshd
for g in target jump herse; do cg_new $g; done
/usr/sbin/sshd -D -f "$W/target.conf" & TPID=$!; pids+=($TPID); cg_add target $TPID
/usr/sbin/sshd -D -f "$W/jump.conf" & JPID=$!; pids+=($JPID); cg_add jump $JPID

cat > "$W/policy.toml" <<POL
[tiers.bench.targets.t1]
address = "127.0.0.1"
port = $TPORT
host_keys = ["$(cat "$W/target_host.pub")"]
[roles.bench]
tiers = ["bench"]
logins = ["$LOGIN"]
operations = ["shell", "exec", "sftp-read", "sftp-write"]
max_session = "8h"
idle_timeout = "1h"
mfa_remember = "1h"
POL
"$HERSE_BIN" -c "$W/herse.toml" serve 2> "$W/herse.log" & HPID=$!; pids+=($HPID); cg_add herse $HPID
for _ in $(seq 100); do grep -q "SSH listening on" "$W/herse.log" && break; sleep 0.1; done
HPORT=$(grep -o 'SSH listening on .*' "$W/herse.log" | head -1 | sed 's/.*://')
"$BIN/hersectl" -c "$W/herse.toml" users add alice --key "$W/user.pub" > /dev/null
"$BIN/hersectl" -c "$W/herse.toml" roles bind alice bench > /dev/null
# Every session proves a second factor: enrol TOTP for alice (confirmed like an
# authenticator app), and prove it once below; the role remembers the proof for this
# workstation for an hour, so the measured logins are key-only, like OpenSSH's.
. bench/totp.sh
SECRET=$(totp_enrol "$BIN/hersectl" "$W/herse.toml" alice)
totp_askpass "$W/askpass" "$SECRET"

{
  echo "@cert-authority t1 $(cat "$W/data/host_ca.pub")"
  echo "[127.0.0.1]:$TPORT $(cat "$W/target_host.pub")"
  echo "[127.0.0.1]:$JPORT $(cat "$W/jump_host.pub")"
  echo "[127.0.0.1]:$HPORT $(cat "$W/data/host_key.pub")"
} > "$W/known_hosts"
cat > "$W/ssh_config" <<SSH
Host direct
  HostName 127.0.0.1
  Port $TPORT
  User $LOGIN
Host jumphost
  HostName 127.0.0.1
  Port $JPORT
  User $LOGIN
Host viajump
  HostName 127.0.0.1
  Port $TPORT
  User $LOGIN
  ProxyJump jumphost
Host herse
  HostName 127.0.0.1
  Port $HPORT
  User alice
Host t1
  User $LOGIN
  ProxyJump herse
Host *
  IdentityFile $W/user
  IdentitiesOnly yes
  UserKnownHostsFile $W/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  $CIPHER_LINE
  KexAlgorithms $KEX
  LogLevel ERROR
SSH

# The one second-factor proof (through the askpass), outside the measurements.
SSH_ASKPASS="$W/askpass" SSH_ASKPASS_REQUIRE=force DISPLAY=:0 \
  ssh -F "$W/ssh_config" -o BatchMode=no -o KbdInteractiveAuthentication=yes t1 true < /dev/null

declare -A DEST=([direct]="direct" [jump]="viajump" [herse-jump]="t1" [herse-hop]="alice+$LOGIN+t1@herse")
declare -A MIDDLE=([direct]="" [jump]="jump" [herse-jump]="herse" [herse-hop]="herse")

printf '| path | setup median ms | setup p90 ms | throughput MB/s | client CPU-s/GiB | middle CPU-s/GiB | target CPU-s/GiB |\n'
printf '|---|---|---|---|---|---|---|\n'
for path in $PATHS; do
  dest=${DEST[$path]}
  times=()
  for _ in $(seq "$SETUPS"); do
    s=$(date +%s%N); ssh -F "$W/ssh_config" "$dest" true; e=$(date +%s%N)
    times+=($(( (e - s) / 1000000 )))
  done
  sorted=($(printf '%s\n' "${times[@]}" | sort -n))
  med=${sorted[$((SETUPS / 2))]}; p90=${sorted[$((SETUPS * 9 / 10))]}
  mid=${MIDDLE[$path]}
  t0=$(cg_ns target); m0=0; [ -n "$mid" ] && m0=$(cg_ns "$mid")
  perf_pid=""
  if [ -n "${HERSE_BENCH_PERF:-}" ] && [ "$path" = "${HERSE_BENCH_PERF_PATH:-herse-hop}" ]; then
    # Optional profile of the gateway during the single-hop transfer (the header above).
    # HERSE_BENCH_PERF_ARGS replaces the profile, e.g. "stat -e syscalls:sys_enter_*".
    perf ${HERSE_BENCH_PERF_ARGS:-record -q -F 999 -g -e cpu-clock} -p "$HPID" -o "$HERSE_BENCH_PERF" 2>/dev/null & perf_pid=$!
    sleep 0.3
  fi
  s=$(date +%s%N)
  /usr/bin/time -f '%U %S' -o "$W/client.time" \
    bash -c "$(if [ "$DOWNLOAD" = 1 ]; then
      echo "ssh -F '$W/ssh_config' '$dest' 'head -c ${SIZE_MIB}M /dev/zero' > /dev/null"
    else
      echo "head -c ${SIZE_MIB}M /dev/zero | ssh -F '$W/ssh_config' '$dest' 'cat > /dev/null'"
    fi)"
  e=$(date +%s%N)
  [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  sleep 0.5
  t1=$(cg_ns target); m1=0; [ -n "$mid" ] && m1=$(cg_ns "$mid")
  secs=$(echo "($e - $s) / 1000000000" | bc -l)
  gib=$(echo "$SIZE_MIB / 1024" | bc -l)
  mbps=$(echo "$SIZE_MIB * 1.048576 / $secs" | bc -l)
  client=$(awk '{print $1+$2}' "$W/client.time")
  printf '| %s | %d | %d | %.0f | %.2f | %s | %.2f |\n' "$path" "$med" "$p90" "$mbps" \
    "$(echo "$client / $gib" | bc -l)" \
    "$( [ -n "$mid" ] && printf '%.2f' "$(echo "($m1 - $m0) / 1000000000 / $gib" | bc -l)" || echo '-')" \
    "$(echo "($t1 - $t0) / 1000000000 / $gib" | bc -l)"
done
