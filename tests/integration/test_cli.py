"""The gpumatch command against a real gpumatchd (Postgres, Redis): every
subcommand's --help, exit codes (usage 2, server error 1, unreachable 3),
configuration precedence and `login`, JSON output that parses, tables that
are stable, spec files (YAML and JSON) with errors naming the field, the
admin, operator and tenant commands, and the commands whose RPCs other
parts of gpumatchd provide (shown cleanly while they answer unimplemented)."""

import json
import os
import re
import stat
import subprocess
import tempfile

import common
import cluster
from cluster import BUILD
from clitools import GPUMATCH, JOBS_DIR, NODES_DIR, cli, cli_env, cli_json
from common import ItCase


def setUpModule():
    common.setup_module(__name__, ["--allow_unverified=true", "--cycle_interval_ms=200"])


def tearDownModule():
    common.teardown_module(__name__)


def commands():
    """Every command the top-level help lists."""
    r = cli(None, "--help")
    assert r.returncode == 0, r
    body = r.stdout.split("commands:")[1].split("global flags:")[0]
    return [re.split(r"\s{2,}", line.strip())[0] for line in body.splitlines() if line.strip()]


class CliTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.admin = c.admin_token
        cls.tenant, cls.ttok = c.new_tenant()
        cls.op, cls.otok = c.new_operator(node_limit=20)

    def run_cli(self, *args, token=None, rc=0):
        r = cli(self.c, *args, token=token if token is not None else self.admin)
        self.assertEqual(r.returncode, rc, "gpumatch %s\nstdout:\n%s\nstderr:\n%s"
                         % (" ".join(map(str, args)), r.stdout, r.stderr))
        return r

    # ---- help, usage errors, exit codes ----

    def test_every_subcommand_has_help(self):
        cmds = commands()
        self.assertGreater(len(cmds), 40)
        for words in cmds:
            with self.subTest(cmd=words):
                r = cli(None, *words.split(), "--help")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertTrue(r.stdout.startswith("usage: gpumatch " + words), r.stdout[:200])
                self.assertIn("--output", r.stdout)
        for group in ("node", "admin", "admin tenants", "admin policy"):
            r = cli(None, *group.split(), "--help")
            self.assertEqual(r.returncode, 0)
            self.assertIn("usage: gpumatch %s COMMAND" % group, r.stdout)
            r = cli(None, *group.split())
            self.assertEqual(r.returncode, 2, "a bare group is a usage error")

    def test_usage_errors_exit_2(self):
        cases = [
            ["list", "--bogus"],
            ["get"],
            ["get", "abc"],
            ["get", "1", "2"],
            ["list", "--output", "yaml"],
            ["frobnicate"],
            ["node", "frobnicate"],
            ["submit", "--duration", "soon", "--", "true"],
            ["submit", "--max-price", "-1", "--duration", "1m", "--", "true"],
            ["submit", "--gpus", "1"],
            ["submit", "--label", "novalue", "--duration", "1m", "--", "true"],
            ["submit", "/nonexistent/spec.yaml"],
            ["admin", "tokens", "create"],
            ["admin", "tenants", "create"],
            ["admin", "topup", "1", "ten", "--idempotency-id", "x"],
            ["watch", "1", "--interval", "0"],
            ["list", "--timeout", "0"],
        ]
        for args in cases:
            with self.subTest(args=args):
                r = cli(self.c, *args, token=self.admin)
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertTrue(r.stderr.startswith("gpumatch"), r.stderr)
                self.assertEqual(r.stdout, "")
        r = cli(None, "login", env=cli_env(None))
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--url", r.stderr)

    def test_unreachable_server_exit_3(self):
        env = cli_env(None, self.admin, {"GPUMATCH_URL": "http://127.0.0.1:1"})
        r = cli(None, "list", env=env)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("cannot reach gpumatchd at http://127.0.0.1:1", r.stderr)
        r = cli(None, "list", "--url", "ftp://x", env=env)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("url", r.stderr)

    def test_server_errors_exit_1_with_code_and_message(self):
        r = self.run_cli("get", "987654321", token=self.ttok, rc=1)
        self.assertIn("JobService/GetJob failed: not_found:", r.stderr)
        r = self.run_cli("list", token="gm_not_a_token", rc=1)
        self.assertIn("unauthenticated", r.stderr)
        r = self.run_cli("admin", "tenants", "list", token=self.ttok, rc=1)
        self.assertIn("permission_denied", r.stderr)

    def test_config_precedence_and_login(self):
        d = tempfile.mkdtemp(dir=self.c.dir)
        cfg = os.path.join(d, "sub", "config")
        url = "http://127.0.0.1:%d" % self.c.port
        env = cli_env(None, extra={"GPUMATCH_CONFIG": cfg})
        r = cli(None, "login", "--url", url, "--token", self.admin, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(stat.S_IMODE(os.stat(cfg).st_mode), 0o600)
        with open(cfg) as f:
            self.assertIn("token = " + self.admin, f.read())
        # the file alone is enough
        r = cli(None, "admin", "tenants", "list", env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        # the environment beats the file, a flag beats the environment
        env2 = dict(env, GPUMATCH_TOKEN="gm_wrong")
        self.assertEqual(cli(None, "admin", "tenants", "list", env=env2).returncode, 1)
        r = cli(None, "admin", "tenants", "list", "--token", self.admin, env=env2)
        self.assertEqual(r.returncode, 0, r.stderr)
        env3 = dict(env, GPUMATCH_URL="http://127.0.0.1:1")
        self.assertEqual(cli(None, "admin", "tenants", "list", env=env3).returncode, 3)
        # XDG_CONFIG_HOME is the default place
        xdg = os.path.join(d, "xdg")
        env4 = cli_env(None, extra={"XDG_CONFIG_HOME": xdg})
        env4.pop("GPUMATCH_CONFIG")
        r = cli(None, "login", "--url", url, "--token", self.admin, env=env4)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.exists(os.path.join(xdg, "gpumatch", "config")))

    # ---- tenants: submit, get, list, explain, cancel ----

    def test_submit_every_example_spec(self):
        for f in sorted(os.listdir(JOBS_DIR)):
            with self.subTest(spec=f):
                r = self.run_cli("submit", os.path.join(JOBS_DIR, f), token=self.ttok)
                jid = r.stdout.strip()
                self.assertRegex(jid, r"^[1-9][0-9]*$")
                j = cli_json(self.c, "get", jid, token=self.ttok)["job"]
                self.assertIn(j["state"], ("JOB_STATE_QUEUED", "JOB_STATE_FAILED"))
                self.assertGreater(int(j["spec"]["maxDurationUs"]), 0)
                self.assertTrue(j["spec"].get("command"))
        j = cli_json(self.c, "submit", os.path.join(JOBS_DIR, "batch-price-cap.json"),
                     token=self.ttok)["job"]
        self.assertEqual(j["spec"]["maxPricePerGpuHourMicros"], "400000")
        self.assertEqual(j["spec"]["maxDurationUs"], str(2 * 3600 * 10**6))
        self.assertEqual(j["spec"]["priorityClass"], "PRIORITY_CLASS_LOW")
        self.assertEqual(j["spec"]["env"], {"SHARD": "17"})
        j = cli_json(self.c, "submit", os.path.join(JOBS_DIR, "train-4x8.yaml"),
                     token=self.ttok)["job"]
        self.assertEqual((j["spec"]["gpusPerNode"], j["spec"]["nodeCount"]), (8, 4))
        self.assertEqual(j["spec"]["allowedRegions"], ["us-east"])
        self.assertEqual(j["spec"]["kind"], "JOB_KIND_TRAINING")

    def test_bad_spec_files_name_the_field(self):
        d = tempfile.mkdtemp(dir=self.c.dir)
        cases = [
            ("a.yaml", "spec:\n  gpusPerNode: x\n  maxDuration: 1m\n", "spec.gpusPerNode"),
            ("b.yaml", "spec:\n  gpusPerNode: 1\n  maxDuration: soon\n", "spec.maxDuration"),
            ("c.yaml", "spec:\n  gpusPerNode: 1\n  bogus: 1\n", "bogus"),
            ("d.yaml", "spec: [1\n", "line"),
            ("e.json", '{"spec": {"gpusPerNode": 1,}}', "line 1"),
            ("f.yaml", "name: x\n", "spec: required"),
            ("g.yaml", "spec:\n  kind: quantum\n  maxDuration: 1m\n", "spec.kind"),
            ("h.yaml", "spec:\n  gpusPerNode: 1\n  gpusPerNode: 2\n", "duplicate key"),
        ]
        for name, text, want in cases:
            with self.subTest(name=name):
                p = os.path.join(d, name)
                with open(p, "w") as f:
                    f.write(text)
                r = self.run_cli("submit", p, token=self.ttok, rc=2)
                self.assertIn(want, r.stderr)
        # the server's own checks come back as server errors naming the field
        p = os.path.join(d, "srv.yaml")
        with open(p, "w") as f:
            f.write("spec:\n  gpusPerNode: 1\n  command: [true, 1]\n")
        r = self.run_cli("submit", p, token=self.ttok, rc=1)
        self.assertIn("invalid_argument", r.stderr)
        self.assertRegex(r.stderr, "max_?[dD]uration")

    def test_submit_flags_get_list_explain_cancel(self):
        r = self.run_cli("submit", "--name", "flagjob", "--gpus", "2", "--duration", "90m",
                         "--max-price", "2.50", "--priority", "high", "--region", "mars",
                         "--label", "pool=none", "--env", "A=1", "--idempotency-key",
                         self.c.unique("k"), "--", "echo", "hi", token=self.ttok)
        jid = r.stdout.strip()
        j = cli_json(self.c, "get", jid, token=self.ttok)["job"]
        self.assertEqual(j["name"], "flagjob")
        self.assertEqual(j["spec"]["gpusPerNode"], 2)
        self.assertEqual(j["spec"]["maxDurationUs"], str(90 * 60 * 10**6))
        self.assertEqual(j["spec"]["maxPricePerGpuHourMicros"], "2500000")
        self.assertEqual(j["spec"]["priorityClass"], "PRIORITY_CLASS_HIGH")
        self.assertEqual(j["spec"]["command"], ["echo", "hi"])
        self.assertEqual(j["spec"]["labelSelector"], {"pool": "none"})
        # the same idempotency key returns the same job
        key = self.c.unique("same")
        a = self.run_cli("submit", "--idempotency-key", key, "--duration", "1m", "--", "true",
                         token=self.ttok).stdout
        b = self.run_cli("submit", "--idempotency-key", key, "--duration", "1m", "--", "true",
                         token=self.ttok)
        self.assertEqual(a, b.stdout)
        self.assertIn("used before", b.stderr)
        # get: a field list; list: a table with a header
        out = self.run_cli("get", jid, token=self.ttok).stdout
        self.assertRegex(out, r"(?m)^STATE\s+QUEUED$")
        self.assertRegex(out, r"(?m)^MAX PRICE/GPU-H\s+2\.50$")
        out = self.run_cli("list", "--state", "queued", token=self.ttok).stdout
        self.assertEqual(out.splitlines()[0].split(),
                         ["ID", "NAME", "STATE", "KIND", "GPUS", "ATTEMPTS",
                          "SUBMITTED", "COST"])
        self.assertIn(jid, [line.split()[0] for line in out.splitlines()[1:]])
        # explain: why it waits, per constraint, as a table
        common.wait_for(lambda: cli_json(self.c, "explain", jid, token=self.ttok)
                        .get("explanation"), 10, what="an explanation")
        out = self.run_cli("explain", jid, token=self.ttok).stdout
        self.assertIn("job %s is QUEUED" % jid, out)
        self.assertRegex(out, r"(?m)^REASON\s+NODES\s+DETAIL$")
        e = cli_json(self.c, "explain", jid, token=self.ttok)
        self.assertEqual(e["jobId"], jid)
        # cancel, then watch reports the outcome by its exit code
        out = self.run_cli("cancel", jid, token=self.ttok).stdout
        self.assertEqual(out.strip(), "job %s CANCELLED" % jid)
        r = self.run_cli("watch", jid, token=self.ttok, rc=5)
        self.assertIn("CANCELLED", r.stdout)
        # another tenant cannot see it
        _, other = self.c.new_tenant()
        self.run_cli("get", jid, token=other, rc=1)

    def test_list_paging(self):
        _, tok = self.c.new_tenant()
        ids = [self.run_cli("submit", "--duration", "1m", "--label", "pool=none", "--", "true",
                            token=tok).stdout.strip() for _ in range(5)]
        page = cli_json(self.c, "list", "--page-size", "2", token=tok)
        self.assertEqual(len(page["jobs"]), 2)
        self.assertTrue(page["nextPageToken"])
        page2 = cli_json(self.c, "list", "--page-size", "2", "--page-token",
                         page["nextPageToken"], token=tok)
        self.assertEqual(len(page2["jobs"]), 2)
        allj = cli_json(self.c, "list", "--all", "--page-size", "2", token=tok)["jobs"]
        self.assertEqual(sorted(j["id"] for j in allj), sorted(ids))
        table = self.run_cli("list", "--all", "--page-size", "2", token=tok).stdout
        self.assertEqual(len(table.splitlines()), 6)

    # ---- operators ----

    def test_node_register_list_drain(self):
        name = self.c.unique("cli-node")
        r = self.run_cli("node", "register", "--simulate", os.path.join(NODES_DIR, "a100-x8.json"),
                         "--name", name, "--price", "1.75", "--label", "rack=r1", "-o", "json",
                         token=self.otok)
        n = json.loads(r.stdout)["node"]
        self.assertEqual(n["name"], name)
        self.assertEqual(len(n["gpus"]), 8)
        self.assertEqual(n["pricePerGpuHourMicros"], "1750000")
        self.assertEqual(n["labels"], {"tier": "datacenter", "rack": "r1"})
        self.assertEqual(n["region"], "us-east")
        out = self.run_cli("node", "list", token=self.otok).stdout
        self.assertEqual(out.splitlines()[0].split()[:4], ["ID", "NAME", "STATE", "VERIFIED"])
        self.assertIn(name, out)
        out = self.run_cli("node", "drain", n["id"], "--reason", "maintenance",
                           token=self.otok).stdout
        self.assertRegex(out, r"(?m)^STATE\s+DRAINING$")
        self.run_cli("node", "get", n["id"], token=self.ttok, rc=1)
        # no gpu-probe and no --simulate: a clear usage error
        env = cli_env(self.c, self.otok, {"PATH": "/nonexistent"})
        r = cli(None, "node", "register", "--name", "x", "--region", "r", env=env)
        self.assertEqual(r.returncode, 2)
        self.assertIn("gpu-probe", r.stderr)

    def test_node_register_from_gpu_probe_info(self):
        d = tempfile.mkdtemp(dir=self.c.dir)
        with open(os.path.join(NODES_DIR, "h100-x8.json")) as f:
            gpus = json.load(f)["gpus"][:2]
        probe = os.path.join(d, "gpu-probe")
        with open(probe, "w") as f:
            f.write("#!/bin/sh\n[ \"$1\" = info ] || exit 9\ncat <<'EOF'\n%s\nEOF\n"
                    % json.dumps({"gpus": gpus}))
        os.chmod(probe, 0o755)
        name = self.c.unique("probed")
        n = cli_json(self.c, "node", "register", "--probe", probe, "--name", name, "--region",
                     "eu-north", "--price", "3", token=self.otok)["node"]
        self.assertEqual([g["uuid"] for g in n["gpus"]], [g["uuid"] for g in gpus])
        self.assertEqual(n["region"], "eu-north")
        # the same GPUs cannot be registered as a second node ...
        env = cli_env(self.c, self.otok, {"PATH": d + ":/usr/bin:/bin"})
        r = cli(None, "node", "register", "--name", self.c.unique("onpath"), "--region", "r",
                "--price", "1", env=env)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("gpus[0].uuid", r.stderr)
        self.assertIn("node retire %s" % n["id"], r.stderr)
        # ... until that node is retired (idle: disabled at once)
        out = self.run_cli("node", "retire", n["id"], "--reason", "moved", token=self.otok).stdout
        self.assertRegex(out, r"(?m)^STATE\s+DISABLED$")
        self.assertRegex(out, r"(?m)^STATE REASON\s+retired: moved$")
        # found on PATH when --probe is not given
        r = cli(None, "node", "register", "--name", self.c.unique("onpath"), "--region", "r",
                "--price", "1", env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        # a probe that fails is reported, nothing is registered
        with open(probe, "w") as f:
            f.write("#!/bin/sh\necho no driver >&2\nexit 3\n")
        r = self.run_cli("node", "register", "--probe", probe, "--name", "x", "--region", "r",
                         token=self.otok, rc=2)
        self.assertIn("info failed (exit 3)", r.stderr)
        self.assertIn("--probe", r.stderr)

    def test_node_register_from_the_real_gpu_probe(self):
        # gpu-probe's own `info` output (its CPU reference backend here)
        # becomes the node's GPUs. The CPU device has no compute capability
        # (0.0, which RegisterNode refuses): the wrapper gives it one.
        real = os.path.join(BUILD, "gpu-probe", "gpu-probe")
        d = tempfile.mkdtemp(dir=self.c.dir)
        probe = os.path.join(d, "gpu-probe")
        with open(probe, "w") as f:
            f.write("#!/bin/sh\nset -e\n%s \"$@\" --backend cpu |"
                    " sed 's/\"compute_capability\": \"0.0\"/\"compute_capability\": \"8.6\"/'\n"
                    % real)
        os.chmod(probe, 0o755)
        info = json.loads(subprocess.run([probe, "info"], capture_output=True, text=True,
                                         check=True).stdout)["gpus"]
        # the probe gives identity; the operator states the claim
        r = self.run_cli("node", "register", "--probe", probe, "--name", "x", "--region", "r",
                         "--price", "1", token=self.otok, rc=2)
        self.assertIn("gpus[0].claimed", r.stderr)
        r = self.run_cli("node", "register", "--probe", probe, "--name", "x", "--region", "r",
                         "--price", "1", "--claim", "int4=5", token=self.otok, rc=2)
        self.assertIn("--claim", r.stderr)
        n = cli_json(self.c, "node", "register", "--probe", probe, "--name",
                     self.c.unique("cpu-probed"), "--region", "eu-north", "--price", "1",
                     "--claim", "fp32=0.05", "--claim", "BF16=0.1", token=self.otok)["node"]
        self.assertEqual(n["gpus"][0]["claimed"], {"fp32Tflops": 0.05, "bf16Tflops": 0.1})
        self.assertEqual([g["uuid"] for g in n["gpus"]], [g["uuid"] for g in info])
        self.assertEqual(n["gpus"][0]["memoryMib"], info[0]["memory_mib"])
        self.assertEqual(n["gpus"][0]["model"], info[0]["name"])
        self.assertEqual((n["gpus"][0]["computeCapabilityMajor"],
                          n["gpus"][0]["computeCapabilityMinor"]), (8, 6))

    # ---- admins ----

    def test_admin_export_trace_replays_in_gpumatch_sim(self):
        # some history: a registered node and a queued job
        n = cli_json(self.c, "node", "register", "--simulate",
                     os.path.join(NODES_DIR, "h100-x8.json"), "--name", self.c.unique("ex"),
                     token=self.otok)["node"]
        job = cli_json(self.c, "submit", os.path.join(JOBS_DIR, "hello.yaml"),
                       token=self.ttok)
        d = os.path.join(tempfile.mkdtemp(dir=self.c.dir), "trace")
        r = self.run_cli("admin", "export-trace", "--dir", d, "--since", "1h")
        self.assertIn("written to", r.stdout)
        with open(os.path.join(d, "jobs.csv")) as f:
            jobs = f.read().splitlines()
        with open(os.path.join(d, "nodes.csv")) as f:
            nodes = f.read().splitlines()
        self.assertTrue(jobs[0].startswith("job_id,"), jobs[0])
        self.assertIn(str(job.get("job", job).get("id")), [x.split(",")[0] for x in jobs[1:]])
        self.assertIn(n["id"], [x.split(",")[0] for x in nodes[1:]])
        sim = subprocess.run([os.path.join(BUILD, "sim", "tool", "gpumatch-sim"), "--nodes",
                              os.path.join(d, "nodes.csv"), "--jobs",
                              os.path.join(d, "jobs.csv"), "--policy",
                              os.path.join(cluster.SOURCE, "examples", "policies",
                                           "default.json"), "--seed", "1"],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(sim.returncode, 0, sim.stderr)
        last = json.loads(sim.stdout.strip().splitlines()[-1])
        self.assertEqual(last["jobs"], len(jobs) - 1)
        # a missing --dir is a usage error
        self.run_cli("admin", "export-trace", rc=2)

    def test_admin_tenants_operators_tokens(self):
        name = self.c.unique("acme")
        t = cli_json(self.c, "admin", "tenants", "create", "--name", name, "--weight", "3",
                     "--credit-limit", "50", "--contact", "ops@acme.test",
                     token=self.admin)["tenant"]
        self.assertEqual((t["name"], t["fairShareWeight"], t["creditLimitMicros"]),
                         (name, 3, "50000000"))
        out = self.run_cli("admin", "tenants", "update", t["id"], "--max-gpus", "16").stdout
        self.assertRegex(out, r"(?m)^MAX GPUS\s+16$")
        self.run_cli("admin", "tenants", "update", t["id"], rc=2)
        self.assertIn(name, self.run_cli("admin", "tenants", "list").stdout)
        # a token made by the CLI works for the CLI, until revoked
        r = self.run_cli("admin", "tokens", "create", "--role", "tenant", "--tenant", t["id"],
                         "--name", "ci")
        secret = r.stdout.strip()
        self.assertTrue(secret.startswith("gm_"), secret)
        self.assertIn("shown only once", r.stderr)
        self.run_cli("list", token=secret)
        toks = cli_json(self.c, "admin", "tokens", "list", "--tenant", t["id"],
                        token=self.admin)["tokens"]
        self.assertEqual(len(toks), 1)
        # --tenant takes the tenant's name as well as its id
        by_name = cli_json(self.c, "admin", "tokens", "list", "--tenant", name,
                           token=self.admin)["tokens"]
        self.assertEqual([x["id"] for x in by_name], [toks[0]["id"]])
        self.assertEqual(cli_json(self.c, "list", "--tenant", name, token=self.admin),
                         cli_json(self.c, "list", "--tenant", t["id"], token=self.admin))
        r = self.run_cli("list", "--tenant", "no-such-tenant-x", rc=2)
        self.assertEqual(r.stderr.strip().count("\n"), 0, r.stderr)
        self.assertIn('--tenant: no tenant named "no-such-tenant-x"', r.stderr)
        self.run_cli("admin", "tokens", "revoke", toks[0]["id"])
        self.run_cli("list", token=secret, rc=1)
        out = self.run_cli("admin", "tenants", "disable", t["id"], "--reason", "test").stdout
        self.assertRegex(out, r"(?m)^STATE\s+DISABLED$")
        self.run_cli("admin", "tenants", "enable", t["id"])
        self.assertEqual(cli_json(self.c, "admin", "tenants", "get", t["id"],
                                  token=self.admin)["tenant"]["state"], "TENANT_STATE_ACTIVE")
        oname = self.c.unique("op")
        o = cli_json(self.c, "admin", "operators", "create", "--name", oname, "--node-limit", "4",
                     token=self.admin)["operatorRecord"]
        self.assertEqual(o["nodeLimit"], 4)
        self.run_cli("admin", "operators", "update", o["id"], "--node-limit", "9")
        self.assertEqual(cli_json(self.c, "admin", "operators", "get", o["id"],
                                  token=self.admin)["operatorRecord"]["nodeLimit"], 9)
        self.assertIn(oname, self.run_cli("admin", "operators", "list").stdout)
        self.run_cli("admin", "operators", "disable", o["id"], "--drain-nodes")
        self.run_cli("admin", "operators", "enable", o["id"])

    def test_tables_are_stable_and_aligned(self):
        a = self.run_cli("admin", "tenants", "list").stdout
        b = self.run_cli("admin", "tenants", "list").stdout
        self.assertEqual(a, b)
        lines = a.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "NAME", "STATE", "WEIGHT", "BALANCE", "HELD",
                                            "CREDIT", "LIMIT", "MAX", "GPUS", "CONTACT"])
        # every column starts where its header starts
        starts = [m.start(1) for m in re.finditer(r"(?:^|  )(\S)", lines[0])]
        for line in lines[1:]:
            for s in starts[1:]:
                self.assertEqual(line[s - 2:s], "  ", (line, s))

    def test_json_output_parses(self):
        jid = self.run_cli("submit", "--duration", "1m", "--label", "pool=none", "--", "true",
                           token=self.ttok).stdout.strip()
        r = common.wait_for(lambda: cli(self.c, "explain", jid, token=self.ttok).returncode == 0,
                            10, what="explain %s" % jid)
        for args, tok, key in [
            (["list"], self.ttok, "jobs"),
            (["get", jid], self.ttok, "job"),
            (["explain", jid], self.ttok, "jobId"),
            (["node", "list"], self.otok, None),
            (["admin", "tenants", "list"], self.admin, "tenants"),
            (["admin", "operators", "list"], self.admin, "operators"),
            (["admin", "tokens", "list"], self.admin, "tokens"),
            (["admin", "policy", "get"], self.admin, "policy"),
            (["admin", "policy", "history"], self.admin, None),
        ]:
            with self.subTest(args=args):
                body = cli_json(self.c, *args, token=tok)
                self.assertIsInstance(body, dict)
                if key:
                    self.assertIn(key, body)

    def test_policy_get_diff_validate_apply_history_rollback(self):
        d = tempfile.mkdtemp(dir=self.c.dir)
        cur = cli_json(self.c, "admin", "policy", "get", token=self.admin)
        p = dict(cur["policy"], wPrice=4.25, preemptShorterFactor=3, wShortJobs=7)
        path = os.path.join(d, "p.json")
        with open(path, "w") as f:
            json.dump(p, f)
        out = self.run_cli("admin", "policy", "diff", path).stdout
        self.assertRegex(out, r"W_PRICE\s+\S+ -> 4\.25")
        self.assertRegex(out, r"PREEMPT_SHORTER_FACTOR\s+\S+ -> 3")
        self.assertRegex(out, r"W_SHORT_JOBS\s+\S+ -> 7")
        out = self.run_cli("admin", "policy", "validate", path).stdout
        self.assertIn("policy is valid", out)
        self.assertEqual(cli_json(self.c, "admin", "policy", "get", token=self.admin), cur,
                         "validate stores nothing")
        self.run_cli("admin", "policy", "set", path, rc=2)  # --comment required
        out = self.run_cli("admin", "policy", "apply", path, "--comment", "cli test").stdout
        ver = re.search(r"policy version (\d+) is active", out).group(1)
        now = cli_json(self.c, "admin", "policy", "get", token=self.admin)
        self.assertEqual(now["policy"]["wPrice"], 4.25)
        hist = self.run_cli("admin", "policy", "history").stdout
        self.assertRegex(hist, r"(?m)^%s\s.*w_price.*cli test$" % ver)
        # a bad field is named before anything is sent
        with open(path, "w") as f:
            f.write("wPrice: lots\n")
        r = self.run_cli("admin", "policy", "set", path, "--comment", "x", rc=2)
        self.assertIn("wPrice", r.stderr)
        # rollback to the version before
        if int(ver) > 1:
            self.run_cli("admin", "policy", "rollback", str(int(ver) - 1), "--comment", "undo")
            back = cli_json(self.c, "admin", "policy", "get", token=self.admin)
            self.assertNotEqual(back["policy"].get("wPrice"), 4.25)

    def test_commands_of_other_services_answer_cleanly(self):
        """Ledger, reports and the policy simulator: either they work (JSON
        parses) or the server's unimplemented comes back as a server error
        naming the RPC, with exit code 1."""
        d = tempfile.mkdtemp(dir=self.c.dir)
        pol = os.path.join(d, "p.json")
        with open(pol, "w") as f:
            json.dump(cli_json(self.c, "admin", "policy", "get", token=self.admin)["policy"], f)
        cases = [
            (["usage"], self.ttok, "GetSpend"),
            (["node", "earnings"], self.otok, "GetEarnings"),
            (["admin", "topup", self.tenant["id"], "25.00", "--idempotency-id",
              self.c.unique("pay")], self.admin, "TopUpTenant"),
            (["admin", "payout", self.op["id"], "0.01", "--idempotency-id",
              self.c.unique("po")], self.admin, "PayoutOperator"),
            (["admin", "report", "usage"], self.admin, "GetUsageReport"),
            (["admin", "report", "revenue"], self.admin, "GetRevenueReport"),
            (["admin", "audit"], self.admin, "AuditLedger"),
            (["admin", "transfers"], self.admin, "ListTransfers"),
            (["admin", "policy", "simulate", pol], self.admin, "SimulatePolicy"),
        ]
        for args, tok, rpc in cases:
            with self.subTest(args=args):
                r = cli(self.c, *args, "-o", "json", token=tok)
                if r.returncode == 1 and "unimplemented" in r.stderr:
                    self.assertIn("%s failed: unimplemented: " % rpc, r.stderr)
                    self.assertEqual(r.stdout, "")
                    self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                elif rpc == "PayoutOperator" and r.returncode == 1:
                    self.assertIn("failed_precondition", r.stderr)  # nothing earned yet
                else:
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertIsInstance(json.loads(r.stdout), dict)
