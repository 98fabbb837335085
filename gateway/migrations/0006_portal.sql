-- The web portal: passwords (argon2id, PHC strings), their lockout, and portal sessions
-- (the cookie's token is stored hashed).
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN password_set_at BIGINT;
ALTER TABLE users ADD COLUMN login_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN login_locked_until BIGINT;

CREATE TABLE web_sessions (
    token_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users (name),
    workstation TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_user ON web_sessions (user_name);
