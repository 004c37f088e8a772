/*
 * s3.c - the S3 client over libcurl (see s3.h).
 *
 * Thread safety: curl easy handles are not shared between threads; a
 * mutex-protected stack keeps idle ones so that a later call reuses a
 * kept-alive connection.  curl_global_init runs once (pthread_once);
 * CURLOPT_NOSIGNAL keeps curl away from signals in a multi-threaded
 * daemon.  Requests are signed here (sigv4.c), never by curl: Host,
 * x-amz-date and x-amz-content-sha256 are set explicitly so what is sent
 * is what was signed; "Expect:" (unsigned) removes curl's 100-continue.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "s3.h"
#include "s3_i.h"
#include "sigv4.h"

#define S3_ERROR_BODY_MAX (64u << 10)	/* error documents we keep */

struct qf_s3 {
	char *endpoint;		/* "http://host:port", no trailing '/' */
	char *host;		/* Host header: host[:port] as signed */
	char *bucket;
	char *region;
	char *describe;		/* "s3://bucket at endpoint" */
	struct qf_s3_creds creds;	/* own copy */
	long connect_timeout_ms;
	long timeout_ms;
	unsigned list_max_keys;
	pthread_mutex_t lock;	/* protects pool, npool, cap */
	CURL **pool;		/* idle handles, a stack */
	size_t npool;
	size_t cap;
};

/* One request's inputs and what the callbacks gather. */
struct s3_req {
	const char *method;
	const char *key;	/* raw, NULL for the bucket itself */
	const char *query;	/* canonical, "" none */
	const void *body;	/* PUT data */
	size_t len;
	size_t sent;		/* read callback position */
	const char *const *extra;	/* signed extra headers */
	uint64_t max;		/* body bound */
	bool too_big;
	struct qf_s3_resp *r;
};

static pthread_once_t s3_once = PTHREAD_ONCE_INIT;
static CURLcode s3_init_code = CURLE_FAILED_INIT;

