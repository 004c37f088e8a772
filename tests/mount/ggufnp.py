"""An independent numpy reader of the GGUF files a mount serves, for the
tests: header (docs/gguf.md), ggml's dequantize_row_* for the types the
k-quant mixes, IQ4_NL and IQ4_XS use (ggml-common.h block layouts,
ggml-quants.c order of float32 operations), and the way back to Hugging Face names with the q/k
rows of architecture llama un-permuted (convert_hf_to_gguf.py).

Written from the spec, sharing no code with quant/gguf/gguf.c or gguf_read.c.
"""
import os
import struct

import numpy as np

SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
          7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
# ggml type: (elements per block, bytes per block)
BLOCKS = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20),
          8: (32, 34), 10: (256, 84), 11: (256, 110), 12: (256, 144),
          13: (256, 176), 14: (256, 210), 20: (32, 18), 23: (256, 136)}
# kvalues_iq4nl (ggml-common.h): IQ4_NL's and IQ4_XS's 16 levels
IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38,
                53, 69, 89, 113], np.float32)


class File:
    """kv: key -> value; tensors: name -> (type, ne, file offset)."""

    def __init__(self, path):
        self.raw = open(path, "rb").read()
        self.pos = 0
        assert self.take(4) == b"GGUF"
        ver, nt, nkv = struct.unpack("<IQQ", self.take(20))
        assert ver == 3, ver
        self.kv = {}
        for _ in range(nkv):
            k = self.string()
            self.kv[k] = self.value(self.u32())
        infos = []
        for _ in range(nt):
            name = self.string()
            nd = self.u32()
            ne = struct.unpack("<%dQ" % nd, self.take(8 * nd))
            typ, off = struct.unpack("<IQ", self.take(12))
            infos.append((name, typ, ne, off))
        align = self.kv.get("general.alignment", 32)
        self.data_off = (self.pos + align - 1) // align * align
        self.tensors = {n: (t, ne, self.data_off + o)
                        for n, t, ne, o in infos}

    def take(self, n):
        b = self.raw[self.pos:self.pos + n]
        assert len(b) == n, "truncated"
        self.pos += n
        return b

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def string(self):
        return self.take(struct.unpack("<Q", self.take(8))[0]).decode()

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et = self.u32()
            n = struct.unpack("<Q", self.take(8))[0]
            return [self.value(et) for _ in range(n)]
        return struct.unpack(SCALAR[t], self.take(
            struct.calcsize(SCALAR[t])))[0]

    def nbytes(self, name):
        t, ne, _ = self.tensors[name]
        blk, size = BLOCKS[t]
        return int(np.prod(ne)) // blk * size

    def decode(self, name):
        """float32 array of shape ne reversed (rows, cols)."""
        t, ne, at = self.tensors[name]
        raw = self.raw[at:at + self.nbytes(name)]
        return dequant(t, raw).reshape(tuple(reversed(ne)))


def f16(b):
    return b.copy().view("<f2").astype(np.float32)


