"""Jobs with an image run in real podman (runc) containers: rootfs,
environment, GPUs, network, user, limits (OOM), pull failures and the
registry lists, stop and kill, orphans after an agent crash; tenants' logs
(complete, in order, follow, capped, across an agent restart, scoped); an
agent's graceful stop requeueing its jobs; bad specs refused at submit.

The image is imported from a busybox-static rootfs into a private podman
storage (no registry is reachable), so tests never touch the host's
images or another run's containers."""

import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time

import common
from clitools import GPUMATCH, Agent, cli, cli_env, cli_json, sanitizer_text, wait_jobs
from common import ItCase

SLOW = True
OWN_SUITE = True  # meson test 'containers'

IMAGE = "localhost/gpumatch-test:1"
LOG_CAP = 16 << 20
STORAGE = None


def podman(*args, check=True, timeout=120):
    cmd = ["podman", "--root", os.path.join(STORAGE, "root"), "--runroot",
           os.path.join(STORAGE, "run"), "--runtime", "runc"] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("%s: exit %d\n%s" % (" ".join(cmd), r.returncode, r.stderr))
    return r


def build_image():
    busybox = shutil.which("busybox") or "/bin/busybox"
    root = tempfile.mkdtemp(prefix="rootfs-", dir=STORAGE)
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "data"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        p = os.path.join(root, "bin", a)
        if not os.path.exists(p):
            os.symlink("busybox", p)
    with open(os.path.join(root, "etc", "os-release"), "w") as f:
        f.write('NAME="gpumatch test rootfs"\nID=gpumatch-test\n')
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
    tar = os.path.join(STORAGE, "rootfs.tar")
    with tarfile.open(tar, "w") as t:
        t.add(root, arcname=".")
    podman("import", "--change", 'CMD ["/bin/sh"]', tar, IMAGE)


def setUpModule():
    global STORAGE
    if not shutil.which("podman") or not shutil.which("runc"):
        raise AssertionError("podman and runc are required (deploy/install-deps.sh)")
    # short: podman's sockets live under it
    STORAGE = tempfile.mkdtemp(prefix="gmct-", dir="/tmp")
    build_image()
    common.setup_module(__name__, ["--allow_unverified=true", "--cycle_interval_ms=100",
                                   "--heartbeat_interval_ms=500", "--heartbeat_timeout_ms=15000",
                                   "--long_poll_max_ms=5000", "--log_cap_bytes=%d" % LOG_CAP,
                                   "--volume_allow_paths=/srv/gpumatch-data,/mnt/shared"])


def tearDownModule():
    try:
        common.teardown_module(__name__)
    finally:
        if STORAGE:
            podman("rm", "-af", check=False)
            podman("rmi", "-af", check=False)  # (not "system reset": it is host-wide)
            shutil.rmtree(STORAGE, ignore_errors=True)


def containers(label):
    out = podman("ps", "-a", "--filter", "label=" + label, "--format", "{{.Names}}").stdout
    return [x for x in out.split() if x]


class ContainerTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.op, cls.otok = c.new_operator(node_limit=50)
        cls.tenant, cls.ttok = c.new_tenant()
        cls.tenant_b, cls.ttok_b = c.new_tenant()
        cls.op_b, cls.otok_b = c.new_operator(node_limit=5)
        cls.work = os.path.join(c.dir, "ct-work")
        os.makedirs(cls.work, exist_ok=True)
        cls.rt = ["--container-storage", STORAGE, "--registry-deny", "denied.example.com",
                  "--pull-timeout", "30s"]
        cls.agents = []
        cls.main = cls.agent("a100-x8.json", "ctmain", "main")
        for ag in cls.agents:
            ag.node_id()

    @classmethod
    def agent(cls, node_file, name, pool, grace="2s"):
        c = common._clusters[__name__]
        ag = Agent(c, cls.otok, node_file, c.unique(name), labels={"pool": pool}, grace=grace,
                   extra_args=cls.rt).start()
        cls.agents.append(ag)
        return ag

    @classmethod
    def tearDownClass(cls):
        problems = []
        for ag in cls.agents:
            if ag.proc.returncode is not None:
                continue
            rc = ag.stop()
            if rc != 0:
                problems.append("agent %s exited %s:\n%s" % (ag.name, rc, ag.log()[-2000:]))
        for ag in cls.agents:
            rep = sanitizer_text(ag.log())
            if rep:
                problems.append("sanitizer report in agent %s:\n%s" % (ag.name, rep))
        if problems:
            raise AssertionError("\n".join(problems))

    # ---- helpers ----

    def submit(self, spec, name, token=None, pool="main"):
        spec = dict(spec)
        spec.setdefault("gpusPerNode", 1)
        spec.setdefault("maxDuration", "5m")
        spec.setdefault("labelSelector", {"pool": pool})
        path = os.path.join(self.work, "%s.json" % name)
        with open(path, "w") as f:
            json.dump({"name": name, "spec": spec}, f)
        r = cli(self.c, "submit", path, token=token or self.ttok)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout.strip()

    def job(self, jid, token=None):
        return cli_json(self.c, "get", jid, token=token or self.ttok)["job"]

    def wait(self, jid, timeout=120):
        return wait_jobs(self.c, self.ttok, [jid], timeout)[jid]

    def logs(self, jid, *args, token=None):
        r = cli(self.c, "logs", jid, *args, token=token or self.ttok, timeout=120)
        return r

    def lease_of(self, jid, attempt=0):
        return self.job(jid)["attemptHistory"][attempt]["placement"][0]["leaseId"]

    def wait_no_container(self, lease):
        common.wait_for(lambda: not containers("gpumatch.lease=%s" % lease), 30,
                        what="container of lease %s removed" % lease)

    # ---- the container itself ----

    def test_container_rootfs_env_gpus_network_and_user(self):
        secret = os.path.join(self.c.dir, "host-only-file")
        with open(secret, "w") as f:
            f.write("x")
        jid = self.submit({"image": IMAGE, "gpusPerNode": 2, "user": "1000:1000",
                           "env": {"GREETING": "hi"},
                           "command": ["sh", "-c",
                                       "cat /etc/os-release; echo uid=$(id -u);"
                                       " echo nets=$(ls /sys/class/net | tr '\\n' ' ');"
                                       " test -e %s && echo HOST-VISIBLE;"
                                       " touch /scratch/x && echo scratch-ok;"
                                       " echo ENV-BEGIN; env | sort; echo ENV-END" % secret]},
                          "rootfs")
        j = self.wait(jid)
        self.assertEqual(j["state"], "JOB_STATE_SUCCEEDED", j)
        out = self.logs(jid)
        self.assertEqual(out.returncode, 0, out.stderr)
        text = out.stdout
        self.assertIn('NAME="gpumatch test rootfs"', text)  # the image's, not Debian's
        self.assertNotIn("Debian", text)
        self.assertIn("uid=1000", text)
        self.assertRegex(text, r"nets=lo *\n")  # network none: loopback only
        self.assertNotIn("HOST-VISIBLE", text)
        self.assertIn("scratch-ok", text)
        env = dict(line.split("=", 1) for line in
                   text.split("ENV-BEGIN\n", 1)[1].split("ENV-END", 1)[0].splitlines())
        hist = self.job(jid)["attemptHistory"][0]["placement"][0]
        gpus = ",".join(str(g) for g in hist["gpuIndexes"])
        self.assertEqual(env.pop("CUDA_VISIBLE_DEVICES"), gpus)
        self.assertEqual(env.pop("NVIDIA_VISIBLE_DEVICES"), gpus)
        self.assertEqual(env.pop("GPUMATCH_LEASE_ID"), hist["leaseId"])
        self.assertEqual(env.pop("GPUMATCH_JOB_ID"), jid)
        self.assertEqual(env.pop("GREETING"), "hi")
        self.assertEqual(env.pop("GPUMATCH_SCRATCH"), "/scratch")
        # exactly the documented set (docs/jobs.md, "Environment")
        self.assertEqual(sorted(env), sorted([
            "GPUMATCH_NODE_ID", "GPUMATCH_GANG_INDEX", "GPUMATCH_GANG_SIZE",
            "GPUMATCH_GANG_PEERS", "GPUMATCH_DEADLINE_US", "HOME", "HOSTNAME", "PATH", "PWD",
            "SHLVL"]))
        digest = self.c.psql_value("SELECT image_digest FROM leases WHERE id = %s"
                                   % hist["leaseId"])
        self.assertRegex(digest, r"^sha256:[0-9a-f]{64}$")
        self.wait_no_container(hist["leaseId"])
        scratch = [os.path.join(a.state_dir, "scratch", "lease-%s" % hist["leaseId"])
                   for a in self.agents]
        common.wait_for(lambda: not any(os.path.exists(p) for p in scratch), 20,
                        what="scratch removed")

    def test_memory_limit_oom_is_reported_as_oom(self):
        jid = self.submit({"image": IMAGE, "memoryBytes": str(16 << 20),
                           "command": ["sh", "-c", "echo start; exec tail /dev/zero"]}, "oom")
        j = self.wait(jid)
        self.assertEqual(j["state"], "JOB_STATE_FAILED", j)
        self.assertEqual(j["failure"]["reason"], "FAILURE_REASON_OOM", j)

    def test_missing_image_fails_image_pull_with_the_runtime_message(self):
        jid = self.submit({"image": "localhost/gpumatch-missing:1", "command": ["true"]},
                          "missing")
        j = self.wait(jid)
        self.assertEqual(j["state"], "JOB_STATE_FAILED", j)
        self.assertEqual(j["failure"]["reason"], "FAILURE_REASON_IMAGE_PULL", j)
        self.assertIn("image pull failed", j["failure"]["message"])
        self.assertIn("gpumatch-missing", j["failure"]["message"])

    def test_image_removed_after_an_earlier_run_is_looked_up_again(self):
        # the agent starts an image it ran before without looking it up
        # first; when the image has gone meanwhile, the run's failure sends
        # it to the lookup and the pull (which fails here: no registry)
        ref = "localhost/gpumatch-gone:1"
        podman("tag", IMAGE, ref)
        first = self.submit({"image": ref, "command": ["echo", "first"]}, "gone-1")
        self.assertEqual(self.wait(first)["state"], "JOB_STATE_SUCCEEDED")
        podman("rmi", ref)  # the tag only: IMAGE stays
        jid = self.submit({"image": ref, "command": ["echo", "second"]}, "gone-2")
        j = self.wait(jid)
        self.assertEqual(j["state"], "JOB_STATE_FAILED", j)
        self.assertEqual(j["failure"]["reason"], "FAILURE_REASON_IMAGE_PULL", j)
        self.assertIn("gpumatch-gone", j["failure"]["message"])
        out = self.logs(jid).stdout
        self.assertIn("is no longer on this node", out)
        self.assertNotIn("second", out.replace("gpumatch-gone", ""))

    def test_denied_registry_refused_before_pulling(self):
        jid = self.submit({"image": "denied.example.com/team/x:1", "command": ["true"]},
                          "denied")
        j = self.wait(jid)
        self.assertEqual(j["state"], "JOB_STATE_FAILED", j)
        self.assertEqual(j["failure"]["reason"], "FAILURE_REASON_IMAGE_PULL", j)
        self.assertIn("refused before pulling", j["failure"]["message"])
        self.assertIn("deny list", j["failure"]["message"])

    def test_cancel_stops_container_within_grace_then_kills(self):
        jid = self.submit({"image": IMAGE, "command": [
            "sh", "-c", "trap 'echo got-term' TERM; echo ready; while :; do sleep 1; done"]},
            "stubborn")
        common.wait_for(lambda: "ready" in self.logs(jid).stdout, 60, what="container ready")
        lease = self.job(jid)["placement"][0]["leaseId"]
        self.assertEqual(len(containers("gpumatch.lease=%s" % lease)), 1)
        r = cli(self.c, "cancel", jid, "--reason", "test", token=self.ttok)
        self.assertEqual(r.returncode, 0, r.stderr)
        j = self.wait(jid, 60)
        self.assertEqual(j["state"], "JOB_STATE_CANCELLED", j)
        # the trap ran (SIGTERM first), the shell kept going, SIGKILL ended it
        self.assertIn("got-term", self.logs(jid).stdout)
        self.wait_no_container(lease)

    def test_agent_kill9_orphan_removed_and_lease_reported_once(self):
        ag = self.agent("rtx3090-x4.json", "ctphoenix", "phoenix")
        ag.node_id()
        jid = self.submit({"image": IMAGE, "command": [
            "sh", "-c", "i=0; while :; do echo line-$i; i=$((i+1)); sleep 0.05; done"]},
            "phoenix", pool="phoenix")
        common.wait_for(lambda: "line-20" in self.logs(jid).stdout, 60, what="output flowing")
        lease = self.job(jid)["placement"][0]["leaseId"]
        ag.kill9()
        self.assertEqual(len(containers("gpumatch.lease=%s" % lease)), 1)  # outlived the agent
        ag.start()
        # the restarted agent reports the lost lease EXPIRED (lost, not
        # failed): the job is queued again and runs a second attempt
        common.wait_for(lambda: int(self.c.psql_value(
            "SELECT state FROM leases WHERE id = %s" % lease)) == 7, 60,
            what="lease %s reported expired" % lease)
        self.assertIn("agent restarted", self.c.psql_value(
            "SELECT end_message FROM leases WHERE id = %s" % lease))
        self.wait_no_container(lease)
        common.wait_for(lambda: len(self.job(jid)["attemptHistory"]) == 2, 60,
                        what="second attempt")
        r = cli(self.c, "cancel", jid, "--reason", "test over", token=self.ttok)
        self.assertEqual(r.returncode, 0, r.stderr)
        j = self.wait(jid, 60)
        self.assertEqual(j["state"], "JOB_STATE_CANCELLED", j)
        # RUNNING then EXPIRED, each applied once
        applied = [x for x in ag.log().splitlines()
                   if 'msg="reported" lease=%s seq=' % lease in x and "duplicate=true" not in x]
        self.assertEqual(len(applied), 2, applied)
        self.assertEqual(self.c.count("job_events", "job_id = %s AND kind = 'requeued'" % jid),
                         1)
        # every line the container wrote before the crash, once, in order
        out = self.logs(jid, "--attempt", "1").stdout.split()
        self.assertGreater(len(out), 20)
        self.assertEqual(out, ["line-%d" % i for i in range(len(out))])
        with open(os.path.join(ag.state_dir, "logs", "lease-%s.log" % lease)) as f:
            self.assertEqual(f.read().split(), out)

    # ---- logs ----

    def test_ten_megabytes_interleaved_arrive_complete_and_in_order(self):
        n = 500000
        jid = self.submit({"image": IMAGE, "command": [
            "sh", "-c", "seq 1 %d | sed 's/^/out-/' & seq 1 %d | sed 's/^/err-/' >&2; wait"
            % (n, n)]}, "tenmb")
        j = self.wait(jid, 180)
        self.assertEqual(j["state"], "JOB_STATE_SUCCEEDED", j)
        r = subprocess.run([GPUMATCH, "logs", jid], capture_output=True, timeout=300,
                           env=cli_env(self.c, self.ttok))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreater(len(r.stdout), 10 * 1000 * 1000)
        outs, errs = [], []
        for line in r.stdout.decode().splitlines():
            (outs if line.startswith("out-") else errs).append(line)
        self.assertEqual(outs, ["out-%d" % i for i in range(1, n + 1)])
        self.assertEqual(errs, ["err-%d" % i for i in range(1, n + 1)])
        tail = cli(self.c, "logs", jid, "--tail", "3", token=self.ttok)
        self.assertEqual(len(tail.stdout.splitlines()), 3, tail.stdout[-300:])

    def test_follow_shows_lines_while_the_job_runs(self):
        jid = self.submit({"image": IMAGE, "command": [
            "sh", "-c", "i=0; while [ $i -lt 40 ]; do echo tick-$i; i=$((i+1)); sleep 0.25;"
            " done"]}, "follow")
        p = subprocess.Popen([GPUMATCH, "logs", jid, "--follow"], stdout=subprocess.PIPE,
                             text=True, env=cli_env(self.c, self.ttok))
        try:
            first = p.stdout.readline()
            self.assertEqual(first.strip(), "tick-0")
            self.assertEqual(self.job(jid)["state"], "JOB_STATE_RUNNING")
            rest = p.stdout.read()
            self.assertEqual(p.wait(120), 0)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertEqual(("tick-0\n" + rest).split(), ["tick-%d" % i for i in range(40)])

    def test_logs_are_scoped_to_the_tenant_and_the_operator(self):
        jid = self.submit({"image": IMAGE, "command": ["echo", "private"]}, "scoped")
        self.wait(jid)
        self.assertIn("private", self.logs(jid).stdout)
        other = self.logs(jid, token=self.ttok_b)
        self.assertEqual(other.returncode, 1, other.stdout)
        self.assertIn("not_found", other.stderr)
        self.assertIn("private", self.logs(jid, token=self.otok).stdout)  # its node's operator
        stranger = self.logs(jid, token=self.otok_b)
        self.assertEqual(stranger.returncode, 1)
        self.assertIn("private", self.logs(jid, token=self.c.admin_token).stdout)

    def test_cap_truncates_with_a_marker_and_the_job_succeeds(self):
        jid = self.submit({"image": IMAGE, "command": [
            "sh", "-c", "yes 0123456789abcdef | head -c %d" % (LOG_CAP + (2 << 20))]}, "capped")
        j = self.wait(jid, 180)
        self.assertEqual(j["state"], "JOB_STATE_SUCCEEDED", j)
        r = subprocess.run([GPUMATCH, "logs", jid], capture_output=True, timeout=300,
                           env=cli_env(self.c, self.ttok))
        self.assertEqual(r.returncode, 0, r.stderr)
        body, marker = r.stdout[:LOG_CAP], r.stdout[LOG_CAP:]
        self.assertEqual(len(body), LOG_CAP)
        self.assertIn(b"output truncated at %d bytes; %d more bytes" % (LOG_CAP, 2 << 20),
                      marker)

    def test_log_chunk_for_another_nodes_lease_is_refused(self):
        jid = self.submit({"image": IMAGE, "command": ["echo", "mine"]}, "foreign")
        self.wait(jid)
        lease = self.lease_of(jid)
        fence = self.c.psql_value("SELECT fencing_token FROM leases WHERE id = %s" % lease)
        before = self.c.psql_value("SELECT total_bytes FROM lease_logs WHERE lease_id = %s"
                                   % lease)
        reg = common.node_req(self.c.unique("intruder"))
        node = self.c.call("NodeService", "RegisterNode", reg, token=self.otok_b)
        self.assertOk(node)
        r = self.c.call("NodeService", "AppendLeaseLogs", {
            "nodeId": node.body["node"]["id"], "leaseId": lease, "fencingToken": fence,
            "offset": before, "data": "aW5qZWN0ZWQK"}, token=self.otok_b)
        self.assertError(r, "not_found", field="leaseId")
        self.assertEqual(self.c.psql_value("SELECT total_bytes FROM lease_logs WHERE"
                                           " lease_id = %s" % lease), before)

    # ---- graceful stop ----

    def test_agent_sigterm_requeues_running_jobs_billed_for_time_used(self):
        victim = self.agent("rtx3090-x4.json", "ctvictim", "drain", grace="2s")
        victim_id = victim.node_id()
        ids = [self.submit({"image": IMAGE, "command": [
            "sh", "-c", "sleep 10; echo finished"]},
            "stop-%d" % i, pool="drain") for i in range(2)]
        common.wait_for(lambda: all(self.job(i)["state"] == "JOB_STATE_RUNNING" for i in ids),
                        60, what="both running on the victim")
        time.sleep(1)
        self.assertEqual(victim.stop(), 0, victim.log()[-2000:])
        # drained while its jobs stopped (then lost, as it stopped heartbeating)
        self.assertGreaterEqual(self.c.count("node_state_log",
                                             "node_id = %s AND state = 3" % victim_id), 1)
        # the agent's INTERRUPTED reports put both back in the queue
        common.wait_for(lambda: all(self.job(i)["state"] == "JOB_STATE_QUEUED" for i in ids),
                        60, what="both jobs queued again")
        rescue = self.agent("a100-x8.json", "ctrescue", "drain")
        rescue_id = rescue.node_id()
        jobs = wait_jobs(self.c, self.ttok, ids, 120)
        for i in ids:
            self.assertEqual(jobs[i]["state"], "JOB_STATE_SUCCEEDED", jobs[i])
            j = self.job(i)
            hist = j["attemptHistory"]
            self.assertEqual(len(hist), 2, hist)
            self.assertEqual(hist[0]["placement"][0]["nodeId"], victim_id)
            self.assertEqual(hist[0]["outcome"], "JOB_STATE_QUEUED")  # not a failure
            self.assertEqual(hist[1]["placement"][0]["nodeId"], rescue_id)
            lease = hist[0]["placement"][0]["leaseId"]
            state, billed, ran = self.c.psql(
                "SELECT state, billed_end_us - started_at_us, ended_at_us - started_at_us"
                " FROM leases WHERE id = %s" % lease)[0]
            self.assertEqual(int(state), 20)  # INTERRUPTED
            self.assertLessEqual(int(billed), int(ran))
            self.assertIn("finished", self.logs(i).stdout)

    def test_node_drain_stop_jobs_requeues(self):
        ag = self.agent("rtx3090-x4.json", "ctdrain2", "drain2", grace="5s")
        node = ag.node_id()
        jid = self.submit({"image": IMAGE, "command": ["sh", "-c", "sleep 4; echo done"]},
                          "drain2", pool="drain2")
        common.wait_for(lambda: self.job(jid)["state"] == "JOB_STATE_RUNNING", 60,
                        what="running")
        r = cli(self.c, "node", "drain", node, "--stop-jobs", "--grace", "3s", token=self.otok)
        self.assertEqual(r.returncode, 0, r.stderr)
        common.wait_for(lambda: self.job(jid)["state"] == "JOB_STATE_QUEUED", 60,
                        what="requeued")
        self.agent("h100-x8.json", "ctdrain2b", "drain2")
        j = self.wait(jid, 120)
        self.assertEqual(j["state"], "JOB_STATE_SUCCEEDED", j)
        self.assertEqual(self.job(jid)["attemptHistory"][0]["outcome"], "JOB_STATE_QUEUED")

    # ---- bad input ----

    def test_bad_container_specs_refused_at_submit_naming_the_field(self):
        cases = [
            ({"image": "Not A/Valid::Ref", "command": ["true"]}, "spec.image"),
            ({"image": "busybox@sha256:xyz", "command": ["true"]}, "spec.image"),
            ({"image": IMAGE, "env": {"1BAD": "x"}}, "spec.env[1BAD]"),
            ({"image": IMAGE, "env": {"A-B": "x"}}, "spec.env[A-B]"),
            ({"image": IMAGE, "env": {"GPUMATCH_LEASE_ID": "7"}}, "spec.env[GPUMATCH_LEASE_ID]"),
            ({"image": IMAGE, "memoryBytes": "-1"}, "spec.memoryBytes"),
            ({"image": IMAGE, "memoryBytes": str(1 << 60)}, "spec.memoryBytes"),
            ({"image": IMAGE, "shmBytes": "-5"}, "spec.shmBytes"),
            ({"image": IMAGE, "pidsLimit": 999999999}, "spec.pidsLimit"),
            ({"image": IMAGE, "network": "host"}, "spec.network"),
            ({"image": IMAGE, "user": "root"}, "spec.user"),
            ({"image": IMAGE, "volumes": [{"hostPath": "/etc", "containerPath": "/x"}]},
             "spec.volumes[0].hostPath"),
            ({"image": IMAGE, "volumes": [{"hostPath": "/srv/gpumatch-data/../../etc",
                                           "containerPath": "/x"}]},
             "spec.volumes[0].hostPath"),
            ({"image": IMAGE, "volumes": [{"hostPath": "/mnt/shared/a",
                                           "containerPath": "/proc/x"}]},
             "spec.volumes[0].containerPath"),
        ]
        before = self.c.count("jobs")
        for i, (extra, field) in enumerate(cases):
            spec = dict(common.job_spec(), **extra)
            r = self.c.call("JobService", "SubmitJob",
                            common.submit_req("bad-ct-%d" % i, spec), token=self.ttok)
            self.assertError(r, "invalid_argument", field=field, msg=str(extra))
        self.assertEqual(self.c.count("jobs"), before)
        ok = dict(common.job_spec(), image=IMAGE, labelSelector={"pool": "nowhere"},
                  volumes=[{"hostPath": "/mnt/shared/a", "containerPath": "/data"}])
        self.assertOk(self.c.call("JobService", "SubmitJob", common.submit_req("ok-ct", ok),
                                  token=self.ttok))
