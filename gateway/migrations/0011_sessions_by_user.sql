-- Live sessions of one user, on every node: counted against a role's max_connections
-- at each session start.
CREATE INDEX sessions_user_live ON sessions (user_name, ended_at);
