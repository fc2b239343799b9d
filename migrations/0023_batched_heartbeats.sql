-- 0023: fewer statements per batch of node calls, and a rollup that no
-- longer grows with nodes x postings.
--
-- * gm_report_leases (0022): the set-based RUNNING and SUCCEEDED reports
--   are one UPDATE of the leases (answered from its RETURNING) and one
--   INSERT of their job events, instead of two of each and a re-read.
-- * gm_heartbeats: a batch of heartbeats in one call. The common heartbeat
--   (see below) is one UPDATE of all the batch's nodes instead of one
--   gm_heartbeat statement per node; gpumatchd calls it instead of
--   gm_heartbeat per element.
-- * gm_rollup (0013) sums a node row's usage once per node.

CREATE OR REPLACE FUNCTION gm_report_leases(
    p_lease bigint[], p_node bigint[], p_operator bigint[], p_fence bigint[], p_seq bigint[],
    p_state smallint[], p_exit integer[], p_signal integer[], p_message text[], p_now bigint[],
    p_max_attempts integer, p_started bigint[], p_exited bigint[], p_hb_interval bigint,
    p_kind smallint[], p_digest text[])
RETURNS TABLE (i integer, status text, job_id bigint, job_state smallint, job_done boolean,
               requeued boolean, last_seq bigint, lease leases)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    ended bigint[] := '{}';
    fast integer[];
    is_fast boolean[];
