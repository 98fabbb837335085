//! Remote mode: `hersectl login` against the gateway's HTTPS control API (the portal, on
//! the tunnel address), a short-lived token saved with 0600 permissions, and calls
//! sent as JSON to `POST /api/v1/call`. The portal's certificate is pinned as the only
//! trust anchor (the file `herse init` writes, or the deployment's own certificate).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use zeroize::Zeroizing;

use crate::commands::{usage, Failure};

/// What `hersectl login` saves.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Saved {
    pub server: String,
    /// PEM of the portal certificate trusted for `server`.
    pub ca_pem: String,
    pub user: String,
    pub token: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("server", &self.server)
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `$HERSE_SESSION`, else `$XDG_CONFIG_HOME/herse/session.json`, else
/// `~/.config/herse/session.json`.
pub fn session_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HERSE_SESSION") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("herse").join("session.json"))
}

/// The saved login, if there is one.
pub fn saved() -> Result<Option<Saved>, Failure> {
    let Some(path) = session_path() else { return Ok(None) };
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| usage(format!("{}: not a hersectl session file: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(usage(format!("cannot read {}: {e}", path.display()))),
    }
}

fn save(s: &Saved) -> Result<PathBuf, Failure> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = session_path().ok_or_else(|| usage("no HOME: set HERSE_SESSION to a file path"))?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    // The mode above is filtered by the umask; make sure it is exactly 0600.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(serde_json::to_string_pretty(s)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// `hersectl logout`: revoke the token on the gateway, then remove the saved file. If the
/// gateway cannot be told, the file stays (so that a second try can revoke it) unless
/// `local` says to forget it here only.
pub async fn logout(local: bool) -> Result<(), Failure> {
    let Some(path) = session_path() else {
        println!("not logged in");
        return Ok(());
    };
    let s = match saved() {
        Ok(Some(s)) => Some(s),
        Ok(None) => {
            println!("not logged in");
            return Ok(());
        }
        // Not a session file we can read: nothing to revoke, only to remove.
        Err(_) => None,
    };
    let mut revoked = "";
    // Asked even when this clock says the token has expired: the gateway's may not.
    if let Some(s) = s.as_ref().filter(|_| !local) {
        let (status, v) = post(
            &s.server,
            &s.ca_pem,
            "/api/logout",
            Some(&s.token),
            &serde_json::json!({}),
        )
        .await
        .map_err(|f| Failure {
            code: f.code,
            message: format!(
                "{}\nthe token was not revoked and is still saved in {}; run hersectl logout again, or \
                     hersectl logout --local to forget it here only (it then works until {})",
                f.message,
                path.display(),
                crate::output::time(s.expires_at)
            ),
        })?;
        match status {
            200 => revoked = "token revoked, ",
            // Expired, revoked already (by a suspension, say), or not this workstation's.
            401 => revoked = "the gateway holds no such token, ",
            _ => {
                let f = refusal(&v);
                return Err(Failure {
                    code: f.code,
                    message: format!("the gateway did not revoke the token: {}", f.message),
                });
            }
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => println!("logged out ({revoked}{} removed)", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("not logged in"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `https://host[:port]` → (host, port).
fn host_port(server: &str) -> Result<(String, u16), Failure> {
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| usage(format!("--server must start with https:// (got {server:?})")))?
        .trim_end_matches('/');
    if rest.contains('/') || rest.is_empty() {
        return Err(usage(format!("--server must be https://HOST[:PORT] (got {server:?})")));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (rest, 443), // bare IPv6
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| usage(format!("bad port in --server {server:?}")))?,
        ),
        None => (rest, 443),
    };
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// How long one call may take, from the connection to the last byte of the answer
/// (`--timeout`); set once at start.
static ANSWER_WITHIN: OnceLock<Duration> = OnceLock::new();
const DEFAULT_ANSWER_WITHIN: Duration = Duration::from_secs(120);

pub fn set_timeout(limit: Duration) {
    let _ = ANSWER_WITHIN.set(limit);
}

fn answer_within() -> Duration {
    ANSWER_WITHIN.get().copied().unwrap_or(DEFAULT_ANSWER_WITHIN)
}

/// `work`, or a failure naming `server` when it has not finished within `--timeout`.
async fn in_time<T>(
    server: &str,
    what: &str,
    work: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let limit = answer_within();
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(unreachable_server(
            server,
            what,
            &format_args!("no answer within {}s (--timeout)", limit.as_secs()),
        )),
    }
}

/// An HTTP/1.1 connection over TLS to `server`, trusting only `ca_pem`; and the Host
/// header value.
async fn connect(
    server: &str,
    ca_pem: &str,
) -> Result<(hyper::client::conn::http1::SendRequest<Full<Bytes>>, String), Failure> {
    let (host, port) = host_port(server)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| usage(format!("portal certificate: {e}")))?;
        roots.add(c).map_err(|e| usage(format!("portal certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(usage("portal certificate: no certificate in the PEM"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::from(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone()).map_err(|e| usage(format!("--server host: {e}")))?;
    let fail = |what: &str, e: &dyn std::fmt::Display| unreachable_server(server, what, e);
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|e| fail("connect", &e))?
    .map_err(|e| fail("connect", &e))?;
    let tls = in_time(server, "TLS", async {
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| fail("TLS", &e))
    })
    .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| fail("HTTP", &e))?;
    tokio::spawn(conn);
    let host_header = if port == 443 { host } else { format!("{host}:{port}") };
    Ok((sender, host_header))
}

fn unreachable_server(server: &str, what: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        message: format!("cannot reach {server}: {what}: {e}"),
    }
}

/// POST `body` as JSON to `path`; the status and the JSON answer.
async fn post(
    server: &str,
    ca_pem: &str,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value), Failure> {
    let fail = |what: &str, e: &dyn std::fmt::Display| unreachable_server(server, what, e);
    let (mut sender, host) = connect(server, ca_pem).await?;
    let mut req = hyper::Request::post(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))
        .map_err(|e| fail("request", &e))?;
    let (status, bytes) = in_time(server, "HTTP", async {
        let resp = sender.send_request(req).await.map_err(|e| fail("HTTP", &e))?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), 64 << 20)
            .collect()
            .await
            .map_err(|e| fail("reading the answer", &e))?
            .to_bytes();
        Ok((status, bytes))
    })
    .await?;
    Ok((status, answer(&bytes)))
}

