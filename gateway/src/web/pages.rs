//! Portal pages: log in (password + TOTP), see who you are, change your password, log
//! out. Minimal HTML, no scripts.

use std::sync::Arc;

use axum::extract::{Form, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

use super::{password, random_token, token_hash, LOGIN_FAILURES, LOGIN_LOCK, SESSION_TTL};
use crate::gateway::Gateway;
use crate::ident::UserName;
use crate::mfa::{self, Verdict};
use crate::origin::{Origin, Via};
use crate::store::{now_micros, AuditEvent, Severity, WebSession};

const COOKIE: &str = "herse_session";
/// Stored in place of a CSRF token for API tokens, so a cookie session and an API token
/// can never stand for each other.
const API_MARK: &str = "-";
/// API tokens (for `hersectl` from a workstation) last this long.
const API_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Clone)]
pub(super) struct App {
    pub(super) gw: Arc<Gateway>,
}

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/password", post(change_password))
        .route("/logout", post(logout))
        .route("/api/login", post(api_login))
        .route("/api/login/approval", post(api_login_approval))
        .route("/api/whoami", get(api_whoami))
        .route("/api/logout", post(api_logout))
        .route("/api/v1/call", post(api_call))
        .route("/api/v1/recordings/{id}/file", get(super::api::recording_file))
        .route("/totp", get(totp_page))
        .route("/totp/start", post(totp_start))
        .route("/totp/confirm", post(totp_confirm))
        .route("/keys", get(super::keys::keys_page))
        .route("/keys/register/start", post(super::keys::register_start))
        .route("/keys/register/finish", post(super::keys::register_finish))
        .route("/keys/remove", post(super::keys::remove))
        .route("/keys/verify/start", post(super::keys::verify_start))
        .route("/keys/verify/finish", post(super::keys::verify_finish))
        .route("/approve/{token}", get(super::keys::approve_page))
        .route("/approve/{token}/start", post(super::keys::approve_start))
        .route("/approve/{token}/finish", post(super::keys::approve_finish))
        .route("/static/herse.js", get(super::keys::script))
        .route("/grants", get(super::grants::grants_page))
        .route("/grants/{id}/approve/start", post(super::grants::approve_start))
        .route("/grants/{id}/approve/finish", post(super::grants::approve_finish))
        .route("/grants/{id}/deny", post(super::grants::deny))
        .with_state(App { gw })
        .layer(middleware::from_fn(same_origin_writes))
        .layer(middleware::from_fn(security_headers))
}

/// Every response: no caching, no framing, no scripts, no referrer.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; \
             form-action 'self'; frame-ancestors 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // Not no-referrer: under it browsers send `Origin: null` on form posts, which the
        // same-origin check must then refuse.
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
        ("strict-transport-security", "max-age=31536000"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// A request that changes state must come from the portal's own pages: its `Origin`
/// is this host (or, without one, the browser says `Sec-Fetch-Site: same-origin`). A
/// form posted from another site is refused before any handler runs.
async fn same_origin_writes(req: Request, next: Next) -> Response {
    // The API authenticates with bearer tokens, never cookies: a browser cannot be made
    // to send one, so cross-site requests gain nothing there.
    if req.method() == Method::GET || req.method() == Method::HEAD || req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let h = req.headers();
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ok = match h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(o) => !host.is_empty() && o == format!("https://{host}"),
        None => h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("same-origin"),
    };
    if !ok {
        return (StatusCode::FORBIDDEN, "herse: cross-site request refused\n").into_response();
    }
    next.run(req).await
}

pub(super) fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Herse — {t}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:2em auto\"><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    ))
}

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn login_page(message: &str) -> Html<String> {
    let msg = if message.is_empty() {
        String::new()
    } else {
        format!("<p role=\"alert\"><strong>{}</strong></p>", esc(message))
    };
    page(
        "Log in",
        &format!(
            "{msg}<form method=\"post\" action=\"/login\">\
             <p><label>User <input name=\"user\" autocomplete=\"username\" required></label></p>\
             <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <p><label>Verification code (TOTP) <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required></label></p>\
             <p><button>Log in</button></p></form>"
        ),
    )
}

