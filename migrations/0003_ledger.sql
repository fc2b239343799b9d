-- 0003_ledger.sql — the double-entry ledger in integer micro-units, modelled
-- on TigerBeetle's transfers: accounts with floors, immutable transfers with
-- caller-supplied idempotency ids, pending holds that are posted in part,
-- repeatedly, and then released. Money follows leases: gm_place takes a hold
-- per lease, gm_end_lease records where metering stops, and
-- gm_ledger_sweep (the leader's periodic settle sweep) posts usage in
-- batches: running leases as they go, ended ones once, finally.
-- Also: node state history (for utilization reports).

-- ---- accounts ------------------------------------------------------------------

-- kind: AccountKind (1 tenant, 2 operator, 3 platform, 4 escrow, 5 external).
-- The floor is what balance - pending debits may not go below: -credit limit
-- for tenants, 0 for operators, platform and escrow; the external account
-- (money entering and leaving) has none.
CREATE TABLE ledger_accounts (
    id                     bigserial PRIMARY KEY,
    kind                   smallint NOT NULL CHECK (kind BETWEEN 1 AND 5),
    owner_id               bigint NOT NULL DEFAULT 0,
    currency               text NOT NULL DEFAULT 'USD',
    balance_micros         bigint NOT NULL DEFAULT 0,
    pending_debits_micros  bigint NOT NULL DEFAULT 0 CHECK (pending_debits_micros >= 0),
    pending_credits_micros bigint NOT NULL DEFAULT 0 CHECK (pending_credits_micros >= 0),
    floor_micros           bigint NOT NULL DEFAULT 0,
    updated_at_us          bigint NOT NULL DEFAULT 0,
    UNIQUE (kind, owner_id),
    CONSTRAINT ledger_account_floor CHECK (balance_micros - pending_debits_micros >= floor_micros)
);
-- The system accounts have fixed ids: every ledger write locks them first
-- (gm_ledger_lock), which orders all ledger writers and rules out deadlocks.
INSERT INTO ledger_accounts (id, kind, owner_id, floor_micros) VALUES
    (1, 3, 0, 0),                       -- platform fees
    (2, 4, 0, 0),                       -- escrow
    (3, 5, 0, -4611686018427387904);    -- external: no floor
SELECT setval('ledger_accounts_id_seq', 100);

INSERT INTO ledger_accounts (kind, owner_id, floor_micros, updated_at_us)
    SELECT 1, id, -credit_limit_micros, updated_at_us FROM tenants ORDER BY id;
INSERT INTO ledger_accounts (kind, owner_id, updated_at_us)
    SELECT 2, id, updated_at_us FROM operators ORDER BY id;

CREATE FUNCTION gm_ledger_tenant_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO ledger_accounts (kind, owner_id, floor_micros, updated_at_us)
            VALUES (1, NEW.id, -NEW.credit_limit_micros, NEW.created_at_us);
    ELSIF NEW.credit_limit_micros <> OLD.credit_limit_micros THEN
        -- refused (check_violation) when it would leave the tenant below its floor
        UPDATE ledger_accounts SET floor_micros = -NEW.credit_limit_micros,
                                   updated_at_us = NEW.updated_at_us
         WHERE kind = 1 AND owner_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_ledger_account AFTER INSERT OR UPDATE OF credit_limit_micros ON tenants
    FOR EACH ROW EXECUTE FUNCTION gm_ledger_tenant_account();

CREATE FUNCTION gm_ledger_operator_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_accounts (kind, owner_id, updated_at_us) VALUES (2, NEW.id, NEW.created_at_us);
    RETURN NULL;
END $$;
CREATE TRIGGER operators_ledger_account AFTER INSERT ON operators
    FOR EACH ROW EXECUTE FUNCTION gm_ledger_operator_account();

-- ---- transfers and entries ------------------------------------------------------

-- kind: TransferKind; state: TransferState (1 pending, 2 posted, 3 voided).
-- A hold is a pending transfer tenant -> escrow. It is resolved by later
-- transfers naming it in pending_id: postings (kind 2, state 2) of the part
-- used, as often as the settle sweep runs, then one release (kind 5, state
-- 3) of the rest. Rows are never changed or deleted.
CREATE TABLE ledger_transfers (
    id                   bigserial PRIMARY KEY,
    idempotency_id       text NOT NULL UNIQUE,
    debit_account_id     bigint NOT NULL REFERENCES ledger_accounts(id),
    credit_account_id    bigint NOT NULL REFERENCES ledger_accounts(id),
    amount_micros        bigint NOT NULL CHECK (amount_micros > 0),
    kind                 smallint NOT NULL CHECK (kind BETWEEN 1 AND 7),
    state                smallint NOT NULL CHECK (state BETWEEN 1 AND 3),
    pending_id           bigint NOT NULL DEFAULT 0,
    lease_id             bigint NOT NULL DEFAULT 0,
    gpu_seconds          bigint NOT NULL DEFAULT 0,  -- usage a posting of a hold pays for
    comment              text NOT NULL DEFAULT '',
    created_by           text NOT NULL DEFAULT '',
    created_at_us        bigint NOT NULL,
    CHECK (debit_account_id <> credit_account_id)
);
-- appended in time order: a BRIN index finds a window for almost nothing
CREATE INDEX ledger_transfers_at ON ledger_transfers USING brin (created_at_us);
CREATE INDEX ledger_transfers_lease ON ledger_transfers (lease_id) WHERE lease_id <> 0;
-- Per account, for listings; the system accounts (ids 1-3, on nearly every
-- transfer) are left out: a listing of theirs finds its rows scanning by id.
CREATE INDEX ledger_transfers_debit ON ledger_transfers (debit_account_id, id)
    WHERE debit_account_id > 3;
CREATE INDEX ledger_transfers_credit ON ledger_transfers (credit_account_id, id)
    WHERE credit_account_id > 3;

-- One row per side of a posted transfer: credit > 0, debit < 0.
CREATE TABLE ledger_entries (
    transfer_id          bigint NOT NULL,
    account_id           bigint NOT NULL,
    amount_micros        bigint NOT NULL,
    at_us                bigint NOT NULL
);

CREATE FUNCTION gm_ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are immutable (% on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'GM003';
END $$;
CREATE TRIGGER ledger_transfers_immutable BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION gm_ledger_immutable();
CREATE TRIGGER ledger_entries_immutable BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION gm_ledger_immutable();

CREATE FUNCTION gm_ledger_lock() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM ledger_accounts WHERE id <= 3 ORDER BY id FOR UPDATE;
END $$;

-- A single posted transfer (top-ups, payouts, adjustments), idempotent by
-- p_idem: a repeat with the same content returns the first transfer with
-- duplicate = true; the same id with other content raises GM002. An account
-- that would go below its floor raises GM004 and nothing is written.
CREATE FUNCTION gm_ledger_transfer(p_idem text, p_debit bigint, p_credit bigint, p_amount bigint,
                                   p_kind smallint, p_comment text, p_by text, p_now bigint)
RETURNS TABLE (transfer_id bigint, duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    avail bigint;
BEGIN
    PERFORM gm_ledger_lock();
    SELECT * INTO t FROM ledger_transfers x WHERE x.idempotency_id = p_idem;
    IF FOUND THEN
        IF t.debit_account_id <> p_debit OR t.credit_account_id <> p_credit
           OR t.amount_micros <> p_amount OR t.kind <> p_kind THEN
            RAISE EXCEPTION 'idempotency id % was already used for transfer % with other content',
                p_idem, t.id USING ERRCODE = 'GM002';
        END IF;
        transfer_id := t.id; duplicate := true;
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT a.balance_micros - a.pending_debits_micros - a.floor_micros INTO avail
      FROM ledger_accounts a WHERE a.id = p_debit FOR UPDATE;
    IF avail < p_amount THEN
        RAISE EXCEPTION 'account % has % micros above its floor, % asked', p_debit, avail, p_amount
            USING ERRCODE = 'GM004';
    END IF;
    INSERT INTO ledger_transfers (idempotency_id, debit_account_id, credit_account_id, amount_micros,
                                  kind, state, comment, created_by, created_at_us)
    VALUES (p_idem, p_debit, p_credit, p_amount, p_kind, 2, p_comment, p_by, p_now)
    RETURNING id INTO transfer_id;
    INSERT INTO ledger_entries VALUES (transfer_id, p_debit, -p_amount, p_now),
                                      (transfer_id, p_credit, p_amount, p_now);
    UPDATE ledger_accounts SET balance_micros = balance_micros - p_amount, updated_at_us = p_now
     WHERE id = p_debit;
    UPDATE ledger_accounts SET balance_micros = balance_micros + p_amount, updated_at_us = p_now
     WHERE id = p_credit;
    duplicate := false;
    RETURN NEXT;
END $$;

-- A top-up (p_owner_kind 1: external -> tenant) or a payout (2: operator ->
-- external) through gm_ledger_transfer, answered with the transfer, the
-- owner's account after it, and whether it was a repeat. No row: no such
-- tenant or operator.
CREATE FUNCTION gm_ledger_move(p_owner_kind smallint, p_owner bigint, p_idem text, p_amount bigint,
                               p_kind smallint, p_comment text, p_by text, p_now bigint)
RETURNS TABLE (id bigint, idempotency_id text, debit_account_id bigint, credit_account_id bigint,
               amount_micros bigint, kind smallint, state smallint, pending_id bigint,
               lease_id bigint, comment text, created_by text, created_at_us bigint,
               a_id bigint, a_kind smallint, a_owner bigint, a_currency text, a_balance bigint,
               a_pending_debits bigint, a_pending_credits bigint, a_floor bigint,
               a_updated_at_us bigint, duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    acct bigint;
    r record;
BEGIN
    SELECT a.id INTO acct FROM ledger_accounts a WHERE a.kind = p_owner_kind AND a.owner_id = p_owner;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_owner_kind = 1 THEN
        SELECT * INTO r FROM gm_ledger_transfer(p_idem, 3, acct, p_amount, p_kind, p_comment, p_by, p_now);
    ELSE
        SELECT * INTO r FROM gm_ledger_transfer(p_idem, acct, 3, p_amount, p_kind, p_comment, p_by, p_now);
    END IF;
    RETURN QUERY
    SELECT t.id, t.idempotency_id, t.debit_account_id, t.credit_account_id, t.amount_micros,
           t.kind, t.state, t.pending_id, t.lease_id, t.comment, t.created_by, t.created_at_us,
           a.id, a.kind, a.owner_id, a.currency, a.balance_micros, a.pending_debits_micros,
           a.pending_credits_micros, a.floor_micros, a.updated_at_us, r.duplicate
      FROM ledger_transfers t, ledger_accounts a WHERE t.id = r.transfer_id AND a.id = acct;
END $$;

-- ---- leases carry their money ---------------------------------------------------

ALTER TABLE leases
    ADD COLUMN fee_ppm             integer NOT NULL DEFAULT 0,  -- platform fee locked at placement
    ADD COLUMN hold_micros         bigint NOT NULL DEFAULT 0,   -- the hold taken at placement
    ADD COLUMN hold_id             bigint NOT NULL DEFAULT 0,   -- its pending transfer; 0 = none
    ADD COLUMN posted_micros       bigint NOT NULL DEFAULT 0,   -- usage posted so far (gross)
    ADD COLUMN fee_posted_micros   bigint NOT NULL DEFAULT 0,   -- of which platform fee
    ADD COLUMN billed_gpu_seconds  bigint NOT NULL DEFAULT 0,   -- GPU-seconds posted so far
    ADD COLUMN metered_at_us       bigint NOT NULL DEFAULT 0,   -- usage posted up to here
    ADD COLUMN settle_seq          integer NOT NULL DEFAULT 0,  -- settlement steps so far
    ADD COLUMN billed_end_us       bigint NOT NULL DEFAULT 0,   -- ended: usage counts up to here
    ADD COLUMN ledger_settled      boolean NOT NULL DEFAULT false;
-- Leases ended before the ledger existed carry nothing to settle.
UPDATE leases SET ledger_settled = true WHERE state > 4;
CREATE INDEX leases_unsettled ON leases (id) WHERE state > 4 AND NOT ledger_settled;
CREATE INDEX leases_running ON leases (id) WHERE state BETWEEN 2 AND 4;
-- room on each page for the sweep's updates to stay HOT
ALTER TABLE leases SET (fillfactor = 80);

-- The worst case of one lease: price x GPUs x duration, rounded up.
CREATE FUNCTION gm_ledger_hold_amount(p_price bigint, p_mask bigint, p_duration_us bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_duration_us <= 0 THEN 0 ELSE
        ceil(p_price::numeric * bit_count(p_mask::bit(64)) * p_duration_us / 3600000000)::bigint END;
$$;

-- Places jobs (one element per gang part) at the node's current price, as
-- 0001 did, and takes a hold per lease: the worst case (price x GPUs x max
-- duration, as deadline - now) moves from the tenant's available balance
-- into escrow as a pending transfer. A job whose tenant cannot cover the
-- holds of all its parts fails (INSUFFICIENT_FUNDS) and its elements return
-- a NULL lease id, like jobs cancelled meanwhile. p_fee_ppm (the policy's
-- platform fee) is locked into each lease.
DROP FUNCTION gm_place(bigint, bigint[], bigint[], bigint[], integer[], integer[], bigint[], bigint);
CREATE FUNCTION gm_place(
    p_fence bigint, p_job bigint[], p_node bigint[], p_mask bigint[], p_gang_index integer[],
    p_gang_size integer[], p_deadline bigint[], p_now bigint, p_fee_ppm integer DEFAULT 0)
RETURNS TABLE (idx integer, lease_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    k integer;
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
    FOR i IN 1 .. coalesce(array_length(p_job, 1), 0) LOOP
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

-- As 0001, plus: the lease records where its metering stops (billed_end_us)
-- for the settle sweep. Ended by the server (node lost, never picked up,
-- stop deadline passed), usage counts only up to the node's last
-- heartbeat; gm_report_lease moves it to the agent's report. A lease stopped
-- because its hold ran out (stop_kind 5) fails its job as INSUFFICIENT_FUNDS.
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
                      term_signal = p_signal,
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
        job_state := 5;
        UPDATE jobs SET state = 5, ended_at_us = p_now, updated_at_us = p_now,
               failure_reason = CASE WHEN p_signal <> 0 THEN 2 ELSE 1 END,
               failure_message = p_message, exit_code = p_exit, term_signal = p_signal,
               failure_node = l.node_id
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

-- As 0001, plus: a lease the agent reports ended is metered up to the report.
CREATE OR REPLACE FUNCTION gm_report_lease(
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
    UPDATE leases SET billed_end_us = CASE WHEN started_at_us = 0 THEN 0
                                           ELSE greatest(started_at_us, p_now) END
     WHERE id = p_lease;
    UPDATE nodes SET leases_succeeded = leases_succeeded + 1 WHERE id = p_node;
    status := 'ok'; job_state := r.job_state; job_done := r.job_done; requeued := r.requeued;
    RETURN NEXT;
END $$;

-- ---- the settle sweep --------------------------------------------------------------

-- Posts usage of up to p_limit leases in one transaction: every ended lease
-- not yet settled (usage up to billed_end_us, then the rest of its hold is
-- released and the lease is settled), and every running lease last metered
-- before p_meter_before with a new second of usage since (usage up to its
-- node's last heartbeat). Usage is
-- whole seconds from started_at_us: gross = price x GPUs x seconds / 3600
-- (rounded down, at most the hold), fee = gross x fee_ppm / 1e6 (rounded
-- down), both cumulative, so each step posts the difference to what was
-- posted before and the total is exact to the second. Per step and lease:
-- a posting of the hold (tenant -> escrow), the operator's part (escrow ->
-- operator), the fee (escrow -> platform); finally the release of the rest.
-- A running lease whose usage reached its hold is told to stop (stop_kind
-- 5). Leases or jobs locked by someone else are left for the next sweep.
CREATE FUNCTION gm_ledger_sweep(p_now bigint, p_meter_before bigint, p_limit integer,
                                p_stop_grace_us bigint, p_after bigint DEFAULT 0)
RETURNS TABLE (transfers bigint, settled bigint, metered bigint, gross_micros bigint,
               fee_micros bigint, gpu_seconds bigint, stopped bigint, next_after bigint)
LANGUAGE plpgsql
SET jit = off  -- compiling costs more than the batch saves
AS $$
DECLARE
    ids bigint[];
    nrun bigint;
    lastrun bigint;
BEGIN
    -- The batch, locked: ended leases not yet settled, then running ones
    -- after lease p_after (the caller walks the running leases in id order
    -- and starts again from 0 when next_after comes back 0) metered longer
    -- ago than the interval, with at least a second of usage their node's
    -- heartbeats vouch for since. Never waits for a lock.
    SELECT array_agg(b.id), count(*) FILTER (WHERE b.running), max(b.id) FILTER (WHERE b.running)
      INTO ids, nrun, lastrun
      FROM (SELECT l.id, l.state <= 4 AS running FROM leases l JOIN jobs j ON j.id = l.job_id
             WHERE l.id IN (
                     (SELECT x.id FROM leases x WHERE x.state > 4 AND NOT x.ledger_settled
                       ORDER BY x.id LIMIT p_limit)
                     UNION ALL
                     -- in id order through leases_running, stopping at the limit
                     (SELECT x.id FROM leases x
                       WHERE x.state BETWEEN 2 AND 4 AND x.id > p_after AND x.started_at_us > 0
                         AND greatest(x.metered_at_us, x.started_at_us) < p_meter_before
                         AND least(p_now, (SELECT y.last_heartbeat_us FROM nodes y
                                            WHERE y.id = x.node_id))
                             >= greatest(x.metered_at_us, x.started_at_us) + 1000000
                       ORDER BY x.id LIMIT p_limit))
             ORDER BY l.id LIMIT p_limit
               FOR UPDATE OF l, j SKIP LOCKED) b;
    next_after := CASE WHEN nrun > 0 AND cardinality(ids) >= p_limit THEN lastrun ELSE 0 END;
    IF ids IS NULL THEN
        transfers := 0; settled := 0; metered := 0; gross_micros := 0; fee_micros := 0;
        gpu_seconds := 0; stopped := 0;
        RETURN NEXT;
        RETURN;
    END IF;
    PERFORM gm_ledger_lock();
    -- Committed without waiting for the WAL flush: a sweep a crash of
    -- Postgres loses (the last fraction of a second) is redone by the next
    -- one from the lease rows, which hold everything it derives from.
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH c AS (
        SELECT l.id, l.job_id, l.state, l.started_at_us, l.gpu_mask, l.price_micros,
               l.hold_micros, l.hold_id, l.fee_ppm, l.posted_micros, l.fee_posted_micros,
               l.billed_gpu_seconds, l.settle_seq, l.metered_at_us, l.state > 4 AS final,
               CASE WHEN l.state > 4 THEN l.billed_end_us
                    ELSE least(p_now, n.last_heartbeat_us) END AS upto,
               ta.id AS tenant_acct, oa.id AS op_acct
          FROM leases l
          JOIN jobs j ON j.id = l.job_id
          JOIN nodes n ON n.id = l.node_id
          JOIN ledger_accounts ta ON ta.kind = 1 AND ta.owner_id = j.tenant_id
          JOIN ledger_accounts oa ON oa.kind = 2 AND oa.owner_id = n.operator_id
         WHERE l.id = ANY(ids)),
    u AS (
        SELECT c.*, bit_count(c.gpu_mask::bit(64)) AS gpus,
               CASE WHEN c.started_at_us > 0 AND c.upto > c.started_at_us
                    THEN (c.upto - c.started_at_us) / 1000000 ELSE 0 END AS secs
          FROM c),
    g AS (
        SELECT u.*, greatest(u.posted_micros, least(u.hold_micros,
                   div(u.price_micros::numeric * u.gpus * u.secs, 3600)::bigint)) AS gross
          FROM u),
    k AS (
        SELECT g.*, g.gross - g.posted_micros AS d,
               greatest(g.fee_posted_micros, div(g.gross::numeric * g.fee_ppm, 1000000)::bigint)
                   - g.fee_posted_micros AS f,
               greatest(g.billed_gpu_seconds, g.gpus * g.secs) - g.billed_gpu_seconds AS gs,
               CASE WHEN g.final THEN g.hold_micros - g.gross ELSE 0 END AS rel,
               g.settle_seq + 1 AS seq,
               NOT g.final AND g.state IN (2, 3) AND g.hold_micros > 0
                   AND g.gross >= g.hold_micros AS stop
          FROM g),
    t AS (
        SELECT k.id AS lease, x.*
          FROM k CROSS JOIN LATERAL (VALUES
            (k.tenant_acct, 2::bigint, k.d, 2::smallint, 2::smallint, k.hold_id,
             'lease:' || k.id || ':post:' || k.seq, k.gs),
            (2::bigint, k.op_acct, k.d - k.f, 3::smallint, 2::smallint, 0::bigint,
             'lease:' || k.id || ':settle:' || k.seq, 0::bigint),
            (2::bigint, 1::bigint, k.f, 4::smallint, 2::smallint, 0::bigint,
             'lease:' || k.id || ':fee:' || k.seq, 0::bigint),
            (k.tenant_acct, 2::bigint, k.rel, 5::smallint, 3::smallint, k.hold_id,
             'lease:' || k.id || ':release', 0::bigint)
          ) x(debit, credit, amount, kind, state, pending_id, idem, gsec)
         WHERE x.amount > 0),
    ins AS (
        INSERT INTO ledger_transfers (idempotency_id, debit_account_id, credit_account_id,
                                      amount_micros, kind, state, pending_id, lease_id,
                                      gpu_seconds, created_by, created_at_us)
        SELECT t.idem, t.debit, t.credit, t.amount, t.kind, t.state, t.pending_id, t.lease,
               t.gsec, 'settle-sweep', p_now
          FROM t ORDER BY t.lease, t.kind
        RETURNING id, debit_account_id, credit_account_id, amount_micros, state),
    ent AS (
        INSERT INTO ledger_entries (transfer_id, account_id, amount_micros, at_us)
        SELECT ins.id, s.acct, s.amt, p_now
          FROM ins CROSS JOIN LATERAL (VALUES (ins.debit_account_id, -ins.amount_micros),
                                              (ins.credit_account_id, ins.amount_micros)) s(acct, amt)
         WHERE ins.state = 2),
    acc AS (
        SELECT s.acct, sum(s.bal) AS bal, sum(s.pd) AS pd, sum(s.pc) AS pc
          FROM t CROSS JOIN LATERAL (VALUES
            -- posted: balances move; a posting or release of a hold also
            -- shrinks the hold on both sides
            (t.debit, CASE WHEN t.state = 2 THEN -t.amount ELSE 0 END,
                      CASE WHEN t.kind IN (2, 5) THEN -t.amount ELSE 0 END, 0::bigint),
            (t.credit, CASE WHEN t.state = 2 THEN t.amount ELSE 0 END, 0::bigint,
                       CASE WHEN t.kind IN (2, 5) THEN -t.amount ELSE 0 END)
          ) s(acct, bal, pd, pc)
         GROUP BY s.acct),
    ua AS (
        UPDATE ledger_accounts a
           SET balance_micros = a.balance_micros + acc.bal,
               pending_debits_micros = a.pending_debits_micros + acc.pd,
               pending_credits_micros = a.pending_credits_micros + acc.pc,
               updated_at_us = p_now
          FROM acc WHERE a.id = acc.acct),
    ul AS (
        UPDATE leases l
           SET posted_micros = k.gross, fee_posted_micros = k.fee_posted_micros + k.f,
               billed_gpu_seconds = k.billed_gpu_seconds + k.gs,
               metered_at_us = greatest(k.metered_at_us, k.upto),
               settle_seq = k.seq, ledger_settled = k.final,
               state = CASE WHEN k.stop THEN 4 ELSE l.state END,
               stop_kind = CASE WHEN k.stop THEN 5 ELSE l.stop_kind END,
               stop_deadline_us = CASE WHEN k.stop THEN p_now + p_stop_grace_us
                                       ELSE l.stop_deadline_us END,
               stop_reason = CASE WHEN k.stop
                   THEN 'the tenant''s funds held for this lease are used up'
                   ELSE l.stop_reason END
          FROM k WHERE l.id = k.id AND l.id = ANY(ids)),
    -- a job's cost_micros counts its settled leases; readers add what its
    -- live leases posted so far (leases.posted_micros)
    uj AS (
        UPDATE jobs j SET cost_micros = j.cost_micros + s.g
          FROM (SELECT k.job_id, sum(k.gross) AS g FROM k WHERE k.final GROUP BY k.job_id) s
         WHERE j.id = s.job_id AND s.g > 0)
    SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM k WHERE k.final),
           (SELECT count(*) FROM k WHERE NOT k.final),
           (SELECT coalesce(sum(k.d), 0)::bigint FROM k), (SELECT coalesce(sum(k.f), 0)::bigint FROM k),
           (SELECT coalesce(sum(k.gs), 0)::bigint FROM k), (SELECT count(*) FROM k WHERE k.stop),
           next_after;
END $$;

-- ---- node state history (for utilization) -------------------------------------------

CREATE TABLE node_state_log (
    node_id              bigint NOT NULL,
    state                smallint NOT NULL,
    at_us                bigint NOT NULL
);
CREATE INDEX node_state_log_node ON node_state_log (node_id, at_us);
INSERT INTO node_state_log SELECT id, state, state_changed_at_us FROM nodes;

CREATE FUNCTION gm_node_state_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO node_state_log VALUES (NEW.id, NEW.state,
        CASE WHEN NEW.state_changed_at_us > 0 THEN NEW.state_changed_at_us ELSE NEW.updated_at_us END);
    RETURN NULL;
END $$;
CREATE TRIGGER nodes_state_log_insert AFTER INSERT ON nodes
    FOR EACH ROW EXECUTE FUNCTION gm_node_state_log();
CREATE TRIGGER nodes_state_log_update AFTER UPDATE OF state ON nodes
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION gm_node_state_log();
