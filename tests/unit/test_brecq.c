/*
 * test_brecq.c - BRECQ's learned rounding: AdaRound's soft/hard rounding
 * and its V gradient; reconstruction lowering the held-out block MSE
 * below RTN on the same grid; determinism; errors; and the seconds per
 * step at the 5M-parameter model's shapes.  The block backward it rests
 * on is checked by test_brecq_grad.c.
 */
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "brecq.h"
#include "check.h"
#include "tf_backward.h"
#include "tf_kernels.h"
#include "brecq_fixture.h"

/* ------------------------------------------------------------------ */
/* AdaRound                                                           */

static void test_adaround(int bits, bool sym)
{
	const int64_t out = 24, in = 80;	/* groups 32, 32, 16 */
	struct qf_qparams qp = { bits, 32, sym };
	struct qf_adaround a;
	float w[24 * 80], ws[24 * 80], wh[24 * 80], dw[24 * 80], gv[24 * 80];
	uint8_t q[24 * 80], qr[24 * 80];
	uint16_t sc[24 * 3], sc2[24 * 3];
	int32_t z[24 * 3], z2[24 * 3];
	int maxq = (1 << bits) - 1;
	double emax = 0, e_fd = 0, m_fd = 0;
	int64_t i, ties = 0, bad = 0;

	fill(w, out * in, 0.1, 0);
	for (i = 0; i < out * in; i += 37)
		w[i] *= 5;	/* outliers */
	for (i = 0; i < in; i++)
		w[i] = fabsf(w[i]);	/* an all-positive row */
	/* exact ties w / s = k + 1/2 inside group 0 of rows 2..23 (the
	 * group's range, hence its grid, unchanged) */
	CHECK(qf_rtn_quantize(w, out, in, &qp, qr, sc, z), ==, 0);
	for (i = 2; i < out; i++) {
		float s = qf_f16_to_f32(sc[i * 3]);
		float k = (float)(i % 4) - 2 + 0.5f;
		float lo = 0, hi = 0, t = k * s;
		int64_t j;

		for (j = 0; j < 32; j++) {
			lo = fminf(lo, w[i * in + j]);
			hi = fmaxf(hi, w[i * in + j]);
		}
		for (j = 0; j < 32; j++)
			if (t > lo && t < hi && w[i * in + j] > lo &&
			    w[i * in + j] < hi) {
				w[i * in + j] = t;
				break;
			}
	}
	memcpy(sc2, sc, sizeof(sc));
	memcpy(z2, z, sizeof(z));
	CHECK(qf_adaround_init(&a, w, out, in, &qp), ==, 0);
	CHECK(qf_rtn_quantize(w, out, in, &qp, qr, sc, z), ==, 0);
	CHECK(memcmp(sc2, sc, sizeof(sc)), ==, 0);
	CHECK(memcmp(z2, z, sizeof(z)), ==, 0);
	CHECK(a.ngroups, ==, 3);
	CHECK(memcmp(a.sc16, sc, sizeof(sc)), ==, 0);
	CHECK(memcmp(a.zero, z, sizeof(z)), ==, 0);

	/* at init W~ = s (clamp(w / s + z, 0, maxq) - z): w on the grid's
	 * range, clamped outside it */
	qf_adaround_soft(&a, ws);
	for (i = 0; i < out * in; i++) {
		int64_t gi = (i / in) * 3 + (i % in) / 32;
		float s = a.sc[gi];
		double t = (double)w[i] / s + z[gi];

		t = t < 0 ? 0 : t > maxq ? maxq : t;
		emax = fmax(emax, fabs(ws[i] - s * (t - z[gi])) / s);
	}
	printf("adaround %d-bit %s: init soft weights within %.2g scales of "
	       "the clamped fp weights\n", bits, sym ? "sym" : "asym", emax);
	CHECK(emax < 1e-4, ==, 1);

	/* nearest = RTN's codes; so is the hard rounding at init, ties
	 * (to even) included */
	qf_adaround_hard(&a, w, true, q, NULL);
	CHECK(memcmp(q, qr, sizeof(q)), ==, 0);
	qf_adaround_hard(&a, NULL, false, q, wh);
	for (i = 0; i < out * in; i++) {
		int64_t gi = (i / in) * 3 + (i % in) / 32;
		float t = w[i] / a.sc[gi];

		ties += t - floorf(t) == 0.5f;
		bad += q[i] != qr[i];
		CHECK_NEAR(wh[i], a.sc[gi] * ((float)q[i] - z[gi]), 0);
	}
	CHECK(bad, ==, 0);
	CHECK(ties, >=, 10);

	/* any V: codes are floor or floor + 1 of w / s + z, in [0, maxq] */
	for (i = 0; i < out * in; i++)
		a.v[i] = (float)(3 * drand());
	qf_adaround_hard(&a, NULL, false, q, NULL);
	for (i = 0; i < out * in; i++) {
		int64_t gi = (i / in) * 3 + (i % in) / 32;
		float fl = floorf(w[i] / a.sc[gi]) + z[gi];
		float lo = fl < 0 ? 0 : fl > maxq ? maxq : fl;
		float hi = fl + 1 < 0 ? 0 : fl + 1 > maxq ? maxq : fl + 1;

		CHECK(q[i] == lo || q[i] == hi, ==, 1);
		CHECK(q[i], <=, maxq);
		CHECK(q[i] == (a.v[i] >= 0 ? hi : lo), ==, 1);
	}

	/* dL/dV of L = sum dw W~(V) + reg: against finite differences */
	for (i = 0; i < out * in; i++)
		a.v[i] = (float)(2 * drand());
	fill(dw, out * in, 1, 0);
	qf_adaround_grad(&a, dw, 0.05f, 4.0f, gv);
	for (i = 0; i < out * in; i += 7) {
		float v0 = a.v[i];
		double lp, lm, fd;

		a.v[i] = v0 + 1e-3f;
		qf_adaround_soft(&a, ws);
		lp = dot_f(ws, dw, out * in) +
		     qf_adaround_grad(&a, dw, 0.05f, 4.0f, wh);
		a.v[i] = v0 - 1e-3f;
		qf_adaround_soft(&a, ws);
		lm = dot_f(ws, dw, out * in) +
		     qf_adaround_grad(&a, dw, 0.05f, 4.0f, wh);
		a.v[i] = v0;
		fd = (lp - lm) / 2e-3;
		e_fd = fmax(e_fd, fabs(fd - gv[i]));
		m_fd = fmax(m_fd, fabs(fd));
	}
	printf("adaround %d-bit %s: dL/dV max rel err %.2e (float fd), "
	       "%lld ties\n", bits, sym ? "sym" : "asym", e_fd / m_fd,
	       (long long)ties);
	CHECK(e_fd / m_fd < 1e-2, ==, 1);
	qf_adaround_free(&a);
}

