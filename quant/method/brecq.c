/*
 * brecq.c - BRECQ block reconstruction of one decoder block: AdaRound's
 * soft rounding variables of every quantized linear, learned jointly with
 * Adam against the full-precision block's output (brecq.h has the loss).
 *
 * Per step: W~ from V for each quantized linear, the block's forward on a
 * mini-batch of whole sequences with its activations saved
 * (tf_backward.c), dL/dW~ from the hand-written backward, dL/dV through
 * h'(V), plus the regularizer, and an Adam step.  Elementwise work is one
 * pass per weight; everything else is SGEMM.  Mini-batches are drawn with
 * splitmix64 from the seed: the same inputs and seed give the same codes.
 *
 * A sparse MoE block (ly->moe): every expert linear gets its AdaRound
 * variables too, with the routing computed once from the block's input
 * and held fixed (tf_moe.h, brecq.h: struct qf_brecq_experts).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "brecq.h"
#include "method.h"
#include "tf_backward.h"
#include "tf_moe.h"

/* Tokens of one forward when measuring the whole calibration set. */
#define BRECQ_EVAL_TOKENS 2048

void qf_brecq_opts_default(struct qf_brecq_opts *o)
{
	int l;

	memset(o, 0, sizeof(*o));
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		o->qp[l].bits = 4;
		o->qp[l].group = 128;
		o->qp[l].sym = false;
	}
	o->iters = 200;
	o->batch_seqs = 2;
	o->lr = 1e-2f;
	o->reg = 0.01f;
	o->beta_hi = 20.0f;
	o->beta_lo = 2.0f;
	o->warmup = 0.2f;
	o->seed = 0;
}

/* ------------------------------------------------------------------ */
/* AdaRound of one linear                                             */

void qf_adaround_free(struct qf_adaround *a)
{
	if (!a)
		return;
	free(a->base);
	free(a->v);
	free(a->m1);
	free(a->m2);
	free(a->sc);
	free(a->sc16);
	free(a->zero);
	memset(a, 0, sizeof(*a));
}

/* Elements of the regularizer's per-weight values summed at a time. */
#define REG_CHUNK 256

static inline float sigmoid_poly(float v)
{
	return 1.0f / (1.0f + qf_tf_exp_poly(-v));
}

/*
 * ln(x) for normal x > 0: Cephes' logf polynomial, vectorizable (the
 * exponent and mantissa by bits).
 */
static inline float log_poly(float x)
{
	union {
		float f;
		uint32_t u;
	} v = { x };
	int32_t ex = (int32_t)(v.u >> 23) - 126;
	int32_t lt;
	float e, m, z, y;

	v.u = (v.u & 0x007fffffu) | 0x3f000000u;	/* m in [0.5, 1) */
	/* below sqrt(1/2): 2m - 1 and e - 1, else m - 1 (integer flags:
	 * a float select would stop the vectorizer) */
	lt = v.u < 0x3f3504f3u;
	e = (float)(ex - lt);
	m = v.f * (float)(1 + lt) - 1;
	z = m * m;
	y = 7.0376836292e-2f;
	y = y * m - 1.1514610310e-1f;
	y = y * m + 1.1676998740e-1f;
	y = y * m - 1.2420140846e-1f;
	y = y * m + 1.4249322787e-1f;
	y = y * m - 1.6668057665e-1f;
	y = y * m + 2.0000714765e-1f;
	y = y * m - 2.4999993993e-1f;
	y = y * m + 3.3333331174e-1f;
	y = y * m * z;
	y += -2.12194440e-4f * e;
	y += -0.5f * z;
	return m + y + 0.693359375f * e;
}

/*
 * Group gi (row gi / ngroups, its grid at sc[gi], zero[gi]): its weights
 * are [returned, *j1) of the row-major matrix, the last group of a row
 * cut at the row's end.
 */
static inline int64_t group_span(const struct qf_adaround *a, int64_t gi,
				 int64_t *j1)
{
	int64_t r = gi / a->ngroups;
	int64_t j0 = r * a->in + gi % a->ngroups * a->gs;
	int64_t end = (r + 1) * a->in;

	*j1 = j0 + a->gs < end ? j0 + a->gs : end;
	return j0;
}

