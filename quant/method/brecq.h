/*
 * brecq.h - BRECQ (Li et al. 2021, "BRECQ: Pushing the Limit of
 * Post-Training Quantization by Block Reconstruction"), weight-only, one
 * decoder block at a time: the rounding of every quantized linear of the
 * block is learned with AdaRound (Nagel et al. 2020) against the
 * full-precision block's output.
 *
 * The grid is RTN's (qf_rtn_grid of each group's min/max: the same fp16
 * scales and zeros qf_rtn_quantize gives); only the choice between
 * rounding down and up is learned.  Norms and biases are unchanged.
 */
#ifndef QF_BRECQ_H
#define QF_BRECQ_H

#include <stdbool.h>
#include <stdint.h>

#include "method.h"

/* AdaRound's rectified sigmoid h(V) = clip(sigmoid(V) (zeta - gamma) +
 * gamma, 0, 1). */
#define QF_ADAROUND_ZETA 1.1f
#define QF_ADAROUND_GAMMA (-0.1f)

/*
 * The AdaRound state of one linear w (out, in) on the RTN grid of qp.
 * Soft weights: W~ = s (clamp(floor(w / s) + z + h(V), 0, maxq) - z).
 */
struct qf_adaround {
	int64_t out;
	int64_t in;
	int64_t ngroups;	/* qf_ngroups(in, group) */
	int64_t gs;		/* columns per group */
	int bits;
	float *base;		/* (out, in) floor(w / s) + z */
	float *v;		/* (out, in) rounding variables V */
	float *m1;		/* (out, in) Adam first moment */
	float *m2;		/* (out, in) Adam second moment */
	float *sc;		/* (out, ngroups) scales, f32 of sc16 */
	uint16_t *sc16;		/* (out, ngroups) fp16 scales */
	int32_t *zero;		/* (out, ngroups) */
};

/*
 * Grid and V of w (out, in): V is initialised so that h(V) = frac(w / s)
 * (V = -log((zeta - gamma) / (frac - gamma) - 1)), i.e. W~ = the clamped
 * w at init, and its hard rounding is RTN's (exact ties start at
 * V = -1e-6 or 1e-6 as RTN rounds them to even, not at V = 0).
 * Caller owns a; free with qf_adaround_free() (NULL ok).
 * Returns 0, -EINVAL (bits not 2..8), QF_ENUMERIC (a scale does not fit
 * fp16), -ENOMEM.
 */
int qf_adaround_init(struct qf_adaround *a, const float *w, int64_t out,
		     int64_t in, const struct qf_qparams *qp);
void qf_adaround_free(struct qf_adaround *a);

/* W~ (out, in): the soft-quantized weights of the current V. */
void qf_adaround_soft(const struct qf_adaround *a, float *w);

/*
 * Hard rounding: up where h(V) >= 0.5 (V >= 0), q = clamp(base + up, 0,
 * maxq) into q (out, in) when non-NULL, and the dequantized weights
 * s (q - z) into w (out, in) when non-NULL.  With nearest set, rounds to
 * nearest instead (RTN on the same grid, ties to even: qf_rtn_quantize's
 * codes).
 */
void qf_adaround_hard(const struct qf_adaround *a, const float *w_fp,
		      bool nearest, uint8_t *q, float *w);

/*
 * Gradient of the loss with respect to V: gv (out, in) = dw * s h'(V),
 * zero where the soft code is clamped or h saturates; plus, when
 * reg > 0, the regularizer's reg * d/dV sum(1 - |2 h(V) - 1|^beta).
 * Returns the regularizer's value reg * sum(1 - |2 h - 1|^beta) (0 when
 * reg is 0).  gv may equal dw.
 */
double qf_adaround_grad(const struct qf_adaround *a, const float *dw,
			float reg, float beta, float *gv);

/*
 * One Adam step on V with gradient gv (beta1 0.9, beta2 0.999,
 * eps 1e-8); step t counts from 1 (bias correction).
 */
void qf_adaround_adam(struct qf_adaround *a, const float *gv, float lr,
		      int t);

/* ------------------------------------------------------------------ */
/* block reconstruction                                               */

/*
 * A sparse MoE block's experts (ly->moe): each array [nw *
 * QF_MOE_NLINEAR], laid out as the block's weights (expert e's linear k
 * at e * QF_MOE_NLINEAR + k; e == experts: Qwen2-MoE's shared one).
 * The routing is fixed at the start from the block's input x with the
 * router in source precision, and held constant in the backward (a
 * straight-through estimate: tf_moe.h).  An expert no calibration token
 * is routed to has no reconstruction signal: it keeps round-to-nearest
 * on its grid.
 */
