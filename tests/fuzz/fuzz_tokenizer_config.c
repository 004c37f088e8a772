/*
 * fuzz_tokenizer_config.c - fuzz the reading of tokenizer_config.json
 * (the special tokens, add_bos/eos_token, add_prefix_space and
 * chat_template keys quant/gguf/gguf_vocab.c turns into GGUF metadata; no other
 * code reads the file).
 *
 * Byte 0 picks one of two small fixed tokenizers, a sentencepiece-style
 * BPE with byte fallback (llama) or a byte-level one (qwen2); the rest is
 * the tokenizer_config.json.  What is written must be well-formed GGUF
 * key/value pairs (gguf_kv.h).  A libFuzzer target (-Dfuzz=true);
 * otherwise linked with fuzz_main.c, which replays
 * corpus/tokenizer_config/.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "gguf.h"
#include "gguf_kv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char spm[] =
	"{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true,"
	" \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"<0x0A>\": 3,"
	" \"<0x41>\": 4, \"\xe2\x96\x81\": 5, \"a\": 6, \"b\": 7, \"ab\": 8,"
	" \"\xe2\x96\x81" "ab\": 9},"
	" \"merges\": [\"a b\", \"\xe2\x96\x81 ab\"]},"
	" \"added_tokens\": ["
	"{\"id\": 0, \"content\": \"<unk>\", \"special\": true},"
	"{\"id\": 1, \"content\": \"<s>\", \"special\": true},"
	"{\"id\": 2, \"content\": \"</s>\", \"special\": true}],"
	" \"post_processor\": {\"type\": \"TemplateProcessing\","
	" \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}},"
	" {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}],"
	" \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1],"
	" \"tokens\": [\"<s>\"]}}}}";

static const char bytelevel[] =
	"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1,"
	" \"ab\": 2, \"\xc4\xa0\": 3, \"\xc4\xa0" "ab\": 4},"
	" \"merges\": [[\"a\", \"b\"], [\"\xc4\xa0\", \"ab\"]]},"
	" \"added_tokens\": ["
	"{\"id\": 5, \"content\": \"<|endoftext|>\", \"special\": true},"
	"{\"id\": 6, \"content\": \"<|im_start|>\", \"special\": false},"
	"{\"id\": 7, \"content\": \"\xe2\x96\x81x\xe2\x96\x81\","
	" \"special\": false}],"
	" \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"use_regex\": true},"
	" \"decoder\": {\"type\": \"ByteLevel\"}}";

/* config.json's ids, the fallback for what tokenizer_config lacks */
static const char config[] =
	"{\"bos_token_id\": 1, \"eos_token_id\": [2, 0], \"pad_token_id\": 7}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qf_model m = { .dir = (char *)"/fuzz/model" };
	struct qf_buf out = QF_BUF_INIT;
	const char *why = NULL;
	uint64_t nkv = 0;
	bool gpt2;
	int64_t n;
	int ret;

	if (size < 1)
		return 0;
	gpt2 = data[0] & 1;
	n = gpt2 ? 9 : 12;		/* with unused rows at the end */
	m.config = cJSON_Parse(config);
	QF_ASSERT(m.config);
	ret = qf_gguf_vocab_kv(gpt2 ? bytelevel : spm,
			       gpt2 ? sizeof(bytelevel) - 1 : sizeof(spm) - 1,
			       (const char *)data + 1, size - 1, &m,
			       gpt2 ? "qwen2" : "llama", n, &out, &nkv, &why);
	/* the tokenizers are good: only the config can be refused */
	QF_ASSERT(ret == 0 || (ret == QF_EFORMAT && why &&
			       strstr(why, "tokenizer_config")) ||
		  ret == -ENOMEM);
	if (!ret)
		kv_check(&out, nkv, n);
	qf_buf_release(&out);
	cJSON_Delete(m.config);
	return 0;
}
