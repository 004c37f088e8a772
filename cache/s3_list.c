/*
 * s3_list.c - listings: ListObjectsV2 pages followed through their
 * continuation tokens, and the XML parser for one page (see s3.h).
 *
 * The listing comes from the network, so the parser is small, bounded and
 * fuzzed (tests/fuzz/fuzz_s3list.c): no DTDs, no CDATA, only the five
 * predefined entities and numeric references; it reads leaf elements by
 * name and ignores the ones it does not need (Owner, StorageClass, ...).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "s3.h"
#include "s3_i.h"
#include "sigv4.h"

#define NAME_MAX_LEN 64

struct xml {
	const char *p;		/* next byte */
	const char *end;
};

/* One decoded character reference or entity at s (after '&'). */
static int xml_entity(const char *s, const char *end, struct qf_buf *out,
		      size_t *used)
{
	static const char *const names[] = { "lt;", "gt;", "amp;", "quot;",
					     "apos;" };
	static const char chars[] = "<>&\"'";
	unsigned long cp = 0;
	const char *p = s;
	size_t i, n;
	int base = 10;

	for (i = 0; i < 5; i++) {
		n = strlen(names[i]);
		if ((size_t)(end - s) >= n && !memcmp(s, names[i], n)) {
			*used = n;
			return qf_buf_add(out, &chars[i], 1);
		}
	}
	if (p >= end || *p++ != '#')
		return QF_EFORMAT;
	if (p < end && *p == 'x') {
		base = 16;
		p++;
	}
	for (n = 0; p < end && isxdigit((unsigned char)*p) && n < 8; p++, n++) {
		if (base == 10 && !isdigit((unsigned char)*p))
			return QF_EFORMAT;
		cp = cp * (unsigned long)base +
		     (unsigned long)(isdigit((unsigned char)*p) ?
				     *p - '0' : (tolower(*p) - 'a' + 10));
	}
	if (!n || p >= end || *p != ';' || cp == 0 || cp > 0x10FFFF ||
	    (cp >= 0xD800 && cp <= 0xDFFF))
		return QF_EFORMAT;
	*used = (size_t)(p + 1 - s);
	return qf_buf_add_utf8(out, (uint32_t)cp);
}

/* The text up to the next '<', decoded, into out (reset first). */
static int xml_text(struct xml *x, struct qf_buf *out)
{
	const char *lt = memchr(x->p, '<', (size_t)(x->end - x->p));
	size_t used = 0;
	int ret = 0;

	qf_buf_reset(out);
	if (!lt)
		return QF_EFORMAT;
	while (x->p < lt && !ret) {
		const char *amp = memchr(x->p, '&', (size_t)(lt - x->p));
		const char *stop = amp ? amp : lt;

		ret = qf_buf_add(out, x->p, (size_t)(stop - x->p));
		x->p = stop;
		if (!ret && amp) {
			ret = xml_entity(amp + 1, lt, out, &used);
			x->p = amp + 1 + used;
		}
	}
	if (!ret && !out->data)
		ret = qf_buf_adds(out, "");
	return ret;
}

enum tag_kind {
	TAG_OPEN,
	TAG_CLOSE,
	TAG_EMPTY,	/* <name/> */
	TAG_SKIP,	/* <?...?>, <!-- ... --> */
};

