"""GGUF files from quant/gguf/gguf.c against an independent reader and numpy
block decoders written from the GGUF spec (ggml docs/gguf.md) and
ggml-common.h's block structs.

usage: test_gguf.py GGUF_CLI QUANTFS SHARED_DIR
 - block codecs: random and edge-case rows encoded by gguf_cli; Q4_0, Q4_1
   and Q8_0 must equal a numpy port of ggml's quantize_row_*_ref byte for
   byte; every type decodes (numpy) within its error budget, and the C
   decoder agrees with the numpy one bit for bit; the *_from_int repacks
   decode to exactly scale * (q - zero);
 - whole files: models made by `quantfs mkmodel` (llama, tied, odd sizes,
   and rewritten as mistral, qwen2 with biases, qwen3 with q/k norms and
   head_dim != hidden / heads) and shared/data/models/tinystories-llama-5m
   when present: header, key types, metadata against config.json, tokens
   against tokenizer.json (llama: scores from merge ranks), offsets and
   padding, file size == plan size,
   q/k rows permuted exactly for llama/mistral and kept for qwen, and
   every tensor's values against the safetensors source.
Prints 'N passed, N failed'.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

CLI, QUANTFS, SHARED = sys.argv[1], sys.argv[2], sys.argv[3]
TINY = os.path.join(SHARED, "data", "models", "tinystories-llama-5m")
rng = np.random.default_rng(4321)
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what)


def run(*args, ok=True):
    p = subprocess.run([CLI] + [str(a) for a in args], capture_output=True,
                       text=True)
    if ok and p.returncode != 0:
        raise RuntimeError("gguf_cli %s: %s" % (args, p.stderr))
    return p


# ---------------------------------------------------------------- GGUF reader
# docs/gguf.md: value types 0..12, strings are u64 length + bytes, arrays
# are u32 element type + u64 count + elements; tensor infos carry dims
# innermost first and an offset relative to the aligned data start.
SCALAR = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4",
          6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}


class Reader:
    def __init__(self, buf):
        self.b = buf
        self.p = 0

    def take(self, n):
        if self.p + n > len(self.b):
            raise ValueError("truncated at %d" % self.p)
        s = self.b[self.p:self.p + n]
        self.p += n
        return s

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def string(self):
        return self.take(self.u64()).decode("utf-8")

    def value(self, t):
        if t in SCALAR:
            dt = np.dtype(SCALAR[t])
            v = np.frombuffer(self.take(dt.itemsize), dt)[0]
            if t == 7:
                if v > 1:
                    raise ValueError("bool not 0/1")
                return bool(v)
            return v.item()
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.u32(), self.u64()
            if et in SCALAR and et != 7:
                dt = np.dtype(SCALAR[et])
                return (et, np.frombuffer(self.take(dt.itemsize * n), dt))
            return (et, [self.value(et) for _ in range(n)])
        raise ValueError("bad value type %d" % t)


def read_gguf(path):
    buf = open(path, "rb").read()
    r = Reader(buf)
    g = {"size": len(buf), "kv": {}, "kvtype": {}, "tensors": []}
    if r.take(4) != b"GGUF":
        raise ValueError("bad magic")
    g["version"] = r.u32()
    nt, nkv = r.u64(), r.u64()
    for _ in range(nkv):
        k = r.string()
        if k in g["kv"]:
            raise ValueError("duplicate key " + k)
        t = r.u32()
        g["kvtype"][k] = t
        g["kv"][k] = r.value(t)
    for _ in range(nt):
        name = r.string()
        nd = r.u32()
        ne = [r.u64() for _ in range(nd)]
        g["tensors"].append({"name": name, "ne": ne, "type": r.u32(),
                             "off": r.u64()})
    align = g["kv"].get("general.alignment", 32)
    g["info_end"] = r.p
    g["data_off"] = (r.p + align - 1) // align * align
    g["pad"] = buf[r.p:g["data_off"]]
    g["buf"] = buf
    return g


# ------------------------------------------------------- ggml block decoders
# ggml-common.h: block_q4_0 {half d; u8 qs[16]}, block_q4_1 {half d, m;
# u8 qs[16]}, block_q8_0 {half d; i8 qs[32]}, block_q4_K {half d, dmin;
# u8 scales[12]; u8 qs[128]}, block_q6_K {u8 ql[128]; u8 qh[64];
# i8 scales[16]; half d}; QK_K = 256.  Arithmetic in float32 in ggml's
# order (dequantize_row_*), so the C decoder must agree exactly.
BLOCK = {
    0: (1, np.dtype("<f4")), 1: (1, np.dtype("<f2")), 30: (1, np.dtype("<u2")),
    2: (32, np.dtype([("d", "<f2"), ("qs", "u1", 16)])),
    3: (32, np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)])),
    8: (32, np.dtype([("d", "<f2"), ("qs", "i1", 32)])),
    12: (256, np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12),
                        ("qs", "u1", 128)])),
    14: (256, np.dtype([("ql", "u1", 128), ("qh", "u1", 64),
                        ("scales", "i1", 16), ("d", "<f2")])),
}
TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 8, "q4_k": 12,
         "q6_k": 14, "bf16": 30}
TNAME = {v: k.upper() for k, v in TYPES.items()}
assert all(BLOCK[t][1].itemsize == s for t, s in
           ((2, 18), (3, 20), (8, 34), (12, 144), (14, 210)))


def nbytes(t, n):
    qk, dt = BLOCK[t]
    return n // qk * dt.itemsize


def k4_scales(s):
    """get_scale_min_k4 for j = 0..7 of blocks s [nb, 12]."""
    s = s.astype(np.int32)
    sc = np.empty((len(s), 8), np.int32)
    mn = np.empty((len(s), 8), np.int32)
    for j in range(8):
        if j < 4:
            sc[:, j] = s[:, j] & 63
            mn[:, j] = s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
            mn[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc, mn


def decode(t, raw, n):
    """Elements of a type-t byte string as float32 [n]."""
    qk, dt = BLOCK[t]
    b = np.frombuffer(raw, dt, count=n // qk)
    f32 = np.float32
    if t == 0:
        return b.astype(f32)
    if t == 1:
        return b.astype(f32)
    if t == 30:
        return (b.astype(np.uint32) << 16).view(f32)
    if t in (2, 3):
        d = b["d"].astype(f32)[:, None]
        lo = (b["qs"] & 0xF).astype(f32)
        hi = (b["qs"] >> 4).astype(f32)
        if t == 2:
            y = np.concatenate([(lo - 8) * d, (hi - 8) * d], 1)
        else:
            m = b["m"].astype(f32)[:, None]
            y = np.concatenate([lo * d + m, hi * d + m], 1)
        return y.reshape(-1)
    if t == 8:
        return (b["qs"].astype(f32) * b["d"].astype(f32)[:, None]).reshape(-1)
    if t == 12:
        sc, mn = k4_scales(b["scales"])
        d = b["d"].astype(f32)[:, None]
        dm = b["dmin"].astype(f32)[:, None]
        dsc = d * sc.astype(f32)          # d * sc, then * q - min * m
        mmn = dm * mn.astype(f32)
        y = np.empty((len(b), 256), f32)
        for c in range(4):
            q = b["qs"][:, 32 * c:32 * c + 32]
            y[:, 64 * c:64 * c + 32] = (dsc[:, 2 * c:2 * c + 1] *
                                        (q & 0xF).astype(f32) -
                                        mmn[:, 2 * c:2 * c + 1])
            y[:, 64 * c + 32:64 * c + 64] = (dsc[:, 2 * c + 1:2 * c + 2] *
                                             (q >> 4).astype(f32) -
                                             mmn[:, 2 * c + 1:2 * c + 2])
        return y.reshape(-1)
    if t == 14:
        d = b["d"].astype(f32)[:, None]
        y = np.empty((len(b), 256), f32)
        for h in range(2):
            ql = b["ql"][:, 64 * h:64 * h + 64].astype(np.int32)
            qh = b["qh"][:, 32 * h:32 * h + 32].astype(np.int32)
            sc = b["scales"][:, 8 * h:8 * h + 8].astype(f32)
            q = [(ql[:, :32] & 0xF) | (((qh >> 0) & 3) << 4),
                 (ql[:, 32:] & 0xF) | (((qh >> 2) & 3) << 4),
                 (ql[:, :32] >> 4) | (((qh >> 4) & 3) << 4),
                 (ql[:, 32:] >> 4) | (((qh >> 6) & 3) << 4)]
            for k in range(4):
                for half in range(2):
                    s = d * sc[:, 2 * k + half:2 * k + half + 1]
                    lanes = slice(16 * half, 16 * half + 16)
                    y[:, 128 * h + 32 * k + 16 * half:
                      128 * h + 32 * k + 16 * half + 16] = \
                        s * (q[k][:, lanes] - 32).astype(f32)
        return y.reshape(-1)
    raise ValueError(t)


# ------------------------------------ numpy ports of quantize_row_*_ref
def fp16(x):
    return np.float32(x).astype(np.float16)


def ref_q4_0(x):
    out = bytearray()
    for blk in x.reshape(-1, 32):
        i = int(np.argmax(np.abs(blk)))
        d = np.float32(blk[i]) / np.float32(-8)
        idd = np.float32(1) / d if d else np.float32(0)
        v = np.trunc((blk * idd).astype(np.float32) + np.float32(8.5))
        q = np.minimum(15, v).astype(np.uint8)
        out += fp16(d).tobytes() + (q[:16] | (q[16:] << 4)).tobytes()
    return bytes(out)


def ref_q4_1(x):
    out = bytearray()
    for blk in x.reshape(-1, 32):
        mn, mx = blk.min(), blk.max()
        d = (mx - mn) / np.float32(15)
        idd = np.float32(1) / d if d else np.float32(0)
        v = np.trunc(((blk - mn) * idd).astype(np.float32) + np.float32(0.5))
        q = np.minimum(15, v).astype(np.uint8)
        out += fp16(d).tobytes() + fp16(mn).tobytes()
        out += (q[:16] | (q[16:] << 4)).tobytes()
    return bytes(out)


def ref_q8_0(x):
    out = bytearray()
    for blk in x.reshape(-1, 32):
        d = np.abs(blk).max() / np.float32(127)
        idd = np.float32(1) / d if d else np.float32(0)
        v = (blk * idd).astype(np.float32).astype(np.float64)
        q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)  # roundf
        out += fp16(d).tobytes() + q.tobytes()
    return bytes(out)


REF = {2: ref_q4_0, 3: ref_q4_1, 8: ref_q8_0}


def bf16(x):
    """Round to nearest even bf16, back as float32."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def relerr(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    n = np.sqrt((b * b).sum())
    return np.sqrt(((a - b) ** 2).sum()) / (n if n else 1)


