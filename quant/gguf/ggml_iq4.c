/*
 * ggml_iq4.c - llama.cpp's 4-bit non-linear blocks, IQ4_NL and IQ4_XS, for
 * the kiq4_nl / kiq4_xs views (issue #24).
 *
 * Layouts (ggml-common.h, block_iq4_nl and block_iq4_xs; decoders
 * dequantize_row_iq4_nl / _xs in ggml-quants.c): every element is a
 * 4-bit index into the fixed table kvalues_iq4nl below, times a scale.
 * IQ4_NL, blocks of 32 (18 bytes): fp16 d, then qs [16], element j < 16
 * in the low nibble of qs[j], element j + 16 in its high nibble; value
 * d * kv[q].  IQ4_XS, super-blocks of 256 (136 bytes): fp16 d, uint16
 * scales_h, scales_l [4], qs [128]; sub-block ib (of 32) has the 6-bit
 * code ls = (scales_l[ib / 2] >> 4 (ib % 2)) & 15 | ((scales_h >> 2 ib)
 * & 3) << 4, scale dl = d * (ls - 32), and its 32 elements in qs [16 ib ..
 * 16 ib + 16] as in IQ4_NL; value dl * kv[q].
 *
 * Encoding, our own: each block (sub-block) tries 30 scales that put its
 * signed extreme on or near either end of the table (the table is not
 * symmetric: -127 .. 113), takes for each the codes nearest to x / scale
 * and the (weighted) least-squares scale for those codes, keeps the one of
 * least (weighted) error at its own scale, stores that scale (fp16;
 * IQ4_XS: the 6-bit code of the nearest multiple of the super-block's d,
 * then its two neighbours) and rounds the codes to nearest again for the
 * stored scale, keeping the least squared error (weighted by imp *
 * sqrt(sigma2 + x^2) with an importance vector, as the k-quants'; else
 * plain).  IQ4_XS tries 8 values of d (the largest sub-block scale on code
 * -32 .. -29 or 31 .. 28).  llama.cpp's own choice without an imatrix
 * (quantize_iq4_nl / quantize_iq4_xs with no quant_weights: x^2 weights,
 * 15 tries, the scale's sign from the extreme) is restated here as one
 * more candidate, with its codes rounded to nearest for its stored scales,
 * so no block is further from x than llama.cpp's own encoding of it (the
 * tests hold the bytes to libggml-base's quantize_iq4_nl / _xs where it is
 * at hand).
 */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "ggml_i.h"

#define QK 32
#define NTRY 7				/* extremes at end +- 0..7 */

const int8_t qf_ggml_iq4_values[16] = {
	-127, -104, -83, -65, -49, -35, -22, -10,
	1, 13, 25, 38, 53, 69, 89, 113,
};
#define KV qf_ggml_iq4_values

/*
 * The nearest level is the number of midpoints between neighbouring
 * levels at or below v (a tie goes up, as ggml's best_index_int8).  The
 * midpoints sit on integers and half-integers: below[k + 128] counts
 * those <= k, half[k + 128] says whether k + 1/2 is one, for the k =
 * floor(v) in -128 .. 127.
 */
static uint8_t below[256], half[256];
static pthread_once_t lut_once = PTHREAD_ONCE_INIT;

static void lut_init(void)
{
	int k, i;

	for (k = -128; k < 128; k++) {
		for (i = 0; i < 15; i++) {
			int twice = KV[i] + KV[i + 1];	/* 2 x midpoint */

			below[k + 128] += twice <= 2 * k;
			half[k + 128] |= twice == 2 * k + 1;
		}
	}
}

int qf_ggml_iq4_nearest(float v)
{
	int k;

	if (!(v > KV[0]))		/* (NaN too) */
		return 0;
	if (v >= KV[15])
		return 15;
	pthread_once(&lut_once, lut_init);
	k = (int)floorf(v);
	return below[k + 128] + (half[k + 128] && v >= (float)k + 0.5f);
}

double qf_ggml_iq4_recode(const float *x, const float *w, float s,
			  uint8_t *l)
{
	double e = 0;
	int i;

	for (i = 0; i < QK; i++) {
		double r;

		l[i] = (uint8_t)(s != 0 ? qf_ggml_iq4_nearest(x[i] / s) : 8);
		r = (double)(s * KV[l[i]]) - x[i];
		e += (w ? w[i] : 1.0) * r * r;
	}
	return e;
}

/* The element of largest magnitude, with its sign (the first of ties). */
static float signed_max(const float *x)
{
	float amax = 0, max = 0;
	int i;

	for (i = 0; i < QK; i++)
		if (fabsf(x[i]) > amax) {
			amax = fabsf(x[i]);
			max = x[i];
		}
	return max;
}

