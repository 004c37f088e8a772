/*
 * fuzz_gguf.c - fuzz the GGUF reader (quant/gguf/gguf_read.c) with whole files,
 * and what a successful parse lets a caller do: look keys and tensors up,
 * map names back to the source's (qf_gguf_hf_name()), decode rows.
 *
 * A libFuzzer target (-Dfuzz=true); otherwise linked with fuzz_main.c,
 * which replays corpus/gguf/ under meson test in buffers of exactly each
 * input's size, so ASan sees any read past the end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

#define DECODE_BUDGET (1 << 16)		/* floats decoded per input */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int cmp_ptr_off(const void *a, const void *b)
{
	uint64_t x = (*(const struct qf_gguf_info *const *)a)->offset;
	uint64_t y = (*(const struct qf_gguf_info *const *)b)->offset;

	return x < y ? -1 : x > y;
}

/* What a successful parse promises its callers. */
static void check_file(const struct qf_gguf_file *g, size_t size)
{
	const struct qf_gguf_info **ord;
	uint64_t sum = 0;
	int64_t v;
	size_t i;
	int d;

	QF_ASSERT(g->size == size);
	QF_ASSERT(g->align && !(g->align & (g->align - 1)));
	QF_ASSERT(g->info_end <= g->data_off && g->data_off <= size);
	QF_ASSERT(g->data_off % g->align == 0);
	for (i = 0; i < g->nkv; i++) {
		const struct qf_gguf_kv *kv = &g->kv[i];

		QF_ASSERT(kv->key[0]);
		QF_ASSERT(i == 0 || strcmp(g->kv[i - 1].key, kv->key) < 0);
		QF_ASSERT(qf_gguf_kv_find(g, kv->key) == kv);
		QF_ASSERT(!kv->str || strlen(kv->str) == kv->n);
		if (qf_gguf_kv_int(g, kv->key, &v) == 0)
			QF_ASSERT(kv->type != QF_GGUF_STRING);
	}
	ord = calloc(g->nt ? g->nt : 1, sizeof(*ord));
	QF_ASSERT(ord);
	for (i = 0; i < g->nt; i++) {
		const struct qf_gguf_info *t = &g->t[i];

		QF_ASSERT(t->name[0] && strlen(t->name) < QF_GGUF_NAME_MAX);
		QF_ASSERT(qf_gguf_find(g, t->name) == t);
		QF_ASSERT(t->ndim >= 1 && t->ndim <= QF_GGUF_MAX_DIMS);
		for (d = 0; d < QF_GGUF_MAX_DIMS; d++)
			QF_ASSERT(t->ne[d] >= 1 && (d < t->ndim ||
						    t->ne[d] == 1));
		QF_ASSERT(t->nbytes == qf_ggml_row_bytes(t->type, t->ne[0]) *
				       (uint64_t)qf_gguf_rows(t));
		QF_ASSERT(t->offset >= g->data_off && t->offset <= size &&
			  t->nbytes <= size - t->offset);
		QF_ASSERT((t->offset - g->data_off) % g->align == 0);
		sum += t->nbytes;
		ord[i] = t;
	}
	QF_ASSERT(sum == g->data_bytes);
	qsort(ord, g->nt, sizeof(*ord), cmp_ptr_off);
	for (i = 1; i < g->nt; i++)
		QF_ASSERT(ord[i - 1]->offset + ord[i - 1]->nbytes <=
			  ord[i]->offset);
	free(ord);
}

/* Names map back, or not, without overrunning; rows decode. */
static void use_file(const struct qf_gguf_file *g)
{
	const char *arch = qf_gguf_kv_str(g, "general.architecture");
	int64_t budget = DECODE_BUDGET, rows;
	char hf[128];
	size_t i;
	float *y;
	int perm;

	for (i = 0; i < g->nt; i++) {
		const struct qf_gguf_info *t = &g->t[i];

		if (qf_gguf_hf_name(arch ? arch : "llama", t->name, hf,
				    sizeof(hf), &perm) == 0)
			QF_ASSERT(hf[0] && perm >= 0 && perm <= 2);
		QF_ASSERT(qf_gguf_read_rows(g, t, -1, 1, NULL) == -EINVAL);
		rows = qf_gguf_rows(t);
		QF_ASSERT(qf_gguf_read_rows(g, t, rows, 1, NULL) == -EINVAL);
		if (t->ne[0] > budget)
			continue;
		y = malloc((size_t)t->ne[0] * sizeof(*y));
		QF_ASSERT(y);
		/* the first and the last row */
		QF_ASSERT(qf_gguf_read_rows(g, t, 0, 1, y) == 0);
		QF_ASSERT(qf_gguf_read_rows(g, t, rows - 1, 1, y) == 0);
		budget -= t->ne[0];
		free(y);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qf_gguf_file *g = NULL;
	const char *why = NULL;
	int ret;

	ret = qf_gguf_parse(data, size, &g, &why);
	if (ret < 0) {
		QF_ASSERT(why != NULL && g == NULL);
		QF_ASSERT(ret == QF_EFORMAT || ret == QF_EUNSUPPORTED ||
			  ret == -ENOMEM);
		return 0;
	}
	QF_ASSERT(ret == 0 && g);
	check_file(g, size);
	use_file(g);
	qf_gguf_close(g);
	return 0;
}
