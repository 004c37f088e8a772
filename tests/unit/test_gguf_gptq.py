"""qf_ggml_gptq_quantize (quant/gguf/ggml_gptq.c): GPTQ's error feedback on
llama.cpp's Q4_K and Q6_K grids, checked in float64 numpy against the
block layouts of ggml-common.h (block_q4_K: fp16 d, dmin, 12 bytes of
6-bit sub-block scales and mins, 128 bytes of nibbles; block_q6_K: ql[128],
qh[64], int8 scales[16], fp16 d), decoded here without quantfs's code:

 - the bytes decode with quantfs's ggml dequantizer exactly as this
   file's numpy decoder decodes them;
 - every value sits on its block's grid (Q4_K: d * sc * l - dmin * m,
   l in 0..15; Q6_K: d * sc * (l - 32), l in 0..63);
 - for a random correlated Hessian H = X^T X / n, the GPTQ objective
   tr(E H E^T) (E = W - Q) is well below that of rounding to nearest on
   the same kind of grid (qf_ggml_quantize_row with the same importance,
   diag H), for two seeds.

usage: test_gguf_gptq.py GGUF_CLI      Prints 'N passed, N failed'.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tally import Tally  # noqa: E402

CLI = sys.argv[1]
T = Tally()
check = T.check


def f16(b):
    return b.copy().view("<f2").astype(np.float64)[..., 0]


def np_q4_k(raw, rows, cols):
    """(values, grid-ok mask) of Q4_K rows, from the block layout."""
    b = np.frombuffer(raw, np.uint8).reshape(-1, 144)
    d, dmin = f16(b[:, 0:2]), f16(b[:, 2:4])
    s = b[:, 4:16].astype(int)
    sc = np.zeros((len(b), 8), int)
    mn = np.zeros((len(b), 8), int)
    sc[:, :4], mn[:, :4] = s[:, 0:4] & 63, s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    qs = b[:, 16:].reshape(-1, 4, 32)
    codes = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 8, 32)
    step = (d[:, None] * sc)[:, :, None]
    off = (dmin[:, None] * mn)[:, :, None]
    v = step * codes - off
    return v.reshape(rows, cols), codes.reshape(rows, cols)


def np_q6_k(raw, rows, cols):
    b = np.frombuffer(raw, np.uint8).reshape(-1, 210)
    ql, qh = b[:, :128].astype(int), b[:, 128:192].astype(int)
    sc = b[:, 192:208].view(np.int8).astype(int)
    d = f16(b[:, 208:210])
    codes = np.zeros((len(b), 256), int)
    for h in range(2):
        lo, hi = ql[:, 64 * h:64 * h + 64], qh[:, 32 * h:32 * h + 32]
        for qd in range(4):
            nib = lo[:, 32 * (qd & 1):32 * (qd & 1) + 32]
            nib = nib >> 4 if qd >= 2 else nib & 15
            codes[:, 128 * h + 32 * qd:128 * h + 32 * qd + 32] = \
                nib | ((hi >> (2 * qd)) & 3) << 4
    step = np.repeat(d[:, None] * sc, 16, axis=1)
    return (step * (codes - 32)).reshape(rows, cols), codes.reshape(rows,
                                                                    cols)


DEC = {"q4_k": np_q4_k, "q6_k": np_q6_k}


def run(*args):
    subprocess.run([CLI] + [str(a) for a in args], check=True,
                   capture_output=True)


def case(tmp, tname, seed, rows=48, cols=512, n=4096):
    rng = np.random.default_rng(seed)
    # correlated inputs with a few loud channels, as a layer's are
    mix = rng.standard_normal((cols, cols)) / np.sqrt(cols)
    mix += np.eye(cols) * 0.3
    x = rng.standard_normal((n, cols)) @ mix
    x[:, rng.choice(cols, 8, replace=False)] *= 6
    h = x.T @ x / n
    w = rng.standard_normal((rows, cols)) * 0.05
    hd = h + 0.01 * np.mean(np.diag(h)) * np.eye(cols)
    u = np.linalg.cholesky(np.linalg.inv(hd)).T          # H^-1 = U^T U
    imp = np.diag(h)
    p = {k: os.path.join(tmp, k) for k in ("w", "u", "imp", "g", "r",
                                            "dg")}
    w.astype("<f4").tofile(p["w"])
    u.astype("<f4").tofile(p["u"])
    imp.astype("<f4").tofile(p["imp"])
    run("gptq", tname, rows, cols, p["w"], p["u"], p["g"], p["imp"])
    run("quant", tname, rows, cols, p["w"], p["r"], p["imp"])
    run("dequant", tname, rows, cols, p["g"], p["dg"])
    raw = open(p["g"], "rb").read()
    label = "%s seed %d" % (tname, seed)
    c_vals = np.fromfile(p["dg"], "<f4").reshape(rows, cols)
    vals, codes = DEC[tname](raw, rows, cols)
    check(np.allclose(c_vals, vals, rtol=1e-6, atol=1e-9),
          label + ": C dequantizer == numpy decoder of the layout")
    top = 15 if tname == "q4_k" else 63
    check(codes.min() >= 0 and codes.max() <= top,
          label + ": codes in range (every value on its block's grid)")
    rtn, _ = DEC[tname](open(p["r"], "rb").read(), rows, cols)
    e_g, e_r = w - vals, w - rtn
    obj_g = np.sum((e_g @ h) * e_g)
    obj_r = np.sum((e_r @ h) * e_r)
    print("  %s: tr(E H E^T) GPTQ %.4g, RTN %.4g (ratio %.3f)" % (
        label, obj_g, obj_r, obj_g / obj_r))
    check(obj_g < 0.85 * obj_r,
          label + ": GPTQ objective below 0.85 x RTN on the same grid "
          "(%.3f)" % (obj_g / obj_r))
    # a bad factor is refused: a zero on U's diagonal
    u0 = u.copy()
    u0[3, 3] = 0
    u0.astype("<f4").tofile(p["u"])
    r = subprocess.run([CLI, "gptq", tname, str(rows), str(cols), p["w"],
                        p["u"], p["g"]], capture_output=True, text=True)
    check(r.returncode != 0 and "gptq:" in r.stderr,
          label + ": a U with a zero diagonal is refused: %r" % r.stderr)


tmp = tempfile.mkdtemp(prefix="qf-test-gguf-gptq.")
try:
    for tname in ("q4_k", "q6_k"):
        for seed in (1, 2):
            case(tmp, tname, seed)
finally:
    shutil.rmtree(tmp)
T.finish()
