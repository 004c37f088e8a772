/*
 * ggml_gptq.c - GPTQ's error feedback on llama.cpp's own k-quant grids
 * (Q2_K .. Q6_K), the encoder issue #24 asks of the kq views: GPTQ on the
 * Q4_0 grid was 2.2x better than llama.cpp's best Q4_0, while kq4_k_m,
 * rounding each weight to nearest, only tied llama.cpp's Q4_K_M.
 *
 * The sweep goes over the columns one super-block (256) at a time.  When
 * it reaches a super-block, each row's grid is chosen from the row's
 * current, error-updated weights by the same fit as the plain encoder
 * (qf_ggml_quantize_row with the importance vector: fp16 d and dmin, the
 * 6-bit sub-block scales and mins for Q4_K; d and int8 scales for Q6_K;
 * and so on for Q2_K, Q3_K, Q5_K).
 * Then the block's columns are rounded to nearest on that grid in order,
 * each column's error divided by U_ii fed back into the columns after it
 * through U's row i (U upper with H^-1 = U^T U, the caller's Cholesky of
 * the damped inverse Hessian, as GPTQ), inside the block column by
 * column and into the later columns once per block (the lazy update).
 * The grid of an element is read back from the plain encoder's bytes by
 * decoding them with every code 0 and every code 1 (ggml's dequantizer:
 * value = a * code + b per element), so no block layout is restated here
 * but where the codes sit.  IQ4_NL and IQ4_XS (the kiq4 views) are
 * non-linear, value = a * kvalues_iq4nl[code]: a is read with every code
 * 8 (whose table value is 1), and the nearest code is the table's; the
 * sweep goes over IQ4_NL's blocks of 32, each block's scale fitted when
 * the sweep reaches it; in IQ4_XS each sub-block's 6-bit scale code is
 * chosen again (the super-block's d kept) when the sweep reaches the
 * sub-block (xs_refit).
 *
 * Plain loops, no BLAS (the gguf part may not use it: doc/architecture.
 * json): O(out * in^2) per matrix, seconds for the 5M model's linears.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ggml_i.h"

/* Bits [sh, sh + n) of byte p := v's low n bits. */
static void put_bits(uint8_t *p, int sh, int n, int v)
{
	int m = ((1 << n) - 1) << sh;

	*p = (uint8_t)((*p & ~m) | ((v << sh) & m));
}

/*
 * Code k of element e in block y (ggml-common.h's layouts): Q4_K / Q5_K
 * nibbles in runs of 32 bytes per 64 elements, Q5_K's fifth bits in
 * qh[e % 32]; Q6_K 4 + 2 bits; Q2_K / Q3_K 2 bits in runs of 32 bytes per
 * 128 elements, Q3_K's third bit in hmask[e % 32].
 */
static void set_code(enum qf_ggml_type t, uint8_t *y, int e, int k)
{
	int h = e / 128, r = e % 128, qd = r / 32, i = r % 32;

	switch (t) {
	case QF_GGML_Q4_K:
	case QF_GGML_Q5_K:
		put_bits(y + (t == QF_GGML_Q5_K ? 48 : 16) + 32 * (e / 64) + i,
			 4 * ((e / 32) & 1), 4, k);
		if (t == QF_GGML_Q5_K)
			put_bits(y + 16 + i, e / 32, 1, k >> 4);
		break;
	case QF_GGML_Q6_K:
		/* ql[128] qh[64]: halves of 128; quarters of 32 in each */
		put_bits(y + 64 * h + i + 32 * (qd & 1), 4 * (qd >> 1), 4, k);
		put_bits(y + 128 + 32 * h + i, 2 * qd, 2, k >> 4);
		break;
	case QF_GGML_Q2_K:
	case QF_GGML_Q3_K:
		put_bits(y + (t == QF_GGML_Q3_K ? 32 : 16) + 32 * h + i, 2 * qd,
			 2, k);
		if (t == QF_GGML_Q3_K)
			put_bits(y + i, e / 32, 1, k >> 2);
		break;
	case QF_GGML_IQ4_NL:	/* qs [16] after d; e < 32 */
	case QF_GGML_IQ4_XS:	/* qs [16] per sub-block after 8 bytes */
		put_bits(y + (t == QF_GGML_IQ4_XS ? 8 + 16 * (e / 32) : 2) +
			 e % 16, 4 * ((e % 32) / 16), 4, k);
		break;
	default:
		break;
	}
}