/* ------------------------------------------------------------------ */
/* reconstruction                                                     */

/* Mean (block(x) - y)^2 of layer ly on nseq sequences. */
static double block_mse(const struct qf_tf_config *c,
			const struct qf_tf_layer *ly, const float *x,
			const float *y, int nseq, int seqlen)
{
	int64_t n = (int64_t)nseq * seqlen * c->hidden, i;
	float *buf = falloc(n);
	double s = 0;

	memcpy(buf, x, sizeof(float) * (size_t)n);
	CHECK(qf_tf_layer_forward(c, ly, 0, buf, nseq, seqlen, NULL, NULL),
	      ==, 0);
	for (i = 0; i < n; i++)
		s += ((double)buf[i] - y[i]) * ((double)buf[i] - y[i]);
	free(buf);
	return s / (double)n;
}

struct recon {
	struct qf_tf_config c;
	struct qf_tf_layer fp;
	float *x, *y;		/* calibration */
	float *xh, *yh;		/* held out */
	int nseq, nheld, seqlen;
};

static int progress_cb(void *arg, int iter, int iters, double rec,
		       double reg)
{
	int *calls = arg;

	(*calls)++;
	if (getenv("QF_BRECQ_VERBOSE"))
		printf("  step %d/%d: rec %.5f reg %.3f\n", iter, iters, rec,
		       reg);
	return 0;
}

/*
 * Inputs with the structure real activations have (and that AdaRound
 * exploits: with isotropic inputs nearest rounding is already optimal
 * per weight): a rank-8 component through a fixed mixing matrix, a few
 * outlier channels, small isotropic noise.
 */
