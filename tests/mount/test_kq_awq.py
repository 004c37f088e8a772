"""kq _awq (issue #24): AWQ's scales folded into a k-quant view before
GPTQ encodes it on llama.cpp's grids (fs/job_layer.c kq_awq, fs/gguf_kq.c
fold_of).  A scale s of a group's input multiplies the group's columns
and divides what feeds it: attn_norm for q/k/v, v's rows for o (heads ==
kv heads), ffn_norm for gate/up, up's rows for down.

Checked in float64 numpy on a generated Llama with as many kv heads as
heads (so all four folds happen), against its source weights: the scales
read back from the served norms (attn_norm, ffn_norm) and fitted from the
served o / down columns must be far from 1, and undoing them must give
weights as close to the source as the plain kq6_k view's (and closer than
not undoing them): v's and up's rows check o's and down's scales
independently of the fit.  Tensors no scale touches are the plain view's
bytes, and llama.cpp (node-llama-cpp) loads the file.
"""
import os
import re
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ggufnp  # noqa: E402
import stread  # noqa: E402
from qftest import Mount, mkmodel, run_tests, llama_reads  # noqa: E402

WORK = tempfile.mkdtemp(prefix="qf-kqawq.")
SRC = os.path.join(WORK, "src")
L = "model.layers.%d."


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def col_scale(served, w):
    """Least-squares s with served[:, j] = s[j] w[:, j]."""
    return np.sum(served * w, axis=0) / np.sum(w * w, axis=0)


def test_kq_awq_folds():
    mkmodel(os.path.join(SRC, "m"), "--hidden", 256, "--inter", 512,
            "--layers", 2, "--heads", 4, "--kv-heads", 4, "--head-dim", 64,
            "--seed", 3)
    src, _ = stread.read_st(os.path.join(SRC, "m", "model.safetensors"))
    src = {k: v.astype(np.float64) for k, v in src.items()}
    with Mount(SRC, opts=["calib_n=16", "calib_len=128"]) as m:
        d = os.path.join(m.mnt, "m")
        files = {v: ggufnp.File(os.path.join(d, v, "model.gguf"))
                 for v in ("kq6_k", "kq6_k_awq")}
        hf = {v: {k: w.astype(np.float64)
                  for k, w in ggufnp.to_hf(g).items()}
              for v, g in files.items()}
        alphas = re.findall(r"kq6_k_awq: layer \d/2 .*AWQ alpha (.*), eta",
                            m.stderr())
        llama_reads([os.path.join(d, "kq6_k_awq", "model.gguf")])
    print("  alphas logged:", alphas)
    assert len(alphas) == 2, m.stderr()
    plain, awq = hf["kq6_k"], hf["kq6_k_awq"]
    spread = {"q/k/v": 1, "o": 1, "gate/up": 1, "down": 1}
    for layer in range(2):
        p = L % layer
        s0 = src[p + "input_layernorm.weight"] / \
            awq[p + "input_layernorm.weight"]
        s2 = src[p + "post_attention_layernorm.weight"] / \
            awq[p + "post_attention_layernorm.weight"]
        s1 = col_scale(awq[p + "self_attn.o_proj.weight"],
                       src[p + "self_attn.o_proj.weight"])
        s3 = col_scale(awq[p + "mlp.down_proj.weight"],
                       src[p + "mlp.down_proj.weight"])
        for g, s in zip(spread, (s0, s1, s2, s3)):
            assert np.all(s > 0), (layer, g)
            spread[g] = max(spread[g], float(s.max() / s.min()))
        # each linear with its scales undone: (rows, columns) divisors
        undo = {"self_attn.q_proj": (1, s0), "self_attn.k_proj": (1, s0),
                "self_attn.v_proj": (1 / s1, s0),
                "self_attn.o_proj": (1, s1), "mlp.gate_proj": (1, s2),
                "mlp.up_proj": (1 / s3, s2), "mlp.down_proj": (1, s3)}
        for lin, (r, c) in undo.items():
            name = p + lin + ".weight"
            w = src[name]
            eff = awq[name] / np.reshape(r, (-1, 1)) / np.reshape(c, (1, -1))
            e_awq, e_raw = rel(eff, w), rel(awq[name], w)
            e_plain = rel(plain[name], w)
            print("  layer %d %s: scales undone %.5f, kept %.5f, plain "
                  "kq6_k %.5f" % (layer, lin, e_awq, e_raw, e_plain))
            assert e_awq < 1.5 * e_plain + 1e-4, (name, e_awq, e_plain)
            assert e_awq < 0.5 * e_raw, (name, e_awq, e_raw)
    print("  scale spreads (max / min):", spread)
    for g, sp in spread.items():
        assert sp > 1.05, ("no scales folded into", g, spread)
    # what no scale reaches is the plain view's, byte for byte
    for t in ("token_embd.weight", "output.weight", "output_norm.weight"):
        a, b = (f.decode(t) for f in (files["kq6_k"], files["kq6_k_awq"]))
        assert np.array_equal(a, b), t


try:
    run_tests(globals())
finally:
    shutil.rmtree(WORK, ignore_errors=True)
