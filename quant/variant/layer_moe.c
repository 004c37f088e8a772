/*
 * layer_moe.c - AWQ of a sparse MoE block, as AutoAWQ does it for
 * Mixtral and Qwen-MoE (the attention goes through qf_layer_awq first).
 *
 * One input scale vector s serves every expert's gate and up (and the
 * shared expert's): its exponent is searched on the whole block's output
 * over every calibration token, router included, since the experts a
 * token reaches are part of what quantizing gate/up changes.  s folds
 * into post_attention_layernorm (divided) and into the columns of every
 * gate/up, of the router and of Qwen2-MoE's shared expert gate
 * (multiplied), so the unquantized block computes what it did; the
 * router and the shared gate stay in the source dtype but are no longer
 * the source's bytes.  Then each expert, on the tokens routed to it
 * (every token below the linear's input width: the GPTQ rule of
 * calib.c), gets its own down scale folded into its up rows, and its
 * three linears are clipped, rounded and flipped as the dense ones.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "tf_moe.h"

/* Room for the codes of a linear [out, in]. */
struct codes1 {
	uint8_t *q;
	uint16_t *sc;
	int32_t *z;
};

static int codes1_alloc(struct codes1 *cd, int64_t out, int64_t in,
			const struct qf_awq_opts *o)
{
	int64_t gs = o->group >= in ? in : o->group, ng = (in + gs - 1) / gs;

	cd->q = malloc((size_t)(out * in));
	cd->sc = malloc((size_t)(out * ng) * sizeof(uint16_t));
	cd->z = malloc((size_t)(out * ng) * sizeof(int32_t));
	return cd->q && cd->sc && cd->z ? 0 : -ENOMEM;
}

static void codes1_free(struct codes1 *cd)
{
	free(cd->q);
	free(cd->sc);
	free(cd->z);
}

/* w = RTN(w diag(s)) diag(s)^-1 with the AWQ grid (the search's trial). */
static int fake_scaled(float *w, int64_t out, int64_t in, const float *s,
		       const struct qf_awq_opts *o)
{
	struct codes1 cd;
	int64_t r, j;
	int ret = codes1_alloc(&cd, out, in, o);

	for (r = 0; r < out && !ret; r++)
		for (j = 0; j < in; j++)
			w[r * in + j] *= s[j];
	if (!ret)
		ret = qf_awq_rtn(w, out, in, o, cd.q, cd.sc, cd.z);
	if (!ret)
		qf_awq_deq(cd.q, cd.sc, cd.z, out, in, o->group >= in ? in : o->group,
		    w);
	for (r = 0; r < out && !ret; r++)
		for (j = 0; j < in; j++)
			w[r * in + j] /= s[j];
	codes1_free(&cd);
	return ret;
}

/* Rows of expert e's gate/up [mi, hidden]. */
static int64_t inter_of(const struct qf_tf_config *c, int e)
{
	return e == c->experts ? c->shared_inter : c->moe_inter;
}

/* sum (y - y0)^2 of the block with its gate/up quantized at scales s. */
static int block_error(const struct qf_tf_config *c, struct qf_tf_moe *moe,
		       int l, const float *xn, int64_t ntok, const float *s,
		       const struct qf_awq_opts *o, const float *y0, float *y,
		       double *err)
{
	int64_t h = c->hidden, i, n;
	float **keep = malloc(sizeof(float *) * 2 * (size_t)moe->nw);
	int e, k, ret = 0;

	if (!keep)
		return -ENOMEM;
	for (e = 0; e < moe->nw; e++)
		for (k = 0; k < 2; k++)
			keep[2 * e + k] = moe->w[e * QF_MOE_NLINEAR + k];
	for (e = 0; e < moe->nw && !ret; e++)
		for (k = 0; k < 2 && !ret; k++) {
			n = inter_of(c, e) * h;
			moe->w[e * QF_MOE_NLINEAR + k] = malloc((size_t)n * 4);
			if (!moe->w[e * QF_MOE_NLINEAR + k]) {
				ret = -ENOMEM;
				break;
			}
			memcpy(moe->w[e * QF_MOE_NLINEAR + k], keep[2 * e + k],
			       (size_t)n * 4);
			ret = fake_scaled(moe->w[e * QF_MOE_NLINEAR + k],
					  inter_of(c, e), h, s, o);
		}
	memset(y, 0, (size_t)(ntok * h) * sizeof(float));
	if (!ret)
		ret = qf_tf_moe_forward(c, moe, l, xn, ntok, y, NULL, NULL);
	for (*err = 0, i = 0; i < ntok * h && !ret; i++)
		*err += ((double)y[i] - y0[i]) * ((double)y[i] - y0[i]);
	for (e = 0; e < moe->nw; e++)
		for (k = 0; k < 2; k++) {
			if (moe->w[e * QF_MOE_NLINEAR + k] != keep[2 * e + k])
				free(moe->w[e * QF_MOE_NLINEAR + k]);
			moe->w[e * QF_MOE_NLINEAR + k] = keep[2 * e + k];
		}
	free(keep);
	return ret;
}

