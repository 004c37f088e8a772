"""Integration tests: a real quantfs FUSE mount of generated models.

Checks the namespace, sizes, laziness, the cache across processes, the
GPTQ checkpoint layout (unpacked by stread.py, independent of quantfs)
against a numpy reference quantization, and failure behaviour.
"""
import errno
import hashlib
import json
import mmap
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import stread  # noqa: E402
from qftest import Mount, mkmodel, mounted, run_tests, SkipTest, SHARED, \
    sha, sha_in_parallel, QUANTFS as QF  # noqa: E402
from stread import check_rtn  # noqa: E402

# run from other folders below: a path to it must not be relative
QF = os.path.abspath(QF) if os.sep in QF else QF
WORK = tempfile.mkdtemp(prefix="qftest.")
SRC = os.path.join(WORK, "models")
os.makedirs(SRC)
TINY = mkmodel(os.path.join(SRC, "tiny"))
# f32, kv width 2*16=32 and an MLP width (84) that 4-bit packing cannot hold
ODD = mkmodel(os.path.join(SRC, "odd"), "--hidden", 64, "--inter", 84,
              "--layers", 2, "--heads", 4, "--kv-heads", 2, "--dtype", "f32",
              "--tie", "--seed", 7)


def produced(log):
    return re.findall(r"produced (\S+) in", log)


def test_namespace():
    with Mount(SRC) as m:
        assert sorted(os.listdir(m.mnt)) == ["odd", "tiny"]
        ls = os.listdir(os.path.join(m.mnt, "tiny"))
        for want in ("original", "rtn_w4_g128", "rtn_w4_g128_sym",
                     "rtn_w8_gc", "rtn_w4_g128_fake", "gptq_w4_g128",
                     "gptq_w4_g128_act"):
            assert want in ls, ls
        v = os.path.join(m.mnt, "tiny", "rtn_w4_g128")
        names = sorted(os.listdir(v))
        assert names == ["config.json", "generation_config.json",
                         "model.safetensors", "quantization.json",
                         "tokenizer.json", "tokenizer_config.json"], names
        orig = sorted(os.listdir(os.path.join(m.mnt, "tiny", "original")))
        # the source's files, and its GGUF view (test_gguf_mount)
        assert orig == sorted(os.listdir(TINY) + ["model.gguf"]), orig
        # passed-through files are byte-identical
        for f in ("tokenizer.json", "model.safetensors", "config.json"):
            assert sha(os.path.join(m.mnt, "tiny", "original", f)) == \
                sha(os.path.join(TINY, f))
        assert sha(os.path.join(v, "tokenizer.json")) == \
            sha(os.path.join(TINY, "tokenizer.json"))
        # a valid unlisted name resolves
        assert os.path.isdir(os.path.join(m.mnt, "tiny", "rtn_w2_g64_sym"))


def test_invalid_names_enoent():
    with Mount(SRC) as m:
        for bad in ("rtn_w5_g128", "rtn_w4", "rtn_w4_g128_sym_sym",
                    "RTN_w4_g128", "rtn_w4_g128@x", "foo", "..x",
                    "kq4_k_m_rot"):   # not produced
            for _ in range(2):  # twice: no negative-entry surprises
                p = os.path.join(m.mnt, "tiny", bad)
                assert not os.path.exists(p), bad
                try:
                    os.stat(p)
                    raise AssertionError("stat succeeded: " + bad)
                except FileNotFoundError:
                    pass
        assert not os.path.exists(os.path.join(m.mnt, "nomodel"))
        assert not os.path.exists(
            os.path.join(m.mnt, "tiny", "rtn_w4_g128", "nofile"))
        assert m.alive()


def test_erofs():
    with Mount(SRC) as m:
        v = os.path.join(m.mnt, "tiny", "rtn_w4_g128")
        cases = [
            lambda: open(os.path.join(v, "config.json"), "r+b"),
            lambda: open(os.path.join(v, "new.txt"), "wb"),
            lambda: os.mkdir(os.path.join(v, "d")),
            lambda: os.unlink(os.path.join(v, "config.json")),
            lambda: os.rename(os.path.join(v, "config.json"),
                              os.path.join(v, "x.json")),
            lambda: os.chmod(os.path.join(v, "config.json"), 0o777),
            lambda: os.truncate(os.path.join(v, "model.safetensors"), 0),
        ]
        for i, c in enumerate(cases):
            try:
                c()
                raise AssertionError("write %d succeeded" % i)
            except OSError as e:
                assert e.errno == errno.EROFS, (i, e)


def test_stat_size_is_bytes_read_and_reads_repeat():
    with Mount(SRC) as m:
        for var in ("rtn_w4_g128", "rtn_w3_g128", "rtn_w8_gc",
                    "rtn_w4_g128_fake", "rtn_w2_g32"):
            for model in ("tiny", "odd"):
                p = os.path.join(m.mnt, model, var, "model.safetensors")
                size = os.stat(p).st_size
                a = open(p, "rb").read()
                assert len(a) == size, (model, var, len(a), size)
                assert hashlib.sha256(a).digest() == \
                    hashlib.sha256(open(p, "rb").read()).digest()
                for f in ("config.json", "quantization.json"):
                    q = os.path.join(m.mnt, model, var, f)
                    assert len(open(q, "rb").read()) == os.stat(q).st_size


