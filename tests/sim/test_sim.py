#!/usr/bin/env python3
"""Tests of gpumatch-sim, one scenario per invocation: test_sim.py CASE.

Runs the real gpumatch-sim binary (GPUMATCH_SIM) on the fixtures next to
this file and on the public traces under <source>/../shared/traces
(GPUMATCH_TRACES overrides). A case that needs the traces fails when they
are missing: a replay that did not run is not a pass.
"""
import csv
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures")
SOURCE = os.environ.get("GPUMATCH_SOURCE", os.path.dirname(os.path.dirname(HERE)))
SIM = os.environ.get("GPUMATCH_SIM", "")
TRACES = os.environ.get("GPUMATCH_TRACES",
                        os.path.normpath(os.path.join(SOURCE, "..", "shared", "traces")))
POLICIES = os.path.join(SOURCE, "examples", "policies")
# default.json with preemption for shorter work
SHORTER = os.path.join(POLICIES, "default-preempt-shorter.json")


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def trace(rel):
    path = os.path.join(TRACES, rel)
    if not os.path.isfile(path):
        raise Failure(f"trace file missing: {path} (the public traces must be at "
                      f"<source>/../shared/traces or GPUMATCH_TRACES)")
    return path


def run(args, expect_rc=0):
    p = subprocess.run([SIM] + args, capture_output=True, text=True, timeout=600)
    if p.returncode != expect_rc:
        raise Failure(f"gpumatch-sim {' '.join(args)}: exit {p.returncode}, "
                      f"expected {expect_rc}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def last_json(out):
    lines = out.strip().splitlines()
    check(lines, "no output")
    return json.loads(lines[-1])


def hand(policy):
    """The hand-checked scenario; returns {job_id: (start_s, end_s, jct_s)}."""
    with tempfile.TemporaryDirectory() as d:
        jobs_out = os.path.join(d, "jobs.csv")
        p = run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/jobs.csv",
                 "--throughputs", f"{FIX}/tputs.csv", "--policy", policy,
                 "--cycle-interval-s", "0", "--no-wall-clock", "--check",
                 "--oracle-limits", "--jobs-out", jobs_out])
        res = last_json(p.stdout)
        check(res["overcommits"] == 0 and res["check_failures"] == 0,
              f"invariants broken: {res}")
        out = {}
        with open(jobs_out) as f:
            for r in csv.DictReader(f):
                out[int(r["job_id"])] = (int(r["start_us"]) / 1e6, int(r["end_us"]) / 1e6,
                                         int(r["jct_us"]) / 1e6, int(r["node_id"]))
        return res, out


# Scenario (tests/sim/fixtures): node 1 has one FAST GPU, node 2 one SLOW
# GPU. Type A runs 2x faster on FAST (the reference), type B the same on
# both. Jobs: 2 (B, 100 s) and 1 (A, 100 s) at t=0, 3 (A, 50 s) at t=10;
# cycles at every event.

def case_hand_fifo():
    # first fit by node id: 2 -> FAST (100 s), 1 -> SLOW (200 s at half
    # speed), 3 waits for FAST at t=100 and ends at 150.
    res, out = hand(f"{POLICIES}/fifo.json")
    check(out[2] == (0, 100, 100, 1), f"job 2: {out[2]}")
    check(out[1] == (0, 200, 200, 2), f"job 1: {out[1]}")
    check(out[3] == (100, 150, 140, 1), f"job 3: {out[3]}")
    check(abs(res["avg_jct_s"] - 440 / 3) < 1e-3, f"avg_jct_s {res['avg_jct_s']}")
    check(res["makespan_s"] == 200, f"makespan {res['makespan_s']}")
    # waits 0, 0 (jobs starting at t=0 count) and 90
    check(res["avg_wait_s"] == 30, f"avg_wait_s {res['avg_wait_s']}")
    # GPU-seconds 100 + 200 + 50 over 2 GPUs x 200 s
    check(abs(res["gpu_utilization_makespan"] - 350 / 400) < 1e-6, f"util {res}")
    # work in reference-GPU (FAST) seconds: 100 (B on FAST) + 100 (A at half
    # speed for 200 s) + 50 over the same 400 GPU-seconds
    check(abs(res["effective_throughput_makespan"] - 250 / 400) < 1e-6, f"eff {res}")
    check(res["useful_utilization"] == res["gpu_utilization_useful"], f"useful {res}")


