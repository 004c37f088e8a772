"""The structure of the code holds against doc/architecture.json.

For every C/CUDA file of common/ cache/ quant/ fs/ mounts/: its arrows are
its #include lines and the functions it calls that another file defines
(non-static definitions, found by a small C scanner: comments, strings and
preprocessor lines stripped, definitions are the brace blocks at file
level that follow a parameter list).  Checks:
  - each arrow between two parts is one the rules allow ('uses', followed
    transitively) and none is a 'never' arrow, even through other parts;
  - each outside header is included only by the parts 'external' names,
    and a private header (architecture.json 'private') only by files of
    its own folder;
  - no circle of files that include or call each other (a header is its
    own node: including it is an arrow to it, calling a function is an
    arrow to the .c that defines it);
  - no hand-written file over limits.file_lines, no function over
    limits.function_lines.
Prints what it measured (files, arrows, largest file, longest function)
and every breach; exits 0/1.  usage: test_layers.py [ROOT]
"""
import fnmatch
import json
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..")
RULES = json.load(open(os.path.join(ROOT, "doc", "architecture.json")))
DIRS = ("common", "cache", "quant", "fs", "mounts")
EXTS = (".c", ".h", ".cu")


def sources():
    out = []
    for d in DIRS:
        for base, _, names in os.walk(os.path.join(ROOT, d)):
            for n in names:
                if n.endswith(EXTS):
                    out.append(os.path.relpath(os.path.join(base, n), ROOT))
    return sorted(out)


def part_of(path):
    for name, pat in RULES["parts"]:
        if fnmatch.fnmatch(path, pat) and \
                ("/" not in pat[len(pat.rstrip("*")):]):
            # '*' must not reach into a sub-folder: quant/* is quant/x.h
            rest = path[len(pat.rstrip("*")):]
            if "/" in rest:
                continue
            return name
    return None


