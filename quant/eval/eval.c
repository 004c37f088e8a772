/*
 * eval.c - perplexity of a text under a model: how every method proves
 * its quality.
 *
 * Protocol (shared/data/README.md): the text is tokenized whole without
 * special tokens and cut into non-overlapping chunks of ctx - 1 tokens,
 * each run as [BOS] + chunk, so every chunk token is predicted exactly
 * once with at most ctx - 1 tokens of context.  Without a BOS token the
 * chunks are ctx tokens and their first token is context only.
 *
 * Windows run in batches through the decoder layer by layer (one layer's
 * fp32 weights in memory); the head runs in row slices so a large
 * vocabulary never needs a [tokens, vocab] buffer.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

#define ACT_BUDGET (256u << 20)		/* activation bytes per batch */

/* Sum of -log p(next) over rows [0, n) whose target is not -1. */
static int head_nll(const struct qf_model *m, const struct qf_tf_config *c,
		    const float *x, const int32_t *target, int64_t n,
		    double *sum)
{
	double *logp = malloc((size_t)(n ? n : 1) * sizeof(*logp));
	int64_t r;
	int ret;

	if (!logp)
		return -ENOMEM;
	ret = qf_head_logp(m, c, x, target, n, logp);
	for (r = 0; r < n && !ret; r++)
		*sum -= logp[r];
	free(logp);
	return ret;
}

/* One batch of nseq windows of seqlen tokens: ids, targets (-1 = none). */
static int run_batch(const struct qf_model *m, const struct qf_tf_config *c,
		     const int32_t *ids, const int32_t *target, int nseq,
		     int seqlen, double *sum)
{
	int64_t n = (int64_t)nseq * seqlen;
	float *x = malloc((size_t)(n * c->hidden) * sizeof(*x));
	int ret;

	if (!x)
		return -ENOMEM;
	ret = qf_tf_hidden(m, c, ids, nseq, seqlen, x);
	if (!ret)
		ret = head_nll(m, c, x, target, n, sum);
	free(x);
	return ret;
}

int qf_eval_ppl(const struct qf_model *m, const struct qf_tok *tok,
		const char *text, size_t len, int ctx,
		struct qf_eval_result *out)
{
	struct qf_tf_config c;
	int32_t bos = qf_tok_bos(tok);
	int32_t *toks = NULL, *ids = NULL, *tgt = NULL;
	int64_t chunk, nchunks, per_batch, w0;
	size_t ntok = 0;
	double sum = 0, t0 = qf_now();
	size_t i;
	int ret;

	memset(out, 0, sizeof(*out));
	ret = qf_tf_config_parse(m, &c);
	if (ret < 0)
		return ret;
	if (ctx < 2)
		return -EINVAL;
	ret = qf_tok_encode(tok, text, len, false, &toks, &ntok);
	if (ret < 0)
		return ret;
	chunk = bos >= 0 ? ctx - 1 : ctx;
	if ((int64_t)ntok < chunk + (bos >= 0 ? 0 : 1)) {
		free(toks);
		return -EINVAL;
	}
	for (i = 0; i < ntok; i++)
		if (toks[i] < 0 || toks[i] >= c.vocab) {
			free(toks);
			return QF_EFORMAT;	/* tokenizer and model disagree */
		}
	nchunks = ((int64_t)ntok + chunk - 1) / chunk;
	per_batch = ACT_BUDGET / ((int64_t)ctx * c.hidden * 4 * 3);
	per_batch = per_batch < 1 ? 1 : per_batch;
	ids = malloc((size_t)(per_batch * ctx) * sizeof(*ids));
	tgt = malloc((size_t)(per_batch * ctx) * sizeof(*tgt));
	if (!ids || !tgt) {
		ret = -ENOMEM;
		goto out_free;
	}
	/* full windows in batches, then the last (shorter) one alone */
	for (w0 = 0; w0 < nchunks && !ret;) {
		int64_t left = (int64_t)ntok - w0 * chunk;
		int64_t nb = 0, L = 0, k, j;

		if (left < chunk) {
			nb = 1;
			L = left + (bos >= 0 ? 1 : 0);
		} else {
			nb = (int64_t)ntok / chunk - w0;
			nb = nb > per_batch ? per_batch : nb;
			L = ctx;
		}
		for (k = 0; k < nb; k++) {
			const int32_t *src = toks + (w0 + k) * chunk;
			int32_t *d = ids + k * L, *t = tgt + k * L;
			int64_t off = bos >= 0 ? 1 : 0;

			if (bos >= 0)
				d[0] = bos;
			for (j = 0; j < L - off; j++)
				d[off + j] = src[j];
			/* position p predicts token p + 1 of the window */
			for (j = 0; j < L; j++)
				t[j] = j + 1 < L ? d[j + 1] : -1;
			out->tokens += L - 1;
		}
		ret = run_batch(m, &c, ids, tgt, (int)nb, (int)L, &sum);
		out->windows += (int)nb;
		w0 += nb;
	}
	if (ret < 0)
		goto out_free;
	out->ctx = ctx;
	out->nll = sum / (double)out->tokens;
	out->ppl = exp(out->nll);
	out->seconds = qf_now() - t0;
	out->weight_bytes = m->weight_bytes;
out_free:
	free(toks);
	free(ids);
	free(tgt);
	return ret;
}
