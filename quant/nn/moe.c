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

/* Expert e's linear k ([out, in]; e == experts: the shared one). */
static void expert_shape(const struct qf_tf_config *c, int e, int k,
			 int64_t *out, int64_t *in)
{
	int64_t mi = e == c->experts ? c->shared_inter : c->moe_inter;

	*out = k == QF_MOE_DOWN ? c->hidden : mi;
	*in = k == QF_MOE_DOWN ? mi : c->hidden;
}

/* A tensor [d0, d1] of linear prefix name into a new array at *w. */
static int load_linear(const struct qf_model *m, const char *name,
		       int64_t d0, int64_t d1, float **w)
{
	*w = malloc(sizeof(float) * (size_t)(d0 * d1));
	return *w ? qf_model_linear_f32(m, name, d0, d1, *w) : -ENOMEM;
}

int qf_tf_moe_load(const struct qf_model *m, const struct qf_tf_config *c,
		   int l, struct qf_tf_moe **out)
{
	struct qf_tf_moe *moe;
	int64_t d0, d1;
	char name[256];
	int e, k, ret;

	moe = calloc(1, sizeof(*moe));
	if (!moe)
		return -ENOMEM;
	moe->experts = c->experts;
	moe->nw = c->experts + (c->shared_inter > 0);
	moe->w = calloc((size_t)moe->nw * QF_MOE_NLINEAR, sizeof(*moe->w));
	ret = moe->w ? 0 : -ENOMEM;
	if (!ret) {
		qf_moe_router_name(c, l, name, sizeof(name));
		ret = load_linear(m, name, c->experts, c->hidden,
				  &moe->router);
	}
	if (!ret && c->shared_inter > 0) {
		snprintf(name, sizeof(name), "model.layers.%d.%s", l,
			 c->moe->shared_gate);
		ret = load_linear(m, name, 1, c->hidden, &moe->shared_gate);
	}
	for (e = 0; e < moe->nw && !ret; e++)
		for (k = 0; k < QF_MOE_NLINEAR && !ret; k++) {
			qf_moe_expert_name(c, l, e, k, name, sizeof(name));
			expert_shape(c, e, k, &d0, &d1);
			ret = load_linear(m, name, d0, d1,
					  &moe->w[e * QF_MOE_NLINEAR + k]);
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
	for (i = 0; moe->w && i < moe->nw * QF_MOE_NLINEAR; i++)
		free(moe->w[i]);
	free(moe->w);
	free(moe->router);
	free(moe->shared_gate);
	free(moe);
}

float **qf_tf_moe_weights(const struct qf_tf_layer *ly, int e)
{
	if (!ly->moe || e < 0 || e >= ly->moe->nw)
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
	float *g;	/* [ntok, wide] gate, then silu(gate) * up */
	float *u;	/* [ntok, wide] up */
	void *mem;
};

static int scratch_alloc(const struct qf_tf_config *c, int64_t ntok,
			 struct moe_scratch *sc)
{
	int64_t k = c->topk;
	int64_t wide = c->moe_inter > c->shared_inter ? c->moe_inter :
						       c->shared_inter;
	size_t n = (size_t)(ntok * (2 * k + 2 + c->hidden + 2 * wide));
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
	sc->u = sc->g + ntok * wide;
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

/*
 * Expert e (intermediate size mi) on its n rows in sc->xe, output there:
 * the hooks see its inputs before gate/up and before down, also with no
 * rows.
 */
static int run_expert(const struct qf_tf_config *c, float *const *w,
		      int layer, int e, int64_t n, int64_t mi,
		      struct moe_scratch *sc, qf_tf_expert_hook hook,
		      void *arg)
{
	int64_t h = c->hidden;
	int ret;

	if (hook && (ret = hook(arg, layer, e, QF_MOE_GATE, sc->xe, n, h)))
		return ret;
	if (n > 0) {
		linear(sc->xe, n, h, w[QF_MOE_GATE], mi, sc->g);
		linear(sc->xe, n, h, w[QF_MOE_UP], mi, sc->u);
		swiglu(sc->g, sc->u, n * mi);
	}
	if (hook && (ret = hook(arg, layer, e, QF_MOE_DOWN, sc->g, n, mi)))
		return ret;
	if (n > 0)
		linear(sc->g, n, mi, w[QF_MOE_DOWN], h, sc->xe);
	return 0;
}

/* Qwen2-MoE: x += sigmoid(xn . shared_gate) * shared_expert(xn). */
static int run_shared(const struct qf_tf_config *c,
		      const struct qf_tf_moe *moe, int layer, const float *xn,
		      int64_t ntok, float *x, struct moe_scratch *sc,
		      qf_tf_expert_hook hook, void *arg)
{
	int64_t h = c->hidden, t, j;
	int ret;

	memcpy(sc->xe, xn, sizeof(float) * (size_t)(ntok * h));
	ret = run_expert(c, moe->w + (size_t)c->experts * QF_MOE_NLINEAR,
			 layer, c->experts, ntok, c->shared_inter, sc, hook,
			 arg);
	for (t = 0; t < ntok && !ret; t++) {
		const float *xr = xn + t * h;
		float *yr = x + t * h, gl = 0, gt;

		for (j = 0; j < h; j++)
			gl += xr[j] * moe->shared_gate[j];
		gt = 1.0f / (1.0f + expf(-gl));
		for (j = 0; j < h; j++)
			yr[j] += gt * sc->xe[t * h + j];
	}
	return ret;
}

/* The block on routed rows (sc->sel, sc->p set): x += its output. */
static int moe_run(const struct qf_tf_config *c, const struct qf_tf_moe *moe,
		   int layer, const float *xn, int64_t ntok, float *x,
		   struct moe_scratch *sc, qf_tf_expert_hook hook, void *arg)
{
	int64_t n, i, j, h = c->hidden;
	int e, ret = 0;

	for (e = 0; e < c->experts && !ret; e++) {
		n = gather(c, sc, ntok, e);
		for (i = 0; i < n; i++)
			memcpy(sc->xe + i * h, xn + (int64_t)sc->tok[i] * h,
			       sizeof(float) * (size_t)h);
		ret = run_expert(c, moe->w + (size_t)e * QF_MOE_NLINEAR,
				 layer, e, n, c->moe_inter, sc, hook, arg);
		for (i = 0; i < n && !ret; i++) {
			float *xr = x + (int64_t)sc->tok[i] * h;

			for (j = 0; j < h; j++)
				xr[j] += sc->wt[i] * sc->xe[i * h + j];
		}
	}
	if (!ret && moe->shared_gate)
		ret = run_shared(c, moe, layer, xn, ntok, x, sc, hook, arg);
	return ret;
}

/* The block on xn, routed by the router or (sel, p not NULL) as given. */
static int moe_forward(const struct qf_tf_config *c,
		       const struct qf_tf_moe *moe, int layer, const float *xn,
		       int64_t ntok, const int32_t *sel, const float *p,
		       float *x, qf_tf_expert_hook hook, void *arg)
{
	size_t k = (size_t)(ntok * c->topk);
	struct moe_scratch sc;
	int ret;

	ret = scratch_alloc(c, ntok, &sc);
	if (ret < 0)
		return ret;
	if (sel) {
		memcpy(sc.sel, sel, sizeof(int32_t) * k);
		memcpy(sc.p, p, sizeof(float) * k);
	} else {
		ret = qf_tf_moe_route(c, moe, xn, ntok, sc.sel, sc.p);
	}
	if (!ret)
		ret = moe_run(c, moe, layer, xn, ntok, x, &sc, hook, arg);
	free(sc.mem);
	return ret;
}

int qf_tf_moe_forward(const struct qf_tf_config *c,
		      const struct qf_tf_moe *moe, int layer, const float *xn,
		      int64_t ntok, float *x, qf_tf_expert_hook hook,
		      void *arg)
{
	return moe_forward(c, moe, layer, xn, ntok, NULL, NULL, x, hook, arg);
}

int qf_tf_moe_forward_routed(const struct qf_tf_config *c,
			     const struct qf_tf_moe *moe, const float *xn,
			     int64_t ntok, const int32_t *sel, const float *p,
			     float *x)
{
	return moe_forward(c, moe, 0, xn, ntok, sel, p, x, NULL, NULL);
}