static void gen_inputs(float *x, int64_t ntok, int hid, const float *mix)
{
	int64_t t;
	int i, k;

	for (t = 0; t < ntok; t++) {
		float z[8];

		for (k = 0; k < 8; k++)
			z[k] = (float)drand() * (float)(2.0 / (1 + k));
		for (i = 0; i < hid; i++) {
			float v = 0.3f * (float)drand();

			for (k = 0; k < 8; k++)
				v += z[k] * mix[k * hid + i];
			x[t * hid + i] = v * (i % 13 == 3 ? 6 : 1);
		}
	}
}

static void recon_init(struct recon *r)
{
	float mix[8 * 64];
	int64_t n, nh;

	make_config(&r->c, 64, 4, 2, 16, 160, VAR_LLAMA);
	make_layer(&r->c, &r->fp);
	r->nseq = 64;
	r->nheld = 16;
	r->seqlen = 32;
	n = (int64_t)r->nseq * r->seqlen * r->c.hidden;
	nh = (int64_t)r->nheld * r->seqlen * r->c.hidden;
	r->x = falloc(n); r->y = falloc(n);
	r->xh = falloc(nh); r->yh = falloc(nh);
	fill(mix, 8 * 64, 1.7, 0);
	gen_inputs(r->x, (int64_t)r->nseq * r->seqlen, 64, mix);
	gen_inputs(r->xh, (int64_t)r->nheld * r->seqlen, 64, mix);
	memcpy(r->y, r->x, sizeof(float) * (size_t)n);
	memcpy(r->yh, r->xh, sizeof(float) * (size_t)nh);
	CHECK(qf_tf_layer_forward(&r->c, &r->fp, 0, r->y, r->nseq, r->seqlen,
				  NULL, NULL), ==, 0);
	CHECK(qf_tf_layer_forward(&r->c, &r->fp, 0, r->yh, r->nheld,
				  r->seqlen, NULL, NULL), ==, 0);
}

static void recon_free(struct recon *r)
{
	qf_tf_layer_free(&r->fp);
	free(r->x); free(r->y); free(r->xh); free(r->yh);
}

/* qf_brecq_block on r's set, in memory or (files) in temporary files. */
static int recon_block(struct recon *r, struct qf_tf_layer *ly,
		       const struct qf_brecq_opts *o, bool files,
		       uint8_t *q[QF_TF_NLINEAR], uint16_t *sc[QF_TF_NLINEAR],
		       int32_t *z[QF_TF_NLINEAR], struct qf_brecq_result *res)
{
	int64_t row = (int64_t)r->seqlen * r->c.hidden;
	struct qf_tf_seqs x = { r->x, -1, row }, y = { r->y, -1, row };
	int ret;

	if (files) {
		x.fd = qf_spill_open(NULL);
		y.fd = qf_spill_open(NULL);
		CHECK(x.fd >= 0 && y.fd >= 0, ==, 1);
		x.mem = y.mem = NULL;
		CHECK(qf_tf_seqs_write(&x, 0, r->nseq, r->x), ==, 0);
		CHECK(qf_tf_seqs_write(&y, 0, r->nseq, r->y), ==, 0);
	}
	ret = qf_brecq_block(&r->c, 0, ly, &x, &y, r->nseq, r->seqlen, o, q,
			     sc, z, res);
	if (files) {
		close(x.fd);
		close(y.fd);
	}
	return ret;
}

/* Run BRECQ on a copy of the fp layer; codes into q[], layer into *ly. */
static int recon_run(struct recon *r, const struct qf_brecq_opts *o,
		     bool files, struct qf_tf_layer *ly, uint8_t *q[QF_TF_NLINEAR],
		     uint16_t *sc[QF_TF_NLINEAR], int32_t *z[QF_TF_NLINEAR],
		     struct qf_brecq_result *res)
{
	int64_t out, in, ng;
	int l;

	copy_layer(&r->c, &r->fp, ly);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&r->c, l, &out, &in);
		q[l] = malloc((size_t)(out * in));
		ng = out * qf_ngroups(in, o->qp[l].group);
		sc[l] = malloc(sizeof(uint16_t) * (size_t)ng);
		z[l] = malloc(sizeof(int32_t) * (size_t)ng);
	}
	return recon_block(r, ly, o, files, q, sc, z, res);
}

