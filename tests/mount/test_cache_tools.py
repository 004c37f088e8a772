"""The shared cache as an operator sees it: checksums catch a damaged value
on disk (re-produced, never served), `quantfs cache ls/du/rm/gc`, eviction
under a reader, -o cache_max, -o max_jobs, `quantfs warm`, SIGTERM, a stale
mount point, and fstab-style mounts (mount.quantfs, mount -t fuse.quantfs).
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
# noqa: E402 below: the harness lives beside this file
from qftest import Mount, mkmodel, mounted, run_tests, QUANTFS, sha, \
    SkipTest, qf, cache_ls as ls  # noqa: E402

QUANTFS = os.path.realpath(os.environ.get("QUANTFS", QUANTFS))
WORK = tempfile.mkdtemp(prefix="qfcachetools.")
SRC = os.path.join(WORK, "models")
mkmodel(os.path.join(SRC, "tiny"), "--layers", 2, "--seed", 5)
SMALL = ["calib_n=8", "calib_len=64"]
V1 = "tiny/rtn_w4_g128/model.safetensors"
V2 = "tiny/rtn_w8_g64_sym/model.safetensors"


def produced(log):
    return re.findall(r"produced (\S+) in", log)






def quantized_bytes(path):
    """Bytes of the tensors a variant produces (all but passthrough)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    return sum(v["data_offsets"][1] - v["data_offsets"][0]
               for k, v in hdr.items()
               if k != "__metadata__" and re.search(
                   r"\.(qweight|qzeros|scales|g_idx)$", k))


def test_ls_du_rm_and_reproduce():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache) as m:
        a1 = sha(os.path.join(m.mnt, V1))
        a2 = sha(os.path.join(m.mnt, V2))
        want = {"rtn_w4_g128": quantized_bytes(os.path.join(m.mnt, V1)),
                "rtn_w8_g64_sym": quantized_bytes(os.path.join(m.mnt, V2))}
    e = {x["variant"]: x for x in ls(cache) if x["recorded"]}
    assert sorted(e) == sorted(want), e
    for v, b in want.items():
        assert e[v]["bytes"] == b, (v, e[v]["bytes"], b)
        assert e[v]["model"] == "tiny" and e[v]["calib"] == ""
        assert e[v]["source"] == os.path.join(SRC, "tiny")
        assert e[v]["accessed"] >= e[v]["created"] > 0
    text = qf("cache", "ls", "--cache", cache).stdout
    assert "tiny/rtn_w4_g128" in text and "LAST ACCESS" in text, text
    du = qf("cache", "du", "--cache", cache).stdout
    assert "variants:            2," in du, du
    out = qf("cache", "rm", "tiny/rtn_w4*", "--cache", cache).stdout
    assert "tiny/rtn_w4_g128" in out, out
    assert [x["variant"] for x in ls(cache) if x["recorded"]] == \
        ["rtn_w8_g64_sym"]
    assert qf("cache", "rm", "nothing/here", "--cache", cache,
              check=False).returncode == 1
    # by id prefix
    vid = [x["id"] for x in ls(cache) if x["recorded"]][0]
    qf("cache", "rm", vid[:10], "--cache", cache)
    assert [x for x in ls(cache) if x["recorded"]] == []
    with Mount(SRC, cache=cache) as m:
        assert sha(os.path.join(m.mnt, V1)) == a1
        assert sha(os.path.join(m.mnt, V2)) == a2
        assert len(produced(m.stderr())) == 2 * 14, m.stderr()


def test_damaged_value_is_reproduced_not_served():
    # io=direct: served from the values (a read file would be served
    # instead, and is checked on its own: test_mount.py)
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache, opts=["io=direct"]) as m:
        path = os.path.join(m.mnt, V1)
        want = sha(path)
        raw = open(path, "rb").read()
    name = "model.layers.1.mlp.down_proj.qweight"
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    b, e = hdr[name]["data_offsets"]
    needle = raw[8 + n + b:8 + n + b + 64]
    assert len(needle) == 64
    db = os.path.join(cache, "data.mdb")
    data = bytearray(open(db, "rb").read())
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0
    data[at + 10] ^= 0x40            # one bit, inside the value
    with open(db, "r+b") as f:
        f.seek(at + 10)
        f.write(bytes([data[at + 10]]))
    with Mount(SRC, cache=cache, opts=["io=direct"]) as m:
        assert sha(os.path.join(m.mnt, V1)) == want
        log = m.stderr()
        assert "damaged (checksum)" in log and name in log, log
        # only the damaged group is produced again
        assert produced(log) == ["model.layers.1.mlp.down_proj.weight"], log
    with Mount(SRC, cache=cache, opts=["io=direct"]) as m:
        assert sha(os.path.join(m.mnt, V1)) == want
        assert "damaged" not in m.stderr() and not produced(m.stderr())


