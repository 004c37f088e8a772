/*
 * fuzz_gguf_vocab.c - fuzz the GGUF view's tokenizer reading
 * (qf_gguf_vocab_kv, quant/gguf/gguf_vocab.c): tokenizer.json,
 * tokenizer_config.json and config.json's token ids turned into
 * tokenizer.* metadata.
 *
 * Input: byte 0 picks the architecture (llama, qwen2, qwen3), bytes 1-2
 * the embedding rows (1 + their little-endian value modulo 4096: rows
 * cost time, not coverage), then tokenizer.json, and
 * after a NUL tokenizer_config.json, after another a config.json.  What
 * is written must be well-formed GGUF key/value pairs (gguf_kv.h).  A
 * libFuzzer target (-Dfuzz=true); otherwise linked with fuzz_main.c,
 * which replays corpus/gguf_vocab/.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "gguf.h"
#include "gguf_kv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const arch[] = { "llama", "qwen2", "qwen3" };
	struct qf_model m = { .dir = (char *)"/fuzz/model" };
	struct qf_buf out = QF_BUF_INIT;
	const char *tj, *tc = NULL, *cfg = NULL, *end, *nul;
	size_t tjlen, tclen = 0;
	const char *why = (const char *)&m;
	uint64_t nkv = 0;
	int64_t n;
	int ret;

	if (size < 3)
		return 0;
	n = 1 + ((data[1] | data[2] << 8) & 4095);
	tj = (const char *)data + 3;
	end = (const char *)data + size;
	nul = memchr(tj, 0, (size_t)(end - tj));
	tjlen = (size_t)((nul ? nul : end) - tj);
	if (nul) {
		tc = nul + 1;
		nul = memchr(tc, 0, (size_t)(end - tc));
		tclen = (size_t)((nul ? nul : end) - tc);
		cfg = nul ? nul + 1 : NULL;
	}
	if (cfg)
		m.config = cJSON_ParseWithLength(cfg, (size_t)(end - cfg));
	ret = qf_gguf_vocab_kv(tj, tjlen, tc, tclen, &m, arch[data[0] % 3], n,
			       &out, &nkv, &why);
	QF_ASSERT(ret == 0 || ret == QF_EFORMAT || ret == QF_EUNSUPPORTED ||
		  ret == -ENOMEM);
	if (ret == QF_EFORMAT || ret == QF_EUNSUPPORTED)
		QF_ASSERT(why != NULL && why != (const char *)&m);
	if (!ret)
		kv_check(&out, nkv, n);
	qf_buf_release(&out);
	cJSON_Delete(m.config);
	return 0;
}