/* The tag at x->p ('<'): its kind and name; x->p moves past '>'. */
static int xml_tag(struct xml *x, enum tag_kind *kind, char name[NAME_MAX_LEN])
{
	const char *p = x->p + 1, *gt, *n0;
	size_t n;

	if (p >= x->end)
		return QF_EFORMAT;
	if (*p == '?' || *p == '!') {
		if (x->end - p >= 3 && !memcmp(p, "!--", 3))
			gt = memmem(p, (size_t)(x->end - p), "-->", 3);
		else if (*p == '!' && x->end - p >= 2 && p[1] == '[')
			return QF_EFORMAT;	/* CDATA: never in a listing */
		else
			gt = memchr(p, '>', (size_t)(x->end - p));
		if (!gt)
			return QF_EFORMAT;
		x->p = gt + 1 + (*gt == '-' ? 2 : 0);
		*kind = TAG_SKIP;
		return 0;
	}
	*kind = *p == '/' ? TAG_CLOSE : TAG_OPEN;
	p += *kind == TAG_CLOSE;
	n0 = p;
	while (p < x->end && (isalnum((unsigned char)*p) || *p == '_' ||
			      *p == '-' || *p == ':' || *p == '.'))
		p++;
	n = (size_t)(p - n0);
	gt = memchr(p, '>', (size_t)(x->end - p));
	if (!n || n >= NAME_MAX_LEN || !gt || memchr(p, '<', (size_t)(gt - p)))
		return QF_EFORMAT;
	memcpy(name, n0, n);
	name[n] = '\0';
	if (gt[-1] == '/' && *kind == TAG_OPEN)
		*kind = TAG_EMPTY;
	x->p = gt + 1;
	return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!*s)
		return QF_EFORMAT;
	for (; *s; s++) {
		if (!isdigit((unsigned char)*s) ||
		    v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return QF_EFORMAT;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return 0;
}

/* ETag text without its quotes into out[96] */
static int etag_copy(const char *s, char out[96])
{
	size_t n = strlen(s);

	if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
		s++;
		n -= 2;
	}
	if (n >= 96)
		return QF_EFORMAT;
	memcpy(out, s, n);
	out[n] = '\0';
	return 0;
}

struct list_state {
	struct qf_s3_list *out;
	struct qf_s3_obj *cur;	/* inside <Contents>, else NULL */
	bool truncated;
	char *next;		/* owned */
};

/* A leaf element <name>text</name>. */
static int list_leaf(struct list_state *st, const char *name,
		     struct qf_buf *text)
{
	struct qf_s3_obj *o = st->cur;

	if (!o) {
		if (!strcmp(name, "IsTruncated"))
			st->truncated = !strcmp(text->data, "true");
		if (strcmp(name, "NextContinuationToken"))
			return 0;
		free(st->next);
		st->next = strdup(text->data);
		return st->next ? 0 : -ENOMEM;
	}
	if (!strcmp(name, "Key")) {
		if (o->key || text->len > QF_S3_KEY_MAX || !text->len ||
		    strlen(text->data) != text->len)
			return QF_EFORMAT;
		o->key = qf_buf_detach(text, NULL);
		return 0;
	}
	if (!strcmp(name, "Size"))
		return parse_u64(text->data, &o->size);
	if (!strcmp(name, "ETag"))
		return etag_copy(text->data, o->etag);
	if (!strcmp(name, "LastModified"))
		return qf_s3_parse_iso8601(text->data, text->len,
					   &o->last_modified);
	return 0;
}

/* <Contents> opens (cur set) or closes (the object kept). */
static int list_contents(struct list_state *st, bool open)
{
	struct qf_s3_list *l = st->out;

	if (open) {
		if (st->cur)
			return QF_EFORMAT;
		if (qf_grow(&l->obj, l->n + 1, &l->cap, 16, sizeof(*l->obj)))
			return -ENOMEM;
		st->cur = &l->obj[l->n];
		memset(st->cur, 0, sizeof(*st->cur));
		return 0;
	}
	if (!st->cur || !st->cur->key)
		return QF_EFORMAT;
	st->cur = NULL;
	l->n++;
	return 0;
}

