/*
 * tok_i.h - the tokenizer's insides, shared by tokenizer.c (loading),
 * tok_encode.c (added tokens, encoding), tok_bpe.c (normalizers,
 * pre-tokenizers, BPE merges), tok_nfc.c (NFC) and tok_decode.c
 * (decoding).  Private to quant/.
 *
 * A struct qf_tok is immutable after qf_tok_load(), so encode and decode
 * may run on many threads at once; all scratch memory is per call.
 */
#ifndef QF_TOK_I_H
#define QF_TOK_I_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* Bounds against hostile files. */
#define QF_TOK_MAX_JSON (64u << 20)	/* bytes of tokenizer.json */
#define QF_TOK_MAX_IDS (1u << 22)	/* largest id + 1 */
#define QF_TOK_MAX_TOKEN (1u << 20)	/* bytes of one token */
#define QF_TOK_MAX_MERGES (1u << 23)
#define QF_TOK_MAX_ADDED (1u << 16)
#define QF_TOK_MAX_STEPS 64		/* normalizer/pre-tokenizer/decoder ops */


/* The split regexes we know, recognized by their exact text. */
enum qf_tok_pat {
	QF_TOK_PAT_NONE,
	QF_TOK_PAT_GPT2,	/* ByteLevel use_regex; GPT-2 */
	QF_TOK_PAT_LLAMA3,	/* Llama 3: \p{N}{1,3} */
	QF_TOK_PAT_QWEN2,	/* Qwen2/2.5/3: \p{N} */
	QF_TOK_PAT_O200K,	/* GPT-4o, Phi-4-mini: cased words */
};

enum qf_tok_norm_kind {
	QF_TOK_NORM_PREPEND,
	QF_TOK_NORM_REPLACE,
	QF_TOK_NORM_NFC,
};

struct qf_tok_norm {
	enum qf_tok_norm_kind kind;
	char *a;		/* prepend text / replace pattern */
	size_t alen;
	char *b;		/* replace content */
	size_t blen;
};

enum qf_tok_pre_kind {
	QF_TOK_PRE_SPLIT,
	QF_TOK_PRE_BYTELEVEL,
	QF_TOK_PRE_METASPACE,
	QF_TOK_PRE_SPLIT_LIT,	/* Split on a String pattern (Gemma 2/3) */
};

enum qf_tok_prepend {
	QF_TOK_PREPEND_NEVER,
	QF_TOK_PREPEND_FIRST,
	QF_TOK_PREPEND_ALWAYS,
};

struct qf_tok_pre {
	enum qf_tok_pre_kind kind;
	enum qf_tok_pat pat;		/* split, or ByteLevel's use_regex */
	bool prefix_space;		/* ByteLevel add_prefix_space */
	enum qf_tok_prepend prepend;	/* Metaspace */
	bool split;			/* Metaspace split on the replacement */
	char repl[8];			/* Metaspace replacement, UTF-8 */
	size_t repl_len;
	char lit[16];			/* SPLIT_LIT: the literal */
	size_t lit_len;
	bool merge_prev;		/* SPLIT_LIT: MergedWithPrevious */
};

enum qf_tok_dec_kind {
	QF_TOK_DEC_BYTELEVEL,
	QF_TOK_DEC_REPLACE,
	QF_TOK_DEC_BYTEFALLBACK,
	QF_TOK_DEC_FUSE,
	QF_TOK_DEC_STRIP,
	QF_TOK_DEC_METASPACE,
};

struct qf_tok_dec {
	enum qf_tok_dec_kind kind;
	char *a;			/* replace pattern; strip/metaspace char */
	size_t alen;
	char *b;			/* replace content */
	size_t blen;
	int start;			/* strip: chars off the front */
	int stop;			/* strip: chars off the back */
	bool prepend;			/* metaspace: drop the leading space */
};

struct qf_tok_added {
	char *content;
	size_t len;
	char *norm;		/* normalized content (normalized tokens) */
	size_t nlen;
	int32_t id;
	bool special;
	bool normalized;
	bool lstrip;
	bool rstrip;
};

/* Added tokens matched in text, longest first, bucketed by first byte. */
struct qf_tok_matcher {
	uint32_t *idx;		/* indices into t->added */
	size_t n;
	uint32_t start[257];	/* idx[start[c]..start[c + 1]) begin with c */
	bool norm;		/* match the normalized contents */
};

struct qf_tok_merge {
	uint64_t key;		/* left id << 32 | right id; 0 = empty */
	uint32_t rank;
	int32_t id;		/* the merged token */
};

struct qf_tok_str {
	size_t off;		/* in pool */
	uint32_t len;		/* UINT32_MAX: no token with this id */
};

#define QF_TOK_F_ADDED 1
#define QF_TOK_F_SPECIAL 2

