"""SLOW: two gpumatchd replicas on one Postgres and one Redis. Exactly one
schedules (the Redis lock); work submitted to either runs; ExplainJob
answers on the replica that does not schedule (the leader answers through
Redis); when the leader is killed the other takes over and placement goes
on; a stale leader's fencing token is refused by Postgres."""

import time

import common
from common import ItCase, NodeAgent, job_spec, node_req, submit

SLOW = True


def setUpModule():
    common.setup_module(__name__, [
        "--allow_unverified=true",
        "--cycle_interval_ms=200",
        "--heartbeat_interval_ms=300",
        "--heartbeat_timeout_ms=30000",
    ])


def tearDownModule():
    common.teardown_module(__name__)


def wait_leader(replicas, timeout=20):
    """The one replica reporting gpumatch_scheduler_leader 1 (waits until
    exactly one does)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = [r for r in replicas if r.alive() and r.metric("gpumatch_scheduler_leader") == 1]
        if len(seen) == 1:
            return seen[0]
        time.sleep(0.2)
    raise AssertionError("no single leader within %ss (saw %d)" % (timeout, len(seen or [])))


class ReplicaTest(ItCase):
    def test_two_replicas_one_leader_failover_and_explain(self):
        a = self.c
        b = a.replica(name="b")
        leader = wait_leader([a, b])
        other = b if leader is a else a
        time.sleep(1.5)  # a second look: still exactly one
        self.assertIs(wait_leader([a, b]), leader)

        op, otok = a.new_operator(node_limit=10)
        tenant, ttok = a.new_tenant()
        pool = a.unique("pool")
        # the agent talks to the replica that does not schedule
        ag = NodeAgent.register(other, otok, node_req(a.unique("n"), gpus=2,
                                                      labels={"pool": pool}))
        ag.start_heartbeats(0.3)
        try:
            # submitted on the non-leader, placed by the leader, acquired
            # from the non-leader
            j1 = submit(other, ttok, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
            lease = ag.acquire_lease(within=20)["lease"]
            self.assertEqual(lease["jobId"], j1["id"])

            # a job that cannot fit: the non-leader explains it
            big = submit(other, ttok, spec=job_spec(gpus=8, labelSelector={"pool": pool}))
            t0 = time.monotonic()
            ex = self.assertOk(other.call("JobService", "ExplainJob", {"jobId": big["id"]},
                                          token=ttok))
            self.assertEqual(ex.get("state"), "JOB_STATE_QUEUED")
            expl = ex.get("explanation") or {}
            self.assertTrue(expl.get("counts"), ex)
            self.assertIn("summary", expl)
            # and says the same as the leader
            lex = self.assertOk(leader.call("JobService", "ExplainJob", {"jobId": big["id"]},
                                            token=ttok))
            self.assertEqual(lex["explanation"].get("counts"), expl.get("counts"))
            # tenant scoping holds on the forwarded path too
            _, other_tok = a.new_tenant()
            self.assertError(other.call("JobService", "ExplainJob", {"jobId": big["id"]},
                                        token=other_tok), "not_found")

            # the leader dies: the other replica takes over and places work
            old_fence = int(a.psql_value("SELECT token FROM scheduler_fence"))
            leader.kill9()
            ag.c = other
            new_leader = wait_leader([other], timeout=20)
            self.assertIs(new_leader, other)
            j2 = submit(other, ttok, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
            lease2 = ag.acquire_lease(within=20)["lease"]
            self.assertEqual(lease2["jobId"], j2["id"])
            # its placement carried a newer token, which Postgres now holds
            self.assertGreater(int(lease2["fencingToken"]), old_fence)
            self.assertGreater(int(a.psql_value("SELECT token FROM scheduler_fence")),
                               old_fence)
            # the old leader's token no longer passes Postgres's check
            with self.assertRaises(common.HarnessError) as cm:
                a.psql("SELECT gm_check_fence(%d)" % old_fence)
            self.assertIn("stale fencing token", str(cm.exception))
        finally:
            ag.stop_heartbeats()
