"""The lease handshake and what the server does when it cannot hear.

A lease is OFFERED by AcquireLease and only runs (and is billed) once the
agent confirms it (ConfirmLease or its first RUNNING report); an offer not
confirmed within lease_offer_timeout_ms is withdrawn: the job goes back to
the queue, unbilled, with no attempt counted. Heartbeats reconcile the
leases the server believes live with those the agent runs. Bad
confirmations, reports and heartbeats are refused naming the field and
change nothing. After gpumatchd or Postgres could not hear heartbeats, no
node is declared lost before a full timeout of hearing again. Reports bill
to the agent's exit time. A new leader's fencing token is above every
token Postgres has seen, whatever Redis remembers. Outcomes only: every
wait is bounded by a generous timeout, nothing asserts a duration."""

import os
import signal
import time

import common
from common import ItCase, NodeAgent, get_job, job_spec, node_req, submit, wait_job_state

SLOW = True
OWN_SUITE = True  # meson test "lease_handshake"

FLAGS = [
    "--allow_unverified=true",
    "--cycle_interval_ms=200",
    "--heartbeat_interval_ms=300",
    "--heartbeat_timeout_ms=3000",
    "--lease_offer_timeout_ms=3000",
    "--request_timeout_ms=30000",
]


def setUpModule():
    common.setup_module(__name__, FLAGS)


def tearDownModule():
    common.teardown_module(__name__)


def q1(c, sql):
    return c.psql_value(sql)


def lease_row(c, lease_id):
    r = c.psql("SELECT state, started_at_us, offered_at_us, billed_end_us, billed_gpu_seconds,"
               " ended_at_us FROM leases WHERE id = %s" % lease_id)[0]
    return {"state": int(r[0]), "started": int(r[1]), "offered": int(r[2]),
            "billed_end": int(r[3]), "billed_secs": int(r[4]), "ended": int(r[5])}


class HandshakeTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.op, cls.otok = c.new_operator(node_limit=100)
        cls.op2, cls.otok2 = c.new_operator(node_limit=100)
        cls.tenant, cls.ttok = c.new_tenant()
        cls.agents = []

    @classmethod
    def tearDownClass(cls):
        for ag in cls.agents:
            ag.stop_heartbeats()

    def setUp(self):
        super().setUp()
        if not self.c.alive():
            self.c.start_gpumatchd()

    def node(self, token=None, pool=None):
        pool = pool or self.c.unique("pool")
        ag = NodeAgent.register(self.c, token or self.otok,
                                node_req(self.c.unique("node"), labels={"pool": pool}))
        ag.pool = pool
        self.agents.append(ag)
        return ag

    def submit_to(self, ag, **spec):
        s = job_spec(gpus=1, labelSelector={"pool": ag.pool})
        s.update(spec)
        return submit(self.c, self.ttok, spec=s)

    def offer(self, ag, within=30.0):
        """Long-polls for a lease WITHOUT listing it as running (an agent
        that took the offer and then went silent about it)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            b = self.assertOk(ag.acquire(wait_ms=2000))
            if b.get("lease"):
                return b["lease"]
        raise AssertionError("no lease offered to node %s" % ag.id)

    def confirm(self, ag, lease, **over):
        body = {"nodeId": ag.id, "leaseId": lease["id"],
                "fencingToken": lease.get("fencingToken", "0")}
        body.update(over)
        return ag.call("ConfirmLease", body)

    def wait_lease_state(self, lease_id, state, timeout=30):
        common.wait_for(lambda: lease_row(self.c, lease_id)["state"] == state, timeout,
                        what="lease %s in state %d" % (lease_id, state))

    # ---- the handshake ----

    def test_offer_not_confirmed_is_withdrawn_unbilled_and_requeued(self):
        ag = self.node()
        ag.start_heartbeats(0.3)
        job = self.submit_to(ag)
        lease = self.offer(ag)
        self.assertEqual(lease.get("state"), "LEASE_STATE_ACQUIRED")
        self.assertEqual(lease.get("startedAtUs", "0"), "0", "not started before confirmation")
        self.assertGreater(int(lease.get("offeredAtUs", "0")), 0)
        # never confirmed: withdrawn after the offer window
        self.wait_lease_state(lease["id"], 10)
        row = lease_row(self.c, lease["id"])
        self.assertEqual((row["started"], row["billed_end"], row["billed_secs"]), (0, 0, 0))
        # the job is queued again, no attempt counted
        wait_job_state(self.c, self.ttok, job["id"], ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING"),
                       timeout=30)
        # a late confirmation of the withdrawn offer is refused: do not run it
        late = self.confirm(ag, lease)
        self.assertError(late, "failed_precondition", field="leaseId")
        self.assertIn("withdrawn", late.message)
        # offered again; this time confirmed and run
        lease2 = self.offer(ag)
        self.assertEqual(lease2["jobId"], job["id"])
        self.assertNotEqual(lease2["id"], lease["id"])
        ag.running.append(lease2["id"])
        r = self.assertOk(self.confirm(ag, lease2))
        self.assertEqual(r["lease"]["state"], "LEASE_STATE_RUNNING")
        self.assertOk(ag.report(lease2, "LEASE_STATE_SUCCEEDED", seq=1))
        j = wait_job_state(self.c, self.ttok, job["id"], "JOB_STATE_SUCCEEDED", timeout=30)
        # the withdrawn attempt is not counted
        self.assertEqual(j.get("attempts"), 1, j)
        self.assertEqual(q1(self.c, "SELECT attempts_withdrawn FROM jobs WHERE id = %s"
                            % job["id"]), "1")
        # nothing posted for the withdrawn offer (its hold is released)
        self.assertEqual(q1(self.c, "SELECT count(*) FROM ledger_transfers WHERE lease_id = %s"
                                    " AND state = 2" % lease["id"]), "0")
        self.assertEqual(j["state"], "JOB_STATE_SUCCEEDED")
        ag.stop_heartbeats()

    def test_confirm_starts_billing_and_is_idempotent(self):
        ag = self.node()
        ag.start_heartbeats(0.3)
        self.submit_to(ag)
        lease = self.offer(ag)
        before = common.now_us()
        ag.running.append(lease["id"])
        r = self.assertOk(self.confirm(ag, lease))
        self.assertIs(r.get("duplicate", False), False)
        started = int(r["lease"]["startedAtUs"])
        self.assertGreaterEqual(started, int(lease["offeredAtUs"]))
        self.assertGreaterEqual(started, before, "billing starts at the confirmation")
        # the same confirmation again changes nothing
        again = self.assertOk(self.confirm(ag, lease))
        self.assertIs(again.get("duplicate"), True, again)
        self.assertEqual(int(again["lease"]["startedAtUs"]), started)
        # so does the RUNNING report that follows it
        rr = self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING", seq=1))
        self.assertEqual(int(rr["lease"]["startedAtUs"]), started)
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=2))
        ag.stop_heartbeats()

    def test_running_report_confirms_with_the_agents_start(self):
        ag = self.node()
        ag.start_heartbeats(0.3)
        self.submit_to(ag)
        lease = self.offer(ag)
        ag.running.append(lease["id"])
        at = common.now_us()
        r = self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING", seq=1, startedAtUs=str(at)))
        self.assertEqual(r["lease"]["state"], "LEASE_STATE_RUNNING")
        self.assertEqual(int(r["lease"]["startedAtUs"]), max(at, int(lease["offeredAtUs"])))
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=2))
        ag.stop_heartbeats()

    def test_one_report_batch_mixes_set_based_and_single_elements(self):
        """gm_report_leases (0022, 0023) writes a batch's RUNNING and
        SUCCEEDED reports set-based and every other element one by one:
        called directly with one batch holding a lease reported twice
        (RUNNING then SUCCEEDED: in order), a stale fencing token (refused,
        nothing changed) and a lone RUNNING report, each element gets its
        own answer and the changes a single call would make."""
        pool = self.c.unique("pool")
        ag = NodeAgent.register(self.c, self.otok, node_req(self.c.unique("node"), gpus=4,
                                                            labels={"pool": pool}))
        ag.pool = pool
        self.agents.append(ag)
        ag.start_heartbeats(0.3)
        leases = []
        for _ in range(3):
            self.submit_to(ag)
            lease = self.offer(ag)
            # listed at once: the janitor never withdraws them meanwhile
            ag.running.append(lease["id"])
            leases.append(lease)
        a, b, c = (int(x["id"]) for x in leases)
        fence = {int(x): int(y) for x, y in self.c.psql(
            "SELECT id, fencing_token FROM leases WHERE id IN (%d, %d, %d)" % (a, b, c))}
        node = int(ag.id)
        now = common.now_us()

        def batch(elems):
            """elems: (lease, fence, seq, state); answers status by position"""
            arr = lambda vals, t: "ARRAY[%s]::%s[]" % (",".join(str(v) for v in vals), t)
            n = len(elems)
            rows = self.c.psql(
                "SELECT r.i, r.status, r.job_done, r.last_seq FROM gm_report_leases(%s, %s,"
                " %s, %s, %s, %s, %s, %s, %s, %s, 3, %s, %s, 300000, %s, %s) r ORDER BY r.i"
                % (arr([e[0] for e in elems], "bigint"), arr([node] * n, "bigint"),
                   arr([0] * n, "bigint"), arr([e[1] for e in elems], "bigint"),
                   arr([e[2] for e in elems], "bigint"), arr([e[3] for e in elems], "smallint"),
                   arr([0] * n, "integer"), arr([0] * n, "integer"), arr(["''"] * n, "text"),
                   arr([now] * n, "bigint"), arr([now - 1000] * n, "bigint"),
                   arr([0] * n, "bigint"), arr([0] * n, "smallint"), arr(["''"] * n, "text")))
            return [(int(r[0]), r[1], r[2], int(r[3])) for r in rows]

        done0 = int(q1(self.c, "SELECT leases_succeeded FROM nodes WHERE id = %d" % node))
        got = batch([(a, fence[a], 1, 3), (a, fence[a], 2, 5), (b, fence[b] + 1, 1, 3),
                     (c, fence[c], 1, 3)])
        self.assertEqual(got, [(1, "ok", "f", 1), (2, "ok", "t", 2), (3, "stale", "f", 0),
                               (4, "ok", "f", 1)])
        state = lambda lid: [int(v) for v in self.c.psql(
            "SELECT l.state, l.last_report_seq, j.state, (l.billed_end_us > 0)::int"
            " FROM leases l JOIN jobs j ON j.id = l.job_id WHERE l.id = %d" % lid)[0]]
        self.assertEqual(state(a), [5, 2, 4, 1])        # SUCCEEDED, job SUCCEEDED, billed
        self.assertEqual(state(b)[1], 0)                # the stale report changed nothing
        self.assertIn(state(b)[0], (2, 3))
        self.assertEqual(state(c)[:3], [3, 1, 2])       # RUNNING
        # the lone SUCCEEDED report of c (set-based) ends its job
        self.assertEqual(batch([(c, fence[c], 2, 5)]), [(1, "ok", "t", 2)])
        self.assertEqual(state(c), [5, 2, 4, 1])
        # the same report again: a duplicate (one by one), nothing more
        self.assertEqual(batch([(c, fence[c], 2, 5)]), [(1, "duplicate", "f", 2)])
        self.assertEqual(int(q1(self.c, "SELECT leases_succeeded FROM nodes WHERE id = %d"
                                % node)), done0 + 2)
        for lid in (a, c):
            self.assertEqual(q1(self.c, "SELECT count(*) FROM job_events e JOIN leases l"
                                " ON l.job_id = e.job_id WHERE l.id = %d AND e.kind = 'ended'"
                                % lid), "1")
        ag.running.remove(leases[0]["id"])
        ag.running.remove(leases[2]["id"])
        self.assertOk(ag.report(leases[1], "LEASE_STATE_RUNNING", seq=1))
        self.assertOk(ag.report(leases[1], "LEASE_STATE_SUCCEEDED", seq=2))
        ag.stop_heartbeats()

    def test_one_heartbeat_batch_mixes_set_based_and_single_elements(self):
        """gm_heartbeats (0023) writes the common heartbeats of a batch in
        one statement and every other element through gm_heartbeat: a node
        named twice (both, in order), a lease of another node (refused,
        nothing stored), a node that does not exist (no row) and a plain
        one each get gm_heartbeat's answer and changes."""
        x, y = self.node(), self.node()
        x.start_heartbeats(0.3)
        self.submit_to(x)
        lease = self.offer(x)
        x.running.append(lease["id"])
        x.stop_heartbeats()
        lid, xid, yid = int(lease["id"]), int(x.id), int(y.id)
        seen = lambda nid: [int(v) for v in self.c.psql(
            "SELECT heartbeats_received, last_heartbeat_us FROM nodes WHERE id = %d" % nid)[0]]

        def batch(elems):
            """elems: (node, now, running lease ids); rows by position"""
            n = len(elems)
            rows = self.c.psql(
                "SELECT h.i, h.old_state, h.bad_o, h.unknown FROM gm_heartbeats("
                "ARRAY[%s]::bigint[], ARRAY[%s]::bigint[], ARRAY[%s]::bigint[],"
                " ARRAY[%s]::text[], ARRAY[%s]::bigint[], ARRAY[%s]::text[], ARRAY[%s]::text[],"
                " ARRAY[%s]::text[]) h ORDER BY h.i"
                % (",".join(str(e[0]) for e in elems), ",".join(["0"] * n),
                   ",".join(str(e[1]) for e in elems),
                   ",".join("'{%s}'" % ",".join(str(r) for r in e[2]) for e in elems),
                   ",".join(["0"] * n), ",".join(["''"] * n), ",".join(["'{}'"] * n),
                   ",".join(["'{}'"] * n)))
            return {int(r[0]): (r[2], r[3]) for r in rows}

        x0, y0 = seen(xid), seen(yid)
        now = common.now_us()
        got = batch([(xid, now, [lid]), (yid, now + 1, [lid]), (xid, now + 2, [lid]),
                     (10 ** 12, now, [])])
        # (the refused element names the lease as not y's, as gm_heartbeat does;
        # x's answers may name it too once the janitor ended the silent offer)
        self.assertEqual({i: v[0] for i, v in got.items()}, {1: "", 2: "1", 3: ""})
        self.assertEqual(got[2][1], str(lid))
        self.assertEqual(seen(xid), [x0[0] + 2, now + 2])    # twice, the later one last
        self.assertEqual(seen(yid), y0)                      # refused: nothing stored
        self.assertEqual(q1(self.c, "SELECT running_leases FROM nodes WHERE id = %d" % xid),
                         "{%d}" % lid)
        # both alone in the batch: one statement for the two
        got = batch([(xid, now + 3, []), (yid, now + 3, [])])
        self.assertEqual(got, {1: ("", ""), 2: ("", "")})  # nothing listed: nothing unknown
        self.assertEqual(seen(xid), [x0[0] + 3, now + 3])
        self.assertEqual(seen(yid), [y0[0] + 1, now + 3])
        self.assertEqual(q1(self.c, "SELECT running_leases FROM nodes WHERE id = %d" % xid),
                         "{}")
        self.assertOk(x.report(lease, "LEASE_STATE_RUNNING", seq=1))
        self.assertOk(x.report(lease, "LEASE_STATE_SUCCEEDED", seq=2))

    # ---- bad input changes nothing ----

    def test_bad_confirmations_reports_and_heartbeats(self):
        ag = self.node()
        other = self.node()
        foreign = self.node(token=self.otok2)
        ag.start_heartbeats(0.3)
        other.start_heartbeats(0.3)
        foreign.start_heartbeats(0.3)
        self.submit_to(ag)
        lease = self.offer(ag)
        ag.running.append(lease["id"])
        self.assertOk(self.confirm(ag, lease))
        snap = lambda: self.c.psql("SELECT state, started_at_us, last_report_seq FROM leases"
                                   " WHERE id = %s" % lease["id"])
        before = snap()
        # a lease of another node
        self.assertError(self.confirm(other, lease), "failed_precondition", field="leaseId")
        self.assertError(other.report(lease, "LEASE_STATE_RUNNING", seq=1),
                         "failed_precondition", field="leaseId")
        # another operator's node and lease: not found
        self.assertError(foreign.call("ConfirmLease", {"nodeId": foreign.id,
                                                       "leaseId": lease["id"],
                                                       "fencingToken": lease["fencingToken"]}),
                         "not_found", field="leaseId")
        # unknown lease; wrong token; missing ids; negative times
        self.assertError(self.confirm(ag, {"id": "987654321", "fencingToken": "1"}),
                         "not_found", field="leaseId")
        self.assertError(self.confirm(ag, lease, fencingToken="999999"), "failed_precondition",
                         field="fencingToken")
        self.assertError(ag.call("ConfirmLease", {"nodeId": ag.id}), "invalid_argument",
                         field="leaseId")
        self.assertError(self.confirm(ag, lease, startedAtUs="-5"), "invalid_argument",
                         field="startedAtUs")
        self.assertError(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=9, exitedAtUs="-1"),
                         "invalid_argument", field="exitedAtUs")
        # final reports naming another node's lease, another operator's, an
        # unknown lease: refused naming leaseId; neither the lease nor its job moves
        job_snap = lambda: self.c.psql("SELECT j.state, j.attempts, l.ended_at_us, l.billed_end_us"
                                       " FROM jobs j JOIN leases l ON l.job_id = j.id"
                                       " WHERE l.id = %s" % lease["id"])
        jobs_before = job_snap()
        self.assertError(other.report(lease, "LEASE_STATE_SUCCEEDED", seq=7),
                         "failed_precondition", field="leaseId")
        self.assertError(foreign.report(lease, "LEASE_STATE_FAILED", seq=7, exit_code=1),
                         "not_found", field="leaseId")
        self.assertError(ag.report({"id": "987654321", "fencingToken": lease["fencingToken"]},
                                   "LEASE_STATE_SUCCEEDED", seq=1),
                         "not_found", field="leaseId")
        self.assertEqual(job_snap(), jobs_before)
        self.assertEqual(snap(), before)
        # heartbeats naming an unknown lease, another node's, or one twice
        other.stop_heartbeats()
        hb_before = q1(self.c, "SELECT heartbeats_received FROM nodes WHERE id = %s" % other.id)
        for ids, idx in (([lease["id"]], 0), (["987654321"], 0)):
            req = other.heartbeat_req()
            req["runningLeaseIds"] = ids
            self.assertError(other.call("Heartbeat", req), "invalid_argument",
                             field="runningLeaseIds[%d]" % idx)
        req = ag.heartbeat_req()
        req["runningLeaseIds"] = [lease["id"], lease["id"]]
        self.assertError(ag.call("Heartbeat", req), "invalid_argument",
                         field="runningLeaseIds[1]")
        self.assertEqual(q1(self.c, "SELECT heartbeats_received FROM nodes WHERE id = %s"
                            % other.id), hb_before)
        self.assertEqual(snap(), before)
        # an out-of-order report: refused naming seq, nothing changes
        self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING", seq=3))
        mid = snap()
        self.assertError(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=2), "failed_precondition",
                         field="seq")
        self.assertEqual(snap(), mid)
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=4))
        for a in (ag, foreign):
            a.stop_heartbeats()

    # ---- reconciliation from heartbeats ----

    def test_confirmed_lease_the_agent_does_not_run_ends_and_requeues(self):
        ag = self.node()
        job = self.submit_to(ag)
        ag.start_heartbeats(0.3)
        lease = self.offer(ag)
        self.assertOk(self.confirm(ag, lease))
        # the agent's heartbeats never list it: after the offer window the
        # lease ends at the last known time and the job is queued again
        self.wait_lease_state(lease["id"], 7)
        row = lease_row(self.c, lease["id"])
        last_hb = int(q1(self.c, "SELECT last_heartbeat_us FROM nodes WHERE id = %s" % ag.id))
        self.assertLessEqual(row["billed_end"], last_hb)
        lease2 = self.offer(ag)
        self.assertEqual(lease2["jobId"], job["id"])
        ag.running.append(lease2["id"])
        self.assertOk(self.confirm(ag, lease2))
        self.assertOk(ag.report(lease2, "LEASE_STATE_SUCCEEDED", seq=1))
        wait_job_state(self.c, self.ttok, job["id"], "JOB_STATE_SUCCEEDED", timeout=30)
        ag.stop_heartbeats()

    def test_listed_lease_keeps_running_past_the_window(self):
        ag = self.node()
        job = self.submit_to(ag)
        ag.start_heartbeats(0.3)
        lease = self.offer(ag)
        ag.running.append(lease["id"])
        self.assertOk(self.confirm(ag, lease))
        # several offer windows, counted in heartbeats received
        n0 = int(q1(self.c, "SELECT heartbeats_received FROM nodes WHERE id = %s" % ag.id))
        common.wait_for(lambda: int(q1(self.c, "SELECT heartbeats_received FROM nodes"
                                               " WHERE id = %s" % ag.id)) >= n0 + 20, 60,
                        what="20 heartbeats")
        self.assertEqual(lease_row(self.c, lease["id"])["state"], 3)
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=1))
        wait_job_state(self.c, self.ttok, job["id"], "JOB_STATE_SUCCEEDED", timeout=30)
        ag.stop_heartbeats()

    # ---- billing to what ran ----

    def test_report_bills_to_the_exit_time(self):
        ag = self.node()
        ag.start_heartbeats(0.3)
        self.submit_to(ag)
        lease = self.offer(ag)
        ag.running.append(lease["id"])
        r = self.assertOk(self.confirm(ag, lease))
        started = int(r["lease"]["startedAtUs"])
        # the job exited 2 s after its start; the report comes much later
        exited = started + 2000000
        common.wait_for(lambda: common.now_us() > exited + 3000000, 30, what="time to pass")
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=1, exitedAtUs=str(exited)))
        self.assertEqual(lease_row(self.c, lease["id"])["billed_end"], exited)
        # an exit time in the future is held to the last heartbeat + interval
        self.submit_to(ag)
        lease2 = self.offer(ag)
        ag.running.append(lease2["id"])
        started2 = int(self.assertOk(self.confirm(ag, lease2))["lease"]["startedAtUs"])
        ag.stop_heartbeats()
        future = common.now_us() + 3600 * 10**6
        self.assertOk(ag.report(lease2, "LEASE_STATE_SUCCEEDED", seq=1, exitedAtUs=str(future)))
        last_hb = int(q1(self.c, "SELECT last_heartbeat_us FROM nodes WHERE id = %s" % ag.id))
        billed = lease_row(self.c, lease2["id"])["billed_end"]
        self.assertLessEqual(billed, max(last_hb + 300000, started2))
        self.assertLess(billed, future)


