-- The audit log as a hash chain (see gateway/src/audit_log/chain.rs for the encoding).
-- Every event gets a contiguous sequence number, the hash of the event before it and
-- its own hash. Rows written before this migration are chained by `Store::migrate`
-- (in `at` order), so their columns stay NULL here.
ALTER TABLE audit_events ADD COLUMN seq BIGINT;
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_events ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX audit_events_seq ON audit_events (seq);

-- The chain's head: one row (id = 1). An append starts its transaction by updating it,
-- which serialises appends across processes and nodes sharing the database.
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO audit_head (id, seq, hash, updated_at)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

-- Heads signed with the gateway's audit key (hex Ed25519 signature).
CREATE TABLE audit_checkpoints (
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    signed_at BIGINT NOT NULL,
    node TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (seq, node)
);
