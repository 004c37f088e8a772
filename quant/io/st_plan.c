/*
 * st_plan.c - lay out a safetensors file before any tensor is computed.
 *
 * quantfs serves files whose bytes do not exist yet, so their size and
 * header must be known up front.  The layout copies the reference writer
 * (huggingface/safetensors serialize): tensors ordered by descending dtype
 * alignment then name, packed from offset 0, and the header padded with
 * spaces so that 8 + N is a multiple of 8.  With every dtype size a power
 * of two that divides 8, each tensor then starts naturally aligned in the
 * file, which is what lets loaders use the mmap directly.
 *
 * Everything the reader (safetensors.c) would refuse is refused here as
 * -EINVAL, so a planned header always parses back.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io.h"

#define PLAN_MAX_NAME 4096		/* as the reader */
#define PLAN_INT_LIMIT (UINT64_C(1) << 53) /* reader's integer bound */

/* Strict UTF-8: the reader rejects anything else. */
static bool utf8_valid(const char *str)
{
	return qf_utf8_valid(str, strlen(str));
}

static int cmp_str_ptr(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Byte size of e, or -EINVAL when the reader could not represent it. */
static int entry_bytes(const struct qf_st_plan_entry *e, uint64_t *out)
{
	uint64_t numel = 1;
	uint64_t d;
	size_t len;
	int i;

	if (!e->name)
		return -EINVAL;
	len = strlen(e->name);
	if (len == 0 || len > PLAN_MAX_NAME || !utf8_valid(e->name) ||
	    strcmp(e->name, "__metadata__") == 0)
		return -EINVAL;
	if ((unsigned)e->dtype >= QF_DT_COUNT)
		return -EINVAL;
	if (e->ndim < 0 || e->ndim > QF_ST_MAX_DIMS)
		return -EINVAL;
	for (i = 0; i < e->ndim; i++) {
		if (e->shape[i] < 0 || (uint64_t)e->shape[i] >= PLAN_INT_LIMIT)
			return -EINVAL;
		d = (uint64_t)e->shape[i];
		if (d && numel > UINT64_MAX / d)
			return -EINVAL;
		numel *= d;
	}
	if (numel > (PLAN_INT_LIMIT - 1) / qf_dtype_size(e->dtype))
		return -EINVAL;
	*out = numel * qf_dtype_size(e->dtype);
	return 0;
}

/* Entries valid and names unique; e[] is not touched. */
static int check_entries(const struct qf_st_plan_entry *e, size_t n)
{
	const char **names;
	uint64_t nbytes;
	size_t i;
	int ret;

	for (i = 0; i < n; i++) {
		ret = entry_bytes(&e[i], &nbytes);
		if (ret < 0)
			return ret;
	}
	names = malloc((n ? n : 1) * sizeof(*names));
	if (!names)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		names[i] = e[i].name;
	qsort(names, n, sizeof(*names), cmp_str_ptr);
	ret = 0;
	for (i = 1; i < n && !ret; i++)
		if (strcmp(names[i - 1], names[i]) == 0)
			ret = -EINVAL;
	free(names);
	return ret;
}

/* Keys and values present and UTF-8, no key twice. */
static int check_meta(const char *const *kv, size_t n_meta)
{
	size_t i;
	size_t j;

	if (n_meta && !kv)
		return -EINVAL;
	for (i = 0; i < n_meta; i++) {
		if (!kv[2 * i] || !kv[2 * i + 1] || !utf8_valid(kv[2 * i]) ||
		    !utf8_valid(kv[2 * i + 1]))
			return -EINVAL;
		/* Quadratic, but metadata is a handful of pairs. */
		for (j = 0; j < i; j++)
			if (strcmp(kv[2 * i], kv[2 * j]) == 0)
				return -EINVAL;
	}
	return 0;
}

/* Descending alignment puts every tensor on its natural boundary. */
static int cmp_plan(const void *a, const void *b)
{
	const struct qf_st_plan_entry *x = a;
	const struct qf_st_plan_entry *y = b;
	size_t sx = qf_dtype_size(x->dtype);
	size_t sy = qf_dtype_size(y->dtype);

	if (sx != sy)
		return sx > sy ? -1 : 1;
	return strcmp(x->name, y->name);
}

/*
 * Integers go in as raw text: cJSON prints numbers >= 1e15 as "1e+15",
 * which serde-based readers refuse for an integer field.
 */
static bool add_uint(cJSON *arr, uint64_t v)
{
	char num[24];
	cJSON *item;

	snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
	item = cJSON_CreateRaw(num);
	if (!item)
		return false;
	if (!cJSON_AddItemToArray(arr, item)) {
		cJSON_Delete(item);
		return false;
	}
	return true;
}

static bool add_entry(cJSON *root, const struct qf_st_plan_entry *e)
{
	cJSON *obj;
	cJSON *arr;
	int i;

	obj = cJSON_AddObjectToObject(root, e->name);
	if (!obj || !cJSON_AddStringToObject(obj, "dtype",
					     qf_dtype_name(e->dtype)))
		return false;
	arr = cJSON_AddArrayToObject(obj, "shape");
	if (!arr)
		return false;
	for (i = 0; i < e->ndim; i++)
		if (!add_uint(arr, (uint64_t)e->shape[i]))
			return false;
	arr = cJSON_AddArrayToObject(obj, "data_offsets");
	return arr && add_uint(arr, e->begin) &&
	       add_uint(arr, e->begin + e->nbytes);
}

/* The header JSON, cJSON-allocated, or NULL on ENOMEM. */
static char *build_json(const struct qf_st_plan_entry *e, size_t n,
			const char *const *kv, size_t n_meta)
{
	const char *format = "pt";
	cJSON *root;
	cJSON *meta;
	char *text = NULL;
	size_t i;

	root = cJSON_CreateObject();
	if (!root)
		return NULL;
	meta = cJSON_AddObjectToObject(root, "__metadata__");
	if (!meta)
		goto out_delete_json;
	/* "format" goes first whoever sets it; transformers looks for it. */
	for (i = 0; i < n_meta; i++)
		if (strcmp(kv[2 * i], "format") == 0)
			format = kv[2 * i + 1];
	if (!cJSON_AddStringToObject(meta, "format", format))
		goto out_delete_json;
	for (i = 0; i < n_meta; i++) {
		if (strcmp(kv[2 * i], "format") == 0)
			continue;
		if (!cJSON_AddStringToObject(meta, kv[2 * i], kv[2 * i + 1]))
			goto out_delete_json;
	}
	for (i = 0; i < n; i++)
		if (!add_entry(root, &e[i]))
			goto out_delete_json;
	text = cJSON_PrintUnformatted(root);
out_delete_json:
	cJSON_Delete(root);
	return text;
}

int qf_st_plan(struct qf_st_plan_entry *e, size_t n,
	       const char *const *meta_kv, size_t n_meta,
	       struct qf_buf *hdr, uint64_t *total)
{
	uint8_t len8[8];
	uint64_t pos = 0;
	uint64_t hlen;
	size_t len;
	size_t pad;
	char *text;
	size_t i;
	int ret;

	ret = check_entries(e, n);
	if (ret < 0)
		return ret;
	ret = check_meta(meta_kv, n_meta);
	if (ret < 0)
		return ret;
	if (n)				/* e may be NULL */
		qsort(e, n, sizeof(*e), cmp_plan);
	for (i = 0; i < n; i++) {
		e[i].begin = pos;
		entry_bytes(&e[i], &e[i].nbytes);	/* checked above */
		if (e[i].nbytes >= PLAN_INT_LIMIT - pos)
			return -EINVAL;		/* offsets past 2^53 */
		pos += e[i].nbytes;
	}
	text = build_json(e, n, meta_kv, n_meta);
	if (!text)
		return -ENOMEM;
	len = strlen(text);
	pad = (8 - len % 8) % 8;
	hlen = (uint64_t)len + pad;
	if (hlen > QF_ST_MAX_HEADER) {
		ret = -EINVAL;
		goto out_free_text;
	}
	for (i = 0; i < 8; i++)
		len8[i] = (uint8_t)(hlen >> (8 * i));
	qf_buf_reset(hdr);
	ret = qf_buf_grow(hdr, 8 + (size_t)hlen);
	if (ret < 0)
		goto out_free_text;
	qf_buf_add(hdr, len8, sizeof(len8));	/* cannot fail: grown */
	qf_buf_add(hdr, text, len);
	memset(hdr->data + hdr->len, ' ', pad);
	hdr->len += pad;
	hdr->data[hdr->len] = '\0';
	*total = pos;
out_free_text:
	cJSON_free(text);
	return ret;
}
