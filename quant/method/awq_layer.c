/*
 * awq_layer.c - AWQ of one decoder layer, on the calibration statistics
 * of its linears' inputs (quant/calib/calib.c, not sequential: every statistic
 * comes from the layer as it was).
 *
 * Order, as AutoAWQ: search the four scale groups' scales on the original
 * weights (q/k/v, o, gate/up, down), fold them all in, clip every linear
 * but q/k, round to nearest with the AWQ grid, correct the rounding
 * (heuristic flips), optionally refine q/k against the attention scores
 * (ReFlip).  A scale folds into what feeds the group's input: the norm
 * before q/k/v and before gate/up, the rows of v_proj before o_proj (only
 * when they correspond one to one: no GQA and no v bias), the rows of
 * up_proj before down_proj, so the unquantized layer computes exactly
 * what it did.  Statistics follow the scales: H becomes
 * diag(1/s) H diag(1/s), the input sample x / s.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "method.h"

/* Columns of w [out, in] times s; H and the sample divided by s. */
static void scale_in(float *w, int64_t out, int64_t in, const float *s)
{
	int64_t r, j;

	for (r = 0; r < out; r++)
		for (j = 0; j < in; j++)
			w[r * in + j] *= s[j];
}

/* (a borrowed X^T X is its lender's, scaled with it: the same input) */
void qf_awq_scale_stats(struct qf_lin_stats *st, const float *s)
{
	int64_t in = st->in, i, j;

	for (i = 0; i < in && !st->h_borrowed; i++)
		for (j = 0; j < in; j++)
			st->h[i * in + j] /= s[i] * s[j];
	for (i = 0; i < st->nxs; i++)
		for (j = 0; j < in; j++)
			st->xs[i * in + j] /= s[j];
	for (j = 0; j < in; j++) {
		st->sum_abs[j] /= s[j];
		st->sum_sq[j] /= (double)s[j] * s[j];
	}
}

void qf_awq_salience(const struct qf_lin_stats *st, bool l2, float *sal)
{
	int64_t j;
	double n = st->n > 0 ? (double)st->n : 1;

	for (j = 0; j < st->in; j++)
		sal[j] = (float)(l2 ? sqrt(st->sum_sq[j] / n) :
				 st->sum_abs[j] / n);
}

void qf_awq_deq(const uint8_t *q, const uint16_t *sc, const int32_t *zero,
		int64_t out, int64_t in, int64_t gs, float *w)
{
	int64_t ng = (in + gs - 1) / gs, r, j;

	for (r = 0; r < out; r++)
		for (j = 0; j < in; j++) {
			int64_t g = r * ng + j / gs;

			w[r * in + j] = qf_f16_to_f32(sc[g]) *
					((float)q[r * in + j] - (float)zero[g]);
		}
}

/*
 * Linear k's codes final: its fake-quantized weights into ly, its error
 * in the scaled domain against *w0 (the weights before clipping), which
 * is freed.
 */
static void quantized(const struct qf_tf_config *c, struct qf_tf_layer *ly,
		      int k, const struct qf_awq_opts *o,
		      struct qf_awq_linear_res *lr,
		      const struct qf_lin_stats *stats, float **w0)
{
	int64_t out = qf_tf_linear_out(c, k), in = stats[k].in;

	qf_awq_deq(lr->q, lr->sc, lr->zero, out, in,
		   o->group >= in ? in : o->group, ly->w[k]);
	lr->loss = qf_awq_rel_err(*w0, ly->w[k], out, in, stats[k].h);
	free(*w0);
	*w0 = NULL;
}

struct scale_group {
	enum qf_tf_linear lin[3];
	int n;
	enum qf_tf_linear stats;	/* whose input statistics */
};

static const struct scale_group qkv = {
	{ QF_TF_Q, QF_TF_K, QF_TF_V }, 3, QF_TF_Q };
static const struct scale_group og = { { QF_TF_O }, 1, QF_TF_O };
static const struct scale_group gu = {
	{ QF_TF_GATE, QF_TF_UP }, 2, QF_TF_GATE };
static const struct scale_group dn = { { QF_TF_DOWN }, 1, QF_TF_DOWN };

/* Search one group's scales (res->lin[].alpha set); s [in]. */
static int search(const struct qf_tf_config *c, struct qf_tf_layer *ly,
		  struct qf_lin_stats *stats, const struct scale_group *sg,
		  const struct qf_awq_opts *o, bool l2,
		  struct qf_awq_layer_res *res, float *s)
{
	const struct qf_lin_stats *st = &stats[sg->stats];
	const float *w[3];
	int64_t out[3];
	float *sal = malloc((size_t)st->in * sizeof(float));
	double alpha = 0;
	int i, ret;

	if (!sal)
		return -ENOMEM;
	qf_awq_salience(st, l2, sal);
	for (i = 0; i < sg->n; i++) {
		w[i] = ly->w[sg->lin[i]];
		out[i] = qf_tf_linear_out(c, sg->lin[i]);
	}
	ret = qf_awq_search_scale(w, out, sg->n, st->in, sal, st->h, o, s,
				  &alpha, NULL, NULL);
	for (i = 0; i < sg->n && !ret; i++)
		res->lin[sg->lin[i]].alpha = alpha;
	free(sal);
	return ret;
}

