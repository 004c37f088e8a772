/*
 * rtn.c - round-to-nearest group quantization (the GPTQ grid conventions).
 *
 * The hot loop is written so that gcc vectorizes it: rounding uses the
 * 1.5 * 2^23 trick (round half to even, like torch.round) instead of a
 * libm call, which is exact for |x| < 2^22; our quotients are bounded by
 * the grid (|w / scale| <= 2^bits + 1).  Do not build with -ffast-math.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "method.h"

#define RND_MAGIC 12582912.0f		/* 1.5 * 2^23 */

static inline float rnd(float x)
{
	volatile float t = x + RND_MAGIC;	/* keep the add */

	return t - RND_MAGIC;
}

/* Same rounding, vectorizable: no volatile; callers keep |x| < 2^22. */
static inline float rnd_v(float x)
{
	return (x + RND_MAGIC) - RND_MAGIC;
}

/*
 * Scale and zero of one group: [lo, hi] is the range of its weights.
 * Returns 0, or QF_ENUMERIC when the scale does not fit fp16.
 */
int qf_rtn_grid(float lo, float hi, const struct qf_qparams *p,
		      uint16_t *sc16, float *sc, int32_t *zero)
{
	int maxq = (1 << p->bits) - 1;
	float scale;
	int32_t z;

	lo = lo < 0 ? lo : 0;
	hi = hi > 0 ? hi : 0;
	if (p->sym) {
		float m = fabsf(lo) > hi ? fabsf(lo) : hi;

		if (m == 0)
			m = 1;
		scale = 2 * m / (float)maxq;
		z = (maxq + 1) / 2;
	} else {
		if (lo == 0 && hi == 0)
			lo = -1, hi = 1;
		scale = (hi - lo) / (float)maxq;
		z = (int32_t)rnd(-lo / scale);
		if (z < 1) {
			/* v1 checkpoints store zero - 1: keep zero >= 1 */
			z = 1;
			scale = hi / (float)(maxq - 1);
		}
	}
	*sc16 = qf_f32_to_f16(scale);
	*sc = qf_f16_to_f32(*sc16);
	if (!isfinite(*sc))
		return QF_ENUMERIC;
	if (*sc == 0) {
		*sc16 = 1;	/* smallest fp16 subnormal */
		*sc = qf_f16_to_f32(1);
	}
	if (!p->sym && z > maxq)
		z = maxq;
	*zero = z;
	return 0;
}

/* GCC's vector extensions: 8 floats, and their compare masks */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define LANES 8
#define NACC 4				/* independent chains of each (a-d) */

/* a < b ? a : b, lane by lane (a macro: an AVX vector may not cross a
 * function call of the default target) */
#define VPICK(a, b, m) ((v8f)(((v8i)(a) & (m)) | ((v8i)(b) & ~(m))))

/*
 * [*lo, *hi] of w[0..n), n > 0: NACC x LANES running minima and maxima
 * side by side, in vectors, which the compiler turns into vminps and
 * vmaxps (a single running minimum is a reduction it keeps scalar
 * without -ffast-math: one 4-cycle compare after another per weight, the
 * most of this file's time before).  The same result in any order:
 * production has checked the weights finite (no NaN), and qf_rtn_grid()
 * makes -0 and +0 alike.
 */
static inline __attribute__((always_inline)) void
range(const float *w, int64_t n, float *lo, float *hi)
{
	float l0 = w[0], h0 = w[0];
	v8f b = { l0, l0, l0, l0, l0, l0, l0, l0 }, x;
	v8f la = b, lb = b, lc = b, ld = b, ha = b, hb = b, hc = b, hd = b;
	int64_t j = 0;
	int i;

#define RANGE_STEP(l, h, k) do { \
		memcpy(&x, w + j + (k) * LANES, sizeof(x)); \
		l = VPICK(x, l, x < l); \
		h = VPICK(x, h, x > h); \
	} while (0)
	for (; j + NACC * LANES <= n; j += NACC * LANES) {
		RANGE_STEP(la, ha, 0);
		RANGE_STEP(lb, hb, 1);
		RANGE_STEP(lc, hc, 2);
		RANGE_STEP(ld, hd, 3);
	}
#undef RANGE_STEP
	for (; j < n; j++) {
		l0 = w[j] < l0 ? w[j] : l0;
		h0 = w[j] > h0 ? w[j] : h0;
	}
	/* the chains into one vector, then its lanes */
	la = VPICK(lb, la, lb < la);
	lc = VPICK(ld, lc, ld < lc);
	la = VPICK(lc, la, lc < la);
	ha = VPICK(hb, ha, hb > ha);
	hc = VPICK(hd, hc, hd > hc);
	ha = VPICK(hc, ha, hc > ha);
	for (i = 0; i < LANES; i++) {
		l0 = la[i] < l0 ? la[i] : l0;
		h0 = ha[i] > h0 ? ha[i] : h0;
	}
	*lo = l0;
	*hi = h0;
}

QF_HOT int qf_rtn_quantize(const float *w, int64_t rows, int64_t in,
		    const struct qf_qparams *p, uint8_t *q, uint16_t *scale_f16,
		    int32_t *zero)
{
	int64_t ng = qf_ngroups(in, p->group);
	int64_t gs = ng == 1 ? in : p->group;
	float maxq = (float)((1 << p->bits) - 1);
	int64_t r, g, j;
	int ret;

	for (r = 0; r < rows; r++) {
		const float *wr = w + r * in;
		uint8_t *qr = q + r * in;

		for (g = 0; g < ng; g++) {
			int64_t a = g * gs;
			int64_t b = a + gs < in ? a + gs : in;
			float lo, hi;
			float sc, inv_z;
			int32_t z;

			range(wr + a, b - a, &lo, &hi);
			ret = qf_rtn_grid(lo, hi, p, &scale_f16[r * ng + g],
					 &sc, &z);
			if (ret < 0)
				return ret;
			zero[r * ng + g] = z;
			inv_z = (float)z;
			for (j = a; j < b; j++) {
				float v = rnd_v(wr[j] / sc) + inv_z;

				v = v < 0 ? 0 : v;
				v = v > maxq ? maxq : v;
				qr[j] = (uint8_t)v;
			}
		}
	}
	return 0;
}

int qf_rtn_quantize_ref(const float *w, int64_t rows, int64_t in,
			const struct qf_qparams *p, uint8_t *q,
			uint16_t *scale_f16, int32_t *zero)
{
	int64_t ng = qf_ngroups(in, p->group);
	int64_t gs = ng == 1 ? in : p->group;
	int maxq = (1 << p->bits) - 1;
	int64_t r, j;
	int ret;

	for (r = 0; r < rows; r++) {
		for (j = 0; j < in; j++) {
			int64_t g = j / gs;
			int64_t a = g * gs;
			int64_t b = a + gs < in ? a + gs : in;
			float lo = w[r * in + a], hi = lo, sc;
			int32_t z;
			long v;
			int64_t k;

			for (k = a; k < b; k++) {
				lo = fminf(lo, w[r * in + k]);
				hi = fmaxf(hi, w[r * in + k]);
			}
			ret = qf_rtn_grid(lo, hi, p, &scale_f16[r * ng + g],
					 &sc, &z);
			if (ret < 0)
				return ret;
			zero[r * ng + g] = z;
			v = lrintf(w[r * in + j] / sc) + z;
			q[r * in + j] = (uint8_t)(v < 0 ? 0 : v > maxq ? maxq : v);
		}
	}
	return 0;
}
