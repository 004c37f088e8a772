/*
 * gguf_vocab.c - the tokenizer.* keys of a GGUF file from the model's own
 * tokenizer.json and tokenizer_config.json, as llama.cpp's converter
 * writes them.
 *
 * Sources (llama.cpp, ggml-org/llama.cpp): convert_hf_to_gguf.py
 * get_vocab_base (gpt2: [PADn] gaps, control / user-defined added tokens)
 * and _set_vocab_llama_hf with gguf-py/gguf/vocab.py LlamaHfVocab (llama:
 * byte tokens type 6, special tokens control; its scores, all -1000, we
 * replace: see merge_scores()); src/llama-vocab.cpp for the
 * tokenizer.ggml.pre names it accepts, its need for merges and its SPM
 * merge order.  The file is read here rather than taken from the
 * tokenizer (tokenizer.c) because GGUF wants the raw byte-level strings.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_i.h"
#include "tok.h"

#define TOK_MAX_JSON (64u << 20)	/* bytes, as the tokenizer's bound */
#define TOK_MAX_CONFIG (16u << 20)	/* tokenizer_config.json */
#define TOK_MAX_TOKEN (1u << 20)	/* bytes of one token or merge */
#define TOK_MAX_MERGES (1u << 23)
#define TOK_MAX_ADDED (1u << 16)
#define TOK_MAX_TEMPLATE (1u << 20)
#define TOK_MAX_IDS (1 << 22)		/* largest vocabulary */

enum {				/* llama_token_type */
	TT_NORMAL = 1,
	TT_UNUSED = 5,
	TT_CONTROL = 3,
	TT_USER = 4,
	TT_BYTE = 6,
};

struct vocab {
	cJSON *tj;			/* tokenizer.json */
	cJSON *tc;			/* tokenizer_config.json or NULL */
	const char **tok;		/* [n] borrowed from tj; NULL = gap */
	int32_t *type;			/* [n] */
	int64_t n;			/* rows of token_embd */
	bool gpt2;			/* byte-level BPE, else llama (SPM) */
	const char *pre;		/* tokenizer.ggml.pre */
};

/* Integer id in [0, n), or -1. */
static int64_t jid(const cJSON *v, int64_t n)
{
	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
	    v->valuedouble < 0 || v->valuedouble >= (double)n)
		return -1;
	return (int64_t)v->valuedouble;
}

static bool has_type(const cJSON *o, const char *ty, const char *list)
{
	const cJSON *e;
	const char *t = jstr(o, "type");

	if (!t)
		return false;
	if (!strcmp(t, ty))
		return true;
	if (strcmp(t, "Sequence"))
		return false;
	cJSON_ArrayForEach(e, jget(o, list))
		if (jstr(e, "type") && !strcmp(jstr(e, "type"), ty))
			return true;
	return false;
}

/*
 * Whether a sentencepiece-style tokenizer.json puts "\u2581" before the
 * text (a Prepend normalizer, as Llama 2's; a Metaspace pre-tokenizer that
 * prepends).  Gemma's does not: llama.cpp, which prepends by default,
 * must be told (tokenizer.ggml.add_space_prefix false), as
 * convert_hf_to_gguf.py does for Gemma.
 */
static const cJSON *metaspace_of(const cJSON *pt)
{
	const char *ty = jstr(pt, "type");
	const cJSON *e;

	if (ty && !strcmp(ty, "Metaspace"))
		return pt;
	if (!ty || strcmp(ty, "Sequence"))
		return NULL;
	cJSON_ArrayForEach(e, jget(pt, "pretokenizers"))
		if (jstr(e, "type") && !strcmp(jstr(e, "type"), "Metaspace"))
			return e;
	return NULL;
}

static bool spm_space_prefix(const cJSON *tj)
{
	const cJSON *ms = metaspace_of(jget(tj, "pre_tokenizer"));
	const char *scheme = jstr(ms, "prepend_scheme");

	if (has_type(jget(tj, "normalizer"), "Prepend", "normalizers"))
		return true;
	if (!ms)
		return false;
	return scheme ? strcmp(scheme, "never") != 0 :
			!cJSON_IsFalse(jget(ms, "add_prefix_space"));
}

