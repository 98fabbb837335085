-- Where each node last heard each WireGuard peer, and when that peer last completed a
-- handshake with it. A node that restarts has lost its WireGuard sessions while its
-- workstations still hold theirs; it sends a handshake to every peer whose session may
-- still be live (a handshake within WireGuard's 180 s reject time) at the endpoint saved
-- here, instead of leaving it to the workstation's timers (15 s or more with traffic).
-- Per node: a handshake from another node's address would move a workstation's traffic.
-- `hersectl nodes remove` deletes a node's rows with it.
CREATE TABLE wireguard_endpoints (
    node TEXT NOT NULL,
    public_key TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    handshake_at BIGINT NOT NULL,
    PRIMARY KEY (node, public_key)
);
