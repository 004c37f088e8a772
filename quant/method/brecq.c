/*
 * brecq.c - BRECQ block reconstruction of one decoder block: AdaRound's
 * soft rounding variables of every quantized linear, learned jointly with
 * Adam against the full-precision block's output (brecq.h has the loss).
 *
 * Per step: the block's forward with W~ on a mini-batch of whole
 * sequences, its activations saved (tf_backward.c), and the hand-written
 * backward; as soon as it has a linear's dL/dW~ (and no longer reads its
 * weights), that linear's update: dL/dV through h'(V) plus the
 * regularizer, Adam, and W~ of the new V (adaround.c), so one gradient
 * buffer serves every linear.  Elementwise work is one pass per weight;
 * everything else is SGEMM.  Mini-batches are drawn with splitmix64 from
 * the seed: the same inputs and seed give the same codes.  The set (x,
 * y) and AdaRound's state may live in files (brecq.h: memory).
 *
 * A sparse MoE block (ly->moe): every expert linear gets its AdaRound
 * variables too, with the routing computed once from the block's input
 * and held fixed (tf_moe.h, brecq.h: struct qf_brecq_experts).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* Sequences of seqlen tokens per chunk of a pass over the whole set. */
static int eval_chunk(int nseq, int seqlen)
{
	int chunk = BRECQ_EVAL_TOKENS / seqlen;

	return chunk < 1 ? 1 : chunk > nseq ? nseq : chunk;
}

/* Mean of (block(x) - y)^2 over the whole set, in chunks of sequences. */
static int eval_mse(const struct qf_tf_config *c, const struct qf_tf_layer *ly,
		    int layer, const struct qf_tf_seqs *x,
		    const struct qf_tf_seqs *y, int nseq, int seqlen,
		    double *mse)
{
	int64_t hid = c->hidden;
	int chunk = eval_chunk(nseq, seqlen);
	size_t len = sizeof(float) * (size_t)((int64_t)chunk * seqlen * hid);
	float *buf = malloc(len), *yb = malloc(len);
	bool kept = qf_tf_scratch_keep(true);	/* chunks: one scratch */
	double sum = 0;
	int s0, ret = buf && yb ? 0 : -ENOMEM;

	for (s0 = 0; s0 < nseq && ret == 0; s0 += chunk) {
		int ns = nseq - s0 < chunk ? nseq - s0 : chunk;
		int64_t n = (int64_t)ns * seqlen * hid;
		int64_t i;

		ret = qf_tf_seqs_read(x, s0, ns, buf);
		if (!ret)
			ret = qf_tf_seqs_read(y, s0, ns, yb);
		if (!ret)
			ret = qf_tf_layer_forward(c, ly, layer, buf, ns,
						  seqlen, NULL, NULL);
		for (i = 0; i < n && ret == 0; i++) {
			double d = (double)buf[i] - yb[i];

			sum += d * d;
		}
	}
	qf_tf_scratch_keep(kept);
	free(buf);
	free(yb);
	*mse = sum / ((double)nseq * seqlen * hid);
	return ret;
}

