-- Authenticated prunes (see Sources/RotaStore/HistoryChain.swift, "Prune records").
--
-- Before this migration a prune's bridges (history_chain_bridge) were trusted as they were: a
-- round deleted by hand and replaced by two bridge rows verified, with an unchanged head. Now each
-- prune appends a record to a fourth chain, over the bridge set it left:
--   bridges_hash = SHA-256("rota.bridges.v1" ‖ every bridge, ordered by chain and to_hash ‖ count)
--   hash         = SHA-256("rota.prune.v1" ‖ prev_hash ‖ seq ‖ at_ms ‖ rounds ‖ actions ‖ events ‖ bridges_hash)
-- and, made with the pool's history key, `tag` = the key's tag over `hash` ("v1:KEYID:MAC").
-- Verification requires the bridge rows to be exactly the set the newest record covers.
CREATE TABLE history_prune (
    seq          INTEGER PRIMARY KEY,
    at_ms        INTEGER NOT NULL,
    -- What this prune deleted.
    rounds       INTEGER NOT NULL,
    actions      INTEGER NOT NULL,
    events       INTEGER NOT NULL,
    bridges_hash BLOB    NOT NULL,
    prev_hash    BLOB    NOT NULL,
    hash         BLOB    NOT NULL,
    -- NULL when the prune was made without a history key.
    tag          TEXT
);

-- The prune chain's head and length; `legacy_bridges` counts the bridges written before this
-- migration, which stay accepted (unauthenticated, as before) until the next prune covers them.
ALTER TABLE history_chain ADD COLUMN prune_head BLOB NOT NULL
    DEFAULT X'0000000000000000000000000000000000000000000000000000000000000000';
ALTER TABLE history_chain ADD COLUMN prune_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE history_chain ADD COLUMN legacy_bridges INTEGER NOT NULL DEFAULT 0;
UPDATE history_chain SET legacy_bridges = (SELECT COUNT(*) FROM history_chain_bridge);