def case_hand_gavel():
    # comparative advantage: B gains nothing from FAST while A gains 2x, so
    # 2 -> SLOW and 1 -> FAST, both end at 100; 3 starts on FAST at 100.
    res, out = hand(f"{FIX}/gavel.json")
    check(out[2] == (0, 100, 100, 2), f"job 2: {out[2]}")
    check(out[1] == (0, 100, 100, 1), f"job 1: {out[1]}")
    check(out[3] == (100, 150, 140, 1), f"job 3: {out[3]}")
    check(abs(res["avg_jct_s"] - 340 / 3) < 1e-3, f"avg_jct_s {res['avg_jct_s']}")
    check(res["makespan_s"] == 150, f"makespan {res['makespan_s']}")
    # the same 250 reference-GPU-seconds of work over 2 GPUs x 150 s
    check(abs(res["effective_throughput_makespan"] - 250 / 300) < 1e-6, f"eff {res}")


def case_hand_own_speed():
    # own speed only: B is as fast on both (tie -> lowest node id, FAST), so
    # A is left the SLOW GPU: the same outcome as FIFO.
    res, out = hand(f"{FIX}/own-speed.json")
    check(out[2][3] == 1 and out[1][3] == 2, f"placements {out}")
    check(out[1][1] == 200, f"job 1: {out[1]}")


def hand_shorter(policy, extra=()):
    """The shorter-work preemption scenario; returns (result, {job_id: (start_s,
    end_s, jct_s, preemptions)})."""
    with tempfile.TemporaryDirectory() as d:
        jobs_out = os.path.join(d, "jobs.csv")
        p = run(["--nodes", f"{FIX}/shorter-nodes.csv", "--jobs", f"{FIX}/shorter-jobs.csv",
                 "--policy", policy, "--cycle-interval-s", "0", "--no-wall-clock", "--check",
                 "--oracle-limits", "--jobs-out", jobs_out] + list(extra))
        res = last_json(p.stdout)
        check(res["overcommits"] == 0 and res["check_failures"] == 0,
              f"invariants broken: {res}")
        out = {}
        with open(jobs_out) as f:
            for r in csv.DictReader(f):
                out[int(r["job_id"])] = (int(r["start_us"]) / 1e6, int(r["end_us"]) / 1e6,
                                         int(r["jct_us"]) / 1e6, int(r["preemptions"]))
        return res, out


# Scenario (fixtures shorter-*): one GPU; job 1 (5,000 s, preemptible) at
# t=0, jobs 2 and 3 (100 s each, not preemptible) at t=1,500 and t=1,700.
# Policy shorter.json: shortest time limit first (wShortJobs), victims need
# 4 x 100 s of lease left and 1,000 s of run since their last start, 30 s
# grace; cycles at every event.

def case_hand_shorter():
    # t=1500: job 1 has run 1,500 s (>= 1,000) with 3,500 s left (>= 400):
    # evicted, stops at 1530 having checkpointed at 600 and 1200 s of run:
    # 330 s lost, 3,800 s left. Job 2 runs 1530-1630. Job 1 restarts at
    # 1630; job 3 (t=1700) waits until job 1 has run 1,000 s again (2630),
    # evicts it; it stops at 2660 with 600 s kept of 1,030 (430 s lost),
    # 3,200 s left. Job 3 runs 2660-2760; job 1 ends at 2760 + 3200.
    res, out = hand_shorter(f"{FIX}/shorter.json")
    check(out[2] == (1530, 1630, 130, 0), f"job 2: {out[2]}")
    check(out[3] == (2660, 2760, 1060, 0), f"job 3: {out[3]}")
    check(out[1] == (0, 5960, 5960, 2), f"job 1: {out[1]}")
    check(abs(res["avg_jct_s"] - (5960 + 130 + 1060) / 3) < 1e-3, f"avg_jct_s {res}")
    check(res["preemptions"] == 2, f"preemptions {res}")
    check(abs(res["lost_gpu_s"] - 760) < 1e-6, f"lost_gpu_s {res}")
    check(res["makespan_s"] == 5960, f"makespan {res}")
    # perfect checkpointing: nothing lost; 3,470 s left at 1530, 2,440 s at 2660
    res, out = hand_shorter(f"{FIX}/shorter.json", ["--checkpoint-interval-s", "0"])
    check(out[1] == (0, 5200, 5200, 2), f"job 1, no loss: {out[1]}")
    check(out[3] == (2660, 2760, 1060, 0), f"job 3, no loss: {out[3]}")
    check(res["lost_gpu_s"] == 0, f"lost_gpu_s, no loss: {res}")
    # factor 0: off; the short jobs wait for job 1
    with tempfile.TemporaryDirectory() as d:
        off = os.path.join(d, "off.json")
        with open(f"{FIX}/shorter.json") as f:
            pol = json.load(f)
        pol["preemptShorterFactor"] = 0
        with open(off, "w") as f:
            json.dump(pol, f)
        res, out = hand_shorter(off)
    check(out[1] == (0, 5000, 5000, 0), f"job 1, off: {out[1]}")
    check(out[2] == (5000, 5100, 3600, 0), f"job 2, off: {out[2]}")
    check(out[3] == (5100, 5200, 3500, 0), f"job 3, off: {out[3]}")
    check(res["preemptions"] == 0, f"preemptions, off: {res}")


