"""qf_ggml_quantize_row_fit (quant/gguf/ggml_fit.c), the encoder of RTN
GGUF views, against an independent float64 numpy implementation of its
grid rule, written from ggml-common.h's block layouts (block_q4_0: fp16 d,
value d * (q - 8); block_q4_1: fp16 d, m, value d * q + m; block_q8_0:
fp16 d, value d * int8), not from quantfs's code:

 - the bytes decode with quantfs's existing ggml dequantizer (gguf_cli
   dequant) to exactly what a numpy decoder of the layout gives;
 - every value sits on its block's grid and is the nearest grid point to
   its source value for the stored scale (and offset);
 - each block's (weighted) squared error is at most the reference
   encoding's (gguf_cli quant, ggml's quantize_row_*_ref) and at most the
   numpy oracle's best over the same candidate scales (to float32
   rounding), for rows with the extreme of either sign, heavy tails,
   constant and all-zero blocks, with and without importance weights;
 - over Gaussian rows the fitted Q4_0 is well below the reference (the
   quantity the RTN view's change is for).

usage: test_gguf_fit.py GGUF_CLI      Prints 'N passed, N failed'.
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
rng = np.random.default_rng(2024)
T = Tally()
check = T.check
QK = 32


def cli(tmp, cmd, tname, x, imp=None):
    rows, cols = x.shape
    xin = os.path.join(tmp, "x.f32")
    out = os.path.join(tmp, "y.bin")
    x.astype("<f4").tofile(xin)
    args = [CLI, cmd, tname, str(rows), str(cols), xin, out]
    if imp is not None:
        ip = os.path.join(tmp, "imp.f32")
        imp.astype("<f4").tofile(ip)
        args.append(ip)
    subprocess.run(args, check=True, capture_output=True)
    return open(out, "rb").read()


def c_decode(tmp, tname, raw, rows, cols):
    inp = os.path.join(tmp, "raw.bin")
    out = os.path.join(tmp, "dec.f32")
    open(inp, "wb").write(raw)
    subprocess.run([CLI, "dequant", tname, str(rows), str(cols), inp, out],
                   check=True, capture_output=True)
    return np.fromfile(out, "<f4").reshape(rows, cols)


# ------------------------------------------------ numpy layout decoders
BYTES = {"q4_0": 18, "q4_1": 20, "q8_0": 34}


def np_blocks(tname, raw, rows, cols):
    """(d, m, codes) per block: codes as the integer multiplied by d."""
    b = np.frombuffer(raw, np.uint8).reshape(rows * cols // QK,
                                             BYTES[tname])
    d = b[:, 0:2].copy().view("<f2")[:, 0].astype(np.float64)
    if tname == "q8_0":
        return d, np.zeros_like(d), b[:, 2:].view(np.int8).astype(int)
    qs = b[:, 4:] if tname == "q4_1" else b[:, 2:]
    codes = np.concatenate([qs & 15, qs >> 4], axis=1).astype(int)
    if tname == "q4_1":
        m = b[:, 2:4].copy().view("<f2")[:, 0].astype(np.float64)
        return d, m, codes
    return d, np.zeros_like(d), codes - 8


def np_decode(tname, raw, rows, cols):
    d, m, c = np_blocks(tname, raw, rows, cols)
    # float32 as ggml computes it: d (fp16 -> f32) * code (+ m)
    v = d.astype(np.float32)[:, None] * c.astype(np.float32) + \
        m.astype(np.float32)[:, None]
    return v.reshape(rows, cols)


# ------------------------------------------------------ the grid rule
LEVELS = {"q4_0": (-8, 7), "q4_1": (0, 15), "q8_0": (-127, 127)}


def f16(v):
    with np.errstate(over="ignore"):
        return np.asarray(v, np.float64).astype(np.float16).astype(
            np.float64)


def oracle_best(tname, xb, wb):
    """Least weighted squared error over the candidate scales, float64."""
    lo, hi = LEVELS[tname]
    best = np.inf
    s = np.arange(-10, 11) / 80.0
    if tname == "q4_1":
        span = xb.max() - xb.min()
        if not span > 1e-15:
            return best
        mid = (xb.max() + xb.min()) / 2
        for si in s:
            c = np.clip(np.rint((xb - mid) * 15 * (1 + si) / span + 7.5),
                        0, 15)
            A = np.stack([c, np.ones_like(c)], 1) * np.sqrt(wb)[:, None]
            (d, m), *_ = np.linalg.lstsq(A, xb * np.sqrt(wb), rcond=None)
            d, m = f16(d), f16(m)
            if not (np.isfinite(d) and np.isfinite(m) and d > 0):
                continue
            c = np.clip(np.rint((xb - m) / d), 0, 15)
            best = min(best, np.sum(wb * (d * c + m - xb) ** 2))
        return best
    ext = xb[np.argmax(np.abs(xb))]
    if abs(ext) < 1e-15:
        return best
    for si in s:
        c = np.clip(np.rint(xb * (-lo) * (1 + si) / -ext), lo, hi)
        if not np.sum(wb * c * c) > 0:
            continue
        d = f16(np.sum(wb * xb * c) / np.sum(wb * c * c))
        if not np.isfinite(d) or d == 0:
            continue
        c = np.clip(np.rint(xb / d), lo, hi)
        best = min(best, np.sum(wb * (d * c - xb) ** 2))
    return best


def rows_for_test(cols):
    g = rng.standard_normal((6, cols))
    t = rng.standard_t(3, (4, cols))
    pos = np.abs(rng.standard_normal((2, cols)))       # extreme > 0
    pos[:, ::QK] = 4.0
    neg = -pos                                         # extreme < 0
    flat = np.full((1, cols), 0.37)
    zero = np.zeros((1, cols))
    tiny = rng.standard_normal((1, cols)) * 1e-6
    mixed = g[:1].copy()
    mixed[0, :QK] = 0                                  # one zero block
    return np.concatenate([g, t * 0.02, pos, neg, flat, zero, tiny, mixed]
                          ).astype(np.float32)


def test_type(tmp, tname, use_imp):
    cols = 256
    x = rows_for_test(cols)
    rows = x.shape[0]
    imp = rng.gamma(0.5, 2.0, cols).astype(np.float32) if use_imp else None
    raw = cli(tmp, "fit", tname, x, imp)
    ref = cli(tmp, "quant", tname, x)
    label = "%s%s" % (tname, " imp" if use_imp else "")
    check(len(raw) == rows * cols // QK * BYTES[tname], label + ": size")
    dec = c_decode(tmp, tname, raw, rows, cols)
    check(np.array_equal(dec, np_decode(tname, raw, rows, cols)),
          label + ": C dequantizer == numpy decoder of the layout")
    ref_dec = np_decode(tname, ref, rows, cols)
    d, m, c = np_blocks(tname, raw, rows, cols)
    lo, hi = LEVELS[tname]
    check(c.min() >= lo and c.max() <= hi, label + ": codes in range")
    xb = x.astype(np.float64).reshape(-1, QK)
    w = np.ones(cols) if imp is None else imp.astype(np.float64)
    wb = np.tile(w.reshape(-1, QK), (rows, 1))
    # nearest grid point for the stored scale (ties either way)
    grid = d[:, None, None] * np.arange(lo, hi + 1)[None, None, :] + \
        m[:, None, None]
    dist = np.abs(grid - xb[:, :, None]).min(axis=2)
    got = np.abs(dec.reshape(-1, QK).astype(np.float64) - xb)
    check(np.all(got <= dist + 1e-6 * (np.abs(xb) + np.abs(d)[:, None])),
          label + ": every value the nearest on its block's grid")
    e_fit = np.sum(wb * (dec.reshape(-1, QK) - xb) ** 2, axis=1)
    e_ref = np.sum(wb * (ref_dec.reshape(-1, QK) - xb) ** 2, axis=1)
    e_orc = np.array([oracle_best(tname, xb[i], wb[i])
                      for i in range(len(xb))])
    tol = 1e-5 * e_ref + 1e-30
    check(np.all(e_fit <= e_ref + tol),
          label + ": no block worse than quantize_row_ref (%d are)" %
          np.sum(e_fit > e_ref + tol))
    ok = np.isfinite(e_orc)
    bound = np.minimum(e_orc, e_ref)
    worse = e_fit[ok] > bound[ok] * (1 + 1e-3) + 1e-30
    check(not np.any(worse),
          label + ": no block worse than the numpy oracle's best (%d are, "
          "worst ratio %.4g)" % (np.sum(worse), np.max(
              e_fit[ok] / np.maximum(bound[ok], 1e-300))))
    gauss = slice(0, 6 * cols // QK)
    ratio = e_fit[gauss].sum() / e_ref[gauss].sum()
    print("  %s: squared error fit / ref on Gaussian rows %.4f" %
          (label, ratio))
    return ratio


tmp = tempfile.mkdtemp(prefix="qf-test-gguf-fit.")
try:
    r = {}
    for tname in ("q4_0", "q4_1", "q8_0"):
        for use_imp in (False, True):
            r[tname, use_imp] = test_type(tmp, tname, use_imp)
    check(r["q4_0", False] < 0.95,
          "q4_0: fitted scales cut the Gaussian error by > 5 %% (%.4f)" %
          r["q4_0", False])
    check(r["q4_1", False] < 0.95,
          "q4_1: fitted scales cut the Gaussian error by > 5 %% (%.4f)" %
          r["q4_1", False])
    # bad input: a NaN is refused, as by the reference encoder
    bad = np.zeros((1, 32), np.float32)
    bad[0, 3] = np.nan
    bad.astype("<f4").tofile(os.path.join(tmp, "bad.f32"))
    p = subprocess.run([CLI, "fit", "q4_0", "1", "32",
                        os.path.join(tmp, "bad.f32"),
                        os.path.join(tmp, "o")], capture_output=True,
                       text=True)
    check(p.returncode != 0 and p.stderr.strip() != "",
          "a NaN is refused with an error: %r" % p.stderr)
finally:
    shutil.rmtree(tmp)
T.finish()
