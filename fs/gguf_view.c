/*
 * gguf_view.c - model.gguf files: MNT/<model>/original/model.gguf (the
 * source's weights in their own precision) and MNT/<model>/<variant>/
 * model.gguf for variants whose integer grid is a ggml block type exactly
 * (symmetric 4-bit groups of 32 = Q4_0, symmetric 8-bit groups of 32 =
 * Q8_0): the variant's own integers and scales, repacked without loss;
 * and the k-quant variants (kq4_k_m, kq6_k), which exist only as GGUF:
 * Q4_K / Q6_K encoded by quant/gguf.c with an importance matrix (mean x^2
 * per input channel of each linear) from the variant's calibration job.
 *
 * The file is planned by quant/gguf.c (exact size and header before
 * anything is produced); each tensor is produced the first time a read
 * touches it, once per machine (in-process single flight plus a lock file
 * slot per tensor, as for safetensors), stored in the cache under the
 * view's own id with a checksum, and served from there.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_i.h"
#include "gguf.h"

struct qf_gv {
	struct qf_mdl *mdl;
	struct qf_var *var;		/* repacked variant; NULL: original */
	struct qf_gguf_plan plan;
	uint8_t vid[QF_CACHE_VID];
	int bits;			/* 4 or 8 (var), 0 (original) */
	bool kq;			/* k-quant: imatrix from the job */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint8_t *state;			/* per tensor: QF_GROUP_*; checked
					   once per process before DONE */
	bool recorded;
	int lockfd;
	size_t ndone;
	double t0;
};

/* Which variants have an exact GGUF block type, and which. */
static enum qf_ggml_type exact_type(const struct qf_var *var)
{
	const struct qf_spec *s = &var->v->spec;

	if ((s->method != QF_METHOD_RTN && s->method != QF_METHOD_GPTQ) ||
	    s->group != 32 || !(s->flags & QF_SPEC_SYM) ||
	    (s->flags & (QF_SPEC_ACT | QF_SPEC_FAKE)) || var->v->nskipped)
		return QF_GGML_F32;	/* none */
	return s->bits == 4 ? QF_GGML_Q4_0 : s->bits == 8 ? QF_GGML_Q8_0 :
	       QF_GGML_F32;
}

static enum qf_ggml_type source_type(const struct qf_model *m)
{
	return m->dtype == QF_DT_BF16 ? QF_GGML_BF16 :
	       m->dtype == QF_DT_F16 ? QF_GGML_F16 : QF_GGML_F32;
}

int qf_gv_new(struct qf_fs *fs, struct qf_mdl *mdl, struct qf_var *var,
	      struct qf_gv **out)
{
	struct qf_gguf_types ty;
	enum qf_ggml_type q = var ? exact_type(var) : QF_GGML_F32;
	char vh[2 * QF_CACHE_VID + 1] = "";
	const char *parts[4], *why = NULL;
	struct qf_gv *gv;
	int ret, r;

