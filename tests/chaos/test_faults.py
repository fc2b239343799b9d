"""Fault injection with real processes: Postgres, Redis, one to three
gpumatchd replicas behind a small TCP balancer, three real `gpumatch agent
--simulate` agents whose jobs append start and end records to a ground-truth
file, and careful clients that retry each submit with the same idempotency
key until it is acknowledged.

Each test is one fault under load, one after another: kill -9 of gpumatchd
(once, then five times at seeded random moments), kill -9 of an agent
restarted with the same state directory, Redis FLUSHALL, Redis kill -9 with
its data wiped, Postgres stopped for 20 s, Postgres SIGSTOPped for 10 s,
gpumatchd SIGSTOPped for 10 s and for 35 s (longer than the heartbeat
timeout), and two and three replicas with the leader killed mid-load. After
the fault is healed, the phase quiesces and checks, from the ground truth and
Postgres:

- every acknowledged job is in Postgres once per idempotency key;
- every acknowledged job ran to completion exactly once and ended with its
  own exit code (a job whose process an agent restart killed may end FAILED
  with that reason, having run to completion zero times);
- no job ran on two nodes at once (each run holds an flock named after the
  job while it lives; a run that cannot take it records the overlap);
- no lease was billed for more than its run really lasted, beyond one
  heartbeat interval and the ledger's whole-second unit;
- AuditLedger finds no violation;
- scheduling resumed: a job submitted after the fault was healed was placed
  (within a generous timeout; nothing here asserts a duration or a rate).

Every wait is bounded by a generous timeout and every load by a count."""

import copy
import json
import os
import random
import re
import shlex
import signal
import socket
import threading
import time

import common
from clitools import Agent, sanitizer_text
from cluster import HarnessError
from common import ItCase

SLOW = True

HEARTBEAT_MS = 1000
HEARTBEAT_TIMEOUT_MS = 10000
SEED = int(os.environ.get("GPUMATCH_CHAOS_SEED", "20261207"))

# Phases left out of the default run because the server still fails them;
# each names what the ground truth showed. GPUMATCH_CHAOS_ALL=1 runs them.
KNOWN_FAILING = {}

TERMINAL_JOB = {4: "SUCCEEDED", 5: "FAILED", 6: "CANCELLED", 7: "PREEMPTED"}
FLAGS = [
    "--allow_unverified=true",
    "--cycle_interval_ms=100",
    "--heartbeat_interval_ms=%d" % HEARTBEAT_MS,
    "--heartbeat_timeout_ms=%d" % HEARTBEAT_TIMEOUT_MS,
    "--long_poll_max_ms=5000",
    "--ledger_settle_interval_ms=250",
    "--log_level=info",
]


def setUpModule():
    flags = list(FLAGS)
    # a short offer window where the server has one (leases handed out and
    # never confirmed are withdrawn after it)
    if "lease_offer_timeout_ms" in gpumatchd_help():
        flags.append("--lease_offer_timeout_ms=5000")
    common.setup_module(__name__, flags)


def tearDownModule():
    common.teardown_module(__name__)


def now_us():
    return int(time.time() * 1e6)


