-- Workstations: the WireGuard peers of the gateway, each bound to one user.
-- A revoked workstation keeps its row (audit history); its key can never come back.
CREATE TABLE workstations (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users (name),
    public_key TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    key_rotated_at BIGINT,
    revoked_at BIGINT,
    revoked_by TEXT,
    revoke_reason TEXT,
    last_handshake_at BIGINT,
    rx_bytes BIGINT NOT NULL DEFAULT 0,
    tx_bytes BIGINT NOT NULL DEFAULT 0
);
-- An address belongs to at most one live workstation.
CREATE UNIQUE INDEX workstations_live_address ON workstations (address) WHERE revoked_at IS NULL;

-- Keys a workstation held before a rotation: never accepted again.
CREATE TABLE workstation_retired_keys (
    public_key TEXT PRIMARY KEY,
    workstation TEXT NOT NULL REFERENCES workstations (name),
    retired_at BIGINT NOT NULL
);

ALTER TABLE sessions ADD COLUMN workstation TEXT;
ALTER TABLE audit_events ADD COLUMN workstation TEXT;