/* The grid of group gi of w, and base/V of its columns. */
static int init_group(struct qf_adaround *a, const float *w,
		      const struct qf_qparams *qp, int64_t gi)
{
	int64_t ib, ia = group_span(a, gi, &ib);
	const double zg = QF_ADAROUND_ZETA - QF_ADAROUND_GAMMA;
	float lo, hi, s;
	int64_t j;
	int ret;

	lo = hi = w[ia];
	for (j = ia; j < ib; j++) {
		lo = w[j] < lo ? w[j] : lo;
		hi = w[j] > hi ? w[j] : hi;
	}
	ret = qf_rtn_grid(lo, hi, qp, &a->sc16[gi], &a->sc[gi], &a->zero[gi]);
	if (ret < 0)
		return ret;
	s = a->sc[gi];
	for (j = ia; j < ib; j++) {
		float t = w[j] / s;	/* as qf_rtn_quantize divides */
		float fl = floorf(t);
		double frac = (double)t - fl;

		a->base[j] = fl + (float)a->zero[gi];
		/* h(V) = frac: V = -log((zeta - gamma) / (frac - gamma) - 1) */
		a->v[j] = (float)-log(zg / (frac - QF_ADAROUND_GAMMA) - 1.0);
		/* an exact tie: just below or above 0 as RTN rounds it (to
		 * even), so that the initial V's hard rounding is RTN's */
		if (frac == 0.5)
			a->v[j] = fmodf(fl, 2.0f) == 0 ? -1e-6f : 1e-6f;
	}
	return 0;
}

int qf_adaround_init(struct qf_adaround *a, const float *w, int64_t out,
		     int64_t in, const struct qf_qparams *qp)
{
	size_t n = (size_t)(out * in);
	int64_t gi;
	int ret;

	memset(a, 0, sizeof(*a));
	if (qp->bits < 2 || qp->bits > 8 || out <= 0 || in <= 0)
		return -EINVAL;
	a->out = out;
	a->in = in;
	a->bits = qp->bits;
	a->ngroups = qf_ngroups(in, qp->group);
	a->gs = a->ngroups == 1 ? in : qp->group;
	a->base = malloc(n * sizeof(float));
	a->v = malloc(n * sizeof(float));
	a->m1 = calloc(n, sizeof(float));
	a->m2 = calloc(n, sizeof(float));
	a->sc = malloc(sizeof(float) * (size_t)(out * a->ngroups));
	a->sc16 = malloc(sizeof(uint16_t) * (size_t)(out * a->ngroups));
	a->zero = malloc(sizeof(int32_t) * (size_t)(out * a->ngroups));
	if (!a->base || !a->v || !a->m1 || !a->m2 || !a->sc || !a->sc16 ||
	    !a->zero) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (gi = 0; gi < out * a->ngroups; gi++) {
		ret = init_group(a, w, qp, gi);
		if (ret < 0)
			goto out_free;
	}
	return 0;

out_free:
	qf_adaround_free(a);
	return ret;
}

/* h(V) clipped to [0, 1]. */
static inline float rect_sigmoid(float v)
{
	return qf_tf_clampf(sigmoid_poly(v) * (QF_ADAROUND_ZETA -
			    QF_ADAROUND_GAMMA) + QF_ADAROUND_GAMMA, 0, 1);
}

QF_HOT void qf_adaround_soft(const struct qf_adaround *a, float *w)
{
	float maxq = (float)((1 << a->bits) - 1);
	int64_t gi, j, j1;

	for (gi = 0; gi < a->out * a->ngroups; gi++) {
		float s = a->sc[gi];
		float z = (float)a->zero[gi];

		for (j = group_span(a, gi, &j1); j < j1; j++) {
			float c = a->base[j] + rect_sigmoid(a->v[j]);

			w[j] = s * (qf_tf_clampf(c, 0, maxq) - z);
		}
	}
}

void qf_adaround_hard(const struct qf_adaround *a, const float *w_fp,
		      bool nearest, uint8_t *q, float *w)
{
	float maxq = (float)((1 << a->bits) - 1);
	int64_t gi, j, j1;

	for (gi = 0; gi < a->out * a->ngroups; gi++) {
		float s = a->sc[gi];
		float z = (float)a->zero[gi];

		for (j = group_span(a, gi, &j1); j < j1; j++) {
			float c;

			if (nearest)	/* ties to even, as RTN */
				c = rintf(w_fp[j] / s) + z;
			else
				c = a->base[j] + (a->v[j] >= 0);
			c = c < 0 ? 0 : c > maxq ? maxq : c;
			if (q)
				q[j] = (uint8_t)c;
			if (w)
				w[j] = s * (c - z);
		}
	}
}

