"""What a new user meets in the first hour, each as it was found wrong:
plain ledger errors (no SQL text), tenant balances in admin tables, job
tables that say what the JSON says, one money format, an explanation that
states each fact once, --version on every program, login that checks its
token, and admission errors in currency rather than micros."""

import os
import re
import subprocess
import tempfile

import common
from cluster import BUILD
from clitools import JOBS_DIR, Agent, cli, cli_env, cli_json
from common import ItCase

SQL_TEXT = re.compile(r"ERROR:|CONTEXT:|PL/pgSQL|gm_ledger|line \d+ at", re.I)


def setUpModule():
    common.setup_module(__name__, ["--allow_unverified=true", "--cycle_interval_ms=200"])


def tearDownModule():
    common.teardown_module(__name__)


class FirstHourTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.admin = c.admin_token
        cls.tenant, cls.ttok = c.new_tenant(funds_micros=0)
        cls.op, cls.otok = c.new_operator(node_limit=20)

    def run_cli(self, *args, token=None, rc=0):
        r = cli(self.c, *args, token=token if token is not None else self.admin)
        self.assertEqual(r.returncode, rc, "gpumatch %s\nstdout:\n%s\nstderr:\n%s"
                         % (" ".join(map(str, args)), r.stdout, r.stderr))
        return r

    def assert_one_plain_line(self, text):
        self.assertEqual(len(text.strip().splitlines()), 1, text)
        self.assertNotRegex(text, SQL_TEXT)

    def test_version_everywhere(self):
        for prog, args in (("cli/gpumatch", ["--version"]), ("server/gpumatchd", ["--version"]),
                           ("gpu-probe/gpu-probe", ["--version"]),
                           ("sim/tool/gpumatch-sim", ["--version"])):
            with self.subTest(prog=prog):
                r = subprocess.run([os.path.join(BUILD, prog)] + args, capture_output=True,
                                   text=True, timeout=30)
                self.assertEqual(r.returncode, 0, r.stderr)
                name = os.path.basename(prog)
                self.assertRegex(r.stdout, r"^%s v0\.\d+\.\d+( \(git [^)]+\))?\n$" % name)

    def test_topup_and_payout_errors_are_plain(self):
        t, _ = self.c.new_tenant(funds_micros=0)
        self.run_cli("admin", "topup", t["id"], "10", "--idempotency-id", "fh-once")
        # the same id again with another amount: refused, in one sentence
        r = self.run_cli("admin", "topup", t["id"], "11", "--idempotency-id", "fh-once", rc=1)
        self.assert_one_plain_line(r.stderr)
        self.assertIn("--idempotency-id: already used", r.stderr)
        # the same id with the same content: the first transfer, not a second
        r = self.run_cli("admin", "topup", t["id"], "10", "--idempotency-id", "fh-once")
        self.assertRegex(r.stdout, r"DUPLICATE\s+true")
        # a payout above the operator's earnings
        r = self.run_cli("admin", "payout", self.op["id"], "5", "--idempotency-id", "fh-pay",
                         rc=1)
        self.assert_one_plain_line(r.stderr)
        self.assertIn("AMOUNT: exceeds the operator's unpaid earnings", r.stderr)
        self.assertNotIn("micros", r.stderr.lower())

    def test_tenant_balance_in_admin_tables(self):
        t, _ = self.c.new_tenant(funds_micros=0)
        self.run_cli("admin", "topup", t["id"], "9999.98", "--idempotency-id", "fh-bal")
        r = self.run_cli("admin", "tenants", "get", t["id"])
        self.assertRegex(r.stdout, r"BALANCE\s+9999\.98\n")
        self.assertRegex(r.stdout, r"HELD\s+0\.00\n")
        r = self.run_cli("admin", "tenants", "list")
        row = [l for l in r.stdout.splitlines() if l.split()[:2] == [t["id"], t["name"]]]
        self.assertEqual(len(row), 1, r.stdout)
        self.assertIn("9999.98", row[0])
        j = cli_json(self.c, "admin", "tenants", "get", t["id"], token=self.admin)
        self.assertEqual(j["tenant"]["balanceMicros"], "9999980000")

    def test_admission_error_speaks_money(self):
        # no funds: a 4x8 job's worst case (3.00 x 32 GPUs x 72 h) cannot be held
        r = self.run_cli("submit", "--gpus", "8", "--nodes", "4", "--duration", "72h",
                         "--max-price", "3", "--", "true", token=self.ttok, rc=1)
        self.assert_one_plain_line(r.stderr)
        self.assertNotIn("micros", r.stderr)
        self.assertNotIn("MaxDurationUs", r.stderr)
        self.assertIn("worst case costs 6912.00 ", r.stderr)

    def test_job_tables_and_explain(self):
        t, tok = self.c.new_tenant()
        ag = Agent(self.c, self.otok, "a100-x8.json", "fh-a100")
        try:
            ag.start()
            ag.node_id()
            jid = self.run_cli("submit", os.path.join(JOBS_DIR, "train-4x8.yaml"),
                               token=tok).stdout.strip()
            hello = self.run_cli("submit", os.path.join(JOBS_DIR, "hello.yaml"), "--watch",
                                 token=tok).stdout.split()[0]
            # list: GPUs of the whole job; money rounded to the cent
            r = self.run_cli("list", token=tok)
            rows = {l.split()[0]: l for l in r.stdout.splitlines()[1:]}
            self.assertRegex(rows[jid], r"\bQUEUED\s+TRAINING\s+32\s")
            self.assertNotRegex(r.stdout, r"\d\.\d{3,}")
            self.assertRegex(rows[hello], r"(<0\.01|\d+\.\d\d)$")
            # get: node count, no price cap, constraints, no exit status yet
            r = self.run_cli("get", jid, token=tok)
            self.assertRegex(r.stdout, r"NODE COUNT\s+4\n")
            self.assertRegex(r.stdout, r"MAX PRICE/GPU-H\s+no cap\n")
            self.assertRegex(r.stdout, r"CONSTRAINTS\s+.*regions us-east")
            self.assertRegex(r.stdout, r"EXIT CODE\s+-\n")
            self.assertNotIn("SIGNAL", r.stdout)
            # an ended job keeps its placement and shows its exit status
            r = self.run_cli("get", hello, token=tok)
            self.assertRegex(r.stdout, r"NODE COUNT\s+1\n")
            self.assertRegex(r.stdout, r"NODES\s+\d+\n")
            self.assertRegex(r.stdout, r"GPU INDEXES\s+node \d+: \d+\n")
            self.assertRegex(r.stdout, r"EXIT CODE\s+0\n")
            # explain: each fact once, plurals right, no contradiction
            r = self.run_cli("explain", jid, token=tok)
            self.assertNotIn("fitting nodes", r.stdout)
            self.assertNotIn("could ever host", r.stdout)
            self.assertRegex(r.stdout, r"\n[01] of 1 node fits? now; it needs 4 nodes in one "
                                       r"region, and at most [01] fits? in any one region\n")
            self.assertEqual(r.stdout.count("4 nodes"), 1, r.stdout)
            self.assertIn("even with every node idle it could not start", r.stdout)
        finally:
            ag.stop()

    def test_login_checks_the_token(self):
        d = tempfile.mkdtemp(dir=self.c.dir)
        cfg = os.path.join(d, "config")
        url = "http://127.0.0.1:%d" % self.c.port
        env = cli_env(None, extra={"GPUMATCH_CONFIG": cfg})
        r = cli(None, "login", "--url", url, "--token", "gm_bogus", env=env)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assert_one_plain_line(r.stderr)
        self.assertIn("--token", r.stderr)
        self.assertFalse(os.path.exists(cfg), "a refused token is not saved")
        # an operator token is valid though it may not list jobs
        r = cli(None, "login", "--url", url, "--token", self.otok, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.exists(cfg))
        # offline: --no-check saves without asking
        r = cli(None, "login", "--url", "http://127.0.0.1:1", "--token", "gm_x", "--no-check",
                env=env)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_first_policy_change_rolls_back_to_the_builtin(self):
        d = tempfile.mkdtemp(dir=self.c.dir)
        builtin = cli_json(self.c, "admin", "policy", "get", token=self.admin)["policy"]
        # enums without their type prefix, all of them
        r = self.run_cli("admin", "policy", "get")
        self.assertNotRegex(r.stdout, r"FAIRNESS_MODE_|FIT_MODE_")
        path = os.path.join(d, "p.json")
        import json
        with open(path, "w") as f:
            json.dump(dict(builtin, wPrice=3.5), f)
        diff = self.run_cli("admin", "policy", "diff", path).stdout
        out = self.run_cli("admin", "policy", "apply", path, "--comment", "first").stdout
        # apply prints the change once, in the diff's own format
        self.assertEqual(out.count("W_PRICE"), 1, out)
        self.assertIn(diff.strip().splitlines()[0].split()[0], out)
        self.assertRegex(out, r"W_PRICE\s+\S+ -> 3\.5\n")
        # version 0 is the built-in policy, not silently the active one
        j = cli_json(self.c, "admin", "policy", "get", "--version", "0", token=self.admin)
        self.assertNotEqual(j["policy"].get("wPrice"), 3.5)
        self.assertEqual(j["policy"].get("wPrice"), builtin.get("wPrice"))
        r = self.run_cli("admin", "policy", "rollback", "0", "--comment", "undo the first")
        self.assertRegex(r.stdout, r"policy version \d+ is active")
        now = cli_json(self.c, "admin", "policy", "get", token=self.admin)["policy"]
        self.assertEqual(now.get("wPrice"), builtin.get("wPrice"))
        r = self.run_cli("admin", "policy", "get", "--version", "x", rc=2)
        self.assert_one_plain_line(r.stderr.splitlines()[0])
        self.assertIn("--version", r.stderr)

    def test_submit_flags_and_spec_errors(self):
        t, tok = self.c.new_tenant()
        jid = self.run_cli("submit", "--min-cc", "8.0", "--min-tflops", "12.5",
                           "--min-tflops-total", "100", "--toleration", "gpu=a100",
                           "--toleration", "spot", "--duration", "1m", "--", "true",
                           token=tok).stdout.strip()
        spec = cli_json(self.c, "get", jid, token=tok)["job"]["spec"]
        self.assertEqual(spec["minComputeCapabilityMajor"], 8)
        self.assertEqual(spec["minTflopsPerGpu"], 12.5)
        self.assertEqual(spec["minTflopsTotal"], 100)
        self.assertEqual([x["key"] for x in spec["tolerations"]], ["gpu", "spot"])
        r = self.run_cli("submit", "--min-cc", "eight", "--duration", "1m", "--", "true",
                         token=tok, rc=2)
        self.assert_one_plain_line(r.stderr)
        self.assertIn("--min-cc", r.stderr)
        # an unknown field in a spec file: one line naming the file and the field
        d = tempfile.mkdtemp(dir=self.c.dir)
        path = os.path.join(d, "bad.yaml")
        with open(path, "w") as f:
            f.write("spec:\n  gpusPerNode: 1\n  maxDuration: 1m\n  bogusField: 3\n"
                    "  command: [\"true\"]\n")
        r = self.run_cli("submit", path, token=tok, rc=2)
        self.assert_one_plain_line(r.stderr)
        self.assertIn(path, r.stderr)
        self.assertIn("bogusField", r.stderr)

    def test_policy_simulate_table_and_flags(self):
        d = tempfile.mkdtemp(dir=self.c.dir)
        path = os.path.join(d, "p.json")
        import json
        with open(path, "w") as f:
            json.dump(cli_json(self.c, "admin", "policy", "get", token=self.admin)["policy"], f)
        r = self.run_cli("admin", "policy", "simulate", path)
        rows = r.stdout.splitlines()
        self.assertRegex(rows[0], r"^POLICY\s+PLACED\s+PENDING\s+PREEMPTIONS\s+WAIT P50")
        # a wait of zero is 0s, not "not known"
        for row in rows[1:]:
            self.assertRegex(row, r"\s(\d+(ms|s)|\d+m\d\ds|\d+h\d\dm)\s", row)
        for flags in (["--seed", "3"], ["--preemptible"], ["--window", "0,1h"],
                      ["--arrival-scale", "2"]):
            with self.subTest(flags=flags):
                r = self.run_cli("admin", "policy", "simulate", path, *flags, rc=2)
                self.assert_one_plain_line(r.stderr)
                self.assertIn("--trace", r.stderr)
        for flags in (["--window", "7d,1d"], ["--arrival-scale", "-1"]):
            with self.subTest(flags=flags):
                r = self.run_cli("admin", "policy", "simulate", path, "--trace",
                                 "msr-itp/cluster01", *flags, rc=2)
                self.assertIn(flags[0], r.stderr)
        r = self.run_cli("admin", "policy", "simulate", "--help")
        for flag in ("--window", "--arrival-scale", "--seed", "--preemptible"):
            self.assertIn(flag, r.stdout)
