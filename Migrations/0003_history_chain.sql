-- Tamper-evident history: two SHA-256 hash chains over the rounds (see Sources/RotaStore/HistoryChain.swift).
--
-- The round chain links rounds in insertion order (round.id): when a round's intent is recorded,
--   hash = SHA-256("rota.round.v1" ‖ prev_hash ‖ identity fields ‖ intent_hash), intent_hash = SHA-256 of the intent text.
-- The outcome chain links outcomes in the order they are recorded (outcome_seq): when the outcome is recorded,
--   actions_hash = SHA-256 of the round's action rows (job keys, not job ids) in seq order,
--   outcome_hash = SHA-256("rota.outcome.v1" ‖ outcome_prev ‖ hash ‖ outcome_seq ‖ finished/counts/error ‖ actions_hash).
-- Rounds recorded before this migration keep NULL hashes: `rota history verify` reports them as
-- unchained, not as tampered. Only those can lack hashes: rows up to `unchained_through` (the
-- highest round id at migration time) that come before the first chained round.
ALTER TABLE round ADD COLUMN prev_hash BLOB;
ALTER TABLE round ADD COLUMN intent_hash BLOB;
ALTER TABLE round ADD COLUMN hash BLOB;
ALTER TABLE round ADD COLUMN outcome_seq INTEGER;
ALTER TABLE round ADD COLUMN outcome_prev BLOB;
ALTER TABLE round ADD COLUMN actions_hash BLOB;
ALTER TABLE round ADD COLUMN outcome_hash BLOB;

-- The heads of both chains: the hash of the last round and of the last outcome ever appended,
-- pruned or not. A deleted newest round (or outcome) shows as a head nothing leads to. Both chains
-- start from 32 zero bytes.
CREATE TABLE history_chain (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    round_head   BLOB    NOT NULL,
    outcome_head BLOB    NOT NULL,
    -- Outcomes appended so far: the last outcome_seq given out.
    outcome_seq  INTEGER NOT NULL,
    -- Rounds with an id up to this one were recorded before the chain existed.
    unchained_through INTEGER NOT NULL
);
INSERT INTO history_chain (id, round_head, outcome_head, outcome_seq, unchained_through)
SELECT 1, zeroblob(32), zeroblob(32), 0, COALESCE(MAX(id), 0) FROM round;

-- What pruning removed from the chains: one row per gap between remaining entries. The entry
-- after the gap links to `to_hash` (the last pruned entry's hash), the entry before it has hash
-- `from_hash` (32 zero bytes: the start of the chain). Rewritten by every prune.
CREATE TABLE history_chain_bridge (
    chain     TEXT    NOT NULL CHECK (chain IN ('round', 'outcome')),
    to_hash   BLOB    NOT NULL,
    from_hash BLOB    NOT NULL,
    pruned    INTEGER NOT NULL,
    PRIMARY KEY (chain, to_hash)
) WITHOUT ROWID;