/*
 * dL/dV of one weight: dw s h'(V) unless clamped or saturated, plus with
 * reg > 0 the regularizer's term; *regv: the regularizer's value there.
 */
static inline float grad_one(float v, float base, float dw, float s,
			     float maxq, float reg, float beta, bool with_reg,
			     float *regv)
{
	const float zg = QF_ADAROUND_ZETA - QF_ADAROUND_GAMMA;
	float sg = sigmoid_poly(v);
	float hr = sg * zg + QF_ADAROUND_GAMMA;
	float h = qf_tf_clampf(hr, 0, 1);
	float c = base + h;
	/* masks as 0/1 factors: selects would stop the vectorizer */
	float dh = (float)((hr > 0) & (hr < 1)) * sg * (1 - sg) * zg;
	float gr = (float)((c >= 0) & (c <= maxq)) * dw * s * dh;
	union {
		float f;
		uint32_t u;
	} t = { 2 * h - 1 };
	float at = fabsf(t.f);
	float p;

	if (!with_reg)
		return gr;
	/* |t|^(beta - 1), 0^(beta - 1) = tiny (beta > 1) or 1 (beta = 1) */
	p = qf_tf_exp_poly((beta - 1) * log_poly(qf_tf_clampf(at, 1e-30f, 1)));
	*regv = 1 - p * at;
	/* d/dh (1 - |2h - 1|^beta) = -2 beta |t|^(beta - 1) sgn t */
	return gr - reg * 2 * beta * p * (float)(1 - 2 * (int32_t)(t.u >> 31)) *
	       dh;
}

/* gv[0, n) of one group (scale s); with_reg: rv[0, n) too. */
static inline void grad_run(const struct qf_adaround *a, int64_t j0,
			    int64_t n, const float *dw, float s, float reg,
			    float beta, bool with_reg, float *gv, float *rv)
{
	float maxq = (float)((1 << a->bits) - 1);
	int64_t j;

	for (j = 0; j < n; j++)
		gv[j0 + j] = grad_one(a->v[j0 + j], a->base[j0 + j],
				      dw[j0 + j], s, maxq, reg, beta,
				      with_reg, &rv[j]);
}

QF_HOT double qf_adaround_grad(const struct qf_adaround *a, const float *dw,
			       float reg, float beta, float *gv)
{
	float rv[REG_CHUNK];
	double regv = 0;
	int64_t gi, j0, j1, k;

	for (gi = 0; gi < a->out * a->ngroups; gi++) {
		float s = a->sc[gi];

		/* vectorized in chunks; their sums in double after */
		for (j0 = group_span(a, gi, &j1); j0 < j1; j0 += REG_CHUNK) {
			int64_t n = j1 - j0 < REG_CHUNK ? j1 - j0 : REG_CHUNK;

			if (!(reg > 0)) {
				grad_run(a, j0, n, dw, s, 0, beta, false, gv,
					 rv);
				continue;
			}
			grad_run(a, j0, n, dw, s, reg, beta, true, gv, rv);
			for (k = 0; k < n; k++)
				regv += rv[k];
		}
	}
	return reg * regv;
}

QF_HOT void qf_adaround_adam(struct qf_adaround *a, const float *gv,
			     float lr, int t)
{
	const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
	size_t n = (size_t)(a->out * a->in);
	float bc1 = (float)(1.0 - pow(b1, t));
	float rbc2 = (float)(1.0 / sqrt(1.0 - pow(b2, t)));
	float step = lr / bc1;
	size_t i;

	/* torch.optim.Adam's update */
	for (i = 0; i < n; i++) {
		float g = gv[i];

		a->m1[i] = b1 * a->m1[i] + (1 - b1) * g;
		a->m2[i] = b2 * a->m2[i] + (1 - b2) * g * g;
		a->v[i] -= step * a->m1[i] / (sqrtf(a->m2[i]) * rbc2 + eps);
	}
}

