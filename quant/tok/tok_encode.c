/*
 * tok_encode.c - encoding with a loaded tokenizer: the text is split on
 * the added tokens (raw ones first, then normalized ones inside each
 * normalized piece, longest match first, with their lstrip / rstrip as
 * @huggingface/tokenizers applies them), and every other piece goes
 * through the pipeline of tok_bpe.c between the post-processor's ids.
 */
#include <stdlib.h>
#include <string.h>

#include "tok.h"
#include "tok_i.h"

static const char *added_text(const struct qf_tok_added *a, bool norm,
			      size_t *len)
{
	*len = norm ? a->nlen : a->len;
	return norm ? a->norm : a->content;
}

int qf_tok_matcher_init(struct qf_tok *t, struct qf_tok_matcher *m,
			bool norm)
{
	size_t k, i, j, len;
	uint32_t c;

	m->norm = norm;
	m->idx = malloc((t->nadded + 1) * sizeof(*m->idx));
	if (!m->idx)
		return -ENOMEM;
	for (k = 0; k < t->nadded; k++) {
		const struct qf_tok_added *a = &t->added[k];

		if ((a->normalized && t->nnorm) == norm &&
		    added_text(a, norm, &len) && len)
			m->idx[m->n++] = (uint32_t)k;
	}
	/* insertion sort by first byte, then longest first */
	for (i = 1; i < m->n; i++) {
		uint32_t x = m->idx[i];
		size_t lx;
		const char *sx = added_text(&t->added[x], norm, &lx);

		for (j = i; j > 0; j--) {
			size_t ly;
			const char *sy = added_text(&t->added[m->idx[j - 1]],
						    norm, &ly);

			if ((uint8_t)sy[0] < (uint8_t)sx[0] ||
			    (sy[0] == sx[0] && ly >= lx))
				break;
			m->idx[j] = m->idx[j - 1];
		}
		m->idx[j] = x;
	}
	for (c = 0, i = 0; c <= 256; c++) {
		while (i < m->n &&
		       (uint8_t)added_text(&t->added[m->idx[i]], norm, &len)[0] <
			       c)
			i++;
		m->start[c] = (uint32_t)i;
	}
	return 0;
}

/* Longest added token at s[0..n), or -1. */
static int match_at(const struct qf_tok *t, const struct qf_tok_matcher *m,
		    const char *s, size_t n)
{
	uint8_t c = (uint8_t)s[0];
	uint32_t i;

	for (i = m->start[c]; i < m->start[c + 1]; i++) {
		size_t len;
		const char *a = added_text(&t->added[m->idx[i]], m->norm, &len);

		if (len <= n && !memcmp(a, s, len))
			return (int)m->idx[i];
	}
	return -1;
}

struct span {
	size_t off;
	size_t len;
	int added;		/* index in t->added, or -1 for text */
};

struct spans {
	struct span *v;
	size_t n;
	size_t cap;
};

static int span_push(struct spans *sp, size_t off, size_t len, int added)
{
	if (qf_grow(&sp->v, sp->n + 1, &sp->cap, 16, sizeof(*sp->v)))
		return -ENOMEM;
	sp->v[sp->n].off = off;
	sp->v[sp->n].len = len;
	sp->v[sp->n].added = added;
	sp->n++;
	return 0;
}

/* JavaScript's trim set: White_Space less U+0085, plus U+FEFF. */
static bool js_space(uint32_t cp)
{
	return (qf_tok_is_space(cp) && cp != 0x85) || cp == 0xFEFF;
}

static void trim_end(const char *s, struct span *sp)
{
	while (sp->len) {
		size_t k = sp->len - 1, len;
		uint32_t cp;

		while (k > 0 && ((uint8_t)s[sp->off + k] & 0xC0) == 0x80 &&
		       sp->len - k < 4)
			k--;
		len = qf_utf8_decode((const uint8_t *)s + sp->off + k,
				  sp->len - k, &cp);
		if (k + len != sp->len || !js_space(cp))
			return;
		sp->len = k;
	}
}

