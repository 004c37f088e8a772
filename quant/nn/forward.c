/*
 * forward.c - the Llama-family forward pass around the kernels of
 * tf_kernels.c: loading one decoder layer's weights as fp32, the
 * embedding lookup, the head (final norm + lm_head), whole-model logits
 * one layer in memory at a time, and the log-probabilities of targets
 * under the head.  config.json parsing is io/config.c.
 *
 * Model files are untrusted: every tensor's presence and shape is checked
 * (QF_EFORMAT, naming the tensor) before it is read.  The embedding table
 * and lm_head are converted in slices, never as a whole fp32 copy, so a
 * 150k-token vocabulary costs no extra gigabyte.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nn.h"
#include "tf_kernels.h"
#include "tf_moe.h"


/* Floats of lm_head converted at a time. */
#define HEAD_CHUNK_FLOATS (4u << 20)

/* ------------------------------------------------------------------ */
/* layers                                                             */

/* Tensor name with its shape checked: [d0] when d1 == 0, else [d0, d1]. */
static const struct qf_model_tensor *find_shaped(const struct qf_model *m,
						 const char *name, int64_t d0,
						 int64_t d1)
{
	const struct qf_model_tensor *mt = qf_model_find(m, name);
	int nd = d1 ? 2 : 1;

	if (!mt) {
		qf_err("%s: missing tensor '%s'", m->dir, name);
		return NULL;
	}
	if (mt->t->ndim != nd || mt->t->shape[0] != d0 ||
	    (nd == 2 && mt->t->shape[1] != d1)) {
		qf_err("%s: tensor '%s' has a wrong shape (want [%lld%s%lld])",
		       m->dir, name, (long long)d0, nd == 2 ? ", " : "",
		       nd == 2 ? (long long)d1 : 0LL);
		return NULL;
	}
	return mt;
}

/* Read name ([d0] or [d0, d1]) into a new fp32 array. */
static int load_f32(const struct qf_model *m, const char *name, int64_t d0,
		    int64_t d1, float **out)
{
	const struct qf_model_tensor *mt = find_shaped(m, name, d0, d1);
	float *p;
	int ret;

	if (!mt)
		return QF_EFORMAT;
	p = malloc(sizeof(float) * (size_t)(d0 * (d1 ? d1 : 1)));
	if (!p)
		return -ENOMEM;
	ret = qf_model_read_f32(mt, p);
	if (ret < 0) {
		free(p);
		return ret;
	}
	*out = p;
	return 0;
}

static int load_layer_t(const struct qf_model *m, int l, const char *what,
			int64_t d0, int64_t d1, float **out)
{
	char name[256];

	snprintf(name, sizeof(name), "model.layers.%d.%s", l, what);
	return load_f32(m, name, d0, d1, out);
}

void qf_tf_norm_plus1(float *w, int64_t d)
{
	int64_t i;

	for (i = 0; i < d; i++)
		w[i] += 1.0f;
}

/* A norm weight as the kernels use it: 1 + w under c->norm_plus1. */
static int norm_plus1(const struct qf_tf_config *c, int ret, float *w,
		      int64_t d)
{
	if (ret == 0 && c->norm_plus1)
		qf_tf_norm_plus1(w, d);
	return ret;
}

static int load_layer_norm(const struct qf_model *m,
			   const struct qf_tf_config *c, int l,
			   const char *what, int64_t d, float **out)
{
	int ret = load_layer_t(m, l, what, d, 0, out);

	return norm_plus1(c, ret, *out, d);
}

/* The norms of layer l (see struct qf_tf_layer for gemma's four). */
static int load_layer_norms(const struct qf_model *m,
			    const struct qf_tf_config *c, int l,
			    struct qf_tf_layer *out)
{
	bool full = qf_tf_flags(c) & QF_ARCH_QK_NORM_FULL;
	int ret;

