"""Identity that holds across machines (issue 21, part 1).

A model's fingerprint, which names every variant in the cache, comes
from its bytes: config.json and each weight file's SHA-256 (the file
hashed once per machine, its hash kept in the cache under what
identifies it there: device, inode, size, mtime and ctime).  Two copies
of one model with other times, one a plain folder and one in a hub
cache's blob layout, each with its own cache ("two machines"), give the
same fingerprint, the same variant ids and the same bytes.  Hashing is
lazy (no `ls` hashes), done once per generation however many readers
ask at once, not again at the next mount, and again when a weight byte
is rewritten with the times put back.
"""
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import stread  # noqa: E402
from qftest import Mount, mkmodel, run_tests, sha, cache_ls, hub_repo, \
    rev  # noqa: E402

WORK = tempfile.mkdtemp(prefix="qfid.")
os.chmod(WORK, 0o755)
MADE = mkmodel(os.path.join(WORK, "made", "Tiny"), "--seed", 21)
RTN = "rtn_w4_g128"
HASHED = re.compile(r"fingerprint ([0-9a-f]{16}): hashed (\d+) bytes")
FROM_CACHE = "(file hashes from the cache)"


def settle():
    """A file changed in the last 0.1 s is hashed but its hash not kept
    (a write in the same clock tick could leave its times as they are:
    src_fp.c): wait that out where a test wants it kept."""
    time.sleep(0.2)


def set_times(top, t):
    """Every file below top (links followed) to atime = mtime = t."""
    for d, _, files in os.walk(top):
        for f in files:
            os.utime(os.path.join(d, f), (t, t))
    settle()


def plain_copy(name, t):
    src = os.path.join(WORK, name)
    shutil.copytree(MADE, os.path.join(src, "Tiny"))
    set_times(src, t)
    return src, "Tiny"


def hub_copy(name, t):
    src = os.path.join(WORK, name)
    hub_repo(src, "Org/Tiny", {rev(1): MADE}, main=rev(1))
    set_times(src, t)
    return src, "Org/Tiny"


def weights_bytes(d):
    return os.path.getsize(os.path.join(d, "model.safetensors"))


def fingerprint(m, model, variant=RTN):
    with open(os.path.join(m.mnt, model, variant, "quantization.json")) as f:
        return json.load(f)["source"]["fingerprint"]


def hashed(m):
    """(fingerprint prefix, bytes) of each 'hashed' line in m's log."""
    return [(g[0], int(g[1])) for g in HASHED.findall(m.stderr())]


def test_two_machines_one_identity():
    """A plain folder and a hub copy, other mtimes, other caches: one
    fingerprint, one variant id, the same bytes."""
    a_src, a_name = plain_copy("machine_a", 1_500_000_000)
    b_src, b_name = hub_copy("machine_b", 1_600_000_000)
    got = {}
    for src, name in ((a_src, a_name), (b_src, b_name)):
        with Mount(src) as m:
            # a lookup, a listing and a stat hash nothing
            os.listdir(m.mnt)
            assert RTN in os.listdir(os.path.join(m.mnt, name))
            os.stat(os.path.join(m.mnt, name, "original",
                                 "model.safetensors"))
            os.listdir(os.path.join(m.mnt, name, "original"))
            assert "fingerprint" not in m.stderr(), m.stderr()
            path = os.path.join(m.mnt, name, RTN, "model.safetensors")
            fp = fingerprint(m, name)
            got[src] = (fp, sha(path), m.cache)
            t, _ = stread.read_st(path)
            src_t, _ = stread.read_st(os.path.join(MADE,
                                                   "model.safetensors"))
            stread.check_rtn(t, src_t, "model.layers.0.self_attn."
                             "q_proj.weight", 4, 128, False)
            assert hashed(m) == [(fp[:16], weights_bytes(MADE))], \
                m.stderr()
    (fa, ha, ca), (fb, hb, cb) = got[a_src], got[b_src]
    assert fa == fb and ha == hb, got
    ids = [{e["id"] for e in cache_ls(c) if e["variant"] == RTN}
           for c in (ca, cb)]
    assert ids[0] == ids[1] and len(ids[0]) == 1, ids


