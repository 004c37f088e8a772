/*
 * s3.h - a thread-safe S3 client (path-style addressing) for the remote
 * tier: objects, conditional writes, listings, credentials.
 *
 * Built on libcurl 7.88 with our own SigV4 signer (sigv4.h), following
 * what radosgw 16 was measured to need (CLUSTER-NOTES.md): every request
 * carries and signs x-amz-content-sha256 with the real SHA-256 of its
 * body; query strings are sent already canonical; If-Match carries the
 * ETag unquoted; curl's "Expect: 100-continue" is switched off by an
 * unsigned "Expect:" header.  Knows nothing of what the objects mean.
 */
#ifndef QF_S3_H
#define QF_S3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

struct qf_s3;

struct qf_s3_creds {
	char *access_key;	/* owned */
	char *secret_key;	/* owned, wiped on free */
	char *session_token;	/* owned, NULL when none */
};

/*
 * Credentials: the standard AWS environment variables (AWS_ACCESS_KEY_ID
 * and AWS_SECRET_ACCESS_KEY, both set and non-empty, AWS_SESSION_TOKEN
 * optional) first; else the shared-credentials file `file` (NULL:
 * $AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials), section
 * [$AWS_PROFILE or default], keys aws_access_key_id, aws_secret_access_key,
 * aws_session_token.  The file must be a regular file owned by the caller
 * (or root) with no group/other permission bits: otherwise refused with a
 * logged reason (-EPERM).  Never from mount options.  Returns 0, -ENOENT
 * (no file, or no such section), -EPERM, QF_EFORMAT (a line that is not a
 * section, a key = value or a comment; a section without both keys),
 * -ENOMEM.  *out is zeroed first; free with qf_s3_creds_free().
 */
int qf_s3_creds_load(const char *file, struct qf_s3_creds *out);
void qf_s3_creds_free(struct qf_s3_creds *c);	/* accepts NULL fields */

struct qf_s3_cfg {
	const char *endpoint;	/* "http://127.0.0.1:8000", no path */
	const char *bucket;
	const char *region;	/* NULL: $AWS_REGION, $AWS_DEFAULT_REGION,
				 * else "us-east-1" */
	const struct qf_s3_creds *creds;	/* copied */
	long connect_timeout_ms;	/* 0: 2000 */
	long timeout_ms;	/* 0: no total limit, but a low-speed limit
				 * (< 1 KB/s for 10 s) aborts */
	unsigned list_max_keys;	/* 0: the server's page (1000); tests use
				 * a few to exercise continuation */
};

/* if_none_match: "If-None-Match: *"; if_match: an ETag, sent UNQUOTED
 * (radosgw 16 needs that) */
struct qf_s3_cond {
	bool if_none_match;
	const char *if_match;
};

/*
 * One answer.  Zero it (or QF_S3_RESP_INIT) before its first use; each
 * call resets every field and reuses body's memory.  Release with
 * qf_s3_resp_free() (the same as qf_buf_release(&r->body)).
 */
struct qf_s3_resp {
	long status;		/* HTTP status; 0 when no answer came */
	char etag[96];		/* unquoted, "" when none */
	double last_modified;	/* Unix seconds from Last-Modified, 0 none */
	double date;		/* Unix seconds from the server's Date, 0 none */
	uint64_t length;	/* Content-Length, 0 when none */
	struct qf_buf body;	/* GET, LIST and error bodies */
	char error[160];	/* transport error or S3 <Code>, for logs */
};
#define QF_S3_RESP_INIT { 0, "", 0, 0, 0, QF_BUF_INIT, "" }
void qf_s3_resp_free(struct qf_s3_resp *r);

/* Copies everything in cfg.  0, -EINVAL (no endpoint, bucket or
 * credentials; an endpoint not http:// or https://), -ENOMEM, -EIO (curl
 * would not start).  Caller owns *out; qf_s3_close(). */