/* Everything one reconstruction holds. */
struct brecq {
	const struct qf_tf_config *c;
	const struct qf_brecq_opts *o;
	struct qf_adaround ar[QF_TF_NLINEAR];
	bool quant[QF_TF_NLINEAR];
	struct qf_tf_layer soft;	/* ly: W~ in its quantized linears */
	float *dw[QF_TF_NLINEAR];	/* (out, in) dL/dW~, then dL/dV:
					 * dwbuf for each quantized one */
	float *dwbuf;
	int fd;				/* the spilled state, or -1 */
	int64_t spilled;		/* its bytes */
	/* the step under way (dw_done) */
	int t;
	float regw, beta;
	double regl[QF_TF_NLINEAR];	/* the regularizer's sums */
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

/* What only the Adam steps use. */
static void train_free(struct brecq *b)
{
	free(b->dwbuf);
	qf_tf_saved_free(&b->sv);
	free(b->xb);
	free(b->yb);
	free(b->yh);
	b->dwbuf = b->xb = b->yb = b->yh = NULL;
}

static void brecq_free(struct brecq *b)
{
	int l;

	for (l = 0; l < QF_TF_NLINEAR; l++)
		qf_adaround_free(&b->ar[l]);
	train_free(b);
	if (b->fd >= 0)
		close(b->fd);
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
		     int layer, const struct qf_tf_seqs *x, int nseq,
		     int seqlen)
{
	int64_t hid = b->c->hidden, k = b->c->topk;
	int64_t ntok = (int64_t)nseq * seqlen;
	int chunk = eval_chunk(nseq, seqlen);
	struct route_ctx r = { b, ly->moe, 0 };
	float *buf;
	int s0, ret = 0;

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
		ret = qf_tf_seqs_read(x, s0, ns, buf);
		if (!ret)
			ret = qf_tf_layer_forward(b->c, ly, layer, buf, ns,
						  seqlen, route_hook, &r);
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

/* Bytes of V and the Adam moments of every linear BRECQ learns. */
static int64_t state_bytes(const struct brecq *b, const struct qf_tf_layer *ly)
{
	const struct qf_brecq_experts *ex = b->o->moe;
	int64_t n = 0, out, in;
	int l;

	for (l = 0; l < QF_TF_NLINEAR; l++)
		if (b->o->qp[l].bits != 16) {
			lin_dims(b->c, l, &out, &in);
			n += out * in;
		}
	for (l = 0; ly->moe && ex && l < ly->moe->nw * QF_MOE_NLINEAR; l++)
		if (ex->qp[l].bits != 16) {
			expert_dims(b->c, l, &out, &in);
			n += out * in;
		}
	return 12 * n;
}

/* The file for V and the moments when they take more than half of
 * o->mem_bytes. */
static int spill_open(struct brecq *b, const struct qf_tf_layer *ly)
{
	int64_t bytes = state_bytes(b, ly);

	if (b->o->mem_bytes <= 0 || bytes <= b->o->mem_bytes / 2)
		return 0;
	b->fd = qf_spill_open(b->o->spill_dir);
	return b->fd < 0 ? b->fd : 0;
}

/* a's V and moments into the file, when there is one. */
static int spill(struct brecq *b, struct qf_adaround *a)
{
	uint64_t off = (uint64_t)b->spilled;
	int ret;

	if (b->fd < 0)
		return 0;
	ret = qf_adaround_spill(a, b->fd, &off);
	b->spilled = (int64_t)off;
	return ret;
}

/*
 * A MoE block's experts: the routing, and AdaRound of each quantized
 * expert linear; those of experts routed no token hold their RTN W~ and
 * are not learned.
 */
static int experts_setup(struct brecq *b, const struct qf_tf_layer *ly,
			 int layer, const struct qf_tf_seqs *x, int nseq,
			 int seqlen)
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
			ret = qf_adaround_hard(&b->ear[k], w, true, NULL,
					       b->ewsoft[k]);
		if (!ret && b->edw[k])
			ret = spill(b, &b->ear[k]);
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

/* sigma^2: the mean square of the block's update y - x over the set. */
static int update_norm(struct brecq *b, const struct qf_tf_seqs *x,
		       const struct qf_tf_seqs *y, int nseq, int seqlen)
{
	int64_t hid = b->c->hidden;
	int chunk = eval_chunk(nseq, seqlen);
	size_t len = sizeof(float) * (size_t)((int64_t)chunk * seqlen * hid);
	float *xb = malloc(len), *yb = malloc(len);
	double ss = 0;
	int s0, ret = xb && yb ? 0 : -ENOMEM;

	for (s0 = 0; s0 < nseq && !ret; s0 += chunk) {
		int ns = nseq - s0 < chunk ? nseq - s0 : chunk;
		int64_t i, n = (int64_t)ns * seqlen * hid;

		ret = qf_tf_seqs_read(x, s0, ns, xb);
		if (!ret)
			ret = qf_tf_seqs_read(y, s0, ns, yb);
		for (i = 0; i < n && !ret; i++) {
			double d = (double)yb[i] - xb[i];

			ss += d * d;
		}
	}
	free(xb);
	free(yb);
	b->norm = ss / ((double)nseq * seqlen * hid);
	if (!(b->norm > 0) || !isfinite(b->norm))
		b->norm = 1;
	return ret;
}

static int brecq_setup(struct brecq *b, const struct qf_tf_layer *ly,
		       const struct qf_tf_seqs *x, const struct qf_tf_seqs *y,
		       int nseq, int seqlen)
{
	int64_t hid = b->c->hidden;
	int bs = b->o->batch_seqs < nseq ? b->o->batch_seqs : nseq;
	int64_t tb = (int64_t)bs * seqlen * hid;
	int64_t i, out, in, big = 0;
	int l, ret;

	b->soft = *ly;
	ret = spill_open(b, ly);
	for (l = 0; l < QF_TF_NLINEAR && !ret; l++) {
		if (b->o->qp[l].bits == 16)
			continue;
		lin_dims(b->c, l, &out, &in);
		ret = qf_adaround_init(&b->ar[l], ly->w[l], out, in,
				       &b->o->qp[l]);
		if (!ret)
			ret = spill(b, &b->ar[l]);
		if (ret < 0)
			return ret;
		b->quant[l] = true;
		big = out * in > big ? out * in : big;
	}
	/* one dL/dW~ for all: each is used up as the backward makes it */
	if (big && !(b->dwbuf = malloc(sizeof(float) * (size_t)big)))
		return -ENOMEM;
	for (l = 0; l < QF_TF_NLINEAR; l++)
		b->dw[l] = b->quant[l] ? b->dwbuf : NULL;
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
	b->rng = b->o->seed;
	return update_norm(b, x, y, nseq, seqlen);
}

/* Draw the mini-batch: bs distinct sequences (partial Fisher-Yates). */
static int brecq_batch(struct brecq *b, const struct qf_tf_seqs *x,
		       const struct qf_tf_seqs *y, int nseq, int seqlen)
{
	int64_t row = (int64_t)seqlen * b->c->hidden;
	int bs = b->sv.nseq;
	int i, ret = 0;

	for (i = 0; i < bs && !ret; i++) {
		int j = i + (int)(splitmix64(&b->rng) % (uint64_t)(nseq - i));
		int t = b->perm[i];
		int64_t off;

		b->perm[i] = b->perm[j];
		b->perm[j] = t;
		ret = qf_tf_seqs_read(x, b->perm[i], 1, b->xb + i * row);
		if (!ret)
			ret = qf_tf_seqs_read(y, b->perm[i], 1,
					      b->yb + i * row);
		if (!b->nex)
			continue;
		off = (int64_t)b->perm[i] * seqlen * b->c->topk;
		memcpy(b->selb + (int64_t)i * seqlen * b->c->topk, b->sel + off,
		       sizeof(int32_t) * (size_t)(seqlen * b->c->topk));
		memcpy(b->pb + (int64_t)i * seqlen * b->c->topk, b->p + off,
		       sizeof(float) * (size_t)(seqlen * b->c->topk));
	}
	return ret;
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

/* Linear l's dL/dW~ is ready (tf_backward.h): its update, W~ anew. */
static int dw_done(void *arg, int l, float *dw)
{
	struct brecq *b = arg;

	return qf_adaround_step(&b->ar[l], dw, b->regw, b->beta, b->o->lr,
				b->t, b->soft.w[l], &b->regl[l]);
}

/* One Adam step; *rec, *reg: the losses of this mini-batch. */
static int brecq_step(struct brecq *b, int t, double *rec, double *reg)
{
	const struct qf_tf_config *c = b->c;
	int64_t n = b->sv.ntok * c->hidden;
	double sum = 0, r;
	float f;
	int64_t i;
	int l, ret;

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
	b->t = t;
	b->beta = brecq_beta(b->o, t, &b->regw);
	b->sv.dw_done = dw_done;
	b->sv.dw_arg = b;
	ret = qf_tf_block_backward(c, &b->soft, &b->sv, b->yh, b->dw);
	if (ret)
		return ret;
	*reg = 0;
	for (l = 0; l < QF_TF_NLINEAR; l++)
		if (b->quant[l])
			*reg += b->regw * b->regl[l];
	for (l = 0; l < b->nex && !ret; l++) {
		if (!b->edw[l])
			continue;
		ret = qf_adaround_step(&b->ear[l], b->edw[l], b->regw,
				       b->beta, b->o->lr, t, b->ewsoft[l], &r);
		*reg += b->regw * r;
	}
	return ret;
}

/* Hard rounding into ly and the caller's buffers. */
static int brecq_finish(struct brecq *b, struct qf_tf_layer *ly,
			uint8_t *q[QF_TF_NLINEAR],
			uint16_t *scale_f16[QF_TF_NLINEAR],
			int32_t *zero[QF_TF_NLINEAR])
{
	int l, ret = 0;

	for (l = 0; l < QF_TF_NLINEAR && !ret; l++) {
		struct qf_adaround *a = &b->ar[l];
		size_t ng = (size_t)(a->out * a->ngroups);

		if (!b->quant[l])
			continue;
		ret = qf_adaround_hard(a, NULL, false, q ? q[l] : NULL,
				       ly->w[l]);
		if (scale_f16 && scale_f16[l])
			memcpy(scale_f16[l], a->sc16, ng * sizeof(uint16_t));
		if (zero && zero[l])
			memcpy(zero[l], a->zero, ng * sizeof(int32_t));
	}
	return ret;
}

/* The experts' hard rounding (RTN where not learned) into ly and ex. */
static int experts_finish(struct brecq *b, struct qf_tf_layer *ly,
			  const struct qf_brecq_experts *ex)
{
	int k, ret = 0;

	for (k = 0; k < b->nex && !ret; k++) {
		struct qf_adaround *a = &b->ear[k];
		size_t ng = (size_t)(a->out * a->ngroups);
		float *w = ly->moe->w[k];

		if (!b->ewsoft[k])
			continue;
		ret = qf_adaround_hard(a, w, !b->edw[k],
				       ex->q ? ex->q[k] : NULL, w);
		if (ex->scale_f16 && ex->scale_f16[k])
			memcpy(ex->scale_f16[k], a->sc16, ng * sizeof(uint16_t));
		if (ex->zero && ex->zero[k])
			memcpy(ex->zero[k], a->zero, ng * sizeof(int32_t));
	}
	return ret;
}

/* W~ of the initial V in every linear learned. */
static int brecq_soft_init(struct brecq *b)
{
	int l, ret = 0;

	for (l = 0; l < QF_TF_NLINEAR && !ret; l++)
		if (b->quant[l])
			ret = qf_adaround_soft_any(&b->ar[l], b->soft.w[l]);
	for (l = 0; l < b->nex && !ret; l++)
		if (b->edw[l])
			ret = qf_adaround_soft_any(&b->ear[l], b->ewsoft[l]);
	return ret;
}

int qf_brecq_block(const struct qf_tf_config *c, int layer,
		   struct qf_tf_layer *ly, const struct qf_tf_seqs *x,
		   const struct qf_tf_seqs *y, int nseq, int seqlen,
		   const struct qf_brecq_opts *o,
		   uint8_t *q[QF_TF_NLINEAR],
		   uint16_t *scale_f16[QF_TF_NLINEAR],
		   int32_t *zero[QF_TF_NLINEAR],
		   struct qf_brecq_result *res)
{
	struct qf_tf_config lc;	/* the layer's window and rope base */
	struct brecq b;
	double t0 = now_s(), t1;
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
	b.fd = -1;
	ret = brecq_setup(&b, ly, x, y, nseq, seqlen);
	if (!ret && ly->moe)
		ret = experts_setup(&b, ly, layer, x, nseq, seqlen);
	if (ret < 0)
		goto out_free;
	res->norm = b.norm;
	/* round to nearest first, in ly's own buffers (W~ from here on) */
	for (l = 0; l < QF_TF_NLINEAR && !ret; l++)
		if (b.quant[l])
			ret = qf_adaround_hard(&b.ar[l], ly->w[l], true, NULL,
					       ly->w[l]);
	if (!ret)
		ret = eval_mse(c, &b.soft, layer, x, y, nseq, seqlen,
			       &res->mse_rtn);
	res->spilled = b.spilled;
	for (l = 0; l < QF_TF_NLINEAR && !b.quant[l]; l++)
		;
	for (k = 0; k < b.nex && !b.edw[k]; k++)
		;
	learn = l < QF_TF_NLINEAR || k < b.nex;
	if (!ret && learn)
		ret = brecq_soft_init(&b);
	t1 = now_s();
	for (t = 1; t <= o->iters && learn && ret == 0; t++) {
		ret = brecq_batch(&b, x, y, nseq, seqlen);
		if (!ret)
			ret = brecq_step(&b, t, &rec, &reg);
		if (ret == 0 && o->progress &&
		    ((o->every > 0 && t % o->every == 0) || t == o->iters))
			ret = o->progress(o->arg, t, o->iters, rec, reg);
		res->iters = t;
	}
	res->step_seconds = now_s() - t1;
	train_free(&b);		/* the steps' memory, before the rest's */
	if (!ret)
		ret = brecq_finish(&b, ly, q, scale_f16, zero);
	if (!ret && b.nex && o->moe)
		ret = experts_finish(&b, ly, o->moe);
	for (l = 0; l < QF_TF_NLINEAR; l++)
		qf_adaround_free(&b.ar[l]);
	if (!ret)
		ret = eval_mse(c, ly, layer, x, y, nseq, seqlen,
			       &res->mse_final);
out_free:
	brecq_free(&b);
	res->seconds = now_s() - t0;
	return ret;
}
