/*
 * var.c - variant objects: the assembled file plan of model.safetensors
 * and the production of its tensor groups into the cache.
 *
 * Each group is a slot of the variant's single flight (flight.c): it is
 * produced at most once at a time per machine, and a second mount (or
 * another process) serves what the first one stored.  All tensors of a
 * group are committed in one LMDB transaction, so finding one means all
 * are there.  A calibrated variant's groups come from its layer job
 * (job.c); a _fake variant's from its packed base variant, which ns.c
 * resolves and hands to qf_var_new().
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cluster.h"
#include "fs_i.h"

static int cmp_seg(const void *a, const void *b)
{
	const struct qf_seg *x = a;
	const struct qf_seg *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

static int build_plan(struct qf_var *var)
{
	struct qf_variant *v = var->v;
	struct qf_st_plan_entry *e;
	uint64_t total;
	size_t i;
	int ret;

	e = calloc(v->nt ? v->nt : 1, sizeof(*e));
	var->seg = calloc(v->nt + 1, sizeof(*var->seg));
	if (!e || !var->seg) {
		free(e);
		return -ENOMEM;
	}
	for (i = 0; i < v->nt; i++) {
		e[i].name = v->t[i].name;
		e[i].dtype = v->t[i].dtype;
		e[i].ndim = v->t[i].ndim;
		e[i].shape[0] = v->t[i].shape[0];
		e[i].shape[1] = v->t[i].shape[1];
		e[i].user = &v->t[i];
	}
	ret = qf_st_plan(e, v->nt, NULL, 0, &var->header, &total);
	if (ret < 0)
		goto out_free;
	var->seg[0].off = 0;
	var->seg[0].len = var->header.len;
	var->nseg = 1;
	for (i = 0; i < v->nt; i++) {
		if (!e[i].nbytes)
			continue;
		var->seg[var->nseg].off = var->header.len + e[i].begin;
		var->seg[var->nseg].len = e[i].nbytes;
		var->seg[var->nseg].t = e[i].user;
		var->nseg++;
	}
	qsort(var->seg, var->nseg, sizeof(*var->seg), cmp_seg);
	var->size = var->header.len + total;
out_free:
	free(e);
	return ret;
}

/*
 * "alloc2=<hash>;": the widths and group sizes a mixed variant's
 * measurement chose, in its id, so that machines whose measurements
 * differ in the last bits (other CPUs sum in another order) never take
 * each other's bytes for their own plan.
 */
static void alloc_key(const struct qf_mixed_alloc *a, char *out, size_t cap)
{
	struct qf_sha256 h;
	uint8_t d[32];
	char hex[65];
	size_t i;

	qf_sha256_init(&h);
	for (i = 0; i < a->n; i++) {
		uint8_t b[2] = { (uint8_t)a->bits[i], (uint8_t)a->group[i] };

		qf_sha256_update(&h, a->names[i], strlen(a->names[i]) + 1);
		qf_sha256_update(&h, b, 2);
	}
	qf_sha256_final(&h, d);
	qf_hex(d, 8, hex);
	/* v2: GPTQ at widths and group sizes (v1: round to nearest) */
	snprintf(out, cap, "alloc2=%s;", hex);
}

/*
 * A node that never produces calibrated variants (remote_role read or
 * cheap) serves one made with the other backend when the bucket has
 * only that one (a CPU inference node, a CUDA batch producer): the
 * variant takes that id, and with it those bytes.
 */
static void other_backend(struct qf_fs *fs, struct qf_var *var,
			  const char **parts, size_t nparts, const char *extra)
{
	bool cuda = !strncmp(extra, "backend=cuda;", 13);
	uint8_t vid[QF_CACHE_VID];
	char alt[300];

	if (qf_remote_role(fs->remote) == QF_REMOTE_PRODUCE)
		return;
	snprintf(alt, sizeof(alt), "%s%s", cuda ? "" : "backend=cuda;",
		 cuda ? extra + 13 : extra);
	parts[4] = alt;
	qf_cache_vid(parts, alt[0] ? nparts : 4, vid);
	parts[4] = extra;
	if (qf_cluster_prefer(fs, var->vid, vid)) {
		memcpy(var->vid, vid, QF_CACHE_VID);
		qf_info("%s/%s: the remote tier has it made with backend %s "
			"only: serving that", var->mdl->name, var->v->name,
			cuda ? "cpu" : "cuda");
	}
}

