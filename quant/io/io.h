/*
 * io.h - the public interface of quant/io: model I/O and checkpoint
 * formats.  Element types and half-precision conversions, the
 * bounds-checked safetensors reader and the planner that lays a file out
 * before any tensor exists, Hugging Face model directories and their
 * config.json, reading a linear as fp32 whatever its checkpoint form,
 * the GPTQ / AWQ / compressed-tensors bit packings, and the generated
 * demo models.
 *
 * The bottom of quant/: io uses only common/ (and cJSON); every other
 * part of quant/ builds on it.  No FUSE and no LMDB here.
 */
#ifndef QF_IO_H
#define QF_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "common.h"

/*
 * Hot kernels are compiled for AVX2+FMA too and picked at load time
 * (ifunc); the portable x86-64 build stays the default.
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QF_HOT __attribute__((target_clones("avx2", "default")))
#else
#define QF_HOT
#endif

/* ------------------------------------------------------------------ */
/* dtypes                                                             */

enum qf_dtype {
	QF_DT_BOOL,
	QF_DT_U8,
	QF_DT_I8,
	QF_DT_I16,
	QF_DT_U16,
	QF_DT_F16,
	QF_DT_BF16,
	QF_DT_I32,
	QF_DT_U32,
	QF_DT_F32,
	QF_DT_F64,
	QF_DT_I64,
	QF_DT_U64,
	QF_DT_COUNT,
};

size_t qf_dtype_size(enum qf_dtype dt);		/* bytes per element */
const char *qf_dtype_name(enum qf_dtype dt);	/* "BF16", ... */
/* 0, or QF_EFORMAT when s names no dtype we know. */
int qf_dtype_parse(const char *s, enum qf_dtype *out);

float qf_bf16_to_f32(uint16_t h);
uint16_t qf_f32_to_bf16(float f);		/* round to nearest even */
float qf_f16_to_f32(uint16_t h);
uint16_t qf_f32_to_f16(float f);		/* round to nearest even */
/*
 * Convert n elements of a floating tensor (F16, BF16, F32) to f32.
 * Returns 0, QF_EUNSUPPORTED for other dtypes.
 */
int qf_to_f32(enum qf_dtype dt, const void *src, size_t n, float *dst);
/* True when no value of x [n] is infinite or NaN. */
bool qf_all_finite(const float *x, size_t n);

/* ------------------------------------------------------------------ */
/* safetensors                                                        */

#define QF_ST_MAX_DIMS 8
#define QF_ST_MAX_HEADER 100000000ULL	/* as the reference reader */

struct qf_st_tensor {
	char *name;			/* owned by the header */
	enum qf_dtype dtype;
	int ndim;
	int64_t shape[QF_ST_MAX_DIMS];
	uint64_t begin;			/* byte offset inside the data area */
	uint64_t nbytes;		/* end - begin */
};

struct qf_st_header {
	struct qf_st_tensor *t;		/* sorted by name */
	size_t n;			/* tensor count */
	uint64_t header_len;		/* N: JSON bytes after the 8-byte length */
	uint64_t data_off;		/* 8 + N: file offset of the data area */
	uint64_t data_len;		/* bytes of the data area */
	char *metadata;			/* "__metadata__" as JSON text, or NULL */
};

/*
 * Parse and validate a safetensors header.  buf holds the first avail bytes
 * of a file of file_len bytes (avail >= 8 + N is needed, else QF_EFORMAT).
 * Checks: N bounded and inside the file, UTF-8/JSON, known dtypes, shape
 * and dtype size agree with the byte span, spans sorted by offset start at
 * 0, leave no hole and no overlap, and end exactly at the file end; no
 * duplicate names.  On failure *why (if given) points to a static message.
 * Returns 0, QF_EFORMAT or -ENOMEM.  Free with qf_st_header_free().
 */
int qf_st_parse(const void *buf, size_t avail, uint64_t file_len,
		struct qf_st_header *out, const char **why);