/* The largest code of a k-quant, 0 for other types. */
static int code_top(enum qf_ggml_type t)
{
	switch (t) {
	case QF_GGML_Q2_K:
		return 3;
	case QF_GGML_Q3_K:
		return 7;
	case QF_GGML_Q4_K:
		return 15;
	case QF_GGML_Q5_K:
		return 31;
	case QF_GGML_Q6_K:
		return 63;
	case QF_GGML_IQ4_NL:
	case QF_GGML_IQ4_XS:
		return 15;
	default:
		return 0;
	}
}

static bool nonlinear(enum qf_ggml_type t)
{
	return t == QF_GGML_IQ4_NL || t == QF_GGML_IQ4_XS;
}

bool qf_ggml_gptq_known(enum qf_ggml_type t)
{
	return code_top(t) > 0;
}

/*
 * The grid of every element of block y (bs elements): value = a[e] *
 * code + b[e], from the dequantizer's output with all codes 0 and all
 * codes 1; the non-linear IQ4 types: a[e] * kvalues_iq4nl[code], a[e]
 * with all codes 8 (table value 1), b[e] = 0.
 */
static int block_grid(enum qf_ggml_type t, const uint8_t *y, size_t bytes,
		      int bs, float *a, float *b)
{
	uint8_t tmp[256];
	int e, k, ret = 0;

	if (nonlinear(t)) {
		memcpy(tmp, y, bytes);
		for (e = 0; e < bs; e++)
			set_code(t, tmp, e, 8);
		memset(b, 0, (size_t)bs * sizeof(*b));
		return qf_ggml_dequantize_row(t, tmp, bs, a);
	}
	for (k = 0; k < 2 && !ret; k++) {
		memcpy(tmp, y, bytes);
		for (e = 0; e < bs; e++)
			set_code(t, tmp, e, k);
		ret = qf_ggml_dequantize_row(t, tmp, bs, k ? a : b);
	}
	for (e = 0; e < bs && !ret; e++)
		a[e] -= b[e];
	return ret;
}

/* Nearest code on a * code + b, code in 0..top. */
static int nearest_code(float w, float a, float b, int top)
{
	float v = a != 0 ? (w - b) / a : 0;

	if (!(v > 0))
		return 0;
	if (v >= (float)top)
		return top;
	return (int)lrintf(v);
}

/* Code c's value on element grid (a, b). */
static float code_value(bool nl, float a, float b, int c)
{
	return nl ? a * (float)qf_ggml_iq4_values[c] : a * c + b;
}

struct sweep {
	enum qf_ggml_type t;
	float *w;			/* [out][in], updated */
	int64_t out, in;
	const float *u;			/* [in][in] upper */
	const float *imp;		/* [in] or NULL */
	uint8_t *dst;
	size_t bytes;			/* per block */
	uint64_t rb;			/* per row */
	int bs;				/* block: 256, IQ4_NL 32 */
	float *a, *b, *err;		/* [out][bs] each */
};

/*
 * IQ4_XS: row r's sub-block of columns [s + i, s + i + 32) gets the 6-bit
 * scale code (super-block d kept) of least error, weighted by the
 * importance vector, for its error-updated weights now that the sweep
 * reaches it (its code was chosen with the super-block, before the
 * columns ahead of it fed their errors in); the grid a [] follows.
 */
