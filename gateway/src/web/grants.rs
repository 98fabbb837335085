#![allow(clippy::result_large_err)] // handlers return an axum Response early; not a library boundary
//! Access grants on the portal: everyone sees their own requests; managers see the
//! requests waiting for their decision, approve one with a security-key touch (a
//! WebAuthn assertion bound to that grant) and deny with a reason. The decisions go
//! through `crate::grants`, under the same permission check as `hersectl`.

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::keys::{err, finish_assertion, start_assertion, stored_keys, ApproveFinish, Assertion, JsonSession};
use super::pages::{esc, form_session, page, page_session, when, App};
use crate::access::{Caller, Person};
use crate::grants::{self, Listing};
use crate::ident::UserName;
use crate::origin::Origin;
use crate::store::{AuditEvent, GrantRow, Severity};

/// The ceremony purpose of one grant approval (a state for one grant approves no other).
fn purpose(id: &str) -> String {
    format!("grant-approve:{id}")
}

async fn caller(app: &App, user: &UserName) -> Result<Caller, Response> {
    let roles = app
        .gw
        .store
        .roles_of(user)
        .await
        .map_err(|_| err(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"))?;
    let policy = app.gw.policy.load_full();
    Ok(Caller::Person(Person::new(&policy, user.clone(), &roles)))
}

fn row(g: &GrantRow, actions: &str) -> String {
    let approvals: Vec<_> = g.approvals.iter().map(|a| a.approver.as_str()).collect();
    format!(
        "<tr><td><code>{id}</code></td><td>{who}</td><td>{scope}</td><td>{dur}</td><td>{reason}</td>\
         <td>{status}{by}</td><td>{ends}</td><td>{actions}</td></tr>",
        id = esc(&g.id),
        who = esc(&g.requester),
        scope = esc(&grants::scope(g)),
        dur =
            esc(&humantime::format_duration(std::time::Duration::from_secs(g.duration_secs.max(0) as u64)).to_string()),
        reason = esc(&g.reason),
        status = esc(g.status.as_str()),
        by = if approvals.is_empty() {
            String::new()
        } else {
            format!(" (approved by {})", esc(&approvals.join(", ")))
        },
        ends = g.expires_at.map(when).unwrap_or_default(),
    )
}

const HEAD: &str = "<tr><th>Id</th><th>Requester</th><th>Scope</th><th>Duration</th><th>Reason</th>\
                    <th>Status</th><th>Ends</th><th></th></tr>";

/// `GET /grants`.
pub(super) async fn grants_page(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    headers: HeaderMap,
) -> Response {
    let (s, user) = match page_session(&app, &headers, &origin).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let caller = match caller(&app, &user).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let store = &app.gw.store;
    let pending = grants::list(store, &caller, Listing::Pending, 200)
        .await
        .unwrap_or_default();
    let mine = grants::list(store, &caller, Listing::Mine, 50)
        .await
        .unwrap_or_default();
    let has_key = !stored_keys(&app, &user).await.unwrap_or_default().is_empty();
    let csrf = esc(&s.csrf);
    let decide = |g: &GrantRow| {
        let id = esc(&g.id);
        let approve = if has_key {
            format!("<button id=\"approve-{id}\" data-grant=\"{id}\">Approve with my security key</button>")
        } else {
            "<small>(enrol a <a href=\"/keys\">security key</a> to approve here)</small>".to_owned()
        };
        format!(
            "{approve}<form method=\"post\" action=\"/grants/{id}/deny\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input name=\"reason\" placeholder=\"reason\" required maxlength=\"500\"><button>Deny</button></form>"
        )
    };
    let waiting = if pending.is_empty() {
        "<p>No request waits for your decision.</p>".to_owned()
    } else {
        format!(
            "<table>{HEAD}{}</table>",
            pending.iter().map(|g| row(g, &decide(g))).collect::<String>()
        )
    };
    let own = if mine.is_empty() {
        "<p>You have no requests. Ask with <code>hersectl grants request</code>.</p>".to_owned()
    } else {
        format!(
            "<table>{HEAD}{}</table>",
            mine.iter().map(|g| row(g, "")).collect::<String>()
        )
    };
    page(
        "Access grants",
        &format!(
            "<div id=\"herse\" data-csrf=\"{csrf}\"></div><h2>Waiting for your decision</h2>{waiting}\
             <p id=\"status\" role=\"status\"></p><h2>Your requests</h2>{own}\
             <p><a href=\"/\">Back</a></p><script src=\"/static/herse.js\"></script>"
        ),
    )
    .into_response()
}

/// `POST /grants/{id}/approve/start`: a WebAuthn challenge for this grant's approval.
pub(super) async fn approve_start(
    State(app): State<App>,
    Path(id): Path<String>,
    JsonSession { session: _, user }: JsonSession,
) -> Response {
    let caller = match caller(&app, &user).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    // Refuse before the touch what the touch could not make allowed.
    let g = match grants::show(&app.gw.store, &caller, &id).await {
        Ok(g) => g,
        Err(e) => return err(StatusCode::FORBIDDEN, format!("herse: {e}")),
    };
    let (Ok(tier), Ok(requester)) = (crate::ident::TierName::parse(&g.tier), UserName::parse(&g.requester)) else {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "herse: stored grant is malformed");
    };
    if let Err(r) = crate::access::check(
        &caller,
        &crate::access::Action::ApproveGrant {
            tier: &tier,
            requester: &requester,
        },
    ) {
        return err(StatusCode::FORBIDDEN, format!("herse: refused: {r}"));
    }
    match start_assertion(&app, &user, &purpose(&g.id)).await {
        Ok(r) => r,
        Err(Assertion::NoKey) => err(StatusCode::FORBIDDEN, "herse: enrol a security key to approve here"),
        Err(Assertion::Response(r)) => r,
    }
}

async fn refuse(app: &App, id: &str, user: &UserName, origin: &Origin, reason: String) -> Response {
    app.gw
        .audit(
            AuditEvent::new(
                "grant.approve.failure",
                Severity::Warning,
                format!("{id}: portal approval refused: {reason}"),
            )
            .user(user)
            .origin(origin),
        )
        .await;
    err(StatusCode::FORBIDDEN, format!("herse: {reason}"))
}

/// `POST /grants/{id}/approve/finish`: the touch, then the approval.
pub(super) async fn approve_finish(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    Path(id): Path<String>,
    JsonSession { session: _, user }: JsonSession,
    Json(body): Json<ApproveFinish>,
) -> Response {
    let refuse = |reason: String| refuse(&app, &id, &user, &origin, reason);
    let key_name = match finish_assertion(&app, &user, &purpose(&id), &body).await {
        Ok(name) => name,
        Err(reason) => return refuse(reason).await,
    };
    let caller = match caller(&app, &user).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let policy = app.gw.policy.load_full();
    let comment = format!("on the portal with security key {key_name:?}");
    match grants::approve(&app.gw.store, &policy, &caller, &id, &comment).await {
        Ok(g) => Json(serde_json::json!({ "status": g.status, "id": g.id })).into_response(),
        Err(e) => refuse(e.to_string()).await,
    }
}

#[derive(serde::Deserialize)]
pub(super) struct DenyForm {
    csrf: String,
    reason: String,
}

/// `POST /grants/{id}/deny` (form).
pub(super) async fn deny(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<DenyForm>,
) -> Response {
    let (_, user) = match form_session(&app, &headers, &origin, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let caller = match caller(&app, &user).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match grants::deny(&app.gw.store, &caller, &id, &f.reason).await {
        Ok(g) => page(
            "Request denied",
            &format!(
                "<p>Request <code>{}</code> denied.</p><p><a href=\"/grants\">Back</a></p>",
                esc(&g.id)
            ),
        )
        .into_response(),
        Err(e) => (
            StatusCode::FORBIDDEN,
            page(
                "Not denied",
                &format!("<p>{}</p><p><a href=\"/grants\">Back</a></p>", esc(&e.to_string())),
            ),
        )
            .into_response(),
    }
}