# ------------------------------------------------------------- codec tests
def weights_like(rows, cols):
    """Gaussian rows with per-column scales and a few outlier columns."""
    cs = np.exp(0.3 * rng.standard_normal(cols))
    cs[rng.random(cols) < 0.01] *= 8
    rs = np.exp(0.2 * rng.standard_normal(rows))[:, None]
    return (rng.standard_normal((rows, cols)) * cs * rs * 0.05).astype(
        np.float32)


def codec(tmp, tname, x, imp=None):
    rows, cols = x.shape
    t = TYPES[tname]
    fin, fout, fdec = (os.path.join(tmp, n) for n in ("x", "y", "z"))
    x.astype("<f4").tofile(fin)
    args = ["quant", tname, rows, cols, fin, fout]
    if imp is not None:
        imp.astype("<f4").tofile(fin + ".imp")
        args.append(fin + ".imp")
    run(*args)
    raw = open(fout, "rb").read()
    check(len(raw) == rows * nbytes(t, cols), "%s: encoded size" % tname)
    y = decode(t, raw, rows * cols).reshape(rows, cols)
    run("dequant", tname, rows, cols, fout, fdec)
    yc = np.fromfile(fdec, "<f4").reshape(rows, cols)
    check(np.array_equal(y.view(np.uint32), yc.view(np.uint32)),
          "%s: C decoder == numpy decoder" % tname)
    return raw, y