static void xs_refit(struct sweep *k, int64_t r, int64_t s, int i)
{
	uint8_t *y = k->dst + r * k->rb + (uint64_t)(s / k->bs) * k->bytes;
	const float *x = k->w + r * k->in + s + i;
	const float *imp = k->imp ? k->imp + s + i : NULL;
	float d = qf_f16_to_f32(qf_ggml_get16(y)), *a = k->a + r * k->bs + i;
	double best = INFINITY;
	int c, j, ib = i / 32, bc = 0;
	uint8_t l[32];

	for (c = -32; c < 32 && d != 0; c++) {
		double e = qf_ggml_iq4_recode(x, imp, d * (float)c, l);

		if (e < best) {
			best = e;
			bc = c;
		}
	}
	if (d == 0)
		return;
	put_bits(y + 4 + ib / 2, 4 * (ib % 2), 4, (bc + 32) & 15);
	put_bits(y + 2 + ib / 4, 2 * (ib % 4), 2, (bc + 32) >> 4);
	for (j = 0; j < 32; j++)
		a[j] = d * (float)bc;
}

/* One (super-)block of columns [s, s + bs): grids, sweep, lazy update. */
static int sweep_block(struct sweep *k, int64_t s)
{
	int top = code_top(k->t), bs = k->bs;
	bool nl = nonlinear(k->t);
	int64_t r, i, j;
	int ret = 0;

	for (r = 0; r < k->out && !ret; r++) {
		uint8_t *y = k->dst + r * k->rb + (uint64_t)(s / bs) *
			     k->bytes;

		ret = qf_ggml_quantize_row(k->t, k->w + r * k->in + s, bs,
					   k->imp ? k->imp + s : NULL, y);
		if (!ret)
			ret = block_grid(k->t, y, k->bytes, bs, k->a + r * bs,
					 k->b + r * bs);
	}
	for (i = 0; i < bs && !ret; i++) {
		const float *ui = k->u + (s + i) * k->in;

		if (k->t == QF_GGML_IQ4_XS && i % 32 == 0 && i > 0)
			for (r = 0; r < k->out; r++)
				xs_refit(k, r, s, (int)i);
		for (r = 0; r < k->out; r++) {
			float *wr = k->w + r * k->in;
			float a = k->a[r * bs + i], b = k->b[r * bs + i];
			int c = nl ? (a != 0 ? qf_ggml_iq4_nearest(wr[s + i] /
								  a) : 8) :
				nearest_code(wr[s + i], a, b, top);
			float e = (wr[s + i] - code_value(nl, a, b, c)) /
				  ui[s + i];

			set_code(k->t, k->dst + r * k->rb +
				 (uint64_t)(s / bs) * k->bytes, (int)i, c);
			k->err[r * bs + i] = e;
			for (j = s + i + 1; j < s + bs; j++)
				wr[j] -= e * ui[j];
		}
	}
	for (r = 0; r < k->out && !ret; r++) {
		float *wr = k->w + r * k->in;

		for (i = 0; i < bs; i++) {
			const float *ui = k->u + (s + i) * k->in;
			float e = k->err[r * bs + i];

			for (j = s + bs; j < k->in; j++)
				wr[j] -= e * ui[j];
		}
	}
	return ret;
}

int qf_ggml_gptq_quantize(enum qf_ggml_type t, float *w, int64_t out,
			  int64_t in, const float *u, const float *imp,
			  void *dst)
{
	struct sweep k = { t, w, out, in, u, imp, dst, 0, 0, 0, NULL, NULL,
			   NULL };
	int64_t s;
	int ret = 0;

	if (!code_top(t) || out <= 0 ||
	    !(k.rb = qf_ggml_row_bytes(t, in)))
		return -EINVAL;
	for (s = 0; s < in; s++)
		if (!(u[s * in + s] > 0) || !isfinite(u[s * in + s]))
			return -EINVAL;		/* not a Cholesky factor */
	k.bytes = qf_ggml_block_bytes(t);
	k.bs = (int)qf_ggml_block_size(t);
	k.a = malloc((size_t)out * (size_t)k.bs * sizeof(float));
	k.b = malloc((size_t)out * (size_t)k.bs * sizeof(float));
	k.err = malloc((size_t)out * (size_t)k.bs * sizeof(float));
	if (!k.a || !k.b || !k.err)
		ret = -ENOMEM;
	for (s = 0; s < in && !ret; s += k.bs)
		ret = sweep_block(&k, s);
	free(k.a);
	free(k.b);
	free(k.err);
	return ret;
}
