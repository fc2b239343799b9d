#!/usr/bin/env python3
"""make_seeds.py — writes the small seed corpora under fuzz/corpus/ from the
project's own examples, traces and test requests. Run it again after a
format changes; the output is checked in (a few KB per target)."""

import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRACES = os.path.join(os.path.dirname(ROOT), "shared", "traces")


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def head_lines(path, n):
    with open(path, "rb") as f:
        return b"".join(f.readline() for _ in range(n))


SPEC = {"kind": "JOB_KIND_BATCH", "gpusPerNode": 1, "maxDurationUs": "3600000",
        "command": ["echo", "hi"], "env": {"A": "b"}}
SUBMIT = json.dumps({"idempotencyKey": "k1", "name": "n", "spec": SPEC}).encode()

# HTTP framing and the whole request path
reqs = {
    "post-json": b"POST /gpumatch.v1.JobService/SubmitJob HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nAuthorization: Bearer t\r\n"
                 b"Connect-Protocol-Version: 1\r\nConnect-Timeout-Ms: 5000\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(SUBMIT) + SUBMIT,
    "post-proto": b"POST /gpumatch.v1.JobService/GetJob HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/proto\r\nAuthorization: Bearer t\r\n"
                  b"Content-Length: 2\r\n\r\n\x08\x01",
    "chunked": b"POST /gpumatch.v1.AdminService/ListTenants HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/json\r\nAuthorization: Bearer a\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "pipelined": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"POST /gpumatch.v1.NodeService/Heartbeat HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nAuthorization: Bearer o\r\n"
                 b"Content-Length: 2\r\n\r\n{}",
    "http10": b"POST /gpumatch.v1.JobService/ListJobs HTTP/1.0\r\nContent-Type: "
              b"application/json; charset=utf-8\r\nContent-Length: 0\r\n\r\n",
    "expect": b"POST /gpumatch.v1.JobService/ListJobs HTTP/1.1\r\nHost: x\r\n"
              b"Expect: 100-continue\r\nContent-Type: application/json\r\n"
              b"Content-Length: 2\r\n\r\n{}",
}
for name, r in reqs.items():
    put("fuzz_rpc_http", name, r)
    put("fuzz_http_frame", name, b"\x03" + r)

# JSON messages: type index byte + document (the index picks any message)
for i, doc in enumerate([SUBMIT, json.dumps(SPEC).encode(), b'{"pageSize": 10}',
                         b'{"jobId": "18446744073709551615"}', b'{"data": "AAEC"}',
                         b'{"weights": {"wPrice": 1.5}, "fitMode": "FIT_MODE_BEST"}']):
    for t in (0, 17, 42, 99):
        put("fuzz_pbjson", "doc%d-t%d" % (i, t), bytes([t]) + doc)

# binary requests: a few hand-made encodings under several type bytes
for i, raw in enumerate([b"\x08\x01", b"\x0a\x03abc\x10\x05", b"\x12\x04\x08\x01\x10\x02",
                         b"\x1a\x02\x08\x01\x22\x03xyz", b""]):
    for t in (0, 1, 2, 9, 20, 33):
        put("fuzz_proto_request", "m%d-t%d" % (i, t), bytes([t]) + raw)

for p in sorted(glob.glob(os.path.join(ROOT, "examples", "policies", "*.json"))):
    with open(p, "rb") as f:
        data = f.read()
    try:
        j = json.loads(data)
        if isinstance(j, dict) and "policy" in j:
            data = json.dumps(j["policy"]).encode()
    except ValueError:
        pass
    put("fuzz_policy", os.path.basename(p), data)

with open(os.path.join(ROOT, "deploy", "gpumatchd.conf.example"), "rb") as f:
    put("fuzz_config", "example", f.read())
put("fuzz_config", "flags", b"listen_port = 7070\nmax_connections = 5\n\x00--log_level=debug\n"
    b"--header_timeout_ms=100")

for p in sorted(glob.glob(os.path.join(ROOT, "examples", "jobs", "*"))):
    with open(p, "rb") as f:
        data = f.read()
    put("fuzz_spec", os.path.basename(p), (b"\x01" if p.endswith(".json") else b"\x00") + data)

traces = {
    "alibaba-nodes": ("alibaba-gpu-v2023/openb_node_list_gpu_node.csv", 0),
    "alibaba-pods": ("alibaba-gpu-v2023/openb_pod_list_default.csv", 3),
    "msr": ("msr-itp/cluster01.csv", 3),
    "gavel-csv": ("gavel/isolated_throughputs_steps_per_sec.csv", 6),
}
for name, (rel, sel) in traces.items():
    p = os.path.join(TRACES, rel)
    if os.path.exists(p):
        put("fuzz_trace", name, bytes([sel]) + head_lines(p, 6))
put("fuzz_trace", "gm-nodes", b"\x00node_id,region,model,gpus,memory_mib,compute_cap,fp32_tflops,"
    b"tf32_tflops,fp16_tflops,bf16_tflops,fp8_tflops,price_per_gpu_hour_micros\n"
    b"1,eu,A100-80GB,8,81920,8.0,19.5,156,312,312,0,2000000\n")
put("fuzz_trace", "gavel-json", b"\x07" + b'{"resnet18": {"v100": {"null": 10.5}}}')

for t in range(0, 60, 7):
    put("fuzz_agent_reply", "ok-%d" % t, bytes([t, 0]) + b"\x08\x01\x12\x02ab")
    put("fuzz_agent_reply", "err-%d" % t, bytes([t, 3]) +
        b'{"code":"not_found","message":"job 5 not found"}')

# challenge: m, n, k, chain, R (big-endian u32), then precision, key, rows, leaves
be = lambda *v: b"".join(x.to_bytes(4, "big") for x in v)  # noqa: E731
put("fuzz_challenge", "small", be(4, 4, 8, 2, 16, 3) + bytes(range(64)))
put("fuzz_challenge", "wide", be(64, 64, 64, 1, 100, 5) + bytes(range(200)))
sys.exit(0)
