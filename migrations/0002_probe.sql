-- 0002_probe.sql — the probe's record: one row per challenge issued (a probe
-- attempt), with its parameters, what the node committed, the rows the
-- server chose, and the verdict; plus each node's verification history.
-- Times are microseconds since the epoch.

CREATE TABLE probe_runs (
    id                     bigserial PRIMARY KEY,           -- the challenge id
    node_id                bigint NOT NULL REFERENCES nodes(id),
    state                  smallint NOT NULL DEFAULT 1,     -- 1 issued, 2 committed, 3 passed, 4 failed, 5 abandoned
    gpu_indexes            integer[] NOT NULL,
    gpu_uuids              text[] NOT NULL,
    seed                   bytea NOT NULL,
    m                      integer NOT NULL,
    n                      integer NOT NULL,
    k                      integer NOT NULL,
    chain_length           integer NOT NULL,
    value_range            integer NOT NULL,
    precision              smallint NOT NULL,               -- Precision
    issued_at_us           bigint NOT NULL,
    commit_deadline_us     bigint NOT NULL,
    commit_received_at_us  bigint NOT NULL DEFAULT 0,
    open_deadline_us       bigint NOT NULL DEFAULT 0,
    decided_at_us          bigint NOT NULL DEFAULT 0,
    commitment_pb          bytea,                           -- ProbeCommitment as received
    selection_pb           bytea,                           -- RowSelection as sent
    result                 smallint NOT NULL DEFAULT 0,     -- ProbeResult
    reason                 smallint NOT NULL DEFAULT 0,     -- ProbeFailureReason
    message                text NOT NULL DEFAULT '',
    verdict_pb             bytea                            -- ProbeVerdict as sent
);
CREATE INDEX probe_runs_node ON probe_runs (node_id, issued_at_us);

ALTER TABLE nodes
    ADD COLUMN verified_at_us        bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_challenge_id     bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_probe_failure    text NOT NULL DEFAULT '',
    ADD COLUMN probe_attempts        integer NOT NULL DEFAULT 0,
    ADD COLUMN probe_failures        integer NOT NULL DEFAULT 0;
