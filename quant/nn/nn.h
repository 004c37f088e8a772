/*
 * nn.h - the public interface of quant/nn: the network in fp32.  The
 * compute backend (OpenBLAS, or the CUDA module loaded at run time),
 * one Llama-family decoder layer's weights and forward pass, the
 * embedding, the head and whole-model logits.  tf_kernels.h (the kernels
 * one layer is built from) and tf_backward.h (a block's backward, for
 * BRECQ) are nn's narrower interfaces; qf_cuda.h is the ABI of the CUDA
 * module, shared with GPTQ's device core (method/gptq.c).
 *
 * nn uses io (model directories, config.json) and common only.
 */
#ifndef QF_NN_H
#define QF_NN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"

/* ------------------------------------------------------------------ */
/* the compute backend                                                */

/*
 * The compute backend (backend.c): "cpu" (OpenBLAS/LAPACK) or "cuda"
 * (cuBLAS/cuSOLVER and kernels in a module loaded at run time).  One
 * choice per process: qf_backend_select("cpu" | "cuda" | "auto") returns
 * the backend in use; "cuda" and "auto" fall back to the CPU, with the
 * reason in why, when the module or a device does not work.  QF_ESPEC
 * for another name.  On cuda, products above 2^27 flops, X^T X and
 * GPTQ's core run on the device; results differ from the CPU's only by
 * the order of floating-point sums (see quantfs-variants(7), BACKENDS).
 */
enum qf_backend { QF_BACKEND_CPU, QF_BACKEND_CUDA };
int qf_backend_select(const char *want, char *why, size_t cap);
/*
 * Call first in main(): OpenBLAS 0.3.21 chooses its kernels by CPU model
 * when it loads, and a model it does not know (a virtual "Intel Xeon
 * Processor", parts newer than the library) gets the generic Prescott
 * (SSE3) kernels, 4-6x slower than the core can do.  Where it did so on
 * a CPU with AVX-512 (AVX2 + FMA), this sets OPENBLAS_CORETYPE=SkylakeX
 * (Haswell) and executes the program again with the same argv, once; a
 * user's own OPENBLAS_CORETYPE is left alone.  Returns only when nothing
 * is to be done or the exec failed.
 */
void qf_blas_fix_kernels(char **argv);
/* The kernels OpenBLAS runs ("SkylakeX", ...), for logs and benches. */
const char *qf_blas_kernels(void);
enum qf_backend qf_backend_current(void);
const char *qf_backend_name(enum qf_backend b);
/* True when this build has the CUDA module. */
bool qf_backend_cuda_built(void);
/* "OpenBLAS, <kernels> kernels" or the device's name and size. */
void qf_backend_describe(char *out, size_t cap);
/*
 * BLAS threads of the process (OpenBLAS).  A fixed count gives the same
 * bits on every run of a machine (OpenBLAS partitions work statically).
 */
void qf_backend_set_threads(int n);
/* Row-major C[m, n] = alpha op(A) op(B) + beta C (cblas_sgemm's terms). */
void qf_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
	      float alpha, const float *a, int64_t lda, const float *b,
	      int64_t ldb, float beta, float *c, int64_t ldc);
/* Row-major upper triangle of C[n, n] += X^T X for X [k, n]. */
void qf_ssyrk_t(int64_t n, int64_t k, const float *x, int64_t ldx, float *c);

/* ------------------------------------------------------------------ */
/* forward pass: Llama family (llama, mistral, qwen2, qwen3) in fp32     */

struct qf_tf_moe;

/* One decoder layer's weights in fp32 (converted from the source). */
struct qf_tf_layer {
	float *w[QF_TF_NLINEAR];	/* [out, in] row-major, as nn.Linear */
	unsigned borrowed;		/* bit i: w[i] points into the fused
					 * tensor an earlier w[] owns */
	float *b[QF_TF_NLINEAR];	/* bias [out] or NULL */
	float *in_norm;			/* input_layernorm [hidden] */
	float *post_norm;		/* post_attention_layernorm [hidden] */
	float *q_norm;			/* qwen3 [head_dim] or NULL */
	float *k_norm;			/* qwen3 [head_dim] or NULL */
	/*
	 * Sandwich norms (c->sandwich, gemma): post_attention_layernorm on
	 * the attention output and post_feedforward_layernorm on the MLP's,
	 * before their residual adds; post_norm then holds
	 * pre_feedforward_layernorm.  Every norm of a (1 + w) family is
	 * loaded as 1 + w, so the kernels multiply by what they hold.
	 */
	float *attn_out_norm;		/* [hidden] or NULL */
	float *mlp_out_norm;		/* [hidden] or NULL */
	struct qf_tf_moe *moe;		/* sparse MoE block in place of the
					 * MLP (w[GATE..DOWN] NULL), or NULL */
};

/* w[i] += 1: a (1 + w) norm as stored turned into what the kernels
 * multiply by (qf_tf_layer_load does it for c->norm_plus1). */
void qf_tf_norm_plus1(float *w, int64_t d);

