/*
 * ggml_fit.c - round-to-nearest on ggml's own Q4_0 / Q4_1 / Q8_0 block
 * grids with each block's scale fitted, for the GGUF views of RTN
 * variants (issue #24: quantfs's RTN Q4_0 view trailed llama.cpp's).
 *
 * Why not the variant's integers: quantfs's symmetric grid is the GPTQ
 * checkpoints' (positive scale 2 x absmax / 15, codes -8..7), which
 * wastes half a step at the extreme; ggml's Q4_0 scale may be negative
 * (block_q4_0 in ggml-common.h: value = d * (q - 8)), so the signed
 * extreme lands exactly on code -8 and the step is absmax / 8, ggml's
 * reference rule.  Here each block also tries scales around it: codes
 * by nearest rounding at iscale = -(base * (1 + s)) / extreme for 21
 * values of s in [-1/8, 1/8], the (weighted) least-squares scale for
 * those codes, stored as fp16, the codes rounded again to nearest for
 * the stored scale; and the reference's own scale with its codes
 * rounded to nearest.  It keeps the least (weighted) squared error, so
 * no block is worse than the reference's.  Q4_1 does the same with the
 * min..max span and a joint least-squares scale and offset.  Weights:
 * the importance vector when given, else 1 (plain squared error: RTN
 * uses no data).
 *
 * The decoders stay ggml_quants.c's: the bytes are plain ggml blocks.
 */
#include <math.h>
#include <string.h>

#include "gguf.h"

#define QK 32
#define NSTEP 10			/* s = k / (8 NSTEP), |k| <= NSTEP */
#define EPS 1e-15f

/* Nearest integer (ties to even), clamped to [lo, hi]; NaN -> lo. */
static int nearest(float v, int lo, int hi)
{
	if (!(v > (float)lo))
		return lo;
	if (v >= (float)hi)
		return hi;
	return (int)lrintf(v);
}

static float fp16_of(float v, uint16_t *h)
{
	*h = qf_f32_to_f16(v);
	return qf_f16_to_f32(*h);
}

/* Weighted squared error of the block decoded as d * l + m. */
static double block_err(const float *x, const float *w, const int *l,
			float d, float m)
{
	double e = 0;
	int i;

	for (i = 0; i < QK; i++) {
		double r = (double)d * l[i] + m - x[i];

		e += (w ? w[i] : 1.0) * r * r;
	}
	return e;
}

/* Codes nearest to x / d (+ offset) for a stored d, m. */
static void recode(const float *x, float d, float m, int lo, int hi, int *l)
{
	int i;

	for (i = 0; i < QK; i++)
		l[i] = d != 0 ? nearest((x[i] - m) / d, lo, hi) : 0;
}

/*
 * The reference encoding into y and its error *e (decoded from its
 * bytes).  Returns its errors: QF_ENUMERIC for a non-finite x or scale.
 */
static int ref_block(enum qf_ggml_type t, const float *x, const float *w,
		     uint8_t *y, double *e)
{
	float v[QK];
	int i, ret = qf_ggml_quantize_row(t, x, QK, NULL, y);

	if (!ret)
		ret = qf_ggml_dequantize_row(t, y, QK, v);
	*e = 0;
	for (i = 0; i < QK && !ret; i++)
		*e += (w ? w[i] : 1.0) * ((double)v[i] - x[i]) *
		      ((double)v[i] - x[i]);
	return ret;
}

/*
 * Symmetric grid lo..hi (Q4_0: -8..7, Q8_0: -127..127): the best scale
 * around extreme / lo.  *dh the fp16 scale, l the codes; returns the
 * error, INFINITY when no candidate has a finite fp16 scale.
 */
static double fit_sym(const float *x, const float *w, int lo, int hi,
		      uint16_t *dh, int *l)
{
	float amax = 0, ext = 0, d, sxl, sll;
	double best = INFINITY, e;
	int i, k, c[QK];
	uint16_t h;

	for (i = 0; i < QK; i++) {
		if (fabsf(x[i]) > amax) {
			amax = fabsf(x[i]);
			ext = x[i];
		}
	}
	if (amax < EPS)
		return INFINITY;	/* the reference's zero block */
	for (k = -NSTEP; k <= NSTEP; k++) {
		float iscale = -lo * (1 + k / (8.0f * NSTEP)) / -ext;

		sxl = sll = 0;
		for (i = 0; i < QK; i++) {
			float wi = w ? w[i] : 1;

			c[i] = nearest(x[i] * iscale, lo, hi);
			sxl += wi * x[i] * c[i];
			sll += wi * c[i] * c[i];
		}
		if (!(sll > 0))
			continue;
		d = fp16_of(sxl / sll, &h);
		if (!isfinite(d) || d == 0)
			continue;
		recode(x, d, 0, lo, hi, c);
		e = block_err(x, w, c, d, 0);
		if (e < best) {
			best = e;
			*dh = h;
			memcpy(l, c, sizeof(c));
		}
	}
	return best;
}

