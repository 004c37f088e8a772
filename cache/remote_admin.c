/*
 * remote_admin.c - the bucket's side of `quantfs cache ls|rm|gc --remote`
 * (remote.h, the section at its end): what the bucket holds, removing a
 * published id, and garbage collection of values no one names.
 *
 * Why gc can delete values at all without racing publishers: a publisher
 * uploads an id's values first and names them in a manifest (or
 * checkpoint) last, so for a while every value of an upload in flight
 * looks like garbage.  gc deletes only unnamed values whose LastModified
 * is older than its grace, and a publisher writes a value again when the
 * copy it found is older than QF_REMOTE_REFRESH_S before naming it
 * (remote_pub.c): with a grace of at least twice that, a value is never
 * both about to be named and old enough to delete.  Ages are read off
 * the server's clock (its Date against LastModified), as leases are, so
 * a machine with a wrong clock cannot shorten the grace.
 *
 * Everything goes through the tier's own layout (qf_remote_key), manifest
 * parser (qf_remote_fetch, qf_rmanifest_parse) and lease reader (the
 * lease ops' observe), so this file knows no format of its own.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "remote_i.h"

/* The listings a view was made from, and the checkpoints read. */
struct qf_remote_lists {
	struct qf_s3_list man, ckpt, lease, values, probes;
	struct qf_rmanifest *mf;	/* man.n manifests, parsed */
	int *mfret;			/* each one's qf_remote_fetch result */
	struct qf_rmanifest *ck;	/* ckpt.n checkpoints, parsed */
	int *ckret;
};

/* Lower-case hex of exactly 2n digits into n bytes: 0 or -EINVAL. */
static int from_hex(const char *s, size_t slen, uint8_t *out, size_t n)
{
	return slen == 2 * n ? qf_unhex(s, n, out) : -EINVAL;
}

/* "<prefix>v1/<kind>/": where objects of one kind start. */
static void kind_prefix(const struct qf_remote *r, const char *kind,
			char *out, size_t cap)
{
	qf_remote_key(r, kind, NULL, 0, -1, out, cap);
}

/* What listing kind/ under r gave; logs why it failed. */
static int list_kind(struct qf_remote *r, const char *kind,
		     struct qf_s3_list *out, double *date)
{
	struct qf_s3_resp resp = QF_S3_RESP_INIT;
	char pfx[256];
	int ret;

	kind_prefix(r, kind, pfx, sizeof(pfx));
	ret = qf_s3_list(r->s3, pfx, out, &resp);
	pthread_mutex_lock(&r->lock);
	r->st.list++;
	pthread_mutex_unlock(&r->lock);
	if (ret == -EIO) {
		qf_err("remote tier %s: listing %s: HTTP %ld %s", r->desc, pfx,
		       resp.status, resp.error);
		ret = resp.status == 403 ? -EACCES :
		      resp.status == 404 ? -ENOENT : -EIO;
	} else if (ret < 0 && ret != -ENOMEM && ret != QF_EFORMAT) {
		qf_err("remote tier %s: listing %s: no answer (%s)", r->desc,
		       pfx, resp.error[0] ? resp.error : qf_strerror(ret));
		ret = -EAGAIN;
	} else if (ret == QF_EFORMAT) {
		qf_err("remote tier %s: listing %s: the answer does not parse",
		       r->desc, pfx);
		ret = -EIO;
	}
	if (!ret && resp.date > 0)
		*date = resp.date;
	qf_s3_resp_free(&resp);
	return ret;
}

/*
 * The id a listed key names: "<kind prefix><32 hex>" then, for
 * checkpoints, "/<step>".  -EINVAL for anything else (not ours).
 */
static int id_of_key(const char *key, size_t plen, uint8_t *id, int *step)
{
	const char *rest = key + plen, *slash = strchr(rest, '/');
	size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
	char *end;
	long s;

	if (from_hex(rest, n, id, QF_CACHE_VID) < 0 || !!slash != !!step)
		return -EINVAL;
	if (!step)
		return 0;
	s = strtol(slash + 1, &end, 10);
	if (end == slash + 1 || *end || s < 0 || s > 1000000)
		return -EINVAL;
	*step = (int)s;
	return 0;
}

