-- Live sessions of one user, on every node, are counted against a role's
-- max_connections at each session start. `ends_by` (Unix microseconds) is when the
-- session must have ended (its maximum length): a row a crashed node left open stops
-- counting then, so a node that never comes back cannot lock its users out.
ALTER TABLE sessions ADD COLUMN ends_by BIGINT;
CREATE INDEX sessions_user_live ON sessions (user_name, ended_at);