async fn login_form() -> Html<String> {
    login_page("")
}

/// Where a second-factor proof or a session belongs (as the SSH front counts it).
fn place(origin: &Origin) -> String {
    match &origin.via {
        Via::Workstation(w) => w.to_string(),
        Via::Loopback => "@loopback".into(),
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The caller's session: the cookie names a live one, of an active user, made from
/// this same workstation.
pub(super) async fn session(app: &App, headers: &HeaderMap, origin: &Origin) -> Option<(WebSession, String)> {
    let hash = token_hash(&cookie_token(headers)?);
    let s = app.gw.store.web_session(&hash).await.ok()??;
    (s.workstation == place(origin) && s.csrf != API_MARK).then_some((s, hash))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    code: String,
}

/// Password and second factor, for the portal and the API. `Err` carries the status and
/// the message for the caller (deliberately vague on what failed); every outcome is
/// audited and failures count towards the lockout. With `by_key`, only the password is
/// checked here: the caller then waits for a security-key approval.
async fn authenticate(
    app: &App,
    origin: &Origin,
    f: &LoginForm,
    channel: &'static str,
    by_key: bool,
) -> Result<(UserName, bool), (StatusCode, String)> {
    let gw = &app.gw;
    let fail = |status: StatusCode, msg: &str| Err((status, msg.to_owned()));
    let audit = |kind: &'static str, sev: Severity, user: &str, detail: String| {
        let e = AuditEvent::new(kind, sev, detail)
            .user(user.escape_debug().take(80).collect::<String>())
            .origin(origin);
        async move { gw.audit(e).await }
    };
    let Ok(user) = UserName::parse(f.user.trim()) else {
        audit(
            kind_failure(channel),
            Severity::Warning,
            &f.user,
            "invalid user name".into(),
        )
        .await;
        return fail(StatusCode::UNAUTHORIZED, "Login failed.");
    };
    let active = matches!(gw.store.is_active(&user).await, Ok(true));
    if !active {
        audit(
            kind_failure(channel),
            Severity::Warning,
            user.as_str(),
            "unknown or suspended user".into(),
        )
        .await;
        return fail(StatusCode::UNAUTHORIZED, "Login failed.");
    }
    if let Ok(Some(until)) = gw.store.login_locked_until(&user).await {
        audit(
            kind_failure(channel),
            Severity::Warning,
            user.as_str(),
            "account locked".into(),
        )
        .await;
        return fail(
            StatusCode::FORBIDDEN,
            &format!(
                "Account locked after repeated failures until {} (an admin can unlock it).",
                when(until)
            ),
        );
    }
    if let Via::Workstation(ws) = &origin.via {
        let bound =
            matches!(gw.store.workstation(ws).await, Ok(Some(w)) if !w.is_revoked() && w.owner == user.as_str());
        if !bound {
            audit(
                "login.wrong_workstation",
                Severity::Alert,
                user.as_str(),
                format!("portal login from workstation {ws}, not bound to {user}"),
            )
            .await;
            // The same answer as any failure: probing names from a workstation learns nothing.
            return fail(StatusCode::UNAUTHORIZED, "Login failed.");
        }
    }
    let policy = &gw.config.password_policy;
    // Counted before the password is checked, in one atomic update: concurrent guesses
    // cannot all slip in under the lock. A success clears the count.
    let which = crate::store::Lockout::Login;
    let lock_micros = LOGIN_LOCK.as_micros() as i64;
    let Ok(n) = gw.store.bump_failures(which, &user).await else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, "The portal cannot log you in now.");
    };
    if n > LOGIN_FAILURES {
        // Racing guesses past the limit: refused unchecked, and locked.
        if let Ok(Some(until)) = gw.store.lock_after(which, &user, n, LOGIN_FAILURES, lock_micros).await {
            return fail(
                StatusCode::FORBIDDEN,
                &format!(
                    "Account locked after repeated failures until {} (an admin can unlock it).",
                    when(until)
                ),
            );
        }
    }
    let stored = gw.store.password(&user).await.ok().flatten();
    let mut recovery_left = None;
    let reason = match &stored {
        None => Some("no password set"),
        Some((hash, _)) if !password::verify_async(&f.password, hash).await => Some("wrong password"),
        Some(_) if by_key => None,
        Some(_) => match mfa::check_second_factor(&gw.store, &gw.keys.user_secrets, &user, &f.code).await {
            Ok(Verdict::Accepted) => None,
            Ok(Verdict::AcceptedRecovery { left }) => {
                recovery_left = Some(left);
                None
            }
            Ok(Verdict::NotEnrolled) => Some("no second factor enrolled"),
            Ok(Verdict::Locked(_)) => Some("second factor locked"),
            Ok(Verdict::Failed { reason, .. }) => Some(reason),
            Err(_) => Some("second factor unavailable"),
        },
    };
    if let Some(reason) = reason {
        audit(kind_failure(channel), Severity::Warning, user.as_str(), reason.into()).await;
        if let Ok(Some(until)) = gw.store.lock_after(which, &user, n, LOGIN_FAILURES, lock_micros).await {
            audit(
                kind_lockout(channel),
                Severity::Alert,
                user.as_str(),
                format!("locked until {}", when(until)),
            )
            .await;
        }
        return fail(StatusCode::UNAUTHORIZED, "Login failed.");
    }
    // With a key to come, the login has not succeeded yet: failures are cleared (and the
    // success audited) only when the approval is taken. But the right password is no
    // failure: this attempt's count is taken back, so logins left unapproved (a closed
    // terminal, a key left at home) never lock the account; wrong guesses still do.
    if by_key {
        let _ = gw.store.unbump_failures(which, &user).await;
    } else {
        let _ = gw.store.reset_login_failures(&user).await;
    }
    // No second-factor proof is recorded for SSH here: a portal login must not let SSH
    // skip a security key (or the remembered window) with a TOTP or recovery code.
    let expired = stored.and_then(|(_, set_at)| {
        let age = now_micros().saturating_sub(set_at);
        policy.max_age.filter(|m| age > crate::store::micros(*m))
    });
    gw.audit(
        AuditEvent::new(
            if by_key {
                "api.login.password_ok"
            } else {
                kind_success(channel)
            },
            // A recovery code in use means the authenticator may be lost or stolen.
            if recovery_left.is_some() {
                Severity::Warning
            } else {
                Severity::Info
            },
            format!(
                "password + {}{}",
                match recovery_left {
                    Some(left) => format!("recovery code ({left} left)"),
                    None if by_key => "a security-key approval to come".to_owned(),
                    None => "second factor".to_owned(),
                },
                if expired.is_some() { " (password expired)" } else { "" }
            ),
        )
        .user(&user)
        .origin(origin),
    )
    .await;
    Ok((user, expired.is_some()))
}