class OutageTest(ItCase):
    """The server's clock of attention: stalls of gpumatchd and Postgres
    longer than the heartbeat timeout lose no node that keeps heartbeating."""

    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.op, cls.otok = c.new_operator(node_limit=100)
        cls.tenant, cls.ttok = c.new_tenant()

    def setUp(self):
        super().setUp()
        if not self.c.alive():
            self.c.start_gpumatchd()

    def running_node(self):
        pool = self.c.unique("pool")
        ag = NodeAgent.register(self.c, self.otok,
                                node_req(self.c.unique("node"), labels={"pool": pool}))
        ag.start_heartbeats(0.3)
        job = submit(self.c, self.ttok, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
        b = ag.acquire_lease(within=30)
        lease = b["lease"]
        self.assertOk(ag.call("ConfirmLease", {"nodeId": ag.id, "leaseId": lease["id"],
                                              "fencingToken": lease["fencingToken"]}))
        return ag, job, lease

    def survives(self, ag, job, lease):
        """After the outage: the node is not lost, its lease still runs, the
        job completes with one attempt."""
        n0 = int(self.c.psql_value("SELECT heartbeats_received FROM nodes WHERE id = %s"
                                   % ag.id))
        # well past a full heartbeat timeout of hearing again (counted in
        # heartbeats the server took)
        common.wait_for(lambda: int(self.c.psql_value(
            "SELECT heartbeats_received FROM nodes WHERE id = %s" % ag.id)) >= n0 + 15, 90,
            what="heartbeats after the outage")
        node = self.assertOk(ag.call("GetNode", {"nodeId": ag.id}))["node"]
        self.assertEqual(node["state"], "NODE_STATE_READY", node)
        self.assertEqual(self.c.psql_value("SELECT state FROM leases WHERE id = %s"
                                           % lease["id"]), "3")
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=1))
        wait_job_state(self.c, self.ttok, job["id"], "JOB_STATE_SUCCEEDED", timeout=30)
        self.assertEqual(self.c.psql_value("SELECT attempts FROM jobs WHERE id = %s"
                                           % job["id"]), "1")
        self.assertEqual(self.c.psql_value("SELECT count(*) FROM leases WHERE job_id = %s"
                                           % job["id"]), "1")
        ag.stop_heartbeats()

    def test_gpumatchd_stalled_past_the_heartbeat_timeout(self):
        ag, job, lease = self.running_node()
        os.kill(self.c.pid, signal.SIGSTOP)
        try:
            time.sleep(5)  # longer than heartbeat_timeout_ms (3 s): the fault itself
        finally:
            os.kill(self.c.pid, signal.SIGCONT)
        self.survives(ag, job, lease)

    def test_postgres_stalled_past_the_heartbeat_timeout(self):
        ag, job, lease = self.running_node()
        self.c.pause_pg()
        try:
            time.sleep(5)  # the fault itself
        finally:
            self.c.resume_pg()
        self.survives(ag, job, lease)

    def test_postgres_stopped_past_the_heartbeat_timeout(self):
        ag, job, lease = self.running_node()
        self.c.stop_pg()
        try:
            time.sleep(5)  # the fault itself
        finally:
            self.c.start_pg()
        self.survives(ag, job, lease)


