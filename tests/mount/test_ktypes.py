"""llama.cpp's k-quant mixes as kq views (issue #24): the Q2_K, Q3_K and
Q5_K blocks (quant/gguf/ggml_kq23.c, ggml_quants.c), GPTQ on their grids
(ggml_gptq.c) and the per-tensor types of each mix (gguf_mix.c).

 - every k-quant's bytes, encoded by quantfs from random and from the real
   5M model's weights, decode the same in quantfs's dequantizer, in
   ggufnp's numpy decoder of the block layouts (written from ggml-common.h,
   sharing no code) and, where llama.cpp's libggml-base.so is at hand, in
   ggml's own to_float; every value rounded to nearest sits on the nearest
   point of its sub-block's grid, and the error falls as the bits grow;
 - GPTQ on each new grid: codes in range, values on the grid, and the
   objective tr(E H E^T) below 0.85 x that of rounding to nearest;
 - kq2_k, kq3_k_{s,m,l}, kq4_k_{s,m}, kq5_k_{s,m} of the real 5M Llama
   (tinystories-llama-5m, hub layout, default options but a small
   calibration): every tensor has the type llama-quantize gives it for
   the same mix of the same model (its original/model.gguf; without the
   tools, the counts of each type llama-quantize wrote), but for
   quantfs's one rule: in kq2_k, kq3_k_* and kq4_k_* of this untied model
   token_embd and output take Q4_K / Q4_K, Q4_K / Q5_K and Q5_K / Q5_K
   (llama-quantize's --token-embedding-type and --output-tensor-type say
   so on its side), and each such file is no larger than llama-quantize's
   stock mix; and
   llama.cpp (node-llama-cpp) loads kq3_k_m and kq5_k_m from the mount
   and reads a token.

llama.cpp's tools come from bench/llamacpp.sh DEST: QF_LLAMA_BIN=DEST/bin
(default /tmp/qf-llamacpp/bin, the script's); without them the checks
that need them are skipped with a message (CI does not build them).
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ggufnp  # noqa: E402
import stread  # noqa: E402
from qftest import Mount, run_tests, QUANTFS, SHARED, SkipTest, \
    llama_reads  # noqa: E402

WORK = tempfile.mkdtemp(prefix="qf-ktypes.")
CLI = os.path.join(os.path.dirname(os.path.dirname(QUANTFS)), "tests",
                   "gguf_cli")
LLAMA = os.environ.get("QF_LLAMA_BIN", "/tmp/qf-llamacpp/bin")
MODEL = os.path.join(SHARED, "data", "models", "tinystories-llama-5m")
TYPES = {"q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14}
# kq view -> llama-quantize's name of the same mix
# and its llama_ftype (general.file_type)
MIXES = {"kq2_k": ("Q2_K", 10), "kq3_k_s": ("Q3_K_S", 11),
         "kq3_k_m": ("Q3_K_M", 12), "kq3_k_l": ("Q3_K_L", 13),
         "kq4_k_s": ("Q4_K_S", 14), "kq4_k_m": ("Q4_K_M", 15),
         "kq5_k_s": ("Q5_K_S", 16), "kq5_k_m": ("Q5_K_M", 17)}
# llama-quantize's flags for the same layout as quantfs's view
LAYOUT = {v: ["--token-embedding-type", e, "--output-tensor-type", o]
          for v, e, o in (("kq2_k", "q4_k", "q4_k"),
                          ("kq3_k_s", "q4_k", "q5_k"),
                          ("kq3_k_m", "q4_k", "q5_k"),
                          ("kq3_k_l", "q4_k", "q5_k"),
                          ("kq4_k_s", "q5_k", "q5_k"),
                          ("kq4_k_m", "q5_k", "q5_k"))}
# tensors of each type in the 5M model's mixes as llama-quantize (llama.cpp
# 5b4ebc5) wrote them, for runs without the tools: 13 F32 norms, then
# token_embd + 6 layers x 7 linears + output
# (token_embd and output as quantfs's rule types them; llama-quantize's
# stock mixes have the base type and Q6_K there: Q2_K {0: 13, 10: 25,
# 11: 18, 14: 1}, Q3_K_S {0: 13, 11: 43, 14: 1}, Q3_K_M {0: 13, 11: 25,
# 12: 16, 13: 2, 14: 1}, Q3_K_L {0: 13, 11: 25, 13: 18, 14: 1}, Q4_K_S
# {0: 13, 12: 39, 13: 4, 14: 1}, Q4_K_M {0: 13, 12: 39, 14: 5})
COUNTS = {"kq2_k": {0: 13, 10: 24, 11: 18, 12: 2},
          "kq3_k_s": {0: 13, 11: 42, 12: 1, 13: 1},
          "kq3_k_m": {0: 13, 11: 24, 12: 17, 13: 3},
          "kq3_k_l": {0: 13, 11: 24, 12: 1, 13: 19},
          "kq4_k_s": {0: 13, 12: 38, 13: 6},
          "kq4_k_m": {0: 13, 12: 38, 13: 2, 14: 4},
          "kq5_k_s": {0: 13, 13: 43, 14: 1},
          "kq5_k_m": {0: 13, 13: 39, 14: 5}}


def cli(*args):
    subprocess.run([CLI] + [str(a) for a in args], check=True,
                   capture_output=True)


def encode(w, typ, tag, imp=None):
    """w [rows, cols] through gguf_cli quant / dequant: (bytes, values)."""
    f = {k: os.path.join(WORK, tag + "." + k) for k in ("w", "q", "o", "i")}
    w.astype("<f4").tofile(f["w"])
    extra = []
    if imp is not None:
        imp.astype("<f4").tofile(f["i"])
        extra = [f["i"]]
    cli("quant", typ, w.shape[0], w.shape[1], f["w"], f["q"], *extra)
    cli("dequant", typ, w.shape[0], w.shape[1], f["q"], f["o"])
    return (open(f["q"], "rb").read(),
            np.fromfile(f["o"], "<f4").reshape(w.shape))


def grids(tid, raw):
    """Every element's grid [n, codes] from the block's decoded scales,
    by ggufnp: the block decoded with every code set to c."""
    b = np.frombuffer(raw, np.uint8).reshape(-1, ggufnp.BLOCKS[tid][1])
    top = {10: 3, 11: 7, 12: 15, 13: 31, 14: 63}[tid]
    # byte ranges of the codes' low bits, then of their high bits
    fields = {10: [(16, 80)], 11: [(32, 96), (0, 32)], 12: [(16, 144)],
              13: [(48, 176), (16, 48)], 14: [(0, 128), (128, 192)]}[tid]
    out = []
    for c in range(top + 1):
        x = b.copy()
        for k, (lo, hi) in enumerate(fields):
            # every code c: the low field repeats c's low bits, the high
            # field c's high bits, in every slot of the byte
            if tid in (10, 11):
                v = [c & 3, c >> 2][k]
                pat = v * 0x55 if k == 0 else (0xFF if v else 0)
            elif tid in (12, 13):
                v = [c & 15, c >> 4][k]
                pat = v * 0x11 if k == 0 else (0xFF if v else 0)
            else:
                v = [c & 15, c >> 4][k]
                pat = v * 0x11 if k == 0 else v * 0x55
            x[:, lo:hi] = pat
        out.append(ggufnp.dequant(tid, x.tobytes()))
    return np.stack(out, 1)


def test_codecs():
    lib = ggufnp.libggml(LLAMA)
    dec = lib and lib[0]
    if dec is None:
        print("  (no %s/libggml-base.so: ggml's own decoder not checked)"
              % LLAMA)
    rng = np.random.default_rng(7)
    mats = {"random": (rng.standard_normal((32, 512)) * 0.05,
                       rng.random(512) * 2 + 0.1)}
    if os.path.exists(MODEL):
        src, _ = stread.read_st(os.path.join(MODEL, "model.safetensors"))
        w = src["model.layers.2.mlp.down_proj.weight"].astype(np.float32)
        mats["5M ffn_down"] = (w[:64], None)
    for label, (w, imp) in mats.items():
        errs = {}
        for typ, tid in TYPES.items():
            raw, vals = encode(w, typ, typ, imp)
            n = w.size
            ref = ggufnp.dequant(tid, raw)
            assert np.array_equal(vals.reshape(-1), ref), (label, typ)
            if dec:
                assert np.array_equal(dec(tid, raw, n), ref), (label, typ)
            g = grids(tid, raw)
            x = w.reshape(-1, 1).astype(np.float32)
            best = np.min(np.abs(g - x), 1)
            got = np.abs(vals.reshape(-1) - x[:, 0])
            assert np.all(got <= best + 1e-6 * np.max(np.abs(w))), \
                (label, typ, float(np.max(got - best)))
            errs[typ] = float(np.sqrt(np.mean((vals - w) ** 2) /
                                      np.mean(w ** 2)))
        print("  %s: relative RMS error %s" % (label, ", ".join(
            "%s %.4f" % kv for kv in errs.items())))
        e = list(errs.values())
        assert all(a > 1.6 * b for a, b in zip(e, e[1:])), errs
        assert errs["q2_k"] < 0.35 and errs["q3_k"] < 0.2, errs


def test_gptq_new_grids():
    rng = np.random.default_rng(3)
    rows, cols = 32, 512
    h, u, w = ggufnp.gptq_problem(rng, rows, cols)
    f = {k: os.path.join(WORK, "g." + k) for k in ("w", "u", "i", "q", "o")}
    w.astype("<f4").tofile(f["w"])
    u.astype("<f4").tofile(f["u"])
    np.diag(h).astype("<f4").tofile(f["i"])
    for typ in ("q2_k", "q3_k", "q5_k"):
        tid = TYPES[typ]
        cli("gptq", typ, rows, cols, f["w"], f["u"], f["q"], f["i"])
        raw = open(f["q"], "rb").read()
        vals = ggufnp.dequant(tid, raw).reshape(rows, cols)
        cli("dequant", typ, rows, cols, f["q"], f["o"])
        assert np.array_equal(np.fromfile(f["o"], "<f4"), vals.reshape(-1))
        g = grids(tid, raw)
        assert np.all(np.min(np.abs(g - vals.reshape(-1, 1)), 1) <=
                      1e-6 * np.abs(vals.reshape(-1)) + 1e-12), typ
        _, rtn = encode(w, typ, "r" + typ, np.diag(h))
        eg, er = w - vals, w - rtn
        og, orr = np.sum((eg @ h) * eg), np.sum((er @ h) * er)
        print("  %s: tr(E H E^T) GPTQ %.4g, RTN %.4g (%.3f)" % (
            typ, og, orr, og / orr))
        assert og < 0.85 * orr, (typ, og, orr)


def header(path):
    return ggufnp.header_only(path, WORK)


def test_mix_types_match_llama_quantize():
    if not os.path.exists(MODEL):
        raise SkipTest("../shared/data is absent")
    quantize = os.path.join(LLAMA, "llama-quantize")
    calib = os.path.join(SHARED, "data", "text", "tinystories", "calib.txt")
    opts = ["calib=" + calib, "calib_n=4", "calib_len=128"]
    with Mount(os.path.dirname(MODEL), opts=opts) as m:
        d = os.path.join(m.mnt, os.path.basename(MODEL))
        src = os.path.join(WORK, "source.gguf")
        shutil.copyfile(os.path.join(d, "original", "model.gguf"), src)
        for v, (mix, ftype) in MIXES.items():
            ours = header(os.path.join(d, v, "model.gguf"))
            assert ours.kv["general.file_type"] == ftype, \
                (v, ours.kv["general.file_type"])
            got = {n: t[0] for n, t in ours.tensors.items()}
            kinds = sorted(set(got.values()))
            counts = {k: list(got.values()).count(k) for k in kinds}
            assert counts == COUNTS[v], (v, counts)
            if not os.path.exists(quantize):
                print("  %s: types %s (no %s: not compared)" % (
                    v, kinds, quantize))
                continue
            out = os.path.join(WORK, mix + ".gguf")
            subprocess.run([quantize] + LAYOUT.get(v, []) +
                           [src, out, mix, "2"], check=True,
                           capture_output=True)
            if v in LAYOUT:	# and no larger than the stock mix
                stock = os.path.join(WORK, mix + "-stock.gguf")
                subprocess.run([quantize, src, stock, mix, "2"],
                               check=True, capture_output=True)
                size = os.path.getsize(os.path.join(d, v, "model.gguf"))
                print("  %s: %d bytes, llama-quantize's stock %s %d" % (
                    v, size, mix, os.path.getsize(stock)))
                assert size <= os.path.getsize(stock), (v, size)
            want = {n: t[0] for n, t in header(out).tensors.items()}
            diff = {n: (got.get(n), want.get(n))
                    for n in set(got) | set(want) if got.get(n) !=
                    want.get(n)}
            print("  %s vs llama-quantize %s: %d tensors, types %s" % (
                v, mix, len(got), kinds))
            assert not diff, (v, diff)
        if not os.path.exists(quantize):
            print("  SKIP the comparison with llama-quantize, tools absent "
                  "(bench/llamacpp.sh; QF_LLAMA_BIN): held to its recorded "
                  "counts of each type only")
        llama_reads([os.path.join(d, v, "model.gguf")
                     for v in ("kq3_k_m", "kq5_k_m")])


try:
    run_tests(globals())
finally:
    shutil.rmtree(WORK, ignore_errors=True)
