"""The cluster tier's tests (issue 21): quantfs daemons sharing variants
through S3-compatible object storage, here a throwaway single-node Ceph
(ceph.py) with radosgw on 127.0.0.1.

One Ceph per run: started before the first test, shared by all, stopped at
the end (also on failure and on SIGTERM); each test works in a bucket of
its own.  s3py.py, a client independent of quantfs's, is the oracle: it
lists and reads what the daemons wrote and plays the other machines.  The
fixture tests come first: they check that the server does what the
cluster's single flight relies on (atomic conditional PUT, data surviving a
radosgw restart), so a failure there is the fixture's, not quantfs's.

Without the Ceph packages the whole file skips (exit 77) saying what to
install; without /dev/fuse only the tests that mount skip.

usage: test_cluster.py [test_name ...]   (env QUANTFS, QF_SHARED as for
tests/mount)
"""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "mount"))
from ceph import Ceph, scratch_dir  # noqa: E402
from s3py import S3, etag, sign, uri_encode, EMPTY_SHA256  # noqa: E402
from qftest import Mount, mkmodel, run_tests, SkipTest, sha  # noqa: E402

CEPH = None             # the run's Ceph, set in __main__


# -- helpers for the tests ---------------------------------------------------

def new_bucket(what):
    """An S3 client of a fresh bucket named after the test."""
    name = "%s-%s" % (what, secrets.token_hex(4))
    s3 = S3.of(CEPH, name)
    s, _, body = s3.create_bucket()
    assert s == 200, (s, body)
    return s3


def bucket_state(s3, prefix=""):
    """{key: etag} of every object: compare before and after to prove a
    node wrote nothing."""
    return {o["key"]: o["etag"] for o in s3.list(prefix)}


