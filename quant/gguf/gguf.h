/*
 * gguf.h - GGUF files that llama.cpp loads, laid out ahead of time and
 * produced tensor by tensor.
 *
 * Three layers: the ggml block formats (row encoders and decoders that are
 * byte-compatible with ggml's block_* structs), lossless repacking of
 * integer grids that already fit a format, and the plan of a whole file
 * for a llama, mistral, qwen2 or qwen3 model directory (tensor names and
 * metadata as llama.cpp's convert_hf_to_gguf.py writes them, vocabulary
 * from the model's own tokenizer.json).  As with the safetensors planner,
 * the exact file size and every byte before the tensor data are known
 * before any tensor is quantized; each tensor is then produced on its own.
 */
#ifndef QF_GGUF_H
#define QF_GGUF_H

#include "io.h"

/* ------------------------------------------------------------------ */
/* ggml block formats                                                 */

/* ggml's own numeric ids (enum ggml_type), as stored in GGUF. */
enum qf_ggml_type {
	QF_GGML_F32 = 0,
	QF_GGML_F16 = 1,
	QF_GGML_Q4_0 = 2,	/* fp16 d, 16 B nibbles: d * (q - 8) */
	QF_GGML_Q4_1 = 3,	/* fp16 d, m, 16 B nibbles: d * q + m */
	QF_GGML_Q8_0 = 8,	/* fp16 d, 32 int8: d * q */
	QF_GGML_Q2_K = 10,	/* 256: 4-bit scales/mins, 2-bit quants */
	QF_GGML_Q3_K = 11,	/* 256: 6-bit scales, 2 + 1-bit quants, d */
	QF_GGML_Q4_K = 12,	/* 256: d, dmin, 6-bit scales/mins, nibbles */
	QF_GGML_Q5_K = 13,	/* 256: as Q4_K, a fifth bit in qh[32] */
	QF_GGML_Q6_K = 14,	/* 256: 6-bit quants, int8 scales, fp16 d */
	QF_GGML_IQ4_NL = 20,	/* fp16 d, 16 B nibbles: d * kv[q] */
	QF_GGML_IQ4_XS = 23,	/* 256: d, 6-bit scales, kv[] nibbles */
	QF_GGML_BF16 = 30,
};

/* True for the types this module encodes. */
bool qf_ggml_type_known(enum qf_ggml_type t);
/* "Q4_K", ...; "?" for others. */
const char *qf_ggml_type_name(enum qf_ggml_type t);
/* "q4_k" or "Q4_K" style names.  Returns 0 or -EINVAL. */
int qf_ggml_type_parse(const char *s, enum qf_ggml_type *out);
/* Elements per block (1, 32 or 256); 0 for unknown types. */
int64_t qf_ggml_block_size(enum qf_ggml_type t);
/* Bytes per block; 0 for unknown types. */
size_t qf_ggml_block_bytes(enum qf_ggml_type t);
/* Bytes of a row of ncols; 0 when ncols is not a positive multiple. */
uint64_t qf_ggml_row_bytes(enum qf_ggml_type t, int64_t ncols);

/*
 * Encode one row x[n] (n a multiple of the block size) into dst
 * (qf_ggml_row_bytes(t, n) bytes).  Q4_0, Q4_1 and Q8_0 are ggml's
 * quantize_row_*_ref bit for bit.  IQ4_NL and IQ4_XS (ggml_iq4.c) fit each
 * block's scale (IQ4_XS: the 6-bit sub-block scales and fp16 d) for the
 * least squared error (weighted by imp as the k-quants' when given),
 * llama.cpp's own choice without an imatrix among the candidates, so no
 * block is further from x than quantize_iq4_nl / quantize_iq4_xs without
 * an imatrix make it.  The k-quants (Q2_K .. Q6_K) are our own weighted
 * least-squares fits of each sub-block's scale (and min), the sub-block
 * scales then quantized to 4 / 6 / 8 bits as ggml does (Q2_K, Q3_K, Q4_K
 * and Q5_K also try the neighbouring scale codes); imp [n] (optional,
 * >= 0) weights columns like llama.cpp's importance matrix:
 * imp * sqrt(sigma2 + x^2).  Without it the weights are ggml's:
 * rms(sub-block) + |x| for Q2_K, Q4_K and Q5_K, x^2 for Q3_K and Q6_K.
 * F16/BF16 round to nearest even.
 * Returns 0, -EINVAL (bad type, n or imp), QF_ENUMERIC (a non-finite input
 * or a value / scale beyond fp16).
 */
