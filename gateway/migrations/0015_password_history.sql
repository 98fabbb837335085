-- Portal passwords a user retired, the newest `passwords.history` kept (argon2id PHC
-- strings, as `users.password_hash`): a change on the portal may not bring one back,
-- which would make A -> B -> A renew an old secret.
CREATE TABLE password_history (
    user_name TEXT NOT NULL REFERENCES users (name),
    password_hash TEXT NOT NULL,
    retired_at BIGINT NOT NULL
);
CREATE INDEX password_history_user ON password_history (user_name, retired_at);
