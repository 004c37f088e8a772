"""ref_gemma.py - float64 numpy oracle of Gemma2ForCausalLM and
Gemma3ForCausalLM (text), written from the semantics of the transformers
modeling code (modeling_gemma2.py / modeling_gemma3.py), sharing nothing
with quantfs's C.

What it computes, per the transformers modules:
  * embedding times sqrt(hidden_size) (Gemma's normalizer);
  * Gemma RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w);
  * each decoder layer:
        r = x; h = input_layernorm(x); h = attention(h)
        h = post_attention_layernorm(h); x = r + h
        r = x; h = pre_feedforward_layernorm(x); h = mlp(h)
        h = post_feedforward_layernorm(h); x = r + h
  * attention: q/k/v projections, Gemma 3's per-head q_norm/k_norm
    ((1 + w) too) before rotate_half RoPE, scores q k^T *
    query_pre_attn_scalar^-0.5, Gemma 2's tanh soft-cap
    (attn_logit_softcapping) before the causal / sliding-window mask
    (key j visible to query i when 0 <= i - j < sliding_window on sliding
    layers), softmax, GQA;
  * which layers slide: config "layer_types" when present, else Gemma 2's
    even layers, Gemma 3's all but every sliding_window_pattern-th;
  * RoPE base per layer: Gemma 3's sliding layers rope_local_base_freq
    with no scaling, global layers rope_theta with the linear
    rope_scaling factor (positions / factor); or transformers 5's
    rope_parameters per layer type;
  * MLP: down(gelu_tanh(gate(h)) * up(h));
  * final norm ((1 + w)), lm_head tied to the embedding, then
    final_logit_softcapping: cap * tanh(logits / cap).
"""
import json
import math
import os

import numpy as np

from archtest import stread


def _cfg(model_dir):
    return json.load(open(os.path.join(model_dir, "config.json")))


def _weights(model_dir):
    w, _ = stread.read_st(os.path.join(model_dir, "model.safetensors"))
    return {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}


def _norm(x, w, eps):
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * (1.0 + w)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) *
                                    (x + 0.044715 * x ** 3)))


def _sliding(cfg, layer):
    """Whether layer attends through the sliding window."""
    if not cfg.get("sliding_window"):
        return False
    if cfg.get("layer_types"):
        return cfg["layer_types"][layer] == "sliding_attention"
    if cfg["model_type"] == "gemma2":
        return layer % 2 == 0
    return (layer + 1) % cfg.get("sliding_window_pattern", 6) != 0


def _rope_params(cfg, sliding):
    """(base, linear factor) of a layer.  transformers 5 nests them per
    layer type in rope_parameters; 4.x has rope_theta, rope_scaling and
    Gemma 3's rope_local_base_freq."""
    rp = cfg.get("rope_parameters") or {}
    kind = "sliding_attention" if sliding else "full_attention"
    if kind in rp:
        p = rp[kind]
        lin = p.get("rope_type") == "linear"
        return p["rope_theta"], p["factor"] if lin else 1.0
    if cfg["model_type"] == "gemma3_text" and sliding:
        return cfg.get("rope_local_base_freq", 10000.0), 1.0
    rs = cfg.get("rope_scaling") or {}
    lin = rs.get("rope_type", rs.get("type")) == "linear"
    return cfg.get("rope_theta", 10000.0), rs["factor"] if lin else 1.0


def _rope(cfg, sliding, seqlen, hd):
    """cos, sin [seqlen, hd] (rotate_half layout) for a layer."""
    base, factor = _rope_params(cfg, sliding)
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    pos = np.arange(seqlen, dtype=np.float64) / factor
    ang = np.outer(pos, inv)
    ang = np.concatenate([ang, ang], axis=1)
    return np.cos(ang), np.sin(ang)


def _rot(x, cos, sin):
    """x [seqlen, heads, hd] rotated (rotate_half)."""
    h = x.shape[-1] // 2
    rh = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    return x * cos[:, None, :] + rh * sin[:, None, :]


def _attention(cfg, w, p, h, layer):
    seqlen, hidden = h.shape
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or hidden // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(seqlen, nh, hd)
    k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(seqlen, nkv, hd)
    v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(seqlen, nkv, hd)
    if p + "self_attn.q_norm.weight" in w:
        q = _norm(q, w[p + "self_attn.q_norm.weight"], eps)
        k = _norm(k, w[p + "self_attn.k_norm.weight"], eps)
    sliding = _sliding(cfg, layer)
    cos, sin = _rope(cfg, sliding, seqlen, hd)
    q, k = _rot(q, cos, sin), _rot(k, cos, sin)
    scale = cfg.get("query_pre_attn_scalar", hd) ** -0.5
    cap = cfg.get("attn_logit_softcapping")
    i = np.arange(seqlen)[:, None]
    j = np.arange(seqlen)[None, :]
    visible = j <= i
    if sliding:
        visible &= (i - j) < cfg["sliding_window"]
    out = np.empty((seqlen, nh, hd))
    for hh in range(nh):
        g = hh // (nh // nkv)
        s = (q[:, hh, :] @ k[:, g, :].T) * scale
        if cap:
            s = np.tanh(s / cap) * cap
        s = np.where(visible, s, -np.inf)
        s = np.exp(s - s.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
        out[:, hh, :] = s @ v[:, g, :]
    return out.reshape(seqlen, nh * hd) @ w[p + "self_attn.o_proj.weight"].T


def _sequence(cfg, w, ids):
    eps = cfg.get("rms_norm_eps", 1e-6)
    hidden = cfg["hidden_size"]
    x = w["model.embed_tokens.weight"][ids] * math.sqrt(hidden)
    for layer in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        h = _norm(x, w[p + "input_layernorm.weight"], eps)
        h = _attention(cfg, w, p, h, layer)
        x = x + _norm(h, w[p + "post_attention_layernorm.weight"], eps)
        h = _norm(x, w[p + "pre_feedforward_layernorm.weight"], eps)
        h = _gelu_tanh(h @ w[p + "mlp.gate_proj.weight"].T) * \
            (h @ w[p + "mlp.up_proj.weight"].T)
        h = h @ w[p + "mlp.down_proj.weight"].T
        x = x + _norm(h, w[p + "post_feedforward_layernorm.weight"], eps)
    x = _norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    logits = x @ head.T
    cap = cfg.get("final_logit_softcapping")
    if cap:
        logits = np.tanh(logits / cap) * cap
    return logits


def ref_logits(model_dir, ids):
    """float64 logits [nseq * seqlen, vocab] for ids [nseq, seqlen]."""
    cfg, w = _cfg(model_dir), _weights(model_dir)
    ids = np.asarray(ids)
    return np.concatenate([_sequence(cfg, w, row) for row in ids], axis=0)
