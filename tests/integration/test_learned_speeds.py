"""Learned throughput profiles: succeeded leases of a job type that declares
its amount of work (JobSpec.workUnits, or ReportLease's workDone) record a
speed per GPU model in Postgres (learned_speeds, AdminService
ListLearnedSpeeds), and a later job of that type with no declared profile
is placed on the model it ran fastest on, even where verified TFLOPS say
otherwise. Bad inputs name the field and write nothing."""

import time

import common
from common import ItCase, NodeAgent, gpu, job_spec, node_req, submit


def setUpModule():
    common.setup_module(__name__, ["--allow_unverified=true", "--cycle_interval_ms=200"])


def tearDownModule():
    common.teardown_module(__name__)


def model_gpu(name, model, tflops):
    g = gpu(0, node_tag=name, model=model)
    g["claimed"] = {"fp32Tflops": tflops, "fp16Tflops": 2 * tflops}
    return g


class LearnedSpeedsTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.tenant, cls.t = c.new_tenant()
        _, cls.op = c.new_operator()
        # speed is all that counts: heterogeneity awareness on, own speed
        p = common.ok(c.admin("GetPolicy", {}))["policy"]
        for k in ("version", "createdBy", "createdAtUs", "comment"):
            p.pop(k, None)
        p.update(wSpeedup=1000, comparativeAdvantage=0)
        common.ok(c.admin("SetPolicy", {"policy": p, "comment": "learned speeds"}))

    def node(self, pool, which, model, tflops):
        name = self.c.unique("ls-" + which)
        req = node_req(name, gpus=1, labels={"pool": pool, "which": which})
        req["gpus"] = [model_gpu(name, model, tflops)]
        return NodeAgent.register(self.c, self.op, req)

    def run_job(self, ag, spec, seconds, **report):
        """Submits spec, runs it on ag for about `seconds`, reports success."""
        job = submit(self.c, self.t, spec=spec)
        lease = ag.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], job["id"])
        self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING"))
        time.sleep(seconds)
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", **report))
        return job

    def placed_on(self, job_id):
        return common.wait_for(
            lambda: self.c.psql_value("SELECT node_id FROM leases WHERE job_id = %d"
                                      % int(job_id)) or None,
            timeout=20, what="job %s placed" % job_id)

    def learned(self, job_type):
        b = self.assertOk(self.c.admin("ListLearnedSpeeds", {"jobType": job_type}))
        return b.get("speeds", [])

    def test_learned_profile_places_on_faster_model(self):
        pool = self.c.unique("lspool")
        jt = self.c.unique("resnet")
        slow_model, fast_model = self.c.unique("IT-BigTflops"), self.c.unique("IT-Small")
        # the slow one claims 10x the TFLOPS: without a profile it wins
        slow = self.node(pool, "slow", slow_model, 100.0)
        fast = self.node(pool, "fast", fast_model, 10.0)

        # control: a type nothing was learned for goes by TFLOPS
        other = submit(self.c, self.t, spec=job_spec(labelSelector={"pool": pool},
                                                     jobType=self.c.unique("untaught")))
        self.assertEqual(str(self.placed_on(other["id"])), str(slow.id))
        lease = slow.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], other["id"])
        self.assertOk(slow.report(lease, "LEASE_STATE_SUCCEEDED"))
        # no work declared: nothing learned for it
        self.assertEqual(self.c.psql_value("SELECT count(*) FROM learned_speeds"
                                           " WHERE gpu_model = '%s'" % slow_model), "0")

        # 100 units in >= 1.5 s on the slow model (declared in the spec) ...
        self.run_job(slow, job_spec(labelSelector={"which": "slow", "pool": pool},
                                    jobType=jt, workUnits=100), 1.5)
        # ... and 100 units in ~0.2 s on the fast one (reported by the agent)
        self.run_job(fast, job_spec(labelSelector={"which": "fast", "pool": pool},
                                    jobType=jt), 0.2, workDone=100)

        speeds = common.wait_for(lambda: (lambda s: s if len(s) == 2 else None)(
            self.learned(jt)), timeout=10, what="two learned speeds")
        by_model = {s["gpuModel"]: s for s in speeds}
        self.assertEqual(set(by_model), {slow_model, fast_model})
        self.assertEqual([s["jobType"] for s in speeds], [jt, jt])
        self.assertEqual(speeds[0]["gpuModel"], fast_model, "fastest first: %s" % speeds)
        for s in speeds:
            self.assertEqual(str(s["samples"]), "1")
            self.assertAlmostEqual(s["speed"], s["lastSpeed"])
            self.assertGreater(int(s["updatedAtUs"]), 0)
        # per GPU-second: 100 units / >= 1.5 s on 1 GPU
        self.assertLessEqual(by_model[slow_model]["speed"], 100 / 1.5)
        self.assertGreater(by_model[fast_model]["speed"],
                           2 * by_model[slow_model]["speed"], speeds)
        # every type when unfiltered
        all_types = {s["jobType"] for s in
                     self.assertOk(self.c.admin("ListLearnedSpeeds", {})).get("speeds", [])}
        self.assertIn(jt, all_types)

        # the leader reloads right after recording; give it a moment
        time.sleep(0.5)
        later = submit(self.c, self.t, spec=job_spec(labelSelector={"pool": pool}, jobType=jt))
        self.assertEqual(str(self.placed_on(later["id"])), str(fast.id),
                         "a job of a learned type goes to the model it ran fastest on")
        lease = fast.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], later["id"])
        # a second sample moves the weighted mean part of the way
        before = {s["gpuModel"]: s for s in self.learned(jt)}[fast_model]
        self.assertOk(fast.report(lease, "LEASE_STATE_RUNNING"))
        time.sleep(0.6)
        self.assertOk(fast.report(lease, "LEASE_STATE_SUCCEEDED", workDone=10))
        after = common.wait_for(
            lambda: (lambda s: s if str(s["samples"]) == "2" else None)(
                {x["gpuModel"]: x for x in self.learned(jt)}[fast_model]),
            timeout=10, what="second sample")
        self.assertLess(after["lastSpeed"], before["speed"])
        self.assertAlmostEqual(after["speed"], 0.7 * before["speed"] + 0.3 * after["lastSpeed"],
                               delta=1e-6 * before["speed"])

    def test_declared_profile_wins(self):
        pool = self.c.unique("lspool")
        jt = self.c.unique("bert")
        a_model, b_model = self.c.unique("IT-A"), self.c.unique("IT-B")
        a = self.node(pool, "a", a_model, 50.0)
        b = self.node(pool, "b", b_model, 50.0)
        self.run_job(a, job_spec(labelSelector={"which": "a", "pool": pool}, jobType=jt,
                                 workUnits=1000), 0.1)
        self.run_job(b, job_spec(labelSelector={"which": "b", "pool": pool}, jobType=jt,
                                 workUnits=10), 0.8)
        common.wait_for(lambda: len(self.learned(jt)) == 2, timeout=10, what="learned")
        time.sleep(0.5)
        # learned says A; the job's own profile says B and is kept
        job = submit(self.c, self.t, spec=job_spec(
            labelSelector={"pool": pool}, jobType=jt,
            speeds=[{"model": a_model, "speed": 1}, {"model": b_model, "speed": 9}]))
        self.assertEqual(str(self.placed_on(job["id"])), str(b.id))
        lease = b.acquire_lease(within=20)["lease"]
        self.assertOk(b.report(lease, "LEASE_STATE_FAILED", exitCode=1))

    def test_bad_inputs_name_the_field(self):
        before_jobs = self.c.count("jobs")
        for spec, field in [(job_spec(workUnits=-1), "spec.workUnits"),
                            (job_spec(workUnits="Infinity"), "spec.workUnits"),
                            (job_spec(jobType="x" * 129), "spec.jobType")]:
            with self.subTest(field=field, spec=spec):
                r = self.c.call("JobService", "SubmitJob",
                                {"idempotencyKey": self.c.unique("bad"), "spec": spec},
                                token=self.t)
                self.assertError(r, "invalid_argument", field=field)
        self.assertUnchanged("jobs", before_jobs)

        r = self.c.admin("ListLearnedSpeeds", {"jobType": "y" * 200})
        self.assertError(r, "invalid_argument", field="jobType")
        r = self.c.call("AdminService", "ListLearnedSpeeds", {}, token=self.t)
        self.assertError(r, "permission_denied")

        pool = self.c.unique("lspool")
        ag = self.node(pool, "bad", self.c.unique("IT-Bad"), 10.0)
        submit(self.c, self.t, spec=job_spec(labelSelector={"pool": pool},
                                             jobType=self.c.unique("t"), workUnits=5))
        lease = ag.acquire_lease(within=20)["lease"]
        before = self.c.count("learned_speeds")
        for extra, state in [({"workDone": -3}, "LEASE_STATE_SUCCEEDED"),
                             ({"workDone": "NaN"}, "LEASE_STATE_SUCCEEDED"),
                             ({"workDone": 7}, "LEASE_STATE_RUNNING")]:
            with self.subTest(extra=extra, state=state):
                r = ag.report(lease, state, seq=1, **extra)
                self.assertError(r, "invalid_argument", field="workDone")
        self.assertEqual(self.c.psql_value("SELECT state FROM leases WHERE id = %d"
                                           % int(lease["id"])), "2")
        self.assertUnchanged("learned_speeds", before)
        # a failed lease teaches nothing
        self.assertOk(ag.report(lease, "LEASE_STATE_FAILED", seq=2, exitCode=1))
        time.sleep(0.3)
        self.assertUnchanged("learned_speeds", before)
