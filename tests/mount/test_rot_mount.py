"""`_rot` variants on a real FUSE mount (tests/unit/test_rot.py checks the
rotation itself against numpy).

A small generated Llama with tied embeddings: gptq_w4_g32_sym_rot's
checkpoint is the plain architecture (the tensor names of
gptq_w4_g32_sym plus its own lm_head.weight, tie_word_embeddings false,
final norm all ones, config otherwise the source's) and quantization.json
records the rotation, and GPTQ's `_rot` runs with act-order (desc_act,
a g_idx that is not the consecutive groups); at 8 bits the rotated
variant's log-likelihood is the source's (the rotation keeps the
function); gptq_w4_g32_static_sym_rot's model.gguf (static groups:
consecutive columns) loads in llama.cpp (node-llama-cpp) with perplexity
within 3 % of `quantfs eval` on the same windows, and the dynamic groups
of gptq_w4_g32_sym_rot have none.  gemma2, whose sandwich norms cannot be folded, has no
`_rot` variant and says why.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from qftest import Mount, mkmodel, run_tests, QUANTFS, \
    SkipTest, gguf_client, eval_windows, need_client  # noqa: E402

QUANTFS = os.environ.get("QUANTFS", QUANTFS)
WORK = tempfile.mkdtemp(prefix="qfrot.")
SRC = os.path.join(WORK, "models")
mkmodel(os.path.join(SRC, "tiny"), "--layers", 2, "--hidden", 64,
        "--inter", 128, "--heads", 4, "--kv-heads", 2, "--tie",
        "--seed", 5)
mkmodel(os.path.join(SRC, "gem"), "--arch", "gemma2", "--layers", 2)
SMALL = ["calib_n=8", "calib_len=64"]
TEXT = ("Once upon a time, there was a little girl named Lily. She loved "
        "to play outside in the park with her dog. One day, she saw a big "
        "red ball under a tree. ") * 12


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h, 8 + n


def tensor_raw(path, name, dtype):
    h, base = header(path)
    t = h[name]
    a, b = t["data_offsets"]
    with open(path, "rb") as f:
        f.seek(base + a)
        raw = f.read(b - a)
    assert t["dtype"] == dtype, (name, t["dtype"])
    return raw


def tensor_f32(path, name):
    raw = tensor_raw(path, name, "BF16")
    u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return u.view(np.float32)


def tensor_i32(path, name):
    return np.frombuffer(tensor_raw(path, name, "I32"), dtype="<i4")


def ev(d, variant, ids_out=None):
    tf = os.path.join(WORK, "text.txt")
    open(tf, "w").write(TEXT)
    cmd = [QUANTFS, "eval", os.path.join(d, variant), "--text", tf,
           "--ctx", "128", "--json"]
    if ids_out:
        cmd += ["--ids-out", ids_out]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True,
                                     check=True).stdout)


def test_rot_checkpoint_plain_llama():
    with Mount(SRC, opts=SMALL) as m:
        d = os.path.join(m.mnt, "tiny")
        rot = os.path.join(d, "gptq_w4_g32_sym_rot")
        plain = os.path.join(d, "gptq_w4_g32_sym")
        src_cfg = json.load(open(os.path.join(d, "original", "config.json")))
        cfg = json.load(open(os.path.join(rot, "config.json")))
        assert src_cfg["tie_word_embeddings"] is True
        assert cfg["tie_word_embeddings"] is False
        assert cfg["quantization_config"]["bits"] == 4
        for k, v in src_cfg.items():
            if k != "tie_word_embeddings":
                assert cfg[k] == v, k
        hr, _ = header(os.path.join(rot, "model.safetensors"))
        hp, _ = header(os.path.join(plain, "model.safetensors"))
        assert set(hr) == set(hp) | {"lm_head.weight"}, \
            sorted(set(hr) ^ set(hp))
        for n in hp:
            assert hr[n]["shape"] == hp[n]["shape"], n
        assert hr["lm_head.weight"]["shape"] == \
            hr["model.embed_tokens.weight"]["shape"]
        st = os.path.join(rot, "model.safetensors")
        assert (tensor_f32(st, "model.norm.weight") == 1.0).all()
        assert (tensor_f32(st, "model.layers.1.input_layernorm.weight")
                == 1.0).all()
        q = json.load(open(os.path.join(rot, "quantization.json")))
        assert q["rotation"]["seed"] == 0x5EED, q["rotation"]
        assert q["rotation"]["construction"].startswith(
            "randomized-hadamard"), q["rotation"]
        # act-order: desc_act, and some column outside its consecutive
        # group (the 64 inputs of q_proj in 2 groups of 32)
        assert cfg["quantization_config"]["desc_act"] is True
        plain_cfg = json.load(open(os.path.join(plain, "config.json")))
        assert plain_cfg["quantization_config"]["desc_act"] is False
        gi = tensor_i32(st, "model.layers.0.self_attn.q_proj.g_idx")
        assert (gi != np.arange(64) // 32).any(), gi
        assert (tensor_i32(os.path.join(plain, "model.safetensors"),
                           "model.layers.0.self_attn.q_proj.g_idx")
                == np.arange(64) // 32).all()
        assert not os.path.exists(os.path.join(rot, "model.gguf"))
        assert "rotation" not in json.load(
            open(os.path.join(plain, "quantization.json")))
        # the rotation keeps the function: 8 bits rotated ~ the source
        # (mean log-likelihoods: a random model's perplexity is huge)
        n0 = ev(d, "original")["nll"]
        n8 = ev(d, "rtn_w8_gc_rot")["nll"]
        print("  nll original %.4f, rtn_w8_gc_rot %.4f" % (n0, n8))
        assert abs(n8 - n0) < 0.005 * n0, (n0, n8)
        # llama.cpp runs the rotated checkpoint as a plain llama
        try:
            need_client()
        except SkipTest as e:
            print("  (llama.cpp part skipped: %s)" % e)
            return
        idf = os.path.join(WORK, "ids.json")
        e = ev(d, "gptq_w4_g32_static_sym_rot", idf)
        out = gguf_client(os.path.join(d, "gptq_w4_g32_static_sym_rot",
                                       "model.gguf"),
                          {"prompt": TEXT[:80], "n": 4,
                           "windows": eval_windows(idf, 128)})
        assert out["tokens"] == e["tokens"], (out["tokens"], e["tokens"])
        ppl_l = float(np.exp(out["nll"]))
        print("  gptq_w4_g32_static_sym_rot: llama.cpp ppl %.4f, quantfs eval "
              "%.4f" % (ppl_l, e["ppl"]))
        assert abs(ppl_l - e["ppl"]) / e["ppl"] < 0.03, (ppl_l, e["ppl"])


def test_rot_refused_sandwich_norms():
    with Mount(SRC, opts=SMALL) as m:
        d = os.path.join(m.mnt, "gem")
        try:
            os.stat(os.path.join(d, "rtn_w4_g128_rot"))
        except OSError:
            pass
        else:
            raise AssertionError("gemma2 has a _rot variant")
        os.stat(os.path.join(d, "rtn_w4_g128"))     # the plain one works
        assert "cannot be folded" in m.stderr(), m.stderr()[-2000:]


if __name__ == "__main__":
    run_tests(globals())