/* tokenizer.ggml.pre: the name of the pre-tokenizer's split regex. */
static const char *pre_name(const cJSON *pt)
{
	const char *ty = jstr(pt, "type"), *re;
	const cJSON *e;

	if (ty && !strcmp(ty, "ByteLevel")) {
		const cJSON *rx = jget(pt, "use_regex");

		return cJSON_IsFalse(rx) ? "default" : "gpt-2";
	}
	if (!ty || strcmp(ty, "Sequence"))
		return "default";
	cJSON_ArrayForEach(e, jget(pt, "pretokenizers")) {
		re = jstr(jget(e, "pattern"), "Regex");
		if (!jstr(e, "type") || strcmp(jstr(e, "type"), "Split") || !re)
			continue;
		if (qf_tok_pre_name(re))
			return qf_tok_pre_name(re);
	}
	return "default";
}

static int read_json(const struct qf_model *m, const char *name, size_t max,
		     bool optional, cJSON **out)
{
	struct qf_buf b = QF_BUF_INIT;
	int ret;

	*out = NULL;
	ret = qf_src_read(m->dirfd, name, max, &b);
	if (ret == -ENOENT && optional)
		return 0;
	if (ret < 0) {
		qf_err("%s: cannot read '%s': %s", m->dir, name,
		       qf_strerror(ret));
		return ret;
	}
	*out = cJSON_ParseWithLength(b.data ? b.data : "", b.len);
	qf_buf_release(&b);
	if (!*out || !cJSON_IsObject(*out)) {
		cJSON_Delete(*out);
		*out = NULL;
		qf_err("%s/%s: not a JSON object", m->dir, name);
		return QF_EFORMAT;
	}
	return 0;
}

static bool looks_special(const char *s)
{
	size_t n = strlen(s);

	/* convert_hf_to_gguf.py does_token_look_special() */
	return !strcmp(s, "<pad>") || !strcmp(s, "<mask>") ||
	       !strcmp(s, "<2mass>") || !strcmp(s, "[@BOS@]") ||
	       (n >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + n - 2, "|>")) ||
	       (n >= 8 && !strncmp(s, "<\xef\xbd\x9c", 4) &&
		!strcmp(s + n - 4, "\xef\xbd\x9c>")) ||
	       (!strncmp(s, "<unused", 7) && s[n - 1] == '>');
}

static bool is_byte_token(const char *s)
{
	return strlen(s) == 6 && !strncmp(s, "<0x", 3) && s[5] == '>' &&
	       strchr("0123456789ABCDEFabcdef", s[3]) &&
	       strchr("0123456789ABCDEFabcdef", s[4]) && s[3] && s[4];
}

/* Fill v->tok / v->type from tokenizer.json's vocab and added_tokens. */
static int vocab_tokens(struct vocab *v, const char **why)
{
	const cJSON *model = jget(v->tj, "model"), *e;
	int64_t id;
	size_t nadded = 0;

	if (!cJSON_IsObject(jget(model, "vocab")))
		VFAIL(QF_EFORMAT, "tokenizer.json: model.vocab is not an "
		      "object");
	cJSON_ArrayForEach(e, jget(model, "vocab")) {
		id = jid(e, v->n);
		if (id < 0)
			VFAIL(QF_EFORMAT, "tokenizer.json: a vocab id is "
			      "not an integer below the embedding rows");
		if (v->tok[id])
			VFAIL(QF_EFORMAT, "tokenizer.json: two tokens share an "
			      "id");
		if (strlen(e->string) > TOK_MAX_TOKEN)
			VFAIL(QF_EFORMAT, "tokenizer.json: token too long");
		v->tok[id] = e->string;
		v->type[id] = v->gpt2 || !is_byte_token(e->string) ?
			      TT_NORMAL : TT_BYTE;
	}
	cJSON_ArrayForEach(e, jget(v->tj, "added_tokens")) {
		const char *c = jstr(e, "content");
		bool special = cJSON_IsTrue(jget(e, "special"));

		id = jid(jget(e, "id"), TOK_MAX_IDS);
		if (id < 0 || !c || ++nadded > TOK_MAX_ADDED ||
		    strlen(c) > TOK_MAX_TOKEN)
			VFAIL(QF_EFORMAT, "tokenizer.json: bad added token");
		/* past the embedding rows (gemma-3-1b's <image_soft_token>):
		 * no model can emit it; the converter leaves it out too */
		if (id >= v->n)
			continue;
		v->tok[id] = c;
		if (special || (v->gpt2 && looks_special(c)))
			v->type[id] = TT_CONTROL;
		else if (v->gpt2 || !is_byte_token(c))
			v->type[id] = TT_USER;
	}
	return 0;
}

