/*
 * pack_gptq.c - the GPTQ checkpoint ("gptq", v1) bit packing.
 *
 * Layout verified against AutoGPTQ auto_gptq/nn_modules/qlinear/
 * qlinear_cuda_old.py (QuantLinear.pack and the dequantizing forward):
 * qweight is [in * bits / 32, out], packed along the input dimension, a
 * little-endian bit stream within each word; qzeros is [groups, out * bits
 * / 32] packed the same way along the output dimension and stores
 * zero - 1.  Three bits pack 32 values into 3 words, value 10 and 21
 * straddling word boundaries (see pack3 below).
 */
#include <string.h>

#include "io.h"

int qf_pack_bits(int bits)
{
	return bits == 2 || bits == 3 || bits == 4 ? bits : 8;
}

bool qf_gptq_packable(int bits, int64_t in, int64_t out)
{
	int64_t m = bits == 3 ? 32 : 32 / bits;

	if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
		return false;
	return in > 0 && out > 0 && in % m == 0 && out % m == 0;
}

/* 32 three-bit values into 3 words, AutoGPTQ order. */
static void pack3(const uint32_t v[32], uint32_t w[3])
{
	int j;

	w[0] = w[1] = w[2] = 0;
	for (j = 0; j < 10; j++)
		w[0] |= v[j] << (3 * j);
	w[0] |= v[10] << 30;
	w[1] |= (v[10] >> 2) & 1;
	for (j = 0; j < 10; j++)
		w[1] |= v[11 + j] << (3 * j + 1);
	w[1] |= v[21] << 31;
	w[2] |= (v[21] >> 1) & 3;
	for (j = 0; j < 10; j++)
		w[2] |= v[22 + j] << (3 * j + 2);
}

static void unpack3(const uint32_t w[3], uint32_t v[32])
{
	int j;

	for (j = 0; j < 10; j++)
		v[j] = (w[0] >> (3 * j)) & 7;
	v[10] = ((w[0] >> 30) & 3) | ((w[1] & 1) << 2);
	for (j = 0; j < 10; j++)
		v[11 + j] = (w[1] >> (3 * j + 1)) & 7;
	v[21] = ((w[1] >> 31) & 1) | ((w[2] & 3) << 1);
	for (j = 0; j < 10; j++)
		v[22 + j] = (w[2] >> (3 * j + 2)) & 7;
}

void qf_gptq_pack_qweight(const uint8_t *q, int64_t out, int64_t in,
			  int bits, uint32_t *qweight)
{
	qf_gptq_pack_qweight_rows(q, 0, out, out, in, bits, qweight);
}

QF_HOT void qf_gptq_pack_qweight_rows(const uint8_t *q, int64_t r0,
				      int64_t nrows, int64_t out, int64_t in,
				      int bits, uint32_t *qweight)
{
	int64_t r, k, j;

	if (bits == 3) {
		for (r = r0; r < r0 + nrows; r++)
			for (k = 0; k < in / 32; k++) {
				uint32_t v[32], w[3];

				for (j = 0; j < 32; j++)
					v[j] = q[(r - r0) * in + 32 * k + j];
				pack3(v, w);
				for (j = 0; j < 3; j++)
					qweight[(3 * k + j) * out + r] = w[j];
			}
		return;
	}
	if (bits == 4) {
		/*
		 * 8 bytes -> 8 nibbles, little-endian, in 3 steps; 16 rows
		 * at a time, so each store fills a whole cache line of
		 * qweight's row instead of 16 lines a word each
		 */
		int64_t rb, nr;

		for (rb = r0; rb < r0 + nrows; rb += 16) {
			nr = r0 + nrows - rb < 16 ? r0 + nrows - rb : 16;
			for (k = 0; k < in / 8; k++)
				for (r = rb; r < rb + nr; r++) {
					const uint8_t *qr = q + (r - r0) * in;
					uint64_t x;

					memcpy(&x, qr + 8 * k, 8);
					x = (x | (x >> 4)) & 0x00ff00ff00ff00ffULL;
					x = (x | (x >> 8)) & 0x0000ffff0000ffffULL;
					x = (x | (x >> 16)) & 0xffffffffULL;
					qweight[k * out + r] = (uint32_t)x;
				}
		}
		return;
	}
	for (r = r0; r < r0 + nrows; r++) {
		const uint8_t *qr = q + (r - r0) * in;
		int per = 32 / bits;

		for (k = 0; k < in / per; k++) {
			uint32_t w = 0;

			for (j = 0; j < per; j++)
				w |= (uint32_t)qr[k * per + j] << (bits * j);
			qweight[k * out + r] = w;
		}
	}
}

void qf_gptq_unpack_qweight(const uint32_t *qweight, int64_t out, int64_t in,
			    int bits, uint8_t *q)
{
	int64_t r, k, j;

	if (bits == 3) {
		for (r = 0; r < out; r++)
			for (k = 0; k < in / 32; k++) {
				uint32_t v[32], w[3];

				for (j = 0; j < 3; j++)
					w[j] = qweight[(3 * k + j) * out + r];
				unpack3(w, v);
				for (j = 0; j < 32; j++)
					q[r * in + 32 * k + j] = (uint8_t)v[j];
			}
		return;
	}
	for (r = 0; r < out; r++) {
		int per = 32 / bits;
		uint32_t mask = (1u << bits) - 1;

		if (bits == 32)
			mask = ~0u;
		for (k = 0; k < in / per; k++)
			for (j = 0; j < per; j++)
				q[r * in + k * per + j] = (uint8_t)(
					(qweight[k * out + r] >> (bits * j)) &
					mask);
	}
}

void qf_gptq_pack_qzeros(const int32_t *zero, int64_t out, int64_t ngroups,
			 int bits, uint32_t *qzeros)
{
	uint32_t mask = (1u << bits) - 1;
	int64_t cols = out * bits / 32;
	int64_t g, c, j;

	for (g = 0; g < ngroups; g++) {
		uint32_t *row = qzeros + g * cols;

		if (bits == 3) {
			for (c = 0; c < out / 32; c++) {
				uint32_t v[32];

				for (j = 0; j < 32; j++)
					v[j] = (uint32_t)(zero[(32 * c + j) *
							       ngroups + g] - 1) &
					       mask;
				pack3(v, row + 3 * c);
			}
			continue;
		}
		for (c = 0; c < cols; c++) {
			int per = 32 / bits;
			uint32_t w = 0;

			for (j = 0; j < per; j++)
				w |= ((uint32_t)(zero[(c * per + j) * ngroups +
						      g] - 1) & mask)
				     << (bits * j);
			row[c] = w;
		}
	}
}