/*
 * Our sub-block fit: of the 30 candidates, the least-squares scale of the
 * one whose codes fit best (the largest sqx^2 / sqq), unrounded (0 for
 * an all-zero x).
 */
static float fit_scale(const float *x, const float *w)
{
	float max = signed_max(x), best_s = 0;
	double best = 0;
	int i, k, end;

	if (fabsf(max) < GROUP_MAX_EPS)
		return 0;
	for (end = 0; end < 2; end++) {
		for (k = -NTRY; k <= NTRY; k++) {
			float iscale = (end ? KV[15] - k : KV[0] + k) / max;
			double sqx = 0, sqq = 0;

			for (i = 0; i < QK; i++) {
				double wi = w ? w[i] : 1.0;
				int c = qf_ggml_iq4_nearest(x[i] * iscale);

				sqx += wi * KV[c] * x[i];
				sqq += wi * KV[c] * KV[c];
			}
			if (sqq > 0 && sqx * sqx > best * sqq) {
				best = sqx * sqx / sqq;
				best_s = (float)(sqx / sqq);
			}
		}
	}
	return best_s;
}

/*
 * llama.cpp's sub-block scale without an imatrix: x^2 weights, the
 * extreme on -127 then on -127 + k for |k| <= 7, the least-squares scale
 * of the codes with the largest sumqx^2 / sumq2 (float sums in order).
 */
static float llama_scale(const float *x)
{
	float max = signed_max(x), d = 0, id, sumqx, sumq2, best = 0;
	int i, k;

	if (fabsf(max) < GROUP_MAX_EPS)
		return 0;
	for (k = -NTRY - 1; k <= NTRY; k++) {
		/* k = -8: the first pass, extreme on +127 (d = max / 127) */
		id = k < -NTRY ? 1 / (-max / KV[0]) : (k + KV[0]) / max;
		sumqx = sumq2 = 0;
		for (i = 0; i < QK; i++) {
			float q = KV[qf_ggml_iq4_nearest(id * x[i])];
			float wi = x[i] * x[i];

			sumqx += wi * q * x[i];
			sumq2 += wi * q * q;
		}
		if (k < -NTRY) {
			d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
			best = d * sumqx;
		} else if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
			d = sumqx / sumq2;
			best = d * sumqx;
		}
	}
	return d;
}

static void put_codes(const uint8_t *l, uint8_t *qs)
{
	int j;

	for (j = 0; j < QK / 2; j++)
		qs[j] = (uint8_t)(l[j] | l[j + QK / 2] << 4);
}

/* Weights of the fits: imp * sqrt(sigma2 + x^2), or NULL (plain). */
static const float *weights(const float *x, const float *imp, int n,
			    float *w)
{
	float sigma2 = 0;
	int i;

	if (!imp)
		return NULL;
	for (i = 0; i < n; i++)
		sigma2 += x[i] * x[i];
	sigma2 *= 2.f / n;
	for (i = 0; i < n; i++)
		w[i] = imp[i] * sqrtf(sigma2 + x[i] * x[i]);
	return w;
}

int qf_ggml_enc_iq4_nl_block(const float *x, const float *imp, uint8_t *y)
{
	float wb[QK], s[2];
	const float *w = weights(x, imp, QK, wb);
	uint8_t l[QK], lb[QK];
	double e, best = INFINITY;
	uint16_t h, hb = 0;
	int k;

	s[0] = fit_scale(x, w);
	s[1] = llama_scale(x);
	memset(lb, 8, sizeof(lb));
	for (k = 0; k < 2; k++) {
		int32_t hh = qf_ggml_half(s[k]);

		if (hh < 0)
			return QF_ENUMERIC;
		h = (uint16_t)hh;
		e = qf_ggml_iq4_recode(x, w, qf_f16_to_f32(h), l);
		if (e < best) {
			best = e;
			hb = h;
			memcpy(lb, l, sizeof(l));
		}
	}
	qf_ggml_put16(y, hb);
	put_codes(lb, y + 2);
	return 0;
}

/*
 * IQ4_XS: sub-block scales sc [8] on d (fp16 dh): each sub-block's 6-bit
 * code nearest to sc / d and its neighbours (or only the nearest: llama),
 * the one of least error; codes into l [256], ls [8] (0..63).  Returns
 * the total error (INFINITY for a d that is 0 or beyond fp16).
 */
