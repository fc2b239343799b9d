-- 0006: throughput profiles learned from succeeded leases.
--
-- One row per (job type, GPU model): the speed a job of that type achieved
-- on GPUs of that model, in the job's own work units per GPU-second
-- (JobSpec.work_units, or ReportLease's work_done, over the lease's wall
-- time and the job's GPUs). Kept as an exponentially weighted mean (the
-- newest sample weighs 0.3) so that it follows changes of the workload and
-- one odd lease moves it only part of the way. Only ratios between models
-- reach the scheduler.
CREATE TABLE learned_speeds (
    job_type             text NOT NULL,
    gpu_model            text NOT NULL,
    speed                double precision NOT NULL CHECK (speed > 0),
    samples              bigint NOT NULL DEFAULT 1,
    last_speed           double precision NOT NULL,
    updated_at_us        bigint NOT NULL,
    PRIMARY KEY (job_type, gpu_model)
);

-- Adds one sample; returns the new speed. Concurrent samples of one key
-- serialize on its row (ON CONFLICT takes the row lock).
CREATE FUNCTION gm_learn_speed(p_type text, p_model text, p_sample double precision,
                               p_now bigint)
RETURNS double precision LANGUAGE sql AS $$
    INSERT INTO learned_speeds AS s (job_type, gpu_model, speed, samples, last_speed,
                                     updated_at_us)
    VALUES (p_type, p_model, p_sample, 1, p_sample, p_now)
    ON CONFLICT (job_type, gpu_model) DO UPDATE
       SET speed = 0.7 * s.speed + 0.3 * excluded.speed,
           samples = s.samples + 1,
           last_speed = excluded.speed,
           updated_at_us = excluded.updated_at_us
    RETURNING speed
$$;