/* ------------------------------------------------------------------ */
/* the block                                                          */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* [out, in] of linear l. */
static void lin_dims(const struct qf_tf_config *c, int l, int64_t *out,
		     int64_t *in)
{
	*out = qf_tf_linear_out(c, (enum qf_tf_linear)l);
	*in = qf_tf_linear_in(c, (enum qf_tf_linear)l);
}

/* Mean of (block(x) - y)^2 over the whole set, in chunks of sequences. */
static int eval_mse(const struct qf_tf_config *c, const struct qf_tf_layer *ly,
		    int layer, const float *x, const float *y, int nseq,
		    int seqlen, double *mse)
{
	int64_t hid = c->hidden;
	int chunk = BRECQ_EVAL_TOKENS / seqlen;
	double sum = 0;
	float *buf;
	int s0, ret = 0;

	chunk = chunk < 1 ? 1 : chunk > nseq ? nseq : chunk;
	buf = malloc(sizeof(float) * (size_t)((int64_t)chunk * seqlen * hid));
	if (!buf)
		return -ENOMEM;
	for (s0 = 0; s0 < nseq && ret == 0; s0 += chunk) {
		int ns = nseq - s0 < chunk ? nseq - s0 : chunk;
		int64_t off = (int64_t)s0 * seqlen * hid;
		int64_t n = (int64_t)ns * seqlen * hid;
		int64_t i;

		memcpy(buf, x + off, sizeof(float) * (size_t)n);
		ret = qf_tf_layer_forward(c, ly, layer, buf, ns, seqlen, NULL,
					  NULL);
		for (i = 0; i < n && ret == 0; i++) {
			double d = (double)buf[i] - y[off + i];

			sum += d * d;
		}
	}
	free(buf);
	*mse = sum / ((double)nseq * seqlen * hid);
	return ret;
}

/* Everything one reconstruction holds. */
struct brecq {
	const struct qf_tf_config *c;
	const struct qf_brecq_opts *o;
	struct qf_adaround ar[QF_TF_NLINEAR];
	bool quant[QF_TF_NLINEAR];
	struct qf_tf_layer soft;	/* ly with W~ for quantized linears */
	float *wsoft[QF_TF_NLINEAR];	/* (out, in) W~ */
	float *dw[QF_TF_NLINEAR];	/* (out, in) dL/dW~, then dL/dV */
	struct qf_tf_saved sv;
	float *xb;			/* (T, hidden) mini-batch input */
	float *yb;			/* (T, hidden) its target */
	float *yh;			/* (T, hidden) output, then dL/dy */
	int *perm;			/* [nseq] sequence order */
	uint64_t rng;
	double norm;			/* sigma^2 */
	/* a MoE block: its experts [nex], as ly->moe->w */
	int nex;			/* nw * QF_MOE_NLINEAR; 0: dense */
	struct qf_adaround *ear;	/* quantized ones (ewsoft[k]) */
	float **ewsoft;			/* W~; NULL: kept */
	float **edw;			/* dL/dW~, dL/dV; NULL: not learned */
	struct qf_tf_moe smoe;		/* ly->moe with W~ */
	int32_t *sel;			/* [nseq * seqlen, topk] routing */
	float *p;			/* [nseq * seqlen, topk] weights */
	int32_t *selb;			/* the mini-batch's */
	float *pb;
};

static void brecq_free(struct brecq *b)
{
	int l;

	for (l = 0; l < QF_TF_NLINEAR; l++) {
		qf_adaround_free(&b->ar[l]);
		free(b->wsoft[l]);
		free(b->dw[l]);
	}
	qf_tf_saved_free(&b->sv);
	free(b->xb);
	free(b->yb);
	free(b->yh);
	free(b->perm);
	for (l = 0; l < b->nex; l++) {
		qf_adaround_free(&b->ear[l]);
		free(b->ewsoft[l]);
		free(b->edw[l]);
	}
	free(b->ear);
	free(b->ewsoft);
	free(b->edw);
	free(b->smoe.w);
	free(b->sel);
	free(b->p);
	free(b->selb);
	free(b->pb);
}