static void free_codes(uint8_t *q[QF_TF_NLINEAR], uint16_t *sc[QF_TF_NLINEAR],
		       int32_t *z[QF_TF_NLINEAR])
{
	int l;

	for (l = 0; l < QF_TF_NLINEAR; l++) {
		free(q[l]);
		free(sc[l]);
		free(z[l]);
	}
}

static void test_reconstruction(struct recon *r)
{
	struct qf_brecq_opts o;
	struct qf_brecq_result res;
	struct qf_tf_layer ly, rtn;
	uint8_t *q[QF_TF_NLINEAR], *qr;
	uint16_t *sc[QF_TF_NLINEAR], *scr;
	int32_t *z[QF_TF_NLINEAR], *zr;
	double held_rtn, held_brecq;
	int64_t out, in, ng, i, j, flips = 0, nw = 0;
	int l, calls = 0;

	qf_brecq_opts_default(&o);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		o.qp[l].bits = 3;
		o.qp[l].group = 32;
	}
	o.batch_seqs = 4;
	o.progress = progress_cb;
	o.arg = &calls;
	o.every = 50;
	o.seed = 7;
	CHECK(recon_run(r, &o, false, &ly, q, sc, z, &res), ==, 0);
	CHECK(res.iters, ==, o.iters);
	CHECK(calls, ==, o.iters / 50);

	/* RTN on the same grid, for the held-out comparison */
	copy_layer(&r->c, &r->fp, &rtn);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&r->c, l, &out, &in);
		ng = qf_ngroups(in, 32);
		qr = malloc((size_t)(out * in));
		scr = malloc(sizeof(uint16_t) * (size_t)(out * ng));
		zr = malloc(sizeof(int32_t) * (size_t)(out * ng));
		CHECK(qf_rtn_quantize(r->fp.w[l], out, in, &o.qp[l], qr, scr,
				      zr), ==, 0);
		CHECK(memcmp(scr, sc[l], sizeof(uint16_t) * (size_t)(out * ng)),
		      ==, 0);
		CHECK(memcmp(zr, z[l], sizeof(int32_t) * (size_t)(out * ng)),
		      ==, 0);
		for (i = 0; i < out; i++)
			for (j = 0; j < in; j++) {
				int64_t gi = i * ng + j / 32, k = i * in + j;
				float s = qf_f16_to_f32(scr[gi]);
				float fl = floorf(r->fp.w[l][k] / s) + zr[gi];
				float lo = fl < 0 ? 0 : fl > 7 ? 7 : fl;
				float hi = fl + 1 > 7 ? 7 : fl + 1 < 0 ? 0 :
					   fl + 1;

				rtn.w[l][k] = s * ((float)qr[k] - zr[gi]);
				CHECK(q[l][k] == lo || q[l][k] == hi, ==, 1);
				CHECK(ly.w[l][k] ==
				      s * ((float)q[l][k] - zr[gi]), ==, 1);
				flips += q[l][k] != qr[k];
				nw++;
			}
		free(qr); free(scr); free(zr);
	}
	held_rtn = block_mse(&r->c, &rtn, r->xh, r->yh, r->nheld, r->seqlen);
	held_brecq = block_mse(&r->c, &ly, r->xh, r->yh, r->nheld, r->seqlen);
	CHECK_NEAR(block_mse(&r->c, &rtn, r->x, r->y, r->nseq, r->seqlen),
		   res.mse_rtn, 1e-6 * res.mse_rtn);
	CHECK_NEAR(block_mse(&r->c, &ly, r->x, r->y, r->nseq, r->seqlen),
		   res.mse_final, 1e-6 * res.mse_final);
	printf("reconstruction, 3-bit g32, %d steps (%.2f s): calibration "
	       "MSE rtn %.4g -> brecq %.4g; held-out rtn %.4g -> brecq %.4g "
	       "(%.1f%% lower); %.1f%% of roundings flipped\n", res.iters,
	       res.seconds, res.mse_rtn, res.mse_final, held_rtn, held_brecq,
	       100 * (1 - held_brecq / held_rtn), 100.0 * flips / nw);
	CHECK(res.mse_final < res.mse_rtn, ==, 1);
	CHECK(held_brecq < 0.9 * held_rtn, ==, 1);
	/* the norms and the fp weights' biases are untouched */
	CHECK(memcmp(ly.in_norm, r->fp.in_norm, sizeof(float) * 64), ==, 0);
	free_codes(q, sc, z);
	qf_tf_layer_free(&ly);
	qf_tf_layer_free(&rtn);
}

