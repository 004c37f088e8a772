"""Integration tests of the configurable LM head and attention bits
(_head<h>, _attn<a>; issue #24 point 4) on real FUSE mounts.

What a user of these names relies on: lm_head served in the GPTQ checkpoint
format at h bits (GPTQModel's `lm_head: true`), a tied source untied (the
embedding kept as it was, config tie_word_embeddings false), `quantfs eval`
computing with the quantized head (its perplexity equals a float64 numpy
forward of the dequantized checkpoint, tests/unit/forward_ref.py), the
attention linears at a bits, GGUF views typing output.weight to match, and
a clear refusal where a method has no quantized head.  The checkpoints are
decoded here with numpy (stread.py), not with quantfs's code.
"""
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
import forward_ref  # noqa: E402
import ggufnp  # noqa: E402
import stread  # noqa: E402
from qftest import Mount, mkmodel, qf, run_tests, SHARED, \
    SkipTest  # noqa: E402

WORK = tempfile.mkdtemp(prefix="qfhead.")
SRC = os.path.join(WORK, "models")
mkmodel(os.path.join(SRC, "tiny"), "--layers", 2, "--seed", 5)
mkmodel(os.path.join(SRC, "tied"), "--layers", 2, "--seed", 6, "--tie")
SMALL = ["calib_n=8", "calib_len=64", "brecq_iters=5"]
CACHE = os.path.join(WORK, "cache")	# shared: each variant made once
CTX = 64
TEXT = os.path.join(WORK, "text.txt")
with open(TEXT, "wb") as f:
    f.write(b"Once upon a time there was a little cat who liked to nap in "
            b"the sun. One day the cat saw a bird and ran after it, but "
            b"the bird flew away.\n" * 3)


def source(model):
    return stread.read_st(os.path.join(SRC, model, "model.safetensors"))[0]


def served(m, model, variant):
    d = os.path.join(m.mnt, model, variant)
    t = stread.read_st(os.path.join(d, "model.safetensors"))[0]
    return d, t, json.load(open(os.path.join(d, "config.json")))


def head_source(src):
    return src.get("lm_head.weight", src["model.embed_tokens.weight"])


def grid_err(W, deq, s, g):
    """max |W - deq| over half the step of each weight's group: <= 1 on
    the grid of round to nearest."""
    step = s[g].T.astype(np.float64)                     # [out, in]
    return np.max(np.abs(W.astype(np.float64) - deq) / (0.5 * step))


def dequant_all(t, _src):
    """Every GPTQ (or AWQ GEMM: no g_idx) linear of the checkpoint t as
    an fp32 .weight (the width from qweight's rows), the rest as served."""
    w = {}
    for k, a in t.items():
        if k.endswith(".qweight") and k[:-8] + ".g_idx" not in t:
            p = k[:-8]
            w[p + ".weight"] = stread.awq_unpack(a, t[p + ".qzeros"],
                                                 t[p + ".scales"])[0]
        elif k.endswith(".qweight"):
            p = k[:-8]
            in_f = t[p + ".g_idx"].shape[0]
            bits = a.shape[0] * 32 // in_f
            out_f = t[p + ".scales"].shape[1]
            if bits in (2, 4, 8):
                w[p + ".weight"] = stread.gptq_dequant(t, p, bits, out_f,
                                                       in_f)[0]
        elif not k.endswith((".qzeros", ".scales", ".g_idx")):
            w[k] = a.astype(np.float32)
    return w


def numpy_ppl(tensors, cfg, text):
    """quantfs eval's protocol in float64: chunks of CTX - 1 tokens after
    BOS, every chunk token predicted once (the byte tokenizer: 3 + b)."""
    d = tempfile.mkdtemp(prefix="np.", dir=WORK)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    forward_ref.write_safetensors(os.path.join(d, "model.safetensors"),
                                  tensors, "F32")
    model, ids, nll = forward_ref.Model(d), [3 + b for b in text], 0.0
    for seq in ([1] + ids[i:i + CTX - 1]
                for i in range(0, len(ids), CTX - 1)):
        z = model.sequence(np.array(seq), {})[:-1]     # predicts seq[1:]
        z = z - z.max(-1, keepdims=True)
        nll += np.sum(np.log(np.exp(z).sum(-1)) -
                      z[np.arange(len(z)), seq[1:]])
    return math.exp(nll / len(ids))


def eval_ppl(d):
    return json.loads(qf("eval", d, "--text", TEXT, "--ctx", CTX,
                         "--json").stdout)["ppl"]


