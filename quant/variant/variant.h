/*
 * variant.h - the public interface of quant/variant: the variant-name
 * grammar (man quantfs-variants(7)), the output
 * tensors of (model, spec) and their production, and the small JSON
 * files of a variant directory.
 *
 * variant is the top of the production side of quant/: it uses method
 * (and through it calib, nn, io).
 */
#ifndef QF_VARIANT_H
#define QF_VARIANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "method.h"

/* ------------------------------------------------------------------ */
/* variant names (man quantfs-variants(7))                           */

enum qf_method {
	QF_METHOD_RTN,
	QF_METHOD_GPTQ,
	QF_METHOD_AWQ,
	QF_METHOD_BRECQ,
	QF_METHOD_MIXED_STATIC,
	QF_METHOD_MIXED_DYN,
	QF_METHOD_MIXED_BUDGET,
	QF_METHOD_KQUANT,
};

enum {
	QF_SPEC_ACT = 1u << 0,		/* gptq: act-order (desc_act) */
	QF_SPEC_STATIC = 1u << 1,	/* gptq: static groups (needs act) */
	QF_SPEC_SYM = 1u << 2,		/* symmetric grid */
	QF_SPEC_REFLIP = 1u << 3,	/* awq: GQA ReFlip refinement */
	QF_SPEC_FAKE = 1u << 4,		/* dequantized, source dtype */
	QF_SPEC_L2 = 1u << 5,		/* awq: salience sqrt(mean x^2) */
	QF_SPEC_ROT = 1u << 6,		/* of the rotated model (rot.h) */
	QF_SPEC_AWQ = 1u << 7,		/* kq: AWQ's scales folded in first */
};

#define QF_SPEC_CALIB_MAX 64

struct qf_spec {
	enum qf_method method;
	int bits;		/* weight bits; MLP bits for brecq; kquant bits */
	int group;		/* 32/64/128, -1 = per channel, 0 = n/a */
	int attn_bits;		/* self_attn bits; brecq: always set;
				 * rtn/gptq/awq: 0 = the weight bits */
	int head_bits;		/* lm_head bits; brecq: 16 = fp16 (default);
				 * rtn/gptq/awq: 0 = fp16 */
	int avg_bits_x100;	/* mixed_b: average bits x 100 */
	char kq_size;		/* kquant: 'S', 'M', 'L' or 0; 'N', 'X':
				   kiq4_nl, kiq4_xs (IQ4_NL, IQ4_XS) */
	unsigned flags;		/* QF_SPEC_* */
	char calib[QF_SPEC_CALIB_MAX + 1]; /* "" = default set */
};

/*
 * Parse a variant name.  Only canonical spellings parse, so
 * print(parse(s)) == s for every accepted s.  Pure function.
 * Returns 0 or QF_ESPEC with *why (if given) naming the problem.
 */
int qf_spec_parse(const char *name, struct qf_spec *out, const char **why);
/* Canonical name into out.  Returns its length, or -ENOSPC. */
int qf_spec_print(const struct qf_spec *s, char *out, size_t cap);
/* A k-quant mix this build produces (every llama.cpp mix kq names). */
bool qf_spec_kq_supported(const struct qf_spec *s);
/* Method needs calibration data (gptq, awq, brecq, mixed_dyn/budget). */
bool qf_spec_is_calibrated(const struct qf_spec *s);
/*
 * GPTQ's column order: by descending diag(H) with _act, and with _rot
 * (QuaRot's recipe quantizes the rotated model with act-order); static
 * groups (_static: groups of consecutive columns, fixed before the
 * reordering, so GGUF block types hold them).
 */
bool qf_spec_act_order(const struct qf_spec *s);
bool qf_spec_static_groups(const struct qf_spec *s);
/* mixed_dyn / mixed_b<avg>: widths measured, then GPTQ at them. */
bool qf_spec_mixed_measured(const struct qf_spec *s);
const char *qf_method_name(enum qf_method m);


/* ------------------------------------------------------------------ */
/* variants: the output tensors of (model, spec) and their production  */

#define QF_VT_PASSTHROUGH UINT32_MAX

struct qf_vtensor {
	char *name;			/* output tensor name */
	enum qf_dtype dtype;
	int ndim;
	int64_t shape[2];
	uint32_t group;			/* producing group, or PASSTHROUGH */
	const struct qf_model_tensor *src; /* passthrough source */
};

struct qf_vgroup {
	const struct qf_model_tensor *w; /* source linear weight */
	uint32_t first;			/* its output tensors: first.. */
	uint32_t n;			/*  ..first + n - 1 in v->t */
	struct qf_qparams qp;		/* the grid (bits 6: a 6-bit grid) */
	int pack_bits;			/* the container: 2, 3, 4 or 8 */
	uint64_t src_bytes;		/* source bytes consumed */
	/*
	 * AWQ: the norm whose weights absorb this linear's input scales
	 * (input_layernorm for q_proj, post_attention_layernorm for
	 * gate_proj); it is the group's last output tensor.  NULL: none.
	 * A MoE block's expert 0 (layer_moe.c): its gate's group holds
	 * post_attention_layernorm, its up's the router, its down's the
	 * shared expert gate, stored in their dtype, changed.
	 */
	const struct qf_model_tensor *norm;
};

