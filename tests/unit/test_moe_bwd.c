/*
 * test_moe_bwd.c - the sparse MoE block's backward with fixed routing
 * (quant/nn/moe_bwd.c), which BRECQ of a MoE block builds on: the routed
 * forward against the block's own forward; every expert weight gradient
 * and the input gradient against central finite differences of the
 * routed forward (double-accumulated loss, along a random direction per
 * tensor: float differences of single entries would be noise), on a
 * small block (hidden 32, 4 experts, top 2), without and with
 * Qwen2-MoE's shared expert; an expert routed no token gets zeros.  Then
 * the whole decoder block (tf_backward.c: attention, then the MoE block
 * routed as the layer's forward routes it) likewise, every attention and
 * expert weight; and BRECQ of that block (brecq.c) lowering its output
 * error below round-to-nearest's, every expert's codes written.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "brecq.h"
#include "check.h"
#include "tf_backward.h"
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

/* ------------------------------------------------------------------ */
/* the whole block                                                    */

#define NSEQ 2
#define SEQ 6

struct blk {
	struct qf_tf_config c;
	struct qf_tf_layer ly;
	struct qf_tf_saved sv;
	int32_t sel[NSEQ * SEQ * TOPK];
	float p[NSEQ * SEQ * TOPK];
	float x[NSEQ * SEQ * HID];
	float r[NSEQ * SEQ * HID];
};

/* The routing of the MoE block's input rows, then stop the layer. */
static int route_hook(void *arg, int layer, enum qf_tf_linear lin,
		      const float *x, int64_t ntok, int64_t in)
{
	struct blk *b = arg;

	(void)layer;
	(void)in;
	if (lin != QF_TF_GATE)
		return 0;
	QF_ASSERT(qf_tf_moe_route(&b->c, b->ly.moe, x, ntok, b->sel,
				  b->p) == 0);
	return 1;
}

static double block_loss(struct blk *b)
{
	float y[NSEQ * SEQ * HID];
	double s = 0;
	int i;

	QF_ASSERT(qf_tf_block_forward(&b->c, &b->ly, b->x, y, &b->sv) == 0);
	for (i = 0; i < NSEQ * SEQ * HID; i++)
		s += (double)b->r[i] * y[i];
	return s;
}

static void block_dir(struct blk *b, float *t, const float *g, int64_t n,
		      const char *what)
{
	float *d = frand(n, 1.0), *t0 = malloc(sizeof(float) * (size_t)n);
	const double eps = 2e-3;
	double an = 0, fd, lp, lm;
	int64_t i;

	QF_ASSERT(t0);
	memcpy(t0, t, sizeof(float) * (size_t)n);
	for (i = 0; i < n; i++) {
		an += (double)g[i] * d[i];
		t[i] = (float)(t0[i] + eps * d[i]);
	}
	lp = block_loss(b);
	for (i = 0; i < n; i++)
		t[i] = (float)(t0[i] - eps * d[i]);
	lm = block_loss(b);
	memcpy(t, t0, sizeof(float) * (size_t)n);
	fd = (lp - lm) / (2 * eps);
	if (fabs(an - fd) > 3e-3 * fmax(1.0, fabs(fd))) {
		fprintf(stderr, "block %s: backward %.6g, differences %.6g\n",
			what, an, fd);
		QF_ASSERT(0);
	}
	printf("  block %s: backward %.6g, differences %.6g\n", what, an, fd);
	free(d);
	free(t0);
}

/* BRECQ of the block towards its own fp output y: 4-bit experts and
 * attention, group 16. */
static void test_recon(struct blk *b, float *y)
{
	struct qf_tf_seqs xs = { b->x, -1, (int64_t)SEQ * b->c.hidden };
	struct qf_tf_seqs ys = { y, -1, (int64_t)SEQ * b->c.hidden };
	struct qf_qparams qp[NE * QF_MOE_NLINEAR];
	uint8_t *q[NE * QF_MOE_NLINEAR];
	uint16_t *sc[NE * QF_MOE_NLINEAR];
	int32_t *z[NE * QF_MOE_NLINEAR];
	int64_t tokens[NE], sum = 0;
	struct qf_brecq_experts ex = { qp, q, sc, z, tokens };
	struct qf_brecq_result res;
	struct qf_brecq_opts o;
	int k, l;

	qf_brecq_opts_default(&o);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		o.qp[l].bits = l <= QF_TF_O ? 4 : 16;
		o.qp[l].group = 16;
	}
	for (k = 0; k < NE * QF_MOE_NLINEAR; k++) {
		qp[k] = o.qp[QF_TF_Q];
		q[k] = malloc(MI * HID);
		sc[k] = malloc(sizeof(uint16_t) * MI * HID);
		z[k] = malloc(sizeof(int32_t) * MI * HID);
		QF_ASSERT(q[k] && sc[k] && z[k]);
		memset(q[k], 0xff, MI * HID);	/* 4 bits: all overwritten */
	}
	o.moe = &ex;
	o.iters = 200;
	o.batch_seqs = NSEQ;
	QF_ASSERT(qf_brecq_block(&b->c, 0, &b->ly, &xs, &ys, NSEQ, SEQ, &o,
				 NULL, NULL, NULL, &res) == 0);
	for (k = 0; k < NE; k++)
		sum += tokens[k];
	QF_ASSERT(sum == NSEQ * SEQ * TOPK);
	for (k = 0; k < NE * QF_MOE_NLINEAR; k++) {
		for (l = 0; l < MI * HID; l++)
			QF_ASSERT(q[k][l] <= 15);
		free(q[k]);
		free(sc[k]);
		free(z[k]);
	}
	printf("brecq of the MoE block: output mse rtn %.4g -> %.4g in %d "
	       "steps\n", res.mse_rtn, res.mse_final, res.iters);
	QF_ASSERT(res.mse_final < res.mse_rtn);
}

