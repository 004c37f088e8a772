#!/usr/bin/python3
"""quantfs's GGUF views against llama.cpp's own quantizer, type by type, at
equal bytes, measured by llama.cpp's own KL-divergence tool on held-out text
(issue #24): the mean KL divergence of each file's next-token distributions
from the source's, the share of positions whose top token is the source's,
perplexity and file size. Also the importance-matrix pass: llama-imatrix's
wall time against quantfs's calibration for a k-quant view on the same
number of tokens.

The source is quantfs's own `original/model.gguf` (the weights in their
source dtype), so both sides start from the same GGUF. llama.cpp's files:
Q4_0 and Q8_0 with the embedding and output kept in the source dtype (the
layout of quantfs's Q4_0 / Q8_0 views; Q4_1 likewise), the k-quant mixes
and IQ4_NL / IQ4_XS with llama.cpp's own mixes, each without and with an imatrix from llama-imatrix on the
calibration text (--chunks N of --calib-len tokens: quantfs's defaults).
The `_awq` k-quant views (AWQ's scales folded in) are held against the
same llama.cpp files as their plain views. Where quantfs types an untied
model's token_embd and output otherwise than llama.cpp's mix (Q2_K,
Q3_K_*, Q4_K_*: gguf_mix.c), llama.cpp's file in that same layout is
measured too, a row of its own: the encoders compared alone.

usage: bench/gguf_kld.py --llama DIR [--quantfs PATH] [--model DIR]
         [--text FILE] [--calib FILE] [--ctx 512] [--chunks N] [--markdown]
DIR holds llama-quantize, llama-imatrix, llama-perplexity (bench/
llamacpp.sh prints it).

--weights-only also measures every file dequantized to F32 (llama-quantize
--allow-requantize ... F32: the same weights, exactly) against the source
in F32: the divergence of the weights alone. llama.cpp's CPU kernels
multiply quantized weights with activations quantized too (Q8_K for the
k-quants, Q8_0/Q8_1 for the rest), which adds a divergence of its own, the
same for both sides' files of a type; the F32 columns leave it out. Everything is written under a /tmp/qf-kld-* folder,
removed at the end.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests",
                                "mount"))
import qftest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data")

# (quantfs view, llama.cpp type, llama.cpp layout flags, the pair's label)
SAME_LAYOUT = ["--token-embedding-type", "bf16", "--output-tensor-type",
               "bf16"]
# quantfs's types of an untied model's token_embd and output where they
# are not llama.cpp's (gguf_mix.c): llama.cpp's stock mix is the goal's
# comparison, the same layout the like-for-like one
ENDS = {"Q2_K": ("q4_k", "q4_k"), "Q3_K_S": ("q4_k", "q5_k"),
        "Q3_K_M": ("q4_k", "q5_k"), "Q3_K_L": ("q4_k", "q5_k"),
        "Q4_K_S": ("q5_k", "q5_k"), "Q4_K_M": ("q5_k", "q5_k")}


def layout(typ):
    """llama-quantize's flags for quantfs's layout of mix typ."""
    e, o = ENDS[typ]
    return ["--token-embedding-type", e, "--output-tensor-type", o]
PAIRS = [
    ("rtn_w4_g32_sym", "Q4_0", SAME_LAYOUT, "Q4_0"),
    ("gptq_w4_g32_sym", "Q4_0", SAME_LAYOUT, "Q4_0"),
    ("rtn_w8_g32_sym", "Q8_0", SAME_LAYOUT, "Q8_0"),
    ("kq2_k", "Q2_K", [], "Q2_K"),
    ("kq2_k", "Q2_K", layout("Q2_K"), "Q2_K, quantfs's layout"),
    ("kq3_k_s", "Q3_K_S", [], "Q3_K_S"),
    ("kq3_k_s", "Q3_K_S", layout("Q3_K_S"), "Q3_K_S, quantfs's layout"),
    ("kq3_k_m", "Q3_K_M", [], "Q3_K_M"),
    ("kq3_k_m", "Q3_K_M", layout("Q3_K_M"), "Q3_K_M, quantfs's layout"),
    ("kq3_k_l", "Q3_K_L", [], "Q3_K_L"),
    ("kq3_k_l", "Q3_K_L", layout("Q3_K_L"), "Q3_K_L, quantfs's layout"),
    ("kq4_k_s", "Q4_K_S", [], "Q4_K_S"),
    ("kq4_k_s", "Q4_K_S", layout("Q4_K_S"), "Q4_K_S, quantfs's layout"),
    ("kq4_k_m", "Q4_K_M", [], "Q4_K_M"),
    ("kq4_k_m", "Q4_K_M", layout("Q4_K_M"), "Q4_K_M, quantfs's layout"),
    ("kq5_k_s", "Q5_K_S", [], "Q5_K_S"),
    ("kq5_k_m", "Q5_K_M", [], "Q5_K_M"),
    ("kq6_k", "Q6_K", [], "Q6_K"),
    ("rtn_w4_g32", "Q4_1", SAME_LAYOUT, "Q4_1"),
    ("gptq_w4_g32", "Q4_1", SAME_LAYOUT, "Q4_1"),
    ("kiq4_nl", "IQ4_NL", [], "IQ4_NL"),
    ("kiq4_xs", "IQ4_XS", [], "IQ4_XS"),
    # AWQ's scales folded in first (_awq): the same llama.cpp files
    ("kq2_k_awq", "Q2_K", [], "Q2_K"),
    ("kq2_k_awq", "Q2_K", layout("Q2_K"), "Q2_K, quantfs's layout"),
    ("kq3_k_m_awq", "Q3_K_M", [], "Q3_K_M"),
    ("kq4_k_m_awq", "Q4_K_M", [], "Q4_K_M"),
    ("kq5_k_m_awq", "Q5_K_M", [], "Q5_K_M"),
    ("kq6_k_awq", "Q6_K", [], "Q6_K"),
    ("kiq4_nl_awq", "IQ4_NL", [], "IQ4_NL"),
    ("kiq4_xs_awq", "IQ4_XS", [], "IQ4_XS"),
]


def llkey(typ, flags, im):
    """The label of llama.cpp's file of type typ made with flags."""
    return "llama.cpp %s%s%s" % (typ, " (token_embd %s, output %s)" % ENDS[
        typ] if typ in ENDS and flags == layout(typ) else "",
        " + imatrix" if im else "")


