//! `GET /api/v1/recordings/{id}/file?offset=N[&index=1]`: a recording's bytes for a
//! remote auditor's `hersectl`, which verifies and (with its own age identity) decrypts
//! them on its side. Same bearer token as `POST /api/v1/call`; needs ReadRecordings.
//!
//! At most [`MAX_CHUNK`] bytes from `offset` per request; `x-herse-size` says how long
//! the file was when opened, so the client asks again from where it stopped (a live
//! recording grows: `sessions watch` polls with the growing offset). The first request of
//! a download (at any offset) is audited as `recording.read`, not each chunk or poll.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::pages::{api_session, App};
use crate::access::{self, Action, Caller, Person};
use crate::ident::SessionId;
use crate::origin::Origin;
use crate::store::{AuditEvent, Severity};

/// Most bytes one response carries (bounds the time a connection is held).
pub const MAX_CHUNK: u64 = 16 << 20;
/// The header naming the file's length when the response was made.
pub const SIZE_HEADER: &str = "x-herse-size";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileQuery {
    #[serde(default)]
    offset: u64,
    /// `1`: the `.herseidx` seek index instead of the recording.
    #[serde(default)]
    index: u8,
}

fn fail(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into(), "kind": kind })),
    )
        .into_response()
}

pub(super) async fn recording_file(
    State(app): State<App>,
    Extension(origin): Extension<Origin>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    headers: HeaderMap,
) -> Response {
    let (_, user) = match api_session(&app, &headers, &origin).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // The id only ever selects a database row; the path comes from that row.
    let Ok(sid) = SessionId::parse(&id) else {
        return fail(StatusCode::BAD_REQUEST, "invalid", "not a session id");
    };
    let roles = match app.gw.store.roles_of(&user).await {
        Ok(r) => r,
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    let reader = user.to_string();
    let caller = Caller::Person(Person::new(&app.gw.policy.load_full(), user, &roles));
    if let Err(r) = access::check(&caller, &Action::ReadRecordings) {
        return fail(StatusCode::FORBIDDEN, "refused", format!("refused: {r}"));
    }
    let row = match app.gw.store.session(&sid).await {
        Ok(Some(r)) if r.purged_at.is_none() => r,
        Ok(_) => {
            return fail(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no recording for session {sid}"),
            )
        }
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    let recording = std::path::PathBuf::from(&row.recording);
    let path = if q.index == 1 {
        session_recordings::format::index_path(&recording)
    } else {
        recording
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no such file for session {sid} on this node"),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot open recording");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot open the recording",
            );
        }
    };
    let size = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot read the recording",
            )
        }
    };
    if q.offset > size {
        return fail(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "invalid",
            format!("offset past the end ({size} bytes)"),
        );
    }
    if q.offset > 0 && file.seek(std::io::SeekFrom::Start(q.offset)).await.is_err() {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot read the recording",
        );
    }
    // The first request of a read, at whatever offset it starts (the index holds no
    // content); not each chunk or poll.
    if q.index != 1 && app.gw.recording_reads.needs_audit(&reader, sid.as_str()) {
        let e = AuditEvent::new(
            "recording.read",
            Severity::Info,
            format!("downloaded by {}", caller.label()),
        )
        .session(&sid)
        .origin(&origin);
        if app.gw.store.audit(&e).await.is_err() {
            // Reading without the audit trail would be a read nobody can see.
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        app.gw.recording_reads.audited(&reader, sid.as_str());
    }
    let len = (size - q.offset).min(MAX_CHUNK);
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file.take(len)));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::HeaderName::from_static(SIZE_HEADER), size.to_string()),
        ],
        body,
    )
        .into_response()
}