int qf_ggml_quantize_row(enum qf_ggml_type t, const float *x, int64_t n,
			 const float *imp, void *dst);
/*
 * As qf_ggml_quantize_row(), but Q4_0 / Q4_1 / Q8_0 blocks get a fitted
 * scale (ggml_fit.c): round-to-nearest on ggml's grid at the scale (and
 * Q4_1 offset) of least squared error, weighted by imp when given, among
 * 21 around the reference rule's and the reference itself, so never a
 * larger block error than quantize_row_*_ref.  Other types: as
 * qf_ggml_quantize_row().  Same returns.
 */
int qf_ggml_quantize_row_fit(enum qf_ggml_type t, const float *x, int64_t n,
			     const float *imp, void *dst);
/*
 * GPTQ on a k-quant grid (ggml_gptq.c): w [out x in] (row-major; left
 * error-updated) into out rows of k-quant (Q2_K .. Q6_K) or IQ4_NL /
 * IQ4_XS blocks, each (super-)block's grid fitted (qf_ggml_quantize_row
 * with imp [in], optional)
 * to the error-updated weights when the sweep reaches it, its columns then
 * rounded to nearest with GPTQ's error feedback through u [in x in], the
 * upper Cholesky factor of the damped inverse Hessian (H^-1 = U^T U).
 * Returns 0, -EINVAL (type, shape, or a u diagonal not > 0), QF_ENUMERIC,
 * -ENOMEM.
 */
int qf_ggml_gptq_quantize(enum qf_ggml_type t, float *w, int64_t out,
			  int64_t in, const float *u, const float *imp,
			  void *dst);
/* True for the types qf_ggml_gptq_quantize() takes. */
bool qf_ggml_gptq_known(enum qf_ggml_type t);
/* Decode one row as ggml's dequantize_row_*.  Returns 0 or -EINVAL. */
int qf_ggml_dequantize_row(enum qf_ggml_type t, const void *src, int64_t n,
			   float *y);

/*
 * Lossless repacking of integer grids.  q [n] holds one code per element,
 * sc16 [n / 32] the fp16 scale of each run of 32 elements; dst receives
 * n / 32 blocks that dequantize to exactly sc * (q - zero):
 * Q4_0 with q in 0..15 and zero 8, Q8_0 with q in 0..255 and zero 128.
 * Returns 0, -EINVAL (n not a multiple of 32, or a code out of range).
 */
int qf_gguf_q4_0_from_int(const uint8_t *q, const uint16_t *sc16, int64_t n,
			  void *dst);
int qf_gguf_q8_0_from_int(const uint8_t *q, const uint16_t *sc16, int64_t n,
			  void *dst);
/*
 * The asymmetric 4-bit grid sc * (q - z) (q, z in 0..15, z [n / 32] one
 * per run of 32) as Q4_1 blocks d * q + m: fp16 m cannot hold -sc * z
 * exactly, so each block takes the fp16 pair (d, m), d one of sc and its
 * two fp16 neighbours and m the nearest to the least-squares offset for
 * it and that one's two neighbours, of least squared error over the
 * block's own codes, which stay: at d = sc and m the nearest fp16 of
 * -sc * z the error is a constant of at most 15/2048 sc (half an fp16
 * step of |sc * z| <= 15 sc), and the pair chosen is never worse.
 * Returns 0, -EINVAL (n, a code or zero out of range), QF_ENUMERIC
 * (-sc * z beyond fp16).
 */
int qf_gguf_q4_1_from_int(const uint8_t *q, const uint16_t *sc16,
			  const int32_t *z, int64_t n, void *dst);

/* ------------------------------------------------------------------ */
/* file plan                                                          */

