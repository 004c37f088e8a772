/*
 * tf_moe.h - private to quant/: the sparse MoE block of the forward pass
 * (moe.c), loaded by forward.c and run by tf_kernels.c in place of the
 * MLP on the layers qf_moe_layer_sparse() names.
 */
#ifndef QF_TF_MOE_H
#define QF_TF_MOE_H

#include <stdint.h>

#include "nn.h"

/* One layer's router and experts in fp32. */
struct qf_tf_moe {
	int experts;
	int nw;			/* experts with weights: + the shared one */
	float *router;		/* [experts, hidden] */
	float *shared_gate;	/* [hidden]: Qwen2-MoE, else NULL */
	float **w;		/* [nw * QF_MOE_NLINEAR]: expert e's linear
				 * k at e * QF_MOE_NLINEAR + k, [out, in] as
				 * nn.Linear; e == experts: the shared one */
};

/* Layer l's block (names from c->moe); free with qf_tf_moe_free(). */
int qf_tf_moe_load(const struct qf_model *m, const struct qf_tf_config *c,
		   int l, struct qf_tf_moe **out);
void qf_tf_moe_free(struct qf_tf_moe *moe);

/*
 * The routing of ntok normed rows xn [ntok, hidden]: sel [ntok, topk]
 * the experts (largest probability first), p [ntok, topk] their weights.
 * Returns 0 or -ENOMEM.
 */
int qf_tf_moe_route(const struct qf_tf_config *c, const struct qf_tf_moe *moe,
		    const float *xn, int64_t ntok, int32_t *sel, float *p);

/*
 * x [ntok, hidden] += the block's output for the normed rows xn [ntok,
 * hidden].  hook (may be NULL) sees each expert's gathered inputs before
 * its gate/up (k QF_MOE_GATE) and its down projection, also with 0 rows;
 * then the shared expert's (e == experts) with every row.
 * Returns 0, -ENOMEM or the hook's value.
 */
int qf_tf_moe_forward(const struct qf_tf_config *c,
		      const struct qf_tf_moe *moe, int layer, const float *xn,
		      int64_t ntok, float *x, qf_tf_expert_hook hook,
		      void *arg);

/*
 * BRECQ (brecq.c) holds the routing fixed: the same block with sel / p
 * [ntok, topk] given (as qf_tf_moe_route computed them) instead of
 * computed from xn.  Returns 0 or -ENOMEM.
 */
int qf_tf_moe_forward_routed(const struct qf_tf_config *c,
			     const struct qf_tf_moe *moe, const float *xn,
			     int64_t ntok, const int32_t *sel, const float *p,
			     float *x);

/*
 * Its backward (moe_bwd.c) with the routing sel / p held constant (a
 * straight-through estimate: no gradient reaches the router, which stays
 * in source precision).  dy [ntok, hidden]: dL/d(block output).  dw
 * (may be NULL) [nw * QF_MOE_NLINEAR], laid out as moe->w: dL/dW of each
 * expert's linear, NULL entries skipped, zeros for an expert routed no
 * token.  dxn (may be NULL) [ntok, hidden]: dL/dxn.  Returns 0 or
 * -ENOMEM.
 */
int qf_tf_moe_backward(const struct qf_tf_config *c,
		       const struct qf_tf_moe *moe, const float *xn,
		       int64_t ntok, const int32_t *sel, const float *p,
		       const float *dy, float *const *dw, float *dxn);

#endif /* QF_TF_MOE_H */
