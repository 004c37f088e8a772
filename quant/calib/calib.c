/*
 * calib.c - calibration's layer-by-layer driver: it runs the
 * calibration tokens (tokens.c) through the decoder, gathers the input
 * statistics of the linears (stats.c), lets a quantizer
 * replace each layer's weights, and continues with the quantized layer's
 * outputs (true sequential).
 *
 * Memory is bounded by one layer: its fp32 weights, the activations of
 * the calibration set (twice: the layer input is kept to re-run the layer
 * per stage), and the current stage's statistics; streamed in chunks of
 * sequences, the activations of a chunk, and of all tokens only the
 * layer input, once, in memory or (beyond a third of ops->mem_bytes) in
 * a temporary file read and written a chunk at a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib.h"

/* ------------------------------------------------------------------ */
/* the driver                                                         */

static const enum qf_tf_linear stage_qkv[] = { QF_TF_Q, QF_TF_K, QF_TF_V };
static const enum qf_tf_linear stage_o[] = { QF_TF_O };
static const enum qf_tf_linear stage_gu[] = { QF_TF_GATE, QF_TF_UP };
static const enum qf_tf_linear stage_down[] = { QF_TF_DOWN };

struct stage {
	const enum qf_tf_linear *lin;
	int n;
};

/* Every linear of a dense layer, for whole-layer quantizers. */
static const enum qf_tf_linear all_linears[QF_TF_NLINEAR] = {
	QF_TF_Q, QF_TF_K, QF_TF_V, QF_TF_O, QF_TF_GATE, QF_TF_UP, QF_TF_DOWN,
};

/* A layer's stages, each with the linears that share an input. */
static const struct stage layer_stages[] = {
	{ stage_qkv, 3 }, { stage_o, 1 }, { stage_gu, 2 }, { stage_down, 1 },
};

static void stats_free_all(struct qf_lin_stats *stats)
{
	int i;

	for (i = 0; i < QF_TF_NLINEAR; i++)
		qf_lin_stats_free(&stats[i]);
}

struct capture {
	const struct stage *st;		/* NULL: every stage, to the end */
	int n;				/* stages st[0..n), then stop */
	struct qf_lin_stats *stats;	/* [QF_TF_NLINEAR], by linear */
	double *seconds;		/* NULL or added to */
};

#define STAGE_DONE 1			/* hook: stop the layer here */

/* The first linear of each stage: the one whose input is accumulated. */
static bool stage_first(enum qf_tf_linear lin)
{
	return lin == QF_TF_Q || lin == QF_TF_O || lin == QF_TF_GATE ||
	       lin == QF_TF_DOWN;
}

/*
 * Accumulate the input of the stages' linears (q/k/v and gate/up share
 * theirs), then stop the layer after the last stage's: the rest is not
 * needed for these statistics.  Without stages, every stage's, and the
 * layer runs to its end.  (A MoE layer calls no DOWN hook: for down's
 * stage it runs to the end.)
 */
static int capture_hook(void *arg, int layer, enum qf_tf_linear lin,
			const float *x, int64_t ntok, int64_t in)
{
	struct capture *cap = arg;
	double t0 = qf_now();
	bool mine = !cap->st && stage_first(lin);
	int i;

	(void)layer, (void)in;
	for (i = 0; cap->st && i < cap->n; i++)
		mine |= lin == cap->st[i].lin[0];
	if (mine)
		qf_lin_stats_add(&cap->stats[lin], x, ntok);
	if (cap->seconds)
		*cap->seconds += qf_now() - t0;
	return cap->st && lin == cap->st[cap->n - 1].lin[0] ? STAGE_DONE : 0;
}

/* b = a (same width and Hessian or not; b's sample kept as allocated) */
static int stats_copy(struct qf_lin_stats *b, const struct qf_lin_stats *a)
{
	if (b->in != a->in || !a->h != !b->h)
		return -EINVAL;
	b->n = a->n;
	if (a->h && b->h != a->h)
		memcpy(b->h, a->h, (size_t)(a->in * a->in) * sizeof(float));
	memcpy(b->sum_abs, a->sum_abs, (size_t)a->in * sizeof(double));
	memcpy(b->sum_sq, a->sum_sq, (size_t)a->in * sizeof(double));
	if (a->xs && b->xs) {
		memcpy(b->xs, a->xs, (size_t)(a->nxs * a->in) * sizeof(float));
		b->nxs = a->nxs;
	}
	return 0;
}

/*
 * The shared input statistics of lin[0] for the stage's others: X^T X
 * lent where they have none of their own (stage_stats_init: the
 * quantizers give it back as it was), else copied.
 */