#define QF_GGUF_VERSION 3
#define QF_GGUF_ALIGN 32		/* general.alignment */
#define QF_GGUF_NAME_MAX 64		/* GGML_MAX_NAME, with the NUL */

/* What a tensor is, for choosing its type. */
enum qf_gguf_role {
	QF_GGUF_ROLE_EMBD,		/* token_embd */
	QF_GGUF_ROLE_OUTPUT,		/* output (lm_head) */
	QF_GGUF_ROLE_ATTN_Q,
	QF_GGUF_ROLE_ATTN_K,
	QF_GGUF_ROLE_ATTN_V,
	QF_GGUF_ROLE_ATTN_OUT,
	QF_GGUF_ROLE_FFN_GATE,
	QF_GGUF_ROLE_FFN_UP,
	QF_GGUF_ROLE_FFN_DOWN,
	QF_GGUF_ROLE_VECTOR,		/* 1-D: norms, biases, rope_freqs */
	QF_GGUF_ROLE_COUNT,
};

/*
 * Type of each 2-D role; 1-D tensors are always F32.  A type whose block
 * does not divide a tensor's row length (ne[0]) falls back as llama.cpp's
 * quantizer does, within what we encode: Q2_K, Q3_K -> Q4_0, Q4_K -> Q4_1,
 * IQ4_XS -> IQ4_NL, Q5_K, Q6_K -> Q8_0, then F16.
 */
/* llama.cpp's k-quant mixes, by their llama_ftype (general.file_type). */
enum qf_gguf_mix {
	QF_GGUF_MIX_NONE = 0,
	QF_GGUF_MIX_Q2_K = 10,
	QF_GGUF_MIX_Q3_K_S = 11,
	QF_GGUF_MIX_Q3_K_M = 12,
	QF_GGUF_MIX_Q3_K_L = 13,
	QF_GGUF_MIX_Q4_K_S = 14,
	QF_GGUF_MIX_Q4_K_M = 15,
	QF_GGUF_MIX_Q5_K_S = 16,
	QF_GGUF_MIX_Q5_K_M = 17,
	QF_GGUF_MIX_IQ4_NL = 25,
	QF_GGUF_MIX_IQ4_XS = 30,
};
/*
 * The mix of the view kq<bits>_k[_s|_m|_l] (size 'S', 'M', 'L' or 0) and
 * its base type (w[] of qf_gguf_types_uniform); kq6_k (Q6_K throughout)
 * is uniform, NONE; kiq4_nl and kiq4_xs (bits 4, size 'N' or 'X'):
 * llama.cpp's IQ4_NL and IQ4_XS.  0 or -EINVAL (no such mix in
 * llama.cpp).  gguf_mix.c.
 */
int qf_gguf_mix_of(int bits, char size, enum qf_gguf_mix *mix,
		   enum qf_ggml_type *base);
/*
 * The type llama.cpp's llama_tensor_get_type() gives tensor gg (role) of
 * a dense model c in mix, base its w[] type: attn_v, attn_output,
 * attn_qkv, ffn_down by the mix and layer (use_more_bits: the first and
 * last eighth and every third between), output (and token_embd when
 * tied) Q6_K; IQ4_NL / IQ4_XS: attn_v Q5_K where 4 or more query heads
 * share a kv head, everything else the base type (ffn_down as llama.cpp
 * does with an imatrix: the kq views always have one).  Not applied: the
 * 8-expert, 70B and Falcon rules.  quantfs's own rule: an untied model's
 * token_embd and output in the Q2_K, Q3_K_* and Q4_K_* mixes take Q4_K
 * and Q4_K, Q4_K and Q5_K, Q5_K and Q5_K where hidden is a multiple of
 * 256 (gguf_mix.c; no more bits than llama.cpp's base type and Q6_K).
 */
/* True for a mix whose untied token_embd and output quantfs retypes. */
bool qf_gguf_mix_ends(enum qf_gguf_mix mix);
enum qf_ggml_type qf_gguf_mix_type(enum qf_gguf_mix mix,
				   enum qf_gguf_role role, const char *gg,
				   const struct qf_tf_config *c,
				   enum qf_ggml_type base);

