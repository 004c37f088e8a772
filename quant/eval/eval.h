/*
 * eval.h - the public interface of quant/eval: the quality figures of a
 * model or variant.  Perplexity, zero-shot multiple choice, and the
 * attention-score error of a variant against its source.
 *
 * eval uses nn, tok and io; eval_scores.c also uses method for one
 * thing, the score error of AWQ's GQA ReFlip (qf_awq_score_error), so
 * the held-out check measures exactly what ReFlip minimises.
 */
#ifndef QF_EVAL_H
#define QF_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn.h"
#include "tok.h"

/* ------------------------------------------------------------------ */
/* evaluation                                                         */

struct qf_eval_result {
	int64_t tokens;			/* predicted tokens */
	int windows;			/* windows evaluated */
	int ctx;			/* window length incl. BOS */
	double nll;			/* mean negative log-likelihood, nats */
	double ppl;			/* exp(nll) */
	double seconds;			/* wall time of the forward passes */
	uint64_t weight_bytes;		/* bytes of the weight files */
	/* qf_eval_kld only, over the same predicted positions: */
	double kld;			/* mean KL(ref || model), nats */
	double top1;			/* fraction with the same argmax */
	double ref_nll;			/* the reference's mean nll */
};
/*
 * Perplexity of text under model m: the text is tokenized whole (no
 * special tokens) and cut into non-overlapping chunks of ctx - 1 tokens,
 * each run as [BOS] + chunk (or the chunk alone without a BOS); every
 * chunk token is predicted once.  The protocol of shared/data/README.md.
 */
int qf_eval_ppl(const struct qf_model *m, const struct qf_tok *tok,
		const char *text, size_t len, int ctx,
		struct qf_eval_result *out);
/*
 * The same, and how far m's next-token distributions are from those of
 * a reference ref (its source, say) at every predicted position: the
 * mean KL(p_ref || p_m) in nats, the fraction of positions where both
 * rank the same token first, and ref's own nll (llama-perplexity's
 * --kl-divergence figures).  m and ref need the same vocabulary and
 * hidden width (QF_EFORMAT otherwise).
 */
int qf_eval_kld(const struct qf_model *m, const struct qf_model *ref,
		const struct qf_tok *tok, const char *text, size_t len,
		int ctx, struct qf_eval_result *out);

struct qf_mc_result {
	int questions;			/* questions scored */
	int correct;			/* right by mean log-lik per token */
	int correct_raw;		/* right by summed log-likelihood */
	double accuracy;		/* correct / questions */
	double accuracy_raw;		/* correct_raw / questions */
	int64_t tokens;			/* tokens run, every choice */
	double seconds;			/* wall time incl. tokenization */
};
/*
 * Zero-shot multiple-choice accuracy (eval_mc.c): jsonl holds one
 * {"question": text, "choices": [texts], "answer": 0-based index} per
 * line (blank lines skipped); the first limit questions are scored
 * (limit <= 0: all).  Each choice is scored by the log-likelihood of
 * " " + choice after "Question: <q>\nAnswer:" (BOS first when the
 * tokenizer has one, at most ctx tokens, the prompt cut from the left),
 * divided by its token count; the best choice is the prediction.
 * Returns 0, QF_EFORMAT (a malformed line, logged), -EINVAL (no
 * question, ctx < 2), QF_EUNSUPPORTED, -ENOMEM.
 */
int qf_eval_mc(const struct qf_model *m, const struct qf_tok *tok,
	       const char *jsonl, size_t len, int limit, int ctx,
	       struct qf_mc_result *out);

/*
 * Attention-score error of variant var against its source src on text:
 * per decoder layer (err [layers]), the relative error of the pre-RoPE
 * scores over all token pairs of each of the first `windows` windows of
 * ctx tokens (BOS + ctx - 1), averaged; var's q/k are read dequantized
 * and carried to the source's input domain (AWQ folds scales into
 * input_layernorm).  Returns 0, -EINVAL (text too short), QF_EFORMAT,
 * QF_EUNSUPPORTED, -ENOMEM.
 */
int qf_eval_scores(const struct qf_model *src, const struct qf_model *var,
		   const struct qf_tok *tok, const char *text, size_t len,
		   int ctx, int windows, double *err);

#endif /* QF_EVAL_H */