static int share_stats(const struct stage *st, struct qf_lin_stats *stats)
{
	struct qf_lin_stats *a = &stats[st->lin[0]];
	int i;

	for (i = 1; i < st->n; i++) {
		struct qf_lin_stats *b = &stats[st->lin[i]];

		if (!b->h && a->h) {
			b->h = a->h;
			b->h_borrowed = true;
		}
		if (stats_copy(b, a))
			return -EINVAL;
	}
	return 0;
}

/* Empty statistics for the stage's linears (stats zeroed). */
static int stage_stats_init(const struct qf_tf_config *c,
			    const struct stage *st,
			    const struct qf_calib_ops *ops, int seqlen,
			    struct qf_lin_stats *stats)
{
	int i, ret = 0;

	for (i = 0; i < st->n && !ret; i++) {
		/* one X^T X, the others lent it by share_stats */
		ret = qf_lin_stats_init(&stats[st->lin[i]],
					qf_tf_linear_in(c, st->lin[i]),
					ops->hessian && i == 0);
		/* X^T X a sequence at a time: the same sums, in the same
		 * order, however the sequences are chunked */
		stats[st->lin[i]].block = seqlen;
		if (!ret)
			ret = qf_lin_stats_sample(&stats[st->lin[i]],
					   ops->sample_rows);
	}
	return ret;
}

/* Accumulate the statistics of one stage's linears (stats zeroed). */
static int capture_stage(const struct qf_tf_config *c,
			 const struct qf_tf_layer *ly, int l,
			 const struct stage *st, const float *x_in, float *x,
			 const struct qf_calib *cs,
			 const struct qf_calib_ops *ops,
			 struct qf_lin_stats *stats)
{
	struct capture cap = { st, 1, stats, NULL };
	int64_t ntok = (int64_t)cs->nseq * cs->seqlen;
	int ret;

	ret = stage_stats_init(c, st, ops, cs->seqlen, stats);
	if (!ret) {
		memcpy(x, x_in, (size_t)(ntok * c->hidden) * sizeof(*x));
		ret = qf_tf_layer_forward(c, ly, l, x, cs->nseq, cs->seqlen,
					  capture_hook, &cap);
		if (ret == STAGE_DONE)
			ret = 0;
	}
	if (!ret)
		qf_lin_stats_finish(&stats[st->lin[0]]);
	if (!ret && st->n > 1)
		ret = share_stats(st, stats);
	return ret;
}

/* The MoE block's input rows into arg's buffer, then stop the layer. */
static int xn_hook(void *arg, int layer, enum qf_tf_linear lin,
		   const float *x, int64_t ntok, int64_t in)
{
	(void)layer;
	if (lin != QF_TF_GATE)
		return 0;
	memcpy(arg, x, (size_t)(ntok * in) * sizeof(float));
	return STAGE_DONE;
}

/* ops->quantize_moe of layer l on the block's input in the layer as
 * it is (before ops->quantize changes it) */
static int capture_moe(const struct qf_tf_config *c, struct qf_tf_layer *ly,
		       int l, const float *x_in, float *x,
		       const struct qf_calib *cs, float **xn)
{
	int64_t ntok = (int64_t)cs->nseq * cs->seqlen;
	int ret;

	*xn = malloc((size_t)(ntok * c->hidden) * sizeof(float));
	if (!*xn)
		return -ENOMEM;
	memcpy(x, x_in, (size_t)(ntok * c->hidden) * sizeof(*x));
	ret = qf_tf_layer_forward(c, ly, l, x, cs->nseq, cs->seqlen, xn_hook,
				  *xn);
	return ret == STAGE_DONE ? 0 : ret < 0 ? ret : -EINVAL;
}

/*
 * Not sequential: every stage's statistics come from the original layer,
 * then the quantizer runs on each stage.  (Sequential runs in one pass:
 * seq_hook below.)
 */
static int run_layer(const struct qf_tf_config *c, struct qf_tf_layer *ly,
		     int l, const struct stage *stages, int nstages,
		     const float *x_in, float *x, const struct qf_calib *cs,
		     const struct qf_calib_ops *ops, void *arg)
{
	struct qf_lin_stats stats[QF_TF_NLINEAR];
	float *xn = NULL;
	int s, ret = 0;

	memset(stats, 0, sizeof(stats));
	if (ly->moe && ops->quantize_moe)
		ret = capture_moe(c, ly, l, x_in, x, cs, &xn);
	for (s = 0; s < nstages && !ret; s++)
		ret = capture_stage(c, ly, l, &stages[s], x_in, x, cs, ops,
				    stats);
	qf_tf_scratch_drop();	/* the quantizer's peak without it */
	if (ops->whole_layer && !ret) {
		ret = ops->quantize(arg, l, ly, all_linears, QF_TF_NLINEAR,
				    stats);
	}
	for (s = 0; s < nstages && !ret && !ops->whole_layer; s++)
		ret = ops->quantize(arg, l, ly, stages[s].lin, stages[s].n,
				    stats);
	if (!ret && xn)
		ret = ops->quantize_moe(arg, l, ly, xn,
					(int64_t)cs->nseq * cs->seqlen);
	free(xn);
	stats_free_all(stats);
	return ret;
}