/* The entry of id in v (sorted by id), added when absent; NULL: ENOMEM. */
static struct qf_remote_entry *entry(struct qf_remote_view *v, size_t *cap,
				     const uint8_t *id)
{
	size_t lo = 0, hi = v->n;
	struct qf_remote_entry *e;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = memcmp(v->e[mid].id, id, QF_CACHE_VID);

		if (!c)
			return &v->e[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (qf_grow(&v->e, v->n + 1, cap, 16, sizeof(*v->e)) < 0)
		return NULL;
	memmove(&v->e[lo + 1], &v->e[lo], (v->n - lo) * sizeof(*v->e));
	v->n++;
	e = &v->e[lo];
	memset(e, 0, sizeof(*e));
	memcpy(e->id, id, QF_CACHE_VID);
	qf_hex(id, QF_CACHE_VID, e->hex);
	e->label = "";
	e->ckpt_step = -1;
	e->state = QF_RSTATE_ABANDONED;
	return e;
}

static char *record_str(const cJSON *o, const char *key)
{
	const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(o, key));

	return s ? strdup(s) : NULL;
}

/* model, variant and calib of a published entry, from its record. */
static int read_record(struct qf_remote_entry *e)
{
	cJSON *o;
	size_t i;

	for (i = 0; i < e->m->n; i++)
		e->bytes += e->m->v[i].len;
	if (!e->m->record)
		return 0;
	o = cJSON_Parse(e->m->record);
	if (cJSON_IsObject(o)) {
		e->model = record_str(o, "model");
		e->variant = record_str(o, "variant");
		e->calib = record_str(o, "calib");
	}
	cJSON_Delete(o);
	return 0;
}

/* Manifests: one entry each, PUBLISHED or UNREADABLE. */
static int view_manifests(struct qf_remote *r, struct qf_remote_view *v,
			  size_t *cap)
{
	struct qf_remote_lists *l = v->lists;
	char pfx[256];
	size_t i;

	kind_prefix(r, "manifests", pfx, sizeof(pfx));
	l->mf = calloc(l->man.n + 1, sizeof(*l->mf));
	l->mfret = calloc(l->man.n + 1, sizeof(*l->mfret));
	if (!l->mf || !l->mfret)
		return -ENOMEM;
	for (i = 0; i < l->man.n; i++) {
		struct qf_remote_entry *e;
		uint8_t id[QF_CACHE_VID];
		int ret;

		l->mfret[i] = -EINVAL;
		if (id_of_key(l->man.obj[i].key, strlen(pfx), id, NULL) < 0)
			continue;	/* not a manifest of ours */
		ret = qf_remote_fetch(r, l->man.obj[i].key, id, &l->mf[i]);
		l->mfret[i] = ret;
		if (ret == -ENOENT)
			continue;	/* removed since the listing */
		if (ret < 0 && ret != QF_EFORMAT)
			return ret;
		e = entry(v, cap, id);
		if (!e)
			return -ENOMEM;
		if (ret == QF_EFORMAT) {
			e->state = QF_RSTATE_UNREADABLE;
			v->t.unreadable++;
			continue;
		}
		e->state = QF_RSTATE_PUBLISHED;
		e->m = &l->mf[i];
		e->label = e->m->label;
		read_record(e);
	}
	return 0;
}

/* Sorted by key, so each id's checkpoints are consecutive, in order. */
static int by_key(const void *a, const void *b)
{
	return strcmp(((const struct qf_s3_obj *)a)->key,
		      ((const struct qf_s3_obj *)b)->key);
}

