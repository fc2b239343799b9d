-- 0012: container jobs (phase, pull progress and image digest per lease,
-- the failure kind an agent reports), tenants' job logs (bounded, per
-- lease), and a node's graceful stop (lease state INTERRUPTED = 20, stop
-- kind 6 = the node stops: the job goes back to the queue, billed for the
-- time used, the attempt not counted against max_attempts).

ALTER TABLE leases
    ADD COLUMN phase text NOT NULL DEFAULT '',          -- PULLING, STARTING, RUNNING
    ADD COLUMN pulled_bytes bigint NOT NULL DEFAULT 0,
    ADD COLUMN image_digest text NOT NULL DEFAULT '',
    ADD COLUMN failure_reason smallint NOT NULL DEFAULT 0;  -- FailureReason the agent named

-- One row per lease that wrote output. total_bytes is the next offset the
-- server expects (every byte the job wrote and the agent delivered);
-- kept_bytes of them are stored, in chunks keyed by their offset, up to
-- the per-lease cap; past it the rest is counted and dropped.
CREATE TABLE lease_logs (
    lease_id             bigint PRIMARY KEY REFERENCES leases(id),
    job_id               bigint NOT NULL,
    attempt              integer NOT NULL,
    gang_index           integer NOT NULL,
    node_id              bigint NOT NULL,
    kept_bytes           bigint NOT NULL DEFAULT 0,
    total_bytes          bigint NOT NULL DEFAULT 0,
    truncated            boolean NOT NULL DEFAULT false,
    eof                  boolean NOT NULL DEFAULT false,
    updated_at_us        bigint NOT NULL
);
CREATE INDEX lease_logs_job ON lease_logs (job_id, attempt, gang_index);
CREATE INDEX lease_logs_updated ON lease_logs (updated_at_us);

CREATE TABLE lease_log_chunks (
    lease_id             bigint NOT NULL,
    off                  bigint NOT NULL,   -- byte offset of data's first byte
    data                 bytea NOT NULL,
    PRIMARY KEY (lease_id, off)
);
-- output is already compressed poorly and read rarely: keep it out of line
-- without spending CPU on compression
ALTER TABLE lease_log_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- Appends p_data at byte p_off of a lease's output. Idempotent by offset:
-- bytes below total_bytes are already held (duplicate); a chunk starting
-- past it is a gap (status 'gap', next_offset says where to resume).
CREATE FUNCTION gm_append_log(p_lease bigint, p_node bigint, p_operator bigint, p_fence bigint,
                              p_off bigint, p_data bytea, p_eof boolean, p_cap bigint,
                              p_now bigint)
RETURNS TABLE (status text, next_offset bigint, duplicate boolean, truncated boolean)
LANGUAGE plpgsql AS $$
DECLARE
    l record;
    g record;
    len bigint := length(p_data);
    fresh bytea;
    keep bigint;
BEGIN
    duplicate := false; truncated := false; next_offset := 0;
    SELECT x.id, x.job_id, x.attempt, x.gang_index, x.fencing_token, n.operator_id AS op
      INTO l FROM leases x JOIN nodes n ON n.id = x.node_id
     WHERE x.id = p_lease AND x.node_id = p_node;
    IF NOT FOUND OR (p_operator <> 0 AND l.op <> p_operator) THEN
        status := 'not_found';
        RETURN NEXT;
        RETURN;
    END IF;
    IF l.fencing_token <> p_fence THEN
        status := 'stale';
        RETURN NEXT;
        RETURN;
    END IF;
    INSERT INTO lease_logs (lease_id, job_id, attempt, gang_index, node_id, updated_at_us)
        VALUES (p_lease, l.job_id, l.attempt, l.gang_index, p_node, p_now)
        ON CONFLICT (lease_id) DO NOTHING;
    SELECT * INTO g FROM lease_logs WHERE lease_id = p_lease FOR UPDATE;
    truncated := g.truncated;
    IF p_off > g.total_bytes THEN
        status := 'gap'; next_offset := g.total_bytes;
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_off + len <= g.total_bytes THEN
        duplicate := len > 0 OR g.eof;
        IF p_eof AND p_off + len = g.total_bytes AND NOT g.eof THEN
            UPDATE lease_logs SET eof = true, updated_at_us = p_now WHERE lease_id = p_lease;
        END IF;
        status := 'ok'; next_offset := g.total_bytes;
        RETURN NEXT;
        RETURN;
    END IF;
    fresh := substring(p_data FROM (g.total_bytes - p_off + 1)::integer);
    keep := least(greatest(p_cap - g.kept_bytes, 0), length(fresh));
    IF keep > 0 THEN
        INSERT INTO lease_log_chunks (lease_id, off, data)
            VALUES (p_lease, g.total_bytes, substring(fresh FROM 1 FOR keep::integer));
    END IF;
    UPDATE lease_logs SET kept_bytes = kept_bytes + keep,
                          total_bytes = total_bytes + length(fresh),
                          truncated = lease_logs.truncated OR keep < length(fresh),
                          eof = eof OR p_eof, updated_at_us = p_now
     WHERE lease_id = p_lease
     RETURNING lease_logs.total_bytes, lease_logs.truncated INTO next_offset, truncated;
    status := 'ok';
    RETURN NEXT;