class FaultHookTest(ItCase):
    """test_die_after_lease_commit: gpumatchd dies between the commit of an
    offer and its reply; the offer is withdrawn and the job runs once."""

    def test_die_between_offer_commit_and_reply(self):
        c = self.c
        op, otok = c.new_operator(node_limit=10)
        _, ttok = c.new_tenant()
        pool = c.unique("pool")
        ag = NodeAgent.register(c, otok, node_req(c.unique("node"), labels={"pool": pool}))
        job = submit(c, ttok, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
        c.stop_gpumatchd()
        c.start_gpumatchd(["--test_die_after_lease_commit=1"])
        ag.start_heartbeats(0.3)
        try:
            r = ag.acquire(wait_ms=20000, timeout=60)
            self.assertNotEqual(r.status, 200, "the reply never comes")
        except Exception:
            pass  # the connection dies with the server
        common.wait_for(lambda: not c.alive(), 30, what="gpumatchd to die")
        self.assertIn("test_die_after_lease_commit", c.log_tail(50))
        offered = c.psql("SELECT id, state FROM leases WHERE job_id = %s" % job["id"])
        self.assertEqual([int(x[1]) for x in offered], [2], "committed as an offer")
        c.stop_gpumatchd()
        c.start_gpumatchd()
        # the orphaned offer is withdrawn, unbilled; the job runs once
        common.wait_for(lambda: c.psql_value("SELECT state FROM leases WHERE id = %s"
                                             % offered[0][0]) == "10", 60,
                        what="orphaned offer withdrawn")
        b = ag.acquire_lease(within=60)
        self.assertEqual(b["lease"]["jobId"], job["id"])
        lease = b["lease"]
        self.assertOk(ag.call("ConfirmLease", {"nodeId": ag.id, "leaseId": lease["id"],
                                              "fencingToken": lease["fencingToken"]}))
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=1))
        wait_job_state(c, ttok, job["id"], "JOB_STATE_SUCCEEDED", timeout=30)
        self.assertEqual(get_job(c, ttok, job["id"]).get("attempts"), 1)
        self.assertEqual(c.psql_value("SELECT billed_gpu_seconds FROM leases WHERE id = %s"
                                      % offered[0][0]), "0")
        ag.stop_heartbeats()


