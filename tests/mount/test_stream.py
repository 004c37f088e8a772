#!/usr/bin/python3
"""Streamed calibration (issue #23): the calibration tokens go through each
layer in chunks of sequences (-o calib_mem).  On the real 5M model, GPTQ
(true sequential: one pass per stage), AWQ (one pass for all statistics;
in chunks, down_proj first: a pass for its statistics, then one for the
six others', so its X^T X is not held beside theirs and the whole layer)
and BRECQ produced two sequences (512 tokens, the fewest) at a time give
the bytes they give in one chunk: X^T X is summed a sequence at a time in
both, and the forward's linears run in blocks of 512 rows (QF_TF_ROWS)
in both, so no row depends on the chunk whatever the BLAS kernels
(OpenBLAS's Haswell SGEMM rounds a row otherwise with the rows beside
it).  In chunks the layer input also lives in
a temporary file (more than a third of calib_mem), not in memory; so do
BRECQ's input and target, and its rounding state (V and the Adam
moments: more than half of calib_mem), streamed a block of rows at a
time.  The memory bound itself is asserted by test_calib (VmHWM against
the formula) and test_brecq_mem."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from qftest import Mount, run_tests, sha, SkipTest  # noqa: E402

SHARED = os.environ.get("QF_SHARED", os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared"))
DATA = os.path.join(SHARED, "data")


def test_chunked_equals_one_pass():
    models = os.path.join(DATA, "models")
    if not os.path.exists(os.path.join(models, "tinystories-llama-5m")):
        raise SkipTest("../shared/data is absent")
    base = ["calib=" + os.path.join(DATA, "text", "tinystories",
                                    "calib.txt"), "calib_n=16",
            "brecq_iters=20"]
    got = {}
    for chunk in ("", "6M"):
        opts = base + (["calib_mem=" + chunk] if chunk else [])
        with Mount(models, cache=tempfile.mkdtemp(prefix="qfsc."),
                   opts=opts) as m:
            for v in ("gptq_w4_g128", "awq_w4_g128", "brecq_w4_g64_attn6"):
                got[chunk, v] = sha(os.path.join(
                    m.mnt, "tinystories-llama-5m", v, "model.safetensors"))
            log = m.stderr()
        streamed = "16 calibration sequences in chunks of 2 " in log
        assert streamed == (chunk == "6M"), log
        # 16 x 256 tokens x 256 x 4 bytes = 4.2 MB > a third of 6M: the
        # layer input goes to a temporary file in the cache directory
        spilled = "in a temporary file of the cache directory" in log
        assert spilled == (chunk == "6M"), log
        # the 5M model's layer: 3.4 MB of fp32 weights and 3.1 MB of
        # X^T X, more than half of 6M: AWQ takes down_proj alone first
        # (its X^T X beside the layer less down, then the others')
        down_first = "awq_w4_g128: each layer's down_proj first" in log
        assert down_first == (chunk == "6M"), log
        assert "gptq_w4_g128: each layer's down_proj first" not in log
        # BRECQ: its input and target, 2 x 4.2 MB, more than a third of
        # 6M, in files; V and the Adam moments (12 bytes a weight, 9.4 MB
        # a layer) more than half of it: in a file, streamed
        assert ("brecq_w4_g64_attn6: the layer input and its target "
                "(0.01 GB) in temporary files" in log) == (chunk == "6M"), log
        assert ("brecq_w4_g64_attn6: layer 1/6 BRECQ" in log) and \
            ("(its rounding state in a temporary file: calib_mem)" in
             log) == (chunk == "6M"), log
    for v in ("gptq_w4_g128", "awq_w4_g128", "brecq_w4_g64_attn6"):
        assert got["", v] == got["6M", v], v
    print("     gptq, awq, brecq: the same bytes in 1 and 8 chunks")


if __name__ == "__main__":
    run_tests(globals())
