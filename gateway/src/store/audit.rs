use sqlx::Row;

use super::{now_micros, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Alert,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Alert => "alert",
        }
    }
}

/// A security event. `detail` must never contain a credential.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub kind: &'static str,
    pub severity: Severity,
    pub user: Option<String>,
    pub session: Option<String>,
    pub client_addr: Option<String>,
    /// The enrolled workstation the connection came through, if any.
    pub workstation: Option<String>,
    pub detail: String,
}

impl AuditEvent {
    pub fn new(kind: &'static str, severity: Severity, detail: impl Into<String>) -> Self {
        Self {
            kind,
            severity,
            user: None,
            session: None,
            client_addr: None,
            workstation: None,
            detail: detail.into(),
        }
    }
    pub fn user(mut self, u: impl ToString) -> Self {
        self.user = Some(u.to_string());
        self
    }
    pub fn session(mut self, s: impl ToString) -> Self {
        self.session = Some(s.to_string());
        self
    }
    pub fn client(mut self, a: impl ToString) -> Self {
        self.client_addr = Some(a.to_string());
        self
    }
    pub fn workstation(mut self, w: impl ToString) -> Self {
        self.workstation = Some(w.to_string());
        self
    }
    /// Client address and workstation of a connection.
    pub fn origin(mut self, o: &crate::origin::Origin) -> Self {
        self.client_addr = Some(o.addr.to_string());
        self.workstation = o.workstation().map(|w| w.to_string());
        self
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub id: String,
    pub at: i64,
    pub kind: String,
    pub severity: String,
    pub user: Option<String>,
    pub session: Option<String>,
    pub client_addr: Option<String>,
    pub workstation: Option<String>,
    pub detail: String,
}

impl Store {
    pub async fn audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (id, at, kind, severity, user_name, session_id, client_addr, workstation, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(crate::ident::SessionId::random().to_string())
        .bind(now_micros())
        .bind(e.kind)
        .bind(e.severity.as_str())
        .bind(e.user.as_deref())
        .bind(e.session.as_deref())
        .bind(e.client_addr.as_deref())
        .bind(e.workstation.as_deref())
        .bind(&e.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn audit_events(&self, kind: Option<&str>, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        sqlx::query(
            "SELECT id, at, kind, severity, user_name, session_id, client_addr, detail, workstation FROM audit_events \
             WHERE ($1 IS NULL OR kind = $1) ORDER BY at DESC LIMIT $2",
        )
        .bind(kind)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(AuditRow {
                id: r.try_get(0)?,
                at: r.try_get(1)?,
                kind: r.try_get(2)?,
                severity: r.try_get(3)?,
                user: r.try_get(4)?,
                session: r.try_get(5)?,
                client_addr: r.try_get(6)?,
                detail: r.try_get(7)?,
                workstation: r.try_get(8)?,
            })
        })
        .collect()
    }
}
