/*
 * fuzz_index.c - fuzz the model.safetensors.index.json parser
 * (qf_model_index_parse, quant/io/model.c).
 *
 * What parses must name at least one and at most 4096 shards, sorted and
 * unique, each a plain "*.safetensors" file name (no '/', no "..") that
 * the weight_map maps some tensor to, and map nothing else.  A libFuzzer
 * target (-Dfuzz=true); otherwise linked with fuzz_main.c, which replays
 * corpus/index/.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool listed(char **names, size_t n, const char *s)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!strcmp(names[i], s))
			return true;
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char **names = (char **)&names;	/* untouched on an error */
	void *index = &index;
	const cJSON *map, *it;
	size_t n = 0, i, len;
	int ret;

	ret = qf_model_index_parse((const char *)data, size, "fuzz", &index,
				   &names, &n);
	if (ret) {
		QF_ASSERT(ret == QF_EFORMAT || ret == -ENOMEM);
		QF_ASSERT(index == NULL && names == (char **)&names);
		return 0;
	}
	QF_ASSERT(n >= 1 && n <= 4096 && index);
	for (i = 0; i < n; i++) {
		len = strlen(names[i]);
		QF_ASSERT(len > 12 && len < 256);
		QF_ASSERT(!strcmp(names[i] + len - 12, ".safetensors"));
		QF_ASSERT(!strchr(names[i], '/'));
		QF_ASSERT(i == 0 || strcmp(names[i - 1], names[i]) < 0);
	}
	map = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
	QF_ASSERT(cJSON_IsObject(map));
	cJSON_ArrayForEach(it, map) {
		QF_ASSERT(cJSON_IsString(it));
		QF_ASSERT(listed(names, n, it->valuestring));
	}
	free(names);
	cJSON_Delete(index);
	return 0;
}
