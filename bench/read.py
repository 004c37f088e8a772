#!/usr/bin/python3
"""Read-path benchmark: a cached variant through the mount vs a plain copy.

Prints, for one variant file of >= 200 MB, each as a ratio to the same
operation on a plain copy of the file measured in the same run:
  first read after a fresh mount with 1 and 4 readers (each the best of
  7 fresh mounts), re-read with 1 and 4 readers, 2/8 concurrent readers,
  mmap(MAP_SHARED) + touch every page on a fresh mount and after reads;
and the daemon's CPU seconds per
GiB served (a fresh mount verifies each value's checksum once);
latency of the first byte and of the first tensor's first MiB, cold
(fresh mount) and warm (same mount, again); the first open of a mount
that finds no read file (a daemon stopped before writing it), which
writes it; the disk the read file takes beside the values.  Both sides are hot in the page cache (the LMDB map and the
plain copy), so the ratio is the filesystem's own cost.

With kernel passthrough (the default where Linux 6.9+ offers it and the
daemon runs as root) the variant's read file is written after production
and the mounts after the first pass reads and mmap through to it; with
--opts io=direct or io=cache the daemon serves every read.

usage: bench/read.py [--quantfs PATH] [--variant NAME] [--keep DIR]
                     [--opts io=direct]
"""
import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests",
                                "mount"))
import qftest  # noqa: E402

CHUNK = 1 << 20
FRESH = 7                       # fresh mounts per first-read figure


def read_all(path, buf):
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                return n
            n += k


def t_read(path):
    return t_concurrent(path, 1)


CPU = {}                        # path: bytes per CPU second of the last


def t_concurrent(path, k=4):
    """Bytes per second of k readers of path together; their bytes per
    second of their own CPU time into CPU[path] (what the read costs,
    whatever else the machine runs)."""
    bufs = [bytearray(CHUNK) for _ in range(k)]
    got = [0] * k
    cpu = [0.0] * k

    def run(i):
        c0 = time.thread_time()
        got[i] = read_all(path, bufs[i])
        cpu[i] = time.thread_time() - c0
    th = [threading.Thread(target=run, args=(i,)) for i in range(k)]
    t0 = time.perf_counter()
    [x.start() for x in th]
    [x.join() for x in th]
    CPU[path] = sum(got) / max(sum(cpu), 1e-9)
    return sum(got) / (time.perf_counter() - t0)


def t_first(path):
    """Seconds to open and read the first byte, then to read 1 MiB of
    the first tensor after the header."""
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        head = f.read(8)
        t1 = time.perf_counter()
        n = int.from_bytes(head, "little")
        f.seek(8 + n)
        f.read(CHUNK)
    return t1 - t0, time.perf_counter() - t0


def t_mmap(path):
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        t0 = time.perf_counter()
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ)
        s = 0
        for off in range(0, size, 4096):
            s += mm[off]
        dt = time.perf_counter() - t0
        mm.close()
    return size / dt


def io_info(path):
    """How the mount serves path (user.quantfs.io)."""
    return json.loads(os.getxattr(path, "user.quantfs.io"))


def bench_model(work):
    """The generated bf16 Llama both read benches use: WORK/models and
    the model's directory in it (made once, kept with --keep)."""
    src = os.path.join(work, "models")
    model = os.path.join(src, "bench-llama")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        print("generating a 0.94 GB bf16 model ...", flush=True)
        qftest.mkmodel(model, "--hidden", 2048, "--inter", 5632,
                       "--layers", 10, "--heads", 16, "--kv-heads", 8,
                       "--vocab", 512)
    return src, model


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def copy(src, dst):
    """dst written as the mount writes a read file (8 MiB writes), so the
    two have the same page-cache folios."""
    buf = bytearray(8 << 20)
    with open(src, "rb", buffering=0) as f, open(dst, "wb") as g:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            g.write(memoryview(buf)[:k])


def recovery(src, cache, opts, rel, rf, size):
    """A daemon stopped before writing the read file: the next mount's
    first open writes it, then passes through.  And the disk cost."""
    os.unlink(rf)
    with qftest.Mount(src, cache=cache, opts=opts, debug=False) as m:
        path = os.path.join(m.mnt, rel)
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            t1 = time.perf_counter()
            mode = io_info(path)["open_passthrough"]
            read_all_fd(f, bytearray(CHUNK))
        t2 = time.perf_counter()
    print("read file missing at mount: first open %.2f s (writes it, "
          "%.0f MB/s), then the read %.3f s; passed through: %s"
          % (t1 - t0, size / 1e6 / (t1 - t0), t2 - t1, bool(mode)))
    ls = json.loads(subprocess.run(
        [qftest.QUANTFS, "cache", "ls", "--json", "--cache", cache],
        check=True, capture_output=True, text=True).stdout)
    for e in ls:
        if e.get("file_bytes"):
            print("disk: %s values %.1f MB, read files %.1f MB (%.2fx the "
                  "values), cache du/ls count both" % (
                      e["variant"], e["bytes"] / 1e6, e["file_bytes"] / 1e6,
                      e["file_bytes"] / e["bytes"]))


def read_all_fd(f, buf):
    n = 0
    while True:
        k = f.readinto(buf)
        if not k:
            return n
        n += k


def best(fn, path, reps=3):
    return max(fn(path) for _ in range(reps))