/*
 * True sequential in one pass: the forward calls the hook before each
 * linear with its exact input; the hook accumulates the statistics over
 * all calibration tokens, quantizes the stage's linears in place and
 * returns, and the layer continues with the quantized weights.  The
 * pass's output is the quantized layer's output.
 */
struct seqpass {
	const struct qf_tf_config *c;
	struct qf_tf_layer *ly;
	const struct qf_calib_ops *ops;
	void *arg;
	const float *xn;		/* MoE: the block's input, every token */
	int64_t ntok;
	int seqlen;
	struct qf_lin_stats all;	/* of xn, once: the gate fallback's */
};

static int seq_hook(void *arg, int layer, enum qf_tf_linear lin,
		    const float *x, int64_t ntok, int64_t in)
{
	static const struct stage st[] = {
		[QF_TF_Q] = { stage_qkv, 3 }, [QF_TF_O] = { stage_o, 1 },
		[QF_TF_GATE] = { stage_gu, 2 }, [QF_TF_DOWN] = { stage_down, 1 },
	};
	struct seqpass *sp = arg;
	struct qf_lin_stats stats[QF_TF_NLINEAR];
	int ret;

	if (lin == QF_TF_K || lin == QF_TF_V || lin == QF_TF_UP)
		return 0;	/* quantized with q / gate: same input */
	if (lin == QF_TF_GATE && sp->ly->moe) {
		sp->xn = x;	/* for expert_hook's fallback */
		sp->ntok = ntok;
		return 0;
	}
	memset(stats, 0, sizeof(stats));
	ret = stage_stats_init(sp->c, &st[lin], sp->ops, sp->seqlen, stats);
	if (!ret) {
		double t0 = qf_now();

		qf_lin_stats_add(&stats[lin], x, ntok);
		qf_lin_stats_finish(&stats[lin]);
		ret = share_stats(&st[lin], stats);
		if (sp->ops->stats_seconds)
			*sp->ops->stats_seconds += qf_now() - t0;
	}
	if (!ret)
		ret = sp->ops->quantize(sp->arg, layer, sp->ly, st[lin].lin,
					st[lin].n, stats);
	stats_free_all(stats);
	return ret;
}

/*
 * The fallback's rows for expert w's down projection: silu(x Wg^T) *
 * (x Wu^T) of every token x [ntok, hidden], with the expert's gate / up
 * as quantized, in chunks; into st.
 */
int qf_calib_expert_acts(const struct qf_tf_config *c, float *const *w,
			 const float *x, int64_t ntok, struct qf_lin_stats *st)
{
	int64_t mi = st->in, r0, n, i;
	float *g = malloc(sizeof(float) * (size_t)(256 * mi));
	float *u = malloc(sizeof(float) * (size_t)(256 * mi));

	for (r0 = 0; r0 < ntok && g && u; r0 += 256) {
		n = ntok - r0 < 256 ? ntok - r0 : 256;
		qf_sgemm(false, true, n, mi, c->hidden, 1.0f,
			 x + r0 * c->hidden, c->hidden, w[QF_MOE_GATE],
			 c->hidden, 0.0f, g, mi);
		qf_sgemm(false, true, n, mi, c->hidden, 1.0f,
			 x + r0 * c->hidden, c->hidden, w[QF_MOE_UP],
			 c->hidden, 0.0f, u, mi);
		for (i = 0; i < n * mi; i++)
			g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
		qf_lin_stats_add(st, g, n);
	}
	n = g && u ? 0 : -ENOMEM;
	free(g);
	free(u);
	return (int)n;
}

/*
 * MoE block of the sequential pass: expert e's routed rows x [n, in]
 * before its linears k (gate/up or down); statistics (the fallback's
 * below the input width: see struct qf_calib_ops), then the quantizer
 * replaces the weights the block goes on with.
 */