def reader(s3, uid=None):
    """(keys, S3 client) of a new user that may only read s3's bucket
    (GET, HEAD, list: a bucket policy), as the issue's inference nodes."""
    uid = uid or "reader-" + secrets.token_hex(4)
    keys = CEPH.add_user(uid)
    arn = "arn:aws:s3:::" + s3.bucket
    s = s3.put_policy({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam:::user/" + uid]},
        "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [arn, arn + "/*"]}]})
    assert s in (200, 204), s
    return keys, S3(CEPH.endpoint, keys[0], keys[1], s3.bucket, CEPH.region)


def need_fuse():
    if not os.path.exists("/dev/fuse"):
        raise SkipTest("/dev/fuse is absent, no FUSE mount is possible")


class Machine:
    """One simulated machine: its copy of the model and its own cache."""

    def __init__(self, name, models, model, cache):
        self.name = name
        self.models = models    # the source dir a daemon mounts
        self.model = model      # models/<model name>
        self.cache = cache


def two_machines(tmp, src=None, name="tiny"):
    """Two machines with the same model bytes under different paths and
    different mtimes (a day apart), so that only a content identity can
    match them.  src: a model dir to copy (e.g. tests/golden/stories260K);
    None: a generated one (`quantfs mkmodel`, seed 21, as tests/mount)."""
    if src is None:
        src = mkmodel(os.path.join(tmp, "made", name), "--seed", 21)
    out = []
    for i, who in enumerate(("a", "b")):
        models = os.path.join(tmp, who, "models")
        model = os.path.join(models, name)
        shutil.copytree(src, model)
        t = time.time() - 86400 * (i + 1)
        for f in os.listdir(model):
            os.utime(os.path.join(model, f), (t, t))
        out.append(Machine(who, models, model,
                           os.path.join(tmp, who, "cache")))
    return out


# The -o options that point a daemon at the bucket.  Not final: the lead
# sets them once quantfs has them; each is formatted with endpoint,
# bucket, region and what remote_opts() is given.
REMOTE_OPTS = ("remote=s3://{bucket}/fleet", "remote_endpoint={endpoint}")


def remote_opts(s3, templates=REMOTE_OPTS, **extra):
    return [t.format(endpoint=CEPH.endpoint, bucket=s3.bucket,
                     region=CEPH.region, **extra) for t in templates]


def mount_remote(machine, s3, opts=(), templates=REMOTE_OPTS, env=None,
                 **extra):
    """A quantfs Mount (not yet entered) of machine's models on s3's
    bucket, credentials in the environment (never in the options)."""
    need_fuse()
    return Mount(machine.models, cache=machine.cache,
                 opts=list(opts) + remote_opts(s3, templates, **extra),
                 env=dict(CEPH.env(), **(env or {})))


def productions(m):
    """Variants the daemon of Mount m produced itself (its log lines)."""
    return re.findall(r"produced (\S+) in", m.stderr())


# -- the fixture -------------------------------------------------------------

AWS_AK = "AKIAIOSFODNN7EXAMPLE"
AWS_SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_HOST = "examplebucket.s3.amazonaws.com"
AWS_DATE = "20130524T000000Z"
# AWS's worked examples of SigV4 for S3 (the S3 API reference, "Examples:
# signature calculations"): method, path, query, extra headers, body,
# signature
AWS_EXAMPLES = [
    ("GET", "/test.txt", None, {"Range": "bytes=0-9"}, b"",
     "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
    ("PUT", "/test$file.text", None,
     {"Date": "Fri, 24 May 2013 00:00:00 GMT",
      "x-amz-storage-class": "REDUCED_REDUNDANCY"},
     b"Welcome to Amazon S3.",
     "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"),
    ("GET", "/", {"lifecycle": ""}, {}, b"",
     "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    ("GET", "/", {"max-keys": 2, "prefix": "J"}, {}, b"",
     "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
]


def test_fixture_oracle():
    """s3py signs AWS's examples right, and the server checks what the
    tests rely on: signatures, body hashes, listing by pages."""
    import hashlib
    for method, path, query, extra, body, want in AWS_EXAMPLES:
        ph = hashlib.sha256(body).hexdigest()
        h = dict(extra, Host=AWS_HOST, **{"x-amz-date": AWS_DATE,
                                          "x-amz-content-sha256": ph})
        got = sign(method, uri_encode(path, keep_slash=True), query, h, ph,
                   AWS_AK, AWS_SK, "us-east-1", AWS_DATE)
        assert got.endswith("Signature=" + want), (path, got)
    s3 = new_bucket("oracle")
    keys = ["k/%d" % i for i in range(7)] + ["k/odd name+=&%.bin"]
    for k in keys:
        assert s3.put(k, k.encode())[0] == 200
    assert [o["key"] for o in s3.list("k/", max_keys=3)] == sorted(keys)
    assert s3.get("k/odd name+=&%.bin")[2] == b"k/odd name+=&%.bin"
    assert s3.get("k/3", range=(2, 2))[2] == b"3"
    s, h = s3.head("k/1")
    assert s == 200 and h["content-length"] == "3", (s, h)
    assert s3.delete("k/1") == 204 and s3.head("k/1")[0] == 404
    # a secret key one character off (never the same one: the key is
    # random, and may begin with the character put in)
    wrong = ("y" if CEPH.secret_key[0] == "x" else "x") + CEPH.secret_key[1:]
    bad = S3(CEPH.endpoint, CEPH.access_key, wrong, s3.bucket)
    got = bad.get("k/2")[0]
    assert got == 403, got                  # the server checks signatures
    s, _, body = s3.request("PUT", "k/9", body=b"abc", headers={
        "x-amz-content-sha256": EMPTY_SHA256})
    assert s == 400 and b"XAmzContentSHA256Mismatch" in body, (s, body)


def test_fixture_reader():
    """A read-only user reads and lists the bucket and cannot write it."""
    s3 = new_bucket("ro")
    assert s3.put("v/1", b"one")[0] == 200
    _, ro = reader(s3)
    assert ro.get("v/1")[:3:2] == (200, b"one")
    assert ro.head("v/1")[0] == 200
    assert [o["key"] for o in ro.list("v/")] == ["v/1"]
    assert ro.put("v/2", b"two")[0] == 403
    assert ro.put("v/3", b"x", if_none_match=True)[0] == 403
    assert ro.delete("v/1") == 403
    assert bucket_state(s3) == {"v/1": etag(s3.head("v/1")[1])}


def race(s3, key, n, **cond):
    """n threads PUT key under the same condition at once (connections
    opened before the start), each its own body (a nonce: equal bodies
    have equal ETags, and a loser's If-Match could then match the winner's
    write); the statuses in thread order, and the body the winner sent."""
    out = [None] * n
    bodies = [b"writer %d %s" % (i, secrets.token_hex(8).encode())
              for i in range(n)]
    go = threading.Barrier(n)

    def put(i):
        s3.head(key)                        # open this thread's connection
        go.wait()
        out[i] = s3.put(key, bodies[i], **cond)[0]
    th = [threading.Thread(target=put, args=(i,)) for i in range(n)]
    [t.start() for t in th]
    [t.join() for t in th]
    s3.close()
    return out, bodies[out.index(200)] if 200 in out else None


def test_fixture_conditions():
    """Create-once and compare-and-swap are atomic on this server: of 8
    writers at once exactly one wins, the others get 412."""
    s3 = new_bucket("cond")
    s, h, _ = s3.put("lease", b"one", if_none_match=True)
    assert s == 200
    assert s3.put("lease", b"two", if_none_match=True)[0] == 412
    assert s3.get("lease")[2] == b"one"
    s, h2, _ = s3.put("lease", b"three", if_match=etag(h))
    assert s == 200, s
    assert s3.put("lease", b"four", if_match=etag(h))[0] == 412  # stale
    assert s3.put("lease", b"five", if_match="0" * 32)[0] == 412
    assert s3.get("lease")[2] == b"three"
    for rnd in range(3):
        key = "race%d" % rnd
        got, won = race(s3, key, 8, if_none_match=True)  # create once
        assert sorted(got) == [200] + [412] * 7, got
        assert s3.get(key)[2] == won
        seen = etag(s3.head(key)[1])
        got, won = race(s3, key, 8, if_match=seen)  # take over, as a lease
        # radosgw 16.2: a loser of an If-Match race often gets 500
        # UnknownError (ECANCELED inside), not 412; it wrote nothing
        assert got.count(200) == 1 and set(got) <= {200, 412, 500}, got
        assert s3.get(key)[2] == won


def test_fixture_kill_restart():
    """radosgw killed: requests fail with a connection error; started
    again on the same endpoint, it serves the data (mon and OSD kept it)."""
    s3 = new_bucket("kill")
    data = os.urandom(1 << 20)
    assert s3.put("blob", data)[0] == 200
    CEPH.kill_rgw()
    try:
        s3.get("blob")
        raise AssertionError("GET answered with radosgw killed")
    except ConnectionError:
        pass
    print("     radosgw restarted in %.1f s" % CEPH.start_rgw())
    s, _, body = s3.get("blob")
    assert s == 200 and body == data


def test_fixture_two_machines():
    """The two machines hold the same bytes with other mtimes, and each
    mounts (here without the remote tier: no remote options) with the
    credentials in its environment."""
    tmp = tempfile.mkdtemp(prefix="qfcluster.")
    try:
        a, b = two_machines(tmp)
        names = sorted(os.listdir(a.model))
        assert names == sorted(os.listdir(b.model)) and names
        for f in names:
            pa, pb = os.path.join(a.model, f), os.path.join(b.model, f)
            assert sha(pa) == sha(pb), f
            assert os.stat(pa).st_mtime != os.stat(pb).st_mtime, f
        cred = CEPH.credentials_file(os.path.join(tmp, "credentials"))
        assert os.stat(cred).st_mode & 0o777 == 0o600
        assert CEPH.secret_key in open(cred).read()
        s3 = new_bucket("two")
        rel = os.path.join("tiny", "rtn_w4_g128", "model.safetensors")
        with mount_remote(a, s3, templates=()) as ma, \
                mount_remote(b, s3, templates=()) as mb:
            assert ma.env["AWS_SECRET_ACCESS_KEY"] == CEPH.secret_key
            assert CEPH.secret_key not in " ".join(ma.args)
            assert sha(os.path.join(ma.mnt, rel)) == \
                sha(os.path.join(mb.mnt, rel))
            assert productions(ma) and productions(mb)  # no remote yet
        assert bucket_state(s3) == {}
    finally:
        shutil.rmtree(tmp)


# -- quantfs on the cluster ---------------------------------------------------

from qftest import QUANTFS                          # noqa: E402

SIX = ["calib_n=16", "calib_len=128"]   # a GPTQ job of a few seconds
SMALL = ["calib_n=4", "calib_len=64"]    # a quick measurement (mixed)
GPTQ = "gptq_w4_g128/model.safetensors"


def remote_state(m):
    return json.loads(os.getxattr(m.mnt, "user.quantfs.remote"))


def published(m, timeout=120):
    """Wait until m's daemon has no publication running."""
    t0 = time.time()
    while remote_state(m)["publishing"]:
        assert time.time() - t0 < timeout, m.stderr()
        time.sleep(0.1)


def six_layer(tmp):
    """Two machines with a 6-layer model (a GPTQ job takes seconds)."""
    src = mkmodel(os.path.join(tmp, "made", "m"), "--layers", 6, "--hidden",
                  384, "--inter", 1024, "--heads", 6, "--kv-heads", 2,
                  "--seed", 12)
    return two_machines(tmp, src=src, name="m")


def uninterrupted(models, rel):
    """rel's bytes produced in one go, with no remote tier at all."""
    with Mount(models, opts=SIX) as m:
        return sha(os.path.join(m.mnt, rel))


def layer_lines(log):
    return re.findall(r"layer (\d+)/(\d+) in ", log)


def test_fleet_shares_a_variant():
    """A produces; B, another copy of the model with other mtimes and
    another cache, serves identical bytes with 0 productions, every value
    fetched from the bucket and verified: an RTN variant, its config, a
    GGUF view, and a mixed variant (B measures the widths itself, finds
    A's, and takes A's bytes)."""
    tmp = scratch_dir("qfcl.")
    a, b = two_machines(tmp)
    s3 = new_bucket("share")
    files = ["rtn_w4_g128/model.safetensors", "rtn_w4_g128/config.json",
             "kq4_k_m/model.gguf", "mixed_dyn/model.safetensors"]
    with mount_remote(a, s3, opts=SMALL) as ma:
        want = [sha(os.path.join(ma.mnt, "tiny", f)) for f in files]
        assert productions(ma), ma.stderr()
        published(ma)
        st = remote_state(ma)
        assert st["role"] == "produce" and st["published"] > 0, st
    labels = [json.loads(s3.get(o["key"])[2])["label"]
              for o in s3.list("fleet/v1/manifests/")]
    assert "tiny/rtn_w4_g128" in labels and \
        [x for x in labels if "kq4_k_m" in x], labels
    with mount_remote(b, s3, opts=SMALL) as mb:
        got = [sha(os.path.join(mb.mnt, "tiny", f)) for f in files]
        st = remote_state(mb)
        log = mb.stderr()
    assert got == want
    assert productions(mb) == [], productions(mb)
    assert st["imported"] > 0 and st["bad"] == 0, st
    assert "every value from the remote tier, verified" in log, log
    print("     B: %d values imported with %d GET, %d HEAD, 0 produced" %
          (st["imported"], st["get"], st["head"]))


def test_fleet_one_job():
    """A and B read one calibrated variant at once: one job in the fleet
    (6 layer lines over both logs), B follows A's progress, and both serve
    the bytes of an uninterrupted run without the remote tier."""
    tmp = scratch_dir("qfcl.")
    a, b = six_layer(tmp)
    want = uninterrupted(a.models, "m/" + GPTQ)
    s3 = new_bucket("onejob")
    with mount_remote(a, s3, opts=SIX) as ma, \
            mount_remote(b, s3, opts=SIX) as mb:
        out = {}
        ta = threading.Thread(target=lambda: out.setdefault(
            "a", sha(os.path.join(ma.mnt, "m", GPTQ))))
        ta.start()
        t0 = time.time()
        while "sampling" not in ma.stderr():
            assert time.time() - t0 < 60, ma.stderr()
            time.sleep(0.05)
        tb = threading.Thread(target=lambda: out.setdefault(
            "b", sha(os.path.join(mb.mnt, "m", GPTQ))))
        tb.start()
        seen = []
        while tb.is_alive():
            try:
                seen.append(json.loads(os.getxattr(os.path.join(
                    mb.mnt, "m", "gptq_w4_g128"), "user.quantfs.progress")))
            except OSError:
                pass
            time.sleep(0.2)
        ta.join()
        pid_a = ma.proc.pid
        status = subprocess.run([QUANTFS, "status", mb.mnt],
                                capture_output=True, text=True).stdout
        la, lb = ma.stderr(), mb.stderr()
    assert out == {"a": want, "b": want}, (out, want)
    assert len(layer_lines(la)) == 6 and layer_lines(lb) == [], lb
    holder = [x for x in seen if x.get("producer")]
    assert holder and "pid %d" % pid_a in holder[0]["producer"], seen
    assert any(x["layers_done"] >= 1 for x in holder), holder
    assert "remote tier" in status, status
    print("     B followed %s through layers %s" % (
        holder[0]["producer"], sorted({x["layers_done"] for x in holder})))


def test_fleet_takeover_after_kill9():
    """The producer is killed (-9) after 2 layers: B takes the lease over
    once it expires (4 s), resumes after the last published checkpoint
    with the cluster's calibration set, and serves the bytes of an
    uninterrupted run."""
    tmp = scratch_dir("qfcl.")
    a, b = six_layer(tmp)
    want = uninterrupted(a.models, "m/" + GPTQ)
    s3 = new_bucket("takeover")
    opts = SIX + ["remote_lease=4"]
    ma = mount_remote(a, s3, opts=opts)
    ma.__enter__()
    try:
        with mount_remote(b, s3, opts=opts) as mb:
            ra = subprocess.Popen(["cat", os.path.join(ma.mnt, "m", GPTQ)],
                                  stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
            t0 = time.time()
            while ma.stderr().count("checkpoint (") < 2:
                assert time.time() - t0 < 120, ma.stderr()
                time.sleep(0.01)
            # Frozen at once: with fast kernels A finishes the 6 layers
            # in well under a second.  Stopped, it renews no lease, as
            # if dead; B must be following it before the kill.
            os.kill(ma.proc.pid, signal.SIGSTOP)
            out = {}
            tb = threading.Thread(target=lambda: out.setdefault(
                "b", sha(os.path.join(mb.mnt, "m", GPTQ))))
            tb.start()
            while "following its progress" not in mb.stderr():
                assert time.time() - t0 < 120, mb.stderr()
                time.sleep(0.05)
            ma.kill9()
            killed = time.time()
            ra.wait(timeout=30)
            done_a = len(layer_lines(ma.stderr()))
            tb.join(timeout=300)
            took = time.time() - killed
            lb = mb.stderr()
    finally:
        if ma.proc:
            ma.umount()
    assert out.get("b") == want, (out, want)
    assert "took over the remote lease" in lb, lb
    k = int(re.search(r"resuming from a checkpoint after (\d+) layers",
                      lb).group(1))
    assert 2 <= k <= done_a, (k, done_a)
    assert len(layer_lines(lb)) == 6 - k, lb
    assert "calibration set from the remote tier" in lb or k == 6, lb
    print("     A did %d layers, B resumed after %d, done %.1f s after the "
          "kill" % (done_a, k, took))


def test_fleet_tampered_value():
    """A value overwritten in the bucket is detected (its SHA-256), never
    served: the node produces that tensor itself and serves the right
    bytes."""
    tmp = scratch_dir("qfcl.")
    a, b = two_machines(tmp)
    s3 = new_bucket("tamper")
    rel = "tiny/rtn_w4_g128/model.safetensors"
    with mount_remote(a, s3) as ma:
        want = sha(os.path.join(ma.mnt, rel))
        published(ma)
    vals = s3.list("fleet/v1/values/")
    victim = max(vals, key=lambda o: o["size"])
    s, _, body = s3.get(victim["key"])
    bad = bytes([body[0] ^ 1]) + body[1:]
    assert s3.put(victim["key"], bad)[0] == 200
    with mount_remote(b, s3) as mb:
        got = sha(os.path.join(mb.mnt, rel))
        published(mb)                       # the prefetch is over
        st = remote_state(mb)
        log = mb.stderr()
    assert got == want
    assert "fails verification" in log and "producing it here" in log, log
    # each value with those bytes fetched twice (by the prefetch, and
    # again by the reader), then produced here
    shared = sum(v[1] == victim["key"].rsplit("/", 1)[1]
                 for o in s3.list("fleet/v1/manifests/")
                 for v in json.loads(s3.get(o["key"])[2])["values"])
    assert shared >= 1 and 2 * shared <= st["bad"] <= 4 * shared, \
        (st, shared)
    assert 1 <= len(productions(mb)) <= shared, productions(mb)


def test_fleet_read_only_node():
    """A remote_role=read node writes nothing (the bucket's listing is the
    same before and after): it serves what is published, produces the rest
    locally unpublished, and refuses a calibrated variant nobody makes."""
    tmp = scratch_dir("qfcl.")
    a, b = two_machines(tmp)
    s3 = new_bucket("readonly")
    with mount_remote(a, s3) as ma:
        want = sha(os.path.join(ma.mnt, "tiny/rtn_w4_g128/model.safetensors"))
        published(ma)
    before = bucket_state(s3)
    with mount_remote(b, s3, opts=["remote_role=read"] + SIX) as mb:
        assert sha(os.path.join(
            mb.mnt, "tiny/rtn_w4_g128/model.safetensors")) == want
        with open(os.path.join(mb.mnt, "tiny/rtn_w3_g64/model.safetensors"),
                  "rb") as f:
            assert len(f.read()) > 0
        try:
            open(os.path.join(mb.mnt, "tiny", GPTQ), "rb").read()
            raise AssertionError("a read node produced a calibrated variant")
        except OSError as e:
            assert e.errno == 5, e          # EIO
        st = remote_state(mb)
        log = mb.stderr()
    assert bucket_state(s3) == before
    assert st["put"] == 0 and st["delete"] == 0 and st["role"] == "read", st
    assert st["imported"] > 0, st       # the published one: the bucket's
    assert "does not produce calibrated variants" in log, log


def test_fleet_cheap_node_and_warm():
    """A remote_role=cheap node makes and publishes an RTN variant (warm
    returns once it is in the bucket) but no calibrated one: with no
    producer at work, reading one fails with EIO, saying why."""
    tmp = scratch_dir("qfcl.")
    a, _ = two_machines(tmp)
    s3 = new_bucket("cheap")
    with mount_remote(a, s3, opts=["remote_role=cheap"] + SIX) as m:
        r = subprocess.run([QUANTFS, "warm", os.path.join(
            m.mnt, "tiny", "rtn_w3_g64")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        # no wait here: warm waited for the publication
        labels = [json.loads(s3.get(o["key"])[2])["label"]
                  for o in s3.list("fleet/v1/manifests/")]
        assert labels == ["tiny/rtn_w3_g64"], (labels, r.stderr)
        try:
            open(os.path.join(m.mnt, "tiny", GPTQ), "rb").read()
            raise AssertionError("a cheap node produced a calibrated one")
        except OSError as e:
            assert e.errno == 5, e
        log = m.stderr()
    assert "remote_role=cheap" in log and "quantfs warm" in log, log
    assert not s3.list("fleet/v1/leases/"), "a cheap node took a lease"


def test_fleet_rgw_killed():
    """radosgw killed while two nodes serve: both go on (local
    production), each says so once; radosgw back: they use it again."""
    tmp = scratch_dir("qfcl.")
    a, b = two_machines(tmp)
    s3 = new_bucket("killed")
    with mount_remote(a, s3) as ma, mount_remote(b, s3) as mb:
        sha(os.path.join(ma.mnt, "tiny/rtn_w4_g128/model.safetensors"))
        published(ma)
        CEPH.kill_rgw()
        for m in (ma, mb):
            for v in ("rtn_w3_g64", "rtn_w8_g32", "rtn_w4_g64"):
                with open(os.path.join(m.mnt, "tiny", v, "model.safetensors"),
                          "rb") as f:
                    assert len(f.read()) > 0
            assert m.stderr().count("does not answer") == 1, m.stderr()
            assert remote_state(m)["down"], remote_state(m)
        print("     radosgw restarted in %.1f s" % CEPH.start_rgw())
        time.sleep(6)                       # the first back-off is 5 s
        sha(os.path.join(mb.mnt, "tiny/rtn_w8_g128/model.safetensors"))
        published(mb)
        assert "answers again" in mb.stderr(), mb.stderr()
    assert any("manifests" in o["key"] for o in s3.list("fleet/v1/")), \
        "nothing published after radosgw came back"


def test_fleet_rgw_killed_mid_fetch():
    """radosgw killed while B fetches a variant from the bucket: the read
    completes with A's bytes, part fetched and part produced by B."""
    tmp = scratch_dir("qfcl.")
    src = mkmodel(os.path.join(tmp, "made", "big"), "--layers", 8,
                  "--hidden", 1024, "--inter", 2816, "--heads", 16,
                  "--kv-heads", 4, "--seed", 5)
    rel = "big/rtn_w4_g128/model.safetensors"
    for tries in range(4):
        a, b = two_machines(os.path.join(tmp, str(tries)), src=src,
                            name="big")
        s3 = new_bucket("midway")
        with mount_remote(a, s3) as ma:
            want = sha(os.path.join(ma.mnt, rel))
            published(ma)
        if not CEPH.rgw_alive():
            CEPH.start_rgw()
        with mount_remote(b, s3) as mb:
            os.stat(os.path.join(mb.mnt, os.path.dirname(rel)))
            out = {}
            th = threading.Thread(target=lambda: out.setdefault(
                "b", sha(os.path.join(mb.mnt, rel))))
            th.start()
            # killed once B has imported its first value: in the middle
            # whatever the machine's speed (a fixed delay missed it)
            t0 = time.time()
            while not remote_state(mb)["imported"] and th.is_alive() \
                    and time.time() - t0 < 60:
                time.sleep(0.002)
            CEPH.kill_rgw()
            th.join(timeout=300)
            published(mb)
            st = remote_state(mb)
            made = productions(mb)
            log = mb.stderr()
        CEPH.start_rgw()
        assert out.get("b") == want, (out, want)
        if st["imported"] and made:
            break
    assert st["imported"] and made, (st, made)     # it was in the middle
    assert "does not answer" in log, log
    print("     %d values fetched, %d tensors produced after the kill" % (
        st["imported"], len(made)))


def test_fleet_credentials():
    """Credentials never from mount options; a credentials file others can
    read is refused; a 0600 one works."""
    tmp = scratch_dir("qfcl.")
    a, _ = two_machines(tmp)
    s3 = new_bucket("creds")
    r = subprocess.run([QUANTFS, "mount", a.models, os.path.join(tmp, "x"),
                        "-o", "remote=s3://%s,aws_secret_access_key=k" %
                        s3.bucket], capture_output=True, text=True)
    assert r.returncode == 2 and "never taken from mount options" in \
        r.stderr, r.stderr
    cred = os.path.join(tmp, "credentials")
    with open(cred, "w") as f:
        f.write("[default]\naws_access_key_id = %s\naws_secret_access_key = "
                "%s\n" % (CEPH.access_key, CEPH.secret_key))
    os.chmod(cred, 0o644)
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    m = Mount(a.models, cache=a.cache, env=dict(os.environ, **env),
              opts=remote_opts(s3) + ["remote_credentials=" + cred])
    try:
        m.__enter__()
        raise AssertionError("mounted with a 0644 credentials file")
    except AssertionError as e:
        assert "credentials" in str(e) and "daemon exited" in str(e), e
    os.chmod(cred, 0o600)
    with Mount(a.models, cache=a.cache, env=dict(os.environ, **env),
               opts=remote_opts(s3) + ["remote_credentials=" + cred]) as m:
        sha(os.path.join(m.mnt, "tiny/rtn_w4_g128/model.safetensors"))
        published(m)
    assert s3.list("fleet/v1/manifests/"), "nothing published"


def test_fleet_server_ignoring_conditions():
    """A server that ignores If-None-Match (an emulator) is detected at
    mount: the mount says so and acts as a read node (writes nothing)."""
    import http.server
    store = {}

    class Lax(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, body=b""):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", '"%s"' % hashlib.md5(body).hexdigest())
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_PUT(self):
            n = int(self.headers.get("Content-Length", 0))
            store[self.path] = self.rfile.read(n)
            self._send(200)

        def do_GET(self):
            if self.path in store:
                self._send(200, store[self.path])
            else:
                self._send(404)

        do_HEAD = do_GET

        def do_DELETE(self):
            store.pop(self.path, None)
            self._send(204)
    import hashlib
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Lax)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    tmp = scratch_dir("qfcl.")
    a, _ = two_machines(tmp)
    try:
        with Mount(a.models, cache=a.cache, env=CEPH.env(),
                   opts=["remote=s3://lax-bucket", "remote_endpoint="
                         "http://127.0.0.1:%d" % srv.server_port]) as m:
            st = remote_state(m)
            sha(os.path.join(m.mnt, "tiny/rtn_w4_g128/model.safetensors"))
            log = m.stderr()
    finally:
        srv.shutdown()
    assert "ignores conditional writes" in log, log
    assert st["role"] == "read", st
    assert not [k for k in store if "/v1/manifests/" in k], store.keys()


# -- quantfs on the cluster (the lead's tests go here) -----------------------

# The tests of this run (qftest.run_tests runs them by name); each may count
# on a running radosgw (the runner starts it again after a test that killed
# it and failed).  Add quantfs tests
# (two daemons on one bucket, single flight, kill -9 of the producer, a
# tampered value, a read-only node, radosgw killed mid-run) to this list.
def test_fleet_cache_tools():
    """quantfs cache ls|rm|gc --remote (cluster_admin.py)."""
    import cluster_admin
    need_fuse()
    cluster_admin.test_remote_cache_tools(
        CEPH, "s3://admin-%s" % secrets.token_hex(4))


TESTS = [
    test_fixture_oracle,
    test_fixture_conditions,
    test_fixture_kill_restart,
    test_fixture_reader,
    test_fixture_two_machines,
    test_fleet_credentials,
    test_fleet_server_ignoring_conditions,
    test_fleet_shares_a_variant,
    test_fleet_tampered_value,
    test_fleet_read_only_node,
    test_fleet_cheap_node_and_warm,
    test_fleet_one_job,
    test_fleet_takeover_after_kill9,
    test_fleet_rgw_killed,
    test_fleet_rgw_killed_mid_fetch,
    test_fleet_cache_tools,
]


def with_rgw(fn):
    def run():
        if not CEPH.rgw_alive():
            print("     (radosgw was down: started again in %.1f s)" %
                  CEPH.start_rgw())
        fn()
    return run


if __name__ == "__main__":
    ok, why = Ceph.available()
    if not ok:
        print("skip: " + why)
        sys.exit(77)
    with Ceph() as CEPH:
        run_tests({f.__name__: with_rgw(f) for f in TESTS}, needs_fuse=False)
