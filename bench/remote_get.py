#!/usr/bin/python3
"""The remote tier's baseline: how fast the bytes of one object come back
from the server by a raw GET, on a kept-alive connection, the body read and
dropped (tests/cluster/s3py.py, S3.raw_get_throughput).  A variant served
from the remote tier on a fresh cache is compared with this figure from the
same server in the same run (issue 21: goal >= 0.8x).

Standalone, it starts a throwaway Ceph (tests/cluster/ceph.py: one mon, one
memstore OSD, radosgw on 127.0.0.1), PUTs SIZE MiB of random bytes, GETs
them back (best of 3, MB/s = 10^6 bytes/s, the bytes checked once), and
stops Ceph.  Figures are for one machine; memstore keeps objects in RAM, so
this is the server's and the loopback's speed, not a disk's.

usage: bench/remote_get.py [--size MiB] [--repeat N]
   or: from remote_get import baseline; baseline(s3, key)
"""
import argparse
import hashlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
from ceph import Ceph  # noqa: E402
from s3py import S3  # noqa: E402


def baseline(s3, key, repeat=3):
    """MB/s of a raw GET of key (best of repeat): the benchmark's 1.0x."""
    return s3.raw_get_throughput(key, repeat)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64, help="MiB (64)")
    ap.add_argument("--repeat", type=int, default=3, help="GETs (3)")
    a = ap.parse_args()
    ok, why = Ceph.available()
    if not ok:
        print("remote_get: " + why)
        return 77
    data = os.urandom(a.size << 20)
    with Ceph() as c:
        s3 = S3.of(c, "bench")
        s, _, body = s3.create_bucket()
        assert s == 200, (s, body)
        t0 = time.perf_counter()
        s, _, body = s3.put("blob", data)
        put_s = time.perf_counter() - t0
        assert s == 200, (s, body)
        s, _, got = s3.get("blob")
        assert s == 200 and hashlib.sha256(got).digest() == \
            hashlib.sha256(data).digest(), "GET returned other bytes"
        del got
        mbs = baseline(s3, "blob", a.repeat)
        print("PUT %d MiB: %.1f MB/s (%.2f s, with the SHA-256 of the body)"
              % (a.size, len(data) / put_s / 1e6, put_s))
        print("raw GET %d MiB: %.1f MB/s (best of %d)" % (a.size, mbs,
                                                          a.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
