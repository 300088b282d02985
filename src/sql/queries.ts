/**
 * Every statement hark issues, named, in one place. Built once per schema at configuration
 * time: the schema and channel are quoted here; every value is a bind parameter.
 *
 * Conventions: job ids travel as bigint, lease tokens as uuid, durations as integer ms.
 * "Waiting" states are scheduled, available and retry: a waiting job whose run_at has passed is
 * claimed directly, with no write to promote it first.
 */
import { channelFor, quoteIdent, quoteLiteral } from './identifiers.js';

export type Queries = ReturnType<typeof buildQueries>;

const WAITING = `('scheduled', 'available', 'retry')`;
const FINISHED = `('completed', 'failed', 'cancelled')`;

export function buildQueries(schema: string) {
  const s = quoteIdent(schema);
  const jobs = `${s}.jobs`;
  const channel = quoteLiteral(channelFor(schema));

  /** Inserts one row per array element, from the parallel arrays $1..$15. */
  const insertColumns = `queue, state, priority, run_at, payload, max_attempts, retry_delay_ms,
      retry_backoff, retry_delay_max_ms, timeout_ms, lease_ms, singleton_key, dead_letter,
      retention_ms, failed_retention_ms, notify_finish`;
  const insertSelect = `
    SELECT t.queue,
           CASE WHEN t.run_at > now() THEN 'scheduled' ELSE 'available' END,
           t.priority, coalesce(t.run_at, now()), t.payload::jsonb, t.max_attempts,
           t.retry_delay_ms, t.retry_backoff, t.retry_delay_max_ms, t.timeout_ms, t.lease_ms,
           t.singleton_key, t.dead_letter, t.retention_ms, t.failed_retention_ms,
           coalesce(t.notify_finish, false)
      FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::text[], $5::int[], $6::int[],
                  $7::bool[], $8::int[], $9::int[], $10::int[], $11::text[], $12::text[],
                  $13::bigint[], $14::bigint[], $15::bool[])
           WITH ORDINALITY AS t(queue, priority, run_at, payload, max_attempts, retry_delay_ms,
                retry_backoff, retry_delay_max_ms, timeout_ms, lease_ms, singleton_key,
                dead_letter, retention_ms, failed_retention_ms, notify_finish, ord)
     ORDER BY t.ord`;

  /** Columns a worker needs from a claimed job. */
  /**
   * What a claim returns, in this order; the worker reads each row as an array of text
   * (claimedFromRaw in runtime/job-context.ts), which costs far less than generic parsing.
   */
  const claimReturning = `j.id::text, j.queue, j.payload::text, j.attempt, j.max_attempts,
      j.priority, (extract(epoch FROM j.run_at) * 1000000)::bigint,
      (extract(epoch FROM j.created_at) * 1000)::float8, j.singleton_key, j.timeout_ms,
      j.lease_ms, j.retry_delay_ms, j.retry_backoff, j.retry_delay_max_ms, j.dead_letter`;

  /** Dead-letter copies of the rows of a CTE named `gone` that failed for good. */
  const deadLetterInsert = `
    INSERT INTO ${jobs} (queue, payload, priority, max_attempts, retention_ms,
                         failed_retention_ms, source_job_id)
    SELECT g.dead_letter, g.payload, g.priority,
           coalesce((q.policy->>'retryLimit')::int + 1, 4),
           coalesce((q.policy->>'retentionMs')::bigint, 604800000),
           coalesce((q.policy->>'failedRetentionMs')::bigint, 2592000000), g.id
      FROM gone g JOIN ${s}.queues q ON q.name = g.dead_letter
     WHERE g.state = 'failed' AND g.dead_letter IS NOT NULL
    RETURNING id`;

  return {
    channel: channelFor(schema),

    /** $1 name, $2 policy (jsonb). Creates or updates a queue's policy. */
    upsertQueue: `
      INSERT INTO ${s}.queues (name, policy) VALUES ($1, $2::jsonb)
      ON CONFLICT (name) DO UPDATE SET policy = EXCLUDED.policy, updated_at = now()
      RETURNING name, policy, paused`,

    /** $1 names (text[]). Policies of the named queues (cached by producers). */
    getQueues: `SELECT name, policy, paused FROM ${s}.queues WHERE name = ANY($1::text[])`,

    listQueues: `SELECT name, policy, paused, created_at FROM ${s}.queues ORDER BY name`,

    /** $1 name. Fails (foreign key) when jobs still reference it. */
    deleteQueue: `DELETE FROM ${s}.queues WHERE name = $1 RETURNING name`,

    /**
     * $1..$15 parallel arrays (see insertSelect). One round trip for any number of jobs; the
     * statement trigger sends one NOTIFY per queue. Rows come back in input order.
     */
    insertJobs: `INSERT INTO ${jobs} (${insertColumns}) ${insertSelect}
      RETURNING id::text AS id`,

    /**
     * As insertJobs, for batches that carry singleton keys: rows whose key is held are skipped,
     * and the caller looks up the holders (singletonHolders).
     */
    insertJobsSingleton: `INSERT INTO ${jobs} (${insertColumns}) ${insertSelect}
      ON CONFLICT (queue, singleton_key)
        WHERE singleton_key IS NOT NULL AND state IN ('scheduled', 'available', 'retry', 'active')
      DO NOTHING
      RETURNING id::text AS id, queue, singleton_key`,

    /** $1 queues, $2 keys. The jobs now holding these singleton keys. */
    singletonHolders: `
      SELECT j.id::text AS id, j.queue, j.singleton_key FROM ${jobs} j
        JOIN unnest($1::text[], $2::text[]) AS k(queue, key)
          ON j.queue = k.queue AND j.singleton_key = k.key
       WHERE j.state IN ('scheduled', 'available', 'retry', 'active')`,

    /**
     * $1 queue, $2 limit, $3 lease token, $4 worker id, $5..$7 the key to start after:
     * (-priority, run_at in epoch microseconds, id); pass the smallest key for a full claim.
     * Claims up to $2 due jobs in one statement. SKIP LOCKED lets concurrent workers take
     * disjoint rows; ordering follows jobs_claim_idx (queue, -priority, run_at, id), and the
     * start key bounds the index scan, so jobs claimed before it (whose dead index entries a
     * pinned xmin horizon keeps) are not walked again. One token per claim: (id, token) is
     * unique per attempt, which is all fencing needs, and it lets completions be batched.
     */
    claim: `
      UPDATE ${jobs} j
         SET state = 'active', attempt = j.attempt + 1, lease_token = $3::uuid,
             lease_expires_at = now() + j.lease_ms * interval '1 millisecond',
             started_at = now(), worker_id = $4
       WHERE j.id = ANY (ARRAY (
               SELECT id FROM ${jobs}
                WHERE queue = $1 AND state IN ${WAITING} AND run_at <= now()
                  AND (- priority, run_at, id) >
                      ($5::int, 'epoch'::timestamptz + $6::bigint * interval '1 microsecond',
                       $7::bigint)
                ORDER BY - priority, run_at, id
                LIMIT $2
                FOR UPDATE SKIP LOCKED))
      RETURNING ${claimReturning}`,

    /**
     * $1 queues. Per queue: the earliest future run_at of scheduled and retrying jobs (rounded
     * up, so a timer never fires early), and whether any of them is due already (the caller
     * fetches at once). Used at start, after a reconnect and after a timer fires: both facts are
     * needed, since the job that fired the timer may still be waiting when this runs.
     */
    nextRunAt: `
      SELECT queue,
             ceil(extract(epoch FROM min(run_at) FILTER (WHERE run_at > now())) * 1000)::float8
               AS at,
             bool_or(run_at <= now()) AS due
        FROM ${jobs} WHERE queue = ANY($1::text[]) AND state IN ('scheduled', 'retry')
       GROUP BY queue`,

    /**
     * $1 ids, $2 tokens, $3 outputs (json text or null). Token-guarded batch completion (a
     * token is set exactly while a job is active, a CHECK constraint says so, so no state test:
     * with one, a planner without statistics joins every active job with every id; with
     * `id = ANY ($1)` alone it takes the primary key and knows the row count; and `<= 0`, not
     * `= 0`, because it guesses an equality matches almost nothing and then loops over every
     * pair of rows): a
     * worker that lost its lease completes nothing. Returns the ids that completed. A job kept
     * for 0 ms that nobody waits for is deleted at once: one write instead of an update now and
     * a delete by retention later. A job a waiter marks after this statement's snapshot is
     * taken by neither part (the delete re-reads it and skips it, the update judged the old
     * row): the completer tries such a job once more (an anti-join of the update with the
     * delete's rows, tried instead, cut throughput to a third).
     */
    complete: `
      WITH i AS (
        SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[]) AS i(id, token, output)
      ),
      gone AS (
        DELETE FROM ${jobs} j USING i
         WHERE j.id = ANY ($1::bigint[]) AND j.id = i.id AND j.lease_token = i.token
           AND j.retention_ms <= 0 AND NOT j.notify_finish
        RETURNING j.id, i.token
      ),
      kept AS (
        UPDATE ${jobs} j
           SET state = 'completed', output = i.output::jsonb, finished_at = now(),
               keep_until = now() + j.retention_ms * interval '1 millisecond',
               lease_token = NULL, lease_expires_at = NULL
          FROM i
         WHERE j.id = ANY ($1::bigint[]) AND j.id = i.id AND j.lease_token = i.token
           AND (j.retention_ms > 0 OR j.notify_finish)
        RETURNING j.id, i.token, j.notify_finish
      )
      SELECT id::text AS id, token::text AS token, false AS notify_finish FROM gone
      UNION ALL
      SELECT id::text, token::text, notify_finish FROM kept`,

    /**
     * $1 ids, $2 tokens, $3 errors (json text), $4 retry delays in ms (null: fail for good).
     * Token-guarded. Retries go back to waiting at their new run_at, announced with one NOTIFY
     * per queue; failures are copied to their dead-letter queue in the same statement.
     */
    fail: `
      WITH gone AS (
        UPDATE ${jobs} j
           SET state = CASE WHEN i.retry_ms IS NULL THEN 'failed' ELSE 'retry' END,
               run_at = CASE WHEN i.retry_ms IS NULL THEN j.run_at
                             ELSE now() + i.retry_ms * interval '1 millisecond' END,
               errors = jsonb_path_query_array(j.errors || jsonb_build_array(i.error::jsonb),
                                               '$[last - 9 to last]'),
               finished_at = CASE WHEN i.retry_ms IS NULL THEN now() END,
               keep_until = CASE WHEN i.retry_ms IS NULL
                                 THEN now() + j.failed_retention_ms * interval '1 millisecond' END,
               lease_token = NULL, lease_expires_at = NULL
          FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[])
               AS i(id, token, error, retry_ms)
         WHERE j.id = ANY ($1::bigint[]) AND j.id = i.id AND j.lease_token = i.token
        RETURNING j.id, i.token, j.queue, j.state, j.run_at, j.payload, j.priority,
                  j.dead_letter, j.notify_finish, j.lease_ms
      ),
      dead AS (${deadLetterInsert}),
      woken AS (
        SELECT pg_notify(${channel}, 'q|' || queue || '|' ||
                 ceil(extract(epoch FROM min(run_at)) * 1000)::bigint::text || '|' ||
                 min(lease_ms))
          FROM gone WHERE state = 'retry' GROUP BY queue
      )
      SELECT g.id::text AS id, g.token::text AS token, g.state, g.notify_finish,
             (SELECT count(*) FROM dead)::int AS dead_lettered,
             (SELECT count(*) FROM woken)::int AS notified
        FROM gone g`,

    /**
     * $1 ids, $2 tokens. Shutdown: hand active jobs back without spending their attempt.
     */
    release: `
      WITH back AS (
        UPDATE ${jobs} j
           SET state = 'available', attempt = j.attempt - 1, lease_token = NULL,
               lease_expires_at = NULL, started_at = NULL, worker_id = NULL
          FROM unnest($1::bigint[], $2::uuid[]) AS i(id, token)
         WHERE j.id = ANY ($1::bigint[]) AND j.id = i.id AND j.lease_token = i.token
        RETURNING j.id, j.queue, j.lease_ms
      ),
      woken AS (
        SELECT pg_notify(${channel}, 'q|' || queue || '|0|' || min(lease_ms))
          FROM back GROUP BY queue
      )
      SELECT b.id::text AS id, (SELECT count(*) FROM woken)::int AS notified FROM back b`,

    /**
     * $1 ids, $2 tokens. One statement renews every lease this process holds; ids missing
     * from the result lost their lease (rescued, cancelled or finished elsewhere).
     */
    heartbeat: `
      UPDATE ${jobs} j
         SET lease_expires_at = now() + j.lease_ms * interval '1 millisecond'
        FROM unnest($1::bigint[], $2::uuid[]) AS i(id, token)
       WHERE j.id = ANY ($1::bigint[]) AND j.id = i.id AND j.lease_token = i.token
      RETURNING j.id::text AS id, i.token::text AS token`,

    /**
     * $1 batch size, $2 default lease ms, $3 grace ms, $4 whether due-but-unclaimed jobs keep
     * the leader looking (the caller stops that after a few unchanged passes: a queue nobody
     * works, such as a dead-letter queue, must not keep the cluster busy). The leader's pass, on the connection that
     * holds the leader lock: jobs whose lease expired go back to waiting (or fail for good
     * when out of attempts, with a dead-letter copy), finished jobs past keep_until are deleted
     * in a small batch, and the time of the next pass is computed from what is active, due and
     * scheduled. That time is broadcast ('p|<ms>') so followers know the leader is alive and
     * when to expect it next; '' means nothing needs a leader until new work arrives.
     */
    leaderPass: `
      WITH expired AS (
        SELECT id FROM ${jobs}
         WHERE state = 'active' AND lease_expires_at < now()
         ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
      ),
      gone AS (
        UPDATE ${jobs} j
           SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'failed' ELSE 'available' END,
               errors = jsonb_path_query_array(j.errors || jsonb_build_array(jsonb_build_object(
                          'attempt', j.attempt, 'at', now(), 'name', 'LeaseExpired',
                          'message', 'lease expired: worker ' || coalesce(j.worker_id, '?') ||
                                     ' stopped renewing it')), '$[last - 9 to last]'),
               finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
               keep_until = CASE WHEN j.attempt >= j.max_attempts
                                 THEN now() + j.failed_retention_ms * interval '1 millisecond' END,
               lease_token = NULL, lease_expires_at = NULL
          FROM expired e WHERE j.id = e.id
        RETURNING j.id, j.queue, j.state, j.payload, j.priority, j.dead_letter, j.notify_finish,
                  j.lease_ms
      ),
      dead AS (${deadLetterInsert}),
      woken AS (
        SELECT pg_notify(${channel}, 'q|' || queue || '|0|' || min(lease_ms)) FROM gone
         WHERE state = 'available' GROUP BY queue
      ),
      finished AS (
        SELECT pg_notify(${channel}, 'd|' || id) FROM gone WHERE state = 'failed' AND notify_finish
      ),
      old AS (
        SELECT id FROM ${jobs}
         WHERE state IN ${FINISHED} AND keep_until < now()
         ORDER BY keep_until LIMIT $1 FOR UPDATE SKIP LOCKED
      ),
      deleted AS (DELETE FROM ${jobs} j USING old WHERE j.id = old.id RETURNING j.id),
      look AS (
        SELECT
          (SELECT min(lease_expires_at) FROM ${jobs}
            WHERE state = 'active' AND lease_expires_at >= now()) AS next_expiry,
          EXISTS (SELECT 1 FROM ${jobs} WHERE state IN ${WAITING} AND run_at <= now()) AS due,
          (SELECT min(run_at) FROM ${jobs} WHERE state IN ('scheduled', 'retry')
            AND run_at > now()) AS next_run_at,
          (SELECT min(keep_until) FROM ${jobs} WHERE state IN ${FINISHED}
            AND keep_until >= now()) AS next_keep_until
      ),
      plan AS (
        SELECT CASE
                 WHEN (SELECT count(*) FROM gone) >= $1 OR (SELECT count(*) FROM deleted) >= $1
                   THEN now()
                 ELSE least(
                   look.next_expiry + $3 * interval '1 millisecond',
                   CASE WHEN look.due AND $4 THEN now() + ($2 + $3) * interval '1 millisecond' END,
                   look.next_run_at + ($2 + $3) * interval '1 millisecond',
                   CASE WHEN look.next_keep_until IS NOT NULL
                        THEN greatest(look.next_keep_until, now() + interval '1 minute') END)
               END AS next_pass
          FROM look
      )
      SELECT (SELECT count(*) FROM gone WHERE state = 'available')::int AS rescued,
             (SELECT count(*) FROM gone WHERE state = 'failed')::int AS failed,
             (SELECT count(*) FROM dead)::int AS dead_lettered,
             (SELECT count(*) FROM deleted)::int AS deleted,
             (SELECT count(*) FROM woken)::int + (SELECT count(*) FROM finished)::int AS notified,
             (SELECT due FROM look) AS due,
             (SELECT next_expiry IS NOT NULL FROM look) AS active,
             (extract(epoch FROM plan.next_pass) * 1000)::float8 AS next_pass_ms,
             pg_notify(${channel}, 'p|' ||
               coalesce(floor(extract(epoch FROM plan.next_pass) * 1000)::bigint::text, ''))
        FROM plan`,

    /** $1 advisory key. Leader election, on the listener's session; held until it ends. */
    tryLeaderLock: `SELECT pg_try_advisory_lock($1::bigint) AS acquired`,

    /**
     * A follower that just joined: when the earliest lease of an active job expires (epoch
     * ms), or null when no job is active and so nothing could need a rescue.
     */
    earliestLease: `
      SELECT (extract(epoch FROM min(lease_expires_at)) * 1000)::float8 AS at
        FROM ${jobs} WHERE state = 'active'`,

    /** $1 advisory key, $2 payload. Resign: free the lock and tell followers at once. */
    leaderResign: `SELECT pg_advisory_unlock($1::bigint) AS released, pg_notify(${channel}, $2)`,

    /** $1 ids. Tells waiters that these jobs ended. */
    notifyFinished: `SELECT pg_notify(${channel}, 'd|' || id) FROM unnest($1::text[]) AS id`,

    /** $1 payload. The listener's self-test echo. */
    notify: `SELECT pg_notify(${channel}, $1)`,

    /**
     * $1 id. Marks the job as waited for; no row when it already ended (or does not exist).
     * The update row-locks the job for an instant, and a claim running in that instant skips it
     * (SKIP LOCKED) and may then sleep: so a waiting job's queue is announced again, after
     * commit, when the lock is gone.
     */
    markWaited: `
      WITH marked AS (
        UPDATE ${jobs} SET notify_finish = true
         WHERE id = $1::bigint AND state NOT IN ${FINISHED} AND NOT notify_finish
        RETURNING id, queue, state, run_at, lease_ms
      )
      SELECT id, CASE WHEN state IN ${WAITING} AND run_at <= now()
                      THEN pg_notify(${channel}, 'q|' || queue || '|0|' || lease_ms) END AS notified
        FROM marked`,

    /** $1 id. */
    getJob: `
      SELECT id::text AS id, queue, state, priority, run_at, payload, attempt, max_attempts,
             retry_delay_ms, retry_backoff, retry_delay_max_ms, timeout_ms, lease_ms,
             singleton_key, dead_letter, retention_ms, failed_retention_ms, lease_expires_at,
             worker_id, output,
             errors, created_at, started_at, finished_at, keep_until,
             source_job_id::text AS source_job_id
        FROM ${jobs} WHERE id = $1::bigint`,

    /**
     * $1 id. Cancels a waiting or active job. An active job's worker is told ('x|<id>') to
     * abort it; its late completion is refused by the state guard.
     */
    cancel: `
      WITH prior AS (SELECT id, state FROM ${jobs} WHERE id = $1::bigint FOR UPDATE),
      done AS (
        UPDATE ${jobs} j
           SET state = 'cancelled', finished_at = now(),
               keep_until = now() + j.retention_ms * interval '1 millisecond',
               lease_token = NULL, lease_expires_at = NULL
          FROM prior p
         WHERE j.id = p.id AND p.state IN ('scheduled', 'available', 'retry', 'active')
        RETURNING j.id, j.notify_finish
      ),
      told AS (
        SELECT pg_notify(${channel}, 'x|' || p.id) FROM prior p, done WHERE p.state = 'active'
        UNION ALL
        SELECT pg_notify(${channel}, 'd|' || d.id) FROM done d WHERE d.notify_finish
      )
      SELECT p.state AS prior_state, (SELECT count(*) FROM done)::int AS cancelled,
             (SELECT count(*) FROM told)::int AS notified
        FROM prior p`,

    /**
     * $1 id. Puts a failed or cancelled job back to available with one more attempt.
     */
    retry: `
      WITH prior AS (SELECT id, state FROM ${jobs} WHERE id = $1::bigint FOR UPDATE),
      back AS (
        UPDATE ${jobs} j
           SET state = 'available', run_at = now(), finished_at = NULL, keep_until = NULL,
               max_attempts = greatest(j.max_attempts, j.attempt + 1), output = NULL
          FROM prior p WHERE j.id = p.id AND p.state IN ('failed', 'cancelled')
        RETURNING j.id, j.queue, j.lease_ms
      ),
      woken AS (SELECT pg_notify(${channel}, 'q|' || queue || '|0|' || lease_ms) FROM back)
      SELECT p.state AS prior_state, (SELECT count(*) FROM back)::int AS retried,
             (SELECT count(*) FROM woken)::int AS notified
        FROM prior p`,

    /** Counts per queue and state, including queues with no jobs. */
    queueStats: `
      SELECT q.name AS queue, q.paused, c.state, coalesce(c.n, 0)::int AS count
        FROM ${s}.queues q
        LEFT JOIN (SELECT queue, state, count(*) AS n FROM ${jobs} GROUP BY queue, state) c
          ON c.queue = q.name
       ORDER BY q.name, c.state`,

    /** $1 queue or null, $2 limit. The most recent failures with their errors. */
    failedJobs: `
      SELECT id::text AS id, queue, payload, attempt, max_attempts, errors, finished_at,
             dead_letter
        FROM ${jobs}
       WHERE state = 'failed' AND ($1::text IS NULL OR queue = $1)
       ORDER BY finished_at DESC, id DESC LIMIT $2`,
  };
}
