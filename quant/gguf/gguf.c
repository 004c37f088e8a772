/*
 * gguf.c - GGUF for llama.cpp: ggml block codecs, the file plan (tensor
 * naming, metadata, vocabulary) and tensor production.
 *
 * Sources of each detail (llama.cpp, ggml-org/llama.cpp):
 *  - block layouts: ggml/src/ggml-common.h (block_q4_0, block_q4_1,
 *    block_q8_0, block_q4_K, block_q6_K, QK_K 256, K_SCALE_SIZE 12);
 *    encoders and decoders: ggml/src/ggml-quants.c (quantize_row_*_ref,
 *    dequantize_row_*, get_scale_min_k4);
 *  - file layout: docs/gguf.md (ggml/docs), gguf-py/gguf/gguf_writer.py
 *    (value types of each key, tensor infos with dims innermost first,
 *    every tensor padded to the alignment);
 *  - keys: gguf-py/gguf/constants.py; names and the q/k permutation:
 *    convert_hf_to_gguf.py (LlamaModel registers LlamaForCausalLM and
 *    MistralForCausalLM as arch llama; Qwen2Model / Qwen3Model do not
 *    permute), conversion/llama.py, conversion/qwen.py;
 *  - vocabulary: convert_hf_to_gguf.py get_vocab_base (gpt2: [PADn]
 *    gaps, control / user-defined added tokens) and _set_vocab_llama_hf
 *    with gguf-py/gguf/vocab.py LlamaHfVocab (llama: byte tokens type 6,
 *    special tokens control; its scores, all -1000, we replace: see
 *    merge_scores()); src/llama-vocab.cpp for the tokenizer.ggml.pre
 *    names it accepts, its need for merges and its SPM merge order.
 *
 * Scales are stored as fp16 with our round-to-nearest-even conversion,
 * which is what GGML_FP32_TO_FP16 computes.  All multi-byte values are
 * written little-endian whatever the host.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gguf.h"

#define QK 32				/* Q4_0, Q4_1, Q8_0 block */
#define QK_K 256			/* K-quant super-block */
#define Q4_0_BYTES 18
#define Q4_1_BYTES 20
#define Q8_0_BYTES 34
#define Q4_K_BYTES 144			/* d, dmin, scales[12], qs[128] */
#define Q6_K_BYTES 210			/* ql[128] qh[64] scales[16] d */
#define GROUP_MAX_EPS 1e-15f		/* as ggml: an all-zero group */

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
	{ QF_GGML_Q4_K, "Q4_K", QK_K, Q4_K_BYTES },
	{ QF_GGML_Q6_K, "Q6_K", QK_K, Q6_K_BYTES },
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

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

/* fp16 of f, or -1 when it is not finite there (a scale out of range). */
static int32_t half(float f)
{
	uint16_t h = qf_f32_to_f16(f);

	return (h & 0x7c00u) == 0x7c00u ? -1 : h;
}

/* Round to nearest (ties to even, as ggml's nearest_int), clamped. */
static int round_clamp(float v, int lo, int hi)
{
	if (!(v > (float)lo))
		return lo;		/* also NaN */
	if (v >= (float)hi)
		return hi;
	return (int)lrintf(v);
}

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
		h = half(d);
		if (h < 0)
			return QF_ENUMERIC;
		put16(y, (uint16_t)h);
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
		hd = half(d);
		hm = half(min);
		if (hd < 0 || hm < 0)
			return QF_ENUMERIC;
		put16(y, (uint16_t)hd);
		put16(y + 2, (uint16_t)hm);
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
		h = half(d);
		if (h < 0)
			return QF_ENUMERIC;
		put16(y, (uint16_t)h);
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
 * Weighted least-squares fit of x ~ s * l + m, l in 0..nmax, m <= 0
 * (ggml's make_qkx2_quants idea: try grids stretched around the
 * min..max span, solve s and m in closed form for each, keep the least
 * weighted error).  Returns s >= 0; *neg_min = -m >= 0.
 */
static float fit_scale_min(const float *x, const float *w, int n, int nmax,
			   float *neg_min)
{
	float lo = x[0], hi = x[0], sw = 0, sx = 0;
	float best_s, best_m, best_err = INFINITY;
	int i, is;

	for (i = 0; i < n; i++) {
		lo = fminf(lo, x[i]);
		hi = fmaxf(hi, x[i]);
		sw += w[i];
		sx += w[i] * x[i];
	}
	if (lo > 0)
		lo = 0;
	best_s = (hi - lo) / nmax;
	best_m = lo;
	if (!(hi > lo)) {
		*neg_min = -lo;
		return 0;
	}
	for (is = -1; is <= 20; is++) {
		/* is = -1: the plain min..max grid with its own s, m */
		float iscale = (nmax + (is < 0 ? 0 : -1.0f + 0.1f * is)) /
			       (hi - lo);
		float sl = 0, sl2 = 0, sxl = 0, s, m, err = 0, dd;
		uint8_t l[QK];

		for (i = 0; i < n; i++) {
			l[i] = (uint8_t)round_clamp(iscale * (x[i] - lo), 0,
						    nmax);
			sl += w[i] * l[i];
			sl2 += w[i] * l[i] * l[i];
			sxl += w[i] * l[i] * x[i];
		}
		if (is < 0) {
			s = 1 / iscale;
			m = lo;
		} else {
			dd = sw * sl2 - sl * sl;
			if (!(dd > 0))
				continue;
			s = (sw * sxl - sx * sl) / dd;
			m = (sl2 * sx - sl * sxl) / dd;
			if (m > 0) {
				m = 0;
				s = sxl / sl2;
			}
			if (!(s > 0))
				continue;
		}
		for (i = 0; i < n; i++) {
			float e = s * l[i] + m - x[i];

			err += w[i] * e * e;
		}
		if (err < best_err) {
			best_err = err;
			best_s = s;
			best_m = m;
		}
	}
	*neg_min = -best_m;
	return best_s;
}

static float mean_sq(const float *x, int n)
{
	float s = 0;
	int i;

	for (i = 0; i < n; i++)
		s += x[i] * x[i];
	return s / n;
}

/*
 * Element weights for the fits.  With an importance vector, llama.cpp's
 * imatrix weighting imp * sqrt(sigma2 + x^2) (sigma2 twice the block's
 * mean square).  Without: x^2 for Q6_K (ggml's rmse_type 1), and for
 * Q4_K ggml's quantize_row_q4_K_ref choice rms(sub-block) + |x|, which
 * measured 4-5 % lower error than x^2 on the test models.
 */
static void sub_weights(const float *x, const float *imp, int n, int sub,
			float sigma2, float *w)
{
	int i, j;

	for (i = 0; i < n; i += sub) {
		float av = sub == 32 ? sqrtf(mean_sq(x + i, sub)) : 0;

		for (j = i; j < i + sub; j++)
			w[j] = imp ? imp[j] * sqrtf(sigma2 + x[j] * x[j]) :
			       sub == 32 ? av + fabsf(x[j]) : x[j] * x[j];
	}
}


/* 6-bit quantization of 8 non-negative values against their max. */
static int quant6(const float *v, uint8_t *l, uint16_t *h16)
{
	float max = 0, d;
	int32_t h;
	int j;

	for (j = 0; j < 8; j++)
		max = fmaxf(max, v[j]);
	h = half(max / 63);
	if (h < 0)
		return QF_ENUMERIC;
	d = qf_f16_to_f32((uint16_t)h);
	for (j = 0; j < 8; j++)
		l[j] = (uint8_t)(d > 0 ? round_clamp(v[j] / d, 0, 63) : 0);
	*h16 = (uint16_t)h;
	return 0;
}

/* Weighted error of sub-block x [32] coded with scale d, offset dm. */
static float k4_err(const float *x, const float *w, float d, float dm)
{
	float e = 0;
	int i;

	for (i = 0; i < 32; i++) {
		int l = d > 0 ? round_clamp((x[i] + dm) / d, 0, 15) : 0;
		float r = d * l - dm - x[i];

		e += w[i] * r * r;
	}
	return e;
}

/*
 * Sub-block codes: the 6-bit scale and min nearest to the fit, then the
 * neighbouring codes tried too (rounding both independently is not the
 * least error once the grid is coarse).
 */