def replay(jobs, policy, seed="1", scale="0.05", extra=()):
    return run(["--nodes", trace("alibaba-gpu-v2023/openb_node_list_gpu_node.csv"),
                "--jobs", jobs,
                "--throughputs", trace("gavel/isolated_throughputs_steps_per_sec.csv"),
                "--policy", policy, "--seed", seed, "--arrival-scale", scale,
                "--no-wall-clock"] + list(extra))


def case_determinism():
    jobs = trace("msr-itp/cluster01.csv")
    a = replay(jobs, f"{POLICIES}/default.json").stdout
    b = replay(jobs, f"{POLICIES}/default.json").stdout
    check(a == b, "same inputs and seed gave different output")
    c = replay(jobs, f"{POLICIES}/default.json", seed="2").stdout
    check(a != c, "a different seed gave the same output (seed unused?)")
    a = replay(jobs, SHORTER, extra=["--preemptible"]).stdout
    b = replay(jobs, SHORTER, extra=["--preemptible"]).stdout
    check(a == b, "with preemption: same inputs and seed gave different output")
    check("preemptible=all" in a, f"--preemptible not reported: {a.splitlines()[0]}")
    with tempfile.TemporaryDirectory() as d:
        for name in ("x", "y"):
            replay(jobs, f"{POLICIES}/fifo.json",
                   extra=["--jobs-out", os.path.join(d, name)])
        with open(os.path.join(d, "x"), "rb") as x, open(os.path.join(d, "y"), "rb") as y:
            check(x.read() == y.read(), "per-job output differs between runs")


def case_conservation():
    jobs = trace("msr-itp/cluster02.csv")
    full = last_json(replay(jobs, f"{POLICIES}/default.json").stdout)
    check(full["jobs"] == 5778, f"jobs {full['jobs']}")
    check(full["completed"] + full["unfinished"] + full["unschedulable"] == full["jobs"],
          f"jobs lost: {full}")
    check(full["completed"] == full["jobs"], f"not all completed without a horizon: {full}")
    cut = last_json(replay(jobs, f"{POLICIES}/default.json",
                           extra=["--horizon-s", "50000"]).stdout)
    check(cut["completed"] + cut["unfinished"] + cut["unschedulable"] == cut["jobs"],
          f"jobs lost at the horizon: {cut}")
    check(cut["unfinished"] > 0 and cut["completed"] > 0, f"horizon had no effect: {cut}")
    check(cut["sim_seconds"] <= 50000, f"ran past the horizon: {cut}")


def case_no_overcommit():
    # the simulator's own GPU ledger and the library's invariants, checked
    # after every cycle, on a loaded replay with gangs (and with jobs
    # preempted for shorter ones)
    for policy, scale, extra in ((f"{POLICIES}/default.json", "0.02", []),
                                 (f"{POLICIES}/fifo.json", "0.02", []),
                                 (SHORTER, "0.005", ["--preemptible"]),
                                 (f"{POLICIES}/default.json", "0.005", ["--preemptible"])):
        res = last_json(replay(trace("msr-itp/cluster06.csv"), policy,
                               scale=scale, extra=["--check"] + extra).stdout)
        check(res["overcommits"] == 0, f"{policy}: GPUs given twice: {res}")
        check(res["check_failures"] == 0, f"{policy}: invariants broken: {res}")
        check(res["completed"] == res["jobs"], f"{policy}: {res}")
        if extra:
            check(res["preemptions"] > 0 and res["lost_gpu_s"] > 0,
                  f"{policy}: nothing preempted: {res}")