def test_remount_hashes_nothing():
    """The same cache again: every file's hash from the cache; the
    model's cached variants are listed without hashing."""
    src, name = plain_copy("remount", 1_500_000_000)
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(src, cache=cache) as m:
        fp = fingerprint(m, name, "rtn_w3_g64")
        h = sha(os.path.join(m.mnt, name, "rtn_w3_g64",
                             "model.safetensors"))
        assert len(hashed(m)) == 1, m.stderr()
    with Mount(src, cache=cache) as m:
        ls = os.listdir(os.path.join(m.mnt, name))
        assert "rtn_w3_g64" in ls, ls       # cached, not a preset
        assert FROM_CACHE in m.stderr(), m.stderr()
        assert fingerprint(m, name, "rtn_w3_g64") == fp
        assert sha(os.path.join(m.mnt, name, "rtn_w3_g64",
                                "model.safetensors")) == h
        assert hashed(m) == [], m.stderr()


def test_concurrent_first_readers_hash_once():
    """Readers of three variants at once: one hash of the weights."""
    src, name = plain_copy("parallel", 1_500_000_000)
    with Mount(src) as m:
        out = {}

        def rd(v):
            out[v] = fingerprint(m, name, v)
        th = [threading.Thread(target=rd, args=(v,))
              for v in ("rtn_w4_g128", "rtn_w3_g64", "rtn_w8_g32",
                        "rtn_w4_g32_sym")]
        [t.start() for t in th]
        [t.join() for t in th]
        assert len(set(out.values())) == 1 and len(out) == 4, out
        assert len(hashed(m)) == 1, m.stderr()


def rewrite_byte_keep_times(path):
    """The last byte of path flipped in place, size and times put back
    (only the ctime tells)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([b[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = os.stat(path)
    assert (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    settle()


def test_rewrite_keeping_mtime():
    """A weight byte rewritten with size and mtime put back: a new
    fingerprint, while mounted and after a remount on the same cache."""
    src, name = plain_copy("rewrite", 1_500_000_000)
    w = os.path.join(src, name, "model.safetensors")
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(src, cache=cache) as m:
        fp0 = fingerprint(m, name)
        rewrite_byte_keep_times(w)
        fp1 = fingerprint(m, name)     # a new generation (ESTALE)
        assert fp1 != fp0
        assert len(hashed(m)) == 2, m.stderr()
        g1 = sha(os.path.join(m.mnt, name, "original",
                              "model.safetensors"))
        assert g1 == sha(w)
    with Mount(src, cache=cache) as m:
        assert fingerprint(m, name) == fp1
        assert hashed(m) == [], m.stderr()
    rewrite_byte_keep_times(w)          # back as it was: fp0 again
    with Mount(src, cache=cache) as m:
        assert fingerprint(m, name) == fp0
        assert len(hashed(m)) == 1, m.stderr()


def test_original_gguf_hashes_on_open():
    """original/model.gguf: listed and stat'ed without hashing; its
    first open fingerprints the model; two machines serve one file."""
    shas = []
    for src, name in (plain_copy("gguf_a", 1_500_000_000),
                      hub_copy("gguf_b", 1_600_000_000)):
        with Mount(src) as m:
            d = os.path.join(m.mnt, name, "original")
            assert "model.gguf" in os.listdir(d)
            assert os.stat(os.path.join(d, "model.gguf")).st_size > 0
            assert "fingerprint" not in m.stderr(), m.stderr()
            shas.append(sha(os.path.join(d, "model.gguf")))
            assert len(hashed(m)) == 1, m.stderr()
    assert shas[0] == shas[1]


if __name__ == "__main__":
    try:
        run_tests(globals())
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