fn answer(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(bytes).trim().to_owned() }))
}

/// A failed call's answer as a failure with the exit code its kind names.
fn refusal(v: &serde_json::Value) -> Failure {
    let kind: Option<herse::control::ErrorKind> = v.get("kind").and_then(|k| serde_json::from_value(k.clone()).ok());
    Failure {
        code: kind.map_or(1, |k| k.exit_code()),
        message: v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("the gateway refused the call")
            .to_owned(),
    }
}

fn unexpired(s: &Saved) -> Result<(), Failure> {
    if s.expires_at <= herse::store::now_micros() {
        return Err(Failure {
            code: 4,
            message: "your hersectl login has expired: run hersectl login".into(),
        });
    }
    Ok(())
}

/// Most bytes accepted in one file response (the gateway sends at most 16 MiB).
const MAX_FILE_CHUNK: usize = 32 << 20;

/// GET `/api/v1/recordings/{id}/file` from `offset` (the `.herseidx` index with
/// `index`), appending the bytes to `out`. Returns (bytes appended, file size when the
/// gateway answered); `None` when the gateway has no such file (no index, say).
pub async fn recording_chunk(
    s: &Saved,
    id: &herse::ident::SessionId,
    offset: u64,
    index: bool,
    out: &mut impl Write,
) -> Result<Option<(u64, u64)>, Failure> {
    unexpired(s)?;
    let fail = |what: &str, e: &dyn std::fmt::Display| unreachable_server(&s.server, what, e);
    let (mut sender, host) = connect(&s.server, &s.ca_pem).await?;
    let path = format!(
        "/api/v1/recordings/{}/file?offset={offset}{}",
        id.as_str(),
        if index { "&index=1" } else { "" }
    );
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", s.token))
        .body(Full::new(Bytes::new()))
        .map_err(|e| fail("request", &e))?;
    let (status, size, bytes) = in_time(&s.server, "HTTP", async {
        let resp = sender.send_request(req).await.map_err(|e| fail("HTTP", &e))?;
        let status = resp.status().as_u16();
        let size = resp
            .headers()
            .get("x-herse-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = Limited::new(resp.into_body(), MAX_FILE_CHUNK)
            .collect()
            .await
            .map_err(|e| fail("reading the recording", &e))?
            .to_bytes();
        Ok((status, size, bytes))
    })
    .await?;
    match (status, size) {
        (200, Some(size)) => {
            out.write_all(&bytes)?;
            Ok(Some((bytes.len() as u64, size)))
        }
        (404, _) if index => Ok(None),
        (200, None) => Err(Failure::from("the gateway did not say how long the recording is")),
        _ => Err(refusal(&answer(&bytes))),
    }
}

/// Read a secret from the terminal without echo, or a line from standard input.
fn prompt(label: &str, secret: bool) -> Result<Zeroizing<String>, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{label}: ");
        let _ = std::io::stderr().flush();
        if secret {
            return read_hidden();
        }
    }
    let mut line = Zeroizing::new(String::new());
    stdin.lock().read_line(&mut line)?;
    Ok(Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned()))
}

