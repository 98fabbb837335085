#!/usr/bin/env bash
# Added latency of the second factor on connection setup, in one run, same gateway and
# target: `ssh -J USER@herse deploy@tgt true` (ProxyJump form)
#   key-only   a recent TOTP proof from this workstation covers the login (mfa_remember):
#              public key, no prompt
#   key+totp   a tier that always wants a fresh factor: public key, then the TOTP code
#              typed by an SSH_ASKPASS script (one user per login: a code is good once)
# Figures: median and p90 of N logins each.
# Usage: bench/mfa.sh [--logins 20]
set -euo pipefail
cd "$(dirname "$0")/.."
N=20
while [ $# -gt 0 ]; do
  case "$1" in
    --logins) N=$2; shift 2;;
    -h|--help) sed -n '2,10p' "$0"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/herse/target}"
scripts/install-test-deps
cargo build --release --quiet -p herse-gateway -p hersectl
BIN="$CARGO_TARGET_DIR/release"
LOGIN=hbench
id "$LOGIN" >/dev/null 2>&1 || useradd -m -p '*' -s /bin/sh "$LOGIN"
W=$(mktemp -d /tmp/herse-mfabench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GPORT=$(port); TPORT=$(port)
cat > "$W/herse.toml" <<CFG
data_dir = "data"
master_key_file = "secrets/master.key"
policy = "policy.toml"
[ssh]
listen = ["127.0.0.1:$GPORT"]
CFG
: > "$W/policy.toml"
"$BIN/herse" -c "$W/herse.toml" init --json > /dev/null
ssh-keygen -q -t ed25519 -N '' -f "$W/host"; ssh-keygen -q -t ed25519 -N '' -f "$W/user"
chmod 755 "$W"
mkdir -p /run/sshd
cat > "$W/sshd_config" <<CFG
Port $TPORT
ListenAddress 127.0.0.1
HostKey $W/host
TrustedUserCAKeys $W/data/user_ca.pub
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel ERROR
CFG
/usr/sbin/sshd -D -f "$W/sshd_config" -E "$W/sshd.log" & pids+=($!)
cat > "$W/policy.toml" <<POL
[tiers.remembered.targets.tgt]
address = "127.0.0.1"
port = $TPORT
host_keys = ["$(cat "$W/host.pub")"]
[tiers.fresh]
mfa_always_fresh = true
[tiers.fresh.targets.tgt-fresh]
address = "127.0.0.1"
port = $TPORT
host_keys = ["$(cat "$W/host.pub")"]
[roles.bench]
tiers = ["remembered", "fresh"]
logins = ["$LOGIN"]
operations = ["exec"]
max_session = "1h"
idle_timeout = "1h"
mfa_remember = "1h"
POL
HERSE_LOG=warn "$BIN/herse" -c "$W/herse.toml" serve 2> "$W/herse.log" & pids+=($!)
for _ in $(seq 50); do grep -q "SSH listening" "$W/herse.log" 2>/dev/null && break; sleep 0.1; done
CTL() { "$BIN/hersectl" -c "$W/herse.toml" "$@"; }

# N users, each with a TOTP secret enrolled the way an authenticator app would confirm it.
totp_py='import base64,hashlib,hmac,struct,sys,time,urllib.parse as u
def code(secret, step):
    k = base64.b32decode(secret + "=" * (-len(secret) % 8))
    h = hmac.new(k, struct.pack(">Q", step), hashlib.sha1).digest(); o = h[-1] & 15
    return "%06d" % ((struct.unpack(">I", h[o:o+4])[0] & 0x7FFFFFFF) % 1000000)'
echo "{" > "$W/secrets.py.in"
for i in $(seq "$N"); do
  u=u$i
  ssh-keygen -q -t ed25519 -N '' -f "$W/key_$u"
  CTL users add "$u" --key "$W/key_$u.pub" >/dev/null
  CTL roles bind "$u" bench >/dev/null
  secret=$(python3 -c "$totp_py
import subprocess
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
uri = p.stdout.readline().strip()
secret = u.parse_qs(u.urlparse(uri).query)['secret'][0]
p.stdin.write(code(secret, int(time.time()) // 30) + '\\n'); p.stdin.close()
assert p.wait() == 0, 'enrolment failed'
print(secret)" "$BIN/hersectl" -c "$W/herse.toml" users totp enroll "$u")
  echo "  '$u': '$secret'," >> "$W/secrets.py.in"
done
echo "}" >> "$W/secrets.py.in"
# The askpass: the next step's code (valid now, one step of skew; enrolment used this one).
cat > "$W/askpass" <<PY
#!/usr/bin/env python3
$totp_py
S = $(cat "$W/secrets.py.in")
user = sys.argv[1].rsplit(" for ", 1)[-1].strip().rstrip(":").strip()
print(code(S[user], int(time.time()) // 30 + 1) if user in S else "")
PY
chmod +x "$W/askpass"
KNOWN="$W/known_hosts"
echo "@cert-authority tgt,tgt-fresh $(cat "$W/data/host_ca.pub")" > "$KNOWN"
echo "[127.0.0.1]:$GPORT $(cat "$W/data/host_key.pub")" >> "$KNOWN"
# One client configuration per user (its key serves both legs of the jump).
for i in $(seq "$N"); do
  cat > "$W/ssh_config_u$i" <<CFG
Host gw
  HostName 127.0.0.1
  Port $GPORT
  User u$i
Host *
  IdentityFile $W/key_u$i
  IdentitiesOnly yes
  UserKnownHostsFile $KNOWN
  StrictHostKeyChecking yes
  KexAlgorithms curve25519-sha256
  BatchMode no
CFG
done
export SSH_ASKPASS="$W/askpass" SSH_ASKPASS_REQUIRE=force DISPLAY=:0
login() { # user target
  ssh -F "$W/ssh_config_$1" -J gw -l "$LOGIN" "$2" true < /dev/null
}
ms() { python3 -c 'import time; print(int(time.time()*1000))'; }
stats() { sort -n | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p=a[int(NR*0.9+0.999)]; printf "%d | %d", m, p}'; }
# Each user proves a factor once on the fresh tier (that also records the proof the
# remembered tier accepts), timing those logins; then key-only logins reuse the proof.
: > "$W/totp.ms"; : > "$W/key.ms"
for i in $(seq "$N"); do
  s=$(ms); login "u$i" tgt-fresh; e=$(ms); echo $((e - s)) >> "$W/totp.ms"
done
for i in $(seq "$N"); do
  s=$(ms); login "u$i" tgt; e=$(ms); echo $((e - s)) >> "$W/key.ms"
done
printf '| path | setup median ms | setup p90 ms |\n|---|---|---|\n'
printf '| key only (proof remembered) | %s |\n' "$(stats < "$W/key.ms")"
printf '| key + TOTP (script) | %s |\n' "$(stats < "$W/totp.ms")"
