/*
 * mixed.h - the numerical core of mixed-precision quantization: layer
 * roles, the bytes a precision costs in the compressed-tensors
 * pack-quantized format, output-error sensitivity from calibration
 * statistics, the seed's importance score, the three allocation
 * policies (static role table, importance ratios, bit budget).  The
 * pack-quantized packing itself is a checkpoint format: io/pack_ct.c.
 *
 * Nothing here reads a model: callers hand in weights, statistics and
 * tables.  All functions are pure apart from allocation.
 */
#ifndef QF_MIXED_H
#define QF_MIXED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "method.h"

/* ------------------------------------------------------------------ */
/* roles                                                              */

enum qf_role {
	QF_ROLE_ATTN,
	QF_ROLE_MLP,
	QF_ROLE_EMBED,
	QF_ROLE_HEAD,
	QF_ROLE_OTHER,
	QF_ROLE_COUNT,
};

/* "attn", "mlp", "embed", "head", "other". */
const char *qf_role_name(enum qf_role r);
/* 0, or QF_ESPEC when s names no role. */
int qf_role_parse(const char *s, enum qf_role *out);

/*
 * Role of a tensor (or module prefix) name.  overrides is NULL or a
 * NULL-terminated list of "pattern=role" strings; pattern is an
 * fnmatch(3) glob (flags 0: '*' also matches '.') over the whole name,
 * and the first matching override wins.  Otherwise the name's
 * dot-separated components decide: q_proj, k_proj, v_proj, o_proj (and
 * the fused qkv_proj) -> ATTN; gate_proj, up_proj, down_proj (and
 * gate_up_proj) -> MLP; embed_tokens -> EMBED; lm_head -> HEAD; anything
 * else -> OTHER (the caller logs such names).  An override whose role
 * does not parse is skipped (qf_mixed_overrides_parse rejects them).
 */
enum qf_role qf_role_of(const char *tensor_name,
			const char *const *overrides);

/*
 * Parse "pat=role,pat=role" into a NULL-terminated list of "pat=role"
 * strings for qf_role_of (*out; free with qf_mixed_overrides_free).  An
 * empty string gives an empty list.  Entries are split at ',' and at
 * the last '='; a pattern may not be empty and the role must be one of
 * qf_role_name's.  Returns 0, QF_ESPEC (why, if given, says which entry
 * and what is wrong) or -ENOMEM.
 */
int qf_mixed_overrides_parse(const char *s, char ***out, char *why,
			     size_t cap);
void qf_mixed_overrides_free(char **list);

/* ------------------------------------------------------------------ */
/* precisions and their bytes                                         */

/* Candidate precisions, ascending; 16 = keep the weight as fp16. */
#define QF_MIXED_NBITS 6
extern const int qf_mixed_bits_all[QF_MIXED_NBITS];	/* 2 3 4 6 8 16 */
/* True for 2, 3, 4, 6, 8 and 16. */
bool qf_mixed_bits_valid(int bits);

/*
 * Exact bytes compressed-tensors pack-quantized stores for one linear
 * [out, in] at bits with group (<= 0 or >= in: one group per row, i.e.
 * per channel), ngroups = ceil(in / group), per = 32 / bits:
 *   weight_packed      int32 [out, ceil(in / per)]
 *   weight_scale       fp16  [out, ngroups]
 *   weight_zero_point  int32 [ceil(out / per), ngroups]   (!sym only)
 *   weight_shape       int32 [2]
 * bits 16: out * in * 2 (the fp16 weight, nothing else).  Biases and
 * act-order g_idx are not counted.  0 for bits not valid.
 */
uint64_t qf_mixed_bytes(int64_t out, int64_t in, int bits, int group,
			bool sym);

/*
 * Size accounting of a set of tensors: add each (params, stored bytes,
 * source bytes), then finish to fill the ratios.
 */
struct qf_mixed_size {
	uint64_t params;		/* parameters counted */
	uint64_t bytes;			/* bytes stored for them */
	uint64_t src_bytes;		/* bytes of the source tensors */
	double bytes_per_param;		/* bytes / params */
	double bits_per_param;		/* 8 * bytes / params */
	double ratio_src;		/* src_bytes / bytes */
	double ratio_fp32;		/* 4 * params / bytes */
};
void qf_mixed_size_add(struct qf_mixed_size *s, uint64_t params,
		       uint64_t bytes, uint64_t src_bytes);
void qf_mixed_size_finish(struct qf_mixed_size *s);

/* ------------------------------------------------------------------ */
/* sensitivity and importance                                         */

