/*
 * method.h - the public interface of quant/method: the quantization
 * algorithms of one linear or one decoder layer.  Round-to-nearest with
 * the GPTQ grid, GPTQ, AWQ (scale and clip search, heuristic rounding,
 * GQA ReFlip) and AWQ of a whole layer.  BRECQ (brecq.h) and mixed
 * precision (mixed.h) have their own headers in this folder.
 *
 * method uses calib (the layer-by-layer driver and its statistics), nn
 * and io; the checkpoint packings its outputs go into are io's.
 */
#ifndef QF_METHOD_H
#define QF_METHOD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calib.h"

/* ------------------------------------------------------------------ */
/* RTN and the GPTQ checkpoint packing                                */

/*
 * Quantization grid of one output row, GPTQ conventions: asymmetric uses
 * [min(w,0), max(w,0)] with zero = round(-min/scale); symmetric uses
 * zero = 2^(bits-1) and scale = 2 max|w| / maxq.  Scales are rounded to
 * fp16 (what the checkpoint stores) before rounding weights, so the served
 * values dequantize exactly to scale * (q - zero).  Asymmetric zeros are
 * kept >= 1 because the "gptq" (v1) checkpoint stores zero - 1.
 */
struct qf_qparams {
	int bits;			/* 2, 3, 4, 8 */
	int group;			/* columns per group; >= in = one group */
	bool sym;
};

/*
 * Round-to-nearest quantization of w (rows x in, row-major: the nn.Linear
 * [out, in] layout) into q (rows x in), scale/zero (rows x ngroups).
 * Returns 0 or QF_ENUMERIC (a scale does not fit fp16).
 */
int qf_rtn_quantize(const float *w, int64_t rows, int64_t in,
		    const struct qf_qparams *p, uint8_t *q, uint16_t *scale_f16,
		    int32_t *zero);
/*
 * The grid of one group whose weights span [lo, hi]: fp16 scale (and its
 * f32 value) and zero, by the rules above.  Returns 0 or QF_ENUMERIC.
 */
int qf_rtn_grid(float lo, float hi, const struct qf_qparams *p,
		uint16_t *sc16, float *sc, int32_t *zero);
/* Scalar reference of the same, written plainly; for tests. */
int qf_rtn_quantize_ref(const float *w, int64_t rows, int64_t in,
			const struct qf_qparams *p, uint8_t *q,
			uint16_t *scale_f16, int32_t *zero);


/*
 * GPTQ (Frantar et al. 2022) of one linear, as published: Cholesky of the
 * damped inverse Hessian, columns quantized in order (or by descending
 * diag(H) with act_order) with error feedback, lazy blocks of
 * `blocksize` columns and a GEMM update of the rest; group grids
 * computed as the loop reaches each group (or up front with
 * static_groups).  w [out, in] is replaced by the dequantized result
 * (unspecified on failure); h [in, in] (X^T X, any
 * positive scale, full symmetric) is worked on in place and given back
 * as it was, but for dead inputs' zero diagonal, set to 1.  Outputs in the
 * original column order: q [out, in], scale/zero [out, ngroups], g_idx
 * [in].  *loss: sum over columns of (w - q)^2 / Hinv_jj^2 / 2 (the
 * paper's objective).  Returns 0, QF_ENUMERIC (H not positive definite
 * even after 5 retries with 10x the damping), -ENOMEM.
 */
struct qf_gptq_times {		/* accumulated seconds, for benches */
	double chol;			/* damping, Cholesky, inverse */
	double columns;			/* the column loop inside blocks */
	double lazy;			/* the blocked GEMM updates */
	double lazy_flop;		/* their floating-point operations */
};

struct qf_gptq_opts {
	struct qf_qparams qp;
	bool act_order;
	bool static_groups;
	float damp;			/* fraction of mean diag(H), 0.01 */
	int blocksize;			/* 128 */
	struct qf_gptq_times *times;	/* optional: phase timings */
	/* optional, without act_order: U of this h and damp as
	 * qf_gptq_hinv_upper gives it, so that several runs on one h
	 * (mixed precision's options) factorize it once; the same codes */
	const float *u_given;
	/* tests: the column loop by the CUDA kernel's code run on the host
	 * (needs the CUDA module, no device; QF_EUNSUPPORTED without) */
	bool kernel_on_host;
};
int qf_gptq_quantize(float *w, int64_t out, int64_t in, float *h,
		     const struct qf_gptq_opts *o, uint8_t *q,
		     uint16_t *scale_f16, int32_t *zero, int32_t *g_idx,
		     double *loss);

