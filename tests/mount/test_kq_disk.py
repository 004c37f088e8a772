"""The k-quant views' disk cost (issue #24 point 2): the calibration job
of kq4_k_m and of kq6_k runs GPTQ on llama.cpp's grids itself and stores
the encoded linears, never GPTQ's factor of a Hessian (4 in^2 bytes per
distinct linear input: 3.1 MB a layer of the 5M model, 60 MB at
Qwen3-0.6B's shapes), and the view serves those bytes.

On the real 5M TinyStories model, calibration 16 x 256 tokens of
tinystories/calib.txt, one mount reads both views:
  * each job's cache id (`quantfs cache ls --json`) holds at most a byte
    per weight of the dense linears and the head (Q6_K is 0.82, Q4_K
    0.56) plus its importance matrices, and less than a quarter of the
    factors it used to store (computed here from the model's shapes);
  * both views come from the same calibration set: every tensor both
    encode on the same type (attn_v / ffn_down in kq4_k_m's Q6_K layers,
    the F32 norms) has the same bytes in both (this model's head is not
    tied: kq4_k_m's output.weight is Q5_K, quantfs's rule, gguf_mix.c);
    their linears decode close to the source weights (relative error
    below 0.2 and 0.05: 0.13 and 0.03 at most here);
  * with the view's own tensors evicted (`quantfs cache rm` of its id)
    a read produces them again from the job's stored encodings: the same
    bytes, and the job does not run again.
And on a generated 6-layer model: a kq job killed (kill -9) after two
layers resumes where it stopped, and the view has the bytes of an
uninterrupted run (the layers before come from their stored encodings).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ggufnp  # noqa: E402
import stread  # noqa: E402
from qftest import Mount, run_tests, QUANTFS, SHARED, real_model, \
    mkmodel, sha  # noqa: E402

VIEWS = ("kq4_k_m", "kq6_k")
LIN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
       "down_proj")
Q5_K, Q6_K = 13, 14


def cache_ls(cache):
    out = subprocess.run([QUANTFS, "cache", "ls", "--json", "--cache",
                          cache], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_kq_job_stores_encodings_not_factors():
    base = os.path.join(SHARED, "data")
    model, cfg = real_model()
    src, _ = stread.read_st(os.path.join(model, "model.safetensors"))
    nl, hid = cfg["num_hidden_layers"], cfg["hidden_size"]
    lin = [n for n in src if n.startswith("model.layers.") and
           n.split(".")[-2] in LIN] + ["lm_head.weight"]
    params = sum(src[n].size for n in lin)
    # the factors v1 stored: q/k/v's input, o's, gate/up's, down's, head's
    factors = 4 * (nl * (3 * hid ** 2 + cfg["intermediate_size"] ** 2) +
                   hid ** 2)
    imatrix = 4 * nl * (5 * hid + cfg["intermediate_size"])
    calib = os.path.join(base, "text", "tinystories", "calib.txt")
    opts = ["calib=" + calib, "calib_n=16", "calib_len=256"]
    with Mount(os.path.join(base, "models"), opts=opts) as m:
        d = os.path.join(m.mnt, "tinystories-llama-5m")
        raw = {v: read(os.path.join(d, v, "model.gguf")) for v in VIEWS}
        assert "kq4_k_m: layer 1/" in open(m.log).read()
        ids = {e["variant"]: e for e in cache_ls(m.cache)}
        for v in VIEWS:
            job = ids[v]["bytes"]
            print("  %s: job %d bytes (%.3f per weight of %d; the factors "
                  "were %d), view %d" % (v, job, job / params, params,
                                         factors,
                                         ids[v + "/model.gguf"]["bytes"]))
            assert job <= params + imatrix + 64 * 1024, (v, job, params)
            assert job < factors / 4, (v, job, factors)

        g = {v: ggufnp.File(os.path.join(d, v, "model.gguf")) for v in VIEWS}
        same = 0
        for name, (t4, _, off4) in g["kq4_k_m"].tensors.items():
            t6, _, off6 = g["kq6_k"].tensors[name]
            if t4 != t6 or (t4 != Q6_K and not name.endswith("norm.weight")):
                continue
            n = g["kq4_k_m"].nbytes(name)
            assert raw["kq4_k_m"][off4:off4 + n] == \
                raw["kq6_k"][off6:off6 + n], name
            same += 1
        print("  %d tensors of equal type, equal bytes" % same)
        assert g["kq4_k_m"].tensors["output.weight"][0] == Q5_K
        assert same >= 2 * nl + 2, same
        for v in VIEWS:
            hf = ggufnp.to_hf(g[v])
            for name in lin:
                w = src[name].astype(np.float64)
                e = np.linalg.norm(hf[name] - w) / np.linalg.norm(w)
                assert e < (0.2 if v == "kq4_k_m" else 0.05), (v, name, e)

    # the view's tensors evicted: a fresh mount makes them again from
    # the job's bytes, without running the job's layers
    view = ids["kq4_k_m/model.gguf"]["id"]
    subprocess.run([QUANTFS, "cache", "rm", view[:16], "--cache", m.cache],
                   check=True, capture_output=True)
    assert "kq4_k_m/model.gguf" not in \
        {e["variant"] for e in cache_ls(m.cache)}
    with Mount(os.path.join(base, "models"), opts=opts,
               cache=m.cache) as m2:
        again = read(os.path.join(m2.mnt, "tinystories-llama-5m",
                                  "kq4_k_m", "model.gguf"))
        log = open(m2.log).read()
    assert again == raw["kq4_k_m"]
    assert "kq4_k_m/model.gguf ready" in log, log[-2000:]
    assert "kq4_k_m: layer 1/" not in log, log[-2000:]  # no layer ran
    shutil.rmtree(m.tmp, ignore_errors=True)
    shutil.rmtree(m2.tmp, ignore_errors=True)


def test_kq_kill9_resume_same_bytes():
    work = tempfile.mkdtemp(prefix="qf-kqdisk.")
    mkmodel(os.path.join(work, "m"), "--layers", 6, "--hidden", 512,
            "--inter", 1536, "--heads", 8, "--kv-heads", 2, "--seed", 5)
    opts = ["calib=" + os.path.join(SHARED, "data", "text", "tinystories",
                                    "calib.txt"), "calib_n=8", "calib_len=128"]
    p = "m/kq4_k_m/model.gguf"
    with Mount(work, opts=opts) as m0:
        want = sha(os.path.join(m0.mnt, p))
    cache = os.path.join(work, "cache")
    m = Mount(work, cache=cache, opts=opts)
    m.__enter__()
    reader = subprocess.Popen(["cat", os.path.join(m.mnt, p)],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while "kq4_k_m: layer 2/6 " not in m.stderr():
        assert time.time() < deadline and m.proc.poll() is None, m.stderr()
        time.sleep(0.02)
    m.kill9()
    reader.wait(timeout=30)
    done = m.stderr().count("/kq4_k_m: layer ")
    assert 2 <= done < 6, m.stderr()
    with Mount(work, cache=cache, opts=opts) as m2:
        assert sha(os.path.join(m2.mnt, p)) == want
        log = m2.stderr()
    assert "resuming at layer %d/6" % (done + 1) in log, log
    assert log.count("/kq4_k_m: layer ") == 6 - done, log
    for d in (work, m0.tmp, m.tmp, m2.tmp):
        shutil.rmtree(d, ignore_errors=True)


run_tests(globals())
