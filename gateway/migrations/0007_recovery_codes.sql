-- One-time recovery codes, in place of a second factor when the authenticator is lost.
-- Stored as SHA-256 of "user:code" (the codes are 60 random bits).
CREATE TABLE recovery_codes (
    user_name TEXT NOT NULL REFERENCES users (name),
    code_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (user_name, code_hash)
);