def linears_in(hdr, n, lo, hi, pages):
    """Linears with an output tensor overlapping [lo, hi) (or its pages)."""
    if pages:
        lo, hi = lo // 4096 * 4096, -(-hi // 4096) * 4096
    got = set()
    for k, v in hdr.items():
        if k == "__metadata__" or not k.endswith((".qweight", ".qzeros",
                                                  ".scales", ".g_idx")):
            continue
        b, e = v["data_offsets"]
        if 8 + n + b < hi and 8 + n + e > lo:
            got.add(k.rsplit(".", 1)[0] + ".weight")
    return got


def check_produced(new, hdr, n, lo, hi, earlier=()):
    """Direct I/O reads exactly [lo, hi), page-cache mode whole pages:
    what a read produced lies in its pages, and covers the exact range
    together with what was produced before."""
    new = set(new)
    exact = linears_in(hdr, n, lo, hi, False)
    paged = linears_in(hdr, n, lo, hi, True)
    assert new <= paged and exact <= new | set(earlier), (new, exact, paged)


def read_range(path, off, length):
    """Read exactly the pages of [off, off + length): no readahead."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return os.pread(fd, length, off)
    finally:
        os.close(fd)


def test_stat_before_production_and_lazy_range():
    with Mount(SRC) as m:
        p = os.path.join(m.mnt, "tiny", "rtn_w4_g64", "model.safetensors")
        size = os.stat(p).st_size
        assert produced(m.stderr()) == []      # stat quantized nothing
        n = struct.unpack("<Q", read_range(p, 0, 8))[0]
        hdr = json.loads(read_range(p, 0, 8 + n)[8:])
        check_produced(produced(m.stderr()), hdr, n, 0, 8 + n)
        before = len(produced(m.stderr()))
        # 100 bytes inside one qweight: only the linears on that page
        b, e = hdr["model.layers.2.mlp.up_proj.qweight"]["data_offsets"]
        off = 8 + n + b + 3 * 4096 + 17
        read_range(p, off, 100)
        got = produced(m.stderr())[before:]
        assert got == ["model.layers.2.mlp.up_proj.weight"], got
        # a range spanning several tensors produces exactly those
        b, e = hdr["model.layers.1.self_attn.k_proj.scales"]["data_offsets"]
        lo, hi = 8 + n + b - 5000, 8 + n + e + 7000
        read_range(p, lo, hi - lo)
        check_produced(produced(m.stderr())[before + 1:], hdr, n, lo, hi,
                       produced(m.stderr())[:before + 1])
        again = produced(m.stderr())[before + 1:]
        assert len(again) == len(set(again)) >= 3, again
        assert len(produced(m.stderr())) < 28
        assert size == len(open(p, "rb").read())
        assert len(produced(m.stderr())) == 28


def test_gptq_layout_against_numpy_reference():
    src, _ = stread.read_st(os.path.join(TINY, "model.safetensors"))
    with Mount(SRC) as m:
        for bits in (2, 3, 4, 8):
            for group in (32, 128, -1):
                for sym in (False, True):
                    var = "rtn_w%d_g%s%s" % (bits, "c" if group < 0 else
                                             group, "_sym" if sym else "")
                    d = os.path.join(m.mnt, "tiny", var)
                    t, hdr = stread.read_st(os.path.join(
                        d, "model.safetensors"))
                    assert hdr["__metadata__"]["format"] == "pt"
                    for name in ("model.layers.0.self_attn.k_proj.weight",
                                 "model.layers.3.mlp.down_proj.weight"):
                        check_rtn(t, src, name, bits, group, sym)
                    assert t["model.layers.0.self_attn.q_proj.qweight"] \
                        .shape == (256 * bits // 32, 256)
                    qc = json.load(open(os.path.join(d, "config.json")))[
                        "quantization_config"]
                    assert qc["quant_method"] == "gptq"
                    assert qc["bits"] == bits and qc["group_size"] == group
                    assert qc["sym"] == sym and qc["desc_act"] is False
                    assert qc["checkpoint_format"] == "gptq"
                    # untouched tensors pass through bit-exactly
                    for k in ("model.embed_tokens.weight", "lm_head.weight",
                              "model.norm.weight"):
                        assert np.array_equal(t[k], src[k]), k


def test_fake_equals_dequantized():
    src, _ = stread.read_st(os.path.join(TINY, "model.safetensors"))
    with Mount(SRC) as m:
        t, _ = stread.read_st(os.path.join(
            m.mnt, "tiny", "rtn_w4_g128", "model.safetensors"))
        f, hdr = stread.read_st(os.path.join(
            m.mnt, "tiny", "rtn_w4_g128_fake", "model.safetensors"))
        assert hdr["model.layers.1.mlp.gate_proj.weight"]["dtype"] == "BF16"
        assert set(f) == set(src)
        for name in ("model.layers.1.mlp.gate_proj.weight",
                     "model.layers.2.self_attn.o_proj.weight"):
            deq = check_rtn(t, src, name, 4, 128, False)
            # bf16 rounding (round to nearest even) of the dequantized value
            u = deq.astype(np.float32).view(np.uint32).astype(np.uint64)
            r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
            want = r.astype(np.uint32).view(np.float32)
            assert np.array_equal(f[name], want), name
        cfg = json.load(open(os.path.join(
            m.mnt, "tiny", "rtn_w4_g128_fake", "config.json")))
        assert "quantization_config" not in cfg


def test_unpackable_layers_stay_in_source_dtype():
    src, _ = stread.read_st(os.path.join(ODD, "model.safetensors"))
    with Mount(SRC) as m:
        d = os.path.join(m.mnt, "odd", "rtn_w4_g32")
        t, hdr = stread.read_st(os.path.join(d, "model.safetensors"))
        # gate/up have out=84, down_proj in=84: 84 % 8 != 0
        name = "model.layers.0.mlp.gate_proj.weight"
        assert hdr[name]["dtype"] == "F32" and np.array_equal(t[name],
                                                              src[name])
        check_rtn(t, src, "model.layers.1.self_attn.v_proj.weight", 4, 32,
                  False)
        man = json.load(open(os.path.join(d, "quantization.json")))
        kept = [k["name"] for k in man["kept_in_source_dtype"]]
        assert name in kept and len(kept) == 6, kept
        qc = json.load(open(os.path.join(d, "config.json")))[
            "quantization_config"]
        assert "-:^model\\.layers\\.0\\.mlp\\.gate_proj$" in qc["dynamic"]
        # 3 bits: hidden 64 and the kv width 32 pack, 84 does not
        t3, _ = stread.read_st(os.path.join(m.mnt, "odd", "rtn_w3_g32",
                                            "model.safetensors"))
        check_rtn(t3, src, "model.layers.0.self_attn.k_proj.weight", 3, 32,
                  False)


def test_concurrent_readers_identical():
    with Mount(SRC) as m:
        p = os.path.join(m.mnt, "tiny", "rtn_w4_g32", "model.safetensors")
        res = [None] * 8

        def rd(i):
            with open(p, "rb") as f:
                if i % 2:
                    f.seek(os.stat(p).st_size // 2)
                    tail = f.read()
                    f.seek(0)
                    res[i] = f.read(os.stat(p).st_size - len(tail)) + tail
                else:
                    res[i] = f.read()
        th = [threading.Thread(target=rd, args=(i,)) for i in range(8)]
        [x.start() for x in th]
        [x.join() for x in th]
        assert len(set(hashlib.sha256(r).digest() for r in res)) == 1
        # single flight: every linear produced once
        got = produced(m.stderr())
        assert len(got) == len(set(got)) == 28, got


def test_second_process_hits_cache():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    p = "tiny/rtn_w4_g128_sym/model.safetensors"
    with Mount(SRC, cache=cache) as m:
        a = sha(os.path.join(m.mnt, p))
        assert len(produced(m.stderr())) == 28
    with Mount(SRC, cache=cache) as m:
        assert "rtn_w4_g128_sym" in os.listdir(os.path.join(m.mnt, "tiny"))
        assert sha(os.path.join(m.mnt, p)) == a
        assert produced(m.stderr()) == [], m.stderr()
        # a cached variant that is not a preset is listed too
        sha(os.path.join(m.mnt, "tiny/rtn_w2_g64/model.safetensors"))
    with Mount(SRC, cache=cache) as m:
        assert "rtn_w2_g64" in os.listdir(os.path.join(m.mnt, "tiny"))
        assert "rtn_w2_g64" not in os.listdir(os.path.join(m.mnt, "odd"))


def test_two_daemons_produce_each_linear_once():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    p = "tiny/rtn_w2_g32_sym/model.safetensors"
    with Mount(SRC, cache=cache) as a, Mount(SRC, cache=cache) as b:
        ha, hb = sha_in_parallel([a, b], p)
        assert ha == hb
        pa, pb = produced(a.stderr()), produced(b.stderr())
        assert len(pa) + len(pb) == 28 and not set(pa) & set(pb), (pa, pb)


def test_changed_source_served_anew_no_stale_bytes():
    """Weights rewritten in place (cp) and replaced atomically (rename,
    as download tools do) while mounted: the next open serves the
    variant of what SRC holds now, never the old one; no remount."""
    d = mkmodel(os.path.join(WORK, "chg", "m"), "--seed", 3)
    new = [mkmodel(os.path.join(WORK, "chg%d" % k), "--seed", k)
           for k in (4, 5)]
    cache = tempfile.mkdtemp(prefix="qfcache.")
    p = "m/rtn_w4_g128/model.safetensors"
    q = "model.layers.0.self_attn.q_proj.weight"
    man = "m/rtn_w4_g128/quantization.json"

    def served(m, want):
        t, _ = stread.read_st(os.path.join(m.mnt, p))
        src, _ = stread.read_st(os.path.join(want, "model.safetensors"))
        check_rtn(t, src, q, 4, 128, False)
        assert sha(os.path.join(m.mnt, "m/original/model.safetensors")) \
            == sha(os.path.join(want, "model.safetensors"))
        return json.load(open(os.path.join(m.mnt, man)))["source"]

    with Mount(os.path.dirname(d), cache=cache) as m:
        fp = [served(m, d)["fingerprint"]]
        # rewrite the weights in place: same size, other bytes
        shutil.copyfile(os.path.join(new[0], "model.safetensors"),
                        os.path.join(d, "model.safetensors"))
        fp.append(served(m, new[0])["fingerprint"])
        # atomic replace: a new inode renamed over the old name
        tmp = os.path.join(d, ".model.safetensors.part")
        shutil.copyfile(os.path.join(new[1], "model.safetensors"), tmp)
        os.rename(tmp, os.path.join(d, "model.safetensors"))
        fp.append(served(m, new[1])["fingerprint"])
        assert len(set(fp)) == 3, fp
        assert "the source changed" in m.stderr()
        assert m.alive()
    with Mount(os.path.dirname(d), cache=cache) as m:
        assert served(m, new[1])["fingerprint"] == fp[2]
        assert produced(m.stderr()) == []    # the cache had it


def test_truncated_source_no_sigbus():
    """The source truncated in place at random moments while variants are
    produced from it (60 times): every read gets the right bytes or an
    error, and the daemon never dies (its SIGBUS is caught)."""
    import random
    d = mkmodel(os.path.join(WORK, "trunc", "m"), "--hidden", 256,
                "--inter", 768, "--layers", 4, "--seed", 12)
    ref_src = os.path.join(WORK, "trunc_ref")
    shutil.copytree(d, os.path.join(ref_src, "m"))
    path = os.path.join(d, "model.safetensors")
    good = open(path, "rb").read()
    names = ["rtn_w%d_g%s%s" % (b, g, s) for b in (2, 3, 4, 8)
             for g in ("32", "64", "128", "c") for s in ("", "_sym")]
    with Mount(ref_src) as r:
        want = {n: sha(os.path.join(r.mnt, "m", n, "model.safetensors"))
                for n in names}
    rnd = random.Random(7)
    outcome = {"ok": 0, "error": 0}
    with Mount(os.path.dirname(d)) as m:
        for i in range(60):
            with open(path, "r+b") as f:	# whole again, in place
                f.write(good)
            name = names[i % len(names)]
            res = {}

            def rd():
                try:
                    res["sha"] = sha(os.path.join(m.mnt, "m", name,
                                                  "model.safetensors"))
                except OSError as e:
                    res["err"] = e.errno
            th = threading.Thread(target=rd)
            th.start()
            time.sleep(rnd.random() * 0.03)
            os.truncate(path, rnd.randrange(64, len(good)))
            th.join(60)
            assert not th.is_alive() and m.alive(), m.stderr()[-2000:]
            if "sha" in res:
                assert res["sha"] == want[name], (i, name)
                outcome["ok"] += 1
            else:
                assert res["err"] in (errno.EIO, errno.ENOENT,
                                      errno.ESTALE), res
                outcome["error"] += 1
        with open(path, "r+b") as f:
            f.write(good)
        try:
            assert sha(os.path.join(m.mnt, "m", names[0],
                                    "model.safetensors")) == want[names[0]]
        except OSError:
            raise AssertionError(m.stderr()[-3000:])
        faults = m.stderr().count("shrank while it was read")
        print("  60 truncations: %d reads right, %d errors, %d SIGBUS "
              "caught" % (outcome["ok"], outcome["error"], faults))


def test_corrupt_sources_eio_daemon_stays_up():
    root = os.path.join(WORK, "bad")
    nan = mkmodel(os.path.join(root, "nan"), "--seed", 5)
    hdr = mkmodel(os.path.join(root, "hdr"), "--seed", 6)
    mkmodel(os.path.join(root, "good"), "--seed", 8)
    gpt = mkmodel(os.path.join(root, "gpt"), "--seed", 13)
    cfg = json.load(open(os.path.join(gpt, "config.json")))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(os.path.join(gpt, "config.json"), "w"))
    # a NaN inside one linear (header intact)
    _, h = stread.read_st(os.path.join(nan, "model.safetensors"))
    with open(os.path.join(nan, "model.safetensors"), "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        b, _ = h["model.layers.1.mlp.up_proj.weight"]["data_offsets"]
        f.seek(8 + n + b + 2 * 77)
        f.write(b"\xc0\x7f")                 # bf16 NaN
    # a header whose length field points past the end
    with open(os.path.join(hdr, "model.safetensors"), "r+b") as f:
        f.write(struct.pack("<Q", 1 << 40))
    with Mount(root) as m:
        v = os.path.join(m.mnt, "nan", "rtn_w4_g128", "model.safetensors")
        try:
            open(v, "rb").read()
            raise AssertionError("NaN source served")
        except OSError as e:
            assert e.errno == errno.EIO, e
        assert "non-finite" in m.stderr()
        try:
            os.listdir(os.path.join(m.mnt, "hdr", "rtn_w4_g128"))
            raise AssertionError("broken header served")
        except OSError as e:
            assert e.errno == errno.EIO, e
        assert os.listdir(os.path.join(m.mnt, "hdr")) == ["original"]
        # a model the forward pass cannot run lists no calibrated presets
        # and its calibrated names do not resolve
        ls = os.listdir(os.path.join(m.mnt, "gpt"))
        assert "rtn_w4_g128" in ls and not any(
            x.startswith("gptq") for x in ls), ls
        assert not os.path.exists(os.path.join(m.mnt, "gpt", "gptq_w4_g128"))
        assert "model_type 'gpt2' is not supported (only shape-only RTN " \
            "variants; computed: llama, mistral" in m.stderr(), m.stderr()
        assert sha(os.path.join(m.mnt, "hdr", "original", "config.json")) \
            == sha(os.path.join(hdr, "config.json"))
        assert len(open(os.path.join(m.mnt, "good", "rtn_w4_g128",
                                     "model.safetensors"), "rb").read()) > 0
        assert m.alive()


def test_mmap_shared_every_file():
    """A loader's MAP_SHARED mmap works for every served file: served by
    the daemon on a fresh cache, then passed through to read files."""
    cache = tempfile.mkdtemp(prefix="qfcache.")
    want = {}
    for rnd in range(2):
        with Mount(SRC, cache=cache) as m:
            for var in ("rtn_w4_g128", "rtn_w4_g128_fake", "original"):
                d = os.path.join(m.mnt, "tiny", var)
                for f in os.listdir(d):
                    p = os.path.join(d, f)
                    with open(p, "rb") as fh:
                        mm = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED,
                                       prot=mmap.PROT_READ)
                        data = mm[:]
                        mm.close()
                    assert data == open(p, "rb").read(), p
                    assert want.setdefault(f + var, data) == data, p
            if rnd == 0 and "kernel passthrough" in m.stderr():
                for var in ("rtn_w4_g128", "rtn_w4_g128_fake"):
                    read_file_of(os.path.join(m.mnt, "tiny", var,
                                              "model.safetensors"))
            elif rnd == 1 and "kernel passthrough" in m.stderr():
                p = os.path.join(m.mnt, "tiny", "rtn_w4_g128",
                                 "model.safetensors")
                with open(p, "rb"):
                    assert io_info(p)["open_passthrough"] == 1, io_info(p)


def test_io_cache_mode_same_bytes():
    """-o io=cache (page cache, no direct_io) serves the same bytes."""
    cache = tempfile.mkdtemp(prefix="qfcache.")
    p = "tiny/rtn_w4_g64_sym/model.safetensors"
    with Mount(SRC, cache=cache) as m:
        a = sha(os.path.join(m.mnt, p))
        assert "direct_io" in m.stderr() or "page cache" in m.stderr()
    with Mount(SRC, cache=cache, opts=["io=cache"]) as m:
        assert sha(os.path.join(m.mnt, p)) == a
        # logged at INIT, which a first request is sure to follow
        assert "served with the page cache" in m.stderr(), m.stderr()
        with open(os.path.join(m.mnt, p), "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ)
            assert hashlib.sha256(mm[:]).hexdigest() == a
            mm.close()


def io_info(path):
    return json.loads(os.getxattr(path, "user.quantfs.io"))


def wait_for(pred, what, timeout=60):
    t = time.time() + timeout
    while not pred():
        if time.time() > t:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def need_passthrough(m):
    # logged at INIT, which the first request is sure to follow
    if "kernel passthrough" not in m.stderr():
        raise SkipTest("this kernel offers no FUSE passthrough (Linux 6.9+ "
                       "with CONFIG_FUSE_PASSTHROUGH): files are served "
                       "by the daemon")


def read_file_of(path):
    wait_for(lambda: io_info(path)["read_file"], "the read file of " + path)
    return io_info(path)["read_file"]


def test_passthrough_read_files():
    """Source files pass through at once; a variant file gets a read file
    in the cache once it is all cached, and later opens (and a fresh
    mount's first) pass through: reads and MAP_SHARED mmap never reach
    the daemon.  cache ls/du count read files, rm deletes them."""
    cache = tempfile.mkdtemp(prefix="qfcache.")
    rel = ["tiny/rtn_w4_g128/model.safetensors",
           "tiny/rtn_w4_g32_sym/model.gguf"]
    with Mount(SRC, cache=cache) as m:
        paths = [os.path.join(m.mnt, r) for r in rel]
        want = [sha(p) for p in paths]     # produced, served by the daemon
        need_passthrough(m)
        src = os.path.join(m.mnt, "tiny", "original", "model.safetensors")
        with open(src, "rb") as fh:
            info = io_info(src)
            assert info["mode"] == "passthrough", info
            assert info["open_passthrough"] == 1, info
            data = fh.read()
        assert data == open(os.path.join(TINY, "model.safetensors"),
                            "rb").read()
        assert io_info(src)["daemon_reads"] == 0
        rfs = []
        for p, w in zip(paths, want):
            rf = read_file_of(p)
            rfs.append(rf)
            assert rf.startswith(os.path.join(cache, "files") + "/"), rf
            assert sha(rf) == w
            with open(p, "rb") as fh:
                info = io_info(p)
                assert info["open_passthrough"] == 1, info
                assert info["open_daemon"] == 0, info
                before = info["daemon_reads"]
                data = fh.read()
                mm = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ)
                assert mm[:] == data
                mm.close()
            assert hashlib.sha256(data).hexdigest() == w
            assert io_info(p)["daemon_reads"] == before, io_info(p)
    with Mount(SRC, cache=cache) as m:
        for r, w in zip(rel, want):
            p = os.path.join(m.mnt, r)
            assert sha(p) == w
            assert io_info(p)["daemon_reads"] == 0, io_info(p)
        assert not produced(m.stderr()), m.stderr()
    out = subprocess.run([os.environ.get("QUANTFS", "quantfs"), "cache",
                          "ls", "--json", "--cache", cache], check=True,
                         capture_output=True, text=True).stdout
    sizes = {e["variant"]: e["file_bytes"] for e in json.loads(out)}
    files = sorted(os.listdir(os.path.join(cache, "files")))
    assert len(files) == 2 and not any(f.endswith(".tmp") for f in files)
    assert sizes["rtn_w4_g128"] == os.path.getsize(rfs[0]), sizes
    assert sum(sizes.values()) == sum(os.path.getsize(f) for f in rfs)
    du = subprocess.run([os.environ.get("QUANTFS", "quantfs"), "cache",
                         "du", "--cache", cache], check=True,
                        capture_output=True, text=True).stdout
    assert "read files:" in du, du
    subprocess.run([os.environ.get("QUANTFS", "quantfs"), "cache", "rm",
                    "tiny/rtn_w4_g128", "--cache", cache], check=True)
    left = os.listdir(os.path.join(cache, "files"))
    assert len(left) == 1 and left[0].endswith(".gguf"), left


def test_passthrough_waits_for_daemon_opens():
    """While an open the daemon serves is alive (here one mmapped, which
    puts the kernel inode in caching mode), later opens are served by the
    daemon too instead of failing with EIO; passthrough resumes after."""
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache) as m:
        p = os.path.join(m.mnt, "tiny", "rtn_w4_g64", "model.safetensors")
        need_passthrough(m)
        a = open(p, "rb")
        want = hashlib.sha256(a.read()).hexdigest()
        mm = mmap.mmap(a.fileno(), 0, flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ)
        b = open(p, "rb")            # complete, no read file: written now
        read_file_of(p)
        with open(p, "rb") as c:
            info = io_info(p)
            assert info["open_daemon"] == 3 and \
                info["open_passthrough"] == 0, info
            assert hashlib.sha256(c.read()).hexdigest() == want
        assert hashlib.sha256(mm[:]).hexdigest() == want
        mm.close()
        a.close()
        b.close()
        with open(p, "rb") as d:
            assert io_info(p)["open_passthrough"] == 1, io_info(p)
            assert hashlib.sha256(d.read()).hexdigest() == want


def test_damaged_read_file_is_deleted_and_rewritten():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    rel = "tiny/rtn_w8_g128/model.safetensors"
    with Mount(SRC, cache=cache) as m:
        p = os.path.join(m.mnt, rel)
        want = sha(p)
        need_passthrough(m)
        rf = read_file_of(p)
    with open(rf, "r+b") as f:       # one bit, in the middle
        f.seek(os.path.getsize(rf) // 2)
        x = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([x[0] ^ 0x10]))
    with Mount(SRC, cache=cache) as m:
        p = os.path.join(m.mnt, rel)
        # the first open finds it changed (its ctime is not the one
        # recorded), writes it again from the values and passes through
        with open(p, "rb") as f:
            assert io_info(p)["open_passthrough"] == 1, io_info(p)
            assert hashlib.sha256(f.read()).hexdigest() == want
        assert "read file damaged" in m.stderr(), m.stderr()
        assert io_info(p)["daemon_reads"] == 0, io_info(p)
        assert sha(read_file_of(p)) == want


def test_passthrough_without_privilege():
    """A daemon without CAP_SYS_ADMIN cannot register backing files: it
    says so once, writes no read files and serves every read itself.
    The test mounts (as root) and hands the /dev/fuse descriptor to a
    daemon started with CAP_SYS_ADMIN dropped (setpriv)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        raise SkipTest("needs root and setpriv (util-linux)")
    tmp = tempfile.mkdtemp(prefix="qfnopriv.")
    mnt, cache = os.path.join(tmp, "mnt"), os.path.join(tmp, "cache")
    os.makedirs(mnt)
    log = open(os.path.join(tmp, "log"), "w")
    fd = os.open("/dev/fuse", os.O_RDWR)
    subprocess.run(["mount", "-i", "-t", "fuse.quantfs", "-o",
                    "ro,fd=%d,rootmode=40000,user_id=0,group_id=0" % fd,
                    "quantfs", mnt], pass_fds=[fd], check=True)
    proc = subprocess.Popen(
        ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin",
         os.environ.get("QUANTFS", "quantfs"), "mount", SRC,
         "/dev/fd/%d" % fd, "-f", "-o", "cache=" + cache],
        pass_fds=[fd], stdout=log, stderr=subprocess.STDOUT)
    os.close(fd)
    try:
        p = os.path.join(mnt, "tiny", "rtn_w4_g128", "model.safetensors")
        wait_for(lambda: os.path.isdir(os.path.join(mnt, "tiny")),
                 "the daemon")
        a = sha(p)
        assert sha(p) == a
        src = os.path.join(mnt, "tiny", "original", "model.safetensors")
        assert sha(src) == sha(os.path.join(TINY, "model.safetensors"))
        text = open(os.path.join(tmp, "log")).read()
        if "kernel passthrough" not in text:
            raise SkipTest("this kernel offers no FUSE passthrough")
        assert "passthrough needs CAP_SYS_ADMIN" in text, text
        for f in (p, src):
            info = io_info(f)
            assert info["open_passthrough"] == 0 and \
                info["daemon_reads"] > 0 and info["read_file"] is None, info
        assert not os.path.isdir(os.path.join(cache, "files")) or \
            not os.listdir(os.path.join(cache, "files"))
    finally:
        subprocess.run(["umount", mnt], check=False)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            subprocess.run(["umount", "-l", mnt], check=False)
        log.close()
    assert proc.returncode == 0, open(os.path.join(tmp, "log")).read()


