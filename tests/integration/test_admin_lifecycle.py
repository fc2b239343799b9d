"""AdminService lifecycle of tenants, operators and nodes: UpdateTenant and
UpdateOperator change only the fields their update_mask names; DisableTenant
stops the tenant's tokens at once and fails its queued jobs (and with
cancel_jobs stops its running ones); DisableOperator stops its tokens and
cordons its nodes so that they take no new work; Enable* undo the state (the
nodes stay cordoned); CordonNode/UncordonNode hold and release one node. Bad
input is invalid_argument naming the field with nothing written; only admins
may call any of it. gpumatchd runs with --allow_unverified=true; jobs pick
their node with a label selector so tests do not steal each other's work."""

import json
import time
import unittest

import common
from common import ItCase, NodeAgent, get_job, job_spec, node_req, ok, submit, wait_job_state


def setUpModule():
    common.setup_module(__name__, ["--allow_unverified=true", "--cycle_interval_ms=200"])


def tearDownModule():
    common.teardown_module(__name__)


def row(c, table, id_):
    """The whole row as text, to compare before and after a failed call."""
    return c.psql_value("SELECT x::text FROM %s x WHERE id = %s" % (table, id_))


class LifecycleCase(ItCase):
    def setUp(self):
        super().setUp()
        self.agents = []

    def tearDown(self):
        for ag in self.agents:
            ag.stop_heartbeats()
        super().tearDown()

    def node(self, token, pool=None, ready=True, **kw):
        labels = {"pool": pool} if pool else None
        ag = NodeAgent.register(self.c, token, node_req(self.c.unique("node"), labels=labels,
                                                        **kw), ready=ready)
        self.agents.append(ag)
        return ag

    def node_state(self, node_id):
        return self.c.psql_value("SELECT state FROM nodes WHERE id = %s" % node_id)

    def admin_node(self, node_id):
        return ok(self.c.call("NodeService", "GetNode", {"nodeId": node_id},
                              token=self.c.admin_token), "GetNode")["node"]

    def assert_not_placed(self, job_id, token, seconds=1.5):
        """Several scheduling cycles pass and the job gets no lease."""
        time.sleep(seconds)
        self.assertEqual(self.c.count("leases", "job_id = %s" % job_id), 0,
                         "job %s was placed" % job_id)
        self.assertEqual(get_job(self.c, token, job_id)["state"], "JOB_STATE_QUEUED")


# ---- tenants -----------------------------------------------------------------------------


