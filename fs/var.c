/*
 * var.c - variant objects: the assembled file plan of model.safetensors
 * and single-flight production of its tensor groups into the cache.
 *
 * A group is produced at most once per process at a time: the first
 * reader marks it BUSY and produces it, later readers wait on var->cond.
 * Before producing, the cache is consulted, so a second mount (or another
 * process) serves what the first one stored.  All tensors of a group are
 * committed in one LMDB transaction, so finding one means all are there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

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

/* mixed_static: the role table of -o mixed_table / mixed_roles */
static int static_bits(void *arg, const char *name)
{
	struct qf_fs *fs = arg;
	enum qf_role r;
	int bits = qf_mixed_static_bits(&fs->mtable,
					(const char *const *)fs->mroles, name,
					&r);

	if (r == QF_ROLE_OTHER)
		qf_info("%s: no role known, 'other' (%d bits)", name, bits);
	return bits;
}

int qf_var_new(struct qf_fs *fs, struct qf_mdl *mdl, const char *name,
	       struct qf_var **out)
{
	const char *parts[6];
	char extra[256];
	int nparts = 5;
	struct qf_spec spec;
	struct qf_var *var;
	struct qf_mixed_alloc *alloc = NULL;
	char calib_hex[33];
	bool mixed;
	int ret;

	ret = qf_spec_parse(name, &spec, NULL);
	if (ret < 0)
		return ret;
	var = calloc(1, sizeof(*var));
	if (!var)
		return -ENOMEM;
	pthread_mutex_init(&var->lock, NULL);
	pthread_cond_init(&var->cond, NULL);
	var->mdl = mdl;
	var->lockfd = -1;
	mixed = spec.method == QF_METHOD_MIXED_DYN ||
		spec.method == QF_METHOD_MIXED_BUDGET;
	if (mixed) {
		/* measured precisions (cached), then plain RTN at them */
		struct qf_spec b = spec;
		char bname[128];

		b.flags &= ~QF_SPEC_FAKE;
		if (spec.flags & QF_SPEC_FAKE) {
			/* the packed variant's allocation; this one is RTN
			 * dequantized, like any uncalibrated _fake */
			struct qf_var *base = NULL;

			ret = qf_spec_print(&b, bname, sizeof(bname));
			if (ret >= 0)
				base = qf_ns_var(fs, mdl, bname, &ret);
			if (!base)
				goto out_free;
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
	} else {
		ret = qf_variant_init(mdl->m, &spec, &var->v);
	}
	if (ret < 0)
		goto out_free;
	var->calibrated = qf_spec_is_calibrated(&spec) && !mixed;
	calib_hex[0] = 0;
	if (mixed)	/* the set the precisions were measured on */
		qf_hex(alloc->calib_vid, QF_CACHE_VID, calib_hex);
	if (var->calibrated && (spec.flags & QF_SPEC_FAKE)) {
		/* _fake dequantizes the packed variant's tensors */
		struct qf_spec b = spec;
		char bname[128];

		b.flags &= ~QF_SPEC_FAKE;
		ret = qf_spec_print(&b, bname, sizeof(bname));
		if (ret >= 0)
			var->base = qf_ns_var(fs, mdl, bname, &ret);
		if (!var->base)
			goto out_free;
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
	/*
	 * What else changes the bytes: the backend (sums in another order)
	 * and BRECQ's optimizer settings.  Keys without them are those of
	 * before.
	 */
	extra[0] = 0;
	if (var->calibrated && fs->backend == QF_BACKEND_CUDA)
		snprintf(extra, sizeof(extra), "backend=cuda;");
	if (spec.method == QF_METHOD_BRECQ)
		snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra),
			 "brecq=%d/%d;",
			 (var->base ? var->base : var)->ci.brecq_iters,
			 (var->base ? var->base : var)->ci.brecq_batch);
	if (spec.method == QF_METHOD_MIXED_STATIC &&
	    (fs->o.mixed_table || fs->o.mixed_roles)) {
		const int *t = fs->mtable.bits;

		snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra),
			 "table=%d/%d/%d/%d/%d;", t[QF_ROLE_ATTN],
			 t[QF_ROLE_MLP], t[QF_ROLE_EMBED], t[QF_ROLE_HEAD],
			 t[QF_ROLE_OTHER]);
		/* the override list, whole, as a part of its own */
		parts[nparts++] = fs->o.mixed_roles ? fs->o.mixed_roles : "";
	}
	if (spec.method == QF_METHOD_MIXED_DYN && fs->o.mixed_ratio)
		snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra),
			 "ratio=%.17g/%.17g/%d/%d/%d;", fs->mratio.high,
			 fs->mratio.low, fs->mratio.bits_high,
			 fs->mratio.bits_mid, fs->mratio.bits_low);
	parts[4] = extra;
	qf_cache_vid(parts, extra[0] ? nparts : 4, var->vid);
	var->state = calloc(var->v->ng ? var->v->ng : 1, 1);
	var->verified = calloc(var->v->ng ? var->v->ng : 1, 1);
	ret = var->state && var->verified ? 0 : -ENOMEM;
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
	qf_job_free(var);
	qf_mixed_alloc_free(var->alloc);
	qf_gv_free(var->gv);
	if (var->lockfd >= 0)
		close(var->lockfd);
	qf_variant_free(var->v);
	qf_buf_release(&var->config);
	qf_buf_release(&var->manifest);
	qf_buf_release(&var->header);
	free(var->seg);
	free(var->state);
	free(var->verified);
	pthread_mutex_destroy(&var->lock);
	pthread_cond_destroy(&var->cond);
	free(var);
}

