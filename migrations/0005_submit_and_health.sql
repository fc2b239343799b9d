-- 0005: a cheaper durable submit, and GPU health from heartbeats.
--
-- SubmitJob's group commit writes many jobs in one statement. Two costs in
-- it were per job and bought nothing:
--
-- * the foreign key from jobs to tenants ran a trigger per inserted job that
--   locked the tenant's row FOR KEY SHARE; with many concurrent batches of
--   one tenant that lock became a multixact on every batch. Tenants are
--   never deleted (they are disabled), and every submit comes from a token
--   bound to an existing tenant, so the key added no protection.
-- * the outbox took one row per job. A batch now writes one outbox row
--   naming all its jobs (job_ids); the drain expands it. Single-job
--   producers (cancel, requeue, reconcile, the SQL functions) keep writing
--   job_id.
ALTER TABLE jobs DROP CONSTRAINT jobs_tenant_id_fkey;

ALTER TABLE outbox ALTER COLUMN job_id DROP NOT NULL;
ALTER TABLE outbox ADD COLUMN job_ids bigint[];
ALTER TABLE outbox ADD CONSTRAINT outbox_one_target
    CHECK ((job_id IS NULL) <> (job_ids IS NULL));

-- GPU health from heartbeats: GPUs an agent reports UNHEALTHY or MISSING
-- (bit i = GPU index i), and why. A node with any such GPU takes no new
-- work until a heartbeat reports them healthy again; running work goes on.
ALTER TABLE nodes ADD COLUMN unhealthy_gpus bigint NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN health_reason text NOT NULL DEFAULT '';