def pair(fn, path, plain, reps=7):
    """Best of reps of fn on path and on plain, taken in turns so that
    both see the same moments of a busy machine; with the best bytes per
    CPU second of each (reads only)."""
    got, base, cg, cb = [], [], [], []
    for _ in range(reps):
        CPU.clear()
        got.append(fn(path))
        cg.append(CPU.pop(path, None))
        base.append(fn(plain))
        cb.append(CPU.pop(plain, None))
    return max(got), max(base), cg[0] and max(cg), cb[0] and max(cb)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantfs", default=os.path.join(
        os.path.dirname(__file__), "..", "build", "mounts", "quantfs"))
    ap.add_argument("--variant", default="rtn_w4_g128")
    ap.add_argument("--keep", help="reuse/keep the model and cache here")
    ap.add_argument("--opts", default="", help="extra -o mount options")
    a = ap.parse_args()
    qftest.QUANTFS = os.path.abspath(a.quantfs)
    work = a.keep or tempfile.mkdtemp(prefix="qfbench.")
    src, model = bench_model(work)
    cache = os.path.join(work, "cache")
    opts = [o for o in a.opts.split(",") if o]
    rel = os.path.join("bench-llama", a.variant, "model.safetensors")
    with qftest.Mount(src, cache=cache, opts=opts, debug=False) as m:
        t0 = time.perf_counter()
        size = len(open(os.path.join(m.mnt, rel), "rb").read())
        dt = time.perf_counter() - t0
        # with kernel passthrough: its read file, written once all of it
        # is cached (in the background, after the last close)
        t1 = time.perf_counter()
        while ("kernel passthrough" in m.stderr() and
               not io_info(os.path.join(m.mnt, rel))["read_file"]):
            time.sleep(0.01)
        dt_rf = time.perf_counter() - t1
        log = m.stderr()
    prod = [l for l in log.splitlines()
            if "produced" in l or "read file written" in l]
    print("variant %s: %.1f MB; production (or cache fill) %.2f s, then "
          "%.2f s until its read file was there" % (a.variant, size / 1e6,
                                                    dt, dt_rf))
    for line in prod:
        print("  " + line.split("quantfs: ", 1)[-1])
    plain = os.path.join(work, "plain.safetensors")
    with qftest.Mount(src, cache=cache, opts=opts, debug=False) as m:
        copy(os.path.join(m.mnt, rel), plain)
    read_all(plain, bytearray(CHUNK))           # hot in page cache
    rows = []
    with qftest.Mount(src, cache=cache, opts=opts, debug=False) as m:
        # a loader's first contact: mmap on a fresh mount
        rows.append(("mmap + touch every page, fresh mount",
                     t_mmap(os.path.join(m.mnt, rel)), t_mmap(plain),
                     None, None))
    with qftest.Mount(src, cache=cache, opts=opts, debug=False) as m:
        path = os.path.join(m.mnt, rel)
        cold = t_first(path)
        warm = t_first(path)
        plain_first = min(t_first(plain) for _ in range(3))
    lat = [("first byte", cold[0], warm[0], plain_first[0]),
           ("first MiB of the first tensor", cold[1], warm[1],
            plain_first[1])]
    # the first read of a fresh mount, 1 and 4 readers: each try its own
    # mount, best of FRESH, against the best plain read between them
    for k in (1, 4):
        got, base, cg, cb = [], [], [], []
        for _ in range(FRESH):
            with qftest.Mount(src, cache=cache, opts=opts,
                              debug=False) as m:
                p = os.path.join(m.mnt, rel)
                got.append(t_concurrent(p, k))
                cg.append(CPU.pop(p))
            base.append(t_concurrent(plain, k))
            cb.append(CPU.pop(plain))
        rows.append(("read, fresh mount, %d reader(s)" % k, max(got),
                     max(base), max(cg), max(cb)))
    with qftest.Mount(src, cache=cache, opts=opts, debug=False) as m:
        path = os.path.join(m.mnt, rel)
        pid = m.proc.pid
        c0 = cpu_s(pid)
        t_read(path)
        c1 = cpu_s(pid)
        rows.append(("re-read, 1 reader",) + pair(t_read, path, plain))
        rows.append(("re-read, 4 readers (aggregate)",) +
                    pair(t_concurrent, path, plain))
        for k in (2, 8):
            rows.append(("%d concurrent reader(s) (aggregate)" % k,) +
                        pair(lambda x: t_concurrent(x, k), path, plain, 1))
        c2 = cpu_s(pid)
        t_concurrent(path)
        c3 = cpu_s(pid)
        rows.append(("mmap + touch every page, after reads",) +
                    pair(t_mmap, path, plain, 3))
        with open(path, "rb"):
            info = io_info(path)
        gib = size / 2**30
        cpu_first = (c1 - c0) / gib
        cpu_conc = (c3 - c2) / (4 * gib)
    print("served by: %s; daemon read requests in the last mount: %d" % (
        info["mode"] if not info["open_passthrough"] else
        "kernel passthrough to " + info["read_file"], info["daemon_reads"]))
    print("%-38s %10s %10s %7s %9s" % ("operation", "mount MB/s",
                                       "plain MB/s", "ratio", "CPU ratio"))
    for name, x, y, cx, cy in rows:
        print("%-38s %10.0f %10.0f %6.2fx %8s" % (
            name, x / 1e6, y / 1e6, x / y,
            "%.2fx" % (cx / cy) if cx and cy else "-"))
    print("(best of %d fresh mounts / %d tries in turns; CPU ratio: bytes "
          "per CPU second of the readers' threads, which a busy machine "
          "does not change)" % (FRESH, 7))
    print("%-38s %10s %10s %10s" % ("latency", "cold ms", "warm ms",
                                    "plain ms"))
    for name, c, w, p in lat:
        print("%-38s %10.2f %10.2f %10.2f" % (name, c * 1e3, w * 1e3,
                                              p * 1e3))
    print("daemon CPU per GiB served: read on a fresh mount %.2f s, "
          "concurrent %.2f s"
          % (cpu_first, cpu_conc))
    if info["read_file"]:
        recovery(src, cache, opts, rel, info["read_file"], size)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
