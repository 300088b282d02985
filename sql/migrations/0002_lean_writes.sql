-- hark schema, version 2: fewer index writes per job.
-- Every claim and every completion writes a new row version, and a non-HOT update adds an entry
-- to each index whose predicate the new version meets. The full (queue, state) index took one
-- such entry per update for statistics and the failed-job listing only. Statistics now scan the
-- table; the failed-job listing gets a partial index that only failures enter.

DROP INDEX {{schema}}.jobs_queue_state_idx;

CREATE INDEX jobs_failed_idx ON {{schema}}.jobs (finished_at DESC, id DESC)
  WHERE state = 'failed';