static int check_opts(const struct qf_tf_config *c,
		      const struct qf_tf_layer *ly,
		      const struct qf_brecq_opts *o, int nseq, int seqlen)
{
	int l;

	if (nseq <= 0 || seqlen <= 0 || (int64_t)nseq * seqlen > INT32_MAX ||
	    o->iters < 0 || o->batch_seqs <= 0 || !(o->lr > 0) ||
	    !(o->reg >= 0) || !(o->beta_lo >= 1) ||
	    !(o->beta_hi >= o->beta_lo) || !(o->warmup >= 0) ||
	    !(o->warmup <= 1) || c->kv_heads <= 0 ||
	    c->heads % c->kv_heads || c->head_dim % 2)
		return -EINVAL;
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		int bits = o->qp[l].bits;

		if ((!ly->w[l] && !(ly->moe && l >= QF_TF_GATE && bits == 16)) ||
		    (bits != 16 && (bits < 2 || bits > 8)))
			return -EINVAL;
	}
	return 0;
}

/* Stops the layer's forward at the MoE block: its routing of the rows. */
struct route_ctx {
	const struct brecq *b;
	const struct qf_tf_moe *moe;
	int64_t off;			/* the chunk's first token */
};

#define ROUTE_DONE 1

static int route_hook(void *arg, int layer, enum qf_tf_linear lin,
		      const float *x, int64_t ntok, int64_t in)
{
	struct route_ctx *r = arg;
	const struct brecq *b = r->b;
	int k = b->c->topk;
	int ret;

	(void)layer;
	(void)in;
	if (lin != QF_TF_GATE)
		return 0;
	ret = qf_tf_moe_route(b->c, r->moe, x, ntok, b->sel + r->off * k,
			      b->p + r->off * k);
	return ret < 0 ? ret : ROUTE_DONE;
}

/* The routing of every token of x through ly as it is (source precision). */
static int route_all(struct brecq *b, const struct qf_tf_layer *ly,
		     int layer, const float *x, int nseq, int seqlen)
{
	int64_t hid = b->c->hidden, k = b->c->topk;
	int64_t ntok = (int64_t)nseq * seqlen;
	int chunk = BRECQ_EVAL_TOKENS / seqlen;
	struct route_ctx r = { b, ly->moe, 0 };
	float *buf;
	int s0, ret = 0;

	chunk = chunk < 1 ? 1 : chunk > nseq ? nseq : chunk;
	b->sel = malloc(sizeof(int32_t) * (size_t)(ntok * k));
	b->p = malloc(sizeof(float) * (size_t)(ntok * k));
	buf = malloc(sizeof(float) * (size_t)((int64_t)chunk * seqlen * hid));
	if (!b->sel || !b->p || !buf) {
		free(buf);
		return -ENOMEM;
	}
	for (s0 = 0; s0 < nseq && ret == 0; s0 += chunk) {
		int ns = nseq - s0 < chunk ? nseq - s0 : chunk;

		r.off = (int64_t)s0 * seqlen;
		memcpy(buf, x + r.off * hid,
		       sizeof(float) * (size_t)((int64_t)ns * seqlen * hid));
		ret = qf_tf_layer_forward(b->c, ly, layer, buf, ns, seqlen,
					  route_hook, &r);
		ret = ret == ROUTE_DONE ? 0 : ret < 0 ? ret : -EINVAL;
	}
	free(buf);
	return ret;
}

/* Tokens routed to each expert of the set (the shared one: all). */
static void count_routed(const struct brecq *b, int64_t ntok, int nw,
			 int64_t *tokens)
{
	int64_t i;

	memset(tokens, 0, sizeof(int64_t) * (size_t)nw);
	for (i = 0; i < ntok * b->c->topk; i++)
		tokens[b->sel[i]]++;
	if (nw > b->c->experts)
		tokens[b->c->experts] = ntok;
}

/* [out, in] of expert weight k (as ly->moe->w). */
static void expert_dims(const struct qf_tf_config *c, int k, int64_t *out,
			int64_t *in)
{
	int64_t mi = k / QF_MOE_NLINEAR == c->experts ? c->shared_inter :
							c->moe_inter;
	bool down = k % QF_MOE_NLINEAR == QF_MOE_DOWN;

	*out = down ? c->hidden : mi;
	*in = down ? mi : c->hidden;
}

/*
 * A MoE block's experts: the routing, and AdaRound of each quantized
 * expert linear; those of experts routed no token hold their RTN W~ and
 * are not learned.
 */
