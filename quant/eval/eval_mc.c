/*
 * eval_mc.c - zero-shot multiple-choice accuracy: the second quality
 * figure of `quantfs report`, next to perplexity.
 *
 * The usual zero-shot method (GPT-3, lm-evaluation-harness): each choice
 * is scored by the log-likelihood of its tokens as a continuation of the
 * prompt "Question: <q>\nAnswer:", the continuation being " " + choice.
 * The continuation tokens are those of encode(prompt + continuation)
 * past encode(prompt) (the harness's split); where the two encodings
 * disagree on the prompt the continuation is encoded alone, so every
 * choice of a question sees the same prompt tokens.  A BOS token comes
 * first when the tokenizer has one (as in qf_eval_ppl), and a sequence
 * longer than ctx loses prompt tokens from the left.
 *
 * The predicted choice maximizes the mean log-likelihood per
 * continuation token (length-normalized); the plain sum is reported too.
 * Ties go to the first choice.
 *
 * Sequences run sorted by length in batches padded on the right (the
 * causal mask keeps padding out of every scored position), one decoder
 * layer's fp32 weights in memory at a time; the head runs only on the
 * rows that predict a continuation token.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

#define ACT_BUDGET (256u << 20)		/* activation bytes per batch */

struct mc_seq {
	int32_t *ids;			/* [len]: BOS, prompt, continuation */
	int len;
	int cont;			/* first continuation token */
	int question;
	double sum;			/* OUT: its log-likelihood */
};

struct mc_set {
	struct mc_seq *seq;
	size_t nseq;
	size_t cap;
	int *answer;			/* [questions] */
	int *first;			/* [questions + 1]: their sequences */
	int questions;
};

static void mc_set_free(struct mc_set *s)
{
	size_t i;

	for (i = 0; i < s->nseq; i++)
		free(s->seq[i].ids);
	free(s->seq);
	free(s->answer);
	free(s->first);
}

static bool same_prefix(const int32_t *a, size_t na, const int32_t *p,
			size_t np)
{
	return na > np && !memcmp(a, p, np * sizeof(*p));
}

/* One choice: BOS + prompt ids + continuation ids, cut to ctx. */
static int add_seq(struct mc_set *s, const struct qf_tok *tok,
		   const int32_t *pids, size_t np, const char *prompt,
		   const char *choice, int ctx, int question)
{
	struct qf_buf whole = QF_BUF_INIT;
	int32_t bos = qf_tok_bos(tok), *w = NULL, *c = NULL, *ids;
	size_t nw = 0, nc = 0, off, n, drop = 0;
	const int32_t *cont = NULL;
	struct mc_seq *q;
	int ret;

	qf_buf_addf(&whole, "%s %s", prompt, choice);
	if (!whole.data)
		return -ENOMEM;
	ret = qf_tok_encode(tok, whole.data, whole.len, false, &w, &nw);
	if (!ret && same_prefix(w, nw, pids, np)) {
		cont = w + np;
		nc = nw - np;
	} else if (!ret) {
		ret = qf_tok_encode(tok, whole.data + strlen(prompt),
				    whole.len - strlen(prompt), false, &c, &nc);
		cont = c;
	}
	qf_buf_release(&whole);
	if (ret < 0)
		goto out_free;
	off = bos >= 0 ? 1 : 0;
	n = off + np + nc;
	if (n > (size_t)ctx)
		drop = n - (size_t)ctx;
	if (s->nseq == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 64;
		struct mc_seq *g = realloc(s->seq, cap * sizeof(*g));

		if (!g) {
			ret = -ENOMEM;
			goto out_free;
		}
		s->seq = g;
		s->cap = cap;
	}
	ids = malloc((n + 1) * sizeof(*ids));
	if (!ids) {
		ret = -ENOMEM;
		goto out_free;
	}
	if (off)
		ids[0] = bos;
	memcpy(ids + off, pids, np * sizeof(*ids));
	memcpy(ids + off + np, cont, nc * sizeof(*ids));
	/* keep BOS; the oldest tokens after it go first */
	memmove(ids + off, ids + off + drop, (n - off - drop) * sizeof(*ids));
	q = &s->seq[s->nseq++];
	q->ids = ids;
	q->len = (int)(n - drop);
	q->cont = (int)(off + np) - (int)drop;
	q->cont = q->cont < 1 ? 1 : q->cont;
	q->question = question;
	q->sum = 0;
out_free:
	free(w);
	free(c);
	return ret;
}

