-- Portable SQL: runs unchanged on SQLite and PostgreSQL (sqlx Any driver).
-- Times are Unix microseconds (BIGINT); identifiers are TEXT.
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    status_reason TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE user_keys (
    fingerprint TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users (name),
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL,
    added_at BIGINT NOT NULL
);
CREATE INDEX user_keys_user ON user_keys (user_name);

CREATE TABLE role_bindings (
    user_name TEXT NOT NULL REFERENCES users (name),
    role TEXT NOT NULL,
    PRIMARY KEY (user_name, role)
);

CREATE TABLE gateway_keys (
    name TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    user_name TEXT NOT NULL,
    target TEXT NOT NULL,
    tier TEXT NOT NULL,
    login TEXT NOT NULL,
    client_addr TEXT NOT NULL,
    recording TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason TEXT,
    kill_requested_at BIGINT,
    kill_requested_by TEXT
);
CREATE INDEX sessions_live ON sessions (node, ended_at);

CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    user_name TEXT,
    session_id TEXT,
    client_addr TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at);
