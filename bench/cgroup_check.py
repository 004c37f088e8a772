#!/usr/bin/python3
"""Production from a source larger than the memory it may use (issue #23).

A generated model with Llama-3-70B's shapes (hidden 8192, intermediate
28,672, 64 heads, 8 KV heads, the real vocabulary of 128,256, untied:
--layers decoder layers, default 2: 7.6 GB of bf16) is mounted by a
daemon that runs inside a memory cgroup whose limit (--limit, default
2 GiB) is far below the model's size; every variant of --variants is read
once, whole, through the mount (by this process, outside the cgroup).
The source is read through the page cache and given back as production
passes it (quant/io: the fingerprint by pread, the weights through the
map in 8 MiB steps), so the daemon never holds it: the cgroup's charge
(its anonymous memory, and the page cache it reads and writes, which the
kernel reclaims at the limit) stays under the limit, the kernel never
kills it, and the files come out whole.  Printed per variant: seconds,
the cgroup's peak charge (page cache included: at the limit, the kernel
reclaims it), its failed charges, OOM kills, the daemon's peak anonymous
memory.

cgroup v1 (/sys/fs/cgroup/memory) or v2 (/sys/fs/cgroup with the memory
controller); as root.  Exits 2 with a message where neither can be made.

usage: bench/cgroup_check.py [--quantfs PATH] [--layers N] [--limit SIZE]
           [--variants A,B] [--calib-n N] [--calib-len N] [--keep DIR]
  a calibrated variant (gptq_w4_g128) needs its own memory beside the
  limit's page cache: about 5.5 GB at these shapes with a few tokens, so
  give it --layers 3 (9.3 GB of source) and --limit 7G.
"""
import argparse
import os
import shutil
import signal
import stat
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests",
                                "mount"))
import qftest  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_scale import AnonPeak  # noqa: E402
from read import read_all  # noqa: E402

SHAPES = ["--hidden", 8192, "--inter", 28672, "--heads", 64, "--kv-heads",
          8, "--vocab", 128256]


def size_arg(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * units[s[-1].upper()]) \
        if s[-1].upper() in units else int(s)