static int expert_hook(void *arg, int layer, int e, enum qf_moe_linear k,
		       const float *x, int64_t n, int64_t in)
{
	struct seqpass *sp = arg;
	struct qf_lin_stats st[2];
	float **w = qf_tf_moe_weights(sp->ly, e);
	int ns = k == QF_MOE_GATE ? 2 : 1, i, ret = 0;
	double t0 = qf_now();

	memset(st, 0, sizeof(st));
	if (!sp->ops->quantize_expert)
		return 0;
	if (!w || !sp->xn)
		return -EINVAL;
	for (i = 0; i < ns && !ret; i++)
		ret = qf_lin_stats_init(&st[i], in, sp->ops->hessian);
	/* (without a Hessian, any routed token will do: kq's imatrix) */
	if (!ret && n >= (sp->ops->hessian ? in : 1))
		qf_lin_stats_add(&st[0], x, n);
	else if (!ret && k == QF_MOE_GATE) {
		/* every token's: the same for all experts, summed once */
		if (!sp->all.in && !(ret = qf_lin_stats_init(&sp->all, in,
						sp->ops->hessian))) {
			qf_lin_stats_add(&sp->all, sp->xn, sp->ntok);
			qf_lin_stats_finish(&sp->all);
		}
		if (!ret)
			ret = stats_copy(&st[0], &sp->all);
	} else if (!ret)
		ret = qf_calib_expert_acts(sp->c, w, sp->xn, sp->ntok, &st[0]);
	if (!ret) {
		static const enum qf_tf_linear two[2] = { 0, 1 };

		qf_lin_stats_finish(&st[0]);	/* (idempotent: a copy's) */
		if (ns == 2)	/* stats indexed 0, 1: up shares gate's */
			ret = share_stats(&(struct stage){ two, 2 }, st);
	}
	if (sp->ops->stats_seconds)
		*sp->ops->stats_seconds += qf_now() - t0;
	if (!ret)
		ret = sp->ops->quantize_expert(sp->arg, layer, e, k, w, st, n);
	for (i = 0; i < ns; i++)
		qf_lin_stats_free(&st[i]);
	return ret;
}

/* ------------------------------------------------------------------ */
/* streamed layers: the calibration tokens in chunks of sequences      */

/*
 * Sequences per chunk: all of them when the activations of one pass over
 * every token (the layer's input twice and the forward's scratch) fit in
 * mem_bytes (QF_CALIB_MEM_BYTES when 0), no pass is repeated then; else
 * as many as keep a chunk's scratch and copy within a sixth of it.
 */
int qf_calib_chunk_seqs(const struct qf_tf_config *c, int nseq, int seqlen,
			int64_t mem_bytes)
{
	int64_t mem = mem_bytes > 0 ? mem_bytes : QF_CALIB_MEM_BYTES;
	int64_t row = (int64_t)sizeof(float) * c->hidden * seqlen;
	int64_t per = qf_tf_layer_scratch_bytes(c, seqlen) + row;
	int64_t n = mem / 6 / per, unit = QF_TF_ROWS, a = seqlen, b = unit;

	if ((per + row) * nseq <= mem)
		return nseq;
	/* chunks of a multiple of QF_TF_ROWS tokens: the bytes of one pass
	 * (unit: the fewest sequences that make one) */
	while (b) {			/* a = gcd(seqlen, QF_TF_ROWS) */
		int64_t t = a % b;

		a = b;
		b = t;
	}
	unit /= a;
	n = n / unit * unit;
	return n < unit ? (unit < nseq ? (int)unit : nseq) :
	       n > nseq ? nseq : (int)n;
}

struct stream {
	const struct qf_model *m;	/* the source (down first: reloads) */
	const struct qf_tf_config *c;
	struct qf_tf_layer *ly;
	int l;
	float *x;		/* [nseq * seqlen, hidden]: in, then out;
				 * NULL: in the file fd */
	int fd;			/* the spilled x, or -1 */
	float *tmp;		/* [cn * seqlen, hidden]: a chunk's copy */
	int nseq, seqlen, cn;
	const struct qf_calib_ops *ops;
	void *arg;
};

/* Sequences [s0, s0 + n) of x: into s->tmp (spilled), or where they
 * are. */
static int chunk_get(const struct stream *s, int s0, int n, float **xc)
{
	int64_t row = (int64_t)s->seqlen * s->c->hidden;
	size_t len = (size_t)(n * row) * sizeof(float);

	if (s->fd < 0) {
		*xc = s->x + s0 * row;
		return 0;
	}
	*xc = s->tmp;
	return qf_pread_all(s->fd, s->tmp, len, (uint64_t)(s0 * row) *
						  sizeof(float));
}

/* ... and back, when spilled (in memory, xc was x itself). */
static int chunk_put(const struct stream *s, int s0, int n, const float *xc)
{
	int64_t row = (int64_t)s->seqlen * s->c->hidden;

	return s->fd < 0 ? 0 :
	       qf_pwrite_all(s->fd, xc, (size_t)(n * row) * sizeof(float),
			     (uint64_t)(s0 * row) * sizeof(float));
}

/*
 * part of the layer over every chunk: on a copy with the hook (x stays
 * as it is), or in place (x moves on), with the hook when move is set.
 */