/* Weights of the linears o quantizes. */
static int64_t spill_weights(const struct qf_tf_config *c,
			     const struct qf_brecq_opts *o)
{
	int64_t n = 0, out, in;
	int l;

	for (l = 0; l < QF_TF_NLINEAR; l++)
		if (o->qp[l].bits != 16) {
			lin_dims(c, l, &out, &in);
			n += out * in;
		}
	return n;
}

/*
 * The same seed gives the same codes; so does a run with its set in
 * files and its state spilled (qf_brecq_opts.mem_bytes), 8-bit base
 * included.
 */
static void test_determinism(struct recon *r)
{
	struct qf_brecq_opts o;
	struct qf_brecq_result res[2];
	struct qf_tf_layer ly[2];
	uint8_t *q[2][QF_TF_NLINEAR];
	uint16_t *sc[2][QF_TF_NLINEAR];
	int32_t *z[2][QF_TF_NLINEAR];
	int64_t out, in;
	int l, k, same = 1;

	qf_brecq_opts_default(&o);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		o.qp[l].bits = 3;
		o.qp[l].group = 32;
		o.qp[l].sym = l % 2;
	}
	o.qp[QF_TF_V].bits = 16;	/* kept in fp */
	o.qp[QF_TF_K].bits = 8;		/* base in 16 bits */
	o.iters = 40;
	o.batch_seqs = 3;
	o.seed = 12345;
	for (k = 0; k < 2; k++) {
		/* the second with its set in files, its state spilled */
		o.mem_bytes = k ? 1 : 0;
		CHECK(recon_run(r, &o, k == 1, &ly[k], q[k], sc[k], z[k],
				&res[k]), ==, 0);
	}
	CHECK(res[0].spilled, ==, 0);
	CHECK(res[1].spilled, ==, 12 * spill_weights(&r->c, &o));
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&r->c, l, &out, &in);
		if (l == QF_TF_V) {
			size_t sz = sizeof(float) * (size_t)(out * in);

			CHECK(memcmp(ly[0].w[l], r->fp.w[l], sz), ==, 0);
			continue;
		}
		same &= !memcmp(q[0][l], q[1][l], (size_t)(out * in));
		same &= !memcmp(ly[0].w[l], ly[1].w[l],
				sizeof(float) * (size_t)(out * in));
	}
	CHECK(same, ==, 1);
	CHECK(res[0].mse_final == res[1].mse_final, ==, 1);
	printf("determinism: two runs with seed %llu, the second from files "
	       "with its state spilled (%lld bytes), give identical codes "
	       "(%s)\n", (unsigned long long)o.seed,
	       (long long)res[1].spilled, same ? "yes" : "NO");
	for (k = 0; k < 2; k++) {
		free_codes(q[k], sc[k], z[k]);
		qf_tf_layer_free(&ly[k]);
	}
}

/* No steps: the codes are RTN's (the baseline a variant with 0 steps). */
static void test_iters0(struct recon *r)
{
	struct qf_brecq_opts o;
	struct qf_brecq_result res;
	struct qf_tf_layer ly;
	uint8_t *q[QF_TF_NLINEAR], *qr;
	uint16_t *sc[QF_TF_NLINEAR], *scr;
	int32_t *z[QF_TF_NLINEAR], *zr;
	int64_t out, in, ng;
	int l, same = 1;

	qf_brecq_opts_default(&o);
	o.iters = 0;
	CHECK(recon_run(r, &o, false, &ly, q, sc, z, &res), ==, 0);
	CHECK(res.iters, ==, 0);
	CHECK(res.mse_final == res.mse_rtn, ==, 1);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&r->c, l, &out, &in);
		ng = out * qf_ngroups(in, o.qp[l].group);
		qr = malloc((size_t)(out * in));
		scr = malloc(sizeof(uint16_t) * (size_t)ng);
		zr = malloc(sizeof(int32_t) * (size_t)ng);
		CHECK(qf_rtn_quantize(r->fp.w[l], out, in, &o.qp[l], qr, scr,
				      zr), ==, 0);
		same &= !memcmp(qr, q[l], (size_t)(out * in));
		free(qr);
		free(scr);
		free(zr);
	}
	CHECK(same, ==, 1);
	free_codes(q, sc, z);
	qf_tf_layer_free(&ly);
}

