-- 0001_init.sql — the system of record: identities, tokens, nodes and their
-- GPUs, jobs and their events, leases, the outbox to Redis, versioned
-- policies and their audit log, and the scheduler's fencing token.
-- Times are microseconds since the epoch (bigint, *_us); money is integer
-- micro-units (*_micros). Protobuf messages that are only ever read back
-- whole are stored packed (*_pb bytea); what queries filter on has columns.

CREATE TABLE tenants (
    id                   bigserial PRIMARY KEY,
    name                 text NOT NULL UNIQUE,
    state                smallint NOT NULL DEFAULT 1,        -- TenantState
    fair_share_weight    integer NOT NULL DEFAULT 1 CHECK (fair_share_weight BETWEEN 1 AND 1000000),
    credit_limit_micros  bigint NOT NULL DEFAULT 0 CHECK (credit_limit_micros >= 0),
    max_running_gpus     integer NOT NULL DEFAULT 0 CHECK (max_running_gpus >= 0),
    contact              text NOT NULL DEFAULT '',
    disabled_reason      text NOT NULL DEFAULT '',
    created_at_us        bigint NOT NULL,
    updated_at_us        bigint NOT NULL
);

CREATE TABLE operators (
    id                   bigserial PRIMARY KEY,
    name                 text NOT NULL UNIQUE,
    state                smallint NOT NULL DEFAULT 1,        -- OperatorState
    node_limit           integer NOT NULL DEFAULT 0 CHECK (node_limit >= 0),
    contact              text NOT NULL DEFAULT '',
    disabled_reason      text NOT NULL DEFAULT '',
    created_at_us        bigint NOT NULL,
    updated_at_us        bigint NOT NULL
);

-- Bearer tokens: only a SHA-256 of the secret is kept.
CREATE TABLE api_tokens (
    id                   bigserial PRIMARY KEY,
    role                 smallint NOT NULL CHECK (role BETWEEN 1 AND 3),   -- Role
    tenant_id            bigint REFERENCES tenants(id),
    operator_id          bigint REFERENCES operators(id),
    name                 text NOT NULL DEFAULT '',
    prefix               text NOT NULL,
    secret_sha256        bytea NOT NULL UNIQUE,
    created_by           text NOT NULL DEFAULT '',
    created_at_us        bigint NOT NULL,
    expires_at_us        bigint NOT NULL DEFAULT 0,
    last_used_at_us      bigint NOT NULL DEFAULT 0,
    revoked_at_us        bigint NOT NULL DEFAULT 0,
    CHECK ((role = 1) = (tenant_id IS NOT NULL)),
    CHECK ((role = 2) = (operator_id IS NOT NULL))
);

CREATE TABLE nodes (
    id                   bigserial PRIMARY KEY,
    operator_id          bigint NOT NULL REFERENCES operators(id),
    name                 text NOT NULL,
    region               text NOT NULL,
    price_micros         bigint NOT NULL CHECK (price_micros > 0),
    state                smallint NOT NULL,                  -- NodeState
    state_reason         text NOT NULL DEFAULT '',
    admin_hold           boolean NOT NULL DEFAULT false,     -- cordoned: survives LOST
    verification_status  smallint NOT NULL DEFAULT 1,        -- VerificationStatus
    facts_pb             bytea NOT NULL,                     -- labels, taints, gpus, address: a Node
    created_at_us        bigint NOT NULL,
    updated_at_us        bigint NOT NULL,
    state_changed_at_us  bigint NOT NULL,
    last_heartbeat_us    bigint NOT NULL DEFAULT 0,
    heartbeats_received  bigint NOT NULL DEFAULT 0,
    leases_succeeded     bigint NOT NULL DEFAULT 0,
    leases_failed        bigint NOT NULL DEFAULT 0,
    UNIQUE (operator_id, name)
);
CREATE INDEX nodes_state ON nodes (state);

CREATE TABLE gpus (
    node_id              bigint NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    idx                  integer NOT NULL,
    model                text NOT NULL,
    uuid                 text NOT NULL DEFAULT '',
    memory_mib           integer NOT NULL,
    PRIMARY KEY (node_id, idx)
);

