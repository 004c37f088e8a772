#!/usr/bin/python3
"""Disk and time of a k-quant view's first read (issue #24 point 2).

A kq view's calibration job used to store GPTQ's factor of each linear's
Hessian (about 60 MB per layer at Qwen3-0.6B's shapes) for the view to
run the sweep on llama.cpp's grids later; it now runs the sweep itself
and stores the encoded tensors.  For each model (the real 5M TinyStories
Llama, and a generated one with Qwen3-0.6B's layer shapes and --layers
decoder layers) this mounts the model on an EMPTY cache, reads
MNT/<model>/<variant>/model.gguf once from start to end, and prints:
  job       the calibration job's seconds (its "done in" log line)
  read      open to the last byte of the first read (job included)
  sha256    of the served file (the same before and after the change)
  cache     `quantfs cache ls` (bytes per id: the variant's job, the
            view's tensors) and `quantfs cache du`
Calibration: the default 32 x 256 tokens of tinystories/calib.txt.
Timings are of this machine with whatever else runs on it: compare runs
of one invocation (--quantfs A, then B) only.

usage: bench/kq_disk.py [--quantfs PATH] [--variant NAME] [--layers N]
                        [--only 5m|qwen3] [--keep DIR]
"""
import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "mount"))
import qftest  # noqa: E402

SHARED = os.environ.get("QF_SHARED", os.path.join(HERE, "..", "..",
                                                  "shared"))
QWEN3_06B = ["--arch", "qwen3", "--hidden", 1024, "--inter", 3072,
             "--heads", 16, "--kv-heads", 8, "--head-dim", 128, "--vocab",
             151936, "--tie"]


def first_read(quantfs, src, model, variant, opts):
    with qftest.Mount(src, opts=opts) as m:
        path = os.path.join(m.mnt, model, variant, "model.gguf")
        tmp = m.tmp
        h = hashlib.sha256()
        t0 = time.time()
        with open(path, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
        read = time.time() - t0
        log = open(m.log).read()
        du = "".join(subprocess.run([quantfs, "cache", c, "--cache",
                                     m.cache], capture_output=True,
                                    text=True).stdout for c in ("ls", "du"))
    shutil.rmtree(tmp, ignore_errors=True)
    job = re.findall(r"/%s: done in ([0-9.]+) s" % variant, log)
    return read, float(job[-1]) if job else -1, h.hexdigest(), du


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantfs", default=os.path.join(
        HERE, "..", "build-dev", "mounts", "quantfs"))
    ap.add_argument("--variant", default="kq4_k_m")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--only", default="5m,qwen3")
    ap.add_argument("--keep", help="keep the generated model here")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp(prefix="qf-kqdisk.")
    qftest.QUANTFS = os.path.abspath(a.quantfs)
    try:
        runs = []
        # a text: sampling from a generated model would take longer
        calib = ["calib=" + os.path.join(SHARED, "data", "text",
                                         "tinystories", "calib.txt")]
        if "5m" in a.only:
            runs.append(("tinystories-llama-5m",
                         os.path.join(SHARED, "data", "models"), calib))
        if "qwen3" in a.only:
            src = os.path.join(work, "models")
            model = os.path.join(src, "qwen3-0.6b-shape")
            if not os.path.exists(os.path.join(model, "config.json")):
                qftest.mkmodel(model, *(QWEN3_06B + ["--layers",
                                                     a.layers]))
            runs.append(("qwen3-0.6b-shape", src, calib))
        for name, src, opts in runs:
            read, job, sha, du = first_read(qftest.QUANTFS, src, name,
                                            a.variant, opts)
            print("%s/%s: job %.1f s, first read %.1f s, sha256 %s" %
                  (name, a.variant, job, read, sha))
            print(du.rstrip())
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