/*
 * Relative output error of each precision bits[p] (p < np) of the
 * linear w [out, in] on inputs with Gram matrix h = X^T X [in, in] (full
 * symmetric, any positive scale):
 *   cost[p] = tr(dW H dW^T) / tr(W H W^T),  dW = deq(RTN(W)) - W
 * with qf_rtn_quantize at (bits, group, sym) and deq = scale * (q -
 * zero) in f32.  dW H and W H are SGEMMs (qf_sgemm); the traces are
 * summed in double.  bits 16 costs 0 (the weight is kept).  When
 * tr(W H W^T) <= 0 (zero weight or zero inputs) every cost is 0.
 * Returns 0, -EINVAL (a bits value not valid), QF_ENUMERIC, -ENOMEM.
 */
int qf_mixed_sensitivity(const float *w, int64_t out, int64_t in,
			 const float *h, const int *bits, int np, int group,
			 bool sym, double *cost);

/*
 * The same relative output error with dW from GPTQ instead: for each
 * option p, w is quantized by qf_gptq_quantize at (bits[p], group[p],
 * asymmetric; no act-order, damp, blocks of 128) on h, as a mixed
 * variant's production quantizes it on the unquantized model's inputs,
 * and cost[p] = tr(dW H dW^T) / tr(W H W^T) with H = h as given (the
 * factorization works on a copy).  bits 16 costs 0.  *energy (if given)
 * gets tr(W H W^T): the summed squared output of the linear over the
 * calibration tokens, so cost[p] times it is the absolute squared output
 * error.  Returns 0, -EINVAL, QF_ENUMERIC (also for an energy that is
 * not finite), -ENOMEM.
 */
int qf_mixed_sensitivity_gptq(const float *w, int64_t out, int64_t in,
			      const float *h, const int *bits,
			      const int *group, int np, float damp,
			      double *cost, double *energy);

/*
 * The seed's importance signals of one linear (its LayerImportance-
 * Analyzer): gradient magnitude mean|dL/dW| (not available without a
 * backward pass: has_grad false and grad 0 unless the caller has it),
 * activation "variance" and weight magnitude mean|W|.  The seed takes
 * the variance of the module's activations; we only keep per-channel
 * sums of the linear's inputs, so act is their mean square over
 * channels: mean_j (sum_sq[j] / n) = E[x^2] averaged over channels
 * (the second moment, not the variance: E[x] is not kept).
 */
struct qf_mixed_signals {
	double grad;			/* mean |gradient|, if has_grad */
	double act;			/* mean over channels of E[x^2] */
	double weight;			/* mean |W| */
	bool has_grad;
};
/* act and weight of w [out, in] with input statistics s (s->n > 0). */
void qf_mixed_signals_of(const float *w, int64_t out, int64_t in,
			 const struct qf_lin_stats *s,
			 struct qf_mixed_signals *sig);

/*
 * The seed's combination over the n linears (its _aggregate_importance):
 * each signal is standardized over the linears that have it,
 * z = (v - mean) / (std + 1e-8) with the population std, and
 *   imp[i] = 0.5 z_grad + 0.3 z_act + 0.2 z_weight
 * where a missing gradient contributes 0 (as the seed does for a
 * parameter without a gradient).  The score is relative to the set, so
 * this takes all linears at once.  Returns 0 or -EINVAL (n == 0).
 */
int qf_mixed_importance(const struct qf_mixed_signals *sig, size_t n,
			double *imp);

/* ------------------------------------------------------------------ */
/* allocation policies                                                */

/*
 * a) static role table.  Default (qf_mixed_static_defaults):
 * attn 8, mlp 4, embed 16, head 16, other 8; the group size is the
 * variant's (128 by default), the same for every quantized role.
 */
struct qf_mixed_static {
	int bits[QF_ROLE_COUNT];
};
void qf_mixed_static_defaults(struct qf_mixed_static *t);
/*
 * Update t from "role=bits,..." (e.g. "attn=8,mlp=4,embed=16,head=16,
 * other=8"); roles not named keep their value.  Returns 0 or QF_ESPEC
 * (unknown role, bits not in 2/3/4/6/8/16, malformed entry; why says
 * which).
 */
int qf_mixed_static_parse(const char *s, struct qf_mixed_static *t,
			  char *why, size_t cap);
void qf_mixed_static_assign(const struct qf_mixed_static *t,
			    const enum qf_role *roles, size_t n, int *bits);
/*
 * The width t gives the linear weight `name` ("...q_proj.weight"): the
 * role of its module (".weight" dropped; overrides as qf_role_of) into
 * *role when role is not NULL.
 */
int qf_mixed_static_bits(const struct qf_mixed_static *t,
			 const char *const *overrides, const char *name,
			 enum qf_role *role);

/*
 * b) ratio policy (mixed_dyn), the seed's DynamicQuantizationPolicy by
 * rank: sort the linears by importance, descending (ties: lower index
 * first); the first n_high = floor(n * high) get bits_high, the last
 * n_low = n - floor(n * (1 - low)) get bits_low (n_low reduced so the
 * two do not overlap), the rest bits_mid.  floor() takes a 1e-9 slack
 * against binary fractions (0.6 * 10).  Defaults: high 0.2, low 0.4,
 * bits 16 / 8 / 4.
 */
