"""Models where users keep them, and who may read them (issues 18, 19).

A Hugging Face hub cache laid out as huggingface_hub lays it out (blobs,
snapshot files as relative links into blobs/, refs/main, several
revisions, a download in progress), ORG/NAME trees, model folders that
are links; then, with a root daemon and allow_other, what another user
reads: source owners and modes carried through, and the one rule for
links (followed only when link and target have the same owner).
"""
import atexit
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import stread  # noqa: E402
from qftest import Mount, mkmodel, run_tests, SkipTest, sha, qf, \
    cache_ls, hub_repo, add_snapshot, set_ref, rev  # noqa: E402

WORK = tempfile.mkdtemp(prefix="qfsrc.")
atexit.register(shutil.rmtree, WORK, True)     # 190 MB of models
os.chmod(WORK, 0o755)
NOBODY = 65534
Q = "model.layers.0.self_attn.q_proj.weight"


def model(name, seed, *args):
    return mkmodel(os.path.join(WORK, "made", name), "--seed", seed, *args)


A = model("a", 1)
B = model("b", 2)
C = model("c", 3)
SHARDED = model("sh", 4)


def rtn_checked(path, src_dir):
    """path's q_proj is the numpy RTN w4 g128 of src_dir's weights."""
    t, _ = stread.read_st(path)
    src, _ = stread.read_st(os.path.join(src_dir, "model.safetensors"))
    stread.check_rtn(t, src, Q, 4, 128, False)


def wait_log(m, text, deadline=10):
    t = time.time() + deadline
    while text not in m.stderr():
        assert time.time() < t, m.stderr()
        time.sleep(0.05)


