/*
 * moe.c - the sparse mixture-of-experts block of Qwen3-MoE, Mixtral and
 * OLMoE in fp32, as transformers computes it: router logits x W_r^T,
 * softmax over the experts in fp32, the top-k experts of each token
 * (their weights renormalized to sum 1 when the config says so), and
 * the weighted sum of those experts' SwiGLU MLPs added to the residual.
 *
 * Each expert runs once per call on the tokens routed to it, gathered
 * into one matrix: a product per expert rather than per token, so the
 * cost is k/E of a dense MLP of all experts.  The checkpoint names are
 * the family's (struct qf_moe_names, io/arch_moe.c); nothing here knows
 * a model type.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "tf_moe.h"

/*
 * The kernels of tf_kernels.c are not called here: tf_kernels.c runs this
 * block, and files of nn call in one direction.  A linear is one SGEMM;
 * SwiGLU is the plain loop (its cost is 1/hidden of the products').
 */
static void linear(const float *x, int64_t n, int64_t in, const float *w,
		   int64_t out, float *y)
{
	qf_sgemm(false, true, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

static void swiglu(float *g, const float *u, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++)
		g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

int qf_tf_moe_load(const struct qf_model *m, const struct qf_tf_config *c,
		   int l, struct qf_tf_moe **out)
{
	int64_t shape[QF_MOE_NLINEAR][2] = {
		{ c->moe_inter, c->hidden }, { c->moe_inter, c->hidden },
		{ c->hidden, c->moe_inter },
	};
	struct qf_tf_moe *moe;
	char name[256];
	int e, k, ret;

	moe = calloc(1, sizeof(*moe));
	if (!moe)
		return -ENOMEM;
	moe->experts = c->experts;
	moe->w = calloc((size_t)c->experts * QF_MOE_NLINEAR, sizeof(*moe->w));
	moe->router = malloc(sizeof(float) * (size_t)c->experts *
			     (size_t)c->hidden);
	ret = moe->w && moe->router ? 0 : -ENOMEM;
	if (!ret) {
		qf_moe_router_name(c, l, name, sizeof(name));
		ret = qf_model_linear_f32(m, name, c->experts, c->hidden,
					  moe->router);
	}
	for (e = 0; e < c->experts && !ret; e++)
		for (k = 0; k < QF_MOE_NLINEAR && !ret; k++) {
			float **w = &moe->w[e * QF_MOE_NLINEAR + k];

			qf_moe_expert_name(c, l, e, k, name, sizeof(name));
			*w = malloc(sizeof(float) *
				    (size_t)(shape[k][0] * shape[k][1]));
			ret = *w ? qf_model_linear_f32(m, name, shape[k][0],
						       shape[k][1], *w) :
				   -ENOMEM;
		}
	if (ret < 0) {
		qf_tf_moe_free(moe);
		return ret;
	}
	*out = moe;
	return 0;
}

void qf_tf_moe_free(struct qf_tf_moe *moe)
{
	int i;

	if (!moe)
		return;
	for (i = 0; moe->w && i < moe->experts * QF_MOE_NLINEAR; i++)
		free(moe->w[i]);
	free(moe->w);
	free(moe->router);
	free(moe);
}

float **qf_tf_moe_weights(const struct qf_tf_layer *ly, int e)
{
	if (!ly->moe || e < 0 || e >= ly->moe->experts)
		return NULL;
	return ly->moe->w + (size_t)e * QF_MOE_NLINEAR;
}

/*
 * One token's routing from its router logits lg [E] (overwritten by the
 * probabilities): the top-k experts in sel [k], largest first (ties to
 * the lower index, as torch.topk on CPU), and their weights in p [k].
 */
static void route_token(const struct qf_tf_config *c, float *lg, int32_t *sel,
			float *p)
{
	int E = c->experts, i, j;
	float mx = lg[0], s = 0;

	for (i = 1; i < E; i++)
		mx = lg[i] > mx ? lg[i] : mx;
	for (i = 0; i < E; i++) {
		lg[i] = expf(lg[i] - mx);
		s += lg[i];
	}
	for (i = 0; i < E; i++)
		lg[i] /= s;
	for (j = 0; j < c->topk; j++) {
		int best = -1;

		for (i = 0; i < E; i++)
			if (lg[i] >= 0 && (best < 0 || lg[i] > lg[best]))
				best = i;
		sel[j] = best;
		p[j] = lg[best];
		lg[best] = -1;		/* taken */
	}
	if (!c->norm_topk)
		return;
	for (s = 0, j = 0; j < c->topk; j++)
		s += p[j];
	for (j = 0; j < c->topk; j++)
		p[j] /= s;
}

int qf_tf_moe_route(const struct qf_tf_config *c, const struct qf_tf_moe *moe,
		    const float *xn, int64_t ntok, int32_t *sel, float *p)
{
	float *lg = malloc(sizeof(float) * (size_t)(ntok * c->experts));
	int64_t t;

	if (!lg)
		return -ENOMEM;
	linear(xn, ntok, c->hidden, moe->router, c->experts, lg);
	for (t = 0; t < ntok; t++)
		route_token(c, lg + t * c->experts, sel + t * c->topk,
			    p + t * c->topk);
	free(lg);
	return 0;
}

/* Scratch of one block call, one allocation. */
struct moe_scratch {
	int32_t *sel;	/* [ntok, topk] chosen experts */
	float *p;	/* [ntok, topk] their weights */
	int32_t *tok;	/* [ntok] tokens of one expert */
	float *wt;	/* [ntok] their weights */
	float *xe;	/* [ntok, hidden] their inputs, then outputs */
	float *g;	/* [ntok, moe_inter] gate, then silu(gate) * up */
	float *u;	/* [ntok, moe_inter] up */
	void *mem;
};

static int scratch_alloc(const struct qf_tf_config *c, int64_t ntok,
			 struct moe_scratch *sc)
{
	int64_t k = c->topk, mi = c->moe_inter;
	size_t n = (size_t)(ntok * (2 * k + 2 + c->hidden + 2 * mi));
	char *b = malloc(n * 4);

	if (!b)
		return -ENOMEM;
	sc->mem = b;
	sc->sel = (int32_t *)b;
	sc->p = (float *)(sc->sel + ntok * k);
	sc->tok = (int32_t *)(sc->p + ntok * k);
	sc->wt = (float *)(sc->tok + ntok);
	sc->xe = sc->wt + ntok;
	sc->g = sc->xe + ntok * c->hidden;
	sc->u = sc->g + ntok * mi;
	return 0;
}

/* The tokens routed to expert e, with their weights: how many. */
static int64_t gather(const struct qf_tf_config *c, const struct moe_scratch *sc,
		      int64_t ntok, int e)
{
	int64_t t, n = 0;
	int j;

	for (t = 0; t < ntok; t++)
		for (j = 0; j < c->topk; j++)
			if (sc->sel[t * c->topk + j] == e) {
				sc->tok[n] = (int32_t)t;
				sc->wt[n++] = sc->p[t * c->topk + j];
			}
	return n;
}

int qf_tf_moe_forward(const struct qf_tf_config *c,
		      const struct qf_tf_moe *moe, int layer, const float *xn,
		      int64_t ntok, float *x, qf_tf_expert_hook hook,
		      void *arg)
{
	const float *const *w;
	struct moe_scratch sc;
	int64_t n, i, j, h = c->hidden, mi = c->moe_inter;
	int e, ret;

	ret = scratch_alloc(c, ntok, &sc);
	if (ret < 0)
		return ret;
	ret = qf_tf_moe_route(c, moe, xn, ntok, sc.sel, sc.p);
	for (e = 0; e < c->experts && !ret; e++) {
		w = (const float *const *)moe->w + e * QF_MOE_NLINEAR;
		n = gather(c, &sc, ntok, e);
		for (i = 0; i < n; i++)
			memcpy(sc.xe + i * h, xn + (int64_t)sc.tok[i] * h,
			       sizeof(float) * (size_t)h);
		if (hook && (ret = hook(arg, layer, e, QF_MOE_GATE, sc.xe, n,
					h)) != 0)
			break;
		if (n > 0) {
			linear(sc.xe, n, h, w[QF_MOE_GATE], mi, sc.g);
			linear(sc.xe, n, h, w[QF_MOE_UP], mi, sc.u);
			swiglu(sc.g, sc.u, n * mi);
		}
		if (hook && (ret = hook(arg, layer, e, QF_MOE_DOWN, sc.g, n,
					mi)) != 0)
			break;
		if (n == 0)
			continue;
		linear(sc.g, n, mi, w[QF_MOE_DOWN], h, sc.xe);
		for (i = 0; i < n; i++) {
			float *xr = x + (int64_t)sc.tok[i] * h;

			for (j = 0; j < h; j++)
				xr[j] += sc.wt[i] * sc.xe[i * h + j];
		}
	}
	free(sc.mem);
	return ret;
}