struct qf_mixed_ratio {
	double high;			/* fraction kept at bits_high */
	double low;			/* fraction at bits_low */
	int bits_high;
	int bits_mid;
	int bits_low;
};
void qf_mixed_ratio_defaults(struct qf_mixed_ratio *r);
/*
 * Update r from "high=0.2,low=0.4,bits_high=16,bits_mid=8,bits_low=4"
 * (any subset).  Fractions in [0, 1] with high + low <= 1.  Returns 0 or
 * QF_ESPEC with why.
 */
int qf_mixed_ratio_parse(const char *s, struct qf_mixed_ratio *r,
			 char *why, size_t cap);
/* Returns 0, -EINVAL (bad fractions), -ENOMEM. */
int qf_mixed_ratio_assign(const struct qf_mixed_ratio *r, const double *imp,
			  size_t n, int *bits);

/*
 * c) budget (mixed_b<avg>): choose option p_i for each of n linears
 * (options p < np, tables row-major [n][np]) minimizing
 * sum_i cost[i][p_i] subject to
 *   8 * sum_i bytes[i][p_i] <= avg_bits_x100 / 100 * sum_i params[i]
 * i.e. the average stored bits per parameter of these linears, counting
 * everything qf_mixed_bytes counts (packed weights, fp16 scales, packed
 * zero points, weight_shape; fp16 weights at 16 bits), at most
 * avg_bits.  Compared in integers: 800 * bytes <= avg_bits_x100 *
 * params.  An option with cost +inf (or NaN) is not allowed.
 *
 * Algorithm (a multiple-choice knapsack):
 * 1. per linear, drop options dominated in (bytes, cost) and take the
 *    lower convex hull of the rest;
 * 2. the LP relaxation: from every linear's smallest option, take hull
 *    steps in order of cost saved per byte while they fit, the last one
 *    fractionally: the Lagrangian dual's optimum (what bisection on
 *    lambda converges to) and a lower bound; its integer part, filled
 *    greedily with any remaining option that fits and lowers the cost,
 *    is the first incumbent;
 * 3. depth-first branch and bound over the linears (largest byte range
 *    first), each node bounded by the fixed cost plus the LP bound of
 *    the rest; pruned when the bound cannot beat the incumbent by more
 *    than 1e-12 relative.  Exact unless max_nodes is reached; then the
 *    best allocation found is returned with optimal false and the
 *    gap to the bound in res.
 * Returns 0, QF_ESPEC (infeasible even with each linear's smallest
 * allowed option, or a linear with none allowed), -EINVAL, -ENOMEM.
 */
struct qf_mixed_budget_res {
	double cost;			/* objective of the allocation */
	double bound;			/* lower bound on the optimum */
	uint64_t bytes;			/* sum of its bytes */
	uint64_t budget_bytes;		/* floor(avg * params / 800) */
	uint64_t nodes;			/* branch-and-bound nodes */
	bool optimal;			/* proven within 1e-12 relative */
};
#define QF_MIXED_MAX_NODES 2000000
int qf_mixed_budget(size_t n, int np, const uint64_t *params,
		    const uint64_t *bytes, const double *cost,
		    int avg_bits_x100, uint64_t max_nodes, int *choice,
		    struct qf_mixed_budget_res *res);

/*
 * Measured end-of-model sensitivity (mixed_loss.c): for each decoder
 * layer l, unit u (the linears k with unit_of[k] == u; -1: none) and
 * width bits[p], the mean over every token of the nseq x seqlen ids of
 * KL(p_src || p_trial), the divergence (nats) of the next-token
 * distribution when only that unit is rounded to nearest at bits[p]
 * (group, asymmetric) from the unquantized model's (everything in
 * fp32): kl[(l * nunits + u) * np + p]; 16 bits costs 0.  Unlike the
 * loss increase on the text's next tokens, it is never negative and
 * needs no target, so every position (the last of each sequence too)
 * counts.  progress (optional) after each layer, and with layer -1
 * after each trial and each slice of rows of the KL (a chance to stop:
 * a layer's trials at Qwen3-0.6B's shapes take minutes).  Memory: every
 * layer's fp32 weights and every layer's input, the head in fp32 (read
 * once, not at every slice of rows), and up to 512 MiB of trials' final
 * streams (a layer's trials share each slice of the reference's
 * logits).  Returns 0, -ENOMEM,
 * a model read error or progress's value.
 */
int qf_mixed_kl_table(const struct qf_model *m, const struct qf_tf_config *c,
		      const int32_t *ids, int nseq, int seqlen,
		      const int unit_of[QF_TF_NLINEAR], int nunits,
		      const int *bits, int np, int group, double *kl,
		      int (*progress)(void *arg, int layer, double seconds),
		      void *arg);

#endif /* QF_MIXED_H */