/* Id of a special token named in tokenizer_config.json, or -1. */
static int64_t special_id(const struct vocab *v, const char *what)
{
	char key[32];
	const cJSON *e = NULL, *t;
	const char *c;
	int64_t id = -1;

	snprintf(key, sizeof(key), "%s_token", what);
	t = jget(v->tc, key);
	c = cJSON_IsString(t) ? t->valuestring : jstr(t, "content");
	if (c) {
		cJSON_ArrayForEach(e, jget(v->tj, "added_tokens"))
			if (jstr(e, "content") &&
			    !strcmp(jstr(e, "content"), c))
				return jid(jget(e, "id"), v->n);
		id = jid(jget(jget(jget(v->tj, "model"), "vocab"), c), v->n);
	}
	return id;
}

/* ... or from config.json's <what>_token_id (a list: its first id). */
static int64_t config_id(const struct qf_model *m, const struct vocab *v,
			 const char *what)
{
	char key[32];
	const cJSON *t;

	snprintf(key, sizeof(key), "%s_token_id", what);
	t = jget(m->config, key);
	if (cJSON_IsArray(t))
		t = cJSON_GetArrayItem(t, 0);
	return jid(t, v->n);
}

/* add_bos_token from tokenizer_config, else the post-processor template. */
static int add_bos(const struct vocab *v, int64_t bos)
{
	const cJSON *a = jget(v->tc, "add_bos_token");
	const cJSON *pp = jget(v->tj, "post_processor"), *first, *ids;
	const char *name;

	if (cJSON_IsBool(a))
		return cJSON_IsTrue(a);
	if (!jstr(pp, "type") || strcmp(jstr(pp, "type"), "TemplateProcessing"))
		return -1;
	first = cJSON_GetArrayItem(jget(pp, "single"), 0);
	name = jstr(jget(first, "SpecialToken"), "id");
	if (!name)
		return 0;
	ids = jget(jget(jget(pp, "special_tokens"), name), "ids");
	return cJSON_GetArraySize(ids) == 1 && bos >= 0 &&
	       jid(cJSON_GetArrayItem(ids, 0), v->n) == bos;
}

/*
 * The two halves of merge e: "a b" (split at the first space after the
 * first byte, as llama.cpp) or ["a", "b"].  False for anything else.
 */
static bool merge_parts(const cJSON *e, const char **a, size_t *la,
			const char **b, size_t *lb)
{
	const cJSON *x = cJSON_GetArrayItem(e, 0);
	const cJSON *y = cJSON_GetArrayItem(e, 1);
	const char *sp;

	if (cJSON_IsString(e) && e->valuestring[0]) {
		sp = strchr(e->valuestring + 1, ' ');
		if (!sp)
			return false;
		*a = e->valuestring;
		*la = (size_t)(sp - *a);
		*b = sp + 1;
	} else if (cJSON_GetArraySize(e) == 2 && cJSON_IsString(x) &&
		   cJSON_IsString(y)) {
		*a = x->valuestring;
		*la = strlen(*a);
		*b = y->valuestring;
	} else {
		return false;
	}
	*lb = strlen(*b);
	return *la <= TOK_MAX_TOKEN && *lb <= TOK_MAX_TOKEN;
}

