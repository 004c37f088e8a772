/*
 * remote_pub.c - the remote tier's writes (remote.h): opening it and
 * probing whether the server keeps conditional writes, publishing an id
 * (values, then its manifest or checkpoint, created once) and the bucket
 * side of leases (lease.h).
 *
 * The probe: a server that ignores If-None-Match lets two machines both
 * "create" a lease and both produce, and lets a second manifest replace
 * the first (s3rver does; CLUSTER-NOTES.md), so a writer checks it once,
 * before its first conditional write, and acts as role read when the
 * server fails it: it still reads and verifies what others published.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include <sys/random.h>

#include "remote_i.h"

#define REFRESH_S QF_REMOTE_REFRESH_S	/* rewrite older values (remote.h) */

static void nonce(char out[33])
{
	uint8_t b[16];
	size_t i;

	if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b)) {
		double t = qf_now();

		for (i = 0; i < sizeof(b); i++)
			b[i] = (uint8_t)((uint64_t)(t * 1e9) >> (i % 8 * 8)) ^
			       (uint8_t)(getpid() >> (i % 3 * 8));
	}
	qf_hex(b, sizeof(b), out);
}

static void demote(struct qf_remote *r, const char *why)
{
	pthread_mutex_lock(&r->lock);
	r->role = QF_REMOTE_READ;
	pthread_mutex_unlock(&r->lock);
	qf_warn("remote tier %s: %s: this mount reads and verifies what "
		"others published but writes nothing and takes no lease "
		"(remote_role=read); it produces what the bucket lacks here",
		r->desc, why);
}

static int put(struct qf_remote *r, const char *key, const void *data,
	       size_t len, bool create, const char *if_match, long *status,
	       char *etag)
{
	struct qf_s3_cond cond = { create, if_match };
	struct qf_s3_resp resp;
	int ret;

	ret = qf_remote_request(r, QF_RQ_PUT, key, data, len, 0,
				create || if_match ? &cond : NULL, &resp);
	*status = resp.status;
	if (!ret && etag)
		snprintf(etag, QF_ETAG_MAX, "%s", resp.etag);
	if (!ret && resp.status >= 300 && resp.status != 412)
		qf_warn("remote tier: PUT %s: HTTP %ld %s", key, resp.status,
			resp.error);
	qf_s3_resp_free(&resp);
	return ret;
}

static void del(struct qf_remote *r, const char *key)
{
	struct qf_s3_resp resp;

	if (qf_remote_request(r, QF_RQ_DELETE, key, NULL, 0, 0, NULL,
			      &resp) == 0)
		qf_s3_resp_free(&resp);
}

/*
 * Does the server keep If-None-Match and If-Match?  0 (it does, or it
 * did not answer: asked again later), -EACCES (demoted to read).
 */
static int probe(struct qf_remote *r)
{
	char key[320], n[33];
	long st1, st2, st3;
	int ret;

	if (r->probed)
		return 0;
	nonce(n);
	snprintf(key, sizeof(key), "%sv1/probe/%s", r->prefix, n);
	ret = put(r, key, "1", 1, true, NULL, &st1, NULL);
	if (!ret)
		ret = put(r, key, "2", 1, true, NULL, &st2, NULL);
	if (!ret)
		ret = put(r, key, "3", 1, false, "0123456789abcdef", &st3,
			  NULL);
	if (ret < 0)
		return 0;
	del(r, key);
	r->probed = true;
	if (st1 == 403) {
		demote(r, "the credentials may not write the bucket");
		return -EACCES;
	}
	if (st1 == 404) {
		demote(r, "the bucket does not exist");
		return -EACCES;
	}
	if (st1 / 100 != 2 || st2 != 412 || st3 != 412) {
		char why[160];

		snprintf(why, sizeof(why), "the server ignores conditional "
			 "writes (create: %ld, create again: %ld, replace a "
			 "wrong ETag: %ld; wanted 2xx, 412, 412)", st1, st2,
			 st3);
		demote(r, why);
		return -EACCES;
	}
	qf_info("remote tier %s keeps conditional writes: single flight "
		"across machines", r->desc);
	return 0;
}

static int writer(struct qf_remote *r)
{
	if (r->role == QF_REMOTE_READ)
		return -EACCES;
	return probe(r) < 0 ? -EACCES : 0;
}

static const char *env_or(const char *a, const char *b)
{
	const char *s = getenv(a);

	return s && *s ? s : b ? getenv(b) : NULL;
}

