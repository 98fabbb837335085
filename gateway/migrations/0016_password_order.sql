-- A user's own change of password is told apart from an administrator's reset
-- (`passwords.min_age` applies only after the former), and the history is ordered by a
-- per-user counter, not by the clocks of the nodes that wrote it. Rows from before take
-- their time as their place; later ones follow them.
ALTER TABLE users ADD COLUMN password_self_set_at BIGINT;
ALTER TABLE password_history ADD COLUMN n BIGINT;
UPDATE password_history SET n = retired_at;
CREATE INDEX password_history_order ON password_history (user_name, n);
