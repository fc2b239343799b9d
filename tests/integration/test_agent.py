"""The node agent end to end: real Postgres, Redis and gpumatchd, three
simulated agents (`gpumatch agent --simulate examples/nodes/*.json`) and the
gpumatch command. Jobs really run (sh, sleep) in their own process groups.
Every test's jobs select their nodes by label, so tests do not take each
other's GPUs."""

import json
import os
import signal
import time

import common
from clitools import NODES_DIR, Agent, cli, cli_json, sanitizer_text, wait_jobs
from cluster import SOURCE
from common import ItCase

SLOW = True


def setUpModule():
    common.setup_module(__name__, ["--allow_unverified=true", "--cycle_interval_ms=100",
                                   "--heartbeat_interval_ms=500", "--heartbeat_timeout_ms=3000",
                                   "--long_poll_max_ms=5000"])


def tearDownModule():
    common.teardown_module(__name__)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes (the agent reaps its own children)
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class AgentTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.op, cls.otok = c.new_operator(node_limit=50)
        cls.tenant, cls.ttok = c.new_tenant()
        cls.work = os.path.join(c.dir, "jobs-out")
        os.makedirs(cls.work, exist_ok=True)
        # as root the agent runs bare jobs as an unprivileged user (nobody
        # here): they write their outputs into this shared directory
        os.chmod(c.dir, 0o711)
        os.chmod(cls.work, 0o1777)
        cls.agents = [Agent(c, cls.otok, f, c.unique(n), labels={"pool": "main"}).start()
                      for f, n in [("rtx3090-x4.json", "rtx"), ("a100-x8.json", "a100"),
                                   ("h100-x8.json", "h100")]]
        cls.extra_agents = []
        for ag in cls.agents:
            ag.node_id()

    @classmethod
    def tearDownClass(cls):
        problems = []
        for ag in cls.agents + cls.extra_agents:
            if ag.proc.returncode is not None:
                continue  # killed on purpose
            rc = ag.stop()
            if rc != 0:
                problems.append("agent %s exited %s after SIGTERM:\n%s" % (ag.name, rc,
                                                                          ag.log()[-2000:]))
        for ag in cls.agents + cls.extra_agents:
            rep = sanitizer_text(ag.log())
            if rep:
                problems.append("sanitizer report in agent %s log:\n%s" % (ag.name, rep))
        if problems:
            raise AssertionError("\n".join(problems))

    def submit_file(self, spec, name, fmt="yaml"):
        path = os.path.join(self.work, "%s.%s" % (name, fmt))
        doc = {"name": name, "spec": spec}
        with open(path, "w") as f:
            if fmt == "json":
                json.dump(doc, f)
            else:
                f.write(to_yaml(doc))
        r = cli(self.c, "submit", path, token=self.ttok)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip()

    def submit_flags(self, *args):
        r = cli(self.c, "submit", "--label", "pool=main", "--duration", "5m", *args,
                token=self.ttok)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip()

    def job(self, jid):
        return cli_json(self.c, "get", jid, token=self.ttok)["job"]

    def wait_file(self, path, timeout=30):
        def read():
            if os.path.exists(path):
                with open(path) as f:
                    t = f.read().strip()
                return t or None
            return None
        return common.wait_for(read, timeout, what=path)

    def test_simulated_gpu_health_reaches_heartbeats_and_reloads_on_sighup(self):
        c = self.c
        with open(os.path.join(NODES_DIR, "rtx3090-x4.json")) as f:
            desc = json.load(f)
        path = os.path.join(self.work, "sick-node.json")

        def write(health):
            with open(path + ".tmp", "w") as f:
                json.dump(dict(desc, health=health), f)
            os.replace(path + ".tmp", path)
        write([{"index": 1, "status": "GPU_HEALTH_STATUS_UNHEALTHY", "xidErrors": [79],
                "message": "xid 79"}])
        ag = Agent(c, self.otok, path, c.unique("sick"), labels={"pool": "sick"}).start()
        self.extra_agents.append(ag)
        node = ag.node_id()
        common.wait_for(lambda: "not_healthy=1" in ag.log(), 10, what="health loaded")
        # where the server tracks GPU health, the node lists the sick GPU
        with open(os.path.join(SOURCE, "proto", "gpumatch", "v1",
                               "node.proto")) as f:
            tracked = "unhealthy_gpu_indexes" in f.read()

        def unhealthy():
            return cli_json(c, "node", "get", node, token=self.otok)["node"].get(
                "unhealthyGpuIndexes", [])
        if tracked:
            common.wait_for(lambda: unhealthy() == [1], 10, what="gpu 1 unhealthy on the node")
        # a bad entry is refused and the previous figures stay
        write([{"index": 9, "status": "GPU_HEALTH_STATUS_UNHEALTHY"}])
        ag.proc.send_signal(signal.SIGHUP)
        common.wait_for(lambda: "index 9: the node has 4 GPUs" in ag.log(), 10,
                        what="bad health refused")
        write([])
        ag.proc.send_signal(signal.SIGHUP)
        common.wait_for(lambda: "not_healthy=0" in ag.log(), 10, what="health reloaded")
        if tracked:
            common.wait_for(lambda: unhealthy() == [], 10, what="node healthy again")
        self.assertNotIn("heartbeat failed", ag.log())
        self.assertIsNone(ag.proc.poll())

    def test_heartbeats_never_wait_behind_the_long_poll(self):
        # agents long-poll for 5 s; gpumatchd declares a node lost after 3 s
        # without a heartbeat: idle nodes stay READY only if heartbeats go
        # out while a poll is waiting
        def listed():
            return {n["id"]: n for n in
                    cli_json(self.c, "node", "list", token=self.otok)["nodes"]}

        time.sleep(6)
        nodes = listed()
        for ag in self.agents:
            self.assertEqual(nodes[ag.node_id()]["state"], "NODE_STATE_READY",
                             nodes[ag.node_id()])
        # and they keep coming: every node's last heartbeat moves on (a
        # generous bound on the wait, no bound on the gap between them)
        deadline = time.monotonic() + 60
        while True:
            later = listed()
            moved = [int(later[ag.node_id()]["lastHeartbeatUs"]) >
                     int(nodes[ag.node_id()]["lastHeartbeatUs"]) for ag in self.agents]
            if all(moved) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertTrue(all(moved), later)
        for ag in self.agents:
            self.assertEqual(later[ag.node_id()]["state"], "NODE_STATE_READY",
                             later[ag.node_id()])

    def test_fifty_jobs_of_mixed_shapes_finish_with_their_exit_codes(self):
        # (gpus per node, nodes): 8-GPU and 2-node gangs fit only the two
        # 8-GPU nodes in us-east; the 4-GPU RTX node is in eu-west
        shapes = [(1, 1), (2, 1), (4, 1), (8, 1), (4, 2), (1, 1), (2, 1)]
        out = os.path.join(self.work, "mixed")
        os.makedirs(out, exist_ok=True)
        os.chmod(out, 0o1777)  # the jobs' user writes here
        want = {}
        for i in range(50):
            gpus, nodes = shapes[i % len(shapes)]
            code = 3 if i % 9 == 4 else (1 if i % 13 == 6 else 0)
            # a gang's failing member stops the others; the job's failure is
            # the member that failed, not a peer stopped because of it
            spec = {
                "kind": ["batch", "training", "inference"][i % 3],
                "gpusPerNode": gpus,
                "nodeCount": nodes,
                "maxDuration": "5m",
                "labelSelector": {"pool": "main"},
                "command": ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES > "
                            "%s/$GPUMATCH_JOB_ID.$GPUMATCH_GANG_INDEX;"
                            " sleep 0.$((RANDOM %% 5)); exit %d" % (out, code)],
            }
            jid = self.submit_file(spec, "mixed-%d" % i, fmt="json" if i % 2 else "yaml")
            want[jid] = (gpus, nodes, code)
        jobs = wait_jobs(self.c, self.ttok, want, timeout=150)
        for jid, (gpus, nodes, code) in want.items():
            j = jobs[jid]
            with self.subTest(job=jid, shape=(gpus, nodes), code=code):
                if code == 0:
                    self.assertEqual(j["state"], "JOB_STATE_SUCCEEDED", j)
                else:
                    self.assertEqual(j["state"], "JOB_STATE_FAILED", j)
                    self.assertEqual(j["failure"]["reason"], "FAILURE_REASON_EXIT_CODE", j)
                    self.assertEqual(j["failure"].get("exitCode"), code, j)
                self.assertEqual(j.get("attempts"), 1, j)
                # CUDA_VISIBLE_DEVICES: gpus distinct indexes on every node of the gang
                for g in range(nodes):
                    with open(os.path.join(out, "%s.%d" % (jid, g))) as f:
                        idx = f.read().strip().split(",")
                    self.assertEqual(len(set(idx)), gpus, idx)

    def test_watch_exit_codes_follow_the_outcome(self):
        ok = self.submit_flags("--", "true")
        bad = self.submit_flags("--", "sh", "-c", "exit 7")
        sig = self.submit_flags("--", "sh", "-c", "kill -9 $$")
        r = cli(self.c, "watch", ok, "--interval", "200ms", token=self.ttok)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCEEDED", r.stdout)
        r = cli(self.c, "watch", bad, "--interval", "200ms", token=self.ttok)
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
        self.assertIn("FAILED", r.stdout)
        self.assertIn("exit_code=7", r.stdout)
        j = self.job(bad)
        self.assertEqual(j["failure"]["exitCode"], 7)
        r = cli(self.c, "watch", sig, "--interval", "200ms", token=self.ttok)
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
        j = self.job(sig)
        self.assertEqual(j["state"], "JOB_STATE_FAILED")
        self.assertEqual(j["failure"].get("termSignal"), 9, j)

    def test_job_env_workdir_and_log(self):
        out = os.path.join(self.work, "envcheck")
        jid = self.submit_flags("--env", "GREETING=hi there", "--workdir", self.work, "--",
                                "sh", "-c", 'echo "$GREETING" "$(pwd)" > envcheck; '
                                'echo to-the-log; echo err-to-the-log >&2')
        self.assertEqual(wait_jobs(self.c, self.ttok, [jid], 60)[jid]["state"],
                         "JOB_STATE_SUCCEEDED")
        self.assertEqual(self.wait_file(out), "hi there " + self.work)
        lease = self.job(jid)["attemptHistory"][0]["placement"][0]["leaseId"]
        logs = [os.path.join(a.state_dir, "logs", "lease-%s.log" % lease) for a in self.agents]
        found = [p for p in logs if os.path.exists(p)]
        self.assertEqual(len(found), 1, logs)
        with open(found[0]) as f:
            self.assertEqual(f.read().split(), ["to-the-log", "err-to-the-log"])

    def test_command_that_cannot_start_is_failed(self):
        jid = self.submit_flags("--", "/nonexistent/binary", "x")
        j = wait_jobs(self.c, self.ttok, [jid], 60)[jid]
        self.assertEqual(j["state"], "JOB_STATE_FAILED", j)
        self.assertIn("No such file", j["failure"].get("message", ""), j)

    def test_cancelled_running_job_process_is_killed(self):
        pidfile = os.path.join(self.work, "cancel.pid")
        jid = self.submit_flags("--", "sh", "-c", "echo $$ > %s; exec sleep 300" % pidfile)
        pid = int(self.wait_file(pidfile))
        self.assertTrue(pid_alive(pid))
        common.wait_for(lambda: self.job(jid)["state"] == "JOB_STATE_RUNNING", 10,
                        what="job running")
        r = cli(self.c, "cancel", jid, "--reason", "test", token=self.ttok)
        self.assertEqual(r.returncode, 0, r.stderr)
        common.wait_for(lambda: not pid_alive(pid), 15, what="pid %d gone" % pid)
        j = wait_jobs(self.c, self.ttok, [jid], 30)[jid]
        self.assertEqual(j["state"], "JOB_STATE_CANCELLED", j)

    def test_job_ignoring_sigterm_is_killed_after_grace(self):
        pidfile = os.path.join(self.work, "stubborn.pid")
        r = cli(self.c, "submit", "--label", "pool=main", "--duration", "2s", "--", "sh", "-c",
                "trap '' TERM; echo $$ > %s; while :; do sleep 1; done" % pidfile,
                token=self.ttok)
        self.assertEqual(r.returncode, 0, r.stderr)
        pid = int(self.wait_file(pidfile))
        # deadline 2s, then SIGTERM (ignored), then SIGKILL after the agent's 1s grace
        common.wait_for(lambda: not pid_alive(pid), 20, what="pid %d killed" % pid)
        logs = "".join(a.log() for a in self.agents)
        self.assertIn("grace period over, killing", logs)

    def test_kill9_agent_jobs_requeued_and_finished_elsewhere(self):
        c = self.c
        victim = Agent(c, self.otok, "rtx3090-x4.json", c.unique("victim"),
                       labels={"pool": "victim"}).start()
        self.extra_agents.append(victim)
        victim_id = victim.node_id()
        # the jobs end only once the victim is dead (however slowly this
        # machine starts them): none can finish on it first
        go = os.path.join(self.work, "victim.go")
        ids = [self.submit_file({"gpusPerNode": 1, "maxDuration": "5m",
                                 "labelSelector": {"pool": "victim"},
                                 "command": ["sh", "-c", "while [ ! -e %s ]; do sleep 0.1; done"
                                             % go]}, "victim-%d" % i) for i in range(2)]
        common.wait_for(lambda: all(self.job(i)["state"] == "JOB_STATE_RUNNING" for i in ids), 60,
                        what="jobs running on the victim")
        victim.kill9()
        open(go, "w").close()
        rescue = Agent(c, self.otok, "a100-x8.json", c.unique("rescue"),
                       labels={"pool": "victim"}).start()
        self.extra_agents.append(rescue)
        rescue_id = rescue.node_id()
        jobs = wait_jobs(c, self.ttok, ids, 90)
        for i in ids:
            j = jobs[i]
            self.assertEqual(j["state"], "JOB_STATE_SUCCEEDED", j)
            hist = self.job(i)["attemptHistory"]
            self.assertEqual(len(hist), 2, hist)
            self.assertEqual(hist[0]["placement"][0]["nodeId"], victim_id)
            self.assertEqual(hist[1]["placement"][0]["nodeId"], rescue_id)
        n = cli_json(c, "node", "get", victim_id, token=self.otok)["node"]
        self.assertEqual(n["state"], "NODE_STATE_LOST")

    def test_job_that_ends_while_the_agent_is_down_is_not_run_again(self):
        c = self.c
        ag = Agent(c, self.otok, "rtx3090-x4.json", c.unique("lazarus"),
                   labels={"pool": "lazarus"}).start()
        self.extra_agents.append(ag)
        runs = os.path.join(self.work, "lazarus.runs")
        go = os.path.join(self.work, "lazarus.go")
        jid = self.submit_file({"gpusPerNode": 1, "maxDuration": "5m",
                                "labelSelector": {"pool": "lazarus"},
                                "command": ["sh", "-c",
                                            "echo start >> %s; while [ ! -e %s ]; do sleep 0.1;"
                                            " done; echo end >> %s" % (runs, go, runs)]},
                               "lazarus")
        common.wait_for(lambda: os.path.exists(runs), 30, what="job started")
        common.wait_for(lambda: self.job(jid)["state"] == "JOB_STATE_RUNNING", 30,
                        what="job running")
        ag.kill9()
        # the job finishes (exit 0) while its agent is down
        open(go, "w").close()
        common.wait_for(lambda: open(runs).read().count("end") == 1, 30, what="job ended")
        ag.start()  # same state directory
        j = wait_jobs(c, self.ttok, [jid], 60)[jid]
        self.assertEqual(j["state"], "JOB_STATE_SUCCEEDED", j)
        self.assertEqual(j.get("attempts"), 1, j)
        self.assertEqual(open(runs).read().split(), ["start", "end"], "ran exactly once")

    def test_agent_restart_resumes_identity_and_reports_lost_job(self):
        c = self.c
        ag = Agent(c, self.otok, "rtx3090-x4.json", c.unique("phoenix"),
                   labels={"pool": "phoenix"}).start()
        self.extra_agents.append(ag)
        node = ag.node_id()
        pidfile = os.path.join(self.work, "phoenix.pid")
        jid = self.submit_file({"gpusPerNode": 1, "maxDuration": "5m",
                                "labelSelector": {"pool": "phoenix"},
                                "command": ["sh", "-c", "echo $$ > %s; exec sleep 120" % pidfile]},
                               "phoenix")
        pid = int(self.wait_file(pidfile))
        common.wait_for(lambda: self.job(jid)["state"] == "JOB_STATE_RUNNING", 10,
                        what="job running")
        ag.kill9()
        self.assertTrue(pid_alive(pid), "the job outlives a killed agent")
        os.unlink(pidfile)
        ag.start()  # same state directory
        # the lost run is reported as lost (EXPIRED), not as the job's
        # failure: the job is queued again and runs anew
        common.wait_for(lambda: c.psql_value(
            "SELECT count(*) FROM leases WHERE job_id = %s AND state = 7"
            " AND end_message LIKE '%%agent restarted%%'" % jid) == "1", 30,
            what="the lost lease reported EXPIRED")
        common.wait_for(lambda: not pid_alive(pid), 10, what="orphan %d killed" % pid)
        pid2 = int(self.wait_file(pidfile))
        self.assertNotEqual(pid2, pid)
        common.wait_for(lambda: self.job(jid)["state"] == "JOB_STATE_RUNNING", 30,
                        what="job running again")
        self.assertEqual(c.psql_value("SELECT attempts FROM jobs WHERE id = %s" % jid), "2")
        self.assertOk(c.call("JobService", "CancelJob", {"jobId": jid}, token=self.ttok))
        wait_jobs(c, self.ttok, [jid], 60)
        self.assertEqual(ag.node_id(), node)
        self.assertIn("resuming node identity", ag.log())
        n = cli_json(c, "node", "list", token=self.otok)["nodes"]
        self.assertEqual(len([x for x in n if x["name"] == ag.name]), 1)

    def test_preempted_job_is_stopped_and_runs_again(self):
        c = self.c
        admin = c.admin_token
        cur = cli_json(c, "admin", "policy", "get", token=admin)["policy"]
        d = os.path.join(self.work, "policy")
        os.makedirs(d, exist_ok=True)

        def set_policy(p, comment):
            path = os.path.join(d, "%s.json" % comment)
            with open(path, "w") as f:
                json.dump(p, f)
            r = cli(c, "admin", "policy", "set", path, "--comment", comment, token=admin)
            self.assertEqual(r.returncode, 0, r.stderr)
        set_policy(dict(cur, preemption=True, preemptionGraceUs="1000000"), "preempt-on")
        try:
            ag = Agent(c, self.otok, "rtx3090-x4.json", c.unique("pre"),
                       labels={"pool": "pre"}).start()
            self.extra_agents.append(ag)
            ag.node_id()
            pidfile = os.path.join(self.work, "low.pid")
            marker = os.path.join(self.work, "low.marker")
            low = self.submit_file({"gpusPerNode": 4, "maxDuration": "5m", "preemptible": True,
                                    "priorityClass": "low", "labelSelector": {"pool": "pre"},
                                    "command": ["sh", "-c", "[ -e %s ] && exit 0; touch %s; "
                                                "echo $$ > %s; exec sleep 120"
                                                % (marker, marker, pidfile)]}, "low")
            pid = int(self.wait_file(pidfile))
            high = self.submit_file({"gpusPerNode": 4, "maxDuration": "5m",
                                     "priorityClass": "critical",
                                     "labelSelector": {"pool": "pre"},
                                     "command": ["sleep", "1"]}, "high")
            common.wait_for(lambda: not pid_alive(pid), 20, what="preempted pid %d gone" % pid)
            jobs = wait_jobs(c, self.ttok, [low, high], 60)
            self.assertEqual(jobs[high]["state"], "JOB_STATE_SUCCEEDED", jobs[high])
            self.assertEqual(jobs[low]["state"], "JOB_STATE_SUCCEEDED", jobs[low])
            hist = self.job(low)["attemptHistory"]
            self.assertEqual(len(hist), 2, hist)
            self.assertIn(hist[0].get("outcome"), ("JOB_STATE_PREEMPTED", "JOB_STATE_QUEUED"),
                          hist)
        finally:
            set_policy(dict(cur), "preempt-off")

    def test_preempted_for_a_much_shorter_job_of_its_class(self):
        """preemptShorterFactor: a job with a far shorter limit evicts a long
        preemptible one of the same (default) class through the same PREEMPT
        path."""
        c = self.c
        admin = c.admin_token
        cur = cli_json(c, "admin", "policy", "get", token=admin)["policy"]
        d = os.path.join(self.work, "policy-shorter")
        os.makedirs(d, exist_ok=True)

        def set_policy(p, comment):
            path = os.path.join(d, "%s.json" % comment)
            with open(path, "w") as f:
                json.dump(p, f)
            r = cli(c, "admin", "policy", "set", path, "--comment", comment, token=admin)
            self.assertEqual(r.returncode, 0, r.stderr)
        set_policy(dict(cur, preemptShorterFactor=4, preemptMinRunUs="1000000",
                        preemptionGraceUs="1000000", wShortJobs=1000), "shorter-on")
        try:
            ag = Agent(c, self.otok, "rtx3090-x4.json", c.unique("srt"),
                       labels={"pool": "srt"}).start()
            self.extra_agents.append(ag)
            ag.node_id()
            pidfile = os.path.join(self.work, "long.pid")
            marker = os.path.join(self.work, "long.marker")
            long_ = self.submit_file({"gpusPerNode": 4, "maxDuration": "2h", "preemptible": True,
                                      "labelSelector": {"pool": "srt"},
                                      "command": ["sh", "-c", "[ -e %s ] && exit 0; touch %s; "
                                                  "echo $$ > %s; exec sleep 120"
                                                  % (marker, marker, pidfile)]}, "long")
            pid = int(self.wait_file(pidfile))
            time.sleep(1.2)  # past preemptMinRunUs
            short = self.submit_file({"gpusPerNode": 4, "maxDuration": "1m",
                                      "labelSelector": {"pool": "srt"},
                                      "command": ["sleep", "1"]}, "short")
            common.wait_for(lambda: not pid_alive(pid), 20, what="preempted pid %d gone" % pid)
            jobs = wait_jobs(c, self.ttok, [long_, short], 60)
            self.assertEqual(jobs[short]["state"], "JOB_STATE_SUCCEEDED", jobs[short])
            self.assertEqual(jobs[long_]["state"], "JOB_STATE_SUCCEEDED", jobs[long_])
            hist = self.job(long_)["attemptHistory"]
            self.assertEqual(len(hist), 2, hist)
            self.assertIn(hist[0].get("outcome"), ("JOB_STATE_PREEMPTED", "JOB_STATE_QUEUED"),
                          hist)
        finally:
            set_policy(dict(cur), "shorter-off")

    def test_gpumatchd_restart_mid_run_loses_nothing(self):
        c = self.c
        ids = [self.submit_file({"gpusPerNode": 1 + i % 2, "maxDuration": "5m",
                                 "labelSelector": {"pool": "main"},
                                 "command": ["sh", "-c", "sleep 3; exit %d" % (i % 3 == 0)]},
                                "restart-%d" % i) for i in range(12)]
        common.wait_for(lambda: any(j["state"] == "JOB_STATE_RUNNING" for j in
                                    cli_json(c, "list", "--state", "running",
                                             token=self.ttok).get("jobs", [])),
                        20, what="some jobs running")
        port = c.port
        offsets = [len(a.log()) for a in self.agents]
        self.assertEqual(c.stop_gpumatchd(timeout=30), 0)
        # jobs go on; at least one ends while gpumatchd is down, so its
        # outcome must wait on the agent's disk and be resent
        common.wait_for(lambda: any('msg="job exited"' in a.log()[o:]
                                    for a, o in zip(self.agents, offsets)),
                        15, what="a job to end while gpumatchd is down")
        time.sleep(0.5)
        c.start_gpumatchd(extra_flags=["--listen_port=%d" % port])
        self.assertEqual(c.port, port)
        jobs = wait_jobs(c, self.ttok, ids, 120)
        for n, i in enumerate(ids):
            j = jobs[i]
            self.assertEqual(j["state"], "JOB_STATE_FAILED" if n % 3 == 0
                             else "JOB_STATE_SUCCEEDED", j)
            self.assertEqual(j.get("attempts"), 1, j)
        rows = c.psql("SELECT job_id, count(*) FROM leases WHERE job_id IN (%s) GROUP BY job_id"
                      % ",".join(ids))
        self.assertEqual(sorted(int(r[0]) for r in rows), sorted(int(i) for i in ids))
        self.assertTrue(all(r[1] == "1" for r in rows), rows)
        # each lease's process ended once and was reported once (repeats are
        # the server's duplicates, never a second outcome)
        logs = "".join(a.log() for a in self.agents)
        # (a lease's final report waits for its output, which is retried first)
        self.assertTrue("report not delivered, will retry" in logs
                        or "output not delivered, will retry" in logs)
        for i in ids:
            lease = self.job(i)["attemptHistory"][0]["placement"][0]["leaseId"]
            exits = [line for line in logs.splitlines()
                     if " lease=%s " % lease in line and 'msg="job exited"' in line]
            self.assertEqual(len(exits), 1, exits)


def to_yaml(v, indent=0):
    """A small YAML writer for the test's spec files (block style)."""
    pad = "  " * indent
    if isinstance(v, dict):
        out = ""
        for k, x in v.items():
            if isinstance(x, (dict, list)) and x:
                out += "%s%s:\n%s" % (pad, k, to_yaml(x, indent + 1))
            else:
                out += "%s%s: %s\n" % (pad, k, scalar(x))
        return out
    out = ""
    for x in v:
        out += "%s- %s\n" % (pad, scalar(x))
    return out


def scalar(x):
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, float)):
        return str(x)
    return json.dumps(x)  # a double-quoted YAML string