class Cgroup:
    """A memory cgroup of its own: v1's memory controller or v2's."""

    def __init__(self, name, limit):
        v1 = "/sys/fs/cgroup/memory"
        v2 = next((d for d in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
                   if os.path.exists(os.path.join(d, "cgroup.controllers"))
                   and "memory" in open(os.path.join(
                       d, "cgroup.controllers")).read().split()), None)
        if os.path.isdir(v1) and os.path.exists(
                os.path.join(v1, "memory.limit_in_bytes")):
            self.v, self.path = 1, os.path.join(v1, name)
        elif v2:
            self.v, self.path = 2, os.path.join(v2, name)
        else:
            raise OSError("no memory cgroup controller here")
        os.makedirs(self.path, exist_ok=True)
        self.write("memory.limit_in_bytes" if self.v == 1 else
                   "memory.max", str(limit))
        if self.v == 1 and os.path.exists(os.path.join(
                self.path, "memory.memsw.limit_in_bytes")):
            self.write("memory.memsw.limit_in_bytes", str(limit))

    def write(self, f, v):
        with open(os.path.join(self.path, f), "w") as fh:
            fh.write(v)

    def read(self, f):
        with open(os.path.join(self.path, f)) as fh:
            return fh.read()

    def reset_peak(self):
        if self.v == 1:
            self.write("memory.max_usage_in_bytes", "0")
            self.write("memory.failcnt", "0")

    def figures(self):
        """(peak charge in bytes, charges that failed (v1's failcnt, v2's
        max events: reclaim at the limit), OOM kills)"""
        if self.v == 1:
            oom = dict(line.split() for line in
                       self.read("memory.oom_control").splitlines())
            return (int(self.read("memory.max_usage_in_bytes")),
                    int(self.read("memory.failcnt")),
                    int(oom.get("oom_kill", 0)))
        ev = dict(line.split() for line in
                  self.read("memory.events").splitlines())
        peak = int(self.read("memory.peak")) if os.path.exists(
            os.path.join(self.path, "memory.peak")) else -1
        return peak, int(ev.get("max", 0)), int(ev.get("oom_kill", 0))

    def remove(self):
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantfs", default=os.path.join(
        os.path.dirname(__file__), "..", "build", "mounts", "quantfs"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--limit", default="2G")
    ap.add_argument("--variants", default="rtn_w4_g128")
    ap.add_argument("--calib-n", type=int, default=2)
    ap.add_argument("--calib-len", type=int, default=64)
    ap.add_argument("--keep", help="reuse/keep the model here")
    a = ap.parse_args()
    quantfs = os.path.abspath(a.quantfs)
    limit = size_arg(a.limit)
    try:
        cg = Cgroup("quantfs-check-%d" % os.getpid(), limit)
    except OSError as e:
        print("cgroup_check: cannot make a memory cgroup here (%s); run "
              "as root on a machine with the memory controller" % e,
              file=sys.stderr)
        sys.exit(2)
    work = a.keep or tempfile.mkdtemp(prefix="qfcg.")
    # a TERM (timeout, kill) still unmounts and removes the cgroup
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        src = os.path.join(work, "src")
        model = os.path.join(src, "llama3-70b-shapes")
        if not os.path.exists(os.path.join(model, "config.json")):
            print("generating %d layers of Llama-3-70B's shapes ..."
                  % a.layers, flush=True)
            os.makedirs(src, exist_ok=True)
            qftest.QUANTFS = quantfs
            qftest.mkmodel(model, "--layers", a.layers, *SHAPES)
        weights = sum(os.path.getsize(os.path.join(model, f))
                      for f in os.listdir(model) if f.endswith(".safetensors"))
        # the daemon joins the cgroup, then becomes quantfs (same pid)
        wrap = os.path.join(work, "quantfs-in-cgroup")
        with open(wrap, "w") as f:
            f.write("#!/bin/sh\necho $$ > %s/cgroup.procs && exec %s \"$@\"\n"
                    % (cg.path, quantfs))
        os.chmod(wrap, stat.S_IRWXU)
        qftest.QUANTFS = wrap
        cache = os.path.join(work, "cache")
        shutil.rmtree(cache, ignore_errors=True)
        print("source %.2f GB of bf16 weights; the daemon's memory cgroup "
              "(v%d) limit %.2f GB (%.2fx the source)" % (
                  weights / 1e9, cg.v, limit / 1e9, limit / weights),
              flush=True)
        opts = ["calib_n=%d" % a.calib_n, "calib_len=%d" % a.calib_len]
        failed = False
        with qftest.Mount(src, cache=cache, opts=opts, debug=False) as m:
            for v in a.variants.split(","):
                cg.reset_peak()
                peak = AnonPeak(m.proc.pid)
                peak.start()
                path = os.path.join(m.mnt, "llama3-70b-shapes", v,
                                    "model.safetensors")
                t0 = time.time()
                try:
                    n = read_all(path, bytearray(1 << 20))
                    ok = n == os.path.getsize(path)
                except OSError as e:
                    n, ok = 0, False
                    print("  %s: read failed: %s" % (v, e))
                dt = time.time() - t0
                peak.stop.set()
                peak.join()
                cpeak, atlimit, ooms = cg.figures()
                alive = m.alive()
                failed |= not (ok and alive and ooms == 0)
                print("  %s: %.1f MB read whole: %s in %.1f s; cgroup peak "
                      "charge %.2f GB (limit %.2f), failed charges %d, "
                      "OOM kills %d; daemon alive: %s, its anonymous peak "
                      "%.2f GB" % (v, n / 1e6, "yes" if ok else "NO", dt,
                                   cpeak / 1e9, limit / 1e9, atlimit, ooms,
                                   "yes" if alive else "NO",
                                   peak.peak / 1e9), flush=True)
            print("daemon log tail:\n" + "".join(
                m.stderr().splitlines(True)[-4:]) if failed else "", end="")
        sys.exit(1 if failed else 0)
    finally:
        cg.remove()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
