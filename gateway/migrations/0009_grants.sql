-- Access grants: requested by an engineer, approved by managers, bounded in time. A
-- session opened under a grant names it, and ends when the grant does.
CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL REFERENCES users (name),
    tier TEXT NOT NULL,
    target TEXT,
    login TEXT,
    duration_secs BIGINT NOT NULL,
    reason TEXT NOT NULL,
    -- pending | active | denied | revoked | expired | lapsed (pending too long)
    status TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    starts_at BIGINT,
    expires_at BIGINT,
    ended_at BIGINT,
    ended_by TEXT,
    end_note TEXT,
    -- When the requester was shown the outcome at a login.
    notified_at BIGINT
);
CREATE INDEX grants_requester ON grants (requester, status);
CREATE INDEX grants_status ON grants (status, expires_at);

CREATE TABLE grant_approvals (
    grant_id TEXT NOT NULL REFERENCES grants (id),
    approver TEXT NOT NULL,
    -- 1 when the approver held the tier's external approver role at the time.
    external BIGINT NOT NULL,
    comment TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (grant_id, approver)
);

ALTER TABLE sessions ADD COLUMN grant_id TEXT;

-- A suspension may end by itself.
ALTER TABLE users ADD COLUMN suspended_until BIGINT;
