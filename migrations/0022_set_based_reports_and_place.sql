-- 0022: the two busiest statements of the placement path work on a whole
-- batch at once instead of one element at a time.
--
-- * gm_report_leases (0019) ran gm_report_lease_ext for each report, a
--   dozen statements per element. The two reports every placement makes
--   — RUNNING on an offered or running lease, and SUCCEEDED ending a
--   running single-node job — are now written for the whole batch in a
--   few statements, with exactly the changes the per-element functions
--   make in those cases. Every other element (another state, a check that
--   fails, a gang, a lease reported twice in the batch, a job another
--   element also touches) goes through gm_report_lease_ext as before. The
--   set-based elements share no lease and no job with any other element
--   of the batch, so doing them first is the same as doing them in order.
-- * gm_place (0003) inserted each lease, its hold transfer and its job's
--   changes one statement at a time. When every job of the call is QUEUED
--   and placed whole (single-node jobs, or a gang's parts together) and
--   every tenant can cover all of its holds together, the call is written
--   in one pass over the batch; otherwise (funds run short for a tenant,
--   a job no longer queued) the per-lease loop decides, as before.
-- * The functions of the node calls run their statements with generic
--   plans. PL/pgSQL plans each statement again (a custom plan) for each
--   call while it thinks the generic plan no better; for gm_heartbeat's
--   one statement that planning was most of its cost (about 0.5 ms of
--   0.65 ms per heartbeat). Their statements look rows up by key and name
--   partial indexes' states as constants, never as parameters, so the
--   generic plans use the same indexes.

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
        -- RUNNING (gm_report_lease's p_state = 3 branch): the job event
        -- first, while the lease still shows whether it was only offered
        INSERT INTO job_events (job_id, at_us, kind, detail)
        SELECT x.job_id, p_now[f.k], 'running', 'node ' || p_node[f.k]
          FROM unnest(fast) f(k) JOIN leases x ON x.id = p_lease[f.k]
         WHERE p_state[f.k] = 3 AND x.state = 2
         ORDER BY f.k;
        UPDATE leases x
           SET last_report_seq = p_seq[f.k],
               image_digest = CASE WHEN p_digest[f.k] <> '' AND x.image_digest = ''
                                   THEN p_digest[f.k] ELSE x.image_digest END,
               state = CASE WHEN x.state = 2 THEN 3 ELSE x.state END,
               started_at_us = CASE
                   WHEN x.started_at_us = 0 THEN greatest(x.offered_at_us, least(p_now[f.k],
                       CASE WHEN p_started[f.k] > 0 THEN p_started[f.k] ELSE p_now[f.k] END))
                   WHEN NOT x.confirmed_by_report AND p_started[f.k] > x.started_at_us
                       THEN least(p_now[f.k], p_started[f.k])
                   ELSE x.started_at_us END,
               confirmed_by_report = true
          FROM unnest(fast) f(k)
         WHERE p_state[f.k] = 3 AND x.id = p_lease[f.k];
        -- SUCCEEDED (gm_report_lease's end, gm_end_lease's last branch):
        -- usage up to min(exit, last heartbeat + interval, now)
        UPDATE leases x
           SET last_report_seq = p_seq[f.k],
               image_digest = CASE WHEN p_digest[f.k] <> '' AND x.image_digest = ''
                                   THEN p_digest[f.k] ELSE x.image_digest END,
               state = 5, ended_at_us = p_now[f.k], exit_code = p_exit[f.k],
               term_signal = p_signal[f.k], end_message = coalesce(p_message[f.k], ''),
               billed_end_us = CASE WHEN x.started_at_us = 0 THEN 0
                   ELSE greatest(x.started_at_us, least(p_now[f.k],
                       nd.last_heartbeat_us + p_hb_interval,
                       CASE WHEN p_exited[f.k] > 0 THEN p_exited[f.k] ELSE p_now[f.k] END)) END
          FROM unnest(fast) f(k) JOIN nodes nd ON nd.id = p_node[f.k]
         WHERE p_state[f.k] = 5 AND x.id = p_lease[f.k];
        UPDATE jobs j SET state = 4, ended_at_us = p_now[f.k], updated_at_us = p_now[f.k]
          FROM unnest(fast) f(k) JOIN leases x ON x.id = p_lease[f.k]
         WHERE p_state[f.k] = 5 AND j.id = x.job_id;
        INSERT INTO job_events (job_id, at_us, kind, detail)
        SELECT x.job_id, p_now[f.k], 'ended', 'state 4'
          FROM unnest(fast) f(k) JOIN leases x ON x.id = p_lease[f.k]
         WHERE p_state[f.k] = 5
         ORDER BY f.k;
        ended := ended || ARRAY(SELECT p_node[f.k] FROM unnest(fast) f(k)
                                 WHERE p_state[f.k] = 5);
        RETURN QUERY
        SELECT f.k::integer, 'ok'::text, x.job_id,
               CASE WHEN p_state[f.k] = 5 THEN 4::smallint END,
               p_state[f.k] = 5, false, x.last_report_seq, x
          FROM unnest(fast) f(k) JOIN leases x ON x.id = p_lease[f.k];
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

CREATE OR REPLACE FUNCTION gm_place(
    p_fence bigint, p_job bigint[], p_node bigint[], p_mask bigint[], p_gang_index integer[],
    p_gang_size integer[], p_deadline bigint[], p_now bigint, p_fee_ppm integer DEFAULT 0)
RETURNS TABLE (idx integer, lease_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    k integer;
    cnt integer := coalesce(array_length(p_job, 1), 0);
    whole boolean;
    v_att integer[];
    v_price bigint[];
    v_hold bigint[];
    v_acct bigint[];
    v_lease bigint[];
    v_hid bigint[];
    st smallint;
    att integer;
    ten bigint;
    acct bigint;
    avail bigint;
    need bigint;
    price bigint;
    hold bigint;
    hid bigint;
    escrow bigint := 0;
BEGIN
    PERFORM gm_check_fence(p_fence);
    -- jobs first, then the ledger: the order every ledger writer keeps
    PERFORM 1 FROM jobs j WHERE j.id = ANY(p_job) ORDER BY j.id FOR UPDATE;
    PERFORM gm_ledger_lock();
    -- One pass when the loop below would place every element: each job
    -- QUEUED, its parts together with part 0 first (as the scheduler
    -- sends them), every node known, and each tenant's holds together
    -- within what it has available (then no prefix of them exceeds it).
    SELECT coalesce(bool_and(coalesce(s.ok, false)), true),
           array_agg(s.att ORDER BY s.k), array_agg(s.price ORDER BY s.k),
           array_agg(s.hold ORDER BY s.k), array_agg(s.acct ORDER BY s.k)
      INTO whole, v_att, v_price, v_hold, v_acct
      FROM (SELECT e.k, j.attempts + 1 AS att, nd.price_micros AS price, h.hold, a.id AS acct,
                   j.state = 1 AND nd.price_micros IS NOT NULL AND h.hold IS NOT NULL
                   AND CASE WHEN p_gang_index[e.k] = 0 THEN e.k = 1 OR p_job[e.k - 1] <> e.job
                            ELSE e.k > 1 AND p_job[e.k - 1] = e.job END
                   AND count(*) FILTER (WHERE p_gang_index[e.k] = 0)
                           OVER (PARTITION BY e.job) = 1
                   AND sum(h.hold) OVER (PARTITION BY j.tenant_id)
                           <= coalesce(a.balance_micros - a.pending_debits_micros
                                       - a.floor_micros, 0) AS ok
              FROM unnest(p_job) WITH ORDINALITY e(job, k)
              LEFT JOIN jobs j ON j.id = e.job
              LEFT JOIN nodes nd ON nd.id = p_node[e.k]
              LEFT JOIN ledger_accounts a ON a.kind = 1 AND a.owner_id = j.tenant_id
              CROSS JOIN LATERAL (SELECT gm_ledger_hold_amount(nd.price_micros, p_mask[e.k],
                                                               p_deadline[e.k] - p_now)
                                      AS hold) h) s;
    IF whole AND cnt > 0 THEN
        v_lease := ARRAY(SELECT nextval('leases_id_seq') FROM generate_series(1, cnt) g
                          ORDER BY g);
        v_hid := ARRAY(SELECT CASE WHEN v_hold[g] > 0 THEN nextval('ledger_transfers_id_seq')
                                   ELSE 0 END
                         FROM generate_series(1, cnt) g ORDER BY g);
        -- the tenants' accounts in id order (the system ones are held)
        PERFORM 1 FROM ledger_accounts a
          WHERE a.id IN (SELECT v_acct[g] FROM generate_series(1, cnt) g WHERE v_hold[g] > 0)
          ORDER BY a.id FOR UPDATE;
        UPDATE jobs j SET state = 2, attempts = j.attempts + 1, started_at_us = p_now,
                          updated_at_us = p_now
          FROM generate_series(1, cnt) g
         WHERE p_gang_index[g] = 0 AND j.id = p_job[g];
        INSERT INTO job_events (job_id, at_us, kind, detail)
        SELECT p_job[g], p_now, 'placed', 'attempt ' || v_att[g]
          FROM generate_series(1, cnt) g WHERE p_gang_index[g] = 0 ORDER BY g;
        INSERT INTO outbox (job_id, kind, created_at_us)
        SELECT p_job[g], 'dequeue', p_now
          FROM generate_series(1, cnt) g WHERE p_gang_index[g] = 0 ORDER BY g;
        INSERT INTO leases (id, job_id, node_id, attempt, gpu_mask, state, assigned_at_us,
                            deadline_us, fencing_token, gang_index, gang_size, price_micros,
                            fee_ppm, hold_micros, hold_id)
        SELECT v_lease[g], p_job[g], p_node[g], v_att[g], p_mask[g], 1, p_now, p_deadline[g],
               p_fence, p_gang_index[g], p_gang_size[g], v_price[g], p_fee_ppm, v_hold[g],
               v_hid[g]
          FROM generate_series(1, cnt) g ORDER BY g;
        INSERT INTO ledger_transfers (id, idempotency_id, debit_account_id, credit_account_id,
                                      amount_micros, kind, state, lease_id, created_by,
                                      created_at_us)
        SELECT v_hid[g], 'lease:' || v_lease[g] || ':hold', v_acct[g], 2, v_hold[g], 2, 1,
               v_lease[g], 'scheduler', p_now
          FROM generate_series(1, cnt) g WHERE v_hold[g] > 0 ORDER BY g;
        UPDATE ledger_accounts a SET pending_debits_micros = a.pending_debits_micros + s.h,
                                     updated_at_us = p_now
          FROM (SELECT v_acct[g] AS acct, sum(v_hold[g]) AS h
                  FROM generate_series(1, cnt) g WHERE v_hold[g] > 0 GROUP BY 1) s
         WHERE a.id = s.acct;
        SELECT coalesce(sum(h), 0) INTO escrow FROM unnest(v_hold) h WHERE h > 0;
        IF escrow > 0 THEN
            UPDATE ledger_accounts SET pending_credits_micros = pending_credits_micros + escrow,
                                       updated_at_us = p_now WHERE id = 2;
        END IF;
        RETURN QUERY SELECT g, v_lease[g] FROM generate_series(1, cnt) g;
        RETURN;
    END IF;
    -- as 0003: one lease at a time
    FOR i IN 1 .. cnt LOOP
        SELECT j.state, j.attempts, j.tenant_id INTO st, att, ten FROM jobs j WHERE j.id = p_job[i];
        SELECT a.id, a.balance_micros - a.pending_debits_micros - a.floor_micros INTO acct, avail
          FROM ledger_accounts a WHERE a.kind = 1 AND a.owner_id = ten;
        IF st = 1 AND p_gang_index[i] = 0 THEN
            -- the parts of a gang come one after another
            need := 0;
            k := i;
            WHILE k <= array_length(p_job, 1) AND p_job[k] = p_job[i] LOOP
                need := need + gm_ledger_hold_amount(
                    (SELECT n.price_micros FROM nodes n WHERE n.id = p_node[k]), p_mask[k],
                    p_deadline[k] - p_now);
                k := k + 1;
            END LOOP;
            IF need > coalesce(avail, 0) THEN
                UPDATE jobs SET state = 5, ended_at_us = p_now, updated_at_us = p_now,
                       failure_reason = 7,
                       failure_message = format('insufficient funds: the hold of %s micros '
                           '(price x GPUs x max duration) exceeds the tenant''s available %s micros',
                           need, coalesce(avail, 0))
                 WHERE id = p_job[i];
                INSERT INTO job_events (job_id, at_us, kind, detail)
                    VALUES (p_job[i], p_now, 'ended', 'insufficient funds for the hold');
                INSERT INTO outbox (job_id, kind, created_at_us) VALUES (p_job[i], 'dequeue', p_now);
                idx := i; lease_id := NULL;
                RETURN NEXT;
                CONTINUE;
            END IF;
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
        SELECT n.price_micros INTO price FROM nodes n WHERE n.id = p_node[i];
        hold := gm_ledger_hold_amount(price, p_mask[i], p_deadline[i] - p_now);
        INSERT INTO leases (job_id, node_id, attempt, gpu_mask, state, assigned_at_us,
                            deadline_us, fencing_token, gang_index, gang_size, price_micros,
                            fee_ppm, hold_micros)
        VALUES (p_job[i], p_node[i], att, p_mask[i], 1, p_now, p_deadline[i], p_fence,
                p_gang_index[i], p_gang_size[i], price, p_fee_ppm, hold)
        RETURNING id INTO lease_id;
        IF hold > 0 THEN
            INSERT INTO ledger_transfers (idempotency_id, debit_account_id, credit_account_id,
                                          amount_micros, kind, state, lease_id, created_by,
                                          created_at_us)
            VALUES ('lease:' || lease_id || ':hold', acct, 2, hold, 2, 1, lease_id, 'scheduler',
                    p_now)
            RETURNING id INTO hid;
            UPDATE leases SET hold_id = hid WHERE id = lease_id;
            UPDATE ledger_accounts SET pending_debits_micros = pending_debits_micros + hold,
                                       updated_at_us = p_now WHERE id = acct;
            escrow := escrow + hold;
        END IF;
        idx := i;
        RETURN NEXT;
    END LOOP;
    IF escrow > 0 THEN
        UPDATE ledger_accounts SET pending_credits_micros = pending_credits_micros + escrow,
                                   updated_at_us = p_now WHERE id = 2;
    END IF;
END $$;

ALTER FUNCTION gm_heartbeat(bigint, bigint, bigint, bigint[], bigint, text, integer[], text[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gm_confirm_leases(bigint[], bigint[], bigint[], bigint[], bigint[], bigint[])
    SET plan_cache_mode = force_generic_plan;