class FencingTest(ItCase):
    """After Redis loses its data, a new leader's fencing token is above
    every token Postgres has seen, however many elections came before."""

    def test_placements_resume_after_flushall_whatever_the_past_elections(self):
        c = self.c
        op, otok = c.new_operator(node_limit=10)
        _, ttok = c.new_tenant()
        pool = c.unique("pool")
        ag = NodeAgent.register(c, otok, node_req(c.unique("node"), labels={"pool": pool}))
        ag.start_heartbeats(0.3)
        # as if thousands of leaderships had come and gone
        c.psql("UPDATE scheduler_fence SET token = greatest(token, 0) + 5000")
        high = int(c.psql_value("SELECT token FROM scheduler_fence"))
        c.redis_cli("FLUSHALL")
        job = submit(c, ttok, spec=job_spec(gpus=1, labelSelector={"pool": pool}))
        b = ag.acquire_lease(within=60)
        self.assertEqual(b["lease"]["jobId"], job["id"])
        self.assertGreater(int(b["lease"]["fencingToken"]), high)
        self.assertOk(ag.call("ConfirmLease", {"nodeId": ag.id, "leaseId": b["lease"]["id"],
                                              "fencingToken": b["lease"]["fencingToken"]}))
        self.assertOk(ag.report(b["lease"], "LEASE_STATE_SUCCEEDED", seq=1))
        wait_job_state(c, ttok, job["id"], "JOB_STATE_SUCCEEDED", timeout=30)
        ag.stop_heartbeats()
