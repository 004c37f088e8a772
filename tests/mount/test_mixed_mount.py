"""Integration tests of per-linear precision on real FUSE mounts:
mixed_static (the role table), mixed_b<avg> (measured sensitivities and
a knapsack under the budget), mixed_dyn (the ratio policy), and BRECQ
(learned rounding, 6-bit attention in the 8-bit container).  Quantized
linears are checked against variants made independently: mixed_static's
against the RTN variants of the same width, which serve the same bytes;
mixed_b's and mixed_dyn's (GPTQ at the widths and group sizes chosen,
true sequential) first layer's q/k/v, whose inputs no quantization
before them changes, against the GPTQ variant of their width and group.
"""
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import stread  # noqa: E402
from qftest import Mount, mkmodel, run_tests  # noqa: E402

WORK = tempfile.mkdtemp(prefix="qfmixed.")
SRC = os.path.join(WORK, "models")
TINY = mkmodel(os.path.join(SRC, "tiny"), "--layers", 3, "--seed", 5,
               "--hidden", 128, "--inter", 256, "--heads", 4,
               "--kv-heads", 2)
SMALL = ["calib_n=8", "calib_len=64"]
LIN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
       "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def stored(hdr, name):
    """Bytes a tensor takes in the file (read_st widens BF16)."""
    b, e = hdr[name]["data_offsets"]
    return e - b


def load(m, variant):
    d = os.path.join(m.mnt, "tiny", variant)
    t, hdr = stread.read_st(os.path.join(d, "model.safetensors"))
    t["__hdr__"] = hdr
    man = json.load(open(os.path.join(d, "quantization.json")))
    qc = json.load(open(os.path.join(d, "config.json")))[
        "quantization_config"]
    return t, man, qc


def grid_of(qc, prefix):
    """(width, group size) a GPTQModel/vLLM loader reads for prefix: the
    first matching "dynamic" override, else the config's; None = kept."""
    for pat, o in qc.get("dynamic", {}).items():
        sign, rx = pat[0], pat[2:]
        if re.match(rx, prefix):
            return None if sign == "-" else (
                o.get("bits", qc["bits"]),
                o.get("group_size", qc["group_size"]))
    return qc["bits"], qc["group_size"]


def bits_of(qc, prefix):
    g = grid_of(qc, prefix)
    return g and g[0]


def linears():
    return ["model.layers.%d.%s" % (l, n) for l in range(3) for n in LIN]


def same_as_rtn(m, t, qc, group=128):
    """Every quantized linear's tensors equal those of rtn_w<b>_g<group>
    (round to nearest at the width the config says); kept ones equal the
    source.  Returns {prefix: bits}."""
    src, _ = stread.read_st(os.path.join(TINY, "model.safetensors"))
    rtn = {}
    got = {}
    for p in linears():
        b = bits_of(qc, p)
        got[p] = b
        if b is None:
            assert np.array_equal(t[p + ".weight"], src[p + ".weight"]), p
            continue
        if b not in rtn:
            rtn[b] = load(m, "rtn_w%d_g%d" % (b, group))[0]
        for s in (".qweight", ".qzeros", ".scales", ".g_idx"):
            assert np.array_equal(t[p + s], rtn[b][p + s]), (p, s, b)
    return got