static int abort_cb(void *arg, int iter, int iters, double rec, double reg)
{
	(void)arg; (void)iters; (void)rec; (void)reg;
	return iter == 2 ? -ECANCELED : 0;
}

/* Bad options fail cleanly; an aborted run stops where it was told. */
static void test_errors(struct recon *r)
{
	struct qf_brecq_opts o;
	struct qf_brecq_result res;
	struct qf_tf_layer ly;
	uint8_t *q[QF_TF_NLINEAR];
	uint16_t *sc[QF_TF_NLINEAR];
	int32_t *z[QF_TF_NLINEAR];

	qf_brecq_opts_default(&o);
	o.qp[QF_TF_UP].bits = 9;
	CHECK(recon_run(r, &o, false, &ly, q, sc, z, &res), ==, -EINVAL);
	free_codes(q, sc, z);
	qf_tf_layer_free(&ly);
	qf_brecq_opts_default(&o);
	o.beta_lo = 0.5f;
	CHECK(recon_run(r, &o, false, &ly, q, sc, z, &res), ==, -EINVAL);
	free_codes(q, sc, z);
	qf_tf_layer_free(&ly);

	qf_brecq_opts_default(&o);
	o.progress = abort_cb;
	o.every = 1;
	CHECK(recon_run(r, &o, false, &ly, q, sc, z, &res), ==, -ECANCELED);
	CHECK(res.iters, ==, 2);
	free_codes(q, sc, z);
	qf_tf_layer_free(&ly);
}

/*
 * The memory of a reconstruction (brecq.h), VmHWM above what the caller
 * holds (its layer, its set): in memory, base, V and the two moments
 * (13 bytes a weight) and one dL/dW~; spilled (mem_bytes) with the set
 * in files, base alone (1 byte) and one dL/dW~, beside the activations
 * of a mini-batch and of a pass's chunk either way.  Hidden 512,
 * intermediate 2048: 3.8M weights.
 */
static void test_memory(void)
{
	const int nseq = 8, seqlen = 64, bs = 2;
	struct recon r;
	struct qf_brecq_opts o;
	struct qf_brecq_result res;
	struct qf_tf_layer ly;
	int64_t row, n = 0, big = 0, out, in, act;
	long peak[2];
	int l, k;

	memset(&r, 0, sizeof(r));
	make_config(&r.c, 512, 8, 2, 64, 2048, VAR_LLAMA);
	make_layer(&r.c, &r.fp);
	r.nseq = nseq;
	r.seqlen = seqlen;
	row = (int64_t)seqlen * r.c.hidden;
	r.x = falloc(nseq * row);
	r.y = falloc(nseq * row);
	fill(r.x, nseq * row, 1, 0);
	memcpy(r.y, r.x, sizeof(float) * (size_t)(nseq * row));
	CHECK(qf_tf_layer_forward(&r.c, &r.fp, 0, r.y, nseq, seqlen, NULL,
				  NULL), ==, 0);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&r.c, l, &out, &in);
		n += out * in;
		big = out * in > big ? out * in : big;
	}
	/* a mini-batch's saved activations and scratch (tf_backward.c:
	 * 7 x hidden + 5 x inter + 4 x kv a token here) and its x, y,
	 * output; a pass's chunk (the whole set here), its target and the
	 * forward's scratch (plus up's 512 rows, in 2 MiB pages) */
	act = 4 * ((int64_t)bs * seqlen * (7 * r.c.hidden + 5 * r.c.inter +
					   4 * 128) + 3 * bs * row) +
	      4 * 2 * nseq * row +
	      qf_tf_layer_scratch_bytes(&r.c, seqlen) * nseq +
	      4 * 512 * r.c.inter + (2 << 20);
	for (k = 0; k < 2; k++) {
		qf_brecq_opts_default(&o);
		o.iters = 3;
		o.batch_seqs = bs;
		o.mem_bytes = k ? 1 : 0;
		copy_layer(&r.c, &r.fp, &ly);
		malloc_trim(0);
		qf_vm_kb(NULL, true);
		peak[k] = qf_vm_kb("VmRSS", false);
		CHECK(recon_block(&r, &ly, &o, k == 1, NULL, NULL, NULL, &res),
		      ==, 0);
		peak[k] = (qf_vm_kb("VmHWM", false) - peak[k]) * 1024;
		CHECK(res.spilled, ==, k ? 12 * n : 0);
		qf_tf_layer_free(&ly);
	}
	printf("memory: %.1fM weights; peak above the layer and set: %.1f MB "
	       "in memory, %.1f MB spilled with the set in files (formulas "
	       "%.1f, %.1f)\n", n / 1e6, peak[0] / 1e6, peak[1] / 1e6,
	       (13 * n + 4 * big + act) / 1e6, (n + 4 * big + act) / 1e6);