END $$;

-- The work of ending a lease as INTERRUPTED (see below), without the
-- report's checks: also what the janitor does with a lease its node was
-- told to give up (stop kind 6) once the stop deadline passed.
CREATE FUNCTION gm_interrupt_core(p_lease bigint, p_exit integer, p_signal integer,
                                  p_message text, p_now bigint)
RETURNS TABLE (job_id bigint, job_state smallint, job_done boolean, requeued boolean)
LANGUAGE plpgsql AS $$
DECLARE
    l record;
    j record;
    live integer;
    cancelled integer;
BEGIN
    SELECT * INTO l FROM leases WHERE id = p_lease FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO j FROM jobs WHERE id = l.job_id FOR UPDATE;
    job_id := j.id; job_state := j.state; job_done := false; requeued := false;
    IF l.state > 4 THEN
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE leases SET state = 20, ended_at_us = p_now, exit_code = p_exit,
                      term_signal = p_signal, end_message = coalesce(p_message, ''),
                      billed_end_us = CASE WHEN leases.started_at_us = 0 THEN 0 ELSE
                          greatest(leases.started_at_us, least(p_now,
                              (SELECT n.last_heartbeat_us FROM nodes n WHERE n.id = leases.node_id)))
                          END
     WHERE id = p_lease;
    SELECT count(*) FILTER (WHERE x.state BETWEEN 1 AND 4),
           count(*) FILTER (WHERE x.state = 8 OR x.stop_kind = 1)
      INTO live, cancelled
      FROM leases x WHERE x.job_id = l.job_id AND x.attempt = l.attempt;
    IF live > 0 THEN
        UPDATE leases SET state = 4, stop_deadline_us = p_now + 30000000, stop_kind = 2,
                          stop_reason = 'a node of the gang stopped'
         WHERE leases.job_id = l.job_id AND attempt = l.attempt AND state BETWEEN 1 AND 3;
        RETURN NEXT;
        RETURN;
    END IF;
    job_done := true;
    IF cancelled > 0 THEN
        job_state := 6;
        UPDATE jobs SET state = 6, ended_at_us = p_now, updated_at_us = p_now WHERE id = j.id;
    ELSIF (SELECT t.state FROM tenants t WHERE t.id = j.tenant_id) <> 1 THEN
        job_state := 5;
        UPDATE jobs SET state = 5, ended_at_us = p_now, updated_at_us = p_now,
               failure_reason = 9, failure_message = 'the tenant was disabled'
         WHERE id = j.id;
    ELSE
        job_state := 1; requeued := true;
        UPDATE jobs SET state = 1, updated_at_us = p_now WHERE id = j.id;
        INSERT INTO outbox (job_id, kind, created_at_us) VALUES (j.id, 'enqueue', p_now);
    END IF;
    INSERT INTO job_events (job_id, at_us, kind, detail)
        VALUES (j.id, p_now, CASE WHEN requeued THEN 'requeued' ELSE 'ended' END,
                'interrupted: the node stopped');
    RETURN NEXT;
END $$;

-- gm_end_lease for the janitor: a lease told to stop because its node
-- stops (stop kind 6) ends INTERRUPTED, every other as gm_end_lease says.
CREATE FUNCTION gm_end_lease_any(
    p_lease bigint, p_outcome smallint, p_exit integer, p_signal integer, p_message text,
    p_now bigint, p_max_attempts integer)
RETURNS TABLE (job_id bigint, job_state smallint, job_done boolean, requeued boolean)
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT x.stop_kind = 6 AND x.state = 4 FROM leases x WHERE x.id = p_lease) THEN
        RETURN QUERY SELECT * FROM gm_interrupt_core(p_lease, p_exit, p_signal,
                                                     'interrupted: the node stopped', p_now);
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM gm_end_lease(p_lease, p_outcome, p_exit, p_signal, p_message,
                                            p_now, p_max_attempts
                                            + (SELECT count(DISTINCT x.attempt)::integer
                                                 FROM leases x
                                                WHERE x.job_id = (SELECT y.job_id FROM leases y
                                                                   WHERE y.id = p_lease)
                                                  AND x.state = 20));
