/*
 * tokenizer.c - Hugging Face tokenizer.json: loading (vocabulary,
 * merges, added tokens, the normalizer, pre-tokenizer, post-processor and
 * decoder steps).  Splitting on added tokens and encoding are in
 * tok_encode.c, the encoding pipeline proper (normalizers,
 * pre-tokenizers, BPE) in tok_bpe.c, decoding in tok_decode.c.
 *
 * Two families are supported: byte-level BPE (GPT-2, Llama 3, Qwen2/3,
 * o200k as in GPT-4o and Phi-4-mini) and sentencepiece-style BPE with byte
 * fallback (Llama 2, Mistral, Gemma 2/3, Phi-3).  Where the
 * Rust crate and @huggingface/tokenizers (our reference ids) differ, we
 * follow the latter, e.g. added tokens are split longest-match first and
 * single_word is ignored.  Anything else in a file is QF_EUNSUPPORTED with
 * its name in *why, never a silent difference in ids.
 *
 * Every field of the file is checked (QF_EFORMAT) before it is used: the
 * file may come from anywhere.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tok.h"
#include "tok_i.h"

/* Error text with names in it: valid until the next failure here. */
static _Thread_local char tok_why[160];

static int fail(const char **why, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(const char **why, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(tok_why, sizeof(tok_why), fmt, ap);
	va_end(ap);
	if (why)
		*why = tok_why;
	return err;
}

#define EFMT(msg) fail(why, QF_EFORMAT, "%s", msg)
#define EUNS(msg, name) fail(why, QF_EUNSUPPORTED, msg, name)

/* ------------------------------------------------------------------ */
/* JSON helpers                                                         */

static const cJSON *member(const cJSON *o, const char *name)
{
	return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, name)
				 : NULL;
}

static bool is_null(const cJSON *v)
{
	return !v || cJSON_IsNull(v);
}

/* Optional bool member; absent or null gives def.  -1 on a bad type. */
static int get_bool(const cJSON *o, const char *name, bool def, bool *out)
{
	const cJSON *v = member(o, name);

	if (is_null(v)) {
		*out = def;
		return 0;
	}
	if (!cJSON_IsBool(v))
		return -1;
	*out = cJSON_IsTrue(v);
	return 0;
}

static const char *get_str(const cJSON *o, const char *name)
{
	const cJSON *v = member(o, name);

	if (!cJSON_IsString(v) || !v->valuestring ||
	    strlen(v->valuestring) > QF_TOK_MAX_TOKEN)
		return NULL;
	return v->valuestring;
}

static bool get_id(const cJSON *v, int32_t *out)
{
	double d;

	if (!cJSON_IsNumber(v))
		return false;
	d = v->valuedouble;
	if (!(d >= 0 && d < QF_TOK_MAX_IDS) || d != (double)(int32_t)d)
		return false;
	*out = (int32_t)d;
	return true;
}

static char *dup_str(const char *s, size_t *len)
{
	*len = strlen(s);
	return strdup(s);
}

/* ------------------------------------------------------------------ */
/* byte-level map (GPT-2's bytes_to_unicode)                            */

static uint32_t byte_to_cp(uint8_t b)
{
	unsigned k, n = 0;

	if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
		return b;
	/* the others go to 256 + their index among the unprintable */
	for (k = 0; k < b; k++)
		if (!((k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) ||
		      k >= 0xAE))
			n++;
	return 256 + n;
}

/* Model key of a vocab string: raw bytes for byte-level models when every
 * char maps back to a byte, else the string itself (as Rust does). */