/*
 * GPTQ's factor of one linear's Hessian h [n, n] (X^T X, full symmetric),
 * replaced in place by U, upper, with U^T U = (h + damp * mean(diag h) *
 * I)^-1 (dead inputs given a unit diagonal first; damping raised 10x up
 * to 5 times if needed), as qf_gptq_quantize computes it: what the
 * k-quant views' encoder (qf_ggml_gptq_quantize) takes.  Returns 0,
 * QF_ENUMERIC, -ENOMEM.
 */
int qf_gptq_hinv_upper(float *h, int64_t n, float damp);
/*
 * Coordinate descent on GPTQ's codes (QuantEase's idea, Behdin et al.
 * 2023), the grids kept: each row's error e = w0 - w against (H + lam I)
 * (lam = damp * mean(diag H), GPTQ's damping) is lowered by passes cyclic
 * sweeps over the columns, each code set to the grid point nearest the
 * best value of its weight alone, w_j + g_j / (H_jj + lam) with g = e (H +
 * lam I), and kept only where e (H + lam I) e^T falls; so the objective
 * never rises.  w [out, in] holds GPTQ's values (w ~ sc * (q - z) of each
 * column's group gidx, ng groups a row) and q its codes, both updated;
 * h [in, in] is full symmetric; columns whose H_jj is 0 (dead inputs)
 * are left as they are.  Rows are independent (split over the
 * CPUs; each part holds one row's g).  Returns 0, -EINVAL, -ENOMEM (some
 * rows may then be refined, others not).
 */
int qf_gptq_refine(const float *w0, float *w, int64_t out, int64_t in,
		   const float *h, float damp, int bits, uint8_t *q,
		   const uint16_t *sc, const int32_t *z, const int32_t *gidx,
		   int64_t ng, int passes);

/* ------------------------------------------------------------------ */
/* AWQ (Lin et al. 2023) with heuristic rounding and GQA ReFlip       */

/*
 * The AWQ grid of a group whose weights span [lo, hi] (their real
 * minimum and maximum; zero is not forced into the range):
 * scale = (hi - lo) / maxq rounded to fp16 (at least 1e-5), zero =
 * clamp(round(-lo / scale), 0, maxq); w ~ scale * (q - zero).
 * Returns 0 or QF_ENUMERIC (a scale does not fit fp16).
 */
int qf_awq_grid(float lo, float hi, int bits, uint16_t *sc16, float *sc,
		int32_t *zero);

struct qf_awq_opts {
	int bits;			/* 2..8 */
	int group;			/* columns per group; >= in = one */
	int n_grid;			/* alpha grid points, 20 */
	int clip_grid;			/* clip ratios tried, 20 */
	float max_shrink;		/* smallest clip ratio 1 - max_shrink, 0.5 */
	bool flip;			/* heuristic rounding correction */
};
void qf_awq_defaults(struct qf_awq_opts *o, int bits, int group);

/*
 * Round-to-nearest of w [out, in] with the AWQ grid per (row, group):
 * q [out, in], scale/zero [out, ngroups].  Returns 0 or QF_ENUMERIC.
 */
int qf_awq_rtn(const float *w, int64_t out, int64_t in,
	       const struct qf_awq_opts *o, uint8_t *q, uint16_t *sc16,
	       int32_t *zero);

/*
 * An error D = w0 - w' [out, in] made a block of rows at a time, so no
 * matrix of its size need be held: w' is w, else the codes q/sc/z
 * (ng groups of gs per row, as qf_awq_deq dequantizes them), else zero.
 * qf_err_rows: rows [r0, r0 + n) of D into d [n, in].
 */
struct qf_err_rows {
	const float *w0, *w;
	const uint8_t *q;
	const uint16_t *sc;
	const int32_t *z;
	int64_t in, ng, gs;
};
void qf_err_rows(const struct qf_err_rows *e, int64_t r0, int64_t n,
		 float *d);

/*
 * Output error energy of replacing w by w': sum over rows of
 * d H d^T, d = w - w' (H = X^T X [in, in], full symmetric); w2 NULL:
 * of w itself.
 */
double qf_awq_energy(const float *w, const float *w2, int64_t out,
		     int64_t in, const float *h);
/* qf_awq_energy of w' the codes q/sc/zero [out, in] with groups of gs
 * as qf_awq_deq makes them, a block of rows at a time (no copy of w's
 * size). */
double qf_awq_energy_codes(const float *w, const uint8_t *q,
			   const uint16_t *sc, const int32_t *zero,
			   int64_t gs, int64_t out, int64_t in,
			   const float *h);
/* The relative error qf_awq_energy(w, w2) / qf_awq_energy(w, NULL) (0
 * when w's own is 0); _codes: of w' the codes, as above. */
