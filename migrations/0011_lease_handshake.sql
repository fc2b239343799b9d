-- 0011: a lease is offered until the agent confirms it; billing follows
-- what ran; heartbeats reconcile; the fencing token lives in Postgres.
--
-- * AcquireLease used to start the lease (and its metering) when it handed
--   it out, before the reply was known to have reached the agent. It now
--   only offers it (state 2, offered_at_us). The agent confirms with
--   ConfirmLease (or its first RUNNING report) before it starts the job;
--   started_at_us, where metering begins, is the confirmed start. An offer
--   not confirmed within lease_offer_timeout_ms is withdrawn (state 10):
--   the job goes back to the queue at its old position, unbilled, and the
--   attempt is not counted.
-- * Every heartbeat stores the leases the agent runs (nodes.running_leases);
--   the leader's janitor compares them with the live leases of the node.
-- * An agent's report carries the job's start and exit times; a report's
--   usage ends at min(exit, last heartbeat + interval), never at the time
--   the server happened to process it.
-- * gm_take_fence: a new leader takes max(its Redis token, the highest
--   token Postgres has seen) + 1, so a Redis that lost its data never
--   makes a new leader's token stale.
ALTER TABLE leases ADD COLUMN offered_at_us bigint NOT NULL DEFAULT 0;
UPDATE leases SET offered_at_us = started_at_us WHERE state >= 2 AND started_at_us > 0;
CREATE INDEX leases_offered ON leases (offered_at_us) WHERE state = 2;
-- false after a ConfirmLease: the agent starts the job once the
-- confirmation's reply arrives, so its first RUNNING report may move the
-- start (and metering) later, to when the process really started
ALTER TABLE leases ADD COLUMN confirmed_by_report boolean NOT NULL DEFAULT true;
ALTER TABLE nodes ADD COLUMN running_leases bigint[] NOT NULL DEFAULT '{}';
-- Set by a heartbeat that left out a live lease of its node: the janitor
-- looks at these nodes only, not at every running lease.
ALTER TABLE nodes ADD COLUMN leases_unlisted boolean NOT NULL DEFAULT false;
CREATE INDEX nodes_leases_unlisted ON nodes (id) WHERE leases_unlisted;
-- Attempts none of whose parts ever ran (every offer withdrawn): they keep
-- their number in the lease history but do not count against max_attempts.
ALTER TABLE jobs ADD COLUMN attempts_withdrawn integer NOT NULL DEFAULT 0;

-- The new leader's fencing token: above every token Postgres has seen and
-- above the one Redis gave it, in one statement.
CREATE FUNCTION gm_take_fence(p_redis bigint) RETURNS bigint LANGUAGE sql AS $$
    UPDATE scheduler_fence SET token = greatest(token, p_redis) + 1 WHERE id = 1
    RETURNING token;
$$;