struct qf_brecq_experts {
	const struct qf_qparams *qp;	/* bits 16: kept in fp */
	uint8_t **q;			/* out: codes (out, in); entries or
					 * the arrays may be NULL */
	uint16_t **scale_f16;		/* out: (out, ngroups) */
	int32_t **zero;			/* out: (out, ngroups) */
	int64_t *tokens;		/* out [nw]: tokens routed (the
					 * shared expert: all); may be NULL */
};

struct qf_brecq_opts {
	/* per linear: bits 2..8, group, sym; bits 16 = kept in fp (a
	 * MoE block's gate/up/down: 16, its experts are in moe) */
	struct qf_qparams qp[QF_TF_NLINEAR];
	struct qf_brecq_experts *moe;	/* MoE block; NULL: experts kept */
	/*
	 * Adam steps per block, 200 by default: sized for a 2-core CPU,
	 * where a step of 2 x 512 tokens takes about 0.11 s at hidden 256
	 * (the 5M model) and 1.7 s at Qwen3-0.6B's shapes.  The references
	 * run 10000 (AdaRound) to 20000 (BRECQ) on a GPU.
	 */
	int iters;
	/* whole sequences per mini-batch (attention needs them), 2 */
	int batch_seqs;
	/*
	 * Adam learning rate of V, 1e-2.  The references use 1e-3 over
	 * 10000+ steps; in 200 steps at 1e-2 V moves by at most about 2,
	 * enough to flip a rounding (h(V) spans [0, 1] for |V| < 2.4) but
	 * not always to drive h(V) to 0 or 1 before the hard rounding.
	 */
	float lr;
	float reg;		/* rounding regularizer weight lambda, 0.01 */
	float beta_hi;		/* beta annealed from 20 ... */
	float beta_lo;		/*  ... to 2 (>= 1), linearly */
	float warmup;		/* share of steps without reg, 0.2 */
	uint64_t seed;		/* mini-batch sampling (splitmix64), 0 */
	/* optional: called every `every` steps and after the last one;
	 * a non-zero return stops the reconstruction with that value */
	int (*progress)(void *arg, int iter, int iters, double rec_loss,
			double reg_loss);
	void *arg;
	int every;		/* 0: at the end only */
};

/* The defaults above; qp[] all 4 bits, group 128, asymmetric. */
void qf_brecq_opts_default(struct qf_brecq_opts *o);

struct qf_brecq_result {
	double mse_rtn;		/* calibration set, nearest rounding */
	double mse_final;	/* calibration set, learned rounding */
	double norm;		/* loss normalizer sigma^2 (see below) */
	int iters;		/* Adam steps run */
	double seconds;		/* wall time */
};

/*
 * Reconstruct block `layer`.  ly holds fp32 weights on entry and, on
 * return, the fake-quantized (dequantized, learned rounding) weights of
 * every quantized linear; norms and biases are untouched.  For each
 * quantized linear l the caller's buffers q[l] (out, in),
 * scale_f16[l] (out, ngroups) and zero[l] (out, ngroups) receive the
 * codes and grid; they may be NULL for bits 16 (and q, scale_f16, zero
 * themselves NULL when only the fake-quantized weights are wanted).
 *
 * x: the block's input as the already quantized previous blocks produce
 * it (nseq * seqlen, hidden); y: the full-precision block's output
 * (nseq * seqlen, hidden), the target.
 *
 * Loss of a mini-batch of B sequences (T = B * seqlen tokens):
 *   rec = (1 / T) sum_t ||yhat_t - y_t||^2 / sigma^2
 *   reg = lambda sum over all V of the block (1 - |2 h(V) - 1|^beta)
 * rec is the references' (BRECQ's lp_loss, AIMET's AdaRound: squared
 * error summed over channels, averaged over tokens) divided by sigma^2,
 * the mean square of the block's update y - x over the calibration set,
 * so that the output reads in units of a unit-variance update as the
 * batch-normalised CNN blocks for which lambda = 0.01 was tuned, and is
 * independent of the residual stream's scale.  reg is off for the first
 * warmup * iters steps; then beta falls linearly from beta_hi to beta_lo.
 *
 * res->mse_*: mean over all elements of (yhat - y)^2 on the whole set,
 * forward only (qf_tf_layer_forward in chunks).  Memory: the activations
 * of one mini-batch, 6 floats per weight of the quantized linears.
 * Returns 0, -EINVAL (bad shapes or options), QF_ENUMERIC (grid, or a
 * non-finite loss), -ENOMEM, or the progress callback's non-zero value;
 * on failure ly's weights are unchanged.
 */
int qf_brecq_block(const struct qf_tf_config *c, int layer,
		   struct qf_tf_layer *ly, const float *x, const float *y,
		   int nseq, int seqlen, const struct qf_brecq_opts *o,
		   uint8_t *q[QF_TF_NLINEAR],
		   uint16_t *scale_f16[QF_TF_NLINEAR],
		   int32_t *zero[QF_TF_NLINEAR],
		   struct qf_brecq_result *res);

#endif /* QF_BRECQ_H */