static void k4_codes(const float *x, const float *w, float d, float dmin,
		     uint8_t *ls, uint8_t *lm)
{
	int a0 = *ls, b0 = *lm, a, b;
	float best = INFINITY, e;

	for (a = a0 - 1; a <= a0 + 1; a++) {
		for (b = b0 - 1; b <= b0 + 1; b++) {
			if (a < 0 || a > 63 || b < 0 || b > 63)
				continue;
			e = k4_err(x, w, d * a, dmin * b);
			if (e < best) {
				best = e;
				*ls = (uint8_t)a;
				*lm = (uint8_t)b;
			}
		}
	}
}

static int enc_q4_k_block(const float *x, const float *imp, uint8_t *y)
{
	float sc[8], mn[8], w[QK_K], sigma2 = mean_sq(x, QK_K), d, dmin;
	uint8_t ls[8], lm[8], *q = y + 16;
	uint16_t hd, hm;
	int j, i, ret;

	sub_weights(x, imp, QK_K, 32, 2 * sigma2, w);
	for (j = 0; j < 8; j++)
		sc[j] = fit_scale_min(x + 32 * j, w + 32 * j, 32, 15, &mn[j]);
	ret = quant6(sc, ls, &hd);
	if (!ret)
		ret = quant6(mn, lm, &hm);
	if (ret)
		return ret;
	d = qf_f16_to_f32(hd);
	dmin = qf_f16_to_f32(hm);
	put16(y, hd);
	put16(y + 2, hm);
	memset(y + 4, 0, 12);
	memset(q, 0, QK_K / 2);
	for (j = 0; j < 8; j++) {
		k4_codes(x + 32 * j, w + 32 * j, d, dmin, &ls[j], &lm[j]);
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
			int l = dj > 0 ? round_clamp((x[32 * j + i] + dmin *
						      lm[j]) / dj, 0, 15) : 0;

			/* pairs of sub-blocks share 32 bytes: low, high */
			q[32 * (j / 2) + i] |= (uint8_t)(l << 4 * (j & 1));
		}
	}
	return 0;
}

/*
 * Weighted fit of x ~ s * l, l in -nmax..nmax-1 (ggml's make_qx_quants
 * with rmse_type 1): grids with the largest |x| at -(nmax + 0.1 k).
 */
static float fit_scale_sym(const float *x, const float *w, int n, int nmax)
{
	float amax = 0, max = 0, best = -1, scale;
	int i, is;

	for (i = 0; i < n; i++) {
		if (fabsf(x[i]) > amax) {
			amax = fabsf(x[i]);
			max = x[i];
		}
	}
	if (amax < GROUP_MAX_EPS)
		return 0;
	scale = max / -nmax;
	for (is = -9; is <= 9; is++) {
		float iscale = -(nmax + 0.1f * is) / max;
		float slx = 0, sl2 = 0;

		for (i = 0; i < n; i++) {
			int l = round_clamp(iscale * x[i], -nmax, nmax - 1);

			slx += w[i] * x[i] * l;
			sl2 += w[i] * l * l;
		}
		if (sl2 > 0 && slx * slx > best * sl2) {
			scale = slx / sl2;
			best = scale * slx;
		}
	}
	return scale;
}

static int enc_q6_k_block(const float *x, const float *imp, uint8_t *y)
{
	float sc[16], w[16], amax = 0, max = 0, d, sigma2 = mean_sq(x, QK_K);
	uint8_t l[QK_K], *ql = y, *qh = y + 128;
	int8_t *scales = (int8_t *)(y + 192);
	int32_t h;
	int j, i;

	for (j = 0; j < 16; j++) {
		sub_weights(x + 16 * j, imp ? imp + 16 * j : NULL, 16, 16,
			    2 * sigma2, w);
		sc[j] = fit_scale_sym(x + 16 * j, w, 16, 32);
		if (fabsf(sc[j]) > amax) {
			amax = fabsf(sc[j]);
			max = sc[j];
		}
	}
	memset(y, 0, Q6_K_BYTES);
	if (amax < GROUP_MAX_EPS)
		return 0;
	/* the largest scale maps to -128, the full int8 range (as ggml) */
	h = half(max / -128);
	if (h < 0)
		return QF_ENUMERIC;
	put16(y + 208, (uint16_t)h);
	d = qf_f16_to_f32((uint16_t)h);
	for (j = 0; j < 16; j++) {
		float dj;

		scales[j] = (int8_t)(d != 0 ? round_clamp(sc[j] / d, -128,
							  127) : 0);
		dj = d * scales[j];
		for (i = 0; i < 16; i++)
			l[16 * j + i] = (uint8_t)(32 + (dj != 0 ?
				round_clamp(x[16 * j + i] / dj, -32, 31) : 0));
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
		put16(y + 2 * i, h);
	}
	return 0;
}

