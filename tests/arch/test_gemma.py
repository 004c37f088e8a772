#!/usr/bin/python3
"""test_gemma.py - Gemma 2 and Gemma 3 (text) end to end.

Two tiny generated models (`quantfs mkmodel --arch gemma2 | gemma3_text`,
hidden 64, window 16; gemma3 with 6 layers so that layer 5 is global):

  * quantfs's logits (qf_tf_logits) against the float64 numpy oracle
    ref_gemma.py over 40 tokens (past the window), on the models as
    generated and on edited configs (a query_pre_attn_scalar other than
    head_dim, soft-caps that bite, an explicit layer_types list or none,
    no rope_scaling, transformers 5's rope_parameters per layer type);
    the window and the soft-caps must change the logits;
  * llama.cpp (node-llama-cpp) on the mount's original/model.gguf: its
    next-token distributions against softmax(quantfs's logits);
  * the calibrated variants (gptq, awq, brecq, mixed) listed and served,
    their `quantfs eval` perplexity finite, GPTQ, AWQ and BRECQ closer to
    the source than RTN at the same bits (mean KL of the next-token
    distributions on text sampled from the source), and llama.cpp's
    perplexity on gemma2's gptq_w4_g32_sym within 1% of `quantfs eval`.
"""
import contextlib
import math
import os
import shutil

import numpy as np

import archtest
from archtest import Mount, mkmodel, run_tests, WORK
import ref_gemma

DIMS = ["--hidden", 64, "--inter", 192, "--heads", 4, "--kv-heads", 2,
        "--head-dim", 32, "--vocab", 512, "--tie"]
MODELS = {"g2": ("gemma2", 2), "g3": ("gemma3_text", 6)}
SRC = os.path.join(WORK, "src")
SMALL = ["calib_n=8", "calib_len=64"]


def model(name):
    d = os.path.join(SRC, name)
    if not os.path.exists(d):
        arch, layers = MODELS[name]
        mkmodel(d, "--arch", arch, "--layers", layers, *DIMS)
    return d


@contextlib.contextmanager
def mounted():
    """A mount of SRC, its cache and mount point removed afterwards."""
    m = Mount(SRC, opts=SMALL)
    try:
        with m:
            yield m
    finally:
        shutil.rmtree(m.tmp, ignore_errors=True)


def edited(name, tag, **keys):
    """A copy of model name with config.json keys replaced (None: drop)."""
    return archtest.with_config(model(name), name + "-" + tag, **keys)


def sample(src, nseq=4, n=40, seed=5):
    """nseq sequences of n tokens drawn from src (BOS first): text the
    model itself finds likely, like the calibration set."""
    rng = np.random.default_rng(seed)
    ids = np.ones((nseq, 1), dtype=np.int32)
    for _ in range(n - 1):
        lg = archtest.ours(src, ids).reshape(nseq, ids.shape[1], -1)
        p = archtest.softmax(lg[:, -1])
        nxt = [rng.choice(p.shape[1], p=row / row.sum()) for row in p]
        ids = np.concatenate([ids, np.array(nxt, np.int32)[:, None]], 1)
    return ids


def mean_kl(src, variant, ids):
    """Mean KL(src || variant) of the next-token distributions on ids."""
    p = archtest.softmax(archtest.ours(src, ids))
    q = archtest.softmax(archtest.ours(variant, ids))
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def test_logits_vs_numpy():
    ids = archtest.ids_for(512, 2, 40)
    for name in MODELS:
        archtest.check_logits(model(name), ref_gemma.ref_logits, ids)
    alt = ["full_attention", "sliding_attention"] * 3
    for d in (edited("g2", "caps", query_pre_attn_scalar=24,
                     attn_logit_softcapping=0.5, final_logit_softcapping=2,
                     sliding_window=8),
              edited("g3", "types", layer_types=alt, rope_scaling=None,
                     sliding_window=5, query_pre_attn_scalar=20),
              edited("g3", "pattern", layer_types=None,
                     sliding_window_pattern=3),
              edited("g3", "tf5", rope_theta=None, rope_scaling=None,
                     rope_local_base_freq=None, rope_parameters={
                         "full_attention": {"rope_type": "linear",
                                            "factor": 4.0,
                                            "rope_theta": 50000.0},
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": 2000.0}})):
        archtest.check_logits(d, ref_gemma.ref_logits, ids)
    # what the edits touch shows in the logits
    base = archtest.ours(model("g2"), ids)
    for d in (edited("g2", "nowin", sliding_window=4096),
              edited("g2", "nocap", attn_logit_softcapping=None,
                     final_logit_softcapping=None)):
        gap = float(np.abs(archtest.ours(d, ids) - base).max())
        print("  %s: max |logit change| %.3g" % (os.path.basename(d), gap))
        assert gap > 1e-3, gap


def test_llama_cpp_distributions():
    archtest.need_client()
    ids = archtest.ids_for(512, 1, 64, seed=3)[0]
    ids[0] = 1                                      # BOS
    for name in MODELS:
        model(name)
    with mounted() as m:
        for name in MODELS:
            archtest.check_gguf_probs(
                os.path.join(m.mnt, name, "original", "model.gguf"),
                model(name), ids, tol=1e-2, label=name)


def test_calibrated_variants():
    for name in MODELS:
        model(name)
    with mounted() as m:
        for name in MODELS:
            d = os.path.join(m.mnt, name)
            ls = os.listdir(d)
            for v in ("gptq_w4_g32_sym", "awq_w4_g128", "brecq_w4_g64_attn6",
                      "mixed_static", "rtn_w4_g32_sym", "kq4_k_m"):
                assert v in ls, (name, v, ls)
            ppl = {}
            for v in ("gptq_w3_g128", "awq_w4_g128", "brecq_w4_g64_attn6") + \
                    (("mixed_static",) if name == "g2" else ()):
                ppl[v] = archtest.eval_json(os.path.join(d, v),
                                            archtest.TEXT)["ppl"]
                assert math.isfinite(ppl[v]) and ppl[v] > 1, (v, ppl[v])
            print("  %s ppl: %s" % (name, ", ".join(
                "%s %.4g" % kv for kv in sorted(ppl.items()))))
            # a random model's perplexity on English is noise: quality is
            # the distance to the source's distributions (mean KL) on
            # sequences sampled from the source
            ids = sample(model(name))
            kl = {v: mean_kl(model(name), os.path.join(d, v), ids)
                  for v in ("rtn_w3_g128", "gptq_w3_g128", "rtn_w4_g128",
                            "awq_w4_g128", "brecq_w4_g64_attn6")}
            print("  %s mean KL(source || variant): %s" % (name, ", ".join(
                "%s %.2e" % kv for kv in sorted(kl.items()))))
            assert kl["gptq_w3_g128"] < kl["rtn_w3_g128"], kl
            assert kl["awq_w4_g128"] < kl["rtn_w4_g128"], kl
            assert kl["brecq_w4_g64_attn6"] < kl["rtn_w4_g128"], kl
        # g3's GGUF is checked by test_llama_cpp_distributions; one
        # quantized view is enough here (each llama.cpp run costs seconds)
        archtest.check_gguf_ppl(os.path.join(m.mnt, "g2"), "gptq_w4_g32_sym",
                                label="g2")


if __name__ == "__main__":
    try:
        run_tests(globals())
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
