"""`quantfs cache ls|rm|gc --remote` against a real radosgw (issue 21).

test_remote_cache_tools(ceph, bucket_url): two mounts publish variants to
the bucket; s3py (a client independent of quantfs's) plays the other
machines -- an orphan value, an abandoned checkpoint, a live production
with its lease, a superseded checkpoint, a probe -- and is the oracle of
what gc and rm deleted.  ceph: a started tests/cluster/ceph.py Ceph;
bucket_url: "s3://BUCKET" (created here when it does not exist).

usage as a script: cluster_admin.py   (starts a Ceph of its own, stops it;
env QUANTFS, QF_SHARED as for tests/mount)
"""
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "mount"))
from s3py import S3  # noqa: E402
from qftest import Mount, mkmodel, QUANTFS  # noqa: E402
from ceph import scratch_dir  # noqa: E402

QUANTFS = os.path.realpath(os.environ.get("QUANTFS", QUANTFS))
VARIANTS = ("rtn_w4_g128", "rtn_w3_g64")
PUBLISH_S = 60          # bound on the background publishing


def clean_env(**extra):
    """The environment without any AWS_* of the caller, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra)
    return env


def qfr(env, *args, rc=0):
    """Run `quantfs ARGS` with env; check its exit status when rc is not
    None; returns the CompletedProcess."""
    r = subprocess.run([QUANTFS] + [str(a) for a in args], env=env,
                       capture_output=True, text=True, timeout=300)
    if rc is not None and r.returncode != rc:
        raise AssertionError("quantfs %s: rc %d, wanted %d\n%s%s" % (
            " ".join(map(str, args)), r.returncode, rc, r.stdout, r.stderr))
    assert "runtime error" not in r.stderr and \
        "Sanitizer" not in r.stderr, r.stderr
    return r


def read_variant(mnt, variant):
    """Read every byte of tiny/VARIANT/model.safetensors (so it is
    produced, complete, and published in the background)."""
    with open(os.path.join(mnt, "tiny", variant, "model.safetensors"),
              "rb") as f:
        while f.read(1 << 20):
            pass


def keys(s3, kind):
    return {o["key"] for o in s3.list("v1/%s/" % kind)}


def manifest_of(s3, vid):
    s, _, body = s3.get("v1/manifests/" + vid)
    assert s == 200, (vid, s)
    return json.loads(body)


def put_value(s3, data):
    """A value object as a publisher writes it; returns its key."""
    key = "v1/values/" + hashlib.sha256(data).hexdigest()
    assert s3.put(key, data)[0] == 200
    return key


def put_checkpoint(s3, vid, step, label, values):
    """A checkpoint in the manifest format (cache/rmanifest.c) naming
    values, a list of their bytes."""
    body = {"quantfs_manifest": 1, "id": vid, "label": label,
            "host": "elsewhere pid 7", "created": time.time() - 3 * 86400,
            "step": step, "record": None,
            "values": [["w%d" % i, hashlib.sha256(d).hexdigest(), len(d)]
                       for i, d in enumerate(values)]}
    key = "v1/ckpt/%s/%05d" % (vid, step)
    assert s3.put(key, json.dumps(body).encode(), if_none_match=True)[0] \
        == 200
    return key


def wait_published(env, remote, labels):
    """Poll `cache ls --remote --json` until every label is published;
    returns the listing."""
    deadline = time.time() + PUBLISH_S
    while True:
        ls = json.loads(qfr(env, "cache", "ls", *remote, "--json").stdout)
        have = {e["label"] for e in ls["ids"] if e["state"] == "published"}
        if set(labels) <= have:
            return ls
        if time.time() > deadline:
            raise AssertionError("not published within %d s: %s (have %s)"
                                 % (PUBLISH_S, sorted(set(labels) - have),
                                    sorted(have)))
        time.sleep(0.5)


def gc_counts(out):
    """{'values': n, 'superseded': n, 'abandoned': n, 'probes': n,
    'leases': n} from gc's report."""
    g = {}
    m = re.search(r"checkpoints (?:deleted|to delete): (\d+) superseded, "
                  r"(\d+) abandoned", out)
    g["superseded"], g["abandoned"] = int(m.group(1)), int(m.group(2))
    g["values"] = int(re.search(r"values (?:deleted|to delete): (\d+)",
                                out).group(1))
    g["probes"] = int(re.search(r"probes (?:deleted|to delete): (\d+)",
                                out).group(1))
    g["leases"] = int(re.search(r"leases (?:deleted|to delete): (\d+)",
                                out).group(1))
    g["young"] = int(re.search(r"(\d+) named by none but younger",
                               out).group(1))
    return g


