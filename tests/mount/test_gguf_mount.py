"""model.gguf views on real FUSE mounts: an independent GGUF reader checks
the served files (header, offsets, and for variants whose grid is a ggml
block type the exact values of the safetensors variant; the Q4_K_M mix of
kq4_k_m), and llama.cpp
(node-llama-cpp's CPU prebuilt, tests/node) loads them from the mount with
default settings: its tokenization equals quantfs's, greedy generation
runs, and its perplexity is within 3 % of `quantfs eval` on the same
windows.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
# noqa: E402 below: the harness lives beside this file
import stread  # noqa: E402
from qftest import Mount, mkmodel, run_tests, QUANTFS, SHARED, \
    SkipTest, gguf_client, eval_windows, need_client  # noqa: E402

QUANTFS = os.environ.get("QUANTFS", QUANTFS)
WORK = tempfile.mkdtemp(prefix="qfgguf.")
SRC = os.path.join(WORK, "models")
mkmodel(os.path.join(SRC, "tiny"), "--layers", 2, "--heads", 8,
        "--kv-heads", 4, "--seed", 31)
SMALL = ["calib_n=8", "calib_len=64"]
TEXT = ("Once upon a time, there was a little girl named Lily. She loved "
        "to play outside in the park with her dog. One day, she saw a big "
        "red ball under a tree. ") * 12


# --- an independent GGUF reader (docs/gguf.md, ggml-common.h) ----------

SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
          7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf(path):
    raw = open(path, "rb").read()
    assert raw[:4] == b"GGUF"
    ver, nt, nkv = struct.unpack_from("<IQQ", raw, 4)
    assert ver == 3
    pos = 24

    def s():
        nonlocal pos
        n = struct.unpack_from("<Q", raw, pos)[0]
        pos += 8
        v = raw[pos:pos + n].decode()
        pos += n
        return v

    def val(t):
        nonlocal pos
        if t == 8:
            return s()
        if t == 9:
            et, n = struct.unpack_from("<IQ", raw, pos)
            pos += 12
            return [val(et) for _ in range(n)]
        v = struct.unpack_from(SCALAR[t], raw, pos)[0]
        pos += struct.calcsize(SCALAR[t])
        return v
    kv = {}
    for _ in range(nkv):
        k = s()
        t = struct.unpack_from("<I", raw, pos)[0]
        pos += 4
        kv[k] = val(t)
    tensors = {}
    for _ in range(nt):
        name = s()
        nd = struct.unpack_from("<I", raw, pos)[0]
        pos += 4
        ne = struct.unpack_from("<%dQ" % nd, raw, pos)
        pos += 8 * nd
        typ, off = struct.unpack_from("<IQ", raw, pos)
        pos += 12
        tensors[name] = (typ, ne, off)
    align = kv.get("general.alignment", 32)
    data = (pos + align - 1) // align * align
    return raw, kv, tensors, data


def decode(raw, typ, ne, at):
    n = int(np.prod(ne))
    if typ == 0:
        return np.frombuffer(raw, np.float32, n, at)
    if typ == 1:
        return np.frombuffer(raw, np.float16, n, at).astype(np.float32)
    if typ == 30:
        u = np.frombuffer(raw, np.uint16, n, at).astype(np.uint32) << 16
        return u.view(np.float32)
    nb = n // 32
    if typ == 2:        # Q4_0: fp16 d, 16 bytes: element j low, j+16 high
        b = np.frombuffer(raw, np.uint8, nb * 18, at).reshape(nb, 18)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        qs = b[:, 2:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32)
        return (d * (q - 8)).reshape(-1)
    if typ == 8:        # Q8_0: fp16 d, 32 int8
        b = np.frombuffer(raw, np.uint8, nb * 34, at).reshape(nb, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        q = b[:, 2:].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    raise AssertionError("type %d" % typ)


def unpermute(w, heads):
    """convert_hf_to_gguf's LlamaModel.permute, inverted."""
    r = w.shape[0]
    return w.reshape(heads, r // heads // 2, 2, -1).swapaxes(1, 2) \
        .reshape(w.shape)


# ------------------------------------------------------------------------

def test_files_listed_and_exact_repack():
    with Mount(SRC, opts=SMALL) as m:
        d = os.path.join(m.mnt, "tiny")
        assert "model.gguf" in os.listdir(os.path.join(d, "original"))
        assert "model.gguf" in os.listdir(os.path.join(d, "rtn_w4_g32_sym"))
        assert "model.gguf" not in os.listdir(os.path.join(d,
                                                           "rtn_w4_g128"))
        assert not os.path.exists(os.path.join(d, "rtn_w4_g128",
                                               "model.gguf"))
        cfg = json.load(open(os.path.join(d, "original", "config.json")))
        src, _ = stread.read_st(os.path.join(d, "original",
                                             "model.safetensors"))
        for v, typ, bits in (("rtn_w4_g32_sym", 2, 4),
                             ("rtn_w8_g32_sym", 8, 8),
                             ("gptq_w4_g32_sym", 2, 4), (None, 30, 0)):
            path = os.path.join(d, v or "original", "model.gguf")
            size = os.path.getsize(path)
            raw, kv, ts, data = read_gguf(path)
            assert len(raw) == size
            assert kv["general.architecture"] == "llama"
            assert kv["llama.block_count"] == cfg["num_hidden_layers"]
            assert kv["llama.attention.head_count_kv"] == 4
            if v:
                st, _ = stread.read_st(os.path.join(d, v,
                                                    "model.safetensors"))
            n = 0
            for name, (t, ne, off) in ts.items():
                if not name.startswith("blk.0.attn_q"):
                    if not name.startswith("blk.1.ffn_down") and \
                            not name.startswith("blk.0.attn_k"):
                        continue
                hf = {"blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj",
                      "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj",
                      "blk.1.ffn_down.weight":
                          "model.layers.1.mlp.down_proj"}[name]
                out_f, in_f = src[hf + ".weight"].shape
                assert t == typ and tuple(ne) == (in_f, out_f), (name, t, ne)
                w = decode(raw, t, ne, data + off).reshape(out_f, in_f)
                heads = {"attn_q": 8, "attn_k": 4}.get(name.split(".")[2])
                if heads:
                    w = unpermute(w, heads)
                if v:
                    want = stread.gptq_dequant(st, hf, bits, out_f, in_f)[0]
                else:
                    want = src[hf + ".weight"]
                if v and v.startswith("rtn"):
                    # RTN: the source on ggml's own grid (signed scales,
                    # fitted): closer to the source than the checkpoint's
                    # grid (ggml_fit.c; test_gguf_fit checks the rule)
                    x = src[hf + ".weight"].astype(np.float64)
                    e_gguf = np.sum((w - x) ** 2)
                    e_st = np.sum((want.astype(np.float64) - x) ** 2)
                    assert e_gguf < 0.95 * e_st, (v, name, e_gguf, e_st)
                else:
                    # the variant's own values: exactly
                    assert np.array_equal(w, want.astype(np.float32)), \
                        (v, name)
                n += 1
            assert n == 3
        # evicted behind the mount's back (cache gc): produced again
        path = os.path.join(d, "original", "model.gguf")
        before = open(path, "rb").read()
        r = subprocess.run([QUANTFS, "cache", "gc", "--max-size", "1",
                            "--cache", m.cache], capture_output=True,
                           text=True)
        assert "evicted" in r.stdout, r.stdout + r.stderr
        assert open(path, "rb").read() == before
        assert m.stderr().count("original/model.gguf ready") == 2, \
            m.stderr()


client = gguf_client
windows = eval_windows


def check_client(d, variant, text, ctx, label):
    tf = os.path.join(WORK, "text.txt")
    open(tf, "w").write(text)
    idf = os.path.join(WORK, "ids.json")
    ev = json.loads(subprocess.run(
        [QUANTFS, "eval", os.path.join(d, variant), "--text", tf, "--ctx",
         str(ctx), "--json", "--ids-out", idf], capture_output=True,
        text=True, check=True).stdout)
    prompt = text[:80]
    gen = subprocess.run([QUANTFS, "generate", os.path.join(d, variant),
                          "--prompt", prompt, "-n", "1", "--ids"],
                         capture_output=True, text=True, check=True)
    ours = [int(x) for x in gen.stdout.split()][:-1]
    bos = json.load(open(idf))["bos"]
    path = os.path.join(d, "original" if variant == "original" else variant,
                        "model.gguf")
    out = client(path, {"prompt": prompt, "n": 8,
                        "windows": windows(idf, ctx)})
    strip = [t for i, t in enumerate(out["prompt_ids"])
             if not (i == 0 and t == bos)]
    assert strip == [t for i, t in enumerate(ours)
                     if not (i == 0 and t == bos)], (out["prompt_ids"], ours)
    assert len(out["gen_ids"]) >= 1
    assert out["tokens"] == ev["tokens"], (out["tokens"], ev["tokens"])
    ppl_l = float(np.exp(out["nll"]))
    rel = abs(ppl_l - ev["ppl"]) / ev["ppl"]
    print("  %s %s: llama.cpp ppl %.4f, quantfs eval %.4f (%.2f %%)" % (
        label, variant, ppl_l, ev["ppl"], 100 * rel))
    assert rel < 0.03, (ppl_l, ev["ppl"])


def test_llama_cpp_generated_model():
    need_client()
    with Mount(SRC, opts=SMALL) as m:
        d = os.path.join(m.mnt, "tiny")
        for v in ("original", "gptq_w4_g32_sym", "rtn_w8_g32_sym"):
            check_client(d, v, TEXT, 128, "tiny")
        # a k-quant variant exists only as GGUF
        kq = os.path.join(d, "kq4_k_m")
        assert "model.gguf" in os.listdir(kq)
        assert "model.safetensors" not in os.listdir(kq)
        _, kv, ts, _ = read_gguf(os.path.join(kq, "model.gguf"))
        assert kv["general.file_type"] == 15           # MOSTLY_Q4_K_M
        types = {n: t for n, (t, _, _) in ts.items()}
        assert types["blk.0.attn_q.weight"] == 12       # Q4_K
        # use_more_bits(i, 2): layer 1 only
        assert types["blk.0.ffn_down.weight"] == 12
        assert types["blk.1.ffn_down.weight"] == 14     # Q6_K
        assert types["blk.1.attn_v.weight"] == 14
        out = client(os.path.join(kq, "model.gguf"),
                     {"prompt": TEXT[:60], "n": 4, "windows": []})
        assert len(out["gen_ids"]) >= 1


def test_llama_cpp_real_model():
    need_client()
    model = os.path.join(SHARED, "data", "models", "tinystories-llama-5m")
    if not os.path.exists(model):
        raise SkipTest("../shared/data is absent")
    text = open(os.path.join(SHARED, "data", "text", "tinystories",
                             "eval.txt")).read()[:6000]
    calib = os.path.join(SHARED, "data", "text", "tinystories", "calib.txt")
    with Mount(os.path.join(SHARED, "data", "models"),
               opts=["calib=" + calib, "calib_n=16", "calib_len=256"]) as m:
        d = os.path.join(m.mnt, "tinystories-llama-5m")
        for v in ("original", "gptq_w4_g32_sym"):
            check_client(d, v, text, 256, "tinystories")
        # kq4_k_m (Q4_K/Q6_K with the calibration imatrix): llama.cpp's
        # perplexity within 3 % of the source's on the same windows
        idf = os.path.join(WORK, "ids.json")
        ppl = {}
        for v in ("original", "kq4_k_m"):
            out = client(os.path.join(d, v, "model.gguf"),
                         {"prompt": "Once", "n": 1,
                          "windows": windows(idf, 256)})
            ppl[v] = float(np.exp(out["nll"]))
        print("  tinystories kq4_k_m: llama.cpp ppl %.4f vs original %.4f"
              % (ppl["kq4_k_m"], ppl["original"]))
        assert ppl["kq4_k_m"] < 1.03 * ppl["original"], ppl


run_tests(globals())