def case_readers():
    # Alibaba pod list and Gavel's JSON table read directly
    p = run(["--nodes", trace("alibaba-gpu-v2023/openb_node_list_all_node.csv"),
             "--jobs", trace("alibaba-gpu-v2023/openb_pod_list_default.csv"),
             "--throughputs", trace("gavel/simulation_throughputs.json"),
             "--policy", f"{POLICIES}/default.json", "--no-wall-clock"])
    res = last_json(p.stdout)
    check("job_types=26" in p.stdout, f"Gavel JSON types: {p.stdout.splitlines()[0]}")
    check(res["jobs"] > 7000 and res["completed"] + res["unfinished"] == res["jobs"],
          f"pods: {res}")
    # gpumatch's own format round-trips through the reader (fixtures)
    run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/jobs.csv",
         "--policy", f"{POLICIES}/fifo.json"])


def case_bad_input():
    p = run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/jobs.csv",
             "--policy", f"{FIX}/bad-weight.json"], expect_rc=1)
    check("wPrice" in p.stderr and "1000" in p.stderr, f"policy error: {p.stderr}")
    p = run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/bad-jobs.csv",
             "--policy", f"{POLICIES}/fifo.json"], expect_rc=1)
    check("bad-jobs.csv:4: column gpus_per_node" in p.stderr, f"jobs error: {p.stderr}")
    p = run(["--nodes", f"{FIX}/jobs.csv", "--jobs", f"{FIX}/jobs.csv",
             "--policy", f"{POLICIES}/fifo.json"], expect_rc=1)
    check("not a node inventory" in p.stderr, f"format error: {p.stderr}")
    p = run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/jobs.csv",
             "--policy", f"{POLICIES}/fifo.json", "--arrival-scale", "0"], expect_rc=2)
    check("--arrival-scale" in p.stderr, f"option error: {p.stderr}")
    p = run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/jobs.csv",
             "--policy", f"{POLICIES}/fifo.json", "--checkpoint-interval-s", "-1"],
            expect_rc=2)
    check("--checkpoint-interval-s" in p.stderr, f"option error: {p.stderr}")
    # --preemptible only for traces without a preemptible column of their own
    p = run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/jobs.csv",
             "--policy", f"{POLICIES}/fifo.json", "--preemptible"], expect_rc=2)
    check("--preemptible" in p.stderr and "jobs.csv" in p.stderr, f"option error: {p.stderr}")
    p = run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/shorter-jobs.csv",
             "--policy", f"{FIX}/bad-shorter.json"], expect_rc=1)
    check("preemptShorterFactor" in p.stderr and "0.5" in p.stderr, f"policy error: {p.stderr}")


def case_limits():
    # time limits overestimate run times by a seeded draw (default on): the
    # outcome under the default policy (shortest limit first) changes, is
    # the same for the same seed, and --oracle-limits is --limit-overestimate 1
    jobs = trace("msr-itp/cluster01.csv")
    pol = f"{POLICIES}/default.json"
    a = replay(jobs, pol).stdout
    check(a == replay(jobs, pol).stdout, "overestimates are not deterministic")
    check("limit_overestimate=10" in a.splitlines()[0], f"inputs line: {a.splitlines()[0]}")
    o = replay(jobs, pol, extra=["--oracle-limits"]).stdout
    check(last_json(o) != last_json(a), "the overestimate changed nothing")
    o1 = replay(jobs, pol, extra=["--limit-overestimate", "1"]).stdout
    check(last_json(o) == last_json(o1), "--oracle-limits differs from factor 1")
    p = run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/jobs.csv",
             "--policy", f"{POLICIES}/fifo.json", "--limit-overestimate", "0.5"], expect_rc=2)
    check("--limit-overestimate" in p.stderr, f"option error: {p.stderr}")