def test_io_direct_writes_no_read_files():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    with Mount(SRC, cache=cache, opts=["io=direct"]) as m:
        p = os.path.join(m.mnt, "tiny", "rtn_w4_g128", "model.safetensors")
        a = sha(p)
        assert sha(p) == a
        assert "kernel passthrough" not in m.stderr()
        info = io_info(p)
        assert info["mode"] in ("direct", "cache") and \
            info["read_file"] is None, info
    assert not os.path.exists(os.path.join(cache, "files")) or \
        not os.listdir(os.path.join(cache, "files"))


def test_sharded_source_same_output():
    """model.safetensors.index.json + shards: the variant equals the one
    of the same tensors in a single file."""
    root = os.path.join(WORK, "shard")
    single = mkmodel(os.path.join(root, "single"), "--seed", 9)
    sharded = stread.shard(single, os.path.join(root, "sharded"), 3)
    with Mount(root) as m:
        for var in ("rtn_w4_g128", "rtn_w8_gc_fake"):
            a = sha(os.path.join(m.mnt, "single", var, "model.safetensors"))
            b = sha(os.path.join(m.mnt, "sharded", var, "model.safetensors"))
            assert a == b, var
        orig = os.listdir(os.path.join(m.mnt, "sharded", "original"))
        assert "model.safetensors.index.json" in orig and len(
            [o for o in orig if o.endswith(".safetensors")]) == 3
        # the index is not passed through into variant dirs
        assert sorted(os.listdir(os.path.join(
            m.mnt, "sharded", "rtn_w4_g128"))) == sorted(os.listdir(
                os.path.join(m.mnt, "single", "rtn_w4_g128")))
    # an index naming a missing shard, or a path outside the dir: EIO
    with open(os.path.join(sharded, "model.safetensors.index.json"),
              "w") as f:
        json.dump({"weight_map": {"x": "../single/model.safetensors"}}, f)
    with Mount(root) as m:
        try:
            os.listdir(os.path.join(m.mnt, "sharded", "rtn_w4_g128"))
            raise AssertionError("escaping shard name accepted")
        except OSError as e:
            assert e.errno == errno.EIO
        assert "bad shard name" in m.stderr()