/* The gate/up scales s [hidden]: the grid on the block's output. */
static int search_gu(const struct qf_tf_config *c, struct qf_tf_moe *moe,
		     int l, const float *xn, int64_t ntok,
		     const struct qf_awq_opts *o, bool l2, float *s,
		     double *alpha)
{
	int64_t h = c->hidden;
	float *y0 = calloc((size_t)(ntok * h), sizeof(float));
	float *y = malloc((size_t)(ntok * h) * sizeof(float));
	float *sal = malloc((size_t)h * sizeof(float));
	float *cur = malloc((size_t)h * sizeof(float));
	int ngrid = o->n_grid > 0 ? o->n_grid : 1, i, ret;
	double e, best = INFINITY;
	struct qf_lin_stats st;

	ret = y0 && y && sal && cur ? qf_lin_stats_init(&st, h, false) :
	      -ENOMEM;
	if (!ret) {
		qf_lin_stats_add(&st, xn, ntok);
		qf_awq_salience(&st, l2, sal);
		qf_lin_stats_free(&st);
		ret = qf_tf_moe_forward(c, moe, l, xn, ntok, y0, NULL, NULL);
	}
	for (i = 0; i < ngrid && !ret; i++) {
		qf_awq_scales(sal, h, (double)i / ngrid, cur);
		ret = block_error(c, moe, l, xn, ntok, cur, o, y0, y, &e);
		if (!ret && (i == 0 || e < best)) {	/* ties: smaller */
			best = e;
			*alpha = (double)i / ngrid;
			memcpy(s, cur, (size_t)h * sizeof(float));
		}
	}
	free(y0);
	free(y);
	free(sal);
	free(cur);
	return ret;
}

/* The block's state through the per-expert pass. */
struct moe_awq {
	const struct qf_variant *v;
	const struct qf_tf_config *c;
	struct qf_tf_layer *ly;
	const int *groups;		/* [nw * QF_MOE_NLINEAR] */
	const struct qf_awq_opts *o;
	bool l2;
	const float *xn;		/* every token, scaled */
	int64_t ntok;
	struct qf_lin_stats st[2];	/* gate/up's input, down's */
	int64_t routed;
	struct qf_layer_res *r;
	double *tokens;			/* [ng] or NULL */
};

/* Clip, round and flip linear w [out, in] of group gi on h; emitted. */
static int quantize_one(struct moe_awq *ma, int gi, float *w, int64_t out,
			int64_t in, const float *h, double alpha)
{
	const struct qf_awq_opts *o = ma->o;
	int64_t gs = o->group >= in ? in : o->group;
	float *w0 = malloc((size_t)(out * in) * sizeof(float));
	double base;
	struct codes1 cd;
	int ret = codes1_alloc(&cd, out, in, o);

	if (!ret && !w0)
		ret = -ENOMEM;
	if (ret)
		goto out_free;
	memcpy(w0, w, (size_t)(out * in) * sizeof(float));
	base = qf_awq_energy(w0, NULL, out, in, h);
	ret = qf_awq_rtn(w, out, in, o, cd.q, cd.sc, cd.z);
	if (!ret) {
		ma->r->loss_rtn[gi] = base > 0 ?
			qf_awq_energy_codes(w0, cd.q, cd.sc, cd.z, gs, out, in,
					    h) / base : 0;
		ret = qf_awq_search_clip(w, out, in, h, o);
	}
	if (!ret)
		ret = qf_awq_rtn(w, out, in, o, cd.q, cd.sc, cd.z);
	if (!ret && o->flip)
		ret = qf_awq_flip(w, out, in, h, o, cd.q, cd.sc, cd.z, NULL,
				  NULL, NULL);
	if (!ret) {
		qf_awq_deq(cd.q, cd.sc, cd.z, out, in, gs, w);
		ma->r->loss[gi] = base > 0 ?
			qf_awq_energy(w0, w, out, in, h) / base : 0;
		ma->r->alpha[gi] = alpha;
		ma->r->score[2 * gi] = ma->r->score[2 * gi + 1] = -1;
		ret = qf_layer_emit(ma->v, gi, cd.q, cd.sc, cd.z, ma->r);
	}
	if (!ret && ma->tokens)
		ma->tokens[gi] = (double)ma->routed;
out_free:
	codes1_free(&cd);
	free(w0);
	return ret;
}

