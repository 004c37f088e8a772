/*
 * tf_backward.h - private to quant/: one decoder block's fp32 forward with
 * its activations saved, and the hand-written backward pass that turns
 * dL/dy of the block output into dL/dW of its seven linears (BRECQ's block
 * reconstruction, brecq.c).  The sub-ops' backwards are exported for the
 * finite-difference tests.
 *
 * The forward has qf_tf_layer_forward's semantics (it is built from the
 * same kernels: tf_kernels.h).  The backward recomputes the attention
 * probabilities per query block from the saved q/k instead of keeping
 * them (no [heads, seqlen, seqlen] buffer), with qf_tf_exp_poly below.
 * Gradients with respect to the block input are not computed.
 * Every product runs on qf_sgemm (OpenBLAS, or the selected backend).
 */
#ifndef QF_TF_BACKWARD_H
#define QF_TF_BACKWARD_H

#include <stdint.h>

#include "nn.h"

/*
 * Activations of one block forward over nseq sequences of seqlen tokens
 * (T = nseq * seqlen rows) and the backward's scratch, one allocation.
 */
struct qf_tf_saved {
	int nseq;
	int seqlen;
	int window;		/* sliding window, 0 = full causal */
	int64_t ntok;		/* T */
	float *xn;		/* (T, hidden) input_layernorm output */
	float *qp;		/* (T, heads * hd) q before q_norm, NULL */
	float *kp;		/* (T, kv_heads * hd) k before k_norm, NULL */
	float *q;		/* (T, heads * hd) after norm and RoPE */
	float *k;		/* (T, kv_heads * hd) after norm and RoPE */
	float *v;		/* (T, kv_heads * hd) */
	float *o;		/* (T, heads * hd) attention output */
	float *op;		/* (T, hidden) o_proj(o) before its sandwich
				 * norm (gemma), NULL */
	float *h1;		/* (T, hidden) x + o_proj(o) (normed) */
	float *xn2;		/* (T, hidden) post-attention RMSNorm out */
	float *g;		/* (T, inter) gate_proj output */
	float *u;		/* (T, inter) up_proj output */
	float *a;		/* (T, inter) act(g) * u */
	float *dn;		/* (T, hidden) down(a) before its sandwich
				 * norm (gemma), NULL */
	float *cs;		/* (seqlen, hd / 2) RoPE cos */
	float *sn;		/* (seqlen, hd / 2) RoPE sin */
	/* backward scratch */
	float *da;		/* (T, inter) dL/da, then dL/dg */
	float *du;		/* (T, inter) dL/du */
	float *dh;		/* (T, hidden) dL/dxn2, then dL/dh1 */
	float *dq;		/* (T, heads * hd) dL/do, then dL/dq */
	float *dk;		/* (T, kv_heads * hd) */
	float *dv;		/* (T, kv_heads * hd) */
	float *s;		/* (QF_TF_BQ, seqlen) probabilities */
	float *ds;		/* (QF_TF_BQ, seqlen) their gradient */
	float *mem;
	/* a sparse MoE block (ly->moe), set by the caller: its routing
	 * (T, topk), held fixed (tf_moe.h), and its experts' dL/dW [nw *
	 * QF_MOE_NLINEAR] laid out as ly->moe->w (NULL entries skipped) */
	const int32_t *sel;
	const float *p;
	float *const *dwe;
	/*
	 * Optional, set by the caller: called with dw[l] as soon as the
	 * backward has it and no longer reads linear l's weights (the
	 * caller may then change them, and reuse dw[l]'s memory for the
	 * next linear's: down, gate, up, o, v, q, k in that order).  A
	 * non-zero return stops the backward with that value.
	 */
	int (*dw_done)(void *arg, int l, float *dw);
	void *dw_arg;
};

/*
 * Allocate for blocks of config c over nseq x seqlen tokens (the window is
 * c->sliding_window when shorter than seqlen, as qf_tf_layer_forward).
 * For a family with per-layer windows or rope bases (gemma), c is the
 * layer's own (qf_tf_config_layer()).  The block computes what the
 * forward does: sandwich norms, GeGLU, soft-capped scores.
 * Caller owns *s; free with qf_tf_saved_free() (accepts a zeroed struct).
 * Returns 0, -EINVAL (empty or oversized shape), -ENOMEM.
 */
int qf_tf_saved_init(const struct qf_tf_config *c, int nseq, int seqlen,
		     struct qf_tf_saved *s);
void qf_tf_saved_free(struct qf_tf_saved *s);

/*
 * y = block(x) for s->nseq sequences of s->seqlen tokens, saving the
 * activations the backward needs into s.  x, y (T, hidden), distinct.
 * A MoE block routes as s->sel / s->p say.  Returns 0 or -ENOMEM (MoE).
 */