int qf_s3_open(const struct qf_s3_cfg *cfg, struct qf_s3 **out);
void qf_s3_close(struct qf_s3 *s);	/* no call may be in flight; NULL ok */
/* "s3://bucket at http://host:port", for logs; valid until close */
const char *qf_s3_describe(const struct qf_s3 *s);

/*
 * Each returns 0 when the server answered (whatever the status: 2xx, 304,
 * 404, 412, 403 ...; the caller decides), or a negative errno when no
 * answer came (-ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH, -EIO, -ENOMEM),
 * with r->error saying why.  Thread-safe: a pool of kept-alive curl
 * handles, one per call in flight.  max bounds a GET body (a longer body:
 * -EFBIG, r->status set).  Keys are raw bytes ('/' kept, the rest
 * percent-encoded here); -EINVAL for an empty key.
 */
int qf_s3_get(struct qf_s3 *s, const char *key, uint64_t max,
	      struct qf_s3_resp *r);
int qf_s3_head(struct qf_s3 *s, const char *key, struct qf_s3_resp *r);
int qf_s3_put(struct qf_s3 *s, const char *key, const void *data,
	      size_t len, const struct qf_s3_cond *cond, struct qf_s3_resp *r);
int qf_s3_delete(struct qf_s3 *s, const char *key, struct qf_s3_resp *r);
/* PUT /bucket: 200; when it exists, 409 BucketAlreadyOwnedByYou/Exists, or
 * 200 again (radosgw 16 for the owner's own bucket in us-east-1) */
int qf_s3_bucket_create(struct qf_s3 *s, struct qf_s3_resp *r);

struct qf_s3_obj {
	char *key;		/* owned, NUL-terminated, <= 1024 bytes */
	uint64_t size;		/* bytes */
	double last_modified;	/* Unix seconds, 0 when absent */
	char etag[96];		/* unquoted, "" when absent */
};
struct qf_s3_list {
	struct qf_s3_obj *obj;	/* owned, n of them */
	size_t n;
	size_t cap;		/* allocated entries (internal) */
};
#define QF_S3_LIST_INIT { NULL, 0, 0 }

/*
 * Every object under prefix ("" or NULL: all), ListObjectsV2 pages
 * followed through their continuation tokens, appended to *out (zero it
 * first).  0; -errno when no answer came; -EIO when the server answered
 * anything but 200 (r holds that answer); QF_EFORMAT for a listing that
 * does not parse (or a truncated page without a token).  Free with
 * qf_s3_list_free() whatever the result.
 */
int qf_s3_list(struct qf_s3 *s, const char *prefix, struct qf_s3_list *out,
	       struct qf_s3_resp *r);
void qf_s3_list_free(struct qf_s3_list *l);

/*
 * The ListObjectsV2 XML parser, exposed for tests and fuzzing: appends
 * the <Contents> objects to out, sets *truncated (<IsTruncated>) and
 * *next (<NextContinuationToken>, malloc'ed, NULL when absent; caller
 * frees).  Bounded: rejects bodies over 16 MiB, keys over 1024 bytes or
 * holding NUL, sizes past 2^64, ETags of 96 bytes or more.  Decodes the
 * five XML entities and numeric character references.  0, QF_EFORMAT or
 * -ENOMEM; on failure out is as it was and *next NULL.
 */
#define QF_S3_LIST_MAX_BODY (16u << 20)
#define QF_S3_KEY_MAX 1024
int qf_s3_list_parse(const char *xml, size_t len, struct qf_s3_list *out,
		     bool *truncated, char **next);

/*
 * Strict time parsers: an RFC 7231 IMF-fixdate ("Sun, 06 Nov 1994
 * 08:49:37 GMT", the weekday checked) and the ISO 8601 form of S3
 * listings ("2009-10-12T17:50:30.000Z"), len bytes, into Unix seconds.
 * 0 or QF_EFORMAT.
 */
int qf_s3_parse_http_date(const char *s, size_t len, double *out);
int qf_s3_parse_iso8601(const char *s, size_t len, double *out);

#endif /* QF_S3_H */
