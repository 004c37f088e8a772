#!/usr/bin/python3
"""test_moe.py - the mixture-of-experts families end to end: Qwen3-MoE,
Mixtral, OLMoE, and Qwen2-MoE (a shared expert).

quantfs mkmodel --arch makes tiny models (hidden 64, 2 layers, 8 experts,
top-2, vocab 512); quantfs's logits are checked against the float64 oracle
ref_moe.py (also with a dense layer among sparse ones, Mixtral's sliding
window and OLMoE's clip_qkv, set in config.json), after checking that the
oracle's routing has no near tie that float32 could flip.  Through a mount:
RTN variants quantize every expert's linears under the source's checkpoint
names and keep the routers in source precision; GPTQ (per expert on its
routed tokens), AWQ (the block's gate/up scale also scaling the router),
the k-quants (each expert's imatrix from its routed tokens) and measured
mixed precision (per layer one width for every expert's gate/up, one for
their down) and BRECQ (routing fixed from the block's input) are offered;
llama.cpp loads model.gguf and agrees with quantfs.
"""
import hashlib
import json
import os
import shutil
import struct

import numpy as np

from archtest import (Mount, TEXT, WORK, check_gguf_ppl, check_gguf_probs,
                      check_logits, client, eval_json, ids_for, mkmodel,
                      need_client, ours, qf, run_tests, softmax, stread,
                      windows)
import ggufnp
import ref_moe

ARCHES = ("qwen3_moe", "mixtral", "olmoe", "qwen2_moe")
GGUF_ARCH = {"qwen3_moe": "qwen3moe", "mixtral": "llama", "olmoe": "olmoe",
             "qwen2_moe": "qwen2moe"}
SHAPE = ("--hidden", 64, "--inter", 128, "--layers", 2, "--heads", 4,
         "--vocab", 512, "--experts", 8, "--topk", 2, "--moe-inter", 32)


def model(arch, tag="", seed=7, kv_heads=None):
    """OLMoE without GQA, as the released model (and llama.cpp's olmoe)."""
    d = os.path.join(WORK, arch + tag)
    if kv_heads is None:
        kv_heads = 4 if arch == "olmoe" else 2
    if not os.path.exists(d):
        mkmodel(d, "--arch", arch, "--seed", seed, *SHAPE,
                "--kv-heads", kv_heads)
    return d


def check_margins(d, ids, least=1e-4):
    """The oracle's top-k boundary is no near tie anywhere."""
    m = min(float(mg.min()) for _, mg in ref_moe.routing(d, ids))
    assert m > least, ("near tie in the routing", m)


def edit_config(d, **kw):
    f = os.path.join(d, "config.json")
    cfg = json.load(open(f))
    cfg.update(kw)
    json.dump(cfg, open(f, "w"), indent=1)


def test_logits():
    ids = ids_for(512, 2, 24)
    for arch in ARCHES:
        d = model(arch)
        check_margins(d, ids)
        check_logits(d, ref_moe.logits, ids, label=arch)


def test_logits_variants():
    """A dense MLP on layer 0 (mlp_only_layers), a sliding window, clip."""
    ids = ids_for(512, 2, 24, seed=3)
    d = os.path.join(WORK, "qwen3_moe_dense")
    shutil.copytree(model("qwen3_moe"), d)
    t, _ = stread.read_st(os.path.join(d, "model.safetensors"))
    rng = np.random.default_rng(5)
    dense = {"gate": (96, 64), "up": (96, 64), "down": (64, 96)}
    raw = {k: ("F32", list(v.shape), np.ascontiguousarray(
        v, dtype=np.float32).tobytes()) for k, v in t.items()}
    for n, shp in dense.items():
        w = rng.standard_normal(shp).astype(np.float32) / 8
        raw["model.layers.0.mlp.%s_proj.weight" % n] = (
            "F32", list(shp), w.tobytes())
    stread.write_st(os.path.join(d, "model.safetensors"), raw)
    edit_config(d, mlp_only_layers=[0], intermediate_size=96)
    check_margins(d, ids)
    check_logits(d, ref_moe.logits, ids, label="qwen3_moe mlp_only [0]")

    d = os.path.join(WORK, "mixtral_win")
    shutil.copytree(model("mixtral"), d)
    edit_config(d, sliding_window=5)
    check_margins(d, ids)
    check_logits(d, ref_moe.logits, ids, label="mixtral window 5")

    d = model("olmoe", "_gqa", kv_heads=2)
    check_margins(d, ids)
    check_logits(d, ref_moe.logits, ids, label="olmoe kv_heads 2")

    d = os.path.join(WORK, "olmoe_clip")
    shutil.copytree(model("olmoe"), d)
    edit_config(d, clip_qkv=0.5, norm_topk_prob=True)
    check_margins(d, ids)
    check_logits(d, ref_moe.logits, ids, label="olmoe clip 0.5")


