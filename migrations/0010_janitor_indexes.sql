-- 0010: the leader's periodic queries find their few rows by index.
--
-- Every half second the janitor looks for leases never picked up, leases
-- past their stop deadline and leases past their max duration; each of
-- those was a scan of every live lease (tens of milliseconds at 80,000
-- leases, twice a second). The partial indexes below hold only the leases
-- in the state each query asks about; their columns do not change while a
-- lease runs, so metering keeps updating lease rows in place (HOT).
CREATE INDEX leases_unpicked ON leases (assigned_at_us) WHERE state = 1;
CREATE INDEX leases_stopping ON leases (stop_deadline_us) WHERE state = 4;
CREATE INDEX leases_deadline ON leases (deadline_us) WHERE state IN (2, 3);