int qf_tf_block_forward(const struct qf_tf_config *c,
			 const struct qf_tf_layer *ly, const float *x,
			 float *y, struct qf_tf_saved *s);

/*
 * From dy = dL/dy (T, hidden) of the last qf_tf_block_forward(s) with the
 * same weights: dw[l] (out, in) = dL/dW of linear l, overwritten; a NULL
 * dw[l] is not computed (its linear is still differentiated through).
 * A MoE block's experts' into s->dwe.  Returns 0, -ENOMEM (MoE) or
 * s->dw_done's non-zero value.
 */
int qf_tf_block_backward(const struct qf_tf_config *c,
			  const struct qf_tf_layer *ly, struct qf_tf_saved *s,
			  const float *dy, float *const dw[QF_TF_NLINEAR]);

/*
 * x clamped to [lo, hi] by integer compares of order-preserving bits:
 * a float compare-and-select ahead of arithmetic stops gcc's if-conversion
 * under -ftrapping-math (the default), so loops using it would not
 * vectorize.  Not for NaN.
 */
static inline float qf_tf_clampf(float x, float lo, float hi)
{
	union {
		float f;
		int32_t i;
	} v = { x }, l = { lo }, h = { hi };
	int32_t k = v.i ^ ((v.i >> 31) & 0x7fffffff);
	int32_t kl = l.i ^ ((l.i >> 31) & 0x7fffffff);
	int32_t kh = h.i ^ ((h.i >> 31) & 0x7fffffff);

	k = k < kl ? kl : k;
	k = k > kh ? kh : k;
	v.i = k ^ ((k >> 31) & 0x7fffffff);
	return v.f;
}

/*
 * exp(x) for x clamped to [-87, 88], within 2 ulp of expf: Cephes'
 * polynomial in plain C (rounding by the 1.5 * 2^23 trick, the exponent
 * by bits) so that loops calling it vectorize; expf() does not.
 */
static inline float qf_tf_exp_poly(float x)
{
	union {
		uint32_t u;
		float f;
	} sc, tb;
	float fx, r, p;

	x = qf_tf_clampf(x, -87.0f, 88.0f);
	tb.f = x * 1.44269504088896341f + 12582912.0f;	/* round ... */
	fx = tb.f - 12582912.0f;			/* ... to nearest */
	r = x - fx * 0.693359375f;
	r = r - fx * -2.12194440e-4f;
	p = 1.9875691500e-4f;
	p = p * r + 1.3981999507e-3f;
	p = p * r + 8.3334519073e-3f;
	p = p * r + 4.1665795894e-2f;
	p = p * r + 1.6666665459e-1f;
	p = p * r + 5.0000001201e-1f;
	p = p * r * r + r + 1.0f;
	sc.u = (tb.u - 0x4b400000u + 127u) << 23;	/* 2^fx */
	return p * sc.f;
}

/* ------------------------------------------------------------------ */
/* sub-op backwards (dy -> dx), exported for the tests                 */

/*
 * RMSNorm y = x * rsqrt(mean(x^2) + eps) * w per row of d: dx (n, d)
 * from x and dy; dx may equal dy.
 */
void qf_tf_rmsnorm_bwd(const float *x, const float *w, int64_t n, int64_t d,
		       float eps, const float *dy, float *dx);

/* RoPE's backward in place (the inverse rotation), qf_tf_rope's terms. */
void qf_tf_rope_bwd(float *dx, int64_t ntok, int nh, int hd, int seqlen,
		    const float *cs, const float *sn);

/*
 * Causal GQA softmax attention's backward for nseq sequences (the
 * qf_tf_attention of q, k, v): from dout = dL/d(output) (T, heads * hd),
 * the gradients dq (T, heads * hd), dk and dv (T, kv_heads * hd), all
 * overwritten.  dout may equal dq.  s, ds: scratch (QF_TF_BQ, seqlen).
 */
void qf_tf_attention_bwd(const struct qf_tf_config *c, const float *q,
			 const float *k, const float *v, const float *dout,
			 int nseq, int seqlen, int window, float *dq,
			 float *dk, float *dv, float *s, float *ds);

/*
 * a = silu(g) * u: from da, dg and du (n each).  dg may equal da.
 */
void qf_tf_swiglu_bwd(const float *g, const float *u, const float *da,
		      float *dg, float *du, int64_t n);
/* The same for a = gelu_tanh(g) * u (GeGLU). */
void qf_tf_geglu_bwd(const float *g, const float *u, const float *da,
		     float *dg, float *du, int64_t n);

#endif /* QF_TF_BACKWARD_H */
