/*
 * ggml_kq23.c - the 2- and 3-bit k-quants, Q2_K and Q3_K, byte-compatible
 * with ggml's block_q2_K / block_q3_K (llama.cpp, ggml/src/ggml-common.h;
 * dequantize_row_q2_K / _q3_K in ggml/src/ggml-quants.c), for the kq2_k
 * and kq3_k_{s,m,l} views of llama.cpp's mixes (issue #24).  Apart from
 * ggml_quants.c because their sub-blocks are 16 and their scales coded
 * otherwise (4-bit scale and min in one byte; 6-bit signed scales split
 * 4 + 2 bits), while the fits are the same ones (ggml_grid.c).
 *
 * Both quantize elements in 16 sub-blocks of 16; element e's 2 low bits
 * sit in byte 32 (e / 128) + e % 32 of qs at shift 2 ((e % 128) / 32)
 * (qs: two runs of 32 bytes, each element of a run's four quarters in one
 * byte).  Q2_K: value = d sc_j q - dmin m_j, q in 0..3.  Q3_K: value =
 * d (L_j - 32) (q - 4), q in 0..7, its third bit in bit e / 32 of
 * hmask[e % 32].
 */
#include <math.h>
#include <string.h>

#include "ggml_i.h"

#define Q2_QS 16			/* offsets in the blocks */
#define Q2_D 80
#define Q3_QS 32
#define Q3_SCALES 96
#define Q3_D 108

/* The low 2 bits of code l of element e into qs. */
static void put_low2(uint8_t *qs, int e, int l)
{
	qs[32 * (e / 128) + e % 32] |= (uint8_t)((l & 3) << 2 * (e % 128 / 32));
}

static int get_low2(const uint8_t *qs, int e)
{
	return qs[32 * (e / 128) + e % 32] >> 2 * (e % 128 / 32) & 3;
}

int qf_ggml_enc_q2_k_block(const float *x, const float *imp, uint8_t *y)
{
	float sc[16], mn[16], w[QK_K], d, dmin;
	uint8_t ls[16], lm[16];
	uint16_t hd, hm;
	int j, i, ret;

	/* rms of 32 + |x| without imp: ggml's |x| with a floor */
	qf_ggml_sub_weights(x, imp, QK_K, 32, 2 * qf_ggml_mean_sq(x, QK_K), w);
	for (j = 0; j < 16; j++)
		sc[j] = qf_ggml_fit_scale_min(x + 16 * j, w + 16 * j, 16, 3,
					      &mn[j]);
	ret = qf_ggml_quant_scales(sc, 16, 15, ls, &hd);
	if (!ret)
		ret = qf_ggml_quant_scales(mn, 16, 15, lm, &hm);
	if (ret)
		return ret;
	d = qf_f16_to_f32(hd);
	dmin = qf_f16_to_f32(hm);
	memset(y, 0, Q2_K_BYTES);
	qf_ggml_put16(y + Q2_D, hd);
	qf_ggml_put16(y + Q2_D + 2, hm);
	for (j = 0; j < 16; j++) {
		float dj, mj;

		qf_ggml_scale_min_codes(x + 16 * j, w + 16 * j, 16, 3, 15, d,
					dmin, &ls[j], &lm[j]);
		y[j] = (uint8_t)(ls[j] | lm[j] << 4);
		dj = d * ls[j];
		mj = dmin * lm[j];
		for (i = 16 * j; i < 16 * j + 16; i++)
			put_low2(y + Q2_QS, i, dj > 0 ?
				 qf_ggml_round_clamp((x[i] + mj) / dj, 0, 3) :
				 0);
	}
	return 0;
}

