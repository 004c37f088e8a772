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
 * vocabulary never needs a [tokens, vocab] buffer.  Against a reference
 * (qf_eval_kld) the same windows run through both models and the KL
 * divergence is summed over the positions that predict a token.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

#define ACT_BUDGET (256u << 20)		/* activation bytes per batch */
#define KL_BUDGET (64u << 20)		/* bytes of each logits slice (two) */
#define HEAD_HOLD (1u << 30)		/* a head held in fp32 at most */

/* The heads of the evaluated model and of its reference, held in fp32
 * for the whole run when each fits HEAD_HOLD (else read per slice). */
struct heads {
	struct qf_tf_headw m, ref;
};

/* Sum of -log p(next) over rows [0, n) whose target is not -1. */
static int head_nll(const struct qf_model *m, const struct qf_tf_headw *hw,
		    const struct qf_tf_config *c, const float *x,
		    const int32_t *target, int64_t n, double *sum)
{
	double *logp = malloc((size_t)(n ? n : 1) * sizeof(*logp));
	int64_t r;
	int ret;

	if (!logp)
		return -ENOMEM;
	ret = qf_head_logp(m, hw, c, x, target, n, logp);
	for (r = 0; r < n && !ret; r++)
		*sum -= logp[r];
	free(logp);
	return ret;
}

/* What one pass sums: the model's, and with a reference its figures. */
struct sums {
	double nll, ref_nll, kl;
	int64_t top1;
};

static int64_t argmax(const float *l, int64_t v)
{
	int64_t j, best = 0;

	for (j = 1; j < v; j++)
		best = l[j] > l[best] ? j : best;
	return best;
}

/* KL(ref || m) and same argmax over the n rows of x (m's) and xr (ref's)
 * whose target is not -1, the heads run on slices of rows. */
static int head_kl(const struct qf_model *m, const struct qf_model *ref,
		   const struct heads *hd, const struct qf_tf_config *c,
		   const struct qf_tf_config *cr, const float *x,
		   const float *xr, const int32_t *target, int64_t n,
		   struct sums *s)
{
	int64_t rows = KL_BUDGET / ((int64_t)c->vocab * 4), r0, r;
	float *la, *lb;
	double *kl;
	int ret = 0;

	rows = rows < 1 ? 1 : rows > n ? n : rows;
	la = malloc((size_t)(rows * c->vocab) * sizeof(*la));
	lb = malloc((size_t)(rows * c->vocab) * sizeof(*lb));
	kl = malloc((size_t)rows * sizeof(*kl));
	if (!la || !lb || !kl)
		ret = -ENOMEM;
	for (r0 = 0; r0 < n && !ret; r0 += rows) {
		int64_t k = n - r0 < rows ? n - r0 : rows;

		ret = qf_tf_head_run(ref, &hd->ref, cr, xr + r0 * c->hidden, k,
				     la);
		if (!ret)
			ret = qf_tf_head_run(m, &hd->m, c, x + r0 * c->hidden, k,
					     lb);
		if (!ret)
			qf_logits_kl_rows(la, lb, k, c->vocab, kl);
		for (r = 0; r < k && !ret; r++) {
			const float *a = la + r * c->vocab;
			const float *b = lb + r * c->vocab;

			if (target[r0 + r] < 0)
				continue;
			s->kl += kl[r];
			s->top1 += argmax(a, c->vocab) == argmax(b, c->vocab);
		}
	}
	free(la);
	free(lb);
	free(kl);
	return ret;
}

/* One batch of nseq windows of seqlen tokens: ids, targets (-1 = none);
 * with ref (NULL: none) its hidden states and the divergence too. */
