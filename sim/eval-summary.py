#!/usr/bin/env python3
"""Summarizes sim/eval.sh's replays (OUT/cells/*.json): a table per part,
the floors of the evaluation, and OUT/summary.json. Ratios are baseline /
candidate (above 1: the candidate is better) for average and p99 JCT;
effective throughput is compared as candidate - baseline."""
import glob
import json
import os
import statistics
import sys


def load(out):
    cells = {}
    for path in sorted(glob.glob(os.path.join(out, "cells", "*.json"))):
        name = os.path.basename(path)[:-5]
        cell, pol = name.rsplit(".", 1)
        with open(path) as f:
            txt = f.read().strip()
        if not txt.startswith("{"):
            continue
        cells.setdefault(cell, {})[pol] = json.loads(txt)
    return {k: v for k, v in cells.items() if "base" in v and "cand" in v}


def ratio(a, b):
    return a / b if b > 0 else float("inf")


def main():
    out = sys.argv[1]
    cells = load(out)
    rows = []
    for cell, v in sorted(cells.items()):
        b, c = v["base"], v["cand"]
        rows.append({
            "cell": cell,
            "base_avg_jct_s": b["avg_jct_s"], "cand_avg_jct_s": c["avg_jct_s"],
            "avg_jct_ratio": ratio(b["avg_jct_s"], c["avg_jct_s"]),
            "p99_jct_ratio": ratio(b["p99_jct_s"], c["p99_jct_s"]),
            "p50_jct_ratio": ratio(b["p50_jct_s"], c["p50_jct_s"]),
            "base_eff": b.get("effective_throughput", 0), "cand_eff": c.get("effective_throughput", 0),
            "base_util": b["gpu_utilization"], "cand_util": c["gpu_utilization"],
            "base_useful": b.get("useful_utilization", b["gpu_utilization_useful"]),
            "cand_useful": c.get("useful_utilization", c["gpu_utilization_useful"]),
            "base_makespan_s": b["makespan_s"], "cand_makespan_s": c["makespan_s"],
            "base_cost": b["cost_micros"], "cand_cost": c["cost_micros"],
            "base_jain": b["jain_fairness"], "cand_jain": c["jain_fairness"],
            "base_unfinished": b["unfinished"], "cand_unfinished": c["unfinished"],
            "base_wait_s": b["avg_wait_s"],
            "cand_preemptions": c["preemptions"],
            "base_sspws": b.get("sim_seconds_per_wall_second"),
            "cand_sspws": c.get("sim_seconds_per_wall_second"),
            "base_sspcs": b.get("sim_seconds_per_cpu_second"),
            "cand_sspcs": c.get("sim_seconds_per_cpu_second"),
        })
    msr = [r for r in rows if r["cell"].startswith("msr.")]
    gav = [r for r in rows if r["cell"].startswith("gavel.")]
    gavp = [r for r in rows if r["cell"].startswith("gavelp.")]
    summary = {"cells": rows, "floors": {}}
    hdr = "%-34s %10s %10s %6s %6s %6s %7s %7s %6s %6s" % (
        "cell", "base JCT", "cand JCT", "avg", "p99", "p50", "eff b", "eff c", "util b", "util c")
    for title, part in (("MSR ITP matrix", msr), ("Gavel-style", gav),
                        ("Gavel-style, every job preemptible", gavp)):
        if not part:
            continue
        print("\n## %s (ratio = baseline / candidate)\n" % title)
        print(hdr)
        for r in part:
            print("%-34s %10.0f %10.0f %6.3f %6.3f %6.3f %7.4f %7.4f %6.3f %6.3f" % (
                r["cell"][:34], r["base_avg_jct_s"], r["cand_avg_jct_s"], r["avg_jct_ratio"],
                r["p99_jct_ratio"], r["p50_jct_ratio"], r["base_eff"], r["cand_eff"],
                r["base_util"], r["cand_util"]))
    fl = summary["floors"]
    for mode in ("np", "p"):
        part = [r for r in msr if ".%s." % mode in r["cell"] + "."]
        part = [r for r in msr if r["cell"].split(".")[-1] == mode]
        if not part:
            continue
        a = [r["avg_jct_ratio"] for r in part]
        p = [r["p99_jct_ratio"] for r in part]
        eff_bad = [r["cell"] for r in part if r["cand_eff"] < r["base_eff"]]
        fl[mode] = {
            "cells": len(part),
            "avg_jct_ratio_median": statistics.median(a), "avg_jct_ratio_min": min(a),
            "avg_jct_ratio_max": max(a),
            "cells_below_0.98": sorted(r["cell"] for r in part if r["avg_jct_ratio"] < 0.98),
            "p99_jct_ratio_median": statistics.median(p), "p99_jct_ratio_min": min(p),
            "effective_throughput_below_baseline": eff_bad,
        }
        for fleet in ("alibaba", "modern"):
            sub = [r["avg_jct_ratio"] for r in part if ".%s." % fleet in r["cell"]]
            if sub:
                fl[mode]["avg_jct_ratio_median_" + fleet] = statistics.median(sub)
    c04 = [x for r in msr if r["cell"].startswith("msr.c04.")
           for x in (r["base_sspws"], r["cand_sspws"]) if x is not None]
    if c04:
        fl["cluster04_sim_seconds_per_wall_second_min"] = min(c04)
    c04cpu = [x for r in msr if r["cell"].startswith("msr.c04.")
              for x in (r["base_sspcs"], r["cand_sspcs"]) if x is not None]
    if c04cpu:
        # the same per CPU second of the replay: what the replay costs on a
        # machine shared with other work
        fl["cluster04_sim_seconds_per_cpu_second_min"] = min(c04cpu)
    for key, title, part in (("gavel", "Gavel-style", gav),
                             ("gavel_preemptible", "Gavel-style, every job preemptible", gavp)):
        if part:
            gavel_floor(fl, key, title, part)
    print("\n## Floors\n")
    print(json.dumps(fl, indent=1, default=str))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


