"""IQ4_NL and IQ4_XS (quant/gguf/ggml_iq4.c, the kiq4_nl / kiq4_xs views)
and the Q4_1 repacking of asymmetric 4-bit grids (qf_gguf_q4_1_from_int),
issue #24, against an independent numpy decoder written from
ggml-common.h's block layouts (block_iq4_nl: fp16 d, qs[16], value d *
kvalues_iq4nl[q], element j < 16 in the low nibble of qs[j], j + 16 in the
high one; block_iq4_xs: fp16 d, uint16 scales_h, scales_l[4], qs[128], sub-
block ib of 32 scaled by d * (ls - 32), ls = 4 bits of scales_l[ib / 2]
and 2 of scales_h) and, where llama.cpp's libggml-base.so is at hand
(QF_LLAMA_BIN, bench/llamacpp.sh), against ggml's own decoder and its own
quantizer (ggml_quantize_chunk, what llama-quantize calls):

 - the bytes decode in quantfs (gguf_cli dequant), in the numpy decoder
   and in ggml's to_float to the same floats;
 - every value is the nearest point of its (sub-)block's grid to the
   source value (the table times the stored scale);
 - no block (IQ4_XS: super-block) has a larger squared error than
   llama.cpp's own encoding of it without an imatrix, on Gaussian,
   heavy-tailed and the 5M model's weights; with an importance vector
   the weighted error sums below llama.cpp's with the same imatrix;
 - GPTQ on both grids (qf_ggml_gptq_quantize): codes on the grid and
   tr(E H E^T) below 0.85 x that of the plain encoding;
 - Q4_1 from integers: the codes kept, and no block's squared error from
   scale * (q - z) above that of d = scale with m the nearest fp16 of
   -scale * z (each value of which is within 15/2048 of the scale).

usage: test_gguf_iq4.py GGUF_CLI [SHARED]   Prints 'N passed, N failed'.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "mount"))
from tally import Tally  # noqa: E402
import ggufnp  # noqa: E402

CLI = sys.argv[1]
SHARED = sys.argv[2] if len(sys.argv) > 2 else ""
LLAMA = os.environ.get("QF_LLAMA_BIN", "/tmp/qf-llamacpp/bin")
T = Tally()
check = T.check
KV = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38,
               53, 69, 89, 113], np.float32)
TID = {"iq4_nl": 20, "iq4_xs": 23, "q4_1": 3}
BLK = {"iq4_nl": (32, 18), "iq4_xs": (256, 136), "q4_1": (32, 20)}
rng = np.random.default_rng(11)


def run(tmp, *args):
    subprocess.run([CLI] + [str(a) for a in args], check=True,
                   capture_output=True)


def quant(tmp, typ, x, imp=None, cmd="quant"):
    f = [os.path.join(tmp, n) for n in ("x.f32", "y.bin", "i.f32")]
    x.astype("<f4").tofile(f[0])
    extra = []
    if imp is not None:
        imp.astype("<f4").tofile(f[2])
        extra = [f[2]]
    run(tmp, cmd, typ, x.shape[0], x.shape[1], f[0], f[1], *extra)
    return open(f[1], "rb").read()


def c_dequant(tmp, typ, raw, rows, cols):
    f = [os.path.join(tmp, n) for n in ("r.bin", "o.f32")]
    open(f[0], "wb").write(raw)
    run(tmp, "dequant", typ, rows, cols, f[0], f[1])
    return np.fromfile(f[1], "<f4").reshape(rows, cols)


def np_scales(typ, raw):
    """Per element: the scale of its (sub-)block and its code, [n] each."""
    bs, nb = BLK[typ]
    b = np.frombuffer(raw, np.uint8).reshape(-1, nb)
    d = b[:, 0:2].copy().view("<f2").astype(np.float32)[:, 0]
    if typ == "iq4_nl":
        qs = b[:, 2:18]
        q = np.concatenate([qs & 15, qs >> 4], 1)
        return np.repeat(d, 32), q.reshape(-1)
    sh = b[:, 2:4].copy().view("<u2")[:, 0].astype(np.int32)
    sl = b[:, 4:8].astype(np.int32)
    sub = np.empty((len(b), 8), np.float32)
    q = np.empty((len(b), 8, 32), np.uint8)
    for ib in range(8):
        ls = ((sl[:, ib // 2] >> 4 * (ib % 2)) & 15) | \
            (((sh >> 2 * ib) & 3) << 4)
        sub[:, ib] = d * (ls - 32).astype(np.float32)
        qs = b[:, 8 + 16 * ib:24 + 16 * ib]
        q[:, ib] = np.concatenate([qs & 15, qs >> 4], 1)
    return np.repeat(sub.reshape(-1), 32), q.reshape(-1)


def np_dequant(typ, raw):
    if typ == "q4_1":
        b = np.frombuffer(raw, np.uint8).reshape(-1, 20)
        d = b[:, 0:2].copy().view("<f2").astype(np.float32)
        m = b[:, 2:4].copy().view("<f2").astype(np.float32)
        q = np.concatenate([b[:, 4:] & 15, b[:, 4:] >> 4], 1)
        return (q.astype(np.float32) * d + m).reshape(-1)
    s, q = np_scales(typ, raw)
    return (s * KV[q]).astype(np.float32)


def ggml():
    """libggml-base's (decode, encode) by our type names, or None."""
    lib = ggufnp.libggml(LLAMA)
    if not lib:
        return None
    return (lambda typ, raw, n: lib[0](TID[typ], raw, n),
            lambda typ, x, imp=None: lib[1](TID[typ], x, imp))


