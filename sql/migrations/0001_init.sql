-- hark schema, version 1.
-- Placeholders substituted once at configuration time (never values):
--   {{schema}}   the schema name, validated and quoted as an identifier
--   {{channel}}  the NOTIFY channel as a SQL string literal

CREATE TABLE {{schema}}.queues (
  name          text PRIMARY KEY
                CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
  -- Defaults applied to jobs sent to this queue; resolved into each job row at send time.
  policy        jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(policy) = 'object'),
  paused        boolean NOT NULL DEFAULT false,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {{schema}}.jobs (
  id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  queue              text NOT NULL REFERENCES {{schema}}.queues (name) ON UPDATE CASCADE,
  state              text NOT NULL DEFAULT 'available',
  priority           integer NOT NULL DEFAULT 0,
  run_at             timestamptz NOT NULL DEFAULT now(),
  payload            jsonb NOT NULL DEFAULT 'null'::jsonb,
  attempt            integer NOT NULL DEFAULT 0,
  max_attempts       integer NOT NULL DEFAULT 4,
  retry_delay_ms     integer NOT NULL DEFAULT 1000,
  retry_backoff      boolean NOT NULL DEFAULT true,
  retry_delay_max_ms integer NOT NULL DEFAULT 3600000,
  timeout_ms         integer,
  lease_ms           integer NOT NULL DEFAULT 30000,
  singleton_key      text,
  dead_letter        text,
  retention_ms       bigint NOT NULL DEFAULT 604800000,
  failed_retention_ms bigint NOT NULL DEFAULT 2592000000,
  lease_token        uuid,
  lease_expires_at   timestamptz,
  worker_id          text,
  output             jsonb,
  errors             jsonb NOT NULL DEFAULT '[]'::jsonb,
  created_at         timestamptz NOT NULL DEFAULT now(),
  started_at         timestamptz,
  finished_at        timestamptz,
  keep_until         timestamptz,
  -- Someone waits for this job's result: its end is announced with a NOTIFY.
  notify_finish      boolean NOT NULL DEFAULT false,
  -- For a dead-letter copy: the job it was copied from.
  source_job_id      bigint,
  -- The state machine, as far as the database can enforce it.
  CONSTRAINT jobs_state_valid CHECK (state IN
    ('scheduled', 'available', 'active', 'completed', 'retry', 'failed', 'cancelled')),
  CONSTRAINT jobs_active_has_lease CHECK ((state = 'active') =
    (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
  CONSTRAINT jobs_finished_has_time CHECK
    ((state IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL)),
  CONSTRAINT jobs_attempts_valid CHECK
    (max_attempts >= 1 AND attempt >= 0 AND attempt <= max_attempts),
  CONSTRAINT jobs_completed_ran CHECK (state <> 'completed' OR attempt >= 1),
  CONSTRAINT jobs_retry_valid CHECK
    (retry_delay_ms >= 0 AND retry_delay_max_ms >= retry_delay_ms),
  CONSTRAINT jobs_timeout_valid CHECK (timeout_ms IS NULL OR timeout_ms > 0),
  CONSTRAINT jobs_lease_valid CHECK (lease_ms >= 1000),
  CONSTRAINT jobs_retention_valid CHECK (retention_ms >= 0 AND failed_retention_ms >= 0),
  CONSTRAINT jobs_errors_array CHECK (jsonb_typeof(errors) = 'array'),
  CONSTRAINT jobs_singleton_key_length CHECK (length(singleton_key) <= 512)
);

-- Claim path: the next jobs of a queue by priority, run_at, id, among waiting jobs only.
-- scheduled and retry jobs are claimed directly once run_at has passed (no promotion write).
CREATE INDEX jobs_claim_idx ON {{schema}}.jobs (queue, priority DESC, run_at, id)
  WHERE state IN ('available', 'scheduled', 'retry');

-- Timers: the earliest future run_at per queue.
CREATE INDEX jobs_run_at_idx ON {{schema}}.jobs (queue, run_at)
  WHERE state IN ('scheduled', 'retry');

-- Lease rescue: expired leases of active jobs.
CREATE INDEX jobs_lease_idx ON {{schema}}.jobs (lease_expires_at) WHERE state = 'active';

-- Retention: finished jobs past their keep_until.
CREATE INDEX jobs_keep_until_idx ON {{schema}}.jobs (keep_until)
  WHERE state IN ('completed', 'failed', 'cancelled');

-- Singleton keys: at most one queued-or-active job per queue and key.
CREATE UNIQUE INDEX jobs_singleton_idx ON {{schema}}.jobs (queue, singleton_key)
  WHERE singleton_key IS NOT NULL AND state IN ('scheduled', 'available', 'retry', 'active');

-- Failed-job listing and statistics per queue and state.
CREATE INDEX jobs_queue_state_idx ON {{schema}}.jobs (queue, state);

-- Wake-ups: one NOTIFY per queue per INSERT statement, whoever inserts (our client, the
-- caller's own transaction, or plain SQL). NOTIFY is delivered only after commit, so a worker
-- is never woken for a job it cannot see yet.
-- Payload: 'q|<queue>|<earliest run_at, epoch ms, 0 when due>|<shortest lease ms>'; the lease
-- tells the leader's watchdog how soon a dead worker's job could need rescue.
CREATE FUNCTION {{schema}}.notify_jobs_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify({{channel}}, 'q|' || n.queue || '|' ||
    CASE WHEN n.first_run_at <= now() THEN '0'
         ELSE ceil(extract(epoch FROM n.first_run_at) * 1000)::bigint::text END
    || '|' || n.lease_ms)
  FROM (SELECT queue, min(run_at) AS first_run_at, min(lease_ms) AS lease_ms FROM new_jobs
        WHERE state IN ('available', 'scheduled', 'retry') GROUP BY queue) n;
  RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_inserted
  AFTER INSERT ON {{schema}}.jobs
  REFERENCING NEW TABLE AS new_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.notify_jobs_inserted();

-- Leader election: a process becomes leader by holding a lock on this table inside an open
-- transaction that takes no snapshot and no transaction id (see docs/decisions).
CREATE TABLE {{schema}}.leader_lock (
  id integer PRIMARY KEY CHECK (id = 1)
);