def src_dir():
    """A source directory holding the generated models."""
    src = os.path.join(WORK, "src")
    if not os.path.exists(src):
        os.makedirs(src)
        for arch in ARCHES:
            os.symlink(model(arch), os.path.join(src, arch))
    return src


def test_rtn_variants():
    """Every expert's linears quantized under the source's names, routers
    kept; of the calibrated methods GPTQ, AWQ and BRECQ offered; eval
    reads the variant."""
    with Mount(src_dir()) as m:
        for arch in ARCHES:
            d = os.path.join(m.mnt, arch)
            names = os.listdir(d)
            # of the calibrated methods GPTQ (test_gptq_experts), AWQ
            # (test_awq_experts), BRECQ (test_brecq_experts), the
            # k-quants (test_kq); mixed_dyn / mixed_b<avg> (test_mixed)
            assert "rtn_w4_g128" in names and "gptq_w4_g128" in names, names
            assert "kq4_k_m" in names and "mixed_static" in names, names
            assert "awq_w4_g128" in names, names
            assert "brecq_w4_g64_attn6" in names, names
            src, _ = stread.read_st(os.path.join(model(arch),
                                                 "model.safetensors"))
            v = os.path.join(d, "rtn_w4_g32_sym")
            t, _ = stread.read_st(os.path.join(v, "model.safetensors"))
            router, ex = ref_moe.NAMES[arch][:2]
            for l in range(2):
                r = "model.layers.%d.%s.weight" % (l, router)
                assert np.array_equal(t[r], src[r]), r
                for e in range(8):
                    for n in ref_moe.NAMES[arch][2:]:
                        w = "model.layers.%d.%s.%d.%s.weight" % (l, ex, e, n)
                        assert w not in t and w[:-7] + ".qweight" in t, w
                stread.check_rtn(t, src, "model.layers.%d.%s.3.%s.weight" %
                                 (l, ex, ref_moe.NAMES[arch][4]), 4, 32, True)
            # mixed_static: experts get the MLP role's bits (4)
            ms = json.load(open(os.path.join(d, "mixed_static",
                                             "quantization.json")))
            assert {g["bits"] for g in ms["layers"]
                    if ".experts." in g["name"]} == {4}, arch
            q = json.load(open(os.path.join(v, "quantization.json")))
            kept = [k["name"] for k in q["kept_in_source_dtype"]]
            gates = ([router, "mlp.shared_expert_gate"]
                     if arch == "qwen2_moe" else [router])
            assert kept == ["model.layers.%d.%s.weight" % (l, r)
                            for l in range(2) for r in gates], kept
            cfg = json.load(open(os.path.join(v, "config.json")))
            assert cfg["model_type"] == arch
            ev = eval_json(v, TEXT, ctx=64)
            ev0 = eval_json(os.path.join(d, "original"), TEXT, ctx=64)
            print("  %s: ppl original %.3f, rtn_w4_g32_sym %.3f" % (
                arch, ev0["ppl"], ev["ppl"]))
            assert abs(ev["ppl"] / ev0["ppl"] - 1) < 0.2, (ev, ev0)


def calib_windows(text, nseq, seqlen):
    """quantfs's calibration windows of a text for the generated
    byte-level tokenizer (token 3 + byte, BOS 1), spread evenly."""
    toks = [3 + b for b in text.encode()]
    body = seqlen - 1
    stride = (len(toks) - body) // (nseq - 1)
    return np.array([[1] + toks[s * stride:s * stride + body]
                     for s in range(nseq)], dtype=np.int32)