/* Checkpoints: read each, count them with their id's entry. */
static int view_checkpoints(struct qf_remote *r, struct qf_remote_view *v,
			    size_t *cap)
{
	struct qf_remote_lists *l = v->lists;
	char pfx[256];
	size_t i;

	kind_prefix(r, "ckpt", pfx, sizeof(pfx));
	if (l->ckpt.n)
		qsort(l->ckpt.obj, l->ckpt.n, sizeof(*l->ckpt.obj), by_key);
	l->ck = calloc(l->ckpt.n + 1, sizeof(*l->ck));
	l->ckret = calloc(l->ckpt.n + 1, sizeof(*l->ckret));
	if (!l->ck || !l->ckret)
		return -ENOMEM;
	for (i = 0; i < l->ckpt.n; i++) {
		const struct qf_s3_obj *o = &l->ckpt.obj[i];
		struct qf_remote_entry *e;
		uint8_t id[QF_CACHE_VID];
		int step, ret;

		l->ck[i].step = -1;
		l->ckret[i] = -EINVAL;
		if (id_of_key(o->key, strlen(pfx), id, &step) < 0)
			continue;
		e = entry(v, cap, id);
		if (!e)
			return -ENOMEM;
		if (!e->nckpt)
			e->ckpt0 = i;
		e->nckpt = i + 1 - e->ckpt0;
		if (step > e->ckpt_step)
			e->ckpt_step = step;
		if (e->nckpt == 1 || v->date - o->last_modified < e->ckpt_age)
			e->ckpt_age = v->date - o->last_modified;
		ret = qf_remote_fetch(r, o->key, id, &l->ck[i]);
		l->ckret[i] = ret;
		if (ret == QF_EFORMAT)
			v->t.unreadable++;
		else if (ret < 0 && ret != -ENOENT)
			return ret;
		if (!ret && !e->m && step == e->ckpt_step)
			e->label = l->ck[i].label;
	}
	return 0;
}

/* Leases: their age, and for ids not published, their body. */
static int view_leases(struct qf_remote *r, struct qf_remote_view *v,
		       size_t *cap)
{
	struct qf_remote_lists *l = v->lists;
	char pfx[256];
	size_t i;

	kind_prefix(r, "leases", pfx, sizeof(pfx));
	for (i = 0; i < l->lease.n; i++) {
		struct qf_remote_lease rl;
		struct qf_lease_obs o;
		struct qf_remote_entry *e;
		uint8_t id[QF_CACHE_VID];
		int ret;

		if (id_of_key(l->lease.obj[i].key, strlen(pfx), id, NULL) < 0)
			continue;
		e = entry(v, cap, id);
		if (!e)
			return -ENOMEM;
		e->leased = true;
		e->lease_age = v->date - l->lease.obj[i].last_modified;
		if (e->state == QF_RSTATE_PUBLISHED ||
		    e->state == QF_RSTATE_UNREADABLE)
			continue;
		/* the tier's own reader: body, and age on the server's
		 * clock as the lease machine sees it */
		memset(&o, 0, sizeof(o));
		qf_remote_lease_init(r, id, &rl);
		ret = rl.l.ops->observe(&rl, &o);
		if (ret < 0)
			return ret;
		e->lease = o.info;
		if (!o.exists) {
			e->leased = false;	/* dropped since the listing */
			e->state = o.manifest ? QF_RSTATE_PRODUCING :
				   QF_RSTATE_ABANDONED;
			continue;	/* a manifest came: leave it be */
		}
		e->lease_age = o.age;
		e->state = qf_lease_alive(&o, r->lease_s) ?
			   QF_RSTATE_PRODUCING : QF_RSTATE_EXPIRED;
	}
	return 0;
}

/* A set of SHA-256 sums: the values something names. */
struct marks {
	uint8_t (*sha)[32];
	size_t n, cap;
};

static int marks_add(struct marks *k, const struct qf_rmanifest *m)
{
	size_t i;

	for (i = 0; i < m->n; i++) {
		if (qf_grow(&k->sha, k->n + 1, &k->cap, 256,
			    sizeof(*k->sha)) < 0)
			return -ENOMEM;
		memcpy(k->sha[k->n++], m->v[i].sha, 32);
	}
	return 0;
}