/* Load layer l (weights converted to fp32); free with _free. */
int qf_tf_layer_load(const struct qf_model *m, const struct qf_tf_config *c,
		     int l, struct qf_tf_layer *out);
void qf_tf_layer_free(struct qf_tf_layer *ly);
/*
 * Free the weights of linears [k0, k1) (a fused tensor whole: ranges
 * hold all of one, as [QF_TF_Q, QF_TF_DOWN) does), their biases kept;
 * qf_tf_layer_load_linears reads the same range from the source again.
 * Calibration holds what a step needs and no more.  0 or -errno.
 */
void qf_tf_layer_drop(struct qf_tf_layer *ly, int k0, int k1);
int qf_tf_layer_load_linears(const struct qf_model *m,
			     const struct qf_tf_config *c, int l, int k0,
			     int k1, struct qf_tf_layer *ly);

/*
 * Called before each linear with its input activations x [ntok, in]
 * (ntok = nseq * seqlen rows); lets calibration accumulate X^T X or
 * channel statistics.  Return non-zero to abort the forward pass.
 */
typedef int (*qf_tf_hook)(void *arg, int layer, enum qf_tf_linear lin,
			  const float *x, int64_t ntok, int64_t in);

/*
 * The MoE block's calibration hook: expert e's gathered input rows x
 * [n, in] before its linear k (QF_MOE_GATE stands for gate and up, which
 * share it; called with n 0 too, so a caller sees every expert).
 */
typedef int (*qf_tf_expert_hook)(void *arg, int layer, int expert,
				 enum qf_moe_linear k, const float *x,
				 int64_t n, int64_t in);

/*
 * x [nseq * seqlen, hidden] in place: one decoder layer (RMSNorm,
 * RoPE attention with GQA and a causal mask, SwiGLU MLP, residuals) for
 * nseq independent sequences of seqlen tokens at positions 0..seqlen-1.
 * Matrix products on OpenBLAS SGEMM.  hook may be NULL.
 * Returns 0, -ENOMEM, or the hook's value.
 */
int qf_tf_layer_forward(const struct qf_tf_config *c,
			const struct qf_tf_layer *ly, int layer, float *x,
			int nseq, int seqlen, qf_tf_hook hook, void *arg);
/*
 * The same for a layer with a MoE block: hook sees the attention's
 * linears, and in place of the MLP's, QF_TF_GATE once with the block's
 * input (every token); ehook (may be NULL) each expert's routed rows.
 * window as qf_tf_layer_forward chooses it (c->sliding_window, 0 when it
 * covers seqlen).  Calibration of experts (calib.c).
 */
int qf_tf_layer_forward_moe(const struct qf_tf_config *c,
			    const struct qf_tf_layer *ly, int layer,
			    float *x, int nseq, int seqlen, int window,
			    qf_tf_hook hook, qf_tf_expert_hook ehook,
			    void *arg);
/*
 * Rows of one matrix product of a linear over tokens: on the CPU the
 * forward runs every nn.Linear in blocks of QF_TF_ROWS rows counted from
 * its first token (on the GPU in one product: W is sent once).  A row's result must not depend on how many rows are computed
 * beside it, and OpenBLAS's Haswell SGEMM (the kernels of AMD parts, or
 * OPENBLAS_CORETYPE=Haswell) rounds a row otherwise with M: so a caller
 * that splits its tokens (calibration chunks) splits at multiples of
 * QF_TF_ROWS, and gets the bytes of one pass on any kernels.
 */
#define QF_TF_ROWS 512
/*
 * What qf_tf_layer_forward_part runs of a layer: the attention block
 * (x += its output), the MLP or MoE block, or both.
 */
#define QF_TF_ATTN_HALF 1
#define QF_TF_MLP_HALF 2
#define QF_TF_WHOLE_LAYER 3
/*
 * qf_tf_layer_forward restricted to part: calibration streams the
 * tokens through a layer in chunks and stops between the halves.  A MoE
 * layer's block is run without an expert hook.
 */
int qf_tf_layer_forward_part(const struct qf_tf_config *c,
			     const struct qf_tf_layer *ly, int layer, float *x,
			     int nseq, int seqlen, int part, qf_tf_hook hook,
			     void *arg);
/* The forward's scratch for one sequence of seqlen tokens, in bytes
 * (it grows linearly with the sequences of a call). */
int64_t qf_tf_layer_scratch_bytes(const struct qf_tf_config *c, int seqlen);
/*
 * Keep (on) the scratch of a layer call for the next call on the same
 * thread, instead of giving it back: a pass over many layers or chunks
 * then touches its memory once.  Off gives it back; drop gives it back
 * now and goes on keeping (before a phase whose peak must not hold it).
 * Returns the setting it replaces.
 */
bool qf_tf_scratch_keep(bool on);
void qf_tf_scratch_drop(void);
/*
 * Expert e's weights in a layer with a MoE block: QF_MOE_NLINEAR
 * pointers, [out, in] each (gate, up: [moe_inter, hidden]; down:
 * [hidden, moe_inter]; e == experts: the shared expert's, shared_inter),
 * the layer's own (a quantizer replaces them in place).  NULL when ly
 * has no MoE block or e is out of range.
 */