/* mixed_static: the role table of -o mixed_table / mixed_roles */
static int static_bits(void *arg, const char *name, int *group)
{
	struct qf_fs *fs = arg;
	enum qf_role r;
	int bits = qf_mixed_static_bits(&fs->mtable,
					(const char *const *)fs->mroles, name,
					&r);

	(void)group;	/* the spec's */
	if (r == QF_ROLE_OTHER)
		qf_info("%s: no role known, 'other' (%d bits)", name, bits);
	return bits;
}

/*
 * What else changes a variant's bytes than its model, name and
 * calibration set, into extra (cap bytes; "" for none) and parts[5] (the
 * mixed_static role overrides); alloc: a measured mixed variant's
 * allocation, else NULL.  Returns how many parts the id has.
 */
static int id_extra(const struct qf_fs *fs, const struct qf_var *var,
		    const struct qf_spec *sp, const struct qf_mixed_alloc *alloc,
		    const char **parts, char *extra, size_t cap)
{
	enum qf_ggml_type base;
	enum qf_gguf_mix mix;
	int nparts = 5;

	/*
	 * What else changes the bytes: the backend (sums in another order)
	 * and BRECQ's optimizer settings.  Keys without them are those of
	 * before.
	 */
	extra[0] = 0;
	if (var->calibrated && fs->backend == QF_BACKEND_CUDA)
		snprintf(extra, cap, "backend=cuda;");
	/* kq: the job's encoded linears (v1 stored GPTQ factors) */
	if (sp->method == QF_METHOD_KQUANT)
		snprintf(extra + strlen(extra), cap - strlen(extra),
			 "kq=gptq-v2;");
	/* an untied model's token_embd and output retyped (gguf_mix.c;
	 * v1 had llama.cpp's types) */
	if (sp->method == QF_METHOD_KQUANT && qf_gguf_mix_of(sp->bits,
	    sp->kq_size, &mix, &base) == 0 && qf_gguf_mix_ends(mix))
		snprintf(extra + strlen(extra), cap - strlen(extra),
			 "ends=v2;");
	/* GPTQ's _rot: with act-order (v1 had none), damping 0.1 and
	 * coordinate descent on the codes (v2 had neither) */
	if (sp->method == QF_METHOD_GPTQ && (sp->flags & QF_SPEC_ROT))
		snprintf(extra + strlen(extra), cap - strlen(extra),
			 "rot=act-cd;");
	if (sp->method == QF_METHOD_BRECQ)
		snprintf(extra + strlen(extra), cap - strlen(extra),
			 "brecq=%d/%d;",
			 (var->base ? var->base : var)->ci.brecq_iters,
			 (var->base ? var->base : var)->ci.brecq_batch);
	if (sp->method == QF_METHOD_MIXED_STATIC &&
	    (fs->o.mixed_table || fs->o.mixed_roles)) {
		const int *t = fs->mtable.bits;

		snprintf(extra + strlen(extra), cap - strlen(extra),
			 "table=%d/%d/%d/%d/%d;", t[QF_ROLE_ATTN],
			 t[QF_ROLE_MLP], t[QF_ROLE_EMBED], t[QF_ROLE_HEAD],
			 t[QF_ROLE_OTHER]);
		/* the override list, whole, as a part of its own */
		parts[nparts++] = fs->o.mixed_roles ? fs->o.mixed_roles : "";
	}
	if (alloc)	/* measured: two machines may measure otherwise */
		alloc_key(alloc, extra + strlen(extra),
			  cap - strlen(extra));
	if (sp->method == QF_METHOD_MIXED_DYN && fs->o.mixed_ratio)
		snprintf(extra + strlen(extra), cap - strlen(extra),
			 "ratio=%.17g/%.17g/%d/%d/%d;", fs->mratio.high,
			 fs->mratio.low, fs->mratio.bits_high,
			 fs->mratio.bits_mid, fs->mratio.bits_low);
	return nparts;
}

static const struct qf_flight_ops group_ops;