static void trim_start(const char *s, struct span *sp)
{
	while (sp->len) {
		uint32_t cp;
		size_t len = qf_utf8_decode((const uint8_t *)s + sp->off, sp->len,
					 &cp);

		if (!js_space(cp))
			return;
		sp->off += len;
		sp->len -= len;
	}
}

/* Split s by the added tokens of m, then apply their lstrip/rstrip. */
static int split_added(const struct qf_tok *t, const struct qf_tok_matcher *m,
		       const char *s, size_t n, struct spans *sp)
{
	size_t i = 0, start = 0, k = 0;
	int a, ret = 0;

	sp->n = 0;
	while (i < n && !ret) {
		a = m->n ? match_at(t, m, s + i, n - i) : -1;
		if (a < 0) {
			i++;
			continue;
		}
		if (i > start)
			ret = span_push(sp, start, i - start, -1);
		if (!ret)
			ret = span_push(sp, i, added_text(&t->added[a], m->norm,
							  &k) ? k : 0, a);
		i += k;
		start = i;
	}
	if (!ret && n > start)
		ret = span_push(sp, start, n - start, -1);
	for (k = 0; k < sp->n && !ret; k++) {
		const struct qf_tok_added *ad;

		if (sp->v[k].added < 0)
			continue;
		ad = &t->added[sp->v[k].added];
		if (ad->lstrip && k > 0 && sp->v[k - 1].added < 0)
			trim_end(s, &sp->v[k - 1]);
		if (ad->rstrip && k + 1 < sp->n && sp->v[k + 1].added < 0)
			trim_start(s, &sp->v[k + 1]);
	}
	return ret;
}

static int encode_text(const struct qf_tok *t, const char *text, size_t len,
		       struct qf_tok_scratch *sc, struct qf_tok_ids *out)
{
	struct spans outer = { NULL, 0, 0 }, inner = { NULL, 0, 0 };
	struct qf_buf norm = QF_BUF_INIT;
	size_t k, j;
	int ret;

	ret = split_added(t, &t->match_raw, text, len, &outer);
	for (k = 0; k < outer.n && !ret; k++) {
		const struct span *o = &outer.v[k];
		const char *s;

		if (o->added >= 0) {
			ret = qf_tok_ids_push(out, t->added[o->added].id);
			continue;
		}
		if (!o->len)
			continue;
		ret = qf_tok_normalize(t, text + o->off, o->len, &norm);
		if (ret || !norm.len)
			continue;
		s = norm.data;
		ret = split_added(t, &t->match_norm, s, norm.len, &inner);
		for (j = 0; j < inner.n && !ret; j++) {
			const struct span *in = &inner.v[j];

			if (in->added >= 0)
				ret = qf_tok_ids_push(out,
						      t->added[in->added].id);
			else if (in->len)
				ret = qf_tok_encode_section(t, s + in->off,
							    in->len, k == 0,
							    sc, out);
		}
	}
	qf_buf_release(&norm);
	free(outer.v);
	free(inner.v);
	return ret;
}

int qf_tok_encode(const struct qf_tok *t, const char *text, size_t len,
		  bool add_special, int32_t **ids, size_t *n)
{
	struct qf_tok_scratch sc;
	struct qf_tok_ids out = { NULL, 0, 0 };
	size_t k;
	int ret = 0;

	memset(&sc, 0, sizeof(sc));
	for (k = 0; add_special && k < t->ntmpl_pre && !ret; k++)
		ret = qf_tok_ids_push(&out, t->tmpl_pre[k]);
	if (!ret)
		ret = encode_text(t, text ? text : "", text ? len : 0, &sc,
				  &out);
	for (k = 0; add_special && k < t->ntmpl_post && !ret; k++)
		ret = qf_tok_ids_push(&out, t->tmpl_post[k]);
	/* callers may free *ids even when *n is 0: never hand out NULL */
	if (!ret && !out.v) {
		ret = qf_tok_ids_push(&out, 0);
		out.n = 0;
	}
	qf_tok_scratch_free(&sc);
	if (ret) {
		free(out.v);
		return ret;
	}
	*ids = out.v;
	*n = out.n;
	return 0;
}