END $$;

-- Ends a lease as INTERRUPTED (its node stops): validated like
-- gm_report_lease (0011: node, operator, fencing token, seq, out of order)
-- and billed as it bills a report: up to min(the agent's exit time
-- p_exited, the node's last heartbeat + p_hb_interval, now); when it was
-- the attempt's last live lease the job is queued again (or cancelled, when
-- a cancel was in flight), never failed for it. Other parts of a gang are
-- told to stop (as a preemption).
CREATE FUNCTION gm_interrupt_lease(
    p_lease bigint, p_node bigint, p_operator bigint, p_fence bigint, p_seq bigint,
    p_exit integer, p_signal integer, p_message text, p_now bigint, p_exited bigint,
    p_hb_interval bigint)
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
    SELECT n.last_heartbeat_us INTO hb FROM nodes n WHERE n.id = p_node;
    SELECT * INTO r FROM gm_interrupt_core(p_lease, p_exit, p_signal, p_message, p_now);
    UPDATE leases SET billed_end_us = CASE WHEN started_at_us = 0 THEN 0
                                           ELSE greatest(started_at_us, least(p_now,
                                               hb + p_hb_interval,
                                               CASE WHEN p_exited > 0 THEN p_exited
                                                    ELSE p_now END)) END
     WHERE id = p_lease;
    status := 'ok'; job_state := r.job_state; job_done := r.job_done; requeued := r.requeued;
    RETURN NEXT;
END $$;

-- ReportLease (0011's gm_report_lease, same arguments and statuses) with
-- what the container runtime adds: a FAILED or EXPIRED report on a lease
-- its node was told to give up (stop kind 6) is an interruption; an
-- INTERRUPTED one goes to gm_interrupt_lease; a failure kind named by the
-- agent (OOM, IMAGE_PULL, AGENT_ERROR) replaces the one derived from the
-- exit status; the image digest is recorded. Attempts that were
-- interrupted do not count against p_max_attempts.
CREATE FUNCTION gm_report_lease_ext(
    p_lease bigint, p_node bigint, p_operator bigint, p_fence bigint, p_seq bigint,
    p_state smallint, p_exit integer, p_signal integer, p_message text, p_now bigint,
    p_max_attempts integer, p_started bigint, p_exited bigint, p_hb_interval bigint,
    p_kind smallint, p_digest text)
RETURNS TABLE (status text, job_id bigint, job_state smallint, job_done boolean,
               requeued boolean)
LANGUAGE plpgsql AS $$
DECLARE
    sk smallint;
    r record;
    spared integer;
BEGIN
    SELECT x.stop_kind INTO sk FROM leases x WHERE x.id = p_lease AND x.node_id = p_node;
    IF p_state IN (6, 7) AND sk = 6 THEN
        p_state := 20;
    END IF;
    IF p_digest <> '' THEN
        UPDATE leases SET image_digest = p_digest
         WHERE id = p_lease AND node_id = p_node AND fencing_token = p_fence
           AND image_digest = '';
    END IF;
    IF p_state = 20 THEN
        RETURN QUERY SELECT * FROM gm_interrupt_lease(p_lease, p_node, p_operator, p_fence,
                                                      p_seq, p_exit, p_signal, p_message, p_now,
                                                      p_exited, p_hb_interval);
        RETURN;
    END IF;
    SELECT count(DISTINCT x.attempt) INTO spared FROM leases x
     WHERE x.job_id = (SELECT y.job_id FROM leases y WHERE y.id = p_lease) AND x.state = 20;
    SELECT * INTO r FROM gm_report_lease(p_lease, p_node, p_operator, p_fence, p_seq, p_state,
                                         p_exit, p_signal, p_message, p_now,
                                         p_max_attempts + spared, p_started, p_exited,
                                         p_hb_interval);
    IF r.status = 'ok' AND p_state = 6 AND p_kind > 0 THEN
        UPDATE leases SET failure_reason = p_kind WHERE id = p_lease;
        UPDATE jobs SET failure_reason = p_kind
         WHERE id = r.job_id AND state = 5 AND failure_node = p_node
           AND failure_reason IN (1, 2);
    END IF;
    status := r.status; job_id := r.job_id; job_state := r.job_state;
    job_done := r.job_done; requeued := r.requeued;
    RETURN NEXT;
END $$;
