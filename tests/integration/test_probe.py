"""The probe challenge against the real gpumatchd: gpu-probe's CPU backend
runs the whole exchange (RequestChallenge, SubmitProbe commitment, SubmitProbe
opening). An honest run passes, the node becomes VERIFIED with its proved
figures and takes work; each tampering (gpu-probe's hidden --tamper) is
rejected with its precise reason and recorded in probe_runs; challenges are
single-use, expire, are bound to the GPU's UUID, are rate-limited and only
the node's own operator may run them. Sizes are tiny so that the CPU
finishes in milliseconds; gpumatchd runs with allow_unverified=false."""

import base64
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile

import common
from common import ItCase, NodeAgent, job_spec, node_req, ok, submit, wait_job_state

HERE = os.path.dirname(os.path.abspath(__file__))
RATE_LIMIT = 12
# the module's copy of probe-peaks-extra.csv, which a test rewrites
_peaks_dir = tempfile.mkdtemp(prefix="gpumatch-probe-peaks-")
PEAKS_EXTRA = os.path.join(_peaks_dir, "peaks-extra.csv")


def gpu_probe_path():
    from cluster import gpumatchd_path
    return os.path.join(os.path.dirname(os.path.dirname(gpumatchd_path())), "gpu-probe",
                        "gpu-probe")


def setUpModule():
    shutil.copy(os.path.join(HERE, "probe-peaks-extra.csv"), PEAKS_EXTRA)
    common.setup_module(__name__, [
        "--cycle_interval_ms=200",
        "--probe_dim=24", "--probe_chain_length=3", "--probe_open_rows=4",
        "--probe_commit_timeout_ms=3000", "--probe_open_timeout_ms=3000",
        "--probe_attempts_per_hour=%d" % RATE_LIMIT,
        "--probe_peaks_extra_file=" + PEAKS_EXTRA,
    ])


def tearDownModule():
    shutil.rmtree(_peaks_dir, True)
    common.teardown_module(__name__)


def probe_gpu(index, tag, claimed_fp16=1e-8, model="CPU-REFERENCE", device_id=0xFFFF):
    """A GPU whose claim a CPU can honour (10 kFLOPS FP16) on a model the
    shipped peaks do not know, unless told otherwise."""
    return {
        "index": index, "model": model, "name": "test GPU",
        "pciVendorId": 0x10DE, "pciDeviceId": device_id,
        "uuid": "GPU-%s-%04d" % (tag, index), "memoryMib": 24576,
        "computeCapabilityMajor": 8, "computeCapabilityMinor": 6,
        "precisions": ["PRECISION_FP32", "PRECISION_FP16"],
        "interconnect": "INTERCONNECT_PCIE",
        "claimed": {"fp32Tflops": claimed_fp16 / 2, "fp16Tflops": claimed_fp16},
    }


# ---- the construction of docs/probe.md, written again from the text ----

M64 = (1 << 64) - 1


def _mix(x):
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _elem(key, which, row, col, rng):
    w0 = int.from_bytes(key[0:8], "little")
    w1 = int.from_bytes(key[8:16], "little")
    x = w0 ^ ((which * 0x9E3779B97F4A7C15) & M64)
    x = _mix(x ^ ((row << 32) | col))
    x = _mix((x + w1) & M64)
    return (x >> 32) % (2 * rng + 1) - rng


