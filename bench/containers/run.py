#!/usr/bin/env python3
"""bench/containers — what running jobs in containers costs, on a private
Postgres, Redis and gpumatchd (GPUMATCH_BUILD, default build/) with one
`gpumatch agent --simulate` node using podman (runc) and a busybox image
imported into a private storage (no registry).

1. Container start overhead: for each of --starts jobs (one at a time),
   the time from the agent's lease confirmation (its "lease acquired" log
   line, written as ConfirmLease's reply is handled, before the node's
   checks, the scratch directory and the launcher) to the first
   instruction of the job's process inside the container (the container
   prints the host's CLOCK_BOOTTIME from /proc/uptime; both are put on
   one clock by a pair read at start). Image present (imported); the
   first start also looks the image up, later ones run it at once.
2. Log streaming: one job writes --stream-mb MB at once; the agent ships it
   (AppendLeaseLogs) and logs bytes and milliseconds from the first chunk
   to the end-of-output acknowledgement. MB/s per lease = bytes / that.
   While it streams, the gaps between the agent's heartbeats as gpumatchd
   received them (its debug log) are measured: the floor is that no gap
   exceeds the heartbeat interval by an interval or more.

Progress on stderr; the last line of stdout is one JSON object.

    GPUMATCH_BUILD=build-rel python3 bench/containers/run.py [--starts 20]
        [--stream-mb 64]
"""
import argparse
import datetime
import json
import os
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
os.environ.setdefault("GPUMATCH_SOURCE", ROOT)
os.environ.setdefault("GPUMATCH_BUILD", os.path.join(ROOT, "build"))

import cluster  # noqa: E402
import common  # noqa: E402
import test_containers as tc  # noqa: E402
from clitools import Agent, cli, cli_json, wait_jobs  # noqa: E402

HB_MS = 1000


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ts_of(line):
    m = re.match(r"ts=(\S+)Z", line)
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def submit(c, tok, name, command, pool="bench"):
    path = os.path.join(c.dir, name + ".json")
    with open(path, "w") as f:
        json.dump({"name": name, "spec": {"gpusPerNode": 1, "maxDuration": "10m",
                                          "labelSelector": {"pool": pool}, "image": tc.IMAGE,
                                          "command": command}}, f)
    r = cli(c, "submit", path, token=tok)
    if r.returncode:
        raise SystemExit("submit: " + r.stderr)
    return r.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--stream-mb", type=int, default=64)
    args = ap.parse_args()
    tc.STORAGE = tempfile.mkdtemp(prefix="gmcb-", dir="/tmp")
    tc.build_image()
    flags = ["--allow_unverified=true", "--cycle_interval_ms=50",
             "--heartbeat_interval_ms=%d" % HB_MS, "--log_level=debug",
             "--log_cap_bytes=%d" % ((args.stream_mb + 16) << 20)]
    c = cluster.Cluster(flags=flags, name="ctbench").start()
    agent = None
    try:
        _, otok = c.new_operator(node_limit=5)
        _, ttok = c.new_tenant()
        agent = Agent(c, otok, "a100-x8.json", c.unique("bench"), labels={"pool": "bench"},
                      extra_args=["--container-storage", tc.STORAGE]).start()
        agent.node_id()
        # the container's clock (CLOCK_BOOTTIME via /proc/uptime) on the wall clock
        with open("/proc/uptime") as f:
            up0 = float(f.read().split()[0])
        wall0 = time.time()
        overheads, agent_part = [], []
        for i in range(args.starts):
            jid = submit(c, ttok, "start-%d" % i, ["cat", "/proc/uptime"])
            j = wait_jobs(c, ttok, [jid], 120)[jid]
            if j["state"] != "JOB_STATE_SUCCEEDED":
                raise SystemExit("job %s: %s" % (jid, j))
            lease = cli_json(c, "get", jid, token=ttok)["job"]["attemptHistory"][0][
                "placement"][0]["leaseId"]
            up = float(cli(c, "logs", jid, token=ttok).stdout.split()[0])
            ran = wall0 + (up - up0)
            started = [ts_of(ln) for ln in agent.log().splitlines()
                       if "lease acquired" in ln and "lease=%s " % lease in ln]
            launched = [ts_of(ln) for ln in agent.log().splitlines()
                        if "container job started" in ln and "lease=%s " % lease in ln]
            overheads.append(ran - started[0])
            agent_part.append(launched[0] - started[0])
            log("start %d: %.3f s (agent until the launcher: %.3f s)"
                % (i, overheads[-1], agent_part[-1]))
        # streaming
        nbytes = args.stream_mb << 20
        log_off = c.log_offset()
        jid = submit(c, ttok, "stream", ["sh", "-c", "yes 0123456789abcdefghijklmnopqrstuvwxyz"
                                         " | head -c %d" % nbytes])
        j = wait_jobs(c, ttok, [jid], 600)[jid]
        if j["state"] != "JOB_STATE_SUCCEEDED":
            raise SystemExit("stream job: %s" % j)
        lease = cli_json(c, "get", jid, token=ttok)["job"]["attemptHistory"][0]["placement"][0][
            "leaseId"]
        shipped = [ln for ln in agent.log().splitlines()
                   if "output shipped" in ln and "lease=%s " % lease in ln][0]
        got = int(re.search(r"bytes=(\d+)", shipped).group(1))
        ms = int(re.search(r"ms=(\d+)", shipped).group(1))
        t_end = ts_of(shipped)
        t_start = t_end - ms / 1000.0
        hb = [ts_of(ln) for ln in c.log_since(log_off).splitlines()
              if "NodeService/Heartbeat" in ln]
        during = [t for t in hb if t_start - HB_MS / 1000.0 <= t <= t_end + HB_MS / 1000.0]
        gaps = [b - a for a, b in zip(during, during[1:])]
        max_gap = max(gaps) if gaps else None
        out = {
            "container_start_overhead_p50_s": round(statistics.median(overheads), 3),
            "container_start_overhead_p90_s": round(sorted(overheads)[int(len(overheads) * 0.9)
                                                    - 1], 3),
            "container_start_samples": len(overheads),
            "container_start_agent_part_p50_s": round(statistics.median(agent_part), 3),
            "log_stream_bytes": got,
            "log_stream_seconds": ms / 1000.0,
            "log_stream_mb_per_s": round(got / (1 << 20) / (ms / 1000.0), 2),
            "heartbeat_interval_s": HB_MS / 1000.0,
            "heartbeats_during_stream": len(during),
            "heartbeat_max_gap_s": round(max_gap, 3) if max_gap else None,
        }
        print("container start overhead p50 %.3f s (p90 %.3f s, %d starts; floor <= 1 s)"
              % (out["container_start_overhead_p50_s"], out["container_start_overhead_p90_s"],
                 len(overheads)))
        print("log streaming %.1f MB/s per lease (%d bytes in %.2f s; floor >= 5 MB/s);"
              " heartbeat max gap %.3f s at interval %.1f s (floor: < 2 intervals)"
              % (out["log_stream_mb_per_s"], got, ms / 1000.0, max_gap or -1, HB_MS / 1000.0))
        print(json.dumps(out))
    finally:
        if agent:
            agent.stop()
        c.close()
        tc.podman("rm", "-af", check=False)
        tc.podman("rmi", "-af", check=False)
        import shutil
        shutil.rmtree(tc.STORAGE, ignore_errors=True)


if __name__ == "__main__":
    main()
