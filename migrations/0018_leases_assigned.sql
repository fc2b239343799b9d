-- The long-poll timer asks once per tick which nodes have leases waiting to
-- be handed out (state 1, ASSIGNED): a small partial index answers it
-- without reading the running leases.
CREATE INDEX leases_assigned ON leases (node_id) WHERE state = 1;
-- RegisterNode counts the operator's nodes against its node limit: without
-- an index that count read the whole nodes table on every registration.
CREATE INDEX nodes_operator ON nodes (operator_id) WHERE state <> 6;