struct qf_gguf_types {
	enum qf_ggml_type w[QF_GGUF_ROLE_COUNT];	/* [VECTOR] unused */
	/* llama.cpp's mix on top of w[] (all the base type), or NONE */
	enum qf_gguf_mix mix;
	/* Q4_0 / Q4_1 / Q8_0 by qf_ggml_quantize_row_fit() (RTN views) */
	bool fit;
	/* kq _awq: AWQ's scales folded into the norms and linears, all of
	 * them encoded by the calibration job (qf_kq_job_tensor) */
	bool fold;
};
void qf_gguf_types_uniform(struct qf_gguf_types *ty, enum qf_ggml_type t);

struct qf_gguf_tensor {
	char name[QF_GGUF_NAME_MAX];	/* "blk.0.attn_q.weight" */
	const struct qf_model_tensor *src; /* HF source (borrowed); NULL for
					      the generated rope_freqs */
	enum qf_gguf_role role;
	enum qf_ggml_type type;
	int ndim;			/* 1, 2, or 3: experts stacked */
	int64_t ne[3];			/* innermost first: cols, rows,
					 * experts */
	/* 3-D: the source of each of the ne[2] experts' matrices (into
	 * the plan's xsrc; src is the first), else NULL */
	const struct qf_model_tensor *const *xsrc;
	uint64_t offset;		/* file offset of the data, aligned */
	uint64_t nbytes;		/* data bytes, without the padding */
	int permute_heads;		/* rows permuted for llama's rope in
					   this many heads; 0 = as stored */
	float shift;			/* added to a norm (gemma: 1) */
};

struct qf_gguf_plan {
	struct qf_buf header;		/* file bytes [0, data_off) */
	struct qf_gguf_tensor *t;	/* in file order */
	size_t nt;
	uint64_t data_off;		/* start of the tensor data */
	uint64_t size;			/* exact file size */
	char arch[16];			/* general.architecture */
	enum qf_gguf_mix mix;		/* planned with that mix */
	bool fit;			/* types->fit: fitted block scales */
	bool fold;			/* types->fold */
	struct qf_tf_config cfg;	/* the source's dimensions */
	const struct qf_model_tensor **xsrc;	/* owned: the experts'
						 * sources of 3-D tensors */
};

/*
 * Plan model.gguf for m: every tensor's name, type, shape and offset, and
 * the header (magic "GGUF", version 3, counts, metadata, tensor infos,
 * zero padding to QF_GGUF_ALIGN).  Bytes after a tensor's nbytes up to
 * the next offset (or size) are zero.  Nothing is quantized.
 * model_type llama and mistral become architecture "llama" with q_proj /
 * k_proj rows permuted as convert_hf_to_gguf.py's LlamaModel.permute;
 * qwen2 and qwen3 keep their rows.  Tied embeddings get no output tensor;
 * llama3 rope scaling adds rope_freqs.weight.  The vocabulary is "gpt2"
 * (byte-level BPE, with merges) or "llama" (byte-fallback BPE; unlike the
 * converter's flat -1000, its scores follow the merge ranks so llama.cpp
 * splits words as the Hugging Face tokenizer does).
 * Caller owns *out; free with qf_gguf_plan_free() (also after failure).
 * Returns 0, -EINVAL (bad types), QF_EUNSUPPORTED (architecture, tensor
 * or tokenizer we do not convert; *why says which), QF_EFORMAT (*why),
 * -ENOMEM, -errno (tokenizer files).
 */
int qf_gguf_plan_init(const struct qf_model *m,
		      const struct qf_gguf_types *types,
		      struct qf_gguf_plan *out, const char **why);
void qf_gguf_plan_free(struct qf_gguf_plan *p);

/*
 * LlamaModel.permute of nr rows of cols, as llama.cpp's converter writes
 * q_proj/k_proj: within each head of hd rows, row 2i + j of dst is row
 * j * hd / 2 + i of src (HF's rotate-half pairs become llama.cpp's adjacent
 * pairs); inverse: back.  dst and src do not overlap.
 */
