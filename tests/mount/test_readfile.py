"""Read files (kernel passthrough's backing files of cached variants):
the first open after a daemon was stopped right after production
(SIGKILL, or a plain unmount) passes through, its read file written then
if it was missing; a read file modified, truncated or replaced behind the
daemon's back, between mounts or while mounted, is never served: the
bytes read through the mount are the cache values' (read back through an
io=direct mount of the same cache, where the daemon serves every read
from LMDB).
"""
import atexit
import errno
import hashlib
import json
import mmap
import os
import shutil
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(__file__))
# noqa: E402 below: the harness lives beside this file
from qftest import Mount, mkmodel, run_tests, sha, SkipTest  # noqa: E402

WORK = tempfile.mkdtemp(prefix="qfreadfile.")
atexit.register(shutil.rmtree, WORK, True)
SRC = os.path.join(WORK, "models")
mkmodel(os.path.join(SRC, "tiny"), "--layers", 2, "--seed", 7)
V = "tiny/rtn_w4_g64/model.safetensors"
G = "tiny/rtn_w4_g32_sym/model.gguf"


def io_info(path):
    return json.loads(os.getxattr(path, "user.quantfs.io"))


def need_passthrough(m):
    if "kernel passthrough" not in m.stderr():
        raise SkipTest("this kernel offers no FUSE passthrough")


def values_sha(cache, rel):
    """sha256 of rel as the daemon serves it from the cache's values."""
    with Mount(SRC, cache=cache, opts=["io=direct"]) as m:
        p = os.path.join(m.mnt, rel)
        got = sha(p)
        assert io_info(p)["daemon_reads"] > 0, io_info(p)
    return got


def read_files(cache):
    d = os.path.join(cache, "files")
    return sorted(os.path.join(d, f) for f in os.listdir(d)
                  if not f.startswith(".")) if os.path.isdir(d) else []


def first_open_passes_through(m, rel, want):
    """The mount's first open of rel passes through and reads want;
    mmap too; the daemon answers no read."""
    p = os.path.join(m.mnt, rel)
    with open(p, "rb") as f:
        info = io_info(p)
        assert info["open_passthrough"] == 1 and \
            info["open_daemon"] == 0, info
        data = f.read()
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ)
        assert mm[:] == data
        mm.close()
    assert hashlib.sha256(data).hexdigest() == want
    assert io_info(p)["daemon_reads"] == 0, io_info(p)


def test_stopped_right_after_production():
    """SIGKILL or a plain unmount right after the first (producing) read,
    read file written or not: the next mount's first open passes through
    (writing the read file first when it is missing), and so does the
    one after (it is kept)."""
    for stop in ("kill9", "umount", "kill9 and no read file"):
        cache = tempfile.mkdtemp(prefix="qfcache.", dir=WORK)
        m = Mount(SRC, cache=cache)
        with m:
            got = [sha(os.path.join(m.mnt, r)) for r in (V, G)]
            need_passthrough(m)
            if stop.startswith("kill9"):
                m.kill9()
        if stop.endswith("no read file"):
            for f in read_files(cache):
                os.unlink(f)
        want = [values_sha(cache, r) for r in (V, G)]
        assert got == want, stop
        for rnd in range(2):
            with Mount(SRC, cache=cache) as m:
                for r, w in zip((V, G), want):
                    first_open_passes_through(m, r, w)
                assert "produced" not in m.stderr(), m.stderr()
                assert "read file damaged" not in m.stderr(), m.stderr()
        assert len(read_files(cache)) == 2, (stop, read_files(cache))
        for f in read_files(cache):
            # read-only, with the cache's read bits (others' none
            # where the cache keeps them out)
            mode = os.stat(f).st_mode & 0o777
            assert mode & 0o222 == 0 and mode & 0o440 == 0o440, oct(mode)
            assert mode & 0o004 == os.stat(cache).st_mode & 0o004, \
                oct(mode)
        shutil.rmtree(cache)