static int experts_setup(struct brecq *b, const struct qf_tf_layer *ly,
			 int layer, const float *x, int nseq, int seqlen)
{
	const struct qf_tf_moe *moe = ly->moe;
	const struct qf_brecq_experts *ex = b->o->moe;
	int64_t ntok = (int64_t)nseq * seqlen, *tokens, out, in;
	int n = moe->nw * QF_MOE_NLINEAR, k, ret;

	b->smoe = *moe;
	b->smoe.w = malloc(sizeof(float *) * (size_t)n);
	b->ear = calloc((size_t)n, sizeof(*b->ear));
	b->ewsoft = calloc((size_t)n, sizeof(float *));
	b->edw = calloc((size_t)n, sizeof(float *));
	b->selb = malloc(sizeof(int32_t) * (size_t)(b->sv.ntok * b->c->topk));
	b->pb = malloc(sizeof(float) * (size_t)(b->sv.ntok * b->c->topk));
	tokens = calloc((size_t)moe->nw, sizeof(*tokens));
	ret = b->smoe.w && b->ear && b->ewsoft && b->edw && b->selb &&
	      b->pb && tokens ? 0 : -ENOMEM;
	b->nex = ret ? 0 : n;	/* (brecq_free frees what nex counts) */
	if (!ret)
		ret = route_all(b, ly, layer, x, nseq, seqlen);
	if (!ret)
		count_routed(b, ntok, moe->nw, tokens);
	for (k = 0; k < b->nex && !ret; k++) {
		const float *w = moe->w[k];

		b->smoe.w[k] = moe->w[k];
		if (!ex || ex->qp[k].bits == 16)
			continue;
		expert_dims(b->c, k, &out, &in);
		ret = qf_adaround_init(&b->ear[k], w, out, in, &ex->qp[k]);
		b->ewsoft[k] = ret ? NULL : malloc(sizeof(float) *
						   (size_t)(out * in));
		if (!ret && !b->ewsoft[k])
			ret = -ENOMEM;
		if (!ret && tokens[k / QF_MOE_NLINEAR] > 0 &&
		    !(b->edw[k] = malloc(sizeof(float) * (size_t)(out * in))))
			ret = -ENOMEM;
		if (!ret)	/* RTN to start with (and to keep, unrouted) */
			qf_adaround_hard(&b->ear[k], w, true, NULL,
					 b->ewsoft[k]);
		b->smoe.w[k] = b->ewsoft[k];
	}
	if (!ret && ex && ex->tokens)
		memcpy(ex->tokens, tokens, sizeof(*tokens) * (size_t)moe->nw);
	free(tokens);
	b->soft.moe = &b->smoe;
	b->sv.sel = b->selb;
	b->sv.p = b->pb;
	b->sv.dwe = b->edw;
	return ret;
}

static int brecq_setup(struct brecq *b, const struct qf_tf_layer *ly,
		       const float *x, const float *y, int nseq, int seqlen)
{
	int64_t hid = b->c->hidden;
	int64_t n = (int64_t)nseq * seqlen * hid;
	int bs = b->o->batch_seqs < nseq ? b->o->batch_seqs : nseq;
	int64_t tb = (int64_t)bs * seqlen * hid;
	double ss = 0;
	int64_t i, out, in;
	int l, ret;

	b->soft = *ly;
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		if (b->o->qp[l].bits == 16)
			continue;
		lin_dims(b->c, l, &out, &in);
		ret = qf_adaround_init(&b->ar[l], ly->w[l], out, in,
				       &b->o->qp[l]);
		if (ret < 0)
			return ret;
		b->wsoft[l] = malloc(sizeof(float) * (size_t)(out * in));
		b->dw[l] = malloc(sizeof(float) * (size_t)(out * in));
		if (!b->wsoft[l] || !b->dw[l])
			return -ENOMEM;
		b->quant[l] = true;
		b->soft.w[l] = b->wsoft[l];
	}
	ret = qf_tf_saved_init(b->c, bs, seqlen, &b->sv);
	if (ret < 0)
		return ret;
	b->xb = malloc(sizeof(float) * (size_t)tb);
	b->yb = malloc(sizeof(float) * (size_t)tb);
	b->yh = malloc(sizeof(float) * (size_t)tb);
	b->perm = malloc(sizeof(int) * (size_t)nseq);
	if (!b->xb || !b->yb || !b->yh || !b->perm)
		return -ENOMEM;
	for (i = 0; i < nseq; i++)
		b->perm[i] = (int)i;
	for (i = 0; i < n; i++) {
		double d = (double)y[i] - x[i];

		ss += d * d;
	}
	b->norm = ss / (double)n;
	if (!(b->norm > 0) || !isfinite(b->norm))
		b->norm = 1;
	b->rng = b->o->seed;
	return 0;
}