void qf_st_header_free(struct qf_st_header *h);
/* Binary search by name; NULL when absent. */
const struct qf_st_tensor *qf_st_find(const struct qf_st_header *h,
				      const char *name);
uint64_t qf_st_numel(const struct qf_st_tensor *t);

/* An open, mmapped safetensors file. */
struct qf_st_file {
	char *path;
	int fd;
	const uint8_t *map;		/* whole file, PROT_READ */
	uint64_t size;			/* file size at open */
	struct stat st;			/* at open: size and mtime for staleness */
	struct qf_st_header hdr;
	int guard;			/* qf_guard_add() id of map */
	_Atomic bool said;		/* qf_st_faulted() logged */
};

/*
 * Open and validate path.  Caller owns *out; free with qf_st_close().
 * Returns 0, -errno, QF_EFORMAT (message logged with the path), -ENOMEM.
 */
int qf_st_open(const char *path, struct qf_st_file **out);
/* The same for an open file; fd is the new qf_st_file's (closed on error);
 * path names it in messages and in qf_st_unchanged(). */
int qf_st_open_fd(int fd, const char *path, struct qf_st_file **out);
/*
 * Some read of f's map ran past the file's end since it was opened (the
 * file was truncated in place) and got zeros, or the file is no longer
 * the one opened (qf_st_unchanged() false: a truncation inside a page
 * reads as zeros without a fault): what was read may not be the file's.
 * Logged once.  Readers call it after reading (by pread too: the file
 * may have been rewritten in place meanwhile).
 */
bool qf_st_faulted(const struct qf_st_file *f);
/* A pread of f came back short: it shrank while it was read.  Logged
 * once, as qf_st_faulted() logs. */
void qf_st_shrank(const struct qf_st_file *f);
void qf_st_close(struct qf_st_file *f);
/* Pointer to t's bytes inside the map (borrowed, valid until close). */
const void *qf_st_data(const struct qf_st_file *f,
		       const struct qf_st_tensor *t);
/* True when the file on disk still has the size and mtime seen at open. */
bool qf_st_unchanged(const struct qf_st_file *f);
/*
 * Done reading [p, p + n) of f's map: its whole pages leave this
 * process's memory (they stay in the page cache; a later read maps them
 * again), so reading a model larger than memory holds none of it.
 */
void qf_st_release(const struct qf_st_file *f, const void *p, size_t n);

/*
 * Planner: lay out a safetensors file ahead of time.  Sorts e[] the way the
 * reference writer does (descending dtype alignment, then name), assigns
 * begin offsets, and writes the 8-byte length + JSON header (with
 * "__metadata__": {"format": "pt"} plus the given string pairs, padded with
 * spaces to a multiple of 8) into hdr.  The file is hdr->len + total bytes.
 * Returns 0, -EINVAL (bad entry, duplicate name), -ENOMEM.
 */
struct qf_st_plan_entry {
	const char *name;		/* borrowed */
	enum qf_dtype dtype;
	int ndim;
	int64_t shape[QF_ST_MAX_DIMS];
	uint64_t begin;			/* OUT: offset in the data area */
	uint64_t nbytes;		/* OUT: numel * dtype size */
	void *user;			/* caller's cookie, carried along */
};
int qf_st_plan(struct qf_st_plan_entry *e, size_t n,
	       const char *const *meta_kv, size_t n_meta,
	       struct qf_buf *hdr, uint64_t *total);


/* ------------------------------------------------------------------ */
/* model directories                                                  */

struct qf_model_tensor {
	const char *name;		/* borrowed from the shard's header */
	struct qf_st_file *shard;	/* the file holding it */
	const struct qf_st_tensor *t;
};

struct qf_model {
	char *dir;			/* source directory, absolute */
	char *name;			/* the model's name (GGUF general.name) */
	int dirfd;			/* dir, held open: every file of the
					 * model is opened in it (srcfile.c) */
	struct qf_buf config_text;	/* config.json bytes */
	void *config;			/* cJSON *, parsed config.json */
	struct qf_st_file **shard;	/* weight files, sorted by name */
	size_t nshard;
	struct qf_model_tensor *t;	/* every tensor, sorted by name */
	size_t nt;
	enum qf_dtype dtype;		/* dominant floating dtype */
	uint64_t weight_bytes;		/* bytes of all tensors */
	uint8_t fp[32];			/* source fingerprint, once fp_set */
	char fp_hex[65];		/* its hex; "" until fp_set */
	bool fp_set;			/* qf_model_set_fingerprint() ran */
};

