#!/usr/bin/python3
"""GGUF views: production throughput per encoding (source MB/s, fresh
cache, first full read through the mount) and llama.cpp generation speed
(node-llama-cpp's CPU prebuilt) per encoding reading the mount and a plain
copy of the same file, in one run.

usage: bench/gguf.py [--quantfs PATH] [--model DIR] [-n TOKENS]
The model defaults to ../shared/data/models/tinystories-llama-5m.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests",
                                "mount"))
import qftest  # noqa: E402

VIEWS = [("original", "source dtype"), ("rtn_w8_g32_sym", "Q8_0"),
         ("rtn_w4_g32_sym", "Q4_0"), ("kq4_k_m", "Q4_K_M + imatrix")]


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--quantfs", default=os.path.join(here, "..", "build",
                                                      "mounts", "quantfs"))
    ap.add_argument("--model", default=os.path.join(
        here, "..", "..", "shared", "data", "models", "tinystories-llama-5m"))
    ap.add_argument("-n", type=int, default=128)
    a = ap.parse_args()
    qftest.QUANTFS = os.path.abspath(a.quantfs)
    model = os.path.abspath(a.model)
    src = os.path.dirname(model)
    name = os.path.basename(model)
    client = os.path.join(here, "..", "tests", "node", "gguf_client.mjs")
    req = os.path.join(tempfile.mkdtemp(), "req.json")
    json.dump({"prompt": "Once upon a time, there was a", "n": a.n,
               "windows": []}, open(req, "w"))
    weights = sum(os.path.getsize(os.path.join(model, f))
                  for f in os.listdir(model) if f.endswith(".safetensors"))
    print("%s: %.1f MB of weights" % (name, weights / 1e6))
    print("%-16s %-18s %8s %8s %10s %12s %12s" % (
        "variant", "encoding", "MB", "prod s", "src MB/s", "llama tok/s",
        "plain tok/s"))
    plain = os.path.join(tempfile.mkdtemp(), "plain.gguf")
    with qftest.Mount(src, debug=False) as m:
        for v, enc in VIEWS:
            path = os.path.join(m.mnt, name, v, "model.gguf")
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                while f.read(1 << 22):
                    pass
            dt = time.perf_counter() - t0
            with open(path, "rb") as f, open(plain, "wb") as g:
                g.write(f.read())
            tok = []
            for p in (path, plain):     # the mount, then a plain copy
                r = subprocess.run(["node", client, p, req],
                                   capture_output=True, text=True)
                out = json.loads(r.stdout.strip().splitlines()[-1])
                tok.append("%.1f" % out["gen_tok_s"]
                           if out.get("gen_tok_s") else "n/a")
            print("%-16s %-18s %8.1f %8.2f %10.1f %12s %12s" % (
                v, enc, os.path.getsize(path) / 1e6, dt, weights / 1e6 / dt,
                tok[0], tok[1]))


if __name__ == "__main__":
    main()