void qf_gguf_permute_rows(const float *src, float *dst, int64_t nr,
			  int64_t cols, int64_t hd, bool inverse);

/*
 * The Hugging Face name of GGUF tensor gg as qf_gguf_plan_init() names it
 * for architecture arch ("llama", "qwen2" or "qwen3"), into hf (cap
 * bytes), and in *perm how the writer ordered its rows: 0 as the source,
 * 1 permuted by attention heads, 2 by kv heads (LlamaModel.permute, arch
 * llama only; see qf_gguf_permute_rows()).  Tied embeddings have no
 * output.weight; rope_freqs.weight is generated and has no source name.
 * Returns 0, -ENOENT (no source name), QF_EUNSUPPORTED (another
 * architecture), -ENAMETOOLONG.
 */
int qf_gguf_hf_name(const char *arch, const char *gg, char *hf, size_t cap,
		    int *perm);
/* What the writer adds to GGUF tensor gg of arch (gemma's norms: 1). */
float qf_gguf_norm_shift(const char *arch, const char *gg);

/*
 * The tokenizer.* metadata qf_gguf_plan_init() writes, from a
 * tokenizer.json (tj) and a tokenizer_config.json (tc; NULL: absent)
 * held in memory, for a model of architecture arch ("llama", "qwen2",
 * "qwen3") with n_vocab embedding rows; m supplies only config.json's
 * <what>_token_id fallbacks.  The key/value pairs are appended to out
 * (GGUF encoding), *nkv of them.  What the GGUF view reads from the
 * model's files, for the fuzz target.  Returns 0, QF_EFORMAT or
 * QF_EUNSUPPORTED with *why, -EINVAL (n_vocab < 1), -ENOMEM.
 */
int qf_gguf_vocab_kv(const char *tj, size_t tjlen, const char *tc,
		     size_t tclen, const struct qf_model *m, const char *arch,
		     int64_t n_vocab, struct qf_buf *out, uint64_t *nkv,
		     const char **why);

/*
 * Produce the nbytes of tensor i into dst: the source read as f32 in row
 * blocks of about 4 MiB (whole heads when permuted), rows permuted when
 * flagged, each row encoded with qf_ggml_quantize_row() (_fit() when the
 * plan's fit is set) and imp [ne[0]]
 * (optional; used by Q4_K and Q6_K; a 3-D expert tensor: [ne[2] *
 * ne[0]], expert by expert).  Thread-safe for distinct dst.
 * Returns 0, -EINVAL (i out of range), QF_ECORRUPT (source changed),
 * QF_ENUMERIC, QF_EUNSUPPORTED (source dtype), -ENOMEM.
 */
int qf_gguf_produce(const struct qf_model *m, const struct qf_gguf_plan *p,
		    size_t i, const float *imp, void *dst);
/*
 * The same with GPTQ (qf_ggml_gptq_quantize) where u [ne[0] x ne[0]] is
 * given (U upper, U^T U the damped inverse Hessian of the tensor's input,
 * computed by the caller) and the tensor is 2-D of a type GPTQ takes
 * (qf_ggml_gptq_known: Q2_K .. Q6_K, IQ4_NL, IQ4_XS); otherwise (u NULL,
 * other types) as qf_gguf_produce.  Only rows [r0, r1) of a 2-D
 * tensor, into their place in dst, where r1 > 0 (r0 and r1 multiples of
 * a head's rows, ne[1] / permute_heads, when permuted; -EINVAL for other
 * ranges): rows are encoded independently, so threads may share a tensor.
 * fold (NULL: none) scales the rows read first; 3-D tensors take none.
 */
/*
 * A scaling of the source read before it is encoded (AWQ's, folded in):
 * col [ne[0]] multiplies each row's columns, row [rows of the tensor, or
 * its ne[0] elements when 1-D, after a norm's shift] divides each row;
 * either NULL.
 */
struct qf_gguf_fold {
	const float *col;
	const float *row;
};
int qf_gguf_produce_gptq(const struct qf_model *m,
			 const struct qf_gguf_plan *p, size_t i, int64_t r0,
			 int64_t r1, const float *imp, const float *u,
			 const struct qf_gguf_fold *fold, void *dst);

