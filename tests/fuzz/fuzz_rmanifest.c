/*
 * fuzz_rmanifest.c - fuzz the remote tier's manifest parser
 * (qf_rmanifest_parse, cache/rmanifest.c): anyone who can write the
 * bucket can write a manifest.
 *
 * What parses must hold sorted, unique, non-empty names of at most 1024
 * bytes, lengths up to 2^40, a step from -1, and print back to text that
 * parses to the same manifest.  A libFuzzer target (-Dfuzz=true);
 * otherwise linked with fuzz_main.c, which replays corpus/rmanifest/.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remote.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const struct qf_rmanifest *a, const struct qf_rmanifest *b)
{
	size_t i;

	if (a->n != b->n || a->step != b->step ||
	    memcmp(a->id, b->id, sizeof(a->id)) || strcmp(a->label, b->label)
	    || (!a->record) != (!b->record))
		abort();
	for (i = 0; i < a->n; i++)
		if (strcmp(a->v[i].name, b->v[i].name) ||
		    memcmp(a->v[i].sha, b->v[i].sha, 32) ||
		    a->v[i].len != b->v[i].len)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qf_rmanifest m, back;
	struct qf_buf text = QF_BUF_INIT;
	size_t i;

	if (qf_rmanifest_parse((const char *)data, size, &m) < 0)
		return 0;
	if (m.step < -1)
		abort();
	for (i = 0; i < m.n; i++) {
		size_t n = strlen(m.v[i].name);

		if (!n || n > 1024 || m.v[i].len > (1ULL << 40) ||
		    (i && strcmp(m.v[i - 1].name, m.v[i].name) >= 0))
			abort();
		if (qf_rmanifest_find(&m, m.v[i].name) != &m.v[i])
			abort();
	}
	if (qf_rmanifest_print(&m, &text) < 0)
		abort();
	if (qf_rmanifest_parse(text.data, text.len, &back) < 0)
		abort();
	same(&m, &back);
	qf_rmanifest_free(&back);
	qf_rmanifest_free(&m);
	qf_buf_release(&text);
	return 0;
}
