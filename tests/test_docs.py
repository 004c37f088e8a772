"""quantfs --help and man/quantfs.1 name the same commands and options.

Every command, -o option and mkmodel flag of `quantfs --help` must appear
in the rendered man page, and every -o option the man page documents must
be in --help.  Exits 0/1 and prints 'N passed, N failed'.
"""
import re
import subprocess
import sys

qf, man = sys.argv[1], sys.argv[2]
help_text = subprocess.run([qf, "--help"], capture_output=True, text=True,
                           check=True).stdout
page = subprocess.run(["groff", "-man", "-Tascii", "-P", "-cbou", man],
                      capture_output=True, text=True, check=True).stdout
page = re.sub(r"\s+", " ", page)


def tokens(text):
    opts = set(re.findall(r"-o ([a-z_]+)", text))
    flags = set(re.findall(r"(--[a-z][a-z-]+)", text))
    cmds = set(re.findall(r"quantfs (mount|umount|mkmodel|eval|status|generate|report|warm|cache ls|cache du|cache rm|cache gc)", text))
    return opts, flags, cmds


ok = bad = 0
h_opts, h_flags, h_cmds = tokens(help_text)
m_opts, m_flags, m_cmds = tokens(page)
for kind, h, m in (("-o option", h_opts, m_opts),
                   ("flag", h_flags, m_flags),
                   ("command", h_cmds, m_cmds)):
    for t in sorted(h):
        if t in m:
            ok += 1
        else:
            bad += 1
            print("FAIL: %s %s is in --help but not in quantfs(1)" % (kind, t))
for t in sorted(m_opts - h_opts):
    bad += 1
    print("FAIL: -o %s is in quantfs(1) but not in --help" % t)
ok += len(m_opts & h_opts)
print("%d passed, %d failed" % (ok, bad))
sys.exit(1 if bad else 0)
