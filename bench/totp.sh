# Sourced by the benchmarks: TOTP for a bench user, enrolled the way an authenticator app
# confirms it, and an SSH_ASKPASS program that answers Herse's prompt with the next step's
# code (valid now: one step of skew; the enrolment used this one).
totp_py='import base64,hashlib,hmac,struct,sys,time,urllib.parse as u
def code(secret, step):
    k = base64.b32decode(secret + "=" * (-len(secret) % 8))
    h = hmac.new(k, struct.pack(">Q", step), hashlib.sha1).digest(); o = h[-1] & 15
    return "%06d" % ((struct.unpack(">I", h[o:o+4])[0] & 0x7FFFFFFF) % 1000000)'

# totp_enrol HERSECTL CONFIG USER: enrol and print the secret.
totp_enrol() {
  python3 -c "$totp_py
import subprocess
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
uri = p.stdout.readline().strip()
secret = u.parse_qs(u.urlparse(uri).query)['secret'][0]
p.stdin.write(code(secret, int(time.time()) // 30) + '\n'); p.stdin.close()
assert p.wait() == 0, 'enrolment failed'
print(secret)" "$1" -c "$2" users totp enroll "$3"
}

# totp_askpass FILE SECRET: write the askpass program for one user.
totp_askpass() {
  cat > "$1" <<PY
#!/usr/bin/env python3
$totp_py
print(code("$2", int(time.time()) // 30 + 1))
PY
  chmod +x "$1"
}
