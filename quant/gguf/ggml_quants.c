/*
 * ggml_quants.c - the ggml block formats GGUF files hold: type table,
 * row encoders and decoders byte-compatible with ggml's block_* structs,
 * and the lossless repacking of integer grids into Q4_0 / Q8_0.  Q2_K and
 * Q3_K, whose scales are coded differently, are in ggml_kq23.c.
 *
 * Sources (llama.cpp, ggml-org/llama.cpp): block layouts in
 * ggml/src/ggml-common.h (block_q4_0, block_q4_1, block_q8_0,
 * block_q4_K, block_q5_K, block_q6_K, QK_K 256, K_SCALE_SIZE 12);
 * encoders and decoders in ggml/src/ggml-quants.c (quantize_row_*_ref,
 * dequantize_row_*, get_scale_min_k4).
 *
 * Scales are stored as fp16 with our round-to-nearest-even conversion,
 * which is what GGML_FP32_TO_FP16 computes.  All multi-byte values are
 * written little-endian whatever the host.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ggml_i.h"

#define QK 32				/* Q4_0, Q4_1, Q8_0 block */
#define Q4_0_BYTES 18
#define Q4_1_BYTES 20
#define Q8_0_BYTES 34
#define Q4_K_BYTES 144			/* d, dmin, scales[12], qs[128] */
#define Q5_K_BYTES 176			/* d, dmin, scales[12], qh[32], qs */
#define Q6_K_BYTES 210			/* ql[128] qh[64] scales[16] d */

/* ------------------------------------------------------------------ */
/* types                                                              */

static const struct {
	enum qf_ggml_type t;
	const char *name;
	int64_t blck;			/* elements per block */
	size_t bytes;			/* bytes per block */
} type_info[] = {
	{ QF_GGML_F32, "F32", 1, 4 },
	{ QF_GGML_F16, "F16", 1, 2 },
	{ QF_GGML_Q4_0, "Q4_0", QK, Q4_0_BYTES },
	{ QF_GGML_Q4_1, "Q4_1", QK, Q4_1_BYTES },
	{ QF_GGML_Q8_0, "Q8_0", QK, Q8_0_BYTES },
	{ QF_GGML_Q2_K, "Q2_K", QK_K, Q2_K_BYTES },
	{ QF_GGML_Q3_K, "Q3_K", QK_K, Q3_K_BYTES },
	{ QF_GGML_Q4_K, "Q4_K", QK_K, Q4_K_BYTES },
	{ QF_GGML_Q5_K, "Q5_K", QK_K, Q5_K_BYTES },
	{ QF_GGML_Q6_K, "Q6_K", QK_K, Q6_K_BYTES },
	{ QF_GGML_IQ4_NL, "IQ4_NL", QK, IQ4_NL_BYTES },
	{ QF_GGML_IQ4_XS, "IQ4_XS", QK_K, IQ4_XS_BYTES },
	{ QF_GGML_BF16, "BF16", 1, 2 },
};
#define NTYPES (sizeof(type_info) / sizeof(type_info[0]))

static int type_index(enum qf_ggml_type t)
{
	size_t i;

	for (i = 0; i < NTYPES; i++)
		if (type_info[i].t == t)
			return (int)i;
	return -1;
}

bool qf_ggml_type_known(enum qf_ggml_type t)
{
	return type_index(t) >= 0;
}

const char *qf_ggml_type_name(enum qf_ggml_type t)
{
	int i = type_index(t);

	return i < 0 ? "?" : type_info[i].name;
}

int qf_ggml_type_parse(const char *s, enum qf_ggml_type *out)
{
	size_t i;

	for (i = 0; s && i < NTYPES; i++) {
		if (!strcasecmp(s, type_info[i].name)) {
			*out = type_info[i].t;
			return 0;
		}
	}
	return -EINVAL;
}

int64_t qf_ggml_block_size(enum qf_ggml_type t)
{
	int i = type_index(t);

	return i < 0 ? 0 : type_info[i].blck;
}

size_t qf_ggml_block_bytes(enum qf_ggml_type t)
{
	int i = type_index(t);

	return i < 0 ? 0 : type_info[i].bytes;
}

uint64_t qf_ggml_row_bytes(enum qf_ggml_type t, int64_t ncols)
{
	int i = type_index(t);

	if (i < 0 || ncols <= 0 || ncols % type_info[i].blck)
		return 0;
	return (uint64_t)(ncols / type_info[i].blck) * type_info[i].bytes;
}

