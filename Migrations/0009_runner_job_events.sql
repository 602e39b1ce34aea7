-- Job events of structured workers and capability routing (B3):
--   finished  a JobRunner job returned by itself and left the pool: ends its run;
--   failed    a JobRunner job threw by itself (`error`) and left the pool: ends its run;
--   unplaced  no active worker has the capability the job requires (`error` names it): the job
--             waits in the pool without running. It ends nothing (a run that was open ended with
--             its own event: released, lost, …) and starts nothing; the views leave it out, so a
--             job is "stopped" (not running) while it waits, and `rota jobs --at` does not list it.
--
-- SQLite cannot alter a CHECK constraint: `job_event` is rebuilt (new table, copy with the same
-- ids and columns, drop, rename) with its indexes, and the views that read it are made again:
-- `job_run_end` lists the two new end kinds (as ends, and as a worker's own end that contradicts
-- a `lost`); `job_runs` and `job_state_changes` are those of 0007, unchanged. Rows keep their
-- content and hashes, so the event chain verifies as before.

DROP VIEW job_state_changes;
DROP VIEW job_runs;
DROP VIEW job_run_end;

CREATE TABLE job_event_0009 (
    id        INTEGER PRIMARY KEY,
    pool      TEXT    NOT NULL,
    entry_id  TEXT    NOT NULL,
    idx       INTEGER NOT NULL,
    job       INTEGER NOT NULL,
    kind      TEXT    NOT NULL CHECK (kind IN ('started', 'start-failed', 'stopped', 'stop-failed', 'released', 'taken-over',
                                               'lost', 'orphan-requeued', 'ended-unowned', 'given-up',
                                               'finished', 'failed', 'unplaced')),
    worker    TEXT    NOT NULL,
    node      TEXT    NOT NULL,
    node_id   TEXT    NOT NULL,
    at_ms     INTEGER NOT NULL,
    actor     TEXT,
    reason    TEXT,
    round_id  TEXT,
    requeued  INTEGER NOT NULL CHECK (requeued IN (0, 1)),
    error     TEXT,
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL,
    last_seen_ms INTEGER,
    UNIQUE (pool, entry_id, idx)
);
INSERT INTO job_event_0009 (id, pool, entry_id, idx, job, kind, worker, node, node_id, at_ms, actor, reason, round_id, requeued,
                            error, prev_hash, hash, last_seen_ms)
SELECT id, pool, entry_id, idx, job, kind, worker, node, node_id, at_ms, actor, reason, round_id, requeued,
       error, prev_hash, hash, last_seen_ms FROM job_event;
DROP TABLE job_event;
ALTER TABLE job_event_0009 RENAME TO job_event;

CREATE INDEX job_event_by_job ON job_event (job, at_ms);
CREATE INDEX job_event_ends ON job_event (job, worker, at_ms)
    WHERE kind IN ('stopped', 'released', 'taken-over', 'lost', 'ended-unowned', 'given-up', 'finished', 'failed');
CREATE INDEX job_event_starts ON job_event (job, at_ms) WHERE kind = 'started';
CREATE INDEX job_event_by_time ON job_event (pool, at_ms);

-- As in 0007, with `finished` and `failed` among the ends.
CREATE VIEW job_run_end AS
SELECT x.*,
       CASE WHEN x.kind = 'lost' AND x.last_seen_ms IS NOT NULL THEN MIN(x.last_seen_ms, x.at_ms) ELSE x.at_ms END AS ended_ms,
       (x.kind = 'lost' AND EXISTS (
           SELECT 1 FROM job_event y
           WHERE y.job = x.job AND y.worker = x.worker
             AND y.kind IN ('stopped', 'released', 'taken-over', 'ended-unowned', 'given-up', 'finished', 'failed')
             AND (y.at_ms, y.id) > (x.at_ms, x.id)
             AND NOT EXISTS (
                 SELECT 1 FROM job_event z
                 WHERE z.job = x.job AND z.worker = x.worker AND z.kind = 'started'
                   AND (z.at_ms, z.id) > (x.at_ms, x.id) AND (z.at_ms, z.id) < (y.at_ms, y.id)))) AS contradicted
FROM job_event x
WHERE x.kind IN ('stopped', 'released', 'taken-over', 'lost', 'ended-unowned', 'given-up', 'finished', 'failed');

