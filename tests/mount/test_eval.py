"""quantfs eval against independent figures, and on mounted variants.

- stories260K on text/tinystories/eval.txt: the float64 numpy baseline in
  shared/data/README.md (PPL 4.8207, 129,759 tokens, 254 windows).
- a packed rtn variant and its _fake twin hold the same weights, so their
  perplexities agree (the GPTQ tensors are dequantized on load).
- --json carries the same figures as the table.
"""
import json
import os
import subprocess
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
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


if __name__ == "__main__":
    run_tests(globals())