def test_hub_cache_as_src():
    hub = os.path.join(WORK, "hub1")
    repo = hub_repo(hub, "Org/Name", {rev(1): A, rev(2): B}, main=rev(1),
                    refs={"v2": rev(2)})
    hub_repo(hub, "solo", {rev(5): A}, main=rev(5))
    broken = hub_repo(hub, "Org/Broken", {}, main=rev(6))
    sh2 = stread.shard(SHARDED, os.path.join(WORK, "sh2"), 2)
    add_snapshot(broken, rev(6), sh2,
                 skip=("model-00002-of-00002.safetensors",))
    hub_repo(hub, "Org/NoRef", {rev(7): A, rev(8): B})
    noconf = hub_repo(hub, "Org/NoConfig", {rev(9): A}, main=rev(9))
    os.unlink(os.path.join(noconf, "snapshots", rev(9), "config.json"))
    # a folder in the repository, as Llama 3's original/ (consolidated.pth)
    sub = os.path.join(repo, "snapshots", rev(1), "original", "deeper")
    os.makedirs(sub)
    for f, data in (("params.json", b'{"dim": 64}'),
                    ("deeper/tok.model", b"sentencepiece")):
        blob = os.path.join(repo, "blobs", hashlib.sha256(data).hexdigest())
        open(blob, "wb").write(data)
        os.symlink(os.path.relpath(blob, os.path.dirname(
            os.path.join(repo, "snapshots", rev(1), "original", f))),
            os.path.join(repo, "snapshots", rev(1), "original", f))
    os.makedirs(os.path.join(hub, ".locks"))
    with Mount(hub) as m:
        assert sorted(os.listdir(m.mnt)) == ["Org", "solo"]
        assert sorted(os.listdir(os.path.join(m.mnt, "Org"))) == ["Name"]
        # an incomplete snapshot and an ambiguous repo are not served
        for bad in ("Org/Broken", "Org/NoRef", "Org/NoConfig",
                    "Org/Name@ffffffff",
                    "Org/Name@nosuchref"):
            try:
                os.stat(os.path.join(m.mnt, bad))
                raise AssertionError(bad + " is served")
            except FileNotFoundError:
                pass
        wait_log(m, "models--Org--Broken: revision %s is not served: a "
                 "shard its index names is missing" % rev(6))
        wait_log(m, "models--Org--NoRef: revision main is not served: "
                 "no refs/main and several snapshots")
        wait_log(m, "models--Org--NoConfig: revision %s is not served: "
                 "no config.json" % rev(9))
        assert m.stderr().count("NoConfig: revision") == 1   # said once
        snap = os.path.join(repo, "snapshots", rev(1))
        d = os.path.join(m.mnt, "Org", "Name")
        orig = sorted(os.listdir(os.path.join(d, "original")))
        assert orig == sorted(os.listdir(snap) + ["model.gguf"]), orig
        walked = []			# byte for byte, the blobs, folders too
        for root, dirs, files in os.walk(os.path.join(d, "original")):
            for f in files:
                rel = os.path.relpath(os.path.join(root, f),
                                      os.path.join(d, "original"))
                if rel == "model.gguf":
                    continue
                walked.append(rel)
                assert sha(os.path.join(root, f)) == os.path.basename(
                    os.readlink(os.path.join(snap, rel)))
        assert sorted(walked) == sorted(
            os.path.relpath(os.path.join(r, f), snap)
            for r, _, fs in os.walk(snap) for f in fs), walked
        assert "original" not in os.listdir(os.path.join(d, "rtn_w4_g128"))
        v = os.path.join(d, "rtn_w4_g128")
        names = sorted(os.listdir(v))
        assert names == ["config.json", "generation_config.json",
                         "model.safetensors",
                         "quantization.json", "tokenizer.json",
                         "tokenizer_config.json"], names
        for f in ("tokenizer.json", "tokenizer_config.json",
                  "generation_config.json"):
            assert sha(os.path.join(v, f)) == sha(os.path.join(A, f))
        rtn_checked(os.path.join(v, "model.safetensors"), A)
        assert sha(os.path.join(m.mnt, "solo", "rtn_w4_g128",
                                "model.safetensors")) == \
            sha(os.path.join(v, "model.safetensors"))
        # other revisions by ref and by commit prefix (not listed)
        for name in ("Name@v2", "Name@" + rev(2)[:10], "Name@" + rev(2)):
            rtn_checked(os.path.join(m.mnt, "Org", name, "rtn_w4_g128",
                                     "model.safetensors"), B)
        assert "Name@v2" not in os.listdir(os.path.join(m.mnt, "Org"))
        man = json.load(open(os.path.join(d, "rtn_w4_g128",
                                          "quantization.json")))
        assert man["source"]["dir"] == snap, man["source"]
        # a new revision downloaded while mounted: served, no remount
        add_snapshot(repo, rev(3), C)
        set_ref(repo, "main", rev(3))
        rtn_checked(os.path.join(v, "model.safetensors"), C)
        assert sha(os.path.join(d, "original", "model.safetensors")) == \
            sha(os.path.join(C, "model.safetensors"))
        # the download of a shard finishing makes the repo appear
        sh = os.path.join(broken, "snapshots", rev(6))
        inc = [f for f in os.listdir(os.path.join(broken, "blobs"))
               if f.endswith(".incomplete")]
        assert len(inc) == 1
        data = open(os.path.join(sh2, "model-00002-of-00002.safetensors"),
                    "rb").read()
        h = hashlib.sha256(data).hexdigest()
        open(os.path.join(broken, "blobs", h), "wb").write(data)
        os.unlink(os.path.join(broken, "blobs", inc[0]))
        os.symlink(os.path.join("..", "..", "blobs", h),
                   os.path.join(sh, "model-00002-of-00002.safetensors"))
        assert sorted(os.listdir(os.path.join(m.mnt, "Org"))) == \
            ["Broken", "Name"]
        rtn_checked(os.path.join(m.mnt, "Org", "Broken", "rtn_w4_g128",
                                 "model.safetensors"), SHARDED)


def test_mount_without_src_serves_the_hub_cache():
    """`quantfs mount MNT`: $HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub."""
    home = os.path.join(WORK, "home")
    for env, hub in ((None, os.path.join(home, ".cache", "huggingface",
                                         "hub")),
                     ({"HF_HOME": os.path.join(WORK, "hfhome")},
                      os.path.join(WORK, "hfhome", "hub")),
                     ({"HF_HUB_CACHE": os.path.join(WORK, "hc")},
                      os.path.join(WORK, "hc"))):
        hub_repo(hub, "Org/M", {rev(1): A}, main=rev(1))
        e = dict({"HOME": home, "HF_HOME": "", "HF_HUB_CACHE": ""},
                 **(env or {}))
        with Mount(None, env=e) as m:
            assert os.listdir(m.mnt) == ["Org"]
            assert os.listdir(os.path.join(m.mnt, "Org")) == ["M"]
        shutil.rmtree(hub)