static int lock_fd(struct qf_fs *fs, struct qf_var *var)
{
	int fd;

	pthread_mutex_lock(&var->lock);
	if (var->lockfd < 0) {
		fd = qf_cache_lock_open(fs->cache, var->vid);
		if (fd >= 0)
			var->lockfd = fd;
	} else {
		fd = var->lockfd;
	}
	pthread_mutex_unlock(&var->lock);
	return fd;
}

int qf_fs_lock_wait(struct qf_fs *fs, int fd, int64_t slot)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
			    .l_start = slot, .l_len = 1 };

	/* poll, so an unmount does not wait for another process's job */
	while (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
		struct timespec ts = { 0, 100 * 1000 * 1000 };
		bool stop;

		if (errno != EAGAIN && errno != EACCES)
			return -errno;
		pthread_mutex_lock(&fs->job_lock);
		stop = fs->stopping;
		pthread_mutex_unlock(&fs->job_lock);
		if (stop)
			return -EINTR;
		nanosleep(&ts, NULL);
	}
	return 0;
}

int qf_var_lock(struct qf_fs *fs, struct qf_var *var, int64_t slot)
{
	int fd = lock_fd(fs, var);

	return fd < 0 ? fd : qf_fs_lock_wait(fs, fd, slot);
}

void qf_var_unlock(struct qf_var *var, int64_t slot)
{
	struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET,
			    .l_start = slot, .l_len = 1 };

	if (var->lockfd >= 0)
		fcntl(var->lockfd, F_OFD_SETLK, &fl);
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

bool qf_var_in_cache(struct qf_fs *fs, struct qf_var *var, uint32_t gi)
{
	const struct qf_vtensor *t = &var->v->t[var->v->g[gi].first];

	return qf_cache_has(fs->cache, var->vid, t->name, qf_vtensor_bytes(t));
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
		if (!qf_var_in_cache(fs, var, (uint32_t)gi))
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

int qf_var_record(struct qf_fs *fs, struct qf_var *var)
{
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
	pthread_mutex_lock(&var->lock);
	for (gi = 0; gi < var->v->ng; gi++) {
		const struct qf_vtensor *t = &var->v->t[var->v->g[gi].first];
		bool job = var->calibrated && !var->base;
		const void *p;
		size_t len;

		if (var->state[gi] != QF_GROUP_DONE &&
		    !(job && var->group_layer[gi] < var->layers_done))
			continue;
		if (qf_cache_get(txn, var->vid, t->name, &p, &len) == 0)
			continue;
		if (var->state[gi] == QF_GROUP_DONE) {
			var->state[gi] = QF_GROUP_NONE;
			var->ndone--;
		}
		var->verified[gi] = 0;
		var->recorded = false;	/* evicted: the record went too */
		if (job && var->layers_done > var->group_layer[gi])
			var->layers_done = var->group_layer[gi];
	}
	pthread_mutex_unlock(&var->lock);
	qf_cache_read_end(txn);
}

void qf_var_opened(struct qf_fs *fs, struct qf_var *var)
{
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
			    .l_start = QF_LOCK_USE, .l_len = 1 };
	bool first, touch;
	double now = qf_now();
	int fd = lock_fd(fs, var);

	pthread_mutex_lock(&var->lock);
	first = var->nopen++ == 0;
	touch = var->recorded && now - var->touched > 60;
	if (touch)
		var->touched = now;
	pthread_mutex_unlock(&var->lock);
	/* waits only while `cache gc` deletes this variant */
	if (first && fd >= 0 && fcntl(fd, F_OFD_SETLKW, &fl) < 0)
		qf_warn("%s/%s: cannot mark the variant in use: %s",
			var->mdl->name, var->v->name, strerror(errno));
	if (first)
		qf_var_revalidate(fs, var);
	if (touch)
		qf_var_record(fs, var);
}