fn kind_failure(channel: &str) -> &'static str {
    if channel == "api" {
        "api.login.failure"
    } else {
        "web.login.failure"
    }
}
fn kind_lockout(channel: &str) -> &'static str {
    if channel == "api" {
        "api.login.lockout"
    } else {
        "web.login.lockout"
    }
}
fn kind_success(channel: &str) -> &'static str {
    if channel == "api" {
        "api.login.success"
    } else {
        "web.login.success"
    }
}

async fn login(State(app): State<App>, Extension(origin): Extension<Origin>, Form(f): Form<LoginForm>) -> Response {
    let gw = &app.gw;
    let fail = |status: StatusCode, msg: &str| (status, login_page(msg)).into_response();
    let user = match authenticate(&app, &origin, &f, "web", false).await {
        Ok((u, _)) => u,
        Err((status, msg)) => return fail(status, &msg),
    };
    let token = random_token();
    let csrf = random_token();
    let expires = now_micros() + SESSION_TTL.as_micros() as i64;
    if let Err(e) = gw
        .store
        .create_web_session(&token_hash(&token), &user, &place(&origin), &csrf, expires)
        .await
    {
        tracing::error!(error = %e, "cannot create portal session");
        return fail(StatusCode::SERVICE_UNAVAILABLE, "The portal cannot log you in now.");
    }
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub(super) fn when(micros: i64) -> String {
    crate::timefmt::rfc3339(micros)
}

async fn home(State(app): State<App>, Extension(origin): Extension<Origin>, headers: HeaderMap) -> Response {
    let Some((s, _)) = session(&app, &headers, &origin).await else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    };
    let age_note = match UserName::parse(&s.user) {
        Ok(u) => match app.gw.store.password(&u).await.ok().flatten() {
            Some((_, set_at)) => {
                let age = now_micros().saturating_sub(set_at);
                match app.gw.config.password_policy.max_age {
                    Some(m) if age > crate::store::micros(m) => {
                        "<p><strong>Your password has expired: change it now.</strong></p>"
                    }
                    _ => "",
                }
            }
            None => "",
        },
        Err(_) => "",
    };
    page(
        "Herse",
        &format!(
            "<p>Signed in as <b>{user}</b> from {place}; this session ends at {end}.</p>{age_note}\
             <h2>Change password</h2><form method=\"post\" action=\"/password\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <p><label>Current <input name=\"current\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <p><label>New <input name=\"new\" type=\"password\" autocomplete=\"new-password\" required></label></p>\
             <p><button>Change</button></p></form>\
             <p><a href=\"/grants\">Access grants</a> · <a href=\"/keys\">Security keys</a> · <a href=\"/totp\">Authenticator app</a></p><form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button>Log out</button></form>",
            user = esc(&s.user),
            place = esc(&s.workstation),
            end = when(s.expires_at),
            csrf = esc(&s.csrf),
        ),
    )
    .into_response()
}