def test_head_checkpoint_untied_and_tied():
    with Mount(SRC, cache=CACHE, opts=SMALL) as m:
        for model in ("tiny", "tied"):
            src = source(model)
            H = head_source(src)
            for v, bits in (("rtn_w4_g64_head8", 8),
                            ("gptq_w4_g128_head4", 4)):
                d, t, cfg = served(m, model, v)
                assert "lm_head.weight" not in t, sorted(t)
                deq, q, z, s, g = stread.gptq_dequant(t, "lm_head", bits,
                                                      *H.shape)
                assert q.max() < 2 ** bits
                rel = np.sum((H - deq) ** 2) / np.sum(H ** 2)
                if v.startswith("rtn"):
                    # exactly round to nearest on the head's own grid
                    stread.check_rtn(t, {"lm_head.weight": H},
                                     "lm_head.weight", bits,
                                     int(v.split("_g")[1].split("_")[0]),
                                     False)
                else:
                    # GPTQ moves weights, on its grid, a few steps at most
                    assert grid_err(H, deq, s, g) < 8 and rel < 0.05, \
                        (v, rel)
                # the embedding as it was; untied, the head its own
                assert np.array_equal(t["model.embed_tokens.weight"],
                                      src["model.embed_tokens.weight"])
                assert cfg["tie_word_embeddings"] is False
                qc = cfg["quantization_config"]
                assert qc["lm_head"] is True and qc["bits"] == 4, qc
                if bits != 4:
                    assert qc["dynamic"]["+:^lm_head$"] == {"bits": bits}
                man = json.load(open(os.path.join(d, "quantization.json")))
                lay = {x["name"]: x for x in man["layers"]}
                if v.startswith("gptq"):
                    # GPTQ's output error on the calibration tokens
                    h = lay["lm_head.weight"]
                    assert 0 < h["loss_gptq"] < h["loss_rtn"], h
                else:
                    assert "lm_head.weight" in lay
            # the names without _head are as before: head kept, tie kept
            d, t, cfg = served(m, model, "gptq_w4_g128")
            assert "lm_head.qweight" not in t
            assert "lm_head" not in cfg["quantization_config"]
            assert cfg.get("tie_word_embeddings", False) == (model == "tied")


def test_eval_uses_the_quantized_head():
    text = open(TEXT, "rb").read()
    with Mount(SRC, cache=CACHE, opts=SMALL) as m:
        for model in ("tiny", "tied"):
            ppl = {}
            for v in ("gptq_w4_g128", "gptq_w4_g128_head4"):
                d, t, cfg = served(m, model, v)
                ppl[v] = eval_ppl(d)
                if model == "tied" and v == "gptq_w4_g128":
                    continue	# (numpy: the head variants of both)
                ref = numpy_ppl(dequant_all(t, None), cfg, text)
                print("  %s/%s: eval %.6f, numpy %.6f" % (model, v, ppl[v],
                                                          ref))
                assert abs(ppl[v] - ref) <= 2e-4 * ref, (v, ppl[v], ref)
            # the head really is used: a 4-bit head changes the result
            assert abs(ppl["gptq_w4_g128_head4"] / ppl["gptq_w4_g128"]
                       - 1) > 1e-5, ppl


def test_attention_bits():
    with Mount(SRC, cache=CACHE, opts=SMALL) as m:
        src = source("tiny")
        for v in ("rtn_w4_g128_attn8", "gptq_w8_g128_attn4_head6"):
            w, a = (4, 8) if "_w4" in v else (8, 4)
            d, t, cfg = served(m, "tiny", v)
            lay = {x["name"]: x for x in json.load(open(os.path.join(
                d, "quantization.json")))["layers"]}
            for name, W in src.items():
                if W.ndim != 2 or "layers." not in name:
                    continue
                p = name[:-7]
                bits = a if "self_attn." in name else w
                assert t[p + ".qweight"].shape[0] == W.shape[1] * bits // 32
                if v.startswith("rtn"):     # exactly RTN at that width
                    stread.check_rtn(t, src, name, bits, 128, False)
                else:   # GPTQ: near W (garbage would be ~1), and
                    # below RTN's output error at that width
                    deq = stread.gptq_dequant(t, p, bits, *W.shape)[0]
                    assert np.sum((W - deq) ** 2) < 0.25 * np.sum(W ** 2)
                    h = lay[name]
                    assert 0 < h["loss_gptq"] < h["loss_rtn"], (name, h)
            qc = cfg["quantization_config"]
            if v.endswith("head6"):
                # 6 bits: the 8-bit container, values on the 6-bit grid
                assert t["lm_head.qweight"].shape[0] == 256 * 8 // 32
                deq, q = stread.gptq_dequant(t, "lm_head", 8, 512, 256)[:2]
                assert q.max() - q.min() < 64
            else:
                assert "lm_head.weight" in t
            assert qc["dynamic"], qc