def dequantized(d, v, bits):
    """The weights a GPTQ variant computes with: its linears dequantized,
    the rest (routers included) as stored."""
    t, _ = stread.read_st(os.path.join(v, "model.safetensors"))
    w = {}
    for name, a in t.items():
        if name.endswith(".qweight"):
            pre = name[:-8]
            n_in = a.shape[0] * 32 // bits
            w[pre + ".weight"] = stread.gptq_dequant(
                t, pre, bits, t[pre + ".scales"].shape[1], n_in)[0]
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            w[name] = a
    return {k: np.asarray(a, dtype=np.float64) for k, a in w.items()}


def test_gptq_experts():
    """GPTQ of every expert on the tokens routed to it: the counts in
    quantization.json are the routing of the quantized model (whose
    router input is what true-sequential GPTQ saw), GPTQ beats RTN on
    the experts' own inputs, routers kept; too few tokens: the
    fallback's statistics (a calibration set of 2 x 32 tokens)."""
    text = TEXT * 4
    cal = os.path.join(WORK, "calib.txt")
    open(cal, "w").write(text)
    for n, ln in ((8, 64), (2, 32)):
        opts = ["calib=" + cal, "calib_n=%d" % n, "calib_len=%d" % ln]
        with Mount(src_dir(), opts=opts) as m:
            for arch in ARCHES:
                check_gptq(m, arch, calib_windows(text, n, ln))
    # data-free: sequences sampled from the model (its KV-cached decoder
    # through the MoE blocks and OLMoE's norms)
    with Mount(src_dir(), opts=["calib_n=4", "calib_len=32"]) as m:
        for arch in ARCHES:
            v = os.path.join(m.mnt, arch, "gptq_w4_g128")
            q = json.load(open(os.path.join(v, "quantization.json")))
            assert "sampled" in q["calibration"]["source"], q
            tok = [g["routed_tokens"] for g in q["layers"]
                   if ".experts." in g["name"]]
            assert sum(tok) == 2 * 3 * 4 * 32 * 2, tok


def check_gptq(m, arch, ids):
    d = os.path.join(m.mnt, arch)
    assert "gptq_w4_g128" in os.listdir(d)
    v = os.path.join(d, "gptq_w4_g32_sym")
    q = json.load(open(os.path.join(v, "quantization.json")))
    w = dequantized(model(arch), v, 4)
    trace = ref_moe.routing(model(arch), ids, weights=w)
    router, ex = ref_moe.NAMES[arch][:2]
    names = ref_moe.NAMES[arch][2:]
    layers = {g["name"]: g for g in q["layers"]}
    gptq = rtn = 0.0
    for l in range(2):
        sel = np.concatenate([trace[s * 2 + l][0] for s in range(len(ids))])
        count = np.bincount(sel.ravel(), minlength=8)
        for e in range(8):
            for n in names:
                g = layers["model.layers.%d.%s.%d.%s.weight" % (l, ex, e,
                                                                   n)]
                assert g["routed_tokens"] == count[e], (arch, l, e, g)
                gptq += g["loss_gptq"]
                rtn += g["loss_rtn"]
        assert "model.layers.%d.%s.weight" % (l, router) not in layers
        if arch == "qwen2_moe":     # the shared expert sees every token
            for n in names:
                g = layers["model.layers.%d.mlp.shared_expert.%s.weight" %
                           (l, n)]
                assert g["routed_tokens"] == ids.size, g
    print("  %s gptq_w4_g32_sym over %d tokens: routed %s (layer 1); "
          "expert loss gptq %.4f vs rtn %.4f" % (
              arch, ids.size, count.tolist(), gptq / 48, rtn / 48))
    assert gptq < rtn, (gptq, rtn)
    ev = eval_json(v, TEXT, ctx=64)
    assert ev["ppl"] > 0


def awq_unpack(qweight, qzeros, scales):
    """AutoAWQ GEMM, unpacked by stread (float64: the fp16 scale times a
    4-bit code is exact in float32 too)."""
    return stread.awq_unpack(qweight, qzeros, scales)[0].astype(np.float64)


