-- hark schema, version 2: fewer index writes per job.
-- Every claim and every completion writes a new row version, and a non-HOT update adds an entry
-- to each index whose predicate the new version meets. The full (queue, state) index took one
-- such entry per update for statistics and the failed-job listing only. Statistics now scan the
-- table; the failed-job listing gets a partial index that only failures enter.

DROP INDEX {{schema}}.jobs_queue_state_idx;

CREATE INDEX jobs_failed_idx ON {{schema}}.jobs (finished_at DESC, id DESC)
  WHERE state = 'failed';

-- Claims resume where the last one ended. While another session pins the xmin horizon, the
-- index entries of claimed jobs cannot be removed, and a claim that starts at the front of the
-- queue walks past every one of them: claims slow down with each job processed. A worker
-- passes the key of the last job it claimed, (-priority, run_at, id), and the index starts
-- there; the key is one ascending row, so the bound is a single index condition.
DROP INDEX {{schema}}.jobs_claim_idx;

CREATE INDEX jobs_claim_idx ON {{schema}}.jobs (queue, (- priority), run_at, id)
  WHERE state IN ('available', 'scheduled', 'retry');

-- Wake-ups carry the smallest claim key of the statement's jobs, '<-max priority>:<min run_at
-- in epoch microseconds>', so a worker whose last claim ended past it starts there instead, and
-- the earliest future run_at even when some jobs are due at once (one statement may hold both:
-- sendMany, or concurrent sends sharing a statement), so the worker arms its timer for it.
-- Payload: 'q|<queue>|<earliest run_at, epoch ms, 0 when due>|<shortest lease ms>|<key>|
-- <earliest future run_at, epoch ms, or empty>'.
CREATE OR REPLACE FUNCTION {{schema}}.notify_jobs_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify({{channel}}, 'q|' || n.queue || '|' ||
    CASE WHEN n.first_run_at <= now() THEN '0'
         ELSE ceil(extract(epoch FROM n.first_run_at) * 1000)::bigint::text END
    || '|' || n.lease_ms || '|' || n.top_priority || ':' ||
    (extract(epoch FROM n.first_run_at) * 1000000)::bigint || '|' ||
    coalesce(ceil(extract(epoch FROM n.first_future) * 1000)::bigint::text, ''))
  FROM (SELECT queue, min(run_at) AS first_run_at, min(lease_ms) AS lease_ms,
               - max(priority) AS top_priority,
               min(run_at) FILTER (WHERE run_at > now()) AS first_future
          FROM new_jobs
         WHERE state IN ('available', 'scheduled', 'retry') GROUP BY queue) n;
  RETURN NULL;
END;
$$;