/*
 * Fold the searched scales s[4] into what feeds each group's input (the
 * part's: down's scales go into down's columns with down, into up's rows
 * with the rest).
 */
static void fold_scales(const struct qf_tf_config *c, struct qf_tf_layer *ly,
			struct qf_lin_stats *stats,
			const struct qf_awq_layer_opts *lo, bool fold_o,
			float *const s[4])
{
	const bool *qz = lo->quantize;
	bool rest = lo->part != QF_AWQ_DOWN, down = lo->part != QF_AWQ_REST;
	int64_t r, j;
	int k;

	if (rest && lo->fold_in) {
		for (j = 0; j < c->hidden; j++)
			ly->in_norm[j] /= s[0][j];
		for (k = 0; k < 3; k++) {
			scale_in(ly->w[qkv.lin[k]],
				 qf_tf_linear_out(c, qkv.lin[k]), c->hidden,
				 s[0]);
			qf_awq_scale_stats(&stats[qkv.lin[k]], s[0]);
		}
	}
	if (rest && fold_o) {
		int64_t in_v = stats[QF_TF_V].in;

		for (r = 0; r < qf_tf_linear_out(c, QF_TF_V); r++)
			for (j = 0; j < in_v; j++)
				ly->w[QF_TF_V][r * in_v + j] /= s[1][r];
		scale_in(ly->w[QF_TF_O], c->hidden, stats[QF_TF_O].in, s[1]);
		qf_awq_scale_stats(&stats[QF_TF_O], s[1]);
	}
	if (rest && lo->fold_post) {
		for (j = 0; j < c->hidden; j++)
			ly->post_norm[j] /= s[2][j];
		for (k = 0; k < 2; k++) {
			scale_in(ly->w[gu.lin[k]], c->inter, c->hidden, s[2]);
			qf_awq_scale_stats(&stats[gu.lin[k]], s[2]);
		}
	}
	if (!qz[QF_TF_UP] || !qz[QF_TF_DOWN])
		return;
	for (r = 0; rest && r < c->inter; r++)
		for (j = 0; j < c->hidden; j++)
			ly->w[QF_TF_UP][r * c->hidden + j] /= s[3][r];
	if (down) {
		scale_in(ly->w[QF_TF_DOWN], c->hidden, c->inter, s[3]);
		qf_awq_scale_stats(&stats[QF_TF_DOWN], s[3]);
	}
}

/* ReFlip of the rounded q/k against the attention scores. */
static int reflip_qk(const struct qf_tf_config *c, struct qf_tf_layer *ly,
		     struct qf_lin_stats *stats, const struct qf_awq_opts *o,
		     const struct qf_awq_layer_opts *lo,
		     struct qf_awq_layer_res *res)
{
	const struct qf_lin_stats *st = &stats[QF_TF_Q];
	struct qf_reflip_opts ro = {
		.heads = c->heads, .kv_heads = c->kv_heads,
		.head_dim = c->head_dim, .max_flip_pct = 0.05f,
		.critical_dim_pct = 0.15f,
	};
	float *sal = malloc((size_t)st->in * sizeof(float));
	int ret;

	ret = sal && st->nxs > 0 ? 0 : -ENOMEM;
	if (!ret) {
		qf_awq_salience(st, lo->l2, sal);
		ret = qf_awq_reflip(ly->w[QF_TF_Q], ly->w[QF_TF_K], st->in,
				    st->xs, st->nxs, sal, o, &ro,
				    res->lin[QF_TF_Q].q, res->lin[QF_TF_Q].sc,
				    res->lin[QF_TF_Q].zero,
				    res->lin[QF_TF_K].q, res->lin[QF_TF_K].sc,
				    res->lin[QF_TF_K].zero, &res->score_before,
				    &res->score_after, &res->reflips);
	}
	free(sal);
	return ret;
}

int qf_awq_layer(const struct qf_tf_config *c, struct qf_tf_layer *ly,
		 struct qf_lin_stats *stats, const struct qf_awq_opts *o,
		 const struct qf_awq_layer_opts *lo,
		 struct qf_awq_layer_res *res)
{
	const bool *qz = lo->quantize;
	/* down's scales, searched with down, go into up's rows too */
	bool down_s = qz[QF_TF_UP] && qz[QF_TF_DOWN];
	bool rest = lo->part != QF_AWQ_DOWN, fold_o, mine[QF_TF_NLINEAR];
	float *s[4] = { NULL }, *w0[QF_TF_NLINEAR] = { NULL };
	size_t slen = (size_t)(c->hidden > c->inter ? c->hidden : c->inter) +
		      (size_t)c->heads * c->head_dim;
	int k, ret = 0;
	double t0 = qf_now(), t1;