	ret = load_layer_norm(m, c, l, "input_layernorm.weight", c->hidden,
			      &out->in_norm);
	if (ret == 0)
		ret = load_layer_norm(m, c, l, c->sandwich ?
				      "pre_feedforward_layernorm.weight" :
				      "post_attention_layernorm.weight",
				      c->hidden, &out->post_norm);
	if (ret == 0 && c->sandwich)
		ret = load_layer_norm(m, c, l,
				      "post_attention_layernorm.weight",
				      c->hidden, &out->attn_out_norm);
	if (ret == 0 && c->sandwich)
		ret = load_layer_norm(m, c, l,
				      "post_feedforward_layernorm.weight",
				      c->hidden, &out->mlp_out_norm);
	if (ret == 0 && (c->qk_norm || full))
		ret = load_layer_norm(m, c, l, "self_attn.q_norm.weight",
				      full ? c->heads * c->head_dim :
				      c->head_dim, &out->q_norm);
	if (ret == 0 && (c->qk_norm || full))
		ret = load_layer_norm(m, c, l, "self_attn.k_norm.weight",
				      full ? c->kv_heads * c->head_dim :
				      c->head_dim, &out->k_norm);
	return ret;
}

/*
 * Linear i of layer l into ly->w[i]: its own tensor, or its rows of a
 * fused one (read once, when its first linear comes; the later ones
 * point into it and are marked borrowed).
 */
static int load_linear(const struct qf_model *m, const struct qf_tf_config *c,
		       int l, int i, struct qf_tf_layer *ly)
{
	int64_t n = qf_tf_linear_in(c, i);
	int64_t row0, rows;
	const char *t = qf_tf_linear_tensor(c, i, &row0, &rows);
	char what[160];
	int first;

	if (row0 > 0) {
		for (first = i - 1; first > 0 && ly->borrowed & (1u << first);
		     first--)
			;
		ly->w[i] = ly->w[first] + row0 * n;
		ly->borrowed |= 1u << i;
		return 0;
	}
	/* .weight, or the GPTQ tensors of a mounted variant */
	snprintf(what, sizeof(what), "model.layers.%d.%s", l, t);
	ly->w[i] = malloc(sizeof(float) * (size_t)(rows * n));
	return ly->w[i] ? qf_model_linear_f32(m, what, rows, n, ly->w[i]) :
	       -ENOMEM;
}

int qf_tf_layer_load(const struct qf_model *m, const struct qf_tf_config *c,
		     int l, struct qf_tf_layer *out)
{
	char what[64];
	int i, ret;

	memset(out, 0, sizeof(*out));
	if (l < 0 || l >= c->layers)
		return -EINVAL;
	for (i = 0; i < QF_TF_NLINEAR; i++) {
		int64_t o = qf_tf_linear_out(c, i);

		if (i >= QF_TF_GATE && qf_moe_layer_sparse(c, l))
			break;	/* the MoE block below */
		ret = load_linear(m, c, l, i, out);
		if (ret < 0)
			goto out_free;
		if (!qf_tf_linear_bias(m, c, i))
			continue;
		snprintf(what, sizeof(what), "%s.bias", qf_tf_linear_name(i));
		ret = load_layer_t(m, l, what, o, 0, &out->b[i]);
		if (ret < 0)
			goto out_free;
	}
	ret = load_layer_norms(m, c, l, out);
	if (ret == 0 && qf_moe_layer_sparse(c, l))
		ret = qf_tf_moe_load(m, c, l, &out->moe);
	if (ret == 0)
		return 0;
out_free:
	qf_tf_layer_free(out);
	return ret;
}

int qf_tf_layer_load_linears(const struct qf_model *m,
			     const struct qf_tf_config *c, int l, int k0,
			     int k1, struct qf_tf_layer *ly)
{
	int i, ret = 0;

	for (i = k0; i < k1 && !ret; i++)
		ret = load_linear(m, c, l, i, ly);
	return ret;
}

