"""The k-quant views' GPTQ encoding (issue #24): kq4_k_m's and kq6_k's
Q4_K / Q6_K linears are GPTQ on llama.cpp's grids with each linear's
Hessian from the calibration job (fs/job_layer.c, quant/gguf/ggml_gptq.c).

Checked on the real 5M TinyStories model, calibration 16 x 256 tokens of
tinystories/calib.txt, against an oracle written here in float64 numpy:
layer 0's q, k, v inputs are the RMS-normed embeddings of held-out token
ids (the first 30,000 characters of tinystories/eval.txt and of
english/eval.txt, tokenized by `quantfs eval --ids-out`), H = X^T X; the served weights (read by ggufnp, q/k rows
un-permuted) give the output error tr(E H E^T), E = W_served - W_source,
which must be well below that of the same tensor rounded to nearest on
the same grid with the importance matrix diag(H) / n of that very text
(gguf_cli quant with IMP: the imatrix encoding, handed the held-out
text's statistics, not the calibration set's).  The views still load in
llama.cpp (node-llama-cpp).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ggufnp  # noqa: E402
import stread  # noqa: E402
from qftest import Mount, run_tests, QUANTFS, SHARED, SkipTest, \
    llama_reads  # noqa: E402

WORK = tempfile.mkdtemp(prefix="qf-kqgptq.")
CLI = os.path.join(os.path.dirname(os.path.dirname(QUANTFS)), "tests",
                   "gguf_cli")
TYPE = {12: "q4_k", 14: "q6_k"}
LIN = ("q_proj", "k_proj", "v_proj")


def layer0_input(src, cfg, ids):
    """X [n, hidden]: RMS-normed embeddings of ids, float64."""
    e = src["model.embed_tokens.weight"].astype(np.float64)[ids]
    g = src["model.layers.0.input_layernorm.weight"].astype(np.float64)
    r = np.sqrt(np.mean(e * e, axis=1, keepdims=True) +
                cfg.get("rms_norm_eps", 1e-6))
    return e / r * g


def rtn_imatrix(w, typ, imp, tag):
    """w encoded row by row on typ's grid with importance imp, decoded."""
    f_in, f_q, f_out, f_imp = (os.path.join(WORK, tag + s)
                               for s in (".f32", ".q", ".out", ".imp"))
    w.astype(np.float32).tofile(f_in)
    imp.astype(np.float32).tofile(f_imp)
    rows, cols = w.shape
    for cmd in (["quant", typ, rows, cols, f_in, f_q, f_imp],
                ["dequant", typ, rows, cols, f_q, f_out]):
        subprocess.run([CLI] + [str(c) for c in cmd], check=True)
    return np.fromfile(f_out, np.float32).astype(np.float64) \
        .reshape(rows, cols)


def err(e, h):
    return float(np.einsum("ij,jk,ik->", e, h, e))


def test_kq_gptq_beats_imatrix():
    base = os.path.join(SHARED, "data")
    model = os.path.join(base, "models", "tinystories-llama-5m")
    if not os.path.exists(model):
        raise SkipTest("../shared/data is absent")
    src, _ = stread.read_st(os.path.join(model, "model.safetensors"))
    cfg = json.load(open(os.path.join(model, "config.json")))
    calib = os.path.join(base, "text", "tinystories", "calib.txt")
    opts = ["calib=" + calib, "calib_n=16", "calib_len=256"]
    with Mount(os.path.join(base, "models"), opts=opts) as m:
        d = os.path.join(m.mnt, "tinystories-llama-5m")
        served = {}
        for v in ("kq4_k_m", "kq6_k"):
            g = ggufnp.File(os.path.join(d, v, "model.gguf"))
            served[v] = (g, ggufnp.to_hf(g))
        for text in ("tinystories", "english"):
            ev = os.path.join(WORK, text + ".txt")
            with open(os.path.join(base, "text", text, "eval.txt")) as f:
                open(ev, "w").write(f.read()[:30000])
            idf = os.path.join(WORK, text + ".ids.json")
            subprocess.run([QUANTFS, "eval", os.path.join(d, "original"),
                            "--text", ev, "--ids-out", idf, "--json"],
                           check=True, capture_output=True)
            ids = json.load(open(idf))["ids"][:8192]
            x = layer0_input(src, cfg, ids)
            h = x.T @ x
            imp = np.diag(h) / len(ids)
            for v, (g, hf) in served.items():
                for lin in LIN:
                    name = "model.layers.0.self_attn.%s.weight" % lin
                    gg = "blk.0.attn_%s.weight" % lin[0]
                    typ = TYPE[g.tensors[gg][0]]
                    w = src[name].astype(np.float64)
                    e_q = err(hf[name].astype(np.float64) - w, h)
                    e_i = err(rtn_imatrix(w, typ, imp, v + lin) - w, h)
                    print("  %s %s %s (%s): GPTQ %.4g vs imatrix %.4g "
                          "(%.2fx)" % (text, v, lin, typ, e_q, e_i,
                                       e_q / e_i))
                    assert e_q < 0.85 * e_i, (text, v, lin, e_q, e_i)
        # llama.cpp still loads both views and reads a token
        llama_reads([os.path.join(d, v, "model.gguf") for v in served])


try:
    run_tests(globals())
finally:
    shutil.rmtree(WORK, ignore_errors=True)
