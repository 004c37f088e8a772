/*
 * gguf_i.h - private to the GGUF writer (gguf.c, gguf_vocab.c): the
 * metadata KV writer both halves of the header use, the JSON look-ups
 * they share, and the vocabulary's entry point for the header.  The
 * writers are tiny, so they are inline here rather than a file of their
 * own.
 */
#ifndef QF_GGUF_I_H
#define QF_GGUF_I_H

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "gguf.h"

/* ------------------------------------------------------------------ */
/* header writer                                                      */

enum {				/* gguf_metadata_value_type */
	GGUF_U32 = 4,
	GGUF_I32 = 5,
	GGUF_F32 = 6,
	GGUF_BOOL = 7,
	GGUF_STR = 8,
	GGUF_ARR = 9,
};

/* Appends to b; after the first failure every call is a no-op. */
struct kvw {
	struct qf_buf *b;
	uint64_t nkv;			/* pairs written */
	int err;
	char arch[16];			/* prefix of "{arch}." keys */
};

static inline void w_bytes(struct kvw *w, const void *p, size_t n)
{
	if (!w->err)
		w->err = qf_buf_add(w->b, p, n);
}

static inline void w_u32(struct kvw *w, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16),
			 (uint8_t)(v >> 24) };

	w_bytes(w, b, 4);
}

static inline void w_u64(struct kvw *w, uint64_t v)
{
	w_u32(w, (uint32_t)v);
	w_u32(w, (uint32_t)(v >> 32));
}

static inline void w_f32(struct kvw *w, float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	w_u32(w, u);
}

static inline void w_str(struct kvw *w, const char *s, size_t n)
{
	w_u64(w, n);
	w_bytes(w, s, n);
}

/* Key (with "{arch}." for a leading '.') and value type. */
static inline void kv_key(struct kvw *w, const char *key, uint32_t type)
{
	char full[96];

	if (key[0] == '.') {
		snprintf(full, sizeof(full), "%s%s", w->arch, key);
		key = full;
	}
	w_str(w, key, strlen(key));
	w_u32(w, type);
	w->nkv++;
}

static inline void kv_u32(struct kvw *w, const char *key, uint32_t v)
{
	kv_key(w, key, GGUF_U32);
	w_u32(w, v);
}

static inline void kv_f32(struct kvw *w, const char *key, float v)
{
	kv_key(w, key, GGUF_F32);
	w_f32(w, v);
}

static inline void kv_bool(struct kvw *w, const char *key, bool v)
{
	uint8_t b = v;

	kv_key(w, key, GGUF_BOOL);
	w_bytes(w, &b, 1);
}

static inline void kv_str(struct kvw *w, const char *key, const char *s)
{
	kv_key(w, key, GGUF_STR);
	w_str(w, s, strlen(s));
}

static inline void kv_arr(struct kvw *w, const char *key, uint32_t type,
			  uint64_t n)
{
	kv_key(w, key, GGUF_ARR);
	w_u32(w, type);
	w_u64(w, n);
}

/* ------------------------------------------------------------------ */
/* shared by the plan and the vocabulary                              */

static inline const cJSON *jget(const cJSON *o, const char *k)
{
	return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, k) :
				   NULL;
}

static inline const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = jget(o, k);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* In a function with a `const char **why`: say why, return code. */
#define VFAIL(code, msg)                                                     \
	do {                                                                 \
		*why = (msg);                                                \
		return (code);                                               \
	} while (0)

/*
 * Append the tokenizer.* keys of model m (its tokenizer.json and optional
 * tokenizer_config.json, read here) to w for a vocabulary of n_vocab
 * rows.  Returns 0, QF_EFORMAT / QF_EUNSUPPORTED with *why set, -ENOMEM
 * or a read error; w->err holds a failure to append.
 */
int qf_gguf_vocab_write(struct kvw *w, const struct qf_model *m,
			const struct qf_gguf_plan *p, int64_t n_vocab,
			const char **why);

#endif
