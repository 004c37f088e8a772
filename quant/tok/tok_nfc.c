/*
 * tok_nfc.c - Unicode NFC for the tokenizer's NFC normalizer: canonical
 * decomposition (Hangul by arithmetic, the rest from tok_unicode.c's
 * tables), canonical ordering of non-starters, then canonical
 * composition.  Invalid UTF-8 bytes pass through unchanged.
 */
#include <stdlib.h>
#include <string.h>

#include "tok_i.h"
#include "tok_unicode.h"

#define SBASE 0xAC00u
#define LBASE 0x1100u
#define VBASE 0x1161u
#define TBASE 0x11A7u
#define LCOUNT 19u
#define VCOUNT 21u
#define TCOUNT 28u
#define NCOUNT (VCOUNT * TCOUNT)
#define SCOUNT (LCOUNT * NCOUNT)
#define RAWBYTE 0x80000000u	/* marks an invalid byte kept as is */

static uint32_t ccc_of(uint32_t cp)
{
	const struct qf_uc_ccc *r = qf_uc_tables.ccc;
	size_t n = qf_uc_tables.nccc, i;

	if (cp < 0x300 || cp & RAWBYTE)
		return 0;
	i = qf_uc_find(r, n, sizeof(*r), offsetof(struct qf_uc_ccc, hi), cp);
	return i < n ? r[i].ccc : 0;
}

static const struct qf_uc_decomp *decomp_of(uint32_t cp)
{
	const struct qf_uc_decomp *d = qf_uc_tables.decomp;
	size_t n = qf_uc_tables.ndecomp, i;

	if (cp < 0xC0 || cp & RAWBYTE)
		return NULL;
	i = qf_uc_find(d, n, sizeof(*d), offsetof(struct qf_uc_decomp, cp),
		       cp);
	return i < n ? &d[i] : NULL;
}

static uint32_t compose(uint32_t a, uint32_t b)
{
	const struct qf_uc_comp *c = qf_uc_tables.comp;
	size_t lo = 0, hi = qf_uc_tables.ncomp;

	if (a - LBASE < LCOUNT && b - VBASE < VCOUNT)
		return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
	if (a - SBASE < SCOUNT && (a - SBASE) % TCOUNT == 0 &&
	    b - TBASE - 1 < TCOUNT - 1)
		return a + (b - TBASE);
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (a < c[mid].a || (a == c[mid].a && b < c[mid].b))
			hi = mid;
		else if (a > c[mid].a || b > c[mid].b)
			lo = mid + 1;
		else
			return c[mid].c;
	}
	return 0;
}

struct cpvec {
	uint32_t *v;
	size_t n;
	size_t cap;
};

static int cpvec_push(struct cpvec *c, uint32_t cp)
{
	if (qf_grow(&c->v, c->n + 1, &c->cap, 64, sizeof(*c->v)))
		return -ENOMEM;
	c->v[c->n++] = cp;
	return 0;
}

static int nfc_decompose(const uint8_t *s, size_t n, struct cpvec *c)
{
	size_t i = 0, k, len;
	uint32_t cp;
	int ret = 0;

	while (i < n && !ret) {
		const struct qf_uc_decomp *d;

		len = qf_utf8_decode(s + i, n - i, &cp);
		if (cp == QF_UTF8_BAD) {
			for (k = 0; k < len && !ret; k++)
				ret = cpvec_push(c, RAWBYTE | s[i + k]);
		} else if (cp - SBASE < SCOUNT) {
			uint32_t si = cp - SBASE;

			ret = cpvec_push(c, LBASE + si / NCOUNT);
			if (!ret)
				ret = cpvec_push(c, VBASE + si % NCOUNT / TCOUNT);
			if (!ret && si % TCOUNT)
				ret = cpvec_push(c, TBASE + si % TCOUNT);
		} else if ((d = decomp_of(cp))) {
			for (k = 0; k < d->n && !ret; k++)
				ret = cpvec_push(c,
					qf_uc_tables.decomp_pool[d->off + k]);
		} else {
			ret = cpvec_push(c, cp);
		}
		i += len;
	}
	return ret;
}

/* Canonical ordering: stable sort of each run of non-starters. */
static void nfc_reorder(struct cpvec *c)
{
	size_t i, j;

	for (i = 1; i < c->n; i++) {
		uint32_t cc = ccc_of(c->v[i]);
		uint32_t cp = c->v[i];

		if (!cc)
			continue;
		for (j = i; j > 0; j--) {
			uint32_t pc = ccc_of(c->v[j - 1]);

			if (pc <= cc)
				break;
			c->v[j] = c->v[j - 1];
		}
		c->v[j] = cp;
	}
}

static size_t nfc_compose(struct cpvec *c)
{
	size_t starter = SIZE_MAX, out = 0, i;
	uint32_t last_cc = 0;

	for (i = 0; i < c->n; i++) {
		uint32_t cp = c->v[i];
		uint32_t cc = ccc_of(cp);

		if (starter != SIZE_MAX) {
			bool adjacent = out == starter + 1;

			if (adjacent || (last_cc != 0 && last_cc < cc)) {
				uint32_t comp = compose(c->v[starter], cp);

				if (comp) {
					c->v[starter] = comp;
					continue;
				}
			}
		}
		if (!cc)
			starter = out;
		last_cc = cc;
		c->v[out++] = cp;
	}
	return out;
}

int qf_tok_nfc(const char *s, size_t n, struct qf_buf *out)
{
	struct cpvec c = { NULL, 0, 0 };
	size_t i, m;
	int ret = 0;

	for (i = 0; i < n && (uint8_t)s[i] < 0x80; i++)
		;
	if (i == n)
		return qf_buf_add(out, s, n);
	ret = nfc_decompose((const uint8_t *)s, n, &c);
	if (ret)
		goto out_free;
	nfc_reorder(&c);
	m = nfc_compose(&c);
	for (i = 0; i < m && !ret; i++) {
		if (c.v[i] & RAWBYTE) {
			char byte = (char)(c.v[i] & 0xFF);

			ret = qf_buf_add(out, &byte, 1);
		} else {
			ret = qf_buf_add_utf8(out, c.v[i]);
		}
	}
out_free:
	free(c.v);
	return ret;
}