def test_cache_map_grows():
    with Mount(SRC, opts=["cache_map=1M"]) as m:
        p = os.path.join(m.mnt, "tiny", "rtn_w8_g32", "model.safetensors")
        assert os.stat(p).st_size > (3 << 20)
        assert len(open(p, "rb").read()) == os.stat(p).st_size
        assert "map grown" in m.stderr()


def test_background_mode_and_umount():
    tmp = tempfile.mkdtemp(prefix="qfbg.")
    mnt = os.path.join(tmp, "mnt")
    os.makedirs(mnt)
    qf = os.environ.get("QUANTFS", "quantfs")
    r = subprocess.run([qf, "mount", SRC, mnt, "-o",
                        "cache=%s/c,allow_other" % tmp],
                       capture_output=True, text=True, timeout=30)
    try:
        assert r.returncode == 0, r.stderr
        with open("/proc/self/mountinfo") as f:
            line = [x for x in f if x.split()[4] == mnt][0]
        assert "fuse.quantfs" in line and " ro," in line.replace(
            " ro ", " ro,") or "ro" in line.split()[5], line
        with open("/proc/mounts") as f:
            opts = [x for x in f if x.split()[1] == mnt][0].split()[3]
        assert "allow_other" in opts and "default_permissions" in opts, opts
        assert len(os.listdir(os.path.join(mnt, "tiny"))) >= 6
    finally:
        u = subprocess.run([qf, "umount", mnt])
    assert u.returncode == 0
    with open("/proc/self/mountinfo") as f:
        assert not any(x.split()[4] == mnt for x in f)


