"""GPTQ against an independent numpy implementation of the published
algorithm (float64), and against RTN.

usage: test_gptq.py GPTQ_CLI
For each configuration (bits, group, sym, act order, static groups) on a
random linear with correlated inputs: the layer output error of quantfs's
GPTQ must be lower than RTN's and within 2 % of the reference's; g_idx
must equal the reference's; grids of the first group match exactly.
Prints 'N passed, N failed'.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

CLI = sys.argv[1]
rng = np.random.default_rng(1234)


def grid(lo, hi, bits, sym):
    """quantfs's grid: fp16 scales, asymmetric zero >= 1 (v1 checkpoint)."""
    maxq = 2 ** bits - 1
    lo = np.minimum(lo, 0)
    hi = np.maximum(hi, 0)
    if sym:
        m = np.maximum(-lo, hi)
        m = np.where(m == 0, 1, m)
        sc = (2 * m / maxq).astype(np.float32)
        z = np.full(lo.shape, (maxq + 1) // 2, dtype=np.float64)
    else:
        both0 = (lo == 0) & (hi == 0)
        lo = np.where(both0, -1, lo)
        hi = np.where(both0, 1, hi)
        sc = ((hi - lo) / maxq).astype(np.float32)
        z = np.round(-lo / sc)
        bad = z < 1
        sc = np.where(bad, (hi / (maxq - 1)).astype(np.float32), sc)
        z = np.where(bad, 1, np.minimum(z, maxq))
    sc = sc.astype(np.float16).astype(np.float64)
    sc = np.where(sc == 0, 2.0 ** -24, sc)
    return sc, z


def quant(x, sc, z, maxq):
    return sc * (np.clip(np.round(x / sc) + z, 0, maxq) - z)


def gptq_ref(W, H, bits, group, sym, act, static, bs=128, damp=0.01):
    W = W.astype(np.float64).copy()
    H = H.astype(np.float64).copy()
    n = W.shape[1]
    maxq = 2 ** bits - 1
    gs = n if group <= 0 else group
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = []
    if static and gs < n:
        for g in range(0, n, gs):
            blk = W[:, g:g + gs]
            groups.append(grid(blk.min(1), blk.max(1), bits, sym))
    perm = np.arange(n)
    if act:
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
    H[np.arange(n), np.arange(n)] += damp * np.mean(np.diag(H))
    Hinv = np.linalg.inv(H)
    U = np.linalg.cholesky(Hinv).T          # Hinv = U^T U
    Q = np.zeros_like(W)
    cur = grid(W.min(1), W.max(1), bits, sym) if gs == n else None
    for i1 in range(0, n, bs):
        i2 = min(i1 + bs, n)
        W1 = W[:, i1:i2].copy()
        E = np.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if gs < n:
                if static:
                    cur = groups[perm[col] // gs]
                elif col % gs == 0:
                    blk = W[:, col:col + gs]
                    cur = grid(blk.min(1), blk.max(1), bits, sym)
            w = W1[:, i]
            q = quant(w, cur[0], cur[1], maxq)
            Q[:, col] = q
            e = (w - q) / U[col, col]
            W1[:, i:] -= np.outer(e, U[col, i1 + i:i2])
            E[:, i] = e
        W[:, i2:] -= E @ U[i1:i2, i2:]
    inv = np.argsort(perm)
    if static and act:
        gidx = np.array([perm[i] // gs for i in range(n)])
    else:
        gidx = np.arange(n) // gs
    if gs == n:
        gidx = np.zeros(n, dtype=int)
    return Q[:, inv], gidx[inv]


def out_err(W, Q, X):
    return float(np.sum(((W - Q) @ X.T) ** 2) / np.sum((W @ X.T) ** 2))


def run_case(out_f, in_f, bits, group, sym, act, static):
    # inputs with correlated channels and a few large ones, like real
    # activations; weights with outlier columns
    base = rng.standard_normal((2048, in_f // 8))
    X = np.repeat(base, 8, axis=1) + 0.3 * rng.standard_normal((2048, in_f))
    X *= np.exp(rng.standard_normal(in_f))
    X[:, rng.choice(in_f, 3, replace=False)] = 0      # dead inputs
    W = rng.standard_normal((out_f, in_f)) * 0.05
    W[:, :4] *= 8
    W = W.astype(np.float32)
    X = X.astype(np.float32)
    H = (X.T.astype(np.float64) @ X).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        W.tofile(os.path.join(d, "w"))
        H.tofile(os.path.join(d, "h"))
        subprocess.run([CLI, os.path.join(d, "w"), os.path.join(d, "h"),
                        str(out_f), str(in_f), str(bits), str(group),
                        str(int(sym)), str(int(act)), str(int(static)), d],
                       check=True)
        wq = np.fromfile(os.path.join(d, "wq.f32"), np.float32).reshape(
            out_f, in_f)
        gidx = np.fromfile(os.path.join(d, "gidx.i32"), np.int32)
        ng = -(-in_f // (in_f if group <= 0 else group))
        rq = np.fromfile(os.path.join(d, "rtn_q.u8"), np.uint8).reshape(
            out_f, in_f).astype(np.float64)
        rs = np.fromfile(os.path.join(d, "rtn_scale.f16"),
                         np.float16).reshape(out_f, ng).astype(np.float64)
        rz = np.fromfile(os.path.join(d, "rtn_zero.i32"), np.int32).reshape(
            out_f, ng)
    gs = in_f if group <= 0 else group
    g = np.arange(in_f) // gs
    rtn = rs[:, g] * (rq - rz[:, g])
    Wd = W.astype(np.float64)
    Wd[:, np.diag(H) == 0] = 0
    ref, ref_g = gptq_ref(W, H, bits, group, sym, act, static)
    e_q, e_ref, e_rtn = (out_err(Wd, wq, X), out_err(Wd, ref, X),
                         out_err(Wd, rtn, X))
    same = float(np.mean(wq == ref.astype(np.float32)))
    ok = e_q < e_rtn and abs(e_q - e_ref) <= 0.02 * e_ref and \
        np.array_equal(gidx, ref_g)
    print("%s w%d g%-4d sym=%d act=%d static=%d: rel. output error gptq %.5f "
          "ref %.5f rtn %.5f (gptq/rtn %.2f); identical values %.1f%%" % (
              "ok  " if ok else "FAIL", bits, group, sym, act, static, e_q,
              e_ref, e_rtn, e_q / e_rtn, 100 * same))
    return ok


cases = [(64, 256, b, g, s, a, st)
         for b in (2, 3, 4, 8) for g in (32, 128, -1) for s in (False, True)
         for a, st in ((False, False), (True, False), (True, True))
         if not (st and g < 0)]
cases.append((96, 384, 4, 128, False, True, False))   # more than one block
passed = failed = 0
for c in cases:
    if run_case(*c):
        passed += 1
    else:
        failed += 1
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