def strip(text):
    """Comments, string and char literals and preprocessor lines blanked
    (newlines kept, so line numbers stay)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + " " * (j - i - 1) + c)
            i = j + 1
        elif c == "#" and (i == 0 or text[i - 1] == "\n"):
            j = i
            while True:
                k = text.find("\n", j)
                if k < 0:
                    k = n
                    break
                if text[k - 1] != "\\":
                    break
                j = k + 1
            out.append(re.sub(r"[^\n]", " ", text[i:k]))
            i = k
        else:
            out.append(c)
            i += 1
    return "".join(out)


DEF = re.compile(r"(\w+)\s*\(([^;{}]*)\)\s*(?:__attribute__\s*\(\(.*\)\)\s*)?$",
                 re.S)


def functions(code):
    """[(name, static, first line, last line)] of the definitions."""
    out, depth, start, i = [], 0, 0, 0
    line = 1
    stmt_start, stmt_line = 0, 1
    while i < len(code):
        c = code[i]
        if c == "\n":
            line += 1
        if depth == 0 and c == ";":
            stmt_start, stmt_line = i + 1, line
        elif c == "{":
            if depth == 0:
                head = re.sub(r"__attribute__\s*\(\(.*?\)\)", lambda m:
                              re.sub(r"[^\n]", " ", m.group(0)),
                              code[stmt_start:i], flags=re.S)
                m = DEF.search(head.rstrip())
                if m and "=" not in head[:m.start()] and \
                        m.group(1) not in ("if", "for", "while", "switch"):
                    first = stmt_line + head[:len(head) - len(
                        head.lstrip())].count("\n")
                    start = (m.group(1), bool(re.search(
                        r"\bstatic\b", head[:m.start()])), first)
                else:
                    start = None
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                if start:
                    out.append(start + (line,))
                start = None
                stmt_start, stmt_line = i + 1, line
        i += 1
    return out


def main():
    files = sources()
    text = {f: open(os.path.join(ROOT, f), errors="replace").read()
            for f in files}
    code = {f: strip(t) for f, t in text.items()}
    bad = []
    unit = {f: f for f in files}
    by_base = {}
    for f in files:
        by_base.setdefault(os.path.basename(f), []).append(f)
    defs, where = {}, {}
    longest = (0, "")
    for f in files:
        defs[f] = functions(code[f])
        for name, static, a, b in defs[f]:
            if not static and not f.endswith(".h"):
                where.setdefault(name, f)
            if b - a + 1 > longest[0]:
                longest = (b - a + 1, "%s:%d %s" % (f, a, name))
            if b - a + 1 > RULES["limits"]["function_lines"]:
                bad.append("%s:%d: function %s is %d lines (limit %d)" % (
                    f, a, name, b - a + 1,
                    RULES["limits"]["function_lines"]))
    # arrows: includes and calls
    arrows = set()
    for f in files:
        for m in re.finditer(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]',
                             text[f], re.M):
            inc = m.group(2)
            if m.group(1) == '"':
                cands = [g for g in by_base.get(os.path.basename(inc), [])]
                near = [g for g in cands if os.path.normpath(os.path.join(
                    os.path.dirname(f), inc)) == g]
                cands = near or cands
                if len(cands) == 1:
                    arrows.add((f, cands[0], "includes"))
                    if any(fnmatch.fnmatch(os.path.basename(inc), p)
                           for p in RULES["private"]) and \
                            os.path.dirname(cands[0]) != os.path.dirname(f):
                        bad.append("%s: includes %s, private to %s/" % (
                            f, inc, os.path.dirname(cands[0])))
                elif not cands:
                    bad.append("%s: includes %s, which is not in the tree"
                               % (f, inc))
                else:
                    bad.append("%s: includes %s, which names %d files" % (
                        f, inc, len(cands)))
            else:
                for ext, parts in RULES["external"].items():
                    if inc.startswith(ext) and part_of(f) not in parts:
                        bad.append("%s: includes <%s>, which only %s may"
                                   % (f, inc, ", ".join(parts)))
        if f.endswith(".h"):
            continue    # a header declares; its inline code calls nothing
        own = {d[0] for d in defs[f]}
        for name in set(re.findall(r"\b[A-Za-z_]\w*\b", code[f])):
            g = where.get(name)
            if g and g != f and name not in own and \
                    unit[g] != unit[f]:
                arrows.add((f, g, "calls " + name))
    # parts
    uses = RULES["uses"]

    def reach(p):
        seen, todo = set(), [p]
        while todo:
            q = todo.pop()
            for r in uses.get(q, []):
                if r not in seen:
                    seen.add(r)
                    todo.append(r)
        return seen
    allowed = {p: reach(p) for p in uses}
    for name, pat in RULES["parts"]:
        if name not in uses:
            bad.append("doc/architecture.json: part %s has no 'uses'" % name)
    for a, b in ((n[0], n[1]) for n in RULES["never"]):
        if b in allowed.get(a, ()):
            bad.append("doc/architecture.json: %s may use %s through "
                       "'uses', but 'never' forbids it" % (a, b))
    unparted = [f for f in files if part_of(f) is None]
    for f in unparted:
        bad.append("%s: in no part of doc/architecture.json" % f)
    seen_pairs = set()
    for a, b, why in sorted(arrows):
        pa, pb = part_of(a), part_of(b)
        if pa is None or pb is None or pa == pb:
            continue
        extra = set()
        for path, part, _ in RULES.get("exceptions", []):
            if path == a:
                extra |= {part} | allowed.get(part, set())
        if pb not in allowed.get(pa, ()) and pb not in extra:
            key = (a, b)
            if key not in seen_pairs:
                seen_pairs.add(key)
                bad.append("%s (%s) -> %s (%s): %s; %s may use only %s" % (
                    a, pa, b, pb, why, pa,
                    ", ".join(sorted(allowed.get(pa, ()))) or "nothing"))
    # circles: strongly connected components of units (Tarjan)
    graph = {}
    for a, b, _ in arrows:
        if unit[a] != unit[b]:
            graph.setdefault(unit[a], set()).add(unit[b])
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        sccs.append(sorted(comp))
    for v in sorted(set(unit.values())):
        if v not in index:
            visit(v)
    for comp in sccs:
        bad.append("circle of %d files: %s" % (len(comp), " ".join(comp)))
    # sizes
    biggest = (0, "")
    for f in files:
        n = text[f].count("\n")
        if os.path.basename(f) in RULES["limits"]["generated"]:
            continue
        biggest = max(biggest, (n, f))
        if n > RULES["limits"]["file_lines"]:
            bad.append("%s: %d lines (limit %d)" % (
                f, n, RULES["limits"]["file_lines"]))
    print("layers: %d files in %d parts, %d arrows between files, %d circles;"
          " largest hand-written file %s (%d lines); longest function %s "
          "(%d lines)" % (len(files), len({part_of(f) for f in files}),
                          len(arrows), len(sccs), biggest[1], biggest[0],
                          longest[1], longest[0]))
    for b in bad:
        print("FAIL " + b)
    print("%d passed, %d failed" % (1 if not bad else 0, len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
