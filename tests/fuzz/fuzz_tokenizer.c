/*
 * fuzz_tokenizer.c - fuzz the tokenizer (quant/tok/tokenizer.c, tok_bpe.c).
 *
 * The first input byte picks the mode: 0-4 encode the rest as text with
 * one of the five real tokenizers (shared/data/tokenizers, found through
 * $QF_SHARED, default /work/shared; skipped when absent) and decode the
 * ids again; anything else loads the rest as a tokenizer.json and, when
 * it loads, encodes and decodes a fixed text with it.  A libFuzzer target
 * (-Dfuzz=true); otherwise linked with fuzz_main.c, which replays the
 * corpus.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const names[] = { "tok512", "llama2", "mistral", "llama3",
				     "qwen3" };
static struct qf_tok *toks[5];
static bool loaded;

static void load_all(void)
{
	const char *shared = getenv("QF_SHARED");
	char path[4096];
	const char *why;
	size_t i;

	loaded = true;
	if (!shared)
		shared = "/work/shared";
	for (i = 0; i < 5; i++) {
		snprintf(path, sizeof(path),
			 "%.2000s/data/tokenizers/%s/tokenizer.json", shared,
			 names[i]);
		if (qf_tok_open(path, &toks[i], &why))
			toks[i] = NULL;
	}
}

static void roundtrip(const struct qf_tok *t, const char *s, size_t n)
{
	struct qf_buf out = QF_BUF_INIT;
	int32_t *ids = NULL;
	size_t nids = 0, i;

	QF_ASSERT(qf_tok_encode(t, s, n, n & 1, &ids, &nids) == 0);
	for (i = 0; i < nids; i++)
		QF_ASSERT(ids[i] >= 0 &&
			  (size_t)ids[i] < qf_tok_vocab_size(t));
	QF_ASSERT(qf_tok_decode(t, ids, nids, n & 2, &out) == 0);
	free(ids);
	qf_buf_release(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char text[] = "Hello, world!  It's 2024\n\tx\xc3\xa9<s>";
	struct qf_tok *t = NULL;
	const char *why = NULL;
	int ret;

	if (!size)
		return 0;
	if (data[0] < 5) {
		if (!loaded)
			load_all();
		if (toks[data[0]])
			roundtrip(toks[data[0]], (const char *)data + 1,
				  size - 1);
		return 0;
	}
	ret = qf_tok_load((const char *)data + 1, size - 1, &t, &why);
	if (ret) {
		QF_ASSERT(why != NULL || ret == -ENOMEM);
		QF_ASSERT(t == NULL);
		return 0;
	}
	roundtrip(t, text, sizeof(text) - 1);
	roundtrip(t, (const char *)data + 1, size - 1 < 256 ? size - 1 : 256);
	qf_tok_close(t);
	return 0;
}