-- As in 0007.
CREATE VIEW job_runs AS
SELECT job, pool, producer, revision, worker, node, started_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', stopped_ms / 1000.0, 'unixepoch') AS stopped_at,
       stop_reason, stop_kind, start_reason, actor, round_id, started_ms, stopped_ms, stop_actor, stop_error, stop_node,
       requeued, start_event, stop_event, stop_logged_ms
FROM (
    SELECT j.key AS job, s.pool, r.producer, r.revision, s.worker, s.node,
           strftime('%Y-%m-%dT%H:%M:%fZ', s.at_ms / 1000.0, 'unixepoch') AS started_at,
           e.reason AS stop_reason, e.kind AS stop_kind, s.reason AS start_reason, s.actor, s.round_id,
           s.at_ms AS started_ms,
           CASE WHEN e.ended_ms < e.at_ms THEN MAX(s.at_ms + 1, e.ended_ms) ELSE e.at_ms END AS stopped_ms,
           e.actor AS stop_actor, e.error AS stop_error, e.node AS stop_node,
           s.requeued, s.id AS start_event, e.id AS stop_event, e.at_ms AS stop_logged_ms
    FROM job_event s
    JOIN job j ON j.id = s.job
    LEFT JOIN job_run_end e ON e.id = (
        SELECT x.id FROM job_run_end x
        WHERE x.job = s.job AND x.worker = s.worker AND NOT x.contradicted AND (x.at_ms, x.id) > (s.at_ms, s.id)
        ORDER BY x.at_ms, x.id LIMIT 1)
    LEFT JOIN round r ON r.round_id = COALESCE(s.round_id, CASE WHEN s.requeued = 1 THEN (
        SELECT o.round_id FROM job_event o
        WHERE o.job = s.job AND o.kind = 'started' AND (o.requeued = 0 OR o.round_id IS NOT NULL)
          AND (o.at_ms, o.id) < (s.at_ms, s.id)
        ORDER BY o.at_ms DESC, o.id DESC LIMIT 1) END)
    WHERE s.kind = 'started');

-- As in 0007.
CREATE VIEW job_state_changes AS
SELECT j.key AS job, e.at_ms, r.producer,
       CASE WHEN e.kind = 'started' THEN 'running'
            WHEN EXISTS (
                SELECT 1 FROM job_event s
                WHERE s.job = e.job AND s.kind = 'started' AND s.worker <> e.worker AND (s.at_ms, s.id) < (e.at_ms, e.id)
                  AND NOT EXISTS (
                      SELECT 1 FROM job_run_end x
                      WHERE x.job = s.job AND x.worker = s.worker AND NOT x.contradicted AND (x.at_ms, x.id) > (s.at_ms, s.id)
                        AND (CASE WHEN x.ended_ms < x.at_ms THEN MAX(s.at_ms + 1, x.ended_ms) ELSE x.at_ms END, x.id) <= (e.at_ms, e.id)))
            THEN 'running' ELSE 'stopped' END AS state,
       e.pool, e.worker, e.node, e.kind AS cause, 'event' AS source
FROM (
    SELECT v.id, v.job, v.kind, v.worker, v.node, v.pool, v.round_id, v.at_ms FROM job_event v WHERE v.kind = 'started'
    UNION ALL
    SELECT v.id, v.job, v.kind, v.worker, v.node, v.pool, v.round_id,
           CASE WHEN v.ended_ms < v.at_ms THEN MAX(v.ended_ms, COALESCE((
               SELECT MAX(s.at_ms) + 1 FROM job_event s
               WHERE s.job = v.job AND s.worker = v.worker AND s.kind = 'started' AND s.at_ms <= v.at_ms), 0))
                ELSE v.at_ms END
    FROM job_run_end v WHERE NOT v.contradicted
) e
JOIN job j ON j.id = e.job LEFT JOIN round r ON r.round_id = e.round_id
UNION ALL
SELECT j.key AS job, a.at_ms, r.producer,
       CASE WHEN a.outcome IN ('started', 'already-running') THEN 'running' ELSE 'stopped' END AS state,
       r.pool, NULL AS worker, r.node, a.outcome AS cause, 'action' AS source
FROM action a JOIN job j ON j.id = a.job JOIN round r ON r.id = a.round
WHERE a.outcome IN ('started', 'already-running', 'stopped', 'not-found')
  AND a.at_ms < COALESCE((SELECT MIN(f.at_ms) FROM job_event f WHERE f.pool = r.pool), 9223372036854775807);
