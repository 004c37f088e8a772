"""ref_moe.py - float64 numpy oracle of the mixture-of-experts families.

Written from the semantics of transformers' Qwen3MoeForCausalLM,
MixtralForCausalLM, OlmoeForCausalLM and Qwen2MoeForCausalLM, sharing
nothing with quantfs's C:

  * attention: Llama's (RoPE rotate_half, GQA, causal, Mixtral's sliding
    window when set); Qwen3-MoE adds an RMSNorm per head on q and k before
    RoPE; OLMoE an RMSNorm over the whole q and k projections (before the
    head split), then clamps q, k, v to +-clip_qkv when set;
  * the sparse block (every layer l not in mlp_only_layers with
    (l + 1) % decoder_sparse_step == 0; else a dense SwiGLU MLP): router
    logits x W_r^T, softmax over the experts, the top-k experts, their
    weights renormalized to sum 1 when norm_topk_prob (always for Mixtral),
    and sum_k w_k * down(silu(gate(x)) * up(x)) of those experts;
    Qwen2-MoE (q/k/v biases) adds sigmoid(x . shared_expert_gate) times a
    shared expert of every token.

    logits(model_dir, ids) -> float64 [nseq * seqlen, vocab]
    routing(model_dir, ids) -> per sparse layer, the chosen experts
        [nseq * seqlen, topk] and the margin between the k-th and the
        (k+1)-th router logit (for tests that avoid near ties)
"""
import json
import os

import numpy as np

from archtest import stread

NAMES = {   # model_type -> (router, experts, gate, up, down)
    "qwen3_moe": ("mlp.gate", "mlp.experts", "gate_proj", "up_proj",
                  "down_proj"),
    "qwen2_moe": ("mlp.gate", "mlp.experts", "gate_proj", "up_proj",
                  "down_proj"),
    "olmoe": ("mlp.gate", "mlp.experts", "gate_proj", "up_proj",
              "down_proj"),
    "mixtral": ("block_sparse_moe.gate", "block_sparse_moe.experts", "w1",
                "w3", "w2"),
}


def load(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    w, _ = stread.read_st(os.path.join(model_dir, "model.safetensors"))
    return cfg, {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def rope(x, pos, theta):
    """x [t, h, d] rotated at positions pos [t] (rotate_half)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * cos + rot * sin


def attention(cfg, w, p, x):
    """One sequence x [t, hidden] through layer prefix p's attention."""
    t = x.shape[0]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    eps = cfg["rms_norm_eps"]
    q, k, v = (x @ w[p + "self_attn.%s_proj.weight" % n].T +
               w.get(p + "self_attn.%s_proj.bias" % n, 0) for n in "qkv")
    if cfg["model_type"] == "olmoe":
        q = rmsnorm(q, w[p + "self_attn.q_norm.weight"], eps)
        k = rmsnorm(k, w[p + "self_attn.k_norm.weight"], eps)
        clip = cfg.get("clip_qkv")
        if clip is not None:
            q, k, v = (np.clip(a, -clip, clip) for a in (q, k, v))
    q, k, v = (a.reshape(t, -1, hd) for a in (q, k, v))
    if cfg["model_type"] == "qwen3_moe":
        q = rmsnorm(q, w[p + "self_attn.q_norm.weight"], eps)
        k = rmsnorm(k, w[p + "self_attn.k_norm.weight"], eps)
    pos = np.arange(t, dtype=np.float64)
    q = rope(q, pos, cfg.get("rope_theta", 10000.0))
    k = rope(k, pos, cfg.get("rope_theta", 10000.0))
    rep = nh // nkv
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(hd)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    mask = j > i
    win = cfg.get("sliding_window") if cfg["model_type"] == "mixtral" \
        else None
    if win:
        mask |= i - j >= win
    s = np.where(mask[None], -np.inf, s)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    o = np.einsum("hij,jhd->ihd", s, v).reshape(t, nh * hd)
    return o @ w[p + "self_attn.o_proj.weight"].T


def sparse(cfg, l):
    if cfg["model_type"] not in ("qwen3_moe", "qwen2_moe"):
        return True
    return l not in (cfg.get("mlp_only_layers") or []) and \
        (l + 1) % cfg.get("decoder_sparse_step", 1) == 0


def route(cfg, w, p, x):
    """Top-k experts [t, k], weights [t, k], and the k-th minus the
    (k+1)-th router logit."""
    mt = cfg["model_type"]
    k = cfg["num_experts_per_tok"]
    lg = x @ w[p + NAMES[mt][0] + ".weight"].T
    pr = np.exp(lg - lg.max(axis=-1, keepdims=True))
    pr /= pr.sum(axis=-1, keepdims=True)
    order = np.argsort(-pr, axis=-1, kind="stable")
    sel = order[:, :k]
    wt = np.take_along_axis(pr, sel, axis=-1)
    srt = np.take_along_axis(lg, order, axis=-1)
    margin = srt[:, k - 1] - srt[:, k] if k < pr.shape[1] else \
        np.full(len(pr), np.inf)
    if mt == "mixtral" or cfg.get("norm_topk_prob", False):
        wt = wt / wt.sum(axis=-1, keepdims=True)
    return sel, wt, margin


def mlp(w, p, x):
    return (silu(x @ w[p[0]].T) * (x @ w[p[1]].T)) @ w[p[2]].T


def moe(cfg, w, p, x, trace=None):
    mt = cfg["model_type"]
    _, ex, g, u, d = NAMES[mt]
    sel, wt, margin = route(cfg, w, p, x)
    if trace is not None:
        trace.append((sel, margin))
    out = np.zeros_like(x)
    for e in np.unique(sel):
        rows, slot = np.nonzero(sel == e)
        q = "%s%s.%d." % (p, ex, e)
        y = mlp(w, [q + n + ".weight" for n in (g, u, d)], x[rows])
        out[rows] += wt[rows, slot][:, None] * y
    if mt == "qwen2_moe":   # the shared expert, sigmoid-gated
        q = p + "mlp.shared_expert."
        y = mlp(w, [q + n + ".weight" for n in (g, u, d)], x)
        gate = 1 / (1 + np.exp(-(x @ w[p + "mlp.shared_expert_gate.weight"].T)))
        out += gate * y
    return out


def hidden(cfg, w, seq, trace=None):
    x = w["model.embed_tokens.weight"][seq]
    eps = cfg["rms_norm_eps"]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        x = x + attention(cfg, w, p, rmsnorm(
            x, w[p + "input_layernorm.weight"], eps))
        xn = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        if sparse(cfg, l):
            x = x + moe(cfg, w, p, xn, trace)
        else:
            x = x + mlp(w, [p + "mlp.%s_proj.weight" % n
                            for n in ("gate", "up", "down")], xn)
    return x


def logits(model_dir, ids):
    cfg, w = load(model_dir)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    out = []
    for seq in np.asarray(ids).reshape(len(ids), -1):
        x = hidden(cfg, w, seq)
        out.append(rmsnorm(x, w["model.norm.weight"], cfg["rms_norm_eps"])
                   @ head.T)
    return np.concatenate(out, axis=0)


def routing(model_dir, ids, weights=None):
    """[(sel, margin)] per sparse layer and sequence, in order; weights
    (name -> array) in place of the model's own."""
    cfg, w = load(model_dir)
    w = w if weights is None else weights
    trace = []
    for seq in np.asarray(ids).reshape(len(ids), -1):
        hidden(cfg, w, seq, trace)
    return trace