def model_rel(job_type, model, ref="V100-SXM2-16GB"):
    """The shipped speed model's speed of job_type on model relative to ref,
    computed here from the data files as docs/policy.md states it."""
    def rows(path):
        with open(path, newline="") as f:
            lines = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
        return [dict(zip(lines[0], r)) for r in lines[1:]]
    w = [r for r in rows(os.path.join(SOURCE, "data", "speed-model.csv"))
         if r["job_type"] == job_type and r["scale_factor"] == "1"][0]
    g = {r["model"]: r for r in rows(os.path.join(SOURCE, "data", "gpu-roofline.csv"))}

    def peak(m):
        v = float(g[m][w["precision"] + "_tflops"])
        return v if v > 0 else float(g[m]["fp32_tflops"])
    f = float(w["compute_share"])
    return 1 / (f * peak(ref) / peak(model) +
                (1 - f) * float(g[ref]["mem_bw_gbps"]) / float(g[model]["mem_bw_gbps"]))


def case_speed_model():
    # one H100 node (no measured column: the speed model) and one V100 (the
    # reference column); FIFO takes node 1, the H100
    with tempfile.TemporaryDirectory() as d:
        nodes = os.path.join(d, "nodes.csv")
        jobs = os.path.join(d, "jobs.csv")
        with open(nodes, "w") as f:
            f.write("node_id,region,model,gpus,memory_mib,compute_cap,fp32_tflops,tf32_tflops,"
                    "fp16_tflops,bf16_tflops,fp8_tflops,price_per_gpu_hour_micros\n"
                    "1,r,H100-SXM5-80GB,1,81920,90,67,494.7,989.4,989.4,1978.9,3500000\n"
                    "2,r,V100-SXM2-16GB,1,16384,70,15.7,0,125,0,0,2480000\n")
        for jt in ("ResNet-50 (batch size 64)", "Transformer (batch size 32)"):
            with open(jobs, "w") as f:
                f.write("job_id,tenant_id,submit_us,duration_us,gpus_per_node,node_count,"
                        "priority_class,preemptible,job_type\n"
                        '1,1,0,10000000000,1,1,0,0,"%s"\n' % jt)
            args = ["--nodes", nodes, "--jobs", jobs,
                    "--throughputs", trace("gavel/isolated_throughputs_steps_per_sec.csv"),
                    "--policy", f"{POLICIES}/fifo.json", "--no-wall-clock"]
            p = run(args)
            check("H100-SXM5-80GB gpus=1 throughput_column=(none: speed model)" in p.stdout,
                  f"model line: {p.stdout}")
            res = last_json(p.stdout)
            want = 10000 / model_rel(jt, "H100-SXM5-80GB")
            check(abs(res["avg_jct_s"] - want) < 1.0, f"{jt}: JCT {res['avg_jct_s']} != {want}")
            # without the model: FP32 TFLOPS interpolation, another speed
            old = last_json(run(args + ["--no-speed-model"]).stdout)
            check(abs(old["avg_jct_s"] - want) > 1.0, f"{jt}: --no-speed-model changed nothing")
        # a model file with a repeated row is an error naming both lines
        bad = os.path.join(d, "model.csv")
        with open(os.path.join(SOURCE, "data", "speed-model.csv")) as f:
            text = f.read()
        row = [ln for ln in text.splitlines() if ln.startswith("A3C,")][0]
        with open(bad, "w") as f:
            f.write(text + row + "\n")
        p = run(args + ["--speed-model", bad], expect_rc=1)
        check("model.csv:" in p.stderr and "already on line" in p.stderr, p.stderr)


