#!/usr/bin/python3
"""Write the seed corpus of fuzz_gguf (tests/fuzz/corpus/gguf/).

ok-*: small valid GGUF files (docs/gguf.md layout) holding every value type,
nested arrays and one tensor of each ggml type quantfs decodes; bad-*: one
defect each (truncations, counts and lengths far past the file, offsets and
dimensions that overflow 64 bits, bad alignment, unknown types).  Run it
from anywhere; it rewrites the directory's files.
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus",
                   "gguf")
U64 = 2 ** 64 - 1


def s(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return s(key) + struct.pack("<I", vtype) + payload


def u32(key, v):
    return kv(key, 4, struct.pack("<I", v))


def arr(et, items, n=None):
    return struct.pack("<IQ", et, len(items) if n is None else n) + \
        b"".join(items)


def every_type():
    """One pair of each value type, arrays nested three deep."""
    return [
        kv("general.architecture", 8, s("llama")),
        kv("t.u8", 0, b"\x07"), kv("t.i8", 1, b"\xfe"),
        kv("t.u16", 2, struct.pack("<H", 65535)),
        kv("t.i16", 3, struct.pack("<h", -2)),
        kv("t.i32", 5, struct.pack("<i", -5)),
        kv("t.f32", 6, struct.pack("<f", 1.5)),
        kv("t.bool", 7, b"\x01"),
        kv("t.u64", 10, struct.pack("<Q", 2 ** 63)),
        kv("t.i64", 11, struct.pack("<q", -(2 ** 62))),
        kv("t.f64", 12, struct.pack("<d", -0.25)),
        kv("t.long_string", 8, s("x" * 1500)),
        kv("t.tokens", 9, arr(8, [s("a"), s(""), s("\u00e9")])),
        kv("t.scores", 9, arr(6, [struct.pack("<f", -1.0)] * 3)),
        kv("t.nested", 9, arr(9, [arr(9, [arr(4, [struct.pack("<I", 1)])]),
                                  arr(0, [])])),
    ]


# (name, type id, ne, bytes per block, elements per block)
TYPES = [("f32", 0, 1, 4), ("f16", 1, 1, 2), ("bf16", 30, 1, 2),
         ("q4_0", 2, 32, 18), ("q4_1", 3, 32, 20), ("q8_0", 8, 32, 34),
         ("q4_k", 12, 256, 144), ("q6_k", 14, 256, 210)]


def tensor_data(tid, n, bb, blk):
    """Blocks whose fp16 scales are small and finite (0x3c00 = 1.0)."""
    nb = n // blk
    if tid == 0:
        return struct.pack("<%df" % n, *[0.5 * (i % 7) - 1 for i in
                                         range(n)])
    if tid in (1, 30):
        return struct.pack("<%dH" % n, *[0x3c00 if tid == 1 else 0x3f80]
                           * n)
    out = b""
    for b in range(nb):
        body = bytes((b * 31 + i * 7) & 0xff for i in range(bb))
        if tid in (2, 8):
            body = b"\x00\x2c" + body[2:]           # d = 0.0625
        elif tid == 3:
            body = b"\x00\x2c\x00\xb0" + body[4:]   # d, m = -0.125
        elif tid == 12:
            body = b"\x00\x2c\x00\x28" + body[4:]   # d, dmin
        else:
            body = body[:208] + b"\x00\x20"         # d (Q6_K: last)
        out += body
    return out


def build(kvs, tensors, align=32, version=3, pad=True, rel=None):
    """tensors: (name, dims, type, data); rel overrides the offsets."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    head += b"".join(kvs)
    offs, off = [], 0
    for _, _, _, data in tensors:
        offs.append(off)
        off = (off + len(data) + align - 1) // align * align
    if rel is not None:
        offs = rel
    for (name, dims, tid, _), o in zip(tensors, offs):
        head += s(name) + struct.pack("<I", len(dims))
        head += b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", tid, o)
    if pad:
        head += b"\x00" * ((align - len(head) % align) % align)
    body = b""
    for (_, _, _, data), o in zip(tensors, offs):
        if rel is None:
            body += b"\x00" * (o - len(body)) + data
        elif o < 1 << 20:       # only the defect named: room for the data
            body += b"\x00" * max(0, o + len(data) - len(body))
        else:
            body += b"\x00" * len(data)
    return head + body


