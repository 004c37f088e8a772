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
	/*
	 * (out, in) floor(w / s) + z, exact (every use clamps base + h(V)
	 * to [0, maxq], so a base below -2 or above maxq + 1 acts as -2 or
	 * maxq + 1 and is kept as that): 2 + base in base8 up to 7 bits,
	 * base itself in base16 at 8 bits; the other NULL.
	 */
	uint8_t *base8;
	int16_t *base16;
	float *v;		/* (out, in) rounding variables V */
	float *m1;		/* (out, in) Adam first moment, NULL */
	float *m2;		/* (out, in) Adam second moment  until a step */
	/* v, m1, m2 NULL: they live in file fd (qf_adaround_spill) at
	 * off, each (out, in) floats after the other */
	int fd;
	uint64_t off;
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
 * codes).  V may be spilled (qf_adaround_spill).  Returns 0, -ENOMEM or
 * -errno (spilled).
 */
int qf_adaround_hard(const struct qf_adaround *a, const float *w_fp,
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
 * eps 1e-8); step t counts from 1 (bias correction).  The moments are
 * allocated, zero, at the first.  V in memory.  Returns 0 or -ENOMEM.
 */
int qf_adaround_adam(struct qf_adaround *a, const float *gv, float lr,
		     int t);

/*
 * Move V and the Adam moments into the file fd at *off (advanced past
 * them: 12 bytes per weight), for a caller that cannot hold them;
 * they are read and written a block of rows at a time from then on.
 * qf_adaround_soft/grad/adam/hard need them in memory; the two below
 * work either way.  Returns 0 or -errno.
 */
int qf_adaround_spill(struct qf_adaround *a, int fd, uint64_t *off);

/*
 * One whole update from dL/dW~ dw (overwritten with dL/dV): the
 * gradient with the regularizer (qf_adaround_grad), the Adam step
 * (qf_adaround_adam), and W~ of the new V into w (qf_adaround_soft),
 * a block of rows at a time.  *regv: the regularizer's value.  Returns
 * 0, -ENOMEM or -errno (spilled).
 */
int qf_adaround_step(struct qf_adaround *a, float *dw, float reg, float beta,
		     float lr, int t, float *w, double *regv);

/* W~ into w (qf_adaround_soft), V in memory or spilled.  Returns 0,
 * -ENOMEM or -errno. */
int qf_adaround_soft_any(const struct qf_adaround *a, float *w);

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
	/*
	 * Bytes the reconstruction's state may hold in memory (0: no
	 * bound): when V and the Adam moments of the block's linears (12
	 * bytes per weight) take more than half of it, they go into an
	 * unnamed temporary file in spill_dir (qf_spill_open) and are
	 * streamed a block of rows at a time, each linear once per step.
	 */
	int64_t mem_bytes;
	const char *spill_dir;
};

/* The defaults above; qp[] all 4 bits, group 128, asymmetric. */
void qf_brecq_opts_default(struct qf_brecq_opts *o);

struct qf_brecq_result {
	double mse_rtn;		/* calibration set, nearest rounding */
	double mse_final;	/* calibration set, learned rounding */
	double norm;		/* loss normalizer sigma^2 (see below) */
	int iters;		/* Adam steps run */
	double seconds;		/* wall time */
	double step_seconds;	/* of it, in the Adam steps */
	int64_t spilled;	/* bytes of state in the file (mem_bytes) */
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
 * (nseq * seqlen, hidden), the target.  Each in memory or in a file
 * (struct qf_tf_seqs), read a mini-batch or a chunk at a time.
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
 * forward only (qf_tf_layer_forward in chunks).
 *
 * Memory, per weight of the quantized linears: W~ in ly's own buffers
 * (4 bytes: the fp32 weights are read once, for the grid), base (1
 * byte, 2 at 8 bits), and V with the Adam moments (12 bytes, or none
 * when spilled to a file: o->mem_bytes); besides, dL/dW~ of the largest
 * linear once (each linear's Adam step runs as soon as the backward has
 * its gradient: tf_backward.h, dw_done), and the activations of one
 * mini-batch.  A MoE block's experts keep their W~ and dL/dW~ apart.
 * Returns 0, -EINVAL (bad shapes or options), QF_ENUMERIC (grid, or a
 * non-finite loss), -ENOMEM, -errno (a file), or the progress
 * callback's non-zero value; on failure the weights of ly's quantized
 * linears are undefined.
 */
int qf_brecq_block(const struct qf_tf_config *c, int layer,
		   struct qf_tf_layer *ly, const struct qf_tf_seqs *x,
		   const struct qf_tf_seqs *y, int nseq, int seqlen,
		   const struct qf_brecq_opts *o,
		   uint8_t *q[QF_TF_NLINEAR],
		   uint16_t *scale_f16[QF_TF_NLINEAR],
		   int32_t *zero[QF_TF_NLINEAR],
		   struct qf_brecq_result *res);

#endif /* QF_BRECQ_H */
