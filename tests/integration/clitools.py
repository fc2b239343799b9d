"""clitools.py — what test_cli and test_agent share: running the gpumatch
command against a test cluster, and simulated node agents (`gpumatch agent
--simulate`) as real processes."""

import json
import os
import signal
import subprocess
import tempfile
import time

import common
from cluster import BUILD, SOURCE, _clean_env, _pdeathsig

GPUMATCH = os.path.join(BUILD, "cli", "gpumatch")
NODES_DIR = os.path.join(SOURCE, "examples", "nodes")
JOBS_DIR = os.path.join(SOURCE, "examples", "jobs")
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
            "JOB_STATE_PREEMPTED"}


def cli_env(cluster, token=None, extra=None):
    env = _clean_env()
    # never the user's own config: a private path that does not exist
    env["GPUMATCH_CONFIG"] = os.path.join(cluster.dir if cluster else tempfile.gettempdir(),
                                          "gpumatch-it-no-config", "config")
    if cluster is not None:
        env["GPUMATCH_URL"] = cluster.url
        if cluster.ca_file:
            env["GPUMATCH_CA_FILE"] = cluster.ca_file
    if token:
        env["GPUMATCH_TOKEN"] = token
    env.update(extra or {})
    return env


def cli(cluster, *args, token=None, env=None, timeout=60):
    """Runs gpumatch ARGS; returns CompletedProcess (text)."""
    return subprocess.run([GPUMATCH] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env or cli_env(cluster, token))


def cli_json(cluster, *args, token=None):
    r = cli(cluster, *args, "-o", "json", token=token)
    if r.returncode != 0:
        raise AssertionError("gpumatch %s: exit %d\n%s%s" % (" ".join(map(str, args)),
                                                            r.returncode, r.stdout, r.stderr))
    return json.loads(r.stdout)


def sanitizer_text(text):
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        if marker in text:
            i = text.index(marker)
            return text[max(0, i - 200):i + 3000]
    return ""


class Agent:
    """`gpumatch agent --simulate FILE` with an operator token, logging to a
    file in its state directory."""

    def __init__(self, cluster, token, node_file, name, region=None, labels=None,
                 grace="1s", state_dir=None, extra_args=()):
        self.c, self.token, self.name = cluster, token, name
        self.extra_args = list(extra_args)
        self.node_file = os.path.join(NODES_DIR, node_file)  # absolute paths stay as they are
        self.region, self.labels, self.grace = region, labels or {}, grace
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="gpumatch-agent-%s-" % name,
                                                       dir=cluster.dir)
        self.log_path = os.path.join(self.state_dir, "agent.log")
        self.proc = None

    def start(self):
        cmd = [GPUMATCH, "agent", "--simulate", self.node_file, "--name", self.name,
               "--state-dir", self.state_dir, "--poll", "5s", "--grace", self.grace]
        if self.region:
            cmd += ["--region", self.region]
        for k, v in self.labels.items():
            cmd += ["--label", "%s=%s" % (k, v)]
        cmd += self.extra_args
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     env=cli_env(self.c, self.token), preexec_fn=_pdeathsig)
        log.close()
        return self

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def node_id(self, timeout=20):
        def registered():
            p = os.path.join(self.state_dir, "node.json")
            if os.path.exists(p):
                with open(p) as f:
                    return json.load(f)["nodeId"]
            if self.proc.poll() is not None:
                raise AssertionError("agent %s exited %s:\n%s" % (self.name, self.proc.returncode,
                                                                  self.log()[-3000:]))
            return None
        return common.wait_for(registered, timeout, what="agent %s to register" % self.name)

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout=30):
        """SIGTERM; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        return rc


def wait_jobs(cluster, token, ids, timeout):
    """Waits until every job in ids is terminal; returns {id: job dict}."""
    ids = set(str(i) for i in ids)
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["id"]: j for j in cli_json(cluster, "list", "--all", "--page-size", "500",
                                             token=token)["jobs"] if j["id"] in ids}
        pending = [i for i in ids if jobs.get(i, {}).get("state") not in TERMINAL]
        if not pending:
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError("jobs not finished after %ds: %s" % (
                timeout, {i: jobs.get(i, {}).get("state") for i in sorted(pending)[:20]}))
        time.sleep(0.5)
