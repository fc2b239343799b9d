"""common.py — what the integration test modules share: one Cluster per
module, a TestCase with Connect-aware assertions, request builders for jobs
and nodes, and a NodeAgent that plays a node's agent (heartbeats, lease
long-polls, reports)."""

import itertools
import os
import re
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "harness"))
from cluster import CONNECT_HTTP_STATUS, Cluster, HarnessError  # noqa: E402,F401

_clusters = {}


def setup_module(modname, flags=()):
    """setUpModule body: starts the module's cluster."""
    short = modname.rsplit(".", 1)[-1].replace("test_", "")
    _clusters[modname] = Cluster(flags=flags, name=short).start()
    return _clusters[modname]


def teardown_module(modname):
    """tearDownModule body: stops gpumatchd with SIGTERM, which must drain
    and exit 0 with no sanitizer report in its log (ASan/UBSan builds), then
    tears the cluster down."""
    c = _clusters.pop(modname, None)
    if not c:
        return
    problems = []
    try:
        if c.alive():
            rc = c.stop_gpumatchd(timeout=20)
            if rc != 0:
                problems.append("gpumatchd exited with %s after SIGTERM (want 0)" % rc)
        leaked = c.secrets_in_logs()
        if leaked:
            problems.append("tokens found in logs: %s" % leaked)
        rep = c.sanitizer_report()
        if rep:
            problems.append("sanitizer report in the gpumatchd log:\n" + rep)
        if problems:
            problems.append("---- gpumatchd log tail ----\n" + c.log_tail(60))
    finally:
        c.close()
    if problems:
        raise AssertionError("\n".join(problems))


def now_us():
    return int(time.time() * 1e6)