/* ------------------------------------------------------------------ */
/* reader (gguf_read.c)                                               */

/*
 * A GGUF file (v2 or v3, little-endian) read as untrusted input: every
 * count, length and offset is checked against the file size before it is
 * used, arrays nest at most QF_GGUF_MAX_DEPTH deep, and what is kept in
 * memory is bounded by the file's own bytes.  Metadata values are kept for
 * scalars and short strings; arrays and long strings only by type and
 * count.  Tensor infos must name types qf_ggml_dequantize_row() decodes,
 * rows of whole blocks, and data inside the file, aligned, not
 * overlapping.
 */
#define QF_GGUF_MAX_DIMS 4		/* GGML_MAX_DIMS */
#define QF_GGUF_MAX_KV (1u << 20)	/* metadata pairs */
#define QF_GGUF_MAX_TENSORS (1u << 20)
#define QF_GGUF_MAX_KEY 65535		/* bytes of a key (docs/gguf.md) */
#define QF_GGUF_MAX_DEPTH 8		/* arrays of arrays */
#define QF_GGUF_KEEP_STR 1024		/* longest string value kept */

enum qf_gguf_vtype {			/* gguf_metadata_value_type */
	QF_GGUF_UINT8 = 0,
	QF_GGUF_INT8 = 1,
	QF_GGUF_UINT16 = 2,
	QF_GGUF_INT16 = 3,
	QF_GGUF_UINT32 = 4,
	QF_GGUF_INT32 = 5,
	QF_GGUF_FLOAT32 = 6,
	QF_GGUF_BOOL = 7,
	QF_GGUF_STRING = 8,
	QF_GGUF_ARRAY = 9,
	QF_GGUF_UINT64 = 10,
	QF_GGUF_INT64 = 11,
	QF_GGUF_FLOAT64 = 12,
};

struct qf_gguf_kv {
	char *key;
	enum qf_gguf_vtype type;
	enum qf_gguf_vtype elem;	/* arrays: element type */
	uint64_t n;			/* arrays: elements; strings: bytes */
	union {
		uint64_t u;		/* unsigned and bool */
		int64_t i;		/* signed */
		double f;		/* float32 and float64 */
	} v;
	char *str;			/* strings under QF_GGUF_KEEP_STR
					   bytes, NUL-free; else NULL */
};

struct qf_gguf_info {
	char name[QF_GGUF_NAME_MAX];	/* NUL-free */
	enum qf_ggml_type type;
	int ndim;			/* 1 .. QF_GGUF_MAX_DIMS */
	int64_t ne[QF_GGUF_MAX_DIMS];	/* innermost first; 1 past ndim */
	uint64_t offset;		/* file offset of the data */
	uint64_t nbytes;		/* data bytes */
};

struct qf_gguf_file {
	int fd;				/* -1 for a memory image */
	const uint8_t *mem;		/* the memory image (borrowed) */
	uint64_t size;			/* file bytes, at open */
	uint32_t version;
	struct qf_gguf_kv *kv;		/* [nkv] sorted by key */
	size_t nkv;
	struct qf_gguf_info *t;		/* [nt] in file order */
	size_t nt;
	const struct qf_gguf_info **by_name; /* [nt] into t, by name */
	uint32_t align;			/* general.alignment, default 32 */
	uint64_t info_end;		/* end of the tensor infos */
	uint64_t data_off;		/* info_end aligned up: tensor data */
	uint64_t data_bytes;		/* sum of the tensors' nbytes */
};

/*
 * Open path and read its header with pread (the file may sit on a FUSE
 * mount).  Caller owns *out; free with qf_gguf_close().  *why (if given)
 * names a format problem, which is also logged with the path.
 * Returns 0, -errno, -EINVAL (not a regular file), QF_EFORMAT,
 * QF_EUNSUPPORTED (another version, a tensor type we do not decode),
 * QF_ECORRUPT (the file shrank while read), -ENOMEM.
 */
int qf_gguf_open(const char *path, struct qf_gguf_file **out,
		 const char **why);
