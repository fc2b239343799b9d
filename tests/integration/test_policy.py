"""AdminService policy: Get/Set/List, validation (invalid_argument naming the
field, nothing stored), optimistic concurrency, audit, and a change taking
effect at the next scheduling cycle without a restart."""

import json
import os
import re

import common
from cluster import SOURCE
from common import ItCase, NodeAgent, job_spec, node_req, submit

POLICY_READ_ONLY = ("version", "createdBy", "createdAtUs", "comment")


def setUpModule():
    common.setup_module(__name__, ["--allow_unverified=true", "--cycle_interval_ms=200"])


def tearDownModule():
    common.teardown_module(__name__)


class PolicyTest(ItCase):
    def active(self):
        b = self.assertOk(self.c.admin("GetPolicy", {}))
        self.assertIn("policy", b, b)
        return b["policy"], b.get("activeVersion", "0")

    def candidate(self, **over):
        p, _ = self.active()
        p = {k: v for k, v in p.items() if k not in POLICY_READ_ONLY}
        p.update(over)
        return p

    def set_policy(self, comment="it", **over):
        return self.c.admin("SetPolicy", {"policy": self.candidate(**over), "comment": comment})

    def test_0_initial_policy(self):
        # runs first (name order): the policy built from the flags, which
        # may be version 0 until an admin stores one
        p, active = self.active()
        self.assertEqual(p.get("version", "0"), active)
        self.assertIs(p.get("allowUnverified"), True, "--allow_unverified=true: %s" % p)
        self.assertIn(p.get("fitMode"), ("FIT_MODE_PACK", "FIT_MODE_SPREAD"))
        self.assertIn(p.get("fairness"), ("FAIRNESS_MODE_NONE", "FAIRNESS_MODE_FAIR_SHARE"))
        # the built-in policy is the shipped default.json (but for
        # allowUnverified, which comes from the flag)
        with open(os.path.join(SOURCE, "examples", "policies", "default.json")) as f:
            shipped = json.load(f)
        zero = {bool: False, str: "0", int: 0, float: 0}
        for k, want in shipped.items():
            if k == "allowUnverified":
                continue
            got = p.get(k, zero[type(want)])
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                got, want = float(got), float(want)
            self.assertEqual(got, want, "built-in %s differs from default.json" % k)

    def test_1_infeasible_job_given_up_on_an_empty_fleet(self):
        # runs before any test registers a node: no GPU is free and nothing
        # runs, so cycles happen only to give up infeasible jobs
        _, tenant_tok = self.c.new_tenant()
        self.assertOk(self.set_policy(comment="give up", infeasibleTimeoutUs="1000000"))
        try:
            job = submit(self.c, tenant_tok, spec=job_spec(gpus=1))

            def ended():
                b = self.assertOk(self.c.call("JobService", "GetJob", {"jobId": job["id"]},
                                              token=tenant_tok))["job"]
                return b if b.get("state") not in ("JOB_STATE_QUEUED", None) else None
            b = common.wait_for(ended, timeout=60, what="the infeasible job given up")
            self.assertEqual(b["state"], "JOB_STATE_FAILED", b)
            self.assertEqual(b.get("failure", {}).get("reason"), "FAILURE_REASON_UNSCHEDULABLE", b)
            self.assertIn("no node of the fleet can ever host it", b["failure"].get("message"), b)
        finally:
            self.assertOk(self.set_policy(comment="never give up", infeasibleTimeoutUs="0"))

    def test_set_policy_bad_input_stores_nothing(self):
        base = self.candidate()
        cases = [
            ({"policy": base}, "comment"),
            ({"comment": "x"}, "policy"),
            ({"policy": dict(base, wPrice=5000), "comment": "x"}, "w_price"),
            ({"policy": dict(base, wPrice=-1), "comment": "x"}, "w_price"),
            ({"policy": dict(base, fitMode="FIT_MODE_UNSPECIFIED"), "comment": "x"}, "fit_mode"),
            ({"policy": dict(base, scoreNodes=0), "comment": "x"}, "score_nodes"),
            ({"policy": dict(base, ageMaxUs="0"), "comment": "x"}, "age_max_us"),
            ({"policy": dict(base, reservations=65), "comment": "x"}, "reservations"),
            ({"policy": dict(base, preemptShorterFactor=0.5), "comment": "x"},
             "preempt_shorter_factor"),
            ({"policy": dict(base, preemptMinRunUs="-1"), "comment": "x"},
             "preempt_min_run_us"),
            ({"policy": dict(base, wFrag=1000.5), "comment": "x"}, "w_frag"),
            ({"policy": dict(base, wFrag=-2), "comment": "x"}, "w_frag"),
            ({"policy": dict(base, platformFeePpm=1000001), "comment": "x"}, "platform_fee_ppm"),
            ({"policy": dict(base, wNope=1), "comment": "x"}, "wNope"),
            ({"policy": dict(base, comparativeAdvantage=1.5), "comment": "x"},
             "comparative_advantage"),
            ({"policy": dict(base, wCostPerWork=-1), "comment": "x"}, "w_cost_per_work"),
            # retired: its value moved to comparativeAdvantage (migration 0015)
            ({"policy": dict(base, speedupRelative=1), "comment": "x"}, "speedupRelative"),
        ]
        for req, field in cases:
            with self.subTest(case=json.dumps(req)[:120]):
                before = (self.c.count("policies"), self.c.count("policy_audit"))
                r = self.c.admin("SetPolicy", req)
                self.assertError(r, "invalid_argument", field=field, msg=json.dumps(req)[:160])
                self.assertEqual((self.c.count("policies"), self.c.count("policy_audit")), before)

    def test_validate_only_stores_nothing(self):
        p, active = self.active()
        before = self.c.count("policies")
        b = self.assertOk(self.c.admin("SetPolicy", {
            "policy": self.candidate(wPrice=p.get("wPrice", 0) + 1), "comment": "try",
            "validateOnly": True}))
        self.assertEqual(self.c.count("policies"), before)
        self.assertEqual(self.active()[1], active)
        changes = (b.get("audit") or {}).get("changes", [])
        self.assertIn("w_price", [c.get("field") for c in changes], b)

    def test_set_get_list_and_audit(self):
        p, active = self.active()
        new_w = p.get("wPrice", 0) + 2
        b = self.assertOk(self.set_policy(comment="cheaper first", wPrice=new_w))
        v = b["policy"]["version"]
        self.assertGreater(int(v), int(active))
        self.assertEqual(b["policy"].get("wPrice"), new_w)
        self.assertEqual(b["policy"].get("comment"), "cheaper first")
        self.assertTrue(b["policy"].get("createdBy"), b)
        audit = b.get("audit") or {}
        self.assertEqual(audit.get("previousVersion"), active)
        fields = [c.get("field") for c in audit.get("changes", [])]
        self.assertIn("w_price", fields, audit)
        self.assertNotIn("w_perf", fields, "only what changed: %s" % audit)
        got, now = self.active()
        self.assertEqual(now, v)
        self.assertEqual(got.get("wPrice"), new_w)
        old = self.assertOk(self.c.admin("GetPolicy", {"version": active}))
        self.assertEqual(old["policy"]["version"], active)
        lst = self.assertOk(self.c.admin("ListPolicies", {}))
        versions = [x["version"] for x in lst.get("policies", [])]
        self.assertEqual(versions[0], v, "newest first")
        self.assertEqual(versions, sorted(versions, key=int, reverse=True))
        self.assertEqual(lst.get("activeVersion"), v)
        au = self.assertOk(self.c.admin("ListPolicyAudit", {}))
        e = au.get("entries", [])[0]
        self.assertEqual(e.get("version"), v)
        self.assertEqual(e.get("comment"), "cheaper first")
        self.assertTrue(e.get("actor"))

    def test_shorter_preemption_fields_stored_and_audited(self):
        p, _ = self.active()
        try:
            b = self.assertOk(self.set_policy(comment="shorter first", preemptShorterFactor=4,
                                              preemptMinRunUs="1800000000"))
            self.assertEqual(b["policy"].get("preemptShorterFactor"), 4, b)
            self.assertEqual(b["policy"].get("preemptMinRunUs"), "1800000000", b)
            changes = {c.get("field"): c for c in (b.get("audit") or {}).get("changes", [])}
            self.assertEqual(changes["preempt_shorter_factor"].get("newValue"), "4", changes)
            self.assertEqual(changes["preempt_min_run_us"].get("newValue"), "1800000000",
                             changes)
            got, _ = self.active()
            self.assertEqual(got.get("preemptShorterFactor"), 4, got)
        finally:
            self.assertOk(self.set_policy(
                comment="back", preemptShorterFactor=p.get("preemptShorterFactor", 0),
                preemptMinRunUs=p.get("preemptMinRunUs", "0")))

    def test_frag_weight_stored_and_audited(self):
        p, _ = self.active()
        try:
            b = self.assertOk(self.set_policy(comment="keep big nodes whole", wFrag=5))
            self.assertEqual(b["policy"].get("wFrag"), 5, b)
            changes = {c.get("field"): c for c in (b.get("audit") or {}).get("changes", [])}
            self.assertEqual(changes["w_frag"].get("newValue"), "5", changes)
            got, _ = self.active()
            self.assertEqual(got.get("wFrag"), 5, got)
        finally:
            self.assertOk(self.set_policy(comment="back", wFrag=p.get("wFrag", 0)))

    def test_objective_fields_stored(self):
        p, _ = self.active()
        try:
            b = self.assertOk(self.set_policy(comment="objective", comparativeAdvantage=0.25,
                                              wCostPerWork=3))
            changes = {c.get("field"): c for c in (b.get("audit") or {}).get("changes", [])}
            self.assertEqual(changes["w_cost_per_work"].get("newValue"), "3", changes)
            got, _ = self.active()
            self.assertEqual((got.get("comparativeAdvantage"), got.get("wCostPerWork")),
                             (0.25, 3), got)
        finally:
            self.assertOk(self.set_policy(
                comment="back", comparativeAdvantage=p.get("comparativeAdvantage", 0),
                wCostPerWork=p.get("wCostPerWork", 0)))

    def test_migration_0015_moves_speedup_relative(self):
        # the migration's walker, run on a Policy message written before it:
        # w_price (2) = 2.0, speedup_relative (33) = 1.0 whose value bytes
        # hold 0x89 0x02 by chance, comment (26) = "x"; field 33 becomes 37
        # and nothing else moves
        with open(os.path.join(SOURCE, "migrations",
                               "0015_policy_comparative_advantage.sql")) as f:
            sql = f.read()
        fn = re.search(r"CREATE FUNCTION gm_policy_pb_0015.*?\n\$\$;", sql, re.S).group(0)
        fn = fn.replace("gm_policy_pb_0015", "pg_temp.gm_policy_pb_0015_test")
        old = "11" + "0000000000000040" + "8902" + "890200000000f03f" + "d2010178"
        new = "11" + "0000000000000040" + "a902" + "890200000000f03f" + "d2010178"
        got = self.c.psql(fn + " SELECT encode(pg_temp.gm_policy_pb_0015_test("
                          "decode('%s', 'hex')), 'hex');" % old)
        self.assertEqual(got[-1][0], new)

    def test_warning_when_no_ready_node_is_verified(self):
        _, op_tok = self.c.new_operator()
        ag = NodeAgent.register(self.c, op_tok, node_req(self.c.unique("wn")))
        ag.start_heartbeats(0.5)
        try:
            common.wait_for(lambda: self.c.count("nodes", "state = 2") > 0, timeout=15,
                            what="a ready node")
            # nothing probes nodes in this module: none is verified
            self.assertEqual(self.c.count("nodes", "verification_status = 3"), 0)
            b = self.assertOk(self.c.admin("SetPolicy", {
                "policy": self.candidate(allowUnverified=False), "comment": "try",
                "validateOnly": True}))
            warns = b.get("warnings", [])
            self.assertTrue(warns and "allowUnverified" in warns[0], b)
            b = self.assertOk(self.c.admin("SetPolicy", {
                "policy": self.candidate(allowUnverified=True), "comment": "try",
                "validateOnly": True}))
            self.assertFalse(b.get("warnings"), b)
        finally:
            ag.stop_heartbeats()

    def test_expected_version_conflict_is_aborted(self):
        _, active = self.active()
        before = self.c.count("policies")
        r = self.c.admin("SetPolicy", {"policy": self.candidate(), "comment": "stale",
                                       "expectedVersion": str(int(active) + 100)})
        self.assertError(r, "aborted")
        self.assertEqual(self.c.count("policies"), before)
        self.assertOk(self.c.admin("SetPolicy", {"policy": self.candidate(), "comment": "fresh",
                                                 "expectedVersion": active}))

    def test_unknown_version_is_not_found(self):
        self.assertError(self.c.admin("GetPolicy", {"version": "987654"}), "not_found")

    def test_change_takes_effect_next_cycle(self):
        _, tenant_tok = self.c.new_tenant()
        _, op_tok = self.c.new_operator()
        pool = self.c.unique("pool")
        ag = NodeAgent.register(self.c, op_tok, node_req(self.c.unique("pn"),
                                                         labels={"pool": pool}))
        ag.start_heartbeats(0.5)
        try:
            self.assertOk(self.set_policy(comment="verified only", allowUnverified=False))
            job = submit(self.c, tenant_tok, spec=job_spec(gpus=1, labelSelector={"pool": pool}))

            def explained():
                r = self.c.call("JobService", "ExplainJob", {"jobId": job["id"]},
                                token=tenant_tok)
                if r.code == "unavailable":  # no scheduler leader yet: retry
                    return None
                b = self.assertOk(r)
                counts = (b.get("explanation") or {}).get("counts", [])
                return [x for x in counts if x.get("reason") == "EXPLAIN_REASON_UNVERIFIED"]
            common.wait_for(explained, timeout=10,
                            what="the job explained as blocked by UNVERIFIED")
            b = self.assertOk(ag.acquire(wait_ms=1000))
            self.assertFalse(b.get("lease"), "an unverified node got work: %s" % b)

            self.assertOk(self.set_policy(comment="unverified ok", allowUnverified=True))
            lease = ag.acquire_lease(within=10)["lease"]
            self.assertEqual(lease["jobId"], job["id"])
            self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=1))
        finally:
            ag.stop_heartbeats()
            p, _ = self.active()
            if not p.get("allowUnverified"):
                self.set_policy(comment="restore", allowUnverified=True)


if __name__ == "__main__":
    import sys
    import run
    raise SystemExit(run.main(["-v", __name__] + sys.argv[1:]))