def all_tensors():
    out = []
    for name, tid, blk, bb in TYPES:
        n = 2 * 256
        out.append(("blk.0.%s.weight" % name, [256, 2], tid,
                    tensor_data(tid, n, bb, blk)))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.unlink(os.path.join(OUT, f))
    w = {}
    w["ok-empty"] = build([], [])
    w["ok-every-value-type"] = build(every_type(), [])
    w["ok-every-tensor-type"] = build(
        every_type() + [u32("general.alignment", 32)], all_tensors())
    w["ok-align-64-v2"] = build([u32("general.alignment", 64)],
                                all_tensors()[:3], align=64, version=2)
    emb = ("token_embd.weight", [32, 4], 0, tensor_data(0, 128, 4, 1))
    q = ("blk.0.attn_q.weight", [32, 4], 8, tensor_data(8, 128, 34, 32))
    nrm = ("blk.0.attn_norm.weight", [32], 0, tensor_data(0, 32, 4, 1))
    llama = [kv("general.architecture", 8, s("llama")),
             u32("llama.attention.head_count", 2)]
    w["ok-llama-names"] = build(llama, [emb, q, nrm])
    w["ok-1d-3d-4d"] = build([], [nrm, ("x3", [32, 2, 2], 0,
                                        tensor_data(0, 128, 4, 1)),
                                  ("x4", [32, 1, 1, 2], 1,
                                   tensor_data(1, 64, 2, 1))])

    good = w["ok-llama-names"]
    w["bad-magic"] = b"GGUG" + good[4:]
    w["bad-version-1"] = good[:4] + struct.pack("<I", 1) + good[8:]
    w["bad-version-big-endian"] = good[:4] + struct.pack(">I", 3) + good[8:]
    w["bad-short-header"] = good[:10]
    w["bad-truncated-kv"] = good[:60]
    w["bad-truncated-data"] = good[:-40]
    w["bad-huge-kv-count"] = b"GGUF" + struct.pack("<IQQ", 3, 0, 2 ** 63)
    w["bad-huge-tensor-count"] = b"GGUF" + struct.pack("<IQQ", 3, U64, 0) \
        + b"\x00" * 8
    w["bad-huge-key-len"] = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + \
        struct.pack("<Q", U64) + b"k" * 16
    w["bad-huge-string-len"] = build([kv("a", 8, struct.pack("<Q", U64 - 3)
                                         + b"abc")], [])
    w["bad-huge-array-count"] = build([kv("a", 9, struct.pack(
        "<IQ", 10, 2 ** 61) + b"\x00" * 16)], [])
    w["bad-huge-string-array"] = build([kv("a", 9, struct.pack(
        "<IQ", 8, U64 // 8))], [])
    deep = arr(4, [])
    for _ in range(9):
        deep = arr(9, [deep])
    w["bad-nested-too-deep"] = build([kv("a", 9, deep)], [])
    w["bad-unknown-value-type"] = build([kv("a", 13, b"\x00" * 8)], [])
    w["bad-unknown-array-type"] = build([kv("a", 9, arr(13, [b"\0"]))], [])
    w["bad-duplicate-key"] = build([u32("a", 1), u32("a", 2)], [])
    w["bad-empty-key"] = build([u32("", 1)], [])
    w["bad-nul-in-key"] = build([u32("a\0b", 1)], [])
    w["bad-alignment-zero"] = build([u32("general.alignment", 0)], [emb])
    w["bad-alignment-3"] = build([u32("general.alignment", 3)], [emb])
    w["bad-alignment-u64"] = build([kv("general.alignment", 10,
                                       struct.pack("<Q", 32))], [emb])
    w["bad-no-padding"] = build([u32("a", 1)], [], pad=False)
    w["bad-offset-overflow"] = build([], [nrm], rel=[U64 - 31])
    w["bad-offset-past-end"] = build([], [nrm], rel=[1 << 40])
    w["bad-offset-unaligned"] = build([], [emb, nrm], rel=[0, 136])
    w["bad-overlap"] = build([], [emb, nrm], rel=[0, 96])
    w["bad-dims-overflow"] = build([], [("x", [2 ** 32, 2 ** 32], 0, b"")])
    w["bad-dim-zero"] = build([], [("x", [32, 0], 0, b"")])
    w["bad-dim-negative"] = build([], [("x", [U64], 0, b"")])
    w["bad-5-dims"] = build([], [("x", [1, 1, 1, 1, 1], 0, b"\0" * 4)])
    w["bad-0-dims"] = build([], [("x", [], 0, b"\0" * 4)])
    w["bad-unknown-ggml-type"] = build([], [("x", [32], 99, b"\0" * 32)])
    w["bad-unsupported-q5_0"] = build([], [("x", [256], 6, b"\0" * 176)])
    w["bad-row-not-blocks"] = build([], [("x", [100], 12, b"\0" * 144)])
    w["bad-tensor-larger-than-file"] = build(
        [], [("x", [2 ** 20, 2 ** 20], 0, b"\0" * 32)], rel=[0])
    w["bad-duplicate-tensor"] = build([], [nrm, nrm])
    w["bad-empty-name"] = build([], [("", [32], 0, b"\0" * 128)])
    w["bad-long-name"] = build([], [("n" * 64, [32], 0, b"\0" * 128)])
    w["bad-nul-in-name"] = build([], [("a\0b", [32], 0, b"\0" * 128)])
    for name, data in sorted(w.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print("%d files in %s" % (len(w), OUT))


if __name__ == "__main__":
    main()
