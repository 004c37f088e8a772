/*
 * fuzz_s3list.c - fuzz the ListObjectsV2 parser of the S3 client
 * (cache/s3_parse.c) and its date parsers: a listing comes from the
 * network.
 *
 * Whatever parses must give keys of 1 to 1024 bytes without NUL, short
 * unquoted ETags, and a continuation token only as a string; a refusal
 * must leave the list as it was.  The input is parsed twice into one
 * list, so the second pass appends after the first.  A libFuzzer target
 * (-Dfuzz=true); otherwise linked with fuzz_main.c, which replays
 * corpus/s3list/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "s3.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_list(const struct qf_s3_list *l, size_t from)
{
	size_t i;

	for (i = from; i < l->n; i++) {
		size_t n = strlen(l->obj[i].key);

		QF_ASSERT(n >= 1 && n <= QF_S3_KEY_MAX);
		QF_ASSERT(strlen(l->obj[i].etag) < sizeof(l->obj[i].etag));
		QF_ASSERT(l->obj[i].last_modified >= 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qf_s3_list l = QF_S3_LIST_INIT;
	const char *xml = (const char *)data;
	size_t before;
	char *next;
	bool trunc;
	double d;
	int ret, pass;

	for (pass = 0; pass < 2; pass++) {
		before = l.n;
		ret = qf_s3_list_parse(xml, size, &l, &trunc, &next);
		QF_ASSERT(ret == 0 || ret == QF_EFORMAT || ret == -ENOMEM);
		if (ret) {
			QF_ASSERT(l.n == before && !next);
			continue;
		}
		QF_ASSERT(pass == 0 || l.n == 2 * before);
		check_list(&l, before);
		if (next)
			QF_ASSERT(strlen(next) <= size);
		free(next);
	}
	qf_s3_list_free(&l);
	if (qf_s3_parse_http_date(xml, size, &d) == 0)
		QF_ASSERT(size == 29 && d >= -2208988800.0);
	if (qf_s3_parse_iso8601(xml, size, &d) == 0)
		QF_ASSERT(size >= 20 && xml[size - 1] == 'Z');
	return 0;
}
