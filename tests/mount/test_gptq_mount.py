"""Integration tests of calibrated (GPTQ) variants on real FUSE mounts:
the served checkpoint against the source and the GPTQ grid, act order,
_fake, the cache across processes, resume after kill -9 with identical
bytes, @name calibration sets, and a calibration text that is too short.
"""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import stread  # noqa: E402
from qftest import Mount, mkmodel, run_tests, QUANTFS, sha, \
    sha_in_parallel  # noqa: E402

QUANTFS = os.environ.get("QUANTFS", QUANTFS)

WORK = tempfile.mkdtemp(prefix="qfgptq.")
SRC = os.path.join(WORK, "models")
TINY = mkmodel(os.path.join(SRC, "tiny"), "--layers", 3, "--seed", 11)
SMALL = ["calib_n=8", "calib_len=64"]


def layer_lines(log):
    """The per-layer progress lines of calibrated jobs."""
    return re.findall(r"/gptq_\S+: layer \d+/\d+ in ", log)


def test_gptq_checkpoint_and_manifest():
    src, _ = stread.read_st(os.path.join(TINY, "model.safetensors"))
    with Mount(SRC, opts=SMALL) as m:
        d = os.path.join(m.mnt, "tiny", "gptq_w4_g64")
        size = os.stat(os.path.join(d, "model.safetensors")).st_size
        man_size = os.stat(os.path.join(d, "quantization.json")).st_size
        assert layer_lines(m.stderr()) == []      # stat produced nothing
        t, hdr = stread.read_st(os.path.join(d, "model.safetensors"))
        assert len(open(os.path.join(d, "model.safetensors"), "rb").read()) \
            == size
        assert len(layer_lines(m.stderr())) == 3, m.stderr()
        r, _ = stread.read_st(os.path.join(m.mnt, "tiny", "rtn_w4_g64",
                                           "model.safetensors"))
        for name in ("model.layers.0.self_attn.q_proj.weight",
                     "model.layers.2.mlp.down_proj.weight"):
            W = src[name]
            deq, q, z, s, g = stread.gptq_dequant(t, name[:-7], 4, *W.shape)
            assert np.array_equal(g, np.arange(W.shape[1]) // 64)
            assert q.max() <= 15 and z.min() >= 1
            # GPTQ trades weight error for output error (on 512 tokens
            # it moves weights a few times further than RTN); a wrong
            # packing or grid would be far off (relative error ~1)
            rel = np.sum((W - deq) ** 2) / np.sum(W ** 2)
            rdeq = stread.gptq_dequant(r, name[:-7], 4, *W.shape)[0]
            rrel = np.sum((W - rdeq) ** 2) / np.sum(W ** 2)
            assert rrel <= rel < 10 * rrel and rel < 0.1, (rel, rrel)
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            assert np.array_equal(t[k], src[k])
        qc = json.load(open(os.path.join(d, "config.json")))[
            "quantization_config"]
        assert qc["quant_method"] == "gptq" and qc["damp_percent"] == 0.01
        assert qc["true_sequential"] is True and qc["desc_act"] is False
        raw = open(os.path.join(d, "quantization.json"), "rb").read()
        assert len(raw) == man_size
        man = json.loads(raw)
        cal = man["calibration"]
        assert cal["sequences"] == 8 and cal["tokens_per_sequence"] == 64
        assert cal["token_hash"] != "0" * 64 and "sampled" in cal["source"]
        g = [l["loss_gptq"] for l in man["layers"]]
        r = [l["loss_rtn"] for l in man["layers"]]
        assert len(g) == 21 and all(x > 0 for x in g)
        assert sum(g) < sum(r), (sum(g), sum(r))
        # progress: the variant's xattr, and `quantfs status`
        pr = json.loads(os.getxattr(d, "user.quantfs.progress"))
        assert pr["state"] == "done" and pr["layers_done"] == 3, pr
        rtn = json.loads(os.getxattr(os.path.join(m.mnt, "tiny", "rtn_w4_g64"),
                                     "user.quantfs.progress"))
        assert rtn["state"] == "per tensor, on read"
        st = subprocess.run([QUANTFS, "status", m.mnt], capture_output=True,
                            text=True, check=True).stdout
        assert "tiny/gptq_w4_g64" in st and " done " in st and "3/3" in st
        js = json.loads(subprocess.run([QUANTFS, "status", m.mnt, "--json"],
                                       capture_output=True, text=True,
                                       check=True).stdout)
        assert [x["variant"] for x in js] == ["gptq_w4_g64"]
    bad = subprocess.run([QUANTFS, "status", WORK], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "not a quantfs mount" in bad.stderr


def test_act_order_g_idx_and_fake():
    with Mount(SRC, opts=SMALL) as m:
        d = os.path.join(m.mnt, "tiny", "gptq_w4_g32_act")
        t, _ = stread.read_st(os.path.join(d, "model.safetensors"))
        g = t["model.layers.1.mlp.up_proj.g_idx"]
        counts = np.bincount(g)
        assert len(counts) == 256 // 32 and np.all(counts == 32)
        assert not np.array_equal(g, np.arange(256) // 32)   # permuted
        qc = json.load(open(os.path.join(d, "config.json")))[
            "quantization_config"]
        assert qc["desc_act"] is True and qc["static_groups"] is False
        # static groups keep g_idx in order
        ts, _ = stread.read_st(os.path.join(
            m.mnt, "tiny", "gptq_w4_g32_act_static", "model.safetensors"))
        assert np.array_equal(ts["model.layers.1.mlp.up_proj.g_idx"],
                              np.arange(256) // 32)
        # _fake is the packed variant, dequantized (bf16 rounding)
        f, hdr = stread.read_st(os.path.join(
            m.mnt, "tiny", "gptq_w4_g32_act_fake", "model.safetensors"))
        name = "model.layers.1.mlp.up_proj"
        deq = stread.gptq_dequant(t, name, 4, 768, 256)[0]
        u = deq.astype(np.float32).view(np.uint32).astype(np.uint64)
        want = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(
            np.uint32).view(np.float32)
        assert np.array_equal(f[name + ".weight"], want)
        mf = json.load(open(os.path.join(
            m.mnt, "tiny", "gptq_w4_g32_act_fake", "quantization.json")))
        mp = json.load(open(os.path.join(d, "quantization.json")))
        assert mf["fake"] is True and mf["layers"] == mp["layers"]


def test_second_process_from_cache():
    cache = tempfile.mkdtemp(prefix="qfcache.")
    p = "tiny/gptq_w3_g64/model.safetensors"
    with Mount(SRC, cache=cache, opts=SMALL) as m:
        # not a preset: listed only once it is in the cache
        assert "gptq_w3_g64" not in os.listdir(os.path.join(m.mnt, "tiny"))
        a = sha(os.path.join(m.mnt, p))
        man = open(os.path.join(m.mnt, "tiny/gptq_w3_g64/"
                                "quantization.json")).read()
    with Mount(SRC, cache=cache, opts=SMALL) as m:
        assert "gptq_w3_g64" in os.listdir(os.path.join(m.mnt, "tiny"))
        assert sha(os.path.join(m.mnt, p)) == a
        assert open(os.path.join(m.mnt, "tiny/gptq_w3_g64/"
                                 "quantization.json")).read() == man
        assert layer_lines(m.stderr()) == [], m.stderr()
        assert "calibration tokens" not in m.stderr(), m.stderr()
    # another calibration size is another variant: produced anew
    with Mount(SRC, cache=cache, opts=["calib_n=4", "calib_len=64"]) as m:
        assert sha(os.path.join(m.mnt, p)) != a
        assert len(layer_lines(m.stderr())) == 3


SIX = ["calib_n=16", "calib_len=128"]     # options of the 6-layer model
SIX_FILE = "m/gptq_w4_g128/model.safetensors"


def six_layer_model(name, seed):
    """A source dir with a 6-layer model whose GPTQ job takes seconds."""
    d = os.path.join(WORK, name)
    mkmodel(os.path.join(d, "m"), "--layers", 6, "--hidden", 384,
            "--inter", 1024, "--heads", 6, "--kv-heads", 2, "--seed", seed)
    return d


def uninterrupted_sha(d):
    """sha256 of gptq_w4_g128 produced in one go, in a cache of its own."""
    with Mount(d, opts=SIX) as m:
        return sha(os.path.join(m.mnt, SIX_FILE))


def test_kill9_resume_same_bytes():
    big = six_layer_model("big", 12)
    want = uninterrupted_sha(big)
    opts, p = SIX, SIX_FILE
    cache = tempfile.mkdtemp(prefix="qfcache.")
    m = Mount(big, cache=cache, opts=opts)
    m.__enter__()
    reader = subprocess.Popen(["cat", os.path.join(m.mnt, p)],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    seen = []
    while len(layer_lines(m.stderr())) < 2:
        assert time.time() < deadline, m.stderr()
        assert m.proc.poll() is None
        try:
            seen.append(json.loads(os.getxattr(
                os.path.join(m.mnt, "m", "gptq_w4_g128"),
                "user.quantfs.progress")))
        except OSError:
            pass
        time.sleep(0.05)
    # while it runs, progress names the phase and counts layers
    assert any(x["state"] == "quantizing layers" for x in seen), seen
    assert any(x["layers_done"] >= 1 and x["eta_s"] is not None
               for x in seen), seen
    m.kill9()
    reader.wait(timeout=30)
    done = len(layer_lines(m.stderr()))
    assert 2 <= done < 6, m.stderr()
    with Mount(big, cache=cache, opts=opts) as m2:
        assert sha(os.path.join(m2.mnt, p)) == want
        log = m2.stderr()
        assert "resuming at layer %d/6" % (done + 1) in log, log
        assert len(layer_lines(log)) == 6 - done, log


def test_interrupted_reader_job_goes_on():
    """Ctrl-C on a reader waiting for a layer: the reader gets EINTR at
    once, the job goes on, a later read gets the whole file."""
    big = six_layer_model("intr", 14)
    p = SIX_FILE
    with Mount(big, opts=SIX) as m:
        reader = subprocess.Popen(["cat", os.path.join(m.mnt, p)],
                                  stdout=subprocess.DEVNULL)
        deadline = time.time() + 120
        while len(layer_lines(m.stderr())) < 1:
            assert time.time() < deadline, m.stderr()
            time.sleep(0.05)
        t0 = time.time()
        reader.send_signal(signal.SIGINT)
        reader.wait(timeout=10)
        assert time.time() - t0 < 3, time.time() - t0
        assert reader.returncode != 0
        before = len(layer_lines(m.stderr()))
        st = json.loads(os.getxattr(os.path.join(m.mnt, "m", "gptq_w4_g128"),
                                    "user.quantfs.progress"))
        assert st["state"] == "quantizing layers", st
        size = os.stat(os.path.join(m.mnt, p)).st_size
        assert len(open(os.path.join(m.mnt, p), "rb").read()) == size
        assert len(layer_lines(m.stderr())) == 6 > before
        assert m.alive()


def test_two_daemons_one_production():
    """Two mounts (two processes) of one source and one cache read the
    same calibrated variant at once: it is produced once."""
    cache = tempfile.mkdtemp(prefix="qfcache.")
    p = "tiny/gptq_w2_g32/model.safetensors"
    with Mount(SRC, cache=cache, opts=SMALL) as a, \
            Mount(SRC, cache=cache, opts=SMALL) as b:
        ha, hb = sha_in_parallel([a, b], p)
        assert ha == hb
        la, lb = layer_lines(a.stderr()), layer_lines(b.stderr())
        assert len(la) + len(lb) == 3, (la, lb)


def test_kill9_producer_other_process_takes_over():
    big = six_layer_model("takeover", 15)
    want = uninterrupted_sha(big)
    opts, p = SIX, SIX_FILE
    cache = tempfile.mkdtemp(prefix="qfcache.")
    a = Mount(big, cache=cache, opts=opts)
    a.__enter__()
    with Mount(big, cache=cache, opts=opts) as b:
        ra = subprocess.Popen(["cat", os.path.join(a.mnt, p)],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while len(layer_lines(a.stderr())) < 1:
            assert time.time() < deadline, a.stderr()
            time.sleep(0.01)
        # frozen at once (fast kernels finish 6 layers within a second);
        # stopped, it still holds its lock, as a slow producer would
        os.kill(a.proc.pid, signal.SIGSTOP)
        out = {}
        th = threading.Thread(target=lambda: out.setdefault(
            "b", sha(os.path.join(b.mnt, p))))
        th.start()
        time.sleep(0.5)
        st = json.loads(os.getxattr(os.path.join(b.mnt, "m", "gptq_w4_g128"),
                                    "user.quantfs.progress"))
        assert st["state"] == "waiting for another process", st
        a.kill9()
        ra.wait(timeout=30)
        done_a = len(layer_lines(a.stderr()))
        th.join(timeout=300)
        assert out.get("b") == want
        lb = layer_lines(b.stderr())
        assert done_a >= 1 and len(lb) == 6 - done_a, (done_a, lb)
        assert "resuming at layer %d/6" % (done_a + 1) in b.stderr()


def test_named_calibration_sets():
    cdir = os.path.join(WORK, "calib")
    os.makedirs(cdir, exist_ok=True)
    text = "Once upon a time there was a little dog named Spot. " * 200
    with open(os.path.join(cdir, "stories.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(cdir, "tiny.txt"), "w") as f:
        f.write("too short")
    with Mount(SRC, opts=SMALL + ["calib_dir=" + cdir]) as m:
        d = os.path.join(m.mnt, "tiny", "gptq_w4_g128@stories")
        assert os.path.isdir(d)
        a = sha(os.path.join(d, "model.safetensors"))
        b = sha(os.path.join(m.mnt, "tiny", "gptq_w4_g128",
                             "model.safetensors"))
        assert a != b
        man = json.load(open(os.path.join(d, "quantization.json")))
        assert "stories.txt" in man["calibration"]["source"]
        assert not os.path.exists(os.path.join(m.mnt, "tiny",
                                               "gptq_w4_g128@missing"))
        try:
            open(os.path.join(m.mnt, "tiny", "gptq_w4_g128@tiny",
                              "model.safetensors"), "rb").read()
            raise AssertionError("a too short calibration text worked")
        except OSError as e:
            assert e.errno == errno.EIO
        assert "has fewer than" in m.stderr()
        assert m.alive()
    with Mount(SRC, opts=SMALL) as m:   # no calib_dir: no @sets
        assert not os.path.exists(os.path.join(
            m.mnt, "tiny", "gptq_w4_g128@stories"))



def test_backend_option():
    """-o backend: a bad name is refused; cuda without a usable device
    falls back to the CPU with the reason logged, and the variant is the
    CPU one (same cache key, same bytes); with a device (the GPU machine)
    the variant is produced there, says so, and is cached apart."""
    bad = subprocess.run([QUANTFS, "mount", SRC, tempfile.mkdtemp(), "-f",
                          "-o", "backend=tpu"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode != 0 and "backend=tpu" in bad.stderr, bad.stderr
    rel = os.path.join("tiny", "gptq_w4_g64", "model.safetensors")
    cache = tempfile.mkdtemp(prefix="qfbe.")
    with Mount(SRC, cache=cache, opts=SMALL + ["backend=cpu"]) as m:
        cpu = sha(os.path.join(m.mnt, rel))
        tc, _ = stread.read_st(os.path.join(m.mnt, rel))
        src, _ = stread.read_st(os.path.join(TINY, "model.safetensors"))
        man = json.load(open(os.path.join(m.mnt, "tiny", "gptq_w4_g64",
                                          "quantization.json")))
        assert man["calibration"]["backend"] == "cpu"
    with Mount(SRC, cache=cache, opts=SMALL + ["backend=cuda"]) as m:
        log = m.stderr()
        got = sha(os.path.join(m.mnt, rel))
        man = json.load(open(os.path.join(m.mnt, "tiny", "gptq_w4_g64",
                                          "quantization.json")))
        ls = subprocess.run([QUANTFS, "cache", "ls", "--cache", cache],
                            capture_output=True, text=True).stdout
        if "backend: cuda (" in log:
            print("  cuda device:", re.search(r"backend: cuda \((.*)\)",
                                             log).group(1))
            assert man["calibration"]["backend"] == "cuda"
            assert len(layer_lines(m.stderr())) == 3   # produced anew
            assert ls.count("gptq_w4_g64") == 2, ls
            # the same algorithm: codes agree but for sums in another
            # order (Cholesky, GEMM) tipping a few roundings
            g, _ = stread.read_st(os.path.join(m.mnt, rel))
            for name in ("model.layers.0.self_attn.q_proj",
                         "model.layers.2.mlp.down_proj"):
                W = src[name + ".weight"]
                qc = stread.gptq_dequant(tc, name, 4, *W.shape)[1]
                qg = stread.gptq_dequant(g, name, 4, *W.shape)[1]
                same = float(np.mean(qc == qg))
                print("  %s: %.4f of codes equal to the CPU's" % (name, same))
                assert same > 0.95, same
        else:
            why = re.search(r"backend: cpu \((.+)\)", log)
            assert why, log
            print("  fallback:", why.group(1))
            assert got == cpu
            assert man["calibration"]["backend"] == "cpu"
            assert layer_lines(m.stderr()) == []        # from the cache
            assert ls.count("gptq_w4_g64") == 1, ls

if __name__ == "__main__":
    run_tests(globals())