	for (k = 0; k < QF_TF_NLINEAR; k++) {
		mine[k] = lo->part == QF_AWQ_ALL ||
			  rest == (k != QF_TF_DOWN);
		if (mine[k])
			res->lin[k].alpha = -1;
		if (mine[k] && qz[k] && (!stats[k].h || stats[k].in <= 0))
			return -EINVAL;
	}
	if (lo->part == QF_AWQ_REST && down_s && !res->s_down)
		return -EINVAL;
	for (k = 0; k < 4; k++)
		s[k] = k == 3 && lo->part == QF_AWQ_REST ? res->s_down :
		       malloc(slen * sizeof(float));
	if (lo->part == QF_AWQ_DOWN)
		free(res->s_down);	/* an earlier layer's, left by an error */
	if (lo->part != QF_AWQ_ALL)
		res->s_down = NULL;	/* REST: s[3] now */
	if (!s[0] || !s[1] || !s[2] || (!s[3] && down_s)) {
		ret = -ENOMEM;
		goto out_free;
	}

	/* round to nearest, no scales: the reference for the record */
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
		struct qf_awq_linear_res *lr = &res->lin[k];
		int64_t out = qf_tf_linear_out(c, k), in = stats[k].in;

		if (!mine[k] || !qz[k] || lo->fold_only)
			continue;
		ret = qf_awq_rtn(ly->w[k], out, in, o, lr->q, lr->sc, lr->zero);
		if (!ret)
			lr->loss_rtn = qf_awq_rel_err_codes(ly->w[k], lr->q,
				lr->sc, lr->zero, o->group >= in ? in : o->group,
				out, in, stats[k].h);
	}

	res->t.rtn_ref += qf_now() - t0;
	t0 = qf_now();

	/* 1. scales, searched on the layer as it is */
	fold_o = qz[QF_TF_V] && qz[QF_TF_O] && !ly->b[QF_TF_V] &&
		 c->heads == c->kv_heads;
	if (!ret && rest && lo->fold_in)
		ret = search(c, ly, stats, &qkv, o, lo->l2, res, s[0]);
	if (!ret && rest && fold_o)
		ret = search(c, ly, stats, &og, o, lo->l2, res, s[1]);
	if (!ret && rest && lo->fold_post)
		ret = search(c, ly, stats, &gu, o, lo->l2, res, s[2]);
	if (!ret && mine[QF_TF_DOWN] && down_s)
		ret = search(c, ly, stats, &dn, o, lo->l2, res, s[3]);
	res->t.search += qf_now() - t0;
	if (ret)
		goto out_free;

	/* 2. fold them in: the fp layer computes the same function */
	fold_scales(c, ly, stats, lo, fold_o, s);

	if (lo->fold_only)
		goto out_free;

	/* 3. clip (not q/k: their errors meet in the scores), round, flip */
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
		struct qf_awq_linear_res *lr = &res->lin[k];
		int64_t out = qf_tf_linear_out(c, k), in = stats[k].in;

		if (!mine[k] || !qz[k])
			continue;
		w0[k] = malloc((size_t)(out * in) * sizeof(float));
		if (!w0[k]) {
			ret = -ENOMEM;
			break;
		}
		memcpy(w0[k], ly->w[k], (size_t)(out * in) * sizeof(float));
		t0 = qf_now();
		if (k != QF_TF_Q && k != QF_TF_K)
			ret = qf_awq_search_clip(ly->w[k], out, in, stats[k].h,
						 o);
		t1 = qf_now();
		res->t.clip += t1 - t0;
		if (!ret)
			ret = qf_awq_rtn(ly->w[k], out, in, o, lr->q, lr->sc,
					 lr->zero);
		if (!ret && o->flip)
			ret = qf_awq_flip(ly->w[k], out, in, stats[k].h, o,
					  lr->q, lr->sc, lr->zero, NULL, NULL,
					  &lr->flips);
		t0 = qf_now();
		res->t.round += t0 - t1;
		/* final unless ReFlip changes q/k below: dequantized now,
		 * so one copy of a weight is kept at a time */
		if (!ret && k != QF_TF_Q && k != QF_TF_K)
			quantized(c, ly, k, o, lr, stats, &w0[k]);
		res->t.final += qf_now() - t0;
	}

	/* 4. ReFlip of q/k against the attention scores */
	t0 = qf_now();
	if (!ret && rest && lo->reflip && qz[QF_TF_Q] && qz[QF_TF_K])
		ret = reflip_qk(c, ly, stats, o, lo, res);
	t1 = qf_now();
	res->t.reflip += t1 - t0;

	/* 5. the quantized q and k */
	for (k = QF_TF_Q; k <= QF_TF_K && !ret && rest; k++)
		if (qz[k])
			quantized(c, ly, k, o, &res->lin[k], stats, &w0[k]);
	res->t.final += qf_now() - t1;
	if (!ret && lo->part == QF_AWQ_DOWN && down_s) {	/* for REST */
		res->s_down = s[3];
		s[3] = NULL;
	}
out_free:
	for (k = 0; k < QF_TF_NLINEAR; k++)
		free(w0[k]);
	for (k = 0; k < 4; k++)
		free(s[k]);
	return ret;
}