def wait_read_files(m, paths):
    if "kernel passthrough" not in m.stderr():
        return
    t = time.time() + 60
    for p in paths:
        while not json.loads(os.getxattr(p, "user.quantfs.io"))[
                "read_file"]:
            assert time.time() < t, "no read file for " + p
            time.sleep(0.05)


def test_gc_skips_a_variant_being_read():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache) as m:
        pa, pb = os.path.join(m.mnt, V1), os.path.join(m.mnt, V2)
        want_a, want_b = sha(pa), sha(pb)
        size = os.path.getsize(pa)
        # with kernel passthrough each file's read file is written after
        # its last close, with the variant marked in use meanwhile
        wait_read_files(m, [pa, pb])
        with open(pa, "rb") as f:
            head = f.read(size // 2)
            r = qf("cache", "gc", "--max-size", "1", "--cache", cache,
                   check=False)
            assert "evicted 1 variant(s)" in r.stdout, r.stdout
            assert "1 in use skipped" in r.stdout, r.stdout
            assert r.returncode == 1      # still above the limit
            left = [x["variant"] for x in ls(cache) if x["recorded"]]
            assert left == ["rtn_w4_g128"], left
            rest = f.read()
        import hashlib
        assert hashlib.sha256(head + rest).hexdigest() == want_a
        # closed now: gc may take it; the mount produces it again
        qf("cache", "gc", "--max-size", "1", "--cache", cache)
        assert [x for x in ls(cache) if x["recorded"]] == []
        files = os.path.join(cache, "files")
        assert not os.path.isdir(files) or os.listdir(files) == [], \
            os.listdir(files)        # read files went with their variant
        n0 = len(produced(m.stderr()))
        assert sha(pa) == want_a and sha(pb) == want_b
        assert len(produced(m.stderr())) == n0 + 28, m.stderr()
        # recorded again, so ls and gc know them
        assert sorted(x["variant"] for x in ls(cache) if x["recorded"]) \
            == ["rtn_w4_g128", "rtn_w8_g64_sym"]


def test_cache_max_evicts_least_recently_used():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache) as m:
        sha(os.path.join(m.mnt, V1))
    one = [x["bytes"] for x in ls(cache) if x["recorded"]][0]
    with Mount(SRC, cache=cache, opts=["cache_max=%d" % (one + 1000)]) as m:
        time.sleep(1.1)                 # distinct access seconds
        sha(os.path.join(m.mnt, V2))
        left = [x["variant"] for x in ls(cache) if x["recorded"]]
        assert left == ["rtn_w8_g64_sym"], (left, m.stderr())
        assert "cache: evicted tiny/rtn_w4_g128" in m.stderr(), m.stderr()


def test_max_jobs_queues_the_second_job():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache, opts=SMALL + ["max_jobs=1"]) as m:
        paths = [os.path.join(m.mnt, "tiny", v, "model.safetensors")
                 for v in ("gptq_w4_g128", "gptq_w3_g128")]
        th = [threading.Thread(target=sha, args=(p,)) for p in paths]
        [t.start() for t in th]
        [t.join() for t in th]
        log = m.stderr()
    ev = [(mm.start(), mm.group(1), mm.group(2)) for mm in re.finditer(
        r"tiny/(gptq_w\d_g128): (layer 1/|done in)", log)]
    first = {}
    for pos, v, what in ev:
        first.setdefault((v, what), pos)
    v1, v2 = sorted(["gptq_w4_g128", "gptq_w3_g128"],
                    key=lambda v: first[(v, "layer 1/")])
    # the second job starts only after the first is done
    assert first[(v1, "done in")] < first[(v2, "layer 1/")], log


def test_warm_produces_with_progress():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache, opts=SMALL) as m:
        d = os.path.join(m.mnt, "tiny", "gptq_w4_g128")
        r = qf("warm", d)
        assert "100%" in r.stderr and "MB/s" in r.stderr, r.stderr
        assert "done in" in m.stderr()
        size = os.path.getsize(os.path.join(d, "model.safetensors"))
        assert size > 0
    with Mount(SRC, cache=cache, opts=SMALL) as m:
        sha(os.path.join(m.mnt, "tiny/gptq_w4_g128/model.safetensors"))
        assert "layer 1/" not in m.stderr(), m.stderr()
    r = qf("warm", os.path.join(WORK, "does-not-exist"), check=False)
    assert r.returncode == 1 and "No such file" in r.stderr, r.stderr


