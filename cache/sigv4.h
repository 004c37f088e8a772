/*
 * sigv4.h - AWS Signature Version 4 for the S3 client (s3.c).
 *
 * Pure: no I/O, no clock; the caller gives the date.  HMAC-SHA256 comes
 * from libcrypto.  Our own signer rather than libcurl's CURLOPT_AWS_SIGV4,
 * whose canonicalization changed between curl 7.88 and 8.x: the request
 * signed here is the same on every distribution, and it is checked offline
 * against AWS's published test vectors (tests/unit/test_s3.c).
 */
#ifndef QF_SIGV4_H
#define QF_SIGV4_H

#include <stdbool.h>

#include "common.h"

struct qf_sigv4 {
	const char *method;		/* "GET", "PUT", ... */
	const char *host;		/* Host header value, "127.0.0.1:8080" */
	const char *path;		/* canonical URI, already percent-encoded
					 * ("/bucket/a%20b") */
	const char *query;		/* canonical query string (sorted,
					 * encoded, "k=" for empty), "" none */
	const char *const *headers;	/* extra headers to sign, "name:value",
					 * NULL-terminated (may be NULL); host,
					 * x-amz-date, x-amz-content-sha256 (and
					 * x-amz-security-token when
					 * session_token) are added here */
	const char *payload_sha256;	/* hex, or "UNSIGNED-PAYLOAD" */
	const char *amz_date;		/* "20150830T123600Z" */
	const char *region;		/* "us-east-1" */
	const char *service;		/* "s3" */
	const char *access_key, *secret_key, *session_token; /* token: NULL */
	bool omit_content_sha256;	/* do not add x-amz-content-sha256:
					 * only for AWS's generic test suite,
					 * whose requests do not carry it */
};

/*
 * The Authorization header's value into *out (reset first); also the
 * canonical request and the string to sign when those pointers are
 * non-NULL (for tests).  Header values are trimmed and their inner runs of
 * spaces collapsed; names are lower-cased and sorted.  Returns 0, -ENOMEM,
 * or -EINVAL (a missing field, a header without ':', more than 64 headers).
 */
int qf_sigv4_sign(const struct qf_sigv4 *r, struct qf_buf *out,
		  struct qf_buf *canonical, struct qf_buf *to_sign);

/*
 * Percent-encode s per SigV4, appended to out: the unreserved A-Za-z0-9
 * -._~ kept, '/' kept when keep_slash, every other byte as %XX (upper
 * case).  0 or -ENOMEM.
 */
int qf_sigv4_uri_encode(const char *s, bool keep_slash, struct qf_buf *out);

#endif /* QF_SIGV4_H */
