/*
 * moe_bwd.c - the backward of the sparse MoE block (moe.c) for BRECQ's
 * block reconstruction (brecq.c), with the routing held fixed.
 *
 * Top-k selection is a step function of the router logits: its gradient
 * is zero almost everywhere, and BRECQ learns the rounding of the experts'
 * linears, not the router (which stays in source precision).  So the
 * selection sel and the weights p are computed once and passed in as
 * constants (a straight-through estimate): dL/dy reaches expert e only
 * through the tokens routed to it, scaled by their weights,
 *
 *   y_t = x_t + sum_j p_tj E_sel(tj)(xn_t),  E(x) = down(silu(gate x) * up x)
 *
 * An expert routed no token gets a zero gradient (its AdaRound variables
 * only feel the regularizer, so it keeps round-to-nearest: brecq.c).
 * Qwen2-MoE's shared expert sees every token scaled by sigmoid(xn . g_s);
 * that gate is fp32 and its input gradient flows into dxn.  Gate/up are
 * recomputed here (k/E of a dense MLP) rather than saved.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "tf_moe.h"

/*
 * tf_backward.c calls this file, and files of nn call in one direction:
 * the SwiGLU backward is written here again (as moe.c writes its forward).
 * From g, u and da [n]: dL/dg into g, dL/du into da (u must stay intact
 * until dL/dg is taken).
 */
static void swiglu_bwd(float *g, const float *u, float *da, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++) {
		float sg = 1.0f / (1.0f + expf(-g[i]));
		float d = da[i];

		da[i] = d * g[i] * sg;
		/* silu'(g) = sg (1 + g (1 - sg)) */
		g[i] = d * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
	}
}

/* Scratch of one backward call, rows for every token. */
struct moe_bwd {
	int32_t *tok;	/* [ntok] rows of one expert */
	float *wt;	/* [ntok] their weights */
	float *xe;	/* [ntok, hidden] inputs, then dL/dinputs */
	float *dye;	/* [ntok, hidden] weighted dL/dy */
	float *g;	/* [ntok, wide] gate, then dL/dgate */
	float *u;	/* [ntok, wide] up */
	float *a;	/* [ntok, wide] silu(gate) * up, dL/da, dL/dup */
	void *mem;
};

static int bwd_alloc(const struct qf_tf_config *c, int64_t ntok,
		     struct moe_bwd *b)
{
	int64_t wide = c->moe_inter > c->shared_inter ? c->moe_inter :
						       c->shared_inter;
	size_t n = (size_t)(ntok * (2 + 2 * c->hidden + 3 * wide));
	char *m = malloc(n * 4);

	if (!m)
		return -ENOMEM;
	b->mem = m;
	b->tok = (int32_t *)m;
	b->wt = (float *)(b->tok + ntok);
	b->xe = b->wt + ntok;
	b->dye = b->xe + ntok * c->hidden;
	b->g = b->dye + ntok * c->hidden;
	b->u = b->g + ntok * wide;
	b->a = b->u + ntok * wide;
	return 0;
}

/*
 * One expert (weights w, intermediate mi) on its n gathered rows b->xe
 * with upstream b->dye: dw[k] (when not NULL) = its weight gradients,
 * b->xe = dL/d(its inputs).
 */
static void expert_bwd(const struct qf_tf_config *c, float *const *w,
		       int64_t n, int64_t mi, struct moe_bwd *b,
		       float *const *dw)
{
	int64_t h = c->hidden, i;

	qf_sgemm(false, true, n, mi, h, 1.0f, b->xe, h, w[QF_MOE_GATE], h,
		 0.0f, b->g, mi);
	qf_sgemm(false, true, n, mi, h, 1.0f, b->xe, h, w[QF_MOE_UP], h,
		 0.0f, b->u, mi);
	for (i = 0; i < n * mi; i++)
		b->a[i] = b->g[i] / (1.0f + expf(-b->g[i])) * b->u[i];
	if (dw[QF_MOE_DOWN])
		qf_sgemm(true, false, h, mi, n, 1.0f, b->dye, h, b->a, mi,
			 0.0f, dw[QF_MOE_DOWN], mi);
	qf_sgemm(false, false, n, mi, h, 1.0f, b->dye, h, w[QF_MOE_DOWN], mi,
		 0.0f, b->a, mi);
	swiglu_bwd(b->g, b->u, b->a, n * mi);	/* dgate in g, dup in a */
	if (dw[QF_MOE_GATE])
		qf_sgemm(true, false, mi, h, n, 1.0f, b->g, mi, b->xe, h, 0.0f,
			 dw[QF_MOE_GATE], h);
	if (dw[QF_MOE_UP])
		qf_sgemm(true, false, mi, h, n, 1.0f, b->a, mi, b->xe, h, 0.0f,
			 dw[QF_MOE_UP], h);
	qf_sgemm(false, false, n, h, mi, 1.0f, b->g, mi, w[QF_MOE_GATE], h,
		 0.0f, b->xe, h);
	qf_sgemm(false, false, n, h, mi, 1.0f, b->a, mi, w[QF_MOE_UP], h,
		 1.0f, b->xe, h);
}