static void s3_global_init(void)
{
	s3_init_code = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* host[:port] of endpoint, the port dropped when it is the scheme's
 * default, as curl would send it */
static char *endpoint_host(const char *ep)
{
	const char *h = strstr(ep, "://") + 3;
	size_t n = strcspn(h, "/");
	char *host = strndup(h, n);
	char *colon = host ? strrchr(host, ':') : NULL;

	if (colon && ((!strncmp(ep, "http:", 5) && !strcmp(colon, ":80")) ||
		      (!strncmp(ep, "https:", 6) && !strcmp(colon, ":443"))))
		*colon = '\0';
	return host;
}

static const char *cfg_region(const char *region)
{
	if (!region || !*region)
		region = getenv("AWS_REGION");
	if (!region || !*region)
		region = getenv("AWS_DEFAULT_REGION");
	return region && *region ? region : "us-east-1";
}

static int s3_copy_cfg(struct qf_s3 *s, const struct qf_s3_cfg *cfg)
{
	size_t n = strlen(cfg->endpoint);

	while (n && cfg->endpoint[n - 1] == '/')
		n--;
	s->endpoint = strndup(cfg->endpoint, n);
	s->host = s->endpoint ? endpoint_host(s->endpoint) : NULL;
	s->bucket = strdup(cfg->bucket);
	s->region = strdup(cfg_region(cfg->region));
	s->creds.access_key = strdup(cfg->creds->access_key);
	s->creds.secret_key = strdup(cfg->creds->secret_key);
	s->creds.session_token = dup_or_null(cfg->creds->session_token);
	s->connect_timeout_ms = cfg->connect_timeout_ms > 0 ?
				cfg->connect_timeout_ms : 2000;
	s->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 0;
	s->list_max_keys = cfg->list_max_keys;
	if (!s->endpoint || !s->host || !s->bucket || !s->region ||
	    !s->creds.access_key || !s->creds.secret_key ||
	    (cfg->creds->session_token && !s->creds.session_token))
		return -ENOMEM;
	if (asprintf(&s->describe, "s3://%s at %s", s->bucket,
		     s->endpoint) < 0) {
		s->describe = NULL;
		return -ENOMEM;
	}
	return 0;
}

int qf_s3_open(const struct qf_s3_cfg *cfg, struct qf_s3 **out)
{
	struct qf_s3 *s;
	int ret;

	if (!cfg->endpoint || !cfg->bucket || !*cfg->bucket || !cfg->creds ||
	    !cfg->creds->access_key || !cfg->creds->secret_key ||
	    (strncmp(cfg->endpoint, "http://", 7) &&
	     strncmp(cfg->endpoint, "https://", 8)))
		return -EINVAL;
	pthread_once(&s3_once, s3_global_init);
	if (s3_init_code != CURLE_OK)
		return -EIO;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	ret = pthread_mutex_init(&s->lock, NULL);
	if (ret) {
		free(s);
		return -ret;
	}
	ret = s3_copy_cfg(s, cfg);
	if (ret) {
		qf_s3_close(s);
		return ret;
	}
	*out = s;
	return 0;
}

void qf_s3_close(struct qf_s3 *s)
{
	size_t i;

	if (!s)
		return;
	for (i = 0; i < s->npool; i++)
		curl_easy_cleanup(s->pool[i]);
	free(s->pool);
	pthread_mutex_destroy(&s->lock);
	qf_s3_creds_free(&s->creds);
	free(s->endpoint);
	free(s->host);
	free(s->bucket);
	free(s->region);
	free(s->describe);
	free(s);
}

const char *qf_s3_describe(const struct qf_s3 *s)
{
	return s->describe;
}

void qf_s3_resp_free(struct qf_s3_resp *r)
{
	qf_buf_release(&r->body);
}

/* An idle handle from the pool (reset, its connections kept), or a new
 * one; NULL when out of memory. */
static CURL *pool_take(struct qf_s3 *s)
{
	CURL *c = NULL;

	pthread_mutex_lock(&s->lock);
	if (s->npool)
		c = s->pool[--s->npool];
	pthread_mutex_unlock(&s->lock);
	if (c) {
		curl_easy_reset(c);
		return c;
	}
	return curl_easy_init();
}

static void pool_give(struct qf_s3 *s, CURL *c)
{
	bool kept = false;

	pthread_mutex_lock(&s->lock);
	if (!qf_grow(&s->pool, s->npool + 1, &s->cap, 4, sizeof(*s->pool))) {
		s->pool[s->npool++] = c;
		kept = true;
	}
	pthread_mutex_unlock(&s->lock);
	if (!kept)
		curl_easy_cleanup(c);
}

static void resp_reset(struct qf_s3_resp *r)
{
	struct qf_buf body = r->body;

	qf_buf_reset(&body);
	memset(r, 0, sizeof(*r));
	r->body = body;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct s3_req *q = arg;
	size_t len = size * n;

	if (q->r->body.len + len > q->max) {
		q->too_big = true;
		return 0;
	}
	/* the whole body at once (its length came first): no copies as
	 * the buffer doubles */
	if (!q->r->body.len && q->r->length && q->r->length <= q->max &&
	    qf_buf_grow(&q->r->body, (size_t)q->r->length) < 0)
		return 0;
	return qf_buf_add(&q->r->body, p, len) ? 0 : len;
}

static size_t on_read(char *p, size_t size, size_t n, void *arg)
{
	struct s3_req *q = arg;
	size_t len = size * n;

	if (len > q->len - q->sent)
		len = q->len - q->sent;
	memcpy(p, (const char *)q->body + q->sent, len);
	q->sent += len;
	return len;
}

/* value of header line h when its name is name, trimmed, else NULL */
static const char *hdr_value(const char *h, size_t n, const char *name,
			     size_t *vlen)
{
	size_t k = strlen(name);

	if (n <= k || strncasecmp(h, name, k) || h[k] != ':')
		return NULL;
	h += k + 1;
	n -= k + 1;
	while (n && (*h == ' ' || *h == '\t')) {
		h++;
		n--;
	}
	while (n && (h[n - 1] == '\r' || h[n - 1] == '\n' || h[n - 1] == ' '))
		n--;
	*vlen = n;
	return h;
}

static size_t on_header(char *h, size_t size, size_t n, void *arg)
{
	struct qf_s3_resp *r = ((struct s3_req *)arg)->r;
	const char *v;
	char num[32];
	size_t vl;

	if ((v = hdr_value(h, size * n, "etag", &vl))) {
		if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
			v++;
			vl -= 2;
		}
		if (vl < sizeof(r->etag)) {
			memcpy(r->etag, v, vl);
			r->etag[vl] = '\0';
		}
	} else if ((v = hdr_value(h, size * n, "last-modified", &vl))) {
		qf_s3_parse_http_date(v, vl, &r->last_modified);
	} else if ((v = hdr_value(h, size * n, "date", &vl))) {
		qf_s3_parse_http_date(v, vl, &r->date);
	} else if ((v = hdr_value(h, size * n, "content-length", &vl)) &&
		   vl < sizeof(num)) {
		memcpy(num, v, vl);
		num[vl] = '\0';
		r->length = strtoull(num, NULL, 10);
	}
	return size * n;
}