static int merge_list(const struct vocab *v, const cJSON **out,
		      const char **why)
{
	const cJSON *m = jget(jget(v->tj, "model"), "merges");

	if (m && !cJSON_IsArray(m))
		VFAIL(QF_EFORMAT, "tokenizer.json: merges is not a list");
	if (cJSON_GetArraySize(m) > (int)TOK_MAX_MERGES)
		VFAIL(QF_EFORMAT, "tokenizer.json: too many merges");
	*out = m;			/* NULL iterates as an empty list */
	return 0;
}

/* tokenizer.ggml.merges as "a b" strings (gpt2). */
static int write_merges(struct kvw *w, const cJSON *merges, const char **why)
{
	const cJSON *e;
	const char *a, *b;
	size_t la, lb;

	/* llama.cpp needs the key even when the list is empty */
	kv_arr(w, "tokenizer.ggml.merges", GGUF_STR,
	       (uint64_t)cJSON_GetArraySize(merges));
	cJSON_ArrayForEach(e, merges) {
		if (!merge_parts(e, &a, &la, &b, &lb))
			VFAIL(QF_EFORMAT, "tokenizer.json: bad merge");
		w_u64(w, la + 1 + lb);
		w_bytes(w, a, la);
		w_bytes(w, " ", 1);
		w_bytes(w, b, lb);
	}
	return 0;
}

struct tok_ref {
	const char *s;
	int32_t id;
};

static int cmp_tok(const void *x, const void *y)
{
	return strcmp(((const struct tok_ref *)x)->s,
		      ((const struct tok_ref *)y)->s);
}

/*
 * Scores for llama.cpp's sentencepiece tokenizer, which merges the
 * adjacent pair whose concatenation scores highest: -(rank of the first
 * merge producing the token), and -1e9 for tokens no merge produces.
 * convert_hf_to_gguf.py writes -1000 for every token here (LlamaHfVocab),
 * which makes llama.cpp merge left to right and split words differently
 * from the Hugging Face tokenizer; these scores reproduce its merges.
 */
