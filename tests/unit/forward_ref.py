#!/usr/bin/python3
"""forward_ref.py - float64 numpy oracle for test_forward.c.

An independent, plain implementation of the Hugging Face transformers
forward pass of LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and
Qwen3ForCausalLM (RMSNorm, q/k/v biases, Qwen3 q/k norms, rotate_half RoPE
with llama3 frequency remapping, GQA, causal and sliding-window attention,
SwiGLU, tied or separate lm_head), plus a generator of tiny random models.

    forward_ref.py gen DIR --kind llama|llama3|mistral|qwen2|qwen3
                   --dtype F32|BF16 --seed N [--drop NAME] [--transpose NAME]
    forward_ref.py ref MODEL_DIR IDS NSEQ SEQLEN OUT

gen writes config.json and model.safetensors.  ref reads IDS (int32 LE,
NSEQ * SEQLEN), and writes float64 LE arrays: OUT.logits [n, vocab],
OUT.qin [n, hidden] (layer 0 input of q_proj) and OUT.downin [n, inter]
(layer 0 input of down_proj).  Only numpy is needed.
"""
import json
import math
import os
import struct
import sys

import numpy as np

# ---------------------------------------------------------------- I/O


def bf16_round(a):
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype("<u2")


def write_safetensors(path, tensors, dtype):
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name], dtype=np.float32)
        raw = bf16_round(a).tobytes() if dtype == "BF16" else \
            a.astype("<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        buf = raw[8 + n + s:8 + n + e]
        if info["dtype"] == "F32":
            a = np.frombuffer(buf, dtype="<f4")
        elif info["dtype"] == "F16":
            a = np.frombuffer(buf, dtype="<f2")
        elif info["dtype"] == "BF16":
            a = (np.frombuffer(buf, dtype="<u2").astype("<u4") << 16) \
                .view("<f4")
        else:
            raise ValueError(name + ": dtype " + info["dtype"])
        out[name] = a.astype(np.float64).reshape(info["shape"])
    return out

# ---------------------------------------------------------- generator


KINDS = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=300,
                  rms_norm_eps=1e-5, rope_theta=10000.0,
                  tie_word_embeddings=False, attention_bias=False),
    "llama3": dict(model_type="llama", hidden_size=64, intermediate_size=80,
                   num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=16, vocab_size=270,
                   rms_norm_eps=1e-5, rope_theta=10000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                 "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 64},
                   tie_word_embeddings=False, attention_bias=True,
                   mlp_bias=True),
    "mistral": dict(model_type="mistral", hidden_size=64,
                    intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=8, num_key_value_heads=2,
                    head_dim=8, vocab_size=320, rms_norm_eps=1e-5,
                    rope_theta=1000000.0, sliding_window=6,
                    tie_word_embeddings=False),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=300,
                  rms_norm_eps=1e-6, rope_theta=1000000.0,
                  sliding_window=4, use_sliding_window=False,
                  max_window_layers=2, tie_word_embeddings=False),
    "qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, vocab_size=300,
                  rms_norm_eps=1e-6, rope_theta=1000000.0,
                  attention_bias=False, tie_word_embeddings=True),
}


def gen(out_dir, kind, dtype, seed, drop=None, transpose=None):
    cfg = dict(KINDS[kind])
    cfg["hidden_act"] = "silu"
    cfg["torch_dtype"] = "float32" if dtype == "F32" else "bfloat16"
    rng = np.random.default_rng(seed)
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    inter = cfg["intermediate_size"]
    V = cfg["vocab_size"]
    mt = cfg["model_type"]
    attn_bias = mt == "qwen2" or cfg.get("attention_bias", False)
    o_bias = attn_bias and mt != "qwen2"
    mlp_bias = mt == "llama" and cfg.get("mlp_bias", False)

    def lin(o, i):
        return rng.standard_normal((o, i)) / math.sqrt(i)

    def norm(n):
        return 1.0 + 0.2 * rng.standard_normal(n)

    t = {"model.embed_tokens.weight": rng.standard_normal((V, H)),
         "model.norm.weight": norm(H)}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = lin(V, H)
    shapes = {"q_proj": (nh * hd, H), "k_proj": (kv * hd, H),
              "v_proj": (kv * hd, H), "o_proj": (H, nh * hd),
              "gate_proj": (inter, H), "up_proj": (inter, H),
              "down_proj": (H, inter)}
    for layer in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        t[p + "input_layernorm.weight"] = norm(H)
        t[p + "post_attention_layernorm.weight"] = norm(H)
        for name, (o, i) in shapes.items():
            mod = "self_attn." if name[0] in "qkvo" else "mlp."
            t[p + mod + name + ".weight"] = lin(o, i)
            bias = attn_bias if name[0] in "qkv" else \
                o_bias if name[0] == "o" else mlp_bias
            if bias:
                t[p + mod + name + ".bias"] = 0.1 * rng.standard_normal(o)
        if mt == "qwen3":
            t[p + "self_attn.q_norm.weight"] = norm(hd)
            t[p + "self_attn.k_norm.weight"] = norm(hd)
    if drop:
        del t[drop]
    if transpose:
        t[transpose] = np.ascontiguousarray(t[transpose].T)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), t, dtype)