/* One JSONL line: {"question": str, "choices": [str, ...], "answer": i}. */
static int add_question(struct mc_set *s, const struct qf_tok *tok,
			const cJSON *o, int ctx, int line)
{
	const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "question");
	const cJSON *ch = cJSON_GetObjectItemCaseSensitive(o, "choices");
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "answer");
	struct qf_buf prompt = QF_BUF_INIT;
	int32_t *pids = NULL;
	size_t np = 0;
	const cJSON *it;
	int nch, ret = 0;

	nch = cJSON_IsArray(ch) ? cJSON_GetArraySize(ch) : 0;
	if (!cJSON_IsString(q) || nch < 2 || !cJSON_IsNumber(a) ||
	    a->valuedouble != (double)a->valueint || a->valueint < 0 ||
	    a->valueint >= nch) {
		qf_err("choices line %d: want {\"question\": text, "
		       "\"choices\": [two or more texts], \"answer\": "
		       "0-based index}", line);
		return QF_EFORMAT;
	}
	cJSON_ArrayForEach(it, ch)
		if (!cJSON_IsString(it)) {
			qf_err("choices line %d: a choice is not a string",
			       line);
			return QF_EFORMAT;
		}
	qf_buf_addf(&prompt, "Question: %s\nAnswer:", q->valuestring);
	if (!prompt.data)
		return -ENOMEM;
	ret = qf_tok_encode(tok, prompt.data, prompt.len, false, &pids, &np);
	s->first[s->questions] = (int)s->nseq;
	s->answer[s->questions] = a->valueint;
	cJSON_ArrayForEach(it, ch) {
		if (ret < 0)
			break;
		ret = add_seq(s, tok, pids, np, prompt.data, it->valuestring,
			      ctx, s->questions);
	}
	if (!ret)
		s->first[++s->questions] = (int)s->nseq;
	free(pids);
	qf_buf_release(&prompt);
	return ret;
}

static int mc_parse(struct mc_set *s, const struct qf_tok *tok,
		    const char *text, size_t len, int limit, int ctx)
{
	size_t pos = 0, lines = 0, i;
	int line = 0, ret = 0;

	for (i = 0; i < len; i++)
		lines += text[i] == '\n';
	lines++;
	if (limit > 0 && (size_t)limit < lines)
		lines = (size_t)limit;
	s->answer = calloc(lines, sizeof(*s->answer));
	s->first = calloc(lines + 1, sizeof(*s->first));
	if (!s->answer || !s->first)
		return -ENOMEM;
	while (pos < len && !ret && (limit <= 0 || s->questions < limit)) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		size_t end = nl ? (size_t)(nl - text) : len, k;
		cJSON *o;

		line++;
		for (k = pos; k < end && strchr(" \t\r", text[k]); k++)
			;
		if (k < end) {
			o = cJSON_ParseWithLength(text + pos, end - pos);
			if (!cJSON_IsObject(o)) {
				qf_err("choices line %d: not a JSON object",
				       line);
				ret = QF_EFORMAT;
			} else {
				ret = add_question(s, tok, o, ctx, line);
			}
			cJSON_Delete(o);
		}
		pos = end + 1;
	}
	if (!ret && !s->questions)
		ret = -EINVAL;
	return ret;
}

/* Sequences ord[0..nb) (sorted by length, the last the longest). */
static int run_batch(const struct qf_model *m, const struct qf_tf_config *c,
		     struct mc_set *s, const size_t *ord, int nb)
{
	int L = s->seq[ord[nb - 1]].len, b, p;
	int64_t n = (int64_t)nb * L, rows = 0, k = 0;
	int32_t *ids = malloc((size_t)n * sizeof(*ids));
	int32_t *tgt = malloc((size_t)n * sizeof(*tgt));
	float *x = malloc((size_t)(n * c->hidden) * sizeof(*x));
	double *logp = malloc((size_t)n * sizeof(*logp));
	int ret = 0;