class UpdateTenantTest(LifecycleCase):
    def test_changes_only_the_masked_fields(self):
        t = self.c.create_tenant(contact="old@example", fairShareWeight=5,
                                 creditLimitMicros="100", maxRunningGpus=4)
        time.sleep(0.01)
        b = self.assertOk(self.c.admin("UpdateTenant", {
            "tenant": {"id": t["id"], "name": "not-this-one", "fairShareWeight": 7,
                       "contact": "new@example", "creditLimitMicros": "999"},
            "updateMask": ["fair_share_weight", "contact"]}))
        u = b["tenant"]
        self.assertEqual(u["name"], t["name"], "name is not in the mask")
        self.assertEqual(u.get("fairShareWeight"), 7)
        self.assertEqual(u.get("contact"), "new@example")
        self.assertEqual(u.get("creditLimitMicros"), "100", "not in the mask")
        self.assertEqual(u.get("maxRunningGpus"), 4)
        self.assertEqual(u.get("state"), "TENANT_STATE_ACTIVE")
        self.assertGreater(int(u["updatedAtUs"]), int(t["updatedAtUs"]))
        self.assertEqual(u["createdAtUs"], t["createdAtUs"])
        self.assertEqual(self.c.psql("SELECT name, fair_share_weight, contact,"
                                     " credit_limit_micros FROM tenants WHERE id = %s"
                                     % t["id"]),
                         [[t["name"], "7", "new@example", "100"]])
        got = self.assertOk(self.c.admin("GetTenant", {"tenantId": t["id"]}))["tenant"]
        self.assertEqual(got, u)

    def test_every_updatable_field_binary(self):
        t = self.c.create_tenant()
        name = self.c.unique("renamed")
        b = self.assertOk(self.c.admin("UpdateTenant", {
            "tenant": {"id": t["id"], "name": name, "fairShareWeight": 1000000,
                       "creditLimitMicros": "0", "maxRunningGpus": 0, "contact": ""},
            "updateMask": ["name", "fair_share_weight", "credit_limit_micros",
                           "max_running_gpus", "contact", "name"]}, binary=True))
        self.assertEqual(b["tenant"]["name"], name)
        self.assertEqual(b["tenant"].get("fairShareWeight"), 1000000)
        self.assertEqual(self.c.count("tenants", "name = '%s'" % name), 1)

    def test_bad_input_writes_nothing(self):
        t = self.c.create_tenant(contact="keep@example")
        other = self.c.create_tenant()
        tid = t["id"]
        cases = [
            ({}, "invalid_argument", "tenant"),
            ({"tenant": {"name": "x"}, "updateMask": ["name"]}, "invalid_argument", "tenant.id"),
            ({"tenant": {"id": tid, "contact": "x"}}, "invalid_argument", "update_mask"),
            ({"tenant": {"id": tid}, "updateMask": []}, "invalid_argument", "update_mask"),
            ({"tenant": {"id": tid}, "updateMask": ["bogus"]}, "invalid_argument",
             "update_mask"),
            ({"tenant": {"id": tid}, "updateMask": ["contact", "balance_micros"]},
             "invalid_argument", "update_mask"),
            ({"tenant": {"id": tid}, "updateMask": ["state"]}, "invalid_argument",
             "update_mask"),
            ({"tenant": {"id": tid, "fairShareWeight": 3}, "updateMask": ["fairShareWeight"]},
             "invalid_argument", "update_mask"),
            ({"tenant": {"id": tid}, "updateMask": ["fair_share_weight"]},
             "invalid_argument", "fair_share_weight"),
            ({"tenant": {"id": tid, "fairShareWeight": 1000001},
              "updateMask": ["fair_share_weight"]}, "invalid_argument", "fair_share_weight"),
            ({"tenant": {"id": tid, "creditLimitMicros": "-1"},
              "updateMask": ["contact", "credit_limit_micros"]},
             "invalid_argument", "credit_limit_micros"),
            ({"tenant": {"id": tid, "maxRunningGpus": 4294967295},
              "updateMask": ["max_running_gpus"]}, "invalid_argument", "max_running_gpus"),
            ({"tenant": {"id": tid, "name": ""}, "updateMask": ["name"]},
             "invalid_argument", "name"),
            ({"tenant": {"id": tid, "name": "has space"}, "updateMask": ["name"]},
             "invalid_argument", "name"),
            ({"tenant": {"id": tid, "contact": "a\u0001b"}, "updateMask": ["contact"]},
             "invalid_argument", "contact"),
            ({"tenant": {"id": tid, "contact": "c" * 257}, "updateMask": ["contact"]},
             "invalid_argument", "contact"),
            ({"tenant": {"id": tid, "name": other["name"]}, "updateMask": ["name"]},
             "already_exists", "name"),
            ({"tenant": {"id": "987654321", "contact": "x"}, "updateMask": ["contact"]},
             "not_found", None),
        ]
        for req, code, field in cases:
            with self.subTest(case=json.dumps(req)[:120]):
                before, n = row(self.c, "tenants", tid), self.c.count("tenants")
                self.assertError(self.c.admin("UpdateTenant", req), code, field=field,
                                 msg=json.dumps(req)[:120])
                self.assertEqual(row(self.c, "tenants", tid), before)
                self.assertUnchanged("tenants", n)


