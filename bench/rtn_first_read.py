#!/usr/bin/python3
"""First read of an uncached RTN variant through a fresh mount (issue #23).

On a generated model of Qwen3-0.6B's size (0.95 GB of bf16 weights, the
same model as bench/read.py), each run mounts the source on an EMPTY
cache and reads MNT/bench-llama/<variant>/model.safetensors once from
start to end (1 MiB reads, one reader), as a loader would.  It prints,
per run and as the best of the runs:
  lookup    the path's lookup: the variant is set up, which needs the
            source's fingerprint (SHA-256 of the weights, src_fp.c: an
            empty cache has none)
  read      open to the last byte: the groups are produced on the way
  end to end  lookup + read, as GB/s of bf16 source
  read file   then the seconds until the variant's read file is there
            (written after the last close, in the background)
and the same on a cache that knows the source's hash (a mount looked up
another variant first: an uncached variant of a model seen before);
  daemon CPU  the daemon's CPU seconds over the read / its wall seconds
            (2.0 = both cores of this machine busy all along)
and, measured in the same run, between the mounts, as baselines:
  plain     reading the bf16 source file itself (hot in the page cache)
  kernel    build/bench/bench_rtn's in-memory RTN rate on one core
            (bf16 -> f32, rounding, packing; "fused as in production")
  sha256    libcrypto's SHA-256 of the source in this process (hashlib),
            beside the daemon's fingerprint rate from its log
with the end-to-end rate as a ratio to each.

--perf: `perf record --call-graph dwarf` on the daemon during the read
of the last run, each sample put in the first class one of its frames
names (see CLASSES): the share of the daemon's CPU time in the
quantization kernel, LMDB commits (the write transaction: values copied
into pages, checksums, commit), FUSE (receiving requests, splicing
replies), writing the read file, hashing (the fingerprint's SHA-256),
waiting for work (idle threads: not CPU), other.  The read file is
written after the read, so it shows only with --perf-until-file.

usage: bench/rtn_first_read.py [--quantfs PATH] [--variant NAME]
            [--runs N] [--perf] [--perf-until-file] [--keep DIR]
"""
import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests",
                                "mount"))
import qftest  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from read import bench_model, read_all, cpu_s  # noqa: E402  (bench/read.py)

CHUNK = 1 << 20

# (class, frame names that put a sample in it): first match wins, frames
# looked at from the leaf up, so a checksum under a commit counts as LMDB
CLASSES = [
    ("read file", ("qf_rf_write", "task_main")),
    ("fingerprint (SHA-256)", ("qf_src_fp", "qf_model_shard_sha256")),
    ("LMDB commit", ("qf_cache_put", "qf_fs_cache_put", "mdb_txn_commit",
                     "mdb_put", "qf_fs_room")),
    ("quantization kernel", ("qf_variant_produce", "rows_run",
                             "qf_variant_emit", "qf_rtn_quantize",
                             "qf_model_read_f32_rows")),
    ("value checks (qf_hash64)", ("qf_cache_check", "qf_flight_verify")),
    ("FUSE requests and replies", ("fuse_session_loop_mt", "fuse_ll_",
                                   "fuse_reply", "fuse_session_receive",
                                   "fuse_do_work", "qf_ll_", "splice")),
]


def plain_rate(path):
    t0 = time.perf_counter()
    n = read_all(path, bytearray(CHUNK))
    return n / (time.perf_counter() - t0)


def sha_rate(path):
    """hashlib's SHA-256 (libcrypto's, as the daemon's) of path."""
    h = hashlib.sha256()
    buf = bytearray(8 << 20)
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(memoryview(buf)[:k])
            n += k
    return n / (time.perf_counter() - t0)


def kernel_rate(bench_rtn):
    out = subprocess.run([bench_rtn], check=True, capture_output=True,
                         text=True).stdout
    m = re.search(r"fused as in production\s+([0-9.]+) GB/s", out)
    return float(m.group(1)) * 1e9 if m else None