def awq_weights(v):
    """An AWQ variant's tensors, its linears dequantized (float64)."""
    t, _ = stread.read_st(os.path.join(v, "model.safetensors"))
    w = {}
    for name, a in t.items():
        if name.endswith(".qweight"):
            pre = name[:-8]
            w[pre + ".weight"] = awq_unpack(a, t[pre + ".qzeros"],
                                            t[pre + ".scales"])
        elif not name.endswith((".qzeros", ".scales")):
            w[name] = np.asarray(a, dtype=np.float64)
    return t, w


def ref_logits_w(d, w, ids):
    """The oracle's logits with the weights w in place of d's."""
    cfg, _ = ref_moe.load(d)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return np.concatenate([
        ref_moe.rmsnorm(ref_moe.hidden(cfg, w, seq), w["model.norm.weight"],
                        cfg["rms_norm_eps"]) @ head.T
        for seq in np.asarray(ids).reshape(len(ids), -1)], axis=0)


def sample(src, nseq=3, n=32, seed=5):
    """nseq sequences of n tokens drawn from src (BOS first)."""
    rng = np.random.default_rng(seed)
    ids = np.ones((nseq, 1), dtype=np.int32)
    for _ in range(n - 1):
        lg = ours(src, ids).reshape(nseq, ids.shape[1], -1)
        p = softmax(lg[:, -1])
        nxt = [rng.choice(p.shape[1], p=row / row.sum()) for row in p]
        ids = np.concatenate([ids, np.array(nxt, np.int32)[:, None]], 1)
    return ids


def mean_kl(src, variant, ids):
    p = softmax(ours(src, ids))
    q = softmax(ours(variant, ids))
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def test_awq_experts():
    """AWQ of the MoE block as AutoAWQ does it: experts packed under the
    source's names, the router unquantized but scaled by the gate/up input
    scales folded into post_attention_layernorm (router' = router * s,
    s = norm / norm'); quantfs's logits of the variant match the oracle
    fed with its dequantized tensors; closer to the source than RTN."""
    text = TEXT * 4
    cal = os.path.join(WORK, "calib.txt")
    open(cal, "w").write(text)
    opts = ["calib=" + cal, "calib_n=8", "calib_len=64"]
    ids = ids_for(512, 2, 24, seed=13)
    with Mount(src_dir(), opts=opts) as m:
        for arch in ("qwen3_moe", "mixtral"):
            d = model(arch)
            v = os.path.join(m.mnt, arch, "awq_w4_g128")
            src, _ = stread.read_st(os.path.join(d, "model.safetensors"))
            t, w = awq_weights(v)
            router, ex = ref_moe.NAMES[arch][:2]
            for l in range(2):
                for e in range(8):
                    for n in ref_moe.NAMES[arch][2:]:
                        p = "model.layers.%d.%s.%d.%s" % (l, ex, e, n)
                        assert p + ".weight" not in t, p
                        for k in (".qweight", ".qzeros", ".scales"):
                            assert p + k in t, p + k
                r = "model.layers.%d.%s.weight" % (l, router)
                nm = "model.layers.%d.post_attention_layernorm.weight" % l
                assert r in t and r[:-7] + ".qweight" not in t, r
                assert t[r].dtype == src[r].dtype, r
                s = src[nm].astype(np.float64) / t[nm]
                assert not np.allclose(s, 1), (arch, l)
                # (both rounded to the source's bf16: 2^-8 each)
                assert np.allclose(t[r], src[r] * s, rtol=2 ** -7,
                                   atol=1e-6), (arch, r)
            q = json.load(open(os.path.join(v, "quantization.json")))
            assert not any(k["name"].endswith("%s.weight" % router)
                           for k in q["kept_in_source_dtype"]), q
            assert q["awq"]["changed_in_source_dtype"] == [
                "model.layers.%d.%s.weight" % (l, n) for l in range(2)
                for n in ("post_attention_layernorm", router)], q["awq"]
            cfg = json.load(open(os.path.join(v, "config.json")))
            assert cfg["quantization_config"]["modules_to_not_convert"] == [
                "model.layers.%d.%s" % (l, router) for l in range(2)], cfg
            ex = [g for g in q["layers"] if ".experts." in g["name"]]
            assert all(0 <= g["alpha"] < 1 for g in ex), ex
            # every token reaches top-k = 2 experts in each layer
            assert sum(g["routed_tokens"] for g in ex) == 2 * 3 * 512 * 2
            rel = float(np.abs(ours(v, ids) - ref_logits_w(d, w, ids)).max())
            rel /= float(np.abs(ref_logits_w(d, w, ids)).max())
            print("  %s awq_w4_g128 vs oracle on its dequantized tensors: "
                  "max rel diff %.2e" % (arch, rel))
            assert rel < 1e-4, rel
            sm = sample(d)
            kl = {x: mean_kl(d, os.path.join(m.mnt, arch, x), sm)
                  for x in ("awq_w4_g128", "rtn_w4_g128")}
            print("  %s mean KL(source || variant): awq %.2e, rtn %.2e" % (
                arch, kl["awq_w4_g128"], kl["rtn_w4_g128"]))
            assert kl["awq_w4_g128"] < kl["rtn_w4_g128"], kl