struct qf_tok {
	bool bytelevel;			/* model keys are raw bytes */
	size_t nids;			/* largest id + 1 */
	struct qf_tok_str *str;		/* [nids] model key of each id */
	char *pool;			/* key bytes */
	size_t pool_len;
	size_t pool_cap;
	uint32_t *vhash;		/* key -> id + 1, 0 = empty */
	size_t vmask;
	uint8_t *flags;			/* [nids] QF_TOK_F_* */
	int32_t *added_of;		/* [nids] index in added, or -1 */

	struct qf_tok_merge *mhash;	/* (left, right) -> rank, id */
	size_t mmask;
	size_t nmerges;
	bool ignore_merges;
	bool byte_fallback;
	bool fuse_unk;
	int32_t unk;			/* -1 when none */
	int32_t byte_unit[256];		/* bytelevel: id of each byte */
	int32_t byte_fb[256];		/* <0xNN> ids, -1 when missing */
	bool byte_fb_all;		/* all 256 present */

	struct qf_tok_added *added;
	size_t nadded;
	struct qf_tok_matcher match_raw;
	struct qf_tok_matcher match_norm;

	struct qf_tok_norm norm[QF_TOK_MAX_STEPS];
	size_t nnorm;
	struct qf_tok_pre pre[QF_TOK_MAX_STEPS];
	size_t npre;
	struct qf_tok_dec dec[QF_TOK_MAX_STEPS];
	size_t ndec;
	bool has_decoder;

	int32_t *tmpl_pre;		/* ids before the sequence */
	size_t ntmpl_pre;
	int32_t *tmpl_post;		/* ids after the sequence */
	size_t ntmpl_post;
	int32_t bos;
	int32_t eos;
};

/* Growable id vector. */
struct qf_tok_ids {
	int32_t *v;
	size_t n;
	size_t cap;
};

int qf_tok_ids_push(struct qf_tok_ids *ids, int32_t id);

/* Per-call scratch of the encoder (tok_bpe.c). */
struct qf_tok_scratch {
	struct qf_buf a;	/* piece bytes, ping */
	struct qf_buf b;	/* piece bytes, pong */
	size_t *pa;		/* (off, len) pairs into a */
	size_t npa;
	size_t capa;
	size_t *pb;		/* (off, len) pairs into b */
	size_t npb;
	size_t capb;
	struct qf_tok_sym *sym;	/* BPE symbols */
	size_t capsym;
	struct qf_tok_cand *heap;	/* BPE candidates */
	size_t capheap;
};

/*
 * Index of the added tokens matched on raw (norm false) or normalized
 * text, for qf_tok_encode(); m->idx is freed by qf_tok_close().
 * Returns 0 or -ENOMEM.  (tok_encode.c)
 */
int qf_tok_matcher_init(struct qf_tok *t, struct qf_tok_matcher *m,
			bool norm);
void qf_tok_scratch_free(struct qf_tok_scratch *sc);

/* UTF-8 is common/utf8.c's (qf_utf8_decode: QF_UTF8_BAD once per maximal
 * invalid subpart, as the reference counts them). */
bool qf_tok_is_letter(uint32_t cp);
bool qf_tok_is_number(uint32_t cp);
bool qf_tok_is_space(uint32_t cp);	/* White_Space */

uint64_t qf_tok_hash(const void *s, size_t n);
/* Id of the model key s[0..n), or -1. */
int32_t qf_tok_lookup(const struct qf_tok *t, const char *s, size_t n);

/* Append s with every pat replaced by rep (pat empty: s as is). */
int qf_tok_replace_all(const char *s, size_t n, const char *pat, size_t plen,
		       const char *rep, size_t rlen, struct qf_buf *out);
/* Append the NFC form of s[n] to out: 0 or -ENOMEM.  (tok_nfc.c) */
int qf_tok_nfc(const char *s, size_t n, struct qf_buf *out);
/* Apply the normalizers to s; out is reset first.  0, -ENOMEM. */
int qf_tok_normalize(const struct qf_tok *t, const char *s, size_t n,
		     struct qf_buf *out);
/* Pre-tokenize and BPE one section of normalized text into ids.
 * first: the section starts the input (Metaspace prepend "first"). */
int qf_tok_encode_section(const struct qf_tok *t, const char *s, size_t n,
			  bool first, struct qf_tok_scratch *sc,
			  struct qf_tok_ids *out);
/* The split regex re, by exact text; QF_TOK_PAT_NONE when we do not
 * implement it.  (tok_bpe.c, beside qf_tok_pre_name) */
enum qf_tok_pat qf_tok_split_pat(const char *re);
/* Build t->mhash from the key pairs; QF_EFORMAT on unknown tokens. */
int qf_tok_merge_add(struct qf_tok *t, int32_t a, int32_t b, int32_t id,
		     uint32_t rank);
const struct qf_tok_merge *qf_tok_merge_find(const struct qf_tok *t,
					     int32_t a, int32_t b);

#endif /* QF_TOK_I_H */
