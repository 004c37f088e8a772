/*
 * gguf_view.c - model.gguf files: MNT/<model>/original/model.gguf (the
 * source's weights in their own precision) and MNT/<model>/<variant>/
 * model.gguf for variants whose integer grid is a ggml block type exactly
 * (symmetric 4-bit groups of 32 = Q4_0, symmetric 8-bit groups of 32 =
 * Q8_0, asymmetric 4-bit groups of 32 = Q4_1): GPTQ's, the variant's own
 * integers and scales, repacked without loss (Q4_1: fp16 m cannot hold
 * -scale * zero exactly, each block's (d, m) is the fp16 pair nearest the
 * grid, qf_gguf_q4_1_from_int); RTN's, the source encoded on ggml's own
 * grid with fitted block scales (quant/gguf/ggml_fit.c: ggml's Q4_0 takes
 * a signed scale, so its step is absmax / 8 where the checkpoint grid's is
 * 2 x absmax / 15; the RTN view was coarser than llama.cpp's own Q4_0,
 * issue #24); and the k-quant variants (kq2_k .. kq6_k, kiq4_nl, kiq4_xs:
 * llama.cpp's mixes by quant/gguf/gguf_mix.c), which exist only as GGUF:
 * Q2_K .. Q6_K, IQ4_NL, IQ4_XS encoded by quant/gguf.c with an importance
 * matrix (mean x^2 per input channel of each linear) from the variant's
 * calibration job; the dense linears and output.weight by GPTQ on those
 * grids (it halved llama.cpp's Q4_K_M's KL divergence, issue #24), which
 * needs each one's Hessian: the job runs that sweep itself (gguf_kq.c,
 * with this view's plan) and stores the encoded bytes, which the view
 * copies; the factors (60 MB a layer at Qwen3-0.6B's shapes) are never
 * stored.
 *
 * The file is planned by quant/gguf.c (exact size and header before
 * anything is produced); each tensor is produced the first time a read
 * touches it, once per machine (a slot of the view's single flight,
 * flight.c, as a variant's groups are), stored in the cache under the
 * view's own id with a checksum, and served from there.
 */
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
	uint8_t vid[QF_CACHE_VID];	/* once vid_set */
	bool vid_set;			/* fs->lock: set at new for a
					 * variant's view, by qf_gv_ready()
					 * for original/'s (the fingerprint
					 * hashes the weights) */
	int bits;			/* 4 or 8 (var), 0 (original) */
	bool kq;			/* k-quant: imatrix from the job */
	bool fit;			/* RTN: encoded, not repacked */
	char *label;			/* "<model>/<variant>/model.gguf" */
	struct qf_flight fl;		/* its tensors: one slot each */
};

static const struct qf_flight_ops tensor_ops;

/* MoE routers: kept in the source dtype by every variant, F32 in GGUF. */
static size_t routers(const struct qf_model *m)
{
	size_t i, n = 0;

	for (i = 0; i < m->nt; i++)
		n += qf_moe_is_router(m, m->t[i].name);
	return n;
}

/* ggml's block type of a symmetric b-bit grid of group 32, F32: none. */
static enum qf_ggml_type bits_type(int b)
{
	return b == 4 ? QF_GGML_Q4_0 : b == 8 ? QF_GGML_Q8_0 : QF_GGML_F32;
}

/* The type of the variant's grid were it symmetric: Q4_0, Q8_0 or none. */
static enum qf_ggml_type grid_type(const struct qf_var *var)
{
	const struct qf_spec *s = &var->v->spec;
	int h = var->v->head;

	if ((s->method != QF_METHOD_RTN && s->method != QF_METHOD_GPTQ) ||
	    s->group != 32 ||
	    (qf_spec_act_order(s) && !qf_spec_static_groups(s)) ||
	    (s->flags & QF_SPEC_FAKE) ||
	    var->v->nskipped != routers(var->mdl->m) ||
	    (s->attn_bits && bits_type(s->attn_bits) == QF_GGML_F32) ||
	    (h >= 0 && (bits_type(s->head_bits) == QF_GGML_F32 ||
			strcmp(var->v->g[h].w->name, "lm_head.weight"))))
		return QF_GGML_F32;	/* none */
	return bits_type(s->bits);
}

