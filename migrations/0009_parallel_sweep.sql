-- 0009: settle sweeps in parallel.
--
-- gm_ledger_sweep took the ledger lock (gm_ledger_lock: the system accounts'
-- rows) before its inserts, so a second sweep waited for the whole of the
-- first. Now a sweep works on one shard of the leases (id % p_shards =
-- p_shard; sweeps of different shards never touch the same lease or job),
-- writes its transfers, entries, leases and jobs first, and takes the
-- ledger lock only for the last step: adding its per-account sums to the
-- balances. The sums move no account's available balance (a posting of a
-- hold takes from the tenant's balance what it frees of the tenant's
-- holds), so no floor is checked there. Account rows are locked in id order
-- after the ledger lock, as every ledger writer does.
DROP FUNCTION gm_ledger_sweep(bigint, bigint, integer, bigint, bigint);

-- whole seconds from started_at_us: gross = price x GPUs x seconds / 3600
-- (rounded down, at most the hold), fee = gross x fee_ppm / 1e6 (rounded
-- down), both cumulative, so each step posts the difference to what was
-- posted before and the total is exact to the second. Per step and lease:
-- a posting of the hold (tenant -> escrow), the operator's part (escrow ->
-- operator), the fee (escrow -> platform); finally the release of the rest.
-- A running lease whose usage reached its hold is told to stop (stop_kind
-- 5). Leases or jobs locked by someone else are left for the next sweep.
CREATE FUNCTION gm_ledger_sweep(p_now bigint, p_meter_before bigint, p_limit integer,
                                p_stop_grace_us bigint, p_after bigint DEFAULT 0,
                                p_shard integer DEFAULT 0, p_shards integer DEFAULT 1)
RETURNS TABLE (transfers bigint, settled bigint, metered bigint, gross_micros bigint,
               fee_micros bigint, gpu_seconds bigint, stopped bigint, next_after bigint)
LANGUAGE plpgsql
-- A batch is at most p_limit leases found by key: index probes, never a
-- scan of leases, jobs or nodes (the planner's estimate for the shard's
-- share of the running leases is far too low, and a scan of every running
-- lease per batch costs more than the batch). Compiling costs more than
-- the batch saves.
SET jit = off
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
AS $$
DECLARE
    ids bigint[];
    nrun bigint;
    lastrun bigint;
    accts bigint[];
    bals numeric[];
    pds numeric[];
    pcs numeric[];
BEGIN
    IF p_shards < 1 OR p_shard < 0 OR p_shard >= p_shards THEN
        RAISE EXCEPTION 'gm_ledger_sweep: shard % of %', p_shard, p_shards USING ERRCODE = '22023';
    END IF;
    -- The batch, locked: ended leases of the shard not yet settled, then
    -- running ones after lease p_after (the caller walks the running leases
    -- in id order and starts again from 0 when next_after comes back 0)
    -- metered longer ago than the interval, with at least a second of usage
    -- their node's heartbeats vouch for since. Never waits for a lock.
    SELECT array_agg(b.id), count(*) FILTER (WHERE b.running), max(b.id) FILTER (WHERE b.running)
      INTO ids, nrun, lastrun
      FROM (SELECT l.id, l.state <= 4 AS running FROM leases l JOIN jobs j ON j.id = l.job_id
             WHERE l.id IN (
                     (SELECT x.id FROM leases x WHERE x.state > 4 AND NOT x.ledger_settled
                         AND x.id % p_shards = p_shard
                       ORDER BY x.id LIMIT p_limit)
                     UNION ALL
                     -- in id order through leases_running, stopping at the limit
                     (SELECT x.id FROM leases x
                       WHERE x.state BETWEEN 2 AND 4 AND x.id > p_after AND x.started_at_us > 0
                         AND x.id % p_shards = p_shard
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
    -- Committed without waiting for the WAL flush: a sweep a crash of
    -- Postgres loses (the last fraction of a second) is redone by the next
    -- one from the lease rows, which hold everything it derives from.
    PERFORM set_config('synchronous_commit', 'off', true);
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
    -- per account: posted transfers move balances; a posting or release of
    -- a hold also shrinks the hold on both sides (tenant: pending debits,
    -- escrow: pending credits). Escrow passes the posting on whole.
    acc AS (
        SELECT s.acct, sum(s.bal) AS bal, sum(s.pd) AS pd, sum(s.pc) AS pc
          FROM (SELECT k.tenant_acct AS acct, -sum(k.d) AS bal, -sum(k.d + k.rel) AS pd,
                       0 AS pc
                  FROM k GROUP BY k.tenant_acct
                UNION ALL
                SELECT k.op_acct, sum(k.d - k.f), 0, 0 FROM k GROUP BY k.op_acct
                UNION ALL
                SELECT 1, sum(k.f), 0, 0 FROM k
                UNION ALL
                SELECT 2, 0, 0, -sum(k.d + k.rel) FROM k) s
         WHERE s.bal <> 0 OR s.pd <> 0 OR s.pc <> 0
         GROUP BY s.acct),
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
           (SELECT array_agg(acc.acct ORDER BY acc.acct) FROM acc),
           (SELECT array_agg(acc.bal ORDER BY acc.acct) FROM acc),
           (SELECT array_agg(acc.pd ORDER BY acc.acct) FROM acc),
           (SELECT array_agg(acc.pc ORDER BY acc.acct) FROM acc)
      INTO transfers, settled, metered, gross_micros, fee_micros, gpu_seconds, stopped,
           accts, bals, pds, pcs;
    IF accts IS NOT NULL THEN
        PERFORM gm_ledger_lock();
        PERFORM 1 FROM ledger_accounts a WHERE a.id = ANY(accts) AND a.id > 3
          ORDER BY a.id FOR UPDATE;
        UPDATE ledger_accounts a
           SET balance_micros = a.balance_micros + s.bal,
               pending_debits_micros = a.pending_debits_micros + s.pd,
               pending_credits_micros = a.pending_credits_micros + s.pc,
               updated_at_us = p_now
          FROM unnest(accts, bals, pds, pcs) s(acct, bal, pd, pc)
         WHERE a.id = s.acct;
    END IF;
    RETURN NEXT;
END $$;