int qf_var_new(struct qf_fs *fs, struct qf_mdl *mdl, const char *name,
	       struct qf_var *base, struct qf_var **out)
{
	const char *parts[6];
	char extra[256];
	int nparts;
	struct qf_spec spec;
	struct qf_var *var;
	struct qf_mixed_alloc *alloc = NULL;
	struct qf_stash *stash;
	char calib_hex[33];
	bool mixed;
	int ret;

	ret = qf_spec_parse(name, &spec, NULL);
	if (ret < 0)
		return ret;
	stash = qf_stash_begin(fs, mdl, &spec);	/* meanwhile */
	ret = qf_src_fp(fs, mdl, true);	/* every id below names it */
	qf_stash_hashed(stash);
	var = ret < 0 ? NULL : calloc(1, sizeof(*var));
	if (!var) {
		qf_stash_free(stash);
		return ret < 0 ? ret : -ENOMEM;
	}
	var->stash = stash;
	pthread_mutex_init(&var->lock, NULL);
	pthread_cond_init(&var->cond, NULL);
	var->mdl = mdl;
	mixed = qf_spec_mixed_measured(&spec);
	if (mixed) {
		/* measured precisions (cached), then GPTQ at them */
		if (spec.flags & QF_SPEC_FAKE) {
			/* the packed variant's allocation; this one
			 * dequantizes its tensors, as any calibrated _fake */
			QF_ASSERT(base);
			alloc = base->alloc;
		} else {
			ret = qf_job_mixed_alloc(fs, mdl, &spec, &var->alloc);
			if (ret < 0)
				goto out_free;
			alloc = var->alloc;
		}
		ret = qf_variant_init_bits(mdl->m, &spec, qf_mixed_alloc_bits,
					   alloc, &var->v);
		if (!ret)
			var->v->alloc_json = alloc->json;
	} else if (spec.method == QF_METHOD_MIXED_STATIC) {
		ret = qf_variant_init_bits(mdl->m, &spec, static_bits, fs,
					   &var->v);
	} else if (spec.flags & QF_SPEC_ROT) {
		struct qf_model *rm;

		ret = qf_src_rot(fs, mdl, &rm);
		if (!ret)
			ret = qf_variant_init(rm, &spec, &var->v);
	} else {
		ret = qf_variant_init(mdl->m, &spec, &var->v);
	}
	if (ret < 0)
		goto out_free;
	/* a measured mixed variant that quantizes nothing (mixed_b16 keeps
	 * every linear): nothing to calibrate, the source's tensors as they
	 * are (kq has no group either: its job makes model.gguf) */
	var->calibrated = qf_spec_is_calibrated(&spec) &&
			  (!mixed || var->v->ng);
	calib_hex[0] = 0;
	if (mixed)	/* the set the precisions were measured on */
		qf_hex(alloc->calib_vid, QF_CACHE_VID, calib_hex);
	if (var->calibrated && (spec.flags & QF_SPEC_FAKE)) {
		/* _fake dequantizes the packed variant's tensors */
		QF_ASSERT(base);
		var->base = base;
		memcpy(var->calib_vid, var->base->calib_vid, QF_CACHE_VID);
	} else if (var->calibrated) {
		ret = qf_job_setup(fs, var);
		if (ret < 0)
			goto out_free;
	}
	if (var->calibrated)
		qf_hex(var->calib_vid, QF_CACHE_VID, calib_hex);
	parts[0] = "quantfs-variant-v1";
	parts[1] = mdl->m->fp_hex;
	parts[2] = var->v->name;
	parts[3] = calib_hex;		/* calibration set: none for rtn */
	nparts = id_extra(fs, var, &spec, alloc, parts, extra, sizeof(extra));
	parts[4] = extra;
	qf_cache_vid(parts, extra[0] ? nparts : 4, var->vid);
	if (var->calibrated && fs->remote)
		other_backend(fs, var, parts, nparts, extra);
	var->label = malloc(strlen(mdl->name) + strlen(var->v->name) + 2);
	ret = var->label ? 0 : -ENOMEM;
	if (!ret) {
		sprintf(var->label, "%s/%s", mdl->name, var->v->name);
		ret = qf_flight_init(&var->fl, &group_ops, var, var->vid,
				     var->label, var->v->ng);
	}
	if (!ret)
		ret = qf_variant_config(var->v, &var->config);
	if (!ret)
		ret = qf_variant_manifest(var->v, var->calibrated ?
					  &(var->base ? var->base : var)->ci :
					  NULL, &var->manifest);
	if (!ret)
		ret = build_plan(var);
	if (ret < 0)
		goto out_free;
	*out = var;
	return 0;

out_free:
	qf_var_free(var);
	return ret;
}

