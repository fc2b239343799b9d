-- 0013: per-minute rollups for the console's charts and the series RPCs
-- (series.proto). The scheduler leader calls gm_rollup() every
-- rollup_interval_ms: the GPU-state gauges of the minute in progress are
-- replaced by the latest snapshot, and the money of that minute and the one
-- before is recomputed from the ledger, so a rerun changes nothing and a
-- posting that lands just after a minute turned is still counted.
-- Rows older than rollup_retention_hours are deleted (p_prune_before_us).

CREATE TABLE rollup_node_minute (
    minute_us            bigint  NOT NULL,
    node_id              bigint  NOT NULL,
    operator_id          bigint  NOT NULL,
    gpus_total           integer NOT NULL,
    gpus_free            integer NOT NULL,
    gpus_busy            integer NOT NULL,
    gpus_unhealthy       integer NOT NULL,
    gpus_unverified      integer NOT NULL,
    revenue_micros       bigint  NOT NULL DEFAULT 0,
    gpu_seconds          bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (minute_us, node_id)
);
CREATE INDEX rollup_node_minute_node ON rollup_node_minute (node_id, minute_us);
CREATE INDEX rollup_node_minute_operator ON rollup_node_minute (operator_id, minute_us);

CREATE TABLE rollup_fleet_minute (
    minute_us            bigint  NOT NULL,
    gpu_model            text    NOT NULL,
    region               text    NOT NULL,
    gpus_total           integer NOT NULL,
    gpus_free            integer NOT NULL,
    gpus_busy            integer NOT NULL,
    gpus_unhealthy       integer NOT NULL,
    gpus_unverified      integer NOT NULL,
    revenue_micros       bigint  NOT NULL DEFAULT 0,
    gpu_seconds          bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (minute_us, gpu_model, region)
);

CREATE TABLE rollup_tenant_minute (
    minute_us            bigint  NOT NULL,
    tenant_id            bigint  NOT NULL,
    spend_micros         bigint  NOT NULL,
    gpu_seconds          bigint  NOT NULL,
    PRIMARY KEY (minute_us, tenant_id)
);
CREATE INDEX rollup_tenant_minute_tenant ON rollup_tenant_minute (tenant_id, minute_us);

-- Returns the number of node rows written for the minute in progress.
CREATE FUNCTION gm_rollup(p_now bigint, p_prune_before_us bigint) RETURNS integer
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
    SELECT cur, g.node_id, max(g.operator_id), count(*),
           count(*) FILTER (WHERE g.c = 'f'), count(*) FILTER (WHERE g.c = 'b'),
           count(*) FILTER (WHERE g.c = 'u'), count(*) FILTER (WHERE g.c = 'v'),
           coalesce((SELECT sum(m.amt) FROM gm_rollup_money m
                      WHERE m.minute_us = cur AND m.node_id = g.node_id), 0),
           coalesce((SELECT sum(m.gs) FROM gm_rollup_money m
                      WHERE m.minute_us = cur AND m.node_id = g.node_id), 0)
      FROM gm_rollup_gpu g GROUP BY g.node_id
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
