"""Mixed precision (quant/method/mixed.c, mixed_alloc.c, quant/io/pack_ct.c)
against numpy.

usage: test_mixed.py MIXED_CLI
The references are written from the descriptions (quant.h's RTN grid,
mixed.h's formulas and policies, FORMATS.md's compressed-tensors
pack-quantized layout), not from the C code: RTN grids and levels must
be identical (same f32 arithmetic), sensitivities agree to float32-GEMM
precision (GPTQ's with gptq_ref.py's float64 GPTQ within 3 %), the
budget optimum is checked against brute-force enumeration,
and so is the allocation over units of a measured variant (mixed_alloc.h).
Prints 'N passed, N failed'.
"""
import itertools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_ref import gptq_ref  # noqa: E402

CLI = sys.argv[1]
rng = np.random.default_rng(20240917)
results = []
ROOT = tempfile.TemporaryDirectory(prefix="test_mixed")
BITS = [2, 3, 4, 6, 8, 16]
ROLES = ["attn", "mlp", "embed", "head", "other"]


def check(name, ok, detail=""):
    print("%s %s%s" % ("ok  " if ok else "FAIL", name,
                       ": " + detail if detail else ""))
    results.append(bool(ok))


def cli(args, files=None, expect=0):
    """Run the CLI with arrays written to files ('@name' arguments);
    return (reader, res.txt fields, directory, completed process)."""
    d = tempfile.mkdtemp(dir=ROOT.name)
    for name, arr in (files or {}).items():
        if isinstance(arr, str):
            with open(os.path.join(d, name), "w") as f:
                f.write(arr)
        else:
            np.ascontiguousarray(arr).tofile(os.path.join(d, name))
    argv = [CLI] + [os.path.join(d, a[1:]) if isinstance(a, str) and
                    a.startswith("@") else str(a) for a in args] + [d]
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != expect:
        print(p.stderr, end="")
        raise RuntimeError("%s exited %d" % (args[0], p.returncode))

    def read(name, dt):
        return np.fromfile(os.path.join(d, name), dt)
    res = None
    if os.path.exists(os.path.join(d, "res.txt")):
        with open(os.path.join(d, "res.txt")) as f:
            res = f.read().split()
    return read, res, d, p


