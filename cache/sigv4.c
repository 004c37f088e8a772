/*
 * sigv4.c - AWS Signature Version 4 (see sigv4.h).
 *
 * The four steps of the AWS reference: the canonical request, the string
 * to sign (its SHA-256 under the credential scope), the signing key (an
 * HMAC chain over date, region, service, "aws4_request") and the
 * signature.  Header values are canonicalized as the suite's
 * get-header-value-trim case wants; multi-line values are not supported
 * (we never send one).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "sigv4.h"

#define SIGV4_MAX_HEADERS 64

struct sigv4_hdr {
	char *name;	/* lower case, owned */
	char *value;	/* trimmed, inner spaces collapsed, owned */
};

int qf_sigv4_uri_encode(const char *s, bool keep_slash, struct qf_buf *out)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;
	char esc[3];
	int ret = 0;

	for (p = (const unsigned char *)s; *p && !ret; p++) {
		if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' ||
		    *p == '~' || (*p == '/' && keep_slash)) {
			ret = qf_buf_add(out, p, 1);
			continue;
		}
		esc[0] = '%';
		esc[1] = hex[*p >> 4];
		esc[2] = hex[*p & 15];
		ret = qf_buf_add(out, esc, 3);
	}
	if (!ret && !out->data)
		ret = qf_buf_adds(out, "");	/* "" is a string, not NULL */
	return ret;
}

/* name (len bytes) lower-cased, value trimmed with inner spaces collapsed */
static int hdr_set(struct sigv4_hdr *h, const char *name, size_t len,
		   const char *value)
{
	size_t i, n = 0;

	h->name = strndup(name, len);
	h->value = malloc(strlen(value) + 1);
	if (!h->name || !h->value)
		return -ENOMEM;
	for (i = 0; i < len; i++)
		h->name[i] = (char)tolower((unsigned char)h->name[i]);
	while (*value == ' ' || *value == '\t')
		value++;
	for (; *value; value++) {
		if (*value == ' ' || *value == '\t') {
			if (n && h->value[n - 1] != ' ')
				h->value[n++] = ' ';
		} else {
			h->value[n++] = *value;
		}
	}
	if (n && h->value[n - 1] == ' ')
		n--;
	h->value[n] = '\0';
	return 0;
}

static int hdr_cmp(const void *a, const void *b)
{
	return strcmp(((const struct sigv4_hdr *)a)->name,
		      ((const struct sigv4_hdr *)b)->name);
}

/* The headers to sign, the caller's and ours, sorted by name. */
static int hdrs_collect(const struct qf_sigv4 *r, struct sigv4_hdr *h,
			size_t *n)
{
	const char *const *p;
	const char *colon;
	int ret = 0;

	*n = 0;
	for (p = r->headers; p && *p; p++) {
		colon = strchr(*p, ':');
		if (!colon || colon == *p || *n >= SIGV4_MAX_HEADERS - 4)
			return -EINVAL;
		ret = hdr_set(&h[(*n)++], *p, (size_t)(colon - *p), colon + 1);
		if (ret < 0)
			return ret;
	}
	ret = hdr_set(&h[(*n)++], "host", 4, r->host);
	if (!ret)
		ret = hdr_set(&h[(*n)++], "x-amz-date", 10, r->amz_date);
	if (!ret && !r->omit_content_sha256)
		ret = hdr_set(&h[(*n)++], "x-amz-content-sha256", 20,
			      r->payload_sha256);
	if (!ret && r->session_token)
		ret = hdr_set(&h[(*n)++], "x-amz-security-token", 20,
			      r->session_token);
	if (!ret)
		qsort(h, *n, sizeof(*h), hdr_cmp);
	return ret;
}

static void sha256_hex(const void *data, size_t len, char hex[65])
{
	struct qf_sha256 c;
	uint8_t d[32];

	qf_sha256_init(&c);
	qf_sha256_update(&c, data, len);
	qf_sha256_final(&c, d);
	qf_hex(d, 32, hex);
}