/* Expert e's down scale folded into its up rows, then its linears. */
static int expert_awq(struct moe_awq *ma, int e)
{
	float **w = qf_tf_moe_weights(ma->ly, e);
	int64_t h = ma->c->hidden, mi = inter_of(ma->c, e), r, j;
	const int *gr = ma->groups + e * QF_MOE_NLINEAR;
	struct qf_lin_stats *sd = &ma->st[1];
	float *sal = malloc((size_t)mi * sizeof(float));
	float *s = malloc((size_t)mi * sizeof(float));
	double alpha = -1;
	int ret = sal && s ? 0 : -ENOMEM;

	if (!ret)
		qf_awq_salience(sd, ma->l2, sal);
	if (!ret && gr[QF_MOE_UP] >= 0 && gr[QF_MOE_DOWN] >= 0) {
		ret = qf_awq_search_scale((const float *const *)&w[QF_MOE_DOWN],
					  &h, 1, mi, sal, sd->h, ma->o, s,
					  &alpha, NULL, NULL);
		for (r = 0; r < mi && !ret; r++)
			for (j = 0; j < h; j++)
				w[QF_MOE_UP][r * h + j] /= s[r];
		for (r = 0; r < h && !ret; r++)
			for (j = 0; j < mi; j++)
				w[QF_MOE_DOWN][r * mi + j] *= s[j];
		for (r = 0; r < mi && !ret; r++)
			for (j = 0; j < mi; j++)
				sd->h[r * mi + j] /= s[r] * s[j];
	}
	if (!ret && gr[QF_MOE_GATE] >= 0)
		ret = quantize_one(ma, gr[QF_MOE_GATE], w[QF_MOE_GATE], mi, h,
				   ma->st[0].h, ma->r->alpha[gr[QF_MOE_GATE]]);
	if (!ret && gr[QF_MOE_UP] >= 0)
		ret = quantize_one(ma, gr[QF_MOE_UP], w[QF_MOE_UP], mi, h,
				   ma->st[0].h, ma->r->alpha[gr[QF_MOE_UP]]);
	if (!ret && gr[QF_MOE_DOWN] >= 0)
		ret = quantize_one(ma, gr[QF_MOE_DOWN], w[QF_MOE_DOWN], h, mi,
				   sd->h, alpha);
	free(sal);
	free(s);
	return ret;
}

/* The block's hook: each expert's routed rows, then its AWQ. */
static int expert_hook(void *arg, int layer, int e, enum qf_moe_linear k,
		       const float *x, int64_t n, int64_t in)
{
	struct moe_awq *ma = arg;
	struct qf_lin_stats *st = &ma->st[k == QF_MOE_GATE ? 0 : 1];
	int ret;

	(void)layer;
	qf_lin_stats_free(st);
	ret = qf_lin_stats_init(st, in, true);
	if (ret)
		return ret;
	if (k == QF_MOE_GATE)
		ma->routed = n;
	if (n >= in)
		qf_lin_stats_add(st, x, n);
	else if (k == QF_MOE_GATE)
		qf_lin_stats_add(st, ma->xn, ma->ntok);
	else
		ret = qf_calib_expert_acts(ma->c, qf_tf_moe_weights(ma->ly, e),
					   ma->xn, ma->ntok, st);
	if (!ret)
		qf_lin_stats_finish(st);
	return ret || k == QF_MOE_GATE ? ret : expert_awq(ma, e);
}

/*
 * Fold s into the block: post_norm / s, gate/up and router columns (and
 * the shared gate) * s, the changed tensors stored in their dtype and
 * read back into ly; xs = xn with the stored norm.
 */
