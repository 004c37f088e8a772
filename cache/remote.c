/*
 * remote.c - the remote tier (remote.h): reading and publishing ids
 * through an S3-compatible bucket (s3.c), verified end to end.
 *
 * Layout and trust are in remote.h.  Here: the back-off that keeps a
 * mount serving while the bucket is away (every request goes through
 * request(), which answers -EAGAIN at once during a back-off), the
 * manifests once fetched (immutable: created once, so kept until close;
 * their absence is remembered for ABSENT_S), fetching values with their
 * SHA-256 checked, and publishing: values first (HEAD, then PUT what is
 * missing; content-addressed, so a repeated PUT writes the same bytes),
 * the manifest or checkpoint last, created once.
 *
 * A value that exists but is older than REFRESH_S is written again
 * before a manifest names it: `quantfs cache gc --remote` deletes values
 * no manifest names once they are older than its grace period (at least
 * twice REFRESH_S), so a value a publisher found and is about to name is
 * never one gc is about to delete.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "remote_i.h"

#define ABSENT_S 5.0			/* remember a missing manifest */
#define BACKOFF_MIN 5.0
#define BACKOFF_MAX 300.0
#define MANIFEST_MAX (64u << 20)
#define BATCH_BYTES (256u << 20)	/* values per import transaction */