double qf_awq_rel_err(const float *w, const float *w2, int64_t out,
		      int64_t in, const float *h);
double qf_awq_rel_err_codes(const float *w, const uint8_t *q,
			    const uint16_t *sc, const int32_t *zero,
			    int64_t gs, int64_t out, int64_t in,
			    const float *h);

/* Activation salience [in] of st: mean |x|, or sqrt(mean x^2) (l2). */
void qf_awq_salience(const struct qf_lin_stats *st, bool l2, float *sal);
/* st's statistics of the input x / s (X^T X unless borrowed, sums,
 * samples): the input of a linear whose columns took scales s. */
void qf_awq_scale_stats(struct qf_lin_stats *st, const float *s);
/* Dequantize AWQ codes q/sc/zero [out, in] with groups of gs into w. */
void qf_awq_deq(const uint8_t *q, const uint16_t *sc, const int32_t *zero,
		int64_t out, int64_t in, int64_t gs, float *w);

/*
 * The scales qf_awq_search_scale tries at exponent alpha: sal^alpha
 * (sal floored), divided by sqrt(max * min), into s [in].  For searches
 * whose loss is not a linear's output (a MoE block's, layer_moe.c).
 */
void qf_awq_scales(const float *sal, int64_t in, double alpha, float *s);

/*
 * Scale search for n linears that share one input x (q/k/v after
 * input_layernorm, gate/up after post_attention_layernorm, o after v,
 * down after up).  For alpha = i / n_grid, i = 0 .. n_grid - 1:
 * s = max(sal, 1e-4)^alpha normalised by sqrt(max(s) * min(s)); the error
 * is sum_k qf_awq_energy(W_k, RTN(W_k diag(s)) diag(s)^-1) with the
 * group RTN of qf_awq_rtn (no clipping).  Ties keep the smaller alpha.
 * w[k] is [out[k], in]; sal [in] the activation salience (mean |x|, or
 * the root mean square with the L2 option); h [in, in] = X^T X.
 * s [in] receives the best scales; *alpha, *err_best and *err_plain
 * (alpha = 0, i.e. plain RTN) when non-NULL.
 * Returns 0, QF_ENUMERIC, -ENOMEM.
 */
int qf_awq_search_scale(const float *const *w, const int64_t *out, int n,
			int64_t in, const float *sal, const float *h,
			const struct qf_awq_opts *o, float *s, double *alpha,
			double *err_best, double *err_plain);

/*
 * Clip search of one (already scaled) linear: for every row and group,
 * the max |w| is shrunk by ratios 1 - i / clip_grid * max_shrink
 * (i = 0 .. clip_grid - 1, i.e. ratio 1 first), the group clamped to
 * [-r max, r max] and quantized with qf_awq_grid of its clamped
 * min/max; the ratio with the least error d H_gg d^T (H_gg the group's
 * diagonal block of h) wins (ties: the larger ratio).  w is clamped in
 * place.  Returns 0, QF_ENUMERIC, -ENOMEM.
 */
int qf_awq_search_clip(float *w, int64_t out, int64_t in, const float *h,
		       const struct qf_awq_opts *o);

/*
 * Heuristic rounding correction of q (from qf_awq_rtn of w): per row,
 * flip the rounding of the weight whose flip (to the other neighbour of
 * w / scale + zero on the grid, within [0, maxq], each weight at most
 * once) lowers d H d^T the most; repeat while some flip lowers it.  Never
 * increases the error.  *err_before / *err_after (energies, summed over
 * rows) and *nflips when non-NULL.  Returns 0, -ENOMEM.
 */
int qf_awq_flip(const float *w, int64_t out, int64_t in, const float *h,
		const struct qf_awq_opts *o, uint8_t *q, const uint16_t *sc16,
		const int32_t *zero, double *err_before, double *err_after,
		int64_t *nflips);

/*
 * GQA ReFlip: refine the rounding of q_proj and k_proj against the
 * attention scores S_h = (X Wq_h^T)(X Wk_g(h)^T)^T of every query head h
 * with its key head g(h) = h / (heads / kv_heads), over all pairs of the
 * n sample tokens x [n, in] (pre-RoPE scores).  First q_proj per query
 * head against the quantized keys, then k_proj per key head against its
 * query heads' refined queries: greedily flip the single weight whose
 * flip lowers sum_h ||S'_h - S_h||^2 the most, while it drops, at most
 * max_flip_pct * in flips per row (head dimension) and only in the
 * critical_dim_pct input channels of moderate salience (ranked by sal,
 * the band centred on the median).  wq [heads * head_dim, in] and
 * wk [kv_heads * head_dim, in] are the fp weights q/qk were rounded
 * from; sc/zero as qf_awq_rtn.  *err_before / *err_after: relative
 * score error sum ||S' - S||^2 / sum ||S||^2.
 */
