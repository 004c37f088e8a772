"""The published GPTQ algorithm in numpy float64, written apart from
quant/method/gptq.c: the oracle of test_gptq.py (GPTQ itself) and
test_mixed.py (the mixed variants' GPTQ sensitivities)."""
import numpy as np


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
