/*
 * pack_ct.c - compressed-tensors "pack-quantized" bit packing.
 *
 * Verified against neuralmagic/compressed-tensors (and its continuation
 * vllm-project/compressed-tensors):
 * - src/compressed_tensors/compressors/quantized_compressors/
 *   pack_quantized.py: pack_to_int32(value, num_bits, packed_dim) takes
 *   int8 signed values, adds offset = 1 << (num_bits - 1), pads the
 *   packed dimension to a multiple of pack_factor = 32 // num_bits and
 *   ORs value[..., i::pack_factor] << (num_bits * i) (newer: a reshape
 *   to [rows, words, pack_factor] and a sum of the shifted values): word
 *   c holds elements c * pack_factor + i at bit num_bits * i, low bits
 *   first, nothing straddles a word (3 bits: 10 per word, 6 bits: 5).
 *   weight_packed is packed along dim 1 ([out, ceil(in / pf)]);
 *   asymmetric group/channel zero points along dim 0
 *   (weight_zero_point [ceil(out / pf), ngroups]).  unpack_from_int32
 *   masks each field and subtracts pow(2, num_bits) // 2.
 * - src/compressed_tensors/quantization/utils/helpers.py:
 *   calculate_range gives q_min = -2^(b-1), q_max = 2^(b-1) - 1;
 *   calculate_qparams: symmetric zero point 0, asymmetric
 *   zp = round(clamp(q_min - min / scale, q_min, q_max)), signed.
 * - quantization/lifecycle/forward.py: _quantize clamps round(x / scale
 *   + zp) to [q_min, q_max]; _dequantize is (x_q - zp) * scale.
 * So with quantfs's unsigned code q = s + 2^(b-1) and unsigned zero
 * z = zp + 2^(b-1) (symmetric z = 2^(b-1) <=> zp = 0), the words hold q
 * and z unchanged, and scale * (q - z) = scale * (s - zp).
 */
#include "io.h"

bool qf_ct_packable(int bits)
{
	return bits >= 1 && bits <= 8;
}

int64_t qf_ct_words(int64_t n, int bits)
{
	int64_t per = 32 / bits;

	return (n + per - 1) / per;
}

void qf_ct_pack_weight(const uint8_t *q, int64_t out, int64_t in, int bits,
		       int32_t *packed)
{
	int64_t per = 32 / bits, nw = qf_ct_words(in, bits), r, c, k;
	uint32_t mask = (1u << bits) - 1;

	for (r = 0; r < out; r++) {
		const uint8_t *qr = q + r * in;

		for (c = 0; c < nw; c++) {
			int64_t j0 = c * per;
			int64_t j1 = j0 + per < in ? j0 + per : in;
			uint32_t w = 0;

			for (k = j0; k < j1; k++)
				w |= ((uint32_t)qr[k] & mask) <<
					(bits * (k - j0));
			packed[r * nw + c] = (int32_t)w;
		}
	}
}

void qf_ct_unpack_weight(const int32_t *packed, int64_t out, int64_t in,
			 int bits, uint8_t *q)
{
	int64_t per = 32 / bits, nw = qf_ct_words(in, bits), r, j;
	uint32_t mask = (1u << bits) - 1;

	for (r = 0; r < out; r++)
		for (j = 0; j < in; j++) {
			uint32_t w = (uint32_t)packed[r * nw + j / per];

			q[r * in + j] = (uint8_t)((w >> (bits * (j % per))) &
						  mask);
		}
}

void qf_ct_pack_zero(const int32_t *zero, int64_t out, int64_t ngroups,
		     int bits, int32_t *packed)
{
	int64_t per = 32 / bits, nw = qf_ct_words(out, bits), c, g, k;
	uint32_t mask = (1u << bits) - 1;

	for (c = 0; c < nw; c++)
		for (g = 0; g < ngroups; g++) {
			int64_t r0 = c * per;
			int64_t r1 = r0 + per < out ? r0 + per : out;
			uint32_t w = 0;

			for (k = r0; k < r1; k++)
				w |= ((uint32_t)zero[k * ngroups + g] & mask)
					<< (bits * (k - r0));
			packed[c * ngroups + g] = (int32_t)w;
		}
}

void qf_ct_unpack_zero(const int32_t *packed, int64_t out, int64_t ngroups,
		       int bits, int32_t *zero)
{
	int64_t per = 32 / bits, r, g;
	uint32_t mask = (1u << bits) - 1;

	for (r = 0; r < out; r++)
		for (g = 0; g < ngroups; g++) {
			uint32_t w = (uint32_t)packed[(r / per) * ngroups + g];

			zero[r * ngroups + g] =
				(int32_t)((w >> (bits * (r % per))) & mask);
		}
}
