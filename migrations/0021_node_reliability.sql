-- 0021: node reliability, computed from the node's own lease record.
--
-- A lease that ended on a node counts either as carried through by the
-- node (SUCCEEDED 5, FAILED 6 — the job's own exit, a signal, its deadline
-- —, CANCELLED 8, PREEMPTED 9, INTERRUPTED 20: a graceful stop) or as lost
-- to the node (EXPIRED 7: the agent lost it, the node was lost, the stop
-- deadline passed without a report). WITHDRAWN (10, never started) and
-- live leases do not count at all.
--
-- The figure is a windowed ratio over the node's last 100 counted leases
-- (by end time) with a Beta(19, 1) prior: score = (kept + 19) / (counted +
-- 20). A node with no record scores 0.95, one failure among few leases
-- pulls it down clearly, a long clean record approaches (never reaches)
-- 1.0 (at most 119/120), and it always stays within [0, 1].
--
-- It is derived on read from the lease rows, so it is always the figure of
-- the same snapshot as the lease end that changed it (the end and the
-- figure commit together, whichever function ended the lease:
-- gm_end_lease, gm_report_lease*, the batched calls, the janitor) and no
-- counter row is locked on the lease-ending path.

CREATE INDEX leases_node_ended ON leases (node_id, ended_at_us DESC)
    WHERE state IN (5, 6, 7, 8, 9, 20);

-- One node's figure: leases counted (≤ 100), of which lost to the node,
-- the score in ppm and the end time of the oldest counted lease (0: none).
CREATE FUNCTION gm_node_reliability(p_node bigint,
    OUT leases_total integer, OUT leases_failed integer, OUT score_ppm integer,
    OUT window_start_us bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*)::integer,
           (count(*) FILTER (WHERE w.state = 7))::integer,
           ((count(*) - count(*) FILTER (WHERE w.state = 7) + 19) * 1000000
                / (count(*) + 20))::integer,
           coalesce(min(w.ended_at_us), 0)
      FROM (SELECT l.state, l.ended_at_us FROM leases l
             WHERE l.node_id = p_node AND l.state IN (5, 6, 7, 8, 9, 20)
             ORDER BY l.ended_at_us DESC LIMIT 100) w
$$;
