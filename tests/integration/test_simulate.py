"""AdminService.SimulatePolicy and ExportTrace: a dry run on the live queue
changes nothing (queue, jobs, leases, policies compared before and after)
and shows where a candidate would place the pending jobs; trace replays of a
shipped trace and of the server's own history; bad input named by field.

The public traces are read from the harness's traces_dir (GPUMATCH_TRACES,
<source>/traces from deploy/fetch-traces.sh, or a shared copy beside the
source tree): when they are missing the trace tests fail."""

import json
import os
import threading
import time

import common
from common import ItCase, NodeAgent, job_spec, node_req, submit

SOURCE = os.environ.get("GPUMATCH_SOURCE",
                        os.path.dirname(os.path.dirname(os.path.dirname(
                            os.path.abspath(__file__)))))
POLICY_READ_ONLY = ("version", "createdBy", "createdAtUs", "comment")
DAY_US = 86400 * 1000000


def setUpModule():
    common.setup_module(__name__, ["--allow_unverified=true", "--cycle_interval_ms=200"])


def tearDownModule():
    common.teardown_module(__name__)


def example_policy(name):
    with open(os.path.join(SOURCE, "examples", "policies", name + ".json")) as f:
        return json.load(f)


class SimulateTest(ItCase):
    def active(self):
        b = self.assertOk(self.c.admin("GetPolicy", {}))
        return {k: v for k, v in b["policy"].items() if k not in POLICY_READ_ONLY}

    def set_policy(self, **over):
        p = self.active()
        p.update(over)
        return self.assertOk(self.c.admin("SetPolicy", {"policy": p, "comment": "it"}))

    def live_state(self):
        """Everything a dry run must not touch."""
        return {
            "jobs": self.c.psql("SELECT id, state, attempts, started_at_us, ended_at_us,"
                                " updated_at_us FROM jobs ORDER BY id"),
            # the lease columns scheduling writes; the ledger's settle sweep
            # books ended leases on its own clock (posted, settled)
            "leases": self.c.psql("SELECT id, job_id, node_id, gpu_mask, state, assigned_at_us,"
                                  " started_at_us, deadline_us, ended_at_us, stop_deadline_us,"
                                  " fencing_token, last_report_seq FROM leases ORDER BY id"),
            "events": self.c.count("job_events"),
            "policies": self.c.psql("SELECT version FROM policies ORDER BY version"),
            "audit": self.c.count("policy_audit"),
            "pending": self.c.redis_cli("ZRANGE", "{gm}:pending", "0", "-1", "WITHSCORES"),
        }

    def test_live_dry_run_changes_nothing(self):
        self.set_policy(allowUnverified=False)
        try:
            _, tenant_tok = self.c.new_tenant()
            _, op_tok = self.c.new_operator()
            pool = self.c.unique("sim")
            ag = NodeAgent.register(self.c, op_tok, node_req(self.c.unique("sn"), gpus=2,
                                                             labels={"pool": pool}))
            jobs = [submit(self.c, tenant_tok, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
                    for _ in range(2)]

            def blocked():
                r = self.c.call("JobService", "ExplainJob", {"jobId": jobs[-1]["id"]},
                                token=tenant_tok)
                if r.code == "unavailable":
                    return None
                counts = (self.assertOk(r).get("explanation") or {}).get("counts", [])
                return [x for x in counts if x.get("reason") == "EXPLAIN_REASON_UNVERIFIED"]
            common.wait_for(blocked, timeout=15, what="jobs pending on the unverified node")

            before = self.live_state()
            cand = self.active()
            cand["allowUnverified"] = True
            b = self.assertOk(self.c.admin("SimulatePolicy", {
                "source": "SIMULATION_SOURCE_LIVE", "candidates": [cand]}))
            after = self.live_state()
            self.assertEqual(after, before, "SimulatePolicy changed live state")

            base, got = b["baseline"], b["candidates"][0]
            ids = {j["id"] for j in jobs}
            self.assertGreaterEqual(base["metrics"].get("jobsTotal", 0), 2, b)
            self.assertEqual(base["metrics"].get("jobsPlaced", 0), 0,
                             "the active policy refuses unverified nodes: %s" % base)
            self.assertGreaterEqual(got["metrics"].get("jobsPlaced", 0), 2, got)
            diffs = {d["jobId"]: d for d in got.get("diffs", [])}
            self.assertTrue(ids <= set(diffs), "both jobs in the diff: %s" % got)
            for j in ids:
                self.assertEqual(diffs[j].get("candidateNodeIds"), [ag.id], diffs[j])
                self.assertFalse(diffs[j].get("baselineNodeIds"), diffs[j])
            self.assertGreaterEqual(got.get("diffCount", 0), 2)
            self.assertIs(got["policy"].get("allowUnverified"), True)

            # nothing was placed for real: the node gets no work
            r = self.assertOk(ag.acquire(wait_ms=500))
            self.assertFalse(r.get("lease"), "a dry run leased work: %s" % r)
            self.assertEqual(self.live_state()["leases"], before["leases"])

            # cap on the diffs returned, not on the count
            b = self.assertOk(self.c.admin("SimulatePolicy", {
                "source": "SIMULATION_SOURCE_LIVE", "candidates": [cand], "maxDiffs": 1}))
            self.assertEqual(len(b["candidates"][0].get("diffs", [])), 1, b)
            self.assertGreaterEqual(b["candidates"][0].get("diffCount", 0), 2, b)
        finally:
            self.set_policy(allowUnverified=True)

    def test_bad_input_names_the_field(self):
        good = self.active()
        cases = [
            ({"source": "SIMULATION_SOURCE_LIVE", "candidates": []}, "candidates"),
            ({"candidates": [good]}, "source"),
            ({"source": "SIMULATION_SOURCE_LIVE", "candidates": [dict(good, wPrice=5000)]},
             "candidates[0].wPrice"),
            ({"source": "SIMULATION_SOURCE_LIVE",
              "candidates": [good, dict(good, wSpeedup=-1)]}, "candidates[1].wSpeedup"),
            ({"source": "SIMULATION_SOURCE_LIVE",
              "candidates": [dict(good, comparativeAdvantage=2)]}, "candidates[0].comparativeAdvantage"),
            ({"source": "SIMULATION_SOURCE_LIVE",
              "candidates": [dict(good, preemptShorterFactor=2e6)]},
             "candidates[0].preemptShorterFactor"),
            ({"source": "SIMULATION_SOURCE_LIVE",
              "candidates": [good, dict(good, preemptMinRunUs=str(31 * 86400 * 10**6))]},
             "candidates[1].preemptMinRunUs"),
            ({"source": "SIMULATION_SOURCE_LIVE",
              "candidates": [dict(good, fitMode="FIT_MODE_UNSPECIFIED")]},
             "candidates[0].fitMode"),
            ({"source": "SIMULATION_SOURCE_TRACE", "candidates": [good]}, "traceName"),
            ({"source": "SIMULATION_SOURCE_TRACE", "candidates": [good],
              "traceName": "msr-itp/cluster01", "window": {"startUs": "10", "endUs": "5"}},
             "window"),
        ]
        before = self.live_state()
        for req, field in cases:
            with self.subTest(field=field):
                self.assertError(self.c.admin("SimulatePolicy", req), "invalid_argument",
                                 field=field)
        self.assertError(self.c.admin("SimulatePolicy", {
            "source": "SIMULATION_SOURCE_TRACE", "candidates": [good],
            "traceName": "../../etc/passwd"}), "not_found", field="traceName")
        self.assertError(self.c.admin("ExportTrace", {"window": {"startUs": "10",
                                                                 "endUs": "5"}}),
                         "invalid_argument", field="window")
        self.assertEqual(self.live_state(), before)

    def test_trace_replay_side_by_side(self):
        fifo = example_policy("fifo")
        b = self.assertOk(self.c.admin("SimulatePolicy", {
            "source": "SIMULATION_SOURCE_TRACE", "traceName": "msr-itp/cluster01",
            "window": {"startUs": "0", "endUs": str(30 * DAY_US)},
            "candidates": [fifo, example_policy("default")], "seed": "7"},
            timeout=600), "a shipped trace replays (traces: deploy/fetch-traces.sh?)")
        self.assertEqual(len(b["candidates"]), 2)
        total = b["jobsSimulated"]
        self.assertGreater(total, 100, b)
        self.assertGreater(b["nodesSimulated"], 1000, b)
        for r in [b["baseline"]] + b["candidates"]:
            m = r["metrics"]
            self.assertEqual(m["jobsTotal"], total)
            self.assertEqual(m.get("jobsCompleted", 0) + m.get("jobsPending", 0)
                             + m.get("jobsUnschedulable", 0), total, m)
            self.assertGreater(int(m.get("jctMeanUs", 0)), 0, m)
            self.assertGreater(int(m.get("makespanUs", 0)), 0, m)
            self.assertGreater(m.get("gpuUtilizationPpm", 0), 0, m)
        self.assertEqual(b["candidates"][1]["candidateIndex"], 1)
        self.assertEqual(b["candidates"][0]["policy"].get("wSpeedup", 0), 0)
        self.assertEqual(b["candidates"][1]["policy"].get("wSpeedup"),
                         example_policy("default")["wSpeedup"])
        for r in [b["baseline"]] + b["candidates"]:
            m = r["metrics"]
            # work done per GPU-second, in reference-GPU (V100) seconds
            self.assertGreater(m.get("effectiveThroughputPpm", 0), 0, m)
            self.assertGreater(m.get("usefulUtilizationPpm", 0), 0, m)
        # deterministic: the same request gives the same figures
        b2 = self.assertOk(self.c.admin("SimulatePolicy", {
            "source": "SIMULATION_SOURCE_TRACE", "traceName": "msr-itp/cluster01",
            "window": {"startUs": "0", "endUs": str(30 * DAY_US)},
            "candidates": [fifo, example_policy("default")], "seed": "7"}, timeout=600))
        strip = lambda x: {k: v for k, v in x["metrics"].items()
                           if k != "simSecondsPerWallSecond"}
        self.assertEqual([strip(r) for r in b2["candidates"]],
                         [strip(r) for r in b["candidates"]])

    def test_trace_replay_preemptible(self):
        """preemptible replays an MSR trace's jobs as preemptible, so the
        default policy's shorter-work rule has victims; without it, none."""
        req = {"source": "SIMULATION_SOURCE_TRACE", "traceName": "msr-itp/cluster06",
               "arrivalScale": 0.005, "candidates": [example_policy("default")]}
        plain = self.assertOk(self.c.admin("SimulatePolicy", req, timeout=600))
        pre = self.assertOk(self.c.admin("SimulatePolicy", dict(req, preemptible=True),
                                         timeout=600))
        self.assertEqual(plain["candidates"][0]["metrics"].get("preemptions", 0), 0, plain)
        m = pre["candidates"][0]["metrics"]
        self.assertGreater(m.get("preemptions", 0), 0, m)
        self.assertEqual(m.get("jobsCompleted", 0) + m.get("jobsPending", 0)
                         + m.get("jobsUnschedulable", 0), m["jobsTotal"], m)
        before = self.live_state()
        self.assertError(self.c.admin("SimulatePolicy", dict(
            req, traceName="alibaba-gpu-v2023/openb_pod_list_default", preemptible=True)),
            "invalid_argument", field="preemptible")
        self.assertError(self.c.admin("SimulatePolicy", {
            "source": "SIMULATION_SOURCE_LIVE", "preemptible": True,
            "candidates": [example_policy("default")]}), "invalid_argument",
            field="preemptible")
        self.assertEqual(self.live_state(), before)

    def test_trace_replay_does_not_hold_the_loop(self):
        """A long replay runs on a worker thread: other calls are answered
        while it is still in flight."""
        done = {}

        def long_sim():
            done["reply"] = self.c.admin("SimulatePolicy", {
                "source": "SIMULATION_SOURCE_TRACE", "traceName": "msr-itp/cluster04",
                "arrivalScale": 0.005,
                "candidates": [example_policy("fifo"), example_policy("default")]},
                timeout=600)
            done["at"] = time.monotonic()
        t = threading.Thread(target=long_sim)
        t.start()
        try:
            time.sleep(0.3)
            answered = 0
            for _ in range(5):
                self.assertOk(self.c.admin("GetPolicy", {}))
                answered += 1
            at = time.monotonic()
            busy = self.c.admin("SimulatePolicy", {
                "source": "SIMULATION_SOURCE_TRACE", "traceName": "msr-itp/cluster01",
                "candidates": [example_policy("fifo")]})
        finally:
            t.join(600)
        self.assertIn("reply", done, "the long replay never answered")
        self.assertOk(done["reply"])
        self.assertLess(at, done["at"], "GetPolicy waited for the replay to finish")
        self.assertEqual(answered, 5)
        self.assertError(busy, "resource_exhausted")

    def test_history_export_and_replay(self):
        _, tenant_tok = self.c.new_tenant()
        _, op_tok = self.c.new_operator()
        pool = self.c.unique("hist")
        ag = NodeAgent.register(self.c, op_tok, node_req(self.c.unique("hn"), gpus=1,
                                                         labels={"pool": pool}))
        ag.start_heartbeats(0.3)
        try:
            t0 = common.now_us()
            job = submit(self.c, tenant_tok, spec=job_spec(
                gpus=1, labelSelector={"pool": pool}, jobType="ResNet-50 (batch size 32)"))
            lease = ag.acquire_lease(within=15)["lease"]
            self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING", seq=1))
            time.sleep(0.2)
            self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=2))
            common.wait_job_state(self.c, tenant_tok, job["id"], ("JOB_STATE_SUCCEEDED",))
            queued = submit(self.c, tenant_tok, spec=job_spec(
                gpus=4, labelSelector={"pool": pool}))  # never fits: stays queued
            t1 = common.now_us() + 1
        finally:
            ag.stop_heartbeats()
        before = self.live_state()
        b = self.assertOk(self.c.admin("ExportTrace", {"window": {"startUs": str(t0),
                                                                  "endUs": str(t1)}}))
        self.assertEqual(self.live_state(), before)
        jobs = b["jobsCsv"].splitlines()
        self.assertEqual(jobs[0], "job_id,tenant_id,submit_us,duration_us,gpus_per_node,"
                         "node_count,priority_class,preemptible,job_type")
        rows = {r.split(",")[0]: r.split(",") for r in jobs[1:]}
        self.assertEqual(set(rows), {job["id"], queued["id"]}, b["jobsCsv"])
        done = rows[job["id"]]
        self.assertGreater(int(done[3]), 0)
        # it ran inside the window the test recorded around it
        self.assertLessEqual(int(done[3]), t1 - t0, "longer than the test's window: %s" % done)
        self.assertEqual(done[8], "ResNet-50 (batch size 32)")
        self.assertEqual(int(rows[queued["id"]][3]), common.HOUR_US,
                         "a queued job is exported with its max duration")
        nodes = b["nodesCsv"].splitlines()
        self.assertTrue(nodes[0].startswith("node_id,region,model,gpus,"), nodes[0])
        self.assertIn(ag.id, [n.split(",")[0] for n in nodes[1:]])
        self.assertEqual(b["jobs"], 2)

        r = self.assertOk(self.c.admin("SimulatePolicy", {
            "source": "SIMULATION_SOURCE_TRACE", "traceName": "history",
            "window": {"startUs": str(t0), "endUs": str(t1)},
            "candidates": [example_policy("default")]}))
        self.assertEqual(r["jobsSimulated"], 2, r)
        m = r["baseline"]["metrics"]
        self.assertEqual(m.get("jobsCompleted", 0) + m.get("jobsPending", 0)
                         + m.get("jobsUnschedulable", 0), 2, m)
        self.assertEqual(self.live_state(), before)


if __name__ == "__main__":
    import sys
    import run
    raise SystemExit(run.main(["-v", __name__] + sys.argv[1:]))
