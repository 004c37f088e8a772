#!/usr/bin/env python3
"""Write the seed corpus for fuzz_safetensors into corpus/safetensors/.

Each file is a whole (tiny) safetensors file: valid ones to give the fuzzer
structure to mutate, and one per rule the reader enforces.  Run from any
directory; existing files of the same name are overwritten, others (crash
reproducers added by hand) are left alone.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "safetensors")


def st(header, data=b"", n=None):
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def t(name, dtype, shape, b, e):
    return ('"%s":{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}'
            % (name, dtype, shape, b, e))


CASES = {
    # valid
    "ok-empty": st("{}"),
    "ok-padded": st("{}      "),
    "ok-two": st("{" + t("b", "F16", "[2]", 8, 12) + ","
                 + t("a", "F32", "[2]", 0, 8) + "}", bytes(12)),
    "ok-zero-sized": st("{" + t("a", "U8", "[1]", 0, 1) + ","
                        + t("z", "BF16", "[0,4]", 1, 1) + "}", b"\x01"),
    "ok-metadata": st('{"__metadata__":{"format":"pt","k":"v"},'
                      + t("s", "F64", "[]", 0, 8) + "}", bytes(8)),
    "ok-all-dtypes": st("{" + ",".join(
        t(dt.lower(), dt, "[0]", 0, 0)
        for dt in "BOOL U8 I8 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64"
        .split()) + "}"),
    "ok-utf8": st("{" + t("\u00e9\\u00e9\\n", "I8", "[2,1]", 0, 2) + "}",
                  b"\x01\x02"),
    # broken
    "bad-short": b"\x02\x00\x00",
    "bad-zero-len": st(b"", n=0),
    "bad-len-past-file": st("{}", n=1000),
    "bad-len-huge": st("{}", n=100000001),
    "bad-json": st('{"a":'),
    "bad-not-object": st("[1,2]"),
    "bad-trailing": st("{} x"),
    "bad-unknown-dtype": st("{" + t("a", "F12", "[1]", 0, 4) + "}", bytes(4)),
    "bad-negative-dim": st("{" + t("a", "F32", "[-1]", 0, 4) + "}", bytes(4)),
    "bad-fraction-dim": st("{" + t("a", "F32", "[1.5]", 0, 4) + "}",
                           bytes(4)),
    "bad-huge-dim": st("{" + t("a", "F32", "[1e300]", 0, 4) + "}", bytes(4)),
    "bad-overflow": st("{" + t("a", "F32", "[4294967296,2147483648]", 0, 4)
                       + "}", bytes(4)),
    "bad-span": st("{" + t("a", "F32", "[2]", 0, 4) + "}", bytes(4)),
    "bad-overlap": st("{" + t("a", "F32", "[2]", 0, 8) + ","
                      + t("b", "F32", "[2]", 4, 12) + "}", bytes(12)),
    "bad-hole": st("{" + t("a", "F32", "[1]", 0, 4) + ","
                   + t("b", "F32", "[1]", 8, 12) + "}", bytes(12)),
    "bad-not-at-0": st("{" + t("a", "F32", "[1]", 4, 8) + "}", bytes(8)),
    "bad-not-covered": st("{" + t("a", "F32", "[1]", 0, 4) + "}", bytes(8)),
    "bad-duplicate": st("{" + t("a", "F32", "[1]", 0, 4) + ","
                        + t("a", "F32", "[1]", 4, 8) + "}", bytes(8)),
    "bad-utf8": st(b'{"\xff":{}}'),
    "bad-nul-escape": st("{" + t("a\\u0000", "U8", "[1]", 0, 1) + "}",
                         b"\x00"),
    "bad-metadata-value": st('{"__metadata__":{"a":1}}'),
    "bad-9-dims": st("{" + t("a", "U8", "[1,1,1,1,1,1,1,1,1]", 0, 1) + "}",
                     b"\x00"),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, blob in sorted(CASES.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(blob)
    print("%d files in %s" % (len(CASES), OUT))


if __name__ == "__main__":
    main()