/*
 * Which variants have an exact GGUF block type, and which (of the MLP;
 * _attn<a> and _head<h> need one too, the head its own lm_head.weight:
 * a tied source's quantized head has no GGUF view yet).  Asymmetric
 * 4-bit groups of 32 are Q4_1 (d * q + m; #24), with no other width in
 * them: ggml has no asymmetric 8-bit type that GGUF files hold.
 */
static enum qf_ggml_type exact_type(const struct qf_var *var)
{
	const struct qf_spec *s = &var->v->spec;
	enum qf_ggml_type q = grid_type(var);

	if (s->flags & QF_SPEC_SYM)
		return q;
	return q == QF_GGML_Q4_0 && !s->attn_bits &&
	       (var->v->head < 0 || s->head_bits == 4) ? QF_GGML_Q4_1 :
	       QF_GGML_F32;
}

static enum qf_ggml_type source_type(const struct qf_model *m)
{
	return m->dtype == QF_DT_BF16 ? QF_GGML_BF16 :
	       m->dtype == QF_DT_F16 ? QF_GGML_F16 : QF_GGML_F32;
}

/* The model the view's tensors come from: a _rot variant's is rotated. */
static struct qf_model *gv_src(const struct qf_gv *gv)
{
	return gv->var ? gv->var->v->m : gv->mdl->m;
}

/* The view's cache id, from its model's fingerprint (set by now). */
static void set_vid(struct qf_gv *gv)
{
	char vh[2 * QF_CACHE_VID + 1] = "";
	const char *parts[4];

	if (gv->var)
		qf_hex(gv->var->vid, QF_CACHE_VID, vh);
	parts[0] = gv->fit ? "quantfs-gguf-fit-v1" : "quantfs-gguf-v1";
	parts[1] = gv->mdl->m->fp_hex;
	parts[2] = gv->var ? gv->var->v->name : "original";
	parts[3] = vh;			/* the variant's bytes it repacks */
	qf_cache_vid(parts, 4, gv->vid);
	gv->vid_set = true;
}

int qf_gv_new(struct qf_fs *fs, struct qf_mdl *mdl, struct qf_var *var,
	      struct qf_gv **out)
{
	struct qf_gguf_types ty;
	enum qf_ggml_type q = var ? exact_type(var) : QF_GGML_F32;
	const char *vname, *why = NULL;
	struct qf_gv *gv;
	int ret, r;