#[derive(serde::Deserialize)]
struct PasswordForm {
    csrf: String,
    current: String,
    new: String,
}

/// Count a failure toward the user's portal lockout (best effort: the refusal stands).
async fn count_login_failure(app: &App, user: &UserName) {
    let _ = app
        .gw
        .store
        .record_login_failure(user, LOGIN_FAILURES, LOGIN_LOCK.as_micros() as i64)
        .await;
}

async fn change_password(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    headers: HeaderMap,
    Form(f): Form<PasswordForm>,
) -> Response {
    let Some((s, _)) = session(&app, &headers, &origin).await else {
        return (
            StatusCode::UNAUTHORIZED,
            page("Log in again", "<p>Your session has ended.</p>"),
        )
            .into_response();
    };
    if !constant_time_eq(f.csrf.as_bytes(), s.csrf.as_bytes()) {
        return (StatusCode::FORBIDDEN, "herse: missing or wrong CSRF token\n").into_response();
    }
    let Ok(user) = UserName::parse(&s.user) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if let Ok(Some(until)) = app.gw.store.login_locked_until(&user).await {
        return (
            StatusCode::FORBIDDEN,
            page(
                "Password not changed",
                &format!("<p>Account locked until {}.</p>", when(until)),
            ),
        )
            .into_response();
    }
    // The hash checked against is the one the change may replace (see `set_password`).
    let current = match app.gw.store.password(&user).await {
        Ok(Some((h, _))) if password::verify_async(&f.current, &h).await => Some(h),
        _ => None,
    };
    let Some(current) = current else {
        // Guessing the current password from a session counts like a failed login.
        count_login_failure(&app, &user).await;
        return (
            StatusCode::FORBIDDEN,
            page("Password not changed", "<p>The current password is wrong.</p>"),
        )
            .into_response();
    };
    // Not again so soon after one's own last change: `history` changes in a row would
    // otherwise flush the history and bring back the first password.
    let min_age = app.gw.config.password_policy.min_age;
    if !min_age.is_zero() {
        match app.gw.store.own_password_change(&user).await {
            Ok(Some(at)) if now_micros().saturating_sub(at) < crate::store::micros(min_age) => {
                return (
                    StatusCode::BAD_REQUEST,
                    page(
                        "Password not changed",
                        &format!(
                            "<p>Refused: you changed your password less than {} ago; ask an administrator \
                             if it must change now.</p>",
                            esc(&humantime::format_duration(min_age).to_string())
                        ),
                    ),
                )
                    .into_response()
            }
            Ok(_) => {}
            Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    }
    // A renewal must renew: the current password again would keep an expired one alive.
    if f.new.as_bytes() == f.current.as_bytes() {
        return (
            StatusCode::BAD_REQUEST,
            page(
                "Password not changed",
                "<p>Refused: the new password is the current one.</p>",
            ),
        )
            .into_response();
    }
    if let Err(reason) = app.gw.config.password_policy.check(user.as_str(), &f.new) {
        return (
            StatusCode::BAD_REQUEST,
            page("Password not changed", &format!("<p>Refused: {}</p>", esc(&reason))),
        )
            .into_response();
    }
    // Nor a password retired lately: A -> B -> A would renew an old secret.
    let keep = app.gw.config.password_policy.history;
    let retired = match app.gw.store.retired_passwords(&user, keep).await {
        Ok(r) => r,
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    for old in &retired {
        if password::verify_async(&f.new, old).await {
            // Each try costs argon2id checks shared with every login: repeated, they
            // count like failed logins and end in the lockout.
            count_login_failure(&app, &user).await;
            return (
                StatusCode::BAD_REQUEST,
                page(
                    "Password not changed",
                    &format!("<p>Refused: the new password is one of your last {keep} passwords.</p>"),
                ),
            )
                .into_response();
        }
    }
    let hash = match password::hash_async(&f.new).await {
        Ok(h) => h,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    match app
        .gw
        .store
        .set_password(
            &user,
            &hash,
            crate::store::PasswordChange::Own { replaces: &current },
            keep,
        )
        .await
    {
        Ok(()) => {}
        Err(crate::store::StoreError::Refused(_)) => {
            return (
                StatusCode::CONFLICT,
                page(
                    "Password not changed",
                    "<p>Your password was changed or reset meanwhile: log in again.</p>",
                ),
            )
                .into_response()
        }
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
    // Every other session and API token of the user ends with the old password.
    if let Some(token) = cookie_token(&headers) {
        let _ = app.gw.store.end_other_web_sessions(&user, &token_hash(&token)).await;
    }
    app.gw
        .audit(
            AuditEvent::new("password.change", Severity::Info, "on the portal")
                .user(&user)
                .origin(&origin),
        )
        .await;
    page(
        "Password changed",
        "<p>Your password was changed.</p><p><a href=\"/\">Back</a></p>",
    )
    .into_response()
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some((s, hash)) = session(&app, &headers, &origin).await {
        if constant_time_eq(f.csrf.as_bytes(), s.csrf.as_bytes()) {
            let _ = app.gw.store.delete_web_session(&hash).await;
        }
    }
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("herse_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
    );
    r
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user's session and name for a form post with a CSRF token. A user whose password
/// has expired can post nothing but the password change (and the logout), which read
/// their session themselves.
pub(super) async fn form_session(
    app: &App,
    headers: &HeaderMap,
    origin: &Origin,
    csrf: &str,
) -> Result<(WebSession, UserName), Response> {
    let Some((s, _)) = session(app, headers, origin).await else {
        return Err((
            StatusCode::UNAUTHORIZED,
            page("Log in again", "<p>Your session has ended.</p>"),
        )
            .into_response());
    };
    if !constant_time_eq(csrf.as_bytes(), s.csrf.as_bytes()) {
        return Err((StatusCode::FORBIDDEN, "herse: missing or wrong CSRF token\n").into_response());
    }
    if password_expired(app, &s.user).await {
        return Err(renew_first());
    }
    let user = UserName::parse(&s.user).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
    Ok((s, user))
}

/// The session behind a page view: to the login page without one, to the password
/// change first when the password has expired.
pub(super) async fn page_session(
    app: &App,
    headers: &HeaderMap,
    origin: &Origin,
) -> Result<(WebSession, UserName), Response> {
    let Some((s, _)) = session(app, headers, origin).await else {
        return Err((StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response());
    };
    if password_expired(app, &s.user).await {
        return Err(renew_first());
    }
    let user = UserName::parse(&s.user).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
    Ok((s, user))
}

async fn totp_page(State(app): State<App>, Extension(origin): Extension<Origin>, headers: HeaderMap) -> Response {
    let (s, _) = match page_session(&app, &headers, &origin).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    page(
        "Authenticator app",
        &format!(
            "<p>Set up a new authenticator app (for example after losing your phone and logging in with a \
             recovery code). The current one keeps working until you confirm the new one.</p>\
             <form method=\"post\" action=\"/totp/start\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button>Set up a new authenticator</button></form><p><a href=\"/\">Back</a></p>",
            esc(&s.csrf)
        ),
    )
    .into_response()
}

#[derive(serde::Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn totp_start(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let (s, user) = match form_session(&app, &headers, &origin, &f.csrf).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(e) = mfa::Enrolment::new(&user) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let id = random_token();
    let sealed = e.seal_pending(&app.gw.keys.user_secrets);
    if app
        .gw
        .store
        .put_webauthn_state(&id, &user, "totp", &sealed, now_micros() + 600_000_000)
        .await
        .is_err()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let uri = e.uri();
    let qr = qrcode::QrCode::new(uri.as_bytes())
        .map(|c| {
            c.render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build()
        })
        .unwrap_or_default();
    page(
        "Scan, then confirm",
        &format!(
            "<pre style=\"line-height:1\">{qr}</pre><p>Or enter this in the app: <code id=\"uri\">{uri}</code></p>\
             <form method=\"post\" action=\"/totp/confirm\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"id\" value=\"{id}\">\
             <p><label>Code shown by the new app <input name=\"code\" inputmode=\"numeric\" required></label></p>\
             <p><button>Confirm</button></p></form>",
            qr = esc(&qr),
            uri = esc(uri.as_str()),
            csrf = esc(&s.csrf),
        ),
    )
    .into_response()
}

#[derive(serde::Deserialize)]
struct TotpConfirm {
    csrf: String,
    id: String,
    code: String,
}

async fn totp_confirm(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    headers: HeaderMap,
    Form(f): Form<TotpConfirm>,
) -> Response {
    let (_, user) = match form_session(&app, &headers, &origin, &f.csrf).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let sealed = match app.gw.store.take_webauthn_state(&f.id, &user, "totp").await {
        Ok(Some(s)) => s,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                page(
                    "Not changed",
                    "<p>This set-up expired or was already used; start again.</p>",
                ),
            )
                .into_response()
        }
    };
    let e = match mfa::Enrolment::open_pending(&user, &app.gw.keys.user_secrets, &sealed) {
        Ok(e) => e,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if let Err(reason) = e.confirm(&app.gw.store, &app.gw.keys.user_secrets, &f.code, true).await {
        return (
            StatusCode::BAD_REQUEST,
            page(
                "Not changed",
                &format!("<p>{}</p><p><a href=\"/totp\">Start again</a></p>", esc(&reason)),
            ),
        )
            .into_response();
    }
    app.gw
        .audit(
            AuditEvent::new(
                "mfa.enroll",
                Severity::Info,
                "TOTP on the portal (replaces the previous one)",
            )
            .user(&user)
            .origin(&origin),
        )
        .await;
    page(
        "Authenticator replaced",
        "<p>Your new authenticator app is now the one that counts.</p><p><a href=\"/\">Back</a></p>",
    )
    .into_response()
}

/// Target and login an API-login approval carries (shown on the approval page).
/// Not a valid target name (`@`), so no SSH approval can ever be taken for one of these.
pub(super) const API_APPROVAL_TARGET: &str = "@hersectl";
const API_APPROVAL_LOGIN: &str = "control-api";

/// `POST /api/login` with JSON `{user, password, code}`: a short-lived bearer token bound
/// to this workstation. A user with security keys proves the second factor with one, as
/// for SSH: leave `code` empty, and the answer (202) is an approval URL to open on the
/// portal; then `POST /api/login/approval` with its token fetches the bearer token.
async fn api_login(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    axum::Json(f): axum::Json<LoginForm>,
) -> Response {
    let refuse =
        |status: StatusCode, msg: &str| (status, axum::Json(serde_json::json!({ "error": msg }))).into_response();
    let has_keys = match (UserName::parse(f.user.trim()), &app.gw.webauthn) {
        (Ok(u), Some(_)) => !app.gw.store.security_keys(&u).await.unwrap_or_default().is_empty(),
        _ => false,
    };
    let user = match authenticate(&app, &origin, &f, "api", has_keys).await {
        Ok((u, false)) => u,
        Ok((_, true)) => {
            return refuse(
                StatusCode::FORBIDDEN,
                "your password has expired: change it on the portal first",
            )
        }
        Err((status, msg)) => return refuse(status, &msg),
    };
    // Said only to someone who knew the password: the key is the factor, as for SSH.
    if has_keys && !f.code.trim().is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "you have a security key: leave the code empty and approve with the key",
        );
    }
    if has_keys {
        return begin_api_approval(&app, &origin, &user).await;
    }
    issue_api_token(&app, &origin, &user).await
}

async fn begin_api_approval(app: &App, origin: &Origin, user: &UserName) -> Response {
    let Some(web) = app.gw.config.web.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some((_, base)) = &web.webauthn else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let token = random_token();
    let code = super::short_code();
    let expires = now_micros() + web.approval_ttl.as_micros() as i64;
    match app
        .gw
        .store
        .create_approval(
            &token_hash(&token),
            user,
            &place(origin),
            API_APPROVAL_TARGET,
            API_APPROVAL_LOGIN,
            &code,
            expires,
        )
        .await
    {
        Ok(()) => {}
        Err(crate::store::StoreError::Refused(why)) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(serde_json::json!({ "error": why })),
            )
                .into_response()
        }
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "approval_url": format!("{base}/approve/{token}"),
            "code": code,
            "token": token,
            "expires_at": expires,
        })),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct ApprovalPoll {
    token: String,
}

