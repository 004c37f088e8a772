"""quant/'s layers: every #include of a quant/ header follows the arrows.

Meson already refuses a header of a layer a library does not depend on
(each exports only its own folder); this check says which arrow a change
breaks, and also keeps the private headers (*_i.h, tok_unicode.h) inside
their folders, which the include path alone cannot.  Tests may include
anything.  Usage: test_layers.py SOURCE_ROOT
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "."
USES = {"io": [], "tok": ["io"], "gguf": ["io"], "nn": ["io"],
        "calib": ["nn", "tok"], "method": ["calib"], "variant": ["method"],
        "eval": ["nn", "tok"]}
# one file may go further than its folder, and why
EXTRA = {"quant/eval/eval_scores.c": ["method"]}  # ReFlip's score error
PRIVATE = re.compile(r"_i\.h$|^tok_unicode\.h$")


def reach(layers):
    seen = set()
    while layers:
        l = layers.pop()
        if l not in seen:
            seen.add(l)
            layers.extend(USES[l])
    return seen


home = {}
for layer in USES:
    for f in os.listdir(os.path.join(ROOT, "quant", layer)):
        if f.endswith(".h"):
            home[f] = layer
bad = n = 0
for top in ("quant", "fs", "mounts", "cache", "bench"):
    for d, _, files in os.walk(os.path.join(ROOT, top)):
        for f in files:
            if not f.endswith((".c", ".h", ".cu")):
                continue
            path = os.path.relpath(os.path.join(d, f), ROOT)
            parts = path.split(os.sep)
            mine = parts[1] if top == "quant" and len(parts) > 2 else None
            ok = reach([mine] + EXTRA.get(path, [])) if mine else None
            text = open(os.path.join(d, f), encoding="utf-8").read()
            for h in re.findall(r'^#include "([^"]+)"', text, re.M):
                if h not in home or home[h] == mine:
                    continue
                n += 1
                if PRIVATE.search(h) or (ok is not None and home[h] not in ok):
                    print("FAIL: %s includes %s (quant/%s)"
                          % (path, h, home[h]))
                    bad += 1
print("%d includes of another layer's header: %s" %
      (n, "ok" if not bad else "%d wrong" % bad))
sys.exit(1 if bad else 0)
