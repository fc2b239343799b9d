-- 0019: the node calls of the placement hot path (heartbeats, lease
-- reports, confirmations) are written in batches: gpumatchd gathers the
-- calls that arrive while a batch commits and writes them in one statement,
-- one transaction and one WAL flush, each element through the function
-- below (the same checks and changes as one call alone). A batch that fails
-- is written again one call at a time, so one bad element never fails
-- another's call.

-- One node's heartbeat (as the single statement gpumatchd ran before): the
-- first listed lease that is not the node's (bad_o, 1-based), or the first
-- reported GPU the node did not register by index or whose uuid is not the
-- registered one (gpu_bad_*; an empty uuid is not checked), refuses the
-- heartbeat and changes nothing; otherwise the node's liveness, listed
-- leases and GPU health are recorded and REGISTERED or LOST nodes become
-- READY (a held one CORDONED, a retiring one DRAINING); a DISABLED node
-- (old_state 6: retired) records nothing. No row: no such node of this
-- operator (p_operator 0: any). The node row is locked FOR NO KEY UPDATE: heartbeats
-- of one node serialize, and leases placed on it meanwhile are not held up.
CREATE FUNCTION gm_heartbeat(p_node bigint, p_operator bigint, p_now bigint, p_running bigint[],
                             p_unhealthy bigint, p_health text, p_gpu_idx integer[],
                             p_gpu_uuid text[])
RETURNS TABLE (state smallint, verification_status smallint, old_state smallint, stops text,
               unknown text, health_changed boolean, bad_o bigint, gpu_bad_o bigint,
               gpu_bad_what text, gpu_bad_index integer, gpus_registered text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH bad AS (SELECT min(x.o) AS o FROM unnest(p_running) WITH ORDINALITY x(id, o)
                  WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = x.id
                                       AND l.node_id = p_node)),
         gbad AS (SELECT x.o, CASE WHEN g.idx IS NULL THEN 'index' ELSE 'uuid' END AS what,
                         x.i, (SELECT count(*) FROM gpus WHERE node_id = p_node) AS n
                    FROM unnest(p_gpu_idx, p_gpu_uuid) WITH ORDINALITY x(i, u, o)
                    LEFT JOIN gpus g ON g.node_id = p_node AND g.idx = x.i
                   WHERE g.idx IS NULL OR (x.u <> '' AND x.u <> g.uuid) ORDER BY x.o LIMIT 1),
         old AS (SELECT n.state, n.unhealthy_gpus FROM nodes n WHERE n.id = p_node
                    AND (p_operator = 0 OR n.operator_id = p_operator)
                    FOR NO KEY UPDATE),
         up AS (UPDATE nodes n SET last_heartbeat_us = p_now,
                       running_leases = p_running,
                       leases_unlisted = EXISTS (SELECT 1 FROM leases l
                            WHERE l.node_id = p_node AND l.state IN (2, 3)
                              AND NOT (l.id = ANY (p_running))),
                       heartbeats_received = n.heartbeats_received + 1,
                       state = CASE WHEN n.state = 1 THEN 2
                           WHEN n.state = 5 THEN (CASE WHEN n.admin_hold THEN 4
                               WHEN n.retired_at_us > 0 THEN 3 ELSE 2 END)
                           ELSE n.state END,
                       state_changed_at_us = CASE WHEN n.state IN (1, 5) THEN p_now
                           ELSE n.state_changed_at_us END,
                       state_reason = CASE WHEN n.state IN (1, 5) THEN 'heartbeating'
                           ELSE n.state_reason END,
                       unhealthy_gpus = p_unhealthy, health_reason = p_health
                  FROM old, bad WHERE n.id = p_node AND bad.o IS NULL AND old.state <> 6
                   AND NOT EXISTS (SELECT 1 FROM gbad)
                 RETURNING n.state, n.verification_status)
    SELECT up.state, up.verification_status, old.state,
           (SELECT coalesce(string_agg(l.id || ':' || l.stop_deadline_us || ':' ||
                                       l.stop_kind || ':' || l.stop_reason, ';'), '')
              FROM leases l WHERE l.node_id = p_node AND l.state = 4),
           (SELECT coalesce(string_agg(x::text, ','), '') FROM unnest(p_running) x
             WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = x
                                  AND l.node_id = p_node AND l.state BETWEEN 2 AND 4)),
           old.unhealthy_gpus <> p_unhealthy, bad.o, gbad.o, gbad.what, gbad.i,
           CASE WHEN gbad.n = 1 THEN '1 GPU, index 0'
                ELSE gbad.n || ' GPUs, indexes 0..' || (gbad.n - 1) END
      FROM old CROSS JOIN bad LEFT JOIN gbad ON true LEFT JOIN up ON true;
END $$;

-- As 0011, less the node's leases_succeeded count: gm_report_leases adds
-- the counts of a whole batch at its end, the nodes in id order, so that a
-- batch holds node rows (which heartbeats write) only for its last moment.
CREATE OR REPLACE FUNCTION gm_report_lease(
    p_lease bigint, p_node bigint, p_operator bigint, p_fence bigint, p_seq bigint,
    p_state smallint, p_exit integer, p_signal integer, p_message text, p_now bigint,
    p_max_attempts integer, p_started bigint, p_exited bigint, p_hb_interval bigint)