int qf_ggml_quantize_row(enum qf_ggml_type t, const float *x, int64_t n,
			 const float *imp, void *dst)
{
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
			put16(y + 4 * i, (uint16_t)u);
			put16(y + 4 * i + 2, (uint16_t)(u >> 16));
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
	case QF_GGML_Q4_K:
		for (i = 0; i < n / QK_K && !ret; i++)
			ret = enc_q4_k_block(x + i * QK_K,
					     imp ? imp + i * QK_K : NULL,
					     y + i * Q4_K_BYTES);
		return ret;
	case QF_GGML_Q6_K:
		for (i = 0; i < n / QK_K && !ret; i++)
			ret = enc_q6_k_block(x + i * QK_K,
					     imp ? imp + i * QK_K : NULL,
					     y + i * Q6_K_BYTES);
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

static void dec_q4_k(const uint8_t *x, int64_t nb, float *y)
{
	int64_t b;
	int j, l, sc, m;

	for (b = 0; b < nb; b++, x += Q4_K_BYTES) {
		float d = qf_f16_to_f32(get16(x));
		float min = qf_f16_to_f32(get16(x + 2));
		const uint8_t *q = x + 16;

		for (j = 0; j < 8; j += 2, q += 32) {
			float d1, m1, d2, m2;

			scale_min_k4(j, x + 4, &sc, &m);
			d1 = d * sc;
			m1 = min * m;
			scale_min_k4(j + 1, x + 4, &sc, &m);
			d2 = d * sc;
			m2 = min * m;
			for (l = 0; l < 32; l++)
				*y++ = d1 * (q[l] & 0xf) - m1;
			for (l = 0; l < 32; l++)
				*y++ = d2 * (q[l] >> 4) - m2;
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
		float d = qf_f16_to_f32(get16(x + 208));

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
			uint32_t u = get16(x + 4 * i) |
				     (uint32_t)get16(x + 4 * i + 2) << 16;

			memcpy(&y[i], &u, 4);
		}
		return 0;
	case QF_GGML_F16:
	case QF_GGML_BF16:
		for (i = 0; i < n; i++)
			y[i] = t == QF_GGML_F16 ?
				qf_f16_to_f32(get16(x + 2 * i)) :
				qf_bf16_to_f32(get16(x + 2 * i));
		return 0;
	case QF_GGML_Q4_0:
	case QF_GGML_Q4_1:
		for (i = 0; i < n / QK; i++, y += QK) {
			const uint8_t *b = x + i * qf_ggml_block_bytes(t);
			float d = qf_f16_to_f32(get16(b));
			float m = t == QF_GGML_Q4_1 ?
				  qf_f16_to_f32(get16(b + 2)) : 0;
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
			float d = qf_f16_to_f32(get16(b));

			for (j = 0; j < QK; j++)
				y[j] = (int8_t)b[2 + j] * d;
		}
		return 0;
	case QF_GGML_Q4_K:
		dec_q4_k(x, n / QK_K, y);
		return 0;
	case QF_GGML_Q6_K:
		dec_q6_k(x, n / QK_K, y);
		return 0;
	}
	return -EINVAL;
}

int qf_gguf_q4_0_from_int(const uint8_t *q, const uint16_t *sc16, int64_t n,
			  void *dst)
{
	uint8_t *y = dst;
	int64_t b;
	int j;

	if (n <= 0 || n % QK)
		return -EINVAL;
	for (b = 0; b < n / QK; b++, q += QK, y += Q4_0_BYTES) {
		for (j = 0; j < QK; j++)
			if (q[j] > 15)
				return -EINVAL;
		put16(y, sc16[b]);
		for (j = 0; j < QK / 2; j++)
			y[2 + j] = (uint8_t)(q[j] | q[QK / 2 + j] << 4);
	}
	return 0;
}

int qf_gguf_q8_0_from_int(const uint8_t *q, const uint16_t *sc16, int64_t n,
			  void *dst)
{
	uint8_t *y = dst;
	int64_t b;
	int j;

	if (n <= 0 || n % QK)
		return -EINVAL;
	for (b = 0; b < n / QK; b++, q += QK, y += Q8_0_BYTES) {
		put16(y, sc16[b]);
		/* int8 q - 128 is q with its top bit flipped */
		for (j = 0; j < QK; j++)
			y[2 + j] = (uint8_t)(q[j] ^ 0x80);
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* header writer                                                      */

enum {				/* gguf_metadata_value_type */
	GGUF_U32 = 4,
	GGUF_I32 = 5,
	GGUF_F32 = 6,
	GGUF_BOOL = 7,
	GGUF_STR = 8,
	GGUF_ARR = 9,
};

/* Appends to b; after the first failure every call is a no-op. */
struct kvw {
	struct qf_buf *b;
	uint64_t nkv;			/* pairs written */
	int err;
	char arch[16];			/* prefix of "{arch}." keys */
};

static void w_bytes(struct kvw *w, const void *p, size_t n)
{
	if (!w->err)
		w->err = qf_buf_add(w->b, p, n);
}

static void w_u32(struct kvw *w, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16),
			 (uint8_t)(v >> 24) };

	w_bytes(w, b, 4);
}

static void w_u64(struct kvw *w, uint64_t v)
{
	w_u32(w, (uint32_t)v);
	w_u32(w, (uint32_t)(v >> 32));
}

static void w_f32(struct kvw *w, float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	w_u32(w, u);
}

static void w_str(struct kvw *w, const char *s, size_t n)
{
	w_u64(w, n);
	w_bytes(w, s, n);
}

/* Key (with "{arch}." for a leading '.') and value type. */
static void kv_key(struct kvw *w, const char *key, uint32_t type)
{
	char full[96];

	if (key[0] == '.') {
		snprintf(full, sizeof(full), "%s%s", w->arch, key);
		key = full;
	}
	w_str(w, key, strlen(key));
	w_u32(w, type);
	w->nkv++;
}

static void kv_u32(struct kvw *w, const char *key, uint32_t v)
{
	kv_key(w, key, GGUF_U32);
	w_u32(w, v);
}

static void kv_f32(struct kvw *w, const char *key, float v)
{
	kv_key(w, key, GGUF_F32);
	w_f32(w, v);
}

static void kv_bool(struct kvw *w, const char *key, bool v)
{
	uint8_t b = v;

	kv_key(w, key, GGUF_BOOL);
	w_bytes(w, &b, 1);
}

static void kv_str(struct kvw *w, const char *key, const char *s)
{
	kv_key(w, key, GGUF_STR);
	w_str(w, s, strlen(s));
}

static void kv_arr(struct kvw *w, const char *key, uint32_t type, uint64_t n)
{
	kv_key(w, key, GGUF_ARR);
	w_u32(w, type);
	w_u64(w, n);
}

/* ------------------------------------------------------------------ */
/* vocabulary from tokenizer.json                                     */

#define TOK_MAX_JSON (64u << 20)	/* bytes, as the tokenizer's bound */
#define TOK_MAX_CONFIG (16u << 20)	/* tokenizer_config.json */
#define TOK_MAX_TOKEN (1u << 20)	/* bytes of one token or merge */
#define TOK_MAX_MERGES (1u << 23)
#define TOK_MAX_ADDED (1u << 16)
#define TOK_MAX_TEMPLATE (1u << 20)
#define TOK_MAX_IDS (1 << 22)		/* largest vocabulary */

enum {				/* llama_token_type */
	TT_NORMAL = 1,
	TT_UNUSED = 5,
	TT_CONTROL = 3,
	TT_USER = 4,
	TT_BYTE = 6,
};

struct vocab {
	cJSON *tj;			/* tokenizer.json */
	cJSON *tc;			/* tokenizer_config.json or NULL */
	const char **tok;		/* [n] borrowed from tj; NULL = gap */
	int32_t *type;			/* [n] */
	int64_t n;			/* rows of token_embd */
	bool gpt2;			/* byte-level BPE, else llama (SPM) */
	const char *pre;		/* tokenizer.ggml.pre */
};

static const cJSON *jget(const cJSON *o, const char *k)
{
	return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, k) :
				   NULL;
}

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = jget(o, k);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Integer id in [0, n), or -1. */
static int64_t jid(const cJSON *v, int64_t n)
{
	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
	    v->valuedouble < 0 || v->valuedouble >= (double)n)
		return -1;
	return (int64_t)v->valuedouble;
}

static bool has_type(const cJSON *o, const char *ty, const char *list)
{
	const cJSON *e;
	const char *t = jstr(o, "type");

	if (!t)
		return false;
	if (!strcmp(t, ty))
		return true;
	if (strcmp(t, "Sequence"))
		return false;
	cJSON_ArrayForEach(e, jget(o, list))
		if (jstr(e, "type") && !strcmp(jstr(e, "type"), ty))
			return true;
	return false;
}

/* The pre-tokenizer split regexes llama.cpp implements, by exact text. */
static const char *pre_name(const cJSON *pt)
{
	static const char *const pats[][2] = {
		{ "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
		  "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
		  "\\s+(?!\\S)|\\s+", "llama-bpe" },
		{ "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
		  "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
		  "\\s+(?!\\S)|\\s+", "qwen2" },
		{ "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}"
		  "\\p{N}]+|\\s+(?!\\S)|\\s+", "gpt-2" },
	};
	const char *ty = jstr(pt, "type"), *re;
	const cJSON *e;
	size_t i;

	if (ty && !strcmp(ty, "ByteLevel")) {
		const cJSON *rx = jget(pt, "use_regex");

		return cJSON_IsFalse(rx) ? "default" : "gpt-2";
	}
	if (!ty || strcmp(ty, "Sequence"))
		return "default";
	cJSON_ArrayForEach(e, jget(pt, "pretokenizers")) {
		re = jstr(jget(e, "pattern"), "Regex");
		if (!jstr(e, "type") || strcmp(jstr(e, "type"), "Split") || !re)
			continue;
		for (i = 0; i < sizeof(pats) / sizeof(pats[0]); i++)
			if (!strcmp(re, pats[i][0]))
				return pats[i][1];
	}
	return "default";
}

static int read_json(const struct qf_model *m, const char *name, size_t max,
		     bool optional, cJSON **out)
{
	struct qf_buf b = QF_BUF_INIT;
	int ret;

	*out = NULL;
	ret = qf_src_read(m->dirfd, name, max, &b);
	if (ret == -ENOENT && optional)
		return 0;
	if (ret < 0) {
		qf_err("%s: cannot read '%s': %s", m->dir, name,
		       qf_strerror(ret));
		return ret;
	}
	*out = cJSON_ParseWithLength(b.data ? b.data : "", b.len);
	qf_buf_release(&b);
	if (!*out || !cJSON_IsObject(*out)) {
		cJSON_Delete(*out);
		*out = NULL;
		qf_err("%s/%s: not a JSON object", m->dir, name);
		return QF_EFORMAT;
	}
	return 0;
}

#define VFAIL(code, msg)                                                     \
	do {                                                                 \
		*why = (msg);                                                \
		return (code);                                               \
	} while (0)

static bool looks_special(const char *s)
{
	size_t n = strlen(s);

	/* convert_hf_to_gguf.py does_token_look_special() */
	return !strcmp(s, "<pad>") || !strcmp(s, "<mask>") ||
	       !strcmp(s, "<2mass>") || !strcmp(s, "[@BOS@]") ||
	       (n >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + n - 2, "|>")) ||
	       (n >= 8 && !strncmp(s, "<\xef\xbd\x9c", 4) &&
		!strcmp(s + n - 4, "\xef\xbd\x9c>")) ||
	       (!strncmp(s, "<unused", 7) && s[n - 1] == '>');
}

static bool is_byte_token(const char *s)
{
	return strlen(s) == 6 && !strncmp(s, "<0x", 3) && s[5] == '>' &&
	       strchr("0123456789ABCDEFabcdef", s[3]) &&
	       strchr("0123456789ABCDEFabcdef", s[4]) && s[3] && s[4];
}