/// `POST /api/login/approval` with `{token}`: 202 while the approval waits, the bearer
/// token once the same user approved it from the same workstation, 401 when it expired.
async fn api_login_approval(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    axum::Json(p): axum::Json<ApprovalPoll>,
) -> Response {
    let hash = token_hash(&p.token);
    let gone = || {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({ "error": "no such approval, or it expired: log in again" })),
        )
            .into_response()
    };
    let a = match app.gw.store.approval(&hash).await {
        Ok(Some(a)) if a.workstation == place(&origin) && a.target == API_APPROVAL_TARGET => a,
        Ok(_) => return gone(),
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    let Ok(user) = UserName::parse(&a.user) else {
        return gone();
    };
    if !matches!(app.gw.store.is_active(&user).await, Ok(true)) {
        return gone();
    }
    match app.gw.store.consume_approval(&hash).await {
        Ok(true) => {
            let _ = app.gw.store.reset_login_failures(&user).await;
            app.gw
                .audit(
                    AuditEvent::new("api.login.success", Severity::Info, "password + security key")
                        .user(&user)
                        .origin(&origin),
                )
                .await;
            issue_api_token(&app, &origin, &user).await
        }
        Ok(false) if a.expires_at > now_micros() && a.consumed_at.is_none() => {
            (StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "pending": true }))).into_response()
        }
        Ok(false) => gone(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn issue_api_token(app: &App, origin: &Origin, user: &UserName) -> Response {
    let token = random_token();
    let expires = now_micros() + API_TOKEN_TTL.as_micros() as i64;
    if app
        .gw
        .store
        .create_web_session(&token_hash(&token), user, &place(origin), API_MARK, expires)
        .await
        .is_err()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    axum::Json(serde_json::json!({ "token": token, "user": user.as_str(), "expires_at": expires })).into_response()
}

/// The API session a bearer token stands for: an unexpired API token (never a portal
/// cookie's), used from the workstation it was issued to, of a user still active.
pub(super) async fn api_session(
    app: &App,
    headers: &HeaderMap,
    origin: &Origin,
) -> Result<(WebSession, UserName), Response> {
    let token = bearer(headers);
    let refused = || {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({ "error": "missing, expired or foreign token: run hersectl login", "kind": "refused" })),
        )
            .into_response()
    };
    let s = match app.gw.store.web_session(&token_hash(token)).await {
        Ok(Some(s)) if s.csrf == API_MARK && s.workstation == place(origin) => s,
        _ => return Err(refused()),
    };
    let Ok(user) = UserName::parse(&s.user) else {
        return Err(refused());
    };
    if !matches!(app.gw.store.is_active(&user).await, Ok(true)) {
        return Err(refused());
    }
    // A password that expired while the token lives stops the token as it stops the
    // portal: change it first (the login refuses an expired password the same way).
    if password_expired(app, &s.user).await {
        return Err((
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "error": "your password has expired: change it on the portal first",
                "kind": "refused",
            })),
        )
            .into_response());
    }
    Ok((s, user))
}

