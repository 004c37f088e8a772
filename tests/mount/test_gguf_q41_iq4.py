"""model.gguf of asymmetric 4-bit groups of 32 as Q4_1 and the kiq4_nl /
kiq4_xs views (llama.cpp's IQ4_NL / IQ4_XS, GPTQ on their grids), issue
#24, on the real 5M TinyStories Llama through a mount:

 - rtn_w4_g32 and gptq_w4_g32 list model.gguf: general.file_type 3
   (MOSTLY_Q4_1), every linear Q4_1, embedding and output in the source's
   bf16 (the layout of the Q4_0 views); gptq's values (read by ggufnp,
   the independent numpy reader) are the variant's own scale * (q - z)
   to within the fp16 offset (each group's squared error at most that of
   m = the nearest fp16 of -scale * z: 32 x (15/2048 scale)^2); rtn's
   are the source on ggml's Q4_1 grid with fitted scales: no block
   further from the source than llama.cpp's own Q4_1 encoding of it
   (libggml-base's ggml_quantize_chunk, no imatrix), and nearer than the
   checkpoint's grid overall;
 - kiq4_nl and kiq4_xs: general.file_type 25 / 30 and every tensor of the
   type llama-quantize gives it for IQ4_NL / IQ4_XS of the same model
   (its original/model.gguf; without the tools, the recorded counts);
   their IQ4 tensors decode in ggufnp as in ggml's own to_float, and no
   block of token_embd (rounded to nearest without an imatrix) is further
   from the source than in llama.cpp's own encoding of it (no imatrix);
 - llama.cpp (node-llama-cpp) loads all four from the mount and
   generates a token.

llama.cpp's tools and libggml-base.so: QF_LLAMA_BIN (bench/llamacpp.sh
DEST/bin; default /tmp/qf-llamacpp/bin); the checks that need them are
skipped with a message without them.
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
from qftest import Mount, run_tests, SHARED, SkipTest, \
    llama_reads  # noqa: E402

WORK = tempfile.mkdtemp(prefix="qf-q41iq4.")
LLAMA = os.environ.get("QF_LLAMA_BIN", "/tmp/qf-llamacpp/bin")
MODEL = os.path.join(SHARED, "data", "models", "tinystories-llama-5m")
CALIB = os.path.join(SHARED, "data", "text", "tinystories", "calib.txt")
OPTS = ["calib=" + CALIB, "calib_n=8", "calib_len=128"]
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
           "ffn_up", "ffn_down")
# view -> (llama-quantize's type name, llama_ftype)
MIXES = {"kiq4_nl": ("IQ4_NL", 25), "kiq4_xs": ("IQ4_XS", 30)}
# the 5M model's tensor types as llama-quantize (llama.cpp 5b4ebc5) wrote
# them, for runs without the tools: 13 F32 norms, token_embd and the 6 x 7
# linears of the base type, output Q6_K (attn_v stays: 8 query heads on 8
# kv heads; ffn_down of the first eighth of 6 layers: none)
COUNTS = {"kiq4_nl": {0: 13, 20: 43, 14: 1},
          "kiq4_xs": {0: 13, 23: 43, 14: 1}}


def need_model():
    if not os.path.exists(MODEL):
        raise SkipTest("../shared/data is absent")


def header(path):
    return ggufnp.header_only(path, WORK)


def test_q4_1_views():
    need_model()
    lib = ggufnp.libggml(LLAMA)
    with Mount(os.path.dirname(MODEL), opts=OPTS) as m:
        d = os.path.join(m.mnt, os.path.basename(MODEL))
        src, _ = stread.read_st(os.path.join(d, "original",
                                             "model.safetensors"))
        for v in ("rtn_w4_g32", "gptq_w4_g32"):
            assert "model.gguf" in os.listdir(os.path.join(d, v)), v
            g = ggufnp.File(os.path.join(d, v, "model.gguf"))
            assert g.kv["general.file_type"] == 3, g.kv["general.file_type"]
            types = {n: t[0] for n, t in g.tensors.items()}
            for n, t in types.items():
                want = 3 if n.split(".")[-2] in LINEARS else \
                    0 if n.endswith("norm.weight") else 30
                assert t == want, (v, n, t)
            hf = ggufnp.to_hf(g)
            st, _ = stread.read_st(os.path.join(d, v, "model.safetensors"))
            e_view = e_ref = e_ck = 0.0
            for name, w in hf.items():
                if not name.endswith("_proj.weight"):
                    continue
                x = src[name].astype(np.float32)
                out_f, in_f = x.shape
                ck, _, _, s, gi = stread.gptq_dequant(
                    st, name[:-len(".weight")], 4, out_f, in_f)
                if v.startswith("gptq"):
                    # scale * (q - z) to within the fp16 offset
                    sg = s[gi].T.astype(np.float64)        # [out, in]
                    err = ((w.astype(np.float64) - ck) ** 2).reshape(
                        -1, 32).sum(1)
                    bound = 32 * (sg.reshape(-1, 32)[:, 0] * 15 / 2048) ** 2
                    assert np.all(err <= bound * (1 + 1e-6)), \
                        (name, float(np.max(err / bound)))
                    continue
                ev = ((w.astype(np.float64) - x) ** 2).reshape(-1, 32)
                e_view += ev.sum()
                e_ck += float(np.sum((ck.astype(np.float64) - x) ** 2))
                if lib:
                    ref = lib[0](3, lib[1](3, x), x.size).reshape(-1, 32)
                    er = ((ref.astype(np.float64) -
                           x.reshape(-1, 32)) ** 2)
                    e_ref += er.sum()
                    assert np.all(ev.sum(1) <= er.sum(1) * (1 + 1e-6) +
                                  1e-20), name
            if v.startswith("rtn"):
                print("  rtn_w4_g32 Q4_1: squared error from the source "
                      "%.4g, the checkpoint's grid %.4g (%.3f)%s" % (
                          e_view, e_ck, e_view / e_ck,
                          ", llama.cpp's Q4_1 %.4g (%.3f)" % (
                              e_ref, e_view / e_ref) if lib else ""))
                assert e_view < e_ck, (e_view, e_ck)
        if not lib:
            print("  SKIP the comparison with llama.cpp's Q4_1 encoding: no "
                  "%s/libggml-base.so" % LLAMA)
        llama_reads([os.path.join(d, v, "model.gguf")
                     for v in ("rtn_w4_g32", "gptq_w4_g32")])


def test_kiq4_views():
    need_model()
    lib = ggufnp.libggml(LLAMA)
    quantize = os.path.join(LLAMA, "llama-quantize")
    with Mount(os.path.dirname(MODEL), opts=OPTS) as m:
        d = os.path.join(m.mnt, os.path.basename(MODEL))
        src = os.path.join(WORK, "source.gguf")
        shutil.copyfile(os.path.join(d, "original", "model.gguf"), src)
        emb = stread.read_st(os.path.join(d, "original", "model.safetensors")
                             )[0]["model.embed_tokens.weight"]
        for v, (typ, ftype) in MIXES.items():
            path = os.path.join(d, v, "model.gguf")
            assert os.listdir(os.path.join(d, v)).count("model.gguf") == 1
            assert "model.safetensors" not in os.listdir(os.path.join(d, v))
            ours = ggufnp.File(path)
            assert ours.kv["general.file_type"] == ftype, \
                (v, ours.kv["general.file_type"])
            got = {n: t[0] for n, t in ours.tensors.items()}
            counts = {k: list(got.values()).count(k)
                      for k in sorted(set(got.values()))}
            assert counts == COUNTS[v], (v, counts)
            tid = 20 if v == "kiq4_nl" else 23
            n = 0
            for name, (t, ne, at) in ours.tensors.items():
                w = ours.decode(name)
                assert np.all(np.isfinite(w)), name
                if t == tid and lib:
                    raw = ours.raw[at:at + ours.nbytes(name)]
                    assert np.array_equal(lib[0](t, raw, w.size),
                                          w.reshape(-1)), name
                    n += 1
            if lib:
                # token_embd (a lookup: rounded to nearest, no imatrix):
                # no block further from the source than llama.cpp's
                x = emb.astype(np.float32)
                ref = lib[0](tid, lib[1](tid, x), x.size)
                bs = ggufnp.BLOCKS[tid][0]
                eo = ((ours.decode("token_embd.weight").reshape(-1)
                       .astype(np.float64) - x.reshape(-1)) ** 2) \
                    .reshape(-1, bs).sum(1)
                er = ((ref.astype(np.float64) - x.reshape(-1)) ** 2) \
                    .reshape(-1, bs).sum(1)
                assert np.all(eo <= er * (1 + 1e-6) + 1e-20), v
                print("  %s token_embd: squared error / llama.cpp's %s "
                      "without imatrix %.3f, no block above it" % (
                          v, typ, eo.sum() / er.sum()))
            if os.path.exists(quantize):
                out = os.path.join(WORK, typ + ".gguf")
                subprocess.run([quantize, src, out, typ, "2"], check=True,
                               capture_output=True)
                want = {n: t[0] for n, t in header(out).tensors.items()}
                diff = {k: (got.get(k), want.get(k))
                        for k in set(got) | set(want)
                        if got.get(k) != want.get(k)}
                assert not diff, (v, diff)
            print("  %s: %d tensors, types %s%s%s" % (
                v, len(got), counts,
                ", as llama-quantize %s" % typ if os.path.exists(quantize)
                else " (no %s: the recorded counts only)" % quantize,
                "; %d %s tensors decode as ggml's to_float" % (n, typ)
                if lib else ""))
        llama_reads([os.path.join(d, v, "model.gguf") for v in MIXES])


try:
    run_tests(globals())
finally:
    shutil.rmtree(WORK, ignore_errors=True)