def gavel_floor(fl, key, title, part):
    """Mean JCT over seeds per arrival rate, and the ratio at the highest
    rate the baseline keeps up with, into fl[key...]."""
    if part:
        by_rate = {}
        for r in part:
            rate = float(r["cell"].split(".r", 1)[1].rsplit(".s", 1)[0])
            by_rate.setdefault(rate, []).append(r)
        g = []
        for rate in sorted(by_rate):
            rs = by_rate[rate]
            bj = statistics.mean(r["base_avg_jct_s"] for r in rs)
            cj = statistics.mean(r["cand_avg_jct_s"] for r in rs)
            # FIFO keeps up when every job completes and its mean wait stays
            # below its mean run time (the queue does not run away)
            keeps_up = all(r["base_unfinished"] == 0 and r["base_wait_s"] < r["base_avg_jct_s"] - r["base_wait_s"]
                           for r in rs)
            g.append({"rate_per_hour": rate, "seeds": len(rs), "base_avg_jct_h": bj / 3600,
                      "cand_avg_jct_h": cj / 3600, "ratio": bj / cj, "baseline_keeps_up": keeps_up})
        fl[key] = g
        ok = [x for x in g if x["baseline_keeps_up"]]
        if ok:
            fl[key + "_ratio_at_highest_rate_baseline_keeps_up"] = ok[-1]["ratio"]
            fl[key + "_highest_rate_baseline_keeps_up"] = ok[-1]["rate_per_hour"]
        print("\n## %s, mean over seeds\n" % title)
        print("%8s %12s %12s %7s %s" % ("jobs/h", "base JCT h", "cand JCT h", "ratio", "baseline keeps up"))
        for x in g:
            print("%8.2f %12.1f %12.1f %7.3f %s" % (x["rate_per_hour"], x["base_avg_jct_h"],
                                                   x["cand_avg_jct_h"], x["ratio"], x["baseline_keeps_up"]))


if __name__ == "__main__":
    main()
