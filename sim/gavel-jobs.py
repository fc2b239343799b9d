#!/usr/bin/env python3
"""Writes a Gavel-style job list (OSDI'20, section 7.1) in gpumatch's jobs CSV
format (docs/traces.md) for gpumatch-sim:

- Poisson arrivals at RATE jobs per hour (exponential gaps), seeded;
- GPUs 1, 2, 4, 8 with probability 80 / 5 / 10 / 5 %; 8-GPU jobs are gangs
  of two 4-GPU nodes (Gavel's servers have 4 GPUs);
- the job type drawn uniformly among the types the throughput table
  measured at that GPU count;
- the run time on the reference GPU (V100, the table's first column) is
  60 x 10^U(2, 4) seconds, as Gavel draws it;
- not preemptible, or with --preemptible every job preemptible (Gavel's
  jobs are: its rounds checkpoint them and move them between GPU types).

usage: sim/gavel-jobs.py THROUGHPUTS.csv RATE_PER_HOUR JOBS SEED [--preemptible] > jobs.csv
"""
import csv
import math
import random
import sys

HEADER = ("job_id,tenant_id,submit_us,duration_us,gpus_per_node,node_count,priority_class,"
          "preemptible,job_type")


def main():
    if len(sys.argv) not in (5, 6) or (len(sys.argv) == 6 and sys.argv[5] != "--preemptible"):
        sys.exit("usage: gavel-jobs.py THROUGHPUTS.csv RATE_PER_HOUR JOBS SEED [--preemptible]")
    path, rate, n, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    preemptible = 1 if len(sys.argv) == 6 else 0
    types = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            types.setdefault(int(r["scale_factor"]), []).append(r["job_type"])
    rng = random.Random(seed)
    t = 0.0
    print(HEADER)
    for i in range(n):
        t += rng.expovariate(rate / 3600.0)
        u = rng.random()
        gpus = 1 if u < 0.80 else 2 if u < 0.85 else 4 if u < 0.95 else 8
        jt = rng.choice(types[gpus])
        dur = 60.0 * 10 ** rng.uniform(2, 4)
        per_node, nodes = (4, 2) if gpus == 8 else (gpus, 1)
        print("%d,0,%d,%d,%d,%d,0,%d,\"%s\"" % (
            i + 1, int(t * 1e6), int(dur * 1e6), per_node, nodes, preemptible, jt))


if __name__ == "__main__":
    main()