static int stream_pass_hook(const struct stream *s, int part,
			    struct capture *cap, bool move)
{
	int64_t row = (int64_t)s->seqlen * s->c->hidden;
	bool kept = qf_tf_scratch_keep(true);	/* chunks: one scratch */
	int s0, n, ret = 0;

	for (s0 = 0; s0 < s->nseq && !ret; s0 += n) {
		float *xc;

		n = s->nseq - s0 < s->cn ? s->nseq - s0 : s->cn;
		ret = chunk_get(s, s0, n, &xc);
		if (!ret && cap && !move && xc != s->tmp) {
			memcpy(s->tmp, xc, (size_t)(n * row) * sizeof(float));
			xc = s->tmp;
		}
		if (!ret)
			ret = qf_tf_layer_forward_part(s->c, s->ly, s->l, xc,
						       n, s->seqlen, part,
						       cap ? capture_hook :
							     NULL, cap);
		if (ret == STAGE_DONE)
			ret = 0;
		else if (!ret && (!cap || move))
			ret = chunk_put(s, s0, n, xc);
	}
	qf_tf_scratch_keep(kept);
	return ret;
}

static int stream_pass(const struct stream *s, int part,
		       struct capture *cap)
{
	return stream_pass_hook(s, part, cap, false);
}

/*
 * Finish the statistics of stages st[0..n), quantize their linears, free
 * the statistics.  A whole-layer method gets the stages' linears in one
 * call (all_linears holds them in stage order).
 */
static int stream_quantize(const struct stream *s, const struct stage *st,
			   int n, struct qf_lin_stats *stats)
{
	int i, first = 0, nlin = 0, ret = 0;

	if (s->cn < s->nseq)	/* the quantizer's peak without a chunk's */
		qf_tf_scratch_drop();
	for (i = 0; i < n && !ret; i++) {
		qf_lin_stats_finish(&stats[st[i].lin[0]]);
		ret = share_stats(&st[i], stats);
		nlin += st[i].n;
	}
	while (all_linears[first] != st[0].lin[0])
		first++;
	if (!ret && s->ops->whole_layer)
		ret = s->ops->quantize(s->arg, s->l, s->ly, all_linears + first,
				       nlin, stats);
	for (i = 0; i < n && !ret && !s->ops->whole_layer; i++)
		ret = s->ops->quantize(s->arg, s->l, s->ly, st[i].lin,
				       st[i].n, stats);
	stats_free_all(stats);
	return ret;
}

bool qf_calib_down_first(const struct qf_tf_config *c,
			 const struct qf_calib_ops *ops)
{
	int64_t mem = ops->mem_bytes > 0 ? ops->mem_bytes : QF_CALIB_MEM_BYTES;
	int64_t n = 0, in;
	int k;

	if (!ops->whole_layer || ops->unchanged || !ops->hessian || c->moe)
		return false;
	for (k = 0; k < QF_TF_NLINEAR; k++)
		n += qf_tf_linear_out(c, k) * qf_tf_linear_in(c, k);
	for (k = 0; k < 4; k++) {
		in = qf_tf_linear_in(c, layer_stages[k].lin[0]);
		n += in * in;
	}
	return n * (int64_t)sizeof(float) > mem / 2;
}

/*
 * A whole-layer method, down first (qf_calib_down_first): a pass to
 * down's input for its statistics (down's weights not held); down
 * alone (the other linears not held); the six others' statistics in a
 * pass to gate/up's input (they are read from the source again), the
 * six quantized; the quantized layer's pass moves x on.
 */
static int stream_down_first(const struct stream *s)
{
	static const struct stage *down = &layer_stages[3];
	struct qf_lin_stats stats[QF_TF_NLINEAR];
	struct capture cap = { down, 1, stats, s->ops->stats_seconds };
	int i, ret;

	memset(stats, 0, sizeof(stats));
	qf_tf_layer_drop(s->ly, QF_TF_DOWN, QF_TF_NLINEAR);
	ret = stage_stats_init(s->c, down, s->ops, s->seqlen, stats);
	if (!ret)
		ret = stream_pass(s, QF_TF_WHOLE_LAYER, &cap);
	qf_tf_layer_drop(s->ly, QF_TF_Q, QF_TF_DOWN);
	if (!ret)
		ret = qf_tf_layer_load_linears(s->m, s->c, s->l, QF_TF_DOWN,
					       QF_TF_NLINEAR, s->ly);
	if (!ret)
		ret = stream_quantize(s, down, 1, stats);
	if (!ret)
		ret = qf_tf_layer_load_linears(s->m, s->c, s->l, QF_TF_Q,
					       QF_TF_DOWN, s->ly);
	cap.st = layer_stages;
	cap.n = 3;
	for (i = 0; i < 3 && !ret; i++)
		ret = stage_stats_init(s->c, &layer_stages[i], s->ops,
				       s->seqlen, stats);
	if (!ret)
		ret = stream_pass(s, QF_TF_WHOLE_LAYER, &cap);
	if (!ret)
		ret = stream_quantize(s, layer_stages, 3, stats);
	stats_free_all(stats);
	return ret ? ret : stream_pass(s, QF_TF_WHOLE_LAYER, NULL);
}