static int merge_scores(const struct vocab *v, const cJSON *merges,
			float *score, const char **why)
{
	struct qf_buf cat = QF_BUF_INIT;
	struct tok_ref *idx, key, *hit;
	const cJSON *e;
	const char *a, *b;
	size_t la, lb, n = 0;
	float rank = 0;
	int64_t i;
	int ret = 0;

	idx = malloc((size_t)v->n * sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	for (i = 0; i < v->n; i++) {
		score[i] = -1e9f;
		if (v->tok[i])
			idx[n++] = (struct tok_ref){ v->tok[i], (int32_t)i };
	}
	qsort(idx, n, sizeof(*idx), cmp_tok);
	cJSON_ArrayForEach(e, merges) {
		if (!merge_parts(e, &a, &la, &b, &lb)) {
			*why = "tokenizer.json: bad merge";
			ret = QF_EFORMAT;
			break;
		}
		qf_buf_reset(&cat);
		ret = qf_buf_add(&cat, a, la);
		if (!ret)
			ret = qf_buf_add(&cat, b, lb);
		if (ret)
			break;
		key.s = cat.data;
		hit = bsearch(&key, idx, n, sizeof(*idx), cmp_tok);
		if (hit && score[hit->id] == -1e9f)
			score[hit->id] = -rank;
		rank++;
	}
	qf_buf_release(&cat);
	free(idx);
	return ret;
}

/* One token's text: gaps as [PADi], "\u2581" as ' ' in gpt2 user tokens. */
static void write_token(struct kvw *w, const struct vocab *v, int64_t i)
{
	const char *s = v->tok[i], *p;
	char pad[32];
	size_t n = 0;

	if (!s) {
		snprintf(pad, sizeof(pad), "[PAD%lld]", (long long)i);
		w_str(w, pad, strlen(pad));
		return;
	}
	if (!v->gpt2 || v->type[i] != TT_USER) {
		w_str(w, s, strlen(s));
		return;
	}
	for (p = s; *p; n++)
		p += strncmp(p, "\xe2\x96\x81", 3) ? 1 : 3;
	w_u64(w, n);
	for (p = s; *p;) {
		if (!strncmp(p, "\xe2\x96\x81", 3)) {
			w_bytes(w, " ", 1);
			p += 3;
		} else {
			w_bytes(w, p++, 1);
		}
	}
}

static int write_vocab_kv(struct kvw *w, const struct qf_model *m,
			  struct vocab *v, const char **why)
{
	static const char *const sp[][2] = {
		{ "bos", "tokenizer.ggml.bos_token_id" },
		{ "eos", "tokenizer.ggml.eos_token_id" },
		{ "unk", "tokenizer.ggml.unknown_token_id" },
		{ "pad", "tokenizer.ggml.padding_token_id" },
	};
	const cJSON *t, *merges;
	int64_t i, id, bos = -1;
	size_t k;
	int ret;

	ret = merge_list(v, &merges, why);
	if (ret)
		return ret;
	kv_str(w, "tokenizer.ggml.model", v->gpt2 ? "gpt2" : "llama");
	kv_str(w, "tokenizer.ggml.pre", v->pre);
	kv_arr(w, "tokenizer.ggml.tokens", GGUF_STR, (uint64_t)v->n);
	for (i = 0; i < v->n; i++)
		write_token(w, v, i);
	if (!v->gpt2) {
		float *score = malloc((size_t)v->n * sizeof(*score));

		ret = score ? merge_scores(v, merges, score, why) : -ENOMEM;
		if (!ret) {
			kv_arr(w, "tokenizer.ggml.scores", GGUF_F32,
			       (uint64_t)v->n);
			for (i = 0; i < v->n; i++)
				w_f32(w, score[i]);
		}
		free(score);
		if (ret)
			return ret;
	}
	kv_arr(w, "tokenizer.ggml.token_type", GGUF_I32, (uint64_t)v->n);
	for (i = 0; i < v->n; i++)
		w_u32(w, (uint32_t)v->type[i]);
	if (v->gpt2) {
		ret = write_merges(w, merges, why);
		if (ret)
			return ret;
	}
	for (k = 0; k < sizeof(sp) / sizeof(sp[0]); k++) {
		id = special_id(v, sp[k][0]);
		if (id < 0)
			id = config_id(m, v, sp[k][0]);
		if (id >= 0)
			kv_u32(w, sp[k][1], (uint32_t)id);
		if (k == 0)
			bos = id;
	}
	ret = add_bos(v, bos);
	if (ret >= 0)
		kv_bool(w, "tokenizer.ggml.add_bos_token", ret);
	t = jget(v->tc, "add_eos_token");
	if (cJSON_IsBool(t))
		kv_bool(w, "tokenizer.ggml.add_eos_token", cJSON_IsTrue(t));
	t = jget(v->tc, "add_prefix_space");
	if (cJSON_IsBool(t))
		kv_bool(w, "tokenizer.ggml.add_space_prefix", cJSON_IsTrue(t));
	else if (!v->gpt2 && !spm_space_prefix(v->tj))
		kv_bool(w, "tokenizer.ggml.add_space_prefix", false);
	t = jget(v->tc, "chat_template");
	if (cJSON_IsString(t) && strlen(t->valuestring) <= TOK_MAX_TEMPLATE)
		kv_str(w, "tokenizer.chat_template", t->valuestring);
	return 0;
}

/*
 * The tokenizer.* keys from the parsed tokenizer.json (tj) and
 * tokenizer_config.json (tc, NULL when absent).  Byte-level BPE (a
 * ByteLevel pre-tokenizer or decoder) is "gpt2" with merges; a BPE with
 * byte_fallback is "llama" (sentencepiece style: Llama 2, Mistral, Gemma
 * 2/3, Phi-3, whatever the architecture), as convert_hf_to_gguf.py picks.
 */
static int vocab_kv(struct kvw *w, const struct qf_model *m, cJSON *tj,
		    cJSON *tc, int64_t n_vocab, const char **why)
{
	struct vocab v = { .tj = tj, .tc = tc, .n = n_vocab };
	const cJSON *model;
	int ret;

	if (n_vocab > TOK_MAX_IDS) {
		*why = "vocabulary larger than 4M tokens";
		return QF_EUNSUPPORTED;
	}
	model = jget(v.tj, "model");
	v.gpt2 = has_type(jget(v.tj, "pre_tokenizer"), "ByteLevel",
			  "pretokenizers") ||
		 has_type(jget(v.tj, "decoder"), "ByteLevel", "decoders");
	ret = QF_EUNSUPPORTED;
	if (!jstr(model, "type") || strcmp(jstr(model, "type"), "BPE")) {
		*why = "tokenizer model other than BPE";
		goto out_free;
	}
	if (!v.gpt2 && !cJSON_IsTrue(jget(model, "byte_fallback"))) {
		*why = "BPE tokenizer neither byte-level nor byte-fallback";
		goto out_free;
	}
	v.pre = v.gpt2 ? pre_name(jget(v.tj, "pre_tokenizer")) : "default";
	ret = -ENOMEM;
	v.tok = calloc((size_t)n_vocab, sizeof(*v.tok));
	v.type = calloc((size_t)n_vocab, sizeof(*v.type));
	if (!v.tok || !v.type)
		goto out_free;
	for (int64_t i = 0; i < n_vocab; i++)
		v.type[i] = TT_UNUSED;
	ret = vocab_tokens(&v, why);
	if (!ret)
		ret = write_vocab_kv(w, m, &v, why);
out_free:
	free(v.tok);
	free(v.type);
	return ret;
}

int qf_gguf_vocab_write(struct kvw *w, const struct qf_model *m,
			const struct qf_gguf_plan *p, int64_t n_vocab,
			const char **why)
{
	cJSON *tj = NULL, *tc = NULL;
	int ret;

	ret = read_json(m, "tokenizer.json", TOK_MAX_JSON, false, &tj);
	if (ret == QF_EFORMAT || ret == -ENOENT)
		*why = "no readable tokenizer.json";
	if (!ret)
		ret = read_json(m, "tokenizer_config.json",
				TOK_MAX_CONFIG, true, &tc);
	if (!ret)
		ret = vocab_kv(w, m, tj, tc, n_vocab, why);
	cJSON_Delete(tj);
	cJSON_Delete(tc);
	return ret;
}

/* A JSON object from bytes, as read_json() takes it from a file. */
static int json_object(const char *buf, size_t len, cJSON **out)
{
	*out = cJSON_ParseWithLength(buf ? buf : "", len);
	if (cJSON_IsObject(*out))
		return 0;
	cJSON_Delete(*out);
	*out = NULL;
	return QF_EFORMAT;
}

int qf_gguf_vocab_kv(const char *tj, size_t tjlen, const char *tc,
		     size_t tclen, const struct qf_model *m, const char *arch,
		     int64_t n_vocab, struct qf_buf *out, uint64_t *nkv,
		     const char **why)
{
	struct kvw w = { .b = out };
	cJSON *tjo = NULL, *tco = NULL;
	int ret;

	*why = NULL;
	snprintf(w.arch, sizeof(w.arch), "%s", arch);
	ret = json_object(tj, tjlen, &tjo);
	if (ret)
		*why = "no readable tokenizer.json";
	if (!ret && tc && json_object(tc, tclen, &tco)) {
		*why = "tokenizer_config.json is not a JSON object";
		ret = QF_EFORMAT;
	}
	if (!ret && n_vocab < 1) {
		*why = "no vocabulary";
		ret = -EINVAL;
	}
	if (!ret)
		ret = vocab_kv(&w, m, tjo, tco, n_vocab, why);
	if (!ret)
		ret = w.err;
	*nkv = w.nkv;
	cJSON_Delete(tjo);
	cJSON_Delete(tco);
	return ret;
}
