-- A heartbeat counter per node. A node is judged silent when its counter has not moved
-- for `cluster.node_timeout` on the observing node's own monotonic clock, so nodes whose
-- wall clocks disagree neither reap a live node (its `seen_at` looking old) nor spare a
-- dead one (its `seen_at` in the future). `seen_at` stays, for display.
ALTER TABLE nodes ADD COLUMN beats BIGINT NOT NULL DEFAULT 0;