def test_brecq_experts():
    """BRECQ of a MoE block: every expert's linears packed under the
    source's names (routers kept), the routed tokens counted, closer to
    the source than RTN w4 g64."""
    text = TEXT * 4
    cal = os.path.join(WORK, "calib.txt")
    open(cal, "w").write(text)
    opts = ["calib=" + cal, "calib_n=4", "calib_len=64"]
    with Mount(src_dir(), opts=opts) as m:
        arch = "qwen3_moe"
        d = model(arch)
        v = os.path.join(m.mnt, arch, "brecq_w4_g64_attn6")
        t, _ = stread.read_st(os.path.join(v, "model.safetensors"))
        router, ex = ref_moe.NAMES[arch][:2]
        for l in range(2):
            for e in range(8):
                for n in ref_moe.NAMES[arch][2:]:
                    p = "model.layers.%d.%s.%d.%s" % (l, ex, e, n)
                    assert p + ".weight" not in t and p + ".qweight" in t, p
            r = "model.layers.%d.%s.weight" % (l, router)
            assert r in t and r[:-7] + ".qweight" not in t, r
        q = json.load(open(os.path.join(v, "quantization.json")))
        ex = [g for g in q["layers"] if ".experts." in g["name"]]
        # every token reaches top-k = 2 experts in each layer
        assert sum(g["routed_tokens"] for g in ex) == 2 * 3 * 256 * 2, ex
        sm = sample(d)
        kl = {x: mean_kl(d, os.path.join(m.mnt, arch, x), sm)
              for x in ("brecq_w4_g64_attn6", "rtn_w4_g64")}
        print("  %s mean KL(source || variant): brecq %.2e, rtn w4 g64 "
              "%.2e" % (arch, kl["brecq_w4_g64_attn6"], kl["rtn_w4_g64"]))
        assert kl["brecq_w4_g64_attn6"] < kl["rtn_w4_g64"], kl


def test_sampled_calibration():
    """Data-free calibration samples from the model with a KV-cached
    decoder of its own (calib/sample.c): with lm_head scaled by 1e4 the
    sampling is greedy, so the set's token hash in quantization.json is
    that of the oracle's greedy continuation of BOS."""
    src = os.path.join(WORK, "sharp")
    os.makedirs(src)
    for arch in ARCHES:
        d = os.path.join(src, arch)
        if arch == "olmoe":     # also GQA and clip_qkv in the decoder
            shutil.copytree(model(arch, "_gqa", kv_heads=2), d)
            edit_config(d, clip_qkv=0.5)
        else:
            shutil.copytree(model(arch), d)
        t, _ = stread.read_st(os.path.join(d, "model.safetensors"))
        t["lm_head.weight"] = t["lm_head.weight"] * 1e4
        stread.write_st(os.path.join(d, "model.safetensors"), {
            k: ("F32", list(v.shape), np.ascontiguousarray(
                v, dtype=np.float32).tobytes()) for k, v in t.items()})
    with Mount(src, opts=["calib_n=2", "calib_len=16"]) as m:
        for arch in ARCHES:
            ids = [1]
            for _ in range(15):
                lg = ref_moe.logits(os.path.join(src, arch), [ids])
                ids.append(int(np.argmax(lg[-1])))
            h = hashlib.sha256(b"quantfs-calib-v1\0" +
                               struct.pack("<II", 2, 16) +
                               np.array(ids * 2, dtype="<u4").tobytes())
            q = json.load(open(os.path.join(m.mnt, arch, "gptq_w4_g128",
                                            "quantization.json")))
            print("  %s sampled calibration: %s" % (arch, ids))
            assert q["calibration"]["token_hash"] == h.hexdigest(), arch


