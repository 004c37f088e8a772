#!/usr/bin/python3
"""test_phi3.py - Phi-3 / Phi-4-mini (model_type phi3) end to end.

`quantfs mkmodel --arch phi3` writes a Phi-4-mini-like model (fused
qkv_proj and gate_up_proj, partial_rotary_factor 0.75, LongRoPE); its
config is then varied (long factors, a sliding window, full rotary
without LongRoPE) and quantfs's logits checked against ref_phi3.py, the
numpy float64 oracle.  The mount serves its variants with the fused
tensor names, and llama.cpp (node-llama-cpp) reads its model.gguf.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import archtest as at  # noqa: E402
import ref_phi3  # noqa: E402

SHAPE = ["--arch", "phi3", "--hidden", "64", "--inter", "128", "--layers",
         "2", "--heads", "4", "--kv-heads", "2", "--vocab", "512"]
_models = {}


def model(tie=True):
    """The generated model (tied: Phi-4-mini's embeddings), made once."""
    key = "tied" if tie else "untied"
    if key not in _models:
        d = os.path.join(at.WORK, key)
        at.mkmodel(d, *(SHAPE + (["--tie"] if tie else [])))
        _models[key] = d
    return _models[key]


def variant_of(src, name, **cfg):
    """A copy of src with config.json keys changed (None: removed)."""
    return at.with_config(src, name, **cfg)


def test_config_is_phi4_mini_like():
    c = json.load(open(os.path.join(model(), "config.json")))
    assert c["model_type"] == "phi3", c
    assert c["partial_rotary_factor"] == 0.75, c
    rs = c["rope_scaling"]
    assert rs["type"] == "longrope" and len(rs["short_factor"]) == 6, rs
    assert c["tie_word_embeddings"] is True
    t, _ = at.stread.read_st(os.path.join(model(), "model.safetensors"))
    assert t["model.layers.0.self_attn.qkv_proj.weight"].shape == (128, 64)
    assert t["model.layers.1.mlp.gate_up_proj.weight"].shape == (256, 64)
    assert "model.layers.0.self_attn.q_proj.weight" not in t


def test_logits_short_factors():
    ids = at.ids_for(512, 2, 24)
    at.check_logits(model(), ref_phi3.logits, ids, label="phi4-mini-like")


def test_logits_long_factors():
    """Sequences past original_max_position_embeddings: long factors and
    a larger attention factor."""
    d = variant_of(model(), "long", original_max_position_embeddings=16)
    at.check_logits(d, ref_phi3.logits, at.ids_for(512, 1, 24, seed=2),
                    label="long factors")


def test_logits_sliding_window_untied():
    """Phi-3-mini-like: full rotary, no rope scaling, a window, untied."""
    d = variant_of(model(tie=False), "phi3mini", partial_rotary_factor=None,
                   rope_scaling=None, sliding_window=7)
    at.check_logits(d, ref_phi3.logits, at.ids_for(512, 2, 20, seed=3),
                    label="phi3-mini-like")


SMALL = ["calib_n=8", "calib_len=64"]


def mount_src():
    """A source directory holding the tied model as "phi4mini" and the
    untied one as "phi4mini-untied" (not "phi3": llama.cpp gives models
    named so attributes of tokens our byte-level vocabulary lacks)."""
    src = os.path.join(at.WORK, "src")
    if not os.path.exists(src):
        os.makedirs(src)
        os.symlink(model(), os.path.join(src, "phi4mini"))
        os.symlink(model(tie=False), os.path.join(src, "phi4mini-untied"))
    return src


def gguf_kv(path):
    """The metadata and tensor infos of a GGUF file (an independent
    reader: docs/gguf.md)."""
    raw = open(path, "rb").read()
    _, nt, nkv = struct.unpack_from("<IQQ", raw, 4)
    pos, kv, ts = 24, {}, {}
    sc = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
          7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def rd(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, raw, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal pos
        n = rd("<Q")
        pos += n
        return raw[pos - n:pos].decode("utf-8", "replace")

    def skip(t):
        nonlocal pos
        if t == 8:
            string()
        elif t == 9:
            et, cnt = rd("<I"), rd("<Q")
            for _ in range(cnt):
                skip(et)
        else:
            pos += struct.calcsize(sc[t])

    for _ in range(nkv):
        k = string()
        t = rd("<I")
        if t == 8:
            kv[k] = string()
        elif t in sc:
            kv[k] = rd(sc[t])
        else:
            skip(t)
    for _ in range(nt):
        name = string()
        nd = rd("<I")
        ne = [rd("<Q") for _ in range(nd)]
        ts[name] = (rd("<I"), ne)
        rd("<Q")
    return kv, ts


def test_gguf_view():
    """original/model.gguf: llama.cpp's phi3 names and keys, and its
    next-token distributions against quantfs's softmax(logits); the
    perplexity of a quantized view against `quantfs eval`."""
    with at.Mount(mount_src(), opts=SMALL) as m:
        d = os.path.join(m.mnt, "phi4mini")
        g = os.path.join(d, "original", "model.gguf")
        kv, ts = gguf_kv(g)
        assert kv["general.architecture"] == "phi3", kv
        assert kv["phi3.rope.dimension_count"] == 12, kv
        assert kv["phi3.rope.scaling.original_context_length"] == 4096
        assert abs(kv["phi3.rope.scaling.attn_factor"] -
                   (1 + np.log(32) / np.log(4096)) ** 0.5) < 1e-6, kv
        assert kv["phi3.context_length"] == 131072, kv
        assert ts["blk.0.attn_qkv.weight"][1] == [64, 128], ts
        assert ts["blk.1.ffn_up.weight"][1] == [64, 256], ts
        assert ts["rope_factors_long.weight"][1] == [6], ts
        assert "blk.0.attn_q.weight" not in ts and \
            "blk.0.ffn_gate.weight" not in ts and "output.weight" not in ts
        ids = at.ids_for(512, 1, 40, seed=5)[0]
        ids[0] = 1
        # the tied model's logits are large (its embeddings, drawn at
        # unit scale, are the head): llama.cpp's f16 KV cache moves its
        # peaked distributions by ~3e-2, as it does a tied llama's, where
        # a wrong rope moves them by ~0.9.  The untied model's logits
        # are near 1: the tight check and the perplexity are on it (a
        # llama of this shape: max |dp| 2.4e-3 under the same client).
        at.check_gguf_probs(g, model(), ids, tol=0.1, label="tied original")
        u = os.path.join(m.mnt, "phi4mini-untied")
        at.check_gguf_probs(os.path.join(u, "original", "model.gguf"),
                            model(tie=False), ids, tol=5e-3,
                            label="untied original")
        # (GPTQ's view repacks the checkpoint's weights; RTN's is
        # ggml's own grid, so `quantfs eval` of it would differ)
        at.check_gguf_ppl(u, "gptq_w4_g32_sym", label="untied")
        # kq4_k_m: the k-quant mix with the calibration imatrix (a fused
        # tensor's is its first linear's inputs); rows of 64 take the
        # fallbacks of Q4_K / Q6_K (Q4_1 / Q8_0)
        idf = os.path.join(at.WORK, "ids.json")
        ev = at.eval_json(os.path.join(u, "original"), at.TEXT, 128, idf)
        out = at.client(os.path.join(u, "kq4_k_m", "model.gguf"),
                        {"prompt": "Once", "n": 1,
                         "windows": at.windows(idf, 128)})
        ppl = float(np.exp(out["nll"]))
        print("  untied kq4_k_m: llama.cpp ppl %.4f, the source's (quantfs "
              "eval) %.4f" % (ppl, ev["ppl"]))
        assert ppl < 1.03 * ev["ppl"], (ppl, ev["ppl"])
        # `quantfs report` decodes the GGUF-only view (phi3's generated
        # rope_factors_* have no source tensor) and measures it as
        # llama.cpp does, on the same windows
        rj = os.path.join(at.WORK, "report")
        txt = os.path.join(at.WORK, "report.txt")
        open(txt, "w").write(at.TEXT)
        at.qf("report", u, "--text", txt, "--variants", "kq4_k_m", "--ctx",
              128, "-o", rj + ".md", "--cache", rj + ".cache")
        row = json.load(open(rj + ".json"))["variants"][0]
        print("  untied kq4_k_m: quantfs report ppl %s" % row["perplexity"])
        assert row["name"] == "kq4_k_m" and not row["error"], row
        assert abs(row["perplexity"] - ppl) < 0.02 * ppl, (row, ppl)


def dequant_model(variant_dir, dest, bits):
    """dest: the variant's GPTQ checkpoint dequantized by numpy (stread)
    into an fp32 model directory the oracle reads."""
    t, _ = at.stread.read_st(os.path.join(variant_dir, "model.safetensors"))
    out = {}
    for name, a in t.items():
        if name.endswith(".qweight"):
            p = name[:-len(".qweight")]
            o = t[p + ".scales"].shape[1]
            i = t[p + ".g_idx"].shape[0]
            out[p + ".weight"] = at.stread.gptq_dequant(t, p, bits, o, i)[0]
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            out[name] = a
    os.makedirs(dest, exist_ok=True)
    at.stread.write_st(os.path.join(dest, "model.safetensors"), {
        k: ("F32", list(v.shape),
            np.ascontiguousarray(v, dtype="<f4").tobytes())
        for k, v in out.items()})
    shutil.copy(os.path.join(variant_dir, "config.json"), dest)
    return dest


def self_samples(model_dir, nseq=32, seqlen=64, seed=11):
    """Token ids [nseq, seqlen] sampled (temperature 1) from quantfs's
    next-token distributions of model_dir, after BOS."""
    rng = np.random.default_rng(seed)
    ids = np.ones((nseq, 1), dtype=np.int32)
    while ids.shape[1] < seqlen:
        p = at.softmax(at.ours(model_dir, ids).reshape(
            nseq, ids.shape[1], -1)[:, -1])
        nxt = [rng.choice(p.shape[1], p=row / row.sum()) for row in p]
        ids = np.concatenate([ids, np.array(nxt, np.int32)[:, None]], 1)
    return ids


def self_ppl(model_dir, ids):
    """exp(mean NLL) of ids[:, 1:] under model_dir (quantfs's logits)."""
    lp = at.ours(model_dir, ids).astype(np.float64).reshape(
        ids.shape[0], ids.shape[1], -1)
    lp -= lp.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(lp[:, :-1], ids[:, 1:, None], 2)
    return float(np.exp(nll.mean()))


def test_calibrated_variants():
    """gptq, awq, brecq, mixed_static: served with the fused names (one
    quantized tensor per fused linear), GPTQ better than RTN at the same
    grid, and the GPTQ checkpoint, dequantized by numpy, is what
    quantfs's eval computes."""
    with at.Mount(mount_src(), opts=SMALL) as m:
        d = os.path.join(m.mnt, "phi4mini-untied")
        for v in ("gptq_w4_g32_sym", "awq_w4_g128", "brecq_w4_g64_attn6",
                  "mixed_static", "mixed_b4.5", "mixed_dyn"):
            t, _ = at.stread.read_st(os.path.join(d, v, "model.safetensors"))
            p = "model.layers.1."
            # a checkpoint's qweight, or a _fake's dequantized weight
            assert {p + "self_attn.qkv_proj.qweight",
                    p + "self_attn.qkv_proj.weight"} & set(t), (v, sorted(t))
            assert {p + "mlp.gate_up_proj.qweight",
                    p + "mlp.gate_up_proj.weight"} & set(t), (v, sorted(t))
            assert not [n for n in t if ".q_proj." in n or ".up_proj." in n]
            if v.startswith("awq"):     # AutoAWQ GEMM: [in, out / 8]
                assert t[p + "self_attn.qkv_proj.qweight"].shape == (64, 16)
                # the scales folded into the norms the fused tensors read
                assert p + "input_layernorm.weight" in t
            man = json.load(open(os.path.join(d, v, "quantization.json")))
            if v.startswith("mixed"):   # one width per fused tensor
                bits = {x["name"].split(".", 3)[3]: x["bits"]
                        for x in man["layers"] if "layers.1." in x["name"]}
                print("  %s: layer 1 bits %s" % (v, bits))
                continue
            loss = {x["name"].split(".", 3)[3]: (
                x.get("loss_" + v.split("_")[0], -1), x["loss_rtn"])
                for x in man["layers"] if "layers.1." in x["name"]}
            print("  %s: layer 1 output error vs rtn %s" % (v, loss))
            if v.startswith(("gptq", "awq")):
                assert all(a < r for a, r in loss.values()), loss
        # perplexity on the model's own samples: a random model predicts
        # English text no better than chance, its own distribution well
        ids = self_samples(model(tie=False))
        ppl = {v: self_ppl(os.path.join(d, v), ids)
               for v in ("original", "rtn_w4_g32_sym", "gptq_w4_g32_sym",
                         "rtn_w4_g128", "awq_w4_g128", "brecq_w4_g64_attn6")}
        print("  perplexity on its samples: " + ", ".join(
            "%s %.3f" % kv for kv in ppl.items()))
        assert ppl["original"] < ppl["gptq_w4_g32_sym"] < \
            ppl["rtn_w4_g32_sym"], ppl
        assert ppl["awq_w4_g128"] < ppl["rtn_w4_g128"], ppl
        deq = dequant_model(os.path.join(d, "gptq_w4_g32_sym"),
                            os.path.join(at.WORK, "gptq_deq"), 4)
        ids = at.ids_for(512, 2, 24, seed=7)
        a = at.ours(os.path.join(d, "gptq_w4_g32_sym"), ids)
        b = ref_phi3.logits(deq, ids)
        rel = float(np.abs(a - b).max() / np.abs(b).max())
        print("  gptq checkpoint: quantfs's logits vs numpy dequant + "
              "oracle: max rel diff %.2e" % rel)
        assert rel < 1e-4, rel


def test_chunked_calibration_same_bytes():
    """Calibration in chunks of sequences (-o calib_mem) of a model with
    fused qkv_proj and gate_up_proj: GPTQ's sequential passes free the
    attention's weights once its output is final (the fused tensor once:
    freeing each linear's rows of it aborted the daemon), AWQ takes
    down_proj alone first (the layer's weights and X^T X are more than
    half of 1M: intermediate 1024); both give the bytes of one pass over
    all tokens."""
    src = os.path.join(at.WORK, "wide")
    at.mkmodel(os.path.join(src, "phi4wide"), "--arch", "phi3", "--hidden",
               "128", "--inter", "1024", "--layers", "2", "--heads", "4",
               "--kv-heads", "2", "--vocab", "512")
    got = {}
    for mem in (None, "1M"):
        opts = ["calib_n=16", "calib_len=64"] + (
            ["calib_mem=" + mem] if mem else [])
        with at.Mount(src, opts=opts) as m:
            d = os.path.join(m.mnt, "phi4wide")
            for v in ("gptq_w4_g32_sym", "awq_w4_g128"):
                got[mem, v] = at.sha(os.path.join(d, v, "model.safetensors"))
            log = m.stderr()
        assert ("16 calibration sequences in chunks of 8" in log) == \
            (mem == "1M"), log
        assert ("awq_w4_g128: each layer's down_proj first" in log) == \
            (mem == "1M"), log
    for v in ("gptq_w4_g32_sym", "awq_w4_g128"):
        assert got[None, v] == got["1M", v], v
    print("  gptq, awq: the same bytes in 1 and 2 chunks")


def test_kill9_resume_same_bytes():
    """A calibrated job killed after two layers resumes from the cache,
    replaying the fused tensors (and AWQ's folded norms) of the layers
    done: the bytes equal an uninterrupted run's."""
    src = os.path.join(at.WORK, "six")
    at.mkmodel(os.path.join(src, "m"), "--arch", "phi3", "--layers", "6",
               "--hidden", "192", "--inter", "512", "--heads", "3",
               "--kv-heads", "1", "--seed", "12")
    opts = ["calib_n=16", "calib_len=64"]
    p = "m/awq_w4_g128/model.safetensors"
    with at.Mount(src, opts=opts) as m:
        want = open(os.path.join(m.mnt, p), "rb").read()

    def layers(log):
        return re.findall(r"/awq_\S+: layer \d+/\d+ in ", log)

    cache = tempfile.mkdtemp(prefix="qfcache.", dir=at.WORK)
    m = at.Mount(src, cache=cache, opts=opts)
    m.__enter__()
    try:
        reader = subprocess.Popen(["cat", os.path.join(m.mnt, p)],
                                  stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while len(layers(m.stderr())) < 2:
            assert time.time() < deadline and m.proc.poll() is None, \
                m.stderr()
            time.sleep(0.02)
        m.kill9()
        reader.wait(timeout=30)
    finally:
        m.__exit__(None, None, None)
    done = len(layers(m.stderr()))
    if done >= 6:
        raise at.SkipTest("the job finished before the kill")
    with at.Mount(src, cache=cache, opts=opts) as m2:
        assert open(os.path.join(m2.mnt, p), "rb").read() == want
        log = m2.stderr()
        assert "resuming at layer %d/6" % (done + 1) in log, log
    print("  awq_w4_g128: killed after %d/6 layers, resumed: same bytes"
          % done)


if __name__ == "__main__":
    try:
        at.run_tests(globals(), needs_fuse=False)
    finally:
        shutil.rmtree(at.WORK, ignore_errors=True)