def classify(script):
    """perf script text -> Counter of class -> samples."""
    shares = collections.Counter()
    for block in script.split("\n\n"):
        lines = [l.strip() for l in block.strip().splitlines()]
        if len(lines) < 2:
            continue
        frames = [l.split(None, 1)[1] if " " in l else l for l in lines[1:]]
        frames = [f.split("+0x")[0].split(" (")[0] for f in frames]
        if frames and frames[0] in ("__futex_abstimed_wait_common",
                                    "futex_wait", "do_futex") or \
                any(f.startswith("__x64_sys_futex") for f in frames[:6]):
            shares["waiting (not CPU)"] += 1
            continue
        cls = "other"
        for name, keys in CLASSES:
            if any(f.startswith(k) for f in frames for k in keys):
                cls = name
                break
        shares[cls] += 1
    return shares


def one_run(src, work, variant, perf, until_file, known=False):
    cache = os.path.join(work, "cache")
    shutil.rmtree(cache, ignore_errors=True)        # empty: nothing known
    rel = os.path.join("bench-llama", variant, "model.safetensors")
    rec = None
    if known:   # the cache knows the source: another variant looked up
        with qftest.Mount(src, cache=cache, debug=False) as m:
            os.stat(os.path.join(m.mnt, "bench-llama", "rtn_w8_gc",
                                 "model.safetensors"))
    with qftest.Mount(src, cache=cache, debug=False) as m:
        pid = m.proc.pid
        path = os.path.join(m.mnt, rel)
        if perf:
            data = os.path.join(work, "perf.data")
            rec = subprocess.Popen(
                ["perf", "record", "-q", "-F", "499", "--call-graph",
                 "dwarf,16384", "-p", str(pid), "-o", data],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        c0 = cpu_s(pid)
        t0 = time.perf_counter()
        os.stat(path)                   # lookup: variant set-up
        t1 = time.perf_counter()
        size = read_all(path, bytearray(CHUNK))
        t2 = time.perf_counter()
        c2 = cpu_s(pid)
        if rec and not until_file:
            rec.send_signal(2)
            rec.wait()
        while "kernel passthrough" in m.stderr() and \
                not json.loads(os.getxattr(path, "user.quantfs.io"))[
                    "read_file"]:
            if time.perf_counter() - t2 > 60:
                break
            time.sleep(0.01)
        t3 = time.perf_counter()
        if rec and until_file:
            rec.send_signal(2)
            rec.wait()
        log = m.stderr()
    src_bytes = hashed = None
    for line in log.splitlines():
        g = re.search(r"hashed (\d+) bytes .* in ([0-9.]+) s", line)
        if g:
            hashed = int(g.group(1)) / max(float(g.group(2)), 1e-3)
        g = re.search(r"produced ([0-9.]+) MB of source", line)
        if g:
            src_bytes = float(g.group(1)) * 1e6
    return dict(lookup=t1 - t0, read=t2 - t1, total=t2 - t0,
                rf=t3 - t2, cpu=c2 - c0, size=size, src=src_bytes,
                hashed=hashed,
                perf=os.path.join(work, "perf.data") if rec else None)


def perf_shares(data):
    script = subprocess.run(
        ["perf", "script", "-i", data, "-F", "comm,tid,ip,sym"],
        capture_output=True, text=True).stdout
    return classify(script)


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--quantfs", default=os.path.join(
        here, "..", "build", "mounts", "quantfs"))
    ap.add_argument("--bench-rtn", help="bench_rtn (default: beside "
                    "--quantfs's build, bench/bench_rtn)")
    ap.add_argument("--variant", default="rtn_w4_g128")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--perf-until-file", action="store_true",
                    help="--perf, and record until the read file is there")
    ap.add_argument("--keep", help="reuse/keep the model here")
    a = ap.parse_args()
    qftest.QUANTFS = os.path.abspath(a.quantfs)
    bench_rtn = a.bench_rtn or os.path.join(
        os.path.dirname(os.path.dirname(qftest.QUANTFS)), "bench",
        "bench_rtn")
    work = a.keep or tempfile.mkdtemp(prefix="qfbench.")
    src, model = bench_model(work)
    weights = os.path.join(model, "model.safetensors")
    read_all(weights, bytearray(CHUNK))     # hot in the page cache
    runs, plain, kern, sha, known = [], [], [], [], []
    perf = a.perf or a.perf_until_file
    for i in range(a.runs):
        plain.append(plain_rate(weights))
        r = one_run(src, work, a.variant, perf and i == a.runs - 1,
                    a.perf_until_file)
        runs.append(r)
        known.append(one_run(src, work, a.variant, False, False, True))
        kern.append(kernel_rate(bench_rtn))
        sha.append(sha_rate(weights))
        print("run %d: lookup %.2f s, read %.2f s (%.1f MB), end to end "
              "%.2f GB/s of source, read file %.2f s later, daemon CPU "
              "%.2f s = %.2f cores over lookup and read; plain %.2f GB/s, "
              "kernel %.2f GB/s" % (
                  i + 1, r["lookup"], r["read"], r["size"] / 1e6,
                  r["src"] / r["total"] / 1e9, r["rf"], r["cpu"],
                  r["cpu"] / r["total"], plain[-1] / 1e9,
                  (kern[-1] or 0) / 1e9), flush=True)
        k = known[-1]
        print("       source known to the cache: lookup %.2f s, read %.2f s"
              " = %.2f GB/s of source, daemon CPU %.2f cores" % (
                  k["lookup"], k["read"], k["src"] / k["total"] / 1e9,
                  k["cpu"] / k["total"]), flush=True)
    best = min(runs, key=lambda r: r["total"])
    src_b = best["src"]
    e2e = src_b / best["total"]
    rd = src_b / best["read"]
    print("variant %s: %.1f MB of bf16 source -> %.1f MB" % (
        a.variant, src_b / 1e6, best["size"] / 1e6))
    print("best of %d fresh mounts, empty cache:" % a.runs)
    print("  lookup (fingerprint) %.2f s, read %.2f s: end to end "
          "%.2f GB/s of source (read alone %.2f GB/s)" % (
              best["lookup"], best["read"], e2e / 1e9, rd / 1e9))
    print("  daemon CPU %.2f s over %.2f s = %.2f cores" % (
        best["cpu"], best["total"], best["cpu"] / best["total"]))
    print("  its read file there %.2f s after the last byte" % best["rf"])
    kb = min(known, key=lambda r: r["total"])
    print("the same with the source's hash in the cache (an uncached "
          "variant of a model seen before): lookup %.2f s, read %.2f s: "
          "%.2f GB/s of source, %.2fx the plain read, daemon CPU %.2f cores"
          % (kb["lookup"], kb["read"], kb["src"] / kb["total"] / 1e9,
             kb["src"] / kb["total"] / max(plain), kb["cpu"] / kb["total"]))
    print("baselines in the same run (best): plain read of the source "
          "%.2f GB/s -> end to end %.2fx, read alone %.2fx; bench_rtn "
          "kernel, one core, %.2f GB/s -> end to end %.2fx" % (
              max(plain) / 1e9, e2e / max(plain), rd / max(plain),
              max(k or 0 for k in kern) / 1e9,
              e2e / max(k or 1 for k in kern)))
    print("fingerprint: the daemon hashed at %.2f GB/s; SHA-256 of the "
          "same file in this process (libcrypto) %.2f GB/s (best of each)"
          % (max(r["hashed"] or 0 for r in runs) / 1e9, max(sha) / 1e9))
    if perf:
        shares = perf_shares(runs[-1]["perf"])
        busy = sum(v for k, v in shares.items() if not k.startswith("wait"))
        print("daemon CPU by class (perf, last run, %d samples on CPU):"
              % busy)
        for k, v in shares.most_common():
            if not k.startswith("wait"):
                print("  %-28s %5.1f %%" % (k, 100.0 * v / max(busy, 1)))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