static int by_sha(const void *a, const void *b)
{
	return memcmp(a, b, 32);
}

static void marks_sort(struct marks *k)
{
	if (k->n)
		qsort(k->sha, k->n, sizeof(*k->sha), by_sha);
}

static bool marked(const struct marks *k, const uint8_t *sha)
{
	return k->n && bsearch(sha, k->sha, k->n, sizeof(*k->sha), by_sha);
}

/* The sum a values/ key names; false for a key that is not ours. */
static bool value_sha(const struct qf_remote *r, const char *key,
		      uint8_t sha[32])
{
	char pfx[256];
	size_t n;

	kind_prefix(r, "values", pfx, sizeof(pfx));
	n = strlen(pfx);
	return !strncmp(key, pfx, n) &&
	       from_hex(key + n, strlen(key + n), sha, 32) == 0;
}

/* values/ against what every manifest and checkpoint names. */
static int view_totals(struct qf_remote *r, struct qf_remote_view *v)
{
	struct qf_remote_lists *l = v->lists;
	struct marks k = { 0 };
	uint8_t sha[32];
	size_t i;
	int ret = 0;

	for (i = 0; i < l->man.n && !ret; i++)
		if (!l->mfret[i])
			ret = marks_add(&k, &l->mf[i]);
	for (i = 0; i < l->ckpt.n && !ret; i++)
		if (!l->ckret[i])
			ret = marks_add(&k, &l->ck[i]);
	marks_sort(&k);
	for (i = 0; i < l->values.n && !ret; i++) {
		const struct qf_s3_obj *o = &l->values.obj[i];

		if (!value_sha(r, o->key, sha)) {
			v->t.foreign++;
			continue;
		}
		v->t.values++;
		v->t.value_bytes += o->size;
		if (!marked(&k, sha)) {
			v->t.garbage++;
			v->t.garbage_bytes += o->size;
		}
	}
	v->t.probes = l->probes.n;
	free(k.sha);
	return ret;
}

int qf_remote_view(struct qf_remote *r, struct qf_remote_view *out)
{
	struct qf_remote_lists *l;
	size_t cap = 0;
	int ret;

	memset(out, 0, sizeof(*out));
	l = out->lists = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	out->date = (double)time(NULL);		/* until the server says */
	/* values last: a value named by a manifest listed after it could
	 * otherwise look unnamed */
	ret = list_kind(r, "manifests", &l->man, &out->date);
	if (!ret)
		ret = list_kind(r, "ckpt", &l->ckpt, &out->date);
	if (!ret)
		ret = list_kind(r, "leases", &l->lease, &out->date);
	if (!ret)
		ret = list_kind(r, "probe", &l->probes, &out->date);
	if (!ret)
		ret = list_kind(r, "values", &l->values, &out->date);
	if (!ret)
		ret = view_manifests(r, out, &cap);
	if (!ret)
		ret = view_checkpoints(r, out, &cap);
	if (!ret)
		ret = view_leases(r, out, &cap);
	if (!ret)
		ret = view_totals(r, out);
	return ret;
}

void qf_remote_view_free(struct qf_remote_view *v)
{
	struct qf_remote_lists *l = v->lists;
	size_t i;

	for (i = 0; i < v->n; i++) {
		free(v->e[i].model);
		free(v->e[i].variant);
		free(v->e[i].calib);
	}
	free(v->e);
	if (l) {
		for (i = 0; l->mf && i < l->man.n; i++)
			qf_rmanifest_free(&l->mf[i]);
		for (i = 0; l->ck && i < l->ckpt.n; i++)
			qf_rmanifest_free(&l->ck[i]);
		free(l->mf);
		free(l->mfret);
		free(l->ck);
		free(l->ckret);
		qf_s3_list_free(&l->man);
		qf_s3_list_free(&l->ckpt);
		qf_s3_list_free(&l->lease);
		qf_s3_list_free(&l->values);
		qf_s3_list_free(&l->probes);
		free(l);
	}
	memset(v, 0, sizeof(*v));
}

