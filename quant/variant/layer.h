/*
 * layer.h - one decoder layer through its calibrated method: GPTQ (one
 * linear at a time, true sequential), AWQ (the whole layer), BRECQ (the
 * block's learned rounding) and the k-quant importance matrix.  Each
 * call takes the layer's weights and its inputs' statistics and gives
 * the packed checkpoint tensors of the variant groups its linears map
 * to, with their losses against round to nearest at the same grid.
 *
 * No cache and no file system here: fs/job_layer.c drives the calls from
 * the calibration driver (calib.c), commits what they leave in a struct
 * qf_layer_res and replays committed layers.  The packed bytes depend on
 * the BLAS thread count (OpenBLAS partitions work statically), so a
 * producer fixes it once with qf_backend_set_threads().
 */
#ifndef QF_LAYER_H
#define QF_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "brecq.h"
#include "variant.h"

/*
 * What the layers of one variant produce, per variant group gi (v->g[];
 * the groups of a layer are written by its call, the rest untouched).
 */
struct qf_layer_res {
	void **pending;		/* [ng][4]: gi's packed tensors in v->t
				 * order (qf_variant_emit), malloc'd; the
				 * caller commits and frees them */
	double *loss;		/* [ng]: relative output error, method */
	double *loss_rtn;	/* [ng]: the same, round to nearest */
	double *alpha;		/* [ng]: AWQ scale exponent, else -1 */
	double *score;		/* [ng][2]: AWQ ReFlip attention-score
				 * error before / after (q_proj), else -1 */
	/* where GPTQ's time goes, accumulated over the layers */
	struct qf_gptq_times gt;
	double compare_s;	/* RTN and the output errors */
	double pack_s;		/* packing into checkpoint tensors */
	struct qf_awq_times at;	/* AWQ's, the same way (dense layers) */
	float *awq_s_down;	/* AWQ down first: down's scales from its
				 * call to the rest's (qf_layer_awq) */
};

/* The arrays for ng groups (ng 0 counts as 1).  0 or -ENOMEM (then
 * nothing is left to free). */
int qf_layer_res_init(struct qf_layer_res *r, size_t ng);
/* Frees the arrays and any pending tensors; NULL arrays are fine. */
void qf_layer_res_free(struct qf_layer_res *r, size_t ng);

/*
 * The layer's map into the variant: v, and lin_group[k] the group of its
 * linear k (QF_TF_NLINEAR entries; -1: kept in the source dtype).  A
 * fused checkpoint tensor (phi3's qkv_proj, gate_up_proj) is one group,
 * mapped at its first linear; the linears after it map to -1 and are
 * quantized as row blocks of that group (qf_tf_linear_tensor): GPTQ
 * takes the whole tensor at once (its rows only share the Hessian),
 * AWQ and BRECQ quantize its linears and stack their codes.
 */
struct qf_layer_map {
	const struct qf_variant *v;
	const int *lin_group;
	/* a layer with a sparse MoE block (BRECQ; NULL: experts kept):
	 * expert e's linear k's group at e * QF_MOE_NLINEAR + k (-1: kept),
	 * and (may be NULL) [ng] each group's routed tokens, written */
	const int *exp_group;
	double *tokens;
};

/*
 * GPTQ of the n linears lin[] of ly, in order, each on its inputs' Gram
 * matrix stats[lin[i]].h (changed: damped).  ly->w[lin[i]] is left
 * holding the dequantized weight (what the next linears see); the RTN
 * baseline at the same grid is measured for loss_rtn.  alpha and score
 * are -1.  Down alone (true sequential's last stage): gate and up, when
 * quantized, are not held in fp32 meanwhile (made again from their
 * packed tensors after it), and stats[QF_TF_DOWN] is freed.  Returns 0,
 * QF_ENUMERIC, QF_ECORRUPT (gate/up not made again as they were: a bug),
 * -ENOMEM.
 */
int qf_layer_gptq(const struct qf_layer_map *m, struct qf_tf_layer *ly,
		  const enum qf_tf_linear *lin, int n,
		  struct qf_lin_stats *stats, struct qf_layer_res *r);

/* The weights w [out, in] that GPTQ left for group gi's codes q [out,
 * in], sc [out, ng] (f16 bits), z [out, ng], g_idx [in]. */
void qf_layer_dequant(const struct qf_vgroup *g, const uint8_t *q,
		      const uint16_t *sc, const int32_t *z,
		      const int32_t *gidx, float *w);

/*
 * GPTQ of one linear w [out, in] of group gi (an expert's, which has no
 * place in a layer map) on st->h (damped); -1: kept, nothing done.  As
 * qf_layer_gptq for each of its linears.
 */
int qf_layer_gptq_one(const struct qf_variant *v, int gi, float *w,
		      struct qf_lin_stats *st, struct qf_layer_res *r);

/*
 * GPTQ of the quantized lm_head (v->head >= 0, _head<h>) on the Hessian
 * of its inputs: the final norm (model.norm) applied to x [ntok, hidden],
 * the last decoder layer's output on the calibration tokens as the
 * quantized model computes it.  GPTQ and BRECQ (whose head is GPTQ's,
 * not learned rounding) call it after the last layer; AWQ's head takes
 * AWQ's scales on the same inputs, folded into model.norm, the group's
 * last tensor (layer_head.c).  The group's
 * tensors and losses into r.  Returns 0, QF_EFORMAT (no final norm),
 * QF_ENUMERIC, -EINVAL (AWQ: no norm in the group), -ENOMEM.
 */
