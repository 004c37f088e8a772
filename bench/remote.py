#!/usr/bin/python3
"""The remote tier: a variant served from the bucket on a fresh cache,
against a raw GET of the same bytes from the same server in the same run
(the goal is >= 0.8x) and against producing it locally; and the bucket's
objects and requests per variant.

Starts a throwaway Ceph (tests/cluster/ceph.py: one mon, one memstore OSD,
radosgw on 127.0.0.1) and generates a Llama model (quantfs mkmodel,
--layers L --hidden H).  Machine A mounts it with -o remote and reads
rtn_w4_g128/model.safetensors (produced locally, then published); machine
B, another cache, reads the same file (every value from the bucket,
verified).  The baseline GETs every value object the manifest names, one
after the other on one kept-alive connection (tests/cluster/s3py.py), the
same bytes B fetched.  Then the same for gptq_w4_g128 on a 6-layer model
(production: a GPTQ job; from the bucket: its values).  MB/s = 10^6
bytes/s of the variant file; best of --repeat fresh-cache reads, each
after the variant's lookup (which, on a fresh cache, hashes the source
once per machine: not the remote tier's cost).  A second baseline is one
GET of a single object holding all the variant's value bytes: what the
server gives when per-request costs vanish.

Figures are for one machine; memstore keeps objects in RAM, so the
bucket's side is the server's and the loopback's speed.

usage: bench/remote.py [--quantfs PATH] [--layers 8] [--hidden 1024]
                       [--repeat 3]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
sys.path.insert(0, os.path.join(ROOT, "tests", "mount"))


def setup(mnt, rel):
    """Look the variant up first (its setup, and the source's content hash
    on a fresh cache: once per machine and file, not per variant)."""
    os.stat(os.path.join(mnt, os.path.dirname(rel), "config.json"))


def read_all(path):
    """Seconds to read path through, and its bytes."""
    t0 = time.perf_counter()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            n += len(b)
    return time.perf_counter() - t0, n


def remote_state(mnt):
    return json.loads(os.getxattr(mnt, "user.quantfs.remote"))


def wait_published(mnt):
    while remote_state(mnt)["publishing"]:
        time.sleep(0.05)


def one(qft, s3, models, cache_root, rel, opts, repeat):
    """Produce rel on machine A, then serve it on fresh caches."""
    ro = ["remote=s3://%s/b" % s3.bucket, "remote_endpoint=http://%s:%d" % (s3.host, s3.port)]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=s3.access_key,
               AWS_SECRET_ACCESS_KEY=s3.secret_key)
    with qft.Mount(models, cache=os.path.join(cache_root, "a"),
                   opts=opts + ro, env=env, debug=False) as a:
        setup(a.mnt, rel)
        local_s, size = read_all(os.path.join(a.mnt, rel))
        wait_published(a.mnt)
        sa = remote_state(a.mnt)
    man = [o for o in s3.list("b/v1/manifests/")]
    remote = []
    for i in range(repeat):
        with qft.Mount(models, cache=os.path.join(cache_root, "b%d" % i),
                       opts=opts + ro, env=env, debug=False) as b:
            setup(b.mnt, rel)
            t, n = read_all(os.path.join(b.mnt, rel))
            assert n == size
            remote.append(t)
            sb = remote_state(b.mnt)
            assert sb["bad"] == 0 and sb["imported"] > 0, sb
    # the same bytes by raw GETs: every value the variant's manifest names
    vid = None
    for o in man:
        s, _, body = s3.get(o["key"])
        m = json.loads(body)
        if m["label"].endswith(rel.split("/")[-2]):
            vid = m
    vals = [v[1] for v in vid["values"]]
    raw = []
    for i in range(repeat):
        t0 = time.perf_counter()
        got = 0
        for sha in vals:
            s, _, body = s3.get("b/v1/values/" + sha)
            assert s == 200
            got += len(body)
        raw.append(time.perf_counter() - t0)
    vbytes = sum(v[2] for v in vid["values"])
    # and one object of those bytes, one GET (tests/cluster's baseline)
    blob = b"".join(s3.get("b/v1/values/" + sha)[2] for sha in vals)
    assert s3.put("b/bench/blob", blob)[0] == 200
    one_mbs = s3.raw_get_throughput("b/bench/blob", repeat)
    s3.delete("b/bench/blob")
    return {"one_get_mbs": one_mbs,"file": rel, "size": size, "values": len(vals),
            "value_bytes": vbytes, "local_s": local_s,
            "remote_s": min(remote), "raw_s": min(raw),
            "a": sa, "b": sb,
            "objects": len(s3.list("b/v1/"))}


def report(r):
    mb = r["size"] / 1e6
    print("%s: %.1f MB file, %d values (%.1f MB)" % (
        r["file"], mb, r["values"], r["value_bytes"] / 1e6))
    print("  produced locally      %7.2f s  %8.1f MB/s" % (
        r["local_s"], mb / r["local_s"]))
    print("  from the remote tier  %7.2f s  %8.1f MB/s  (fresh cache, "
          "every value verified)" % (r["remote_s"], mb / r["remote_s"]))
    print("  raw GETs, same bytes  %7.2f s  %8.1f MB/s" % (
        r["raw_s"], r["value_bytes"] / 1e6 / r["raw_s"]))
    print("  one raw GET of them   %7.2f s  %8.1f MB/s  (one object)" % (
        r["value_bytes"] / 1e6 / r["one_get_mbs"], r["one_get_mbs"]))
    tier = r["size"] / 1e6 / r["remote_s"]
    print("  remote tier vs raw GETs of its objects: %.2fx, vs one raw GET "
          "of the same bytes: %.2fx, vs local production: %.1fx" % (
              tier / (r["value_bytes"] / 1e6 / r["raw_s"]),
              tier / r["one_get_mbs"], r["local_s"] / r["remote_s"]))
    a, b = r["a"], r["b"]
    print("  bucket: %d objects under the prefix; producer A: PUT %d, HEAD "
          "%d, GET %d, LIST %d; reader B: GET %d, HEAD %d, PUT %d" % (
              r["objects"], a["put"], a["head"], a["get"], a["list"],
              b["get"], b["head"], b["put"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quantfs", default=os.path.join(
        ROOT, "build", "mounts", "quantfs"))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    os.environ["QUANTFS"] = os.path.abspath(a.quantfs)
    import qftest as qft
    from ceph import Ceph
    from s3py import S3
    ok, why = Ceph.available()
    if not ok:
        print("remote: " + why)
        return 77
    tmp = tempfile.mkdtemp(prefix="qfbench.")
    try:
        big = os.path.join(tmp, "big")
        qft.mkmodel(os.path.join(big, "m"), "--layers", a.layers,
                    "--hidden", a.hidden, "--inter", a.hidden * 11 // 4,
                    "--heads", a.hidden // 64, "--kv-heads",
                    a.hidden // 256, "--seed", 3)
        six = os.path.join(tmp, "six")
        qft.mkmodel(os.path.join(six, "m"), "--layers", 6, "--hidden", 384,
                    "--inter", 1024, "--heads", 6, "--kv-heads", 2,
                    "--seed", 12)
        with Ceph(verbose=False) as c:
            out = []
            for name, models, rel, opts in (
                    ("rtn", big, "m/rtn_w4_g128/model.safetensors", []),
                    ("gptq", six, "m/gptq_w4_g128/model.safetensors",
                     ["calib_n=16", "calib_len=128"])):
                s3 = S3.of(c, "bench-" + name)
                s3.create_bucket()
                r = one(qft, s3, models, os.path.join(tmp, name), rel, opts,
                        a.repeat)
                report(r)
                out.append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