fn read_hidden() -> Result<Zeroizing<String>, Failure> {
    use crossterm::event::{read, Event, KeyCode, KeyEventKind, KeyModifiers};
    crossterm::terminal::enable_raw_mode()?;
    let mut s = Zeroizing::new(String::new());
    let r = loop {
        match read() {
            Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => match k.code {
                KeyCode::Enter => break Ok(()),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => break Err(usage("cancelled")),
                KeyCode::Char(c) => s.push(c),
                KeyCode::Backspace => {
                    s.pop();
                }
                _ => {}
            },
            Ok(_) => {}
            Err(e) => break Err(e.into()),
        }
    };
    let _ = crossterm::terminal::disable_raw_mode();
    eprintln!();
    r.map(|()| s)
}

/// `hersectl login`: password and second factor, then save the token.
pub async fn login(server: &str, ca: &std::path::Path, user: Option<&str>) -> Result<(), Failure> {
    let ca_pem = std::fs::read_to_string(ca).map_err(|e| usage(format!("cannot read {}: {e}", ca.display())))?;
    let user = match user {
        Some(u) => u.to_owned(),
        None => prompt("User", false)?.to_string(),
    };
    let password = prompt("Password", true)?;
    let code = prompt(
        "Second factor (TOTP or recovery code; empty to approve with your security key)",
        true,
    )?;
    let body = serde_json::json!({ "user": user, "password": &*password, "code": &*code });
    let (mut status, mut v) = post(server, &ca_pem, "/api/login", None, &body).await?;
    if status == 202 {
        // A security key: approve on the portal, from this workstation, then we poll.
        let url = v.get("approval_url").and_then(|u| u.as_str()).unwrap_or_default();
        let short = v.get("code").and_then(|u| u.as_str()).unwrap_or_default();
        let token = v.get("token").and_then(|u| u.as_str()).unwrap_or_default().to_owned();
        eprintln!("approve this login with your security key (the page shows the code {short}):\n  {url}");
        let poll = serde_json::json!({ "token": token });
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            (status, v) = post(server, &ca_pem, "/api/login/approval", None, &poll).await?;
            if status != 202 {
                break;
            }
        }
    }
    if status != 200 {
        return Err(Failure {
            code: 4,
            message: format!(
                "login refused: {}",
                v.get("error").and_then(|e| e.as_str()).unwrap_or("unknown error")
            ),
        });
    }
    let token = v.get("token").and_then(|t| t.as_str()).unwrap_or_default();
    let expires_at = v.get("expires_at").and_then(|t| t.as_i64()).unwrap_or_default();
    let saved = Saved {
        server: server.to_owned(),
        ca_pem,
        user: user.clone(),
        token: token.to_owned(),
        expires_at,
    };
    let path = save(&saved)?;
    eprintln!(
        "logged in as {user} until {}; token saved in {} (mode 0600)",
        crate::output::time(expires_at),
        path.display()
    );
    Ok(())
}

/// Run `call` on the gateway as the logged-in user.
pub async fn call(s: &Saved, call: &herse::control::Call) -> Result<serde_json::Value, Failure> {
    unexpired(s)?;
    let body = serde_json::to_value(call)?;
    let (status, mut v) = post(&s.server, &s.ca_pem, "/api/v1/call", Some(&s.token), &body).await?;
    if status == 200 {
        return Ok(v.get_mut("ok").map(serde_json::Value::take).unwrap_or_default());
    }
    Err(refusal(&v))
}
