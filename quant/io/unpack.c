/*
 * unpack.c - packed checkpoint tensors back to the integer grid (see
 * unpack.h).  GPTQ's "gptq" (v1) format stores each zero minus one, with
 * the wrap-around of the packed width: zero = (stored + 1) & mask.
 */
#include <stdlib.h>
#include <string.h>

#include "io.h"

static int unpack_gptq(int bits, int64_t out, int64_t in, int64_t ng,
		       const void *const *packed, uint8_t *q, uint16_t *sc,
		       int32_t *z, int32_t *g_idx)
{
	const uint32_t *qz = packed[1];
	const uint16_t *s = packed[2];
	int64_t cols = out * bits / 32, r, j;
	int32_t mask = (1 << bits) - 1;
	uint8_t *zq = malloc((size_t)(out * ng));

	if (!zq)
		return -ENOMEM;
	qf_gptq_unpack_qweight(packed[0], out, in, bits, q);
	/* a qzeros row is one contiguous little-endian stream */
	for (j = 0; j < ng; j++)
		qf_gptq_unpack_qweight(qz + j * cols, 1, out, bits,
				       zq + j * out);
	for (r = 0; r < out; r++)
		for (j = 0; j < ng; j++) {
			sc[r * ng + j] = s[j * out + r];
			z[r * ng + j] = (zq[j * out + r] + 1) & mask;
		}
	memcpy(g_idx, packed[3], (size_t)in * sizeof(*g_idx));
	free(zq);
	return 0;
}

int qf_ckpt_unpack_group(enum qf_ckpt_format f, int bits, int64_t out,
			 int64_t in, int64_t ng, int64_t group,
			 const void *const *packed, uint8_t *q, uint16_t *sc,
			 int32_t *z, int32_t *g_idx)
{
	int64_t gs = ng == 1 ? in : group, j;

	if (f == QF_CKPT_GPTQ_V1)
		return unpack_gptq(bits, out, in, ng, packed, q, sc, z, g_idx);
	qf_awq_unpack(packed[0], packed[1], packed[2], out, in, ng, q, sc, z);
	for (j = 0; j < in; j++)
		g_idx[j] = (int32_t)(j / gs);
	return 0;
}