/* DELETE key (gone already counts as done): 0, -EAGAIN, -EACCES, -EIO. */
static int del_key(struct qf_remote *r, const char *key)
{
	struct qf_s3_resp resp;
	int ret;

	ret = qf_remote_request(r, QF_RQ_DELETE, key, NULL, 0, 0, NULL,
				&resp);
	if (ret < 0) {
		qf_err("remote tier %s: DELETE %s: no answer", r->desc, key);
		return ret;
	}
	if (resp.status / 100 != 2 && resp.status != 404) {
		qf_err("remote tier %s: DELETE %s: HTTP %ld %s", r->desc, key,
		       resp.status, resp.error);
		ret = resp.status == 403 ? -EACCES : -EIO;
	}
	qf_s3_resp_free(&resp);
	return ret;
}

/* The key of e's manifest or lease. */
static void entry_key(const struct qf_remote *r,
		      const struct qf_remote_entry *e, const char *kind,
		      char *out, size_t cap)
{
	qf_remote_key(r, kind, e->id, QF_CACHE_VID, -1, out, cap);
}

/* Delete e's checkpoints (all, or none when dry_run): counted in *n. */
static int del_ckpts(struct qf_remote *r, const struct qf_remote_view *v,
		     const struct qf_remote_entry *e, bool dry_run,
		     size_t *n, uint64_t *bytes)
{
	size_t i;
	int ret;

	for (i = e->ckpt0; i < e->ckpt0 + e->nckpt; i++) {
		const struct qf_s3_obj *o = &v->lists->ckpt.obj[i];

		ret = dry_run ? 0 : del_key(r, o->key);
		if (ret < 0)
			return ret;
		(*n)++;
		if (bytes)
			*bytes += o->size;
	}
	return 0;
}

int qf_remote_rm(struct qf_remote *r, const struct qf_remote_view *v,
		 const struct qf_remote_entry *e,
		 struct qf_remote_rm_result *out)
{
	char key[256];
	int ret = 0;

	memset(out, 0, sizeof(*out));
	if (e->state == QF_RSTATE_PRODUCING)
		return -EBUSY;
	if (e->state == QF_RSTATE_PUBLISHED ||
	    e->state == QF_RSTATE_UNREADABLE) {
		entry_key(r, e, "manifests", key, sizeof(key));
		ret = del_key(r, key);
		out->manifest = !ret;
	}
	if (!ret)
		ret = del_ckpts(r, v, e, false, &out->ckpts, NULL);
	if (!ret && e->leased) {
		entry_key(r, e, "leases", key, sizeof(key));
		ret = del_key(r, key);
		out->lease = !ret;
	}
	return ret;
}

/*
 * Is an object of this age (the server's Date, whole seconds, minus its
 * LastModified, which may have a fraction: a fresh one can be -0.5 s
 * old) younger than the grace?  A grace of 0 spares nothing.
 */
static bool young(double age, double grace)
{
	return grace > 0 && age < grace;
}

/*
 * gc's first phase for one entry: delete superseded and abandoned
 * checkpoints and stale leases; *keep says whether its checkpoints stay
 * (and so name values).
 */
static int gc_entry(struct qf_remote *r, const struct qf_remote_view *v,
		    const struct qf_remote_entry *e, double grace,
		    bool dry_run, struct qf_remote_gc_result *out, bool *keep)
{
	char key[256];
	bool drop_lease;
	int ret;

	*keep = true;
	switch (e->state) {
	case QF_RSTATE_PUBLISHED:
		/* the manifest names what the id needs; a lease beside
		 * it is a publisher's that died before dropping it */
		*keep = false;
		ret = del_ckpts(r, v, e, dry_run, &out->ckpt_superseded,
				&out->ckpt_bytes);
		drop_lease = e->leased;
		break;
	case QF_RSTATE_EXPIRED:
	case QF_RSTATE_ABANDONED:
		if (e->nckpt && young(e->ckpt_age, grace))
			return 0;	/* may yet be taken over */
		*keep = false;
		ret = del_ckpts(r, v, e, dry_run, &out->ckpt_abandoned,
				&out->ckpt_bytes);
		drop_lease = e->leased && !young(e->lease_age, grace);
		break;
	default:
		return 0;	/* in production, or unreadable: kept */
	}
	if (!ret && drop_lease) {
		entry_key(r, e, "leases", key, sizeof(key));
		ret = dry_run ? 0 : del_key(r, key);
		out->leases += !ret;
	}
	return ret;
}

