-- The pool's plan (B1): producer definitions live in Redis with one pool-wide revision; every
-- node records the pool's change log here. `producer_revision.revision` is then the pool
-- revision at which that definition was written: revision N names the same definition on every
-- node.

-- Every change of the pool's plan as the change log carried it: created, updated, retired,
-- paused, resumed, triggered. Idempotent by the log entry's ID.
CREATE TABLE plan_event (
    id        INTEGER PRIMARY KEY,
    pool      TEXT    NOT NULL,
    -- The change log (Redis stream) entry ID; NULL for a definition learnt from the plan itself
    -- (its log entry was trimmed before this node read it).
    entry_id  TEXT,
    producer  TEXT    NOT NULL,
    kind      TEXT    NOT NULL CHECK (kind IN ('created', 'updated', 'retired', 'paused', 'resumed', 'triggered')),
    -- The pool's plan revision after the change (pause, resume and trigger leave it unchanged).
    revision  INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    at_ms     INTEGER NOT NULL,
    reason    TEXT,
    -- Pauses: until when (Unix ms), and whether the producer's jobs are stopped.
    until_ms  INTEGER,
    stop_jobs INTEGER,
    UNIQUE (pool, entry_id)
);
CREATE INDEX plan_event_by_producer ON plan_event (pool, producer, at_ms);

-- What this node last applied from its plan files (`rota run --plans`): the digest of the files'
-- producers and the pool revision it saw then. A node whose files still have that digest while
-- the pool moved on reports plan drift instead of writing its files over the newer plan.
CREATE TABLE node_plan (
    pool          TEXT    PRIMARY KEY,
    files_digest  TEXT    NOT NULL,
    pool_revision INTEGER NOT NULL,
    at_ms         INTEGER NOT NULL
);

-- Why an action was taken: retired, paused (more reasons come with the audit history work).
-- Chained when set: rounds recorded before this column verify as they did.
ALTER TABLE action ADD COLUMN reason TEXT;

-- Pause and retire events with their actors, next to the rounds they caused.
CREATE VIEW producer_events AS
SELECT pool, producer, kind, revision, actor, strftime('%Y-%m-%dT%H:%M:%fZ', at_ms / 1000.0, 'unixepoch') AS at,
       reason, CASE WHEN until_ms IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', until_ms / 1000.0, 'unixepoch') END AS until,
       stop_jobs, entry_id
FROM plan_event;

DROP VIEW job_timeline;
CREATE VIEW job_timeline AS
SELECT j.key AS job, a.at_ms, strftime('%Y-%m-%dT%H:%M:%fZ', a.at_ms / 1000.0, 'unixepoch') AS at,
       a.action, a.outcome, a.error, a.payload_hash, a.reason,
       r.round_id, r.pool, r.producer, r.revision, r.node, r.tick_ms
FROM action a JOIN job j ON j.id = a.job JOIN round r ON r.id = a.round;