def run(cmd, log):
    t0 = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(["nice", "-n", "19"] + cmd, stdout=f,
                           stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if r.returncode:
        sys.exit("%s failed (%d): see %s\n%s" % (
            os.path.basename(cmd[0]), r.returncode, log,
            open(log).read()[-2000:]))
    return dt


def kld(llama, work, gguf, base, text, ctx, chunks):
    """llama-perplexity --kl-divergence of gguf against the saved base."""
    log = os.path.join(work, os.path.basename(gguf) + ".ppl.log")
    cmd = [os.path.join(llama, "llama-perplexity"), "-m", gguf, "-f", text,
           "-c", str(ctx), "-b", str(ctx), "--kl-divergence-base", base,
           "--kl-divergence", "-t", "2"]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    run(cmd, log)
    out = open(log).read()

    def num(pat):
        m = re.search(pat, out)
        return float(m.group(1)) if m else float("nan")
    return {"kld": num(r"Mean\s+KLD:\s+([0-9.e+-]+)"),
            "kld_pm": num(r"Mean\s+KLD:\s+[0-9.e+-]+\s+±\s+([0-9.e+-]+)"),
            "top1": num(r"Same top p:\s+([0-9.]+)"),
            "ppl": num(r"Mean PPL\(Q\)\s+:\s+([0-9.]+)")}


def to_f32(llama, gguf):
    """gguf's weights dequantized to F32, exactly, beside it."""
    out = gguf[:-len(".gguf")] + ".f32.gguf"
    run([os.path.join(llama, "llama-quantize"), "--allow-requantize", gguf,
         out, "F32", "2"], out + ".log")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama", required=True)
    ap.add_argument("--quantfs", default=os.path.join(
        HERE, "..", "build", "mounts", "quantfs"))
    ap.add_argument("--model", default=os.path.join(
        DATA, "models", "tinystories-llama-5m"))
    ap.add_argument("--text", default=os.path.join(
        DATA, "text", "tinystories", "eval.txt"))
    ap.add_argument("--calib", default=os.path.join(
        DATA, "text", "tinystories", "calib.txt"))
    ap.add_argument("--calib-n", type=int, default=32)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=0,
                    help="windows of the text (0: all)")
    ap.add_argument("--views", default="",
                    help="comma list: only these quantfs views")
    ap.add_argument("--extra", action="append", default=[],
                    help="LABEL=FILE.gguf: also measure this file (e.g. "
                    "a view saved from another build), in the last row")
    ap.add_argument("--weights-only", action="store_true",
                    help="also each file dequantized to F32 against the "
                    "source in F32 (see above)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    qftest.QUANTFS = os.path.abspath(a.quantfs)
    llama = os.path.abspath(a.llama)
    model = os.path.abspath(a.model)
    name = os.path.basename(model)
    work = tempfile.mkdtemp(prefix="qf-kld-")
    pairs = [p for p in PAIRS
             if not a.views or p[0] in a.views.split(",")]
    files = {}			# label -> (path, origin)
    opts = ["calib=" + os.path.abspath(a.calib),
            "calib_n=%d" % a.calib_n, "calib_len=%d" % a.calib_len]
    qtime = {}
    with qftest.Mount(os.path.dirname(model), opts=opts, debug=False) as m:
        d = os.path.join(m.mnt, name)
        src = os.path.join(work, "source.gguf")
        shutil.copyfile(os.path.join(d, "original", "model.gguf"), src)
        for v, _, _, _ in pairs:
            dst = os.path.join(work, "quantfs-%s.gguf" % v)
            t0 = time.perf_counter()
            shutil.copyfile(os.path.join(d, v, "model.gguf"), dst)
            qtime[v] = time.perf_counter() - t0
            files["quantfs " + v] = dst
        log = m.stderr()
    shutil.rmtree(m.tmp, ignore_errors=True)
    imat = os.path.join(work, "imatrix.gguf")
    t_imat = run([os.path.join(llama, "llama-imatrix"), "-m", src, "-f",
                  os.path.abspath(a.calib), "-c", str(a.calib_len),
                  "--chunks", str(a.calib_n), "-o", imat, "-t", "2"],
                 os.path.join(work, "imatrix.log"))
    done = set()
    for _, typ, flags, _ in pairs:	# llama.cpp's side: the pairs' types
        for im in (False, True):
            key = (typ, im, tuple(flags))
            if key in done:
                continue
            done.add(key)
            out = os.path.join(work, "llama-%s%s%s.gguf" % (
                typ, "-ends" if typ in ENDS and flags == layout(typ)
                else "",
                "-imatrix" if im else ""))
            run([os.path.join(llama, "llama-quantize")] +
                (["--imatrix", imat] if im else []) + flags +
                [src, out, typ, "2"], out + ".log")
            files[llkey(typ, flags, im)] = out
    base = os.path.join(work, "base.kld")
    cmd = [os.path.join(llama, "llama-perplexity"), "-m", src, "-f",
           os.path.abspath(a.text), "-c", str(a.ctx), "-b", str(a.ctx),
           "--kl-divergence-base", base, "-t", "2"]
    if a.chunks:
        cmd += ["--chunks", str(a.chunks)]
    run(cmd, os.path.join(work, "base.log"))
    base32 = os.path.join(work, "base-f32.kld")
    if a.weights_only:
        src32 = to_f32(llama, src)
        cmd[cmd.index(src)] = src32
        cmd[cmd.index(base)] = base32
        run(cmd, os.path.join(work, "base-f32.log"))
    print("%s, %s, windows of %d%s; llama.cpp %s" % (
        name, os.path.relpath(a.text, DATA), a.ctx,
        " (%d)" % a.chunks if a.chunks else "",
        open(os.path.join(llama, "..", "COMMIT")).read().strip()[:12]
        if os.path.exists(os.path.join(llama, "..", "COMMIT")) else "?"))
    f32h = " mean KLD, weights only (F32) |" if a.weights_only else ""
    print("| type | file | bytes | mean KLD | same top-1 | PPL |" + f32h)
    print("|---|---|---|---|---|---|" + ("---|" if f32h else ""))
    res, res32 = {}, {}
    for v, typ, flags, label in PAIRS:
        for f in (llkey(typ, flags, False), llkey(typ, flags, True),
                  "quantfs " + v):
            if f not in files or f in res:
                continue
            r = res[f] = kld(llama, work, files[f], base,
                             os.path.abspath(a.text), a.ctx, a.chunks)
            w = ""
            if a.weights_only:
                f32 = to_f32(llama, files[f])
                r32 = res32[f] = kld(llama, work, f32, base32,
                                     os.path.abspath(a.text), a.ctx,
                                     a.chunks)
                os.unlink(f32)
                w = " %.6f ± %.6f |" % (r32["kld"], r32["kld_pm"])
            print("| %s | %s | %d | %.6f ± %.6f | %.2f %% | %.4f |%s" % (
                label, f, os.path.getsize(files[f]), r["kld"], r["kld_pm"],
                r["top1"], r["ppl"], w), flush=True)
    for e in a.extra:
        label, path = e.split("=", 1)
        r = kld(llama, work, os.path.abspath(path), base,
                os.path.abspath(a.text), a.ctx, a.chunks)
        print("| | %s | %d | %.6f ± %.6f | %.2f %% | %.4f |" % (
            label, os.path.getsize(path), r["kld"], r["kld_pm"], r["top1"],
            r["ppl"]), flush=True)
    print()
    for v, typ, flags, label in pairs:	# the goal: <= 0.6x, never worse
        mine = (llkey(typ, flags, False), llkey(typ, flags, True))
        best = min((res[f]["kld"], f) for f in res if f in mine)
        print("%s: quantfs %s mean KLD / llama.cpp's best (%s) = %.3f, "
              "bytes %d / %d" % (label, v, best[1], res["quantfs " + v]["kld"]
                                 / best[0], os.path.getsize(
                                     files["quantfs " + v]),
                                 os.path.getsize(files[best[1]])))
        if res32:
            best = min((res32[f]["kld"], f) for f in res32 if f in mine)
            print("  weights only (F32): / llama.cpp's best (%s) = %.3f" % (
                best[1], res32["quantfs " + v]["kld"] / best[0]))
    print()
    print("importance matrix on %d x %d calibration tokens: llama-imatrix "
          "%.2f s" % (a.calib_n, a.calib_len, t_imat))
    for v in qtime:
        if v.startswith("kq") or v.startswith("kiq"):
            print("quantfs %s: first read of model.gguf (calibration pass "
                  "+ encoding) %.2f s" % (v, qtime[v]))
    for line in log.splitlines():
        if ("/kq" in line or "/kiq" in line) and "done in" in line:
            print("  log (the calibration pass): " + line.strip()[:160])
    if a.keep:
        print("kept " + work)
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
