"""NodeService with operator tokens: register (limits, bad input),
heartbeat, operator isolation, the lease path (AcquireLease long-poll ->
ReportLease RUNNING -> SUCCEEDED, idempotent by seq) and drain. gpumatchd runs
with --allow_unverified=true so that unprobed nodes take work. Jobs here pick
their node with a label selector, so tests do not steal each other's work."""

import json
import threading
import time

import common
from common import (ItCase, NodeAgent, get_job, job_spec, node_req, ok, submit,
                    wait_job_state)


def setUpModule():
    common.setup_module(__name__, ["--allow_unverified=true", "--cycle_interval_ms=200"])


def tearDownModule():
    common.teardown_module(__name__)


def rereg(ag):
    """A RegisterNode request that re-registers ag's node with its facts."""
    n = ag.node
    return {"nodeId": ag.id, "name": n["name"], "region": n["region"],
            "pricePerGpuHourMicros": n["pricePerGpuHourMicros"],
            "gpus": [dict(g) for g in n["gpus"]]}


class NodeTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.opa, cls.a = c.new_operator(node_limit=50)
        cls.opb, cls.b = c.new_operator(node_limit=50)
        cls.tenant, cls.t = c.new_tenant()
        cls.agents = []

    @classmethod
    def tearDownClass(cls):
        for ag in cls.agents:
            ag.stop_heartbeats()

    def ncall(self, method, body, token=None):
        return self.c.call("NodeService", method, body, token=token or self.a)

    def node(self, token=None, name=None, ready=True, **kw):
        ag = NodeAgent.register(self.c, token or self.a, node_req(name or self.c.unique("node"),
                                                                  **kw), ready=ready)
        self.agents.append(ag)
        return ag

    def test_register_node(self):
        name = self.c.unique("rig")
        req = node_req(name, gpus=2, region="us-east", price_micros=2500000,
                       labels={"pool": "a", "disk": "nvme"}, address="10.0.0.5:7000",
                       taints=[{"key": "spot", "value": "yes",
                                "effect": "TAINT_EFFECT_NO_SCHEDULE"}])
        b = self.assertOk(self.ncall("RegisterNode", req))
        self.assertIs(b.get("created"), True, b)
        n = b["node"]
        self.assertGreater(int(n["id"]), 0)
        self.assertEqual(n.get("operatorId"), self.opa["id"])
        self.assertEqual(n.get("name"), name)
        self.assertEqual(n.get("region"), "us-east")
        self.assertEqual(n.get("pricePerGpuHourMicros"), "2500000")
        self.assertEqual(n.get("labels"), {"pool": "a", "disk": "nvme"})
        self.assertEqual(n.get("state"), "NODE_STATE_REGISTERED")
        self.assertEqual((n.get("verification") or {}).get("status"),
                         "VERIFICATION_STATUS_UNVERIFIED")
        self.assertEqual([g.get("index", 0) for g in n.get("gpus", [])], [0, 1])
        self.assertEqual(n["gpus"][1].get("memoryMib"), 24576)
        self.assertFalse(n["gpus"][0].get("verified"), "only the probe sets verified")
        self.assertEqual(self.c.count("nodes", "id = %s" % n["id"]), 1)
        self.assertEqual(self.c.count("gpus", "node_id = %s" % n["id"]), 2)
        got = self.assertOk(self.ncall("GetNode", {"nodeId": n["id"]}))
        self.assertEqual(got["node"]["name"], name)

    def test_reregister_replaces_facts(self):
        ag = self.node(ready=False)
        req = node_req(ag.node["name"], gpus=1, price_micros=3000000, nodeId=ag.id)
        b = self.assertOk(self.ncall("RegisterNode", req))
        self.assertFalse(b.get("created", False), b)
        self.assertEqual(b["node"]["id"], ag.id)
        self.assertEqual(b["node"]["pricePerGpuHourMicros"], "3000000")

    def test_register_bad_input_writes_nothing(self):
        u = self.c.unique
        cases = [
            (node_req(u("n"), price_micros=0), "price_per_gpu_hour_micros"),
            (node_req(u("n"), price_micros=-1), "price_per_gpu_hour_micros"),
            (node_req(u("n"), region=""), "region"),
            (node_req("", gpus=1), "name"),
            (node_req("n" * 129), "name"),
            (node_req(u("n"), gpus=0), "gpus"),
            (dict(node_req(u("n")), bogusField=1), "bogusField"),
            (node_req(u("n"), gpus=2) | {"gpus": [common.gpu(0), common.gpu(0)]}, "index"),
            (node_req(u("n")) | {"gpus": [dict(common.gpu(0), memoryMib=0)]}, "memory_mib"),
        ]
        for req, field in cases:
            with self.subTest(case=json.dumps(req)[:120]):
                before = self.c.count("nodes")
                r = self.ncall("RegisterNode", req)
                self.assertError(r, "invalid_argument", field=field, msg=json.dumps(req)[:160])
                self.assertUnchanged("nodes", before)

    def test_duplicate_name_for_one_operator(self):
        ag = self.node(ready=False)
        before = self.c.count("nodes")
        r = self.ncall("RegisterNode", node_req(ag.node["name"]))
        self.assertError(r, ("already_exists", "failed_precondition"))
        self.assertUnchanged("nodes", before)
        # another operator may use the name
        self.node(token=self.b, name=ag.node["name"], ready=False)

    def test_node_limit(self):
        _, tok = self.c.new_operator(node_limit=2)
        for i in range(2):
            ok(self.ncall("RegisterNode", node_req(self.c.unique("lim")), token=tok))
        before = self.c.count("nodes")
        r = self.ncall("RegisterNode", node_req(self.c.unique("lim")), token=tok)
        self.assertError(r, ("resource_exhausted", "failed_precondition"))
        self.assertUnchanged("nodes", before)

    def test_node_limit_zero_allows_none(self):
        _, tok = self.c.new_operator(node_limit=0)
        r = self.ncall("RegisterNode", node_req(self.c.unique("zero")), token=tok)
        self.assertError(r, ("resource_exhausted", "failed_precondition"))

    def test_heartbeat_makes_node_ready(self):
        ag = self.node(ready=False)
        b = self.assertOk(ag.heartbeat())
        self.assertEqual(b.get("nodeState"), "NODE_STATE_READY", b)
        self.assertGreater(int(b.get("serverTimeUs", "0")), 0)
        self.assertGreater(b.get("nextHeartbeatMs", 0), 0)
        n = self.assertOk(self.ncall("GetNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(n["state"], "NODE_STATE_READY")
        self.assertGreater(int(n.get("lastHeartbeatUs", "0")), 0)

    def test_heartbeat_unknown_node(self):
        r = self.ncall("Heartbeat", {"nodeId": "987654321", "sentAtUs": str(common.now_us())})
        self.assertError(r, "not_found")

    def test_operator_isolation(self):
        ag = self.node()
        hb = dict(ag.heartbeat_req())
        for method, body in [("Heartbeat", hb),
                             ("DrainNode", {"nodeId": ag.id, "reason": "not yours"}),
                             ("GetNode", {"nodeId": ag.id}),
                             ("AcquireLease", {"nodeId": ag.id}),
                             ("RegisterNode", node_req(ag.node["name"], nodeId=ag.id))]:
            r = self.ncall(method, body, token=self.b)
            self.assertError(r, ("not_found", "permission_denied"), msg=method)
        n = self.assertOk(self.ncall("GetNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(n["state"], "NODE_STATE_READY")
        listed = self.assertOk(self.ncall("ListNodes", {"pageSize": 1000}, token=self.b))
        self.assertNotIn(ag.id, [x["id"] for x in listed.get("nodes", [])])

    def test_list_nodes_own_only(self):
        mine = {self.node(ready=False).id for _ in range(3)}
        listed = self.assertOk(self.ncall("ListNodes", {"pageSize": 1000}))
        ids = {x["id"] for x in listed.get("nodes", [])}
        self.assertTrue(mine <= ids)
        self.assertTrue(all(x["operatorId"] == self.opa["id"] for x in listed["nodes"]))

    def test_acquire_with_nothing_to_do_answers_empty(self):
        ag = self.node(labels={"pool": self.c.unique("idle")})
        t0 = time.monotonic()
        b = self.assertOk(ag.acquire(wait_ms=0))
        self.assertFalse(b.get("lease"), b)
        t0 = time.monotonic()
        b = self.assertOk(ag.acquire(wait_ms=700))
        self.assertFalse(b.get("lease"), b)
        self.assertGreaterEqual(time.monotonic() - t0, 0.6, "long-poll returned early")

    def test_lease_path_to_success(self):
        pool = self.c.unique("pool")
        ag = self.node(token=self.b, labels={"pool": pool})
        ag.start_heartbeats(0.5)
        got = {}

        def poll():
            try:
                got["b"] = ag.acquire_lease(within=25)
            except Exception as e:
                got["err"] = e
        th = threading.Thread(target=poll)
        th.start()
        time.sleep(0.5)  # the long-poll is waiting before the job exists
        job = submit(self.c, self.t, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
        th.join(30)
        if "err" in got:
            raise got["err"]
        b = got["b"]
        lease = b["lease"]
        self.assertEqual(lease.get("jobId"), job["id"])
        self.assertEqual(lease.get("nodeId"), ag.id)
        self.assertEqual(lease.get("gpuIndexes", [0]), [0])
        self.assertEqual(lease.get("state"), "LEASE_STATE_ACQUIRED")
        self.assertGreater(int(lease.get("deadlineUs", "0")), common.now_us())
        self.assertEqual(b.get("spec", {}).get("command"), ["sleep", "1"])
        self.assertEqual(b.get("tenantId"), self.tenant["id"])

        r = self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING", seq=1))
        self.assertEqual(r["lease"]["state"], "LEASE_STATE_RUNNING")
        self.assertFalse(r.get("duplicate", False))
        j = wait_job_state(self.c, self.t, job["id"], "JOB_STATE_RUNNING", timeout=5)
        self.assertEqual([p["nodeId"] for p in j.get("placement", [])], [ag.id])
        busy = self.assertOk(self.ncall("GetNode", {"nodeId": ag.id}, token=self.b))["node"]
        self.assertEqual(busy.get("busyGpuIndexes", [0]), [0])

        r = self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=2, exit_code=0))
        self.assertEqual(r["lease"]["state"], "LEASE_STATE_SUCCEEDED")
        self.assertFalse(r.get("duplicate", False))
        ended = r["lease"].get("endedAtUs")
        # the same report again: acknowledged, nothing changes
        again = self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=2, exit_code=0))
        self.assertIs(again.get("duplicate"), True, again)
        self.assertEqual(again["lease"]["state"], "LEASE_STATE_SUCCEEDED")
        self.assertEqual(again["lease"].get("endedAtUs"), ended)
        # an older seq: out of order, refused naming seq; nothing changes
        old = ag.report(lease, "LEASE_STATE_RUNNING", seq=1)
        self.assertError(old, "failed_precondition", field="seq")
        self.assertEqual(self.c.psql_value("SELECT last_report_seq FROM leases WHERE id = %s"
                                           % lease["id"]), "2")
        j = wait_job_state(self.c, self.t, job["id"], "JOB_STATE_SUCCEEDED", timeout=5)
        self.assertGreater(int(j.get("endedAtUs", "0")), 0)
        ag.stop_heartbeats()

    def test_failed_exit_code_fails_the_job(self):
        pool = self.c.unique("pool")
        ag = self.node(labels={"pool": pool})
        ag.start_heartbeats(0.5)
        job = submit(self.c, self.t, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
        lease = ag.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], job["id"])
        self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING"))
        self.assertOk(ag.report(lease, "LEASE_STATE_FAILED", exit_code=3, message="boom"))
        j = wait_job_state(self.c, self.t, job["id"], "JOB_STATE_FAILED", timeout=5)
        f = j.get("failure") or {}
        self.assertEqual(f.get("reason"), "FAILURE_REASON_EXIT_CODE", j)
        self.assertEqual(f.get("exitCode"), 3, j)
        ag.stop_heartbeats()

    def test_failed_gang_names_the_part_that_failed(self):
        # part 0 exits 3; part 1 is stopped because of it and ends by
        # SIGTERM after. The job's failure is part 0's, not the last report.
        pool = self.c.unique("pool")
        ags = [self.node(labels={"pool": pool}, region="gang-r") for _ in range(2)]
        for ag in ags:
            ag.start_heartbeats(0.3)
        try:
            job = submit(self.c, self.t, spec=job_spec(gpus=1, nodeCount=2,
                                                       labelSelector={"pool": pool}))
            leases = {}
            for ag in ags:
                lease = ag.acquire_lease(within=20)["lease"]
                self.assertEqual(lease["jobId"], job["id"])
                self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING"))
                leases[int(lease.get("gangIndex", 0))] = (ag, lease)
            ag0, l0 = leases[0]
            ag1, l1 = leases[1]
            self.assertOk(ag0.report(l0, "LEASE_STATE_FAILED", exit_code=3, message="oom"))
            # the peer is told to stop; it ends killed by SIGTERM
            stopped = common.wait_for(
                lambda: [c for c in self.assertOk(ag1.heartbeat()).get("commands", [])
                         if c.get("leaseId") == l1["id"]], timeout=10, what="stop command")
            self.assertTrue(stopped)
            self.assertOk(ag1.report(l1, "LEASE_STATE_FAILED", exit_code=0, termSignal=15,
                                     message="stopped"))
            j = wait_job_state(self.c, self.t, job["id"], "JOB_STATE_FAILED", timeout=10)
            f = j.get("failure") or {}
            self.assertEqual(f.get("reason"), "FAILURE_REASON_EXIT_CODE", j)
            self.assertEqual(f.get("exitCode"), 3, j)
            self.assertFalse(f.get("termSignal"), j)
            self.assertEqual(f.get("nodeId"), ag0.id, j)
            self.assertIn("gang part 0 of 2 failed: oom", f.get("message", ""), j)
        finally:
            for ag in ags:
                ag.stop_heartbeats()

    def test_report_bad_input(self):
        pool = self.c.unique("pool")
        ag = self.node(labels={"pool": pool})
        ag.start_heartbeats(0.5)
        job = submit(self.c, self.t, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
        lease = ag.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], job["id"])
        # stale fencing token
        r = ag.report(lease, "LEASE_STATE_RUNNING", seq=1,
                      fencing_token=str(int(lease.get("fencingToken", "0")) + 1000))
        self.assertError(r, ("failed_precondition", "aborted", "permission_denied"),
                         msg="a fencing token that is not the lease's")
        for bad, field in [({"state": "LEASE_STATE_ASSIGNED"}, "state"),
                           ({"seq": "0"}, "seq"),
                           ({"leaseId": "987654321"}, None)]:
            with self.subTest(case=json.dumps(bad)):
                body = {"nodeId": ag.id, "leaseId": lease["id"],
                        "fencingToken": lease.get("fencingToken", "0"), "seq": "5",
                        "state": "LEASE_STATE_RUNNING"}
                body.update(bad)
                r = ag.call("ReportLease", body)
                if field:
                    self.assertError(r, "invalid_argument", field=field, msg=json.dumps(bad))
                else:
                    self.assertError(r, "not_found", msg=json.dumps(bad))
        # nothing above moved the lease
        self.assertEqual(self.c.psql_value("SELECT last_report_seq FROM leases WHERE id = %s"
                                           % lease["id"]), "0")
        self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING", seq=1))
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=2))
        ag.stop_heartbeats()

    def test_unhealthy_gpu_takes_node_out_until_healthy(self):
        pool = self.c.unique("pool")
        ag = self.node(labels={"pool": pool}, gpus=2)
        hb = ag.heartbeat_req()
        hb["gpus"][1].update(status="GPU_HEALTH_STATUS_UNHEALTHY", xidErrors=[79],
                             eccUncorrected="2")
        self.assertOk(ag.call("Heartbeat", hb))
        got = self.assertOk(ag.call("GetNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(got.get("unhealthyGpuIndexes"), [1], got)
        self.assertIn("gpu 1 unhealthy: xid 79", got.get("healthMessage", ""))
        self.assertIn("2 uncorrectable ECC", got.get("healthMessage", ""))
        self.assertEqual(got.get("state"), "NODE_STATE_READY")  # state itself unchanged
        job = submit(self.c, self.t, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
        self.assertNotIn("lease", self.assertOk(ag.acquire(wait_ms=1500)))
        self.assertEqual(get_job(self.c, self.t, job["id"])["state"], "JOB_STATE_QUEUED")
        # healthy again: the node takes work again
        self.assertOk(ag.heartbeat())
        got = self.assertOk(ag.call("GetNode", {"nodeId": ag.id}))["node"]
        self.assertNotIn("unhealthyGpuIndexes", got)
        lease = ag.acquire_lease(within=20)["lease"]
        self.assertEqual(lease.get("jobId"), job["id"])

    def test_heartbeat_gpu_index_errors_name_the_field(self):
        ag = self.node(gpus=2)
        for gpus, want in (([{"index": 64}], "gpus[0].index"),
                           ([{"index": 1}, {"index": 1}], "gpus[1].index")):
            hb = dict(ag.heartbeat_req(), gpus=gpus)
            self.assertError(ag.call("Heartbeat", hb), "invalid_argument", field=want)

    def test_heartbeat_gpus_must_be_the_registered_ones(self):
        ag = self.node(gpus=2)
        self.assertOk(ag.heartbeat())
        row = "SELECT last_heartbeat_us, heartbeats_received, unhealthy_gpus, health_reason," \
              " state FROM nodes WHERE id = %s" % ag.id
        before = self.c.psql(row)
        good = ag.heartbeat_req()["gpus"]
        self.assertTrue(good[1]["uuid"], good)
        bad_gpu = {"status": "GPU_HEALTH_STATUS_UNHEALTHY", "xidErrors": [79]}
        cases = (
            # an index the node did not register (2 GPUs: 0 and 1)
            ([good[0], dict(bad_gpu, index=2)], "gpus[1].index", "has no GPU 2"),
            ([dict(bad_gpu, index=5)], "gpus[0].index", "indexes 0..1"),
            ([dict(bad_gpu, index=63)], "gpus[0].index", "has no GPU 63"),
            # the right index with another GPU's uuid, or an unknown one
            ([dict(good[0], uuid=good[1]["uuid"], **bad_gpu)], "gpus[0].uuid", "GPU 0"),
            ([good[0], dict(good[1], uuid="GPU-not-this-node", **bad_gpu)], "gpus[1].uuid",
             "GPU 1"),
        )
        for gpus, field, text in cases:
            with self.subTest(field=field, text=text):
                hb = dict(ag.heartbeat_req(), gpus=gpus)
                r = ag.call("Heartbeat", hb)
                self.assertError(r, "invalid_argument", field=field)
                self.assertIn(text, r.message)
        # nothing stored: no heartbeat counted, no GPU marked unhealthy
        self.assertEqual(self.c.psql(row), before)
        # an empty uuid is not checked; the registered ones pass
        hb = ag.heartbeat_req()
        hb["gpus"][0]["uuid"] = ""
        self.assertOk(ag.call("Heartbeat", hb))
        got = self.assertOk(ag.call("GetNode", {"nodeId": ag.id}))["node"]
        self.assertNotIn("unhealthyGpuIndexes", got)
        self.assertEqual(got.get("state"), "NODE_STATE_READY")

    def test_drain_node(self):
        pool = self.c.unique("pool")
        ag = self.node(labels={"pool": pool})
        b = self.assertOk(self.ncall("DrainNode", {"nodeId": ag.id, "reason": "maintenance"}))
        self.assertEqual(b["node"]["state"], "NODE_STATE_DRAINING")
        again = self.assertOk(self.ncall("DrainNode", {"nodeId": ag.id}))
        self.assertEqual(again["node"]["state"], "NODE_STATE_DRAINING")
        hb = self.assertOk(ag.heartbeat())
        self.assertEqual(hb.get("nodeState"), "NODE_STATE_DRAINING", "heartbeat must not undrain")
        # a job only this node could host is not placed on it
        job = submit(self.c, self.t, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
        b = self.assertOk(ag.acquire(wait_ms=1500))
        self.assertFalse(b.get("lease"), "a DRAINING node got work: %s" % b)
        self.assertEqual(get_job(self.c, self.t, job["id"])["state"], "JOB_STATE_QUEUED")
        # undrain: the job comes
        b = self.assertOk(self.ncall("UndrainNode", {"nodeId": ag.id}))
        self.assertEqual(b["node"]["state"], "NODE_STATE_READY")
        ag.start_heartbeats(0.5)
        lease = ag.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], job["id"])
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=1))
        ag.stop_heartbeats()

    def test_a_gpu_belongs_to_one_node(self):
        first = self.node(gpus=2)
        held = [g["uuid"] for g in first.node["gpus"]]
        nodes = self.c.count("nodes")
        # another node of the same operator, one GPU already registered
        req = node_req(self.c.unique("twin"), gpus=2)
        req["gpus"][1]["uuid"] = held[0]
        r = self.ncall("RegisterNode", req)
        self.assertError(r, "already_exists", field="gpus[1].uuid")
        self.assertIn("node %s" % first.id, r.message)
        # another operator's: told it is taken, not whose
        r = self.ncall("RegisterNode", req, token=self.b)
        self.assertError(r, "already_exists", field="gpus[1].uuid")
        self.assertIn("another operator", r.message)
        self.assertNotIn("node %s" % first.id, r.message)
        # one GPU listed twice in one request
        req = node_req(self.c.unique("dup"), gpus=2)
        req["gpus"][1]["uuid"] = req["gpus"][0]["uuid"]
        self.assertError(self.ncall("RegisterNode", req), "invalid_argument",
                         field="gpus[1].uuid")
        self.assertEqual(self.c.count("nodes"), nodes, "a refused registration wrote a node")
        # the node itself may re-register with its own GPUs, even moved
        again = rereg(first)
        again["gpus"][0]["uuid"], again["gpus"][1]["uuid"] = held[1], held[0]
        self.assertOk(self.ncall("RegisterNode", again))
        # an existing node cannot take another's GPU by updating its facts
        other = self.node(gpus=1)
        upd = rereg(other)
        upd["gpus"] = [dict(other.node["gpus"][0], uuid=held[1])]
        self.assertError(self.ncall("RegisterNode", upd), "already_exists", field="gpus[0].uuid")
        got = self.assertOk(self.ncall("GetNode", {"nodeId": other.id}))["node"]
        self.assertEqual(got["gpus"][0]["uuid"], other.node["gpus"][0]["uuid"])

    def test_retire_node_drains_then_disables(self):
        pool = self.c.unique("pool")
        ag = self.node(labels={"pool": pool}, gpus=1)
        uuids = [g["uuid"] for g in ag.node["gpus"]]
        ag.start_heartbeats(0.5)
        job = submit(self.c, self.t, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
        lease = ag.acquire_lease(within=20)["lease"]
        self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING", seq=1))
        # retired while a job runs: it drains
        n = self.assertOk(self.ncall("RetireNode", {"nodeId": ag.id,
                                                    "reason": "decommissioned"}))["node"]
        self.assertEqual(n["state"], "NODE_STATE_DRAINING")
        self.assertEqual(n["stateReason"], "retired: decommissioned")
        retired_at = n["retiredAtUs"]
        self.assertGreater(int(retired_at), 0)
        again = self.assertOk(self.ncall("RetireNode", {"nodeId": ag.id}))["node"]
        self.assertEqual((again["state"], again["retiredAtUs"], again["stateReason"]),
                         ("NODE_STATE_DRAINING", retired_at, "retired: decommissioned"))
        self.assertError(self.ncall("UndrainNode", {"nodeId": ag.id}), "failed_precondition",
                         field="nodeId")
        self.assertError(self.ncall("RetireNode", {"nodeId": ag.id}, token=self.b), "not_found")
        # no new work; its GPUs still belong to it
        job2 = submit(self.c, self.t, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
        self.assertFalse(self.assertOk(ag.acquire(wait_ms=1500)).get("lease"))
        self.assertEqual(get_job(self.c, self.t, job2["id"])["state"], "JOB_STATE_QUEUED")
        twin = node_req(self.c.unique("twin"), gpus=1)
        twin["gpus"][0]["uuid"] = uuids[0]
        self.assertError(self.ncall("RegisterNode", twin), "already_exists",
                         field="gpus[0].uuid")
        # the running job finishes; then the node is DISABLED
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=2))
        self.assertEqual(wait_job_state(self.c, self.t, job["id"], "JOB_STATE_SUCCEEDED")["state"],
                         "JOB_STATE_SUCCEEDED")

        def disabled():
            got = self.assertOk(self.ncall("GetNode", {"nodeId": ag.id}))["node"]
            return got if got["state"] == "NODE_STATE_DISABLED" else None
        got = common.wait_for(disabled, 30, what="the retired node to be disabled")
        ag.stop_heartbeats()
        self.assertEqual(got["retiredAtUs"], retired_at)
        # its agent is told, and cannot bring it back
        self.assertError(ag.heartbeat(), "failed_precondition", field="nodeId")
        self.assertIn("is retired", ag.heartbeat().message)
        r = self.ncall("RegisterNode", rereg(ag))
        self.assertError(r, "failed_precondition", field="nodeId")
        again = self.assertOk(self.ncall("RetireNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(again["state"], "NODE_STATE_DISABLED")
        # not in capacity: a rollup of a fresh minute has no row for it
        later = common.now_us() + 180 * 10**6
        self.c.psql("SELECT gm_rollup(%d, 0)" % later)
        minute = later - later % 60000000
        self.assertEqual(self.c.psql_value(
            "SELECT count(*) FROM rollup_node_minute WHERE node_id = %s AND minute_us = %d"
            % (ag.id, minute)), "0")
        live = self.node(gpus=1)
        self.c.psql("SELECT gm_rollup(%d, 0)" % later)
        self.assertEqual(self.c.psql_value(
            "SELECT gpus_total FROM rollup_node_minute WHERE node_id = %s AND minute_us = %d"
            % (live.id, minute)), "1")
        # its GPUs may now be registered by another node
        b = self.assertOk(self.ncall("RegisterNode", twin))
        self.assertEqual(b["node"]["gpus"][0]["uuid"], uuids[0])
        # the queued job stays queued (nothing else matches its pool)
        self.assertEqual(get_job(self.c, self.t, job2["id"])["state"], "JOB_STATE_QUEUED")
        self.assertOk(self.c.call("JobService", "CancelJob", {"jobId": job2["id"]},
                                  token=self.t))

    def test_retire_idle_node_by_admin(self):
        ag = self.node(gpus=1)
        n = self.assertOk(self.ncall("RetireNode", {"nodeId": ag.id},
                                     token=self.c.admin_token))["node"]
        self.assertEqual(n["state"], "NODE_STATE_DISABLED")
        self.assertEqual(n["stateReason"], "retired")
        self.assertError(self.ncall("RetireNode", {}), "invalid_argument", field="nodeId")
        self.assertError(self.ncall("RetireNode", {"nodeId": "987654321"}), "not_found")

    def test_drain_unknown_node(self):
        self.assertError(self.ncall("DrainNode", {"nodeId": "987654321"}), "not_found")


if __name__ == "__main__":
    import sys
    import run
    raise SystemExit(run.main(["-v", __name__] + sys.argv[1:]))