void qf_tf_layer_drop(struct qf_tf_layer *ly, int k0, int k1)
{
	int i;

	for (i = k0; i < k1; i++) {
		if (!(ly->borrowed & (1u << i)))
			free(ly->w[i]);
		ly->w[i] = NULL;
		ly->borrowed &= ~(1u << i);
	}
}

void qf_tf_layer_free(struct qf_tf_layer *ly)
{
	int i;

	if (!ly)
		return;
	for (i = 0; i < QF_TF_NLINEAR; i++) {
		if (!(ly->borrowed & (1u << i)))
			free(ly->w[i]);
		free(ly->b[i]);
	}
	free(ly->in_norm);
	free(ly->post_norm);
	free(ly->q_norm);
	free(ly->k_norm);
	free(ly->attn_out_norm);
	free(ly->mlp_out_norm);
	qf_tf_moe_free(ly->moe);
	memset(ly, 0, sizeof(*ly));
}

/* ------------------------------------------------------------------ */
/* embeddings and head                                                */

/*
 * Rows [r0, r0 + n) of a [rows, cols] source matrix as fp32 into dst.
 * The caller checked the shard is unchanged before, and checks
 * qf_st_faulted() once after its last call (it stats the file: the
 * embedding reads a row per token).
 */
static int read_rows(const struct qf_model_tensor *mt, int64_t r0, int64_t n,
		     int64_t cols, float *dst)
{
	size_t es = qf_dtype_size(mt->t->dtype);
	const uint8_t *src = qf_st_data(mt->shard, mt->t);
	int64_t i;
	int ret;

	ret = qf_to_f32(mt->t->dtype, src + (size_t)(r0 * cols) * es,
			(size_t)(n * cols), dst);
	if (ret < 0) {
		qf_err("%s: tensor '%s' is not floating point",
		       mt->shard->path, mt->name);
		return ret;
	}
	for (i = 0; i < n * cols; i++)
		if (!isfinite(dst[i])) {
			qf_err("%s: tensor '%s' has a non-finite value in row "
			       "%lld", mt->shard->path, mt->name,
			       (long long)(r0 + i / cols));
			return QF_ENUMERIC;
		}
	return 0;
}

static int check_unchanged(const struct qf_model_tensor *mt)
{
	if (qf_st_unchanged(mt->shard))
		return 0;
	qf_err("%s: changed on disk since the mount; remount",
	       mt->shard->path);
	return QF_ECORRUPT;
}

int qf_tf_seqs_read(const struct qf_tf_seqs *s, int s0, int n, float *buf)
{
	size_t len = (size_t)(n * s->row) * sizeof(float);
	uint64_t off = (uint64_t)(s0 * s->row) * sizeof(float);

	if (!s->mem)
		return qf_pread_all(s->fd, buf, len, off);
	memcpy(buf, s->mem + s0 * s->row, len);
	return 0;
}

int qf_tf_seqs_write(const struct qf_tf_seqs *s, int s0, int n,
		     const float *buf)
{
	size_t len = (size_t)(n * s->row) * sizeof(float);
	uint64_t off = (uint64_t)(s0 * s->row) * sizeof(float);

	if (!s->mem)
		return qf_pwrite_all(s->fd, buf, len, off);
	memcpy(s->mem + s0 * s->row, buf, len);
	return 0;
}

int qf_tf_embed(const struct qf_model *m, const struct qf_tf_config *c,
		const int32_t *ids, int64_t n, float *x)
{
	const struct qf_model_tensor *mt;
	int64_t i;
	int ret;

	mt = find_shaped(m, "model.embed_tokens.weight", c->vocab, c->hidden);
	if (!mt)
		return QF_EFORMAT;
	ret = check_unchanged(mt);
	for (i = 0; i < n && ret == 0; i++) {
		if (ids[i] < 0 || ids[i] >= c->vocab) {
			qf_err("token id %d out of range (vocab %d)", ids[i],
			       c->vocab);
			return -EINVAL;
		}
		ret = read_rows(mt, ids[i], 1, c->hidden, x + i * c->hidden);
	}
	if (ret == 0 && qf_st_faulted(mt->shard))
		ret = QF_ECORRUPT;
	for (i = 0; ret == 0 && c->embed_scale > 0 && i < n * c->hidden; i++)
		x[i] *= c->embed_scale;		/* gemma: sqrt(hidden) */
	return ret;
}