/*
 * A dense layer in chunks, x in place.  Sequential: one pass per stage
 * on copies (the attention again for o's inputs), quantizing between
 * them; once o is quantized the attention's output is added to x for
 * good, so gate/up and down passes start from there; a last pass adds
 * the MLP's.  Not sequential: one pass collects every stage's
 * statistics of the layer as it is, then the quantizer, then the
 * quantized layer's pass (none when ops->unchanged: the statistics
 * pass moved x on).
 */
static int stream_layer(const struct stream *s, const struct stage *stages)
{
	struct qf_lin_stats stats[QF_TF_NLINEAR];
	struct capture cap = { NULL, 1, stats, s->ops->stats_seconds };
	int i, ret = 0;

	memset(stats, 0, sizeof(stats));
	if (!s->ops->sequential && qf_calib_down_first(s->c, s->ops))
		return stream_down_first(s);
	if (!s->ops->sequential) {
		for (i = 0; i < 4 && !ret; i++)
			ret = stage_stats_init(s->c, &stages[i], s->ops,
						       s->seqlen, stats);
		if (!ret)
			ret = stream_pass_hook(s, QF_TF_WHOLE_LAYER, &cap,
					       s->ops->unchanged);
		if (!ret)
			ret = stream_quantize(s, stages, 4, stats);
		else
			stats_free_all(stats);
		return ret || s->ops->unchanged ? ret :
		       stream_pass(s, QF_TF_WHOLE_LAYER, NULL);
	}
	for (i = 0; i < 4 && !ret; i++) {
		int part = i < 2 ? QF_TF_ATTN_HALF : QF_TF_MLP_HALF;

		if (i == 2) {	/* o quantized: the attention is final */
			ret = stream_pass(s, QF_TF_ATTN_HALF, NULL);
			/* once its output is in x for good, the
			 * attention's weights go */
			qf_tf_layer_drop(s->ly, QF_TF_Q, QF_TF_GATE);
		}
		cap.st = &stages[i];
		if (!ret)
			ret = stage_stats_init(s->c, &stages[i], s->ops,
						       s->seqlen, stats);
		if (!ret)
			ret = stream_pass(s, part, &cap);
		if (!ret)
			ret = stream_quantize(s, &stages[i], 1, stats);
		else
			stats_free_all(stats);
	}
	return ret ? ret : stream_pass(s, QF_TF_MLP_HALF, NULL);
}

/* The next layer's input in s->x: a dense layer streamed in chunks. */
static int run_streamed(struct stream *s, int l, struct qf_tf_layer *ly,
			bool cached)
{
	int ret;

	s->ly = ly;
	s->l = l;
	ret = cached ? stream_pass(s, QF_TF_WHOLE_LAYER, NULL) :
		       stream_layer(s, layer_stages);
	if (s->cn < s->nseq)	/* not beside the next layer's weights */
		qf_tf_scratch_drop();
	return ret;
}

/* The same in one pass over all tokens (see calib.h): x from x_in. */
static int run_whole_set(const struct qf_tf_config *c, int l,
			 struct qf_tf_layer *ly, bool cached,
			 const float *x_in, float *x, const struct qf_calib *cs,
			 const struct qf_calib_ops *ops, void *arg)
{
	int64_t ntok = (int64_t)cs->nseq * cs->seqlen;
	struct qf_tf_config lc;	/* the layer's window and rope base */
	int ret = 0;

	qf_tf_config_layer(c, l, &lc);
	memcpy(x, x_in, (size_t)(ntok * c->hidden) * sizeof(*x));
	if (!cached && ops->sequential) {
		struct seqpass sp = { .c = c, .ly = ly, .ops = ops,
					 .arg = arg, .seqlen = cs->seqlen };
		int w = lc.sliding_window > 0 &&
			lc.sliding_window < cs->seqlen ? lc.sliding_window : 0;

		/* quantize as the pass reaches each stage (and, in a MoE
		 * block, each expert) */
		ret = qf_tf_layer_forward_moe(&lc, ly, l, x, cs->nseq,
					      cs->seqlen, w, seq_hook,
					      expert_hook, &sp);
		qf_lin_stats_free(&sp.all);
		return ret;
	}
	if (!cached)
		ret = run_layer(c, ly, l, layer_stages, 4, x_in, x, cs, ops,
				arg);
	/* the quantized layer's output feeds the next one */
	if (!ret) {
		memcpy(x, x_in, (size_t)(ntok * c->hidden) * sizeof(*x));
		ret = qf_tf_layer_forward(c, ly, l, x, cs->nseq, cs->seqlen,
					  NULL, NULL);
	}
	return ret;
}

