/*
 * tok_pre.h - the one table of pre-tokenizer split regexes we recognise
 * (tokenizer.c), for the GGUF writer's tokenizer.ggml.pre.
 */
#ifndef QF_TOK_PRE_H
#define QF_TOK_PRE_H

/*
 * llama.cpp's tokenizer.ggml.pre name ("llama-bpe", "qwen2", "gpt-2") of
 * a Split pre-tokenizer regex, by exact text; NULL when we do not
 * implement it.  The string is static.
 */
const char *qf_tok_pre_name(const char *re);

#endif