def everything(s3):
    return {o["key"]: o["etag"] for o in s3.list("")}


def test_remote_cache_tools(ceph, bucket_url):
    bucket = bucket_url[len("s3://"):].split("/")[0]
    s3 = S3(ceph.endpoint, ceph.access_key, ceph.secret_key, bucket,
            ceph.region)
    assert s3.create_bucket()[0] in (200, 409)
    env = clean_env(**ceph.env())
    remote = ["--remote", bucket_url, "--endpoint", ceph.endpoint]
    opts = ["remote=" + bucket_url, "remote_endpoint=" + ceph.endpoint]
    tmp = scratch_dir("qfadmin.")
    src = os.path.join(tmp, "models")
    mkmodel(os.path.join(src, "tiny"), "--layers", 3, "--seed", 21)

    # an empty bucket: nothing listed, nothing to collect
    ls = json.loads(qfr(env, "cache", "ls", *remote, "--json").stdout)
    assert ls["ids"] == [] and ls["values"] == 0, ls

    # 1. a machine publishes two variants
    with Mount(src, cache=os.path.join(tmp, "cache1"), opts=opts,
               env=ceph.env()) as m:
        for v in VARIANTS:
            read_variant(m.mnt, v)
        ls = wait_published(env, remote, ["tiny/" + v for v in VARIANTS])
    pub = {e["label"]: e for e in ls["ids"]}
    for v in VARIANTS:
        e = pub["tiny/" + v]
        man = manifest_of(s3, e["id"])
        assert re.fullmatch(r"[0-9a-f]{32}", e["id"]), e
        assert (e["model"], e["variant"]) == ("tiny", v), e
        assert e["values"] == len(man["values"]) > 0, (e, man)
        assert e["bytes"] == sum(x[2] for x in man["values"]), (e, man)
        assert e["host"] == man["host"] and e["host"], e
        assert e["created_utc"] == time.strftime(
            "%Y-%m-%d %H:%M:%S", time.gmtime(man["created"])), e
    named = {x[1] for e in pub.values()
             for x in manifest_of(s3, e["id"])["values"]}
    assert ls["values"] == len(named) and ls["garbage"] == 0, ls
    text = qfr(env, "cache", "ls", *remote).stdout
    for v in VARIANTS:
        assert re.search(r"%s +tiny/%s +tiny/%s " % (
            pub["tiny/" + v]["id"], v, v), text), text
    print("     published: %s" % ", ".join(
        "%s %d values %d B" % (k, e["values"], e["bytes"])
        for k, e in sorted(pub.items())))

    # 2. other machines' leftovers, written with the oracle client
    w4 = pub["tiny/rtn_w4_g128"]["id"]
    orphan = put_value(s3, os.urandom(1500))            # named by none
    dead_v, live_v = os.urandom(700), os.urandom(900)
    dead_k, live_k = put_value(s3, dead_v), put_value(s3, live_v)
    dead_id, live_id = secrets.token_hex(16), secrets.token_hex(16)
    dead_ck = put_checkpoint(s3, dead_id, 2, "tiny/gptq_w4_g128", [dead_v])
    live_ck = put_checkpoint(s3, live_id, 1, "tiny/awq_w4_g128", [live_v])
    lease = {"holder": "busy pid 9", "nonce": "0" * 32, "ttl_s": 3600,
             "label": "tiny/awq_w4_g128", "layers_done": 1, "layers": 3,
             "eta_s": 10, "started": time.time()}
    assert s3.put("v1/leases/" + live_id, json.dumps(lease).encode(),
                  if_none_match=True)[0] == 200
    sup_ck = "v1/ckpt/%s/00001" % w4                    # superseded
    body = manifest_of(s3, w4)
    body["step"] = 1
    assert s3.put(sup_ck, json.dumps(body).encode())[0] == 200
    probe = "v1/probe/" + secrets.token_hex(16)
    assert s3.put(probe, b"1")[0] == 200

    ls = json.loads(qfr(env, "cache", "ls", *remote, "--json").stdout)
    ids = {e["id"]: e for e in ls["ids"]}
    assert ids[dead_id]["state"] == "abandoned", ids[dead_id]
    assert ids[dead_id]["status"] == "checkpoint after 2 layers, no lease"
    assert ids[live_id]["state"] == "in production", ids[live_id]
    assert ids[live_id]["status"] == \
        "in production by busy pid 9: layer 1/3", ids[live_id]
    assert ids[w4]["checkpoints"] == 1 and ids[w4]["state"] == "published"
    assert ls["garbage"] == 1 and ls["probes"] == 1, ls
    text = qfr(env, "cache", "ls", *remote).stdout
    assert "(not published) in production by busy pid 9: layer 1/3" in text
    assert "(not published) checkpoint after 2 layers, no lease" in text
    assert re.search(r"1 named by no manifest or checkpoint \(garbage, "
                     r"1\.5 KiB", text), text

    # 3. gc --dry-run deletes nothing: by default everything is too young
    before = everything(s3)
    r = qfr(env, "cache", "gc", *remote, "--dry-run")
    g = gc_counts(r.stdout)
    assert g["values"] == 0 and g["young"] == 1 and g["abandoned"] == 0, \
        r.stdout
    assert g["superseded"] == 1 and "nothing deleted" in r.stdout, r.stdout
    r = qfr(env, "cache", "gc", *remote, "--dry-run", "--grace", 0)
    g = gc_counts(r.stdout)
    assert g == {"superseded": 1, "abandoned": 1, "values": 2, "probes": 1,
                 "leases": 0, "young": 0}, r.stdout
    assert "below 12 h" in r.stderr, r.stderr
    assert everything(s3) == before
    print("     dry run: %s" % g)

    # 4. gc --grace 0: orphans and leftovers go, every named value stays
    vals = keys(s3, "values")
    r = qfr(env, "cache", "gc", *remote, "--grace", 0)
    assert gc_counts(r.stdout)["values"] == 2, r.stdout
    assert "2.1 KiB freed" in r.stdout, r.stdout
    assert keys(s3, "values") == vals - {orphan, dead_k}, \
        sorted(vals ^ keys(s3, "values"))
    assert live_k in vals and {"v1/values/" + h for h in named} <= vals
    assert keys(s3, "ckpt") == {live_ck}, keys(s3, "ckpt")
    assert s3.head(dead_ck)[0] == 404 and s3.head(sup_ck)[0] == 404
    assert s3.head(probe)[0] == 404
    assert s3.head("v1/leases/" + live_id)[0] == 200
    ls = json.loads(qfr(env, "cache", "ls", *remote, "--json").stdout)
    assert ls["garbage"] == 0 and ls["probes"] == 0, ls
    print("     gc: %d values before, %d after" % (
        len(vals), len(keys(s3, "values"))))

    # 4b. a manifest that does not parse: listed as such; gc then deletes
    # no value (what it names is unknown); rm by id prefix removes it
    bad_id = secrets.token_hex(16)
    assert s3.put("v1/manifests/" + bad_id, b'{"quantfs_manifest": 1, '
                  b'"values": [["x", "zz", -1]]}')[0] == 200
    stray = put_value(s3, os.urandom(300))
    ls = json.loads(qfr(env, "cache", "ls", *remote, "--json").stdout)
    assert {e["id"]: e["state"] for e in ls["ids"]}[bad_id] == \
        "unreadable" and ls["unreadable"] == 1, ls
    r = qfr(env, "cache", "gc", *remote, "--grace", 0, rc=1)
    assert "values were not swept" in r.stderr, r.stderr
    assert stray in keys(s3, "values")
    r = qfr(env, "cache", "rm", *remote, bad_id[:8])
    assert r.stdout.startswith("removed %s - (manifest" % bad_id), r.stdout
    assert gc_counts(qfr(env, "cache", "gc", *remote, "--grace",
                         0).stdout)["values"] == 1
    assert keys(s3, "values") == vals - {orphan, dead_k}
    # another prefix of the same bucket is another tier: empty
    ls = json.loads(qfr(env, "cache", "ls", "--remote", bucket_url +
                        "/elsewhere", "--endpoint", ceph.endpoint,
                        "--json").stdout)
    assert ls["ids"] == [] and ls["values"] == 0, ls

    # 5. rm: one variant's manifest goes, its values stay for gc; a live
    # production is kept; a selector matching nothing fails
    w3 = pub["tiny/rtn_w3_g64"]["id"]
    r = qfr(env, "cache", "rm", *remote, "tiny/rtn_w3_g64")
    assert r.stdout == "removed %s tiny/rtn_w3_g64 (manifest, 0 " \
        "checkpoint(s))\n" % w3, r.stdout
    assert s3.head("v1/manifests/" + w3)[0] == 404
    assert s3.head("v1/manifests/" + w4)[0] == 200
    assert keys(s3, "values") == vals - {orphan, dead_k}
    r = qfr(env, "cache", "rm", *remote, live_id[:10], rc=1)
    assert "is in production by busy pid 9 (layer 1/3): kept" in r.stderr
    assert s3.head(live_ck)[0] == 200
    r = qfr(env, "cache", "rm", *remote, "nothing/here", rc=1)
    assert "matches" in r.stderr, r.stderr
    ls = json.loads(qfr(env, "cache", "ls", *remote, "--json").stdout)
    assert "tiny/rtn_w3_g64" not in {e["label"] for e in ls["ids"]}
    assert ls["garbage"] > 0, ls        # w3's values, named by none now

    # 6. a fresh machine produces the removed variant itself (and
    # publishes it again), and fetches the other one
    with Mount(src, cache=os.path.join(tmp, "cache2"), opts=opts,
               env=ceph.env()) as m:
        for v in VARIANTS:
            read_variant(m.mnt, v)
        wait_published(env, remote, ["tiny/rtn_w3_g64"])
        log = m.stderr()
    assert "tiny/rtn_w3_g64: produced" in log, log
    assert "tiny/rtn_w4_g128: produced" not in log, log
    assert "tiny/rtn_w4_g128: every value from the remote tier" in log, log

    # 7. errors: a bad URL, no credentials, wrong credentials, no server
    r = qfr(env, "cache", "ls", "--remote", "s3://No_Such", rc=2)
    assert "s3://BUCKET[/PREFIX] is expected" in r.stderr, r.stderr
    r = qfr(env, "cache", "gc", *remote, "--grace", "soon", rc=2)
    assert "--grace: a number of seconds" in r.stderr, r.stderr
    home = scratch_dir("qfadmin.home.")
    r = qfr(clean_env(HOME=home), "cache", "ls", *remote, rc=1)
    assert "no credentials" in r.stderr, r.stderr
    creds = os.path.join(home, "creds")     # a 0600 file does it
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("[default]\naws_access_key_id = %s\naws_secret_access_key"
                " = %s\n" % (ceph.access_key, ceph.secret_key))
    r = qfr(clean_env(HOME=home), "cache", "ls", *remote, "--json",
            "--credentials", creds)
    assert "tiny/rtn_w4_g128" in r.stdout, r.stdout
    os.chmod(creds, 0o644)
    r = qfr(clean_env(HOME=home), "cache", "ls", *remote, "--credentials",
            creds, rc=1)
    assert "credentials file is refused" in r.stderr, r.stderr
    bad = clean_env(**dict(ceph.env(), AWS_SECRET_ACCESS_KEY="x" * 40))
    r = qfr(bad, "cache", "gc", *remote, rc=1)
    assert "access denied" in r.stderr, r.stderr
    r = qfr(env, "cache", "ls", "--remote", bucket_url, "--endpoint",
            "http://127.0.0.1:1", rc=1)
    assert "does not answer" in r.stderr, r.stderr
    s3.close()


if __name__ == "__main__":
    from ceph import Ceph
    ok, why = Ceph.available()
    if not ok:
        print("skip: " + why)
        sys.exit(77)
    if not os.path.exists("/dev/fuse"):
        print("skip: /dev/fuse is absent, no FUSE mount is possible")
        sys.exit(77)
    with Ceph() as c:
        t0 = time.time()
        test_remote_cache_tools(c, "s3://admin-" + secrets.token_hex(4))
        print("ok   test_remote_cache_tools (%.2f s)" % (time.time() - t0))
