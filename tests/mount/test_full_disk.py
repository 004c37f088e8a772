"""A cache on a small filesystem (tmpfs with size=, else a loop-mounted
ext4 image): a full disk gives readers ENOSPC with one log line naming
the cache and its free space, `quantfs cache rm/gc` free space even then,
the variant reads back right once there is room; the default bound
(cache_max=auto) evicts before writing; stray temporary read files are
counted and removed at mount; -o max_productions bounds the productions
running at once; a truncated read file never gives a silent short read
to a new open; `--max-size 16777216T` is refused, not wrapped to 0.
"""
import errno
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
# noqa: E402 below: the harness lives beside this file
from qftest import Mount, mkmodel, run_tests, QUANTFS, sha, \
    SkipTest, qf, cache_ls as ls  # noqa: E402

QUANTFS = os.path.realpath(os.environ.get("QUANTFS", QUANTFS))
WORK = tempfile.mkdtemp(prefix="qffull.")
SRC = os.path.join(WORK, "models")
mkmodel(os.path.join(SRC, "tiny"), "--layers", 2, "--seed", 5)
V1 = "tiny/rtn_w4_g128/model.safetensors"
V2 = "tiny/rtn_w8_gc/model.safetensors"
V3 = "tiny/rtn_w3_g128/model.safetensors"
REF = {}






def ref(rel):
    """sha256 of a variant file read through a mount on an ample cache."""
    if not REF:
        with Mount(SRC, cache=tempfile.mkdtemp(prefix="qfcache.")) as m:
            for r in (V1, V2, V3):
                REF[r] = sha(os.path.join(m.mnt, r))
    return REF[rel]


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class SmallFS:
    """A filesystem of size_mb MiB that supports user xattrs (read files
    carry their checksum in one): tmpfs, else ext4 on a loop device."""

    def __init__(self, size_mb):
        self.dir = tempfile.mkdtemp(prefix="qfsmall.")
        self.image = None
        why = []
        r = subprocess.run(["mount", "-t", "tmpfs", "-o",
                            "size=%dm" % size_mb, "tmpfs", self.dir],
                           capture_output=True, text=True)
        if r.returncode == 0 and self.xattrs():
            return
        why.append("tmpfs: " + (r.stderr.strip() or "no user xattrs"))
        if r.returncode == 0:
            subprocess.run(["umount", self.dir])
        self.image = os.path.join(WORK, "small%d.img" % size_mb)
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        r = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0",
                            self.image], capture_output=True, text=True)
        if r.returncode == 0:
            r = subprocess.run(["mount", "-o", "loop", self.image,
                                self.dir], capture_output=True, text=True)
        if r.returncode == 0 and self.xattrs():
            return
        why.append("ext4 image: " + r.stderr.strip())
        raise SkipTest("no small filesystem can be mounted here (%s)"
                       % "; ".join(why))

    def xattrs(self):
        p = os.path.join(self.dir, ".probe")
        try:
            open(p, "w").close()
            os.setxattr(p, "user.quantfs.probe", b"1")
            return True
        except OSError:
            return False
        finally:
            if os.path.exists(p):
                os.unlink(p)

    def fill(self, leave=0):
        """Take all but about `leave` bytes of the free space."""
        p = os.path.join(self.dir, "fill%d" % len(os.listdir(self.dir)))
        n = free_bytes(self.dir) - leave
        with open(p, "wb") as f:
            while n > 0:
                k = min(n, 1 << 20)
                try:
                    f.write(b"\0" * k)
                    f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
                n -= k
        return p

    def unfill(self):
        for f in os.listdir(self.dir):
            if f.startswith("fill"):
                os.unlink(os.path.join(self.dir, f))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        subprocess.run(["umount", "-l", self.dir])
        return False


