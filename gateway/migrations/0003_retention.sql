-- Retention: a recording under legal hold is never purged; a purged one keeps its row
-- (so the chain of recordings shows it was removed by policy, not lost).
ALTER TABLE sessions ADD COLUMN legal_hold BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN purged_at BIGINT;
