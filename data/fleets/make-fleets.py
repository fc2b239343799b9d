#!/usr/bin/env python3
"""Writes the evaluation fleets in gpumatch's node CSV format (docs/traces.md):

  modern-nodes.csv  2,048 GPUs of current data-centre models
  gavel-nodes.csv   Gavel's simulated cluster (OSDI'20): 36 each of
                    K80, P100, V100 in 4-GPU servers

Figures come from data/gpu-roofline.csv (datasheets). Node ids are dealt out
in a seeded shuffle so that id order (what first-fit follows) does not line
up with GPU models. Prices per GPU-hour are on-demand list prices of public
clouds and GPU rental markets in 2024-25, rounded (see docs/policy.md).

usage: data/fleets/make-fleets.py   (from the repository root)
"""
import csv
import random

HEADER = ("node_id,region,model,gpus,memory_mib,compute_cap,fp32_tflops,tf32_tflops,"
          "fp16_tflops,bf16_tflops,fp8_tflops,price_per_gpu_hour_micros")
CC = {"K80": 37, "P100-PCIe-16GB": 60, "V100-SXM2-16GB": 70, "A10-24GB": 86,
      "L4-24GB": 89, "L40S-48GB": 89, "A100-SXM4-80GB": 80, "H100-SXM5-80GB": 90,
      "H800-SXM5-80GB": 90}
MEM_MIB = {"K80": 12288, "P100-PCIe-16GB": 16384, "V100-SXM2-16GB": 16384, "A10-24GB": 24576,
           "L4-24GB": 24576, "L40S-48GB": 49152, "A100-SXM4-80GB": 81920,
           "H100-SXM5-80GB": 81920, "H800-SXM5-80GB": 81920}

# (model, GPUs per node, nodes, USD per GPU-hour)
MODERN = [
    ("H100-SXM5-80GB", 8, 24, 3.50),
    ("H800-SXM5-80GB", 8, 16, 2.80),
    ("A100-SXM4-80GB", 8, 64, 1.80),
    ("L40S-48GB", 8, 32, 1.00),
    ("L40S-48GB", 4, 32, 1.00),
    ("A10-24GB", 4, 96, 0.75),
    ("A10-24GB", 1, 64, 0.75),
    ("L4-24GB", 2, 96, 0.70),
    ("L4-24GB", 1, 64, 0.70),
]
# Gavel's cluster; prices for the cost column only (cloud list prices of
# the time: K80 0.45, P100 1.46, V100 2.48 USD per GPU-hour, as Gavel's
# cost experiments used).
GAVEL = [
    ("K80", 4, 9, 0.45),
    ("P100-PCIe-16GB", 4, 9, 1.46),
    ("V100-SXM2-16GB", 4, 9, 2.48),
]


def roofline():
    with open("data/gpu-roofline.csv", newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    head = rows[0]
    return {r[0]: dict(zip(head, r)) for r in rows[1:]}


def write(path, spec, seed):
    roof = roofline()
    nodes = []
    for model, gpus, count, usd in spec:
        for _ in range(count):
            nodes.append((model, gpus, usd))
    ids = list(range(1, len(nodes) + 1))
    random.Random(seed).shuffle(ids)
    rows = sorted(zip(ids, nodes))
    with open(path, "w") as f:
        f.write(HEADER + "\n")
        for nid, (model, gpus, usd) in rows:
            g = roof[model]
            f.write("%d,default,%s,%d,%d,%d,%s,%s,%s,%s,%s,%d\n" % (
                nid, model, gpus, MEM_MIB[model], CC[model], g["fp32_tflops"],
                g["tf32_tflops"], g["fp16_tflops"], g["bf16_tflops"], g["fp8_tflops"],
                round(usd * 1e6)))


write("data/fleets/modern-nodes.csv", MODERN, 1)
write("data/fleets/gavel-nodes.csv", GAVEL, 1)