void qf_var_released(struct qf_fs *fs, struct qf_var *var)
{
	(void)fs;
	pthread_mutex_lock(&var->lock);
	if (--var->nopen == 0)
		qf_var_unlock(var, QF_LOCK_USE);
	pthread_mutex_unlock(&var->lock);
}

int qf_var_unpack(struct qf_fs *fs, struct qf_var *var, uint32_t gi,
		  uint8_t *q, uint16_t *sc, int32_t *z, int32_t *g_idx)
{
	const struct qf_vgroup *g = &var->v->g[gi];
	int64_t rows = g->w->t->shape[0], in = g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, g->qp.group);
	int64_t cols = rows * g->pack_bits / 32, r, j;
	bool awq = var->v->spec.method == QF_METHOD_AWQ;
	uint32_t k, nt = awq ? 3 : 4;	/* the packed tensors */
	uint8_t *zq = malloc((size_t)(rows * ng));
	struct qf_cache_txn *txn = NULL;
	void *p[4] = { NULL };
	const void *v;
	size_t len;
	int ret;

	ret = zq ? qf_cache_read_begin(fs->cache, &txn) : -ENOMEM;
	for (k = 0; k < nt && !ret; k++) {
		const struct qf_vtensor *t = &var->v->t[g->first + k];

		ret = qf_cache_check(txn, var->vid, t->name);
		if (!ret)
			ret = qf_cache_get(txn, var->vid, t->name, &v, &len);
		if (!ret && len != qf_vtensor_bytes(t))
			ret = QF_ECORRUPT;
		/* LMDB values are not aligned: copy before typed reads */
		if (!ret && !(p[k] = malloc(len ? len : 1)))
			ret = -ENOMEM;
		if (!ret)
			memcpy(p[k], v, len);
	}
	qf_cache_read_end(txn);
	if (!ret && awq) {
		int64_t gs = ng == 1 ? in : g->qp.group;

		qf_awq_unpack(p[0], p[1], p[2], rows, in, ng, q, sc, z);
		for (j = 0; j < in; j++)
			g_idx[j] = (int32_t)(j / gs);
	} else if (!ret) {
		qf_gptq_unpack_qweight(p[0], rows, in, g->pack_bits, q);
		for (j = 0; j < ng; j++)
			qf_gptq_unpack_qweight((const uint32_t *)p[1] + j * cols,
					       1, rows, g->pack_bits,
					       zq + j * rows);
		for (r = 0; r < rows; r++)
			for (j = 0; j < ng; j++) {
				sc[r * ng + j] = ((const uint16_t *)p[2])[
					j * rows + r];
				/* v1 checkpoints store zero - 1 */
				z[r * ng + j] = (zq[j * rows + r] + 1) &
						((1 << g->pack_bits) - 1);
			}
		memcpy(g_idx, p[3], (size_t)in * sizeof(*g_idx));
	}
	for (k = 0; k < 4; k++)
		free(p[k]);
	free(zq);
	return ret;
}

/* The bytes of a cached tensor of var (checksum verified) into dst. */
static int copy_cached(struct qf_fs *fs, struct qf_var *var,
		       const struct qf_vtensor *t, void *dst)
{
	struct qf_cache_txn *txn;
	const void *p;
	size_t len;
	int ret;

	ret = qf_cache_read_begin(fs->cache, &txn);
	if (!ret)
		ret = qf_cache_check(txn, var->vid, t->name);
	if (!ret)
		ret = qf_cache_get(txn, var->vid, t->name, &p, &len);
	if (!ret && len != qf_vtensor_bytes(t))
		ret = QF_ECORRUPT;
	if (!ret)
		memcpy(dst, p, len);	/* not aligned in the map */
	qf_cache_read_end(txn);
	return ret;
}