class DisableTenantTest(LifecycleCase):
    def test_disable_stops_tokens_at_once_and_enable_restores_them(self):
        t, tok = self.c.new_tenant()
        self.assertOk(self.c.call("JobService", "ListJobs", {}, token=tok))
        b = self.assertOk(self.c.admin("DisableTenant", {"tenantId": t["id"],
                                                         "reason": "unpaid invoice"}))
        d = b["tenant"]
        self.assertEqual(d.get("state"), "TENANT_STATE_DISABLED")
        self.assertEqual(d.get("disabledReason"), "unpaid invoice")
        self.assertEqual(b.get("tokensRevoked", 0), 0, "tokens are suspended, not revoked")
        # at once: the very next call
        r = self.c.call("JobService", "ListJobs", {}, token=tok)
        self.assertError(r, "unauthenticated")
        self.assertEqual(r.status, 401)
        self.assertEqual(self.c.count("api_tokens", "tenant_id = %s AND revoked_at_us <> 0"
                                      % t["id"]), 0)
        # idempotent: the same state, the same time
        again = self.assertOk(self.c.admin("DisableTenant", {"tenantId": t["id"],
                                                             "reason": "unpaid invoice"}))
        self.assertEqual(again["tenant"], d)
        listed = self.assertOk(self.c.admin("ListTenants", {
            "states": ["TENANT_STATE_DISABLED"], "pageSize": 1000}))
        self.assertIn(t["id"], [x["id"] for x in listed.get("tenants", [])])
        # enable: the same token works again, the reason is gone
        e = self.assertOk(self.c.admin("EnableTenant", {"tenantId": t["id"]}))["tenant"]
        self.assertEqual(e.get("state"), "TENANT_STATE_ACTIVE")
        self.assertFalse(e.get("disabledReason"), e)
        self.assertOk(self.c.call("JobService", "ListJobs", {}, token=tok))
        e2 = self.assertOk(self.c.admin("EnableTenant", {"tenantId": t["id"]}))["tenant"]
        self.assertEqual(e2, e, "enable is idempotent")

    def test_disable_fails_queued_jobs_only_of_that_tenant(self):
        t, tok = self.c.new_tenant()
        _, other = self.c.new_tenant()
        nowhere = {"pool": self.c.unique("nowhere")}
        jobs = [submit(self.c, tok, spec=job_spec(labelSelector=nowhere)) for _ in range(3)]
        kept = submit(self.c, other, spec=job_spec(labelSelector=nowhere))
        for j in jobs + [kept]:
            common.wait_for(lambda: self.c.redis_cli("ZSCORE", "{gm}:pending", j["id"]) != "",
                            timeout=10, what="job %s in the Redis queue" % j["id"])
        b = self.assertOk(self.c.admin("DisableTenant", {"tenantId": t["id"],
                                                         "reason": "fraud"}))
        self.assertEqual(b.get("jobsCancelled", 0), 3, b)
        for j in jobs:
            self.assertEqual(self.c.psql("SELECT state, failure_reason, ended_at_us > 0"
                                         " FROM jobs WHERE id = %s" % j["id"]),
                             [["5", "9", "t"]])
            got = get_job(self.c, self.c.admin_token, j["id"])
            self.assertEqual(got["state"], "JOB_STATE_FAILED")
            self.assertEqual((got.get("failure") or {}).get("reason"),
                             "FAILURE_REASON_TENANT_DISABLED", got)
            self.assertEqual(self.c.count("job_events", "job_id = %s AND kind = 'ended'"
                                          % j["id"]), 1)
            # the dequeue row reached Redis
            common.wait_for(lambda: self.c.redis_cli("ZSCORE", "{gm}:pending", j["id"]) == "",
                            timeout=10, what="job %s out of the Redis queue" % j["id"])
        self.assertEqual(get_job(self.c, other, kept["id"])["state"], "JOB_STATE_QUEUED")
        self.assertNotEqual(self.c.redis_cli("ZSCORE", "{gm}:pending", kept["id"]), "")
        # the second time finds nothing more to fail
        again = self.assertOk(self.c.admin("DisableTenant", {"tenantId": t["id"],
                                                             "reason": "fraud"}))
        self.assertEqual(again.get("jobsCancelled", 0), 0, again)
        # enabling does not bring failed jobs back
        self.assertOk(self.c.admin("EnableTenant", {"tenantId": t["id"]}))
        self.assertEqual(self.c.count("jobs", "tenant_id = %s AND state = 5" % t["id"]), 3)

    def test_running_jobs_keep_running_unless_cancel_jobs(self):
        op, otok = self.c.new_operator()
        t, tok = self.c.new_tenant()
        pool = self.c.unique("pool")
        ag = self.node(otok, pool=pool)
        ag.start_heartbeats(0.5)
        running = submit(self.c, tok, spec=job_spec(labelSelector={"pool": pool}))
        lease = ag.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], running["id"])
        self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING"))
        wait_job_state(self.c, tok, running["id"], "JOB_STATE_RUNNING", timeout=5)
        queued = submit(self.c, tok, spec=job_spec(labelSelector={"pool": pool + "-none"}))

        b = self.assertOk(self.c.admin("DisableTenant", {"tenantId": t["id"]}))
        self.assertEqual(b.get("jobsCancelled", 0), 1, "only the queued one: %s" % b)
        adm = self.c.admin_token
        self.assertEqual(get_job(self.c, adm, queued["id"])["state"], "JOB_STATE_FAILED")
        self.assertEqual(get_job(self.c, adm, running["id"])["state"], "JOB_STATE_RUNNING")

        b = self.assertOk(self.c.admin("DisableTenant", {"tenantId": t["id"],
                                                         "cancelJobs": True}))
        self.assertEqual(b.get("jobsCancelled", 0), 1, "the running one now: %s" % b)
        self.assertEqual(get_job(self.c, adm, running["id"])["state"], "JOB_STATE_STOPPING")
        hb = self.assertOk(ag.heartbeat())
        stops = [x for x in hb.get("commands", []) if x.get("leaseId") == lease["id"]]
        self.assertEqual([x.get("action") for x in stops], ["LEASE_ACTION_STOP"], hb)
        self.assertOk(ag.report(lease, "LEASE_STATE_FAILED", exit_code=143))
        wait_job_state(self.c, adm, running["id"], "JOB_STATE_CANCELLED", timeout=10)
        self.assertEqual(self.c.psql_value("SELECT stop_reason FROM leases WHERE id = %s"
                                           % lease["id"]), "tenant disabled")

    def test_bad_input_writes_nothing(self):
        t = self.c.create_tenant()
        for method, req, code, field in [
                ("DisableTenant", {}, "invalid_argument", "tenant_id"),
                ("DisableTenant", {"tenantId": t["id"], "reason": "x\u0007"},
                 "invalid_argument", "reason"),
                ("DisableTenant", {"tenantId": t["id"], "reason": "r" * 513},
                 "invalid_argument", "reason"),
                ("DisableTenant", {"tenantId": "987654321"}, "not_found", "tenant_id"),
                ("EnableTenant", {}, "invalid_argument", "tenant_id"),
                ("EnableTenant", {"tenantId": "987654321"}, "not_found", "tenant_id")]:
            with self.subTest(method=method, req=json.dumps(req)[:80]):
                before, n = row(self.c, "tenants", t["id"]), self.c.count("tenants")
                self.assertError(self.c.admin(method, req), code, field=field)
                self.assertEqual(row(self.c, "tenants", t["id"]), before)
                self.assertUnchanged("tenants", n)