def read_errno(path):
    """0 and the bytes' sha256 when path reads whole, else the errno."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return e.errno, None
    return 0, hashlib.sha256(data).hexdigest()


def test_size_overflow_is_refused():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache, opts=["io=direct"]) as m:
        sha(os.path.join(m.mnt, V1))
    for size in ("16777216T", "18446744073709551616", "99999999999G"):
        r = qf("cache", "gc", "--max-size", size, "--cache", cache,
               check=False)
        assert r.returncode == 2 and "too large" in r.stderr, (size, r)
    r = qf("cache", "gc", "--max-size", "-1", "--cache", cache, check=False)
    assert r.returncode == 2 and "not a size" in r.stderr, r.stderr
    assert [x["variant"] for x in ls(cache) if x["recorded"]] == \
        ["rtn_w4_g128"]                # nothing evicted
    # the largest size that fits is a size, and keeps everything
    r = qf("cache", "gc", "--max-size", "16777215T", "--cache", cache)
    assert "evicted 0 variant(s)" in r.stdout, r.stdout
    mnt = tempfile.mkdtemp(prefix="qfmnt.")
    r = subprocess.run([QUANTFS, "mount", SRC, mnt, "-f", "-o",
                        "cache=%s,cache_max=16777216T" % cache],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "too large" in r.stderr, r


def test_full_disk_is_enospc_and_recovers():
    want = ref(V1)
    with SmallFS(16) as small:
        cache = os.path.join(small.dir, "cache")
        with Mount(SRC, cache=cache, opts=["cache_max=none"]) as m:
            small.fill(leave=64 << 10)
            p = os.path.join(m.mnt, V1)
            # the disk's own ENOSPC, every time, never EIO
            for _ in range(3):
                assert read_errno(p)[0] == errno.ENOSPC, m.stderr()
            log = m.stderr()
            lines = [ln for ln in log.splitlines()
                     if "no space left on its filesystem" in ln]
            assert len(lines) == 1, log    # one line, not one per read
            assert cache in lines[0] and "MB free of" in lines[0], lines
            assert "Input/output error" not in log, log
            small.unfill()
            assert read_errno(p) == (0, want), m.stderr()
    # the same with the default bound: the tenth it keeps free is gone
    with SmallFS(16) as small:
        cache = os.path.join(small.dir, "cache")
        with Mount(SRC, cache=cache) as m:
            small.fill(leave=256 << 10)
            p = os.path.join(m.mnt, V1)
            assert read_errno(p)[0] == errno.ENOSPC, m.stderr()
            assert "which -o cache_max=auto keeps free" in m.stderr()
            assert cache in m.stderr()
            small.unfill()
            assert read_errno(p) == (0, want), m.stderr()


def wait_read_files(m, cache, n):
    if "kernel passthrough" not in m.stderr():
        return False
    files = os.path.join(cache, "files")
    t = time.time() + 60
    while not (os.path.isdir(files) and len([
            f for f in os.listdir(files) if not f.startswith(".")]) >= n):
        assert time.time() < t, m.stderr()
        time.sleep(0.05)
    return True


def test_rm_and_gc_free_a_full_disk():
    want = {r: ref(r) for r in (V1, V2, V3)}
    # with read files (kernel passthrough): unlinking them frees the
    # disk at once, before the values are deleted
    with SmallFS(32) as small:
        cache = os.path.join(small.dir, "cache")
        with Mount(SRC, cache=cache, opts=["cache_max=none"]) as m:
            for r in (V1, V2, V3):
                assert sha(os.path.join(m.mnt, r)) == want[r]
            have_files = wait_read_files(m, cache, 3)
        small.fill()
        before = free_bytes(small.dir)
        r = qf("cache", "rm", "tiny/rtn_w4_g128", "--cache", cache)
        assert "removed" in r.stdout, r.stdout
        if have_files:
            assert free_bytes(small.dir) > before + (1 << 20), \
                (before, free_bytes(small.dir))
        r = qf("cache", "gc", "--max-size", "1", "--cache", cache)
        assert "evicted 2 variant(s)" in r.stdout, r.stdout
        assert [x for x in ls(cache) if x["recorded"]] == []
        with Mount(SRC, cache=cache, opts=["cache_max=none"]) as m:
            small.unfill()
            for r in (V1, V2):
                assert sha(os.path.join(m.mnt, r)) == want[r]
    # values only (io=direct): the deletion needs pages LMDB must write,
    # from its free list or the cache's reserve, and the freed pages take
    # the variant again while the disk stays full
    with SmallFS(16) as small:
        cache = os.path.join(small.dir, "cache")
        with Mount(SRC, cache=cache, opts=["io=direct", "cache_max=none"]) \
                as m:
            for r in (V1, V2):
                assert sha(os.path.join(m.mnt, r)) == want[r]
        assert os.path.getsize(os.path.join(cache, "reserve")) > 0
        v1 = [x["bytes"] for x in ls(cache) if x["variant"] == "rtn_w4_g128"]
        # a compacted data.mdb has no free page: the deletion must grow
        # the file, which only the reserve makes possible
        compact = os.path.join(small.dir, "compact")
        os.mkdir(compact)
        r = subprocess.run(["mdb_copy", "-c", cache, compact],
                           capture_output=True, text=True) \
            if os.path.exists("/usr/bin/mdb_copy") else None
        if r and r.returncode == 0:
            os.replace(os.path.join(compact, "data.mdb"),
                       os.path.join(cache, "data.mdb"))
        small.fill()
        r2 = qf("cache", "rm", "tiny/rtn_w8_gc", "--cache", cache)
        assert "removed" in r2.stdout, r2
        if r and r.returncode == 0:
            assert "reserve released" in r2.stderr, r2.stderr
        r = qf("cache", "gc", "--max-size", "1", "--cache", cache)
        assert "evicted 1 variant(s)" in r.stdout, r.stdout
        with Mount(SRC, cache=cache, opts=["io=direct", "cache_max=none"]) \
                as m:
            # too little disk for the values: they take freed pages
            assert free_bytes(small.dir) < v1[0], free_bytes(small.dir)
            assert sha(os.path.join(m.mnt, V1)) == want[V1]


def test_default_bound_evicts_before_writing():
    names = ["rtn_w8_gc", "rtn_w8_g32", "rtn_w8_g64", "rtn_w8_g128",
             "rtn_w8_g32_sym", "rtn_w8_g64_sym"]
    with SmallFS(16) as small:
        cache = os.path.join(small.dir, "cache")
        share = os.statvfs(small.dir).f_blocks * \
            os.statvfs(small.dir).f_frsize // 2
        with Mount(SRC, cache=cache, opts=["io=direct"]) as m:
            for i, v in enumerate(names):
                sha(os.path.join(m.mnt, "tiny", v, "model.safetensors"))
                time.sleep(1.05)           # distinct access seconds
                total = sum(x["bytes"] + x["file_bytes"] for x in ls(cache))
                # never above the bound by more than what was written
                # last (values of one group are checked before writing)
                assert total <= share, (v, total, share, m.stderr())
            log = m.stderr()
        assert "cache: evicted tiny/rtn_w8_gc" in log, log
        left = [x["variant"] for x in ls(cache) if x["recorded"]]
        assert "rtn_w8_gc" not in left and names[-1] in left, left


def test_stray_temporary_files_counted_then_removed():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache, opts=["io=direct"]) as m:
        sha(os.path.join(m.mnt, V1))
    vid = [x["id"] for x in ls(cache) if x["recorded"]][0]
    files = os.path.join(cache, "files")
    os.makedirs(files, exist_ok=True)
    # a writer killed with -9 leaves its temporary file unlocked, under
    # its dead pid; a live writer holds a lock on its own
    dead = subprocess.Popen(["true"])
    dead.wait()
    stray = os.path.join(files, ".%s.0123456789abcdef.safetensors.%d.tmp"
                         % (vid, dead.pid))
    live = os.path.join(files, ".%s.fedcba9876543210.safetensors.%d.tmp"
                        % (vid, os.getpid()))
    with open(stray, "wb") as f:
        f.write(b"x" * 300000)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         "f = open(sys.argv[1], 'wb'); f.write(b'y' * 5000); f.flush()\n"
         "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True)\n"
         "time.sleep(60)", live], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        du = qf("cache", "du", "--cache", cache).stdout
        assert "temporary files:     2, " in du and \
            "(1 left by killed writers" in du, du
        e = [x for x in ls(cache) if x["id"] == vid][0]
        assert e["tmp_bytes"] == 305000, e
        with Mount(SRC, cache=cache, opts=["io=direct"]) as m:
            assert "removed 1 temporary file(s) of killed writers" in \
                m.stderr(), m.stderr()
            assert not os.path.exists(stray)
            assert os.path.exists(live)     # its writer is alive
            assert sha(os.path.join(m.mnt, V1)) == ref(V1)
        # an old stray file whose pid number lives again is stray too
        os.utime(live, (time.time() - 3600, time.time() - 3600))
        holder.kill()
        holder.wait()
        du = qf("cache", "du", "--cache", cache).stdout
        assert "(1 left by killed writers" in du, du
        with Mount(SRC, cache=cache, opts=["io=direct"]) as m:
            assert not os.path.exists(live), m.stderr()
    finally:
        holder.kill()


def test_productions_are_bounded():
    d = os.path.join(WORK, "mid")
    if not os.path.exists(d):
        mkmodel(os.path.join(d, "m"), "--layers", 2, "--hidden", 512,
                "--inter", 1536, "--seed", 7)
    names = ["rtn_w4_g128", "rtn_w3_g128", "rtn_w8_gc", "rtn_w4_g64",
             "rtn_w8_g128", "rtn_w4_g32_sym"]
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(d, cache=cache, opts=["max_productions=1", "io=direct"]) \
            as m:
        paths = [os.path.join(m.mnt, "m", v, "model.safetensors")
                 for v in names]
        out = {}

        def rd(p):
            out[p] = sha(p)
        th = [threading.Thread(target=rd, args=(p,)) for p in paths]
        [t.start() for t in th]
        [t.join() for t in th]
        log = m.stderr()
    assert len(out) == len(paths)
    running = [int(n) for n in re.findall(r"productions: (\d+)/1 running",
                                          log)]
    assert running and max(running) == 1, log
    assert re.search(r"productions: 1/1 running, uid 0 waits", log), log
    # the same bytes as without a bound
    with Mount(d, cache=tempfile.mkdtemp(prefix="qfcache."),
               opts=["io=direct"]) as m:
        for v, p in zip(names, paths):
            assert sha(os.path.join(m.mnt, "m", v, "model.safetensors")) \
                == out[p], v


def io_info(path):
    return json.loads(os.getxattr(path, "user.quantfs.io"))


def test_truncated_read_file_never_reads_short():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    want = ref(V2)
    with Mount(SRC, cache=cache) as m:
        p = os.path.join(m.mnt, V2)
        assert sha(p) == want
        if not wait_read_files(m, cache, 1):
            raise SkipTest("this kernel offers no FUSE passthrough")
        size = os.path.getsize(p)
        rf = json.loads(os.getxattr(p, "user.quantfs.io"))["read_file"]
        whole = open(rf, "rb").read()
        assert hashlib.sha256(whole).hexdigest() == want
        # truncated under an open passed through: that open reads what
        # the kernel finds in the backing file (documented, quantfs sees
        # none of its reads) but never other bytes; a new open fails
        with open(p, "rb") as a:
            assert io_info(p)["open_passthrough"] == 1, io_info(p)
            time.sleep(0.3)            # the background check is done
            os.truncate(rf, size // 2)
            assert read_errno(p)[0] == errno.EIO, m.stderr()
            data = a.read()
            assert whole.startswith(data), len(data)
        assert "read file truncated under 1 passthrough open" in \
            m.stderr(), m.stderr()
        # closed: the next open is served from the values, whole
        assert read_errno(p) == (0, want), m.stderr()
        wait_read_files(m, cache, 1)
    # truncated between mounts: found at open, deleted, never passed on
    rf = [os.path.join(cache, "files", f) for f in
          os.listdir(os.path.join(cache, "files"))][0]
    os.truncate(rf, os.path.getsize(rf) - 4096)
    with Mount(SRC, cache=cache) as m:
        assert read_errno(os.path.join(m.mnt, V2)) == (0, want)
        assert "read file damaged" in m.stderr(), m.stderr()


run_tests(globals())