int qf_var_read_f32(struct qf_fs *fs, struct qf_var *var,
		    const struct qf_vtensor *t, float *dst)
{
	uint64_t len = qf_vtensor_bytes(t);
	void *copy = malloc(len ? len : 1);
	int ret;

	ret = copy ? copy_cached(fs, var, t, copy) : -ENOMEM;
	if (!ret)
		ret = qf_to_f32(t->dtype, copy,
				(size_t)(len / qf_dtype_size(t->dtype)), dst);
	free(copy);
	return ret;
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
		ret = qf_var_unpack(fs, b, gi, q, sc, z, gidx);
	if (!ret)
		qf_variant_emit(var->v, gi, q, sc, z, gidx, out);
	if (!ret && g->norm)
		ret = copy_cached(fs, b, &b->v->t[g->first + g->n - 1],
				  out[var->v->g[gi].n - 1]);
	free(q);
	free(sc);
	free(z);
	free(gidx);
	return ret;
}

static int produce(struct qf_fs *fs, struct qf_var *var, uint32_t gi)
{
	const struct qf_vgroup *g = &var->v->g[gi];
	struct qf_cache_item items[8];
	void *bufs[8] = { 0 };
	uint32_t k;
	int ret = 0;

	QF_ASSERT(g->n <= 8);
	for (k = 0; k < g->n && !ret; k++) {
		const struct qf_vtensor *t = &var->v->t[g->first + k];

		items[k].name = t->name;
		items[k].len = qf_vtensor_bytes(t);
		bufs[k] = malloc(items[k].len ? items[k].len : 1);
		items[k].data = bufs[k];
		if (!bufs[k])
			ret = -ENOMEM;
	}
	if (!ret && var->base)
		ret = fake_from_base(fs, var, gi, bufs);
	else if (!ret)
		ret = qf_variant_produce(var->v, gi, bufs, NULL);
	if (!ret)
		ret = qf_fs_cache_put(fs, var->vid, items, g->n);
	for (k = 0; k < g->n; k++)
		free(bufs[k]);
	return ret;
}

static int ensure_group(struct qf_fs *fs, struct qf_var *var, uint32_t gi);

/*
 * Check the checksums of group gi's values; a damaged one is logged and
 * the group deleted, so it is produced again.  Returns 0, -ENOENT,
 * QF_ECORRUPT (deleted), QF_ECACHE.
 */
static int verify_group(struct qf_fs *fs, struct qf_var *var, uint32_t gi)
{
	const struct qf_vgroup *g = &var->v->g[gi];
	const char *names[8];
	struct qf_cache_txn *txn;
	uint32_t k;
	int ret;

	QF_ASSERT(g->n <= 8);
	ret = qf_cache_read_begin(fs->cache, &txn);
	for (k = 0; k < g->n && !ret; k++) {
		names[k] = var->v->t[g->first + k].name;
		ret = qf_cache_check(txn, var->vid, names[k]);
	}
	qf_cache_read_end(txn);
	if (ret != QF_ECORRUPT)
		return ret;
	qf_err("%s/%s: cache value %s is damaged (checksum): discarded, "
	       "producing it again", var->mdl->name, var->v->name,
	       names[k - 1]);
	for (k = 0; k < g->n; k++)
		names[k] = var->v->t[g->first + k].name;
	qf_cache_del(fs->cache, var->vid, names, g->n);
	return QF_ECORRUPT;
}

int qf_var_ensure(struct qf_fs *fs, struct qf_var *var, uint32_t gi)
{
	int tries, ret = 0;

	for (tries = 0; tries < 3; tries++) {
		bool verified;

		if (var->calibrated && !var->base)
			ret = qf_job_ensure(fs, var, gi);
		else
			ret = ensure_group(fs, var, gi);
		if (ret < 0)
			return ret;
		pthread_mutex_lock(&var->lock);
		verified = var->verified[gi];
		pthread_mutex_unlock(&var->lock);
		if (verified)
			return 0;
		/* once per process, before its bytes are first served */
		ret = verify_group(fs, var, gi);
		pthread_mutex_lock(&var->lock);
		if (!ret) {
			var->verified[gi] = 1;
		} else if (var->state[gi] == QF_GROUP_DONE) {
			var->state[gi] = QF_GROUP_NONE;
			var->ndone--;
		}
		/* a calibrated layer: the job computes it again */
		if (ret < 0 && var->calibrated && !var->base &&
		    var->layers_done > var->group_layer[gi])
			var->layers_done = var->group_layer[gi];
		pthread_mutex_unlock(&var->lock);
		if (ret != QF_ECORRUPT && ret != -ENOENT)
			return ret;
	}
	return ret;
}

