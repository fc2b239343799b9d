"""SLOW: the ledger under a randomized load. Concurrent clients make at
least 100,000 operations (submits, cancels, lease acquires, running /
succeeded / failed reports with duplicates, heartbeats with pauses long
enough for nodes to be lost, top-ups and payouts with repeats, reports)
while gpumatchd is killed with kill -9 and restarted several times.
Afterwards, once every lease has ended and been settled: AuditLedger finds
zero violations, money is conserved, and the report totals equal the sum of
the settled usage recorded on the leases."""

import http.client
import json
import os
import random
import threading
import time

import common
from common import ItCase, ok

SLOW = True
# relative cost for run.py --shard: about half of all the shared modules' time
COST = 12

OPS = int(os.environ.get("GPUMATCH_LEDGER_RANDOM_OPS", "100000"))
RESTARTS = 4
# The run is bounded by its count of operations, never by a rate: a loaded
# machine takes longer. Only a run whose clients stop making operations at
# all (this long without one more) is a failure.
STUCK_S = 300
PRICE = 1800000
FEE_PPM = 50000


def setUpModule():
    c = common.setup_module(__name__, [
        "--allow_unverified=true",
        "--log_level=info",
        "--cycle_interval_ms=100",
        "--heartbeat_interval_ms=300",
        "--heartbeat_timeout_ms=1500",
        "--lease_pickup_timeout_ms=3000",
        "--ledger_settle_interval_ms=200",
        "--ledger_meter_interval_ms=1000",
        "--request_timeout_ms=5000",
    ])
    p = ok(c.admin("GetPolicy", {}))["policy"]
    p = {k: v for k, v in p.items()
         if k not in ("version", "createdBy", "createdAtUs", "comment")}
    p["platformFeePpm"] = FEE_PPM
    ok(c.admin("SetPolicy", {"policy": p, "comment": "randomized ledger test: 5 % fee"}))


def tearDownModule():
    common.teardown_module(__name__)


class Client:
    """A keep-alive JSON client that follows gpumatchd to its new port after
    a restart; returns (status, body) or (None, None) while it is down."""

    def __init__(self, cluster, token):
        self.c, self.token = cluster, token
        self.conn, self.port = None, None

    def call(self, service, method, body):
        try:
            if self.conn is None or self.port != self.c.port:
                if self.conn:
                    self.conn.close()
                self.port = self.c.port
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.conn.request("POST", "/gpumatch.v1.%s/%s" % (service, method),
                              body=json.dumps(body).encode(),
                              headers={"Content-Type": "application/json",
                                       "Authorization": "Bearer " + self.token})
            r = self.conn.getresponse()
            data = r.read()
            return r.status, (json.loads(data) if data else {})
        except (OSError, http.client.HTTPException, ValueError):
            if self.conn:
                self.conn.close()
            self.conn = None
            time.sleep(0.05)
            return None, None