	if (var && var->v->spec.method == QF_METHOD_KQUANT)
		q = var->v->spec.bits == 6 ? QF_GGML_Q6_K : QF_GGML_Q4_K;
	if (!mdl->m || (var && q == QF_GGML_F32))
		return QF_EUNSUPPORTED;
	gv = calloc(1, sizeof(*gv));
	if (!gv)
		return -ENOMEM;
	gv->mdl = mdl;
	gv->var = var;
	gv->lockfd = -1;
	gv->bits = q == QF_GGML_Q4_0 ? 4 : q == QF_GGML_Q8_0 ? 8 : 0;
	pthread_mutex_init(&gv->lock, NULL);
	pthread_cond_init(&gv->cond, NULL);
	gv->kq = var && var->v->spec.method == QF_METHOD_KQUANT;
	qf_gguf_types_uniform(&ty, gv->kq ? q : source_type(mdl->m));
	if (var && !gv->kq)
		for (r = QF_GGUF_ROLE_ATTN_Q; r <= QF_GGUF_ROLE_FFN_DOWN; r++)
			ty.w[r] = q;
	ty.q4_k_m = gv->kq && q == QF_GGML_Q4_K;
	ret = qf_gguf_plan_init(mdl->m, &ty, &gv->plan, &why);
	if (ret < 0) {
		qf_info("%s: no model.gguf%s%s: %s", mdl->name,
			var ? " for " : "", var ? var->v->name : "",
			why ? why : qf_strerror(ret));
		qf_gv_free(gv);
		return ret;
	}
	if (var)
		qf_hex(var->vid, QF_CACHE_VID, vh);
	parts[0] = "quantfs-gguf-v1";
	parts[1] = mdl->m->fp_hex;
	parts[2] = var ? var->v->name : "original";
	parts[3] = vh;			/* the variant's bytes it repacks */
	qf_cache_vid(parts, 4, gv->vid);
	gv->state = calloc(gv->plan.nt ? gv->plan.nt : 1, 1);
	if (!gv->state) {
		qf_gv_free(gv);
		return -ENOMEM;
	}
	(void)fs;
	*out = gv;
	return 0;
}

void qf_gv_free(struct qf_gv *gv)
{
	if (!gv)
		return;
	qf_gguf_plan_free(&gv->plan);
	free(gv->state);
	if (gv->lockfd >= 0)
		close(gv->lockfd);
	pthread_mutex_destroy(&gv->lock);
	pthread_cond_destroy(&gv->cond);
	free(gv);
}

uint64_t qf_gv_size(const struct qf_gv *gv)
{
	return gv->plan.size;
}

bool qf_gv_cached(struct qf_fs *fs, struct qf_gv *gv)
{
	struct qf_cache_txn *txn;
	bool all = true;
	size_t i;

	if (qf_cache_read_begin(fs->cache, &txn) < 0)
		return false;
	for (i = 0; i < gv->plan.nt && all; i++) {
		const void *p;
		size_t len;

		all = qf_cache_get(txn, gv->vid, gv->plan.t[i].name, &p,
				   &len) == 0 && len == gv->plan.t[i].nbytes;
	}
	qf_cache_read_end(txn);
	return all;
}

const uint8_t *qf_gv_vid(const struct qf_gv *gv)
{
	return gv->vid;
}

const struct qf_buf *qf_gv_header(const struct qf_gv *gv)
{
	return &gv->plan.header;
}

/* The variant group whose source linear is t's source, or -1. */
static int group_of(const struct qf_gv *gv, const struct qf_gguf_tensor *t)
{
	size_t g;

	if (!gv->var || !t->src)
		return -1;
	for (g = 0; g < gv->var->v->ng; g++)
		if (gv->var->v->g[g].w == t->src)
			return (int)g;
	return -1;
}

/* llama's rope row order: new row (h, i, j) is old row h*hd + j*hd/2 + i. */
static int64_t old_row(int64_t r, int64_t rows, int heads)
{
	int64_t hd = rows / heads, h = r / hd, k = r % hd;

	return h * hd + (k % 2) * (hd / 2) + k / 2;
}