def same_as_gptq(m, t, qc):
    """Every quantized linear's tensors have the shapes of the width and
    group size the config says (and the loader reads); layer 0's q/k/v
    equal those of gptq_w<b>_g<group> (same calibration set); kept
    linears equal the source.  Returns {prefix: (bits, group)}."""
    src, _ = stread.read_st(os.path.join(TINY, "model.safetensors"))
    got = {}
    for p in linears():
        g = got[p] = grid_of(qc, p)
        if g is None:
            assert np.array_equal(t[p + ".weight"], src[p + ".weight"]), p
            continue
        b, gs = g
        out, n = src[p + ".weight"].shape
        pb = 8 if b > 4 else b
        assert t[p + ".qweight"].shape == (n * pb // 32, out), (p, g)
        assert t[p + ".scales"].shape == (n // gs, out), (p, g)
        assert t[p + ".qzeros"].shape == (n // gs, out * pb // 32), (p, g)
        assert np.array_equal(t[p + ".g_idx"], np.arange(n) // gs), p
    for p in linears()[:3]:
        if got[p] is None:
            continue
        ref = load(m, "gptq_w%d_g%d" % got[p])[0]
        for s in (".qweight", ".qzeros", ".scales", ".g_idx"):
            assert np.array_equal(t[p + s], ref[p + s]), (p, s, got[p])
    return got


def linear_bytes(t):
    n = 0
    for p in linears():
        for s in (".qweight", ".qzeros", ".scales", ".g_idx", ".weight"):
            if p + s in t:
                n += stored(t["__hdr__"], p + s)
    return n


def params():
    src, _ = stread.read_st(os.path.join(TINY, "model.safetensors"))
    return sum(src[p + ".weight"].size for p in linears())


def test_mixed_static_role_table():
    with Mount(SRC) as m:
        t, man, qc = load(m, "mixed_static")
        got = same_as_rtn(m, t, qc)
        for p, b in got.items():
            assert b == (8 if "self_attn" in p else 4), (p, b)
        assert qc["quant_method"] == "gptq" and man["calibration"] is None
        sz = man["bytes"]
        total = sum(stored(t["__hdr__"], k) for k in t if k != "__hdr__")
        assert sz["output_tensors"] == total
        assert abs(sz["bits_per_parameter"] -
                   8.0 * total / sz["parameters"]) < 1e-5
        assert abs(sz["ratio_vs_fp32"] -
                   4.0 * sz["parameters"] / total) < 1e-5


def test_mixed_budget_allocation():
    with Mount(SRC, opts=SMALL) as m:
        n = params()
        res = {}
        for avg in ("3.5", "4.5", "6"):
            t, man, qc = load(m, "mixed_b" + avg)
            a = man["allocation"]
            got = same_as_gptq(m, t, qc)
            assert qc["true_sequential"] and man["calibration"]
            used = linear_bytes(t)
            # the budget holds, counting every stored byte
            assert 8 * used <= float(avg) * n, (avg, used, n)
            assert a["policy"] == "budget" and a["optimal"] is True
            assert a["bytes"] == used, (a["bytes"], used)
            # fused shards share a width (vLLM loads them together)
            for l in range(3):
                pre = "model.layers.%d." % l
                assert got[pre + LIN[0]] == got[pre + LIN[1]] == \
                    got[pre + LIN[2]]
                assert got[pre + LIN[4]] == got[pre + LIN[5]]
            res[avg] = (a["objective"], used)
            print("  mixed_b%s: %d bytes of linears (%.3f bits/param), "
                  "objective %.5f, grids %s" % (
                      avg, used, 8.0 * used / n, a["objective"],
                      sorted(set(str(b) for b in got.values()))))
        # 16 bits per parameter: keeping everything fits, so the optimum
        # costs nothing (a width whose measured loss increase is 0 ties)
        t, man, qc = load(m, "mixed_b16")
        same_as_gptq(m, t, qc)
        assert man["allocation"]["objective"] == 0
        assert 8 * linear_bytes(t) <= 16 * n
        # a larger budget never costs more
        assert res["6"][0] <= res["4.5"][0] <= res["3.5"][0]
        assert res["3.5"][1] <= res["4.5"][1] <= res["6"][1]
        log = m.stderr()
        assert log.count("measuring the sensitivity") == 1, log
    # the sensitivities are cached: a new mount of the same cache
    # allocates at once, the same way
    with Mount(SRC, cache=m.cache, opts=SMALL) as m2:
        t2, man2, _ = load(m2, "mixed_b4.5")
        assert "measuring the sensitivity" not in m2.stderr()
        assert linear_bytes(t2) == res["4.5"][1]


def test_mixed_budget_infeasible():
    with Mount(SRC, opts=SMALL) as m:
        p = os.path.join(m.mnt, "tiny", "mixed_b2")
        # 2 bits plus scales and zeros cannot fit 2 bits per parameter
        assert not os.path.exists(p)
        assert "no allocation fits" in m.stderr()


def test_mixed_dyn_ratio_policy():
    with Mount(SRC, opts=SMALL) as m:
        t, man, qc = load(m, "mixed_dyn")
        got = same_as_gptq(m, t, qc)
        ub = man["allocation"]["unit_bits"]
        assert len(ub) == 12
        # the seed's policy over 12 units: 2 at 16, 5 at 4, the rest 8
        assert sorted(ub) == [4] * 5 + [8] * 5 + [16] * 2, ub
        for p, g in got.items():
            assert g in (None, (4, 128), (8, 128)), (p, g)


def test_brecq_variant():
    src, _ = stread.read_st(os.path.join(TINY, "model.safetensors"))
    with Mount(SRC, opts=SMALL + ["brecq_iters=30"]) as m:
        t, man, qc = load(m, "brecq_w4_g64_attn6")
        log = m.stderr()
        assert len(re.findall(r"layer \d/3 BRECQ: block output error", log)) \
            == 3, log
        b = man["brecq"]
        assert b["iters"] == 30 and b["batch_sequences"] == 2
        worse = 0
        for p in linears():
            bits = bits_of(qc, p)
            W = src[p + ".weight"]
            deq, q, z, s, g = stread.gptq_dequant(t, p, bits, *W.shape)
            if "self_attn" in p:
                # 6-bit grid in the 8-bit container
                assert bits == 8 and q.max() <= 63 and z.max() <= 63
            else:
                assert bits == 4
            # AdaRound only picks floor or ceil of w / s + z
            x = W / s[g].T + z[g].T
            assert np.all((q >= np.floor(x) - 1e-4) &
                          (q <= np.ceil(x) + 1e-4) | (q == 0) |
                          (q == (63 if bits == 8 else 15))), p
            lay = [l for l in man["layers"] if l["name"] == p + ".weight"]
            assert lay[0]["bits"] == (6 if "self_attn" in p else 4)
            worse += lay[0]["loss_brecq"] > lay[0]["loss_rtn"]
        # learned rounding lowers every block's output error
        assert worse == 0, man["layers"]
        # the MLP grid is RTN's: same scales and zeros as rtn_w4_g64
        r = load(m, "rtn_w4_g64")[0]
        p = "model.layers.1.mlp.up_proj"
        assert np.array_equal(t[p + ".scales"], r[p + ".scales"])
        assert np.array_equal(t[p + ".qzeros"], r[p + ".qzeros"])
        assert not np.array_equal(t[p + ".qweight"], r[p + ".qweight"])


def test_brecq_zero_iters_is_round_to_nearest():
    """-o brecq_iters=0: the same grids and widths, rounded to nearest
    (the baseline BRECQ is compared with); MLP bytes equal rtn_w4_g64's,
    and it is cached apart from the learned variant."""
    with Mount(SRC, opts=SMALL + ["brecq_iters=0"]) as m:
        t, man, _ = load(m, "brecq_w4_g64_attn6")
        r = load(m, "rtn_w4_g64")[0]
        for p in linears():
            if "mlp" in p:
                assert np.array_equal(t[p + ".qweight"], r[p + ".qweight"])
        assert man["brecq"]["iters"] == 0



def test_mixed_static_options():
    """-o mixed_table and mixed_roles change the widths (and the cache
    key); bad values stop the mount with the reason."""
    import subprocess
    from qftest import QUANTFS
    opts = ["mixed_table=attn=4:mlp=8", "mixed_roles=*.o_proj=mlp"]
    with Mount(SRC, opts=opts) as m:
        t, man, qc = load(m, "mixed_static")
        got = same_as_rtn(m, t, qc)
        for p, b in got.items():
            want = 8 if ("mlp" in p or "o_proj" in p) else 4
            assert b == want, (p, b)
    for bad, why in (("mixed_table=attn=5", "attn"),
                     ("mixed_table=embed=8", "embed"),
                     ("mixed_roles=*.q_proj=brain", "brain"),
                     ("mixed_ratio=high=0.7:low=0.6", "high")):
        r = subprocess.run([QUANTFS, "mount", SRC, tempfile.mkdtemp(), "-f",
                            "-o", bad], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode != 0 and why in r.stderr, (bad, r.stderr)


def test_brecq_kill9_resume_same_bytes():
    """kill -9 in the middle of a BRECQ job: the remount resumes at the
    next block and the file is the uninterrupted one, byte for byte."""
    import hashlib
    import subprocess
    import time
    big = mkmodel(os.path.join(WORK, "six", "m"), "--layers", 6, "--seed",
                  8, "--hidden", 128, "--inter", 256, "--heads", 4,
                  "--kv-heads", 2)
    src = os.path.dirname(big)
    opts = SMALL + ["brecq_iters=40"]
    rel = os.path.join("m", "brecq_w3_g64_attn4", "model.safetensors")

    def sha(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    with Mount(src, opts=opts) as m:
        want = sha(os.path.join(m.mnt, rel))
    cache = tempfile.mkdtemp(prefix="qfbq.")
    m = Mount(src, cache=cache, opts=opts)
    m.__enter__()
    reader = subprocess.Popen(["cat", os.path.join(m.mnt, rel)],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    done_re = r"layer \d/6 in "
    deadline = time.time() + 300
    while len(re.findall(done_re, m.stderr())) < 2:
        assert time.time() < deadline, m.stderr()
        time.sleep(0.05)
    m.kill9()
    reader.wait(timeout=30)
    done = len(re.findall(done_re, m.stderr()))
    assert 2 <= done < 6, m.stderr()
    with Mount(src, cache=cache, opts=opts) as m2:
        assert sha(os.path.join(m2.mnt, rel)) == want
        log = m2.stderr()
        assert "resuming at layer %d/6" % (done + 1) in log, log
        assert len(re.findall(done_re, log)) == 6 - done, log


def test_fake_variants_dequantize_the_packed_ones():
    """mixed_*_fake and brecq_*_fake serve the packed variant's values,
    dequantized, in the source dtype (bf16 rounding apart)."""
    with Mount(SRC, opts=SMALL + ["brecq_iters=20"]) as m:
        for v in ("mixed_static", "mixed_b4.5", "mixed_dyn",
                  "brecq_w4_g64_attn6"):
            t, man, qc = load(m, v)
            f, _ = stread.read_st(os.path.join(m.mnt, "tiny", v + "_fake",
                                               "model.safetensors"))
            cfg = json.load(open(os.path.join(m.mnt, "tiny", v + "_fake",
                                              "config.json")))
            assert "quantization_config" not in cfg
            for p in linears():
                b = bits_of(qc, p)
                if b is None:
                    assert np.array_equal(f[p + ".weight"],
                                          t[p + ".weight"]), (v, p)
                    continue
                deq = stread.gptq_dequant(t, p, b,
                                          *f[p + ".weight"].shape)[0]
                err = np.abs(deq - f[p + ".weight"])
                assert np.all(err <= np.abs(deq) / 128 + 1e-30), (v, p)


def test_measuring_does_not_block_other_lookups():
    """While a mixed_b directory measures its sensitivities (seconds),
    other names of the model directory resolve at once: the measurement
    runs outside the namespace lock and lookups of one directory run in
    parallel."""
    import threading
    with Mount(SRC, opts=["calib_n=32", "calib_len=256"]) as m:
        done = []
        t = threading.Thread(target=lambda: done.append(os.path.isdir(
            os.path.join(m.mnt, "tiny", "mixed_b5"))))
        t.start()
        deadline = time.time() + 60
        while "measuring the sensitivity" not in m.stderr():
            assert time.time() < deadline, m.stderr()
            time.sleep(0.01)
        for v in ("rtn_w3_g128", "rtn_w8_gc", "gptq_w3_g128"):
            assert os.path.isdir(os.path.join(m.mnt, "tiny", v))
        busy = t.is_alive()
        t.join()
        assert done == [True]
        assert busy, "the measurement ended before the other lookups"

if __name__ == "__main__":
    run_tests(globals())
