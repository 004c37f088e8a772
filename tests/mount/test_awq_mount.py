"""AWQ variants on real FUSE mounts: the AutoAWQ GEMM checkpoint read by an
independent unpacker and compared with _fake, folded norms, the config a
loader reads, per-layer errors against RTN, ReFlip's attention-score
error on the calibration set and on held-out text, and resume after
kill -9 with identical bytes.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
# noqa: E402 below: the harness lives beside this file
import stread  # noqa: E402
from qftest import Mount, mkmodel, run_tests, QUANTFS, sha, \
    SHARED  # noqa: E402

QUANTFS = os.environ.get("QUANTFS", QUANTFS)
WORK = tempfile.mkdtemp(prefix="qfawq.")
SRC = os.path.join(WORK, "models")
GQA = mkmodel(os.path.join(SRC, "gqa"), "--layers", 2, "--heads", 8,
              "--kv-heads", 2, "--seed", 21)
MHA = mkmodel(os.path.join(SRC, "mha"), "--layers", 2, "--heads", 4,
              "--kv-heads", 4, "--seed", 22)
SMALL = ["calib_n=8", "calib_len=64"]
awq_unpack = stread.awq_unpack


def bf16(x):
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def layers(man):
    return {x["name"]: x for x in man["layers"]}


def test_checkpoint_fake_and_config():
    with Mount(SRC, opts=SMALL) as m:
        for model in ("gqa", "mha"):
            d = os.path.join(m.mnt, model)
            assert "awq_w4_g128" in os.listdir(d)
            t, _ = stread.read_st(os.path.join(d, "awq_w4_g128",
                                               "model.safetensors"))
            f, _ = stread.read_st(os.path.join(d, "awq_w4_g128_fake",
                                               "model.safetensors"))
            src, _ = stread.read_st(os.path.join(d, "original",
                                                 "model.safetensors"))
            cfg = json.load(open(os.path.join(d, "awq_w4_g128",
                                              "config.json")))
            qc = cfg["quantization_config"]
            assert qc["quant_method"] == "awq" and qc["version"] == "gemm"
            assert qc["bits"] == 4 and qc["group_size"] == 128
            assert qc["zero_point"] is True
            n = 0
            for name in t:
                if not name.endswith(".qweight"):
                    continue
                p = name[:-len(".qweight")]
                assert p + ".g_idx" not in t
                w, q, z = awq_unpack(t[name], t[p + ".qzeros"],
                                     t[p + ".scales"])
                assert w.shape == src[p + ".weight"].shape
                assert q.max() <= 15 and z.max() <= 15
                # _fake holds exactly these values, rounded to bf16
                assert np.array_equal(bf16(w), f[p + ".weight"]), p
                n += 1
            assert n == 14, n
            for layer in range(2):
                for norm in ("input_layernorm", "post_attention_layernorm"):
                    k = "model.layers.%d.%s.weight" % (layer, norm)
                    assert np.array_equal(t[k], f[k])
                    # scales were folded in: the norm changed
                    assert not np.allclose(t[k], src[k]), k
            man = json.load(open(os.path.join(d, "awq_w4_g128",
                                              "quantization.json")))
            assert man["method"] == "awq"
            la = [x["loss_awq"] for x in man["layers"]]
            lr = [x["loss_rtn"] for x in man["layers"]]
            assert sum(la) < 0.7 * sum(lr), (la, lr)
            assert sum(a < r for a, r in zip(la, lr)) >= 12, (la, lr)
            assert all(0 <= x["alpha"] < 1 for x in man["layers"])


def test_skipped_linears_named_as_modules():
    """A linear the AWQ format cannot hold (in = 192, not a multiple of
    the group) stays in the source dtype, and modules_to_not_convert
    names the module (transformers matches module names, not tensors)."""
    src = os.path.join(WORK, "odd")
    mkmodel(os.path.join(src, "odd"), "--layers", 1, "--heads", 4,
            "--kv-heads", 2, "--hidden", 128, "--inter", 192, "--seed", 9)
    with Mount(src, opts=SMALL) as m:
        v = os.path.join(m.mnt, "odd", "awq_w4_g128")
        cfg = json.load(open(os.path.join(v, "config.json")))
        names = cfg["quantization_config"]["modules_to_not_convert"]
        assert names == ["model.layers.0.mlp.down_proj"], names
        t, _ = stread.read_st(os.path.join(v, "model.safetensors"))
        assert "model.layers.0.mlp.down_proj.weight" in t
        assert "model.layers.0.mlp.down_proj.qweight" not in t
        assert "model.layers.0.mlp.up_proj.qweight" in t


def test_eval_reads_awq_checkpoint():
    """quantfs eval on the packed variant equals eval on _fake to the
    precision of the bf16 rounding, and the mount's outputs load."""
    text = os.path.join(WORK, "text.txt")
    with open(text, "w") as f:
        f.write(("Once upon a time there was a little fox. " * 200))
    with Mount(SRC, opts=SMALL) as m:
        r = [json.loads(subprocess.run(
            [QUANTFS, "eval", os.path.join(m.mnt, "gqa", v), "--text", text,
             "--ctx", "128", "--json"], capture_output=True, text=True,
            check=True).stdout) for v in ("awq_w4_g128", "awq_w4_g128_fake")]
    assert abs(r[0]["nll"] - r[1]["nll"]) < 2e-3, r


