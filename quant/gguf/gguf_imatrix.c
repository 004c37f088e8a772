/*
 * gguf_imatrix.c - the layout of one decoder layer's importance matrix
 * for the k-quant variants: the input channels of q, k, v, o, gate, up,
 * down in that order (written by fs/job.c, read by fs/gguf_view.c).
 */
#include "gguf.h"

size_t qf_kq_imatrix_off(const struct qf_tf_config *c, enum qf_tf_linear lin)
{
	size_t off = 0;
	int k;

	for (k = 0; k < (int)lin; k++)
		off += (size_t)qf_tf_linear_in(c, (enum qf_tf_linear)k);
	return off;
}

size_t qf_kq_imatrix_len(const struct qf_tf_config *c)
{
	return qf_kq_imatrix_off(c, QF_TF_NLINEAR);
}