RETURNS TABLE (status text, job_id bigint, job_state smallint, job_done boolean,
               requeued boolean)
LANGUAGE plpgsql AS $$
DECLARE
    l record;
    r record;
    hb bigint;
BEGIN
    SELECT x.*, n.operator_id AS op INTO l FROM leases x JOIN nodes n ON n.id = x.node_id
     WHERE x.id = p_lease FOR UPDATE OF x;
    job_done := false; requeued := false;
    IF NOT FOUND OR (p_operator <> 0 AND l.op <> p_operator) THEN
        status := 'not_found';
        RETURN NEXT;
        RETURN;
    END IF;
    job_id := l.job_id;
    IF l.node_id <> p_node THEN
        status := 'other_node';
        RETURN NEXT;
        RETURN;
    END IF;
    IF l.fencing_token <> p_fence THEN
        status := 'stale';
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_seq = l.last_report_seq THEN
        status := 'duplicate';
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_seq < l.last_report_seq THEN
        status := 'out_of_order';
        RETURN NEXT;
        RETURN;
    END IF;
    IF l.state = 1 THEN
        status := 'not_offered';
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE leases SET last_report_seq = p_seq WHERE id = p_lease;
    IF l.state > 4 THEN
        status := 'ended';
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_state = 3 THEN
        -- the first RUNNING report after a ConfirmLease moves the start to
        -- when the process started (later only: never bills more)
        UPDATE leases SET state = CASE WHEN state = 2 THEN 3 ELSE state END,
                          started_at_us = CASE
                              WHEN started_at_us = 0 THEN greatest(offered_at_us, least(p_now,
                                  CASE WHEN p_started > 0 THEN p_started ELSE p_now END))
                              WHEN NOT confirmed_by_report AND p_started > started_at_us
                                  THEN least(p_now, p_started)
                              ELSE started_at_us END,
                          confirmed_by_report = true
         WHERE id = p_lease;
        IF l.state = 2 THEN
            INSERT INTO job_events (job_id, at_us, kind, detail)
                VALUES (l.job_id, p_now, 'running', 'node ' || p_node);
        END IF;
        status := 'ok';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT n.last_heartbeat_us INTO hb FROM nodes n WHERE n.id = p_node;
    SELECT * INTO r FROM gm_end_lease(p_lease, p_state, p_exit, p_signal, p_message, p_now,
                                      p_max_attempts);
    UPDATE leases SET billed_end_us = CASE WHEN started_at_us = 0 THEN 0
                                           ELSE greatest(started_at_us, least(p_now,
                                               hb + p_hb_interval,
                                               CASE WHEN p_exited > 0 THEN p_exited
                                                    ELSE p_now END)) END
     WHERE id = p_lease;
    status := 'ok'; job_state := r.job_state; job_done := r.job_done; requeued := r.requeued;
    RETURN NEXT;
END $$;

-- A batch of lease reports: element i is gm_report_lease_ext's call (0012)
-- with the i-th value of each array, answered with the status, the seq last applied
-- before, and the lease row as it is afterwards (NULL when there is no such
-- lease). The leases and their jobs are locked first, each in id order, and
-- the nodes' counts of finished leases are added at the end, in node id
-- order: a batch never deadlocks with another one, a heartbeat batch
-- (nodes in id order) or the janitor (leases in id order). Reports of one
-- lease keep their order.
CREATE FUNCTION gm_report_leases(
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
BEGIN
    PERFORM 1 FROM leases x WHERE x.id = ANY (p_lease) ORDER BY x.id FOR UPDATE;
    PERFORM 1 FROM jobs j WHERE j.id IN (SELECT x.job_id FROM leases x WHERE x.id = ANY (p_lease))
      ORDER BY j.id FOR UPDATE;
    FOR k IN 1 .. coalesce(array_length(p_lease, 1), 0) LOOP
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

-- A batch of confirmations (gm_confirm_lease for each element), answered
-- with the status and the lease row afterwards; leases locked in id order
-- first, as gm_report_leases does.
CREATE FUNCTION gm_confirm_leases(p_lease bigint[], p_node bigint[], p_operator bigint[],
                                  p_fence bigint[], p_started bigint[], p_now bigint[])
RETURNS TABLE (i integer, status text, job_id bigint, lease leases)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM 1 FROM leases x WHERE x.id = ANY (p_lease) ORDER BY x.id FOR UPDATE;
    FOR k IN 1 .. coalesce(array_length(p_lease, 1), 0) LOOP
        SELECT * INTO r FROM gm_confirm_lease(p_lease[k], p_node[k], p_operator[k], p_fence[k],
                                              p_started[k], p_now[k]);
        i := k;
        status := coalesce(r.status, 'not_found');
        job_id := r.job_id;
        SELECT * INTO lease FROM leases x WHERE x.id = p_lease[k];
        RETURN NEXT;
    END LOOP;
END $$;