static void test_block(void)
{
	static const int64_t dims[4][2] = {
		{ 32, HID }, { 16, HID }, { 16, HID }, { HID, 32 },
	};
	struct blk *b = calloc(1, sizeof(*b));
	float ref[NSEQ * SEQ * HID], y[NSEQ * SEQ * HID];
	float *dw[QF_TF_NLINEAR] = { 0 }, *dwe[NE * QF_MOE_NLINEAR];
	double err = 0, mx = 0;
	char what[64];
	int l, k, i;

	QF_ASSERT(b);
	b->ly.moe = make(&b->c, false);
	b->c.inter = 8;
	b->c.layers = 1;
	b->c.heads = 4;
	b->c.kv_heads = 2;
	b->c.head_dim = 8;
	b->c.vocab = 64;
	b->c.rms_eps = 1e-6f;
	b->c.rope_theta = 10000.0f;
	for (l = 0; l <= QF_TF_O; l++)
		b->ly.w[l] = frand(dims[l][0] * dims[l][1],
				   (l <= QF_TF_K ? 3.0 : 1.7) / sqrt(32.0));
	b->ly.in_norm = frand(HID, 0.2);
	b->ly.post_norm = frand(HID, 0.2);
	for (i = 0; i < HID; i++) {
		b->ly.in_norm[i] += 1;
		b->ly.post_norm[i] += 1;
	}
	for (i = 0; i < NSEQ * SEQ * HID; i++) {
		b->x[i] = (float)drand();
		b->r[i] = (float)drand();
	}
	/* the layer's forward: its routing, and its output to compare */
	memcpy(ref, b->x, sizeof(ref));
	QF_ASSERT(qf_tf_layer_forward(&b->c, &b->ly, 0, ref, NSEQ, SEQ,
				      route_hook, b) == 1);
	memcpy(ref, b->x, sizeof(ref));
	QF_ASSERT(qf_tf_layer_forward(&b->c, &b->ly, 0, ref, NSEQ, SEQ, NULL,
				      NULL) == 0);
	QF_ASSERT(qf_tf_saved_init(&b->c, NSEQ, SEQ, &b->sv) == 0);
	b->sv.sel = b->sel;
	b->sv.p = b->p;
	QF_ASSERT(qf_tf_block_forward(&b->c, &b->ly, b->x, y, &b->sv) == 0);
	for (i = 0; i < NSEQ * SEQ * HID; i++) {
		err = fmax(err, fabs((double)y[i] - ref[i]));
		mx = fmax(mx, fabs((double)ref[i]));
	}
	QF_ASSERT(err <= 1e-5 * mx);
	for (l = 0; l <= QF_TF_O; l++)
		dw[l] = malloc(sizeof(float) * (size_t)(dims[l][0] * 32));
	for (k = 0; k < NE * QF_MOE_NLINEAR; k++)
		dwe[k] = malloc(sizeof(float) * MI * HID);
	b->sv.dwe = dwe;
	QF_ASSERT(qf_tf_block_backward(&b->c, &b->ly, &b->sv, b->r, dw) == 0);
	for (l = 0; l <= QF_TF_O; l++) {
		snprintf(what, sizeof(what), "linear %d", l);
		block_dir(b, b->ly.w[l], dw[l], dims[l][0] * dims[l][1], what);
	}
	for (k = 0; k < NE * QF_MOE_NLINEAR; k++) {
		snprintf(what, sizeof(what), "expert %d linear %d",
			 k / QF_MOE_NLINEAR, k % QF_MOE_NLINEAR);
		block_dir(b, b->ly.moe->w[k], dwe[k], MI * HID, what);
	}
	printf("block backward (attention + MoE): ok, forward within %.1e "
	       "of the layer's\n", err / mx);
	test_recon(b, ref);
	for (l = 0; l <= QF_TF_O; l++) {
		free(dw[l]);
		free(b->ly.w[l]);
	}
	for (k = 0; k < NE * QF_MOE_NLINEAR; k++)
		free(dwe[k]);
	free(b->ly.in_norm);
	free(b->ly.post_norm);
	qf_tf_moe_free(b->ly.moe);
	qf_tf_saved_free(&b->sv);
	free(b);
}

int main(void)
{
	test_grad(false, false);
	test_grad(true, false);
	test_grad(false, true);
	test_block();
	return 0;
}