int qf_remote_open(const struct qf_remote_cfg *cfg, struct qf_remote **out)
{
	struct qf_remote *r = calloc(1, sizeof(*r));
	struct qf_s3_cfg sc = { 0 };
	const char *ep = cfg->endpoint;
	char region_ep[128], hn[64] = "localhost";
	int ret;

	if (!r)
		return -ENOMEM;
	pthread_mutex_init(&r->lock, NULL);
	r->role = cfg->role;
	r->lease_s = cfg->lease_s > 0 ? cfg->lease_s : 60;
	r->probed = !cfg->probe;
	ret = qf_remote_parse_url(cfg->url, &r->bucket, &r->prefix);
	if (ret < 0) {
		qf_err("remote tier: '%s' is not s3://BUCKET[/PREFIX]",
		       cfg->url ? cfg->url : "");
		goto out_free;
	}
	ret = qf_s3_creds_load(cfg->creds_file, &r->creds);
	if (ret < 0) {
		qf_err("remote tier: no credentials (%s): set "
		       "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give a "
		       "0600 credentials file (-o remote_credentials=FILE)",
		       qf_strerror(ret));
		goto out_free;
	}
	if (!ep)
		ep = env_or("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL");
	sc.region = cfg->region;
	if (!ep) {
		const char *reg = cfg->region ? cfg->region :
				  env_or("AWS_REGION", "AWS_DEFAULT_REGION");

		snprintf(region_ep, sizeof(region_ep),
			 "https://s3.%s.amazonaws.com",
			 reg ? reg : "us-east-1");
		ep = region_ep;
	}
	sc.endpoint = ep;
	sc.bucket = r->bucket;
	sc.creds = &r->creds;
	ret = qf_s3_open(&sc, &r->s3);
	if (ret < 0)
		goto out_free;
	snprintf(r->desc, sizeof(r->desc), "s3://%s/%s at %s", r->bucket,
		 r->prefix, ep);
	gethostname(hn, sizeof(hn) - 1);
	snprintf(r->host, sizeof(r->host), "%s pid %d", hn, (int)getpid());
	if (cfg->probe && r->role != QF_REMOTE_READ)
		probe(r);
	*out = r;
	return 0;
out_free:
	qf_remote_close(r);
	return ret;
}