def test_gguf():
    """llama.cpp on original/model.gguf (qwen3moe, llama with experts,
    olmoe, qwen2moe): its next-token distributions against quantfs's; on
    a Q4_0 view (gptq_w4_g32_sym, experts repacked; two families, for
    time) its perplexity against `quantfs eval` of the same weights (an
    RTN view is ggml's own grid, not the checkpoint's: ggml_fit.c)."""
    need_client()
    ids = ids_for(512, 1, 32, seed=11)[0]
    with Mount(src_dir()) as m:
        for arch in ARCHES:
            d = os.path.join(m.mnt, arch)
            gguf = os.path.join(d, "original", "model.gguf")
            # llama.cpp's f16 KV cache moves the router's inputs by
            # ~1e-3: a token whose 2nd and 3rd experts are that close
            # swaps them (a small weight, with the generated routers)
            out = check_gguf_probs(gguf, model(arch), ids, tol=1e-2,
                                   label=arch)
            assert out.get("arch") in (None, GGUF_ARCH[arch]), out
            if arch in ("mixtral", "qwen2_moe"):
                check_gguf_ppl(d, "gptq_w4_g32_sym", label=arch)


def test_mixed():
    """mixed_b4.5 of qwen3_moe: the measured allocation covers every
    expert's linears (one width per layer for the experts' gate/up and one
    for their down, as for a dense MLP), their stored bytes within the
    budget; mixed_dyn is served too."""
    cal = os.path.join(WORK, "calib_mx.txt")
    open(cal, "w").write(TEXT * 4)
    opts = ["calib=" + cal, "calib_n=8", "calib_len=64"]
    with Mount(src_dir(), opts=opts) as m:
        d = os.path.join(m.mnt, "qwen3_moe")
        src, _ = stread.read_st(os.path.join(model("qwen3_moe"),
                                             "model.safetensors"))
        v = os.path.join(d, "mixed_b4.5")
        q = json.load(open(os.path.join(v, "quantization.json")))
        a = q["allocation"]
        t, _ = stread.read_st(os.path.join(v, "model.safetensors"))
        bits = {g["name"]: g["bits"] for g in q["layers"]}
        stored = params = nex = 0
        for n, w in src.items():        # every linear, experts' included
            if not n.endswith("_proj.weight"):
                continue
            params += w.size
            nex += ".experts." in n
            if n in bits:
                pre = n[:-7]
                stored += sum(t[pre + x].nbytes for x in (
                    ".qweight", ".qzeros", ".scales", ".g_idx"))
            else:                       # kept at 16: as stored
                assert np.array_equal(t[n], w), n
                stored += t[n].nbytes
        assert nex == 2 * 8 * 3, nex
        for l in range(2):
            for k in ("gate_proj", "up_proj", "down_proj"):
                b = {bits.get("model.layers.%d.mlp.experts.%d.%s.weight"
                              % (l, e, k), 16) for e in range(8)}
                assert len(b) == 1, (l, k, b)
        print("  qwen3_moe mixed_b4.5: unit bits %s, %d bytes stored of "
              "%d budget (%d params)" % (a["unit_bits"], stored,
                                         a["budget_bytes"], params))
        assert a["budget_bytes"] == int(4.5 * params / 8), (a, params)
        assert stored <= a["budget_bytes"], (stored, a)
        qd = json.load(open(os.path.join(d, "mixed_dyn",
                                         "quantization.json")))
        assert qd["allocation"]["policy"] == "ratio", qd["allocation"]
        ev = eval_json(v, TEXT, ctx=64)
        assert ev["ppl"] > 0


