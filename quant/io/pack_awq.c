/*
 * pack_awq.c - the AWQ GEMM checkpoint (AutoAWQ) bit packing: qweight
 * and qzeros int32 words of eight nibbles in AutoAWQ's column order, and
 * back (dequant.c reads AWQ checkpoints with it).
 */
#include "io.h"

/* ------------------------------------------------------------------ */
/* AutoAWQ GEMM packing                                               */

/* Nibble i of a packed word holds output column 8c + awq_order[i]. */
static const int awq_order[8] = { 0, 2, 4, 6, 1, 3, 5, 7 };

bool qf_awq_packable(int bits, int64_t in, int64_t out, int group)
{
	if (bits != 4 || in <= 0 || out <= 0 || out % 8)
		return false;
	return group <= 0 || group >= in || in % group == 0;
}

/* dst [cols, rows] = src [rows, cols] transposed: the fp16 scales. */
static void transpose16(const uint16_t *src, int64_t rows, int64_t cols,
			uint16_t *dst)
{
	int64_t r, c;

	for (r = 0; r < rows; r++)
		for (c = 0; c < cols; c++)
			dst[c * rows + r] = src[r * cols + c];
}

/* words [rows, cols / 8] from v, where v(row, col) = v[col * ld + row]. */
static void pack_cols(const int32_t *v32, const uint8_t *v8, int64_t ld,
		      int64_t rows, int64_t cols, uint32_t *words)
{
	int64_t r, c, i;

	for (r = 0; r < rows; r++) {
		for (c = 0; c < cols / 8; c++) {
			uint32_t wd = 0;

			for (i = 0; i < 8; i++) {
				int64_t k = (8 * c + awq_order[i]) * ld + r;
				uint32_t v = v32 ? (uint32_t)v32[k] : v8[k];

				wd |= (v & 15u) << (4 * i);
			}
			words[r * (cols / 8) + c] = wd;
		}
	}
}

void qf_awq_pack(const uint8_t *q, const uint16_t *sc16, const int32_t *zero,
		 int64_t out, int64_t in, int64_t ngroups, uint32_t *qweight,
		 uint32_t *qzeros, uint16_t *scales)
{
	pack_cols(NULL, q, in, in, out, qweight);
	pack_cols(zero, NULL, ngroups, ngroups, out, qzeros);
	transpose16(sc16, out, ngroups, scales);
}

/* Inverse of pack_cols into v(row, col) = v[col * ld + row]. */
static void unpack_cols(const uint32_t *words, int64_t ld, int64_t rows,
			int64_t cols, int32_t *v32, uint8_t *v8)
{
	int64_t r, c, i;

	for (r = 0; r < rows; r++) {
		for (c = 0; c < cols / 8; c++) {
			uint32_t wd = words[r * (cols / 8) + c];

			for (i = 0; i < 8; i++) {
				int64_t k = (8 * c + awq_order[i]) * ld + r;
				uint32_t v = (wd >> (4 * i)) & 15u;

				if (v32)
					v32[k] = (int32_t)v;
				else
					v8[k] = (uint8_t)v;
			}
		}
	}
}

void qf_awq_unpack(const uint32_t *qweight, const uint32_t *qzeros,
		   const uint16_t *scales, int64_t out, int64_t in,
		   int64_t ngroups, uint8_t *q, uint16_t *sc16, int32_t *zero)
{
	unpack_cols(qweight, in, in, out, NULL, q);
	unpack_cols(qzeros, ngroups, ngroups, out, zero, NULL);
	transpose16(scales, ngroups, out, sc16);
}