# ---- operators ---------------------------------------------------------------------------


class UpdateOperatorTest(LifecycleCase):
    def test_changes_only_the_masked_fields(self):
        o = self.c.create_operator(node_limit=3, contact="farm@example")
        b = self.assertOk(self.c.admin("UpdateOperator", {
            "operatorRecord": {"id": o["id"], "nodeLimit": 10, "contact": "ignored",
                               "name": "ignored"},
            "updateMask": ["node_limit"]}))
        u = b["operatorRecord"]
        self.assertEqual(u.get("nodeLimit"), 10)
        self.assertEqual(u.get("contact"), "farm@example")
        self.assertEqual(u["name"], o["name"])
        name = self.c.unique("farm")
        u = self.assertOk(self.c.admin("UpdateOperator", {
            "operatorRecord": {"id": o["id"], "name": name, "contact": ""},
            "updateMask": ["name", "contact"]}))["operatorRecord"]
        self.assertEqual(u["name"], name)
        self.assertFalse(u.get("contact"))
        self.assertEqual(u.get("nodeLimit"), 10)
        self.assertEqual(self.c.psql("SELECT name, node_limit, contact FROM operators"
                                     " WHERE id = %s" % o["id"]), [[name, "10", ""]])

    def test_limit_below_node_count_stops_new_registrations_only(self):
        o, otok = self.c.new_operator(node_limit=5)
        for _ in range(2):
            self.node(otok, ready=False)
        u = self.assertOk(self.c.admin("UpdateOperator", {
            "operatorRecord": {"id": o["id"], "nodeLimit": 1},
            "updateMask": ["node_limit"]}))["operatorRecord"]
        self.assertEqual(u.get("nodeCount"), 2)
        self.assertEqual(self.c.count("nodes", "operator_id = %s" % o["id"]), 2)
        r = self.c.call("NodeService", "RegisterNode", node_req(self.c.unique("n")), token=otok)
        self.assertError(r, ("resource_exhausted", "failed_precondition"))

    def test_bad_input_writes_nothing(self):
        o = self.c.create_operator()
        other = self.c.create_operator()
        oid = o["id"]
        cases = [
            ({}, "invalid_argument", "operator_record"),
            ({"operatorRecord": {"nodeLimit": 1}, "updateMask": ["node_limit"]},
             "invalid_argument", "operator_record.id"),
            ({"operatorRecord": {"id": oid}}, "invalid_argument", "update_mask"),
            ({"operatorRecord": {"id": oid}, "updateMask": ["node_count"]},
             "invalid_argument", "update_mask"),
            ({"operatorRecord": {"id": oid}, "updateMask": ["earnings_micros"]},
             "invalid_argument", "update_mask"),
            ({"operatorRecord": {"id": oid}, "updateMask": ["nope"]},
             "invalid_argument", "update_mask"),
            ({"operatorRecord": {"id": oid, "name": "bad/name"}, "updateMask": ["name"]},
             "invalid_argument", "name"),
            ({"operatorRecord": {"id": oid, "nodeLimit": 4294967295},
              "updateMask": ["node_limit"]}, "invalid_argument", "node_limit"),
            ({"operatorRecord": {"id": oid, "contact": "\u0000"}, "updateMask": ["contact"]},
             "invalid_argument", "contact"),
            ({"operatorRecord": {"id": oid, "name": other["name"]}, "updateMask": ["name"]},
             "already_exists", "name"),
            ({"operatorRecord": {"id": "987654321", "nodeLimit": 1},
              "updateMask": ["node_limit"]}, "not_found", None),
        ]
        for req, code, field in cases:
            with self.subTest(case=json.dumps(req)[:120]):
                before, n = row(self.c, "operators", oid), self.c.count("operators")
                self.assertError(self.c.admin("UpdateOperator", req), code, field=field,
                                 msg=json.dumps(req)[:120])
                self.assertEqual(row(self.c, "operators", oid), before)
                self.assertUnchanged("operators", n)


