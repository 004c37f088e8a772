/*
 * gguf_kv.h - for the GGUF vocabulary fuzz targets: walk the key/value
 * pairs qf_gguf_vocab_kv() wrote and assert they are well-formed GGUF
 * (every length inside the buffer, known types, nothing left over), with
 * n_vocab tokens and token types, and special ids below n_vocab.
 */
#ifndef QF_FUZZ_GGUF_KV_H
#define QF_FUZZ_GGUF_KV_H

#include <stdint.h>
#include <string.h>

#include "common.h"

enum {				/* gguf_metadata_value_type */
	KV_U32 = 4,
	KV_I32 = 5,
	KV_F32 = 6,
	KV_BOOL = 7,
	KV_STR = 8,
	KV_ARR = 9,
};

static uint64_t kv_rd(const uint8_t **p, const uint8_t *end, size_t n)
{
	uint64_t v = 0;
	size_t i;

	QF_ASSERT((size_t)(end - *p) >= n);
	for (i = 0; i < n; i++)
		v |= (uint64_t)(*p)[i] << 8 * i;
	*p += n;
	return v;
}

/* One value of type ty; returns it for scalars, its length for strings. */
static uint64_t kv_value(const uint8_t **p, const uint8_t *end, uint32_t ty)
{
	uint64_t v;

	switch (ty) {
	case KV_U32:
	case KV_I32:
	case KV_F32:
		return kv_rd(p, end, 4);
	case KV_BOOL:
		v = kv_rd(p, end, 1);
		QF_ASSERT(v <= 1);
		return v;
	case KV_STR:
		v = kv_rd(p, end, 8);
		QF_ASSERT(v <= (uint64_t)(end - *p));
		*p += v;
		return v;
	default:
		QF_ASSERT(!"unknown gguf value type");
		return 0;
	}
}

static void kv_check(const struct qf_buf *b, uint64_t nkv, int64_t n_vocab)
{
	const uint8_t *p = (const uint8_t *)b->data;
	const uint8_t *end = p + b->len;
	char key[256];
	uint64_t k, len, n, i, v;
	uint32_t ty, ety;
	bool tokens = false;

	QF_ASSERT(b->len == 0 || p);
	for (k = 0; k < nkv; k++) {
		len = kv_rd(&p, end, 8);
		QF_ASSERT(len > 0 && len < sizeof(key) &&
			  len <= (uint64_t)(end - p));
		memcpy(key, p, len);
		key[len] = '\0';
		p += len;
		ty = (uint32_t)kv_rd(&p, end, 4);
		if (ty != KV_ARR) {
			v = kv_value(&p, end, ty);
			if (strstr(key, "_token_id"))
				QF_ASSERT(ty == KV_U32 &&
					  v < (uint64_t)n_vocab);
			continue;
		}
		ety = (uint32_t)kv_rd(&p, end, 4);
		n = kv_rd(&p, end, 8);
		QF_ASSERT(ety != KV_ARR);
		if (!strcmp(key, "tokenizer.ggml.tokens") ||
		    !strcmp(key, "tokenizer.ggml.token_type") ||
		    !strcmp(key, "tokenizer.ggml.scores"))
			QF_ASSERT(n == (uint64_t)n_vocab);
		tokens |= !strcmp(key, "tokenizer.ggml.tokens");
		for (i = 0; i < n; i++) {
			v = kv_value(&p, end, ety);
			if (!strcmp(key, "tokenizer.ggml.token_type"))
				QF_ASSERT(v == 1 || (v >= 3 && v <= 6));
		}
	}
	QF_ASSERT(p == end);
	QF_ASSERT(tokens);
}

#endif /* QF_FUZZ_GGUF_KV_H */