	if (!mdl->m)		/* (weights it may not serve, or none) */
		return QF_EUNSUPPORTED;
	if (var && var->v->spec.method == QF_METHOD_KQUANT)
		q = qf_kq_types(&var->v->spec, &ty);
	else
		qf_gguf_types_uniform(&ty, source_type(var ? var->v->m :
								 mdl->m));
	if (var && q == QF_GGML_F32)
		return QF_EUNSUPPORTED;
	gv = calloc(1, sizeof(*gv));
	if (!gv)
		return -ENOMEM;
	gv->mdl = mdl;
	gv->var = var;
	gv->bits = q == QF_GGML_Q4_0 || q == QF_GGML_Q4_1 ? 4 :
		   q == QF_GGML_Q8_0 ? 8 : 0;
	gv->kq = var && var->v->spec.method == QF_METHOD_KQUANT;
	if (var && !gv->kq)
		for (r = QF_GGUF_ROLE_ATTN_Q; r <= QF_GGUF_ROLE_FFN_DOWN; r++)
			ty.w[r] = r <= QF_GGUF_ROLE_ATTN_OUT &&
				  var->v->spec.attn_bits ?
				  bits_type(var->v->spec.attn_bits) : q;
	if (var && !gv->kq && var->v->head >= 0)	/* _head<h> */
		ty.w[QF_GGUF_ROLE_OUTPUT] = q == QF_GGML_Q4_1 ? q :
			bits_type(var->v->spec.head_bits);
	gv->fit = ty.fit = var && var->v->spec.method == QF_METHOD_RTN;
	ret = qf_gguf_plan_init(gv_src(gv), &ty, &gv->plan, &why);
	if (ret < 0) {
		qf_info("%s: no model.gguf%s%s: %s", mdl->name,
			var ? " for " : "", var ? var->v->name : "",
			why ? why : qf_strerror(ret));
		qf_gv_free(gv);
		return ret;
	}
	if (var)
		set_vid(gv);		/* (var's fingerprint is known) */
	vname = var ? var->v->name : "original";
	gv->label = malloc(strlen(mdl->name) + strlen(vname) + 14);
	ret = gv->label ? 0 : -ENOMEM;
	if (!ret) {
		sprintf(gv->label, "%s/%s/model.gguf", mdl->name, vname);
		ret = qf_flight_init(&gv->fl, &tensor_ops, gv, gv->vid,
				     gv->label, gv->plan.nt);
	}
	if (ret < 0) {
		qf_gv_free(gv);
		return ret;
	}
	(void)fs;
	*out = gv;
	return 0;
}

int qf_gv_ready(struct qf_fs *fs, struct qf_gv *gv)
{
	int ret = qf_src_fp(fs, gv->mdl, true);

	if (ret < 0)
		return ret;
	pthread_mutex_lock(&fs->lock);
	if (!gv->vid_set)
		set_vid(gv);
	pthread_mutex_unlock(&fs->lock);
	return 0;
}