def block_err(typ, x, v, w=None):
    e = (v.astype(np.float64) - x.reshape(-1).astype(np.float64)) ** 2
    if w is not None:
        e = e * np.tile(w, x.shape[0])
    return e.reshape(-1, BLK[typ][0]).sum(1)


def mats():
    out = {"gauss": rng.standard_normal((64, 512)) * 0.02,
           "heavy tails": rng.standard_t(3, (64, 512)) * 0.02,
           "one sign": np.abs(rng.standard_normal((16, 512))) * 0.03}
    z = rng.standard_normal((16, 512)) * 0.01
    z[:, :32] = 0
    z[:, 40] = 0.5		# one outlier in a sub-block
    out["zeros, outlier"] = z
    model = os.path.join(SHARED, "data", "models", "tinystories-llama-5m",
                         "model.safetensors")
    if SHARED and os.path.exists(model):
        sys.path.insert(0, os.path.join(os.path.dirname(
            os.path.dirname(os.path.abspath(__file__))), "mount"))
        import stread
        src, _ = stread.read_st(model)
        out["5M down_proj"] = src["model.layers.2.mlp.down_proj.weight"] \
            .astype(np.float32)[:64]
        out["5M q_proj"] = src["model.layers.0.self_attn.q_proj.weight"] \
            .astype(np.float32)[:64]
    return {k: v.astype(np.float32) for k, v in out.items()}


def test_codecs(tmp, lib):
    for typ in ("iq4_nl", "iq4_xs"):
        ratios = []
        for label, x in mats().items():
            rows, cols = x.shape
            raw = quant(tmp, typ, x)
            v = np_dequant(typ, raw)
            check(np.array_equal(c_dequant(tmp, typ, raw, rows, cols)
                                 .reshape(-1), v),
                  "%s %s: quantfs decodes as numpy" % (typ, label))
            if lib:
                check(np.array_equal(lib[0](typ, raw, x.size), v),
                      "%s %s: ggml decodes as numpy" % (typ, label))
            s, _ = np_scales(typ, raw)
            grid = s[:, None] * KV[None, :]
            best = np.min(np.abs(grid - x.reshape(-1, 1)), 1)
            got = np.abs(v - x.reshape(-1))
            check(np.all(got <= best * (1 + 1e-6) + 1e-12),
                  "%s %s: every value the nearest on its grid" %
                  (typ, label))
            if not lib:
                continue
            ref = lib[0](typ, lib[1](typ, x), x.size)
            eo, er = block_err(typ, x, v), block_err(typ, x, ref)
            check(np.all(eo <= er * (1 + 1e-6) + 1e-20),
                  "%s %s: no block worse than llama.cpp's (worst %.4g)" %
                  (typ, label, float(np.max(eo / np.maximum(er, 1e-30)))))
            ratios.append("%s %.3f" % (label, eo.sum() / er.sum()))
        if ratios:
            print("  %s: squared error / llama.cpp's without imatrix: %s" %
                  (typ, ", ".join(ratios)))
    if not lib:
        print("  SKIP ggml's decoder and quantizer: no %s/libggml-base.so"
              " (bench/llamacpp.sh; QF_LLAMA_BIN)" % LLAMA)


def test_imatrix(tmp, lib):
    if not lib:
        return
    x = (rng.standard_normal((64, 512)) * 0.02).astype(np.float32)
    imp = (rng.random(512) ** 3 * 4 + 0.01).astype(np.float32)
    for typ in ("iq4_nl", "iq4_xs"):
        v = np_dequant(typ, quant(tmp, typ, x, imp))
        ref = lib[0](typ, lib[1](typ, x, np.tile(imp, 1)), x.size)
        eo = block_err(typ, x, v, imp).sum()
        er = block_err(typ, x, ref, imp).sum()
        print("  %s with an imatrix: imp-weighted error / llama.cpp's "
              "%.3f" % (typ, eo / er))
        check(eo < er, "%s: weighted error below llama.cpp's with the "
              "same imatrix" % typ)