/// `POST /api/v1/call` with a bearer token and a JSON [`crate::control::Call`]: runs it
/// as the token's user, under their roles as the current policy defines them.
async fn api_call(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (_, user) = match api_session(&app, &headers, &origin).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let call: crate::control::Call = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({ "error": format!("bad call: {e}"), "kind": "invalid" })),
            )
                .into_response()
        }
    };
    let roles = match app.gw.store.roles_of(&user).await {
        Ok(r) => r,
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    let policy = app.gw.policy.load_full();
    let caller = crate::access::Caller::Person(crate::access::Person::new(&policy, user, &roles));
    let ctx = crate::control::Ctx {
        store: &app.gw.store,
        policy: Ok(&policy),
        config: &app.gw.config,
        identity_files: &[],
        user_secrets: Some(&app.gw.keys.user_secrets),
        retention: Some(&app.gw.retention),
        // Never signs a release through the API (see `recordings_hold`).
        audit_key: None,
    };
    match crate::control::execute(&ctx, &caller, &call).await {
        Ok(v) => axum::Json(serde_json::json!({ "ok": v })).into_response(),
        Err(e) => (
            StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(serde_json::json!({ "error": e.message, "kind": e.kind })),
        )
            .into_response(),
    }
}

/// `GET /api/whoami` with `Authorization: Bearer TOKEN`.
async fn api_whoami(State(app): State<App>, Extension(origin): Extension<Origin>, headers: HeaderMap) -> Response {
    let s = match api_session(&app, &headers, &origin).await {
        Ok((s, _)) => s,
        Err(r) => return r,
    };
    axum::Json(serde_json::json!({ "user": s.user, "workstation": s.workstation, "expires_at": s.expires_at }))
        .into_response()
}

