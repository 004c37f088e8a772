/*
 * fuzz_safetensors.c - fuzz qf_st_parse() with whole files.
 *
 * A libFuzzer target (-Dfuzz=true); otherwise linked with fuzz_main.c,
 * which replays corpus/safetensors/ under meson test in buffers of exactly
 * each input's size, so ASan sees any read past the end of the header.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What a successful parse promises its callers. */
static void check_header(const struct qf_st_header *h, size_t size)
{
	uint64_t sum = 0;
	size_t i;
	int d;

	QF_ASSERT(h->data_off == 8 + h->header_len);
	QF_ASSERT(h->data_off + h->data_len == size);
	QF_ASSERT(h->n == 0 || h->t);
	for (i = 0; i < h->n; i++) {
		const struct qf_st_tensor *t = &h->t[i];

		QF_ASSERT(t->name && t->name[0]);
		QF_ASSERT(i == 0 || strcmp(h->t[i - 1].name, t->name) < 0);
		QF_ASSERT(qf_st_find(h, t->name) == t);
		QF_ASSERT((unsigned)t->dtype < QF_DT_COUNT);
		QF_ASSERT(t->ndim >= 0 && t->ndim <= QF_ST_MAX_DIMS);
		for (d = 0; d < t->ndim; d++)
			QF_ASSERT(t->shape[d] >= 0);
		QF_ASSERT(t->begin <= h->data_len);
		QF_ASSERT(t->nbytes <= h->data_len - t->begin);
		QF_ASSERT(t->nbytes ==
			  qf_st_numel(t) * qf_dtype_size(t->dtype));
		sum += t->nbytes;
	}
	/* No hole and no overlap inside the data area means they tile it. */
	QF_ASSERT(sum == h->data_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qf_st_header h;
	const char *why = NULL;
	int ret;

	ret = qf_st_parse(data, size, size, &h, &why);
	if (ret < 0) {
		QF_ASSERT(why != NULL);
		QF_ASSERT(h.t == NULL && h.n == 0 && h.metadata == NULL);
		return 0;
	}
	QF_ASSERT(ret == 0);
	check_header(&h, size);
	qf_st_header_free(&h);
	return 0;
}