def test_reflip_lowers_score_error():
    with Mount(SRC, opts=SMALL) as m:
        d = os.path.join(m.mnt, "gqa")
        man = json.load(open(os.path.join(d, "awq_w4_g128_reflip",
                                          "quantization.json")))
        q = [x for x in man["layers"] if "q_proj" in x["name"]]
        assert len(q) == 2
        for x in q:
            assert x["score_error_after"] < x["score_error_before"], x
        assert "ReFlip: attention-score error" in m.stderr()
        # in layer 0 only q/k changed (later layers see other inputs)
        a, _ = stread.read_st(os.path.join(d, "awq_w4_g128",
                                           "model.safetensors"))
        b, _ = stread.read_st(os.path.join(d, "awq_w4_g128_reflip",
                                           "model.safetensors"))
        for k in a:
            if not k.startswith("model.layers.0."):
                continue
            same = np.array_equal(a[k], b[k])
            if re.search(r"\.(q|k)_proj\.qweight$", k):
                assert not same, k
            elif "q_proj" not in k and "k_proj" not in k:
                assert same, k


def test_kill9_resume_same_bytes():
    d = os.path.join(WORK, "six")
    mkmodel(os.path.join(d, "m"), "--layers", 6, "--hidden", 384,
            "--inter", 1024, "--heads", 6, "--kv-heads", 6, "--seed", 4)
    opts = ["calib_n=16", "calib_len=128"]
    rel = "m/awq_w4_g128_reflip/model.safetensors"
    with Mount(d, opts=opts) as m:
        want = sha(os.path.join(m.mnt, rel))
    cache = tempfile.mkdtemp(prefix="qfcache.")
    m = Mount(d, cache=cache, opts=opts)
    m.__enter__()
    reader = subprocess.Popen(["cat", os.path.join(m.mnt, rel)],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(re.findall(r"layer \d/6 in ", m.stderr())) < 2:
        assert time.time() < deadline and m.proc.poll() is None, m.stderr()
        time.sleep(0.05)
    m.kill9()
    reader.wait(timeout=30)
    done = len(re.findall(r"layer \d/6 in ", m.stderr()))
    assert 2 <= done < 6, m.stderr()
    with Mount(d, cache=cache, opts=opts) as m2:
        assert sha(os.path.join(m2.mnt, rel)) == want
        assert "resuming at layer %d/6" % (done + 1) in m2.stderr()


def test_real_model_quality():
    """tinystories-llama-5m (../shared/data): AWQ beats RTN in perplexity
    on held-out text; ReFlip lowers the held-out attention-score error."""
    base = os.path.join(SHARED, "data")
    model = os.path.join(base, "models", "tinystories-llama-5m")
    calib = os.path.join(base, "text", "tinystories", "calib.txt")
    ev = os.path.join(base, "text", "tinystories", "eval.txt")
    if not os.path.exists(model):
        from qftest import SkipTest
        raise SkipTest("../shared/data is absent")
    held = os.path.join(WORK, "held.txt")
    with open(ev) as f, open(held, "w") as g:
        g.write(f.read()[:60000])        # ~60 windows of 512 tokens
    opts = ["calib=" + calib, "calib_n=32", "calib_len=512"]
    with Mount(os.path.join(base, "models"), opts=opts) as m:
        d = os.path.join(m.mnt, "tinystories-llama-5m")

        def ev_json(*args):
            return json.loads(subprocess.run(
                [QUANTFS, "eval"] + list(args) + ["--json"],
                capture_output=True, text=True, check=True).stdout)
        ppl = {v: ev_json(os.path.join(d, v), "--text", held)["ppl"]
               for v in ("rtn_w4_g128", "awq_w4_g128")}
        sc = {v: ev_json(os.path.join(d, v), "--text", ev, "--scores-vs",
                         model)["mean"]
              for v in ("awq_w4_g128", "awq_w4_g128_reflip")}
    print("  ppl %s, held-out score error %s" % (ppl, sc))
    assert ppl["awq_w4_g128"] < ppl["rtn_w4_g128"], ppl
    assert sc["awq_w4_g128_reflip"] < sc["awq_w4_g128"], sc


run_tests(globals())