static double xs_codes(const float *x, const float *w, const float *sc,
		       float d, bool llama, uint16_t *dh, uint8_t *ls,
		       uint8_t *l)
{
	double tot = 0;
	int32_t h = qf_ggml_half(d);
	float df;
	int ib, c;

	if (h < 0)
		return INFINITY;
	*dh = (uint16_t)h;
	df = qf_f16_to_f32(*dh);
	for (ib = 0; ib < 8; ib++) {
		const float *xb = x + QK * ib, *wb = w ? w + QK * ib : NULL;
		/* llama.cpp: 1 / d of the unrounded d, as it codes them */
		int c0 = d != 0 ? qf_ggml_round_clamp(sc[ib] * (1 / d), -32,
						      31) : 0;
		double best = INFINITY;
		uint8_t lt[QK];

		for (c = c0 - !llama; c <= c0 + !llama; c++) {
			double e;

			if (c < -32 || c > 31)
				continue;
			e = qf_ggml_iq4_recode(xb, wb, df * (float)c, lt);
			if (e < best) {
				best = e;
				ls[ib] = (uint8_t)(c + 32);
				memcpy(l + QK * ib, lt, sizeof(lt));
			}
		}
		tot += best;
	}
	return tot;
}

int qf_ggml_enc_iq4_xs_block(const float *x, const float *imp, uint8_t *y)
{
	float wbuf[QK_K], sc[8], lsc[8], amax = 0, max = 0, lmax = 0;
	const float *w = weights(x, imp, QK_K, wbuf);
	uint8_t l[QK_K], lb[QK_K], ls[8], lsb[8];
	double e, best = INFINITY;
	uint16_t dh, dhb = 0;
	int ib, k;

	for (ib = 0; ib < 8; ib++) {
		sc[ib] = fit_scale(x + QK * ib, w ? w + QK * ib : NULL);
		lsc[ib] = llama_scale(x + QK * ib);
		if (fabsf(sc[ib]) > amax) {
			amax = fabsf(sc[ib]);
			max = sc[ib];
		}
		if (fabsf(lsc[ib]) > fabsf(lmax))
			lmax = lsc[ib];
	}
	memset(lb, 8, sizeof(lb));
	memset(lsb, 32, sizeof(lsb));
	/* llama.cpp's: its largest scale on code -32 */
	e = xs_codes(x, w, lsc, -lmax / 32, true, &dh, ls, l);
	if (e < best) {
		best = e;
		dhb = dh;
		memcpy(lb, l, sizeof(l));
		memcpy(lsb, ls, sizeof(ls));
	}
	for (k = 0; k < 8 && max != 0; k++) {
		float d = k < 4 ? -max / (32 - k) : max / (31 - (k - 4));

		e = xs_codes(x, w, sc, d, false, &dh, ls, l);
		if (e < best) {
			best = e;
			dhb = dh;
			memcpy(lb, l, sizeof(l));
			memcpy(lsb, ls, sizeof(ls));
		}
	}
	if (!(best < INFINITY))
		return QF_ENUMERIC;	/* no d within fp16 */
	qf_ggml_put16(y, dhb);
	qf_ggml_put16(y + 2, 0);
	memset(y + 4, 0, 4);
	for (ib = 0; ib < 8; ib++) {
		y[4 + ib / 2] |= (uint8_t)((lsb[ib] & 15) << 4 * (ib % 2));
		y[2 + ib / 4] |= (uint8_t)((lsb[ib] >> 4) << 2 * (ib % 4));
		put_codes(lb + QK * ib, y + 8 + 16 * ib);
	}
	return 0;
}

void qf_ggml_dec_iq4(enum qf_ggml_type t, const uint8_t *x, int64_t nb,
		     float *y)
{
	bool xs = t == QF_GGML_IQ4_XS;
	int64_t b;
	int ib, j;

	for (b = 0; b < nb; b++, x += xs ? IQ4_XS_BYTES : IQ4_NL_BYTES) {
		float d = qf_f16_to_f32(qf_ggml_get16(x));
		int sh = xs ? qf_ggml_get16(x + 2) : 0;

		for (ib = 0; ib < (xs ? 8 : 1); ib++, y += QK) {
			const uint8_t *qs = x + (xs ? 8 + 16 * ib : 2);
			int ls = xs ? ((x[4 + ib / 2] >> 4 * (ib % 2)) & 15) |
				      ((sh >> 2 * ib) & 3) << 4 : 33;
			float dl = xs ? d * (float)(ls - 32) : d;

			for (j = 0; j < QK / 2; j++) {
				y[j] = dl * (float)KV[qs[j] & 15];
				y[j + QK / 2] = dl * (float)KV[qs[j] >> 4];
			}
		}
	}
}
