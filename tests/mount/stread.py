"""An independent safetensors + GPTQ-checkpoint reader for the tests.

Written from the public format descriptions (safetensors README; AutoGPTQ
qlinear_cuda_old.py), sharing no code with quantfs.  numpy only.
"""
import json
import struct

import numpy as np

DT = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "U8": np.uint8,
      "I8": np.int8, "BF16": "bf16", "F64": np.float64, "I64": np.int64}


def read_st(path_or_bytes):
    """name -> numpy array (BF16 returned as float32)."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        raw = bytes(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as f:
            raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = raw[base + b:base + e]
        if info["dtype"] == "BF16":
            u = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
            a = u.view(np.float32)
        else:
            a = np.frombuffer(buf, dtype=DT[info["dtype"]])
        out[name] = a.reshape(info["shape"])
    return out, hdr


def unpack_rows(words, bits, nvals):
    """Unpack a little-endian bit stream packed along axis 0 of words."""
    w = words.astype(np.uint32)
    if bits in (2, 4, 8):
        per = 32 // bits
        vals = [(w >> (bits * j)) & ((1 << bits) - 1) for j in range(per)]
        v = np.stack(vals, axis=1)          # [words, per, cols]
        return v.reshape(w.shape[0] * per, *w.shape[1:])[:nvals]
    assert bits == 3
    # a plain bit stream: value i occupies bits 3i .. 3i+2 of the 96-bit
    # little-endian concatenation of each 3-word period
    out = np.zeros((w.shape[0] // 3 * 32,) + w.shape[1:], dtype=np.uint32)
    for p in range(w.shape[0] // 3):
        big = [w[3 * p + k].astype(np.uint64) for k in range(3)]
        for i in range(32):
            bit = 3 * i
            k, s = divmod(bit, 32)
            v = big[k] >> np.uint64(s)
            if s > 29:
                v = v | (big[k + 1] << np.uint64(32 - s))
            out[32 * p + i] = (v & np.uint64(7)).astype(np.uint32)
    return out[:nvals]


def gptq_dequant(t, prefix, bits, out_f, in_f):
    """W [out, in] from qweight/qzeros/scales/g_idx (v1: zeros stored - 1)."""
    q = unpack_rows(t[prefix + ".qweight"], bits, in_f)          # [in, out]
    z = unpack_rows(t[prefix + ".qzeros"].T, bits, out_f).T      # [g, out]
    z = (z + 1) & ((1 << bits) - 1)
    s = t[prefix + ".scales"].astype(np.float32)                 # [g, out]
    g = t[prefix + ".g_idx"]
    w = s[g] * (q.astype(np.float32) - z[g].astype(np.float32))
    return w.T, q.T, z, s, g