def test_gptq(tmp):
    rows, cols = 32, 512
    h, u, w = ggufnp.gptq_problem(rng, rows, cols)
    w = w.astype(np.float32)
    f = {k: os.path.join(tmp, "g." + k) for k in ("w", "u", "i", "q")}
    w.astype("<f4").tofile(f["w"])
    u.astype("<f4").tofile(f["u"])
    np.diag(h).astype("<f4").tofile(f["i"])
    for typ in ("iq4_nl", "iq4_xs"):
        run(tmp, "gptq", typ, rows, cols, f["w"], f["u"], f["q"], f["i"])
        raw = open(f["q"], "rb").read()
        v = np_dequant(typ, raw)
        check(np.array_equal(c_dequant(tmp, typ, raw, rows, cols)
                             .reshape(-1), v), typ + " gptq: decodes")
        s, q = np_scales(typ, raw)
        check(np.array_equal(v, (s * KV[q]).astype(np.float32)),
              typ + " gptq: values on the grid")
        rtn = np_dequant(typ, quant(tmp, typ, w, np.diag(h)))
        eg = w - v.reshape(rows, cols)
        er = w - rtn.reshape(rows, cols)
        og, orr = np.sum((eg @ h) * eg), np.sum((er @ h) * er)
        print("  %s: tr(E H E^T) GPTQ %.4g, plain %.4g (%.3f)" % (
            typ, og, orr, og / orr))
        check(og < 0.85 * orr, typ + " gptq: below 0.85x the plain "
              "encoding's output error")


def test_q4_1_from_int(tmp):
    rows, cols = 16, 256
    q = rng.integers(0, 16, (rows, cols)).astype(np.uint8)
    z = rng.integers(0, 16, rows * cols // 32).astype("<i4")
    s = (rng.random(rows * cols // 32) * 0.02 + 1e-4).astype("<f2")
    f = [os.path.join(tmp, n) for n in ("q.u8", "s.f16", "y.bin", "z.i32")]
    q.tofile(f[0])
    s.tofile(f[1])
    z.tofile(f[3])
    run(tmp, "fromint", "q4_1", rows, cols, f[0], f[1], f[2], f[3])
    raw = open(f[2], "rb").read()
    v = np_dequant("q4_1", raw).reshape(-1, 32)
    b = np.frombuffer(raw, np.uint8).reshape(-1, 20)
    codes = np.concatenate([b[:, 4:] & 15, b[:, 4:] >> 4], 1)
    check(np.array_equal(codes, q.reshape(-1, 32)), "q4_1: the codes kept")
    s64 = s.astype(np.float64)[:, None]
    want = s64 * (q.reshape(-1, 32).astype(np.float64) - z[:, None])
    err = np.abs(v - want)
    # the plain choice: d = s, m = fp16(-s z): off by half an fp16 step
    # of |s z| <= 15 s, at most 15 / 2048 s
    m = (-(s.astype(np.float32) * z.astype(np.float32))).astype("<f2")
    plain = q.reshape(-1, 32).astype(np.float32) * \
        s.astype(np.float32)[:, None] + m.astype(np.float32)[:, None]
    ep = np.sum((plain - want) ** 2, 1)
    eo = np.sum((v - want) ** 2, 1)
    print("  q4_1 from int: |error| / scale max %.5f, rms %.5f; d = s, m "
          "nearest: max %.5f, rms %.5f (bound 15/2048 = %.5f)" % (
              float(np.max(err / s64)), float(np.sqrt(np.mean(
                  (err / s64) ** 2))), float(np.max(np.abs(plain - want) /
                                                s64)),
              float(np.sqrt(np.mean(((plain - want) / s64) ** 2))),
              15 / 2048))
    check(np.all(np.abs(plain - want) <= s64 * 15 / 2048 * (1 + 1e-6)),
          "q4_1: d = s, m nearest within 15/2048 of the scale")
    check(np.all(eo <= ep * (1 + 1e-9) + 1e-30),
          "q4_1: no block worse than d = s, m = nearest fp16")


def main():
    tmp = tempfile.mkdtemp(prefix="qf-iq4.")
    try:
        lib = ggml()
        test_codecs(tmp, lib)
        test_imatrix(tmp, lib)
        test_gptq(tmp)
        test_q4_1_from_int(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    T.finish()


main()