int qf_layer_head(const struct qf_variant *v, const struct qf_tf_config *c,
		  const float *x, int64_t ntok, struct qf_layer_res *r);

/* ReFlip's effect on the layer, for the caller's log. */
struct qf_layer_reflip {
	bool on;		/* the variant asked for ReFlip */
	double before;		/* relative attention-score error */
	double after;
	int64_t flips;
};

/*
 * AWQ of the layer (awq_layer.c) with the variant's bits, group and
 * flags (L2 salience, ReFlip): scales folded into ly's norms, which are
 * stored in their tensors' dtype and read back, so the layer goes on
 * with the norms as a loader (and a resumed job) sees them.  stats are
 * transformed in place.  lin[0..n): the seven linears, or (calib.c's
 * down first) down alone, then the six others, its scales for up's rows
 * carried in r between the two calls.  Returns 0, QF_ENUMERIC, -EINVAL,
 * -ENOMEM.
 */
int qf_layer_awq(const struct qf_layer_map *m, const struct qf_tf_config *c,
		 struct qf_tf_layer *ly, const enum qf_tf_linear *lin, int n,
		 struct qf_lin_stats *stats, struct qf_layer_res *r,
		 struct qf_layer_reflip *rf);

/*
 * Group gi's packed tensors from codes q [out, in], sc / z [out,
 * ngroups] (consecutive column groups), allocated into r->pending (its
 * last tensor allocated, not written: an AWQ group's norm or router).
 * Returns 0 or -ENOMEM.
 */
int qf_layer_emit(const struct qf_variant *v, int gi, const uint8_t *q,
		  const uint16_t *sc, const int32_t *z, struct qf_layer_res *r);

/*
 * x (t's elements, fp32) into dst in t's dtype, less shift (gemma's
 * norms are stored as w for 1 + w); x then holds the stored values,
 * plus shift: what a loader computes with.
 */
void qf_layer_store(const struct qf_vtensor *t, float *x, float shift,
		    void *dst);

/*
 * AWQ of layer l's sparse MoE block (layer_moe.c), after qf_layer_awq
 * of the rest: one gate/up input scale for every expert searched on the
 * block's output over xn [ntok, hidden] (the post-attention norm's
 * output of the layer as it was), folded into ly->post_norm and the
 * columns of every gate/up, the router and the shared expert gate, which
 * are stored in their dtype (the last tensors of expert 0's gate, up
 * and down groups) and read back; then per expert, on its routed tokens
 * (every token below a linear's input width), its down scale folded into
 * its up rows, and its linears clipped, rounded and flipped into their
 * groups.  groups [nw * QF_MOE_NLINEAR]: expert e's linear k's group
 * (-1: kept).  tokens [ng] (may be NULL): each group's routed tokens.
 * Returns 0, QF_ENUMERIC, -EINVAL, -ENOMEM.
 */
int qf_layer_awq_moe(const struct qf_variant *v, const struct qf_tf_config *c,
		     int l, const int *groups, struct qf_tf_layer *ly,
		     const float *xn, int64_t ntok, struct qf_layer_res *r,
		     double *tokens);

/* What qf_layer_awq_moe stores last in expert 0's group of linear k
 * (post_norm, router, shared gate) in ly, in fp32; NULL: none. */
float *qf_layer_awq_moe_extra(struct qf_tf_layer *ly, enum qf_moe_linear k);

/* BRECQ's effect on the block, for the caller's log. */
struct qf_layer_brecq {
	double rel_rtn;		/* block output error / mean y^2, RTN */
	double rel_final;	/* the same, learned rounding */
	int iters;		/* Adam steps run */
	double seconds;
	double step_seconds;	/* of it, in the Adam steps */
	int64_t spilled;	/* bytes of its state in a file */
};

/*
 * BRECQ of block l (brecq.c): learned rounding of its linears against
 * the full-precision output y on the quantized model's input x, both
 * [nseq * seqlen, hidden], in memory or in files.  o gives the schedule;
 * its qp[] are set here from the variant (16 for linears kept).  Every
 * linear of the block gets the block's relative output error as its
 * loss.  Returns 0, what o->progress returned, QF_ENUMERIC, -ENOMEM,
 * -errno (a file).
 */
int qf_layer_brecq(const struct qf_layer_map *m, const struct qf_tf_config *c,
		   int l, struct qf_tf_layer *ly, const struct qf_tf_seqs *x,
		   const struct qf_tf_seqs *y, int nseq, int seqlen,
		   struct qf_brecq_opts *o, struct qf_layer_res *r,
		   struct qf_layer_brecq *info);

/*
 * The head's Hessian: X^T X [hidden, hidden] of the final norm's outputs
 * over x [ntok, hidden] (the last layer's), into *h (malloc'd, the
 * caller's).  For the k-quant views' GPTQ of output.weight.  Returns 0,
 * QF_EFORMAT (no model.norm.weight of that width), -ENOMEM.
 */
int qf_layer_head_hessian(const struct qf_model *m,
			  const struct qf_tf_config *c, const float *x,
			  int64_t ntok, float **h);

/*
 * The k-quant importance matrix of the n linears lin[] (whole layer):
 * mean x^2 per input channel, as llama.cpp's imatrix tool collects it,
 * concatenated into imat (qf_kq_imatrix_len floats per layer).
 */
void qf_layer_imatrix(const enum qf_tf_linear *lin, int n,
		      const struct qf_lin_stats *stats, float *imat);

#endif