int qf_remote_parse_url(const char *url, char **bucket, char **prefix)
{
	const char *b, *slash;
	size_t n;

	*bucket = *prefix = NULL;
	if (!url || strncmp(url, "s3://", 5))
		return -EINVAL;
	b = url + 5;
	slash = strchr(b, '/');
	n = slash ? (size_t)(slash - b) : strlen(b);
	if (n < 3 || n > 63 || strspn(b, "abcdefghijklmnopqrstuvwxyz"
				      "0123456789.-") < n)
		return -EINVAL;
	*bucket = strndup(b, n);
	if (slash && slash[1]) {
		size_t pl = strlen(slash + 1);

		while (pl && slash[pl] == '/')
			pl--;
		*prefix = malloc(pl + 2);
		if (*prefix)
			snprintf(*prefix, pl + 2, "%.*s/", (int)pl, slash + 1);
	} else {
		*prefix = strdup("");
	}
	if (!*bucket || !*prefix) {
		free(*bucket);
		free(*prefix);
		*bucket = *prefix = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* The bucket answered: leave a back-off (said once). */
static void answered(struct qf_remote *r)
{
	bool back;

	pthread_mutex_lock(&r->lock);
	back = r->down_said;
	r->down_until = 0;
	r->backoff = 0;
	r->down_said = false;
	pthread_mutex_unlock(&r->lock);
	if (back)
		qf_info("remote tier %s answers again: reading and publishing "
			"through it", qf_remote_describe(r));
}

/* No answer (or 5xx): back off, say so once. */
static void unanswered(struct qf_remote *r, const char *why)
{
	bool say;
	double b;

	pthread_mutex_lock(&r->lock);
	if (r->down_until > qf_now()) {
		/* requests that were in flight together fail together:
		 * one failure, one doubling */
		pthread_mutex_unlock(&r->lock);
		return;
	}
	r->backoff = r->backoff ? r->backoff * 2 : BACKOFF_MIN;
	if (r->backoff > BACKOFF_MAX)
		r->backoff = BACKOFF_MAX;
	b = r->backoff;
	r->down_until = qf_now() + b;
	say = !r->down_said;
	r->down_said = true;
	pthread_mutex_unlock(&r->lock);
	if (say)
		qf_warn("remote tier %s does not answer (%s): serving from "
			"this machine's cache and local production, trying "
			"it again every %.0f s or more", qf_remote_describe(r),
			why, b);
}

int qf_remote_request(struct qf_remote *r, int op, const char *key,
		      const void *data, size_t len, uint64_t max,
		      const struct qf_s3_cond *cond, struct qf_s3_resp *resp)
{
	bool down;
	int ret;

	memset(resp, 0, sizeof(*resp));
	pthread_mutex_lock(&r->lock);
	down = r->down_until > qf_now();
	pthread_mutex_unlock(&r->lock);
	if (down)
		return -EAGAIN;
	switch (op) {
	case QF_RQ_GET:
		ret = qf_s3_get(r->s3, key, max, resp);
		break;
	case QF_RQ_HEAD:
		ret = qf_s3_head(r->s3, key, resp);
		break;
	case QF_RQ_PUT:
		ret = qf_s3_put(r->s3, key, data, len, cond, resp);
		break;
	default:
		ret = qf_s3_delete(r->s3, key, resp);
		break;
	}
	pthread_mutex_lock(&r->lock);
	r->st.get += op == QF_RQ_GET;
	r->st.head += op == QF_RQ_HEAD;
	r->st.put += op == QF_RQ_PUT;
	r->st.del += op == QF_RQ_DELETE;
	r->st.bytes_out += op == QF_RQ_PUT ? len : 0;
	r->st.bytes_in += resp->body.len;
	pthread_mutex_unlock(&r->lock);
	if (ret == -EFBIG)
		return ret;
	/* radosgw answers a lost If-Match race with 500 as often as 412
	 * (its err_no 125): an answer, not an outage */
	if (!ret && op == QF_RQ_PUT && cond && cond->if_match &&
	    resp->status == 500)
		resp->status = 412;
	if (ret < 0 || resp->status >= 500) {
		unanswered(r, ret < 0 ? resp->error : "a server error");
		qf_s3_resp_free(resp);
		return -EAGAIN;
	}
	answered(r);
	return 0;
}

void qf_remote_key(const struct qf_remote *r, const char *kind,
		   const uint8_t *id, size_t idlen, int step, char *out,
		   size_t cap)
{
	char hex[65];

	qf_hex(id, idlen, hex);
	if (step >= 0)
		snprintf(out, cap, "%sv1/%s/%s/%05d", r->prefix, kind, hex,
			 step);
	else
		snprintf(out, cap, "%sv1/%s/%s", r->prefix, kind, hex);
}

int qf_remote_fetch(struct qf_remote *r, const char *key, const uint8_t *id,
		    struct qf_rmanifest *m)
{
	struct qf_s3_resp resp;
	int ret;

	ret = qf_remote_request(r, QF_RQ_GET, key, NULL, 0, MANIFEST_MAX,
				NULL, &resp);
	if (ret == -EFBIG)
		ret = QF_EFORMAT;
	if (!ret && resp.status == 404)
		ret = -ENOENT;
	else if (!ret && resp.status != 200)
		ret = resp.status == 403 ? -EACCES : -EIO;
	if (!ret) {
		ret = qf_rmanifest_parse(resp.body.data, resp.body.len, m);
		if (!ret && memcmp(m->id, id, QF_CACHE_VID)) {
			qf_rmanifest_free(m);
			ret = QF_EFORMAT;
		}
		if (ret == QF_EFORMAT)
			qf_err("remote tier: %s is not a manifest of that id: "
			       "ignored", key);
	} else if (ret == -EACCES || ret == -EIO) {
		qf_warn("remote tier: GET %s: HTTP %ld %s", key, resp.status,
			resp.error);
	}
	qf_s3_resp_free(&resp);
	return ret;
}

static struct qf_rmcache *mc_find(struct qf_remote *r, const uint8_t *id)
{
	size_t i;

	for (i = 0; i < r->nmc; i++)
		if (!memcmp(r->mc[i].id, id, QF_CACHE_VID))
			return &r->mc[i];
	return NULL;
}

int qf_remote_manifest(struct qf_remote *r, const uint8_t *id,
		       const struct qf_rmanifest **out)
{
	return qf_remote_manifest_at(r, id, false, out);
}

int qf_remote_manifest_at(struct qf_remote *r, const uint8_t *id, bool fresh,
			  const struct qf_rmanifest **out)
{
	struct qf_rmcache *e;
	struct qf_rmanifest *m;
	char key[256];
	int ret;

	pthread_mutex_lock(&r->lock);
	e = mc_find(r, id);
	if (e && e->m) {
		*out = e->m;
		pthread_mutex_unlock(&r->lock);
		return 0;
	}
	if (e && !fresh && qf_now() - e->absent_t < ABSENT_S) {
		pthread_mutex_unlock(&r->lock);
		return -ENOENT;
	}
	pthread_mutex_unlock(&r->lock);
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	qf_remote_key(r, "manifests", id, QF_CACHE_VID, -1, key, sizeof(key));
	ret = qf_remote_fetch(r, key, id, m);
	pthread_mutex_lock(&r->lock);
	e = mc_find(r, id);
	if (!e && qf_grow(&r->mc, r->nmc + 1, &r->capmc, 16,
			  sizeof(*r->mc)) == 0) {
		e = &r->mc[r->nmc++];
		memset(e, 0, sizeof(*e));
		memcpy(e->id, id, QF_CACHE_VID);
	}
	if (e && !ret && !e->m) {
		e->m = m;
		m = NULL;
	} else if (e && ret == -ENOENT) {
		e->absent_t = qf_now();
	}
	if (e && e->m) {
		*out = e->m;
		ret = 0;
	}
	pthread_mutex_unlock(&r->lock);
	if (m) {
		qf_rmanifest_free(m);
		free(m);
	}
	return ret < 0 && ret != -ENOENT && ret != -EAGAIN &&
	       ret != -ENOMEM ? QF_EFORMAT : ret;
}

/* Forget that id's manifest was absent (we just published it). */
static void mc_forget_absent(struct qf_remote *r, const uint8_t *id)
{
	struct qf_rmcache *e;

	pthread_mutex_lock(&r->lock);
	e = mc_find(r, id);
	if (e)
		e->absent_t = 0;
	pthread_mutex_unlock(&r->lock);
}

int qf_remote_checkpoint(struct qf_remote *r, const uint8_t *id,
			 struct qf_rmanifest *out)
{
	struct qf_s3_list l = { 0 };
	struct qf_s3_resp resp;
	char key[256], best[256] = "";
	bool down;
	size_t i;
	int ret;

	memset(out, 0, sizeof(*out));
	out->step = -1;
	pthread_mutex_lock(&r->lock);
	down = r->down_until > qf_now();
	r->st.list++;
	pthread_mutex_unlock(&r->lock);
	if (down)
		return -EAGAIN;
	qf_remote_key(r, "ckpt", id, QF_CACHE_VID, -1, key, sizeof(key));
	strcat(key, "/");
	memset(&resp, 0, sizeof(resp));
	ret = qf_s3_list(r->s3, key, &l, &resp);
	if (ret < 0 && resp.status == 0) {
		unanswered(r, resp.error);
		qf_s3_resp_free(&resp);
		return -EAGAIN;
	}
	qf_s3_resp_free(&resp);
	if (ret < 0)
		return ret == -ENOMEM ? ret : QF_EFORMAT;
	answered(r);
	/* zero-padded steps: the greatest key is the latest */
	for (i = 0; i < l.n; i++)
		if (strlen(l.obj[i].key) < sizeof(best) &&
		    strcmp(l.obj[i].key, best) > 0)
			strcpy(best, l.obj[i].key);
	qf_s3_list_free(&l);
	if (!best[0])
		return -ENOENT;
	return qf_remote_fetch(r, best, id, out);
}

int qf_remote_value(struct qf_remote *r, const struct qf_rvalue *v,
		    const char *label, void **data)
{
	struct qf_s3_resp resp;
	struct qf_sha256 h;
	uint8_t got[32];
	char key[256], hex[65];
	int tries, ret = 0;

	*data = NULL;
	qf_remote_key(r, "values", v->sha, 32, -1, key, sizeof(key));
	for (tries = 0; tries < 2; tries++) {
		ret = qf_remote_request(r, QF_RQ_GET, key, NULL, 0,
					v->len, NULL, &resp);
		if (ret == -EFBIG) {
			ret = QF_ECORRUPT;	/* longer than named */
		} else if (ret < 0) {
			return ret;
		} else if (resp.status == 404) {
			qf_s3_resp_free(&resp);
			return -ENOENT;
		} else if (resp.status != 200) {
			qf_warn("remote tier: GET %s: HTTP %ld %s", key,
				resp.status, resp.error);
			qf_s3_resp_free(&resp);
			return resp.status == 403 ? -EACCES : -EIO;
		} else {
			qf_sha256_init(&h);
			qf_sha256_update(&h, resp.body.data, resp.body.len);
			qf_sha256_final(&h, got);
			if (resp.body.len == v->len &&
			    !memcmp(got, v->sha, 32)) {
				*data = resp.body.data ? resp.body.data :
					malloc(1);
				return *data ? 0 : -ENOMEM;
			}
			ret = QF_ECORRUPT;
		}
		qf_s3_resp_free(&resp);
		pthread_mutex_lock(&r->lock);
		r->st.bad++;
		pthread_mutex_unlock(&r->lock);
		qf_hex(got, 32, hex);
		qf_err("remote tier: value %s of %s (%s) fails verification "
		       "(%zu bytes, sha256 %.16s...)%s", key, label, v->name,
		       (size_t)resp.body.len, hex,
		       tries ? ": not served, producing it here" :
		       ": fetching it again");
	}
	return ret;
}

/*
 * A batch of values fetched by FETCHERS threads at once (GETs overlap;
 * one is mostly waiting), then stored in one transaction.
 */
#define FETCHERS 4

struct batch {
	struct qf_remote *r;
	const struct qf_rmanifest *m;
	const struct qf_rvalue **v;	/* [n] what to fetch */
	void **data;			/* [n] what came */
	size_t n, cap, capd;
	uint64_t bytes;
	pthread_mutex_t lock;
	size_t next;			/* lock: the next to take */
	int err;			/* lock: the first failure */
};

static void *fetcher(void *arg)
{
	struct batch *b = arg;

	for (;;) {
		size_t i;
		int ret;

		pthread_mutex_lock(&b->lock);
		i = b->err ? b->n : b->next++;
		pthread_mutex_unlock(&b->lock);
		if (i >= b->n)
			return NULL;
		ret = qf_remote_value(b->r, b->v[i], b->m->label, &b->data[i]);
		if (ret < 0) {
			pthread_mutex_lock(&b->lock);
			if (!b->err)
				b->err = ret;
			pthread_mutex_unlock(&b->lock);
		}
	}
}

/* Fetch the batch, store it, empty it. */
static int batch_run(struct qf_cache *c, struct batch *b)
{
	struct qf_cache_item *it = NULL;
	pthread_t th[FETCHERS];
	size_t i, k, nth = 0;
	int ret;

	if (!b->n)
		return 0;
	b->next = 0;
	b->err = 0;
	memset(b->data, 0, b->n * sizeof(*b->data));
	for (k = 1; k < FETCHERS && k < b->n; k++)
		if (pthread_create(&th[nth], NULL, fetcher, b) == 0)
			nth++;
	fetcher(b);
	for (k = 0; k < nth; k++)
		pthread_join(th[k], NULL);
	ret = b->err;
	if (!ret && !(it = calloc(b->n, sizeof(*it))))
		ret = -ENOMEM;
	for (i = 0; !ret && i < b->n; i++)
		it[i] = (struct qf_cache_item){ b->v[i]->name, b->data[i],
						b->v[i]->len };
	if (!ret)
		ret = qf_cache_put(c, b->m->id, it, b->n);
	for (i = 0; i < b->n; i++)
		free(b->data[i]);
	free(it);
	b->n = 0;
	b->bytes = 0;
	return ret;
}

static bool wanted(const struct qf_rvalue *v, const char *const *names,
		   size_t n)
{
	size_t i;

	if (!names)
		return true;
	for (i = 0; i < n; i++)
		if (!strcmp(names[i], v->name))
			return true;
	return false;
}

int qf_remote_import(struct qf_remote *r, struct qf_cache *c,
		     const struct qf_rmanifest *m, const char *const *names,
		     size_t nnames, size_t *got)
{
	struct batch b = { .r = r, .m = m };
	size_t i, count = 0;
	int ret = 0;

	pthread_mutex_init(&b.lock, NULL);
	for (i = 0; i < m->n && !ret; i++) {
		const struct qf_rvalue *v = &m->v[i];

		if (!wanted(v, names, nnames) ||
		    qf_cache_has(c, m->id, v->name, v->len))
			continue;
		ret = qf_grow(&b.v, b.n + 1, &b.cap, 16, sizeof(*b.v));
		if (!ret)
			ret = qf_grow(&b.data, b.n + 1, &b.capd, 16,
				      sizeof(*b.data));
		if (ret < 0)
			break;
		b.v[b.n++] = v;
		b.bytes += v->len;
		count++;
		if (b.bytes >= BATCH_BYTES)
			ret = batch_run(c, &b);
	}
	if (!ret)
		ret = batch_run(c, &b);
	free(b.v);
	free(b.data);
	pthread_mutex_destroy(&b.lock);
	if (got)
		*got = ret ? 0 : count;
	if (!ret) {
		pthread_mutex_lock(&r->lock);
		r->st.imported += count;
		pthread_mutex_unlock(&r->lock);
	}
	return ret;
}

void qf_remote_stats(struct qf_remote *r, struct qf_remote_stats *out)
{
	pthread_mutex_lock(&r->lock);
	*out = r->st;
	out->down = r->down_until > qf_now();
	pthread_mutex_unlock(&r->lock);
}

enum qf_remote_role qf_remote_role(const struct qf_remote *r)
{
	return r->role;
}

const char *qf_remote_describe(const struct qf_remote *r)
{
	return r->desc;
}

const char *qf_remote_host(const struct qf_remote *r)
{
	return r->host;
}

void qf_remote_published(struct qf_remote *r, const uint8_t *id)
{
	mc_forget_absent(r, id);
}