CREATE TABLE jobs (
    id                   bigserial PRIMARY KEY,
    tenant_id            bigint NOT NULL REFERENCES tenants(id),
    name                 text NOT NULL DEFAULT '',
    idempotency_key      text NOT NULL DEFAULT '',
    spec_pb              bytea NOT NULL,                     -- JobSpec
    state                smallint NOT NULL,                  -- JobState
    priority_class       smallint NOT NULL,
    gpus                 integer NOT NULL,                   -- gpus_per_node x node_count
    attempts             integer NOT NULL DEFAULT 0,
    submitted_at_us      bigint NOT NULL,
    started_at_us        bigint NOT NULL DEFAULT 0,
    ended_at_us          bigint NOT NULL DEFAULT 0,
    updated_at_us        bigint NOT NULL,
    failure_reason       smallint NOT NULL DEFAULT 0,        -- FailureReason
    failure_message      text NOT NULL DEFAULT '',
    exit_code            integer NOT NULL DEFAULT 0,
    term_signal          integer NOT NULL DEFAULT 0,
    failure_node         bigint NOT NULL DEFAULT 0,
    cost_micros          bigint NOT NULL DEFAULT 0
);
-- Total, not partial: the submit statement runs as a generic plan,
-- which could not use a partial index (the API requires a key anyway).
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key);
CREATE INDEX jobs_tenant_id ON jobs (tenant_id, id);
CREATE INDEX jobs_state_id ON jobs (state, id);

CREATE TABLE job_events (
    id                   bigserial PRIMARY KEY,
    job_id               bigint NOT NULL REFERENCES jobs(id),
    at_us                bigint NOT NULL,
    kind                 text NOT NULL,       -- submitted, placed, started, requeued, ...
    detail               text NOT NULL DEFAULT ''
);
CREATE INDEX job_events_job ON job_events (job_id, id);

CREATE TABLE leases (
    id                   bigserial PRIMARY KEY,
    job_id               bigint NOT NULL REFERENCES jobs(id),
    node_id              bigint NOT NULL REFERENCES nodes(id),
    attempt              integer NOT NULL,
    gpu_mask             bigint NOT NULL,     -- bit i = GPU index i
    state                smallint NOT NULL,   -- LeaseState
    assigned_at_us       bigint NOT NULL,
    started_at_us        bigint NOT NULL DEFAULT 0,
    deadline_us          bigint NOT NULL,
    ended_at_us          bigint NOT NULL DEFAULT 0,
    stop_deadline_us     bigint NOT NULL DEFAULT 0,
    stop_reason          text NOT NULL DEFAULT '',
    stop_kind            smallint NOT NULL DEFAULT 0,  -- 1 cancel, 2 preempt, 3 deadline, 4 gang peer ended
    fencing_token        bigint NOT NULL,
    gang_index           integer NOT NULL DEFAULT 0,
    gang_size            integer NOT NULL DEFAULT 1,
    last_report_seq      bigint NOT NULL DEFAULT 0,
    exit_code            integer NOT NULL DEFAULT 0,
    term_signal          integer NOT NULL DEFAULT 0,
    price_micros         bigint NOT NULL
);
CREATE INDEX leases_live ON leases (node_id) WHERE state BETWEEN 1 AND 4;
CREATE INDEX leases_job ON leases (job_id, attempt);

-- Changes waiting to reach Redis (the outbox pattern): written in the same
-- transaction as the change, removed once applied there.
CREATE TABLE outbox (
    id                   bigserial PRIMARY KEY,
    job_id               bigint NOT NULL,
    kind                 text NOT NULL,       -- enqueue, dequeue
    created_at_us        bigint NOT NULL
);

CREATE TABLE policies (
    version              bigserial PRIMARY KEY,
    policy_pb            bytea NOT NULL,      -- Policy
    created_by           text NOT NULL,
    created_at_us        bigint NOT NULL,
    comment              text NOT NULL DEFAULT ''
);

CREATE TABLE policy_audit (
    version              bigint PRIMARY KEY REFERENCES policies(version),
    previous_version     bigint NOT NULL DEFAULT 0,
    actor                text NOT NULL,
    at_us                bigint NOT NULL,
    comment              text NOT NULL DEFAULT '',
    changes              jsonb NOT NULL       -- [{"field","old","new"}]
);

-- The scheduler leader's fencing token: every lease write carries the token
-- of the leader that made it, and a write from an older leader is refused.
CREATE TABLE scheduler_fence (
    id                   integer PRIMARY KEY CHECK (id = 1),
    token                bigint NOT NULL
);
INSERT INTO scheduler_fence VALUES (1, 0);