BUDGET = {"f32": 0.0, "bf16": 4e-3, "f16": 5e-4, "q8_0": 9e-3,
          "q6_k": 2.8e-2, "q4_1": 0.12, "q4_k": 0.1, "q4_0": 0.14}


def test_codecs(tmp):
    x = weights_like(64, 512)
    err = {}
    for tname, t in TYPES.items():
        raw, y = codec(tmp, tname, x)
        err[tname] = relerr(y, x)
        check(err[tname] <= BUDGET[tname], "%s: error %.4g > %.4g" %
              (tname, err[tname], BUDGET[tname]))
        if t in REF:
            ref = b"".join(REF[t](r) for r in x)
            check(raw == ref, "%s: bytes == quantize_row_%s_ref" %
                  (tname, tname))
        if tname == "f16":
            check(np.array_equal(y, x.astype(np.float16).astype(np.float32)),
                  "f16: exact conversion")
        if tname == "f32":
            check(np.array_equal(y, x), "f32: exact")
        if tname == "bf16":
            check(np.array_equal(y, bf16(x)), "bf16: exact conversion")
    print("codec relative errors: " +
          " ".join("%s %.4f" % kv for kv in sorted(err.items(),
                                                     key=lambda kv: kv[1])))
    check(err["q4_k"] < err["q4_0"] and err["q4_k"] < err["q4_1"],
          "q4_k beats q4_0 and q4_1")
    check(err["q6_k"] < err["q4_k"] / 3 and err["q8_0"] < err["q6_k"],
          "q8_0 < q6_k < q4_k / 3")

    # importance: a weighted error that imp says matters must drop
    imp = np.where(rng.random(512) < 0.1, 100.0, 1.0).astype(np.float32)
    for tname in ("q4_k", "q6_k"):
        _, y0 = codec(tmp, tname, x)
        _, y1 = codec(tmp, tname, x, imp)
        e0 = (((y0 - x) ** 2) * imp).sum()
        e1 = (((y1 - x) ** 2) * imp).sum()
        print("%s: imp-weighted error %.4g without imp, %.4g with" %
              (tname, e0, e1))
        check(e1 < 0.9 * e0, "%s: imp lowers the weighted error" % tname)

    # edge rows: zeros, constants, one spike, tiny and large magnitudes
    edge = np.zeros((9, 512), np.float32)
    edge[1] = 0.37
    edge[2] = -1.5
    edge[3, 77] = 3.0
    edge[4] = rng.standard_normal(512) * 1e-4
    edge[5] = rng.standard_normal(512) * 1e3
    edge[6] = np.abs(rng.standard_normal(512)) + 2.0
    edge[7] = np.linspace(-1, 1, 512)
    edge[8] = rng.standard_normal(512) * 1e-40   # subnormal: 1 / d is inf
    for tname, t in TYPES.items():
        raw, y = codec(tmp, tname, edge)
        check(np.all(np.isfinite(y[8])) and
              np.all(np.abs(y[8]) <= 1e-30), "%s: subnormal row" % tname)
        check(not np.any(y[0]), "%s: zero row decodes to zeros" % tname)
        for r in range(1, 8):
            e = relerr(y[r], edge[r])
            lim = max(BUDGET[tname] * 2.5, 1e-3) if r != 4 else 0.35
            check(e <= lim, "%s: edge row %d error %.4g" % (tname, r, e))
        if t in REF:
            ref = b"".join(REF[t](r) for r in edge[:8])
            raw = raw[:8 * nbytes(t, 512)]
            check(raw == ref, "%s: edge bytes == ref" % tname)

    # lossless integer repacks
    for tname, zero, top in (("q4_0", 8, 16), ("q8_0", 128, 256)):
        rows, cols = 16, 256
        q = rng.integers(0, top, (rows, cols)).astype(np.uint8)
        sc = (rng.standard_normal((rows, cols // 32)) * 0.01).astype(
            np.float16)
        sc[0, 0] = np.float16(6e-8)            # subnormal scale
        sc[0, 1] = np.float16(-0.5)
        q.tofile(os.path.join(tmp, "q"))
        sc.tofile(os.path.join(tmp, "sc"))
        run("fromint", tname, rows, cols, os.path.join(tmp, "q"),
            os.path.join(tmp, "sc"), os.path.join(tmp, "y"))
        raw = open(os.path.join(tmp, "y"), "rb").read()
        y = decode(TYPES[tname], raw, rows * cols).reshape(rows, cols)
        want = (np.repeat(sc.astype(np.float64), 32, 1) *
                (q.astype(np.float64) - zero))
        check(np.array_equal(y.astype(np.float64), want),
              "%s_from_int: exactly scale * (q - %d)" % (tname, zero))
    bad = np.full((1, 32), 16, np.uint8)
    bad.tofile(os.path.join(tmp, "q"))
    p = run("fromint", "q4_0", 1, 32, os.path.join(tmp, "q"),
            os.path.join(tmp, "sc"), os.path.join(tmp, "y"), ok=False)
    check(p.returncode != 0, "q4_0_from_int refuses a code of 16")


# ---------------------------------------------------------- safetensors I/O
def st_read(path):
    buf = open(path, "rb").read()
    n = struct.unpack("<Q", buf[:8])[0]
    hdr = json.loads(buf[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        raw = buf[8 + n + a:8 + n + b]
        if v["dtype"] == "BF16":
            x = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(
                np.float32)
        else:
            x = np.frombuffer(raw, {"F16": "<f2", "F32": "<f4"}[v["dtype"]])
        out[k] = x.astype(np.float32).reshape(v["shape"])
    return out


def st_write(path, tensors):
    hdr, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for k in sorted(tensors):
        b = np.ascontiguousarray(tensors[k], "<f4").tobytes()
        hdr[k] = {"dtype": "F32", "shape": list(tensors[k].shape),
                  "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(hdr).encode()
    h += b" " * (-(8 + len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def mkmodel(tmp, name, *opts):
    d = os.path.join(tmp, name)
    subprocess.run([QUANTFS, "mkmodel", d] + list(opts), check=True,
                   capture_output=True)
    return d


def retype(d, model_type, extra=None, cfg=None):
    """Rewrite a mkmodel dir as another model_type with extra tensors."""
    c = json.load(open(os.path.join(d, "config.json")))
    c["model_type"] = model_type
    c.update(cfg or {})
    json.dump(c, open(os.path.join(d, "config.json"), "w"))
    t = st_read(os.path.join(d, "model.safetensors"))
    t.update(extra or {})
    st_write(os.path.join(d, "model.safetensors"), t)


# -------------------------------------------------------------- file checks
def permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def expected_names(cfg, src, arch):
    names = {"token_embd.weight": "model.embed_tokens.weight",
             "output_norm.weight": "model.norm.weight"}
    if "lm_head.weight" in src and not cfg.get("tie_word_embeddings"):
        names["output.weight"] = "lm_head.weight"
    parts = {"input_layernorm.weight": "attn_norm.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight",
             "self_attn.q_proj.bias": "attn_q.bias",
             "self_attn.k_proj.bias": "attn_k.bias",
             "self_attn.v_proj.bias": "attn_v.bias",
             "self_attn.q_norm.weight": "attn_q_norm.weight",
             "self_attn.k_norm.weight": "attn_k_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type") == "llama3":
        names["rope_freqs.weight"] = None
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in parts.items():
            if "model.layers.%d.%s" % (i, hf) in src:
                names["blk.%d.%s" % (i, gg)] = "model.layers.%d.%s" % (i, hf)
    return names


def fallback(t, cols):
    qk = BLOCK[t][0]
    if cols % qk and t == 12:
        t = 3
    if cols % BLOCK[t][0] and t == 14:
        t = 8
    if cols % BLOCK[t][0]:
        t = 1
    return t


def check_rope_freqs(what, cfg, g, t):
    """conversion/llama.py generate_extra_tensors for rope_type llama3."""
    rs = cfg["rope_scaling"]
    dim = cfg["head_dim"]
    base = cfg["rope_theta"]
    old = rs["original_max_position_embeddings"]
    lo, hi, factor = rs["low_freq_factor"], rs["high_freq_factor"], \
        rs["factor"]
    want = []
    for i in range(0, dim, 2):
        wl = 2 * np.pi * base ** (i / dim)
        if wl < old / hi:
            want.append(1.0)
        elif wl > old / lo:
            want.append(factor)
        else:
            sm = (old / wl - lo) / (hi - lo)
            want.append(1 / ((1 - sm) / factor + sm))
    o = g["data_off"] + t["off"]
    y = np.frombuffer(g["buf"][o:o + 4 * dim // 2], "<f4")
    check(t["type"] == 0 and t["ne"] == [dim // 2] and
          np.allclose(y, want, rtol=1e-6, atol=0) and
          len(set(np.round(want, 3))) > 2,
          what + ": rope_freqs %s vs %s" % (y, want))


def check_tomodel(what, path, d, cfg, src, g, names):
    """gguf_cli tomodel (qf_gguf_to_model_dir): each tensor is the numpy
    decode of the file under its source name, q/k rows back in the
    source's order (so an F32 file gives the source back bit for bit);
    config.json without quantization_config, tokenizer files copied."""
    out = path + ".model"
    os.mkdir(out)
    p = run("tomodel", path, d, out, ok=False)
    check(p.returncode == 0, what + ": tomodel: " + p.stdout.strip())
    if p.returncode:
        return
    got = st_read(os.path.join(out, "model.safetensors"))
    want = {v for v in names.values() if v}
    check(set(got) == want, what + ": tomodel names %s" %
          sorted(set(got) ^ want))
    heads = {"attn_q": cfg["num_attention_heads"],
             "attn_k": cfg["num_key_value_heads"]}
    for t in g["tensors"]:
        hf = names.get(t["name"])
        if hf not in got:
            continue
        x = src[hf]
        o = g["data_off"] + t["off"]
        y = decode(t["type"], g["buf"][o:o + nbytes(t["type"], x.size)],
                   x.size).reshape(x.shape)
        h = heads.get(t["name"].split(".")[2]) if t["name"].startswith(
            "blk.") and g["kv"]["general.architecture"] == "llama" else None
        if h:
            # GGUF row r holds source row idx[r]
            idx = permute(np.arange(x.shape[0], dtype=np.float64), h)
            y2 = np.empty_like(y)
            y2[idx.astype(np.int64)] = y
            y = y2
        check(np.array_equal(got[hf].view(np.uint32), y.view(np.uint32)),
              what + ": tomodel %s == numpy decode" % hf)
        if t["type"] == 0:
            check(np.array_equal(got[hf], x), what + ": tomodel %s == "
                  "source (F32)" % hf)
    c2 = json.load(open(os.path.join(out, "config.json")))
    c1 = dict(cfg)
    c1.pop("quantization_config", None)
    check(c1 == c2, what + ": tomodel config.json")
    check(open(os.path.join(out, "tokenizer.json"), "rb").read() ==
          open(os.path.join(d, "tokenizer.json"), "rb").read(),
          what + ": tomodel tokenizer.json")
    shutil.rmtree(out)


def check_file(tag, d, tname, tmp, tok_kind, pre):
    t_req = TYPES[tname]
    out = os.path.join(tmp, "%s_%s.gguf" % (tag, tname))
    p = run("write", d, tname, out)
    plan = {}
    for line in p.stdout.splitlines():
        f = line.split()
        if f[0] == "tensor":
            plan[f[1]] = (f[2], int(f[3]), int(f[4]), int(f[5]))
        else:
            plan[f[0]] = int(f[1])
    g = read_gguf(out)
    kv, kt = g["kv"], g["kvtype"]
    cfg = json.load(open(os.path.join(d, "config.json")))
    src = st_read(os.path.join(d, "model.safetensors"))
    what = "%s/%s" % (tag, tname)

    # structure
    check(g["version"] == 3, what + ": version 3")
    check(g["size"] == plan["size"], what + ": file size == plan size")
    check(g["data_off"] == plan["data_off"] and g["data_off"] % 32 == 0,
          what + ": data offset")
    check(set(g["pad"]) <= {0}, what + ": header padding is zero")
    end = g["data_off"]
    spans = []
    for t in g["tensors"]:
        n = int(np.prod(t["ne"]))
        nb = nbytes(t["type"], n)
        o = g["data_off"] + t["off"]
        check(t["off"] % 32 == 0, what + ": %s offset aligned" % t["name"])
        check(plan.get(t["name"]) == (TNAME[t["type"]], o, nb,
                                      plan[t["name"]][3]),
              what + ": %s info == plan" % t["name"])
        spans.append((o, o + nb))
    spans.sort()
    ok = all(a >= b for (a, _), (_, b) in zip(spans[1:], spans[:-1]))
    check(ok and spans[0][0] == g["data_off"], what + ": no overlap")
    last = (spans[-1][1] + 31) // 32 * 32
    check(last == g["size"], what + ": size = last tensor, padded")
    gaps = b"".join(g["buf"][b:a] for (_, b), (a, _) in
                    zip(spans[:-1], spans[1:]))
    check(set(gaps + g["buf"][spans[-1][1]:]) <= {0},
          what + ": tensor padding is zero")

    # metadata
    arch = {"mistral": "llama"}.get(cfg["model_type"], cfg["model_type"])
    check(kv["general.architecture"] == arch, what + ": architecture")
    check(kv["general.alignment"] == 32 and kt["general.alignment"] == 4,
          what + ": alignment u32 32")
    ftype = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7,
             "q4_k": 14, "q6_k": 18, "bf16": 32}[tname]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg[
        "num_attention_heads"]
    want = {
        "context_length": cfg["max_position_embeddings"],
        "embedding_length": cfg["hidden_size"],
        "block_count": cfg["num_hidden_layers"],
        "feed_forward_length": cfg["intermediate_size"],
        "attention.head_count": cfg["num_attention_heads"],
        "attention.head_count_kv": cfg["num_key_value_heads"],
        "rope.dimension_count": hd,
        "vocab_size": cfg["vocab_size"],
    }
    if "head_dim" in cfg:
        want["attention.key_length"] = hd
        want["attention.value_length"] = hd
    for k, v in want.items():
        key = arch + "." + k
        check(kv.get(key) == v and kt.get(key) == 4,
              what + ": %s == %s (u32)" % (key, v))
    for k, v in (("rope.freq_base", cfg.get("rope_theta", 10000.0)),
                 ("attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])):
        key = arch + "." + k
        check(kt.get(key) == 6 and kv.get(key) == np.float32(v),
              what + ": %s == %s (f32)" % (key, v))
    if not tag.startswith("odd"):      # fallback types change the mix
        check(kv["general.file_type"] == ftype and
              kt["general.file_type"] == 4,
              what + ": file_type %s" % kv["general.file_type"])

    # vocabulary
    tj = json.load(open(os.path.join(d, "tokenizer.json")))
    tc_path = os.path.join(d, "tokenizer_config.json")
    tc = json.load(open(tc_path)) if os.path.exists(tc_path) else {}
    n_vocab = cfg["vocab_size"]
    want_tok = ["[PAD%d]" % i for i in range(n_vocab)]
    want_type = [5] * n_vocab
    for s, i in tj["model"]["vocab"].items():
        want_tok[i] = s
        if tok_kind == "llama" and len(s) == 6 and s.startswith("<0x"):
            want_type[i] = 6
        else:
            want_type[i] = 1
    added = {}
    for a in tj["added_tokens"]:
        want_tok[a["id"]] = a["content"]
        want_type[a["id"]] = 3 if a["special"] else 4
        added[a["content"]] = a["id"]
    check(kv["tokenizer.ggml.model"] == tok_kind, what + ": tokenizer model")
    check(kv["tokenizer.ggml.pre"] == pre, what + ": pre %s" %
          kv["tokenizer.ggml.pre"])
    toks = kv["tokenizer.ggml.tokens"]
    check(toks[0] == 8 and toks[1] == want_tok, what + ": tokens")
    tt = kv["tokenizer.ggml.token_type"]
    check(tt[0] == 5 and list(tt[1]) == want_type, what + ": token types")
    if tok_kind == "llama":
        # -(rank of the first merge making the token), else -1e9
        want_sc = np.full(n_vocab, np.float32(-1e9), np.float32)
        for r, mg in enumerate(tj["model"]["merges"]):
            a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
            i = tj["model"]["vocab"].get(a + b)
            if i is not None and want_sc[i] == np.float32(-1e9):
                want_sc[i] = -r
        sc = kv["tokenizer.ggml.scores"]
        check(sc[0] == 6 and np.array_equal(sc[1], want_sc),
              what + ": scores from merge ranks")
        check("tokenizer.ggml.merges" not in kv, what + ": no merges")
    else:
        m = kv.get("tokenizer.ggml.merges", (None, None))
        want_m = [x if isinstance(x, str) else " ".join(x)
                  for x in tj["model"]["merges"]]
        check(m[0] == 8 and m[1] == want_m, what + ": merges")
        check("tokenizer.ggml.scores" not in kv, what + ": no scores")
    for sp, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                    ("unk", "unknown_token_id")):
        v = tc.get(sp + "_token")
        if isinstance(v, dict):
            v = v["content"]
        want_id = added.get(v, cfg.get(sp + "_token_id"))
        got = kv.get("tokenizer.ggml." + key)
        check(got == want_id and (got is None or
                                  kt["tokenizer.ggml." + key] == 4),
              what + ": %s %s vs %s" % (key, got, want_id))
    if "add_bos_token" in tc:
        check(kv.get("tokenizer.ggml.add_bos_token") == tc["add_bos_token"]
              and kt["tokenizer.ggml.add_bos_token"] == 7,
              what + ": add_bos_token")

    # tensors
    names = expected_names(cfg, src, arch)
    check(sorted(names) == sorted(t["name"] for t in g["tensors"]),
          what + ": tensor names %s" %
          sorted(set(names) ^ {t["name"] for t in g["tensors"]}))
    n_head = cfg["num_attention_heads"]
    n_kv = cfg["num_key_value_heads"]
    worst = {}
    for t in g["tensors"]:
        if t["name"] not in names:
            continue
        if names[t["name"]] is None:
            check_rope_freqs(what, cfg, g, t)
            continue
        x = src[names[t["name"]]]
        check(t["ne"] == list(x.shape[::-1]), what + ": %s dims" % t["name"])
        want_t = fallback(t_req, x.shape[-1]) if x.ndim == 2 else 0
        check(t["type"] == want_t, what + ": %s type %s" %
              (t["name"], TNAME[t["type"]]))
        perm = 0
        if arch == "llama" and (".attn_q." in t["name"] or
                                ".attn_k." in t["name"]):
            perm = n_head if ".attn_q." in t["name"] else n_kv
            x = permute(x, perm)
        check(plan[t["name"]][3] == perm, what + ": %s permute flag" %
              t["name"])
        n = x.size
        o = g["data_off"] + t["off"]
        raw = g["buf"][o:o + nbytes(t["type"], n)]
        y = decode(t["type"], raw, n).reshape(x.shape)
        ty = t["type"]
        if ty == 0:
            ok = np.array_equal(y, x)
        elif ty == 1:
            ok = np.array_equal(y, x.astype(np.float16).astype(np.float32))
        elif ty == 30:
            ok = np.array_equal(y, bf16(x))
        elif ty in REF:
            ok = raw == b"".join(REF[ty](r) for r in x.reshape(-1, x.shape[-1]))
        else:
            ok = True
        check(ok, what + ": %s values (exact/ref)" % t["name"])
        e = relerr(y, x)
        worst[ty] = max(worst.get(ty, 0), e)
        lim = {0: 0, 1: 1e-3, 30: 4e-3, 8: 1.2e-2, 14: 4e-2, 12: 0.14, 3: 0.16,
               2: 0.2}[ty]
        check(e <= lim, what + ": %s error %.4g > %g" % (t["name"], e, lim))
        if perm and ty == 0:
            # the check can fail: unpermuted rows differ
            check(not np.array_equal(y, src[names[t["name"]]]),
                  what + ": %s really permuted" % t["name"])
        if (not perm and ty == 0 and arch != "llama" and
                ".attn_q." in t["name"]):
            check(np.array_equal(y, src[names[t["name"]]]),
                  what + ": %s kept (qwen)" % t["name"])
    check_tomodel(what, out, d, cfg, src, g, names)
    print("%-12s %-5s size %9d  tensors %3d  worst rel err %s" %
          (tag, tname, g["size"], len(g["tensors"]),
           " ".join("%s %.4f" % (TNAME[k], v) for k, v in
                    sorted(worst.items()))))
    os.unlink(out)
    return g


def test_models(tmp):
    llama = mkmodel(tmp, "llama", "--layers", "2")
    for tname in TYPES:
        check_file("llama", llama, tname, tmp, "gpt2", "gpt-2")

    # tomodel: the file's head counts must be the config's
    gg, out, cf = (os.path.join(tmp, n) for n in ("h.gguf", "h.m", "h.c"))
    run("write", llama, "q8_0", gg)
    shutil.copytree(llama, cf)
    c = json.load(open(os.path.join(cf, "config.json")))
    c["num_attention_heads"] //= 2
    json.dump(c, open(os.path.join(cf, "config.json"), "w"))
    os.mkdir(out)
    p = run("tomodel", gg, cf, out, ok=False)
    check(p.returncode == 1 and "head counts" in p.stdout,
          "tomodel refuses other head counts: %r" % p.stdout)

    odd = mkmodel(tmp, "odd", "--hidden", "96", "--inter", "176",
                  "--heads", "4", "--kv-heads", "2", "--layers", "2",
                  "--tie", "--vocab", "300", "--dtype", "f16")
    for tname in ("q4_k", "q6_k", "q4_0", "bf16"):
        g = check_file("odd-tied", odd, tname, tmp, "gpt2", "gpt-2")
        check("output.weight" not in [t["name"] for t in g["tensors"]],
              "tied: no output tensor")

    ll3 = mkmodel(tmp, "llama3", "--layers", "2")
    retype(ll3, "llama", cfg={"rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}})
    check_file("llama3-rope", ll3, "q8_0", tmp, "gpt2", "gpt-2")

    mis = mkmodel(tmp, "mistral", "--layers", "2", "--dtype", "f32")
    retype(mis, "mistral", cfg={"sliding_window": 4096})
    for tname in ("f32", "q8_0"):
        check_file("mistral", mis, tname, tmp, "gpt2", "gpt-2")

    q2 = mkmodel(tmp, "qwen2", "--layers", "2")
    src = st_read(os.path.join(q2, "model.safetensors"))
    bias = {}
    for i in range(2):
        for p in ("q", "k", "v"):
            w = src["model.layers.%d.self_attn.%s_proj.weight" % (i, p)]
            bias["model.layers.%d.self_attn.%s_proj.bias" % (i, p)] = \
                rng.standard_normal(w.shape[0]).astype(np.float32)
    retype(q2, "qwen2", bias)
    for tname in ("f32", "q4_k"):
        check_file("qwen2", q2, tname, tmp, "gpt2", "gpt-2")

    q3 = mkmodel(tmp, "qwen3", "--layers", "2", "--head-dim", "64")
    norms = {"model.layers.%d.self_attn.%s_norm.weight" % (i, p):
             (1 + 0.1 * rng.standard_normal(64)).astype(np.float32)
             for i in range(2) for p in ("q", "k")}
    retype(q3, "qwen3", norms)
    for tname in ("f32", "q6_k"):
        check_file("qwen3", q3, tname, tmp, "gpt2", "gpt-2")

    # refused: other architectures, tensors llama.cpp would not load
    bad = mkmodel(tmp, "gpt2", "--layers", "1")
    retype(bad, "gpt2")
    p = run("plan", bad, "q4_0", ok=False)
    check(p.returncode == 3 and "model_type" in p.stderr,
          "model_type gpt2 refused: %r" % p.stderr.strip())
    retype(q3, "qwen3", {"model.layers.0.self_attn.o_proj.bias":
                         np.zeros(256, np.float32)})
    p = run("plan", q3, "q4_0", ok=False)
    check(p.returncode == 3, "qwen3 with o_proj.bias refused: %r" %
          p.stderr.strip())

    if not os.path.isdir(TINY):
        print("skip: %s not found, real-model checks not run" % TINY)
        return
    for tname in ("f32", "f16", "q8_0", "q4_0", "q4_k", "q6_k"):
        check_file("tinystories", TINY, tname, tmp, "llama", "default")


# the reason each bad-* seed of the fuzz corpus is refused (gguf_read.c)
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                      "fuzz", "corpus", "gguf")
REASON = {
    "0-dims": "dimensions", "5-dims": "dimensions",
    "alignment-3": "alignment", "alignment-u64": "alignment",
    "alignment-zero": "alignment", "dim-negative": "dimension is 0",
    "dim-zero": "dimension is 0", "dims-overflow": "exceeds 2^63",
    "duplicate-key": "duplicate key", "duplicate-tensor": "duplicate tensor",
    "empty-key": "key is empty", "empty-name": "name is empty",
    "huge-array-count": "array runs past", "huge-key-len": "over 65535",
    "huge-kv-count": "key/value pairs", "huge-string-array": "array runs",
    "huge-string-len": "truncated", "huge-tensor-count": "more tensors",
    "long-name": "longer than 63", "magic": "magic",
    "nested-too-deep": "nested too deep", "no-padding": "padding",
    "nul-in-key": "NUL", "nul-in-name": "NUL",
    "offset-overflow": "past the end", "offset-past-end": "past the end",
    "offset-unaligned": "not aligned", "overlap": "overlap",
    "row-not-blocks": "whole blocks", "short-header": "truncated",
    "tensor-larger-than-file": "larger than the file",
    "truncated-data": "past the end", "truncated-kv": "truncated",
    "unknown-array-type": "array of an unknown", "unknown-ggml-type":
    "unknown tensor type", "unknown-value-type": "value of an unknown",
    "unsupported-q5_0": "unsupported", "version-1": "version",
    "version-big-endian": "version",
}


def test_corpus():
    """The reader (through pread) on the fuzz seeds: ok-* parse, each
    bad-* is refused for its own defect."""
    seen = set()
    for f in sorted(os.listdir(CORPUS)):
        p = run("read", os.path.join(CORPUS, f), ok=False)
        if f.startswith("ok-"):
            check(p.returncode == 0 and p.stdout.startswith("nt "),
                  "corpus %s parses: %r" % (f, p.stdout))
        elif f.startswith("bad-"):
            why = REASON.get(f[4:], "(no reason listed)")
            seen.add(f[4:])
            check(p.returncode == 1 and p.stdout.startswith("error") and
                  why in p.stdout, "corpus %s: %r, want %r" %
                  (f, p.stdout.strip(), why))
    check(seen == set(REASON), "corpus: reasons without a file %s" %
          sorted(set(REASON) - seen))


tmp = tempfile.mkdtemp(prefix="test_gguf.")
try:
    test_corpus()
    test_codecs(tmp)
    test_models(tmp)
finally:
    shutil.rmtree(tmp)
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