#ifndef __SANITIZE_ADDRESS__
	CHECK(peak[0], <=, 13 * n + 4 * big + act + (4 << 20));
	CHECK(peak[1], <=, n + 4 * big + act + (4 << 20));
	/* in memory the state alone is 12 bytes a weight; spilled, the
	 * whole peak stays below that */
	CHECK(peak[0], >=, 12 * n);
	CHECK(n + 4 * big + act + (4 << 20), <, 12 * n);
#endif
	recon_free(&r);
}

/* Seconds per Adam step at the 5M model's shapes (hidden 256, inter 768,
 * 8 heads of 32, 4 kv heads, seqlen 512, 2 sequences a batch). */
static void test_speed(void)
{
	struct qf_tf_config c;
	struct qf_tf_layer ly;
	struct qf_brecq_opts o;
	struct qf_brecq_result res;
	const int seqlen = 512, nseq = 2;
	int64_t n = (int64_t)nseq * seqlen * 256;
	float *x = falloc(n), *y = falloc(n);
	struct qf_tf_seqs xs = { x, -1, 256 * seqlen };
	struct qf_tf_seqs ys = { y, -1, 256 * seqlen };
	double t0, t1;
#if defined(__SANITIZE_ADDRESS__)
	const int iters = 1;
#else
	const int iters = 10;
#endif

	make_config(&c, 256, 8, 4, 32, 768, VAR_LLAMA);
	make_layer(&c, &ly);
	fill(x, n, 1, 0);
	memcpy(y, x, sizeof(float) * (size_t)n);
	CHECK(qf_tf_layer_forward(&c, &ly, 0, y, nseq, seqlen, NULL, NULL),
	      ==, 0);
	qf_brecq_opts_default(&o);
	o.iters = 0;
	t0 = now_s();
	CHECK(qf_brecq_block(&c, 0, &ly, &xs, &ys, nseq, seqlen, &o, NULL,
			     NULL, NULL, &res), ==, 0);
	t0 = now_s() - t0;
	qf_brecq_opts_default(&o);
	o.iters = iters;
	t1 = now_s();
	CHECK(qf_brecq_block(&c, 0, &ly, &xs, &ys, nseq, seqlen, &o, NULL,
			     NULL, NULL, &res), ==, 0);
	t1 = now_s() - t1;
	printf("speed: hidden 256, inter 768, 8 heads, seqlen 512, batch 2 "
	       "seqs: %.3f s per step (%d steps; setup and MSE %.3f s)\n",
	       (t1 - t0) / iters, iters, t0);
	qf_tf_layer_free(&ly);
	free(x);
	free(y);
}

int main(void)
{
	struct recon r;

	setvbuf(stdout, NULL, _IONBF, 0);
	test_adaround(3, false);
	test_adaround(4, true);
	test_adaround(2, false);
	recon_init(&r);
	test_reconstruction(&r);
	test_determinism(&r);
	test_errors(&r);
	test_iters0(&r);
	recon_free(&r);
	test_memory();
	test_speed();
	return qf_check_exit();
}