/* A quantized linear: the variant's integers, repacked. */
static int repack(struct qf_fs *fs, struct qf_gv *gv, int gi,
		  const struct qf_gguf_tensor *t, uint8_t *dst)
{
	const struct qf_vgroup *g = &gv->var->v->g[gi];
	int64_t out = g->w->t->shape[0], in = g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, g->qp.group), r, k;
	uint64_t rb = qf_ggml_row_bytes(t->type, in);
	int32_t zero = 1 << (gv->bits - 1);
	uint8_t *q = malloc((size_t)(out * in));
	uint16_t *sc = malloc((size_t)(out * ng) * sizeof(*sc));
	int32_t *z = malloc((size_t)(out * ng) * sizeof(*z));
	int32_t *gidx = malloc((size_t)in * sizeof(*gidx));
	int ret;

	ret = q && sc && z && gidx ? qf_var_ensure(fs, gv->var, (uint32_t)gi) :
	      -ENOMEM;
	if (!ret)
		ret = qf_var_unpack(fs, gv->var, (uint32_t)gi, q, sc, z, gidx);
	if (!ret && (ng * 32 != in || t->ne[0] != in || t->ne[1] != out))
		ret = QF_ECORRUPT;
	for (k = 0; k < out * ng && !ret; k++)
		if (z[k] != zero)
			ret = QF_ECORRUPT;	/* not the symmetric grid */
	for (r = 0; r < out && !ret; r++) {
		int64_t o = t->permute_heads ?
			    old_row(r, out, t->permute_heads) : r;

		ret = gv->bits == 4 ?
		      qf_gguf_q4_0_from_int(q + o * in, sc + o * ng, in,
					    dst + r * rb) :
		      qf_gguf_q8_0_from_int(q + o * in, sc + o * ng, in,
					    dst + r * rb);
	}
	free(q);
	free(sc);
	free(z);
	free(gidx);
	return ret;
}

static int record(struct qf_fs *fs, struct qf_gv *gv)
{
	char name[160];

	snprintf(name, sizeof(name), "%s/model.gguf",
		 gv->var ? gv->var->v->name : "original");
	return qf_fs_record(fs, gv->vid, gv->mdl, name, "");
}

