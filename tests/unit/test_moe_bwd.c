/*
 * test_moe_bwd.c - the sparse MoE block's backward with fixed routing
 * (quant/nn/moe_bwd.c), which BRECQ of a MoE block builds on: the routed
 * forward against the block's own forward; every expert weight gradient
 * and the input gradient against central finite differences of the
 * routed forward (double-accumulated loss, along a random direction per
 * tensor: float differences of single entries would be noise), on a
 * small block (hidden 32, 4 experts, top 2), without and with
 * Qwen2-MoE's shared expert; an expert routed no token gets zeros.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tf_moe.h"

#define HID 32
#define NE 4
#define TOPK 2
#define MI 24
#define SMI 16
#define NTOK 12

static uint64_t rng = 0x3c0ffee5ULL;

static double drand(void)	/* uniform [-1, 1) */
{
	rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
	return (double)(rng >> 11) * 0x1.0p-53 * 2 - 1;
}

static float *frand(int64_t n, double scale)
{
	float *p = malloc(sizeof(float) * (size_t)n);
	int64_t i;

	QF_ASSERT(p);
	for (i = 0; i < n; i++)
		p[i] = (float)(scale * drand());
	return p;
}

static struct qf_tf_moe *make(struct qf_tf_config *c, bool shared)
{
	struct qf_tf_moe *moe = calloc(1, sizeof(*moe));
	int e, k;

	QF_ASSERT(moe);
	memset(c, 0, sizeof(*c));
	c->hidden = HID;
	c->experts = NE;
	c->topk = TOPK;
	c->moe_inter = MI;
	c->norm_topk = true;
	c->shared_inter = shared ? SMI : 0;
	moe->experts = NE;
	moe->nw = NE + shared;
	moe->router = frand(NE * HID, 0.5);
	moe->shared_gate = shared ? frand(HID, 0.3) : NULL;
	moe->w = calloc((size_t)moe->nw * QF_MOE_NLINEAR, sizeof(float *));
	QF_ASSERT(moe->w);
	for (e = 0; e < moe->nw; e++) {
		int64_t mi = e == NE ? SMI : MI;

		for (k = 0; k < QF_MOE_NLINEAR; k++)
			moe->w[e * QF_MOE_NLINEAR + k] =
				frand(mi * HID, 0.3);
	}
	return moe;
}

/* sum(r . (x + block(xn))) in double, routing fixed. */
static double loss(const struct qf_tf_config *c, const struct qf_tf_moe *moe,
		   const float *xn, const int32_t *sel, const float *p,
		   const float *r)
{
	float y[NTOK * HID];
	double s = 0;
	int i;

	memset(y, 0, sizeof(y));
	QF_ASSERT(qf_tf_moe_forward_routed(c, moe, xn, NTOK, sel, p, y) == 0);
	for (i = 0; i < NTOK * HID; i++)
		s += (double)r[i] * y[i];
	return s;
}

/* The directional derivative of the loss along d at t (n floats),
 * by central differences, against sum(g . d). */
static void check_dir(const struct qf_tf_config *c,
		      const struct qf_tf_moe *moe, float *xn,
		      const int32_t *sel, const float *p, const float *r,
		      float *t, const float *g, int64_t n, const char *what)
{
	float *d = frand(n, 1.0), *t0 = malloc(sizeof(float) * (size_t)n);
	const double eps = 1e-2;
	double an = 0, fd, lp, lm, tol;
	int64_t i;

	QF_ASSERT(t0);
	memcpy(t0, t, sizeof(float) * (size_t)n);
	for (i = 0; i < n; i++)
		an += (double)g[i] * d[i];
	for (i = 0; i < n; i++)
		t[i] = (float)(t0[i] + eps * d[i]);
	lp = loss(c, moe, xn, sel, p, r);
	for (i = 0; i < n; i++)
		t[i] = (float)(t0[i] - eps * d[i]);
	lm = loss(c, moe, xn, sel, p, r);
	memcpy(t, t0, sizeof(float) * (size_t)n);
	fd = (lp - lm) / (2 * eps);
	tol = 2e-3 * fmax(1.0, fabs(fd));
	if (fabs(an - fd) > tol) {
		fprintf(stderr, "%s: backward %.6g, differences %.6g\n", what,
			an, fd);
		QF_ASSERT(0);
	}
	free(d);
	free(t0);
}