void qf_gv_free(struct qf_gv *gv)
{
	if (!gv)
		return;
	qf_gguf_plan_free(&gv->plan);
	qf_flight_free(&gv->fl);
	free(gv->label);
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

/* The variant group whose source linear is src, or -1. */
static int group_of_src(const struct qf_gv *gv,
			const struct qf_model_tensor *src)
{
	size_t g;

	if (!gv->var || !src)
		return -1;
	for (g = 0; g < gv->var->v->ng; g++)
		if (gv->var->v->g[g].w == src)
			return (int)g;
	return -1;
}

/* The variant group whose source linear is t's source, or -1. */
static int group_of(const struct qf_gv *gv, const struct qf_gguf_tensor *t)
{
	return group_of_src(gv, t->src);
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
	int32_t zero = 1 << (g->qp.bits - 1);	/* _attn, _head: their own */
	uint8_t *q = malloc((size_t)(out * in));
	uint16_t *sc = malloc((size_t)(out * ng) * sizeof(*sc));
	int32_t *z = malloc((size_t)(out * ng) * sizeof(*z));
	int32_t *gidx = malloc((size_t)in * sizeof(*gidx));
	int ret;

	ret = q && sc && z && gidx ? qf_var_ensure(fs, gv->var, (uint32_t)gi) :
	      -ENOMEM;
	if (!ret)
		ret = qf_flight_unpack(fs, gv->var->vid, gv->var->v, (size_t)gi,
				       q, sc, z, gidx);
	if (!ret && (ng * 32 != in || t->ne[0] != in || t->ne[1] != out))
		ret = QF_ECORRUPT;
	for (k = 0; k < out * ng && !ret && t->type != QF_GGML_Q4_1; k++)
		if (z[k] != zero)
			ret = QF_ECORRUPT;	/* not the symmetric grid */
	for (r = 0; r < out && !ret; r++) {
		int64_t o = t->permute_heads ?
			    old_row(r, out, t->permute_heads) : r;

		/* Q4_1: sc * (q - z) as fp16 d and m, the codes kept */
		ret = t->type == QF_GGML_Q4_1 ?
		      qf_gguf_q4_1_from_int(q + o * in, sc + o * ng, z + o * ng,
					    in, dst + r * rb) :
		      g->qp.bits == 4 ?
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

/* Experts stacked (3-D t): each expert's group repacked in turn. */
static int repack_experts(struct qf_fs *fs, struct qf_gv *gv,
			  const struct qf_gguf_tensor *t, uint8_t *dst)
{
	uint64_t mat = qf_ggml_row_bytes(t->type, t->ne[0]) *
		       (uint64_t)t->ne[1];
	int64_t e;
	int gi, ret = 0;

	for (e = 0; e < t->ne[2] && !ret; e++) {
		gi = group_of_src(gv, t->xsrc[e]);
		ret = gi < 0 ? QF_ECORRUPT :
		      repack(fs, gv, gi, t, dst + (uint64_t)e * mat);
	}
	return ret;
}

/* flight: the view's record */
static int record(struct qf_fs *fs, void *arg)
{
	struct qf_gv *gv = arg;
	char name[160];

	snprintf(name, sizeof(name), "%s/model.gguf",
		 gv->var ? gv->var->v->name : "original");
	return qf_fs_record(fs, gv->vid, gv->mdl, name, "");
}

/* flight: tensor i is there with its length */
static bool tensor_cached(struct qf_fs *fs, void *arg, size_t i)
{
	struct qf_gv *gv = arg;

	return qf_cache_has(fs->cache, gv->vid, gv->plan.t[i].name,
			    gv->plan.t[i].nbytes);
}

static size_t tensor_names(void *arg, size_t i, const char **names)
{
	struct qf_gv *gv = arg;

	names[0] = gv->plan.t[i].name;
	return 1;
}

/* kq: tensor t's bytes as the job encoded them (it runs first if needed). */
static int job_bytes(struct qf_fs *fs, struct qf_gv *gv,
		     const struct qf_gguf_tensor *t, uint8_t *dst)
{
	struct qf_cache_txn *txn;
	char name[QF_KQ_NAME];
	const void *p;
	size_t len;
	int ret = qf_var_results(fs, gv->var);

	qf_kq_item_name(t, name, sizeof(name));
	if (!ret)
		ret = qf_cache_read_begin(fs->cache, &txn);
	if (ret < 0)
		return ret;
	ret = qf_cache_get(txn, gv->var->vid, name, &p, &len);
	if (!ret && len != t->nbytes)
		ret = QF_ECORRUPT;
	if (!ret)
		memcpy(dst, p, len);
	qf_cache_read_end(txn);
	return ret;
}

/*
 * kq: the importance of t's input channels ([ne[2] * ne[0]] for 3-D
 * expert tensors; NULL for tensors outside the decoder layers' linears),
 * from the calibration job, which runs first if needed.
 */
static int imatrix(struct qf_fs *fs, struct qf_gv *gv,
		   const struct qf_gguf_tensor *t, float **out)
{
	const struct qf_tf_config *c = &gv->plan.cfg;
	int64_t ne = t->ndim < 3 ? 1 : t->ne[2], e;
	size_t *off = calloc((size_t)ne, sizeof(*off)), len;
	struct qf_cache_txn *txn;
	const void *p;
	char name[32];
	int l, lin, ret;

	*out = NULL;
	if (!off)
		return -ENOMEM;
	ret = qf_kq_tensor_off(c, t, &l, off, &lin) ?
	      qf_var_results(fs, gv->var) : 1;
	if (ret)	/* 1: none; < 0: the job failed */
		goto out_off;
	snprintf(name, sizeof(name), "__imatrix__.%d", l);
	if (!(*out = malloc((size_t)(ne * t->ne[0]) * sizeof(float)))) {
		ret = -ENOMEM;
		goto out_off;
	}
	ret = qf_cache_read_begin(fs->cache, &txn);
	if (!ret)
		ret = qf_cache_get(txn, gv->var->vid, name, &p, &len);
	if (!ret && len != qf_kq_imatrix_len(c) * sizeof(float))
		ret = QF_ECORRUPT;
	for (e = 0; e < ne && !ret; e++)
		memcpy(*out + e * t->ne[0], (const float *)p + off[e],
		       (size_t)t->ne[0] * sizeof(float));
	qf_cache_read_end(txn);
	if (ret < 0) {
		free(*out);
		*out = NULL;
	}
out_off:
	free(off);
	return ret < 0 ? ret : 0;
}

/* Tensor i, repacked or encoded here, into buf. */
static int encode(struct qf_fs *fs, struct qf_gv *gv, size_t i, uint8_t *buf)
{
	const struct qf_gguf_tensor *t = &gv->plan.t[i];
	int gi = group_of(gv, t);
	float *imp = NULL;
	int ret = 0;

	if (gv->kq)
		ret = imatrix(fs, gv, t, &imp);
	if (!ret && gv->var && !gv->kq && !gv->fit && t->ndim == 3)
		ret = repack_experts(fs, gv, t, buf);
	else if (!ret && gi >= 0 && !gv->fit)
		ret = repack(fs, gv, gi, t, buf);
	else if (!ret)
		ret = qf_gguf_produce(gv_src(gv), &gv->plan, i, imp, buf);
	free(imp);
	return ret;
}

/* flight: tensor i, repacked or encoded, or as the kq job encoded it */
static int produce(struct qf_fs *fs, void *arg, size_t i)
{
	struct qf_gv *gv = arg;
	const struct qf_gguf_tensor *t = &gv->plan.t[i];
	struct qf_cache_item it = { t->name, NULL, t->nbytes };
	uint8_t *buf = malloc(t->nbytes ? t->nbytes : 1);
	size_t off;
	int l, lin, ret;

	if (!buf)
		return -ENOMEM;
	ret = gv->kq && qf_kq_job_tensor(&gv->plan, t, &l, &lin, &off) ?
	      job_bytes(fs, gv, t, buf) : encode(fs, gv, i, buf);
	it.data = buf;
	if (!ret)
		ret = qf_fs_cache_put(fs, gv->vid, &it, 1);
	free(buf);
	if (ret < 0 && ret != -ENOSPC)	/* (logged) */
		qf_err("%s: model.gguf of %s: cannot produce %s: %s",
		       gv->mdl->name, gv->var ? gv->var->v->name : "original",
		       t->name, qf_strerror(ret));
	return ret;
}

/* flight: the variant's group a repacked tensor needs, before a slot */
static int prepare(struct qf_fs *fs, void *arg, size_t i)
{
	struct qf_gv *gv = arg;
	const struct qf_gguf_tensor *t = &gv->plan.t[i];
	int gi = gv->var && !gv->fit ? group_of(gv, t) : -1;
	int64_t e;
	int ret = 0;

	/* experts: their groups */
	if (gv->var && !gv->kq && !gv->fit && t->ndim == 3)
		for (e = 0; e < t->ne[2] && !ret; e++) {
			gi = group_of_src(gv, t->xsrc[e]);
			ret = gi >= 0 ? qf_var_ensure(fs, gv->var,
						      (uint32_t)gi) : 0;
		}
	else if (gi >= 0)
		ret = qf_var_ensure(fs, gv->var, (uint32_t)gi);
	return ret;
}

static void complete(struct qf_fs *fs, void *arg, double seconds)
{
	struct qf_gv *gv = arg;

	(void)fs;
	qf_info("%s: %s/model.gguf ready (%zu tensors, %.1f MB) in %.2f s",
		gv->mdl->name, gv->var ? gv->var->v->name : "original",
		gv->plan.nt, gv->plan.size / 1e6, seconds);
}

static const struct qf_flight_ops tensor_ops = {
	.cached = tensor_cached,
	.names = tensor_names,
	.prepare = prepare,
	.produce = produce,
	.record = record,
	.complete = complete,
};

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
			ret = qf_flight_ensure(fs, &gv->fl, i);
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
		qf_flight_forget(&gv->fl, SIZE_MAX);
	}
	return QF_ECORRUPT;
}
