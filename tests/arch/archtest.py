"""archtest.py - the end-to-end harness of the per-architecture tests.

Each family's test (tests/arch/test_<family>.py) generates a small model
with `quantfs mkmodel --arch <model_type>` and checks, through this module:

  * quantfs's forward (logits_cli: qf_tf_logits) against the family's
    float64 numpy oracle (tests/arch/ref_<family>.py, written from the
    transformers modeling code, sharing nothing with quantfs's C);
  * a real mount serving the model's variants;
  * llama.cpp (node-llama-cpp's CPU build, tests/node) loading model.gguf
    from the mount: its next-token distributions on the source-precision
    view against quantfs's, and its perplexity on a quantized view against
    `quantfs eval` of the same files.

numpy only.  Environment: QUANTFS, QF_LOGITS_CLI (meson sets both).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "mount"))
import stread  # noqa: E402,F401  (re-exported for the oracles)
from qftest import Mount, mkmodel, run_tests, qf, QUANTFS, SkipTest, sha, \
    gguf_client, eval_windows, need_client  # noqa: E402,F401

LOGITS_CLI = os.environ.get("QF_LOGITS_CLI", os.path.join(
    os.path.dirname(QUANTFS), "..", "tests", "logits_cli"))
WORK = tempfile.mkdtemp(prefix="qfarch.")

TEXT = ("Once upon a time, there was a little girl named Lily. She loved "
        "to play outside in the park with her friends. One day, she saw a "
        "big red ball under a tree. \"Can I play with it?\" she asked her "
        "mom. Her mom smiled and said yes, so Lily ran and kicked the ball "
        "as far as she could. The ball flew over the fence and into the "
        "garden next door, where an old man was watering his flowers. ")


def with_config(src, name, **keys):
    """A copy of model directory src as WORK/name with config.json keys
    replaced (None: removed)."""
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(src, d)
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    for k, v in keys.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(p, "w"), indent=1)
    return d


def ids_for(vocab, nseq, seqlen, seed=1):
    """Random token ids [nseq, seqlen] (int32) below vocab."""
    return np.random.default_rng(seed).integers(
        0, vocab, size=(nseq, seqlen)).astype(np.int32)


def ours(model_dir, ids):
    """quantfs's logits [nseq * seqlen, vocab] (float32) for ids."""
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    fi, fo = os.path.join(WORK, "ids.i32"), os.path.join(WORK, "out.f32")
    ids.tofile(fi)
    r = subprocess.run([LOGITS_CLI, model_dir, fi, str(ids.shape[0]),
                        str(ids.shape[1]), fo], capture_output=True,
                       text=True)
    assert r.returncode == 0, ("logits_cli", r.returncode, r.stderr)
    out = np.fromfile(fo, dtype=np.float32)
    return out.reshape(ids.size, -1)


def check_logits(model_dir, ref_logits, ids, tol=1e-4, label=""):
    """quantfs's logits against ref_logits(model_dir, ids) -> float64
    [nseq * seqlen, vocab]: max |diff| / max |ref| below tol."""
    a = ours(model_dir, ids).astype(np.float64)
    b = np.asarray(ref_logits(model_dir, ids), dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    rel = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
    print("  %s logits vs numpy float64: max rel diff %.2e (tol %.0e)" % (
        label or os.path.basename(model_dir), rel, tol))
    assert rel < tol, rel
    return rel


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


client = gguf_client


def check_gguf_probs(gguf, model_dir, ids, tol=2e-3, label=""):
    """llama.cpp's next-token distributions over one window (ids, 1-D)
    against softmax of quantfs's logits on model_dir: max |p - q|."""
    need_client()
    ids = [int(t) for t in ids]
    out = client(gguf, {"prompt": "", "n": 1, "windows": [ids],
                        "probs": True})
    p = np.array(out["probs"], dtype=np.float64)
    q = softmax(ours(model_dir, np.array([ids], dtype=np.int32)))[:-1]
    assert p.shape == q.shape, (p.shape, q.shape)
    d = float(np.abs(p - q).max())
    kl = float(np.mean(np.sum(q * (np.log(np.maximum(q, 1e-30)) -
                                   np.log(np.maximum(p, 1e-30))), axis=1)))
    print("  %s llama.cpp (%s) vs quantfs: max |dp| %.2e, mean KL %.2e "
          "over %d positions" % (label, out.get("arch"), d, kl, len(p)))
    assert d < tol, d
    return out


def eval_json(variant_dir, text, ctx=128, ids_out=None):
    """`quantfs eval DIR --text ... --json` of variant_dir."""
    tf = os.path.join(WORK, "text.txt")
    open(tf, "w").write(text)
    args = [QUANTFS, "eval", variant_dir, "--text", tf, "--ctx", str(ctx),
            "--json"] + (["--ids-out", ids_out] if ids_out else [])
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, (args, r.stderr)
    return json.loads(r.stdout)


windows = eval_windows


def check_gguf_ppl(model_mnt, variant, text=TEXT, ctx=128, tol=0.01,
                   label=""):
    """llama.cpp's perplexity on VARIANT/model.gguf against `quantfs eval`
    of the same variant over the same token windows: relative gap < tol."""
    need_client()
    idf = os.path.join(WORK, "ids.json")
    ev = eval_json(os.path.join(model_mnt, variant), text, ctx, idf)
    out = client(os.path.join(model_mnt, variant, "model.gguf"),
                 {"prompt": text[:40], "n": 2, "windows": windows(idf, ctx)})
    assert out["tokens"] == ev["tokens"], (out["tokens"], ev["tokens"])
    ppl = float(np.exp(out["nll"]))
    rel = abs(ppl - ev["ppl"]) / ev["ppl"]
    print("  %s %s: llama.cpp ppl %.4f, quantfs eval %.4f (%.3f %%)" % (
        label, variant, ppl, ev["ppl"], 100 * rel))
    assert rel < tol, (ppl, ev["ppl"])
    return ppl, ev["ppl"]
