"""The pass/fail tally of the numpy-oracle unit scripts that print
'N passed, N failed' (test_gguf_fit.py, test_gguf_gptq.py)."""
import sys


class Tally:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL:", what)

    def finish(self):
        """Print the closing line and exit 1 on any failure."""
        print("%d passed, %d failed" % (self.passed, self.failed))
        sys.exit(1 if self.failed else 0)