def test_sigterm_unmounts_and_job_resumes():
    d = os.path.join(WORK, "six")
    if not os.path.exists(d):
        mkmodel(os.path.join(d, "m"), "--layers", 6, "--hidden", 384,
                "--inter", 1024, "--heads", 6, "--kv-heads", 2, "--seed", 3)
    cache = tempfile.mkdtemp(prefix="qfcache.")
    opts = ["calib_n=16", "calib_len=128"]
    m = Mount(d, cache=cache, opts=opts)
    m.__enter__()
    reader = subprocess.Popen(["cat", os.path.join(
        m.mnt, "m/gptq_w4_g128/model.safetensors")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while "layer 1/6" not in m.stderr():
        assert time.time() < deadline and m.proc.poll() is None, m.stderr()
        time.sleep(0.05)
    os.kill(m.proc.pid, signal.SIGTERM)
    rc = m.proc.wait(timeout=60)
    reader.wait(timeout=30)
    log = m.stderr()
    assert rc == 0, log
    assert not mounted(m.mnt), log
    done = len(re.findall(r"layer \d/6 in", log))
    assert 1 <= done < 6, log
    m.proc = None
    m.logf.close()
    with Mount(d, cache=cache, opts=opts) as m2:
        sha(os.path.join(m2.mnt, "m/gptq_w4_g128/model.safetensors"))
        assert "resuming at layer %d/6" % (done + 1) in m2.stderr(), \
            m2.stderr()


def test_stale_mountpoint_is_detached():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    m = Mount(SRC, cache=cache)
    m.__enter__()
    os.kill(m.proc.pid, signal.SIGKILL)     # leaves the mount behind
    m.proc.wait()
    m.logf.close()
    try:        # (stat may answer from cached attributes)
        os.getxattr(m.mnt, "user.quantfs.status")
        raise AssertionError("expected ENOTCONN")
    except OSError as e:
        assert e.errno == 107, e
    with Mount(SRC, mnt=m.mnt, cache=cache) as m2:
        # the stale entry is in mountinfo already: wait for the new one
        deadline = time.time() + 20
        while "mounted 1 model" not in m2.stderr():
            assert time.time() < deadline and m2.proc.poll() is None, \
                m2.stderr()
            time.sleep(0.05)
        assert "stale mount" in m2.stderr(), m2.stderr()
        assert os.listdir(os.path.join(m2.mnt, "tiny"))
        # a live mount point is refused
        r = qf("mount", SRC, m2.mnt, check=False)
        assert r.returncode == 1 and "already a quantfs mount" in r.stderr


def wait_mounted(mnt):
    deadline = time.time() + 20
    while not mounted(mnt):
        assert time.time() < deadline
        time.sleep(0.05)


def test_fstab_style_mounts():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache) as m:
        want = sha(os.path.join(m.mnt, V1))
    bindir = tempfile.mkdtemp(prefix="qfbin.")
    helper = os.path.join(bindir, "mount.quantfs")
    os.symlink(QUANTFS, helper)
    mnt = tempfile.mkdtemp(prefix="qffstab.")
    # as mount(8) runs a helper: mount.quantfs SPEC DIR -o OPTIONS
    r = subprocess.run([helper, SRC, mnt, "-o",
                        "ro,noauto,nofail,_netdev,x-systemd.automount,"
                        "allow_other,cache=" + cache],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    try:
        wait_mounted(mnt)
        assert sha(os.path.join(mnt, V1)) == want
        st = os.stat(os.path.join(mnt, V1))
        assert st.st_mode & 0o444 == 0o444
        opts = [ln for ln in open("/proc/self/mountinfo")
                if ln.split()[4] == os.path.realpath(mnt)][0]
        assert "allow_other" in opts and "default_permissions" in opts, opts
        assert "fuse.quantfs" in opts, opts
    finally:
        subprocess.run([QUANTFS, "umount", mnt])
    # a fake mount (-f) does nothing
    assert subprocess.run([helper, SRC, mnt, "-f", "-o", "ro"]).returncode \
        == 0 and not mounted(mnt)
    # mount(8) -> mount.fuse3 -> quantfs SRC MNT -o ...: the type
    # fuse.quantfs finds quantfs on mount.fuse3's own PATH (installed);
    # the "PROGRAM#SOURCE" spelling names the program, as here
    if not os.path.exists("/sbin/mount.fuse3"):
        raise SkipTest("mount.fuse3 (package fuse3) is absent")
    r = subprocess.run(["mount", "-t", "fuse", QUANTFS + "#" + SRC, mnt,
                        "-o", "ro,cache=" + cache], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    try:
        wait_mounted(mnt)
        assert sha(os.path.join(mnt, V1)) == want
    finally:
        subprocess.run(["umount", mnt])


run_tests(globals())
