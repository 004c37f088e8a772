"""A small S3 client in the Python standard library, the cluster tests'
oracle: it checks what quantfs's C client (cache/s3.c) puts in a bucket
and plays the other machines and the attacker.  Its SigV4 signer was
written from AWS's description of the algorithm, independently of the C
one, so that one mistake is unlikely to be made twice.

Path-style addressing (http://HOST:PORT/BUCKET/KEY), one kept-alive
connection per thread, x-amz-content-sha256 set to the body's real
SHA-256 (radosgw refuses requests without it and verifies it).  Answers
are (status, headers, body) with lower-case header names; connection
failures raise ConnectionError (OSError) as http.client does.

radosgw 16.2 quirks the callers must know (CLUSTER-NOTES.md): If-Match
matches the ETag only unquoted (etag() strips the quotes), conditional
DELETE is ignored, a failed If-None-Match PUT still sends its whole body.
"""
import datetime
import hashlib
import hmac
import http.client
import json
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
UNRESERVED = "-_.~"             # left as they are by SigV4's URI encoding


def uri_encode(s, keep_slash=False):
    """SigV4 URI encoding: every byte but A-Z a-z 0-9 - _ . ~ as %XX
    (upper-case hex), '/' too unless keep_slash (object key paths)."""
    return urllib.parse.quote(s, safe=UNRESERVED + ("/" if keep_slash
                                                    else ""))


def canonical_query(query):
    """key=value pairs URI-encoded, sorted by encoded key then value; a
    key without value keeps its '='."""
    pairs = sorted((uri_encode(str(k)), uri_encode(str(v)))
                   for k, v in (query or {}).items())
    return "&".join("%s=%s" % kv for kv in pairs)


def signing_key(secret, day, region, service="s3"):
    k = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def sign(method, path, query, headers, payload_hash, access_key, secret,
         region, amz_date, service="s3"):
    """The Authorization header value of one request.  headers: the
    headers to sign (host and x-amz-* included), any case."""
    canon = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    names = sorted(canon)
    creq = "\n".join([method, path, canonical_query(query),
                      "".join("%s:%s\n" % (n, canon[n]) for n in names),
                      ";".join(names), payload_hash])
    day = amz_date[:8]
    scope = "%s/%s/%s/aws4_request" % (day, region, service)
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    sig = hmac.new(signing_key(secret, day, region, service), sts.encode(),
                   hashlib.sha256).hexdigest()
    return "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, " \
        "Signature=%s" % (access_key, scope, ";".join(names), sig)


def etag(headers):
    """The ETag of an answer, unquoted (what radosgw's If-Match wants)."""
    return headers.get("etag", "").strip('"')