/*
 * Open a Hugging Face model directory: config.json (an object, at most
 * 4 MiB) and model.safetensors or the shards that
 * model.safetensors.index.json names (each validated; a tensor named by
 * the index must be in its shard; no tensor in two shards).
 * The fingerprint is not computed here (hashing the weights takes about
 * a second per GB): see qf_model_set_fingerprint().
 * Caller owns *out; free with qf_model_close().
 * Returns 0, -errno, QF_EFORMAT (reason logged), -ENOMEM.
 */
int qf_model_open(const char *dir, struct qf_model **out);
/*
 * The same for a directory already open (dirfd is duplicated, not taken):
 * every file is opened in it under the link rule of qf_src_openat(); dir
 * and name label it in messages, records and GGUF metadata.
 */
int qf_model_open_at(int dirfd, const char *dir, const char *name,
		     struct qf_model **out);
void qf_model_close(struct qf_model *m);
/*
 * The source fingerprint, which identifies a model by its content alone,
 * so the same model copied to two machines gets the same variant ids:
 * SHA-256 over "quantfs-fp-v2" and its NUL, the config.json bytes after
 * their length and, per shard in name order, its file name and NUL, its
 * size and the SHA-256 of its whole bytes (shard_sha[i] for
 * m->shard[i]); lengths and sizes as 8 little-endian bytes.  Sets fp,
 * fp_hex and fp_set.  Not locked: the caller makes sure one thread sets
 * it before others read it (fs/src_fp.c, once per model).
 */
void qf_model_set_fingerprint(struct qf_model *m,
			      const uint8_t (*shard_sha)[32]);
/*
 * SHA-256 of shard i's bytes, read through its map (libcrypto, ~1.6 GB/s
 * on one core here): an info line every 5 s while it runs, and one with
 * the speed for a file of 1 GiB or more.  Returns 0, QF_ECORRUPT (the
 * file shrank while it was read).
 */
int qf_model_shard_sha256(const struct qf_model *m, size_t i,
			  uint8_t out[32]);
/* Every shard hashed here, then qf_model_set_fingerprint(): for tools
 * without a cache.  Returns 0, QF_ECORRUPT, -ENOMEM. */
int qf_model_fingerprint(struct qf_model *m);
const struct qf_model_tensor *qf_model_find(const struct qf_model *m,
					    const char *name);
/* True when every shard and config.json are unchanged on disk. */
bool qf_model_unchanged(const struct qf_model *m);
/*
 * The shard names of a model.safetensors.index.json held in buf (what
 * names it in the log): *names, unique and sorted, point into *index, a
 * cJSON * whose "weight_map" maps tensors to plain *.safetensors names.
 * Caller owns *index (cJSON_Delete) and *names (free); on an error
 * *index is NULL and *names untouched.  Returns 0, QF_EFORMAT (logged),
 * -ENOMEM.
 */
int qf_model_index_parse(const char *buf, size_t len, const char *what,
			 void **index, char ***names, size_t *n);
/* Integer from config.json, or def when absent / not a number. */
long qf_model_cfg_int(const struct qf_model *m, const char *key, long def);
/*
 * Read t as f32 into dst (numel floats), checking the shard is unchanged
 * first (a truncated source would SIGBUS the mmap) and every value is
 * finite.  Returns 0, QF_ECORRUPT, QF_ENUMERIC, QF_EUNSUPPORTED.
 */
