"""ref_phi3.py - float64 numpy oracle of Phi3ForCausalLM (Phi-3, Phi-4-mini).

Written from the semantics of transformers' modeling_phi3.py and its rope
utilities, sharing nothing with quantfs's C:

  * self_attn.qkv_proj holds q, k, v rows in that order; mlp.gate_up_proj
    the gate rows then the up rows: down(up * silu(gate));
  * partial rotary: RoPE (rotate_half) on the first
    int(head_dim * partial_rotary_factor) dimensions of each head, the
    rest passed through;
  * LongRoPE (rope_scaling type "longrope", legacy "su"): inv_freq_i =
    1 / (ext_i * theta^(2i / rot_dim)) with ext the short factors while the
    sequence fits original_max_position_embeddings, the long ones past it;
    cos and sin times attention_factor (given, or sqrt(1 + ln s / ln orig),
    s = max_position_embeddings / orig, 1 when s <= 1);
  * sliding_window: key j is seen from query i when i - window < j <= i;
  * RMSNorm, GQA, tied or separate lm_head.

numpy only.  logits(model_dir, ids [nseq, seqlen]) -> [nseq * seqlen, vocab].
"""
import json
import math
import os

import numpy as np

from stread import read_st


def _rope(cfg, hd, seqlen):
    rot = int(hd * cfg.get("partial_rotary_factor", 1.0))
    base = float(cfg.get("rope_theta", 10000.0))
    rs = cfg.get("rope_scaling") or {}
    expo = np.arange(0, rot, 2, dtype=np.float64) / rot
    ext, af = np.ones(rot // 2), 1.0
    kind = rs.get("rope_type", rs.get("type"))
    if kind in ("longrope", "su"):
        maxpos = cfg["max_position_embeddings"]
        orig = cfg.get("original_max_position_embeddings") or \
            rs.get("original_max_position_embeddings")
        if orig:
            s = maxpos / orig
        else:
            orig, s = maxpos, rs.get("factor", 1.0)
        af = rs.get("attention_factor")
        if af is None:
            af = 1.0 if s <= 1 else math.sqrt(1 + math.log(s) /
                                              math.log(orig))
        key = "long_factor" if seqlen > orig else "short_factor"
        ext = np.array(rs[key], dtype=np.float64)
        assert ext.shape == (rot // 2,), ext.shape
    inv = 1.0 / (ext * base ** expo)
    ang = np.outer(np.arange(seqlen, dtype=np.float64), inv)
    ang = np.concatenate([ang, ang], axis=1)        # [seqlen, rot]
    return rot, np.cos(ang) * af, np.sin(ang) * af


def _apply_rope(x, rot, cos, sin):
    """x [seqlen, nh, hd]: rotate_half on the first rot dims."""
    xr, xp = x[..., :rot], x[..., rot:]
    h = rot // 2
    rh = np.concatenate([-xr[..., h:], xr[..., :h]], axis=-1)
    xr = xr * cos[:, None, :] + rh * sin[:, None, :]
    return np.concatenate([xr, xp], axis=-1)


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def logits(model_dir, ids):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    t, _ = read_st(os.path.join(model_dir, "model.safetensors"))
    W = {k: np.asarray(v, dtype=np.float64) for k, v in t.items()}
    ids = np.asarray(ids)
    nseq, seqlen = ids.shape
    hid = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or hid // nh
    inter = cfg["intermediate_size"]
    eps = cfg.get("rms_norm_eps", 1e-5)
    win = cfg.get("sliding_window")
    rot, cos, sin = _rope(cfg, hd, seqlen)
    i = np.arange(seqlen)
    allowed = i[None, :] <= i[:, None]
    if win:
        allowed &= i[None, :] > i[:, None] - win
    head = W.get("lm_head.weight")
    if cfg.get("tie_word_embeddings") or head is None:
        head = W["model.embed_tokens.weight"]
    out = []
    for s in range(nseq):
        x = W["model.embed_tokens.weight"][ids[s]]
        for l in range(cfg["num_hidden_layers"]):
            p = "model.layers.%d." % l
            h = _rms(x, W[p + "input_layernorm.weight"], eps)
            qkv = h @ W[p + "self_attn.qkv_proj.weight"].T
            q = qkv[:, :nh * hd].reshape(seqlen, nh, hd)
            k = qkv[:, nh * hd:(nh + nkv) * hd].reshape(seqlen, nkv, hd)
            v = qkv[:, (nh + nkv) * hd:].reshape(seqlen, nkv, hd)
            q = _apply_rope(q, rot, cos, sin)
            k = _apply_rope(k, rot, cos, sin)
            o = np.empty((seqlen, nh, hd))
            for hh in range(nh):
                g = hh // (nh // nkv)
                sc = q[:, hh] @ k[:, g].T / math.sqrt(hd)
                sc = np.where(allowed, sc, -np.inf)
                sc = np.exp(sc - sc.max(axis=1, keepdims=True))
                sc /= sc.sum(axis=1, keepdims=True)
                o[:, hh] = sc @ v[:, g]
            x = x + o.reshape(seqlen, nh * hd) @ \
                W[p + "self_attn.o_proj.weight"].T
            h = _rms(x, W[p + "post_attention_layernorm.weight"], eps)
            gu = h @ W[p + "mlp.gate_up_proj.weight"].T
            gate, up = gu[:, :inter], gu[:, inter:]
            x = x + (up * gate / (1 + np.exp(-gate))) @ \
                W[p + "mlp.down_proj.weight"].T
        out.append(_rms(x, W["model.norm.weight"], eps) @ head.T)
    return np.concatenate(out, axis=0)
