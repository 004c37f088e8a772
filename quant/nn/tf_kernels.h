/*
 * tf_kernels.h - private to quant/: the fp32 kernels of the forward pass
 * (tf_kernels.c), shared with forward.c.  Not part of the public API.
 *
 * Kernels take no locks and allocate nothing; callers pass scratch.
 * Matrix products run on the compute backend (qf_sgemm: OpenBLAS SGEMM,
 * or cuBLAS for large ones on the cuda backend).
 */
#ifndef QF_TF_KERNELS_H
#define QF_TF_KERNELS_H

#include <stdint.h>

#include "nn.h"

/* Query rows per attention block: S is QF_TF_BQ x seqlen floats. */
#define QF_TF_BQ 128

/*
 * y = x W^T (+ b) + beta * y: an nn.Linear over n rows.  beta is 0 or 1
 * (1 adds the product into y: the residual connections).
 */
void qf_tf_linear_run(const float *x,	/* [n, in] */
		      int64_t n, int64_t in,
		      const float *w,	/* [out, in] */
		      const float *b,	/* [out] or NULL */
		      int64_t out, float beta,
		      float *y);	/* [n, out] */

/* y = x * rsqrt(mean(x^2) + eps) * w per row; y may equal x. */
void qf_tf_rmsnorm(const float *x,	/* [n, d] */
		   const float *w,	/* [d] */
		   int64_t n, int64_t d, float eps,
		   float *y);		/* [n, d] */

/*
 * cos/sin of position p times inv_freq[i] (llama3 remapping applied),
 * i < head_dim / 2, computed in double.
 */
void qf_tf_rope_table(const struct qf_tf_config *c, int seqlen,
		      float *cs,	/* [seqlen, head_dim / 2] */
		      float *sn);	/* [seqlen, head_dim / 2] */

/*
 * Rotate x in place (rotate_half convention): token t sits at position
 * t % seqlen.
 */
void qf_tf_rope(float *x,		/* [ntok, nh, hd] */
		int64_t ntok, int nh, int hd, int seqlen,
		const float *cs,	/* [seqlen, hd / 2] */
		const float *sn);	/* [seqlen, hd / 2] */
/* The same, or with transpose its inverse (the backward's rotation). */
void qf_tf_rope_dir(float *x, int64_t ntok, int nh, int hd, int seqlen,
		    const float *cs, const float *sn, bool transpose);
/*
 * The same on the first rot dimensions of each head only (partial
 * rotary: rotate_half within them, the rest passed through); the
 * tables keep their [seqlen, hd / 2] layout.
 */
void qf_tf_rope_rot(float *x, int64_t ntok, int nh, int hd, int rot,
		    int seqlen, const float *cs, const float *sn,
		    bool transpose);

/*
 * Causal softmax attention with GQA for nseq sequences: scores scaled by
 * c->attn_scale (0: head_dim^-0.5) and soft-capped by c->attn_softcap.  The output
 * overwrites q (each query block is consumed before its output is
 * written).  window > 0 keeps keys j with i - j < window (HF sliding
 * window); 0 = full causal.
 */
void qf_tf_attention(const struct qf_tf_config *c,
		     float *q,		/* [nseq * seqlen, heads * hd] in/out */
		     const float *k,	/* [nseq * seqlen, kv_heads * hd] */
		     const float *v,	/* [nseq * seqlen, kv_heads * hd] */
		     int nseq, int seqlen, int window,
		     float *s);		/* scratch [QF_TF_BQ, seqlen] */

/* x[i] clamped to [-lim, lim] (OLMoE's clip_qkv). */
void qf_tf_clamp(float *x, int64_t n, float lim);

/* g = silu(g) * u, elementwise. */
void qf_tf_swiglu(float *g,		/* [n] in/out */
		  const float *u,	/* [n] */
		  int64_t n);

/* g = act(g) * u elementwise, act as c->act (SiLU or tanh GELU). */
void qf_tf_glu(const struct qf_tf_config *c, float *g, const float *u,
	       int64_t n);

/*
 * x += a W^T (+ b): an attention or MLP output into the residual, through
 * its sandwich norm when norm is not NULL (gemma: x += rmsnorm(a W^T)).
 */
void qf_tf_out_add(const struct qf_tf_config *c,
		   const float *norm,	/* [hidden] or NULL */
		   const float *a,	/* [ntok, in] */
		   int64_t ntok, int64_t in,
		   const float *w,	/* [hidden, in] */
		   const float *b,	/* [hidden] or NULL */
		   float *tmp,		/* scratch [ntok, hidden] */
		   float *x);		/* [ntok, hidden] in/out */

/* x = cap * tanh(x / cap) (gemma's soft-capping); cap <= 0: unchanged. */
void qf_tf_softcap(float *x, int64_t n, float cap);

/* GEMM flops qf_tf_attention runs (2 m n k per product), for benches. */
double qf_tf_attention_flops(const struct qf_tf_config *c, int nseq,
			     int seqlen, int window);

/*
 * qf_tf_layer_forward with a sliding window (0 = none): the header's
 * config has no window field, so qf_tf_logits passes Mistral's here.
 */
int qf_tf_layer_forward_win(const struct qf_tf_config *c,
			    const struct qf_tf_layer *ly, int layer,
			    float *x,	/* [nseq * seqlen, hidden] in/out */
			    int nseq, int seqlen, int window,
			    qf_tf_hook hook, void *arg);

#endif /* QF_TF_KERNELS_H */
