/*
 * tok_decode.c - decoding: the token strings of a list of ids run through
 * the tokenizer's decoder steps (ByteLevel, Replace, ByteFallback, Fuse,
 * Strip, Metaspace) in order, then joined; invalid UTF-8 comes out as
 * U+FFFD as the reference does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok.h"
#include "tok_i.h"

struct dtok {
	struct qf_buf s;
	bool added;		/* kept out of the byte-level decoding */
};

struct dlist {
	struct dtok *v;
	size_t n;
};

static void dlist_free(struct dlist *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		qf_buf_release(&l->v[i].s);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/* Append s, each maximal invalid UTF-8 subpart as one U+FFFD. */
static int put_lossy(struct qf_buf *out, const char *s, size_t n)
{
	size_t i = 0, len;
	uint32_t cp;
	int ret = 0;

	while (i < n && !ret) {
		len = qf_utf8_decode((const uint8_t *)s + i, n - i, &cp);
		if (cp == QF_UTF8_BAD)
			ret = qf_buf_add(out, "\xef\xbf\xbd", 3);
		else
			ret = qf_buf_add(out, s + i, len);
		i += len;
	}
	return ret;
}

static bool byte_token(const struct qf_buf *b, uint8_t *out)
{
	unsigned v;
	char tail;

	if (b->len != 6 || memcmp(b->data, "<0x", 3) || b->data[5] != '>')
		return false;
	if (sscanf(b->data + 3, "%2x%c", &v, &tail) != 2 || tail != '>')
		return false;
	*out = (uint8_t)v;
	return true;
}

/* Merge runs of tokens (non-added for byte-level, <0xNN> for fallback). */
static int dec_runs(struct dlist *l, enum qf_tok_dec_kind kind)
{
	struct dlist out = { NULL, 0 };
	size_t i = 0, j, k;
	uint8_t byte;
	int ret = 0;

	out.v = calloc(l->n + 1, sizeof(*out.v));
	if (!out.v)
		return -ENOMEM;
	while (i < l->n && !ret) {
		struct dtok *d = &out.v[out.n++];
		struct qf_buf raw = QF_BUF_INIT;

		for (j = i; j < l->n; j++) {
			if (kind == QF_TOK_DEC_BYTELEVEL ? l->v[j].added :
			    !byte_token(&l->v[j].s, &byte))
				break;
			ret = kind == QF_TOK_DEC_BYTELEVEL ?
				qf_buf_add(&raw, l->v[j].s.data, l->v[j].s.len) :
				qf_buf_add(&raw, &byte, 1);
			if (ret)
				break;
		}
		if (j == i) {
			d->s = l->v[i].s;
			d->added = l->v[i].added;
			l->v[i].s = (struct qf_buf)QF_BUF_INIT;
			i++;
		} else if (!ret && kind == QF_TOK_DEC_BYTEFALLBACK &&
			   !qf_utf8_valid(raw.data, raw.len)) {
			/* the Rust crate: one U+FFFD per byte */
			for (k = 0; k < raw.len && !ret; k++)
				ret = qf_buf_add(&d->s, "\xef\xbf\xbd", 3);
			i = j;
		} else if (!ret) {
			ret = put_lossy(&d->s, raw.data, raw.len);
			i = j;
		}
		qf_buf_release(&raw);
	}
	dlist_free(l);
	*l = out;
	return ret;
}

static int dec_step(const struct qf_tok_dec *d, struct dlist *l)
{
	struct qf_buf tmp = QF_BUF_INIT;
	size_t i, k, cut;
	int ret = 0;

	switch (d->kind) {
	case QF_TOK_DEC_BYTELEVEL:
	case QF_TOK_DEC_BYTEFALLBACK:
		return dec_runs(l, d->kind);
	case QF_TOK_DEC_FUSE:
		for (i = 1; i < l->n && !ret; i++)
			ret = qf_buf_add(&l->v[0].s, l->v[i].s.data,
					 l->v[i].s.len);
		for (i = 1; i < l->n; i++)
			qf_buf_release(&l->v[i].s);
		l->n = l->n ? 1 : 0;
		return ret;
	case QF_TOK_DEC_REPLACE:
	case QF_TOK_DEC_METASPACE:
		for (i = 0; i < l->n && !ret; i++) {
			struct qf_buf swap;

			qf_buf_reset(&tmp);
			ret = qf_tok_replace_all(l->v[i].s.data, l->v[i].s.len,
						 d->a, d->alen,
						 d->kind == QF_TOK_DEC_REPLACE ?
						 d->b : " ",
						 d->kind == QF_TOK_DEC_REPLACE ?
						 d->blen : 1, &tmp);
			if (!ret && d->kind == QF_TOK_DEC_METASPACE && i == 0 &&
			    d->prepend && tmp.len && tmp.data[0] == ' ') {
				memmove(tmp.data, tmp.data + 1, tmp.len);
				tmp.len--;
			}
			swap = l->v[i].s;
			l->v[i].s = tmp;
			tmp = swap;
		}
		qf_buf_release(&tmp);
		return ret;
	case QF_TOK_DEC_STRIP:
		for (i = 0; i < l->n; i++) {
			struct qf_buf *b = &l->v[i].s;

			for (k = 0, cut = 0; k < (size_t)d->start &&
			     cut + d->alen <= b->len &&
			     !memcmp(b->data + cut, d->a, d->alen); k++)
				cut += d->alen;
			memmove(b->data, b->data + cut, b->len - cut + 1);
			b->len -= cut;
			for (k = 0; k < (size_t)d->stop && b->len >= d->alen &&
			     !memcmp(b->data + b->len - d->alen, d->a, d->alen);
			     k++)
				b->len -= d->alen;
			if (b->data)
				b->data[b->len] = '\0';
		}
		return 0;
	}
	return 0;
}

int qf_tok_decode(const struct qf_tok *t, const int32_t *ids, size_t n,
		  bool skip_special, struct qf_buf *out)
{
	struct dlist l = { NULL, 0 };
	size_t i;
	int ret = 0;

	for (i = 0; i < n; i++)
		if (ids[i] < 0 || (size_t)ids[i] >= t->nids ||
		    (t->str[ids[i]].len == UINT32_MAX &&
		     t->added_of[ids[i]] < 0))
			return -EINVAL;
	l.v = calloc(n + 1, sizeof(*l.v));
	if (!l.v)
		return -ENOMEM;
	for (i = 0; i < n && !ret; i++) {
		int32_t id = ids[i];
		struct dtok *d;

		if (skip_special && (t->flags[id] & QF_TOK_F_SPECIAL))
			continue;
		d = &l.v[l.n++];
		if (t->added_of[id] >= 0) {
			const struct qf_tok_added *a =
				&t->added[t->added_of[id]];

			d->added = true;
			ret = qf_buf_add(&d->s, a->content, a->len);
		} else {
			ret = qf_buf_add(&d->s, t->pool + t->str[id].off,
					 t->str[id].len);
		}
	}
	for (i = 0; i < t->ndec && !ret; i++)
		ret = dec_step(&t->dec[i], &l);
	/* no decoder: tokens joined by spaces, as both references do */
	for (i = 0; i < l.n && !ret; i++) {
		if (i && !t->has_decoder)
			ret = qf_buf_add(out, " ", 1);
		if (!ret)
			ret = qf_buf_add(out, l.v[i].s.data, l.v[i].s.len);
	}
	dlist_free(&l);
	return ret;
}