/* "/bucket[/key]", percent-encoded */
static int req_path(struct qf_s3 *s, const char *key, struct qf_buf *path)
{
	int ret = qf_buf_adds(path, "/");

	if (!ret)
		ret = qf_sigv4_uri_encode(s->bucket, false, path);
	if (!ret && key) {
		ret = qf_buf_adds(path, "/");
		if (!ret)
			ret = qf_sigv4_uri_encode(key, true, path);
	}
	return ret;
}

/* "name: value", or the line name as it is when value is NULL */
static int add_header(struct curl_slist **l, const char *name,
		      const char *value)
{
	struct qf_buf h = QF_BUF_INIT;
	struct curl_slist *n;
	int ret;

	ret = qf_buf_addf(&h, "%s%s%s", name, value ? ": " : "",
			  value ? value : "");
	if (ret)
		return ret;
	n = curl_slist_append(*l, h.data);
	qf_buf_release(&h);
	if (!n)
		return -ENOMEM;
	*l = n;
	return 0;
}

/* Sign the request and build curl's header list (Host included). */
static int req_headers(struct qf_s3 *s, struct s3_req *q, const char *path,
		       struct curl_slist **hl)
{
	struct qf_sigv4 sv = { 0 };
	struct qf_buf auth = QF_BUF_INIT;
	char sha[65], date[17];
	const char *const *e;
	struct qf_sha256 c;
	struct tm tm;
	time_t now = time(NULL);
	uint8_t d[32];
	int ret;

	qf_sha256_init(&c);
	qf_sha256_update(&c, q->body ? q->body : "", q->len);
	qf_sha256_final(&c, d);
	qf_hex(d, 32, sha);
	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%Y%m%dT%H%M%SZ", &tm);
	sv.method = q->method;
	sv.host = s->host;
	sv.path = path;
	sv.query = q->query;
	sv.headers = q->extra;
	sv.payload_sha256 = sha;
	sv.amz_date = date;
	sv.region = s->region;
	sv.service = "s3";
	sv.access_key = s->creds.access_key;
	sv.secret_key = s->creds.secret_key;
	sv.session_token = s->creds.session_token;
	ret = qf_sigv4_sign(&sv, &auth, NULL, NULL);
	if (!ret)
		ret = add_header(hl, "Authorization", auth.data);
	if (!ret)
		ret = add_header(hl, "Host", s->host);
	if (!ret)
		ret = add_header(hl, "x-amz-date", date);
	if (!ret)
		ret = add_header(hl, "x-amz-content-sha256", sha);
	if (!ret && s->creds.session_token)
		ret = add_header(hl, "x-amz-security-token",
				 s->creds.session_token);
	for (e = q->extra; e && *e && !ret; e++)
		ret = add_header(hl, *e, NULL);
	if (!ret)	/* unsigned: removes curl's Expect: 100-continue */
		ret = add_header(hl, "Expect:", NULL);
	qf_buf_release(&auth);
	return ret;
}

static int req_setopt(struct qf_s3 *s, CURL *c, struct s3_req *q,
		      const char *url, struct curl_slist *hl)
{
	CURLcode e = CURLE_OK;

#define SET(opt, val) if (e == CURLE_OK) e = curl_easy_setopt(c, opt, val)
	SET(CURLOPT_URL, url);
	SET(CURLOPT_HTTPHEADER, hl);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_CONNECTTIMEOUT_MS, s->connect_timeout_ms);
	SET(CURLOPT_TIMEOUT_MS, s->timeout_ms);
	SET(CURLOPT_LOW_SPEED_LIMIT, 1024L);
	SET(CURLOPT_LOW_SPEED_TIME, 10L);
	SET(CURLOPT_HEADERFUNCTION, on_header);
	SET(CURLOPT_HEADERDATA, q);
	SET(CURLOPT_WRITEFUNCTION, on_body);
	SET(CURLOPT_WRITEDATA, q);
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	if (!strcmp(q->method, "HEAD")) {
		SET(CURLOPT_NOBODY, 1L);
	} else if (!strcmp(q->method, "PUT")) {
		SET(CURLOPT_UPLOAD, 1L);
		SET(CURLOPT_READFUNCTION, on_read);
		SET(CURLOPT_READDATA, q);
		SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)q->len);
	} else if (strcmp(q->method, "GET")) {
		SET(CURLOPT_CUSTOMREQUEST, q->method);
	}
#undef SET
	return e == CURLE_OK ? 0 : -EINVAL;
}

static int curl_errno(CURLcode e, bool too_big)
{
	switch (e) {
	case CURLE_OK:
		return 0;
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_RESOLVE_HOST:
		return -EHOSTUNREACH;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	case CURLE_WRITE_ERROR:
		return too_big ? -EFBIG : -ENOMEM;
	default:
		return -EIO;
	}
}

