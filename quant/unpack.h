/*
 * unpack.h - decoding of packed checkpoint tensors back to integers: the
 * one place that knows how a GPTQ v1 or AutoAWQ GEMM checkpoint stores a
 * linear's grid, so the _fake variants, the GGUF repack, a resumed
 * calibration job and `quantfs eval` on a mounted variant all read one
 * decoder.
 */
#ifndef QF_UNPACK_H
#define QF_UNPACK_H

#include <stdint.h>

enum qf_ckpt_format {
	QF_CKPT_GPTQ_V1,	/* qweight, qzeros, scales, g_idx */
	QF_CKPT_AWQ_GEMM,	/* qweight, qzeros, scales */
};

/* Packed tensors of one linear in format f (g_idx last for GPTQ). */
static inline int qf_ckpt_ntensors(enum qf_ckpt_format f)
{
	return f == QF_CKPT_AWQ_GEMM ? 3 : 4;
}

/*
 * One linear's packed tensors, decoded.  packed[k] is tensor k as stored
 * (4-byte aligned copies, or aligned mapped data):
 *   GPTQ v1:  qweight [in * bits / 32, out] i32, qzeros [ng, out * bits /
 *             32] i32 holding zero - 1, scales [ng, out] f16, g_idx [in];
 *   AWQ GEMM: qweight [in, out / 8], qzeros [ng, out / 8], scales [ng,
 *             out] f16; input j is in group j / group (bits 4).
 * Out: q [out, in], sc [out, ng] (f16 bits), z [out, ng] (true zeros),
 * g_idx [in] (copied, or made for AWQ; not range-checked).
 * Returns 0 or -ENOMEM.
 */
int qf_ckpt_unpack_group(enum qf_ckpt_format f, int bits, int64_t out,
			 int64_t in, int64_t ng, int64_t group,
			 const void *const *packed, uint8_t *q, uint16_t *sc,
			 int32_t *z, int32_t *g_idx);

#endif /* QF_UNPACK_H */
