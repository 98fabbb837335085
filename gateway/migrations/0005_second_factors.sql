-- Second factors. TOTP secrets are sealed with the gateway's user-secrets key; a code's
-- time step is accepted once (last_step only grows).
CREATE TABLE totp (
    user_name TEXT PRIMARY KEY REFERENCES users (name),
    sealed_secret TEXT NOT NULL,
    last_step BIGINT NOT NULL DEFAULT 0,
    enrolled_at BIGINT NOT NULL
);

-- Consecutive second-factor failures and the lockout they caused.
ALTER TABLE users ADD COLUMN mfa_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN mfa_locked_until BIGINT;

-- When a user last proved a second factor from a workstation ('loopback' for the local
-- admin listener), for roles that remember it for a while.
CREATE TABLE mfa_proofs (
    user_name TEXT NOT NULL REFERENCES users (name),
    workstation TEXT NOT NULL,
    proved_at BIGINT NOT NULL,
    PRIMARY KEY (user_name, workstation)
);
