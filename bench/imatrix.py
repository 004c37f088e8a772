#!/usr/bin/python3
"""The importance-matrix pass, side by side (issue #23): llama.cpp's
llama-imatrix against quantfs's calibration pass for its views that use
one (kq4_k_m, kq6_k: the importance matrix, plus each linear's Hessian
and its GPTQ factor), on the same calibration tokens, in the same run:
pairs of one llama-imatrix run and one quantfs pass next to each other,
alternating which goes first; printed per pair, as the median of the
pairs' ratios, and as the ratio of each side's best time (on a machine
that others load, the least disturbed run of each).

llama-imatrix runs on the mount's source-precision view
(original/model.gguf, the weights in their source dtype) with the text
cut as quantfs cuts it by default: --chunks 32 of -c 256 tokens of
calib.txt (8,192 tokens). Its time is the process's wall time: start,
model load, tokenization, the forward passes with the head, the
statistics and writing the file.

quantfs's time is its job's own "calibration pass" line in the daemon log
(fs/job.c): from the job's start to its results, which takes the
calibration text's tokenization, the layers' loads (source dtype to
fp32), the embedding, one forward pass per layer, the statistics (the
channel sums of x^2 of the importance matrix, and X^T X), the GPTQ
factors of the Hessians and the head's, and the LMDB commits; each view
in a fresh mount with an empty cache, so nothing is reused. Not in it:
the mount's start and the encoding of model.gguf (the GPTQ solve on the
k-quant grids, which the job runs after each layer's pass and logs
apart, and the packing), printed apart as the first read of model.gguf
minus the pass.

Threads: both sides use every online CPU (llama-imatrix -t N; quantfs's
jobs always run BLAS on the online CPUs). llama-imatrix also runs with
-t 1 in each pair: on a machine that others load, its threads' waits for
each other (they poll) can make -t N several times slower than -t 1.

usage: bench/imatrix.py [--llama DIR] [--quantfs PATH] [--model DIR]
         [--calib FILE] [--calib-n 32] [--calib-len 256]
         [--views kq4_k_m,kq6_k] [--runs 3] [--before PATH]
DIR holds llama-imatrix (bench/llamacpp.sh builds it, default
/tmp/qf-llamacpp/bin). Scratch files under /tmp/qf-imatrix-*, removed.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests",
                                "mount"))
import qftest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data")
PASS = re.compile(r"/(\S+): calibration pass ([0-9.]+) s: (.*)")
DONE = re.compile(r"/(\S+): done in ([0-9.]+) s")


def llama_imatrix(a, src, work, threads):
    """Wall seconds of one llama-imatrix run on src."""
    log = os.path.join(work, "imatrix.log")
    cmd = ["nice", "-n", "19", os.path.join(a.llama, "llama-imatrix"),
           "-m", src, "-f", a.calib, "-c", str(a.calib_len), "--chunks",
           str(a.calib_n), "-o", os.path.join(work, "imatrix.gguf"), "-t",
           str(threads)]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if r.returncode:
        sys.exit("llama-imatrix failed (%d):\n%s" % (
            r.returncode, open(log).read()[-2000:]))
    return dt


def quantfs_pass(a, model, view, binary):
    """(pass seconds, its phases, first read of model.gguf seconds) of
    view in a fresh mount of binary."""
    qftest.QUANTFS = binary
    opts = ["calib=" + a.calib, "calib_n=%d" % a.calib_n,
            "calib_len=%d" % a.calib_len]
    with qftest.Mount(os.path.dirname(model), opts=opts, debug=False) as m:
        path = os.path.join(m.mnt, os.path.basename(model), view,
                            "model.gguf")
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass
        read = time.perf_counter() - t0
        log = m.stderr()
    shutil.rmtree(m.tmp, ignore_errors=True)
    for line in log.splitlines():
        p = PASS.search(line)
        if p and p.group(1) == view:
            return float(p.group(2)), p.group(3), read
    for line in log.splitlines():	# a build before that line
        p = DONE.search(line)
        if p and p.group(1) == view:
            return float(p.group(2)), "(the job's 'done in' line)", read
    sys.exit("no calibration pass line for %s in the daemon log:\n%s" % (
        view, log[-2000:]))


def source_gguf(model, work):
    """The mount's original/model.gguf, copied to work."""
    src = os.path.join(work, "source.gguf")
    with qftest.Mount(os.path.dirname(model), debug=False) as m:
        shutil.copyfile(os.path.join(m.mnt, os.path.basename(model),
                                     "original", "model.gguf"), src)
    shutil.rmtree(m.tmp, ignore_errors=True)
    return src


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama", default="/tmp/qf-llamacpp/bin")
    ap.add_argument("--quantfs", default=os.path.join(
        HERE, "..", "build", "mounts", "quantfs"))
    ap.add_argument("--model", default=os.path.join(
        DATA, "models", "tinystories-llama-5m"))
    ap.add_argument("--calib", default=os.path.join(
        DATA, "text", "tinystories", "calib.txt"))
    ap.add_argument("--calib-n", type=int, default=32)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--views", default="kq4_k_m,kq6_k")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", default="",
                    help="another quantfs build (e.g. the commit before a "
                    "change): its pass in each pair too")
    a = ap.parse_args()
    qftest.QUANTFS = os.path.abspath(a.quantfs)
    a.before = os.path.abspath(a.before) if a.before else ""
    a.llama = os.path.abspath(a.llama)
    a.calib = os.path.abspath(a.calib)
    if not os.access(os.path.join(a.llama, "llama-imatrix"), os.X_OK):
        sys.exit("no llama-imatrix in %s: run bench/llamacpp.sh" % a.llama)
    model = os.path.abspath(a.model)
    views = a.views.split(",")
    threads = os.cpu_count()
    refs = [threads] + ([1] if threads > 1 else [])
    work = tempfile.mkdtemp(prefix="qf-imatrix-")
    try:
        src = source_gguf(model, work)
        print("%s, %d x %d tokens of %s; threads: quantfs's job %d (the "
              "online CPUs), llama-imatrix -t %s" % (
                  os.path.basename(model), a.calib_n, a.calib_len,
                  os.path.relpath(a.calib, DATA), threads,
                  " and -t ".join(map(str, refs))))
        print("%-4s %-8s %s%8s %s%11s %11s" % (
            "run", "view", "".join("%10s" % ("-t %d s" % t) for t in refs),
            "pass s", "".join("%9s" % ("/ -t %d" % t) for t in refs),
            "1st read s", "encoding s"))
        got = {v: [] for v in views}	# [(pass, phases, {t: llama})]
        for r in range(a.runs):
            for i, v in enumerate(views):
                # one pass between the llama-imatrix runs, the order
                # alternating: neither side always runs first
                order = refs if (r + i) % 2 == 0 else refs[::-1]
                ll = {order[0]: llama_imatrix(a, src, work, order[0])}
                sec, ph, rd = quantfs_pass(a, model, v,
                                           os.path.abspath(a.quantfs))
                for t in order[1:]:
                    ll[t] = llama_imatrix(a, src, work, t)
                old = quantfs_pass(a, model, v, a.before)[0] \
                    if a.before else None
                got[v].append((sec, ph, ll, old))
                print("%-4d %-8s %s%8.2f %s%11.2f %11.2f%s" % (
                    r + 1, v, "".join("%10.2f" % ll[t] for t in refs), sec,
                    "".join("%8.2fx" % (sec / ll[t]) for t in refs), rd,
                    rd - sec, "  before %.2f s" % old if a.before else ""),
                    flush=True)
        for v in views:
            qo = min(g[0] for g in got[v])
            for t in refs:
                rs = [g[0] / g[2][t] for g in got[v]]
                lo = min(g[2][t] for g in got[v])
                print("%s / llama-imatrix -t %d: median of pairs %.2fx "
                      "(%.2f-%.2fx, %d pairs); best of each %.2f s / %.2f s"
                      " = %.2fx" % (v, t, statistics.median(rs), min(rs),
                                     max(rs), len(rs), qo, lo, qo / lo))
            if a.before:
                bo = min(g[3] for g in got[v])
                print("%s: before %s: best pass %.2f s, this build's %.2f s"
                      " = %.2fx" % (v, a.before, bo, qo, qo / bo))
            sec, ph = sorted(got[v], key=lambda g: g[0])[len(got[v]) // 2][:2]
            print("  %s's median pass, %.2f s: %s" % (v, sec, ph))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
