-- WebAuthn security keys, their ceremony states (single use), and the one-time
-- approvals an SSH login waits on.
CREATE TABLE security_keys (
    credential_id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users (name),
    name TEXT NOT NULL,
    key_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    UNIQUE (user_name, name)
);

CREATE TABLE webauthn_states (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    purpose TEXT NOT NULL,
    state_json TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE ssh_approvals (
    token_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users (name),
    workstation TEXT NOT NULL,
    -- What the approval is for, shown on the approval page.
    target TEXT NOT NULL,
    login TEXT NOT NULL,
    short_code TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    approved_at BIGINT,
    consumed_at BIGINT
);