def test_brecq_head():
    """BRECQ's head is GPTQ's (after the last block), in the same format."""
    with Mount(SRC, cache=CACHE, opts=SMALL) as m:
        H = head_source(source("tied"))
        d, t, cfg = served(m, "tied", "brecq_w4_g64_attn6_head8")
        assert t["lm_head.qweight"].shape[0] == H.shape[1] * 8 // 32
        deq = stread.gptq_dequant(t, "lm_head", 8, *H.shape)[0]
        assert np.sum((H - deq) ** 2) < 1e-3 * np.sum(H ** 2)
        assert cfg["tie_word_embeddings"] is False
        assert cfg["quantization_config"]["lm_head"] is True
        lay = {x["name"]: x for x in json.load(open(os.path.join(
            d, "quantization.json")))["layers"]}
        assert "lm_head.weight" in lay, sorted(lay)


def test_awq_head():
    """awq_w4_g128_head4: the head in the AWQ GEMM packing, its input
    scales s in model.norm (served norm = source norm / s), so that the
    dequantized head is the source head times s per input column; the
    head's AWQ error below RTN's; a tied source untied; quantfs eval of
    the variant equals a float64 numpy forward of the checkpoint."""
    text, alphas = open(TEXT, "rb").read(), []
    with Mount(SRC, cache=CACHE, opts=SMALL) as m:
        for model in ("tiny", "tied"):
            src = source(model)
            H = head_source(src).astype(np.float64)
            d, t, cfg = served(m, model, "awq_w4_g128_head4")
            assert "lm_head.weight" not in t, sorted(t)
            deq, q, z = stread.awq_unpack(t["lm_head.qweight"],
                                          t["lm_head.qzeros"],
                                          t["lm_head.scales"])
            assert deq.shape == H.shape and q.max() <= 15
            n0 = src["model.norm.weight"].astype(np.float64)
            s = n0 / t["model.norm.weight"].astype(np.float64)
            # the function the model computes: head(norm x) unchanged
            # but for the rounding (4 bits on an AWQ-scaled grid: ~4 %;
            # a wrong fold or packing would be ~1 or more)
            rel = np.sum((deq / s - H) ** 2) / np.sum(H ** 2)
            assert rel < 0.1, rel
            assert np.array_equal(t["model.embed_tokens.weight"],
                                  src["model.embed_tokens.weight"])
            assert cfg["tie_word_embeddings"] is False
            qc = cfg["quantization_config"]
            assert qc["quant_method"] == "awq" and qc["lm_head"] is True
            lay = {x["name"]: x for x in json.load(open(os.path.join(
                d, "quantization.json")))["layers"]}
            h = lay["lm_head.weight"]
            assert 0 < h["loss_awq"] < h["loss_rtn"], h
            # alpha 0 (the tied source's): s = 1, else s folded in
            assert (np.ptp(s) > 0.01) == (h["alpha"] > 0), (h, s)
            alphas.append(h["alpha"])
            ppl = eval_ppl(d)
            ref = numpy_ppl(dequant_all(t, None), cfg, text)
            print("  %s: eval %.6f, numpy %.6f" % (model, ppl, ref))
            assert abs(ppl - ref) <= 2e-4 * ref, (ppl, ref)
            if model == "tiny":     # _fake: the same head and norm, fp
                f = served(m, model, "awq_w4_g128_head4_fake")[1]
                assert np.array_equal(f["model.norm.weight"],
                                      t["model.norm.weight"])
                assert np.allclose(f["lm_head.weight"].astype(np.float32),
                                   deq, rtol=1 / 128, atol=1e-6)
            # the plain name: the norm and the head as before
            t0 = served(m, model, "awq_w4_g128")[1]
            assert np.array_equal(t0["model.norm.weight"],
                                  src["model.norm.weight"])
    assert max(alphas) > 0, alphas


