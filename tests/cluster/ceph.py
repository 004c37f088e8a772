"""A throwaway single-node Ceph (one mon, one memstore OSD, radosgw) for the
cluster tests: the S3 server they talk to is a real production engine, not
an emulator that ignores conditional writes (../shared/CLUSTER-NOTES.md).

Everything lives under one temp dir and on 127.0.0.1 with free ports, so
several runs (and several engineers) can share a machine.  Each daemon runs
in the foreground in its own process group, its pid kept here; stop() ends
them by pid, radosgw first, and removes the dir.  Nothing may outlive the
test run: stop() runs from __exit__, from atexit and from the SIGTERM and
SIGHUP handlers installed on the first start, and each daemon gets
PR_SET_PDEATHSIG so that even a `kill -9` of the runner takes them along.
The OSD's objects live in RAM (memstore): a cluster's data vanishes on stop,
but survives kill_rgw()/start_rgw(), which touch radosgw alone.

Every wait has a deadline (60 s by default); a daemon that does not come up
in time, or exits, fails with the last lines of its log.

usage as a script (a smoke test): ceph.py  -- starts, prints times, stops.
"""
import atexit
import ctypes
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph",
            "monmaptool")
PACKAGES = "radosgw ceph-mon ceph-osd ceph-common"
REGION = "us-east-1"
OWNER = "test"          # the uid whose keys env() gives, the buckets' owner
GRACE_S = 5             # SIGTERM to SIGKILL, per daemon

_live = set()           # started Ceph objects, for atexit and signals
_live_lock = threading.Lock()
_handlers_installed = False


class CephError(Exception):
    pass


