/*
 * calib.h - the public interface of quant/calib: calibration token sets
 * (from a text, or sampled from the model itself) and their hash,
 * per-linear input statistics, and the layer-by-layer driver that runs
 * the tokens through the decoder for a quantizer.
 *
 * calib uses nn (the forward pass), tok (a text's calibration windows
 * are the model's own tokens) and io.
 */
#ifndef QF_CALIB_H
#define QF_CALIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn.h"
#include "tok.h"

/* ------------------------------------------------------------------ */
/* calibration: token sets, their hash, the layer-by-layer driver       */

struct qf_calib {
	int32_t *ids;			/* [nseq * seqlen] */
	int nseq;
	int seqlen;
	uint8_t hash[32];		/* sha256(ids as int32 LE, nseq, seqlen) */
	char hash_hex[65];
	char source[256];		/* "text:<file>", "sampled:seed=<n>" */
};

/*
 * nseq windows of seqlen tokens from text tokenized with the model's own
 * tokenizer (no special tokens; BOS first in each window when the
 * tokenizer has one), spread evenly over the text.  Returns 0, -EINVAL
 * (text too short: fewer than nseq * (seqlen - 1) tokens), -ENOMEM.
 */
int qf_calib_from_text(const struct qf_tok *tok, const char *text, size_t len,
		       int nseq, int seqlen, struct qf_calib *out);
/*
 * Data-free: nseq sequences of seqlen tokens sampled from the model itself
 * (temperature 1, from BOS, a fixed seed), decoded with a KV cache.
 */
int qf_calib_sample(const struct qf_model *m, const struct qf_tf_config *c,
		    int32_t bos, int nseq, int seqlen, uint64_t seed,
		    struct qf_calib *out);
/* Fill hash/hash_hex from ids, nseq, seqlen. */
void qf_calib_hash(struct qf_calib *cs);
void qf_calib_free(struct qf_calib *cs);

/*
 * Statistics of one linear's inputs over the calibration set: what the
 * quantizers need.  h: X^T X in fp32 [in, in] (upper triangle valid,
 * then mirrored by qf_calib_stats_finish); mean_abs / mean_sq per input
 * channel; n rows seen.
 */
struct qf_lin_stats {
	int64_t in;
	int64_t n;			/* rows (tokens) accumulated */
	float *h;			/* [in, in] or NULL when not asked */
	double *sum_abs;		/* [in] */
	double *sum_sq;			/* [in] */
	float *xs;			/* [nxs, in]: the first input rows */
	int64_t nxs;			/* rows kept so far */
	int64_t xs_cap;			/* rows to keep (0: none) */
	int64_t block;			/* rows per X^T X product (0: all
					 * rows of a call at once) */
	bool h_borrowed;		/* h is another linear's of the same
					 * input (q's for k and v, gate's for
					 * up): read it, or give it back as
					 * it was; not freed */
};
int qf_lin_stats_init(struct qf_lin_stats *s, int64_t in, bool hessian);
/* Accumulate rows x [n, in] (SSYRK for h, block rows at a time). */
void qf_lin_stats_add(struct qf_lin_stats *s, const float *x, int64_t n);
/* Keep the first rows input rows in xs (0 or -ENOMEM). */
int qf_lin_stats_sample(struct qf_lin_stats *s, int64_t rows);
/* Mirror h to a full symmetric matrix. */
void qf_lin_stats_finish(struct qf_lin_stats *s);
void qf_lin_stats_free(struct qf_lin_stats *s);

/*
 * The driver.  For each decoder layer in order: load its fp32 weights,
 * then for each stage ({q,k,v}, {o}, {gate,up}, {down}) run the layer on
 * the calibration activations up to the stage's linears (the rest is
 * skipped), accumulating their stats once per distinct input, and call
 * quantize(), which replaces their weights in ly (fake-quantized fp32).
 * With sequential (GPTQ's true sequential) each stage sees the earlier
 * stages quantized; without, all stats come from the original layer and
 * quantize() runs after.  Finally the quantized layer produces the next
 * layer's input.
 *
 * Memory: one layer's fp32 weights, the stage's statistics, the
 * activations [nseq * seqlen, hidden] once (in a temporary file instead
 * when they need more than a third of ops->mem_bytes: spill_dir), and
 * the forward's scratch of one chunk of sequences.  When the sequences need
 * more than one chunk, true sequential runs a pass over the chunks per
 * stage (the attention and the MLP's gate/up twice).  When all fit in
 * one chunk, or the model has MoE layers (an expert's statistics need
 * all its routed tokens at once), true sequential runs in one pass over
 * all tokens, with the activations twice and the scratch of all tokens.
 * Not sequential, every stage's statistics are held at once, or, for a
 * whole-layer method down first (qf_calib_down_first), down's beside
 * the layer less down, then the six others'.
 * X^T X is summed a sequence at a time (qf_lin_stats.block) in every
 * case, so the chunks do not change the result.
 */
