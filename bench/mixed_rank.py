#!/usr/bin/python3
"""Is mixed_b<avg> better than what it competes with, whatever the
calibration? (issue #24, point 1.)

For each calibration setting the model is mounted on a cache of its own,
and each variant is evaluated on two held-out texts (the first 96 KiB of
text/tinystories/eval.txt, in domain, and of text/english/eval.txt, out
of domain) by `quantfs eval --kld-vs SOURCE`: perplexity, the mean KL
divergence of the next-token distribution from the source's, and the
share of positions with the source's top token. The settings: the
defaults (32 x 256 on calib.txt), 64 x 512, and the defaults on each
third of calib.txt (disjoint slices). Uncalibrated variants (RTN,
mixed_static) are evaluated once.

usage: bench/mixed_rank.py [--quantfs PATH] [--model DIR]
         [--settings A,B,t1,t2,t3] [--variants V,...] [--uniform V,...]
Prints one line per (setting, variant) as it goes (and the seconds the
sensitivity measurement took), then a markdown table
per text: KLD (perplexity) of each variant under each setting, with the
file's bytes. Work files go under a /tmp/qf-mixed-* folder, removed at
the end.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests",
                                "mount"))
import qftest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data")
TEXTS = {"tinystories": "text/tinystories/eval.txt",
         "english": "text/english/eval.txt"}
CALIB = "text/tinystories/calib.txt"
HEAD = 96 << 10
VARIANTS = ("mixed_b3.5,mixed_b4.5,mixed_b5.25,gptq_w3_g128,gptq_w3_g32,"
            "gptq_w4_g128,gptq_w4_g32")
UNIFORM = "original,rtn_w3_g128,rtn_w4_g128,rtn_w4_g32,mixed_static"


def thirds(path, work):
    """calib.txt cut at line ends into three disjoint files."""
    text = open(path).read()
    cuts = [0] + [text.find("\n", len(text) * k // 3) + 1 for k in (1, 2)]
    cuts.append(len(text))
    out = []
    for k in range(3):
        p = os.path.join(work, "t%d.txt" % (k + 1))
        open(p, "w").write(text[cuts[k]:cuts[k + 1]])
        out.append(p)
    return out


def evaluate(q, d, src, text):
    r = subprocess.run([q, "eval", d, "--text", text, "--ctx", "512",
                        "--json", "--kld-vs", src], capture_output=True,
                       text=True, timeout=3600,
                       env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    if r.returncode:
        sys.exit("eval %s: %s" % (d, r.stderr.strip()))
    return json.loads(r.stdout)


def run_setting(a, work, name, opts, variants, texts, res):
    mnt = os.path.join(work, "mnt-" + name)
    os.makedirs(mnt)
    model = os.path.basename(os.path.normpath(a.model))
    with qftest.Mount(os.path.dirname(os.path.normpath(a.model)),
                      mnt=mnt, cache=os.path.join(work, "cache-" + name),
                      opts=opts) as m:
        for v in variants:
            d = os.path.join(m.mnt, model, v)
            row = {"bytes": os.path.getsize(
                os.path.join(d, "model.safetensors"))}
            for t, path in texts.items():
                row[t] = evaluate(a.quantfs, d, a.model, path)
            res[(name, v)] = row
            print("%s %s %d bytes: %s" % (name, v, row["bytes"], ", ".join(
                "%s ppl %.4f kld %.6f top1 %.4f" % (
                    t, row[t]["ppl"], row[t]["kld"], row[t]["same_top1"])
                for t in texts)), flush=True)
        # the estimator's cost: the measurement, once per setting
        for line in m.stderr().splitlines():
            if "sensitivities measured in" in line:
                print("%s: %s" % (name, line.split(": ", 1)[-1]),
                      flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quantfs", default=os.path.join(HERE, "..", "build",
                                                  "mounts", "quantfs"))
    p.add_argument("--model",
                   default=os.path.join(DATA, "models",
                                        "tinystories-llama-5m"))
    p.add_argument("--settings", default="A,B,t1,t2,t3")
    p.add_argument("--variants", default=VARIANTS)
    p.add_argument("--uniform", default=UNIFORM)
    a = p.parse_args()
    a.quantfs = os.path.abspath(a.quantfs)
    a.model = os.path.abspath(a.model)
    qftest.QUANTFS = os.environ["QUANTFS"] = a.quantfs
    work = tempfile.mkdtemp(prefix="qf-mixed-")
    try:
        texts = {}
        for t, rel in TEXTS.items():
            texts[t] = os.path.join(work, t + ".txt")
            with open(os.path.join(DATA, rel), "rb") as f, \
                    open(texts[t], "wb") as g:
                g.write(f.read(HEAD))
        calib = os.path.join(DATA, CALIB)
        sl = thirds(calib, work)
        settings = {"A": ["calib=" + calib],
                    "B": ["calib=" + calib, "calib_n=64", "calib_len=512"],
                    "t1": ["calib=" + sl[0]], "t2": ["calib=" + sl[1]],
                    "t3": ["calib=" + sl[2]]}
        names = a.settings.split(",")
        variants = [v for v in a.variants.split(",") if v]
        res = {}
        if a.uniform:
            run_setting(a, work, "uniform", settings["A"],
                        a.uniform.split(","), texts, res)
        for s in names:
            run_setting(a, work, s, settings[s], variants, texts, res)
        for t in texts:
            print("\n%s (first %d KiB of %s): KLD (perplexity)\n" %
                  (t, HEAD >> 10, TEXTS[t]))
            print("| variant | bytes | " + " | ".join(names) + " |")
            print("|---|---|" + "---|" * len(names))
            for v in (a.uniform.split(",") if a.uniform else []):
                r = res[("uniform", v)]
                print("| %s | %d | %.6f (%.4f), no data |" % (
                    v, r["bytes"], r[t]["kld"], r[t]["ppl"]))
            for v in variants:
                cells = ["%.6f (%.4f)" % (res[(s, v)][t]["kld"],
                                          res[(s, v)][t]["ppl"])
                         for s in names]
                print("| %s | %d | %s |" % (v, res[(names[0], v)]["bytes"],
                                            " | ".join(cells)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