/* Whether the set is streamed through dense layers in chunks of cn. */
static bool streamed(const struct qf_tf_config *c, const struct qf_calib *cs,
		     const struct qf_calib_ops *ops, int cn)
{
	/* dense models, unless all of it fits one true sequential pass */
	return !ops->block && !c->moe && (cn < cs->nseq || !ops->sequential);
}

int64_t qf_calib_spill_bytes(const struct qf_tf_config *c,
			     const struct qf_calib *cs,
			     const struct qf_calib_ops *ops)
{
	int64_t mem = ops->mem_bytes > 0 ? ops->mem_bytes : QF_CALIB_MEM_BYTES;
	int64_t bytes = (int64_t)cs->nseq * cs->seqlen * c->hidden *
			(int64_t)sizeof(float);
	int cn = qf_calib_chunk_seqs(c, cs->nseq, cs->seqlen, ops->mem_bytes);

	if (ops->block)	/* the quantized path's input and the target */
		return 2 * bytes > mem / 3 ? 2 * bytes : 0;
	return streamed(c, cs, ops, cn) && bytes > mem / 3 ? bytes : 0;
}

/* The embeddings of the set, a chunk at a time, into the spill file. */
static int embed_spilled(const struct qf_model *m, const struct stream *s,
			 const struct qf_calib *cs)
{
	int s0, n, ret = 0;

	for (s0 = 0; s0 < s->nseq && !ret; s0 += n) {
		n = s->nseq - s0 < s->cn ? s->nseq - s0 : s->cn;
		ret = qf_tf_embed(m, s->c, cs->ids + (int64_t)s0 * s->seqlen,
				  (int64_t)n * s->seqlen, s->tmp);
		if (!ret)
			ret = chunk_put(s, s0, n, s->tmp);
	}
	return ret;
}

/* Layer l done: ops->layer_done with x, read back from the spill file
 * for the last layer (the head's statistics need it). */
static int layer_done(const struct stream *s, const struct qf_calib *cs,
		      int l, const float *x, double seconds)
{
	int64_t ntok = (int64_t)cs->nseq * cs->seqlen;
	size_t bytes = (size_t)(ntok * s->c->hidden) * sizeof(float);
	float *all = NULL;
	int ret = 0;

	if (!s->ops->layer_done)
		return 0;
	if (s->fd >= 0 && l == s->c->layers - 1) {
		all = malloc(bytes);
		ret = all ? qf_pread_all(s->fd, all, bytes, 0) : -ENOMEM;
		x = all;
	}
	if (!ret)
		ret = s->ops->layer_done(s->arg, l, x, ntok, seconds);
	free(all);
	return ret;
}

/*
 * ops->block: xq (the quantized path) and y (the full-precision path,
 * the layer's target once its layer ran on it in place), both moved on
 * in chunks (no scratch of all tokens); in files when spilled.
 */