int qf_model_read_f32(const struct qf_model_tensor *mt, float *dst);
/*
 * The fp32 weight [out, in] of linear prefix ("model.layers.0.mlp.up_proj")
 * from "<prefix>.weight" or, in a variant directory, from the GPTQ
 * checkpoint tensors (qweight/qzeros/scales/g_idx, v1 zeros).
 * Returns 0, QF_EFORMAT (logged), QF_ECORRUPT, QF_ENUMERIC, -ENOMEM.
 */
int qf_model_linear_f32(const struct qf_model *m, const char *prefix,
			int64_t out, int64_t in, float *dst);
/* Rows [row0, row0 + nrows) of a tensor (dim 0), same checks. */
int qf_model_read_f32_rows(const struct qf_model_tensor *mt, int64_t row0,
			   int64_t nrows, float *dst);


/* ------------------------------------------------------------------ */
/* architectures (arch.c): one row per config.json model_type            */

struct qf_tf_config;
struct qf_moe_names;
struct qf_mkmodel_opts;
struct qf_mk_list;
struct cJSON;

enum {
	QF_ARCH_GGUF_PERMUTE = 1u << 0,	/* GGUF q/k rows in llama.cpp's
					 * interleaved rope order */
	QF_ARCH_SLIDING = 1u << 1,	/* sliding_window from config.json */
	QF_ARCH_QKV_BIAS = 1u << 2,	/* q/k/v biases (qwen2) */
	QF_ARCH_QK_NORM = 1u << 3,	/* per-head q/k RMSNorm (qwen3) */
	/* the families' own flags: gemma from bit 8, phi3 from 16, moe
	 * from 24 */
	QF_ARCH_GEMMA = 1u << 8,	/* (1 + w) RMSNorms, sandwich norms,
					 * scaled embedding (arch_gemma.c) */
	QF_ARCH_LONGROPE = 1u << 16,	/* phi3: rope_scaling "longrope" is
					 * the family's (arch_phi3.c) */
	QF_ARCH_MOE = 1u << 24,		/* sparse MoE blocks (arch_moe.c) */
	QF_ARCH_QK_NORM_FULL = 1u << 25,	/* olmoe: q/k RMSNorm over the
					 * whole projection, clip_qkv */
};

struct qf_arch {
	const char *model_type;		/* config.json's */
	const char *gguf;		/* llama.cpp's general.architecture */
	const char *hf_class;		/* config.json "architectures"[0] */
	unsigned flags;			/* QF_ARCH_* */
	/*
	 * Checkpoint names under "model.layers.N." of the seven linears
	 * (enum qf_tf_linear order); fused families name the tensor that
	 * holds them.
	 */
	const char *lin[7];
	/* config.json's family keys into c (after the common ones); 0 or
	 * QF_EFORMAT / QF_EUNSUPPORTED, logged.  NULL: none. */
	int (*parse)(const struct qf_model *m, const struct cJSON *o,
		     struct qf_tf_config *c);
	/* mkmodel: the family's config.json keys, and one decoder layer's
	 * tensors (NULL: Llama's). */
	void (*mk_config)(struct cJSON *c, const struct qf_mkmodel_opts *o);
	int (*mk_layer)(struct qf_mk_list *t, const struct qf_mkmodel_opts *o,
			int l);
};

/* The row of model_type, or NULL (not computed: shape-only RTN). */
const struct qf_arch *qf_arch_find(const char *model_type);
/* "llama, mistral, ...": the model types of the table, into out. */
void qf_arch_names(char *out, size_t cap);
/* Row i of the table, NULL past the end (for listings). */
const struct qf_arch *qf_arch_at(size_t i);

/* ------------------------------------------------------------------ */
/* config.json of a computed architecture (config.c)                  */

/* hidden_act / hidden_activation */
enum qf_act {
	QF_ACT_SILU,			/* "silu": SwiGLU */
	QF_ACT_GELU_TANH,		/* "gelu_pytorch_tanh": GeGLU */
};

/* Layers a per-layer window pattern may have (gemma). */
#define QF_TF_MAX_SLIDE_LAYERS 512
/* LongRoPE factors a config may give per list (head_dim up to 256). */
#define QF_ROPE_MAX_FAC 128