static int model_key(const struct qf_tok *t, const uint32_t *cp2byte,
		     const char *s, size_t n, struct qf_buf *out)
{
	size_t i = 0, len;
	uint32_t cp;

	qf_buf_reset(out);
	if (!t->bytelevel)
		return qf_buf_add(out, s, n);
	while (i < n) {
		char b;
		int ret;

		len = qf_utf8_decode((const uint8_t *)s + i, n - i, &cp);
		if (cp == QF_UTF8_BAD || cp >= 324 || cp2byte[cp] > 255) {
			qf_buf_reset(out);
			return qf_buf_add(out, s, n);
		}
		b = (char)cp2byte[cp];
		ret = qf_buf_add(out, &b, 1);
		if (ret)
			return ret;
		i += len;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* vocab                                                                */

static int set_str(struct qf_tok *t, int32_t id, const char *s, size_t n)
{
	if (qf_grow(&t->pool, t->pool_len + n + 1, &t->pool_cap, 1 << 16,
		    1) < 0)
		return -ENOMEM;
	memcpy(t->pool + t->pool_len, s, n);
	t->str[id].off = t->pool_len;
	t->str[id].len = (uint32_t)n;
	t->pool_len += n;
	return 0;
}

/* Index id under its key unless the key is taken (first one wins). */
static void hash_insert(struct qf_tok *t, int32_t id)
{
	const char *s = t->pool + t->str[id].off;
	size_t n = t->str[id].len;
	size_t i;

	if (qf_tok_lookup(t, s, n) >= 0)
		return;
	i = qf_tok_hash(s, n) & t->vmask;
	while (t->vhash[i])
		i = (i + 1) & t->vmask;
	t->vhash[i] = (uint32_t)id + 1;
}

static size_t pow2_above(size_t n)
{
	size_t p = 64;

	while (p < 2 * n)
		p *= 2;
	return p;
}

static int count_ids(const cJSON *vocab, const cJSON *added, size_t *nids,
		     const char **why)
{
	const cJSON *e;
	int32_t id, max = -1;

	cJSON_ArrayForEach(e, vocab) {
		if (!get_id(e, &id) || !e->string ||
		    strlen(e->string) > QF_TOK_MAX_TOKEN)
			return EFMT("vocab entry is not a token and a valid id");
		max = id > max ? id : max;
	}
	cJSON_ArrayForEach(e, added) {
		if (!get_id(member(e, "id"), &id))
			return EFMT("added token without a valid id");
		max = id > max ? id : max;
	}
	*nids = (size_t)max + 1;
	return 0;
}

static int load_vocab(struct qf_tok *t, const cJSON *vocab,
		      const uint32_t *cp2byte, const char **why)
{
	struct qf_buf key = QF_BUF_INIT;
	const cJSON *e;
	int32_t id = 0;
	int ret = 0;

	cJSON_ArrayForEach(e, vocab) {
		get_id(e, &id);
		if (t->str[id].len != UINT32_MAX) {
			ret = EFMT("two vocab tokens share an id");
			break;
		}
		ret = model_key(t, cp2byte, e->string, strlen(e->string),
				&key);
		if (!ret)
			ret = set_str(t, id, key.data ? key.data : "", key.len);
		if (ret)
			break;
	}
	qf_buf_release(&key);
	return ret;
}

static int load_added(struct qf_tok *t, const cJSON *added,
		      const uint32_t *cp2byte, const char **why)
{
	struct qf_buf key = QF_BUF_INIT;
	const cJSON *e;
	size_t k = 0;
	int ret = 0;

	k = (size_t)cJSON_GetArraySize(added);
	if (k > QF_TOK_MAX_ADDED)
		return EFMT("too many added tokens");
	t->added = calloc(k + 1, sizeof(*t->added));
	if (!t->added)
		return -ENOMEM;
	t->nadded = k;		/* only now: close() walks added[] */
	k = 0;
	cJSON_ArrayForEach(e, added) {
		struct qf_tok_added *a = &t->added[k++];
		const char *c = get_str(e, "content");

		get_id(member(e, "id"), &a->id);
		if (!c || !*c) {
			ret = EFMT("added token without content");
			break;
		}
		if (get_bool(e, "special", false, &a->special) ||
		    get_bool(e, "normalized", !a->special, &a->normalized) ||
		    get_bool(e, "lstrip", false, &a->lstrip) ||
		    get_bool(e, "rstrip", false, &a->rstrip)) {
			ret = EFMT("added token flag is not a bool");
			break;
		}
		a->content = dup_str(c, &a->len);
		if (!a->content) {
			ret = -ENOMEM;
			break;
		}
		t->flags[a->id] = QF_TOK_F_ADDED |
				  (a->special ? QF_TOK_F_SPECIAL : 0);
		t->added_of[a->id] = (int32_t)(k - 1);
		if (t->str[a->id].len == UINT32_MAX) {
			ret = model_key(t, cp2byte, c, a->len, &key);
			if (!ret)
				ret = set_str(t, a->id, key.data, key.len);
			if (ret)
				break;
		}
	}
	qf_buf_release(&key);
	return ret;
}

static int32_t key_id(const struct qf_tok *t, const uint32_t *cp2byte,
		      const char *s, size_t n, struct qf_buf *key)
{
	if (model_key(t, cp2byte, s, n, key))
		return -2;
	return qf_tok_lookup(t, key->data ? key->data : "", key->len);
}

static int load_merges(struct qf_tok *t, const cJSON *merges,
		       const uint32_t *cp2byte, const char **why)
{
	struct qf_buf key = QF_BUF_INIT, cat = QF_BUF_INIT;
	const cJSON *e;
	uint32_t rank = 0;
	int ret = 0;

	t->nmerges = (size_t)cJSON_GetArraySize(merges);
	if (t->nmerges > QF_TOK_MAX_MERGES)
		return EFMT("too many merges");
	t->mmask = pow2_above(t->nmerges) - 1;
	t->mhash = calloc(t->mmask + 1, sizeof(*t->mhash));
	if (!t->mhash)
		return -ENOMEM;
	cJSON_ArrayForEach(e, merges) {
		const char *a, *b, *sp;
		size_t al, bl;
		int32_t ia, ib, ic;

		if (cJSON_IsString(e)) {
			a = e->valuestring;
			sp = strchr(a, ' ');
			if (!sp || strchr(sp + 1, ' ')) {
				ret = EFMT("merge is not two tokens");
				break;
			}
			al = (size_t)(sp - a);
			b = sp + 1;
		} else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
			   cJSON_IsString(e->child) &&
			   cJSON_IsString(e->child->next)) {
			a = e->child->valuestring;
			al = strlen(a);
			b = e->child->next->valuestring;
		} else {
			ret = EFMT("merge is not two tokens");
			break;
		}
		bl = strlen(b);
		if (al > QF_TOK_MAX_TOKEN || bl > QF_TOK_MAX_TOKEN) {
			ret = EFMT("merge token too long");
			break;
		}
		qf_buf_reset(&cat);
		if (qf_buf_add(&cat, a, al) || qf_buf_add(&cat, b, bl)) {
			ret = -ENOMEM;
			break;
		}
		ia = key_id(t, cp2byte, a, al, &key);
		ib = key_id(t, cp2byte, b, bl, &key);
		ic = key_id(t, cp2byte, cat.data, cat.len, &key);
		if (ia == -2 || ib == -2 || ic == -2) {
			ret = -ENOMEM;
			break;
		}
		if (ia < 0 || ib < 0 || ic < 0) {
			ret = EFMT("merge references a token not in the vocab");
			break;
		}
		qf_tok_merge_add(t, ia, ib, ic, rank++);
	}
	qf_buf_release(&key);
	qf_buf_release(&cat);
	return ret;
}

static int load_model(struct qf_tok *t, const cJSON *root, const char **why)
{
	const cJSON *model = member(root, "model");
	const cJSON *vocab = member(model, "vocab");
	const cJSON *merges = member(model, "merges");
	const cJSON *added = member(root, "added_tokens");
	const cJSON *type = member(model, "type");
	struct qf_buf key = QF_BUF_INIT;
	uint32_t cp2byte[324];
	const char *s;
	size_t i;
	int ret;

	if (!cJSON_IsObject(model))
		return EFMT("no model object");
	if (cJSON_IsString(type) && strcmp(type->valuestring, "BPE") != 0)
		return EUNS("model type '%s' not supported", type->valuestring);
	if (!is_null(type) && !cJSON_IsString(type))
		return EFMT("model type is not a string");
	if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
		return EFMT("BPE model needs a vocab object and merges array");
	if (!is_null(added) && !cJSON_IsArray(added))
		return EFMT("added_tokens is not an array");
	for (i = 0; i < 2; i++) {
		s = get_str(model, i ? "end_of_word_suffix" :
				       "continuing_subword_prefix");
		if (s && *s)
			return EUNS("bpe '%s' not supported", i ?
				    "end_of_word_suffix" :
				    "continuing_subword_prefix");
	}
	if (get_bool(model, "byte_fallback", false, &t->byte_fallback) ||
	    get_bool(model, "fuse_unk", false, &t->fuse_unk) ||
	    get_bool(model, "ignore_merges", false, &t->ignore_merges))
		return EFMT("model flag is not a bool");
	ret = count_ids(vocab, added, &t->nids, why);
	if (ret)
		return ret;
	t->str = malloc((t->nids + 1) * sizeof(*t->str));
	t->flags = calloc(t->nids + 1, 1);
	t->added_of = malloc((t->nids + 1) * sizeof(*t->added_of));
	t->vmask = pow2_above(t->nids) - 1;
	t->vhash = calloc(t->vmask + 1, sizeof(*t->vhash));
	if (!t->str || !t->flags || !t->added_of || !t->vhash)
		return -ENOMEM;
	for (i = 0; i < t->nids; i++) {
		t->str[i].len = UINT32_MAX;
		t->added_of[i] = -1;
	}
	for (i = 0; i < 324; i++)
		cp2byte[i] = 256;
	for (i = 0; i < 256; i++)
		cp2byte[byte_to_cp((uint8_t)i)] = (uint32_t)i;
	ret = load_vocab(t, vocab, cp2byte, why);
	if (!ret && !is_null(added))
		ret = load_added(t, added, cp2byte, why);
	if (ret)
		return ret;
	for (i = 0; i < t->nids; i++)
		if (t->str[i].len != UINT32_MAX)
			hash_insert(t, (int32_t)i);
	ret = load_merges(t, merges, cp2byte, why);
	if (ret)
		return ret;
	t->unk = -1;
	s = get_str(model, "unk_token");
	if (s)
		t->unk = key_id(t, cp2byte, s, strlen(s), &key);
	for (i = 0; i < 256 && t->unk >= -1; i++) {
		char hex[8];
		char b = (char)i;

		snprintf(hex, sizeof(hex), "<0x%02X>", (unsigned)i);
		t->byte_fb[i] = qf_tok_lookup(t, hex, 6);
		t->byte_unit[i] = qf_tok_lookup(t, &b, 1);
	}
	qf_buf_release(&key);
	return t->unk < -1 ? -ENOMEM : 0;
}

/* ------------------------------------------------------------------ */
/* normalizer, pre-tokenizer, post-processor, decoder                   */

static const char *type_of(const cJSON *o)
{
	const char *s = get_str(o, "type");

	return s ? s : "";
}

typedef int (*step_loader)(struct qf_tok *t, const cJSON *o, int depth,
			   const char **why);

/*
 * The frame of every step loader: null is no step, what is not an object
 * (or nests deeper than 8) is QF_EFORMAT, and a "Sequence" loads each
 * member of its list (which strict requires to be an array) with load.
 * A single step when nsteps (the caller's steps so far) is already
 * QF_TOK_MAX_STEPS is QF_EFORMAT too.
 * Returns 1 when o is a single step for the caller, else 0 or the error.
 */
static int load_seq(struct qf_tok *t, const cJSON *o, int depth,
		    const char *what, const char *list, bool strict,
		    size_t nsteps, step_loader load, const char **why)
{
	const cJSON *e, *l;
	int ret;

	if (is_null(o))
		return 0;
	if (!cJSON_IsObject(o) || depth > 8)
		return fail(why, QF_EFORMAT, "%s is not an object", what);
	if (strcmp(type_of(o), "Sequence"))
		return nsteps < QF_TOK_MAX_STEPS ? 1 :
		       fail(why, QF_EFORMAT, "too many %ss", what);
	l = member(o, list);
	if (strict && !cJSON_IsArray(l))
		return fail(why, QF_EFORMAT, "%s sequence without a list",
			    what);
	cJSON_ArrayForEach(e, l) {
		ret = load(t, e, depth + 1, why);
		if (ret)
			return ret;
	}
	return 0;
}

static int load_norm(struct qf_tok *t, const cJSON *o, int depth,
		     const char **why)
{
	const char *ty = type_of(o), *a, *b;
	struct qf_tok_norm *nm;
	int ret;

	ret = load_seq(t, o, depth, "normalizer", "normalizers", true,
		       t->nnorm, load_norm, why);
	if (ret <= 0)
		return ret;
	nm = &t->norm[t->nnorm];
	if (!strcmp(ty, "NFC")) {
		nm->kind = QF_TOK_NORM_NFC;
	} else if (!strcmp(ty, "Prepend")) {
		a = get_str(o, "prepend");
		if (!a)
			return EFMT("prepend normalizer without text");
		nm->kind = QF_TOK_NORM_PREPEND;
		nm->a = dup_str(a, &nm->alen);
		if (!nm->a)
			return -ENOMEM;
	} else if (!strcmp(ty, "Replace")) {
		a = get_str(member(o, "pattern"), "String");
		b = get_str(o, "content");
		if (!a && member(member(o, "pattern"), "Regex"))
			return EUNS("%s normalizer with a regex not supported",
				    ty);
		if (!a || !b)
			return EFMT("replace normalizer without strings");
		nm->kind = QF_TOK_NORM_REPLACE;
		nm->a = dup_str(a, &nm->alen);
		nm->b = dup_str(b, &nm->blen);
		if (!nm->a || !nm->b) {
			t->nnorm++;	/* freed by qf_tok_close() */
			return -ENOMEM;
		}
	} else {
		return EUNS("normalizer '%s' not supported", ty);
	}
	t->nnorm++;
	return 0;
}

/*
 * Split on a literal (Gemma 2/3: " ", MergedWithPrevious, after a
 * normalizer that leaves no space, so a no-op there).  Isolated and
 * MergedWithPrevious as the Rust crate defines them; the reference treats
 * every behavior but Removed as Isolated, which differs only on text that
 * still holds the literal.
 */
static int load_split_lit(struct qf_tok_pre *p, const cJSON *o,
			  const char *beh, bool invert, const char **why)
{
	const char *lit = get_str(member(o, "pattern"), "String");

	if (!lit)
		return EFMT("split pattern is neither Regex nor String");
	if (!beh || invert || (strcmp(beh, "Isolated") &&
			       strcmp(beh, "MergedWithPrevious")))
		return EUNS("split behavior '%s' not supported",
			    beh ? beh : "(none)");
	p->lit_len = strlen(lit);
	if (!p->lit_len || p->lit_len >= sizeof(p->lit))
		return EUNS("split literal of %zu bytes not supported",
			    p->lit_len);
	memcpy(p->lit, lit, p->lit_len);
	p->merge_prev = !strcmp(beh, "MergedWithPrevious");
	p->kind = QF_TOK_PRE_SPLIT_LIT;
	return 0;
}

static int load_split(struct qf_tok_pre *p, const cJSON *o, const char **why)
{
	const char *re = get_str(member(o, "pattern"), "Regex");
	const char *beh = get_str(o, "behavior");
	bool invert;

	if (get_bool(o, "invert", false, &invert))
		return EFMT("split invert is not a bool");
	if (!re)
		return load_split_lit(p, o, beh, invert, why);
	/* every regex here matches every character, so keeping the
	 * matches (Removed, inverted: GPT-4o's file) is Isolated */
	if (!beh || ((strcmp(beh, "Isolated") || invert) &&
		     (strcmp(beh, "Removed") || !invert)))
		return EUNS("split behavior '%s' not supported",
			    beh ? beh : "(none)");
	p->pat = qf_tok_split_pat(re);
	if (p->pat == QF_TOK_PAT_NONE)
		return EUNS("split regex not recognized: %.100s", re);
	p->kind = QF_TOK_PRE_SPLIT;
	return 0;
}

/* prepend_scheme, or the older add_prefix_space; -1 on bad values */
static int load_prepend(const cJSON *o, enum qf_tok_prepend *out)
{
	const char *s = get_str(o, "prepend_scheme");
	bool add;

	if (s) {
		if (!strcmp(s, "always"))
			*out = QF_TOK_PREPEND_ALWAYS;
		else if (!strcmp(s, "first"))
			*out = QF_TOK_PREPEND_FIRST;
		else if (!strcmp(s, "never"))
			*out = QF_TOK_PREPEND_NEVER;
		else
			return -1;
		return 0;
	}
	if (get_bool(o, "add_prefix_space", true, &add))
		return -1;
	*out = add ? QF_TOK_PREPEND_ALWAYS : QF_TOK_PREPEND_NEVER;
	return 0;
}

static int load_pre(struct qf_tok *t, const cJSON *o, int depth,
		    const char **why)
{
	const char *ty = type_of(o), *r;
	struct qf_tok_pre *p;
	bool regex;
	int ret;

	ret = load_seq(t, o, depth, "pre-tokenizer", "pretokenizers", true,
		       t->npre, load_pre, why);
	if (ret <= 0)
		return ret;
	p = &t->pre[t->npre];
	if (!strcmp(ty, "Split")) {
		ret = load_split(p, o, why);
		if (ret)
			return ret;
	} else if (!strcmp(ty, "ByteLevel")) {
		p->kind = QF_TOK_PRE_BYTELEVEL;
		if (get_bool(o, "add_prefix_space", false, &p->prefix_space) ||
		    get_bool(o, "use_regex", true, &regex))
			return EFMT("byte-level flag is not a bool");
		p->pat = regex ? QF_TOK_PAT_GPT2 : QF_TOK_PAT_NONE;
		t->bytelevel = true;
	} else if (!strcmp(ty, "Metaspace")) {
		p->kind = QF_TOK_PRE_METASPACE;
		r = get_str(o, "replacement");
		if (!r)
			r = "\xe2\x96\x81";
		p->repl_len = strlen(r);
		if (!p->repl_len || p->repl_len >= sizeof(p->repl) ||
		    load_prepend(o, &p->prepend) ||
		    get_bool(o, "split", true, &p->split))
			return EFMT("bad metaspace pre-tokenizer");
		memcpy(p->repl, r, p->repl_len);
	} else {
		return EUNS("pre-tokenizer '%s' not supported", ty);
	}
	t->npre++;
	return 0;
}

static int load_template(struct qf_tok *t, const cJSON *o, const char **why)
{
	const cJSON *single = member(o, "single"), *sp = member(o, "special_tokens");
	const cJSON *e, *x;
	bool seen_a = false;
	int ret;

	if (!cJSON_IsArray(single))
		return EFMT("template without a single list");
	cJSON_ArrayForEach(e, single) {
		const char *name;

		if (member(e, "Sequence")) {
			if (seen_a)
				return EUNS("template with %s sequences",
					    "two");
			seen_a = true;
			continue;
		}
		name = get_str(member(e, "SpecialToken"), "id");
		x = member(member(sp, name ? name : ""), "ids");
		if (!name || !cJSON_IsArray(x))
			return EFMT("template special token not defined");
		cJSON_ArrayForEach(x, x) {
			struct qf_tok_ids ids;
			int32_t id;

			if (!get_id(x, &id) || (size_t)id >= t->nids ||
			    t->str[id].len == UINT32_MAX)
				return EFMT("template token id out of range");
			ids.v = seen_a ? t->tmpl_post : t->tmpl_pre;
			ids.n = seen_a ? t->ntmpl_post : t->ntmpl_pre;
			ids.cap = ids.n;
			if (ids.n >= 64)
				return EFMT("template too long");
			ret = qf_tok_ids_push(&ids, id);
			if (ret)
				return ret;
			if (seen_a) {
				t->tmpl_post = ids.v;
				t->ntmpl_post = ids.n;
			} else {
				t->tmpl_pre = ids.v;
				t->ntmpl_pre = ids.n;
			}
		}
	}
	return 0;
}

static int load_post(struct qf_tok *t, const cJSON *o, int depth,
		     const char **why)
{
	const char *ty = type_of(o);
	int ret;

	ret = load_seq(t, o, depth, "post-processor", "processors", false, 0,
		       load_post, why);
	if (ret <= 0)
		return ret;
	if (!strcmp(ty, "ByteLevel"))
		return 0;	/* it only trims offsets */
	if (!strcmp(ty, "TemplateProcessing"))
		return load_template(t, o, why);
	return EUNS("post-processor '%s' not supported", ty);
}

static int load_dec(struct qf_tok *t, const cJSON *o, int depth,
		    const char **why)
{
	const char *ty = type_of(o), *a, *b;
	const cJSON *e;
	struct qf_tok_dec *d;
	enum qf_tok_prepend pre;
	double start, stop;
	int ret;

	if (cJSON_IsObject(o) && depth <= 8)
		t->has_decoder = true;
	ret = load_seq(t, o, depth, "decoder", "decoders", false, t->ndec,
		       load_dec, why);
	if (ret <= 0)
		return ret;
	d = &t->dec[t->ndec];
	if (!strcmp(ty, "ByteLevel")) {
		d->kind = QF_TOK_DEC_BYTELEVEL;
	} else if (!strcmp(ty, "ByteFallback")) {
		d->kind = QF_TOK_DEC_BYTEFALLBACK;
	} else if (!strcmp(ty, "Fuse")) {
		d->kind = QF_TOK_DEC_FUSE;
	} else if (!strcmp(ty, "Replace")) {
		a = get_str(member(o, "pattern"), "String");
		b = get_str(o, "content");
		if (!a || !b)
			return EUNS("%s decoder without strings not supported",
				    ty);
		d->kind = QF_TOK_DEC_REPLACE;
		d->a = dup_str(a, &d->alen);
		d->b = dup_str(b, &d->blen);
	} else if (!strcmp(ty, "Strip")) {
		a = get_str(o, "content");
		e = member(o, "start");
		start = cJSON_IsNumber(e) ? e->valuedouble : -1;
		e = member(o, "stop");
		stop = cJSON_IsNumber(e) ? e->valuedouble : -1;
		if (!a || !(start >= 0 && start < 1e6) ||
		    !(stop >= 0 && stop < 1e6))
			return EFMT("bad strip decoder");
		d->kind = QF_TOK_DEC_STRIP;
		d->a = dup_str(a, &d->alen);
		d->start = (int)start;
		d->stop = (int)stop;
	} else if (!strcmp(ty, "Metaspace")) {
		a = get_str(o, "replacement");
		if (load_prepend(o, &pre))
			return EFMT("bad metaspace decoder");
		d->kind = QF_TOK_DEC_METASPACE;
		d->a = dup_str(a ? a : "\xe2\x96\x81", &d->alen);
		d->prepend = pre != QF_TOK_PREPEND_NEVER;
	} else {
		return EUNS("decoder '%s' not supported", ty);
	}
	t->ndec++;
	if ((d->kind == QF_TOK_DEC_REPLACE && (!d->a || !d->b)) ||
	    ((d->kind == QF_TOK_DEC_STRIP || d->kind == QF_TOK_DEC_METASPACE) &&
	     !d->a))
		return -ENOMEM;
	return 0;
}

/* ------------------------------------------------------------------ */
/* load                                                                 */

static int32_t added_named(const struct qf_tok *t, const char *const *names)
{
	size_t i, k;
	int special;

	/* special ones first: Gemma's "</s>" is a plain (HTML) token */
	for (special = 1; special >= 0; special--)
		for (k = 0; names[k]; k++)
			for (i = 0; i < t->nadded; i++)
				if (t->added[i].special == special &&
				    !strcmp(t->added[i].content, names[k]))
					return t->added[i].id;
	return -1;
}

/*
 * BOS: what the template puts first; else a conventionally named added
 * token (Llama 3's release adds none yet has one), special ones first.
 * EOS likewise.
 */
static void find_bos_eos(struct qf_tok *t)
{
	static const char *const bos[] = { "<s>", "<|begin_of_text|>",
					   "<bos>", "<|startoftext|>", NULL };
	static const char *const eos[] = { "</s>", "<|end_of_text|>",
					   "<|endoftext|>", "<eos>", NULL };

	t->bos = t->ntmpl_pre ? t->tmpl_pre[0] : added_named(t, bos);
	t->eos = t->ntmpl_post ? t->tmpl_post[t->ntmpl_post - 1] :
				 added_named(t, eos);
}

static int normalize_added(struct qf_tok *t)
{
	struct qf_buf b = QF_BUF_INIT;
	size_t k;
	int ret = 0;

	for (k = 0; k < t->nadded && !ret; k++) {
		struct qf_tok_added *a = &t->added[k];

		if (!a->normalized || !t->nnorm)
			continue;
		ret = qf_tok_normalize(t, a->content, a->len, &b);
		if (!ret)
			a->norm = qf_buf_detach(&b, &a->nlen);
		if (!ret && !a->norm)
			a->norm = strdup("");	/* never matched: empty */
		if (!a->norm)
			ret = -ENOMEM;
	}
	qf_buf_release(&b);
	return ret;
}

int qf_tok_load(const char *json, size_t len, struct qf_tok **out,
		const char **why)
{
	struct qf_tok *t;
	cJSON *root;
	int ret;

	if (len > QF_TOK_MAX_JSON)
		return EFMT("tokenizer.json too large");
	root = cJSON_ParseWithLength(json, len);
	if (!root)
		return EFMT("tokenizer.json is not valid json");
	t = calloc(1, sizeof(*t));
	if (!t) {
		ret = -ENOMEM;
		goto out_json;
	}
	if (!cJSON_IsObject(root)) {
		ret = EFMT("tokenizer.json is not an object");
		goto out_tok;
	}
	ret = load_norm(t, member(root, "normalizer"), 0, why);
	if (!ret)
		ret = load_pre(t, member(root, "pre_tokenizer"), 0, why);
	if (!ret)
		ret = load_model(t, root, why);
	if (!ret)
		ret = load_post(t, member(root, "post_processor"), 0, why);
	if (!ret)
		ret = load_dec(t, member(root, "decoder"), 0, why);
	if (!ret)
		ret = normalize_added(t);
	if (!ret)
		ret = qf_tok_matcher_init(t, &t->match_raw, false);
	if (!ret)
		ret = qf_tok_matcher_init(t, &t->match_norm, true);
	if (ret)
		goto out_tok;
	find_bos_eos(t);
	cJSON_Delete(root);
	*out = t;
	return 0;

out_tok:
	qf_tok_close(t);
out_json:
	cJSON_Delete(root);
	return ret;
}

int qf_tok_open(const char *path, struct qf_tok **out, const char **why)
{
	struct qf_buf b = QF_BUF_INIT;
	int ret;

	ret = qf_read_file(path, QF_TOK_MAX_JSON, &b);
	if (ret < 0) {
		if (why)
			*why = "cannot read tokenizer.json";
		return ret;
	}
	ret = qf_tok_load(b.data ? b.data : "", b.len, out, why);
	qf_buf_release(&b);
	return ret;
}

int qf_model_tokenizer(const struct qf_model *m, struct qf_tok **out,
		       const char **why)
{
	struct qf_buf b = QF_BUF_INIT;
	int ret;

	ret = qf_src_read(m->dirfd, "tokenizer.json", QF_TOK_MAX_JSON, &b);
	if (ret < 0) {
		if (why)
			*why = "cannot read tokenizer.json";
		return ret;
	}
	ret = qf_tok_load(b.data ? b.data : "", b.len, out, why);
	qf_buf_release(&b);
	return ret;
}

void qf_tok_close(struct qf_tok *t)
{
	size_t i;

	if (!t)
		return;
	for (i = 0; i < t->nadded; i++) {
		free(t->added[i].content);
		free(t->added[i].norm);
	}
	for (i = 0; i < t->nnorm; i++) {
		free(t->norm[i].a);
		free(t->norm[i].b);
	}
	for (i = 0; i < t->ndec; i++) {
		free(t->dec[i].a);
		free(t->dec[i].b);
	}
	free(t->added);
	free(t->match_raw.idx);
	free(t->match_norm.idx);
	free(t->str);
	free(t->pool);
	free(t->vhash);
	free(t->flags);
	free(t->added_of);
	free(t->mhash);
	free(t->tmpl_pre);
	free(t->tmpl_post);
	free(t);
}

size_t qf_tok_vocab_size(const struct qf_tok *t)
{
	return t->nids;
}

int32_t qf_tok_bos(const struct qf_tok *t)
{
	return t->bos;
}

int32_t qf_tok_eos(const struct qf_tok *t)
{
	return t->eos;
}