/* Q4_1: x ~ d * l + m, l in 0..15, d and m fp16. */
static double fit_q4_1(const float *x, const float *w, uint16_t *dh,
		       uint16_t *mh, int *l)
{
	float lo = x[0], hi = x[0];
	double best = INFINITY, e;
	int i, k, c[QK];

	for (i = 1; i < QK; i++) {
		lo = fminf(lo, x[i]);
		hi = fmaxf(hi, x[i]);
	}
	if (!(hi - lo > EPS))
		return INFINITY;
	for (k = -NSTEP; k <= NSTEP; k++) {
		float iscale = 15 * (1 + k / (8.0f * NSTEP)) / (hi - lo);
		double sw = 0, sl = 0, sll = 0, sx = 0, sxl = 0, det;
		float d, m;
		uint16_t h1, h2;

		for (i = 0; i < QK; i++) {
			double wi = w ? w[i] : 1;

			/* the stretched grid, centred on the span */
			c[i] = nearest((x[i] - (lo + hi) / 2) * iscale + 7.5f,
				       0, 15);
			sw += wi;
			sl += wi * c[i];
			sll += wi * c[i] * c[i];
			sx += wi * x[i];
			sxl += wi * x[i] * c[i];
		}
		det = sw * sll - sl * sl;
		if (!(det > 0))
			continue;
		d = fp16_of((float)((sw * sxl - sl * sx) / det), &h1);
		m = fp16_of((float)((sll * sx - sl * sxl) / det), &h2);
		if (!isfinite(d) || !isfinite(m) || !(d > 0))
			continue;
		recode(x, d, m, 0, 15, c);
		e = block_err(x, w, c, d, m);
		if (e < best) {
			best = e;
			*dh = h1;
			*mh = h2;
			memcpy(l, c, sizeof(c));
		}
	}
	return best;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

/* One block of 32: the fit when it beats the reference, else the ref. */
static int fit_block(enum qf_ggml_type t, const float *x, const float *w,
		     uint8_t *y)
{
	int lo = t == QF_GGML_Q4_1 ? 0 : t == QF_GGML_Q4_0 ? -8 : -127;
	int hi = t == QF_GGML_Q4_1 ? 15 : t == QF_GGML_Q4_0 ? 7 : 127;
	uint16_t dh = 0, mh = 0, rd, rm = 0;
	int l[QK], c[QK], j, ret;
	double e, e2, eref;
	float d, m = 0;

	ret = ref_block(t, x, w, y, &eref);
	if (ret)
		return ret;
	if (t == QF_GGML_Q4_1)
		e = fit_q4_1(x, w, &dh, &mh, l);
	else
		e = fit_sym(x, w, lo, hi, &dh, l);
	/* the reference's own scale, its codes rounded to nearest */
	rd = get16(y);
	if (t == QF_GGML_Q4_1)
		m = qf_f16_to_f32(rm = get16(y + 2));
	d = qf_f16_to_f32(rd);
	if (d != 0) {
		recode(x, d, m, lo, hi, c);
		e2 = block_err(x, w, c, d, m);
		if (e2 < e) {
			e = e2;
			dh = rd;
			mh = rm;
			memcpy(l, c, sizeof(c));
		}
	}
	if (!(e < eref))
		return 0;		/* the reference's bytes */
	put16(y, dh);
	if (t == QF_GGML_Q8_0) {
		for (j = 0; j < QK; j++)
			y[2 + j] = (uint8_t)(int8_t)l[j];
		return 0;
	}
	if (t == QF_GGML_Q4_1)
		put16(y + 2, mh);
	for (j = 0; j < QK / 2; j++) {
		int a = l[j] + (t == QF_GGML_Q4_0 ? 8 : 0);
		int b = l[QK / 2 + j] + (t == QF_GGML_Q4_0 ? 8 : 0);

		y[(t == QF_GGML_Q4_1 ? 4 : 2) + j] = (uint8_t)(a | b << 4);
	}
	return 0;
}

int qf_ggml_quantize_row_fit(enum qf_ggml_type t, const float *x, int64_t n,
			     const float *imp, void *dst)
{
	size_t bytes = qf_ggml_block_bytes(t);
	uint8_t *y = dst;
	int64_t b;
	int ret = 0;

	if (t != QF_GGML_Q4_0 && t != QF_GGML_Q4_1 && t != QF_GGML_Q8_0)
		return qf_ggml_quantize_row(t, x, n, imp, dst);
	if (!qf_ggml_row_bytes(t, n))
		return -EINVAL;
	for (b = 0; imp && b < n; b++)	/* (x: the reference checks it) */
		if (!(imp[b] >= 0 && imp[b] < INFINITY))
			return -EINVAL;
	for (b = 0; b < n / QK && !ret; b++)
		ret = fit_block(t, x + b * QK, imp ? imp + b * QK : NULL,
				y + (size_t)b * bytes);
	return ret;
}