def test_hub_gptq_equals_plain_copy():
    """A calibrated variant of a hub model: the bytes a plain copy of the
    same files gives, and its layout decodes (independent reader)."""
    hub = os.path.join(WORK, "hub2")
    hub_repo(hub, "Qwen/Tiny", {rev(1): A}, main=rev(1))
    plain = os.path.join(WORK, "plain2")
    shutil.copytree(A, os.path.join(plain, "Tiny"))
    p = "gptq_w4_g128/model.safetensors"
    calib = ["calib_n=4", "calib_len=64"]
    with Mount(hub, opts=calib) as m:
        h = sha(os.path.join(m.mnt, "Qwen", "Tiny", p))
        t, _ = stread.read_st(os.path.join(m.mnt, "Qwen", "Tiny", p))
        t_rtn, _ = stread.read_st(os.path.join(m.mnt, "Qwen", "Tiny",
                                               "rtn_w4_g128",
                                               "model.safetensors"))
        cache = m.cache
    ls = cache_ls(cache)
    assert {(e["model"], e["variant"]) for e in ls} >= {
        ("Qwen/Tiny", "gptq_w4_g128"), ("Qwen/Tiny", "rtn_w4_g128")}, ls
    qf("cache", "rm", "Qwen/Tiny/rtn_*", "--cache", cache)
    ls = cache_ls(cache)
    assert [e["variant"] for e in ls if e["model"] == "Qwen/Tiny"] == \
        ["gptq_w4_g128"], ls
    with Mount(plain, opts=calib) as m:
        assert sha(os.path.join(m.mnt, "Tiny", p)) == h
    src, _ = stread.read_st(os.path.join(A, "model.safetensors"))
    W = src[Q].astype(np.float32)
    deq, q, z, s, g = stread.gptq_dequant(t, Q[:-len(".weight")], 4,
                                          *W.shape)
    assert np.array_equal(g, np.arange(W.shape[1]) // 128)
    assert q.min() >= 0 and q.max() <= 15 and np.all(s > 0)
    # GPTQ trades weight error for output error: same order as RTN's
    rtn = stread.check_rtn(t_rtn, src, Q, 4, 128, False)
    rel = np.linalg.norm(deq - W) / np.linalg.norm(W)
    rel_rtn = np.linalg.norm(rtn - W) / np.linalg.norm(W)
    assert 0 < rel < 3 * rel_rtn, (rel, rel_rtn)


def test_trees_and_linked_folders():
    src = os.path.join(WORK, "tree")
    shutil.copytree(A, os.path.join(src, "acme", "widget"))
    shutil.copytree(B, os.path.join(src, "acme", "gadget"))
    shutil.copytree(C, os.path.join(src, "plain"))
    shutil.copytree(A, os.path.join(src, "my--org", "a--b"))
    os.makedirs(os.path.join(src, "empty", "nothing"))
    elsewhere = os.path.join(WORK, "elsewhere")
    shutil.copytree(B, elsewhere)
    os.symlink(elsewhere, os.path.join(src, "linked"))
    # every file a link too (same owner): served
    lf = os.path.join(src, "linkfiles")
    os.makedirs(lf)
    for f in os.listdir(C):
        os.symlink(os.path.join(C, f), os.path.join(lf, f))
    with Mount(src) as m:
        assert sorted(os.listdir(m.mnt)) == ["acme", "linked", "linkfiles",
                                             "my--org", "plain"]
        assert sorted(os.listdir(os.path.join(m.mnt, "acme"))) == \
            ["gadget", "widget"]
        for name, want in (("acme/widget", A), ("acme/gadget", B),
                           ("my--org/a--b", A),
                           ("plain", C), ("linked", B), ("linkfiles", C)):
            rtn_checked(os.path.join(m.mnt, name, "rtn_w4_g128",
                                     "model.safetensors"), want)
            assert "tokenizer.json" in os.listdir(
                os.path.join(m.mnt, name, "rtn_w4_g128"))


# ---------------------------------------------------------------------
# who may read what: a root daemon, allow_other, another user

def as_user(uid, code, *args):
    """Run python code as uid (no groups); its stdout, parsed as JSON."""
    if os.getuid() != 0 or not shutil.which("setpriv"):
        raise SkipTest("needs root and setpriv to act as another user")
    r = subprocess.run(["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid,
                        "--clear-groups", "/usr/bin/python3", "-c", code]
                       + list(args), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


PROBE = r"""
import json, os, sys
out = {}
for p in sys.argv[1:]:
    try:
        if os.path.isdir(p):
            os.listdir(p)
        else:
            open(p, "rb").read()
        out[p] = 0
    except OSError as e:
        out[p] = e.errno
print(json.dumps(out))
"""


def probe(uid, mnt, paths):
    """{path: 0 or errno} of reading each path as uid."""
    full = [os.path.join(mnt, p) for p in paths]
    r = as_user(uid, PROBE, *full)
    return {p: r[f] for p, f in zip(paths, full)}


def chown_tree(path, uid):
    for root, dirs, files in os.walk(path):
        for x in dirs + files:
            os.lchown(os.path.join(root, x), uid, uid)
    os.lchown(path, uid, uid)


def served_mount(src, **kw):
    m = Mount(src, opts=["allow_other"] + kw.pop("opts", []), **kw)
    os.chmod(m.tmp, 0o755)		# other users reach the mount point
    return m


def test_source_permissions_carried():
    src = os.path.join(WORK, "perm")
    os.makedirs(src)
    os.chmod(src, 0o755)
    priv = shutil.copytree(A, os.path.join(src, "private"))
    os.chmod(priv, 0o700)
    for f in os.listdir(priv):
        os.chmod(os.path.join(priv, f), 0o600)
    mine = shutil.copytree(B, os.path.join(src, "nobodys"))
    chown_tree(mine, NOBODY)
    os.chmod(mine, 0o700)
    for f in os.listdir(mine):
        os.chmod(os.path.join(mine, f), 0o600)
    # readable model, one private file
    mixed = shutil.copytree(C, os.path.join(src, "mixed"))
    os.chmod(os.path.join(mixed, "tokenizer.json"), 0o600)
    files = ["original/config.json", "original/model.safetensors",
             "rtn_w4_g128/config.json", "rtn_w4_g128/model.safetensors",
             "rtn_w4_g128/quantization.json", "original/model.gguf",
             "rtn_w4_g128", "original"]
    with served_mount(src) as m:
        st = os.stat(os.path.join(m.mnt, "private", "rtn_w4_g128",
                                  "model.safetensors"))
        assert (st.st_mode & 0o777, st.st_uid) == (0o400, 0), st
        st = os.stat(os.path.join(m.mnt, "private"))
        assert st.st_mode & 0o777 == 0o500, oct(st.st_mode)
        r = probe(NOBODY, m.mnt, ["private"] +
                  ["private/" + f for f in files])
        assert set(r.values()) == {errno.EACCES}, r
        r = probe(NOBODY, m.mnt, ["nobodys/" + f for f in files])
        assert set(r.values()) == {0}, r
        r = probe(NOBODY + 1000, m.mnt, ["nobodys"])
        assert set(r.values()) == {errno.EACCES}, r
        # a private tokenizer: the variants that embed it (GGUF) and the
        # file itself are private, the rest of the model is not
        r = probe(NOBODY, m.mnt, ["mixed/original/tokenizer.json",
                                  "mixed/rtn_w4_g128/tokenizer.json",
                                  "mixed/rtn_w4_g32_sym/model.gguf"])
        assert set(r.values()) == {errno.EACCES}, r
        r = probe(NOBODY, m.mnt, ["mixed/original/config.json"])
        assert set(r.values()) == {0}, r
        # the owner (root) reads everything
        for f in files[:6]:
            open(os.path.join(m.mnt, "private", f), "rb").read()
        # the cache holds what private models give: group only
        assert os.stat(m.cache).st_mode & 0o7777 == 0o2770
        for root, dirs, fs in os.walk(m.cache):
            for f in fs:
                mode = os.stat(os.path.join(root, f)).st_mode & 0o777
                assert mode & 0o007 == 0, (f, oct(mode))
        r = as_user(NOBODY, PROBE, os.path.join(m.cache, "data.mdb"))
        assert list(r.values()) == [errno.EACCES], r


def test_links_to_other_owners_never_served():
    """A user who may write SRC links to root-only files: never served,
    through original/, a variant, config.json or a calibration set."""
    secret_dir = os.path.join(WORK, "secret")
    os.makedirs(secret_dir)
    os.chmod(secret_dir, 0o700)
    sec_st = shutil.copy(os.path.join(C, "model.safetensors"),
                         os.path.join(secret_dir, "w.safetensors"))
    sec_json = os.path.join(secret_dir, "c.json")
    cfg = json.load(open(os.path.join(C, "config.json")))
    cfg["secret_marker"] = "TOPSECRET-4242"
    json.dump(cfg, open(sec_json, "w"))
    sec_txt = os.path.join(secret_dir, "calib.txt")
    open(sec_txt, "w").write("TOPSECRET calibration text. " * 200)
    for p in (sec_st, sec_json, sec_txt):
        os.chmod(p, 0o600)
    src = os.path.join(WORK, "evil")
    os.makedirs(src)
    evil = {}
    for name, link in (("weights", "model.safetensors"),
                       ("config", "config.json"),
                       ("tok", "tokenizer.json")):
        d = shutil.copytree(A, os.path.join(src, name))
        os.unlink(os.path.join(d, link))
        target = {"model.safetensors": sec_st, "config.json": sec_json,
                  "tokenizer.json": sec_json}[link]
        os.symlink(target, os.path.join(d, link))
        chown_tree(d, NOBODY)
        evil[name] = d
    # a shard and the index of a sharded model: links to root's files
    for name, link in (("shard", "model-00001-of-00002.safetensors"),
                       ("index", "model.safetensors.index.json")):
        d = stread.shard(A, os.path.join(src, name), 2)
        target = os.path.join(secret_dir, name + "-" + link)
        shutil.move(os.path.join(d, link), target)
        os.chmod(target, 0o600)
        os.symlink(target, os.path.join(d, link))
        chown_tree(d, NOBODY)
        evil[name] = (d, link)
    # a folder link of nobody's to root's model
    os.symlink(secret_dir, os.path.join(src, "folder"))
    shutil.copy(os.path.join(C, "config.json"), secret_dir)
    os.lchown(os.path.join(src, "folder"), NOBODY, NOBODY)
    good = shutil.copytree(B, os.path.join(src, "good"))
    calib = os.path.join(WORK, "calibdir")
    os.makedirs(calib)
    os.symlink(sec_txt, os.path.join(calib, "sec.txt"))
    os.lchown(os.path.join(calib, "sec.txt"), NOBODY, NOBODY)
    os.chmod(os.path.join(good, "config.json"), 0o644)
    with served_mount(src, opts=["calib_dir=" + calib, "calib_n=2",
                                 "calib_len=32"]) as m:
        assert sorted(os.listdir(m.mnt)) == ["good", "index", "shard",
                                             "tok", "weights"], \
            os.listdir(m.mnt)
        mnt = lambda *p: os.path.join(m.mnt, *p)  # noqa: E731
        assert "model.safetensors" not in os.listdir(mnt("weights",
                                                          "original"))
        assert "tokenizer.json" not in os.listdir(mnt("tok", "original"))
        assert "tokenizer.json" not in os.listdir(mnt("tok", "rtn_w4_g128"))
        for name in ("shard", "index"):
            assert evil[name][1] not in os.listdir(mnt(name, "original"))
        for p in (("weights", "rtn_w4_g128", "model.safetensors"),
                  ("shard", "rtn_w4_g128", "model.safetensors"),
                  ("index", "rtn_w4_g128", "model.safetensors"),
                  ("weights", "original", "model.gguf"),
                  ("config", "original", "config.json"),
                  ("folder", "original", "config.json"),
                  ("good", "gptq_w4_g128@sec", "model.safetensors")):
            try:
                data = open(mnt(*p), "rb").read()
                raise AssertionError("served %s: %d bytes" % (p, len(data)))
            except OSError as e:
                assert e.errno in (errno.ENOENT, errno.EIO, errno.EACCES), e
        wait_log(m, "is not followed")
        # everything that is served holds no byte of the secrets
        secret = open(sec_st, "rb").read()[-4096:]
        for root, dirs, files in os.walk(m.mnt):
            dirs[:] = [d for d in dirs if d in (
                "weights", "tok", "good", "shard", "index", "original",
                "rtn_w4_g128")]
            for f in files:
                data = open(os.path.join(root, f), "rb").read()
                assert b"TOPSECRET" not in data, (root, f)
                assert secret not in data, (root, f)
    assert "TOPSECRET" not in m.stderr()


if __name__ == "__main__":
    run_tests(globals())
