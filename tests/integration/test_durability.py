"""SLOW: durability and failure. kill -9 of gpumatchd under submit load
loses no acknowledged job; a Redis FLUSHALL is repaired from Postgres by the
reconciler; a stopped Postgres makes RPCs answer `unavailable` fast while
/healthz stays up, and gpumatchd recovers by itself; a node that stops
heartbeating loses its lease and the job runs on another node.
run.py --quick leaves this module out."""

import threading
import time

import common
from common import ItCase, NodeAgent, get_job, job_spec, node_req, ok, submit, submit_req

SLOW = True


def setUpModule():
    common.setup_module(__name__, [
        "--allow_unverified=true",
        "--cycle_interval_ms=200",
        "--reconcile_interval_ms=500",
        "--heartbeat_interval_ms=300",
        "--heartbeat_timeout_ms=1500",
        "--request_timeout_ms=3000",
    ])


def tearDownModule():
    common.teardown_module(__name__)


def in_pending(c, job_id):
    return c.redis_cli("ZSCORE", "{gm}:pending", job_id) != ""


class DurabilityTest(ItCase):
    def setUp(self):
        super().setUp()
        # each test leaves gpumatchd and Postgres up, but make sure
        if not self.c.alive():
            self.c.start_gpumatchd()

    def test_1_postgres_down_answers_unavailable_fast_and_recovers(self):
        _, tok = self.c.new_tenant()
        job = submit(self.c, tok, spec=job_spec(gpus=1, labelSelector={"pool": "nowhere"}))
        pid = self.c.pid
        self.c.stop_pg()
        try:
            # liveness never waits on a store
            t0 = time.monotonic()
            st, _, body = self.c.http("GET", "/healthz", timeout=5)
            self.assertEqual(st, 200, body)
            # readiness says so, fast
            t0 = time.monotonic()
            rd = common.wait_for(lambda: self.c.http("GET", "/readyz", timeout=5)[0] != 200
                                 and True, timeout=10, interval=0.2,
                                 what="/readyz to fail with Postgres down")
            self.assertTrue(rd)
            for method, body in [("GetJob", {"jobId": job["id"]}), ("ListJobs", {}),
                                 ("SubmitJob", submit_req(self.c.unique("down")))]:
                t0 = time.monotonic()
                r = self.c.call("JobService", method, body, token=tok, timeout=15)
                took = time.monotonic() - t0
                self.assertError(r, "unavailable", msg="%s with Postgres down" % method)
            # the event loop is not blocked meanwhile
            t0 = time.monotonic()
            self.assertEqual(self.c.http("GET", "/healthz", timeout=5)[0], 200)
        finally:
            self.c.start_pg()
        common.wait_for(lambda: self.c.call("JobService", "GetJob", {"jobId": job["id"]},
                                            token=tok).status == 200,
                        timeout=30, interval=0.5, what="GetJob to work again after Postgres")
        self.assertEqual(self.c.pid, pid, "gpumatchd was restarted")
        self.assertTrue(self.c.alive())
        common.wait_for(lambda: self.c.http("GET", "/readyz")[0] == 200, timeout=15,
                        what="/readyz 200 again")
        submit(self.c, tok, spec=job_spec(gpus=1, labelSelector={"pool": "nowhere"}))

    def test_1b_stalled_postgres_does_not_block(self):
        # SIGSTOPped Postgres: connections hang instead of failing. Calls must
        # still be answered by the request timeout, and the loop stay free.
        _, tok = self.c.new_tenant()
        job = submit(self.c, tok, spec=job_spec(gpus=1, labelSelector={"pool": "nowhere"}))
        pid = self.c.pid
        self.c.pause_pg()
        try:
            results = []

            def slow_call():
                t0 = time.monotonic()
                r = self.c.call("JobService", "GetJob", {"jobId": job["id"]}, token=tok,
                                timeout=30)
                results.append((r, time.monotonic() - t0))
            ts = [threading.Thread(target=slow_call) for _ in range(4)]
            for t in ts:
                t.start()
            time.sleep(0.5)
            t0 = time.monotonic()
            st, _, body = self.c.http("GET", "/healthz", timeout=5)
            self.assertEqual(st, 200, body)
            for t in ts:
                t.join(30)
            self.assertEqual(len(results), 4)
            for r, took in results:
                self.assertError(r, ("deadline_exceeded", "unavailable"),
                                 msg="GetJob with Postgres stalled")
        finally:
            self.c.resume_pg()
        common.wait_for(lambda: self.c.call("JobService", "GetJob", {"jobId": job["id"]},
                                            token=tok).status == 200,
                        timeout=30, interval=0.5, what="GetJob to work again")
        self.assertEqual(self.c.pid, pid)

    def test_2_kill9_under_load_loses_no_acknowledged_job(self):
        tenant, tok = self.c.new_tenant()
        spec = job_spec(gpus=1, labelSelector={"pool": "nowhere"})
        acked, unacked, lock = {}, [], threading.Lock()
        stop = threading.Event()

        def load(w):
            n = 0
            while not stop.is_set():
                key = "load-%d-%d" % (w, n)
                n += 1
                try:
                    r = self.c.call("JobService", "SubmitJob", submit_req(key, spec), token=tok,
                                    timeout=5)
                    ok_ = r.status == 200
                except OSError:
                    ok_ = False
                with lock:
                    if ok_:
                        acked[key] = r.body["job"]["id"]
                    else:
                        unacked.append(key)
                if not ok_:
                    time.sleep(0.05)
        threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        try:
            common.wait_for(lambda: len(acked) >= 200, timeout=20, interval=0.05,
                            what="200 acknowledged submits before the kill")
            self.c.kill9()
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertGreater(len(acked), 0)
        self.c.start_gpumatchd()
        # every acknowledged job is in the record, under its key
        rows = dict((k, i) for k, i in self.c.psql(
            "SELECT idempotency_key, id FROM jobs WHERE tenant_id = %s" % tenant["id"]))
        missing = {k: v for k, v in acked.items() if rows.get(k) != v}
        self.assertFalse(missing, "%d of %d acknowledged jobs are not in Postgres: %s"
                         % (len(missing), len(acked), list(missing.items())[:10]))
        # retrying what was not acknowledged neither loses nor doubles
        for key in unacked[:50]:
            b = ok(self.c.call("JobService", "SubmitJob", submit_req(key, spec), token=tok))
            if key in rows:
                self.assertEqual(b["job"]["id"], rows[key])
                self.assertFalse(b.get("created", False))
        dup = self.c.psql("SELECT idempotency_key FROM jobs GROUP BY tenant_id, idempotency_key "
                          "HAVING count(*) > 1 AND idempotency_key <> ''")
        self.assertEqual(dup, [])
        # and after the restart the outbox reaches Redis
        sample = list(acked.values())[:20]
        common.wait_for(lambda: all(in_pending(self.c, j) for j in sample), timeout=15,
                        what="acknowledged jobs in the Redis queue after restart")
        common.wait_for(lambda: self.c.count("outbox") == 0, timeout=15,
                        what="the outbox drained")
        print("\n  kill -9 under load: %d acknowledged, %d not, all acknowledged kept"
              % (len(acked), len(unacked)), end=" ")

    def test_3_redis_flushall_is_repaired_from_postgres(self):
        _, tok = self.c.new_tenant()
        _, op = self.c.new_operator()
        pool = self.c.unique("flush")
        jobs = [submit(self.c, tok, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
                for _ in range(3)]
        common.wait_for(lambda: all(in_pending(self.c, j["id"]) for j in jobs), timeout=10,
                        what="the jobs in the Redis queue")
        self.assertEqual(self.c.redis_cli("FLUSHALL"), "OK")
        self.assertFalse(any(in_pending(self.c, j["id"]) for j in jobs))
        # the queue comes back from Postgres (reconcile) ...
        common.wait_for(lambda: all(in_pending(self.c, j["id"]) for j in jobs), timeout=15,
                        what="the reconciler to re-queue the jobs")
        # ... and the jobs are placed once a node fits
        ag = NodeAgent.register(self.c, op, node_req(self.c.unique("fl"), gpus=4,
                                                     labels={"pool": pool}))
        ag.start_heartbeats(0.3)
        try:
            got = set()
            deadline = time.monotonic() + 30
            while len(got) < 3 and time.monotonic() < deadline:
                b = ok(ag.acquire(wait_ms=2000))
                if b.get("lease"):
                    got.add(b["lease"]["jobId"])
            self.assertEqual(got, {j["id"] for j in jobs})
        finally:
            ag.stop_heartbeats()
        self.assertTrue(self.c.alive())

    def test_3b_redis_crash_and_return(self):
        # kill -9 Redis (its AOF survives); gpumatchd reconnects by itself
        _, tok = self.c.new_tenant()
        _, op = self.c.new_operator()
        pid = self.c.pid
        self.c.kill_redis()
        try:
            t0 = time.monotonic()
            self.assertEqual(self.c.http("GET", "/healthz", timeout=5)[0], 200)
            common.wait_for(lambda: self.c.http("GET", "/readyz", timeout=5)[0] != 200,
                            timeout=10, interval=0.2, what="/readyz to fail with Redis down")
        finally:
            self.c.start_redis()
        common.wait_for(lambda: self.c.http("GET", "/readyz")[0] == 200, timeout=20,
                        interval=0.3, what="/readyz 200 after Redis is back")
        self.assertEqual(self.c.pid, pid, "gpumatchd was restarted")
        pool = self.c.unique("back")
        ag = NodeAgent.register(self.c, op, node_req(self.c.unique("rb"), labels={"pool": pool}))
        ag.start_heartbeats(0.3)
        try:
            job = common.wait_for(
                lambda: (lambda r: r.body["job"] if r.status == 200 else None)(
                    self.c.call("JobService", "SubmitJob", submit_req(
                        "after-redis", job_spec(gpus=1, labelSelector={"pool": pool})),
                        token=tok)), timeout=20, what="SubmitJob after Redis is back")
            lease = ag.acquire_lease(within=20)["lease"]
            self.assertEqual(lease["jobId"], job["id"])
            self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED"))
        finally:
            ag.stop_heartbeats()

    def test_4_lost_node_job_runs_elsewhere(self):
        _, tok = self.c.new_tenant()
        _, op = self.c.new_operator()
        pool = self.c.unique("lost")
        x = NodeAgent.register(self.c, op, node_req(self.c.unique("x"), labels={"pool": pool}))
        x.start_heartbeats(0.3)
        y = None
        try:
            job = submit(self.c, tok, spec=job_spec(gpus=1, labelSelector={"pool": pool},
                                                    maxAttempts=3))
            lease_x = x.acquire_lease(within=20)["lease"]
            self.assertEqual(lease_x["jobId"], job["id"])
            self.assertOk(x.report(lease_x, "LEASE_STATE_RUNNING"))
            y = NodeAgent.register(self.c, op, node_req(self.c.unique("y"),
                                                        labels={"pool": pool}))
            y.start_heartbeats(0.3)
            x.stop_heartbeats()  # x falls silent
            t0 = time.monotonic()
            common.wait_for(lambda: ok(self.c.call("NodeService", "GetNode", {"nodeId": x.id},
                                                   token=op))["node"]["state"]
                            == "NODE_STATE_LOST", timeout=10, what="node x LOST")
            lease_y = y.acquire_lease(within=20)["lease"]
            self.assertEqual(lease_y["jobId"], job["id"])
            print("\n  lost node: job re-placed %.1fs after the last heartbeat"
                  % (time.monotonic() - t0), end=" ")
            j = get_job(self.c, tok, job["id"])
            self.assertEqual(j.get("attempts"), 2, j)
            hist = j.get("attemptHistory", [])
            self.assertEqual(len(hist), 2, "Job.attempt_history should hold both attempts: %s"
                             % j)
            self.assertEqual((hist[0].get("failure") or {}).get("reason"),
                             "FAILURE_REASON_NODE_LOST", hist[0])
            self.assertEqual(self.c.psql_value("SELECT state FROM leases WHERE id = %s"
                                               % lease_x["id"]), "7", "x's lease EXPIRED")
            # x comes back still running the old lease: it is told to stop
            hb = ok(x.heartbeat())
            stops = [c.get("leaseId") for c in hb.get("commands", [])
                     if c.get("action") == "LEASE_ACTION_STOP"]
            self.assertTrue(lease_x["id"] in hb.get("unknownLeaseIds", []) + stops, hb)
            # a late report from x changes nothing
            late = x.report(lease_x, "LEASE_STATE_SUCCEEDED")
            if late.status == 200:
                self.assertEqual(late.body["lease"]["state"], "LEASE_STATE_EXPIRED", late)
            self.assertEqual(self.c.psql_value("SELECT state FROM leases WHERE id = %s"
                                               % lease_x["id"]), "7", "late report applied")
            self.assertNotEqual(get_job(self.c, tok, job["id"])["state"], "JOB_STATE_SUCCEEDED")
            self.assertOk(y.report(lease_y, "LEASE_STATE_RUNNING"))
            self.assertOk(y.report(lease_y, "LEASE_STATE_SUCCEEDED"))
            common.wait_for(lambda: get_job(self.c, tok, job["id"])["state"]
                            == "JOB_STATE_SUCCEEDED", timeout=10, what="job SUCCEEDED on y")
        finally:
            x.stop_heartbeats()
            if y:
                y.stop_heartbeats()


if __name__ == "__main__":
    import sys
    import run
    raise SystemExit(run.main(["-v", __name__] + sys.argv[1:]))