def case_inputs():
    with tempfile.TemporaryDirectory() as d:
        # a UTF-8 byte-order mark (spreadsheet export) is accepted
        bom = os.path.join(d, "bom.csv")
        with open(f"{FIX}/nodes.csv", "rb") as f:
            raw = f.read()
        with open(bom, "wb") as f:
            f.write(b"\xef\xbb\xbf" + raw)
        run(["--nodes", bom, "--jobs", f"{FIX}/jobs.csv", "--policy", f"{POLICIES}/fifo.json"])
        # one model name with other figures on two lines: an error naming both
        dup = os.path.join(d, "dup.csv")
        with open(dup, "wb") as f:
            f.write(raw + b"3,r1,FAST,1,16384,80,25,0,0,0,0,1000000\n")
        p = run(["--nodes", dup, "--jobs", f"{FIX}/jobs.csv",
                 "--policy", f"{POLICIES}/fifo.json"], expect_rc=1)
        check("dup.csv:4:" in p.stderr and "line 2" in p.stderr and "FAST" in p.stderr,
              f"duplicate model error: {p.stderr}")
        # the same figures on another node (price is the node's own) are fine
        same = os.path.join(d, "same.csv")
        with open(same, "wb") as f:
            f.write(raw + b"3,r1,FAST,1,16384,80,20,0,0,0,0,2000000\n")
        run(["--nodes", same, "--jobs", f"{FIX}/jobs.csv", "--policy", f"{POLICIES}/fifo.json"])
        # the file `gpumatch admin policy get -o json` writes: the policy
        # under "policy", with its version and audit fields
        wrapped = os.path.join(d, "got.json")
        with open(f"{POLICIES}/fifo.json") as f:
            pol = json.load(f)
        pol.update(version="3", createdBy="admin:1 ops", createdAtUs="1", comment="x")
        with open(wrapped, "w") as f:
            json.dump({"policy": pol, "activeVersion": "3"}, f)
        a = last_json(run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/jobs.csv",
                           "--policy", wrapped, "--no-wall-clock"]).stdout)
        b = last_json(run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/jobs.csv",
                           "--policy", f"{POLICIES}/fifo.json", "--no-wall-clock"]).stdout)
        check(a == b, f"wrapped policy replayed differently: {a} vs {b}")
        # the retired field is named
        old = os.path.join(d, "old.json")
        with open(old, "w") as f:
            json.dump(dict(pol, speedupRelative=1), f)
        p = run(["--nodes", f"{FIX}/nodes.csv", "--jobs", f"{FIX}/jobs.csv",
                 "--policy", old], expect_rc=1)
        check("speedupRelative" in p.stderr, f"retired field: {p.stderr}")


def case_gavel_jobs():
    """sim/gavel-jobs.py: the same jobs with --preemptible, only the flag
    differs; both lists replay (FIFO preempts nothing, so alike)."""
    tput = trace("gavel/isolated_throughputs_steps_per_sec.csv")
    gen = os.path.join(SOURCE, "sim", "gavel-jobs.py")
    lists = {}
    with tempfile.TemporaryDirectory() as d:
        for mode, extra in (("np", []), ("p", ["--preemptible"])):
            p = subprocess.run([sys.executable, gen, tput, "1.5", "60", "2"] + extra,
                               capture_output=True, text=True, timeout=60)
            check(p.returncode == 0, f"gavel-jobs.py {extra}: {p.stderr}")
            path = os.path.join(d, mode + ".csv")
            with open(path, "w") as f:
                f.write(p.stdout)
            lists[mode] = (path, list(csv.DictReader(p.stdout.splitlines())))
        a, b = lists["np"][1], lists["p"][1]
        check(len(a) == 60 and len(b) == 60, f"job counts {len(a)}, {len(b)}")
        check(all(x["preemptible"] == "0" for x in a), "non-preemptible list has preemptible jobs")
        check(all(x["preemptible"] == "1" for x in b), "--preemptible list has fixed jobs")
        for x, y in zip(a, b):
            check(dict(x, preemptible="") == dict(y, preemptible=""), f"jobs differ: {x} vs {y}")
        res = [last_json(run(["--nodes", os.path.join(SOURCE, "data", "fleets", "gavel-nodes.csv"),
                              "--jobs", lists[m][0], "--throughputs", tput,
                              "--policy", f"{POLICIES}/fifo.json", "--no-wall-clock"]).stdout)
               for m in ("np", "p")]
        check(res[0]["completed"] == 60, f"not all completed: {res[0]}")
        check(res[0] == res[1], f"FIFO replayed the preemptible list differently: {res}")
        p = subprocess.run([sys.executable, gen, tput, "1.5", "60", "2", "--preempt"],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode != 0 and "usage" in p.stderr, f"bad flag accepted: {p.stderr}")


def main():
    if len(sys.argv) != 2 or not SIM:
        print("usage: GPUMATCH_SIM=path test_sim.py CASE", file=sys.stderr)
        return 2
    fn = globals().get("case_" + sys.argv[1])
    if not fn:
        print(f"unknown case {sys.argv[1]}", file=sys.stderr)
        return 2
    try:
        fn()
    except Failure as e:
        print(f"FAIL {sys.argv[1]}: {e}", file=sys.stderr)
        return 1
    print(f"ok {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
