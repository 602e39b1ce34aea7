-- An audit history that tells the truth (B2): what the pool saw happen to each job, next to what
-- the planners intended; who decided each action; where a node's history has holes.
--
-- Facts: `job_event` holds the pool's job log ("job-log" stream), one row per job per log entry:
-- started, start-failed, stopped, stop-failed, released, taken-over, lost, orphan-requeued,
-- ended-unowned, given-up. Chained like the rounds (a third chain, "event").
-- Intents: `action` (the rounds' actions) as before, now with the actor who decided.
--
-- Audit queries (plain SQL on the views below; times are RFC 3339 text, `_ms` columns Unix ms):
--
--   What ran when, where, and why did it stop (one job):
--     SELECT started_at, stopped_at, worker, node, stop_kind, stop_reason, producer, revision
--     FROM job_runs WHERE job = 'poll/paris' ORDER BY started_ms;
--
--   What was running at an instant, and where:
--     SELECT job, worker, node, started_at FROM job_runs
--     WHERE started_ms <= 1767225600000 AND (stopped_ms IS NULL OR stopped_ms > 1767225600000);
--
--   Runs that ended badly in the last day (dead workers, handlers that gave up):
--     SELECT job, worker, node, started_at, stopped_at, stop_kind, stop_reason FROM job_runs
--     WHERE stop_kind IN ('lost', 'given-up', 'ended-unowned')
--       AND stopped_ms > CAST(strftime('%s', 'now', '-1 day') AS INTEGER) * 1000;
--
--   Runs still open (stopped_at is NULL while a run goes on):
--     SELECT job, worker, node, started_at FROM job_runs WHERE stopped_ms IS NULL;
--
--   Who stopped what, and why:
--     SELECT job, stopped_at, stop_actor, stop_reason FROM job_runs WHERE stop_kind = 'stopped' AND stop_actor IS NOT NULL;
--
-- SQLite cannot alter a CHECK constraint: `action` and `history_chain_bridge` are rebuilt (new
-- table, copy, drop, rename), with their indexes and the views that read them.

-- 1. Actions: the actor who decided, new kinds and outcomes.
--    notify / notified: a manual notification delivered; stop-failed: the worker's stop handler
--    failed and the job still runs (counted as failed); unplaced: reserved (a job waiting for a
--    capable worker). `actor` is chained when set, as `reason` is (0005).
DROP VIEW job_timeline;
DROP VIEW job_state_changes;
CREATE TABLE action_0006 (
    round        INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    job          INTEGER NOT NULL,
    action       TEXT    NOT NULL CHECK (action IN ('start', 'stop', 'restart', 'notify')),
    outcome      TEXT    NOT NULL CHECK (outcome IN ('started', 'already-running', 'stopped', 'not-found', 'failed',
                                                     'stop-failed', 'notified', 'unplaced')),
    error        TEXT,
    payload_hash TEXT,
    at_ms        INTEGER NOT NULL,
    reason       TEXT,
    -- The node that decided, or user@host for an action taken from the command line.
    actor        TEXT,
    PRIMARY KEY (round, seq)
) WITHOUT ROWID;
INSERT INTO action_0006 (round, seq, job, action, outcome, error, payload_hash, at_ms, reason)
SELECT round, seq, job, action, outcome, error, payload_hash, at_ms, reason FROM action;
DROP TABLE action;
ALTER TABLE action_0006 RENAME TO action;
CREATE INDEX action_by_job ON action (job, at_ms);
CREATE INDEX action_starts ON action (job, at_ms) WHERE outcome = 'started';

CREATE VIEW job_timeline AS
SELECT j.key AS job, a.at_ms, strftime('%Y-%m-%dT%H:%M:%fZ', a.at_ms / 1000.0, 'unixepoch') AS at,
       a.action, a.outcome, a.error, a.payload_hash, a.reason, a.actor,
       r.round_id, r.pool, r.producer, r.revision, r.node, r.tick_ms
FROM action a JOIN job j ON j.id = a.job JOIN round r ON r.id = a.round;

-- 2. The third chain: job events, in insertion order (job_event.id), like the round chain:
--    hash = SHA-256("rota.event.v1" ‖ prev_hash ‖ pool ‖ entry_id ‖ idx ‖ job key ‖ kind ‖ worker ‖ node
--                   ‖ node_id ‖ at_ms ‖ actor ‖ reason ‖ round_id ‖ requeued ‖ error).
ALTER TABLE history_chain ADD COLUMN event_head BLOB NOT NULL
    DEFAULT X'0000000000000000000000000000000000000000000000000000000000000000';

CREATE TABLE history_chain_bridge_0006 (
    chain     TEXT    NOT NULL CHECK (chain IN ('round', 'outcome', 'event')),
    to_hash   BLOB    NOT NULL,
    from_hash BLOB    NOT NULL,
    pruned    INTEGER NOT NULL,
    PRIMARY KEY (chain, to_hash)
) WITHOUT ROWID;
INSERT INTO history_chain_bridge_0006 (chain, to_hash, from_hash, pruned)
SELECT chain, to_hash, from_hash, pruned FROM history_chain_bridge;
DROP TABLE history_chain_bridge;
ALTER TABLE history_chain_bridge_0006 RENAME TO history_chain_bridge;

-- 3. What the pool saw: one row per job per job-log entry. Idempotent by (pool, entry_id, idx):
--    the stream entry and the job's position in it.
CREATE TABLE job_event (
    id        INTEGER PRIMARY KEY,
    pool      TEXT    NOT NULL,
    entry_id  TEXT    NOT NULL,
    idx       INTEGER NOT NULL,
    -- job.id (no foreign key, as in `action`: the recorder writes jobs and events together).
    job       INTEGER NOT NULL,
    kind      TEXT    NOT NULL CHECK (kind IN ('started', 'start-failed', 'stopped', 'stop-failed', 'released', 'taken-over',
                                               'lost', 'orphan-requeued', 'ended-unowned', 'given-up')),
    -- The worker the event is about (for `lost`, the dead worker), the node that reported it.
    worker    TEXT    NOT NULL,
    node      TEXT    NOT NULL,
    node_id   TEXT    NOT NULL,
    at_ms     INTEGER NOT NULL,
    actor     TEXT,
    reason    TEXT,
    -- The round that decided it (round.round_id), when a round did.
    round_id  TEXT,
    requeued  INTEGER NOT NULL CHECK (requeued IN (0, 1)),
    error     TEXT,
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL,
    UNIQUE (pool, entry_id, idx)
);
-- "Events of job J by time", and the last event of J at or before T: one seek.
CREATE INDEX job_event_by_job ON job_event (job, at_ms);
-- Pairing a start with the first later end on the same worker: one seek.
CREATE INDEX job_event_ends ON job_event (job, worker, at_ms)
    WHERE kind IN ('stopped', 'released', 'taken-over', 'lost', 'ended-unowned', 'given-up');
-- Runs: the starts of J (jobs running at T, the run a requeued start continues).
CREATE INDEX job_event_starts ON job_event (job, at_ms) WHERE kind = 'started';
-- Since when a pool has facts (job_state_changes), runs in a time window, pruning.
CREATE INDEX job_event_by_time ON job_event (pool, at_ms);

-- One row per `started` event, with the first later end event of the same job on the same worker
-- (stopped_at NULL while it runs). producer/revision come from the round named by the start; a
-- requeued start without a round takes them from the latest earlier non-requeued start of the job
-- (the run it continues); manual starts have none.
CREATE VIEW job_runs AS
SELECT j.key AS job, s.pool, r.producer, r.revision, s.worker, s.node,
       strftime('%Y-%m-%dT%H:%M:%fZ', s.at_ms / 1000.0, 'unixepoch') AS started_at,
       CASE WHEN e.at_ms IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', e.at_ms / 1000.0, 'unixepoch') END AS stopped_at,
       e.reason AS stop_reason, e.kind AS stop_kind, s.reason AS start_reason, s.actor, s.round_id,
       s.at_ms AS started_ms, e.at_ms AS stopped_ms, e.actor AS stop_actor, e.error AS stop_error, e.node AS stop_node,
       s.requeued, s.id AS start_event, e.id AS stop_event
FROM job_event s
JOIN job j ON j.id = s.job
LEFT JOIN job_event e ON e.id = (
    SELECT x.id FROM job_event x
    WHERE x.job = s.job AND x.worker = s.worker
      AND x.kind IN ('stopped', 'released', 'taken-over', 'lost', 'ended-unowned', 'given-up')
      AND (x.at_ms > s.at_ms OR (x.at_ms = s.at_ms AND x.id > s.id))
    ORDER BY x.at_ms, x.id LIMIT 1)
LEFT JOIN round r ON r.round_id = COALESCE(s.round_id, CASE WHEN s.requeued = 1 THEN (
    SELECT o.round_id FROM job_event o
    WHERE o.job = s.job AND o.kind = 'started' AND (o.requeued = 0 OR o.round_id IS NOT NULL)
      AND (o.at_ms < s.at_ms OR (o.at_ms = s.at_ms AND o.id < s.id))
    ORDER BY o.at_ms DESC, o.id DESC LIMIT 1) END)
WHERE s.kind = 'started';

-- State changes of each job (the latest one at or before T is its state at T):
-- - from job events, in pools this database has any for: running at a start; at an end, stopped
--   unless another run of the job (on another worker) is still open;
-- - from the rounds' actions (what databases written before the job log have) for times before
--   the pool's first job event: running after started/already-running, stopped after
--   stopped/not-found.
CREATE VIEW job_state_changes AS
SELECT j.key AS job, e.at_ms, r.producer,
       CASE WHEN e.kind = 'started' THEN 'running'
            WHEN EXISTS (
                SELECT 1 FROM job_event s
                WHERE s.job = e.job AND s.kind = 'started' AND s.worker <> e.worker
                  AND (s.at_ms < e.at_ms OR (s.at_ms = e.at_ms AND s.id < e.id))
                  AND NOT EXISTS (
                      SELECT 1 FROM job_event x
                      WHERE x.job = s.job AND x.worker = s.worker
                        AND x.kind IN ('stopped', 'released', 'taken-over', 'lost', 'ended-unowned', 'given-up')
                        AND (x.at_ms > s.at_ms OR (x.at_ms = s.at_ms AND x.id > s.id))
                        AND (x.at_ms < e.at_ms OR (x.at_ms = e.at_ms AND x.id <= e.id))))
            THEN 'running' ELSE 'stopped' END AS state,
       e.pool, e.worker, e.node, e.kind AS cause, 'event' AS source
FROM job_event e JOIN job j ON j.id = e.job LEFT JOIN round r ON r.round_id = e.round_id
WHERE e.kind IN ('started', 'stopped', 'released', 'taken-over', 'lost', 'ended-unowned', 'given-up')
UNION ALL
SELECT j.key AS job, a.at_ms, r.producer,
       CASE WHEN a.outcome IN ('started', 'already-running') THEN 'running' ELSE 'stopped' END AS state,
       r.pool, NULL AS worker, r.node, a.outcome AS cause, 'action' AS source
FROM action a JOIN job j ON j.id = a.job JOIN round r ON r.id = a.round
WHERE a.outcome IN ('started', 'already-running', 'stopped', 'not-found')
  AND a.at_ms < COALESCE((SELECT MIN(f.at_ms) FROM job_event f WHERE f.pool = r.pool), 9223372036854775807);

-- 4. Following the pool's streams (history rounds, job log): the last entry ID this node
--    recorded, per pool and stream. Only moves forward.
CREATE TABLE stream_cursor (
    pool    TEXT NOT NULL,
    stream  TEXT NOT NULL,
    last_id TEXT NOT NULL,
    PRIMARY KEY (pool, stream)
) WITHOUT ROWID;

-- Holes in this node's history: entries after `after_id` and before `before_id` were trimmed from
-- the stream before this node read them. Filled by `rota history sync` from a node that has them.
CREATE TABLE history_gap (
    id          INTEGER PRIMARY KEY,
    pool        TEXT    NOT NULL,
    stream      TEXT    NOT NULL,
    after_id    TEXT    NOT NULL,
    before_id   TEXT    NOT NULL,
    detected_ms INTEGER NOT NULL,
    filled_ms   INTEGER,
    -- The database the missing entries were copied from.
    filled_from TEXT,
    UNIQUE (pool, stream, after_id, before_id)
);
