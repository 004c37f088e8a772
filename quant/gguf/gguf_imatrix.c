/*
 * gguf_imatrix.c - the layout of one decoder layer's importance matrix
 * for the k-quant variants: the input channels of q, k, v, o, gate, up,
 * down in that order, then in a MoE model each expert's gate, up and
 * down (the shared expert last), from the tokens routed to it, as
 * llama.cpp's imatrix keeps per-expert statistics for ffn_*_exps
 * (written by fs/job.c, read by fs/gguf_view.c); and which linears
 * share a GPTQ factor in the same job's Q4_K / Q6_K encoder.
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

/* The input width of expert e's linear k (e == experts: the shared). */
static size_t exp_in(const struct qf_tf_config *c, int e,
		     enum qf_moe_linear k)
{
	if (k != QF_MOE_DOWN)
		return (size_t)c->hidden;
	return (size_t)(e == c->experts ? c->shared_inter : c->moe_inter);
}

size_t qf_kq_imatrix_exp_off(const struct qf_tf_config *c, int e,
			     enum qf_moe_linear k)
{
	size_t off = qf_kq_imatrix_off(c, QF_TF_NLINEAR);
	int i, j;

	for (i = 0; i <= e; i++)
		for (j = 0; j < QF_MOE_NLINEAR && (i < e || j < (int)k); j++)
			off += exp_in(c, i, (enum qf_moe_linear)j);
	return off;
}

size_t qf_kq_imatrix_len(const struct qf_tf_config *c)
{
	if (!c->moe)
		return qf_kq_imatrix_off(c, QF_TF_NLINEAR);
	return qf_kq_imatrix_exp_off(c, c->experts + (c->shared_inter > 0),
				     QF_MOE_GATE);
}

enum qf_tf_linear qf_kq_u_owner(enum qf_tf_linear lin)
{
	/* QF_TF_NLINEAR: the head's (computed with the last layer) */
	if (lin == QF_TF_K || lin == QF_TF_V)
		return QF_TF_Q;
	return lin == QF_TF_UP ? QF_TF_GATE : lin;
}