static int lock_slot(struct qf_fs *fs, struct qf_gv *gv, size_t i, bool on)
{
	struct flock fl = { .l_type = F_UNLCK,
			    .l_whence = SEEK_SET, .l_start = (off_t)i,
			    .l_len = 1 };

	pthread_mutex_lock(&gv->lock);
	if (gv->lockfd < 0) {
		int fd = qf_cache_lock_open(fs->cache, gv->vid);

		if (fd >= 0)
			gv->lockfd = fd;
	}
	pthread_mutex_unlock(&gv->lock);
	if (gv->lockfd < 0)
		return -EIO;
	if (on)
		return qf_fs_lock_wait(fs, gv->lockfd, (int64_t)i);
	return fcntl(gv->lockfd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 0: the tensor is in the cache with a good checksum; -ENOENT: absent;
 * QF_ECORRUPT: it was damaged and is deleted now. */
static int check(struct qf_fs *fs, struct qf_gv *gv, size_t i)
{
	const struct qf_gguf_tensor *t = &gv->plan.t[i];
	struct qf_cache_txn *txn;
	int ret;

	ret = qf_cache_read_begin(fs->cache, &txn);
	if (!ret)
		ret = qf_cache_check(txn, gv->vid, t->name);
	qf_cache_read_end(txn);
	if (ret == QF_ECORRUPT) {
		const char *n = t->name;

		qf_err("%s: cache value %s of model.gguf is damaged "
		       "(checksum): discarded, producing it again",
		       gv->mdl->name, n);
		qf_cache_del(fs->cache, gv->vid, &n, 1);
	}
	return ret;
}

/*
 * kq: the importance of t's input channels (NULL for tensors outside the
 * decoder layers), from the calibration job, which runs first if needed.
 */
static int imatrix(struct qf_fs *fs, struct qf_gv *gv,
		   const struct qf_gguf_tensor *t, float **out)
{
	const struct qf_tf_config *c = &gv->plan.cfg;
	struct qf_cache_txn *txn;
	const void *p;
	char name[32];
	size_t len, off;
	int l, k, ret;

	*out = NULL;
	if (!t->src || sscanf(t->src->name, "model.layers.%d.", &l) != 1)
		return 0;
	for (k = 0; k < QF_TF_NLINEAR; k++) {
		char want[160];

		snprintf(want, sizeof(want), "model.layers.%d.%s.weight", l,
			 qf_tf_linear_name(k));
		if (!strcmp(want, t->src->name))
			break;
	}
	if (k == QF_TF_NLINEAR)
		return 0;
	ret = qf_job_manifest(fs, gv->var);	/* the job is done */
	if (ret < 0)
		return ret;
	snprintf(name, sizeof(name), "__imatrix__.%d", l);
	off = qf_kq_imatrix_off(c, k);
	if (!(*out = malloc((size_t)t->ne[0] * sizeof(float))))
		return -ENOMEM;
	ret = qf_cache_read_begin(fs->cache, &txn);
	if (!ret)
		ret = qf_cache_get(txn, gv->var->vid, name, &p, &len);
	if (!ret && len != qf_kq_imatrix_len(c) * sizeof(float))
		ret = QF_ECORRUPT;
	if (!ret)
		memcpy(*out, (const uint8_t *)p + off * sizeof(float),
		       (size_t)t->ne[0] * sizeof(float));
	qf_cache_read_end(txn);
	if (ret < 0) {
		free(*out);
		*out = NULL;
	}
	return ret;
}

static int produce(struct qf_fs *fs, struct qf_gv *gv, size_t i)
{
	const struct qf_gguf_tensor *t = &gv->plan.t[i];
	struct qf_cache_item it = { t->name, NULL, t->nbytes };
	uint8_t *buf = malloc(t->nbytes ? t->nbytes : 1);
	int gi = group_of(gv, t);
	float *imp = NULL;
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	if (gv->kq)
		ret = imatrix(fs, gv, t, &imp);
	if (!ret && gi >= 0)
		ret = repack(fs, gv, gi, t, buf);
	else if (!ret)
		ret = qf_gguf_produce(gv->mdl->m, &gv->plan, i, imp, buf);
	free(imp);
	it.data = buf;
	if (!ret)
		ret = qf_fs_cache_put(fs, gv->vid, &it, 1);
	free(buf);
	return ret;
}

/* Single flight of tensor i, as var.c's groups (and their slots). */
static int ensure(struct qf_fs *fs, struct qf_gv *gv, size_t i)
{
	bool complete = false, first = false, slot = false;
	int gi, ret = 0;

	pthread_mutex_lock(&gv->lock);
	while (gv->state[i] == QF_GROUP_BUSY)
		pthread_cond_wait(&gv->cond, &gv->lock);
	ret = gv->state[i] == QF_GROUP_DONE;
	pthread_mutex_unlock(&gv->lock);
	if (ret)
		return 0;
	/* the variant's group a repacked tensor needs, before a slot */
	gi = gv->var ? group_of(gv, &gv->plan.t[i]) : -1;
	if (gi >= 0)
		ret = qf_var_ensure(fs, gv->var, (uint32_t)gi);
	if (!ret && !qf_cache_has(fs->cache, gv->vid, gv->plan.t[i].name,
				  gv->plan.t[i].nbytes)) {
		ret = qf_fs_prod_begin(fs);
		slot = !ret;
	}
	if (ret < 0)
		return ret;

	pthread_mutex_lock(&gv->lock);
	while (gv->state[i] == QF_GROUP_BUSY)
		pthread_cond_wait(&gv->cond, &gv->lock);
	if (gv->state[i] == QF_GROUP_DONE) {
		pthread_mutex_unlock(&gv->lock);
		if (slot)
			qf_fs_prod_end(fs);
		return 0;
	}
	gv->state[i] = QF_GROUP_BUSY;
	if (!gv->t0)
		gv->t0 = qf_now();
	pthread_mutex_unlock(&gv->lock);

	ret = check(fs, gv, i);
	if (ret == -ENOENT || ret == QF_ECORRUPT) {
		bool locked = lock_slot(fs, gv, i, true) == 0;

		ret = check(fs, gv, i);
		if (ret == -ENOENT || ret == QF_ECORRUPT) {
			ret = produce(fs, gv, i);
			first = !ret;
			if (ret < 0 && ret != -ENOSPC)	/* (logged) */
				qf_err("%s: model.gguf of %s: cannot produce %s: "
				       "%s", gv->mdl->name, gv->var ?
				       gv->var->v->name : "original",
				       gv->plan.t[i].name, qf_strerror(ret));
		}
		if (locked)
			lock_slot(fs, gv, i, false);
	}
	if (slot)
		qf_fs_prod_end(fs);
	pthread_mutex_lock(&gv->lock);
	gv->state[i] = ret < 0 ? QF_GROUP_NONE : QF_GROUP_DONE;
	if (!ret && ++gv->ndone == gv->plan.nt)
		complete = true;
	if (first && !gv->recorded)
		gv->recorded = true;
	else
		first = false;
	pthread_cond_broadcast(&gv->cond);
	pthread_mutex_unlock(&gv->lock);
	if (first && record(fs, gv) < 0) {
		pthread_mutex_lock(&gv->lock);
		gv->recorded = false;	/* the next tensor tries again */
		pthread_mutex_unlock(&gv->lock);
	}
	if (complete) {
		qf_cache_sync(fs->cache);
		qf_fs_trim_cache(fs);
		qf_info("%s: %s/model.gguf ready (%zu tensors, %.1f MB) in "
			"%.2f s", gv->mdl->name, gv->var ? gv->var->v->name :
			"original", gv->plan.nt, gv->plan.size / 1e6,
			qf_now() - gv->t0);
	}
	return ret;
}

int qf_gv_read(struct qf_fs *fs, struct qf_gv *gv, uint64_t off,
	       uint64_t end, struct qf_buf *out)
{
	const struct qf_gguf_plan *p = &gv->plan;
	struct qf_cache_txn *txn = NULL;
	int ret = 0, attempt;
	size_t i;

	if (end > p->size)
		end = p->size;
	if (off >= end)
		return 0;
	qf_buf_reset(out);
	ret = qf_buf_grow(out, end - off);
	if (ret < 0)
		return ret;
	memset(out->data, 0, end - off);	/* padding is zeros */
	out->len = end - off;
	if (off < p->data_off)
		memcpy(out->data, p->header.data + off,
		       (end < p->data_off ? end : p->data_off) - off);
	/* twice at most: a tensor evicted (cache gc, cache_max) after this
	 * process produced or checked it is produced again */
	for (attempt = 0; attempt < 2; attempt++) {
		bool gone = false;

		for (i = 0; i < p->nt && !ret; i++) {
			const struct qf_gguf_tensor *t = &p->t[i];

			if (t->offset >= end || t->offset + t->nbytes <= off)
				continue;
			ret = ensure(fs, gv, i);
		}
		if (!ret)
			ret = qf_cache_read_begin(fs->cache, &txn);
		for (i = 0; i < p->nt && !ret; i++) {
			const struct qf_gguf_tensor *t = &p->t[i];
			uint64_t lo, hi;
			const void *v;
			size_t len;

			if (t->offset >= end || t->offset + t->nbytes <= off)
				continue;
			ret = qf_cache_get(txn, gv->vid, t->name, &v, &len);
			if (ret == -ENOENT) {
				gone = true;
				ret = 0;
				continue;
			}
			if (!ret && len != t->nbytes)
				ret = QF_ECORRUPT;
			if (ret)
				break;
			lo = t->offset > off ? t->offset : off;
			hi = t->offset + t->nbytes < end ? t->offset + t->nbytes :
			     end;
			memcpy(out->data + (lo - off), (const uint8_t *)v +
			       (lo - t->offset), hi - lo);
		}
		qf_cache_read_end(txn);
		txn = NULL;
		if (ret || !gone)
			return ret;
		/* eviction takes whole views: look at every tensor again */
		pthread_mutex_lock(&gv->lock);
		for (i = 0; i < p->nt; i++)
			if (gv->state[i] == QF_GROUP_DONE)
				gv->state[i] = QF_GROUP_NONE;
		gv->ndone = 0;
		gv->t0 = 0;
		gv->recorded = false;	/* the record went with it */
		pthread_mutex_unlock(&gv->lock);
	}
	return QF_ECORRUPT;
}