class RandomLedgerTest(ItCase):
    def test_randomized_run_audits_clean(self):
        c = self.c
        rnd = random.Random(int(os.environ.get("GPUMATCH_LEDGER_SEED", "5")))
        ops = {"n": 0, "answered": 0}
        lock = threading.Lock()
        stop = threading.Event()

        def count(st):
            with lock:
                ops["n"] += 1
                ops["answered"] += st is not None

        ops_list = [c.new_operator() for _ in range(2)]
        tenants = [c.new_tenant(funds_micros=10**13) for _ in range(4)]
        pool = c.unique("rpool")
        nodes = []
        for i in range(8):
            opr, otok = ops_list[i % 2]
            req = common.node_req(c.unique("rn"), gpus=4, price_micros=PRICE,
                                  labels={"pool": pool})
            b = ok(c.call("NodeService", "RegisterNode", req, token=otok))
            nodes.append((b["node"], otok))

        def agent(node, otok, seed):
            r = random.Random(seed)
            cl = Client(c, otok)
            nid = node["id"]
            leases = {}   # id -> [lease, seq, started(bool), end_after]
            pause_until = 0.0
            while not stop.is_set():
                now = time.monotonic()
                if now < pause_until:
                    time.sleep(0.05)
                    continue
                if r.random() < 0.003:
                    pause_until = now + 2.5   # silent long enough to be lost
                    continue
                st, b = cl.call("NodeService", "Heartbeat",
                                {"nodeId": nid, "runningLeaseIds": list(leases)})
                count(st)
                if st == 200:
                    for gone in b.get("unknownLeaseIds", []):
                        leases.pop(gone, None)
                st, b = cl.call("NodeService", "AcquireLease", {"nodeId": nid})
                count(st)
                if st == 200 and b.get("lease"):
                    lease = b["lease"]
                    leases[lease["id"]] = [lease, 0, False, now + r.uniform(0.1, 1.5)]
                for lid, e in list(leases.items()):
                    lease = e[0]
                    if not e[2]:
                        state = "LEASE_STATE_RUNNING"
                    elif now >= e[3]:
                        state = r.choice(["LEASE_STATE_SUCCEEDED"] * 3 + ["LEASE_STATE_FAILED"])
                    else:
                        continue
                    e[1] += 1
                    body = {"nodeId": nid, "leaseId": lid, "seq": str(e[1]),
                            "fencingToken": lease.get("fencingToken", "0"), "state": state,
                            "exitCode": 0 if state != "LEASE_STATE_FAILED" else 1}
                    for _ in range(2 if r.random() < 0.2 else 1):  # duplicates
                        st, rb = cl.call("NodeService", "ReportLease", body)
                        count(st)
                    if st == 200:
                        e[2] = True
                        if state != "LEASE_STATE_RUNNING" or \
                                rb.get("lease", {}).get("state", "") not in (
                                    "LEASE_STATE_ACQUIRED", "LEASE_STATE_RUNNING",
                                    "LEASE_STATE_STOPPING"):
                            leases.pop(lid, None)
                    elif st in (400, 404, 412):
                        leases.pop(lid, None)
                time.sleep(0.01)

        def tenant(tok, seed):
            r = random.Random(seed)
            cl = Client(c, tok)
            mine = []
            while not stop.is_set():
                x = r.random()
                if x < 0.55:
                    spec = common.job_spec(gpus=r.choice([1, 1, 2, 4]),
                                           labelSelector={"pool": pool},
                                           maxPricePerGpuHourMicros=str(PRICE),
                                           maxDurationUs=str(r.choice([60, 600, 3600]) * 1000000))
                    st, b = cl.call("JobService", "SubmitJob",
                                    {"idempotencyKey": c.unique("rk"), "spec": spec})
                    count(st)
                    if st == 200:
                        mine.append(b["job"]["id"])
                elif x < 0.65 and mine:
                    st, _ = cl.call("JobService", "CancelJob", {"jobId": r.choice(mine)})
                    count(st)
                elif x < 0.75:
                    st, _ = cl.call("JobService", "GetSpend", {})
                    count(st)
                else:
                    st, _ = cl.call("JobService", "ListJobs", {"pageSize": 5})
                    count(st)
                # keep the queue short: the fleet runs about 30 jobs at once
                time.sleep(0.02)

        def admin(seed):
            r = random.Random(seed)
            cl = Client(c, c.admin_token)
            used = []
            while not stop.is_set():
                x = r.random()
                if x < 0.4:
                    t = r.choice(tenants)[0]
                    idem = r.choice(used) if used and r.random() < 0.3 else c.unique("rt")
                    if idem not in used:
                        used.append(idem)
                    st, _ = cl.call("AdminService", "TopUpTenant",
                                    {"tenantId": t["id"], "amountMicros": "1000000",
                                     "idempotencyId": idem})
                elif x < 0.8:
                    o = r.choice(ops_list)[0]
                    st, _ = cl.call("AdminService", "PayoutOperator",
                                    {"operatorId": o["id"], "amountMicros": str(r.randint(1, 20000)),
                                     "idempotencyId": c.unique("rp")})
                elif x < 0.9:
                    st, _ = cl.call("AdminService", "GetRevenueReport",
                                    {"window": {"startUs": "0"}})
                else:
                    st, _ = cl.call("AdminService", "GetUsageReport", {"window": {"startUs": "0"}})
                count(st)
                time.sleep(0.02)

        threads = [threading.Thread(target=agent, args=(n, t, i), daemon=True)
                   for i, (n, t) in enumerate(nodes)]
        threads += [threading.Thread(target=tenant, args=(t[1], 100 + i), daemon=True)
                    for i, t in enumerate(tenants)]
        threads += [threading.Thread(target=admin, args=(200 + i,), daemon=True) for i in range(2)]
        for th in threads:
            th.start()
        t0 = time.monotonic()
        restarts = 0
        # kill -9 spread over the run, at a random point of each stretch
        kills = [int(OPS * (k + rnd.uniform(0.3, 0.9)) / (RESTARTS + 1))
                 for k in range(RESTARTS)]
        last_n, last_change = 0, time.monotonic()
        try:
            while ops["n"] < OPS:
                time.sleep(0.2)
                if ops["n"] != last_n:
                    last_n, last_change = ops["n"], time.monotonic()
                elif time.monotonic() - last_change > STUCK_S:
                    break
                if restarts < RESTARTS and ops["n"] >= kills[restarts]:
                    c.kill9()
                    time.sleep(rnd.uniform(0.1, 0.8))
                    c.start_gpumatchd()
                    restarts += 1
        finally:
            stop.set()
            for th in threads:
                th.join(30)
        elapsed = time.monotonic() - t0
        print("\nrandomized ledger run: %d operations (%d answered) in %.0f s, %d restarts"
              % (ops["n"], ops["answered"], elapsed, restarts))
        self.assertGreaterEqual(ops["n"], OPS, "the clients stopped making operations")
        self.assertEqual(restarts, RESTARTS)
        if not c.alive():
            c.start_gpumatchd()

        # wind down: cancel every job, let agents' leases end
        for t, tok in tenants:
            ids = [r[0] for r in c.psql("SELECT id FROM jobs WHERE tenant_id = %s"
                                        " AND state IN (1, 2, 3)" % t["id"])]
            for jid in ids:
                ok(c.call("JobService", "CancelJob", {"jobId": jid}, token=tok))
        # the agents are gone: their nodes are lost and the leases expire
        common.wait_for(lambda: c.psql_value("SELECT count(*) FROM leases WHERE state <= 4")
                        == "0", 60, 0.5, "every lease to end")
        common.wait_for(lambda: c.psql_value("SELECT count(*) FROM leases WHERE state > 4"
                                             " AND NOT ledger_settled") == "0", 60, 0.5,
                        "every lease to be settled")
        leases = int(c.psql_value("SELECT count(*) FROM leases"))
        self.assertGreater(leases, OPS // 100, "leases run")
        print("leases: %d; transfers: %s" % (leases, c.psql_value(
            "SELECT count(*) FROM ledger_transfers")))

        a = ok(c.admin("AuditLedger", {}))
        self.assertIs(a.get("ok"), True, a)
        self.assertEqual(a.get("violationCount", 0), 0, a)
        # money is conserved: every posted entry has its counterpart
        self.assertEqual(c.psql_value("SELECT sum(balance_micros) FROM ledger_accounts"), "0")
        self.assertEqual(c.psql_value("SELECT sum(pending_debits_micros) +"
                                      " sum(pending_credits_micros) FROM ledger_accounts"), "0")

        gross, fee, gs = (int(x) for x in c.psql(
            "SELECT sum(posted_micros), sum(fee_posted_micros), sum(billed_gpu_seconds)"
            " FROM leases")[0])
        self.assertGreater(gross, 0)
        rev = ok(c.admin("GetRevenueReport", {"window": {"startUs": "0"}}))
        self.assertEqual(int(rev.get("grossMicros", "0")), gross)
        self.assertEqual(int(rev.get("platformFeeMicros", "0")), fee)
        self.assertEqual(int(rev.get("operatorMicros", "0")), gross - fee)
        self.assertEqual(sum(int(n.get("grossMicros", "0")) for n in rev.get("nodes", [])), gross)
        self.assertEqual(sum(int(t.get("spendMicros", "0")) for t in rev.get("tenants", [])),
                         gross)
        use = ok(c.admin("GetUsageReport", {"window": {"startUs": "0"}}))
        self.assertEqual(sum(int(s.get("revenueMicros", "0")) for s in use.get("sold", [])), gross)
        self.assertEqual(sum(int(s.get("gpuSeconds", "0")) for s in use.get("sold", [])), gs)
        # the jobs' costs are their leases' usage
        self.assertEqual(c.psql_value("SELECT count(*) FROM jobs j WHERE j.cost_micros <>"
                                      " (SELECT coalesce(sum(l.posted_micros), 0) FROM leases l"
                                      "   WHERE l.job_id = j.id)"), "0")