struct qf_tf_config {
	const struct qf_arch *arch;	/* its row */
	char model_type[32];		/* config.json's model_type */
	int hidden;			/* hidden_size */
	int inter;			/* intermediate_size */
	int layers;			/* num_hidden_layers */
	int heads;			/* num_attention_heads */
	int kv_heads;			/* num_key_value_heads */
	int head_dim;			/* head_dim or hidden / heads */
	int vocab;			/* vocab_size */
	float rms_eps;			/* rms_norm_eps */
	float rope_theta;		/* rope_theta */
	/* llama3 rope_scaling (rope_type "llama3"); factor 0 = none */
	float rope_factor;
	float rope_low_freq_factor;
	float rope_high_freq_factor;
	int rope_orig_max_pos;
	float rope_linear;		/* rope_type "linear": factor, 0 = none */
	bool tie;			/* tie_word_embeddings */
	bool attn_bias;			/* q/k/v biases (qwen2) */
	bool qk_norm;			/* per-head q/k RMSNorm (qwen3) */
	int sliding_window;		/* mistral: window, 0 = none */
	enum qf_act act;		/* the MLP's activation */
	/* gemma2 / gemma3_text (arch_gemma.c) */
	bool norm_plus1;		/* RMSNorms scale by (1 + w) */
	bool sandwich;			/* norms on attention and MLP outputs */
	float embed_scale;		/* embeddings times this; 0 = 1 */
	float attn_scale;		/* query scale; 0 = head_dim^-0.5 */
	float attn_softcap;		/* scores cap * tanh(s / cap); 0 = none */
	float final_softcap;		/* the same on logits; 0 = none */
	bool window_per_layer;		/* sliding_window only where slides */
	float rope_local_theta;		/* sliding layers' rope base, 0 = same */
	uint64_t slides[QF_TF_MAX_SLIDE_LAYERS / 64]; /* bit l: layer l */
	/* phi3 (arch_phi3.c) */
	int rot_dim;			/* rotated dims of a head
					 * (partial_rotary_factor); 0: all */
	int rope_nfac;			/* LongRoPE factors per list (rot_dim /
					 * 2), 0: none; short below
					 * rope_orig_max_pos, else long */
	float rope_attn;		/* LongRoPE cos/sin factor; 0: 1 */
	float rope_short[QF_ROPE_MAX_FAC];
	float rope_long[QF_ROPE_MAX_FAC];
	/* qwen3_moe / mixtral / olmoe (arch_moe.c) */
	const struct qf_moe_names *moe;	/* static; NULL: no MoE block */
	int experts;			/* num_experts / num_local_experts */
	int topk;			/* num_experts_per_tok */
	int moe_inter;			/* an expert's intermediate size */
	bool norm_topk;			/* renormalize the top-k weights */
	int sparse_step;		/* decoder_sparse_step (>= 1) */
	uint64_t mlp_only[4];		/* mlp_only_layers, bit per layer */
	float clip_qkv;			/* olmoe: clamp q/k/v; 0 = none */
	int shared_inter;		/* qwen2_moe: the shared expert's
					 * intermediate size; 0 = none */
};

/* The row's QF_ARCH_* flags; 0 for a config built by hand (tests,
 * benchmarks), which is the Llama layout. */
static inline unsigned qf_tf_flags(const struct qf_tf_config *c)
{
	return c->arch ? c->arch->flags : 0;
}

/* From config.json; QF_EUNSUPPORTED for other model types. */
int qf_tf_config_parse(const struct qf_model *m, struct qf_tf_config *c);
/*
 * c as layer l computes it (arch_gemma.c): sliding_window 0 on a global
 * layer of a per-layer pattern, a sliding layer's own rope base.
 */
void qf_tf_config_layer(const struct qf_tf_config *c, int l,
			struct qf_tf_config *lc);
/* True when layer l of c attends through its sliding window. */
bool qf_tf_layer_slides(const struct qf_tf_config *c, int l);

