-- 0019: the node calls of the placement hot path (heartbeats, lease
-- reports, confirmations) are written in batches: gpumatchd gathers the
-- calls that arrive while a batch commits and writes them in one statement,
-- one transaction and one WAL flush, each element through the function
-- below (the same checks and changes as one call alone). A batch that fails
-- is written again one call at a time, so one bad element never fails
-- another's call.

-- One node's heartbeat (as the single statement gpumatchd ran before): the
-- first listed lease that is not the node's (bad_o, 1-based) refuses the
-- heartbeat and changes nothing; otherwise the node's liveness, listed
-- leases and GPU health are recorded and REGISTERED or LOST nodes become
-- READY (a held one CORDONED). No row: no such node of this operator
-- (p_operator 0: any). The node row is locked FOR NO KEY UPDATE: heartbeats
-- of one node serialize, and leases placed on it meanwhile are not held up.
CREATE FUNCTION gm_heartbeat(p_node bigint, p_operator bigint, p_now bigint, p_running bigint[],
                             p_unhealthy bigint, p_health text)
RETURNS TABLE (state smallint, verification_status smallint, old_state smallint, stops text,
               unknown text, health_changed boolean, bad_o bigint)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH bad AS (SELECT min(x.o) AS o FROM unnest(p_running) WITH ORDINALITY x(id, o)
                  WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = x.id
                                       AND l.node_id = p_node)),
         old AS (SELECT n.state, n.unhealthy_gpus FROM nodes n WHERE n.id = p_node
                    AND (p_operator = 0 OR n.operator_id = p_operator) AND n.state <> 6
                    FOR NO KEY UPDATE),
         up AS (UPDATE nodes n SET last_heartbeat_us = p_now,
                       running_leases = p_running,
                       leases_unlisted = EXISTS (SELECT 1 FROM leases l
                            WHERE l.node_id = p_node AND l.state IN (2, 3)
                              AND NOT (l.id = ANY (p_running))),
                       heartbeats_received = n.heartbeats_received + 1,
                       state = CASE WHEN n.state = 1 THEN 2
                           WHEN n.state = 5 THEN (CASE WHEN n.admin_hold THEN 4 ELSE 2 END)
                           ELSE n.state END,
                       state_changed_at_us = CASE WHEN n.state IN (1, 5) THEN p_now
                           ELSE n.state_changed_at_us END,
                       state_reason = CASE WHEN n.state IN (1, 5) THEN 'heartbeating'
                           ELSE n.state_reason END,
                       unhealthy_gpus = p_unhealthy, health_reason = p_health
                  FROM old, bad WHERE n.id = p_node AND bad.o IS NULL
                 RETURNING n.state, n.verification_status)
    SELECT up.state, up.verification_status, old.state,
           (SELECT coalesce(string_agg(l.id || ':' || l.stop_deadline_us || ':' ||
                                       l.stop_reason, ';'), '')
              FROM leases l WHERE l.node_id = p_node AND l.state = 4),
           (SELECT coalesce(string_agg(x::text, ','), '') FROM unnest(p_running) x
             WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = x
                                  AND l.node_id = p_node AND l.state BETWEEN 2 AND 4)),
           old.unhealthy_gpus <> p_unhealthy, bad.o
      FROM old CROSS JOIN bad LEFT JOIN up ON true;
END $$;

-- gm_report_lease, then the lease row as it is afterwards (NULL when there
-- is no such lease) and the seq last applied before: what the reply needs,
-- in the same statement.
CREATE FUNCTION gm_report_lease_row(
    p_lease bigint, p_node bigint, p_operator bigint, p_fence bigint, p_seq bigint,
    p_state smallint, p_exit integer, p_signal integer, p_message text, p_now bigint,
    p_max_attempts integer, p_started bigint, p_exited bigint, p_hb_interval bigint)
RETURNS TABLE (status text, job_id bigint, job_state smallint, job_done boolean,
               requeued boolean, last_seq bigint, lease leases)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM gm_report_lease(p_lease, p_node, p_operator, p_fence, p_seq, p_state,
                                         p_exit, p_signal, p_message, p_now, p_max_attempts,
                                         p_started, p_exited, p_hb_interval);
    status := coalesce(r.status, 'not_found');
    job_id := r.job_id; job_state := r.job_state; job_done := coalesce(r.job_done, false);
    requeued := coalesce(r.requeued, false);
    SELECT * INTO lease FROM leases x WHERE x.id = p_lease;
    last_seq := lease.last_report_seq;
    RETURN NEXT;
END $$;

-- gm_confirm_lease, then the lease row as it is afterwards.
CREATE FUNCTION gm_confirm_lease_row(p_lease bigint, p_node bigint, p_operator bigint,
                                     p_fence bigint, p_started bigint, p_now bigint)
RETURNS TABLE (status text, job_id bigint, lease leases)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM gm_confirm_lease(p_lease, p_node, p_operator, p_fence, p_started,
                                          p_now);
    status := coalesce(r.status, 'not_found');
    job_id := r.job_id;
    SELECT * INTO lease FROM leases x WHERE x.id = p_lease;
    RETURN NEXT;
END $$;