void qf_remote_close(struct qf_remote *r)
{
	size_t i;

	if (!r)
		return;
	if (r->s3)
		qf_s3_close(r->s3);
	qf_s3_creds_free(&r->creds);
	for (i = 0; i < r->nmc; i++) {
		if (r->mc[i].m) {
			qf_rmanifest_free(r->mc[i].m);
			free(r->mc[i].m);
		}
	}
	free(r->mc);
	free(r->known);
	free(r->bucket);
	free(r->prefix);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* What id holds locally: names, lengths and sums (no bytes kept). */
struct snap {
	struct qf_rvalue *v;
	size_t n, cap;
	int err;
};

static int snap_one(void *arg, const char *name, const void *data,
		    size_t len)
{
	struct snap *s = arg;
	struct qf_sha256 h;
	struct qf_rvalue *v;

	if (qf_grow(&s->v, s->n + 1, &s->cap, 64, sizeof(*s->v)) < 0 ||
	    !(name = strdup(name))) {
		s->err = -ENOMEM;
		return 1;
	}
	v = &s->v[s->n++];
	v->name = (char *)name;
	v->len = len;
	qf_sha256_init(&h);
	qf_sha256_update(&h, data, len);
	qf_sha256_final(&h, v->sha);
	return 0;
}

/*
 * Values this process knows the bucket holds (it found or wrote them
 * since it opened), so a checkpoint after every layer does not ask again
 * for the values of the layers before.  Caller holds r->lock.
 */
static uint64_t known_key(const uint8_t *sha)
{
	uint64_t k;

	memcpy(&k, sha, sizeof(k));
	return k ? k : 1;
}

static bool known_has(struct qf_remote *r, const uint8_t *sha)
{
	uint64_t k = known_key(sha);
	size_t i;

	if (!r->capknown)
		return false;
	if (qf_now() - r->known_t0 > REFRESH_S / 2) {
		/* older than that, gc may take a value: ask again */
		memset(r->known, 0, r->capknown * sizeof(*r->known));
		r->nknown = 0;
		r->known_t0 = qf_now();
		return false;
	}
	for (i = k & (r->capknown - 1); r->known[i];
	     i = (i + 1) & (r->capknown - 1))
		if (r->known[i] == k)
			return true;
	return false;
}

static void known_add(struct qf_remote *r, const uint8_t *sha)
{
	uint64_t k = known_key(sha);
	size_t i;

	if (known_has(r, sha))
		return;
	if (2 * (r->nknown + 1) > r->capknown) {
		size_t cap = r->capknown ? 2 * r->capknown : 1024, j;
		uint64_t *t = calloc(cap, sizeof(*t));

		if (!t)
			return;		/* only a HEAD more later */
		for (j = 0; j < r->capknown; j++) {
			if (!r->known[j])
				continue;
			for (i = r->known[j] & (cap - 1); t[i];
			     i = (i + 1) & (cap - 1))
				;
			t[i] = r->known[j];
		}
		free(r->known);
		if (!r->capknown)
			r->known_t0 = qf_now();
		r->known = t;
		r->capknown = cap;
	}
	for (i = k & (r->capknown - 1); r->known[i];
	     i = (i + 1) & (r->capknown - 1))
		;
	r->known[i] = k;
	r->nknown++;
}

static void known(struct qf_remote *r, const uint8_t *sha)
{
	pthread_mutex_lock(&r->lock);
	known_add(r, sha);
	pthread_mutex_unlock(&r->lock);
}

/* Upload value v of id unless the bucket has it (young enough). */
static int upload(struct qf_remote *r, struct qf_cache *c, const uint8_t *id,
		  const struct qf_rvalue *v)
{
	struct qf_cache_txn *txn;
	struct qf_s3_resp resp;
	const void *p;
	char key[256];
	size_t len;
	long st;
	int ret;

	pthread_mutex_lock(&r->lock);
	ret = known_has(r, v->sha);
	pthread_mutex_unlock(&r->lock);
	if (ret)
		return 0;
	qf_remote_key(r, "values", v->sha, 32, -1, key, sizeof(key));
	ret = qf_remote_request(r, QF_RQ_HEAD, key, NULL, 0, 0, NULL, &resp);
	if (ret < 0)
		return ret;
	qf_s3_resp_free(&resp);
	if (resp.status == 200 && resp.length == v->len &&
	    (resp.date <= 0 || resp.date - resp.last_modified < REFRESH_S)) {
		known(r, v->sha);
		return 0;
	}
	ret = qf_cache_read_begin(c, &txn);
	if (!ret)
		ret = qf_cache_get(txn, id, v->name, &p, &len);
	if (!ret && len != v->len)
		ret = QF_ECORRUPT;
	if (!ret)
		ret = put(r, key, p, len, false, NULL, &st, NULL);
	qf_cache_read_end(txn);
	if (!ret && st / 100 != 2)
		ret = st == 403 ? -EACCES : -EIO;
	if (!ret) {
		known(r, v->sha);
		pthread_mutex_lock(&r->lock);
		r->st.published++;
		pthread_mutex_unlock(&r->lock);
	}
	return ret;
}

int qf_remote_publish(struct qf_remote *r, struct qf_cache *c,
		      const uint8_t *id, int step, const char *label,
		      const char *record)
{
	struct qf_rmanifest m = { 0 };
	struct qf_cache_txn *txn;
	struct snap s = { 0 };
	struct qf_buf text = QF_BUF_INIT;
	char key[256];
	size_t i;
	long st;
	int ret;

	ret = writer(r);
	if (ret < 0)
		return ret;
	ret = qf_cache_read_begin(c, &txn);
	if (!ret) {
		ret = qf_cache_each_value(txn, id, snap_one, &s);
		qf_cache_read_end(txn);
	}
	if (!ret && s.err)
		ret = s.err;
	for (i = 0; i < s.n && !ret; i++)
		ret = upload(r, c, id, &s.v[i]);
	if (!ret) {
		memcpy(m.id, id, QF_CACHE_VID);
		m.label = (char *)label;
		m.host = r->host;
		m.record = (char *)record;
		m.created = (double)time(NULL);
		m.step = step;
		m.v = s.v;
		m.n = s.n;
		ret = qf_rmanifest_print(&m, &text);
	}
	if (!ret) {
		qf_remote_key(r, step >= 0 ? "ckpt" : "manifests", id,
			      QF_CACHE_VID, step, key, sizeof(key));
		ret = put(r, key, text.data, text.len, true, NULL, &st, NULL);
	}
	if (!ret && st == 412)
		ret = -EEXIST;
	else if (!ret && st / 100 != 2)
		ret = st == 403 ? -EACCES : -EIO;
	if ((!ret || ret == -EEXIST) && step < 0)
		qf_remote_published(r, id);	/* it is there now */
	if (!ret)
		qf_info("remote tier: published %s%s (%zu values)", label,
			step >= 0 ? " checkpoint" : "", s.n);
	for (i = 0; i < s.n; i++)
		free(s.v[i].name);
	free(s.v);
	qf_buf_release(&text);
	return ret;
}

/* --- leases --- */

static void parse_info(const char *text, size_t len,
		       struct qf_lease_info *info)
{
	cJSON *o = cJSON_ParseWithLength(text, len);
	const char *h = cJSON_GetStringValue(cJSON_GetObjectItem(o, "holder"));
	const cJSON *x;

	info->done = info->total = -1;
	info->eta = -1;
	snprintf(info->holder, sizeof(info->holder), "%s", h ? h : "?");
	if ((x = cJSON_GetObjectItem(o, "ttl_s")) && cJSON_IsNumber(x))
		info->ttl = x->valuedouble;
	if ((x = cJSON_GetObjectItem(o, "layers_done")) && cJSON_IsNumber(x))
		info->done = x->valueint;
	if ((x = cJSON_GetObjectItem(o, "layers")) && cJSON_IsNumber(x))
		info->total = x->valueint;
	if ((x = cJSON_GetObjectItem(o, "eta_s")) && cJSON_IsNumber(x))
		info->eta = x->valuedouble;
	if ((x = cJSON_GetObjectItem(o, "started")) && cJSON_IsNumber(x))
		info->started = x->valuedouble;
	cJSON_Delete(o);
}

static int lease_observe(void *arg, struct qf_lease_obs *o)
{
	struct qf_remote_lease *rl = arg;
	struct qf_remote *r = rl->r;
	const struct qf_rmanifest *m;
	struct qf_s3_resp resp;
	char key[256];
	int ret;

	ret = qf_remote_manifest_at(r, rl->id, true, &m);
	if (ret == -EAGAIN)
		return ret;
	o->manifest = ret == 0;
	if (o->manifest)
		return 0;
	qf_remote_key(r, "leases", rl->id, QF_CACHE_VID, -1, key, sizeof(key));
	ret = qf_remote_request(r, QF_RQ_GET, key, NULL, 0, 65536, NULL,
				&resp);
	if (ret == -EFBIG)
		ret = 0;	/* a lease too long to read: expires as any */
	if (ret < 0)
		return ret;
	o->exists = resp.status == 200;
	if (o->exists) {
		snprintf(o->etag, sizeof(o->etag), "%s", resp.etag);
		o->age = resp.date > 0 && resp.last_modified > 0 ?
			 resp.date - resp.last_modified : 0;
		parse_info(resp.body.data ? resp.body.data : "",
			   resp.body.len, &o->info);
	}
	qf_s3_resp_free(&resp);
	return 0;
}

static int lease_write(void *arg, const char *if_match, const char *body,
		       char etag[QF_ETAG_MAX])
{
	struct qf_remote_lease *rl = arg;
	struct qf_remote *r = rl->r;
	char key[256];
	long st;
	int ret;

	ret = writer(r);
	if (ret < 0)
		return -EEXIST;		/* never contend: wait instead */
	qf_remote_key(r, "leases", rl->id, QF_CACHE_VID, -1, key, sizeof(key));
	ret = put(r, key, body, strlen(body), !if_match, if_match, &st, etag);
	if (ret < 0)
		return ret;
	if (st / 100 == 2)
		return 0;
	return st == 412 || st == 409 || st == 404 ? -EEXIST : -EIO;
}

static const struct qf_lease_ops lease_ops = { lease_observe, lease_write };

void qf_remote_lease_init(struct qf_remote *r, const uint8_t *id,
			  struct qf_remote_lease *rl)
{
	memset(rl, 0, sizeof(*rl));
	rl->r = r;
	memcpy(rl->id, id, QF_CACHE_VID);
	qf_lease_init(&rl->l, &lease_ops, rl, r->lease_s);
}

int qf_remote_lease_body(struct qf_remote *r, const char *label, int done,
			 int total, double eta, double started,
			 struct qf_buf *out)
{
	cJSON *o = cJSON_CreateObject();
	char n[33], *text;

	qf_buf_reset(out);
	if (!o)
		return -ENOMEM;
	nonce(n);
	cJSON_AddStringToObject(o, "holder", r->host);
	cJSON_AddStringToObject(o, "nonce", n);
	cJSON_AddNumberToObject(o, "ttl_s", r->lease_s);
	cJSON_AddStringToObject(o, "label", label);
	cJSON_AddNumberToObject(o, "layers_done", done);
	cJSON_AddNumberToObject(o, "layers", total);
	cJSON_AddNumberToObject(o, "eta_s", eta);
	cJSON_AddNumberToObject(o, "started", started);
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (text)
		qf_buf_adds(out, text);
	free(text);
	return out->data ? 0 : -ENOMEM;
}

void qf_remote_lease_drop(struct qf_remote_lease *rl)
{
	char key[256];

	if (rl->r->role == QF_REMOTE_READ)
		return;
	qf_remote_key(rl->r, "leases", rl->id, QF_CACHE_VID, -1, key,
		      sizeof(key));
	del(rl->r, key);
}