static void test_grad(bool shared, bool starve)
{
	struct qf_tf_config c;
	struct qf_tf_moe *moe;
	float *xn = frand(NTOK * HID, 1.0), *r = frand(NTOK * HID, 1.0);
	float *dxn = malloc(sizeof(float) * NTOK * HID);
	float *dw[(NE + 1) * QF_MOE_NLINEAR];
	float y0[NTOK * HID], y1[NTOK * HID];
	int32_t sel[NTOK * TOPK];
	float p[NTOK * TOPK];
	char what[64];
	int e, k, i, used = 0;

	QF_ASSERT(dxn);
	moe = make(&c, shared);
	if (starve)	/* expert NE - 1 never chosen */
		for (i = 0; i < HID; i++)
			moe->router[(NE - 1) * HID + i] = 0;
	QF_ASSERT(qf_tf_moe_route(&c, moe, xn, NTOK, sel, p) == 0);
	if (starve)
		for (i = 0; i < NTOK * TOPK; i++)
			if (sel[i] == NE - 1)
				sel[i] = (sel[i ^ 1] + 1) % (NE - 1);
	for (i = 0; i < NTOK * TOPK; i++)
		used |= 1 << sel[i];
	/* the routed forward is the block's own with its own routing */
	if (!starve) {
		memset(y0, 0, sizeof(y0));
		memset(y1, 0, sizeof(y1));
		QF_ASSERT(qf_tf_moe_forward(&c, moe, 0, xn, NTOK, y0, NULL,
					    NULL) == 0);
		QF_ASSERT(qf_tf_moe_forward_routed(&c, moe, xn, NTOK, sel,
						   p, y1) == 0);
		QF_ASSERT(memcmp(y0, y1, sizeof(y0)) == 0);
	}
	for (i = 0; i < moe->nw * QF_MOE_NLINEAR; i++) {
		dw[i] = malloc(sizeof(float) * (size_t)(MI * HID));
		QF_ASSERT(dw[i]);
		dw[i][0] = 123;	/* overwritten, zeros included */
	}
	QF_ASSERT(qf_tf_moe_backward(&c, moe, xn, NTOK, sel, p, r, dw,
				     dxn) == 0);
	for (e = 0; e < moe->nw; e++)
		for (k = 0; k < QF_MOE_NLINEAR; k++) {
			int64_t n = (e == NE ? SMI : MI) * HID;
			float *g = dw[e * QF_MOE_NLINEAR + k];

			snprintf(what, sizeof(what), "expert %d linear %d", e,
				 k);
			if (e < NE && !(used >> e & 1)) {
				for (i = 0; i < n; i++)
					QF_ASSERT(g[i] == 0);
				continue;
			}
			check_dir(&c, moe, xn, sel, p, r,
				  moe->w[e * QF_MOE_NLINEAR + k], g, n, what);
		}
	check_dir(&c, moe, xn, sel, p, r, xn, dxn, NTOK * HID, "input");
	printf("moe backward (%s%s): ok, experts used 0x%x\n",
	       shared ? "shared expert" : "plain",
	       starve ? ", one starved" : "", used);
	for (i = 0; i < moe->nw * QF_MOE_NLINEAR; i++)
		free(dw[i]);
	qf_tf_moe_free(moe);
	free(xn);
	free(r);
	free(dxn);
}

int main(void)
{
	test_grad(false, false);
	test_grad(true, false);
	test_grad(false, true);
	return 0;
}