class S3:
    """One bucket on one endpoint.  Thread-safe: each thread has its own
    connection."""

    def __init__(self, endpoint, access_key, secret_key, bucket,
                 region="us-east-1", timeout=60):
        u = urllib.parse.urlsplit(endpoint)
        assert u.scheme == "http", "plain http only: " + endpoint
        self.host = u.hostname
        self.port = u.port or 80
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.region = region
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def of(cls, ceph, bucket):
        """A client of the Ceph fixture's endpoint with its keys."""
        return cls(ceph.endpoint, ceph.access_key, ceph.secret_key, bucket,
                   ceph.region)

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port,
                                           timeout=self.timeout)
            self._local.conn = c
            self._local.used = False
        return c

    def close(self):
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def _path(self, key):
        p = "/" + self.bucket
        return p + "/" + uri_encode(key, keep_slash=True) if key else p

    def _headers(self, method, path, query, body, extra):
        amz_date = datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y%m%dT%H%M%SZ")
        h = {"host": "%s:%d" % (self.host, self.port),
             "x-amz-date": amz_date,
             "x-amz-content-sha256": hashlib.sha256(body).hexdigest()}
        if body or method in ("PUT", "POST"):
            h["content-length"] = str(len(body))
        h.update({k.lower(): v for k, v in (extra or {}).items()})
        h["authorization"] = sign(method, path, query, h,
                                  h["x-amz-content-sha256"], self.access_key,
                                  self.secret_key, self.region, amz_date)
        return h

    def send(self, method, key="", query=None, body=b"", headers=None):
        """One signed request; returns the open response (read it before
        the next request of this thread)."""
        path = self._path(key)
        url = path + ("?" + canonical_query(query) if query else "")
        h = self._headers(method, path, query, body, headers)
        # a kept-alive connection the server has closed fails at once:
        # retry on a fresh one, unless the request is conditional (it may
        # have been done; a retry would answer 412 for our own write)
        retry = getattr(self._local, "used", False) and not any(
            k in h for k in ("if-match", "if-none-match"))
        try:
            r = self._attempt(method, url, body, h)
        except (ConnectionError, http.client.HTTPException):
            if not retry:
                raise
            r = self._attempt(method, url, body, h)
        self._local.used = True
        return r

    def _attempt(self, method, url, body, h):
        c = self._conn()
        try:
            c.request(method, url, body=body or None, headers=h)
            return c.getresponse()
        except BaseException:
            self.close()        # half-used: never reuse it
            raise

    def request(self, method, key="", query=None, body=b"", headers=None):
        """(status, headers with lower-case names, body bytes)."""
        r = self.send(method, key, query, body, headers)
        try:
            data = r.read()
        except BaseException:
            self.close()
            raise
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    # -- objects ----------------------------------------------------------

    def create_bucket(self):
        """PUT the bucket; 200 (or 409 when it exists and is ours)."""
        return self.request("PUT")

    def put_policy(self, policy):
        """PUT the bucket policy (a dict, as JSON); the status."""
        return self.request("PUT", query={"policy": ""},
                            body=json.dumps(policy).encode())[0]

    def put(self, key, data, if_none_match=False, if_match=None,
            headers=None):
        """(status, headers, body); if_none_match: create only (If-None-
        Match: *); if_match: replace only this ETag (give it unquoted)."""
        h = dict(headers or {})
        if if_none_match:
            h["If-None-Match"] = "*"
        if if_match is not None:
            h["If-Match"] = if_match
        return self.request("PUT", key, body=bytes(data), headers=h)

    def get(self, key, range=None):
        """(status, headers, body); range: (first, last) bytes, inclusive."""
        h = {"Range": "bytes=%d-%d" % range} if range else None
        return self.request("GET", key, headers=h)

    def head(self, key):
        """(status, headers)."""
        s, h, _ = self.request("HEAD", key)
        return s, h

    def delete(self, key):
        return self.request("DELETE", key)[0]

    def list(self, prefix="", max_keys=1000):
        """Every object under prefix, by ListObjectsV2 pages: a list of
        dicts key, size, etag (unquoted), last_modified."""
        out, token = [], None
        while True:
            q = {"list-type": "2", "prefix": prefix, "max-keys": max_keys}
            if token:
                q["continuation-token"] = token
            s, _, body = self.request("GET", query=q)
            if s != 200:
                raise OSError("list %s: HTTP %d %s" % (prefix, s, body[:300]))
            root = ET.fromstring(body)
            for c in root.findall(NS + "Contents"):
                out.append({"key": c.findtext(NS + "Key"),
                            "size": int(c.findtext(NS + "Size")),
                            "etag": c.findtext(NS + "ETag", "").strip('"'),
                            "last_modified": c.findtext(NS + "LastModified")})
            if root.findtext(NS + "IsTruncated") != "true":
                return out
            token = root.findtext(NS + "NextContinuationToken")

    # -- the benchmark's baseline ------------------------------------------

    def get_seconds(self, key):
        """Seconds to GET key's bytes on the kept-alive connection, the
        body read into one preallocated buffer (nothing kept)."""
        t0 = time.perf_counter()
        r = self.send("GET", key)
        if r.status != 200:
            raise OSError("GET %s: HTTP %d %s" % (key, r.status,
                                                   r.read()[:300]))
        n = int(r.getheader("content-length"))
        buf = memoryview(bytearray(1 << 20))
        while n > 0:
            got = r.readinto(buf[:min(n, len(buf))])
            if got == 0:
                raise OSError("GET %s: short body" % key)
            n -= got
        r.read()
        return time.perf_counter() - t0

    def raw_get_throughput(self, key, repeat=3):
        """MB/s (10^6 bytes) of a raw GET of key, best of repeat, after a
        HEAD that opens the connection: the baseline a variant served
        from the remote tier is compared with."""
        s, h = self.head(key)
        if s != 200:
            raise OSError("HEAD %s: HTTP %d" % (key, s))
        size = int(h["content-length"])
        best = min(self.get_seconds(key) for _ in range(repeat))
        return size / best / 1e6