static int list_step(struct xml *x, struct list_state *st, struct qf_buf *t)
{
	char name[NAME_MAX_LEN], close[NAME_MAX_LEN];
	enum tag_kind kind, k2;
	const char *save;
	int ret;

	ret = xml_tag(x, &kind, name);
	if (ret || kind == TAG_SKIP)
		return ret;
	if (!strcmp(name, "Contents") && kind != TAG_EMPTY)
		return list_contents(st, kind == TAG_OPEN);
	if (kind == TAG_CLOSE)
		return 0;
	if (kind == TAG_EMPTY) {
		qf_buf_reset(t);
		ret = qf_buf_adds(t, "");
		return ret ? ret : list_leaf(st, name, t);
	}
	ret = xml_text(x, t);
	if (ret)
		return ret;
	save = x->p;
	ret = xml_tag(x, &k2, close);
	if (ret)
		return ret;
	if (k2 == TAG_CLOSE && !strcmp(close, name))
		return list_leaf(st, name, t);
	x->p = save;		/* a container: its children come next */
	return 0;
}

/* the objects appended since n0 taken back */
static void list_rollback(struct qf_s3_list *out, size_t n0)
{
	size_t i;

	for (i = n0; i < out->n; i++)
		free(out->obj[i].key);
	out->n = n0;
}

int qf_s3_list_parse(const char *xml, size_t len, struct qf_s3_list *out,
		     bool *truncated, char **next)
{
	struct list_state st = { out, NULL, false, NULL };
	struct qf_buf t = QF_BUF_INIT;
	struct xml x = { xml, xml + len };
	size_t n0 = out->n;
	int ret = 0;

	*next = NULL;
	*truncated = false;
	if (len > QF_S3_LIST_MAX_BODY)
		return QF_EFORMAT;
	while (!ret) {
		while (x.p < x.end && *x.p != '<')
			x.p++;		/* text between containers */
		if (x.p >= x.end)
			break;
		ret = list_step(&x, &st, &t);
	}
	if (!ret && st.cur)
		ret = QF_EFORMAT;	/* <Contents> never closed */
	qf_buf_release(&t);
	if (ret) {
		if (st.cur)
			free(st.cur->key);
		st.cur = NULL;
		list_rollback(out, n0);
		free(st.next);
		return ret;
	}
	*truncated = st.truncated;
	*next = st.next;
	return 0;
}

void qf_s3_list_free(struct qf_s3_list *l)
{
	size_t i;

	if (!l)
		return;
	for (i = 0; i < l->n; i++)
		free(l->obj[i].key);
	free(l->obj);
	l->obj = NULL;
	l->n = 0;
	l->cap = 0;
}


/* "continuation-token=..&list-type=2[&max-keys=N]&prefix=..", sorted */
static int list_query(struct qf_s3 *s, const char *prefix, const char *token,
		      struct qf_buf *q)
{
	int ret = 0;

	qf_buf_reset(q);
	if (token) {
		ret = qf_buf_adds(q, "continuation-token=");
		if (!ret)
			ret = qf_sigv4_uri_encode(token, false, q);
		if (!ret)
			ret = qf_buf_adds(q, "&");
	}
	if (!ret)
		ret = qf_buf_adds(q, "list-type=2");
	if (!ret && qf_s3_list_page(s))
		ret = qf_buf_addf(q, "&max-keys=%u", qf_s3_list_page(s));
	if (!ret)
		ret = qf_buf_adds(q, "&prefix=");
	if (!ret)
		ret = qf_sigv4_uri_encode(prefix ? prefix : "", false, q);
	return ret;
}

int qf_s3_list(struct qf_s3 *s, const char *prefix, struct qf_s3_list *out,
	       struct qf_s3_resp *r)
{
	struct qf_buf query = QF_BUF_INIT;
	char *token = NULL;
	bool more = true;
	int ret = 0;

	while (more && !ret) {
		ret = list_query(s, prefix, token, &query);
		free(token);
		token = NULL;
		if (ret)
			break;
		ret = qf_s3_get_query(s, query.data, QF_S3_LIST_MAX_BODY, r);
		if (!ret && r->status != 200)
			ret = -EIO;
		if (!ret)
			ret = qf_s3_list_parse(r->body.data ? r->body.data : "",
					       r->body.len, out, &more, &token);
		if (!ret && more && (!token || !*token))
			ret = QF_EFORMAT;	/* would loop forever */
	}
	free(token);
	qf_buf_release(&query);
	return ret;
}
