#!/usr/bin/python3
"""Fingerprint of served bytes: the sha256 of every file of a fixed set of
variants, for checking that a change of structure changes no byte.

Mounts two sources with a fresh cache: the embedded real model
(tests/golden/stories260K) and a generated Llama model (mkmodel, seed 7,
3 layers, GQA), and reads RTN, GPTQ (act order too), AWQ, BRECQ, the mixed
variants (static, budget, dyn, _fake) and the GGUF views (kq4_k_m, kq6_k,
and every variant's model.gguf where it lists one); every file each
variant directory lists but quantization.json (a live status with times).  Calibrated variants use the
mount's default calibration text at calib_n=8, calib_len=64 and
brecq_iters=20, so the whole run takes about a minute.  Prints one line
per file, "<sha256>  <model>/<variant>/<file>", then a total hash.

Run it before and after a change and diff the output; the figures are for
one machine (GPTQ's and BRECQ's float sums follow OpenBLAS's kernels).

usage: bench/served_sha.py [--quantfs PATH]
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ["rtn_w4_g128", "rtn_w3_g64", "rtn_w8_g32_fake", "gptq_w4_g128",
            "gptq_w3_g64_act", "awq_w4_g128", "brecq_w4_g64_attn6",
            "mixed_static", "mixed_b4.5", "mixed_dyn", "mixed_static_fake",
            "kq4_k_m", "kq6_k"]


def mounted(mnt):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mnt for line in f)


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantfs", default=os.path.join(
        ROOT, "build", "mounts", "quantfs"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="qfsha.")
    src, mnt = os.path.join(work, "src"), os.path.join(work, "mnt")
    os.makedirs(mnt)
    shutil.copytree(os.path.join(ROOT, "tests", "golden", "stories260K"),
                    os.path.join(src, "stories260K"),
                    ignore=shutil.ignore_patterns("*.md"))
    subprocess.run([a.quantfs, "mkmodel", os.path.join(src, "gen"),
                    "--layers", "3", "--hidden", "256", "--inter", "512",
                    "--heads", "8", "--kv-heads", "4", "--vocab", "512",
                    "--seed", "7"], check=True, stdout=subprocess.DEVNULL)
    opts = "cache=%s,calib_n=8,calib_len=64,brecq_iters=20" % \
        os.path.join(work, "cache")
    d = subprocess.Popen([a.quantfs, "mount", src, mnt, "-f", "-o", opts],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not mounted(mnt):
            if d.poll() is not None or time.time() > t0 + 20:
                sys.exit("served_sha: the mount did not come up")
            time.sleep(0.05)
        lines = []
        for model in ("gen", "stories260K"):
            for v in VARIANTS:
                try:
                    names = os.listdir(os.path.join(mnt, model, v))
                except OSError:
                    names = []
                for f in sorted(names):
                    if f == "quantization.json":
                        continue    # the variant's live status (times)
                    p = os.path.join(mnt, model, v, f)
                    try:
                        lines.append("%s  %s/%s/%s" % (sha_file(p), model,
                                                        v, f))
                    except FileNotFoundError:
                        pass
                    except OSError as e:
                        lines.append("error %s  %s/%s/%s" % (
                            os.strerror(e.errno), model, v, f))
        lines.sort(key=lambda x: x.split("  ")[-1])
        for line in lines:
            print(line)
        total = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        print("total %s  (%d files, %.0f s)" % (total, len(lines),
                                                time.time() - t0))
    finally:
        subprocess.run([a.quantfs, "umount", mnt], check=False)
        d.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