/* Linears of a decoder layer, in true-sequential order. */
enum qf_tf_linear {
	QF_TF_Q,
	QF_TF_K,
	QF_TF_V,
	QF_TF_O,
	QF_TF_GATE,
	QF_TF_UP,
	QF_TF_DOWN,
	QF_TF_NLINEAR,
};
/* "self_attn.q_proj", ... "mlp.down_proj" */
const char *qf_tf_linear_name(enum qf_tf_linear l);
/* Output and input features of linear l under c. */
int64_t qf_tf_linear_out(const struct qf_tf_config *c, enum qf_tf_linear l);
int64_t qf_tf_linear_in(const struct qf_tf_config *c, enum qf_tf_linear l);
/*
 * The checkpoint tensor (under "model.layers.N.") holding linear l, and
 * where: rows [*row0, *row0 + qf_tf_linear_out(c, l)) of a tensor of
 * *rows rows.  A fused tensor (phi3's qkv_proj, gate_up_proj) holds the
 * linears the table names it for, in enum order.
 */
const char *qf_tf_linear_tensor(const struct qf_tf_config *c,
				enum qf_tf_linear l, int64_t *row0,
				int64_t *rows);
/* Dimensions of a head that RoPE rotates (the first ones). */
int qf_tf_rot_dim(const struct qf_tf_config *c);
/* Whether linear l carries a bias, as the transformers modules build it. */
bool qf_tf_linear_bias(const struct qf_model *m, const struct qf_tf_config *c,
		       enum qf_tf_linear l);

/* ------------------------------------------------------------------ */
/* mixture of experts (arch_moe.c)                                    */

/* Checkpoint names of a family's MoE block, under "model.layers.N.". */
struct qf_moe_names {
	const char *router;		/* "mlp.gate": [experts, hidden] */
	const char *experts;		/* "mlp.experts": then ".E." */
	const char *lin[3];		/* gate, up, down under expert E */
	/* Qwen2-MoE's shared expert ("mlp.shared_expert", then lin[]) and
	 * its sigmoid gate ("mlp.shared_expert_gate": [1, hidden]); NULL
	 * for the families without */
	const char *shared;
	const char *shared_gate;
};

/* The MLP linears of an expert, in true-sequential order. */
enum qf_moe_linear { QF_MOE_GATE, QF_MOE_UP, QF_MOE_DOWN, QF_MOE_NLINEAR };

/* Whether layer l has a sparse MoE block (else a dense MLP). */
bool qf_moe_layer_sparse(const struct qf_tf_config *c, int l);
/*
 * "model.layers.L.mlp.experts.E.up_proj" (no .weight) into out; e ==
 * c->experts names the shared expert (c->shared_inter > 0).
 */
void qf_moe_expert_name(const struct qf_tf_config *c, int l, int e,
			enum qf_moe_linear k, char *out, size_t cap);
/* model_type's MoE block names, NULL for a family without MoE. */
const struct qf_moe_names *qf_moe_names_of(const char *model_type);
/* Under names nm, qf_moe_expert_name's name of expert e's linear k of
 * layer l (e < 0: the shared expert); snprintf's return. */
int qf_moe_names_expert(const struct qf_moe_names *nm, int l, int e,
			enum qf_moe_linear k, char *out, size_t cap);
/* "model.layers.L.mlp.gate" (no .weight) into out. */
void qf_moe_router_name(const struct qf_tf_config *c, int l, char *out,
			size_t cap);
/*
 * True when tensor name is a MoE router ("model.layers.N.<router>.weight")
 * of m's family (config.json's model_type): kept in source precision by
 * every variant.
 */
bool qf_moe_is_router(const struct qf_model *m, const char *name);
/* True when tensor name is an expert's linear weight of m's family. */
bool qf_moe_is_expert(const struct qf_model *m, const char *name);

/* ------------------------------------------------------------------ */
/* checkpoint packing: GPTQ v1 (pack_gptq.c), AWQ GEMM (pack_awq.c)    */

/* Groups of a row of in columns. */
static inline int64_t qf_ngroups(int64_t in, int group)
{
	return group <= 0 || group >= in ? 1 : (in + group - 1) / group;
}

