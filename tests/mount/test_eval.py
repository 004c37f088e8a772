"""quantfs eval against independent figures, and on mounted variants.

- stories260K on text/tinystories/eval.txt: the float64 numpy baseline in
  shared/data/README.md (PPL 4.8207, 129,759 tokens, 254 windows).
- a packed rtn variant and its _fake twin hold the same weights, so their
  perplexities agree (the GPTQ tensors are dequantized on load).
- --json carries the same figures as the table.
- --kld-vs: the mean KL divergence from the source and the same-top-1
  share against a float64 numpy forward (tests/unit/forward_ref.py) of
  both models on every window; 0 and 100 % against itself.
"""
import json
import os
import subprocess
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
import forward_ref  # noqa: E402
from qftest import Mount, run_tests, SkipTest, SHARED, QUANTFS  # noqa: E402

DATA = os.path.join(SHARED, "data")
TEXT = os.path.join(DATA, "text", "tinystories", "eval.txt")


def qf_eval(d, *extra):
    r = subprocess.run([os.environ.get("QUANTFS", QUANTFS), "eval", d,
                        "--text", TEXT, "--json"] + list(extra),
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def need(path):
    if not os.path.exists(path):
        raise SkipTest("%s is absent" % path)


def test_stories260k_matches_numpy_baseline():
    model = os.path.join(DATA, "models", "stories260K")
    need(model)
    r = qf_eval(model)
    assert r["tokens"] == 129759 and r["windows"] == 254, r
    assert abs(r["ppl"] - 4.8207) / 4.8207 < 2e-4, r
    assert abs(r["nll"] - 1.572913) < 2e-4, r


def test_table_and_json_agree_and_errors():
    model = os.path.join(DATA, "models", "stories260K")
    need(model)
    t = subprocess.run([os.environ.get("QUANTFS", QUANTFS), "eval", model,
                        "--text", TEXT, "--ctx", "128"],
                       capture_output=True, text=True, timeout=600)
    assert t.returncode == 0, t.stderr
    j = qf_eval(model, "--ctx", "128")
    assert ("%.4f" % j["ppl"]) in t.stdout and str(j["tokens"]) in t.stdout
    assert j["windows"] == -(-129759 // 127)
    bad = subprocess.run([os.environ.get("QUANTFS", QUANTFS), "eval", model,
                          "--text", "/nonexistent"], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "cannot read" in bad.stderr


def test_generate_matches_llama2c():
    """Greedy text of stories260K equals llama2.c run.c's, byte for byte."""
    model = os.path.join(DATA, "models", "stories260K")
    ref = os.path.join(DATA, "reference", "stories260K_greedy.json")
    need(ref)
    want = json.load(open(ref))
    qf = os.environ.get("QUANTFS", QUANTFS)
    r = subprocess.run([qf, "generate", model, "--prompt", want["prompt"],
                        "-n", "200"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout[:-1] == want["run_c_text_output"], r.stdout[:200]
    r = subprocess.run([qf, "generate", model, "--prompt", want["prompt"],
                        "-n", "200", "--ids"], capture_output=True,
                       text=True, timeout=300)
    ids = [int(x) for x in r.stdout.split()]
    assert ids == want["prompt_ids_with_bos"] + want["greedy_new_ids"]


def test_generate_stops_at_generation_config_eos():
    """generation_config.json's eos_token_id list (Gemma 3: <eos> and
    <end_of_turn>) ends generation at any of its ids."""
    model = os.path.join(DATA, "models", "stories260K")
    ref = os.path.join(DATA, "reference", "stories260K_greedy.json")
    need(ref)
    want = json.load(open(ref))
    new = want["greedy_new_ids"]
    k = next(i for i in range(5, len(new)) if new[i] not in new[:i])
    d = tempfile.mkdtemp(prefix="qfgen.")
    try:
        for f in os.listdir(model):
            if f != "generation_config.json":
                os.symlink(os.path.join(model, f), os.path.join(d, f))
        with open(os.path.join(d, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": [2, new[k]]}, f)
        r = subprocess.run([os.environ.get("QUANTFS", QUANTFS), "generate",
                            d, "--prompt", want["prompt"], "-n", "200",
                            "--ids"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        ids = [int(x) for x in r.stdout.split()]
        assert ids == want["prompt_ids_with_bos"] + new[:k + 1], (k, ids)
    finally:
        shutil.rmtree(d)


def test_variants_through_the_mount():
    model = os.path.join(DATA, "models", "stories260K")
    need(model)
    with Mount(model) as m:
        base = os.path.join(m.mnt, "stories260K")
        packed = qf_eval(os.path.join(base, "rtn_w8_g32"), "--ctx", "256")
        fake = qf_eval(os.path.join(base, "rtn_w8_g32_fake"), "--ctx", "256")
        orig = qf_eval(os.path.join(base, "original"), "--ctx", "256")
        assert abs(packed["nll"] - fake["nll"]) < 1e-6, (packed, fake)
        assert packed["weight_bytes"] < orig["weight_bytes"]
        # 8-bit RTN of the attention linears barely moves perplexity
        assert abs(packed["ppl"] - orig["ppl"]) / orig["ppl"] < 0.01


def numpy_logp(d, bos, ids, ctx):
    """log-softmax rows of every predicting position, eval's windows."""
    model, out = forward_ref.Model(d), []
    for i in range(0, len(ids), ctx - 1):
        seq = np.array([bos] + ids[i:i + ctx - 1])
        z = model.sequence(seq, {})[:-1]
        z = z - z.max(-1, keepdims=True)
        out.append(z - np.log(np.exp(z).sum(-1, keepdims=True)))
    return np.concatenate(out)


def test_kld_vs_source_matches_numpy():
    model = os.path.join(DATA, "models", "stories260K")
    need(model)
    work = tempfile.mkdtemp(prefix="qfkld.")
    text, idf = os.path.join(work, "t.txt"), os.path.join(work, "ids.json")
    with open(TEXT, "rb") as f, open(text, "wb") as g:
        g.write(f.read(3000))
    try:
        with Mount(model) as m:
            base = os.path.join(m.mnt, "stories260K")
            var = os.path.join(base, "rtn_w3_g32_fake")
            q = os.environ.get("QUANTFS", QUANTFS)
            r = subprocess.run([q, "eval", var, "--text", text, "--ctx",
                                "64", "--json", "--kld-vs", model,
                                "--ids-out", idf], capture_output=True,
                               text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout)
            tok = json.load(open(idf))
            p = numpy_logp(model, tok["bos"], tok["ids"], 64)
            lq = numpy_logp(var, tok["bos"], tok["ids"], 64)
            kl = np.mean(np.sum(np.exp(p) * (p - lq), -1))
            top1 = np.mean(p.argmax(-1) == lq.argmax(-1))
            assert got["tokens"] == len(p) == len(tok["ids"]), got
            assert abs(got["kld"] - kl) <= 1e-3 * kl, (got["kld"], kl)
            assert abs(got["same_top1"] - top1) <= 2.0 / len(p), \
                (got["same_top1"], top1)
            assert 0.01 < kl and top1 < 0.99, (kl, top1)
            assert abs(got["ref_ppl"] - np.exp(-np.mean(
                p[np.arange(len(p)), tok["ids"]]))) < 1e-3
            print("  rtn_w3_g32 vs source: KLD %.6f (numpy %.6f), same "
                  "top-1 %.4f (numpy %.4f)" % (got["kld"], kl,
                                               got["same_top1"], top1))
            # against itself: nothing differs
            r = qf_eval(model, "--ctx", "64", "--kld-vs", model)
            assert r["kld"] == 0 and r["same_top1"] == 1, r
            # a reference of another width is refused
            bad = subprocess.run([q, "eval", model, "--text", text,
                                  "--kld-vs", other_model(work)],
                                 capture_output=True, text=True)
            assert bad.returncode == 1 and "differs" in bad.stderr, \
                bad.stderr
    finally:
        shutil.rmtree(work)


def other_model(work):
    """A model of another hidden width and vocabulary (mkmodel)."""
    d = os.path.join(work, "other")
    subprocess.run([os.environ.get("QUANTFS", QUANTFS), "mkmodel", d,
                    "--hidden", "32", "--inter", "64", "--layers", "1",
                    "--heads", "2", "--kv-heads", "1"], check=True,
                   capture_output=True)
    return d


if __name__ == "__main__":
    run_tests(globals())
