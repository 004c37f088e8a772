"""AWQ (quant/method/awq.c) against an independent numpy reference (float64).

usage: test_awq.py AWQ_CLI
The reference is written from the method descriptions (AutoAWQ's grid,
llm-awq's scale search, AutoAWQ's clip search, greedy rounding flips, GQA
ReFlip, the AutoAWQ GEMM layout), not from the C code.  The grid follows
the fp32 arithmetic the description fixes (f32 scale rounded to fp16, f32
quotients), so grids and RTN levels must be identical; everything else is
float64 and compared with tolerances.  Prints 'N passed, N failed'.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

CLI = sys.argv[1]
rng = np.random.default_rng(20240611)
ORDER = [0, 2, 4, 6, 1, 3, 5, 7]        # AutoAWQ's nibble order
QF_ENUMERIC = -4101
results = []
ROOT = tempfile.TemporaryDirectory(prefix="test_awq")


def check(name, ok, detail=""):
    print("%s %s%s" % ("ok  " if ok else "FAIL", name,
                       ": " + detail if detail else ""))
    results.append(bool(ok))


def cli(args, files):
    """Run the CLI with the given arrays written to files; return a reader
    of its output files (name, dtype) and the res.txt fields."""
    d = tempfile.mkdtemp(dir=ROOT.name)
    for name, arr in files.items():
        np.ascontiguousarray(arr).tofile(os.path.join(d, name))
    argv = [CLI] + [os.path.join(d, a[1:]) if isinstance(a, str) and
                    a.startswith("@") else str(a) for a in args] + [d]
    subprocess.run(argv, check=True)

    def read(name, dt):
        return np.fromfile(os.path.join(d, name), dt)
    res = None
    if os.path.exists(os.path.join(d, "res.txt")):
        with open(os.path.join(d, "res.txt")) as f:
            res = f.read().split()
    return read, res


def groups(n, group):
    gs = n if group <= 0 or group >= n else group
    return [(a, min(a + gs, n)) for a in range(0, n, gs)]


# ---------------------------------------------------------------- grid
def grid32(lo, hi, bits):
    """AutoAWQ's asymmetric grid in the fp32 arithmetic of the spec:
    scale = max((hi - lo) / maxq, 1e-5) in f32, rounded to fp16; zero =
    clamp(round(-lo / scale), 0, maxq).  Returns fp16 scales, f32 scales,
    zeros and whether the scale is finite."""
    maxq = np.float32(2 ** bits - 1)
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    with np.errstate(all="ignore"):
        sc = (hi - lo) / maxq
        sc = np.where(sc < np.float32(1e-5), np.float32(1e-5), sc)
        sc16 = sc.astype(np.float16)
        sc32 = sc16.astype(np.float32)
        ok = np.isfinite(sc32)
        z = np.clip(np.round(-lo / sc32), 0, maxq)
    return sc16, sc32, z, ok


def rtn32(w, bits, group):
    """Round to nearest per (row, group), levels clamp(round(w / s) + z)."""
    w = w.astype(np.float32)
    out, n = w.shape
    gr = groups(n, group)
    q = np.zeros((out, n), np.int64)
    sc16 = np.zeros((out, len(gr)), np.float16)
    z = np.zeros((out, len(gr)), np.int64)
    for g, (a, b) in enumerate(gr):
        blk = w[:, a:b]
        s16, s32, zz, _ = grid32(blk.min(1), blk.max(1), bits)
        q[:, a:b] = np.clip(np.round(blk / s32[:, None]) + zz[:, None], 0,
                            2 ** bits - 1)
        sc16[:, g] = s16
        z[:, g] = zz
    return q, sc16, z


def deq(q, sc16, z, group):
    out, n = q.shape
    w = np.zeros((out, n))
    for g, (a, b) in enumerate(groups(n, group)):
        s = sc16[:, g].astype(np.float64)[:, None]
        w[:, a:b] = s * (q[:, a:b] - z[:, g][:, None])
    return w


def test_grid():
    bits = 4
    lo = rng.standard_normal(400) * np.exp(rng.uniform(-8, 3, 400))
    hi = lo + np.abs(rng.standard_normal(400)) * np.exp(
        rng.uniform(-12, 3, 400))
    pairs = list(zip(lo, hi))
    pairs += [(0, 0), (1, 1), (0.5, 2.0), (-3.0, -1.0), (-1e-6, 1e-6),
              (-7.5, 7.5), (-1e6, 1e6), (float("nan"), 1.0), (2.0, 3.0),
              (-0.046875, 0.1875)]
    lohi = np.array(pairs, np.float32)
    for b in (2, 3, 4, 8):
        read, _ = cli(["grid", "@lohi", len(lohi), b], {"lohi": lohi})
        sc = read("sc.f16", np.uint16)
        zc = read("zero.i32", np.int32)
        rc = read("rc.i32", np.int32)
        s16, _, zr, ok = grid32(lohi[:, 0], lohi[:, 1], b)
        same = (np.array_equal(sc[ok], s16[ok].view(np.uint16)) and
                np.array_equal(zc[ok], zr[ok].astype(np.int32)) and
                np.array_equal(rc == QF_ENUMERIC, ~ok) and
                np.all(rc[ok] == 0))
        check("grid w%d" % b, same, "%d ranges, %d not finite in fp16" % (
            len(lohi), np.sum(~ok)))
    del bits


def test_rtn():
    for out, n, bits, group in ((48, 100, 4, 32), (32, 128, 3, 64),
                                (32, 128, 2, 128), (16, 96, 8, -1),
                                (16, 64, 4, 256)):
        w = (rng.standard_normal((out, n)) * 0.05).astype(np.float32)
        w[:, 3] *= 10
        w[0] = np.abs(w[0]) + 0.1           # all positive: zero clamps
        w[1] = -np.abs(w[1]) - 0.1          # all negative: zero hits maxq
        read, _ = cli(["rtn", "@w", out, n, bits, group], {"w": w})
        ng = len(groups(n, group))
        q = read("q.u8", np.uint8).reshape(out, n)
        sc = read("sc.f16", np.uint16).reshape(out, ng)
        z = read("zero.i32", np.int32).reshape(out, ng)
        qr, sr, zr = rtn32(w, bits, group)
        same = (np.array_equal(q, qr) and np.array_equal(sc, sr.view(
            np.uint16)) and np.array_equal(z, zr))
        check("rtn w%d g%d %dx%d" % (bits, group, out, n), same,
              "identical levels %.2f%%" % (100 * np.mean(q == qr)))


# ------------------------------------------------------- float64 pieces
def fake64(w, bits, group):
    """Group RTN in float64: the dequantized weights."""
    maxq = 2 ** bits - 1
    out = np.empty_like(w)
    for a, b in groups(w.shape[1], group):
        blk = w[:, a:b]
        lo = blk.min(1, keepdims=True)
        hi = blk.max(1, keepdims=True)
        s = np.maximum((hi - lo) / maxq, 1e-5)
        s = s.astype(np.float16).astype(np.float64)
        z = np.clip(np.round(-lo / s), 0, maxq)
        out[:, a:b] = s * (np.clip(np.round(blk / s) + z, 0, maxq) - z)
    return out


def energy(d, h):
    """Per-row output error energy d H d^T."""
    return np.sum((d @ h) * d, axis=1)


def activations(n_tok, n, outliers):
    base = rng.standard_normal((n_tok, n // 8))
    x = np.repeat(base, 8, axis=1) + 0.5 * rng.standard_normal((n_tok, n))
    x *= np.exp(0.5 * rng.standard_normal(n))
    if outliers:
        x[:, rng.choice(n, outliers, replace=False)] *= 25
    return x.astype(np.float32)


def hessian(x):
    return (x.T.astype(np.float64) @ x.astype(np.float64)).astype(np.float32)


# --------------------------------------------------------- scale search
def scale_ref(ws, sal, h, bits, group, ngrid):
    h = h.astype(np.float64)
    errs, scales = [], []
    for i in range(ngrid):
        s = np.maximum(sal.astype(np.float64), 1e-4) ** (i / ngrid)
        s = s / np.sqrt(s.max() * s.min())
        e = 0.0
        for w in ws:
            w = w.astype(np.float64)
            e += energy(fake64(w * s, bits, group) / s - w, h).sum()
        errs.append(e)
        scales.append(s)
    return np.array(errs), scales


def test_scale(outliers, flat=False):
    n, ngrid, group, bits = 256, 20, 64, 4
    x = activations(2048, n, outliers)
    h = hessian(x)
    sal = np.mean(np.abs(x), axis=0).astype(np.float32)
    if flat:        # every alpha gives s = 1: a tie, the smallest wins
        sal[:] = 0.5
    ws = [(rng.standard_normal((o, n)) * 0.05).astype(np.float32)
          for o in (128, 64)]
    read, res = cli(["scale", "@sal", "@h", n, bits, group, ngrid, 2,
                     "@w0", 128, "@w1", 64],
                    {"sal": sal, "h": h, "w0": ws[0], "w1": ws[1]})
    alpha, best, plain = (float(v) for v in res)
    s = read("s.f32", np.float32)
    errs, scales = scale_ref(ws, sal, h, bits, group, ngrid)
    ia, ir = int(round(alpha * ngrid)), int(np.argmin(errs))
    same = ia == ir or abs(errs[ia] - errs[ir]) <= 1e-4 * errs[ir]
    ok = (same and best <= plain and
          abs(best - errs[ia]) <= 1e-3 * errs[ia] and
          abs(plain - errs[0]) <= 1e-4 * errs[0] and
          np.allclose(s, scales[ia], rtol=1e-6, atol=0))
    if outliers:
        ok = ok and best < plain and ia > 0
    if flat:
        ok = ok and alpha == 0 and best == plain and np.all(s == 1)
    check("scale search %s" % ("flat salience" if flat else
                               "outlier channels" if outliers else
                               "no outliers"), ok,
          "alpha %.2f (ref %.2f), err %.5g vs plain %.5g (ref %.5g, %.5g)"
          % (alpha, ir / ngrid, best, plain, errs[ir], errs[0]))


# ----------------------------------------------------------- clip search
def clip_ref(w, h, bits, group, grid, shrink):
    w = w.astype(np.float64)
    h = h.astype(np.float64)
    wc = w.copy()
    for a, b in groups(w.shape[1], group):
        blk, hg = w[:, a:b], h[a:b, a:b]
        m = np.abs(blk).max(1)
        best_e = np.full(len(m), np.inf)
        best_b = m.copy()
        for i in range(grid):
            bound = m * (1 - i / grid * shrink)
            c = np.clip(blk, -bound[:, None], bound[:, None])
            e = energy(fake64(c, bits, b - a) - blk, hg)
            better = e < best_e
            best_e[better] = e[better]
            best_b[better] = bound[better]
        wc[:, a:b] = np.clip(blk, -best_b[:, None], best_b[:, None])
    return wc


def clip_err(w, wc, h, bits, group):
    """Sum over groups of d_g H_gg d_g^T, d = RTN(clipped) - w."""
    w = w.astype(np.float64)
    wc = wc.astype(np.float64)
    h = h.astype(np.float64)
    e = 0.0
    for a, b in groups(w.shape[1], group):
        d = fake64(wc[:, a:b], bits, b - a) - w[:, a:b]
        e += energy(d, h[a:b, a:b]).sum()
    return e


def test_clip(bits, group):
    out, n, grid, shrink = 64, 256, 20, 0.5
    x = activations(1024, n, 4)
    h = hessian(x)
    w = (rng.standard_t(3, (out, n)) * 0.05).astype(np.float32)
    read, _ = cli(["clip", "@w", "@h", out, n, bits, group, grid, shrink],
                  {"w": w, "h": h})
    wc = read("wc.f32", np.float32).reshape(out, n)
    ref = clip_ref(w, h, bits, group, grid, shrink)
    e_c = clip_err(w, wc, h, bits, group)
    e_r = clip_err(w, ref, h, bits, group)
    e_0 = clip_err(w, w, h, bits, group)
    # the result must be a symmetric clamp of each (row, group)
    shape_ok = True
    for a, b in groups(n, group):
        bnd = np.abs(wc[:, a:b]).max(1, keepdims=True)
        shape_ok &= np.array_equal(wc[:, a:b], np.clip(w[:, a:b], -bnd, bnd))
    ok = (shape_ok and abs(e_c - e_r) <= 1e-5 * e_r and
          e_c <= e_0 * (1 + 1e-9) and e_c < e_0)
    check("clip search w%d g%d" % (bits, group), ok,
          "err %.6g ref %.6g no-clip %.6g; clamped like ref %.1f%%" % (
              e_c, e_r, e_0, 100 * np.mean(wc == ref.astype(np.float32))))


# ----------------------------------------------------------------- flip
def step_dir(w, q, sc16, z, group):
    """+1 where the level rounded down (flip up), else -1."""
    v = np.zeros_like(w, dtype=np.float64)
    for g, (a, b) in enumerate(groups(w.shape[1], group)):
        s = sc16[:, g].astype(np.float64)[:, None]
        v[:, a:b] = w[:, a:b] / s + z[:, g][:, None]
    return np.where(q <= v, 1, -1)


def flip_ref(w, h, q, sc16, z, bits, group):
    """Greedy flips per row, g = H d recomputed from scratch each step."""
    maxq = 2 ** bits - 1
    w64 = w.astype(np.float64)
    h = h.astype(np.float64)
    q = q.copy()
    dirs = step_dir(w64, q, sc16, z, group)
    sc = deq(np.ones_like(q), sc16, np.zeros_like(z), group)  # scale per w
    for r in range(w.shape[0]):
        free = (q[r] + dirs[r] >= 0) & (q[r] + dirs[r] <= maxq)
        while True:
            d = deq(q[r:r + 1], sc16[r:r + 1], z[r:r + 1], group)[0] - w64[r]
            e = d @ h @ d
            g = h @ d
            dl = dirs[r] * sc[r]
            ch = np.where(free, dl * (2 * g + dl * np.diag(h)), np.inf)
            j = int(np.argmin(ch))
            if not ch[j] < -1e-12 * abs(e):
                break
            q[r, j] += dirs[r, j]
            free[j] = False
    return q


def test_flip(bits, group):
    out, n = 64, 256
    x = activations(1024, n, 3)
    h = hessian(x)
    w = (rng.standard_normal((out, n)) * 0.05).astype(np.float32)
    read, res = cli(["flip", "@w", "@h", out, n, bits, group],
                    {"w": w, "h": h})
    ng = len(groups(n, group))
    q0 = read("q0.u8", np.uint8).reshape(out, n).astype(np.int64)
    q = read("q.u8", np.uint8).reshape(out, n).astype(np.int64)
    sc16 = read("sc.f16", np.float16).reshape(out, ng)
    z = read("zero.i32", np.int32).reshape(out, ng).astype(np.int64)
    before, after, nflips, e_api = (float(res[0]), float(res[1]),
                                    int(res[2]), float(res[3]))
    h64 = h.astype(np.float64)
    w64 = w.astype(np.float64)
    e0 = energy(deq(q0, sc16, z, group) - w64, h64)
    e1 = energy(deq(q, sc16, z, group) - w64, h64)
    ch = q != q0
    dirs = step_dir(w64, q0, sc16, z, group)
    moves_ok = (np.all(np.abs(q - q0) <= 1) and
                np.all((q - q0)[ch] == dirs[ch]) and q.min() >= 0 and
                q.max() <= 2 ** bits - 1 and nflips == int(ch.sum()))
    qr = flip_ref(w, h, q0, sc16, z, bits, group)
    er = energy(deq(qr, sc16, z, group) - w64, h64).sum()
    rel = lambda a, b: abs(a - b) / abs(b)
    ok = (moves_ok and np.all(e1 <= e0 * (1 + 1e-9)) and
          e1.sum() < e0.sum() and rel(before, e0.sum()) <= 1e-5 and
          rel(after, e1.sum()) <= 1e-5 and rel(e_api, e1.sum()) <= 1e-5 and
          rel(e1.sum(), er) <= 1e-4)
    check("flip w%d g%d" % (bits, group), ok,
          "energy %.6g -> %.6g (ref greedy %.6g), %d flips (ref %d), "
          "levels as ref %.2f%%" % (e0.sum(), e1.sum(), er, nflips,
                                   int((qr != q0).sum()),
                                   100 * np.mean(q == qr)))


# --------------------------------------------------------------- reflip
def score_err(x, wq, wk, wq2, wk2, heads, kv, hd):
    x = x.astype(np.float64)
    q, k = x @ wq.T, x @ wk.T
    q2, k2 = x @ wq2.T, x @ wk2.T
    num = den = 0.0
    for h in range(heads):
        g = h // (heads // kv)
        s = q[:, h * hd:(h + 1) * hd] @ k[:, g * hd:(g + 1) * hd].T
        s2 = q2[:, h * hd:(h + 1) * hd] @ k2[:, g * hd:(g + 1) * hd].T
        num += np.sum((s2 - s) ** 2)
        den += np.sum(s ** 2)
    return num / den


def critical(sal, pct):
    n = len(sal)
    c = min(max(int(np.floor(pct * n)), 1), n)
    order = np.argsort(sal, kind="stable")
    start = (n - c) // 2
    return np.sort(order[start:start + c])


def reflip_ref(x, wq, wk, sal, qq, qk, scq, sck, zq, zk, bits, group, heads,
               kv, hd, max_flip, crit_pct):
    """Greedy ReFlip with explicit [n, n] score errors: every step
    recomputes E_h and G from the current weights."""
    maxq = 2 ** bits - 1
    n_in = x.shape[1]
    lim = max(int(np.floor(max_flip * n_in)), 1)
    crit = critical(sal, crit_pct)
    x = x.astype(np.float64)
    hs = x.T @ x
    wq64, wk64 = wq.astype(np.float64), wk.astype(np.float64)
    qq, qk = qq.copy(), qk.copy()
    grp = heads // kv

    def run(w64, q, sc16, z, rows, grad):
        dirs = step_dir(w64, q, sc16, z, group)[rows][:, crit]
        s = deq(np.ones_like(q), sc16, np.zeros_like(z), group)[rows][:, crit]
        free = (q[rows][:, crit] + dirs >= 0) & (q[rows][:, crit] + dirs
                                                 <= maxq)
        cnt = np.zeros(len(rows), int)
        while True:
            e, g, c = grad()                 # g [in, hd], c [hd, hd]
            dl = (dirs * s).T                # [c, hd]
            ch = dl * (2 * g[crit] + dl * np.diag(hs)[crit][:, None] *
                       np.diag(c)[None, :])
            ok = free.T & (cnt[None, :] < lim)
            ch = np.where(ok, ch, np.inf)
            ci, d = np.unravel_index(int(np.argmin(ch)), ch.shape)
            if not ch[ci, d] < -1e-12 * abs(e):
                break
            q[rows[d], crit[ci]] += dirs[d, ci]
            free[d, ci] = False
            cnt[d] += 1

    for h in range(heads):
        g = h // grp
        rq, rk = slice(h * hd, (h + 1) * hd), slice(g * hd, (g + 1) * hd)

        def grad_q():
            wq2 = deq(qq, scq, zq, group)
            wk2 = deq(qk, sck, zk, group)
            k, k2 = x @ wk64[rk].T, x @ wk2[rk].T
            e = (x @ wq2[rq].T) @ k2.T - (x @ wq64[rq].T) @ k.T
            return np.sum(e ** 2), x.T @ e @ k2, k2.T @ k2
        run(wq64, qq, scq, zq, np.arange(h * hd, (h + 1) * hd), grad_q)
    for g in range(kv):
        rk = slice(g * hd, (g + 1) * hd)

        def grad_k():
            wq2 = deq(qq, scq, zq, group)
            wk2 = deq(qk, sck, zk, group)
            k, k2 = x @ wk64[rk].T, x @ wk2[rk].T
            et, gk, c = 0.0, 0.0, 0.0
            for h in range(g * grp, (g + 1) * grp):
                rq = slice(h * hd, (h + 1) * hd)
                q2 = x @ wq2[rq].T
                e = q2 @ k2.T - (x @ wq64[rq].T) @ k.T
                et += np.sum(e ** 2)
                gk = gk + x.T @ e.T @ q2
                c = c + q2.T @ q2
            return et, gk, c
        run(wk64, qk, sck, zk, np.arange(g * hd, (g + 1) * hd), grad_k)
    return qq, qk


def test_reflip(bits, group):
    heads, kv, hd, n_in, n = 4, 2, 16, 64, 96
    max_flip, crit_pct = 0.05, 0.15
    x = activations(n, n_in, 2)
    sal = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=0)).astype(
        np.float32)
    wq = (rng.standard_normal((heads * hd, n_in)) * 0.1).astype(np.float32)
    wk = (rng.standard_normal((kv * hd, n_in)) * 0.1).astype(np.float32)
    read, res = cli(["reflip", "@wq", "@wk", "@x", "@sal", n_in, n, heads, kv,
                     hd, bits, group, max_flip, crit_pct],
                    {"wq": wq, "wk": wk, "x": x, "sal": sal})
    ng = len(groups(n_in, group))
    rd = lambda name, dt, rows: read(name, dt).reshape(rows, -1).astype(
        np.int64 if dt != np.float16 else np.float16)
    qq0, qk0 = rd("qq0.u8", np.uint8, heads * hd), rd("qk0.u8", np.uint8,
                                                       kv * hd)
    qq, qk = rd("qq.u8", np.uint8, heads * hd), rd("qk.u8", np.uint8,
                                                   kv * hd)
    scq, sck = rd("scq.f16", np.float16, heads * hd), rd("sck.f16",
                                                         np.float16, kv * hd)
    zq, zk = rd("zq.i32", np.int32, heads * hd), rd("zk.i32", np.int32,
                                                    kv * hd)
    before, after, nflips, s0, s1 = (float(res[0]), float(res[1]),
                                     int(res[2]), float(res[3]),
                                     float(res[4]))
    e0 = score_err(x, wq, wk, deq(qq0, scq, zq, group),
                   deq(qk0, sck, zk, group), heads, kv, hd)
    e1 = score_err(x, wq, wk, deq(qq, scq, zq, group),
                   deq(qk, sck, zk, group), heads, kv, hd)
    lim = max(int(np.floor(max_flip * n_in)), 1)
    crit = critical(sal, crit_pct)
    noncrit = np.setdiff1d(np.arange(n_in), crit)
    moves_ok = True
    for q0, q1, sc16, z, w in ((qq0, qq, scq, zq, wq), (qk0, qk, sck, zk,
                                                         wk)):
        ch = q1 != q0
        dirs = step_dir(w.astype(np.float64), q0, sc16, z, group)
        moves_ok &= (np.all(ch.sum(1) <= lim) and not ch[:, noncrit].any()
                     and np.all((q1 - q0)[ch] == dirs[ch]) and
                     q1.min() >= 0 and q1.max() <= 2 ** bits - 1)
    nch = int((qq != qq0).sum() + (qk != qk0).sum())
    rq, rk = reflip_ref(x, wq, wk, sal, qq0, qk0, scq, sck, zq, zk, bits,
                        group, heads, kv, hd, max_flip, crit_pct)
    er = score_err(x, wq, wk, deq(rq, scq, zq, group),
                   deq(rk, sck, zk, group), heads, kv, hd)
    rel = lambda a, b: abs(a - b) / abs(b)
    ok = (moves_ok and nch == nflips and e1 <= e0 and e1 < e0 and
          rel(before, e0) <= 1e-4 and rel(after, e1) <= 1e-4 and
          rel(s0, e0) <= 1e-4 and rel(s1, e1) <= 1e-4 and
          rel(e1, er) <= 1e-3)
    same = np.mean(np.concatenate([(qq == rq).ravel(), (qk == rk).ravel()]))
    check("reflip w%d g%d" % (bits, group), ok,
          "score error %.6g -> %.6g (ref greedy %.6g), %d flips, <= %d per "
          "row, levels as ref %.2f%%" % (e0, e1, er, nflips, lim, 100 * same))


# ---------------------------------------------------------------- pack
def unpack_ref(qweight, qzeros, scales, out, n_in, ng):
    """AutoAWQ GEMM layout read back: nibble i of word (k, c) is output
    column 8c + ORDER[i]."""
    qw = qweight.view(np.uint32).reshape(n_in, out // 8)
    qz = qzeros.view(np.uint32).reshape(ng, out // 8)
    q = np.zeros((out, n_in), np.int64)
    z = np.zeros((out, ng), np.int64)
    for c in range(out // 8):
        for i in range(8):
            q[8 * c + ORDER[i], :] = (qw[:, c] >> (4 * i)) & 15
            z[8 * c + ORDER[i], :] = (qz[:, c] >> (4 * i)) & 15
    sc = scales.reshape(ng, out).T
    return q, z, sc


def test_pack(out, n_in, group):
    w = (rng.standard_normal((out, n_in)) * 0.05).astype(np.float32)
    w[:, 5] += 0.3           # zeros away from the middle of the range
    read, _ = cli(["pack", "@w", out, n_in, group], {"w": w})
    ng = len(groups(n_in, group))
    q = read("q.u8", np.uint8).reshape(out, n_in)
    sc = read("sc.f16", np.uint16).reshape(out, ng)
    z = read("zero.i32", np.int32).reshape(out, ng)
    uq, uz, usc = unpack_ref(read("qweight.i32", np.int32),
                             read("qzeros.i32", np.int32),
                             read("scales.f16", np.uint16), out, n_in, ng)
    ok = (np.array_equal(uq, q) and np.array_equal(uz, z) and
          np.array_equal(usc, sc) and
          np.array_equal(read("uq.u8", np.uint8).reshape(out, n_in), q) and
          np.array_equal(read("usc.f16", np.uint16).reshape(out, ng), sc) and
          np.array_equal(read("uz.i32", np.int32).reshape(out, ng), z) and
          len(np.unique(z)) > 1)
    check("pack %dx%d g%d" % (out, n_in, group), ok,
          "numpy unpack of qweight/qzeros/scales and C unpack round trip")


def test_packable():
    cases = [((4, 128, 64, 32), 1), ((4, 128, 64, 128), 1),
             ((4, 128, 64, 256), 1), ((4, 128, 64, -1), 1),
             ((4, 100, 64, 32), 0), ((4, 128, 60, 32), 0),
             ((3, 128, 64, 32), 0), ((8, 128, 64, 32), 0)]
    bad = []
    for args, want in cases:
        r = subprocess.run([CLI, "packable"] + [str(a) for a in args],
                           check=True, capture_output=True, text=True)
        if int(r.stdout) != want:
            bad.append(args)
    check("packable", not bad, "wrong for %s" % bad if bad else
          "%d cases" % len(cases))


test_grid()
test_rtn()
test_scale(outliers=0)
test_scale(outliers=4)
test_scale(outliers=0, flat=True)
test_clip(4, 64)
test_clip(3, 128)
test_flip(4, 64)
test_flip(3, 128)
test_reflip(4, 32)
test_reflip(3, 64)
test_pack(64, 128, 32)
test_pack(32, 128, 128)
test_pack(32, 64, -1)
test_packable()
passed = sum(results)
failed = len(results) - passed
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