class DisableOperatorTest(LifecycleCase):
    def test_disable_cordons_nodes_stops_tokens_and_work(self):
        o, otok = self.c.new_operator()
        _, tok = self.c.new_tenant()
        pool = self.c.unique("pool")
        ready = self.node(otok, pool=pool)
        draining = self.node(otok)
        self.assertOk(draining.call("DrainNode", {"nodeId": draining.id}))
        registered = self.node(otok, ready=False)
        before_other = [(n.id, self.node_state(n.id)) for n in
                        [self.node(self.c.new_operator()[1])]]

        b = self.assertOk(self.c.admin("DisableOperator", {"operatorId": o["id"],
                                                           "reason": "audit"}))
        d = b["operatorRecord"]
        self.assertEqual(d.get("state"), "OPERATOR_STATE_DISABLED")
        self.assertEqual(d.get("disabledReason"), "audit")
        self.assertEqual(b.get("nodesDrained", 0), 3, b)
        self.assertEqual(b.get("tokensRevoked", 0), 0)
        # tokens: at once
        r = self.c.call("NodeService", "ListNodes", {}, token=otok)
        self.assertError(r, "unauthenticated")
        self.assertError(ready.heartbeat(), "unauthenticated")
        # (the never-heartbeated one is left out: the janitor takes it for
        # LOST within a second, see test_never_heartbeated_cordoned_node_...)
        for ag in (ready, draining):
            n = self.admin_node(ag.id)
            self.assertEqual(n["state"], "NODE_STATE_CORDONED", n)
            self.assertEqual(n.get("stateReason"), "operator disabled: audit")
        self.assertEqual([(i, self.node_state(i)) for i, _ in before_other], before_other,
                         "another operator's node changed")
        # no new work lands on its nodes
        job = submit(self.c, tok, spec=job_spec(labelSelector={"pool": pool}))
        self.assert_not_placed(job["id"], tok)
        # idempotent
        again = self.assertOk(self.c.admin("DisableOperator", {"operatorId": o["id"],
                                                               "reason": "audit"}))
        self.assertEqual(again.get("nodesDrained", 0), 0)
        self.assertEqual(again["operatorRecord"]["updatedAtUs"], d["updatedAtUs"])
        # uncordon is refused while the operator is disabled
        before = row(self.c, "nodes", ready.id)
        self.assertError(self.c.admin("UncordonNode", {"nodeId": ready.id}),
                         "failed_precondition", field="node_id")
        self.assertEqual(row(self.c, "nodes", ready.id), before)

        # enable: tokens work, the nodes stay cordoned until an admin says
        e = self.assertOk(self.c.admin("EnableOperator", {"operatorId": o["id"]}))
        self.assertEqual(e["operatorRecord"].get("state"), "OPERATOR_STATE_ACTIVE")
        self.assertFalse(e["operatorRecord"].get("disabledReason"))
        hb = self.assertOk(ready.heartbeat())
        self.assertEqual(hb.get("nodeState"), "NODE_STATE_CORDONED")
        self.assert_not_placed(job["id"], tok, seconds=1.0)
        u = self.assertOk(self.c.admin("UncordonNode", {"nodeId": ready.id}))["node"]
        self.assertEqual(u["state"], "NODE_STATE_READY")
        ready.start_heartbeats(0.5)
        lease = ready.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], job["id"])
        self.assertOk(ready.report(lease, "LEASE_STATE_SUCCEEDED", seq=1))
        self.assertEqual(self.admin_node(draining.id)["state"], "NODE_STATE_CORDONED")

    def test_bad_input_writes_nothing(self):
        o = self.c.create_operator()
        for method, req, code, field in [
                ("DisableOperator", {}, "invalid_argument", "operator_id"),
                ("DisableOperator", {"operatorId": o["id"], "reason": "\u001b[31m"},
                 "invalid_argument", "reason"),
                ("DisableOperator", {"operatorId": "987654321"}, "not_found", "operator_id"),
                ("EnableOperator", {}, "invalid_argument", "operator_id"),
                ("EnableOperator", {"operatorId": "987654321"}, "not_found", "operator_id")]:
            with self.subTest(method=method, req=json.dumps(req)[:80]):
                before, n = row(self.c, "operators", o["id"]), self.c.count("operators")
                self.assertError(self.c.admin(method, req), code, field=field)
                self.assertEqual(row(self.c, "operators", o["id"]), before)
                self.assertUnchanged("operators", n)