def test_concurrent_first_opens_share_one_write():
    """Eight opens at once of a complete file without a read file: one
    writes it, the others wait and share its backing file; all read the
    values' bytes and the daemon answers none of their reads."""
    cache = tempfile.mkdtemp(prefix="qfcache.", dir=WORK)
    with Mount(SRC, cache=cache) as m:
        sha(os.path.join(m.mnt, V))
        need_passthrough(m)
    for f in read_files(cache):
        os.unlink(f)
    want = values_sha(cache, V)
    with Mount(SRC, cache=cache) as m:
        p = os.path.join(m.mnt, V)
        got, modes = [None] * 8, [None] * 8
        go = threading.Barrier(8)

        def one(i):
            go.wait()
            with open(p, "rb") as f:
                modes[i] = io_info(p)["open_passthrough"] > 0
                got[i] = hashlib.sha256(f.read()).hexdigest()
        th = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        [t.start() for t in th]
        [t.join() for t in th]
        assert got == [want] * 8, got
        assert all(modes), modes
        assert m.stderr().count("read file written") == 1, m.stderr()
        assert io_info(p)["daemon_reads"] == 0, io_info(p)
    shutil.rmtree(cache)


def flip(rf, keep_times=True):
    """One byte changed in place, its mtime put back."""
    st = os.stat(rf)
    with open(rf, "r+b") as f:
        f.seek(st.st_size // 2)
        x = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([x[0] ^ 0x40]))
    if keep_times:
        os.utime(rf, ns=(st.st_atime_ns, st.st_mtime_ns))


def truncate(rf):
    os.truncate(rf, os.path.getsize(rf) - 4096)


def replace(rf):
    """Another file of the same size and mtime renamed over it: the same
    bytes but one."""
    st = os.stat(rf)
    tmp = rf + ".new"
    shutil.copyfile(rf, tmp)
    flip(tmp, keep_times=False)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, rf)


def test_tampered_read_file_never_served():
    """Between mounts and while mounted: modified in place (mtime put
    back), truncated, replaced by a file of the same size and mtime.  The
    open finds it, logs it and writes it again before passing through;
    the bytes read are the values'.  Changed under an open passed
    through: new opens fail with EIO (never other bytes; replaced: the
    old inode, unlinked, also reads as changed), and after the close the
    file is written again."""
    cache = tempfile.mkdtemp(prefix="qfcache.", dir=WORK)
    with Mount(SRC, cache=cache) as m:
        sha(os.path.join(m.mnt, V))
        need_passthrough(m)
    want = values_sha(cache, V)
    with Mount(SRC, cache=cache) as m:
        first_open_passes_through(m, V, want)
    rf, = read_files(cache)
    for how in (flip, truncate, replace):
        how(rf)                      # between mounts
        with Mount(SRC, cache=cache) as m:
            first_open_passes_through(m, V, want)
            assert "read file damaged" in m.stderr(), (how, m.stderr())
            assert sha(rf) == want, how
            p = os.path.join(m.mnt, V)
            how(rf)                  # while mounted, no open
            with open(p, "rb") as f:
                assert io_info(p)["open_passthrough"] == 1
                assert hashlib.sha256(f.read()).hexdigest() == want, how
            assert m.stderr().count("read file damaged") == 2, how
            assert sha(rf) == want, how
            assert io_info(p)["daemon_reads"] == 0, (how, io_info(p))
            with open(p, "rb") as a:  # while an open passes through
                how(rf)
                try:                 # replaced: its old inode was
                    got = sha(p)     # unlinked, which sets its ctime
                except OSError as e:
                    assert e.errno == errno.EIO, e
                    got = None
                assert got in (None, want) and \
                    (got is None or how is replace), how
                a.read()
            assert sha(p) == want, how
    assert sha(rf) == want


run_tests(globals())