/* Fill v->tok / v->type from tokenizer.json's vocab and added_tokens. */
static int vocab_tokens(struct vocab *v, const char **why)
{
	const cJSON *model = jget(v->tj, "model"), *e;
	int64_t id;
	size_t nadded = 0;

	if (!cJSON_IsObject(jget(model, "vocab")))
		VFAIL(QF_EFORMAT, "tokenizer.json: model.vocab is not an "
		      "object");
	cJSON_ArrayForEach(e, jget(model, "vocab")) {
		id = jid(e, v->n);
		if (id < 0)
			VFAIL(QF_EFORMAT, "tokenizer.json: a vocab id is "
			      "not an integer below the embedding rows");
		if (v->tok[id])
			VFAIL(QF_EFORMAT, "tokenizer.json: two tokens share an "
			      "id");
		if (strlen(e->string) > TOK_MAX_TOKEN)
			VFAIL(QF_EFORMAT, "tokenizer.json: token too long");
		v->tok[id] = e->string;
		v->type[id] = v->gpt2 || !is_byte_token(e->string) ?
			      TT_NORMAL : TT_BYTE;
	}
	cJSON_ArrayForEach(e, jget(v->tj, "added_tokens")) {
		const char *c = jstr(e, "content");
		bool special = cJSON_IsTrue(jget(e, "special"));

		id = jid(jget(e, "id"), v->n);
		if (id < 0 || !c || ++nadded > TOK_MAX_ADDED ||
		    strlen(c) > TOK_MAX_TOKEN)
			VFAIL(QF_EFORMAT, "tokenizer.json: bad added token");
		v->tok[id] = c;
		if (special || (v->gpt2 && looks_special(c)))
			v->type[id] = TT_CONTROL;
		else if (v->gpt2 || !is_byte_token(c))
			v->type[id] = TT_USER;
	}
	return 0;
}

/* Id of a special token named in tokenizer_config.json, or -1. */
static int64_t special_id(const struct vocab *v, const char *what)
{
	char key[32];
	const cJSON *e = NULL, *t;
	const char *c;
	int64_t id = -1;

	snprintf(key, sizeof(key), "%s_token", what);
	t = jget(v->tc, key);
	c = cJSON_IsString(t) ? t->valuestring : jstr(t, "content");
	if (c) {
		cJSON_ArrayForEach(e, jget(v->tj, "added_tokens"))
			if (jstr(e, "content") &&
			    !strcmp(jstr(e, "content"), c))
				return jid(jget(e, "id"), v->n);
		id = jid(jget(jget(jget(v->tj, "model"), "vocab"), c), v->n);
	}
	return id;
}

/* ... or from config.json's <what>_token_id (a list: its first id). */
static int64_t config_id(const struct qf_model *m, const struct vocab *v,
			 const char *what)
{
	char key[32];
	const cJSON *t;

	snprintf(key, sizeof(key), "%s_token_id", what);
	t = jget(m->config, key);
	if (cJSON_IsArray(t))
		t = cJSON_GetArrayItem(t, 0);
	return jid(t, v->n);
}

/* add_bos_token from tokenizer_config, else the post-processor template. */
static int add_bos(const struct vocab *v, int64_t bos)
{
	const cJSON *a = jget(v->tc, "add_bos_token");
	const cJSON *pp = jget(v->tj, "post_processor"), *first, *ids;
	const char *name;

	if (cJSON_IsBool(a))
		return cJSON_IsTrue(a);
	if (!jstr(pp, "type") || strcmp(jstr(pp, "type"), "TemplateProcessing"))
		return -1;
	first = cJSON_GetArrayItem(jget(pp, "single"), 0);
	name = jstr(jget(first, "SpecialToken"), "id");
	if (!name)
		return 0;
	ids = jget(jget(jget(pp, "special_tokens"), name), "ids");
	return cJSON_GetArraySize(ids) == 1 && bos >= 0 &&
	       jid(cJSON_GetArrayItem(ids, 0), v->n) == bos;
}

/*
 * The two halves of merge e: "a b" (split at the first space after the
 * first byte, as llama.cpp) or ["a", "b"].  False for anything else.
 */
static bool merge_parts(const cJSON *e, const char **a, size_t *la,
			const char **b, size_t *lb)
{
	const cJSON *x = cJSON_GetArrayItem(e, 0);
	const cJSON *y = cJSON_GetArrayItem(e, 1);
	const char *sp;

	if (cJSON_IsString(e) && e->valuestring[0]) {
		sp = strchr(e->valuestring + 1, ' ');
		if (!sp)
			return false;
		*a = e->valuestring;
		*la = (size_t)(sp - *a);
		*b = sp + 1;
	} else if (cJSON_GetArraySize(e) == 2 && cJSON_IsString(x) &&
		   cJSON_IsString(y)) {
		*a = x->valuestring;
		*la = strlen(*a);
		*b = y->valuestring;
	} else {
		return false;
	}
	*lb = strlen(*b);
	return *la <= TOK_MAX_TOKEN && *lb <= TOK_MAX_TOKEN;
}

static int merge_list(const struct vocab *v, const cJSON **out,
		      const char **why)
{
	const cJSON *m = jget(jget(v->tj, "model"), "merges");

	if (m && !cJSON_IsArray(m))
		VFAIL(QF_EFORMAT, "tokenizer.json: merges is not a list");
	if (cJSON_GetArraySize(m) > (int)TOK_MAX_MERGES)
		VFAIL(QF_EFORMAT, "tokenizer.json: too many merges");
	*out = m;			/* NULL iterates as an empty list */
	return 0;
}

/* tokenizer.ggml.merges as "a b" strings (gpt2). */
static int write_merges(struct kvw *w, const cJSON *merges, const char **why)
{
	const cJSON *e;
	const char *a, *b;
	size_t la, lb;

	/* llama.cpp needs the key even when the list is empty */
	kv_arr(w, "tokenizer.ggml.merges", GGUF_STR,
	       (uint64_t)cJSON_GetArraySize(merges));
	cJSON_ArrayForEach(e, merges) {
		if (!merge_parts(e, &a, &la, &b, &lb))
			VFAIL(QF_EFORMAT, "tokenizer.json: bad merge");
		w_u64(w, la + 1 + lb);
		w_bytes(w, a, la);
		w_bytes(w, " ", 1);
		w_bytes(w, b, lb);
	}
	return 0;
}

struct tok_ref {
	const char *s;
	int32_t id;
};

static int cmp_tok(const void *x, const void *y)
{
	return strcmp(((const struct tok_ref *)x)->s,
		      ((const struct tok_ref *)y)->s);
}

/*
 * Scores for llama.cpp's sentencepiece tokenizer, which merges the
 * adjacent pair whose concatenation scores highest: -(rank of the first
 * merge producing the token), and -1e9 for tokens no merge produces.
 * convert_hf_to_gguf.py writes -1000 for every token here (LlamaHfVocab),
 * which makes llama.cpp merge left to right and split words differently
 * from the Hugging Face tokenizer; these scores reproduce its merges.
 */