/* True when bits packs [in, out] into GPTQ qweight/qzeros words. */
bool qf_gptq_packable(int bits, int64_t in, int64_t out);
/* The container of a grid: 2, 3, 4, 8 as they are; 5..7 in 8. */
int qf_pack_bits(int bits);
/*
 * qweight (in * bits / 32, out) from q (out x in); qzeros (ngroups,
 * out * bits / 32) from zero (out x ngroups), storing zero - 1 (v1).
 */
void qf_gptq_pack_qweight(const uint8_t *q, int64_t out, int64_t in,
			  int bits, uint32_t *qweight);
/* The same for rows [r0, r0 + nrows) of out, their codes at q. */
void qf_gptq_pack_qweight_rows(const uint8_t *q, int64_t r0, int64_t nrows,
			       int64_t out, int64_t in, int bits,
			       uint32_t *qweight);
void qf_gptq_pack_qzeros(const int32_t *zero, int64_t out, int64_t ngroups,
			 int bits, uint32_t *qzeros);
/* Inverse of the above (tests, and _fake re-use). */
void qf_gptq_unpack_qweight(const uint32_t *qweight, int64_t out, int64_t in,
			    int bits, uint8_t *q);

/*
 * The AWQ GEMM checkpoint (AutoAWQ): qweight [in, out / 8] and qzeros
 * [ngroups, out / 8] int32, nibble i of word c holding output column
 * 8c + {0,2,4,6,1,3,5,7}[i]; scales [ngroups, out] fp16 (transposed).
 * 4 bits only, out % 8 == 0.
 */
bool qf_awq_packable(int bits, int64_t in, int64_t out, int group);
void qf_awq_pack(const uint8_t *q, const uint16_t *sc16, const int32_t *zero,
		 int64_t out, int64_t in, int64_t ngroups, uint32_t *qweight,
		 uint32_t *qzeros, uint16_t *scales);
void qf_awq_unpack(const uint32_t *qweight, const uint32_t *qzeros,
		   const uint16_t *scales, int64_t out, int64_t in,
		   int64_t ngroups, uint8_t *q, uint16_t *sc16, int32_t *zero);

/* ------------------------------------------------------------------ */
/* compressed-tensors pack-quantized (pack_ct.c)                      */

/*
 * Conventions (verified in neuralmagic/compressed-tensors, see
 * pack_ct.c): quantized values are signed s in [-2^(b-1), 2^(b-1) - 1]
 * and zero points signed too (asymmetric: zp = round(q_min - min /
 * scale)), w = scale * (s - zp); pack_to_int32 stores s + 2^(b-1).
 * quantfs's unsigned code q = s + 2^(b-1) and zero z = zp + 2^(b-1)
 * (symmetric: z = 2^(b-1), zp = 0) are thus stored as they are.
 * Packing: per = 32 / bits values per int32 word, value k of a word in
 * bits [k * bits, (k + 1) * bits), no value crosses a word, the last
 * word zero-padded.  weight_scale is the fp16 [out, ngroups] array
 * as qf_rtn_quantize writes it (no packing).
 */
/* True for 1 <= bits <= 8. */
bool qf_ct_packable(int bits);
/* ceil(n / (32 / bits)): words holding n values. */
int64_t qf_ct_words(int64_t n, int bits);
/* weight_packed [out, qf_ct_words(in)] from q [out, in]. */
void qf_ct_pack_weight(const uint8_t *q, int64_t out, int64_t in, int bits,
		       int32_t *packed);
void qf_ct_unpack_weight(const int32_t *packed, int64_t out, int64_t in,
			 int bits, uint8_t *q);
/* weight_zero_point [qf_ct_words(out), ngroups] from zero [out, ngroups],
 * packed along dim 0. */
void qf_ct_pack_zero(const int32_t *zero, int64_t out, int64_t ngroups,
		     int bits, int32_t *packed);
void qf_ct_unpack_zero(const int32_t *packed, int64_t out, int64_t ngroups,
		       int bits, int32_t *zero);

