"""Helpers for the mount tests: a real quantfs daemon on a temp dir.

Every mount is unmounted in a finally block; a daemon that does not come
up within the deadline fails the test with its stderr.
"""
import atexit
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

QUANTFS = os.environ.get("QUANTFS", "quantfs")
SHARED = os.environ.get("QF_SHARED", os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared"))


def mounted(mnt):
    mnt = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mnt for line in f)


class Mount:
    """quantfs mount SRC MNT -f -o ... as a context manager."""

    def __init__(self, src, mnt=None, cache=None, opts=(), debug=True,
                 env=None):
        """src None: `quantfs mount MNT` (the hub cache of env)."""
        self.src = src
        self.env = dict(os.environ, **(env or {}))
        self.tmp = tempfile.mkdtemp(prefix="qfmnt.")
        # its log and default cache, gone when the test process ends
        atexit.register(shutil.rmtree, self.tmp, True)
        self.mnt = mnt or os.path.join(self.tmp, "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        self.cache = cache or os.path.join(self.tmp, "cache")
        o = ["cache=" + self.cache] + list(opts) + (["debug"] if debug else [])
        self.log = os.path.join(self.tmp, "daemon.log")
        self.args = [QUANTFS, "mount"] + ([src] if src else []) + \
            [self.mnt, "-f", "-o", ",".join(o)]
        self.proc = None

    def __enter__(self):
        self.logf = open(self.log, "w")
        self.proc = subprocess.Popen(self.args, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 20
        while not mounted(self.mnt):
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited %d: %s" % (
                    self.proc.returncode, self.stderr()))
            if time.time() > deadline:
                self.proc.kill()
                raise AssertionError("mount did not appear: " + self.stderr())
            time.sleep(0.02)
        return self

    def alive(self):
        return self.proc.poll() is None and mounted(self.mnt)

    def umount(self):
        if self.proc is None:
            return 0
        if mounted(self.mnt):
            subprocess.run([QUANTFS, "umount", self.mnt], check=False)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            subprocess.run(["umount", "-l", self.mnt], check=False)
        self.proc = None
        self.logf.flush()
        self.logf.close()
        return rc

    def stderr(self):
        if not self.logf.closed:
            self.logf.flush()
        with open(self.log) as f:
            return f.read()

    def kill9(self):
        """kill -9 the daemon, detach its mount; the log stays readable."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        subprocess.run(["umount", "-l", self.mnt], check=False)
        self.proc = None
        self.logf.close()

    def __exit__(self, *exc):
        rc = self.umount()
        if exc[0] is None and rc != 0:
            raise AssertionError("daemon exit status %d: %s" % (
                rc, self.stderr()))
        return False


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def sha_in_parallel(mounts, rel):
    """sha256 of MNT/rel read at the same time through each mount."""
    out = [None] * len(mounts)

    def rd(i):
        out[i] = sha(os.path.join(mounts[i].mnt, rel))
    th = [threading.Thread(target=rd, args=(i,)) for i in range(len(mounts))]
    [t.start() for t in th]
    [t.join() for t in th]
    return out


def qf(*args, check=True):
    """Run `quantfs ARGS`; fail with its output when check and it fails."""
    r = subprocess.run([QUANTFS] + [str(a) for a in args],
                       capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError("quantfs %s: rc %d\n%s%s" % (
            " ".join(map(str, args)), r.returncode, r.stdout, r.stderr))
    # sanitizer builds: UBSan reports without failing the process
    assert "runtime error" not in r.stderr and \
        "Sanitizer" not in r.stderr, r.stderr
    return r


NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                        "node")


def need_client():
    """SkipTest unless node-llama-cpp is installed in tests/node."""
    if not os.path.exists(os.path.join(NODE_DIR, "node_modules",
                                       "node-llama-cpp")):
        raise SkipTest("node-llama-cpp is not installed (scripts/setup "
                       "runs npm in tests/node)")


def gguf_client(path, req):
    """tests/node/gguf_client.mjs (llama.cpp) on path with request req;
    its JSON answer."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(req, f)
        f.flush()
        r = subprocess.run(["node", os.path.join(NODE_DIR,
                                                 "gguf_client.mjs"),
                            path, f.name], capture_output=True, text=True,
                           timeout=600)
    out = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout else {}
    assert r.returncode == 0 and "error" not in out, (r.stdout, r.stderr)
    return out