-- The agent confirms an offered lease before it starts the job. status:
-- ok (now RUNNING, metering from the confirmed start), duplicate (already
-- confirmed: changes nothing), not_found, other_node (the lease is another
-- node's), stale (fencing token), not_offered (never handed out), withdrawn
-- (the offer was withdrawn: do not run it), ended.
CREATE FUNCTION gm_confirm_lease(p_lease bigint, p_node bigint, p_operator bigint,
                                 p_fence bigint, p_started bigint, p_now bigint)
RETURNS TABLE (status text, job_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    l record;
BEGIN
    SELECT x.*, n.operator_id AS op INTO l FROM leases x JOIN nodes n ON n.id = x.node_id
     WHERE x.id = p_lease FOR UPDATE OF x;
    IF NOT FOUND OR (p_operator <> 0 AND l.op <> p_operator) THEN
        status := 'not_found'; RETURN NEXT; RETURN;
    END IF;
    job_id := l.job_id;
    IF l.node_id <> p_node THEN
        status := 'other_node'; RETURN NEXT; RETURN;
    END IF;
    IF l.fencing_token <> p_fence THEN
        status := 'stale'; RETURN NEXT; RETURN;
    END IF;
    IF l.state = 1 THEN
        status := 'not_offered'; RETURN NEXT; RETURN;
    END IF;
    IF l.state = 10 THEN
        status := 'withdrawn'; RETURN NEXT; RETURN;
    END IF;
    IF l.state > 4 THEN
        status := 'ended'; RETURN NEXT; RETURN;
    END IF;
    IF l.state <> 2 THEN
        status := 'duplicate'; RETURN NEXT; RETURN;
    END IF;
    UPDATE leases SET state = 3,
           started_at_us = greatest(l.offered_at_us,
                                    least(p_now, CASE WHEN p_started > 0 THEN p_started
                                                      ELSE p_now END)),
           confirmed_by_report = false
     WHERE id = p_lease;
    INSERT INTO job_events (job_id, at_us, kind, detail)
        VALUES (l.job_id, p_now, 'running', 'node ' || p_node);
    status := 'ok';
    RETURN NEXT;
END $$;

-- As 0007, plus outcome 10 (WITHDRAWN, "lost before start"): a lease the
-- agent never confirmed. It is never billed; when no part of the attempt
-- ran, the job is queued again and the attempt is not counted.
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
    n_withdrawn integer; n_ran integer;
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
    -- a lease never confirmed cannot have run: withdrawn, whatever ended it
    IF l.started_at_us = 0 AND outcome = 7 THEN outcome := 10; END IF;
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
        IF outcome IN (6, 7, 10) THEN
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
           count(*) FILTER (WHERE x.state = 10),
           count(*) FILTER (WHERE x.started_at_us > 0),
           count(*)
      INTO n_cancel, n_failed, n_expired, n_preempt, n_deadline, n_ok, n_funds, n_withdrawn,
           n_ran, n_total
      FROM leases x WHERE x.job_id = l.job_id AND x.attempt = l.attempt;
    job_id := j.id; job_done := true; requeued := false;
    IF n_cancel > 0 OR j.state = 3 AND n_preempt = 0 AND n_deadline = 0 AND n_expired = 0
                                   AND n_failed = 0 AND n_funds = 0 AND n_withdrawn = 0
                                   AND n_ok < n_total THEN
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
    ELSIF (n_expired > 0 OR n_preempt > 0 OR n_withdrawn > 0)
          AND (j.attempts - j.attempts_withdrawn < p_max_attempts OR n_ran = 0)
          AND (SELECT t.state FROM tenants t WHERE t.id = j.tenant_id) = 1 THEN
        job_state := 1; requeued := true;
        -- an attempt none of whose parts ever ran is not counted
        UPDATE jobs SET state = 1, updated_at_us = p_now,
                        attempts_withdrawn = attempts_withdrawn
                            + CASE WHEN n_ran = 0 THEN 1 ELSE 0 END
         WHERE id = j.id;
        INSERT INTO outbox (job_id, kind, created_at_us) VALUES (j.id, 'enqueue', p_now);
    ELSIF n_expired > 0 OR n_withdrawn > 0 THEN
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

-- As 0003, plus: a RUNNING report confirms an offered lease (as
-- ConfirmLease does); a seq older than the last one applied is refused
-- (status out_of_order), the same seq again is a duplicate; a lease of
-- another node is other_node; a lease the agent lost (EXPIRED, 7, e.g. an
-- agent restarted while the job ran) ends as expired. Usage ends at the
-- agent's exit time p_exited (server clock; 0 = unknown), never past the
-- node's last heartbeat + p_hb_interval, never past now.
DROP FUNCTION gm_report_lease(bigint, bigint, bigint, bigint, bigint, smallint, integer, integer,
                              text, bigint, integer);
CREATE FUNCTION gm_report_lease(
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
    UPDATE nodes SET leases_succeeded = leases_succeeded + 1 WHERE id = p_node;
    status := 'ok'; job_state := r.job_state; job_done := r.job_done; requeued := r.requeued;
    RETURN NEXT;
END $$;