/*
 * The same for a memory image buf [size] (borrowed until qf_gguf_close());
 * nothing is logged.  Returns 0, QF_EFORMAT, QF_EUNSUPPORTED, -ENOMEM.
 */
int qf_gguf_parse(const void *buf, size_t size, struct qf_gguf_file **out,
		  const char **why);
void qf_gguf_close(struct qf_gguf_file *g);

/* Binary search by key; NULL when absent.  Valid until qf_gguf_close(). */
const struct qf_gguf_kv *qf_gguf_kv_find(const struct qf_gguf_file *g,
					 const char *key);
/*
 * An integer value (any integer type) that fits int64_t.
 * Returns 0, -ENOENT (absent), QF_EFORMAT (another type, out of range).
 */
int qf_gguf_kv_int(const struct qf_gguf_file *g, const char *key,
		   int64_t *out);
/*
 * A kept string value, or NULL (absent, another type, too long).  Valid
 * until qf_gguf_close().
 */
const char *qf_gguf_kv_str(const struct qf_gguf_file *g, const char *key);
/* Binary search by name; NULL when absent.  Valid until qf_gguf_close(). */
const struct qf_gguf_info *qf_gguf_find(const struct qf_gguf_file *g,
					const char *name);
/* Rows of t: the product of ne[1..]; each row holds ne[0] elements. */
int64_t qf_gguf_rows(const struct qf_gguf_info *t);
/*
 * Rows row0 .. row0 + nrows of t decoded to f32 into dst [nrows, ne[0]].
 * Returns 0, -EINVAL (rows out of range), -errno, QF_ECORRUPT (a short
 * read: the file changed), -ENOMEM.
 */
int qf_gguf_read_rows(const struct qf_gguf_file *g,
		      const struct qf_gguf_info *t, int64_t row0,
		      int64_t nrows, float *dst);

/* ------------------------------------------------------------------ */
/* back to a model directory (gguf_model.c)                           */

/*
 * Write a Hugging Face model directory at out_dir (existing, empty) from
 * the GGUF file gguf_path as qf_gguf_plan_init() lays it out: config.json
 * from cfg_dir without "quantization_config", the tokenizer and
 * generation files cfg_dir has, and model.safetensors with every tensor
 * decoded to F32 under its source name (qf_gguf_hf_name(), q/k rows put
 * back in the source order; rope_freqs.weight left out).  Files written
 * before a failure stay: the caller removes out_dir.
 * Returns 0, -errno, QF_EFORMAT, QF_EUNSUPPORTED (a tensor or architecture
 * with no source name), QF_ENUMERIC (a decoded value is not finite),
 * QF_ECORRUPT, -ENOMEM; *why (if given) says which for QF_E* codes.
 */
int qf_gguf_to_model_dir(const char *gguf_path, const char *cfg_dir,
			 const char *out_dir, const char **why);

/* ------------------------------------------------------------------ */
/* k-quant importance matrices (gguf_imatrix.c)                       */

/*
 * Floats of one layer's importance matrix (kq variants): the input
 * channels of q, k, v, o, gate, up, down in that order, then each
 * expert's (MoE).
 */
size_t qf_kq_imatrix_len(const struct qf_tf_config *c);
/*
 * kq's GPTQ factors (the Q4_K / Q6_K encoder's, in the calibration job's
 * memory): one per distinct input, U [in, in] upper of the damped inverse
 * Hessian; q, k, v read q's, gate and up read gate's; lin QF_TF_NLINEAR
 * with the last layer: the head's (output.weight), its input the final
 * norm's output.
 */
enum qf_tf_linear qf_kq_u_owner(enum qf_tf_linear lin);
/* Offset of linear lin's channels in it. */
size_t qf_kq_imatrix_off(const struct qf_tf_config *c, enum qf_tf_linear lin);
/*
 * MoE: offset of expert e's linear k (e == c->experts: the shared
 * expert), after the seven; its input channels from the tokens routed
 * to the expert.
 */
size_t qf_kq_imatrix_exp_off(const struct qf_tf_config *c, int e,
			     enum qf_moe_linear k);

#endif /* QF_GGUF_H */