def scratch_dir(prefix):
    """A folder under $TMPDIR for one test (a fleet test's two machines
    hold up to 2 GB), removed when the run ends, passed or not."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, tmp, True)
    return tmp


def free_port(taken=()):
    """A port free on 127.0.0.1 now, drawn below the kernel's ephemeral
    range: a port the kernel picked for us could be handed to any outgoing
    connection before the daemon binds it, and radosgw must get the same
    port back after kill_rgw().  (Ceph's OSDs bind 6800-7300.)"""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = secrets.randbelow(low - 1 - 10000) + 10000
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if not 6800 <= port <= 7300 and port not in taken:
            return port
    raise CephError("no free port on 127.0.0.1 in 10000-%d" % low)


try:                    # looked up here: the child between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl    # must not dlopen
except (OSError, AttributeError):
    _prctl = None       # not Linux: atexit and signals still stop them
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """preexec_fn: SIGKILL this child when the thread that started it
    dies, even by kill -9 of the runner."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop_all():
    with _live_lock:
        live = list(_live)
    for c in live:
        c.stop()


def _on_signal(signum, frame):
    # SystemExit unwinds the tests' finally blocks (unmounts), then atexit
    raise SystemExit(128 + signum)


def _install_handlers():
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_signal)


def _key(n, alphabet):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def tail(path, n=25):
    """The last n lines of a log, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return "(no log %s: %s)" % (path, e.strerror)
    return "\n".join(lines[-n:])


# Why the settings that are not the defaults (measured here, Ceph 16.2.15):
# - auth none needs the ms_*_mode lines too, or radosgw loops on
#   "get_initial_auth_request returned -13" (CLUSTER-NOTES.md);
# - paxos propose interval 0.05 s (default 1 s): every pool radosgw makes
#   waited about 2 s for a map commit; start 13.6 s -> 1.9 s, the first
#   bucket 2.8 s -> 0.14 s and the first PUT 2.0 s -> 0.12 s;
# - a radosgw killed with -9 leaves its watches on the control objects, and
#   each metadata change (a new bucket) waits for them to time out: 30 s by
#   default, 3 s here, with the clients' pings every second to keep live
#   watches alive;
# - tcp_nodelay=1: without it every small answer waits 40 ms (Nagle on the
#   server against the client's delayed ACK): a HEAD took 40 ms, now < 1 ms.
CONF = """[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
ms mon cluster mode = crc secure
ms mon service mode = crc secure
ms client mode = crc secure
ms cluster mode = crc secure
ms service mode = crc secure
run dir = {dir}/run
pid file = {dir}/run/$name.pid
log file = {dir}/log/$name.log
log to stderr = false
err to stderr = true
osd objectstore = memstore
memstore device bytes = 4294967296
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
paxos propose interval = 0.05
paxos min wait = 0.01
osd op num shards = 2
osd op num threads per shard = 1
osd client watch timeout = 3
objecter tick interval = 1

[mon]
mon data = {dir}/mon/$cluster-$id
mon cluster log file = {dir}/log/cluster.log

[osd]
osd data = {dir}/osd/$cluster-$id

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw data = {dir}/rgw
rgw thread pool size = 64
rgw enable usage log = false
"""


class Ceph:
    """One mon, one memstore OSD and radosgw, as a context manager.

    endpoint, access_key, secret_key, region: what an S3 client needs;
    env(): the same as AWS_* variables for child processes.
    """

    def __init__(self, timeout=60, verbose=True):
        self.timeout = timeout
        self.verbose = verbose
        self.dir = None
        self.procs = {}         # name -> Popen, the daemons running now
        self.pids = {}          # name -> pid of every daemon ever started
        self.mon_port = self.rgw_port = None
        self.endpoint = None
        self.access_key = _key(20, string.ascii_uppercase + string.digits)
        self.secret_key = _key(40, string.ascii_letters + string.digits)
        self.region = REGION
        self.start_s = self.stop_s = None

    @staticmethod
    def available():
        """(True, "") when the Ceph binaries are installed, else (False,
        a sentence saying what is missing)."""
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            return False, "no %s (apt-get install %s; scripts/setup " \
                "does it)" % (", ".join(missing), PACKAGES)
        return True, ""

    def env(self, keys=None):
        """AWS_* variables for a child process; keys: (access, secret) of
        another user (add_user()), else the owner's."""
        ak, sk = keys or (self.access_key, self.secret_key)
        return {"AWS_ACCESS_KEY_ID": ak,
                "AWS_SECRET_ACCESS_KEY": sk,
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region}

    def credentials_file(self, path, keys=None):
        """Write keys (default: the owner's) as an AWS shared credentials
        file, mode 0600, profile [default]; returns path."""
        ak, sk = keys or (self.access_key, self.secret_key)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("[default]\naws_access_key_id = %s\n"
                    "aws_secret_access_key = %s\n" % (ak, sk))
        return path

    def add_user(self, uid):
        """Another radosgw user (no buckets of its own, no rights on the
        owner's until a bucket policy grants them); (access, secret)."""
        keys = (_key(20, string.ascii_uppercase + string.digits),
                _key(40, string.ascii_letters + string.digits))
        self._run("user create", "radosgw-admin", "user", "create",
                  "--uid=" + uid, "--display-name=" + uid,
                  "--access-key=" + keys[0], "--secret-key=" + keys[1])
        return keys

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- start ------------------------------------------------------------

    def start(self):
        ok, why = Ceph.available()
        if not ok:
            raise CephError(why)
        t0 = time.monotonic()
        _install_handlers()
        for attempt in range(3):
            try:
                steps = self._start_once()
                break
            except CephError as e:
                # another process took a port between the draw and the bind
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
                self._say("ceph: a port was taken, starting again")
        self.start_s = time.monotonic() - t0
        self._say("ceph: started in %.1f s (%s s; mon :%d, radosgw %s, "
                  "dir %s)" % (self.start_s, ", ".join(steps), self.mon_port,
                               self.endpoint, self.dir))

    def _start_once(self):
        """Start the whole cluster, each step timed; stop it on failure."""
        with _live_lock:
            _live.add(self)
        steps = []
        try:
            for step in (self._setup, self._start_mon, self._start_osd,
                         self._create_user, self.start_rgw):
                t = time.monotonic()
                step()
                steps.append("%s %.1f" % (step.__name__.strip("_"),
                                          time.monotonic() - t))
        except BaseException:
            self.stop()
            raise
        return steps

    def _setup(self):
        self.dir = tempfile.mkdtemp(prefix="qfceph.")
        for d in ("run", "log", "mon", "osd", "rgw"):
            os.makedirs(os.path.join(self.dir, d))
        self.fsid = str(uuid.uuid4())
        self.mon_port = free_port()
        self.rgw_port = free_port(taken=(self.mon_port,))
        self.endpoint = "http://127.0.0.1:%d" % self.rgw_port
        self.conf = os.path.join(self.dir, "ceph.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(fsid=self.fsid, dir=self.dir,
                                mon_port=self.mon_port,
                                rgw_port=self.rgw_port))

    def _say(self, msg):
        if self.verbose:
            print(msg, flush=True)

    def _log(self, name):
        return os.path.join(self.dir, "log", name + ".log")

    def _run(self, what, *args, timeout=None):
        """A short command against the cluster; its stdout, or CephError
        with its output when it fails or overruns."""
        cmd = [args[0], "-c", self.conf] + list(args[1:])
        try:
            r = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=timeout or self.timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CephError("%s: '%s' did not finish in %d s" % (
                what, " ".join(cmd), timeout or self.timeout)) from None
        if r.returncode != 0:
            raise CephError("%s: '%s' exited %d\n%s%s" % (
                what, " ".join(cmd), r.returncode, r.stdout, r.stderr))
        return r.stdout

    def _spawn(self, name, *args):
        """Start daemon `name` in the foreground, in its own process
        group; its stdout/stderr go to log/<name>.out."""
        out = open(os.path.join(self.dir, "log", name + ".out"), "ab")
        cmd = [args[0], "-f", "-c", self.conf] + list(args[1:])
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT,
                                 start_new_session=True,
                                 preexec_fn=_die_with_parent)
        finally:
            out.close()
        self.procs[name] = p
        self.pids.setdefault(name, []).append(p.pid)
        return p

    def _failure(self, name, logname, why):
        """CephError for daemon `name` with the end of its logs."""
        out = os.path.join(self.dir, "log", name + ".out")
        return CephError("%s %s\n--- %s:\n%s\n--- %s:\n%s" % (
            name, why, self._log(logname), tail(self._log(logname)),
            out, tail(out, 10)))

    def _wait(self, name, logname, ready, what):
        """Poll ready() until true; fail when the daemon exits or the
        deadline passes."""
        deadline = time.monotonic() + self.timeout
        while True:
            p = self.procs.get(name)
            if p is not None and p.poll() is not None:
                raise self._failure(name, logname, "exited %d before %s" % (
                    p.returncode, what))
            if ready():
                return
            if time.monotonic() > deadline:
                raise self._failure(name, logname, "not %s within %d s" % (
                    what, self.timeout))
            time.sleep(0.25)

    def _start_mon(self):
        monmap = os.path.join(self.dir, "monmap")
        self._run("monmap", "monmaptool", "--create", "--addv", "a",
                  "[v2:127.0.0.1:%d]" % self.mon_port, "--fsid",
                  self.fsid, monmap)
        self._run("mon mkfs", "ceph-mon", "--mkfs", "-i", "a",
                  "--monmap", monmap)
        self._spawn("mon", "ceph-mon", "-i", "a")

    def _ceph_ok(self, *args):
        """ceph ARGS succeeds (a probe: a short connect timeout)."""
        try:
            return self._run("probe", "ceph", "--connect-timeout", "5",
                             *args, timeout=15)
        except CephError:
            return None

    def _start_osd(self):
        osd_uuid = str(uuid.uuid4())
        self._wait("mon", "mon.a", lambda: self._ceph_ok("mon", "stat"),
                   "answering")
        osd_id = self._run("osd new", "ceph", "osd", "new", osd_uuid).strip()
        self.osd_name = "osd." + osd_id
        os.makedirs(os.path.join(self.dir, "osd", "ceph-" + osd_id))
        self._run("osd mkfs", "ceph-osd", "-i", osd_id, "--mkfs",
                  "--osd-uuid", osd_uuid)
        self._spawn("osd", "ceph-osd", "-i", osd_id)

        def up():
            s = self._ceph_ok("osd", "stat", "-f", "json")
            return s is not None and json.loads(s).get("num_up_osds") == 1
        self._wait("osd", self.osd_name, up, "up")

    def _create_user(self):
        self._run("user create", "radosgw-admin", "user", "create",
                  "--uid=" + OWNER, "--display-name=quantfs tests",
                  "--access-key=" + self.access_key,
                  "--secret-key=" + self.secret_key)

    # -- radosgw alone ----------------------------------------------------

    def _http_answers(self):
        c = http.client.HTTPConnection("127.0.0.1", self.rgw_port, timeout=2)
        try:
            c.request("GET", "/")
            c.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            c.close()

    def start_rgw(self):
        """Start radosgw (again after kill_rgw()) on the same endpoint and
        wait until it answers HTTP; returns the seconds it took.  Call it
        from a thread that outlives radosgw (PR_SET_PDEATHSIG)."""
        if self.rgw_alive():
            return 0.0
        t0 = time.monotonic()
        self._spawn("rgw", "radosgw", "-n", "client.rgw.a")
        self._wait("rgw", "client.rgw.a", self._http_answers,
                   "answering HTTP on " + self.endpoint)
        return time.monotonic() - t0

    def rgw_alive(self):
        p = self.procs.get("rgw")
        return p is not None and p.poll() is None

    def kill_rgw(self):
        """SIGKILL radosgw alone (mon and OSD keep the data)."""
        p = self.procs.pop("rgw", None)
        if p is None:
            return
        _signal(p, signal.SIGKILL)
        p.wait()

    # -- stop -------------------------------------------------------------

    def stop(self):
        """radosgw, then the OSD, then the mon: SIGTERM, SIGKILL after
        GRACE_S; then the dir goes.  Safe to call twice."""
        with _live_lock:
            if self not in _live:
                return
            _live.discard(self)
        t0 = time.monotonic()
        for name in ("rgw", "osd", "mon"):
            p = self.procs.pop(name, None)
            if p is not None:
                _terminate(p)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.stop_s = time.monotonic() - t0
        self._say("ceph: stopped in %.1f s" % self.stop_s)


def _signal(p, sig):
    """Signal a daemon's process group (its own: start_new_session)."""
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def _terminate(p):
    if p.poll() is not None:
        return
    _signal(p, signal.SIGTERM)
    try:
        p.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        _signal(p, signal.SIGKILL)
        p.wait()


if __name__ == "__main__":
    ok, why = Ceph.available()
    if not ok:
        print("skip: " + why)
        sys.exit(77)
    with Ceph() as c:
        print("endpoint %s, pids %s" % (c.endpoint, c.pids))