static int run_blocks(const struct qf_model *m, const struct qf_tf_config *c,
		      const struct qf_calib *cs, const struct qf_calib_ops *ops,
		      void *arg)
{
	int64_t ntok = (int64_t)cs->nseq * cs->seqlen;
	int64_t row = (int64_t)cs->seqlen * c->hidden;
	size_t bytes = (size_t)(ntok * c->hidden) * sizeof(float);
	bool spill = qf_calib_spill_bytes(c, cs, ops) > 0;
	struct stream s = { .m = m, .c = c, .nseq = cs->nseq,
			    .seqlen = cs->seqlen,
			    .cn = qf_calib_chunk_seqs(c, cs->nseq, cs->seqlen,
						      ops->mem_bytes),
			    .fd = -1, .ops = ops, .arg = arg };
	struct qf_tf_seqs xq = { NULL, -1, row }, y = { NULL, -1, row };
	int l, ret = 0;

	if (spill) {
		xq.fd = qf_spill_open(ops->spill_dir);
		y.fd = xq.fd < 0 ? xq.fd : qf_spill_open(ops->spill_dir);
		ret = y.fd < 0 ? y.fd : 0;
		s.tmp = malloc((size_t)(s.cn * row) * sizeof(float));
	} else {
		xq.mem = malloc(bytes);
		y.mem = malloc(bytes);
	}
	if (!ret && (spill ? !s.tmp : !xq.mem || !y.mem))
		ret = -ENOMEM;
	/* the embeddings, into both */
	s.fd = xq.fd;
	s.x = xq.mem;
	if (!ret)
		ret = spill ? embed_spilled(m, &s, cs) :
			      qf_tf_embed(m, c, cs->ids, ntok, xq.mem);
	for (l = 0; l < cs->nseq && spill && !ret; l += s.cn) {
		int n = cs->nseq - l < s.cn ? cs->nseq - l : s.cn;

		ret = qf_tf_seqs_read(&xq, l, n, s.tmp);
		if (!ret)
			ret = qf_tf_seqs_write(&y, l, n, s.tmp);
	}
	if (!ret && !spill)
		memcpy(y.mem, xq.mem, bytes);
	for (l = 0; l < c->layers && !ret; l++) {
		struct qf_tf_layer ly;
		double t0 = qf_now();
		bool cached = false;

		ret = qf_tf_layer_load(m, c, l, &ly);
		if (ret < 0)
			break;
		s.ly = &ly;
		s.l = l;
		/* the target: the full-precision layer on its own input */
		s.x = y.mem;
		s.fd = y.fd;
		ret = stream_pass(&s, QF_TF_WHOLE_LAYER, NULL);
		if (!ret && ops->layer_cached)
			ret = ops->layer_cached(arg, l, &ly, &cached);
		if (!ret && !cached)
			ret = ops->block(arg, l, &ly, &xq, &y, cs->nseq,
					 cs->seqlen);
		s.x = xq.mem;
		s.fd = xq.fd;
		if (!ret)
			ret = stream_pass(&s, QF_TF_WHOLE_LAYER, NULL);
		qf_tf_layer_free(&ly);
		if (!ret)
			ret = layer_done(&s, cs, l, xq.mem, qf_now() - t0);
	}
	if (xq.fd >= 0)
		close(xq.fd);
	if (y.fd >= 0)
		close(y.fd);
	free(s.tmp);
	free(xq.mem);
	free(y.mem);
	return ret;
}

int qf_calib_run(const struct qf_model *m, const struct qf_tf_config *c,
		 const struct qf_calib *cs, const struct qf_calib_ops *ops,
		 void *arg)
{
	int64_t ntok = (int64_t)cs->nseq * cs->seqlen;
	size_t bytes = (size_t)(ntok * c->hidden) * sizeof(float);
	int cn = qf_calib_chunk_seqs(c, cs->nseq, cs->seqlen,
				     ops->mem_bytes);
	bool stream = streamed(c, cs, ops, cn);
	bool spill = qf_calib_spill_bytes(c, cs, ops) > 0;
	struct stream s = { .m = m, .c = c, .nseq = cs->nseq,
			    .seqlen = cs->seqlen, .cn = cn, .fd = -1,
			    .ops = ops, .arg = arg };
	float *x_in = NULL, *x;
	int l, ret;

	if (ops->block)
		return run_blocks(m, c, cs, ops, arg);
	if (spill && (s.fd = qf_spill_open(ops->spill_dir)) < 0)
		return s.fd;
	x_in = spill ? NULL : malloc(bytes);
	x = malloc(stream ? (size_t)cn * cs->seqlen * c->hidden *
			    sizeof(float) : bytes);
	if ((!spill && !x_in) || !x) {
		ret = -ENOMEM;
		goto out_free;
	}
	/*
	 * A pass's scratch serves the next pass.  All sequences in one
	 * chunk: it stays beside the quantizer (true sequential: it ran
	 * beside it in the hooks anyway) and the next layer's weights.
	 * Chunks: it serves the pass's next chunk only, so that the
	 * quantizer's peak and the layer's are what they were.
	 */
	qf_tf_scratch_keep(true);
	s.x = x_in;
	s.tmp = x;
	ret = spill ? embed_spilled(m, &s, cs) :
		      qf_tf_embed(m, c, cs->ids, ntok, x_in);
	for (l = 0; l < c->layers && !ret; l++) {
		struct qf_tf_layer ly;
		double t0 = qf_now();
		bool cached = false;
		float *tmp;

		ret = qf_tf_layer_load(m, c, l, &ly);
		if (ret < 0)
			break;
		/* a layer quantized before (resume): its weights, no stats */
		if (ops->layer_cached)
			ret = ops->layer_cached(arg, l, &ly, &cached);
		if (!ret && stream)
			ret = run_streamed(&s, l, &ly, cached);
		else if (!ret)
			ret = run_whole_set(c, l, &ly, cached, x_in, x, cs, ops,
					    arg);
		qf_tf_layer_free(&ly);
		if (!stream) {
			tmp = x_in, x_in = x, x = tmp;
			s.x = x_in;
			s.tmp = x;
		}
		if (!ret)
			ret = layer_done(&s, cs, l, x_in, qf_now() - t0);
	}
out_free:
	qf_tf_scratch_keep(false);
	if (s.fd >= 0)
		close(s.fd);
	free(x_in);
	free(x);
	return ret;
}