def llama_reads(paths):
    """llama.cpp (node-llama-cpp) loads each GGUF file of paths and
    generates one token from it (SkipTest without the client)."""
    need_client()
    for p in paths:
        out = gguf_client(p, {"prompt": "Once upon a time", "n": 1})
        assert len(out["gen_ids"]) == 1, (p, out)


def eval_windows(ids_file, ctx):
    """`quantfs eval`'s windows of --ids-out FILE: chunks of ctx - 1
    tokens after BOS (ctx without)."""
    j = json.load(open(ids_file))
    bos, ids = j["bos"], j["ids"]
    chunk = ctx - 1 if bos >= 0 else ctx
    return [([bos] if bos >= 0 else []) + ids[i:i + chunk]
            for i in range(0, len(ids), chunk)]


def cache_ls(cache):
    """`quantfs cache ls --json` of cache."""
    return json.loads(qf("cache", "ls", "--json", "--cache", cache).stdout)


def mkmodel(dest, *args):
    subprocess.run([QUANTFS, "mkmodel", dest] + [str(a) for a in args],
                   check=True)
    return dest


def hub_repo(hub, repo_id, snapshots, main=None, refs=None):
    """models--ORG--NAME: blobs named by their sha256, each snapshot file
    a relative link ../../blobs/<hash>, refs/<name> naming commits."""
    repo = os.path.join(hub, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    for rev, src in snapshots.items():
        add_snapshot(repo, rev, src)
    for ref, rev in dict(refs or {}, **({"main": main} if main else {})
                         ).items():
        set_ref(repo, ref, rev)
    return repo


def add_snapshot(repo, rev, src, skip=()):
    snap = os.path.join(repo, "snapshots", rev)
    os.makedirs(snap)
    for f in sorted(os.listdir(src)):
        data = open(os.path.join(src, f), "rb").read()
        h = hashlib.sha256(data).hexdigest()
        blob = os.path.join(repo, "blobs", h)
        if f in skip:		# still downloading
            open(blob + ".incomplete", "wb").write(data[:len(data) // 2])
            continue
        if not os.path.exists(blob):
            open(blob, "wb").write(data)
        os.symlink(os.path.join("..", "..", "blobs", h),
                   os.path.join(snap, f))
    return snap


def set_ref(repo, ref, rev):
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    tmp = os.path.join(repo, "refs", "." + ref)
    open(tmp, "w").write(rev)
    os.rename(tmp, os.path.join(repo, "refs", ref))


def rev(n):
    return hashlib.sha1(b"rev%d" % n).hexdigest()


def run_tests(module_globals, needs_fuse=True):
    """Run every test_* function; print 'N passed, N failed, N skipped'.
    needs_fuse False: the tests skip one by one where they need FUSE."""
    if needs_fuse and not os.path.exists("/dev/fuse"):
        print("skip: /dev/fuse is absent, no FUSE mount is possible")
        sys.exit(77)
    only = sys.argv[1:]
    passed = failed = skipped = 0
    for name, fn in sorted(module_globals.items()):
        if not name.startswith("test_") or not callable(fn):
            continue
        if only and name not in only:
            continue
        t0 = time.time()
        try:
            fn()
        except SkipTest as e:
            skipped += 1
            print("SKIP %s: %s" % (name, e))
            continue
        except Exception:
            failed += 1
            print("FAIL %s" % name)
            traceback.print_exc(file=sys.stdout)
            continue
        passed += 1
        print("ok   %s (%.2f s)" % (name, time.time() - t0))
    line = "%d passed, %d failed" % (passed, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line)
    sys.exit(1 if failed else 0)


class SkipTest(Exception):
    pass


def real_model(name="tinystories-llama-5m"):
    """The project's real model in SHARED/data/models: (its folder, its
    config.json); SkipTest where the shared data is absent."""
    model = os.path.join(SHARED, "data", "models", name)
    if not os.path.exists(model):
        raise SkipTest("../shared/data is absent")
    return model, json.load(open(os.path.join(model, "config.json")))