static int fold_gu(struct moe_awq *ma, const float *s, const float *xn,
		   float *xs, void *stored[3])
{
	const struct qf_tf_config *c = ma->c;
	struct qf_tf_moe *moe = ma->ly->moe;
	const struct qf_variant *v = ma->v;
	int64_t h = c->hidden, r, j, i;
	float *norm0 = malloc((size_t)h * sizeof(float));
	float *x[3] = { ma->ly->post_norm, moe->router, moe->shared_gate };
	int e, k;

	if (!norm0)
		return -ENOMEM;
	memcpy(norm0, ma->ly->post_norm, (size_t)h * sizeof(float));
	for (j = 0; j < h; j++)
		ma->ly->post_norm[j] /= s[j];
	for (e = 0; e < moe->nw; e++)
		for (k = 0; k < 2; k++)
			for (r = 0; r < inter_of(c, e); r++)
				for (j = 0; j < h; j++)
					moe->w[e * QF_MOE_NLINEAR + k]
					      [r * h + j] *= s[j];
	for (r = 0; r < c->experts; r++)
		for (j = 0; j < h; j++)
			moe->router[r * h + j] *= s[j];
	for (j = 0; moe->shared_gate && j < h; j++)
		moe->shared_gate[j] *= s[j];
	for (k = 0; k < 3; k++) {
		int gi = ma->groups[k];
		const struct qf_vtensor *t;

		stored[k] = NULL;
		if (!x[k] || gi < 0 || !v->g[gi].norm)
			continue;
		t = &v->t[v->g[gi].first + v->g[gi].n - 1];
		stored[k] = malloc(qf_vtensor_bytes(t));
		if (!stored[k])
			return -ENOMEM;	/* (the caller frees stored[]) */
		qf_layer_store(t, x[k], k == 0 && c->norm_plus1 ? 1.0f : 0.0f,
			       stored[k]);
	}
	for (i = 0; i < ma->ntok; i++)
		for (j = 0; j < h; j++)
			xs[i * h + j] = norm0[j] != 0 ? xn[i * h + j] *
				(ma->ly->post_norm[j] / norm0[j]) : 0;
	free(norm0);
	return 0;
}

float *qf_layer_awq_moe_extra(struct qf_tf_layer *ly, enum qf_moe_linear k)
{
	if (!ly->moe)
		return NULL;
	return k == QF_MOE_GATE ? ly->post_norm : k == QF_MOE_UP ?
	       ly->moe->router : ly->moe->shared_gate;
}

int qf_layer_awq_moe(const struct qf_variant *v, const struct qf_tf_config *c,
		     int l, const int *groups, struct qf_tf_layer *ly,
		     const float *xn, int64_t ntok, struct qf_layer_res *r,
		     double *tokens)
{
	struct qf_awq_opts o;
	struct moe_awq ma = {
		.v = v, .c = c, .ly = ly, .groups = groups, .o = &o,
		.l2 = v->spec.flags & QF_SPEC_L2, .ntok = ntok, .r = r,
		.tokens = tokens,
	};
	int64_t h = c->hidden;
	float *s = malloc((size_t)h * sizeof(float));
	float *xs = malloc((size_t)(ntok * h) * sizeof(float));
	float *y = calloc((size_t)(ntok * h), sizeof(float));
	void *stored[3] = { NULL, NULL, NULL };
	double alpha = -1;
	int e, k, ret = s && xs && y ? 0 : -ENOMEM;

	qf_awq_defaults(&o, v->spec.bits,
			v->spec.group < 0 ? INT32_MAX : v->spec.group);
	/* the shared scale only when it can fold (variant.c) */
	if (!ret && groups[QF_MOE_GATE] >= 0 && v->g[groups[0]].norm)
		ret = search_gu(c, ly->moe, l, xn, ntok, &o, ma.l2, s, &alpha);
	else
		for (k = 0; k < h && s; k++)
			s[k] = 1;
	if (!ret)
		ret = fold_gu(&ma, s, xn, xs, stored);
	for (e = 0; e < ly->moe->nw && !ret; e++)
		for (k = 0; k < 2; k++)
			if (groups[e * QF_MOE_NLINEAR + k] >= 0)
				r->alpha[groups[e * QF_MOE_NLINEAR + k]] =
					alpha;
	ma.xn = xs;
	if (!ret)
		ret = qf_tf_moe_forward(c, ly->moe, l, xs, ntok, y, expert_hook,
					&ma);
	/* the changed source-dtype tensors: expert 0's groups' last */
	for (k = 0; k < 3 && !ret; k++)
		if (stored[k]) {
			const struct qf_vgroup *g = &v->g[groups[k]];

			memcpy(r->pending[(size_t)groups[k] * 4 + g->n - 1],
			       stored[k],
			       qf_vtensor_bytes(&v->t[g->first + g->n - 1]));
		}
	for (k = 0; k < 3; k++)
		free(stored[k]);
	qf_lin_stats_free(&ma.st[0]);
	qf_lin_stats_free(&ma.st[1]);
	free(s);
	free(xs);
	free(y);
	return ret;
}