/* Zeros into expert e's dw (no token routed to it). */
static void zero_dw(const struct qf_tf_config *c, float *const *dw,
		    int64_t mi)
{
	int k;

	for (k = 0; k < QF_MOE_NLINEAR; k++)
		if (dw[k])
			memset(dw[k], 0, sizeof(float) *
			       (size_t)(mi * c->hidden));
}

/*
 * Qwen2-MoE's shared expert: every token, scaled by its fp32 gate
 * s_t = sigmoid(xn_t . g_s), whose input gradient
 * s_t (1 - s_t) (dy_t . E_s(xn_t)) g_s goes into dxn too.
 */
static void shared_bwd(const struct qf_tf_config *c,
		       const struct qf_tf_moe *moe, const float *xn,
		       int64_t ntok, const float *dy, float *const *dw,
		       float *dxn, struct moe_bwd *b)
{
	float *const *w = moe->w + (size_t)c->experts * QF_MOE_NLINEAR;
	int64_t h = c->hidden, mi = c->shared_inter, t, j;

	/* E_s(xn) into dye, then dye = s_t dy_t */
	qf_sgemm(false, true, ntok, mi, h, 1.0f, xn, h, w[QF_MOE_GATE], h,
		 0.0f, b->g, mi);
	qf_sgemm(false, true, ntok, mi, h, 1.0f, xn, h, w[QF_MOE_UP], h,
		 0.0f, b->u, mi);
	for (j = 0; j < ntok * mi; j++)
		b->g[j] = b->g[j] / (1.0f + expf(-b->g[j])) * b->u[j];
	qf_sgemm(false, true, ntok, h, mi, 1.0f, b->g, mi, w[QF_MOE_DOWN], mi,
		 0.0f, b->dye, h);
	for (t = 0; t < ntok; t++) {
		const float *xr = xn + t * h;
		float *dr = b->dye + t * h;
		float gl = 0, st, so = 0;

		for (j = 0; j < h; j++)
			gl += xr[j] * moe->shared_gate[j];
		st = 1.0f / (1.0f + expf(-gl));
		for (j = 0; j < h; j++) {
			so += dy[t * h + j] * dr[j];
			dr[j] = st * dy[t * h + j];
		}
		for (j = 0; j < h && dxn; j++)
			dxn[t * h + j] += st * (1 - st) * so *
					  moe->shared_gate[j];
	}
	memcpy(b->xe, xn, sizeof(float) * (size_t)(ntok * h));
	expert_bwd(c, w, ntok, mi, b, dw);
	for (j = 0; j < ntok * h && dxn; j++)
		dxn[j] += b->xe[j];
}

/* The tokens routed to expert e, with their weights: how many. */
static int64_t gather(const struct qf_tf_config *c, const int32_t *sel,
		      const float *p, int64_t ntok, int e, struct moe_bwd *b)
{
	int64_t t, n = 0;
	int j;

	for (t = 0; t < ntok; t++)
		for (j = 0; j < c->topk; j++)
			if (sel[t * c->topk + j] == e) {
				b->tok[n] = (int32_t)t;
				b->wt[n++] = p[t * c->topk + j];
			}
	return n;
}

int qf_tf_moe_backward(const struct qf_tf_config *c,
		       const struct qf_tf_moe *moe, const float *xn,
		       int64_t ntok, const int32_t *sel, const float *p,
		       const float *dy, float *const *dw, float *dxn)
{
	static float *const none[QF_MOE_NLINEAR];
	struct moe_bwd b;
	int64_t h = c->hidden, n, i, j;
	int e, ret;

	ret = bwd_alloc(c, ntok, &b);
	if (ret < 0)
		return ret;
	if (dxn)
		memset(dxn, 0, sizeof(float) * (size_t)(ntok * h));
	for (e = 0; e < c->experts; e++) {
		float *const *de = dw ? dw + (size_t)e * QF_MOE_NLINEAR : none;

		n = gather(c, sel, p, ntok, e, &b);
		if (n == 0) {
			zero_dw(c, de, c->moe_inter);
			continue;
		}
		for (i = 0; i < n; i++) {
			const float *dr = dy + (int64_t)b.tok[i] * h;

			memcpy(b.xe + i * h, xn + (int64_t)b.tok[i] * h,
			       sizeof(float) * (size_t)h);
			for (j = 0; j < h; j++)
				b.dye[i * h + j] = b.wt[i] * dr[j];
		}
		expert_bwd(c, moe->w + (size_t)e * QF_MOE_NLINEAR, n,
			   c->moe_inter, &b, de);
		for (i = 0; i < n && dxn; i++)
			for (j = 0; j < h; j++)
				dxn[(int64_t)b.tok[i] * h + j] += b.xe[i * h + j];
	}
	if (moe->shared_gate)
		shared_bwd(c, moe, xn, ntok, dy,
			   dw ? dw + (size_t)c->experts * QF_MOE_NLINEAR : none,
			   dxn, &b);
	free(b.mem);
	return 0;
}