/* canonical request into cr, signed header names into names */
static int canonical_build(const struct qf_sigv4 *r, struct qf_buf *cr,
			   struct qf_buf *names)
{
	struct sigv4_hdr h[SIGV4_MAX_HEADERS] = { { NULL, NULL } };
	size_t i, n = 0;
	int ret;

	ret = hdrs_collect(r, h, &n);
	if (!ret)
		ret = qf_buf_addf(cr, "%s\n%s\n%s\n", r->method, r->path,
				  r->query ? r->query : "");
	for (i = 0; i < n && !ret; i++) {
		ret = qf_buf_addf(cr, "%s:%s\n", h[i].name, h[i].value);
		if (!ret)
			ret = qf_buf_addf(names, "%s%s", i ? ";" : "",
					  h[i].name);
	}
	if (!ret)
		ret = qf_buf_addf(cr, "\n%s\n%s", names->data,
				  r->payload_sha256);
	for (i = 0; i < SIGV4_MAX_HEADERS; i++) {
		free(h[i].name);
		free(h[i].value);
	}
	return ret;
}

static int hmac(const void *key, size_t klen, const char *msg, uint8_t out[32])
{
	unsigned int olen = 32;

	if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg,
		  strlen(msg), out, &olen) || olen != 32)
		return -ENOMEM;
	return 0;
}

/* the signature of sts, hex, from the secret and the scope's parts */
static int signature(const struct qf_sigv4 *r, const char *day,
		     const char *sts, char hex[65])
{
	struct qf_buf k = QF_BUF_INIT;
	uint8_t a[32], b[32];
	int ret;

	ret = qf_buf_addf(&k, "AWS4%s", r->secret_key);
	if (!ret)
		ret = hmac(k.data, k.len, day, a);
	if (!ret)
		ret = hmac(a, 32, r->region, b);
	if (!ret)
		ret = hmac(b, 32, r->service, a);
	if (!ret)
		ret = hmac(a, 32, "aws4_request", b);
	if (!ret)
		ret = hmac(b, 32, sts, a);
	if (!ret)
		qf_hex(a, 32, hex);
	if (k.data)
		memset(k.data, 0, k.len);	/* the secret, in clear */
	qf_buf_release(&k);
	return ret;
}

static bool sigv4_valid(const struct qf_sigv4 *r)
{
	return r->method && r->host && r->path && r->payload_sha256 &&
	       r->amz_date && strlen(r->amz_date) == 16 && r->region &&
	       r->service && r->access_key && r->secret_key;
}

int qf_sigv4_sign(const struct qf_sigv4 *r, struct qf_buf *out,
		  struct qf_buf *canonical, struct qf_buf *to_sign)
{
	struct qf_buf cr = QF_BUF_INIT, names = QF_BUF_INIT, sts = QF_BUF_INIT;
	char day[9], crhash[65], sig[65];
	int ret;

	qf_buf_reset(out);
	if (!sigv4_valid(r))
		return -EINVAL;
	memcpy(day, r->amz_date, 8);
	day[8] = '\0';
	ret = canonical_build(r, &cr, &names);
	if (!ret) {
		sha256_hex(cr.data, cr.len, crhash);
		ret = qf_buf_addf(&sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/%s/"
				  "aws4_request\n%s", r->amz_date, day,
				  r->region, r->service, crhash);
	}
	if (!ret)
		ret = signature(r, day, sts.data, sig);
	if (!ret)
		ret = qf_buf_addf(out, "AWS4-HMAC-SHA256 Credential=%s/%s/%s/"
				  "%s/aws4_request, SignedHeaders=%s, "
				  "Signature=%s", r->access_key, day,
				  r->region, r->service, names.data, sig);
	if (!ret && canonical) {
		qf_buf_reset(canonical);
		ret = qf_buf_add(canonical, cr.data, cr.len);
	}
	if (!ret && to_sign) {
		qf_buf_reset(to_sign);
		ret = qf_buf_add(to_sign, sts.data, sts.len);
	}
	qf_buf_release(&cr);
	qf_buf_release(&names);
	qf_buf_release(&sts);
	return ret;
}
