/*
 * fuzz_spec.c - fuzz the variant-name parser (quant/variant/spec.c).
 *
 * Whatever parses must print back to exactly the input bytes, since only
 * canonical spellings are accepted.  A libFuzzer target (-Dfuzz=true);
 * otherwise linked with fuzz_main.c, which replays the corpus.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "variant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qf_spec s;
	const char *why = NULL;
	char name[256];
	char out[256];
	int n;

	if (size >= sizeof(name))
		size = sizeof(name) - 1;
	memcpy(name, data, size);
	name[size] = '\0';
	if (qf_spec_parse(name, &s, &why) != 0) {
		QF_ASSERT(why != NULL);
		return 0;
	}
	n = qf_spec_print(&s, out, sizeof(out));
	QF_ASSERT(n >= 0 && (size_t)n == strlen(name));
	QF_ASSERT(strcmp(out, name) == 0);
	return 0;
}