/* ------------------------------------------------------------------ */
/* block codecs                                                       */

/*
 * (int)v for v in [0, 15] as the reference's float-to-int8 casts, with
 * the cases where those are undefined (NaN or huge, from a subnormal
 * block whose 1 / d overflows) pinned to the nearest end.
 */
static int trunc15(float v)
{
	return v >= 15 ? 15 : v > 0 ? (int)v : 0;
}

/* quantize_row_q4_0_ref */
static int enc_q4_0(const float *x, int64_t n, uint8_t *y)
{
	int64_t b;
	int j;

	for (b = 0; b < n / QK; b++, x += QK, y += Q4_0_BYTES) {
		float amax = 0.0f;
		float max = 0.0f;
		float d, id;
		int32_t h;

		for (j = 0; j < QK; j++) {
			if (amax < fabsf(x[j])) {
				amax = fabsf(x[j]);
				max = x[j];
			}
		}
		d = max / -8;
		id = d ? 1.0f / d : 0.0f;
		h = qf_ggml_half(d);
		if (h < 0)
			return QF_ENUMERIC;
		qf_ggml_put16(y, (uint16_t)h);
		for (j = 0; j < QK / 2; j++) {
			y[2 + j] = (uint8_t)(trunc15(x[j] * id + 8.5f) |
					     trunc15(x[QK / 2 + j] * id +
						     8.5f) << 4);
		}
	}
	return 0;
}

/* quantize_row_q4_1_ref */
static int enc_q4_1(const float *x, int64_t n, uint8_t *y)
{
	int64_t b;
	int j;

	for (b = 0; b < n / QK; b++, x += QK, y += Q4_1_BYTES) {
		float min = x[0];
		float max = x[0];
		float d, id;
		int32_t hd, hm;

		for (j = 1; j < QK; j++) {
			if (x[j] < min)
				min = x[j];
			if (x[j] > max)
				max = x[j];
		}
		d = (max - min) / 15;
		id = d ? 1.0f / d : 0.0f;
		hd = qf_ggml_half(d);
		hm = qf_ggml_half(min);
		if (hd < 0 || hm < 0)
			return QF_ENUMERIC;
		qf_ggml_put16(y, (uint16_t)hd);
		qf_ggml_put16(y + 2, (uint16_t)hm);
		for (j = 0; j < QK / 2; j++) {
			int a = trunc15((x[j] - min) * id + 0.5f);
			int c = trunc15((x[QK / 2 + j] - min) * id + 0.5f);

			y[4 + j] = (uint8_t)(a | c << 4);
		}
	}
	return 0;
}

/* quantize_row_q8_0_ref */
static int enc_q8_0(const float *x, int64_t n, uint8_t *y)
{
	int64_t b;
	int j;

	for (b = 0; b < n / QK; b++, x += QK, y += Q8_0_BYTES) {
		float amax = 0.0f;
		float d, id;
		int32_t h;

		for (j = 0; j < QK; j++)
			amax = fmaxf(amax, fabsf(x[j]));
		d = amax / 127;
		id = d ? 1.0f / d : 0.0f;
		h = qf_ggml_half(d);
		if (h < 0)
			return QF_ENUMERIC;
		qf_ggml_put16(y, (uint16_t)h);
		for (j = 0; j < QK; j++) {
			float r = roundf(x[j] * id);

			/* |x * id| <= 127 unless 1 / d overflowed */
			y[2 + j] = (uint8_t)(int8_t)(r >= 127 ? 127 :
						     r > -128 ? (int)r : -128);
		}
	}
	return 0;
}

/*
 * Q4_K (top 15) and Q5_K (top 31): fp16 d and dmin, the 6-bit scales and
 * mins of 8 sub-blocks of 32 (get_scale_min_k4's packing), then the low
 * nibbles (Q5_K: after qh [32], bit j of qh[i] the fifth bit of element
 * i of sub-block j).
 */