/* The S3 <Code> of an error body into r->error. */
static void resp_error_code(struct qf_s3_resp *r)
{
	const char *a, *b;

	if (r->status < 300)
		return;
	a = r->body.data ? strstr(r->body.data, "<Code>") : NULL;
	b = a ? strstr(a, "</Code>") : NULL;
	if (a && b)
		snprintf(r->error, sizeof(r->error), "%.*s", (int)(b - a - 6),
			 a + 6);
	else
		snprintf(r->error, sizeof(r->error), "HTTP %ld", r->status);
}

static int s3_perform(struct qf_s3 *s, struct s3_req *q, const char *url,
		      struct curl_slist *hl)
{
	char errbuf[CURL_ERROR_SIZE] = "";
	CURLcode e;
	CURL *c;
	int ret;

	c = pool_take(s);
	if (!c)
		return -ENOMEM;
	ret = req_setopt(s, c, q, url, hl);
	if (!ret && curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf))
		ret = -EINVAL;
	if (ret) {
		curl_easy_cleanup(c);
		return ret;
	}
	e = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &q->r->status);
	ret = curl_errno(e, q->too_big);
	if (ret)
		snprintf(q->r->error, sizeof(q->r->error), "%.150s",
			 q->too_big ? "body over the bound" :
			 errbuf[0] ? errbuf : curl_easy_strerror(e));
	if (ret && ret != -EFBIG)
		q->r->status = 0;
	pool_give(s, c);
	return ret;
}

static int s3_do(struct qf_s3 *s, struct s3_req *q)
{
	struct qf_buf path = QF_BUF_INIT, url = QF_BUF_INIT;
	struct curl_slist *hl = NULL;
	int ret;

	resp_reset(q->r);
	if (q->key && !*q->key)
		return -EINVAL;
	ret = req_path(s, q->key, &path);
	if (!ret)
		ret = qf_buf_addf(&url, "%s%s%s%s", s->endpoint, path.data,
				  *q->query ? "?" : "", q->query);
	if (!ret)
		ret = req_headers(s, q, path.data, &hl);
	if (!ret)
		ret = s3_perform(s, q, url.data, hl);
	else
		snprintf(q->r->error, sizeof(q->r->error), "%s",
			 qf_strerror(ret));
	if (!ret)
		resp_error_code(q->r);
	curl_slist_free_all(hl);
	qf_buf_release(&path);
	qf_buf_release(&url);
	return ret;
}

int qf_s3_get(struct qf_s3 *s, const char *key, uint64_t max,
	      struct qf_s3_resp *r)
{
	struct s3_req q = { .method = "GET", .key = key, .query = "",
			    .max = max, .r = r };

	return s3_do(s, &q);
}

int qf_s3_head(struct qf_s3 *s, const char *key, struct qf_s3_resp *r)
{
	struct s3_req q = { .method = "HEAD", .key = key, .query = "",
			    .max = S3_ERROR_BODY_MAX, .r = r };

	return s3_do(s, &q);
}

int qf_s3_put(struct qf_s3 *s, const char *key, const void *data,
	      size_t len, const struct qf_s3_cond *cond, struct qf_s3_resp *r)
{
	const char *extra[2] = { NULL, NULL };
	struct s3_req q = { .method = "PUT", .key = key, .query = "",
			    .body = data, .len = len, .extra = extra,
			    .max = S3_ERROR_BODY_MAX, .r = r };
	char *match = NULL;
	int ret;

	if (cond && cond->if_match) {
		if (!*cond->if_match || strpbrk(cond->if_match, "\r\n\""))
			return -EINVAL;
		if (asprintf(&match, "If-Match: %s", cond->if_match) < 0)
			return -ENOMEM;
		extra[0] = match;
	} else if (cond && cond->if_none_match) {
		extra[0] = "If-None-Match: *";
	}
	ret = s3_do(s, &q);
	free(match);
	return ret;
}

int qf_s3_delete(struct qf_s3 *s, const char *key, struct qf_s3_resp *r)
{
	struct s3_req q = { .method = "DELETE", .key = key, .query = "",
			    .max = S3_ERROR_BODY_MAX, .r = r };

	return s3_do(s, &q);
}

int qf_s3_bucket_create(struct qf_s3 *s, struct qf_s3_resp *r)
{
	struct s3_req q = { .method = "PUT", .query = "",
			    .max = S3_ERROR_BODY_MAX, .r = r };

	return s3_do(s, &q);
}

int qf_s3_get_query(struct qf_s3 *s, const char *query, uint64_t max,
		    struct qf_s3_resp *r)
{
	struct s3_req q = { .method = "GET", .query = query, .max = max,
			    .r = r };

	return s3_do(s, &q);
}

unsigned qf_s3_list_page(const struct qf_s3 *s)
{
	return s->list_max_keys;
}
