-- Gateway nodes sharing this database, for telling a stopped node from a live one.
-- Each node writes `seen_at` (Unix microseconds) every few seconds. Another node that
-- finds it silent past its `cluster.node_timeout` closes its open sessions and sets
-- `presumed_stopped_at`. A node that was only slow sees that mark at its next
-- heartbeat and ends the sessions whose rows were closed. `instance` is random per
-- process, so two processes running under one node name show up.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL,
    presumed_stopped_at BIGINT
);
