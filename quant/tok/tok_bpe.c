/*
 * tok_bpe.c - the encoding half of the tokenizer: normalizers (Prepend,
 * Replace, NFC from tok_nfc.c), pre-tokenizers (Split on a regex or a
 * literal, ByteLevel, Metaspace) and the BPE merge loop.
 *
 * We have no regex engine (libc and cJSON only), so the split regexes of
 * the files we support are hand-written matchers below, one per known
 * pattern text (split_pats, which also names llama.cpp's pre-tokenizer
 * for each), with the pattern's backtracking worked out by hand.  The
 * reference is @huggingface/tokenizers (JavaScript); where it and the Rust
 * crate agree we follow both, \s is White_Space as in both.
 *
 * Byte-level models are run on raw bytes: tokenizer.c stores their vocab
 * with the GPT-2 byte-to-unicode map undone, so a "character" of a
 * byte-level word is simply a byte.
 */
#include <stdlib.h>
#include <string.h>

#include "tok_i.h"
#include "tok_unicode.h"

int qf_tok_ids_push(struct qf_tok_ids *ids, int32_t id)
{
	if (qf_grow(&ids->v, ids->n + 1, &ids->cap, 64, sizeof(*ids->v)))
		return -ENOMEM;
	ids->v[ids->n++] = id;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Character classes                                                    */

static bool in_ranges(const struct qf_uc_range *r, size_t n, uint32_t cp)
{
	return qf_uc_find(r, n, sizeof(*r), offsetof(struct qf_uc_range, hi),
			  cp) < n;
}

bool qf_tok_is_letter(uint32_t cp)
{
	if (cp < 0x80)
		return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
	return in_ranges(qf_uc_tables.letter, qf_uc_tables.nletter, cp);
}

bool qf_tok_is_number(uint32_t cp)
{
	if (cp < 0x80)
		return cp >= '0' && cp <= '9';
	return in_ranges(qf_uc_tables.number, qf_uc_tables.nnumber, cp);
}

bool qf_tok_is_space(uint32_t cp)
{
	/* White_Space (PropList.txt), unchanged since Unicode 6.3 */
	if (cp < 0x80)
		return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
	return cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
	       (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
	       cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* ------------------------------------------------------------------ */
/* normalizers                                                          */

int qf_tok_replace_all(const char *s, size_t n, const char *pat, size_t plen,
		       const char *rep, size_t rlen, struct qf_buf *out)
{
	size_t i = 0, start = 0;
	int ret;

	if (!plen)
		return qf_buf_add(out, s, n);
	while (i + plen <= n) {
		if (s[i] == pat[0] && !memcmp(s + i, pat, plen)) {
			ret = qf_buf_add(out, s + start, i - start);
			if (!ret)
				ret = qf_buf_add(out, rep, rlen);
			if (ret)
				return ret;
			i += plen;
			start = i;
		} else {
			i++;
		}
	}
	return qf_buf_add(out, s + start, n - start);
}

int qf_tok_normalize(const struct qf_tok *t, const char *s, size_t n,
		     struct qf_buf *out)
{
	struct qf_buf tmp = QF_BUF_INIT;
	size_t k;
	int ret = 0;

	qf_buf_reset(out);
	ret = qf_buf_add(out, s, n);
	for (k = 0; k < t->nnorm && !ret; k++) {
		const struct qf_tok_norm *nm = &t->norm[k];
		struct qf_buf swap;

		qf_buf_reset(&tmp);
		switch (nm->kind) {
		case QF_TOK_NORM_PREPEND:
			/* as the Rust crate: nothing to prepend to "" */
			if (out->len)
				ret = qf_buf_add(&tmp, nm->a, nm->alen);
			if (!ret)
				ret = qf_buf_add(&tmp, out->data, out->len);
			break;
		case QF_TOK_NORM_REPLACE:
			ret = qf_tok_replace_all(out->data ? out->data : "", out->len,
					  nm->a, nm->alen, nm->b, nm->blen,
					  &tmp);
			break;
		case QF_TOK_NORM_NFC:
			ret = qf_tok_nfc(out->data ? out->data : "", out->len, &tmp);
			break;
		}
		swap = *out;
		*out = tmp;
		tmp = swap;
	}
	qf_buf_release(&tmp);
	return ret;
}

/* ------------------------------------------------------------------ */
/* split regexes                                                        */

enum { C_L, C_N, C_WS, C_OTHER };

static int cls_at(const uint8_t *s, size_t n, size_t i, size_t *len)
{
	uint32_t cp;

	*len = qf_utf8_decode(s + i, n - i, &cp);
	if (cp == QF_UTF8_BAD)
		return C_OTHER;
	if (qf_tok_is_letter(cp))
		return C_L;
	if (qf_tok_is_number(cp))
		return C_N;
	if (qf_tok_is_space(cp))
		return C_WS;
	return C_OTHER;
}

/* End of the run of class cls from i, at most max characters. */
static size_t run_of(const uint8_t *s, size_t n, size_t i, int cls,
		     size_t max)
{
	size_t len, k;

	for (k = 0; i < n && k < max; k++) {
		if (cls_at(s, n, i, &len) != cls)
			break;
		i += len;
	}
	return i;
}

static bool is_crlf(uint8_t c)
{
	return c == '\r' || c == '\n';
}

/* 's 't 're 've 'm 'll 'd, ASCII case folded when icase. */
static size_t contraction(const uint8_t *s, size_t n, size_t i, bool icase)
{
	static const char *const suf[] = { "s", "t", "re", "ve", "m", "ll",
					   "d" };
	size_t k, j;

	if (s[i] != '\'')
		return 0;
	for (k = 0; k < sizeof(suf) / sizeof(suf[0]); k++) {
		size_t l = strlen(suf[k]);

		if (i + 1 + l > n)
			continue;
		for (j = 0; j < l; j++) {
			uint8_t c = s[i + 1 + j];

			if (icase && c >= 'A' && c <= 'Z')
				c |= 0x20;
			if (c != (uint8_t)suf[k][j])
				break;
		}
		if (j == l)
			return i + 1 + l;
	}
	return 0;
}

/* \s+(?!\S) then \s+ : the whitespace run, less its last char when a
 * non-space follows and more than one char would remain. */
static size_t ws_tail(const uint8_t *s, size_t n, size_t i)
{
	size_t j = i, len, last = i;

	while (j < n && cls_at(s, n, j, &len) == C_WS) {
		last = j;
		j += len;
	}
	if (j == n || last == i)
		return j;
	return last;
}

/*
 * GPT-2:
 * 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 */
static size_t match_gpt2(const uint8_t *s, size_t n, size_t i)
{
	size_t j, len, l2;
	int c, c2;

	j = contraction(s, n, i, false);
	if (j)
		return j;
	c = cls_at(s, n, i, &len);
	if (s[i] == ' ' && i + 1 < n) {
		c2 = cls_at(s, n, i + 1, &l2);
		if (c2 != C_WS)
			return run_of(s, n, i + 1, c2, SIZE_MAX);
	}
	if (c != C_WS)
		return run_of(s, n, i, c, SIZE_MAX);
	return ws_tail(s, n, i);
}

/*
 *  ?[^\s\p{L}\p{N}]+ followed by [\r\n]* (or [\r\n/]* when slash): its
 * end, or 0 when no such run starts at i.
 */
static size_t other_run(const uint8_t *s, size_t n, size_t i, bool slash)
{
	size_t j = i, l2;

	if (s[i] == ' ' && i + 1 < n && cls_at(s, n, i + 1, &l2) == C_OTHER)
		j = i + 1;
	if (cls_at(s, n, j, &l2) != C_OTHER)
		return 0;
	j = run_of(s, n, j, C_OTHER, SIZE_MAX);
	while (j < n && (is_crlf(s[j]) || (slash && s[j] == '/')))
		j++;
	return j;
}

/* \s*[\r\n]+|\s+(?!\S)|\s+ at whitespace i: \s*[\r\n]+ ends after the
 * run's last newline, else ws_tail. */
static size_t ws_newlines(const uint8_t *s, size_t n, size_t i)
{
	size_t j, len, last_nl = SIZE_MAX;

	for (j = i; j < n && cls_at(s, n, j, &len) == C_WS; j += len)
		if (is_crlf(s[j]))
			last_nl = j;
	if (last_nl != SIZE_MAX)
		return last_nl + 1;
	return ws_tail(s, n, i);
}

/*
 * Llama 3 (digits 3) and Qwen2 (digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 */
static size_t match_llama3(const uint8_t *s, size_t n, size_t i,
			   size_t digits)
{
	size_t j, len, l2;
	int c;

	j = contraction(s, n, i, true);
	if (j)
		return j;
	c = cls_at(s, n, i, &len);
	if (c == C_L)
		return run_of(s, n, i, C_L, SIZE_MAX);
	if (c != C_N && !is_crlf(s[i]) && i + len < n &&
	    cls_at(s, n, i + len, &l2) == C_L)
		return run_of(s, n, i + len, C_L, SIZE_MAX);
	if (c == C_N)
		return run_of(s, n, i, C_N, digits);
	j = other_run(s, n, i, false);
	return j ? j : ws_newlines(s, n, i);
}

/* o200k's letter classes: U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}],
 * W = [\p{Ll}\p{Lm}\p{Lo}\p{M}] */
enum { K_U = 1, K_W = 2 };

static int case_at(const uint8_t *s, size_t n, size_t i, size_t *len)
{
	uint32_t cp;
	bool lower, upper;

	*len = qf_utf8_decode(s + i, n - i, &cp);
	if (cp == QF_UTF8_BAD)
		return 0;
	if (in_ranges(qf_uc_tables.mark, qf_uc_tables.nmark, cp))
		return K_U | K_W;
	if (!qf_tok_is_letter(cp))
		return 0;
	lower = cp < 0x80 ? cp >= 'a' : in_ranges(qf_uc_tables.lower,
						  qf_uc_tables.nlower, cp);
	upper = cp < 0x80 ? cp < 'a' : in_ranges(qf_uc_tables.upper,
						 qf_uc_tables.nupper, cp);
	return (lower ? 0 : K_U) | (upper ? 0 : K_W);
}

static size_t case_run(const uint8_t *s, size_t n, size_t i, int k)
{
	size_t len;

	while (i < n && (case_at(s, n, i, &len) & k))
		i += len;
	return i;
}

/*
 * U*W+ (upper_first false; U* gives back characters until W+ can start,
 * as a backtracking regex does) or U+W* (true) from k: the end, or 0.
 */
static size_t cased_word(const uint8_t *s, size_t n, size_t k,
			 bool upper_first)
{
	size_t u = case_run(s, n, k, K_U), j = u, len;

	if (upper_first)
		return u > k ? case_run(s, n, u, K_W) : 0;
	for (;;) {
		if (j < n && (case_at(s, n, j, &len) & K_W))
			return case_run(s, n, j, K_W);
		if (j == k)
			return 0;
		do
			j--;	/* U's characters are valid UTF-8 */
		while (j > k && (s[j] & 0xC0) == 0x80);
	}
}

/*
 * o200k (GPT-4o, Phi-4-mini):
 * [^\r\n\p{L}\p{N}]?U*W+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|
 * [^\r\n\p{L}\p{N}]?U+W*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}|
 *  ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * Each word alternative is tried with the optional first character, then
 * without (a mark may start a word itself).
 */
static size_t match_o200k(const uint8_t *s, size_t n, size_t i)
{
	size_t len, e = 0, j;
	int c = cls_at(s, n, i, &len), alt;
	bool pre = c != C_L && c != C_N && !is_crlf(s[i]);

	for (alt = 0; alt < 4 && !e; alt++)
		if (pre || alt % 2)
			e = cased_word(s, n, alt % 2 ? i : i + len, alt >= 2);
	if (e) {
		j = e < n ? contraction(s, n, e, true) : 0;
		return j ? j : e;
	}
	if (c == C_N)
		return run_of(s, n, i, C_N, 3);
	j = other_run(s, n, i, true);
	return j ? j : ws_newlines(s, n, i);
}

/*
 * The split regexes we implement (the matchers above), by exact text, with the
 * name llama.cpp gives each as tokenizer.ggml.pre (gguf_vocab.c).
 */
static const struct {
	const char *re;
	enum qf_tok_pat pat;
	const char *pre;
} split_pats[] = {
	{ "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
	  "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
	  "\\s+(?!\\S)|\\s+", QF_TOK_PAT_LLAMA3, "llama-bpe" },
	{ "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
	  "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
	  "\\s+(?!\\S)|\\s+", QF_TOK_PAT_QWEN2, "qwen2" },
	{ "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}"
	  "\\p{N}]+|\\s+(?!\\S)|\\s+", QF_TOK_PAT_GPT2, "gpt-2" },
	{ "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*"
	  "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
	  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
	  "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
	  "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|"
	  "\\s+(?!\\S)|\\s+", QF_TOK_PAT_O200K, "gpt-4o" },
};

/* Index in split_pats of regex re, or -1. */
static int split_index(const char *re)
{
	size_t i;

	for (i = 0; i < sizeof(split_pats) / sizeof(split_pats[0]); i++)
		if (!strcmp(re, split_pats[i].re))
			return (int)i;
	return -1;
}

const char *qf_tok_pre_name(const char *re)
{
	int i = split_index(re);

	return i < 0 ? NULL : split_pats[i].pre;
}

enum qf_tok_pat qf_tok_split_pat(const char *re)
{
	int i = split_index(re);

	return i < 0 ? QF_TOK_PAT_NONE : split_pats[i].pat;
}

static size_t pat_match(enum qf_tok_pat pat, const uint8_t *s, size_t n,
			size_t i)
{
	switch (pat) {
	case QF_TOK_PAT_GPT2:
		return match_gpt2(s, n, i);
	case QF_TOK_PAT_LLAMA3:
		return match_llama3(s, n, i, 3);
	case QF_TOK_PAT_QWEN2:
		return match_llama3(s, n, i, 1);
	case QF_TOK_PAT_O200K:
		return match_o200k(s, n, i);
	case QF_TOK_PAT_NONE:
		break;
	}
	return n;
}

/* ------------------------------------------------------------------ */
/* pre-tokenizers: pieces are (off, len) pairs into a scratch buffer    */

static int piece_push(size_t **p, size_t *np, size_t *cap, size_t off,
		      size_t len)
{
	if (qf_grow(p, *np + 2, cap, 64, sizeof(**p)))
		return -ENOMEM;
	(*p)[(*np)++] = off;
	(*p)[(*np)++] = len;
	return 0;
}

/*
 * Copy s[0..n) into b, after a space when prefix, and emit it as pieces
 * split by pat (Isolated behavior: every byte lands in some piece).
 */
static int split_into(enum qf_tok_pat pat, bool prefix, const char *s,
		      size_t n, struct qf_tok_scratch *sc)
{
	size_t base = sc->b.len, i = 0, j;
	const uint8_t *p;
	int ret = 0;

	if (prefix)
		ret = qf_buf_add(&sc->b, " ", 1);
	if (!ret)
		ret = qf_buf_add(&sc->b, s, n);
	n += prefix;
	p = (const uint8_t *)sc->b.data + base;
	while (!ret && i < n) {
		j = pat_match(pat, p, n, i);
		if (j <= i)
			j = i + 1;	/* never loop; matchers always advance */
		ret = piece_push(&sc->pb, &sc->npb, &sc->capb, base + i, j - i);
		i = j;
	}
	return ret;
}

static int metaspace(const struct qf_tok_pre *p, const char *s, size_t n,
		     bool first, struct qf_tok_scratch *sc)
{
	size_t base = sc->b.len, end, i, start;
	bool pre;
	int ret = 0;

	pre = (p->prepend == QF_TOK_PREPEND_ALWAYS ||
	       (p->prepend == QF_TOK_PREPEND_FIRST && first)) &&
	      !(n >= 1 && s[0] == ' ') &&
	      !(n >= p->repl_len && !memcmp(s, p->repl, p->repl_len));
	if (pre)
		ret = qf_buf_add(&sc->b, p->repl, p->repl_len);
	if (!ret)
		ret = qf_tok_replace_all(s, n, " ", 1, p->repl, p->repl_len, &sc->b);
	if (ret)
		return ret;
	end = sc->b.len;
	if (!p->split)
		return piece_push(&sc->pb, &sc->npb, &sc->capb, base,
				  end - base);
	/* MergedWithNext: each piece starts at a replacement char */
	for (start = i = base; i < end && !ret; i++) {
		if (i > start && i + p->repl_len <= end &&
		    !memcmp(sc->b.data + i, p->repl, p->repl_len)) {
			ret = piece_push(&sc->pb, &sc->npb, &sc->capb, start,
					 i - start);
			start = i;
		}
	}
	if (!ret && end > start)
		ret = piece_push(&sc->pb, &sc->npb, &sc->capb, start,
				 end - start);
	return ret;
}

/*
 * Pieces of s split on the literal p->lit: each occurrence a piece of its
 * own (Isolated) or closing the piece before it (MergedWithPrevious).
 */
static int split_lit(const struct qf_tok_pre *p, const char *s, size_t n,
		     struct qf_tok_scratch *sc)
{
	size_t base = sc->b.len, start = 0, i = 0, l = p->lit_len;
	int ret = qf_buf_add(&sc->b, s, n);

	while (!ret && i + l <= n) {
		size_t from;

		if (memcmp(s + i, p->lit, l)) {
			i++;
			continue;
		}
		if (!p->merge_prev && i > start)
			ret = piece_push(&sc->pb, &sc->npb, &sc->capb,
					 base + start, i - start);
		from = p->merge_prev ? start : i;
		if (!ret)
			ret = piece_push(&sc->pb, &sc->npb, &sc->capb,
					 base + from, i + l - from);
		i += l;
		start = i;
	}
	if (!ret && n > start)
		ret = piece_push(&sc->pb, &sc->npb, &sc->capb, base + start,
				 n - start);
	return ret;
}

static int pre_step(const struct qf_tok_pre *p, const char *s, size_t n,
		    bool first, struct qf_tok_scratch *sc)
{
	switch (p->kind) {
	case QF_TOK_PRE_SPLIT:
		return split_into(p->pat, false, s, n, sc);
	case QF_TOK_PRE_BYTELEVEL:
		/* the pattern must see the prefix space too */
		return split_into(p->pat, p->prefix_space && n && s[0] != ' ',
				  s, n, sc);
	case QF_TOK_PRE_METASPACE:
		return metaspace(p, s, n, first, sc);
	case QF_TOK_PRE_SPLIT_LIT:
		return split_lit(p, s, n, sc);
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* BPE                                                                  */

struct qf_tok_sym {
	int32_t id;		/* -1: a character not in the vocab */
	uint32_t off;		/* byte offset in the word */
	uint32_t len;		/* bytes; 0 once merged into its left */
	uint32_t prev;		/* UINT32_MAX: none */
	uint32_t next;
};

struct qf_tok_cand {
	uint32_t rank;
	uint32_t pos;		/* left symbol; ties go leftmost */
	int32_t left;
	int32_t right;
};

static bool cand_less(const struct qf_tok_cand *a, const struct qf_tok_cand *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_sift_down(struct qf_tok_cand *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, m = i;
		struct qf_tok_cand tmp;

		if (l < n && cand_less(&h[l], &h[m]))
			m = l;
		if (l + 1 < n && cand_less(&h[l + 1], &h[m]))
			m = l + 1;
		if (m == i)
			return;
		tmp = h[i];
		h[i] = h[m];
		h[m] = tmp;
		i = m;
	}
}

static int heap_push(struct qf_tok_scratch *sc, size_t *n,
		     const struct qf_tok_cand *c)
{
	size_t i;

	if (*n == sc->capheap) {
		size_t cap = sc->capheap ? sc->capheap * 2 : 256;
		struct qf_tok_cand *h = realloc(sc->heap, cap * sizeof(*h));

		if (!h)
			return -ENOMEM;
		sc->heap = h;
		sc->capheap = cap;
	}
	i = (*n)++;
	while (i > 0 && cand_less(c, &sc->heap[(i - 1) / 2])) {
		sc->heap[i] = sc->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	sc->heap[i] = *c;
	return 0;
}

static int try_pair(const struct qf_tok *t, struct qf_tok_scratch *sc,
		    size_t *nh, uint32_t pos)
{
	const struct qf_tok_sym *a = &sc->sym[pos];
	const struct qf_tok_merge *m;
	struct qf_tok_cand c;

	if (a->next == UINT32_MAX || a->id < 0 || sc->sym[a->next].id < 0)
		return 0;
	m = qf_tok_merge_find(t, a->id, sc->sym[a->next].id);
	if (!m)
		return 0;
	c.rank = m->rank;
	c.pos = pos;
	c.left = a->id;
	c.right = sc->sym[a->next].id;
	return heap_push(sc, nh, &c);
}

static int merge_loop(const struct qf_tok *t, struct qf_tok_scratch *sc,
		      size_t nsym)
{
	size_t nh = 0, i;
	int ret = 0;

	for (i = 0; i + 1 < nsym && !ret; i++)
		ret = try_pair(t, sc, &nh, (uint32_t)i);
	while (nh && !ret) {
		struct qf_tok_cand c = sc->heap[0];
		struct qf_tok_sym *a = &sc->sym[c.pos];
		struct qf_tok_sym *b;
		const struct qf_tok_merge *m;

		sc->heap[0] = sc->heap[--nh];
		heap_sift_down(sc->heap, nh, 0);
		/* stale: either side changed since this pair was queued */
		if (!a->len || a->id != c.left || a->next == UINT32_MAX)
			continue;
		b = &sc->sym[a->next];
		if (b->id != c.right)
			continue;
		m = qf_tok_merge_find(t, c.left, c.right);
		a->id = m->id;
		a->len += b->len;
		b->len = 0;
		a->next = b->next;
		if (a->next != UINT32_MAX)
			sc->sym[a->next].prev = c.pos;
		if (a->prev != UINT32_MAX)
			ret = try_pair(t, sc, &nh, a->prev);
		if (!ret)
			ret = try_pair(t, sc, &nh, c.pos);
	}
	return ret;
}

/* A character outside the vocab: <0xNN> tokens, else unk. */
static int emit_unknown(const struct qf_tok *t, const uint8_t *s, size_t n,
			bool *prev_unk, struct qf_tok_ids *out)
{
	size_t i;
	int ret = 0;

	if (t->byte_fallback) {
		for (i = 0; i < n && t->byte_fb[s[i]] >= 0; i++)
			;
		if (i == n) {
			for (i = 0; i < n && !ret; i++)
				ret = qf_tok_ids_push(out, t->byte_fb[s[i]]);
			*prev_unk = false;
			return ret;
		}
	}
	if (t->unk < 0 || (t->fuse_unk && *prev_unk))
		return 0;
	*prev_unk = true;
	return qf_tok_ids_push(out, t->unk);
}

static int bpe_word(const struct qf_tok *t, const char *w, size_t n,
		    struct qf_tok_scratch *sc, struct qf_tok_ids *out)
{
	const uint8_t *s = (const uint8_t *)w;
	size_t nsym = 0, i, len;
	bool prev_unk = false;
	uint32_t k, cp;
	int32_t id;
	int ret;

	if (!n)
		return 0;
	if (t->ignore_merges) {
		id = qf_tok_lookup(t, w, n);
		if (id >= 0)
			return qf_tok_ids_push(out, id);
	}
	if (n > sc->capsym) {
		struct qf_tok_sym *v = realloc(sc->sym, n * sizeof(*v));

		if (!v)
			return -ENOMEM;
		sc->sym = v;
		sc->capsym = n;
	}
	for (i = 0; i < n; i += len) {
		struct qf_tok_sym *y = &sc->sym[nsym];

		if (t->bytelevel) {
			len = 1;
			y->id = t->byte_unit[s[i]];
		} else {
			len = qf_utf8_decode(s + i, n - i, &cp);
			y->id = qf_tok_lookup(t, w + i, len);
		}
		y->off = (uint32_t)i;
		y->len = (uint32_t)len;
		y->prev = nsym ? (uint32_t)nsym - 1 : UINT32_MAX;
		y->next = (uint32_t)nsym + 1;
		nsym++;
	}
	sc->sym[nsym - 1].next = UINT32_MAX;
	ret = merge_loop(t, sc, nsym);
	for (k = 0; k != UINT32_MAX && !ret; k = sc->sym[k].next) {
		const struct qf_tok_sym *y = &sc->sym[k];

		if (y->id >= 0) {
			prev_unk = false;
			ret = qf_tok_ids_push(out, y->id);
		} else {
			ret = emit_unknown(t, s + y->off, y->len, &prev_unk,
					   out);
		}
	}
	return ret;
}

int qf_tok_encode_section(const struct qf_tok *t, const char *s, size_t n,
			  bool first, struct qf_tok_scratch *sc,
			  struct qf_tok_ids *out)
{
	size_t k, i;
	int ret = 0;

	if (n > UINT32_MAX / 2)
		return -ENOMEM;	/* symbol offsets are 32-bit */
	qf_buf_reset(&sc->a);
	sc->npa = 0;
	ret = qf_buf_add(&sc->a, s, n);
	if (!ret)
		ret = piece_push(&sc->pa, &sc->npa, &sc->capa, 0, n);
	for (k = 0; k < t->npre && !ret; k++) {
		struct qf_buf tb;
		size_t *tp, tn, tc;

		qf_buf_reset(&sc->b);
		sc->npb = 0;
		for (i = 0; i < sc->npa && !ret; i += 2)
			ret = pre_step(&t->pre[k], sc->a.data + sc->pa[i],
				       sc->pa[i + 1], first && i == 0, sc);
		/* b becomes the input of the next step */
		tb = sc->a;
		sc->a = sc->b;
		sc->b = tb;
		tp = sc->pa;
		tn = sc->npa;
		tc = sc->capa;
		sc->pa = sc->pb;
		sc->npa = sc->npb;
		sc->capa = sc->capb;
		sc->pb = tp;
		sc->npb = tn;
		sc->capb = tc;
	}
	for (i = 0; i < sc->npa && !ret; i += 2)
		ret = bpe_word(t, sc->a.data + sc->pa[i], sc->pa[i + 1], sc,
			       out);
	return ret;
}

void qf_tok_scratch_free(struct qf_tok_scratch *sc)
{
	qf_buf_release(&sc->a);
	qf_buf_release(&sc->b);
	free(sc->pa);
	free(sc->pb);
	free(sc->sym);
	free(sc->heap);
}

/* ------------------------------------------------------------------ */
/* hashes                                                               */

uint64_t qf_tok_hash(const void *s, size_t n)
{
	const uint8_t *p = s;
	uint64_t h = 0xcbf29ce484222325ull;
	size_t i;

	for (i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h ^ h >> 29;
}

int32_t qf_tok_lookup(const struct qf_tok *t, const char *s, size_t n)
{
	size_t i = qf_tok_hash(s, n) & t->vmask;
	uint32_t slot;

	while ((slot = t->vhash[i])) {
		const struct qf_tok_str *e = &t->str[slot - 1];

		if (e->len == n && !memcmp(t->pool + e->off, s, n))
			return (int32_t)(slot - 1);
		i = (i + 1) & t->vmask;
	}
	return -1;
}

static uint64_t merge_key(int32_t a, int32_t b)
{
	return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
}

static size_t merge_slot(uint64_t key, size_t mask)
{
	key ^= key >> 31;
	key *= 0x9e3779b97f4a7c15ull;
	return (size_t)(key ^ key >> 29) & mask;
}

int qf_tok_merge_add(struct qf_tok *t, int32_t a, int32_t b, int32_t id,
		     uint32_t rank)
{
	uint64_t key = merge_key(a, b);
	size_t i = merge_slot(key, t->mmask);

	while (t->mhash[i].key && t->mhash[i].key != key)
		i = (i + 1) & t->mmask;
	/* a repeated pair takes its later rank, as both references do */
	t->mhash[i].key = key;
	t->mhash[i].rank = rank;
	t->mhash[i].id = id;
	return 0;
}

const struct qf_tok_merge *qf_tok_merge_find(const struct qf_tok *t,
					     int32_t a, int32_t b)
{
	uint64_t key = merge_key(a, b);
	size_t i;

	if (!t->mhash)
		return NULL;
	i = merge_slot(key, t->mmask);
	while (t->mhash[i].key) {
		if (t->mhash[i].key == key)
			return &t->mhash[i];
		i = (i + 1) & t->mmask;
	}
	return NULL;
}