/* The names of everything kept: manifests, kept checkpoints.
 * QF_EFORMAT when one of them could not be read (what it names is
 * unknown). */
static int gc_mark(const struct qf_remote_view *v, const bool *keep,
		   struct marks *k)
{
	const struct qf_remote_lists *l = v->lists;
	size_t i, j;
	int ret = 0;

	for (i = 0; i < v->n && !ret; i++) {
		const struct qf_remote_entry *e = &v->e[i];

		if (e->state == QF_RSTATE_UNREADABLE)
			ret = QF_EFORMAT;
		else if (e->m)
			ret = marks_add(k, e->m);
		for (j = e->ckpt0; keep[i] && j < e->ckpt0 + e->nckpt &&
		     !ret; j++)
			ret = l->ckret[j] == -ENOENT ? 0 : l->ckret[j] ?
			      QF_EFORMAT : marks_add(k, &l->ck[j]);
	}
	marks_sort(k);
	return ret;
}

/* Sweep values/ and probe/. */
static int gc_sweep(struct qf_remote *r, const struct qf_remote_view *v,
		    const struct marks *k, double grace, bool dry_run,
		    struct qf_remote_gc_result *out)
{
	const struct qf_remote_lists *l = v->lists;
	uint8_t sha[32];
	size_t i;
	int ret = 0;

	for (i = 0; i < l->values.n && !ret; i++) {
		const struct qf_s3_obj *o = &l->values.obj[i];

		if (!value_sha(r, o->key, sha))
			continue;		/* not ours */
		if (marked(k, sha)) {
			out->values_kept++;
			out->values_kept_bytes += o->size;
		} else if (young(v->date - o->last_modified, grace)) {
			out->values_young++;
			out->values_young_bytes += o->size;
		} else {
			ret = dry_run ? 0 : del_key(r, o->key);
			if (!ret) {
				out->values_deleted++;
				out->values_deleted_bytes += o->size;
			}
		}
	}
	for (i = 0; i < l->probes.n && !ret; i++) {
		if (young(v->date - l->probes.obj[i].last_modified, grace))
			continue;
		ret = dry_run ? 0 : del_key(r, l->probes.obj[i].key);
		out->probes += !ret;
	}
	out->failed += ret < 0;
	return ret;
}

int qf_remote_gc(struct qf_remote *r, const struct qf_remote_view *v,
		 double grace, bool dry_run, struct qf_remote_gc_result *out)
{
	struct marks k = { 0 };
	bool *keep;
	size_t i;
	int ret = 0;

	memset(out, 0, sizeof(*out));
	keep = calloc(v->n + 1, sizeof(*keep));
	if (!keep)
		return -ENOMEM;
	for (i = 0; i < v->n && !ret; i++)
		ret = gc_entry(r, v, &v->e[i], grace, dry_run, out, &keep[i]);
	out->failed += ret < 0;
	if (!ret) {
		ret = gc_mark(v, keep, &k);
		if (ret == QF_EFORMAT)
			qf_warn("remote tier %s: a manifest or a checkpoint "
				"kept does not parse: what it names is "
				"unknown, so no value is deleted (quantfs "
				"cache ls --remote shows it; cache rm --remote "
				"ID removes it)", r->desc);
		else if (!ret)
			ret = gc_sweep(r, v, &k, grace, dry_run, out);
		out->swept = !ret;
		if (ret == QF_EFORMAT)
			ret = 0;	/* not swept, said why: no failure */
	}
	free(k.sha);
	free(keep);
	return ret;
}