def scale_min_k4(s):
    """get_scale_min_k4 for j = 0..7: s [nb, 12] -> sc, mn [nb, 8]."""
    s = s.astype(np.int32)
    sc = np.concatenate([s[:, 0:4] & 63,
                         (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], 1)
    mn = np.concatenate([s[:, 4:8] & 63,
                         (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], 1)
    return sc, mn


def dequant(t, raw):
    f32 = np.float32
    if t == 0:
        return np.frombuffer(raw, "<f4").copy()
    if t == 1:
        return np.frombuffer(raw, "<f2").astype(f32)
    if t == 30:
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(f32)
    blk, size = BLOCKS[t]
    b = np.frombuffer(raw, np.uint8).reshape(-1, size)
    if t in (2, 3):                     # Q4_0: d (q - 8); Q4_1: d q + m
        d = f16(b[:, 0:2])
        qs = b[:, 4:] if t == 3 else b[:, 2:]
        q = np.concatenate([qs & 0xF, qs >> 4], 1).astype(f32)
        if t == 2:
            return ((q - f32(8)) * d).reshape(-1)
        return (q * d + f16(b[:, 2:4])).reshape(-1)
    if t == 8:                          # Q8_0: d q
        return (b[:, 2:].view(np.int8).astype(f32) * f16(b[:, 0:2])) \
            .reshape(-1)
    if t in (10, 11):
        return dequant_q23(t, b)
    if t == 20:                         # IQ4_NL: d kv[q], nibbles lo/hi
        q = np.concatenate([b[:, 2:] & 0xF, b[:, 2:] >> 4], 1)
        return (f16(b[:, 0:2]) * IQ4[q]).reshape(-1)
    if t == 23:                         # IQ4_XS: d (ls - 32) kv[q]
        d = f16(b[:, 0:2])
        sh = b[:, 2:4].copy().view("<u2").astype(np.int32)
        y = np.empty((len(b), 8, 32), f32)
        for ib in range(8):
            ls = ((b[:, 4 + ib // 2:5 + ib // 2].astype(np.int32) >>
                   4 * (ib % 2)) & 0xF) | (((sh >> 2 * ib) & 3) << 4)
            qs = b[:, 8 + 16 * ib:24 + 16 * ib]
            q = np.concatenate([qs & 0xF, qs >> 4], 1)
            y[:, ib] = (d * (ls - 32).astype(f32)) * IQ4[q]
        return y.reshape(-1)
    if t in (12, 13):                   # Q4_K; Q5_K: qh [32] first
        d, dmin = f16(b[:, 0:2]), f16(b[:, 2:4])
        sc, mn = scale_min_k4(b[:, 4:16])
        qs = b[:, 16 + 32 * (t == 13):].reshape(-1, 4, 32)
        y = np.empty((len(b), 8, 32), f32)
        for j in range(8):              # sub-block j: nibbles of 32 bytes
            q = qs[:, j // 2] & 0xF if j % 2 == 0 else qs[:, j // 2] >> 4
            if t == 13:                 # bit j of qh: the fifth bit
                q = q | ((b[:, 16:48] >> j) & 1) << 4
            dj = d * sc[:, j:j + 1].astype(f32)
            mj = dmin * mn[:, j:j + 1].astype(f32)
            y[:, j] = dj * q.astype(f32) - mj
        return y.reshape(-1)
    if t == 14:                         # Q6_K
        ql, qh = b[:, 0:128].astype(np.int32), b[:, 128:192].astype(np.int32)
        sc = b[:, 192:208].view(np.int8).astype(f32)
        d = f16(b[:, 208:210])
        y = np.empty((len(b), 256), f32)
        for h in range(2):              # halves of 128: ql 64 B, qh 32 B
            lo, hi = ql[:, 64 * h:64 * h + 64], qh[:, 32 * h:32 * h + 32]
            for k in range(4):
                q = ((lo[:, 32 * (k % 2):32 * (k % 2) + 32] >> 4 * (k // 2))
                     & 0xF) | (((hi >> 2 * k) & 3) << 4)
                for l16 in range(2):
                    s = d * sc[:, 8 * h + 2 * k + l16:8 * h + 2 * k + l16 + 1]
                    y[:, 128 * h + 32 * k + 16 * l16:
                      128 * h + 32 * k + 16 * l16 + 16] = \
                        s * (q[:, 16 * l16:16 * l16 + 16] - 32).astype(f32)
        return y.reshape(-1)
    raise AssertionError("ggml type %d" % t)


def dequant_q23(t, b):
    """Q2_K (t 10) and Q3_K (t 11): 2-bit fields four to a byte, quarters
    of 128 elements; Q3_K's signed 6-bit scales unpacked as ggml does,
    through 32-bit words."""
    f32 = np.float32
    qs = b[:, 16:80] if t == 10 else b[:, 32:96]
    sh = np.arange(4)[None, None, :, None] * 2
    q = (qs.reshape(-1, 2, 1, 32) >> sh) & 3       # [nb, half, quarter, 32]
    if t == 10:
        d, dmin = f16(b[:, 80:82]), f16(b[:, 82:84])
        sc = np.repeat(b[:, 0:16], 16, axis=1).reshape(q.shape)
        return ((d[:, :, None, None] * (sc & 0xF).astype(f32)) *
                q.astype(f32) - dmin[:, :, None, None] * (sc >> 4).astype(f32)).reshape(-1)
    m1, m2 = np.uint32(0x03030303), np.uint32(0x0F0F0F0F)
    aux = b[:, 96:108].copy().view("<u4")           # [nb, 3]
    a0, a1, tmp = aux[:, 0], aux[:, 1], aux[:, 2]
    words = np.stack([(a0 & m2) | (((tmp >> 0) & m1) << 4),
                      (a1 & m2) | (((tmp >> 2) & m1) << 4),
                      ((a0 >> 4) & m2) | (((tmp >> 4) & m1) << 4),
                      ((a1 >> 4) & m2) | (((tmp >> 6) & m1) << 4)], 1)
    sc = words.astype("<u4").view(np.int8).astype(np.int32) - 32
    sc = np.repeat(sc, 16, axis=1).reshape(q.shape)
    hm = b[:, 0:32].reshape(-1, 1, 1, 32)
    bit = np.arange(8).reshape(1, 2, 4, 1)          # 4 half + quarter
    v = q.astype(np.int32) - np.where((hm >> bit) & 1, 0, 4)
    d = f16(b[:, 108:110])[:, :, None, None]
    return ((d * sc.astype(f32)) * v.astype(f32)).reshape(-1)


LAYER = {"attn_norm": "input_layernorm", "ffn_norm":
         "post_attention_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "attn_q_norm":
         "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}
TOP = {"token_embd.weight": "model.embed_tokens.weight",
       "output_norm.weight": "model.norm.weight",
       "output.weight": "lm_head.weight"}


def unpermute(w, heads):
    """convert_hf_to_gguf's LlamaModel.permute, inverted."""
    r = w.shape[0]
    return w.reshape(heads, r // heads // 2, 2, *w.shape[1:]) \
        .swapaxes(1, 2).reshape(w.shape)


def to_hf(g):
    """Every tensor as float32 under its Hugging Face name."""
    arch = g.kv["general.architecture"]
    heads = {"attn_q": g.kv.get(arch + ".attention.head_count"),
             "attn_k": g.kv.get(arch + ".attention.head_count_kv")}
    out = {}
    for name in g.tensors:
        if name == "rope_freqs.weight":
            continue
        w = g.decode(name)
        if name in TOP:
            out[TOP[name]] = w
            continue
        blk, i, part, kind = name.split(".")
        assert blk == "blk", name
        if arch == "llama" and part in heads:
            w = unpermute(w, heads[part])
        out["model.layers.%s.%s.%s" % (i, LAYER[part], kind)] = w
    return out


def header_only(path, work):
    """File of the first 256 KiB of path, copied under work: its header
    (keys and tensor table) without reading the tensor data."""
    head = os.path.join(work, os.path.basename(os.path.dirname(path)) +
                        ".head")
    with open(path, "rb") as f:
        open(head, "wb").write(f.read(1 << 18))
    return File(head)


def gptq_problem(rng, rows=32, cols=512, n=4096):
    """The encoder tests' GPTQ problem: inputs with correlated channels and
    8 outliers, their H = X^T X / n, U upper with U^T U = (H + 0.01
    mean(diag H) I)^-1 (the encoder's factor), and weights W [rows, cols]:
    (h, u, w), float64, drawn from rng in that order."""
    mix = rng.standard_normal((cols, cols)) / np.sqrt(cols)
    x = rng.standard_normal((n, cols)) @ (mix + 0.3 * np.eye(cols))
    x[:, rng.choice(cols, 8, replace=False)] *= 6
    h = x.T @ x / n
    u = np.linalg.cholesky(np.linalg.inv(
        h + 0.01 * np.mean(np.diag(h)) * np.eye(cols))).T
    return h, u, rng.standard_normal((rows, cols)) * 0.05


def libggml(llama_dir):
    """llama.cpp's own block codecs, from DIR/libggml-base.so (the
    library bench/llamacpp.sh links its tools against), or None without
    it: (decode, encode), decode(type_id, raw, n) -> float32[n] by ggml's
    to_float, encode(type_id, x [rows, cols], imatrix=None) -> bytes by
    ggml_quantize_chunk."""
    import ctypes
    lib = os.path.join(llama_dir, "libggml-base.so")
    if not os.path.exists(lib):
        return None
    g = ctypes.CDLL(lib)

    class Traits(ctypes.Structure):     # ggml.h: struct ggml_type_traits
        _fields_ = [("type_name", ctypes.c_char_p),
                    ("blck_size", ctypes.c_int64),
                    ("blck_size_interleave", ctypes.c_int64),
                    ("type_size", ctypes.c_size_t),
                    ("is_quantized", ctypes.c_bool),
                    ("to_float", ctypes.c_void_p),
                    ("from_float_ref", ctypes.c_void_p)]
    g.ggml_get_type_traits.restype = ctypes.POINTER(Traits)
    g.ggml_quantize_chunk.restype = ctypes.c_size_t
    g.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_void_p]
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_int64)

    def decode(tid, raw, n):
        tr = g.ggml_get_type_traits(tid).contents
        assert (tr.blck_size, tr.type_size) == BLOCKS[tid], tid
        src = np.frombuffer(raw, np.uint8).copy()
        out = np.zeros(n, np.float32)
        proto(tr.to_float)(src.ctypes.data, out.ctypes.data, n)
        return out

    def encode(tid, x, imatrix=None):
        x = np.ascontiguousarray(x, np.float32)
        rows, cols = x.shape
        blk, size = BLOCKS[tid]
        out = np.zeros(rows * cols // blk * size, np.uint8)
        im = None if imatrix is None else \
            np.ascontiguousarray(imatrix, np.float32)
        g.ggml_quantize_chunk(tid, x.ctypes.data, out.ctypes.data, 0, rows,
                              cols, None if im is None else im.ctypes.data)
        return out.tobytes()
    return decode, encode