void qf_var_free(struct qf_var *var)
{
	if (!var)
		return;
	QF_ASSERT(!var->ahead);		/* stopped by its owner (ns.c) */
	qf_stash_free(var->stash);
	qf_job_free(var);
	qf_mixed_alloc_free(var->alloc);
	qf_flight_free(&var->fl);
	free(var->label);
	qf_variant_free(var->v);
	qf_buf_release(&var->config);
	qf_buf_release(&var->manifest);
	qf_buf_release(&var->header);
	free(var->seg);
	pthread_mutex_destroy(&var->lock);
	pthread_cond_destroy(&var->cond);
	free(var);
}

size_t qf_var_seg_at(const struct qf_var *var, uint64_t off)
{
	size_t lo = 0, hi = var->nseg;

	while (hi - lo > 1) {
		size_t mid = (lo + hi) / 2;

		if (var->seg[mid].off <= off)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* flight: the first tensor of group gi is there (the rest with it) */
static bool group_cached(struct qf_fs *fs, void *arg, size_t gi)
{
	struct qf_var *var = arg;
	const struct qf_vtensor *t = &var->v->t[var->v->g[gi].first];

	return qf_cache_has(fs->cache, var->vid, t->name, qf_vtensor_bytes(t));
}

static size_t group_names(void *arg, size_t gi, const char **names)
{
	struct qf_var *var = arg;
	const struct qf_vgroup *g = &var->v->g[gi];
	uint32_t k;

	QF_ASSERT(g->n <= QF_FLIGHT_MAXV);
	for (k = 0; k < g->n; k++)
		names[k] = var->v->t[g->first + k].name;
	return g->n;
}

int qf_var_ensure_range(struct qf_fs *fs, struct qf_var *var, uint64_t off,
			uint64_t end)
{
	size_t s;
	int ret;

	for (s = qf_var_seg_at(var, off); s < var->nseg &&
	     var->seg[s].off < end; s++) {
		const struct qf_vtensor *t = var->seg[s].t;

		if (!t || t->group == QF_VT_PASSTHROUGH)
			continue;
		ret = qf_var_ensure(fs, var, t->group);
		if (ret < 0)
			return ret;
	}
	return 0;
}

bool qf_var_cached(struct qf_fs *fs, struct qf_var *var)
{
	size_t gi;

	for (gi = 0; gi < var->v->ng; gi++)
		if (!qf_flight_cached(fs, &var->fl, gi))
			return false;
	return true;
}

/* The variant's record in the cache, for `ls` and the cache tools;
 * "created" survives rewrites, "accessed" is now. */
int qf_fs_record(struct qf_fs *fs, const uint8_t *vid,
		 const struct qf_mdl *mdl, const char *name, const char *calib)
{
	struct qf_cache_txn *txn;
	double created = (double)time(NULL);
	const char *json;
	char *text;
	cJSON *rec;
	size_t len;
	int ret;

	if (qf_cache_read_begin(fs->cache, &txn) == 0) {
		if (qf_cache_get_record(txn, vid, &json, &len) == 0) {
			cJSON *r = cJSON_ParseWithLength(json, len);
			cJSON *c = cJSON_GetObjectItem(r, "created");

			if (cJSON_IsNumber(c))
				created = c->valuedouble;
			cJSON_Delete(r);
		}
		qf_cache_read_end(txn);
	}
	rec = cJSON_CreateObject();
	cJSON_AddStringToObject(rec, "variant", name);
	cJSON_AddStringToObject(rec, "model", mdl->name);
	cJSON_AddStringToObject(rec, "source", mdl->dir);
	cJSON_AddStringToObject(rec, "fingerprint", mdl->m->fp_hex);
	cJSON_AddStringToObject(rec, "calib", calib);
	cJSON_AddNumberToObject(rec, "created", created);
	cJSON_AddNumberToObject(rec, "accessed", (double)time(NULL));
	text = cJSON_PrintUnformatted(rec);
	cJSON_Delete(rec);
	ret = text ? qf_cache_put_record(fs->cache, vid, text) : -ENOMEM;
	if (ret < 0)
		qf_warn("%s/%s: cannot write the cache record: %s", mdl->name,
			name, qf_strerror(ret));
	free(text);
	return ret;
}

static int var_record(struct qf_fs *fs, void *arg)
{
	struct qf_var *var = arg;
	char calib[2 * QF_CACHE_VID + 1] = "";

	if (var->calibrated)
		qf_hex(var->calib_vid, QF_CACHE_VID, calib);
	return qf_fs_record(fs, var->vid, var->mdl, var->v->name, calib);
}

/*
 * On a first open, or when a read finds a value gone: forget groups
 * another process (or cache_max) evicted while no file of the variant was
 * open, so they are produced again.
 */
void qf_var_revalidate(struct qf_fs *fs, struct qf_var *var)
{
	struct qf_cache_txn *txn;
	size_t gi;

	if (qf_cache_read_begin(fs->cache, &txn) < 0)
		return;
	for (gi = 0; gi < var->v->ng; gi++) {
		const struct qf_vtensor *t = &var->v->t[var->v->g[gi].first];
		bool job = var->job != NULL;
		const void *p;
		size_t len;

		if (!qf_flight_done(&var->fl, gi) &&
		    !(job && qf_job_group_done(var, (uint32_t)gi)))
			continue;
		if (qf_cache_get(txn, var->vid, t->name, &p, &len) == 0)
			continue;
		qf_flight_forget(&var->fl, gi);
		if (job)
			qf_job_forget(var, (uint32_t)gi);
	}
	qf_cache_read_end(txn);
}

void qf_var_opened(struct qf_fs *fs, struct qf_var *var)
{
	bool first, touch, recorded = qf_flight_recorded(&var->fl);
	double now = qf_now();
	int ret;

	pthread_mutex_lock(&var->lock);
	first = var->nopen++ == 0;
	touch = recorded && now - var->touched > 60;
	if (touch)
		var->touched = now;
	pthread_mutex_unlock(&var->lock);
	/* waits only while `cache gc` deletes this variant */
	ret = first ? qf_flight_share(fs, &var->fl, QF_LOCK_USE) : 0;
	if (ret < 0)
		qf_warn("%s: cannot mark the variant in use: %s", var->label,
			qf_strerror(ret));
	if (first)
		qf_var_revalidate(fs, var);
	if (touch)
		qf_flight_record(fs, &var->fl);
}

void qf_var_released(struct qf_fs *fs, struct qf_var *var)
{
	(void)fs;
	pthread_mutex_lock(&var->lock);
	if (--var->nopen == 0)
		qf_flight_unlock(&var->fl, QF_LOCK_USE);
	pthread_mutex_unlock(&var->lock);
}

/*
 * A calibrated _fake group: the packed variant's group, dequantized into
 * the source dtype (the same values a loader's GPTQ or AWQ kernel would
 * use), and for AWQ the norm that absorbed the scales.
 */
static int fake_from_base(struct qf_fs *fs, struct qf_var *var, uint32_t gi,
			  void **out)
{
	struct qf_var *b = var->base;
	const struct qf_vgroup *g = &b->v->g[gi];
	int64_t rows = g->w->t->shape[0], in = g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, g->qp.group);
	uint8_t *q = malloc((size_t)(rows * in));
	uint16_t *sc = malloc((size_t)(rows * ng) * 2);
	int32_t *z = malloc((size_t)(rows * ng) * 4);
	int32_t *gidx = malloc((size_t)in * 4);
	int ret;

	ret = q && sc && z && gidx ? qf_job_ensure(fs, b, gi) : -ENOMEM;
	if (!ret)
		ret = qf_flight_unpack(fs, b->vid, b->v, gi, q, sc, z, gidx);
	if (!ret)
		qf_variant_emit(var->v, gi, q, sc, z, gidx, out);
	if (!ret && g->norm)
		ret = qf_flight_get(fs, b->vid, &b->v->t[g->first + g->n - 1],
				    out[var->v->g[gi].n - 1]);
	free(q);
	free(sc);
	free(z);
	free(gidx);
	return ret;
}

/* flight: produce group gi (RTN, or a calibrated _fake from its base) */
static int produce(struct qf_fs *fs, void *arg, size_t gi)
{
	struct qf_var *var = arg;
	const struct qf_vgroup *g = &var->v->g[gi];
	struct qf_cache_item items[8];
	void *bufs[8] = { 0 };
	double t0 = qf_now();
	uint32_t k;
	int ret = 0;
	/* made while the source was hashed (stash.c): the same bytes */
	bool made = qf_stash_take(var->stash, var->v, (uint32_t)gi, bufs);

	QF_ASSERT(g->n <= 8);
	for (k = 0; k < g->n && !ret; k++) {
		const struct qf_vtensor *t = &var->v->t[g->first + k];

		items[k].name = t->name;
		items[k].len = qf_vtensor_bytes(t);
		if (!made)
			bufs[k] = malloc(items[k].len ? items[k].len : 1);
		items[k].data = bufs[k];
		if (!bufs[k])
			ret = -ENOMEM;
	}
	if (!ret && !made && var->base)
		ret = fake_from_base(fs, var, gi, bufs);
	else if (!ret && !made)
		ret = qf_variant_produce(var->v, gi, bufs, NULL);
	if (!ret)
		ret = qf_fs_cache_put(fs, var->vid, items, g->n);
	for (k = 0; k < g->n && !made; k++)
		free(bufs[k]);
	if (made)
		qf_stash_done(var->stash);
	/* (a full cache was logged with its free space) */
	if (ret < 0 && ret != -ENOSPC)
		qf_err("%s: cannot produce %s: %s", var->label, g->w->name,
		       qf_strerror(ret));
	if (ret < 0)
		return ret;
	qf_debug("%s: produced %s in %.3f s", var->label, g->w->name,
		 qf_now() - t0);
	pthread_mutex_lock(&var->lock);
	var->prod_s += qf_now() - t0;
	var->prod_src += g->src_bytes;
	pthread_mutex_unlock(&var->lock);
	return 0;
}

/* flight: a _fake group waits for its base's job without a slot */
static int prepare(struct qf_fs *fs, void *arg, size_t gi)
{
	struct qf_var *var = arg;

	return var->base ? qf_job_ensure(fs, var->base, (uint32_t)gi) : 0;
}

static void complete(struct qf_fs *fs, void *arg, double seconds)
{
	struct qf_var *var = arg;
	double secs;
	uint64_t bytes;

	(void)fs;
	(void)seconds;
	pthread_mutex_lock(&var->lock);
	secs = var->prod_s;
	bytes = var->prod_src;
	pthread_mutex_unlock(&var->lock);
	qf_info("%s: produced %.1f MB of source in %.2f s", var->label,
		bytes / 1e6, secs);
}

static const struct qf_flight_ops group_ops = {
	.cached = group_cached,
	.names = group_names,
	.prepare = prepare,
	.produce = produce,
	.record = var_record,
	.complete = complete,
};

/*
 * A calibrated group comes from the variant's layer job: wait for it,
 * then check it once (a damaged one makes the job compute its layer
 * again).  Every other group is a slot of the variant's flight.
 */
int qf_var_ensure(struct qf_fs *fs, struct qf_var *var, uint32_t gi)
{
	int tries, ret = 0;

	if (!var->job)
		return qf_flight_ensure(fs, &var->fl, gi);
	for (tries = 0; tries < 3; tries++) {
		ret = qf_job_ensure(fs, var, gi);
		if (ret < 0)
			return ret;
		ret = qf_flight_verify(fs, &var->fl, gi);
		if (ret != QF_ECORRUPT && ret != -ENOENT)
			return ret;
		qf_job_forget(var, gi);
	}
	return ret;
}

int qf_var_results(struct qf_fs *fs, struct qf_var *var)
{
	return qf_job_manifest(fs, var);
}
