#![allow(clippy::result_large_err)] // handlers return an axum Response early; not a library boundary
//! Security keys (WebAuthn) on the portal: enrol and remove named keys, and approve a
//! waiting SSH login with a touch. Ceremony states live in the database and are deleted
//! on first use (a finish replayed with the same state finds nothing).

use std::sync::Arc;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{
    PublicKeyCredential, RegisterPublicKeyCredential, SecurityKey, SecurityKeyAuthentication, SecurityKeyRegistration,
    Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::pages::{esc, page, password_expired, renew_first, session, when, App};
use super::{random_token, token_hash};
use crate::ident::UserName;
use crate::origin::Origin;
use crate::store::{now_micros, AuditEvent, Severity, WebSession};

/// A ceremony must finish within this time.
const CEREMONY_TTL_MICROS: i64 = 120_000_000;

pub fn build(rp_id: &str, origin: &str) -> Option<Arc<Webauthn>> {
    let url = Url::parse(origin).ok()?;
    WebauthnBuilder::new(rp_id, &url)
        .ok()?
        .rp_name("Herse")
        .build()
        .ok()
        .map(Arc::new)
}

/// A stable WebAuthn user handle for a user name.
fn user_handle(user: &UserName) -> Uuid {
    let d = Sha256::digest(format!("herse-user:{user}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    Uuid::from_bytes(b)
}

/// The ceremony purpose of one approval (a state for one approval finishes no other).
fn approval_purpose(token: &str) -> String {
    format!("approve:{}", token_hash(token))
}

/// A key name: 1 to 64 printable characters.
fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && !name.chars().any(|c| c.is_control())
}

pub(super) fn cred_id_b64(id: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

/// Keep a ceremony's state for its finish; returns the id the browser sends back.
pub(super) async fn save_state<T: serde::Serialize>(
    app: &App,
    user: &UserName,
    purpose: &str,
    state: &T,
) -> Result<String, Response> {
    let id = random_token();
    let json = serde_json::to_string(state).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
    app.gw
        .store
        .put_webauthn_state(&id, user, purpose, &json, now_micros() + CEREMONY_TTL_MICROS)
        .await
        .map_err(|_| err(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"))?;
    Ok(id)
}

/// Take a ceremony's state, once; `None` if it expired, was used or never existed.
pub(super) async fn take_state<T: serde::de::DeserializeOwned>(
    app: &App,
    id: &str,
    user: &UserName,
    purpose: &str,
) -> Option<T> {
    let json = app.gw.store.take_webauthn_state(id, user, purpose).await.ok()??;
    serde_json::from_str(&json).ok()
}

pub(super) fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

/// The session, and its CSRF token in the `x-csrf-token` header (fetch requests).
/// A portal session on a JSON call, as an extractor: the cookie's session, the CSRF
/// header, a password not expired. It runs before the body is read, so an
/// unauthenticated request never has its body parsed.
pub(super) struct JsonSession {
    pub session: WebSession,
    pub user: UserName,
}

impl axum::extract::FromRequestParts<App> for JsonSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, app: &App) -> Result<Self, Response> {
        let Some(origin) = parts.extensions.get::<Origin>() else {
            return Err(err(StatusCode::INTERNAL_SERVER_ERROR, "no client origin"));
        };
        let (session, user) = json_session(app, &parts.headers, origin).await?;
        Ok(JsonSession { session, user })
    }
}

async fn json_session(app: &App, headers: &HeaderMap, origin: &Origin) -> Result<(WebSession, UserName), Response> {
    let Some((s, _)) = session(app, headers, origin).await else {
        return Err(err(StatusCode::UNAUTHORIZED, "log in first"));
    };
    let token = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !super::pages::constant_time_eq(token.as_bytes(), s.csrf.as_bytes()) {
        return Err(err(StatusCode::FORBIDDEN, "missing or wrong CSRF token"));
    }
    if password_expired(app, &s.user).await {
        return Err(err(StatusCode::FORBIDDEN, "your password has expired: change it first"));
    }
    let user = UserName::parse(&s.user).map_err(|_| err(StatusCode::INTERNAL_SERVER_ERROR, "bad session"))?;
    Ok((s, user))
}

pub(super) fn webauthn(app: &App) -> Result<&Webauthn, Response> {
    app.gw
        .webauthn
        .as_deref()
        .ok_or_else(|| err(StatusCode::NOT_FOUND, "security keys are not configured (web.rp_id)"))
}

pub(super) async fn stored_keys(app: &App, user: &UserName) -> Result<Vec<(String, SecurityKey)>, Response> {
    Ok(parsed_keys(key_rows(app, user).await?))
}

/// The user's key rows as stored, parsed or not.
async fn key_rows(app: &App, user: &UserName) -> Result<Vec<crate::store::SecurityKeyRow>, Response> {
    app.gw
        .store
        .security_keys(user)
        .await
        .map_err(|_| err(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"))
}

/// The rows' keys, by name; a row that does not parse is left out.
fn parsed_keys(rows: Vec<crate::store::SecurityKeyRow>) -> Vec<(String, SecurityKey)> {
    rows.into_iter()
        .filter_map(|r| {
            serde_json::from_str::<SecurityKey>(&r.key_json)
                .ok()
                .map(|k| (r.name, k))
        })
        .collect()
}

pub(super) async fn keys_page(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    headers: HeaderMap,
) -> Response {
    let (s, user) = match super::pages::page_session(&app, &headers, &origin).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let rows = app.gw.store.security_keys(&user).await.unwrap_or_default();
    let mut list = String::new();
    for r in &rows {
        list.push_str(&format!(
            "<li>{name} (added {added}) <form class=\"rmkey\" method=\"post\" action=\"/keys/remove\" style=\"display:inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"name\" value=\"{name}\">\
             <input type=\"hidden\" name=\"proof\" value=\"\"><button>Remove</button></form></li>",
            name = esc(&r.name),
            added = when(r.created_at),
            csrf = esc(&s.csrf)
        ));
    }
    page(
        "Security keys",
        &format!(
            "<div id=\"herse\" data-csrf=\"{csrf}\" data-haskeys=\"{has}\"></div><ul>{list}</ul>\
             <p><label>Name <input id=\"keyname\" value=\"key\"></label> <button id=\"add\">Add a security key</button></p>\
             <p id=\"status\" role=\"status\"></p><p><a href=\"/\">Back</a></p>\
             <script src=\"/static/herse.js\"></script>",
            csrf = esc(&s.csrf),
            has = u8::from(!rows.is_empty()),
        ),
    )
    .into_response()
}

#[derive(serde::Deserialize)]
pub(super) struct RegisterStart {
    name: String,
    /// From `/keys/verify`: required once the user has a key.
    #[serde(default)]
    proof: Option<String>,
}

/// The assertion that proves, before a key is added or removed, that the user holds
/// one of their keys now: a portal login takes a TOTP or recovery code, and must not be
/// enough to add an attacker's authenticator or to drop the user back to TOTP.
const VERIFY: &str = "keys-verify";

/// The single-use proof that assertion leaves, for one change from this workstation.
fn verified_purpose(s: &WebSession) -> String {
    format!("keys-verified:{}", s.workstation)
}

/// Whether `proof` is this user's unused proof, from this workstation (used up here).
async fn key_proven(app: &App, s: &WebSession, user: &UserName, proof: Option<&str>) -> bool {
    match proof {
        Some(p) => take_state::<String>(app, p, user, &verified_purpose(s)).await.is_some(),
        None => false,
    }
}

/// The ceremony purpose of a registration.
const REGISTER: &str = "register";

/// A registration in progress, and whether it started with a touch of one of the
/// user's keys.
#[derive(serde::Serialize, serde::Deserialize)]
struct Registration {
    state: SecurityKeyRegistration,
    proven: bool,
}

fn touch_first() -> Response {
    err(
        StatusCode::FORBIDDEN,
        "you have a security key: touch one of your keys first to add or remove one",
    )
}

pub(super) async fn verify_start(State(app): State<App>, JsonSession { session: _, user }: JsonSession) -> Response {
    match start_assertion(&app, &user, VERIFY).await {
        Ok(r) => r,
        Err(Assertion::NoKey) => err(StatusCode::BAD_REQUEST, "you have no security key yet"),
        Err(Assertion::Response(r)) => r,
    }
}

pub(super) async fn verify_finish(
    State(app): State<App>,
    JsonSession { session: s, user }: JsonSession,
    Json(body): Json<ApproveFinish>,
) -> Response {
    let name = match finish_assertion(&app, &user, VERIFY, &body).await {
        Ok(name) => name,
        Err(reason) => return err(StatusCode::FORBIDDEN, reason),
    };
    match save_state(&app, &user, &verified_purpose(&s), &name).await {
        Ok(proof) => Json(serde_json::json!({ "proof": proof })).into_response(),
        Err(r) => r,
    }
}

pub(super) async fn register_start(
    State(app): State<App>,
    JsonSession { session: s, user }: JsonSession,
    Json(body): Json<RegisterStart>,
) -> Response {
    let wa = match webauthn(&app) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let name = body.name.trim();
    if !valid_key_name(name) {
        return err(StatusCode::BAD_REQUEST, "a key name is 1 to 64 printable characters");
    }
    // One read; a store that cannot tell refuses (fail closed).
    let rows = match key_rows(&app, &user).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    // Rows that do not parse count too: a key the user has, whatever its state.
    let has_keys = !rows.is_empty();
    let existing = parsed_keys(rows);
    let proven = has_keys && key_proven(&app, &s, &user, body.proof.as_deref()).await;
    if has_keys && !proven {
        return touch_first();
    }
    let exclude = existing.iter().map(|(_, k)| k.cred_id().clone()).collect();
    let (options, state) = match wa.start_securitykey_registration(
        user_handle(&user),
        user.as_str(),
        user.as_str(),
        Some(exclude),
        None,
        None,
    ) {
        Ok(x) => x,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("cannot start: {e}")),
    };
    // The finish must know whether a key was touched here: a user may gain a first key
    // between this start and that finish (another tab, another ceremony).
    let id = match save_state(&app, &user, REGISTER, &Registration { state, proven }).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    // webauthn-rs asks, opportunistically, for credProtect "UV required"; Chromium
    // refuses that for a non-discoverable credential ("protection policy is
    // inconsistent"), so the request goes without it. User verification is still
    // requested ("preferred") and the result does not depend on the extension.
    let mut options = serde_json::to_value(&options).unwrap_or_default();
    if let Some(ext) = options
        .get_mut("publicKey")
        .and_then(|p| p.get_mut("extensions"))
        .and_then(|e| e.as_object_mut())
    {
        ext.remove("credentialProtectionPolicy");
        ext.remove("enforceCredentialProtectionPolicy");
    }
    Json(serde_json::json!({ "id": id, "options": options })).into_response()
}

#[derive(serde::Deserialize)]
pub(super) struct RegisterFinish {
    id: String,
    name: String,
    credential: RegisterPublicKeyCredential,
}

pub(super) async fn register_finish(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    JsonSession { session: _, user }: JsonSession,
    Json(body): Json<RegisterFinish>,
) -> Response {
    let wa = match webauthn(&app) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(Registration { state, proven }) = take_state::<Registration>(&app, &body.id, &user, REGISTER).await else {
        return err(
            StatusCode::BAD_REQUEST,
            "no such registration in progress (expired or used)",
        );
    };
    let key = match wa.finish_securitykey_registration(&body.credential, &state) {
        Ok(k) => k,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("registration refused: {e}")),
    };
    let cred_id = cred_id_b64(key.cred_id().as_ref());
    let Ok(json) = serde_json::to_string(&key) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let name = body.name.trim().to_owned();
    if !valid_key_name(&name) {
        return err(StatusCode::BAD_REQUEST, "a key name is 1 to 64 printable characters");
    }
    // An added key is a new way in: beside the first one, it is worth a look; and
    // beside one, it needs the touch of one (see `register_start`).
    let first = match app.gw.store.security_keys(&user).await {
        Ok(k) => k.is_empty(),
        Err(_) => return err(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
    };
    if !first && !proven {
        return touch_first();
    }
    if let Err(e) = app.gw.store.add_security_key(&user, &cred_id, &name, &json).await {
        return err(StatusCode::CONFLICT, e.to_string());
    }
    app.gw
        .audit(
            AuditEvent::new(
                "mfa.enroll",
                if first { Severity::Info } else { Severity::Warning },
                format!("security key {name:?}"),
            )
            .user(&user)
            .origin(&origin),
        )
        .await;
    Json(serde_json::json!({ "added": name })).into_response()
}

#[derive(serde::Deserialize)]
pub(super) struct RemoveForm {
    csrf: String,
    name: String,
    /// From `/keys/verify` (herse.js fills it in before the form is sent).
    #[serde(default)]
    proof: Option<String>,
}

pub(super) async fn remove(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    headers: HeaderMap,
    Form(f): Form<RemoveForm>,
) -> Response {
    let Some((s, _)) = session(&app, &headers, &origin).await else {
        return err(StatusCode::UNAUTHORIZED, "log in first");
    };
    if !super::pages::constant_time_eq(f.csrf.as_bytes(), s.csrf.as_bytes()) {
        return err(StatusCode::FORBIDDEN, "herse: missing or wrong CSRF token");
    }
    if password_expired(&app, &s.user).await {
        return err(StatusCode::FORBIDDEN, "your password has expired: change it first");
    }
    let Ok(user) = UserName::parse(&s.user) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    // Only someone holding one of the keys removes one: otherwise a TOTP code would be
    // enough to take a user's SSH logins back from their keys to TOTP.
    if !key_proven(&app, &s, &user, f.proof.as_deref()).await {
        return touch_first();
    }
    match app.gw.store.remove_security_key(&user, &f.name).await {
        Ok(true) => {
            app.gw
                .audit(
                    AuditEvent::new("mfa.remove", Severity::Warning, format!("security key {:?}", f.name))
                        .user(&user)
                        .origin(&origin),
                )
                .await;
            page(
                "Security key removed",
                "<p>Removed.</p><p><a href=\"/keys\">Back</a></p>",
            )
            .into_response()
        }
        Ok(false) => err(StatusCode::NOT_FOUND, "no such key"),
        Err(_) => err(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
    }
}

/// Check that the approval named by `token` may be given by this session: it exists,
/// has not expired or been given, and belongs to this user at this workstation.
async fn approval_for(app: &App, token: &str, s: &WebSession) -> Result<crate::store::Approval, String> {
    let hash = token_hash(token);
    let a = match app.gw.store.approval(&hash).await {
        Ok(Some(a)) => a,
        Ok(None) => return Err("no such approval".into()),
        Err(_) => return Err("the gateway cannot check approvals now".into()),
    };
    if a.user != s.user {
        return Err("this approval belongs to another user".into());
    }
    if a.workstation != s.workstation {
        return Err("this approval belongs to another workstation".into());
    }
    if a.approved_at.is_some() || a.consumed_at.is_some() {
        return Err("this approval was already used".into());
    }
    if a.expires_at <= now_micros() {
        return Err("this approval has expired".into());
    }
    Ok(a)
}

async fn refuse_approval(app: &App, origin: &Origin, s: &WebSession, reason: &str) -> Response {
    app.gw
        .audit(
            AuditEvent::new(
                "mfa.failure",
                Severity::Warning,
                format!("security-key approval refused: {reason}"),
            )
            .user(&s.user)
            .origin(origin),
        )
        .await;
    err(StatusCode::FORBIDDEN, format!("herse: {reason}"))
}

pub(super) async fn approve_page(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some((s, _)) = session(&app, &headers, &origin).await else {
        return (
            StatusCode::UNAUTHORIZED,
            page(
                "Log in first",
                "<p>Log in, then open the approval link again.</p><p><a href=\"/login\">Log in</a></p>",
            ),
        )
            .into_response();
    };
    if password_expired(&app, &s.user).await {
        return renew_first();
    }
    match approval_for(&app, &token, &s).await {
        Ok(a) => page(
            "Approve an SSH login",
            &format!(
                "<div id=\"herse\" data-csrf=\"{csrf}\" data-token=\"{token}\"></div>\
                 <p>{what} is waiting: <b>{user}</b> from {place}{to}. Approve only if \
                 you started it and your terminal shows the code <b id=\"code\">{code}</b>.</p>\
                 <p><button id=\"approve\">Approve with my security key</button></p>\
                 <p id=\"status\" role=\"status\"></p><script src=\"/static/herse.js\"></script>",
                csrf = esc(&s.csrf),
                token = esc(&token),
                user = esc(&s.user),
                place = esc(&s.workstation),
                what = if a.target == super::pages::API_APPROVAL_TARGET {
                    "A <code>hersectl login</code>"
                } else {
                    "An SSH login"
                },
                to = if a.target == super::pages::API_APPROVAL_TARGET {
                    String::new()
                } else {
                    format!(" to <b>{}@{}</b>", esc(&a.login), esc(&a.target))
                },
                code = esc(&a.short_code)
            ),
        )
        .into_response(),
        Err(reason) => refuse_approval(&app, &origin, &s, &reason).await,
    }
}

pub(super) async fn approve_start(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    Path(token): Path<String>,
    JsonSession { session: s, user }: JsonSession,
) -> Response {
    if let Err(reason) = approval_for(&app, &token, &s).await {
        return refuse_approval(&app, &origin, &s, &reason).await;
    }
    match start_assertion(&app, &user, &approval_purpose(&token)).await {
        Ok(r) => r,
        Err(Assertion::NoKey) => refuse_approval(&app, &origin, &s, "no security key enrolled").await,
        Err(Assertion::Response(r)) => r,
    }
}

/// Why a security-key challenge could not start.
pub(super) enum Assertion {
    NoKey,
    Response(Response),
}

/// Start a security-key assertion for `user`, for one `purpose`: the challenge (JSON for
/// herse.js) and its state, kept single-use in the store.
pub(super) async fn start_assertion(app: &App, user: &UserName, purpose: &str) -> Result<Response, Assertion> {
    let wa = webauthn(app).map_err(Assertion::Response)?;
    let keys = stored_keys(app, user).await.map_err(Assertion::Response)?;
    if keys.is_empty() {
        return Err(Assertion::NoKey);
    }
    let creds: Vec<SecurityKey> = keys.into_iter().map(|(_, k)| k).collect();
    let (options, state) = wa
        .start_securitykey_authentication(&creds)
        .map_err(|e| Assertion::Response(err(StatusCode::BAD_REQUEST, format!("cannot start: {e}"))))?;
    let id = save_state(app, user, purpose, &state)
        .await
        .map_err(Assertion::Response)?;
    Ok(Json(serde_json::json!({ "id": id, "options": options })).into_response())
}

#[derive(serde::Deserialize)]
pub(super) struct ApproveFinish {
    pub(super) id: String,
    pub(super) credential: PublicKeyCredential,
}

/// Finish a security-key assertion for `user` and `purpose`: the state is taken (used
/// once), the signature checked, and the key must still be enrolled now (it may have
/// been removed since the start); its counter is saved. The key's name, or the reason.
pub(super) async fn finish_assertion(
    app: &App,
    user: &UserName,
    purpose: &str,
    body: &ApproveFinish,
) -> Result<String, String> {
    let wa = app
        .gw
        .webauthn
        .as_deref()
        .ok_or_else(|| "security keys are not configured".to_owned())?;
    let Some(state) = take_state::<SecurityKeyAuthentication>(app, &body.id, user, purpose).await else {
        return Err("no such approval ceremony (expired or used)".into());
    };
    let result = wa
        .finish_securitykey_authentication(&body.credential, &state)
        .map_err(|e| format!("security key refused: {e}"))?;
    let cred_id = cred_id_b64(result.cred_id().as_ref());
    let rows = app.gw.store.security_keys(user).await.unwrap_or_default();
    let Some(row) = rows.into_iter().find(|r| r.credential_id == cred_id) else {
        return Err("this security key is not enrolled".into());
    };
    // webauthn-rs checked the signature counter against the key as stored when the
    // ceremony began; another use may have saved a higher one since. So the counter must
    // also pass the key as stored now, and the save is conditional on nobody saving in
    // between: of a cloned key racing the real one, one use is refused.
    let unreadable = || "this security key's stored record is unreadable".to_owned();
    let mut key = serde_json::from_str::<SecurityKey>(&row.key_json).map_err(|_| unreadable())?;
    let stored = stored_counter(&row.key_json).ok_or_else(unreadable)?;
    // As WebAuthn's rule, against the stored count: once either side counts, the count
    // must grow (a clone answering 0 after the real key counted is refused too).
    let used = u64::from(result.counter());
    if (used > 0 || stored > 0) && used <= stored {
        return Err("the security key's signature counter did not advance: it may have been cloned".into());
    }
    key.update_credential(&result);
    let json = serde_json::to_string(&key).map_err(|_| "cannot save the security key".to_owned())?;
    match app.gw.store.update_security_key(&cred_id, &row.key_json, &json).await {
        Ok(true) => Ok(row.name),
        Ok(false) => Err("this security key was used twice at once: try again".into()),
        Err(_) => Err("the gateway cannot save the security key's use now".into()),
    }
}

/// The signature counter of a stored key (`SecurityKey` keeps it private; its JSON is
/// `{"cred": {"counter": N, ...}}`).
fn stored_counter(key_json: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(key_json)
        .ok()?
        .pointer("/cred/counter")?
        .as_u64()
}

pub(super) async fn approve_finish(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    Path(token): Path<String>,
    JsonSession { session: s, user }: JsonSession,
    Json(body): Json<ApproveFinish>,
) -> Response {
    if let Err(reason) = approval_for(&app, &token, &s).await {
        return refuse_approval(&app, &origin, &s, &reason).await;
    }
    let key_name = match finish_assertion(&app, &user, &approval_purpose(&token), &body).await {
        Ok(name) => name,
        Err(reason) => return refuse_approval(&app, &origin, &s, &reason).await,
    };
    match app.gw.store.approve(&token_hash(&token)).await {
        Ok(true) => {
            app.gw
                .audit(
                    AuditEvent::new(
                        "mfa.approve",
                        Severity::Info,
                        format!("SSH login approved with security key {key_name:?}"),
                    )
                    .user(&user)
                    .origin(&origin),
                )
                .await;
            Json(serde_json::json!({ "approved": true })).into_response()
        }
        _ => refuse_approval(&app, &origin, &s, "this approval has expired or was already used").await,
    }
}

pub(super) async fn script() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("herse.js"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::stored_counter;

    #[test]
    fn the_stored_counter_is_read_or_nothing() {
        assert_eq!(stored_counter(r#"{"cred":{"cred_id":"x","counter":7}}"#), Some(7));
        assert_eq!(stored_counter(r#"{"cred":{"cred_id":"x"}}"#), None);
        assert_eq!(stored_counter(r#"{"cred":{"counter":-1}}"#), None);
        assert_eq!(stored_counter("not json"), None);
    }
}