/* Columns [0, nr) of n rows of stride ld, soft-capped (gemma 2). */
/*
 * Rows [r0, r0 + n) of a [rows, hidden] source tensor back to the page
 * cache: a head of a large vocabulary is GBs (2.1 at Llama-3-70B's),
 * read again for every sampled token.
 */
static void release_rows(const struct qf_model_tensor *mt, int64_t r0,
			 int64_t n, int64_t hidden)
{
	size_t es = qf_dtype_size(mt->t->dtype);

	qf_st_release(mt->shard, (const uint8_t *)qf_st_data(mt->shard,
							     mt->t) +
		      (size_t)(r0 * hidden) * es, (size_t)(n * hidden) * es);
}

static void softcap_rows(float *l, int64_t n, int64_t nr, int64_t ld,
			 float cap)
{
	int64_t r;

	for (r = 0; cap > 0 && r < n; r++)
		qf_tf_softcap(l + r * ld, nr, cap);
}

/*
 * A quantized lm_head (a variant's _head<h>: GPTQ or AWQ tensors, no
 * lm_head.weight), dequantized whole: the logits as a loader computes
 * them with it.
 */
static int head_quantized(const struct qf_model *m,
			  const struct qf_tf_config *c, const float *x,
			  int64_t n, float *logits)
{
	size_t wn = (size_t)c->vocab * (size_t)c->hidden;
	float *w = malloc(wn * sizeof(*w));	/* [vocab, hidden] */
	float *xn = malloc(sizeof(float) * (size_t)(n * c->hidden));
	float *norm = NULL;			/* [hidden] */
	int ret = w && xn ? 0 : -ENOMEM;

	if (!ret)
		ret = load_f32(m, "model.norm.weight", c->hidden, 0, &norm);
	ret = norm_plus1(c, ret, norm, c->hidden);
	if (!ret)
		ret = qf_model_linear_f32(m, "lm_head", c->vocab, c->hidden, w);
	if (!ret) {
		qf_tf_rmsnorm(x, norm, n, c->hidden, c->rms_eps, xn);
		qf_sgemm(false, true, (int)n, c->vocab, c->hidden, 1.0f, xn,
			 c->hidden, w, c->hidden, 0.0f, logits, c->vocab);
		softcap_rows(logits, n, c->vocab, c->vocab, c->final_softcap);
	}
	free(w);
	free(xn);
	free(norm);
	return ret;
}

/*
 * The fp head tensor ([vocab, hidden]; lm_head or the tied embeddings)
 * and the final norm's scale in fp32 (*norm, the caller frees it).
 * 1: the head is quantized (a variant's _head), nothing loaded.
 */
static int head_source(const struct qf_model *m, const struct qf_tf_config *c,
		       const struct qf_model_tensor **mt, float **norm)
{
	const char *wname = c->tie ? "model.embed_tokens.weight" :
				     "lm_head.weight";
	int ret;

	if (!c->tie && !qf_model_find(m, wname) &&
	    qf_model_find(m, "lm_head.qweight"))
		return 1;
	*mt = find_shaped(m, wname, c->vocab, c->hidden);
	if (!*mt)
		return QF_EFORMAT;
	ret = load_f32(m, "model.norm.weight", c->hidden, 0, norm);
	return norm_plus1(c, ret, *norm, c->hidden);
}

