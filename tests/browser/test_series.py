"""Per-minute rollups and the series RPCs behind the console's charts
(migration 0013, server/series.c), the live fleet summary, and the console's
static files with their security headers.

A small fleet (two operators, three nodes, two GPU models, two regions)
runs one job that is metered every second, so the rollups the leader
refreshes every 300 ms get GPU states and money; the series must then agree
with the record (GPUs per state, usage posted), each role sees only its own
nodes or spend, and bad windows and steps name their field."""

import time

import common
from common import ItCase, NodeAgent, job_spec, node_req, now_us, ok, submit, wait_job_state

MIN_US = 60 * 1000000


def setUpModule():
    common.setup_module(__name__, [
        "--allow_unverified=true",
        "--cycle_interval_ms=200",
        "--heartbeat_interval_ms=300",
        "--heartbeat_timeout_ms=5000",
        "--ledger_settle_interval_ms=200",
        "--ledger_meter_interval_ms=1000",
        "--rollup_interval_ms=300",
    ])


def tearDownModule():
    common.teardown_module(__name__)


class SeriesTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = cls.cluster = common._clusters[__name__]
        cls.op1, cls.op1_tok = c.new_operator()
        cls.op2, cls.op2_tok = c.new_operator()
        cls.agents = [
            NodeAgent.register(c, cls.op1_tok, node_req(c.unique("a"), gpus=2)),
            NodeAgent.register(c, cls.op1_tok, node_req(c.unique("b"), gpus=2, region="us-east")),
            NodeAgent.register(c, cls.op2_tok, node_req(c.unique("c"), gpus=1, region="us-east")),
        ]
        for a in cls.agents:
            a.start_heartbeats()
        cls.tenant, cls.tok = c.new_tenant()
        cls.other, cls.other_tok = c.new_tenant()
        cls.job = submit(c, cls.tok, spec=job_spec(1, maxDurationUs=str(3600 * 1000000)))
        # whichever node gets it runs it; the others long-poll for nothing
        lease = None
        deadline = time.monotonic() + 30
        while lease is None and time.monotonic() < deadline:
            for a in cls.agents:
                b = ok(a.acquire(wait_ms=200))
                if b.get("lease"):
                    lease, cls.runner = b["lease"], a
                    a.running.append(lease["id"])
                    break
        assert lease, "no node got the job"
        ok(cls.runner.report(lease, "LEASE_STATE_RUNNING"))
        cls.lease = lease
        wait_job_state(c, cls.tok, cls.job["id"], "JOB_STATE_RUNNING")

    @classmethod
    def tearDownClass(cls):
        for a in cls.agents:
            a.stop_heartbeats()

    def fleet_series(self, **kw):
        return self.c.admin("GetFleetSeries", kw)

    def last_sample(self, series):
        pts = [p for p in series["points"] if p.get("samples", 0) > 0]
        return pts[-1] if pts else None

    def test_fleet_series_counts_gpu_states(self):
        """The newest minute's sample counts 5 GPUs, 1 busy, and matches the
        live summary; grouped by model and region it splits the same."""
        def busy_sample():
            s = self.last_sample(ok(self.fleet_series())["series"][0])
            return s if s and s.get("gpusBusy") == 1 and s.get("gpusTotal") == 5 else None
        s = common.wait_for(busy_sample, 15, 0.2, "a rollup with the running job")
        self.assertEqual(s.get("utilizationPpm"), 200000, s)
        summ = ok(self.c.admin("GetFleetSummary", {}))
        t = summ["totals"]
        self.assertEqual((t["total"], t.get("busy", 0)), (5, 1), summ)
        self.assertEqual(t.get("free", 0) + t.get("busy", 0) + t.get("unhealthy", 0)
                         + t.get("unverified", 0) + t.get("offline", 0), t["total"], t)
        self.assertIn({"name": "JOB_STATE_RUNNING", "count": 1}, summ["jobsByState"])
        self.assertEqual(sum(b.get("count", 0) for b in summ["queueWait"]),
                         sum(x["count"] for x in summ.get("queuedByClass", [])))
        by_region = ok(self.fleet_series(groupBy="SERIES_GROUP_REGION"))["series"]
        keys = sorted(x["key"] for x in by_region)
        self.assertEqual(keys, ["eu-west", "us-east"])
        tot = {x["key"]: self.last_sample(x)["gpusTotal"] for x in by_region}
        self.assertEqual(tot, {"eu-west": 2, "us-east": 3})

    def test_revenue_reaches_the_series(self):
        """Usage posted for the running lease shows up as revenue in the
        fleet, node and spend series, equal to the ledger's postings."""
        def posted():
            return int(self.c.psql_value(
                "SELECT coalesce(sum(amount_micros), 0) FROM ledger_transfers"
                " WHERE kind = 2 AND state = 2 AND lease_id = %s" % self.lease["id"]))
        common.wait_for(lambda: posted() > 0, 20, 0.2, "usage to be posted")
        time.sleep(0.8)  # the next rollup refresh sees it

        def series_rev():
            return sum(int(p.get("revenueMicros", "0")) for p in
                       ok(self.fleet_series(window={"startUs": str(now_us() - 10 * MIN_US)}))
                       ["series"][0]["points"])

        def agree():
            want = posted()
            return want if series_rev() == want else None
        want = common.wait_for(agree, 15, 0.3, "the fleet series to equal the postings")
        spend = ok(self.c.call("JobService", "GetSpendSeries", {}, token=self.tok))
        got = sum(int(p.get("revenueMicros", "0")) for p in spend["series"]["points"])
        self.assertGreaterEqual(got, want)   # more may have been posted since
        node = ok(self.c.call("NodeService", "GetNodeSeries", {"nodeId": self.runner.id},
                              token=self.runner.token))
        self.assertGreater(sum(int(p.get("revenueMicros", "0"))
                               for p in node["series"]["points"]), 0)

    def test_window_and_step(self):
        """Steps are whole minutes; the window is aligned to steps and has a
        point per step; bad input names the field and too many steps are
        refused."""
        b = ok(self.fleet_series(window={"startUs": str(now_us() - 3600 * 1000000)}, stepS="300"))
        w = b["window"]
        self.assertEqual(int(w["startUs"]) % (300 * 1000000), 0)
        self.assertEqual(len(b["series"][0]["points"]),
                         (int(w["endUs"]) - int(w["startUs"])) // (300 * 1000000))
        self.assertError(self.fleet_series(stepS="90"), "invalid_argument", field="stepS")
        self.assertError(self.fleet_series(window={"startUs": "0"}, stepS="60"),
                         "invalid_argument", field="stepS")
        self.assertError(self.fleet_series(window={"startUs": "5", "endUs": "4"}),
                         "invalid_argument", field="window.endUs")

    def test_who_sees_what(self):
        """Operators see their own nodes' series only, tenants their own
        spend; the fleet series and summary are for admins."""
        mine, theirs = self.agents[0], self.agents[2]
        ok(self.c.call("NodeService", "GetNodeSeries", {"nodeId": mine.id}, token=self.op1_tok))
        self.assertError(self.c.call("NodeService", "GetNodeSeries", {"nodeId": theirs.id},
                                     token=self.op1_tok), "not_found", field="nodeId")
        self.assertError(self.c.call("NodeService", "GetNodeSeries",
                                     {"operatorId": self.op2["id"]}, token=self.op1_tok),
                         "permission_denied", field="operatorId")
        all_mine = ok(self.c.call("NodeService", "GetNodeSeries", {}, token=self.op1_tok))
        s = common.wait_for(lambda: self.last_sample(ok(self.c.call(
            "NodeService", "GetNodeSeries", {}, token=self.op1_tok))["series"]), 10, 0.2)
        self.assertEqual(s["gpusTotal"], 4, all_mine)   # op1's two nodes, 2 GPUs each
        self.assertError(self.c.call("JobService", "GetSpendSeries",
                                     {"tenantId": self.tenant["id"]}, token=self.other_tok),
                         "permission_denied", field="tenantId")
        other = ok(self.c.call("JobService", "GetSpendSeries", {}, token=self.other_tok))
        self.assertEqual(sum(int(p.get("revenueMicros", "0"))
                             for p in other["series"]["points"]), 0)
        self.assertError(self.c.call("JobService", "GetSpendSeries", {}, token=self.c.admin_token),
                         "invalid_argument", field="tenantId")
        for m in ("GetFleetSeries", "GetFleetSummary"):
            self.assertError(self.c.call("AdminService", m, {}, token=self.tok),
                             "permission_denied")

    def test_console_served_with_security_headers(self):
        """/ is the console: HTML with a strict CSP (no inline script),
        nosniff, no framing; its scripts are served as JavaScript; an
        unknown file is 404; other methods and RPC paths are unchanged."""
        st, h, body = self.c.http("GET", "/")
        self.assertEqual(st, 200)
        self.assertIn("text/html", h["content-type"])
        csp = h["content-security-policy"]
        self.assertIn("script-src 'self'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertEqual(h["x-content-type-options"], "nosniff")
        self.assertNotIn(b"<script>", body)    # every script is a file
        self.assertIn(b'src="/app.js"', body)
        st, h, body = self.c.http("GET", "/app.js")
        self.assertEqual(st, 200)
        self.assertIn("javascript", h["content-type"])
        self.assertEqual(h["x-content-type-options"], "nosniff")
        st, h, _ = self.c.http("GET", "/nope.js")
        self.assertEqual(st, 404)
        self.assertEqual(h["x-content-type-options"], "nosniff")
        self.assertEqual(self.c.http("GET", "/healthz")[0], 200)
        r = self.c.call("AdminService", "NoSuchMethod", {}, token=self.c.admin_token)
        self.assertError(r, "unimplemented", status=404)

    def test_dashboard_and_rules_use_exported_metrics(self):
        """Every gpumatch_* metric that deploy/grafana's dashboard and
        deploy/prometheus's rules query is exported by this (leader)
        replica's /metrics, and every label value there is from a bounded
        set (no ids, names or free text)."""
        import glob
        import json
        import os
        import re
        src = os.environ.get("GPUMATCH_SOURCE", ".")
        exprs = []
        for f in glob.glob(os.path.join(src, "deploy/grafana/*.json")):
            def walk(x):
                if isinstance(x, dict):
                    if isinstance(x.get("expr"), str):
                        exprs.append(x["expr"])
                    for v in x.values():
                        walk(v)
                elif isinstance(x, list):
                    for v in x:
                        walk(v)
            walk(json.load(open(f)))
        for f in glob.glob(os.path.join(src, "deploy/prometheus/*.yml")):
            if not f.endswith("_test.yml"):
                exprs += re.findall(r"expr: *\|?\n?((?:.*\n?)(?: {10,}.*\n)*)", open(f).read())
        wanted = set()
        for e in exprs:
            wanted |= set(re.findall(r"\bgpumatch_[a-z0-9_]+", e))
        self.assertGreater(len(wanted), 20, wanted)
        common.wait_for(lambda: "gpumatch_fleet_gpus{" in self.c.http("GET", "/metrics")[2].decode(),
                        10, 0.2, "the leader's fleet gauges")
        text = self.c.http("GET", "/metrics")[2].decode()
        exported = set(re.findall(r"^(gpumatch_[a-z0-9_]+)", text, re.M))
        self.assertEqual(sorted(wanted - exported), [], "queried but not exported")
        for name, labels in re.findall(r"^(gpumatch_[a-z0-9_]+)\{([^}]*)\}", text, re.M):
            for k, v in re.findall(r'(\w+)="([^"]*)"', labels):
                if k == "method":
                    self.assertRegex(v, r"^/gpumatch\.v1\.\w+/\w+$|^other$|^unknown$")
                elif k == "model":   # GPU products: a short, bounded list
                    self.assertRegex(v, r"^[A-Za-z0-9._-]{1,64}$")
                elif k == "le":
                    self.assertRegex(v, r"^[0-9.e+-]+$|^\+Inf$")
                else:
                    self.assertRegex(v, r"^[A-Za-z0-9_]{1,32}$", "%s{%s}" % (name, labels))
