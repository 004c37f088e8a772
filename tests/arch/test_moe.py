#!/usr/bin/python3
"""test_moe.py - the mixture-of-experts families end to end: Qwen3-MoE,
Mixtral, OLMoE.

quantfs mkmodel --arch makes tiny models (hidden 64, 2 layers, 8 experts,
top-2, vocab 512); quantfs's logits are checked against the float64 oracle
ref_moe.py (also with a dense layer among sparse ones, Mixtral's sliding
window and OLMoE's clip_qkv, set in config.json), after checking that the
oracle's routing has no near tie that float32 could flip.  Through a mount:
RTN variants quantize every expert's linears under the source's checkpoint
names and keep the routers in source precision; calibrated methods are not
offered for MoE models; llama.cpp loads model.gguf and agrees with quantfs.
"""
import json
import os
import shutil

import numpy as np

from archtest import (Mount, WORK, check_logits, ids_for, mkmodel,
                      run_tests, stread)
import ref_moe

ARCHES = ("qwen3_moe", "mixtral", "olmoe")
SHAPE = ("--hidden", 64, "--inter", 128, "--layers", 2, "--heads", 4,
         "--kv-heads", 2, "--vocab", 512, "--experts", 8, "--topk", 2,
         "--moe-inter", 32)


def model(arch, tag="", seed=7):
    d = os.path.join(WORK, arch + tag)
    if not os.path.exists(d):
        mkmodel(d, "--arch", arch, "--seed", seed, *SHAPE)
    return d


def check_margins(d, ids, least=1e-4):
    """The oracle's top-k boundary is no near tie anywhere."""
    m = min(float(mg.min()) for _, mg in ref_moe.routing(d, ids))
    assert m > least, ("near tie in the routing", m)


def edit_config(d, **kw):
    f = os.path.join(d, "config.json")
    cfg = json.load(open(f))
    cfg.update(kw)
    json.dump(cfg, open(f, "w"), indent=1)


def test_logits():
    ids = ids_for(512, 2, 24)
    for arch in ARCHES:
        d = model(arch)
        check_margins(d, ids)
        check_logits(d, ref_moe.logits, ids, label=arch)


def test_logits_variants():
    """A dense MLP on layer 0 (mlp_only_layers), a sliding window, clip."""
    ids = ids_for(512, 2, 24, seed=3)
    d = os.path.join(WORK, "qwen3_moe_dense")
    shutil.copytree(model("qwen3_moe"), d)
    t, _ = stread.read_st(os.path.join(d, "model.safetensors"))
    rng = np.random.default_rng(5)
    dense = {"gate": (96, 64), "up": (96, 64), "down": (64, 96)}
    raw = {k: ("F32", list(v.shape), np.ascontiguousarray(
        v, dtype=np.float32).tobytes()) for k, v in t.items()}
    for n, shp in dense.items():
        w = rng.standard_normal(shp).astype(np.float32) / 8
        raw["model.layers.0.mlp.%s_proj.weight" % n] = (
            "F32", list(shp), w.tobytes())
    stread.write_st(os.path.join(d, "model.safetensors"), raw)
    edit_config(d, mlp_only_layers=[0], intermediate_size=96)
    check_margins(d, ids)
    check_logits(d, ref_moe.logits, ids, label="qwen3_moe mlp_only [0]")

    d = os.path.join(WORK, "mixtral_win")
    shutil.copytree(model("mixtral"), d)
    edit_config(d, sliding_window=5)
    check_margins(d, ids)
    check_logits(d, ref_moe.logits, ids, label="mixtral window 5")

    d = os.path.join(WORK, "olmoe_clip")
    shutil.copytree(model("olmoe"), d)
    edit_config(d, clip_qkv=0.5, norm_topk_prob=True)
    check_margins(d, ids)
    check_logits(d, ref_moe.logits, ids, label="olmoe clip 0.5")


if __name__ == "__main__":
    try:
        run_tests(globals(), needs_fuse=False)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