	if (!ids || !tgt || !x || !logp) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (b = 0; b < nb; b++) {
		const struct mc_seq *q = &s->seq[ord[b]];

		for (p = 0; p < L; p++)	/* pad with a real id */
			ids[(int64_t)b * L + p] = q->ids[p < q->len ? p : 0];
	}
	ret = qf_tf_hidden(m, c, ids, nb, L, x);
	/* keep the rows that predict a continuation token, in place */
	for (b = 0; b < nb && !ret; b++) {
		const struct mc_seq *q = &s->seq[ord[b]];

		for (p = q->cont - 1; p < q->len - 1; p++) {
			memmove(x + rows * c->hidden,
				x + ((int64_t)b * L + p) * c->hidden,
				(size_t)c->hidden * sizeof(*x));
			tgt[rows++] = q->ids[p + 1];
		}
	}
	if (!ret && rows)
		ret = qf_head_logp(m, NULL, c, x, tgt, rows, logp);
	for (b = 0; b < nb && !ret; b++) {
		struct mc_seq *q = &s->seq[ord[b]];

		for (p = q->cont - 1; p < q->len - 1; p++)
			q->sum += logp[k++];
	}
out_free:
	free(ids);
	free(tgt);
	free(x);
	free(logp);
	return ret;
}

struct ord {
	int len;
	size_t i;			/* index into the set's sequences */
};

static int by_len(const void *a, const void *b)
{
	const struct ord *x = a, *y = b;

	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

static int run_all(const struct qf_model *m, const struct qf_tf_config *c,
		   struct mc_set *s, int64_t *tokens)
{
	int64_t budget = ACT_BUDGET / ((int64_t)c->hidden * 4 * 3);
	struct ord *o = malloc(s->nseq * sizeof(*o));
	size_t *idx = malloc(s->nseq * sizeof(*idx));
	size_t i, j;
	int ret = 0;

	if (!o || !idx) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (i = 0; i < s->nseq; i++) {
		o[i] = (struct ord){ s->seq[i].len, i };
		*tokens += s->seq[i].len;
	}
	qsort(o, s->nseq, sizeof(*o), by_len);
	for (i = 0; i < s->nseq; i++)
		idx[i] = o[i].i;
	/* a batch ends at the budget, or where padding to its longest
	 * sequence would waste more than a fifth of the work: sorted
	 * lengths keep batches few (each loads every layer once) */
	for (i = 0; i < s->nseq && !ret; i = j) {
		int64_t sum = o[i].len;

		for (j = i + 1; j < s->nseq; j++) {
			int64_t padded = (int64_t)(j + 1 - i) * o[j].len;

			if (padded > budget ||
			    4 * padded > 5 * (sum + o[j].len))
				break;
			sum += o[j].len;
		}
		ret = run_batch(m, c, s, idx + i, (int)(j - i));
	}
out_free:
	free(o);
	free(idx);
	return ret;
}

int qf_eval_mc(const struct qf_model *m, const struct qf_tok *tok,
	       const char *jsonl, size_t len, int limit, int ctx,
	       struct qf_mc_result *out)
{
	struct mc_set s = { 0 };
	struct qf_tf_config c;
	double t0 = qf_now();
	size_t i;
	int qi, ret;

	memset(out, 0, sizeof(*out));
	if (ctx < 2)
		return -EINVAL;
	ret = qf_tf_config_parse(m, &c);
	if (!ret)
		ret = mc_parse(&s, tok, jsonl, len, limit, ctx);
	for (i = 0; i < s.nseq && !ret; i++) {
		int k;

		/* tokenizer and model disagree */
		for (k = 0; k < s.seq[i].len; k++)
			if (s.seq[i].ids[k] < 0 || s.seq[i].ids[k] >= c.vocab)
				ret = QF_EFORMAT;
	}
	if (!ret)
		ret = run_all(m, &c, &s, &out->tokens);
	for (qi = 0; qi < s.questions && !ret; qi++) {
		int best = -1, best_raw = -1, k;
		double bn = 0, br = 0;

		for (k = s.first[qi]; k < s.first[qi + 1]; k++) {
			const struct mc_seq *q = &s.seq[k];
			int nc = q->len - q->cont;
			double norm = nc > 0 ? q->sum / nc : -INFINITY;
			double raw = nc > 0 ? q->sum : -INFINITY;

			if (best < 0 || norm > bn) {
				best = k - s.first[qi];
				bn = norm;
			}
			if (best_raw < 0 || raw > br) {
				best_raw = k - s.first[qi];
				br = raw;
			}
		}
		out->correct += best == s.answer[qi];
		out->correct_raw += best_raw == s.answer[qi];
	}
	if (!ret) {
		out->questions = s.questions;
		out->accuracy = (double)out->correct / s.questions;
		out->accuracy_raw = (double)out->correct_raw / s.questions;
		out->seconds = qf_now() - t0;
	}
	mc_set_free(&s);
	return ret;
}
