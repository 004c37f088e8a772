#!/usr/bin/python3
"""GPTQ production at Qwen3-0.6B's shapes, through a real mount.

Generates a model with Qwen3-0.6B's shapes (hidden 1024, 16 heads of 128,
8 KV heads, intermediate 3072, vocab 151936, tied embeddings; --layers,
default all 28), mounts it with 128 x 512 calibration tokens (the text of
--calib, default ../shared/data/text/english/calib.txt, else sequences
sampled from the model), reads gptq_w4_g128/model.safetensors and prints:
the wall time, the daemon's peak resident memory (VmHWM, and the peak of
its anonymous memory alone) against one decoder layer's fp32 weights, and the job's own phase line (X^T X,
Cholesky, column loop, blocked updates, RTN comparison, packing, LMDB,
forward passes and the rest).  Phase rates against SGEMM: bench_backend.

The floor (issue #23): the floating-point work of one pass of the
calibration tokens through each layer (its linears and the attention's
two products) and of X^T X of its four distinct inputs, at the SGEMM rate
bench_backend measures in the same run (both cores); printed with the
ratio of the wall time to it.  --variant times another calibrated
variant (awq_w4_g128, or mixed_b4.5 for the mixed sensitivity pass)
against the same floor, and AWQ against its own as well (floor_flop:
two passes, and the error energies of its search); --mem sets the
mount's calib_mem.

usage: bench/gptq_scale.py [--quantfs PATH] [--layers N] [--calib FILE]
                           [--keep DIR] [--variant NAME] [--mem SIZE]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests",
                                "mount"))
import qftest  # noqa: E402

HID, INTER, HEADS, KV, HD, VOCAB = 1024, 3072, 16, 8, 128, 151936


def status(pid, key):
    """A byte count of /proc/PID/status (VmHWM, RssAnon, ...)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class AnonPeak(threading.Thread):
    """The daemon's largest anonymous resident memory, sampled every
    0.2 s (VmHWM also counts the source file's mapped pages)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.wait(0.2):
            try:
                self.peak = max(self.peak, status(self.pid, "RssAnon"))
            except OSError:
                return


def sgemm_rate(quantfs):
    """GFLOP/s of bench_backend's SGEMM (65536 x 3072 x 1024, both
    cores), measured now."""
    exe = os.path.join(os.path.dirname(quantfs), "..", "bench",
                       "bench_backend")
    out = subprocess.run([exe], capture_output=True, text=True).stdout
    return float(re.search(r"cpu ([\d.]+) GFLOP/s", out).group(1))


def floor_flop(layers, ntok=65536, seqlen=512, awq=False):
    """One forward pass with attention and X^T X, per the module doc;
    awq: AWQ's, two passes (the statistics of the layer as it is, then
    the quantized layer's output for the next) and the error energies
    tr(dW H dW^T) its search evaluates, 2 out in^2 each for every linear:
    20 scale exponents, the RTN reference and the final errors (2 + 2:
    each against zero and the weights)."""
    qd, kvd = HEADS * HD, KV * HD
    lin = 2 * (HID * (qd + 2 * kvd) + qd * HID + 3 * HID * INTER)
    attn = 4 * qd * (seqlen + 1) / 2
    xtx = HID * HID * 2 + qd * qd + INTER * INTER
    if not awq:
        return layers * ntok * (lin + attn + xtx)
    energy = 2 * (qd * HID * HID + 2 * kvd * HID * HID + HID * qd * qd +
                  2 * INTER * HID * HID + HID * INTER * INTER)
    return layers * (ntok * (2 * (lin + attn) + xtx) + 24 * energy)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantfs", default=os.path.join(
        here, "..", "build", "mounts", "quantfs"))
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--calib", default=os.path.join(
        here, "..", "..", "shared", "data", "text", "english", "calib.txt"))
    ap.add_argument("--keep", help="reuse/keep the model and cache here")
    ap.add_argument("--variant", default="gptq_w4_g128")
    ap.add_argument("--mem", help="the mount's calib_mem")
    a = ap.parse_args()
    qftest.QUANTFS = os.path.abspath(a.quantfs)
    work = a.keep or tempfile.mkdtemp(prefix="qfgptq.")
    src = os.path.join(work, "models")
    model = os.path.join(src, "qwen3-0.6b-shapes-%d" % a.layers)
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        qftest.mkmodel(model, "--hidden", HID, "--inter", INTER, "--layers",
                       a.layers, "--heads", HEADS, "--kv-heads", KV,
                       "--head-dim", HD, "--vocab", VOCAB, "--tie")
    cache = tempfile.mkdtemp(prefix="cache.", dir=work)
    opts = ["calib_n=128", "calib_len=512"]
    if a.mem:
        opts.append("calib_mem=" + a.mem)
    if os.path.exists(a.calib):
        opts.append("calib=" + os.path.abspath(a.calib))
    rel = os.path.join(os.path.basename(model), a.variant,
                       "model.safetensors")
    rate0 = sgemm_rate(qftest.QUANTFS)
    with qftest.Mount(src, cache=cache, opts=opts, debug=False) as m:
        anon = AnonPeak(m.proc.pid)
        anon.start()
        t0 = time.time()
        with open(os.path.join(m.mnt, rel), "rb") as f:
            f.read(8)                       # starts the job, waits
            while f.read(64 << 20):
                pass
        dt = time.time() - t0
        peak = status(m.proc.pid, "VmHWM")
        anon.stop.set()
        anon.join()
        log = m.stderr()
    layer = 4 * (HID * (HEADS * HD + 2 * KV * HD) + HEADS * HD * HID +
                 3 * HID * INTER)
    rate = (rate0 + sgemm_rate(qftest.QUANTFS)) / 2
    print("%s, %d layers of Qwen3-0.6B's shapes, 128 x 512 calibration "
          "tokens (%s): %.1f s (%.1f min)" % (
              a.variant, a.layers, "calib.txt" if os.path.exists(a.calib)
              else "sampled", dt, dt / 60))
    fl = floor_flop(a.layers)
    print("floor: %.1f TFLOP (one forward pass with attention, X^T X) at "
          "SGEMM's %.1f GFLOP/s (before %.1f, after %.1f) = %.1f s; "
          "measured / floor = %.2f" % (
              fl / 1e12, rate, rate0, 2 * rate - rate0, fl / rate / 1e9,
              dt / (fl / rate / 1e9)))
    if a.variant.startswith("awq"):
        fl = floor_flop(a.layers, awq=True)
        print("AWQ's floor: %.1f TFLOP (two passes with attention, X^T X, "
              "24 error energies per linear) = %.1f s; measured / floor = "
              "%.2f" % (fl / 1e12, fl / rate / 1e9, dt / (fl / rate / 1e9)))
    print("daemon peak resident memory %.2f GB (VmHWM, with the source's "
          "mapped pages), anonymous %.2f GB; one decoder layer in fp32 "
          "%.0f MB; activations of 65,536 tokens: %.0f MB per hidden-wide "
          "and %.0f MB per intermediate-wide buffer" % (
              peak / 1e9, anon.peak / 1e9, layer / 1e6,
              65536 * HID * 4 / 1e6, 65536 * INTER * 4 / 1e6))
    for line in log.splitlines():
        if re.search(r"X\^T X|done in|resuming|measured in|chunks of", line):
            print("  " + line.split("quantfs: ", 1)[-1])
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
