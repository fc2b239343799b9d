#!/usr/bin/env python3
"""Fits data/speed-model.csv from a measured per-job-type throughput table
(Gavel's isolated_throughputs_steps_per_sec.csv: K80, P100, V100 columns).

Model (roofline-style, per job type and GPU count): a step's time on GPU g is
    t_g = T * ( f * C_ref / C_g  +  (1 - f) * B_ref / B_g )
with C_g the GPU's peak in the job type's precision, B_g its memory
bandwidth, f the compute-bound share of a step on the reference GPU (V100)
and T a scale. The speed relative to the reference is
    s_g / s_ref = 1 / ( f * C_ref / C_g + (1 - f) * B_ref / B_g ).
f is fitted in log space (least squares over the measured models, grid of
1001 values in [0, 1], the scale in closed form). Leave-one-model-out: fit on
the other measured models, predict the left-out one, report predicted /
measured - 1. Standard library only.

usage: data/fit-speed-model.py THROUGHPUTS.csv data/gpu-roofline.csv > data/speed-model.csv
"""
import csv
import math
import sys

# Which precision each job family computes in under PyTorch's defaults:
# cuDNN convolutions use TF32 tensor cores where the GPU has them
# (torch.backends.cudnn.allow_tf32 defaults to True), matrix multiplies stay
# FP32 (torch.backends.cuda.matmul.allow_tf32 defaults to False since 1.12).
PRECISION = {"ResNet": "tf32", "CycleGAN": "tf32", "A3C": "tf32",
             "LM": "fp32", "Transformer": "fp32", "Recommendation": "fp32"}
COLS = {"k80": "K80", "p100": "P100-PCIe-16GB", "v100": "V100-SXM2-16GB"}
REF = "v100"


def load_gpus(path):
    gpus = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    head = rows[0]
    for r in rows[1:]:
        d = dict(zip(head, r))
        gpus[d["model"]] = {k: float(v) for k, v in d.items() if k != "model"}
    return gpus


def peak(g, prec):
    if prec == "tf32" and g["tf32_tflops"] > 0:
        return g["tf32_tflops"]
    return g["fp32_tflops"]


def rel(f, g, ref, prec):
    return 1.0 / (f * peak(ref, prec) / peak(g, prec) + (1 - f) * ref["mem_bw_gbps"] / g["mem_bw_gbps"])


def fit(points, gpus, prec):
    """points: [(col, measured)]; returns f minimizing log error."""
    best = None
    for i in range(1001):
        f = i / 1000.0
        logs = [math.log(m) - math.log(rel(f, gpus[COLS[c]], gpus[COLS[REF]], prec)) for c, m in points]
        mu = sum(logs) / len(logs)
        sse = sum((x - mu) ** 2 for x in logs)
        if best is None or sse < best[0] - 1e-15:
            best = (sse, f, math.exp(mu))
    return best[1], best[2]


def main():
    tput, roof = sys.argv[1], sys.argv[2]
    gpus = load_gpus(roof)
    out = csv.writer(sys.stdout, lineterminator="\n")
    print("# speed-model.csv — per job type and GPU count: the compute-bound share of a")
    print("# step on the reference GPU (V100-SXM2-16GB) and the precision its compute runs")
    print("# in; with data/gpu-roofline.csv it gives the job's speed on any GPU model:")
    print("#   speed_g / speed_ref = 1 / (f * C_ref / C_g + (1 - f) * B_ref / B_g)")
    print("# C = peak TFLOPS in the precision (tf32 falls back to fp32 where a GPU has no")
    print("# TF32 path), B = memory bandwidth. mem_gib: least GPU memory the job needs")
    print("# (0 = fits every GPU here: Gavel ran every type on a 12 GB K80 die).")
    print("# Fitted by data/fit-speed-model.py from Gavel's measured throughputs")
    print("# (isolated_throughputs_steps_per_sec.csv, OSDI'20; MIT). loo_*: leave-one-")
    print("# model-out error of the model on that GPU (predicted / measured - 1, fitted on")
    print("# the other measured GPUs; empty = not measured or too few points).")
    out.writerow(["job_type", "scale_factor", "precision", "compute_share", "mem_gib",
                  "fit_err_k80", "fit_err_p100", "fit_err_v100", "loo_k80", "loo_p100", "loo_v100"])
    with open(tput, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    errs = {c: [] for c in COLS}
    for r in rows:
        jt = r["job_type"]
        prec = PRECISION[jt.split(" ")[0].split("-")[0]]
        pts = [(c, float(r[c])) for c in COLS if r.get(c) and float(r[c]) > 0]
        if REF not in dict(pts):
            continue
        fv, scale = fit(pts, gpus, prec)
        fit_err = {}
        for c, m in pts:
            p = scale * rel(fv, gpus[COLS[c]], gpus[COLS[REF]], prec)
            fit_err[c] = p / m - 1
        loo = {}
        if len(pts) >= 3:
            for i, (c, m) in enumerate(pts):
                rest = pts[:i] + pts[i + 1:]
                f2, s2 = fit(rest, gpus, prec)
                p = s2 * rel(f2, gpus[COLS[c]], gpus[COLS[REF]], prec)
                loo[c] = p / m - 1
                errs[c].append(abs(loo[c]))
        out.writerow([jt, r["scale_factor"], prec, "%.3f" % fv, 0] +
                     ["%.3f" % fit_err[c] if c in fit_err else "" for c in COLS] +
                     ["%.3f" % loo[c] if c in loo else "" for c in COLS])
    for c in COLS:
        v = sorted(errs[c])
        if v:
            print("# leave-one-model-out |error| on %s: median %.3f, mean %.3f, max %.3f over %d rows"
                  % (COLS[c], v[len(v) // 2], sum(v) / len(v), v[-1], len(v)))


if __name__ == "__main__":
    main()