/// `hersectl logout`: the bearer token stops working at once. Any holder of a token
/// may end it, whatever its user's state (a suspended user or an expired password can
/// still give a token up); it must still be an API token of this workstation.
async fn api_logout(State(app): State<App>, Extension(origin): Extension<Origin>, headers: HeaderMap) -> Response {
    let json = |status: StatusCode, v: serde_json::Value| (status, axum::Json(v)).into_response();
    match app
        .gw
        .store
        .revoke_api_token(&token_hash(bearer(&headers)), &place(&origin), API_MARK)
        .await
    {
        Ok(Some(user)) => {
            app.gw
                .audit(
                    AuditEvent::new("api.logout", Severity::Info, "API token revoked by its holder")
                        .user(user)
                        .origin(&origin),
                )
                .await;
            json(StatusCode::OK, serde_json::json!({ "ok": { "revoked": true } }))
        }
        Ok(None) => json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({
                "error": "no such token from this workstation: it has expired or was revoked",
                "kind": "refused",
            }),
        ),
        Err(_) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": "the gateway's store failed: the token still works", "kind": "internal" }),
        ),
    }
}

/// The bearer token of an API request ("" when there is none).
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Whether `user`'s password is older than the policy's renewal period: such a user can
/// only change it (and log out) until they do. Where the policy sets a period and the
/// store cannot tell, the password counts as expired (fail closed).
pub(super) async fn password_expired(app: &App, user: &str) -> bool {
    let Ok(u) = UserName::parse(user) else { return true };
    let Some(max) = app.gw.config.password_policy.max_age else {
        return false;
    };
    match app.gw.store.password(&u).await {
        Ok(Some((_, set_at))) => now_micros().saturating_sub(set_at) > crate::store::micros(max),
        Ok(None) => false,
        Err(_) => true,
    }
}

pub(super) fn renew_first() -> Response {
    (
        StatusCode::FORBIDDEN,
        page(
            "Change your password first",
            "<p>Your password has expired: change it on the <a href=\"/\">home page</a> first.</p>",
        ),
    )
        .into_response()
}
