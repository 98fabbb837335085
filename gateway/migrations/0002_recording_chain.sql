-- The head of each gateway node's chain of recordings: every new recording names the
-- previous one (session id and header hash), so a deleted recording leaves a gap.
CREATE TABLE recording_chain (
    node TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    header_hash TEXT NOT NULL
);