int qf_tf_head(const struct qf_model *m, const struct qf_tf_config *c,
	       const float *x, int64_t n, float *logits)
{
	const struct qf_model_tensor *mt = NULL;
	float *xn = NULL;	/* [n, hidden] normed */
	float *w = NULL;	/* [chunk, hidden] slice of lm_head */
	float *norm = NULL;	/* [hidden] */
	int64_t chunk, r0, nr;
	int ret = head_source(m, c, &mt, &norm);

	if (ret == 1)
		return head_quantized(m, c, x, n, logits);
	if (ret < 0)
		return ret;
	chunk = HEAD_CHUNK_FLOATS / c->hidden;
	chunk = chunk < 1 ? 1 : chunk > c->vocab ? c->vocab : chunk;
	xn = malloc(sizeof(float) * (size_t)(n * c->hidden));
	w = malloc(sizeof(float) * (size_t)(chunk * c->hidden));
	if (!xn || !w) {
		ret = -ENOMEM;
		goto out_free;
	}
	qf_tf_rmsnorm(x, norm, n, c->hidden, c->rms_eps, xn);
	ret = check_unchanged(mt);
	for (r0 = 0; r0 < c->vocab && ret == 0; r0 += chunk) {
		nr = c->vocab - r0 < chunk ? c->vocab - r0 : chunk;
		ret = read_rows(mt, r0, nr, c->hidden, w);
		if (ret < 0)
			break;
		/* logits[:, r0:r0+nr] = xn w^T, ldc = vocab */
		qf_sgemm(false, true, (int)n,
			    (int)nr, c->hidden, 1.0f, xn, c->hidden, w,
			    c->hidden, 0.0f, logits + r0, c->vocab);
		softcap_rows(logits + r0, n, nr, c->vocab, c->final_softcap);
		release_rows(mt, r0, nr, c->hidden);
	}
	if (ret == 0 && qf_st_faulted(mt->shard))
		ret = QF_ECORRUPT;
out_free:
	free(xn);
	free(w);
	free(norm);
	return ret;
}

void qf_tf_head_free(struct qf_tf_headw *h)
{
	free(h->w);
	free(h->norm);
	h->w = h->norm = NULL;
}

int qf_tf_head_load(const struct qf_model *m, const struct qf_tf_config *c,
		    size_t max_bytes, struct qf_tf_headw *h)
{
	const struct qf_model_tensor *mt = NULL;
	int64_t chunk = HEAD_CHUNK_FLOATS / c->hidden, r0, nr;
	int ret;

	memset(h, 0, sizeof(*h));
	if ((uint64_t)c->vocab * (uint64_t)c->hidden * sizeof(float) >
	    max_bytes)
		return 0;	/* too big to hold: streamed */
	ret = head_source(m, c, &mt, &h->norm);
	if (ret != 0) {		/* 1, quantized: qf_tf_head dequantizes it */
		qf_tf_head_free(h);
		return ret < 0 ? ret : 0;
	}
	h->w = malloc(sizeof(float) * (size_t)(c->vocab * c->hidden));
	ret = h->w ? check_unchanged(mt) : -ENOMEM;
	chunk = chunk < 1 ? 1 : chunk;
	for (r0 = 0; r0 < c->vocab && ret == 0; r0 += chunk) {
		nr = c->vocab - r0 < chunk ? c->vocab - r0 : chunk;
		ret = read_rows(mt, r0, nr, c->hidden, h->w + r0 * c->hidden);
		release_rows(mt, r0, nr, c->hidden);
	}
	if (ret == 0 && qf_st_faulted(mt->shard))
		ret = QF_ECORRUPT;
	if (ret < 0)
		qf_tf_head_free(h);
	return ret;
}

int qf_tf_head_run(const struct qf_model *m, const struct qf_tf_headw *h,
		   const struct qf_tf_config *c, const float *x, int64_t n,
		   float *logits)
{
	return h && h->w ? qf_tf_head_with(h, c, x, n, logits) :
			   qf_tf_head(m, c, x, n, logits);
}