#define QF_REFLIP_SAMPLE 512		/* calibration tokens ReFlip scores */
struct qf_reflip_opts {
	int heads;
	int kv_heads;
	int head_dim;
	float max_flip_pct;		/* 0.05 */
	float critical_dim_pct;		/* 0.15 */
};
int qf_awq_reflip(const float *wq, const float *wk, int64_t in,
		  const float *x, int64_t n, const float *sal,
		  const struct qf_awq_opts *o, const struct qf_reflip_opts *r,
		  uint8_t *qq, const uint16_t *scq, const int32_t *zq,
		  uint8_t *qk, const uint16_t *sck, const int32_t *zk,
		  double *err_before, double *err_after, int64_t *nflips);
/* Relative score error of the dequantized q/k (for tests and reports). */
double qf_awq_score_error(const float *wq, const float *wk,
			  const float *wq2, const float *wk2, int64_t in,
			  const float *x, int64_t n,
			  const struct qf_reflip_opts *r);


/* ------------------------------------------------------------------ */
/* AWQ of a whole decoder layer (awq_layer.c)                          */

struct qf_awq_linear_res {
	uint8_t *q;			/* IN: [out, in] buffers the caller */
	uint16_t *sc;			/*  allocates for quantized linears; */
	int32_t *zero;			/*  OUT: the result ([out, ngroups]) */
	double loss;			/* relative output error, scaled domain */
	double loss_rtn;		/* plain RTN, same grid, no scales */
	double alpha;			/* of its scale group; -1: not scaled */
	int64_t flips;			/* heuristic rounding flips */
};

/*
 * What one qf_awq_layer call finishes: the layer, or its down projection
 * then the rest in two calls (calib.c's down first, for layers whose
 * statistics do not fit beside the whole layer).  The two calls make the
 * bytes one makes: each part's scales are searched on the statistics of
 * the layer as it was, and up's rows take down's scales after gate/up's.
 */
enum qf_awq_part {
	QF_AWQ_ALL,
	QF_AWQ_DOWN,	/* down alone: only ly->w[DOWN] and stats[DOWN]
			 * are read; its scales left in res->s_down */
	QF_AWQ_REST,	/* the six others; res->s_down folded into up's
			 * rows and freed */
};

struct qf_awq_layer_opts {
	bool quantize[QF_TF_NLINEAR];	/* which linears are quantized */
	enum qf_awq_part part;
	bool fold_in;			/* q/k/v scales into input_layernorm */
	bool fold_post;			/* gate/up scales into post_attn norm */
	bool l2;			/* salience sqrt(mean x^2) */
	bool reflip;			/* GQA ReFlip of q/k (needs xs) */
	bool fold_only;			/* tests: fold the scales, no more */
};

struct qf_awq_times {		/* accumulated seconds, for benches */
	double rtn_ref;			/* RTN codes and errors, no scales */
	double search;			/* the scale search (alpha grid) */
	double clip;			/* the clipping search */
	double round;			/* RTN and heuristic flips */
	double reflip;			/* ReFlip of q/k */
	double final;			/* dequantized, errors recorded */
};

struct qf_awq_layer_res {
	struct qf_awq_linear_res lin[QF_TF_NLINEAR];
	struct qf_awq_times t;		/* added to, never cleared */
	double score_before;		/* ReFlip: relative score error */
	double score_after;
	int64_t reflips;
	float *s_down;			/* [inter]: QF_AWQ_DOWN's scales for
					 * QF_AWQ_REST (malloc'd; NULL:
					 * none) */
};

/*
 * AWQ of layer ly with the statistics (h, sums, and for ReFlip the input
 * sample xs of q_proj) of its linears' inputs: scales searched and folded
 * into ly's norms and weights, clipping, RTN, heuristic flips, ReFlip.
 * On return ly holds the dequantized (scaled) weights and the folded
 * norms: the quantized layer (lo->part: the part of it).  stats are
 * transformed in place.  Returns 0, QF_ENUMERIC, -EINVAL, -ENOMEM.
 */
int qf_awq_layer(const struct qf_tf_config *c, struct qf_tf_layer *ly,
		 struct qf_lin_stats *stats, const struct qf_awq_opts *o,
		 const struct qf_awq_layer_opts *lo,
		 struct qf_awq_layer_res *res);

#endif /* QF_METHOD_H */
