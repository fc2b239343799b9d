"""The web console in headless Chromium against a real, seeded gpumatchd:
two operators' nodes (one GPU reported unhealthy), a tenant with a running,
metered job, a finished one and one that no node can host, and a second
policy version. Each role signs in with its token; the fleet page's numbers
equal the API's; charts draw paths with points; the queue shows a pending
job's explanation; a tenant is refused the admin pages with a clear
message; a spec with a bad field shows that field's error; policy simulate
draws both CDFs; drain / undrain work from the operator's node page; a
revoked token signs the user out; the layout holds at phone width; and no
console error, exception or CSP violation happens beyond the API refusals
the steps provoke. Screenshots are saved for docs/console.md."""

import json
import os
import re
import time

import cdp
import common
from common import ItCase, NodeAgent, job_spec, node_req, ok, submit, wait_job_state

HOUR_US = 3600 * 1000000
# what a refused or invalid API call logs in the browser (expected in the
# steps that provoke it, an error anywhere else)
API_REFUSAL = re.compile(r"Failed to load resource: the server responded with a status of 4(00|01|03|04)")


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


def shots_dir():
    d = os.environ.get("GPUMATCH_CONSOLE_SHOTS") or os.path.join(
        os.environ.get("GPUMATCH_BUILD", "."), "console-screenshots")
    os.makedirs(d, exist_ok=True)
    return d


class ConsoleTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = cls.cluster = common._clusters[__name__]
        cls.op, cls.op_tok = c.new_operator()
        cls.op2, cls.op2_tok = c.new_operator()
        gpu_a = dict(model="A100-SXM4-80GB", memory_mib=81920, cc=(8, 0))
        cls.agents = [
            NodeAgent.register(c, cls.op_tok, node_req(c.unique("gpu-a"), gpus=2)),
            NodeAgent.register(c, cls.op_tok, node_req(c.unique("gpu-b"), gpus=2, region="us-east")),
        ]
        r = node_req(c.unique("gpu-c"), gpus=2, region="us-east")
        r["gpus"] = [common.gpu(i, node_tag="c", **gpu_a) for i in range(2)]
        cls.agents.append(NodeAgent.register(c, cls.op2_tok, r))
        for a in cls.agents:
            a.start_heartbeats()
        # one GPU of the last node goes bad
        bad = cls.agents[2]
        hb = bad.heartbeat_req()
        hb["gpus"][1]["status"] = "GPU_HEALTH_STATUS_UNHEALTHY"
        orig = bad.heartbeat_req
        bad.heartbeat_req = lambda: dict(orig(), gpus=hb["gpus"])
        ok(bad.call("Heartbeat", hb))
        cls.tenant, cls.tok = c.new_tenant()
        # a finished job and a running, metered one
        cls.done = submit(c, cls.tok, spec=job_spec(1), name="finished")
        cls.run_lease(cls.done, finish=True)
        cls.running = submit(c, cls.tok, spec=job_spec(1, maxDurationUs=str(HOUR_US)), name="training")
        cls.run_lease(cls.running, finish=False)
        # one no node can host: stays queued with an explanation
        cls.pending = submit(c, cls.tok, spec=job_spec(8), name="too-big")
        # a second policy version, so history has a diff
        p = ok(c.admin("GetPolicy", {}))["policy"]
        p = {k: v for k, v in p.items() if k not in ("version", "createdBy", "createdAtUs", "comment")}
        p["wPrice"] = float(p.get("wPrice", 0)) + 1
        ok(c.admin("SetPolicy", {"policy": p, "comment": "cheaper nodes first"}))
        # wait until usage was posted and rolled up
        common.wait_for(lambda: any(int(x.get("revenueMicros", "0")) > 0 for x in ok(c.admin(
            "GetFleetSeries", {}))["series"][0]["points"]), 30, 0.3, "revenue in the rollups")
        cls.b = cdp.Browser(1280, 800)
        cls.base = "http://%s:%d/" % (c.host, c.port)
        cls.shots = shots_dir()

    @classmethod
    def run_lease(cls, job, finish):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for a in cls.agents:
                b = ok(a.acquire(wait_ms=100))
                if b.get("lease"):
                    lease = b["lease"]
                    a.running.append(lease["id"])
                    ok(a.report(lease, "LEASE_STATE_RUNNING"))
                    if finish:
                        time.sleep(1.2)
                        ok(a.report(lease, "LEASE_STATE_SUCCEEDED"))
                        wait_job_state(cls.cluster, cls.tok, job["id"], "JOB_STATE_SUCCEEDED")
                    else:
                        wait_job_state(cls.cluster, cls.tok, job["id"], "JOB_STATE_RUNNING")
                    return lease
        raise AssertionError("no node took job %s" % job["id"])

    @classmethod
    def tearDownClass(cls):
        b = getattr(cls, "b", None)
        if b:
            b.close()
        for a in cls.agents:
            a.stop_heartbeats()

    # ---- helpers ----

    def shot(self, name):
        self.b.screenshot(os.path.join(self.shots, name + ".png"))

    def errors_since(self, n, allow_api_refusals=False):
        out = []
        for kind, text in self.b.errors[n:]:
            if allow_api_refusals and API_REFUSAL.search(text):
                continue
            out.append("%s: %s" % (kind, text))
        return out

    def sign_in(self, token, page):
        b = self.b
        b.goto(self.base)
        b.eval("sessionStorage.clear(); location.hash = ''; GM.route(); true")
        b.wait("!!document.querySelector('#token')", what="the sign-in form")
        b.fill("#token", token)
        b.click("#signin")
        b.wait("!!document.querySelector('[data-page=\"%s\"]')" % page, 20, "page " + page)

    def go(self, hash_, page, ready):
        self.b.eval("location.hash = %s; true" % json.dumps(hash_))
        self.b.wait("!!document.querySelector('[data-page=\"%s\"]')" % page, 20, "page " + page)
        return self.b.wait(ready, 30, ready)

    def chart_points(self, chart_id):
        """Points drawn in a chart: each path's segment count (>0 = data)."""
        return self.b.eval(
            "(() => { const f = document.querySelector('figure[data-chart=%s]');"
            " if (!f) return null; return [...f.querySelectorAll('path.line')]"
            ".map(p => (p.getAttribute('d').match(/[MLHV]/g) || []).length); })()" % chart_id)

    # ---- the walk ----

    def test_console(self):
        b = self.b
        c = self.c
        n0 = len(b.errors)
        with self.subTest("sign-in page"):
            b.goto(self.base)
            b.wait("!!document.querySelector('#token')")
            self.shot("signin")
            self.assertIsNone(b.eval("sessionStorage.getItem('gpumatch.token')"))

        with self.subTest("admin: fleet numbers equal the API's, charts have data"):
            self.sign_in(c.admin_token, "admin/fleet")
            self.assertIsNone(b.eval("document.cookie || null"))   # no cookie, token not in URL
            self.assertNotIn(c.admin_token, b.eval("location.href"))
            b.wait("!!document.querySelector('[data-k=total]')")

            def same():
                api = ok(c.admin("GetFleetSummary", {}))["totals"]
                page = b.eval("Object.fromEntries([...document.querySelectorAll('[data-k]')]"
                              ".map(e => [e.dataset.k, Number(e.textContent)]))")
                want = {k: api.get(k, 0) for k in ("total", "free", "busy", "unhealthy",
                                                   "unverified", "offline")}
                return (page, want) if all(page.get(k) == v for k, v in want.items()) else None
            page, want = common.wait_for(same, 20, 0.5, "the fleet page to show the API's numbers")
            self.assertEqual((want["total"], want["busy"], want["unhealthy"]), (6, 1, 1), want)
            pts = b.wait("(() => { const f = document.querySelector('figure[data-chart=utilization]');"
                         " return f && Number(f.dataset.points) > 0 && f.querySelectorAll('circle').length; })()",
                         30, "utilization points")
            self.assertGreater(pts, 0)
            self.assertTrue(all(n > 0 for n in self.chart_points("gpu-states")))
            self.shot("admin-fleet")

        with self.subTest("admin: nodes table and a node page"):
            self.go("#/admin/nodes", "admin/nodes", "document.querySelectorAll('table.nodes tbody tr[data-id]').length")
            rows = b.eval("document.querySelectorAll('table.nodes tbody tr[data-id]').length")
            api = ok(c.call("NodeService", "ListNodes", {}, token=c.admin_token))["nodes"]
            self.assertEqual(rows, len(api))
            self.shot("admin-nodes")
            nid = self.agents[0].id
            self.go("#/admin/node/%s" % nid, "admin/node", "!!document.querySelector('#verification')")
            b.wait("(() => { const f = document.querySelector('figure[data-chart=\"node-utilization\"]');"
                   " return f && Number(f.dataset.points) > 0; })()", 30, "node utilization points")
            self.shot("admin-node")

        with self.subTest("admin: queue shows the pending job's explanation"):
            self.go("#/admin/queue", "admin/queue", "!!document.querySelector('table.queue tr[data-id=\"%s\"]')" % self.pending["id"])
            self.assertGreater(b.eval("document.querySelectorAll('figure[data-chart=queue-wait] rect.bar').length"), 0)
            b.click("table.queue tr[data-id=\"%s\"] button.explain" % self.pending["id"])
            text = b.wait("(() => { const e = document.querySelector('.explanation[data-job=\"%s\"]');"
                          " return e && e.textContent; })()" % self.pending["id"], 20, "the explanation")
            api = ok(c.call("JobService", "ExplainJob", {"jobId": self.pending["id"]}, token=self.tok))
            self.assertIn(api["explanation"]["summary"], text)
            self.shot("admin-queue")

        with self.subTest("admin: revenue charts, tables and CSV"):
            self.go("#/admin/revenue", "admin/revenue", "document.querySelectorAll('table.revenue-nodes tbody tr').length")
            self.assertTrue(b.wait("(() => { const p = document.querySelector('figure[data-chart=revenue] path.line');"
                                   " return p && p.getAttribute('d').length > 1; })()", 20, "revenue path"))
            rev = ok(c.admin("GetRevenueReport", {"window": {"startUs": str(common.now_us() - 86400 * 10**6)}}))
            self.assertEqual(b.eval("document.querySelectorAll('table.revenue-nodes tbody tr').length"), len(rev["nodes"]))
            self.assertEqual(b.eval("document.querySelectorAll('button[data-csv]').length"), 4)
            self.shot("admin-revenue")

        with self.subTest("admin: ledger audit"):
            self.go("#/admin/ledger", "admin/ledger", "!!document.querySelector('#audit-status')")
            self.assertIn("ok", b.eval("document.querySelector('#audit-status').className"))
            self.shot("admin-ledger")

        with self.subTest("admin: policy history, diffs and simulate with both CDFs"):
            self.go("#/admin/policy", "admin/policy", "document.querySelectorAll('table.policy-diffs tbody tr').length")
            self.assertIn("w_price", b.text("table.policy-diffs"))
            b.fill("#trace", "msr-itp/cluster01")
            b.fill("#trace-hours", "96")
            b.eval("(() => { const t = document.querySelector('#candidate'); const p = JSON.parse(t.value);"
                   " p.fitMode = 'FIT_MODE_SPREAD'; t.value = JSON.stringify(p, null, 2); return true; })()")
            b.click("#simulate")
            b.wait("document.querySelectorAll('figure[data-chart=cdf-jct] path.line').length === 2 &&"
                   " document.querySelectorAll('figure[data-chart=cdf-wait] path.line').length === 2",
                   300, "both CDFs of both policies")
            self.assertTrue(all(n > 1 for n in self.chart_points("cdf-jct")))
            self.assertTrue(all(n > 1 for n in self.chart_points("cdf-wait")))
            self.assertGreater(b.eval("document.querySelectorAll('table.sim-metrics tbody tr').length"), 5)
            b.eval("document.querySelector('#sim-out').scrollIntoView(); true")
            self.shot("admin-policy-simulate")

        with self.subTest("phone width"):
            b.set_viewport(390, 844, mobile=True)
            self.go("#/admin/fleet", "admin/fleet", "!!document.querySelector('[data-k=total]')")
            b.wait("!!document.querySelector('figure[data-chart=utilization]')")
            self.assertLessEqual(b.eval("document.documentElement.scrollWidth"),
                                 b.eval("window.innerWidth") + 1)
            self.shot("admin-fleet-phone")
            b.set_viewport(1280, 800)

        self.assertEqual(self.errors_since(n0), [], "browser errors in the admin walk")

        with self.subTest("tenant: jobs, refused admin page, bad field, submit, spend"):
            self.sign_in(self.tok, "tenant/jobs")
            b.wait("document.querySelectorAll('table.jobs tbody tr[data-id]').length === 3", 20, "3 jobs")
            self.shot("tenant-jobs")
            n1 = len(b.errors)
            self.go("#/admin/fleet", "admin/fleet", "!!document.querySelector('#refused')")
            msg = b.text("#refused")
            self.assertIn("permission_denied", msg)
            self.assertIn("admins", msg)
            self.shot("tenant-refused")
            self.go("#/tenant/submit", "tenant/submit", "!!document.querySelector('#spec')")
            b.fill("#spec", "name: bad\nspec:\n  gpusPerNode: 0\n  maxDuration: 10m\n  command: [\"true\"]\n")
            b.click("#submit")
            field = b.wait("(() => { const e = document.querySelector('.field-error');"
                           " return e && e.dataset.field; })()", 20, "the field error")
            self.assertEqual(field, "spec.gpusPerNode")
            self.assertIn("invalid_argument", b.text(".field-error"))
            self.shot("tenant-submit-error")
            self.assertEqual(self.errors_since(n1, allow_api_refusals=True), [])
            b.fill("#spec", "name: from-console\nspec:\n  gpusPerNode: 1\n  maxDuration: 10m\n"
                            "  priorityClass: low\n  command: [\"sleep\", \"5\"]  # a comment\n")
            b.click("#submit")
            jid = b.wait("(() => { const a = document.querySelector('#submitted a');"
                         " return a && a.textContent.replace('job ', ''); })()", 20, "the new job")
            j = common.get_job(c, self.tok, jid)
            self.assertEqual((j["name"], j["spec"]["priorityClass"]), ("from-console", "PRIORITY_CLASS_LOW"))
            self.go("#/tenant/job/%s" % self.pending["id"], "tenant/job", "!!document.querySelector('#explain .explanation')")
            self.shot("tenant-job")
            self.go("#/tenant/spend", "tenant/spend", "!!document.querySelector('figure[data-chart=spend]')")
            b.wait("(() => { const f = document.querySelector('figure[data-chart=spend]');"
                   " return Number(f.dataset.points) > 0; })()", 20, "spend points")
            self.shot("tenant-spend")

        with self.subTest("a revoked token signs the user out"):
            n2 = len(b.errors)
            toks = ok(c.admin("ListTokens", {"tenantId": self.tenant["id"]}))["tokens"]
            for t in toks:
                ok(c.admin("RevokeToken", {"tokenId": t["id"]}))
            time.sleep(0.5)
            b.eval("GM.pollNow(); true")
            b.wait("!!document.querySelector('#token')", 20, "the sign-in form after revocation")
            self.assertIn("unauthenticated", b.text("#banner"))
            self.assertIsNone(b.eval("sessionStorage.getItem('gpumatch.token')"))
            self.assertEqual(self.errors_since(n2, allow_api_refusals=True), [])

        n3 = len(b.errors)
        with self.subTest("operator: my nodes, verification, drain and undrain, earnings"):
            self.sign_in(self.op_tok, "operator/nodes")
            b.wait("document.querySelectorAll('table.nodes tbody tr[data-id]').length === 2", 20, "own 2 nodes")
            self.shot("operator-nodes")
            nid = self.agents[1].id
            self.go("#/operator/node/%s" % nid, "operator/node", "!!document.querySelector('#drain')")
            self.assertIn("Verification", b.text("#verification"))
            b.click("#drain")
            b.wait("!!document.querySelector('#undrain')", 20, "the node to drain")
            node = ok(c.call("NodeService", "GetNode", {"nodeId": nid}, token=self.op_tok))["node"]
            self.assertEqual(node["state"], "NODE_STATE_DRAINING")
            self.shot("operator-node")
            b.click("#undrain")
            b.wait("!!document.querySelector('#drain')", 20, "the node to undrain")
            self.go("#/operator/earnings", "operator/earnings", "!!document.querySelector('figure[data-chart=op-utilization]')")
            b.wait("Number(document.querySelector('figure[data-chart=op-utilization]').dataset.points) > 0", 20)
            self.shot("operator-earnings")
        self.assertEqual(self.errors_since(n3), [], "browser errors in the operator walk")
