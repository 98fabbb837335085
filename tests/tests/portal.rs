//! The web portal end to end with curl: password + TOTP login, session cookie flags,
//! same-origin and CSRF checks, the password policy, lockout and unlock.

use std::process::{Command, Stdio};

use herse_e2e::*;

struct Portal {
    base: String,
    jar: std::path::PathBuf,
}

impl Portal {
    /// `curl -i` (headers and body) with this portal's cookie jar.
    fn curl(&self, args: &[&str]) -> String {
        let out = run(Command::new("curl")
            .args(["-sk", "-i", "--max-time", "10", "-c"])
            .arg(&self.jar)
            .arg("-b")
            .arg(&self.jar)
            .args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn post(&self, path: &str, origin: Option<&str>, fields: &[(&str, &str)]) -> String {
        let url = format!("{}{path}", self.base);
        let mut args: Vec<String> = vec!["-X".into(), "POST".into(), url];
        if let Some(o) = origin {
            args.push("-H".into());
            args.push(format!("Origin: {o}"));
        }
        for (k, v) in fields {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.curl(&refs)
    }

    fn login(&self, user: &str, password: &str, code: &str) -> String {
        self.post(
            "/login",
            Some(&self.base),
            &[("user", user), ("password", password), ("code", code)],
        )
    }
}

/// The text of `hay` between the first `start` and the next `end`.
fn between(hay: &str, start: &str, end: &str) -> String {
    hay.split(start)
        .nth(1)
        .and_then(|s| s.split(end).next())
        .unwrap_or_else(|| panic!("no {start:?} in: {hay}"))
        .to_owned()
}

fn status(resp: &str) -> u16 {
    resp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn set_password(gw: &Gateway, user: &str, pw: &str) -> std::process::Output {
    use std::io::Write;
    let mut c = gw
        .ctl()
        .args(["users", "password", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{pw}").unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn portal_login_cookies_csrf_policy_and_lockout() {
    let dir = TempDir::new("portal");
    let d = dir.0.clone();
    std::fs::write(d.join("policy.toml"), "").unwrap();
    let config = Gateway::init(&d);
    let port = free_port();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("[web]\nlisten = [\"127.0.0.1:{port}\"]\n"));
    std::fs::write(&config, text).unwrap();
    let gw = Gateway::start(&d, &config);
    gw.wait_line("portal listening on", std::time::Duration::from_secs(10));
    for u in ["alice", "bob"] {
        ok(gw.ctl().args(["users", "add", u]));
    }
    let alice_totp = enrol_totp(&config, "alice");
    let bob_totp = enrol_totp(&config, "bob");

    // The password policy refuses weak passwords with the reason.
    for (weak, why) in [
        ("short1A!", "too short"),
        ("Password2024!", "too common"),
        ("alllowercaseletters", "too simple"),
        ("Alice-in-Wonderland-1", "user name"),
    ] {
        let out = set_password(&gw, "alice", weak);
        assert_eq!(out.status.code(), Some(1), "{weak} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{weak}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let alice_pw = "Correct-Horse-Battery-9";
    assert!(set_password(&gw, "alice", alice_pw).status.success());
    assert!(set_password(&gw, "bob", "Another-Good-Passphrase-4").status.success());

    let p = Portal {
        base: format!("https://127.0.0.1:{port}"),
        jar: d.join("cookies"),
    };
    // A form posted from another site is refused before anything is checked.
    let r = p.post(
        "/login",
        Some("https://evil.example"),
        &[
            ("user", "alice"),
            ("password", alice_pw),
            ("code", &totp_next(&alice_totp)),
        ],
    );
    assert_eq!(status(&r), 403, "{r}");
    assert!(r.contains("cross-site request refused"));
    let r = p.post(
        "/login",
        None,
        &[("user", "alice"), ("password", alice_pw), ("code", "1")],
    );
    assert_eq!(status(&r), 403, "no Origin and no Sec-Fetch-Site: {r}");

    // Password and second factor: a session cookie that scripts and other sites never see.
    let r = p.login("alice", alice_pw, &totp_next(&alice_totp));
    assert_eq!(status(&r), 303, "{r}");
    let cookie = r
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie:"))
        .unwrap()
        .to_owned();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Max-Age=900"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let home = p.curl(&[&format!("{}/", p.base)]);
    assert!(home.contains("Signed in as <b>alice</b>"), "{home}");
    let csrf = between(&home, "name=\"csrf\" value=\"", "\"");

    // With the session cookie but from another site, or without the token: refused.
    let new_pw = "Brand-New-Passphrase-77";
    let r = p.post(
        "/password",
        Some("https://evil.example"),
        &[("csrf", &csrf), ("current", alice_pw), ("new", new_pw)],
    );
    assert_eq!(status(&r), 403, "{r}");
    let r = p.post(
        "/password",
        Some(&p.base),
        &[("csrf", "forged"), ("current", alice_pw), ("new", new_pw)],
    );
    assert_eq!(status(&r), 403, "{r}");
    assert!(r.contains("CSRF"));
    // The policy applies on the portal too, with the reason shown.
    let r = p.post(
        "/password",
        Some(&p.base),
        &[("csrf", &csrf), ("current", alice_pw), ("new", "tooshort")],
    );
    assert_eq!(status(&r), 400, "{r}");
    assert!(r.contains("too short"), "{r}");
    let r = p.post(
        "/password",
        Some(&p.base),
        &[("csrf", &csrf), ("current", alice_pw), ("new", new_pw)],
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("Your password was changed"));
    // Not again within `passwords.min_age` (a day) of one's own change, or five changes
    // in a row would flush the history.
    let r = p.post(
        "/password",
        Some(&p.base),
        &[
            ("csrf", &csrf),
            ("current", new_pw),
            ("new", "Third-Passphrase-Entirely-9"),
        ],
    );
    assert_eq!(status(&r), 400, "{r}");
    assert!(r.contains("you changed your password less than 1day ago"), "{r}");
    // A day later (here: the change moved back a day), changing back would still renew
    // the old secret: refused while it is in the history.
    sqlite(
        &gw.data().join("herse.db"),
        "UPDATE users SET password_self_set_at = password_self_set_at - 86400000000 WHERE name = 'alice'",
    );
    let change_back = || {
        p.post(
            "/password",
            Some(&p.base),
            &[("csrf", &csrf), ("current", new_pw), ("new", alice_pw)],
        )
    };
    let r = change_back();
    assert_eq!(status(&r), 400, "{r}");
    assert!(r.contains("one of your last 5 passwords"), "{r}");
    // Each such try costs argon2id checks: they count like failed logins and lock.
    for _ in 0..4 {
        assert_eq!(status(&change_back()), 400);
    }
    let r = change_back();
    assert_eq!(status(&r), 403, "{r}");
    assert!(r.contains("Account locked until"), "{r}");
    ok(gw.ctl().args(["users", "unlock", "alice"]));

    // A new authenticator app, set up on the portal (after a lost phone, say): the page
    // gives the otpauth URI, the first code confirms it, and only the new one counts.
    let r = p.post("/totp/start", Some(&p.base), &[("csrf", &csrf)]);
    assert_eq!(status(&r), 200, "{r}");
    let new_uri = between(&r, "<code id=\"uri\">", "</code>").replace("&amp;", "&");
    let id = between(&r, "name=\"id\" value=\"", "\"");
    let r = p.post(
        "/totp/confirm",
        Some(&p.base),
        &[("csrf", &csrf), ("id", &id), ("code", "000000")],
    );
    assert_eq!(status(&r), 400, "a wrong confirmation code: {r}");
    let r = p.post("/totp/start", Some(&p.base), &[("csrf", &csrf)]);
    let new_uri2 = between(&r, "<code id=\"uri\">", "</code>").replace("&amp;", "&");
    assert_ne!(new_uri, new_uri2, "each set-up has its own secret");
    let id = between(&r, "name=\"id\" value=\"", "\"");
    let r = p.post(
        "/totp/confirm",
        Some(&p.base),
        &[("csrf", &csrf), ("id", &id), ("code", &totp_now(&new_uri2))],
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("Authenticator replaced"));
    let fresh = Portal {
        base: p.base.clone(),
        jar: d.join("cookies-fresh"),
    };
    let r = fresh.login("alice", new_pw, &totp_next(&alice_totp));
    assert_eq!(status(&r), 401, "the old authenticator still works: {r}");
    let r = fresh.login("alice", new_pw, &totp_next(&new_uri2));
    assert_eq!(status(&r), 303, "the new authenticator: {r}");

    // Lockout: five failures in a row lock the account, even for the right password.
    let bob = Portal {
        base: p.base.clone(),
        jar: d.join("cookies-bob"),
    };
    for _ in 0..5 {
        let r = bob.login("bob", "Wrong-Passphrase-000", &totp_now(&bob_totp));
        assert_eq!(status(&r), 401, "{r}");
        assert!(r.contains("Login failed."));
    }
    let r = bob.login("bob", "Another-Good-Passphrase-4", &totp_next(&bob_totp));
    assert_eq!(status(&r), 403, "{r}");
    assert!(r.contains("Account locked"), "{r}");
    let events = json_lines(&ok(gw.ctl().args(["audit", "list", "--json"])));
    assert!(events
        .iter()
        .any(|e| e["kind"] == "web.login.lockout" && e["severity"] == "alert" && e["user"] == "bob"));
    assert!(events
        .iter()
        .any(|e| e["kind"] == "web.login.failure" && e["user"] == "bob" && e["detail"] == "wrong password"));
    assert!(events
        .iter()
        .any(|e| e["kind"] == "web.login.success" && e["user"] == "alice"));
    ok(gw.ctl().args(["users", "unlock", "bob"]));
    let r = bob.login("bob", "Another-Good-Passphrase-4", &totp_next(&bob_totp));
    assert_eq!(status(&r), 303, "after unlock: {r}");

    // The API: password and second factor give a bearer token (no cookie, no CSRF
    // needed: a browser cannot be made to send it); a cookie is not a token.
    let api = |args: &[&str]| {
        let out = run(Command::new("curl").args(["-sk", "--max-time", "10"]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(gw.ctl().args(["users", "add", "carol"]));
    let carol_totp = enrol_totp(&config, "carol");
    assert!(set_password(&gw, "carol", "Third-Good-Passphrase-8").status.success());
    let login_json = |pw: &str, code: &str| format!("{{\"user\":\"carol\",\"password\":\"{pw}\",\"code\":\"{code}\"}}");
    let api_login = |body: &str| {
        api(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            &format!("{}/api/login", p.base),
        ])
    };
    let wrong = api_login(&login_json("nope-nope-nope-1A", "000000"));
    assert!(wrong.contains("Login failed"), "{wrong}");
    let token_resp = api_login(&login_json("Third-Good-Passphrase-8", &totp_next(&carol_totp)));
    let v: serde_json::Value = serde_json::from_str(&token_resp).unwrap_or_else(|_| panic!("{token_resp}"));
    let token = v["token"].as_str().unwrap_or_else(|| panic!("{token_resp}")).to_owned();
    let who = api(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{}/api/whoami", p.base),
    ]);
    assert!(who.contains("\"user\":\"carol\"") && who.contains("@loopback"), "{who}");
    let who = api(&["-H", "Authorization: Bearer forged", &format!("{}/api/whoami", p.base)]);
    assert!(who.contains("missing, expired or foreign token"), "{who}");
    let audit = json_lines(&ok(gw.ctl().args(["audit", "list", "--json"])));
    assert!(audit
        .iter()
        .any(|e| e["kind"] == "api.login.success" && e["user"] == "carol"));

    // Logging out ends the session on the server, not only in the browser.
    let r = p.post("/logout", Some(&p.base), &[("csrf", &csrf)]);
    assert_eq!(status(&r), 303, "{r}");
    let home = p.curl(&[&format!("{}/", p.base)]);
    assert_eq!(status(&home), 303, "{home}");
}

#[test]
fn an_expired_password_must_be_changed_first() {
    let dir = TempDir::new("portal-expired");
    let d = dir.0.clone();
    std::fs::write(d.join("policy.toml"), "").unwrap();
    let config = Gateway::init(&d);
    let port = free_port();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[web]\nlisten = [\"127.0.0.1:{port}\"]\n[passwords]\nmax_age = \"3s\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let gw = Gateway::start(&d, &config);
    gw.wait_line("portal listening on", std::time::Duration::from_secs(10));
    ok(gw.ctl().args(["users", "add", "dave"]));
    let totp = enrol_totp(&config, "dave");
    let p = Portal {
        base: format!("https://127.0.0.1:{port}"),
        jar: d.join("cookies"),
    };
    // API logins here use recovery codes as the factor: the TOTP step is kept for the
    // portal login below.
    let codes = ok(gw.ctl().args(["users", "recovery-codes", "dave"]));
    let mut codes = codes
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(' '))
        .map(str::to_owned);
    let api_login = |code: &str| {
        p.curl(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &format!("{{\"user\":\"dave\",\"password\":\"Soon-Expired-Passphrase-5\",\"code\":\"{code}\"}}"),
            &format!("{}/api/login", p.base),
        ])
    };
    let whoami = |token: &str| {
        p.curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/api/whoami", p.base),
        ])
    };
    let set_at = std::time::Instant::now();
    assert!(set_password(&gw, "dave", "Soon-Expired-Passphrase-5").status.success());
    // A token taken while the password was valid...
    let r = api_login(&codes.next().unwrap());
    assert_eq!(status(&r), 200, "{r}");
    let token = between(&r, "\"token\":\"", "\"");
    let r = whoami(&token);
    assert!(r.contains("\"user\":\"dave\""), "{r}");
    std::thread::sleep(std::time::Duration::from_millis(3500).saturating_sub(set_at.elapsed()));
    // ...stops working when the password expires, as the portal does.
    let r = whoami(&token);
    assert_eq!(status(&r), 403, "{r}");
    assert!(r.contains("password has expired") && !r.contains("dave"), "{r}");
    // And no new token for an expired password.
    let r = api_login(&codes.next().unwrap());
    assert_eq!(status(&r), 403, "{r}");
    assert!(r.contains("password has expired") && !r.contains("token"), "{r}");
    let r = p.login("dave", "Soon-Expired-Passphrase-5", &totp_next(&totp));
    assert_eq!(status(&r), 303, "{r}");
    let home = p.curl(&[&format!("{}/", p.base)]);
    assert!(home.contains("Your password has expired"), "{home}");
    for path in ["/keys", "/totp"] {
        let r = p.curl(&[&format!("{}{path}", p.base)]);
        assert_eq!(status(&r), 403, "{path}: {r}");
    }
    let csrf = between(&home, "name=\"csrf\" value=\"", "\"");
    // Posts other than the password change are refused too, not only the pages.
    for (path, fields) in [
        ("/totp/start", vec![("csrf", csrf.as_str())]),
        (
            "/totp/confirm",
            vec![("csrf", csrf.as_str()), ("id", "x"), ("code", "123456")],
        ),
        ("/grants/g-none/deny", vec![("csrf", csrf.as_str()), ("reason", "no")]),
    ] {
        let r = p.post(path, Some(&p.base), &fields);
        assert_eq!(status(&r), 403, "{path}: {r}");
        assert!(r.contains("Change your password first"), "{path}: {r}");
    }
    // The same password again is not a renewal.
    let r = p.post(
        "/password",
        Some(&p.base),
        &[
            ("csrf", &csrf),
            ("current", "Soon-Expired-Passphrase-5"),
            ("new", "Soon-Expired-Passphrase-5"),
        ],
    );
    assert_eq!(status(&r), 400, "{r}");
    assert!(r.contains("the new password is the current one"), "{r}");
    let r = p.curl(&[&format!("{}/keys", p.base)]);
    assert_eq!(status(&r), 403, "still expired: {r}");
    let r = p.post(
        "/password",
        Some(&p.base),
        &[
            ("csrf", &csrf),
            ("current", "Soon-Expired-Passphrase-5"),
            ("new", "Fresh-Renewed-Passphrase-6"),
        ],
    );
    assert_eq!(status(&r), 200, "{r}");
    let r = p.curl(&[&format!("{}/keys", p.base)]);
    assert_eq!(status(&r), 200, "after the change: {r}");
}

/// A gateway that takes the connection and then never answers: remote `hersectl` gives
/// up after `--timeout` with a clear error, instead of hanging.
#[test]
fn hersectl_gives_up_on_a_gateway_that_does_not_answer() {
    use std::io::Write;
    let dir = TempDir::new("portal-hung");
    let d = dir.0.clone();
    let made = run(Command::new("openssl")
        .current_dir(&d)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-keyout",
            "k.pem",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ]));
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    // Connections queue in the backlog: TCP is accepted, TLS never answered.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let mut login = Command::new(bin("hersectl"))
        .env_remove("HERSE_CONFIG")
        .env("HERSE_SESSION", d.join("session.json"))
        .args([
            "--timeout",
            "2",
            "login",
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--ca",
        ])
        .arg(d.join("ca.pem"))
        .args(["--user", "dave"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(login.stdin.take().unwrap(), "Some-Passphrase-1\n123456").unwrap();
    let out = login.wait_with_output().unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no answer within 2s"), "{err}");
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    assert!(!d.join("session.json").exists());
    drop(hung);
    // A zero or absurd timeout is a usage error.
    let out = run(Command::new(bin("hersectl")).args(["--timeout", "0", "whoami"]));
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
