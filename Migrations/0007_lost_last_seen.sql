-- When a killed worker's jobs stopped (B2). A `lost` job event is written when a peer finds the
-- worker dead, 10–20 s after it died; the jobs stopped at the death, shortly after the worker's
-- last keep-alive. `last_seen_ms` keeps that keep-alive (NULL when Redis no longer had it, and
-- for every other kind). It enters the event chain only when set, so older rows still verify.
--
-- The views end a lost run at its last keep-alive, within one keep-alive interval (500 ms by
-- default) of the death — but 1 ms after its start when it started later (never at the start's
-- own instant, where a stop and a start read as a restart). A `lost` the worker itself
-- contradicts later — a paused process that came back and stopped its copy (`taken-over`,
-- `stopped`, …, with no start of the job on that worker in between) — ends nothing: the worker's
-- own end event does. Several `lost` events of one run (a cleanup, and a late start that found
-- the dead owner) are all contradicted by such an end.
ALTER TABLE job_event ADD COLUMN last_seen_ms INTEGER;

DROP VIEW job_runs;
DROP VIEW job_state_changes;

-- The events that end a run on their worker, with `ended_ms` (a `lost` with a last keep-alive:
-- that keep-alive; otherwise when it was logged) and `contradicted` (the rule above). A run that
-- started at S and ends at event x ends at
--   CASE WHEN x.ended_ms < x.at_ms THEN MAX(S + 1, x.ended_ms) ELSE x.at_ms END.
CREATE VIEW job_run_end AS
SELECT x.*,
       CASE WHEN x.kind = 'lost' AND x.last_seen_ms IS NOT NULL THEN MIN(x.last_seen_ms, x.at_ms) ELSE x.at_ms END AS ended_ms,
       (x.kind = 'lost' AND EXISTS (
           SELECT 1 FROM job_event y
           WHERE y.job = x.job AND y.worker = x.worker
             AND y.kind IN ('stopped', 'released', 'taken-over', 'ended-unowned', 'given-up')
             AND (y.at_ms, y.id) > (x.at_ms, x.id)
             AND NOT EXISTS (
                 SELECT 1 FROM job_event z
                 WHERE z.job = x.job AND z.worker = x.worker AND z.kind = 'started'
                   AND (z.at_ms, z.id) > (x.at_ms, x.id) AND (z.at_ms, z.id) < (y.at_ms, y.id)))) AS contradicted
FROM job_event x
WHERE x.kind IN ('stopped', 'released', 'taken-over', 'lost', 'ended-unowned', 'given-up');

-- As in 0006, a run ending at its first uncontradicted end event, at the time above;
-- `stop_logged_ms` is when that end was logged (for `lost`: when the death was found).
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

-- As in 0006, with uncontradicted end events at their effective time (for a back-dated `lost`,
-- 1 ms after the worker's latest start of the job, if that came after its last keep-alive), and
-- "another worker's run still open" decided at that time with those runs' effective ends: a dead
-- worker's jobs are requeued (and started elsewhere) before the `lost` event is written.
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
