-- 0014: one physical GPU (by uuid) belongs to one node at a time, and nodes
-- can be retired.
--
-- gpus.uuid_held is the GPU's uuid while its node is not DISABLED (NULL for
-- an empty uuid and once the node is DISABLED); it is unique, so the same
-- GPU cannot be registered by two nodes, of one operator or of two. The
-- check is deferred to the end of the transaction so that re-registering a
-- node may move uuids between its own indexes in one statement.
ALTER TABLE gpus ADD COLUMN uuid_held text;

-- When RetireNode was asked (server clock; 0 = never). The node drains
-- (DRAINING, no new work) and becomes DISABLED once no lease runs there.
ALTER TABLE nodes ADD COLUMN retired_at_us bigint NOT NULL DEFAULT 0;

-- Uuids registered twice before this migration: the oldest live node keeps
-- the GPU; the later ones are cordoned (admin hold) with the reason, for an
-- admin to retire them or their operators to re-register them with their
-- own GPUs.
UPDATE gpus g SET uuid_held = g.uuid
  FROM (SELECT g2.node_id, g2.idx,
               row_number() OVER (PARTITION BY g2.uuid ORDER BY g2.node_id, g2.idx) AS k
          FROM gpus g2 JOIN nodes n ON n.id = g2.node_id
         WHERE n.state <> 6 AND g2.uuid <> '') f
 WHERE f.node_id = g.node_id AND f.idx = g.idx AND f.k = 1;

UPDATE nodes n
   SET state = 4, admin_hold = true,
       state_reason = 'cordoned: a GPU uuid is also registered by an older node',
       state_changed_at_us = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
 WHERE n.state <> 6
   AND EXISTS (SELECT 1 FROM gpus g WHERE g.node_id = n.id AND g.uuid <> ''
                 AND g.uuid_held IS NULL);

ALTER TABLE gpus ADD CONSTRAINT gpus_uuid_held_key UNIQUE (uuid_held)
    DEFERRABLE INITIALLY DEFERRED;

-- A node that becomes DISABLED lets its GPUs go, whichever query did it.
CREATE FUNCTION gm_node_release_gpus() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE gpus SET uuid_held = NULL WHERE node_id = NEW.id AND uuid_held IS NOT NULL;
    RETURN NULL;
END;
$$;

CREATE TRIGGER nodes_release_gpus AFTER UPDATE OF state ON nodes
    FOR EACH ROW WHEN (NEW.state = 6 AND OLD.state <> 6)
    EXECUTE FUNCTION gm_node_release_gpus();

-- Retiring nodes the janitor looks at.
CREATE INDEX nodes_retiring ON nodes (id) WHERE retired_at_us > 0 AND state <> 6;