/* Grid bits of linear `name`, 16 = not quantized (see below); *group
 * comes in as the spec's group size and may be changed. */
typedef int (*qf_bits_fn)(void *arg, const char *name, int *group);

struct qf_variant {
	struct qf_model *m;		/* borrowed */
	struct qf_spec spec;
	char name[128];			/* canonical spelling */
	struct qf_vtensor *t;		/* output tensors, any order */
	size_t nt;
	struct qf_vgroup *g;		/* production units */
	size_t ng;
	struct qf_buf skipped;		/* JSON array text of kept layers */
	size_t nskipped;
	/* the group of the quantized lm_head (_head<h>), -1: none.  Its
	 * w is lm_head.weight, or for tied embeddings the embedding
	 * (which is also served as it is: the variant is untied) */
	int head;
	qf_bits_fn bits_of;		/* per-linear bits, or NULL */
	void *bits_arg;
	/* mixed_dyn / mixed_b: the "allocation" object of
	 * quantization.json (JSON text, borrowed) */
	const char *alloc_json;
};

/*
 * Describe the variant: output tensors with exact shapes, production
 * groups.  Nothing is quantized.  Returns 0, QF_EUNSUPPORTED (method not
 * in this build), -ENOMEM.  Free with qf_variant_free().
 */
int qf_variant_init(struct qf_model *m, const struct qf_spec *spec,
		    struct qf_variant **out);
/*
 * Per-linear precision: the grid bits of linear `name` (a ".weight"
 * tensor), 16 to keep it in the source dtype.  The default rule: the
 * spec's bits; attention (self_attn.*) at attn_bits where set (brecq
 * always), the rest at bits; lm_head at head_bits (_head<h>); mixed_static: mixed.h's default role table.  mixed_dyn and mixed_b
 * need bits_of (their allocation is measured).  Grids without a GPTQ
 * packing (5, 6, 7 bits) are stored in the 8-bit container with values
 * on the narrower grid.
 */
int qf_variant_init_bits(struct qf_model *m, const struct qf_spec *spec,
			 qf_bits_fn bits_of, void *arg,
			 struct qf_variant **out);
void qf_variant_free(struct qf_variant *v);
/*
 * Threads qf_variant_produce() may use on the calling thread from now on:
 * 1 or 2 (the default: two halves of a large linear's rows).  A thread
 * that produces beside other work (fs/stash.c, beside the hash) takes 1.
 */
void qf_variant_threads(int n);
/*
 * Produce group gi: out[k] receives the bytes of tensor v->t[first + k]
 * (caller allocates numel * dtype size each).  *err_rel (if given) gets
 * the relative squared weight error sum((w - deq)^2) / sum(w^2).
 * Returns 0, QF_ECORRUPT, QF_ENUMERIC, -ENOMEM.
 */
int qf_variant_produce(const struct qf_variant *v, size_t gi, void **out,
		       double *err_rel);
/*
 * Write group gi's output tensors (packed GPTQ tensors, or the
 * dequantized weight for _fake) from integer results: q [out, in],
 * scale/zero [out, ngroups], g_idx [in] (group of each input column).
 */
void qf_variant_emit(const struct qf_variant *v, size_t gi, const uint8_t *q,
		     const uint16_t *sc, const int32_t *zero,
		     const int32_t *g_idx, void **out);
uint64_t qf_vtensor_bytes(const struct qf_vtensor *t);
/* config.json: the source's plus "quantization_config". */
int qf_variant_config(const struct qf_variant *v, struct qf_buf *out);
/*
 * What a calibrated variant records in quantization.json.  Numbers that
 * are known only after production print with a fixed width, so the file
 * has its final size before it: render with loss == NULL for the
 * placeholder, with the results once the job is done.
 */
struct qf_calib_info {
	char source[256];		/* how the set was made */
	char key[65];			/* hex id of the set (in the cache key) */
	char hash[65];			/* sha256 of token ids + shape */
	int nseq;
	int seqlen;
	double damp;			/* GPTQ damp_percent */
	double seconds;			/* production time */
	const double *loss;		/* [ng] or NULL: relative output error */
	const double *loss_rtn;		/* [ng] or NULL: RTN at same settings */
	/* awq: alpha of each linear's scale search, [ng] or NULL */
	const double *alpha;
	/* awq reflip: relative attention-score error before / after,
	 * [ng * 2] (set for q_proj groups) or NULL */
	const double *score;
	/* MoE: the calibration tokens routed to each expert group's
	 * expert, [ng] or NULL */
	const double *tokens;
	/* compute backend that produced it ("cpu", "cuda"), NULL: cpu */
	const char *backend;
	int brecq_iters, brecq_batch;	/* brecq: Adam steps, sequences */
};
/* quantization.json: method, parameters, hashes, per-layer layout;
 * ci is NULL for uncalibrated methods.  The model's fingerprint must be
 * set (qf_model_set_fingerprint()). */
int qf_variant_manifest(const struct qf_variant *v,
			const struct qf_calib_info *ci, struct qf_buf *out);

#endif /* QF_VARIANT_H */
