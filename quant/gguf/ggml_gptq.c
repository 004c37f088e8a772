/*
 * ggml_gptq.c - GPTQ's error feedback on llama.cpp's own k-quant grids
 * (Q4_K, Q6_K), the encoder issue #24 asks of the kq views: GPTQ on the
 * Q4_0 grid was 2.2x better than llama.cpp's best Q4_0, while kq4_k_m,
 * rounding each weight to nearest, only tied llama.cpp's Q4_K_M.
 *
 * The sweep goes over the columns one super-block (256) at a time.  When
 * it reaches a super-block, each row's grid is chosen from the row's
 * current, error-updated weights by the same fit as the plain encoder
 * (qf_ggml_quantize_row with the importance vector: fp16 d and dmin, the
 * 6-bit sub-block scales and mins for Q4_K; d and int8 scales for Q6_K).
 * Then the block's columns are rounded to nearest on that grid in order,
 * each column's error divided by U_ii fed back into the columns after it
 * through U's row i (U upper with H^-1 = U^T U, the caller's Cholesky of
 * the damped inverse Hessian, as GPTQ), inside the block column by
 * column and into the later columns once per block (the lazy update).
 * The grid of an element is read back from the plain encoder's bytes by
 * decoding them with every code 0 and every code 1 (ggml's dequantizer:
 * value = a * code + b per element), so no block layout is restated here
 * but where the codes sit.
 *
 * Plain loops, no BLAS (the gguf part may not use it: doc/architecture.
 * json): O(out * in^2) per matrix, seconds for the 5M model's linears.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

#define QK_K 256

/* Code k of element e in block y: Q4_K nibbles, Q6_K 4 + 2 bits. */
static void set_code(enum qf_ggml_type t, uint8_t *y, int e, int k)
{
	if (t == QF_GGML_Q4_K) {
		/* 64 elements per 32 bytes: the first 32 low nibbles */
		uint8_t *q = y + 16 + 32 * (e / 64) + e % 32;
		int sh = 4 * ((e / 32) & 1);

		*q = (uint8_t)((*q & ~(0xf << sh)) | (k & 0xf) << sh);
	} else {
		/* ql[128] qh[64]: halves of 128; quarters of 32 in each */
		int h = e / 128, r = e % 128, qd = r / 32, i = r % 32;
		uint8_t *ql = y + 64 * h + i + 32 * (qd & 1);
		uint8_t *qh = y + 128 + 32 * h + i;
		int sl = 4 * (qd >> 1), sh = 2 * qd;

		*ql = (uint8_t)((*ql & ~(0xf << sl)) | (k & 0xf) << sl);
		*qh = (uint8_t)((*qh & ~(3 << sh)) | ((k >> 4) & 3) << sh);
	}
}

/*
 * The grid of every element of block y: value = a[e] * code + b[e],
 * from the dequantizer's output with all codes 0 and all codes 1.
 */
static int block_grid(enum qf_ggml_type t, const uint8_t *y, size_t bytes,
		      float *a, float *b)
{
	uint8_t tmp[256];
	int e, k, ret = 0;

	for (k = 0; k < 2 && !ret; k++) {
		memcpy(tmp, y, bytes);
		for (e = 0; e < QK_K; e++)
			set_code(t, tmp, e, k);
		ret = qf_ggml_dequantize_row(t, tmp, QK_K, k ? a : b);
	}
	for (e = 0; e < QK_K && !ret; e++)
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

struct sweep {
	enum qf_ggml_type t;
	float *w;			/* [out][in], updated */
	int64_t out, in;
	const float *u;			/* [in][in] upper */
	const float *imp;		/* [in] or NULL */
	uint8_t *dst;
	size_t bytes;			/* per block */
	uint64_t rb;			/* per row */
	float *a, *b, *err;		/* [out][256] each */
};

/* One super-block of columns [s, s + 256): grids, sweep, lazy update. */
static int sweep_block(struct sweep *k, int64_t s)
{
	int top = k->t == QF_GGML_Q4_K ? 15 : 63;
	int64_t r, i, j;
	int ret = 0;

	for (r = 0; r < k->out && !ret; r++) {
		uint8_t *y = k->dst + r * k->rb + (uint64_t)(s / QK_K) *
			     k->bytes;

		ret = qf_ggml_quantize_row(k->t, k->w + r * k->in + s, QK_K,
					   k->imp ? k->imp + s : NULL, y);
		if (!ret)
			ret = block_grid(k->t, y, k->bytes, k->a + r * QK_K,
					 k->b + r * QK_K);
	}
	for (i = 0; i < QK_K && !ret; i++) {
		const float *ui = k->u + (s + i) * k->in;

		for (r = 0; r < k->out; r++) {
			float *wr = k->w + r * k->in;
			float a = k->a[r * QK_K + i], b = k->b[r * QK_K + i];
			int c = nearest_code(wr[s + i], a, b, top);
			float e = (wr[s + i] - (a * c + b)) / ui[s + i];

			set_code(k->t, k->dst + r * k->rb +
				 (uint64_t)(s / QK_K) * k->bytes, (int)i, c);
			k->err[r * QK_K + i] = e;
			for (j = s + i + 1; j < s + QK_K; j++)
				wr[j] -= e * ui[j];
		}
	}
	for (r = 0; r < k->out && !ret; r++) {
		float *wr = k->w + r * k->in;

		for (i = 0; i < QK_K; i++) {
			const float *ui = k->u + (s + i) * k->in;
			float e = k->err[r * QK_K + i];

			for (j = s + QK_K; j < k->in; j++)
				wr[j] -= e * ui[j];
		}
	}
	return ret;
}

int qf_ggml_gptq_quantize(enum qf_ggml_type t, float *w, int64_t out,
			  int64_t in, const float *u, const float *imp,
			  void *dst)
{
	struct sweep k = { t, w, out, in, u, imp, dst, 0, 0, NULL, NULL,
			   NULL };
	int64_t s;
	int ret = 0;

	if ((t != QF_GGML_Q4_K && t != QF_GGML_Q6_K) || out <= 0 ||
	    !(k.rb = qf_ggml_row_bytes(t, in)))
		return -EINVAL;
	for (s = 0; s < in; s++)
		if (!(u[s * in + s] > 0) || !isfinite(u[s * in + s]))
			return -EINVAL;		/* not a Cholesky factor */
	k.bytes = qf_ggml_block_bytes(t);
	k.a = malloc((size_t)out * QK_K * sizeof(float));
	k.b = malloc((size_t)out * QK_K * sizeof(float));
	k.err = malloc((size_t)out * QK_K * sizeof(float));
	if (!k.a || !k.b || !k.err)
		ret = -ENOMEM;
	for (s = 0; s < in && !ret; s += QK_K)
		ret = sweep_block(&k, s);
	free(k.a);
	free(k.b);
	free(k.err);
	return ret;
}