def test_awq_head_gemma():
    """Gemma computes with (1 + w): the scales fold as (1 + w) / s - 1."""
    d = os.path.join(SRC, "gemma")
    mkmodel(d, "--arch", "gemma2", "--layers", 2, "--hidden", 64, "--inter",
            192, "--heads", 4, "--kv-heads", 2, "--head-dim", 32, "--tie",
            "--seed", 5)    # (whose head's alpha is 0.5, not 0)
    with Mount(SRC, cache=CACHE, opts=SMALL) as m:
        src = source("gemma")
        H = head_source(src).astype(np.float64)
        t = served(m, "gemma", "awq_w4_g32_head4")[1]
        deq = stread.awq_unpack(t["lm_head.qweight"], t["lm_head.qzeros"],
                                t["lm_head.scales"])[0]
        w0 = src["model.norm.weight"].astype(np.float64)
        w1 = t["model.norm.weight"].astype(np.float64)
        s = (1 + w0) / (1 + w1)
        rel = np.sum((deq / s - H) ** 2) / np.sum(H ** 2)
        # w / s (a fold that forgets the 1 +) would not match the head
        s_bad = w0 / w1
        bad = np.sum((deq / s_bad - H) ** 2) / np.sum(H ** 2)
        print("  gemma2: s in [%.3f, %.3f], rel %.4f (w / s: %.3g)" % (
            s.min(), s.max(), rel, bad))
        assert np.ptp(s) > 0.01 and rel < 0.1 and bad > 10 * rel, \
            (rel, bad)


def test_gguf_output_type():
    with Mount(SRC, cache=CACHE, opts=SMALL) as m:
        for v, out_t, attn_t in (("rtn_w4_g32_head8_sym", 8, 2),
                                 ("gptq_w4_g32_attn8_head4_sym", 2, 8)):
            d = os.path.join(m.mnt, "tiny", v)
            g = ggufnp.File(os.path.join(d, "model.gguf"))
            ty = {n: t for n, (t, _, _) in g.tensors.items()}
            assert ty["output.weight"] == out_t, ty     # Q8_0 / Q4_0
            assert ty["blk.0.attn_q.weight"] == attn_t
            assert ty["blk.0.ffn_down.weight"] == 2
            t = stread.read_st(os.path.join(d, "model.safetensors"))[0]
            bits = 8 if out_t == 8 else 4
            deq = stread.gptq_dequant(t, "lm_head", bits, 512, 256)[0]
            hf = ggufnp.to_hf(g)
            if v.startswith("gptq"):    # repacked: the checkpoint's numbers
                assert np.allclose(hf["lm_head.weight"], deq, atol=1e-6)
            else:   # RTN: the source on ggml's finer grid, never farther
                H = head_source(source("tiny"))
                e_gguf = np.sum((hf["lm_head.weight"] - H) ** 2)
                assert 0 < e_gguf <= np.sum((deq - H) ** 2), v
        # a tied source's quantized head: no GGUF view (yet)
        assert "model.gguf" not in os.listdir(
            os.path.join(m.mnt, "tied", "rtn_w4_g32_head8_sym"))


def test_refused_names():
    with Mount(SRC, cache=CACHE, opts=SMALL) as m:
        for v in ("awq_w4_g128_head8", "awq_w4_g128_head6",
                  "awq_w4_g128_attn8",
                  "mixed_static_head8", "gptq_w4_g128_attn4",
                  "gptq_w4_g128_head5", "rtn_w4_g128_head16"):
            assert not os.path.exists(os.path.join(m.mnt, "tiny", v)), v
        listed = os.listdir(os.path.join(m.mnt, "tiny"))
        assert "gptq_w4_g128_head8" in listed, listed


def test_real_model_head8():
    """The 5M TinyStories Llama: a GPTQ 8-bit head costs next to nothing
    in perplexity (the README's table has the full figures)."""
    models = os.path.join(SHARED, "data", "models")
    text = os.path.join(SHARED, "data", "text", "tinystories")
    if not os.path.isdir(os.path.join(models, "tinystories-llama-5m")):
        raise SkipTest("no ../shared/data")
    ev = os.path.join(WORK, "eval.txt")
    with open(os.path.join(text, "eval.txt"), "rb") as f:
        open(ev, "wb").write(f.read(12000))
    with Mount(models, opts=["calib=" + os.path.join(text, "calib.txt"),
                             "calib_n=8", "calib_len=128"]) as m:
        ppl, size = {}, {}
        for v in ("gptq_w4_g128", "gptq_w4_g128_head8"):
            d = os.path.join(m.mnt, "tinystories-llama-5m", v)
            e = json.loads(qf("eval", d, "--text", ev, "--ctx", 256,
                              "--json").stdout)
            ppl[v], size[v] = e["ppl"], e["weight_bytes"]
        print("  5m:", ppl, size)
        assert ppl["gptq_w4_g128_head8"] < 1.003 * ppl["gptq_w4_g128"], ppl
        assert size["gptq_w4_g128"] - size["gptq_w4_g128_head8"] > 100000


if __name__ == "__main__":
    try:
        run_tests(globals())
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