def test_kq():
    """kq4_k_m of a qwen3_moe model wide enough for Q4_K (256): the 3-D
    expert tensors Q4_K (ffn_down_exps Q6_K on llama.cpp's use_more_bits
    layer), encoded expert by expert with each expert's importance from
    the tokens routed to it; llama.cpp loads it, its perplexity near the
    source's."""
    need_client()
    src = os.path.join(WORK, "kqsrc")
    d = os.path.join(src, "qwen3_moe")
    os.makedirs(src)
    mkmodel(d, "--arch", "qwen3_moe", "--seed", 5, "--hidden", 256,
            "--inter", 512, "--layers", 2, "--heads", 4, "--kv-heads", 2,
            "--vocab", 512, "--experts", 8, "--topk", 2, "--moe-inter", 256)
    cal = os.path.join(WORK, "calib_kq.txt")
    open(cal, "w").write(TEXT * 4)
    opts = ["calib=" + cal, "calib_n=8", "calib_len=64"]
    with Mount(src, opts=opts) as m:
        md = os.path.join(m.mnt, "qwen3_moe")
        assert {"kq4_k_m", "mixed_static"} <= set(os.listdir(md))
        kq = os.path.join(md, "kq4_k_m", "model.gguf")
        g = ggufnp.File(kq)
        assert g.kv["general.file_type"] == 15
        ty = {n: t for n, (t, _, _) in g.tensors.items()}
        assert ty["blk.0.ffn_gate_exps.weight"] == 12, ty
        assert ty["blk.0.ffn_down_exps.weight"] == 12, ty
        assert ty["blk.1.ffn_down_exps.weight"] == 14, ty
        # expert e's slice is expert e's, closer than Q4_0's (rtn view)
        t, _ = stread.read_st(os.path.join(d, "model.safetensors"))
        w = g.decode("blk.1.ffn_up_exps.weight")
        w0 = ggufnp.File(os.path.join(md, "rtn_w4_g32_sym", "model.gguf")
                         ).decode("blk.1.ffn_up_exps.weight")
        for e in range(8):
            s = t["model.layers.1.mlp.experts.%d.up_proj.weight" % e]
            rel, rel0 = (np.linalg.norm(x[e] - s) / np.linalg.norm(s)
                         for x in (w, w0))
            assert rel < rel0 < 0.2, (e, rel, rel0)
        # llama.cpp on kq4_k_m against `quantfs eval` of the source on
        # the same windows (test_gguf: llama.cpp agrees with eval there)
        idf = os.path.join(WORK, "ids_kq.json")
        ev = eval_json(os.path.join(md, "original"), TEXT[:250], 64, idf)
        out = client(kq, {"prompt": TEXT[:40], "n": 1,
                          "windows": windows(idf, 64)})
        assert out["tokens"] == ev["tokens"], (out, ev)
        ppl = {"original": ev["ppl"], "kq4_k_m": float(np.exp(out["nll"]))}
        print("  qwen3_moe ppl: original (quantfs eval) %(original).3f, "
              "kq4_k_m (llama.cpp) %(kq4_k_m).3f" % ppl)
        # (a random model: 4-bit noise moves its ppl by several %)
        assert abs(ppl["kq4_k_m"] / ppl["original"] - 1) < 0.12, ppl
        # `quantfs report` decodes the view, expert by expert, and
        # measures it on the same windows as llama.cpp did
        rp = os.path.join(WORK, "report_kq")
        open(rp + ".txt", "w").write(TEXT[:250])
        r = qf("report", md, "--text", rp + ".txt", "--variants",
               "kq4_k_m", "--ctx", 64, "-o", rp + ".md", "--cache",
               rp + ".cache")
        row = json.load(open(rp + ".json"))["variants"][0]
        print("  qwen3_moe kq4_k_m: quantfs report ppl %s" %
              row["perplexity"])
        assert not row["error"], (row, r.stderr)
        assert abs(row["perplexity"] / ppl["kq4_k_m"] - 1) < 0.02, \
            (row["perplexity"], ppl)


if __name__ == "__main__":
    try:
        run_tests(globals(), needs_fuse=True)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