# ------------------------------------------------------------- oracle


class Model:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        self.c = c
        self.w = read_safetensors(os.path.join(model_dir,
                                               "model.safetensors"))
        self.mt = c["model_type"]
        self.H = c["hidden_size"]
        self.nh = c["num_attention_heads"]
        self.kv = c.get("num_key_value_heads") or self.nh
        self.hd = c.get("head_dim") or self.H // self.nh
        self.L = c["num_hidden_layers"]
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.theta = c.get("rope_theta", 10000.0)
        self.window = c.get("sliding_window") if self.mt == "mistral" \
            else None
        tie = c.get("tie_word_embeddings", False) or \
            "lm_head.weight" not in self.w
        self.head = self.w["model.embed_tokens.weight" if tie
                           else "lm_head.weight"]
        self.inv_freq = self.rope_freqs(c.get("rope_scaling"))

    def rope_freqs(self, rs):
        d = self.hd
        inv = self.theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        if not rs or rs.get("rope_type", rs.get("type")) != "llama3":
            return inv
        factor = rs["factor"]
        lo, hi = rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(f)
            elif wavelen > old / lo:
                out.append(f / factor)
            else:
                s = (old / wavelen - lo) / (hi - lo)
                out.append((1 - s) * f / factor + s * f)
        return np.array(out)

    def rms(self, x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * g

    def rope(self, x):
        # x [T, nheads, hd]: out = x cos + rotate_half(x) sin
        T = x.shape[0]
        ang = np.arange(T, dtype=np.float64)[:, None] * self.inv_freq[None]
        cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
        sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
        h = self.hd // 2
        rot = np.concatenate([-x[..., h:], x[..., :h]], -1)
        return x * cos + rot * sin

    def linear(self, x, name):
        y = x @ self.w[name + ".weight"].T
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        return y

    def mask(self, T):
        i = np.arange(T)[:, None]
        j = np.arange(T)[None, :]
        ok = j <= i
        if self.window and self.window < T:
            ok &= j > i - self.window
        return np.where(ok, 0.0, -np.inf)

    def sequence(self, ids, probe):
        T = len(ids)
        x = self.w["model.embed_tokens.weight"][ids]
        mask = self.mask(T)
        group = self.nh // self.kv
        for layer in range(self.L):
            p = "model.layers.%d." % layer
            h = self.rms(x, self.w[p + "input_layernorm.weight"])
            if layer == 0:
                probe["qin"] = h
            q = self.linear(h, p + "self_attn.q_proj").reshape(T, self.nh, -1)
            k = self.linear(h, p + "self_attn.k_proj").reshape(T, self.kv, -1)
            v = self.linear(h, p + "self_attn.v_proj").reshape(T, self.kv, -1)
            if self.mt == "qwen3":
                q = self.rms(q, self.w[p + "self_attn.q_norm.weight"])
                k = self.rms(k, self.w[p + "self_attn.k_norm.weight"])
            q, k = self.rope(q), self.rope(k)
            o = np.empty((T, self.nh, self.hd))
            for head in range(self.nh):
                g = head // group
                s = q[:, head] @ k[:, g].T / math.sqrt(self.hd) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                s /= s.sum(-1, keepdims=True)
                o[:, head] = s @ v[:, g]
            x = x + self.linear(o.reshape(T, -1), p + "self_attn.o_proj")
            h = self.rms(x, self.w[p + "post_attention_layernorm.weight"])
            gt = self.linear(h, p + "mlp.gate_proj")
            up = self.linear(h, p + "mlp.up_proj")
            d = gt / (1.0 + np.exp(-gt)) * up
            if layer == 0:
                probe["downin"] = d
            x = x + self.linear(d, p + "mlp.down_proj")
        x = self.rms(x, self.w["model.norm.weight"])
        return x @ self.head.T


def ref(model_dir, ids_path, nseq, seqlen, out):
    m = Model(model_dir)
    ids = np.fromfile(ids_path, dtype="<i4").reshape(nseq, seqlen)
    res = {"logits": [], "qin": [], "downin": []}
    for s in range(nseq):
        probe = {}
        res["logits"].append(m.sequence(ids[s], probe))
        res["qin"].append(probe["qin"])
        res["downin"].append(probe["downin"])
    for key, val in res.items():
        np.concatenate(val).astype("<f8").tofile(out + "." + key)


def main(argv):
    if len(argv) >= 2 and argv[1] == "gen":
        a = {"--kind": "llama", "--dtype": "F32", "--seed": "1",
             "--drop": None, "--transpose": None}
        for i in range(3, len(argv), 2):
            a[argv[i]] = argv[i + 1]
        gen(argv[2], a["--kind"], a["--dtype"], int(a["--seed"]),
            a["--drop"], a["--transpose"])
        return 0
    if len(argv) == 7 and argv[1] == "ref":
        ref(argv[2], argv[3], int(argv[4]), int(argv[5]), argv[6])
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