static int merge_scores(const struct vocab *v, const cJSON *merges,
			float *score, const char **why)
{
	struct qf_buf cat = QF_BUF_INIT;
	struct tok_ref *idx, key, *hit;
	const cJSON *e;
	const char *a, *b;
	size_t la, lb, n = 0;
	float rank = 0;
	int64_t i;
	int ret = 0;

	idx = malloc((size_t)v->n * sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	for (i = 0; i < v->n; i++) {
		score[i] = -1e9f;
		if (v->tok[i])
			idx[n++] = (struct tok_ref){ v->tok[i], (int32_t)i };
	}
	qsort(idx, n, sizeof(*idx), cmp_tok);
	cJSON_ArrayForEach(e, merges) {
		if (!merge_parts(e, &a, &la, &b, &lb)) {
			*why = "tokenizer.json: bad merge";
			ret = QF_EFORMAT;
			break;
		}
		qf_buf_reset(&cat);
		ret = qf_buf_add(&cat, a, la);
		if (!ret)
			ret = qf_buf_add(&cat, b, lb);
		if (ret)
			break;
		key.s = cat.data;
		hit = bsearch(&key, idx, n, sizeof(*idx), cmp_tok);
		if (hit && score[hit->id] == -1e9f)
			score[hit->id] = -rank;
		rank++;
	}
	qf_buf_release(&cat);
	free(idx);
	return ret;
}

/* One token's text: gaps as [PADi], "\u2581" as ' ' in gpt2 user tokens. */
static void write_token(struct kvw *w, const struct vocab *v, int64_t i)
{
	const char *s = v->tok[i], *p;
	char pad[32];
	size_t n = 0;

	if (!s) {
		snprintf(pad, sizeof(pad), "[PAD%lld]", (long long)i);
		w_str(w, pad, strlen(pad));
		return;
	}
	if (!v->gpt2 || v->type[i] != TT_USER) {
		w_str(w, s, strlen(s));
		return;
	}
	for (p = s; *p; n++)
		p += strncmp(p, "\xe2\x96\x81", 3) ? 1 : 3;
	w_u64(w, n);
	for (p = s; *p;) {
		if (!strncmp(p, "\xe2\x96\x81", 3)) {
			w_bytes(w, " ", 1);
			p += 3;
		} else {
			w_bytes(w, p++, 1);
		}
	}
}

static int write_vocab_kv(struct kvw *w, const struct qf_model *m,
			  struct vocab *v, const char **why)
{
	static const char *const sp[][2] = {
		{ "bos", "tokenizer.ggml.bos_token_id" },
		{ "eos", "tokenizer.ggml.eos_token_id" },
		{ "unk", "tokenizer.ggml.unknown_token_id" },
		{ "pad", "tokenizer.ggml.padding_token_id" },
	};
	const cJSON *t, *merges;
	int64_t i, id, bos = -1;
	size_t k;
	int ret;

	ret = merge_list(v, &merges, why);
	if (ret)
		return ret;
	kv_str(w, "tokenizer.ggml.model", v->gpt2 ? "gpt2" : "llama");
	kv_str(w, "tokenizer.ggml.pre", v->pre);
	kv_arr(w, "tokenizer.ggml.tokens", GGUF_STR, (uint64_t)v->n);
	for (i = 0; i < v->n; i++)
		write_token(w, v, i);
	if (!v->gpt2) {
		float *score = malloc((size_t)v->n * sizeof(*score));

		ret = score ? merge_scores(v, merges, score, why) : -ENOMEM;
		if (!ret) {
			kv_arr(w, "tokenizer.ggml.scores", GGUF_F32,
			       (uint64_t)v->n);
			for (i = 0; i < v->n; i++)
				w_f32(w, score[i]);
		}
		free(score);
		if (ret)
			return ret;
	}
	kv_arr(w, "tokenizer.ggml.token_type", GGUF_I32, (uint64_t)v->n);
	for (i = 0; i < v->n; i++)
		w_u32(w, (uint32_t)v->type[i]);
	if (v->gpt2) {
		ret = write_merges(w, merges, why);
		if (ret)
			return ret;
	}
	for (k = 0; k < sizeof(sp) / sizeof(sp[0]); k++) {
		id = special_id(v, sp[k][0]);
		if (id < 0)
			id = config_id(m, v, sp[k][0]);
		if (id >= 0)
			kv_u32(w, sp[k][1], (uint32_t)id);
		if (k == 0)
			bos = id;
	}
	ret = add_bos(v, bos);
	if (ret >= 0)
		kv_bool(w, "tokenizer.ggml.add_bos_token", ret);
	t = jget(v->tc, "add_eos_token");
	if (cJSON_IsBool(t))
		kv_bool(w, "tokenizer.ggml.add_eos_token", cJSON_IsTrue(t));
	t = jget(v->tc, "add_prefix_space");
	if (cJSON_IsBool(t))
		kv_bool(w, "tokenizer.ggml.add_space_prefix", cJSON_IsTrue(t));
	t = jget(v->tc, "chat_template");
	if (cJSON_IsString(t) && strlen(t->valuestring) <= TOK_MAX_TEMPLATE)
		kv_str(w, "tokenizer.chat_template", t->valuestring);
	return 0;
}

/*
 * The tokenizer.* keys from the parsed tokenizer.json (tj) and
 * tokenizer_config.json (tc, NULL when absent).  Byte-level BPE (a
 * ByteLevel pre-tokenizer or decoder) is "gpt2" with merges; a BPE with
 * byte_fallback in a llama model is "llama" (sentencepiece style), as
 * convert_hf_to_gguf.py picks.
 */
static int vocab_kv(struct kvw *w, const struct qf_model *m, const char *arch,
		    cJSON *tj, cJSON *tc, int64_t n_vocab, const char **why)
{
	struct vocab v = { .tj = tj, .tc = tc, .n = n_vocab };
	const cJSON *model;
	int ret;

	if (n_vocab > TOK_MAX_IDS) {
		*why = "vocabulary larger than 4M tokens";
		return QF_EUNSUPPORTED;
	}
	model = jget(v.tj, "model");
	v.gpt2 = has_type(jget(v.tj, "pre_tokenizer"), "ByteLevel",
			  "pretokenizers") ||
		 has_type(jget(v.tj, "decoder"), "ByteLevel", "decoders");
	ret = QF_EUNSUPPORTED;
	if (!jstr(model, "type") || strcmp(jstr(model, "type"), "BPE")) {
		*why = "tokenizer model other than BPE";
		goto out_free;
	}
	if (!v.gpt2 && (strcmp(arch, "llama") ||
			!cJSON_IsTrue(jget(model, "byte_fallback")))) {
		*why = "BPE tokenizer neither byte-level nor byte-fallback";
		goto out_free;
	}
	v.pre = v.gpt2 ? pre_name(jget(v.tj, "pre_tokenizer")) : "default";
	ret = -ENOMEM;
	v.tok = calloc((size_t)n_vocab, sizeof(*v.tok));
	v.type = calloc((size_t)n_vocab, sizeof(*v.type));
	if (!v.tok || !v.type)
		goto out_free;
	for (int64_t i = 0; i < n_vocab; i++)
		v.type[i] = TT_UNUSED;
	ret = vocab_tokens(&v, why);
	if (!ret)
		ret = write_vocab_kv(w, m, &v, why);
out_free:
	free(v.tok);
	free(v.type);
	return ret;
}

static int write_vocab(struct kvw *w, const struct qf_model *m,
		       const struct qf_gguf_plan *p, int64_t n_vocab,
		       const char **why)
{
	cJSON *tj = NULL, *tc = NULL;
	int ret;

	ret = read_json(m, "tokenizer.json", TOK_MAX_JSON, false, &tj);
	if (ret == QF_EFORMAT || ret == -ENOENT)
		*why = "no readable tokenizer.json";
	if (!ret)
		ret = read_json(m, "tokenizer_config.json",
				TOK_MAX_CONFIG, true, &tc);
	if (!ret)
		ret = vocab_kv(w, m, p->arch, tj, tc, n_vocab, why);
	cJSON_Delete(tj);
	cJSON_Delete(tc);
	return ret;
}

/* A JSON object from bytes, as read_json() takes it from a file. */
static int json_object(const char *buf, size_t len, cJSON **out)
{
	*out = cJSON_ParseWithLength(buf ? buf : "", len);
	if (cJSON_IsObject(*out))
		return 0;
	cJSON_Delete(*out);
	*out = NULL;
	return QF_EFORMAT;
}

int qf_gguf_vocab_kv(const char *tj, size_t tjlen, const char *tc,
		     size_t tclen, const struct qf_model *m, const char *arch,
		     int64_t n_vocab, struct qf_buf *out, uint64_t *nkv,
		     const char **why)
{
	struct kvw w = { .b = out };
	cJSON *tjo = NULL, *tco = NULL;
	int ret;

	*why = NULL;
	snprintf(w.arch, sizeof(w.arch), "%s", arch);
	ret = json_object(tj, tjlen, &tjo);
	if (ret)
		*why = "no readable tokenizer.json";
	if (!ret && tc && json_object(tc, tclen, &tco)) {
		*why = "tokenizer_config.json is not a JSON object";
		ret = QF_EFORMAT;
	}
	if (!ret && n_vocab < 1) {
		*why = "no vocabulary";
		ret = -EINVAL;
	}
	if (!ret)
		ret = vocab_kv(&w, m, arch, tjo, tco, n_vocab, why);
	if (!ret)
		ret = w.err;
	*nkv = w.nkv;
	cJSON_Delete(tjo);
	cJSON_Delete(tco);
	return ret;
}

/* ------------------------------------------------------------------ */
/* tensor plan                                                        */

enum dim {			/* a dimension, in terms of the config */
	D_NONE,
	D_HIDDEN,
	D_Q,				/* heads * head_dim */
	D_KV,				/* kv_heads * head_dim */
	D_INTER,
	D_HD,				/* head_dim */
};

enum {				/* which architectures read a tensor */
	A_LLAMA = 1,
	A_QWEN2 = 2,
	A_QWEN3 = 4,
	A_ALL = 7,
};

struct map_ent {
	const char *hf;			/* after "model.layers.N." */
	const char *gg;			/* after "blk.N." */
	enum qf_gguf_role role;
	enum dim d0, d1;		/* HF shape [d0] or [d0, d1] */
	unsigned need;			/* archs where it is required */
	unsigned allow;			/* archs llama.cpp loads it in */
	int perm;			/* 1: by heads, 2: by kv heads */
};

static const struct map_ent layer_map[] = {
	{ "input_layernorm.weight", "attn_norm.weight", QF_GGUF_ROLE_VECTOR,
	  D_HIDDEN, D_NONE, A_ALL, A_ALL, 0 },
	{ "self_attn.q_proj.weight", "attn_q.weight", QF_GGUF_ROLE_ATTN_Q,
	  D_Q, D_HIDDEN, A_ALL, A_ALL, 1 },
	{ "self_attn.q_proj.bias", "attn_q.bias", QF_GGUF_ROLE_VECTOR,
	  D_Q, D_NONE, A_QWEN2, A_LLAMA | A_QWEN2, 1 },
	{ "self_attn.k_proj.weight", "attn_k.weight", QF_GGUF_ROLE_ATTN_K,
	  D_KV, D_HIDDEN, A_ALL, A_ALL, 2 },
	{ "self_attn.k_proj.bias", "attn_k.bias", QF_GGUF_ROLE_VECTOR,
	  D_KV, D_NONE, A_QWEN2, A_LLAMA | A_QWEN2, 2 },
	{ "self_attn.v_proj.weight", "attn_v.weight", QF_GGUF_ROLE_ATTN_V,
	  D_KV, D_HIDDEN, A_ALL, A_ALL, 0 },
	{ "self_attn.v_proj.bias", "attn_v.bias", QF_GGUF_ROLE_VECTOR,
	  D_KV, D_NONE, A_QWEN2, A_LLAMA | A_QWEN2, 0 },
	{ "self_attn.q_norm.weight", "attn_q_norm.weight",
	  QF_GGUF_ROLE_VECTOR, D_HD, D_NONE, A_QWEN3, A_QWEN3, 0 },
	{ "self_attn.k_norm.weight", "attn_k_norm.weight",
	  QF_GGUF_ROLE_VECTOR, D_HD, D_NONE, A_QWEN3, A_QWEN3, 0 },
	{ "self_attn.o_proj.weight", "attn_output.weight",
	  QF_GGUF_ROLE_ATTN_OUT, D_HIDDEN, D_Q, A_ALL, A_ALL, 0 },
	{ "self_attn.o_proj.bias", "attn_output.bias", QF_GGUF_ROLE_VECTOR,
	  D_HIDDEN, D_NONE, 0, A_LLAMA, 0 },
	{ "post_attention_layernorm.weight", "ffn_norm.weight",
	  QF_GGUF_ROLE_VECTOR, D_HIDDEN, D_NONE, A_ALL, A_ALL, 0 },
	{ "mlp.gate_proj.weight", "ffn_gate.weight", QF_GGUF_ROLE_FFN_GATE,
	  D_INTER, D_HIDDEN, A_ALL, A_ALL, 0 },
	{ "mlp.gate_proj.bias", "ffn_gate.bias", QF_GGUF_ROLE_VECTOR,
	  D_INTER, D_NONE, 0, A_LLAMA, 0 },
	{ "mlp.up_proj.weight", "ffn_up.weight", QF_GGUF_ROLE_FFN_UP,
	  D_INTER, D_HIDDEN, A_ALL, A_ALL, 0 },
	{ "mlp.up_proj.bias", "ffn_up.bias", QF_GGUF_ROLE_VECTOR,
	  D_INTER, D_NONE, 0, A_LLAMA, 0 },
	{ "mlp.down_proj.weight", "ffn_down.weight", QF_GGUF_ROLE_FFN_DOWN,
	  D_HIDDEN, D_INTER, A_ALL, A_ALL, 0 },
	{ "mlp.down_proj.bias", "ffn_down.bias", QF_GGUF_ROLE_VECTOR,
	  D_HIDDEN, D_NONE, 0, A_LLAMA, 0 },
};

/* "blk.N." with N a plain decimal (no sign, no leading zero): N, else -1. */
static int blk_index(const char *gg, const char **rest)
{
	int l = 0, k;

	if (strncmp(gg, "blk.", 4))
		return -1;
	for (k = 4; gg[k] >= '0' && gg[k] <= '9' && k < 13; k++)
		l = l * 10 + (gg[k] - '0');
	if (k == 4 || gg[k] != '.' || (gg[4] == '0' && k > 5))
		return -1;
	*rest = gg + k + 1;
	return l;
}

int qf_gguf_hf_name(const char *arch, const char *gg, char *hf, size_t cap,
		    int *perm)
{
	static const char *const top[][2] = {
		{ "token_embd.weight", "model.embed_tokens.weight" },
		{ "output_norm.weight", "model.norm.weight" },
		{ "output.weight", "lm_head.weight" },
	};
	unsigned a = !strcmp(arch, "llama") ? A_LLAMA :
		     !strcmp(arch, "qwen2") ? A_QWEN2 :
		     !strcmp(arch, "qwen3") ? A_QWEN3 : 0;
	const char *rest = NULL;
	size_t k;
	int l, n;

	*perm = 0;
	if (!a)
		return QF_EUNSUPPORTED;
	for (k = 0; k < sizeof(top) / sizeof(top[0]); k++)
		if (!strcmp(gg, top[k][0]))
			return snprintf(hf, cap, "%s", top[k][1]) < (int)cap ?
			       0 : -ENAMETOOLONG;
	l = blk_index(gg, &rest);
	for (k = 0; l >= 0 && k < sizeof(layer_map) / sizeof(layer_map[0]);
	     k++) {
		const struct map_ent *e = &layer_map[k];

		if (strcmp(rest, e->gg) || !(e->allow & a))
			continue;
		*perm = a == A_LLAMA ? e->perm : 0;
		n = snprintf(hf, cap, "model.layers.%d.%s", l, e->hf);
		return n >= 0 && n < (int)cap ? 0 : -ENAMETOOLONG;
	}
	return -ENOENT;
}

void qf_gguf_types_uniform(struct qf_gguf_types *ty, enum qf_ggml_type t)
{
	int r;

	for (r = 0; r < QF_GGUF_ROLE_COUNT; r++)
		ty->w[r] = r == QF_GGUF_ROLE_VECTOR ? QF_GGML_F32 : t;
	ty->q4_k_m = false;
}

static int64_t dim_of(const struct qf_tf_config *c, enum dim d)
{
	switch (d) {
	case D_HIDDEN:
		return c->hidden;
	case D_Q:
		return (int64_t)c->heads * c->head_dim;
	case D_KV:
		return (int64_t)c->kv_heads * c->head_dim;
	case D_INTER:
		return c->inter;
	case D_HD:
		return c->head_dim;
	case D_NONE:
		break;
	}
	return 0;
}

/* Type of a 2-D tensor of cols columns, with llama.cpp-like fallbacks. */
static enum qf_ggml_type pick_type(enum qf_ggml_type t, int64_t cols)
{
	if (!qf_ggml_row_bytes(t, cols) && t == QF_GGML_Q4_K)
		t = QF_GGML_Q4_1;
	if (!qf_ggml_row_bytes(t, cols) && t == QF_GGML_Q6_K)
		t = QF_GGML_Q8_0;
	if (!qf_ggml_row_bytes(t, cols))
		t = QF_GGML_F16;
	return t;
}

/* llama.cpp's use_more_bits(): the layers Q4_K_M gives more bits. */
static bool use_more_bits(int i, int n)
{
	return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

struct builder;
static enum qf_ggml_type mix_type(const struct builder *b,
				  enum qf_gguf_role role, const char *gg);

struct builder {
	const struct qf_model *m;
	const struct qf_gguf_types *types;
	struct qf_gguf_plan *p;
	bool *used;			/* [m->nt] source tensors consumed */
	size_t cap;
	unsigned arch;			/* A_* */
};

/* Append tensor gg from HF tensor hf, checking its shape. */
static int add_tensor(struct builder *b, const char *hf, const char *gg,
		      enum qf_gguf_role role, int64_t d0, int64_t d1,
		      int perm_heads, bool required, const char **why)
{
	const struct qf_model_tensor *mt = qf_model_find(b->m, hf);
	struct qf_gguf_tensor *t;
	enum qf_dtype dt;

	if (!mt) {
		if (!required)
			return 0;
		qf_err("%s: missing tensor '%s'", b->m->dir, hf);
		VFAIL(QF_EFORMAT, "a tensor the architecture needs is missing");
	}
	b->used[mt - b->m->t] = true;
	if (mt->t->ndim != (d1 ? 2 : 1) || mt->t->shape[0] != d0 ||
	    (d1 && mt->t->shape[1] != d1)) {
		qf_err("%s: tensor '%s' has a shape the config does not give",
		       b->m->dir, hf);
		VFAIL(QF_EFORMAT, "a tensor's shape disagrees with "
		      "config.json");
	}
	dt = mt->t->dtype;
	if (dt != QF_DT_F32 && dt != QF_DT_F16 && dt != QF_DT_BF16)
		VFAIL(QF_EUNSUPPORTED, "a tensor is not F32, F16 or BF16");
	QF_ASSERT(b->p->nt < b->cap && strlen(gg) < QF_GGUF_NAME_MAX);
	t = &b->p->t[b->p->nt++];
	strcpy(t->name, gg);
	t->src = mt;
	t->role = role;
	t->ndim = d1 ? 2 : 1;
	t->ne[0] = d1 ? d1 : d0;
	t->ne[1] = d1 ? d0 : 1;
	t->type = d1 ? pick_type(mix_type(b, role, gg), d1) : QF_GGML_F32;
	t->nbytes = qf_ggml_row_bytes(t->type, t->ne[0]) * (uint64_t)t->ne[1];
	t->permute_heads = b->arch == A_LLAMA ? perm_heads : 0;
	return 0;
}

static enum qf_ggml_type mix_type(const struct builder *b,
				  enum qf_gguf_role role, const char *gg)
{
	const struct qf_tf_config *c = &b->p->cfg;
	int l = -1;

	if (!b->types->q4_k_m)
		return b->types->w[role];
	sscanf(gg, "blk.%d.", &l);
	if ((role == QF_GGUF_ROLE_ATTN_V || role == QF_GGUF_ROLE_FFN_DOWN) &&
	    l >= 0 && use_more_bits(l, c->layers))
		return QF_GGML_Q6_K;
	if (role == QF_GGUF_ROLE_OUTPUT ||
	    (role == QF_GGUF_ROLE_EMBD && c->tie))
		return QF_GGML_Q6_K;
	return b->types->w[role];
}

static int add_layer(struct builder *b, int l, const char **why)
{
	const struct qf_tf_config *c = &b->p->cfg;
	char hf[160], gg[QF_GGUF_NAME_MAX];
	size_t k;
	int ret;

	for (k = 0; k < sizeof(layer_map) / sizeof(layer_map[0]); k++) {
		const struct map_ent *e = &layer_map[k];
		int perm = e->perm == 1 ? c->heads :
			   e->perm == 2 ? c->kv_heads : 0;

		snprintf(hf, sizeof(hf), "model.layers.%d.%s", l, e->hf);
		snprintf(gg, sizeof(gg), "blk.%d.%s", l, e->gg);
		if (!(e->allow & b->arch)) {
			if (qf_model_find(b->m, hf)) {
				qf_err("%s: llama.cpp's %s has no place for "
				       "'%s'", b->m->dir, b->p->arch, hf);
				VFAIL(QF_EUNSUPPORTED, "a tensor llama.cpp "
				      "does not load for this architecture");
			}
			continue;
		}
		ret = add_tensor(b, hf, gg, e->role, dim_of(c, e->d0),
				 dim_of(c, e->d1), perm,
				 (e->need & b->arch) != 0, why);
		if (ret)
			return ret;
	}
	return 0;
}

/* llama3 rope scaling: llama.cpp wants the factors as rope_freqs.weight. */
static void add_rope_freqs(struct builder *b)
{
	struct qf_gguf_tensor *t = &b->p->t[b->p->nt++];

	strcpy(t->name, "rope_freqs.weight");
	t->role = QF_GGUF_ROLE_VECTOR;
	t->type = QF_GGML_F32;
	t->ndim = 1;
	t->ne[0] = b->p->cfg.head_dim / 2;
	t->ne[1] = 1;
	t->nbytes = (uint64_t)t->ne[0] * 4;
}

static int plan_tensors(struct builder *b, const char **why)
{
	const struct qf_tf_config *c = &b->p->cfg;
	size_t i;
	int l, ret;

	b->cap = (size_t)c->layers * (sizeof(layer_map) / sizeof(layer_map[0]))
		 + 4;
	b->p->t = calloc(b->cap, sizeof(*b->p->t));
	b->used = calloc(b->m->nt ? b->m->nt : 1, sizeof(*b->used));
	if (!b->p->t || !b->used)
		return -ENOMEM;
	if (c->rope_factor > 0)
		add_rope_freqs(b);
	ret = add_tensor(b, "model.embed_tokens.weight", "token_embd.weight",
			 QF_GGUF_ROLE_EMBD, c->vocab, c->hidden, 0, true, why);
	for (l = 0; l < c->layers && !ret; l++)
		ret = add_layer(b, l, why);
	if (!ret)
		ret = add_tensor(b, "model.norm.weight", "output_norm.weight",
				 QF_GGUF_ROLE_VECTOR, c->hidden, 0, 0, true,
				 why);
	if (!ret && !c->tie)
		ret = add_tensor(b, "lm_head.weight", "output.weight",
				 QF_GGUF_ROLE_OUTPUT, c->vocab, c->hidden, 0,
				 true, why);
	for (i = 0; i < b->m->nt && !ret; i++) {
		const char *name = b->m->t[i].name;
		size_t n = strlen(name);

		/* tied: llama.cpp reuses token_embd, a stored copy is moot */
		if (b->used[i] || (c->tie && !strcmp(name, "lm_head.weight")) ||
		    (n > 20 && !strcmp(name + n - 20, ".rotary_emb.inv_freq")))
			continue;
		qf_err("%s: no GGUF name for tensor '%s'", b->m->dir, name);
		ret = QF_EUNSUPPORTED;
		*why = "a tensor with no GGUF name";
	}
	return ret;
}

/* general.file_type (llama_ftype) of the type most weights use. */
static uint32_t file_type(const struct qf_gguf_plan *p)
{
	static const struct {
		enum qf_ggml_type t;
		uint32_t ftype;
	} ft[] = {
		{ QF_GGML_F32, 0 }, { QF_GGML_F16, 1 }, { QF_GGML_Q4_0, 2 },
		{ QF_GGML_Q4_1, 3 }, { QF_GGML_Q8_0, 7 },
		{ QF_GGML_Q4_K, 14 },	/* MOSTLY_Q4_K_S; _M: 15, below */
		{ QF_GGML_Q6_K, 18 }, { QF_GGML_BF16, 32 },
	};
	uint64_t numel[sizeof(ft) / sizeof(ft[0])] = { 0 };
	size_t i, k, best = 0;

	for (i = 0; i < p->nt; i++)
		for (k = 0; k < sizeof(ft) / sizeof(ft[0]); k++)
			if (p->t[i].ndim == 2 && p->t[i].type == ft[k].t)
				numel[k] += (uint64_t)(p->t[i].ne[0] *
						       p->t[i].ne[1]);
	for (k = 1; k < sizeof(ft) / sizeof(ft[0]); k++)
		if (numel[k] > numel[best])
			best = k;
	return ft[best].ftype;
}

static void write_model_kv(struct kvw *w, const struct qf_model *m,
			   const struct qf_gguf_plan *p)
{
	const struct qf_tf_config *c = &p->cfg;
	const cJSON *hd = jget(m->config, "head_dim");
	long ctx = qf_model_cfg_int(m, "max_position_embeddings", 2048);

	kv_str(w, "general.architecture", p->arch);
	kv_str(w, "general.name", m->name);
	kv_u32(w, "general.alignment", QF_GGUF_ALIGN);
	kv_u32(w, "general.file_type", p->q4_k_m ? 15 : file_type(p));
	kv_u32(w, "general.quantization_version", 2);
	kv_u32(w, ".vocab_size", (uint32_t)c->vocab);
	kv_u32(w, ".context_length",
	       ctx > 0 && ctx <= UINT32_MAX ? (uint32_t)ctx : 2048);
	kv_u32(w, ".embedding_length", (uint32_t)c->hidden);
	kv_u32(w, ".block_count", (uint32_t)c->layers);
	kv_u32(w, ".feed_forward_length", (uint32_t)c->inter);
	kv_u32(w, ".attention.head_count", (uint32_t)c->heads);
	kv_u32(w, ".attention.head_count_kv", (uint32_t)c->kv_heads);
	kv_f32(w, ".rope.freq_base", c->rope_theta);
	kv_u32(w, ".rope.dimension_count", (uint32_t)c->head_dim);
	kv_f32(w, ".attention.layer_norm_rms_epsilon", c->rms_eps);
	/* the converter writes them whenever config.json has head_dim */
	if ((hd && !cJSON_IsNull(hd)) || c->head_dim * c->heads != c->hidden) {
		kv_u32(w, ".attention.key_length", (uint32_t)c->head_dim);
		kv_u32(w, ".attention.value_length", (uint32_t)c->head_dim);
	}
}

static void write_tensor_infos(struct kvw *w, const struct qf_gguf_plan *p)
{
	size_t i;
	int d;

	for (i = 0; i < p->nt; i++) {
		const struct qf_gguf_tensor *t = &p->t[i];

		w_str(w, t->name, strlen(t->name));
		w_u32(w, (uint32_t)t->ndim);
		for (d = 0; d < t->ndim; d++)
			w_u64(w, (uint64_t)t->ne[d]);
		w_u32(w, (uint32_t)t->type);
		w_u64(w, t->offset - p->data_off);
	}
}

static uint64_t align_up(uint64_t x)
{
	return (x + QF_GGUF_ALIGN - 1) / QF_GGUF_ALIGN * QF_GGUF_ALIGN;
}

static int write_header(const struct qf_model *m, struct qf_gguf_plan *p,
			const char **why)
{
	struct kvw w = { .b = &p->header };
	uint64_t info = 0, off;
	size_t i, kv_at;
	int ret;
	int d;

	memcpy(w.arch, p->arch, sizeof(w.arch));
	w_bytes(&w, "GGUF", 4);
	w_u32(&w, QF_GGUF_VERSION);
	w_u64(&w, p->nt);
	kv_at = p->header.len;
	w_u64(&w, 0);			/* KV count, patched below */
	write_model_kv(&w, m, p);
	ret = write_vocab(&w, m, p, p->cfg.vocab, why);
	if (ret)
		return ret;
	if (w.err)
		return w.err;
	/* the tensor infos' size does not depend on the offsets */
	for (i = 0; i < p->nt; i++)
		info += 8 + strlen(p->t[i].name) + 4 + 8 *
			(uint64_t)p->t[i].ndim + 4 + 8;
	p->data_off = align_up(p->header.len + info);
	off = p->data_off;
	for (i = 0; i < p->nt; i++) {
		p->t[i].offset = off;
		off = align_up(off + p->t[i].nbytes);
	}
	p->size = off;
	write_tensor_infos(&w, p);
	while (!w.err && p->header.len < p->data_off)
		w_bytes(&w, "", 1);
	if (w.err)
		return w.err;
	QF_ASSERT(p->header.len == p->data_off);
	for (d = 0; d < 8; d++)
		p->header.data[kv_at + d] = (char)(w.nkv >> 8 * d);
	return 0;
}

int qf_gguf_plan_init(const struct qf_model *m,
		      const struct qf_gguf_types *types,
		      struct qf_gguf_plan *out, const char **why)
{
	struct builder b = { .m = m, .types = types, .p = out };
	const char *mt = jstr(m->config, "model_type");
	const char *dummy;
	int r, ret;

	memset(out, 0, sizeof(*out));
	if (!why)
		why = &dummy;
	*why = NULL;
	for (r = 0; r < QF_GGUF_ROLE_COUNT; r++)
		if (!qf_ggml_type_known(types->w[r]))
			VFAIL(-EINVAL, "unknown ggml type");
	if (!mt || (strcmp(mt, "llama") && strcmp(mt, "mistral") &&
		    strcmp(mt, "qwen2") && strcmp(mt, "qwen3")))
		VFAIL(QF_EUNSUPPORTED, "model_type is none of llama, mistral, "
		      "qwen2, qwen3");
	b.arch = mt[0] == 'q' ? (mt[4] == '2' ? A_QWEN2 : A_QWEN3) : A_LLAMA;
	strcpy(out->arch, mt[0] == 'q' ? mt : "llama");
	out->q4_k_m = types->q4_k_m;
	ret = qf_tf_config_parse(m, &out->cfg);
	if (ret) {
		*why = "config.json: unsupported settings (see the log)";
		return ret;
	}
	ret = plan_tensors(&b, why);
	if (!ret)
		ret = write_header(m, out, why);
	free(b.used);
	if (ret && !*why)
		*why = qf_strerror(ret);
	return ret;
}

void qf_gguf_plan_free(struct qf_gguf_plan *p)
{
	if (!p)
		return;
	qf_buf_release(&p->header);
	free(p->t);
	p->t = NULL;
	p->nt = 0;
}

/* ------------------------------------------------------------------ */
/* production                                                         */

#define ROW_BLOCK_FLOATS (1u << 20)	/* ~4 MiB of f32 per read */

/* rope_freqs as conversion/llama.py generate_extra_tensors (llama3). */
static void rope_freqs(const struct qf_tf_config *c, float *out)
{
	double lo_wl = c->rope_orig_max_pos / c->rope_low_freq_factor;
	double hi_wl = c->rope_orig_max_pos / c->rope_high_freq_factor;
	int i, dim = c->head_dim;

	for (i = 0; i < dim / 2; i++) {
		double freq = 1.0 / pow(c->rope_theta, 2.0 * i / dim);
		double wl = 2 * M_PI / freq;
		double s = (c->rope_orig_max_pos / wl - c->rope_low_freq_factor)
			   / (c->rope_high_freq_factor -
			      c->rope_low_freq_factor);

		out[i] = wl < hi_wl ? 1.0f : wl > lo_wl ? c->rope_factor :
			 (float)(1 / ((1 - s) / c->rope_factor + s));
	}
}

void qf_gguf_permute_rows(const float *src, float *dst, int64_t nr,
			  int64_t cols, int64_t hd, bool inverse)
{
	int64_t h, i, j, a, b;

	for (h = 0; h < nr; h += hd)
		for (i = 0; i < hd / 2; i++)
			for (j = 0; j < 2; j++) {
				a = h + 2 * i + j;	/* llama.cpp's row */
				b = h + j * hd / 2 + i;	/* HF's row */
				memcpy(dst + (inverse ? b : a) * cols,
				       src + (inverse ? a : b) * cols,
				       (size_t)cols * sizeof(*dst));
			}
}

int qf_gguf_produce(const struct qf_model *m, const struct qf_gguf_plan *p,
		    size_t i, const float *imp, void *dst)
{
	const struct qf_gguf_tensor *t;
	int64_t rows, cols, rb, r0, r, hd;
	uint64_t row_bytes;
	float *buf, *tmp = NULL;
	int ret = 0;

	if (i >= p->nt)
		return -EINVAL;
	t = &p->t[i];
	if (!t->src) {
		buf = malloc((size_t)t->ne[0] * sizeof(*buf));
		if (!buf)
			return -ENOMEM;
		rope_freqs(&p->cfg, buf);
		ret = qf_ggml_quantize_row(t->type, buf, t->ne[0], NULL, dst);
		free(buf);
		return ret;
	}
	/* a 1-D tensor is rows of one element, so biases permute alike */
	rows = t->ndim == 2 ? t->ne[1] : t->ne[0];
	cols = t->ndim == 2 ? t->ne[0] : 1;
	hd = t->permute_heads ? rows / t->permute_heads : 1;
	rb = (int64_t)ROW_BLOCK_FLOATS / cols;
	rb = rb < hd ? hd : rb / hd * hd;
	if (t->ndim == 1)
		rb = rows;
	buf = malloc((size_t)(rb * cols) * sizeof(*buf));
	if (t->permute_heads)
		tmp = malloc((size_t)(rb * cols) * sizeof(*tmp));
	if (!buf || (t->permute_heads && !tmp)) {
		ret = -ENOMEM;
		goto out_free;
	}
	row_bytes = qf_ggml_row_bytes(t->type, t->ne[0]);
	for (r0 = 0; r0 < rows && !ret; r0 += rb) {
		int64_t nr = rows - r0 < rb ? rows - r0 : rb;
		float *x = buf;

		ret = t->ndim == 2 ?
		      qf_model_read_f32_rows(t->src, r0, nr, buf) :
		      qf_model_read_f32(t->src, buf);
		if (ret)
			break;
		if (t->permute_heads) {
			qf_gguf_permute_rows(buf, tmp, nr, cols, hd, false);
			x = tmp;
		}
		if (t->ndim == 1) {
			ret = qf_ggml_quantize_row(t->type, x, rows, NULL, dst);
			break;
		}
		for (r = 0; r < nr && !ret; r++)
			ret = qf_ggml_quantize_row(t->type, x + r * cols,
						   cols, imp, (uint8_t *)dst +
						   (uint64_t)(r0 + r) *
						   row_bytes);
	}
out_free:
	free(buf);
	free(tmp);
	return ret;
}
