#!/usr/bin/python3
"""test_phi3.py - Phi-3 / Phi-4-mini (model_type phi3) end to end.

`quantfs mkmodel --arch phi3` writes a Phi-4-mini-like model (fused
qkv_proj and gate_up_proj, partial_rotary_factor 0.75, LongRoPE); its
config is then varied (long factors, a sliding window, full rotary
without LongRoPE) and quantfs's logits checked against ref_phi3.py, the
numpy float64 oracle.  The mount serves its variants with the fused
tensor names, and llama.cpp (node-llama-cpp) reads its model.gguf.
"""
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import archtest as at  # noqa: E402
import ref_phi3  # noqa: E402

SHAPE = ["--arch", "phi3", "--hidden", "64", "--inter", "128", "--layers",
         "2", "--heads", "4", "--kv-heads", "2", "--vocab", "512"]
_models = {}


def model(tie=True):
    """The generated model (tied: Phi-4-mini's embeddings), made once."""
    key = "tied" if tie else "untied"
    if key not in _models:
        d = os.path.join(at.WORK, key)
        at.mkmodel(d, *(SHAPE + (["--tie"] if tie else [])))
        _models[key] = d
    return _models[key]


def variant_of(src, name, **cfg):
    """A copy of src with config.json keys changed (None: removed)."""
    d = os.path.join(at.WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(src, d)
    p = os.path.join(d, "config.json")
    c = json.load(open(p))
    for k, v in cfg.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    json.dump(c, open(p, "w"), indent=1)
    return d


def test_config_is_phi4_mini_like():
    c = json.load(open(os.path.join(model(), "config.json")))
    assert c["model_type"] == "phi3", c
    assert c["partial_rotary_factor"] == 0.75, c
    rs = c["rope_scaling"]
    assert rs["type"] == "longrope" and len(rs["short_factor"]) == 6, rs
    assert c["tie_word_embeddings"] is True
    t, _ = at.stread.read_st(os.path.join(model(), "model.safetensors"))
    assert t["model.layers.0.self_attn.qkv_proj.weight"].shape == (128, 64)
    assert t["model.layers.1.mlp.gate_up_proj.weight"].shape == (256, 64)
    assert "model.layers.0.self_attn.q_proj.weight" not in t


def test_logits_short_factors():
    ids = at.ids_for(512, 2, 24)
    at.check_logits(model(), ref_phi3.logits, ids, label="phi4-mini-like")


def test_logits_long_factors():
    """Sequences past original_max_position_embeddings: long factors and
    a larger attention factor."""
    d = variant_of(model(), "long", original_max_position_embeddings=16)
    at.check_logits(d, ref_phi3.logits, at.ids_for(512, 1, 24, seed=2),
                    label="long factors")


def test_logits_sliding_window_untied():
    """Phi-3-mini-like: full rotary, no rope scaling, a window, untied."""
    d = variant_of(model(tie=False), "phi3mini", partial_rotary_factor=None,
                   rope_scaling=None, sliding_window=7)
    at.check_logits(d, ref_phi3.logits, at.ids_for(512, 2, 20, seed=3),
                    label="phi3-mini-like")


if __name__ == "__main__":
    try:
        at.run_tests(globals(), needs_fuse=False)
    finally:
        shutil.rmtree(at.WORK, ignore_errors=True)