static int enc_q45_k_block(const float *x, const float *imp, uint8_t *y,
			   int top)
{
	float sc[8], mn[8], w[QK_K], sigma2 = qf_ggml_mean_sq(x, QK_K), d, dmin;
	uint8_t ls[8], lm[8], *qh = y + 16, *q = y + (top > 15 ? 48 : 16);
	uint16_t hd, hm;
	int j, i, ret;

	qf_ggml_sub_weights(x, imp, QK_K, 32, 2 * sigma2, w);
	for (j = 0; j < 8; j++)
		sc[j] = qf_ggml_fit_scale_min(x + 32 * j, w + 32 * j, 32, top,
					      &mn[j]);
	ret = qf_ggml_quant_scales(sc, 8, 63, ls, &hd);
	if (!ret)
		ret = qf_ggml_quant_scales(mn, 8, 63, lm, &hm);
	if (ret)
		return ret;
	d = qf_f16_to_f32(hd);
	dmin = qf_f16_to_f32(hm);
	qf_ggml_put16(y, hd);
	qf_ggml_put16(y + 2, hm);
	memset(y + 4, 0, 12 + (top > 15 ? 32 : 0) + QK_K / 2);
	for (j = 0; j < 8; j++) {
		qf_ggml_scale_min_codes(x + 32 * j, w + 32 * j, 32, top, 63, d,
					dmin, &ls[j], &lm[j]);
		/* get_scale_min_k4 in reverse */
		if (j < 4) {
			y[4 + j] |= ls[j];
			y[4 + j + 4] |= lm[j];
		} else {
			y[4 + j + 4] = (uint8_t)((ls[j] & 0xf) |
						 (lm[j] & 0xf) << 4);
			y[4 + j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
			y[4 + j] |= (uint8_t)((lm[j] >> 4) << 6);
		}
		for (i = 0; i < 32; i++) {
			float dj = d * ls[j];
			int l = dj > 0 ? qf_ggml_round_clamp((x[32 * j + i] +
					 dmin * lm[j]) / dj, 0, top) : 0;

			/* pairs of sub-blocks share 32 bytes: low, high */
			q[32 * (j / 2) + i] |= (uint8_t)((l & 0xf) <<
							 4 * (j & 1));
			if (top > 15)
				qh[i] |= (uint8_t)((l >> 4) << j);
		}
	}
	return 0;
}

static int enc_q4_k_block(const float *x, const float *imp, uint8_t *y)
{
	return enc_q45_k_block(x, imp, y, 15);
}

static int enc_q5_k_block(const float *x, const float *imp, uint8_t *y)
{
	return enc_q45_k_block(x, imp, y, 31);
}

static int enc_q6_k_block(const float *x, const float *imp, uint8_t *y)
{
	float sc[16], w[QK_K], max, d, sigma2 = qf_ggml_mean_sq(x, QK_K);
	uint8_t l[QK_K], *ql = y, *qh = y + 128;
	int8_t *scales = (int8_t *)(y + 192);
	int32_t h;
	int j, i;

	qf_ggml_sub_weights(x, imp, QK_K, 16, 2 * sigma2, w);
	max = qf_ggml_sym_scales(x, w, 32, sc);
	memset(y, 0, Q6_K_BYTES);
	if (fabsf(max) < GROUP_MAX_EPS)
		return 0;
	/* the largest scale maps to -128, the full int8 range (as ggml) */
	h = qf_ggml_half(max / -128);
	if (h < 0)
		return QF_ENUMERIC;
	qf_ggml_put16(y + 208, (uint16_t)h);
	d = qf_f16_to_f32((uint16_t)h);
	for (j = 0; j < 16; j++) {
		float dj;

		scales[j] = (int8_t)(d != 0 ? qf_ggml_round_clamp(sc[j] / d,
								  -128, 127) :
				     0);
		dj = d * scales[j];
		for (i = 16 * j; i < 16 * j + 16; i++)
			l[i] = (uint8_t)(32 + (dj != 0 ?
				qf_ggml_round_clamp(x[i] / dj, -32, 31) : 0));
	}
	for (j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
		for (i = 0; i < 32; i++) {
			const uint8_t *p = l + j + i;

			ql[i] = (uint8_t)((p[0] & 0xf) | (p[64] & 0xf) << 4);
			ql[i + 32] = (uint8_t)((p[32] & 0xf) |
					       (p[96] & 0xf) << 4);
			qh[i] = (uint8_t)(p[0] >> 4 | (p[32] >> 4) << 2 |
					  (p[64] >> 4) << 4 |
					  (p[96] >> 4) << 6);
		}
	}
	return 0;
}

static int enc_f16(const float *x, int64_t n, uint8_t *y, bool bf16)
{
	int64_t i;

	for (i = 0; i < n; i++) {
		uint16_t h = bf16 ? qf_f32_to_bf16(x[i]) : qf_f32_to_f16(x[i]);

		if ((h & 0x7f80u) == 0x7f80u && bf16)
			return QF_ENUMERIC;
		if ((h & 0x7c00u) == 0x7c00u && !bf16)
			return QF_ENUMERIC;
		qf_ggml_put16(y + 2 * i, h);
	}
	return 0;
}

int qf_ggml_quantize_row(enum qf_ggml_type t, const float *x, int64_t n,
			 const float *imp, void *dst)
{
	int (*enc_k)(const float *x, const float *imp, uint8_t *y);
	uint8_t *y = dst;
	int64_t i;
	int ret = 0;

	if (!qf_ggml_row_bytes(t, n))
		return -EINVAL;
	for (i = 0; i < n; i++) {
		if (!isfinite(x[i]))
			return QF_ENUMERIC;
		if (imp && !(imp[i] >= 0 && imp[i] < INFINITY))
			return -EINVAL;
	}
	switch (t) {
	case QF_GGML_F32:
		for (i = 0; i < n; i++) {
			uint32_t u;

			memcpy(&u, &x[i], 4);
			qf_ggml_put16(y + 4 * i, (uint16_t)u);
			qf_ggml_put16(y + 4 * i + 2, (uint16_t)(u >> 16));
		}
		return 0;
	case QF_GGML_F16:
		return enc_f16(x, n, y, false);
	case QF_GGML_BF16:
		return enc_f16(x, n, y, true);
	case QF_GGML_Q4_0:
		return enc_q4_0(x, n, y);
	case QF_GGML_Q4_1:
		return enc_q4_1(x, n, y);
	case QF_GGML_Q8_0:
		return enc_q8_0(x, n, y);
	case QF_GGML_IQ4_NL:
		for (i = 0; i < n / QK && !ret; i++)
			ret = qf_ggml_enc_iq4_nl_block(x + i * QK, imp ? imp +
						       i * QK : NULL, y + i *
						       IQ4_NL_BYTES);
		return ret;
	case QF_GGML_Q2_K:
	case QF_GGML_Q3_K:
	case QF_GGML_Q4_K:
	case QF_GGML_Q5_K:
	case QF_GGML_Q6_K:
	case QF_GGML_IQ4_XS:
		enc_k = t == QF_GGML_IQ4_XS ? qf_ggml_enc_iq4_xs_block :
			t == QF_GGML_Q2_K ? qf_ggml_enc_q2_k_block :
			t == QF_GGML_Q3_K ? qf_ggml_enc_q3_k_block :
			t == QF_GGML_Q4_K ? enc_q4_k_block :
			t == QF_GGML_Q5_K ? enc_q5_k_block : enc_q6_k_block;
		for (i = 0; i < n / QK_K && !ret; i++)
			ret = enc_k(x + i * QK_K, imp ? imp + i * QK_K : NULL,
				    y + (size_t)i * qf_ggml_block_bytes(t));
		return ret;
	}
	return -EINVAL;
}

/* get_scale_min_k4 */
static void scale_min_k4(int j, const uint8_t *q, int *d, int *m)
{
	if (j < 4) {
		*d = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*d = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
		*m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
	}
}

/* Q4_K, or Q5_K (five): qh [32] before the nibbles, bit j sub-block j's. */
static void dec_q45_k(const uint8_t *x, int64_t nb, float *y, bool five)
{
	size_t bytes = five ? Q5_K_BYTES : Q4_K_BYTES;
	int64_t b;
	int j, l, sc, m;

	for (b = 0; b < nb; b++, x += bytes) {
		float d = qf_f16_to_f32(qf_ggml_get16(x));
		float min = qf_f16_to_f32(qf_ggml_get16(x + 2));
		const uint8_t *qh = x + 16, *q = x + (five ? 48 : 16);

		for (j = 0; j < 8; j += 2, q += 32) {
			float d1, m1, d2, m2;

			scale_min_k4(j, x + 4, &sc, &m);
			d1 = d * sc;
			m1 = min * m;
			scale_min_k4(j + 1, x + 4, &sc, &m);
			d2 = d * sc;
			m2 = min * m;
			for (l = 0; l < 32; l++)
				*y++ = d1 * ((q[l] & 0xf) | (five ?
					(qh[l] >> j & 1) << 4 : 0)) - m1;
			for (l = 0; l < 32; l++)
				*y++ = d2 * ((q[l] >> 4) | (five ? (qh[l] >>
						   (j + 1) & 1) << 4 : 0)) - m2;
		}
	}
}

static void dec_q6_k(const uint8_t *x, int64_t nb, float *y)
{
	int64_t b;
	int n, l;

	for (b = 0; b < nb; b++, x += Q6_K_BYTES) {
		const uint8_t *ql = x, *qh = x + 128;
		const int8_t *sc = (const int8_t *)(x + 192);
		float d = qf_f16_to_f32(qf_ggml_get16(x + 208));

		for (n = 0; n < QK_K; n += 128, y += 128, ql += 64, qh += 32,
		     sc += 8) {
			for (l = 0; l < 32; l++) {
				int is = l / 16;
				int h = qh[l];
				int q1 = ((ql[l] & 0xf) | (h & 3) << 4) - 32;
				int q2 = ((ql[l + 32] & 0xf) |
					  (h >> 2 & 3) << 4) - 32;
				int q3 = ((ql[l] >> 4) |
					  (h >> 4 & 3) << 4) - 32;
				int q4 = ((ql[l + 32] >> 4) |
					  (h >> 6 & 3) << 4) - 32;

				y[l] = d * sc[is] * q1;
				y[l + 32] = d * sc[is + 2] * q2;
				y[l + 64] = d * sc[is + 4] * q3;
				y[l + 96] = d * sc[is + 6] * q4;
			}
		}
	}
}

int qf_ggml_dequantize_row(enum qf_ggml_type t, const void *src, int64_t n,
			   float *y)
{
	const uint8_t *x = src;
	int64_t i;
	int j;

	if (!qf_ggml_row_bytes(t, n))
		return -EINVAL;
	switch (t) {
	case QF_GGML_F32:
		for (i = 0; i < n; i++) {
			uint32_t u = qf_ggml_get16(x + 4 * i) |
				     (uint32_t)qf_ggml_get16(x + 4 * i + 2) <<
				     16;

			memcpy(&y[i], &u, 4);
		}
		return 0;
	case QF_GGML_F16:
	case QF_GGML_BF16:
		for (i = 0; i < n; i++)
			y[i] = t == QF_GGML_F16 ?
				qf_f16_to_f32(qf_ggml_get16(x + 2 * i)) :
				qf_bf16_to_f32(qf_ggml_get16(x + 2 * i));
		return 0;
	case QF_GGML_Q4_0:
	case QF_GGML_Q4_1:
		for (i = 0; i < n / QK; i++, y += QK) {
			const uint8_t *b = x + i * qf_ggml_block_bytes(t);
			float d = qf_f16_to_f32(qf_ggml_get16(b));
			float m = t == QF_GGML_Q4_1 ?
				  qf_f16_to_f32(qf_ggml_get16(b + 2)) : 0;
			const uint8_t *qs = b + (t == QF_GGML_Q4_1 ? 4 : 2);

			for (j = 0; j < QK / 2; j++) {
				if (t == QF_GGML_Q4_1) {
					y[j] = (qs[j] & 0xf) * d + m;
					y[j + QK / 2] = (qs[j] >> 4) * d + m;
				} else {
					y[j] = ((qs[j] & 0xf) - 8) * d;
					y[j + QK / 2] = ((qs[j] >> 4) - 8) * d;
				}
			}
		}
		return 0;
	case QF_GGML_Q8_0:
		for (i = 0; i < n / QK; i++, y += QK) {
			const uint8_t *b = x + i * Q8_0_BYTES;
			float d = qf_f16_to_f32(qf_ggml_get16(b));

			for (j = 0; j < QK; j++)
				y[j] = (int8_t)b[2 + j] * d;
		}
		return 0;
	case QF_GGML_Q4_K:
	case QF_GGML_Q5_K:
		dec_q45_k(x, n / QK_K, y, t == QF_GGML_Q5_K);
		return 0;
	case QF_GGML_Q2_K:
		qf_ggml_dec_q2_k(x, n / QK_K, y);
		return 0;
	case QF_GGML_Q3_K:
		qf_ggml_dec_q3_k(x, n / QK_K, y);
		return 0;
	case QF_GGML_Q6_K:
		dec_q6_k(x, n / QK_K, y);
		return 0;
	case QF_GGML_IQ4_NL:
	case QF_GGML_IQ4_XS:
		qf_ggml_dec_iq4(t, x, n / qf_ggml_block_size(t), y);
		return 0;
	}
	return -EINVAL;
}

/*
 * Blocks of integer codes q [n] with fp16 scales sc16 [n / 32]: Q4_0
 * (nibbles, every q <= 15) or Q8_0 (int8 q - 128).
 */
static int from_int(bool q4, const uint8_t *q, const uint16_t *sc16,
		    int64_t n, uint8_t *y)
{
	size_t bytes = q4 ? Q4_0_BYTES : Q8_0_BYTES;
	int64_t b;
	int j;

	if (n <= 0 || n % QK)
		return -EINVAL;
	for (b = 0; b < n / QK; b++, q += QK, y += bytes) {
		for (j = 0; q4 && j < QK; j++)
			if (q[j] > 15)
				return -EINVAL;
		qf_ggml_put16(y, sc16[b]);
		if (q4)
			for (j = 0; j < QK / 2; j++)
				y[2 + j] = (uint8_t)(q[j] | q[QK / 2 + j] << 4);
		else	/* int8 q - 128 is q with its top bit flipped */
			for (j = 0; j < QK; j++)
				y[2 + j] = (uint8_t)(q[j] ^ 0x80);
	}
	return 0;
}

int qf_gguf_q4_0_from_int(const uint8_t *q, const uint16_t *sc16, int64_t n,
			  void *dst)
{
	return from_int(true, q, sc16, n, dst);
}

int qf_gguf_q8_0_from_int(const uint8_t *q, const uint16_t *sc16, int64_t n,
			  void *dst)
{
	return from_int(false, q, sc16, n, dst);
}

/* fp16 bits h moved by k steps of its own magnitude (0: none, -1 off). */
static int32_t f16_step(uint16_t h, int k)
{
	int32_t mag = h & 0x7fff;

	if (h & 0x8000)
		k = -k;
	mag += k;
	if (mag < 0 || mag >= 0x7c00)
		return -1;	/* through zero, or to inf */
	return (int32_t)((h & 0x8000) | mag);
}

int qf_gguf_q4_1_from_int(const uint8_t *q, const uint16_t *sc16,
			  const int32_t *z, int64_t n, void *dst)
{
	uint8_t *y = dst;
	int64_t b;
	int j, kd, km;

	if (n <= 0 || n % QK)
		return -EINVAL;
	for (b = 0; b < n / QK; b++, q += QK, y += Q4_1_BYTES) {
		double s = qf_f16_to_f32(sc16[b]), best = INFINITY;
		uint16_t bd = 0, bm = 0;

		if (z[b] < 0 || z[b] > 15)
			return -EINVAL;
		for (j = 0; j < QK; j++)
			if (q[j] > 15)
				return -EINVAL;
		for (kd = 0; kd < 3; kd++) {	/* sc first: ties keep it */
			int32_t hd = f16_step(sc16[b], kd == 2 ? -1 : kd);
			double d, m = 0, e;
			int32_t hm;

			if (hd < 0)
				continue;
			d = qf_f16_to_f32((uint16_t)hd);
			for (j = 0; j < QK; j++)	/* least squares m */
				m += s * (q[j] - z[b]) - d * q[j];
			hm = qf_ggml_half((float)(m / QK));
			for (km = 0; km < 3 && hm >= 0; km++) {
				int32_t h2 = f16_step((uint16_t)hm, km == 2 ?
						      -1 : km);
				float df = (float)d, mf;

				if (h2 < 0)
					continue;
				mf = qf_f16_to_f32((uint16_t)h2);
				for (e = 0, j = 0; j < QK; j++) {
					/* the decoder's float arithmetic */
					double r = (double)(q[j] * df + mf) -
						   s * (q[j] - z[b]);

					e += r * r;
				}
				if (e < best) {
					best = e;
					bd = (uint16_t)hd;
					bm = (uint16_t)h2;
				}
			}
		}
		if (!(best < INFINITY))
			return QF_ENUMERIC;
		qf_ggml_put16(y, bd);
		qf_ggml_put16(y + 2, bm);
		for (j = 0; j < QK / 2; j++)
			y[4 + j] = (uint8_t)(q[j] | q[QK / 2 + j] << 4);
	}
	return 0;
}