/* Draw the mini-batch: bs distinct sequences (partial Fisher-Yates). */
static void brecq_batch(struct brecq *b, const float *x, const float *y,
			int nseq, int seqlen)
{
	size_t rowb = sizeof(float) * (size_t)((int64_t)seqlen * b->c->hidden);
	int bs = b->sv.nseq;
	int i;

	for (i = 0; i < bs; i++) {
		int j = i + (int)(splitmix64(&b->rng) % (uint64_t)(nseq - i));
		int t = b->perm[i];
		int64_t off;

		b->perm[i] = b->perm[j];
		b->perm[j] = t;
		off = (int64_t)b->perm[i] * seqlen * b->c->hidden;
		memcpy((char *)b->xb + i * rowb, x + off, rowb);
		memcpy((char *)b->yb + i * rowb, y + off, rowb);
		if (!b->nex)
			continue;
		off = (int64_t)b->perm[i] * seqlen * b->c->topk;
		memcpy(b->selb + (int64_t)i * seqlen * b->c->topk, b->sel + off,
		       sizeof(int32_t) * (size_t)(seqlen * b->c->topk));
		memcpy(b->pb + (int64_t)i * seqlen * b->c->topk, b->p + off,
		       sizeof(float) * (size_t)(seqlen * b->c->topk));
	}
}

/* beta and the regularizer weight at step t (1-based), as BRECQ's
 * LinearTempDecay and LossFunction. */
static float brecq_beta(const struct qf_brecq_opts *o, int t, float *regw)
{
	double start = (double)o->warmup * o->iters;
	double rel;

	if (t < start) {
		*regw = 0;
		return o->beta_hi;
	}
	*regw = o->reg;
	rel = o->iters > start ? (t - start) / (o->iters - start) : 1;
	rel = rel > 1 ? 1 : rel;
	return (float)(o->beta_lo + (o->beta_hi - o->beta_lo) * (1 - rel));
}

/* One Adam step; *rec, *reg: the losses of this mini-batch. */
static int brecq_step(struct brecq *b, int t, double *rec, double *reg)
{
	const struct qf_tf_config *c = b->c;
	int64_t n = b->sv.ntok * c->hidden;
	double sum = 0;
	float f, regw, beta;
	int64_t i;
	int l;

	int ret;

	for (l = 0; l < QF_TF_NLINEAR; l++)
		if (b->quant[l])
			qf_adaround_soft(&b->ar[l], b->wsoft[l]);
	for (l = 0; l < b->nex; l++)
		if (b->edw[l])
			qf_adaround_soft(&b->ear[l], b->ewsoft[l]);
	ret = qf_tf_block_forward(c, &b->soft, b->xb, b->yh, &b->sv);
	if (ret < 0)
		return ret;
	f = (float)(2.0 / ((double)b->sv.ntok * b->norm));
	for (i = 0; i < n; i++) {
		float d = b->yh[i] - b->yb[i];

		sum += (double)d * d;
		b->yh[i] = f * d;	/* dL/dy */
	}
	*rec = sum / ((double)b->sv.ntok * b->norm);
	if (!isfinite(*rec))
		return QF_ENUMERIC;
	ret = qf_tf_block_backward(c, &b->soft, &b->sv, b->yh, b->dw);
	if (ret < 0)
		return ret;
	beta = brecq_beta(b->o, t, &regw);
	*reg = 0;
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		if (!b->quant[l])
			continue;
		*reg += qf_adaround_grad(&b->ar[l], b->dw[l], regw, beta,
					 b->dw[l]);
		qf_adaround_adam(&b->ar[l], b->dw[l], b->o->lr, t);
	}
	for (l = 0; l < b->nex; l++) {
		if (!b->edw[l])
			continue;
		*reg += qf_adaround_grad(&b->ear[l], b->edw[l], regw, beta,
					 b->edw[l]);
		qf_adaround_adam(&b->ear[l], b->edw[l], b->o->lr, t);
	}
	return 0;
}