void qf_ggml_dec_q2_k(const uint8_t *x, int64_t nb, float *y)
{
	int64_t b;
	int e;

	for (b = 0; b < nb; b++, x += Q2_K_BYTES, y += QK_K) {
		float d = qf_f16_to_f32(qf_ggml_get16(x + Q2_D));
		float dmin = qf_f16_to_f32(qf_ggml_get16(x + Q2_D + 2));

		for (e = 0; e < QK_K; e++) {
			int s = x[e / 16];

			y[e] = d * (s & 0xf) * get_low2(x + Q2_QS, e) -
			       dmin * (s >> 4);
		}
	}
}

/* Q3_K's 6-bit scale code of sub-block j (0..63, 32 meaning 0). */
static int q3_scale(const uint8_t *s, int j)
{
	int lo = j < 8 ? s[j] & 0xf : s[j - 8] >> 4;

	return lo | (s[8 + j % 4] >> 2 * (j / 4) & 3) << 4;
}

/* Weighted error of sub-block x [16] on d * (-4..3). */
static float sym_err(const float *x, const float *w, float d)
{
	float e = 0;
	int i;

	for (i = 0; i < 16; i++) {
		int l = d != 0 ? qf_ggml_round_clamp(x[i] / d, -4, 3) : 0;
		float r = d * l - x[i];

		e += w[i] * r * r;
	}
	return e;
}

/* The scale code nearest the fit, or a neighbour of less error. */
static int q3_code(const float *x, const float *w, float d, float s)
{
	int c0 = d != 0 ? qf_ggml_round_clamp(s / d, -32, 31) : 0, c, best = c0;
	float eb = INFINITY, e;

	for (c = c0 - 1; c <= c0 + 1; c++) {
		if (c < -32 || c > 31)
			continue;
		e = sym_err(x, w, d * c);
		if (e < eb) {
			eb = e;
			best = c;
		}
	}
	return best;
}

int qf_ggml_enc_q3_k_block(const float *x, const float *imp, uint8_t *y)
{
	float sc[16], w[QK_K], max, d;
	int32_t h;
	int j, i;

	qf_ggml_sub_weights(x, imp, QK_K, 16, 2 * qf_ggml_mean_sq(x, QK_K), w);
	max = qf_ggml_sym_scales(x, w, 4, sc);
	memset(y, 0, Q3_K_BYTES);
	if (fabsf(max) < GROUP_MAX_EPS)
		return 0;
	/* the largest scale maps to -32, the end of the 6-bit range */
	h = qf_ggml_half(max / -32);
	if (h < 0)
		return QF_ENUMERIC;
	qf_ggml_put16(y + Q3_D, (uint16_t)h);
	d = qf_f16_to_f32((uint16_t)h);
	for (j = 0; j < 16; j++) {
		int c = q3_code(x + 16 * j, w + 16 * j, d, sc[j]);
		int u = c + 32;
		float dj = d * c;

		y[Q3_SCALES + j % 8] |= (uint8_t)((u & 0xf) << 4 * (j / 8));
		y[Q3_SCALES + 8 + j % 4] |= (uint8_t)((u >> 4) << 2 * (j / 4));
		for (i = 16 * j; i < 16 * j + 16; i++) {
			int l = 4 + (dj != 0 ?
				     qf_ggml_round_clamp(x[i] / dj, -4, 3) : 0);

			put_low2(y + Q3_QS, i, l);
			y[i % 32] |= (uint8_t)((l >> 2) << i / 32);
		}
	}
	return 0;
}

void qf_ggml_dec_q3_k(const uint8_t *x, int64_t nb, float *y)
{
	int64_t b;
	int e;

	for (b = 0; b < nb; b++, x += Q3_K_BYTES, y += QK_K) {
		float d = qf_f16_to_f32(qf_ggml_get16(x + Q3_D));

		for (e = 0; e < QK_K; e++) {
			float dl = d * (q3_scale(x + Q3_SCALES, e / 16) - 32);
			int q = get_low2(x + Q3_QS, e) |
				(x[e % 32] >> e / 32 & 1) << 2;

			y[e] = dl * (q - 4);
		}
	}
}
