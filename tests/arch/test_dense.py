#!/usr/bin/python3
"""test_dense.py - `quantfs mkmodel --arch` for the dense Llama-layout rows
(llama, mistral, qwen2 with its q/k/v biases, qwen3 with its q/k norms):
the generated model loads and quantfs's logits equal the float64 numpy
oracle of test_forward (tests/unit/forward_ref.py), which knows these
four families and shares no code with quantfs.
"""
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import archtest as at  # noqa: E402

REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "unit",
                   "forward_ref.py")


def ref_logits(model_dir, ids):
    """forward_ref.py ref: float64 logits [n, vocab]."""
    fi = os.path.join(at.WORK, "ref_ids.i32")
    out = os.path.join(at.WORK, "ref")
    np.ascontiguousarray(ids, dtype="<i4").tofile(fi)
    subprocess.run([sys.executable, REF, "ref", model_dir, fi,
                    str(ids.shape[0]), str(ids.shape[1]), out], check=True)
    vocab = at.json.load(open(os.path.join(model_dir, "config.json")))[
        "vocab_size"]
    return np.fromfile(out + ".logits", dtype="<f8").reshape(-1, vocab)


def test_generated_rows_match_oracle():
    for arch in ("llama", "mistral", "qwen2", "qwen3"):
        d = at.mkmodel(os.path.join(at.WORK, arch), "--arch", arch,
                       "--layers", 2, "--hidden", 64, "--inter", 128,
                       "--heads", 4, "--kv-heads", 2, "--dtype", "f32")
        cfg = at.json.load(open(os.path.join(d, "config.json")))
        assert cfg["model_type"] == arch, cfg
        at.check_logits(d, ref_logits, at.ids_for(512, 2, 24), label=arch)


if __name__ == "__main__":
    try:
        at.run_tests(globals(), needs_fuse=False)
    finally:
        at.shutil.rmtree(at.WORK, ignore_errors=True)