/* Hard rounding into ly and the caller's buffers. */
static void brecq_finish(struct brecq *b, struct qf_tf_layer *ly,
			 uint8_t *q[QF_TF_NLINEAR],
			 uint16_t *scale_f16[QF_TF_NLINEAR],
			 int32_t *zero[QF_TF_NLINEAR])
{
	int l;

	for (l = 0; l < QF_TF_NLINEAR; l++) {
		struct qf_adaround *a = &b->ar[l];
		size_t ng = (size_t)(a->out * a->ngroups);

		if (!b->quant[l])
			continue;
		qf_adaround_hard(a, NULL, false, q ? q[l] : NULL, ly->w[l]);
		if (scale_f16 && scale_f16[l])
			memcpy(scale_f16[l], a->sc16, ng * sizeof(uint16_t));
		if (zero && zero[l])
			memcpy(zero[l], a->zero, ng * sizeof(int32_t));
	}
}

/* The experts' hard rounding (RTN where not learned) into ly and ex. */
static void experts_finish(struct brecq *b, struct qf_tf_layer *ly,
			   const struct qf_brecq_experts *ex)
{
	int k;

	for (k = 0; k < b->nex; k++) {
		struct qf_adaround *a = &b->ear[k];
		size_t ng = (size_t)(a->out * a->ngroups);
		float *w = ly->moe->w[k];

		if (!b->ewsoft[k])
			continue;
		qf_adaround_hard(a, w, !b->edw[k], ex->q ? ex->q[k] : NULL, w);
		if (ex->scale_f16 && ex->scale_f16[k])
			memcpy(ex->scale_f16[k], a->sc16, ng * sizeof(uint16_t));
		if (ex->zero && ex->zero[k])
			memcpy(ex->zero[k], a->zero, ng * sizeof(int32_t));
	}
}

int qf_brecq_block(const struct qf_tf_config *c, int layer,
		   struct qf_tf_layer *ly, const float *x, const float *y,
		   int nseq, int seqlen, const struct qf_brecq_opts *o,
		   uint8_t *q[QF_TF_NLINEAR],
		   uint16_t *scale_f16[QF_TF_NLINEAR],
		   int32_t *zero[QF_TF_NLINEAR],
		   struct qf_brecq_result *res)
{
	struct qf_tf_config lc;	/* the layer's window and rope base */
	struct brecq b;
	double t0 = now_s();
	double rec = 0, reg = 0;
	bool learn;
	int l, k, t, ret;

	qf_tf_config_layer(c, layer, &lc);
	c = &lc;
	memset(res, 0, sizeof(*res));
	ret = check_opts(c, ly, o, nseq, seqlen);
	if (ret < 0)
		return ret;
	memset(&b, 0, sizeof(b));
	b.c = c;
	b.o = o;
	ret = brecq_setup(&b, ly, x, y, nseq, seqlen);
	if (!ret && ly->moe)
		ret = experts_setup(&b, ly, layer, x, nseq, seqlen);
	if (ret < 0)
		goto out_free;
	res->norm = b.norm;
	for (l = 0; l < QF_TF_NLINEAR; l++)
		if (b.quant[l])
			qf_adaround_hard(&b.ar[l], ly->w[l], true, NULL,
					 b.wsoft[l]);
	ret = eval_mse(c, &b.soft, layer, x, y, nseq, seqlen, &res->mse_rtn);
	for (l = 0; l < QF_TF_NLINEAR && !b.quant[l]; l++)
		;
	for (k = 0; k < b.nex && !b.edw[k]; k++)
		;
	learn = l < QF_TF_NLINEAR || k < b.nex;
	for (t = 1; t <= o->iters && learn && ret == 0; t++) {
		brecq_batch(&b, x, y, nseq, seqlen);
		ret = brecq_step(&b, t, &rec, &reg);
		if (ret == 0 && o->progress &&
		    ((o->every > 0 && t % o->every == 0) || t == o->iters))
			ret = o->progress(o->arg, t, o->iters, rec, reg);
		res->iters = t;
	}
	if (ret)
		goto out_free;
	brecq_finish(&b, ly, q, scale_f16, zero);
	if (b.nex && o->moe)
		experts_finish(&b, ly, o->moe);
	ret = eval_mse(c, ly, layer, x, y, nseq, seqlen, &res->mse_final);
out_free:
	brecq_free(&b);
	res->seconds = now_s() - t0;
	return ret;
}