static int run_batch(const struct qf_model *m, const struct qf_model *ref,
		     const struct heads *hd, const struct qf_tf_config *c,
		     const struct qf_tf_config *cr, const int32_t *ids,
		     const int32_t *target, int nseq, int seqlen,
		     struct sums *s)
{
	int64_t n = (int64_t)nseq * seqlen;
	float *x = malloc((size_t)(n * c->hidden) * sizeof(*x));
	float *xr = ref ? malloc((size_t)(n * c->hidden) * sizeof(*xr)) : NULL;
	int ret = x && (xr || !ref) ? 0 : -ENOMEM;

	if (!ret)
		ret = qf_tf_hidden(m, c, ids, nseq, seqlen, x);
	if (!ret)
		ret = head_nll(m, &hd->m, c, x, target, n, &s->nll);
	if (!ret && ref)
		ret = qf_tf_hidden(ref, cr, ids, nseq, seqlen, xr);
	if (!ret && ref)
		ret = head_nll(ref, &hd->ref, cr, xr, target, n, &s->ref_nll);
	if (!ret && ref)
		ret = head_kl(m, ref, hd, c, cr, x, xr, target, n, s);
	free(x);
	free(xr);
	return ret;
}

static int eval_run(const struct qf_model *m, const struct qf_model *ref,
		    const struct qf_tok *tok, const char *text, size_t len,
		    int ctx, struct qf_eval_result *out)
{
	struct qf_tf_config c, cr;
	struct heads hd = { { 0 }, { 0 } };
	struct sums sum = { 0 };
	int32_t bos = qf_tok_bos(tok);
	int32_t *toks = NULL, *ids = NULL, *tgt = NULL;
	int64_t chunk, nchunks, per_batch, w0;
	size_t ntok = 0;
	double t0 = qf_now();
	size_t i;
	int ret;

	memset(out, 0, sizeof(*out));
	ret = qf_tf_config_parse(m, &c);
	if (!ret && ref)
		ret = qf_tf_config_parse(ref, &cr);
	if (ret < 0)
		return ret;
	if (ref && (cr.vocab != c.vocab || cr.hidden != c.hidden))
		return QF_EFORMAT;	/* not the same vocabulary or width */
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
	per_batch = ACT_BUDGET / ((int64_t)ctx * c.hidden * 4 * (ref ? 6 : 3));
	per_batch = per_batch < 1 ? 1 : per_batch;
	ids = malloc((size_t)(per_batch * ctx) * sizeof(*ids));
	tgt = malloc((size_t)(per_batch * ctx) * sizeof(*tgt));
	ret = ids && tgt ? qf_tf_head_load(m, &c, HEAD_HOLD, &hd.m) : -ENOMEM;
	if (!ret && ref)
		ret = qf_tf_head_load(ref, &cr, HEAD_HOLD, &hd.ref);
	if (ret < 0)
		goto out_free;
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
		ret = run_batch(m, ref, &hd, &c, &cr, ids, tgt, (int)nb,
				(int)L, &sum);
		out->windows += (int)nb;
		w0 += nb;
	}
	if (ret < 0)
		goto out_free;
	out->ctx = ctx;
	out->nll = sum.nll / (double)out->tokens;
	out->ppl = exp(out->nll);
	out->kld = sum.kl / (double)out->tokens;
	out->top1 = (double)sum.top1 / (double)out->tokens;
	out->ref_nll = sum.ref_nll / (double)out->tokens;
	out->seconds = qf_now() - t0;
	out->weight_bytes = m->weight_bytes;
out_free:
	qf_tf_head_free(&hd.m);
	qf_tf_head_free(&hd.ref);
	free(toks);
	free(ids);
	free(tgt);
	return ret;
}

int qf_eval_ppl(const struct qf_model *m, const struct qf_tok *tok,
		const char *text, size_t len, int ctx,
		struct qf_eval_result *out)
{
	return eval_run(m, NULL, tok, text, len, ctx, out);
}

int qf_eval_kld(const struct qf_model *m, const struct qf_model *ref,
		const struct qf_tok *tok, const char *text, size_t len,
		int ctx, struct qf_eval_result *out)
{
	return eval_run(m, ref, tok, text, len, ctx, out);
}
