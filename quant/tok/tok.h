/*
 * tok.h - the public interface of quant/tok: Hugging Face tokenizer.json
 * (byte-level BPE as in GPT-2, Llama 3, Qwen2/3, Phi-4-mini;
 * sentencepiece-style BPE as in Llama 2, Mistral, Gemma 2/3, Phi-3):
 * loading, encoding, decoding.
 *
 * tok uses io (a model directory's tokenizer files) and common only;
 * tok_i.h and tok_unicode.h are private to tok/.
 */
#ifndef QF_TOK_H
#define QF_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"

/* ------------------------------------------------------------------ */
/* tokenizer (Hugging Face tokenizer.json: byte-level BPE as in GPT-2, */
/* Llama 3, Qwen2/3; sentencepiece-style BPE as in Llama 2, Mistral)   */

struct qf_tok;

/*
 * Load a tokenizer.json (text of len bytes, not NUL-terminated).
 * Returns 0, QF_EFORMAT (malformed, *why set), QF_EUNSUPPORTED (a model
 * type / normalizer / pre-tokenizer we do not implement, *why names it),
 * -ENOMEM.  Caller owns *out; free with qf_tok_close().
 */
int qf_tok_load(const char *json, size_t len, struct qf_tok **out,
		const char **why);
/* Same, from a file path (bounded at 64 MiB). */
int qf_tok_open(const char *path, struct qf_tok **out, const char **why);
/* The tokenizer.json of model m's directory, as qf_tok_open(). */
int qf_model_tokenizer(const struct qf_model *m, struct qf_tok **out,
		       const char **why);
void qf_tok_close(struct qf_tok *t);
/*
 * Encode len bytes of UTF-8 text.  add_special: apply the post-processor
 * (e.g. BOS) as tokenizers' add_special_tokens=True does.  Added/special
 * tokens inside the text are matched as the reference does.  *ids is
 * malloc'd (caller frees), *n its length.  Returns 0, -ENOMEM.
 */
int qf_tok_encode(const struct qf_tok *t, const char *text, size_t len,
		  bool add_special, int32_t **ids, size_t *n);
/* Decode ids to UTF-8 into out (appended), skipping special tokens when
 * skip_special.  Returns 0, -EINVAL (id out of range), -ENOMEM. */
int qf_tok_decode(const struct qf_tok *t, const int32_t *ids, size_t n,
		  bool skip_special, struct qf_buf *out);
size_t qf_tok_vocab_size(const struct qf_tok *t);
int32_t qf_tok_bos(const struct qf_tok *t);	/* -1 when none */
int32_t qf_tok_eos(const struct qf_tok *t);	/* -1 when none */
/*
 * llama.cpp's tokenizer.ggml.pre name ("llama-bpe", "qwen2", "gpt-2") of
 * a Split pre-tokenizer regex, by exact text, from the one table of split
 * regexes the tokenizer implements (tok_bpe.c); NULL when it does not
 * implement it.  The string is static.  For the GGUF writer.
 */
const char *qf_tok_pre_name(const char *re);

#endif /* QF_TOK_H */
