-- Plan history: one row per planning round, one per job action. Times are Unix milliseconds (UTC).
CREATE TABLE round (
    id          INTEGER PRIMARY KEY,
    -- The round's ID, as published on the history stream: recording is idempotent by it.
    round_id    TEXT    NOT NULL UNIQUE,
    pool        TEXT    NOT NULL,
    producer    TEXT    NOT NULL,
    revision    INTEGER NOT NULL,
    node        TEXT    NOT NULL,
    -- The tick's scheduled time: the round's fencing token, so one producer can never record two
    -- rounds for the same tick.
    tick_ms     INTEGER NOT NULL,
    started_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    -- JSON array of the planned actions, written before the plan is applied.
    intent      TEXT,
    started     INTEGER NOT NULL DEFAULT 0,
    stopped     INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    UNIQUE (pool, producer, tick_ms)
);
CREATE INDEX round_by_start ON round (started_ms);
CREATE INDEX round_by_producer ON round (producer, started_ms);

-- Job keys, stored once: action rows refer to them by number.
CREATE TABLE job (
    id  INTEGER PRIMARY KEY,
    key TEXT    NOT NULL UNIQUE
);

-- Clustered by round (a round's actions are one contiguous range); no foreign keys: the recorder
-- writes rounds, jobs and actions together in one transaction, and pruning deletes actions with
-- their rounds, so checking every row again would only slow recording down.
CREATE TABLE action (
    round        INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    job          INTEGER NOT NULL,
    action       TEXT    NOT NULL CHECK (action IN ('start', 'stop', 'restart')),
    outcome      TEXT    NOT NULL CHECK (outcome IN ('started', 'already-running', 'stopped', 'not-found', 'failed')),
    error        TEXT,
    payload_hash TEXT,
    at_ms        INTEGER NOT NULL,
    PRIMARY KEY (round, seq)
) WITHOUT ROWID;
-- "What did job J do, when" and "last state of J at T": seek by job, walk by time.
CREATE INDEX action_by_job ON action (job, at_ms);
-- "Since when has J been running": its last start, in one seek.
CREATE INDEX action_starts ON action (job, at_ms) WHERE outcome = 'started';

-- Audit views.
-- Every action on every job, with its round: `SELECT * FROM job_timeline WHERE job = 'poll/paris' ORDER BY at_ms`.
CREATE VIEW job_timeline AS
SELECT j.key AS job, a.at_ms, strftime('%Y-%m-%dT%H:%M:%fZ', a.at_ms / 1000.0, 'unixepoch') AS at,
       a.action, a.outcome, a.error, a.payload_hash,
       r.round_id, r.pool, r.producer, r.revision, r.node, r.tick_ms
FROM action a JOIN job j ON j.id = a.job JOIN round r ON r.id = a.round;

-- Rounds that failed as a whole or had failed actions.
CREATE VIEW rounds_with_failures AS
SELECT round_id, pool, producer, revision, node, tick_ms,
       strftime('%Y-%m-%dT%H:%M:%fZ', tick_ms / 1000.0, 'unixepoch') AS tick, started, stopped, failed, error
FROM round WHERE failed > 0 OR error IS NOT NULL;

-- State-changing actions (what "was running at T" is computed from): running after started,
-- already-running; not running after stopped, not-found.
CREATE VIEW job_state_changes AS
SELECT j.key AS job, a.at_ms, r.producer,
       CASE WHEN a.outcome IN ('started', 'already-running') THEN 'running' ELSE 'stopped' END AS state
FROM action a JOIN job j ON j.id = a.job JOIN round r ON r.id = a.round
WHERE a.outcome IN ('started', 'already-running', 'stopped', 'not-found');