int qf_tf_head_with(const struct qf_tf_headw *h,
		    const struct qf_tf_config *c, const float *x, int64_t n,
		    float *logits)
{
	float *xn = malloc(sizeof(float) * (size_t)(n * c->hidden));

	if (!xn)
		return -ENOMEM;
	qf_tf_rmsnorm(x, h->norm, n, c->hidden, c->rms_eps, xn);
	qf_sgemm(false, true, n, c->vocab, c->hidden, 1.0f, xn, c->hidden,
		 h->w, c->hidden, 0.0f, logits, c->vocab);
	softcap_rows(logits, n, c->vocab, c->vocab, c->final_softcap);
	free(xn);
	return 0;
}

int qf_tf_hidden(const struct qf_model *m, const struct qf_tf_config *c,
		 const int32_t *ids, int nseq, int seqlen, float *x)
{
	struct qf_tf_layer ly;
	int l, ret;

	ret = qf_tf_embed(m, c, ids, (int64_t)nseq * seqlen, x);
	for (l = 0; l < c->layers && ret == 0; l++) {
		ret = qf_tf_layer_load(m, c, l, &ly);
		if (ret < 0)
			break;
		ret = qf_tf_layer_forward(c, &ly, l, x, nseq, seqlen, NULL,
					  NULL);
		qf_tf_layer_free(&ly);
	}
	return ret;
}

int qf_tf_logits(const struct qf_model *m, const struct qf_tf_config *c,
		 const int32_t *ids, int nseq, int seqlen, float *logits)
{
	int64_t n = (int64_t)nseq * seqlen;
	float *x;	/* [n, hidden] residual stream */
	int ret;

	if (nseq <= 0 || seqlen <= 0)
		return -EINVAL;
	x = malloc(sizeof(float) * (size_t)(n * c->hidden));
	if (!x)
		return -ENOMEM;
	ret = qf_tf_hidden(m, c, ids, nseq, seqlen, x);
	if (ret == 0)
		ret = qf_tf_head(m, c, x, n, logits);
	free(x);
	return ret;
}

/* ------------------------------------------------------------------ */
/* log-probabilities of targets under the head                        */

#define HEAD_BUDGET (128u << 20)	/* logits bytes per slice: OpenBLAS
					 * packs the head once per slice */

int qf_head_logp(const struct qf_model *m, const struct qf_tf_headw *hw,
		 const struct qf_tf_config *c, const float *x,
		 const int32_t *target, int64_t n, double *logp)
{
	int64_t rows = HEAD_BUDGET / ((int64_t)c->vocab * 4);
	float *lg;
	int64_t r0, r, j;
	int ret = 0;

	rows = rows < 1 ? 1 : rows > n ? n : rows;
	lg = malloc((size_t)(rows * c->vocab) * sizeof(*lg));
	if (!lg)
		return -ENOMEM;
	for (r0 = 0; r0 < n && !ret; r0 += rows) {
		int64_t k = n - r0 < rows ? n - r0 : rows;

		ret = qf_tf_head_run(m, hw, c, x + r0 * c->hidden, k, lg);
		for (r = 0; r < k && !ret; r++) {
			const float *l = lg + r * c->vocab;
			double mx = l[0], s = 0;
			int32_t t = target[r0 + r];

			logp[r0 + r] = 0;
			if (t < 0)
				continue;
			for (j = 1; j < c->vocab; j++)
				mx = l[j] > mx ? l[j] : mx;
			for (j = 0; j < c->vocab; j++)
				s += exp((double)l[j] - mx);
			logp[r0 + r] = (double)l[t] - mx - log(s);
		}
	}
	free(lg);
	return ret;
}

