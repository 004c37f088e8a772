"""The first read of an RTN variant (issue #23): groups produced ahead of
a sequential reader by the variant's worker (fs/ahead.c) and made in
memory while the source is fingerprinted (fs/stash.c) are the bytes a
reader gets when it asks for each tensor alone, in reverse order, on a
cache that already knows the fingerprint (neither path taken); a header
read alone produces nothing; a sequential read produces what follows it,
within the window; an unmount while the worker produces leaves a cache
the next mount serves the same bytes from.
"""
import atexit
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
# noqa: E402 below: the harness lives beside this file
import qftest  # noqa: E402
from qftest import Mount, mkmodel, run_tests  # noqa: E402

WORK = tempfile.mkdtemp(prefix="qffirstread.")
atexit.register(shutil.rmtree, WORK, True)
SRC = os.path.join(WORK, "models")
# 6 layers at hidden 1024: 150 MB of bf16 linears, more than the 96 MB
# window past a read
mkmodel(os.path.join(SRC, "m"), "--hidden", 1024, "--inter", 2816,
        "--layers", 6, "--heads", 8, "--kv-heads", 4, "--vocab", 512)
V = "m/rtn_w4_g128/model.safetensors"
CHUNK = 1 << 20
WINDOW = 96 << 20                   # fs/ahead.c AHEAD_SRC


def produced(log):
    return re.findall(r"produced (\S+) in", log)


def header(path):
    """The header, read alone (exact preads: no buffered read past it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        n = struct.unpack("<Q", os.pread(fd, 8, 0))[0]
        return n, json.loads(os.pread(fd, n, 8))
    finally:
        os.close(fd)


def sequential_sha(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                return h.hexdigest()
            h.update(b)


def reverse_sha(path):
    """Each tensor read alone with pread, last first (never where the
    last read ended), then the whole file hashed in order."""
    n, hdr = header(path)
    size = os.stat(path).st_size
    buf = bytearray(size)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        buf[:8 + n] = os.pread(fd, 8 + n, 0)
        spans = sorted((v["data_offsets"] for k, v in hdr.items()
                        if k != "__metadata__"), reverse=True)
        for b, e in spans:
            buf[8 + n + b:8 + n + e] = os.pread(fd, e - b, 8 + n + b)
    finally:
        os.close(fd)
    return hashlib.sha256(buf).hexdigest()


def reference_sha():
    """The bytes with neither the stash nor the worker: a cache that knows
    the fingerprint (a mount that looked the variant up and read
    nothing), tensors read alone in reverse order."""
    cache = os.path.join(WORK, "ref-cache")
    with Mount(SRC, cache=cache) as m:
        os.stat(os.path.join(m.mnt, V))
    with Mount(SRC, cache=cache) as m:
        got = reverse_sha(os.path.join(m.mnt, V))
        log = m.stderr()
        assert "fingerprint" in log and "hashed" not in log, log
        assert "made while the source was hashed" not in log, log
    return got


REF = []


def ref():
    if not REF:
        REF.append(reference_sha())
    return REF[0]


def test_sequential_first_read_same_bytes():
    cache = os.path.join(WORK, "seq-cache")
    with Mount(SRC, cache=cache) as m:
        p = os.path.join(m.mnt, V)
        got = sequential_sha(p)
        log = m.stderr()
        made = re.findall(r"(\d+) of \d+ group\(s\) \([\d.]+ MB\) made "
                          r"while the source was hashed", log)
        print("  stash: %s group(s) made while hashing" % (made or "no"))
        # each group once, whoever made it
        names = produced(log)
        assert len(names) == len(set(names)), names
    assert got == ref()
    with Mount(SRC, cache=cache) as m:     # from the cache (or read file)
        assert sequential_sha(os.path.join(m.mnt, V)) == ref()


def wait_for(cond, what, limit=120):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < limit, what
        time.sleep(0.05)


def test_header_alone_then_ahead_within_window():
    cache = os.path.join(WORK, "ahead-cache")
    with Mount(SRC, cache=cache) as m:
        p = os.path.join(m.mnt, V)
        n, hdr = header(p)             # two reads: 8 bytes, then the rest
        time.sleep(0.5)                 # a worker would have begun
        assert produced(m.stderr()) == [], produced(m.stderr())
        # a sequential reader: the header and the first MiB past it, in
        # one read, the file kept open
        # the read's own groups: the linears of the tensors it touches
        own = set(k.rsplit(".", 1)[0] + ".weight" for k, v in hdr.items()
                  if k != "__metadata__" and v["data_offsets"][0] < CHUNK)
        fd = os.open(p, os.O_RDONLY)
        try:
            os.pread(fd, 8 + n + CHUNK, 0)
            # the worker goes on past the read
            wait_for(lambda: set(produced(m.stderr())) - own,
                     "nothing produced ahead of the read: " + m.stderr())
            time.sleep(0.5)
            names = produced(m.stderr())
        finally:
            os.close(fd)
    assert len(names) == len(set(names)), names
    # within the window: the source bytes of what was produced beyond
    # the read's own groups stay under 96 MB plus one group
    shdr = header(os.path.join(SRC, "m", "model.safetensors"))[1]
    ahead = [x for x in names if x not in own]
    nbytes = sum(shdr[x]["data_offsets"][1] - shdr[x]["data_offsets"][0]
                 for x in ahead)
    biggest = max(v["data_offsets"][1] - v["data_offsets"][0]
                  for k, v in shdr.items() if k != "__metadata__")
    assert 0 < nbytes < WINDOW + biggest, (nbytes, ahead)
    # not the whole variant: a window, not the file
    total = len([k for k in hdr if k.endswith(".qweight")])
    assert len(names) < total, (len(names), total)


def test_unmount_while_producing_ahead():
    cache = os.path.join(WORK, "stop-cache")
    with Mount(SRC, cache=cache) as m:
        p = os.path.join(m.mnt, V)
        n, _ = header(p)
        with open(p, "rb", buffering=0) as f:
            f.read(8 + n + CHUNK)
        # unmounted at once: the worker may be mid-group (exit status 0
        # checked by Mount)
    with Mount(SRC, cache=cache) as m:
        assert reverse_sha(os.path.join(m.mnt, V)) == ref()
    out = subprocess.run([qftest.QUANTFS, "cache", "ls", "--json",
                          "--cache", cache], check=True,
                         capture_output=True, text=True).stdout
    assert any(e["variant"] == "rtn_w4_g128" for e in json.loads(out)), out


if __name__ == "__main__":
    run_tests(globals())
