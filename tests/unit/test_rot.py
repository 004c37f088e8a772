"""The rotated model of the `_rot` variants against a float64 numpy oracle.

usage: test_rot.py QUANTFS FORWARD_REF_PY
For small generated fp32 models (llama, qwen2 with q/k/v biases, qwen3 with
q/k norms and tied embeddings, a llama of width 96 = 32 x 3 for the
Hadamard x DCT construction, and mkmodel's own llama), `quantfs rotate`
writes the rotated model; this test
  - builds the rotation itself from the construction documented in
    quant/method/rot.h (its own splitmix64, Sylvester Hadamard by
    Kronecker powers, DCT-II by formula), checks it is orthogonal, folds
    and rotates the source weights in float64 and compares every tensor
    of the rotated model to it (fp32 rounding only);
  - runs forward_ref.py's float64 forward on both models: logits within
    1e-4 (the same function);
  - checks the rotated model is the plain architecture: the same tensor
    names (lm_head added, tie_word_embeddings false, for a tied model),
    shapes and dtypes, norms all ones;
  - and that an architecture whose norms cannot be folded (gemma2's
    sandwich norms) is refused with a clear error.
Prints 'N passed, N failed'.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

QUANTFS, FREF = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("forward_ref", FREF)
fref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fref)

SEED = 0x5EED
M64 = (1 << 64) - 1
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print("%s %s %s" % ("ok  " if ok else "FAIL", name, detail))


def signs(n, seed):
    out = np.empty(n)
    s = seed
    for i in range(n):
        s = (s + 0x9E3779B97F4A7C15) & M64
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z ^= z >> 31
        out[i] = -1.0 if z >> 63 else 1.0
    return out


def rotation(n, seed):
    p = 1
    while n % (2 * p) == 0:
        p *= 2
    m = n // p
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    k = np.arange(m)[:, None]
    j = np.arange(m)[None, :]
    c = np.sqrt(2.0 / m) * np.cos(np.pi * (2 * j + 1) * k / (2 * m))
    c[0] /= np.sqrt(2.0)
    return signs(n, seed)[:, None] * np.kron(h / np.sqrt(p), c)


def oracle(w, cfg):
    """The rotated model's tensors from the source's, in float64."""
    hdim = cfg["hidden_size"]
    hd = cfg.get("head_dim") or hdim // cfg["num_attention_heads"]
    q = rotation(hdim, SEED)
    r = rotation(hd, SEED + 1)
    out = {}
    gf = w["model.norm.weight"]
    out["model.embed_tokens.weight"] = w["model.embed_tokens.weight"] @ q
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    out["lm_head.weight"] = (head * gf) @ q
    out["model.norm.weight"] = np.ones(hdim)
    for name, t in w.items():
        if not name.startswith("model.layers."):
            continue
        pre = ".".join(name.split(".")[:3]) + "."
        rest = name[len(pre):]
        gi = w[pre + "input_layernorm.weight"]
        gp = w[pre + "post_attention_layernorm.weight"]
        if rest.endswith("layernorm.weight"):
            t = np.ones(hdim)
        elif rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
            t = (t * gi) @ q
        elif rest == "self_attn.v_proj.weight":
            t = (t * gi) @ q
            t = np.concatenate([r.T @ b for b in np.split(t, len(t) // hd)])
        elif rest == "self_attn.v_proj.bias":
            t = np.concatenate([b @ r for b in np.split(t, len(t) // hd)])
        elif rest == "self_attn.o_proj.weight":
            cols = np.split(t, t.shape[1] // hd, axis=1)
            t = q.T @ np.concatenate([b @ r for b in cols], axis=1)
        elif rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            t = (t * gp) @ q
        elif rest == "mlp.down_proj.weight":
            t = q.T @ t
        out[name] = t
    return out, q, r


def logits(d, ids):
    m = fref.Model(d)
    return np.concatenate([m.sequence(s, {}) for s in ids])


def one(tmp, label, src, tied):
    rot = os.path.join(tmp, label + "-rot")
    subprocess.run([QUANTFS, "rotate", src, rot], check=True)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(rot, "config.json")) as f:
        rcfg = json.load(f)
    w = fref.read_safetensors(os.path.join(src, "model.safetensors"))
    rw = fref.read_safetensors(os.path.join(rot, "model.safetensors"))
    want, q, r = oracle(w, cfg)
    eye = np.eye(len(q))
    check(label + " Q orthogonal", np.abs(q @ q.T - eye).max() < 1e-12)
    check(label + " R orthogonal",
          np.abs(r @ r.T - np.eye(len(r))).max() < 1e-12)
    names = set(w) | ({"lm_head.weight"} if tied else set())
    check(label + " tensor names", set(rw) == names,
          str(sorted(set(rw) ^ names)))
    check(label + " shapes", all(rw[n].shape == want[n].shape for n in rw))
    check(label + " tie_word_embeddings false",
          rcfg.get("tie_word_embeddings") is False and
          {k: v for k, v in rcfg.items() if k != "tie_word_embeddings"} ==
          {k: v for k, v in cfg.items() if k != "tie_word_embeddings"})
    err = max(np.abs(rw[n] - want[n]).max() / (np.abs(want[n]).max() + 1e-30)
              for n in rw)
    check(label + " tensors = numpy rotation", err < 1e-5, "rel %.2e" % err)
    rng = np.random.default_rng(7)
    ids = rng.integers(0, cfg["vocab_size"], size=(2, 12))
    a, b = logits(src, ids), logits(rot, ids)
    d = np.abs(a - b).max()
    check(label + " same function", d < 1e-4, "max |dlogit| %.2e" % d)
    # not trivially equal: the weights did change
    check(label + " weights changed",
          np.abs(rw["model.layers.0.mlp.down_proj.weight"] -
                 w["model.layers.0.mlp.down_proj.weight"]).max() > 1e-2)


def main():
    with tempfile.TemporaryDirectory(prefix="qf-rot-") as tmp:
        for kind in ("llama", "qwen2", "qwen3"):
            src = os.path.join(tmp, kind)
            fref.gen(src, kind, "F32", 3)
            one(tmp, kind, src, fref.KINDS[kind]["tie_word_embeddings"])
        src = os.path.join(tmp, "w96")
        subprocess.run([QUANTFS, "mkmodel", src, "--dtype", "f32",
                        "--hidden", "96", "--heads", "3", "--kv-heads", "1",
                        "--layers", "2", "--vocab", "300", "--tie"],
                       check=True)
        one(tmp, "mkmodel-w96-tied", src, True)
        src = os.path.join(tmp, "gemma2")
        subprocess.run([QUANTFS, "mkmodel", src, "--arch", "gemma2",
                        "--dtype", "f32"], check=True)
        p = subprocess.run([QUANTFS, "rotate", src,
                            os.path.join(tmp, "gemma2-rot")],
                           capture_output=True, text=True)
        check("gemma2 refused", p.returncode == 1 and
              "cannot be folded" in p.stderr, p.stderr.strip()[-200:])
    bad = results.count(False)
    print("%d passed, %d failed" % (len(results) - bad, bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