/* sum_j p_j (a_j - b_j) - lse(a) + lse(b), from its sums; at least 0 */
static double kl_of(double t, double ma, double sa, double mb, double sb)
{
	double kl = t / sa - (ma + log(sa)) + (mb + log(sb));

	return kl > 0 ? kl : 0;
}

double qf_logits_kl(const float *a, const float *b, int64_t v)
{
	double ma = a[0], mb = b[0], sa = 0, sb = 0, t = 0;
	int64_t j;

	for (j = 1; j < v; j++) {
		ma = a[j] > ma ? a[j] : ma;
		mb = b[j] > mb ? b[j] : mb;
	}
	/* sum_j p_j (a_j - b_j) - lse(a) + lse(b): two exp per logit */
	for (j = 0; j < v; j++) {
		double ea = exp((double)a[j] - ma);

		sa += ea;
		t += ea * ((double)a[j] - (double)b[j]);
		sb += exp((double)b[j] - mb);
	}
	return kl_of(t, ma, sa, mb, sb);
}

struct kl_rows {
	const float *a, *b;
	int64_t v;
	double *out;
};

static void kl_rows_part(void *arg, int64_t r0, int64_t r1)
{
	const struct kl_rows *k = arg;
	int64_t r;

	for (r = r0; r < r1; r++)
		k->out[r] = qf_logits_kl(k->a + r * k->v, k->b + r * k->v,
					 k->v);
}

void qf_logits_kl_rows(const float *a, const float *b, int64_t rows,
		       int64_t v, double *out)
{
	struct kl_rows k = { a, b, v, out };

	qf_par_for(kl_rows_part, &k, rows, 1, 1);
}

struct kl_ref {
	const float *a;
	double *ea, *ma, *sa;		/* made */
	int64_t v;
};

struct kl_vs_ref {
	const float *a, *b;
	const double *ea, *ma, *sa;
	int64_t v;
	double *out;
};

/* qf_logits_kl's reference side, in its order: max, then exp and sum */
static void ref_rows(void *arg, int64_t r0, int64_t r1)
{
	const struct kl_ref *k = arg;
	int64_t v = k->v, r, j;

	for (r = r0; r < r1; r++) {
		const float *a = k->a + r * v;
		double *ea = k->ea + r * v;
		double ma = a[0], sa = 0;

		for (j = 1; j < v; j++)
			ma = a[j] > ma ? a[j] : ma;
		for (j = 0; j < v; j++) {
			ea[j] = exp((double)a[j] - ma);
			sa += ea[j];
		}
		k->ma[r] = ma;
		k->sa[r] = sa;
	}
}

void qf_logits_ref_rows(const float *a, int64_t rows, int64_t v, double *ea,
			double *ma, double *sa)
{
	struct kl_ref k = { a, ea, ma, sa, v };

	qf_par_for(ref_rows, &k, rows, 1, 1);
}

/* ... and the rest of qf_logits_kl with it, the same sums in order */
static void kl_ref_rows(void *arg, int64_t r0, int64_t r1)
{
	const struct kl_vs_ref *k = arg;
	int64_t v = k->v, r, j;

	for (r = r0; r < r1; r++) {
		const float *a = k->a + r * v, *b = k->b + r * v;
		const double *ea = k->ea + r * v;
		double mb = b[0], sb = 0, t = 0;

		for (j = 1; j < v; j++)
			mb = b[j] > mb ? b[j] : mb;
		for (j = 0; j < v; j++) {
			t += ea[j] * ((double)a[j] - (double)b[j]);
			sb += exp((double)b[j] - mb);
		}
		k->out[r] = kl_of(t, k->ma[r], k->sa[r], mb, sb);
	}
}

void qf_logits_kl_ref_rows(const float *a, const double *ea,
			   const double *ma, const double *sa,
			   const float *b, int64_t rows, int64_t v,
			   double *out)
{
	struct kl_vs_ref k = { a, b, ea, ma, sa, v, out };

	qf_par_for(kl_ref_rows, &k, rows, 1, 1);
}