float **qf_tf_moe_weights(const struct qf_tf_layer *ly, int e);
/* Embedding lookup: x [n, hidden] for tokens ids[n]. */
int qf_tf_embed(const struct qf_model *m, const struct qf_tf_config *c,
		const int32_t *ids, int64_t n, float *x);
/*
 * Whole sequences of a calibration set's activations [nseq * seqlen,
 * hidden]: in memory at mem, or (mem NULL) in the file fd (spilled:
 * qf_spill_open), sequence s at byte s * row * sizeof(float).
 */
struct qf_tf_seqs {
	float *mem;
	int fd;
	int64_t row;		/* floats per sequence: seqlen * hidden */
};
/* Sequences [s0, s0 + n) copied into buf, or written from it.  Return 0
 * or -errno (-EIO: the file ends before them). */
int qf_tf_seqs_read(const struct qf_tf_seqs *s, int s0, int n, float *buf);
int qf_tf_seqs_write(const struct qf_tf_seqs *s, int s0, int n,
		     const float *buf);
/* Final RMSNorm + lm_head (or tied embeddings): logits [n, vocab]. */
int qf_tf_head(const struct qf_model *m, const struct qf_tf_config *c,
	       const float *x, int64_t n, float *logits);
/*
 * The same with the final norm and the head loaded once in fp32, for a
 * caller that runs it on many slices of rows (qf_tf_head reads the head
 * from the model at each call: a 0.6B model's is 155M values).
 * qf_tf_head_load holds it when its fp32 copy takes at most max_bytes
 * and it is not quantized, else leaves h empty (h->w NULL): 0, -ENOMEM
 * or a model read error.  qf_tf_head_run gives qf_tf_head's logits, from
 * h when it holds the head (h may be NULL); qf_tf_head_with needs it.
 */
struct qf_tf_headw {
	float *w;			/* [vocab, hidden] */
	float *norm;			/* [hidden] */
};
int qf_tf_head_load(const struct qf_model *m, const struct qf_tf_config *c,
		    size_t max_bytes, struct qf_tf_headw *h);
int qf_tf_head_run(const struct qf_model *m, const struct qf_tf_headw *h,
		   const struct qf_tf_config *c, const float *x, int64_t n,
		   float *logits);
int qf_tf_head_with(const struct qf_tf_headw *h,
		    const struct qf_tf_config *c, const float *x, int64_t n,
		    float *logits);
void qf_tf_head_free(struct qf_tf_headw *h);
/*
 * The residual stream after the last decoder layer (before the final
 * norm) for nseq sequences of seqlen tokens: the embedding, then each
 * layer loaded, run and freed in turn.  x [nseq * seqlen, hidden].
 * Returns 0, -ENOMEM or a model read error.
 */
int qf_tf_hidden(const struct qf_model *m, const struct qf_tf_config *c,
		 const int32_t *ids, int nseq, int seqlen, float *x);
/*
 * Whole-model logits for nseq sequences of seqlen tokens, layer by layer
 * (one layer's fp32 weights in memory at a time).  logits [n, vocab].
 */
int qf_tf_logits(const struct qf_model *m, const struct qf_tf_config *c,
		 const int32_t *ids, int nseq, int seqlen, float *logits);

struct qf_model;
struct qf_tf_config;
/*
 * log p(target[r]) under the final norm + lm_head of each row of x
 * [n, hidden], 0 where target[r] is -1 (forward.c; perplexity, multiple
 * choice and mixed precision's measured loss share it); the head from
 * hw where it holds it (qf_tf_head_load; NULL: read at each slice).
 * Returns 0, -ENOMEM, or qf_tf_head's error.
 */
int qf_head_logp(const struct qf_model *m, const struct qf_tf_headw *hw,
		 const struct qf_tf_config *c,
		 const float *x, const int32_t *target, int64_t n,
		 double *logp);
/*
 * KL(softmax(a) || softmax(b)) of one row of v logits, in double (nats,
 * at least 0): mixed precision's measured cost, eval's divergence from
 * a reference.
 */
double qf_logits_kl(const float *a, const float *b, int64_t v);
/*
 * The same for each of rows rows (a and b [rows, v]) into out[rows], the
 * rows shared among the online CPUs' threads (at most 8): each row's
 * value is qf_logits_kl's, whatever the split.
 */
void qf_logits_kl_rows(const float *a, const float *b, int64_t rows,
		       int64_t v, double *out);
/*
 * The same against one reference a [rows, v] for several b in turn: the
 * reference's side once (qf_logits_ref_rows: each row's max into ma, its
 * exp(a - max) into ea [rows, v], their sum into sa), then each b's
 * (qf_logits_kl_ref_rows): one exp per logit instead of two, and every
 * value qf_logits_kl's, bit for bit.
 */
void qf_logits_ref_rows(const float *a, int64_t rows, int64_t v, double *ea,
			double *ma, double *sa);
void qf_logits_kl_ref_rows(const float *a, const double *ea,
			   const double *ma, const double *sa,
			   const float *b, int64_t rows, int64_t v,
			   double *out);

#endif /* QF_NN_H */
