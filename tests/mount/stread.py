"""An independent safetensors + GPTQ-checkpoint reader for the tests.

Written from the public format descriptions (safetensors README; AutoGPTQ
qlinear_cuda_old.py), sharing no code with quantfs.  numpy only.
"""
import json
import os
import shutil
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


def check_rtn(t, src, name, bits, group, sym):
    """q, scales, zeros equal an independent numpy RTN of W."""
    W = src[name].astype(np.float32)
    out_f, in_f = W.shape
    pre = name[:-len(".weight")]
    deq, q, z, s, g = gptq_dequant(t, pre, bits, out_f, in_f)
    gs = in_f if group <= 0 else group
    assert np.array_equal(g, np.arange(in_f) // gs)
    maxq = 2 ** bits - 1
    ng = s.shape[0]
    assert ng == -(-in_f // gs)
    for gi in range(ng):
        blk = W[:, gi * gs:(gi + 1) * gs]
        lo = np.minimum(blk.min(1), 0)
        hi = np.maximum(blk.max(1), 0)
        if sym:
            mx = np.maximum(-lo, hi)
            sc = (2 * mx / maxq).astype(np.float32)
            zz = np.full(out_f, (maxq + 1) // 2)
        else:
            sc = ((hi - lo) / maxq).astype(np.float32)
            zz = np.rint(-lo / sc)
            bad = zz < 1
            sc = np.where(bad, hi / (maxq - 1), sc).astype(np.float32)
            zz = np.where(bad, 1, zz)
        sc16 = sc.astype(np.float16).astype(np.float32)
        assert np.array_equal(s[gi], sc16), (name, gi)
        assert np.array_equal(z[gi], np.minimum(zz, maxq)), (name, gi)
        qq = np.clip(np.rint(blk / sc16[:, None]) + z[gi][:, None], 0, maxq)
        assert np.array_equal(q[:, gi * gs:(gi + 1) * gs], qq), (name, gi)
    # and the reconstruction error is within half a step where not clipped
    step = s[g].T
    inside = (q > 0) & (q < maxq)
    assert np.all(np.abs(W - deq)[inside] <= step[inside] / 2 + 1e-6)
    return deq


def write_st(path, tensors):
    """Write a safetensors file from {name: (dtype, shape, bytes)}."""
    hdr, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        dt, shape, raw = tensors[name]
        hdr[name] = {"dtype": dt, "shape": shape,
                     "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def shard(src, dest, k):
    """A copy of model dir src with its model.safetensors split into k
    shards (tensor i in shard i % k) and an index, as large models are."""
    shutil.copytree(src, dest)
    os.unlink(os.path.join(dest, "model.safetensors"))
    raw = open(os.path.join(src, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    parts = [{} for _ in range(k)]
    wmap = {}
    for i, name in enumerate(sorted(x for x in hdr if x != "__metadata__")):
        b, e = hdr[name]["data_offsets"]
        parts[i % k][name] = (hdr[name]["dtype"], hdr[name]["shape"],
                              raw[8 + n + b:8 + n + e])
        wmap[name] = "model-%05d-of-%05d.safetensors" % (i % k + 1, k)
    for j in range(k):
        write_st(os.path.join(dest, "model-%05d-of-%05d.safetensors"
                              % (j + 1, k)), parts[j])
    with open(os.path.join(dest, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": len(raw) - 8 - n},
                   "weight_map": wmap}, f)
    return dest


AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_unpack(qweight, qzeros, scales):
    """AutoAWQ GEMM (FORMATS.md): nibble i of packed column c holds output
    column 8c + AWQ_ORDER[i]; W[out, in] = (q - zero) * scale."""
    qw = qweight.view(np.uint32)
    qz = qzeros.view(np.uint32)
    n_in, n_out = qw.shape[0], qw.shape[1] * 8
    q = np.zeros((n_in, n_out), np.int64)
    z = np.zeros((qz.shape[0], n_out), np.int64)
    for i in range(8):
        q[:, AWQ_ORDER[i]::8] = (qw >> (4 * i)) & 15
        z[:, AWQ_ORDER[i]::8] = (qz >> (4 * i)) & 15
    gs = n_in // scales.shape[0]
    g = np.arange(n_in) // gs
    s = scales.astype(np.float32)
    w = s[g, :] * (q - z[g, :]).astype(np.float32)
    return w.T.astype(np.float32), q, z