# ---- nodes -------------------------------------------------------------------------------


class CordonTest(LifecycleCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.op, cls.otok = c.new_operator()
        cls.tenant, cls.tok = c.new_tenant()

    def test_cordon_holds_work_and_uncordon_releases_it(self):
        pool = self.c.unique("pool")
        ag = self.node(self.otok, pool=pool)
        b = self.assertOk(self.c.admin("CordonNode", {"nodeId": ag.id, "reason": "bad fan"}))
        n = b["node"]
        self.assertEqual(n["id"], ag.id)
        self.assertEqual(n["state"], "NODE_STATE_CORDONED")
        self.assertEqual(n.get("stateReason"), "cordoned: bad fan")
        self.assertEqual(n.get("gpus", [{}])[0].get("model"), "RTX-3090-24GB", "a whole Node")
        changed = n["stateChangedAtUs"]
        hb = self.assertOk(ag.heartbeat())
        self.assertEqual(hb.get("nodeState"), "NODE_STATE_CORDONED", "heartbeat must not uncordon")
        job = submit(self.c, self.tok, spec=job_spec(labelSelector={"pool": pool}))
        b = self.assertOk(ag.acquire(wait_ms=1500))
        self.assertFalse(b.get("lease"), "a CORDONED node got work: %s" % b)
        self.assert_not_placed(job["id"], self.tok, seconds=0.5)
        # again: the same state since the same time, the new reason
        n2 = self.assertOk(self.c.admin("CordonNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(n2["state"], "NODE_STATE_CORDONED")
        self.assertEqual(n2["stateChangedAtUs"], changed)
        self.assertEqual(n2.get("stateReason"), "cordoned")
        # the operator cannot undo an admin hold with UndrainNode
        self.assertOk(ag.call("UndrainNode", {"nodeId": ag.id}))
        self.assertEqual(self.node_state(ag.id), "4")
        u = self.assertOk(self.c.admin("UncordonNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(u["state"], "NODE_STATE_READY")
        ag.start_heartbeats(0.5)
        lease = ag.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], job["id"])
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=1))
        # uncordoning a node that is not cordoned changes nothing (with no
        # heartbeat in between, which would)
        ag.stop_heartbeats()
        before = row(self.c, "nodes", ag.id)
        u = self.assertOk(self.c.admin("UncordonNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(u["state"], "NODE_STATE_READY")
        self.assertEqual(row(self.c, "nodes", ag.id), before)

    def test_registered_node_goes_back_to_registered(self):
        ag = self.node(self.otok, ready=False)
        n = self.assertOk(self.c.admin("CordonNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(n["state"], "NODE_STATE_CORDONED")
        u = self.assertOk(self.c.admin("UncordonNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(u["state"], "NODE_STATE_REGISTERED", "it never heartbeated")
        self.assertEqual(u.get("stateReason"), "uncordoned")
        self.assertEqual(self.assertOk(ag.heartbeat()).get("nodeState"), "NODE_STATE_READY")

    def test_never_heartbeated_cordoned_node_stays_cordoned(self):
        """A cordon is an admin hold: the janitor never marks a node that has
        not heartbeated yet LOST, and a LOST node that was cordoned comes
        back CORDONED, not READY."""
        ag = self.node(self.otok, ready=False)
        self.assertOk(self.c.admin("CordonNode", {"nodeId": ag.id}))
        time.sleep(1.5)
        self.assertEqual(self.node_state(ag.id), "4")
        self.assertEqual(self.assertOk(ag.heartbeat()).get("nodeState"), "NODE_STATE_CORDONED")

    def test_cordoned_node_lost_and_back_stays_cordoned(self):
        ag = self.node(self.otok)
        self.assertOk(self.c.admin("CordonNode", {"nodeId": ag.id, "reason": "maintenance"}))
        # the agent goes silent past the heartbeat timeout
        self.c.psql("UPDATE nodes SET last_heartbeat_us = 1 WHERE id = %s" % ag.id)
        # (once the leader has heard for a whole heartbeat timeout since it
        # gained leadership: generous bound)
        deadline = time.time() + 90
        while self.node_state(ag.id) != "5" and time.time() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.node_state(ag.id), "5", "the janitor marks a silent node LOST")
        self.assertEqual(self.assertOk(ag.heartbeat()).get("nodeState"), "NODE_STATE_CORDONED")
        n = self.assertOk(self.c.admin("UncordonNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(n["state"], "NODE_STATE_READY")

    def test_draining_node_can_be_cordoned(self):
        ag = self.node(self.otok)
        self.assertOk(ag.call("DrainNode", {"nodeId": ag.id}))
        n = self.assertOk(self.c.admin("CordonNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(n["state"], "NODE_STATE_CORDONED")
        # and uncordoning makes it READY: the hold replaced the drain
        n = self.assertOk(self.c.admin("UncordonNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(n["state"], "NODE_STATE_READY")

    def test_bad_input_writes_nothing(self):
        ag = self.node(self.otok)
        gone = self.node(self.otok)
        self.c.psql("UPDATE nodes SET state = 6 WHERE id = %s" % gone.id)
        cases = [
            ("CordonNode", {}, "invalid_argument", "node_id"),
            ("CordonNode", {"nodeId": ag.id, "reason": "x" * 513}, "invalid_argument",
             "reason"),
            ("CordonNode", {"nodeId": ag.id, "reason": "tab\there"}, "invalid_argument",
             "reason"),
            ("CordonNode", {"nodeId": "987654321"}, "not_found", "node_id"),
            ("CordonNode", {"nodeId": gone.id}, "failed_precondition", "node_id"),
            ("UncordonNode", {}, "invalid_argument", "node_id"),
            ("UncordonNode", {"nodeId": "987654321"}, "not_found", "node_id"),
            ("UncordonNode", {"nodeId": gone.id}, "failed_precondition", "node_id"),
        ]
        for method, req, code, field in cases:
            with self.subTest(method=method, req=json.dumps(req)[:80]):
                before = (row(self.c, "nodes", ag.id), row(self.c, "nodes", gone.id))
                self.assertError(self.c.admin(method, req), code, field=field)
                self.assertEqual((row(self.c, "nodes", ag.id), row(self.c, "nodes", gone.id)),
                                 before)


# ---- who may call -----------------------------------------------------------------------


class AuthorizationTest(LifecycleCase):
    def test_only_admins(self):
        t, ttok = self.c.new_tenant()
        o, otok = self.c.new_operator()
        ag = self.node(otok)
        calls = [
            ("UpdateTenant", {"tenant": {"id": t["id"], "contact": "x"},
                              "updateMask": ["contact"]}),
            ("DisableTenant", {"tenantId": t["id"]}),
            ("EnableTenant", {"tenantId": t["id"]}),
            ("UpdateOperator", {"operatorRecord": {"id": o["id"], "nodeLimit": 1},
                                "updateMask": ["node_limit"]}),
            ("DisableOperator", {"operatorId": o["id"]}),
            ("EnableOperator", {"operatorId": o["id"]}),
            ("CordonNode", {"nodeId": ag.id}),
            ("UncordonNode", {"nodeId": ag.id}),
        ]
        before = (row(self.c, "tenants", t["id"]), row(self.c, "operators", o["id"]),
                  row(self.c, "nodes", ag.id))
        for method, body in calls:
            for who, tok, code in [("tenant", ttok, "permission_denied"),
                                   ("operator", otok, "permission_denied"),
                                   ("nobody", None, "unauthenticated")]:
                with self.subTest(method=method, who=who):
                    r = self.c.call("AdminService", method, body, token=tok)
                    self.assertError(r, code)
        self.assertEqual((row(self.c, "tenants", t["id"]), row(self.c, "operators", o["id"]),
                          row(self.c, "nodes", ag.id)), before)


if __name__ == "__main__":
    import sys
    import run
    raise SystemExit(run.main(["-v", __name__] + sys.argv[1:]))