def mount_in(cwd, src, mnt, opts):
    """quantfs mount in the background, run from cwd (the daemon then
    changes to /): the CompletedProcess."""
    return subprocess.run([QF, "mount", src, mnt, "-o", opts], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def umount_bg(mnt):
    u = subprocess.run([QF, "umount", mnt])
    deadline = time.time() + 20
    while mounted(mnt) and time.time() < deadline:
        time.sleep(0.05)
    assert u.returncode == 0 and not mounted(mnt)


def test_relative_cache_src_mnt():
    """SRC, MNT and cache= given relative to the folder quantfs mount runs
    in: the LMDB files, the locks and the read files all land in that one
    absolute cache folder, nothing in the folder itself or under /, and
    the daemon unmounts by MNT's absolute name."""
    cwd = tempfile.mkdtemp(prefix="qfrel.")
    os.makedirs(os.path.join(cwd, "mnt"))
    mnt = os.path.join(cwd, "mnt")
    before = set(os.listdir("/"))
    r = mount_in(cwd, os.path.relpath(SRC, cwd), "mnt", "cache=rel//c/.")
    try:
        assert r.returncode == 0, r.stderr
        assert "mounted 2 model(s) on %s\n" % mnt in r.stderr, r.stderr
        with open("/proc/mounts") as f:
            opts = [x for x in f if x.split()[1] == mnt][0].split()[3]
        # always, not only with allow_other
        assert "default_permissions" in opts, opts
        assert "allow_other" not in opts, opts
        v = os.path.join(mnt, "tiny", "rtn_w4_g128", "model.safetensors")
        want = sha(v)
        src = os.path.join(mnt, "tiny", "original", "config.json")
        if io_info(src)["mode"] == "passthrough":
            rf = read_file_of(v)
            assert rf.startswith(os.path.join(cwd, "rel", "c", "files") +
                                 "/"), rf
            assert sha(rf) == want
    finally:
        umount_bg(mnt)
    assert sorted(os.listdir(cwd)) == ["mnt", "rel"], os.listdir(cwd)
    assert os.listdir(os.path.join(cwd, "rel")) == ["c"]
    cache = os.listdir(os.path.join(cwd, "rel", "c"))
    for name in ("data.mdb", "lock.mdb", "locks", "files"):
        assert name in cache, cache
    assert os.listdir(os.path.join(cwd, "rel", "c", "locks")), cache
    assert os.listdir(mnt) == []
    # nothing at the root (the detached daemon's working folder), where
    # the locks and read files of a path resolved late would be
    if "rel" not in before:
        assert not os.path.exists("/rel"), os.listdir("/rel")


def test_relative_calibration_paths():
    """calib= and calib_dir= relative to the folder quantfs mount runs in
    are found by the detached daemon: quantization.json names the texts'
    absolute paths."""
    cwd = tempfile.mkdtemp(prefix="qfrelcal.")
    os.makedirs(os.path.join(cwd, "mnt"))
    os.makedirs(os.path.join(cwd, "texts", "sets"))
    text = "Once upon a time there was a little dog named Spot. " * 200
    for name in ("rel.txt", os.path.join("sets", "stories.txt")):
        with open(os.path.join(cwd, "texts", name), "w") as f:
            f.write(text)
    mnt = os.path.join(cwd, "mnt")
    r = mount_in(cwd, SRC, mnt, "cache=c,calib=texts/rel.txt,"
                 "calib_dir=./texts/sets,calib_n=4,calib_len=32")
    try:
        assert r.returncode == 0, r.stderr
        for var, path in (("gptq_w4_g128", "rel.txt"),
                          ("gptq_w4_g128@stories", "sets/stories.txt")):
            q = os.path.join(mnt, "tiny", var, "quantization.json")
            cal = json.load(open(q))["calibration"]
            want = "text: %s/texts/%s " % (cwd, path)
            assert cal["source"].startswith(want), (cal["source"], want)
            assert cal["sequences"] == 4
    finally:
        umount_bg(mnt)


def test_bad_options_refused():
    """A bad value, an unknown option or a missing calibration text
    refuses the mount: exit status 2, one line naming the option and the
    value, nothing mounted and no cache created."""
    cwd = tempfile.mkdtemp(prefix="qfbad.")
    mnt = os.path.join(cwd, "mnt")
    os.makedirs(mnt)
    for bad in ("timeout=nan", "timeout=inf", "timeout=-1", "timeout=0",
                "calib_n=12abc", "threads=1e3", "threads=0",
                "calib_len=99999999999", "cache_map=12Q", "brecq_iters=x",
                "max_jobs=-3", "cache_max=16777216T", "io=fast",
                "backend=gpu", "calib_seed=-1", "calib_n=", "calib=",
                "threads", "debug=1", "no_such_option",
                "mixed_table=attn=5"):
        r = mount_in(cwd, SRC, "mnt", "cache=c," + bad)
        assert r.returncode == 2, (bad, r.returncode, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("quantfs: ") and \
            bad in lines[0], (bad, r.stderr)
        assert not mounted(mnt), bad
        assert os.listdir(cwd) == ["mnt"], (bad, os.listdir(cwd))
    r = mount_in(cwd, SRC, "mnt", "cache=c,calib=missing.txt")
    assert r.returncode == 2 and "calib=%s/missing.txt: " % cwd in \
        r.stderr, r.stderr
    r = mount_in(cwd, SRC, "mnt", "cache=c,calib_dir=" + SRC + "/tiny/"
                 "config.json")
    assert r.returncode == 2 and "Not a directory" in r.stderr, r.stderr
    assert not mounted(mnt) and os.listdir(cwd) == ["mnt"]


def test_real_model_stories260k():
    real = os.path.join(SHARED, "data", "models", "stories260K")
    if not os.path.isdir(real):
        raise SkipTest("../shared/data/models/stories260K is absent")
    src, _ = stread.read_st(os.path.join(real, "model.safetensors"))
    with Mount(real) as m:
        d = os.path.join(m.mnt, "stories260K", "rtn_w4_g32")
        t, hdr = stread.read_st(os.path.join(d, "model.safetensors"))
        for name in ("model.layers.0.self_attn.q_proj.weight",
                     "model.layers.4.self_attn.o_proj.weight"):
            check_rtn(t, src, name, 4, 32, False)
        # MLP width 172 cannot be packed: kept in F32, listed
        assert hdr["model.layers.0.mlp.down_proj.weight"]["dtype"] == "F32"
        man = json.load(open(os.path.join(d, "quantization.json")))
        assert len(man["kept_in_source_dtype"]) == 15
        assert "lm_head.weight" not in t  # tied embeddings stay tied


if __name__ == "__main__":
    run_tests(globals())