def _sha(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


def _leaf(values):
    raw = struct.pack("<%df" % len(values), *values)
    chunks = [_sha(b"\x02", raw[i:i + 1024]) for i in range(0, len(raw), 1024)]
    return _sha(b"\x00", *chunks)


def _tree(leaves):
    """All levels, leaves first; a lone last node is promoted."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        lv = levels[-1]
        levels.append([_sha(b"\x01", lv[i], lv[i + 1]) if i + 1 < len(lv) else lv[i]
                       for i in range(0, len(lv), 2)])
    return levels


def _path(levels, index):
    path = []
    for lv in levels[:-1]:
        if index ^ 1 < len(lv):
            path.append(lv[index ^ 1])
        index //= 2
    return path


class ProbeTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.op, cls.a = c.new_operator(node_limit=100)
        cls.opb, cls.b = c.new_operator(node_limit=100)
        cls.tenant, cls.t = c.new_tenant()
        if not os.access(gpu_probe_path(), os.X_OK):
            raise AssertionError("gpu-probe not built at %s" % gpu_probe_path())

    def node(self, gpus=1, labels=None, **gpu_kw):
        name = self.c.unique("probed")
        req = node_req(name, labels=labels or {"probe": name})
        req["gpus"] = [probe_gpu(i, name, **gpu_kw) for i in range(gpus)]
        return NodeAgent.register(self.c, self.a, req)

    def run_probe(self, node_id, *extra, token=None, expect_rc=None):
        cmd = [gpu_probe_path(), "challenge", "--backend", "cpu",
               "--server", "http://%s:%d" % (self.c.host, self.c.port),
               "--token", token or self.a, "--node-id", str(node_id), "--timeout", "20"]
        cmd += list(extra)
        env = dict(os.environ)
        env.pop("GPUMATCH_TOKEN", None)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        if expect_rc is not None and p.returncode != expect_rc:
            self.fail("gpu-probe %s: exit %d, want %d\nstdout: %s\nstderr: %s"
                      % (" ".join(extra), p.returncode, expect_rc, p.stdout, p.stderr))
        try:
            out = json.loads(p.stdout)
        except ValueError:
            self.fail("gpu-probe printed no JSON (exit %d)\nstdout: %s\nstderr: %s"
                      % (p.returncode, p.stdout, p.stderr))
        return p.returncode, out

    def get_node(self, node_id, token=None):
        return ok(self.c.call("NodeService", "GetNode", {"nodeId": node_id},
                              token=token or self.a))["node"]

    def run_row(self, challenge_id):
        rows = self.c.psql("SELECT state, result, reason, message FROM probe_runs"
                           " WHERE id = %d" % int(challenge_id))
        self.assertEqual(len(rows), 1, "probe_runs row for challenge %s" % challenge_id)
        return rows[0]

    def assert_rejected(self, out, reason, text, fresh=True):
        """The verdict, the probe_runs row and GetNode all show the failure;
        fresh: the node never passed, so it has no verified figures (after a
        pass they stay as history; the FAILED status takes the node off
        paid work)."""
        self.assertEqual(out.get("result"), "PROBE_RESULT_FAIL", out)
        self.assertEqual(out.get("reason"), "PROBE_FAILURE_REASON_" + reason, out)
        self.assertIn(text, out.get("message", ""), out)
        self.assertEqual(out.get("verification_status"), "VERIFICATION_STATUS_FAILED", out)
        state, result, rreason, msg = self.run_row(out["challenge_id"])
        self.assertEqual((state, result), ("4", "2"), "recorded as failed")
        self.assertEqual(msg, out["message"])
        n = self.get_node(out["node_id"])
        ver = n.get("verification", {})
        self.assertEqual(ver.get("status"), "VERIFICATION_STATUS_FAILED", n)
        self.assertEqual(ver.get("lastFailure"), out["message"], n)
        if fresh:
            self.assertNotIn("verified", n["gpus"][0], "no verified figures after a failure")

    # ---- the honest path ----

    def test_honest_probe_verifies_the_node_and_it_takes_work(self):
        ag = self.node(gpus=2)
        name = ag.node["name"]
        # unverified: a job for it stays pending
        job = submit(self.c, self.t, spec=job_spec(labelSelector={"probe": name},
                                                   precision="PRECISION_FP16"))
        rc, out = self.run_probe(ag.id, expect_rc=0)
        self.assertEqual(out["result"], "PROBE_RESULT_PASS", out)
        self.assertEqual(out["verification_status"], "VERIFICATION_STATUS_VERIFIED", out)
        self.assertEqual(len(out["gpus"]), 2, out)
        for g in out["gpus"]:
            self.assertEqual(g["result"], "PROBE_RESULT_PASS", g)
            self.assertGreater(g["verified_tflops"], 0, g)
            self.assertLessEqual(g["verified_tflops"], 1e-8 * 1.000001, g)
        n = self.get_node(ag.id)
        self.assertEqual(n["verification"]["status"], "VERIFICATION_STATUS_VERIFIED", n)
        self.assertEqual(n["verification"]["lastChallengeId"], str(out["challenge_id"]))
        self.assertGreater(int(n["verification"]["verifiedAtUs"]), 0)
        for g in n["gpus"]:
            self.assertGreater(g["verified"]["fp16Tflops"], 0, g)
            self.assertNotIn("fp32Tflops", g["verified"], "only the probed precision")
        state, result, reason, _ = self.run_row(out["challenge_id"])
        self.assertEqual((state, result, reason), ("3", "1", "0"))
        # the live scheduler learned it: the pending job is placed there
        lease = ag.acquire_lease(within=20)
        self.assertEqual(lease["lease"]["jobId"], job["id"], lease)

    def test_second_precision_adds_to_the_first_and_re_registering_drops_both(self):
        ag = self.node()
        self.run_probe(ag.id, "--precision", "fp16", expect_rc=0)
        rc, out = self.run_probe(ag.id, "--precision", "fp32", expect_rc=0)
        self.assertEqual(out["verification_status"], "VERIFICATION_STATUS_VERIFIED", out)
        g = self.get_node(ag.id)["gpus"][0]
        self.assertGreater(g["verified"].get("fp16Tflops", 0), 0, g)
        self.assertGreater(g["verified"].get("fp32Tflops", 0), 0, g)
        self.assertLessEqual(g["verified"]["fp32Tflops"], 0.5e-8 * 1.000001, g)
        # new facts carry no proof: the node must probe again
        req = node_req(ag.node["name"], labels={"probe": ag.node["name"]})
        req["gpus"] = [probe_gpu(0, ag.node["name"])]
        req["nodeId"] = ag.id
        n = self.assertOk(self.c.call("NodeService", "RegisterNode", req, token=self.a))["node"]
        self.assertEqual(n["verification"]["status"], "VERIFICATION_STATUS_UNVERIFIED", n)
        self.assertNotIn("verified", n["gpus"][0], n)

    def test_metrics_count_challenges_and_verdicts(self):
        def metric(text, name):
            for line in text.splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
            self.fail("no %s in /metrics" % name)
        before = self.c.http("GET", "/metrics")[2].decode()
        ag = self.node()
        self.run_probe(ag.id, "--tamper", "wrong-path", expect_rc=3)
        after = self.c.http("GET", "/metrics")[2].decode()
        for name, delta in (("gpumatch_probe_challenges_total", 1),
                            ('gpumatch_probe_verdicts_total{result="fail",'
                             'reason="PATH_INVALID"}', 1)):
            self.assertEqual(metric(after, name) - metric(before, name), delta, name)
        self.assertIn('gpumatch_probe_verdicts_total{result="pass",reason="none"}', after)
        self.assertEqual(metric(after, "gpumatch_probe_verifications_running"), 0)

    def test_the_documented_construction_passes(self):
        """A prover written from docs/probe.md alone, in Python, over JSON."""
        ag = self.node()
        ch = ok(self.c.call("NodeService", "RequestChallenge",
                            {"nodeId": ag.id, "precision": "PRECISION_FP16"},
                            token=self.a))["challenge"]
        m, n, k, rng = ch["m"], ch["n"], ch["k"], ch["valueRange"]
        seed = base64.b64decode(ch["seed"])
        uuid = ch["gpus"][0]["gpuUuid"]
        key = _sha(b"gpumatch-probe-v1", seed, int(ag.id).to_bytes(8, "little"),
                   uuid.encode())
        keys, trees, rows_of = [], [], []
        for _ in range(ch["chainLength"]):
            B = [[_elem(key, 2, t, j, rng) for j in range(n)] for t in range(k)]
            rows = []
            for i in range(m):
                a = [_elem(key, 1, i, t, rng) for t in range(k)]
                rows.append([float(sum(a[t] * B[t][j] for t in range(k))) for j in range(n)])
            levels = _tree([_leaf(r) for r in rows])
            keys.append(key)
            trees.append(levels)
            rows_of.append(rows)
            key = _sha(key, levels[-1][0])
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        roots = [t[-1][0] for t in trees]
        com = {"challengeId": ch["challengeId"], "gpus": [{
            "gpuIndex": 0, "gpuUuid": uuid, "root": b64(roots[-1]), "leafCount": m,
            "stepRoots": [b64(r) for r in roots]}]}
        sel = self.assertOk(self.c.call("NodeService", "SubmitProbe", {
            "nodeId": ag.id, "challengeId": ch["challengeId"], "commitment": com},
            token=self.a))["selection"]
        g = sel["gpus"][0]
        self.assertEqual(len(g["rows"]), 4, sel)
        steps = g.get("steps", [])
        self.assertEqual(steps[0], ch["chainLength"] - 1, "first row in the last step")
        opened = [{"row": r, "step": st, "values": rows_of[st][r],
                   "path": [b64(h) for h in _path(trees[st], r)]}
                  for r, st in zip(g["rows"], steps)]
        v = self.assertOk(self.c.call("NodeService", "SubmitProbe", {
            "nodeId": ag.id, "challengeId": ch["challengeId"],
            "opening": {"challengeId": ch["challengeId"],
                        "gpus": [{"gpuIndex": 0, "rows": opened}]}}, token=self.a))["verdict"]
        self.assertEqual(v["result"], "PROBE_RESULT_PASS", v)
        self.assertEqual(v["verificationStatus"], "VERIFICATION_STATUS_VERIFIED", v)

    def test_replayed_challenge_is_refused(self):
        ag = self.node()
        rc, out = self.run_probe(ag.id, "--tamper", "replay", expect_rc=4)
        self.assertEqual(out["result"], "PROBE_RESULT_PASS", out)
        self.assertIn("failed_precondition", out["replay_error"])
        self.assertIn("already answered", out["replay_error"])
        self.assertIn("single-use", out["replay_error"])

    def test_gpu_probe_says_when_cuda_is_missing_or_not_built(self):
        p = subprocess.run([gpu_probe_path(), "info"], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(p.returncode, 2, p)
        self.assertRegex(p.stderr, "no usable GPU|built without CUDA")
        p = subprocess.run([gpu_probe_path(), "info", "--backend", "cpu"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(json.loads(p.stdout)["backend"], "cpu")

    # ---- tampering, each with its reason ----

    def test_flipped_element_in_an_opened_row(self):
        ag = self.node()
        rc, out = self.run_probe(ag.id, "--tamper", "flip-committed", expect_rc=3)
        self.assert_rejected(out, "ROW_MISMATCH", "differs at column 0")

    def test_flipped_element_after_committing(self):
        ag = self.node()
        rc, out = self.run_probe(ag.id, "--tamper", "flip-opened", expect_rc=3)
        self.assert_rejected(out, "PATH_INVALID", "do not lead to the committed root")

    def test_wrong_root(self):
        ag = self.node()
        rc, out = self.run_probe(ag.id, "--tamper", "wrong-root", expect_rc=3)
        self.assert_rejected(out, "PATH_INVALID", "do not lead to the committed root")

    def test_wrong_path(self):
        ag = self.node()
        rc, out = self.run_probe(ag.id, "--tamper", "wrong-path", expect_rc=3)
        self.assert_rejected(out, "PATH_INVALID", "rows[0]")

    def test_rows_from_another_seed(self):
        ag = self.node()
        rc, out = self.run_probe(ag.id, "--tamper", "other-seed", expect_rc=3)
        self.assert_rejected(out, "ROW_MISMATCH", "the server computes")

    def test_different_gpu_uuid(self):
        ag = self.node()
        rc, out = self.run_probe(ag.id, "--tamper", "other-uuid", expect_rc=3)
        self.assert_rejected(out, "IDENTITY_MISMATCH", "GPU-00000000-forged is not the challenged")

    def test_expired_challenge(self):
        ag = self.node()
        rc, out = self.run_probe(ag.id, "--tamper", "commit-delay=3500", expect_rc=3)
        self.assert_rejected(out, "COMMIT_LATE", "challenge expired")

    def test_result_after_deadline(self):
        ag = self.node()
        rc, out = self.run_probe(ag.id, "--tamper", "open-delay=3500", expect_rc=3)
        self.assert_rejected(out, "OPEN_LATE", "after its deadline")

    # ---- peaks ----

    def test_claim_far_above_the_model_peak_is_flagged(self):
        # an "RTX 3090" (shipped peak FP16 71 TFLOPS) claiming 500
        ag = self.node(claimed_fp16=500.0, model="RTX-3090-24GB", device_id=0x2204)
        rc, out = self.run_probe(ag.id, expect_rc=3)
        self.assert_rejected(out, "ABOVE_PEAK", "claimed 500 TFLOPS FP16 is above the "
                                                "RTX-3090-24GB peak of 71")
        self.assertEqual(out["gpus"][0]["expected_peak_tflops"], 71, out)

    def test_measured_far_above_the_model_peak_is_flagged(self):
        # a product whose peak (probe-peaks-extra.csv) any CPU beats: spoofed
        ag = self.node(model="TINY-TEST-GPU", device_id=0xFFF0, claimed_fp16=1e-12)
        rc, out = self.run_probe(ag.id, expect_rc=3)
        self.assert_rejected(out, "ABOVE_PEAK", "measured at least")

    def test_far_below_the_claim_fails(self):
        ag = self.node(claimed_fp16=50.0)
        rc, out = self.run_probe(ag.id, expect_rc=3)
        self.assert_rejected(out, "TOO_SLOW", "below 25% of the claimed 50")

    # ---- who may, how often, bad input ----

    def test_other_operators_node_is_not_found(self):
        ag = self.node()
        before = self.c.count("probe_runs")
        r = self.c.call("NodeService", "RequestChallenge", {"nodeId": ag.id}, token=self.b)
        self.assertError(r, "not_found", field="nodeId")
        self.assertUnchanged("probe_runs", before)
        # nor can it answer a challenge the owner holds
        ch = ok(self.c.call("NodeService", "RequestChallenge", {"nodeId": ag.id},
                            token=self.a))["challenge"]
        r = self.c.call("NodeService", "SubmitProbe",
                        {"nodeId": ag.id, "challengeId": ch["challengeId"],
                         "commitment": {"challengeId": ch["challengeId"]}}, token=self.b)
        self.assertError(r, "not_found", field="challengeId")
        rc, out = self.run_probe(ag.id, token=self.b, expect_rc=4)
        self.assertIn("not_found", out["error"])
        # tenants may not call NodeService at all
        r = self.c.call("NodeService", "RequestChallenge", {"nodeId": ag.id}, token=self.t)
        self.assertEqual(r.code, "permission_denied", r)

    def test_challenge_is_bound_to_node_and_uuids(self):
        ag = self.node(gpus=2)
        ch = ok(self.c.call("NodeService", "RequestChallenge",
                            {"nodeId": ag.id, "gpuIndexes": [1],
                             "precision": "PRECISION_FP32"}, token=self.a))["challenge"]
        self.assertEqual(ch["nodeId"], ag.id)
        self.assertEqual(ch["gpus"], [{"gpuIndex": 1, "gpuUuid": ag.node["gpus"][1]["uuid"]}])
        self.assertEqual(ch["precision"], "PRECISION_FP32")
        self.assertEqual((ch["m"], ch["n"], ch["k"], ch["chainLength"]), (24, 24, 24, 3))
        self.assertLess(24 * ch["valueRange"] ** 2, 2 ** 24)
        self.assertGreater(int(ch["commitDeadlineUs"]), int(ch["issuedAtUs"]))
        self.assertEqual(len(ch["seed"]), 44, "32 bytes, base64")
        self.assertEqual(self.get_node(ag.id)["verification"]["status"],
                         "VERIFICATION_STATUS_PENDING")
        # a new challenge abandons the outstanding one
        ok(self.c.call("NodeService", "RequestChallenge", {"nodeId": ag.id}, token=self.a))
        r = self.c.call("NodeService", "SubmitProbe",
                        {"nodeId": ag.id, "challengeId": ch["challengeId"],
                         "commitment": {"challengeId": ch["challengeId"]}}, token=self.a)
        self.assertError(r, "failed_precondition", field="challengeId")
        self.assertIn("abandoned", r.message)

    def test_bad_input_names_the_field_and_writes_nothing(self):
        ag = self.node()
        before = self.c.count("probe_runs")
        cases = [
            ({}, "nodeId"),
            ({"nodeId": ag.id, "gpuIndexes": [3]}, "gpuIndexes"),
            ({"nodeId": ag.id, "gpuIndexes": [0, 0]}, "gpuIndexes"),
            ({"nodeId": ag.id, "precision": "PRECISION_BF16"}, "precision"),
        ]
        for body, field in cases:
            with self.subTest(field=field, body=body):
                r = self.c.call("NodeService", "RequestChallenge", body, token=self.a)
                self.assertError(r, "invalid_argument", field=field)
        self.assertUnchanged("probe_runs", before)
        for body, field in [
            ({"challengeId": "1", "commitment": {}}, "nodeId"),
            ({"nodeId": ag.id, "commitment": {}}, "challengeId"),
            ({"nodeId": ag.id, "challengeId": "1"}, "commitment"),
            ({"nodeId": ag.id, "challengeId": "1", "commitment": {"challengeId": "2"}},
             "challengeId"),
        ]:
            with self.subTest(field=field, body=body):
                r = self.c.call("NodeService", "SubmitProbe", body, token=self.a)
                self.assertError(r, "invalid_argument", field=field)
        r = self.c.call("NodeService", "SubmitProbe",
                        {"nodeId": ag.id, "challengeId": "999999", "commitment": {}},
                        token=self.a)
        self.assertError(r, "not_found", field="challengeId")

    def test_malformed_commitment_is_recorded(self):
        ag = self.node()
        ch = ok(self.c.call("NodeService", "RequestChallenge", {"nodeId": ag.id},
                            token=self.a))["challenge"]
        r = self.c.call("NodeService", "SubmitProbe",
                        {"nodeId": ag.id, "challengeId": ch["challengeId"],
                         "commitment": {"gpus": [{"gpuIndex": 0,
                                                  "gpuUuid": ch["gpus"][0]["gpuUuid"],
                                                  "leafCount": 24}]}}, token=self.a)
        v = self.assertOk(r)["verdict"]
        self.assertEqual(v["reason"], "PROBE_FAILURE_REASON_MALFORMED", v)
        self.assertIn("stepRoots", v["message"])
        self.assertEqual(self.run_row(ch["challengeId"])[0], "4")

    def test_attempts_are_rate_limited(self):
        ag = self.node()
        for i in range(RATE_LIMIT):
            ok(self.c.call("NodeService", "RequestChallenge", {"nodeId": ag.id},
                           token=self.a), "challenge %d" % i)
        before = self.c.count("probe_runs")
        r = self.c.call("NodeService", "RequestChallenge", {"nodeId": ag.id}, token=self.a)
        self.assertError(r, "resource_exhausted")
        self.assertIn("last hour", r.message)
        self.assertUnchanged("probe_runs", before)

    # ---- the peaks file and gpu-probe's report ----

    def test_bad_peaks_file_stops_start_up_naming_the_line(self):
        bad = os.path.join(self.c.dir, "bad-peaks.csv")
        with open(bad, "w") as f:
            f.write("# comment\npci_vendor_id,pci_device_id,product,fp32,tf32,fp16,bf16,fp8\n"
                    "0x10de,0x2204,RTX-3090-24GB,35.6,35.6,71,71,0\n0x10de,oops\n")
        from cluster import gpumatchd_path
        p = subprocess.run([gpumatchd_path(), "--listen_host=127.0.0.1", "--listen_port=0",
                            "--redis_host=" + self.c.redis_host,
                            "--redis_port=%d" % self.c.redis_port,
                            "--pg_conninfo=" + self.c.pg_conninfo,
                            "--probe_peaks_extra_file=" + bad],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(p.returncode, 0, p)
        self.assertIn(bad + ":4: expected pci_vendor_id,pci_device_id", p.stderr)

    def test_sighup_reloads_the_peaks_and_keeps_them_when_broken(self):
        with open(PEAKS_EXTRA) as f:
            good = f.read()
        ag = self.node(model="RELOADED-GPU", device_id=0xFFF1, claimed_fp16=1e-12)
        rc, out = self.run_probe(ag.id, expect_rc=0)
        self.assertEqual(out["gpus"][0]["expected_peak_tflops"], 0, "unknown before")
        try:
            with open(PEAKS_EXTRA, "a") as f:
                f.write("0x10de,0xfff1,RELOADED-GPU,1e-9,1e-9,1e-9,1e-9,0,1\n")
            off = self.c.log_offset()
            os.kill(self.c.pid, signal.SIGHUP)
            common.wait_for(lambda: "probe peaks loaded" in self.c.log_since(off), 10,
                            what="the peaks reload")
            rc, out = self.run_probe(ag.id, expect_rc=3)
            self.assert_rejected(out, "ABOVE_PEAK", "above the RELOADED-GPU peak", fresh=False)
            # a broken file: the table in use stays
            with open(PEAKS_EXTRA, "a") as f:
                f.write("not,a,row\n")
            off = self.c.log_offset()
            os.kill(self.c.pid, signal.SIGHUP)
            common.wait_for(lambda: "probe peaks not reloaded" in self.c.log_since(off), 10,
                            what="the refused reload")
            self.assertIn("peaks-extra.csv:", self.c.log_since(off))
            rc, out = self.run_probe(ag.id, expect_rc=3)
            self.assertEqual(out["gpus"][0]["expected_peak_tflops"], 1e-9, out)
        finally:
            with open(PEAKS_EXTRA, "w") as f:
                f.write(good)
            off = self.c.log_offset()
            os.kill(self.c.pid, signal.SIGHUP)
            common.wait_for(lambda: "probe peaks loaded" in self.c.log_since(off), 10,
                            what="the peaks restored")

    def test_bench_report_is_a_probe_report(self):
        p = subprocess.run([gpu_probe_path(), "bench", "--backend", "cpu", "--quick", "--proto"],
                           capture_output=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        from cluster import proto_module
        rep = proto_module("probe").ProbeReport()
        rep.ParseFromString(p.stdout)
        self.assertTrue(rep.cpu_reference)
        self.assertEqual(len(rep.gpus), 1)
        g = rep.gpus[0].measurements
        self.assertEqual(g.gemm[0].precision, 1)  # FP32
        self.assertGreater(g.gemm[0].tflops_median, 0)
        self.assertEqual(g.summary.fp32_tflops, g.gemm[0].tflops_median)
        # and it travels as RegisterNode evidence
        ag_req = node_req(self.c.unique("evidence"))
        from google.protobuf import json_format
        ag_req["probeReport"] = json_format.MessageToDict(rep)
        self.assertOk(self.c.call("NodeService", "RegisterNode", ag_req, token=self.a))