BEGIN
    PERFORM 1 FROM leases x WHERE x.id = ANY (p_lease) ORDER BY x.id FOR UPDATE;
    PERFORM 1 FROM jobs j WHERE j.id IN (SELECT x.job_id FROM leases x WHERE x.id = ANY (p_lease))
      ORDER BY j.id FOR UPDATE;
    -- The elements written set-based: every check of gm_report_lease
    -- passes (lease of this node and operator, fencing token, seq newer),
    -- and the element is alone in the batch with its job (so with its
    -- lease). RUNNING: the lease is offered, running or stopping.
    -- SUCCEEDED: the lease runs (not told to stop), its job RUNNING with
    -- no other live lease in the attempt: the job ends SUCCEEDED.
    SELECT coalesce(array_agg(c.k ORDER BY c.k), '{}') INTO fast
      FROM (SELECT u.k, x.id, x.job_id, x.node_id, x.fencing_token, x.last_report_seq,
                   x.state, x.stop_kind, x.gang_size, x.attempt, nd.operator_id,
                   j.state AS job_state,
                   count(*) OVER (PARTITION BY coalesce(x.job_id, -u.k)) AS per_job
              FROM unnest(p_lease) WITH ORDINALITY u(l, k)
              LEFT JOIN leases x ON x.id = u.l
              LEFT JOIN nodes nd ON nd.id = x.node_id
              LEFT JOIN jobs j ON j.id = x.job_id) c
     WHERE c.id IS NOT NULL AND c.per_job = 1
       AND (p_operator[c.k] = 0 OR c.operator_id = p_operator[c.k])
       AND c.node_id = p_node[c.k] AND c.fencing_token = p_fence[c.k]
       AND p_seq[c.k] > c.last_report_seq
       AND ((p_state[c.k] = 3 AND c.state BETWEEN 2 AND 4)
            OR (p_state[c.k] = 5 AND c.state = 3 AND c.stop_kind = 0 AND c.gang_size = 1
                AND c.job_state = 2
                AND NOT EXISTS (SELECT 1 FROM leases y
                                 WHERE y.job_id = c.job_id AND y.attempt = c.attempt
                                   AND y.id <> c.id AND y.state BETWEEN 1 AND 4)));
    is_fast := array_fill(false, ARRAY[coalesce(array_length(p_lease, 1), 0)]);
    FOR k IN 1 .. coalesce(array_length(fast, 1), 0) LOOP
        is_fast[fast[k]] := true;
    END LOOP;

    IF cardinality(fast) > 0 THEN
        -- the job events first, while each lease still shows whether it was
        -- only offered: RUNNING (when it was) and the end of the job
        INSERT INTO job_events (job_id, at_us, kind, detail)
        SELECT x.job_id, p_now[f.k],
               CASE WHEN p_state[f.k] = 3 THEN 'running' ELSE 'ended' END,
               CASE WHEN p_state[f.k] = 3 THEN 'node ' || p_node[f.k] ELSE 'state 4' END
          FROM unnest(fast) f(k) JOIN leases x ON x.id = p_lease[f.k]
         WHERE p_state[f.k] = 5 OR x.state = 2
         ORDER BY f.k;
        UPDATE jobs j SET state = 4, ended_at_us = p_now[f.k], updated_at_us = p_now[f.k]
          FROM unnest(fast) f(k) JOIN leases x ON x.id = p_lease[f.k]
         WHERE p_state[f.k] = 5 AND j.id = x.job_id;
        ended := ended || ARRAY(SELECT p_node[f.k] FROM unnest(fast) f(k)
                                 WHERE p_state[f.k] = 5);
        -- RUNNING (gm_report_lease's p_state = 3 branch) confirms an offer
        -- and may move a ConfirmLease's start to the process start;
        -- SUCCEEDED (gm_report_lease's end, gm_end_lease's last branch)
        -- ends the lease, its usage up to min(exit, last heartbeat +
        -- interval, now). Answered with the lease as it is afterwards.
        RETURN QUERY
        WITH up AS (
            UPDATE leases x
               SET last_report_seq = p_seq[f.k],
                   image_digest = CASE WHEN p_digest[f.k] <> '' AND x.image_digest = ''
                                       THEN p_digest[f.k] ELSE x.image_digest END,
                   state = CASE WHEN p_state[f.k] = 5 THEN 5
                                WHEN x.state = 2 THEN 3 ELSE x.state END,
                   started_at_us = CASE
                       WHEN p_state[f.k] = 5 THEN x.started_at_us
                       WHEN x.started_at_us = 0 THEN greatest(x.offered_at_us,
                           least(p_now[f.k], CASE WHEN p_started[f.k] > 0
                                                  THEN p_started[f.k] ELSE p_now[f.k] END))
                       WHEN NOT x.confirmed_by_report AND p_started[f.k] > x.started_at_us
                           THEN least(p_now[f.k], p_started[f.k])
                       ELSE x.started_at_us END,
                   confirmed_by_report = x.confirmed_by_report OR p_state[f.k] = 3,
                   ended_at_us = CASE WHEN p_state[f.k] = 5 THEN p_now[f.k]
                                      ELSE x.ended_at_us END,
                   exit_code = CASE WHEN p_state[f.k] = 5 THEN p_exit[f.k]
                                    ELSE x.exit_code END,
                   term_signal = CASE WHEN p_state[f.k] = 5 THEN p_signal[f.k]
                                      ELSE x.term_signal END,
                   end_message = CASE WHEN p_state[f.k] = 5 THEN coalesce(p_message[f.k], '')
                                      ELSE x.end_message END,
                   billed_end_us = CASE WHEN p_state[f.k] <> 5 THEN x.billed_end_us
                       WHEN x.started_at_us = 0 THEN 0
                       ELSE greatest(x.started_at_us, least(p_now[f.k],
                           nd.last_heartbeat_us + p_hb_interval,
                           CASE WHEN p_exited[f.k] > 0 THEN p_exited[f.k]
                                ELSE p_now[f.k] END)) END
              FROM unnest(fast) f(k) JOIN nodes nd ON nd.id = p_node[f.k]
             WHERE x.id = p_lease[f.k]
            RETURNING f.k AS k, x AS l)
        SELECT up.k::integer, 'ok'::text, (up.l).job_id,
               CASE WHEN p_state[up.k] = 5 THEN 4::smallint END,
               p_state[up.k] = 5, false, (up.l).last_report_seq, up.l
          FROM up;
    END IF;

    FOR k IN 1 .. coalesce(array_length(p_lease, 1), 0) LOOP
        CONTINUE WHEN is_fast[k];
        SELECT * INTO r FROM gm_report_lease_ext(p_lease[k], p_node[k], p_operator[k],
                                                 p_fence[k], p_seq[k], p_state[k], p_exit[k],
                                                 p_signal[k], p_message[k], p_now[k],
                                                 p_max_attempts, p_started[k], p_exited[k],
                                                 p_hb_interval, p_kind[k], p_digest[k]);
        i := k;
        status := coalesce(r.status, 'not_found');
        job_id := r.job_id; job_state := r.job_state;
        job_done := coalesce(r.job_done, false); requeued := coalesce(r.requeued, false);
        SELECT * INTO lease FROM leases x WHERE x.id = p_lease[k];
        last_seq := lease.last_report_seq;
        -- a final report the lease ended with (an interruption is not one)
        IF status = 'ok' AND p_state[k] NOT IN (3, 20) AND lease.state <> 20 THEN
            ended := ended || p_node[k];
        END IF;
        RETURN NEXT;
    END LOOP;
    PERFORM 1 FROM nodes n WHERE n.id = ANY (ended) ORDER BY n.id FOR NO KEY UPDATE;
    UPDATE nodes n SET leases_succeeded = n.leases_succeeded + c.n
      FROM (SELECT e.node, count(*) AS n FROM unnest(ended) e(node) GROUP BY e.node) c
     WHERE n.id = c.node;
END $$;

-- A batch of heartbeats (gm_heartbeat, 0019, for each element), answered
-- with the element's position and gm_heartbeat's columns. The nodes are
-- locked first, in id order (the batch comes sorted by node, as before).
-- The common heartbeat — a node of this operator, not retired, named once
-- in the batch, listing only its own leases and the GPUs it registered —
-- is written for all such elements in one statement with exactly
-- gm_heartbeat's changes; every other element goes through gm_heartbeat.
CREATE FUNCTION gm_heartbeats(p_node bigint[], p_operator bigint[], p_now bigint[],
                              p_running text[], p_unhealthy bigint[], p_health text[],
                              p_gpu_idx text[], p_gpu_uuid text[])
RETURNS TABLE (i integer, state smallint, verification_status smallint, old_state smallint,
               stops text, unknown text, health_changed boolean, bad_o bigint,
               gpu_bad_o bigint, gpu_bad_what text, gpu_bad_index integer,
               gpus_registered text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    fast integer[];
    is_fast boolean[];
BEGIN
    PERFORM 1 FROM nodes nd WHERE nd.id = ANY (p_node) ORDER BY nd.id FOR NO KEY UPDATE;
    SELECT coalesce(array_agg(c.k ORDER BY c.k), '{}') INTO fast
      FROM (SELECT u.k, u.node, nd.state AS st, nd.operator_id AS op,
                   count(*) OVER (PARTITION BY u.node) AS per_node
              FROM unnest(p_node) WITH ORDINALITY u(node, k)
              LEFT JOIN nodes nd ON nd.id = u.node) c
     WHERE c.per_node = 1 AND c.st IS NOT NULL AND c.st <> 6
       AND (p_operator[c.k] = 0 OR c.op = p_operator[c.k])
       AND NOT EXISTS (SELECT 1 FROM unnest(p_running[c.k]::bigint[]) r(id)
                        WHERE NOT EXISTS (SELECT 1 FROM leases l
                                           WHERE l.id = r.id AND l.node_id = c.node))
       AND NOT EXISTS (SELECT 1 FROM unnest(p_gpu_idx[c.k]::integer[],
                                            p_gpu_uuid[c.k]::text[]) x(gi, gu)
                         LEFT JOIN gpus g ON g.node_id = c.node AND g.idx = x.gi
                        WHERE g.idx IS NULL OR (x.gu <> '' AND x.gu <> g.uuid));
    is_fast := array_fill(false, ARRAY[coalesce(array_length(p_node, 1), 0)]);
    FOR k IN 1 .. coalesce(array_length(fast, 1), 0) LOOP
        is_fast[fast[k]] := true;
    END LOOP;
    IF cardinality(fast) > 0 THEN
        RETURN QUERY
        WITH old AS (SELECT nd.id, nd.state, nd.unhealthy_gpus FROM nodes nd
                      WHERE nd.id IN (SELECT p_node[f.k] FROM unnest(fast) f(k))),
             up AS (UPDATE nodes n SET last_heartbeat_us = p_now[f.k],
                           running_leases = p_running[f.k]::bigint[],
                           leases_unlisted = EXISTS (SELECT 1 FROM leases l
                                WHERE l.node_id = n.id AND l.state IN (2, 3)
                                  AND NOT (l.id = ANY (p_running[f.k]::bigint[]))),
                           heartbeats_received = n.heartbeats_received + 1,
                           state = CASE WHEN n.state = 1 THEN 2
                               WHEN n.state = 5 THEN (CASE WHEN n.admin_hold THEN 4
                                   WHEN n.retired_at_us > 0 THEN 3 ELSE 2 END)
                               ELSE n.state END,
                           state_changed_at_us = CASE WHEN n.state IN (1, 5) THEN p_now[f.k]
                               ELSE n.state_changed_at_us END,
                           state_reason = CASE WHEN n.state IN (1, 5) THEN 'heartbeating'
                               ELSE n.state_reason END,
                           unhealthy_gpus = p_unhealthy[f.k], health_reason = p_health[f.k]
                      FROM unnest(fast) f(k) WHERE n.id = p_node[f.k]
                    RETURNING f.k AS k, n.id, n.state, n.verification_status)
        SELECT up.k::integer, up.state, up.verification_status, old.state,
               (SELECT coalesce(string_agg(l.id || ':' || l.stop_deadline_us || ':' ||
                                           l.stop_kind || ':' || l.stop_reason, ';'), '')
                  FROM leases l WHERE l.node_id = up.id AND l.state = 4),
               (SELECT coalesce(string_agg(x::text, ','), '')
                  FROM unnest(p_running[up.k]::bigint[]) x
                 WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = x
                                      AND l.node_id = up.id AND l.state BETWEEN 2 AND 4)),
               old.unhealthy_gpus <> p_unhealthy[up.k], NULL::bigint, NULL::bigint, NULL::text,
               NULL::integer, NULL::text
          FROM up JOIN old ON old.id = up.id;
    END IF;
    FOR k IN 1 .. coalesce(array_length(p_node, 1), 0) LOOP
        CONTINUE WHEN is_fast[k];
        RETURN QUERY SELECT k, h.* FROM gm_heartbeat(p_node[k], p_operator[k], p_now[k],
                                                     p_running[k]::bigint[], p_unhealthy[k],
                                                     p_health[k], p_gpu_idx[k]::integer[],
                                                     p_gpu_uuid[k]::text[]) h;
    END LOOP;
END $$;

-- gm_rollup (0013) with the node rows' usage of the current minute summed
-- once per node in one pass: it was summed for each node by a scan of all
-- of the minute's postings (nodes x postings: about 1 s a run at 1,000
-- nodes and a few thousand postings, growing with both).
CREATE OR REPLACE FUNCTION gm_rollup(p_now bigint, p_prune_before_us bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cur bigint := p_now - p_now % 60000000;
    prev bigint := cur - 60000000;
    n integer;
BEGIN
    -- GPU states now, one row per GPU of every node not disabled
    IF to_regclass('pg_temp.gm_rollup_gpu') IS NULL THEN
        CREATE TEMP TABLE gm_rollup_gpu (
            node_id bigint, operator_id bigint, region text, model text, c "char")
            ON COMMIT DELETE ROWS;
    END IF;
    INSERT INTO gm_rollup_gpu
    SELECT n.id, n.operator_id, n.region, g.model,
           CASE WHEN (n.unhealthy_gpus >> g.idx) & 1 = 1 THEN 'u'
                WHEN (coalesce(l.mask, 0) >> g.idx) & 1 = 1 THEN 'b'
                WHEN n.verification_status <> 3 THEN 'v'
                WHEN n.state = 2 THEN 'f'
                ELSE 'o' END
      FROM nodes n JOIN gpus g ON g.node_id = n.id
      LEFT JOIN (SELECT node_id, bit_or(gpu_mask) AS mask FROM leases
                  WHERE state BETWEEN 1 AND 4 GROUP BY node_id) l ON l.node_id = n.id
     WHERE n.state <> 6;

    -- usage posted in the previous and the current minute
    IF to_regclass('pg_temp.gm_rollup_money') IS NULL THEN
        CREATE TEMP TABLE gm_rollup_money (
            minute_us bigint, node_id bigint, tenant_id bigint, region text, model text,
            amt bigint, gs bigint) ON COMMIT DELETE ROWS;
    END IF;
    INSERT INTO gm_rollup_money
    SELECT t.created_at_us - t.created_at_us % 60000000, l.node_id, j.tenant_id, n.region,
           coalesce((SELECT g.model FROM gpus g WHERE g.node_id = l.node_id
                       AND (l.gpu_mask >> g.idx) & 1 = 1 ORDER BY g.idx LIMIT 1), ''),
           t.amount_micros, t.gpu_seconds
      FROM ledger_transfers t JOIN leases l ON l.id = t.lease_id
      JOIN jobs j ON j.id = l.job_id JOIN nodes n ON n.id = l.node_id
     WHERE t.created_at_us >= prev AND t.created_at_us < cur + 60000000
       AND t.kind = 2 AND t.state = 2 AND t.lease_id <> 0;

    INSERT INTO rollup_node_minute AS r (minute_us, node_id, operator_id, gpus_total, gpus_free,
                                         gpus_busy, gpus_unhealthy, gpus_unverified,
                                         revenue_micros, gpu_seconds)
    SELECT cur, g.node_id, g.operator_id, g.total, g.free, g.busy, g.unhealthy, g.unverified,
           coalesce(m.amt, 0), coalesce(m.gs, 0)
      FROM (SELECT g.node_id, max(g.operator_id) AS operator_id, count(*) AS total,
                   count(*) FILTER (WHERE g.c = 'f') AS free,
                   count(*) FILTER (WHERE g.c = 'b') AS busy,
                   count(*) FILTER (WHERE g.c = 'u') AS unhealthy,
                   count(*) FILTER (WHERE g.c = 'v') AS unverified
              FROM gm_rollup_gpu g GROUP BY g.node_id) g
      LEFT JOIN (SELECT m.node_id, sum(m.amt) AS amt, sum(m.gs) AS gs FROM gm_rollup_money m
                  WHERE m.minute_us = cur GROUP BY m.node_id) m ON m.node_id = g.node_id
    ON CONFLICT (minute_us, node_id) DO UPDATE
       SET gpus_total = EXCLUDED.gpus_total, gpus_free = EXCLUDED.gpus_free,
           gpus_busy = EXCLUDED.gpus_busy, gpus_unhealthy = EXCLUDED.gpus_unhealthy,
           gpus_unverified = EXCLUDED.gpus_unverified,
           revenue_micros = EXCLUDED.revenue_micros, gpu_seconds = EXCLUDED.gpu_seconds;
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE rollup_node_minute r SET revenue_micros = s.amt, gpu_seconds = s.gs
      FROM (SELECT node_id, sum(amt) AS amt, sum(gs) AS gs FROM gm_rollup_money
             WHERE minute_us = prev GROUP BY node_id) s
     WHERE r.minute_us = prev AND r.node_id = s.node_id;

    INSERT INTO rollup_fleet_minute AS r (minute_us, gpu_model, region, gpus_total, gpus_free,
                                          gpus_busy, gpus_unhealthy, gpus_unverified,
                                          revenue_micros, gpu_seconds)
    SELECT cur, g.model, g.region, count(*),
           count(*) FILTER (WHERE g.c = 'f'), count(*) FILTER (WHERE g.c = 'b'),
           count(*) FILTER (WHERE g.c = 'u'), count(*) FILTER (WHERE g.c = 'v'), 0, 0
      FROM gm_rollup_gpu g GROUP BY g.model, g.region
    ON CONFLICT (minute_us, gpu_model, region) DO UPDATE
       SET gpus_total = EXCLUDED.gpus_total, gpus_free = EXCLUDED.gpus_free,
           gpus_busy = EXCLUDED.gpus_busy, gpus_unhealthy = EXCLUDED.gpus_unhealthy,
           gpus_unverified = EXCLUDED.gpus_unverified;
    -- money by model and region: a minute with postings but no GPUs of the
    -- group left (the node went away) still gets its row
    INSERT INTO rollup_fleet_minute AS r (minute_us, gpu_model, region, gpus_total, gpus_free,
                                          gpus_busy, gpus_unhealthy, gpus_unverified,
                                          revenue_micros, gpu_seconds)
    SELECT m.minute_us, m.model, m.region, 0, 0, 0, 0, 0, sum(m.amt), sum(m.gs)
      FROM gm_rollup_money m GROUP BY m.minute_us, m.model, m.region
    ON CONFLICT (minute_us, gpu_model, region) DO UPDATE
       SET revenue_micros = EXCLUDED.revenue_micros, gpu_seconds = EXCLUDED.gpu_seconds;

    INSERT INTO rollup_tenant_minute (minute_us, tenant_id, spend_micros, gpu_seconds)
    SELECT m.minute_us, m.tenant_id, sum(m.amt), sum(m.gs)
      FROM gm_rollup_money m GROUP BY m.minute_us, m.tenant_id
    ON CONFLICT (minute_us, tenant_id) DO UPDATE
       SET spend_micros = EXCLUDED.spend_micros, gpu_seconds = EXCLUDED.gpu_seconds;

    IF p_prune_before_us > 0 THEN
        DELETE FROM rollup_node_minute WHERE minute_us < p_prune_before_us;
        DELETE FROM rollup_fleet_minute WHERE minute_us < p_prune_before_us;
        DELETE FROM rollup_tenant_minute WHERE minute_us < p_prune_before_us;
    END IF;
    RETURN n;
END $$;