# ------------------------------------------------------------ numpy RTN
def ngroups(n, group):
    return 1 if group <= 0 or group >= n else -(-n // group)


def rtn(w, bits, group, sym):
    """GPTQ-convention RTN in f32 (quant.h): range widened to include 0;
    symmetric scale 2 max|w| / maxq, zero 2^(b-1); asymmetric scale
    (hi - lo) / maxq, zero round(-lo / scale), kept >= 1 (then scale =
    hi / (maxq - 1)), <= maxq; scale rounded to fp16 (0 -> the smallest
    subnormal); q = clamp(round(w / scale) + zero, 0, maxq)."""
    w = w.astype(np.float32)
    out, n = w.shape
    ng = ngroups(n, group)
    gs = n if ng == 1 else group
    maxq = np.float32(2 ** bits - 1)
    q = np.zeros((out, n), np.int64)
    sc16 = np.zeros((out, ng), np.float16)
    z = np.zeros((out, ng), np.int64)
    for g in range(ng):
        a, b = g * gs, min(g * gs + gs, n)
        blk = w[:, a:b]
        lo = np.minimum(blk.min(1), np.float32(0))
        hi = np.maximum(blk.max(1), np.float32(0))
        if sym:
            m = np.maximum(np.abs(lo), hi)
            m = np.where(m == 0, np.float32(1), m)
            s = (np.float32(2) * m) / maxq
            zz = np.full(out, 2 ** (bits - 1), np.int64)
        else:
            both = (lo == 0) & (hi == 0)
            lo = np.where(both, np.float32(-1), lo)
            hi = np.where(both, np.float32(1), hi)
            s = (hi - lo) / maxq
            zz = np.round(-lo / s).astype(np.int64)
            low = zz < 1
            s = np.where(low, hi / (maxq - np.float32(1)), s)
            zz = np.where(low, 1, zz)
            zz = np.minimum(zz, int(maxq))
        s16 = s.astype(np.float16)
        s16 = np.where(s16.astype(np.float32) == 0,
                       np.array([1], np.uint16).view(np.float16)[0], s16)
        s32 = s16.astype(np.float32)
        sc16[:, g] = s16
        z[:, g] = zz
        q[:, a:b] = np.clip(np.round(blk / s32[:, None]) + zz[:, None], 0,
                            int(maxq))
    return q, sc16, z


def dequant(q, sc16, z, group):
    out, n = q.shape
    ng = sc16.shape[1]
    gs = n if ng == 1 else group
    col = np.arange(n) // gs
    s = sc16.astype(np.float32)[:, col]
    return s * (q.astype(np.float32) - z[:, col].astype(np.float32))


def sens_ref(w, h, bits, group, sym):
    if bits == 16:
        return 0.0
    w64 = w.astype(np.float64)
    h64 = h.astype(np.float64)
    den = np.sum((w64 @ h64) * w64)
    q, sc, z = rtn(w, bits, group, sym)
    d = (dequant(q, sc, z, group) - w.astype(np.float32)).astype(np.float64)
    return float(np.sum((d @ h64) * d) / den)


# ------------------------------------------------- compressed-tensors
def words(n, bits):
    per = 32 // bits
    return -(-n // per)


def ct_bytes(out, n, bits, group, sym):
    """FORMATS.md: weight_packed int32 [out, ceil(in / (32 / b))], scale
    fp16 [out, ngroups], zero point int32 [ceil(out / (32 / b)), ngroups]
    when asymmetric, weight_shape int32 [2]; 16 bits: the fp16 weight."""
    if bits == 16:
        return out * n * 2
    ng = ngroups(n, group)
    b = out * words(n, bits) * 4 + out * ng * 2 + 8
    if not sym:
        b += words(out, bits) * ng * 4
    return b


def ct_pack(v, bits, dim):
    """pack_to_int32 from the format description: 32 // b values per
    word along dim, value k at bits k*b, zero padded, no spill."""
    per = 32 // bits
    v = np.asarray(v, np.uint64)
    if dim == 0:
        v = v.T
    rows, n = v.shape
    nw = -(-n // per)
    pad = np.zeros((rows, nw * per), np.uint64)
    pad[:, :n] = v
    pad = pad.reshape(rows, nw, per)
    shifts = (np.arange(per, dtype=np.uint64) * np.uint64(bits))
    packed = np.bitwise_or.reduce(pad << shifts, axis=2).astype(np.uint32)
    if dim == 0:
        packed = packed.T
    return np.ascontiguousarray(packed).view(np.int32)


def ct_unpack_signed(packed, bits, n, dim):
    """unpack_from_int32: fields masked, minus 2^(b-1): signed values."""
    per = 32 // bits
    p = packed.view(np.uint32).astype(np.int64)
    if dim == 0:
        p = p.T
    rows, nw = p.shape
    out = np.zeros((rows, nw * per), np.int64)
    for k in range(per):
        out[:, k::per] = (p >> (bits * k)) & ((1 << bits) - 1)
    out = out[:, :n] - 2 ** (bits - 1)
    return out.T if dim == 0 else out


# ------------------------------------------------------------- tests
def test_sensitivity():
    for (out, n, group, sym) in [(48, 200, 64, False), (40, 128, 128, True),
                                 (33, 96, -1, False), (24, 160, 32, True)]:
        w = rng.standard_normal((out, n)).astype(np.float32)
        w[:, rng.integers(0, n, 3)] *= 8          # outlier columns
        x = rng.standard_normal((300, n)).astype(np.float32)
        x[:, rng.integers(0, n, 4)] *= 10
        h = (x.T.astype(np.float64) @ x.astype(np.float64)).astype(np.float32)
        args = ["sens", "@w", "@h", out, n, group, int(sym), len(BITS)] + BITS
        read, _, _, _ = cli(args, {"w": w, "h": h})
        c = read("cost.f64", np.float64)
        ref = np.array([sens_ref(w, h, b, group, sym) for b in BITS])
        rel = np.abs(c - ref) / np.maximum(ref, 1e-30)
        check("sensitivity %dx%d g%d %s" % (out, n, group,
                                             "sym" if sym else "asym"),
              np.all(rel[:-1] < 1e-4) and c[-1] == 0 and
              np.all(np.diff(c) < 0),
              "costs %s, max rel diff %.2g" %
              (" ".join("%.3g" % v for v in c), rel[:-1].max()))
    # zero weight: every cost 0
    w = np.zeros((8, 64), np.float32)
    h = np.eye(64, dtype=np.float32)
    read, _, _, _ = cli(["sens", "@w", "@h", 8, 64, 32, 0, 2, 4, 8],
                        {"w": w, "h": h})
    check("sensitivity of a zero weight is 0",
          np.all(read("cost.f64", np.float64) == 0))


def test_sensitivity_gptq():
    """The mixed variants' costs: GPTQ's relative output error at each
    width against the float64 reference GPTQ, and below round to
    nearest's on the same grid."""
    widths = [2, 3, 4, 8, 16]
    for (out, n, group) in [(48, 256, 128), (64, 128, 32), (32, 96, 32)]:
        base = rng.standard_normal((600, n // 8))
        x = np.repeat(base, 8, axis=1) + 0.3 * rng.standard_normal((600, n))
        x[:, rng.integers(0, n, 3)] *= 10
        w = (rng.standard_normal((out, n)) * 0.05).astype(np.float32)
        w[:, :3] *= 8
        h = (x.T @ x).astype(np.float32)
        args = [out, n, group, 0, len(widths)] + widths
        read, _, _, _ = cli(["sensg", "@w", "@h"] + args, {"w": w, "h": h})
        c = read("cost.f64", np.float64)
        energy = read("energy.f64", np.float64)[0]
        read, _, _, _ = cli(["sens", "@w", "@h"] + args, {"w": w, "h": h})
        rtn = read("cost.f64", np.float64)
        h64, w64 = h.astype(np.float64), w.astype(np.float64)
        den = np.trace(w64 @ h64 @ w64.T)
        ref = []
        for b in widths[:-1]:
            q, _ = gptq_ref(w, h, b, group, False, False, False)
            d = q - w64
            ref.append(np.trace(d @ h64 @ d.T) / den)
        rel = np.abs(c[:-1] - ref) / np.array(ref)
        check("GPTQ sensitivity %dx%d g%d" % (out, n, group),
              np.all(rel < 0.03) and c[-1] == 0 and
              abs(energy - den) <= 1e-5 * den and
              np.all(c[:-1] < rtn[:-1]) and np.all(np.diff(c) < 0),
              "gptq %s, reference %s, rtn %s" % (
                  " ".join("%.3g" % v for v in c),
                  " ".join("%.3g" % v for v in ref),
                  " ".join("%.3g" % v for v in rtn)))


def test_bytes_and_pack():
    bad = []
    n_cases = 0
    for out, n in [(64, 128), (70, 100), (33, 257), (8, 31)]:
        for bits in BITS:
            for group in [-1, 32, 128]:
                for sym in (False, True):
                    _, _, _, p = cli(["bytes", out, n, bits, group,
                                      int(sym)])
                    got = int(p.stdout)
                    n_cases += 1
                    if got != ct_bytes(out, n, bits, group, sym):
                        bad.append((out, n, bits, group, sym, got))
    check("qf_mixed_bytes formula (%d cases)" % n_cases, not bad, str(bad[:3]))
    # the packer's tensors: bytes, layout, round trip, decompression
    size_bad, layout_bad, rt_bad, deq_bad, rtn_bad = [], [], [], [], []
    cases = 0
    for out, n in [(64, 128), (70, 100), (33, 257)]:
        for bits in [2, 3, 4, 6, 8]:
            for group, sym in [(32, False), (-1, True), (64, True),
                               (128, False)]:
                cases += 1
                w = rng.standard_normal((out, n)).astype(np.float32)
                w[0] = np.abs(w[0])                # zero clamped to >= 1
                read, _, d, _ = cli(["pack", "@w", out, n, bits, group,
                                     int(sym)], {"w": w})
                key = (out, n, bits, group, sym)
                q = read("q.u8", np.uint8).reshape(out, n)
                ng = ngroups(n, group)
                sc = read("sc.f16", np.float16).reshape(out, ng)
                z = read("z.i32", np.int32).reshape(out, ng)
                rq, rsc, rz = rtn(w, bits, group, sym)
                if not (np.array_equal(q, rq) and np.array_equal(
                        sc.view(np.uint16), rsc.view(np.uint16)) and
                        np.array_equal(z, rz)):
                    rtn_bad.append(key)
                names = ["weight_packed.i32", "weight_scale.f16",
                         "weight_shape.i32"]
                if not sym:
                    names.append("weight_zero_point.i32")
                total = sum(os.path.getsize(os.path.join(d, f))
                            for f in names)
                if total != ct_bytes(out, n, bits, group, sym):
                    size_bad.append(key + (total,))
                wp = read("weight_packed.i32", np.int32).reshape(
                    out, words(n, bits))
                ok = np.array_equal(wp, ct_pack(q, bits, 1))
                shape = read("weight_shape.i32", np.int32)
                ok = ok and list(shape) == [out, n]
                if not sym:
                    zp = read("weight_zero_point.i32", np.int32).reshape(
                        words(out, bits), ng)
                    ok = ok and np.array_equal(zp, ct_pack(z, bits, 0))
                if not ok:
                    layout_bad.append(key)
                uq = read("uq.u8", np.uint8).reshape(out, n)
                ok = np.array_equal(uq, q)
                if not sym:
                    uz = read("uz.i32", np.int32).reshape(out, ng)
                    ok = ok and np.array_equal(uz, z)
                if not ok:
                    rt_bad.append(key)
                # decompress as compressed-tensors does: signed values,
                # signed zero points (0 when symmetric), (s - zp) * scale
                s = ct_unpack_signed(wp, bits, n, 1)
                if sym:
                    zs = np.zeros((out, ng), np.int64)
                else:
                    zs = ct_unpack_signed(zp, bits, out, 0)
                gs = n if ng == 1 else group
                col = np.arange(n) // gs
                wd = sc.astype(np.float32)[:, col] * (
                    s.astype(np.float32) - zs[:, col].astype(np.float32))
                if not np.array_equal(wd, dequant(q, sc, z, group)):
                    deq_bad.append(key)
    check("pack: RTN codes/scales/zeros equal numpy RTN (%d)" % cases,
          not rtn_bad, str(rtn_bad[:3]))
    check("pack: tensor bytes equal qf_mixed_bytes (%d)" % cases,
          not size_bad, str(size_bad[:3]))
    check("pack: weight_packed/zero_point equal numpy packer (%d)" % cases,
          not layout_bad, str(layout_bad[:3]))
    check("pack: unpack round-trips (%d)" % cases, not rt_bad,
          str(rt_bad[:3]))
    check("pack: compressed-tensors decompression equals dequant (%d)" %
          cases, not deq_bad, str(deq_bad[:3]))
    # full-range codes for every width 1..8, odd shapes
    bad = []
    for bits in range(1, 9):
        for out, n, ng in [(1, 1, 1), (37, 45, 3), (64, 96, 2)]:
            q = rng.integers(0, 2 ** bits, (out, n)).astype(np.uint8)
            z = rng.integers(0, 2 ** bits, (out, ng)).astype(np.int32)
            q.flat[0] = 2 ** bits - 1
            read, _, _, _ = cli(["packq", "@q", "@z", out, n, ng, bits],
                                {"q": q, "z": z})
            ok = np.array_equal(read("packed.i32", np.int32),
                                ct_pack(q, bits, 1).ravel())
            ok = ok and np.array_equal(read("zp.i32", np.int32),
                                       ct_pack(z, bits, 0).ravel())
            ok = ok and np.array_equal(read("uq.u8", np.uint8), q.ravel())
            ok = ok and np.array_equal(read("uz.i32", np.int32), z.ravel())
            if not ok:
                bad.append((bits, out, n, ng))
    check("packq: full-range codes, bits 1..8 (24 cases)", not bad, str(bad))


def brute(params, byt, cost, avg_x100):
    n, npr = cost.shape
    budget = avg_x100 * int(params.sum()) // 800
    best, arg = np.inf, None
    idx = np.array(list(itertools.product(range(npr), repeat=n)))
    b = byt[np.arange(n), idx].sum(1)
    c = cost[np.arange(n), idx].sum(1)
    c = np.where(b <= budget, c, np.inf)
    k = int(np.argmin(c))
    best = c[k]
    if np.isfinite(best):
        arg = idx[k]
    return best, arg, budget


def budget_instance(n, opts, monotone, allow_inf):
    shapes = [(int(rng.choice([16, 32, 48, 64, 96])),
               int(rng.choice([32, 64, 100, 128, 256]))) for _ in range(n)]
    groups = [int(rng.choice([-1, 32, 128])) for _ in range(n)]
    params = np.array([o * i for o, i in shapes], np.uint64)
    byt = np.array([[ct_bytes(o, i, b, g, False) for b in opts]
                    for (o, i), g in zip(shapes, groups)], np.uint64)
    if monotone:
        base = rng.uniform(0.2, 5, n)
        cost = np.array([[base[i] * 4.0 ** (-b) * rng.uniform(0.8, 1.2)
                          if b != 16 else 0 for b in opts]
                         for i in range(n)])
    else:
        cost = rng.uniform(0, 1, (n, len(opts)))
    if allow_inf:
        mask = rng.random((n, len(opts))) < 0.2
        mask[:, -1] = False                 # keep one option allowed
        cost[mask] = np.inf
    return params, byt, cost


def test_budget():
    n_inst, bad, over, not_opt = 0, [], [], 0
    for trial in range(240):
        if trial % 3 == 2:
            n, opts = 6, BITS
        else:
            n, opts = 8, [2, 4, 8, 16]
        params, byt, cost = budget_instance(n, opts, trial % 2 == 0,
                                            trial % 5 == 4)
        finite = np.where(np.isfinite(cost), byt.astype(np.float64), np.inf)
        lo = finite.min(1).sum() * 800 / params.sum()
        hi = byt.max(1).sum() * 800 / params.sum()
        avg = int(rng.uniform(lo, hi * 1.05)) + 1
        ref, _, budget = brute(params, byt.astype(np.int64), cost, avg)
        if not np.isfinite(ref):
            continue
        n_inst += 1
        read, res, _, _ = cli(["budget", n, len(opts), "@p", "@b", "@c", avg,
                               2000000], {"p": params, "b": byt, "c": cost})
        ch = read("choice.i32", np.int32)
        got_c = cost[np.arange(n), ch].sum()
        got_b = int(byt[np.arange(n), ch].sum())
        if got_b > budget or int(res[2]) != got_b or int(res[3]) != budget:
            over.append((trial, got_b, budget))
        if not (got_c <= ref * (1 + 1e-12) + 1e-300 and
                abs(float(res[0]) - got_c) <= 1e-12 * max(got_c, 1e-300)):
            bad.append((trial, got_c, ref))
        not_opt += res[5] != "1"
    check("budget: brute-force optimum on %d instances (8x4, 6x6)" % n_inst,
          not bad and n_inst >= 200, str(bad[:3]))
    check("budget: allocation within budget, bytes reported", not over,
          str(over[:3]))
    check("budget: every small instance proven optimal", not_opt == 0,
          "%d not proven" % not_opt)
    # infeasible: even the smallest options exceed the budget
    params, byt, cost = budget_instance(5, [2, 4, 8, 16], True, False)
    lo = byt.min(1).sum() * 800 / params.sum()
    avg = int(lo) - 1
    _, _, _, p = cli(["budget", 5, 4, "@p", "@b", "@c", avg, 1000],
                     {"p": params, "b": byt, "c": cost}, expect=3)
    check("budget: infeasible budget is an error (QF_ESPEC)",
          "infeasible" in p.stderr, p.stderr.strip())
    # exactly the smallest allocation: feasible, all lowest
    avg = -(-int(byt.min(1).sum()) * 800 // int(params.sum()))
    read, res, _, _ = cli(["budget", 5, 4, "@p", "@b", "@c", avg, 1000],
                          {"p": params, "b": byt, "c": cost})
    check("budget: tight budget gives the smallest options",
          np.all(read("choice.i32", np.int32) == np.argmin(byt, 1)))
    # a model-sized instance: 196 linears x 6 precisions
    n = 196
    shapes = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096),
              (14336, 4096), (14336, 4096), (4096, 14336)] * 28
    params = np.array([o * i for o, i in shapes], np.uint64)
    byt = np.array([[ct_bytes(o, i, b, 128, False) for b in BITS]
                    for o, i in shapes], np.uint64)
    base = rng.lognormal(0, 1.5, n)
    cost = np.array([[base[i] * 4.0 ** (-b) if b != 16 else 0
                      for b in BITS] for i in range(n)])
    for avg in (300, 425, 500, 650):
        read, res, _, _ = cli(["budget", n, 6, "@p", "@b", "@c", avg,
                               2000000], {"p": params, "b": byt, "c": cost})
        ch = read("choice.i32", np.int32)
        got_b = int(byt[np.arange(n), ch].sum())
        bits_pp = got_b * 8 / params.sum()
        check("budget: 196 linears at %.2f bits" % (avg / 100),
              got_b * 800 <= avg * int(params.sum()) and
              float(res[1]) <= float(res[0]) * (1 + 1e-12),
              "%.4f bits/param, cost %.6g, bound %.6g, %s nodes, "
              "optimal %s" % (bits_pp, float(res[0]), float(res[1]),
                              res[4], res[5]))
    # node limit: the incumbent comes back, feasible, flagged not optimal
    read, res, _, _ = cli(["budget", n, 6, "@p", "@b", "@c", 425, 20],
                          {"p": params, "b": byt, "c": cost})
    ch = read("choice.i32", np.int32)
    got_b = int(byt[np.arange(n), ch].sum())
    c, bd = float(res[0]), float(res[1])
    check("budget: node limit returns a feasible allocation, not optimal",
          res[5] == "0" and got_b * 800 <= 425 * int(params.sum()) and
          bd <= c and abs(cost[np.arange(n), ch].sum() - c) <= 1e-12 * c,
          "cost %.6g, bound %.6g (gap %.2g)" % (c, bd, (c - bd) / c))


def ratio_ref(imp, high, low, bh, bm, bl):
    n = len(imp)
    order = np.lexsort((np.arange(n), -imp))
    nh = int(np.floor(n * high + 1e-9))
    nl = n - int(np.floor(n * (1 - low) + 1e-9))
    nh = min(nh, n)
    nl = min(nl, n - nh)
    bits = np.full(n, bm)
    bits[order[:nh]] = bh
    if nl:
        bits[order[n - nl:]] = bl
    return bits


def seed_policy(imp, hr=0.2, lr=0.4):
    """The seed's DynamicQuantizationPolicy thresholds (no ties)."""
    vals = sorted(imp, reverse=True)
    n = len(vals)
    hi = max(1, int(n * hr))
    li = max(hi + 1, int(n * (1 - lr)))
    hi = min(hi, n - 1)
    li = min(li, n)
    ht = vals[hi - 1] if hi < n else np.inf
    lt = vals[li - 1] if li < n else -np.inf
    return np.array([16 if v >= ht else 8 if v >= lt else 4 for v in imp])


def test_ratio():
    bad, cases = [], 0
    specs = [("-", 0.2, 0.4, 16, 8, 4), ("high=0.1,low=0.5", 0.1, 0.5, 16,
             8, 4), ("high=0,low=1,bits_low=3", 0, 1, 16, 8, 3),
             ("bits_high=8,bits_mid=6,bits_low=2,high=0.3,low=0.3", 0.3,
              0.3, 8, 6, 2)]
    for spec, h, lo, bh, bm, bl in specs:
        for n in list(range(1, 23)) + [49, 196]:
            imp = rng.standard_normal(n)
            if n % 3 == 0:
                imp = np.round(imp)            # ties
            read, _, _, _ = cli(["ratio", spec, n, "@i"], {"i": imp})
            got = read("bits.i32", np.int32)
            cases += 1
            if not np.array_equal(got, ratio_ref(imp, h, lo, bh, bm, bl)):
                bad.append((spec, n))
    check("ratio policy equals numpy (%d cases, with ties)" % cases, not bad,
          str(bad[:3]))
    bad = []
    for n in range(5, 61):
        imp = rng.standard_normal(n)
        read, _, _, _ = cli(["ratio", "-", n, "@i"], {"i": imp})
        if not np.array_equal(read("bits.i32", np.int32), seed_policy(imp)):
            bad.append(n)
    check("ratio policy equals the seed's thresholds for n = 5..60",
          not bad, str(bad))
    for spec in ["high=0.7,low=0.4", "mid=0.1", "high=x", "bits_low=5",
                 "high", ",high=0.1"]:
        _, _, _, p = cli(["ratio", spec, 1, "@i"], {"i": np.zeros(1)},
                         expect=1)
        check("ratio spec %r rejected" % spec, "ratio:" in p.stderr,
              p.stderr.strip())


def test_static():
    n = 50
    roles = rng.integers(0, 5, n).astype(np.int32)
    for spec, table in [("-", [8, 4, 16, 16, 8]),
                        ("attn=8,mlp=4,embed=16,head=16,other=8",
                         [8, 4, 16, 16, 8]),
                        ("mlp=3,head=8", [8, 3, 16, 8, 8]),
                        ("other=2,attn=6,embed=4", [6, 4, 4, 16, 2])]:
        read, _, _, _ = cli(["static", spec, n, "@r"], {"r": roles})
        check("static table %r" % spec,
              np.array_equal(read("bits.i32", np.int32),
                             np.array(table)[roles]))
    for spec in ["attn=5", "ffn=4", "attn", "attn=8,", "mlp=4x"]:
        _, _, _, p = cli(["static", spec, n, "@r"], {"r": roles}, expect=1)
        check("static table %r rejected" % spec, "table:" in p.stderr,
              p.stderr.strip())


def test_importance():
    for n, grads in [(12, False), (9, True), (7, "some")]:
        sig = np.zeros((n, 4))
        sig[:, 0] = rng.uniform(0, 1, n)
        sig[:, 1] = rng.uniform(0, 3, n)
        sig[:, 2] = rng.uniform(0.01, 0.1, n)
        if grads is True:
            sig[:, 3] = 1
        elif grads == "some":
            sig[::2, 3] = 1

        def z(v, have):
            out = np.zeros(n)
            if have.any():
                vv = v[have]
                out[have] = (vv - vv.mean()) / (vv.std() + 1e-8)
            return out
        ref = (0.5 * z(sig[:, 0], sig[:, 3] != 0) +
               0.3 * z(sig[:, 1], np.ones(n, bool)) +
               0.2 * z(sig[:, 2], np.ones(n, bool)))
        read, _, _, _ = cli(["importance", n, "@s"], {"s": sig})
        got = read("imp.f64", np.float64)
        check("importance z-score mix (%d linears, grads %s)" % (n, grads),
              np.allclose(got, ref, rtol=1e-12, atol=1e-12))
    out, n = 24, 40
    w = rng.standard_normal((out, n)).astype(np.float32)
    ss = rng.uniform(0, 50, n)
    _, res, _, _ = cli(["signals", "@w", out, n, "@s", 17], {"w": w, "s": ss})
    act = np.mean(ss / 17)
    wm = np.mean(np.abs(w.astype(np.float64)))
    check("signals: act = mean E[x^2], weight = mean |W|",
          abs(float(res[0]) - act) <= 1e-12 * act and
          abs(float(res[1]) - wm) <= 1e-12 * wm)


def test_roles():
    names = {
        "model.layers.0.self_attn.q_proj.weight": "attn",
        "model.layers.0.self_attn.k_proj": "attn",
        "model.layers.11.self_attn.v_proj.weight": "attn",
        "model.layers.3.self_attn.o_proj.weight": "attn",
        "model.layers.2.mlp.gate_proj.weight": "mlp",
        "model.layers.2.mlp.up_proj.weight": "mlp",
        "model.layers.31.mlp.down_proj.weight": "mlp",
        "model.embed_tokens.weight": "embed",
        "lm_head.weight": "head",
        "model.norm.weight": "other",
        "model.layers.0.input_layernorm.weight": "other",
        "model.layers.0.self_attn.q_norm.weight": "other",
        "model.layers.0.self_attn.q_proj_extra.weight": "other",
        "model.layers.0.self_attn.qkv_proj.weight": "attn",
        "model.layers.0.mlp.gate_up_proj.weight": "mlp",
    }
    text = "\n".join(names) + "\n"
    _, res, _, _ = cli(["roles", "-", "@n"], {"n": text})
    check("roles of typical HF names (%d)" % len(names),
          res == list(names.values()),
          " ".join("%s" % r for r in res or []))
    ov = "model.layers.0.*=head,*.down_proj.*=attn,*mlp.up_proj*=other," \
        "*.layers.0.mlp.*=embed"
    exp = dict(names)
    for k in names:
        if k.startswith("model.layers.0."):
            exp[k] = "head"             # first match wins
        elif ".down_proj." in k:
            exp[k] = "attn"
        elif "mlp.up_proj" in k:
            exp[k] = "other"
    _, res, _, _ = cli(["roles", ov, "@n"], {"n": text})
    check("roles with overrides (first match wins)",
          res == list(exp.values()), " ".join(res or []))
    for bad in ["q_proj", "=attn", "x=foo", "a=attn,,b=mlp", "a=attn,"]:
        _, _, _, p = cli(["roles", bad, "@n"], {"n": text}, expect=1)
        check("override %r rejected" % bad, "override" in p.stderr,
              p.stderr.strip())


def test_size():
    p = np.array([100, 2000, 300], np.uint64)
    b = np.array([60, 1100, 600], np.uint64)
    s = np.array([200, 4000, 600], np.uint64)
    _, res, _, _ = cli(["size", 3, "@p", "@b", "@s"], {"p": p, "b": b,
                                                      "s": s})
    P, B, S = 2400, 1760, 4800
    ref = [P, B, S, B / P, 8 * B / P, S / B, 4 * P / B]
    check("size accounting",
          [int(x) for x in res[:3]] == ref[:3] and
          np.allclose([float(x) for x in res[3:]], ref[3:], rtol=1e-15))


# ------------------------------------------------ allocation over units
# mixed_alloc.h's candidates: (width, group size), 16 kept
OPTS = [(2, 128), (2, 32), (3, 128), (3, 32), (4, 128), (4, 32), (8, 128),
        (16, 0)]
NO = len(OPTS)


def gptq_ckpt_bytes(out, n, src, bits, group):
    """GPTQ checkpoint bytes of a linear; -1: not packable (FORMATS.md:
    3 bits in runs of 32 columns, else 32 / bits)."""
    if bits >= 16:
        return float(src)
    pb = bits if bits in (2, 3, 4) else 8
    m = 32 if pb == 3 else 32 // pb
    if n % m or out % m:
        return -1.0
    ng = ngroups(n, group)
    return out * n * pb / 8 + ng * out * pb / 8 + ng * out * 2 + n * 4


def at_least_as_fine(q, p):
    """Option q has as many bits or more and groups as small or smaller
    (16 is finer than every grid)."""
    (bq, gq), (bp, gp) = OPTS[q], OPTS[p]
    return bq >= bp and (bq == 16 or gq <= gp)


def unit_of(kind):
    """{q,k,v}, {o}, {gate,up}, {down} share a width."""
    return 0 if kind <= 2 else 1 if kind == 3 else 2 if kind <= 5 else 3


def alloc_ref(lin, sens, uloss, nlayers, policy, avg_x100):
    nu = nlayers * 4
    unit = np.array([l * 4 + unit_of(k) for l, k in lin[:, :2]])
    up = np.zeros(nu)
    ubytes = np.zeros((nu, NO))
    uerr = np.zeros((nu, NO))
    for i, (l, k, out, n, params, src) in enumerate(lin):
        up[unit[i]] += params
        for p, (b, g) in enumerate(OPTS):
            c = gptq_ckpt_bytes(out, n, src, b, g)
            if c < 0 or ubytes[unit[i], p] < 0:
                ubytes[unit[i], p] = -1
            else:
                ubytes[unit[i], p] += c
            uerr[unit[i], p] += sens[i, p]
    # measured cost, at least 0, never lower than a finer option's
    pos = np.maximum(uloss, 0)
    cost = np.array([[max(pos[u, q] for q in range(NO)
                          if at_least_as_fine(q, p)) for p in range(NO)]
                     for u in range(nu)])
    cost = np.where(ubytes < 0, np.inf, cost)
    if policy == "budget":
        byt = np.where(ubytes < 0, 2.0 ** 62, ubytes).astype(np.uint64)
        best, arg, _ = brute(up.astype(np.uint64), byt, cost, avg_x100)
        if arg is None:
            return None, None, None
        pick = list(arg)
    else:
        def z(v):
            return (v - v.mean()) / (v.std() + 1e-8)
        imp = 0.3 * z(sens[:, NO + 1]) + 0.2 * z(sens[:, NO + 2])
        uimp = np.full(nu, -np.inf)
        for u in range(nu):
            if (unit == u).any():
                uimp[u] = imp[unit == u].mean()
        ubits = ratio_ref(uimp, 0.2, 0.4, 16, 8, 4)
        # each width at group 128 (16: kept), or kept where it does not
        # pack
        pick = [OPTS.index((b, 0 if b == 16 else 128)) for b in ubits]
        pick = [p if ubytes[u, p] >= 0 else NO - 1
                for u, p in enumerate(pick)]
    ubits = np.array([OPTS[p][0] for p in pick])
    ugroup = np.array([OPTS[p][1] for p in pick])  # 0: kept
    uc = cost[np.arange(nu), pick]
    ue = uerr[np.arange(nu), pick]
    return (ubits[unit], ugroup[unit]), (ubits, ugroup), (uc, ue)


def alloc_instance(nlayers, gaps):
    lin = []
    for l in range(nlayers):
        for k in range(7):
            if gaps and rng.random() < 0.15:
                continue                    # kept: not a linear here
            # (a shape that packs at no width is rare: it makes most
            # budgets infeasible)
            out = int(rng.choice([32, 64, 96, 48, 100],
                                 p=[0.3, 0.3, 0.2, 0.16, 0.04]))
            n = int(rng.choice([32, 64, 128, 256, 72],
                               p=[0.24, 0.24, 0.24, 0.24, 0.04]))
            lin.append([l, k, out, n, out * n, 2 * out * n])
    lin = np.array(lin, np.int64)
    # per option: GPTQ's errors; then RTN's at 3/128, act, weight
    shape = np.array([8.0, 6, 4, 3, 1, 0.7, 0.1, 0])
    sens = np.zeros((len(lin), NO + 3))
    base = rng.uniform(0.01, 1, len(lin))
    sens[:, :NO] = base[:, None] * shape
    sens[:, NO] = base * 5
    sens[:, NO + 1] = rng.uniform(0, 3, len(lin))
    sens[:, NO + 2] = rng.uniform(0.01, 0.1, len(lin))
    ub = rng.uniform(0, 2, nlayers * 4)
    uloss = (ub[:, None] * shape / 8 +
             rng.normal(0, 0.02, (nlayers * 4, NO)))
    return lin, sens, uloss


def test_alloc():
    bad, cases, nratio, ninf = [], 0, 0, 0
    for trial in range(40):
        policy = "ratio" if trial % 4 == 3 else "budget"
        # (brute force over 8 options: one layer's 4 units for budgets)
        nlayers = 2 if policy == "ratio" and trial % 3 == 0 else 1
        # (the ratio policy needs every unit to have a linear)
        lin, sens, uloss = alloc_instance(nlayers, policy == "budget")
        avg = int(rng.choice([250, 350, 450, 600, 900]))
        want, ubits, uce = alloc_ref(lin, sens, uloss, nlayers, policy, avg)
        args = ["alloc", policy, avg, "-", nlayers, len(lin), "@l", "@s",
                "@u"]
        files = {"l": lin, "s": sens, "u": uloss}
        if want is None:
            _, _, _, p = cli(args, files, expect=3)
            if "no allocation fits" not in p.stderr:
                bad.append((trial, "infeasible", p.stderr.strip()))
            ninf += 1
            continue
        read, _, d, _ = cli(args, files)
        cases += 1
        nratio += policy == "ratio"
        got = (read("bits.i32", np.int32), read("group.i32", np.int32))
        with open(os.path.join(d, "alloc.json")) as f:
            js = json.load(f)
        cost = np.array(js["unit_cost"])
        obj = np.sum(uce[0])
        same = (np.array_equal(got[0], want[0]) and
                np.array_equal(got[1], want[1]) and
                np.array_equal(js["unit_bits"], ubits[0]) and
                np.array_equal(js["unit_group"], ubits[1]))
        if policy == "budget" and not same:
            # a tie of the optimum: the same objective is enough
            same = abs(cost.sum() - obj) <= 1e-12 * max(obj, 1)
        elif same:
            same = (np.allclose(cost, uce[0], rtol=1e-15, atol=0) and
                    np.allclose(js["unit_output_error"], uce[1],
                                rtol=1e-12, atol=0))
        if not same or js["policy"] != policy:
            bad.append((trial, policy, avg))
    check("allocation over units equals numpy (%d cases, %d by ratios; %d "
          "infeasible budgets refused)" % (cases, nratio, ninf),
          not bad and cases > 10 and nratio > 3 and ninf > 0, str(bad[:3]))


def test_kl():
    """qf_mixed_kl_table against a float64 numpy forward (forward_ref.py,
    written apart from quant/nn) of the same tiny Llama with one unit's
    weights replaced by numpy RTN: the mean over every token of
    KL(p_src || p_trial) per layer, unit and width."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import forward_ref
    d = tempfile.mkdtemp(dir=ROOT.name)
    forward_ref.gen(d, "llama", "F32", 7)
    m = forward_ref.Model(d)
    nseq, seqlen, group, widths = 2, 12, 32, [2, 3, 8]
    ids = rng.integers(0, m.c["vocab_size"], (nseq, seqlen)).astype("<i4")
    read = cli(["kl", d, "@ids", nseq, seqlen, group, len(widths)] +
               widths, {"ids": ids})[0]
    got = read("kl.f64", "<f8").reshape(m.L, 4, len(widths))
    units = [["q_proj", "k_proj", "v_proj"], ["o_proj"],
             ["gate_proj", "up_proj"], ["down_proj"]]
    sub = {"q_proj": "self_attn", "k_proj": "self_attn",
           "v_proj": "self_attn", "o_proj": "self_attn"}

    def logp(model):
        lg = np.concatenate([model.sequence(ids[s], {})
                             for s in range(nseq)])
        lg = lg - lg.max(1, keepdims=True)
        return lg - np.log(np.exp(lg).sum(1, keepdims=True))
    ref = logp(m)
    want = np.zeros_like(got)
    src = dict(m.w)
    for layer in range(m.L):
        for u, names in enumerate(units):
            for k, b in enumerate(widths):
                m.w = dict(src)
                for n in names:
                    key = "model.layers.%d.%s.%s.weight" % (
                        layer, sub.get(n, "mlp"), n)
                    q, sc, z = rtn(src[key].astype(np.float32), b, group,
                                   False)
                    m.w[key] = dequant(q, sc, z, group).astype(np.float64)
                lq = logp(m)
                want[layer, u, k] = np.mean(np.sum(np.exp(ref) *
                                                   (ref - lq), 1))
    m.w = src
    err = np.abs(got - want) / want
    ok = np.all(want > 0) and err.max() < 1e-3
    check("KL table equals the float64 numpy forward (%d trials, KL %.2e "
          "to %.2e; worst relative error %.1e)" % (
              want.size, want.min(), want.max(), err.max()),
          ok, "" if ok else str(err))
    # fewer bits never perturb less, in both
    check("KL falls with the width", np.all(np.diff(got, axis=2) < 0) and
          np.all(np.diff(want, axis=2) < 0))


test_kl()
test_roles()
test_static()
test_ratio()
test_importance()
test_size()
test_bytes_and_pack()
test_sensitivity()
test_sensitivity_gptq()
test_budget()
test_alloc()
npass = sum(results)
print("%d passed, %d failed" % (npass, len(results) - npass))
sys.exit(0 if npass == len(results) else 1)