struct qf_calib_ops {
	bool hessian;			/* accumulate X^T X */
	bool sequential;		/* true-sequential stages */
	/* Replace the weights of linears lin[0..n) of layer l in ly. */
	int (*quantize)(void *arg, int layer, struct qf_tf_layer *ly,
			const enum qf_tf_linear *lin, int n,
			struct qf_lin_stats *stats);
	/*
	 * Optional: *cached = true after loading layer l's already
	 * quantized weights into ly (resume); its stages are skipped.
	 */
	int (*layer_cached)(void *arg, int layer, struct qf_tf_layer *ly,
			    bool *cached);
	/* Keep the first sample_rows input rows of each linear (xs). */
	int64_t sample_rows;
	/*
	 * Not sequential only: call quantize() once per layer with all
	 * seven linears and their statistics (AWQ's scales couple them);
	 * with a dense layer that qf_calib_down_first() says is too big
	 * for that, twice: down alone (its statistics only, the other
	 * linears' weights not held), then the six others (down's
	 * weights as the first call left them).  The method carries what
	 * couples them from the first call to the second; the statistics
	 * are the layer's as it was in both.
	 */
	bool whole_layer;
	/* Optional: seconds spent accumulating statistics (added to). */
	double *stats_seconds;
	/* Optional: the layer is done (x is its quantized output; NULL
	 * before the last layer when the input is spilled: spill_dir). */
	int (*layer_done)(void *arg, int layer, const float *x, int64_t ntok,
			  double seconds);
	/*
	 * Block reconstruction (BRECQ) instead of statistics: block() gets
	 * the layer's input as the quantized layers before produce it (x)
	 * and the full-precision layer's output on the full-precision
	 * input (y), both [nseq * seqlen, hidden], and replaces the
	 * weights in ly.  The driver keeps the two arrays in memory, or
	 * both in temporary files (spill_dir) when together they take
	 * more than a third of mem_bytes (qf_calib_spill_bytes), and
	 * moves them on a chunk of sequences at a time.
	 */
	int (*block)(void *arg, int layer, struct qf_tf_layer *ly,
		     const struct qf_tf_seqs *x, const struct qf_tf_seqs *y,
		     int nseq, int seqlen);
	/*
	 * MoE layers (sequential only; NULL: experts kept as they are):
	 * replace expert e's linears in w (qf_tf_moe_weights): k
	 * QF_MOE_GATE the gate and up projections, st[0] and st[1] the
	 * statistics of their (shared) input; k QF_MOE_DOWN the down
	 * projection, st[0].  routed: the calibration tokens the
	 * partially quantized model routes to e.  An expert routed fewer
	 * tokens than the linear's input width (its X^T X would be
	 * singular, GPTQ's updates driven by the damping) gets the
	 * statistics of every token of the layer through it instead:
	 * the block's input for gate/up, the expert's quantized gate/up
	 * activations of every token for down (llm-compressor's
	 * "calibrate all experts", for the experts that need it).
	 */
	int (*quantize_expert)(void *arg, int layer, int expert,
			       enum qf_moe_linear k, float **w,
			       struct qf_lin_stats *st, int64_t routed);
	/*
	 * Whole-layer methods (AWQ), a layer with a MoE block, after
	 * quantize: the block on its input xn [ntok, hidden] (the
	 * post-attention norm's output of the layer as it was, every
	 * token); the method replaces the block's weights in ly.  NULL:
	 * the block is left as it is.
	 */
	int (*quantize_moe)(void *arg, int layer, struct qf_tf_layer *ly,
			    const float *xn, int64_t ntok);
	/*
	 * Bytes of activations calibration may hold (0:
	 * QF_CALIB_MEM_BYTES): beyond one pass over all tokens, the tokens
	 * go through a dense layer in chunks of the sequences that fit
	 * (qf_calib_chunk_seqs), so the memory of calibration does not grow
	 * with the intermediate width times the tokens.  See qf_calib_run.
	 */
	int64_t mem_bytes;
	/*
	 * Streamed, a layer input [nseq * seqlen, hidden] of more than a
	 * third of mem_bytes is not held: it lives in an unnamed
	 * temporary file in this directory (NULL, or not writable:
	 * $TMPDIR, else /tmp),
	 * read and written a chunk at a time (the page cache keeps it
	 * while memory allows).  layer_done() then gets x only for the
	 * last layer (NULL before it).
	 */
	const char *spill_dir;
	/*
	 * quantize() leaves the weights as they are (kq's importance
	 * matrix and GPTQ factors, mixed precision's sensitivities): a
	 * dense layer's statistics pass then moves the activations on,
	 * one forward per layer.  Not with sequential.
	 */
	bool unchanged;
};

#define QF_CALIB_MEM_BYTES ((int64_t)3 << 30)
/* Sequences of seqlen tokens per chunk within mem_bytes (at least 1, at
 * most nseq: see calib.c). */
int qf_calib_chunk_seqs(const struct qf_tf_config *c, int nseq, int seqlen,
			int64_t mem_bytes);
/*
 * The few-token rule's down inputs: silu(x Wg^T) * (x Wu^T) of every
 * row of x [ntok, hidden] with an expert's gate/up w (qf_tf_moe_weights)
 * added to st (in: the expert's width).  Returns 0 or -ENOMEM.
 */
int qf_calib_expert_acts(const struct qf_tf_config *c, float *const *w,
			 const float *x, int64_t ntok, struct qf_lin_stats *st);
/*
 * Whether a whole-layer method gets a dense layer in two calls, down
 * first (see whole_layer): when the layer's fp32 weights and the X^T X
 * of each distinct input (q/k/v's, o's, gate/up's, down's) together take
 * more than half of ops->mem_bytes.  It costs one more pass over the
 * tokens through the attention; it saves holding down's X^T X (the
 * biggest: intermediate width squared) beside the others and the whole
 * layer.
 */
bool qf_calib_down_first(const struct qf_tf_config *c,
			 const struct qf_calib_ops *ops);
/* Bytes of the layer input qf_calib_run keeps in a temporary file
 * (ops->spill_dir), 0 when it holds them in memory; with ops->block,
 * of the two arrays block() gets. */
int64_t qf_calib_spill_bytes(const struct qf_tf_config *c,
			     const struct qf_calib *cs,
			     const struct qf_calib_ops *ops);
int qf_calib_run(const struct qf_model *m, const struct qf_tf_config *c,
		 const struct qf_calib *cs, const struct qf_calib_ops *ops,
		 void *arg);

#endif /* QF_CALIB_H */