def snake(name):
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def camel(name):
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def wait_for(fn, timeout=10.0, interval=0.1, what="condition"):
    """Calls fn until it returns something truthy; returns that, or raises
    AssertionError naming what and fn's last value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s; last: %s"
                                 % (timeout, what, last))
        time.sleep(interval)


class ItCase(unittest.TestCase):
    """A test against its module's cluster (self.c). run.py prints the
    server log written during a failed test."""

    maxDiff = 4000

    @property
    def c(self):
        return _clusters[type(self).__module__]

    def setUp(self):
        self.log_offset = self.c.log_offset()

    def server_log(self, lines=120):
        return self.c.log_tail(lines, since=self.log_offset)

    # ---- assertions ----

    def assertOk(self, reply, msg=None):
        """reply must be HTTP 200; returns its body."""
        if reply.status != 200:
            self.fail("%sexpected 200: %s" % (msg + ": " if msg else "", reply))
        return reply.body

    def assertError(self, reply, code, field=None, status=None, msg=None):
        """reply must be the Connect error `code` (one code or a tuple of
        acceptable ones) with its HTTP status; field (proto name) must be
        named in the message, in snake_case or lowerCamelCase."""
        codes = (code,) if isinstance(code, str) else tuple(code)
        pre = msg + ": " if msg else ""
        if reply.code not in codes:
            self.fail("%sexpected %s: %s" % (pre, "/".join(codes), reply))
        want = status or CONNECT_HTTP_STATUS.get(reply.code)
        if reply.status != want:
            self.fail("%s%s should be HTTP %s: %s" % (pre, reply.code, want, reply))
        if field:
            m = reply.message or ""
            names = {field, camel(field), snake(field)}
            if not any(n in m for n in names):
                self.fail("%serror message should name the field %r: %s" % (pre, field, reply))
        return reply.body

    def assertUnchanged(self, table, before, where="true"):
        after = self.c.count(table, where)
        self.assertEqual(after, before, "rows in %s changed (%s) on a failed call"
                         % (table, where))


# ---- request builders -----------------------------------------------------

HOUR_US = 3600 * 1000000


def job_spec(gpus=1, **over):
    s = {
        "kind": "JOB_KIND_BATCH",
        "gpusPerNode": gpus,
        "maxDurationUs": str(HOUR_US),
        "command": ["sleep", "1"],
    }
    s.update(over)
    return s


def submit_req(key, spec=None, name=None):
    return {"idempotencyKey": key, "name": name or key, "spec": spec or job_spec()}


def gpu(index, node_tag="n", model="RTX-3090-24GB", memory_mib=24576, cc=(8, 6)):
    return {
        "index": index,
        "model": model,
        "name": "NVIDIA GeForce RTX 3090",
        "pciVendorId": 0x10DE,
        "pciDeviceId": 0x2204,
        "uuid": "GPU-%s-%04d" % (node_tag, index),
        "memoryMib": memory_mib,
        "computeCapabilityMajor": cc[0],
        "computeCapabilityMinor": cc[1],
        "precisions": ["PRECISION_FP32", "PRECISION_FP16"],
        "interconnect": "INTERCONNECT_PCIE",
        "claimed": {"fp32Tflops": 35.6, "fp16Tflops": 71.0},
    }


_node_serial = itertools.count(1)


def node_req(name, gpus=1, region="eu-west", price_micros=1500000, labels=None, **over):
    tag = "%s-%d" % (name, next(_node_serial))
    r = {
        "name": name,
        "region": region,
        "pricePerGpuHourMicros": str(price_micros),
        # a GPU belongs to one node: uuids unique per request, not per name
        "gpus": [gpu(i, node_tag=tag) for i in range(gpus)],
        "agentVersion": "it-agent/1",
    }
    if labels:
        r["labels"] = labels
    r.update(over)
    return r


def ok(reply, what=""):
    """reply's body if HTTP 200, else AssertionError showing the exchange
    (usable outside a TestCase, e.g. in setUpClass)."""
    if reply.status != 200:
        raise AssertionError("%sexpected 200: %s" % (what + ": " if what else "", reply))
    return reply.body


class NodeAgent:
    """Plays a registered node's agent with an operator token."""

    def __init__(self, cluster, token, node):
        self.c, self.token = cluster, token
        self.node = node                 # Node dict from RegisterNode
        self.id = node["id"]
        self.running = []                # lease ids we run
        self.seq = {}                    # lease id -> last seq sent
        self._hb_stop = None
        self._hb_thread = None
        self.hb_errors = []

    @classmethod
    def register(cls, cluster, token, req, ready=True):
        """RegisterNode, then (ready=True) one heartbeat that must make it
        READY."""
        body = ok(cluster.call("NodeService", "RegisterNode", req, token=token),
                  "RegisterNode %s" % req.get("name"))
        a = cls(cluster, token, body["node"])
        if ready:
            a.ready()
        return a

    def call(self, method, body, **kw):
        return self.c.call("NodeService", method, body, token=self.token, **kw)

    def heartbeat_req(self):
        return {
            "nodeId": self.id,
            "sentAtUs": str(now_us()),
            "gpus": [{"index": g.get("index", 0), "uuid": g.get("uuid", ""),
                      "status": "GPU_HEALTH_STATUS_HEALTHY"} for g in self.node.get("gpus", [])],
            "runningLeaseIds": list(self.running),
            "agentVersion": "it-agent/1",
        }

    def heartbeat(self):
        return self.call("Heartbeat", self.heartbeat_req())

    def ready(self):
        """Heartbeats and asserts the node is READY."""
        b = ok(self.heartbeat(), "Heartbeat")
        if b.get("nodeState") != "NODE_STATE_READY":
            raise AssertionError("node %s not READY after Heartbeat: %s" % (self.id, b))
        return b

    def start_heartbeats(self, interval=0.3):
        """Heartbeats from a thread until stop_heartbeats()."""
        self.stop_heartbeats()
        stop = self._hb_stop = threading.Event()

        def loop():
            while not stop.is_set():
                try:
                    r = self.heartbeat()
                    if r.status != 200:
                        self.hb_errors.append(str(r))
                except Exception as e:  # server restarts in durability tests
                    self.hb_errors.append(repr(e))
                stop.wait(interval)
        self._hb_thread = threading.Thread(target=loop, daemon=True)
        self._hb_thread.start()

    def stop_heartbeats(self):
        if self._hb_stop:
            self._hb_stop.set()
            self._hb_thread.join(10)
            self._hb_stop = None

    def acquire(self, wait_ms=0, timeout=None):
        return self.call("AcquireLease", {"nodeId": self.id, "waitTimeoutMs": wait_ms},
                         timeout=timeout or (wait_ms / 1000.0 + 15))

    def acquire_lease(self, within=20.0):
        """Long-polls until a lease comes; returns the AcquireLease body."""
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("node %s got no lease within %.0fs" % (self.id, within))
            b = ok(self.acquire(wait_ms=int(min(left, 5.0) * 1000)), "AcquireLease")
            if b.get("lease"):
                lid = b["lease"]["id"]
                if lid not in self.running:
                    self.running.append(lid)
                return b

    def report(self, lease, state, seq=None, exit_code=0, fencing_token=None, **extra):
        lid = lease["id"]
        if seq is None:
            seq = self.seq.get(lid, 0) + 1
        self.seq[lid] = max(self.seq.get(lid, 0), seq)
        body = {
            "nodeId": self.id,
            "leaseId": lid,
            "fencingToken": fencing_token if fencing_token is not None
            else lease.get("fencingToken", "0"),
            "seq": str(seq),
            "state": state,
            "exitCode": exit_code,
            "reportedAtUs": str(now_us()),
        }
        body.update(extra)
        r = self.call("ReportLease", body)
        if r.status == 200 and state in ("LEASE_STATE_SUCCEEDED", "LEASE_STATE_FAILED"):
            if lid in self.running:
                self.running.remove(lid)
        return r


def get_job(c, token, job_id):
    return ok(c.call("JobService", "GetJob", {"jobId": job_id}, token=token),
              "GetJob %s" % job_id)["job"]


def wait_job_state(c, token, job_id, states, timeout=15.0):
    """Polls GetJob until the job is in one of states; returns the job."""
    states = (states,) if isinstance(states, str) else tuple(states)
    box = {}

    def check():
        box["job"] = get_job(c, token, job_id)
        return box["job"] if box["job"].get("state") in states else None
    try:
        return wait_for(check, timeout, 0.1)
    except AssertionError:
        raise AssertionError("job %s never reached %s in %.0fs; last: %s"
                             % (job_id, "/".join(states), timeout, box.get("job"))) from None


def submit(c, token, key=None, spec=None, name=None):
    """SubmitJob that must succeed; returns the Job."""
    key = key or c.unique("job")
    return ok(c.call("JobService", "SubmitJob", submit_req(key, spec, name), token=token),
              "SubmitJob %s" % key)["job"]