/* ------------------------------------------------------------------ */
/* generated models (the embedded demo and test fixtures)             */

struct qf_mkmodel_opts {
	int hidden;			/* hidden_size */
	int inter;			/* intermediate_size */
	int layers;			/* num_hidden_layers */
	int heads;			/* num_attention_heads */
	int kv_heads;			/* num_key_value_heads */
	int vocab;			/* >= 259: 256 bytes + 3 specials */
	uint64_t seed;
	enum qf_dtype dtype;		/* BF16, F16 or F32 */
	bool tie;			/* tie_word_embeddings */
	int head_dim;			/* 0: hidden / heads */
	const char *arch;		/* model_type; NULL: "llama" */
	/* mixture of experts (arch_moe.c) */
	int experts;			/* 0: 8 */
	int topk;			/* 0: 2 */
	int moe_inter;			/* an expert's; 0: inter / 2 */
};
void qf_mkmodel_defaults(struct qf_mkmodel_opts *o);
/*
 * Write config.json, generation_config.json, tokenizer.json (byte-level
 * BPE), tokenizer_config.json and model.safetensors into dir (created if
 * needed), deterministically from o->seed.  Returns 0, -errno, -EINVAL.
 */
int qf_mkmodel_write(const char *dir, const struct qf_mkmodel_opts *o);
/* Write n bytes p to dir/name (created or truncated): 0, -errno, -EIO.
 * (mkmodel's files, and rot.c's rotated model.) */
int qf_mk_write_file(const char *dir, const char *name, const void *p,
		     size_t n);
/*
 * A family's mk_layer adds a tensor of rows x cols (cols 0: 1-D) named
 * by fmt; values are drawn as for every generated tensor (norms by name:
 * a name holding "norm" gets norm-like values).  0 or -ENOMEM.
 */
int qf_mk_add(struct qf_mk_list *t, int64_t rows, int64_t cols,
	      const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Llama's decoder layer l (norms and seven linears), for families that
 * add to it.  0 or -ENOMEM. */
int qf_mk_llama_layer(struct qf_mk_list *t, const struct qf_mkmodel_opts *o,
		      int l);

/* ------------------------------------------------------------------ */
/* Packed checkpoint tensors back to integers (unpack.c): the one place  */
/* that knows how a GPTQ v1 or AutoAWQ GEMM checkpoint stores a grid, so */
/* _fake variants, the GGUF repack, a resumed job and `quantfs eval` on  */
/* a mounted variant all read one decoder.                                */

enum qf_ckpt_format {
	QF_CKPT_GPTQ_V1,	/* qweight, qzeros, scales, g_idx */
	QF_CKPT_AWQ_GEMM,	/* qweight, qzeros, scales */
};

/* Packed tensors of one linear in format f (g_idx last for GPTQ). */
static inline int qf_ckpt_ntensors(enum qf_ckpt_format f)
{
	return f == QF_CKPT_AWQ_GEMM ? 3 : 4;
}

/*
 * One linear's packed tensors, decoded.  packed[k] is tensor k as stored
 * (4-byte aligned copies, or aligned mapped data):
 *   GPTQ v1:  qweight [in * bits / 32, out] i32, qzeros [ng, out * bits /
 *             32] i32 holding zero - 1, scales [ng, out] f16, g_idx [in];
 *   AWQ GEMM: qweight [in, out / 8], qzeros [ng, out / 8], scales [ng,
 *             out] f16; input j is in group j / group (bits 4).
 * Out: q [out, in], sc [out, ng] (f16 bits), z [out, ng] (true zeros),
 * g_idx [in] (copied, or made for AWQ; not range-checked).
 * Returns 0 or -ENOMEM.
 */
int qf_ckpt_unpack_group(enum qf_ckpt_format f, int bits, int64_t out,
			 int64_t in, int64_t ng, int64_t group,
			 const void *const *packed, uint8_t *q, uint16_t *sc,
			 int32_t *z, int32_t *g_idx);

#endif /* QF_IO_H */