CREATE FUNCTION gm_check_fence(t bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE cur bigint;
BEGIN
    UPDATE scheduler_fence SET token = greatest(token, t) WHERE id = 1 RETURNING token INTO cur;
    IF cur > t THEN
        RAISE EXCEPTION 'stale fencing token % (current %)', t, cur USING ERRCODE = 'GM001';
    END IF;
END $$;

-- Places jobs (one element per gang part) at the node's current price. Fenced: a write from an old
-- leader is refused. Jobs no longer queued (cancelled meanwhile) are
-- skipped: their elements return a NULL lease id.
CREATE FUNCTION gm_place(
    p_fence bigint, p_job bigint[], p_node bigint[], p_mask bigint[], p_gang_index integer[],
    p_gang_size integer[], p_deadline bigint[], p_now bigint)
RETURNS TABLE (idx integer, lease_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    st smallint;
    att integer;
BEGIN
    PERFORM gm_check_fence(p_fence);
    FOR i IN 1 .. coalesce(array_length(p_job, 1), 0) LOOP
        SELECT j.state, j.attempts INTO st, att FROM jobs j WHERE j.id = p_job[i] FOR UPDATE;
        IF st = 1 AND p_gang_index[i] = 0 THEN
            UPDATE jobs SET state = 2, attempts = attempts + 1, started_at_us = p_now,
                            updated_at_us = p_now WHERE id = p_job[i];
            INSERT INTO job_events (job_id, at_us, kind, detail)
                VALUES (p_job[i], p_now, 'placed', 'attempt ' || (att + 1));
            INSERT INTO outbox (job_id, kind, created_at_us) VALUES (p_job[i], 'dequeue', p_now);
            att := att + 1;
        ELSIF st = 2 AND p_gang_index[i] > 0 THEN
            NULL; -- a later part of the gang placed just above
        ELSE
            idx := i; lease_id := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        INSERT INTO leases (job_id, node_id, attempt, gpu_mask, state, assigned_at_us,
                            deadline_us, fencing_token, gang_index, gang_size, price_micros)
        VALUES (p_job[i], p_node[i], att, p_mask[i], 1, p_now, p_deadline[i], p_fence,
                p_gang_index[i], p_gang_size[i],
                (SELECT n.price_micros FROM nodes n WHERE n.id = p_node[i]))
        RETURNING id INTO lease_id;
        idx := i;
        RETURN NEXT;
    END LOOP;
END $$;

-- Ends one lease with an outcome (LeaseState 5 succeeded, 6 failed,
-- 7 expired). When the job's current attempt has no live lease left, the
-- job ends too (or is re-queued while attempts remain for node losses and
-- preemptions). A lease already ended is left alone: repeats are harmless.
CREATE FUNCTION gm_end_lease(
    p_lease bigint, p_outcome smallint, p_exit integer, p_signal integer, p_message text,
    p_now bigint, p_max_attempts integer)
RETURNS TABLE (job_id bigint, job_state smallint, job_done boolean, requeued boolean)
LANGUAGE plpgsql AS $$
DECLARE
    l record;
    j record;
    live integer;
    n_cancel integer; n_failed integer; n_expired integer; n_preempt integer;
    n_deadline integer; n_total integer; n_ok integer;
    outcome smallint := p_outcome;
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
                      term_signal = p_signal WHERE id = p_lease;
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
           count(*)
      INTO n_cancel, n_failed, n_expired, n_preempt, n_deadline, n_ok, n_total
      FROM leases x WHERE x.job_id = l.job_id AND x.attempt = l.attempt;
    job_id := j.id; job_done := true; requeued := false;
    IF n_cancel > 0 OR j.state = 3 AND n_preempt = 0 AND n_deadline = 0 AND n_expired = 0
                                   AND n_failed = 0 AND n_ok < n_total THEN
        job_state := 6;
        UPDATE jobs SET state = 6, ended_at_us = p_now, updated_at_us = p_now WHERE id = j.id;
    ELSIF n_failed > 0 THEN
        job_state := 5;
        UPDATE jobs SET state = 5, ended_at_us = p_now, updated_at_us = p_now,
               failure_reason = CASE WHEN p_signal <> 0 THEN 2 ELSE 1 END,
               failure_message = p_message, exit_code = p_exit, term_signal = p_signal,
               failure_node = l.node_id
         WHERE id = j.id;
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

-- Cancels a job of a tenant (p_tenant = 0: any tenant). A queued job ends
-- at once; a running one is told to stop by p_now + p_grace (leases not yet
-- picked up end at once). Returns nothing when the job is not the
-- tenant's.
CREATE FUNCTION gm_cancel_job(p_job bigint, p_tenant bigint, p_now bigint, p_grace bigint,
                              p_reason text)
RETURNS TABLE (job_state smallint, was_queued boolean, job_done boolean)
LANGUAGE plpgsql AS $$
DECLARE
    st smallint;
    live integer;
BEGIN
    SELECT j.state INTO st FROM jobs j
     WHERE j.id = p_job AND (p_tenant = 0 OR j.tenant_id = p_tenant) FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF st = 1 THEN
        UPDATE jobs SET state = 6, ended_at_us = p_now, updated_at_us = p_now,
                        failure_message = p_reason WHERE id = p_job;
        INSERT INTO outbox (job_id, kind, created_at_us) VALUES (p_job, 'dequeue', p_now);
        INSERT INTO job_events (job_id, at_us, kind, detail) VALUES (p_job, p_now, 'cancelled', p_reason);
        job_state := 6; was_queued := true; job_done := true;
        RETURN NEXT;
        RETURN;
    END IF;
    IF st IN (2, 3) THEN
        UPDATE leases SET state = 8, ended_at_us = p_now, stop_kind = 1, stop_reason = p_reason
         WHERE leases.job_id = p_job AND state = 1;
        UPDATE leases SET state = 4, stop_deadline_us = p_now + p_grace, stop_kind = 1,
                          stop_reason = p_reason
         WHERE leases.job_id = p_job AND state BETWEEN 2 AND 4 AND stop_kind <> 1;
        SELECT count(*) INTO live FROM leases WHERE leases.job_id = p_job AND state BETWEEN 1 AND 4;
        INSERT INTO job_events (job_id, at_us, kind, detail) VALUES (p_job, p_now, 'cancelling', p_reason);
        IF live = 0 THEN
            UPDATE jobs SET state = 6, ended_at_us = p_now, updated_at_us = p_now,
                            failure_message = p_reason WHERE id = p_job;
            job_state := 6; was_queued := false; job_done := true;
        ELSE
            UPDATE jobs SET state = 3, updated_at_us = p_now WHERE id = p_job;
            job_state := 3; was_queued := false; job_done := false;
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;
    job_state := st; was_queued := false; job_done := false;
    RETURN NEXT;
END $$;

-- An agent's report on a lease: RUNNING (3), SUCCEEDED (5) or FAILED (6).
-- Idempotent by seq; a report carrying another fencing token than the
-- lease's (from before a re-placement) is refused. status is ok,
-- duplicate, not_found, stale or ended (the lease had already ended).
CREATE FUNCTION gm_report_lease(
    p_lease bigint, p_node bigint, p_operator bigint, p_fence bigint, p_seq bigint,
    p_state smallint, p_exit integer, p_signal integer, p_message text, p_now bigint,
    p_max_attempts integer)
RETURNS TABLE (status text, job_id bigint, job_state smallint, job_done boolean,
               requeued boolean)
LANGUAGE plpgsql AS $$
DECLARE
    l record;
    r record;
BEGIN
    SELECT x.*, n.operator_id AS op INTO l FROM leases x JOIN nodes n ON n.id = x.node_id
     WHERE x.id = p_lease AND x.node_id = p_node FOR UPDATE OF x;
    job_done := false; requeued := false;
    IF NOT FOUND OR (p_operator <> 0 AND l.op <> p_operator) THEN
        status := 'not_found';
        RETURN NEXT;
        RETURN;
    END IF;
    job_id := l.job_id;
    IF l.fencing_token <> p_fence THEN
        status := 'stale';
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_seq <= l.last_report_seq THEN
        status := 'duplicate';
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
        UPDATE leases SET state = CASE WHEN state IN (1, 2) THEN 3 ELSE state END,
                          started_at_us = CASE WHEN started_at_us = 0 THEN p_now ELSE started_at_us END
         WHERE id = p_lease;
        INSERT INTO job_events (job_id, at_us, kind, detail)
            VALUES (l.job_id, p_now, 'running', 'node ' || p_node);
        status := 'ok';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT * INTO r FROM gm_end_lease(p_lease, p_state, p_exit, p_signal, p_message, p_now,
                                      p_max_attempts);
    UPDATE nodes SET leases_succeeded = leases_succeeded + 1 WHERE id = p_node;
    status := 'ok'; job_state := r.job_state; job_done := r.job_done; requeued := r.requeued;
    RETURN NEXT;
END $$;