/*
 * Per-group single flight: RTN, and calibrated _fake from its base.  A
 * production first waits for its slot (limits.c), before it marks the
 * group busy: a thread that waits for a busy group may hold a slot, so
 * the group's owner must not wait for one.
 */
static int ensure_group(struct qf_fs *fs, struct qf_var *var, uint32_t gi)
{
	bool record = false, complete, locked, slot = false;
	double t0, secs = 0;
	uint64_t bytes = 0;
	int ret = 0;

	pthread_mutex_lock(&var->lock);
	while (var->state[gi] == QF_GROUP_BUSY)
		pthread_cond_wait(&var->cond, &var->lock);
	ret = var->state[gi] == QF_GROUP_DONE;
	pthread_mutex_unlock(&var->lock);
	if (ret)
		return 0;
	/* a _fake group waits for its base's job without a slot */
	if (var->base)
		ret = qf_job_ensure(fs, var->base, gi);
	if (!ret && !qf_var_in_cache(fs, var, gi)) {
		ret = qf_fs_prod_begin(fs);
		slot = !ret;
	}
	if (ret < 0)
		return ret;

	pthread_mutex_lock(&var->lock);
	while (var->state[gi] == QF_GROUP_BUSY)
		pthread_cond_wait(&var->cond, &var->lock);
	if (var->state[gi] == QF_GROUP_DONE) {
		pthread_mutex_unlock(&var->lock);
		if (slot)
			qf_fs_prod_end(fs);
		return 0;
	}
	var->state[gi] = QF_GROUP_BUSY;
	pthread_mutex_unlock(&var->lock);

	t0 = qf_now();
	/* another process may be producing it: wait for its lock, then
	 * look in the cache again */
	locked = !qf_var_in_cache(fs, var, gi) &&
		 qf_var_lock(fs, var, gi) == 0;
	if (!qf_var_in_cache(fs, var, gi)) {
		ret = produce(fs, var, gi);
		/* (a full cache was logged with its free space) */
		if (ret < 0 && ret != -ENOSPC)
			qf_err("%s/%s: cannot produce %s: %s", var->mdl->name,
			       var->v->name, var->v->g[gi].w->name,
			       qf_strerror(ret));
		else if (!ret)
			record = true;
		if (!ret)
			qf_debug("%s/%s: produced %s in %.3f s",
				 var->mdl->name, var->v->name,
				 var->v->g[gi].w->name, qf_now() - t0);
	}

	if (locked)
		qf_var_unlock(var, gi);
	if (slot)
		qf_fs_prod_end(fs);
	pthread_mutex_lock(&var->lock);
	var->state[gi] = ret < 0 ? QF_GROUP_NONE : QF_GROUP_DONE;
	if (!ret) {
		var->ndone++;
		var->verified[gi] = record;	/* we wrote these bytes */
		if (record) {
			var->prod_s += qf_now() - t0;
			var->prod_src += var->v->g[gi].src_bytes;
		}
	}
	complete = var->ndone == var->v->ng && record;
	secs = var->prod_s;
	bytes = var->prod_src;
	if (record && !var->recorded)
		var->recorded = true;
	else
		record = false;
	pthread_cond_broadcast(&var->cond);
	pthread_mutex_unlock(&var->lock);

	/* no record (a full disk): the next group writes it, else gc
	 * would never see these values */
	if (record && qf_var_record(fs, var) < 0) {
		pthread_mutex_lock(&var->lock);
		var->recorded = false;
		pthread_mutex_unlock(&var->lock);
	}
	if (complete) {
		qf_cache_sync(fs->cache);
		qf_fs_trim_cache(fs);
		qf_info("%s/%s: produced %.1f MB of source in %.2f s",
			var->mdl->name, var->v->name, bytes / 1e6, secs);
	}
	return ret;
}