def wait_until(fn, timeout, what, interval=0.2):
    """fn() until truthy; None (not an exception) when the timeout passes, so
    that a phase can report every problem it finds."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


# ---- a TCP balancer in front of the replicas ------------------------------------

class Balancer:
    """Accepts on a free 127.0.0.1 port and relays each connection to the
    next live gpumatchd replica (round robin; a replica whose process has
    exited is skipped, a stopped one is not, as a balancer without health
    checks would do). When either side closes, both do."""

    def __init__(self, backends):
        self.backends = backends  # callable: [(host, port)]
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self._rr = 0
        self._open = set()
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client):
        backends = self.backends()
        upstream = None
        for i in range(len(backends)):
            with self._lock:
                self._rr += 1
                host, port = backends[(self._rr + i) % len(backends)]
            try:
                upstream = socket.create_connection((host, port), timeout=2)
                upstream.settimeout(None)
                break
            except OSError:
                upstream = None
        if upstream is None:
            client.close()
            return
        with self._lock:
            self._open.update((client, upstream))
        t = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        t.start()
        self._pump(client, upstream)
        t.join()
        with self._lock:
            self._open.discard(client)
            self._open.discard(upstream)
        client.close()
        upstream.close()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self._stop = True
        self.sock.close()
        with self._lock:
            for s in list(self._open):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# ---- careful clients --------------------------------------------------------------

class Load:
    """Careful clients: `clients` threads submit jobs through the balancer,
    one every `gap` seconds each, until stop() and at least `count` were
    acknowledged (never more than `most`). Each submit is retried with the
    same idempotency key until it is acknowledged (HTTP 200), refused for
    good, or its deadline passes. Jobs sleep 1-2 s; every fifth exits 3."""

    def __init__(self, test, phase, count, clients=3, gap=0.8, most=40):
        self.t, self.phase = test, phase
        self.count, self.most = count, most
        self.acked = {}      # key -> job id
        self.specs = {}      # key -> spec
        self.errors = []     # refusals that retrying cannot change
        self.retries = 0
        self._next = 0
        self._stop = False
        self._lock = threading.Lock()
        self._threads = []
        for _ in range(clients):
            th = threading.Thread(target=self._run, args=(gap,), daemon=True)
            th.start()
            self._threads.append(th)

    def _take(self):
        with self._lock:
            if self._next >= self.most or (self._stop and self._next >= self.count):
                return None
            i = self._next
            self._next += 1
            k = "chaos-%s-%d" % (self.phase, i)
            self.specs[k] = self.t.spec(i)
            return k

    def _run(self, gap):
        while True:
            k = self._take()
            if k is None:
                return
            job = self.t.submit_carefully(k, self.specs[k], self)
            if job:
                with self._lock:
                    self.acked[k] = job
            time.sleep(gap)

    def stop(self):
        self._stop = True

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for th in self._threads:
            th.join(max(0.1, deadline - time.monotonic()))
        return not any(th.is_alive() for th in self._threads)


# ---- the suite ------------------------------------------------------------------

class ChaosTest(ItCase):
    """One phase per fault; the cluster, the balancer and the agents live for
    the whole class."""

    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.rng = random.Random(SEED)
        cls.replicas = [c]
        cls.balancer = Balancer(lambda: [(r.host, r.port) for r in cls.replicas if r.alive()])
        cls.view = copy.copy(c)  # the cluster as clients see it: through the balancer
        cls.view.port = cls.balancer.port
        cls.work = os.path.join(c.dir, "chaos")
        cls.locks = os.path.join(cls.work, "locks")
        os.makedirs(cls.locks, exist_ok=True)
        cls.truth = os.path.join(cls.work, "truth.log")
        open(cls.truth, "a").close()
        # the agents run jobs as their own unprivileged user: it must reach
        # the work dir, append to the ground truth and make its locks
        os.chmod(c.dir, 0o711)
        os.chmod(cls.work, 0o711)
        os.chmod(cls.locks, 0o1777)
        os.chmod(cls.truth, 0o666)
        cls.op, cls.otok = c.new_operator(node_limit=20)
        cls.tenant, cls.ttok = c.new_tenant()
        cls.agents = [Agent(cls.view, cls.otok, f, c.unique(n), labels={"pool": "chaos"},
                            grace="2s").start()
                      for f, n in [("rtx3090-x4.json", "rtx"), ("a100-x8.json", "a100"),
                                   ("h100-x8.json", "h100")]]
        cls.node_ids = [ag.node_id(60) for ag in cls.agents]
        cls.killed_agents = []
        print("chaos: seed %d, work dir %s" % (SEED, cls.work), flush=True)

    @classmethod
    def tearDownClass(cls):
        problems = []
        for ag in cls.agents:
            rc = ag.stop()
            if rc != 0:
                problems.append("agent %s exited %s after SIGTERM:\n%s"
                                % (ag.name, rc, ag.log()[-2000:]))
        for ag in cls.agents:
            rep = sanitizer_text(ag.log())
            if rep:
                problems.append("sanitizer report in agent %s log:\n%s" % (ag.name, rep))
        c = common._clusters[__name__]
        for r in cls.replicas:
            if r is c:
                continue
            r.stop_gpumatchd(timeout=20)
            rep = r.sanitizer_report()
            if rep:
                problems.append("sanitizer report in replica log %s:\n%s" % (r.log_path, rep))
        cls.replicas = [c]
        cls.balancer.close()
        if problems:
            raise AssertionError("\n".join(problems))

    # ---- helpers ----

    def spec(self, i):
        """Job i of a phase: 1 or 2 GPUs, sleeps 1-2 s, every fifth exits 3.
        Its command appends S (start), E (end, with the exit code) and C (it
        started while another run of the same job still held the job's lock)
        records to the ground truth."""
        seconds = 1 + (i % 3) * 0.5
        code = 3 if i % 5 == 4 else 0
        def rec(kind, tail=""):
            # bash builtins only (printf, $EPOCHREALTIME): no process is
            # started between the event and its record
            return ('printf "%%s\\n" "%s $GPUMATCH_JOB_ID $GPUMATCH_LEASE_ID $GPUMATCH_NODE_ID '
                    '${EPOCHREALTIME/./}000%s" >> %s' % (kind, tail, shlex.quote(self.truth)))
        script = "; ".join([
            rec("S"),
            "exec 9>>%s/$GPUMATCH_JOB_ID.lock" % shlex.quote(self.locks),
            "flock -n 9 || " + rec("C"),
            "sleep %s" % seconds,
            # the lock goes before the end record: a C record means the
            # other run started before this one's work was over
            "flock -u 9",
            rec("E", " %d" % code),
            "exit %d" % code,
        ])
        return {"kind": "JOB_KIND_BATCH", "gpusPerNode": 1 + (i % 4 == 3),
                "maxDurationUs": str(60 * 1000000), "labelSelector": {"pool": "chaos"},
                "command": ["bash", "-c", script],
                "env": {"CHAOS_SECONDS": str(seconds), "CHAOS_CODE": str(code)}}

    def submit_carefully(self, key, spec, load=None, timeout=300):
        """SubmitJob with the same key until HTTP 200; returns the job id, or
        None (recorded in load.errors) on a refusal that retrying cannot
        change or at the deadline."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                r = self.view.call("JobService", "SubmitJob",
                                   {"idempotencyKey": key, "name": key, "spec": spec},
                                   token=self.ttok, timeout=10)
                if r.status == 200:
                    return r.body["job"]["id"]
                last = str(r)
                if r.code not in ("unavailable", "deadline_exceeded", "internal", "unknown",
                                  "aborted", "resource_exhausted", None):
                    if load is not None:
                        load.errors.append("%s: %s" % (key, r))
                    return None
            except (OSError, http_errors()) as e:
                last = repr(e)
            if load is not None:
                load.retries += 1
            time.sleep(0.3)
        if load is not None:
            load.errors.append("%s: not acknowledged in %ds (last: %s)" % (key, timeout, last))
        return None

    def truth_records(self):
        out = []
        with open(self.truth) as f:
            for line in f:
                p = line.split()
                if len(p) >= 5 and p[0] in "SEC":
                    out.append({"kind": p[0], "job": p[1], "lease": p[2], "node": p[3],
                                "t": int(p[4]) / 1e9,
                                "code": int(p[5]) if len(p) > 5 else None})
        return out

    def running_count(self, job_ids):
        ids = set(job_ids)
        return sum(1 for r in self.truth_records() if r["kind"] == "S" and r["job"] in ids)

    def ensure_up(self):
        """Before each phase: Postgres and Redis answer, the first gpumatchd
        runs, every agent runs, and the nodes are READY."""
        c = self.c
        c.resume_pg()
        if not c.alive():
            c.start_gpumatchd()
        for ag in self.agents:
            if ag.proc.poll() is not None:
                ag.start()
        ids = ",".join(self.node_ids)
        ok = wait_until(lambda: c.psql_value(
            "SELECT count(*) FROM nodes WHERE id IN (%s) AND state = 2" % ids) == "3", 120,
            "nodes READY", interval=0.5)
        if not ok:
            raise HarnessError("the chaos nodes did not all become READY: %s" % c.psql(
                "SELECT id, state FROM nodes WHERE id IN (%s)" % ids))

    def setUp(self):
        super().setUp()
        reason = KNOWN_FAILING.get(self._testMethodName)
        if reason and os.environ.get("GPUMATCH_CHAOS_ALL") != "1":
            self.skipTest("left out: known to fail: %s (GPUMATCH_CHAOS_ALL=1 runs it)" % reason)
        if "lease_offer_timeout_ms" not in gpumatchd_help():
            self.skipTest("this gpumatchd has no lease handshake (lease_offer_timeout_ms)")
        self.ensure_up()
        self.replica_offsets = {}

    # ---- one phase ----

    def phase(self, name, fault, count=10, gap=0.8, allow_agent_restart=False):
        """Starts a load of `count` jobs, waits until some run, runs fault()
        (which returns when the fault is healed), submits a probe job, lets
        the load finish and checks everything (see the module docstring)."""
        t0 = time.monotonic()
        load = Load(self, name, count, gap=gap)
        started = wait_until(lambda: len(load.acked) >= 3 and
                             self.running_count(load.acked.values()) >= 1, 180,
                             "jobs running before the fault")
        self.assertTrue(started, "%s: no job ran before the fault (acked %d, errors %s)"
                        % (name, len(load.acked), load.errors[:3]))
        fault()
        healed_us = now_us()
        load.stop()
        probe = self.submit_carefully("chaos-%s-probe" % name, self.spec(0), load)
        finished = load.join(360)
        problems = []
        if not finished:
            problems.append("the careful clients were still retrying after 360 s")
        problems += ["submit refused: %s" % e for e in load.errors]
        jobs = dict(load.acked)
        if probe:
            jobs["chaos-%s-probe" % name] = probe
            placed = wait_until(lambda: self.c.psql_value(
                "SELECT count(*) FROM leases WHERE job_id = %s AND assigned_at_us >= %d"
                % (probe, healed_us)) != "0", 180, "a placement after the fault")
            if not placed:
                problems.append("scheduling did not resume: job %s, submitted after the fault "
                                "was healed, was not placed within 180 s" % probe)
        problems += self.verify(name, jobs, allow_agent_restart)
        print("chaos: %s: %d jobs acknowledged (%d submit retries), %.0f s"
              % (name, len(jobs), load.retries, time.monotonic() - t0), flush=True)
        if problems:
            self.fail("%s: %d problem(s):\n  %s" % (name, len(problems), "\n  ".join(problems)))

    def verify(self, name, jobs, allow_agent_restart):
        c = self.c
        problems = []
        ids = sorted(set(jobs.values()), key=int)
        if not ids:
            return ["no job was acknowledged"]
        idlist = ",".join(ids)
        # every acknowledged job is in Postgres, one job per key
        rows = c.psql("SELECT idempotency_key, id FROM jobs WHERE tenant_id = %s AND "
                      "idempotency_key LIKE 'chaos-%s-%%'" % (self.tenant["id"], name))
        per_key = {}
        for k, i in rows:
            per_key.setdefault(k, []).append(i)
        for k, jid in jobs.items():
            if per_key.get(k) != [jid]:
                problems.append("key %s: acknowledged as job %s, Postgres has %s"
                                % (k, jid, per_key.get(k)))
        # quiesce: every job terminal, every lease ended and settled
        def states():
            return {r[0]: r[1:] for r in c.psql(
                "SELECT id, state, exit_code, term_signal, failure_message FROM jobs "
                "WHERE id IN (%s)" % idlist)}
        done = wait_until(lambda: all(int(s[0]) in TERMINAL_JOB for s in states().values()),
                          240, "jobs terminal", interval=0.5)
        st = states()
        if not done:
            problems.append("jobs not terminal after 240 s: %s" % {
                i: s[0] for i, s in st.items() if int(s[0]) not in TERMINAL_JOB})
        settled = wait_until(lambda: c.psql_value(
            "SELECT count(*) FROM leases WHERE job_id IN (%s) AND (state <= 4 OR NOT "
            "ledger_settled)" % idlist) == "0", 120, "leases settled", interval=0.5)
        if not settled:
            problems.append("leases not ended and settled after 120 s: %s" % c.psql(
                "SELECT id, job_id, state, ledger_settled FROM leases WHERE job_id IN (%s) "
                "AND (state <= 4 OR NOT ledger_settled)" % idlist))
        leases = c.psql("SELECT id, job_id, node_id, state, gpu_mask, started_at_us, "
                        "ended_at_us, billed_gpu_seconds FROM leases WHERE job_id IN (%s)"
                        % idlist)
        truth = [r for r in self.truth_records() if r["job"] in set(ids)]
        seconds = {}  # job -> its sleep
        for k, jid in jobs.items():
            seconds[jid] = float(self.spec(int(k.rsplit("-", 1)[1]) if not k.endswith("probe")
                                           else 0)["env"]["CHAOS_SECONDS"])
        codes = {jid: int(self.spec(int(k.rsplit("-", 1)[1]) if not k.endswith("probe")
                                    else 0)["env"]["CHAOS_CODE"]) for k, jid in jobs.items()}
        for jid in ids:
            recs = [r for r in truth if r["job"] == jid]
            starts = [r for r in recs if r["kind"] == "S"]
            ends = [r for r in recs if r["kind"] == "E"]
            for r in recs:
                if r["kind"] == "C":
                    problems.append("job %s: lease %s started on node %s while another run "
                                    "of the job was still alive (two nodes at once)"
                                    % (jid, r["lease"], r["node"]))
            if len(ends) > 1:
                problems.append("job %s ran to completion %d times (leases %s)"
                                % (jid, len(ends), [e["lease"] for e in ends]))
            if ends and any(s["t"] > ends[0]["t"] for s in starts):
                problems.append("job %s started again after it had run to completion" % jid)
            s = st.get(jid)
            if not s:
                continue
            state, exit_code, signum, msg = int(s[0]), int(s[1]), int(s[2]), s[3]
            want = codes[jid]
            if state == 4:
                if len(ends) != 1 or ends[0]["code"] != 0 or want != 0:
                    problems.append("job %s SUCCEEDED but the ground truth has %d completed "
                                    "runs (codes %s; its command exits %d)"
                                    % (jid, len(ends), [e["code"] for e in ends], want))
            elif state == 5 and want != 0 and len(ends) == 1 and exit_code == want:
                pass  # failed by its own exit code, once
            elif state == 5 and allow_agent_restart and not ends and \
                    "agent restarted" in msg:
                pass  # its process was killed with the agent; never completed
            else:
                problems.append("acknowledged job %s ended %s (exit %d, signal %d, %r) after "
                                "%d completed runs; its command exits %d"
                                % (jid, TERMINAL_JOB.get(state, state), exit_code, signum, msg,
                                   len(ends), want))
        # billing: no lease billed beyond what it ran
        tol = HEARTBEAT_MS / 1000 + 1.0
        by_lease = {}
        for r in truth:
            by_lease.setdefault(r["lease"], {})[r["kind"]] = r
        for lid, jid, node, state, mask, started, ended, billed in leases:
            gpus = bin(int(mask)).count("1") or 1
            billed_s = int(billed) / gpus
            run = by_lease.get(lid, {})
            if "S" in run and "E" in run:
                real = run["E"]["t"] - run["S"]["t"]
            elif "S" in run:
                real = seconds.get(jid, 2) + 1  # killed before its end: at most its sleep
            else:
                real = 0
            if billed_s > real + tol:
                problems.append("lease %s (job %s, node %s, state %s) billed %.1f GPU-s per GPU "
                                "for a run of %.2f s (%s)"
                                % (lid, jid, node, state, billed_s, real,
                                   "never started" if "S" not in run else "ground truth"))
        # the ledger's own audit
        r = self.view.admin("AuditLedger", {})
        if r.status != 200:
            problems.append("AuditLedger: %s" % r)
        elif int(r.body.get("violationCount", 0)):
            problems.append("AuditLedger: %s violations: %s"
                            % (r.body.get("violationCount"),
                               json.dumps(r.body.get("violations", []))[:1500]))
        return problems

    # ---- faults ----

    def kill9_and_restart(self, r):
        r.kill9()
        time.sleep(0.2)
        r.start_gpumatchd()

    def test_01_kill9_gpumatchd(self):
        def fault():
            time.sleep(1)
            self.kill9_and_restart(self.c)
        self.phase("kill9", fault)

    def test_02_kill9_gpumatchd_five_times(self):
        rng = self.rng

        def fault():
            for _ in range(5):
                time.sleep(rng.uniform(0.5, 8.0))
                self.kill9_and_restart(self.c)
        self.phase("kill9x5", fault, count=16, gap=1.0)

    def test_03_kill9_agent_restart_same_state_dir(self):
        def fault():
            # the agent whose node started this phase's latest run
            recs = [r for r in self.truth_records() if r["kind"] == "S"]
            node = recs[-1]["node"] if recs else self.node_ids[0]
            ag = self.agents[self.node_ids.index(node)] if node in self.node_ids \
                else self.agents[0]
            ag.kill9()
            time.sleep(0.3)
            ag.start()
        self.phase("agent", fault, allow_agent_restart=True)

    def test_04_kill9_between_lease_commit_and_reply(self):
        """gpumatchd dies (its own SIGKILL, armed by a test-only flag) after
        an AcquireLease offer has committed and before the reply is written;
        the agent never sees that lease."""
        c = self.c
        hook = "--test_die_after_lease_commit=2"
        if "test_die_after_lease_commit" not in gpumatchd_help():
            self.skipTest("this gpumatchd has no --test_die_after_lease_commit hook")

        def fault():
            time.sleep(0.5)
            c.kill9()
            try:
                c.start_gpumatchd([hook])
            except HarnessError:
                pass  # it may die before it answers /readyz
            died = wait_until(lambda: not c.alive(), 120, "gpumatchd to die in the hook")
            self.assertTrue(died, "gpumatchd with %s did not die within 120 s" % hook)
            self.assertEqual(c.proc.returncode, -signal.SIGKILL)
            c.start_gpumatchd()
        self.phase("commitkill", fault)

    def test_05_redis_flushall(self):
        def fault():
            time.sleep(1)
            self.c.redis_cli("FLUSHALL")
        self.phase("flushall", fault)

    def test_06_redis_kill9_data_wiped(self):
        def fault():
            time.sleep(1)
            c = self.c
            c.kill_redis()
            d = os.path.join(c.dir, "redis")
            for f in os.listdir(d):
                p = os.path.join(d, f)
                if f.startswith("appendonly") or f.endswith((".aof", ".rdb")):
                    if os.path.isdir(p):
                        for g in os.listdir(p):
                            os.remove(os.path.join(p, g))
                        os.rmdir(p)
                    else:
                        os.remove(p)
            time.sleep(2)
            c.start_redis()
        self.phase("rediswipe", fault)

    def test_07_postgres_stopped_20s(self):
        def fault():
            time.sleep(1)
            self.c.stop_pg()
            time.sleep(20)
            self.c.start_pg()
        self.phase("pgstop", fault)

    def test_08_postgres_sigstop_10s(self):
        def fault():
            time.sleep(1)
            self.c.pause_pg()
            try:
                time.sleep(10)
            finally:
                self.c.resume_pg()
        self.phase("pgpause", fault)

    def sigstop_gpumatchd(self, seconds):
        def fault():
            time.sleep(1)
            os.kill(self.c.pid, signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                os.kill(self.c.pid, signal.SIGCONT)
        return fault

    def test_09_gpumatchd_sigstop_10s(self):
        self.phase("gmpause10", self.sigstop_gpumatchd(10))

    def test_10_gpumatchd_sigstop_35s(self):
        self.phase("gmpause35", self.sigstop_gpumatchd(35))

    def leader_kill(self, n):
        c = self.c
        extra = [c.replica(name="r%d-%d" % (n, i)) for i in range(1, n)]
        self.replicas.extend(extra)

        def leader():
            seen = [r for r in self.replicas if r.alive() and
                    r.metric("gpumatch_scheduler_leader") == 1]
            return seen[0] if len(seen) == 1 else None

        def fault():
            time.sleep(1)
            lead = wait_until(leader, 60, "one leader")
            self.assertIsNotNone(lead, "no single leader among %d replicas" % n)
            lead.kill9()
        try:
            self.phase("leader%d" % n, fault, count=12)
        finally:
            for r in extra:
                r.stop_gpumatchd(timeout=20)
                rep = r.sanitizer_report()
                self.assertEqual(rep, "", "sanitizer report in %s" % r.log_path)
                self.replicas.remove(r)
            if not c.alive():
                c.start_gpumatchd()

    def test_11_two_replicas_leader_killed(self):
        self.leader_kill(2)

    def test_12_three_replicas_leader_killed(self):
        self.leader_kill(3)


def gpumatchd_help():
    import subprocess
    from cluster import gpumatchd_path
    r = subprocess.run([gpumatchd_path(), "--help"], capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


def http_errors():
    import http.client
    return http.client.HTTPException
