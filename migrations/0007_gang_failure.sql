-- 0007: a failed gang names the part that failed.
--
-- When one part of a multi-node gang fails, the other parts are stopped and
-- end afterwards (killed by SIGTERM). The job's failure used to be taken
-- from whichever lease ended last, so it read "signal 15" from a stopped
-- peer. Each lease now keeps its end message, and the job's failure comes
-- from the first part that failed on its own. gm_end_lease is otherwise
-- the ledger's (0003_ledger.sql).
ALTER TABLE leases ADD COLUMN end_message text NOT NULL DEFAULT '';

CREATE OR REPLACE FUNCTION gm_end_lease(
    p_lease bigint, p_outcome smallint, p_exit integer, p_signal integer, p_message text,
    p_now bigint, p_max_attempts integer)
RETURNS TABLE (job_id bigint, job_state smallint, job_done boolean, requeued boolean)
LANGUAGE plpgsql AS $$
DECLARE
    l record;
    j record;
    live integer;
    n_cancel integer; n_failed integer; n_expired integer; n_preempt integer;
    n_deadline integer; n_total integer; n_ok integer; n_funds integer;
    outcome smallint := p_outcome;
    first_fail record;
BEGIN
    SELECT * INTO l FROM leases WHERE id = p_lease FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO j FROM jobs WHERE id = l.job_id FOR UPDATE;
    IF l.state > 4 THEN
        job_id := j.id; job_state := j.state; job_done := false; requeued := false;
        RETURN NEXT;
        RETURN;
    END IF;
    -- a stopped lease ends as what stopped it
    IF l.stop_kind = 1 THEN outcome := 8; END IF;
    IF l.stop_kind = 2 THEN outcome := 9; END IF;
    UPDATE leases SET state = outcome, ended_at_us = p_now, exit_code = p_exit,
                      term_signal = p_signal, end_message = coalesce(p_message, ''),
                      billed_end_us = CASE WHEN leases.started_at_us = 0 THEN 0 ELSE
                          greatest(leases.started_at_us, least(p_now,
                              (SELECT n.last_heartbeat_us FROM nodes n WHERE n.id = leases.node_id)))
                          END
     WHERE id = p_lease;
    SELECT count(*) INTO live FROM leases x
     WHERE x.job_id = l.job_id AND x.attempt = l.attempt AND x.state BETWEEN 1 AND 4;
    IF live > 0 THEN
        IF outcome IN (6, 7) THEN
            -- one part of a gang failed: the others stop
            UPDATE leases SET state = 4, stop_deadline_us = p_now + 30000000, stop_kind = 4,
                              stop_reason = 'another part of the gang ended'
             WHERE leases.job_id = l.job_id AND attempt = l.attempt AND state BETWEEN 1 AND 3;
        END IF;
        job_id := j.id; job_state := j.state; job_done := false; requeued := false;
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT count(*) FILTER (WHERE x.state = 8),
           count(*) FILTER (WHERE x.state = 6 AND x.stop_kind = 0),
           count(*) FILTER (WHERE x.state = 7),
           count(*) FILTER (WHERE x.state = 9),
           count(*) FILTER (WHERE x.stop_kind = 3),
           count(*) FILTER (WHERE x.state = 5),
           count(*) FILTER (WHERE x.stop_kind = 5),
           count(*)
      INTO n_cancel, n_failed, n_expired, n_preempt, n_deadline, n_ok, n_funds, n_total
      FROM leases x WHERE x.job_id = l.job_id AND x.attempt = l.attempt;
    job_id := j.id; job_done := true; requeued := false;
    IF n_cancel > 0 OR j.state = 3 AND n_preempt = 0 AND n_deadline = 0 AND n_expired = 0
                                   AND n_failed = 0 AND n_funds = 0 AND n_ok < n_total THEN
        job_state := 6;
        UPDATE jobs SET state = 6, ended_at_us = p_now, updated_at_us = p_now WHERE id = j.id;
    ELSIF n_failed > 0 THEN
        -- the part that failed on its own names the failure, not a gang
        -- peer stopped because of it (whichever lease ends last)
        SELECT x.exit_code, x.term_signal, x.node_id, x.end_message, x.gang_index,
               x.gang_size
          INTO first_fail
          FROM leases x
         WHERE x.job_id = l.job_id AND x.attempt = l.attempt AND x.state = 6
           AND x.stop_kind = 0
         ORDER BY x.ended_at_us, x.id LIMIT 1;
        job_state := 5;
        UPDATE jobs SET state = 5, ended_at_us = p_now, updated_at_us = p_now,
               failure_reason = CASE WHEN first_fail.term_signal <> 0 THEN 2 ELSE 1 END,
               failure_message = CASE WHEN first_fail.gang_size > 1
                   THEN 'gang part ' || first_fail.gang_index || ' of ' || first_fail.gang_size
                        || ' failed' || CASE WHEN first_fail.end_message <> ''
                                             THEN ': ' || first_fail.end_message ELSE '' END
                   ELSE first_fail.end_message END,
               exit_code = first_fail.exit_code, term_signal = first_fail.term_signal,
               failure_node = first_fail.node_id
         WHERE id = j.id;
    ELSIF n_funds > 0 THEN
        job_state := 5;
        UPDATE jobs SET state = 5, ended_at_us = p_now, updated_at_us = p_now,
               failure_reason = 7,
               failure_message = 'stopped: the tenant''s funds held for the lease ran out',
               failure_node = l.node_id WHERE id = j.id;
    ELSIF (n_expired > 0 OR n_preempt > 0) AND j.attempts < p_max_attempts
          AND (SELECT t.state FROM tenants t WHERE t.id = j.tenant_id) = 1 THEN
        job_state := 1; requeued := true;
        UPDATE jobs SET state = 1, updated_at_us = p_now WHERE id = j.id;
        INSERT INTO outbox (job_id, kind, created_at_us) VALUES (j.id, 'enqueue', p_now);
    ELSIF n_expired > 0 THEN
        job_state := 5;
        UPDATE jobs SET state = 5, ended_at_us = p_now, updated_at_us = p_now,
               failure_reason = 3, failure_message = 'node lost on the last attempt',
               failure_node = l.node_id WHERE id = j.id;
    ELSIF n_preempt > 0 THEN
        job_state := 7;
        UPDATE jobs SET state = 7, ended_at_us = p_now, updated_at_us = p_now,
               failure_reason = 8, failure_message = 'preempted on the last attempt'
         WHERE id = j.id;
    ELSIF n_deadline > 0 THEN
        job_state := 5;
        UPDATE jobs SET state = 5, ended_at_us = p_now, updated_at_us = p_now,
               failure_reason = 4, failure_message = 'ran past max_duration_us' WHERE id = j.id;
    ELSE
        job_state := 4;
        UPDATE jobs SET state = 4, ended_at_us = p_now, updated_at_us = p_now WHERE id = j.id;
    END IF;
    INSERT INTO job_events (job_id, at_us, kind, detail)
        VALUES (j.id, p_now, CASE WHEN requeued THEN 'requeued' ELSE 'ended' END,
                'state ' || job_state);
    RETURN NEXT;
END $$;
