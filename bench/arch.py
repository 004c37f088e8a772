#!/usr/bin/python3
"""Per-architecture costs at real models' shapes (issue #22's benchmark).

For each family, a generated model (quantfs mkmodel --arch) with one real
model's layer shapes and --layers decoder layers (default 1):

  * forward: bench_forward --model (the model's own layers on one BLAS
    thread) against SGEMM measured in the same run: tokens/s per layer and
    the ratio of achieved GFLOP/s to SGEMM's;
  * GPTQ: gptq_w4_g128 read through a real mount with --calib-n x
    --calib-len calibration tokens (of --calib, else sampled from the
    model): seconds per
    layer and the daemon's peak resident memory (VmHWM) and anonymous
    memory;
  * mixture of experts: the same GPTQ time against a dense qwen3 layer of
    the same ACTIVE size (intermediate = top-k x expert width), which is
    what the expert calibration costs beyond a dense model of equal
    compute.

usage: bench/arch.py [--quantfs PATH] [--only NAME,...] [--layers N]
                     [--calib-n N] [--calib-len N] [--calib FILE] [--no-gptq]
                     [--no-forward] [--variants V,...] [--opts O,...]

Issue #23's memory goals: --only llama3_8b,llama3_70b --no-forward
--variants gptq_w4_g128,awq_w4_g128,brecq_w4_g64_attn6 --calib-n 128
--calib-len 512 --calib ../shared/data/text/english/calib.txt (the peak RSS
against 4 / 8 GB); with --opts brecq_iters=4 BRECQ runs 4 steps a layer
(its memory does not depend on them) and its time is extrapolated to the
default 200 from the seconds of each.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "mount"))
import qftest  # noqa: E402
from gptq_scale import AnonPeak, status  # noqa: E402

# name: (real model, mkmodel arguments)
SHAPES = {
    "gemma3_text": ("Gemma-3-1B", ["--arch", "gemma3_text", "--hidden", 1152,
                    "--inter", 6912, "--heads", 4, "--kv-heads", 1,
                    "--head-dim", 256, "--vocab", 262144, "--tie"]),
    "gemma2": ("Gemma-2-2B", ["--arch", "gemma2", "--hidden", 2304,
               "--inter", 9216, "--heads", 8, "--kv-heads", 4, "--head-dim",
               256, "--vocab", 256000, "--tie"]),
    "phi3": ("Phi-4-mini (3.8B)", ["--arch", "phi3", "--hidden", 3072,
             "--inter", 8192, "--heads", 24, "--kv-heads", 8, "--head-dim",
             128, "--vocab", 200064, "--tie"]),
    "qwen3_moe": ("Qwen3-30B-A3B", ["--arch", "qwen3_moe", "--hidden", 2048,
                  "--inter", 6144, "--moe-inter", 768, "--experts", 128,
                  "--topk", 8, "--heads", 32, "--kv-heads", 4, "--head-dim",
                  128, "--vocab", 151936]),
    "qwen3_dense_a3b": ("dense qwen3 of Qwen3-30B-A3B's active size",
                        ["--arch", "qwen3", "--hidden", 2048, "--inter",
                         6144, "--heads", 32, "--kv-heads", 4, "--head-dim",
                         128, "--vocab", 151936]),
    "olmoe": ("OLMoE-1B-7B", ["--arch", "olmoe", "--hidden", 2048,
              "--inter", 1024, "--moe-inter", 1024, "--experts", 64,
              "--topk", 8, "--heads", 16, "--kv-heads", 16, "--vocab",
              50304]),
    "mixtral": ("Mixtral-8x7B", ["--arch", "mixtral", "--hidden", 4096,
                "--inter", 14336, "--experts", 8, "--topk", 2, "--heads", 32,
                "--kv-heads", 8, "--vocab", 32000]),
    # issue #23's memory goals (a small vocabulary: the layers are what
    # is measured; the byte-level tokenizer reads a text's bytes)
    "llama3_8b": ("Llama-3-8B", ["--hidden", 4096, "--inter", 14336,
                  "--heads", 32, "--kv-heads", 8, "--vocab", 512]),
    "llama3_70b": ("Llama-3-70B", ["--hidden", 8192, "--inter", 28672,
                   "--heads", 64, "--kv-heads", 8, "--vocab", 512]),
}
# the real models' decoder layers, for the whole-model extrapolation
REAL_LAYERS = {"gemma3_text": 26, "gemma2": 26, "phi3": 32, "qwen3_moe": 48,
               "qwen3_dense_a3b": 48, "olmoe": 16, "mixtral": 32,
               "llama3_8b": 32, "llama3_70b": 80}
DEFAULT = "gemma3_text,gemma2,phi3,qwen3_moe,qwen3_dense_a3b,olmoe"
BRECQ_STEPS = 200   # brecq.h's default Adam steps a block


def cpu_seconds(pid):
    """User + system CPU seconds of process pid (all its threads)."""
    with open("/proc/%d/stat" % pid) as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


BRECQ_LINE = re.compile(r"BRECQ: block output error .* ([0-9.]+) s, "
                        r"(\d+) steps of it ([0-9.]+) s")


def brecq_steps(log):
    """(steps, seconds in them) summed over the BRECQ lines of log."""
    n = secs = 0
    for m in BRECQ_LINE.finditer(log):
        n += int(m.group(2))
        secs += float(m.group(3))
    return n, secs


def gptq(src, name, calib_n, calib_len, calib=None, variant="gptq_w4_g128",
         extra=()):
    """Seconds, daemon CPU seconds, VmHWM and anonymous peak of
    variant of src/name (CPU seconds hold on a busy machine, where
    wall-clock time does not), and the daemon's log."""
    opts = ["calib_n=%d" % calib_n, "calib_len=%d" % calib_len] + list(extra)
    if calib:
        opts.append("calib=" + os.path.abspath(calib))
    rel = os.path.join(name, variant, "model.safetensors")
    with qftest.Mount(src, opts=opts, debug=False) as m:
        anon = AnonPeak(m.proc.pid)
        anon.start()
        t0, c0 = time.time(), cpu_seconds(m.proc.pid)
        with open(os.path.join(m.mnt, rel), "rb") as f:
            f.read(8)
            while f.read(64 << 20):
                pass
        dt, cpu = time.time() - t0, cpu_seconds(m.proc.pid) - c0
        peak = status(m.proc.pid, "VmHWM")
        anon.stop.set()
        anon.join()
        log = m.stderr()
    return dt, cpu, peak, anon.peak, log


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantfs", default=os.path.join(
        HERE, "..", "build", "mounts", "quantfs"))
    ap.add_argument("--only", default=DEFAULT)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--no-gptq", action="store_true")
    ap.add_argument("--no-forward", action="store_true")
    ap.add_argument("--variants", default="gptq_w4_g128",
                    help="calibrated variants to time, comma-separated "
                    "(e.g. gptq_w4_g128,awq_w4_g128,brecq_w4_g128)")
    ap.add_argument("--calib", help="calibration text (default: sampled "
                    "from the model, which runs its whole vocabulary head "
                    "per token)")
    ap.add_argument("--opts", default="",
                    help="more mount options, comma-separated (e.g. "
                    "brecq_iters=4: BRECQ's time is then extrapolated to "
                    "the default 200 steps from the seconds a step)")
    a = ap.parse_args()
    qftest.QUANTFS = os.path.abspath(a.quantfs)
    bench_fwd = os.path.join(os.path.dirname(qftest.QUANTFS), "..", "bench",
                             "bench_forward")
    work = tempfile.mkdtemp(prefix="qfarchb.")
    try:
        for name in a.only.split(","):
            real, args = SHAPES[name]
            src = os.path.join(work, name)
            model = os.path.join(src, name)
            qftest.mkmodel(model, "--layers", a.layers, *args)
            print("== %s: %s's shapes, %d layer(s)" % (name, real, a.layers))
            if not a.no_forward:
                r = subprocess.run([bench_fwd, "--model", model, "4", "512"],
                                   capture_output=True, text=True)
                print("  " + (r.stdout or r.stderr).strip().replace(
                    "\n", "\n  "))
            for v in ([] if a.no_gptq else a.variants.split(",")):
                dt, cpu, peak, anon, log = gptq(
                    src, name, a.calib_n, a.calib_len, a.calib, v,
                    [o for o in a.opts.split(",") if o])
                steps, step_s = brecq_steps(log)
                for ln in log.splitlines():     # BRECQ's, and spills
                    if "BRECQ: " in ln or "temporary file" in ln:
                        print("    " + ln.split("quantfs: ", 1)[-1])
                layer = dt / a.layers
                if steps:   # the default schedule's steps at this rate
                    layer += (BRECQ_STEPS * a.layers - steps) * \
                        (step_s / steps) / a.layers
                    print("  %s: %d BRECQ steps, %.1f s each" %
                          (v, steps, step_s / steps))
                print("  %s, %d x %d tokens: %.1f s per layer (%.1f CPU "
                      "s), peak RSS %.2f GB (anonymous %.2f GB); %d layers "
                      "of %s: %.1f h%s" % (
                          v, a.calib_n, a.calib_len, dt / a.layers,
                          cpu / a.layers, peak / 1e9, anon / 1e9,
                          REAL_LAYERS[name], real,
                          layer * REAL_LAYERS[name] / 3600,
                          " (at %d steps a layer: %.1f s a layer)" %
                          (BRECQ_STEPS, layer) if steps else ""),
                      flush=True)
            shutil.rmtree(src, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
